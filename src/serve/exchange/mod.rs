//! One request/response exchange, shared by the app thread that serves it
//! and the objects an app gets for it (`rack.hijack`, `rack.early_hints`,
//! the Rack 3 stream), the flusher and the watchdog. It owns the job
//! (request and connection) while the app runs, knows where the response
//! stands ([`Phase`]), and writes response bytes as they come.
//!
//! Writes never let a slow client pile up memory: past
//! [`HIGH_WATER_BYTES`] unwritten, the writer waits in a blocking section
//! ([`Blocking`]: for Ruby, without the GVL, interruptible) until the
//! client reads or the write timeout passes.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::wait::Waker;
use crate::http::body_framer::{BodyFault, BodyFramer, Framed};
use crate::http::response::Framing;
use crate::http::Version;
use crate::net::conn::Afterwards;
use crate::net::{Job, Kept};

pub use writes::{Piece, COALESCE_BYTES};

/// Why an exchange could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError<I> {
    /// The client went away (or the exchange is over): nothing more can
    /// be written. Not the app's fault.
    #[error("client connection lost: {0}")]
    Disconnected(Gone),
    /// Reading what the client sent after the request failed.
    #[error("read failed: {0}")]
    Read(io::Error),
    /// The socket could not be handed to the app.
    #[error("cannot hijack: {0}")]
    Hijack(io::Error),
    /// The thread is wanted elsewhere (for Ruby: an exception to raise).
    #[error("interrupted")]
    Interrupted(I),
}

/// How the client went away.
#[derive(Debug)]
pub enum Gone {
    /// The connection is no longer the exchange's (written out, taken
    /// over, or answered by the watchdog).
    Closed,
    /// A write failed, or made no progress for the write timeout.
    Failed(io::Error),
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gone::Closed => f.write_str("closed"),
            Gone::Failed(e) => write!(f, "{e}"),
        }
    }
}

type Result<T, I> = std::result::Result<T, ExchangeError<I>>;

fn gone<I>(e: io::Error) -> ExchangeError<I> {
    ExchangeError::Disconnected(Gone::Failed(e))
}

fn closed<I>() -> ExchangeError<I> {
    ExchangeError::Disconnected(Gone::Closed)
}

/// Where the response stands.
#[derive(Debug, Default)]
enum Phase {
    /// Nothing sent yet (early hints aside).
    #[default]
    Unanswered,
    /// The head is out; the body goes out framed as it announced.
    Body(BodyFramer),
    /// The body is complete: nothing more may be written.
    Finished,
    /// The app took the socket (full or partial hijack).
    Hijacked,
    /// The client is gone (a write failed or timed out), or the watchdog
    /// answered in the app's place.
    Broken,
}

/// Whether the connection may carry another request after this response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    #[default]
    Allowed,
    /// The body did not match its framing, the app read from the
    /// connection (a Rack 3 stream), or the protocol switched: what
    /// follows on it is no request of ours.
    Never,
}

/// The pieces of a streamed body (see [`Exchange::send_piece`]).
#[derive(Debug, Default, Clone, Copy)]
enum Pieces {
    /// No piece yet: the first goes out at once.
    #[default]
    NoneYet,
    /// The head waits in the connection's buffer, since then: the first
    /// piece goes out at once, with it.
    Head(Instant),
    /// Pieces went out; none wait.
    Written,
    /// Pieces wait in the connection's buffer, since then.
    Gathered(Instant),
}

#[derive(Debug, Default)]
struct Inner {
    /// `None` while a blocking section has it, and once the exchange is over.
    job: Option<Job>,
    phase: Phase,
    reuse: Reuse,
    pieces: Pieces,
    /// The response's status, once known (the access log's).
    status: Option<u16>,
    /// Response bytes handed to the connection so far.
    sent: u64,
    /// `sent` where the body starts (after the head and any early hints).
    body_from: u64,
}

#[derive(Debug)]
pub struct Exchange {
    inner: Mutex<Inner>,
    pub version: Version,
    pub head_request: bool,
    waker: Arc<Waker>,
    write_timeout: Duration,
    /// When an app thread took the request (its queue time ends here).
    started: Instant,
}

