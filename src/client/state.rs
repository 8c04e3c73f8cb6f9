//! Per-client session state that outlives any one server connection, and the server attachment.

use bytes::BytesMut;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::expect::ExpectQueue;
use super::statements::NamedStatements;
use crate::pool::{Backend, Lease};
use crate::router::{Classification, SessionEffect, StatementKind, Target};
use crate::session_state::Settings;
use crate::wire::TxStatus;

/// A client's override of routing (`SET pgshift.route`, startup parameter `pgshift.route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteOverride {
    /// The classifier decides.
    #[default]
    Auto,
    /// Everything to the primary.
    Primary,
    /// Reads to replicas even when the classifier is unsure (the client vouches).
    Replica,
}

impl RouteOverride {
    /// Parses a setting value (quotes allowed).
    pub fn parse(v: &str) -> RouteOverride {
        match v.trim().trim_matches('\'').to_ascii_lowercase().as_str() {
            "primary" => RouteOverride::Primary,
            "replica" => RouteOverride::Replica,
            _ => RouteOverride::Auto,
        }
    }
}

/// What follows the client from server to server.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Settings from the startup packet (what RESET returns to).
    pub startup_settings: Settings,
    /// Settings the client holds now; replayed as a diff onto each server it lands on.
    pub settings: Settings,
    /// Named protocol-level statements: client name -> proxy-wide definition.
    pub statements: NamedStatements,
    /// Classification of the last unnamed Parse (its Bind/Execute follow it).
    pub unnamed: Option<Arc<Classification>>,
    /// Classification of the statement bound to the unnamed portal (what Execute runs).
    pub unnamed_portal: Option<Arc<Classification>>,
    /// The classification routing made of a lone simple query, for forwarding to reuse.
    pub routed_query: Option<Arc<Classification>>,
    /// The last Parse of the unnamed statement, to repeat on a server that has not seen it (it
    /// lives across requests, and requests can land on different servers).
    pub unnamed_parse: Option<Box<[u8]>>,
    /// Transaction status last sent to the client.
    pub tx_status: TxStatus,
    /// The client keeps its server for the session (why is counted in the stats when it is
    /// pinned; a flag, not the reason, since every idle client's task holds this).
    pub pinned: bool,
    /// Routing override.
    pub route: RouteOverride,
    /// Effects of statements inside the open transaction, applied when it commits; allocated by
    /// the first (most transactions have none, and every idle client's task holds this).
    pub tx_effects: Option<Box<Vec<SessionEffect>>>,
    /// True in transaction mode with statement tracking on: named statements are renamed.
    pub track_prepared: bool,
    /// What the client last wrote, for reading its own writes back; allocated with its first
    /// write, so a client that only reads (or only idles) carries a pointer (see [`Self::writes`]).
    pub writes: Option<Box<WriteMarks>>,
}

/// Where a client's last write went, so that its next reads see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteMarks {
    /// When (monotonic ms) the client's last write transaction ended; 0 = none pending.
    pub last_write_at: u64,
    /// The primary WAL position covering that write, once a probe has sampled it; 0 = not yet.
    pub ryw_lsn: u64,
    /// Mirror sequence of the client's last replayed write (shift_reads reads the target only
    /// once the target has applied it).
    pub last_mirror_seq: u64,
    /// Logical sync: the client's last write the target must have applied before this session
    /// reads from it (shift_reads).
    pub target_ryw: TargetRyw,
}

impl ClientState {
    /// Whether the client's search path lets a user's function take a built-in's name (see
    /// [`crate::router::search_path_shadows`]).
    pub fn shadows_builtins(&self) -> bool {
        self.settings.get("search_path").is_some_and(|v| crate::router::search_path_shadows(v))
    }

    /// The client's write marks (all clear if it never wrote).
    pub fn writes(&self) -> WriteMarks {
        self.writes.as_deref().copied().unwrap_or_default()
    }

