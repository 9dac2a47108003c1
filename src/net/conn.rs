//! One client connection: its socket, the bytes read but not yet parsed, the
//! request being assembled, and response bytes not yet written. A `Conn` is
//! owned by its IO thread, or lent to an app thread while its request runs.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use super::body::Body;
use super::transport::Transport;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use super::reader::RequestError;
use super::reader::{RequestReader, Step};
use crate::http::{response, Head, Limits};

/// Slices one `write_or_queue` writes at once from the stack (what is
/// queued, and the parts); more parts are copied and flushed.
const WRITEV_PARTS: usize = 8;

/// Size of each IO thread's read scratch buffer: bytes read per pass.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The most a connection buffers of what its client sent and no request
/// has used yet: one head at its limit plus one read. Past it the
/// connection is not read (the client's pipelined requests wait in the
/// kernel's socket buffers, and then in the client), so a client that
/// pipelines without reading its responses costs a bounded amount of
/// memory. Content-Length bodies go straight into the request's body and
/// do not count.
pub fn input_cap(limits: &Limits) -> usize {
    limits.max_head_bytes.saturating_add(READ_CHUNK_BYTES)
}
/// Sent before the body to a client that sent `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A complete request, as plain Rust data.
#[derive(Debug)]
pub struct Request {
    pub head: Head,
    pub body: Body,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// When its last bytes were read (the access log's durations start
    /// here).
    pub received: Instant,
    /// The PROXY protocol header its connection began with (`peer` is
    /// already the client it names).
    pub proxy: Option<Arc<crate::proxy::Header>>,
    /// Came over TLS: what the handshake established.
    pub tls: Option<Arc<crate::tls::Info>>,
}

impl Request {
    /// Counts and logs this complete request as answered by the server
    /// itself with `status` (a full queue's or a request timeout's 503).
    pub fn log_refused(&self, status: u16) {
        crate::logs::access::rejected(self.peer, Some(&self.head), status, Some(self.received));
    }
}

/// What reading and parsing produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // returned by value, once per request
pub enum Progress {
    /// A complete request is ready for the app.
    Request(Request),
    /// More bytes are needed.
    Pending,
    /// The connection must close without a response: its PROXY protocol
    /// header was required and is missing or malformed.
    Refused,
}

#[derive(Debug)]
pub struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) token: usize,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    reader: RequestReader,
    out: Vec<u8>,
    out_pos: usize,
    /// A file body sent after `out` with sendfile(2): the file and the
    /// bytes of it still to send.
    out_file: Option<(std::fs::File, u64)>,
    /// What becomes of the connection once its response is written.
    fate: Fate,
    /// Requests dispatched on this connection so far.
    pub(crate) served: u64,
    /// Whether the last read pass emptied the socket.
    socket: Socket,
    /// The peer's sending side.
    peer_side: PeerSide,
    /// What epoll reports of the socket.
    interest: Interest,
    /// When the request now being read started (its first byte).
    pub(crate) request_started: Option<Instant>,
    /// When the last byte was read.
    pub(crate) last_read: Instant,
    /// The budget reservation for `out`, while it is parked (see
    /// `net::park`); given back once `out` is written or the connection
    /// dropped.
    parked: Option<super::park::Parked>,
    /// Output spilled to disk past the park budget (see `net::spill`).
    /// While there is one, `out` is empty and everything queued goes to
    /// it; it is sent before `out_file`.
    spill: Option<super::spill::Spill>,
    /// When queued output last made progress.
    pub(crate) last_write: Instant,
    /// When the connection last became idle between requests.
    pub(crate) idle_since: Instant,
    /// Where the connection is with the PROXY protocol.
    proxy: Proxy,
    /// Plain TCP, or TLS over it.
    transport: Transport,
}

/// A connection's PROXY protocol state.
#[derive(Debug, Clone)]
enum Proxy {
    /// Not spoken here: the first bytes are a request.
    Off,
    /// A header of these versions must come first.
    Awaiting(crate::proxy::Versions),
    /// It came: every request on the connection carries it.
    Received(Arc<crate::proxy::Header>),
}

