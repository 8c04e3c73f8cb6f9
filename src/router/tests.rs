//! Table-driven tests for the classifier, plus lexer, cache, fuzz and benchmark tests.

use std::sync::Arc;

use super::cache::ClassifierCache;
use super::classify::{classify, reasons::*, ClassifierConfig, SessionEffect, StatementKind, Target, TxControl};
use super::functions::{SAFE_FUNCTIONS, SIDE_EFFECT_FUNCTIONS};
use super::keywords::KEYWORDS;
use super::lexer::{detect_hint, Hint, Lexer, TokenKind};

const P: Target = Target::Primary;
const R: Target = Target::Replica;

/// (sql, target, reason) with the default config.
pub(super) const CASES: &[(&str, Target, &str)] = &[
    // --- plain reads, case and whitespace -------------------------------------------
    ("SELECT 1", R, READ),
    ("select 1", R, READ),
    ("SeLeCt 1", R, READ),
    ("  \n\tSELECT\n1\n", R, READ),
    ("select 1;", R, READ),
    ("select 1 ;  ", R, READ),
    ("select 1;;;", R, READ),
    ("SELECT * FROM users", R, READ),
    ("SELECT a, b FROM t WHERE x = $1 AND y = $2 ORDER BY a DESC LIMIT 10 OFFSET 20", R, READ),
    ("VALUES (1, 'a'), (2, 'b')", R, READ),
    ("TABLE users", R, READ),
    ("table users;", R, READ),
    ("SHOW search_path", R, READ),
    ("show all", R, READ),
    ("(SELECT 1)", R, READ),
    ("(SELECT 1) UNION (SELECT 2)", R, READ),
    ("((SELECT 1) UNION ALL (SELECT 2)) ORDER BY 1", R, READ),
    ("SELECT 1 UNION SELECT 2 INTERSECT SELECT 3 EXCEPT SELECT 4", R, READ),
    ("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b", R, READ),
    ("SELECT * FROM t WHERE a IN (1, 2, 3) AND b NOT IN (SELECT c FROM u)", R, READ),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)", R, READ),
    ("SELECT * FROM t WHERE id = ANY($1)", R, READ),
    ("SELECT * FROM t WHERE id = ANY (ARRAY[1,2,3])", R, READ),
    ("SELECT * FROM a JOIN b ON a.id = b.a_id LEFT JOIN c USING (id)", R, READ),
    ("SELECT * FROM t1 CROSS JOIN LATERAL (SELECT * FROM t2 WHERE t2.a = t1.a LIMIT 1) s", R, READ),
    ("SELECT * FROM t, LATERAL unnest(t.arr) AS u(x)", R, READ),
    ("SELECT * FROM generate_series(1, 10) g(i)", R, READ),
    ("SELECT * FROM generate_series(1, 10) AS g(i)", R, READ),
    ("SELECT * FROM unnest($1::int[]) WITH ORDINALITY AS u(id, ord)", R, READ),
    ("SELECT * FROM (VALUES (1, 2)) v(a, b)", R, READ),
    ("SELECT * FROM \"Users\" \"u\"(a, b)", R, READ),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", R, READ),
    ("SELECT * FROM t TABLESAMPLE bernoulli(5) REPEATABLE (42)", R, READ),
    ("SELECT * FROM ONLY parent_table", R, READ),
    ("SELECT 1 FOR READ ONLY", R, READ),
    // --- comments everywhere ---------------------------------------------------------
    ("/* leading */ SELECT 1", R, READ),
    ("-- leading\nSELECT 1", R, READ),
    ("SELECT /* INSERT INTO t */ 1", R, READ),
    ("SELECT 1 -- ; DELETE FROM t", R, READ),
    ("SELECT 1 /* outer /* nested DELETE */ still comment; UPDATE t */", R, READ),
    ("SELECT 1 --\n", R, READ),
    ("SELECT a--comment\nFROM t", R, READ),
    ("SELECT 2-/**/-1", R, READ),
    ("/* a */ /* b */ -- c\n SELECT /* d */ * /* e */ FROM /* f */ t /* g */", R, READ),
    ("-- DELETE FROM t\nSELECT 1", R, READ),
    ("/* DROP TABLE x; */ select 1", R, READ),
    // --- literals --------------------------------------------------------------------
    ("SELECT ';'", R, READ),
    ("SELECT 'INSERT INTO t VALUES (1)'", R, READ),
    ("SELECT 'a;b' FROM t WHERE c = 'FOR UPDATE'", R, READ),
    ("SELECT 'it''s; DELETE'", R, READ),
    ("SELECT E'it\\'s; DELETE FROM t'", R, READ),
    ("SELECT e'\\\\'", R, READ),
    ("SELECT U&'d\\0061t\\+000061; DELETE'", R, READ),
    ("SELECT B'1010', X'FF', N'nat'", R, READ),
    ("SELECT $$DELETE FROM t; $$", R, READ),
    ("SELECT $tag$ $$ ; UPDATE t SET x = 1 $tag$", R, READ),
    ("SELECT $a$x$a$, $b$y$b$", R, READ),
    ("SELECT \"select\", \"for\", \"update\" FROM \"from\"", R, READ),
    ("SELECT \"a\"\"b\" FROM t", R, READ),
    ("SELECT 'a' 'b'", R, READ),
    ("SELECT 1.5e-3, .5, 1e10, 0x1F, 1_000", R, READ),
    ("SELECT 'C:\\path'", P, UNSURE),
    ("SELECT 'a\\', 'b; DELETE FROM t; --'", P, UNSURE),
    ("SELECT 'unterminated", P, UNSURE),
    ("SELECT \"unterminated", P, UNSURE),
    ("SELECT $$unterminated", P, UNSURE),
    ("SELECT 1 /* unterminated", P, UNSURE),
    ("SELECT E'\\'", P, UNSURE),
    // --- column names that look like keywords ----------------------------------------
    ("SELECT update_at, for_update, insert_id, deleted FROM t", R, READ),
    ("SELECT t.update, t.delete FROM t", R, READ),
    ("SELECT 1 AS update", R, READ),
    ("SELECT \"update\" FROM t FOR SHARE", P, LOCKING_READ),
    ("SELECT update FROM t", P, UNSURE),
    // --- locking reads ---------------------------------------------------------------
    ("SELECT * FROM t FOR UPDATE", P, LOCKING_READ),
    ("select * from t for update", P, LOCKING_READ),
    ("SELECT * FROM t FOR NO KEY UPDATE", P, LOCKING_READ),
    ("SELECT * FROM t FOR SHARE", P, LOCKING_READ),
    ("SELECT * FROM t FOR KEY SHARE", P, LOCKING_READ),
    ("SELECT * FROM t FOR UPDATE SKIP LOCKED", P, LOCKING_READ),
    ("SELECT * FROM t FOR UPDATE OF t SKIP LOCKED", P, LOCKING_READ),
    ("SELECT * FROM t FOR SHARE OF t NOWAIT", P, LOCKING_READ),
    ("SELECT * FROM t WHERE id = $1 LIMIT 1 FOR UPDATE", P, LOCKING_READ),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", P, LOCKING_READ),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)", P, LOCKING_READ),
    ("SELECT * FROM t FOR\n  UPDATE", P, LOCKING_READ),
    ("SELECT * FROM t FOR /* c */ UPDATE", P, LOCKING_READ),
    // --- SELECT INTO -----------------------------------------------------------------
    ("SELECT * INTO new_t FROM t", P, SELECT_INTO),
    ("SELECT a INTO TEMP tmp FROM t", P, SELECT_INTO),
    ("SELECT 'INTO' FROM t", R, READ),
    ("INSERT INTO t SELECT * FROM u", P, WRITE),
    ("SELECT * FROM t WHERE x IN (SELECT y FROM u)", R, READ),
    // --- CTEs ------------------------------------------------------------------------
    ("WITH x AS (SELECT 1) SELECT * FROM x", R, READ),
    ("WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 10) SELECT sum(n) FROM t", R, READ),
    ("WITH a AS MATERIALIZED (SELECT 1), b AS NOT MATERIALIZED (SELECT 2) SELECT * FROM a, b", R, READ),
    ("WITH a(x, y) AS (SELECT 1, 2) SELECT x FROM a", R, READ),
    ("WITH x AS (SELECT 1) (SELECT * FROM x)", R, READ),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", P, WRITE_CTE),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i", P, WRITE_CTE),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT count(*) FROM u", P, WRITE_CTE),
    ("WITH a AS (SELECT 1), b AS (WITH c AS (DELETE FROM t RETURNING 1) SELECT * FROM c) SELECT * FROM b", P, WRITE_CTE),
    ("WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING *) SELECT 1", P, WRITE_CTE),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", P, WRITE),
    ("WITH x AS (SELECT 1) UPDATE t SET a = x.a FROM x", P, WRITE),
    ("WITH x AS (SELECT 1) DELETE FROM t USING x", P, WRITE),
    ("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x", P, LOCKING_READ),
    ("WITH x AS (SELECT 1) SELECT * INTO y FROM x", P, SELECT_INTO),
    ("WITH x AS (SELECT nextval('s')) SELECT * FROM x", P, SIDE_EFFECT_FUNCTION),
    // --- functions -------------------------------------------------------------------
    ("SELECT nextval('seq')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT id FROM t WHERE id > nextval('seq')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_catalog.nextval('seq')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT \"nextval\"('seq')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT NEXTVAL('seq')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT \"NEXTVAL\"('seq')", P, UNKNOWN_FUNCTION),
    ("SELECT currval('s'), lastval()", P, SIDE_EFFECT_FUNCTION),
    ("SELECT setval('s', 10)", P, SIDE_EFFECT_FUNCTION),
    ("SELECT txid_current()", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_current_wal_lsn()", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_notify('ch', 'x')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT lo_import('/tmp/x')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT dblink_exec('conn', 'DELETE FROM t')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_terminate_backend(123)", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_stat_reset()", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_advisory_lock(1)", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_advisory_xact_lock(1)", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_try_advisory_lock_shared(1, 2)", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_advisory_unlock_all()", P, SIDE_EFFECT_FUNCTION),
    ("SELECT set_config('a.b', 'c', false)", P, SIDE_EFFECT_FUNCTION),
    ("SELECT set_config('a.b', 'c', true)", P, SIDE_EFFECT_FUNCTION),
    ("SELECT count(*), sum(x), avg(x), min(x), max(x) FROM t", R, READ),
    ("SELECT lower(name), upper(name), length(name), substr(name, 1, 3) FROM t", R, READ),
    ("SELECT pg_catalog.lower('X')", R, READ),
    ("SELECT now(), clock_timestamp(), date_trunc('day', now())", R, READ),
    ("SELECT CURRENT_TIMESTAMP, CURRENT_DATE, current_user, LOCALTIMESTAMP(3)", R, READ),
    ("SELECT coalesce(a, b), nullif(a, 0), greatest(a, b), least(a, b) FROM t", R, READ),
    ("SELECT CAST(x AS numeric(10,2)), x::numeric(10,2), x::varchar(20) FROM t", R, READ),
    ("SELECT x::pg_catalog.numeric(10, 2), CAST(y AS character varying(5)) FROM t", R, READ),
    ("SELECT EXTRACT(EPOCH FROM now()), SUBSTRING(s FROM 1 FOR 3), TRIM(BOTH ' ' FROM s), POSITION('a' IN s) FROM t", R, READ),
    ("SELECT OVERLAY(s PLACING 'x' FROM 2 FOR 1) FROM t", R, READ),
    ("SELECT jsonb_build_object('a', 1), to_jsonb(t), row_to_json(t) FROM t", R, READ),
    ("SELECT json_agg(x) FILTER (WHERE x > 0) FROM t", R, READ),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t", R, READ),
    ("SELECT row_number() OVER (PARTITION BY a ORDER BY b ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) FROM t", R, READ),
    ("SELECT rank() OVER w FROM t WINDOW w AS (PARTITION BY a)", R, READ),
    ("SELECT a, count(*) FROM t GROUP BY ROLLUP (a)", R, READ),
    ("SELECT a, b FROM t GROUP BY GROUPING SETS ((a), (b)), CUBE (a, b)", R, READ),
    ("SELECT ROW(1, 2), ARRAY[1, 2], ARRAY(SELECT 1)", R, READ),
    ("SELECT gen_random_uuid(), md5('x'), random()", R, READ),
    ("SELECT my_func(1)", P, UNKNOWN_FUNCTION),
    ("SELECT public.my_func(1)", P, UNKNOWN_FUNCTION),
    ("SELECT myschema.lower('x')", P, UNKNOWN_FUNCTION),
    ("SELECT * FROM t WHERE my_func(a) > 0", P, UNKNOWN_FUNCTION),
    ("SELECT * FROM my_srf(1)", P, UNKNOWN_FUNCTION),
    ("SELECT * FROM t JOIN my_srf(1) f ON true", P, UNKNOWN_FUNCTION),
    ("SELECT left('abc', 1), right('abc', 1), replace('a', 'b', 'c'), format('%s', 1)", R, READ),
    ("SELECT ST_AsText(geom) FROM places", P, UNKNOWN_FUNCTION),
    ("SELECT x FROM t WHERE ts > now() - INTERVAL '1 hour'", R, READ),
    ("SELECT to_char(ts, 'YYYY') FROM t ORDER BY date_part('year', ts)", R, READ),
    ("SELECT * FROM t WHERE a IS DISTINCT FROM b AND lower(c) = 'x'", R, READ),
    ("SELECT * FROM t WHERE a IS DISTINCT FROM b AND nextval('s') > 0", P, SIDE_EFFECT_FUNCTION),
    ("SELECT pg_sleep(1), pg_backend_pid(), version(), pg_is_in_recovery()", R, READ),
    ("SELECT current_setting('search_path'), pg_size_pretty(pg_database_size(current_database()))", R, READ),
    ("SELECT has_table_privilege('t', 'SELECT'), pg_get_viewdef('v'::regclass)", R, READ),
    ("SELECT (SELECT nextval('s'))", P, SIDE_EFFECT_FUNCTION),
    ("SELECT count(*) FROM t WHERE x = (SELECT my_func())", P, UNKNOWN_FUNCTION),
    ("SELECT OPERATOR(pg_catalog.+)(1, 2)", R, READ),
    ("SELECT current_schema(), current_schemas(true)", R, READ),
    ("SELECT pg_catalog.set_config('search_path', '', false);", P, SIDE_EFFECT_FUNCTION),
    ("SELECT date_trunc('month', created_at) AS month, count(*) FROM t GROUP BY 1", R, READ),
    ("SELECT key, value FROM kv WHERE key = $1", R, READ),
    ("SELECT EXISTS(SELECT 1 AS \"a\" FROM \"t\" LIMIT 1) AS \"a\"", R, READ),
    ("SELECT * FROM t WHERE ts AT TIME ZONE my_tz() > now()", P, UNKNOWN_FUNCTION),
    ("SELECT * FROM t x JOIN my_srf() y(a) ON true", P, UNKNOWN_FUNCTION),
    ("SELECT * FROM t ORDER BY my_func(a)", P, UNKNOWN_FUNCTION),
    ("SELECT count(*) FILTER (WHERE my_func(x)) FROM t", P, UNKNOWN_FUNCTION),
    ("SELECT * FROM json_to_record($1) AS r(a int, b numeric(10,2), c varchar(3))", R, READ),
    ("SELECT x::double precision, y::bit varying(5), z::timestamp(3) with time zone FROM t", R, READ),
    ("SELECT (t.rec).field, (f).* FROM t", R, READ),
    // --- jsonb, arrays, operators ----------------------------------------------------
    ("SELECT data->>'name', data->'a'->'b', data#>>'{a,b}' FROM docs", R, READ),
    ("SELECT * FROM docs WHERE data @> '{\"a\": 1}' AND data ? 'key' AND data ?| array['a']", R, READ),
    ("SELECT '{1,2}'::int[], arr[1:2], arr[1] FROM t", R, READ),
    ("SELECT a <-> b, a || b, a ~* 'x', a !~ 'y' FROM t", R, READ),
    ("SELECT u1_0.id, u1_0.name FROM users u1_0 WHERE u1_0.id=?", R, READ),
    // --- ORM shapes ------------------------------------------------------------------
    ("SELECT \"users\".\"id\" FROM \"users\" WHERE \"users\".\"email\" = $1 LIMIT $2", R, READ),
    ("SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2", R, READ),
    ("SELECT \"app_user\".\"id\", \"app_user\".\"name\" FROM \"app_user\" WHERE \"app_user\".\"id\" = 1 LIMIT 21", R, READ),
    ("SELECT COUNT(*) AS \"__count\" FROM \"app_user\"", R, READ),
    ("SELECT \"public\".\"User\".\"id\", \"public\".\"User\".\"email\" FROM \"public\".\"User\" WHERE (\"public\".\"User\".\"email\" = $1 AND 1=1) LIMIT $2 OFFSET $3", R, READ),
    ("SELECT \"id\", \"name\" FROM \"Users\" AS \"User\" WHERE \"User\".\"id\" = 1;", R, READ),
    ("select user0_.id as id1_0_ from users user0_ where user0_.email=$1", R, READ),
    ("SELECT users.id AS users_id FROM users WHERE users.id = %(param_1)s", R, READ),
    ("INSERT INTO \"users\" (\"email\") VALUES ($1) RETURNING \"id\"", P, WRITE),
    ("UPDATE \"users\" SET \"name\" = $1 WHERE \"users\".\"id\" = $2", P, WRITE),
    ("SELECT \"t\".\"id\" FROM \"t\" FOR UPDATE OF \"t\" SKIP LOCKED", P, LOCKING_READ),
    // --- pgbench ---------------------------------------------------------------------
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", R, READ),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", R, READ),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", P, WRITE),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;", P, WRITE),
    ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;", P, WRITE),
    ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);", P, WRITE),
    ("BEGIN;", P, TRANSACTION),
    ("END;", P, TRANSACTION),
    // --- writes and DDL --------------------------------------------------------------
    ("INSERT INTO t VALUES (1)", P, WRITE),
    ("insert into t values ('SELECT')", P, WRITE),
    ("UPDATE t SET a = 1", P, WRITE),
    ("DELETE FROM t WHERE id = 1", P, WRITE),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", P, WRITE),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a", P, WRITE),
    ("CREATE TABLE t (id int)", P, WRITE),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", P, WRITE),
    ("ALTER TABLE t ADD COLUMN b int", P, WRITE),
    ("DROP TABLE t", P, WRITE),
    ("TRUNCATE t", P, WRITE),
    ("COMMENT ON TABLE t IS 'x'", P, WRITE),
    ("GRANT SELECT ON t TO u", P, WRITE),
    ("REVOKE ALL ON t FROM u", P, WRITE),
    ("VACUUM ANALYZE t", P, WRITE),
    ("ANALYZE t", P, WRITE),
    ("REINDEX TABLE t", P, WRITE),
    ("CLUSTER t USING i", P, WRITE),
    ("REFRESH MATERIALIZED VIEW mv", P, WRITE),
    ("DO $$ BEGIN PERFORM 1; END $$", P, WRITE),
    ("CALL my_proc(1)", P, WRITE),
    ("LOCK TABLE t IN ACCESS SHARE MODE", P, WRITE),
    ("CHECKPOINT", P, WRITE),
    ("CREATE TEMP TABLE tmp (a int)", P, WRITE),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END", P, WRITE),
    // --- EXPLAIN ---------------------------------------------------------------------
    ("EXPLAIN SELECT * FROM t", R, READ),
    ("EXPLAIN ANALYZE SELECT * FROM t", R, READ),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", R, READ),
    ("EXPLAIN (FORMAT JSON) SELECT 1", R, READ),
    ("EXPLAIN ANALYZE DELETE FROM t", P, EXPLAIN_ANALYZE_WRITE),
    ("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t", P, EXPLAIN_ANALYZE_WRITE),
    ("EXPLAIN (ANALYZE true) UPDATE t SET a = 1", P, EXPLAIN_ANALYZE_WRITE),
    ("EXPLAIN ANALYZE VERBOSE SELECT nextval('s')", P, EXPLAIN_ANALYZE_WRITE),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", P, WRITE),
    ("EXPLAIN DELETE FROM t", P, WRITE),
    ("EXPLAIN SELECT * FROM t FOR UPDATE", P, LOCKING_READ),
    ("EXPLAIN EXPLAIN SELECT 1", P, UNSURE),
    ("EXPLAIN", P, UNSURE),
    // --- COPY ------------------------------------------------------------------------
    ("COPY t TO STDOUT", R, READ),
    ("COPY public.t (a, b) TO STDOUT WITH (FORMAT csv)", R, READ),
    ("COPY (SELECT * FROM t WHERE a > 1) TO STDOUT", R, READ),
    ("COPY (SELECT nextval('s')) TO STDOUT", P, SIDE_EFFECT_FUNCTION),
    ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", P, WRITE),
    ("COPY t FROM STDIN", P, COPY_FROM),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", P, COPY_FROM),
    ("COPY t TO '/tmp/file.csv'", P, UNSURE),
    ("COPY t TO PROGRAM 'gzip > /tmp/x'", P, UNSURE),
    // --- LISTEN / NOTIFY -------------------------------------------------------------
    ("LISTEN channel", P, LISTEN_NOTIFY),
    ("UNLISTEN *", P, LISTEN_NOTIFY),
    ("NOTIFY channel, 'payload'", P, LISTEN_NOTIFY),
    // --- transactions ----------------------------------------------------------------
    ("BEGIN", P, TRANSACTION),
    ("begin transaction", P, TRANSACTION),
    ("BEGIN READ ONLY", R, READ),
    ("BEGIN TRANSACTION READ ONLY", R, READ),
    ("START TRANSACTION READ ONLY", R, READ),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", R, READ),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", P, TRANSACTION),
    ("BEGIN READ WRITE", P, TRANSACTION),
    ("BEGIN ISOLATION LEVEL READ COMMITTED", P, TRANSACTION),
    ("START TRANSACTION", P, TRANSACTION),
    ("COMMIT", P, TRANSACTION),
    ("ROLLBACK", P, TRANSACTION),
    ("SAVEPOINT s1", P, TRANSACTION),
    ("RELEASE SAVEPOINT s1", P, TRANSACTION),
    ("ROLLBACK TO SAVEPOINT s1", P, TRANSACTION),
    ("PREPARE TRANSACTION 'gid'", P, TRANSACTION),
    ("COMMIT PREPARED 'gid'", P, TRANSACTION),
    ("BEGIN; SELECT 1; COMMIT", P, TRANSACTION),
    ("BEGIN READ ONLY; SELECT 1", R, READ),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", P, TRANSACTION),
    ("DECLARE c CURSOR FOR SELECT 1", P, TRANSACTION),
    ("FETCH 10 FROM c", P, TRANSACTION),
    ("MOVE NEXT IN c", P, TRANSACTION),
    ("CLOSE c", P, TRANSACTION),
    // --- session ---------------------------------------------------------------------
    ("SET search_path TO myschema", P, SESSION),
    ("RESET ALL", P, SESSION),
    ("DISCARD ALL", P, SESSION),
    ("DEALLOCATE ALL", P, SESSION),
    ("PREPARE q AS SELECT 1", P, SESSION),
    ("EXECUTE q", P, SESSION),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", P, SESSION),
    ("LOAD 'auto_explain'", P, SESSION),
    // --- multi-statement -------------------------------------------------------------
    ("SELECT 1; SELECT 2", R, READ),
    ("SELECT 1; SELECT 2;", R, READ),
    ("SELECT 1; DELETE FROM t", P, WRITE),
    ("DELETE FROM t; SELECT 1", P, WRITE),
    ("SELECT 1; SELECT * FROM t FOR UPDATE; INSERT INTO t VALUES (1)", P, LOCKING_READ),
    ("SELECT ';'; SELECT $$;$$", R, READ),
    ("SELECT 1; garbage", P, UNSURE),
    // --- hints -----------------------------------------------------------------------
    ("/* pgshift:primary */ SELECT 1", P, HINT),
    ("/* pgshift:replica */ SELECT 1", R, HINT),
    ("/*pgshift:PRIMARY*/SELECT 1", P, HINT),
    ("/*  PGSHIFT : Primary  */ SELECT 1", P, HINT),
    ("SELECT 1 -- pgshift:primary", P, HINT),
    ("SELECT 1 /* app=web pgshift:primary */", P, HINT),
    ("/* pgshift:replica */ SELECT nextval('s')", R, HINT),
    ("/* pgshift:replica */ /* pgshift:primary */ SELECT 1", P, HINT),
    ("SELECT '/* pgshift:primary */'", R, READ),
    ("SELECT 1 /* pgshift:bogus */", R, READ),
    // --- empty and garbage -----------------------------------------------------------
    ("", P, EMPTY),
    ("   \n\t ", P, EMPTY),
    ("-- only a comment", P, EMPTY),
    ("/* only */ /* comments */", P, EMPTY),
    (";", P, EMPTY),
    (" ; ; ", P, EMPTY),
    ("/* pgshift:replica */", P, EMPTY),
    ("/* unterminated", P, UNSURE),
    ("SELECT 1; /* unterminated", P, UNSURE),
    ("garbage", P, UNSURE),
    ("FOO BAR BAZ", P, UNSURE),
    ("123", P, UNSURE),
    ("SELECT 1)", P, UNSURE),
    ("SELECT (1", P, UNSURE),
    ("CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1;", P, UNSURE),
    ("SELECT (1; SELECT 2", P, UNSURE),
    ("SELECT \\gset", P, UNSURE),
    ("SELECT $foo", P, UNSURE),
    ("(INSERT INTO t VALUES (1))", P, UNSURE),
    ("\u{feff}SELECT 1", P, UNSURE),
    ("SELECT 'ünïcödé', \"名前\" FROM tåble", R, READ),
];

