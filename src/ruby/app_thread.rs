//! The app-thread loop, `Engine#serve`: a Ruby thread takes requests from
//! the queue (waiting without the GVL), serves each with the GVL held
//! (`request.rs`), and reads a kept connection's next request itself
//! (without the GVL) while nothing else waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use magnus::value::{BoxValue, ReprValue};
use magnus::{method, prelude::*, Error, RHash, RModule, Ruby, Value};

use super::current::Current;
use super::early_hints::EarlyHints;
use super::engine::RbEngine;
use super::errors::{ExtError, OrRaise};
use super::gvl::{check_interrupts, without_gvl, Unblock};
use super::hijack::Hijack;
use super::request;
use crate::net::{Job, Kept, Queued};
use crate::serve::pool::{Busy, Member};
use crate::serve::Waker;

/// The app-thread loop. Returns when the engine has stopped and drained;
/// raises whatever Ruby delivers to this thread (kill, raise, signals).
/// `idle_exit`: seconds after which an idle thread returns (0: never);
/// for threads the pool added on demand.
/// Defines `Engine#serve` (the class itself is `engine.rs`'s).
pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Engine", ruby.class_object())?;
    class.define_method("serve", method!(serve, 4))?;
    Ok(())
}

pub fn serve(
    ruby: &Ruby,
    rb_self: &RbEngine,
    app: Value,
    base_env: RHash,
    on_error: Value,
    idle_exit: f64,
) -> Result<(), Error> {
    let jobs = rb_self.jobs.clone();
    let _member = Member::new(&rb_self.pool);
    let idle_exit = (idle_exit > 0.0).then(|| Duration::from_secs_f64(idle_exit));
    let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
    let waker = Arc::new(Waker::new().map_err(ExtError::Start).or_raise(ruby)?);
    // This thread's rack.hijack and rack.early_hints, kept from the GC
    // by the boxes for as long as the thread serves.
    let current = Arc::new(Current::default());
    let hijack = BoxValue::new(ruby.obj_wrap(Hijack(current.clone())).as_value());
    let early_hints = BoxValue::new(ruby.obj_wrap(EarlyHints(current.clone())).as_value());
    let app = request::App {
        app,
        base_env,
        on_error,
        waker,
        write_timeout: rb_self.write_timeout,
        watchdog: rb_self.watchdog(),
        flusher: rb_self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        jobs: jobs.clone(),
        keep_spin: rb_self.idle_spin,
        current,
        hijack: *hijack,
        early_hints: *early_hints,
    };
    // Where a kept connection's next request is read.
    let mut scratch = vec![0u8; KEPT_READ_BYTES];
    let mut skip_keeps = 0u32;
    // When this thread last took the GVL back (see GVL_BATCH).
    let mut held_since = Instant::now();
    loop {
        let job = match jobs.try_recv() {
            Ok(queued) => match queued.claim() {
                Some(job) => {
                    crate::stats::gauge(crate::stats::QUEUED, -1);
                    // Taken while holding the GVL: it waited none for it.
                    crate::stats::observe(crate::stats::GVL_WAIT, Duration::ZERO);
                    job
                }
                None => continue, // answered by the watchdog meanwhile
            },
            Err(TryRecvError::Disconnected) => return Ok(()),
            Err(TryRecvError::Empty) => {
                let waited = wait_for_job(ruby, &jobs, &wake_tx, &wake_rx, idle_exit)?;
                held_since = Instant::now();
                match waited {
                    Waited::Job(job) => job,
                    Waited::Closed | Waited::Idle => return Ok(()),
                    Waited::Again => continue,
                    Waited::Woken => {
                        check_interrupts()?;
                        continue;
                    }
                }
            }
        };
        let mut next = Some(job);
        while let Some(job) = next.take() {
            let may_keep = skip_keeps == 0;
            skip_keeps = skip_keeps.saturating_sub(1);
            let kept = {
                let _busy = Busy::new(&rb_self.pool);
                request::handle(ruby, &app, job, may_keep)?
            };
            if held_since.elapsed() >= GVL_BATCH {
                super::gvl::let_others_in(ruby)?;
                held_since = Instant::now();
            }
            let Some(connection) = kept else { break };
            let waited = next_request(ruby, rb_self, connection, &mut scratch, &wake_tx, &wake_rx)?;
            held_since = Instant::now();
            match waited {
                Waited::Job(job) => next = Some(job),
                Waited::Woken => check_interrupts()?,
                // No request came in time, or other work came first:
                // with several clients at once keeping costs more
                // than it saves, so the next few are not kept.
                Waited::Closed | Waited::Idle | Waited::Again => skip_keeps = KEEP_BACKOFF,
            }
        }
    }
}

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
}

/// Blocks without the GVL until a job arrives, the queue closes, or Ruby
/// wants this thread back (the unblock function sends on `wake`).
fn wait_for_job(
    ruby: &Ruby,
    jobs: &Receiver<Queued>,
    wake_tx: &Sender<()>,
    wake_rx: &Receiver<()>,
    idle_exit: Option<Duration>,
) -> Result<Waited, Error> {
    let (waited, arrived) = without_gvl(
        ruby,
        || {
            let waited = match idle_exit {
                None => crossbeam_channel::select! {
                    recv(jobs) -> queued => claimed(queued),
                    recv(wake_rx) -> _ => Waited::Woken,
                },
                Some(idle) => crossbeam_channel::select! {
                    recv(jobs) -> queued => claimed(queued),
                    recv(wake_rx) -> _ => Waited::Woken,
                    default(idle) => Waited::Idle,
                },
            };
            (waited, Instant::now())
        },
        Some(Unblock {
            func: |wake: &Sender<()>| {
                let _ = wake.try_send(());
            },
            arg: wake_tx,
        }),
    )?;
    if let Waited::Job(_) = waited {
        // From the job's arrival to holding the GVL again.
        crate::stats::observe(crate::stats::GVL_WAIT, arrived.elapsed());
    }
    Ok(waited)
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

/// How long an app thread keeps the GVL across the requests it serves
/// back to back (small responses are written with it held) before it
/// releases it to let the other app threads in. Per request instead,
/// Ruby 3.3 handed the GVL to a waiting thread at every write and the
/// writer paid a context switch to get it back: hello c=32 did 37-40k
/// req/s on 3.3 against 85k on 3.1. Never, and requests another thread
/// had taken waited a whole time slice (hello c=256 p99 100 ms). 500 us
/// measured best of 100, 500 and 2000 (docs/PERFORMANCE.md).
const GVL_BATCH: Duration = Duration::from_micros(500);

/// Bytes read per pass from a kept connection.
const KEPT_READ_BYTES: usize = 16 * 1024;
/// After a kept connection brought no request, this many requests are
/// answered without keeping their connection.
const KEEP_BACKOFF: u32 = 16;

/// Reads a kept connection's next request without the GVL, for at most
/// `idle_spin`; gives the connection back to its IO thread as soon as
/// another request waits in the queue or Ruby wants this thread.
fn next_request(
    ruby: &Ruby,
    rb_self: &RbEngine,
    kept: Kept,
    scratch: &mut [u8],
    wake_tx: &Sender<()>,
    wake_rx: &Receiver<()>,
) -> Result<Waited, Error> {
    let jobs = &rb_self.jobs;
    let mut woken = false;
    let (job, arrived) = without_gvl(
        ruby,
        || {
            let job = kept.next_request(rb_self.idle_spin, &rb_self.limits, scratch, || {
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
