//! Dual-write: each write transaction committed on the serving store is replayed on the other one,
//! whole and in commit order, by a single applier with one connection per (user, database).
//!
//! Capture happens in the session (the client's frames as sent, plus the statements they use);
//! the transaction is queued when its ReadyForQuery 'I' arrives, so queue order is the order in
//! which commits completed. The queue is bounded: a full queue holds the committing client
//! (back-pressure) for up to `mirror_timeout`, then the transaction is counted as diverged. In
//! `sync` mode the client's COMMIT is answered only once the other store has applied it.
//! A failure on the other store never fails the client: it is counted, logged, and marks the
//! migration diverged.

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::auth::UserEntry;
use crate::server::{LoginSpec, ServerConn};
use crate::session_state::{settings_diff, Settings, StmtDef};
use crate::shared::Shared;
use crate::wire::{frame, tag};

/// One captured transaction (or autocommit request), ready to replay.
pub struct CapturedTxn {
    /// Position in commit order.
    pub seq: u64,
    /// Replay on the target (dual_write, shift_reads) or back on the source (cutover).
    pub toward_target: bool,
    /// Who ran it.
    pub user: Arc<UserEntry>,
    /// Where.
    pub database: String,
    /// The client's settings when it began (search_path matters for replay).
    pub settings: Settings,
    /// Statements its frames use by proxy-wide name.
    pub defs: Vec<Arc<StmtDef>>,
    /// The client's frames as sent to the serving store.
    pub frames: BytesMut,
    /// ReadyForQuery replies the frames produce.
    pub boundaries: u32,
    /// ErrorResponses the serving store sent (replay should see as many).
    pub errors: u32,
    /// What its statements did on the serving store (replay should do the same).
    pub outcome: Outcome,
    /// The client, when its server keeps session state between its transactions (session mode,
    /// or pinned): they replay on a connection of their own, so that state (a search path set by
    /// `set_config`, a role, a temp table) follows them and reaches no other client's replay.
    pub session: Option<u64>,
    /// It may have left session state its recorded settings do not show (a SET, `set_config`):
    /// the shared replay connection is reset after it, as the client's server is.
    pub residue: bool,
    /// In sync mode: told once applied.
    pub ack: Option<oneshot::Sender<()>>,
}

/// What a transaction's statements did as its client saw it: a digest of the command tags of its
/// writes (`UPDATE 3`: row counts included) and of where its errors fell. The replay must show
/// the same: the same number of errors in other places, or a write that touched other rows, is a
/// divergence even when no side failed more often.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome(u64);

impl Outcome {
    /// A CommandComplete; reads (`SELECT n`, `FETCH n`, `MOVE n`) are left out, their row counts
    /// may differ by the replay's delay without any data differing.
    pub fn command_complete(&mut self, f: &[u8]) {
        let tag = frame::body(f);
        if ![&b"SELECT"[..], b"FETCH", b"MOVE"].iter().any(|p| tag.starts_with(p)) {
            self.mix(tag);
        }
    }

    /// An ErrorResponse, at this place among the commands.
    pub fn error(&mut self) {
        self.mix(b"\0error");
    }