fn check_case(sql: &str, target: Target, reason: &str, cfg: &ClassifierConfig) {
    let c = classify(sql, cfg);
    assert_eq!((c.target, c.reason), (target, reason), "sql: {sql:?}\n got: {c:#?}");
}

#[test]
fn table() {
    assert!(CASES.len() >= 180, "{} cases", CASES.len());
    println!("{} table cases", CASES.len());
    let cfg = ClassifierConfig::default();
    for &(sql, target, reason) in CASES {
        check_case(sql, target, reason, &cfg);
    }
}

#[test]
fn safe_functions_from_config() {
    let cfg = ClassifierConfig::with_safe_functions(["my_func", "Reports.Monthly", "st_astext"]);
    check_case("SELECT my_func(1)", R, READ, &cfg);
    check_case("SELECT public.my_func(1)", R, READ, &cfg);
    check_case("SELECT reports.monthly(1)", R, READ, &cfg);
    check_case("SELECT monthly(1)", P, UNKNOWN_FUNCTION, &cfg);
    check_case("SELECT ST_AsText(geom) FROM places", R, READ, &cfg);
    check_case("SELECT other_func(1)", P, UNKNOWN_FUNCTION, &cfg);
    // A config entry never overrides a known side effect.
    let cfg = ClassifierConfig::with_safe_functions(["nextval"]);
    check_case("SELECT nextval('s')", P, SIDE_EFFECT_FUNCTION, &cfg);
}

