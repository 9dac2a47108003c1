//! What an engine needs to know before it binds: addresses, thread count,
//! limits and timeouts, with the defaults a real app needs.

use std::os::fd::RawFd;
use std::time::Duration;

use super::listener::{BindAddr, ListenOptions};
use crate::http::Limits;

/// Keep-alive connections idle longer than this are closed (Puma: 20 s).
pub const IDLE_TIMEOUT_SECS: u64 = 20;
/// A request head must be complete this long after its first byte.
pub const HEADER_TIMEOUT_SECS: u64 = 20;
/// A request body may pause this long between bytes.
pub const BODY_TIMEOUT_SECS: u64 = 30;
/// A client that reads none of a pending response for this long is dropped.
pub const WRITE_TIMEOUT_SECS: u64 = 30;
/// After `stop`, connections still busy after this long are dropped.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// An IO thread with nothing to do polls this long before it sleeps.
pub const IDLE_SPIN_MICROS: u64 = 50;
/// Requests waiting for an app thread before new ones get a 503.
pub const QUEUE_DEPTH: usize = 1024;

/// What the engine needs to know before it binds.
#[derive(Debug, Clone)]
pub struct Config {
    pub binds: Vec<BindAddr>,
    pub io_threads: usize,
    pub listen: ListenOptions,
    /// Listening sockets inherited across exec (hot restart), by descriptor.
    pub inherit: Vec<RawFd>,
    /// Listening sockets the service manager passed (systemd socket
    /// activation, or a previous process of ours that had them), by
    /// descriptor; see `net::engine`.
    pub activated: Vec<RawFd>,
    /// Binds whose connections begin with a PROXY protocol header, and
    /// the versions they take (`crate::proxy`).
    pub proxy_binds: Vec<(BindAddr, crate::proxy::Versions)>,
    /// The peers those headers are taken from.
    pub proxy_from: Vec<crate::proxy::Cidr>,
    /// Addresses whose connections speak TLS, and their contexts.
    pub tls_binds: Vec<(BindAddr, std::sync::Arc<crate::tls::Tls>)>,
    /// The listeners are shared with other processes (cluster workers): on
    /// stop, close them but do not shut them down.
    pub shared_listeners: bool,
    /// The cluster workers each TCP address gets `io_threads` sockets for
    /// (1 in single mode); see `net::engine`.
    pub workers: usize,
    /// Log every request, in this format (`crate::logs::access`).
    pub access_log: Option<crate::logs::access::Format>,
    /// Trust `X-Request-Start` (a proxy in front sets it) for the proxy
    /// queue time histogram.
    pub trust_request_start: bool,
    /// No IO threads: the app threads poll the IO loops themselves
    /// (`net::loops`).
    pub inline_io: bool,
    pub queue_depth: usize,
    pub limits: Limits,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// How long an IO thread keeps polling once out of work before it
    /// sleeps, and an app thread reads a kept connection for its next
    /// request (zero: neither). See `IoThread::spin` and `Kept`.
    pub idle_spin: Duration,
    /// Response bytes all connections may park with IO threads (`net::park`).
    pub max_parked_bytes: usize,
    /// Response bytes all connections may spill to disk past those
    /// (`net::spill`).
    pub max_spilled_bytes: usize,
    /// A request running longer gets a 503 (`serve::watchdog`); off if None.
    pub request_timeout: Option<Duration>,
    /// An app thread busy longer reports the process stuck; off if None.
    pub request_hard_timeout: Option<Duration>,
}

impl Config {
    pub fn new(binds: Vec<BindAddr>) -> Self {
        Config {
            binds,
            io_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            listen: ListenOptions::default(),
            inherit: Vec::new(),
            activated: Vec::new(),
            proxy_binds: Vec::new(),
            proxy_from: Vec::new(),
            tls_binds: Vec::new(),
            shared_listeners: false,
            workers: 1,
            access_log: None,
            trust_request_start: false,
            inline_io: false,
            queue_depth: QUEUE_DEPTH,
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(IDLE_TIMEOUT_SECS),
            header_timeout: Duration::from_secs(HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(BODY_TIMEOUT_SECS),
            write_timeout: Duration::from_secs(WRITE_TIMEOUT_SECS),
            shutdown_timeout: Duration::from_secs(SHUTDOWN_TIMEOUT_SECS),
            idle_spin: Duration::from_micros(IDLE_SPIN_MICROS),
            max_parked_bytes: super::park::MAX_PARKED_BYTES,
            max_spilled_bytes: super::park::MAX_SPILLED_BYTES,
            request_timeout: None,
            request_hard_timeout: None,
        }
    }
}
