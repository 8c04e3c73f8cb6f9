//! A client's cancel against a scripted fake PostgreSQL (tests/common/fake_pg.rs): when pgshift
//! replays the client's settings ahead of its query on a server another client used, the cancel
//! waits until the replay is over, so it can only stop the client's own query, never the RESET
//! that clears the previous client's settings.

mod common;

use common::fake_pg::{FakePg, WHICH_CONN};
use common::proxy;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_lands_on_the_settings_replay() {
    let fake = FakePg::start().await;
    let p = proxy::in_front_of_fake(fake.port).await;
    let port = proxy::port(&p);

    // A leaves a setting on the one server connection: the next client's request starts with
    // RESET ALL, which the fake holds back.
    let a = common::connect(port, "app", "app", "app").await;
    a.batch_execute("SET app.tenant = 'tenant-a'").await.expect("A's SET");
    drop(a);
    fake.delay_resets(Duration::from_millis(300));

    let b = common::connect(port, "app", "app", "app").await;
    let token = b.cancel_token();
    let query = tokio::spawn(async move { b.simple_query(WHICH_CONN).await.map(|_| ()) });
    // Sent while the RESET is (almost always) still unanswered; if the host is slow and it is
    // not, the order checked below holds anyway.
    tokio::time::sleep(Duration::from_millis(50)).await;
    token.cancel_query(tokio_postgres::NoTls).await.expect("cancel request sent");
    let _ = tokio::time::timeout(Duration::from_secs(30), query).await.expect("B's query answered");

    let events = fake.events();
    let reset = events.iter().position(|e| *e == "reset answered").expect("the replay ran");
    let cancel = events.iter().position(|e| *e == "cancel").expect("the cancel reached the server");
    assert!(reset < cancel, "the cancel reached the server during the settings replay: {events:?}");
    fake.finish();
}
