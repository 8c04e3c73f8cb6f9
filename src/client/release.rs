//! Giving the server back: at a transaction boundary (stats, read-your-writes, check-in before
//! the client's last flush), and when the client leaves (roll back or reset, else close).

use std::time::Duration;
use tokio::io::AsyncWriteExt;

use super::session::{End, Session};
use super::state::Attached;
use crate::config::PoolMode;
use crate::shared::Runtime;

impl Session {
    /// Gives the server back at a transaction boundary.
    pub(super) fn release(&mut self) {
        let Some(mut att) = self.attached.take() else { return };
        att.recycle();
        if att.target == crate::router::Target::Primary && att.wrote {
            let w = self.state.writes_mut();
            w.last_write_at = crate::pool::cluster::mono_ms();
            w.ryw_lsn = 0;
            w.target_ryw = crate::client::state::TargetRyw::WroteAt(w.last_write_at);
        }
        let now = att.answered_at.unwrap_or_else(std::time::Instant::now);
        let elapsed = now.saturating_duration_since(att.since);
        self.shared.stats.record_xact(elapsed);
        // the autopilot compares the two stores' reads (a source read may run on its primary)
        if !att.wrote && self.shared.migration.phase_of(&self.pools.db.server_db) == crate::migration::Phase::ShiftReads
        {
            let ramp = &self.shared.migration.ramp;
            let store = if crate::client::route::is_target(att.backend.role) { &ramp.target } else { &ramp.source };
            store.record(elapsed, att.errored);
        }
        let traffic = att.lease.pool().stats.traffic.local();
        traffic.xacts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        traffic.xact_us.fetch_add(elapsed.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        traffic.bytes_in.fetch_add(att.bytes_in, std::sync::atomic::Ordering::Relaxed);
        // The transaction's last bytes are still in `cout`: the server goes back before the flush.
        let unflushed = self.cout.len() as u64;
        traffic.bytes_out.fetch_add(att.bytes_out + unflushed, std::sync::atomic::Ordering::Relaxed);
        self.handle.xacts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handle.set_server(None);
        if self.rt.config.proxy.server_reset_query_always {
            att.lease.conn().taint(crate::server::Residue::Unknown);
        }
        let pool = att.lease.pool().clone();
        pool.checkin_at(att.lease, now);
    }

    /// Leaves the server clean (or closes it) and deregisters the client.
    pub(super) async fn finish(mut self, end: End) {
        if let End::Close(e) = &end {
            self.shared.stats.record_error(e.code.as_bytes());
            self.cout.extend_from_slice(&e.frame());
        }
        if !self.cout.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.client.write_all(&self.cout)).await;
            let _ = self.client.flush().await;
        }
        if self.attached.as_ref().is_some_and(|a| !a.committed.is_empty()) {
            Box::pin(self.mirror_committed()).await;
        }
        self.forget_replays().await;
        if self.attached.as_ref().is_some_and(|a| a.capture.as_ref().is_some_and(|c| c.wrote) && !a.queue.is_empty()) {
            // Its server is closed unread: the serving store may have committed the write (an
            // autocommit statement, a COMMIT) or not; either way nothing can be replayed.
            self.shared.migration.mirror.lost("a client left while its write was in flight: not replayed");
        }
        if let Some(mut att) = self.attached.take() {
            self.handle.set_server(None);
            if self.state.tx_effects.as_ref().is_some_and(|e| !e.is_empty()) {
                // A COMMIT AND CHAIN may already have made them permanent.
                att.lease.conn().taint(crate::server::Residue::Unknown);
            }
            cleanup_server(att, &self.rt, self.pools.mode, self.state.pinned).await;
        }
        self.shared.sessions.unregister(&self.handle);
        self.shared.notify.leave(self.handle.id);
        self.shared.stats.clients.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.client.shutdown().await;
        tracing::info!(client = self.handle.id, user = %self.user.name, "client disconnected");
    }
}

/// A server whose client left: back to the pool if it is idle and owes nothing — after ROLLBACK
/// if it was in a transaction, and after a full reset if the client had session state on it
/// (session mode, or a transaction-mode client pinned by SET ROLE, advisory locks, temp tables,
/// WITH HOLD cursors, SQL PREPARE, LISTEN...); otherwise closed.
async fn cleanup_server(mut att: Box<Attached>, rt: &Runtime, mode: PoolMode, pinned: bool) {
    let pool = att.lease.pool().clone();
    // An extended-protocol batch the client left without its Sync (after a Flush, or skipping
    // after an error) holds an implicit transaction the last ReadyForQuery does not show.
    let synced = att.batch_state == super::state::BatchState::Open;
    let clean =
        synced && att.queue.is_empty() && att.sout.is_empty() && att.s2c_passthrough == 0 && att.c2s_passthrough == 0;
    let lasting = att.lease.conn().residue == crate::server::Residue::Lasting;
    if !clean || att.lease.conn().broken || lasting {
        return; // dropping the lease closes the connection
    }
    let mut steps = Vec::new();
    if att.server_status.in_block() {
        steps.push("ROLLBACK".to_string());
    }
    let reset = &rt.config.proxy.server_reset_query;
    match (mode, pinned) {
        (PoolMode::Session, _) if !reset.is_empty() => steps.push(reset.clone()),
        // A pinned client may have left anything behind; DISCARD ALL undoes all of it
        // (role, settings, advisory locks, temp tables, cursors, prepared statements, LISTEN).
        (PoolMode::Transaction, true) => steps.push("DISCARD ALL".to_string()),
        _ => {}
    }
    for sql in steps {
        let conn = att.lease.conn();
        match tokio::time::timeout(Duration::from_secs(5), conn.run_internal(&sql)).await {
            Ok(Ok(None)) if !conn.broken => {
                if sql.eq_ignore_ascii_case("DISCARD ALL") {
                    conn.state.clear_prepared();
                    conn.state.settings.clear();
                }
            }
            _ => return,
        }
    }
    pool.checkin(att.lease);
}