#[test]
fn standard_conforming_strings() {
    let mut cfg = ClassifierConfig::default();
    let like = "SELECT * FROM t WHERE name LIKE $1 ESCAPE '\\'";
    check_case(like, P, UNSURE, &cfg);
    cfg.standard_conforming_strings = true;
    check_case(like, R, READ, &cfg);
    check_case("SELECT 'C:\\path'", R, READ, &cfg);
    // Under the setting the server lexes this as SELECT 'a\\', 'b; ...' and so do we.
    check_case("SELECT 'a\\', 'b; DELETE FROM t; --'", R, READ, &cfg);
    check_case("SELECT 'a\\'; DELETE FROM t", P, WRITE, &cfg);
}

fn effect(sql: &str) -> SessionEffect {
    let c = classify(sql, &ClassifierConfig::default());
    assert_eq!(c.statements.len(), 1, "{sql:?}: {c:#?}");
    c.statements.into_iter().next().map_or(SessionEffect::None, |s| s.session)
}

fn set(name: &str, value: &str) -> SessionEffect {
    SessionEffect::Set { name: name.into(), value: value.into() }
}

fn reset(name: &str) -> SessionEffect {
    SessionEffect::Reset { name: name.into() }
}

#[test]
fn session_effects() {
    use SessionEffect::{DiscardAll, None as NoEffect, Pin, ResetAll};
    let rows: Vec<(&str, SessionEffect)> = vec![
        ("SET search_path TO '$user', public", set("search_path", "'$user', public")),
        ("set Search_Path = myschema", set("search_path", "myschema")),
        ("SET SESSION statement_timeout = 5000", set("statement_timeout", "5000")),
        ("SET statement_timeout TO '5s' ; ", set("statement_timeout", "'5s'")),
        ("SET application_name = 'a;b'", set("application_name", "'a;b'")),
        ("SET myapp.user_id = 42 -- trailing", set("myapp.user_id", "42")),
        ("SET \"MyApp\".\"Var\" = 'x'", set("myapp.var", "'x'")),
        ("SET TIME ZONE 'UTC'", set("timezone", "'UTC'")),
        ("SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE", set("timezone", "INTERVAL '+00:00' HOUR TO MINUTE")),
        ("SET SCHEMA 'app'", set("search_path", "'app'")),
        ("SET NAMES 'UTF8'", set("client_encoding", "'UTF8'")),
        ("SET XML OPTION DOCUMENT", set("xmloption", "DOCUMENT")),
        ("SET search_path TO DEFAULT", reset("search_path")),
        ("SET work_mem = default", reset("work_mem")),
        ("SET TIME ZONE LOCAL", reset("timezone")),
        ("RESET search_path", reset("search_path")),
        ("RESET TIME ZONE", reset("timezone")),
        ("RESET ROLE", reset("role")),
        ("RESET SESSION AUTHORIZATION", reset("session_authorization")),
        ("RESET ALL", ResetAll),
        ("DISCARD ALL", DiscardAll),
        ("DISCARD PLANS", NoEffect),
        ("DEALLOCATE stmt1", SessionEffect::Deallocate { name: Some("stmt1".into()) }),
        ("DEALLOCATE PREPARE \"Stmt1\"", SessionEffect::Deallocate { name: Some("Stmt1".into()) }),
        ("DEALLOCATE PREPARE MyStmt", SessionEffect::Deallocate { name: Some("mystmt".into()) }),
        ("DEALLOCATE ALL", SessionEffect::Deallocate { name: None }),
        ("LISTEN Jobs", SessionEffect::Listen { channel: "jobs".into() }),
        ("LISTEN \"Jobs\"", SessionEffect::Listen { channel: "Jobs".into() }),
        ("UNLISTEN jobs", SessionEffect::Unlisten { channel: Some("jobs".into()) }),
        ("UNLISTEN *", SessionEffect::Unlisten { channel: None }),
        ("NOTIFY jobs", NoEffect),
        ("SET LOCAL search_path TO x", NoEffect),
        ("SET LOCAL ROLE admin", NoEffect),
        ("SET ROLE admin", Pin("set_role")),
        ("SET SESSION AUTHORIZATION bob", Pin("set_role")),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", Pin("session_characteristics")),
        ("SET CONSTRAINTS ALL DEFERRED", NoEffect),
        ("PREPARE q(int) AS SELECT $1", Pin("sql_prepare")),
        ("EXECUTE q(1)", NoEffect),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Pin("with_hold_cursor")),
        ("DECLARE c SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", NoEffect),
        ("DECLARE c CURSOR FOR SELECT 1", NoEffect),
        ("CREATE TEMP TABLE x (a int)", Pin("temp_table")),
        ("CREATE TEMPORARY TABLE x AS SELECT 1", Pin("temp_table")),
        ("CREATE GLOBAL TEMPORARY TABLE x (a int)", Pin("temp_table")),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", Pin("temp_table")),
        ("CREATE TEMP SEQUENCE s", Pin("temp_table")),
        ("CREATE TABLE x (a int)", NoEffect),
        ("SELECT 1 INTO TEMP x", Pin("temp_table")),
        ("SELECT pg_advisory_lock(1)", Pin("advisory_lock")),
        ("SELECT pg_catalog.pg_try_advisory_lock(1)", Pin("advisory_lock")),
        ("SELECT pg_advisory_lock_shared(1), nextval('s')", Pin("advisory_lock")),
        ("SELECT nextval('s'), pg_advisory_lock(1)", Pin("advisory_lock")),
        ("SELECT pg_advisory_xact_lock(1)", NoEffect),
        ("SELECT pg_try_advisory_xact_lock(1)", NoEffect),
        ("SELECT pg_advisory_unlock(1)", NoEffect),
        ("SELECT set_config('a.b', 'c', false)", Pin("set_config")),
        ("SELECT set_config('a.b', 'c', $1)", Pin("set_config")),
        ("SELECT set_config('a.b', 'c', true)", NoEffect),
        ("SELECT set_config('a.b', 'c', 'true')", NoEffect),
        ("SELECT set_config('a.b', lower('C'), true), 1", NoEffect),
        ("SELECT set_config('a.b', 'c', NOT false)", Pin("set_config")),
        ("UPDATE t SET a = 1 WHERE pg_advisory_lock(1) IS NOT NULL", Pin("advisory_lock")),
        ("INSERT INTO t SELECT set_config('a', 'b', false)", Pin("set_config")),
        ("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", Pin("advisory_lock")),
        ("EXPLAIN SELECT pg_advisory_lock(1)", NoEffect),
        ("LOAD 'auto_explain'", Pin("load")),
        ("SELECT 'pg_advisory_lock(1)'", NoEffect),
        // The role as a setting: RESET ALL leaves it, so it is never tracked.
        ("SET \"role\" TO admin", Pin("set_role")),
        ("SET role = admin", Pin("set_role")),
        ("SET session_authorization TO bob", Pin("set_role")),
        ("SET SESSION \"session_authorization\" = bob", Pin("set_role")),
        ("SET \"role\" TO DEFAULT", Pin("set_role")),
        ("SET \"Role\" TO admin", Pin("set_role")),
        ("SET \"SEED\" TO 0.5", Pin("setseed")),
        ("SET \"Search_Path\" TO x", set("search_path", "x")),
        // State no reset undoes.
        ("SET seed = 0.5", Pin("setseed")),
        ("SET seed TO DEFAULT", Pin("setseed")),
        ("RESET seed", Pin("setseed")),
        ("SELECT setseed(0.5)", Pin("setseed")),
        ("SELECT dblink_connect('c', 'dbname=x')", Pin("dblink")),
        ("SELECT public.dblink_connect_u('dbname=x')", Pin("dblink")),
        ("SELECT set_config('a.b', dblink_connect('dbname=x'), true)", Pin("dblink")),
        ("UPDATE t SET a = setseed(0.1)", Pin("setseed")),
        ("SET LOCAL seed = 0.5", Pin("setseed")),
        ("SELECT set_config('seed', '0.5', true)", Pin("setseed")),
        ("SELECT set_config('Seed', '0.5', false)", Pin("setseed")),
        ("SELECT set_config($1, $2, true)", Pin("setseed")),
        ("SELECT set_config(E'se\\145d', '0.5', true)", Pin("setseed")),
        // It outranks any other pin, wherever it is named.
        ("SELECT pg_advisory_lock(1), setseed(0.5)", Pin("setseed")),
        ("SELECT set_config('a', 'b', false), dblink_connect('c')", Pin("dblink")),
        ("DO $$ BEGIN PERFORM setseed(0.5); END $$", Pin("setseed")),
        ("PREPARE p AS SELECT dblink_connect('c')", Pin("dblink")),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT setseed(0.5)", Pin("setseed")),
        ("SET U&\"rol\\0065\" = x", Pin("unicode_identifier")),
        ("SELECT U& \"sets\\0065ed\"(0.5)", Pin("unicode_identifier")),
        // How PostgreSQL reads strings, even for one transaction.
        ("SET LOCAL standard_conforming_strings = off", Pin("standard_conforming_strings")),
        ("SET SESSION backslash_quote TO on", Pin("standard_conforming_strings")),
        ("RESET standard_conforming_strings", SessionEffect::Reset { name: "standard_conforming_strings".into() }),
        ("SELECT set_config('standard_conforming_strings', 'off', true)", Pin("standard_conforming_strings")),
        // Client-only encodings: the server reads the converted text, pgshift the bytes.
        ("SET client_encoding TO 'SJIS'", Pin("client_encoding")),
        ("SET NAMES 'big5'", Pin("client_encoding")),
        ("SET client_encoding = \"gbk\"", Pin("client_encoding")),
        ("SET client_encoding TO 'UTF8'", set("client_encoding", "'UTF8'")),
        ("SELECT set_config('client_encoding', 'UTF8', false)", Pin("client_encoding")),
        // Named where nothing runs it: nothing to pin.
        ("SELECT 'setseed(0.5)'", NoEffect),
        ("INSERT INTO t VALUES ('dblink_connect(1)')", NoEffect),
    ];
    for (sql, want) in rows {
        assert_eq!(effect(sql), want, "sql: {sql:?}");
    }
}

