//! The PROXY protocol header (HAProxy's "PROXY protocol" specification,
//! versions 1 and 2): what a load balancer in front sends as the very first
//! bytes of a connection to say who the client is.
//!
//! [`parse`] looks at the bytes a connection has buffered and says one of:
//! complete (the header and its length), more bytes needed, or an error.
//! It never reads past the header, so what follows is the first request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// The version 2 signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1 starts with this.
const V1_PREFIX: &[u8] = b"PROXY ";
/// A v1 header is at most 107 bytes, CRLF included.
pub const V1_MAX_BYTES: usize = 107;
/// The fixed part of a v2 header: signature, version and command, family
/// and transport, length.
const V2_FIXED_BYTES: usize = 16;
/// The largest v2 header accepted (addresses and TLVs included): far
/// above what HAProxy, nginx or AWS send, and a bound on what a
/// connection buffers before its first request.
pub const V2_MAX_BYTES: usize = 16 * 1024;

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    V1,
    V2,
    Any,
}

impl Versions {
    pub fn parse(name: &str) -> Option<Versions> {
        match name {
            "v1" => Some(Versions::V1),
            "v2" => Some(Versions::V2),
            "any" => Some(Versions::Any),
            _ => None,
        }
    }

    fn allows(self, version: Version) -> bool {
        matches!(
            (self, version),
            (Versions::Any, _) | (Versions::V1, Version::V1) | (Versions::V2, Version::V2)
        )
    }
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    pub version: Option<Version>,
    /// The client's and the proxy's addresses, as the proxy saw them.
    /// `None`: a v2 LOCAL header (the proxy's own health check), a v1
    /// UNKNOWN one, or an address family with no IP (Unix, unspecified):
    /// the connection's own addresses stand.
    pub addresses: Option<Addresses>,
    /// Type-length-value extensions (v2) the server passes on.
    pub tlvs: Tlvs,
}

/// Source (the client) and destination (the address it connected to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// The v2 extensions the app may want (others are skipped).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tlvs {
    /// PP2_TYPE_ALPN: the protocol the client negotiated with the proxy.
    pub alpn: Option<Vec<u8>>,
    /// PP2_TYPE_AUTHORITY: the host name the client asked for (SNI).
    pub authority: Option<String>,
    /// PP2_TYPE_UNIQUE_ID: the proxy's id for this connection.
    pub unique_id: Option<Vec<u8>>,
    /// PP2_TYPE_AWS, subtype PP2_SUBTYPE_AWS_VPCE_ID: the VPC endpoint the
    /// connection came through (AWS PrivateLink).
    pub aws_vpce_id: Option<String>,
}

const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
const PP2_TYPE_AWS: u8 = 0xEA;
const PP2_SUBTYPE_AWS_VPCE_ID: u8 = 0x01;
/// PP2_TYPE_UNIQUE_ID is at most this long.
const UNIQUE_ID_MAX_BYTES: usize = 128;

/// Why a connection's first bytes are not an acceptable header. Every one
/// closes the connection without a response: the specification forbids
/// guessing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY protocol {0:?} header where it is not accepted")]
    VersionRefused(Version),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("PROXY protocol header too long")]
    TooLong,
}

/// `Ok(Some((header, length)))` once a complete header is buffered,
/// `Ok(None)` while more bytes are needed (and could still make one).
pub fn parse(buf: &[u8], accepted: Versions) -> Result<Option<(Header, usize)>, HeaderError> {
    let version = match detect(buf)? {
        Some(version) => version,
        None => return Ok(None),
    };
    if !accepted.allows(version) {
        return Err(HeaderError::VersionRefused(version));
    }
    match version {
        Version::V1 => parse_v1(buf),
        Version::V2 => parse_v2(buf),
    }
}

