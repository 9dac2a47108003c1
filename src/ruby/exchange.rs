//! One request/response exchange, shared by the app-thread loop and the Ruby
//! objects an app gets for it (`rack.hijack`, `rack.early_hints`, the Rack 3
//! stream). It owns the job (request and connection) while the app runs, and
//! writes response bytes as they come, without the GVL.
//!
//! Writes never let a slow client pile up memory: past `HIGH_WATER_BYTES`
//! unwritten, the writer waits (GVL released, interruptible) until the
//! client reads or the write timeout passes.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use magnus::{Error, Ruby};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::gvl::{check_interrupts, without_gvl, Unblock};
use crate::http::body_framer::{BodyFault, BodyFramer, Framed};
use crate::http::response::Framing;
use crate::http::Version;
use crate::net::cursor::Cursor;
use crate::net::Job;

/// Unwritten response bytes past which a writer waits for the client.
pub const HIGH_WATER_BYTES: usize = 1024 * 1024;
/// Streamed pieces are written once this much has gathered.
pub const COALESCE_BYTES: usize = 16 * 1024;

/// Wakes an app thread blocked in a write wait (the unblock function).
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
}

impl Waker {
    pub fn new() -> std::io::Result<Self> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Waker { fd })
    }
    pub fn wake(&self) {
        let _ = self.fd.write(1);
    }
}

#[derive(Debug, Default)]
struct Inner {
    job: Option<Job>,
    /// How body bytes are framed, once the head is sent.
    framing: Option<Framing>,
    /// Keeps the body true to that framing (streamed bodies).
    framer: Option<BodyFramer>,
    /// The connection must close after this response: the body did not
    /// match its framing, or the app read from the connection (a Rack 3
    /// stream), so what follows on it is no request of ours.
    close_after: bool,
    /// The app took the socket (full or partial hijack).
    hijacked: bool,
    /// A write failed or timed out: the client is gone.
    broken: bool,
    /// The body is complete: nothing more may be written.
    finished: bool,
    /// Body pieces written so far (streamed bodies).
    pieces: u64,
    /// Since when streamed pieces sit unwritten in the connection's buffer.
    buffered_since: Option<Instant>,
}

#[derive(Debug)]
pub struct Exchange {
    inner: Mutex<Inner>,
    pub version: Version,
    pub head_request: bool,
    waker: Arc<Waker>,
    write_timeout: Duration,
}

/// Bytes to queue, optionally followed by part of a file.
type Pending = (Vec<u8>, Option<(std::fs::File, u64)>);

/// What a write wait ended with.
enum Sent {
    Done,
    Interrupted,
    Failed(std::io::Error),
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
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stopping(&self) -> bool {
        self.lock().job.as_ref().is_some_and(Job::stopping)
    }

    pub fn head_sent(&self) -> bool {
        self.lock().framing.is_some()
    }

    pub fn hijacked(&self) -> bool {
        self.lock().hijacked
    }

    pub fn is_finished(&self) -> bool {
        let inner = self.lock();
        inner.finished || inner.broken || inner.hijacked
    }

    /// Records that the head went out with this framing.
    pub fn set_framing(&self, framing: Framing) {
        let mut inner = self.lock();
        inner.framing = Some(framing);
        inner.framer = Some(BodyFramer::new(framing));
    }

