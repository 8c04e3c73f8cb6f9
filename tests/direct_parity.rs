//! What a client sees through pgshift matches what it sees connected directly to PostgreSQL:
//! `client_encoding` reported in the server's spelling, and SCRAM passwords beyond ASCII
//! (SASLprep) accepted as PostgreSQL accepts them.

mod common;

use common::{proxy, raw};

/// ParameterStatus `client_encoding` after logging in with `given`, or the refusal's SQLSTATE.
async fn reported_encoding(port: u16, given: &str) -> Result<String, String> {
    reported_encoding_with(port, &[("client_encoding", given)]).await
}

/// ParameterStatus `client_encoding` after logging in with startup parameters `params`.
async fn reported_encoding_with(port: u16, params: &[(&str, &str)]) -> Result<String, String> {
    match raw::login_with(port, "app", "app", "app", params).await {
        Ok((_, frames)) => Ok(raw::parameter_status(&frames)
            .into_iter()
            .find(|(k, _)| k == "client_encoding")
            .map(|(_, v)| v)
            .expect("client_encoding reported")),
        Err(fields) => Err(fields.into_iter().find(|(c, _)| *c == b'C').map(|(_, v)| v).unwrap_or_default()),
    }
}

#[tokio::test]
async fn client_encoding_is_reported_as_the_server_spells_it() {
    let direct = common::shared_bed().primary_port;
    let p = proxy::primary_only().await;
    let port = proxy::port(&p);
    for given in ["utf8", "utf-8", "UTF8", "unicode", "euc-jp", "eucjp", "latin1", "iso-8859-15", "sql_ascii"] {
        let want = reported_encoding(direct, given).await;
        let got = reported_encoding(port, given).await;
        assert_eq!(got, want, "client_encoding={given}: through pgshift vs direct");
        assert!(want.is_ok(), "{given} is accepted directly");
    }
    // An encoding PostgreSQL does not know is refused at login, with the same SQLSTATE.
    let want = reported_encoding(direct, "klingon").await;
    assert_eq!(reported_encoding(port, "klingon").await, want);
    assert_eq!(want, Err("22023".to_string()));
    let opts = [("options", "-c client_encoding=klingon")];
    let code = |r: Result<_, Vec<(u8, String)>>| r.err().and_then(|f| f.into_iter().find(|(c, _)| *c == b'C'));
    let (d, v) = (
        raw::login_with(direct, "app", "app", "app", &opts).await,
        raw::login_with(port, "app", "app", "app", &opts).await,
    );
    assert_eq!(code(v), code(d), "an unknown encoding in options is refused as directly");

    // `-c client_encoding=` in `options` counts; a startup parameter overrides it, and of two
    // startup parameters the last one counts (asyncpg sends its own before `server_settings`).
    let mixes: [&[(&str, &str)]; 4] = [
        &[("options", "-c client_encoding=euc-jp")],
        &[("options", "-c client_encoding=latin1"), ("client_encoding", "utf-8")],
        &[("client_encoding", "utf-8"), ("options", "-c client_encoding=latin1")],
        &[("client_encoding", "'utf-8'"), ("client_encoding", "euc-jp")],
    ];
    for params in mixes {
        let want = reported_encoding_with(direct, params).await;
        assert!(want.is_ok(), "{params:?} is accepted directly");
        assert_eq!(reported_encoding_with(port, params).await, want, "{params:?}: through pgshift vs direct");
    }

    // The session really uses the encoding it was told: a non-ASCII text round-trips in EUC_JP.
    let (mut s, _) = raw::login_with(port, "app", "app", "app", &[("client_encoding", "euc-jp")]).await.unwrap();
    let mut out = Vec::new();
    raw::query(&mut out, "SELECT current_setting('client_encoding')");
    tokio::io::AsyncWriteExt::write_all(&mut s, &out).await.unwrap();
    let frames = raw::read_frames(&mut s, b'Z').await;
    let row = frames.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(row.1.ends_with(b"EUC_JP"), "{:?}", String::from_utf8_lossy(&row.1));
}

