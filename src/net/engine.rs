//! The engine: the bound listener group, the IO threads, and the queue of
//! complete requests that app threads take [`Job`]s from.
//!
//! Binding and starting are separate steps so that a cluster master
//! can bind, fork, and only then let each worker start its threads: no
//! thread runs in a process that forks.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::config::Config;
use super::handoff::{Mailbox, Shared};
use super::io_thread::IoThread;
use super::listener::{self, BindAddr, Listener};
use super::queue::Queued;

/// The engine before and after its threads start.
pub struct Engine {
    config: Config,
    /// Per IO thread, its listeners (taken by `start`).
    listeners: Vec<Vec<Listener>>,
    /// What was bound, with real ports.
    addrs: Vec<BindAddr>,
    shared: Arc<Shared>,
    jobs_tx: Option<Sender<Queued>>,
    jobs_rx: Receiver<Queued>,
    mailboxes: Vec<Arc<Mailbox>>,
    threads: Vec<JoinHandle<()>>,
    /// Duplicates of the listeners the IO threads took (single mode), so a
    /// hot restart can pass them on after the threads are gone.
    kept_listeners: Vec<Listener>,
}

impl Engine {
    /// Binds every address, `io_threads` sockets each, reusing inherited
    /// listening sockets where they match. Starts no thread.
    pub fn bind(config: Config) -> io::Result<Engine> {
        let threads = config.io_threads.max(1);
        let mut inherited = adopt_all(&config.inherit)?;
        let mut listeners: Vec<Vec<Listener>> = (0..threads).map(|_| Vec::new()).collect();
        let mut addrs = Vec::with_capacity(config.binds.len());
        // Several addresses asking for port 0 (`localhost` is 127.0.0.1 and
        // ::1) all get the port the first one was given.
        let mut zero_port: Option<u16> = None;
        for addr in &config.binds {
            let wants_any_port = matches!(addr, BindAddr::Tcp(a) if a.port() == 0);
            let addr = &match (addr, zero_port) {
                (BindAddr::Tcp(a), Some(port)) if wants_any_port => {
                    BindAddr::Tcp(std::net::SocketAddr::new(a.ip(), port))
                }
                _ => addr.clone(),
            };
            let group = match inherited.iter().position(|(a, _)| a.satisfies(addr)) {
                Some(at) => inherited.swap_remove(at).1,
                None => listener::bind(addr, threads, config.listen)
                    .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?,
            };
            addrs.push(match (addr, group.first().and_then(Listener::tcp_addr)) {
                (BindAddr::Tcp(_), Some(real)) => {
                    if wants_any_port {
                        zero_port.get_or_insert(real.port());
                    }
                    BindAddr::Tcp(real)
                }
                _ => addr.clone(),
            });
            for (i, listener) in spread(group, threads)?.into_iter().enumerate() {
                listeners[i % threads].push(listener);
            }
        }
        // Inherited sockets no longer configured close here.
        drop(inherited);
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(config.queue_depth.max(1));
        let shared = Arc::new(Shared::default());
        shared.parked.set_limit(config.max_parked_bytes);
        Ok(Engine {
            config,
            listeners,
            addrs,
            shared,
            jobs_tx: Some(jobs_tx),
            jobs_rx,
            mailboxes: Vec::new(),
            threads: Vec::new(),
            kept_listeners: Vec::new(),
        })
    }

    /// The addresses bound (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> Vec<BindAddr> {
        self.addrs.clone()
    }

    /// The listening descriptors, made to survive exec, for a hot restart:
    /// the bound ones (a cluster master never starts), or the duplicates
    /// kept when the IO threads started (single mode).
    pub fn listener_fds(&self) -> io::Result<Vec<std::os::fd::RawFd>> {
        self.listeners
            .iter()
            .flatten()
            .chain(&self.kept_listeners)
            .map(listener::keep_across_exec)
            .collect()
    }

    /// Starts the IO threads. Call once, after any fork.
    pub fn start(&mut self) -> io::Result<()> {
        let Some(jobs_tx) = self.jobs_tx.take() else {
            return Err(io::Error::other("engine already started"));
        };
        let groups = std::mem::take(&mut self.listeners);
        if !self.config.shared_listeners {
            for listener in groups.iter().flatten() {
                self.kept_listeners.push(listener.try_clone()?);
            }
        }
        for (index, listeners) in groups.into_iter().enumerate() {
            let mailbox = Arc::new(Mailbox::new()?);
            let thread = IoThread::new(
                listeners,
                &self.config,
                jobs_tx.clone(),
                mailbox.clone(),
                self.shared.clone(),
            )?;
            let handle = super::supervise::spawn(
                format!("butterflies-io-{index}"),
                self.shared.faults.clone(),
                move || thread.run(),
            )?;
            self.mailboxes.push(mailbox);
            self.threads.push(handle);
        }
        Ok(())
    }

    /// The queue app threads take jobs from. It disconnects when every IO
    /// thread has finished after `stop`.
    pub fn jobs(&self) -> Receiver<Queued> {
        self.jobs_rx.clone()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Stops accepting; IO threads exit once their connections are done.
    /// `keep_listening`: for a hot restart, the listening sockets stay open
    /// (new connections wait in their backlogs for the next process).
    pub fn stop(&self, keep_listening: bool) {
        if keep_listening {
            self.shared.keep_listening.store(true, Ordering::SeqCst);
        }
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
fn adopt_all(fds: &[std::os::fd::RawFd]) -> io::Result<Vec<(BindAddr, Vec<Listener>)>> {
    let mut groups: Vec<(BindAddr, Vec<Listener>)> = Vec::new();
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
fn spread(mut group: Vec<Listener>, threads: usize) -> io::Result<Vec<Listener>> {
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
        self.stop(false);
    }
}
