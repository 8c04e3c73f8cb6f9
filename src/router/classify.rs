//! Routing decision for a SQL string: replica or primary, plus the transaction and
//! session facts the proxy tracks. Conservative: anything not proven read-only goes
//! to the primary.

use std::collections::HashSet;

use super::cursor::Cursor;
use super::keywords::{keyword, Kw};
use super::lexer::{Hint, TokenKind};
use super::{query, session};

/// Where a statement (or a whole query string) may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Must run on the primary.
    Primary,
    /// May run on a read-only streaming replica.
    Replica,
}

/// Metric label for a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE, parenthesised query, or WITH whose main statement reads.
    Select,
    /// INSERT, also `WITH ... INSERT`.
    Insert,
    /// UPDATE, also `WITH ... UPDATE`.
    Update,
    /// DELETE, also `WITH ... DELETE`.
    Delete,
    /// Everything else (MERGE, DDL, utility, transaction control, EXPLAIN, COPY, ...).
    Other,
}

/// Transaction control performed by a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxControl {
    /// No transaction control (also PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED).
    None,
    /// BEGIN / START TRANSACTION; `read_only` from a READ ONLY mode.
    Begin {
        /// The transaction was opened READ ONLY.
        read_only: bool,
    },
    /// COMMIT / END.
    Commit,
    /// ROLLBACK / ABORT.
    Rollback,
    /// `SAVEPOINT`, `RELEASE [SAVEPOINT]`, `ROLLBACK TO [SAVEPOINT]`.
    Savepoint,
}

/// What a statement does to the server session beyond the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// Nothing session-wide.
    None,
    /// `SET [SESSION] name {TO|=} value` / `SET TIME ZONE ...` (name "timezone") /
    /// `SET SCHEMA 'x'` (name "search_path") / `SET NAMES 'x'` (name "client_encoding").
    /// `name` is lower-cased (quoted parts keep case); `value` is the exact, trimmed
    /// source text of the value part, e.g. `'$user', public`.
    Set {
        /// Setting name.
        name: String,
        /// Source text of the value.
        value: String,
    },
    /// `RESET name`, also `SET name TO DEFAULT` / `SET name = DEFAULT`.
    Reset {
        /// Setting name.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `PREPARE`, `EXECUTE` or `DEALLOCATE` of a name in pgshift's own namespace (`pgshift_...`):
    /// refused, so no client can reach or plant the statements pgshift prepares for everyone.
    ReservedName,
    /// `DEALLOCATE [PREPARE] name | ALL`; `None` means ALL.
    Deallocate {
        /// Prepared statement name, folded like an identifier.
        name: Option<String>,
    },
    /// `LISTEN channel`.
    Listen {
        /// Channel name, folded like an identifier.
        channel: String,
    },
    /// `UNLISTEN channel | *`; `None` means `*`.
    Unlisten {
        /// Channel name, folded like an identifier.
        channel: Option<String>,
    },
    /// Ties the client to one server connection for the rest of its session. The label
    /// is one of "sql_prepare", "advisory_lock", "temp_table", "with_hold_cursor",
    /// "set_config", "set_role", "session_characteristics", "load".
    Pin(&'static str),
}

/// The decision for one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Where it may run.
    pub target: Target,
    /// Why; one of [`reasons`].
    pub reason: &'static str,
    /// Metric label.
    pub kind: StatementKind,
    /// Transaction control it performs.
    pub tx: TxControl,
    /// Session-wide effect.
    pub session: SessionEffect,
    /// Proven to leave nothing in the server session beyond the transaction except the tracked
    /// `session` effect: no call outside PostgreSQL's built-in side-effect-free functions, no
    /// DO/CALL/DDL/COPY, nothing the classifier was unsure of. A server that ran anything else
    /// is reset before another client gets it.
    pub pure: bool,
    /// Calls `set_config` of a built-in setting, which may change how statements parsed later in
    /// the transaction read (TimeZone, DateStyle, the search path); custom settings
    /// (`app.tenant`) change no parse and do not count.
    pub sets_config: bool,
    /// Runs or keeps a query left unclassified (SQL `EXECUTE`, `PREPARE`, `DECLARE`): may write.
    pub runs_sql: bool,
}

