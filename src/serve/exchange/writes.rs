//! An exchange's writes and reads: what the app's response and the Rack
//! 3 stream do with the connection, in the caller's context when a write
//! cannot block and in a blocking section ([`Blocking`]) when it waits for
//! the client.

use std::os::fd::OwnedFd;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::{closed, gone, Exchange, ExchangeError, Inner, Phase, Pieces, Result, Reuse};
use crate::net::cursor::Cursor;
use crate::net::Job;
use crate::serve::blocking::{Blocking, Unblock};
use crate::serve::wait::{
    read_in, write_all, write_cursor, write_out, Pending, Sent, Waker, HIGH_WATER_BYTES,
};

/// Streamed pieces are written once this much has gathered.
pub const COALESCE_BYTES: usize = 16 * 1024;

/// What became of a piece of a streamed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Written, or gathered behind pieces the flusher already watches.
    Out,
    /// Pieces started waiting: hand the exchange to the flusher.
    Waiting,
    /// The body was complete already (or the app took the socket).
    Closed,
}

impl Exchange {
    /// Queues bytes and writes them; returns once the socket took them or
    /// few enough are left for the IO thread to finish later.
    pub fn send<B: Blocking>(&self, gvl: &B, bytes: Vec<u8>) -> Result<(), B::Interrupt> {
        self.count(bytes.len());
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
        self.count(head.len() + usize::try_from(len).unwrap_or(usize::MAX));
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

    /// Queues the head of a streamed body without writing it: the body's
    /// first piece goes out with it in one write (or the body's end, if
    /// it has none), and should the app pause before its first piece, the
    /// flusher writes the head once it is a few milliseconds old, as it
    /// does gathered pieces. Returns true: the caller hands the exchange
    /// to the flusher. If responses of a pipelined batch are queued, they
    /// and the head are written now instead (false): were the body to
    /// fail before its first piece, the connection closes at once, and
    /// they must not be lost with it.
    pub fn queue_head<B: Blocking>(&self, gvl: &B, head: &[u8]) -> Result<bool, B::Interrupt> {
        {
            let mut inner = self.lock();
            if matches!(inner.phase, Phase::Broken | Phase::Hijacked) {
                return Err(closed());
            }
            let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) else {
                return Err(closed());
            };
            if !conn.has_output() {
                // Copied into the connection's buffer, which keeps its
                // capacity for the pieces that follow.
                conn.append(&[head]);
                inner.sent += head.len() as u64;
                inner.pieces = Pieces::Head(Instant::now());
                return Ok(true);
            }
        }
        self.send_now(gvl, &[head]).map(|()| false)
    }

