//! One client's prepared statements answer for it alone, against real PostgreSQL with clients
//! sharing one server connection: a statement another client parsed under other settings (a time
//! zone, a date style, a search path, one set for its transaction only) or as another role never
//! stands in for this client's own, and one left on a server under its client's own name (statement
//! tracking off) is out of reach of the next client.

mod common;

use common::{proxy, raw, scalar};

/// Parsed literals PostgreSQL folds under the settings of the session that parses them.
const IN_TOKYO: &str = "select extract(epoch from '2024-01-01 00:00'::timestamptz)::bigint::text";
const DAY_FIRST: &str = "select '01/02/2024'::date::text";

/// The text of the first column of the one row `sql` gives as a named prepared statement.
async fn prepared_text(c: &tokio_postgres::Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let stmt = c.prepare(sql).await?;
    Ok(c.query_one(&stmt, &[]).await?.get::<_, String>(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_parsed_under_another_clients_settings_never_answers_for_this_one() {
    common::setup_on_bed(
        "CREATE SCHEMA IF NOT EXISTS iso_sp_a; CREATE SCHEMA IF NOT EXISTS iso_sp_b; \
         CREATE TABLE IF NOT EXISTS iso_sp_a.t (v text); CREATE TABLE IF NOT EXISTS iso_sp_b.t (v int, w int); \
         TRUNCATE iso_sp_a.t, iso_sp_b.t; INSERT INTO iso_sp_a.t VALUES ('a-secret'); INSERT INTO iso_sp_b.t VALUES (1, 2);",
    );
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'ISO, DMY'; SET search_path = iso_sp_a")
        .await
        .unwrap();
    assert_eq!(prepared_text(&a, IN_TOKYO).await.unwrap(), "1704034800");
    assert_eq!(prepared_text(&a, DAY_FIRST).await.unwrap(), "2024-02-01");
    assert_eq!(prepared_text(&a, "select v from t").await.unwrap(), "a-secret");
    a.prepare("select * from t").await.unwrap();

    let b = common::connect(port, "app", "app", "app").await;
    b.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET search_path = iso_sp_b").await.unwrap();
    for sql in [IN_TOKYO, DAY_FIRST] {
        let direct = scalar(&b, sql).await.unwrap();
        assert_eq!(prepared_text(&b, sql).await.unwrap(), direct, "{sql}: B got the answer of A's settings");
    }
    // The same name under B's search path: B's own table, never a plan error A caused.
    let stmt = b.prepare("select * from t").await.expect("B prepares its own statement");
    let row = b.query_one(&stmt, &[]).await.expect("B runs its own statement");
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 2));

    // Clients with the same settings still share one server copy; each client's own still works.
    let c = common::connect(port, "app", "app", "app").await;
    c.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET search_path = iso_sp_b").await.unwrap();
    assert_eq!(prepared_text(&c, DAY_FIRST).await.unwrap(), "2024-01-02");
    let copies =
        scalar(&c, &format!("select count(*) from pg_prepared_statements where statement = $q${DAY_FIRST}$q$")).await;
    assert_eq!(copies.as_deref(), Some("2"), "one copy for A's settings, one shared by B and C");
    assert_eq!(prepared_text(&a, DAY_FIRST).await.unwrap(), "2024-02-01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_parsed_under_a_setting_for_one_transaction_never_answers_for_another_client() {
    common::setup_on_bed(
        "CREATE TABLE IF NOT EXISTS iso_sc (v text); TRUNCATE iso_sc; INSERT INTO iso_sc VALUES ('x');",
    );
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;
    let local = format!("{IN_TOKYO} /* local */");
    let config = format!("{DAY_FIRST} /* config */");

    a.batch_execute("BEGIN; SET LOCAL TimeZone = 'Asia/Tokyo'").await.unwrap();
    assert_eq!(prepared_text(&a, &local).await.unwrap(), "1704034800");
    a.batch_execute("COMMIT").await.unwrap();
    // set_config(..., true) inside a write: transaction-local too.
    a.batch_execute("BEGIN; UPDATE iso_sc SET v = set_config('DateStyle', 'ISO, DMY', true)").await.unwrap();
    assert_eq!(prepared_text(&a, &config).await.unwrap(), "2024-02-01");
    a.batch_execute("COMMIT").await.unwrap();

    for sql in [&local, &config] {
        let direct = scalar(&b, sql).await.unwrap();
        assert_eq!(prepared_text(&b, sql).await.unwrap(), direct, "{sql}: B got A's transaction's settings");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_setting_for_one_transaction_costs_prepared_statements_no_reset() {
    // The row-level security pattern: a tenant set for the transaction, then prepared
    // statements. A custom setting changes no parse, so the server is not reset after.
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let resets = || {
        p.shared
            .pools
            .all()
            .iter()
            .map(|pool| pool.stats.resets.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>()
    };
    let before = resets();
    for tenant in ["1", "2", "3"] {
        a.batch_execute(&format!("BEGIN; SET LOCAL app.tenant = '{tenant}'")).await.unwrap();
        let sql = "select current_setting('app.tenant') /* tenant */";
        assert_eq!(prepared_text(&a, sql).await.unwrap(), tenant);
        a.batch_execute("SELECT set_config('app.other', 'x', true)").await.unwrap();
        a.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(resets(), before, "a transaction-local custom setting sent the server through a reset");
}

/// A config with two roles, `app` and `iso_prober` (password `low`), one server connection each.
fn two_roles() -> pgshift::config::Config {
    let port = common::shared_bed().primary_port;
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\ndefault_pool_size = 1\nquery_wait_timeout = \"30s\"\n\
         [auth]\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n\
         [[auth.users]]\nname = \"iso_prober\"\npassword = \"low\"\n\
         [primary]\nhost = \"127.0.0.1\"\nport = {port}\n[admin]\nlisten = \"\"\n"
    );
    pgshift::config::Config::from_toml(&text).expect("test config is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_never_tells_one_role_what_another_prepared() {
    common::setup_on_bed(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iso_prober') THEN \
         CREATE ROLE iso_prober; END IF; END $$; ALTER ROLE iso_prober LOGIN PASSWORD 'low'; \
         CREATE SCHEMA IF NOT EXISTS iso_private; REVOKE ALL ON SCHEMA iso_private FROM PUBLIC; \
         CREATE TABLE IF NOT EXISTS iso_private.t (secret text);",
    );
    let p = proxy::start(two_roles()).await;
    let port = proxy::port(&p);
    let sql = "select secret from iso_private.t where secret = 'guessed-value'";
    let owner = common::connect(port, "app", "app", "app").await;
    owner.prepare(sql).await.unwrap();

    // PQprepare's messages: Parse and Sync. Directly, PostgreSQL refuses the schema at Parse.
    let mut low = raw::login(port, "iso_prober", "low", "app").await;
    let mut m = Vec::new();
    raw::parse(&mut m, "probe", sql);
    raw::sync(&mut m);
    raw::send(&mut low, &m).await;
    let frames = raw::read_frames(&mut low, b'Z').await;
    let error = frames.iter().find(|(t, _)| *t == b'E');
    let fields = error.map(|(_, body)| raw::error_fields(body)).unwrap_or_default();
    assert!(
        fields.contains(&(b'C', "42501".to_string())),
        "the other role's Parse was answered from the owner's statement: {frames:?}"
    );
    // The owner's statement still works for it.
    assert_eq!(owner.query(sql, &[]).await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_statement_left_untracked_is_out_of_reach_of_the_next_client() {
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.default_pool_size = 2;
    cfg.proxy.max_prepared_statements = 0; // no renaming: statements keep the client's names
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let mut a = raw::login(port, "app", "app", "app").await;
    let mut m = Vec::new();
    raw::parse(&mut m, "iso_named", "select 'secret-of-A'::text");
    raw::sync(&mut m);
    raw::send(&mut a, &m).await;
    assert_eq!(raw::read_tags(&mut a, b'Z').await, b"1Z");

    // B binds the name A chose: PostgreSQL's answer to B alone is 26000.
    let mut b = raw::login(port, "app", "app", "app").await;
    let mut m = Vec::new();
    raw::bind(&mut m, "iso_named", &[]);
    raw::describe_execute_sync(&mut m);
    raw::send(&mut b, &m).await;
    let frames = raw::read_frames(&mut b, b'Z').await;
    assert!(frames.iter().all(|(t, _)| *t != b'D' && *t != b'T'), "B ran A's statement: {frames:?}");
    let fields = frames.iter().find(|(t, _)| *t == b'E').map(|(_, e)| raw::error_fields(e)).unwrap_or_default();
    assert!(fields.contains(&(b'C', "26000".to_string())), "{frames:?}");

    // A's statement still works for A.
    let mut m = Vec::new();
    raw::bind(&mut m, "iso_named", &[]);
    raw::describe_execute_sync(&mut m);
    raw::send(&mut a, &m).await;
    let frames = raw::read_frames(&mut a, b'Z').await;
    assert!(frames.iter().any(|(t, body)| *t == b'D' && body.windows(11).any(|w| w == b"secret-of-A")), "{frames:?}");
}
