//! The cross-thread step: a complete request and its connection go to an
//! app thread as a [`Job`]; the connection comes back to its IO thread by
//! that thread's [`Mailbox`]. [`Shared`] is what every thread of an engine
//! reads.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::conn::{Conn, Request};

/// State every thread of the engine shares.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set once by `stop`: stop accepting, finish what is in flight.
    pub stopping: AtomicBool,
    pub requests: AtomicU64,
    pub rejected_full: AtomicU64,
    /// Requests lent to app threads and not yet handed back.
    pub in_flight: AtomicUsize,
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
    pub(crate) fn new() -> io::Result<Self> {
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
