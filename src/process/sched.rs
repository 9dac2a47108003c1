//! Scheduling of the engine's threads: their policy, and pinning a whole
//! process (a cluster worker) to one CPU.

use std::io;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

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

/// Pins every thread of this process, and so every thread it starts later,
/// to one CPU: the `index`-th (wrapping) of the CPUs it may run on now.
/// Returns that CPU's number.
pub fn pin_process(index: usize) -> io::Result<usize> {
    let allowed = sched_getaffinity(Pid::from_raw(0))?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&cpu| allowed.is_set(cpu).unwrap_or(false))
        .collect();
    let Some(&cpu) = cpus.get(index % cpus.len().max(1)) else {
        return Err(io::Error::other("no CPU to run on"));
    };
    let mut only = CpuSet::new();
    only.set(cpu)?;
    for task in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that ended meanwhile is no error.
        match sched_setaffinity(Pid::from_raw(tid), &only) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(cpu)
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

    #[test]
    fn pinning_covers_threads_started_before_and_after() {
        // In a child process, so the test runner's threads stay as they are.
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, ForkResult};
        let allowed = super::sched_getaffinity(super::Pid::from_raw(0)).unwrap();
        let first = (0..super::CpuSet::count())
            .find(|&c| allowed.is_set(c).unwrap())
            .unwrap();
        // SAFETY: the child only spawns threads, reads its affinity and exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let cpus_of_this_thread = || {
                    let mine = super::sched_getaffinity(super::Pid::from_raw(0)).unwrap();
                    (0..super::CpuSet::count())
                        .filter(|&c| mine.is_set(c).unwrap())
                        .collect::<Vec<_>>()
                };
                let (go, wait) = std::sync::mpsc::channel::<()>();
                let before = std::thread::spawn(move || {
                    wait.recv().unwrap();
                    cpus_of_this_thread()
                });
                let pinned = super::pin_process(0).ok();
                let after = std::thread::spawn(cpus_of_this_thread).join().unwrap();
                go.send(()).unwrap();
                let before = before.join().unwrap();
                let ok = pinned == Some(first) && before == [first] && after == [first];
                std::process::exit(if ok { 0 } else { 1 });
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }
}
