//! One backup run: which databases, and for each the dump from the chosen node, the check with
//! `pg_restore --list`, the rename into place and retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::watch;

use super::files::{self, PARTIAL};
use super::{node, tools, BackupError, Outcome, Report, RunGuard};
use crate::auth::UserEntry;
use crate::config::{file_safe_name, BackupConfig, ServerTlsMode};
use crate::pool::cluster::now_ms;
use crate::pool::Backend;
use crate::server::{LoginSpec, ServerConn};
use crate::shared::{Runtime, Shared};

/// Bound on listing a cluster's databases (when `databases` is not configured).
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Every database but the templates, and whether connections to it are allowed. One that does
/// not allow them (its owner can say so) cannot be dumped: it is reported failed, not left out.
const LIST_SQL: &str = "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate ORDER BY 1";

/// A listed database that cannot be backed up, and why.
type Refused = (String, String);

/// `POST /backup`: backs up `names` (or the configured databases) now and answers when done.
/// The run is a task of its own, so it finishes (and its files are consistent) even if the HTTP
/// client goes away; a request while another run holds the lock is refused with `Busy`.
pub async fn run_now(shared: &Arc<Shared>, names: Option<Vec<String>>) -> Result<Report, BackupError> {
    let rt = shared.runtime.load_full();
    if rt.config.backup.is_none() {
        return Err(BackupError::NotConfigured);
    }
    let names = names.filter(|n| !n.is_empty()); // `[]`: the configured ones
    for n in names.iter().flatten() {
        file_safe_name(n).map_err(|why| BackupError::BadName { name: n.clone(), why })?;
        if rt.databases.resolve(n).is_none() {
            return Err(BackupError::UnknownDatabase(n.clone()));
        }
    }
    let guard = shared.backup.try_begin().ok_or(BackupError::Busy)?;
    let task = tokio::spawn(run_all(shared.clone(), guard, names));
    task.await.map_err(|e| BackupError::Task(e.to_string()))?
}

/// Backs up each of `names` (or the configured databases) in turn, holding `guard` throughout.
pub async fn run_all(shared: Arc<Shared>, guard: RunGuard, names: Option<Vec<String>>) -> Result<Report, BackupError> {
    let started = Instant::now();
    let (names, refused) = match names {
        Some(mut n) => {
            let mut seen = std::collections::HashSet::new();
            n.retain(|x| seen.insert(x.clone()));
            (n, Vec::new())
        }
        None => default_names(&shared).await?,
    };
    let mut stop = shared.stop.subscribe();
    let mut databases: Vec<Outcome> = refused.into_iter().map(|(name, why)| refused_one(&shared, name, why)).collect();
    for name in names {
        databases.push(one(&shared, &name, &mut stop).await);
        if *stop.borrow() {
            break;
        }
    }
    drop(guard);
    let ok = databases.iter().all(|o| o.ok);
    Ok(Report { ok, duration_seconds: started.elapsed().as_secs_f64(), databases })
}

