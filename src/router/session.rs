//! Utility statements that change transaction or session state: BEGIN/COMMIT/...,
//! SET/RESET/DISCARD, prepared statements, cursors, LISTEN/UNLISTEN/NOTIFY, LOAD.

use super::classify::{reasons, SessionEffect, Statement, StatementKind, Target, TxControl};
use super::cursor::Cursor;
use super::keywords::Kw;
use super::lexer::{Token, TokenKind};

/// Classifies a statement starting with keyword `kw` (already consumed), or `None` if
/// `kw` does not start one of the statements handled here.
pub(super) fn utility(cur: &mut Cursor, kw: Kw) -> Option<Statement> {
    let st = match kw {
        Kw::Begin => begin(cur, false),
        Kw::Start => begin(cur, true),
        Kw::Commit | Kw::End => commit(cur),
        Kw::Rollback | Kw::Abort => rollback(cur),
        Kw::Savepoint | Kw::Release => tx(TxControl::Savepoint),
        Kw::Set => set(cur),
        Kw::Reset => reset(cur),
        Kw::Discard => discard(cur),
        Kw::Deallocate => deallocate(cur),
        Kw::Listen => listen(cur),
        Kw::Unlisten => unlisten(cur),
        Kw::Notify => Statement::primary(reasons::LISTEN_NOTIFY, StatementKind::Other).proven_pure(),
        Kw::Prepare => prepare(cur),
        Kw::Execute => match cur.advance().and_then(|t| ident_text(cur, t)) {
            Some(name) if is_reserved_name(&name) => session(SessionEffect::ReservedName),
            _ => Statement { runs_sql: true, ..session(SessionEffect::None) },
        },
        Kw::Declare => declare(cur),
        Kw::Load => session(SessionEffect::Pin("load")),
        // Cursors live inside the transaction that declared them.
        Kw::Fetch | Kw::Move | Kw::Close => tx(TxControl::None),
        _ => return None,
    };
    Some(st)
}

fn tx(tx: TxControl) -> Statement {
    Statement { tx, ..Statement::primary(reasons::TRANSACTION, StatementKind::Other) }.proven_pure()
}

/// A session statement: pure when pgshift tracks its effect (SET, RESET, DISCARD ALL,
/// DEALLOCATE are replayed or answered per client), not when it pins or is only passed on.
fn session(effect: SessionEffect) -> Statement {
    let tracked = matches!(
        effect,
        SessionEffect::Set { .. } | SessionEffect::Reset { .. } | SessionEffect::ResetAll | SessionEffect::DiscardAll
    );
    let st = Statement::primary(reasons::SESSION, StatementKind::Other).with_session(effect);
    if tracked {
        st.proven_pure()
    } else {
        st
    }
}

/// `BEGIN [WORK|TRANSACTION] [modes]` / `START TRANSACTION [modes]`.
///
/// A READ ONLY transaction may run on a replica, except SERIALIZABLE: hot standbys
/// reject it ("cannot use serializable mode in a hot standby").
fn begin(cur: &mut Cursor, start: bool) -> Statement {
    if start && !cur.eat_word("transaction") {
        return Statement::unsure();
    }
    if !start && !cur.eat_word("work") {
        cur.eat_word("transaction");
    }
    let (mut read_only, mut serializable) = (false, false);
    while let Some(t) = cur.advance() {
        if cur.is_word(t, "read") {
            if cur.eat_word("only") {
                read_only = true;
            } else if cur.eat_word("write") {
                read_only = false;
            }
        } else if cur.is_word(t, "serializable") {
            serializable = true;
        }
    }
    let mut st = tx(TxControl::Begin { read_only });
    if read_only && !serializable {
        st.target = Target::Replica;
    }
    st
}

/// `COMMIT`/`END`; `COMMIT PREPARED` finishes some other, prepared transaction.
fn commit(cur: &mut Cursor) -> Statement {
    if cur.eat_word("prepared") {
        return tx(TxControl::None);
    }
    tx(TxControl::Commit)
}

/// `ROLLBACK`/`ABORT`, `ROLLBACK TO [SAVEPOINT] x`, `ROLLBACK PREPARED 'gid'`.
fn rollback(cur: &mut Cursor) -> Statement {
    if cur.eat_word("prepared") {
        return tx(TxControl::None);
    }
    if !cur.eat_word("work") {
        cur.eat_word("transaction");
    }
    if cur.eat_word("to") {
        return tx(TxControl::Savepoint);
    }
    tx(TxControl::Rollback)
}