/// What becomes of a connection once its response is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Afterwards {
    /// It is read for its next request.
    KeepAlive,
    /// It closes once the response is written (`Connection: close`,
    /// HTTP/1.0, an error response).
    CloseAfterWrite,
    /// It closes now, without writing more: the peer is gone, the socket
    /// failed, or the response cannot be completed.
    CloseNow,
}

/// A connection's fate. It only ever moves down this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Open,
    CloseAfterWrite,
    CloseNow,
    /// The app took the socket over (rack.hijack): forget it, write nothing.
    Hijacked,
}

/// Whether the last read pass emptied the socket. With edge-triggered
/// epoll, bytes that arrive after it was emptied raise a new edge; before
/// that, they may be waiting without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    MayHoldMore,
    Drained,
}

/// The peer's sending side. Once it shut (EPOLLRDHUP, possibly in the same
/// edge as its last data), reads go on to the end of stream instead of
/// stopping at a short read, so the FIN is seen now, not never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerSide {
    Open,
    Shut,
}

/// What the connection's epoll registration reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interest {
    /// Reads, writes and hang-ups: its IO thread owns it.
    ReadWrite,
    /// Hang-ups only, while an app thread reads it itself (`Kept`).
    HangupOnly,
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
    /// Nothing read: the connection buffers as much as it may
    /// ([`input_cap`]) until a request uses it.
    Capped,
}

impl Conn {
    pub fn new(stream: TcpStream, token: usize, peer: SocketAddr, local: SocketAddr) -> Self {
        let now = Instant::now();
        Conn {
            stream,
            token,
            peer,
            local,
            reader: RequestReader::default(),
            out: Vec::new(),
            out_pos: 0,
            out_file: None,
            fate: Fate::Open,
            served: 0,
            socket: Socket::MayHoldMore,
            peer_side: PeerSide::Open,
            interest: Interest::ReadWrite,
            parked: None,
            spill: None,
            request_started: None,
            last_read: now,
            last_write: now,
            idle_since: now,
            proxy: Proxy::Off,
            transport: Transport::Plain,
        }
    }

    /// The connection speaks TLS (after any PROXY protocol header); its
    /// handshake counts against the header timeout, from now.
    pub fn start_tls(&mut self, tls: Arc<crate::tls::Tls>) {
        self.transport = Transport::Tls {
            session: Box::new(crate::tls::Session::new(tls)),
            info: None,
        };
        self.request_started = Some(Instant::now());
    }

