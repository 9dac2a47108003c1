//! Butterflies: a Rack web server whose engine is Rust.
//!
//! The crate is laid out by concern, and only one folder knows about Ruby:
//!
//! - [`http`]: HTTP/1.1 request parsing and response framing. Pure Rust.
//! - [`net`]: listeners, the per-thread epoll loops, connections and the
//!   request queue to the app threads. Pure Rust.
//! - [`logs`]: what the engine prints (the access log, its own errors),
//!   through a bounded queue and a writer thread: never blocking.
//! - [`process`]: process-wide settings: malloc, CPU scheduling and
//!   affinity.
//! - [`stats`]: counters and histograms in memory shared by a cluster's
//!   processes, for `/stats` and `/metrics`.
//! - [`tls`]: TLS with rustls, driven by the IO threads: certificates,
//!   their reload, shared session-ticket keys. Pure Rust.
//! - [`serve`]: an app thread's side of a request: the exchange and its
//!   writes, the flusher, the watchdog, the pool's counting. Pure Rust;
//!   where it blocks, the caller releases the GVL.
//! - `ruby` (feature `ruby`): the extension itself: the GVL boundary, the
//!   Rack env, reading the app's response, the `Butterflies::Engine` class.
//!
//! Without the `ruby` feature the crate builds and tests with no Ruby VM.

pub mod http;
pub mod logs;
pub mod net;
pub mod process;
pub mod proxy;
pub mod serve;
pub mod stats;
pub mod tls;

#[cfg(feature = "ruby")]
mod ruby;
