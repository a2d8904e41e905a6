//! The response body on its way to the client (`ResponseBody`), which carries the
//! counting guards.
//!
//! An SSE response is passed on frame by frame, never buffered; the body knows
//! the last event boundary, so a forced end (drain deadline) ends the stream
//! between events, never inside one. Dropping the body (client gone) drops the
//! guards and the upstream response with them, which closes the upstream
//! connection at once. The body also carries its exchange's record
//! (`Exchange`), closed when the body ends or is dropped.
//!
//! A forced stream ends within [`FORCE_GRACE`] whatever the client or the slot
//! does: at the next event boundary when the body is polled; at
//! `FORCE_GRACE - 1s` if the slot stalls inside an event; and, when the client
//! does not read (hyper then stops polling the body), by its connection being
//! dropped at `FORCE_GRACE` (see `conn`). A forced stream's guard is parked on
//! its connection, so it counts until its response has ended there (HTTP/1.1:
//! the connection settled and stays open) or the connection is gone.
//!
//! With migration on, a POST's stream whose call is still unanswered when it
//! is forced (a [`Cut`]) first gets the call's grace (`[drain]
//! migrate_call_grace`, at most 3 s) to pass its answer: a call that was a few
//! milliseconds from done is not failed for a cut that came between its
//! first event and its answer. After the grace it ends with the JSON-RPC error.
//!
//! A legacy HTTP+SSE session's stream (migration on) does not end where its
//! slot does: it moves (`proxy::splice`), at an event boundary, once the
//! calls it carries have had the same grace; the client's response goes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::proxy::conn::{Conn, ForceWatch, FORCE_GRACE};
use crate::proxy::exchange::{End, Exchange};
use crate::proxy::migrate::{Sessions, StreamHold};
use crate::proxy::splice::{Spliced, Splicer, Splicing};
use crate::proxy::sse::{EndpointRewrite, EventIdTag, LastEventId, Rewritten, SseScanner};
use crate::stats::{InflightGuard, ProxyStats, StreamGuard};
use crate::upstream::lines::{RawAnswer, RawHeaders};
use crate::upstream::{HttpError, UpstreamBody, UpstreamError};

/// A response body on its way to the client.
pub struct ResponseBody {
    kind: Kind,
    exchange: Option<Exchange>,
}

enum Kind {
    /// A body the proxy wrote itself (errors, 404 for a gone session).
    Local(Full<Bytes>),
    /// An upstream body that is not a stream; in flight until it ends.
    Plain {
        inner: UpstreamBody,
        guard: Option<InflightGuard>,
    },
    /// An SSE stream.
    Stream(Box<Stream>),
}

struct Stream {
    inner: UpstreamBody,
    guard: Option<StreamGuard>,
    scanner: SseScanner,
    forced: bool,
    /// After a forced end, how long an upstream may take to finish the event in
    /// progress before the stream is ended anyway.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    rewrite: Option<EndpointRewrite>,
    /// A moved session's stream: its event ids get the new slot's tag.
    ids: Option<EventIdTag>,
    /// Idle interval and its timer, when SSE keep-alive comments are on.
    keepalive: Option<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>,
    /// The client connection, which a forced end settles or closes and
    /// parks the guard on.
    conn: Conn,
    /// Forces the connection when the slot's force token fires, until
    /// dropped, and tells the body. `None` while the stream moves.
    watch: Option<ForceWatch>,
    /// Migration on, a POST's stream with a known request id: what to do if
    /// the proxy ends the stream (or the slot breaks it) before the answer
    /// passed. Boxed: most streams (GETs) have none.
    cut: Option<Box<Cut>>,
    /// An answer (`"result"` or `"error"`) passed: nothing to send at a cut.
    answered: bool,
    /// After a forced end, the end of the unanswered call's grace.
    call_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Migration on, a legacy HTTP+SSE session's stream: moved where it
    /// would end with its slot (`proxy::splice`). Boxed: most streams have none.
    splice: Option<Box<Splicer>>,
    /// The move under way.
    splicing: Option<Splicing>,
    /// Migration on: the captured session whose stream this is, kept in
    /// use while the stream is open.
    hold: Option<StreamHold>,
}

