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
//! `STEAL_AFTER` without waiting (accepts, reads, writes, timeouts), and
//! nudges an idle app thread to take it over. That thread first takes
//! the GVL, and only then the loop and a request from it: a request
//! is never handed to a thread that must still wait for the GVL (while
//! the slow request computes, no other thread could serve it anyway; on
//! Ruby 3.1 such requests waited tens of milliseconds for the GVL, hello
//! c=32 p99 22-50 ms). So no request waits behind a slow one that sleeps
//! or does IO for much longer than `STEAL_AFTER`; with every thread busy,
//! the pool sees the demand (`Loops::starving`) and adds one.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::doorbell::JobSender;

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::handoff::{Job, Mailbox};
pub use super::io_thread::Wait;
use super::io_thread::{IoThread, Turn};
use super::Queued;
use crate::process::supervise::{Ending, Fault, Faults};

/// How long a loop may go unpolled while its poller serves a request
/// before the sweeper turns it.
pub const STEAL_AFTER: Duration = Duration::from_micros(500);

/// The sweeper's sleep while every loop is held: a loop let go after it
/// fell asleep wakes it (`Held::drop`).
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
    jobs: Mutex<Option<JobSender<Queued>>>,
    /// The sweeper, and whether it dozes (sleeps `DOZE`, not `STEAL_AFTER`).
    sweeper: Mutex<Option<Thread>>,
    dozing: AtomicBool,
    /// The sweeper's nudge to an idle app thread: a loop nobody polls.
    nudge: (Sender<()>, Receiver<()>),
    /// Where a loop that fails or panics is reported (the process then
    /// stops, as when an IO thread fails).
    faults: Arc<Faults>,
}

struct Loop {
    /// `None` once done.
    state: Mutex<Option<IoThread>>,
    mailbox: Arc<Mailbox>,
    /// Microseconds since `Loops::epoch` when it was last let go (at least
    /// 1); 0 while held, or once done.
    free_since: AtomicU64,
    /// Requests it had parsed and not handed out when last let go.
    ready: AtomicUsize,
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
        jobs: JobSender<Queued>,
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
                    ready: AtomicUsize::new(0),
                })
                .collect(),
            epoch: Instant::now(),
            live: AtomicUsize::new(live),
            jobs: Mutex::new(Some(jobs)),
            sweeper: Mutex::new(None),
            dozing: AtomicBool::new(false),
            nudge: crossbeam_channel::bounded(1),
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
        let let_go_at = lp.free_since.swap(0, Ordering::Relaxed);
        Some(Held {
            loops: self,
            index,
            guard,
            let_go_at,
            poller: Poller::App,
        })
    }

    /// Where an idle app thread hears that a loop nobody polls waits: it
    /// then takes the GVL and looks (`Loops::hold`).
    pub fn nudged(&self) -> &Receiver<()> {
        &self.nudge.1
    }

    /// Wakes an idle app thread to take over a loop nobody polls (one
    /// nudge waits at most).
    pub fn nudge(&self) {
        let _ = self.nudge.0.try_send(());
    }

    /// Requests wait in a loop nobody has polled for `STEAL_AFTER`: parsed
    /// ones, or events epoll has not given yet. With every app thread
    /// busy, that is demand for another (`serve::pool`).
    pub fn starving(&self) -> bool {
        let now = self.micros();
        (0..self.loops.len()).any(|i| self.let_go_long(i, now) && self.has_work(i))
    }

    /// Requests wait in a loop nobody polls now, however briefly (a
    /// thread serving one client after another asks, `AppLoop`).
    pub fn unpolled_work(&self) -> bool {
        (0..self.loops.len())
            .any(|i| self.loops[i].free_since.load(Ordering::Relaxed) != 0 && self.has_work(i))
    }

    fn has_work(&self, index: usize) -> bool {
        let lp = &self.loops[index];
        lp.ready.load(Ordering::Relaxed) > 0 || lp.mailbox.io_pending()
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
    /// done): turns each loop let go for `STEAL_AFTER` without waiting,
    /// and nudges an idle app thread to take it over. Every `STEAL_AFTER`
    /// while a loop is let go; every `DOZE` while all are held (an app
    /// thread letting one go wakes it).
    pub(crate) fn sweep(&self) {
        *self.sweeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current());
        while !self.done() {
            let now = self.micros();
            let mut unpolled = false;
            for i in 0..self.loops.len() {
                if self.let_go_long(i, now) {
                    self.sweep_one(i);
                    unpolled = true;
                }
            }
            if unpolled {
                self.nudge();
            }
            if self.any_let_go() {
                std::thread::park_timeout(STEAL_AFTER);
                continue;
            }
            self.dozing.store(true, Ordering::SeqCst);
            // A loop let go from now on wakes it (`Held::drop`); one let
            // go just before it said so is seen here.
            if !self.any_let_go() {
                std::thread::park_timeout(DOZE);
            }
            self.dozing.store(false, Ordering::SeqCst);
        }
    }

    fn any_let_go(&self) -> bool {
        self.loops
            .iter()
            .any(|lp| lp.free_since.load(Ordering::SeqCst) != 0)
    }

    /// One turn of a loop nobody polls. It stays let go since when it was.
    fn sweep_one(&self, index: usize) {
        let Some(mut held) = self.try_hold(index) else {
            return;
        };
        held.poller = Poller::Sweeper;
        if held.turn(Wait::No) == Turn::Done {
            held.finish();
        }
    }
}

/// A loop this thread polls until it lets it go (on drop).
pub struct Held<'a> {
    loops: &'a Loops,
    index: usize,
    guard: MutexGuard<'a, Option<IoThread>>,
    /// When it was let go before this hold.
    let_go_at: u64,
    poller: Poller,
}

/// Who holds a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poller {
    /// An app thread: it polls the loop until it lets it go.
    App,
    /// The sweeper, for one turn: nobody polls the loop still.
    Sweeper,
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

    /// Requests parsed and not yet taken wait in it.
    pub fn has_backlog(&self) -> bool {
        self.guard.as_ref().is_some_and(|io| io.ready_len() > 0)
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
        let lp = &self.loops.loops[self.index];
        let ready = self.guard.as_ref().map_or(0, IoThread::ready_len);
        lp.ready.store(ready, Ordering::Relaxed);
        let since = match (self.poller, &*self.guard) {
            // Done: nobody need poll it again.
            (_, None) => 0,
            (Poller::App, Some(_)) => self.loops.micros(),
            (Poller::Sweeper, Some(_)) => self.let_go_at.max(1),
        };
        lp.free_since.store(since, Ordering::SeqCst);
        if self.loops.dozing.load(Ordering::SeqCst) {
            self.loops.wake_sweeper();
        }
    }
}
