//! Raw PostgreSQL v3 frames: tag constants, two-phase bounded framing and zero-copy inspectors.
//!
//! A frame is `tag (1) | length (4, includes itself) | body`. The hot path never decodes a frame it
//! forwards: it reads the 5-byte header, decides by tag whether it must look inside, and copies the
//! original bytes onward. Only the few fields the proxy acts on are read, straight from the slice.

use super::WireError;

/// Message type bytes, named once so the hot path reads as protocol vocabulary.
pub mod tag {
    // Frontend (client -> server).
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const PASSWORD: u8 = b'p';

    // Backend (server -> client).
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const DATA_ROW: u8 = b'D';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const NO_DATA: u8 = b'n';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Bytes in a frame header: the tag and the 4-byte length.
pub const HEADER_LEN: usize = 5;

/// True for the message types a logged-in client may send. Anything else is answered with
/// 08P01 by the proxy itself, as PostgreSQL answers it, and never reaches a server.
pub fn is_frontend_tag(t: u8) -> bool {
    matches!(
        t,
        tag::QUERY
            | tag::PARSE
            | tag::BIND
            | tag::DESCRIBE
            | tag::EXECUTE
            | tag::CLOSE
            | tag::SYNC
            | tag::FLUSH
            | tag::FUNCTION_CALL
            | tag::TERMINATE
            | tag::COPY_DATA
            | tag::COPY_DONE
            | tag::COPY_FAIL
    )
}

/// PostgreSQL refuses messages of 1 GiB or more (`PQ_LARGE_MESSAGE_LIMIT`); so do we, so that a
/// forged length can never make us wait for, or buffer toward, more than the server would accept.
pub const MAX_FRAME_LEN: usize = (1 << 30) - 1;

/// The header of the frame at the start of `buf`, if those 5 bytes have arrived.
///
/// Returns `(tag, total)` where `total` counts the tag byte too, so `buf[..total]` is the frame.
/// A declared length below 4 or above [`MAX_FRAME_LEN`] is a protocol violation.
#[inline]
pub fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize)>, WireError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_FRAME_LEN).contains(&len) {
        return Err(WireError::BadLength { tag: header[0], len });
    }
    Ok(Some((header[0], len + 1)))
}

/// The whole frame at the start of `buf`, if it has fully arrived: `(tag, total length)`.
#[inline]
pub fn complete_frame(buf: &[u8]) -> Result<Option<(u8, usize)>, WireError> {
    match peek_header(buf)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some((tag, total))),
        _ => Ok(None),
    }
}

/// Bytes at the start of `buf` taken by whole frames of tag `tag`, one after another: at least
/// the first (the caller knows it is whole), then more while the run is under `limit` bytes.
/// Stops at another tag, a frame not fully arrived, or a bad length (left for the caller to
/// read frame by frame).
pub fn run_of(buf: &[u8], tag: u8, limit: usize) -> usize {
    let mut at = 0;
    while let Ok(Some((t, total))) = complete_frame(&buf[at..]) {
        if t != tag {
            break;
        }
        at += total;
        if at >= limit {
            break;
        }
    }
    at
}

/// The body of a whole frame (everything after the 5-byte header).
#[inline]
pub fn body(frame: &[u8]) -> &[u8] {
    frame.get(HEADER_LEN..).unwrap_or_default()
}

/// Transaction status carried by a ReadyForQuery frame; a missing or unknown status byte is a
/// protocol violation.
#[inline]
pub fn ready_status(frame: &[u8]) -> Result<super::TxStatus, super::status::BadTxStatus> {
    match frame.get(HEADER_LEN) {
        Some(&b) => super::TxStatus::from_byte(b),
        None => Err(super::status::BadTxStatus(None)),
    }
}

/// Splits a NUL-terminated string off the front of `buf`: `(string, rest)`.
#[inline]
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// The fields of an ErrorResponse or NoticeResponse the proxy looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// Non-localized severity (`V`), falling back to the localized one (`S`).
    pub severity: &'a [u8],
    /// SQLSTATE (`C`).
    pub code: &'a [u8],
    /// Primary message (`M`).
    pub message: &'a [u8],
}

