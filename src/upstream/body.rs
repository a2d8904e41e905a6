//! The request body on its way to a slot: the client's, streamed under a read
//! timeout, or one the proxy made itself (probes).
//!
//! A client body that breaks (a bad chunk, cut short, reset) or pauses longer
//! than `client_body_timeout` is the client's fault, whatever error hyper-util's
//! client reports for the request it was part of: the body records its fault in
//! a [`BodyWatch`] that the forwarder reads after the request failed, so such a
//! request is answered 400/408 and never counted against the slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::upstream::lines::{BadLine, LineKind, RawHeaders};
use bytes::Bytes;
use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

/// A client's request body as the listener got it: hyper's, or the bytes the
/// proxy's own HTTP/1.1 connection read with the head (`proxy::h1`).
#[derive(Debug)]
pub enum RequestBody {
    Hyper(Incoming),
    Read {
        /// The whole body; `None` once taken.
        body: Option<Bytes>,
        /// The head's header lines as they came; the request's map is then
        /// empty. The forwarder reads what it needs from the lines
        /// (`proxy::scan::Scan::of_lines`) and the upstream client writes
        /// them ([`crate::upstream::h1::encode_head`]), so nothing may be put
        /// in the map while they are here. [`RequestBody::whole_map`] puts
        /// them all in the map instead.
        lines: Option<Box<RawHeaders>>,
    },
}

impl RequestBody {
    /// The header lines as they came, taken (see [`RequestBody::Read`]).
    pub fn take_lines(&mut self) -> Option<Box<RawHeaders>> {
        match self {
            RequestBody::Read { lines, .. } => lines.take(),
            RequestBody::Hyper(_) => None,
        }
    }

    /// The header lines of `req` as they came, where they were kept (its
    /// map is empty then); `None` when its map has them all.
    pub fn lines(req: &http::Request<RequestBody>) -> Option<&RawHeaders> {
        match req.body() {
            RequestBody::Read {
                lines: Some(lines), ..
            } => Some(lines),
            _ => None,
        }
    }

    /// The first value of `req`'s header lines named `name` (of `kind`):
    /// from its lines where they were kept, else its map.
    pub fn first_value<'a>(
        req: &'a http::Request<RequestBody>,
        kind: LineKind,
        name: &HeaderName,
    ) -> Option<&'a [u8]> {
        match RequestBody::lines(req) {
            Some(lines) => lines.values(kind).next(),
            None => req.headers().get(name).map(http::HeaderValue::as_bytes),
        }
    }

    /// Whether any value of the header `name` passes `pred` (among the lines
    /// as they came, by its lowercase name, which `HeaderName` is).
    pub fn any_value(
        req: &http::Request<RequestBody>,
        name: &HeaderName,
        pred: impl Fn(&[u8]) -> bool,
    ) -> bool {
        match RequestBody::lines(req) {
            Some(lines) => lines.values_named(name.as_str().as_bytes()).any(pred),
            None => req
                .headers()
                .get_all(name)
                .iter()
                .any(|v| pred(v.as_bytes())),
        }
    }

    /// Makes `req`'s map whole: every header line in it, where they were
    /// kept as they came. For a path that reads or changes the map
    /// (migration).
    pub fn whole_map(req: &mut http::Request<RequestBody>) -> Result<(), BadLine> {
        if let Some(lines) = req.body_mut().take_lines() {
            *req.headers_mut() = lines.into_map()?;
        }
        Ok(())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Read { body, .. } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Read { body, .. } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Read { body, .. } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// What became of a client body, as its [`BodyWatch`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyState {
    /// Still being read from the client.
    Sending,
    /// Read to its end (or the request had none).
    Sent,
    /// The client paused longer than the body timeout.
    TimedOut,
    /// The client's body broke (bad framing, cut short, reset).
    Broken,
    /// The client's body went past `[proxy] max_request_body`.
    TooLarge,
}

impl BodyState {
    fn from_u8(v: u8) -> BodyState {
        match v {
            0 => BodyState::Sending,
            1 => BodyState::Sent,
            2 => BodyState::TimedOut,
            3 => BodyState::Broken,
            _ => BodyState::TooLarge,
        }
    }

    /// True when the client, not the slot, made the request fail.
    pub fn is_client_fault(self) -> bool {
        matches!(
            self,
            BodyState::TimedOut | BodyState::Broken | BodyState::TooLarge
        )
    }
}

/// What the body and the forwarder share (one allocation per request with a body).
#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    /// The last read is waiting on the client (its body timer runs).
    waiting: AtomicBool,
    /// Frames read so far (wrapping).
    frames: AtomicU32,
}

/// The forwarder's view of a client body it handed to the upstream client.
/// Requests without a body share no state (nothing can go wrong).
#[derive(Debug, Clone, Default)]
pub struct BodyWatch(Option<Arc<Shared>>);

