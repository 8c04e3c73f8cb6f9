//! The control table: the fleet's shared migration state and its member list, in PostgreSQL.
//!
//! `pgshift.fleet_state` has one row per fleet name: the state (phase, read share, per-database
//! phases, sync engine) as JSON, its version, and the fence of a change in progress.
//! `pgshift.fleet_members` has one row per instance: its heartbeat (`seen`, on the store's clock),
//! what it reports, the state version it has applied and the fence it has confirmed.
//! Every statement is parameterised; names go to PostgreSQL as values, never spliced into SQL.

use std::sync::Arc;

use super::FleetError;
use crate::auth::UserEntry;
use crate::config::StoreUrl;
use crate::server::{LoginSpec, ServerConn};
use crate::shared::Runtime;

/// The channel every instance LISTENs on; the payload is the fleet's name.
pub const CHANNEL: &str = "pgshift_fleet";

/// Advisory lock key space for one fleet's changes (`hashtext('pgshift.fleet:' || name)`).
const LOCK_KEY: &str = "hashtext('pgshift.fleet:' || $1)";

const SCHEMA: &str = "BEGIN;
    SELECT pg_advisory_xact_lock(hashtext('pgshift.fleet schema'));
    CREATE SCHEMA IF NOT EXISTS pgshift;
    CREATE TABLE IF NOT EXISTS pgshift.fleet_state (
        fleet text PRIMARY KEY, version bigint NOT NULL DEFAULT 0, state jsonb,
        fence bigint NOT NULL DEFAULT 0, fence_by int, changed_by int,
        changed_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE IF NOT EXISTS pgshift.fleet_members (
        fleet text NOT NULL, id int NOT NULL, incarnation text NOT NULL, version text,
        listen text, admin text, phase text, clients int, servers int,
        applied bigint NOT NULL DEFAULT 0, drained bigint NOT NULL DEFAULT 0,
        started timestamptz NOT NULL DEFAULT now(), seen timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (fleet, id));
    COMMIT";

/// The shared state as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateRow {
    /// Bumped by every change.
    pub version: u64,
    /// The state's JSON (`None` before the first instance wrote one).
    pub state: Option<String>,
    /// The version a fenced change in progress will write; 0 when none is.
    pub fence: u64,
    /// The instance making that change.
    pub fence_by: u16,
    /// The instance that made the last change.
    pub changed_by: u16,
}

/// A member as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    /// Its `[fleet] id`.
    pub id: u16,
    /// pgshift version.
    pub version: String,
    /// Its client listener.
    pub listen: String,
    /// Its admin port, if any.
    pub admin: String,
    /// Its migration phase.
    pub phase: String,
    /// Connected clients.
    pub clients: u64,
    /// Server connections (leased + idle).
    pub servers: u64,
    /// State version applied.
    pub applied: u64,
    /// Fence confirmed.
    pub drained: u64,
    /// Milliseconds since its last heartbeat, on the store's clock.
    pub seen_ms_ago: u64,
}

/// What this instance reports in its heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Random per process: tells this instance from another using the same id.
    pub incarnation: String,
    /// Client listener.
    pub listen: String,
    /// Admin listener.
    pub admin: String,
    /// Phase name.
    pub phase: String,
    /// Connected clients.
    pub clients: u64,
    /// Server connections.
    pub servers: u64,
    /// State version applied.
    pub applied: u64,
    /// Fence confirmed.
    pub drained: u64,
}

/// Where the store is and whom to log in as, from `[fleet] store` and the runtime.
pub fn login(rt: &Runtime) -> Result<LoginSpec, FleetError> {
    let url = StoreUrl::parse(&rt.config.fleet.store).map_err(FleetError::Config)?;
    let name = url
        .user
        .clone()
        .or_else(|| rt.config.migration.as_ref().map(|m| m.admin_user.clone()).filter(|u| !u.is_empty()))
        .or_else(|| {
            let users = rt.config.auth.users.iter();
            users
                .filter(|u| rt.users.get(&u.name).is_some_and(|e| e.plaintext.is_some()))
                .map(|u| u.name.clone())
                .next()
        })
        .ok_or_else(|| {
            FleetError::Config("no user to log in with: give store = postgres://user:password@host/db".into())
        })?;
    let user = match (&url.password, rt.users.get(&name)) {
        (Some(p), _) => Arc::new(UserEntry::new(&name, Some(p), None)),
        (None, Some(u)) if u.plaintext.is_some() => u,
        _ => return Err(FleetError::Config(format!("no password for store user {name:?}: put it in the store URL"))),
    };
    let (address, backend_name) = match url.address {
        Some(a) => (a, "fleet-store".to_string()),
        None => (rt.primary.address.clone(), rt.primary.name.clone()),
    };
    Ok(LoginSpec {
        address,
        backend_name,
        database: url.dbname.unwrap_or_else(|| name.clone()),
        user,
        connect_timeout: rt.config.proxy.server_connect_timeout.0,
        tls: rt.server_tls.clone(),
    })
}

