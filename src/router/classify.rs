//! TEMPORARY stand-in for the SQL classifier (being written separately); same interface.

use std::collections::HashSet;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Primary,
    Replica,
}

/// Metric label of the first statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Other,
}

/// Transaction control carried by a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxControl {
    None,
    Begin { read_only: bool },
    Commit,
    Rollback,
    Savepoint,
}

/// Session state a statement changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    None,
    Set { name: String, value: String },
    Reset { name: String },
    ResetAll,
    DiscardAll,
    Deallocate { name: Option<String> },
    Listen { channel: String },
    Unlisten { channel: Option<String> },
    Pin(&'static str),
}

/// One statement's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub target: Target,
    pub reason: &'static str,
    pub kind: StatementKind,
    pub tx: TxControl,
    pub session: SessionEffect,
}

/// The whole string's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub target: Target,
    pub reason: &'static str,
    pub kind: StatementKind,
    pub hint: Option<Target>,
    pub statements: Vec<Statement>,
}

/// Extra read-only functions.
#[derive(Debug, Default)]
pub struct ClassifierConfig {
    pub safe_functions: HashSet<String>,
}

/// Stand-in: first word only.
pub fn classify(sql: &str, _cfg: &ClassifierConfig) -> Classification {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let (target, kind, reason) = match first.as_str() {
        "select" => (Target::Replica, StatementKind::Select, "read"),
        "insert" => (Target::Primary, StatementKind::Insert, "write"),
        "update" => (Target::Primary, StatementKind::Update, "write"),
        "delete" => (Target::Primary, StatementKind::Delete, "write"),
        _ => (Target::Primary, StatementKind::Other, "unsure"),
    };
    let tx = match first.as_str() {
        "begin" => TxControl::Begin { read_only: false },
        "commit" => TxControl::Commit,
        "rollback" => TxControl::Rollback,
        _ => TxControl::None,
    };
    Classification {
        target,
        reason,
        kind,
        hint: None,
        statements: vec![Statement {
            target,
            reason,
            kind,
            tx,
            session: SessionEffect::None,
        }],
    }
}
