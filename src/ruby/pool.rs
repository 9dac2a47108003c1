//! The app-thread pool's accounting, and the demand signal that lets the
//! Ruby side add app threads while every thread is busy *and the GVL is
//! free* (the threads are blocked in IO or sleep, not computing): then more
//! threads serve more requests, instead of fast requests queueing behind
//! slow ones. Threads beyond the base count leave again when idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use magnus::{Error, Ruby};

use super::gvl::{without_gvl, Unblock};
use crate::net::Job;

/// How often demand is checked.
const CHECK_EVERY: Duration = Duration::from_millis(2);
/// Consecutive checks that must all see demand.
const CHECKS: u32 = 2;
/// Re-acquiring the GVL faster than this means nobody was holding it.
const GVL_FREE: Duration = Duration::from_micros(500);

#[derive(Debug, Default)]
pub struct Pool {
    /// App threads inside `Engine#serve`.
    pub threads: AtomicUsize,
    /// Of those, the ones running a request.
    pub busy: AtomicUsize,
}

/// Counts a thread as busy while alive.
pub struct Busy<'a>(&'a Pool);

impl<'a> Busy<'a> {
    pub fn new(pool: &'a Pool) -> Self {
        pool.busy.fetch_add(1, Ordering::AcqRel);
        Busy(pool)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a thread as in the pool while alive.
pub struct Member<'a>(&'a Pool);

impl<'a> Member<'a> {
    pub fn new(pool: &'a Pool) -> Self {
        pool.threads.fetch_add(1, Ordering::AcqRel);
        Member(pool)
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    fn saturated(&self, jobs: &Receiver<Job>) -> bool {
        !jobs.is_empty()
            && self.busy.load(Ordering::Acquire) >= self.threads.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for requests queueing while every app thread is
    /// busy; true if that happened and the GVL was then free.
    pub fn wait_for_demand(
        &self,
        ruby: &Ruby,
        jobs: &Receiver<Job>,
        timeout: Duration,
    ) -> Result<bool, Error> {
        let (wake_tx, wake_rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        let detected = without_gvl(
            ruby,
            || {
                let deadline = Instant::now() + timeout;
                let mut seen = 0;
                while Instant::now() < deadline {
                    if wake_rx.recv_timeout(CHECK_EVERY).is_ok() {
                        return None;
                    }
                    seen = if self.saturated(jobs) { seen + 1 } else { 0 };
                    if seen >= CHECKS {
                        return Some(Instant::now());
                    }
                }
                None
            },
            Some(Unblock {
                func: |wake: &Sender<()>| {
                    let _ = wake.try_send(());
                },
                arg: &wake_tx,
            }),
        )?;
        Ok(detected.is_some_and(|at| at.elapsed() < GVL_FREE))
    }
}
