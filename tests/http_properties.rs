#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the parser, the chunked decoder and the request reader,
//! with a small deterministic PRNG (no Ruby, no sockets): random and mutated
//! input never panics, and any split of a valid byte stream parses into the
//! same requests as the whole stream.

use butterflies::http::chunked::ChunkedDecoder;
use butterflies::http::{parse_head, Limits};
use butterflies::net::reader::{RequestReader, Step};
use butterflies::net::Body;

/// xorshift64*: deterministic, so a failure is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const STREAM: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n\
POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world\
POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=\"a;b\"\r\nwiki\r\n5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n\
GET http://auth:81/d HTTP/1.1\r\nHost: h\r\n\r\n\
\r\nGET /e HTTP/1.0\r\n\r\n";

/// A parsed request, reduced to what must not depend on how bytes arrived.
type Summary = (Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

fn summary(reader: &mut RequestReader, limits: &Limits, out: &mut Vec<Summary>) {
    loop {
        match reader.advance(limits).expect("valid stream") {
            Step::Request(head, body) => {
                let Body::Memory(bytes) = body else {
                    panic!("small bodies stay in memory")
                };
                let headers = head
                    .headers()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                out.push((head.method().to_vec(), head.path().to_vec(), headers, bytes));
            }
            Step::Continue => {}
            Step::Pending => return,
        }
    }
}

fn parse_in_pieces(pieces: &[&[u8]]) -> Vec<Summary> {
    let limits = Limits::default();
    let mut reader = RequestReader::default();
    let mut out = Vec::new();
    for piece in pieces {
        reader.extend(piece);
        summary(&mut reader, &limits, &mut out);
    }
    out
}

#[test]
fn any_split_of_a_valid_stream_gives_the_same_requests() {
    let whole = parse_in_pieces(&[STREAM]);
    assert_eq!(whole.len(), 5);
    assert_eq!(whole[2].3, b"wikipedia");
    let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
    assert_eq!(parse_in_pieces(&bytes), whole, "byte by byte");
    let mut rng = Rng(0x5eed);
    for _ in 0..2_000 {
        let mut cuts: Vec<usize> = (0..rng.below(8) + 1)
            .map(|_| rng.below(STREAM.len()))
            .collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut at = 0;
        for cut in cuts {
            pieces.push(&STREAM[at..cut]);
            at = cut;
        }
        pieces.push(&STREAM[at..]);
        assert_eq!(parse_in_pieces(&pieces), whole, "cuts at {pieces:?}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let limits = Limits::default();
    let mut rng = Rng(42);
    let alphabet = b"GETPOST /HTP1.0\r\n:;, \t0123456789abcdefxX-\x00\x7f\xff?=chunked";
    for round in 0..20_000 {
        let len = rng.below(200);
        let input: Vec<u8> = (0..len)
            .map(|_| {
                if round % 2 == 0 {
                    rng.next() as u8
                } else {
                    alphabet[rng.below(alphabet.len())]
                }
            })
            .collect();
        let _ = parse_head(&input, &limits);
        let _ = ChunkedDecoder::new(&butterflies::http::Limits::default())
            .decode(&input, &mut Vec::new());
        let mut reader = RequestReader::default();
        reader.extend(&input);
        for _ in 0..4 {
            if !matches!(
                reader.advance(&limits),
                Ok(Step::Request(..) | Step::Continue)
            ) {
                break;
            }
        }
    }
}

#[test]
fn mutated_valid_streams_never_panic() {
    let limits = Limits::default();
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let mut input = STREAM.to_vec();
        for _ in 0..rng.below(4) + 1 {
            let at = rng.below(input.len());
            match rng.below(3) {
                0 => input[at] = rng.next() as u8,
                1 => {
                    input.remove(at);
                }
                _ => input.insert(at, b"\r\n:0 \x00"[rng.below(6)]),
            }
        }
        let mut reader = RequestReader::default();
        reader.extend(&input);
        for _ in 0..8 {
            if !matches!(
                reader.advance(&limits),
                Ok(Step::Request(..) | Step::Continue)
            ) {
                break;
            }
        }
    }
}
