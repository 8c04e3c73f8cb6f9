//! A client's opening: TLS negotiation (SSLRequest or direct), cancel requests, the startup packet,
//! and authentication against the configured users.
//!
//! Written by hand on pgwire's model but not with its `negotiate_tls`, which carries bytes read
//! before the TLS handshake into the TLS session (the CVE-2021-23214 class). Here any byte that
//! arrives after an SSLRequest and before the handshake ends the connection.

use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::peer::Peer;
use super::registry::CancelOutcome;
use crate::auth::UserEntry;
use crate::config::TlsMode;
use crate::error::ClientError;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::wire::startup::{parse_startup, StartupPacket, MAX_STARTUP_LEN};
use crate::wire::{frame, messages, tag};

/// Databases that open the PgBouncer-style admin console instead of a pool.
pub const CONSOLE_DATABASES: &[&str] = &["pgbouncer", "pgshift"];

/// Frames before login are small; a bound keeps unauthenticated peers from making us buffer more.
const MAX_LOGIN_FRAME: usize = 16 * 1024;

/// A client that has passed authentication.
pub struct Login {
    /// Its connection (TLS already negotiated).
    pub stream: Stream,
    /// Bytes already read beyond the login dialogue.
    pub rbuf: BytesMut,
    /// The user it logged in as (`None` in trust mode for users not in the config).
    pub user: Arc<UserEntry>,
    /// Database asked for.
    pub database: String,
    /// All startup parameters.
    pub params: Vec<(String, String)>,
    /// Client address.
    pub peer: Peer,
}

/// How an opening ends when it does not produce a session.
pub enum Opening {
    /// A client ready for its session.
    Session(Box<Login>),
    /// A CancelRequest was handled; the connection closes.
    Cancelled,
}

/// Runs the whole opening of a plain TCP or Unix-socket client. An `Err` has already been sent
/// to the client (if it could be); it comes back for logging, or `None` when the connection just
/// ended.
///
/// On the Unix socket there is no TLS, as in PostgreSQL and PgBouncer: an SSLRequest is answered
/// 'N', and `[tls] mode = require` does not apply (the socket file's permissions guard it).
pub async fn open(shared: &Arc<Shared>, mut stream: Stream, peer: Peer) -> Result<Opening, Option<ClientError>> {
    let rt = shared.runtime.load_full();
    let tls = if stream.is_unix() { None } else { rt.client_tls.clone() };
    let mut buf = BytesMut::with_capacity(1024);

    stream = direct_tls(stream, tls.as_deref()).await?;

    let (minor, params) = loop {
        let packet = match read_startup(&mut stream, &mut buf).await {
            Ok(p) => p,
            Err(Some(e)) => return fail(&mut stream, e).await,
            Err(None) => return Err(None),
        };
        match packet {
            StartupPacket::SslRequest if !stream.is_tls() => {
                if !buf.is_empty() {
                    // Bytes pipelined after SSLRequest would be plaintext injected into TLS.
                    return fail(&mut stream, ClientError::protocol("received unencrypted data after SSL request"))
                        .await;
                }
                match &tls {
                    Some(t) => {
                        write(&mut stream, b"S").await?;
                        stream = accept_tls(stream, Some(t), false).await?;
                    }
                    None => write(&mut stream, b"N").await?,
                }
            }
            StartupPacket::GssEncRequest if !stream.is_tls() => write(&mut stream, b"N").await?,
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                return fail(&mut stream, ClientError::protocol("unexpected encryption request inside TLS")).await
            }
            StartupPacket::Cancel { pid, secret } => {
                forward_cancel(shared, pid, secret, Reach::Fleet).await;
                return Ok(Opening::Cancelled);
            }
            StartupPacket::Startup { minor, params } => break (minor, params),
        }
    };

    if tls.as_ref().is_some_and(|t| t.mode == TlsMode::Require) && !stream.is_tls() {
        return fail(&mut stream, ClientError::fatal("28000", "TLS is required: connect with sslmode=require")).await;
    }
    let unknown: Vec<String> = params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect();
    if minor > 0 || !unknown.is_empty() {
        write(&mut stream, &messages::negotiate_protocol_version(0, &unknown)).await?;
    }
    let Some(user) = StartupPacket::param(&params, "user").map(str::to_string) else {
        return fail(&mut stream, ClientError::fatal("28000", "no PostgreSQL user name specified in startup packet"))
            .await;
    };
    if StartupPacket::param(&params, "replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return fail(&mut stream, ClientError::fatal("08P01", "replication connections are not supported by pgshift"))
            .await;
    }
    let database = StartupPacket::param(&params, "database").filter(|d| !d.is_empty()).unwrap_or(&user).to_string();

    let method = match super::login::method_for(&rt, peer, stream.is_tls(), &user, &database) {
        Ok(m) => m,
        Err(e) => return fail(&mut stream, e).await,
    };
    let entry = match super::login::authenticate(shared, &mut stream, &mut buf, &user, method).await {
        Ok(e) => e,
        Err(e) if e.is_client_left_login() => return Err(None),
        Err(e) => return fail(&mut stream, e).await,
    };
    if rt.config.fleet.enabled() && rt.config.fleet.store_role().as_deref() == Some(user.as_str()) {
        return fail(&mut stream, ClientError::fleet_store_role(&user)).await;
    }
    write(&mut stream, &messages::auth_ok()).await?;
    Ok(Opening::Session(Box::new(Login { stream, rbuf: buf, user: entry, database, params, peer })))
}

/// Sends the error to the client, then hands it back for the caller's log line.
async fn fail<T>(stream: &mut Stream, e: ClientError) -> Result<T, Option<ClientError>> {
    let _ = stream.write_all(&e.frame()).await;
    let _ = stream.flush().await;
    Err(Some(e))
}

