//! A byte stream to a client or a server: plain TCP, TLS over it, or a Unix-domain socket
//! (clients of `[proxy] unix_socket_dir`), behind one type.
//!
//! An enum rather than `Box<dyn AsyncRead + AsyncWrite>` so the hot path has no virtual calls and
//! the plain cases can use socket tricks (non-blocking liveness checks, readiness waits).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Plain or TLS, toward a client (server-side TLS) or a PostgreSQL server (client-side TLS).
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// A client on the Unix-domain socket (never TLS, as in PostgreSQL).
    Unix(UnixStream),
    /// TLS we terminate for a client.
    TlsAccepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS we opened toward PostgreSQL.
    TlsConnected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (`None` on a Unix socket).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Unix(_) => None,
            Stream::TlsAccepted(s) => Some(s.get_ref().0),
            Stream::TlsConnected(s) => Some(s.get_ref().0),
        }
    }

    /// True when this is a TLS session.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsAccepted(_) | Stream::TlsConnected(_))
    }

    /// True on the Unix-domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Readiness of the socket underneath, without reading (plain TCP and Unix sockets only:
    /// TLS may have bytes buffered that readiness does not show). `None` for TLS.
    pub fn poll_raw_read_ready(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        match self {
            Stream::Plain(s) => Some(s.poll_read_ready(cx)),
            Stream::Unix(s) => Some(s.poll_read_ready(cx)),
            Stream::TlsAccepted(_) | Stream::TlsConnected(_) => None,
        }
    }

    /// Non-blocking check that an idle connection is still open and silent: an idle PostgreSQL
    /// connection sends nothing, so readable data (a FATAL on shutdown) or EOF means it is gone.
    /// tokio's `try_read` asks the reactor's cached readiness first and reads only when it says
    /// readable, so the usual case costs no system call (and, unlike polling readiness, registers
    /// no waker).
    pub fn idle_and_open(&self) -> bool {
        let Some(tcp) = self.tcp() else {
            // Server connections are TCP; a Unix client is not probed this way.
            return true;
        };
        let mut probe = [0u8; 1];
        match tcp.try_read(&mut probe) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsAccepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsConnected(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsAccepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsConnected(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsAccepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsConnected(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsAccepted(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsConnected(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
