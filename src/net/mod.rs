//! Sockets and threads without Ruby: the SO_REUSEPORT listener group, one
//! epoll loop per IO thread, connections, and the queue that carries complete
//! requests (plain Rust data) to the app threads.

pub mod body;
pub mod conn;
pub mod engine;
mod io_thread;
pub mod listener;
pub mod reader;

pub use body::Body;
pub use conn::Request;
pub use engine::{Config, Engine, Job, Shared};
pub use listener::{BindAddr, ListenOptions};
