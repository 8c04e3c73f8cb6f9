//! Fuzz target `frame`: the frame reader and header peeker, the frame inspectors, and the request
//! boundary scanner, on arbitrary bytes as they would arrive from a client or a server.
//!
//! Beyond "no panic", it checks what the session relies on: a whole frame never claims more bytes
//! than were given, reading a stream frame by frame consumes exactly the frames it reports, a
//! request spans whole frames within the buffer, and a shorter prefix never yields a different
//! frame than the whole buffer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgshift::client::request::{executes, scan, sql_of};
use pgshift::wire::frame::{
    body, command_tag, complete_frame, error_fields, parameter_status, peek_header, ready_status, HEADER_LEN,
    MAX_FRAME_LEN,
};

fuzz_target!(|data: &[u8]| {
    // The stream as the relay reads it: whole frames off the front until one is incomplete.
    let mut at = 0;
    loop {
        let rest = &data[at..];
        match complete_frame(rest) {
            Ok(Some((tag, total))) => {
                assert!(total > HEADER_LEN - 1 && total <= rest.len() && total <= MAX_FRAME_LEN + 1);
                assert_eq!(tag, rest[0]);
                let f = &rest[..total];
                assert_eq!(body(f).len(), total - HEADER_LEN);
                let _ = error_fields(f).is_fatal();
                let _ = parameter_status(f);
                let _ = command_tag(f);
                let _ = ready_status(f);
                let _ = sql_of(tag, f);
                // A prefix of a whole frame is incomplete, never another frame.
                assert!(matches!(complete_frame(&f[..total - 1]), Ok(None)));
                at += total;
            }
            Ok(None) => {
                // Incomplete: the header, if here, must agree and want more than what arrived.
                if let Ok(Some((_, total))) = peek_header(rest) {
                    assert!(total > rest.len());
                }
                break;
            }
            Err(_) => {
                assert!(peek_header(rest).is_err());
                break;
            }
        }
    }
    // The inspectors also take frames that were never framed (e.g. a truncated copy).
    let _ = error_fields(data);
    let _ = parameter_status(data);
    let _ = command_tag(data);

    // A small size limit refuses big frames from their header; it never panics either.
    let _ = scan(data, 64);
    if let Ok(Some(req)) = scan(data, usize::MAX) {
        if req.len == 0 {
            // A large simple Query whose text has not all arrived: routed to stream through.
            assert!(data[0] == b'Q' && req.complete && !req.terminate);
            return;
        }
        assert!(req.len >= HEADER_LEN && req.len <= data.len());
        assert!(!req.terminate || data[0] == b'X');
        // The request is whole frames: reading it frame by frame ends exactly at its end.
        let mut at = 0;
        while at < req.len {
            match complete_frame(&data[at..req.len]) {
                Ok(Some((_, total))) => at += total,
                other => panic!("request of {} bytes cut a frame at {at}: {other:?}", req.len),
            }
        }
        let _ = executes(&data[..req.len]);
    }
    let _ = executes(data);
});
