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
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::blocking::{Blocking, Unblock};
use super::wait::{read_in, write_cursor, write_out, Pending, Sent, Waker, HIGH_WATER_BYTES};
use crate::http::body_framer::{BodyFault, BodyFramer, Framed};
use crate::http::response::Framing;
use crate::http::Version;
use crate::net::conn::Afterwards;
use crate::net::cursor::Cursor;
use crate::net::{Job, Kept};

/// Streamed pieces are written once this much has gathered.
pub const COALESCE_BYTES: usize = 16 * 1024;

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
}

#[derive(Debug)]
pub struct Exchange {
    inner: Mutex<Inner>,
    pub version: Version,
    pub head_request: bool,
    waker: Arc<Waker>,
    write_timeout: Duration,
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

    /// The head went out (the body may be complete since).
    pub fn head_sent(&self) -> bool {
        matches!(self.lock().phase, Phase::Body(_) | Phase::Finished)
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

    /// Records that the head goes out with this framing (once: an
    /// exchange that is over stays over).
    pub fn set_framing(&self, framing: Framing) {
        let mut inner = self.lock();
        if matches!(inner.phase, Phase::Unanswered) {
            inner.phase = Phase::Body(BodyFramer::new(framing));
        }
    }

    /// Frames one piece of a streamed body (see [`BodyFramer`]); a fault
    /// is logged here, once, and closes the connection after the response.
    pub fn frame<'a>(&self, data: &'a [u8]) -> Framed<'a> {
        let mut inner = self.lock();
        let Phase::Body(framer) = &mut inner.phase else {
            return BodyFramer::new(Framing::NoBody).frame(data).0;
        };
        let (framed, fault) = framer.frame(data);
        if let Some(fault) = fault {
            inner.reuse = Reuse::Never;
            report_fault(&inner, &fault);
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
        let afterwards = Self::afterwards(&inner, keep_alive);
        let job = inner.job.take()?;
        drop(inner);
        job.finish_or_keep(afterwards)
    }

    /// The response cannot be completed (an error after the head, the
    /// client gone): the connection closes at once, so a truncated body
    /// never looks complete.
    pub fn abandon(&self) {
        let job = self.lock().job.take();
        if let Some(job) = job {
            job.finish(Afterwards::CloseNow);
        }
    }

    /// Queues bytes and writes them; returns once the socket took them or
    /// few enough are left for the IO thread to finish later.
    pub fn send<B: Blocking>(&self, gvl: &B, bytes: Vec<u8>) -> Result<(), B::Interrupt> {
        self.send_with(gvl, Some((bytes, None)))
    }

    /// Like `send`, followed by `len` bytes of a file (sent by sendfile(2)
    /// from here or, if the client is slow, by the IO thread).
    pub fn send_file<B: Blocking>(
        &self,
        gvl: &B,
        head: Vec<u8>,
        file: std::fs::File,
        len: u64,
    ) -> Result<(), B::Interrupt> {
        self.send_with(gvl, Some((head, Some((file, len)))))
    }

    fn send_with<B: Blocking>(&self, gvl: &B, first: Option<Pending>) -> Result<(), B::Interrupt> {
        if self.cannot_write() {
            return Err(closed());
        }
        let mut first = first;
        loop {
            let pending = first.take();
            let sent = self.blocking_on_job(gvl, move |job, waker, timeout| {
                write_out(job, pending, waker, timeout)
            })?;
            if self.write_ended(gvl, sent)? {
                return Ok(());
            }
        }
    }

    fn cannot_write(&self) -> bool {
        matches!(self.lock().phase, Phase::Broken | Phase::Hijacked)
    }