impl Exchange {
    pub fn new(job: Job, waker: Arc<Waker>, write_timeout: Duration) -> Self {
        let head = &job.request.head;
        Exchange {
            version: head.version,
            head_request: head.is_head_method(),
            inner: Mutex::new(Inner {
                job: Some(job),
                ..Inner::default()
            }),
            waker,
            write_timeout,
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's next request was read along with this one (a
    /// pipelining client).
    pub fn pipelined(&self) -> bool {
        self.lock()
            .job
            .as_mut()
            .and_then(Job::conn_mut)
            .is_some_and(|c| c.has_pipelined_input())
    }

    /// The response must close its connection (stopping or draining).
    pub fn closing(&self) -> bool {
        self.lock().job.as_ref().is_some_and(Job::closing)
    }

    /// The head went out (the body may be complete since).
    pub fn head_sent(&self) -> bool {
        matches!(self.lock().phase, Phase::Body(_) | Phase::Finished)
    }

    /// The request came over TLS (where the socket cannot be handed to
    /// the app).
    pub fn over_tls(&self) -> bool {
        self.lock()
            .job
            .as_mut()
            .and_then(crate::net::Job::conn_mut)
            .is_some_and(|conn| conn.is_tls())
    }

    pub fn hijacked(&self) -> bool {
        matches!(self.lock().phase, Phase::Hijacked)
    }

    pub fn broken(&self) -> bool {
        matches!(self.lock().phase, Phase::Broken)
    }

    /// Nothing more may be written: the body is complete, the app took the
    /// socket, or the client is gone.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.lock().phase,
            Phase::Finished | Phase::Hijacked | Phase::Broken
        )
    }

    /// Records that a head with `status`, `head_len` bytes long, goes out
    /// next with this framing (once: an exchange that is over stays over).
    pub fn set_head(&self, status: u16, head_len: usize, framing: Framing) {
        let mut inner = self.lock();
        if matches!(inner.phase, Phase::Unanswered) {
            inner.phase = Phase::Body(BodyFramer::new(framing));
            inner.status = Some(status);
            inner.body_from = inner.sent + head_len as u64;
        }
    }

    /// Records the status of a response the server made in the app's place
    /// (a 500 for an app error).
    pub fn note_status(&self, status: u16) {
        self.lock().status = Some(status);
    }

    /// Counts response bytes handed to the connection.
    fn count(&self, bytes: usize) {
        self.lock().sent += bytes as u64;
    }

    /// Counts the exchange (`crate::stats`) and writes its access log
    /// line, while it has its job.
    fn log(&self, inner: &Inner) {
        let Some(job) = inner.job.as_ref() else {
            return;
        };
        let request = &job.request;
        let status = inner.status.unwrap_or(500);
        let queue = self.started.saturating_duration_since(request.received);
        let serving = self.started.elapsed();
        crate::stats::answered(status, inner.sent, queue, serving);
        if crate::stats::trusts_request_start() {
            crate::stats::proxy_queue(
                request.head.header("x-request-start"),
                std::time::SystemTime::now()
                    .checked_sub(serving)
                    .unwrap_or(std::time::UNIX_EPOCH),
            );
        }
        if crate::logs::access::enabled() {
            crate::logs::access::record(&crate::logs::access::Entry {
                peer: request.peer,
                head: Some(&request.head),
                status,
                bytes: inner.sent.saturating_sub(inner.body_from),
                duration: request.received.elapsed(),
                queue: Some(queue),
            });
        }
    }

