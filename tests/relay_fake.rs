//! The relay against a scripted fake PostgreSQL (tests/common/fake_pg.rs): exact frames in both
//! directions for Flush, pipelined errors, COPY, stale plans and servers that die mid-result,
//! with no PostgreSQL installed. Each test also checks that the pool is sound afterwards: a new
//! client's simple query runs on the server connection the test expects.

mod common;

use common::fake_pg::{be, tags, FakePg, Step, WHICH_CONN};
use common::raw::{assert_closed, read_bytes, read_bytes_until_ready, read_frame, send, HANG};
use common::{proxy, raw};
use pgshift::proxy::Proxy;
use tokio::net::TcpStream;

/// The fake and a proxy in front of it (see [`proxy::in_front_of_fake`]).
async fn setup() -> (FakePg, Proxy) {
    let fake = FakePg::start().await;
    let p = proxy::in_front_of_fake(fake.port).await;
    (fake, p)
}

async fn client(p: &Proxy) -> TcpStream {
    raw::login(proxy::port(p), "app", "app", "app").await
}

/// The fake's number of the server connection a new client's simple query runs on.
async fn which_conn(p: &Proxy) -> u32 {
    let mut s = client(p).await;
    let mut q = Vec::new();
    raw::query(&mut q, WHICH_CONN);
    send(&mut s, &q).await;
    let frames = tokio::time::timeout(HANG, raw::read_frames(&mut s, b'Z')).await.expect("answer to a simple query");
    assert_eq!(frames.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"TDCZ", "{frames:?}");
    let row = &frames[1].1;
    let n = i32::from_be_bytes([row[2], row[3], row[4], row[5]]) as usize;
    String::from_utf8_lossy(&row[6..6 + n]).parse().expect("a connection number")
}

/// The pool is sound: a new client runs on the one client connection the fake has seen (or on
/// the newest of `expect_conns`, after the old one was discarded), and nothing went unscripted.
async fn assert_pool_sound(fake: &FakePg, p: &Proxy, expect_conns: usize) {
    let on = which_conn(p).await;
    let conns = fake.client_conns();
    assert_eq!(conns.len(), expect_conns, "server connections opened: {conns:?}");
    assert_eq!(on, conns[expect_conns - 1].id, "the next client ran on another server connection");
    fake.finish();
}

