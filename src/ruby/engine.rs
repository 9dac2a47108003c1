//! `Butterflies::Engine`: the Ruby face of [`crate::net::Engine`], and the
//! app-thread loop (`Engine#serve`) that takes requests from the queue,
//! calls the Rack app with the GVL held, and writes the response without it.

use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Receiver;
use magnus::{function, method, prelude::*, Error, RHash, RModule, Ruby};

use super::errors::{ExtError, IntoRuby, OrRaise};
use super::gvl::{without_gvl, Gvl, Unblock};
use crate::http::Limits;
use crate::net::settings::{Given, Setting, Value, MAX_SECONDS, SETTINGS};
use crate::net::{BindAddr, Config, Engine, Queued, Shared};
use crate::serve::flusher::Flusher;
use crate::serve::pool::Pool;
use crate::serve::watchdog::Watchdog;

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Engine", ruby.class_object())?;
    class.define_singleton_method("new", function!(RbEngine::new, 2))?;
    class.const_set("SETTINGS", RbEngine::settings(ruby)?)?;
    class.const_set("MAX_SECONDS", MAX_SECONDS)?;
    class.define_singleton_method("pin_process", function!(RbEngine::pin_process, 1))?;
    class.define_method("addresses", method!(RbEngine::addresses, 0))?;
    class.define_method("listener_fds", method!(RbEngine::listener_fds, 1))?;
    class.define_method("reload_tls", method!(RbEngine::reload_tls, 0))?;
    class.define_method("tls_ticket_fd", method!(RbEngine::tls_ticket_fd, 0))?;
    class.define_method("tls?", method!(RbEngine::has_tls, 0))?;
    class.define_method("tls_addresses", method!(RbEngine::tls_addresses, 0))?;
    class.define_method("own_socket_paths", method!(RbEngine::own_socket_paths, 0))?;
    class.define_method("start", method!(RbEngine::start, 1))?;
    class.define_method("workers", method!(RbEngine::workers, 0))?;
    class.define_method("io_threads", method!(RbEngine::io_threads, 0))?;
    class.define_method("add_worker", method!(RbEngine::add_worker, 0))?;
    class.define_method("remove_worker", method!(RbEngine::remove_worker, 0))?;
    class.define_method("stop", method!(RbEngine::stop, 1))?;
    class.define_method("join", method!(RbEngine::join, 0))?;
    class.define_method("wait_for_fault", method!(RbEngine::wait_for_fault, 1))?;
    class.define_method("stats", method!(RbEngine::stats, 0))?;
    class.define_method("stuck?", method!(RbEngine::is_stuck, 0))?;
    class.define_method("wait_for_demand", method!(RbEngine::wait_for_demand, 1))?;
    Ok(())
}

#[magnus::wrap(class = "Butterflies::Engine", free_immediately, size)]
pub struct RbEngine {
    engine: Mutex<Engine>,
    pub(super) write_timeout: Duration,
    pub(super) limits: Limits,
    pub(super) idle_spin: Duration,
    /// The per-request timeouts, when either is configured: (the 503
    /// timeout, the hard limit that reports the process stuck).
    request_timeouts: Option<(Option<Duration>, Option<Duration>)>,
    watchdog: Mutex<Option<Arc<Watchdog>>>,
    pub(super) flusher: Mutex<Option<Flusher>>,
    pub(super) pool: Pool,
    pub(super) jobs: Receiver<Queued>,
    pub(super) doorbell: Arc<crate::net::doorbell::Doorbell>,
    shared: Arc<Shared>,
    /// The inline loop the next app thread polls first.
    next_home: std::sync::atomic::AtomicUsize,
}

