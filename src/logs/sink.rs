//! The log sink: lines gather in a bounded in-memory buffer per stream,
//! and one writer thread per process writes what gathered every
//! `FLUSH_EVERY`, with one `write(2)` per stream. An IO thread, an app
//! thread or the watchdog appends its line (a short lock, no allocation,
//! nobody woken) and goes on; past `MAX_BUFFERED_BYTES` (the output is
//! slower than the requests) a line is dropped and counted, and the
//! writer says how many it lost. Waking the writer for each line cost
//! more than formatting it (docs/PERFORMANCE.md).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::supervise::{self, Faults};

/// Bytes a stream's buffer may hold before lines are dropped.
pub const MAX_BUFFERED_BYTES: usize = 4 * 1024 * 1024;
/// How often the writer writes what gathered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// How long [`drain`] waits for the writer before the process goes on
/// without the lines (its output is a pipe nobody reads).
pub const DRAIN_WITHIN: Duration = Duration::from_secs(1);

/// Where a line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

struct Sink {
    out: Mutex<Vec<u8>>,
    err: Mutex<Vec<u8>>,
    /// Set by the writer from taking a buffer until it is written.
    writing: AtomicBool,
}

impl Sink {
    fn buffer(&self, stream: Stream) -> MutexGuard<'_, Vec<u8>> {
        let buffer = match stream {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        };
        buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new() -> Sink {
        Sink {
            out: Mutex::new(Vec::with_capacity(64 * 1024)),
            err: Mutex::new(Vec::new()),
            writing: AtomicBool::new(false),
        }
    }

    /// Appends a line unless the buffer would pass `MAX_BUFFERED_BYTES`;
    /// false if it was dropped (the caller counts it).
    fn append(&self, stream: Stream, line: &[u8], newline: &[u8]) -> bool {
        let mut buffer = self.buffer(stream);
        if buffer.len() + line.len() + newline.len() > MAX_BUFFERED_BYTES {
            return false;
        }
        buffer.extend_from_slice(line);
        buffer.extend_from_slice(newline);
        true
    }

    /// Takes what gathered for `stream`, leaving `spare` (emptied) in its
    /// place, and writes it.
    fn flush(&self, stream: Stream, spare: &mut Vec<u8>) {
        spare.clear();
        self.writing.store(true, Ordering::Release);
        std::mem::swap(&mut *self.buffer(stream), spare);
        if !spare.is_empty() {
            write_now(stream, spare);
        }
        self.writing.store(false, Ordering::Release);
    }

    /// Whether every line appended so far has been written.
    fn written(&self) -> bool {
        !self.writing.load(Ordering::Acquire)
            && self.buffer(Stream::Stdout).is_empty()
            && self.buffer(Stream::Stderr).is_empty()
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts this process's writer thread (once; later calls do nothing).
/// Call after any fork.
pub fn start(faults: Arc<Faults>) -> std::io::Result<Option<JoinHandle<()>>> {
    if SINK.set(Sink::new()).is_err() {
        return Ok(None);
    }
    supervise::spawn("butterflies-log".into(), faults, move || {
        run();
        Ok(())
    })
    .map(Some)
}

/// Appends `line` (a newline is added if missing) for `stream`; without a
/// running sink, writes it at once.
pub fn write(stream: Stream, line: &[u8]) {
    let newline: &[u8] = if line.last() == Some(&b'\n') {
        b""
    } else {
        b"\n"
    };
    let Some(sink) = SINK.get() else {
        write_now(stream, &[line, newline].concat());
        return;
    };
    if !sink.append(stream, line, newline) {
        crate::stats::add(crate::stats::LOG_LINES_DROPPED, 1);
    }
}

/// A line for stderr.
pub fn err(line: String) {
    write(Stream::Stderr, line.as_bytes());
}

/// Lines dropped so far because the writer could not keep up: counted
/// once, in this process's stats slot (none before it is attached).
pub fn dropped() -> u64 {
    crate::stats::value(crate::stats::LOG_LINES_DROPPED)
}

/// Before the process exits: waits up to [`DRAIN_WITHIN`] for the writer
/// to write what gathered. It never writes itself: the writer may be
/// blocked on a pipe nobody reads, holding the stream, and a process
/// must still exit when told to.
pub fn drain() {
    let Some(sink) = SINK.get() else {
        return;
    };
    let until = Instant::now() + DRAIN_WITHIN;
    while !sink.written() && Instant::now() < until {
        std::thread::sleep(FLUSH_EVERY / 2);
    }
}

fn write_now(stream: Stream, bytes: &[u8]) {
    // A failed write to our own output has nowhere to be reported.
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        Stream::Stderr => std::io::stderr().lock().write_all(bytes),
    };
}

/// The writer: every `FLUSH_EVERY`, what gathered. Runs as long as the
/// process.
fn run() {
    let Some(sink) = SINK.get() else {
        return;
    };
    let mut reported = 0;
    let mut spare = Vec::with_capacity(64 * 1024);
    let mut next = Instant::now() + FLUSH_EVERY;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += FLUSH_EVERY;
        sink.flush(Stream::Stdout, &mut spare);
        let dropped = dropped();
        if dropped > reported {
            let note = format!(
                "butterflies: {} log lines dropped: the output was slower than the requests",
                dropped - reported
            );
            write(Stream::Stderr, note.as_bytes());
            reported = dropped;
        }
        sink.flush(Stream::Stderr, &mut spare);
        if spare.capacity() > MAX_BUFFERED_BYTES {
            spare = Vec::with_capacity(64 * 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_lines_and_takes_them_again_once_written() {
        let sink = Sink::new();
        let line = vec![b'x'; 1023];
        let fits = MAX_BUFFERED_BYTES / 1024;
        assert!((0..fits).all(|_| sink.append(Stream::Stdout, &line, b"\n")));
        assert!(!sink.append(Stream::Stdout, &line, b"\n"), "full");
        assert!(sink.append(Stream::Stderr, b"other stream", b"\n"));
        let mut spare = Vec::new();
        std::mem::swap(&mut *sink.buffer(Stream::Stdout), &mut spare);
        assert_eq!(spare.len(), fits * 1024);
        assert!(sink.append(Stream::Stdout, &line, b"\n"), "room again");
    }
}
