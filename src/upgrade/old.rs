//! The running process's side of an upgrade: start the new binary, wait until it listens, stop
//! accepting, and send every client over as it reaches an idle point.

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::channel::{self, Channel};
use super::message::{LearnedKey, Message};
use super::spawn::Launch;
use super::{Outgoing, UpgradeError};
use crate::client::registry::Signals;
use crate::proxy::Proxy;
use crate::shared::Shared;

/// How often idle clients are told (again) to move: a client that logged in or ended its
/// transaction since the last round is told at the next.
const ROUND: Duration = Duration::from_millis(50);

/// How a finished handover went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handed {
    /// Clients sent over (logged-in and queued connections).
    pub clients: usize,
    /// Clients still in a transaction at `upgrade_timeout`, closed.
    pub closed: usize,
}

/// Runs an upgrade to its end. `Ok` means every client has moved or been closed and this
/// process should exit; `Err` means the upgrade was abandoned and this process keeps serving.
pub async fn run(proxy: Arc<Proxy>, launch: Launch) -> Result<Handed, UpgradeError> {
    let shared = proxy.shared.clone();
    let timeout = shared.runtime.load().config.proxy.upgrade_timeout.0;
    let (chan, theirs) = channel::pair()?;
    let mut child = launch.spawn(theirs)?;
    let pid = child.id();
    tracing::info!(pid, exe = %launch.exe.display(), "upgrade: started the new binary; waiting until it listens");
    let ready = async {
        chan.send(&hello(&shared), &[]).await?;
        wait_ready(&chan, &mut child, timeout).await
    };
    if let Err(e) = ready.await {
        reap(child, true);
        return Err(e);
    }
    tracing::info!(pid, "upgrade: the new process listens; handing clients over");
    let handed = hand_over(&proxy, Arc::new(chan), timeout).await;
    reap(child, false);
    handed
}

/// The pids in use and the SCRAM keys learned so far.
fn hello(shared: &Shared) -> Message {
    let learned = shared
        .runtime
        .load()
        .users
        .entries()
        .filter_map(|u| u.learned_client_key().map(|k| LearnedKey { user: u.name.clone(), client_key: k.to_vec() }))
        .collect();
    Message::Hello { pids: shared.sessions.pids(), learned }
}

/// Waits for `Ready`, the child's exit, or the timeout.
async fn wait_ready(chan: &Channel, child: &mut Child, timeout: Duration) -> Result<(), UpgradeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let recv = chan.recv();
    tokio::pin!(recv);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            got = &mut recv => return match got? {
                Some((Message::Ready { .. }, _)) => Ok(()),
                Some(_) => Err(UpgradeError::Protocol("expected Ready")),
                None => Err(UpgradeError::ChildExited(exit_status(child).await)),
            },
            _ = tick.tick() => {
                if let Some(status) = child.try_wait()? {
                    return Err(UpgradeError::ChildExited(status.to_string()));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(UpgradeError::Timeout(timeout));
                }
            }
        }
    }
}

async fn exit_status(child: &mut Child) -> String {
    // The channel closes a moment before the exit is visible.
    for _ in 0..20 {
        if let Ok(Some(s)) = child.try_wait() {
            return s.to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "closed the handover channel".into()
}

/// Stops accepting, then moves clients until none is left here (or the new process dies, and
/// this one goes back to accepting).
async fn hand_over(proxy: &Proxy, chan: Arc<Channel>, timeout: Duration) -> Result<Handed, UpgradeError> {
    let shared = &proxy.shared;
    let outbox = shared.handover.open();
    let sender = tokio::spawn(send_all(shared.clone(), chan.clone(), outbox));
    proxy.stop_listening().await;
    chan.send(&Message::Reserve { pids: shared.sessions.pids() }, &[]).await?;
    let deadline = Instant::now() + timeout;
    let mut closed = 0;
    while !shared.sessions.is_empty() {
        if sender.is_finished() {
            return Err(abandon(proxy).await);
        }
        if Instant::now() >= deadline && closed == 0 {
            closed = shared.sessions.len();
            tracing::warn!(closed, "upgrade_timeout: closing clients still inside a transaction");
            shared.sessions.all().iter().for_each(|s| s.signals.raise(Signals::KILL));
        }
        for s in shared.sessions.all() {
            s.signals.raise(Signals::HANDOVER);
        }
        tokio::time::sleep(ROUND).await;
    }
    shared.handover.close();
    let clients = match sender.await {
        Ok(Ok(n)) => n,
        _ => return Err(UpgradeError::Closed),
    };
    chan.send(&Message::Done, &[]).await?;
    Ok(Handed { clients, closed })
}

/// The new process died during the handover: accept again, keep the clients not yet sent.
async fn abandon(proxy: &Proxy) -> UpgradeError {
    proxy.shared.handover.close();
    for s in proxy.shared.sessions.all() {
        s.signals.lower(Signals::HANDOVER);
    }
    if let Err(e) = proxy.resume_listening().await {
        tracing::error!("upgrade: cannot listen again after the new process failed: {e}");
    }
    UpgradeError::Closed
}

/// Carries out the CancelRequests the new process passes back (for clients still here) until
/// the channel closes, which means the new process died.
async fn serve_cancels(shared: Arc<Shared>, chan: Arc<Channel>) {
    loop {
        match chan.recv().await {
            Ok(Some((Message::Cancel { pid, secret }, _))) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    crate::client::handshake::forward_cancel(
                        &shared,
                        pid,
                        secret,
                        crate::client::handshake::Reach::Local,
                    )
                    .await
                });
            }
            Ok(Some(_)) => tracing::warn!("upgrade: unexpected message from the new process ignored"),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Sends what the outbox receives until it is closed; ends early when the new process closes
/// the channel (it died). Returns how many connections went over.
async fn send_all(
    shared: Arc<Shared>,
    chan: Arc<Channel>,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
) -> Result<usize, UpgradeError> {
    use std::os::fd::AsFd;
    let mut sent = 0;
    let peer_closed = serve_cancels(shared, chan.clone());
    tokio::pin!(peer_closed);
    loop {
        let out = tokio::select! {
            out = outbox.recv() => out,
            () = &mut peer_closed => {
                outbox.close();
                while let Ok(out) = outbox.try_recv() {
                    crate::client::handoff::refuse_returned(out);
                }
                return Err(UpgradeError::Closed);
            }
        };
        let Some(out) = out else { return Ok(sent) };
        let (msg, fd) = match out {
            Outgoing::Client(h, fd) => (Message::Client(h), fd),
            Outgoing::Fresh { unix, fd } => (Message::Fresh { unix }, fd),
        };
        if let Err(e) = chan.send(&msg, &[fd.as_fd()]).await {
            tracing::warn!("upgrade: cannot send a client to the new process: {e}");
            crate::client::handoff::refuse_returned(match msg {
                Message::Client(h) => Outgoing::Client(h, fd),
                _ => Outgoing::Fresh { unix: false, fd },
            });
            continue;
        }
        sent += 1;
    }
}

/// Lets the child go (an upgraded one lives on) or stops one that failed, reaping it either
/// way off the runtime's threads.
fn reap(mut child: Child, kill: bool) {
    if kill {
        let _ = child.kill();
    }
    if kill || matches!(child.try_wait(), Ok(Some(_))) {
        tokio::task::spawn_blocking(move || child.wait());
    }
}