    /// The client's write marks, to change them.
    pub fn writes_mut(&mut self) -> &mut WriteMarks {
        self.writes.get_or_insert_default()
    }

    /// Applies one committed effect to the client's settings.
    pub fn apply(&mut self, e: &SessionEffect) {
        match e {
            SessionEffect::Set { name, value } if name == "pgshift.route" => self.route = RouteOverride::parse(value),
            SessionEffect::Set { name, value } if value.eq_ignore_ascii_case("default") => self.reset(name),
            SessionEffect::Set { name, value } => {
                self.settings.insert(name.clone(), value.clone());
            }
            SessionEffect::Reset { name } => self.reset(name),
            SessionEffect::ResetAll => self.settings = self.startup_settings.clone(),
            SessionEffect::DiscardAll => {
                self.settings = self.startup_settings.clone();
                self.statements.clear();
                self.route = RouteOverride::Auto;
            }
            SessionEffect::Deallocate { name: None } => self.statements.clear(),
            _ => {}
        }
    }

    fn reset(&mut self, name: &str) {
        if name == "pgshift.route" {
            self.route = RouteOverride::Auto;
        } else if let Some(v) = self.startup_settings.get(name) {
            self.settings.insert(name.to_string(), v.clone());
        } else {
            self.settings.remove(name);
        }
    }
}

/// Applies one committed effect to what a server connection holds (`pgshift.route` too: the
/// server took the SET as a setting of its own, which the next client must not read).
pub fn apply_to_server(settings: &mut Settings, e: &SessionEffect) {
    match e {
        SessionEffect::Set { name, value } if value.eq_ignore_ascii_case("default") => {
            settings.remove(name);
        }
        SessionEffect::Set { name, value } => {
            settings.insert(name.clone(), value.clone());
        }
        SessionEffect::Reset { name } => {
            settings.remove(name);
        }
        SessionEffect::ResetAll | SessionEffect::DiscardAll => settings.clear(),
        _ => {}
    }
}

