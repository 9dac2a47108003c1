//! The request queue's doorbell: which idle app thread a queued request
//! wakes, and when.
//!
//! Idle app threads sleep here, not on the queue itself. A thread that
//! serves takes the next request straight from the queue, holding the GVL,
//! so a queued request needs no other thread while one is serving. The
//! bell wakes one idle thread, the *standby*, and only when there is no
//! standby yet: it then waits for the GVL (a Ruby thread leaving a blocking
//! section) and takes a request only once it holds it. Ruby hands the GVL
//! over when the serving thread blocks (a query, an API call, `sleep`), at
//! its time slice, or when it goes idle, so a request behind a slow one is
//! taken at once, while requests behind fast ones are served by the
//! thread already running, without a context switch each.
//!
//! The queue used to wake a waiting thread per request, which took the
//! request, found the GVL held and slept again: five app threads made
//! 0.39 context switches per hello request where one made 0.07
//! (docs/PERFORMANCE.md, "Waking fewer app threads").

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

#[derive(Debug, Default)]
pub struct Doorbell {
    state: Mutex<State>,
    bell: Condvar,
    /// Threads asleep on the bell (also in `State`, read without the lock
    /// by `ring`).
    sleepers: AtomicUsize,
    /// A thread is standby, or woken to be (read without the lock).
    standby: AtomicBool,
    /// The queue's senders alive; the last one closes the bell.
    senders: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    /// A wake-up for the next standby, not yet taken.
    token: bool,
    /// No request will come any more.
    closed: bool,
}

/// Why [`Doorbell::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// This thread is the standby: take a request once the GVL is held,
    /// then call [`Doorbell::standby_done`].
    Standby,
    /// The caller's interrupt flag was set.
    Interrupted,
    /// The timeout passed.
    Idle,
    /// No request will come any more (the queue may still hold some).
    Closed,
}

impl Doorbell {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a request was queued: wakes an idle thread to be the standby,
    /// unless there is one or nobody sleeps.
    pub fn ring(&self) {
        // Pairs with the fence in `wait` (a sleeper registers, then looks
        // at the queue) and in `standby_done`: either that thread sees the
        // request, or this sees it.
        fence(Ordering::SeqCst);
        if self.standby.load(Ordering::SeqCst) || self.sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut state = self.lock();
        self.wake_standby(&mut state);
    }

    /// Under the lock: makes a sleeper the standby, if none is.
    fn wake_standby(&self, state: &mut State) {
        if self.sleepers.load(Ordering::SeqCst) > 0 && !self.standby.swap(true, Ordering::SeqCst) {
            state.token = true;
            self.bell.notify_one();
        }
    }

    /// Sleeps until this thread is the standby (or `queued` says a request
    /// waits and there is no standby), `interrupted` is set (see
    /// [`Doorbell::interrupt`]), `timeout` passes, or the bell closes.
    pub fn wait(
        &self,
        timeout: Option<Duration>,
        interrupted: &AtomicBool,
        queued: impl Fn() -> bool,
    ) -> Woke {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if state.token {
                state.token = false;
                return Woke::Standby;
            }
            if state.closed {
                return Woke::Closed;
            }
            if interrupted.swap(false, Ordering::SeqCst) {
                return Woke::Interrupted;
            }
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if queued() && !self.standby.swap(true, Ordering::SeqCst) {
                // A request nobody was woken for (queued before this thread
                // slept, or left when a standby found none).
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return Woke::Standby;
            }
            let timed_out = match deadline {
                None => {
                    state = self.bell.wait(state).unwrap_or_else(|p| p.into_inner());
                    false
                }
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let (guard, result) = self
                        .bell
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner());
                    state = guard;
                    result.timed_out()
                }
            };
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            if timed_out && !state.token {
                return Woke::Idle;
            }
        }
    }

    /// The standby holds the GVL and took a request, or found none. Makes
    /// another sleeper the standby if requests still wait (`queued`).
    pub fn standby_done(&self, queued: impl Fn() -> bool) {
        self.standby.store(false, Ordering::SeqCst);
        // Pairs with `ring`'s fence: a request queued while this thread was
        // standby, whose `ring` saw a standby and woke nobody, is seen here.
        fence(Ordering::SeqCst);
        if queued() {
            let mut state = self.lock();
            self.wake_standby(&mut state);
        }
    }

    /// Wakes the sleepers so that the one whose `interrupted` flag is set
    /// returns (Ruby's unblock function: the thread is wanted).
    pub fn interrupt(&self, interrupted: &AtomicBool) {
        interrupted.store(true, Ordering::SeqCst);
        // Taking the lock orders the flag with a sleeper's check-then-wait.
        drop(self.lock());
        self.bell.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.bell.notify_all();
    }
}