/// The decision for a whole query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Replica only if every statement may go to a replica, unless a hint decides.
    /// An empty string goes to the primary.
    pub target: Target,
    /// Reason of the first primary-forcing statement, or "read", "hint", "empty", "unsure".
    pub reason: &'static str,
    /// Kind of the first statement (`Other` when there is none).
    pub kind: StatementKind,
    /// Routing hint from a `pgshift:primary` / `pgshift:replica` comment; it decides
    /// `target` whenever the string holds at least one statement.
    pub hint: Option<Target>,
    /// One entry per non-empty statement, in order.
    pub statements: Vec<Statement>,
}

impl Classification {
    /// True when every statement is proven free of untracked session effects (see
    /// [`Statement::pure`]); an empty string is pure.
    pub fn pure(&self) -> bool {
        self.statements.iter().all(|s| s.pure)
    }
}

/// Deployment knowledge the classifier cannot infer from SQL.
#[derive(Debug, Clone, Default)]
pub struct ClassifierConfig {
    /// User functions declared read-only: lower-case names, optionally schema-qualified
    /// ("myschema.f"); a bare "f" also matches `anyschema.f(`.
    pub safe_functions: HashSet<String>,
    /// Set when every server session is known to run with `standard_conforming_strings
    /// = on` (the default since PostgreSQL 9.1), e.g. from its ParameterStatus. Then a
    /// backslash in a plain `'...'` literal is an ordinary character. Left false, such a
    /// statement is "unsure": with the setting off the server would split the text into
    /// different tokens than the classifier did.
    pub standard_conforming_strings: bool,
}

impl ClassifierConfig {
    /// Config with the given safe functions, lower-cased.
    pub fn with_safe_functions<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let safe_functions = names.into_iter().map(|n| n.as_ref().trim().to_ascii_lowercase()).collect();
        ClassifierConfig { safe_functions, ..ClassifierConfig::default() }
    }
}

/// The static reason labels.
pub mod reasons {
    /// Proven read-only.
    pub const READ: &str = "read";
    /// INSERT/UPDATE/DELETE/MERGE, DDL, maintenance, DO, CALL, LOCK.
    pub const WRITE: &str = "write";
    /// SELECT ... FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE.
    pub const LOCKING_READ: &str = "locking read";
    /// SELECT ... INTO creates a table.
    pub const SELECT_INTO: &str = "select into";
    /// A data-modifying statement inside WITH.
    pub const WRITE_CTE: &str = "write cte";
    /// A call of a function known to write, lock or need the primary.
    pub const SIDE_EFFECT_FUNCTION: &str = "side-effect function";
    /// A call of a function not known to be read-only.
    pub const UNKNOWN_FUNCTION: &str = "unknown function";
    /// Transaction control, cursors, SET TRANSACTION.
    pub const TRANSACTION: &str = "transaction";
    /// SET/RESET/DISCARD/PREPARE/EXECUTE/DEALLOCATE/LOAD and other session state.
    pub const SESSION: &str = "session";
    /// COPY ... FROM.
    pub const COPY_FROM: &str = "copy from";
    /// LISTEN/UNLISTEN/NOTIFY.
    pub const LISTEN_NOTIFY: &str = "listen/notify";
    /// EXPLAIN ANALYZE runs its statement, which does not only read.
    pub const EXPLAIN_ANALYZE_WRITE: &str = "explain analyze write";
    /// Unparseable, unrecognised or ambiguous: not proven read-only.
    pub const UNSURE: &str = "unsure";
    /// No statement at all.
    pub const EMPTY: &str = "empty";
    /// A routing hint comment decided.
    pub const HINT: &str = "hint";
}

