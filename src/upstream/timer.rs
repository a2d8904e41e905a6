//! The response-head timer an upstream connection keeps (a leaf: the
//! connection in `h1` holds it, the pool in `client` runs it, and the
//! answer's body times its pauses on it too).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::Instant;

/// A connection's timer for the response head, lazy: a request on a kept
/// connection moves no timer. The timer stays set for an earlier request's
/// deadline; when it fires, the request in progress (if its own deadline is
/// later) sets it again for that. A keep-alive connection's requests then
/// reset the runtime's timer about once per wait, not once each (every set and
/// every cancel takes the timer wheel's lock; bench/PROFILE.md §19).
pub struct HeadTimer(Pin<Box<tokio::time::Sleep>>);

impl HeadTimer {
    pub fn new(deadline: Instant) -> HeadTimer {
        HeadTimer(Box::pin(tokio::time::sleep_until(deadline)))
    }

    /// Ready once `deadline` has passed.
    pub fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if deadline < self.0.deadline() {
            self.0.as_mut().reset(deadline);
        }
        loop {
            ready!(self.0.as_mut().poll(cx));
            if self.0.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Fired for an earlier request's deadline.
            self.0.as_mut().reset(deadline);
        }
    }
}