/// A server connection while a client holds it.
pub struct Attached {
    /// The leased connection.
    pub lease: Lease,
    /// Which backend it is on.
    pub backend: Arc<Backend>,
    /// Primary or replica.
    pub target: Target,
    /// Replies owed to the client.
    pub queue: ExpectQueue,
    /// Bytes waiting to be written to the server.
    pub sout: BytesMut,
    /// Transaction status in the server's last ReadyForQuery.
    pub server_status: TxStatus,
    /// When the transaction started (attach time).
    pub since: Instant,
    /// When the oldest unanswered request was sent.
    pub req_started: Option<Instant>,
    /// When the last request was answered, if nothing was sent since: the end of the
    /// transaction when it is given back, without another clock read.
    pub answered_at: Option<Instant>,
    /// Kind of the current request's first statement (latency label).
    pub kind: StatementKind,
    /// Effects of client requests in flight, one entry per client Query/Sync, oldest first.
    pub effects: VecDeque<Vec<SessionEffect>>,
    /// Effects of Executes since the last Sync.
    pub batch_effects: Vec<SessionEffect>,
    /// An ErrorResponse arrived for the request being answered.
    pub req_errored: bool,
    /// An ErrorResponse arrived at any time during this attachment.
    pub errored: bool,
    /// A CommandComplete "ROLLBACK" arrived for the request being answered.
    pub saw_rollback: bool,
    /// Bytes of a large server frame still to stream through unbuffered.
    pub s2c_passthrough: usize,
    /// Bytes of a large client frame still to stream through unbuffered.
    pub c2s_passthrough: usize,
    /// Whether the attachment still serves, or is over and how.
    pub outcome: Outcome,
    /// The transaction wrote (for read-your-writes: capture the commit LSN).
    pub wrote: bool,
    /// The server owes a TLS flush.
    pub sflush: bool,
    /// An extended-protocol COPY FROM STDIN is under way: the server ignores Sync until it ends.
    /// Not part of `batch_state`: an error during the COPY makes the batch skip while this
    /// stays set (the CopyDone that would clear it is skipped too).
    pub copy_in: bool,
    /// Bytes written to the server during this attachment.
    pub bytes_in: u64,
    /// Bytes written to the client during this attachment.
    pub bytes_out: u64,
    /// The request as the client sent it, kept for replica attachments: if the replica fails
    /// before any reply reached the client, the read is retried elsewhere.
    pub replay: Option<BytesMut>,
    /// Some reply bytes went to the client (a retry is no longer possible).
    pub forwarded: bool,
    /// Extended-protocol frames sent since the last Sync, as sent.
    pub batch: BytesMut,
    /// The last complete batch (through its Sync), for a re-run after a stale-plan error.
    pub last_batch: BytesMut,
    /// The current batch only binds, describes and executes (safe to re-run). A fact about the
    /// batch being sent, independent of how far its replies are.
    pub batch_rerunnable: bool,
    /// Whether `last_batch` may be re-run, or a re-run already happened.
    pub rerun: Rerun,
    /// An Execute completed since the last Sync (a re-run would repeat it). Set by replies,
    /// cleared by ReadyForQuery: independent of the client side's batch state.
    pub batch_executed: bool,
    /// Dual-write: the frames of the transaction running, to replay on the other store.
    pub capture: Option<crate::migration::mirror::Capture>,
    /// Replay direction: to the target (dual_write, shift_reads) or back to the source (cutover).
    pub mirror_to_target: bool,
    /// Transactions committed in this attachment, waiting to be queued for replay.
    pub committed: Vec<crate::migration::mirror::Capture>,
    /// Where the client's current extended-protocol batch stands (flushed, skipped, refused).
    pub batch_state: BatchState,
    /// A portal was suspended (Execute with a row limit): it lives until Sync.
    pub suspended: bool,
    /// The server's unnamed statement is this client's: parsed (or closed) in this attachment.
    pub unnamed_parsed: bool,
    /// A statement here may have changed a setting the client's record does not show yet (`SET
    /// LOCAL`, `set_config`, a SET before its COMMIT): a statement parsed from then on is parsed
    /// under other settings than its scope says, and must not serve another client.
    pub settings_unsure: bool,
}

/// How an attachment stands: serving, or over and what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Requests are being answered.
    Serving,
    /// The client's requests are answered and the transaction is over: give the server back.
    Release,
    /// The replica failed before answering: retry the request elsewhere.
    Retry,
}

/// The client's extended-protocol batch (the frames up to its next Sync), as forwarding sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Frames are forwarded and owe replies.
    Open,
    /// The last client frame forwarded was a Flush: the client waits without a Sync.
    Flushed,
    /// An extended-protocol error came before the client's Sync: the server discards frames
    /// until that Sync, so they are forwarded owing no replies.
    Skipping,
    /// pgshift refused a frame of the batch with its own error: the client's frames up to its
    /// Sync are dropped, as a server drops them after an error.
    Refusing,
}

/// Whether the last complete batch may be re-run after a stale-plan error (at most once per
/// attachment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rerun {
    /// It parses or closes statements (or there is none yet): not safe to re-run.
    Unavailable,
    /// It only binds, describes and executes: safe to re-run.
    Armed,
    /// A re-run already happened in this attachment.
    Spent,
}

/// The buffers of an attachment, recycled between transactions (per worker thread, so idle
/// clients hold none) so that a transaction allocates nothing for its bookkeeping.
#[derive(Default)]
pub struct Spare {
    queue: ExpectQueue,
    effects: VecDeque<Vec<SessionEffect>>,
    sout: BytesMut,
    batch: BytesMut,
    last_batch: BytesMut,
}

