//! Scheduling policy of the engine's threads.

/// Puts the calling thread under `SCHED_BATCH`: same CPU share, but a
/// wake-up does not preempt the thread that is running.
pub fn batch_this_thread() {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall wrapper; pid 0 is the calling thread and
    // `param` lives across the call.
    unsafe {
        nix::libc::sched_setscheduler(0, nix::libc::SCHED_BATCH, &param);
    }
}
