//! Per-connection deadlines for the admin port: the header timeout and the idle timeout.
//!
//! [`Watched`] wraps the socket and closes it (a `TimedOut` error to hyper) when its deadline
//! passes while hyper waits on it. The deadline depends on where the connection is:
//! - opened, or bytes of a new request arrived: the headers must be complete within
//!   `header_timeout` (hyper calls the service once they are);
//! - a request is being handled ([`InFlight`] alive): no deadline, a slow handler is not cut;
//! - the last response was handed to hyper: `idle_timeout` without a byte either way.

use atomic_waker::AtomicWaker;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the service tells the socket wrapper: requests under way, responses handed over.
#[derive(Debug, Default)]
pub struct Clock {
    in_flight: AtomicUsize,
    answered: AtomicU64,
    /// The connection task, woken when a handler ends: hyper then reads again, and the idle
    /// deadline starts (hyper itself would only look at the socket once bytes arrive).
    reader: AtomicWaker,
}

/// Marks a request as being handled until dropped (also when hyper drops the handler).
pub struct InFlight(Arc<Clock>);

impl InFlight {
    /// A request's headers are complete and its handler starts.
    pub fn start(clock: &Arc<Clock>) -> InFlight {
        clock.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(clock.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.reader.wake();
    }
}

/// A socket with the deadlines above.
pub struct Watched<IO> {
    io: IO,
    clock: Arc<Clock>,
    header: Duration,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Answers seen so far: a change means a response was handed over.
    answered: u64,
    /// Bytes of a request whose headers are not complete have arrived (or the connection is new).
    in_head: bool,
}

impl<IO> Watched<IO> {
    /// Starts the header deadline now: waiting before the first byte counts.
    pub fn new(io: IO, clock: Arc<Clock>, header: Duration, idle: Duration) -> Self {
        let deadline = Box::pin(tokio::time::sleep(header));
        Watched { io, clock, header, idle, deadline, answered: 0, in_head: true }
    }

    fn arm(&mut self, d: Duration) {
        self.deadline.as_mut().reset(Instant::now() + d);
    }

    /// Notes a response handed over since the last look: idle until the next request.
    fn catch_up(&mut self) {
        let answered = self.clock.answered.load(Ordering::SeqCst);
        if answered != self.answered {
            self.answered = answered;
            self.in_head = false;
            self.arm(self.idle);
        }
    }

    /// After bytes moved: a new request's first bytes start its header deadline; response bytes
    /// taken by the client restart the idle one.
    fn progressed(&mut self, read: bool) {
        if self.clock.in_flight.load(Ordering::SeqCst) > 0 || self.in_head {
            return;
        }
        if read {
            self.in_head = true;
            self.arm(self.header);
        } else {
            self.arm(self.idle);
        }
    }

    /// Nothing moved: past the deadline (with no handler running) the connection ends.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.clock.in_flight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        // A handler that just ended counted its answer before leaving `in_flight`: re-arm first.
        self.catch_up();
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out<T>(in_head: bool) -> Poll<io::Result<T>> {
    let what = if in_head { "header_timeout: request headers too slow" } else { "idle_timeout" };
    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.catch_up();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.progressed(true);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.clock.reader.register(cx.waker());
                if this.expired(cx) {
                    return timed_out(this.in_head);
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.catch_up();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.progressed(false);
                Poll::Ready(Ok(n))
            }
            Poll::Pending if this.expired(cx) => timed_out(this.in_head),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
