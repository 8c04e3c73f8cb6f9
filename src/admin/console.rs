//! The PgBouncer-compatible admin console: `psql -U <admin user> pgbouncer` on the main port.
//!
//! A client that logged in (the usual handshake and authentication) to a database in
//! `CONSOLE_DATABASES` comes here instead of a pool: no pool is ever made for "pgbouncer". Only
//! users in `[admin] admin_users` stay; others get PgBouncer's FATAL 28000 "not allowed". Like
//! PgBouncer, the console speaks the simple query protocol only, one command per query, with
//! PgBouncer 1.2x's column names and types so pgbouncer_exporter and scripts keep working.

use bytes::{Buf, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{console_show, control};
use crate::client::handshake::{Login, CONSOLE_DATABASES};
use crate::error::ClientError;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::wire::{frame, messages, tag};

/// Console queries are short commands; a bound keeps a client from making us buffer more.
const MAX_CONSOLE_FRAME: usize = 64 * 1024;

/// True for the virtual databases that open the console.
pub fn is_console_database(database: &str) -> bool {
    CONSOLE_DATABASES.contains(&database)
}

/// Runs a console session from login to disconnect.
pub async fn run(shared: Arc<Shared>, login: Login) {
    let Login { mut stream, mut rbuf, user, peer, .. } = login;
    let allowed = shared.runtime.load().config.admin.admin_users.iter().any(|u| *u == user.name);
    if !allowed {
        shared.stats.login_failures.fetch_add(1, Ordering::Relaxed);
        shared.stats.record_error(b"28000");
        let _ = stream.write_all(&ClientError::fatal("28000", "not allowed").frame()).await;
        let _ = stream.flush().await;
        tracing::info!(%peer, user = %user.name, "console refused: user not in [admin] admin_users");
        return;
    }
    shared.stats.logins.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%peer, user = %user.name, "admin console connected");
    let mut out = BytesMut::with_capacity(1024);
    welcome(&mut out);
    while send(&mut stream, &mut out).await {
        let Some((t, body)) = next_frame(&shared, &mut stream, &mut rbuf, &mut out).await else { break };
        match t {
            tag::QUERY => {
                let sql = frame::cstr(&body).map(|(q, _)| String::from_utf8_lossy(q).into_owned()).unwrap_or_default();
                tracing::info!(user = %user.name, "console: {}", sql.trim());
                execute(&shared, &sql, &mut out).await;
                messages::put_ready_for_query(&mut out, crate::wire::TxStatus::Idle);
            }
            tag::TERMINATE => break,
            _ => {
                // PgBouncer answers the extended protocol the same way: error, then close.
                let e = ClientError::fatal("08P01", "extended query protocol not supported by admin console");
                out.extend_from_slice(&e.frame());
                let _ = send(&mut stream, &mut out).await;
                break;
            }
        }
    }
    let _ = stream.shutdown().await;
    tracing::info!(%peer, user = %user.name, "admin console disconnected");
}

/// ParameterStatus values a client library expects, then BackendKeyData and ReadyForQuery.
fn welcome(out: &mut BytesMut) {
    let version = format!("{}/pgshift", env!("CARGO_PKG_VERSION"));
    for (k, v) in [
        ("server_version", version.as_str()),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
    ] {
        messages::put_parameter_status(out, k.as_bytes(), v.as_bytes());
    }
    // Nothing here can be cancelled; a random key keeps clients that insist on one happy.
    messages::put_backend_key_data(out, rand::random::<i32>() & i32::MAX, rand::random());
    messages::put_ready_for_query(out, crate::wire::TxStatus::Idle);
}

/// Writes and clears `out`; false if the client is gone.
async fn send(stream: &mut Stream, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = stream.write_all(out).await.is_ok() && stream.flush().await.is_ok();
    out.clear();
    ok
}