impl RbEngine {
    /// `Engine.new([["tcp", "127.0.0.1", 9292, nil, nil], ["unix", "/run/a.sock", 0, "v2", nil]],
    /// io_threads: 2, ...)`: binds now, starts no thread. The binds come
    /// parsed (`Butterflies::Binds`); host names are resolved here. The
    /// fifth element of a TLS bind is `[certs, ca, verify_mode,
    /// ciphersuites]` (`Binds::Bind#to_engine`).
    pub fn new(ruby: &Ruby, binds: Vec<Bind>, options: RHash) -> Result<Self, Error> {
        check_known(ruby, options)?;
        if let Some(fd) = option::<i32>(ruby, options, "tls_ticket_fd")? {
            adopt_ticket_keys(fd);
        }
        let mut addrs: Vec<BindAddr> = Vec::new();
        let mut proxy_binds = Vec::new();
        let mut tls_binds = Vec::new();
        let mut plain_tcp = Vec::new();
        for (kind, host, port, proxy, tls) in &binds {
            let tls = match tls {
                None => None,
                Some(tls) => Some(
                    crate::tls::Tls::new(tls_settings(tls).or_raise(ruby)?)
                        .map_err(|e| ExtError::Tls(format!("ssl://{host}:{port}: {e}")))
                        .or_raise(ruby)?,
                ),
            };
            let versions = match proxy.as_deref() {
                None => None,
                Some(name) => Some(
                    crate::proxy::Versions::parse(name)
                        .ok_or_else(|| {
                            ExtError::Config(format!(
                                "proxy_protocol {name:?}: expected v1, v2 or any"
                            ))
                        })
                        .or_raise(ruby)?,
                ),
            };
            let resolved = match kind.as_str() {
                "unix" => {
                    let addr = BindAddr::Unix(host.into());
                    if let Some(versions) = versions {
                        proxy_binds.push((addr.clone(), versions));
                    }
                    if let Some(tls) = &tls {
                        tls_binds.push((addr.clone(), tls.clone()));
                    }
                    addrs.push(addr);
                    continue;
                }
                "tcp" => (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| ExtError::Bind(format!("cannot resolve {host}:{port}: {e}"))),
                _ => Err(ExtError::Config(format!("unknown kind of bind {kind:?}"))),
            }
            .or_raise(ruby)?;
            for addr in resolved.map(BindAddr::Tcp) {
                if let Some(versions) = versions {
                    proxy_binds.push((addr.clone(), versions));
                }
                if let Some(tls) = &tls {
                    tls_binds.push((addr.clone(), tls.clone()));
                } else {
                    plain_tcp.push(addr.clone());
                }
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        check_plain_or_tls(&plain_tcp, &tls_binds).or_raise(ruby)?;
        let mut config = Config::new(addrs);
        config.proxy_binds = proxy_binds;
        config.tls_binds = tls_binds;
        if let Some(ranges) = option::<Vec<String>>(ruby, options, "proxy_from")? {
            config.proxy_from = ranges
                .iter()
                .map(|r| crate::proxy::Cidr::parse(r))
                .collect::<Result<_, _>>()
                .map_err(|e| ExtError::Config(e.to_string()))
                .or_raise(ruby)?;
        }
        for setting in SETTINGS {
            let given = match setting.value {
                Value::Count { .. } => {
                    option::<u64>(ruby, options, setting.name)?.map(Given::Count)
                }
                _ => option::<f64>(ruby, options, setting.name)?.map(Given::Seconds),
            };
            if let Some(given) = given {
                setting
                    .apply(&mut config, given)
                    .map_err(|e| ExtError::Config(e.to_string()))
                    .or_raise(ruby)?;
            }
        }
        if let Some(n) = at_least_one(ruby, options, "io_threads")? {
            config.io_threads = n;
        }
        if let Some(n) = at_least_one(ruby, options, "workers")? {
            config.workers = n;
        }
        if let Some(fds) = option::<Vec<i32>>(ruby, options, "inherit_fds")? {
            config.inherit = fds;
        }
        if let Some(fds) = option::<Vec<i32>>(ruby, options, "activated_fds")? {
            config.activated = fds;
        }
        if let Some(name) = option::<String>(ruby, options, "access_log")? {
            config.access_log = Some(
                crate::logs::access::Format::parse(&name)
                    .ok_or_else(|| ExtError::Config(format!("unknown access log format {name:?}")))
                    .or_raise(ruby)?,
            );
        }
        if let Some(shared) = option::<bool>(ruby, options, "shared_listeners")? {
            config.shared_listeners = shared;
        }
        if let Some(trust) = option::<bool>(ruby, options, "trust_request_start")? {
            config.trust_request_start = trust;
        }
        if let Some(inline) = option::<bool>(ruby, options, "inline_io")? {
            config.inline_io = inline;
        }
        let request_timeouts = match (config.request_timeout, config.request_hard_timeout) {
            (None, None) => None,
            (soft, hard) => Some((soft, hard)),
        };
        let engine = Engine::bind(config)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidInput => ExtError::Config(e.to_string()),
                _ => ExtError::Bind(e.to_string()),
            })
            .or_raise(ruby)?;
        if let Some((Some(_), _)) = request_timeouts {
            // Queued requests can time out too (net::queue).
            engine.shared().claims.enable();
        }
        Ok(RbEngine {
            request_timeouts,
            watchdog: Mutex::new(None),
            flusher: Mutex::new(None),
            pool: Pool::default(),
            write_timeout: engine.config().write_timeout,
            limits: engine.config().limits,
            idle_spin: engine.config().idle_spin,
            jobs: engine.jobs(),
            doorbell: engine.doorbell(),
            shared: engine.shared(),
            next_home: std::sync::atomic::AtomicUsize::new(0),
            engine: Mutex::new(engine),
        })
    }

