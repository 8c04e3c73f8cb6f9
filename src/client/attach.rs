//! Taking a server for a request: reload the runtime if it changed, wait out a pause, route and
//! lease (replicas that cannot be reached are banned and the read routed again), replay the
//! client's settings on the server; and putting a read back when its replica failed.

use bytes::BytesMut;
use std::sync::Arc;

use super::registry::{ClientState as Activity, Signals};
use super::request::Request;
use super::session::Session;
use super::state::Attached;
use crate::error::ClientError;
use crate::migration::Phase;
use crate::pool::{Backend, Lease};
use crate::router::Target;
use crate::session_state::settings_diff;
use crate::wire::messages;

impl Session {
    /// Takes a server for the request at the front of `cin`.
    pub(super) async fn attach(&mut self, req: Request) -> Result<(), ClientError> {
        self.follow_runtime()?;
        if *self.shared.paused.borrow() {
            Box::pin(self.wait_while_paused()).await?;
        }
        // One phase for the whole transaction: a switch happens between transactions.
        let phase = self.shared.migration.phase_of(&self.pools.db.server_db);
        let (lease, backend, target) = self.lease_through_failover(req, phase).await?;
        backend.health.routed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.read_retried = false;
        let mut att = Attached::new(lease, backend, target);
        if target == Target::Replica {
            att.replay = Some(BytesMut::from(&self.cin[..req.len]));
        }
        let statement_sync = self.shared.migration.sync_mode() == crate::migration::logical::SyncMode::Statement;
        if phase.mirrors() && statement_sync && target == Target::Primary && self.pools.target.is_some() {
            att.capture = Some(crate::migration::mirror::Capture::default());
            att.mirror_to_target = !phase.target_serves();
        }
        let conn = att.lease.conn();
        let diff = settings_diff(&conn.state.settings, &self.state.settings);
        // Before cancels can find the server: one must not land on the replay.
        conn.cancel.replaying.store(!diff.is_empty(), std::sync::atomic::Ordering::Release);
        self.handle.set_server(Some(conn.cancel.clone()));
        conn.holder.store(self.handle.key.0, std::sync::atomic::Ordering::Relaxed);
        if !conn.holder_listed {
            conn.holder_listed = true;
            self.shared.sessions.list_server(conn.cancel.key.0, &conn.holder);
        }
        if self.state.shadows_builtins() {
            conn.taint(crate::server::Residue::Unknown); // a "built-in" call may be the user's own
        }
        if !diff.is_empty() {
            conn.state.settings = self.state.settings.clone();
            if self.state.settings.contains_key("seed") {
                conn.taint(crate::server::Residue::Lasting); // no reset undoes a seeded random()
            }
        }
        for sql in diff {
            messages::put_query(&mut att.sout, &sql);
            att.queue.push(super::expect::Expect::SilentQuery);
        }
        self.attached = Some(att);
        Ok(())
    }

    /// Routes the request and leases a connection. A replica that cannot be connected to is
    /// banned and the request routed again (another replica, else the primary): reads fail over
    /// instead of failing.
    pub(super) async fn lease_for(
        &mut self,
        req: Request,
        phase: Phase,
    ) -> Result<(Lease, Arc<Backend>, Target), ClientError> {
        use crate::pool::PoolError;
        let ban = self.rt.config.routing.ban_time.0;
        let tries = self.pools.cluster().replicas.len() + self.rt.targets.len() + 1;
        for turn in 1..=tries {
            // The last turn reads from the primary: a replica the health probe unbanned meanwhile
            // must not use up the turns.
            let (backend, pool, target) = self.route(req.len, phase, turn < tries)?;
            self.handle.set_state(Activity::Waiting);
            // A CancelRequest for this client ends the wait (a stale one is lowered first).
            let signals = &self.handle.signals;
            signals.lower(Signals::CANCEL);
            let cancel = std::future::poll_fn(|cx| signals.poll(Signals::CANCEL, cx).map(drop));
            let result = pool.checkout(cancel).await;
            if let Ok(lease) = &result {
                self.shared.stats.record_wait(lease.waited);
            }
            self.handle.set_state(Activity::Active);
            match result {
                Ok(lease) => return Ok((lease, backend, target)),
                Err(PoolError::Server(e)) if target == Target::Replica && e.refuses_this_login() => {
                    pool.refuse_logins_for(ban);
                    tracing::info!(backend = %backend.name, "replica refused this role's login ({e}); its reads go elsewhere for ban_time");
                }
                Err(PoolError::Server(e)) if target == Target::Replica => {
                    backend.ban(ban, "connect failed");
                    tracing::info!(backend = %backend.name, "replica unavailable ({e}); routing the read elsewhere");
                }
                Err(e) => {
                    let mut ce = ClientError::from(&e);
                    if !matches!(e, PoolError::WaitTimeout(_)) {
                        ce.severity = "ERROR"; // the client may retry on this connection
                    }
                    return Err(ce);
                }
            }
        }
        Err(ClientError::error("08006", "server unavailable: no backend could be connected to"))
    }

    async fn wait_while_paused(&mut self) -> Result<(), ClientError> {
        let mut rx = self.shared.paused.subscribe();
        let wait = self.rt.config.proxy.query_wait_timeout.0;
        let resumed = tokio::time::timeout(wait, rx.wait_for(|p| !*p)).await.is_ok();
        if resumed {
            Ok(())
        } else {
            Err(ClientError::fatal("53300", "query_wait_timeout: pgshift is paused"))
        }
    }

    /// A replica failed before answering: put the request back, and route it again, to the
    /// primary. Reads are safe to repeat. The replica is not banned: one
    /// connection ending is no evidence about the node (a client can end its own backend with
    /// `pg_terminate_backend`), and a node that is down fails its probe and its next connect.
    pub(super) fn retry_elsewhere(&mut self) {
        let Some(mut att) = self.attached.take() else { return };
        self.handle.set_server(None);
        att.lease.conn().broken = true;
        tracing::info!(backend = %att.backend.name, client = self.handle.id, "replica failed a read; retrying it elsewhere");
        self.read_retried = true;
        if let Some(mut request) = att.replay.take() {
            request.extend_from_slice(&self.cin);
            self.cin = request;
        }
    }
}