#[test]
fn transaction_control() {
    use TxControl::*;
    let rows: &[(&str, TxControl, Target)] = &[
        ("BEGIN", Begin { read_only: false }, P),
        ("BEGIN WORK", Begin { read_only: false }, P),
        ("begin read only", Begin { read_only: true }, R),
        ("START TRANSACTION READ ONLY", Begin { read_only: true }, R),
        ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", Begin { read_only: true }, R),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", Begin { read_only: true }, P),
        ("BEGIN READ ONLY READ WRITE", Begin { read_only: false }, P),
        ("BEGIN READ WRITE", Begin { read_only: false }, P),
        ("BEGIN ISOLATION LEVEL READ UNCOMMITTED", Begin { read_only: false }, P),
        ("COMMIT", Commit, P),
        ("COMMIT WORK AND CHAIN", Commit, P),
        ("END", Commit, P),
        ("END TRANSACTION", Commit, P),
        ("ROLLBACK", Rollback, P),
        ("ABORT", Rollback, P),
        ("ROLLBACK WORK", Rollback, P),
        ("ROLLBACK TO s1", Savepoint, P),
        ("ROLLBACK TRANSACTION TO SAVEPOINT s1", Savepoint, P),
        ("SAVEPOINT s1", Savepoint, P),
        ("RELEASE s1", Savepoint, P),
        ("RELEASE SAVEPOINT s1", Savepoint, P),
        ("PREPARE TRANSACTION 'x'", None, P),
        ("COMMIT PREPARED 'x'", None, P),
        ("ROLLBACK PREPARED 'x'", None, P),
        ("SELECT 1", None, R),
    ];
    for &(sql, tx, target) in rows {
        let c = classify(sql, &ClassifierConfig::default());
        let st = c.statements.first().cloned();
        assert_eq!(st.map(|s| (s.tx, s.target)), Some((tx, target)), "sql: {sql:?}");
    }
}

