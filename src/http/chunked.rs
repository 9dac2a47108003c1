//! Incremental decoder for `Transfer-Encoding: chunked` request bodies
//! (RFC 9112 §7.1). Fed whatever bytes have arrived; it consumes what it can,
//! appends decoded data, and says when the last chunk and trailers are done.
//! Lines must end in CRLF: a bare LF or CR is an error, never a line end.

use super::error::ParseError;
use super::request::Limits;
use super::syntax::{is_forbidden_ctl, is_tchar};

/// Longest chunk-size line (size plus extensions) or trailer line accepted.
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Chunk-extension bytes accepted per body, over all its chunks (hyper and
/// Node.js use the same order): `max_body_bytes` counts only decoded data,
/// so without it a client could send gigabytes of extensions around a
/// few bytes of data.
pub const MAX_CHUNK_EXT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Decoder state; one per request body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    decoded: u64,
    /// Chunk-extension bytes so far.
    ext_bytes: usize,
    /// Trailer section bytes and fields so far: the trailer section has
    /// the budget of a request head.
    trailer_bytes: usize,
    trailer_fields: usize,
    limits: Limits,
}

impl ChunkedDecoder {
    pub fn new(limits: &Limits) -> Self {
        ChunkedDecoder {
            state: State::Size,
            decoded: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
            trailer_fields: 0,
            limits: *limits,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input` into `out`. Returns how many input bytes were
    /// consumed; bytes after the body are never consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ParseError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let used = match self.state {
                State::Done => return Ok(pos),
                State::Size => self.size_line(rest)?,
                State::Data(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..n]);
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    n
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        self.state = State::Size;
                        2
                    }
                    [] | [b'\r'] => 0,
                    _ => return Err(ParseError::Malformed("chunk data longer than its size")),
                },
                State::Trailer => self.trailer_line(rest)?,
            };
            if used == 0 && !matches!(self.state, State::Done) {
                return Ok(pos);
            }
            pos += used;
        }
    }

    fn size_line(&mut self, rest: &[u8]) -> Result<usize, ParseError> {
        let Some(line) = crlf_line(rest)? else {
            return Ok(0);
        };
        // chunk-size [ BWS ";" ext ... ]: whitespace after the size only
        // before an extension (RFC 9112 §7.1.1, RFC 9110 §5.6.3).
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let (size, rest) = line.split_at(digits);
        let ws = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        match &rest[ws..] {
            _ if size.is_empty() => return Err(ParseError::Malformed("invalid chunk size")),
            [] if ws > 0 => return Err(ParseError::Malformed("whitespace after a chunk size")),
            [] => {}
            [b';', ext @ ..] => {
                if ext.iter().any(|&b| is_forbidden_ctl(b)) {
                    return Err(ParseError::Malformed(
                        "control character in a chunk extension",
                    ));
                }
                self.ext_bytes += rest.len();
                if self.ext_bytes > MAX_CHUNK_EXT_BYTES {
                    return Err(ParseError::Malformed("chunk extensions too large"));
                }
            }
            _ => return Err(ParseError::Malformed("invalid chunk size")),
        }
        let size = size.iter().try_fold(0u64, |acc, &d| {
            let digit = u64::from((d as char).to_digit(16).unwrap_or(0));
            acc.checked_mul(16).and_then(|v| v.checked_add(digit))
        });
        let size = size.ok_or(ParseError::Malformed("chunk size out of range"))?;
        self.decoded = self.decoded.saturating_add(size);
        if self.decoded > self.limits.max_body_bytes {
            return Err(ParseError::BodyTooLarge(self.limits.max_body_bytes));
        }
        self.state = if size == 0 {
            State::Trailer
        } else {
            State::Data(size)
        };
        Ok(line.len() + 2)
    }

    fn trailer_line(&mut self, rest: &[u8]) -> Result<usize, ParseError> {
        let Some(line) = crlf_line(rest)? else {
            return Ok(0);
        };
        self.trailer_bytes += line.len() + 2;
        if self.trailer_bytes > self.limits.max_head_bytes {
            return Err(ParseError::HeadTooLarge(self.limits.max_head_bytes));
        }
        if line.is_empty() {
            self.state = State::Done;
            return Ok(2);
        }
        self.trailer_fields += 1;
        if self.trailer_fields > self.limits.max_header_fields {
            return Err(ParseError::TooManyHeaders(self.limits.max_header_fields));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ParseError::Malformed("invalid trailer field"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ParseError::Malformed("invalid trailer field name"));
        }
        if value.iter().any(|&b| is_forbidden_ctl(b)) {
            return Err(ParseError::Malformed(
                "control character in a trailer field",
            ));
        }
        Ok(line.len() + 2)
    }
}

/// The line at the start of `rest` without its CRLF, or None if incomplete.
fn crlf_line(rest: &[u8]) -> Result<Option<&[u8]>, ParseError> {
    match rest.iter().position(|&b| b == b'\n') {
        Some(0) => Err(ParseError::Malformed("bare LF in chunked framing")),
        Some(lf) if rest[lf - 1] != b'\r' => {
            Err(ParseError::Malformed("bare LF in chunked framing"))
        }
        Some(lf) => {
            let line = &rest[..lf - 1];
            if line.contains(&b'\r') || line.contains(&0) {
                return Err(ParseError::Malformed("bare CR in chunked framing"));
            }
            Ok(Some(line))
        }
        None if rest.len() > MAX_CHUNK_LINE_BYTES => {
            Err(ParseError::Malformed("chunk line too long"))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_body_bytes: u64) -> Limits {
        Limits {
            max_body_bytes,
            ..Limits::default()
        }
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ParseError> {
        let mut d = ChunkedDecoder::new(&limits(1 << 20));
        let mut out = Vec::new();
        let used = d.decode(input, &mut out)?;
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn decodes_with_extensions_and_trailers() {
        let input = b"5;a=\"b;c\"\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n";
        let (out, used, done) = decode_all(input).unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(&input[used..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let input = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new(&limits(100));
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for &b in input.iter() {
            buf.push(b);
            let used = d.decode(&buf, &mut out).unwrap();
            buf.drain(..used);
        }
        assert!(d.is_done());
        assert_eq!(out, b"0123456789");
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"-5\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rx\r\nhello\r\n0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffffff\r\n",
            b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
            // Whitespace after the size, not before an extension.
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            // Controls in an extension or a trailer.
            b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
            b"5;a\x7f\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX-T: a\x01b\r\n\r\n",
            // Trailer names must be tokens.
            b"5\r\nhello\r\n0\r\n: v\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX T: v\r\n\r\n",
            b"5\r\nhello\r\n0\r\n X-T: v\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX-T : v\r\n\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn accepts_whitespace_before_an_extension() {
        for ok in [
            &b"5 ;a=1\r\nhello\r\n0\r\n\r\n"[..],
            b"5\t;a\r\nhello\r\n0 ; last\r\n\r\n",
            b"5;a=\"\txy\"\r\nhello\r\n0\r\n\r\n",
        ] {
            let (out, _, done) = decode_all(ok).unwrap();
            assert_eq!((out.as_slice(), done), (&b"hello"[..], true));
        }
    }

    #[test]
    fn caps_chunk_extension_bytes_per_body() {
        let ext = format!(";{}", "e".repeat(999));
        let mut input = Vec::new();
        for _ in 0..16 {
            input.extend_from_slice(format!("1{ext}\r\nx\r\n").as_bytes());
        }
        let mut d = ChunkedDecoder::new(&limits(1 << 20));
        assert!(
            d.decode(&input, &mut Vec::new()).is_ok(),
            "16,000 bytes pass"
        );
        input.extend_from_slice(format!("1{ext}\r\nx\r\n").as_bytes());
        let err = decode_all(&input).unwrap_err();
        assert_eq!(
            (err.status(), err.to_string().contains("extensions")),
            (400, true)
        );
    }

    #[test]
    fn gives_the_trailer_section_the_head_budget() {
        let small = Limits {
            max_head_bytes: 100,
            max_header_fields: 3,
            ..Limits::default()
        };
        let fields = |n: usize, len: usize| {
            let mut input = b"1\r\nx\r\n0\r\n".to_vec();
            for i in 0..n {
                input.extend_from_slice(format!("T{i}: {}\r\n", "v".repeat(len)).as_bytes());
            }
            input.extend_from_slice(b"\r\n");
            ChunkedDecoder::new(&small).decode(&input, &mut Vec::new())
        };
        assert!(fields(3, 10).is_ok());
        assert_eq!(fields(4, 1).unwrap_err().status(), 431);
        assert_eq!(fields(2, 60).unwrap_err().status(), 431);
    }

    #[test]
    fn enforces_the_body_limit() {
        let mut d = ChunkedDecoder::new(&limits(4));
        let err = d.decode(b"5\r\nhello\r\n", &mut Vec::new()).unwrap_err();
        assert_eq!(err.status(), 413);
    }
}
