//! Counters that survive forks and restarts. A cluster master maps one
//! shared region (a memfd, `MAP_SHARED`) before it forks; each serving
//! process (a worker, or single mode) is given a slot of its own and adds
//! to it with relaxed atomics, so the master reads every worker's figures
//! without asking them. A slot is per process, not per worker index: during
//! a phased restart the old and new worker of an index keep apart gauges.
//! When a worker is gone, the master folds its counters into the retired
//! totals of its index, so no request counted is ever lost. The memfd is
//! handed across exec like the listeners (hot restarts, exec'd workers).

pub mod region;

pub use region::{Health, Region, Slot};

use std::sync::OnceLock;
use std::time::Duration;

/// Whether a value only grows (a counter: a gone worker's is kept in its
/// index's retired totals) or goes up and down (a gauge: wrapping adds of
/// -1, read back as signed, and gone with its process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Counters and gauges of a slot, by name (as `/stats` and `/metrics`
/// show them) and kind. The one list: Ruby reads the names and kinds from
/// here (`Butterflies::Stats::GAUGES`).
pub const VALUES: [(&str, Kind); VALUE_COUNT] = [
    ("requests_1xx", Kind::Counter),
    ("requests_2xx", Kind::Counter),
    ("requests_3xx", Kind::Counter),
    ("requests_4xx", Kind::Counter),
    ("requests_5xx", Kind::Counter),
    ("rejected_400", Kind::Counter),
    ("rejected_408", Kind::Counter),
    ("rejected_413", Kind::Counter),
    ("rejected_414", Kind::Counter),
    ("rejected_431", Kind::Counter),
    ("rejected_501", Kind::Counter),
    ("rejected_503", Kind::Counter),
    ("bytes_in", Kind::Counter),
    ("bytes_out", Kind::Counter),
    ("log_lines_dropped", Kind::Counter),
    ("connections", Kind::Gauge),
    ("keep_alive", Kind::Gauge),
    ("queued", Kind::Gauge),
    ("queue_capacity", Kind::Gauge),
    ("threads", Kind::Gauge),
    ("busy_threads", Kind::Gauge),
    ("parked_bytes", Kind::Gauge),
    ("spilled_bytes", Kind::Gauge),
    ("slow_clients_closed", Kind::Counter),
    ("proxy_refused", Kind::Counter),
    ("worker_memory_bytes", Kind::Gauge),
];
pub const VALUE_COUNT: usize = 26;

/// Whether [`VALUES`]`[index]` is a gauge (not summed into retired totals).
pub fn is_gauge(index: usize) -> bool {
    VALUES
        .get(index)
        .is_some_and(|(_, kind)| *kind == Kind::Gauge)
}

pub const BYTES_IN: usize = 12;
pub const BYTES_OUT: usize = 13;
/// Log lines (access log, the engine's stderr) dropped because the output
/// was slower than the requests.
pub const LOG_LINES_DROPPED: usize = 14;
pub const CONNECTIONS: usize = 15;
/// Connections between requests: served one or more, now with their IO
/// thread (waiting for, or reading, the next request).
pub const KEEP_ALIVE: usize = 16;
pub const QUEUED: usize = 17;
pub const QUEUE_CAPACITY: usize = 18;
pub const THREADS: usize = 19;
pub const BUSY_THREADS: usize = 20;
/// Response bytes left with IO threads for slow clients (`net::park`).
pub const PARKED_BYTES: usize = 21;
/// Response bytes spilled to disk past those (`net::spill`).
pub const SPILLED_BYTES: usize = 22;
/// Clients closed, slowest first, when neither budget had room.
pub const SLOW_CLIENTS_CLOSED: usize = 23;
/// Connections closed for a missing or malformed PROXY protocol header.
pub const PROXY_REFUSED: usize = 24;
/// The process's private memory (USS), as its master last measured it.
pub const MEMORY_BYTES: usize = 25;

/// Histograms of a slot.
pub const HISTOGRAMS: [&str; HISTOGRAM_COUNT] = ["queue", "gvl_wait", "app", "proxy_queue"];
pub const HISTOGRAM_COUNT: usize = 4;
pub const QUEUE_TIME: usize = 0;
pub const GVL_WAIT: usize = 1;
pub const APP_TIME: usize = 2;
/// From a trusted proxy's `X-Request-Start` to an app thread taking the
/// request (`trust_request_start`).
pub const PROXY_QUEUE: usize = 3;

/// Whether `X-Request-Start` is trusted (set once, at engine start).
static TRUST_REQUEST_START: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub fn trust_request_start() {
    TRUST_REQUEST_START.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The time a trusted proxy says it received the request, from its
/// `X-Request-Start` value: `t=` (optional) and seconds since the epoch
/// with a fraction (nginx's `t=${msec}`), or whole milliseconds or
/// microseconds, told apart by their size.
pub fn request_start(value: &[u8]) -> Option<std::time::SystemTime> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let number = text.strip_prefix("t=").unwrap_or(text);
    let micros = if number.contains('.') {
        let seconds: f64 = number.parse().ok()?;
        (seconds * 1e6) as u64
    } else {
        let n: u64 = number.parse().ok()?;
        match n {
            0..=99_999_999_999 => n.checked_mul(1_000_000)?,
            100_000_000_000..=99_999_999_999_999 => n.checked_mul(1_000)?,
            _ => n,
        }
    };
    std::time::UNIX_EPOCH.checked_add(Duration::from_micros(micros))
}