/// The SET family. `SET LOCAL` only lasts for the transaction, so it has no session
/// effect; `SET ROLE` / `SET SESSION AUTHORIZATION` pin rather than replay, because
/// replaying them needs privileges the pooled connection may not have.
fn set(cur: &mut Cursor) -> Statement {
    let local = cur.eat_word("local");
    let session_scope = !local && cur.eat_word("session");
    let Some(t) = cur.peek() else {
        return Statement::unsure();
    };
    let effect = if cur.is_word(t, "role") || (session_scope && cur.is_word(t, "authorization")) {
        SessionEffect::Pin("set_role")
    } else if session_scope && cur.is_word(t, "characteristics") {
        SessionEffect::Pin("session_characteristics")
    } else if cur.is_word(t, "transaction") || cur.is_word(t, "constraints") {
        return tx(TxControl::None);
    } else {
        match set_value(cur) {
            // The same two spelled as settings (`SET "role" = x`, `SET session_authorization TO
            // x`): RESET ALL and DISCARD ALL's RESET leave them as they are.
            Some(SessionEffect::Set { name, .. } | SessionEffect::Reset { name })
                if name == "role" || name == "session_authorization" =>
            {
                SessionEffect::Pin("set_role")
            }
            // Sets the random seed, which no reset undoes.
            Some(SessionEffect::Set { name, .. } | SessionEffect::Reset { name }) if name == "seed" => {
                SessionEffect::Pin("setseed")
            }
            Some(effect) => effect,
            None => return Statement::unsure(),
        }
    };
    // With standard_conforming_strings off, PostgreSQL splits statements into other tokens than
    // the classifier does, even for one transaction (SET LOCAL): such a client keeps its server,
    // its statements prove nothing, and the server is closed after it.
    if matches!(&effect, SessionEffect::Set { name, .. } | SessionEffect::Reset { name } if splits_strings(name)) {
        return session(SessionEffect::Pin("standard_conforming_strings"));
    }
    if matches!(&effect, SessionEffect::Set { name, value } if name == "client_encoding" && crate::encoding::client_only(value))
    {
        return session(SessionEffect::Pin("client_encoding"));
    }
    // A search path naming pg_catalog after another schema lets a user's function stand in for
    // a built-in that pgshift reads as harmless: the server is reset after whatever ran with it.
    if matches!(&effect, SessionEffect::Set { name, value } if name == "search_path" && super::marks::search_path_shadows(value))
    {
        let effect = if local { SessionEffect::None } else { effect };
        return Statement::primary(reasons::SESSION, StatementKind::Other).with_session(effect);
    }
    if local && matches!(&effect, SessionEffect::Set { name, .. } | SessionEffect::Reset { name } if name.contains('.'))
    {
        // A custom setting (`app.tenant`) for the transaction: transaction state, which changes
        // nothing in how PostgreSQL parses statements.
        return tx(TxControl::None);
    }
    if local && !matches!(&effect, SessionEffect::Pin("setseed")) {
        // Lasts until the transaction ends: nothing for the next client to see (a built-in
        // setting may still change how statements parsed in this transaction read).
        return session(SessionEffect::None).proven_pure();
    }
    session(effect)
}

/// `name {TO|=} value`, `TIME ZONE value`, `SCHEMA 'x'`, `NAMES 'x'`, `XML OPTION x`.
fn set_value(cur: &mut Cursor) -> Option<SessionEffect> {
    let first = cur.advance()?;
    let name = if cur.is_word(first, "time") && cur.eat_word("zone") {
        "timezone".to_string()
    } else if cur.is_word(first, "schema") {
        "search_path".to_string()
    } else if cur.is_word(first, "names") {
        "client_encoding".to_string()
    } else if cur.is_word(first, "xml") && cur.eat_word("option") {
        "xmloption".to_string()
    } else {
        let name = dotted_name(cur, first)?;
        let sep = cur.advance()?;
        let is_eq = sep.kind == TokenKind::Operator && cur.bytes(sep) == b"=";
        if !is_eq && !cur.is_word(sep, "to") {
            return None;
        }
        name
    };
    let value_start = cur.advance()?;
    let mut value_end = value_start;
    while let Some(t) = cur.advance() {
        value_end = t;
    }
    let single = value_end == value_start;
    let default = cur.is_word(value_start, "default") || (name == "timezone" && cur.is_word(value_start, "local"));
    if single && default {
        return Some(SessionEffect::Reset { name });
    }
    let value = cur.text(value_start, value_end).trim().to_string();
    Some(SessionEffect::Set { name, value })
}

/// `RESET name | ALL | TIME ZONE | SESSION AUTHORIZATION | TRANSACTION ISOLATION LEVEL`.
fn reset(cur: &mut Cursor) -> Statement {
    let Some(first) = cur.advance() else {
        return Statement::unsure();
    };
    let name = if cur.is_word(first, "all") {
        return session(SessionEffect::ResetAll);
    } else if cur.is_word(first, "time") && cur.eat_word("zone") {
        Some("timezone".to_string())
    } else if cur.is_word(first, "session") && cur.eat_word("authorization") {
        Some("session_authorization".to_string())
    } else if cur.is_word(first, "transaction") && cur.eat_word("isolation") {
        cur.eat_word("level");
        Some("transaction_isolation".to_string())
    } else {
        dotted_name(cur, first)
    };
    match name {
        // RESET seed sets the random seed to 0: no later reset undoes it.
        Some(name) if name == "seed" && cur.peek().is_none() => session(SessionEffect::Pin("setseed")),
        Some(name) if cur.peek().is_none() => session(SessionEffect::Reset { name }),
        _ => Statement::unsure(),
    }
}

