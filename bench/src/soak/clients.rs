//! The soak's clients, on the load generator's HTTP/1.1 client (`http`): MCP
//! sessions over Streamable HTTP and over legacy HTTP+SSE, stateless
//! requests, long `/ticker` streams read to their end, and clients that drop
//! their stream halfway. Each checks what it gets (status, JSON-RPC id and
//! result, the slot that answered, events in order) and records every failure
//! with what it knows of where the request went (the session's tag, the
//! upstream's `X-Served-By`, the proxy's error); `ledger` judges them.
//!
//! Every client ends when the load's token is cancelled: a session finishes
//! its call and sends `DELETE`, a legacy session closes its stream, a stream
//! reader drops its stream. Every wait has a timeout, so a stalled proxy
//! shows as failures, never as a hung soak.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::wire::{self, Events, Tag};
use crate::http::{self, Conn, Head, HttpError};
use crate::model::{Cause, Exchange, Failure, MixPart, Slot};

/// How long a request may take to be answered in full (the slow tool sleeps 1 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stream may stay silent where the client awaits an event
/// (tickers send one every 500 ms; a legacy reply comes within milliseconds).
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// The most failures kept one by one (a broken proxy must not eat the
/// machine's memory); beyond it they are counted as unexpected.
const MAX_KEPT: usize = 200_000;
/// Longest `detail` kept for a failure.
const DETAIL: usize = 240;

/// The load's shape: how many clients of each kind, and their pace.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Streamable HTTP sessions held at once.
    pub sessions: usize,
    /// Legacy HTTP+SSE sessions held at once.
    pub legacy: usize,
    /// Connections sending stateless requests, and their rate in all.
    pub stateless_conns: usize,
    pub stateless_rate: f64,
    /// `/ticker` streams held at once.
    pub tickers: usize,
    /// Clients that open a stream and drop it.
    pub vanishing: usize,
}

/// The soak's load: about 300 requests/s and 60 streams at once, light
/// enough for a 2-core machine shared with the upstreams and the load
/// generator, steady enough that 30 minutes of it is half a million requests.
pub const MIX: Mix = Mix {
    sessions: 16,
    legacy: 8,
    stateless_conns: 4,
    stateless_rate: 80.0,
    tickers: 32,
    vanishing: 6,
};

/// Think time between the calls of a session: below the drain's `quiet`
/// period (3 s), so a drain never takes a live session for an idle one.
const THINK_MS: (u64, u64) = (20, 300);
/// Calls per Streamable HTTP session and per legacy session.
const SESSION_CALLS: (usize, usize) = (3, 20);
const LEGACY_CALLS: (usize, usize) = (5, 25);
/// Share of a session's calls that are `slow` (1 s, answered with an SSE
/// stream of progress) and `whoami` (checks the session's slot).
const SLOW_SHARE: f64 = 0.1;
const WHOAMI_SHARE: f64 = 0.2;
/// `/ticker` streams: events every 500 ms, 10 to 60 of them (5 to 30 s).
const TICKER_INTERVAL_MS: u64 = 500;
const TICKER_EVENTS: (u64, u64) = (10, 60);
/// The longest a client stream lasts: drains (and so deploys) end within it.
pub const LONGEST_STREAM: Duration = Duration::from_secs(30);

