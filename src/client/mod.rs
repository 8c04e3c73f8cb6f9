//! The client side: accepting connections, the login dialogue, and each client's session.

pub mod expect;
pub mod forward;
pub mod handshake;
mod io;
pub mod listener;
mod failover;
mod local;
pub mod login;
mod mirroring;
pub mod registry;
mod relay;
pub mod reply;
pub mod request;
pub mod route;
pub mod session;
pub mod state;