    /// `Engine::SETTINGS`: every setting of `net::settings`, by name, as
    /// `{kind: :seconds | :count, default:, min:, max:, zero:, help:}`
    /// (`zero`: seconds that may be 0; `default` nil: off).
    fn settings(ruby: &Ruby) -> Result<RHash, Error> {
        let all = ruby.hash_new();
        for setting in SETTINGS {
            let one = ruby.hash_new();
            let sym = |name: &str| ruby.to_symbol(name);
            let zero = match setting.value {
                Value::Count { min, max, .. } => {
                    one.aset(sym("kind"), sym("count"))?;
                    one.aset(sym("min"), min)?;
                    one.aset(sym("max"), max)?;
                    None
                }
                Value::Seconds { zero, .. } => Some(zero),
                Value::OptionalSeconds { .. } => Some(false),
            };
            if let Some(zero) = zero {
                one.aset(sym("kind"), sym("seconds"))?;
                one.aset(sym("max"), MAX_SECONDS)?;
                one.aset(sym("zero"), zero)?;
            }
            match setting.default_value() {
                Some(Given::Seconds(s)) => one.aset(sym("default"), s)?,
                Some(Given::Count(n)) => one.aset(sym("default"), n)?,
                None => one.aset(sym("default"), ruby.qnil())?,
            }
            one.aset(sym("help"), setting.help)?;
            one.freeze();
            all.aset(sym(setting.name), one)?;
        }
        all.freeze();
        Ok(all)
    }

