//! Buffers recycled per thread: an idle client holds none, and its next request takes a spare
//! one instead of allocating (and re-growing) a fresh one each transaction. The attachment's
//! buffers (`state::Spare`) go through the same bounded lists and the same size rule.

use bytes::BytesMut;
use std::cell::RefCell;
use std::thread::LocalKey;

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Spare buffers kept per thread. What is kept counts against every idle client (256 spares
/// were 0.04 kB per client of 10,000); 64 cost no more instructions per transaction than 256
/// (callgrind, 64 pgbench clients on one thread): buffers come back about as fast as they go.
const MAX_SPARES: usize = 64;
/// A buffer that grew beyond this for one large request or result is freed, not kept.
const MAX_KEPT: usize = 8 * 1024;

/// An empty buffer with room for at least `min` bytes.
pub fn take(min: usize) -> BytesMut {
    match SPARES.with(|s| s.borrow_mut().pop()) {
        Some(mut b) => {
            if b.capacity() < min {
                b.reserve(min);
            }
            b
        }
        None => BytesMut::with_capacity(min),
    }
}

/// Takes `b`'s allocation for the next client on this thread, leaving `b` with none. Anything
/// still in it is discarded: callers give back only buffers they have emptied.
pub fn give(b: &mut BytesMut) {
    if let Some(b) = reusable(b, MAX_KEPT) {
        keep(&SPARES, b, MAX_SPARES);
    }
}

/// `b` emptied and taken (leaving `b` with none), or `None` when it holds no allocation or one
/// larger than `max` bytes (then freed). `capacity()` counts only the room after what was
/// consumed (`advance`, `split_to`); reclaiming more than `max` succeeds exactly when the
/// allocation underneath is larger.
pub fn reusable(b: &mut BytesMut, max: usize) -> Option<BytesMut> {
    let mut b = std::mem::take(b);
    b.clear();
    if b.capacity() == 0 || b.try_reclaim(max + 1) || b.capacity() > max {
        return None;
    }
    Some(b)
}

/// Keeps `item` on this thread's `list` for reuse, unless the list already holds `max`.
pub fn keep<T: 'static>(list: &'static LocalKey<RefCell<Vec<T>>>, item: T, max: usize) {
    list.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < max {
            l.push(item);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_large_ones_are_freed() {
        let mut b = take(1024);
        assert!(b.capacity() >= 1024);
        b.extend_from_slice(b"leftover");
        let ptr = b.as_ptr();
        b.clear();
        give(&mut b);
        assert_eq!(b.capacity(), 0, "the caller keeps nothing");
        let again = take(512);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same allocation is reused");
        let mut big = BytesMut::with_capacity(MAX_KEPT * 2);
        give(&mut big);
        assert_ne!(take(16).capacity(), MAX_KEPT * 2, "a grown buffer is not kept");
        // A large buffer whose request was consumed shows little capacity but holds it all.
        let mut consumed = BytesMut::with_capacity(MAX_KEPT * 8);
        consumed.resize(MAX_KEPT * 8 - 100, b'x');
        let _ = consumed.split_to(consumed.len());
        assert!(consumed.capacity() <= MAX_KEPT, "only the tail shows: {}", consumed.capacity());
        let tail = consumed.as_ptr();
        give(&mut consumed);
        assert_ne!(take(16).as_ptr(), tail, "the large allocation was freed, not kept");
    }
}
