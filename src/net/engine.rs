//! The engine: the bound listener group, the IO threads (or, with
//! `Config::inline_io`, the loops app threads poll: `net::loops`), and the
//! queue of complete requests that app threads take [`Job`]s from.
//!
//! Binding and starting are separate steps so that a cluster master
//! can bind, fork, and only then let each worker start its threads: no
//! thread runs in a process that forks.
//!
//! Each TCP address gets `io_threads` sockets per worker (`Config::workers`,
//! 1 in single mode), all in one SO_REUSEPORT group, so the kernel spreads
//! new connections evenly over the workers as well as over their threads.
//! The cluster master keeps every socket for its whole life: a worker that
//! dies leaves its sockets, and the connections queued on them, to its
//! replacement. A Unix socket has one queue, shared by everyone.
//!
//! A socket the service manager passed (systemd socket activation,
//! `Config::activated`) also has one queue: systemd bound it, often as
//! root and without SO_REUSEPORT, so no socket of ours can join it. Every
//! IO thread of every worker holds a descriptor of it and waits on it with
//! EPOLLEXCLUSIVE; there is nothing to steer. It is never grown, shrunk
//! or unlinked here, and a hot restart passes it on as activated.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use super::doorbell::{Doorbell, JobSender};

use super::config::Config;
use super::handoff::{Mailbox, Shared};
use super::io_thread::{IoThread, ThreadListeners};
use super::listener::Front;
use super::listener::{self, BindAddr, Listener};
use super::loops::Loops;
use super::Queued;
use crate::proxy::Policy;

/// How the sockets of one address are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// TCP: `io_threads` sockets per worker of one SO_REUSEPORT group,
    /// worker by worker (worker w's thread k has socket w * io_threads + k).
    PerWorker,
    /// A Unix socket: `io_threads` descriptors of one socket, every
    /// worker's.
    OneQueue,
    /// A socket the service manager passed: laid out as `OneQueue`, but
    /// not ours (see the module documentation).
    Activated,
}

/// The listening sockets of one bound address.
struct Group {
    listeners: Vec<Listener>,
    layout: Layout,
    /// What its connections begin with (PROXY protocol, TLS).
    front: Front,
}

impl Group {
    fn per_worker(&self) -> bool {
        self.layout == Layout::PerWorker
    }

    fn try_clone(&self) -> io::Result<Group> {
        Ok(Group {
            listeners: self
                .listeners
                .iter()
                .map(Listener::try_clone)
                .collect::<io::Result<_>>()?,
            layout: self.layout,
            front: self.front.clone(),
        })
    }
}

/// How many sockets an address of `layout` gets.
fn layout_size(layout: Layout, threads: usize, workers: usize) -> usize {
    match layout {
        Layout::PerWorker => threads * workers,
        Layout::OneQueue | Layout::Activated => threads,
    }
}

/// The engine before and after its threads start.
pub struct Engine {
    config: Config,
    /// Per bound address, its sockets (taken by `start`).
    groups: Vec<Group>,
    /// What was bound, with real ports, and how.
    addrs: Vec<(BindAddr, Layout)>,
    /// Those of them that speak TLS.
    tls_addrs: Vec<BindAddr>,
    shared: Arc<Shared>,
    jobs_tx: Option<JobSender<Queued>>,
    jobs_rx: Receiver<Queued>,
    doorbell: Arc<Doorbell>,
    mailboxes: Vec<Arc<Mailbox>>,
    threads: Vec<JoinHandle<()>>,
    /// With `Config::inline_io`, the loops the app threads poll.
    loops: Option<Arc<Loops>>,
    /// Duplicates of the listeners the IO threads took (single mode), so a
    /// hot restart can pass them on after the threads are gone.
    kept_groups: Vec<Group>,
}

