//! Serving a request on an app thread, without Ruby: everything between
//! taking a job from the queue and handing its connection back that needs
//! no Ruby value, so `cargo test` covers it. `src/ruby/` drives it and
//! maps it to Ruby objects and exceptions.
//!
//! - [`app_loop`]: the app-thread loop: take a request, serve it, read a
//!   kept connection's next one.
//! - [`blocking`]: where an app thread blocks ([`Blocking`]); for Ruby,
//!   the GVL is released there (`src/ruby/gvl.rs`).
//! - [`exchange`]: one request/response exchange: where the response
//!   stands, and its writes and reads.
//! - [`wait`]: the waits for a slow client, outside any lock.
//! - [`flusher`]: the thread that writes streamed pieces an app paused on.
//! - [`watchdog`]: the thread that times requests out.
//! - [`pool`]: the app-thread pool's counting and its demand signal.

pub mod app_loop;
pub mod blocking;
pub mod exchange;
pub mod flusher;
pub mod pool;
pub mod wait;
pub mod watchdog;

pub use blocking::{Blocking, Direct, Unblock};
pub use exchange::{Exchange, ExchangeError, Gone};
pub use wait::Waker;
