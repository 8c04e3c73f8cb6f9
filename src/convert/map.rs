//! The setting map: each PgBouncer setting onto its pgshift key, or a note saying why not.

use toml::Value;

use super::ini::{Entry, Ini};
use super::topology;
use super::unmapped::unmappable;
use super::{NoteKind, Output, Sect, User};
use crate::config::Dur;

/// What a PgBouncer timeout of 0 means, when it is not what 0 means in pgshift.
enum Zero {
    /// 0 is "off" in both.
    Same,
    /// 0 cannot be carried over; the reason.
    Unmappable(&'static str),
}

/// PgBouncer's auth_query default (1.24+): an expired password yields NULL, so no login.
const PGBOUNCER_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END \
                                    FROM pg_authid WHERE rolname = $1 AND rolcanlogin";

/// Maps a parsed pgbouncer.ini (and userlist.txt users) onto `out`.
pub fn map(ini: &Ini, ini_name: &str, users: Option<(&str, Vec<(String, String)>)>, out: &mut Output) {
    let at = |e: &Entry| format!("{ini_name}:{}", e.line);
    for inc in &ini.includes {
        out.note(
            NoteKind::NotMapped,
            &at(inc),
            format!("%include {}", inc.value),
            "not followed: convert that file too",
        );
    }
    for s in &ini.sections {
        if !matches!(s.name.as_str(), "pgbouncer" | "databases" | "users") {
            let why =
                if s.name == "peers" { "not needed: one pgshift process uses every core" } else { "unknown section" };
            for e in &s.entries {
                out.note(NoteKind::NotMapped, &at(e), format!("[{}] {}", s.name, e.key), why);
            }
        }
    }
    if let Some((name, list)) = users {
        for (n, (user, secret)) in list.into_iter().enumerate() {
            out.users.push(User { name: user, secret, from: format!("{name} entry {}", n + 1) });
        }
    }
    settings(ini, &at, out);
    topology::databases(ini, &at, out);
    topology::users(ini, &at, out);
    pgbouncer_defaults(out);
}

fn shown(e: &Entry) -> String {
    format!("{} = {}", e.key, e.value)
}

/// Where a value came from: "pgbouncer.ini:12 max_client_conn".
fn from(at: &dyn Fn(&Entry) -> String, e: &Entry) -> String {
    format!("{} {}", at(e), e.key)
}

/// The `[pgbouncer]` section.
fn settings(ini: &Ini, at: &dyn Fn(&Entry) -> String, out: &mut Output) {
    let (mut addr, mut port) = (None, None);
    for e in ini.section("pgbouncer") {
        let key = e.setting();
        match key.as_str() {
            "listen_addr" => addr = Some(e),
            "listen_port" => port = Some(e),
            "pool_mode" => match e.value.as_str() {
                "session" | "transaction" => {
                    out.set(Sect::Proxy, "pool_mode", Value::String(e.value.clone()), from(at, e))
                }
                _ => out.note(NoteKind::NotMapped, &at(e), shown(e), "pgshift pools in transaction or session mode"),
            },
            "server_reset_query_always" => match e.value.trim() {
                "1" | "yes" | "on" | "true" => {
                    out.set(Sect::Proxy, "server_reset_query_always", Value::Boolean(true), from(at, e))
                }
                "0" | "no" | "off" | "false" => {
                    out.set(Sect::Proxy, "server_reset_query_always", Value::Boolean(false), from(at, e))
                }
                _ => out.note(NoteKind::NotMapped, &at(e), shown(e), "not a boolean"),
            },
            "server_reset_query" => {
                out.set(Sect::Proxy, "server_reset_query", Value::String(e.value.clone()), from(at, e))
            }
            "unix_socket_dir" | "unix_socket_mode" => unix_socket(e, &key, at, out),
            _ => {
                if !pools_and_timeouts(e, &key, at, out) && !security(ini, e, &key, at, out) {
                    let why = unmappable(&key).unwrap_or("no pgshift equivalent");
                    out.note(NoteKind::NotMapped, &at(e), shown(e), why);
                }
            }
        }
    }
    listen(addr, port, at, out);
}

/// The `[pgbouncer]` pool sizes, limits and timeouts (`[proxy]`, same names); false: not one.
fn pools_and_timeouts(e: &Entry, key: &str, at: &dyn Fn(&Entry) -> String, out: &mut Output) -> bool {
    match key {
        "default_pool_size"
        | "min_pool_size"
        | "reserve_pool_size"
        | "max_client_conn"
        | "max_packet_size"
        | "max_prepared_statements"
        | "max_db_connections"
        | "max_user_connections"
        | "max_db_client_connections"
        | "max_user_client_connections" => match e.value.parse::<i64>() {
            Ok(n) if n >= 0 => out.set(Sect::Proxy, static_key(key), Value::Integer(n), from(at, e)),
            _ => out.note(NoteKind::NotMapped, &at(e), shown(e), "not a whole number"),
        },
        "reserve_pool_timeout"
        | "server_idle_timeout"
        | "query_timeout"
        | "client_idle_timeout"
        | "idle_transaction_timeout"
        | "cancel_wait_timeout"
        | "client_login_timeout" => duration(e, key, Zero::Same, at, out),
        "query_wait_timeout" => {
            duration(e, key, Zero::Unmappable("0 waits forever in PgBouncer; pgshift needs a bound above 0"), at, out)
        }

        "server_connect_timeout" => duration(e, key, Zero::Unmappable("pgshift needs a bound above 0"), at, out),
        "server_lifetime" => duration(
            e,
            key,
            Zero::Unmappable("0 uses each server connection once in PgBouncer; in pgshift 0 is no limit"),
            at,
            out,
        ),
        "server_check_delay" => duration(
            e,
            key,
            Zero::Unmappable("0 checks before every use in PgBouncer; in pgshift 0 turns the check off"),
            at,
            out,
        ),
        _ => return false,
    }
    true
}

/// The `[pgbouncer]` settings of `[auth]`, `[tls]` and `[admin]`; false: not one of them.
fn security(ini: &Ini, e: &Entry, key: &str, at: &dyn Fn(&Entry) -> String, out: &mut Output) -> bool {
    match key {
        "auth_type" => auth_type(e, hba_file(ini).is_some(), at, out),
        "auth_hba_file" => {
            if hba_file(ini).is_some() {
                out.set(Sect::Auth, "auth_hba_file", Value::String(e.value.clone()), from(at, e));
            } else {
                let why = "PgBouncer reads auth_hba_file only with auth_type = hba; pgshift applies it \
                           whenever it is set, so it is left out";
                out.note(NoteKind::NotMapped, &at(e), shown(e), why);
            }
        }
        "auth_file" => {
            if out.users.is_empty() {
                out.set(Sect::Auth, "auth_file", Value::String(e.value.clone()), from(at, e));
            }
        }
        "auth_user" | "auth_query" => out.set(Sect::Auth, static_key(key), Value::String(e.value.clone()), from(at, e)),
        "auth_dbname" => out.set(Sect::Auth, "auth_database", Value::String(e.value.clone()), from(at, e)),
        "admin_users" => out.set(Sect::Admin, "admin_users", list(&e.value), from(at, e)),
        "client_tls_sslmode" => client_tls(e, at, out),
        "client_tls_cert_file" => out.set(Sect::Tls, "cert", Value::String(e.value.clone()), from(at, e)),
        "client_tls_key_file" => out.set(Sect::Tls, "key", Value::String(e.value.clone()), from(at, e)),
        "client_tls_ca_file" => out.set(Sect::Tls, "client_ca", Value::String(e.value.clone()), from(at, e)),
        "server_tls_sslmode" => server_tls(e, at, out),
        "server_tls_ca_file" => out.set(Sect::Tls, "server_ca", Value::String(e.value.clone()), from(at, e)),
        _ => return false,
    }
    true
}

/// The `'static` pgshift key of a same-named PgBouncer setting.
fn static_key(key: &str) -> &'static str {
    const SAME: &[&str] = &[
        "default_pool_size",
        "min_pool_size",
        "reserve_pool_size",
        "max_client_conn",
        "max_prepared_statements",
        "max_packet_size",
        "max_db_connections",
        "max_user_connections",
        "max_db_client_connections",
        "max_user_client_connections",
        "cancel_wait_timeout",
        "reserve_pool_timeout",
        "server_idle_timeout",
        "query_timeout",
        "client_idle_timeout",
        "idle_transaction_timeout",
        "query_wait_timeout",
        "client_login_timeout",
        "server_connect_timeout",
        "server_lifetime",
        "server_check_delay",
        "auth_user",
        "auth_query",
        "unix_socket_dir",
        "unix_socket_mode",
    ];
    SAME.iter().copied().find(|k| *k == key).unwrap_or("unknown")
}