/// The queue's sending side: a request put in rings the bell. The last
/// one dropped disconnects the queue, then closes the bell.
#[derive(Debug)]
pub struct JobSender<T> {
    tx: Option<Sender<T>>,
    bell: std::sync::Arc<Doorbell>,
}

impl<T> JobSender<T> {
    pub fn new(tx: Sender<T>, bell: std::sync::Arc<Doorbell>) -> Self {
        bell.senders.fetch_add(1, Ordering::SeqCst);
        JobSender { tx: Some(tx), bell }
    }

    /// Queues `item` and rings; gives it back when the queue is full or
    /// disconnected.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let Some(tx) = &self.tx else {
            return Err(TrySendError::Disconnected(item));
        };
        tx.try_send(item)?;
        self.bell.ring();
        Ok(())
    }
}

impl<T> Clone for JobSender<T> {
    fn clone(&self) -> Self {
        JobSender::new(
            self.tx
                .clone()
                .expect("a sender is only taken when dropped"),
            self.bell.clone(),
        )
    }
}

impl<T> Drop for JobSender<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if self.bell.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.bell.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn one_standby_at_a_time_and_none_while_nobody_sleeps() {
        let bell = Arc::new(Doorbell::default());
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let sender = JobSender::new(tx, bell.clone());
        // Nobody sleeps: nothing to wake, nothing left pending.
        sender.try_send(1).unwrap();
        assert!(!bell.lock().token);
        // A thread about to sleep sees the request and is the standby.
        let flag = AtomicBool::new(false);
        assert_eq!(bell.wait(None, &flag, || !rx.is_empty()), Woke::Standby);
        // A second one does not: the first is standby still.
        assert_eq!(
            bell.wait(Some(Duration::from_millis(20)), &flag, || !rx.is_empty()),
            Woke::Idle
        );
        rx.try_recv().unwrap();
        bell.standby_done(|| !rx.is_empty());
        assert!(!bell.standby.load(Ordering::SeqCst));
    }

    #[test]
    fn every_request_is_taken_by_racing_threads() {
        // Four consumers that take requests only as the standby (the worst
        // case: nobody serves from the queue directly), four producers; a
        // lost wake-up leaves a request in the queue with every consumer
        // asleep, and fewer than all are taken by the deadline.
        let bell = Arc::new(Doorbell::default());
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let sender = JobSender::new(tx, bell.clone());
        let taken = AtomicUsize::new(0);
        const EACH: u32 = 20_000;
        let mut taken_by_deadline = 0;
        thread::scope(|s| {
            for _ in 0..4 {
                let (bell, rx, taken) = (&bell, &rx, &taken);
                s.spawn(move || {
                    let flag = AtomicBool::new(false);
                    loop {
                        match bell.wait(None, &flag, || !rx.is_empty()) {
                            Woke::Standby => {
                                if rx.try_recv().is_ok() {
                                    taken.fetch_add(1, Ordering::SeqCst);
                                }
                                bell.standby_done(|| !rx.is_empty());
                            }
                            Woke::Closed => {
                                taken.fetch_add(rx.try_iter().count(), Ordering::SeqCst);
                                return;
                            }
                            Woke::Interrupted | Woke::Idle => {}
                        }
                    }
                });
            }
            let producers: Vec<_> = (0..4)
                .map(|_| {
                    let sender = sender.clone();
                    s.spawn(move || {
                        // In bursts, so that the queue empties and the
                        // consumers fall asleep between them.
                        for i in 0..EACH {
                            sender.try_send(i).unwrap();
                            if i % 16 == 0 {
                                thread::sleep(Duration::from_micros(20));
                            }
                        }
                    })
                })
                .collect();
            producers.into_iter().for_each(|p| p.join().unwrap());
            let deadline = Instant::now() + Duration::from_secs(20);
            while taken.load(Ordering::SeqCst) < 4 * EACH as usize && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            taken_by_deadline = taken.load(Ordering::SeqCst);
            // Closing the bell lets the consumers go, whatever happened.
            drop(sender);
        });
        assert_eq!(taken_by_deadline, 4 * EACH as usize);
    }

    #[test]
    fn an_interrupt_wakes_only_its_thread() {
        let bell = Doorbell::default();
        let (mine, other) = (AtomicBool::new(false), AtomicBool::new(false));
        thread::scope(|s| {
            let waiting = s.spawn(|| bell.wait(None, &mine, || false));
            let bystander =
                s.spawn(|| bell.wait(Some(Duration::from_millis(300)), &other, || false));
            while bell.sleepers.load(Ordering::SeqCst) < 2 {
                thread::yield_now();
            }
            bell.interrupt(&mine);
            assert_eq!(waiting.join().unwrap(), Woke::Interrupted);
            assert_eq!(bystander.join().unwrap(), Woke::Idle);
        });
    }
}