/// Creates (or resets) a role whose password needs SASLprep.
fn role_with_password(name: &str, password: &str) {
    let bed = common::shared_bed();
    let lit = password.replace('\'', "''");
    common::superuser_exec(
        bed.primary_port,
        &format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN \
             CREATE ROLE {name} LOGIN; END IF; END$$; \
             SET password_encryption = 'scram-sha-256'; ALTER ROLE {name} PASSWORD '{lit}'; \
             GRANT ALL ON DATABASE app TO {name};"
        ),
    );
}

#[tokio::test]
async fn passwords_beyond_ascii_log_in_as_they_do_directly() {
    // A combining accent (SASLprep composes it) and a no-break space (SASLprep maps it to a space).
    let cases = [("sasl_accent", "cafe\u{301}-pw"), ("sasl_nbsp", "open\u{a0}sesame")];
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    for (name, pw) in cases {
        role_with_password(name, pw);
        // The password as the user typed it, unnormalised, is in pgshift's config.
        cfg.auth.users.push(pgshift::config::UserConfig {
            name: name.into(),
            password: Some(pw.into()),
            ..Default::default()
        });
    }
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    for (name, pw) in cases {
        for typed in [pw.to_string(), stringprep::saslprep(pw).unwrap().into_owned()] {
            let direct = common::connect(bed.primary_port, name, &typed, "app").await;
            let via = common::try_connect(port, name, &typed, "app")
                .await
                .unwrap_or_else(|e| panic!("{name} with {typed:?} through pgshift: {e}"));
            let q = "SELECT current_user::text";
            let (a, b) = (direct.query_one(q, &[]).await.unwrap(), via.query_one(q, &[]).await.unwrap());
            assert_eq!(a.get::<_, String>(0), b.get::<_, String>(0));
        }
        assert!(common::try_connect(port, name, "wrong", "app").await.is_err());
    }
}

/// Copies of `sql` prepared on the one server connection of a pool of 1.
async fn server_copies(port: u16, sql: &str) -> i64 {
    let c = common::connect(port, "app", "app", "app").await;
    let q = "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1";
    c.query_one(q, &[&sql]).await.unwrap().get(0)
}

#[tokio::test]
async fn one_server_statement_per_statement_text() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let sql = "select $1::int + 41";
    // Four clients at once.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = common::connect(port, "app", "app", "app").await;
        let st = c.prepare(sql).await.unwrap();
        let n: i32 = c.query_one(&st, &[&1i32]).await.unwrap().get(0);
        assert_eq!(n, 42);
        clients.push((c, st));
    }
    assert_eq!(server_copies(port, sql).await, 1, "four clients at once");
    drop(clients);
    // Four clients one after the other, each gone before the next prepares.
    for _ in 0..4 {
        let c = common::connect(port, "app", "app", "app").await;
        let st = c.prepare(sql).await.unwrap();
        let _ = c.query_one(&st, &[&1i32]).await.unwrap();
    }
    assert_eq!(server_copies(port, sql).await, 1, "four clients in turn");
}

/// The pid in a session's BackendKeyData.
fn backend_pid(frames: &[(u8, Vec<u8>)]) -> i32 {
    let (_, k) = frames.iter().find(|(t, _)| *t == b'K').expect("BackendKeyData");
    i32::from_be_bytes([k[0], k[1], k[2], k[3]])
}

