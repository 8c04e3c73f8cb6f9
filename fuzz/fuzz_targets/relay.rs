//! Fuzz target `relay`: a whole pgshift session, in-process, between a client and a fake
//! PostgreSQL, both speaking fuzzer-chosen bytes.
//!
//! One tokio runtime (current thread), one proxy and one fake backend serve every input; each
//! input opens a fresh client connection, so per-input state is that connection's session plus
//! whatever the pool kept from earlier inputs (as in production).
//!
//! Input: `flags (1) | split (2, big-endian) | bytes`. `bytes[..split % (len + 1)]` is what the
//! client sends, the rest what the backend sends. Flags:
//! - bit 0: the client bytes include their own opening packet (else a StartupMessage for
//!   user `app`, database `db` comes first);
//! - bit 1: the backend bytes answer the login too (else the backend logs in with
//!   AuthenticationOk, ParameterStatus, BackendKeyData and ReadyForQuery, and sends the fuzzed
//!   bytes once the proxy forwards something).
//!
//! Both peers half-close after sending; the check is that the proxy neither panics nor hangs:
//! the client connection must reach end-of-stream (or a reset) within `DEADLINE`.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pgshift::config::Config;
use pgshift::proxy::Proxy;
use pgshift::wire::messages;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// How long the proxy may take to close a session whose client and server both went quiet.
const DEADLINE: Duration = Duration::from_secs(10);

/// What the fake backend says for the current input.
struct Script {
    raw_login: bool,
    bytes: Vec<u8>,
}

type Slot = Arc<Mutex<Option<Script>>>;

struct Harness {
    rt: Runtime,
    addr: SocketAddr,
    slot: Slot,
    _proxy: Proxy,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let slot: Slot = Arc::default();
        let (proxy, addr) = rt.block_on(async {
            let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind fake backend");
            let port = backend.local_addr().expect("backend addr").port();
            tokio::spawn(accept_loop(backend, slot.clone()));
            let proxy = Proxy::start(config(port), None).await.expect("proxy starts");
            let addr = proxy.addr;
            (proxy, addr)
        });
        Harness { rt, addr, slot, _proxy: proxy }
    })
}

fn config(backend_port: u16) -> Config {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\ndefault_pool_size = 2\nquery_wait_timeout = \"1s\"\n\
         server_connect_timeout = \"1s\"\nclient_login_timeout = \"2s\"\nmax_client_conn = 1000\n\
         [auth]\ntype = \"trust\"\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n\
         [primary]\nhost = \"127.0.0.1\"\nport = {backend_port}\n\
         [routing]\nhealth_check_user = \"nobody\"\nhealth_check_interval = \"1h\"\n\
         [admin]\nlisten = \"\"\n"
    );
    Config::from_toml(&text).expect("fuzz config is valid")
}

async fn accept_loop(listener: TcpListener, slot: Slot) {
    while let Ok((s, _)) = listener.accept().await {
        tokio::spawn(fake_backend(s, slot.clone()));
    }
}

/// One server connection: read the startup packet, log in (scripted or fuzzed), then send the
/// current input's bytes once the proxy sends something, half-close, and drain until the proxy
/// hangs up (closing with unread bytes would reset the connection and lose what we sent).
async fn fake_backend(mut s: TcpStream, slot: Slot) {
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).await.is_err() {
        return;
    }
    let mut rest = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4).min(10_000)];
    if s.read_exact(&mut rest).await.is_err() {
        return;
    }
    let take_raw = |slot: &Slot| {
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_some_and(|s| s.raw_login) {
            g.take()
        } else {
            None
        }
    };
    let bytes = match take_raw(&slot) {
        Some(script) => script.bytes,
        None => {
            let mut login = messages::auth_ok();
            messages::put_parameter_status(&mut login, b"server_version", b"15.4");
            messages::put_parameter_status(&mut login, b"standard_conforming_strings", b"on");
            messages::put_parameter_status(&mut login, b"client_encoding", b"UTF8");
            messages::put_backend_key_data(&mut login, 4242, 77);
            messages::put_ready_for_query(&mut login, pgshift::wire::TxStatus::Idle);
            if s.write_all(&login).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            taken.map(|s| s.bytes).unwrap_or_default()
        }
    };
    let _ = s.write_all(&bytes).await;
    let _ = s.shutdown().await;
    let mut sink = [0u8; 4096];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

async fn client(addr: SocketAddr, own_startup: bool, bytes: &[u8]) -> usize {
    let Ok(mut c) = TcpStream::connect(addr).await else {
        panic!("proxy does not accept connections");
    };
    if !own_startup {
        let _ = c.write_all(&messages::startup_message(&[("user", "app"), ("database", "db")])).await;
    }
    let _ = c.write_all(bytes).await;
    let _ = c.shutdown().await;
    let mut got = 0;
    let mut buf = vec![0u8; 16 * 1024];
    let read_all = async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    if tokio::time::timeout(DEADLINE, read_all).await.is_err() {
        panic!("the proxy neither closed nor finished the session within {DEADLINE:?} of both peers going quiet");
    }
    got
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let h = harness();
    let flags = data[0];
    let bytes = &data[3..];
    let split = usize::from(u16::from_be_bytes([data[1], data[2]])) % (bytes.len() + 1);
    let (client_bytes, server_bytes) = bytes.split_at(split);
    *h.slot.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Script { raw_login: flags & 2 != 0, bytes: server_bytes.to_vec() });
    h.rt.block_on(client(h.addr, flags & 1 != 0, client_bytes));
});
