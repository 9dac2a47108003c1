#![allow(clippy::unwrap_used)]
//! The engine without Ruby: real sockets, a Rust "app" thread taking jobs
//! from the queue, and raw TCP clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use butterflies::http::response::ResponseHead;
use butterflies::http::Limits;
use butterflies::net::doorbell::Doorbell;
use butterflies::net::loops::Loops;
use butterflies::net::{BindAddr, Config, Engine, Job, Kept, Queued};
use butterflies::serve::app_loop::AppLoop;
use butterflies::serve::pool::Pool;
use butterflies::serve::{Direct, Exchange, Waker};
use crossbeam_channel::{Receiver, Sender};

/// An engine on a free port, its address, its app threads, and where the
/// app threads say they started a `/slow` request.
struct Started {
    engine: Engine,
    addr: SocketAddr,
    apps: Vec<thread::JoinHandle<()>>,
    slow_started: Receiver<()>,
}

/// Which threads poll the IO loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// IO threads of their own, handing requests to the app threads.
    IoThreads,
    /// The app threads poll them (`net::loops`), with this many loops.
    Inline(usize),
}

/// Starts an engine on a free port with `apps` app threads answering
/// "<method> <path> <body length>". They run the extension's app-thread
/// loop, minus Ruby: each job through an [`Exchange`], its connection
/// handed back or kept for the next request.
fn start_shaped(apps: usize, shape: Shape) -> Started {
    start_with(apps, shape, None)
}

/// [`start_shaped`], with the bind speaking TLS when `tls` is given.
fn start_with(apps: usize, shape: Shape, tls: Option<Arc<butterflies::tls::Tls>>) -> Started {
    let bind = BindAddr::Tcp("127.0.0.1:0".parse().unwrap());
    let mut config = Config::new(vec![bind.clone()]);
    if let Some(tls) = tls {
        config.tls_binds.push((bind, tls));
    }
    config.io_threads = 2;
    if let Shape::Inline(loops) = shape {
        config.inline_io = true;
        config.io_threads = loops;
    }
    let mut engine = Engine::bind(config).expect("bind");
    let BindAddr::Tcp(addr) = engine.local_addrs()[0] else {
        panic!("not TCP")
    };
    engine.start(None).expect("start");
    let (slow_tx, slow_started) = crossbeam_channel::unbounded();
    let apps = (0..apps)
        .map(|home| {
            let jobs = engine.jobs();
            let doorbell = engine.doorbell();
            let loops = engine.loops();
            let slow_tx = slow_tx.clone();
            let spin = engine.config().idle_spin;
            thread::spawn(move || {
                let loops = loops.as_ref().map(|l| (&**l, home));
                app_thread((&jobs, &doorbell), loops, spin, &slow_tx)
            })
        })
        .collect();
    Started {
        engine,
        addr,
        apps,
        slow_started,
    }
}

/// One app thread: the production loop (`AppLoop`), answering in Rust.
fn app_thread(
    (jobs, doorbell): (&Receiver<Queued>, &Doorbell),
    loops: Option<(&Loops, usize)>,
    spin: Duration,
    slow_started: &Sender<()>,
) {
    let waker = Arc::new(Waker::new().unwrap());
    let limits = Limits::default();
    let pool = Pool::default();
    let app_loop = AppLoop {
        jobs,
        doorbell,
        pool: &pool,
        limits: &limits,
        keep_spin: spin,
        idle_exit: None,
        batch: Duration::from_micros(500),
        loops,
    };
    app_loop
        .run(&Direct, |job, may_keep| {
            Ok(answer(job, &waker, slow_started, may_keep))
        })
        .unwrap();
}

/// Answers one job through the production path; returns its connection
/// if it stays with this thread.
fn answer(job: Job, waker: &Arc<Waker>, slow_started: &Sender<()>, may_keep: bool) -> Option<Kept> {
    let req = &job.request;
    let body = format!(
        "{} {} {}",
        String::from_utf8_lossy(req.head.method()),
        String::from_utf8_lossy(req.head.path()),
        req.body.len()
    );
    let slow = req.head.path() == b"/slow";
    if req.head.path().starts_with(b"/flood/") {
        FLOOD_SERVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    } else if req.head.path() == b"/other" {
        let served = FLOOD_SERVED.load(std::sync::atomic::Ordering::SeqCst);
        FLOOD_AT_OTHER.store(served, std::sync::atomic::Ordering::SeqCst);
    }
    let version = req.head.version;
    let keep_alive = req.head.keep_alive;
    let ex = Exchange::new(job, waker.clone(), Duration::from_secs(5));
    if slow {
        slow_started.send(()).unwrap();
        thread::sleep(SLOW_REQUEST);
    }
    let head = ResponseHead::new(200).unwrap();
    let framing = head.framing(version, false, Some(body.len() as u64));
    let mut out = Vec::new();
    let keep = head.write(&mut out, version, framing, keep_alive && !ex.closing());
    ex.set_head(200, out.len(), framing);
    out.extend_from_slice(body.as_bytes());
    ex.send_whole(&Direct, out).unwrap();
    ex.mark_finished();
    if may_keep {
        ex.hand_back_or_keep(keep)
    } else {
        ex.hand_back(keep);
        None
    }
}

