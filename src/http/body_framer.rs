//! Keeps an app's response body true to the framing its head announced, so
//! a faulty app cannot desync a kept-alive connection: the bytes after a
//! too-long body would be read by the client as the next response, and a
//! too-short one would swallow the next response into this one.
//!
//! - `Content-Length: n`: never more than n body bytes go out; a body
//!   that ends short is a fault, and the connection is closed after it.
//! - Our own chunked framing: each piece is one chunk.
//! - The app's own chunked framing (`Transfer-Encoding: ... chunked`): it
//!   is checked by the same decoder that reads request bodies, and passed
//!   on (HTTP/1.1) or decoded into a close-delimited body (HTTP/1.0, which
//!   must never get a Transfer-Encoding). Bad framing, bytes after the
//!   last chunk, or a body that ends before it are faults.
//!
//! A fault is reported once; the caller logs it and closes the connection.

use std::borrow::Cow;
use std::fmt;

use super::ascii::hex;
use super::chunked::ChunkedDecoder;
use super::request::Limits;
use super::response::{Framing, LAST_CHUNK};

/// Why an app's body did not match its framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFault {
    /// More bytes than the Content-Length; the rest was dropped.
    TooLong { declared: u64 },
    /// The body ended this many bytes short of its Content-Length.
    TooShort { declared: u64, missing: u64 },
    /// The app's own chunked framing was invalid or incomplete.
    BadChunking(String),
}

impl fmt::Display for BodyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyFault::TooLong { declared } => write!(
                f,
                "the body is longer than its content-length ({declared}); the rest was not sent"
            ),
            BodyFault::TooShort { declared, missing } => write!(
                f,
                "the body is {missing} bytes shorter than its content-length ({declared})"
            ),
            BodyFault::BadChunking(why) => write!(f, "the app's chunked body is invalid: {why}"),
        }
    }
}

/// One piece of body as it goes on the wire: a prefix (a chunk size), the
/// bytes, a suffix (CRLF).
#[derive(Debug)]
pub struct Framed<'a> {
    prefix: [u8; 18],
    prefix_len: usize,
    pub body: Cow<'a, [u8]>,
    pub suffix: &'static [u8],
}

impl<'a> Framed<'a> {
    fn plain(body: Cow<'a, [u8]>) -> Self {
        Framed {
            prefix: [0; 18],
            prefix_len: 0,
            body,
            suffix: b"",
        }
    }

    fn chunk(body: &'a [u8]) -> Self {
        let mut digits = [0; 16];
        let size = hex(body.len() as u64, &mut digits);
        let mut prefix = [0; 18];
        prefix[..size.len()].copy_from_slice(size);
        prefix[size.len()..size.len() + 2].copy_from_slice(b"\r\n");
        Framed {
            prefix,
            prefix_len: size.len() + 2,
            body: Cow::Borrowed(body),
            suffix: b"\r\n",
        }
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..self.prefix_len]
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty() && self.prefix_len == 0
    }

    /// Prefix, body and suffix, for a vectored write.
    pub fn parts(&self) -> [&[u8]; 3] {
        [self.prefix(), &self.body, self.suffix]
    }
}

#[derive(Debug)]
enum State {
    Length {
        declared: u64,
        left: u64,
    },
    Chunked,
    /// Close-delimited: bytes as they come.
    Raw,
    /// No body is sent (HEAD, 204, 304).
    Nothing,
    /// The app's chunked framing: checked and passed on (`decode` false)
    /// or decoded (`decode` true). `tail`: an incomplete line kept for the
    /// next piece.
    AppChunked {
        decoder: Box<ChunkedDecoder>,
        tail: Vec<u8>,
        decode: bool,
    },
}

/// Frames the body of one response.
#[derive(Debug)]
pub struct BodyFramer {
    state: State,
    faulted: bool,
}

impl BodyFramer {
    pub fn new(framing: Framing) -> Self {
        let app_chunked = |decode| State::AppChunked {
            decoder: Box::new(ChunkedDecoder::new(&Limits {
                max_body_bytes: u64::MAX,
                ..Limits::default()
            })),
            tail: Vec::new(),
            decode,
        };
        let state = match framing {
            Framing::Length(n) => State::Length {
                declared: n,
                left: n,
            },
            Framing::Chunked => State::Chunked,
            Framing::UntilClose => State::Raw,
            Framing::AppChunked => app_chunked(false),
            Framing::Dechunked => app_chunked(true),
            Framing::NoBody | Framing::HeadLength(_) => State::Nothing,
        };
        BodyFramer {
            state,
            faulted: false,
        }
    }

    /// The body did not match its framing: close the connection after it.
    pub fn faulted(&self) -> bool {
        self.faulted
    }