/// 1. Flush without Sync: the replies reach the client at once, with no ReadyForQuery, and
/// pgshift does not wait for one; the later Sync gets its ReadyForQuery.
#[tokio::test]
async fn flush_without_sync_relays_at_once() {
    let (fake, p) = setup().await;
    let mut reply = Vec::new();
    be::frame(&mut reply, b'1', b"");
    be::frame(&mut reply, b'2', b"");
    be::row_description(&mut reply, &["n"]);
    be::data_row(&mut reply, &[Some("1")]);
    be::command_complete(&mut reply, "SELECT 1");
    let mut ready = Vec::new();
    be::ready(&mut ready, b'I');
    fake.script([Step::on(b"PBDEH").reply(reply.clone()), Step::on(b"S").reply(ready.clone())]);

    let mut s = client(&p).await;
    let mut req = Vec::new();
    raw::parse(&mut req, "", "select 1 as n");
    raw::bind(&mut req, "", &[]);
    raw::describe_portal(&mut req);
    raw::execute(&mut req);
    raw::flush(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, reply.len()).await, reply, "replies to the Flush");

    let mut sync = Vec::new();
    raw::sync(&mut sync);
    send(&mut s, &sync).await;
    assert_eq!(read_frame(&mut s).await, ready);
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// 2. An error in the middle of a pipelined batch: the server skips to Sync, and the client
/// gets exactly ParseComplete, BindComplete, ErrorResponse, ReadyForQuery.
#[tokio::test]
async fn error_mid_pipeline_skips_to_sync() {
    let (fake, p) = setup().await;
    let mut reply = Vec::new();
    be::frame(&mut reply, b'1', b"");
    be::frame(&mut reply, b'2', b"");
    be::error(&mut reply, "ERROR", "22012", "division by zero");
    be::ready(&mut reply, b'I');
    fake.script([Step::on(b"PBEPBES").reply(reply.clone())]);

    let mut s = client(&p).await;
    let mut req = Vec::new();
    raw::parse(&mut req, "", "select 1/0");
    raw::bind(&mut req, "", &[]);
    raw::execute(&mut req);
    raw::parse(&mut req, "", "select 2");
    raw::bind(&mut req, "", &[]);
    raw::execute(&mut req);
    raw::sync(&mut req);
    send(&mut s, &req).await;
    let got = read_bytes(&mut s, reply.len()).await;
    assert_eq!(tags(&got), b"12EZ");
    assert_eq!(got, reply);
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// 3. COPY FROM STDIN and COPY TO STDOUT relay byte for byte, both directions, including a
/// CopyData frame larger than the relay's streaming threshold.
#[tokio::test]
async fn copy_in_and_out_are_byte_exact() {
    let (fake, p) = setup().await;
    let big: Vec<u8> = (0..100_000u32).map(|i| b"0123456789abcdef\t\n"[(i % 18) as usize]).collect();

    let mut copy_in = Vec::new();
    be::copy_response(&mut copy_in, b'G', 2);
    let mut copied = Vec::new();
    be::command_complete(&mut copied, "COPY 3");
    be::ready(&mut copied, b'I');
    let mut copy_out = Vec::new();
    be::copy_response(&mut copy_out, b'H', 2);
    be::frame(&mut copy_out, b'd', b"1\tone\n");
    be::frame(&mut copy_out, b'd', &big);
    be::frame(&mut copy_out, b'd', b"3\t\\N\n");
    be::frame(&mut copy_out, b'c', b"");
    be::command_complete(&mut copy_out, "COPY 3");
    be::ready(&mut copy_out, b'I');
    fake.script([
        Step::on(b"Q").reply(copy_in.clone()),
        Step::on(b"dddc").reply(copied.clone()),
        Step::on(b"Q").reply(copy_out.clone()),
    ]);

    let mut s = client(&p).await;
    let mut q = Vec::new();
    raw::query(&mut q, "COPY t (a, b) FROM STDIN");
    send(&mut s, &q).await;
    assert_eq!(read_frame(&mut s).await, copy_in);
    let mut data = Vec::new();
    raw::frame(&mut data, b'd', b"1\tone\n");
    raw::frame(&mut data, b'd', &big);
    raw::frame(&mut data, b'd', b"3\t\\N\n");
    raw::frame(&mut data, b'c', b"");
    send(&mut s, &data).await;
    assert_eq!(read_bytes(&mut s, copied.len()).await, copied);
    let conn = &fake.client_conns()[0];
    assert!(conn.batches.contains(&data), "the server did not get the client's COPY data as sent");

    let mut q = Vec::new();
    raw::query(&mut q, "COPY t (a, b) TO STDOUT");
    send(&mut s, &q).await;
    assert_eq!(read_bytes(&mut s, copy_out.len()).await, copy_out);
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// 4. "cached plan must not change result type" (0A000), which PostgreSQL raises at Bind of a
/// prepared statement whose result shape changed: pgshift closes and re-prepares the statement
/// and re-runs the batch once; the client sees only the successful result.
#[tokio::test]
async fn stale_plan_is_reprepared_and_rerun() {
    let (fake, p) = setup().await;
    let mut parsed = Vec::new();
    be::frame(&mut parsed, b'1', b"");
    be::ready(&mut parsed, b'I');
    let mut stale = Vec::new();
    be::error(&mut stale, "ERROR", "0A000", "cached plan must not change result type");
    be::ready(&mut stale, b'I');
    let mut rerun_prefix = Vec::new();
    be::frame(&mut rerun_prefix, b'3', b"");
    be::frame(&mut rerun_prefix, b'1', b"");
    let mut result = Vec::new();
    be::frame(&mut result, b'2', b"");
    be::row_description(&mut result, &["a", "b"]);
    be::data_row(&mut result, &[Some("1"), Some("new column")]);
    be::command_complete(&mut result, "SELECT 1");
    be::ready(&mut result, b'I');
    fake.script([
        Step::on(b"PS").reply(parsed.clone()),
        Step::on(b"BDES").reply(stale),
        Step::on(b"CPBDES").reply([rerun_prefix, result.clone()].concat()),
    ]);

    let mut s = client(&p).await;
    let mut req = Vec::new();
    raw::parse(&mut req, "s1", "select * from t");
    raw::sync(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, parsed.len()).await, parsed);

    let mut req = Vec::new();
    raw::bind(&mut req, "s1", &[]);
    raw::describe_portal(&mut req);
    raw::execute(&mut req);
    raw::sync(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, result.len()).await, result, "only the re-run's result");

    // The re-run re-prepared the statement under the name its Bind uses.
    let conn = &fake.client_conns()[0];
    let rerun = conn.batches.iter().find(|b| tags(b) == b"CPBDES").expect("the re-run batch");
    let frames = common::fake_pg::split_frames(rerun);
    let name = |f: &[u8], skip: usize| f[5 + skip..].split(|&b| b == 0).next().map(<[u8]>::to_vec);
    assert_eq!(name(frames[0], 1), name(frames[1], 0), "Close and Parse name the same statement");
    assert_eq!(name(frames[1], 0), name(frames[2], 1), "Bind uses the statement just parsed");
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// 5. A server that dies mid-result: the client gets the rows sent so far, then one FATAL
/// 08006, and its connection closes; the broken server connection is not reused.
#[tokio::test]
async fn server_dying_mid_result_ends_the_client_with_08006() {
    let (fake, p) = setup().await;
    let mut partial = Vec::new();
    be::row_description(&mut partial, &["n"]);
    be::data_row(&mut partial, &[Some("1")]);
    be::data_row(&mut partial, &[Some("2")]);
    fake.script([Step::on(b"Q").reply(partial.clone()).then_close()]);

    let mut s = client(&p).await;
    let mut q = Vec::new();
    raw::query(&mut q, "select n from generate_series(1, 1000000) n");
    send(&mut s, &q).await;
    assert_eq!(read_bytes(&mut s, partial.len()).await, partial);
    let e = read_frame(&mut s).await;
    assert_eq!(e[0], b'E', "{e:?}");
    let fields = raw::error_fields(&e[5..]);
    assert!(fields.contains(&(b'S', "FATAL".into())), "{fields:?}");
    assert!(fields.contains(&(b'C', "08006".into())), "{fields:?}");
    let message = fields.iter().find(|(c, _)| *c == b'M').map(|(_, m)| m.as_str()).unwrap_or("");
    assert!(message.starts_with("server connection lost"), "{message}");
    assert_closed(&mut s).await;
    assert_pool_sound(&fake, &p, 2).await;
    p.stop().await;
}

/// 6a. NoticeResponse and ParameterStatus in the middle of a result reach the client in order,
/// untouched.
#[tokio::test]
async fn notice_and_parameter_status_mid_result_keep_their_place() {
    let (fake, p) = setup().await;
    let mut reply = Vec::new();
    be::row_description(&mut reply, &["n"]);
    be::data_row(&mut reply, &[Some("1")]);
    be::notice(&mut reply, "NOTICE", "00000", "halfway there");
    be::parameter_status(&mut reply, "TimeZone", "Europe/Paris");
    be::data_row(&mut reply, &[Some("2")]);
    be::command_complete(&mut reply, "SELECT 2");
    be::ready(&mut reply, b'I');
    fake.script([Step::on(b"Q").reply(reply.clone())]);

    let mut s = client(&p).await;
    let mut q = Vec::new();
    raw::query(&mut q, "select n from t");
    send(&mut s, &q).await;
    assert_eq!(read_bytes(&mut s, reply.len()).await, reply);
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// 6b. A server that ends the session with its own FATAL (57P01, an administrator's
/// pg_terminate_backend): the client gets that error alone, not a second FATAL of pgshift's.
#[tokio::test]
async fn server_fatal_reaches_the_client_alone() {
    let (fake, p) = setup().await;
    let mut fatal = Vec::new();
    be::error(&mut fatal, "FATAL", "57P01", "terminating connection due to administrator command");
    fake.script([Step::on(b"Q").reply(fatal.clone()).then_close()]);

    let mut s = client(&p).await;
    let mut q = Vec::new();
    raw::query(&mut q, "select n from t");
    send(&mut s, &q).await;
    assert_eq!(read_frame(&mut s).await, fatal);
    assert_closed(&mut s).await;
    assert_pool_sound(&fake, &p, 2).await;
    p.stop().await;
}

/// A prepare the asyncpg way (Parse, Describe statement, Flush, and nothing more until the next
/// query): the client gets its replies, pgshift ends the server's implicit transaction with a
/// Sync of its own so the server goes back to the pool, and the later Bind/Execute/Sync runs
/// after the unnamed statement is parsed again (its reply to that Parse not shown to the client).
#[tokio::test]
async fn prepare_with_flush_gives_the_server_back() {
    let (fake, p) = setup().await;
    let mut described = Vec::new();
    be::frame(&mut described, b'1', b"");
    be::frame(&mut described, b't', &0i16.to_be_bytes());
    be::row_description(&mut described, &["n"]);
    let mut ready = Vec::new();
    be::ready(&mut ready, b'I');
    let mut result = Vec::new();
    be::frame(&mut result, b'2', b"");
    be::data_row(&mut result, &[Some("1")]);
    be::command_complete(&mut result, "SELECT 1");
    be::ready(&mut result, b'I');
    let mut reparsed = Vec::new();
    be::frame(&mut reparsed, b'1', b"");
    fake.script([
        Step::on(b"PDH").reply(described.clone()),
        Step::on(b"S").reply(ready),
        Step::on(b"PBES").reply([reparsed, result.clone()].concat()),
    ]);

    let mut s = client(&p).await;
    let mut req = Vec::new();
    raw::parse(&mut req, "", "select 1 as n");
    raw::describe_statement(&mut req, "");
    raw::flush(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, described.len()).await, described);

    let mut req = Vec::new();
    raw::bind(&mut req, "", &[]);
    raw::execute(&mut req);
    raw::sync(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, result.len()).await, result);
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// An error in a Flush-ended batch: the server skips everything up to the client's Sync, so the
/// frames the client pipelines before that Sync get no reply and the Sync gets ReadyForQuery.
#[tokio::test]
async fn error_before_flush_skips_to_the_clients_sync() {
    let (fake, p) = setup().await;
    let mut failed = Vec::new();
    be::frame(&mut failed, b'1', b"");
    be::frame(&mut failed, b'2', b"");
    be::error(&mut failed, "ERROR", "22012", "division by zero");
    let mut ready = Vec::new();
    be::ready(&mut ready, b'I');
    fake.script([Step::on(b"PBEH").reply(failed.clone()), Step::on(b"BES").reply(ready.clone())]);

    let mut s = client(&p).await;
    let mut req = Vec::new();
    raw::parse(&mut req, "", "select 1/0");
    raw::bind(&mut req, "", &[]);
    raw::execute(&mut req);
    raw::flush(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, failed.len()).await, failed);

    let mut req = Vec::new();
    raw::bind(&mut req, "", &[]);
    raw::execute(&mut req);
    raw::sync(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_frame(&mut s).await, ready);
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// A portal run a row at a time across Flushes (PortalSuspended): pgshift keeps the server and
/// adds no Sync of its own while the portal is open.
#[tokio::test]
async fn suspended_portal_keeps_its_server_across_flushes() {
    let (fake, p) = setup().await;
    let mut first = Vec::new();
    be::frame(&mut first, b'1', b"");
    be::frame(&mut first, b'2', b"");
    be::data_row(&mut first, &[Some("1")]);
    be::frame(&mut first, b's', b"");
    let mut rest = Vec::new();
    be::data_row(&mut rest, &[Some("2")]);
    be::command_complete(&mut rest, "SELECT 2");
    be::ready(&mut rest, b'I');
    fake.script([Step::on(b"PBEH").reply(first.clone()), Step::on(b"ES").reply(rest.clone())]);

    let mut s = client(&p).await;
    let mut req = Vec::new();
    raw::parse(&mut req, "", "select n from generate_series(1, 2) n");
    raw::bind(&mut req, "", &[]);
    raw::frame(&mut req, b'E', b"\0\0\0\0\x01"); // one row
    raw::flush(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, first.len()).await, first);

    let mut req = Vec::new();
    raw::execute(&mut req);
    raw::sync(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, rest.len()).await, rest);
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// A result far larger than the relay's buffers (rows above the streaming threshold, several
/// MB in all) arrives byte for byte.
#[tokio::test]
async fn large_result_is_byte_exact() {
    let (fake, p) = setup().await;
    let wide: String = (0..150_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let mut reply = Vec::new();
    be::row_description(&mut reply, &["n", "wide"]);
    for i in 0..40 {
        be::data_row(&mut reply, &[Some(&i.to_string()), Some(&wide)]);
        be::data_row(&mut reply, &[Some(&i.to_string()), None]);
    }
    be::command_complete(&mut reply, "SELECT 80");
    be::ready(&mut reply, b'I');
    fake.script([Step::on(b"Q").reply(reply.clone())]);

    let mut s = client(&p).await;
    let mut q = Vec::new();
    raw::query(&mut q, "select n, wide from t");
    send(&mut s, &q).await;
    let got = read_bytes(&mut s, reply.len()).await;
    assert!(got == reply, "the {} bytes relayed differ from what the server sent", reply.len());
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}

/// COPY FROM STDIN that the server fails part-way (ErrorResponse, ReadyForQuery) while the
/// client, not having read that yet, goes on sending CopyData and CopyDone, as libpq does until
/// PQputCopyEnd. PostgreSQL drops such stray copy messages without a reply, and so does pgshift
/// (the transaction is over): it takes no server for them, so other clients still get one while
/// this client sits idle.
#[tokio::test]
async fn copy_data_after_a_failed_copy_holds_no_server() {
    let (fake, p) = setup().await;
    let mut copy_in = Vec::new();
    be::copy_response(&mut copy_in, b'G', 1);
    let mut failed = Vec::new();
    be::error(&mut failed, "ERROR", "22P02", "invalid input syntax for type integer: \"x\"");
    be::ready(&mut failed, b'I');
    fake.script([Step::on(b"Q").reply(copy_in.clone()), Step::on(b"dH").reply(failed.clone())]);

    let mut s = client(&p).await;
    let mut q = Vec::new();
    raw::query(&mut q, "COPY t (a) FROM STDIN");
    send(&mut s, &q).await;
    assert_eq!(read_frame(&mut s).await, copy_in);
    let mut data = Vec::new();
    raw::frame(&mut data, b'd', b"x\n");
    raw::flush(&mut data);
    send(&mut s, &data).await;
    assert_eq!(read_bytes(&mut s, failed.len()).await, failed);
    let mut stray = Vec::new();
    raw::frame(&mut stray, b'd', b"2\n");
    raw::frame(&mut stray, b'c', b"");
    send(&mut s, &stray).await;

    // This client now sits idle; another one must still get the (only) server connection, and
    // the stray messages reach no server (the fake would report them as unscripted).
    assert_pool_sound(&fake, &p, 1).await;
    let mut q = Vec::new();
    raw::query(&mut q, WHICH_CONN);
    send(&mut s, &q).await;
    assert_eq!(tags(&read_bytes_until_ready(&mut s).await), b"TDCZ", "the client goes on after its failed COPY");
    drop(s);
    p.stop().await;
}

/// COPY FROM STDIN through the extended protocol that the server fails part-way: PostgreSQL
/// sends the ErrorResponse, leaves copy mode and discards messages up to the client's Sync, which
/// gets the ReadyForQuery. The Sync is owed that reply like any other, so the server connection
/// goes back to the pool whole instead of being closed as out of step.
#[tokio::test]
async fn an_extended_copy_failing_part_way_keeps_its_server() {
    let (fake, p) = setup().await;
    let mut started = Vec::new();
    be::frame(&mut started, b'1', b"");
    be::frame(&mut started, b'2', b"");
    be::copy_response(&mut started, b'G', 1);
    let mut failed = Vec::new();
    be::error(&mut failed, "ERROR", "22P02", "invalid input syntax for type integer: \"x\"");
    let mut ready = Vec::new();
    be::ready(&mut ready, b'I');
    fake.script([
        Step::on(b"PBES").reply(started.clone()),
        Step::on(b"dH").reply(failed.clone()),
        Step::on(b"S").reply(ready.clone()),
    ]);

    let mut s = client(&p).await;
    let mut req = Vec::new();
    raw::parse(&mut req, "", "COPY t (a) FROM STDIN");
    raw::bind(&mut req, "", &[]);
    raw::execute(&mut req);
    raw::sync(&mut req);
    send(&mut s, &req).await;
    assert_eq!(read_bytes(&mut s, started.len()).await, started);
    let mut data = Vec::new();
    raw::frame(&mut data, b'd', b"x\n");
    raw::flush(&mut data);
    send(&mut s, &data).await;
    assert_eq!(read_bytes(&mut s, failed.len()).await, failed);
    let mut sync = Vec::new();
    raw::sync(&mut sync);
    send(&mut s, &sync).await;
    assert_eq!(read_bytes(&mut s, ready.len()).await, ready);
    drop(s);
    assert_pool_sound(&fake, &p, 1).await;
    p.stop().await;
}
