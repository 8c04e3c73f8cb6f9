//! The accept loop: one task per client, bounded by `max_client_conn`, each login bounded by
//! `client_login_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::handshake::{self, Opening};
use super::session;
use crate::error::ClientError;
use crate::shared::Shared;
use crate::wire::startup::{parse_startup, StartupPacket};

/// Counts open client sockets (logged in or not) against `max_client_conn`.
#[derive(Default)]
pub struct ConnCount(AtomicUsize);

struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conn_count.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnCount {
    /// Current count.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Accepts clients until `stop` turns true.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let max = shared.runtime.load().config.proxy.max_client_conn;
        let count = shared.conn_count.0.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = ConnGuard(shared.clone());
        if count > max {
            tokio::spawn(async move {
                refuse(&guard.0, tcp, ClientError::fatal("53300", "sorry, too many clients already")).await;
                drop(guard);
            });
            continue;
        }
        tokio::spawn(handle(guard, tcp, peer));
    }
}

/// One client connection, counted by `guard` until it ends.
async fn handle(guard: ConnGuard, tcp: TcpStream, peer: SocketAddr) {
    let shared = guard.0.clone();
    // 0 turns the bound off, as in PgBouncer.
    let timeout =
        shared.runtime.load().config.proxy.client_login_timeout.enabled().unwrap_or(Duration::from_secs(86_400 * 365));
    // Boxed: the login's state (TLS handshake, SCRAM) is freed once it is done instead of
    // sizing the task of every idle client.
    let opening = tokio::time::timeout(timeout, Box::pin(handshake::open(&shared, tcp, peer))).await;
    match opening {
        Ok(Ok(Opening::Session(login))) if crate::admin::console::is_console_database(&login.database) => {
            Box::pin(crate::admin::console::run(shared, *login)).await
        }
        Ok(Ok(Opening::Session(login))) => session::run(shared, login).await,
        Ok(Ok(Opening::Cancelled)) => {}
        Ok(Err(e)) => {
            shared.stats.login_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = e {
                tracing::info!(%peer, code = %e.code, "connection refused: {}", e.message);
            }
        }
        Err(_) => {
            shared.stats.login_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "client_login_timeout: closing a connection that did not log in");
        }
    }
}

/// Reads the opening packets (declining TLS) just far enough to answer with an error, as
/// PostgreSQL does when it is full. A CancelRequest is still carried out: it is one short packet,
/// and a full proxy is when a runaway query most needs stopping.
pub async fn refuse(shared: &Shared, mut tcp: TcpStream, e: ClientError) {
    let answer = async {
        let mut buf = bytes::BytesMut::with_capacity(256);
        loop {
            match parse_startup(&buf) {
                Ok(Some((StartupPacket::SslRequest | StartupPacket::GssEncRequest, n))) => {
                    let _ = buf.split_to(n);
                    tcp.write_all(b"N").await?;
                }
                Ok(Some((StartupPacket::Cancel { pid, secret }, _))) => {
                    shared.sessions.cancel(pid, secret).await;
                    return Ok(());
                }
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => {
                    if tcp.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
            }
        }
        tcp.write_all(&e.frame()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
}