    /// Buffers a piece of a streamed body. The first piece of a body goes
    /// out at once (the client sees the response start); later ones are
    /// gathered and written when [`COALESCE_BYTES`] have gathered, when
    /// the body ends or is flushed, or by the flusher once they are a few
    /// milliseconds old, so a body of many small pieces costs a few
    /// writes, not one per piece, and an app that pauses mid-body still
    /// gets its pieces out. `gather` false writes every piece at once.
    /// Returns true when pieces started waiting: the caller hands the
    /// exchange to the flusher then.
    pub fn send_piece<B: Blocking>(
        &self,
        gvl: &B,
        parts: &[&[u8]],
        gather: bool,
    ) -> Result<bool, B::Interrupt> {
        let first = {
            let mut inner = self.lock();
            let first = matches!(inner.pieces, Pieces::NoneYet);
            if first {
                inner.pieces = Pieces::Written;
            }
            first || !gather
        };
        if first {
            return self.send_now(gvl, parts).map(|()| false);
        }
        let (backlog, register) = {
            let mut inner = self.lock();
            if matches!(inner.phase, Phase::Broken | Phase::Hijacked) {
                return Err(closed());
            }
            let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
                return Err(closed());
            };
            conn.append(parts);
            if conn.pending_bytes() >= COALESCE_BYTES {
                if let Err(e) = conn.flush() {
                    inner.phase = Phase::Broken;
                    return Err(gone(e));
                }
            }
            let backlog = inner
                .job
                .as_mut()
                .and_then(Job::conn_mut)
                .map_or(0, |c| c.pending_bytes());
            let register = backlog > 0 && matches!(inner.pieces, Pieces::Written);
            if register {
                inner.pieces = Pieces::Gathered(Instant::now());
            }
            (backlog, register)
        };
        if backlog > HIGH_WATER_BYTES && !self.park() {
            self.send_with(gvl, None)?;
        }
        Ok(register)
    }

    /// Writes the gathered pieces of a streamed body now (`flush` on the
    /// stream: a server-sent event goes out when the app says so).
    pub fn flush<B: Blocking>(&self, gvl: &B) -> Result<(), B::Interrupt> {
        {
            let mut inner = self.lock();
            if !matches!(inner.pieces, Pieces::Gathered(_)) {
                return Ok(());
            }
            inner.pieces = Pieces::Written;
        }
        self.send_now(gvl, &[])
    }

    /// For the flusher: writes what streamed pieces have gathered if they
    /// are older than `age`. Returns false once nothing is left to watch.
    pub fn flush_if_older(&self, age: Duration) -> bool {
        let mut inner = self.lock();
        let Pieces::Gathered(since) = inner.pieces else {
            return false;
        };
        if since.elapsed() < age {
            return true;
        }
        let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
            // A blocking section has the job (it writes), or the exchange
            // is over.
            return inner.job.is_none() && !matches!(inner.phase, Phase::Finished);
        };
        match conn.flush() {
            Ok(true) => {
                inner.pieces = Pieces::Written;
                false
            }
            Ok(false) => true,
            Err(_) => {
                inner.phase = Phase::Broken;
                false
            }
        }
    }

    /// Sends borrowed bytes (e.g. straight from Ruby strings) with one
    /// non-blocking `writev(2)`, in the caller's context: a write that
    /// cannot block costs less than a blocking section (for Ruby, giving
    /// the GVL away and taking it back). Only what the socket does not
    /// take is copied; past the high-water mark the caller waits in a
    /// blocking section.
    pub fn send_now<B: Blocking>(&self, gvl: &B, parts: &[&[u8]]) -> Result<(), B::Interrupt> {
        let backlog = {
            let mut inner = self.lock();
            if matches!(inner.phase, Phase::Broken | Phase::Hijacked) {
                return Err(closed());
            }
            let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
                return Err(closed());
            };
            match conn.write_or_queue(parts) {
                Ok(()) => conn.pending_bytes(),
                Err(e) => {
                    inner.phase = Phase::Broken;
                    return Err(gone(e));
                }
            }
        };
        if backlog > HIGH_WATER_BYTES && !self.park() {
            self.send_with(gvl, None)?;
        }
        Ok(())
    }

    /// Parks what is unwritten with the IO thread, within the budget: then
    /// the app thread goes on without waiting for a slow client.
    fn park(&self) -> bool {
        self.lock().job.as_mut().is_some_and(Job::park)
    }

    /// Sends borrowed bytes that stay valid during blocking sections (for
    /// Ruby: frozen snapshots, see `src/ruby/snapshot.rs`): written as the
    /// socket takes them, waiting for a slow client without copying them,
    /// until at most `HIGH_WATER_BYTES` are left, or what is left fits in
    /// the budget for bytes parked with IO threads: that much is copied
    /// and the IO thread finishes it.
    pub fn send_borrowed<B: Blocking>(&self, gvl: &B, parts: &[&[u8]]) -> Result<(), B::Interrupt> {
        let mut cursor = Cursor::new(parts);
        {
            let mut inner = self.lock();
            if matches!(inner.phase, Phase::Broken | Phase::Hijacked) {
                return Err(closed());
            }
            let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
                return Err(closed());
            };
            if conn.has_output() {
                // Bytes queued before these go first (rare: a pending
                // 100 Continue); take the copying path.
                cursor.queue_rest(conn);
                drop(inner);
                return self.send_now(gvl, &[]);
            }
            // First in the caller's context: a write that does not block
            // costs less than a blocking section.
            if let Err(e) = cursor.write_to(conn) {
                inner.phase = Phase::Broken;
                return Err(gone(e));
            }
            if cursor.remaining() <= HIGH_WATER_BYTES {
                cursor.queue_rest(conn);
                return Ok(());
            }
        }
        loop {
            let cursor = &mut cursor;
            let sent = self.blocking_on_job(gvl, move |job, waker, timeout| {
                write_cursor(job, cursor, waker, timeout)
            })?;
            if self.write_ended(gvl, sent)? {
                return Ok(());
            }
        }
    }

    /// Runs `io` on the job in a blocking section, interruptible through
    /// this exchange's waker. The job is out of the exchange meanwhile (so
    /// nothing else writes to the connection) and back in it afterwards.
    fn blocking_on_job<B: Blocking, R: Send>(
        &self,
        gvl: &B,
        io: impl FnOnce(&mut Job, &Waker, Duration) -> R + Send,
    ) -> Result<R, B::Interrupt> {
        let mut job = self.lock().job.take().ok_or_else(closed)?;
        let waker = self.waker.clone();
        let timeout = self.write_timeout;
        let (back, result) = gvl
            .run(
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
            )
            .map_err(ExchangeError::Interrupted)?;
        self.lock().job = Some(back);
        Ok(result)
    }

    /// How a write wait ended, for the writer: `Ok(true)` written (or left
    /// to the IO thread), `Ok(false)` interrupted and handled (write on),
    /// `Err` when the client is gone or the interrupt is to be raised.
    fn write_ended<B: Blocking>(&self, gvl: &B, sent: Sent) -> Result<bool, B::Interrupt> {
        match sent {
            Sent::Done => Ok(true),
            Sent::Interrupted => gvl
                .check_interrupts()
                .map(|()| false)
                .map_err(ExchangeError::Interrupted),
            Sent::Failed(e) => {
                self.lock().phase = Phase::Broken;
                Err(gone(e))
            }
        }
    }

    /// Reads up to `max` bytes the client sent after the request (a Rack 3
    /// stream's `read`), waiting in a blocking section. `None` at end of
    /// stream. The connection then closes after the response: what the
    /// app left unread is not a request.
    pub fn read<B: Blocking>(&self, gvl: &B, max: usize) -> Result<Option<Vec<u8>>, B::Interrupt> {
        self.lock().reuse = Reuse::Never;
        loop {
            let got = self.blocking_on_job(gvl, move |job, waker, timeout| {
                read_in(job, max, waker, timeout)
            })?;
            match got {
                Ok(Some(bytes)) if bytes.is_empty() => {
                    gvl.check_interrupts().map_err(ExchangeError::Interrupted)?
                }
                Ok(got) => return Ok(got),
                Err(e) => return Err(ExchangeError::Read(e)),
            }
        }
    }

    /// rack.hijack: the socket, duplicated for the app; the server forgets
    /// the connection.
    pub fn hijack<I>(&self) -> Result<OwnedFd, I> {
        let job = {
            let mut inner = self.lock();
            inner.phase = Phase::Hijacked;
            inner.job.take()
        };
        job.ok_or_else(closed)?
            .hijack()
            .map_err(ExchangeError::Hijack)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::handoff::testing::{job, DEADLINE};
    use crate::net::Shared;
    use crate::serve::Direct;
    use std::io::Read;
    use std::net::TcpStream;

    fn exchange(
        path: &str,
        write_timeout: Duration,
    ) -> (Exchange, TcpStream, Arc<crate::net::handoff::Mailbox>) {
        let (job, client, mailbox) = job(path, Arc::new(Shared::default()));
        let waker = Arc::new(Waker::new().unwrap());
        (Exchange::new(job, waker, write_timeout), client, mailbox)
    }

    /// Reads exactly `len` bytes from the client.
    fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut got = vec![0; len];
        client.read_exact(&mut got).unwrap();
        got
    }

    /// Whether the client has nothing to read right now.
    fn nothing_to_read(client: &mut TcpStream) -> bool {
        client.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let nothing =
            matches!(client.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        client.set_nonblocking(false).unwrap();
        nothing
    }

    #[test]
    fn a_response_goes_out_and_the_connection_goes_home_kept_alive() {
        let (ex, mut client, mailbox) = exchange("/a", DEADLINE);
        ex.set_framing(Framing::Length(2));
        ex.send(&Direct, b"HTTP/1.1 200 OK\r\n\r\nok".to_vec())
            .unwrap();
        ex.mark_finished();
        assert!(ex.head_sent() && ex.is_finished() && !ex.broken());
        ex.hand_back(true);
        let conn = mailbox.rx.try_recv().expect("the connection went home");
        assert!(!conn.ends_after_write());
        assert_eq!(read_exactly(&mut client, 21), b"HTTP/1.1 200 OK\r\n\r\nok");
    }

    #[test]
    fn a_client_that_reads_nothing_breaks_the_exchange_at_the_write_timeout() {
        let (ex, _client, mailbox) = exchange("/big", Duration::from_millis(200));
        ex.set_framing(Framing::Length(64 << 20));
        let started = Instant::now();
        let sent = ex.send(&Direct, vec![b'x'; 64 << 20]);
        assert!(
            matches!(sent, Err(ExchangeError::Disconnected(Gone::Failed(ref e))) if e.kind() == io::ErrorKind::TimedOut),
            "{sent:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(ex.broken() && ex.is_finished());
        // Nothing more is written, and the connection closes at once.
        assert!(matches!(
            ex.send(&Direct, b"more".to_vec()),
            Err(ExchangeError::Disconnected(Gone::Closed))
        ));
        ex.hand_back(true);
        assert!(mailbox.rx.try_recv().unwrap().ends_now());
    }

    #[test]
    fn streamed_pieces_after_the_first_gather_until_flushed() {
        let (ex, mut client, _mailbox) = exchange("/stream", DEADLINE);
        ex.set_framing(Framing::UntilClose);
        assert!(!ex.send_piece(&Direct, &[b"first"], true).unwrap());
        assert_eq!(read_exactly(&mut client, 5), b"first");
        // The second waits for more, and asks to be watched once.
        assert!(ex.send_piece(&Direct, &[b"second"], true).unwrap());
        assert!(!ex.send_piece(&Direct, &[b"third"], true).unwrap());
        assert!(nothing_to_read(&mut client));
        ex.flush(&Direct).unwrap();
        assert_eq!(read_exactly(&mut client, 11), b"secondthird");
        // Nothing gathered: the flusher stops watching.
        assert!(!ex.flush_if_older(Duration::ZERO));
    }

    #[test]
    fn the_flusher_writes_what_gathered_once_it_is_old_enough() {
        let (ex, mut client, _mailbox) = exchange("/stream", DEADLINE);
        ex.set_framing(Framing::UntilClose);
        ex.send_piece(&Direct, &[b"a"], true).unwrap();
        assert!(ex.send_piece(&Direct, &[b"b"], true).unwrap());
        assert!(ex.flush_if_older(DEADLINE), "too young: still watched");
        assert!(
            !ex.flush_if_older(Duration::ZERO),
            "written: no longer watched"
        );
        assert_eq!(read_exactly(&mut client, 2), b"ab");
    }

    #[test]
    fn only_an_unanswered_job_is_taken_for_a_timeout() {
        let (ex, _client, _mailbox) = exchange("/t", DEADLINE);
        let job = ex.take_job_if_unanswered().expect("nothing was sent");
        drop(job);
        assert!(ex.broken());
        // The app's late answer finds the client gone.
        ex.set_framing(Framing::Length(0));
        assert!(!ex.head_sent());
        assert!(matches!(
            ex.send(&Direct, Vec::new()),
            Err(ExchangeError::Disconnected(Gone::Closed))
        ));

        let (ex, _client, _mailbox) = exchange("/t", DEADLINE);
        ex.set_framing(Framing::Chunked);
        assert!(ex.take_job_if_unanswered().is_none(), "the head went out");
    }

    #[test]
    fn a_body_that_breaks_its_framing_closes_the_connection_after_it() {
        let (ex, mut client, mailbox) = exchange("/short", DEADLINE);
        ex.set_framing(Framing::Length(3));
        let framed = ex.frame(b"abcdef");
        ex.send_now(&Direct, &framed.parts()).unwrap();
        ex.send_now(&Direct, &[ex.finish_framing()]).unwrap();
        ex.hand_back(true);
        assert!(mailbox.rx.try_recv().unwrap().ends_after_write());
        assert_eq!(read_exactly(&mut client, 3), b"abc");
    }

    #[test]
    fn reading_from_the_connection_ends_keep_alive() {
        let (ex, mut client, mailbox) = exchange("/read", DEADLINE);
        std::io::Write::write_all(&mut client, b"after").unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            got.extend(ex.read(&Direct, 16).unwrap().expect("not at the end"));
        }
        assert_eq!(got, b"after");
        ex.set_framing(Framing::Length(0));
        ex.mark_finished();
        assert!(ex.hand_back_or_keep(true).is_none());
        assert!(mailbox.rx.try_recv().unwrap().ends_after_write());
    }

    #[test]
    fn a_hijacked_connection_is_forgotten() {
        let (ex, _client, mailbox) = exchange("/ws", DEADLINE);
        let fd = ex.hijack::<std::convert::Infallible>().unwrap();
        assert!(ex.hijacked() && ex.is_finished());
        assert!(mailbox.rx.try_recv().unwrap().is_hijacked());
        assert!(
            ex.hijack::<std::convert::Infallible>().is_err(),
            "taken once"
        );
        drop(fd);
    }
}
