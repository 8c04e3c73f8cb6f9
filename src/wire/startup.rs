//! The untagged packets a client may open with: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage.
//!
//! These come before any tagged frame and carry no tag byte. Their length is bounded to
//! `8..=10000` (PostgreSQL's own `MAX_STARTUP_PACKET_LENGTH`) so an unauthenticated peer can make
//! us buffer at most 10 kB.

use super::WireError;

/// Smallest legal startup packet: length and code.
pub const MIN_STARTUP_LEN: usize = 8;
/// PostgreSQL's limit for startup packets.
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_MAJOR_3: u32 = 3;

/// One parsed opening packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption (always refused).
    GssEncRequest,
    /// Cancel the query running for the session holding this key.
    Cancel {
        /// Process id half of the key.
        pid: i32,
        /// Secret half of the key.
        secret: i32,
    },
    /// A v3 StartupMessage.
    Startup {
        /// Requested minor protocol version (we speak 0 and negotiate newer ones down).
        minor: u16,
        /// Parameters in the order sent (user, database, options, application_name, ...).
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// The value of a startup parameter.
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses the packet at the start of `buf`: `Ok(None)` until all of it has arrived, then the
/// packet and the number of bytes it took.
pub fn parse_startup(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, WireError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    if !(MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&len) {
        return Err(WireError::BadStartup("invalid length of startup packet"));
    }
    let Some(packet) = buf.get(..len) else {
        return Ok(None);
    };
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    let parsed = match code {
        SSL_REQUEST if body.is_empty() => StartupPacket::SslRequest,
        GSSENC_REQUEST if body.is_empty() => StartupPacket::GssEncRequest,
        CANCEL_REQUEST if body.len() == 8 => StartupPacket::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        },
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => return Err(WireError::BadStartup("malformed request packet")),
        _ if code >> 16 == PROTOCOL_MAJOR_3 => {
            StartupPacket::Startup { minor: (code & 0xffff) as u16, params: parse_params(body)? }
        }
        _ => return Err(WireError::UnsupportedProtocol(code >> 16, code & 0xffff)),
    };
    Ok(Some((parsed, len)))
}

/// Name/value pairs, each NUL-terminated, ended by an empty name.
fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut params = Vec::new();
    loop {
        let (name, rest) = split_cstr(body)?;
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(WireError::BadStartup("trailing bytes after startup parameters"));
            }
            return Ok(params);
        }
        let (value, rest) = split_cstr(rest)?;
        params.push((utf8(name)?, utf8(value)?));
        body = rest;
    }
}

fn split_cstr(buf: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    super::frame::cstr(buf).ok_or(WireError::BadStartup("unterminated startup parameter"))
}

fn utf8(b: &[u8]) -> Result<String, WireError> {
    String::from_utf8(b.to_vec()).map_err(|_| WireError::BadStartup("startup parameter is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::startup_message;

    #[test]
    fn parses_startup_and_requests() {
        let pkt = startup_message(&[("user", "app"), ("database", "db")]);
        let (p, n) = parse_startup(&pkt).unwrap().unwrap();
        assert_eq!(n, pkt.len());
        match p {
            StartupPacket::Startup { minor, params } => {
                assert_eq!(minor, 0);
                assert_eq!(StartupPacket::param(&params, "database"), Some("db"));
            }
            other => panic!("{other:?}"),
        }
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(parse_startup(&ssl).unwrap().unwrap().0, StartupPacket::SslRequest);
        assert_eq!(parse_startup(&ssl[..7]).unwrap(), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_startup(&[0, 0, 0, 2]).is_err());
        assert!(parse_startup(&[0, 1, 0, 0]).is_err());
        assert!(parse_startup(b"GET / HTTP/1.1\r\n").is_err());
        // parameters without terminators
        let mut pkt = vec![0, 0, 0, 14, 0, 3, 0, 0];
        pkt.extend_from_slice(b"user\0a");
        assert!(parse_startup(&pkt).is_err());
    }

    #[test]
    fn every_prefix_and_mutation_is_handled() {
        let pkt = startup_message(&[("user", "app"), ("options", "-c x=y")]);
        for cut in 0..pkt.len() {
            let _ = parse_startup(&pkt[..cut]);
        }
        for i in 0..pkt.len() {
            let mut m = pkt.to_vec();
            m[i] ^= 0xff;
            let _ = parse_startup(&m);
        }
    }
}