/// The next whole frame (tag and body); `None` when the client left, broke the protocol, or the
/// proxy is stopping or draining (console sessions hold no transaction, so they close at once).
async fn next_frame(
    shared: &Shared,
    stream: &mut Stream,
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
) -> Option<(u8, BytesMut)> {
    loop {
        match frame::complete_frame(rbuf) {
            Ok(Some((t, n))) if n <= MAX_CONSOLE_FRAME => {
                let mut f = rbuf.split_to(n);
                f.advance(frame::HEADER_LEN);
                return Some((t, f));
            }
            Ok(None) if rbuf.len() <= MAX_CONSOLE_FRAME => {}
            _ => {
                out.extend_from_slice(&ClientError::protocol("invalid or oversized message for admin console").frame());
                let _ = send(stream, out).await;
                return None;
            }
        }
        if shared.is_draining() || *shared.stop.borrow() {
            out.extend_from_slice(
                &ClientError::fatal("57P01", "terminating connection: pgshift is shutting down").frame(),
            );
            let _ = send(stream, out).await;
            return None;
        }
        let mut stop = shared.stop.subscribe();
        tokio::select! {
            r = stream.read_buf(rbuf) => match r {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
            _ = shared.drain_notify.notified() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Runs one console command, appending its answer (without ReadyForQuery) to `out`.
pub async fn execute(shared: &Arc<Shared>, sql: &str, out: &mut BytesMut) {
    let text = sql.trim().trim_end_matches(';').trim();
    if text.is_empty() {
        messages::put_empty(out, tag::EMPTY_QUERY_RESPONSE);
        return;
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let cmd = words[0].to_ascii_uppercase();
    let arg = words.get(1).copied().unwrap_or("");
    if words.len() > 2 {
        return error(out, "42601", &format!("invalid command '{text}', use SHOW HELP;"));
    }
    match cmd.as_str() {
        "SHOW" if arg.eq_ignore_ascii_case("help") => console_show::help(out),
        "SHOW" => match console_show::show(shared, arg) {
            Some(table) => table.write(out),
            None => error(out, "42601", &format!("invalid command '{text}', use SHOW HELP;")),
        },
        "PAUSE" | "RECONNECT" | "RESUME" if !arg.is_empty() => {
            error(out, "0A000", &format!("{cmd} of one database is not supported: use {cmd} without an argument"))
        }
        "PAUSE" => pause(shared, out).await,
        "RESUME" if control::resume(shared) => messages::put_command_complete(out, "RESUME"),
        "RESUME" => error(out, "55000", "pooler is not paused/suspended"),
        "RELOAD" => match control::reload(shared) {
            Ok(()) => messages::put_command_complete(out, "RELOAD"),
            Err(p) => error(out, "F0000", &format!("RELOAD failed, the old configuration stays: {}", p.join("; "))),
        },
        "RECONNECT" => {
            control::reconnect(shared);
            messages::put_command_complete(out, "RECONNECT");
        }
        "KILL_CLIENT" => match arg.parse::<u64>() {
            Ok(id) if control::kill_client(shared, id) => messages::put_command_complete(out, "KILL_CLIENT"),
            Ok(_) => error(out, "42704", "client not found"),
            Err(_) => error(out, "22023", "invalid client id supplied"),
        },
        "SET" => error(out, "0A000", "SET is not supported by pgshift's console: edit proxy.toml, then RELOAD"),
        _ => error(out, "42601", &format!("invalid command '{text}', use SHOW HELP;")),
    }
}

/// PAUSE waits for running transactions (bounded by `shutdown_timeout`), as PgBouncer's does.
async fn pause(shared: &Shared, out: &mut BytesMut) {
    if *shared.paused.borrow() {
        return error(out, "55000", "already suspended/paused");
    }
    let timeout = shared.runtime.load().config.proxy.shutdown_timeout.0;
    let r = control::pause(shared, timeout).await;
    if !r.drained {
        let msg = format!(
            "{} server connections still in use after {:.0}s; new transactions stay held until RESUME",
            r.sv_active, r.waited
        );
        messages::put_error(out, tag::NOTICE_RESPONSE, "WARNING", "01000", &msg);
    }
    messages::put_command_complete(out, "PAUSE");
}

fn error(out: &mut BytesMut, code: &str, message: &str) {
    messages::put_error(out, tag::ERROR_RESPONSE, "ERROR", code, message);
}
