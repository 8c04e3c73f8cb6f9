//! `pgshift healthcheck`: one HTTP GET against the admin port's `/health`, exit 0 on 200.
//!
//! It exists for container health checks (Docker `HEALTHCHECK`, Kubernetes exec probes): the
//! runtime image has no curl or wget, and the pgshift binary is already there. HTTP goes through
//! hyper's client, the same hyper that serves the admin port, so no HTTP is parsed by hand here.

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the admin port listens in the container image (and by default in proxy.toml).
pub const DEFAULT_URL: &str = "http://127.0.0.1:6480/health";

/// Why the check failed; each maps to exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The URL is not `http://host[:port][/path]` or `unix:/path/to.sock`.
    #[error("{0}")]
    BadUrl(String),
    /// Nothing answered at the address.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port or socket path.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (connection closed, not HTTP).
    #[error("HTTP request failed: {0}")]
    Http(#[from] hyper::Error),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer other than 200.
    #[error("unhealthy: HTTP {0}")]
    Status(StatusCode),
}

/// Where to send the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TCP: host and port to connect to, Host header, request path.
    Tcp {
        /// Host name or IP (IPv6 without brackets).
        host: String,
        /// Port (80 when the URL has none).
        port: u16,
        /// `Host:` header value, as written in the URL.
        authority: String,
        /// Path and query, `/` at least.
        path: String,
    },
    /// The admin port on a unix socket (`[admin] listen = "unix:/path"`); the path asked is /health.
    Unix(PathBuf),
}

impl Target {
    /// Parses `http://host[:port][/path]` or `unix:/path/to.sock`.
    pub fn parse(url: &str) -> Result<Target, HealthError> {
        if let Some(path) = url.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(HealthError::BadUrl("unix: needs a socket path, e.g. unix:/run/pgshift/admin.sock".into()));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let uri: Uri = url.parse().map_err(|e| HealthError::BadUrl(format!("{url:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(HealthError::BadUrl(format!(
                    "{other}:// is not supported: the admin port speaks plain http"
                )))
            }
            None => return Err(HealthError::BadUrl(format!("{url:?} has no scheme: write http://host:port/health"))),
        }
        let authority = uri.authority().ok_or_else(|| HealthError::BadUrl(format!("{url:?} has no host")))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Target::Tcp { host, port: authority.port_u16().unwrap_or(80), authority: authority.to_string(), path })
    }
}

/// GETs `url`; `Ok(())` only for HTTP 200, everything bounded by `timeout`.
pub async fn check(url: &str, timeout: Duration) -> Result<(), HealthError> {
    let target = Target::parse(url)?;
    let status =
        tokio::time::timeout(timeout, fetch_status(&target)).await.map_err(|_| HealthError::Timeout(timeout))??;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(HealthError::Status(status))
    }
}

async fn fetch_status(target: &Target) -> Result<StatusCode, HealthError> {
    match target {
        Target::Tcp { host, port, authority, path } => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|source| HealthError::Connect { addr: format!("{host}:{port}"), source })?;
            get(stream, authority, path).await
        }
        Target::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|source| HealthError::Connect { addr: socket.display().to_string(), source })?;
            get(stream, "localhost", "/health").await
        }
    }
}

/// One HTTP/1.1 GET over an open stream; the status of the answer.
async fn get<S>(stream: S, authority: &str, path: &str) -> Result<StatusCode, HealthError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection future drives the socket; it ends when the answer is read or on error.
    let driver = tokio::spawn(conn);
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, concat!("pgshift-healthcheck/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| HealthError::BadUrl(format!("cannot build the request: {e}")))?;
    let status = sender.send_request(request).await?.status();
    driver.abort();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode as AxumStatus;
    use axum::routing::get as route_get;

    #[test]
    fn parses_urls() {
        assert_eq!(
            Target::parse("http://127.0.0.1:6480/health").unwrap(),
            Target::Tcp {
                host: "127.0.0.1".into(),
                port: 6480,
                authority: "127.0.0.1:6480".into(),
                path: "/health".into()
            }
        );
        assert_eq!(
            Target::parse("http://[::1]:7000/ready?x=1").unwrap(),
            Target::Tcp { host: "::1".into(), port: 7000, authority: "[::1]:7000".into(), path: "/ready?x=1".into() }
        );
        assert!(
            matches!(Target::parse("http://admin").unwrap(), Target::Tcp { port: 80, ref path, .. } if path == "/")
        );
        assert_eq!(Target::parse("unix:/run/a.sock").unwrap(), Target::Unix("/run/a.sock".into()));
        assert!(matches!(Target::parse("https://x/health"), Err(HealthError::BadUrl(_))));
        assert!(matches!(Target::parse("127.0.0.1:6480"), Err(HealthError::BadUrl(_))));
        assert!(matches!(Target::parse("unix:"), Err(HealthError::BadUrl(_))));
    }

    async fn serve(app: axum::Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn ok_only_on_200() {
        let app = axum::Router::new()
            .route("/health", route_get(|| async { "ok\n" }))
            .route("/ready", route_get(|| async { (AxumStatus::SERVICE_UNAVAILABLE, "primary down\n") }));
        let base = serve(app).await;
        let t = Duration::from_secs(5);
        check(&format!("{base}/health"), t).await.unwrap();
        let err = check(&format!("{base}/ready"), t).await.unwrap_err();
        assert!(matches!(err, HealthError::Status(s) if s == StatusCode::SERVICE_UNAVAILABLE), "{err}");
        let err = check(&format!("{base}/nope"), t).await.unwrap_err();
        assert!(matches!(err, HealthError::Status(s) if s == StatusCode::NOT_FOUND), "{err}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unhealthy() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = check(&format!("http://{addr}/health"), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, HealthError::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _held = l.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let err = check(&format!("http://{addr}/health"), Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, HealthError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn unix_socket() {
        let dir = std::env::temp_dir().join(format!("pgshift-hc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("admin.sock");
        let _ = std::fs::remove_file(&sock);
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let app = axum::Router::new().route("/health", route_get(|| async { "ok\n" }));
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        check(&format!("unix:{}", sock.display()), Duration::from_secs(5)).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