#[test]
fn multi_statement_details() {
    let c = classify("BEGIN; SELECT 1; COMMIT", &ClassifierConfig::default());
    let txs: Vec<_> = c.statements.iter().map(|s| s.tx).collect();
    assert_eq!(txs, [TxControl::Begin { read_only: false }, TxControl::None, TxControl::Commit]);
    assert_eq!(c.statements.get(1).map(|s| s.target), Some(R));
    assert_eq!(c.kind, StatementKind::Other);

    let c = classify("SELECT 1; UPDATE t SET a = 1", &ClassifierConfig::default());
    assert_eq!((c.target, c.reason, c.kind), (P, WRITE, StatementKind::Select));

    let c = classify("WITH x AS (SELECT 1) DELETE FROM t", &ClassifierConfig::default());
    assert_eq!(c.kind, StatementKind::Delete);

    // BEGIN ATOMIC bodies are one statement; the END inside is not a COMMIT.
    let sql = "CREATE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END; SELECT 1";
    let c = classify(sql, &ClassifierConfig::default());
    assert_eq!(c.statements.len(), 2);
    assert!(c.statements.iter().all(|s| s.tx == TxControl::None));

    let c = classify("/* pgshift:replica */ SELECT 1", &ClassifierConfig::default());
    assert_eq!(c.hint, Some(R));
    let c = classify("SELECT 1 -- pgshift:primary\n; SELECT 2", &ClassifierConfig::default());
    assert_eq!((c.hint, c.target, c.statements.len()), (Some(P), P, 2));
}

