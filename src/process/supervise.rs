//! Threads that must not vanish silently. Every Rust thread of the engine
//! (IO threads, the flusher, the request watchdog) runs through
//! [`spawn`]: if it panics or returns an error, the [`Faults`] record says
//! which thread and why, and whoever waits in [`Faults::wait`] (the Ruby
//! main loop, through `Engine#wait_for_fault`) wakes and stops the process
//! gracefully with a non-zero exit status. A process that went on serving
//! with one IO thread fewer would drop that thread's listener share and
//! connections without a word.

use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a thread ended when it should not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Panicked(String),
    Failed(String),
}

/// A thread's unexpected end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub thread: String,
    pub ending: Ending,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ending {
            Ending::Panicked(why) => write!(f, "thread {} panicked: {why}", self.thread),
            Ending::Failed(why) => write!(f, "thread {} failed: {why}", self.thread),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The first fault; later ones are logged only.
    first: Option<Fault>,
    /// A waiter was asked to return (the unblock function).
    interrupted: bool,
}

/// The faults of one engine's threads.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
    changed: Condvar,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a fault (the first one is kept) and logs it.
    pub fn report(&self, fault: Fault) {
        eprintln!("butterflies: {fault}; stopping");
        let mut state = self.lock();
        state.first.get_or_insert(fault);
        self.changed.notify_all();
    }

    /// The first fault, if any.
    pub fn first(&self) -> Option<Fault> {
        self.lock().first.clone()
    }

    /// Waits up to `timeout` for a fault; returns early (`None`) when
    /// [`interrupt`](Self::interrupt) is called.
    pub fn wait(&self, timeout: Duration) -> Option<Fault> {
        let state = self.lock();
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.first.is_none() && !s.interrupted)
            .unwrap_or_else(|p| p.into_inner());
        state.interrupted = false;
        state.first.clone()
    }

    /// Ends a [`wait`](Self::wait) at once.
    pub fn interrupt(&self) {
        self.lock().interrupted = true;
        self.changed.notify_all();
    }
}

/// Starts a named thread whose panic or error is reported to `faults`.
pub fn spawn<F>(name: String, faults: Arc<Faults>, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() -> io::Result<()> + Send + 'static,
{
    let thread = name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        let ending = match catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(())) => return,
            Ok(Err(e)) => Ending::Failed(e.to_string()),
            Err(panic) => Ending::Panicked(panic_message(panic.as_ref())),
        };
        faults.report(Fault { thread, ending });
    })
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: impl FnOnce() -> io::Result<()> + Send + 'static) -> Option<Fault> {
        let faults = Arc::new(Faults::default());
        let handle = spawn("t".into(), faults.clone(), body).expect("spawn");
        let _ = handle.join();
        faults.wait(Duration::ZERO)
    }

    #[test]
    fn a_thread_that_returns_ok_is_no_fault() {
        assert_eq!(run(|| Ok(())), None);
    }

    #[test]
    fn a_panic_is_recorded_with_its_message() {
        let fault = run(|| panic!("slot {} gone", 3)).expect("a fault");
        assert_eq!(fault.ending, Ending::Panicked("slot 3 gone".into()));
        assert_eq!(fault.to_string(), "thread t panicked: slot 3 gone");
    }

    #[test]
    fn an_error_is_recorded() {
        let fault = run(|| Err(io::Error::other("epoll_wait: EBADF"))).expect("a fault");
        assert_eq!(fault.ending, Ending::Failed("epoll_wait: EBADF".into()));
    }

    #[test]
    fn a_waiter_wakes_on_a_fault_and_on_interrupt() {
        let faults = Arc::new(Faults::default());
        let waiter = {
            let faults = faults.clone();
            std::thread::spawn(move || faults.wait(Duration::from_secs(30)))
        };
        faults.interrupt();
        assert_eq!(waiter.join().expect("join"), None);
        let waiter = {
            let faults = faults.clone();
            std::thread::spawn(move || faults.wait(Duration::from_secs(30)))
        };
        let failing = spawn("io-1".into(), faults.clone(), || {
            Err(io::Error::other("gone"))
        })
        .expect("spawn");
        let _ = failing.join();
        let fault = waiter.join().expect("join").expect("a fault");
        assert_eq!(fault.thread, "io-1");
    }
}
