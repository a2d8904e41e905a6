//! Live migration of a legacy HTTP+SSE session (2024-11-05, `[drain] migrate
//! = "replay"`): its GET stream outlives its slot.
//!
//! A legacy session lives in its GET stream: the server made it when the
//! stream opened, named it in the stream's `endpoint` event, and ends it when
//! the stream closes; a reconnecting client opens a new GET with no way to
//! name its old session. So the proxy never lets the client's stream end
//! when its slot goes: where it would end (a drain deadline, `drain
//! --migrate`, the slot's process gone), the stream *splices*. The proxy
//! opens a GET on a serving slot, reads its `endpoint` event (the new
//! session, which the client never sees), posts the captured `initialize`,
//! `notifications/initialized` and the session-shaping requests to it with
//! ids of its own, swallows their answers on the new stream, and from then
//! on relays the new stream into the client's open response. The client's
//! POST URL keeps its old session id; `proxy::forward` sends its POSTs to
//! the new slot with the new id (the session's [`Moved`] record).
//!
//! Calls whose answers were still to come on the old stream are answered on
//! the new one with the interrupted-call error (their ids are noted as they
//! are posted, and forgotten as their answers pass: [`Splicer::watch`]).
//!
//! Capture happens in `proxy::forward` (the `initialize` POST answered 2xx
//! on a tagged endpoint URL). A legacy session is never shared with the fleet
//! nor handed over: only the process holding its stream can move it.
//!
//! [`Moved`]: crate::proxy::migrate::Moved

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt as _;
use serde_json::Value;

use crate::mcp::answers::{serde_answer_id, AnswerScan};
use crate::probe::events::{EventReader, SseEvent};
use crate::proxy::migrate::{self, Captured, Sessions};
use crate::proxy::sse::find_session_param;
use crate::stats::{MigrateFailure, ProxyStats};
use crate::table::{Slot, SlotState, Tables};
use crate::upstream::client::{Answer, Wait};
use crate::upstream::{BodyWatch, ForwardBody, UpstreamBody};

/// Ends an event the old stream broke inside of, so that no client takes
/// what came of it for a message. SSE cannot take back the lines already
/// sent, and a blank line alone would dispatch them (half a JSON-RPC answer,
/// as the event type the upstream named, `message` mostly). Instead: `:` and
/// a line end close whatever line was cut (a comment when none was), and the
/// event is dispatched under a type no MCP client listens to. The
/// TypeScript SDK's clients take only `message` events (`EventSource`'s
/// `onmessage`), the Python SDK's log an unknown event and go on. The call
/// it carried, if it was an answer, is still pending and gets its
/// interrupted-call error right after.
pub(crate) const TORN_END: &[u8] = b":\nevent: mcpflip-torn\n\n";

/// Most bytes of the new stream's other events kept while the replay's
/// answers are awaited (a server notification that came first).
const MAX_HELD_EVENTS: usize = 64 * 1024;
/// Longest a splice may take in all (each of its steps has
/// `migrate::REPLAY_TIMEOUT`).
const SPLICE_TIMEOUT: Duration = Duration::from_secs(30);
/// The ids of the proxy's own requests in a replay.
const REPLAY_ID: &str = "mcpflip-replay-";

/// A legacy session's stream, as the relay knows it: where it comes from,
/// how to open it again, and which of its calls still wait for answers.
#[derive(Debug)]
pub struct Splicer {
    tables: Arc<Tables>,
    sessions: Arc<Sessions>,
    stats: Arc<ProxyStats>,
    /// The client's GET, in origin form, and its headers (those a replay
    /// carries are taken from them).
    path: Uri,
    headers: HeaderMap,
    /// The slot the stream comes from now.
    slot: Arc<str>,
    generation: u32,
    /// `[drain] migrate_call_grace`: how long a cut stream waits for the
    /// answers of calls in flight before it moves.
    grace: Duration,
    /// The session id the client holds (from the rewritten `endpoint`).
    sid: Option<Box<str>>,
    /// The captured session, held once captured: an open stream keeps it
    /// from idling out (`Sessions::expire`).
    captured: Option<Arc<Captured>>,
    /// The answers passing to the client, for [`Splicer::watch`].
    answers: AnswerScan,
}