#[test]
fn statement_kinds() {
    let rows = [
        ("SELECT 1", StatementKind::Select),
        ("VALUES (1)", StatementKind::Select),
        ("INSERT INTO t VALUES (1)", StatementKind::Insert),
        ("UPDATE t SET a = 1", StatementKind::Update),
        ("DELETE FROM t", StatementKind::Delete),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", StatementKind::Insert),
        ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", StatementKind::Other),
        ("SHOW x", StatementKind::Other),
        ("", StatementKind::Other),
    ];
    for (sql, kind) in rows {
        assert_eq!(classify(sql, &ClassifierConfig::default()).kind, kind, "{sql:?}");
    }
}

// --- lexer ----------------------------------------------------------------------------

fn kinds(sql: &str) -> Vec<TokenKind> {
    let mut lx = Lexer::new(sql);
    let mut out = Vec::new();
    loop {
        let t = lx.next_token();
        if t.kind == TokenKind::Eof {
            return out;
        }
        out.push(t.kind);
        assert!(out.len() <= sql.len() + 1, "lexer does not advance on {sql:?}");
    }
}

#[test]
fn lexer_literals() {
    use TokenKind::*;
    assert_eq!(kinds("'a''b'"), [String]);
    assert_eq!(kinds("E'a\\'b'"), [String]);
    assert_eq!(kinds("e'\\\\' x"), [String, Ident]);
    assert_eq!(kinds("U&'\\0041' UESCAPE '!'"), [String, Ident, String]);
    assert_eq!(kinds("u&\"x\""), [QuotedIdent]);
    assert_eq!(kinds("B'01' X'ff' N'n'"), [String, String, String]);
    assert_eq!(kinds("\"a\"\"b\""), [QuotedIdent]);
    assert_eq!(kinds("$$a;b$$"), [DollarString]);
    assert_eq!(kinds("$t$ $$ $t$"), [DollarString]);
    assert_eq!(kinds("$t$ $u$ $t$ x"), [DollarString, Ident]);
    assert_eq!(kinds("$1 $23"), [Param, Param]);
    assert_eq!(kinds("a$b"), [Ident]);
    assert_eq!(kinds("$x"), [Other, Ident]);
    assert_eq!(kinds("1.5e-3 .5 10"), [Number, Number, Number]);
    assert_eq!(kinds("a::int[]"), [Ident, DoubleColon, Ident, LBracket, RBracket]);
    assert_eq!(kinds("a[1:2]"), [Ident, LBracket, Number, Colon, Number, RBracket]);
    assert_eq!(kinds("t.c"), [Ident, Dot, Ident]);
    assert_eq!(kinds("a->>'k' @> ?| #-"), [Ident, Operator, String, Operator, Operator, Operator]);
    assert_eq!(kinds("a;b"), [Ident, Semicolon, Ident]);
    assert_eq!(kinds("\\"), [Other]);
}

