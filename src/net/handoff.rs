//! The cross-thread step: a complete request and its connection go to an
//! app thread as a [`Job`]; the connection comes back to its IO thread by
//! that thread's [`Mailbox`]. [`Shared`] is what every thread of an engine
//! reads.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::conn::{Afterwards, Conn, Fill, Progress, Request};
use crate::http::Limits;

/// State every thread of the engine shares.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set once by `stop`: stop accepting, finish what is in flight.
    pub stopping: AtomicBool,
    /// The stop is for a hot restart: leave the listening sockets open
    /// (not shut down), so the re-executed process takes them over with
    /// what waits in their backlogs.
    pub keep_listening: AtomicBool,
    /// Requests lent to app threads and not yet handed back.
    pub in_flight: AtomicUsize,
    /// Queued jobs the watchdog may answer (with a request timeout).
    pub claims: super::queue::Claims<Job>,
    /// Response bytes parked with IO threads, and their budget.
    pub parked: Arc<super::park::ParkBudget>,
    /// Response bytes spilled to disk past `parked`, and their budget.
    pub spilled: Arc<super::park::ParkBudget>,
    /// A thread of the engine that panicked or failed.
    pub faults: Arc<crate::process::supervise::Faults>,
}

/// The epoll events a connection is registered for while its IO thread
/// owns it.
pub(crate) const CONN_EVENTS: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLOUT)
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

/// An IO thread's face to the app threads: its epoll instance, and where
/// they send a connection back.
#[derive(Debug)]
pub struct Mailbox {
    pub(crate) epoll: Epoll,
    tx: Sender<Box<Conn>>,
    pub(crate) rx: Receiver<Box<Conn>>,
    pub(crate) wake: EventFd,
    /// A wake-up is already pending, so senders need not write the eventfd.
    pub(crate) notified: AtomicBool,
    /// Someone may be in epoll_wait on it, to be woken when a connection
    /// comes home. Always, for a loop with a thread of its own; for one
    /// app threads poll (`net::loops`), only while one of them waits.
    pub(crate) polling: AtomicBool,
}

impl Mailbox {
    pub(crate) fn new() -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Mailbox {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            tx,
            rx,
            wake,
            notified: AtomicBool::new(false),
            polling: AtomicBool::new(true),
        })
    }

    fn send(&self, conn: Box<Conn>) {
        // The receiver lives as long as the IO thread that owns `self`.
        let _ = self.tx.send(conn);
        // Against the poller's store of `polling` and its look at the
        // channel (`IoThread::wait_polled`): one of the two sees the other.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.polling.load(Ordering::Relaxed) && !self.notified.swap(true, Ordering::AcqRel) {
            self.poke();
        }
    }

    /// Stops epoll from waking the IO thread when a connection an app
    /// thread reads itself becomes readable. It is armed again when it
    /// comes back (`IoThread::take_mail`), which reports it if readable.
    fn disarm(&self, conn: &mut Conn) {
        conn.disarm(&self.epoll, EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET);
    }

    /// The IO thread has events waiting (other connections, the mailbox):
    /// polled without taking them, as an epoll instance is readable while
    /// its ready list is not empty.
    pub(crate) fn io_pending(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.epoll.0.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
    }

    /// Wakes the IO thread. A full eventfd counter is still a wake-up.
    pub(crate) fn poke(&self) {
        let _ = self.wake.write(1);
    }
}

/// One request for an app thread, with the connection it came on.
#[derive(Debug)]
pub struct Job {
    pub request: Request,
    /// Always `Some` until the job is answered or dropped.
    conn: Option<Box<Conn>>,
    home: Arc<Mailbox>,
    shared: Arc<Shared>,
}

impl Job {
    pub(crate) fn new(
        request: Request,
        conn: Box<Conn>,
        home: Arc<Mailbox>,
        shared: Arc<Shared>,
    ) -> Self {
        Job {
            request,
            conn: Some(conn),
            home,
            shared,
        }
    }

