//! Why a request was refused, and the one place that maps each reason to the
//! HTTP status the client gets.

use thiserror::Error;

/// A request the server will not serve. "Need more bytes" is not an error:
/// the parser reports it as `Ok(None)`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request-target longer than {0} bytes")]
    UriTooLong(usize),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("transfer coding not implemented: {0}")]
    UnsupportedTransferCoding(String),
}

impl ParseError {
    /// The status code answered for this error. The connection is always
    /// closed after it.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::Malformed(_) => 400,
            ParseError::UriTooLong(_) => 414,
            ParseError::HeadTooLarge(_) | ParseError::TooManyHeaders(_) => 431,
            ParseError::BodyTooLarge(_) => 413,
            ParseError::UnsupportedTransferCoding(_) => 501,
        }
    }
}
