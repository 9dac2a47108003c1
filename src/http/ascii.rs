//! Numbers and addresses as ASCII, written into the caller's stack buffer:
//! no allocation and no formatting machinery on the request path.

use std::net::Ipv4Addr;

/// `n` in lowercase hex (a chunk's size line).
pub fn hex(mut n: u64, digits: &mut [u8; 16]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// An IPv4 address in dotted decimal (`REMOTE_ADDR`, once per request).
pub fn ipv4(ip: Ipv4Addr, text: &mut [u8; 15]) -> &[u8] {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    &text[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(10, 99, 100, 9),
            Ipv4Addr::new(198, 51, 100, 7),
        ] {
            assert_eq!(ipv4(ip, &mut [0; 15]), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn sizes_read_as_lowercase_hex() {
        for n in [0u64, 9, 10, 255, 4096, 0xdead_beef, u64::MAX] {
            assert_eq!(hex(n, &mut [0; 16]), format!("{n:x}").as_bytes());
        }
    }
}