impl ErrorFields<'_> {
    /// FATAL and PANIC end the server session: the connection must not go back to a pool.
    pub fn is_fatal(&self) -> bool {
        self.severity == b"FATAL" || self.severity == b"PANIC"
    }
}

/// Reads severity, SQLSTATE and message out of an ErrorResponse/NoticeResponse frame.
pub fn error_fields(frame: &[u8]) -> ErrorFields<'_> {
    let mut out = ErrorFields::default();
    let mut rest = body(frame);
    let mut localized: &[u8] = b"";
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, tail)) = cstr(tail) else {
            break;
        };
        match field {
            b'V' => out.severity = value,
            b'S' => localized = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
        rest = tail;
    }
    if out.severity.is_empty() {
        out.severity = localized;
    }
    out
}

/// The command tag of a CommandComplete frame (`SELECT 1`, `SET`, `COMMIT`, ...), without its NUL.
#[inline]
pub fn command_tag(frame: &[u8]) -> &[u8] {
    let b = body(frame);
    cstr(b).map_or(b, |(s, _)| s)
}

/// `(name, value)` of a ParameterStatus frame.
pub fn parameter_status(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body(frame))?;
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes_and_sane_length() {
        assert_eq!(peek_header(b"Z\0\0\0").unwrap(), None);
        assert_eq!(peek_header(b"Z\0\0\0\x05I").unwrap(), Some((b'Z', 6)));
        assert!(peek_header(b"Z\0\0\0\x03").is_err());
        assert!(peek_header(b"Z\x7f\xff\xff\xff").is_err());
        assert_eq!(complete_frame(b"Z\0\0\0\x05").unwrap(), None);
        assert_eq!(complete_frame(b"Z\0\0\0\x05Ixx").unwrap(), Some((b'Z', 6)));
    }

    #[test]
    fn a_run_stops_at_another_tag_a_partial_frame_or_the_limit() {
        let row = b"D\0\0\0\x06\0\0";
        let mut buf = [&row[..], row, row, b"C\0\0\0\x05x", row].concat();
        assert_eq!(run_of(&buf, b'D', usize::MAX), 21, "three rows, then CommandComplete");
        assert_eq!(run_of(&buf, b'D', 8), 14, "the frame that reaches the limit is the last");
        assert_eq!(run_of(&buf, b'D', 1), 7, "at least the first");
        buf.truncate(17);
        assert_eq!(run_of(&buf, b'D', usize::MAX), 14, "the third row has not fully arrived");
        assert_eq!(run_of(b"D\0\0\0\x06\0\0D\0\0\0\x01", b'D', usize::MAX), 7, "a bad length is left");
    }

    #[test]
    fn reads_error_fields() {
        let frame = crate::wire::messages::error_response("FATAL", "57P01", "bye");
        let f = error_fields(&frame);
        assert_eq!(f.severity, b"FATAL");
        assert_eq!(f.code, b"57P01");
        assert_eq!(f.message, b"bye");
        assert!(f.is_fatal());
    }

    #[test]
    fn truncated_error_fields_do_not_panic() {
        for cut in 0..20 {
            let frame = crate::wire::messages::error_response("ERROR", "42601", "syntax");
            let _ = error_fields(&frame[..cut.min(frame.len())]);
        }
    }

    #[test]
    fn command_tag_and_status() {
        let mut f = vec![b'C', 0, 0, 0, 8];
        f.extend_from_slice(b"SET\0");
        assert_eq!(command_tag(&f), b"SET");
        assert_eq!(ready_status(b"Z\0\0\0\x05T").unwrap(), super::super::TxStatus::InTransaction);
        assert!(ready_status(b"Z\0\0\0\x05X").is_err());
        assert!(ready_status(b"Z\0\0\0\x04").is_err());
    }
}