impl Mix {
    /// The load as the report describes it.
    pub fn describe(&self) -> Vec<MixPart> {
        let think = format!("{}–{} ms", THINK_MS.0, THINK_MS.1);
        vec![
            MixPart {
                what: "Streamable HTTP sessions".to_owned(),
                clients: self.sessions,
                detail: format!(
                    "`initialize`, `notifications/initialized`, {}–{} `tools/call` ({:.0}% \
                     `whoami`, checked against the session's slot; {:.0}% `slow` 1 s answered \
                     with an SSE stream; the rest `get_document`) {think} apart, then `DELETE`; \
                     keep-alive connections",
                    SESSION_CALLS.0,
                    SESSION_CALLS.1,
                    WHOAMI_SHARE * 100.0,
                    SLOW_SHARE * 100.0
                ),
            },
            MixPart {
                what: "legacy HTTP+SSE sessions".to_owned(),
                clients: self.legacy,
                detail: format!(
                    "`GET /sse` to its `endpoint` event, then `initialize` and {}–{} \
                     `tools/call` POSTs {think} apart, each reply awaited on the stream; then \
                     the stream is closed",
                    LEGACY_CALLS.0, LEGACY_CALLS.1
                ),
            },
            MixPart {
                what: "stateless requests".to_owned(),
                clients: self.stateless_conns,
                detail: format!(
                    "`POST /stateless` `tools/call whoami`, {:.0}/s in all on a fixed \
                     schedule; the answer's slot must be the one in `X-Served-By`",
                    self.stateless_rate
                ),
            },
            MixPart {
                what: "long SSE streams".to_owned(),
                clients: self.tickers,
                detail: format!(
                    "`GET /ticker`, one event every {TICKER_INTERVAL_MS} ms, {}–{} events \
                     (up to {} s), read to the end: every event, in order, then a clean end",
                    TICKER_EVENTS.0,
                    TICKER_EVENTS.1,
                    LONGEST_STREAM.as_secs()
                ),
            },
            MixPart {
                what: "clients that vanish".to_owned(),
                clients: self.vanishing,
                detail: "a `/ticker` stream (endless) or a legacy `GET /sse` session, dropped \
                         after 0–5 events without reading on: half with a TCP reset, half \
                         with a FIN"
                    .to_owned(),
            },
        ]
    }
}

/// What every client records to: successes per exchange, SSE events, and
/// each failure with its times.
pub struct Recorder {
    start: Instant,
    ok: [AtomicU64; Exchange::ALL.len()],
    events: AtomicU64,
    failures: Mutex<Vec<Failure>>,
    /// Failures beyond [`MAX_KEPT`].
    overflow: AtomicU64,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            ok: std::array::from_fn(|_| AtomicU64::new(0)),
            events: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            overflow: AtomicU64::new(0),
        }
    }

    /// Milliseconds since the start of the load.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn ok(&self, e: Exchange) {
        self.ok[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }

    fn fail(&self, f: Failure) {
        match self.failures.lock() {
            Ok(mut v) if v.len() < MAX_KEPT => v.push(f),
            _ => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Successes per exchange.
    pub fn successes(&self) -> Vec<(Exchange, u64)> {
        Exchange::ALL
            .iter()
            .map(|&e| (e, self.ok[e as usize].load(Ordering::Relaxed)))
            .collect()
    }

    pub fn sse_events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Every failure kept, and how many more there were.
    pub fn failures(&self) -> (Vec<Failure>, u64) {
        let v = self.failures.lock().map(|v| v.clone()).unwrap_or_default();
        (v, self.overflow.load(Ordering::Relaxed))
    }
}

/// What every client needs.
#[derive(Clone)]
pub struct Ctx {
    pub addr: SocketAddr,
    pub host: String,
    pub rec: Arc<Recorder>,
    pub stop: CancellationToken,
}

/// A failure in the making: what went wrong and what is known of the slot.
#[derive(Debug)]
struct Fault {
    cause: Cause,
    status: Option<u16>,
    slot: Option<Slot>,
    detail: String,
}

impl Fault {
    fn new(cause: Cause, detail: impl Into<String>) -> Fault {
        Fault {
            cause,
            status: None,
            slot: None,
            detail: detail.into(),
        }
    }

    fn from_http(e: HttpError) -> Fault {
        let cause = match e {
            HttpError::Connect(_) => Cause::Connect,
            HttpError::ClosedBeforeResponse => Cause::Closed,
            HttpError::Broken(_) | HttpError::Malformed(_) => Cause::Broken,
        };
        Fault::new(cause, e.to_string())
    }

    fn timeout(what: &str) -> Fault {
        Fault::new(Cause::Timeout, format!("no {what} within the timeout"))
    }

    /// The slot it went to, when the fault itself does not say.
    fn on(mut self, slot: Option<Slot>) -> Fault {
        self.slot = self.slot.or(slot);
        self
    }
}

fn clip(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(DETAIL)]);
    s.into_owned()
}

