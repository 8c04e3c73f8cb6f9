//! One connection to PostgreSQL: connect, optional TLS, login, and the state the pool tracks on it.

use bytes::{Buf, BufMut, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::scram::{ClientCredential, ScramClient};
use crate::auth::{md5_response, AuthError, UserEntry};
use crate::session_state::ServerSessionState;
use crate::stream::Stream;
use crate::tls::ServerTls;
use crate::wire::{frame, messages, tag, WireError};

/// Failures talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("could not connect to server: {0}")]
    Connect(std::io::Error),
    /// Connect + login took longer than `server_connect_timeout`.
    #[error("timed out connecting to server")]
    ConnectTimeout,
    /// PostgreSQL refused the login with an ErrorResponse; forwarded to the client as is.
    #[error("server refused login: {code} {message}")]
    Refused {
        /// SQLSTATE, e.g. 3D000 for an unknown database.
        code: String,
        /// PostgreSQL's message.
        message: String,
        /// Severity (FATAL for login errors).
        severity: String,
    },
    /// We could not authenticate to PostgreSQL with what we hold.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// TLS toward the server failed or was refused.
    #[error("server TLS: {0}")]
    Tls(String),
    /// The server broke the protocol.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The connection failed while in use.
    #[error("server connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("server closed the connection unexpectedly")]
    Closed,
}

impl ServerError {
    /// The server refused this role's or database's login (unknown role, wrong password, no
    /// CONNECT privilege, unknown database) rather than failing as a server. On a replica that
    /// usually means a role or password made on the primary is not replayed there yet: a fact about
    /// one login, not a reason to stop reading from that replica.
    pub fn refuses_this_login(&self) -> bool {
        match self {
            ServerError::Refused { code, .. } => matches!(code.as_str(), "28000" | "28P01" | "3D000" | "42501"),
            ServerError::Auth(e) => {
                matches!(e, AuthError::BadPassword | AuthError::BackendSecretMismatch | AuthError::NoBackendSecret(_))
            }
            _ => false,
        }
    }
}

/// Everything needed to open a connection for one pool.
pub struct LoginSpec {
    /// `host:port` of the backend.
    pub address: String,
    /// The backend's name ("primary", "replica0"): logs name backends, never hosts.
    pub backend_name: String,
    /// Role to log in as.
    pub user: Arc<UserEntry>,
    /// Database name as the client gave it.
    pub database: String,
    /// Bound on connect + login.
    pub connect_timeout: Duration,
    /// TLS toward the server, if configured.
    pub tls: Option<Arc<ServerTls>>,
}

/// What a client may have left in a server session beyond what pgshift tracks and replays.
/// Ordered by how much it takes to undo: [`ServerConn::taint`] only ever raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Residue {
    /// Only statements proven free of session effects ran since the last reset.
    #[default]
    None,
    /// Something ran that may have changed the session (a user function, DO, DDL, COPY...):
    /// the connection is reset before another client gets it.
    Unknown,
    /// Something ran that a reset cannot undo (a loaded library, a dblink connection, the random
    /// seed): the connection is closed rather than given to another client.
    Lasting,
}

/// Cancel requests in flight toward one server connection. While one is, the connection is not
/// handed to another client: PostgreSQL acts on a cancel whenever it arrives, so a late one would
/// hit the next client's query.
#[derive(Debug, Default)]
pub struct CancelGate {
    in_flight: std::sync::atomic::AtomicU32,
    done: tokio::sync::Notify,
}

impl CancelGate {
    /// A cancel toward this connection starts.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    /// That cancel has been processed by the server (or given up on).
    pub fn end(&self) {
        if self.in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }
    /// True while a cancel is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0
    }
    /// Waits until no cancel is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if !self.busy() {
                return;
            }
            notified.await;
        }
    }
}

