//! SCRAM-SHA-256 (RFC 5802/7677) both ways: verifying clients against a stored verifier, and
//! logging into PostgreSQL with either a password or a ClientKey recovered from a client's proof.
//!
//! Written here rather than taken from pgwire because pgwire's server side needs the salted
//! password, while operators give us pg_authid verifiers (`SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`)
//! so that no plaintext is stored. Plaintext passwords are turned into a verifier once, at load,
//! so a login costs two HMACs instead of 4096 PBKDF2 rounds.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AuthError;

type HmacSha256 = Hmac<Sha256>;

/// Most PBKDF2 rounds pgshift computes for a server's SCRAM challenge (PostgreSQL's default is 4096;
/// a million takes about a second).
pub const MAX_BACKEND_ITERATIONS: u32 = 1_000_000;

/// PostgreSQL's default iteration count.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// What a server must keep to verify SCRAM logins (pg_authid's rolpassword, decoded).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt (raw bytes).
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramSecret(<redacted>)")
    }
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(verifier: &str) -> Option<ScramSecret> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iter.parse().ok().filter(|&n| n > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// Derives a secret from a plaintext password with a fresh random salt.
    pub fn from_password(password: &str, iterations: u32) -> ScramSecret {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let salted = salted_password(saslprep(password).as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramSecret { iterations, salt, stored_key: sha256(&client_key), server_key: hmac(&salted, b"Server Key") }
    }

    /// A secret nobody can satisfy, with a salt that depends only on the user name, so a login
    /// attempt for a user that does not exist looks like one for a user that does (PostgreSQL's
    /// "mock authentication").
    pub fn mock(user: &str, instance_key: &[u8]) -> ScramSecret {
        let salt = hmac(instance_key, user.as_bytes())[..16].to_vec();
        let mut stored_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut stored_key);
        ScramSecret { iterations: DEFAULT_ITERATIONS, salt, stored_key, server_key: [0; 32] }
    }

    /// The verifier text, as pg_authid stores it.
    pub fn to_verifier(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// A password as SCRAM hashes it: normalised by SASLprep (RFC 4013), so that a password typed
/// with a combining accent or a no-break space matches the one PostgreSQL stored. As in
/// PostgreSQL (and libpq), a password SASLprep refuses (a prohibited character) is used as is.
/// The `stringprep` crate is the one tokio-postgres itself uses for this.
pub fn saslprep(password: &str) -> std::borrow::Cow<'_, str> {
    stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password))
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output (SCRAM's `Hi()`).
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf = HmacSha256::new_from_slice(password).expect("HMAC takes any key length");
    let mut u = {
        let mut m = prf.clone();
        m.update(salt);
        m.update(&1u32.to_be_bytes());
        m.finalize().into_bytes()
    };
    let mut out: [u8; 32] = u.into();
    for _ in 1..iterations {
        let mut m = prf.clone();
        m.update(&u);
        u = m.finalize().into_bytes();
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// HMAC-SHA256.
pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

fn attr(msg: &str, key: char) -> Option<&str> {
    msg.split(',').find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The server side of one SCRAM exchange with a client.
pub struct ScramServer {
    secret: ScramSecret,
    /// `tls-server-end-point` hash of our certificate when the connection is TLS.
    channel_binding: Option<Vec<u8>>,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

/// What a successful client proof yields.
pub struct ScramSuccess {
    /// server-final-message to send in AuthenticationSASLFinal.
    pub server_final: String,
    /// The client's ClientKey, recovered from its proof; lets the proxy log into PostgreSQL as
    /// that user with only the verifier on file (PgBouncer's technique).
    pub client_key: [u8; 32],
}

impl ScramServer {
    /// Starts an exchange against `secret`.
    pub fn new(secret: ScramSecret, channel_binding: Option<Vec<u8>>) -> Self {
        ScramServer {
            secret,
            channel_binding,
            client_first_bare: String::new(),
            server_first: String::new(),
            gs2_header: String::new(),
            nonce: String::new(),
        }
    }

    /// Handles client-first-message for `mechanism`; returns server-first-message.
    pub fn first(&mut self, mechanism: &str, client_first: &[u8]) -> Result<String, AuthError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| AuthError::Protocol("SCRAM message is not UTF-8"))?;
        let plus = mechanism == "SCRAM-SHA-256-PLUS";
        let (cbind_flag, rest) =
            msg.split_once(',').ok_or(AuthError::Protocol("malformed SCRAM client-first-message"))?;
        let (_authzid, bare) =
            rest.split_once(',').ok_or(AuthError::Protocol("malformed SCRAM client-first-message"))?;
        match (cbind_flag, plus) {
            // `y`: the client could bind but saw no PLUS offered; over TLS we offered it, so
            // someone in between removed it (a downgrade). RFC 5802 and PostgreSQL refuse it.
            ("y", false) if self.channel_binding.is_some() => {
                return Err(AuthError::Protocol(
                    "SCRAM channel binding negotiation error: the client thinks the server does not support \
                     channel binding, but it does",
                ))
            }
            ("n", false) | ("y", false) => {}
            (f, true) if f == "p=tls-server-end-point" && self.channel_binding.is_some() => {}
            (f, true) if f.starts_with("p=") => {
                return Err(AuthError::Protocol("unsupported SCRAM channel binding type"))
            }
            _ => return Err(AuthError::Protocol("SCRAM channel binding negotiation failed")),
        }
        let client_nonce = attr(bare, 'r').ok_or(AuthError::Protocol("SCRAM client nonce missing"))?;
        self.gs2_header = msg[..msg.len() - bare.len()].to_string();
        self.nonce = format!("{client_nonce}{}", nonce());
        self.client_first_bare = bare.to_string();
        self.server_first =
            format!("r={},s={},i={}", self.nonce, B64.encode(&self.secret.salt), self.secret.iterations);
        Ok(self.server_first.clone())
    }

    /// Checks client-final-message; on success returns server-final-message and the ClientKey.
    pub fn finish(&self, client_final: &[u8]) -> Result<ScramSuccess, AuthError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| AuthError::Protocol("SCRAM message is not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(AuthError::Protocol("SCRAM proof missing"))?;
        if attr(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(AuthError::Protocol("SCRAM nonce mismatch"));
        }
        let mut expected_cbind = self.gs2_header.clone().into_bytes();
        if self.gs2_header.starts_with("p=") {
            expected_cbind.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
        }
        if attr(without_proof, 'c') != Some(B64.encode(&expected_cbind).as_str()) {
            return Err(AuthError::Protocol("SCRAM channel binding check failed"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthError::Protocol("malformed SCRAM proof"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        if sha256(&client_key) != self.secret.stored_key {
            return Err(AuthError::BadPassword);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(ScramSuccess { server_final: format!("v={}", B64.encode(server_signature)), client_key })
    }
}

/// What the proxy holds to log into PostgreSQL with SCRAM.
#[derive(Clone)]
pub enum ClientCredential {
    /// The plaintext password.
    Password(String),
    /// ClientKey and ServerKey for a known salt and iteration count (from a verifier plus a
    /// client's proof); works only if PostgreSQL holds that same verifier.
    Keys {
        /// Salt of the verifier the keys belong to.
        salt: Vec<u8>,
        /// Its iteration count.
        iterations: u32,
        /// ClientKey recovered from a client's proof.
        client_key: [u8; 32],
        /// ServerKey from the verifier.
        server_key: [u8; 32],
    },
}

/// The client side of one SCRAM exchange with PostgreSQL (no channel binding).
pub struct ScramClient {
    credential: ClientCredential,
    client_first_bare: String,
    client_nonce: String,
    server_signature: [u8; 32],
}

impl ScramClient {
    /// Starts an exchange; returns it and client-first-message.
    pub fn new(credential: ClientCredential) -> (Self, String) {
        let client_nonce = nonce();
        let bare = format!("n=,r={client_nonce}");
        let first = format!("n,,{bare}");
        (ScramClient { credential, client_first_bare: bare, client_nonce, server_signature: [0; 32] }, first)
    }

    /// Handles server-first-message; returns client-final-message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<String, AuthError> {
        let msg = std::str::from_utf8(server_first).map_err(|_| AuthError::Protocol("SCRAM message is not UTF-8"))?;
        let nonce = attr(msg, 'r').ok_or(AuthError::Protocol("SCRAM server nonce missing"))?;
        if !nonce.starts_with(&self.client_nonce) {
            return Err(AuthError::Protocol("SCRAM server nonce does not extend ours"));
        }
        let salt = attr(msg, 's').and_then(|s| B64.decode(s).ok()).ok_or(AuthError::Protocol("SCRAM salt missing"))?;
        let iterations: u32 =
            attr(msg, 'i').and_then(|i| i.parse().ok()).ok_or(AuthError::Protocol("SCRAM iterations missing"))?;
        // PBKDF2 runs on a runtime thread: a server (or whoever sits between us on a plain link)
        // asking for billions of rounds would stall it for hours.
        if !(1..=MAX_BACKEND_ITERATIONS).contains(&iterations) {
            return Err(AuthError::Protocol("SCRAM iteration count from the server is outside 1..=1000000"));
        }
        let (client_key, server_key) = match &self.credential {
            ClientCredential::Password(pw) => {
                let salted = salted_password(saslprep(pw).as_bytes(), &salt, iterations);
                (hmac(&salted, b"Client Key"), hmac(&salted, b"Server Key"))
            }
            ClientCredential::Keys { salt: s, iterations: i, client_key, server_key } => {
                if *s != salt || *i != iterations {
                    return Err(AuthError::BackendSecretMismatch);
                }
                (*client_key, *server_key)
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let signature = hmac(&sha256(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature.iter()).map(|(a, b)| a ^ b).collect();
        self.server_signature = hmac(&server_key, auth_message.as_bytes());
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final-message: PostgreSQL must prove it knows the verifier too.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let msg = std::str::from_utf8(server_final).map_err(|_| AuthError::Protocol("SCRAM message is not UTF-8"))?;
        let v = attr(msg, 'v')
            .and_then(|v| B64.decode(v).ok())
            .ok_or(AuthError::Protocol("SCRAM server signature missing"))?;
        if v.as_slice() != self.server_signature.as_slice() {
            return Err(AuthError::Protocol("SCRAM server signature is wrong"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_cannot_ask_for_unbounded_rounds() {
        for i in ["0", "4000000000"] {
            let (mut c, _) = ScramClient::new(ClientCredential::Password("pw".into()));
            let first = format!("r={}xyz,s=c2FsdA==,i={i}", c.client_nonce);
            assert!(matches!(c.respond(first.as_bytes()), Err(AuthError::Protocol(_))), "i={i}");
        }
    }

    #[test]
    fn verifier_round_trip_and_parse() {
        let s = ScramSecret::from_password("secret", 4096);
        assert_eq!(ScramSecret::parse(&s.to_verifier()).unwrap(), s);
        assert!(ScramSecret::parse("SCRAM-SHA-256$x:y$z").is_none());
        assert!(ScramSecret::parse("md5abc").is_none());
    }

    fn exchange(secret: ScramSecret, cred: ClientCredential) -> Result<[u8; 32], AuthError> {
        let mut server = ScramServer::new(secret, None);
        let (mut client, first) = ScramClient::new(cred);
        let sfirst = server.first("SCRAM-SHA-256", first.as_bytes())?;
        let cfinal = client.respond(sfirst.as_bytes())?;
        let ok = server.finish(cfinal.as_bytes())?;
        client.verify(ok.server_final.as_bytes())?;
        Ok(ok.client_key)
    }

    #[test]
    fn password_and_recovered_key_both_log_in() {
        let secret = ScramSecret::from_password("pw", 4096);
        let key = exchange(secret.clone(), ClientCredential::Password("pw".into())).unwrap();
        let keys = ClientCredential::Keys {
            salt: secret.salt.clone(),
            iterations: secret.iterations,
            client_key: key,
            server_key: secret.server_key,
        };
        exchange(secret.clone(), keys).unwrap();
        assert!(matches!(exchange(secret, ClientCredential::Password("wrong".into())), Err(AuthError::BadPassword)));
    }

    #[test]
    fn matches_postgres_protocol_verifier() {
        // postgres-protocol derives verifiers the way PostgreSQL does; ours must log in against one.
        let v = postgres_protocol::password::scram_sha_256(b"hunter2");
        let secret = ScramSecret::parse(&v).unwrap();
        exchange(secret, ClientCredential::Password("hunter2".into())).unwrap();
    }
}