    /// The server is shutting down: answer with `Connection: close`.
    pub fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }

    /// Its connection must not be kept after this response: the server
    /// stops, or drains (`crate::stats::draining`).
    pub fn closing(&self) -> bool {
        self.stopping() || crate::stats::draining()
    }

    /// Like [`Job::finish`], but the connection stays with this thread as
    /// a [`Kept`], to read its next request itself, when that request is
    /// already buffered (pipelined; responses may still be queued), or
    /// when it is left quiet (all written, kept alive, nothing read ahead)
    /// while it is the only one lent to an app thread.
    pub fn finish_or_keep(mut self, afterwards: Afterwards) -> Option<Kept> {
        let mut conn = self.conn.take()?;
        conn.settle(afterwards);
        let keep = !self.stopping()
            && (conn.has_pipelined_input()
                || self.shared.in_flight.load(Ordering::Relaxed) == 1 && conn.is_quiet());
        if !keep {
            self.home.send(conn);
            return None;
        }
        self.home.disarm(&mut conn);
        Some(Kept {
            conn: Some(conn),
            home: self.home.clone(),
            shared: self.shared.clone(),
        })
    }

    /// Parks the connection's unsent output with its IO thread, within the
    /// engine's budget (see `net::park`): true if it all fits, and the app
    /// thread need not wait for the client.
    pub fn park(&mut self) -> bool {
        let (memory, disk) = self.park_budgets();
        self.conn
            .as_deref_mut()
            .is_some_and(|conn| conn.park_or_spill(&memory, &disk, &[]))
    }

    /// The engine's budgets for output parked in memory and spilled to
    /// disk.
    pub fn park_budgets(&self) -> (Arc<super::park::ParkBudget>, Arc<super::park::ParkBudget>) {
        (self.shared.parked.clone(), self.shared.spilled.clone())
    }

    /// The connection, for writing a response in parts (streaming bodies,
    /// early hints). `None` once answered.
    pub fn conn_mut(&mut self) -> Option<&mut Conn> {
        self.conn.as_deref_mut()
    }

    /// Hands the connection back to its IO thread once the response is
    /// written or queued; whatever is still unwritten the IO thread
    /// finishes, and then does what `afterwards` says.
    pub fn finish(mut self, afterwards: Afterwards) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        conn.settle(afterwards);
        self.home.send(conn);
    }

    /// rack.hijack: returns a duplicate of the socket for the app, and the
    /// IO thread forgets the connection without closing the TCP stream.
    pub fn hijack(mut self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        if self.conn.as_ref().is_some_and(|c| c.is_tls()) {
            return Err(tls_hijack_refused());
        }
        let Some(mut conn) = self.conn.take() else {
            return Err(io::Error::other("connection already answered"));
        };
        let dup = conn.stream.as_fd().try_clone_to_owned();
        conn.forget();
        self.home.send(conn);
        dup
    }

    /// Takes the connection back out (the IO thread answers it itself).
    pub(crate) fn take_conn(mut self) -> Option<Box<Conn>> {
        self.conn.take()
    }
}

/// Why `rack.hijack` fails on a TLS connection: the app would get a socket
/// carrying encrypted records, and TLS state it cannot continue.
pub(crate) fn tls_hijack_refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "rack.hijack is not available on a TLS connection (ssl:// bind): the socket carries \
         encrypted records. Stream the response with a Rack 3 streaming body (a body that \
         responds to #call), which works over TLS",
    )
}

/// A connection an app thread kept after answering on it. A keep-alive
/// client's next request usually follows within microseconds; reading it
/// here saves both hand-offs (to the IO thread and back) that it would
/// otherwise cost. Dropped, it goes home to its IO thread.
#[derive(Debug)]
pub struct Kept {
    /// Always `Some` until it goes home or becomes a job.
    conn: Option<Box<Conn>>,
    home: Arc<Mailbox>,
    shared: Arc<Shared>,
}

impl Kept {
    /// The next request, if it was read along with the last one (a
    /// pipelining client): parsed from the buffer, without a syscall, so
    /// the caller need not leave its lock for it. `Err(Some)`: no complete
    /// request is buffered; `Err(None)`: the connection went home (a bad
    /// request, for the IO thread to answer).
    pub fn buffered_request(mut self, limits: &Limits) -> Result<Job, Option<Kept>> {
        let Some(mut conn) = self.conn.take() else {
            return Err(None);
        };
        if !conn.has_pipelined_input() {
            self.conn = Some(conn);
            return Err(Some(self));
        }
        match conn.advance(limits) {
            Ok(Progress::Request(request)) => {
                conn.served += 1;
                Ok(Job::new(
                    request,
                    conn,
                    self.home.clone(),
                    self.shared.clone(),
                ))
            }
            Ok(Progress::Pending) => {
                self.conn = Some(conn);
                Err(Some(self))
            }
            // Settled to close now, or an error queued: the IO thread
            // finishes it.
            Ok(Progress::Refused) => {
                self.home.send(conn);
                Err(None)
            }
            Err(e) => {
                conn.queue_error(e.status(), &format!("{e}\n"));
                self.home.send(conn);
                Err(None)
            }
        }
    }

