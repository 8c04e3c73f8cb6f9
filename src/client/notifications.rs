//! Notifications for a client that LISTENs in transaction mode (fanned out by the shared
//! listener connection, see `crate::notify`): the sender pid a client can relate to, and its own
//! notifications before the ReadyForQuery of the transaction that sent them, as PostgreSQL does.

use std::time::Duration;

use super::session::Session;
use crate::notify;
use crate::wire::{tag, TxStatus};

/// How long a committing listener's ReadyForQuery waits for the listener connection's round
/// trip (a down primary must not hold the client's answer).
const BARRIER_WAIT: Duration = Duration::from_secs(1);

/// The ReadyForQuery 'I' frame.
const READY_IDLE: [u8; 6] = [tag::READY_FOR_QUERY, 0, 0, 0, 5, TxStatus::Idle.byte()];

impl Session {
    /// Queues a NotificationResponse for the client. When the notifier was a pgshift client, its
    /// pid (from its BackendKeyData) replaces the server backend's, which means nothing to anyone.
    pub(super) fn push_notification(&mut self, f: &[u8]) {
        match notify::sender_pid(f).and_then(|pid| self.shared.sessions.holder(pid)) {
            Some(client_pid) => self.cout.extend_from_slice(&notify::with_pid(f, client_pid)),
            None => self.cout.extend_from_slice(f),
        }
    }

    /// After a transaction of a listening client: hold its ReadyForQuery until the listener
    /// connection has passed on everything committed so far, so a NOTIFY on a channel the client
    /// listens to reaches it before the answer to its COMMIT (or autocommit statement).
    pub(super) async fn own_notifications_first(&mut self) {
        if !self.state.tx_status.is_idle() || !self.cout.ends_with(&READY_IDLE) || !self.cin.is_empty() {
            return;
        }
        let barriers = self.shared.notify.barrier(self.handle.id);
        if barriers.is_empty() {
            return;
        }
        let ready = self.cout.split_off(self.cout.len() - READY_IDLE.len());
        let all = async {
            for b in barriers {
                let _ = b.await;
            }
        };
        let _ = tokio::time::timeout(BARRIER_WAIT, all).await;
        while let Some(f) = self.notify_rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.push_notification(&f);
        }
        self.cout.extend_from_slice(&ready);
    }
}