impl Engine {
    /// Binds every address (`io_threads` sockets per worker for TCP),
    /// using a socket the service manager passed, or else one inherited
    /// across exec, where one matches. Passed sockets no bind asked for
    /// are served too. Starts no thread.
    pub fn bind(config: Config) -> io::Result<Engine> {
        let threads = config.io_threads.max(1);
        let workers = config.workers.max(1);
        let mut activated = adopt_all(&config.activated)?;
        let mut inherited = adopt_all(&config.inherit)?;
        check_proxy(&config)?;
        let mut groups = Vec::with_capacity(config.binds.len());
        let mut addrs = Vec::with_capacity(config.binds.len());
        let mut tls_addrs = Vec::new();
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
            let passed = activated.iter().position(|(a, _)| a.satisfies(addr));
            let (layout, listeners) = match passed {
                Some(at) => (Layout::Activated, activated.swap_remove(at).1),
                None => {
                    let layout = match addr {
                        BindAddr::Tcp(_) => Layout::PerWorker,
                        BindAddr::Unix(_) => Layout::OneQueue,
                    };
                    let wanted = layout_size(layout, threads, workers);
                    let listeners = match inherited.iter().position(|(a, _)| a.satisfies(addr)) {
                        Some(at) => inherited.swap_remove(at).1,
                        None => listener::bind(addr, wanted, config.listen)
                            .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?,
                    };
                    (layout, listeners)
                }
            };
            let real = match (addr, listeners.first().and_then(Listener::tcp_addr)) {
                (BindAddr::Tcp(_), Some(real)) => {
                    if wants_any_port {
                        zero_port.get_or_insert(real.port());
                    }
                    BindAddr::Tcp(real)
                }
                _ => addr.clone(),
            };
            let tls = config
                .tls_binds
                .iter()
                .find(|(a, _)| a == addr)
                .map(|(_, tls)| tls.clone());
            if tls.is_some() {
                tls_addrs.push(real.clone());
            }
            addrs.push((real, layout));
            let wanted = layout_size(layout, threads, workers);
            let proxy = config
                .proxy_binds
                .iter()
                .find(|(a, _)| a == addr)
                .map(|&(_, versions)| {
                    Arc::new(Policy {
                        versions,
                        trusted: config.proxy_from.clone(),
                    })
                });
            groups.push(Group {
                listeners: resize_group(listeners, wanted, layout, config.listen)?,
                layout,
                front: Front { proxy, tls },
            });
        }
        for (addr, listeners) in activated {
            addrs.push((addr, Layout::Activated));
            groups.push(Group {
                listeners: resize_group(listeners, threads, Layout::Activated, config.listen)?,
                layout: Layout::Activated,
                front: Front::default(),
            });
        }
        if groups.is_empty() {
            return Err(io::Error::other("nothing to listen on"));
        }
        let steered = config.shared_listeners;
        // Inherited sockets no longer configured close here.
        let unused = inherited.len();
        drop(inherited);
        if unused > 0 {
            listener::warn_unless_migrating("addresses no longer configured");
        }
        if steered {
            steer(&groups, threads * workers);
        }
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(config.queue_depth.max(1));
        let doorbell = Arc::new(Doorbell::default());
        let jobs_tx = JobSender::new(jobs_tx, doorbell.clone());
        let shared = Arc::new(Shared::default());
        shared.parked.set_limit(config.max_parked_bytes);
        shared.spilled.set_limit(config.max_spilled_bytes);
        shared.parked.show_in(crate::stats::PARKED_BYTES);
        shared.spilled.show_in(crate::stats::SPILLED_BYTES);
        Ok(Engine {
            config,
            groups,
            addrs,
            tls_addrs,
            shared,
            jobs_tx: Some(jobs_tx),
            jobs_rx,
            doorbell,
            mailboxes: Vec::new(),
            threads: Vec::new(),
            loops: None,
            kept_groups: Vec::new(),
        })
    }

    /// The addresses bound (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> Vec<BindAddr> {
        self.addrs.iter().map(|(addr, _)| addr.clone()).collect()
    }

    /// The bound addresses that speak TLS.
    pub fn tls_addrs(&self) -> &[BindAddr] {
        &self.tls_addrs
    }

    /// The listening descriptors, made to survive exec, for a hot restart:
    /// the bound ones (a cluster master never starts), or the duplicates
    /// kept when the IO threads started (single mode). `activated`: those
    /// the service manager passed, else the others.
    pub fn listener_fds(&self, activated: bool) -> io::Result<Vec<std::os::fd::RawFd>> {
        self.groups
            .iter()
            .chain(&self.kept_groups)
            .filter(|g| (g.layout == Layout::Activated) == activated)
            .flat_map(|g| &g.listeners)
            .map(listener::keep_across_exec)
            .collect()
    }

    /// The paths of the Unix sockets this server made (or a previous
    /// process of it did), to remove on a final stop; not those the
    /// service manager passed.
    pub fn own_socket_paths(&self) -> Vec<std::path::PathBuf> {
        self.addrs
            .iter()
            .filter_map(|(addr, layout)| match (addr, layout) {
                (BindAddr::Unix(path), Layout::OneQueue) => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    /// The workers the TCP sockets are dealt to.
    pub fn workers(&self) -> usize {
        self.config.workers.max(1)
    }

    /// Binds one more worker's sockets for every TCP address (a cluster
    /// master growing, TTIN). Returns the worker count.
    pub fn add_worker(&mut self) -> io::Result<usize> {
        let threads = self.config.io_threads.max(1);
        for (group, (addr, _)) in self.groups.iter_mut().zip(&self.addrs) {
            if let (true, BindAddr::Tcp(addr)) = (group.per_worker(), addr) {
                for _ in 0..threads {
                    group.listeners.push(Listener::Tcp(listener::join_group(
                        *addr,
                        self.config.listen,
                    )?));
                }
            }
        }
        self.config.workers = self.workers() + 1;
        steer(&self.groups, threads * self.config.workers);
        Ok(self.config.workers)
    }

    /// Closes the last worker's sockets here (a cluster master shrinking,
    /// TTOU), before that worker is told to stop. New connections are
    /// steered away from them first (`listener::steer`), and the worker
    /// holds them until it has accepted what is queued on them, so nothing
    /// queued is lost. Returns the worker count.
    pub fn remove_worker(&mut self) -> usize {
        let workers = self.workers();
        if workers <= 1 {
            return workers;
        }
        let keep = self.config.io_threads.max(1) * (workers - 1);
        // No new connection goes to the leaving worker's sockets from now:
        // what is queued on them, the worker accepts before it closes them.
        steer(&self.groups, keep);
        for group in self.groups.iter_mut().filter(|g| g.per_worker()) {
            group.listeners.truncate(keep);
        }
        self.config.workers = workers - 1;
        self.config.workers
    }

    /// Starts the IO threads, on the sockets of cluster worker `worker`
    /// (`None`: single mode, all of them). Call once, after any fork. A
    /// worker closes the other workers' sockets: the master holds them.
    pub fn start(&mut self, worker: Option<usize>) -> io::Result<()> {
        let Some(jobs_tx) = self.jobs_tx.take() else {
            return Err(io::Error::other("engine already started"));
        };
        if !self.config.shared_listeners {
            self.kept_groups = self
                .groups
                .iter()
                .map(Group::try_clone)
                .collect::<io::Result<_>>()?;
        }
        let groups = self.take_listeners(worker)?;
        crate::logs::sink::start(self.shared.faults.clone())?;
        crate::stats::set(crate::stats::QUEUE_CAPACITY, self.config.queue_depth as u64);
        if self.config.trust_request_start {
            crate::stats::trust_request_start();
        }
        if let Some(format) = self.config.access_log {
            crate::logs::access::enable(format, worker);
        }
        if self.config.inline_io {
            let mut loops = Vec::with_capacity(groups.len());
            for listeners in groups {
                let mailbox = Arc::new(Mailbox::new()?);
                let state = IoThread::new(
                    listeners,
                    &self.config,
                    None,
                    mailbox.clone(),
                    self.shared.clone(),
                )?;
                self.mailboxes.push(mailbox.clone());
                loops.push((state, mailbox));
            }
            let loops = Arc::new(Loops::new(loops, jobs_tx, self.shared.faults.clone()));
            let sweeper = loops.clone();
            let handle = crate::process::supervise::spawn(
                "butterflies-sweeper".to_string(),
                self.shared.faults.clone(),
                move || {
                    sweeper.sweep();
                    Ok(())
                },
            )?;
            self.threads.push(handle);
            self.loops = Some(loops);
            return Ok(());
        }
        for (index, listeners) in groups.into_iter().enumerate() {
            let mailbox = Arc::new(Mailbox::new()?);
            let thread = IoThread::new(
                listeners,
                &self.config,
                Some(jobs_tx.clone()),
                mailbox.clone(),
                self.shared.clone(),
            )?;
            let handle = crate::process::supervise::spawn(
                format!("butterflies-io-{index}"),
                self.shared.faults.clone(),
                move || thread.run(),
            )?;
            self.mailboxes.push(mailbox);
            self.threads.push(handle);
        }
        Ok(())
    }

    /// The inline loops the app threads poll (`Config::inline_io`), once
    /// started.
    pub fn loops(&self) -> Option<Arc<Loops>> {
        self.loops.clone()
    }

    /// The queue app threads take jobs from. It disconnects when every IO
    /// thread (or inline loop) has finished after `stop`.
    pub fn jobs(&self) -> Receiver<Queued> {
        self.jobs_rx.clone()
    }

    /// Where idle app threads wait for the queue (`net::doorbell`).
    pub fn doorbell(&self) -> Arc<Doorbell> {
        self.doorbell.clone()
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

    /// Reads every TLS bind's certificates again: new handshakes use
    /// them, connections keep theirs. Returns one line per bind that kept
    /// its old certificates, and why.
    pub fn reload_tls(&self) -> Vec<String> {
        self.config
            .tls_binds
            .iter()
            .filter_map(|(addr, tls)| tls.reload().err().map(|e| format!("{addr}: {e}")))
            .collect()
    }
}

/// The PROXY protocol needs to know whom to believe: a TCP bind with it
/// on and no `proxy_from` is refused (a Unix socket's file permissions
/// say who connects).
fn check_proxy(config: &Config) -> io::Result<()> {
    if let Some((addr, _)) = config
        .proxy_binds
        .iter()
        .find(|(addr, _)| config.tls_binds.iter().any(|(a, _)| a == addr))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{addr}: proxy_protocol on a TLS bind is not supported yet (terminate TLS in \
                 the proxy, or send the PROXY header to a plain bind)"
            ),
        ));
    }
    let untrusted = config
        .proxy_binds
        .iter()
        .find(|(addr, _)| matches!(addr, BindAddr::Tcp(_)));
    match untrusted {
        Some((addr, _)) if config.proxy_from.is_empty() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{addr}: proxy_protocol needs proxy_from (the addresses of the proxies whose \
                 header to believe)"
            ),
        )),
        _ => Ok(()),
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

