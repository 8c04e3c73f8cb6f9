//! A scripted fake PostgreSQL server on 127.0.0.1: it logs pgshift's server connections in
//! (trust), answers pgshift's own queries (health probes, resets, liveness checks), and answers
//! everything else from a per-test script of "on these frames, send these bytes (then close)".
//!
//! Frames from pgshift are read up to a request boundary (Query, Sync, Flush, CopyDone,
//! CopyFail, FunctionCall, Terminate); each such batch is logged per connection and then answered.
//! The probe connection (database `postgres`) only ever gets the built-in answers; the script is
//! for the clients' connections (any other database). Whatever is neither built in nor scripted is
//! answered with an ErrorResponse and recorded, so [`FakePg::finish`] fails the test.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Simple query that the fake answers, on any client connection, with one row holding the
/// number of the connection it arrived on (1 for the first connection the fake accepted).
pub const WHICH_CONN: &str = "SELECT 'which fake connection'";

/// The database pgshift's health probes log into (its `health_check_database` default).
const PROBE_DATABASE: &str = "postgres";

/// One scripted exchange: a batch whose tags are `on` gets `reply`, then the socket is closed if
/// `close` is set.
#[derive(Debug, Clone)]
pub struct Step {
    on: Vec<u8>,
    reply: Vec<u8>,
    close: bool,
}

impl Step {
    /// A step for a batch of exactly these frame tags, in order (e.g. `b"PBDEH"`).
    pub fn on(tags: &[u8]) -> Step {
        Step { on: tags.to_vec(), reply: Vec::new(), close: false }
    }
    /// The bytes sent back (whole frames, built with [`be`]).
    pub fn reply(mut self, bytes: Vec<u8>) -> Step {
        self.reply = bytes;
        self
    }
    /// Closes the connection after the reply, without a word more.
    pub fn then_close(mut self) -> Step {
        self.close = true;
        self
    }
}

/// What the fake saw on one connection.
#[derive(Debug, Clone, Default)]
pub struct ConnLog {
    /// 1 for the first connection accepted, and so on.
    pub id: u32,
    /// The startup packet's database.
    pub database: String,
    /// Every batch received, as raw bytes, in order.
    pub batches: Vec<Vec<u8>>,
}

#[derive(Default)]
struct State {
    script: VecDeque<Step>,
    conns: Vec<ConnLog>,
    problems: Vec<String>,
    /// Health probes hear that this server is in recovery (a streaming replica).
    replica: bool,
    /// Roles whose logins fail with 28P01, as for a role not yet replayed on a replica.
    refused: Vec<String>,
    /// Logins refused so far.
    refusals: usize,
    /// How long the answer to pgshift's `RESET ALL` is held back.
    reset_delay: Option<std::time::Duration>,
    /// "reset answered" and "cancel" (a CancelRequest arrived), in the order they happened.
    events: Vec<&'static str>,
}

/// The fake server; dropping it stops accepting (open connections end with the test's runtime).
pub struct FakePg {
    /// Port pgshift's `[primary]` points at.
    pub port: u16,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakePg {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakePg {
    /// Starts listening on 127.0.0.1:0 with an empty script.
    pub async fn start() -> FakePg {
        Self::start_as(false).await
    }

    /// The same, as a streaming replica: health probes find it in recovery.
    pub async fn start_replica() -> FakePg {
        Self::start_as(true).await
    }

    async fn start_as(replica: bool) -> FakePg {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake server");
        let port = listener.local_addr().expect("fake server address").port();
        let state = Arc::new(Mutex::new(State { replica, ..State::default() }));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            let mut next = 0;
            while let Ok((sock, _)) = listener.accept().await {
                next += 1;
                tokio::spawn(serve(sock, next, st.clone()));
            }
        });
        FakePg { port, state, accept }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends steps to the script (consumed in order, by whichever client connection asks).
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.lock().script.extend(steps);
    }

    /// Logins as `user` fail from now on with FATAL 28P01.
    pub fn refuse_login(&self, user: &str) {
        self.lock().refused.push(user.to_owned());
    }

    /// Holds back each answer to pgshift's `RESET ALL` (its settings replay) by `d`.
    pub fn delay_resets(&self, d: std::time::Duration) {
        self.lock().reset_delay = Some(d);
    }

    /// "reset answered" (a `RESET ALL` answered) and "cancel" (a CancelRequest arrived), in order.
    pub fn events(&self) -> Vec<&'static str> {
        self.lock().events.clone()
    }

    /// How many logins were refused so far.
    pub fn refusals(&self) -> usize {
        self.lock().refusals
    }

    /// The client connections (not the probe's) accepted so far.
    pub fn client_conns(&self) -> Vec<ConnLog> {
        self.lock().conns.iter().filter(|c| c.database != PROBE_DATABASE).cloned().collect()
    }

    /// Asserts that the whole script was used and nothing unscripted arrived.
    pub fn finish(&self) {
        let st = self.lock();
        assert!(st.problems.is_empty(), "the fake server saw unexpected traffic: {:#?}", st.problems);
        assert!(st.script.is_empty(), "script steps never reached: {:?}", st.script);
    }
}

