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

/// Plain statements: routed without a parse.
const PLAIN: &[(&str, StatementKind)] = &[
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 42;", StatementKind::Select),
    ("select a / 2 - 1 from t where b = -3", StatementKind::Select),
    (
        "SELECT \"t\".\"id\", \"t\".\"name\" FROM \"app_user\" \"t\" WHERE \"t\".\"id\" = 7 LIMIT 21",
        StatementKind::Select,
    ),
    (
        "select * from t where name = 'it''s' and tag = E'x' and b = B'0101' order by id desc limit 10 offset 5",
        StatementKind::Select,
    ),
    ("SELECT a, b FROM s.t JOIN u ON u.id = t.uid WHERE t.x >= 1.5e3 AND u.y <> 'a\"b'", StatementKind::Select),
    ("select 1 union all select 2", StatementKind::Select),
    ("SELECT x::int FROM t WHERE y ~~ 'a%'", StatementKind::Select),
    ("UPDATE pgbench_accounts SET abalance = abalance + -4417 WHERE aid = 81;", StatementKind::Update),
    ("update t set a = b from u where u.x = t.x returning *", StatementKind::Update),
    ("delete from t where at = 'x'", StatementKind::Delete),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 81, -4417, CURRENT_TIMESTAMP);",
        StatementKind::Insert,
    ),
    ("insert into t(a,b)values(1,'x'),(2,'y') ", StatementKind::Insert),
];

/// Texts the quick look accepts that are not plain for routing (or that it cannot prove are).
const NOT_PLAIN: &[&str] = &[
    "SELECT2PPP",
    "select_x from t",
    "SELECT * FROM t FOR UPDATE",
    "select * from t for share",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t for key share",
    "SELECT key share FROM t",
    "select a from t where x = 1 key update",
    "SELECT update FROM t",
    "SELECT insert, delete, merge FROM t",
    "SELECT * FROM information_schema.tables",
    "SELECT 1)",
    "SELECT 'C:\\path'",
    "SELECT E'\\''",
    "SELECT 'unterminated",
    "SELECT \"unterminated",
    "SELECT $$x$$",
    "SELECT $1",
    "SELECT `x` FROM t",
    "SELECT {x} FROM t",
    "SELECT a[1] FROM t",
    "SELECT 'é' FROM t",
    "SELECT 1\u{b} FROM t",
    "UPDATE t SET update = 1",
    "update t set a = 1 where b in (select 1)",
    "UPDATE t SET a = 'x\\'",
    "delete from t where a = 1 for update",
    "insert into t (delete) values (1)",
    "insert into t values ('unterminated)",
    "insert into t values (1))",
    "INSERT t.)",
    "insert into t default values",
    "BEGIN",
    "COMMIT",
];

#[test]
fn a_plain_statement_classifies_as_its_kinds_sample() {
    use super::{plain_class, plain_sample};
    for (sql, kind) in PLAIN {
        assert_eq!(plain_class(sql.as_bytes()), Some(*kind), "{sql}");
    }
    for sql in NOT_PLAIN {
        assert_eq!(plain_class(sql.as_bytes()), None, "{sql}");
    }
    let read = classify(plain_sample(StatementKind::Select), &ClassifierConfig::default());
    assert_eq!(read.target, crate::router::Target::Replica);
    assert!(read.pure() && read.hint.is_none() && read.statements.len() == 1);
    let every = PLAIN.iter().map(|(s, _)| *s).chain(NOT_PLAIN.iter().copied());
    let every = every.chain(ACCEPTED.iter().map(|(s, _)| *s)).chain(REFUSED.iter().copied());
    for scs in [false, true] {
        let cfg = ClassifierConfig { standard_conforming_strings: scs, ..ClassifierConfig::default() };
        for sql in every.clone().chain(super::super::tests::CASES.iter().map(|(s, _, _)| *s)) {
            if let Some(kind) = plain_class(sql.as_bytes()) {
                let sample = classify(plain_sample(kind), &ClassifierConfig::default());
                assert_eq!(classify(sql, &cfg), sample, "{sql}");
                assert!(sample.pure() && sample.statements.len() == 1 && sample.kind == kind, "{sql}");
            }
        }
    }
}
