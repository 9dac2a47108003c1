//! Character classes of HTTP's grammar (RFC 9110 §5.6), shared by the
//! request parser, the chunked decoder and the response serializer.

/// `tchar`: a character of a token (field names, methods, codings).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A control character other than HTAB: never allowed in a field value,
/// a chunk extension or a trailer (RFC 9110 §5.5).
pub fn is_forbidden_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}
