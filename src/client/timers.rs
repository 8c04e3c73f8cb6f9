//! The timers a session polls beside its sockets: `client_idle_timeout` between requests, and
//! `query_timeout` and `idle_transaction_timeout` while a server is attached.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;

/// A timer that may be off: pending forever when off, so it can sit in a poll list without
/// registering anything with the runtime's timer.
pub(super) struct OptionalSleep(Option<Pin<Box<tokio::time::Sleep>>>);

impl OptionalSleep {
    /// A timer firing after `d`, or never.
    pub(super) fn new(d: Option<Duration>) -> Self {
        OptionalSleep(d.map(|d| Box::pin(tokio::time::sleep(d))))
    }
    /// Re-arms (or turns off) the timer.
    pub(super) fn reset(&mut self, at: Option<Instant>) {
        match (at, self.0.as_mut()) {
            (Some(at), Some(s)) => s.as_mut().reset(at),
            (Some(at), None) => self.0 = Some(Box::pin(tokio::time::sleep_until(at))),
            (None, _) => self.0 = None,
        }
    }
    /// As a pinned future for a poll list.
    pub(super) fn as_mut(&mut self) -> Pin<&mut Self> {
        Pin::new(self)
    }
}

impl Future for OptionalSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.0.as_mut() {
            Some(s) => s.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

/// Index in the relay's poll list of the `query_timeout` timer (`Event::Other`).
pub(super) const QUERY_TIMER: usize = 0;

/// The attached phase's two timers, in poll-list order: `query_timeout` ([`QUERY_TIMER`]), then
/// `idle_transaction_timeout`.
pub(super) struct RelayTimers {
    query: QueryTimer,
    query_sleep: OptionalSleep,
    idle_limit: Option<Duration>,
    /// When the client began to hold its transaction open while sending nothing.
    idle_since: Option<Instant>,
    idle_sleep: OptionalSleep,
}

impl RelayTimers {
    /// Both timers off until [`RelayTimers::follow`] arms them.
    pub(super) fn new(query_timeout: Option<Duration>, idle_limit: Option<Duration>) -> Self {
        RelayTimers {
            query: QueryTimer::new(query_timeout),
            query_sleep: OptionalSleep::new(None),
            idle_limit,
            idle_since: None,
            idle_sleep: OptionalSleep::new(None),
        }
    }

    /// Follows the start of the request in flight (`query_timeout`) and whether the client holds
    /// a transaction open while sending nothing and owed nothing (`idle_transaction_timeout`).
    #[inline]
    pub(super) fn follow(&mut self, req_started: Option<std::time::Instant>, idle_in_tx: bool) {
        if self.query.rearm(req_started) {
            self.query_sleep.reset(self.query.deadline);
        }
        match (self.idle_limit, idle_in_tx, self.idle_since) {
            (Some(limit), true, None) => {
                let now = Instant::now();
                self.idle_since = Some(now);
                self.idle_sleep.reset(Some(now + limit));
            }
            (_, false, Some(_)) => {
                self.idle_since = None;
                self.idle_sleep.reset(None);
            }
            _ => {}
        }
    }

    /// The timers as a poll list.
    #[inline]
    pub(super) fn sleeps(&mut self) -> [Pin<&mut (dyn Future<Output = ()> + Send)>; 2] {
        [self.query_sleep.as_mut(), self.idle_sleep.as_mut()]
    }

    /// `query_timeout` fired: true the first time (send a cancel; the deadline moves on by the
    /// grace period), false when the grace period has passed too (give the connection up).
    pub(super) fn query_expired(&mut self) -> bool {
        if self.query.cancelled {
            return false;
        }
        self.query.cancelled = true;
        self.query.deadline = self.query.deadline.map(|d| d + self.query.grace);
        self.query_sleep.reset(self.query.deadline);
        true
    }
}

/// `query_timeout` for the request in flight: at the deadline a cancel is sent; if the server
/// still has not answered a grace period later, the connection is given up.
struct QueryTimer {
    limit: Option<Duration>,
    grace: Duration,
    armed_for: Option<std::time::Instant>,
    deadline: Option<Instant>,
    cancelled: bool,
}

impl QueryTimer {
    fn new(limit: Option<Duration>) -> Self {
        let grace = limit.unwrap_or_default().max(Duration::from_secs(1));
        QueryTimer { limit, grace, armed_for: None, deadline: None, cancelled: false }
    }

    /// Follows the start of the current request; true if the deadline moved.
    #[inline]
    fn rearm(&mut self, req_started: Option<std::time::Instant>) -> bool {
        if self.limit.is_none() || req_started == self.armed_for {
            return false;
        }
        self.armed_for = req_started;
        self.cancelled = false;
        self.deadline = match (self.limit, req_started) {
            (Some(l), Some(t)) => Some(Instant::from_std(t + l)),
            _ => None,
        };
        true
    }
}