/// A status other than the one asked for: the proxy's own JSON error names
/// the slot (`"slot"`) and the cause (`"error"`); an upstream's answer names
/// its slot in `X-Served-By`. A 404 "Session not found" (the proxy's, or an
/// SDK server's) or "Could not find session" (a legacy one's) is a lost session.
fn status_fault(head: &Head, body: &[u8]) -> Fault {
    let lost = head.status == 404
        && (memchr::memmem::find(body, b"Session not found").is_some()
            || memchr::memmem::find(body, b"Could not find session").is_some());
    let slot = head.served_by.or_else(|| {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["slot"].as_str().and_then(|s| Slot::parse(s.as_bytes())))
    });
    Fault {
        cause: if lost {
            Cause::SessionNotFound
        } else {
            Cause::Status
        },
        status: Some(head.status),
        slot,
        detail: clip(body),
    }
}

impl Ctx {
    fn record(&self, exchange: Exchange, tag: Option<Tag>, sent_ms: u64, f: Fault) {
        self.rec.fail(Failure {
            exchange,
            cause: f.cause,
            status: f.status,
            slot: tag.map(|t| t.slot).or(f.slot),
            generation: tag.map(|t| t.generation),
            sent_ms,
            failed_ms: self.rec.now_ms(),
            detail: f.detail,
        });
    }

    /// Sleeps `ms`; `false` when the load stopped meanwhile.
    async fn pause(&self, ms: u64) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
            _ = self.stop.cancelled() => false,
        }
    }

    /// A connection of its own (streams).
    async fn open(&self) -> Result<Conn, Fault> {
        Conn::open(self.addr, None).await.map_err(Fault::from_http)
    }

    /// One request on a keep-alive connection (opened, or reopened when the
    /// proxy closed it while idle, as a careful client does); the body is in
    /// the connection's `body` afterwards.
    async fn exchange(
        &self,
        conn: &mut Option<Conn>,
        req: &[u8],
        want_session: bool,
    ) -> Result<Head, Fault> {
        if conn.as_mut().is_some_and(Conn::peer_closed) {
            *conn = None;
        }
        let c = match conn {
            Some(c) => c,
            None => conn.insert(self.open().await?),
        };
        let r = tokio::time::timeout(ANSWER_TIMEOUT, c.roundtrip(req, want_session)).await;
        match r {
            Ok(Ok(head)) => {
                if head.close {
                    *conn = None;
                }
                Ok(head)
            }
            Ok(Err(e)) => {
                *conn = None;
                Err(Fault::from_http(e))
            }
            Err(_) => {
                *conn = None;
                Err(Fault::timeout("answer"))
            }
        }
    }
}

/// `true` when `body` is a JSON-RPC result for `id` (a JSON body, or an SSE
/// body whose last event is one). Progress notifications may come first.
fn is_result(body: &[u8], id: u64) -> bool {
    let want = format!("\"id\":{id}");
    memchr::memmem::find(body, want.as_bytes()).is_some()
        && memchr::memmem::find(body, b"\"result\"").is_some()
}

/// The slot a `whoami` result names.
fn whoami_slot(body: &[u8]) -> Option<Slot> {
    if memchr::memmem::find(body, b"\"text\":\"blue\"").is_some() {
        Some(Slot::Blue)
    } else if memchr::memmem::find(body, b"\"text\":\"green\"").is_some() {
        Some(Slot::Green)
    } else {
        None
    }
}

fn call_body(id: u64, tool: &str, args: &str) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args},"_meta":{{"progressToken":"p{id}"}}}}}}"#
    )
    .into_bytes()
}

/// One of a session's calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Document,
    Whoami,
    Slow,
}

impl Call {
    fn pick(rng: &mut fastrand::Rng, slow: bool) -> Call {
        let r = rng.f64();
        if slow && r < SLOW_SHARE {
            Call::Slow
        } else if r < SLOW_SHARE + WHOAMI_SHARE {
            Call::Whoami
        } else {
            Call::Document
        }
    }