    /// Frames one piece of a streamed body (see [`BodyFramer`]); a fault
    /// is logged here, once, and closes the connection after the response.
    pub fn frame<'a>(&self, data: &'a [u8]) -> Framed<'a> {
        let mut inner = self.lock();
        let Some(framer) = inner.framer.as_mut() else {
            return BodyFramer::new(Framing::None).frame(data).0;
        };
        let (framed, fault) = framer.frame(data);
        if let Some(fault) = fault {
            inner.close_after = true;
            report_fault(&inner, &fault);
        }
        framed
    }

    /// The body ended: what ends it on the wire (the last chunk).
    pub fn finish_framing(&self) -> &'static [u8] {
        let mut inner = self.lock();
        let Some(framer) = inner.framer.as_mut() else {
            return b"";
        };
        let (last, fault) = framer.finish();
        if let Some(fault) = fault {
            inner.close_after = true;
            report_fault(&inner, &fault);
        }
        last
    }

    /// The connection closes after this response (it switched protocols).
    pub fn close_after(&self) {
        self.lock().close_after = true;
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

    /// Whether the connection may carry another request after this one.
    pub fn must_close(&self) -> bool {
        self.lock().close_after
    }

    pub fn mark_finished(&self) {
        self.lock().finished = true;
    }

    /// For the request timeout: the job, if nothing was sent yet; the
    /// exchange is then over for the app.
    pub fn take_job_if_unanswered(&self) -> Option<Job> {
        let mut inner = self.lock();
        if inner.framing.is_some() || inner.hijacked || inner.broken {
            return None;
        }
        inner.broken = true;
        inner.job.take()
    }

    /// Takes the job back when the exchange is over.
    pub fn take_job(&self) -> Option<Job> {
        self.lock().job.take()
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

    pub fn broken(&self) -> bool {
        self.lock().broken
    }

    /// Queues bytes and writes them; returns once the socket took them or
    /// few enough are left for the IO thread to finish later.
    pub fn send(&self, ruby: &Ruby, bytes: Vec<u8>) -> Result<(), Error> {
        self.send_with(ruby, bytes, None)
    }

    /// Buffers a piece of a streamed body. The first piece of a body goes
    /// out at once (the client sees the response start); later ones are
    /// collected and written when 16 KiB have gathered, when the body ends,
    /// or by the flusher thread once they are a few milliseconds old, so a
    /// body of many small pieces costs a few writes, not one per piece,
    /// and an app that pauses mid-body still gets its pieces out. Returns
    /// true when pieces started waiting: the caller hands the exchange to
    /// the flusher then.
    pub fn send_piece(&self, ruby: &Ruby, parts: &[&[u8]], gather: bool) -> Result<bool, Error> {
        let first = {
            let mut inner = self.lock();
            inner.pieces += 1;
            inner.pieces == 1 || !gather
        };
        if first {
            return self.send_now(ruby, parts).map(|()| false);
        }
        let (backlog, register) = {
            let mut inner = self.lock();
            if inner.broken || inner.hijacked {
                return Err(disconnected(ruby));
            }
            let register = inner.buffered_since.is_none();
            let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
                return Err(disconnected(ruby));
            };
            conn.append(parts);
            let backlog = conn.pending_bytes();
            if backlog >= COALESCE_BYTES {
                if let Err(e) = conn.flush() {
                    inner.broken = true;
                    return Err(disconnected_because(ruby, &e.to_string()));
                }
            }
            let backlog = inner
                .job
                .as_mut()
                .and_then(Job::conn_mut)
                .map_or(0, |c| c.pending_bytes());
            if backlog > 0 && register {
                inner.buffered_since = Some(Instant::now());
            }
            (backlog, backlog > 0 && register)
        };
        if backlog > HIGH_WATER_BYTES && !self.park() {
            self.send(ruby, Vec::new())?;
        }
        Ok(register)
    }

    /// For the flusher: writes what streamed pieces have gathered if they
    /// are older than `age`. Returns false once nothing is left to watch.
    pub fn flush_if_older(&self, age: Duration) -> bool {
        let mut inner = self.lock();
        let Some(since) = inner.buffered_since else {
            return false;
        };
        if since.elapsed() < age {
            return true;
        }
        let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
            // The app thread is writing, or the exchange is over.
            return inner.job.is_none() && !inner.finished;
        };
        match conn.flush() {
            Ok(true) => {
                inner.buffered_since = None;
                false
            }
            Ok(false) => true,
            Err(_) => {
                inner.broken = true;
                false
            }
        }
    }

    /// Sends borrowed bytes (e.g. straight from Ruby strings) with one
    /// non-blocking `writev(2)`, *with* the GVL held: a write that cannot
    /// block costs less than giving the GVL away and taking it back (see
    /// docs/ARCHITECTURE.md). Only what the socket does not take is copied;
    /// past the high-water mark the caller waits without the GVL.
    pub fn send_now(&self, ruby: &Ruby, parts: &[&[u8]]) -> Result<(), Error> {
        let backlog = {
            let mut inner = self.lock();
            if inner.broken || inner.hijacked {
                return Err(disconnected(ruby));
            }
            let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
                return Err(disconnected(ruby));
            };
            match conn.write_or_queue(parts) {
                Ok(()) => conn.pending_bytes(),
                Err(e) => {
                    inner.broken = true;
                    return Err(disconnected_because(ruby, &e.to_string()));
                }
            }
        };
        if backlog > HIGH_WATER_BYTES && !self.park() {
            self.send(ruby, Vec::new())?;
        }
        Ok(())
    }

    /// Parks what is unwritten with the IO thread, within the budget: then
    /// the app thread goes on without waiting for a slow client.
    fn park(&self) -> bool {
        self.lock().job.as_mut().is_some_and(Job::park)
    }

    /// Sends borrowed bytes that stay valid while the GVL is released
    /// (frozen snapshots, see `snapshot.rs`): written as the socket takes
    /// them, waiting for a slow client without the GVL and without copying
    /// them, until at most `HIGH_WATER_BYTES` are left, or what is left
    /// fits in the budget for bytes parked with IO threads: that much is
    /// copied and the IO thread finishes it.
    pub fn send_borrowed(&self, ruby: &Ruby, parts: &[&[u8]]) -> Result<(), Error> {
        let mut cursor = Cursor::new(parts);
        {
            let mut inner = self.lock();
            if inner.broken || inner.hijacked {
                return Err(disconnected(ruby));
            }
            let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
                return Err(disconnected(ruby));
            };
            if conn.has_output() {
                // Bytes queued before these go first (rare: a pending
                // 100 Continue); take the copying path.
                cursor.queue_rest(conn);
                drop(inner);
                return self.send_now(ruby, &[]);
            }
            // First with the GVL held: a write that does not block costs
            // less than giving the GVL away and taking it back.
            if let Err(e) = cursor.write_to(conn) {
                inner.broken = true;
                return Err(disconnected_because(ruby, &e.to_string()));
            }
            if cursor.remaining() <= HIGH_WATER_BYTES {
                cursor.queue_rest(conn);
                return Ok(());
            }
        }
        loop {
            let cursor = &mut cursor;
            let sent = self.without_gvl_on_job(ruby, move |job, waker, timeout| {
                write_cursor(job, cursor, waker, timeout)
            })?;
            if self.write_ended(ruby, sent)? {
                return Ok(());
            }
        }
    }

    /// Like `send`, followed by `len` bytes of a file (sent by sendfile(2)
    /// from here or, if the client is slow, by the IO thread).
    pub fn send_file(
        &self,
        ruby: &Ruby,
        head: Vec<u8>,
        file: std::fs::File,
        len: u64,
    ) -> Result<(), Error> {
        self.send_with(ruby, head, Some((file, len)))
    }

    fn send_with(
        &self,
        ruby: &Ruby,
        bytes: Vec<u8>,
        file: Option<(std::fs::File, u64)>,
    ) -> Result<(), Error> {
        {
            let inner = self.lock();
            if inner.broken || inner.hijacked {
                return Err(disconnected(ruby));
            }
        }
        let mut first = Some((bytes, file));
        loop {
            let pending = first.take();
            let sent = self.without_gvl_on_job(ruby, move |job, waker, timeout| {
                write_out(job, pending, waker, timeout)
            })?;
            if self.write_ended(ruby, sent)? {
                return Ok(());
            }
        }
    }

    /// Runs `io` on the job without the GVL, interruptible through this
    /// exchange's waker. The job is out of the exchange meanwhile (so
    /// nothing else writes to the connection) and back in it afterwards.
    fn without_gvl_on_job<R: Send>(
        &self,
        ruby: &Ruby,
        io: impl FnOnce(&mut Job, &Waker, Duration) -> R + Send,
    ) -> Result<R, Error> {
        let mut job = self.lock().job.take().ok_or_else(|| disconnected(ruby))?;
        let waker = self.waker.clone();
        let timeout = self.write_timeout;
        let (back, result) = without_gvl(
            ruby,
            {
                let waker = waker.clone();
                move || {
                    let result = io(&mut job, &waker, timeout);
                    (job, result)
                }
            },
            Some(Unblock {
                func: |w: &Arc<Waker>| w.wake(),
                arg: &waker,
            }),
        )?;
        self.lock().job = Some(back);
        Ok(result)
    }

    /// How a write wait ended, for the writer: `Ok(true)` written (or left
    /// to the IO thread), `Ok(false)` interrupted and handled (write on),
    /// `Err` for Ruby (the client is gone, or an exception to raise).
    fn write_ended(&self, ruby: &Ruby, sent: Sent) -> Result<bool, Error> {
        match sent {
            Sent::Done => Ok(true),
            Sent::Interrupted => check_interrupts().map(|()| false),
            Sent::Failed(e) => {
                self.lock().broken = true;
                Err(disconnected_because(ruby, &e.to_string()))
            }
        }
    }

    /// Reads up to `max` bytes the client sent after the request (a Rack 3
    /// stream's `read`), waiting without the GVL. `None` at end of stream.
    /// The connection then closes after the response: what the app left
    /// unread is not a request.
    pub fn read(&self, ruby: &Ruby, max: usize) -> Result<Option<Vec<u8>>, Error> {
        self.lock().close_after = true;
        loop {
            let got = self.without_gvl_on_job(ruby, move |job, waker, timeout| {
                read_in(job, max, waker, timeout)
            })?;
            match got {
                Ok(Some(bytes)) if bytes.is_empty() => check_interrupts()?,
                Ok(got) => return Ok(got),
                Err(e) => {
                    return Err(Error::new(
                        ruby.exception_io_error(),
                        format!("read failed: {e}"),
                    ));
                }
            }
        }
    }

    /// rack.hijack: the socket, duplicated for the app; the server forgets
    /// the connection.
    pub fn hijack(&self, ruby: &Ruby) -> Result<OwnedFd, Error> {
        let job = {
            let mut inner = self.lock();
            inner.hijacked = true;
            inner.job.take()
        };
        let job = job.ok_or_else(|| disconnected(ruby))?;
        job.hijack()
            .map_err(|e| Error::new(ruby.exception_io_error(), format!("cannot hijack: {e}")))
    }
}

