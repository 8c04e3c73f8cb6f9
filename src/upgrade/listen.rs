//! TCP listeners a successor can share: SO_REUSEPORT, with a check that a first start still
//! refuses a port in use. (The Unix socket is replaced by rename: see `client::socket_file`.)

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// How a listener is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// A first start: the port must be free, as without SO_REUSEPORT (two pgshift processes
    /// started by mistake on one port would otherwise share it silently).
    Fresh,
    /// A binary upgrade: the old process holds the port, with SO_REUSEPORT; share it.
    Upgrade,
}

/// Binds `listen` (host:port) with SO_REUSEPORT so that a later upgrade can bind it too.
pub async fn tcp(listen: &str, bind: Bind) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "the address resolves to nothing");
    for addr in tokio::net::lookup_host(listen).await? {
        match tcp_at(addr, bind) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn tcp_at(addr: SocketAddr, bind: Bind) -> io::Result<TcpListener> {
    if bind == Bind::Fresh && addr.port() != 0 {
        // Fails with AddrInUse while anything listens there, SO_REUSEPORT or not.
        drop(std::net::TcpListener::bind(addr)?);
    }
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fresh_bind_refuses_a_taken_port_and_an_upgrade_shares_it() {
        let first = tcp("127.0.0.1:0", Bind::Fresh).await.unwrap();
        let addr = first.local_addr().unwrap().to_string();
        assert_eq!(tcp(&addr, Bind::Fresh).await.unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let second = tcp(&addr, Bind::Upgrade).await.unwrap();
        assert_eq!(second.local_addr().unwrap(), first.local_addr().unwrap());
    }
}
