//! The statements logical sync runs on the servers: publications, subscriptions, sequences, and
//! the wait for a subscriber to apply everything its publisher has written. Each is safe to run
//! again (an existing publication or subscription is kept, a missing one is not an error to drop).

use std::time::Duration;

use super::{literal, Direction, LogicalError, Store, PUBLICATION};
use crate::pool::cluster::parse_lsn;
use crate::server::ServerConn;

/// An admin connection with what it is for, so errors name the server and database.
pub struct Admin {
    /// The connection.
    pub conn: ServerConn,
    /// Which server.
    pub store: Store,
    /// Which database.
    pub database: String,
}

impl Admin {
    /// Runs `sql`; a refusal becomes an error naming `what`.
    pub async fn run(&mut self, what: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, LogicalError> {
        self.conn.query_rows(sql).await.map_err(|e| self.refused(what, e))
    }

    /// Runs `sql` with text parameters and returns its first column of the first row.
    pub async fn value(&mut self, what: &str, sql: &str, params: &[&str]) -> Result<Option<String>, LogicalError> {
        let row = self.conn.query_row_params(sql, params).await.map_err(|e| self.refused(what, e))?;
        Ok(row.into_iter().next().flatten())
    }

    fn refused(&self, what: &str, e: crate::server::ServerError) -> LogicalError {
        LogicalError::Sql {
            store: self.store.name(),
            database: self.database.clone(),
            what: what.into(),
            message: e.to_string(),
        }
    }

    /// `wal_level` of this server.
    pub async fn wal_level(&mut self) -> Result<String, LogicalError> {
        Ok(self.value("SHOW wal_level", "SELECT current_setting('wal_level')", &[]).await?.unwrap_or_default())
    }

    /// Creates the publication for `tables`, or sets its tables when it exists.
    pub async fn publish(&mut self, tables: &[String]) -> Result<(), LogicalError> {
        let exists =
            self.value("reading pg_publication", "SELECT 1 FROM pg_publication WHERE pubname = $1", &[PUBLICATION]);
        let exists = exists.await?.is_some();
        let list = tables.join(", ");
        let sql = match (exists, tables.is_empty()) {
            (false, true) => format!("CREATE PUBLICATION {PUBLICATION}"),
            (false, false) => format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {list}"),
            (true, true) => return Ok(()),
            (true, false) => format!("ALTER PUBLICATION {PUBLICATION} SET TABLE {list}"),
        };
        self.run("CREATE PUBLICATION", &sql).await.map(drop)
    }

    /// Drops the publication, if there is one.
    pub async fn unpublish(&mut self) -> Result<(), LogicalError> {
        self.run("DROP PUBLICATION", &format!("DROP PUBLICATION IF EXISTS {PUBLICATION}")).await.map(drop)
    }

    /// Whether this database has the subscription of `direction`.
    pub async fn subscribed(&mut self, direction: Direction) -> Result<bool, LogicalError> {
        let name = direction.subscription(&self.database);
        let sql = "SELECT 1 FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
                   WHERE s.subname = $1 AND d.datname = current_database()";
        Ok(self.value("reading pg_subscription", sql, &[&name]).await?.is_some())
    }

    /// Subscribes to `publisher` (reached by the subscription at `conninfo`); `copy` copies every
    /// table first (the initial copy), otherwise only changes from now on flow. An existing
    /// subscription is kept.
    ///
    /// The slot is made first, on the publisher through `publisher`, and the subscription then
    /// told to use it. Letting CREATE SUBSCRIPTION make it would hold a transaction with an xid
    /// on this server while the publisher's slot waits for every transaction with an xid there
    /// to end: two migrations turning opposite ways between the same servers (or any long
    /// transaction pinned behind one) would wait on each other for ever.
    pub async fn subscribe(
        &mut self,
        direction: Direction,
        conninfo: &str,
        copy: bool,
        publisher: &mut Admin,
    ) -> Result<(), LogicalError> {
        if self.subscribed(direction).await? {
            return Ok(());
        }
        let name = direction.subscription(&self.database);
        // One left from an earlier subscription is not reused (its position is an old one):
        // making it fails, naming it.
        let make = "SELECT pg_create_logical_replication_slot($1, 'pgoutput')::text";
        publisher.value("creating the replication slot", make, &[&name]).await?;
        let sql = format!(
            "CREATE SUBSCRIPTION {name} CONNECTION {} PUBLICATION {PUBLICATION} \
             WITH (copy_data = {copy}, slot_name = {}, create_slot = false)",
            literal(conninfo),
            literal(&name)
        );
        let result = self.run("CREATE SUBSCRIPTION", &sql).await.map(drop);
        if result.is_err() {
            // A slot nobody reads keeps WAL on the publisher for ever: it goes with the failure.
            let _ = publisher.value("dropping the slot", "SELECT pg_drop_replication_slot($1)::text", &[&name]).await;
        }
        result
    }

    /// Drops the subscription of `direction` and its slot on the publisher. When the publisher
    /// cannot be reached the subscription is dropped anyway and the slot left named in the error.
    pub async fn unsubscribe(&mut self, direction: Direction) -> Result<(), LogicalError> {
        if !self.subscribed(direction).await? {
            return Ok(());
        }
        let name = direction.subscription(&self.database);
        let Err(first) = self.run("DROP SUBSCRIPTION", &format!("DROP SUBSCRIPTION {name}")).await else {
            return Ok(());
        };
        self.run("ALTER SUBSCRIPTION", &format!("ALTER SUBSCRIPTION {name} DISABLE")).await?;
        self.run("ALTER SUBSCRIPTION", &format!("ALTER SUBSCRIPTION {name} SET (slot_name = NONE)")).await?;
        self.run("DROP SUBSCRIPTION", &format!("DROP SUBSCRIPTION {name}")).await?;
        tracing::warn!(
            subscription = %name,
            "dropped a subscription whose publisher could not be reached: drop the replication slot {name} on the {} ({first})",
            direction.publisher().name()
        );
        Ok(())
    }

    /// (tables in the subscription, tables whose initial copy is complete).
    pub async fn copy_progress(&mut self, direction: Direction) -> Result<(u32, u32), LogicalError> {
        let sql = "SELECT count(*)::text || ' ' || (count(*) FILTER (WHERE r.srsubstate = 'r'))::text \
                   FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1";
        let name = direction.subscription(&self.database);
        let text = self.value("reading pg_subscription_rel", sql, &[&name]).await?.unwrap_or_default();
        let mut it = text.split(' ').map(|n| n.parse().unwrap_or(0));
        Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
    }

    /// Publisher side: (WAL insert position, position the subscriber of `direction` has applied).
    pub async fn positions(&mut self, direction: Direction) -> Result<(u64, Option<u64>), LogicalError> {
        let sql = "SELECT pg_current_wal_insert_lsn()::text, \
                   (SELECT replay_lsn::text FROM pg_stat_replication WHERE application_name = $1 LIMIT 1)";
        let name = direction.subscription(&self.database);
        let row = self.conn.query_row_params(sql, &[&name]).await.map_err(|e| self.refused("reading positions", e))?;
        let lsn = |i: usize| row.get(i).cloned().flatten().as_deref().and_then(parse_lsn);
        Ok((lsn(0).unwrap_or(0), lsn(1)))
    }

    /// Publisher side: waits until the subscriber of `direction` has applied everything written
    /// here so far. `Err(Ok(behind))`: not within `timeout`, `behind` bytes still to apply.
    pub async fn wait_applied(
        &mut self,
        direction: Direction,
        timeout: Duration,
    ) -> Result<Result<(), u64>, LogicalError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (goal, _) = self.positions(direction).await?;
        loop {
            let (_, applied) = self.positions(direction).await?;
            let behind = applied.map_or(u64::MAX, |a| goal.saturating_sub(a));
            if behind == 0 {
                return Ok(Ok(()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Err(behind));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every sequence's position, to set on the other server.
    pub async fn sequences(&mut self) -> Result<Vec<[String; 4]>, LogicalError> {
        let sql =
            "SELECT schemaname, sequencename, coalesce(last_value, start_value)::text, (last_value IS NOT NULL)::text \
                   FROM pg_sequences ORDER BY 1, 2";
        let rows = self.run("reading sequences", sql).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut it = r.into_iter().map(Option::unwrap_or_default);
                std::array::from_fn(|_| it.next().unwrap_or_default())
            })
            .collect())
    }

    /// Sets sequences as read from the other server (logical replication does not carry them).
    pub async fn set_sequences(&mut self, seqs: &[[String; 4]]) -> Result<(), LogicalError> {
        let sql = "SELECT setval(format('%I.%I', $1::text, $2::text)::regclass, $3::bigint, $4::bool)::text";
        for [schema, name, value, called] in seqs {
            self.value("setting a sequence", sql, &[schema, name, value, called]).await?;
        }
        Ok(())
    }
}
