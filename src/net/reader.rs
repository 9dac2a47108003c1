//! The request reader: bytes in, complete requests out. It holds the bytes
//! read but not yet parsed and the request being assembled (head, then body
//! by Content-Length or chunked). No sockets here, so the state machine is
//! tested by feeding it any split of a byte stream.

use super::body::{Body, BodyBuf};
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::BodyFraming;
use crate::http::{parse_head, Head, Limits, ParseError};

/// Why a request could not be read: the client's fault, or ours.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request is not one we serve (4xx, 501).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The body could not be stored (no disk to spool it): a 500. The
    /// system's error is logged, not sent.
    #[error("cannot store the request body")]
    Spool(std::io::Error),
}

impl RequestError {
    /// The status code answered; the connection is closed after it.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Parse(e) => e.status(),
            RequestError::Spool(_) => 500,
        }
    }
}

/// A reader's own buffer is freed between requests when larger than this.
const KEEP_BUFFER_BYTES: usize = 4096;

/// What one `advance` produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // returned by value, once per request
pub enum Step {
    /// A complete request.
    Request(Head, Body),
    /// The client waits for `100 Continue` before it sends the body: send
    /// it, then call `advance` again.
    Continue,
    /// More bytes are needed.
    Pending,
}

#[derive(Debug)]
enum Input {
    Head,
    Body {
        head: Box<Head>,
        body: BodyBuf,
        left: BodyLeft,
    },
}

#[derive(Debug)]
enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// Bytes read and not yet used. Requests are consumed by moving `pos`,
/// not by shifting the rest of the buffer down once per request (which
/// cost time quadratic in a pipelined backlog); the used front is dropped
/// when more bytes are added.
#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    pos: usize,
}

impl Buffer {
    fn unparsed(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    fn len(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.bytes.len());
        if self.pos == self.bytes.len() {
            self.bytes.clear();
            self.pos = 0;
        }
    }

    fn extend(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.bytes.drain(..self.pos);
            self.pos = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    fn take(&mut self, max: usize) -> Vec<u8> {
        let n = self.len().min(max);
        let taken = self.unparsed()[..n].to_vec();
        self.consume(n);
        taken
    }

    fn release_if_large(&mut self) {
        if self.is_empty() && self.bytes.capacity() > KEEP_BUFFER_BYTES {
            *self = Buffer::default();
        }
    }
}

#[derive(Debug)]
pub struct RequestReader {
    buf: Buffer,
    input: Input,
}

impl Default for RequestReader {
    fn default() -> Self {
        RequestReader {
            buf: Buffer::default(),
            input: Input::Head,
        }
    }
}

impl RequestReader {
    /// Adds bytes read from the client. Bytes of a Content-Length body
    /// being read go straight into the body (one copy less than through the
    /// buffer); anything after it is buffered for the next request.
    pub fn extend(&mut self, mut data: &[u8]) {
        if self.buf.is_empty() {
            if let Input::Body {
                body,
                left: BodyLeft::Length(n),
                ..
            } = &mut self.input
            {
                let take = data.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                // A failed push (no disk to spool to) leaves the bytes to
                // the buffer; `advance` then reports the error.
                if body.push(&data[..take]).is_ok() {
                    *n -= take as u64;
                    data = &data[take..];
                }
            }
        }
        self.buf.extend(data);
    }

    /// Between requests with nothing buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && matches!(self.input, Input::Head)
    }

    /// Bytes of a next request are already buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// How many bytes are buffered and not yet used by a request.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    pub fn reading_body(&self) -> bool {
        matches!(self.input, Input::Body { .. })
    }

    /// Takes up to `max` buffered bytes that no request has claimed.
    pub fn take_buffered(&mut self, max: usize) -> Vec<u8> {
        self.buf.take(max)
    }

    /// Parses a prefix of the buffered bytes with `parse` (which says how
    /// many bytes it used, or that it needs more) and drops what it used:
    /// for what precedes the first request (a PROXY protocol header).
    pub fn take_prefix<T, E>(
        &mut self,
        parse: impl FnOnce(&[u8]) -> Result<Option<(T, usize)>, E>,
    ) -> Result<Option<T>, E> {
        let Some((value, used)) = parse(self.buf.unparsed())? else {
            return Ok(None);
        };
        self.buf.consume(used);
        Ok(Some(value))
    }

    /// Forgets everything (after an error, nothing more is read).
    pub fn clear(&mut self) {
        self.buf = Buffer::default();
        self.input = Input::Head;
    }

    /// Advances the request being read with the buffered bytes.
    pub fn advance(&mut self, limits: &Limits) -> Result<Step, RequestError> {
        if let Input::Head = self.input {
            if self.buf.is_empty() {
                return Ok(Step::Pending);
            }
            let Some((head, used)) = parse_head(self.buf.unparsed(), limits)? else {
                return Ok(Step::Pending);
            };
            self.buf.consume(used);
            let (left, expected) = match head.body {
                BodyFraming::Length(0) => return Ok(self.complete(head, Body::Memory(Vec::new()))),
                BodyFraming::Length(n) => (BodyLeft::Length(n), Some(n)),
                BodyFraming::Chunked => (BodyLeft::Chunked(ChunkedDecoder::new(limits)), None),
            };
            let send_continue = head.expect_continue && self.buf.is_empty();
            let body = BodyBuf::new(limits.body_in_memory_bytes, expected).map_err(spool_error)?;
            self.input = Input::Body {
                head: Box::new(head),
                body,
                left,
            };
            if send_continue {
                return Ok(Step::Continue);
            }
        }
        let Input::Body { body, left, .. } = &mut self.input else {
            return Ok(Step::Pending);
        };
        let done = match left {
            BodyLeft::Length(n) => {
                let take = self
                    .buf
                    .len()
                    .min(usize::try_from(*n).unwrap_or(usize::MAX));
                body.push(&self.buf.unparsed()[..take])
                    .map_err(spool_error)?;
                self.buf.consume(take);
                *n -= take as u64;
                *n == 0
            }
            BodyLeft::Chunked(decoder) => {
                let mut decoded = Vec::new();
                let used = decoder.decode(self.buf.unparsed(), &mut decoded)?;
                body.push(&decoded).map_err(spool_error)?;
                self.buf.consume(used);
                decoder.is_done()
            }
        };
        if !done {
            return Ok(Step::Pending);
        }
        let Input::Body { head, body, .. } = std::mem::replace(&mut self.input, Input::Head) else {
            return Ok(Step::Pending);
        };
        let body = body.finish().map_err(spool_error)?;
        Ok(self.complete(*head, body))
    }

    fn complete(&mut self, head: Head, body: Body) -> Step {
        self.buf.release_if_large();
        Step::Request(head, body)
    }
}

fn spool_error(e: std::io::Error) -> RequestError {
    crate::log_err!("butterflies: cannot spool a request body: {e}");
    RequestError::Spool(e)
}