/// The tags of the whole frames in `bytes`.
pub fn tags(bytes: &[u8]) -> Vec<u8> {
    split_frames(bytes).iter().map(|f| f[0]).collect()
}

/// The whole frames in `bytes` (a trailing partial frame is ignored).
pub fn split_frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let total = 1 + u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if bytes.len() < total {
            break;
        }
        out.push(&bytes[..total]);
        bytes = &bytes[total..];
    }
    out
}

async fn serve(mut sock: TcpStream, id: u32, state: Arc<Mutex<State>>) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let Some((database, user)) = startup(&mut sock).await else { return };
    if database.is_empty() && user.is_empty() {
        lock().events.push("cancel"); // a CancelRequest: the connection ends with nothing said
        return;
    }
    let mut out = Vec::new();
    if lock().refused.contains(&user) {
        lock().refusals += 1;
        be::error(&mut out, "FATAL", "28P01", &format!("password authentication failed for user \"{user}\""));
        let _ = sock.write_all(&out).await;
        return;
    }
    be::login_ok(&mut out, id);
    if sock.write_all(&out).await.is_err() {
        return;
    }
    let probe = database == PROBE_DATABASE;
    lock().conns.push(ConnLog { id, database, batches: Vec::new() });
    let mut buf = Vec::new();
    while let Some(batch) = read_batch(&mut sock, &mut buf).await {
        let (reply, close) = {
            let mut st = lock();
            if let Some(c) = st.conns.iter_mut().find(|c| c.id == id) {
                c.batches.push(batch.clone());
            }
            answer(&mut st, &batch, id, probe)
        };
        let reset = split_frames(&batch).as_slice() == [query_frame("RESET ALL").as_slice()];
        let delay = lock().reset_delay.filter(|_| reset);
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if sock.write_all(&reply).await.is_err() || close {
            return;
        }
        if reset {
            lock().events.push("reset answered");
        }
    }
}

/// A Query frame holding `sql`.
fn query_frame(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    let mut out = Vec::new();
    be::frame(&mut out, b'Q', &body);
    out
}

/// Decides the reply to one batch: built in, scripted, or an error for the unexpected.
fn answer(st: &mut State, batch: &[u8], id: u32, probe: bool) -> (Vec<u8>, bool) {
    let batch_tags = tags(batch);
    if batch_tags == b"X" {
        return (Vec::new(), true);
    }
    if let Some(reply) = builtin_query(batch, id, st.replica) {
        return (reply, false);
    }
    if !probe && st.script.front().is_some_and(|s| s.on == batch_tags) {
        if let Some(step) = st.script.pop_front() {
            return (step.reply, step.close);
        }
    }
    let mut out = Vec::new();
    if batch_tags == b"S" {
        be::ready(&mut out, b'I'); // a Sync of pgshift's own (after a Flush-ended request)
        return (out, false);
    }
    let expected = st.script.front().map(|s| String::from_utf8_lossy(&s.on).into_owned());
    st.problems.push(format!(
        "connection {id}: unscripted batch {:?} (next step expects {expected:?}): {:?}",
        String::from_utf8_lossy(&batch_tags),
        String::from_utf8_lossy(batch)
    ));
    if matches!(batch_tags.last(), Some(b'Q' | b'S')) {
        be::error(&mut out, "ERROR", "XX000", "fake server: unscripted request");
        be::ready(&mut out, b'I');
    }
    (out, false)
}

/// Answers pgshift's own simple queries, and [`WHICH_CONN`].
fn builtin_query(batch: &[u8], id: u32, replica: bool) -> Option<Vec<u8>> {
    let frames = split_frames(batch);
    let [q] = frames.as_slice() else { return None };
    if q[0] != b'Q' {
        return None;
    }
    let sql = String::from_utf8_lossy(&q[5..q.len().saturating_sub(1)]).into_owned();
    let mut out = Vec::new();
    if sql.starts_with("SELECT pg_is_in_recovery()") {
        be::row_description(&mut out, &["in_recovery", "lsn", "lag", "timeline"]);
        let in_recovery = if replica { "t" } else { "f" };
        be::data_row(&mut out, &[Some(in_recovery), Some("0/3000000"), Some("0"), Some("00000001")]);
        be::command_complete(&mut out, "SELECT 1");
    } else if sql == WHICH_CONN {
        be::row_description(&mut out, &["?column?"]);
        be::data_row(&mut out, &[Some(&id.to_string())]);
        be::command_complete(&mut out, "SELECT 1");
    } else if sql.trim() == ";" {
        be::frame(&mut out, b'I', b"");
    } else if ["DISCARD ALL", "ROLLBACK"].contains(&sql.as_str()) {
        be::command_complete(&mut out, &sql);
    } else if sql == "RESET ALL" {
        be::command_complete(&mut out, "RESET");
    } else if sql.starts_with("SET ") {
        be::command_complete(&mut out, "SET");
    } else {
        return None;
    }
    be::ready(&mut out, b'I');
    Some(out)
}

