//! Inline loops: the IO loops without threads of their own. Each app
//! thread polls a loop itself (without the GVL), takes a request from it,
//! lets it go, serves the request (with the GVL) and comes back to it: no
//! hand-off between threads on the way.
//!
//! A loop is an [`IoThread`]'s state behind a lock; whoever holds the lock
//! polls it. An app thread prefers its own loop (thread `k` has loop
//! `k % loops`) and takes another only once that one has been let go for
//! [`STEAL_AFTER`]. While its poller serves a slow request, a loop is let
//! go: the sweeper (a thread that never runs Ruby) then turns it every
//! `STEAL_AFTER` without waiting (accepts, reads, timeouts) and moves what
//! it parsed into the engine's queue, where any idle app thread takes it,
//! and where the pool sees demand to add threads. So no request waits
//! behind a slow one for much longer than `STEAL_AFTER`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::handoff::{Job, Mailbox};
pub use super::io_thread::Wait;
use super::io_thread::{IoThread, Turn};
use super::Queued;
use crate::process::supervise::{Ending, Fault, Faults};

/// How long a loop may go unpolled while its poller serves a request
/// before the sweeper turns it.
pub const STEAL_AFTER: Duration = Duration::from_millis(1);

/// The sweeper's sleep while nothing happens: a loop let go after it fell
/// asleep wakes it (`Held::next`).
const DOZE: Duration = Duration::from_millis(100);

/// Every inline loop of an engine.
#[derive(Debug)]
pub struct Loops {
    loops: Vec<Loop>,
    epoch: Instant,
    /// Loops still running.
    live: AtomicUsize,
    /// The engine's job queue. Dropped once every loop is done, which
    /// tells the app threads waiting on it that the engine stopped.
    jobs: Mutex<Option<Sender<Queued>>>,
    /// The sweeper, and whether it dozes (sleeps `DOZE`, not `STEAL_AFTER`).
    sweeper: Mutex<Option<Thread>>,
    dozing: AtomicBool,
    /// Where a loop that fails or panics is reported (the process then
    /// stops, as when an IO thread fails).
    faults: Arc<Faults>,
}

struct Loop {
    /// `None` once done.
    state: Mutex<Option<IoThread>>,
    mailbox: Arc<Mailbox>,
    /// Microseconds since `Loops::epoch` when it was last let go (at least
    /// 1); 0 while held.
    free_since: AtomicU64,
}

impl std::fmt::Debug for Loop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loop")
            .field("free_since", &self.free_since)
            .finish_non_exhaustive()
    }
}

/// What a held loop gave.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Next {
    Job(Job),
    /// Nothing yet (a look without waiting, or the caller gave up).
    Nothing,
    /// The loop is done (the engine stopped).
    Done,
}

impl Loops {
    pub(crate) fn new(
        loops: Vec<(IoThread, Arc<Mailbox>)>,
        jobs: Sender<Queued>,
        faults: Arc<Faults>,
    ) -> Self {
        let live = loops.len();
        Loops {
            loops: loops
                .into_iter()
                .map(|(state, mailbox)| Loop {
                    state: Mutex::new(Some(state)),
                    mailbox,
                    free_since: AtomicU64::new(1),
                })
                .collect(),
            epoch: Instant::now(),
            live: AtomicUsize::new(live),
            jobs: Mutex::new(Some(jobs)),
            sweeper: Mutex::new(None),
            dozing: AtomicBool::new(false),
            faults,
        }
    }

    pub fn len(&self) -> usize {
        self.loops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.loops.is_empty()
    }

    fn micros(&self) -> u64 {
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }

    /// Holds loop `home` if free; else another let go for `STEAL_AFTER`.
    pub fn hold(&self, home: usize) -> Option<Held<'_>> {
        let home = home % self.loops.len().max(1);
        if let Some(held) = self.try_hold(home) {
            return Some(held);
        }
        let now = self.micros();
        (0..self.loops.len())
            .filter(|&i| i != home && self.let_go_long(i, now))
            .find_map(|i| self.try_hold(i))
    }

    /// Loop `index` has been let go for `STEAL_AFTER` or more.
    fn let_go_long(&self, index: usize, now: u64) -> bool {
        let since = self.loops[index].free_since.load(Ordering::Relaxed);
        since != 0 && now.saturating_sub(since) >= STEAL_AFTER.as_micros() as u64
    }

    fn try_hold(&self, index: usize) -> Option<Held<'_>> {
        let lp = self.loops.get(index)?;
        let guard = match lp.state.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        guard.as_ref()?;
        lp.free_since.store(0, Ordering::Relaxed);
        Some(Held {
            loops: self,
            index,
            guard,
        })
    }

    /// Wakes whoever polls a loop (Ruby wants an app thread that may be in
    /// epoll_wait, or the engine stops).
    pub fn poke_all(&self) {
        for lp in &self.loops {
            lp.mailbox.poke();
        }
    }

    /// Every loop is done.
    pub fn done(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
    }

    fn finished(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
            self.wake_sweeper();
        }
    }

    fn wake_sweeper(&self) {
        if let Some(sweeper) = &*self.sweeper.lock().unwrap_or_else(|p| p.into_inner()) {
            sweeper.unpark();
        }
    }

    /// The sweeper's loop (on a thread of its own, until every loop is
    /// done): turns each loop let go for `STEAL_AFTER` without waiting and
    /// queues what it parsed, every `STEAL_AFTER` while loops change hands,
    /// every `DOZE` while none does.
    pub(crate) fn sweep(&self) {
        *self.sweeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current());
        let mut last_seen: Vec<u64> = vec![0; self.loops.len()];
        while !self.done() {
            let now = self.micros();
            let mut moved = 0;
            let mut changed = false;
            for (i, seen) in last_seen.iter_mut().enumerate() {
                let since = self.loops[i].free_since.load(Ordering::Relaxed);
                changed |= since != *seen;
                *seen = since;
                if self.let_go_long(i, now) {
                    moved += self.sweep_one(i);
                }
            }
            if moved > 0 {
                // App threads polling other loops look at the queue when
                // woken; those waiting on the queue were woken by it.
                for lp in &self.loops {
                    if lp.free_since.load(Ordering::Relaxed) == 0 {
                        lp.mailbox.poke();
                    }
                }
            }
            if changed || moved > 0 {
                std::thread::park_timeout(STEAL_AFTER);
                continue;
            }
            self.dozing.store(true, Ordering::SeqCst);
            // A loop let go from now on wakes it; one let go just before
            // it said so is seen here.
            let stirred = self
                .loops
                .iter()
                .zip(&last_seen)
                .any(|(lp, &seen)| lp.free_since.load(Ordering::SeqCst) != seen);
            if !stirred {
                std::thread::park_timeout(DOZE);
            }
            self.dozing.store(false, Ordering::SeqCst);
        }
    }

    /// One turn of a loop nobody polls, its parsed requests queued.
    fn sweep_one(&self, index: usize) -> usize {
        let Some(mut held) = self.try_hold(index) else {
            return 0;
        };
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(jobs) = jobs else { return 0 };
        let turn = held.turn(Wait::No);
        let moved = held.guard.as_mut().map_or(0, |io| io.queue_ready(&jobs));
        if turn == Turn::Done {
            held.finish();
        }
        moved
    }
}

/// A loop this thread polls until it lets it go (on drop).
pub struct Held<'a> {
    loops: &'a Loops,
    index: usize,
    guard: MutexGuard<'a, Option<IoThread>>,
}

impl std::fmt::Debug for Held<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("index", &self.index).finish()
    }
}

impl Held<'_> {
    /// The next request this loop has: one already parsed, else what a
    /// turn brings. `Wait::No`: one turn without waiting. `Wait::UntilTick`:
    /// turns until a request comes or `give_up` says so (checked after
    /// each; `Loops::poke_all` ends a wait).
    pub fn next(&mut self, wait: Wait, mut give_up: impl FnMut() -> bool) -> Next {
        loop {
            let Some(io) = self.guard.as_mut() else {
                return Next::Done;
            };
            if let Some(job) = io.pop_ready() {
                return Next::Job(job);
            }
            if self.turn(wait) == Turn::Done {
                return self.finish();
            }
            if let Some(job) = self.guard.as_mut().and_then(IoThread::pop_ready) {
                return Next::Job(job);
            }
            if wait == Wait::No || give_up() {
                return Next::Nothing;
            }
        }
    }

    /// One turn of the loop. One that fails or panics is reported as its
    /// IO thread's would be, and counts as done.
    fn turn(&mut self, wait: Wait) -> Turn {
        let Some(io) = self.guard.as_mut() else {
            return Turn::Done;
        };
        let ending = match catch_unwind(AssertUnwindSafe(|| io.turn(wait))) {
            Ok(Ok(turn)) => return turn,
            Ok(Err(e)) => Ending::Failed(e.to_string()),
            Err(panic) => {
                Ending::Panicked(crate::process::supervise::panic_message(panic.as_ref()))
            }
        };
        self.loops.faults.report(Fault {
            thread: format!("butterflies-io-{}", self.index),
            ending,
        });
        Turn::Done
    }

    fn finish(&mut self) -> Next {
        if self.guard.take().is_some() {
            self.loops.finished();
        }
        Next::Done
    }
}

impl Drop for Held<'_> {
    /// Lets the loop go. A dozing sweeper must watch it from now on: it
    /// said so before it last looked at `free_since`, and this store comes
    /// before this look at `dozing`, so one of the two sees the other.
    fn drop(&mut self) {
        let now = self.loops.micros();
        self.loops.loops[self.index]
            .free_since
            .store(now, Ordering::SeqCst);
        if self.loops.dozing.load(Ordering::SeqCst) {
            self.loops.wake_sweeper();
        }
    }
}
