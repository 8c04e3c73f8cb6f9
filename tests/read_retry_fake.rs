//! Reads a replica drops mid-answer (shutdown, crash), against scripted fake servers: the read is
//! retried on another server only while the client has seen nothing of the first answer, and the
//! client then gets every reply exactly once.

mod common;

use common::fake_pg::{be, tags, FakePg, Step};
use common::raw::{read_bytes_until_ready, send};
use common::{proxy, raw};
use pgshift::proxy::Proxy;

/// A fake primary, a fake replica and a proxy splitting reads to the replica; one server
/// connection per pool, no role discovery, no admin port.
async fn setup() -> (FakePg, FakePg, Proxy) {
    let primary = FakePg::start().await;
    let replica = FakePg::start_replica().await;
    let mut cfg = proxy::config(primary.port, &[replica.port]);
    cfg.proxy.default_pool_size = 1;
    cfg.routing.role_discovery = false;
    cfg.routing.read_write_split = true;
    cfg.admin.listen = String::new();
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    (primary, replica, p)
}

fn fatal_shutdown() -> Vec<u8> {
    let mut fatal = Vec::new();
    be::error(&mut fatal, "FATAL", "57P01", "terminating connection due to administrator command");
    fatal
}

/// The replica sends the start of its answer and its FATAL in one piece: the start has not
/// reached the client, so it is taken back and the read runs on the primary, once.
#[tokio::test]
async fn a_read_cut_short_before_the_client_saw_it_is_retried_once() {
    let (primary, replica, p) = setup().await;
    let mut cut = Vec::new();
    be::row_description(&mut cut, &["n"]);
    cut.extend(fatal_shutdown());
    replica.script([Step::on(b"Q").reply(cut).then_close()]);
    let mut answer = Vec::new();
    be::row_description(&mut answer, &["n"]);
    be::data_row(&mut answer, &[Some("1")]);
    be::command_complete(&mut answer, "SELECT 1");
    be::ready(&mut answer, b'I');
    primary.script([Step::on(b"Q").reply(answer.clone())]);

    let mut s = raw::login(proxy::port(&p), "app", "app", "app").await;
    let mut q = Vec::new();
    raw::query(&mut q, "select 1 as n");
    send(&mut s, &q).await;
    assert_eq!(read_bytes_until_ready(&mut s).await, answer, "the primary's answer, alone");
    replica.finish();
    primary.finish();
    drop(s);
    p.stop().await;
}

/// A prepare of a statement the replica's connection already has: pgshift owes the client a
/// ParseComplete of its own and sends only Describe and Sync. The replica dies before answering:
/// the read is retried on the primary (which gets the Parse), and the client sees one
/// ParseComplete, not one from each attempt.
#[tokio::test]
async fn a_prepare_retried_elsewhere_gets_one_parse_complete() {
    let (primary, replica, p) = setup().await;
    let mut described = Vec::new();
    be::frame(&mut described, b'1', b"");
    be::frame(&mut described, b't', &0i16.to_be_bytes());
    be::row_description(&mut described, &["n"]);
    be::ready(&mut described, b'I');
    replica.script([Step::on(b"PDS").reply(described.clone()), Step::on(b"DS").reply(fatal_shutdown()).then_close()]);
    primary.script([Step::on(b"PDS").reply(described.clone())]);

    let mut s = raw::login(proxy::port(&p), "app", "app", "app").await;
    for name in ["s1", "s2"] {
        let mut req = Vec::new();
        raw::parse(&mut req, name, "select 1 as n");
        raw::describe_statement(&mut req, name);
        raw::sync(&mut req);
        send(&mut s, &req).await;
        let got = read_bytes_until_ready(&mut s).await;
        assert_eq!(tags(&got), b"1tTZ", "{name}: {got:?}");
    }
    replica.finish();
    primary.finish();
    drop(s);
    p.stop().await;
}

/// A role made on the primary and not replayed on the replica yet: the replica refuses its
/// login. That role's reads are served by the primary (the refusal is remembered for `ban_time`,
/// so the replica is not asked again on every read), and the replica is not banned for everyone:
/// another role's read still goes to it.
#[tokio::test]
async fn a_login_the_replica_refuses_reads_from_the_primary_and_bans_nothing() {
    let primary = FakePg::start().await;
    let replica = FakePg::start_replica().await;
    replica.refuse_login("late");
    let mut cfg = proxy::config(primary.port, &[replica.port]);
    let late = pgshift::config::Config::from_toml(
        "[proxy]\n[auth]\n[[auth.users]]\nname = \"late\"\npassword = \"late\"\n[primary]\nport = 1\n",
    )
    .expect("config with the second role");
    cfg.auth.users.extend(late.auth.users);
    cfg.routing.role_discovery = false;
    cfg.routing.read_write_split = true;
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let answer = |from: &str| {
        let mut a = Vec::new();
        be::row_description(&mut a, &["server"]);
        be::data_row(&mut a, &[Some(from)]);
        be::command_complete(&mut a, "SELECT 1");
        be::ready(&mut a, b'I');
        a
    };
    primary.script([Step::on(b"Q").reply(answer("primary")), Step::on(b"Q").reply(answer("primary"))]);
    replica.script([Step::on(b"Q").reply(answer("replica"))]);

    for (role, from) in [("late", "primary"), ("late", "primary"), ("app", "replica")] {
        let mut s = raw::login(proxy::port(&p), role, role, "app").await;
        let mut q = Vec::new();
        raw::query(&mut q, "select 'where' as server");
        send(&mut s, &q).await;
        assert_eq!(read_bytes_until_ready(&mut s).await, answer(from), "{role}'s read");
        drop(s);
    }
    assert_eq!(replica.refusals(), 1, "the replica was asked to log the role in once");
    replica.finish();
    primary.finish();
    p.stop().await;
}