/// Logs an app body that did not match its framing, naming the request.
fn report_fault(inner: &Inner, fault: &BodyFault) {
    match inner.job.as_ref().map(|job| &job.request.head) {
        Some(head) => eprintln!(
            "butterflies: app error handling {} {}: {fault}; closing the connection",
            String::from_utf8_lossy(head.method()),
            String::from_utf8_lossy(head.target()),
        ),
        None => eprintln!("butterflies: app error: {fault}; closing the connection"),
    }
}

/// Queues and writes, waiting while too much is unwritten. Runs without
/// the GVL.
fn write_out(job: &mut Job, pending: Option<Pending>, waker: &Waker, timeout: Duration) -> Sent {
    let budget = job.park_budget();
    let Some(conn) = job.conn_mut() else {
        return Sent::Failed(std::io::ErrorKind::NotConnected.into());
    };
    if let Some((bytes, file)) = pending {
        conn.queue(bytes);
        if let Some((file, len)) = file {
            conn.queue_file(file, len);
        }
    }
    let mut last_progress = Instant::now();
    loop {
        let before = conn.pending_bytes();
        match conn.flush() {
            Ok(true) => return Sent::Done,
            Ok(false) if conn.pending_bytes() <= HIGH_WATER_BYTES => return Sent::Done,
            // A slow client: leave the rest to the IO thread if the budget
            // allows, rather than hold this app thread.
            Ok(false) if conn.park(&budget, 0) => return Sent::Done,
            Ok(false) => {}
            Err(e) => return Sent::Failed(e),
        }
        if conn.pending_bytes() < before {
            last_progress = Instant::now();
        }
        if let Some(ended) = wait_for_client(conn, last_progress, waker, timeout) {
            return ended;
        }
    }
}