/// Opens a connection to the store and makes sure the tables exist.
pub async fn connect(rt: &Runtime) -> Result<ServerConn, FleetError> {
    let spec = login(rt)?;
    let mut conn = ServerConn::connect(&spec, 0, 0).await.map_err(|e| FleetError::Store(e.to_string()))?;
    if let Some(e) = conn.run_internal(SCHEMA).await.map_err(store)? {
        let _ = conn.run_internal("ROLLBACK").await;
        return Err(FleetError::Store(format!("cannot create the control table: {e}")));
    }
    Ok(conn)
}

fn store(e: crate::server::ServerError) -> FleetError {
    FleetError::Store(e.to_string())
}

fn num(v: Option<&Option<String>>) -> u64 {
    v.and_then(|x| x.as_deref()).and_then(|x| x.parse().ok()).unwrap_or(0)
}

/// The fleet's state row (a default, version 0, when there is none yet).
pub async fn read_state(conn: &mut ServerConn, fleet: &str) -> Result<StateRow, FleetError> {
    let sql = "SELECT version, state::text, fence, coalesce(fence_by, 0), coalesce(changed_by, 0) \
               FROM pgshift.fleet_state WHERE fleet = $1";
    let row = conn.query_row_params(sql, &[fleet]).await.map_err(store)?;
    if row.is_empty() {
        return Ok(StateRow::default());
    }
    Ok(StateRow {
        version: num(row.first()),
        state: row.get(1).cloned().flatten(),
        fence: num(row.get(2)),
        fence_by: num(row.get(3)) as u16,
        changed_by: num(row.get(4)) as u16,
    })
}

/// Writes the first state of a fleet, unless another instance was first.
pub async fn seed_state(conn: &mut ServerConn, fleet: &str, json: &str, by: u16) -> Result<(), FleetError> {
    let sql = "INSERT INTO pgshift.fleet_state (fleet, version, state, changed_by) VALUES ($1, 1, $2::jsonb, $3::int) \
               ON CONFLICT (fleet) DO NOTHING";
    conn.query_row_params(sql, &[fleet, json, &by.to_string()]).await.map_err(store)?;
    Ok(())
}

/// Publishes a new state as `version` (which must follow the stored one while no fence is up, or
/// equal the fence this instance raised) and clears the fence; then notifies. False if another
/// change came first.
pub async fn publish(
    conn: &mut ServerConn,
    fleet: &str,
    version: u64,
    json: &str,
    by: u16,
) -> Result<bool, FleetError> {
    let sql = "UPDATE pgshift.fleet_state SET version = $2::bigint, state = $3::jsonb, fence = 0, fence_by = NULL, \
               changed_by = $4::int, changed_at = now() \
               WHERE fleet = $1 AND ((version = $2::bigint - 1 AND fence = 0) OR (fence = $2::bigint AND fence_by = $4::int)) \
               RETURNING 1";
    let row = conn.query_row_params(sql, &[fleet, &version.to_string(), json, &by.to_string()]).await.map_err(store)?;
    notify(conn, fleet).await?;
    Ok(!row.is_empty())
}

/// Announces a fenced change: every live instance is to hold new transactions and confirm when
/// none of its own runs. Returns the fence (the version the change will publish).
pub async fn raise_fence(conn: &mut ServerConn, fleet: &str, by: u16) -> Result<u64, FleetError> {
    let sql = "UPDATE pgshift.fleet_state SET fence = version + 1, fence_by = $2::int WHERE fleet = $1 RETURNING fence";
    let row = conn.query_row_params(sql, &[fleet, &by.to_string()]).await.map_err(store)?;
    notify(conn, fleet).await?;
    Ok(num(row.first()))
}

/// Withdraws fence `fence` (a change that failed, or whose maker is gone).
pub async fn lower_fence(conn: &mut ServerConn, fleet: &str, fence: u64) -> Result<(), FleetError> {
    let sql = "UPDATE pgshift.fleet_state SET fence = 0, fence_by = NULL WHERE fleet = $1 AND fence = $2::bigint";
    conn.query_row_params(sql, &[fleet, &fence.to_string()]).await.map_err(store)?;
    notify(conn, fleet).await
}

async fn notify(conn: &mut ServerConn, fleet: &str) -> Result<(), FleetError> {
    conn.query_row_params("SELECT pg_notify($1, $2)", &[CHANNEL, fleet]).await.map_err(store)?;
    Ok(())
}

