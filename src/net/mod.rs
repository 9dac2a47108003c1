//! Sockets and threads without Ruby: the SO_REUSEPORT listener group, one
//! epoll loop per IO thread (or per inline loop the app threads poll,
//! `loops`), connections, and the queue that carries complete requests
//! (plain Rust data) to the app threads.

pub mod body;
pub mod config;
pub mod conn;
pub mod cursor;
pub mod doorbell;
pub mod engine;
pub mod handoff;
mod io_thread;
pub mod listener;
pub mod loops;
pub mod park;
pub mod queue;
pub mod reader;
pub mod settings;
mod slots;
mod spill;
mod transport;

pub use body::Body;
pub use config::Config;
pub use conn::Request;
pub use engine::Engine;
pub use handoff::{Job, Kept, Shared};
pub use listener::{BindAddr, ListenOptions, Listener};
/// An item of the request queue: a job, or its claim.
pub type Queued = queue::Queued<Job>;