/// Where a cancel toward one server connection goes, with its gate: made once per connection
/// and shared, one pointer, with the client holding it (so attaching copies no address).
#[derive(Debug)]
pub struct CancelTarget {
    /// The server's address.
    pub peer: SocketAddr,
    /// Its cancel key (BackendKeyData).
    pub key: (i32, i32),
    /// The connection's id (admin port).
    pub conn_id: u64,
    /// Holds the connection back from other clients while a cancel toward it is in flight.
    pub gate: CancelGate,
    /// pgshift's replay of the holder's settings (RESET ALL, then its SETs) is running ahead of
    /// its first query: a cancel then would stop the replay, not the query, which would run
    /// under the previous client's settings. Cancels wait until it is over.
    pub replaying: std::sync::atomic::AtomicBool,
}

/// An open, logged-in server connection.
pub struct ServerConn {
    /// The socket (plain or TLS).
    pub stream: Stream,
    /// Bytes read from the server not yet processed.
    pub rbuf: BytesMut,
    /// Process-unique id, for logs and the admin port.
    pub id: u64,
    /// When it was opened (for `server_lifetime`).
    pub created: Instant,
    /// When it was last checked in (for idle timeouts and liveness probes).
    pub last_used: Instant,
    /// ParameterStatus values reported at login.
    pub params: Vec<(String, String)>,
    /// Session settings and prepared statements on this connection.
    pub state: ServerSessionState,
    /// Set when it must not go back to a pool (FATAL seen, protocol error, half-read result).
    pub broken: bool,
    /// What the last transaction may have left in the session.
    pub residue: Residue,
    /// The server's address and cancel key (to forward a client's CancelRequest), and the
    /// cancels in flight toward this connection.
    pub cancel: Arc<CancelTarget>,
    /// Pid (BackendKeyData) of the client that holds it or held it last; 0 none. Notifications
    /// this backend sends are reported to their listeners with that pid.
    pub holder: Arc<std::sync::atomic::AtomicI32>,
    /// `holder` is known to the session registry.
    pub holder_listed: bool,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerConn(#{}, pid {})", self.id, self.cancel.key.0)
    }
}

impl ServerConn {
    /// Notes that the session may hold `r` (never lowering what is noted already).
    pub fn taint(&mut self, r: Residue) {
        self.residue = self.residue.max(r);
    }