    /// FNV-1a over what has been mixed in, in order.
    fn mix(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes.iter().chain(b"\n") {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// What a session collects while a transaction runs, before it knows whether it wrote.
#[derive(Default)]
pub struct Capture {
    /// Frames as sent.
    pub frames: BytesMut,
    /// The client's settings when its first frame was sent: the replay starts from them (a SET
    /// inside the transaction is among the frames; the session's settings after the commit
    /// already include it).
    pub settings: Settings,
    /// Statements used.
    pub defs: Vec<Arc<StmtDef>>,
    /// Query/Sync/FunctionCall count.
    pub boundaries: u32,
    /// ErrorResponses the serving store sent.
    pub errors: u32,
    /// What its statements did there.
    pub outcome: Outcome,
    /// Something in it may have changed data (only such transactions are replayed).
    pub wrote: bool,
    /// It may have left session state its recorded settings do not show.
    pub residue: bool,
}

impl Capture {
    /// Adds frames as sent; the first ones of a transaction take a copy of the settings in force.
    pub fn push_frames(&mut self, f: &[u8], settings: &Settings) {
        if self.frames.is_empty() {
            self.settings = settings.clone();
        }
        self.frames.extend_from_slice(f);
    }
}

/// What the applier does next, in queue (commit) order.
enum Job {
    /// Replays a committed transaction.
    Txn(Box<CapturedTxn>),
    /// A client whose transactions replayed on connections of their own left: close them.
    Forget(u64),
}

/// Counters and the queue.
#[derive(Default)]
pub struct Mirror {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    next_seq: AtomicU64,
    /// Highest sequence applied (or given up on) by the applier.
    pub applied_seq: AtomicU64,
    /// Transactions waiting.
    pub queued: AtomicU64,
    /// Transactions replayed with the same outcome.
    pub mirrored: AtomicU64,
    /// Transactions that could not be replayed (connection errors, queue full).
    pub failed: AtomicU64,
    /// Transactions whose replay differed (errors on one side only) or was lost.
    pub diverged: AtomicU64,
    /// True while the other store's connection works.
    pub connected: AtomicBool,
    /// Last replay problem, for the status endpoint.
    pub last_error: Mutex<Option<String>>,
}

/// A snapshot for the status endpoint.
#[derive(Debug, Serialize)]
pub struct MirrorStatus {
    /// Waiting transactions.
    pub queue_depth: u64,
    /// Replayed.
    pub mirrored: u64,
    /// Not replayable.
    pub failed: u64,
    /// Differed or lost.
    pub diverged: u64,
    /// The applier's connection works.
    pub other_store_connected: bool,
    /// Last replay problem.
    pub last_error: Option<String>,
}

impl Mirror {
    /// Takes the next position in commit order.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues a committed transaction, waiting up to `timeout` for room (back-pressure).
    pub async fn submit(&self, shared: &Arc<Shared>, txn: CapturedTxn, timeout: Duration) {
        let sender = {
            let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            if tx.is_none() {
                let cap = shared.runtime.load().config.migration.as_ref().map_or(10_000, |m| m.mirror_queue.max(1));
                let (s, r) = mpsc::channel(cap);
                tokio::spawn(apply_loop(shared.clone(), r));
                *tx = Some(s);
            }
            tx.clone()
        };
        let Some(sender) = sender else { return };
        let seq = txn.seq;
        self.queued.fetch_add(1, Ordering::Relaxed);
        if tokio::time::timeout(timeout, sender.send(Job::Txn(Box::new(txn)))).await.map_or(true, |r| r.is_err()) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.diverged.fetch_add(1, Ordering::Relaxed);
            self.note_error("mirror queue full: a committed transaction was not replayed");
            self.applied_seq.fetch_max(seq, Ordering::Relaxed);
        }
    }

    /// A client whose transactions replayed on connections of their own (`CapturedTxn::session`)
    /// left: once its queued transactions are replayed, those connections are closed.
    pub async fn forget(&self, client: u64, timeout: Duration) {
        let sender = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sender) = sender {
            if tokio::time::timeout(timeout, sender.send(Job::Forget(client))).await.map_or(true, |r| r.is_err()) {
                tracing::warn!(client, "mirror queue full: a replay connection of a client that left stays open");
            }
        }
    }

    /// Waits until every queued transaction has been applied (before flipping the write target).
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.queued.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// A write the serving store may have committed that cannot be replayed: counted as diverged.
    pub fn lost(&self, why: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.diverged.fetch_add(1, Ordering::Relaxed);
        self.note_error(why);
    }

    fn note_error(&self, e: &str) {
        tracing::warn!("dual-write: {e}");
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
    }

    /// For the status endpoint.
    pub fn status(&self) -> MirrorStatus {
        MirrorStatus {
            queue_depth: self.queued.load(Ordering::Relaxed),
            mirrored: self.mirrored.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            diverged: self.diverged.load(Ordering::Relaxed),
            other_store_connected: self.connected.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
        }
    }
}

/// A replay connection: toward the target, user, database, and the client for session-bound ones.
type ConnKey = (bool, String, String, Option<u64>);

/// The single applier: replays transactions one at a time, in queue order.
async fn apply_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let mut conns: HashMap<ConnKey, ServerConn> = HashMap::new();
    while let Some(job) = rx.recv().await {
        let mut txn = match job {
            Job::Txn(txn) => txn,
            Job::Forget(client) => {
                conns.retain(|k, _| k.3 != Some(client));
                continue;
            }
        };
        let m = &shared.migration.mirror;
        let key = (txn.toward_target, txn.user.name.clone(), txn.database.clone(), txn.session);
        let timeout =
            shared.runtime.load().config.migration.as_ref().map_or(Duration::from_secs(5), |c| c.mirror_timeout.0);
        let outcome = tokio::time::timeout(timeout, apply(&shared, &mut conns, &key, &txn)).await;
        match outcome {
            Ok(Ok((target_errors, did))) if target_errors == txn.errors && did == txn.outcome => {
                m.mirrored.fetch_add(1, Ordering::Relaxed);
                m.connected.store(true, Ordering::Relaxed);
            }
            Ok(Ok((target_errors, _))) => {
                m.mirrored.fetch_add(1, Ordering::Relaxed);
                m.diverged.fetch_add(1, Ordering::Relaxed);
                m.note_error(&if target_errors == txn.errors {
                    "replay failed in other places, or its writes touched other numbers of rows, than on the \
                     serving store"
                        .to_string()
                } else {
                    format!("replay saw {target_errors} errors where the serving store saw {}", txn.errors)
                });
            }
            Ok(Err(e)) => {
                conns.remove(&key);
                m.connected.store(false, Ordering::Relaxed);
                m.failed.fetch_add(1, Ordering::Relaxed);
                m.diverged.fetch_add(1, Ordering::Relaxed);
                m.note_error(&format!("replay failed: {e}"));
            }
            Err(_) => {
                conns.remove(&key);
                m.failed.fetch_add(1, Ordering::Relaxed);
                m.diverged.fetch_add(1, Ordering::Relaxed);
                m.note_error("replay timed out (mirror_timeout)");
            }
        }
        m.applied_seq.fetch_max(txn.seq, Ordering::Relaxed);
        m.queued.fetch_sub(1, Ordering::Relaxed);
        if let Some(ack) = txn.ack.take() {
            let _ = ack.send(());
        }
    }
}

