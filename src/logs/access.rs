//! The access log: one line per request, on stdout, written through the
//! sink (never blocking a request). Requests the app never saw are logged
//! too (400, 408, 413, 414, 431, 501, and the 503s of a full queue or a
//! request timeout), so an operator sees attacks and shedding.
//!
//! Two formats: `common`, Apache's common log format plus the duration in
//! seconds (Puma's `log_requests` line), and `json`, one object a line.
//! The client's bytes are never printed raw: in the path and query,
//! anything but printable ASCII is written `\xHH`.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::sink::{self, Stream};
use crate::http::Head;

/// The shape of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `127.0.0.1 - - [30/Nov/2026:06:40:00 +0000] "GET /a?b HTTP/1.1" 200 12 0.0004`
    Common,
    /// `{"time":"2026-11-30T06:40:00.123Z","remote":"127.0.0.1",...}`
    Json,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "common" => Some(Format::Common),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// This process's access log, once enabled.
#[derive(Debug)]
struct AccessLog {
    format: Format,
    /// The cluster worker's index (JSON's `worker`), or none.
    worker: Option<usize>,
}

static ACCESS: OnceLock<AccessLog> = OnceLock::new();

/// Turns the access log on for this process (once; after any fork).
pub fn enable(format: Format, worker: Option<usize>) {
    let _ = ACCESS.set(AccessLog { format, worker });
}

pub fn enabled() -> bool {
    ACCESS.get().is_some()
}

/// One request, as logged.
#[derive(Debug)]
pub struct Entry<'a> {
    pub peer: SocketAddr,
    /// The request, when its head was read (not for a malformed one).
    pub head: Option<&'a Head>,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// From the complete request to the response handed back.
    pub duration: Duration,
    /// From the complete request to an app thread taking it.
    pub queue: Option<Duration>,
}

/// Logs `entry`, if the access log is on: formatted into a per-thread
/// buffer, then appended to the sink's.
pub fn record(entry: &Entry<'_>) {
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    if let Some(log) = ACCESS.get() {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            line_into(
                &mut scratch,
                log.format,
                log.worker,
                entry,
                SystemTime::now(),
            );
            sink::write(Stream::Stdout, &scratch);
        });
    }
}

/// Logs a request answered by the server itself before the app saw it.
pub fn rejected(
    peer: SocketAddr,
    head: Option<&Head>,
    status: u16,
    since: Option<std::time::Instant>,
) {
    crate::stats::rejected(status);
    if enabled() {
        record(&Entry {
            peer,
            head,
            status,
            bytes: 0,
            duration: since.map_or(Duration::ZERO, |t| t.elapsed()),
            queue: None,
        });
    }
}

/// The line for `entry` at `now`.
pub fn line(format: Format, worker: Option<usize>, entry: &Entry<'_>, now: SystemTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    line_into(&mut out, format, worker, entry, now);
    out
}

/// Appends the line for `entry` at `now` to `out`.
fn line_into(
    out: &mut Vec<u8>,
    format: Format,
    worker: Option<usize>,
    entry: &Entry<'_>,
    now: SystemTime,
) {
    use std::io::Write;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (method, path, query, version) = match entry.head {
        Some(h) => (h.method(), h.path(), h.query(), h.version.as_str()),
        None => (&b"-"[..], &b"-"[..], &b""[..], "-"),
    };
    // Writes into a Vec cannot fail.
    let _ = match format {
        Format::Common => {
            ip_text(out, entry.peer);
            out.extend_from_slice(b" - - [");
            clf_time(out, since_epoch.as_secs());
            out.extend_from_slice(b"] \"");
            escaped(out, method, false);
            out.push(b' ');
            escaped(out, path, false);
            if !query.is_empty() {
                out.push(b'?');
                escaped(out, query, false);
            }
            let _ = write!(out, " {version}\" {} ", entry.status);
            if entry.bytes == 0 {
                out.push(b'-');
            } else {
                let _ = write!(out, "{}", entry.bytes);
            }
            out.push(b' ');
            decimal(out, entry.duration.as_micros(), 1_000_000, 4);
            writeln!(out)
        }
        Format::Json => {
            out.extend_from_slice(b"{\"time\":\"");
            iso_time(out, since_epoch);
            out.extend_from_slice(b"\",\"remote\":\"");
            ip_text(out, entry.peer);
            out.extend_from_slice(b"\",\"method\":\"");
            escaped(out, method, true);
            out.extend_from_slice(b"\",\"path\":\"");
            escaped(out, path, true);
            out.extend_from_slice(b"\",\"query\":\"");
            escaped(out, query, true);
            let _ = write!(
                out,
                "\",\"status\":{},\"bytes\":{},\"duration_ms\":",
                entry.status, entry.bytes
            );
            decimal(out, entry.duration.as_micros(), 1_000, 3);
            out.extend_from_slice(b",\"queue_ms\":");
            match entry.queue {
                Some(q) => decimal(out, q.as_micros(), 1_000, 3),
                None => out.extend_from_slice(b"null"),
            }
            match worker {
                Some(w) => writeln!(out, ",\"worker\":{w}}}"),
                None => writeln!(out, ",\"worker\":null}}"),
            }
        }
    };
}