/// Steers every TCP group's new connections to its first `count` sockets
/// (`listener::steer`); where the kernel refuses, says so once and leaves
/// the kernel's own hashing (a leaving worker's queue may then lose the
/// connections that arrive as it closes).
fn steer(groups: &[Group], count: usize) {
    for group in groups.iter().filter(|g| g.per_worker()) {
        if let Some(Listener::Tcp(first)) = group.listeners.first() {
            if let Err(e) = listener::steer(first, count) {
                crate::log_err!("butterflies: cannot steer connections between workers: {e}");
            }
        }
    }
}

impl Engine {
    /// Per IO thread, its listeners: worker `worker`'s sockets of every
    /// TCP address, and a descriptor of every Unix socket. The rest close.
    fn take_listeners(&mut self, worker: Option<usize>) -> io::Result<Vec<ThreadListeners>> {
        let threads = self.config.io_threads.max(1);
        let mut per_thread: Vec<ThreadListeners> = (0..threads).map(|_| Vec::new()).collect();
        for group in std::mem::take(&mut self.groups) {
            let mine = match (group.per_worker(), worker) {
                (true, Some(w)) => w * threads..(w + 1) * threads,
                _ => 0..group.listeners.len(),
            };
            for (i, listener) in group.listeners.into_iter().enumerate() {
                if mine.contains(&i) {
                    per_thread[i % threads].push((listener, group.front.clone()));
                }
            }
        }
        if per_thread.iter().any(Vec::is_empty) {
            return Err(io::Error::other(format!(
                "no sockets for worker {worker:?} of {}",
                self.workers()
            )));
        }
        Ok(per_thread)
    }
}

