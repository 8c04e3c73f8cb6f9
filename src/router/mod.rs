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
    // memchr scans a word at a time; only its few hits get a closer look.
    // `;` separates statements; `(` is any function call (set_config, pg_advisory_lock, a user
    // function: none can be called without one), so it goes to the classifier.
    if memchr::memchr2(b';', b'(', body).is_some() {
        return None;
    }
    let comment = memchr::memchr2_iter(b'-', b'/', body)
        .any(|i| matches!((body[i], body.get(i + 1)), (b'-', Some(b'-')) | (b'/', Some(b'*'))));
    // `temp`: SELECT INTO TEMP, or a table in pg_temp, is a session's own state.
    let temp = memchr::memchr2_iter(b't', b'T', body)
        .any(|i| body.get(i + 1..i + 4).is_some_and(|w| w.eq_ignore_ascii_case(b"emp")));
    if comment || temp {
        return None;
    }
    Some(kind)
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
        assert_eq!(plain_statement(b"select a / 2 - 1 from t where b = -3"), Some(StatementKind::Select));
        assert_eq!(plain_statement(b"delete from t where at = 'x'"), Some(StatementKind::Delete));
        // everything the full classifier pins or tracks as session state is refused here
        for sql in [
            "select pg_try_advisory_lock(1)",
            "SELECT SET_CONFIG('x','y',false)",
            "create temp table t()",
            "SELECT * INTO TEMPORARY t FROM x",
            "select * from pg_temp.t",
            "select 1 -- a comment",
            "select 1 /* a comment */",
            "select 'a;b'",
            "select f (1)",
        ] {
            assert_eq!(plain_statement(sql.as_bytes()), None, "{sql}");
        }
    }
}