/// `micros` in units of `per` microseconds, with `places` decimals
/// (truncated), by integer arithmetic: float formatting cost a fifth of
/// a line.
fn decimal(out: &mut Vec<u8>, micros: u128, per: u128, places: u32) {
    use std::io::Write;
    let scale = 10u128.pow(places);
    let fraction = micros % per * scale / per;
    let _ = write!(
        out,
        "{}.{:0width$}",
        micros / per,
        fraction,
        width = places as usize
    );
}

/// The peer's IP as text, cached per thread for the last peer seen.
fn ip_text(out: &mut Vec<u8>, peer: SocketAddr) {
    use std::cell::RefCell;
    use std::io::Write;
    use std::net::IpAddr;
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, Vec<u8>)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.as_ref().is_none_or(|(ip, _)| *ip != peer.ip()) {
            let mut text = Vec::with_capacity(16);
            let _ = write!(text, "{}", peer.ip());
            *last = Some((peer.ip(), text));
        }
        if let Some((_, text)) = last.as_ref() {
            out.extend_from_slice(text);
        }
    });
}

/// Printable ASCII as it is, anything else as `\xHH`; `"` and `\` are
/// escaped too (`\"`, `\\`), so a line always parses back.
fn escaped(out: &mut Vec<u8>, bytes: &[u8], json: bool) {
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            0x20..=0x7e => out.push(b),
            _ => {
                // In JSON the backslash itself must be escaped: the value
                // decodes to `\xHH`.
                out.extend_from_slice(if json { b"\\\\x" } else { b"\\x" });
                out.extend_from_slice(format!("{b:02X}").as_bytes());
            }
        }
    }
}

/// `30/Nov/2026:06:40:00 +0000`, made once a second per thread.
fn clf_time(out: &mut Vec<u8>, secs: u64) {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let (year, month, day) = crate::http::date::civil_from_days(secs / 86_400);
            let rem = secs % 86_400;
            let text = format!(
                "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
                MONTHS[(month - 1) as usize],
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            );
            *cache = (secs, text.into_bytes());
        }
        out.extend_from_slice(&cache.1);
    });
}

/// `2026-11-30T06:40:00.123Z`: the seconds made once a second per
/// thread, the milliseconds per line.
fn iso_time(out: &mut Vec<u8>, since_epoch: Duration) {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let secs = since_epoch.as_secs();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let (year, month, day) = crate::http::date::civil_from_days(secs / 86_400);
            let rem = secs % 86_400;
            let text = format!(
                "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            );
            *cache = (secs, text.into_bytes());
        }
        out.extend_from_slice(&cache.1);
    });
    let millis = since_epoch.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::{parse_head, Limits};

    fn head(bytes: &[u8]) -> Head {
        parse_head(bytes, &Limits::default()).unwrap().unwrap().0
    }

    fn entry(head: Option<&Head>) -> Entry<'_> {
        Entry {
            peer: "10.0.0.7:5555".parse().unwrap(),
            head,
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(450),
            queue: Some(Duration::from_micros(20)),
        }
    }

    /// 2026-11-30 06:40:00.123 UTC
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_796_020_800_123)
    }

    #[test]
    fn common_is_apaches_line_with_the_duration() {
        let h = head(b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        let line = line(Format::Common, None, &entry(Some(&h)), now());
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "10.0.0.7 - - [30/Nov/2026:06:40:00 +0000] \"GET /a/b?x=1 HTTP/1.1\" 200 12 0.0004\n"
        );
    }

    #[test]
    fn json_is_one_object_a_line() {
        let h = head(b"POST /p?q=%22 HTTP/1.0\r\n\r\n");
        let line = line(Format::Json, Some(1), &entry(Some(&h)), now());
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"time\":\"2026-11-30T06:40:00.123Z\",\"remote\":\"10.0.0.7\",\"method\":\"POST\",\
             \"path\":\"/p\",\"query\":\"q=%22\",\"status\":200,\"bytes\":12,\"duration_ms\":0.450,\
             \"queue_ms\":0.020,\"worker\":1}\n"
        );
    }

    #[test]
    fn bytes_that_are_not_printable_ascii_are_escaped() {
        let h = head(b"GET /caf\xc3\xa9\"x HTTP/1.1\r\nHost: h\r\n\r\n");
        let common =
            String::from_utf8(line(Format::Common, None, &entry(Some(&h)), now())).unwrap();
        assert!(
            common.contains("\"GET /caf\\xC3\\xA9\\\"x HTTP/1.1\""),
            "{common}"
        );
        let json = String::from_utf8(line(Format::Json, None, &entry(Some(&h)), now())).unwrap();
        assert!(
            json.contains("\"path\":\"/caf\\\\xC3\\\\xA9\\\"x\""),
            "{json}"
        );
    }

    #[test]
    fn a_request_that_never_parsed_is_logged_with_dashes() {
        let mut e = entry(None);
        e.status = 400;
        e.bytes = 0;
        let common = String::from_utf8(line(Format::Common, None, &e, now())).unwrap();
        assert!(common.ends_with("\"- - -\" 400 - 0.0004\n"), "{common}");
    }
}
