//! pgshift: a PostgreSQL connection proxy. Transaction pooling, TLS termination, read/write split
//! across streaming replicas, an admin port, and phased migration to a new database.
//!
//! # Layout
//! - [`wire`]: raw frames, startup packets, encoders for what the proxy says itself.
//! - [`config`]: proxy.toml, environment overrides, validation.
//! - [`auth`]: users, SCRAM/md5 on both sides.
//! - [`client`]: accept loops (TCP and the Unix socket), login, and each client's session (route, relay, give back).
//! - [`server`]: one PostgreSQL connection; [`pool`]: pools of them, backends and health.
//! - [`router`]: the SQL classifier; [`session_state`]: settings and prepared statements that
//!   follow a client across server connections.
//! - [`stats`]: sharded counters and histograms; [`shared`]: the state every task is handed.
//! - [`fleet`]: several instances sharing the migration phase and a member list through PostgreSQL.
//! - [`backup`]: scheduled `pg_dump` backups from a replica, retention, the WAL archiver's status.
//! - [`upgrade`]: binary upgrades (SIGUSR2): the new process takes over ports and clients.
//!
//! # Data path (one transaction)
//! 1. The session buffers client frames up to a request boundary (Query, Sync, Flush, ...).
//! 2. It classifies the request and picks the primary or a replica.
//! 3. It leases a server connection from that pool (waiting at most `query_wait_timeout`) and
//!    replays the client's settings there if they differ.
//! 4. It relays both ways, frames kept raw, renaming prepared statements on the way in and
//!    matching replies against what is owed on the way out.
//! 5. At ReadyForQuery 'I' with nothing owed, it gives the server back, then flushes the client.

#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::todo, clippy::dbg_macro)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod client;
pub mod config;
pub mod convert;
pub mod encoding;
pub mod error;
pub mod fleet;
pub mod healthcheck;
pub mod migration;
pub mod notify;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod server;
pub mod session_state;
pub mod shared;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod topology;
pub mod upgrade;
pub mod wire;
