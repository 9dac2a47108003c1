//! One IO thread: an epoll loop over its own listeners, the connections it
//! accepted, and a wake-up eventfd. It reads and parses requests, queues
//! complete ones for the app threads, takes connections back when their
//! response is written, finishes writes that would block, and enforces
//! timeouts. It never calls Ruby.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;

use super::doorbell::JobSender;
use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{accept4, getpeername, SockFlag, SockaddrStorage};

use super::config::Config;
use super::conn::{Afterwards, Conn, Fill, Progress};
use super::handoff::{Job, Mailbox, Shared, CONN_EVENTS};
use super::listener::Listener;
use super::slots::{Drain, Expired, Slots, Timeouts};
use super::Queued;
use crate::http::Limits;

const WAKER: u64 = u64::MAX;
/// The address reported for Unix-socket connections.
const UNIX_PLACEHOLDER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));
const LISTENER_BIT: u64 = 1 << 62;
/// How shutdown closes the connections between requests.
const DRAIN: Drain = Drain {
    fresh_grace: Duration::from_secs(2),
    quiet: Duration::from_secs(1),
};
/// When no budget had room for a response, a connection whose output
/// made no progress this long may be closed to make room.
const SLOW_QUIET: Duration = Duration::from_secs(1);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(500);
/// Epoll events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// An IO thread's listeners, each with the PROXY protocol policy of its
/// address (the engine deals them out).
pub(crate) type ThreadListeners = Vec<(Listener, super::listener::Front)>;

/// Where the loop puts a complete request.
enum Dispatch {
    /// Into the engine's queue, for whichever app thread is free: the loop
    /// has a thread of its own.
    Queue(JobSender<Queued>),
    /// Into the loop's own list, for the app thread that polls it
    /// (`net::loops`), at most `cap` of them.
    Inline { ready: VecDeque<Job>, cap: usize },
}

/// What a turn of the loop left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    Going,
    /// Stopped, and every connection is done (or the shutdown timeout
    /// passed).
    Done,
}

/// How long a turn may wait for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until something happens or the next tick.
    UntilTick,
    /// Not at all: take what is ready now.
    No,
}

pub(crate) struct IoThread {
    /// Each listener, the address it listens on, and its PROXY protocol
    /// policy.
    listeners: Vec<(Listener, SocketAddr, super::listener::Front)>,
    shared_listeners: bool,
    slots: Slots,
    dispatch: Dispatch,
    mailbox: Arc<Mailbox>,
    shared: Arc<Shared>,
    limits: Limits,
    timeouts: Timeouts,
    shutdown_timeout: Duration,
    idle_spin: Duration,
    /// Read buffer lent to whichever connection is being read.
    scratch: Vec<u8>,
    /// When the last epoll wait returned: the clock is read once per
    /// wake-up, not once per connection or event.
    now: Instant,
    /// Listeners whose accept failed for want of resources.
    accept_paused: AcceptPaused,
    /// The spill budget's shortfalls this thread has made room for.
    shortfalls_seen: u64,
    events: Vec<EpollEvent>,
    next_tick: Instant,
    /// Since when it has been stopping, and until when it may go on
    /// finishing what it has.
    stopping: Option<(Instant, Instant)>,
}

/// Listeners to accept on again later, because accept failed for want of
/// descriptors or memory; and when that was last logged.
#[derive(Debug, Default)]
struct AcceptPaused {
    listeners: Vec<usize>,
    logged: Option<Instant>,
}

/// Accept failures are logged at most this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

impl AcceptPaused {
    fn pause(&mut self, index: usize, error: nix::errno::Errno) {
        if !self.listeners.contains(&index) {
            self.listeners.push(index);
        }
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= ACCEPT_LOG_EVERY)
        {
            self.logged = Some(Instant::now());
            crate::log_err!(
                "butterflies: accept failed: {error}; retrying every {} ms",
                TICK.as_millis()
            );
        }
    }

    fn take(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.listeners)
    }
}

