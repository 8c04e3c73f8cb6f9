//! Hands the write transactions a client committed during dual-write to the mirror, in commit
//! order; in sync mode the client's answer waits until the other store has applied them.

use super::session::Session;
use crate::config::MirrorMode;
use crate::migration::mirror::CapturedTxn;

impl Session {
    /// Queues what the attached transaction committed (if anything) for replay.
    pub(super) async fn mirror_committed(&mut self) {
        let Some(att) = self.attached.as_mut() else { return };
        if att.committed.is_empty() {
            return;
        }
        let committed = std::mem::take(&mut att.committed);
        // The transaction lasts until its copy is acknowledged: its end is read after the wait.
        att.answered_at = None;
        let toward_target = att.mirror_to_target;
        let Some(cfg) = self.rt.config.migration.as_ref() else { return };
        let (mode, timeout) = (cfg.mirror_mode, cfg.mirror_timeout.0);
        let mirror = &self.shared.migration.mirror;
        for c in committed {
            let seq = mirror.next_seq();
            self.state.writes_mut().last_mirror_seq = seq;
            let (ack, done) = match mode {
                MirrorMode::Sync => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    (Some(tx), Some(rx))
                }
                MirrorMode::Async => (None, None),
            };
            let txn = CapturedTxn {
                seq,
                toward_target,
                user: self.pools.db.forced_user.clone().unwrap_or_else(|| self.user.clone()),
                database: self.pools.db.server_db.clone(),
                settings: c.settings,
                defs: c.defs,
                frames: c.frames,
                boundaries: c.boundaries,
                errors: c.errors,
                outcome: c.outcome,
                session: self.keeps_session_state().then_some(self.handle.id),
                residue: c.residue,
                ack,
            };
            mirror.submit(&self.shared, txn, timeout).await;
            if let Some(done) = done {
                // sync: the COMMIT's answer is still in our output buffer; it goes out only once
                // the other store has the transaction too (or the replay gave up).
                // A replay that gives up is counted by the applier itself.
                let _ = tokio::time::timeout(timeout, done).await;
            }
        }
    }

    /// True when this client's server keeps session state between its transactions (session
    /// mode, or pinned): its replays need a connection of their own too.
    pub(super) fn keeps_session_state(&self) -> bool {
        self.state.pinned || self.pools.mode == crate::config::PoolMode::Session
    }

    /// When it leaves: its own replay connections are closed after its last replay.
    pub(super) async fn forget_replays(&self) {
        if self.keeps_session_state() {
            if let Some(cfg) = self.rt.config.migration.as_ref() {
                self.shared.migration.mirror.forget(self.handle.id, cfg.mirror_timeout.0).await;
            }
        }
    }
}
