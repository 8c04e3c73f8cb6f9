//! `auth_query`: users managed in PostgreSQL alone. A user not in the config is looked up with
//! the configured query (PgBouncer's default reads pg_shadow) as `auth_user`, and the verifier it
//! returns is cached for `auth_query_ttl` — found or not, so unknown names cannot hammer the
//! primary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{AuthError, UserEntry};
use crate::server::{LoginSpec, ServerConn, ServerError};
use crate::shared::Runtime;

/// When an answer was fetched, and the user it found (`None`: no such user).
type Answer = (Instant, Option<Arc<UserEntry>>);

/// Cached answers of `auth_query`.
#[derive(Default)]
pub struct AuthCache {
    map: Mutex<HashMap<String, Answer>>,
}

impl AuthCache {
    /// The user's entry from `auth_query`; `Ok(None)` if auth_query is off or the user is unknown,
    /// `Err` (`AuthError::Lookup`) if the answer could not be had.
    pub async fn lookup(&self, rt: &Runtime, user: &str) -> Result<Option<Arc<UserEntry>>, AuthError> {
        let a = &rt.config.auth;
        if a.auth_user.is_empty() {
            return Ok(None);
        }
        let ttl = a.auth_query_ttl.0;
        let cached = self.map.lock().ok().and_then(|m| m.get(user).cloned());
        if let Some((at, entry)) = cached {
            if at.elapsed() < ttl {
                return Ok(entry);
            }
        }
        let entry = match fetch(rt, user).await {
            Ok(e) => e,
            Err((what, why)) => {
                // Not cached: a failing primary must not turn into "unknown user" for a whole TTL.
                tracing::warn!("auth_query failed: {what}: {why}");
                return Err(AuthError::Lookup(what));
            }
        };
        if let Ok(mut m) = self.map.lock() {
            if m.len() > 10_000 {
                m.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            m.insert(user.to_string(), (Instant::now(), entry.clone()));
        }
        Ok(entry)
    }
}

/// Why a lookup failed: what the client is told (no host, no secret) and the detail for the log.
type Failure = (&'static str, String);

async fn fetch(rt: &Runtime, user: &str) -> Result<Option<Arc<UserEntry>>, Failure> {
    let a = &rt.config.auth;
    let auth_user = rt.users.get(&a.auth_user).ok_or(("auth_user is not a configured user", String::new()))?;
    let spec = LoginSpec {
        address: rt.primary.address.clone(),
        backend_name: rt.primary.name.clone(),
        user: auth_user,
        database: a.auth_database.clone(),
        connect_timeout: rt.config.proxy.server_connect_timeout.0,
        tls: rt.server_tls.clone(),
    };
    let mut conn = ServerConn::connect(&spec, 0, 0).await.map_err(|e| {
        let what = match e {
            ServerError::Refused { .. } | ServerError::Auth(_) => "auth_user could not log into PostgreSQL",
            _ => "could not reach the auth_query server",
        };
        (what, e.to_string())
    })?;
    let row = conn.query_row_params(&a.auth_query, &[user]).await.map_err(|e| ("auth_query failed", e.to_string()))?;
    conn.close();
    let secret = row.get(1).cloned().flatten();
    Ok(secret.filter(|s| !s.is_empty()).map(|s| Arc::new(UserEntry::new(user, Some(&s), None))))
}