    /// Connects and logs in, bounded by the spec's connect timeout.
    pub async fn connect(spec: &LoginSpec, id: u64, max_prepared: usize) -> Result<ServerConn, ServerError> {
        match tokio::time::timeout(spec.connect_timeout, Self::connect_inner(spec, id, max_prepared)).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::ConnectTimeout),
        }
    }

    async fn connect_inner(spec: &LoginSpec, id: u64, max_prepared: usize) -> Result<ServerConn, ServerError> {
        let tcp = TcpStream::connect(&spec.address).await.map_err(ServerError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().map_err(ServerError::Connect)?;
        let host = spec.address.rsplit_once(':').map_or(spec.address.as_str(), |(h, _)| h);
        let stream = match &spec.tls {
            Some(tls) => tls.connect(tcp, host).await?,
            None => Stream::Plain(tcp),
        };
        let now = Instant::now();
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            id,
            created: now,
            last_used: now,
            params: Vec::new(),
            state: ServerSessionState::new(max_prepared),
            broken: false,
            residue: Residue::None,
            cancel: Arc::new(CancelTarget {
                peer,
                key: (0, 0),
                conn_id: id,
                gate: CancelGate::default(),
                replaying: Default::default(),
            }),
            holder: Arc::default(),
            holder_listed: false,
        };
        conn.login(spec).await?;
        Ok(conn)
    }

    async fn login(&mut self, spec: &LoginSpec) -> Result<(), ServerError> {
        let startup = messages::startup_message(&[("user", &spec.user.name), ("database", &spec.database)]);
        self.stream.write_all(&startup).await?;
        let mut scram: Option<ScramClient> = None;
        loop {
            let f = self.read_frame().await?;
            match f[0] {
                tag::AUTHENTICATION => {
                    if let Some(reply) = self.auth_step(&f, &spec.user, &mut scram)? {
                        self.stream.write_all(&reply).await?;
                    }
                }
                tag::PARAMETER_STATUS => {
                    if let Some((k, v)) = frame::parameter_status(&f) {
                        let (k, v) = (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned());
                        self.params.push((k, v));
                    }
                }
                tag::BACKEND_KEY_DATA => {
                    let b = frame::body(&f);
                    if b.len() >= 8 {
                        let key = (
                            i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                            i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                        );
                        // Made anew: nothing shares the connection's target before its login ends.
                        let (peer, conn_id) = (self.cancel.peer, self.cancel.conn_id);
                        self.cancel = Arc::new(CancelTarget {
                            peer,
                            key,
                            conn_id,
                            gate: CancelGate::default(),
                            replaying: Default::default(),
                        });
                    }
                }
                tag::READY_FOR_QUERY => return Ok(()),
                tag::ERROR_RESPONSE => return Err(refused(&f)),
                _ => {} // NoticeResponse, NegotiateProtocolVersion: nothing to do
            }
        }
    }

    /// Answers one Authentication request; `None` when no reply is due (Ok, SASLFinal).
    fn auth_step(
        &mut self,
        f: &[u8],
        user: &UserEntry,
        scram: &mut Option<ScramClient>,
    ) -> Result<Option<BytesMut>, ServerError> {
        let body = frame::body(f);
        let Some(code) = body.get(..4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]])) else {
            return Err(WireError::Malformed(tag::AUTHENTICATION).into());
        };
        let data = &body[4..];
        Ok(match code {
            0 => None,
            3 => {
                let pw = user
                    .plaintext
                    .as_deref()
                    .ok_or(AuthError::NoBackendSecret("cleartext needs a plaintext password"))?;
                Some(messages::password_message(pw.as_bytes()))
            }
            5 => {
                let salt: [u8; 4] =
                    data.get(..4).and_then(|s| s.try_into().ok()).ok_or(WireError::Malformed(tag::AUTHENTICATION))?;
                let secret =
                    user.md5.as_deref().ok_or(AuthError::NoBackendSecret("md5 needs a password or md5 hash"))?;
                Some(messages::password_message(md5_response(secret, salt).as_bytes()))
            }
            10 => {
                let offers_scram = data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                if !offers_scram {
                    return Err(AuthError::NoBackendSecret("server offers no SASL mechanism we support").into());
                }
                let cred: ClientCredential = user.scram_credential().ok_or(AuthError::NoBackendSecret(
                    "SCRAM needs a plaintext password, or a client must log in first with the same verifier",
                ))?;
                let (client, first) = ScramClient::new(cred);
                *scram = Some(client);
                Some(messages::sasl_initial_response("SCRAM-SHA-256", first.as_bytes()))
            }
            11 => {
                let client = scram.as_mut().ok_or(AuthError::Protocol("SASLContinue before SASL"))?;
                Some(messages::sasl_response(client.respond(data)?.as_bytes()))
            }
            12 => {
                scram.as_ref().ok_or(AuthError::Protocol("SASLFinal before SASL"))?.verify(data)?;
                None
            }
            _ => return Err(AuthError::NoBackendSecret("unsupported authentication method").into()),
        })
    }

    /// Reads one whole frame (cold path: login, probes, resets). The frame is split off the buffer.
    pub async fn read_frame(&mut self) -> Result<BytesMut, ServerError> {
        loop {
            if let Some((_, total)) = frame::complete_frame(&self.rbuf)? {
                return Ok(self.rbuf.split_to(total));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(8192);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Runs a simple query on the proxy's own behalf and waits for ReadyForQuery; returns the
    /// first ErrorResponse's message if any. Used for resets, probes and setting replay.
    pub async fn run_internal(&mut self, sql: &str) -> Result<Option<String>, ServerError> {
        Ok(self.run_internal_coded(sql).await?.map(|(_, message)| message))
    }

    /// [`Self::run_internal`], returning the first error's SQLSTATE with its message.
    pub async fn run_internal_coded(&mut self, sql: &str) -> Result<Option<(String, String)>, ServerError> {
        let mut q = BytesMut::new();
        messages::put_query(&mut q, sql);
        self.stream.write_all(&q).await?;
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f[0] {
                tag::ERROR_RESPONSE => {
                    let e = frame::error_fields(&f);
                    if e.is_fatal() {
                        self.broken = true;
                    }
                    error.get_or_insert_with(|| {
                        (String::from_utf8_lossy(e.code).into_owned(), String::from_utf8_lossy(e.message).into_owned())
                    });
                }
                tag::READY_FOR_QUERY => {
                    let status =
                        frame::ready_status(&f).map_err(WireError::from).inspect_err(|_| self.broken = true)?;
                    if !status.is_idle() {
                        self.broken = true;
                    }
                    return Ok(error);
                }
                _ => {}
            }
        }
    }

    /// Runs a simple query on the proxy's own behalf (probes) and returns its first row as text.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, ServerError> {
        let mut q = BytesMut::new();
        messages::put_query(&mut q, sql);
        self.first_row(q).await
    }

    /// Runs `sql` with text parameters over the extended protocol (so values are never spliced
    /// into SQL) and returns its first row, if any.
    pub async fn query_row_params(&mut self, sql: &str, params: &[&str]) -> Result<Vec<Option<String>>, ServerError> {
        let mut q = BytesMut::new();
        messages::put_frame(&mut q, tag::PARSE, |b| {
            messages::put_cstr(b, b"");
            messages::put_cstr(b, sql.as_bytes());
            b.put_i16(0);
        });
        messages::put_frame(&mut q, tag::BIND, |b| {
            messages::put_cstr(b, b"");
            messages::put_cstr(b, b"");
            b.put_i16(0);
            b.put_i16(params.len() as i16);
            for p in params {
                b.put_i32(p.len() as i32);
                b.put_slice(p.as_bytes());
            }
            b.put_i16(0);
        });
        messages::put_frame(&mut q, tag::EXECUTE, |b| {
            messages::put_cstr(b, b"");
            b.put_i32(0);
        });
        messages::put_empty(&mut q, tag::SYNC);
        self.first_row(q).await
    }

    /// Runs a simple query on the proxy's own behalf and returns every row as text.
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut q = BytesMut::new();
        messages::put_query(&mut q, sql);
        self.stream.write_all(&q).await?;
        let (mut rows, mut error) = (Vec::new(), None);
        loop {
            let f = self.read_frame().await?;
            match f[0] {
                tag::DATA_ROW => rows.push(parse_data_row(frame::body(&f))?),
                tag::ERROR_RESPONSE => error = Some(refused(&f)),
                tag::READY_FOR_QUERY => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    async fn first_row(&mut self, request: BytesMut) -> Result<Vec<Option<String>>, ServerError> {
        self.stream.write_all(&request).await?;
        let mut row = None;
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f[0] {
                tag::DATA_ROW if row.is_none() => row = Some(parse_data_row(frame::body(&f))?),
                tag::ERROR_RESPONSE => error = Some(refused(&f)),
                tag::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        match (error, row) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => Ok(r),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// Drops bytes the server sent while idle (none expected) and reports whether it is usable.
    pub fn healthy_after_idle(&mut self) -> bool {
        !self.broken && self.rbuf.is_empty() && self.stream.idle_and_open()
    }

    /// Sends Terminate without waiting, so PostgreSQL logs a clean disconnect; then drops.
    pub fn close(mut self) {
        if let Stream::Plain(s) = &self.stream {
            let _ = s.try_write(&messages::terminate());
        }
        self.rbuf.clear();
        self.rbuf.advance(0);
    }
}

/// The text values of a DataRow body.
fn parse_data_row(mut b: &[u8]) -> Result<Vec<Option<String>>, ServerError> {
    let bad = || ServerError::Wire(WireError::Malformed(tag::DATA_ROW));
    let n = b.get(..2).map(|x| i16::from_be_bytes([x[0], x[1]])).ok_or_else(bad)?;
    b = &b[2..];
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = b.get(..4).map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]])).ok_or_else(bad)?;
        b = &b[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let v = b.get(..len as usize).ok_or_else(bad)?;
        out.push(Some(String::from_utf8_lossy(v).into_owned()));
        b = &b[len as usize..];
    }
    Ok(out)
}

fn refused(f: &[u8]) -> ServerError {
    let e = frame::error_fields(f);
    ServerError::Refused {
        code: String::from_utf8_lossy(e.code).into_owned(),
        message: String::from_utf8_lossy(e.message).into_owned(),
        severity: String::from_utf8_lossy(e.severity).into_owned(),
    }
}
