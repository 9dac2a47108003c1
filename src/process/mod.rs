//! Process-wide concerns, apart from sockets and requests: how glibc's
//! malloc keeps freed memory (`malloc`), CPU scheduling and affinity
//! (`sched`: IO threads under SCHED_BATCH, pinned cluster workers), and
//! the engine's own threads, whose panics and failures are recorded
//! (`supervise`).

pub mod malloc;
pub mod sched;
pub mod supervise;
