//! What the two processes say to each other during a binary upgrade, as JSON.
//!
//! The old process speaks first (`Hello`), the new one answers `Ready` once it listens, then the
//! old one sends clients (`Client`, `Fresh`) until it has none left and says `Done`.

use serde::{Deserialize, Serialize};

/// One message on the handover channel.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// Old to new, at spawn: the cancel-key pids of the old process's clients (the new one must
    /// not give them out), and the SCRAM client keys it learned for verifier-only users, without
    /// which the new process could not log those users into PostgreSQL.
    Hello {
        /// Pids in use.
        pids: Vec<i32>,
        /// Learned client keys (secret: this channel is a private socketpair; never logged).
        learned: Vec<LearnedKey>,
    },
    /// New to old: listening on every port; send the clients.
    Ready {
        /// The new process's pid.
        pid: u32,
    },
    /// Old to new: more pids in use (clients that logged in since `Hello`).
    Reserve {
        /// Pids in use.
        pids: Vec<i32>,
    },
    /// Old to new: a logged-in client between transactions; its socket is attached.
    Client(Box<Handoff>),
    /// Old to new: a connection the old process accepted but has not read from (its listen
    /// queue at the moment it stopped accepting); the socket is attached.
    Fresh {
        /// A Unix-domain socket client rather than TCP.
        unix: bool,
    },
    /// Old to new: every client has been handed over or closed; the old process exits.
    Done,
    /// New to old: a CancelRequest for a client still on the old process (its pid is reserved
    /// here), to be carried out there.
    Cancel {
        /// The key's pid.
        pid: i32,
        /// The key's secret.
        secret: i32,
    },
}

/// A SCRAM ClientKey the old process learned from a client login.
#[derive(Serialize, Deserialize)]
pub struct LearnedKey {
    /// The role.
    pub user: String,
    /// The key (32 bytes).
    pub client_key: Vec<u8>,
}

impl std::fmt::Debug for LearnedKey {
    /// Names the role only: the key is a credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LearnedKey({:?})", self.user)
    }
}

/// A client's session as it moves: who it is, its cancel key, and the state that follows it from
/// server to server. Nothing here refers to a server connection: a client is handed over only
/// between transactions, holding none.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff {
    /// The socket's kind.
    pub transport: Transport,
    /// Role it logged in as.
    pub user: String,
    /// Database asked for.
    pub database: String,
    /// BackendKeyData it was given (pid, secret): kept, so cancels keep working.
    pub key: (i32, i32),
    /// Login time, milliseconds since the Unix epoch (the admin port shows it).
    pub connected_at_ms: u64,
    /// Transactions completed so far.
    pub xacts: u64,
    /// Settings from the startup packet (what RESET returns to).
    pub startup_settings: Vec<(String, String)>,
    /// Settings the client holds now.
    pub settings: Vec<(String, String)>,
    /// Named prepared statements.
    pub statements: Vec<Statement>,
    /// The client's last Parse of the unnamed statement, as sent.
    #[serde(with = "b64_opt")]
    pub unnamed_parse: Option<Vec<u8>>,
    /// Routing override: `auto`, `primary` or `replica`.
    pub route: String,
    /// Named statements are renamed (transaction mode with statement tracking).
    pub track_prepared: bool,
    /// Frames are dropped until the next Sync (an error answered an extended batch).
    pub skip_to_sync: bool,
    /// Milliseconds since the client's last write transaction, for read-your-writes.
    pub wrote_ms_ago: Option<u64>,
    /// The primary WAL position covering that write, if sampled.
    pub ryw_lsn: u64,
    /// Bytes the client sent that were not yet forwarded (the start of its next request).
    #[serde(with = "b64")]
    pub pending: Vec<u8>,
}

/// A client's socket kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// TCP, plaintext.
    Tcp,
    /// The Unix-domain socket.
    Unix,
}

/// One named prepared statement: the client's name and the Parse as pgshift sends it to servers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Statement {
    /// The client's name (without its NUL).
    #[serde(with = "b64")]
    pub name: Vec<u8>,
    /// The Parse frame under the proxy-wide name (its text and parameter types follow the name).
    #[serde(with = "b64")]
    pub parse_frame: Vec<u8>,
}

/// Bytes as base64 in JSON (an array of numbers would be four times larger).
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// `Option` of bytes as base64 or null.
mod b64_opt {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_round_trips_with_its_bytes() {
        let h = Handoff {
            transport: Transport::Unix,
            user: "app".into(),
            database: "app".into(),
            key: (1 << 23, -5),
            connected_at_ms: 1,
            xacts: 2,
            startup_settings: vec![],
            settings: vec![("search_path".into(), "'a'".into())],
            statements: vec![Statement { name: b"s1".to_vec(), parse_frame: vec![b'P', 0, 0, 0, 4] }],
            unnamed_parse: Some(vec![0, 255]),
            route: "auto".into(),
            track_prepared: true,
            skip_to_sync: false,
            wrote_ms_ago: Some(3),
            ryw_lsn: 0,
            pending: b"Q\0\0\0\x05x".to_vec(),
        };
        let text = serde_json::to_string(&Message::Client(Box::new(h))).unwrap();
        let Message::Client(back) = serde_json::from_str(&text).unwrap() else { panic!("{text}") };
        assert_eq!(back.statements[0].parse_frame, vec![b'P', 0, 0, 0, 4]);
        assert_eq!(back.unnamed_parse, Some(vec![0, 255]));
        assert_eq!(back.pending, b"Q\0\0\0\x05x");
        assert_eq!((back.key, back.transport), ((1 << 23, -5), Transport::Unix));
    }

    #[test]
    fn learned_keys_do_not_show_in_debug_output() {
        let k = LearnedKey { user: "app".into(), client_key: vec![0xAB; 32] };
        assert!(!format!("{k:?}").contains("171"));
    }
}
