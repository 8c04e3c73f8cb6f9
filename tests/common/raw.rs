//! A minimal raw-protocol client for tests that need exact control of the messages sent.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Appends one frame (tag, length, body).
pub fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Appends a Parse.
pub fn parse(out: &mut Vec<u8>, name: &str, sql: &str) {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(out, b'P', &b);
}

/// Appends a Describe of a statement.
pub fn describe_statement(out: &mut Vec<u8>, name: &str) {
    let mut b = vec![b'S'];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    frame(out, b'D', &b);
}

/// Appends a Bind of text parameters to the unnamed portal.
pub fn bind(out: &mut Vec<u8>, stmt: &str, params: &[&[u8]]) {
    let mut b = vec![0];
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p);
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(out, b'B', &b);
}

/// Appends a simple Query.
pub fn query(out: &mut Vec<u8>, sql: &str) {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    frame(out, b'Q', &b);
}

/// Reads frames until one with tag `until` (inclusive); returns their tags.
pub async fn read_tags(s: &mut TcpStream, until: u8) -> Vec<u8> {
    read_frames(s, until).await.into_iter().map(|(t, _)| t).collect()
}

/// Reads frames until one with tag `until` (inclusive).
pub async fn read_frames(s: &mut TcpStream, until: u8) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).await.expect("frame header");
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.expect("frame body");
        out.push((h[0], body));
        if h[0] == until {
            return out;
        }
    }
}

/// Logs in with SCRAM, through tokio-postgres's own protocol code, then hands back the socket
/// positioned after the first ReadyForQuery.
pub async fn login(port: u16, user: &str, password: &str, db: &str) -> TcpStream {
    match login_with(port, user, password, db, &[]).await {
        Ok((s, _)) => s,
        Err(e) => panic!("login refused: {e:?}"),
    }
}

/// [`login`] with more startup parameters; also the frames from AuthenticationOk to the first
/// ReadyForQuery (ParameterStatus, BackendKeyData), or the ErrorResponse's fields if refused.
pub async fn login_with(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    params: &[(&str, &str)],
) -> Result<(TcpStream, Vec<(u8, Vec<u8>)>), Vec<(u8, String)>> {
    use postgres_protocol::authentication::sasl;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut pkt = vec![0, 0, 0, 0, 0, 3, 0, 0];
    let pairs = [("user", user), ("database", db)].into_iter().chain(params.iter().copied());
    for kv in pairs.flat_map(|(k, v)| [k, v]) {
        pkt.extend_from_slice(kv.as_bytes());
        pkt.push(0);
    }
    pkt.push(0);
    let len = pkt.len() as u32;
    pkt[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&pkt).await.unwrap();
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let mut frames = read_frames_or_error(&mut s, b'R').await;
        if frames.last().is_some_and(|(t, _)| *t == b'E') {
            return Err(error_fields(&frames.pop().unwrap().1));
        }
        let (_, body) = frames.last().unwrap();
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match code {
            0 => break,
            10 => {
                let sc = sasl::ScramSha256::new(password.as_bytes(), sasl::ChannelBinding::unsupported());
                let mut b = b"SCRAM-SHA-256\0".to_vec();
                b.extend_from_slice(&(sc.message().len() as i32).to_be_bytes());
                b.extend_from_slice(sc.message());
                let mut out = Vec::new();
                frame(&mut out, b'p', &b);
                s.write_all(&out).await.unwrap();
                scram = Some(sc);
            }
            11 => {
                let sc = scram.as_mut().unwrap();
                sc.update(&body[4..]).unwrap();
                let mut out = Vec::new();
                frame(&mut out, b'p', sc.message());
                s.write_all(&out).await.unwrap();
            }
            12 => scram.as_mut().unwrap().finish(&body[4..]).unwrap(),
            other => panic!("unexpected auth request {other}"),
        }
    }
    let frames = read_frames_or_error(&mut s, b'Z').await;
    match frames.last() {
        Some((b'E', body)) => Err(error_fields(body)),
        _ => Ok((s, frames)),
    }
}

/// [`read_frames`], stopping early at an ErrorResponse.
async fn read_frames_or_error(s: &mut TcpStream, until: u8) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).await.expect("frame header");
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.expect("frame body");
        out.push((h[0], body));
        if h[0] == until || h[0] == b'E' {
            return out;
        }
    }
}

/// An ErrorResponse's fields: (code, value), e.g. (b'C', "22023").
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

/// The ParameterStatus values among `frames`.
pub fn parameter_status(frames: &[(u8, Vec<u8>)]) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|(t, _)| *t == b'S')
        .filter_map(|(_, b)| {
            let mut it = b.split(|&c| c == 0);
            let k = String::from_utf8_lossy(it.next()?).into_owned();
            let v = String::from_utf8_lossy(it.next()?).into_owned();
            Some((k, v))
        })
        .collect()
}

/// Appends Describe of the unnamed portal, Execute of it and Sync.
pub fn describe_execute_sync(out: &mut Vec<u8>) {
    frame(out, b'D', b"P\0");
    frame(out, b'E', b"\0\0\0\0\0");
    frame(out, b'S', b"");
}

/// Appends Describe of the unnamed portal.
pub fn describe_portal(out: &mut Vec<u8>) {
    frame(out, b'D', b"P\0");
}

/// Appends Execute of the unnamed portal, all rows.
pub fn execute(out: &mut Vec<u8>) {
    frame(out, b'E', b"\0\0\0\0\0");
}

/// Appends Flush.
pub fn flush(out: &mut Vec<u8>) {
    frame(out, b'H', b"");
}

/// Appends Sync.
pub fn sync(out: &mut Vec<u8>) {
    frame(out, b'S', b"");
}

/// Bound on any one read: a relay that waits for something that never comes fails the test
/// instead of hanging it. Not a performance limit.
pub const HANG: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes `bytes` to pgshift.
pub async fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).await.expect("write to pgshift");
}

/// Reads exactly `n` bytes.
pub async fn read_bytes(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(HANG, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => buf,
        Ok(Err(e)) => panic!("reading {n} bytes from pgshift: {e}"),
        Err(_) => panic!("pgshift sent fewer than {n} bytes within {HANG:?}"),
    }
}

/// Reads one whole frame, as raw bytes.
pub async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut f = read_bytes(s, 5).await;
    let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
    f.extend(read_bytes(s, len - 4).await);
    f
}

/// Reads whole frames up to and including ReadyForQuery, as raw bytes.
pub async fn read_bytes_until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let f = read_frame(s).await;
        out.extend_from_slice(&f);
        if f[0] == b'Z' {
            return out;
        }
    }
}

/// Asserts that pgshift closes the connection with nothing more to say.
pub async fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    match tokio::time::timeout(HANG, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("expected the connection closed, got {:?}", &b[..n]),
        Err(_) => panic!("pgshift kept the connection open"),
    }
}