impl Statement {
    pub(super) fn primary(reason: &'static str, kind: StatementKind) -> Self {
        Statement {
            target: Target::Primary,
            reason,
            kind,
            tx: TxControl::None,
            session: SessionEffect::None,
            pure: false,
            sets_config: false,
            runs_sql: false,
        }
    }

    pub(super) fn proven_pure(mut self) -> Self {
        self.pure = true;
        self
    }

    pub(super) fn replica(reason: &'static str, kind: StatementKind) -> Self {
        Statement { target: Target::Replica, ..Statement::primary(reason, kind) }
    }

    pub(super) fn unsure() -> Self {
        Statement::primary(reasons::UNSURE, StatementKind::Other)
    }

    pub(super) fn with_session(mut self, session: SessionEffect) -> Self {
        self.session = session;
        self
    }
}

/// Classifies a query string (one statement or a simple-query batch). Never panics.
pub fn classify(sql: &str, cfg: &ClassifierConfig) -> Classification {
    let mut cur = Cursor::new(sql, !cfg.standard_conforming_strings);
    let mut statements = Vec::new();
    let settings_named = super::marks::names_pg_settings(sql);
    while cur.begin_statement() {
        let mut st = statement(&mut cur, cfg, 0);
        let mut pin = query::scan_pins(&mut cur);
        // `UPDATE pg_settings SET setting = ...` is a SET in disguise: a rule of the view turns
        // it into set_config(). Any write in a string naming the view keeps its server.
        if settings_named && matches!(st.reason, reasons::WRITE | reasons::WRITE_CTE) {
            pin = pin.or(Some("pg_settings"));
        }
        if let (SessionEffect::None, Some(pin)) = (&st.session, pin) {
            st.session = SessionEffect::Pin(pin);
        }
        cur.finish_statement();
        if cur.take_broken() {
            st.target = Target::Primary;
            st.reason = reasons::UNSURE;
            st.pure = false;
        }
        if matches!(st.session, SessionEffect::Pin(_)) {
            st.pure = false;
        }
        statements.push(st);
    }
    // Malformed input after the last statement (an unterminated comment) makes the
    // server reject the whole string; blame the last statement.
    let broken = cur.take_broken();
    if let (true, Some(last)) = (broken, statements.last_mut()) {
        last.target = Target::Primary;
        last.reason = reasons::UNSURE;
        last.pure = false;
    }
    // State no reset undoes outranks every other pin, wherever the text may create it (a DO
    // block, a PREPARE, a cursor's query, a second call in the same statement). Text proven
    // pure runs none of it (the name is in a string or a column name).
    let impure = statements.iter().any(|s| !s.pure);
    if let (Some(reason), Some(first)) = (super::marks::lasting_text(sql, impure), statements.first_mut()) {
        first.session = SessionEffect::Pin(reason);
        first.pure = false;
    }
    summarize(statements, cur.hint(), broken)
}

fn summarize(statements: Vec<Statement>, hint: Option<Hint>, broken: bool) -> Classification {
    let hint = hint.map(|h| match h {
        Hint::Primary => Target::Primary,
        Hint::Replica => Target::Replica,
    });
    let kind = statements.first().map_or(StatementKind::Other, |s| s.kind);
    let first_primary = statements.iter().find(|s| s.target == Target::Primary);
    let (target, reason) = match (statements.is_empty(), hint, first_primary) {
        (true, _, _) if broken => (Target::Primary, reasons::UNSURE),
        (true, _, _) => (Target::Primary, reasons::EMPTY),
        (false, Some(h), _) => (h, reasons::HINT),
        (false, None, Some(p)) => (Target::Primary, p.reason),
        (false, None, None) => (Target::Replica, reasons::READ),
    };
    Classification { target, reason, kind, hint, statements }
}

