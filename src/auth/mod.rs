//! Who may connect and with what secret: the user registry, client-facing checks, backend credentials.

pub mod cert;
pub mod hba;
pub mod limit;
pub mod query;
pub mod scram;
pub mod userlist;

use md5::{Digest, Md5};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{AuthConfig, AuthType};
use scram::{ClientCredential, ScramSecret};

/// Authentication failures, on either side.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The client's proof or password was wrong, or the user is unknown (indistinguishable on purpose).
    #[error("password authentication failed")]
    BadPassword,
    /// A malformed or out-of-order authentication message.
    #[error("authentication protocol: {0}")]
    Protocol(&'static str),
    /// The backend asked for a method we cannot satisfy with what we hold.
    #[error("cannot log into the server: {0}")]
    NoBackendSecret(&'static str),
    /// `auth_query` could not answer (PostgreSQL unreachable, auth_user refused, query error).
    #[error("authentication lookup failed: {0}")]
    Lookup(&'static str),
    /// The client hung up during the exchange (libpq with no password to give does).
    #[error("the client closed the connection during authentication")]
    ClientLeft,
    /// A verifier-only user whose verifier differs from the one PostgreSQL holds.
    #[error("the SCRAM verifier in the proxy config does not match the server's")]
    BackendSecretMismatch,
}

/// One configured user and the secrets we can derive for it.
pub struct UserEntry {
    /// Role name.
    pub name: String,
    /// For SCRAM logins (derived from plaintext at load, or the configured verifier).
    pub scram: Option<ScramSecret>,
    /// `md5` + hex(md5(password || user)), for md5 logins on either side.
    pub md5: Option<String>,
    /// Plaintext, when configured; the simplest way to log into PostgreSQL.
    pub plaintext: Option<String>,
    /// Per-user pool size override.
    pub pool_size: Option<usize>,
    /// ClientKey learned from a successful client SCRAM login, for verifier-only users.
    learned: Mutex<Option<ClientCredential>>,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserEntry({:?})", self.name)
    }
}

impl UserEntry {
    /// Builds an entry from a configured secret (plaintext, SCRAM verifier or md5 hash).
    pub fn new(name: &str, secret: Option<&str>, pool_size: Option<usize>) -> UserEntry {
        let (mut scram, mut md5, mut plaintext) = (None, None, None);
        match secret {
            Some(s) if s.starts_with("SCRAM-SHA-256$") => scram = ScramSecret::parse(s),
            Some(s) if s.len() == 35 && s.starts_with("md5") => md5 = Some(s.to_string()),
            Some(s) => {
                scram = Some(ScramSecret::from_password(s, scram::DEFAULT_ITERATIONS));
                md5 = Some(md5_secret(name, s));
                plaintext = Some(s.to_string());
            }
            None => {}
        }
        UserEntry { name: name.into(), scram, md5, plaintext, pool_size, learned: Mutex::new(None) }
    }

    /// Remembers the ClientKey of a successful SCRAM login, so a verifier-only user can be logged
    /// into PostgreSQL too.
    pub fn learn_client_key(&self, client_key: [u8; 32]) {
        let Some(s) = &self.scram else { return };
        if self.plaintext.is_some() {
            return;
        }
        let cred = ClientCredential::Keys {
            salt: s.salt.clone(),
            iterations: s.iterations,
            client_key,
            server_key: s.server_key,
        };
        if let Ok(mut l) = self.learned.lock() {
            *l = Some(cred);
        }
    }

    /// The ClientKey learned from a client login, if any (carried to the new process in a
    /// binary upgrade).
    pub fn learned_client_key(&self) -> Option<[u8; 32]> {
        match self.learned.lock().ok()?.as_ref()? {
            ClientCredential::Keys { client_key, .. } => Some(*client_key),
            ClientCredential::Password(_) => None,
        }
    }

    /// True if we hold something PostgreSQL would accept (plaintext, md5 hash, learned key).
    pub fn has_backend_secret(&self) -> bool {
        self.plaintext.is_some() || self.md5.is_some() || self.scram_credential().is_some()
    }

    /// The credential for a backend SCRAM login, if we have one.
    pub fn scram_credential(&self) -> Option<ClientCredential> {
        if let Some(p) = &self.plaintext {
            return Some(ClientCredential::Password(p.clone()));
        }
        self.learned.lock().ok().and_then(|l| l.clone())
    }
}

/// `md5` + hex(md5(password || user)), as pg_authid stores md5 passwords.
pub fn md5_secret(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{:x}", h.finalize())
}

/// The response to an md5 challenge, given the stored `md5...` secret and the salt.
pub fn md5_response(secret: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(secret.trim_start_matches("md5").as_bytes());
    h.update(salt);
    format!("md5{:x}", h.finalize())
}

/// The configured users, looked up at each login.
pub struct Users {
    /// Client authentication method.
    pub kind: AuthType,
    map: HashMap<String, Arc<UserEntry>>,
    /// Per-process key for mock SCRAM salts of unknown users.
    pub mock_key: [u8; 32],
}

impl Users {
    /// Builds the registry; passwords from `password_file` are read here.
    pub fn from_config(c: &AuthConfig) -> Result<Users, String> {
        let mut map = HashMap::new();
        if !c.auth_file.is_empty() {
            let text = std::fs::read_to_string(&c.auth_file)
                .map_err(|e| format!("cannot read auth_file {}: {e}", c.auth_file))?;
            for (name, secret) in userlist::parse(&text)? {
                map.insert(name.clone(), Arc::new(UserEntry::new(&name, Some(&secret), None)));
            }
        }
        for u in &c.users {
            let secret = match (&u.password, &u.password_file) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(f)) => Some(read_secret_file(f)?),
                (None, None) => None,
            };
            map.insert(u.name.clone(), Arc::new(UserEntry::new(&u.name, secret.as_deref(), u.pool_size)));
        }
        let mut mock_key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut mock_key);
        Ok(Users { kind: c.kind, map, mock_key })
    }

    /// The entry for `name`, if configured.
    pub fn get(&self, name: &str) -> Option<Arc<UserEntry>> {
        self.map.get(name).cloned()
    }

    /// Every configured user.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<UserEntry>> {
        self.map.values()
    }

    /// Carries learned client keys over from the previous registry on reload.
    pub fn inherit_learned(&self, old: &Users) {
        for (name, entry) in &self.map {
            if let Some(prev) = old.map.get(name) {
                let same = match (&prev.scram, &entry.scram) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                if same && entry.plaintext.is_none() {
                    if let (Ok(src), Ok(mut dst)) = (prev.learned.lock(), entry.learned.lock()) {
                        dst.clone_from(&src);
                    }
                }
            }
        }
    }
}

fn read_secret_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read password_file {path}: {e}"))?;
    Ok(text.lines().next().unwrap_or_default().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_postgres() {
        // postgres-protocol implements libpq's md5 response.
        let secret = md5_secret("app", "pw");
        let expected = postgres_protocol::authentication::md5_hash(b"app", b"pw", [1, 2, 3, 4]);
        assert_eq!(md5_response(&secret, [1, 2, 3, 4]), expected);
    }

    #[test]
    fn verifier_user_has_no_plaintext() {
        let v = ScramSecret::from_password("pw", 4096).to_verifier();
        let u = UserEntry::new("app", Some(&v), None);
        assert!(u.plaintext.is_none() && u.scram.is_some() && u.scram_credential().is_none());
        u.learn_client_key([7; 32]);
        assert!(u.scram_credential().is_some());
    }
}
