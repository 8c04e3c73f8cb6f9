//! The phase changes of logical sync: start (schema check, publication, subscription with the
//! initial copy), the write-target flip under the fence (wait until applied, sequences, turn the
//! replication around), and the teardown at `done` or `off`.

use std::time::Duration;

use super::schema::{differences, non_empty, Schema};
use super::setup::Admin;
use super::{connect, conninfo, Direction, Logical, Store};
use crate::migration::MigrationError;
use crate::shared::Runtime;

async fn open(rt: &Runtime, store: Store, database: &str) -> Result<Admin, MigrationError> {
    let conn = connect(rt, store, database).await?;
    Ok(Admin { conn, store, database: database.into() })
}

fn conninfo_of(rt: &Runtime, store: Store, database: &str) -> Result<String, MigrationError> {
    conninfo(rt, store, database).ok_or_else(|| {
        MigrationError::NotReady("logical sync needs [migration] admin_user with a plaintext password".into())
    })
}

/// Every reason logical sync cannot start in `databases`; empty when it can.
pub async fn check(rt: &Runtime, databases: &[String]) -> Result<Vec<String>, MigrationError> {
    let mut problems = Vec::new();
    if databases.is_empty() {
        problems.push("no database to move: name them in [migration] databases".into());
    }
    for db in databases {
        let mut src = open(rt, Store::Source, db).await?;
        let mut dst = open(rt, Store::Target, db).await?;
        for (admin, why) in [(&mut src, "the source publishes"), (&mut dst, "the target publishes back after cutover")]
        {
            let level = admin.wal_level().await?;
            if level != "logical" {
                problems.push(format!(
                    "database {db}: the {} has wal_level = {level}; {why}, which needs wal_level = logical (a restart)",
                    admin.store.name()
                ));
            }
        }
        let mine = Schema::read(&mut src.conn, Store::Source, db).await?;
        let theirs = Schema::read(&mut dst.conn, Store::Target, db).await?;
        problems.extend(differences(&mine, &theirs).into_iter().map(|d| format!("database {db}: {d}")));
        if !dst.subscribed(Direction::Forward).await? {
            let full = non_empty(&mut dst.conn, &mine, db).await?;
            problems.extend(full.into_iter().map(|d| format!("database {db}: {d}")));
        }
    }
    Ok(problems)
}

/// off -> dual_write: checks, then publishes on the source and subscribes on the target with the
/// initial copy. Running it again keeps what exists.
pub async fn start(rt: &Runtime, logical: &Logical, databases: &[String]) -> Result<(), MigrationError> {
    let problems = check(rt, databases).await?;
    if !problems.is_empty() {
        return Err(MigrationError::Refused(problems));
    }
    for db in databases {
        let mut src = open(rt, Store::Source, db).await?;
        let mut dst = open(rt, Store::Target, db).await?;
        let tables = Schema::read(&mut src.conn, Store::Source, db).await?.qualified_tables();
        src.publish(&tables).await?;
        dst.subscribe(Direction::Forward, &conninfo_of(rt, Store::Source, db)?, true, &mut src).await?;
        logical.entry(db).set_direction(Some(Direction::Forward));
        tracing::info!(database = %db, tables = tables.len(), "logical sync started: the target copies the source, then follows it");
    }
    Ok(())
}

/// Refuses while an initial copy is still running (reads and writes must not move to a target
/// that has part of the data).
pub async fn copy_complete(rt: &Runtime, databases: &[String]) -> Result<(), MigrationError> {
    for db in databases {
        let mut dst = open(rt, Store::Target, db).await?;
        let (total, ready) = dst.copy_progress(Direction::Forward).await?;
        if ready < total {
            return Err(MigrationError::NotReady(format!(
                "the initial copy is still running in database {db}: {ready} of {total} tables copied"
            )));
        }
    }
    Ok(())
}