pub(super) async fn write(stream: &mut Stream, bytes: &[u8]) -> Result<(), Option<ClientError>> {
    stream.write_all(bytes).await.map_err(|_| None)?;
    stream.flush().await.map_err(|_| None)
}

/// PostgreSQL 17 direct TLS, on TCP: a first byte that is a TLS handshake record (0x16) starts
/// the handshake at once, without an SSLRequest.
async fn direct_tls(stream: Stream, tls: Option<&crate::tls::ClientTls>) -> Result<Stream, Option<ClientError>> {
    let Some(tcp) = stream.tcp() else { return Ok(stream) };
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(|_| None)? == 0 {
        return Err(None);
    }
    if first[0] == 0x16 {
        return accept_tls(stream, tls, true).await;
    }
    Ok(stream)
}

async fn accept_tls(
    stream: Stream,
    tls: Option<&crate::tls::ClientTls>,
    direct: bool,
) -> Result<Stream, Option<ClientError>> {
    let (Stream::Plain(tcp), Some(tls)) = (stream, tls) else {
        return Err(None); // direct TLS with TLS disabled: nothing sensible to answer
    };
    let s = tls.acceptor.accept(tcp).await.map_err(|e| {
        tracing::debug!("TLS handshake failed: {e}");
        // The client hanging up mid-handshake is not a refusal; a certificate or protocol the
        // handshake rejected is (and counts as a failed login). No ErrorResponse can be sent.
        let left = matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset);
        (!left).then(|| ClientError::fatal("08P01", format!("TLS handshake failed: {e}")))
    })?;
    if direct && s.get_ref().1.alpn_protocol() != Some(b"postgresql") {
        return Err(None); // PostgreSQL requires ALPN for direct TLS
    }
    Ok(Stream::TlsAccepted(Box::new(s)))
}

async fn read_startup(stream: &mut Stream, buf: &mut BytesMut) -> Result<StartupPacket, Option<ClientError>> {
    loop {
        match parse_startup(buf) {
            Ok(Some((p, n))) => {
                let _ = buf.split_to(n);
                return Ok(p);
            }
            Ok(None) => {}
            Err(e) => return Err(Some(ClientError::protocol(e.to_string()))),
        }
        if buf.len() > MAX_STARTUP_LEN {
            return Err(Some(ClientError::protocol("invalid length of startup packet")));
        }
        if stream.read_buf(buf).await.map_err(|_| None)? == 0 {
            return Err(None);
        }
    }
}

/// Reads one password-family frame ('p') during login.
pub(super) async fn read_password_frame(stream: &mut Stream, buf: &mut BytesMut) -> Result<BytesMut, ClientError> {
    loop {
        match frame::complete_frame(buf) {
            Ok(Some((tag::PASSWORD, n))) if n <= MAX_LOGIN_FRAME => return Ok(buf.split_to(n)),
            // libpq says goodbye this way when it has no password to give (psql then prompts).
            Ok(Some((tag::TERMINATE, _))) => return Err(ClientError::client_left_login()),
            Ok(Some(_)) => return Err(ClientError::protocol("expected a password response")),
            Ok(None) if buf.len() > MAX_LOGIN_FRAME => return Err(ClientError::protocol("password packet too large")),
            Ok(None) => {}
            Err(e) => return Err(ClientError::protocol(e.to_string())),
        }
        let n = stream.read_buf(buf).await.map_err(|_| ClientError::client_left_login())?;
        if n == 0 {
            return Err(ClientError::client_left_login());
        }
    }
}

/// Whether a CancelRequest no local client matches may go on to another fleet instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Local clients only (a connection refused by the listener's limits).
    Local,
    /// Local clients, else the configured peer the key names (one forward at most).
    Fleet,
}

/// Routes a CancelRequest to the client holding the key and counts a dropped one against the
/// client's pool toward the primary (SHOW POOLS, /metrics). A key no local client holds goes to
/// the fleet peer it names, when `reach` allows and the fleet is on.
pub async fn forward_cancel(shared: &Shared, pid: i32, secret: i32, reach: Reach) {
    let rt = shared.runtime.load_full();
    let wait = rt.config.proxy.cancel_wait_timeout.enabled().unwrap_or(Duration::from_secs(365 * 86_400));
    let (pid, forwarded) = super::fleet::unmark(&rt.config.fleet, pid);
    match shared.sessions.cancel(pid, secret, wait).await {
        CancelOutcome::Dropped { user, database } => count_dropped(shared, &rt, &user, &database),
        // The client is still on the process this one upgrades: it carries the cancel out.
        CancelOutcome::NoMatch
            if shared.sessions.is_reserved(pid) && shared.handover.cancel_on_predecessor(pid, secret).await => {}
        CancelOutcome::NoMatch if reach == Reach::Fleet => {
            let decision = super::fleet::decide(&rt.config.fleet, pid, forwarded);
            super::fleet::forward(&shared.cancel_forwards, decision, pid, secret, wait).await;
        }
        CancelOutcome::NoMatch | CancelOutcome::Forwarded => {}
    }
}

fn count_dropped(shared: &Shared, rt: &crate::shared::Runtime, user: &str, database: &str) {
    let primary = rt.databases.resolve(database).map(|d| d.cluster.primary.address.clone());
    let pool = shared.pools.entries().into_iter().find(|(k, _)| {
        k.name == *database
            && Some(&k.address) == primary.as_ref()
            && (k.user == user || rt.databases.resolve(database).is_some_and(|d| d.forced_user.is_some()))
    });
    if let Some((_, p)) = pool {
        p.stats.cancels_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    tracing::debug!(%user, "cancel request dropped: the client had no query running");
}
