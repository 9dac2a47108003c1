//! The ceiling: a Ruby-free hello server (one epoll loop, a fixed 12-byte
//! response, keep-alive, pipelining). No Rack server can beat it on the same
//! core; the benchmark suite reports every figure against it.
//!
//!   cargo run --release --example ceiling -- 127.0.0.1:9000 [SPIN_MICROS]
//!
//! With SPIN_MICROS, it polls (epoll_wait with no timeout, sched_yield
//! between polls) that long before it sleeps, as Butterflies' idle_spin
//! does; the suite measures it without.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nHello world!";

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let spin = std::time::Duration::from_micros(
        std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    );
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::empty())?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
    let mut conns: HashMap<u64, (TcpStream, Vec<u8>)> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = vec![0u8; 65536];
    loop {
        let mut n = 0;
        let until = std::time::Instant::now() + spin;
        while !spin.is_zero() && std::time::Instant::now() < until {
            n = epoll.wait(&mut events, EpollTimeout::ZERO)?;
            if n > 0 {
                break;
            }
            let _ = nix::sched::sched_yield();
        }
        if n == 0 {
            n = epoll.wait(&mut events, EpollTimeout::NONE)?;
        }
        for event in &events[..n] {
            if event.data() == 0 {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let key = stream.as_raw_fd() as u64;
                    epoll.add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, key))?;
                    conns.insert(key, (stream, Vec::new()));
                }
                continue;
            }
            let key = event.data();
            let Some((stream, pending)) = conns.get_mut(&key) else {
                continue;
            };
            let closed = match stream.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    let mut out = Vec::new();
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        out.extend_from_slice(RESPONSE);
                    }
                    stream.write_all(&out).is_err()
                }
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            };
            if closed {
                conns.remove(&key);
            }
        }
    }
}
