//! Fuzz target `startup`: what an unauthenticated client (or a backend during login) can make the
//! proxy parse: the startup packet, the SASLInitialResponse and SCRAM client-first/client-final
//! messages, md5 answers, stored verifiers, and the backend's SCRAM server-first/server-final.
//!
//! The first byte picks the parser, the rest is its input. SCRAM secrets are derived once per
//! process (PBKDF2 is deliberately slow).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgshift::auth::scram::{ClientCredential, ScramClient, ScramSecret, ScramServer};
use pgshift::auth::{md5_response, md5_secret};
use pgshift::wire::frame;
use pgshift::wire::startup::{parse_startup, StartupPacket, MAX_STARTUP_LEN, MIN_STARTUP_LEN};

fn secret() -> &'static ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET.get_or_init(|| ScramSecret::from_password("app", 4096))
}

/// `parse_startup`: a parsed packet took at most what arrived and within PostgreSQL's bounds, and
/// any shorter prefix is "not yet" rather than a different packet.
fn startup(data: &[u8]) {
    if let Ok(Some((packet, n))) = parse_startup(data) {
        assert!((MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&n) && n <= data.len());
        assert!(matches!(parse_startup(&data[..n - 1]), Ok(None)));
        if let StartupPacket::Startup { params, .. } = &packet {
            let _ = StartupPacket::param(params, "user");
        }
    }
}

/// The server side of client SCRAM, as login.rs reads it: SASLInitialResponse body (mechanism,
/// length, client-first), then a SASLResponse body (client-final), split at the first 0xff.
fn scram_server(data: &[u8], tls: bool) {
    let (initial, fin) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Some((mech, rest)) = frame::cstr(initial) else { return };
    let Some(client_first) = rest.get(4..) else { return };
    let Ok(mech) = std::str::from_utf8(mech) else { return };
    let cbind = tls.then(|| vec![7u8; 32]);
    let mut server = ScramServer::new(secret().clone(), cbind);
    if server.first(mech, client_first).is_ok() {
        let _ = server.finish(fin);
    }
}

/// The client side of backend SCRAM with recovered keys (no PBKDF2, whose cost the backend
/// chooses): server-first, then server-final, split at the first 0xff.
fn scram_client(data: &[u8]) {
    let (first, fin) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let s = secret();
    let cred = ClientCredential::Keys {
        salt: s.salt.clone(),
        iterations: s.iterations,
        client_key: [1; 32],
        server_key: s.server_key,
    };
    let (mut client, client_first) = ScramClient::new(cred);
    // The server nonce must extend the client's; splice ours in so the fuzzer gets past it.
    let text = String::from_utf8_lossy(first).replace("r=*", &format!("r={}", client_nonce(&client_first)));
    if client.respond(text.as_bytes()).is_ok() {
        let _ = client.verify(fin);
    }
}

fn client_nonce(client_first: &str) -> &str {
    client_first.rsplit_once("r=").map_or("", |(_, n)| n)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 | 1 => startup(rest),
        2 => scram_server(rest, which & 0x10 != 0),
        3 => scram_client(rest),
        4 => {
            let _ = ScramSecret::parse(&String::from_utf8_lossy(rest));
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let salt = [rest.first().copied().unwrap_or(0), 1, 2, 3];
            let _ = md5_response(&text, salt);
            let _ = md5_secret(&text, "pw");
        }
    }
});