    /// What to send for one piece of the app's body, and a fault if this
    /// piece revealed one (each response reports at most one).
    pub fn frame<'a>(&mut self, data: &'a [u8]) -> (Framed<'a>, Option<BodyFault>) {
        if self.faulted || data.is_empty() {
            return (Framed::plain(Cow::Borrowed(b"")), None);
        }
        let (framed, fault) = match &mut self.state {
            State::Nothing => (Framed::plain(Cow::Borrowed(b"")), None),
            State::Raw => (Framed::plain(Cow::Borrowed(data)), None),
            State::Chunked => (Framed::chunk(data), None),
            State::Length { declared, left } => {
                let n = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                let fault = (n < data.len()).then_some(BodyFault::TooLong {
                    declared: *declared,
                });
                (Framed::plain(Cow::Borrowed(&data[..n])), fault)
            }
            State::AppChunked {
                decoder,
                tail,
                decode,
            } => {
                let input: Cow<'a, [u8]> = if tail.is_empty() {
                    Cow::Borrowed(data)
                } else {
                    let mut joined = std::mem::take(tail);
                    joined.extend_from_slice(data);
                    Cow::Owned(joined)
                };
                let mut decoded = Vec::new();
                match decoder.decode(&input, &mut decoded) {
                    Err(e) => (
                        Framed::plain(Cow::Borrowed(b"")),
                        Some(BodyFault::BadChunking(e.to_string())),
                    ),
                    Ok(used) => {
                        let fault = (decoder.is_done() && used < input.len())
                            .then(|| BodyFault::BadChunking("bytes after the last chunk".into()));
                        if !decoder.is_done() {
                            tail.extend_from_slice(&input[used..]);
                        }
                        let body = if *decode {
                            Cow::Owned(decoded)
                        } else {
                            match input {
                                Cow::Borrowed(b) => Cow::Borrowed(&b[..used]),
                                Cow::Owned(mut v) => {
                                    v.truncate(used);
                                    Cow::Owned(v)
                                }
                            }
                        };
                        (Framed::plain(body), fault)
                    }
                }
            }
        };
        self.faulted |= fault.is_some();
        (framed, fault)
    }

    /// The body ended: the bytes that end it on the wire (the last chunk),
    /// and a fault if it ended short.
    pub fn finish(&mut self) -> (&'static [u8], Option<BodyFault>) {
        if self.faulted {
            return (b"", None);
        }
        let (last, fault): (&'static [u8], _) = match &self.state {
            State::Chunked => (LAST_CHUNK, None),
            State::Length { declared, left } if *left > 0 => (
                b"",
                Some(BodyFault::TooShort {
                    declared: *declared,
                    missing: *left,
                }),
            ),
            State::AppChunked { decoder, .. } if !decoder.is_done() => (
                b"",
                Some(BodyFault::BadChunking(
                    "the body ended before its last chunk".into(),
                )),
            ),
            _ => (b"", None),
        };
        self.faulted |= fault.is_some();
        (last, fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(framer: &mut BodyFramer, pieces: &[&[u8]]) -> (Vec<u8>, Vec<BodyFault>) {
        let mut out = Vec::new();
        let mut faults = Vec::new();
        for piece in pieces {
            let (framed, fault) = framer.frame(piece);
            framed.parts().iter().for_each(|p| out.extend_from_slice(p));
            faults.extend(fault);
        }
        let (last, fault) = framer.finish();
        out.extend_from_slice(last);
        faults.extend(fault);
        (out, faults)
    }

    #[test]
    fn a_body_longer_than_its_length_is_cut_and_reported_once() {
        let mut framer = BodyFramer::new(Framing::Length(3));
        let (out, faults) = sent(&mut framer, &[b"ab", b"cdef", b"gh"]);
        assert_eq!(out, b"abc");
        assert_eq!(faults, [BodyFault::TooLong { declared: 3 }]);
        assert!(framer.faulted());
    }

    #[test]
    fn a_body_shorter_than_its_length_is_reported() {
        let mut framer = BodyFramer::new(Framing::Length(100));
        let (out, faults) = sent(&mut framer, &[b"hello"]);
        assert_eq!(out, b"hello");
        assert_eq!(
            faults,
            [BodyFault::TooShort {
                declared: 100,
                missing: 95
            }]
        );
    }

    #[test]
    fn an_exact_body_is_no_fault() {
        let mut framer = BodyFramer::new(Framing::Length(5));
        assert_eq!(
            sent(&mut framer, &[b"he", b"llo"]),
            (b"hello".to_vec(), vec![])
        );
        assert!(!framer.faulted());
    }

    #[test]
    fn our_chunking_frames_each_piece() {
        let mut framer = BodyFramer::new(Framing::Chunked);
        let (out, faults) = sent(&mut framer, &[b"hello", b"", b" world!"]);
        assert_eq!(out, b"5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n");
        assert!(faults.is_empty());
    }

    #[test]
    fn the_apps_chunking_is_checked_and_passed_on_even_when_split() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut framer = BodyFramer::new(Framing::AppChunked);
        let pieces: Vec<&[u8]> = body.chunks(4).collect();
        assert_eq!(sent(&mut framer, &pieces), (body.to_vec(), vec![]));
        let mut framer = BodyFramer::new(Framing::Dechunked);
        assert_eq!(
            sent(&mut framer, &pieces),
            (b"hello world".to_vec(), vec![])
        );
    }

    #[test]
    fn bad_app_chunking_is_a_fault() {
        for (pieces, sent_before) in [
            (
                vec![&b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK"[..]],
                &b"5\r\nhello\r\n0\r\n\r\n"[..],
            ),
            (vec![&b"5\r\nhel"[..]], &b"5\r\nhel"[..]),
            (vec![&b"zz\r\n"[..]], &b""[..]),
        ] {
            let mut framer = BodyFramer::new(Framing::AppChunked);
            let (out, faults) = sent(&mut framer, &pieces);
            assert_eq!(out, sent_before);
            assert_eq!(faults.len(), 1, "{faults:?}");
            assert!(framer.faulted());
        }
    }

    #[test]
    fn nothing_is_sent_for_bodyless_framings() {
        for framing in [Framing::NoBody, Framing::HeadLength(5)] {
            let mut framer = BodyFramer::new(framing);
            assert_eq!(sent(&mut framer, &[b"hello"]), (vec![], vec![]));
        }
    }
}