/// Under the fence (no transaction running): waits until the subscriber of `from` has applied
/// everything, brings sequences over, and turns replication around. On a failure after the wait
/// the old direction is put back, so the caller can release the fence where it was.
pub async fn flip(
    rt: &Runtime,
    logical: &Logical,
    databases: &[String],
    from: Direction,
    timeout: Duration,
) -> Result<(), MigrationError> {
    for db in databases {
        let mut publisher = open(rt, from.publisher(), db).await?;
        if let Err(behind) = publisher.wait_applied(from, timeout).await? {
            return Err(MigrationError::CatchupTimeout {
                database: db.clone(),
                behind,
                secs: timeout.as_secs_f64(),
                serving: from.publisher().name(),
                other: from.subscriber().name(),
            });
        }
    }
    let to = match from {
        Direction::Forward => Direction::Reverse,
        Direction::Reverse => Direction::Forward,
    };
    let mut done = Vec::new();
    for db in databases {
        if let Err(e) = turn(rt, db, from, to).await {
            for db in databases.iter().filter(|d| done.contains(d) || *d == db) {
                put_back(rt, db, from, to).await;
            }
            return Err(e);
        }
        logical.entry(db).set_direction(Some(to));
        done.push(db);
    }
    Ok(())
}

async fn turn(rt: &Runtime, db: &str, from: Direction, to: Direction) -> Result<(), MigrationError> {
    let mut old_publisher = open(rt, from.publisher(), db).await?;
    let mut new_publisher = open(rt, to.publisher(), db).await?;
    let sequences = old_publisher.sequences().await?;
    new_publisher.set_sequences(&sequences).await?;
    new_publisher.unsubscribe(from).await?;
    let tables = Schema::read(&mut new_publisher.conn, to.publisher(), db).await?.qualified_tables();
    new_publisher.publish(&tables).await?;
    old_publisher.subscribe(to, &conninfo_of(rt, to.publisher(), db)?, false, &mut new_publisher).await?;
    tracing::info!(database = %db, from = from.publisher().name(), to = to.publisher().name(), "logical sync turned around");
    Ok(())
}

/// Best effort after a failed turn: the new direction removed, the old one subscribed again
/// (no copy: nothing was written meanwhile, the fence holds).
async fn put_back(rt: &Runtime, db: &str, from: Direction, to: Direction) {
    let result = async {
        let mut old_publisher = open(rt, from.publisher(), db).await?;
        old_publisher.unsubscribe(to).await?;
        let mut subscriber = open(rt, from.subscriber(), db).await?;
        let conninfo = conninfo_of(rt, from.publisher(), db)?;
        subscriber.subscribe(from, &conninfo, false, &mut old_publisher).await.map_err(MigrationError::from)
    }
    .await;
    if let Err(e) = result {
        tracing::error!(database = %db, error = %e, "could not restore logical sync after a failed flip: check the subscriptions by hand");
    }
}

/// cutover -> done: waits until the source has applied the target's last writes and brings the
/// sequences back, so the source left behind is an exact copy too; then removes everything.
pub async fn finish(
    rt: &Runtime,
    logical: &Logical,
    databases: &[String],
    timeout: Duration,
) -> Result<(), MigrationError> {
    for db in databases {
        let mut target = open(rt, Store::Target, db).await?;
        if let Err(behind) = target.wait_applied(Direction::Reverse, timeout).await? {
            return Err(MigrationError::CatchupTimeout {
                database: db.clone(),
                behind,
                secs: timeout.as_secs_f64(),
                serving: "target",
                other: "source",
            });
        }
        let sequences = target.sequences().await?;
        open(rt, Store::Source, db).await?.set_sequences(&sequences).await?;
    }
    teardown(rt, logical, databases).await
}

/// done or off: drops the subscriptions and publications pgshift created on both servers.
pub async fn teardown(rt: &Runtime, logical: &Logical, databases: &[String]) -> Result<(), MigrationError> {
    for db in databases {
        let mut src = open(rt, Store::Source, db).await?;
        let mut dst = open(rt, Store::Target, db).await?;
        src.unsubscribe(Direction::Reverse).await?;
        dst.unsubscribe(Direction::Forward).await?;
        src.unpublish().await?;
        dst.unpublish().await?;
        logical.entry(db).set_direction(None);
        tracing::info!(database = %db, "logical sync removed from both servers");
    }
    Ok(())
}
