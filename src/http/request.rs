//! The request head: request-line and header fields, parsed by `httparse`,
//! then checked for the framing rules that keep requests from being smuggled
//! (RFC 9112 §6). The parsed head owns a copy of its bytes and refers to its
//! parts by range, so it is one allocation and can cross threads freely.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::error::ParseError;

/// Default limits. An 8 KiB Cookie plus the usual browser headers fits.
pub const MAX_HEAD_BYTES: usize = 80 * 1024;
pub const MAX_TARGET_BYTES: usize = 16 * 1024;
pub const MAX_HEADER_FIELDS: usize = 100;
pub const MAX_FIELD_BYTES: usize = 16 * 1024;
pub const MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// Header-field slots kept on the stack while parsing.
const STACK_FIELDS: usize = 128;
/// Bodies larger than this are spooled to a temporary file.
pub const BODY_IN_MEMORY_BYTES: usize = 1024 * 1024;

/// Configurable limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_target_bytes: usize,
    pub max_header_fields: usize,
    /// One field line (name and value).
    pub max_field_bytes: usize,
    pub max_body_bytes: u64,
    /// Not a limit: past this a body is kept in a temp file, not RAM.
    pub body_in_memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_target_bytes: MAX_TARGET_BYTES,
            max_header_fields: MAX_HEADER_FIELDS,
            max_field_bytes: MAX_FIELD_BYTES,
            max_body_bytes: MAX_BODY_BYTES,
            body_in_memory_bytes: BODY_IN_MEMORY_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Exactly this many bytes follow the head (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head. Ranges index into `bytes`.
#[derive(Debug, Clone)]
pub struct Head {
    bytes: Vec<u8>,
    method: Range<usize>,
    target: Range<usize>,
    /// The authority of an absolute-form target (`GET http://host/p`).
    authority: Option<Range<usize>>,
    path: Range<usize>,
    query: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    pub version: Version,
    pub body: BodyFraming,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl Head {
    pub fn method(&self) -> &[u8] {
        &self.bytes[self.method.clone()]
    }
    /// The request-target as sent (path and query).
    pub fn target(&self) -> &[u8] {
        &self.bytes[self.target.clone()]
    }
    /// The authority of an absolute-form request-target, which wins over
    /// the Host field (RFC 9112 §3.2.2).
    pub fn authority(&self) -> Option<&[u8]> {
        self.authority.clone().map(|r| &self.bytes[r])
    }
    /// The path: the target without scheme, authority and query.
    pub fn path(&self) -> &[u8] {
        &self.bytes[self.path.clone()]
    }
    pub fn query(&self) -> &[u8] {
        &self.bytes[self.query.clone()]
    }
    /// Header fields in the order received: (name as sent, value trimmed).
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.bytes[n.clone()], &self.bytes[v.clone()]))
    }
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
    pub fn is_head_method(&self) -> bool {
        self.method() == b"HEAD"
    }
    /// The client asks to switch protocols (an `Upgrade` field, e.g. a
    /// WebSocket handshake): what follows the request is not HTTP.
    pub fn asks_upgrade(&self) -> bool {
        self.header("upgrade").is_some()
    }
}

