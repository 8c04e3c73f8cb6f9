//! `[log]`: how pgshift writes its log (to standard error). `PGSHIFT_LOG` (or `RUST_LOG`) sets
//! the filter; `format` (or `PGSHIFT_LOG_FORMAT`) the shape of each line.

use serde::{Deserialize, Serialize};

/// One line per event: for people (`text`) or for log shippers (`json`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-05T07:32:37Z  INFO message key=value`; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
}
