//! Bounded randomized testing of everything that parses untrusted bytes: startup packets, frame
//! headers, request boundaries, error fields. Deterministic (seeded), fast enough for every CI run;
//! each case must end in a value or an error, never a panic or a huge allocation.

use super::{frame, startup};
use crate::client::request;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A frame-shaped input: a plausible tag and a length that is sometimes honest, sometimes under
/// 4, sometimes beyond 1 GiB, followed by a truncated or random body.
fn frame_like(r: &mut Rng) -> Vec<u8> {
    const TAGS: &[u8] = b"QPBDECSHFXdcfpZTDNA!\0\xff";
    let tag = TAGS[(r.next() as usize) % TAGS.len()];
    let body = r.bytes(64);
    let len: u32 = match r.next() % 5 {
        0 => (r.next() % 4) as u32,
        1 => u32::MAX - (r.next() % 1000) as u32,
        2 => 0x4000_0000 + (r.next() % 1000) as u32,
        _ => body.len() as u32 + 4,
    };
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn startup_like(r: &mut Rng) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..(r.next() % 6) {
        body.extend_from_slice(&r.bytes(12));
        if !r.next().is_multiple_of(4) {
            body.push(0);
        }
    }
    let code: u32 = match r.next() % 4 {
        0 => 196_608,
        1 => 80_877_103,
        2 => 80_877_102,
        _ => r.next() as u32,
    };
    let len = match r.next() % 4 {
        0 => (r.next() % 8) as u32,
        1 => 1 << 30,
        _ => body.len() as u32 + 8,
    };
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn parsers_survive_random_input() {
    let mut r = Rng(0x5eed_1234_abcd_ef01);
    for _ in 0..60_000 {
        let input = match r.next() % 3 {
            0 => frame_like(&mut r),
            1 => startup_like(&mut r),
            _ => r.bytes(200),
        };
        for cut in [input.len(), input.len() / 2, 5, 1] {
            let slice = &input[..cut.min(input.len())];
            let _ = startup::parse_startup(slice);
            if let Ok(Some((_, total))) = frame::complete_frame(slice) {
                let f = &slice[..total];
                let _ = frame::error_fields(f);
                let _ = frame::parameter_status(f);
                let _ = frame::command_tag(f);
                let _ = request::sql_of(f[0], f);
            }
            let _ = request::scan(slice, usize::MAX);
            let _ = request::executes(slice);
        }
    }
}

#[test]
fn declared_lengths_never_size_allocations() {
    // A header announcing 1 GiB - 1 is accepted as a length but yields "incomplete", so the
    // reader waits for bytes that actually arrive; nothing is reserved up front.
    let mut h = vec![b'Q'];
    h.extend_from_slice(&(frame::MAX_FRAME_LEN as u32).to_be_bytes());
    assert!(matches!(frame::complete_frame(&h), Ok(None)));
    h[1..5].copy_from_slice(&(frame::MAX_FRAME_LEN as u32 + 1).to_be_bytes());
    assert!(frame::peek_header(&h).is_err());
}