    /// Reads the connection (without blocking, yielding the CPU between
    /// tries) until a complete request is there, for at most `spin`, until
    /// its IO thread has other work (it would wait for this core: a yield
    /// does not guarantee it a turn), or until `give_up` says so (requests
    /// are queued, Ruby wants the thread). Responses held back for a
    /// pipelined batch are written first once no complete request is
    /// buffered. Anything else (a partial request, a bad one, the peer
    /// closing) goes home to the IO thread, which deals with it as usual.
    pub fn next_request(
        mut self,
        spin: Duration,
        limits: &Limits,
        scratch: &mut [u8],
        mut give_up: impl FnMut() -> bool,
    ) -> Option<Job> {
        let mut conn = self.conn.take()?;
        let until = Instant::now() + spin;
        let mut last_fill = None;
        loop {
            match conn.advance(limits) {
                Ok(Progress::Request(request)) => {
                    conn.served += 1;
                    return Some(Job::new(
                        request,
                        conn,
                        self.home.clone(),
                        self.shared.clone(),
                    ));
                }
                Ok(Progress::Pending) => {}
                Ok(Progress::Refused) => break, // settled to close now
                Err(e) => {
                    conn.queue_error(e.status(), &format!("{e}\n"));
                    break;
                }
            }
            match last_fill {
                // More may be waiting in the socket: read on at once.
                Some(Fill::Full) => {}
                Some(fill) => {
                    if fill == Fill::Eof
                        || conn.has_output()
                        || Instant::now() >= until
                        || self.shared.stopping.load(Ordering::Relaxed)
                        || give_up()
                        || self.home.io_pending()
                    {
                        break;
                    }
                    let _ = nix::sched::sched_yield();
                }
                // Responses held back for a pipelined batch: out now.
                None if conn.has_output() => match conn.flush() {
                    Ok(true) => {}
                    Ok(false) => break, // a slow reader: the IO thread goes on
                    Err(_) => {
                        conn.settle(Afterwards::CloseNow);
                        break;
                    }
                },
                None => {}
            }
            last_fill = match conn.fill(scratch, super::conn::input_cap(limits)) {
                Ok(fill) => Some(fill),
                Err(_) => {
                    conn.settle(Afterwards::CloseNow);
                    break;
                }
            };
        }
        self.home.send(conn);
        None
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.home.send(conn);
        }
    }
}

impl Drop for Job {
    /// A job dropped unanswered (the app thread was killed, a panic) closes
    /// its connection, and its IO thread forgets it.
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.settle(Afterwards::CloseNow);
            self.home.send(conn);
        }
    }
}

