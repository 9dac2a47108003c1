//! The app-thread loop: take a request from the queue (waiting in a
//! blocking section), serve it, and read a kept connection's next request
//! here instead of handing it back, while nothing else waits. What serves
//! a request is the caller's (`src/ruby/app_thread.rs` calls the Rack
//! app; `tests/engine.rs` answers in Rust); the loop, its claims, its
//! keep-alive back-off and its GVL-wait figures are the same for both.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::blocking::{Blocking, Unblock};
use super::pool::{Busy, Member, Pool};
use crate::http::Limits;
use crate::net::doorbell::{Doorbell, Woke};
use crate::net::loops::{Loops, Next, Wait};
use crate::net::{Job, Kept, Queued};

/// What one app thread's loop works with.
#[derive(Debug)]
pub struct AppLoop<'a> {
    pub jobs: &'a Receiver<Queued>,
    /// Where the thread sleeps while the queue is empty.
    pub doorbell: &'a Doorbell,
    pub pool: &'a Pool,
    pub limits: &'a Limits,
    /// How long a kept connection is read for its next request.
    pub keep_spin: Duration,
    /// An idle thread returns after this long (threads the pool added on
    /// demand); `None`: never.
    pub idle_exit: Option<Duration>,
    /// How long the thread keeps its lock (for Ruby, the GVL) across
    /// requests served back to back before it lets others in.
    pub batch: Duration,
    /// Inline loops (`net::loops`): this thread polls them instead of
    /// taking requests from the queue, `home` first.
    pub loops: Option<(&'a Loops, usize)>,
}

/// How long a thread that has no loop to poll waits on the queue at a
/// time when it has no idle exit (a request, Ruby or the engine's stop
/// wakes it sooner).
const NO_LOOP_WAIT: Duration = Duration::from_secs(3600);

/// After a kept connection brought no request, this many requests are
/// answered without keeping their connection.
const KEEP_BACKOFF: u32 = 16;

/// Requests one kept connection gets in a row while others wait in the
/// queue: a client that always has its next request ready (pipelining
/// batch after batch) takes its turn like the rest.
const IN_ROW_WHILE_OTHERS_WAIT: u32 = 128;

/// Bytes read per pass from a kept connection.
const KEPT_READ_BYTES: usize = 16 * 1024;

/// What a wait ended with. Returned once per idle wait, by value.
#[allow(clippy::large_enum_variant)]
enum Waited {
    Job(Job),
    Closed,
    /// Nothing came for the idle-exit time.
    Idle,
    Woken,
    /// A queued request the watchdog answered first: look again.
    Again,
    /// A loop nobody polls waits (inline loops): look again, with the lock.
    Nudged,
}