thread_local! {
    static SPARES: std::cell::RefCell<Vec<Spare>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Spares kept per thread: about the number of transactions a worker runs at once.
const MAX_SPARES: usize = 256;

impl Spare {
    /// A recycled set of buffers, or a new empty one.
    pub fn take() -> Spare {
        SPARES.with(|s| s.borrow_mut().pop()).unwrap_or_default()
    }
    /// Returns a set for the next transaction on this thread.
    pub fn give_back(self) {
        super::bufpool::keep(&SPARES, self, MAX_SPARES);
    }
}

impl Attached {
    /// A fresh attachment, with recycled buffers.
    pub fn new(lease: Lease, backend: Arc<Backend>, target: Target) -> Box<Attached> {
        let Spare { queue, effects, sout, batch, last_batch } = Spare::take();
        let since = lease.since;
        Box::new(Attached {
            lease,
            backend,
            target,
            queue,
            sout,
            server_status: TxStatus::Idle,
            since,
            req_started: None,
            answered_at: None,
            kind: StatementKind::Other,
            effects,
            batch_effects: Vec::new(),
            req_errored: false,
            errored: false,
            saw_rollback: false,
            s2c_passthrough: 0,
            c2s_passthrough: 0,
            outcome: Outcome::Serving,
            wrote: false,
            sflush: false,
            copy_in: false,
            bytes_in: 0,
            bytes_out: 0,
            replay: None,
            forwarded: false,
            batch,
            last_batch,
            batch_rerunnable: true,
            rerun: Rerun::Unavailable,
            batch_executed: false,
            capture: None,
            mirror_to_target: true,
            committed: Vec::new(),
            batch_state: BatchState::Open,
            suspended: false,
            unnamed_parsed: false,
            settings_unsure: false,
        })
    }

    /// Holds further client requests until the current one is answered: on a replica, the next
    /// request may need another backend, decided only once this one ends the transaction.
    #[inline]
    pub fn holds_requests(&self) -> bool {
        self.target == Target::Replica
    }

    /// The client's requests are answered and the transaction is over: the server goes back. A
    /// retry already decided stands (nothing more from a failing replica reaches the client).
    #[inline]
    pub fn release(&mut self) {
        if self.outcome == Outcome::Serving {
            self.outcome = Outcome::Release;
        }
    }

    /// An extended-protocol error before the client's Sync: the server now discards frames
    /// until that Sync. A batch pgshift already refuses stays refused (its frames are dropped
    /// here, which the server would discard anyway).
    pub fn skip_to_client_sync(&mut self) {
        if self.batch_state != BatchState::Refusing {
            self.batch_state = BatchState::Skipping;
        }
    }

    /// A Sync closed the batch being sent: it becomes `last_batch`, re-runnable if it only
    /// binds, describes and executes, unless this attachment already used its one re-run.
    #[inline]
    pub fn batch_synced(&mut self) {
        let rerunnable = std::mem::replace(&mut self.batch_rerunnable, true);
        if self.rerun != Rerun::Spent {
            self.rerun = if rerunnable { Rerun::Armed } else { Rerun::Unavailable };
        }
    }

    /// Gives the buffers back (emptied) for the next transaction on this thread. Buffers that
    /// grew large for one big request are dropped rather than kept.
    pub fn recycle(&mut self) {
        let keep = |b: &mut BytesMut| super::bufpool::reusable(b, 64 * 1024).unwrap_or_default();
        let mut queue = std::mem::take(&mut self.queue);
        queue.clear();
        let mut effects = std::mem::take(&mut self.effects);
        effects.clear();
        Spare {
            queue,
            effects,
            sout: keep(&mut self.sout),
            batch: keep(&mut self.batch),
            last_batch: keep(&mut self.last_batch),
        }
        .give_back();
    }
}

/// Read-your-writes toward a migration target kept in step by logical replication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TargetRyw {
    /// No write the target may still miss.
    #[default]
    Clear,
    /// A write committed at this time (monotonic ms); its WAL position is not sampled yet.
    WroteAt(u64),
    /// The source WAL position the target must have applied.
    Lsn(u64),
}