/// A group of exactly `wanted` sockets: a short one (inherited from a
/// process with fewer threads or workers) is filled, with new members of
/// the SO_REUSEPORT group for TCP and duplicates for Unix; a long one's
/// surplus is closed.
fn resize_group(
    mut group: Vec<Listener>,
    wanted: usize,
    layout: Layout,
    options: listener::ListenOptions,
) -> io::Result<Vec<Listener>> {
    if group.len() > wanted {
        group.truncate(wanted);
        if layout == Layout::PerWorker {
            listener::warn_unless_migrating("workers or threads no longer configured");
        }
    }
    let mut i = 0;
    while group.len() < wanted {
        let more = match (layout, group[i].tcp_addr()) {
            (Layout::PerWorker, Some(addr)) => Listener::Tcp(listener::join_group(addr, options)?),
            _ => group[i].try_clone()?,
        };
        group.push(more);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn cluster(workers: usize, threads: usize) -> (Engine, SocketAddr) {
        let mut config = Config::new(vec![BindAddr::Tcp("127.0.0.1:0".parse().unwrap())]);
        config.io_threads = threads;
        config.workers = workers;
        config.shared_listeners = true;
        let engine = Engine::bind(config).unwrap();
        let BindAddr::Tcp(addr) = engine.local_addrs()[0] else {
            panic!("not TCP")
        };
        (engine, addr)
    }

    #[test]
    fn each_worker_gets_io_threads_sockets_of_its_own() {
        let (mut engine, _) = cluster(3, 2);
        assert_eq!(engine.groups[0].listeners.len(), 6);
        let fds: Vec<i32> = engine.groups[0]
            .listeners
            .iter()
            .map(AsRawFd::as_raw_fd)
            .collect();
        let mine = engine.take_listeners(Some(1)).unwrap();
        let taken: Vec<i32> = mine.iter().flatten().map(|(l, _)| l.as_raw_fd()).collect();
        assert_eq!(
            taken,
            fds[2..4],
            "worker 1 has the third and fourth sockets"
        );
    }

    #[test]
    fn the_kernel_spreads_new_connections_over_the_workers_sockets() {
        let (mut engine, addr) = cluster(2, 1);
        let listeners = std::mem::take(&mut engine.groups[0].listeners);
        let clients: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let accepted: Vec<usize> = listeners
            .iter()
            .map(|l| {
                let Listener::Tcp(l) = l else {
                    panic!("not TCP")
                };
                l.set_nonblocking(true).unwrap();
                std::iter::from_fn(|| l.accept().ok()).count()
            })
            .collect();
        assert_eq!(accepted.iter().sum::<usize>(), clients.len());
        // Hashing by 4-tuple: 64 on one of two sockets has odds 2^-63.
        assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    }

    #[test]
    fn workers_are_added_and_removed_with_their_sockets() {
        let (mut engine, addr) = cluster(1, 2);
        assert_eq!(engine.add_worker().unwrap(), 2);
        assert_eq!(engine.groups[0].listeners.len(), 4);
        let ports: Vec<u16> = engine.groups[0]
            .listeners
            .iter()
            .map(|l| l.tcp_addr().unwrap().port())
            .collect();
        assert!(ports.iter().all(|&p| p == addr.port()), "{ports:?}");
        assert_eq!(engine.remove_worker(), 1);
        assert_eq!(engine.groups[0].listeners.len(), 2);
        assert_eq!(
            engine.remove_worker(),
            1,
            "the last worker keeps its sockets"
        );
    }

    #[test]
    fn a_passed_socket_is_one_queue_every_worker_shares() {
        // As systemd binds it: no SO_REUSEPORT, so nothing can join it.
        let passed = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = passed.local_addr().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(passed);
        let mut config = Config::new(Vec::new());
        config.io_threads = 2;
        config.workers = 3;
        config.shared_listeners = true;
        config.activated = vec![fd];
        let mut engine = Engine::bind(config).unwrap();
        assert_eq!(engine.local_addrs(), vec![BindAddr::Tcp(addr)]);
        assert_eq!(engine.groups[0].listeners.len(), 2, "one per IO thread");
        assert_eq!(engine.add_worker().unwrap(), 4);
        assert_eq!(engine.groups[0].listeners.len(), 2, "not grown");
        assert_eq!(engine.listener_fds(true).unwrap().len(), 2);
        assert!(engine.listener_fds(false).unwrap().is_empty());
        assert!(engine.own_socket_paths().is_empty());
        let theirs = engine.take_listeners(Some(3)).unwrap();
        assert_eq!(
            theirs.iter().flatten().count(),
            2,
            "the last worker has it too"
        );
        let client = TcpStream::connect(addr).unwrap();
        let Listener::Tcp(listener) = &theirs[0][0].0 else {
            panic!("not TCP")
        };
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
    }

    #[test]
    fn an_inherited_group_is_filled_or_trimmed_to_the_workers() {
        let (engine, addr) = cluster(1, 1);
        drop(engine);
        let group =
            listener::bind(&BindAddr::Tcp(addr), 3, listener::ListenOptions::default()).unwrap();
        let options = listener::ListenOptions::default();
        assert_eq!(
            resize_group(group, 1, Layout::PerWorker, options)
                .unwrap()
                .len(),
            1
        );
        let group = listener::bind(&BindAddr::Tcp(addr), 1, options).unwrap();
        let grown = resize_group(group, 4, Layout::PerWorker, options).unwrap();
        assert_eq!(grown.len(), 4);
        assert!(grown.iter().all(|l| l.tcp_addr() == Some(addr)));
    }
}