/// Sends a simple query and returns the tags up to its ReadyForQuery, with each notification's
/// sender pid and payload.
async fn query_notes(s: &mut tokio::net::TcpStream, sql: &str) -> (Vec<u8>, Vec<(i32, String)>) {
    let mut out = Vec::new();
    raw::query(&mut out, sql);
    tokio::io::AsyncWriteExt::write_all(s, &out).await.unwrap();
    let frames = raw::read_frames(s, b'Z').await;
    let notes = frames
        .iter()
        .filter(|(t, _)| *t == b'A')
        .map(|(_, b)| {
            let pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let rest: Vec<&[u8]> = b[4..].split(|&c| c == 0).collect();
            (pid, String::from_utf8_lossy(rest[1]).into_owned())
        })
        .collect();
    (frames.iter().map(|(t, _)| *t).collect(), notes)
}

/// Own notifications arrive before the ReadyForQuery of the statement that committed them, with
/// the session's own pid, through pgshift as directly; another client's carry that client's pid.
#[tokio::test]
async fn own_notifications_come_before_ready_with_the_clients_pid() {
    let direct = common::shared_bed().primary_port;
    let p = proxy::with_pool(2).await;
    for (port, via) in [(direct, "direct"), (proxy::port(&p), "pgshift")] {
        let (mut a, fa) = raw::login_with(port, "app", "app", "app", &[]).await.unwrap();
        let (mut b, fb) = raw::login_with(port, "app", "app", "app", &[]).await.unwrap();
        let (pid_a, pid_b) = (backend_pid(&fa), backend_pid(&fb));
        query_notes(&mut a, "LISTEN parity_ch").await;
        for sql in [
            "NOTIFY parity_ch, 'plain'",
            "DO $$ BEGIN PERFORM pg_notify('parity_ch', 'from a function'); END $$",
            "BEGIN; NOTIFY parity_ch, 'in a transaction'; COMMIT",
        ] {
            let (tags, notes) = query_notes(&mut a, sql).await;
            assert_eq!(notes.len(), 1, "{via}: {sql}: one notification before ReadyForQuery, got {tags:?}");
            assert_eq!(notes[0].0, pid_a, "{via}: {sql}: the sender is this session");
        }
        // Another session notifies: idle a receives it unasked, with b's pid.
        query_notes(&mut b, "NOTIFY parity_ch, 'from b'").await;
        let wait = std::time::Duration::from_secs(10);
        let frames = tokio::time::timeout(wait, raw::read_frames(&mut a, b'A')).await.expect("a notification");
        let (_, body) = frames.last().unwrap();
        let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        assert_eq!(pid, pid_b, "{via}: the sender is b");
    }
}

/// A client whose LISTEN ran inside a transaction is pinned to its server, which sends it the
/// notifications itself: the sender pid is still the client's own, as directly.
#[tokio::test]
async fn a_pinned_listener_sees_its_own_pid_as_sender() {
    let direct = common::shared_bed().primary_port;
    let p = proxy::with_pool(2).await;
    for (port, via) in [(direct, "direct"), (proxy::port(&p), "pgshift")] {
        let (mut a, fa) = raw::login_with(port, "app", "app", "app", &[]).await.unwrap();
        query_notes(&mut a, "BEGIN; LISTEN pinned_ch; COMMIT").await;
        let (tags, notes) = query_notes(&mut a, "NOTIFY pinned_ch, 'own'").await;
        assert_eq!(notes, vec![(backend_pid(&fa), "own".to_string())], "{via}: {tags:?}");
    }
}

/// The bool a `select pg_*_backend(..)` answered, and any notice, over the raw protocol.
async fn signal(s: &mut tokio::net::TcpStream, sql: &str, param: Option<i32>) -> (Option<bool>, Vec<u8>) {
    let mut out = Vec::new();
    match param {
        None => raw::query(&mut out, sql),
        Some(pid) => {
            raw::parse(&mut out, "", sql);
            raw::bind(&mut out, "", &[pid.to_string().as_bytes()]);
            raw::describe_execute_sync(&mut out);
        }
    }
    tokio::io::AsyncWriteExt::write_all(s, &out).await.unwrap();
    let frames = raw::read_frames(s, b'Z').await;
    let value = frames.iter().find(|(t, _)| *t == b'D').map(|(_, b)| b[6] == b't');
    (value, frames.iter().map(|(t, _)| *t).collect())
}