/// Reads the startup packet (refusing SSL/GSS encryption first); returns its database and user,
/// both empty for a CancelRequest.
async fn startup(sock: &mut TcpStream) -> Option<(String, String)> {
    loop {
        let mut len = [0u8; 4];
        sock.read_exact(&mut len).await.ok()?;
        let len = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; len.checked_sub(4)?];
        sock.read_exact(&mut body).await.ok()?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if code == 80_877_103 || code == 80_877_104 {
            sock.write_all(b"N").await.ok()?;
            continue;
        }
        if code == 80_877_102 {
            return Some((String::new(), String::new()));
        }
        let fields: Vec<&[u8]> = body[4..].split(|&b| b == 0).collect();
        let field = |name: &[u8]| {
            let value = fields.chunks(2).find(|kv| kv[0] == name).and_then(|kv| kv.get(1));
            String::from_utf8_lossy(value.copied().unwrap_or_default()).into_owned()
        };
        return Some((field(b"database"), field(b"user")));
    }
}

/// Reads frames up to and including a request boundary; `None` at end of stream.
async fn read_batch(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut at = 0;
    loop {
        while buf.len() >= at + 5 {
            let total = 1 + u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
            if buf.len() < at + total {
                break;
            }
            let t = buf[at];
            at += total;
            if matches!(t, b'Q' | b'S' | b'H' | b'c' | b'f' | b'F' | b'X') {
                return Some(buf.drain(..at).collect());
            }
        }
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Builders of backend frames, appended to a byte buffer.
pub mod be {
    /// Appends one frame.
    pub fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
    }

    fn cstr(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }

    /// AuthenticationOk, the ParameterStatus set of a PostgreSQL 15 server, BackendKeyData
    /// (pid = connection number) and ReadyForQuery 'I'.
    pub fn login_ok(out: &mut Vec<u8>, id: u32) {
        frame(out, b'R', &0i32.to_be_bytes());
        for (k, v) in [
            ("server_version", "15.6 (fake)"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
            ("DateStyle", "ISO, MDY"),
            ("IntervalStyle", "postgres"),
            ("TimeZone", "UTC"),
            ("integer_datetimes", "on"),
            ("is_superuser", "on"),
            ("session_authorization", "app"),
            ("application_name", ""),
        ] {
            parameter_status(out, k, v);
        }
        let mut key = (id as i32).to_be_bytes().to_vec();
        key.extend_from_slice(&0x5eed_i32.to_be_bytes());
        frame(out, b'K', &key);
        ready(out, b'I');
    }

    /// ParameterStatus.
    pub fn parameter_status(out: &mut Vec<u8>, k: &str, v: &str) {
        let mut b = Vec::new();
        cstr(&mut b, k);
        cstr(&mut b, v);
        frame(out, b'S', &b);
    }

    /// ReadyForQuery with a transaction status (I, T or E).
    pub fn ready(out: &mut Vec<u8>, status: u8) {
        frame(out, b'Z', &[status]);
    }

    /// RowDescription of text columns.
    pub fn row_description(out: &mut Vec<u8>, names: &[&str]) {
        let mut b = (names.len() as i16).to_be_bytes().to_vec();
        for n in names {
            cstr(&mut b, n);
            b.extend_from_slice(&0i32.to_be_bytes()); // table oid
            b.extend_from_slice(&0i16.to_be_bytes()); // column number
            b.extend_from_slice(&25i32.to_be_bytes()); // text
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes()); // text format
        }
        frame(out, b'T', &b);
    }

    /// DataRow of text values (`None` is NULL).
    pub fn data_row(out: &mut Vec<u8>, values: &[Option<&str>]) {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        frame(out, b'D', &b);
    }

    /// CommandComplete.
    pub fn command_complete(out: &mut Vec<u8>, tag: &str) {
        let mut b = Vec::new();
        cstr(&mut b, tag);
        frame(out, b'C', &b);
    }

    /// ErrorResponse ('E') with severity, SQLSTATE and message.
    pub fn error(out: &mut Vec<u8>, severity: &str, code: &str, message: &str) {
        frame(out, b'E', &fields(severity, code, message));
    }

    /// NoticeResponse ('N') with severity, SQLSTATE and message.
    pub fn notice(out: &mut Vec<u8>, severity: &str, code: &str, message: &str) {
        frame(out, b'N', &fields(severity, code, message));
    }

    fn fields(severity: &str, code: &str, message: &str) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, v) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
            b.push(t);
            cstr(&mut b, v);
        }
        b.push(0);
        b
    }

    /// CopyInResponse ('G') or CopyOutResponse ('H'), text format, `columns` columns.
    pub fn copy_response(out: &mut Vec<u8>, tag: u8, columns: i16) {
        let mut b = vec![0];
        b.extend_from_slice(&columns.to_be_bytes());
        for _ in 0..columns {
            b.extend_from_slice(&0i16.to_be_bytes());
        }
        frame(out, tag, &b);
    }
}