#[test]
fn lexer_comments() {
    use TokenKind::*;
    assert_eq!(kinds("-- x\ny"), [Ident]);
    assert_eq!(kinds("/* a /* b */ c */ d"), [Ident]);
    assert_eq!(kinds("a/* x */b"), [Ident, Ident]);
    assert_eq!(kinds("1+--c\n2"), [Number, Operator, Number]);
    assert_eq!(kinds("1+/*c*/2"), [Number, Operator, Number]);
    assert_eq!(kinds("--"), []);
    assert_eq!(detect_hint(b" pgshift:primary "), Some(Hint::Primary));
    assert_eq!(detect_hint(b"PgShift :\treplica"), Some(Hint::Replica));
    assert_eq!(detect_hint(b"pgshift:replicas"), None);
    assert_eq!(detect_hint(b"pgshift primary"), None);
    assert_eq!(detect_hint(b"pgshift:"), None);
}

#[test]
fn lexer_unterminated() {
    use TokenKind::*;
    for sql in ["'abc", "E'abc\\'", "\"abc", "$$abc", "$t$abc$t", "/* abc", "/* /* */", "x 'a''"] {
        let k = kinds(sql);
        assert_eq!(k.last(), Some(&Error), "{sql:?}: {k:?}");
    }
}

#[test]
fn lexer_backslash_ambiguity() {
    let mut lx = Lexer::new("'a\\b' E'\\n'");
    lx.next_token();
    assert!(lx.take_backslash_literal());
    lx.next_token();
    assert!(!lx.take_backslash_literal());
}

// --- static lists ---------------------------------------------------------------------

fn assert_sorted_lower(name: &str, list: &[&str]) {
    for pair in list.windows(2) {
        if let [a, b] = pair {
            assert!(a < b, "{name} not sorted/unique at {a:?} {b:?}");
        }
    }
    for w in list {
        assert_eq!(*w, w.to_ascii_lowercase(), "{name}: {w:?} not lower case");
    }
}

