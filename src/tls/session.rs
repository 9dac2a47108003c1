//! One connection's TLS: the handshake, then records in and out. The
//! connection owns the socket and hands it in for each step; a session
//! never blocks (the socket is non-blocking, and "would block" comes back
//! as it does from the socket itself).

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::server::{Acceptor, ServerConnection};
use rustls_pki_types::CertificateDer;

use super::Tls;

/// The most encrypted output a session holds before it takes no more
/// plaintext: what one connection's TLS costs at most on top of the
/// connection's own queue.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Where a session is.
enum State {
    /// Waiting for the whole ClientHello.
    Hello {
        acceptor: Box<Acceptor>,
        tls: Arc<Tls>,
    },
    /// Handshaking or open.
    Open(Box<ServerConnection>),
    /// The handshake failed; nothing more is read or written.
    Failed,
}

pub struct Session {
    state: State,
    /// Whether a byte has come from the client yet (the first one tells a
    /// plain HTTP request from a TLS handshake).
    heard: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Hello { .. } => "hello",
            State::Open(ref c) if c.is_handshaking() => "handshaking",
            State::Open(_) => "open",
            State::Failed => "failed",
        };
        write!(f, "Session({state})")
    }
}

/// The socket as rustls reads it, noting whether a read got less than it
/// asked for (the socket is empty now).
struct Noting<'a> {
    sock: &'a TcpStream,
    short: bool,
}

impl Read for Noting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&*self.sock).read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// How a [`Session::fill`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The socket has nothing more now, and every plaintext byte was
    /// given.
    Drained,
    /// The buffer is full; more may be waiting (in the session or the
    /// socket).
    Full,
    /// The client closed (with or without close_notify).
    Eof,
    /// The first bytes are a plain HTTP request, not a TLS handshake.
    PlainHttp,
}

impl Session {
    pub fn new(tls: Arc<Tls>) -> Session {
        Session {
            state: State::Hello {
                acceptor: Box::default(),
                tls,
            },
            heard: false,
        }
    }

    /// Still in the handshake (no request can be read yet).
    pub fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Hello { .. } | State::Failed => true,
            State::Open(conn) => conn.is_handshaking(),
        }
    }

    /// Encrypted bytes wait to be written to the socket.
    pub fn wants_write(&self) -> bool {
        matches!(&self.state, State::Open(conn) if conn.wants_write())
    }

    /// The client's certificate, once the handshake verified it.
    pub fn peer_cert(&self) -> Option<&CertificateDer<'static>> {
        match &self.state {
            State::Open(conn) if !conn.is_handshaking() => conn.peer_certificates()?.first(),
            _ => None,
        }
    }

    /// The SNI name the client asked for.
    pub fn server_name(&self) -> Option<&str> {
        match &self.state {
            State::Open(conn) => conn.server_name(),
            _ => None,
        }
    }

    /// Reads from the socket and decrypts into `out` until the socket has
    /// nothing more, `out` is full, or the client closed. Handshake
    /// replies are written as they come (what the socket does not take
    /// waits: [`Session::wants_write`]). An `InvalidData` error is a
    /// failed handshake or a bad record; the alert for it was sent if the
    /// socket took it.
    ///
    /// `stop_when_short`: a read that got less than it asked for emptied
    /// the socket, so the pass ends there without the read that would
    /// only say EAGAIN (edge-triggered epoll reports the next arrival).
    /// False once the peer shut its side: then reads go on to the end.
    pub fn fill(
        &mut self,
        sock: &TcpStream,
        out: &mut [u8],
        stop_when_short: bool,
    ) -> io::Result<(usize, End)> {
        if !self.heard {
            let mut first = [0u8; 1];
            match sock.peek(&mut first) {
                Ok(0) => return Ok((0, End::Eof)),
                Ok(_) if first[0].is_ascii_alphabetic() => return Ok((0, End::PlainHttp)),
                Ok(_) => self.heard = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((0, End::Drained)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut total = 0;
        let mut emptied = false;
        loop {
            if let State::Open(conn) = &mut self.state {
                while total < out.len() {
                    match conn.reader().read(&mut out[total..]) {
                        Ok(0) => return Ok((total, End::Eof)),
                        Ok(n) => total += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // Closed without close_notify: the end, as for TCP.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            return Ok((total, End::Eof))
                        }
                        Err(e) => return Err(e),
                    }
                }
                if total == out.len() {
                    return Ok((total, End::Full));
                }
            }
            if emptied {
                return Ok((total, End::Drained));
            }
            let mut reader = Noting { sock, short: false };
            let read = match &mut self.state {
                State::Hello { acceptor, .. } => acceptor.read_tls(&mut reader),
                State::Open(conn) => conn.read_tls(&mut reader),
                State::Failed => return Err(io::ErrorKind::InvalidData.into()),
            };
            match read {
                Ok(0) => return Ok((total, End::Eof)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((total, End::Drained))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            emptied = reader.short && stop_when_short;
            self.process(sock)?;
        }
    }

    /// Moves the handshake or the records on with what was read.
    fn process(&mut self, sock: &TcpStream) -> io::Result<()> {
        let mut writer = sock;
        match &mut self.state {
            State::Hello { acceptor, tls } => match acceptor.accept() {
                Ok(None) => Ok(()),
                Ok(Some(accepted)) => {
                    let config = tls.config_for(&accepted.client_hello());
                    match accepted.into_connection(config) {
                        Ok(mut conn) => {
                            conn.set_buffer_limit(Some(OUTPUT_LIMIT));
                            self.state = State::Open(Box::new(conn));
                            self.push(sock).map(|_| ())
                        }
                        Err((error, mut alert)) => {
                            let _ = alert.write_all(&mut writer);
                            self.state = State::Failed;
                            Err(io::Error::new(io::ErrorKind::InvalidData, error))
                        }
                    }
                }
                Err((error, mut alert)) => {
                    let _ = alert.write_all(&mut writer);
                    self.state = State::Failed;
                    Err(io::Error::new(io::ErrorKind::InvalidData, error))
                }
            },
            State::Open(conn) => match conn.process_new_packets() {
                Ok(_) => self.push(sock).map(|_| ()),
                Err(error) => {
                    // rustls queued the alert; send it if the socket takes it.
                    let _ = self.push(sock);
                    self.state = State::Failed;
                    Err(io::Error::new(io::ErrorKind::InvalidData, error))
                }
            },
            State::Failed => Err(io::ErrorKind::InvalidData.into()),
        }
    }

    /// Writes the encrypted bytes waiting, as far as the socket takes them:
    /// `Ok(true)` once none wait.
    pub fn push(&mut self, sock: &TcpStream) -> io::Result<bool> {
        let State::Open(conn) = &mut self.state else {
            return Ok(true);
        };
        let mut writer = sock;
        while conn.wants_write() {
            match conn.write_tls(&mut writer) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Encrypts as much of `parts` as the session takes (up to
    /// [`OUTPUT_LIMIT`] waiting) and writes what the socket takes. Returns
    /// the plaintext bytes taken; `WouldBlock` if none were.
    pub fn send(&mut self, sock: &TcpStream, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        self.push(sock)?;
        let State::Open(conn) = &mut self.state else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let taken = conn.writer().write_vectored(parts)?;
        self.push(sock)?;
        if taken == 0 && parts.iter().any(|p| !p.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Says goodbye (close_notify) before the connection closes, if the
    /// socket takes it now.
    pub fn close(&mut self, sock: &TcpStream) {
        if let State::Open(conn) = &mut self.state {
            if !conn.is_handshaking() {
                conn.send_close_notify();
                let _ = self.push(sock);
            }
        }
    }
}