    fn with_engine<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        let mut engine = self
            .engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut engine)
    }

    /// `Engine.pin_process(index)`: pins this process (every thread, and
    /// those it starts later) to the `index`-th CPU it may use (wrapping);
    /// returns that CPU's number. For cluster workers, before they start.
    pub fn pin_process(ruby: &Ruby, index: usize) -> Result<usize, Error> {
        crate::process::sched::pin_process(index)
            .map_err(ExtError::Pin)
            .or_raise(ruby)
    }

    /// `listener_fds(activated)`: the listening descriptors, made to
    /// survive exec (hot restart); those the service manager passed, or
    /// the others.
    pub fn listener_fds(ruby: &Ruby, rb_self: &Self, activated: bool) -> Result<Vec<i32>, Error> {
        rb_self
            .with_engine(|e| e.listener_fds(activated))
            .map_err(ExtError::Io)
            .or_raise(ruby)
    }

    /// `reload_tls`: reads every TLS bind's certificates again. Returns
    /// the problems (one line per bind that kept its old certificates).
    pub fn reload_tls(&self) -> Vec<String> {
        self.with_engine(|e| e.reload_tls())
    }

    /// `tls?`: some bind speaks TLS.
    pub fn has_tls(&self) -> bool {
        self.with_engine(|e| !e.config().tls_binds.is_empty())
    }

    /// `tls_ticket_fd`: the read end of a pipe holding this process's TLS
    /// ticket keys, for a worker about to exec (it passes the descriptor
    /// as the `tls_ticket_fd` option), so tickets resume across the
    /// cluster. Open across exec; the new process closes it.
    pub fn tls_ticket_fd(ruby: &Ruby, _rb_self: &Self) -> Result<i32, Error> {
        use std::os::fd::IntoRawFd;
        let keys = crate::tls::ticket_keys()
            .map_err(|e| ExtError::Config(e.to_string()))
            .or_raise(ruby)?;
        let (read, write) = nix::unistd::pipe()
            .map_err(|e| ExtError::Io(e.into()))
            .or_raise(ruby)?;
        // A pipe holds far more than the few bytes written: no block.
        nix::unistd::write(&write, &keys.export())
            .map_err(|e| ExtError::Io(e.into()))
            .or_raise(ruby)?;
        Ok(read.into_raw_fd())
    }

    /// The Unix socket files this server made, to remove on a final stop.
    pub fn own_socket_paths(&self) -> Vec<String> {
        self.with_engine(|e| {
            e.own_socket_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect()
        })
    }

    /// The bound addresses: "host:port", or "unix:/path".
    pub fn addresses(&self) -> Vec<String> {
        self.with_engine(|e| e.local_addrs().iter().map(|a| a.to_string()).collect())
    }

    /// The bound addresses that speak TLS, as `addresses` gives them.
    pub fn tls_addresses(&self) -> Vec<String> {
        self.with_engine(|e| e.tls_addrs().iter().map(|a| a.to_string()).collect())
    }

    /// IO threads per process (per worker, in a cluster).
    pub fn io_threads(&self) -> usize {
        self.with_engine(|e| e.config().io_threads.max(1))
    }

    /// The cluster workers the TCP sockets are dealt to.
    pub fn workers(&self) -> usize {
        self.with_engine(|e| e.workers())
    }

    /// Binds one more worker's sockets (a cluster master growing).
    pub fn add_worker(ruby: &Ruby, rb_self: &Self) -> Result<usize, Error> {
        rb_self
            .with_engine(|e| e.add_worker())
            .map_err(|e| ExtError::Bind(format!("cannot bind a worker's sockets: {e}")))
            .or_raise(ruby)
    }

    /// Closes the last worker's sockets here (a cluster master shrinking,
    /// before it stops that worker).
    pub fn remove_worker(&self) -> usize {
        self.with_engine(|e| e.remove_worker())
    }

    /// `start(worker)`: starts the IO threads on cluster worker `worker`'s
    /// sockets, or on all of them (nil: single mode). Call after any fork.
    pub fn start(ruby: &Ruby, rb_self: &Self, worker: Option<usize>) -> Result<(), Error> {
        let failed = |e: std::io::Error| ExtError::Start(e).into_ruby(ruby);
        super::env::warm(ruby);
        super::hash_walk::warm();
        super::stream::warm(ruby);
        super::hijack::warm(ruby);
        super::early_hints::warm(ruby);
        // Before any of the engine's threads makes an arena.
        crate::process::malloc::keep_freed_memory();
        rb_self.with_engine(|e| e.start(worker)).map_err(failed)?;
        let (flusher, _thread) = Flusher::start(rb_self.shared.faults.clone()).map_err(failed)?;
        *rb_self.flusher.lock().unwrap_or_else(|p| p.into_inner()) = Some(flusher);
        if let Some((timeout, hard)) = rb_self.request_timeouts {
            let shared = rb_self.shared.clone();
            let (dog, _thread) = Watchdog::start(timeout, hard, shared).map_err(failed)?;
            *rb_self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(dog);
        }
        Ok(())
    }

    /// The inline loops (if on) and the one an app thread starting now
    /// polls first.
    pub(super) fn loops(&self) -> Option<(Arc<crate::net::loops::Loops>, usize)> {
        let loops = self.with_engine(|e| e.loops())?;
        let home = self
            .next_home
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((loops, home))
    }

    pub(super) fn watchdog(&self) -> Option<Arc<Watchdog>> {
        self.watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An app thread has been busy past the request hard timeout.
    pub fn is_stuck(&self) -> bool {
        self.watchdog().is_some_and(|dog| dog.is_stuck())
    }

    /// Stops accepting. In-flight requests finish; `serve` returns in every
    /// app thread once the IO threads are done. `keep_listening`: a hot
    /// restart follows, which takes the listening sockets over.
    pub fn stop(&self, keep_listening: bool) {
        self.with_engine(|e| e.stop(keep_listening));
        if let Some(dog) = self.watchdog() {
            dog.stop();
        }
    }

    /// Joins the IO threads (they have finished once `serve` returned).
    pub fn join(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        let engine = &rb_self.engine;
        without_gvl(
            ruby,
            move || {
                let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
                engine.join();
                // The last access log lines go out before the process ends.
                crate::logs::sink::drain();
            },
            None::<Unblock<'_, ()>>,
        )
    }

    /// Waits (GVL released, interruptible) up to `timeout` seconds for a
    /// Rust thread of the engine to panic or fail; returns what happened,
    /// or nil. The process must then stop: it is missing a thread.
    pub fn wait_for_fault(
        ruby: &Ruby,
        rb_self: &Self,
        timeout: f64,
    ) -> Result<Option<String>, Error> {
        let faults = &rb_self.shared.faults;
        let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
        let fault = without_gvl(
            ruby,
            || faults.wait(timeout),
            Some(Unblock {
                func: |faults: &Arc<crate::process::supervise::Faults>| faults.interrupt(),
                arg: faults,
            }),
        )?;
        Ok(fault.map(|f| f.to_string()))
    }

    /// This process's requests answered and 503s it answered itself (a
    /// full queue, a request timeout), read from its stats slot: each
    /// request is counted once, there.
    pub fn stats(ruby: &Ruby, _rb_self: &Self) -> Result<RHash, Error> {
        let sum = |prefix: &str| -> u64 {
            crate::stats::VALUES
                .iter()
                .enumerate()
                .filter(|(_, (name, _))| name.starts_with(prefix))
                .map(|(i, _)| crate::stats::value(i))
                .sum()
        };
        let stats = ruby.hash_new();
        stats.aset(ruby.to_symbol("requests"), sum("requests_"))?;
        stats.aset(ruby.to_symbol("rejected"), sum("rejected_503"))?;
        Ok(stats)
    }

    /// Waits (GVL released) up to `timeout` seconds for every app thread to
    /// be busy with requests queueing and the GVL free: time to add one.
    pub fn wait_for_demand(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<bool, Error> {
        let loops = rb_self.with_engine(|e| e.loops());
        let jobs = &rb_self.jobs;
        let waiting = || !jobs.is_empty() || loops.as_ref().is_some_and(|l| l.starving());
        rb_self.pool.wait_for_demand(
            &Gvl(ruby),
            &waiting,
            Duration::from_secs_f64(timeout.max(0.0)),
        )
    }
}

/// A layout count that must be at least 1. The Ruby side checks them;
/// one that is not is a bug there, raised rather than quietly changed.
fn at_least_one(ruby: &Ruby, options: RHash, name: &str) -> Result<Option<usize>, Error> {
    match option::<usize>(ruby, options, name)? {
        Some(0) => Err(ExtError::Config(format!(
            "{name} must be at least 1, got 0"
        )))
        .or_raise(ruby),
        n => Ok(n),
    }
}

/// What `Engine.new` takes besides the settings (`net::settings`): how
/// `Butterflies::Listeners` lays the engine out, not user settings.
const PLUMBING: &[&str] = &[
    "io_threads",
    "workers",
    "inherit_fds",
    "activated_fds",
    "proxy_from",
    "shared_listeners",
    "access_log",
    "trust_request_start",
    "inline_io",
    "tls_ticket_fd",
];

/// Refuses an option the engine does not know, rather than ignore it.
fn check_known(ruby: &Ruby, options: RHash) -> Result<(), Error> {
    options.foreach(|key: magnus::Symbol, _: magnus::Value| {
        let name = key.name()?;
        if PLUMBING.contains(&name.as_ref()) || Setting::named(&name).is_some() {
            Ok(magnus::r_hash::ForEach::Continue)
        } else {
            Err(ExtError::Config(format!("unknown engine option {name}")).into_ruby(ruby))
        }
    })
}

fn option<T: magnus::TryConvert>(
    ruby: &Ruby,
    options: RHash,
    name: &str,
) -> Result<Option<T>, Error> {
    match options.get(ruby.to_symbol(name)) {
        Some(v) if !v.is_nil() => Ok(Some(T::try_convert(v)?)),
        _ => Ok(None),
    }
}

/// A bind as `Binds::Bind#to_engine` gives it: kind, host or path, port,
/// PROXY protocol versions, TLS.
type Bind = (String, String, u16, Option<String>, Option<TlsBind>);

/// A TLS bind as `Binds::Bind#to_engine` gives it: its certificates
/// (`[host or nil, cert, key]`, each a path or a PEM text), the CA file for
/// client certificates, the verify mode, the cipher suites.
type TlsBind = (
    Vec<(Option<String>, String, String)>,
    Option<String>,
    String,
    Option<Vec<String>>,
);

/// One address (a port given, not 0) cannot serve both plain HTTP and TLS.
fn check_plain_or_tls(
    plain: &[BindAddr],
    tls: &[(BindAddr, std::sync::Arc<crate::tls::Tls>)],
) -> Result<(), ExtError> {
    let both = tls
        .iter()
        .map(|(a, _)| a)
        .find(|a| plain.contains(a) && matches!(a, BindAddr::Tcp(tcp) if tcp.port() != 0));
    match both {
        Some(addr) => Err(ExtError::Tls(format!(
            "{addr} is bound twice, plain (tcp://) and TLS (ssl://): give each its own port"
        ))),
        None => Ok(()),
    }
}

fn pem_source(text: &str) -> crate::tls::Pem {
    if text.trim_start().starts_with("-----BEGIN") {
        crate::tls::Pem::Inline(text.to_string())
    } else {
        crate::tls::Pem::File(text.into())
    }
}

fn tls_settings(bind: &TlsBind) -> Result<crate::tls::TlsSettings, ExtError> {
    let (certs, ca, verify, suites) = bind;
    Ok(crate::tls::TlsSettings {
        certs: certs
            .iter()
            .map(|(host, cert, key)| crate::tls::CertSpec {
                host: host.clone(),
                cert: pem_source(cert),
                key: pem_source(key),
            })
            .collect(),
        client_ca: ca.as_deref().map(pem_source),
        verify: crate::tls::Verify::parse(verify).ok_or_else(|| {
            ExtError::Tls(format!(
                "verify_mode {verify:?}: expected none, peer or force_peer"
            ))
        })?,
        suites: suites.clone(),
    })
}

/// Continues the TLS ticket keys the master passed through a pipe, and
/// closes it. Unreadable, the worker makes keys of its own (tickets then
/// resume only on it; said once).
fn adopt_ticket_keys(fd: i32) {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor was passed across exec for this alone (the
    // master's `tls_ticket_fd`); nothing else in this process owns it.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    let _ = pipe.read_to_end(&mut bytes);
    if !crate::tls::adopt_ticket_keys(&bytes) {
        crate::log_err!(
            "butterflies: TLS ticket keys not passed on; tickets resume on this worker only"
        );
    }
}