    /// Frames one piece of a streamed body (see [`BodyFramer`]); a fault
    /// is logged here, once, and closes the connection after the response.
    pub fn frame<'a>(&self, data: &'a [u8]) -> Framed<'a> {
        Self::frame_locked(&mut self.lock(), data)
    }

    fn frame_locked<'a>(inner: &mut Inner, data: &'a [u8]) -> Framed<'a> {
        let Phase::Body(framer) = &mut inner.phase else {
            return BodyFramer::new(Framing::NoBody).frame(data).0;
        };
        let (framed, fault) = framer.frame(data);
        if let Some(fault) = fault {
            inner.reuse = Reuse::Never;
            report_fault(inner, &fault);
        }
        framed
    }

    /// The body ended: marks the exchange finished and returns what ends
    /// the body on the wire (the last chunk).
    pub fn finish_framing(&self) -> &'static [u8] {
        let mut inner = self.lock();
        let Phase::Body(framer) = &mut inner.phase else {
            return b"";
        };
        let (last, fault) = framer.finish();
        inner.phase = Phase::Finished;
        if let Some(fault) = fault {
            inner.reuse = Reuse::Never;
            report_fault(&inner, &fault);
        }
        last
    }

    /// The connection closes after this response.
    pub fn close_after(&self) {
        self.lock().reuse = Reuse::Never;
    }

    /// Whether the client's `Upgrade` field offers `protocol`.
    pub fn offered_protocol(&self, protocol: &[u8]) -> bool {
        let inner = self.lock();
        let Some(offered) = inner
            .job
            .as_ref()
            .and_then(|j| j.request.head.header("upgrade"))
        else {
            return false;
        };
        offered
            .split(|&b| b == b',')
            .any(|p| p.trim_ascii().eq_ignore_ascii_case(protocol))
    }

    /// The body is complete.
    pub fn mark_finished(&self) {
        let mut inner = self.lock();
        if matches!(inner.phase, Phase::Unanswered | Phase::Body(_)) {
            inner.phase = Phase::Finished;
        }
    }

    /// For the request timeout: the job, if nothing was sent yet; the
    /// exchange is then over for the app.
    pub fn take_job_if_unanswered(&self) -> Option<Job> {
        let mut inner = self.lock();
        if !matches!(inner.phase, Phase::Unanswered) {
            return None;
        }
        inner.phase = Phase::Broken;
        inner.job.take()
    }

    /// "GET /path" as the client sent it, while the exchange has its job
    /// (for error logs: middleware may have rewritten the env's path).
    pub fn request_line(&self) -> Option<String> {
        let inner = self.lock();
        let head = &inner.job.as_ref()?.request.head;
        Some(format!(
            "{} {}",
            String::from_utf8_lossy(head.method()),
            String::from_utf8_lossy(head.path())
        ))
    }

    /// What becomes of the connection, given whether the request and the
    /// response allow keeping it.
    fn afterwards(inner: &Inner, keep_alive: bool) -> Afterwards {
        match (&inner.phase, inner.reuse, keep_alive) {
            (Phase::Broken, _, _) => Afterwards::CloseNow,
            (_, Reuse::Allowed, true) => Afterwards::KeepAlive,
            _ => Afterwards::CloseAfterWrite,
        }
    }

    /// The exchange is over: the connection goes back to its IO thread.
    pub fn hand_back(&self, keep_alive: bool) {
        let mut inner = self.lock();
        self.log(&inner);
        let afterwards = Self::afterwards(&inner, keep_alive);
        if let Some(job) = inner.job.take() {
            drop(inner);
            job.finish(afterwards);
        }
    }

    /// Like [`Exchange::hand_back`], but a quiet connection may stay with
    /// this thread for its next request (see [`Job::finish_or_keep`]).
    pub fn hand_back_or_keep(&self, keep_alive: bool) -> Option<Kept> {
        let mut inner = self.lock();
        self.log(&inner);
        let afterwards = Self::afterwards(&inner, keep_alive);
        let job = inner.job.take()?;
        drop(inner);
        job.finish_or_keep(afterwards)
    }

    /// The response cannot be completed (an error after the head, the
    /// client gone, the app thread interrupted): the connection closes at
    /// once, so a truncated body never looks complete. When none of this
    /// response went out, what is queued (the responses held for a
    /// pipelined batch before it) is written first: those were answered.
    pub fn abandon(&self) {
        let (job, afterwards) = {
            let mut inner = self.lock();
            self.log(&inner);
            let afterwards = match inner.phase {
                Phase::Unanswered => Afterwards::CloseAfterWrite,
                _ => Afterwards::CloseNow,
            };
            (inner.job.take(), afterwards)
        };
        if let Some(job) = job {
            job.finish(afterwards);
        }
    }
}

/// Logs an app body that did not match its framing, naming the request.
fn report_fault(inner: &Inner, fault: &BodyFault) {
    match inner.job.as_ref().map(|job| &job.request.head) {
        Some(head) => crate::log_err!(
            "butterflies: app error handling {} {}: {fault}; closing the connection",
            String::from_utf8_lossy(head.method()),
            String::from_utf8_lossy(head.target()),
        ),
        None => crate::log_err!("butterflies: app error: {fault}; closing the connection"),
    }
}

mod writes;

#[cfg(test)]
mod tests;
