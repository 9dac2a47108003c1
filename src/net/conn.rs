//! One client connection: its socket, the bytes read but not yet parsed, the
//! request being assembled, and response bytes not yet written. A `Conn` is
//! owned by its IO thread, or lent to an app thread while its request runs.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use super::body::{Body, BodyBuf};
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::BodyFraming;
use crate::http::{parse_head, response, Head, Limits, ParseError};

/// Size of each IO thread's read scratch buffer: bytes read per pass.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A connection's own buffer is freed between requests when larger.
const KEEP_BUFFER_BYTES: usize = 4096;

/// A complete request, as plain Rust data.
#[derive(Debug)]
pub struct Request {
    pub head: Head,
    pub body: Body,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// What reading and parsing produced. (Returned by value once per request:
/// boxing the large variant would cost an allocation for nothing.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Progress {
    /// A complete request is ready for the app.
    Request(Request),
    /// More bytes are needed.
    Pending,
}

/// What the connection is in the middle of reading.
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

#[derive(Debug)]
pub struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) token: usize,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    buf: Vec<u8>,
    input: Input,
    out: Vec<u8>,
    out_pos: usize,
    /// Close once `out` is written (an error, `Connection: close`, HTTP/1.0).
    pub(crate) close_after_write: bool,
    /// The peer is gone or the socket failed: close without writing more.
    pub(crate) dead: bool,
    /// When the request now being read started (its first byte).
    pub(crate) request_started: Option<Instant>,
    /// When the last byte was read.
    pub(crate) last_read: Instant,
    /// When queued output last made progress.
    pub(crate) last_write: Instant,
    /// When the connection last became idle between requests.
    pub(crate) idle_since: Instant,
}

/// How a read pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The socket has no more bytes for now.
    Drained,
    /// Stopped early to let the parser consume the buffer.
    Full,
    /// The peer closed its side.
    Eof,
}

impl Conn {
    pub fn new(stream: TcpStream, token: usize, peer: SocketAddr, local: SocketAddr) -> Self {
        Conn {
            stream,
            token,
            peer,
            local,
            buf: Vec::new(),
            input: Input::Head,
            out: Vec::new(),
            out_pos: 0,
            close_after_write: false,
            dead: false,
            request_started: None,
            last_read: Instant::now(),
            last_write: Instant::now(),
            idle_since: Instant::now(),
        }
    }

    /// No request is being read and nothing is waiting to be written.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && matches!(self.input, Input::Head) && !self.has_output()
    }

    /// A head was parsed and its body is being read.
    pub fn reading_body(&self) -> bool {
        matches!(self.input, Input::Body { .. })
    }

    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Reads what the socket has, up to one scratch buffer's worth. The IO
    /// thread lends its scratch buffer, so an idle connection holds no read
    /// buffer of its own.
    pub fn fill(&mut self, scratch: &mut [u8]) -> io::Result<Fill> {
        let mut total = 0;
        while total < scratch.len() {
            let n = match self.stream.read(&mut scratch[total..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.buf.extend_from_slice(&scratch[..total]);
                return Ok(Fill::Eof);
            }
            self.last_read = Instant::now();
            if self.request_started.is_none() {
                self.request_started = Some(self.last_read);
            }
            total += n;
        }
        self.buf.extend_from_slice(&scratch[..total]);
        Ok(if total == scratch.len() {
            Fill::Full
        } else {
            Fill::Drained
        })
    }

    /// Advances the request being read with the buffered bytes.
    pub fn advance(&mut self, limits: &Limits) -> Result<Progress, ParseError> {
        if let Input::Head = self.input {
            let Some((head, used)) = parse_head(&self.buf, limits)? else {
                return Ok(Progress::Pending);
            };
            self.buf.drain(..used);
            if head.body == BodyFraming::Length(0) {
                return Ok(self.complete(head, Body::Memory(Vec::new())));
            }
            let left = match head.body {
                BodyFraming::Length(n) => BodyLeft::Length(n),
                BodyFraming::Chunked => {
                    BodyLeft::Chunked(ChunkedDecoder::new(limits.max_body_bytes))
                }
            };
            if head.expect_continue && self.buf.is_empty() && !matches!(left, BodyLeft::Length(0)) {
                self.queue(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec());
            }
            let expected = match left {
                BodyLeft::Length(n) => Some(n),
                BodyLeft::Chunked(_) => None,
            };
            let body = BodyBuf::new(limits.body_in_memory_bytes, expected).map_err(spool_error)?;
            self.input = Input::Body {
                head: Box::new(head),
                body,
                left,
            };
        }
        let Input::Body { body, left, .. } = &mut self.input else {
            return Ok(Progress::Pending);
        };
        let done = match left {
            BodyLeft::Length(n) => {
                let take = self
                    .buf
                    .len()
                    .min(usize::try_from(*n).unwrap_or(usize::MAX));
                body.push(&self.buf[..take]).map_err(spool_error)?;
                self.buf.drain(..take);
                *n -= take as u64;
                *n == 0
            }
            BodyLeft::Chunked(decoder) => {
                let mut decoded = Vec::new();
                let used = decoder.decode(&self.buf, &mut decoded)?;
                body.push(&decoded).map_err(spool_error)?;
                self.buf.drain(..used);
                decoder.is_done()
            }
        };
        if !done {
            return Ok(Progress::Pending);
        }
        let Input::Body { head, body, .. } = std::mem::replace(&mut self.input, Input::Head) else {
            return Ok(Progress::Pending);
        };
        let body = body.finish().map_err(spool_error)?;
        Ok(self.complete(*head, body))
    }

    /// A request is complete: the connection starts over on the next one.
    fn complete(&mut self, head: Head, body: Body) -> Progress {
        self.request_started = if self.buf.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER_BYTES {
            self.buf = Vec::new();
        }
        Progress::Request(Request {
            head,
            body,
            peer: self.peer,
            local: self.local,
        })
    }

    /// Queues bytes to write after anything already queued.
    pub fn queue(&mut self, bytes: Vec<u8>) {
        if self.has_output() {
            self.out.extend_from_slice(&bytes);
        } else {
            self.out = bytes;
            self.out_pos = 0;
        }
    }

    /// Queues an error response; the connection closes after it and reads
    /// nothing more.
    pub fn queue_error(&mut self, status: u16, message: &str) {
        self.queue(response::simple(status, message, false));
        self.close_after_write = true;
        self.buf.clear();
        self.input = Input::Head;
    }

    /// Writes queued bytes. `Ok(true)` once everything is written.
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.has_output() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_pos += n;
                    self.last_write = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }
}

fn spool_error(e: std::io::Error) -> ParseError {
    eprintln!("butterflies: cannot spool a request body: {e}");
    ParseError::Internal("cannot store the request body")
}