/// A stream that moved: its new slot, the new upstream stream, and what the
/// client gets first.
pub struct Spliced {
    pub slot: Arc<Slot>,
    pub body: UpstreamBody,
    /// The interrupted calls' errors, then the new stream's events read during
    /// the replay (not its `endpoint`, not the replay's answers).
    pub first: Bytes,
}

/// A splice under way.
pub type Splicing = Pin<Box<dyn Future<Output = Result<Spliced, MigrateFailure>> + Send>>;

impl Splicer {
    pub fn new(
        tables: Arc<Tables>,
        sessions: Arc<Sessions>,
        stats: Arc<ProxyStats>,
        path: Uri,
        headers: HeaderMap,
        slot: &Slot,
        grace: Duration,
    ) -> Self {
        Splicer {
            tables,
            sessions,
            stats,
            path,
            headers,
            slot: Arc::clone(&slot.name),
            generation: slot.generation,
            grace,
            sid: None,
            captured: None,
            answers: AnswerScan::default(),
        }
    }

    /// The session id the client was given.
    pub fn set_session(&mut self, sid: &str) {
        self.sid = Some(sid.into());
    }

    /// Notes what passes to the client: answers to the session's calls.
    pub fn watch(&mut self, data: &[u8]) {
        let Some(sid) = self.sid.as_deref() else {
            return;
        };
        let (sessions, captured) = (&self.sessions, &mut self.captured);
        self.answers.feed(data, |id| {
            if captured.is_none() {
                *captured = sessions.get(sid.as_bytes()).filter(|c| c.is_legacy());
            }
            if let (Some(c), Some(id)) = (captured.as_ref(), id) {
                if c.has_pending() {
                    c.answered(id);
                }
            }
        });
    }

    /// How long a cut stream may still wait for its calls' answers: `None`
    /// when none is awaited (or the grace is off).
    pub fn call_grace(&self) -> Option<Duration> {
        let c = self.captured.as_ref()?;
        (!self.grace.is_zero() && c.has_pending()).then_some(self.grace)
    }

    /// Whether the stream's slot no longer serves it (retired, restarted,
    /// draining, cut): a stream it ends, even cleanly, is to move.
    pub fn slot_gone(&self) -> bool {
        let table = self.tables.load();
        match table.get(&self.slot) {
            Some(s) => {
                s.generation != self.generation || s.state != SlotState::Serving || s.stats.is_cut()
            }
            None => true,
        }
    }

    /// Starts moving the stream; `None` when its session was not captured
    /// (it ends then, as without migration). `torn`: the old stream broke
    /// inside an event, which the client is told to end first.
    pub fn begin(&mut self, torn: bool) -> Option<Splicing> {
        let sid = self.sid.as_deref()?;
        let c = match &self.captured {
            Some(c) => Arc::clone(c),
            None => self
                .sessions
                .get(sid.as_bytes())
                .filter(|c| c.is_legacy())?,
        };
        self.captured = Some(Arc::clone(&c));
        // The new stream starts at an event's start (the torn one ended).
        self.answers = AnswerScan::default();
        Some(Box::pin(splice(
            Arc::clone(&self.tables),
            c,
            self.headers.clone(),
            self.path.clone(),
            Arc::clone(&self.slot),
            Arc::clone(&self.stats),
            torn,
        )))
    }

    /// The stream comes from `slot` now.
    pub fn moved_to(&mut self, slot: &Slot) {
        self.slot = Arc::clone(&slot.name);
        self.generation = slot.generation;
    }
}

/// Whether `event` is a JSON-RPC message (named `message`, or unnamed).
fn is_message(event: &SseEvent) -> bool {
    event.event.is_empty() || event.event == "message"
}

/// The id (as JSON text) of a JSON-RPC response, `None` for anything else.
fn response_id(data: &str) -> Option<String> {
    Some(serde_answer_id(data)??.get().to_owned())
}