/// The configured `databases`; else every name listed in `[databases]` but `*`; else every
/// database of the cluster `*` (or, without `[databases]`, every name) reaches, as the chosen
/// node lists them, with those listed that cannot be backed up.
async fn default_names(shared: &Shared) -> Result<(Vec<String>, Vec<Refused>), BackupError> {
    let rt = shared.runtime.load_full();
    let cfg = rt.config.backup.as_ref().ok_or(BackupError::NotConfigured)?;
    if !cfg.databases.is_empty() {
        return Ok((cfg.databases.clone(), Vec::new()));
    }
    let mut listed: Vec<String> = rt.databases.listed().map(|d| d.name.clone()).collect();
    if !listed.is_empty() {
        listed.sort();
        return Ok((listed, Vec::new()));
    }
    let Some((_, cluster)) = rt.databases.any() else {
        return Err(BackupError::List("no database is configured".into()));
    };
    let b = node::choose(&rt, cluster, cfg.allow_primary).await.map_err(|e| BackupError::List(e.to_string()))?;
    let spec = LoginSpec {
        address: b.address.clone(),
        backend_name: b.name.clone(),
        user: rt.users.get(&cfg.user).ok_or_else(|| BackupError::User(cfg.user.clone()))?,
        database: rt.config.routing.health_check_database.clone(),
        connect_timeout: rt.config.proxy.server_connect_timeout.0,
        tls: rt.server_tls.clone(),
    };
    let list = async {
        let mut c = ServerConn::connect(&spec, 0, 0).await?;
        let rows = c.query_rows(LIST_SQL).await;
        c.close();
        rows
    };
    let rows = match tokio::time::timeout(LIST_TIMEOUT, list).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return Err(BackupError::List(format!("{}: {e}", b.name))),
        Err(_) => return Err(BackupError::List(format!("{} did not answer within {LIST_TIMEOUT:?}", b.name))),
    };
    let (mut names, mut refused) = (Vec::new(), Vec::new());
    for row in rows {
        let mut cols = row.into_iter();
        let (Some(Some(name)), allowed) = (cols.next(), cols.next().flatten()) else { continue };
        if allowed.as_deref() != Some("t") {
            let why = "it does not allow connections (ALLOW_CONNECTIONS false), so pg_dump cannot read it; \
                       allow them, or name the databases to back up in [backup] databases";
            refused.push((name, why.to_string()));
        } else if let Err(why) = file_safe_name(&name) {
            refused.push((name, format!("its name {why}; list it under another name in [databases]")));
        } else {
            names.push(name);
        }
    }
    Ok((names, refused))
}

/// The outcome of a listed database that cannot be backed up: failed, so the run, its metrics
/// and alerts say so (its owner can make it so; a skip would go unnoticed).
fn refused_one(shared: &Shared, name: String, why: String) -> Outcome {
    shared.backup.record_failure(&name);
    tracing::error!(database = %name.escape_debug(), "backup failed: {why}");
    Outcome {
        database: name,
        ok: false,
        file: None,
        size_bytes: None,
        node: None,
        address: None,
        duration_seconds: 0.0,
        error: Some(why),
        pruned: Vec::new(),
    }
}

/// A dump written, checked and in place.
struct Done {
    dir: PathBuf,
    file: String,
    path: PathBuf,
    size: u64,
}

/// Backs up one database and records the outcome (metrics, log, retention).
async fn one(shared: &Shared, name: &str, stop: &mut watch::Receiver<bool>) -> Outcome {
    let rt = shared.runtime.load_full();
    let t0 = Instant::now();
    let ts = now_ms();
    let mut chosen = None;
    let result = match rt.config.backup.as_ref() {
        Some(cfg) => dump(&rt, cfg, name, ts, &mut chosen, stop).await.map(|d| (d, cfg)),
        None => Err(BackupError::NotConfigured),
    };
    let secs = t0.elapsed().as_secs_f64();
    let mut out = Outcome {
        database: name.into(),
        ok: result.is_ok(),
        file: None,
        size_bytes: None,
        node: chosen.as_ref().map(|b| b.name.clone()),
        address: chosen.as_ref().map(|b| b.address.clone()),
        duration_seconds: secs,
        error: None,
        pruned: Vec::new(),
    };
    let node = out.node.clone().unwrap_or_else(|| "-".into());
    match result {
        Ok((d, cfg)) => {
            shared.backup.record_success(name, ts, secs, d.size);
            out.pruned = files::prune(&d.dir, name, &d.file, cfg, now_ms());
            tracing::info!(database = %name, %node, file = %d.path.display(), size = d.size, seconds = secs,
                pruned = out.pruned.len(), "backup done");
            out.file = Some(d.path.display().to_string());
            out.size_bytes = Some(d.size);
        }
        Err(e) => {
            shared.backup.record_failure(name);
            tracing::error!(database = %name, %node, "backup failed: {e}");
            out.error = Some(e.to_string());
        }
    }
    out
}

