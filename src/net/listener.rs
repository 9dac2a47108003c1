//! Listening sockets. Each IO thread owns one socket per bound TCP address,
//! all in one `SO_REUSEPORT` group, so the kernel spreads new connections
//! over the threads and no user-space accept queue is needed. A Unix socket
//! has one accept queue; each IO thread gets its own descriptor of it.
//!
//! Both kinds are a [`Listener`]; the IO threads use only its descriptor
//! (epoll, accept4), so one loop serves both.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl BindAddr {
    /// Whether a socket bound to `self` serves a request to bind `wanted`:
    /// the same address, or the same IP when any port (0) was asked for
    /// (a hot restart of a server that was started on port 0).
    pub fn satisfies(&self, wanted: &BindAddr) -> bool {
        match (self, wanted) {
            (BindAddr::Tcp(have), BindAddr::Tcp(want)) if want.port() == 0 => {
                have.ip() == want.ip()
            }
            _ => self == wanted,
        }
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// The TCP address it listens on; `None` for a Unix socket.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// Another descriptor of the same socket (the same accept queue).
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// What a listener's connections begin with before HTTP: a PROXY
/// protocol header, a TLS handshake (in that order), or neither.
#[derive(Debug, Clone, Default)]
pub struct Front {
    pub proxy: Option<std::sync::Arc<crate::proxy::Policy>>,
    pub tls: Option<std::sync::Arc<crate::tls::Tls>>,
}

/// Per-listener options.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    pub backlog: i32,
    /// TCP_FASTOPEN queue length (0: off).
    pub tcp_fastopen: u32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: DEFAULT_BACKLOG,
            tcp_fastopen: 0,
        }
    }
}

/// `count` listeners for `addr`: a SO_REUSEPORT group for TCP, one socket
/// (and `count - 1` duplicates of it) for Unix.
pub fn bind(addr: &BindAddr, count: usize, options: ListenOptions) -> io::Result<Vec<Listener>> {
    match addr {
        BindAddr::Tcp(addr) => {
            let group = bind_group(*addr, count, options.backlog)?;
            if options.tcp_fastopen > 0 {
                for listener in &group {
                    set_fastopen(listener, options.tcp_fastopen)?;
                }
            }
            Ok(group.into_iter().map(Listener::Tcp).collect())
        }
        BindAddr::Unix(path) => {
            duplicates(Listener::Unix(bind_unix(path, options.backlog)?), count)
        }
    }
}

/// The listener and `count - 1` duplicates of its descriptor.
pub fn duplicates(listener: Listener, count: usize) -> io::Result<Vec<Listener>> {
    let mut all = Vec::with_capacity(count);
    for _ in 1..count.max(1) {
        all.push(listener.try_clone()?);
    }
    all.push(listener);
    Ok(all)
}