fn duration(e: &Entry, key: &str, zero: Zero, at: &dyn Fn(&Entry) -> String, out: &mut Output) {
    let d = match Dur::parse(&e.value) {
        Ok(d) => d,
        Err(why) => return out.note(NoteKind::NotMapped, &at(e), shown(e), why),
    };
    if let (true, Zero::Unmappable(why)) = (d.0.is_zero(), zero) {
        return out.note(NoteKind::NotMapped, &at(e), shown(e), format!("{why}; pgshift's default is kept"));
    }
    out.set(Sect::Proxy, static_key(key), Value::String(d.to_string()), from(at, e));
}

fn list(v: &str) -> Value {
    Value::Array(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.into())).collect())
}

/// `auth_hba_file`, when PgBouncer uses it (auth_type = hba).
fn hba_file(ini: &Ini) -> Option<&Entry> {
    let hba = ini.section("pgbouncer").any(|e| e.setting() == "auth_type" && e.value == "hba");
    ini.section("pgbouncer").find(|e| e.setting() == "auth_hba_file" && !e.value.is_empty()).filter(|_| hba)
}

fn auth_type(e: &Entry, hba_file: bool, at: &dyn Fn(&Entry) -> String, out: &mut Output) {
    if e.value == "hba" && hba_file {
        let why = "the methods come from auth_hba_file; [auth] type is kept at scram-sha-256 and unused \
                   while auth_hba_file is set";
        return out.note(NoteKind::Different, &at(e), shown(e), why);
    }
    let (kind, why) = match e.value.as_str() {
        "scram-sha-256" | "trust" | "cert" => (e.value.as_str(), None),
        "md5" => ("md5", None),
        "plain" => ("scram-sha-256", Some("pgshift never asks for a cleartext password: SCRAM instead")),
        "any" => ("trust", Some("trust asks no password, but the user must still be known to pgshift")),
        _ => {
            let why =
                "no equivalent (pgshift: scram-sha-256, md5, trust, cert); pgshift's default scram-sha-256 is kept";
            return out.note(NoteKind::NotMapped, &at(e), shown(e), why);
        }
    };
    out.set(Sect::Auth, "type", Value::String(kind.into()), from(at, e));
    if let Some(why) = why {
        out.note(NoteKind::Different, &at(e), shown(e), why);
    }
}

