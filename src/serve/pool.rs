//! The app-thread pool's accounting, and the demand signal that lets the
//! Ruby side add app threads while every thread is busy *and the GVL is
//! free* (the threads are blocked in IO or sleep, not computing): then more
//! threads serve more requests, instead of fast requests queueing behind
//! slow ones. Threads beyond the base count leave again when idle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::blocking::{Blocking, Unblock};

/// How often demand is checked.
const CHECK_EVERY: Duration = Duration::from_millis(2);
/// Consecutive checks that must all see demand.
const CHECKS: u32 = 2;
/// The watcher's longest sleep between looks (a wake-up lost to a race
/// costs at most this).
const SLEEP_AT_MOST: Duration = Duration::from_millis(100);
/// Re-acquiring the GVL faster than this means nobody was holding it.
const GVL_FREE: Duration = Duration::from_micros(500);

#[derive(Debug, Default)]
pub struct Pool {
    /// App threads inside `Engine#serve`.
    pub threads: AtomicUsize,
    /// Of those, the ones running a request.
    pub busy: AtomicUsize,
    /// The demand watcher sleeps until every app thread is busy (instead of
    /// checking every few milliseconds on an idle server).
    all_busy: Condvar,
    all_busy_lock: Mutex<()>,
    /// The watcher is asleep: the thread that makes all busy wakes it.
    watcher_asleep: AtomicBool,
}

/// Counts a thread as busy while alive.
pub struct Busy<'a>(&'a Pool);

impl<'a> Busy<'a> {
    pub fn new(pool: &'a Pool) -> Self {
        crate::stats::gauge(crate::stats::BUSY_THREADS, 1);
        let busy = pool.busy.fetch_add(1, Ordering::AcqRel) + 1;
        if busy >= pool.threads.load(Ordering::Acquire)
            && pool.watcher_asleep.swap(false, Ordering::AcqRel)
        {
            // Taking the lock orders this with the watcher's check-then-wait.
            drop(pool.all_busy_lock.lock());
            pool.all_busy.notify_one();
        }
        Busy(pool)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        crate::stats::gauge(crate::stats::BUSY_THREADS, -1);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a thread as in the pool while alive.
pub struct Member<'a>(&'a Pool);

impl<'a> Member<'a> {
    pub fn new(pool: &'a Pool) -> Self {
        crate::stats::gauge(crate::stats::THREADS, 1);
        pool.threads.fetch_add(1, Ordering::AcqRel);
        Member(pool)
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        crate::stats::gauge(crate::stats::THREADS, -1);
        self.0.threads.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// Waits up to `timeout` for requests waiting (as `waiting` says: in
    /// the queue, or in an inline loop nobody polls) while every app
    /// thread is busy; true if that happened and the GVL was then free.
    /// Sleeps until every thread is busy; only then looks every 2 ms.
    pub fn wait_for_demand<B: Blocking>(
        &self,
        gvl: &B,
        waiting: &(dyn Fn() -> bool + Sync),
        timeout: Duration,
    ) -> Result<bool, B::Interrupt> {
        let (wake_tx, wake_rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        let woken = AtomicBool::new(false);
        let detected = gvl.run(
            || {
                let deadline = Instant::now() + timeout;
                let mut seen = 0;
                while Instant::now() < deadline {
                    if woken.load(Ordering::Acquire) {
                        return None;
                    }
                    if !self.all_threads_busy() {
                        seen = 0;
                        self.sleep_until_all_busy(deadline, &woken);
                        continue;
                    }
                    // At most one look per CHECK_EVERY: under load the
                    // watcher runs at most that often.
                    if wake_rx.recv_timeout(CHECK_EVERY).is_ok() {
                        return None;
                    }
                    seen = if waiting() && self.all_threads_busy() {
                        seen + 1
                    } else {
                        0
                    };
                    if seen >= CHECKS {
                        return Some(Instant::now());
                    }
                }
                None
            },
            Some(Unblock {
                func: |(wake, woken, pool): &(Sender<()>, &AtomicBool, &Pool)| {
                    woken.store(true, Ordering::Release);
                    let _ = wake.try_send(());
                    pool.wake_watcher();
                },
                arg: &(wake_tx, &woken, self),
            }),
        )?;
        Ok(detected.is_some_and(|at| at.elapsed() < GVL_FREE))
    }

    fn all_threads_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) >= self.threads.load(Ordering::Acquire)
    }

    /// Sleeps until every app thread is busy, the deadline, or `woken`.
    fn sleep_until_all_busy(&self, deadline: Instant, woken: &AtomicBool) {
        let guard = self.all_busy_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.watcher_asleep.store(true, Ordering::Release);
        if self.all_threads_busy() || woken.load(Ordering::Acquire) {
            self.watcher_asleep.store(false, Ordering::Release);
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = self
            .all_busy
            .wait_timeout(guard, left.min(SLEEP_AT_MOST))
            .map(|(guard, _)| drop(guard));
        self.watcher_asleep.store(false, Ordering::Release);
    }

    /// Ends a watcher's sleep (its thread is being interrupted).
    fn wake_watcher(&self) {
        drop(self.all_busy_lock.lock());
        self.all_busy.notify_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::handoff::testing::job;
    use crate::net::{Queued, Shared};
    use crate::serve::Direct;
    use std::sync::Arc;

    #[test]
    fn members_and_busy_threads_are_counted_while_alive() {
        let pool = Pool::default();
        let member = Member::new(&pool);
        assert!(!pool.all_threads_busy());
        {
            let _busy = Busy::new(&pool);
            assert!(pool.all_threads_busy());
        }
        assert!(!pool.all_threads_busy());
        drop(member);
        assert_eq!(pool.threads.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn demand_is_requests_queueing_while_every_thread_is_busy() {
        let pool = Pool::default();
        let (tx, rx) = crossbeam_channel::unbounded::<Queued>();
        let waiting = || !rx.is_empty();
        let _member = Member::new(&pool);
        // Idle threads: no demand, whatever waits.
        let shared = Arc::new(Shared::default());
        let (queued, _client, _mailbox) = job("/q", shared);
        tx.send(Queued::Job(queued)).unwrap();
        assert!(!pool
            .wait_for_demand(&Direct, &waiting, Duration::from_millis(20))
            .unwrap());
        // Every thread busy and a request queued: demand.
        let _busy = Busy::new(&pool);
        assert!(pool
            .wait_for_demand(&Direct, &waiting, Duration::from_secs(5))
            .unwrap());
        // Busy with nothing queued: none.
        drop(rx.try_recv().unwrap());
        assert!(!pool
            .wait_for_demand(&Direct, &waiting, Duration::from_millis(20))
            .unwrap());
    }
}
