//! Many databases through one listener: `[databases]` entries on two clusters, aliases, the `*`
//! entry, per-database pool sizes, discovered roles in a named cluster, and every per-user and
//! per-database limit refusing with 53300 (real PostgreSQL: the shared bed's primary + replicas
//! and the independent target server as a second cluster).

mod common;

use common::{connect, proxy, shared_bed, superuser_exec, try_connect};
use pgshift::config::Config;
use std::time::Duration;

/// A proxy config with `extra` TOML (`[clusters]`, `[databases]`, `[users]`) appended.
fn config(extra: &str) -> Config {
    let bed = shared_bed();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\ndefault_pool_size = 5\nquery_wait_timeout = \"2s\"\n\
         [auth]\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n\
         [[auth.users]]\nname = \"dbuser_b\"\npassword = \"app\"\n\
         [primary]\nhost = \"127.0.0.1\"\nport = {}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t\"\nadmin_users = [\"app\"]\n{extra}",
        bed.primary_port
    );
    Config::from_toml(&text).expect("test config is valid")
}

async fn one_text(c: &tokio_postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).await.expect(sql).get::<_, String>(0)
}

/// Server port and database a client really reached.
async fn reached(c: &tokio_postgres::Client) -> (String, String) {
    let row = c.query_one("SELECT inet_server_port()::text, current_database()::text", &[]).await.expect("where am I");
    (row.get(0), row.get(1))
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("no db error: {e}"))
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn names_on_two_clusters_an_alias_and_any_other_name_through_one_port() {
    let bed = shared_bed();
    superuser_exec(bed.primary_port, "SELECT 1 FROM pg_database WHERE datname = 'app'");
    let extra = format!(
        "[clusters.second]\nhosts = [\"127.0.0.1:{t}\"]\n\
         [databases.app]\n\
         [databases.reporting]\ndbname = \"app\"\npool_size = 2\n\
         [databases.elsewhere]\ncluster = \"second\"\ndbname = \"app\"\n\
         [databases.\"*\"]\n",
        t = bed.target_port
    );
    let p = proxy::start(config(&extra)).await;
    let port = proxy::port(&p);
    let (primary, target) = (bed.primary_port.to_string(), bed.target_port.to_string());

    let app = connect(port, "app", "app", "app").await;
    assert_eq!(reached(&app).await, (primary.clone(), "app".into()));
    let alias = connect(port, "app", "app", "reporting").await;
    assert_eq!(reached(&alias).await, (primary.clone(), "app".into()), "an alias names another server database");
    let other = connect(port, "app", "app", "elsewhere").await;
    assert_eq!(reached(&other).await, (target, "app".into()), "a second cluster through the same port");
    // "*": any other name, same name on the default cluster ("postgres" exists there)
    let any = connect(port, "app", "app", "postgres").await;
    assert_eq!(reached(&any).await, (primary, "postgres".into()));
    // "*" passes the name through: PostgreSQL's own 3D000 for a database it does not have
    let e = try_connect(port, "app", "app", "no_such_db_here").await.expect_err("refused");
    assert_eq!(sqlstate(&e), "3D000");

    // SHOW DATABASES lists each entry with its cluster and server database
    let console = connect(port, "app", "app", "pgbouncer").await;
    let rows = console.simple_query("SHOW DATABASES").await.expect("show databases");
    let listed: Vec<(String, String, String)> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get("name").unwrap_or_default().to_string(),
                r.get("database").unwrap_or_default().to_string(),
                r.get("cluster").unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .collect();
    for want in [("reporting", "app", "default"), ("elsewhere", "app", "second"), ("app", "app", "default")] {
        let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
        assert!(listed.contains(&want), "{want:?} not in SHOW DATABASES: {listed:?}");
    }
}

#[tokio::test]
async fn without_a_star_entry_an_unlisted_name_is_3d000_from_pgshift() {
    let p = proxy::start(config("[databases.app]\n")).await;
    let e = try_connect(proxy::port(&p), "app", "app", "postgres").await.expect_err("refused");
    assert_eq!(sqlstate(&e), "3D000");
    assert!(message(&e).contains("pgshift serves no database"), "{}", message(&e));
    connect(proxy::port(&p), "app", "app", "app").await;
}