fn client_tls(e: &Entry, at: &dyn Fn(&Entry) -> String, out: &mut Output) {
    let mode = match e.value.as_str() {
        m @ ("disable" | "allow" | "prefer" | "require") => m,
        "verify-ca" | "verify-full" => {
            let why = "TLS required; a client certificate is checked against client_ca when presented, \
                       and demanded only with auth type cert";
            out.note(NoteKind::Different, &at(e), shown(e), why);
            "require"
        }
        _ => return out.note(NoteKind::NotMapped, &at(e), shown(e), "not an sslmode"),
    };
    out.set(Sect::Tls, "mode", Value::String(mode.into()), from(at, e));
}

fn server_tls(e: &Entry, at: &dyn Fn(&Entry) -> String, out: &mut Output) {
    let mode = match e.value.as_str() {
        m @ ("disable" | "prefer" | "require" | "verify-ca" | "verify-full") => m,
        "allow" => {
            out.note(NoteKind::Different, &at(e), shown(e), "pgshift has no allow toward PostgreSQL: prefer instead");
            "prefer"
        }
        _ => return out.note(NoteKind::NotMapped, &at(e), shown(e), "not an sslmode"),
    };
    out.set(Sect::Tls, "server_mode", Value::String(mode.into()), from(at, e));
}

/// unix_socket_dir and unix_socket_mode -> `[proxy]`, same names. An empty directory is kept
/// (off in both, and it keeps PgBouncer's default /tmp from being written).
fn unix_socket(e: &Entry, key: &str, at: &dyn Fn(&Entry) -> String, out: &mut Output) {
    let value = e.value.trim();
    if key == "unix_socket_dir" && value.starts_with('@') {
        let why = "pgshift has no abstract-namespace socket: set a directory";
        return out.note(NoteKind::NotMapped, &at(e), shown(e), why);
    }
    if key == "unix_socket_mode" && u32::from_str_radix(value, 8).map_or(true, |m| m > 0o777) {
        return out.note(NoteKind::NotMapped, &at(e), shown(e), "not an octal file mode; 0777 is used");
    }
    out.set(Sect::Proxy, static_key(key), Value::String(value.to_string()), from(at, e));
}