#[test]
fn lists_are_sorted_and_disjoint() {
    let kw: Vec<&str> = KEYWORDS.iter().map(|(k, _, _)| *k).collect();
    assert_sorted_lower("KEYWORDS", &kw);
    assert_sorted_lower("SAFE_FUNCTIONS", SAFE_FUNCTIONS);
    assert_sorted_lower("SIDE_EFFECT_FUNCTIONS", SIDE_EFFECT_FUNCTIONS);
    assert!(SAFE_FUNCTIONS.len() >= 250);
    for f in SAFE_FUNCTIONS {
        assert!(!super::functions::is_side_effect(f.as_bytes()), "{f} is both");
    }
    assert!(kw.iter().all(|k| k.len() <= 17));
}

// --- robustness -----------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn check_invariants(sql: &str) {
    let mut lenient = ClassifierConfig::with_safe_functions(["my_func", "public.f"]);
    lenient.standard_conforming_strings = true;
    for cfg in [ClassifierConfig::default(), lenient] {
        let c = classify(sql, &cfg);
        if c.statements.is_empty() {
            assert_eq!(c.target, P, "{sql:?}");
        } else if c.hint.is_none() && c.target == R {
            assert!(c.statements.iter().all(|s| s.target == R), "{sql:?}");
        }
    }
}

#[test]
fn fuzz_prefixes_never_panic() {
    for &(sql, _, _) in CASES {
        for (i, _) in sql.char_indices().chain([(sql.len(), ' ')]) {
            if let Some(prefix) = sql.get(..i) {
                check_invariants(prefix);
            }
        }
    }
}

#[test]
fn fuzz_random_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let fragments = [
        "SELECT",
        "select",
        "FROM",
        "t",
        "(",
        ")",
        "((",
        "))",
        ";",
        "'",
        "''",
        "\"",
        "$$",
        "$a$",
        "$1",
        "E'",
        "\\",
        "/*",
        "*/",
        "--",
        "\n",
        " ",
        ",",
        ".",
        "::",
        "FOR",
        "UPDATE",
        "WITH",
        "AS",
        "INTO",
        "nextval",
        "set_config",
        "pg_advisory_lock",
        "EXPLAIN",
        "ANALYZE",
        "COPY",
        "TO",
        "STDOUT",
        "BEGIN",
        "ATOMIC",
        "CASE",
        "END",
        "SET",
        "RESET",
        "=",
        "DEFAULT",
        "U&'",
        "x",
        "1",
        "*",
        "INSERT",
        "VALUES",
        "DECLARE",
        "HOLD",
        "é",
        "pgshift:replica",
        "LOCAL",
    ];
    for _ in 0..20_000 {
        let n = rng.below(24);
        let mut sql = String::new();
        for _ in 0..n {
            let f = fragments.get(rng.below(fragments.len())).copied().unwrap_or("");
            sql.push_str(f);
            if rng.below(3) == 0 {
                sql.push(' ');
            }
        }
        check_invariants(&sql);
    }
    for _ in 0..5_000 {
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| (rng.next() & 0xff) as u8).collect();
        check_invariants(&String::from_utf8_lossy(&bytes));
        let ascii: String = bytes.iter().map(|b| char::from(b % 128)).collect();
        check_invariants(&ascii);
    }
    check_invariants(&"(".repeat(10_000));
    check_invariants(&")".repeat(10_000));
    check_invariants(&format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200)));
}

#[test]
fn deep_nesting_is_conservative() {
    let deep = format!("SELECT {}nextval('s'){}", "(".repeat(100), ")".repeat(100));
    check_case(&deep, P, SIDE_EFFECT_FUNCTION, &ClassifierConfig::default());
    let deep = format!("SELECT * FROM {}SELECT 1{} x(a)", "(".repeat(80), ")".repeat(80));
    let c = classify(&deep, &ClassifierConfig::default());
    assert!(c.target == R || c.reason == UNKNOWN_FUNCTION, "{c:?}");
}

// --- cache ----------------------------------------------------------------------------

#[test]
fn cache_hits_and_bounds() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ClassifierCache>();
    let cfg = ClassifierConfig::default();
    let cache = ClassifierCache::new(32);
    let a = cache.classify("SELECT 1", &cfg);
    let b = cache.classify("SELECT 1", &cfg);
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.target, R);
    for i in 0..1_000 {
        let sql = format!("SELECT {i}");
        assert_eq!(cache.classify(&sql, &cfg).target, R);
    }
    assert!(cache.len() <= 32, "len {}", cache.len());
    let long = format!("SELECT '{}'", "x".repeat(9_000));
    let before = cache.len();
    let c1 = cache.classify(&long, &cfg);
    let c2 = cache.classify(&long, &cfg);
    assert!(!Arc::ptr_eq(&c1, &c2));
    assert_eq!(cache.len(), before);
    cache.clear();
    assert!(cache.is_empty());
    let off = ClassifierCache::new(0);
    off.classify("SELECT 1", &cfg);
    assert!(off.is_empty());
}

#[test]
fn cache_is_shared_across_threads() {
    let cache = Arc::new(ClassifierCache::new(1024));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                let cfg = ClassifierConfig::default();
                for i in 0..500 {
                    let sql = format!("SELECT {} FROM t{}", i % 50, t);
                    assert_eq!(cache.classify(&sql, &cfg).target, R);
                    let w = cache.classify("DELETE FROM t", &cfg);
                    assert_eq!(w.reason, WRITE);
                }
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().is_ok());
    }
    assert!(cache.len() <= 1024 + 16);
}

// --- benchmark (cargo test --release -- --ignored --nocapture bench) -------------------

#[test]
#[ignore]
fn bench() {
    use std::hint::black_box;
    use std::time::Instant;
    let cfg = ClassifierConfig::default();
    let queries = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "SELECT \"users\".\"id\" FROM \"users\" WHERE \"users\".\"email\" = $1 LIMIT $2",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    ];
    const N: u32 = 1_000_000;
    for sql in queries {
        let start = Instant::now();
        for _ in 0..N {
            black_box(classify(black_box(sql), &cfg));
        }
        let cold = start.elapsed().as_nanos() as f64 / f64::from(N);
        let cache = ClassifierCache::new(10_000);
        cache.classify(sql, &cfg);
        let start = Instant::now();
        for _ in 0..N {
            black_box(cache.classify(black_box(sql), &cfg));
        }
        let cached = start.elapsed().as_nanos() as f64 / f64::from(N);
        println!("{sql}\n  cold classify: {cold:.1} ns/op, cached: {cached:.1} ns/op");
    }
}
