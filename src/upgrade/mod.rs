//! Binary upgrades without dropping clients (SIGUSR2): the running process starts the binary at
//! its path again, the new process binds the same ports (SO_REUSEPORT) and says it is ready, and
//! the old one stops accepting and hands each client over at its next idle point — the socket
//! over a private socketpair (SCM_RIGHTS), its session state as JSON — then exits.
//!
//! # Who moves
//! Plaintext TCP and Unix-socket clients in transaction mode move with their cancel key,
//! settings and prepared statements. TLS clients (their keys live in this process's rustls
//! state), session-mode and pinned clients, and clients that LISTEN are closed at their next
//! transaction boundary with 57P01, as SIGTERM's drain closes them; they reconnect to the new
//! process. Connections queued in the old process's listen backlog when it stops accepting are
//! passed on untouched and log in on the new one.
//!
//! # Failure
//! If the new process fails to start, dies, or does not report ready within `upgrade_timeout`,
//! the old one keeps serving and logs why. A client inside a transaction moves when its
//! transaction ends; one still inside a transaction `upgrade_timeout` after the new process was
//! ready is closed.

pub mod channel;
pub mod listen;
pub mod message;
pub mod new;
pub mod old;
pub mod sd_notify;
pub mod spawn;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

use message::Handoff;

/// Why an upgrade did not happen (the running process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// An upgrade is already under way.
    #[error("an upgrade is already in progress")]
    InProgress,
    /// The handover socket failed.
    #[error("handover channel: {0}")]
    Channel(#[from] std::io::Error),
    /// The new binary could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The new process exited before it was ready.
    #[error("the new process exited before it was ready ({0})")]
    ChildExited(String),
    /// The new process said nothing in time.
    #[error("the new process did not report ready within {0:?}")]
    Timeout(std::time::Duration),
    /// The other side closed the channel.
    #[error("the other process closed the handover channel")]
    Closed,
    /// A message could not be encoded.
    #[error("cannot encode a handover message: {0}")]
    Encode(serde_json::Error),
    /// A message could not be decoded.
    #[error("cannot decode a handover message: {0}")]
    Decode(serde_json::Error),
    /// The other side broke the protocol.
    #[error("handover protocol: {0}")]
    Protocol(&'static str),
}

/// Something the old process sends to the new one, from the task that held it.
pub enum Outgoing {
    /// A logged-in client and its socket.
    Client(Box<Handoff>, OwnedFd),
    /// A connection accepted but not read from.
    Fresh {
        /// From the Unix-domain socket.
        unix: bool,
        /// Its socket.
        fd: OwnedFd,
    },
}

/// The old process's side while it hands clients over: sessions and listeners put what moves
/// here, and one task sends it on. Closed (`None`) at all other times.
#[derive(Default)]
pub struct Handover {
    outbox: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    /// In the new process, while the old one is still handing over: the channel back to it,
    /// for CancelRequests whose client has not arrived yet.
    predecessor: Mutex<Option<Arc<channel::Channel>>>,
}

impl Handover {
    /// Opens the outbox; what is sent arrives at the returned receiver.
    pub fn open(&self) -> mpsc::UnboundedReceiver<Outgoing> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.outbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// Closes the outbox: the receiver ends once it has taken what was sent before.
    pub fn close(&self) {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// True while a handover is under way.
    pub fn is_open(&self) -> bool {
        self.outbox.lock().map(|o| o.is_some()).unwrap_or(false)
    }

    /// In the new process: the channel to the old one while it hands over (`None` after).
    pub fn set_predecessor(&self, chan: Option<Arc<channel::Channel>>) {
        *self.predecessor.lock().unwrap_or_else(|e| e.into_inner()) = chan;
    }

    /// Passes a CancelRequest to the old process, if one is still handing over; false if none.
    pub async fn cancel_on_predecessor(&self, pid: i32, secret: i32) -> bool {
        let chan = self.predecessor.lock().ok().and_then(|p| p.clone());
        let Some(chan) = chan else { return false };
        chan.send(&message::Message::Cancel { pid, secret }, &[]).await.is_ok()
    }

    /// Queues `out` for the new process; gives it back when no handover is under way.
    pub fn send(&self, out: Outgoing) -> Result<(), Outgoing> {
        let guard = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(out).map_err(|e| e.0),
            None => Err(out),
        }
    }
}