    /// Writes what the socket takes of `slices` now (over TLS: encrypts
    /// what the session takes, writes what the socket takes of that).
    /// Nothing may be queued before them.
    pub(crate) fn send_vectored(&mut self, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.transport.send(&self.stream, slices)
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls { .. })
    }

    /// Still before its first request: a PROXY protocol header or a TLS
    /// handshake is awaited. A timeout then closes without a response.
    pub(crate) fn awaits_preamble(&self) -> bool {
        self.awaits_proxy_header()
            || matches!(&self.transport, Transport::Tls { session, .. } if session.is_handshaking())
    }

    /// Before a close: over TLS, a close_notify, if the socket takes it.
    pub(crate) fn say_goodbye(&mut self) {
        if let Transport::Tls { session, .. } = &mut self.transport {
            session.close(&self.stream);
        }
    }

    /// The connection must begin with a PROXY protocol header of
    /// `versions`; the header timeout counts from now.
    pub fn expect_proxy_header(&mut self, versions: crate::proxy::Versions) {
        self.proxy = Proxy::Awaiting(versions);
        self.request_started = Some(Instant::now());
    }

    /// Still waiting for its PROXY protocol header.
    pub(crate) fn awaits_proxy_header(&self) -> bool {
        matches!(self.proxy, Proxy::Awaiting(_))
    }

    /// Takes the PROXY protocol header off the front of the input, if one
    /// is awaited: `Ok(false)` while more bytes are needed. From then on
    /// the peer is the client the header names.
    fn read_proxy_header(&mut self) -> Result<bool, crate::proxy::HeaderError> {
        let Proxy::Awaiting(versions) = self.proxy else {
            return Ok(true);
        };
        let Some(header) = self
            .reader
            .take_prefix(|buf| crate::proxy::header::parse(buf, versions))?
        else {
            return Ok(false);
        };
        if let Some(addresses) = header.addresses {
            self.peer = addresses.source;
        }
        self.proxy = Proxy::Received(Arc::new(header));
        // The first request's header timeout starts with its first byte.
        self.request_started = self.reader.has_buffered().then(Instant::now);
        Ok(true)
    }

    /// Decides what happens after the response; a later decision can only
    /// make it end sooner (a close is never undone).
    pub fn settle(&mut self, afterwards: Afterwards) {
        let fate = match afterwards {
            Afterwards::KeepAlive => Fate::Open,
            Afterwards::CloseAfterWrite => Fate::CloseAfterWrite,
            Afterwards::CloseNow => Fate::CloseNow,
        };
        self.fate = self.fate.max(fate);
    }

    /// The app took the socket: the server writes nothing more to it and
    /// forgets it without closing the stream.
    pub(crate) fn forget(&mut self) {
        self.fate = Fate::Hijacked;
    }

    pub(crate) fn is_hijacked(&self) -> bool {
        self.fate == Fate::Hijacked
    }

    /// To be closed (or forgotten) without writing more.
    pub(crate) fn ends_now(&self) -> bool {
        self.fate >= Fate::CloseNow
    }

    /// To be closed once its output is written.
    pub(crate) fn ends_after_write(&self) -> bool {
        self.fate >= Fate::CloseAfterWrite
    }

    /// The peer shut its sending side: read on to the end of stream.
    pub(crate) fn note_peer_shut(&mut self) {
        self.peer_side = PeerSide::Shut;
    }

    /// Stops epoll from reporting the socket readable, while an app
    /// thread reads it itself (if that fails, epoll goes on reporting it:
    /// a spurious wake-up of its IO thread, no more).
    pub(crate) fn disarm(&mut self, epoll: &Epoll, events: EpollFlags) {
        if self.interest == Interest::ReadWrite && self.register(epoll, events).is_ok() {
            self.interest = Interest::HangupOnly;
        }
    }

    /// Reports the socket to epoll again in full (and at once, if it is
    /// readable already); a failure closes the connection.
    pub(crate) fn arm(&mut self, epoll: &Epoll, events: EpollFlags) {
        if self.interest == Interest::ReadWrite {
            return;
        }
        if self.register(epoll, events).is_err() {
            self.settle(Afterwards::CloseNow);
        }
        self.interest = Interest::ReadWrite;
    }

    fn register(&self, epoll: &Epoll, events: EpollFlags) -> nix::Result<()> {
        let mut event = EpollEvent::new(events, self.token as u64);
        epoll.modify(&self.stream, &mut event)
    }

    #[cfg(test)]
    pub(crate) fn is_disarmed(&self) -> bool {
        self.interest == Interest::HangupOnly
    }

    /// No request is being read and nothing is waiting to be written.
    pub fn is_idle(&self) -> bool {
        self.reader.is_idle() && !self.has_output()
    }

    /// Bytes of a next request are already buffered (pipelining).
    pub fn has_buffered_input(&self) -> bool {
        self.reader.has_buffered() || self.socket == Socket::MayHoldMore
    }

    /// Stays open, and bytes of its next request were read along with this
    /// one (a pipelining client): that request can be served without
    /// waiting for the socket.
    pub fn has_pipelined_input(&self) -> bool {
        self.fate == Fate::Open && self.reader.has_buffered()
    }

    /// Answered and ready for its next request with nothing left to do:
    /// all written, kept alive, usable, nothing read ahead.
    pub fn is_quiet(&self) -> bool {
        !self.has_output() && self.fate == Fate::Open && !self.has_buffered_input()
    }

    /// Bytes read and not yet used by a request.
    pub fn buffered_len(&self) -> usize {
        self.reader.buffered_len()
    }

    /// A head was parsed and its body is being read.
    pub fn reading_body(&self) -> bool {
        self.reader.reading_body()
    }

    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
            || self.out_file.is_some()
            || self.spill.is_some()
            || self.transport.wants_write()
    }

    /// Bytes queued in memory and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Reads what the client sent after the request, for an app that reads
    /// from the connection (a Rack 3 stream): first bytes already buffered,
    /// then the socket. `Ok(None)` at end of stream, `Ok(Some(empty))` if
    /// nothing is there yet.
    pub fn read_some(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let buffered = self.reader.take_buffered(max);
        if !buffered.is_empty() {
            return Ok(Some(buffered));
        }
        let mut buf = vec![0; max.clamp(1, READ_CHUNK_BYTES)];
        if let Transport::Tls { session, .. } = &mut self.transport {
            let (n, end) = session.fill(&self.stream, &mut buf, false)?;
            buf.truncate(n);
            return Ok(match end {
                crate::tls::session::End::Eof if n == 0 => None,
                _ => Some(buf),
            });
        }
        match self.stream.read(&mut buf) {
            Ok(0) => Ok(None),
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Some(Vec::new()))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until the socket is readable, like `wait_writable`.
    pub fn wait_readable(
        &self,
        timeout: std::time::Duration,
        wake: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<bool> {
        self.wait_for(nix::poll::PollFlags::POLLIN, timeout, wake)
    }

    /// Queues `len` bytes of `file` (from its current offset) after
    /// everything queued so far.
    pub fn queue_file(&mut self, file: std::fs::File, len: u64) {
        if len > 0 {
            self.out_file = Some((file, len));
        }
    }

    /// Waits until the socket can take more bytes, the deadline passes
    /// (`Ok(false)`), or `wake` becomes readable (`Ok(false)` too: the
    /// caller checks why). Never called on an IO thread.
    pub fn wait_writable(
        &self,
        timeout: std::time::Duration,
        wake: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<bool> {
        self.wait_for(nix::poll::PollFlags::POLLOUT, timeout, wake)
    }

    fn wait_for(
        &self,
        events: nix::poll::PollFlags,
        timeout: std::time::Duration,
        wake: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [
            PollFd::new(self.stream.as_fd(), events),
            PollFd::new(wake, PollFlags::POLLIN),
        ];
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(fds[0].revents().is_some_and(|r| !r.is_empty())),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads what the socket has, up to one scratch buffer's worth, and no
    /// more than keeps the unused input within `cap`. The IO thread lends
    /// its scratch buffer, so an idle connection holds no read buffer of
    /// its own.
    pub fn fill(&mut self, scratch: &mut [u8], cap: usize) -> io::Result<Fill> {
        self.fill_at(scratch, cap, Instant::now())
    }

    /// [`Conn::fill`], with the time its caller read last (an IO thread
    /// reads the clock once per wake-up).
    pub fn fill_at(&mut self, scratch: &mut [u8], cap: usize, now: Instant) -> io::Result<Fill> {
        if self.served == 0
            && self.reader.is_idle()
            && self.peer_side == PeerSide::Open
            && !self.awaits_proxy_header()
            && !self.is_tls()
        {
            if let Some(fill) = self.fill_upgrade(scratch)? {
                return Ok(fill);
            }
        }
        let room = cap.saturating_sub(self.reader.buffered_len());
        if room == 0 {
            // The socket may hold more: read it once a request used some.
            self.socket = Socket::MayHoldMore;
            return Ok(Fill::Capped);
        }
        let len = room.min(scratch.len());
        let scratch = &mut scratch[..len];
        if self.is_tls() {
            return self.fill_tls(scratch, now);
        }
        let mut total = 0;
        while total < scratch.len() {
            let n = match self.stream.read(&mut scratch[total..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.reader.extend(&scratch[..total]);
                self.socket = Socket::MayHoldMore;
                return Ok(Fill::Eof);
            }
            self.last_read = now;
            if self.request_started.is_none() {
                self.request_started = Some(self.last_read);
            }
            let asked = scratch.len() - total;
            total += n;
            if n < asked && self.peer_side == PeerSide::Open {
                // A short read emptied the socket: with edge-triggered
                // epoll, whatever arrives next raises a new edge, so a read
                // that would only say EAGAIN is skipped (as nginx does).
                break;
            }
        }
        self.reader.extend(&scratch[..total]);
        crate::stats::add(crate::stats::BYTES_IN, total as u64);
        self.socket = if total < scratch.len() {
            Socket::Drained
        } else {
            Socket::MayHoldMore
        };
        Ok(if total == scratch.len() {
            Fill::Full
        } else {
            Fill::Drained
        })
    }

    /// [`Conn::fill_at`] over TLS: records are read until the socket has
    /// no more, and their plaintext goes to the request reader.
    fn fill_tls(&mut self, scratch: &mut [u8], now: Instant) -> io::Result<Fill> {
        use crate::tls::session::End;
        let Transport::Tls { session, info } = &mut self.transport else {
            return Ok(Fill::Drained);
        };
        let stop_when_short = self.peer_side == PeerSide::Open;
        let (n, end) = session.fill(&self.stream, scratch, stop_when_short)?;
        if info.is_none() && !session.is_handshaking() {
            *info = Some(Arc::new(crate::tls::Info::of(session)));
            // Handshake done: from now on the connection is idle until its
            // first request's first byte, as a plain one is from accept.
            self.request_started = None;
            self.idle_since = now;
        }
        if n > 0 {
            self.last_read = now;
            self.request_started.get_or_insert(now);
            self.reader.extend(&scratch[..n]);
            crate::stats::add(crate::stats::BYTES_IN, n as u64);
        }
        self.socket = match end {
            End::Drained => Socket::Drained,
            _ => Socket::MayHoldMore,
        };
        Ok(match end {
            End::Drained => Fill::Drained,
            End::Full => Fill::Full,
            End::Eof => Fill::Eof,
            End::PlainHttp => {
                // Answered in plain text, as nginx does, and closed. The
                // request is read first (and dropped): closing with unread
                // input would reset the connection and lose the answer.
                while matches!(self.stream.read(scratch), Ok(n) if n > 0) {}
                self.transport = Transport::Plain;
                self.queue_error(400, "The plain HTTP request was sent to HTTPS port\n");
                Fill::Drained
            }
        })
    }

    /// The first request of a connection is peeked at first: if it asks to
    /// upgrade (a WebSocket handshake), exactly its bytes are read, and
    /// what the client sent after it (its first frames) stays in the
    /// socket for the app that takes the socket over with `rack.hijack`,
    /// which must get a real IO and so cannot be handed our buffer.
    /// `None`: not such a request; read as usual. One extra syscall per
    /// new connection; later requests on a kept-alive connection are read
    /// without a peek (browsers open a new connection for a WebSocket).
    fn fill_upgrade(&mut self, scratch: &mut [u8]) -> io::Result<Option<Fill>> {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        let peeked = match recv(self.stream.as_raw_fd(), scratch, MsgFlags::MSG_PEEK) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Most first requests do not upgrade: a scan is cheaper than a parse.
        if !scratch[..peeked]
            .windows(6)
            .any(|w| w.eq_ignore_ascii_case(b"pgrade"))
        {
            return Ok(None);
        }
        let Ok(Some((head, len))) = crate::http::parse_head(&scratch[..peeked], &Limits::default())
        else {
            return Ok(None);
        };
        if !head.asks_upgrade() {
            return Ok(None);
        }
        let body = match head.body {
            crate::http::request::BodyFraming::Length(n) => usize::try_from(n).unwrap_or(0),
            crate::http::request::BodyFraming::Chunked => 0,
        };
        let want = (len + body).min(peeked);
        let mut got = 0;
        while got < want {
            match self.stream.read(&mut scratch[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.last_read = Instant::now();
        self.request_started.get_or_insert(self.last_read);
        self.reader.extend(&scratch[..got]);
        // Not drained: the socket may hold more. They are the app's if it
        // takes the socket over; if it answers normally instead, they are
        // the next request, and epoll would not report them again.
        self.socket = Socket::MayHoldMore;
        Ok(Some(Fill::Drained))
    }

    /// Advances the request being read with the buffered bytes; queues
    /// `100 Continue` when the client waits for it.
    pub fn advance(&mut self, limits: &Limits) -> Result<Progress, RequestError> {
        match self.read_proxy_header() {
            Ok(true) => {}
            Ok(false) => return Ok(Progress::Pending),
            Err(e) => {
                crate::proxy::note_refused(self.peer, &e);
                self.settle(Afterwards::CloseNow);
                return Ok(Progress::Refused);
            }
        }
        loop {
            match self.reader.advance(limits)? {
                Step::Continue => self.queue(CONTINUE.to_vec()),
                Step::Pending => return Ok(Progress::Pending),
                Step::Request(head, body) => {
                    let next_started = self.reader.has_buffered().then(Instant::now);
                    self.request_started = next_started;
                    let (peer, local) = (self.peer, self.local);
                    let proxy = match &self.proxy {
                        Proxy::Received(header) => Some(header.clone()),
                        _ => None,
                    };
                    return Ok(Progress::Request(Request {
                        head,
                        body,
                        peer,
                        local,
                        // When its last bytes were read: one clock read
                        // less per request.
                        received: self.last_read,
                        proxy,
                        tls: match &self.transport {
                            Transport::Tls { info, .. } => info.clone(),
                            Transport::Plain => None,
                        },
                    }));
                }
            }
        }
    }

    /// Writes `parts` now, without blocking, if nothing else is queued
    /// before them; queues (copies) what the socket did not take. For
    /// callers that hold borrowed bytes only for the moment (a Ruby
    /// string, while the GVL is held).
    pub fn write_or_queue(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        if self.out_file.is_some() || self.spill.is_some() || parts.len() >= WRITEV_PARTS {
            // Rare: after a file or spilled output, or many parts.
            self.append(parts);
            return self.flush().map(|_| ());
        }
        // What is queued goes first, in the same writev(2); no slice
        // array on the heap.
        let queued = self.out.len() - self.out_pos;
        let mut slices = [io::IoSlice::new(&[]); WRITEV_PARTS];
        slices[0] = io::IoSlice::new(&self.out[self.out_pos..]);
        for (slice, part) in slices[1..].iter_mut().zip(parts) {
            *slice = io::IoSlice::new(part);
        }
        let slices = &slices[usize::from(queued == 0)..=parts.len()];
        let mut written = loop {
            match self.transport.send(&self.stream, slices) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(e) => return Err(e),
            }
        };
        if written > 0 {
            self.last_write = Instant::now();
        }
        let from_queue = written.min(queued);
        self.out_pos += from_queue;
        written -= from_queue;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            self.parked = None;
        }
        for part in parts {
            let skip = written.min(part.len());
            written -= skip;
            self.out.extend_from_slice(&part[skip..]);
        }
        Ok(())
    }

    /// Appends bytes after anything queued, without writing.
    pub fn append(&mut self, parts: &[&[u8]]) {
        if let Some(spill) = &mut self.spill {
            return spill.append(parts);
        }
        if !self.has_output() {
            self.out.clear();
            self.out_pos = 0;
        }
        for part in parts {
            self.out.extend_from_slice(part);
        }
    }

    /// Queues bytes to write after anything already queued.
    pub fn queue(&mut self, bytes: Vec<u8>) {
        if let Some(spill) = &mut self.spill {
            return spill.append(&[&bytes]);
        }
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
        crate::logs::access::rejected(self.peer, None, status, self.request_started);
        self.queue(response::simple(status, message, false));
        self.settle(Afterwards::CloseAfterWrite);
        self.reader.clear();
    }

    /// Writes queued bytes, then any queued file. `Ok(true)` once
    /// everything is written.
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.out_pos < self.out.len() {
            let slice = [io::IoSlice::new(&self.out[self.out_pos..])];
            match self.transport.send(&self.stream, &slice) {
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
        self.parked = None;
        if let Some(spill) = &mut self.spill {
            let before = spill.sent();
            let done = match &mut self.transport {
                Transport::Plain => spill.send(&self.stream)?,
                tls => spill.send_through(tls, &self.stream)?,
            };
            if spill.sent() > before {
                self.last_write = Instant::now();
            }
            if !done {
                return Ok(false);
            }
            self.spill = None;
        }
        if !self.send_file()? {
            return Ok(false);
        }
        let before = self.transport.wants_write();
        let done = self.transport.push(&self.stream)?;
        if before {
            self.last_write = Instant::now();
        }
        Ok(done)
    }

    /// Takes the unsent output off the app thread: parked in memory within
    /// `memory`, else spilled to disk within `disk` (with `rest`, bytes
    /// not queued yet, after it). False if neither budget can take it: the
    /// app thread waits for the client as before.
    pub fn park_or_spill(
        &mut self,
        memory: &std::sync::Arc<super::park::ParkBudget>,
        disk: &std::sync::Arc<super::park::ParkBudget>,
        rest: &[&[u8]],
    ) -> bool {
        let more: usize = rest.iter().map(|p| p.len()).sum();
        if self.spill.is_some() {
            self.append(rest);
            return true;
        }
        if self.park(memory, more) {
            self.append(rest);
            return true;
        }
        if self.out_file.is_some() {
            return false; // a file body already follows the bytes in memory
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(rest.len() + 1);
        parts.push(&self.out[self.out_pos..]);
        parts.extend_from_slice(rest);
        match super::spill::Spill::new(disk, &parts) {
            Ok(Some(spill)) => {
                self.spill = Some(spill);
                self.out = Vec::new();
                self.out_pos = 0;
                self.parked = None;
                true
            }
            Ok(None) => {
                disk.fell_short();
                false
            }
            Err(_) => false,
        }
    }

    /// Reserves budget for the output not yet written, plus `more` bytes
    /// about to be queued, so they can wait here for a slow client instead
    /// of holding an app thread.
    pub fn park(&mut self, budget: &std::sync::Arc<super::park::ParkBudget>, more: usize) -> bool {
        let pending = self.pending_bytes() + more;
        super::park::Parked::cover(&mut self.parked, budget, pending)
    }

    /// Sends the queued file with sendfile(2): no copy through user space.
    fn send_file(&mut self) -> io::Result<bool> {
        use std::os::fd::AsFd;
        if self.is_tls() {
            // No sendfile(2): the bytes must be encrypted.
            while let Some((file, left)) = &mut self.out_file {
                use std::io::{Seek, SeekFrom};
                let at = file.stream_position()?;
                let sent = self.transport.send_file_at(&self.stream, file, at, *left)?;
                if sent > 0 {
                    file.seek(SeekFrom::Current(sent as i64))?;
                    *left -= sent;
                    self.last_write = Instant::now();
                }
                if *left > 0 {
                    return Ok(false);
                }
                self.out_file = None;
            }
            return Ok(true);
        }
        while let Some((file, left)) = &mut self.out_file {
            let count = usize::try_from(*left).unwrap_or(usize::MAX).min(1 << 30);
            match nix::sys::sendfile::sendfile64(self.stream.as_fd(), file.as_fd(), None, count) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    *left -= n as u64;
                    self.last_write = Instant::now();
                    if *left == 0 {
                        self.out_file = None;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A server-side connection (non-blocking) and its client, over
    /// loopback: for the unit tests of everything that reads or writes one.
    pub(crate) fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let local = server.local_addr().unwrap();
        (Conn::new(server, 0, peer, local), client)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    fn budget(limit: usize) -> std::sync::Arc<crate::net::park::ParkBudget> {
        let budget = std::sync::Arc::new(crate::net::park::ParkBudget::default());
        budget.set_limit(limit);
        budget
    }

    /// Flushes until all is written, reading everything on the client.
    fn drain_to_client(conn: &mut Conn, client: &mut TcpStream, expected: usize) -> Vec<u8> {
        use std::io::Read;
        client.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < expected && Instant::now() < deadline {
            let _ = conn.flush().unwrap();
            match client.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn output_past_the_memory_budget_spills_to_disk_and_keeps_its_order() {
        let (mut conn, mut client) = pair();
        let (memory, disk) = (budget(10), budget(1 << 20));
        conn.append(&[&[b'a'; 100]]);
        assert!(conn.park_or_spill(&memory, &disk, &[b"bbb"]));
        assert_eq!(memory.used(), 0, "nothing parked in memory");
        assert_eq!(disk.used(), 103);
        assert_eq!(conn.pending_bytes(), 0, "no bytes left in memory");
        conn.queue(b"ccc".to_vec());
        conn.append(&[b"dd"]);
        assert_eq!(disk.used(), 108, "later output goes to the spill too");
        let got = drain_to_client(&mut conn, &mut client, 108);
        let mut want = vec![b'a'; 100];
        want.extend_from_slice(b"bbbcccdd");
        assert_eq!(got, want);
        assert!(conn.flush().unwrap());
        assert_eq!(disk.used(), 0, "the disk is given back once sent");
        assert!(!conn.has_output());
    }

    #[test]
    fn output_past_both_budgets_stays_with_the_app_thread() {
        let (mut conn, _client) = pair();
        let (memory, disk) = (budget(10), budget(50));
        conn.append(&[&[b'a'; 100]]);
        assert!(!conn.park_or_spill(&memory, &disk, &[]));
        assert_eq!((memory.used(), disk.used()), (0, 0));
        assert_eq!(conn.pending_bytes(), 100, "nothing moved");
    }

    #[test]
    fn a_spill_past_the_disk_budget_ends_the_connection() {
        let (mut conn, _client) = pair();
        let (memory, disk) = (budget(0), budget(150));
        conn.append(&[&[b'a'; 100]]);
        assert!(conn.park_or_spill(&memory, &disk, &[]));
        conn.queue(vec![b'b'; 100]);
        assert!(conn.flush().is_err(), "the spill could not take it all");
    }

    #[test]
    fn pipelined_input_is_buffered_only_up_to_the_cap() {
        let (mut conn, mut client) = pair();
        client.write_all(&GET.repeat(4000)).unwrap();
        let mut scratch = vec![0; READ_CHUNK_BYTES];
        let cap = 10 * GET.len() + 5;
        let mut fills = Vec::new();
        for _ in 0..4 {
            fills.push(conn.fill(&mut scratch, cap).unwrap());
            assert!(
                conn.buffered_len() <= cap,
                "{} > {cap}",
                conn.buffered_len()
            );
        }
        assert_eq!(
            fills,
            [Fill::Full, Fill::Capped, Fill::Capped, Fill::Capped]
        );
        assert!(conn.has_buffered_input(), "more is waiting in the socket");
        // A request used makes room for exactly that much more.
        let limits = Limits::default();
        assert!(matches!(conn.advance(&limits), Ok(Progress::Request(_))));
        assert_eq!(conn.buffered_len(), cap - GET.len());
        assert_eq!(conn.fill(&mut scratch, cap).unwrap(), Fill::Full);
        assert_eq!(conn.buffered_len(), cap);
    }

    #[test]
    fn the_default_cap_holds_a_head_at_its_limit() {
        let limits = Limits::default();
        assert!(input_cap(&limits) > limits.max_head_bytes);
        assert!(input_cap(&limits) <= 2 * (limits.max_head_bytes + READ_CHUNK_BYTES));
    }

    #[test]
    fn a_fin_that_came_with_the_data_is_seen_once_the_peer_shut() {
        for peer_shut in [false, true] {
            let (mut conn, mut client) = pair();
            client.write_all(GET).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            if peer_shut {
                conn.note_peer_shut();
            }
            let mut scratch = vec![0; READ_CHUNK_BYTES];
            let mut fill = conn.fill(&mut scratch, usize::MAX).unwrap();
            while fill == Fill::Full {
                fill = conn.fill(&mut scratch, usize::MAX).unwrap();
            }
            // Without the hang-up flag the short read stops the pass and
            // the FIN is never read: epoll raises no new edge for it.
            let expected = if peer_shut { Fill::Eof } else { Fill::Drained };
            assert_eq!(fill, expected);
            assert_eq!(conn.buffered_len(), GET.len());
        }
    }
}
