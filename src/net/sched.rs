//! Scheduling policy of the engine's threads.

/// Puts the calling thread under `SCHED_BATCH`: the same CPU share and
/// nice value, but its wake-ups do not preempt the thread running on the
/// CPU (the kernel treats it as a batch job rather than an interactive
/// one). A failure leaves the thread as it was.
pub fn batch_this_thread() {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall wrapper; pid 0 is the calling thread and
    // `param` lives across the call.
    unsafe {
        nix::libc::sched_setscheduler(0, nix::libc::SCHED_BATCH, &param);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_can_put_itself_under_sched_batch() {
        std::thread::spawn(|| {
            super::batch_this_thread();
            // SAFETY: plain syscall wrapper; 0 is the calling thread.
            let policy = unsafe { nix::libc::sched_getscheduler(0) };
            assert_eq!(policy, nix::libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
    }
}
