//! The engine: the bound listener group, the IO threads, and the queue of
//! complete requests that app threads take [`Job`]s from.
//!
//! Binding and starting are separate steps so that a future cluster master
//! can bind, fork, and only then let each worker start its threads: no
//! thread runs in a process that forks.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::conn::{Conn, Request};
use super::io_thread::IoThread;
use super::listener::{self, BindAddr, ListenOptions};
use crate::http::Limits;

/// Keep-alive connections idle longer than this are closed (Puma: 20 s).
pub const IDLE_TIMEOUT_SECS: u64 = 20;
/// A request head must be complete this long after its first byte.
pub const HEADER_TIMEOUT_SECS: u64 = 20;
/// A request body may pause this long between bytes.
pub const BODY_TIMEOUT_SECS: u64 = 30;
/// A client that reads none of a pending response for this long is dropped.
pub const WRITE_TIMEOUT_SECS: u64 = 30;
/// After `stop`, connections still busy after this long are dropped.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// Requests waiting for an app thread before new ones get a 503.
pub const QUEUE_DEPTH: usize = 1024;

/// What the engine needs to know before it binds.
#[derive(Debug, Clone)]
pub struct Config {
    pub binds: Vec<BindAddr>,
    pub io_threads: usize,
    pub listen: ListenOptions,
    /// Listening sockets inherited across exec (hot restart), by descriptor.
    pub inherit: Vec<std::os::fd::RawFd>,
    /// The listeners are shared with other processes (cluster workers): on
    /// stop, close them but do not shut them down.
    pub shared_listeners: bool,
    pub queue_depth: usize,
    pub limits: Limits,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_timeout: Duration,
}

impl Config {
    pub fn new(binds: Vec<BindAddr>) -> Self {
        Config {
            binds,
            io_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            listen: ListenOptions::default(),
            inherit: Vec::new(),
            shared_listeners: false,
            queue_depth: QUEUE_DEPTH,
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(IDLE_TIMEOUT_SECS),
            header_timeout: Duration::from_secs(HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(BODY_TIMEOUT_SECS),
            write_timeout: Duration::from_secs(WRITE_TIMEOUT_SECS),
            shutdown_timeout: Duration::from_secs(SHUTDOWN_TIMEOUT_SECS),
        }
    }
}

/// State every thread of the engine shares.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set once by `stop`: stop accepting, finish what is in flight.
    pub stopping: AtomicBool,
    pub requests: AtomicU64,
    pub rejected_full: AtomicU64,
}

/// Where app threads send a connection back to its IO thread.
#[derive(Debug)]
pub struct Mailbox {
    tx: Sender<Box<Conn>>,
    pub(crate) rx: Receiver<Box<Conn>>,
    pub(crate) wake: EventFd,
    /// A wake-up is already pending, so senders need not write the eventfd.
    pub(crate) notified: AtomicBool,
}

impl Mailbox {
    fn new() -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Mailbox {
            tx,
            rx,
            wake,
            notified: AtomicBool::new(false),
        })
    }

    fn send(&self, conn: Box<Conn>) {
        // The receiver lives as long as the IO thread that owns `self`.
        let _ = self.tx.send(conn);
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.poke();
        }
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

    /// Writes the response and hands the connection back to its IO thread,
    /// which finishes a write that would block and reads the next request.
    pub fn respond(mut self, bytes: Vec<u8>, keep_alive: bool) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        conn.queue(bytes);
        conn.close_after_write |= !keep_alive;
        if conn.flush().is_err() {
            conn.dead = true;
        }
        self.home.send(conn);
    }

    /// The connection, for writing a response in parts (streaming bodies,
    /// early hints). `None` once answered.
    pub fn conn_mut(&mut self) -> Option<&mut Conn> {
        self.conn.as_deref_mut()
    }

    /// Hands the connection back after its response was queued piece by
    /// piece; whatever is still unwritten the IO thread finishes.
    pub fn finish(mut self, keep_alive: bool, broken: bool) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        conn.close_after_write |= !keep_alive;
        conn.dead |= broken;
        self.home.send(conn);
    }

    /// rack.hijack: returns a duplicate of the socket for the app, and the
    /// IO thread forgets the connection without closing the TCP stream.
    pub fn hijack(mut self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        let Some(mut conn) = self.conn.take() else {
            return Err(io::Error::other("connection already answered"));
        };
        let dup = conn.stream.as_fd().try_clone_to_owned();
        conn.hijacked = true;
        self.home.send(conn);
        dup
    }

    /// Takes the connection back out (the IO thread answers it itself).
    pub(crate) fn take_conn(mut self) -> Option<Box<Conn>> {
        self.conn.take()
    }
}

impl Drop for Job {
    /// A job dropped unanswered (the app thread was killed, a panic) closes
    /// its connection, and its IO thread forgets it.
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.dead = true;
            self.home.send(conn);
        }
    }
}

