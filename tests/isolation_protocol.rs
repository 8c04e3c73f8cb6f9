//! One client's extended-protocol state stays its own, against real PostgreSQL with clients
//! sharing one server connection: a batch left without its Sync, a SET executed before a Flush
//! and committed by a simple Query, and the unnamed statement another client parsed.

mod common;

use common::{proxy, raw, scalar};

/// Parse/Bind/Execute of `sql` on the unnamed statement and portal, then Flush; waits for the
/// replies (CommandComplete is the last).
async fn execute_then_flush(s: &mut tokio::net::TcpStream, sql: &str) {
    let mut m = Vec::new();
    raw::parse(&mut m, "", sql);
    raw::bind(&mut m, "", &[]);
    raw::execute(&mut m);
    raw::flush(&mut m);
    raw::send(s, &m).await;
    let tags = raw::read_tags(s, b'C').await;
    assert_eq!(tags, b"12C", "{sql}: Parse, Bind, CommandComplete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_left_without_its_sync_never_carries_into_the_next_client() {
    let bed = common::shared_bed().primary_port;
    common::setup_on_bed("CREATE TABLE IF NOT EXISTS iso_unsynced (v int)");
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);

    let mut a = raw::login(port, "app", "app", "app").await;
    execute_then_flush(&mut a, "SET search_path = iso_evil, public").await;
    execute_then_flush(&mut a, "INSERT INTO iso_unsynced VALUES (1)").await;
    drop(a); // gone without a Sync: the implicit transaction is still open on the server

    let b = common::connect(port, "app", "app", "app").await;
    assert_eq!(scalar(&b, "select count(*) from iso_unsynced").await.as_deref(), Some("0"));
    assert_ne!(scalar(&b, "show search_path").await.as_deref(), Some("iso_evil, public"));
    assert_eq!(scalar(&b, "select txid_current_if_assigned() is null").await.as_deref(), Some("t"));
    let direct = common::connect(bed, "app", "app", "app").await;
    assert_eq!(
        scalar(&direct, "select count(*) from iso_unsynced").await.as_deref(),
        Some("0"),
        "the abandoned insert was committed by the next client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_executed_before_a_flush_and_committed_by_a_query_never_reaches_the_next_client() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let mut a = raw::login(port, "app", "app", "app").await;
    execute_then_flush(&mut a, "SET search_path = iso_evil, public").await;
    let mut m = Vec::new();
    raw::query(&mut m, "select 1");
    raw::send(&mut a, &m).await;
    raw::read_tags(&mut a, b'Z').await;
    drop(a);
    let b = common::connect(port, "app", "app", "app").await;
    assert_ne!(scalar(&b, "show search_path").await.as_deref(), Some("iso_evil, public"), "the SET leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_another_client_parsed_is_out_of_reach() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let mut a = raw::login(port, "app", "app", "app").await;
    let mut m = Vec::new();
    raw::parse(&mut m, "", "select 'secret-of-A'::text as token");
    raw::bind(&mut m, "", &[]);
    raw::describe_execute_sync(&mut m);
    raw::send(&mut a, &m).await;
    raw::read_tags(&mut a, b'Z').await;

    // B binds the unnamed statement without having parsed one: PostgreSQL's answer to B alone.
    let mut b = raw::login(port, "app", "app", "app").await;
    let mut m = Vec::new();
    raw::bind(&mut m, "", &[]);
    raw::describe_execute_sync(&mut m);
    raw::send(&mut b, &m).await;
    let frames = raw::read_frames(&mut b, b'Z').await;
    assert!(frames.iter().all(|(t, _)| *t != b'D'), "B got a row of A's statement: {frames:?}");
    let error = frames.iter().find(|(t, _)| *t == b'E').expect("an error for B");
    let fields = raw::error_fields(&error.1);
    assert!(fields.contains(&(b'C', "26000".to_string())), "{fields:?}");

    // A's own unnamed statement still works for A in a later transaction.
    let mut m = Vec::new();
    raw::bind(&mut m, "", &[]);
    raw::describe_execute_sync(&mut m);
    raw::send(&mut a, &m).await;
    let frames = raw::read_frames(&mut a, b'Z').await;
    assert!(frames.iter().any(|(t, body)| *t == b'D' && body.windows(11).any(|w| w == b"secret-of-A")), "{frames:?}");
    drop(a);

    // Describe of the statement, too.
    let mut m = Vec::new();
    raw::describe_statement(&mut m, "");
    raw::sync(&mut m);
    raw::send(&mut b, &m).await;
    let frames = raw::read_frames(&mut b, b'Z').await;
    assert!(frames.iter().all(|(t, _)| *t != b'T' && *t != b't'), "B saw A's statement: {frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_only_encoding_never_hides_a_statement() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    // At login: refused, with the reason.
    let refused = raw::login_with(port, "app", "app", "app", &[("client_encoding", "SJIS")]).await;
    let fields = refused.expect_err("an SJIS login is refused");
    assert!(fields.contains(&(b'C', "0A000".to_string())), "{fields:?}");

    // Mid-session: the client keeps its server, which is closed after it. In Shift-JIS, 0x95 0x5C
    // is one character: the server's string ends at the quote pgshift reads as escaped.
    let mut a = raw::login(port, "app", "app", "app").await;
    let mut m = Vec::new();
    raw::query(&mut m, "SET client_encoding TO 'SJIS'");
    raw::send(&mut a, &m).await;
    raw::read_tags(&mut a, b'Z').await;
    let mut sql = b"SELECT E'\x95\\'; CREATE TEMP TABLE iso_sjis AS SELECT 'secret'::text AS v; SELECT 1 --'".to_vec();
    sql.push(0);
    let mut m = Vec::new();
    raw::frame(&mut m, b'Q', &sql);
    raw::send(&mut a, &m).await;
    raw::read_tags(&mut a, b'Z').await;
    drop(a);
    let b = common::connect(port, "app", "app", "app").await;
    let err = b.simple_query("select v from pg_temp.iso_sjis").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"), "a hidden temp table reached the next client: {err}");
}