/// Classifies one statement, consuming at least its first token. `nest` counts
/// enclosing EXPLAIN/COPY so they cannot recurse.
pub(super) fn statement(cur: &mut Cursor, cfg: &ClassifierConfig, nest: u8) -> Statement {
    let base = cur.depth();
    let Some(first) = cur.advance() else {
        return Statement::unsure();
    };
    let kw = match first.kind {
        TokenKind::LParen => return query::analyze(cur, cfg, first, base),
        TokenKind::Ident => keyword(cur.bytes(first)).map(|k| k.kw),
        _ => None,
    };
    let write = |kind| Statement::primary(reasons::WRITE, kind);
    match kw {
        Some(Kw::Select | Kw::Values | Kw::Table | Kw::With) => query::analyze(cur, cfg, first, base),
        Some(Kw::Insert) => query::analyze_write(cur, cfg, base, StatementKind::Insert),
        Some(Kw::Update) => query::analyze_write(cur, cfg, base, StatementKind::Update),
        Some(Kw::Delete) => query::analyze_write(cur, cfg, base, StatementKind::Delete),
        Some(Kw::Show) => Statement::replica(reasons::READ, StatementKind::Other).proven_pure(),
        Some(Kw::Explain) => explain(cur, cfg, nest),
        Some(Kw::Copy) => copy(cur, cfg, nest),
        Some(Kw::Create) => create(cur),
        Some(
            Kw::Merge
            | Kw::Alter
            | Kw::Drop
            | Kw::Truncate
            | Kw::Comment
            | Kw::Grant
            | Kw::Revoke
            | Kw::Reindex
            | Kw::Vacuum
            | Kw::Analyze
            | Kw::Cluster
            | Kw::Refresh
            | Kw::Security
            | Kw::Import
            | Kw::Reassign
            | Kw::Checkpoint
            | Kw::Do
            | Kw::Call
            | Kw::Lock,
        ) => write(StatementKind::Other),
        Some(kw) => session::utility(cur, kw).unwrap_or_else(Statement::unsure),
        None => Statement::unsure(),
    }
}

/// Whether the next token can start a query (COPY's inner query, EXPLAIN's target).
fn query_start(cur: &mut Cursor, extra: &[Kw]) -> bool {
    let Some(t) = cur.peek() else {
        return false;
    };
    if t.kind == TokenKind::LParen {
        return true;
    }
    let kw = match t.kind {
        TokenKind::Ident => keyword(cur.bytes(t)).map(|k| k.kw),
        _ => None,
    };
    let query = [Kw::Select, Kw::With, Kw::Values, Kw::Table, Kw::Insert, Kw::Update, Kw::Delete, Kw::Merge];
    kw.is_some_and(|k| query.contains(&k) || extra.contains(&k))
}

/// `EXPLAIN [ANALYZE] [VERBOSE] stmt` or `EXPLAIN (option, ...) stmt`.
fn explain(cur: &mut Cursor, cfg: &ClassifierConfig, nest: u8) -> Statement {
    if nest > 0 {
        return Statement::unsure();
    }
    let mut analyze = false;
    if cur.peek().is_some_and(|t| t.kind == TokenKind::LParen) {
        analyze = explain_options(cur);
    } else {
        analyze |= cur.eat_word("analyze") || cur.eat_word("analyse");
        cur.eat_word("verbose");
    }
    if !query_start(cur, &[Kw::Execute, Kw::Declare, Kw::Create]) {
        return Statement::unsure();
    }
    let inner = statement(cur, cfg, nest + 1);
    if inner.target == Target::Replica {
        Statement::replica(reasons::READ, StatementKind::Other)
    } else if analyze {
        // Only ANALYZE executes the statement, so only then can it leave session state.
        Statement::primary(reasons::EXPLAIN_ANALYZE_WRITE, StatementKind::Other).with_session(inner.session)
    } else {
        Statement::primary(inner.reason, StatementKind::Other)
    }
}