/// Writes borrowed bytes, waiting for the client while more than
/// `HIGH_WATER_BYTES` are left that the park budget cannot take. Runs
/// without the GVL; the bytes are frozen snapshots kept alive by the
/// caller's stack (see `snapshot.rs`).
fn write_cursor(job: &mut Job, cursor: &mut Cursor<'_>, waker: &Waker, timeout: Duration) -> Sent {
    let budget = job.park_budget();
    let Some(conn) = job.conn_mut() else {
        return Sent::Failed(std::io::ErrorKind::NotConnected.into());
    };
    let mut last_progress = Instant::now();
    loop {
        let before = cursor.remaining();
        if let Err(e) = cursor.write_to(conn) {
            return Sent::Failed(e);
        }
        if cursor.is_done() {
            return Sent::Done;
        }
        if cursor.remaining() <= HIGH_WATER_BYTES || conn.park(&budget, cursor.remaining()) {
            cursor.queue_rest(conn);
            return Sent::Done;
        }
        if cursor.remaining() < before {
            last_progress = Instant::now();
        }
        if let Some(ended) = wait_for_client(conn, last_progress, waker, timeout) {
            return ended;
        }
    }
}

/// Waits (up to a second at a time) for the client to take more bytes.
/// `Some` ends the write: the write timeout passed since the last
/// progress, the waker fired (Ruby wants the thread), or poll failed.
fn wait_for_client(
    conn: &crate::net::conn::Conn,
    last_progress: Instant,
    waker: &Waker,
    timeout: Duration,
) -> Option<Sent> {
    let left = timeout.saturating_sub(last_progress.elapsed());
    if left.is_zero() {
        return Some(Sent::Failed(std::io::ErrorKind::TimedOut.into()));
    }
    // A wake-up left from an earlier call only costs one spurious
    // Interrupted; draining here could lose a real one.
    match conn.wait_writable(left.min(Duration::from_secs(1)), waker.fd.as_fd()) {
        Ok(true) => None,
        Ok(false) if woken(waker) => Some(Sent::Interrupted),
        Ok(false) => None,
        Err(e) => Some(Sent::Failed(e)),
    }
}

