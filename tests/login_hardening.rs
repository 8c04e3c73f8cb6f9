//! Login-side hardening against real PostgreSQL: cancel requests when max_client_conn is reached,
//! sockets still logging in kept apart from logged-in clients, a per-address limit on failed
//! logins, and auth_query failures reported as what they are.

mod common;

use common::proxy;
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
