//! The new process's side of an upgrade: learn what the old process knows, say when listening,
//! then take each client sent over.

use std::sync::Arc;
use std::time::Duration;

use super::channel::Channel;
use super::message::{LearnedKey, Message};
use super::UpgradeError;
use crate::shared::Shared;

/// The old process's first words, and how we talk back.
pub struct Predecessor {
    chan: Channel,
    pids: Vec<i32>,
    learned: Vec<LearnedKey>,
}

/// How long the old process may take to say `Hello` (it sends it as soon as it has started us).
const HELLO_WAIT: Duration = Duration::from_secs(10);

impl Predecessor {
    /// Reads the old process's `Hello` from the inherited handover socket.
    pub async fn greet(fd: std::os::fd::OwnedFd) -> Result<Predecessor, UpgradeError> {
        let chan = Channel::new(fd)?;
        let first =
            tokio::time::timeout(HELLO_WAIT, chan.recv()).await.map_err(|_| UpgradeError::Timeout(HELLO_WAIT))?;
        match first? {
            Some((Message::Hello { pids, learned }, _)) => Ok(Predecessor { chan, pids, learned }),
            Some(_) => Err(UpgradeError::Protocol("expected Hello")),
            None => Err(UpgradeError::Closed),
        }
    }

    /// Once listening: reserves the old clients' pids, takes over learned SCRAM keys, tells the
    /// old process we are ready, and starts taking clients.
    pub async fn ready(self, shared: &Arc<Shared>) -> Result<(), UpgradeError> {
        shared.sessions.reserve(&self.pids);
        let rt = shared.runtime.load();
        for k in &self.learned {
            let (Some(user), Ok(key)) = (rt.users.get(&k.user), <[u8; 32]>::try_from(k.client_key.as_slice())) else {
                continue;
            };
            user.learn_client_key(key);
        }
        let chan = Arc::new(self.chan);
        shared.handover.set_predecessor(Some(chan.clone()));
        chan.send(&Message::Ready { pid: std::process::id() }, &[]).await?;
        tokio::spawn(receive(shared.clone(), chan));
        Ok(())
    }
}

/// Takes clients until the old process says `Done` or goes away.
async fn receive(shared: Arc<Shared>, chan: Arc<Channel>) {
    let mut adopted = 0u64;
    loop {
        let (msg, mut fds) = match chan.recv().await {
            Ok(Some(got)) => got,
            Ok(None) => {
                tracing::warn!(adopted, "upgrade: the old process closed the handover channel before it was done");
                break;
            }
            Err(e) => {
                tracing::warn!(adopted, "upgrade: handover channel failed: {e}");
                break;
            }
        };
        match (msg, fds.pop()) {
            (Message::Client(h), Some(fd)) => {
                adopted += 1;
                tokio::spawn(crate::client::handoff::adopt(shared.clone(), h, fd));
            }
            (Message::Fresh { unix }, Some(fd)) => {
                if let Err(e) = crate::client::listener::admit_passed(&shared, fd, unix) {
                    tracing::debug!("upgrade: a queued connection was gone: {e}");
                }
            }
            (Message::Reserve { pids }, _) => shared.sessions.reserve(&pids),
            (Message::Done, _) => {
                tracing::info!(adopted, "upgrade: the old process has handed over every client");
                break;
            }
            (_, _) => tracing::warn!("upgrade: unexpected handover message ignored"),
        }
    }
    shared.handover.set_predecessor(None);
    shared.sessions.release_reserved();
}
