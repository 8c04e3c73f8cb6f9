//! Client authentication: SCRAM-SHA-256 (with channel binding on TLS), md5, trust, and TLS client
//! certificates; users from the config, auth_file, or auth_query. Unknown users go through the
//! same dialogue as known ones and fail the same way (PostgreSQL's mock authentication).

use bytes::BytesMut;
use std::sync::Arc;

use super::handshake::{read_password_frame, write};
use super::peer::Peer;
use crate::auth::hba::Method;
use crate::auth::scram::{ScramSecret, ScramServer};
use crate::auth::{md5_response, AuthError, UserEntry};
use crate::config::AuthType;
use crate::error::ClientError;
use crate::shared::{Runtime, Shared};
use crate::stream::Stream;
use crate::wire::{frame, messages};

/// The method that authenticates this client: the first matching line of `auth_hba_file`, or
/// `[auth] type` when there is no such file. A `reject` line or no matching line refuses it (28000).
/// A Unix-socket client matches `local` lines only, a TCP client `host*` lines only, as in
/// PostgreSQL.
pub fn method_for(rt: &Runtime, peer: Peer, tls: bool, user: &str, database: &str) -> Result<AuthType, ClientError> {
    let Some(hba) = &rt.hba else { return Ok(rt.users.kind) };
    match hba.lookup(peer.ip(), tls, user, database) {
        Some(Method::Auth(m)) => Ok(m),
        found => Err(ClientError::hba_refused(found.is_some(), &peer.host(), user, database, tls)),
    }
}

/// Authenticates `user` with `method`; returns its entry (for logging into PostgreSQL) or the
/// error to send.
pub async fn authenticate(
    shared: &Arc<Shared>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    method: AuthType,
) -> Result<Arc<UserEntry>, ClientError> {
    let rt = shared.runtime.load_full();
    let entry = match rt.users.get(user) {
        Some(e) => Some(e),
        None => shared.auth_cache.lookup(&rt, user).await.map_err(|e| match e {
            AuthError::Lookup(what) => ClientError::auth_lookup_failed(what),
            other => ClientError::fatal("08006", other.to_string()),
        })?,
    };
    let denied = || ClientError::bad_password(user);
    match method {
        AuthType::Trust => Ok(entry.unwrap_or_else(|| Arc::new(UserEntry::new(user, None, None)))),
        AuthType::Cert => {
            let cn = peer_common_name(stream);
            if cn.as_deref() != Some(user) {
                return Err(ClientError::fatal(
                    "28000",
                    format!("certificate authentication failed for user \"{user}\""),
                ));
            }
            Ok(entry.unwrap_or_else(|| Arc::new(UserEntry::new(user, None, None))))
        }
        AuthType::Md5 => {
            let salt: [u8; 4] = rand::random();
            write(stream, &messages::auth_md5(salt)).await.map_err(|_| denied())?;
            let f = read_password_frame(stream, buf).await?;
            let given = frame::cstr(frame::body(&f)).map(|(s, _)| s).unwrap_or_default();
            match entry {
                Some(e) if e.md5.as_deref().is_some_and(|m| md5_response(m, salt).as_bytes() == given) => Ok(e),
                _ => Err(denied()),
            }
        }
        AuthType::ScramSha256 => {
            let secret = entry.as_ref().and_then(|e| e.scram.clone());
            let secret = secret.unwrap_or_else(|| ScramSecret::mock(user, &rt.users.mock_key));
            let cbind = rt.client_tls.as_ref().filter(|_| stream.is_tls()).map(|t| t.cert_hash.clone());
            let key = scram_exchange(stream, buf, secret, cbind).await.map_err(|e| match e {
                AuthError::BadPassword => denied(),
                AuthError::ClientLeft => ClientError::client_left_login(),
                // A malformed or downgraded exchange: PostgreSQL's code for it too.
                AuthError::Protocol(what) => ClientError::fatal("08P01", what),
                other => ClientError::fatal("28000", other.to_string()),
            })?;
            let entry = entry.ok_or_else(denied)?;
            entry.learn_client_key(key);
            Ok(entry)
        }
    }
}

async fn scram_exchange(
    stream: &mut Stream,
    buf: &mut BytesMut,
    secret: ScramSecret,
    cbind: Option<Vec<u8>>,
) -> Result<[u8; 32], AuthError> {
    let io = |_| AuthError::Protocol("connection lost during SCRAM");
    let bad_response = |e: ClientError| {
        if e.is_client_left_login() {
            AuthError::ClientLeft
        } else {
            AuthError::Protocol("bad SASL response")
        }
    };
    let mechs: &[&str] = if cbind.is_some() { &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"] } else { &["SCRAM-SHA-256"] };
    write(stream, &messages::auth_sasl(mechs)).await.map_err(io)?;
    let mut server = ScramServer::new(secret, cbind);
    let f = read_password_frame(stream, buf).await.map_err(bad_response)?;
    let (mech, rest) = frame::cstr(frame::body(&f)).ok_or(AuthError::Protocol("malformed SASLInitialResponse"))?;
    let data = rest.get(4..).ok_or(AuthError::Protocol("malformed SASLInitialResponse"))?;
    let mech = std::str::from_utf8(mech).map_err(|_| AuthError::Protocol("bad SASL mechanism"))?;
    if !mechs.contains(&mech) {
        return Err(AuthError::Protocol("client selected an invalid SASL authentication mechanism"));
    }
    let server_first = server.first(mech, data)?;
    write(stream, &messages::auth_sasl_continue(server_first.as_bytes())).await.map_err(io)?;
    let f = read_password_frame(stream, buf).await.map_err(bad_response)?;
    let ok = server.finish(frame::body(&f))?;
    write(stream, &messages::auth_sasl_final(ok.server_final.as_bytes())).await.map_err(io)?;
    Ok(ok.client_key)
}

/// The subject CN of the client's TLS certificate, if it presented one.
fn peer_common_name(stream: &Stream) -> Option<String> {
    let Stream::TlsAccepted(tls) = stream else { return None };
    let certs = tls.get_ref().1.peer_certificates()?;
    crate::auth::cert::common_name(certs.first()?)
}