/// A call's stream that may be cut: the JSON-RPC error event for its id, the
/// counter of interrupted calls, and how long the call may still take to
/// answer once its stream is forced.
pub struct Cut {
    pub event: Bytes,
    pub stats: Arc<ProxyStats>,
    pub grace: std::time::Duration,
    /// The call's session, when it was captured: a stream the slot itself
    /// ends before the answer (SSE polling) may be resumed after the
    /// session moved (`Sessions::note_unanswered`).
    pub resume: Option<Resume>,
}

/// Where a call's unanswered end is kept, and the stream's last event id.
pub struct Resume {
    pub sessions: Arc<Sessions>,
    /// The session id the client holds.
    pub sid: http::HeaderValue,
    pub last_id: LastEventId,
    /// A GET that resumes a call's stream on its own slot: the id under
    /// which the call is kept now, replaced when this stream ends.
    pub replaces: Option<Bytes>,
}

impl Resume {
    /// The call's stream has ended: answered (by the slot, or by the
    /// proxy's error), or not, when `unanswered` is its error event.
    fn settle(self, unanswered: Option<Bytes>) {
        let sid = self.sid.as_bytes();
        if let Some(old) = &self.replaces {
            self.sessions.take_unanswered(sid, old);
        }
        if let (Some(event), Some(last)) = (unanswered, self.last_id.get()) {
            self.sessions.note_unanswered(sid, last.clone(), event);
        }
    }
}

/// What a body's poll gives.
type Polled = Poll<Option<Result<Frame<Bytes>, HttpError>>>;

const KEEPALIVE_COMMENT: &[u8] = b": keepalive\n\n";

/// How long a forced stream waits for the event in progress to complete: a
/// second less than its connection's grace, so a stream whose client reads
/// ends cleanly before the connection is dropped.
const STALL_GRACE: std::time::Duration =
    FORCE_GRACE.saturating_sub(std::time::Duration::from_secs(1));

impl ResponseBody {
    pub fn local(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Local(Full::new(bytes)),
            exchange: None,
        }
    }

    pub fn plain(inner: UpstreamBody, guard: InflightGuard) -> Self {
        Self {
            kind: Kind::Plain {
                inner,
                guard: Some(guard),
            },
            exchange: None,
        }
    }

    /// An SSE stream counted by `guard`, ended at an event boundary when the
    /// slot's force token fires, with the legacy endpoint rewritten if `rewrite`
    /// and event ids tagged if `ids`. `conn` is the client connection it is
    /// sent on.
    pub fn stream(
        inner: UpstreamBody,
        guard: StreamGuard,
        rewrite: Option<EndpointRewrite>,
        ids: Option<EventIdTag>,
        keepalive: Option<std::time::Duration>,
        conn: &Conn,
        cut: Option<Cut>,
    ) -> Self {
        let token = guard.stats().force_token();
        let watch = conn.watch_force(token);
        Self {
            kind: Kind::Stream(Box::new(Stream {
                inner,
                guard: Some(guard),
                scanner: SseScanner::default(),
                forced: false,
                grace: None,
                done: false,
                rewrite,
                ids,
                keepalive: keepalive.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
                conn: conn.clone(),
                watch: Some(watch),
                cut: cut.map(Box::new),
                answered: false,
                call_deadline: None,
                splice: None,
                splicing: None,
                hold: None,
            })),
            exchange: None,
        }
    }

    /// Makes a legacy session's stream move where it would end with its
    /// slot ([`Splicer`]): its slot's force no longer closes the connection
    /// unless the stream fails to move within [`FORCE_GRACE`].
    pub fn splice_with(mut self, splicer: Splicer) -> Self {
        if let Kind::Stream(s) = &mut self.kind {
            if let Some(g) = &s.guard {
                s.watch = Some(s.conn.watch_force_moving(g.stats().force_token()));
            }
            s.splice = Some(Box::new(splicer));
        }
        self
    }

    /// Keeps `hold`'s session in use while the stream is open.
    pub fn holding(mut self, hold: Option<StreamHold>) -> Self {
        if let Kind::Stream(s) = &mut self.kind {
            s.hold = hold;
        }
        self
    }

    /// Hands the body its exchange's record, closed when the body ends.
    pub fn attach(&mut self, exchange: Exchange) {
        self.exchange = Some(exchange);
    }

    /// Whether a drain deadline ended this stream.
    fn forced(&self) -> bool {
        matches!(&self.kind, Kind::Stream(s) if s.forced)
    }
}

