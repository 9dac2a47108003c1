//! Response framing: status line, the app's header fields (checked so that a
//! value can never split the response), `Date`, and how the body is delimited.
//! The Ruby side feeds header fields in as it reads them from the app's hash.

use super::syntax::is_tchar;
use thiserror::Error;

use super::date;
use super::request::Version;

/// The app handed us a response that cannot be sent as is.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("status {0} is not a valid HTTP status")]
    Status(i64),
    #[error("invalid response header name {0:?}")]
    HeaderName(String),
    #[error("invalid value for response header {0:?}")]
    HeaderValue(String),
    #[error("more than one content-length")]
    RepeatedContentLength,
}

/// How the body follows the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`, then n bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, chunks framed by us.
    Chunked,
    /// The app chunked the body itself (its Transfer-Encoding ends in
    /// chunked): its framing is checked and passed on (HTTP/1.1).
    AppChunked,
    /// The app chunked the body itself, for an HTTP/1.0 client: decoded and
    /// sent close-delimited, without Transfer-Encoding.
    Dechunked,
    /// No length: the body ends when the connection closes (HTTP/1.0, or an
    /// app Transfer-Encoding that does not end in chunked).
    UntilClose,
    /// No body at all (1xx, 204, 304, HEAD of an unknown length).
    NoBody,
    /// A HEAD response: the Content-Length of the GET, no body.
    HeadLength(u64),
}

/// A response head being assembled from the app's status and headers.
#[derive(Debug)]
pub struct ResponseHead {
    status: u16,
    fields: Vec<u8>,
    /// A Content-Length the app set itself (sent only when it frames the
    /// body: never beside a Transfer-Encoding, RFC 9112 §6.2).
    pub content_length: Option<u64>,
    /// The app's own Transfer-Encoding value (e.g. Rack::Chunked's).
    app_coding: Option<Vec<u8>>,
    /// The app asked for the connection to be closed.
    pub connection_close: bool,
    /// The app's own Connection value (sent only with 101 and hijacks).
    connection: Option<Vec<u8>>,
}

impl ResponseHead {
    pub fn new(status: i64) -> Result<Self, ResponseError> {
        let status = u16::try_from(status)
            .ok()
            .filter(|s| (100..=999).contains(s))
            .ok_or(ResponseError::Status(status))?;
        Ok(ResponseHead {
            status,
            fields: Vec::with_capacity(256),
            content_length: None,
            app_coding: None,
            connection_close: false,
            connection: None,
        })
    }