/// Which version the bytes start as: `None` while too few to tell.
fn detect(buf: &[u8]) -> Result<Option<Version>, HeaderError> {
    let starts = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    match (starts(V1_PREFIX), starts(V2_SIGNATURE)) {
        (false, false) => Err(HeaderError::Missing),
        (true, _) if buf.len() >= V1_PREFIX.len() => Ok(Some(Version::V1)),
        (_, true) if buf.len() >= V2_SIGNATURE.len() => Ok(Some(Version::V2)),
        _ => Ok(None),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX_BYTES)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX_BYTES {
            Err(HeaderError::TooLong)
        } else if window.contains(&b'\n') {
            Err(HeaderError::Malformed("a bare LF"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| HeaderError::Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    let addresses = match fields.next() {
        Some("UNKNOWN") => None, // the rest of the line is ignored
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || {
                fields
                    .next()
                    .ok_or(HeaderError::Malformed("too few fields"))
            };
            let (source, destination) = (v1_ip(next()?, family)?, v1_ip(next()?, family)?);
            let (source_port, destination_port) = (v1_port(next()?)?, v1_port(next()?)?);
            if fields.next().is_some() {
                return Err(HeaderError::Malformed("too many fields"));
            }
            Some(Addresses {
                source: SocketAddr::new(source, source_port),
                destination: SocketAddr::new(destination, destination_port),
            })
        }
        _ => return Err(HeaderError::Malformed("unknown protocol")),
    };
    let header = Header {
        version: Some(Version::V1),
        addresses,
        tlvs: Tlvs::default(),
    };
    Ok(Some((header, end + 2)))
}

fn v1_ip(text: &str, family: &str) -> Result<IpAddr, HeaderError> {
    let ip = match family {
        "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
        _ => text.parse::<Ipv6Addr>().map(IpAddr::V6),
    };
    ip.map_err(|_| HeaderError::Malformed("an address not of its family"))
}

/// A port: 1 to 5 digits, no sign, no leading zero, at most 65535.
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(HeaderError::Malformed("a bad port"));
    }
    text.parse()
        .map_err(|_| HeaderError::Malformed("a bad port"))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    if buf.len() < V2_FIXED_BYTES {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0F);
    if version != 2 {
        return Err(HeaderError::Malformed("version is not 2"));
    }
    let local = match command {
        0x0 => true,
        0x1 => false,
        _ => return Err(HeaderError::Malformed("unknown command")),
    };
    let family = buf[13];
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED_BYTES + length;
    if total > V2_MAX_BYTES {
        return Err(HeaderError::TooLong);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let rest = &buf[V2_FIXED_BYTES..total];
    // Family (high nibble) and transport (low): only streams make sense on
    // a stream connection; UNSPEC carries no address.
    let address_bytes = match family {
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        0x31 => 216,
        0x12 | 0x22 | 0x32 => return Err(HeaderError::Malformed("a datagram transport")),
        _ => return Err(HeaderError::Malformed("unknown address family")),
    };
    if rest.len() < address_bytes {
        return Err(HeaderError::Malformed("addresses longer than the header"));
    }
    let addresses = match (local, family) {
        (false, 0x11) => Some(v2_inet(rest)),
        (false, 0x21) => Some(v2_inet6(rest)),
        _ => None,
    };
    let header = Header {
        version: Some(Version::V2),
        addresses,
        tlvs: v2_tlvs(&rest[address_bytes..])?,
    };
    Ok(Some((header, total)))
}

fn v2_inet(a: &[u8]) -> Addresses {
    let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    Addresses {
        source: SocketAddr::new(ip(0), port(8)),
        destination: SocketAddr::new(ip(4), port(10)),
    }
}

fn v2_inet6(a: &[u8]) -> Addresses {
    let ip = |at: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&a[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    Addresses {
        source: SocketAddr::new(ip(0), port(32)),
        destination: SocketAddr::new(ip(16), port(34)),
    }
}

fn v2_tlvs(mut bytes: &[u8]) -> Result<Tlvs, HeaderError> {
    let mut tlvs = Tlvs::default();
    while !bytes.is_empty() {
        if bytes.len() < 3 {
            return Err(HeaderError::Malformed("a truncated TLV"));
        }
        let kind = bytes[0];
        let length = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        let value = bytes
            .get(3..3 + length)
            .ok_or(HeaderError::Malformed("a TLV longer than the header"))?;
        match kind {
            PP2_TYPE_ALPN => tlvs.alpn = Some(value.to_vec()),
            PP2_TYPE_AUTHORITY => {
                let name = std::str::from_utf8(value)
                    .map_err(|_| HeaderError::Malformed("an authority not UTF-8"))?;
                tlvs.authority = Some(name.to_owned());
            }
            PP2_TYPE_UNIQUE_ID if value.len() > UNIQUE_ID_MAX_BYTES => {
                return Err(HeaderError::Malformed("a unique id over 128 bytes"));
            }
            PP2_TYPE_UNIQUE_ID => tlvs.unique_id = Some(value.to_vec()),
            PP2_TYPE_AWS if value.first() == Some(&PP2_SUBTYPE_AWS_VPCE_ID) => {
                let id = std::str::from_utf8(&value[1..])
                    .map_err(|_| HeaderError::Malformed("a VPC endpoint id not ASCII"))?;
                tlvs.aws_vpce_id = Some(id.to_owned());
            }
            _ => {} // CRC32C, NOOP, SSL, NETNS, others: not used
        }
        bytes = &bytes[3 + length..];
    }
    Ok(tlvs)
}

/// Encodes a v2 header, the way a proxy does: for the tests, and for
/// tools that speak to a server behind one.
pub fn encode_v2(addresses: Option<Addresses>, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match addresses.map(|a| (a.source, a.destination)) {
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x11
        }
        Some((s, d)) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x21
        }
        None => 0x00,
    };
    for (kind, value) in tlvs {
        body.push(*kind);
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(if addresses.is_some() { 0x21 } else { 0x20 });
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addrs(source: &str, destination: &str) -> Addresses {
        Addresses {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    fn complete(buf: &[u8], accepted: Versions) -> (Header, usize) {
        parse(buf, accepted).unwrap().unwrap()
    }

    #[test]
    fn v1_tcp4_and_tcp6_give_the_client_address_and_stop_at_the_crlf() {
        let buf = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (header, len) = complete(buf, Versions::V1);
        assert_eq!(&buf[len..len + 5], b"GET /");
        assert_eq!(
            header.addresses,
            Some(addrs("192.0.2.7:56324", "198.51.100.1:443"))
        );
        let buf = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        let (header, len) = complete(buf, Versions::Any);
        assert_eq!(len, buf.len());
        assert_eq!(
            header.addresses,
            Some(addrs("[2001:db8::1]:1", "[2001:db8::2]:65535"))
        );
    }

    #[test]
    fn v1_unknown_keeps_the_connection_address() {
        let (header, len) = complete(b"PROXY UNKNOWN whatever follows\r\nX", Versions::V1);
        assert_eq!(header.addresses, None);
        assert_eq!(len, 32);
        assert_eq!(
            complete(b"PROXY UNKNOWN\r\n", Versions::V1).0.addresses,
            None
        );
    }

    #[test]
    fn v1_refuses_what_the_specification_does_not_allow() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", // wrong family
            b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n", // too few fields
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n", // too many
            b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n", // port range
            b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n", // leading zero
            b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
            b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n", // two spaces
            b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n", // bare LF
        ];
        for buf in bad {
            assert!(
                matches!(parse(buf, Versions::Any), Err(HeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn v1_longer_than_107_bytes_is_refused() {
        let mut buf = b"PROXY UNKNOWN ".to_vec();
        buf.resize(V1_MAX_BYTES - 2, b'x');
        buf.extend_from_slice(b"\r\n");
        assert_eq!(complete(&buf, Versions::V1).1, V1_MAX_BYTES);
        buf.insert(20, b'x');
        assert_eq!(parse(&buf, Versions::V1), Err(HeaderError::TooLong));
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        let a = addrs("203.0.113.9:40000", "10.0.0.5:80");
        let mut aws = vec![PP2_SUBTYPE_AWS_VPCE_ID];
        aws.extend_from_slice(b"vpce-0abc");
        let buf = encode_v2(
            Some(a),
            &[
                (PP2_TYPE_AUTHORITY, b"example.com"),
                (PP2_TYPE_UNIQUE_ID, b"id-1"),
                (0x04, b"padding"), // NOOP: skipped
                (PP2_TYPE_AWS, &aws),
                (PP2_TYPE_ALPN, b"http/1.1"),
            ],
        );
        let (header, len) = complete(&buf, Versions::V2);
        assert_eq!(len, buf.len());
        assert_eq!(header.version, Some(Version::V2));
        assert_eq!(header.addresses, Some(a));
        assert_eq!(header.tlvs.authority.as_deref(), Some("example.com"));
        assert_eq!(header.tlvs.unique_id.as_deref(), Some(&b"id-1"[..]));
        assert_eq!(header.tlvs.aws_vpce_id.as_deref(), Some("vpce-0abc"));
        assert_eq!(header.tlvs.alpn.as_deref(), Some(&b"http/1.1"[..]));

        let v6 = addrs("[2001:db8::9]:1234", "[2001:db8::1]:443");
        assert_eq!(
            complete(&encode_v2(Some(v6), &[]), Versions::Any)
                .0
                .addresses,
            Some(v6)
        );
        // LOCAL: a health check from the proxy itself.
        let local = encode_v2(None, &[]);
        assert_eq!(local[12], 0x20);
        assert_eq!(complete(&local, Versions::V2).0.addresses, None);
    }

    #[test]
    fn v2_local_with_addresses_ignores_them() {
        let mut buf = encode_v2(Some(addrs("192.0.2.1:1", "192.0.2.2:2")), &[]);
        buf[12] = 0x20;
        assert_eq!(complete(&buf, Versions::V2).0.addresses, None);
    }

    #[test]
    fn v2_refuses_bad_versions_commands_families_and_lengths() {
        let good = encode_v2(Some(addrs("192.0.2.1:1", "192.0.2.2:2")), &[]);
        let with = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            b
        };
        let malformed =
            |buf: &[u8]| matches!(parse(buf, Versions::Any), Err(HeaderError::Malformed(_)));
        assert!(malformed(&with(12, 0x11)), "version 1 in a v2 header");
        assert!(malformed(&with(12, 0x22)), "command 2");
        assert!(malformed(&with(13, 0x12)), "UDP");
        assert!(malformed(&with(13, 0x41)), "family 4");
        assert!(malformed(&with(13, 0x21)), "TCP6 with 12 bytes");
        // A TLV that runs past the end.
        let mut buf = encode_v2(Some(addrs("192.0.2.1:1", "192.0.2.2:2")), &[(2, b"abc")]);
        let length_low = buf.len() - 4; // type, length (2 bytes), "abc"
        buf[length_low] = 9;
        assert!(malformed(&buf));
        let mut buf = good.clone();
        buf[14..16].copy_from_slice(&((V2_MAX_BYTES) as u16).to_be_bytes());
        assert_eq!(parse(&buf, Versions::V2), Err(HeaderError::TooLong));
        let long_id = [b'x'; 129];
        assert!(malformed(&encode_v2(
            None,
            &[(PP2_TYPE_UNIQUE_ID, &long_id)]
        )));
    }

    #[test]
    fn a_version_not_accepted_or_no_header_is_refused_at_the_first_telling_byte() {
        let v2 = encode_v2(None, &[]);
        assert_eq!(
            parse(&v2, Versions::V1),
            Err(HeaderError::VersionRefused(Version::V2))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", Versions::V2),
            Err(HeaderError::VersionRefused(Version::V1))
        );
        assert_eq!(parse(b"G", Versions::Any), Err(HeaderError::Missing));
        assert_eq!(parse(b"PROXZ", Versions::Any), Err(HeaderError::Missing));
        assert_eq!(
            parse(b"\r\n\r\nX", Versions::Any),
            Err(HeaderError::Missing)
        );
        assert_eq!(parse(b"", Versions::Any), Ok(None));
        assert_eq!(parse(b"PROX", Versions::Any), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0", Versions::Any), Ok(None));
    }

    /// A small deterministic generator (xorshift), so the properties below
    /// run over many shapes without a dependency, the same every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn addresses(&mut self) -> Option<Addresses> {
            let ip = |r: &mut Rng, v6: bool| -> IpAddr {
                if v6 {
                    IpAddr::V6(Ipv6Addr::from(
                        (u128::from(r.next()) << 64) | u128::from(r.next()),
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::from(r.next() as u32))
                }
            };
            match self.below(3) {
                0 => None,
                n => {
                    let v6 = n == 2;
                    Some(Addresses {
                        source: SocketAddr::new(ip(self, v6), self.next() as u16),
                        destination: SocketAddr::new(ip(self, v6), self.next() as u16),
                    })
                }
            }
        }

        /// A random header of either version, and what parsing must give.
        fn header(&mut self) -> (Vec<u8>, Header) {
            let addresses = self.addresses();
            if self.below(2) == 0 {
                let line = match addresses {
                    None => "PROXY UNKNOWN\r\n".to_string(),
                    Some(a) => format!(
                        "PROXY {} {} {} {} {}\r\n",
                        if a.source.is_ipv6() { "TCP6" } else { "TCP4" },
                        a.source.ip(),
                        a.destination.ip(),
                        a.source.port(),
                        a.destination.port()
                    ),
                };
                let header = Header {
                    version: Some(Version::V1),
                    addresses,
                    tlvs: Tlvs::default(),
                };
                (line.into_bytes(), header)
            } else {
                let authority = format!("host{}.example", self.below(1000));
                let buf = encode_v2(addresses, &[(PP2_TYPE_AUTHORITY, authority.as_bytes())]);
                let header = Header {
                    version: Some(Version::V2),
                    addresses,
                    tlvs: Tlvs {
                        authority: Some(authority),
                        ..Tlvs::default()
                    },
                };
                (buf, header)
            }
        }
    }

    #[test]
    fn any_header_parses_back_and_every_prefix_asks_for_more() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..500 {
            let (mut buf, expected) = rng.header();
            let len = buf.len();
            for cut in 0..len {
                assert_eq!(parse(&buf[..cut], Versions::Any), Ok(None), "cut at {cut}");
            }
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse(&buf, Versions::Any), Ok(Some((expected, len))));
        }
    }

    #[test]
    fn random_bytes_never_panic_and_never_overrun() {
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        for _ in 0..20_000 {
            let (mut buf, _) = rng.header();
            // Flip, cut or append at random.
            for _ in 0..rng.below(4) {
                let at = rng.below(buf.len() as u64) as usize;
                match rng.below(3) {
                    0 => buf[at] = rng.next() as u8,
                    1 => buf.truncate(at),
                    _ => buf.insert(at, rng.next() as u8),
                }
                if buf.is_empty() {
                    break;
                }
            }
            if let Ok(Some((_, len))) = parse(&buf, Versions::Any) {
                assert!(len <= buf.len());
            }
        }
    }
}