    fn body(self, id: u64) -> Vec<u8> {
        match self {
            Call::Document => call_body(id, "get_document", r#"{"id":"health"}"#),
            Call::Whoami => call_body(id, "whoami", "{}"),
            Call::Slow => call_body(id, "slow", r#"{"seconds":1}"#),
        }
    }

    fn exchange(self) -> Exchange {
        if self == Call::Slow {
            Exchange::SlowCall
        } else {
            Exchange::Call
        }
    }

    /// Checks an answer that came with status 200.
    fn check(self, id: u64, tag: Tag, head: &Head, body: &[u8]) -> Result<(), Fault> {
        if !is_result(body, id) {
            return Err(Fault::new(Cause::WrongAnswer, clip(body)));
        }
        if self == Call::Slow && !head.event_stream {
            return Err(Fault::new(
                Cause::WrongAnswer,
                "slow call not answered with an SSE stream",
            ));
        }
        if self == Call::Whoami && whoami_slot(body) != Some(tag.slot) {
            return Err(Fault::new(Cause::WrongSlot, clip(body)));
        }
        if head.served_by.is_some_and(|s| s != tag.slot) {
            return Err(Fault::new(
                Cause::WrongSlot,
                format!(
                    "X-Served-By {:?} for a session of {}",
                    head.served_by,
                    tag.slot.name()
                ),
            ));
        }
        Ok(())
    }
}

/// Streamable HTTP sessions, one after the other.
pub async fn session(ctx: Ctx, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut conn: Option<Conn> = None;
    let mut req = Vec::with_capacity(512);
    while !ctx.stop.is_cancelled() {
        let sent = ctx.rec.now_ms();
        http::write_post(&mut req, &ctx.host, "/mcp", None, http::INITIALIZE);
        let opened = match ctx.exchange(&mut conn, &req, true).await {
            Ok(head) if head.status == 200 => {
                match head
                    .session
                    .as_deref()
                    .and_then(|s| wire::tag(s).map(|t| (s, t)))
                {
                    Some((sid, t)) if head.served_by.is_none_or(|s| s == t.slot) => {
                        Ok((sid.to_owned(), t))
                    }
                    Some((sid, _)) => Err(Fault::new(
                        Cause::WrongSlot,
                        format!("session {sid} created by {:?}", head.served_by),
                    )
                    .on(head.served_by)),
                    None => Err(Fault::new(
                        Cause::WrongAnswer,
                        format!("no tagged Mcp-Session-Id: {:?}", head.session),
                    )
                    .on(head.served_by)),
                }
            }
            Ok(head) => Err(status_fault(
                &head,
                conn.as_ref().map_or(&[][..], |c| &c.body),
            )),
            Err(f) => Err(f),
        };
        let (sid, tag) = match opened {
            Ok(x) => x,
            Err(f) => {
                ctx.record(Exchange::Initialize, None, sent, f);
                ctx.pause(100).await;
                continue;
            }
        };
        ctx.rec.ok(Exchange::Initialize);
        if !session_calls(&ctx, &mut rng, &mut conn, &mut req, &sid, tag).await {
            continue;
        }
        let sent = ctx.rec.now_ms();
        http::write_delete(&mut req, &ctx.host, "/mcp", &sid);
        match ctx.exchange(&mut conn, &req, false).await {
            Ok(head) if (200..300).contains(&head.status) => ctx.rec.ok(Exchange::Delete),
            Ok(head) => {
                let f = status_fault(&head, conn.as_ref().map_or(&[][..], |c| &c.body));
                ctx.record(Exchange::Delete, Some(tag), sent, f);
            }
            Err(f) => ctx.record(Exchange::Delete, Some(tag), sent, f),
        }
    }
}

/// `initialized` and the calls of one session; `false` when one failed (the
/// session is then given up, as a client does with a session it lost).
async fn session_calls(
    ctx: &Ctx,
    rng: &mut fastrand::Rng,
    conn: &mut Option<Conn>,
    req: &mut Vec<u8>,
    sid: &str,
    tag: Tag,
) -> bool {
    let sent = ctx.rec.now_ms();
    http::write_post(
        req,
        &ctx.host,
        "/mcp",
        Some(sid),
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    match ctx.exchange(conn, req, false).await {
        Ok(head) if (200..300).contains(&head.status) => ctx.rec.ok(Exchange::Initialized),
        Ok(head) => {
            let f = status_fault(&head, conn.as_ref().map_or(&[][..], |c| &c.body));
            ctx.record(Exchange::Initialized, Some(tag), sent, f);
            return false;
        }
        Err(f) => {
            ctx.record(Exchange::Initialized, Some(tag), sent, f);
            return false;
        }
    }
    let calls = rng.usize(SESSION_CALLS.0..=SESSION_CALLS.1);
    for k in 0..calls {
        if !ctx.pause(rng.u64(THINK_MS.0..=THINK_MS.1)).await {
            break;
        }
        let id = k as u64 + 2;
        let call = Call::pick(rng, true);
        let sent = ctx.rec.now_ms();
        http::write_post(req, &ctx.host, "/mcp", Some(sid), &call.body(id));
        let result = match ctx.exchange(conn, req, false).await {
            Ok(head) if head.status == 200 => {
                let body = conn.as_ref().map_or(&[][..], |c| &c.body);
                if call == Call::Slow {
                    ctx.rec.events(count_events(body));
                }
                call.check(id, tag, &head, body)
            }
            Ok(head) => Err(status_fault(
                &head,
                conn.as_ref().map_or(&[][..], |c| &c.body),
            )),
            Err(f) => Err(f),
        };
        match result {
            Ok(()) => ctx.rec.ok(call.exchange()),
            Err(f) => {
                ctx.record(call.exchange(), Some(tag), sent, f);
                return false;
            }
        }
    }
    true
}

fn count_events(body: &[u8]) -> u64 {
    memchr::memmem::find_iter(body, b"\n\n").count() as u64
}

/// Reads the next event of `conn`'s stream into `events`, or why not.
/// `Ok(None)`: the stream ended cleanly.
async fn next_event(conn: &mut Conn, events: &mut Events) -> Result<Option<wire::Event>, Fault> {
    loop {
        if let Some(e) = events.next_event() {
            return Ok(Some(e));
        }
        match tokio::time::timeout(EVENT_TIMEOUT, conn.next_data()).await {
            Ok(Ok(true)) => events.push(&conn.body),
            Ok(Ok(false)) => return Ok(None),
            Ok(Err(e)) => return Err(Fault::from_http(e)),
            Err(_) => return Err(Fault::timeout("event")),
        }
    }
}

/// Opens a legacy session: `GET /sse` up to its `endpoint` event. Returns the
/// stream, the POST URL and its tag.
async fn open_legacy(ctx: &Ctx) -> Result<(Conn, Events, String, Tag), Fault> {
    let mut conn = ctx.open().await?;
    let head = tokio::time::timeout(
        ANSWER_TIMEOUT,
        conn.send_head(&http::get_stream(&ctx.host, "/sse", None), false),
    )
    .await
    .map_err(|_| Fault::timeout("answer to GET /sse"))?
    .map_err(Fault::from_http)?;
    if head.status != 200 || !head.event_stream {
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, conn.read_body()).await;
        return Err(status_fault(&head, &conn.body));
    }
    let mut events = Events::default();
    let first = next_event(&mut conn, &mut events)
        .await
        .map_err(|f| f.on(head.served_by))?
        .ok_or_else(|| {
            Fault::new(Cause::Cut, "the stream ended before `endpoint`").on(head.served_by)
        })?;
    if first.name != "endpoint" {
        return Err(Fault::new(
            Cause::WrongAnswer,
            format!("first event {:?}, not `endpoint`", first.name),
        )
        .on(head.served_by));
    }
    let Some(tag) = wire::endpoint_tag(&first.data) else {
        return Err(Fault::new(
            Cause::WrongAnswer,
            format!("endpoint {:?} carries no session tag", first.data),
        )
        .on(head.served_by));
    };
    if head.served_by.is_some_and(|s| s != tag.slot) {
        return Err(Fault::new(
            Cause::WrongSlot,
            format!("endpoint {} from {:?}", first.data, head.served_by),
        )
        .on(head.served_by));
    }
    ctx.rec.events(1);
    Ok((conn, events, first.data, tag))
}

/// Legacy HTTP+SSE sessions, one after the other.
pub async fn legacy(ctx: Ctx, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut post: Option<Conn> = None;
    let mut req = Vec::with_capacity(512);
    while !ctx.stop.is_cancelled() {
        let sent = ctx.rec.now_ms();
        let (mut stream, mut events, url, tag) = match open_legacy(&ctx).await {
            Ok(x) => x,
            Err(f) => {
                ctx.record(Exchange::SseOpen, None, sent, f);
                ctx.pause(100).await;
                continue;
            }
        };
        ctx.rec.ok(Exchange::SseOpen);
        // The POST URL as the endpoint event gave it (relative here).
        let path = url
            .find("://")
            .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
            .unwrap_or(&url)
            .to_owned();
        let calls = rng.usize(LEGACY_CALLS.0..=LEGACY_CALLS.1);
        // id 1 is `initialize`; then `initialized` (no reply); then the calls.
        let mut steps: Vec<Option<(u64, Call)>> = vec![Some((1, Call::Document)), None];
        steps.extend((0..calls).map(|k| Some((k as u64 + 2, Call::pick(&mut rng, false)))));
        for (i, step) in steps.into_iter().enumerate() {
            if i > 1 && !ctx.pause(rng.u64(THINK_MS.0..=THINK_MS.1)).await {
                break;
            }
            let body = match step {
                Some((1, _)) => http::INITIALIZE.to_vec(),
                Some((id, call)) => call.body(id),
                None => br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
            };
            let sent = ctx.rec.now_ms();
            http::write_post(&mut req, &ctx.host, &path, None, &body);
            match ctx.exchange(&mut post, &req, false).await {
                Ok(head) if head.status == 202 => ctx.rec.ok(Exchange::SsePost),
                Ok(head) => {
                    let f = status_fault(&head, post.as_ref().map_or(&[][..], |c| &c.body));
                    ctx.record(Exchange::SsePost, Some(tag), sent, f);
                    break;
                }
                Err(f) => {
                    ctx.record(Exchange::SsePost, Some(tag), sent, f);
                    break;
                }
            }
            let Some((id, call)) = step else { continue };
            let reply = match next_event(&mut stream, &mut events).await {
                Ok(Some(e)) if is_result(e.data.as_bytes(), id) => {
                    if call == Call::Whoami && whoami_slot(e.data.as_bytes()) != Some(tag.slot) {
                        Err(Fault::new(Cause::WrongSlot, clip(e.data.as_bytes())))
                    } else {
                        Ok(())
                    }
                }
                Ok(Some(e)) => Err(Fault::new(
                    Cause::WrongAnswer,
                    format!("event {:?}: {}", e.name, clip(e.data.as_bytes())),
                )),
                Ok(None) => Err(Fault::new(Cause::Cut, "the session's stream ended")),
                Err(f) => Err(f),
            };
            match reply {
                Ok(()) => {
                    ctx.rec.ok(Exchange::SseReply);
                    ctx.rec.events(1);
                }
                Err(f) => {
                    ctx.record(Exchange::SseReply, Some(tag), sent, f);
                    break;
                }
            }
        }
        // The client ends the session by closing its stream.
        drop(stream);
    }
}

/// Stateless requests on one connection, every `interval`.
pub async fn stateless(ctx: Ctx, interval: Duration, offset: Duration) {
    let mut conn: Option<Conn> = None;
    let mut req = Vec::with_capacity(256);
    http::write_post(&mut req, &ctx.host, "/stateless", None, http::WHOAMI);
    let mut due = tokio::time::Instant::now() + offset;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = ctx.stop.cancelled() => return,
        }
        due += interval;
        let sent = ctx.rec.now_ms();
        let result = match ctx.exchange(&mut conn, &req, false).await {
            Ok(head) if head.status == 200 => {
                let body = conn.as_ref().map_or(&[][..], |c| &c.body);
                match (whoami_slot(body), head.served_by) {
                    (Some(a), Some(b)) if a == b && is_result(body, 3) => Ok(()),
                    _ => Err(Fault::new(Cause::WrongAnswer, clip(body)).on(head.served_by)),
                }
            }
            Ok(head) => Err(status_fault(
                &head,
                conn.as_ref().map_or(&[][..], |c| &c.body),
            )),
            Err(f) => Err(f),
        };
        match result {
            Ok(()) => ctx.rec.ok(Exchange::Stateless),
            Err(f) => ctx.record(Exchange::Stateless, None, sent, f),
        }
    }
}

