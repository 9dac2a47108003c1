//! Process-wide settings, apart from sockets and requests: how glibc's
//! malloc keeps freed memory (`malloc`), and CPU scheduling and affinity
//! (`sched`: IO threads under SCHED_BATCH, pinned cluster workers).

pub mod malloc;
pub mod sched;
