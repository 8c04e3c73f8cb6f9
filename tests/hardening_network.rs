//! What an attacker on the network or a client with one login can reach through pgshift, against
//! real PostgreSQL: startup parameters that outlive the pool's reset, and the other defects the
//! network-facing review found.

mod common;

use common::{connect_with_options, proxy, scalar, MAKE_ISO_LOW};

/// A role asked for in the startup packet (`-c role=x`, `-c session_authorization=x`) is replayed
/// as `SET role TO 'x'` on the pooled server; RESET ALL leaves it, so without care the next
/// client on that server runs as that role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_role_never_reaches_the_next_client() {
    common::setup_on_bed(MAKE_ISO_LOW);
    // Two servers: a client holding one (pinned) leaves the other to the rest.
    let p = proxy::with_pool(2).await;
    let port = proxy::port(&p);
    for options in ["-c role=iso_low", "-c session_authorization=iso_low", "--role=iso_low"] {
        let a = connect_with_options(port, options).await;
        assert_eq!(scalar(&a, "select current_user").await.as_deref(), Some("iso_low"), "{options}");
        let b = common::connect(port, "app", "app", "app").await;
        assert_eq!(scalar(&b, "select current_user").await.as_deref(), Some("app"), "role leaked after {options}");
        assert_eq!(scalar(&a, "select current_user").await.as_deref(), Some("iso_low"), "{options} kept");
        drop(a);
        drop(b);
        let c = common::connect(port, "app", "app", "app").await;
        assert_eq!(scalar(&c, "select current_user").await.as_deref(), Some("app"), "leaked after {options} left");
    }
}

/// A startup `seed` is replayed as `SET seed TO ...`; no reset undoes it, so without care the
/// next client on that server draws random() values another client can predict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_seed_never_reaches_the_next_client() {
    let direct = common::connect(common::shared_bed().primary_port, "app", "app", "app").await;
    direct.batch_execute("select setseed(0.25)").await.unwrap();
    let mut after_seed = Vec::new();
    for _ in 0..3 {
        after_seed.push(scalar(&direct, "select random()").await);
    }
    let seeded = after_seed[0].clone();
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let own = connect_with_options(port, "-c seed=0.25").await;
    assert_eq!(scalar(&own, "select random()").await, seeded, "the client's own seed applies");
    drop(own);
    let a = connect_with_options(port, "-c seed=0.25").await;
    scalar(&a, "select 1").await;
    drop(a);
    let b = common::connect(port, "app", "app", "app").await;
    let got = scalar(&b, "select random()").await;
    assert!(!after_seed.contains(&got), "another client's seed reached this one: {got:?}");
}

/// In shift_reads a session's reads may go to the migration target, and with no target replica
/// to its primary, which accepts writes. A `pgshift:replica` hint or `SET pgshift.route =
/// 'replica'` vouches that a statement reads; on a replica a lie is refused (25006), but on the
/// target's primary the write would land on a store that does not serve writes yet (lost to the
/// source, in conflict with the sync). Only proven reads may take that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hinted_write_never_lands_on_the_migration_targets_primary() {
    use pgshift::migration::{control, Phase};
    let bed = common::shared_bed();
    for port in [bed.primary_port, bed.target_port] {
        let c = common::connect(port, "app", "app", "app").await;
        c.batch_execute("drop table if exists hn_shift; create table hn_shift(id int primary key)").await.unwrap();
    }
    let state = std::env::temp_dir().join(format!("pgshift-hn-shift-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: state.display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        verify_database: "app".into(),
        sync: pgshift::config::SyncChoice::Statement,
        ..Default::default()
    });
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    control::change_phase(&p.shared, Phase::ShiftReads, Some(100)).await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let port = scalar(&c, "select inet_server_port()").await.unwrap();
    assert_eq!(port, bed.target_port.to_string(), "at 100% the session reads from the target");

    let _ = c.batch_execute("/* pgshift:replica */ insert into hn_shift values (1)").await;
    let _ = c.batch_execute("set pgshift.route = 'replica'").await;
    let _ = c.batch_execute("insert into hn_shift values (2)").await;
    let _ = c.batch_execute("set pgshift.route = 'auto'").await;

    let source = common::connect(bed.primary_port, "app", "app", "app").await;
    let target = common::connect(bed.target_port, "app", "app", "app").await;
    for id in ["1", "2"] {
        let q = format!("select count(*) from hn_shift where id = {id}");
        let on_source = scalar(&source, &q).await;
        let on_target = scalar(&target, &q).await;
        assert!(
            !(on_target.as_deref() == Some("1") && on_source.as_deref() == Some("0")),
            "row {id} was written to the migration target only"
        );
    }
    drop(p);
    let _ = std::fs::remove_file(&state);
}

