//! The log sink: one writer thread per process, fed by a bounded queue.
//! An IO thread, an app thread or the watchdog hands it a line and goes
//! on; if the queue is full (the output is slower than the requests), the
//! line is dropped and counted, and the writer says how many it lost once
//! it catches up.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::net::supervise::{self, Faults};

/// Lines waiting for the writer, at most.
pub const QUEUE_LINES: usize = 16 * 1024;

/// Where a line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

struct Sink {
    tx: Sender<(Stream, Vec<u8>)>,
    dropped: AtomicU64,
    /// Lines queued and not yet written.
    pending: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts this process's writer thread (once; later calls do nothing).
/// Call after any fork.
pub fn start(faults: Arc<Faults>) -> std::io::Result<Option<JoinHandle<()>>> {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
    if SINK
        .set(Sink {
            tx,
            dropped: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        })
        .is_err()
    {
        return Ok(None);
    }
    supervise::spawn("butterflies-log".into(), faults, move || {
        run(&rx);
        Ok(())
    })
    .map(Some)
}

/// Queues `line` (a newline is added if missing) for `stream`; without a
/// running sink, writes it at once.
pub fn write(stream: Stream, mut line: Vec<u8>) {
    if line.last() != Some(&b'\n') {
        line.push(b'\n');
    }
    let Some(sink) = SINK.get() else {
        write_now(stream, &line);
        return;
    };
    sink.pending.fetch_add(1, Ordering::AcqRel);
    match sink.tx.try_send((stream, line)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            sink.pending.fetch_sub(1, Ordering::AcqRel);
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Disconnected((stream, line))) => {
            sink.pending.fetch_sub(1, Ordering::AcqRel);
            write_now(stream, &line);
        }
    }
}

/// Waits, up to `deadline`, until every queued line is written: before
/// the process exits.
pub fn drain(deadline: std::time::Duration) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let until = std::time::Instant::now() + deadline;
    while sink.pending.load(Ordering::Acquire) > 0 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A line for stderr.
pub fn err(line: String) {
    write(Stream::Stderr, line.into_bytes());
}

/// Lines dropped so far because the writer could not keep up.
pub fn dropped() -> u64 {
    SINK.get().map_or(0, |s| s.dropped.load(Ordering::Relaxed))
}

fn write_now(stream: Stream, line: &[u8]) {
    // A failed write to our own output has nowhere to be reported.
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(line),
        Stream::Stderr => std::io::stderr().lock().write_all(line),
    };
}

/// The writer: ends when the process does (the queue's sender is static).
fn run(rx: &Receiver<(Stream, Vec<u8>)>) {
    let mut reported = 0;
    while let Ok((stream, line)) = rx.recv() {
        write_now(stream, &line);
        if let Some(sink) = SINK.get() {
            sink.pending.fetch_sub(1, Ordering::AcqRel);
        }
        if rx.is_empty() {
            let _ = std::io::stdout().lock().flush();
            let dropped = dropped();
            if dropped > reported {
                write_now(
                    Stream::Stderr,
                    format!(
                        "butterflies: {} log lines dropped: the output was slower than the requests\n",
                        dropped - reported
                    )
                    .as_bytes(),
                );
                reported = dropped;
            }
        }
    }
}