    /// About how many bytes `write` produces, for sizing its buffer.
    pub fn len_hint(&self) -> usize {
        self.fields.len() + 128
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether this status forbids a body (RFC 9110 §6.4.1).
    pub fn bodyless_status(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }

    /// Adds one field line. Hop-by-hop fields that the server owns are taken
    /// as hints instead of being copied.
    pub fn field(&mut self, name: &[u8], value: &[u8]) -> Result<(), ResponseError> {
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ResponseError::HeaderName(lossy(name)));
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ResponseError::HeaderValue(lossy(name)));
        }
        if name.eq_ignore_ascii_case(b"connection") {
            self.connection_close |= value.eq_ignore_ascii_case(b"close");
            self.connection = Some(value.to_vec());
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"date") {
            return Ok(());
        }
        let framing_field = name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding");
        if framing_field && (self.status < 200 || self.status == 204) {
            // RFC 9110 §8.6, RFC 9112 §6.1: never on 1xx and 204.
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // 1*DIGIT (RFC 9110 §8.6), once: "+5" or two values could
            // frame the body differently from what a client reads.
            let digits = value.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(ResponseError::HeaderValue(lossy(name)));
            }
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ResponseError::HeaderValue(lossy(name)))?;
            if self.content_length.replace(n).is_some() {
                return Err(ResponseError::RepeatedContentLength);
            }
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let coding = self.app_coding.get_or_insert_with(Vec::new);
            if !coding.is_empty() {
                coding.extend_from_slice(b", ");
            }
            coding.extend_from_slice(value.trim_ascii());
            return Ok(());
        }
        self.fields.extend_from_slice(name);
        self.fields.extend_from_slice(b": ");
        self.fields.extend_from_slice(value);
        self.fields.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Chooses the body framing. `body_len` is known when the whole body is
    /// already in hand (an Array body). A HEAD response keeps the
    /// Content-Length a GET would have had, and carries no body.
    pub fn framing(&self, version: Version, head_request: bool, body_len: Option<u64>) -> Framing {
        if self.bodyless_status() {
            return Framing::NoBody;
        }
        if let Some(coding) = &self.app_coding {
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
            let chunked = coding
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return match (head_request, chunked, version) {
                (true, _, _) => Framing::NoBody,
                (false, true, Version::Http11) => Framing::AppChunked,
                (false, true, Version::Http10) => Framing::Dechunked,
                (false, false, _) => Framing::UntilClose,
            };
        }
        // A HEAD response's empty body says nothing of the GET's length
        // (Rack 3's Lint wants it empty): no Content-Length then, not 0.
        let body_len = body_len.filter(|&n| n > 0 || !head_request);
        match (self.content_length.or(body_len), head_request) {
            (Some(n), true) => Framing::HeadLength(n),
            (None, true) => Framing::NoBody,
            (Some(n), false) => Framing::Length(n),
            (None, false) if version == Version::Http11 => Framing::Chunked,
            (None, false) => Framing::UntilClose,
        }
    }

    /// The app set its own Transfer-Encoding.
    pub fn app_transfer_encoding(&self) -> bool {
        self.app_coding.is_some()
    }

    /// Whether bytes of the body follow the head.
    pub fn sends_body(framing: Framing) -> bool {
        !matches!(framing, Framing::NoBody | Framing::HeadLength(_))
    }

    /// Writes the head exactly as the app gave it, with `Date` and the app's
    /// own `Connection` value: for `101 Switching Protocols` and hijacks,
    /// where the server adds no framing.
    pub fn write_raw(&self, out: &mut Vec<u8>, version: Version) {
        self.write_start(out, version);
        if let Some(connection) = &self.connection {
            out.extend_from_slice(b"Connection: ");
            out.extend_from_slice(connection);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Status line, `Date`, and the app's fields.
    fn write_start(&self, out: &mut Vec<u8>, version: Version) {
        out.extend_from_slice(version.as_str().as_bytes());
        out.push(b' ');
        push_status(out, self.status);
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(&date::now());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.fields);
    }

    /// Writes `101 Switching Protocols` to `protocol`, with the app's
    /// fields (Rack 3.1's `rack.protocol`): what follows is the new
    /// protocol's, in both directions.
    pub fn write_upgrade(&self, out: &mut Vec<u8>, protocol: &[u8]) {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_status(out, 101);
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(&date::now());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.fields);
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: ");
        out.extend_from_slice(protocol);
        out.extend_from_slice(b"\r\n\r\n");
    }

    /// Writes an informational (1xx) head: status line and fields only.
    pub fn write_informational(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_status(out, self.status);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.fields);
        out.extend_from_slice(b"\r\n");
    }

    /// Writes the head. `keep_alive` is the request's wish; the result says
    /// whether the connection really stays open after this response.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        version: Version,
        framing: Framing,
        keep_alive: bool,
    ) -> bool {
        let close_delimited = matches!(framing, Framing::UntilClose | Framing::Dechunked);
        let keep_alive = keep_alive && !self.connection_close && !close_delimited;
        self.write_start(out, version);
        let length = match framing {
            Framing::Length(n) | Framing::HeadLength(n) => Some(n),
            // A 304 may say the length of what a 200 would have sent.
            Framing::NoBody if self.status == 304 && self.app_coding.is_none() => {
                self.content_length
            }
            _ => None,
        };
        if let Some(n) = length {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        match (framing, &self.app_coding) {
            (Framing::Chunked, _) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            // Never a Transfer-Encoding to an HTTP/1.0 client.
            (Framing::AppChunked | Framing::UntilClose, Some(coding))
                if version == Version::Http11 =>
            {
                out.extend_from_slice(b"Transfer-Encoding: ");
                out.extend_from_slice(coding);
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        match (keep_alive, version) {
            (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
            (true, Version::Http10) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            (true, Version::Http11) => {}
        }
        out.extend_from_slice(b"\r\n");
        keep_alive
    }
}

/// Appends one chunk of a chunked body (nothing for an empty chunk, which
/// would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A complete response the server sends on its own (errors, 100-continue).
pub fn simple(status: u16, body: &str, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(&mut out, status);
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(&date::now());
    out.extend_from_slice(b"\r\nContent-Type: text/plain\r\nContent-Length: ");
    push_decimal(&mut out, body.len() as u64);
    if !keep_alive {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// `503 Service Unavailable` with `Retry-After: 1`, closing the connection:
/// the server's own answer when it cannot serve a request (queue full,
/// request timeout).
pub fn service_unavailable(message: &str) -> Vec<u8> {
    let mut out = simple(503, message, false);
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    out.splice(at..at, b"\r\nRetry-After: 1".iter().copied());
    out
}

/// Appends `n` in decimal, without allocating.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `n` in lowercase hexadecimal (a chunk size), without allocating.
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(super::ascii::hex(n, &mut [0; 16]));
}

fn push_status(out: &mut Vec<u8>, status: u16) {
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
}

/// The reason phrase for a status code: the IANA HTTP Status Code
/// Registry, with RFC 9110's names (413 "Content Too Large", 416 "Range Not
/// Satisfiable", 422 "Unprocessable Content"). An unregistered code gets an
/// empty phrase, which RFC 9112 §4 allows.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        104 => "Upload Resumption Supported",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended (OBSOLETED)",
        511 => "Network Authentication Required",
        _ => "",
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &[u8]) -> String {
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn numbers_are_written_like_format_would() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 65_535, 1 << 20, u64::MAX] {
            let (mut dec, mut hex) = (Vec::new(), Vec::new());
            push_decimal(&mut dec, n);
            push_hex(&mut hex, n);
            assert_eq!(text(&dec), n.to_string());
            assert_eq!(text(&hex), format!("{n:x}"));
        }
    }

    #[test]
    fn array_body_gets_content_length() {
        let mut head = ResponseHead::new(200).unwrap();
        head.field(b"Content-Type", b"text/plain").unwrap();
        let framing = head.framing(Version::Http11, false, Some(12));
        assert_eq!(framing, Framing::Length(12));
        let mut out = Vec::new();
        assert!(head.write(&mut out, Version::Http11, framing, true));
        let s = text(&out);
        assert!(s.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{s}");
        assert!(
            s.contains("\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n"),
            "{s}"
        );
    }

    #[test]
    fn streamed_body_is_chunked_on_1_1_and_close_delimited_on_1_0() {
        let head = ResponseHead::new(200).unwrap();
        assert_eq!(head.framing(Version::Http11, false, None), Framing::Chunked);
        assert_eq!(
            head.framing(Version::Http10, false, None),
            Framing::UntilClose
        );
        let mut out = Vec::new();
        assert!(!head.write(&mut out, Version::Http10, Framing::UntilClose, true));
        assert!(text(&out).contains("Connection: close\r\n"));
    }

    #[test]
    fn app_framing_is_respected() {
        let mut head = ResponseHead::new(200).unwrap();
        head.field(b"Content-Length", b"5").unwrap();
        assert_eq!(
            head.framing(Version::Http11, false, None),
            Framing::Length(5)
        );
        let mut out = Vec::new();
        head.write(&mut out, Version::Http11, Framing::Length(5), true);
        assert_eq!(text(&out).matches("Content-Length").count(), 1);
        let mut te = ResponseHead::new(200).unwrap();
        te.field(b"Transfer-Encoding", b"chunked").unwrap();
        assert_eq!(
            te.framing(Version::Http11, false, Some(9)),
            Framing::AppChunked
        );
    }

    #[test]
    fn a_transfer_encoding_drops_the_length_and_never_reaches_http_1_0() {
        let mut head = ResponseHead::new(200).unwrap();
        head.field(b"Content-Length", b"5").unwrap();
        head.field(b"Transfer-Encoding", b"gzip, chunked").unwrap();
        let framing = head.framing(Version::Http11, false, Some(5));
        assert_eq!(framing, Framing::AppChunked);
        let mut out = Vec::new();
        assert!(head.write(&mut out, Version::Http11, framing, true));
        let s = text(&out);
        assert!(!s.contains("Content-Length"), "{s}");
        assert!(s.contains("Transfer-Encoding: gzip, chunked\r\n"), "{s}");
        let framing = head.framing(Version::Http10, false, Some(5));
        assert_eq!(framing, Framing::Dechunked);
        let mut out = Vec::new();
        assert!(!head.write(&mut out, Version::Http10, framing, true));
        let s = text(&out);
        assert!(
            !s.contains("Transfer-Encoding") && !s.contains("Content-Length"),
            "{s}"
        );
        let mut gzip = ResponseHead::new(200).unwrap();
        gzip.field(b"Transfer-Encoding", b"gzip").unwrap();
        assert_eq!(
            gzip.framing(Version::Http11, false, None),
            Framing::UntilClose
        );
    }

    #[test]
    fn content_length_is_digits_and_once() {
        for bad in [&b"+5"[..], b"-1", b"5 6", b"0x5", b""] {
            let mut head = ResponseHead::new(200).unwrap();
            assert!(head.field(b"Content-Length", bad).is_err(), "{bad:?}");
        }
        let mut head = ResponseHead::new(200).unwrap();
        head.field(b"content-length", b" 5 ").unwrap();
        assert_eq!(
            head.field(b"Content-Length", b"6"),
            Err(ResponseError::RepeatedContentLength)
        );
    }

    #[test]
    fn bodyless_statuses_and_head() {
        for s in [204, 304, 101] {
            let head = ResponseHead::new(s).unwrap();
            assert_eq!(
                head.framing(Version::Http11, false, Some(3)),
                Framing::NoBody
            );
        }
        let head = ResponseHead::new(200).unwrap();
        assert_eq!(
            head.framing(Version::Http11, true, Some(3)),
            Framing::HeadLength(3)
        );
        assert_eq!(head.framing(Version::Http11, true, None), Framing::NoBody);
        assert_eq!(
            head.framing(Version::Http11, true, Some(0)),
            Framing::NoBody
        );
        assert_eq!(
            head.framing(Version::Http11, false, Some(0)),
            Framing::Length(0)
        );
        let mut out = Vec::new();
        head.write(&mut out, Version::Http11, Framing::HeadLength(3), true);
        assert!(text(&out).ends_with("Content-Length: 3\r\n\r\n"));
        let mut no_content = ResponseHead::new(204).unwrap();
        no_content.field(b"Content-Length", b"0").unwrap();
        assert_eq!(
            no_content.framing(Version::Http11, false, Some(5)),
            Framing::NoBody
        );
        let mut out = Vec::new();
        no_content.write(&mut out, Version::Http11, Framing::NoBody, true);
        assert!(!text(&out).contains("Content-Length"));
    }

    #[test]
    fn rejects_response_splitting() {
        let mut head = ResponseHead::new(200).unwrap();
        assert!(head.field(b"X", b"a\r\nSet-Cookie: evil").is_err());
        assert!(head.field(b"Bad Name", b"v").is_err());
        assert!(ResponseHead::new(99).is_err());
        assert!(ResponseHead::new(1000).is_err());
    }

    #[test]
    fn reason_phrases_are_the_registrys() {
        for (status, phrase) in [
            (413, "Content Too Large"),
            (416, "Range Not Satisfiable"),
            (422, "Unprocessable Content"),
            (421, "Misdirected Request"),
            (425, "Too Early"),
            (451, "Unavailable For Legal Reasons"),
            (599, ""),
        ] {
            assert_eq!(reason(status), phrase, "{status}");
        }
        let mut out = Vec::new();
        push_status(&mut out, 599);
        assert_eq!(out, b"599 ");
    }

    #[test]
    fn chunks() {
        let mut out = Vec::new();
        push_chunk(&mut out, b"hello world, it is me");
        push_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(text(&out), "15\r\nhello world, it is me\r\n0\r\n\r\n");
    }

    #[test]
    fn service_unavailable_says_when_to_retry() {
        let s = text(&service_unavailable("busy\n"));
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{s}");
        assert!(
            s.ends_with("Connection: close\r\nRetry-After: 1\r\n\r\nbusy\n"),
            "{s}"
        );
    }

    #[test]
    fn simple_error_response() {
        let s = text(&simple(400, "Bad Request\n", false));
        assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(s.ends_with("Content-Length: 12\r\nConnection: close\r\n\r\nBad Request\n"));
    }
}
