//! Refuses state-changing requests that a web browser may have sent on a web page's behalf.
//!
//! A page in the operator's browser can POST a form to `http://127.0.0.1:6480/pause` (CSRF), or
//! resolve its own host name to 127.0.0.1 and script requests to it (DNS rebinding). With an empty
//! `[admin] token` on a loopback listener nothing else would stop either. So every request that is
//! not GET, HEAD, OPTIONS or TRACE is refused with 403 when it carries an `Origin` header (browsers
//! send one on cross-site and scripted POSTs; curl and scripts do not), when `Sec-Fetch-Site` says
//! another site sent it, or, while no token is configured, when its `Host` is neither a loopback
//! name nor the listener's own address.
//!
//! Reading needs no token, so DNS rebinding would also let such a page read `/clients`, `/config`
//! and the rest from a loopback listener and send them home. So on a loopback TCP listener every
//! request, reads included, is refused when its `Host` names another host; the probes (`/health`,
//! `/ready`) stay open to any `Host`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::net::IpAddr;

use super::AdminState;

/// Middleware: passes safe methods that pass [`read_refusal`], and unsafe ones that pass [`refusal`].
pub async fn guard(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let why = if req.method().is_safe() {
        read_refusal(req.uri().path(), req.headers(), s.listen_ip)
    } else {
        let tokenless = s.shared.runtime.load().config.admin.token.is_empty();
        refusal(req.headers(), tokenless, s.listen_ip)
    };
    match why {
        Some(why) => (StatusCode::FORBIDDEN, Json(json!({ "error": why }))).into_response(),
        None => next.run(req).await,
    }
}

/// Why a state-changing request with these headers is refused, if it is.
pub fn refusal(headers: &HeaderMap, tokenless: bool, listen_ip: Option<IpAddr>) -> Option<String> {
    if headers.contains_key(header::ORIGIN) {
        return Some(
            "refused: the request carries an Origin header, so a web page may have sent it; \
             send control requests from a script or curl, not a browser"
                .into(),
        );
    }
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    if let Some(site) = fetch_site.filter(|s| s != "none" && s != "same-origin") {
        return Some(format!("refused: Sec-Fetch-Site is {site:?}, so another web site sent this request"));
    }
    if tokenless {
        return foreign_host(headers, listen_ip);
    }
    None
}

/// Paths a load balancer or orchestrator probes, often by a name of its own: open to any `Host`.
const PROBES: [&str; 2] = ["/health", "/ready"];

/// Why a reading request with these headers is refused, if it is: on a loopback TCP listener, a
/// `Host` naming another host (a page's DNS name rebound to 127.0.0.1), except on the probes.
pub fn read_refusal(path: &str, headers: &HeaderMap, listen_ip: Option<IpAddr>) -> Option<String> {
    if !listen_ip.is_some_and(|ip| ip.is_loopback()) || PROBES.contains(&path) {
        return None;
    }
    foreign_host(headers, listen_ip)
}

/// The refusal for a `Host` header that is neither local nor the listener's address (none without one).
fn foreign_host(headers: &HeaderMap, listen_ip: Option<IpAddr>) -> Option<String> {
    let host = headers.get(header::HOST)?;
    let host = host.to_str().unwrap_or("?");
    if host_is_local(host, listen_ip) {
        return None;
    }
    Some(format!(
        "refused: Host {host:?} is not a loopback name or this listener's address (a web page may have \
         sent this request); name localhost, 127.0.0.1 or [::1]"
    ))
}

/// `localhost`, a loopback IP (`127.0.0.1`, `[::1]`) or the listener's own IP, each with or without a port.
fn host_is_local(host: &str, listen_ip: Option<IpAddr>) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(host, |(ip, _)| ip),
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || Some(ip) == listen_ip,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn browser_requests_are_refused() {
        assert!(refusal(&headers(&[("origin", "http://evil.example")]), false, None).is_some());
        assert!(refusal(&headers(&[("origin", "null")]), true, None).is_some());
        assert!(refusal(&headers(&[("sec-fetch-site", "cross-site")]), true, None).is_some());
        assert!(refusal(&headers(&[("sec-fetch-site", "same-origin"), ("host", "localhost")]), true, None).is_none());
    }

    #[test]
    fn host_must_be_local_without_a_token() {
        let listen = Some("127.0.0.5".parse().unwrap());
        for ok in ["localhost", "LOCALHOST:6480", "127.0.0.1", "127.0.0.1:6480", "[::1]", "[::1]:6480", "127.0.0.5:1"] {
            assert!(refusal(&headers(&[("host", ok)]), true, listen).is_none(), "{ok}");
        }
        for bad in ["evil.example", "evil.example:6480", "127.0.0.1.evil.example", "[::2]:6480", "10.0.0.1"] {
            assert!(refusal(&headers(&[("host", bad)]), true, listen).is_some(), "{bad}");
        }
        assert!(refusal(&headers(&[("host", "pgshift.internal")]), false, listen).is_none(), "a token protects it");
        assert!(refusal(&HeaderMap::new(), true, listen).is_none(), "no Host: not a browser");
    }

    #[test]
    fn reads_on_a_loopback_listener_must_name_a_local_host() {
        let loopback = Some("127.0.0.1".parse().unwrap());
        let rebound = headers(&[("host", "evil.example:6480")]);
        assert!(read_refusal("/clients", &rebound, loopback).is_some());
        assert!(read_refusal("/config", &rebound, loopback).is_some());
        assert!(read_refusal("/health", &rebound, loopback).is_none(), "probes stay open");
        assert!(read_refusal("/ready", &rebound, loopback).is_none(), "probes stay open");
        assert!(read_refusal("/clients", &headers(&[("host", "localhost:6480")]), loopback).is_none());
        assert!(read_refusal("/clients", &HeaderMap::new(), loopback).is_none(), "no Host: not a browser");
        let public = Some("10.0.0.5".parse().unwrap());
        assert!(read_refusal("/clients", &rebound, public).is_none(), "a DNS name may front a public listener");
        assert!(read_refusal("/clients", &rebound, None).is_none(), "a browser cannot reach a unix socket");
    }
}