/// `pg_cancel_backend` / `pg_terminate_backend` with the pid a pgshift client got act on that
/// client; real backend pids keep their meaning.
#[tokio::test]
async fn signalling_a_client_by_its_pid() {
    let p = proxy::with_pool(3).await;
    let port = proxy::port(&p);
    let (mut victim, fv) = raw::login_with(port, "app", "app", "app", &[]).await.unwrap();
    let pid = backend_pid(&fv);
    assert!(pid > 1 << 22, "client pids are above Linux's pid range: {pid}");
    let (mut admin, _) = raw::login_with(port, "app", "app", "app", &[]).await.unwrap();

    // Cancel: the victim's running query ends with 57014; its session goes on.
    let mut q = Vec::new();
    raw::query(&mut q, "SELECT pg_sleep(20)");
    tokio::io::AsyncWriteExt::write_all(&mut victim, &q).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(signal(&mut admin, "select pg_cancel_backend($1)", Some(pid)).await.0, Some(true));
    let frames = raw::read_frames(&mut victim, b'Z').await;
    let (_, e) = frames.iter().find(|(t, _)| *t == b'E').expect("the sleep was cancelled");
    assert!(raw::error_fields(e).contains(&(b'C', "57014".into())), "{:?}", raw::error_fields(e));
    assert_eq!(query_notes(&mut victim, "SELECT 1").await.0.last(), Some(&b'Z'));

    // An unknown pgshift-range pid: false and PostgreSQL's warning, as PostgreSQL answers it.
    let (v, tags) = signal(&mut admin, "SELECT pg_terminate_backend(2147483000)", None).await;
    assert_eq!(v, Some(false));
    assert!(tags.contains(&b'N'), "{tags:?}");

    // Terminate: the victim's session ends with 57P01.
    assert_eq!(signal(&mut admin, &format!("SELECT pg_terminate_backend({pid})"), None).await.0, Some(true));
    let frames = raw::read_frames(&mut victim, b'E').await;
    let e = raw::error_fields(&frames.last().unwrap().1);
    assert!(e.contains(&(b'C', "57P01".into())), "{e:?}");

    // A real backend pid goes to PostgreSQL.
    let direct = common::connect(common::shared_bed().primary_port, "app", "app", "app").await;
    let real: i32 = direct.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(signal(&mut admin, "select pg_cancel_backend($1)", Some(real)).await.0, Some(true));
}

/// A client may not signal another role's client (unless it is in admin_users): 42501, and the
/// other client is untouched.
#[tokio::test]
async fn signalling_another_roles_client_is_refused() {
    role_with_password("sig_other", "sig-other-pw");
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.admin.admin_users = vec![];
    cfg.auth.users.push(pgshift::config::UserConfig {
        name: "sig_other".into(),
        password: Some("sig-other-pw".into()),
        ..Default::default()
    });
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let (mut victim, fv) = raw::login_with(port, "app", "app", "app", &[]).await.unwrap();
    let (mut other, _) = raw::login_with(port, "sig_other", "sig-other-pw", "app", &[]).await.unwrap();
    let sql = format!("SELECT pg_terminate_backend({})", backend_pid(&fv));
    let mut out = Vec::new();
    raw::query(&mut out, &sql);
    tokio::io::AsyncWriteExt::write_all(&mut other, &out).await.unwrap();
    let frames = raw::read_frames(&mut other, b'Z').await;
    let (_, e) = frames.iter().find(|(t, _)| *t == b'E').expect("refused");
    assert!(raw::error_fields(e).contains(&(b'C', "42501".into())), "{:?}", raw::error_fields(e));
    assert_eq!(query_notes(&mut victim, "SELECT 1").await.0.last(), Some(&b'Z'), "the victim goes on");
}
