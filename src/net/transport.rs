//! What a connection's socket carries: plain TCP, or TLS records that its
//! session encrypts and decrypts. The connection (`net::conn`) reads and
//! writes through this, so nothing above it has a TLS branch.

use std::fs::File;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// What the bytes on the socket are.
#[derive(Debug)]
pub(crate) enum Transport {
    Plain,
    /// TLS records: the session decrypts what is read and encrypts what
    /// is written; `info` is made once the handshake is done.
    Tls {
        session: Box<crate::tls::Session>,
        info: Option<Arc<crate::tls::Info>>,
    },
}

impl Transport {
    pub(crate) fn wants_write(&self) -> bool {
        matches!(self, Transport::Tls { session, .. } if session.wants_write())
    }

    /// Writes (or, over TLS, encrypts and writes) what it takes of
    /// `slices` without blocking; the bytes taken.
    pub(crate) fn send(
        &mut self,
        stream: &TcpStream,
        slices: &[io::IoSlice<'_>],
    ) -> io::Result<usize> {
        match self {
            Transport::Plain => (&*stream).write_vectored(slices),
            Transport::Tls { session, .. } => session.send(stream, slices),
        }
    }

    /// Over TLS, writes the encrypted bytes waiting: `Ok(true)` once none
    /// do.
    pub(crate) fn push(&mut self, stream: &TcpStream) -> io::Result<bool> {
        match self {
            Transport::Plain => Ok(true),
            Transport::Tls { session, .. } => session.push(stream),
        }
    }

    /// Sends up to `len` bytes of `file` from `offset` through the
    /// session, a chunk at a time (sendfile(2) cannot encrypt): one chunk
    /// in memory here, at most the session's limit there. Returns the
    /// bytes sent; fewer than `len` when the socket is full.
    pub(crate) fn send_file_at(
        &mut self,
        stream: &TcpStream,
        file: &File,
        offset: u64,
        len: u64,
    ) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut chunk = vec![0u8; crate::tls::session::OUTPUT_LIMIT];
        let mut sent = 0u64;
        while sent < len {
            let want = usize::try_from(len - sent)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            let got = file.read_at(&mut chunk[..want], offset + sent)?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            match self.send(stream, &[io::IoSlice::new(&chunk[..got])]) {
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }
}