/// listen_addr + listen_port -> `[proxy] listen`.
fn listen(addr: Option<&Entry>, port: Option<&Entry>, at: &dyn Fn(&Entry) -> String, out: &mut Output) {
    let port_num = match port {
        None => 6432,
        Some(p) => p.value.parse::<u16>().unwrap_or_else(|_| {
            out.note(NoteKind::NotMapped, &at(p), shown(p), "not a port number; 6432 is used");
            6432
        }),
    };
    let origin = [addr, port].into_iter().flatten().map(|e| from(at, e)).collect::<Vec<_>>().join(", ");
    let Some(a) = addr else {
        let listen = format!("127.0.0.1:{port_num}");
        let why = "PgBouncer without listen_addr listens on its unix socket only; pgshift listens on TCP too: \
                   127.0.0.1 (the socket is [proxy] unix_socket_dir)";
        out.set(Sect::Proxy, "listen", Value::String(listen), "no listen_addr in the ini: see the notes");
        return out.note(NoteKind::Different, "(listen_addr not set)", "listen_addr".into(), why);
    };
    let mut hosts = a.value.split(',').map(str::trim).filter(|h| !h.is_empty());
    let first = hosts.next().unwrap_or("*");
    if hosts.next().is_some() {
        out.note(NoteKind::Different, &at(a), shown(a), format!("pgshift listens on one address: {first} only"));
    }
    let ip = match first {
        "*" => "0.0.0.0".to_string(),
        "localhost" => "127.0.0.1".to_string(),
        h => h.trim_start_matches('[').trim_end_matches(']').to_string(),
    };
    let listen = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port_num}"),
        Ok(v4) => format!("{v4}:{port_num}"),
        Err(_) => {
            out.note(
                NoteKind::NotMapped,
                &at(a),
                shown(a),
                "pgshift listens on an IP address, not a host name: 127.0.0.1 is used",
            );
            format!("127.0.0.1:{port_num}")
        }
    };
    out.set(Sect::Proxy, "listen", Value::String(listen), origin);
}

/// Where PgBouncer's default differs from pgshift's, write PgBouncer's so behaviour is kept.
fn pgbouncer_defaults(out: &mut Output) {
    let default = "PgBouncer's default (not set in the ini)";
    if out.get(Sect::Proxy, "max_client_conn").is_none() {
        out.set(Sect::Proxy, "max_client_conn", Value::Integer(100), default);
    }
    if out.get(Sect::Proxy, "server_connect_timeout").is_none() {
        out.set(Sect::Proxy, "server_connect_timeout", Value::String("15s".into()), default);
    }
    // PgBouncer listens on /tmp/.s.PGSQL.<port> unless told otherwise; pgshift on no socket.
    if out.get(Sect::Proxy, "unix_socket_dir").is_none() {
        out.set(Sect::Proxy, "unix_socket_dir", Value::String("/tmp".into()), default);
    }
    let scram_secrets = out.users.iter().any(|u| u.secret.starts_with("SCRAM-SHA-256$"));
    let md5 = match out.get(Sect::Auth, "type") {
        None => {
            out.set(Sect::Auth, "type", Value::String("md5".into()), default);
            true
        }
        Some(v) => v.as_str() == Some("md5"),
    };
    if md5 && scram_secrets {
        // PgBouncer answers such users with SCRAM on its own; pgshift's md5 cannot serve them.
        out.set(
            Sect::Auth,
            "type",
            Value::String("scram-sha-256".into()),
            "md5 in PgBouncer, but the userlist holds SCRAM secrets",
        );
        let md5_users: Vec<&str> =
            out.users.iter().filter(|u| u.secret.starts_with("md5")).map(|u| u.name.as_str()).collect();
        let mut why = "SCRAM secrets in userlist.txt: scram-sha-256 is used for every user".to_string();
        if !md5_users.is_empty() {
            why +=
                &format!("; these users have md5 secrets and need a SCRAM or plaintext one: {}", md5_users.join(", "));
        }
        out.note(NoteKind::Different, "(auth_type)", "auth_type = md5".into(), why);
    } else if md5 && out.users.is_empty() {
        let why = "PgBouncer switches to SCRAM for users whose secret is a SCRAM verifier; pgshift with md5 cannot \
                   log those in: use scram-sha-256 if the auth_file holds SCRAM secrets";
        out.note(NoteKind::Different, "(auth_type)", "auth_type = md5".into(), why);
    }
    if out.get(Sect::Auth, "auth_user").is_some() {
        if out.get(Sect::Auth, "auth_query").is_none() {
            out.set(
                Sect::Auth,
                "auth_query",
                Value::String(PGBOUNCER_AUTH_QUERY.into()),
                "PgBouncer's default auth_query",
            );
        }
        if out.get(Sect::Auth, "auth_database").is_none() {
            let why = "PgBouncer runs auth_query in the client's database; pgshift in auth_database (postgres)";
            out.note(NoteKind::Different, "(auth_dbname not set)", "auth_dbname".into(), why);
        }
    }
}