impl BodyWatch {
    pub fn state(&self) -> BodyState {
        match &self.0 {
            None => BodyState::Sent,
            Some(s) => BodyState::from_u8(s.state.load(Ordering::Acquire)),
        }
    }

    /// True while the body waits for the client's next bytes (rather than for
    /// the slot to take the last ones).
    pub fn waiting_on_client(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.waiting.load(Ordering::Acquire))
    }

    /// Frames read from the client so far (wrapping): progress.
    pub fn frames(&self) -> u32 {
        self.0
            .as_ref()
            .map_or(0, |s| s.frames.load(Ordering::Relaxed))
    }
}

/// Why a client body failed; the error hyper-util's client gets from the body.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client sent no request body data for {0:?} (client_body_timeout)")]
    Timeout(Duration),
    #[error("the client's request body broke: {0}")]
    Broken(#[source] hyper::Error),
    #[error("the client's request body went past {0} bytes (max_request_body)")]
    TooLarge(u64),
}

/// The client's body, streamed, with a timeout between reads and a cap on
/// its length.
#[derive(Debug)]
pub struct ClientBody {
    inner: RequestBody,
    timeout: Duration,
    /// `[proxy] max_request_body`.
    max: u64,
    /// Bytes read so far.
    read: u64,
    /// Armed only when a read would wait: a body that arrives with its head
    /// (most MCP requests) never sets a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame arrived since the timer was last set.
    progressed: bool,
    shared: Option<Arc<Shared>>,
}

impl ClientBody {
    fn set(&self, s: BodyState) {
        if let Some(shared) = &self.shared {
            shared.state.store(s as u8, Ordering::Release);
        }
    }

    fn set_waiting(&self, waiting: bool) {
        if let Some(shared) = &self.shared {
            shared.waiting.store(waiting, Ordering::Release);
            if !waiting {
                shared.frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A request body on its way upstream.
#[derive(Debug)]
pub enum ForwardBody {
    /// The client's body, streamed.
    Client(ClientBody),
    /// A body we made (probes).
    Full(Full<Bytes>),
}

impl ForwardBody {
    /// The client's body, read with at most `timeout` between two reads and
    /// cut past `max` bytes, and the watch that tells the forwarder whether
    /// it failed.
    pub fn client(inner: RequestBody, timeout: Duration, max: u64) -> (ForwardBody, BodyWatch) {
        // A body already at its end needs no shared state: one allocation saved
        // on every GET.
        let shared = (!inner.is_end_stream()).then(|| Arc::new(Shared::default()));
        let watch = BodyWatch(shared.clone());
        let body = ClientBody {
            inner,
            timeout,
            max,
            read: 0,
            timer: None,
            progressed: false,
            shared,
        };
        (ForwardBody::Client(body), watch)
    }
}

impl From<Bytes> for ForwardBody {
    fn from(b: Bytes) -> Self {
        ForwardBody::Full(Full::new(b))
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ForwardBody::Client(b) => b.poll_frame(cx),
            ForwardBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ForwardBody::Client(b) => b.inner.is_end_stream(),
            ForwardBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ForwardBody::Client(b) => b.inner.size_hint(),
            ForwardBody::Full(b) => b.size_hint(),
        }
    }
}

impl ClientBody {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Progress: the next wait gets a whole timeout again.
                self.progressed = true;
                self.set_waiting(false);
                // Past the cap: cut here, before the slot gets these bytes.
                self.read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if self.read > self.max {
                    self.set(BodyState::TooLarge);
                    return Poll::Ready(Some(Err(ClientBodyError::TooLarge(self.max))));
                }
                // A body with a length ends with its last byte: hyper then
                // asks `is_end_stream` and never polls for the end.
                if self.inner.is_end_stream() {
                    self.set(BodyState::Sent);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.set_waiting(false);
                self.set(BodyState::Sent);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.set_waiting(false);
                self.set(BodyState::Broken);
                Poll::Ready(Some(Err(ClientBodyError::Broken(e))))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = match self.timer.as_mut() {
                    Some(t) => {
                        if std::mem::take(&mut self.progressed) {
                            t.as_mut().reset(tokio::time::Instant::now() + timeout);
                        }
                        t
                    }
                    None => {
                        self.progressed = false;
                        self.timer.insert(Box::pin(tokio::time::sleep(timeout)))
                    }
                };
                if timer.as_mut().poll(cx).is_ready() {
                    self.set_waiting(false);
                    self.set(BodyState::TimedOut);
                    return Poll::Ready(Some(Err(ClientBodyError::Timeout(timeout))));
                }
                self.set_waiting(true);
                Poll::Pending
            }
        }
    }
}