/// Removes this instance's member row as it stops (only its own incarnation's: a successor with
/// the same id may have written it already), so the others stop counting it at once.
pub async fn leave(conn: &mut ServerConn, fleet: &str, id: u16, incarnation: &str) -> Result<(), FleetError> {
    let sql = "DELETE FROM pgshift.fleet_members WHERE fleet = $1 AND id = $2::int AND incarnation = $3";
    conn.query_row_params(sql, &[fleet, &id.to_string(), incarnation]).await.map_err(store)?;
    Ok(())
}

/// Takes the fleet's change lock for this connection's session, if no other instance holds it.
pub async fn try_lock(conn: &mut ServerConn, fleet: &str) -> Result<bool, FleetError> {
    let row =
        conn.query_row_params(&format!("SELECT pg_try_advisory_lock({LOCK_KEY})"), &[fleet]).await.map_err(store)?;
    Ok(row.first().cloned().flatten().as_deref() == Some("t"))
}

/// Writes this instance's heartbeat. False if another live instance holds the same id.
pub async fn heartbeat(
    conn: &mut ServerConn,
    fleet: &str,
    id: u16,
    hb: &Heartbeat,
    timeout_ms: u64,
) -> Result<bool, FleetError> {
    let sql = "INSERT INTO pgshift.fleet_members AS m (fleet, id, incarnation, version, listen, admin, phase, \
               clients, servers, applied, drained) \
               VALUES ($1, $2::int, $3, $4, $5, $6, $7, $8::int, $9::int, $10::bigint, $11::bigint) \
               ON CONFLICT (fleet, id) DO UPDATE SET incarnation = excluded.incarnation, version = excluded.version, \
               listen = excluded.listen, admin = excluded.admin, phase = excluded.phase, clients = excluded.clients, \
               servers = excluded.servers, applied = excluded.applied, drained = excluded.drained, seen = now(), \
               started = CASE WHEN m.incarnation = excluded.incarnation THEN m.started ELSE now() END \
               WHERE m.incarnation = excluded.incarnation OR m.seen < now() - $12::bigint * interval '1 millisecond' \
               RETURNING 1";
    let (id, clients, servers) = (id.to_string(), hb.clients.to_string(), hb.servers.to_string());
    let (applied, drained, timeout) = (hb.applied.to_string(), hb.drained.to_string(), timeout_ms.to_string());
    let version = env!("CARGO_PKG_VERSION");
    let params = [
        fleet,
        &id,
        &hb.incarnation,
        version,
        &hb.listen,
        &hb.admin,
        &hb.phase,
        &clients,
        &servers,
        &applied,
        &drained,
        &timeout,
    ];
    let row = conn.query_row_params(sql, &params).await.map_err(store)?;
    Ok(!row.is_empty())
}

/// The members heard from within `timeout_ms`; rows silent for a day are removed.
pub async fn members(conn: &mut ServerConn, fleet: &str, timeout_ms: u64) -> Result<Vec<Member>, FleetError> {
    let prune = "DELETE FROM pgshift.fleet_members WHERE fleet = $1 AND seen < now() - interval '1 day'";
    conn.query_row_params(prune, &[fleet]).await.map_err(store)?;
    // One row per member, its fields joined: the parameterised path returns a first row only.
    let sql = "SELECT string_agg(concat_ws(chr(31), id, version, listen, admin, phase, clients, servers, applied, \
               drained, (extract(epoch FROM now() - seen) * 1000)::bigint), chr(30) ORDER BY id) \
               FROM pgshift.fleet_members WHERE fleet = $1 AND seen > now() - $2::bigint * interval '1 millisecond'";
    let row = conn.query_row_params(sql, &[fleet, &timeout_ms.to_string()]).await.map_err(store)?;
    let text = row.first().cloned().flatten().unwrap_or_default();
    Ok(text.split('\u{1e}').filter(|r| !r.is_empty()).filter_map(parse_member).collect())
}

fn parse_member(r: &str) -> Option<Member> {
    let f: Vec<&str> = r.split('\u{1f}').collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let s = |i: usize| f.get(i).map(|v| v.to_string()).unwrap_or_default();
    Some(Member {
        id: f.first()?.parse().ok()?,
        version: s(1),
        listen: s(2),
        admin: s(3),
        phase: s(4),
        clients: n(5),
        servers: n(6),
        applied: n(7),
        drained: n(8),
        seen_ms_ago: n(9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_rows_parse() {
        let m = parse_member(
            "3\u{1f}0.1.0\u{1f}127.0.0.1:6432\u{1f}127.0.0.1:6480\u{1f}cutover\u{1f}12\u{1f}4\u{1f}7\u{1f}7\u{1f}250",
        )
        .unwrap();
        assert_eq!((m.id, m.clients, m.servers, m.applied, m.seen_ms_ago), (3, 12, 4, 7, 250));
        assert_eq!(m.phase, "cutover");
        assert!(parse_member("x\u{1f}1").is_none());
    }
}