/// Parses a request head at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the head and the number
/// of bytes it took (any body and pipelined requests follow).
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(Head, usize)>, ParseError> {
    // Field slots are left uninitialised (httparse writes before it
    // reads), and for the usual limits they live on the stack: parsing a
    // head allocates nothing but the head itself.
    let mut on_stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut on_heap = Vec::new();
    let fields = if limits.max_header_fields <= STACK_FIELDS {
        &mut on_stack[..limits.max_header_fields]
    } else {
        on_heap.resize_with(limits.max_header_fields, MaybeUninit::uninit);
        &mut on_heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return check_partial(buf, limits).map(|()| None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ParseError::TooManyHeaders(limits.max_header_fields))
        }
        Err(_) => {
            return Err(ParseError::Malformed(
                "invalid request line or header field",
            ))
        }
    };
    if len > limits.max_head_bytes {
        return Err(ParseError::HeadTooLarge(limits.max_head_bytes));
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ParseError::Malformed("incomplete request line"));
    };
    if target.len() > limits.max_target_bytes {
        return Err(ParseError::UriTooLong(limits.max_target_bytes));
    }
    let version = match minor {
        0 => Version::Http10,
        _ => Version::Http11,
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| -> Range<usize> {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let target = at(target.as_bytes());
    let method_range = at(method.as_bytes());
    let (authority, path, query) = split_target(buf, target.clone(), &buf[method_range.clone()])?;
    let headers: Vec<_> = req
        .headers
        .iter()
        .map(|h| (at(h.name.as_bytes()), at(h.value)))
        .collect();
    if req
        .headers
        .iter()
        .any(|h| h.name.len() + h.value.len() + 2 > limits.max_field_bytes)
    {
        return Err(ParseError::HeadTooLarge(limits.max_field_bytes));
    }
    let mut head = Head {
        bytes: buf[..len].to_vec(),
        method: method_range,
        target,
        authority,
        path,
        query,
        headers,
        version,
        body: BodyFraming::Length(0),
        keep_alive: version == Version::Http11,
        expect_continue: false,
    };
    check_fields(&mut head, limits)?;
    Ok(Some((head, len)))
}

/// An incomplete head may already be too big to ever be accepted.
fn check_partial(buf: &[u8], limits: &Limits) -> Result<(), ParseError> {
    let first_line_done = buf
        .iter()
        .skip_while(|&&b| b == b'\r' || b == b'\n')
        .any(|&b| b == b'\n');
    if !first_line_done && buf.len() > limits.max_target_bytes + 64 {
        return Err(ParseError::UriTooLong(limits.max_target_bytes));
    }
    if buf.len() > limits.max_head_bytes {
        return Err(ParseError::HeadTooLarge(limits.max_head_bytes));
    }
    Ok(())
}

/// A request-target's parts, as ranges of the head's buffer: the
/// authority of an absolute-form target, the path, the query.
type TargetParts = (Option<Range<usize>>, Range<usize>, Range<usize>);

/// Splits the request-target (RFC 9112 §3.2) into the authority of an
/// absolute-form target, the path, and the query (after the first `?`).
/// origin-form (`/p?q`), absolute-form (`http://h/p`) and asterisk-form
/// (`OPTIONS *`) are accepted; anything else is malformed.
fn split_target(
    buf: &[u8],
    target: Range<usize>,
    method: &[u8],
) -> Result<TargetParts, ParseError> {
    let bytes = &buf[target.clone()];
    if bytes.contains(&b'#') {
        // A fragment is never sent (RFC 9110 §7.1); a proxy or a cache
        // could read the target differently from us.
        return Err(ParseError::Malformed("fragment in request-target"));
    }
    let origin_or_asterisk = bytes.starts_with(b"/") || (bytes == b"*" && method == b"OPTIONS");
    let (authority, path_start) = if origin_or_asterisk {
        (None, target.start)
    } else if let Some(rest) = strip_scheme(bytes) {
        let scheme_len = bytes.len() - rest.len();
        let auth_len = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let start = target.start + scheme_len;
        if auth_len == 0 || !valid_host(&rest[..auth_len]) {
            return Err(ParseError::Malformed("invalid authority in request-target"));
        }
        (Some(start..start + auth_len), start + auth_len)
    } else {
        return Err(ParseError::Malformed("unsupported request-target form"));
    };
    let rest = &buf[path_start..target.end];
    Ok(match rest.iter().position(|&b| b == b'?') {
        Some(q) => (
            authority,
            path_start..path_start + q,
            path_start + q + 1..target.end,
        ),
        None => (authority, path_start..target.end, target.end..target.end),
    })
}

/// `http://` or `https://`, any case; returns what follows.
fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let n = scheme.len();
        (target.len() >= n && target[..n].eq_ignore_ascii_case(scheme.as_bytes()))
            .then(|| &target[n..])
    })
}

/// uri-host [ ":" port ] (RFC 9110 §7.2): reg-name or IP-literal characters,
/// and digits after the port colon. Empty is allowed (RFC 9112 §3.2).
pub fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|&b| b == b':') {
        Some(colon) if !host[colon..].contains(&b']') => (&host[..colon], Some(&host[colon + 1..])),
        _ => (host, None),
    };
    let name_ok = if let Some(inner) = name.strip_prefix(b"[") {
        inner.strip_suffix(b"]").is_some_and(|ip| {
            !ip.is_empty()
                && ip
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b":.vV".contains(&b))
        })
    } else {
        name.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
    };
    name_ok && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// Applies the header fields that decide framing and connection reuse.