    /// Frames one piece of a streamed body as the head announced (see
    /// [`BodyFramer`]; HEAD, 204 and 304 send nothing) and sends it as
    /// [`Exchange::send_piece`] does, all under one lock: an `each` body
    /// of many small pieces pays for this once per piece. `data` is
    /// written or copied before any blocking section runs (Ruby passes a
    /// string's bytes, readable only while the GVL is held).
    pub fn write_piece<B: Blocking>(
        &self,
        gvl: &B,
        data: &[u8],
        gather: bool,
    ) -> Result<Piece, B::Interrupt> {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Broken => return Err(closed()),
            Phase::Finished | Phase::Hijacked => return Ok(Piece::Closed),
            _ => {}
        }
        let framed = Self::frame_locked(&mut inner, data);
        if framed.is_empty() {
            return Ok(Piece::Out);
        }
        self.piece_locked(gvl, inner, &framed.parts(), gather)
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
        let piece = self.piece_locked(gvl, self.lock(), parts, gather)?;
        Ok(matches!(piece, Piece::Waiting))
    }

    fn piece_locked<B: Blocking>(
        &self,
        gvl: &B,
        mut inner: MutexGuard<'_, Inner>,
        parts: &[&[u8]],
        gather: bool,
    ) -> Result<Piece, B::Interrupt> {
        let first = matches!(inner.pieces, Pieces::NoneYet | Pieces::Head(_));
        if first {
            inner.pieces = Pieces::Written;
        }
        if first || !gather {
            drop(inner);
            return self.send_now(gvl, parts).map(|()| Piece::Out);
        }
        if matches!(inner.phase, Phase::Broken | Phase::Hijacked) {
            return Err(closed());
        }
        inner.sent += parts.iter().map(|p| p.len() as u64).sum::<u64>();
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
        let backlog = conn.pending_bytes();
        let register = backlog > 0 && matches!(inner.pieces, Pieces::Written);
        if register {
            inner.pieces = Pieces::Gathered(Instant::now());
        }
        drop(inner);
        if backlog > HIGH_WATER_BYTES && !self.park() {
            self.send_with(gvl, None)?;
        }
        Ok(if register { Piece::Waiting } else { Piece::Out })
    }

    /// Writes the gathered pieces of a streamed body now (`flush` on the
    /// stream: a server-sent event goes out when the app says so).
    pub fn flush<B: Blocking>(&self, gvl: &B) -> Result<(), B::Interrupt> {
        {
            let mut inner = self.lock();
            if !matches!(inner.pieces, Pieces::Gathered(_) | Pieces::Head(_)) {
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
        let (Pieces::Gathered(since) | Pieces::Head(since)) = inner.pieces else {
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
        self.count(parts.iter().map(|p| p.len()).sum());
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

    /// Sends a whole small response (head and body in `bytes`). While the
    /// connection's next request is already buffered (a pipelining
    /// client) it is queued, not written: the responses to a pipelined
    /// batch go out together, with the last one's write (or, should the
    /// batch end in an incomplete request, when the thread reads on; see
    /// `Kept::next_request`). Otherwise as [`Exchange::send_now`].
    pub fn send_whole<B: Blocking>(&self, gvl: &B, bytes: Vec<u8>) -> Result<(), B::Interrupt> {
        {
            let mut inner = self.lock();
            let reusable = inner.reuse == Reuse::Allowed
                && !matches!(inner.phase, Phase::Broken | Phase::Hijacked);
            if let Some(conn) = inner.job.as_mut().and_then(Job::conn_mut) {
                if reusable
                    && conn.has_pipelined_input()
                    && conn.pending_bytes() + bytes.len() <= COALESCE_BYTES
                {
                    let len = bytes.len();
                    conn.queue(bytes);
                    inner.sent += len as u64;
                    return Ok(());
                }
            }
        }
        self.send_now(gvl, &[&bytes])
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
        self.count(parts.iter().map(|p| p.len()).sum());
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
    /// the connection. What is queued on it goes out first, waiting for the
    /// client if need be: responses held back for a pipelined batch, the
    /// rest of a partial hijack's head.
    pub fn hijack<B: Blocking>(&self, gvl: &B) -> Result<OwnedFd, B::Interrupt> {
        let queued = {
            let mut inner = self.lock();
            let conn = inner.job.as_mut().and_then(Job::conn_mut);
            if conn.as_ref().is_some_and(|conn| conn.is_tls()) {
                // Refused before anything changes: the app's error is
                // answered as any other (a 500), on a connection intact.
                return Err(ExchangeError::Hijack(
                    crate::net::handoff::tls_hijack_refused(),
                ));
            }
            conn.is_some_and(|conn| conn.has_output())
        };
        if queued && !self.cannot_write() {
            loop {
                let sent = self.blocking_on_job(gvl, write_all)?;
                if self.write_ended(gvl, sent)? {
                    break;
                }
            }
        }
        let job = {
            let mut inner = self.lock();
            // A full hijack's answer is the app's own (a WebSocket's 101).
            inner.status.get_or_insert(101);
            self.log(&inner);
            inner.phase = Phase::Hijacked;
            inner.job.take()
        };
        job.ok_or_else(closed)?
            .hijack()
            .map_err(ExchangeError::Hijack)
    }
}
