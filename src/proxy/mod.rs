//! The PROXY protocol: a load balancer in front (HAProxy, nginx's
//! `proxy_protocol`, AWS NLB) says who the client is in the first bytes of
//! each connection. Pure Rust, no Ruby: the header parser and the trusted
//! ranges, and the policy a listener applies.

pub mod header;
pub mod trust;

pub use header::{Header, HeaderError, Versions};
pub use trust::Cidr;

use std::net::SocketAddr;

/// What a listener with the PROXY protocol on does with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub versions: Versions,
    /// Peers whose header is required and believed. From any other peer,
    /// a header is not looked for: its bytes are read as HTTP (a 400).
    pub trusted: Vec<Cidr>,
}

impl Policy {
    /// Whether a connection from `peer` must start with a header. `None`:
    /// a Unix socket's peer, which has no address; its file's permissions
    /// decide who connects, so the header is required.
    pub fn expects_header(&self, peer: Option<SocketAddr>) -> bool {
        match peer {
            None => true,
            Some(peer) => self.trusted.iter().any(|c| c.contains(peer.ip())),
        }
    }
}

/// Logs the first connection refused for its PROXY protocol header, with
/// what to check; later ones only count, so a misconfigured proxy (or a
/// scanner) cannot flood the log.
pub fn note_refused(peer: SocketAddr, error: &HeaderError) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static LOGGED: AtomicBool = AtomicBool::new(false);
    crate::stats::add(crate::stats::PROXY_REFUSED, 1);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        crate::log_err!(
            "butterflies: closed a connection from {peer}: {error} (the bind has proxy_protocol \
             on and proxy_from trusts this peer; does the proxy send the header?). \
             Later ones are counted, not logged."
        );
    }
}
