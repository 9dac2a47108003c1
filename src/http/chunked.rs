//! Incremental decoder for `Transfer-Encoding: chunked` request bodies
//! (RFC 9112 §7.1). Fed whatever bytes have arrived; it consumes what it can,
//! appends decoded data, and says when the last chunk and trailers are done.
//! Lines must end in CRLF: a bare LF or CR is an error, never a line end.

use super::error::ParseError;

/// Longest chunk-size line (size plus extensions) or trailer line accepted.
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;

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
    max_body_bytes: u64,
}

impl ChunkedDecoder {
    pub fn new(max_body_bytes: u64) -> Self {
        ChunkedDecoder {
            state: State::Size,
            decoded: 0,
            max_body_bytes,
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
        let size_end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
        let size = line[..size_end].trim_ascii_end();
        if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(ParseError::Malformed("invalid chunk size"));
        }
        let size = size.iter().try_fold(0u64, |acc, &d| {
            let digit = u64::from((d as char).to_digit(16).unwrap_or(0));
            acc.checked_mul(16).and_then(|v| v.checked_add(digit))
        });
        let size = size.ok_or(ParseError::Malformed("chunk size out of range"))?;
        self.decoded = self.decoded.saturating_add(size);
        if self.decoded > self.max_body_bytes {
            return Err(ParseError::BodyTooLarge(self.max_body_bytes));
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
        if line.is_empty() {
            self.state = State::Done;
        } else if !line.contains(&b':') || line[0] == b' ' || line[0] == b'\t' {
            return Err(ParseError::Malformed("invalid trailer field"));
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

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ParseError> {
        let mut d = ChunkedDecoder::new(1 << 20);
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
        let mut d = ChunkedDecoder::new(100);
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
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn enforces_the_body_limit() {
        let mut d = ChunkedDecoder::new(4);
        let err = d.decode(b"5\r\nhello\r\n", &mut Vec::new()).unwrap_err();
        assert_eq!(err.status(), 413);
    }
}