impl IoThread {
    /// A loop with a thread of its own, putting requests into `jobs`; or,
    /// with `jobs` `None`, one that app threads poll (`net::loops`).
    pub(crate) fn new(
        listeners: ThreadListeners,
        config: &Config,
        jobs: Option<JobSender<Queued>>,
        mailbox: Arc<Mailbox>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        let epoll = &mailbox.epoll;
        epoll.add(
            mailbox.wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, WAKER),
        )?;
        // EPOLLEXCLUSIVE: a listener shared with other threads or processes
        // (Unix sockets, cluster workers) wakes one waiter, not all of them.
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET | EpollFlags::EPOLLEXCLUSIVE;
        for (i, (listener, _)) in listeners.iter().enumerate() {
            epoll.add(listener, EpollEvent::new(flags, LISTENER_BIT | i as u64))?;
        }
        let listeners = listeners
            .into_iter()
            .map(|(l, front)| {
                let local = l.tcp_addr().unwrap_or(UNIX_PLACEHOLDER);
                (l, local, front)
            })
            .collect();
        let dispatch = match jobs {
            Some(jobs) => Dispatch::Queue(jobs),
            None => {
                // Told when an app thread is in epoll_wait (`Mailbox::send`).
                mailbox.polling.store(false, Ordering::SeqCst);
                Dispatch::Inline {
                    ready: VecDeque::new(),
                    cap: config.queue_depth.max(1),
                }
            }
        };
        let now = Instant::now();
        Ok(IoThread {
            listeners,
            shared_listeners: config.shared_listeners,
            slots: Slots::default(),
            dispatch,
            mailbox,
            shared,
            limits: config.limits,
            timeouts: Timeouts {
                idle: config.idle_timeout,
                header: config.header_timeout,
                body: config.body_timeout,
                write: config.write_timeout,
            },
            shutdown_timeout: config.shutdown_timeout,
            idle_spin: config.idle_spin,
            scratch: vec![0; super::conn::READ_CHUNK_BYTES],
            now,
            accept_paused: AcceptPaused::default(),
            shortfalls_seen: 0,
            events: vec![EpollEvent::empty(); EVENTS_PER_WAIT],
            next_tick: now + TICK,
            stopping: None,
        })
    }

    /// The loop on a thread of its own. Returns once stopped and every
    /// connection is done (or the shutdown timeout passed); dropping
    /// `self` drops the job sender.
    pub(crate) fn run(mut self) -> std::io::Result<()> {
        // An IO thread woken (a new request, a connection handed back)
        // does not preempt the app thread running Ruby on its core; it runs
        // when that thread blocks, and then finds more work at once. See
        // docs/ARCHITECTURE.md "Scheduling".
        crate::process::sched::batch_this_thread();
        while self.turn(Wait::UntilTick)? == Turn::Going {}
        Ok(())
    }

    /// The oldest request this loop has ready for the app thread polling
    /// it (inline loops only).
    pub(crate) fn pop_ready(&mut self) -> Option<Job> {
        match &mut self.dispatch {
            Dispatch::Inline { ready, .. } => ready.pop_front(),
            Dispatch::Queue(_) => None,
        }
    }

    /// Requests parsed and not yet taken (inline loops only).
    pub(crate) fn ready_len(&self) -> usize {
        match &self.dispatch {
            Dispatch::Inline { ready, .. } => ready.len(),
            Dispatch::Queue(_) => 0,
        }
    }

    /// One pass of the loop: waits for events (as `wait` says), handles
    /// them, and does what the clock asks (timeouts, stopping).
    pub(crate) fn turn(&mut self, wait: Wait) -> std::io::Result<Turn> {
        let inline = matches!(self.dispatch, Dispatch::Inline { .. });
        if inline && !self.mailbox.rx.is_empty() {
            // Sent while nobody was in epoll_wait, so without a wake-up.
            self.take_mail(false);
        }
        // Rounded up to whole milliseconds: rounded down, the last
        // fraction of a millisecond before a tick was spent in epoll_wait
        // calls that returned at once. From the last wake-up's time: at
        // worst the wait ends a little after the tick, which only
        // housekeeping waits for.
        let timeout = match wait {
            Wait::No => EpollTimeout::ZERO,
            Wait::UntilTick => {
                let left = self.next_tick.saturating_duration_since(self.now);
                let millis = left.as_micros().div_ceil(1000);
                u16::try_from(millis)
                    .map(EpollTimeout::from)
                    .unwrap_or(EpollTimeout::from(u16::MAX))
            }
        };
        let mut events = std::mem::take(&mut self.events);
        let spun = match wait {
            Wait::UntilTick => self.spin(&mut events),
            Wait::No => 0,
        };
        let n = match (wait, spun) {
            (Wait::No, _) => self.mailbox.epoll.wait(&mut events, timeout),
            (Wait::UntilTick, 0) if inline => self.wait_polled(&mut events, timeout),
            (Wait::UntilTick, 0) => self.mailbox.epoll.wait(&mut events, timeout),
            (Wait::UntilTick, n) => Ok(n),
        };
        let n = match n {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                self.events = events;
                return Err(std::io::Error::other(format!("epoll_wait: {e}")));
            }
        };
        self.now = Instant::now();
        for event in &events[..n] {
            match event.data() {
                WAKER => self.take_mail(true),
                data if data & LISTENER_BIT != 0 => self.accept((data & !LISTENER_BIT) as usize),
                token => self.on_event(token as usize, event.events()),
            }
        }
        self.events = events;
        if self.shared.stopping.load(Ordering::Acquire) {
            let (started, deadline) = match self.stopping {
                Some(stopping) => stopping,
                None => {
                    self.close_listeners();
                    let started = Instant::now();
                    *self
                        .stopping
                        .insert((started, started + self.shutdown_timeout))
                }
            };
            self.drain(started);
            if self.ready_len() == 0 && (self.slots.live() == 0 || Instant::now() >= deadline) {
                return Ok(Turn::Done);
            }
        }
        if self.now >= self.next_tick {
            for index in self.accept_paused.take() {
                self.accept(index);
            }
            self.enforce_timeouts();
            self.make_room();
            self.next_tick = self.now + TICK;
        }
        Ok(Turn::Going)
    }

    /// An app thread's wait in epoll (inline loops): connections sent home
    /// meanwhile wake it only while it waits (`Mailbox::send`), so the
    /// mailbox is looked at once more after saying so.
    fn wait_polled(&self, events: &mut [EpollEvent], timeout: EpollTimeout) -> nix::Result<usize> {
        self.mailbox.polling.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        let timeout = if self.mailbox.rx.is_empty() {
            timeout
        } else {
            EpollTimeout::ZERO
        };
        let n = self.mailbox.epoll.wait(events, timeout);
        self.mailbox.polling.store(false, Ordering::SeqCst);
        n
    }

    /// Polls for new events for up to `idle_spin` before the caller
    /// sleeps, while no request is with an app thread (one is, and this
    /// thread must leave its core to it). A core that goes idle is halted,
    /// and on a virtual machine waking it again costs tens of microseconds
    /// per request; a keep-alive client's next request usually comes
    /// sooner than that. Each poll yields to any other thread ready to run
    /// here. Returns the number of events, 0 if none came.
    fn spin(&self, events: &mut [EpollEvent]) -> usize {
        if self.idle_spin.is_zero() || self.shared.in_flight.load(Ordering::Relaxed) != 0 {
            return 0;
        }
        let until = Instant::now() + self.idle_spin;
        loop {
            match self.mailbox.epoll.wait(events, EpollTimeout::ZERO) {
                Ok(0) => {}
                Ok(n) => return n,
                Err(_) => return 0,
            }
            if Instant::now() >= until || self.shared.in_flight.load(Ordering::Relaxed) != 0 {
                return 0;
            }
            let _ = nix::sched::sched_yield();
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let Some((listener, local, front)) = self.listeners.get(index) else {
                return;
            };
            let local = *local;
            let front = front.clone();
            let fd = match accept4(
                listener.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => {
                    // Out of descriptors or memory (EMFILE, ENFILE,
                    // ENOBUFS, ENOMEM): the rest stays in the backlog. Its
                    // edge is spent, and once the backlog is full no new
                    // one comes, so the tick retries (as nginx does).
                    self.accept_paused.pause(index, e);
                    return;
                }
            };
            // SAFETY: accept4 just returned this descriptor and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let stream = std::net::TcpStream::from(fd);
            // A Unix socket's peer has no IP: it reports as 127.0.0.1, as
            // Puma does, so apps' IP checks treat it as local.
            let ip_peer = getpeername::<SockaddrStorage>(stream.as_raw_fd())
                .ok()
                .and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::V4((*v4).into()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
                });
            let peer = ip_peer.unwrap_or(UNIX_PLACEHOLDER);
            let _ = stream.set_nodelay(true);
            let token = self.slots.reserve();
            if self
                .mailbox
                .epoll
                .add(&stream, EpollEvent::new(CONN_EVENTS, token as u64))
                .is_err()
            {
                self.slots.unreserve(token);
                continue;
            }
            let mut conn = Box::new(Conn::new(stream, token, peer, local));
            if let Some(policy) = front.proxy.filter(|p| p.expects_header(ip_peer)) {
                conn.expect_proxy_header(policy.versions);
            }
            if let Some(tls) = front.tls {
                conn.start_tls(tls);
            }
            self.slots.insert(token, conn);
            crate::stats::gauge(crate::stats::CONNECTIONS, 1);
        }
    }

    /// A connection's socket changed. Write space alone (EPOLLOUT after
    /// the peer acknowledged a response) matters only to a connection with
    /// output still queued: reading then would only say EAGAIN.
    fn on_event(&mut self, token: usize, flags: EpollFlags) {
        let shut =
            flags.intersects(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
        let readable = shut || flags.contains(EpollFlags::EPOLLIN);
        if self.slots.note_while_lent(token, readable, shut) {
            return;
        }
        match self.slots.present(token) {
            Some(conn) if readable || conn.has_output() => {
                // The FIN may have come with the last data, in the same
                // edge: read on to it rather than stop at a short read.
                if shut {
                    conn.note_peer_shut();
                }
                self.drive(token)
            }
            _ => {}
        }
    }

    /// Takes back connections whose response an app thread wrote. One with
    /// nothing to do (all written, nothing buffered, no event while it was
    /// away) just waits for its next edge: no read that would only say
    /// EAGAIN.
    fn take_mail(&mut self, woken: bool) {
        if woken {
            let _ = self.mailbox.wake.read();
            self.mailbox.notified.store(false, Ordering::Release);
        }
        while let Ok(mut conn) = self.mailbox.rx.try_recv() {
            self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            let token = conn.token;
            conn.idle_since = self.now;
            // Read events again, if an app thread read it itself; epoll
            // reports the socket now if it is readable already.
            conn.arm(&self.mailbox.epoll, CONN_EVENTS);
            let quiet_before = conn.is_quiet();
            let seen = self.slots.put_back(conn);
            let Some(conn) = self.slots.present(token) else {
                continue;
            };
            if seen.hangup {
                conn.note_peer_shut();
            }
            let quiet = !seen.events && quiet_before;
            if !quiet || self.shared.stopping.load(Ordering::Relaxed) {
                self.drive(token);
            }
        }
    }

    /// Moves one present connection as far as it can go without blocking.
    /// A request already buffered (pipelined) is dispatched before anything
    /// more is read, and nothing is read while a response is still being
    /// written or past the input cap: a client that sends and never reads
    /// is held back by its own socket buffers, not by our memory.
    fn drive(&mut self, token: usize) {
        let cap = super::conn::input_cap(&self.limits);
        let Some(conn) = self.slots.present(token) else {
            return;
        };
        let mut last_fill = None;
        loop {
            if conn.ends_now() {
                return self.close(token);
            }
            match conn.flush() {
                Ok(true) if conn.ends_after_write() => return self.close(token),
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => return self.close(token),
            }
            match conn.advance(&self.limits) {
                Ok(Progress::Request(request)) => return self.dispatch(token, request),
                Ok(Progress::Refused) => return self.close(token),
                Ok(Progress::Pending) if conn.has_output() => continue,
                Ok(Progress::Pending) => match last_fill {
                    None | Some(Fill::Full) => {}
                    Some(Fill::Eof) => return self.close(token),
                    // Drained: the next bytes raise a new edge. Capped
                    // cannot happen with a head pending (the head limit is
                    // below the cap, so it failed as too large first);
                    // should it, the header timeout ends it.
                    Some(Fill::Drained | Fill::Capped) => return,
                },
                Err(e) => {
                    conn.queue_error(e.status(), &format!("{e}\n"));
                    continue;
                }
            }
            match conn.fill_at(&mut self.scratch, cap, self.now) {
                Ok(fill) => last_fill = Some(fill),
                Err(_) => return self.close(token),
            }
        }
    }

    /// Lends the connection and its request to the app threads.
    fn dispatch(&mut self, token: usize, request: super::conn::Request) {
        let Some(mut conn) = self.slots.lend(token) else {
            return;
        };
        conn.served += 1;
        let job = Job::new(request, conn, self.mailbox.clone(), self.shared.clone());
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let refused = match &mut self.dispatch {
            Dispatch::Inline { ready, cap } if ready.len() < *cap => {
                ready.push_back(job);
                None
            }
            Dispatch::Inline { .. } => Some(job),
            Dispatch::Queue(jobs) => offer(jobs, &self.shared, job),
        };
        if let Some(job) = refused {
            self.refuse(job);
        }
    }

    /// Answers a request no app thread can take (the queue is full) with
    /// 503, closing its connection.
    fn refuse(&mut self, job: Job) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        job.request.log_refused(503);
        let Some(mut conn) = job.take_conn() else {
            return;
        };
        let token = conn.token;
        conn.queue(crate::http::response::service_unavailable(
            "Service Unavailable\n",
        ));
        conn.settle(Afterwards::CloseAfterWrite);
        self.slots.put_back(conn);
        self.drive(token);
    }

    fn close(&mut self, token: usize) {
        if let Some(mut conn) = self.slots.remove(token) {
            crate::stats::gauge(crate::stats::CONNECTIONS, -1);
            let _ = self.mailbox.epoll.delete(&conn.stream);
            if !conn.has_output() && !conn.is_hijacked() {
                conn.say_goodbye();
            }
            if conn.has_output() && !conn.is_hijacked() {
                // Unsent bytes to a peer that stopped reading: reset rather
                // than leave the kernel an orphan socket that retries for
                // minutes holding the rest of the response.
                let _ = socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
            }
            // A descriptor is free again: take what waits in the backlog.
            for index in self.accept_paused.take() {
                self.accept(index);
            }
        }
    }

    /// Stops accepting. Each listener leaves epoll first, then whatever is
    /// already in its queue is accepted and served: with EPOLLEXCLUSIVE
    /// this thread may have taken the only wake-up for a connection that
    /// just arrived, and nobody else would hear of it until the next one.
    fn close_listeners(&mut self) {
        for (listener, _, _) in &self.listeners {
            let _ = self.mailbox.epoll.delete(listener);
        }
        for index in 0..self.listeners.len() {
            self.accept(index);
        }
        for (listener, _, _) in self.listeners.drain(..) {
            // Sockets this process alone serves are shut down, so the kernel
            // stops routing new connections to a group member nobody serves.
            // Shared ones (cluster workers) are only closed: the master and
            // the other workers keep them, and their queued connections.
            if !self.shared_listeners && !self.shared.keep_listening.load(Ordering::Acquire) {
                let _ = nix::sys::socket::shutdown(
                    listener.as_raw_fd(),
                    nix::sys::socket::Shutdown::Both,
                );
            }
        }
    }

    /// During shutdown: closes the connections between requests whose
    /// client has gone quiet (see `Drain`). One whose request arrived since
    /// epoll last said so is served instead.
    fn drain(&mut self, began: Instant) {
        for token in self.slots.drained(&DRAIN, began, Instant::now()) {
            let arrived = self.slots.present(token).is_some_and(|conn| {
                // Nonblocking: WouldBlock (nothing sent) reads as false.
                matches!(conn.stream.peek(&mut [0u8; 1]), Ok(n) if n > 0)
            });
            if arrived {
                self.drive(token);
            } else {
                self.close(token);
            }
        }
    }

    /// When a response found room neither in memory nor on disk since the
    /// last tick (its app thread is waiting for its client), closes this
    /// thread's slowest client, freeing what its output holds.
    fn make_room(&mut self) {
        let shortfalls = self.shared.spilled.shortfalls();
        if shortfalls == self.shortfalls_seen {
            return;
        }
        self.shortfalls_seen = shortfalls;
        if let Some(token) = self.slots.slowest(Instant::now(), SLOW_QUIET) {
            crate::stats::add(crate::stats::SLOW_CLIENTS_CLOSED, 1);
            self.close(token);
        }
    }

    fn enforce_timeouts(&mut self) {
        for (token, expired) in self.slots.expired(&self.timeouts, Instant::now()) {
            match expired {
                Expired::Answer408 => self.drive(token),
                Expired::Close | Expired::No => self.close(token),
            }
        }
    }
}

/// Puts a job into the engine's queue; gives it back if the queue is full
/// (`None` if the watchdog answered it meanwhile).
fn offer(jobs: &JobSender<Queued>, shared: &Shared, job: Job) -> Option<Job> {
    match jobs.try_send(shared.claims.wrap(job)) {
        Ok(()) => {
            crate::stats::gauge(crate::stats::QUEUED, 1);
            None
        }
        Err(TrySendError::Full(queued) | TrySendError::Disconnected(queued)) => queued.claim(),
    }
}