/// pg_dump into `<db>-<ts>.dump.partial`, `pg_restore --list` on it, then the rename; the
/// partial file is removed on any failure.
async fn dump(
    rt: &Runtime,
    cfg: &BackupConfig,
    name: &str,
    ts: u64,
    chosen: &mut Option<Arc<Backend>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Done, BackupError> {
    let route = rt.databases.resolve(name).ok_or_else(|| BackupError::UnknownDatabase(name.into()))?;
    let b = node::choose(rt, &route.cluster, cfg.allow_primary).await?;
    *chosen = Some(b.clone());
    let user = rt.users.get(&cfg.user).ok_or_else(|| BackupError::User(cfg.user.clone()))?;
    let dir = files::db_dir(&cfg.dir, name)?;
    let file = files::file_name(name, ts);
    let path = dir.join(&file);
    let partial = dir.join(format!("{file}{PARTIAL}"));
    files::reserve(&partial)?;
    let limit = cfg.timeout.0;
    let host = b.address.rsplit_once(':').map_or(b.address.as_str(), |(h, _)| h);
    let written = async {
        let dump = pg_dump(rt, cfg, &b, &route.server_db, &user, &partial)?;
        tools::run("pg_dump", dump, limit, stop, (host, &b.name)).await?;
        let exe = tools::pg_restore(cfg).ok_or(BackupError::Spawn { tool: "pg_restore", source: not_found() })?;
        let mut list = Command::new(exe);
        list.arg("--list").arg(&partial);
        clean_env(&mut list);
        tools::run("pg_restore", list, limit, stop, (host, &b.name)).await?;
        // fsync of a large dump can take seconds: off the runtime's threads.
        let (from, to) = (partial.clone(), path.clone());
        tokio::task::spawn_blocking(move || files::publish(&from, &to))
            .await
            .map_err(|e| files::io(&partial, "cannot publish", std::io::Error::other(e)))?
    };
    match written.await {
        Ok(size) => Ok(Done { dir, file, path, size }),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            // A directory this run created for nothing goes too (it only goes if empty).
            let _ = std::fs::remove_dir(&dir);
            Err(e)
        }
    }
}

fn not_found() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "not found on PATH nor in the PostgreSQL 15 directory")
}

/// Nothing of pgshift's own environment reaches the tools (a stray PGSERVICE or PGHOST could
/// send the dump elsewhere), only PATH and a fixed locale.
fn clean_env(c: &mut Command) {
    c.env_clear();
    if let Some(p) = std::env::var_os("PATH") {
        c.env("PATH", p);
    }
    c.env("LC_ALL", "C");
}

/// `pg_dump --format=custom` of `server_db` on `b`. Connection settings, the password included,
/// go through the environment: nothing secret is on a command line (visible in `ps`), and a
/// database name is never parsed as a connection string.
fn pg_dump(
    rt: &Runtime,
    cfg: &BackupConfig,
    b: &Backend,
    server_db: &str,
    user: &UserEntry,
    partial: &Path,
) -> Result<Command, BackupError> {
    let exe = tools::pg_dump(cfg).ok_or(BackupError::Spawn { tool: "pg_dump", source: not_found() })?;
    let (host, port) = b.address.rsplit_once(':').unwrap_or((b.address.as_str(), "5432"));
    let mut c = Command::new(exe);
    c.arg("--format=custom").arg("--no-password").arg("--file").arg(partial);
    if let Some(wait) = cfg.lock_wait_timeout.enabled() {
        // Milliseconds, as statement_timeout takes them: a lock a client holds fails this
        // backup soon (it is retried) instead of stalling it and every one queued behind it.
        c.arg(format!("--lock-wait-timeout={}", wait.as_millis().max(1)));
    }
    clean_env(&mut c);
    c.env("PGHOST", host)
        .env("PGPORT", port)
        .env("PGUSER", &user.name)
        .env("PGDATABASE", server_db)
        .env("PGAPPNAME", "pgshift-backup")
        .env("PGCONNECT_TIMEOUT", "10");
    let tls = &rt.config.tls;
    let mode = match tls.server_mode {
        ServerTlsMode::Disable => "disable",
        ServerTlsMode::Prefer => "prefer",
        ServerTlsMode::Require => "require",
        ServerTlsMode::VerifyCa => "verify-ca",
        ServerTlsMode::VerifyFull => "verify-full",
    };
    c.env("PGSSLMODE", mode);
    if matches!(tls.server_mode, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull) && !tls.server_ca.is_empty() {
        c.env("PGSSLROOTCERT", &tls.server_ca);
    }
    if let Some(pw) = &user.plaintext {
        c.env("PGPASSWORD", pw);
    }
    Ok(c)
}