fn set_fastopen(listener: &TcpListener, queue: u32) -> io::Result<()> {
    let queue = i32::try_from(queue).unwrap_or(i32::MAX);
    // SAFETY: setsockopt with a valid descriptor, a level/option pair that
    // takes an int, and a pointer to an int that lives across the call.
    let rc = unsafe {
        nix::libc::setsockopt(
            listener.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_FASTOPEN,
            (&queue as *const i32).cast(),
            std::mem::size_of::<i32>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds a Unix socket. A leftover socket file that nobody listens on
/// (a crashed server's) is removed first; a live one is "in use".
fn bind_unix(path: &std::path::Path, backlog: i32) -> io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        std::fs::remove_file(path)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::unix(path)?)?;
    socket.listen(backlog)?;
    Ok(UnixListener::from(OwnedFd::from(socket)))
}

/// Takes over a listening socket inherited across exec (hot restart).
/// Returns it and the address it listens on.
///
/// # Safety
///
/// `fd` must be an open descriptor that nothing else in this process owns.
pub unsafe fn adopt(fd: RawFd) -> io::Result<(Listener, BindAddr)> {
    // SAFETY: the caller passes an open descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = Socket::from(owned);
    if !socket.is_listener()? {
        return Err(io::Error::other(format!(
            "inherited descriptor {fd} is not a listening socket"
        )));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    let owned = OwnedFd::from(socket);
    match (local.as_socket(), local.as_pathname()) {
        (Some(addr), _) => Ok((Listener::Tcp(TcpListener::from(owned)), BindAddr::Tcp(addr))),
        (None, Some(path)) => Ok((
            Listener::Unix(UnixListener::from(owned)),
            BindAddr::Unix(path.to_path_buf()),
        )),
        _ => Err(io::Error::other(format!(
            "inherited descriptor {fd} has no usable address"
        ))),
    }
}

/// Lets a listener survive exec (for a hot restart's new master).
pub fn keep_across_exec(listener: &Listener) -> io::Result<RawFd> {
    let socket = socket2::SockRef::from(listener);
    socket.set_cloexec(false)?;
    Ok(listener.as_raw_fd())
}

/// Default `listen(2)` backlog (what Puma and Unicorn use).
pub const DEFAULT_BACKLOG: i32 = 1024;

/// Binds `count` sockets to `addr` in one SO_REUSEPORT group. With port 0
/// the first socket picks the port and the others join it.
///
/// A port that another SO_REUSEPORT server of the same user already holds
/// would be silently shared, so the address is first probed with a plain
/// bind: "address in use" must be an error, not half the traffic gone.
pub fn bind_group(addr: SocketAddr, count: usize, backlog: i32) -> io::Result<Vec<TcpListener>> {
    let mut addr = probe(addr)?;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let listener = bind_one(addr, backlog)?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Binds and closes a socket without SO_REUSEPORT; returns the address it
/// got (the real port when asked for port 0).
fn probe(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// One more member of the SO_REUSEPORT group already bound at `addr`
/// (with its real port).
pub fn join_group(addr: SocketAddr, options: ListenOptions) -> io::Result<TcpListener> {
    let listener = bind_one(addr, options.backlog)?;
    if options.tcp_fastopen > 0 {
        set_fastopen(&listener, options.tcp_fastopen)?;
    }
    Ok(listener)
}

/// Steers the new connections of `listener`'s SO_REUSEPORT group to the
/// group's first `count` sockets (in the order they were bound), picked
/// at random: a classic BPF program attached to the group
/// (`SO_ATTACH_REUSEPORT_CBPF`: `ld rand; mod #count; ret a`). A cluster
/// master steers away from a leaving worker's sockets (always the last
/// ones) before that worker drains them, so none of them gets a
/// connection that would be reset when they close.
pub fn steer(listener: &TcpListener, count: usize) -> io::Result<()> {
    use nix::libc::{
        sock_filter, sock_fprog, BPF_A, BPF_ABS, BPF_ALU, BPF_K, BPF_LD, BPF_MOD, BPF_RET,
    };
    /// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic; the libc crate names it
    /// for Android only).
    const SO_ATTACH_REUSEPORT_CBPF: nix::libc::c_int = 51;
    const BPF_W: u32 = 0x00;
    let count = u32::try_from(count.max(1)).map_err(io::Error::other)?;
    let random = (nix::libc::SKF_AD_OFF + nix::libc::SKF_AD_RANDOM) as u32;
    let mut program = [
        sock_filter {
            code: (BPF_LD | BPF_W | BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: random,
        },
        sock_filter {
            code: (BPF_ALU | BPF_MOD | BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: count,
        },
        sock_filter {
            code: (BPF_RET | BPF_A) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: setsockopt on an open socket with a sock_fprog that points
    // at `program`, both alive across the call; the kernel copies them.
    let rc = unsafe {
        nix::libc::setsockopt(
            listener.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const sock_fprog).cast(),
            std::mem::size_of::<sock_fprog>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the kernel moves the connections queued on a closed listening
/// socket to the other sockets of its SO_REUSEPORT group
/// (`net.ipv4.tcp_migrate_req`, Linux 5.14+), instead of resetting them.
pub fn migrating() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

/// Says, when closing listening sockets nobody else holds, that what is
/// queued on them is reset, unless the kernel migrates it.
pub fn warn_unless_migrating(what: &str) {
    if !migrating() {
        crate::log_err!(
            "butterflies: closing the listening sockets of {what}: connections queued on them \
             are reset (set net.ipv4.tcp_migrate_req = 1 to move them to the other sockets)"
        );
    }
}

fn bind_one(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steered_group_sends_every_connection_to_its_first_sockets() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3, 64).unwrap();
        let addr = group[0].local_addr().unwrap();
        steer(&group[0], 2).unwrap();
        let clients: Vec<std::net::TcpStream> = (0..48)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let accepted: Vec<usize> = group
            .iter()
            .map(|l| {
                l.set_nonblocking(true).unwrap();
                std::iter::from_fn(|| l.accept().ok()).count()
            })
            .collect();
        assert_eq!(
            accepted.iter().sum::<usize>(),
            clients.len(),
            "{accepted:?}"
        );
        assert_eq!(
            accepted[2], 0,
            "the third socket is steered away from: {accepted:?}"
        );
        assert!(
            accepted[0] > 0 && accepted[1] > 0,
            "both others get some: {accepted:?}"
        );
    }

    #[test]
    fn port_zero_group_shares_one_port() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let ports: Vec<u16> = group
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|&p| p == ports[0]), "{ports:?}");
    }

    #[test]
    fn unix_sockets_bind_share_and_refuse_a_live_path() {
        let dir = std::env::temp_dir().join(format!("bf-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let addr = BindAddr::Unix(path.clone());
        let group = bind(&addr, 2, ListenOptions::default()).unwrap();
        assert_eq!(group.len(), 2);
        assert_eq!(
            bind(&addr, 1, ListenOptions::default()).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(group);
        // A stale file from a dead server is replaced.
        assert_eq!(bind(&addr, 1, ListenOptions::default()).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tcp_fastopen_is_set_when_asked_for() {
        let options = ListenOptions {
            backlog: 16,
            tcp_fastopen: 128,
        };
        let group = bind(&BindAddr::Tcp("127.0.0.1:0".parse().unwrap()), 1, options).unwrap();
        let mut queue: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as nix::libc::socklen_t;
        // SAFETY: getsockopt into an int of the size passed, on an open socket.
        let rc = unsafe {
            nix::libc::getsockopt(
                group[0].as_raw_fd(),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_FASTOPEN,
                (&mut queue as *mut i32).cast(),
                &mut len,
            )
        };
        assert_eq!((rc, queue), (0, 128));
    }

    #[test]
    fn adopted_descriptors_report_their_address() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let want = group[0].local_addr().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(group.into_iter().next().unwrap());
        // SAFETY: `fd` was just released by its owner.
        let (_listener, addr) = unsafe { adopt(fd) }.unwrap();
        assert_eq!(addr, BindAddr::Tcp(want));
    }

    #[test]
    fn a_port_held_by_another_group_is_in_use() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let addr = first[0].local_addr().unwrap();
        let err = bind_group(addr, 1, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
