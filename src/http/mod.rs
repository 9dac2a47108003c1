//! HTTP/1.1 without Ruby: turn bytes into a [`Request`], and a status plus
//! headers into response bytes. Everything here is plain data and functions,
//! unit-tested without sockets or a VM.

pub mod ascii;
pub mod body_framer;
pub mod chunked;
pub mod date;
pub mod error;
pub mod request;
pub mod response;
pub mod syntax;

pub use error::ParseError;
pub use request::{parse_head, Head, Limits, Version};
pub use response::{Framing, ResponseHead};
