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

/// Logs `entry`, if the access log is on.
pub fn record(entry: &Entry<'_>) {
    if let Some(log) = ACCESS.get() {
        sink::write(
            Stream::Stdout,
            line(log.format, log.worker, entry, SystemTime::now()),
        );
    }
}

/// Logs a request answered by the server itself before the app saw it.
pub fn rejected(
    peer: SocketAddr,
    head: Option<&Head>,
    status: u16,
    since: Option<std::time::Instant>,
) {
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
    let mut out = Vec::with_capacity(160);
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let remote = entry.peer.ip().to_string();
    let (method, path, query, version) = match entry.head {
        Some(h) => (h.method(), h.path(), h.query(), h.version.as_str()),
        None => (&b"-"[..], &b"-"[..], &b""[..], "-"),
    };
    match format {
        Format::Common => {
            out.extend_from_slice(remote.as_bytes());
            out.extend_from_slice(b" - - [");
            clf_time(&mut out, since_epoch.as_secs());
            out.extend_from_slice(b"] \"");
            escaped(&mut out, method, false);
            out.push(b' ');
            escaped(&mut out, path, false);
            if !query.is_empty() {
                out.push(b'?');
                escaped(&mut out, query, false);
            }
            out.push(b' ');
            out.extend_from_slice(version.as_bytes());
            let bytes = if entry.bytes == 0 {
                "-".to_string()
            } else {
                entry.bytes.to_string()
            };
            out.extend_from_slice(
                format!(
                    "\" {} {} {:.4}\n",
                    entry.status,
                    bytes,
                    entry.duration.as_secs_f64()
                )
                .as_bytes(),
            );
        }
        Format::Json => {
            out.extend_from_slice(b"{\"time\":\"");
            iso_time(&mut out, since_epoch);
            out.extend_from_slice(b"\",\"remote\":\"");
            out.extend_from_slice(remote.as_bytes());
            out.extend_from_slice(b"\",\"method\":\"");
            escaped(&mut out, method, true);
            out.extend_from_slice(b"\",\"path\":\"");
            escaped(&mut out, path, true);
            out.extend_from_slice(b"\",\"query\":\"");
            escaped(&mut out, query, true);
            let worker = worker.map_or("null".to_string(), |w| w.to_string());
            let queue = entry.queue.map_or("null".to_string(), |q| {
                format!("{:.3}", q.as_secs_f64() * 1e3)
            });
            out.extend_from_slice(
                format!(
                    "\",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"queue_ms\":{},\"worker\":{}}}\n",
                    entry.status,
                    entry.bytes,
                    entry.duration.as_secs_f64() * 1e3,
                    queue,
                    worker
                )
                .as_bytes(),
            );
        }
    }
    out
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

/// `30/Nov/2026:06:40:00 +0000`
fn clf_time(out: &mut Vec<u8>, secs: u64) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = crate::http::date::civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    out.extend_from_slice(
        format!(
            "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
            MONTHS[(month - 1) as usize],
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
        .as_bytes(),
    );
}

/// `2026-11-30T06:40:00.123Z`
fn iso_time(out: &mut Vec<u8>, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    let (year, month, day) = crate::http::date::civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    out.extend_from_slice(
        format!(
            "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since_epoch.subsec_millis()
        )
        .as_bytes(),
    );
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