#[tokio::test]
async fn a_per_database_pool_size_holds_under_load() {
    let p = proxy::start(config("[databases.small]\ndbname = \"app\"\npool_size = 2\n[databases.app]\n")).await;
    let port = proxy::port(&p);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move {
            let c = connect(port, "app", "app", "small").await;
            for _ in 0..3 {
                c.batch_execute("BEGIN; SELECT pg_sleep(0.05); COMMIT").await.expect("transaction");
            }
            c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get::<_, i32>(0)
        }));
    }
    let mut max_open = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        let open: usize = p
            .shared
            .pools
            .entries()
            .iter()
            .filter(|(k, _)| k.name == "small")
            .map(|(_, pool)| {
                let s = pool.snapshot();
                s.sv_active + s.sv_idle + s.sv_login
            })
            .sum();
        max_open = max_open.max(open);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut pids = std::collections::HashSet::new();
    for t in tasks {
        pids.insert(t.await.expect("client task"));
    }
    assert!(max_open <= 2, "pool_size = 2 for \"small\", saw {max_open} server connections");
    assert!(pids.len() <= 2, "6 clients ran on {} server backends", pids.len());
}

#[tokio::test]
async fn server_connection_limits_refuse_with_53300_naming_the_limit() {
    let extra = "[databases.limited]\ndbname = \"app\"\nmax_db_connections = 1\n[databases.app]\n\
                 [users.dbuser_b]\nmax_user_connections = 1\n";
    superuser_exec(
        shared_bed().primary_port,
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbuser_b') THEN \
         CREATE ROLE dbuser_b LOGIN PASSWORD 'app'; END IF; END $$; GRANT CONNECT ON DATABASE app TO dbuser_b",
    );
    let p = proxy::start(config(extra)).await;
    let port = proxy::port(&p);
    for (user, db, limit) in
        [("app", "limited", "max_db_connections = 1"), ("dbuser_b", "app", "max_user_connections = 1")]
    {
        let holder = connect(port, user, "app", db).await;
        holder.batch_execute("BEGIN; SELECT 1").await.expect("hold a server");
        let waiter = connect(port, user, "app", db).await;
        let e = waiter.query_one("SELECT 1", &[]).await.expect_err("over the limit");
        assert_eq!(sqlstate(&e), "53300", "{user}@{db}");
        assert!(message(&e).contains(limit), "message names the limit: {}", message(&e));
        // once the holder is done, a new client gets the slot
        holder.batch_execute("COMMIT").await.expect("commit");
        let next = connect(port, user, "app", db).await;
        next.query_one("SELECT 1", &[]).await.expect("slot free again");
    }
}

#[tokio::test]
async fn a_limit_takes_idle_connections_from_other_pools_of_the_database() {
    // two users share max_db_connections = 1: the idle server of the first must make way
    let extra = "[databases.shared_db]\ndbname = \"app\"\nmax_db_connections = 1\n";
    superuser_exec(
        shared_bed().primary_port,
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbuser_b') THEN \
         CREATE ROLE dbuser_b LOGIN PASSWORD 'app'; END IF; END $$; GRANT CONNECT ON DATABASE app TO dbuser_b",
    );
    let p = proxy::start(config(extra)).await;
    let port = proxy::port(&p);
    let a = connect(port, "app", "app", "shared_db").await;
    a.query_one("SELECT 1", &[]).await.expect("first user");
    let b = connect(port, "dbuser_b", "app", "shared_db").await;
    b.query_one("SELECT 1", &[]).await.expect("second user gets the slot of the first's idle server");
    a.query_one("SELECT 1", &[]).await.expect("and back");
}

#[tokio::test]
async fn client_limits_refuse_at_login_with_53300() {
    let extra = "[databases.few]\ndbname = \"app\"\nmax_db_client_connections = 1\n[databases.app]\n\
                 [users.dbuser_b]\nmax_user_client_connections = 1\n";
    superuser_exec(
        shared_bed().primary_port,
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbuser_b') THEN \
         CREATE ROLE dbuser_b LOGIN PASSWORD 'app'; END IF; END $$; GRANT CONNECT ON DATABASE app TO dbuser_b",
    );
    let p = proxy::start(config(extra)).await;
    let port = proxy::port(&p);
    for (user, db, limit) in
        [("app", "few", "max_db_client_connections = 1"), ("dbuser_b", "app", "max_user_client_connections = 1")]
    {
        let first = connect(port, user, "app", db).await;
        let e = try_connect(port, user, "app", db).await.expect_err("second client refused");
        assert_eq!(sqlstate(&e), "53300");
        assert!(message(&e).contains(limit), "{}", message(&e));
        drop(first);
        // the place is given back when the client leaves
        let mut ok = false;
        for _ in 0..100 {
            if try_connect(port, user, "app", db).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "{limit}: a place again after the first client left");
    }
}