/// Jobs on real loopback connections, for the unit tests of what serves
/// them (here and in `crate::serve`).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    use super::*;
    use nix::sys::epoll::EpollEvent;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    pub(crate) const DEADLINE: Duration = Duration::from_secs(5);

    /// A server-side connection registered in a mailbox's epoll as its IO
    /// thread would, and the client end.
    pub(crate) fn setup() -> (Box<Conn>, TcpStream, Arc<Mailbox>, Arc<Shared>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let local = server.local_addr().unwrap();
        let mailbox = Arc::new(Mailbox::new().unwrap());
        mailbox
            .epoll
            .add(&server, EpollEvent::new(CONN_EVENTS, 7))
            .unwrap();
        let conn = Box::new(Conn::new(server, 7, peer, local));
        (conn, client, mailbox, Arc::new(Shared::default()))
    }

    /// Reads until a complete request is parsed (it may take more than
    /// one pass for the bytes to arrive).
    pub(crate) fn request(conn: &mut Conn) -> Request {
        let mut scratch = vec![0; 4096];
        let until = Instant::now() + DEADLINE;
        loop {
            conn.fill(&mut scratch, usize::MAX).unwrap();
            if let Progress::Request(r) = conn.advance(&Limits::default()).unwrap() {
                return r;
            }
            assert!(Instant::now() < until, "no request came");
        }
    }

    /// A job for a `GET` of `path`, lent out as its IO thread would lend
    /// it; the client end; the mailbox its connection goes home to.
    pub(crate) fn job(path: &str, shared: Arc<Shared>) -> (Job, TcpStream, Arc<Mailbox>) {
        let (mut conn, mut client, mailbox, _) = setup();
        write!(client, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let request = request(&mut conn);
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        (
            Job::new(request, conn, mailbox.clone(), shared),
            client,
            mailbox,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{request, setup, DEADLINE};
    use super::*;
    use nix::sys::epoll::EpollEvent;
    use std::io::Write;
    use std::net::TcpStream;

    /// epoll events pending now.
    fn pending_events(mailbox: &Mailbox) -> usize {
        let mut events = [EpollEvent::empty(); 8];
        mailbox
            .epoll
            .wait(&mut events, nix::sys::epoll::EpollTimeout::ZERO)
            .unwrap()
    }

    /// A first request answered on a connection that is the only one lent
    /// out: the connection stays as a `Kept`.
    fn kept() -> (Kept, TcpStream, Arc<Mailbox>) {
        let (mut conn, mut client, mailbox, shared) = setup();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let first = request(&mut conn);
        let until = Instant::now() + DEADLINE;
        while pending_events(&mailbox) > 0 {
            assert!(Instant::now() < until, "epoll kept reporting events");
        }
        shared.in_flight.store(1, Ordering::Relaxed);
        let job = Job::new(first, conn, mailbox.clone(), shared);
        let kept = job
            .finish_or_keep(Afterwards::KeepAlive)
            .expect("a quiet connection is kept");
        (kept, client, mailbox)
    }

    #[test]
    fn a_kept_connection_reads_the_next_request_without_waking_its_io_thread() {
        let (kept, mut client, mailbox) = kept();
        client
            .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut scratch = vec![0; 4096];
        let job = kept
            .next_request(DEADLINE, &Limits::default(), &mut scratch, || false)
            .expect("the next request");
        assert_eq!(job.request.head.path(), b"/b");
        assert_eq!(pending_events(&mailbox), 0, "epoll woke the IO thread");
        assert!(mailbox.rx.try_recv().is_err(), "nothing went home");
    }

    #[test]
    fn a_kept_connection_goes_home_disarmed_when_nothing_comes() {
        let (kept, _client, mailbox) = kept();
        let mut scratch = vec![0; 4096];
        let next = kept.next_request(
            Duration::from_millis(20),
            &Limits::default(),
            &mut scratch,
            || false,
        );
        assert!(next.is_none());
        let conn = mailbox.rx.try_recv().expect("the connection went home");
        assert!(conn.is_disarmed(), "its IO thread must arm it again");
        assert!(!conn.has_buffered_input() && !conn.ends_now());
    }

    #[test]
    fn a_kept_connection_goes_home_at_once_when_told_to() {
        let (kept, _client, mailbox) = kept();
        let mut scratch = vec![0; 4096];
        let started = Instant::now();
        let next = kept.next_request(
            Duration::from_secs(60),
            &Limits::default(),
            &mut scratch,
            || true,
        );
        assert!(next.is_none() && started.elapsed() < DEADLINE);
        assert!(mailbox.rx.try_recv().is_ok());
    }

    #[test]
    fn a_partial_request_goes_home_with_its_bytes() {
        let (kept, mut client, mailbox) = kept();
        client.write_all(b"GET /c HTTP/1.1\r\nHo").unwrap();
        let mut scratch = vec![0; 4096];
        let next = kept.next_request(
            Duration::from_millis(50),
            &Limits::default(),
            &mut scratch,
            || false,
        );
        assert!(next.is_none());
        let mut conn = mailbox.rx.try_recv().expect("the connection went home");
        client.write_all(b"st: x\r\n\r\n").unwrap();
        assert_eq!(request(&mut conn).head.path(), b"/c");
    }

    #[test]
    fn a_connection_is_not_kept_while_others_are_lent() {
        let (mut conn, mut client, mailbox, shared) = setup();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let first = request(&mut conn);
        shared.in_flight.store(2, Ordering::Relaxed);
        let job = Job::new(first, conn, mailbox.clone(), shared);
        assert!(job.finish_or_keep(Afterwards::KeepAlive).is_none());
        let conn = mailbox.rx.try_recv().expect("the connection went home");
        assert!(!conn.is_disarmed());
    }
}
