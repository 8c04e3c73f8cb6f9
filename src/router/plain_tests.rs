//! The quick look's verdicts, and its agreement with the full classifier on all it accepts.

use super::plain_statement;
use crate::router::{classify, ClassifierConfig, SessionEffect, StatementKind};

const ACCEPTED: &[(&str, StatementKind)] = &[
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 42;", StatementKind::Select),
    ("  update t set v = 1", StatementKind::Update),
    ("select a / 2 - 1 from t where b = -3", StatementKind::Select),
    ("delete from t where at = 'x'", StatementKind::Delete),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 81, -4417, CURRENT_TIMESTAMP);",
        StatementKind::Insert,
    ),
    ("insert into s.t values (1, 'it''s (not) a call', null, true, 2.5e-3, +4, default)", StatementKind::Insert),
    ("insert into t(a,b)values(1,'x'),(2,'y') ", StatementKind::Insert),
    ("insert into t values (localtimestamp), (current_date)", StatementKind::Insert),
    ("insert into t default values", StatementKind::Insert),
    ("BEGIN;", StatementKind::Other),
    ("begin transaction", StatementKind::Other),
    ("END", StatementKind::Other),
    ("commit work;", StatementKind::Other),
    ("  Rollback ", StatementKind::Other),
    ("abort transaction", StatementKind::Other),
];

const REFUSED: &[&str] = &[
    "select pg_advisory_lock(1)",
    "select pg_try_advisory_lock(1)",
    "select set_config('a', 'b', false)",
    "SELECT SET_CONFIG('x','y',false)",
    "select * into temp t from x",
    "create temp table t()",
    "SELECT * INTO TEMPORARY t FROM x",
    "select * from pg_temp.t",
    "select 1; set search_path = x",
    "/* c */ select 1",
    "select 1 -- a comment",
    "select 1 /* a comment */",
    "select 'a;b'",
    "select f (1)",
    "set search_path = x",
    // inserts that are not literal rows
    "insert into t values (now())",
    "insert into t values (1, f(2))",
    "insert into t values ((select pg_advisory_lock(1)))",
    "insert into t values (current_timestamp(3))",
    "insert into t values ('1'::int)",
    "insert into t values (1 + 2)",
    "insert into t values (- 1)",
    "insert into t values (1abc)",
    "insert into t values (1.2.3)",
    "insert into t values (E'\\'')",
    "insert into t values ('a\\'), (pg_advisory_lock(1))--')",
    "insert into t values ($$x$$)",
    "insert into \"T\" values (1)",
    "insert into t values (1) returning id",
    "insert into t values (1) on conflict do nothing",
    "insert into t (a) select f(1)",
    "insert into t values ('temp')",
    "insert into pg_temp.t values (1)",
    "insert into t values (1); select pg_advisory_lock(1)",
    "insert into t values (1) --(\n",
    "insert into t values (1), (2",
    "insert into t values ('unterminated)",
    "insert into t values ()",
    "insert into t (a.b) values (1)",
    "with x as (select 1) insert into t values (1)",
    // tables a SELECT creates, and SETs in disguise
    "select * into accounts from t",
    "select 1 as a into U&\"pg_t\\0065mp\".x",
    "select 1 as a into U&\"pg_t!0065mp\" UESCAPE '!'",
    "select 'a\\', ' into x from t",
    "update pg_settings set setting = 'evil, public' where name = 'search_path'",
    "UPDATE pg_catalog.PG_SETTINGS SET setting = '0' WHERE name = 'statement_timeout'",
    "update U&\"pg_setting\\0073\" set setting = 'x' where name = 'search_path'",
    // transaction control with more than the bare words
    "begin isolation level serializable",
    "begin read only",
    "start transaction",
    "commit prepared 'x'",
    "rollback to s",
    "rollback prepared 'x'",
    "commit and chain",
    "begin; select pg_advisory_lock(1)",
    "begin work transaction",
    "savepoint s",
];

#[test]
fn plain_shapes_pass_and_suspects_do_not() {
    for (sql, kind) in ACCEPTED {
        assert_eq!(plain_statement(sql.as_bytes()), Some(*kind), "{sql}");
    }
    for sql in REFUSED {
        assert_eq!(plain_statement(sql.as_bytes()), None, "{sql}");
    }
}

#[test]
fn what_the_quick_look_accepts_the_classifier_calls_one_pure_statement_of_that_kind() {
    for scs in [false, true] {
        let cfg = ClassifierConfig { standard_conforming_strings: scs, ..ClassifierConfig::default() };
        for sql in ACCEPTED.iter().map(|(s, _)| *s).chain(REFUSED.iter().copied()) {
            let Some(kind) = plain_statement(sql.as_bytes()) else {
                continue;
            };
            let c = classify(sql, &cfg);
            assert_eq!(c.statements.len(), 1, "{sql}: {c:?}");
            assert_eq!(c.kind, kind, "{sql}: {c:?}");
            assert!(c.pure(), "{sql}: {c:?}");
            assert_eq!(c.statements[0].session, SessionEffect::None, "{sql}: {c:?}");
        }
    }
}