/// Consumes `( option [value], ... )`; returns whether ANALYZE ends up on.
fn explain_options(cur: &mut Cursor) -> bool {
    cur.advance();
    let inside = cur.depth();
    let mut analyze = false;
    while let Some(t) = cur.advance() {
        if cur.depth() < inside {
            break;
        }
        let is_analyze = cur.is_word(t, "analyze") || cur.is_word(t, "analyse");
        if !is_analyze || cur.depth() != inside {
            continue;
        }
        analyze = match cur.peek() {
            Some(v) if !matches!(v.kind, TokenKind::Comma | TokenKind::RParen) => {
                let value = cur.bytes(v);
                let value = value.strip_prefix(b"'").unwrap_or(value);
                let value = value.strip_suffix(b"'").unwrap_or(value);
                !["false", "off", "no", "0", "f", "n"].iter().any(|w| value.eq_ignore_ascii_case(w.as_bytes()))
            }
            _ => true,
        };
    }
    analyze
}

/// `COPY rel [(cols)] {FROM|TO} ...` or `COPY (query) TO ...`.
fn copy(cur: &mut Cursor, cfg: &ClassifierConfig, nest: u8) -> Statement {
    let inner = if cur.peek().is_some_and(|t| t.kind == TokenKind::LParen) {
        cur.advance();
        let old = cur.set_floor(cur.depth());
        let mut inner = if query_start(cur, &[]) { statement(cur, cfg, nest + 1) } else { Statement::unsure() };
        if let (SessionEffect::None, Some(pin)) = (&inner.session, query::scan_pins(cur)) {
            inner.session = SessionEffect::Pin(pin);
        }
        cur.set_floor(old);
        if !cur.advance().is_some_and(|t| t.kind == TokenKind::RParen) {
            return Statement::unsure();
        }
        Some(inner)
    } else if skip_relation(cur) {
        None
    } else {
        return Statement::unsure();
    };
    let direction = cur.advance();
    if direction.is_some_and(|t| cur.is_word(t, "from")) && inner.is_none() {
        return Statement::primary(reasons::COPY_FROM, StatementKind::Other);
    }
    if !direction.is_some_and(|t| cur.is_word(t, "to")) {
        return Statement::unsure();
    }
    // COPY TO a server file or program writes on whichever server runs it.
    if !cur.peek().is_some_and(|t| cur.is_word(t, "stdout")) {
        return Statement::unsure();
    }
    match inner {
        Some(s) if s.target == Target::Primary => Statement { kind: StatementKind::Other, tx: TxControl::None, ..s },
        _ => Statement::replica(reasons::READ, StatementKind::Other),
    }
}

/// Skips `[BINARY] name[.name...] [(columns)]`; false if there is no name.
fn skip_relation(cur: &mut Cursor) -> bool {
    cur.eat_word("binary");
    let mut expect_name = true;
    while let Some(t) = cur.peek() {
        match t.kind {
            TokenKind::Ident | TokenKind::QuotedIdent if expect_name => expect_name = false,
            TokenKind::Dot if !expect_name => expect_name = true,
            TokenKind::LParen if !expect_name => {
                cur.advance();
                let inside = cur.depth();
                while cur.advance().is_some() && cur.depth() >= inside {}
                return true;
            }
            _ => return !expect_name,
        }
        cur.advance();
    }
    !expect_name
}

/// Every CREATE writes; temporary objects also pin the session.
fn create(cur: &mut Cursor) -> Statement {
    cur.track_atomic();
    let st = Statement::primary(reasons::WRITE, StatementKind::Other);
    while let Some(t) = cur.peek() {
        let kw = match t.kind {
            TokenKind::Ident => keyword(cur.bytes(t)).map(|k| k.kw),
            _ => None,
        };
        match kw {
            Some(Kw::Or | Kw::Replace | Kw::Global | Kw::Local) => {
                cur.advance();
            }
            Some(Kw::Temp | Kw::Temporary) => {
                return st.with_session(SessionEffect::Pin("temp_table"));
            }
            _ => break,
        }
    }
    st
}
