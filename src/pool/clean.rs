//! Isolation between clients, enforced where connections come back: a server connection with a
//! cancel in flight waits until the server has taken it, and one whose last transaction ran
//! anything not proven free of session effects is reset, before any other client can have it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::pool::Pool;
use crate::server::{Residue, ServerConn};

/// Undoes whatever a session can hold beyond its transaction: role and session authorization,
/// every setting, cursors, LISTENs, session advisory locks, temporary tables, sequence caches and
/// prepared statements. pgshift's own statements go too (server-side code may have replaced one
/// under its name); they are prepared again on first use.
pub const SESSION_RESET: &str = "DISCARD ALL";

/// Bound on running [`SESSION_RESET`]; a server that takes longer is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// True when the connection may not go straight back to the idle stack.
pub(super) fn needs_cleaning(c: &ServerConn) -> bool {
    c.residue != Residue::None || c.cancel.gate.busy()
}

/// Waits out cancels in flight and resets the session if needed, then returns the connection to
/// its pool, or closes it if either step fails.
pub(super) async fn clean_then_return(pool: Arc<Pool>, mut c: Box<ServerConn>, cancel_wait: Duration) {
    if c.residue == Residue::Lasting {
        tracing::debug!(conn = c.id, "the server session holds state a reset cannot undo; closing it");
        pool.discard(c);
        return;
    }
    if c.cancel.gate.busy() {
        pool.stats.cancel_holds.fetch_add(1, Ordering::Relaxed);
        if tokio::time::timeout(cancel_wait, c.cancel.gate.idle()).await.is_err() {
            tracing::info!(
                conn = c.id,
                "a cancel request was not processed within cancel_wait_timeout; closing the server connection"
            );
            pool.discard(c);
            return;
        }
    }
    if c.residue == Residue::Unknown {
        pool.stats.resets.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(RESET_TIMEOUT, c.run_internal(SESSION_RESET)).await {
            Ok(Ok(None)) if !c.broken => {
                c.residue = Residue::None;
                c.state.settings.clear();
                c.state.clear_prepared();
            }
            outcome => {
                let why = match outcome {
                    Ok(Ok(Some(e))) => e,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_string(),
                    Ok(Ok(None)) => "connection broken".to_string(),
                };
                tracing::info!(conn = c.id, "resetting a server session failed ({why}); closing it");
                pool.discard(c);
                return;
            }
        }
    }
    pool.return_conn(c);
}