/// `body` (a JSON-RPC request) with the id `id` in place of its own.
fn with_id(body: &[u8], id: &str) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    v.as_object_mut()?.insert("id".into(), Value::from(id));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Moves session `c`'s stream off slot `from`: see the module's comment.
async fn splice(
    tables: Arc<Tables>,
    c: Arc<Captured>,
    template: HeaderMap,
    path: Uri,
    from: Arc<str>,
    stats: Arc<ProxyStats>,
    torn: bool,
) -> Result<Spliced, MigrateFailure> {
    let moved = {
        // One move at a time; the session's POSTs wait for this one.
        let _one = c.moving().await;
        // Each step is timed; the whole too, for a slot that sends other
        // events and never the one awaited.
        tokio::time::timeout(SPLICE_TIMEOUT, replay(&tables, &c, &template, &path, &from))
            .await
            .unwrap_or(Err(MigrateFailure::Upstream))
    };
    match moved {
        Ok((slot, body, held)) => {
            stats.count_migrated();
            let pending = c.take_pending();
            tracing::info!(from = %from, to = %slot.name, interrupted = pending.len(), "legacy SSE session migrated: its stream goes on from a serving slot");
            let mut first = BytesMut::new();
            if torn {
                first.extend_from_slice(TORN_END);
            }
            for id in pending {
                stats.count_interrupted();
                first.extend_from_slice(&migrate::interrupted_event(&id));
            }
            first.extend_from_slice(&held);
            Ok(Spliced {
                slot,
                body,
                first: first.freeze(),
            })
        }
        Err(cause) => {
            stats.count_migrate_failure(cause);
            tracing::info!(from = %from, %cause, "legacy SSE session could not migrate: its stream ends");
            Err(cause)
        }
    }
}

/// Opens the session again on a serving slot: its new stream, positioned
/// after the replay's answers, and the other bytes read meanwhile.
async fn replay(
    tables: &Tables,
    c: &Captured,
    template: &HeaderMap,
    path: &Uri,
    from: &str,
) -> Result<(Arc<Slot>, UpstreamBody, Bytes), MigrateFailure> {
    let slot = {
        let table = tables.load();
        let picked = table.pick_other(from).or_else(|| table.pick());
        Arc::clone(
            picked
                .filter(|s| !s.stats.is_cut() && !s.stats.force_token().is_cancelled())
                .ok_or(MigrateFailure::NoSlot)?,
        )
    };
    let mut headers = migrate::replay_headers(template, &slot);
    headers.remove(header::CONTENT_TYPE);
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    let resp = send(&slot, Method::GET, &headers, path, Bytes::new()).await?;
    if !resp.status().is_success() || !resp.body().is_event_stream() {
        return Err(MigrateFailure::Refused);
    }
    let mut events = Events::new(resp.into_body());
    let endpoint = loop {
        let event = events.next().await?;
        if event.event == "endpoint" {
            break event.data;
        }
    };
    let (target, inner) =
        endpoint_target(&endpoint, &slot.authority).ok_or(MigrateFailure::Refused)?;
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let id = format!("{REPLAY_ID}0");
    let init = with_id(c.init(), &id).ok_or(MigrateFailure::Refused)?;
    post(&slot, &headers, &target, init).await?;
    let answer = events.answer_to(&id).await?;
    if serde_json::from_str::<Value>(&answer)
        .ok()
        .and_then(|v| v.get("result").cloned())
        .is_none()
    {
        return Err(MigrateFailure::Refused);
    }
    let initialized =
        Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    post(&slot, &headers, &target, initialized).await?;
    for (i, body) in c.shaping().into_iter().enumerate() {
        let id = format!("{REPLAY_ID}{}", i + 1);
        let Some(body) = with_id(&body, &id) else {
            continue;
        };
        // A refused shaping request leaves the session as the slot has it
        // (it was answered once already, on the old slot).
        match post(&slot, &headers, &target, body).await {
            Ok(()) => {
                events.answer_to(&id).await?;
            }
            Err(MigrateFailure::Refused) => {
                tracing::debug!(slot = %slot.name, "a replayed session-shaping request was refused");
            }
            Err(e) => return Err(e),
        }
    }
    c.moved_here(&slot, inner);
    let Events { reader, held } = events;
    let (body, rest) = reader.into_parts();
    let mut first = held;
    first.extend_from_slice(&rest);
    Ok((slot, body, first.freeze()))
}