impl AppLoop<'_> {
    /// Serves requests until the queue closes (the engine stopped and
    /// drained) or the thread was idle for `idle_exit`. `serve` answers
    /// one job and returns its connection when it may stay with this
    /// thread (`may_keep` says whether it may); `Err` from it or from a
    /// blocking section ends the loop with that interrupt.
    pub fn run<B: Blocking>(
        &self,
        gvl: &B,
        mut serve: impl FnMut(Job, bool) -> Result<Option<Kept>, B::Interrupt>,
    ) -> Result<(), B::Interrupt> {
        let _member = Member::new(self.pool);
        let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
        // Set by the unblock function while this thread sleeps on the
        // doorbell.
        let interrupted = AtomicBool::new(false);
        let mut scratch = vec![0u8; KEPT_READ_BYTES];
        let mut skip_keeps = 0u32;
        // When this thread last took the lock back (see `batch`).
        let mut held_since = Instant::now();
        // Nudged to take over a loop nobody polled (inline loops).
        let mut helping = false;
        loop {
            let job = match self.loops {
                Some((loops, home)) => {
                    let waited = self.next_from_loops(
                        gvl,
                        (loops, home, std::mem::take(&mut helping)),
                        &wake_tx,
                        &wake_rx,
                    )?;
                    held_since = Instant::now();
                    match waited {
                        Waited::Job(job) => job,
                        Waited::Closed | Waited::Idle => return Ok(()),
                        Waited::Again => continue,
                        Waited::Nudged => {
                            helping = true;
                            continue;
                        }
                        Waited::Woken => {
                            gvl.check_interrupts()?;
                            continue;
                        }
                    }
                }
                None => match self.jobs.try_recv() {
                    Ok(queued) => match queued.claim() {
                        Some(job) => {
                            crate::stats::gauge(crate::stats::QUEUED, -1);
                            // Taken while holding the lock: it waited none.
                            crate::stats::observe(crate::stats::GVL_WAIT, Duration::ZERO);
                            job
                        }
                        None => continue, // answered by the watchdog meanwhile
                    },
                    Err(TryRecvError::Disconnected) => return Ok(()),
                    Err(TryRecvError::Empty) => {
                        let waited = self.wait_for_job(gvl, &interrupted)?;
                        held_since = Instant::now();
                        match waited {
                            Waited::Job(job) => job,
                            Waited::Closed | Waited::Idle => return Ok(()),
                            Waited::Again | Waited::Nudged => continue,
                            Waited::Woken => {
                                gvl.check_interrupts()?;
                                continue;
                            }
                        }
                    }
                },
            };
            let mut next = Some(job);
            // Requests served in a row on one kept connection.
            let mut in_row = 0u32;
            while let Some(job) = next.take() {
                in_row += 1;
                let may_keep = skip_keeps == 0;
                skip_keeps = skip_keeps.saturating_sub(1);
                let kept = {
                    let _busy = Busy::new(self.pool);
                    serve(job, may_keep)?
                };
                if held_since.elapsed() >= self.batch {
                    gvl.run(|| (), None::<Unblock<'_, ()>>)?;
                    held_since = Instant::now();
                }
                let Some(connection) = kept else { break };
                if in_row >= IN_ROW_WHILE_OTHERS_WAIT && self.others_wait() {
                    // Others wait: the connection goes home and its next
                    // request queues behind theirs.
                    break;
                }
                // A pipelined request: served next, with the lock held.
                let connection = match connection.buffered_request(self.limits) {
                    Ok(job) => {
                        crate::stats::observe(crate::stats::GVL_WAIT, Duration::ZERO);
                        next = Some(job);
                        continue;
                    }
                    Err(Some(connection)) if may_keep && !self.keep_spin.is_zero() => connection,
                    Err(_) => break, // home to its IO thread
                };
                let waited =
                    self.next_request(gvl, connection, &mut scratch, &wake_tx, &wake_rx)?;
                held_since = Instant::now();
                match waited {
                    Waited::Job(job) => next = Some(job),
                    Waited::Woken => gvl.check_interrupts()?,
                    // No request came in time, or other work came first:
                    // with several clients at once keeping costs more
                    // than it saves, so the next few are not kept.
                    Waited::Closed | Waited::Idle | Waited::Again | Waited::Nudged => {
                        skip_keeps = KEEP_BACKOFF
                    }
                }
            }
        }
    }

    /// Inline loops: the next request from a loop this thread polls.
    /// First a look without waiting, with the lock held (as a queued
    /// request is taken); then, in a blocking section, polls its loop (or
    /// one let go too long) until a request comes. A thread with no loop
    /// to poll waits until the sweeper nudges it (`Waited::Nudged`: it
    /// looks again once it holds the lock), the thread is wanted, or the
    /// engine stops (the queue disconnects).
    ///
    /// A thread that was nudged (`helping`) and finds more requests in the
    /// loop after taking one nudges the next idle thread: while a slow
    /// request holds its poller, the backlog behind it is taken by as many
    /// threads as it needs, one after the other, each with the lock.
    fn next_from_loops<B: Blocking>(
        &self,
        gvl: &B,
        (loops, home, helping): (&Loops, usize, bool),
        wake_tx: &Sender<()>,
        wake_rx: &Receiver<()>,
    ) -> Result<Waited, B::Interrupt> {
        match self.jobs.try_recv() {
            Ok(queued) => return Ok(claimed(Ok(queued))),
            Err(TryRecvError::Disconnected) => return Ok(Waited::Closed),
            Err(TryRecvError::Empty) => {}
        }
        if let Some(mut held) = loops.hold(home) {
            match held.next(Wait::No, || false) {
                Next::Job(job) => {
                    if helping && held.has_backlog() {
                        loops.nudge();
                    }
                    crate::stats::observe(crate::stats::GVL_WAIT, Duration::ZERO);
                    return Ok(Waited::Job(job));
                }
                Next::Done | Next::Nothing => {}
            }
        }
        let jobs = self.jobs;
        let idle_exit = self.idle_exit;
        let (waited, arrived) = gvl.run(
            || {
                let idle_since = Instant::now();
                let waited = loop {
                    if wake_rx.try_recv().is_ok() {
                        break Waited::Woken;
                    }
                    match jobs.try_recv() {
                        Ok(queued) => break claimed(Ok(queued)),
                        Err(TryRecvError::Disconnected) => break Waited::Closed,
                        Err(TryRecvError::Empty) => {}
                    }
                    if let Some(mut held) = loops.hold(home) {
                        let give_up = || !wake_rx.is_empty() || !jobs.is_empty();
                        match held.next(Wait::UntilTick, give_up) {
                            Next::Job(job) => break Waited::Job(job),
                            Next::Done | Next::Nothing => continue,
                        }
                    }
                    let timeout = match idle_exit {
                        Some(idle) => idle.saturating_sub(idle_since.elapsed()),
                        None => NO_LOOP_WAIT,
                    };
                    crossbeam_channel::select! {
                        recv(jobs) -> queued => break claimed(queued),
                        recv(wake_rx) -> _ => break Waited::Woken,
                        // A loop nobody polls holds requests: look again
                        // once the lock (for Ruby, the GVL) is ours.
                        recv(loops.nudged()) -> _ => break Waited::Nudged,
                        default(timeout) => {
                            if idle_exit.is_some_and(|i| idle_since.elapsed() >= i) {
                                break Waited::Idle;
                            }
                        }
                    }
                };
                (waited, Instant::now())
            },
            Some(Unblock {
                func: |(wake, loops): &(&Sender<()>, &Loops)| {
                    let _ = wake.try_send(());
                    loops.poke_all();
                },
                arg: &(wake_tx, loops),
            }),
        )?;
        if let Waited::Job(_) = waited {
            crate::stats::observe(crate::stats::GVL_WAIT, arrived.elapsed());
        }
        Ok(waited)
    }

    /// Requests wait for an app thread: in the queue, or in an inline loop
    /// nobody polls.
    fn others_wait(&self) -> bool {
        !self.jobs.is_empty() || self.loops.is_some_and(|(loops, _)| loops.unpolled_work())
    }

    /// Sleeps on the queue's doorbell until this thread is the standby
    /// (`net::doorbell`), the queue closes, the idle exit passes, or the
    /// thread is wanted (the unblock function interrupts the wait). The
    /// standby takes a request only once it holds the lock again: while
    /// another thread serves with the lock, that thread takes the queued
    /// requests itself.
    fn wait_for_job<B: Blocking>(
        &self,
        gvl: &B,
        interrupted: &AtomicBool,
    ) -> Result<Waited, B::Interrupt> {
        let (jobs, bell) = (self.jobs, self.doorbell);
        let queued = || !jobs.is_empty();
        let idle_exit = self.idle_exit;
        let (woke, arrived) = gvl.run(
            || {
                let woke = bell.wait(idle_exit.or(Some(NO_LOOP_WAIT)), interrupted, queued);
                (woke, Instant::now())
            },
            Some(Unblock {
                func: |(bell, interrupted): &(&Doorbell, &AtomicBool)| bell.interrupt(interrupted),
                arg: &(bell, interrupted),
            }),
        )?;
        Ok(match woke {
            Woke::Standby => {
                let taken = jobs.try_recv();
                bell.standby_done(queued);
                match taken {
                    Ok(queued) => {
                        let waited = claimed(Ok(queued));
                        if let Waited::Job(_) = waited {
                            // From the wake-up to holding the lock again.
                            crate::stats::observe(crate::stats::GVL_WAIT, arrived.elapsed());
                        }
                        waited
                    }
                    Err(TryRecvError::Empty) => Waited::Again,
                    Err(TryRecvError::Disconnected) => Waited::Closed,
                }
            }
            Woke::Interrupted => Waited::Woken,
            // Without an idle exit, NO_LOOP_WAIT only bounds one wait.
            Woke::Idle if idle_exit.is_none() => Waited::Again,
            Woke::Idle => Waited::Idle,
            // What is still queued is taken at the loop's top, then the
            // queue reports itself disconnected.
            Woke::Closed => Waited::Again,
        })
    }

    /// Reads a kept connection's next request in a blocking section, for
    /// at most `keep_spin`; gives the connection back to its IO thread as
    /// soon as another request waits in the queue or the thread is wanted.
    fn next_request<B: Blocking>(
        &self,
        gvl: &B,
        kept: Kept,
        scratch: &mut [u8],
        wake_tx: &Sender<()>,
        wake_rx: &Receiver<()>,
    ) -> Result<Waited, B::Interrupt> {
        let jobs = self.jobs;
        let mut woken = false;
        let (job, arrived) = gvl.run(
            || {
                let job = kept.next_request(self.keep_spin, self.limits, scratch, || {
                    woken = wake_rx.try_recv().is_ok();
                    woken || !jobs.is_empty()
                });
                (job, Instant::now())
            },
            Some(Unblock {
                func: |wake: &Sender<()>| {
                    let _ = wake.try_send(());
                },
                arg: wake_tx,
            }),
        )?;
        Ok(match job {
            Some(job) => {
                crate::stats::observe(crate::stats::GVL_WAIT, arrived.elapsed());
                Waited::Job(job)
            }
            None if woken => Waited::Woken,
            None => Waited::Idle,
        })
    }
}

/// A job taken from the queue, or why there is none.
fn claimed(queued: Result<Queued, crossbeam_channel::RecvError>) -> Waited {
    match queued.map(Queued::claim) {
        Ok(Some(job)) => {
            crate::stats::gauge(crate::stats::QUEUED, -1);
            Waited::Job(job)
        }
        Ok(None) => Waited::Again,
        Err(_) => Waited::Closed,
    }
}