/// Replays one transaction; returns how many ErrorResponses the other store sent, and what its
/// statements did there.
async fn apply(
    shared: &Shared,
    conns: &mut HashMap<ConnKey, ServerConn>,
    key: &ConnKey,
    txn: &CapturedTxn,
) -> Result<(u32, Outcome), String> {
    if !conns.contains_key(key) {
        let rt = shared.runtime.load_full();
        let backend = if txn.toward_target { rt.targets.first().cloned() } else { Some(rt.primary.clone()) };
        let backend = backend.ok_or("no target configured")?;
        let spec = LoginSpec {
            address: backend.address.clone(),
            backend_name: backend.name.clone(),
            user: txn.user.clone(),
            database: txn.database.clone(),
            connect_timeout: rt.config.proxy.server_connect_timeout.0,
            tls: rt.server_tls.clone(),
        };
        let conn = ServerConn::connect(&spec, 0, rt.config.proxy.max_prepared_statements.max(1))
            .await
            .map_err(|e| e.to_string())?;
        conns.insert(key.clone(), conn);
    }
    let conn = conns.get_mut(key).ok_or("connection vanished")?;
    for sql in settings_diff(&conn.state.settings, &txn.settings) {
        // On an error the connection's settings are unknown: the caller drops it.
        if let Some(e) = conn.run_internal(&sql).await.map_err(|e| e.to_string())? {
            return Err(format!("replaying the client's settings failed: {e}"));
        }
    }
    conn.state.settings = txn.settings.clone();
    let mut out = BytesMut::with_capacity(txn.frames.len() + 256);
    let mut prepares = 0u32;
    for def in &txn.defs {
        if !conn.state.has_prepared(def.id) {
            if let Some(evicted) = conn.state.add_prepared(def) {
                out.extend_from_slice(&crate::session_state::close_statement_frame(evicted));
            }
            out.extend_from_slice(&def.parse_frame);
            prepares += 1;
        }
    }
    if prepares > 0 {
        out.put_u8(tag::SYNC);
        out.put_u32(4);
    }
    out.extend_from_slice(&txn.frames);
    use tokio::io::AsyncWriteExt;
    conn.stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let expected = txn.boundaries + u32::from(prepares > 0);
    let (mut seen, mut errors, mut status) = (0, 0u32, crate::wire::TxStatus::Idle);
    let mut did = Outcome::default();
    while seen < expected {
        let f = conn.read_frame().await.map_err(|e| e.to_string())?;
        match f[0] {
            tag::READY_FOR_QUERY => {
                seen += 1;
                status = frame::ready_status(&f).map_err(|e| crate::wire::WireError::from(e).to_string())?;
            }
            tag::COMMAND_COMPLETE => did.command_complete(&f),
            tag::ERROR_RESPONSE => {
                errors += 1;
                did.error();
                let e = frame::error_fields(&f);
                tracing::debug!(
                    "dual-write replay error {}: {}",
                    String::from_utf8_lossy(e.code),
                    String::from_utf8_lossy(e.message)
                );
            }
            _ => {}
        }
    }
    if !status.is_idle() {
        conn.run_internal("ROLLBACK").await.map_err(|e| e.to_string())?;
    }
    if txn.residue && txn.session.is_none() {
        // As the client's own server would be before another client's query: nothing this
        // transaction left behind reaches the next client's replay.
        if let Some(e) = conn.run_internal("RESET ALL").await.map_err(|e| e.to_string())? {
            return Err(format!("resetting the replay connection failed: {e}"));
        }
        conn.state.settings.clear();
    }
    Ok((errors, did))
}
