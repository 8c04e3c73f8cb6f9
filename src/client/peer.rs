//! Where a client connected from: a TCP address, or the Unix-domain socket.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A client's address, as logs, the access rules and the failed-login limit see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client at this address.
    Tcp(SocketAddr),
    /// A client of `[proxy] unix_socket_dir`. A Unix socket has no peer address to tell clients
    /// apart by, so all of them are one address to `max_failed_logins`.
    Unix,
}

impl Peer {
    /// The client's IP address (`None` on the Unix socket).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Tcp(a) => Some(a.ip().to_canonical()),
            Peer::Unix => None,
        }
    }

    /// The host as PostgreSQL names it in messages: the IP address, or `[local]`.
    pub fn host(&self) -> String {
        match self.ip() {
            Some(ip) => ip.to_string(),
            None => "[local]".into(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix => f.write_str("[local]"),
        }
    }
}
