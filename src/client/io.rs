//! One poll over every socket operation a session may be waiting on, so a single task can read
//! and write both of its connections without splitting them or holding a buffer unflushed.

use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWrite};

use crate::stream::Stream;

/// Read buffer growth toward a client: requests are small, and an idle client gives its buffer
/// to this thread's spares (see `bufpool`).
pub const CLIENT_CHUNK: u32 = 1024;
/// Read buffer growth toward a server: results can be large.
pub const SERVER_CHUNK: u32 = 16 * 1024;

/// Something that happened on a socket.
#[derive(Debug)]
pub enum Event {
    /// Bytes read from the client (0 = it closed).
    ClientRead(io::Result<usize>),
    /// Bytes read from the server (0 = it closed).
    ServerRead(io::Result<usize>),
    /// Bytes written to the client.
    ClientWrote(io::Result<usize>),
    /// Bytes written to the server.
    ServerWrote(io::Result<usize>),
    /// A TLS flush finished (client side).
    ClientFlushed(io::Result<()>),
    /// A TLS flush finished (server side).
    ServerFlushed(io::Result<()>),
    /// One of the extra futures (kill, timeout, drain) fired; its index.
    Other(usize),
    /// A NotificationResponse for the client (LISTEN fan-out); `None` when the hub closed.
    Notification(Option<bytes::Bytes>),
    /// Flags raised for the session, among those it waits on (see `registry::Signals`).
    Signal(u8),
}

/// One side's socket and buffers, with what the session wants from it right now.
pub struct Side<'a> {
    /// The socket.
    pub stream: &'a mut Stream,
    /// Where reads land.
    pub rbuf: &'a mut BytesMut,
    /// What to write.
    pub wbuf: &'a mut BytesMut,
    /// Whether to read now (false applies back-pressure).
    pub read: bool,
    /// A TLS flush is owed.
    pub flush: bool,
    /// How much to grow the read buffer by when it is (nearly) full (a `u32` keeps the side,
    /// which every waiting client's task holds, at 32 bytes).
    pub chunk: u32,
}

/// Writes `buf` once without waiting; `None` when the socket cannot take it now. The waker does
/// nothing: the caller's next poll of this socket (in [`next_event`]) registers for readiness.
pub fn write_now(stream: &mut Stream, buf: &[u8]) -> Option<io::Result<usize>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(stream).poll_write(&mut cx, buf) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

fn poll_read(side: &mut Side<'_>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    let chunk = side.chunk as usize;
    if side.rbuf.capacity() == 0 {
        // An idle client holds no buffer: wait until there is something to read first.
        match side.stream.poll_raw_read_ready(cx) {
            Some(Poll::Pending) => return Poll::Pending,
            Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
            Some(Poll::Ready(Ok(()))) | None => {}
        }
        // A request is coming: buffers from this thread's spares, for it and for its answer.
        *side.rbuf = super::bufpool::take(chunk);
        if side.wbuf.capacity() == 0 {
            *side.wbuf = super::bufpool::take(0);
        }
    }
    if side.rbuf.capacity() - side.rbuf.len() < chunk / 4 {
        side.rbuf.reserve(chunk);
    }
    // tokio's read_buf future holds only borrows, so polling a fresh one each time is cancel-safe.
    pin!(side.stream.read_buf(side.rbuf)).poll(cx)
}

/// Waits for the first ready operation among the client side, the optional server side and the
/// `extra` futures (polled in order; each must be cancel-safe to poll repeatedly).
///
/// A plain function returning a `poll_fn` rather than an `async fn`: an async fn would store its
/// arguments and the closure's copies of them, doubling what its caller's future holds.
pub fn next_event<'a, 'f>(
    mut client: Side<'a>,
    mut server: Option<Side<'a>>,
    mut notify: Option<&'a mut crate::notify::NotifyRx>,
    signals: (&'a super::registry::Signals, u8),
    extra: &'a mut [Pin<&'f mut (dyn Future<Output = ()> + Send)>],
) -> impl Future<Output = Event> + use<'a, 'f> {
    std::future::poll_fn(move |cx| poll_event(cx, &mut client, server.as_mut(), notify.as_deref_mut(), signals, extra))
}

/// One poll of [`next_event`]'s operations. Callers that can build the sides from what they
/// own poll this from their own `poll_fn`, so their future keeps one pointer, not the sides.
pub fn poll_event(
    cx: &mut Context<'_>,
    client: &mut Side<'_>,
    mut server: Option<&mut Side<'_>>,
    notify: Option<&mut crate::notify::NotifyRx>,
    signals: (&super::registry::Signals, u8),
    extra: &mut [Pin<&mut (dyn Future<Output = ()> + Send)>],
) -> Poll<Event> {
    // Writes first: draining output is what unblocks the peers.
    if let Some(s) = server.as_mut() {
        if !s.wbuf.is_empty() {
            if let Poll::Ready(r) = Pin::new(&mut *s.stream).poll_write(cx, s.wbuf) {
                return Poll::Ready(Event::ServerWrote(r));
            }
        } else if s.flush {
            if let Poll::Ready(r) = Pin::new(&mut *s.stream).poll_flush(cx) {
                return Poll::Ready(Event::ServerFlushed(r));
            }
        }
    }
    if !client.wbuf.is_empty() {
        if let Poll::Ready(r) = Pin::new(&mut *client.stream).poll_write(cx, client.wbuf) {
            return Poll::Ready(Event::ClientWrote(r));
        }
    } else if client.flush {
        if let Poll::Ready(r) = Pin::new(&mut *client.stream).poll_flush(cx) {
            return Poll::Ready(Event::ClientFlushed(r));
        }
    }
    if let Some(s) = server {
        if s.read {
            if let Poll::Ready(r) = poll_read(s, cx) {
                return Poll::Ready(Event::ServerRead(r));
            }
        }
    }
    if client.read {
        if let Poll::Ready(r) = poll_read(client, cx) {
            return Poll::Ready(Event::ClientRead(r));
        }
    }
    if let Poll::Ready(f) = signals.0.poll(signals.1, cx) {
        return Poll::Ready(Event::Signal(f));
    }
    if let Some(rx) = notify {
        if let Poll::Ready(n) = rx.poll_recv(cx) {
            return Poll::Ready(Event::Notification(n));
        }
    }
    for (i, f) in extra.iter_mut().enumerate() {
        if f.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Other(i));
        }
    }
    Poll::Pending
}
