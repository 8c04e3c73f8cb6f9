//! Encoders for the messages the proxy itself makes (cold path): errors, auth, startup, console rows.
//!
//! Forwarded traffic never passes through here. These build frames the proxy originates: its own
//! ErrorResponses, the login dialogue on both sides, and synthetic replies such as CloseComplete.

use bytes::{BufMut, BytesMut};

/// Appends one frame to `out`: writes the tag and a length placeholder, lets `fill` write the
/// body, then patches the length. Keeps every encoder below a one-liner about its fields.
#[inline]
pub fn put_frame(out: &mut BytesMut, tag: u8, fill: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    fill(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends `s` and its NUL terminator.
#[inline]
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

fn frame(tag: u8, fill: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::with_capacity(64);
    put_frame(&mut out, tag, fill);
    out
}

/// ErrorResponse with severity, SQLSTATE and message, as PostgreSQL sends them (`S`, `V`, `C`, `M`).
pub fn error_response(severity: &str, code: &str, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    put_error(&mut out, b'E', severity, code, message);
    out
}

/// NoticeResponse, same fields as an error.
pub fn notice_response(severity: &str, code: &str, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    put_error(&mut out, b'N', severity, code, message);
    out
}

/// Appends an ErrorResponse (`tag` b'E') or NoticeResponse (b'N').
pub fn put_error(out: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    put_frame(out, tag, |b| {
        for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
            b.put_u8(field);
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

/// AuthenticationOk.
pub fn auth_ok() -> BytesMut {
    frame(b'R', |b| b.put_i32(0))
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext() -> BytesMut {
    frame(b'R', |b| b.put_i32(3))
}

/// AuthenticationMD5Password with its 4-byte salt.
pub fn auth_md5(salt: [u8; 4]) -> BytesMut {
    frame(b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    })
}

/// AuthenticationSASL listing the mechanisms offered.
pub fn auth_sasl(mechanisms: &[&str]) -> BytesMut {
    frame(b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    })
}

/// AuthenticationSASLContinue (server-first-message).
pub fn auth_sasl_continue(data: &[u8]) -> BytesMut {
    frame(b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    })
}

/// AuthenticationSASLFinal (server-final-message).
pub fn auth_sasl_final(data: &[u8]) -> BytesMut {
    frame(b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    })
}

/// ParameterStatus.
pub fn put_parameter_status(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    put_frame(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData with the proxy's own key for this client.
pub fn put_backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    put_frame(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// ReadyForQuery with transaction status `I`, `T` or `E`.
pub fn put_ready_for_query(out: &mut BytesMut, status: super::TxStatus) {
    put_frame(out, b'Z', |b| b.put_u8(status.byte()));
}

/// NegotiateProtocolVersion: the newest minor version we speak and the options we did not know.
pub fn negotiate_protocol_version(minor: i32, unknown_options: &[String]) -> BytesMut {
    frame(b'v', |b| {
        b.put_i32(minor);
        b.put_i32(unknown_options.len() as i32);
        for o in unknown_options {
            put_cstr(b, o.as_bytes());
        }
    })
}

/// CommandComplete with its tag.
pub fn put_command_complete(out: &mut BytesMut, tag: &str) {
    put_frame(out, b'C', |b| put_cstr(b, tag.as_bytes()));
}

/// A body-less frame (ParseComplete `1`, BindComplete `2`, CloseComplete `3`, NoData `n`, ...).
pub fn put_empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_u32(4);
}

/// Column type of a console result: the OID and size PostgreSQL would report.
#[derive(Debug, Clone, Copy)]
pub enum ColType {
    /// `text` (OID 25).
    Text,
    /// `int8` (OID 20).
    Int8,
    /// `int4` (OID 23).
    Int4,
    /// `numeric` (OID 1700).
    Numeric,
    /// `timestamptz` (OID 1184).
    Timestamptz,
}

impl ColType {
    fn oid_and_size(self) -> (u32, i16) {
        match self {
            ColType::Text => (25, -1),
            ColType::Int8 => (20, 8),
            ColType::Int4 => (23, 4),
            ColType::Numeric => (1700, -1),
            ColType::Timestamptz => (1184, 8),
        }
    }
}

/// RowDescription for text-format columns.
pub fn put_row_description(out: &mut BytesMut, cols: &[(&str, ColType)]) {
    put_frame(out, b'T', |b| {
        b.put_i16(cols.len() as i16);
        for (name, ty) in cols {
            let (oid, size) = ty.oid_and_size();
            put_cstr(b, name.as_bytes());
            b.put_u32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(oid);
            b.put_i16(size);
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
}

/// DataRow of text values (`None` is NULL).
pub fn put_data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    put_frame(out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

// ---- frontend messages the proxy sends to PostgreSQL on its own behalf ----

/// StartupMessage for protocol 3.0 with the given parameters.
pub fn startup_message(params: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::with_capacity(128);
    out.put_u32(0);
    out.put_i32(196_608);
    for (k, v) in params {
        put_cstr(&mut out, k.as_bytes());
        put_cstr(&mut out, v.as_bytes());
    }
    out.put_u8(0);
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// PasswordMessage (cleartext or md5 response).
pub fn password_message(password: &[u8]) -> BytesMut {
    frame(b'p', |b| put_cstr(b, password))
}

/// SASLInitialResponse.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> BytesMut {
    frame(b'p', |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    })
}

/// SASLResponse.
pub fn sasl_response(data: &[u8]) -> BytesMut {
    frame(b'p', |b| b.put_slice(data))
}

/// Simple Query.
pub fn put_query(out: &mut BytesMut, sql: &str) {
    put_frame(out, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

/// Terminate.
pub fn terminate() -> BytesMut {
    frame(b'X', |_| {})
}

/// CancelRequest carrying a server's own key.
pub fn cancel_request(pid: i32, secret: i32) -> BytesMut {
    let mut out = BytesMut::with_capacity(16);
    out.put_u32(16);
    out.put_i32(80_877_102);
    out.put_i32(pid);
    out.put_i32(secret);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame;

    #[test]
    fn frames_carry_their_length() {
        let e = error_response("ERROR", "08P01", "boom");
        let (tag, total) = frame::complete_frame(&e).unwrap().unwrap();
        assert_eq!((tag, total), (b'E', e.len()));
        let mut z = BytesMut::new();
        put_ready_for_query(&mut z, super::super::TxStatus::Idle);
        assert_eq!(&z[..], b"Z\0\0\0\x05I");
        assert_eq!(startup_message(&[("user", "a")]).len(), 4 + 4 + 5 + 2 + 1);
    }
}
