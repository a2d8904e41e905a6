//! Response bodies of the upstream server: one [`Body`] type for buffered
//! replies, channel-fed SSE streams and the timer-driven `/ticker` stream,
//! plus the SSE event framing shared by both transports.
//!
//! Every streaming variant watches a cancellation future and ends the
//! stream cleanly when it fires (server shutdown, session DELETE).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::ticker::Ticker;

/// Runs a closure when dropped: used to unregister a session when hyper
/// drops the stream body (client went away, connection closed).
pub(crate) struct DropGuard(Option<Box<dyn FnOnce() + Send>>);

impl DropGuard {
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A future that resolves when the stream must end.
pub(crate) struct Stop(Pin<Box<WaitForCancellationFutureOwned>>);

impl Stop {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Self(Box::pin(token.cancelled_owned()))
    }

    /// `true` once the token is cancelled.
    pub(crate) fn poll_stopped(&mut self, cx: &mut Context<'_>) -> bool {
        self.0.as_mut().poll(cx).is_ready()
    }
}

/// An SSE stream fed by a channel. With no channel the stream carries no
/// events and stays open until stopped (standalone GET stream).
pub(crate) struct SseStream {
    rx: Option<mpsc::UnboundedReceiver<Bytes>>,
    stop: Stop,
    _guard: Option<DropGuard>,
}

impl SseStream {
    pub(crate) fn new(
        rx: Option<mpsc::UnboundedReceiver<Bytes>>,
        stop: CancellationToken,
        guard: Option<DropGuard>,
    ) -> Self {
        Self {
            rx,
            stop: Stop::new(stop),
            _guard: guard,
        }
    }
}

/// The response body type of every upstream route.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Sse(SseStream),
    Ticker(Box<Ticker>),
}

impl Body {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(b))
        }
    }

    pub(crate) fn empty() -> Self {
        Body::Full(None)
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Full(b) => f
                .debug_tuple("Full")
                .field(&b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Body::Sse(_) => f.write_str("Sse"),
            Body::Ticker(_) => f.write_str("Ticker"),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Sse(s) => {
                if s.stop.poll_stopped(cx) {
                    return Poll::Ready(None);
                }
                match &mut s.rx {
                    Some(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
                    None => Poll::Pending,
                }
            }
            Body::Ticker(t) => t.poll_event(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}

/// Frames one SSE event. `data` must not contain newlines (compact JSON and
/// the endpoint URL never do).
pub(crate) fn sse_event(event: &str, id: Option<u64>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + event.len() + 40);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(itoa_u64(id, &mut [0u8; 20]));
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Formats `n` in decimal into `buf` without allocating.
pub(crate) fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_event_framing() {
        assert_eq!(
            &sse_event("message", None, b"{}")[..],
            b"event: message\ndata: {}\n\n"
        );
        assert_eq!(
            &sse_event("message", Some(7), b"{}")[..],
            b"id: 7\nevent: message\ndata: {}\n\n"
        );
    }

    #[test]
    fn itoa() {
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(1234567890, &mut [0; 20]), b"1234567890");
        assert_eq!(
            itoa_u64(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }
}