/// `DISCARD ALL | PLANS | SEQUENCES | TEMP | TEMPORARY`.
fn discard(cur: &mut Cursor) -> Statement {
    let Some(t) = cur.advance() else {
        return Statement::unsure();
    };
    if cur.is_word(t, "all") {
        return session(SessionEffect::DiscardAll);
    }
    let known = ["plans", "sequences", "temp", "temporary"];
    if known.iter().any(|w| cur.is_word(t, w)) {
        return session(SessionEffect::None);
    }
    Statement::unsure()
}

/// `DEALLOCATE [PREPARE] name | ALL`.
fn deallocate(cur: &mut Cursor) -> Statement {
    cur.eat_word("prepare");
    let Some(t) = cur.advance() else {
        return Statement::unsure();
    };
    if cur.is_word(t, "all") {
        return session(SessionEffect::Deallocate { name: None });
    }
    match ident_text(cur, t) {
        Some(name) if is_reserved_name(&name) => session(SessionEffect::ReservedName),
        Some(name) => session(SessionEffect::Deallocate { name: Some(name) }),
        None => Statement::unsure(),
    }
}

/// Statement names pgshift uses on servers: `pgshift_` and anything after it.
pub fn is_reserved_name(name: &str) -> bool {
    name.as_bytes().get(..RESERVED_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

/// The prefix of every statement name pgshift prepares on a server.
pub const RESERVED_PREFIX: &str = "pgshift_";

fn listen(cur: &mut Cursor) -> Statement {
    match cur.advance().and_then(|t| ident_text(cur, t)) {
        Some(channel) => Statement::primary(reasons::LISTEN_NOTIFY, StatementKind::Other)
            .with_session(SessionEffect::Listen { channel }),
        None => Statement::unsure(),
    }
}

fn unlisten(cur: &mut Cursor) -> Statement {
    let Some(t) = cur.advance() else {
        return Statement::unsure();
    };
    let channel = if t.kind == TokenKind::Operator && cur.bytes(t) == b"*" {
        None
    } else {
        match ident_text(cur, t) {
            Some(channel) => Some(channel),
            None => return Statement::unsure(),
        }
    };
    Statement::primary(reasons::LISTEN_NOTIFY, StatementKind::Other).with_session(SessionEffect::Unlisten { channel })
}

/// `PREPARE name AS ...` pins; `PREPARE TRANSACTION 'gid'` is two-phase commit.
fn prepare(cur: &mut Cursor) -> Statement {
    if cur.eat_word("transaction") {
        return tx(TxControl::None);
    }
    if cur.advance().and_then(|t| ident_text(cur, t)).is_some_and(|n| is_reserved_name(&n)) {
        return session(SessionEffect::ReservedName);
    }
    Statement { runs_sql: true, ..session(SessionEffect::Pin("sql_prepare")) }
}

/// `DECLARE name ... CURSOR [WITH HOLD] FOR query`: only WITH HOLD outlives the transaction.
fn declare(cur: &mut Cursor) -> Statement {
    while let Some(t) = cur.advance() {
        if cur.is_word(t, "for") {
            break;
        }
        if cur.is_word(t, "with") && cur.eat_word("hold") {
            return Statement { runs_sql: true, ..session(SessionEffect::Pin("with_hold_cursor")) };
        }
    }
    // The cursor's query is not analysed here: it may call anything.
    Statement { pure: false, runs_sql: true, ..tx(TxControl::None) }
}

/// `a.b.c` as a setting name, lower-cased: PostgreSQL finds settings by name without regard to
/// case, quoted or not (`SET "Role" = x` sets the role).
fn dotted_name(cur: &mut Cursor, first: Token) -> Option<String> {
    let mut name = ident_text(cur, first)?;
    while cur.peek().is_some_and(|t| t.kind == TokenKind::Dot) {
        cur.advance();
        let part = cur.advance()?;
        name.push('.');
        name.push_str(&ident_text(cur, part)?);
    }
    name.make_ascii_lowercase();
    Some(name)
}

/// Identifier text as PostgreSQL folds it; `None` if `t` is not an identifier.
pub(super) fn ident_text(cur: &Cursor, t: Token) -> Option<String> {
    let raw = cur.text(t, t);
    match t.kind {
        TokenKind::Ident => Some(raw.to_ascii_lowercase()),
        TokenKind::QuotedIdent => {
            let open = raw.find('"')?;
            let body = raw.get(open + 1..raw.len().saturating_sub(1))?;
            Some(body.replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// Settings that change how PostgreSQL reads string literals, so how it splits statements.
pub(super) fn splits_strings(name: &str) -> bool {
    name.eq_ignore_ascii_case("standard_conforming_strings") || name.eq_ignore_ascii_case("backslash_quote")
}