fn check_fields(head: &mut Head, limits: &Limits) -> Result<(), ParseError> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_count = 0;
    let mut hosts = 0;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;
    for (name, value) in head.headers() {
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|seen| seen != n) {
                return Err(ParseError::Malformed("differing Content-Length values"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            chunked_count += check_transfer_encoding(value)?;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if !valid_host(value) {
                return Err(ParseError::Malformed("invalid Host"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if hosts > 1 {
        return Err(ParseError::Malformed("more than one Host field"));
    }
    if head.version == Version::Http11 && hosts != 1 {
        return Err(ParseError::Malformed(
            "HTTP/1.1 needs exactly one Host field",
        ));
    }
    if chunked_count > 1 {
        // RFC 9112 §6.1: a sender must not apply chunked more than once.
        return Err(ParseError::Malformed("chunked applied more than once"));
    }
    if transfer_encoding {
        if content_length.is_some() {
            return Err(ParseError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if head.version == Version::Http10 {
            return Err(ParseError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        head.body = BodyFraming::Chunked;
    } else if let Some(n) = content_length {
        if n > limits.max_body_bytes {
            return Err(ParseError::BodyTooLarge(limits.max_body_bytes));
        }
        head.body = BodyFraming::Length(n);
    }
    head.keep_alive = match head.version {
        Version::Http11 => !connection_close,
        Version::Http10 => connection_keep_alive && !connection_close,
    };
    head.expect_continue = expect_continue && head.version == Version::Http11;
    Ok(())
}

/// Content-Length is 1*DIGIT, and fits in 64 bits.
fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Malformed("invalid Content-Length"));
    }
    value.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(ParseError::Malformed("Content-Length out of range"))
    })
}

/// Only `chunked` is implemented, and it must be the final (here: only)
/// coding. Returns how many times this field line applies `chunked`, so
/// that `chunked` twice (on one line or over several) is refused.
fn check_transfer_encoding(value: &[u8]) -> Result<usize, ParseError> {
    let codings: Vec<&[u8]> = value
        .split(|&b| b == b',')
        .map(|c| c.trim_ascii())
        .collect();
    let chunked = codings
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
        .count();
    match codings.as_slice() {
        [.., last] if !last.eq_ignore_ascii_case(b"chunked") => Err(ParseError::Malformed(
            "chunked is not the final transfer coding",
        )),
        _ if chunked > 1 => Err(ParseError::Malformed("chunked applied more than once")),
        [_] => Ok(chunked),
        _ => Err(ParseError::UnsupportedTransferCoding(
            String::from_utf8_lossy(value).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(Head, usize)>, ParseError> {
        parse_head(s.as_bytes(), &Limits::default())
    }

    fn head(s: &str) -> Head {
        match parse(s) {
            Ok(Some((h, _))) => h,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_get() {
        let (h, len) = parse("GET /a/b?x=1&y HTTP/1.1\r\nHost: h\r\nX-A:  v  \r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(len, 47);
        assert_eq!(h.method(), b"GET");
        assert_eq!(h.path(), b"/a/b");
        assert_eq!(h.query(), b"x=1&y");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.header("x-a"), Some(&b"v"[..]));
        assert!(h.keep_alive);
        assert_eq!(h.body, BodyFraming::Length(0));
    }

    #[test]
    fn partial_needs_more() {
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: h\r\n").unwrap().map(|_| ()),
            None
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn content_length() {
        let h = head("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 010\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Length(10));
        for bad in ["+5", "0x5", "5 5", "1.0", "", "99999999999999999999999"] {
            let req = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(parse(&req).unwrap_err().status(), 400, "{bad:?}");
        }
        let two = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(parse(two).unwrap_err().status(), 400);
    }

    #[test]
    fn transfer_encoding() {
        let h = head("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
        let both =
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(parse(both).unwrap_err().status(), 400);
        let gzip = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(parse(gzip).unwrap_err().status(), 400);
        let unknown = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(parse(unknown).unwrap_err().status(), 501);
    }

    #[test]
    fn expect_continue_only_on_http_1_1() {
        let h =
            head("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(h.expect_continue);
        let old = head("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!old.expect_continue);
        let te10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(te10).unwrap_err().status(), 400);
    }

    #[test]
    fn connection_is_a_case_insensitive_token_list() {
        assert!(!head("GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Foo, CLOSE\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: te, KEEP-ALIVE\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn host_rules() {
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
        // Two Host lines are refused in any request (RFC 9112 §3.2).
        assert_eq!(
            parse("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn chunked_applied_twice_is_refused() {
        for te in [
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: CHUNKED\r\ntransfer-encoding: chunked\r\n",
        ] {
            let req = format!("POST / HTTP/1.1\r\nHost: h\r\n{te}\r\n");
            let err = parse(&req).unwrap_err();
            assert_eq!(err.status(), 400, "{te:?}");
            assert!(err.to_string().contains("more than once"), "{err}");
        }
        let gzip = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(parse(gzip).unwrap_err().status(), 501);
        let last = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(parse(last).unwrap_err().status(), 400);
    }

    #[test]
    fn limits_give_their_codes() {
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES)
        );
        assert_eq!(parse(&long).unwrap_err().status(), 414);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(parse(&big).unwrap_err().status(), 431);
        let many: String = (0..=MAX_HEADER_FIELDS)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
        assert_eq!(parse(&req).unwrap_err().status(), 431);
        let huge = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1099511627776\r\n\r\n";
        assert_eq!(parse(huge).unwrap_err().status(), 413);
    }

    #[test]
    fn request_target_forms() {
        let abs = head("GET http://Example.com:8080/p/q?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(abs.authority(), Some(&b"Example.com:8080"[..]));
        assert_eq!(abs.path(), b"/p/q");
        assert_eq!(abs.query(), b"x=1");
        let bare = head("GET HTTPS://h HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((bare.authority(), bare.path()), (Some(&b"h"[..]), &b""[..]));
        let star = head("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(star.path(), b"*");
        let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(8000));
        assert_eq!(head(&long).path().len(), 8001);
        assert!(head("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n").path() == b"/");
        for bad in [
            "GET * HTTP/1.1",
            "GET a/b HTTP/1.1",
            "GET http:///p HTTP/1.1",
            "GET ftp://h/ HTTP/1.1",
            "GET /a#frag HTTP/1.1",
            "GET /a?q=1#f HTTP/1.1",
            "GET http://h/#x HTTP/1.1",
        ] {
            let req = format!("{bad}\r\nHost: h\r\n\r\n");
            assert_eq!(parse(&req).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn host_values() {
        for ok in [
            "example.com",
            "example.com:80",
            "[::1]:8080",
            "[::1]",
            "10.0.0.1",
            "a-b.c_d~e",
            "",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a b", "a/b", "user@h", "h:8x", "h?", "[::1", "[zz]", "h\\x", "h#",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
            let req = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(parse(&req).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn header_field_rules() {
        for bad in [
            "Host : h",                    // whitespace before the colon
            "Host: h\r\nnocolon",          // no colon
            "Host: h\r\n: v",              // empty name
            "Host: h\r\nX: a\r\n  folded", // obs-fold
            " Host: h",                    // whitespace-led first field line
            "Host: h\r\nX: a\x00b",        // NUL
            "Host: h\r\nX: a\rb",          // bare CR
            "Host: h\r\nX(y): v",          // not a token
        ] {
            let req = format!("GET / HTTP/1.1\r\n{bad}\r\n\r\n");
            assert_eq!(parse(&req).unwrap_err().status(), 400, "{bad:?}");
        }
        let h = head("GET / HTTP/1.1\r\nHost: h\r\nX:  a \t b  \r\nY: caf\u{e9}\r\nZ:\r\n\r\n");
        assert_eq!(h.header("x"), Some(&b"a \t b"[..]));
        assert_eq!(h.header("y"), Some("caf\u{e9}".as_bytes()));
        assert_eq!(h.header("z"), Some(&b""[..]));
    }

    #[test]
    fn an_8k_cookie_passes_and_a_huge_field_is_431() {
        let cookie = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nCookie: {}\r\n\r\n",
            "c".repeat(8192)
        );
        assert!(parse(&cookie).unwrap().is_some());
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "c".repeat(MAX_FIELD_BYTES)
        );
        assert_eq!(parse(&huge).unwrap_err().status(), 431);
    }

    #[test]
    fn malformed_is_400() {
        for bad in [
            "GET / HTTP/1\r\n\r\n",
            "GET / http/1.1\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00\r\n\r\n",
        ] {
            assert_eq!(parse(bad).unwrap_err().status(), 400, "{bad:?}");
        }
    }
}