/// A proxy with TLS (`prefer`) in front of the shared bed.
fn tls_config() -> pgshift::config::Config {
    let certs = common::repo_root().join("certs");
    let mut c = proxy::config(common::shared_bed().primary_port, &[]);
    c.tls.mode = pgshift::config::TlsMode::Prefer;
    c.tls.cert = certs.join("server.crt").display().to_string();
    c.tls.key = certs.join("server.key").display().to_string();
    c
}

/// Opens direct TLS to the proxy and sends a startup packet for app/app.
async fn tls_startup(addr: std::net::SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut cfg = common::rustls_client_config(&common::repo_root().join("certs/ca.crt"));
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await.unwrap();
    let mut pkt = vec![0, 0, 0, 0, 0, 3, 0, 0];
    pkt.extend_from_slice(b"user\0app\0database\0app\0\0");
    let len = pkt.len() as u32;
    pkt[..4].copy_from_slice(&len.to_be_bytes());
    tls.write_all(&pkt).await.unwrap();
    tls
}

/// One backend frame: (tag, body).
async fn read_msg<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (head[0], body)
}

/// The `k=` attribute of a SCRAM message.
fn scram_attr<'a>(msg: &'a str, k: &str) -> &'a str {
    msg.split(',').find_map(|a| a.strip_prefix(&format!("{k}="))).unwrap()
}

/// SCRAM's gs2 flag `y` says "I support channel binding, but I think the server does not". Over
/// TLS pgshift offers SCRAM-SHA-256-PLUS, so a `y` means someone in between stripped PLUS from
/// the offer (a downgrade); RFC 5802 says the server must then fail the exchange, as PostgreSQL does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_refuses_a_client_told_channel_binding_was_not_offered() {
    use base64::Engine;
    use pgshift::auth::scram::{hmac, salted_password, sha256};
    use tokio::io::AsyncWriteExt;
    let b64 = base64::engine::general_purpose::STANDARD;
    let p = proxy::start(tls_config()).await;
    let mut s = tls_startup(p.addr).await;
    let (t, body) = read_msg(&mut s).await;
    assert_eq!((t, &body[..4]), (b'R', &10i32.to_be_bytes()[..]), "AuthenticationSASL");
    assert!(String::from_utf8_lossy(&body).contains("SCRAM-SHA-256-PLUS"), "PLUS offered over TLS");

    let bare = "n=,r=hardeningnonce0123";
    let first = format!("y,,{bare}");
    let mut init = b"SCRAM-SHA-256\0".to_vec();
    init.extend_from_slice(&(first.len() as i32).to_be_bytes());
    init.extend_from_slice(first.as_bytes());
    let mut out = Vec::new();
    common::raw::frame(&mut out, b'p', &init);
    s.write_all(&out).await.unwrap();
    let (t, body) = read_msg(&mut s).await;
    if t == b'E' {
        // Refused at the first message, as the RFC asks, with PostgreSQL's SQLSTATE for it.
        let code = body.split(|b| *b == 0).find_map(|f| f.strip_prefix(b"C")).map(|c| c.to_vec());
        assert_eq!(code.as_deref(), Some(&b"08P01"[..]), "{}", String::from_utf8_lossy(&body));
        return;
    }
    assert_eq!((t, &body[..4]), (b'R', &11i32.to_be_bytes()[..]), "AuthenticationSASLContinue");
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    let salt = b64.decode(scram_attr(&server_first, "s")).unwrap();
    let iterations: u32 = scram_attr(&server_first, "i").parse().unwrap();
    let without_proof = format!("c={},r={}", b64.encode("y,,"), scram_attr(&server_first, "r"));
    let salted = salted_password(b"app", &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let signature = hmac(&sha256(&client_key), format!("{bare},{server_first},{without_proof}").as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(signature).map(|(a, b)| a ^ b).collect();
    let mut out = Vec::new();
    common::raw::frame(&mut out, b'p', format!("{without_proof},p={}", b64.encode(proof)).as_bytes());
    s.write_all(&out).await.unwrap();
    let (t, _) = read_msg(&mut s).await;
    assert_eq!(t, b'E', "a downgraded SCRAM exchange must be refused, not completed");
}