#[tokio::test]
async fn a_named_cluster_finds_its_primary_whatever_order_its_hosts_are_in() {
    let bed = shared_bed();
    // declared backwards: a replica first
    let extra = format!(
        "[clusters.ha]\nhosts = [\"127.0.0.1:{r}\", \"postgres://127.0.0.1:{p}\"]\n\
         [databases.ha_app]\ncluster = \"ha\"\ndbname = \"app\"\n",
        r = bed.replica_ports[0],
        p = bed.primary_port
    );
    let p = proxy::start(config(&extra)).await;
    let port = proxy::port(&p);
    let c = connect(port, "app", "app", "ha_app").await;
    let mut wrote = false;
    for _ in 0..200 {
        let r = c.batch_execute("CREATE TABLE IF NOT EXISTS ha_probe (x int); INSERT INTO ha_probe VALUES (1)").await;
        if r.is_ok() {
            wrote = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(wrote, "writes reach the node that reports itself primary");
    let rt = p.shared.runtime.load();
    let ha = rt.clusters.iter().find(|c| c.name == "ha").expect("cluster ha");
    assert_eq!(ha.primary.address, format!("127.0.0.1:{}", bed.primary_port));
    c.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(one_text(&c, "SELECT pg_is_in_recovery()::text").await, "false", "a transaction runs on the primary");
    c.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test]
async fn per_database_pool_mode_and_query_timeout_apply() {
    let extra = "[databases.sess]\ndbname = \"app\"\npool_mode = \"session\"\npool_size = 1\n\
                 [databases.quick]\ndbname = \"app\"\nquery_timeout = \"300ms\"\n[databases.app]\n";
    let p = proxy::start(config(extra)).await;
    let port = proxy::port(&p);
    // session mode: an idle client keeps its server, so with one server the next client waits
    // (and times out); in transaction mode it would have run between the first one's queries
    let s = connect(port, "app", "app", "sess").await;
    s.query_one("SELECT 1", &[]).await.expect("first client");
    let other = connect(port, "app", "app", "sess").await;
    let e = other.query_one("SELECT 1", &[]).await.expect_err("no server for the second client");
    assert_eq!(sqlstate(&e), "53300");
    s.query_one("SELECT 1", &[]).await.expect("first client keeps its server");
    // query_timeout for one database only
    let q = connect(port, "app", "app", "quick").await;
    let e = q.query_one("SELECT pg_sleep(5)", &[]).await.expect_err("cancelled by query_timeout");
    assert_eq!(sqlstate(&e), "57014");
    let a = connect(port, "app", "app", "app").await;
    a.query_one("SELECT pg_sleep(0.5)", &[]).await.expect("no query_timeout on app");
}

#[tokio::test]
async fn per_user_pool_mode_size_and_query_timeout_apply() {
    superuser_exec(
        shared_bed().primary_port,
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbuser_b') THEN \
         CREATE ROLE dbuser_b LOGIN PASSWORD 'app'; END IF; END $$; GRANT CONNECT ON DATABASE app TO dbuser_b",
    );
    let extra = "[users.dbuser_b]\npool_mode = \"session\"\npool_size = 1\nquery_timeout = \"300ms\"\n";
    let p = proxy::start(config(extra)).await;
    let port = proxy::port(&p);
    // dbuser_b: session mode on one server, so a second client of it waits and times out.
    let b1 = connect(port, "dbuser_b", "app", "app").await;
    b1.query_one("SELECT 1", &[]).await.expect("first client of dbuser_b");
    let b2 = connect(port, "dbuser_b", "app", "app").await;
    let e = b2.query_one("SELECT 1", &[]).await.expect_err("no server for dbuser_b's second client");
    assert_eq!(sqlstate(&e), "53300");
    // ... and its query_timeout.
    let e = b1.query_one("SELECT pg_sleep(5)", &[]).await.expect_err("cancelled by dbuser_b's query_timeout");
    assert_eq!(sqlstate(&e), "57014");
    // app keeps [proxy]'s transaction mode, pool size and no query_timeout.
    let a1 = connect(port, "app", "app", "app").await;
    let a2 = connect(port, "app", "app", "app").await;
    a1.query_one("SELECT 1", &[]).await.expect("app 1");
    a2.query_one("SELECT pg_sleep(0.5)", &[]).await.expect("app 2: no query_timeout");
}