/// Records the proxy queue time of a request whose app thread took it at
/// `taken`, if `X-Request-Start` is trusted and given.
pub fn proxy_queue(header: Option<&[u8]>, taken: std::time::SystemTime) {
    if !trusts_request_start() {
        return;
    }
    if let Some(start) = header.and_then(request_start) {
        observe(PROXY_QUEUE, taken.duration_since(start).unwrap_or_default());
    }
}

/// Whether `X-Request-Start` is trusted (else it is not even looked up).
pub fn trusts_request_start() -> bool {
    TRUST_REQUEST_START.load(std::sync::atomic::Ordering::Relaxed)
}

/// Bucket upper bounds, in microseconds (then +Inf).
pub const BUCKETS_US: [u64; BUCKET_COUNT] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
pub const BUCKET_COUNT: usize = 12;

/// Worker restart reasons the master counts.
pub const RESTARTS: [&str; 5] = ["crash", "timeout", "phased", "hot", "memory"];

/// This process's slot, once attached.
static CURRENT: OnceLock<&'static Slot> = OnceLock::new();
/// The region's draining flag, once attached.
static DRAINING: OnceLock<&'static std::sync::atomic::AtomicU64> = OnceLock::new();

/// Makes `slot` this process's (once; after any fork), and `draining`
/// the flag it reads.
pub fn attach(slot: &'static Slot, draining: &'static std::sync::atomic::AtomicU64) {
    let _ = CURRENT.set(slot);
    let _ = DRAINING.set(draining);
}

/// Whether the server drains (`drain_delay`): responses close their
/// connections so clients go elsewhere.
pub fn draining() -> bool {
    DRAINING
        .get()
        .is_some_and(|flag| flag.load(std::sync::atomic::Ordering::Relaxed) != 0)
}

/// Adds `n` to value `index` of this process's slot (nothing if none).
pub fn add(index: usize, n: u64) {
    if let Some(slot) = CURRENT.get() {
        slot.add(index, n);
    }
}

/// Value `index` of this process's slot (0 if none).
pub fn value(index: usize) -> u64 {
    CURRENT.get().map_or(0, |slot| slot.value(index))
}

/// This process's heartbeat.
pub fn beat(health: Health) {
    if let Some(slot) = CURRENT.get() {
        slot.beat(health);
    }
}

/// Moves gauge `index` by `delta`.
pub fn gauge(index: usize, delta: i64) {
    add(index, delta as u64);
}

/// Sets gauge `index`.
pub fn set(index: usize, value: u64) {
    if let Some(slot) = CURRENT.get() {
        slot.set(index, value);
    }
}

/// Records `d` in histogram `index`.
pub fn observe(index: usize, d: Duration) {
    if let Some(slot) = CURRENT.get() {
        slot.observe(index, d);
    }
}

/// A request the app answered, with `status`.
pub fn answered(status: u16, bytes: u64, queue: Duration, app: Duration) {
    let Some(slot) = CURRENT.get() else {
        return;
    };
    let class = usize::from(status / 100).clamp(1, 5) - 1;
    slot.add(class, 1);
    slot.add(BYTES_OUT, bytes);
    slot.observe(QUEUE_TIME, queue);
    slot.observe(APP_TIME, app);
}

/// A request the server answered itself before the app saw it.
pub fn rejected(status: u16) {
    let index = match status {
        400 => 5,
        408 => 6,
        413 => 7,
        414 => 8,
        431 => 9,
        501 => 10,
        _ => 11,
    };
    add(index, 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn each_named_index_is_its_entry_and_gauges_are_their_kind() {
        let named = [
            (BYTES_IN, "bytes_in"),
            (BYTES_OUT, "bytes_out"),
            (LOG_LINES_DROPPED, "log_lines_dropped"),
            (CONNECTIONS, "connections"),
            (KEEP_ALIVE, "keep_alive"),
            (QUEUED, "queued"),
            (QUEUE_CAPACITY, "queue_capacity"),
            (THREADS, "threads"),
            (BUSY_THREADS, "busy_threads"),
            (PARKED_BYTES, "parked_bytes"),
            (SPILLED_BYTES, "spilled_bytes"),
            (SLOW_CLIENTS_CLOSED, "slow_clients_closed"),
            (PROXY_REFUSED, "proxy_refused"),
            (MEMORY_BYTES, "worker_memory_bytes"),
        ];
        for (index, name) in named {
            assert_eq!(VALUES[index].0, name);
        }
        assert!(is_gauge(CONNECTIONS) && is_gauge(BUSY_THREADS));
        assert!(!is_gauge(BYTES_IN) && !is_gauge(LOG_LINES_DROPPED));
        assert!(is_gauge(SPILLED_BYTES) && !is_gauge(SLOW_CLIENTS_CLOSED));
        assert!(!is_gauge(VALUE_COUNT), "past the end is no gauge");
    }

    #[test]
    fn request_start_takes_seconds_milliseconds_and_microseconds() {
        let at = UNIX_EPOCH + Duration::from_micros(1_796_020_800_123_456);
        let near = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| {
                t.duration_since(at)
                    .ok()
                    .or_else(|| at.duration_since(t).ok())
            })
            .is_some_and(|d| d < Duration::from_millis(1))
        };
        assert!(near(request_start(b"t=1796020800.123456")));
        assert!(near(request_start(b"t=1796020800123")));
        assert!(near(request_start(b"1796020800123456")));
        assert!(request_start(b"t=soon").is_none());
    }
}
