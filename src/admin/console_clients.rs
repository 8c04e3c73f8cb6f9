//! SHOW CLIENTS and SHOW SERVERS: one row per client, and per server connection a client holds,
//! in PgBouncer's socket-list layout.

use std::time::{SystemTime, UNIX_EPOCH};

use super::console_show::{v, Cols, Table, I, T};
use crate::client::peer::Peer;
use crate::client::registry::ClientState;
use crate::shared::Shared;

/// SHOW CLIENTS / SHOW SERVERS columns.
const SOCKET_COLS: Cols = &[
    ("type", T),
    ("user", T),
    ("database", T),
    ("replication", T),
    ("state", T),
    ("addr", T),
    ("port", I),
    ("local_addr", T),
    ("local_port", I),
    ("connect_time", T),
    ("request_time", T),
    ("wait", I),
    ("wait_us", I),
    ("close_needed", I),
    ("ptr", T),
    ("link", T),
    ("remote_pid", I),
    ("tls", T),
    ("application_name", T),
    ("prepared_statements", I),
    ("id", I),
];

/// One row per logged-in client (console sessions are not registered, so not listed).
pub fn clients(shared: &Shared) -> Table {
    let listen = shared.listen_addr.get().copied().or_else(|| shared.runtime.load().config.proxy.listen.parse().ok());
    let mut handles = shared.sessions.all();
    handles.sort_by_key(|h| h.id);
    let rows = handles
        .iter()
        .map(|h| {
            let state = match h.state() {
                ClientState::Active => "active",
                ClientState::Waiting => "waiting",
                ClientState::Idle => "idle",
            };
            let link =
                h.server.lock().ok().and_then(|s| s.clone()).map_or(String::new(), |s| format!("{:x}", s.conn_id));
            vec![
                v("C"),
                v(&h.user),
                v(&h.database),
                v("none"),
                v(state),
                v(client_addr(h.peer)),
                v(client_port(h.peer, listen)),
                local_addr(h.peer, listen),
                v(listen.map_or(0, |l| l.port())),
                v(utc(h.connected_at())),
                None,
                v(0),
                v(0),
                v(0),
                v(format!("{:x}", h.id)),
                v(link),
                v(0),
                v(""),
                v(""),
                v(0),
                v(h.id),
            ]
        })
        .collect();
    Table { cols: SOCKET_COLS, rows }
}

/// A client's `addr`: its IP, or `unix` on the Unix socket (as PgBouncer shows it).
fn client_addr(peer: Peer) -> String {
    peer.ip().map_or_else(|| "unix".into(), |ip| ip.to_string())
}

/// A client's `port`: its TCP port, or on the Unix socket the listen port (as PgBouncer shows it).
fn client_port(peer: Peer, listen: Option<std::net::SocketAddr>) -> u16 {
    match peer {
        Peer::Tcp(a) => a.port(),
        Peer::Unix => listen.map_or(0, |l| l.port()),
    }
}

/// The `local_addr` a client connected to: the listen IP, or `unix` on the Unix socket.
fn local_addr(peer: Peer, listen: Option<std::net::SocketAddr>) -> Option<String> {
    match peer {
        Peer::Unix => Some("unix".into()),
        Peer::Tcp(_) => listen.map(|l| l.ip().to_string()),
    }
}

/// Leased server connections (the ones a client holds); idle ones are only counted, in POOLS.
pub fn servers(shared: &Shared) -> Table {
    let mut handles = shared.sessions.all();
    handles.sort_by_key(|h| h.id);
    let rows = handles
        .iter()
        .filter_map(|h| {
            let s = h.server.lock().ok().and_then(|s| s.clone())?;
            Some(vec![
                v("S"),
                v(&h.user),
                v(&h.database),
                v("none"),
                v("active"),
                v(s.peer.ip()),
                v(s.peer.port()),
                None,
                v(0),
                None,
                None,
                v(0),
                v(0),
                v(0),
                v(format!("{:x}", s.conn_id)),
                v(format!("{:x}", h.id)),
                v(s.key.0),
                v(""),
                v(""),
                v(0),
                v(s.conn_id),
            ])
        })
        .collect();
    Table { cols: SOCKET_COLS, rows }
}

/// "YYYY-MM-DD HH:MM:SS UTC", as PgBouncer prints connect times (it uses local time).
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14 22:13:20 UTC");
    }
}