/// `/ticker` streams read to their end, one after the other.
pub async fn ticker(ctx: Ctx, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !ctx.stop.is_cancelled() {
        let count = rng.u64(TICKER_EVENTS.0..=TICKER_EVENTS.1);
        let sent = ctx.rec.now_ms();
        let path = format!("/ticker?interval_ms={TICKER_INTERVAL_MS}&count={count}&pad=64");
        let read = async {
            let mut conn = ctx.open().await?;
            let head = tokio::time::timeout(
                ANSWER_TIMEOUT,
                conn.send_head(&http::get_stream(&ctx.host, &path, None), false),
            )
            .await
            .map_err(|_| Fault::timeout("answer to GET /ticker"))?
            .map_err(Fault::from_http)?;
            if head.status != 200 || !head.event_stream {
                let _ = tokio::time::timeout(ANSWER_TIMEOUT, conn.read_body()).await;
                return Err(status_fault(&head, &conn.body));
            }
            let slot = head.served_by;
            let mut events = Events::default();
            for n in 1..=count {
                match next_event(&mut conn, &mut events)
                    .await
                    .map_err(|f| f.on(slot))?
                {
                    Some(e) if e.id == n.to_string() => ctx.rec.events(1),
                    Some(e) => {
                        return Err(Fault::new(
                            Cause::WrongAnswer,
                            format!("event id {:?} where {n} was due", e.id),
                        )
                        .on(slot))
                    }
                    None => {
                        return Err(Fault::new(
                            Cause::Cut,
                            format!("the stream ended after {} of {count} events", n - 1),
                        )
                        .on(slot))
                    }
                }
            }
            // The upstream ends the stream after its last event; so must the proxy.
            match next_event(&mut conn, &mut events)
                .await
                .map_err(|f| f.on(slot))?
            {
                None => Ok(()),
                Some(e) => Err(Fault::new(
                    Cause::WrongAnswer,
                    format!("event {:?} after the last one", e.id),
                )
                .on(slot)),
            }
        };
        let result = tokio::select! {
            r = read => r,
            // Stopping the load drops the stream: the client's own doing.
            _ = ctx.stop.cancelled() => return,
        };
        match result {
            Ok(()) => ctx.rec.ok(Exchange::Ticker),
            Err(f) => {
                ctx.record(Exchange::Ticker, None, sent, f);
                ctx.pause(100).await;
            }
        }
    }
}

