//! What a client is told when something fails: SQLSTATE, severity and a message that names no host
//! and no secret. Internal errors convert into this at the edge, once.

use crate::pool::PoolError;
use crate::server::ServerError;
use crate::wire::messages;
use bytes::BytesMut;

const CLIENT_LEFT_LOGIN: &str = "connection closed during login";

/// An error as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// ERROR (session continues) or FATAL (connection closes).
    pub severity: &'static str,
    /// SQLSTATE.
    pub code: String,
    /// Human-readable message; must never contain host names or secrets.
    pub message: String,
}

impl ClientError {
    /// A FATAL error: the connection closes after it.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        ClientError { severity: "FATAL", code: code.into(), message: message.into() }
    }

    /// 3D000 for a database name pgshift does not serve (no `[databases]` entry and no `*`).
    pub fn unknown_database(name: &str) -> Self {
        Self::fatal("3D000", format!("database \"{name}\" does not exist (pgshift serves no database by that name)"))
    }

    /// 53300 for a client over `max_db_client_connections` or `max_user_client_connections`.
    pub fn too_many_clients(limit: &str) -> Self {
        Self::fatal("53300", format!("too many client connections: {limit} reached"))
    }

    /// The client closed its connection during login (a port check, `pg_isready`, psql going
    /// back to ask for a password): nothing to answer, and not a failed login.
    pub fn client_left_login() -> Self {
        Self::fatal("08006", CLIENT_LEFT_LOGIN)
    }

    /// True for [`ClientError::client_left_login`].
    pub fn is_client_left_login(&self) -> bool {
        self.code == "08006" && self.message == CLIENT_LEFT_LOGIN
    }

    /// An ERROR: the session goes on.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ClientError { severity: "ERROR", code: code.into(), message: message.into() }
    }

    /// True if the connection must close after sending it.
    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL"
    }

    /// The ErrorResponse frame.
    pub fn frame(&self) -> BytesMut {
        messages::error_response(self.severity, &self.code, &self.message)
    }

    /// 28P01, worded as PostgreSQL words it.
    pub fn bad_password(user: &str) -> Self {
        Self::fatal("28P01", format!("password authentication failed for user \"{user}\""))
    }

    /// 28000 for a client logging in as the fleet store's role (checked once it has proved who
    /// it is, so only the role itself learns why).
    pub fn fleet_store_role(user: &str) -> Self {
        Self::fatal(
            "28000",
            format!("role \"{user}\" is reserved for pgshift's fleet control table; clients cannot log in as it"),
        )
    }

    /// 28000 for a client that no `auth_hba_file` line lets in, worded as PostgreSQL words it
    /// (`rejected`: a `reject` line matched; otherwise no line did).
    pub fn hba_refused(rejected: bool, host: &str, user: &str, database: &str, tls: bool) -> Self {
        let ssl = if tls { "on" } else { "off" };
        let what = if rejected { "pg_hba.conf rejects connection for" } else { "no pg_hba.conf entry for" };
        Self::fatal("28000", format!("{what} host \"{host}\", user \"{user}\", database \"{database}\", SSL {ssl}"))
    }

    /// 22023 for a startup parameter PostgreSQL would refuse, worded as PostgreSQL words it.
    pub fn invalid_parameter(name: &str, value: &str) -> Self {
        Self::fatal("22023", format!("invalid value for parameter \"{name}\": \"{value}\""))
    }

    /// 08006 for a client whose server connection died under it. Its connection is closed: an
    /// open transaction is gone, and a COMMIT in flight may or may not have taken effect. On a
    /// primary with role discovery on, that is what a failover looks like, and the message says so.
    pub fn server_lost(primary_failover: bool) -> Self {
        if primary_failover {
            Self::fatal(
                "08006",
                "server connection lost: the primary closed the connection (failover: it failed or was \
                 stopped; new transactions go to the primary role discovery finds); the transaction \
                 was cut off: nothing of it is committed unless its COMMIT was already sent, in which \
                 case it may or may not have taken effect; reconnect, and check before retrying a COMMIT",
            )
        } else {
            Self::fatal(
                "08006",
                "server connection lost: PostgreSQL closed the connection (it may have restarted); reconnect and retry",
            )
        }
    }

    /// 08006 when `auth_query` could not say whether the user exists: the client learns the
    /// login failed for want of the lookup, not for its password (the detail is in the log).
    pub fn auth_lookup_failed(what: &str) -> Self {
        Self::fatal("08006", format!("authentication lookup failed: {what}"))
    }

    /// 28000 for an address past `max_failed_logins` (like fail2ban in front of PostgreSQL, which
    /// has no such limit itself): an authorization refusal, not a capacity one, so drivers do not
    /// retry it as they would 53300.
    pub fn too_many_failed_logins(host: &str) -> Self {
        Self::fatal(
            "28000",
            format!("too many failed logins from host \"{host}\": refused until failed_login_window has passed"),
        )
    }

    /// 08P01 protocol violation.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::fatal("08P01", message)
    }

    /// A framing error from a client: 54000 for a message over the size limit, else 08P01.
    pub fn from_wire(e: &crate::wire::WireError) -> Self {
        match e {
            crate::wire::WireError::TooLarge { .. } => Self::fatal("54000", e.to_string()),
            _ => Self::protocol(e.to_string()),
        }
    }
}

impl From<&ServerError> for ClientError {
    fn from(e: &ServerError) -> Self {
        match e {
            // PostgreSQL's own login error (unknown database 3D000, role 28000, too many 53300...)
            // is what the client would have seen talking to it directly.
            ServerError::Refused { code, message, .. } => ClientError::fatal(code, message.clone()),
            ServerError::Connect(_) | ServerError::ConnectTimeout => ClientError::fatal(
                "08006",
                "server unavailable: pgshift could not connect to PostgreSQL (it is restarting or unreachable)",
            ),
            ServerError::Auth(a) => ClientError::fatal("08006", format!("pgshift could not log into PostgreSQL: {a}")),
            ServerError::Tls(_) => ClientError::fatal("08006", "pgshift could not open TLS toward PostgreSQL"),
            ServerError::Wire(_) | ServerError::Io(_) | ServerError::Closed => {
                ClientError::fatal("08006", "server connection lost")
            }
        }
    }
}

impl From<&PoolError> for ClientError {
    fn from(e: &PoolError) -> Self {
        match e {
            PoolError::WaitTimeout(d) => ClientError::fatal(
                "53300",
                format!("query_wait_timeout: no server connection became free within {}s", d.as_secs()),
            ),
            PoolError::Canceled => ClientError::error("57014", "canceling statement due to user request"),
            PoolError::Server(s) => s.into(),
            PoolError::Closed => ClientError::fatal("57P01", "terminating connection: pool closed"),
            PoolError::Limit { limit, waited } => ClientError::fatal(
                "53300",
                format!(
                    "too many server connections: {limit} reached, and none became free within {}s",
                    waited.as_secs()
                ),
            ),
        }
    }
}
