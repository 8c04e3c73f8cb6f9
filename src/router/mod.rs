//! Routing: the SQL classifier (a real lexer, pure, cached by text) that says whether a statement
//! may run on a replica, and what it does to the transaction and the session.

pub mod cache;
pub mod classify;
mod cursor;
mod functions;
mod keywords;
mod lexer;
#[cfg(test)]
mod purity_tests;
mod query;
mod session;
#[cfg(test)]
mod tests;

pub use cache::ClassifierCache;
pub use classify::{
    classify, reasons, Classification, ClassifierConfig, SessionEffect, Statement, StatementKind, Target, TxControl,
};
pub use session::{is_reserved_name, RESERVED_PREFIX};

/// A quick look that proves a simple query is one plain SELECT, INSERT, UPDATE or DELETE that
/// changes no session state (no function call, advisory lock, set_config, or temporary table
/// anywhere in it):
/// its kind, or `None` when only a full classification can tell. Conservative by construction:
/// comments, several statements, or any suspicious word send it to the classifier. Works on the
/// raw bytes (it only looks at ASCII), so it needs no UTF-8 check either.
pub fn plain_statement(sql: &[u8]) -> Option<StatementKind> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let s = &sql[start..];
    let word_end = s.iter().position(|b| !b.is_ascii_alphabetic()).unwrap_or(s.len());
    let word = &s[..word_end];
    let kind = [
        (&b"select"[..], StatementKind::Select),
        (b"insert", StatementKind::Insert),
        (b"update", StatementKind::Update),
        (b"delete", StatementKind::Delete),
    ]
    .into_iter()
    .find(|(w, _)| word.eq_ignore_ascii_case(w))?
    .1;
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |e| e + 1);
    let body = &s[..end];
    let body = body.strip_suffix(b";").unwrap_or(body);
    // One pass: statement separators, comments, and the words that can carry session state.
    // A table marks the few bytes worth a second look, so most bytes cost one load and a test.
    for (i, &b) in body.iter().enumerate() {
        if !INTERESTING[b as usize] {
            continue;
        }
        let suspect = match b {
            // A call may be of a function that changes the session: let the classifier see it.
            b';' | b'(' => true,
            b'-' => body.get(i + 1) == Some(&b'-'),
            b'/' => body.get(i + 1) == Some(&b'*'),
            // the second letter first: most a/s/t in SQL text start none of these words
            b'a' | b'A' => second_is(body, i, b'd') && starts_with_ignore_case(&body[i..], b"advisory"),
            b's' | b'S' => second_is(body, i, b'e') && starts_with_ignore_case(&body[i..], b"set_config"),
            _ => second_is(body, i, b'e') && starts_with_ignore_case(&body[i..], b"temp"),
        };
        if suspect {
            return None;
        }
    }
    Some(kind)
}

/// Bytes [`plain_statement`] must look at more closely.
static INTERESTING: [bool; 256] = {
    let mut t = [false; 256];
    let bytes = b";-/aAsStT(";
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
};

fn second_is(body: &[u8], i: usize, lower: u8) -> bool {
    body.get(i + 1).is_some_and(|c| c.to_ascii_lowercase() == lower)
}

fn starts_with_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.get(..needle.len()).is_some_and(|h| h.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod plain_tests {
    use super::*;

    #[test]
    fn plain_statements_and_suspects() {
        assert_eq!(
            plain_statement(b"SELECT abalance FROM pgbench_accounts WHERE aid = 42;"),
            Some(StatementKind::Select)
        );
        assert_eq!(plain_statement(b"  update t set v = 1"), Some(StatementKind::Update));
        assert_eq!(plain_statement(b"select pg_advisory_lock(1)"), None);
        assert_eq!(plain_statement(b"select set_config('a', 'b', false)"), None);
        assert_eq!(plain_statement(b"select * into temp t from x"), None);
        assert_eq!(plain_statement(b"select 1; set search_path = x"), None);
        assert_eq!(plain_statement(b"/* c */ select 1"), None);
        assert_eq!(plain_statement(b"set search_path = x"), None);
        assert_eq!(plain_statement(b"begin"), None);
        // everything the full classifier pins or tracks as session state is refused here
        for sql in ["select pg_try_advisory_lock(1)", "SELECT SET_CONFIG('x','y',false)", "create temp table t()"] {
            assert_eq!(plain_statement(sql.as_bytes()), None, "{sql}");
        }
    }
}
