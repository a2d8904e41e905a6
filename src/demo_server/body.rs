//! Response bodies of the upstream server: one [`Body`] type for buffered
//! replies, channel-fed SSE streams and the timer-driven `/ticker` stream,
//! streams end when their stop future fires.
//!
//! Every streaming variant watches a cancellation future and ends the
//! stream cleanly when it fires (server shutdown, session DELETE).

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ticker::Ticker;
use super::wire::{DropGuard, Stop};

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
