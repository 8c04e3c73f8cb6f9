//! Login-side hardening against real PostgreSQL: cancel requests when max_client_conn is reached,
//! sockets still logging in kept apart from logged-in clients, a per-address limit on failed
//! logins, and auth_query failures reported as what they are.

mod common;

use common::{proxy, until};
use std::time::Duration;
use tokio_postgres::error::SqlState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_works_when_max_client_conn_is_reached() {
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.max_client_conn = 2;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;
    let err = common::try_connect(port, "app", "app", "app").await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");

    let token = a.cancel_token();
    let sleeping = tokio::spawn(async move { a.simple_query("select pg_sleep(30)").await.map(|_| ()) });
    // cancel once the query is running on PostgreSQL
    for _ in 0..200 {
        let n = b
            .query_one(
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_failures_are_not_reported_as_wrong_passwords() {
    let login_error = |port: u16, user: &'static str| async move {
        let Err(err) = common::try_connect(port, user, "whatever", "app").await else { panic!("login should fail") };
        let db = err.as_db_error().unwrap_or_else(|| panic!("no server error: {err}"));
        (db.code().code().to_string(), db.message().to_string())
    };
    // PostgreSQL unreachable: nothing listens on the primary's port
    let mut cfg = proxy::config(common::free_port(), &[]);
    cfg.auth.auth_user = "app".into();
    cfg.proxy.server_connect_retry = pgshift::config::Dur::secs(0);
    let p = proxy::start(cfg).await;
    let (code, msg) = login_error(proxy::port(&p), "aq_nobody").await;
    assert_eq!(code, "08006", "{msg}");
    assert_eq!(msg, "authentication lookup failed: could not reach the auth_query server");
    drop(p);

    // the query fails
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.auth.auth_user = "app".into();
    cfg.auth.auth_query = "SELECT usename, passwd FROM no_such_table WHERE usename = $1".into();
    let p = proxy::start(cfg).await;
    let (code, msg) = login_error(proxy::port(&p), "aq_nobody").await;
    assert_eq!((code.as_str(), msg.as_str()), ("08006", "authentication lookup failed: auth_query failed"));
    drop(p);

    // a user auth_query does not find is still a wrong password
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.auth.auth_user = "app".into();
    let p = proxy::start(cfg).await;
    let (code, msg) = login_error(proxy::port(&p), "aq_nobody").await;
    assert_eq!(code, "28P01", "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_sockets_do_not_lock_clients_out() {
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.max_client_conn = 2;
    cfg.proxy.max_pending_logins = 3;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let counts = &p.shared.conn_count;
    until("two sockets logging in", || counts.logging_in() == 2).await;
    // max_client_conn = 2 sockets that send nothing: real clients still log in
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;
    assert_eq!((counts.logged_in(), counts.logging_in()), (2, 2));
    // the third logged-in client is over max_client_conn
    let err = common::try_connect(port, "app", "app", "app").await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert!(err.as_db_error().unwrap().message().contains("too many clients"), "{err}");
    drop(b);

    // logins in progress have their own cap
    idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    until("three sockets logging in", || counts.logging_in() == 3).await;
    let err = common::try_connect(port, "app", "app", "app").await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert!(err.as_db_error().unwrap().message().contains("max_pending_logins"), "{err}");
    drop(idle);
    until("idle sockets gone", || counts.logging_in() == 0).await;
    let c = common::connect(port, "app", "app", "app").await;
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    drop(a);
}

/// Logs in as app from the local address `from` (127.0.0.0/8 is all loopback on Linux).
async fn login_from(from: &str, port: u16, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let conn = common::conn_str(port, "app", password, "app");
    let (client, connection) =
        conn.parse::<tokio_postgres::Config>().unwrap().connect_raw(tcp, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_per_address_are_limited() {
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.auth.max_failed_logins = 3;
    // Long enough for four logins on a loaded machine: a shorter one expired under a full run.
    cfg.auth.failed_login_window = pgshift::config::Dur::secs(10);
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    for _ in 0..3 {
        let err = login_from("127.0.0.1", port, "wrong").await.err().unwrap();
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    }
    // the right password from the same address is refused now
    let err = login_from("127.0.0.1", port, "app").await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "{err}");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "too many failed logins from host \"127.0.0.1\": refused until failed_login_window has passed"
    );
    // another address is not affected
    let c = login_from("127.0.0.2", port, "app").await.unwrap();
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    // once the window has passed, the first address logs in again
    let mut ok = false;
    for _ in 0..300 {
        if login_from("127.0.0.1", port, "app").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "still refused 30s after a 10s window");
}
