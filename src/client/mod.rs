//! The client side: accepting connections, the login dialogue, and each client's session.

mod attach;
mod bufpool;
pub mod expect;
mod failover;
pub mod fleet;
pub mod forward;
pub mod handoff;
pub mod handshake;
mod io;
pub mod listener;
mod local;
pub mod login;
mod mirroring;
mod notifications;
pub mod peer;
pub mod pools_cache;
pub mod registry;
mod relay;
mod release;
pub mod reply;
pub mod request;
pub mod route;
pub mod session;
mod signal_backend;
pub mod socket_file;
pub mod state;
mod timers;