/// Where a new session's POSTs go (origin form) and its id, from its
/// `endpoint` event's URL: relative, or absolute on the slot itself.
fn endpoint_target(url: &str, authority: &http::uri::Authority) -> Option<(Uri, HeaderValue)> {
    let url = url.trim();
    let url = ["http://", "https://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .map_or(Some(url), |rest| rest.strip_prefix(authority.as_str()))?;
    if !url.starts_with('/') {
        return None;
    }
    let (at, key_len) = find_session_param(url)?;
    let value = url[at + key_len..].split(['&', '#']).next()?;
    let inner = HeaderValue::from_str(value)
        .ok()
        .filter(|v| !v.is_empty())?;
    Some((Uri::try_from(url).ok()?, inner))
}

/// Sends one request of the replay; its answer's head.
async fn send(
    slot: &Slot,
    method: Method,
    headers: &HeaderMap,
    target: &Uri,
    body: Bytes,
) -> Result<Response<UpstreamBody>, MigrateFailure> {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = method;
    head.uri = target.clone();
    head.headers = headers.clone();
    slot.client
        .send(
            &slot.scheme,
            &slot.authority,
            &head,
            ForwardBody::from(body),
            None,
            Wait {
                period: migrate::REPLAY_TIMEOUT,
                body: &BodyWatch::default(),
            },
            Answer::Map,
        )
        .await
        .map_err(|_| MigrateFailure::Upstream)
}

/// Posts one message to the new session: `Refused` for a non-2xx answer.
async fn post(
    slot: &Slot,
    headers: &HeaderMap,
    target: &Uri,
    body: Bytes,
) -> Result<(), MigrateFailure> {
    let resp = send(slot, Method::POST, headers, target, body).await?;
    let ok = resp.status().is_success();
    let limited = http_body_util::Limited::new(resp.into_body(), migrate::MAX_REPLY);
    if tokio::time::timeout(migrate::REPLAY_TIMEOUT, limited.collect())
        .await
        .is_err()
    {
        return Err(MigrateFailure::Upstream);
    }
    if ok {
        Ok(())
    } else {
        Err(MigrateFailure::Refused)
    }
}

/// The new stream, read event by event during the replay.
struct Events {
    reader: EventReader<UpstreamBody>,
    /// Events that are not the replay's, for the client.
    held: BytesMut,
}

impl Events {
    fn new(body: UpstreamBody) -> Self {
        Events {
            reader: EventReader::new(body),
            held: BytesMut::new(),
        }
    }

    /// The next whole event, within the replay's step timeout.
    async fn next(&mut self) -> Result<SseEvent, MigrateFailure> {
        match tokio::time::timeout(migrate::REPLAY_TIMEOUT, self.reader.next()).await {
            Ok(Ok(event)) => Ok(event),
            _ => Err(MigrateFailure::Upstream),
        }
    }

    /// The data of the answer to the replay's request `id`; other events
    /// are kept for the client.
    async fn answer_to(&mut self, id: &str) -> Result<String, MigrateFailure> {
        let quoted = format!("\"{id}\"");
        loop {
            let event = self.next().await?;
            if is_message(&event) && response_id(&event.data).as_deref() == Some(quoted.as_str()) {
                return Ok(event.data);
            }
            if event.data.is_empty() {
                // A comment (a keep-alive): nothing for the client.
                continue;
            }
            let encoded = event.encode();
            if self.held.len() + encoded.len() <= MAX_HELD_EVENTS {
                self.held.extend_from_slice(&encoded);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_told_from_requests_and_notifications() {
        assert_eq!(
            response_id(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#).as_deref(),
            Some("7")
        );
        assert_eq!(
            response_id(r#"{"result":{"content":[{"id":3}]},"jsonrpc":"2.0","id":"a"}"#).as_deref(),
            Some("\"a\"")
        );
        assert_eq!(
            response_id(r#"{"jsonrpc":"2.0","id":2,"error":{"code":1,"message":"x"}}"#).as_deref(),
            Some("2")
        );
        // A server's request carries an id too, and is no answer.
        assert_eq!(
            response_id(r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#),
            None
        );
        assert_eq!(
            response_id(r#"{"jsonrpc":"2.0","method":"notifications/message"}"#),
            None
        );
        assert_eq!(response_id("not json"), None);
    }

    #[test]
    fn the_replay_posts_where_the_new_endpoint_says() {
        let authority: http::uri::Authority = "127.0.0.1:9001".parse().unwrap();
        let (uri, inner) = endpoint_target("/messages/?session_id=abc&x=1", &authority).unwrap();
        assert_eq!(uri, "/messages/?session_id=abc&x=1");
        assert_eq!(inner, "abc");
        let (uri, inner) =
            endpoint_target(" http://127.0.0.1:9001/messages?sessionId=u-1 ", &authority).unwrap();
        assert_eq!(uri, "/messages?sessionId=u-1");
        assert_eq!(inner, "u-1");
        // Elsewhere, or with no session: not followed.
        assert!(endpoint_target("http://evil.example/messages?sessionId=1", &authority).is_none());
        assert!(endpoint_target("/messages/", &authority).is_none());
        assert!(endpoint_target("/messages/?session_id=", &authority).is_none());
    }

    /// The stream's watcher forgets a call once its answer passes, however
    /// the stream is cut into chunks, and after an event over its bound
    /// (skipped whole) it sees the next one again.
    #[tokio::test]
    async fn answers_that_pass_are_forgotten_whatever_the_chunks() {
        use crate::stats::SlotStats;
        use crate::table::Table;
        use crate::upstream::UpstreamClient;
        let slot = Arc::new(Slot {
            name: Arc::from("blue"),
            upstream: "http://127.0.0.1:1".into(),
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("127.0.0.1:1"),
            host_header: HeaderValue::from_static("127.0.0.1:1"),
            weight: 100,
            state: SlotState::Serving,
            generation: 1,
            tag_prefix: crate::mcp::tag::tag_prefix("blue", 1),
            stats: SlotStats::new("blue"),
            client: UpstreamClient::new(Duration::from_secs(1), Duration::from_secs(1)),
        });
        let tables = Arc::new(Tables::new(Table::new(vec![Arc::clone(&slot)], 1)));
        let stats = Arc::new(ProxyStats::default());
        let sessions = Arc::new(Sessions::new(
            10,
            Duration::from_secs(60),
            Arc::clone(&stats),
        ));
        let sid = HeaderValue::from_static("mf1.blue.1.s");
        let init = Bytes::from_static(br#"{"jsonrpc":"2.0","id":0,"method":"initialize"}"#);
        assert!(sessions.capture_legacy(&sid, init));
        let c = sessions.get(sid.as_bytes()).unwrap();
        let mut s = Splicer::new(
            tables,
            Arc::clone(&sessions),
            stats,
            "/sse".parse().unwrap(),
            HeaderMap::new(),
            &slot,
            Duration::from_secs(1),
        );
        s.set_session("mf1.blue.1.s");
        for id in ["1", "2", "\"a\""] {
            c.note_call(Bytes::from(id));
        }
        assert_eq!(s.call_grace(), None, "not held before an event passed");
        // A notification, then the answer to 1 cut in three, CRLF lines.
        let stream = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\n";
        for part in stream.chunks(37) {
            s.watch(part);
        }
        assert_eq!(s.call_grace(), Some(Duration::from_secs(1)));
        // An answer of 1 MiB with its id last (the TypeScript SDK's order):
        // found as it passes, whatever its size.
        let big = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{}\"}}]}},\"id\":2}}\n\n",
            "x".repeat(1 << 20)
        );
        for part in big.as_bytes().chunks(16 * 1024) {
            s.watch(part);
        }
        assert_eq!(s.call_grace(), Some(Duration::from_secs(1)), "\"a\" waits");
        s.watch(b"data: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"error\":{\"code\":1,\"message\":\"no\"}}\n\n");
        assert_eq!(
            c.take_pending(),
            Vec::<Bytes>::new(),
            "1, 2 and \"a\" answered"
        );
        assert_eq!(s.call_grace(), None);
    }

    /// The events an SSE client dispatches from `stream`, as the WHATWG
    /// algorithm does (lines end at CRLF, LF or CR; `event` sets the type,
    /// `data` appends; a blank line dispatches when there is data): `(type,
    /// data)`, the type `message` where none was set.
    fn dispatched(stream: &[u8]) -> Vec<(String, String)> {
        let text = String::from_utf8_lossy(stream)
            .replace("\r\n", "\n")
            .replace('\r', "\n");
        let (mut out, mut kind, mut data) = (Vec::new(), String::new(), None::<String>);
        let mut lines: Vec<&str> = text.split('\n').collect();
        lines.pop(); // what follows the last line end is not a line yet
        for line in lines {
            if line.is_empty() {
                if let Some(d) = data.take() {
                    let k = if kind.is_empty() {
                        "message".to_owned()
                    } else {
                        std::mem::take(&mut kind)
                    };
                    out.push((k, d));
                }
                kind.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.to_owned(),
                "data" => {
                    let d = data.get_or_insert_with(String::new);
                    if !d.is_empty() {
                        d.push('\n');
                    }
                    d.push_str(value);
                }
                _ => {}
            }
        }
        out
    }

    /// Wherever the old stream broke inside an event, what the client had of
    /// it is dispatched as `mcpflip-torn` (which MCP clients ignore), never
    /// as a `message`, and the events of the new stream after it come whole.
    #[test]
    fn an_event_torn_anywhere_never_reaches_a_client_as_a_message() {
        let event = "event: message\r\nid: 7\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":12,\"result\":{}}\r\n\r\n";
        let next = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":13,\"result\":{}}\n\n";
        let before = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n";
        // Every cut inside the event: mid-line, at a line start, between CR and LF.
        for cut in 1..=event.len() - 4 {
            let mut stream = before.as_bytes().to_vec();
            stream.extend_from_slice(&event.as_bytes()[..cut]);
            stream.extend_from_slice(TORN_END);
            stream.extend_from_slice(next);
            let got = dispatched(&stream);
            let at = String::from_utf8_lossy(&event.as_bytes()[..cut]).into_owned();
            assert_eq!(
                got.first().map(|e| e.0.as_str()),
                Some("message"),
                "cut {at:?}: {got:?}"
            );
            assert_eq!(
                got.last(),
                Some(&(
                    "message".to_owned(),
                    "{\"jsonrpc\":\"2.0\",\"id\":13,\"result\":{}}".to_owned()
                )),
                "cut {at:?}: {got:?}"
            );
            let messages = got.iter().filter(|e| e.0 == "message").count();
            assert_eq!(
                messages, 2,
                "only the whole events are messages, cut {at:?}: {got:?}"
            );
            assert!(
                got.len() <= 3 && got[1..got.len() - 1].iter().all(|e| e.0 == "mcpflip-torn"),
                "cut {at:?}: {got:?}"
            );
        }
        // What the old blank line did: half an answer, dispatched as a message.
        let mut old = event.as_bytes()[..40].to_vec();
        old.extend_from_slice(b"\n\n");
        assert_eq!(dispatched(&old)[0].0, "message", "the defect this replaces");
    }

    #[test]
    fn a_replayed_request_carries_the_proxys_id() {
        let body = with_id(
            br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"x":1}}"#,
            "mcpflip-replay-0",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "mcpflip-replay-0");
        assert_eq!(v["params"]["x"], 1);
        assert!(with_id(b"[1,2]", "x").is_none());
    }
}