/// `/flood/...` requests answered so far, and how many when `/other` was.
static FLOOD_SERVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static FLOOD_AT_OTHER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Inline loops in the tests: one, so that a slow request and the next
/// one share it.
const INLINE_LOOPS: usize = 1;

/// How long `/slow` takes.
const SLOW_REQUEST: Duration = Duration::from_millis(300);

/// How long a test waits for anything.
const DEADLINE: Duration = Duration::from_secs(5);

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads responses until `needle` was seen `count` times (or the
/// connection closed: over TLS, with or without close_notify).
fn read_until(stream: &mut impl Read, needle: &str, count: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches(needle).count() < count {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn keep_alive_pipelining_and_errors() {
    keep_alive_pipelining_and_errors_in(Shape::IoThreads);
}

#[test]
fn keep_alive_pipelining_and_errors_inline() {
    keep_alive_pipelining_and_errors_in(Shape::Inline(INLINE_LOOPS));
}

fn keep_alive_pipelining_and_errors_in(shape: Shape) {
    let Started {
        mut engine,
        addr,
        apps,
        ..
    } = start_shaped(2, shape);

    let mut s = connect(addr);
    for i in 0..20 {
        write!(
            s,
            "POST /k{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        )
        .unwrap();
        let r = read_until(&mut s, &format!("POST /k{i} 5"), 1);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    }

    let mut p = connect(addr);
    p.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_until(&mut p, "GET /", 3);
    let (a, b, c) = (
        r.find("GET /1 0").unwrap(),
        r.find("GET /2 0").unwrap(),
        r.find("GET /3 0").unwrap(),
    );
    assert!(a < b && b < c, "{r}");

    let mut chunked = connect(addr);
    chunked
        .write_all(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .unwrap();
    assert!(read_until(&mut chunked, "POST /c 5", 1).contains("POST /c 5"));

    let mut bad = connect(addr);
    bad.write_all(b"GET / HTTP/1.1\r\nContent-Length: x\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    bad.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
    assert!(r.contains("Connection: close"), "{r}");

    let mut ten = connect(addr);
    ten.write_all(b"GET /ten HTTP/1.0\r\n\r\n").unwrap();
    let mut r = String::new();
    ten.read_to_string(&mut r).unwrap();
    assert!(
        r.starts_with("HTTP/1.0 200 OK\r\n") && r.ends_with("GET /ten 0"),
        "{r}"
    );

    engine.stop(false);
    engine.join();
    drop(engine);
    for app in apps {
        app.join().unwrap();
    }
}

#[test]
fn pipelined_batches_are_answered_in_order_even_when_they_end_mid_request() {
    pipelined_batches_are_answered_in_order_even_when_they_end_mid_request_in(Shape::IoThreads);
}

#[test]
fn pipelined_batches_are_answered_in_order_even_when_they_end_mid_request_inline() {
    pipelined_batches_are_answered_in_order_even_when_they_end_mid_request_in(Shape::Inline(
        INLINE_LOOPS,
    ));
}

fn pipelined_batches_are_answered_in_order_even_when_they_end_mid_request_in(shape: Shape) {
    let Started {
        mut engine, addr, ..
    } = start_shaped(2, shape);
    let mut s = connect(addr);
    for round in 0..20 {
        let mut batch: String = (0..16)
            .map(|i| format!("GET /r{round}/{i} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .collect();
        // The batch ends in the first half of one more request.
        batch.push_str("GET /tail HTTP/1.1\r\nHo");
        s.write_all(batch.as_bytes()).unwrap();
        let r = read_until(&mut s, &format!("GET /r{round}/15 0"), 1);
        let at: Vec<usize> = (0..16)
            .map(|i| r.find(&format!("GET /r{round}/{i} 0")).expect(&r))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{r}");
        s.write_all(b"st: x\r\n\r\n").unwrap();
        read_until(&mut s, "GET /tail 0", 1);
    }
    engine.stop(false);
    engine.join();
}

#[test]
fn a_thread_added_on_demand_leaves_when_idle_and_the_loop_counts_it() {
    let mut config = Config::new(vec![BindAddr::Tcp("127.0.0.1:0".parse().unwrap())]);
    config.io_threads = 1;
    let mut engine = Engine::bind(config).expect("bind");
    engine.start(None).expect("start");
    let (jobs, doorbell) = (engine.jobs(), engine.doorbell());
    let (limits, pool) = (Limits::default(), Pool::default());
    let app_loop = AppLoop {
        jobs: &jobs,
        doorbell: &doorbell,
        pool: &pool,
        limits: &limits,
        keep_spin: Duration::ZERO,
        idle_exit: Some(Duration::from_millis(50)),
        batch: Duration::from_micros(500),
        loops: None,
    };
    let started = std::time::Instant::now();
    thread::scope(|s| {
        let leaving = s.spawn(|| app_loop.run(&Direct, |_, _| Ok(None)));
        // While it waits for a job it is a member of the pool, not busy.
        while pool.threads.load(std::sync::atomic::Ordering::Acquire) == 0 && !leaving.is_finished()
        {
            assert!(
                started.elapsed() < DEADLINE,
                "the loop never joined the pool"
            );
            thread::yield_now();
        }
        assert_eq!(pool.busy.load(std::sync::atomic::Ordering::Acquire), 0);
        leaving.join().unwrap().unwrap();
    });
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(pool.threads.load(std::sync::atomic::Ordering::Acquire), 0);
    engine.stop(false);
    engine.join();
}

#[test]
fn a_client_pipelining_without_end_does_not_starve_another() {
    a_client_pipelining_without_end_does_not_starve_another_in(Shape::IoThreads);
}

#[test]
fn a_client_pipelining_without_end_does_not_starve_another_inline() {
    a_client_pipelining_without_end_does_not_starve_another_in(Shape::Inline(INLINE_LOOPS));
}

/// The flood tests count in [`FLOOD_SERVED`] and [`FLOOD_AT_OTHER`], which
/// every engine in this binary shares: one flood at a time (run side by
/// side, one test's flood was counted in the other's).
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn a_client_pipelining_without_end_does_not_starve_another_in(shape: Shape) {
    let _one = ONE_FLOOD.lock().unwrap_or_else(|p| p.into_inner());
    let Started {
        mut engine, addr, ..
    } = start_shaped(1, shape);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = connect(addr);
    let mut writer = flood.try_clone().unwrap();
    let mut reader = flood;
    let batch: String = (0..64)
        .map(|i| format!("GET /flood/{i} HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect();
    let writing = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if writer.write_all(batch.as_bytes()).is_err() {
                    break;
                }
            }
        })
    };
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reading = {
        let (stop, answered) = (stop.clone(), answered.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answered.fetch_add(n, std::sync::atomic::Ordering::Relaxed),
                };
            }
        })
    };
    // The flood is being answered before the other client asks.
    let began = std::time::Instant::now();
    while answered.load(std::sync::atomic::Ordering::Relaxed) < 64 * 1024 {
        assert!(began.elapsed() < DEADLINE, "the flood was not answered");
        thread::yield_now();
    }
    let mut other = connect(addr);
    let before = FLOOD_SERVED.load(std::sync::atomic::Ordering::SeqCst);
    other
        .write_all(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_until(&mut other, "GET /other 0", 1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(r.ends_with("GET /other 0"), "{r}");
    // Flood requests served between the other's request and its answer:
    // a few hundred (those in the pipe, then 128 in a row at most), not as
    // many as the flood can send (thousands when nothing stops it).
    let during = FLOOD_AT_OTHER.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(during < 1000, "{during} flood requests went first");
    engine.stop(false);
    engine.join();
    writing.join().unwrap();
    reading.join().unwrap();
}

#[test]
fn a_slow_request_does_not_hold_up_another_connection() {
    a_slow_request_does_not_hold_up_another_connection_in(Shape::IoThreads);
}

#[test]
fn a_slow_request_does_not_hold_up_another_connection_inline() {
    a_slow_request_does_not_hold_up_another_connection_in(Shape::Inline(INLINE_LOOPS));
}

fn a_slow_request_does_not_hold_up_another_connection_in(shape: Shape) {
    let Started {
        mut engine,
        addr,
        slow_started,
        ..
    } = start_shaped(2, shape);
    let mut slow = connect(addr);
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    slow_started.recv_timeout(DEADLINE).expect("/slow started");
    let started = std::time::Instant::now();
    let mut fast = connect(addr);
    fast.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    read_until(&mut fast, "GET /fast 0", 1);
    assert!(started.elapsed() < SLOW_REQUEST, "{:?}", started.elapsed());
    assert!(read_until(&mut slow, "GET /slow 0", 1).contains("GET /slow 0"));
    engine.stop(false);
    engine.join();
}

#[test]
fn stop_finishes_in_flight_requests() {
    stop_finishes_in_flight_requests_in(Shape::IoThreads);
}

#[test]
fn stop_finishes_in_flight_requests_inline() {
    stop_finishes_in_flight_requests_in(Shape::Inline(INLINE_LOOPS));
}

fn stop_finishes_in_flight_requests_in(shape: Shape) {
    let Started {
        mut engine,
        addr,
        apps,
        slow_started,
    } = start_shaped(1, shape);
    let mut slow = connect(addr);
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    slow_started.recv_timeout(DEADLINE).expect("/slow started");
    engine.stop(false);
    let r = read_until(&mut slow, "GET /slow 0", 1);
    assert!(
        r.contains("Connection: close") && r.ends_with("GET /slow 0"),
        "{r}"
    );
    engine.join();
    drop(engine);
    for app in apps {
        app.join().unwrap();
    }
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn addresses_asking_for_port_0_share_the_first_ones_port() {
    let binds = ["127.0.0.1:0", "127.0.0.2:0"]
        .iter()
        .map(|a| BindAddr::Tcp(a.parse().unwrap()))
        .collect();
    let mut config = Config::new(binds);
    config.io_threads = 1;
    let engine = Engine::bind(config).expect("bind");
    let ports: Vec<u16> = engine
        .local_addrs()
        .iter()
        .map(|a| match a {
            BindAddr::Tcp(a) => a.port(),
            BindAddr::Unix(_) => 0,
        })
        .collect();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], 0);
    assert_eq!(ports[0], ports[1], "{ports:?}");
}

/// The fixture's localhost certificate (ECDSA P-256, valid until 2126).
const TLS_CERT: &str = include_str!("fixtures/localhost.pem");
const TLS_KEY: &str = include_str!("fixtures/localhost.key");

fn tls_context() -> Arc<butterflies::tls::Tls> {
    use butterflies::tls::{CertSpec, Pem, Tls, TlsSettings};
    Tls::new(TlsSettings {
        certs: vec![CertSpec {
            host: None,
            cert: Pem::Inline(TLS_CERT.into()),
            key: Pem::Inline(TLS_KEY.into()),
        }],
        ..TlsSettings::default()
    })
    .unwrap()
}

/// A rustls client trusting the fixture certificate, connected to `addr`.
fn tls_connect(addr: SocketAddr) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(TLS_CERT.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)] // the provider the server uses
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}

#[test]
fn tls_keep_alive_pipelining_bodies_and_close() {
    tls_in(Shape::IoThreads);
}

#[test]
fn tls_keep_alive_pipelining_bodies_and_close_inline() {
    tls_in(Shape::Inline(INLINE_LOOPS));
}

fn tls_in(shape: Shape) {
    let mut s = start_with(2, shape, Some(tls_context()));
    let mut client = tls_connect(s.addr);
    // Keep-alive: two requests, one after the other, on one connection.
    for path in ["/one", "/two"] {
        write!(client, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let got = read_until(&mut client, &format!("GET {path} 0"), 1);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    // Pipelined, in one write, with a body larger than a TLS record.
    let body = vec![b'x'; 100_000];
    let mut batch = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    batch.extend_from_slice(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    batch.extend_from_slice(&body);
    batch.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    client.write_all(&batch).unwrap();
    let got = read_until(&mut client, "HTTP/1.1 200", 4);
    let order: Vec<&str> = ["GET /a 0", "POST /b 100000", "GET /c 0"]
        .into_iter()
        .filter(|answer| got.contains(answer))
        .collect();
    assert_eq!(order.len(), 3, "{got}");
    let at = |answer: &str| got.find(answer).unwrap();
    assert!(at("GET /a 0") < at("POST /b 100000") && at("POST /b 100000") < at("GET /c 0"));
    // Connection: close ends with close_notify: a clean end of stream.
    let mut rest = [0u8; 16];
    assert_eq!(client.read(&mut rest).unwrap(), 0, "close_notify, then EOF");

    // Plain HTTP on the TLS port: nginx's 400, in plain text.
    let mut plain = connect(s.addr);
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_until(&mut plain, "HTTPS port", 1);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    s.engine.stop(false);
    s.engine.join();
    for app in s.apps.drain(..) {
        app.join().unwrap();
    }
}
