//! What the engine prints, without ever blocking a thread that serves
//! requests on a slow terminal, pipe or disk: lines gather in a bounded
//! buffer that a writer thread of their own empties ([`sink`]), and are
//! dropped and counted when it is full. [`access`] formats the access log's lines.

pub mod access;
pub mod sink;

/// A line for stderr, through the sink once it runs (else written at
/// once: tests, and the master, which starts no thread).
#[macro_export]
macro_rules! log_err {
    ($($arg:tt)*) => {
        $crate::logs::sink::err(format!($($arg)*))
    };
}
