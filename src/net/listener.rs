//! Listening sockets. Each IO thread owns one socket per bound address, all
//! in one `SO_REUSEPORT` group, so the kernel spreads new connections over
//! the threads and no user-space accept queue is needed.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

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
    fn a_port_held_by_another_group_is_in_use() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let addr = first[0].local_addr().unwrap();
        let err = bind_group(addr, 1, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