/// The engine before and after its threads start.
pub struct Engine {
    config: Config,
    /// Per IO thread, its listeners (taken by `start`).
    listeners: Vec<Vec<TcpListener>>,
    /// What was bound, with real ports.
    addrs: Vec<BindAddr>,
    shared: Arc<Shared>,
    jobs_tx: Option<Sender<Job>>,
    jobs_rx: Receiver<Job>,
    mailboxes: Vec<Arc<Mailbox>>,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Binds every address, `io_threads` sockets each, reusing inherited
    /// listening sockets where they match. Starts no thread.
    pub fn bind(config: Config) -> io::Result<Engine> {
        let threads = config.io_threads.max(1);
        let mut inherited = adopt_all(&config.inherit)?;
        let mut listeners: Vec<Vec<TcpListener>> = (0..threads).map(|_| Vec::new()).collect();
        let mut addrs = Vec::with_capacity(config.binds.len());
        for addr in &config.binds {
            let group = match inherited.iter().position(|(a, _)| a.satisfies(addr)) {
                Some(at) => inherited.swap_remove(at).1,
                None => listener::bind(addr, threads, config.listen)
                    .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?,
            };
            addrs.push(match (addr, group.first().map(TcpListener::local_addr)) {
                (BindAddr::Tcp(_), Some(Ok(real))) => BindAddr::Tcp(real),
                _ => addr.clone(),
            });
            for (i, listener) in spread(group, threads)?.into_iter().enumerate() {
                listeners[i % threads].push(listener);
            }
        }
        // Inherited sockets no longer configured close here.
        drop(inherited);
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(config.queue_depth.max(1));
        Ok(Engine {
            config,
            listeners,
            addrs,
            shared: Arc::default(),
            jobs_tx: Some(jobs_tx),
            jobs_rx,
            mailboxes: Vec::new(),
            threads: Vec::new(),
        })
    }

    /// The addresses bound (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> Vec<BindAddr> {
        self.addrs.clone()
    }

    /// The listening descriptors, made to survive exec, for a hot restart.
    pub fn listener_fds(&self) -> io::Result<Vec<std::os::fd::RawFd>> {
        self.listeners
            .iter()
            .flatten()
            .map(listener::keep_across_exec)
            .collect()
    }

    /// Starts the IO threads. Call once, after any fork.
    pub fn start(&mut self) -> io::Result<()> {
        let Some(jobs_tx) = self.jobs_tx.take() else {
            return Err(io::Error::other("engine already started"));
        };
        for (index, listeners) in std::mem::take(&mut self.listeners).into_iter().enumerate() {
            let mailbox = Arc::new(Mailbox::new()?);
            let thread = IoThread::new(
                listeners,
                &self.config,
                jobs_tx.clone(),
                mailbox.clone(),
                self.shared.clone(),
            )?;
            let handle = std::thread::Builder::new()
                .name(format!("butterflies-io-{index}"))
                .spawn(move || thread.run())?;
            self.mailboxes.push(mailbox);
            self.threads.push(handle);
        }
        Ok(())
    }

    /// The queue app threads take jobs from. It disconnects when every IO
    /// thread has finished after `stop`.
    pub fn jobs(&self) -> Receiver<Job> {
        self.jobs_rx.clone()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Stops accepting; IO threads exit once their connections are done.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for mailbox in &self.mailboxes {
            mailbox.poke();
        }
    }

    /// Waits for the IO threads to finish.
    pub fn join(&mut self) {
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Adopts inherited listening sockets, grouped by address.
fn adopt_all(fds: &[std::os::fd::RawFd]) -> io::Result<Vec<(BindAddr, Vec<TcpListener>)>> {
    let mut groups: Vec<(BindAddr, Vec<TcpListener>)> = Vec::new();
    for &fd in fds {
        // SAFETY: descriptors listed as inherited are open in this process
        // (passed by the previous master across exec) and owned by nobody.
        let (listener, addr) = unsafe { listener::adopt(fd) }?;
        match groups.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, group)) => group.push(listener),
            None => groups.push((addr, vec![listener])),
        }
    }
    Ok(groups)
}

/// At least `threads` listeners from a group: a short group (inherited from
/// a process with fewer IO threads) is filled with duplicates.
fn spread(mut group: Vec<TcpListener>, threads: usize) -> io::Result<Vec<TcpListener>> {
    let mut i = 0;
    while group.len() < threads {
        let dup = group[i].try_clone()?;
        group.push(dup);
        i += 1;
    }
    Ok(group)
}

impl Drop for Engine {
    /// Only asks the threads to stop: a drop may run inside Ruby's GC, which
    /// must not block on joins.
    fn drop(&mut self) {
        self.stop();
    }
}