/// Clients that open a stream and drop it after a few events.
pub async fn vanishing(ctx: Ctx, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !ctx.stop.is_cancelled() {
        let sent = ctx.rec.now_ms();
        let legacy = rng.bool();
        let keep = rng.u64(0..=5);
        let opened = async {
            if legacy {
                let (conn, _, _, _) = open_legacy(&ctx).await?;
                return Ok(conn);
            }
            let mut conn = ctx.open().await?;
            let req = http::get_stream(&ctx.host, "/ticker?interval_ms=200&pad=64", None);
            let head = tokio::time::timeout(ANSWER_TIMEOUT, conn.send_head(&req, false))
                .await
                .map_err(|_| Fault::timeout("answer to GET /ticker"))?
                .map_err(Fault::from_http)?;
            if head.status != 200 || !head.event_stream {
                let _ = tokio::time::timeout(ANSWER_TIMEOUT, conn.read_body()).await;
                return Err(status_fault(&head, &conn.body));
            }
            let mut events = Events::default();
            for _ in 0..keep {
                match next_event(&mut conn, &mut events)
                    .await
                    .map_err(|f| f.on(head.served_by))?
                {
                    Some(_) => ctx.rec.events(1),
                    None => {
                        return Err(
                            Fault::new(Cause::Cut, "an endless stream ended").on(head.served_by)
                        )
                    }
                }
            }
            Ok(conn)
        };
        let result = tokio::select! {
            r = opened => r,
            _ = ctx.stop.cancelled() => return,
        };
        match result {
            Ok(conn) => {
                ctx.rec.ok(Exchange::Vanish);
                if rng.bool() {
                    conn.reset();
                } else {
                    drop(conn);
                }
            }
            Err(f) => ctx.record(Exchange::Vanish, None, sent, f),
        }
        ctx.pause(rng.u64(50..=500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, served_by: Option<Slot>) -> Head {
        Head {
            status,
            served_by,
            ..Head::default()
        }
    }

    #[test]
    fn the_proxys_error_names_the_slot() {
        let f = status_fault(
            &head(502, None),
            br#"{"error":"upstream_connect","slot":"green","message":"connection refused"}"#,
        );
        assert_eq!(
            (f.cause, f.status, f.slot),
            (Cause::Status, Some(502), Some(Slot::Green))
        );
        assert!(f.detail.contains("upstream_connect"));
    }

    #[test]
    fn lost_sessions_are_told_apart_from_other_404s() {
        let f = status_fault(
            &head(404, None),
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#,
        );
        assert_eq!(f.cause, Cause::SessionNotFound);
        let f = status_fault(&head(404, Some(Slot::Blue)), b"Could not find session");
        assert_eq!(
            (f.cause, f.slot),
            (Cause::SessionNotFound, Some(Slot::Blue))
        );
        let f = status_fault(&head(404, None), b"not found");
        assert_eq!(f.cause, Cause::Status);
    }

    #[test]
    fn results_are_matched_by_id() {
        let body =
            br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"green"}]}}"#;
        assert!(is_result(body, 7));
        assert!(!is_result(body, 8));
        assert_eq!(whoami_slot(body), Some(Slot::Green));
        assert!(!is_result(
            br#"{"jsonrpc":"2.0","id":7,"error":{"code":-1}}"#,
            7
        ));
    }

    #[test]
    fn a_whoami_from_another_slot_is_an_affinity_failure() {
        let tag = Tag {
            slot: Slot::Blue,
            generation: 1,
        };
        let green =
            br#"{"jsonrpc":"2.0","id":4,"result":{"content":[{"type":"text","text":"green"}]}}"#;
        let err = Call::Whoami
            .check(4, tag, &head(200, Some(Slot::Green)), green)
            .expect_err("wrong slot");
        assert_eq!(err.cause, Cause::WrongSlot);
        let doc = br#"{"jsonrpc":"2.0","id":4,"result":{"content":[]}}"#;
        let err = Call::Document
            .check(4, tag, &head(200, Some(Slot::Green)), doc)
            .expect_err("served by green");
        assert_eq!(err.cause, Cause::WrongSlot);
        assert!(Call::Document
            .check(4, tag, &head(200, Some(Slot::Blue)), doc)
            .is_ok());
    }

    #[test]
    fn the_recorder_counts_what_it_keeps_and_what_it_cannot() {
        let rec = Recorder::new(Instant::now());
        rec.ok(Exchange::Call);
        rec.ok(Exchange::Call);
        rec.fail(Failure {
            exchange: Exchange::Ticker,
            cause: Cause::Cut,
            status: None,
            slot: None,
            generation: None,
            sent_ms: 0,
            failed_ms: 1,
            detail: String::new(),
        });
        let ok = rec.successes();
        assert!(ok.contains(&(Exchange::Call, 2)));
        assert_eq!(rec.failures().0.len(), 1);
        assert_eq!(rec.failures().1, 0);
    }
}