/// Reads some bytes, waiting for them; `Some(empty)` when interrupted.
fn read_in(
    job: &mut Job,
    max: usize,
    waker: &Waker,
    timeout: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    let conn = job.conn_mut().ok_or(std::io::ErrorKind::NotConnected)?;
    let started = Instant::now();
    loop {
        match conn.read_some(max)? {
            Some(bytes) if bytes.is_empty() => {}
            got => return Ok(got),
        }
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        match conn.wait_readable(left.min(Duration::from_secs(1)), waker.fd.as_fd())? {
            true => {}
            false if woken(waker) => return Ok(Some(Vec::new())),
            false => {}
        }
    }
}

/// Whether the waker fired (and consume it).
fn woken(waker: &Waker) -> bool {
    waker.fd.read().is_ok()
}

/// The error raised into the app when the client went away mid-response.
pub fn disconnected(ruby: &Ruby) -> Error {
    disconnected_because(ruby, "closed")
}

fn disconnected_because(ruby: &Ruby, why: &str) -> Error {
    use magnus::prelude::*;
    let class = ruby
        .class_object()
        .const_get::<_, magnus::RModule>("Butterflies")
        .and_then(|m| m.const_get::<_, magnus::ExceptionClass>("ClientDisconnected"))
        .unwrap_or_else(|_| ruby.exception_io_error());
    Error::new(class, format!("client connection lost: {why}"))
}

/// Whether an error is our own "client went away" (not the app's fault).
pub fn is_disconnect(ruby: &Ruby, error: &Error) -> bool {
    use magnus::prelude::*;
    ruby.class_object()
        .const_get::<_, magnus::RModule>("Butterflies")
        .and_then(|m| m.const_get::<_, magnus::ExceptionClass>("ClientDisconnected"))
        .is_ok_and(|class| error.is_kind_of(class))
}
