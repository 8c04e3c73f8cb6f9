//! A client's settings stay its own where tracking them is hardest, against real PostgreSQL with
//! clients sharing one server connection: a SET made permanent inside a request or transaction
//! that then fails or rolls back, the role spelled as a setting, a settings replay the server
//! rejects, `pgshift.route`, state no reset undoes (dblink connections, the random seed, a
//! loaded library), and a search path that lets a user's function pass for a built-in.

mod common;

use common::{connect_with_options, proxy, scalar, MAKE_ISO_LOW};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_made_permanent_before_an_error_or_rollback_never_reaches_the_next_client() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;
    let default_path = scalar(&b, "show search_path").await;

    // COMMIT inside the request makes the SET permanent; the error after it drops the request.
    a.simple_query("SET search_path = iso_evil, public; COMMIT; SELECT 1/0").await.unwrap_err();
    assert_eq!(scalar(&b, "show search_path").await, default_path, "search_path leaked past an error");

    a.simple_query("SET work_mem = '65kB'; COMMIT; SELECT 1/0").await.unwrap_err();
    assert_eq!(scalar(&b, "show work_mem").await.as_deref(), Some("4MB"), "leaked past an error");

    // ROLLBACK TO answers with the same tag as ROLLBACK, but the SET before it stays.
    a.batch_execute("BEGIN; SET work_mem = '64kB'; SAVEPOINT s").await.unwrap();
    a.simple_query("SELECT 1/0").await.unwrap_err();
    a.batch_execute("ROLLBACK TO s; COMMIT").await.unwrap();
    assert_eq!(scalar(&b, "show work_mem").await.as_deref(), Some("4MB"), "leaked past ROLLBACK TO");

    // COMMIT AND CHAIN commits the SET; the ROLLBACK after it only ends the chained transaction.
    a.batch_execute("BEGIN; SET work_mem = '66kB'; COMMIT AND CHAIN").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(scalar(&b, "show work_mem").await.as_deref(), Some("4MB"), "leaked past COMMIT AND CHAIN");

    // The same through the extended protocol.
    let mut a = a;
    let t = a.transaction().await.unwrap();
    t.execute("SET work_mem = '73kB'", &[]).await.unwrap();
    t.execute("SAVEPOINT s", &[]).await.unwrap();
    t.execute("SELECT 1/0", &[]).await.unwrap_err();
    t.execute("ROLLBACK TO s", &[]).await.unwrap();
    t.commit().await.unwrap();
    assert_eq!(scalar(&b, "show work_mem").await.as_deref(), Some("4MB"), "leaked (extended protocol)");

    // A client that leaves inside a chained transaction.
    a.batch_execute("BEGIN; SET work_mem = '67kB'; COMMIT AND CHAIN").await.unwrap();
    drop(a);
    assert_eq!(scalar(&b, "show work_mem").await.as_deref(), Some("4MB"), "leaked by a client that left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_spelled_as_a_setting_pins_and_never_reaches_the_next_client() {
    common::setup_on_bed(MAKE_ISO_LOW);
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    for set in [
        "SET \"role\" TO iso_low",
        "SET \"Role\" TO iso_low",
        "SET session_authorization TO iso_low",
        "SET SESSION \"role\" = iso_low",
    ] {
        let a = common::connect(port, "app", "app", "app").await;
        a.batch_execute(set).await.unwrap();
        // RESET ALL leaves the role as it is (PostgreSQL's rule); pgshift must not think otherwise.
        a.batch_execute("RESET ALL").await.unwrap();
        assert_eq!(scalar(&a, "select current_user").await.as_deref(), Some("iso_low"), "{set}");
        drop(a);
        let b = common::connect(port, "app", "app", "app").await;
        assert_eq!(scalar(&b, "select current_user").await.as_deref(), Some("app"), "role leaked after {set}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_replay_the_server_rejects_never_shows_another_clients_settings() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let victim = common::connect(port, "app", "app", "app").await;
    victim.batch_execute("SET app.tenant = 'victim-42'; SET search_path = iso_evil, public").await.unwrap();
    scalar(&victim, "select 1").await;
    drop(victim);

    // PostgreSQL refuses this at login; pgshift replays it on the server, which rejects it.
    let a = connect_with_options(port, "-c work_mem=bogus").await;
    let tenant = scalar(&a, "select current_setting('app.tenant', true)").await;
    assert!(tenant.as_deref().unwrap_or("").is_empty(), "the victim's tenant reached the next client: {tenant:?}");
    assert_ne!(scalar(&a, "show search_path").await.as_deref(), Some("iso_evil, public"));
    assert_eq!(scalar(&a, "show work_mem").await.as_deref(), Some("4MB"));
    drop(a);
    let c = common::connect(port, "app", "app", "app").await;
    let tenant = scalar(&c, "select current_setting('app.tenant', true)").await;
    assert!(tenant.as_deref().unwrap_or("").is_empty(), "reached a later client: {tenant:?}");

    // SET TIME ZONE INTERVAL ... is replayed in a form the server accepts.
    let a = common::connect(port, "app", "app", "app").await;
    a.batch_execute("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE").await.unwrap();
    let zone = scalar(&a, "show timezone").await;
    c.batch_execute("SET app.tenant = 'victim-77'").await.unwrap();
    scalar(&c, "select 1").await;
    let tenant = scalar(&a, "select current_setting('app.tenant', true)").await;
    assert!(tenant.as_deref().unwrap_or("").is_empty(), "another client's tenant: {tenant:?}");
    assert_eq!(scalar(&a, "show timezone").await, zone, "the client's own time zone follows it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgshift_route_is_reset_for_the_next_client() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;
    a.batch_execute("SET pgshift.route = 'tok-s3cr3t'").await.unwrap();
    let got = scalar(&b, "select current_setting('pgshift.route', true)").await;
    assert!(got.as_deref().unwrap_or("").is_empty(), "one client's string reached the next: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_no_reset_undoes_closes_the_server_instead() {
    let bed = common::shared_bed().primary_port;
    common::setup_on_bed("CREATE EXTENSION IF NOT EXISTS dblink");
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);

    let a = common::connect(port, "app", "app", "app").await;
    let conninfo = format!("host=127.0.0.1 port={bed} user=app password=app dbname=app");
    a.simple_query(&format!("select dblink_connect('iso_leak', '{conninfo}')")).await.unwrap();
    // The client keeps its server (its dblink connection works across transactions).
    let seen = scalar(&a, "select array_to_string(dblink_get_connections(), ',')").await;
    assert_eq!(seen.as_deref(), Some("iso_leak"));
    drop(a);
    let b = common::connect(port, "app", "app", "app").await;
    let seen = scalar(&b, "select coalesce(array_to_string(dblink_get_connections(), ','), '')").await;
    assert_eq!(seen.as_deref(), Some(""), "another client's dblink connection survived");

    let direct = common::connect(bed, "app", "app", "app").await;
    let predicted = scalar(&direct, "select setseed(0.5)::text || random()::text").await;
    for seeding in [
        "select setseed(0.5)",
        "select pg_advisory_lock(1), setseed(0.5)",
        "begin; set local seed = 0.5; commit",
        "select set_config('seed', '0.5', true)",
        "do $$ begin perform setseed(0.5); end $$",
    ] {
        let a = common::connect(port, "app", "app", "app").await;
        a.batch_execute(seeding).await.unwrap();
        drop(a);
        let b_random = scalar(&b, "select ''::text || random()::text").await;
        assert_ne!(b_random, predicted, "the next client's random() followed the seed of {seeding:?}");
    }

    let a = common::connect(port, "app", "app", "app").await;
    a.batch_execute("LOAD 'auto_explain'").await.unwrap();
    drop(a);
    let loaded = scalar(&b, "select current_setting('auto_explain.log_min_duration', true)").await;
    assert_eq!(loaded, None, "a library another client loaded is still in the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_read_otherwise_than_pgshift_reads_them_never_hide_a_statement() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    // At login: refused, with the reason.
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user("app").password("app").dbname("app");
    cfg.options("-c standard_conforming_strings=off");
    let err = cfg.connect(tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");

    // For one transaction: the client keeps its server, which is closed after it.
    let direct = common::connect(common::shared_bed().primary_port, "app", "app", "app").await;
    let predicted = scalar(&direct, "select setseed(0.5)::text || random()::text").await;
    let a = common::connect(port, "app", "app", "app").await;
    a.batch_execute("BEGIN; SET LOCAL standard_conforming_strings = off").await.unwrap();
    // pgshift's lexer (strings conforming) sees one string; the server runs setseed.
    a.batch_execute(r"SELECT 'a\' || ' ; SELECT setseed(0.5); --'").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    drop(a);
    let b = common::connect(port, "app", "app", "app").await;
    let b_random = scalar(&b, "select ''::text || random()::text").await;
    assert_ne!(b_random, predicted, "a statement hidden in a string set the next client's seed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extensions_function_name_is_not_taken_for_a_builtin() {
    common::setup_on_bed(&format!(
        "{MAKE_ISO_LOW}; \
         CREATE OR REPLACE FUNCTION public.soundex(text) RETURNS text LANGUAGE plpgsql AS \
         $f$ BEGIN PERFORM set_config('role', 'iso_low', false); RETURN $1; END $f$"
    ));
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;
    scalar(&a, "select soundex('x')").await;
    assert_eq!(scalar(&b, "select current_user").await.as_deref(), Some("app"), "a user's soundex() set the role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_standing_in_for_a_built_in_never_leaves_state_for_the_next_client() {
    // `lower(text)` in a schema named before pg_catalog: what reads as a built-in creates a
    // temporary table, which a RESET ALL keeps and which shadows tables for the next client.
    common::setup_on_bed(
        "CREATE SCHEMA IF NOT EXISTS iso_shadow; \
         CREATE OR REPLACE FUNCTION iso_shadow.lower(text) RETURNS text LANGUAGE plpgsql AS \
         $$ BEGIN CREATE TEMP TABLE IF NOT EXISTS iso_shadowed (v text); RETURN $1; END $$",
    );
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    for path in ["iso_shadow, pg_catalog", "iso_shadow, \"pg_catalog\""] {
        let a = common::connect(port, "app", "app", "app").await;
        a.batch_execute(&format!("SET search_path = {path}")).await.expect("A's SET");
        assert_eq!(scalar(&a, "select lower('Abc')").await.as_deref(), Some("Abc"), "A ran its own lower");
        drop(a);
        let b = common::connect(port, "app", "app", "app").await;
        let visible = scalar(&b, "select to_regclass('pg_temp.iso_shadowed') is not null").await;
        assert_eq!(visible.as_deref(), Some("f"), "{path}: A's temporary table reached the next client");
    }
}