impl ResponseBody {
    /// The slot's answer headers as they came, still to be written
    /// ([`crate::upstream::client::Answer::Raw`]).
    pub fn raw_headers(&self) -> Option<&RawHeaders> {
        match &self.kind {
            Kind::Plain { inner, .. } => inner.raw_headers(),
            _ => None,
        }
    }
}

impl RawAnswer for ResponseBody {
    fn take_raw_headers(&mut self) -> Option<Box<RawHeaders>> {
        match &mut self.kind {
            Kind::Plain { inner, .. } => inner.take_raw_headers(),
            Kind::Stream(s) => s.inner.take_raw_headers(),
            Kind::Local(_) => None,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            // hyper stops polling a body that says it has ended (a known length
            // fully sent); anything else dropped early lost its client.
            let end = if self.is_end_stream() {
                End::Complete
            } else {
                End::ClientGone
            };
            exchange.end(end);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            Kind::Plain { inner, guard } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Err(error))) = &polled {
                    if let Some(stats) = guard.as_ref().map(InflightGuard::stats) {
                        // The slot failed the answer as surely as with a 5xx
                        // (whose status it could no longer send): the watch
                        // counts it, so a new slot that stalls or breaks off
                        // inside its answers rolls back.
                        stats.count_upstream_failure();
                        if let HttpError::ReadTimeout(timeout) = error {
                            stats.count_upstream_error(UpstreamError::ReadTimeout);
                            tracing::warn!(slot = %stats.name(), timeout = %humantime::format_duration(*timeout), "the slot's answer body paused longer than response_body_timeout: the client's answer was cut");
                        } else {
                            stats.count_upstream_error(UpstreamError::BodyReset);
                            tracing::warn!(slot = %stats.name(), %error, "the slot broke off inside an answer's body: the client's answer was cut");
                        }
                    }
                }
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    guard.take();
                }
                polled
            }
            Kind::Stream(s) => s.poll_frame(cx),
        };
        if let Some(exchange) = this.exchange.as_mut() {
            let end = match &polled {
                Poll::Pending => None,
                Poll::Ready(Some(Ok(frame))) => {
                    exchange.sent(frame.data_ref().map_or(0, Bytes::len));
                    None
                }
                Poll::Ready(Some(Err(_))) => Some(End::UpstreamError),
                Poll::Ready(None) if this.forced() => Some(End::Forced),
                Poll::Ready(None) => Some(End::Complete),
            };
            if let Some(end) = end {
                if let Some(exchange) = this.exchange.take() {
                    exchange.end(end);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(b) => b.is_end_stream(),
            Kind::Plain { inner, .. } => inner.is_end_stream(),
            Kind::Stream(s) => s.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(b) => b.size_hint(),
            Kind::Plain { inner, .. } => inner.size_hint(),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

impl Stream {
    /// The error event for a call cut before its answer, once.
    fn cut_reply(&mut self) -> Option<Bytes> {
        let cut = self.cut.take()?;
        if let Some(resume) = cut.resume {
            resume.settle(None);
        }
        if self.answered {
            return None;
        }
        cut.stats.count_interrupted();
        Some(cut.event)
    }

    /// Whether a forced stream still waits for its call's answer: the call
    /// is unanswered and its grace (timed from the first poll after the
    /// force) has not passed. Registers the grace's wake-up.
    fn in_call_grace(&mut self, cx: &mut Context<'_>) -> bool {
        let grace = match (&self.cut, &self.splice) {
            (Some(cut), _) if !self.answered && !cut.grace.is_zero() => cut.grace,
            // A legacy session's stream carries the answers of all its
            // calls: it waits while one is unanswered.
            (None, Some(s)) => match s.call_grace() {
                Some(grace) => grace,
                None => return false,
            },
            _ => return false,
        };
        let deadline = self
            .call_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
        deadline.as_mut().poll(cx).is_pending()
    }

    /// What goes to the client: a legacy session's answers passing
    /// ([`Splicer::watch`]) and the call's own answer ([`Self::watch_answer`]).
    fn watch_sent(&mut self, data: &[u8]) {
        if let Some(s) = self.splice.as_mut() {
            s.watch(data);
        }
        self.watch_answer(data);
    }

    /// Notes whether `data` carries the call's answer (the stream of a POST
    /// holds one request's messages: progress notifications, server requests,
    /// then the answer), and the last event id the client saw before it.
    fn watch_answer(&mut self, data: &[u8]) {
        let Some(cut) = self.cut.as_mut() else { return };
        if self.answered {
            return;
        }
        self.answered = memchr::memmem::find(data, b"\"result\"").is_some()
            || memchr::memmem::find(data, b"\"error\"").is_some();
        if let Some(resume) = cut.resume.as_mut() {
            resume.last_id.feed(data);
        }
    }

    /// The slot ended the call's stream. Before the answer passed (it may
    /// want the client to resume it: SSE polling), the call's error is kept
    /// for a resumption that reaches the proxy only after the session moved.
    fn note_unanswered(&mut self) {
        let Some(cut) = self.cut.take() else { return };
        if let Some(resume) = cut.resume {
            resume.settle((!self.answered).then_some(cut.event));
        }
    }

    /// Ends the stream after a cut: the error event first if the call is unanswered.
    fn end_cut(&mut self) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        self.finish();
        match self.cut_reply() {
            Some(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
            None => Poll::Ready(None),
        }
    }

    /// Starts moving a legacy session's stream, where it would end: the old
    /// slot's count drops now; the client's response goes on. `None`: it
    /// does not move (no session to move), and ends.
    fn begin_splice(&mut self, cx: &mut Context<'_>, torn: bool) -> Option<Polled> {
        let splicing = self.splice.as_mut()?.begin(torn)?;
        self.guard = None;
        self.watch = None;
        self.splicing = Some(splicing);
        // Polled at once: it takes the session's move lock before any POST
        // of the session can be routed to the old slot.
        Some(self.poll_frame(cx))
    }

    /// The stream comes from its new slot from now on: `first` (if any) is
    /// for the client first.
    fn spliced(&mut self, moved: Spliced) -> Option<Bytes> {
        let Spliced { slot, body, first } = moved;
        self.inner = body;
        self.guard = Some(slot.stats.stream_guard());
        self.watch = Some(self.conn.watch_force_moving(slot.stats.force_token()));
        self.forced = false;
        self.grace = None;
        self.call_deadline = None;
        self.scanner = SseScanner::default();
        if let Some(s) = self.splice.as_mut() {
            s.moved_to(&slot);
            s.watch(&first);
        }
        self.scanner.feed(&first);
        (!first.is_empty()).then_some(first)
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(guard) = self.guard.take() {
            if self.forced {
                // Its last bytes may still wait for a client that does not
                // read: it counts until its response has ended on the
                // connection (h1) or the connection is gone (dropped, at the
                // latest, at the end of the grace).
                self.conn.park(guard);
                self.conn.force_stream();
            }
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(splicing) = self.splicing.as_mut() {
            let moved = match splicing.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(moved) => moved,
            };
            self.splicing = None;
            match moved {
                Ok(moved) => {
                    if let Some(first) = self.spliced(moved) {
                        return Poll::Ready(Some(Ok(Frame::data(first))));
                    }
                }
                Err(_) => {
                    // Counted and logged: it ends as without migration.
                    self.finish();
                    return Poll::Ready(None);
                }
            }
        }
        if !self.forced && self.watch.as_ref().is_some_and(|w| w.poll_forced(cx)) {
            self.forced = true;
            // Timed from the force, whatever happens in the call's grace, so
            // the stream ends before its connection is dropped.
            self.grace = Some(Box::pin(tokio::time::sleep(STALL_GRACE)));
        }
        // A forced stream whose call is in its grace is relayed as usual.
        let cutting = self.forced && !self.in_call_grace(cx);
        if self.forced {
            if cutting && self.scanner.at_boundary() && self.rewrite.is_none() {
                // Cut with its slot (not by a shutdown): a legacy session moves.
                if self.splice.as_ref().is_some_and(|s| s.slot_gone()) {
                    if let Some(moving) = self.begin_splice(cx, false) {
                        return moving;
                    }
                }
                return self.end_cut();
            }
            // The upstream stalls inside an event: end anyway once the grace passes
            // (the client discards an incomplete event at end of stream).
            let grace = self
                .grace
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(STALL_GRACE)));
            if grace.as_mut().poll(cx).is_ready() {
                self.finish();
                return Poll::Ready(None);
            }
        }
        loop {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => {
                    // Idle: a comment between events keeps middleboxes from timing out.
                    if let Some((every, timer)) = self.keepalive.as_mut() {
                        if timer.as_mut().poll(cx).is_ready() {
                            let next = tokio::time::Instant::now() + *every;
                            timer.as_mut().reset(next);
                            if self.scanner.at_boundary() && self.rewrite.is_none() && !self.forced
                            {
                                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                                    KEEPALIVE_COMMENT,
                                )))));
                            }
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    let gone = self.splice.as_ref().is_some_and(|s| s.slot_gone());
                    if gone && self.rewrite.is_none() {
                        let torn = !self.scanner.at_boundary();
                        if let Some(moving) = self.begin_splice(cx, torn) {
                            return moving;
                        }
                    }
                    self.finish();
                    self.note_unanswered();
                    if let Some(held) = self.rewrite.take().and_then(|mut r| r.finish()) {
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    // Counted, not judged: a stream a slot ends by stopping
                    // (a deploy's old slot) is not a failed call.
                    if let Some(g) = &self.guard {
                        g.stats().count_upstream_error(UpstreamError::BodyReset);
                    }
                    if self.cut.is_some() && !self.answered && self.scanner.at_boundary() {
                        // The slot broke off mid-call (killed): the client gets
                        // an error for its call instead of a stream cut short.
                        tracing::debug!(error = %e, "the slot broke a call's stream: answered with a JSON-RPC error");
                        return self.end_cut();
                    }
                    if self.rewrite.is_none() {
                        // The slot broke the stream (killed): a legacy session moves.
                        let torn = !self.scanner.at_boundary();
                        if let Some(moving) = self.begin_splice(cx, torn) {
                            tracing::debug!(error = %e, "the slot broke a legacy session's stream: it moves");
                            return moving;
                        }
                    }
                    self.finish();
                    self.note_unanswered();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            if let Some((every, timer)) = self.keepalive.as_mut() {
                let next = tokio::time::Instant::now() + *every;
                timer.as_mut().reset(next);
            }
            let mut data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            if let Some(ids) = self.ids.as_mut() {
                data = ids.push(data);
            }
            if let Some(rewrite) = self.rewrite.as_mut() {
                match rewrite.push(data) {
                    Rewritten::Pending => continue,
                    Rewritten::Done(out) => {
                        if let (Some(s), Some(sid)) = (
                            self.splice.as_mut(),
                            self.rewrite.as_ref().and_then(EndpointRewrite::session),
                        ) {
                            s.set_session(sid);
                        }
                        self.rewrite = None;
                        data = out;
                    }
                }
            }
            if cutting {
                // Send up to the end of the event in progress, then stop.
                if let Some(end) = self.scanner.feed_to_boundary(&data) {
                    // Only what the client gets is answered: an answer in
                    // the rest, dropped here, leaves its call waiting (for
                    // its interrupted-call error when the stream moves).
                    self.watch_sent(&data[..end]);
                    if self.splice.as_ref().is_some_and(|s| s.slot_gone()) {
                        // A legacy session's stream moves at the next poll,
                        // at this boundary; the old stream's rest is dropped.
                        return Poll::Ready(Some(Ok(Frame::data(data.slice(..end)))));
                    }
                    self.finish();
                    let data = data.slice(..end);
                    return match self.cut_reply() {
                        // The event in progress and the error, in one frame.
                        Some(event) => {
                            let mut both = Vec::with_capacity(data.len() + event.len());
                            both.extend_from_slice(&data);
                            both.extend_from_slice(&event);
                            Poll::Ready(Some(Ok(Frame::data(Bytes::from(both)))))
                        }
                        None => Poll::Ready(Some(Ok(Frame::data(data)))),
                    };
                }
                self.watch_sent(&data);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            self.watch_sent(&data);
            if let Some(ms) = self.scanner.feed(&data) {
                if let Some(g) = &self.guard {
                    g.stats().note_retry(ms);
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }
}
