//! Which statements are proven free of session effects (and so need no reset after them).

use super::{classify, ClassifierConfig};

fn pure(sql: &str) -> bool {
    let mut cfg = ClassifierConfig::with_safe_functions(["my_safe_fn"]);
    cfg.standard_conforming_strings = true;
    classify(sql, &cfg).pure()
}

#[test]
fn plain_reads_writes_and_tracked_settings_are_pure() {
    for sql in [
        "select abalance from pgbench_accounts where aid = 1",
        "select count(*), lower(x), now() from t where y = any($1)",
        "insert into pgbench_history (tid, bid, aid, delta, mtime) values (1, 2, 3, 4, current_timestamp)",
        "update pgbench_accounts set abalance = abalance + 1 where aid = 2",
        "delete from t where id in (select id from u where v = coalesce($1, 0))",
        "begin; select 1; commit",
        "set search_path = a, b",
        "set local statement_timeout = '1s'",
        "select set_config('app.tenant', '42', true)",
        "select set_config('app.tenant', $1, true)",
        "select pg_catalog.set_config('app.tenant', $1, true)",
        "select * from t where a in (1, 2) and exists (select 1) and b = coalesce($1, row(1, 2))",
        "show work_mem",
        "select * from t for update",
        "",
    ] {
        assert!(pure(sql), "should be pure: {sql}");
    }
}

#[test]
fn anything_that_may_change_the_session_is_not() {
    for sql in [
        "select set_tenant('42')",
        "select my_safe_fn(1)",
        "select myschema.lower('x')",
        "do $$ begin execute 'set role x'; end $$",
        "call p()",
        "create table pg_temp.x (a int)",
        "create temp table x (a int)",
        "copy (select f()) to stdout",
        "copy t from stdin",
        "select * into temp t from u",
        "select set_config('app.tenant', '42', false)",
        "select pg_advisory_lock(1)",
        "insert into t select f(x) from u",
        "update t set a = nextval('s')",
        "execute stmt(1)",
        "declare c cursor for select f()",
        "load 'auto_explain'",
        "listen ch",
        "set role other",
        "select 1; select f()",
        "select freeze(1)",
        "update t set a = freeze(1)",
        "select count(*) filter (where x) from t",
        "select set_config('a.b', evil(1)::text, true)",
        "select set_config('a.b', $1::mytype, true)",
        "select s.set_config('a', 'b', true)",
        "set standard_conforming_strings = off",
    ] {
        assert!(!pure(sql), "should not be pure: {sql}");
    }
}

#[test]
fn pgshift_statement_names_are_reserved() {
    use super::SessionEffect;
    let cfg = ClassifierConfig::default();
    for sql in [
        "deallocate pgshift_0123",
        "DEALLOCATE PREPARE PGSHIFT_x",
        "prepare pgshift_x as select 1",
        "execute pgshift_1(2)",
    ] {
        let c = classify(sql, &cfg);
        assert_eq!(c.statements[0].session, SessionEffect::ReservedName, "{sql}");
    }
    assert_ne!(classify("deallocate mine", &cfg).statements[0].session, SessionEffect::ReservedName);
}

#[test]
fn not_function_names_are_sorted() {
    let l = super::functions::NOT_FUNCTION_NAMES;
    assert!(l.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn writes_to_pg_settings_are_sets_in_disguise_and_pin() {
    use super::SessionEffect;
    let cfg = ClassifierConfig::default();
    for sql in [
        "update pg_settings set setting = 'evil, public' where name = 'search_path'",
        "UPDATE pg_catalog.PG_SETTINGS SET setting = '0' WHERE name = 'statement_timeout'",
        "update \"pg_settings\" set setting = 'x' where name = 'search_path'",
        "with u as (update pg_settings set setting = 'x' where name = 'search_path' returning 1) select * from u",
    ] {
        let c = classify(sql, &cfg);
        assert_eq!(c.statements[0].session, SessionEffect::Pin("pg_settings"), "{sql}: {c:?}");
        assert!(!c.pure(), "{sql}");
    }
    // Spelled in Unicode escapes, it could be anything: the stronger pin.
    let c = classify("update U&\"pg_setting\\0073\" set setting = 'x' where name = 'search_path'", &cfg);
    assert_eq!(c.statements[0].session, SessionEffect::Pin("unicode_identifier"));
    // Reading the view changes nothing.
    assert!(pure("select name, setting from pg_settings where name = 'search_path'"));
}

#[test]
fn a_search_path_naming_pg_catalog_after_another_schema_is_not() {
    for sql in [
        "set search_path = evil, pg_catalog",
        "set local search_path = evil, pg_catalog",
        "set search_path to \"$user\", public, PG_CATALOG",
        "set search_path = evil, E'pg_c\\141talog'",
        "set search_path = 'evil', 'pg_catalog'",
        "select set_config('search_path', 'evil, pg_catalog', true)",
        "select set_config('search_path', 'pg_catalog', true)",
    ] {
        assert!(!pure(sql), "should not be pure: {sql}");
    }
    for sql in ["set search_path = pg_catalog, evil", "set search_path = evil, public", "set local search_path = x"] {
        assert!(pure(sql), "should be pure: {sql}");
    }
    assert!(super::search_path_shadows("'evil,pg_catalog'"), "a startup parameter's literal");
    assert!(!super::search_path_shadows("'pg_catalog,evil'"));
}
