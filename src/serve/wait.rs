//! The waits of an app thread writing to (or reading from) a slow client,
//! run outside any lock the caller holds (for Ruby: without the GVL). Each
//! wait ends when the client makes progress, the write timeout passes
//! without progress, or the thread's [`Waker`] fires (its runtime wants it
//! back: an interrupt, a shutdown).

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::net::conn::Conn;
use crate::net::cursor::Cursor;
use crate::net::park::ParkBudget;
use crate::net::Job;

/// Unwritten response bytes past which a writer waits for the client.
pub const HIGH_WATER_BYTES: usize = 1024 * 1024;

/// The longest single wait: an interrupt lost to a race costs at most this.
const WAIT_AT_MOST: Duration = Duration::from_secs(1);

/// Wakes an app thread blocked in a wait (its unblock function).
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Waker { fd })
    }

    pub fn wake(&self) {
        let _ = self.fd.write(1);
    }

    /// Whether it fired (and consumes that).
    fn woken(&self) -> bool {
        self.fd.read().is_ok()
    }
}

/// How a write wait ended.
#[derive(Debug)]
pub enum Sent {
    /// Written, or left for the IO thread to finish.
    Done,
    /// The waker fired: the thread is wanted; the write goes on after.
    Interrupted,
    /// The client is gone, or took nothing for the write timeout.
    Failed(io::Error),
}

/// Bytes to queue, optionally followed by part of a file.
pub type Pending = (Vec<u8>, Option<(std::fs::File, u64)>);

/// Queues and writes, waiting while too much is unwritten.
pub fn write_out(
    job: &mut Job,
    pending: Option<Pending>,
    waker: &Waker,
    timeout: Duration,
) -> Sent {
    let mut pending = pending;
    write_waiting(job, waker, timeout, |conn, (memory, disk)| {
        if let Some((bytes, file)) = pending.take() {
            conn.queue(bytes);
            if let Some((file, len)) = file {
                conn.queue_file(file, len);
            }
        }
        Ok(match conn.flush()? {
            true => Left::Nothing,
            // A slow client: leave the rest to the IO thread if the budget
            // allows, rather than hold this app thread.
            false
                if conn.pending_bytes() <= HIGH_WATER_BYTES
                    || conn.park_or_spill(memory, disk, &[]) =>
            {
                Left::Nothing
            }
            false => Left::Bytes(conn.pending_bytes()),
        })
    })
}

/// Writes everything queued on the connection, waiting for the client
/// while it makes progress: before the app takes the socket, which must
/// carry no bytes of ours after its own.
pub fn write_all(job: &mut Job, waker: &Waker, timeout: Duration) -> Sent {
    write_waiting(job, waker, timeout, |conn, _| {
        Ok(match conn.flush()? {
            true => Left::Nothing,
            false => Left::Bytes(conn.pending_bytes()),
        })
    })
}

/// Writes borrowed bytes, waiting for the client while more than
/// `HIGH_WATER_BYTES` are left that the park budget cannot take.
pub fn write_cursor(
    job: &mut Job,
    cursor: &mut Cursor<'_>,
    waker: &Waker,
    timeout: Duration,
) -> Sent {
    write_waiting(job, waker, timeout, |conn, (memory, disk)| {
        cursor.write_to(conn)?;
        if cursor.is_done() {
            return Ok(Left::Nothing);
        }
        if cursor.remaining() <= HIGH_WATER_BYTES {
            cursor.queue_rest(conn);
            return Ok(Left::Nothing);
        }
        if cursor.hand_over(conn, memory, disk) {
            return Ok(Left::Nothing);
        }
        Ok(Left::Bytes(cursor.remaining()))
    })
}

/// What a write step left for this thread to write.
enum Left {
    /// Nothing: written, or left for the IO thread.
    Nothing,
    /// This many bytes: wait for the client, then step again.
    Bytes(usize),
}

/// Runs `step` on the job's connection until it leaves nothing, waiting
/// for the client between steps; the write timeout counts from the last
/// step that wrote something.
fn write_waiting(
    job: &mut Job,
    waker: &Waker,
    timeout: Duration,
    mut step: impl FnMut(&mut Conn, (&Arc<ParkBudget>, &Arc<ParkBudget>)) -> io::Result<Left>,
) -> Sent {
    let (memory, disk) = job.park_budgets();
    let Some(conn) = job.conn_mut() else {
        return Sent::Failed(io::ErrorKind::NotConnected.into());
    };
    let mut last_progress = Instant::now();
    let mut left_before = usize::MAX;
    loop {
        match step(conn, (&memory, &disk)) {
            Ok(Left::Nothing) => return Sent::Done,
            Ok(Left::Bytes(left)) => {
                if left < left_before {
                    last_progress = Instant::now();
                }
                left_before = left;
            }
            Err(e) => return Sent::Failed(e),
        }
        if let Some(ended) = wait_for_client(conn, last_progress, waker, timeout) {
            return ended;
        }
    }
}

/// Waits (up to a second at a time) for the client to take more bytes.
/// `Some` ends the write: the write timeout passed since the last
/// progress, the waker fired, or poll failed.
fn wait_for_client(
    conn: &Conn,
    last_progress: Instant,
    waker: &Waker,
    timeout: Duration,
) -> Option<Sent> {
    let left = timeout.saturating_sub(last_progress.elapsed());
    if left.is_zero() {
        return Some(Sent::Failed(io::ErrorKind::TimedOut.into()));
    }
    // A wake-up left from an earlier call only costs one spurious
    // Interrupted; draining here could lose a real one.
    match conn.wait_writable(left.min(WAIT_AT_MOST), waker.fd.as_fd()) {
        Ok(true) => None,
        Ok(false) if waker.woken() => Some(Sent::Interrupted),
        Ok(false) => None,
        Err(e) => Some(Sent::Failed(e)),
    }
}

/// Reads some bytes the client sent after its request, waiting for them
/// up to `timeout`; `Ok(Some(empty))` when the waker fired, `Ok(None)` at
/// the end of the stream.
pub fn read_in(
    job: &mut Job,
    max: usize,
    waker: &Waker,
    timeout: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let conn = job.conn_mut().ok_or(io::ErrorKind::NotConnected)?;
    let started = Instant::now();
    loop {
        match conn.read_some(max)? {
            Some(bytes) if bytes.is_empty() => {}
            got => return Ok(got),
        }
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match conn.wait_readable(left.min(WAIT_AT_MOST), waker.fd.as_fd())? {
            true => {}
            false if waker.woken() => return Ok(Some(Vec::new())),
            false => {}
        }
    }
}
