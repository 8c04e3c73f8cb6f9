//! The admin port's accept loop: HTTP/1 through hyper, with bounds an abusive client cannot lift.
//!
//! - `[admin] max_connections`: connections beyond it are closed at once, not queued.
//! - `[admin] max_connections_per_ip`: so are a client address's connections beyond it, so one
//!   host cannot take every slot and leave the load balancer's probes closed.
//! - A file-descriptor reserve: while fewer than max(64, 10% of RLIMIT_NOFILE) descriptors are
//!   free, new admin connections are closed, so the admin port never starves the client port.
//! - `[admin] header_timeout`: a request's headers must arrive within it, counted from the
//!   connection's opening, or from the first byte of a later request on a kept-alive connection;
//!   and its body within it again, counted from the end of the headers (408 otherwise). A body is
//!   read whole before any handler runs, up to [`MAX_BODY`] (413 beyond).
//! - `[admin] idle_timeout`: a kept-alive connection with no request under way (or a response the
//!   client stopped reading) is closed after it; a running handler is never cut short.

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use super::conn_clock::{Clock, InFlight, Watched};
use super::fd_reserve::FdReserve;
use super::peer_slots::{PeerSlot, PeerSlots};
use crate::shared::Shared;

/// Where admin connections come from.
pub enum Listener {
    /// `host:port`.
    Tcp(TcpListener),
    /// `unix:/path`.
    Unix(UnixListener),
}

/// The bounds, read from `[admin]` when the listener starts.
#[derive(Clone, Copy)]
pub struct Limits {
    header: Duration,
    idle: Duration,
    max_connections: usize,
    per_ip: usize,
}

/// A bound that 0 turns off.
const FOREVER: Duration = Duration::from_secs(86_400 * 365);

/// The largest request body the admin port reads (its bodies are a few hundred bytes of JSON).
pub const MAX_BODY: usize = 64 * 1024;

impl Limits {
    /// From the current `[admin]` section.
    pub fn from_config(shared: &Shared) -> Limits {
        let a = &shared.runtime.load().config.admin;
        Limits {
            header: a.header_timeout.enabled().unwrap_or(FOREVER),
            idle: a.idle_timeout.enabled().unwrap_or(FOREVER),
            max_connections: a.max_connections,
            per_ip: a.max_connections_per_ip,
        }
    }
}

/// Accepts and serves admin connections until `stop` turns true.
pub async fn run(listener: Listener, app: Router, limits: Limits, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let peers = PeerSlots::new(limits.per_ip);
    let fds = FdReserve::for_this_process();
    let (mut refusing, mut warned_peer) = (false, false);
    loop {
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (conn, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("admin port: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let why = match admit(&slots, &peers, &fds, peer) {
            Ok(held) => {
                if std::mem::take(&mut refusing) {
                    tracing::info!("admin port: accepting connections again");
                }
                let (app, stop) = (app.clone(), stop.clone());
                match conn {
                    Conn::Tcp(s) => drop(tokio::spawn(serve_one(s, app, limits, stop, held))),
                    Conn::Unix(s) => drop(tokio::spawn(serve_one(s, app, limits, stop, held))),
                }
                continue;
            }
            Err(Refused::Peer(ip)) => {
                // Not the WARN below: that would let the one host log at will by taking turns
                // with everyone else.
                if !std::mem::replace(&mut warned_peer, true) {
                    tracing::warn!(
                        "admin port: closing connections from {ip} beyond [admin] max_connections_per_ip \
                         (this and further refusals per address are logged at debug level)"
                    );
                }
                tracing::debug!("admin port: closing a connection from {ip}: max_connections_per_ip are open");
                continue;
            }
            Err(Refused::All(why)) => why,
        };
        // Dropping `conn` closes it at once.
        if !std::mem::replace(&mut refusing, true) {
            tracing::warn!("admin port: closing new connections: {why}");
        }
    }
}

/// What a served connection holds until it ends: its slot, and its address's share.
struct Held {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _peer: Option<PeerSlot>,
}

/// Why a connection is closed at once.
enum Refused {
    /// Its address holds `max_connections_per_ip` already.
    Peer(std::net::IpAddr),
    /// Every connection is refused for now.
    All(&'static str),
}

/// The slots a new connection from `peer` (`None`: a unix socket) takes, if it may be served.
fn admit(
    slots: &Arc<Semaphore>,
    peers: &PeerSlots,
    fds: &FdReserve,
    peer: Option<std::net::IpAddr>,
) -> Result<Held, Refused> {
    let slot = slots.clone().try_acquire_owned().map_err(|_| Refused::All("[admin] max_connections are open"))?;
    let peer = match peer {
        Some(ip) => Some(peers.take(ip).ok_or(Refused::Peer(ip))?),
        None => None,
    };
    if !fds.has_room() {
        return Err(Refused::All("the process is close to its open-file limit (kept free for clients)"));
    }
    Ok(Held { _slot: slot, _peer: peer })
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Conn, Option<std::net::IpAddr>)> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Conn::Tcp(s), Some(a.ip()))),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| (Conn::Unix(s), None)),
    }
}

/// One connection, holding its slots until it ends.
async fn serve_one<IO>(io: IO, app: Router, limits: Limits, mut stop: watch::Receiver<bool>, _held: Held)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(Clock::default());
    let io = TokioIo::new(Watched::new(io, clock.clone(), limits.header, limits.idle));
    let tower = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let flight = InFlight::start(&clock);
        let tower = tower.clone();
        async move {
            let r = match whole_body(req, limits.header).await {
                Ok(req) => hyper::service::Service::call(&tower, req).await,
                Err(refusal) => Ok(refusal),
            };
            drop(flight);
            r
        }
    });
    let conn = http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return log_end(r),
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    log_end(conn.await);
}

/// The request with its body read whole within `limit` (a body that trickles in would hold an
/// admin slot for as long as its sender likes), or the answer refusing it: 408 or 413.
async fn whole_body(
    req: hyper::Request<Incoming>,
    limit: Duration,
) -> Result<hyper::Request<axum::body::Body>, axum::response::Response> {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    let too_large = || (hyper::StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {MAX_BODY} bytes\n"));
    let (parts, body) = req.into_parts();
    if hyper::body::Body::size_hint(&body).lower() > MAX_BODY as u64 {
        return Err(too_large().into_response()); // a Content-Length over the cap: nothing to wait for
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match tokio::time::timeout(limit, limited.collect()).await {
        Ok(Ok(bytes)) => Ok(hyper::Request::from_parts(parts, axum::body::Body::from(bytes.to_bytes()))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large().into_response()),
        Ok(Err(_)) => Err((hyper::StatusCode::BAD_REQUEST, "request body unreadable\n").into_response()),
        Err(_) => {
            let why = "header_timeout: request body too slow\n";
            let mut r = (hyper::StatusCode::REQUEST_TIMEOUT, why).into_response();
            r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            Err(r)
        }
    }
}

fn log_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!("admin connection closed: {e}");
    }
}
