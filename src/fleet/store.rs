//! The control table: the fleet's shared migration state and its member list, in PostgreSQL.
//!
//! `pgshift.fleet_state` has one row per fleet name: the state (phase, read share, per-database
//! phases, sync engine) as JSON, its version, and the fence of a change in progress.
//! `pgshift.fleet_members` has one row per instance: its heartbeat (`seen`, on the store's clock),
//! what it reports, the state version it has applied and the fence it has confirmed.
//! `pgshift.fleet_lock_<digest>` has no rows: the instance making a change of that fleet locks it.
//! The tables belong to the store's role alone, and pgshift checks that at every connection.
//! Every statement is parameterised; names go to PostgreSQL as values, never spliced into SQL.

use std::sync::Arc;

use super::FleetError;
use crate::auth::UserEntry;
use crate::config::StoreUrl;
use crate::server::{LoginSpec, ServerConn};
use crate::shared::Runtime;

/// The channel every instance LISTENs on; the payload is the fleet's name.
pub const CHANNEL: &str = "pgshift_fleet";

/// The control tables. No advisory lock guards their creation: any client of the database could
/// hold one. Two instances creating them at once may see one fail; it connects again.
const SCHEMA: &str = "BEGIN;
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

/// The control tables exist.
const SCHEMA_DONE: &str = "SELECT to_regclass('pgshift.fleet_members') IS NOT NULL";

/// What makes the control tables other than the store role's alone, one line, empty when
/// nothing does: another owner of the schema or of anything in it, privileges granted on those
/// tables or to create in the schema, roles that can act as the store's role (members; from
/// PostgreSQL 16 those with SET or INHERIT).
const NOT_OURS: &str = "WITH t AS (SELECT c.* FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
        WHERE n.nspname = 'pgshift') \
    SELECT concat_ws('; ', \
      (SELECT 'schema pgshift belongs to ' || quote_ident(pg_get_userbyid(nspowner)) FROM pg_namespace \
         WHERE nspname = 'pgshift' AND nspowner <> r.oid), \
      (SELECT string_agg(DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END \
         || ' may create in schema pgshift', ', ') \
         FROM pg_namespace n, aclexplode(n.nspacl) a \
         WHERE n.nspname = 'pgshift' AND a.grantee <> n.nspowner AND a.privilege_type = 'CREATE'), \
      (SELECT string_agg(t.oid::regclass::text || ' belongs to ' || quote_ident(pg_get_userbyid(t.relowner)), ', ') \
         FROM t WHERE t.relowner <> r.oid), \
      (SELECT string_agg(DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END \
         || ' is granted privileges on ' || t.oid::regclass::text, ', ') \
         FROM t, aclexplode(t.relacl) a WHERE a.grantee <> t.relowner), \
      (SELECT string_agg(quote_ident(pg_get_userbyid(m.member)), ', ') || ' can act as ' || quote_ident(r.rolname) \
         FROM pg_auth_members m WHERE m.roleid = r.oid \
         AND (coalesce((to_jsonb(m) ->> 'set_option')::bool, true) OR pg_has_role(m.member, r.oid, 'USAGE')))) \
    FROM pg_roles r WHERE r.rolname = current_user";

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

/// Where the store is and whom to log in as, from `[fleet] store` and the runtime: the URL's
/// role (checked at start to be one clients do not log in as) with the URL's password.
pub fn login(rt: &Runtime) -> Result<LoginSpec, FleetError> {
    let url = StoreUrl::parse(&rt.config.fleet.store).map_err(FleetError::Config)?;
    let name = url.user.clone().ok_or_else(|| {
        FleetError::Config("no role to log in as: give store = postgres://role:password@host/db".into())
    })?;
    let user = Arc::new(UserEntry::new(&name, url.password.as_deref(), None));
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

/// Opens a connection to the store, makes sure the tables exist, and checks that they are the
/// store role's alone: a role that owns them, is granted on them or can act as their owner could
/// rewrite the fleet's phase or raise a fence that holds every instance.
pub async fn connect(rt: &Runtime) -> Result<ServerConn, FleetError> {
    let spec = login(rt)?;
    let mut conn = ServerConn::connect(&spec, 0, 0).await.map_err(|e| FleetError::Store(e.to_string()))?;
    let done = conn.query_row_params(SCHEMA_DONE, &[]).await.map_err(store)?;
    if done.first().cloned().flatten().as_deref() != Some("t") {
        if let Some(e) = conn.run_internal(SCHEMA).await.map_err(store)? {
            let _ = conn.run_internal("ROLLBACK").await;
            check_ours(&mut conn).await?;
            return Err(FleetError::Store(format!("cannot create the control table: {e}")));
        }
    }
    check_ours(&mut conn).await?;
    Ok(conn)
}

async fn check_ours(conn: &mut ServerConn) -> Result<(), FleetError> {
    let row = conn.query_row_params(NOT_OURS, &[]).await.map_err(store)?;
    match row.first().cloned().flatten().filter(|s| !s.is_empty()) {
        None => Ok(()),
        Some(found) => Err(FleetError::Config(format!(
            "the control table is not the store role's alone ({found}); those roles could change the fleet's \
             migration phase: give schema pgshift and its tables to the store's role (ALTER ... OWNER TO), \
             revoke the grants and memberships"
        ))),
    }
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

/// The table whose lock is fleet `fleet`'s change lock: one per fleet, since fleets may share a
/// store, named by a digest of the fleet's name (so always a plain identifier).
pub fn lock_table(fleet: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(fleet.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("pgshift.fleet_lock_{hex}")
}

/// Takes fleet `fleet`'s change lock, if no other instance holds it: a lock on its
/// [`lock_table`] (made on first use), held by an open transaction on `conn` (a connection of
/// the change's own) until the connection closes.
/// - Not an advisory lock: any client of the database could hold that one.
/// - A table lock in SHARE ROW EXCLUSIVE mode: taking it, or any mode that conflicts with it,
///   needs privileges on the table that only the store's role has (the ACCESS SHARE lock that
///   `pg_relation_size(oid)` takes without a privilege check does not conflict).
/// - Not a row lock: that would give the transaction an xid, and creating a logical replication
///   slot (which a change with logical sync does) waits for every transaction holding one.
pub async fn try_lock(conn: &mut ServerConn, fleet: &str) -> Result<bool, FleetError> {
    let table = lock_table(fleet);
    let make = format!("CREATE TABLE IF NOT EXISTS {table} ()");
    let take = format!(
        "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0; SET LOCAL lock_timeout = 0; \
         LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE NOWAIT"
    );
    for sql in [make, take] {
        match conn.run_internal_coded(&sql).await.map_err(store)? {
            None => {}
            // lock_not_available; or another instance creating the table at this moment
            Some((code, _)) if ["55P03", "23505", "42P07"].contains(&code.as_str()) => return Ok(false),
            Some((_, e)) => return Err(FleetError::Store(e)),
        }
    }
    Ok(true)
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
