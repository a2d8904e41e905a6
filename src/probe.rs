//! The MCP probe: a real client handshake, straight to a slot's upstream (never
//! through the public listener), that gates a flip and drives the watch window.
//!
//! Streamable HTTP: `initialize` → `notifications/initialized` → `tools/list`
//! (following `nextCursor`) → optional canary `tools/call` → `DELETE` of the
//! probe's session; answers may be JSON or SSE-framed. Legacy HTTP+SSE: the same
//! over `GET /sse` and the POST URL of its `endpoint` event. A server that refuses
//! `initialize` but answers `server/discover` is probed the 2026-07-28 way.
//! Each step reports ok, milliseconds and, on failure, the HTTP status and an
//! excerpt of the body. The whole probe shares one deadline (`probe.timeout`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::{ProbeConfig, ProbeTransport};
use crate::proxy::era::{MCP_METHOD, MCP_PROTOCOL_VERSION};
use crate::proxy::forward::MCP_SESSION_ID;
use crate::table::Slot;

/// Protocol revisions the probe (and the proxy's routing) understands.
pub const ACCEPTED_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    MODERN_VERSION,
];
/// The version `initialize` proposes; servers answer with the one they pick.
const PROPOSED_VERSION: &str = "2025-11-25";
const MODERN_VERSION: &str = "2026-07-28";
/// How much of a failing body a step quotes.
const EXCERPT: usize = 300;
/// A probe answer larger than this is a failure, not something to buffer.
const MAX_BODY: usize = 4 << 20;
/// `tools/list` pages followed at most (a server looping on a cursor fails).
const MAX_PAGES: usize = 100;

/// The outcome of one probe, as the control protocol reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub ok: bool,
    pub slot: String,
    pub transport: &'static str,
    /// The protocol version the server chose.
    pub protocol: Option<String>,
    pub ms: u64,
    /// Tool names from `tools/list`, sorted.
    pub tools: Vec<String>,
    pub steps: Vec<Step>,
    /// One line saying what failed (the failed step's detail), when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    pub ms: u64,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// An excerpt of the body that made the step fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Why a step failed.
#[derive(Debug)]
struct Fail {
    detail: String,
    status: Option<u16>,
    body: Option<String>,
}

impl Fail {
    fn new(detail: impl Into<String>) -> Self {
        Fail {
            detail: detail.into(),
            status: None,
            body: None,
        }
    }
}

/// Runs the probe configured by `cfg` against `slot`'s upstream.
pub async fn probe(slot: &Slot, cfg: &ProbeConfig) -> ProbeReport {
    let started = Instant::now();
    let mut run = Run {
        slot,
        deadline: started + cfg.timeout,
        timeout: cfg.timeout,
        steps: Vec::new(),
    };
    let transport = match cfg.transport {
        ProbeTransport::StreamableHttp => "streamable-http",
        ProbeTransport::Sse => "sse",
    };
    let result = match cfg.transport {
        ProbeTransport::StreamableHttp => run.streamable(cfg).await,
        ProbeTransport::Sse => run.legacy(cfg).await,
    };
    let (protocol, tools) = match &result {
        Ok(found) => (Some(found.protocol.clone()), found.tools.clone()),
        Err(found) => (found.protocol.clone(), found.tools.clone()),
    };
    let error = run
        .steps
        .iter()
        .find(|s| !s.ok)
        .map(|s| format!("{} failed: {}", s.step, s.detail));
    ProbeReport {
        ok: result.is_ok() && error.is_none(),
        slot: slot.name.to_string(),
        transport,
        protocol,
        ms: started.elapsed().as_millis() as u64,
        tools,
        steps: run.steps,
        error,
    }
}

/// What the probe learnt, kept for the report even when a later step fails.
#[derive(Debug, Default)]
struct Found {
    protocol: Option<String>,
    tools: Vec<String>,
}

#[derive(Debug, Default)]
struct Learnt {
    protocol: String,
    tools: Vec<String>,
}

struct Run<'a> {
    slot: &'a Slot,
    deadline: Instant,
    timeout: Duration,
    steps: Vec<Step>,
}

impl Run<'_> {
    /// Runs one step under the probe's deadline and records it.
    async fn step<T>(
        &mut self,
        name: &'static str,
        fut: impl std::future::Future<Output = Result<(T, String), Fail>>,
    ) -> Result<T, ()> {
        let t0 = Instant::now();
        let out = match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(Fail::new(format!(
                "no answer within the probe timeout ({})",
                humantime::format_duration(self.timeout)
            ))),
        };
        let ms = t0.elapsed().as_millis() as u64;
        match out {
            Ok((v, detail)) => {
                self.steps.push(Step {
                    step: name,
                    ok: true,
                    ms,
                    detail,
                    status: None,
                    body: None,
                });
                Ok(v)
            }
            Err(f) => {
                self.steps.push(Step {
                    step: name,
                    ok: false,
                    ms,
                    detail: f.detail,
                    status: f.status,
                    body: f.body,
                });
                Err(())
            }
        }
    }

    async fn streamable(&mut self, cfg: &ProbeConfig) -> Result<Learnt, Found> {
        let slot = self.slot;
        let uri = slot_uri(slot, &cfg.path).map_err(|f| {
            self.record_fail("initialize", f);
            Found::default()
        })?;
        let mut wire = Wire::Streamable {
            uri,
            session: None,
            version: None,
            modern: false,
        };
        let init = self
            .step("initialize", async {
                let v = wire.request(slot, 1, "initialize", init_params()).await?;
                let version = v["protocolVersion"].as_str().unwrap_or("").to_owned();
                check_version(&version)?;
                let server = v["serverInfo"]["name"].as_str().unwrap_or("?");
                wire.set_version(&version);
                Ok((version.clone(), format!("{server}, protocol {version}")))
            })
            .await;
        let protocol = match init {
            Ok(version) => version,
            Err(()) => self
                .try_modern(&mut wire)
                .await
                .ok_or_else(Found::default)?,
        };
        let modern = protocol == MODERN_VERSION;
        if !modern {
            self.step("initialized", async {
                wire.notify(slot, "notifications/initialized").await?;
                Ok(((), "accepted".to_owned()))
            })
            .await
            .map_err(|()| found(&protocol, &[]))?;
        }
        let learnt = self.tools_and_canary(&mut wire, cfg, &protocol).await;
        if let Wire::Streamable {
            session: Some(_), ..
        } = &wire
        {
            let closed = self
                .step("close", async {
                    let status = wire.delete(slot).await?;
                    Ok(((), format!("DELETE answered {status}")))
                })
                .await;
            if closed.is_err() {
                return Err(found(
                    &protocol,
                    &learnt.as_ref().map_or(vec![], |l| l.tools.clone()),
                ));
            }
        }
        learnt
    }

    /// After a refused `initialize`: a 2026-07-28 server answers `server/discover`.
    /// On success the failed initialize step is replaced by the discover step.
    async fn try_modern(&mut self, wire: &mut Wire) -> Option<String> {
        let slot = self.slot;
        let refused = self.steps.pop()?;
        if !refused.status.is_some_and(|s| (400..500).contains(&s)) {
            self.steps.push(refused);
            return None;
        }
        wire.go_modern();
        let discover = self
            .step("discover", async {
                let v = wire
                    .request(slot, 1, "server/discover", modern_params(json!({})))
                    .await?;
                let server = v["_meta"]["io.modelcontextprotocol/serverInfo"]["name"]
                    .as_str()
                    .or_else(|| v["serverInfo"]["name"].as_str())
                    .unwrap_or("?");
                Ok((
                    (),
                    format!("{server}, protocol {MODERN_VERSION} (initialize refused)"),
                ))
            })
            .await;
        match discover {
            Ok(()) => Some(MODERN_VERSION.to_owned()),
            Err(()) => {
                // Report the initialize failure: the server is not a modern one either.
                self.steps.pop();
                self.steps.push(refused);
                None
            }
        }
    }

    async fn tools_and_canary(
        &mut self,
        wire: &mut Wire,
        cfg: &ProbeConfig,
        protocol: &str,
    ) -> Result<Learnt, Found> {
        let slot = self.slot;
        let tools = self
            .step("tools/list", async {
                let mut names = Vec::new();
                let mut cursor: Option<String> = None;
                for page in 0.. {
                    if page == MAX_PAGES {
                        return Err(Fail::new(format!(
                            "still paging after {MAX_PAGES} pages of tools/list"
                        )));
                    }
                    let params = match &cursor {
                        Some(c) => json!({ "cursor": c }),
                        None => json!({}),
                    };
                    let v = wire
                        .request(slot, 2 + page as u64, "tools/list", params)
                        .await?;
                    let Some(list) = v["tools"].as_array() else {
                        return Err(Fail::new("tools/list result has no `tools` array"));
                    };
                    names.extend(
                        list.iter()
                            .filter_map(|t| t["name"].as_str().map(str::to_owned)),
                    );
                    match v["nextCursor"].as_str() {
                        Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                        _ => break,
                    }
                }
                names.sort();
                names.dedup();
                if let Some(expected) = &cfg.expect_tools {
                    let differs = tool_set_difference(expected, &names);
                    if let Some(d) = differs {
                        return Err(Fail::new(d));
                    }
                }
                let detail = format!("{} tools: {}", names.len(), names.join(", "));
                Ok((names, detail))
            })
            .await
            .map_err(|()| found(protocol, &[]))?;
        if let Some(canary) = &cfg.canary {
            self.step("canary", async {
                let params = json!({ "name": canary.tool, "arguments": canary.arguments });
                let v = wire.request(slot, 1000, "tools/call", params).await?;
                let text = result_text(&v);
                if v["isError"].as_bool() == Some(true) {
                    return Err(Fail::new(format!(
                        "{} returned an error: {}",
                        canary.tool,
                        excerpt(&text)
                    )));
                }
                match &canary.expect {
                    Some(want) if !text.contains(want.as_str()) => Err(Fail::new(format!(
                        "{} answered {:?}, which does not contain {want:?}",
                        canary.tool,
                        excerpt(&text)
                    ))),
                    _ => Ok(((), format!("{} answered {:?}", canary.tool, excerpt(&text)))),
                }
            })
            .await
            .map_err(|()| found(protocol, &tools))?;
        }
        Ok(Learnt {
            protocol: protocol.to_owned(),
            tools,
        })
    }

    async fn legacy(&mut self, cfg: &ProbeConfig) -> Result<Learnt, Found> {
        let slot = self.slot;
        let opened = self
            .step("endpoint", async {
                let uri = slot_uri(slot, &cfg.path)?;
                let req = base_request(slot, Method::GET, uri.clone())
                    .header(header::ACCEPT, "text/event-stream")
                    .body(Bytes::new().into())
                    .map_err(|e| Fail::new(e.to_string()))?;
                let resp = send(slot, req).await?;
                let status = resp.status();
                if !status.is_success() || !is_event_stream(resp.headers()) {
                    return Err(failed_answer(resp, "GET of the SSE endpoint").await);
                }
                let mut events = EventReader::new(resp.into_body());
                loop {
                    let ev = events.next().await?;
                    if ev.event == "endpoint" {
                        let post = resolve(slot, &uri, ev.data.trim())?;
                        let detail = format!("POST URL {post}");
                        return Ok(((post, events), detail));
                    }
                }
            })
            .await;
        let Ok((post, events)) = opened else {
            return Err(Found::default());
        };
        let mut wire = Wire::Legacy { post, events };
        let protocol = self
            .step("initialize", async {
                let v = wire.request(slot, 1, "initialize", init_params()).await?;
                let version = v["protocolVersion"].as_str().unwrap_or("").to_owned();
                check_version(&version)?;
                let server = v["serverInfo"]["name"].as_str().unwrap_or("?");
                Ok((version.clone(), format!("{server}, protocol {version}")))
            })
            .await
            .map_err(|()| Found::default())?;
        self.step("initialized", async {
            wire.notify(slot, "notifications/initialized").await?;
            Ok(((), "accepted".to_owned()))
        })
        .await
        .map_err(|()| found(&protocol, &[]))?;
        // Dropping the wire closes the GET stream, which ends the legacy session.
        self.tools_and_canary(&mut wire, cfg, &protocol).await
    }

    fn record_fail(&mut self, name: &'static str, f: Fail) {
        self.steps.push(Step {
            step: name,
            ok: false,
            ms: 0,
            detail: f.detail,
            status: f.status,
            body: f.body,
        });
    }
}

fn found(protocol: &str, tools: &[String]) -> Found {
    Found {
        protocol: Some(protocol.to_owned()),
        tools: tools.to_vec(),
    }
}

fn init_params() -> Value {
    json!({
        "protocolVersion": PROPOSED_VERSION,
        "capabilities": {},
        "clientInfo": { "name": "mcpflip-probe", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// 2026-07-28 requests carry the protocol version, client info and capabilities in `_meta`.
fn modern_params(mut params: Value) -> Value {
    if let Some(obj) = params.as_object_mut() {
        obj.insert(
            "_meta".to_owned(),
            json!({
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientInfo": { "name": "mcpflip-probe", "version": env!("CARGO_PKG_VERSION") },
                "io.modelcontextprotocol/clientCapabilities": {},
            }),
        );
    }
    params
}

fn check_version(v: &str) -> Result<(), Fail> {
    if ACCEPTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(Fail::new(format!(
            "protocol version {v:?} is not one mcpflip accepts ({})",
            ACCEPTED_VERSIONS.join(", ")
        )))
    }
}

/// `None` when `got` is exactly the `expected` set; else what differs.
fn tool_set_difference(expected: &[String], got: &[String]) -> Option<String> {
    let missing: Vec<&str> = expected
        .iter()
        .filter(|e| !got.contains(e))
        .map(String::as_str)
        .collect();
    let unexpected: Vec<&str> = got
        .iter()
        .filter(|g| !expected.contains(g))
        .map(String::as_str)
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected {}", unexpected.join(", ")));
    }
    Some(format!(
        "tool set differs from expect_tools: {}",
        parts.join("; ")
    ))
}

/// The concatenated text content of a `tools/call` result.
fn result_text(v: &Value) -> String {
    v["content"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

fn excerpt(s: &str) -> String {
    let mut end = s.len().min(EXCERPT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}…", &s[..end])
    } else {
        s.to_owned()
    }
}

/// The legacy endpoint event's URL, made absolute against the slot's upstream.
fn resolve(slot: &Slot, sse: &Uri, data: &str) -> Result<Uri, Fail> {
    if data.starts_with("http://") || data.starts_with("https://") {
        return data
            .parse()
            .map_err(|e| Fail::new(format!("endpoint URL {data:?}: {e}")));
    }
    if data.starts_with('/') {
        return slot_uri(slot, data);
    }
    let dir = sse.path().rsplit_once('/').map_or("", |(d, _)| d);
    slot_uri(slot, &format!("{dir}/{data}"))
}

enum Wire {
    Streamable {
        uri: Uri,
        session: Option<HeaderValue>,
        version: Option<HeaderValue>,
        /// Speaking 2026-07-28: `Mcp-Method` headers and `_meta` in every request.
        modern: bool,
    },
    Legacy {
        post: Uri,
        events: EventReader,
    },
}

impl Wire {
    fn set_version(&mut self, v: &str) {
        if let Wire::Streamable { version, .. } = self {
            *version = HeaderValue::from_str(v).ok();
        }
    }

    fn go_modern(&mut self) {
        if let Wire::Streamable {
            modern,
            version,
            session,
            ..
        } = self
        {
            *modern = true;
            *session = None;
            *version = Some(HeaderValue::from_static(MODERN_VERSION));
        }
    }

    fn post(
        &self,
        slot: &Slot,
        method: &str,
        body: &Value,
    ) -> Result<Request<crate::proxy::body::ForwardBody>, Fail> {
        let (uri, session, version, modern) = match self {
            Wire::Streamable {
                uri,
                session,
                version,
                modern,
            } => (uri, session.as_ref(), version.as_ref(), *modern),
            Wire::Legacy { post, .. } => (post, None, None, false),
        };
        let mut b = base_request(slot, Method::POST, uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(s) = session {
            b = b.header(MCP_SESSION_ID, s);
        }
        if let Some(v) = version {
            b = b.header(MCP_PROTOCOL_VERSION, v);
        }
        if modern {
            b = b.header(MCP_METHOD, method);
            if let Some(name) = body["params"]["name"].as_str() {
                b = b.header("mcp-name", name);
            }
        }
        b.body(Bytes::from(body.to_string()).into())
            .map_err(|e| Fail::new(format!("cannot build the {method} request: {e}")))
    }

    /// Sends a JSON-RPC request and returns its `result`.
    async fn request(
        &mut self,
        slot: &Slot,
        id: u64,
        method: &str,
        params: Value,
    ) -> Result<Value, Fail> {
        let params = match self {
            Wire::Streamable { modern: true, .. } if method != "server/discover" => {
                modern_params(params)
            }
            _ => params,
        };
        let msg = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let req = self.post(slot, method, &msg)?;
        let resp = send(slot, req).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(failed_answer(resp, method).await);
        }
        let answer = match self {
            Wire::Streamable { session, .. } => {
                if let Some(s) = resp.headers().get(MCP_SESSION_ID) {
                    *session = Some(s.clone());
                }
                if is_event_stream(resp.headers()) {
                    let mut events = EventReader::new(resp.into_body());
                    answer_on_stream(&mut events, id).await?
                } else {
                    let body = read_body(resp.into_body()).await?;
                    serde_json::from_slice::<Value>(&body).map_err(|e| Fail {
                        detail: format!("{method} answer is not JSON: {e}"),
                        status: Some(status.as_u16()),
                        body: Some(excerpt(&String::from_utf8_lossy(&body))),
                    })?
                }
            }
            // Legacy: the POST is only accepted; the answer comes on the GET stream.
            Wire::Legacy { events, .. } => answer_on_stream(events, id).await?,
        };
        if let Some(err) = answer.get("error") {
            return Err(Fail::new(format!(
                "{method} answered JSON-RPC error {}: {}",
                err["code"],
                err["message"].as_str().unwrap_or("")
            )));
        }
        match answer.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(Fail::new(format!("{method} answer has no result"))),
        }
    }

    async fn notify(&mut self, slot: &Slot, method: &str) -> Result<(), Fail> {
        let msg = json!({ "jsonrpc": "2.0", "method": method });
        let req = self.post(slot, method, &msg)?;
        let resp = send(slot, req).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(failed_answer(resp, method).await)
        }
    }

    /// Ends the probe's session; a server that does not allow DELETE (405) is fine.
    async fn delete(&mut self, slot: &Slot) -> Result<StatusCode, Fail> {
        let Wire::Streamable {
            uri,
            session: Some(s),
            version,
            ..
        } = self
        else {
            return Ok(StatusCode::OK);
        };
        let mut b =
            base_request(slot, Method::DELETE, uri.clone()).header(MCP_SESSION_ID, s.clone());
        if let Some(v) = version {
            b = b.header(MCP_PROTOCOL_VERSION, v.clone());
        }
        let req = b
            .body(Bytes::new().into())
            .map_err(|e| Fail::new(e.to_string()))?;
        let resp = send(slot, req).await?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED {
            Ok(status)
        } else {
            Err(failed_answer(resp, "DELETE").await)
        }
    }
}

fn slot_uri(slot: &Slot, path_and_query: &str) -> Result<Uri, Fail> {
    Uri::builder()
        .scheme(slot.scheme.clone())
        .authority(slot.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Fail::new(format!("bad probe URL {path_and_query:?}: {e}")))
}

fn base_request(slot: &Slot, method: Method, uri: Uri) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, slot.host_header.clone())
}

async fn send(
    slot: &Slot,
    req: Request<crate::proxy::body::ForwardBody>,
) -> Result<http::Response<Incoming>, Fail> {
    slot.client.request(req).await.map_err(|e| {
        let kind = crate::upstream_client::classify(&e);
        let mut detail = format!("{} failed ({}): {e}", slot.upstream, kind.as_str());
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            detail.push_str(": ");
            detail.push_str(&inner.to_string());
            source = inner.source();
        }
        Fail::new(detail)
    })
}

/// A non-2xx answer as a failure with its status and a body excerpt.
async fn failed_answer(resp: http::Response<Incoming>, what: &str) -> Fail {
    let status = resp.status();
    let body = match read_body(resp.into_body()).await {
        Ok(b) => excerpt(&String::from_utf8_lossy(&b)),
        Err(f) => f.detail,
    };
    Fail {
        detail: format!("{what} answered HTTP {status}"),
        status: Some(status.as_u16()),
        body: Some(body),
    }
}

async fn read_body(mut body: Incoming) -> Result<Bytes, Fail> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Fail::new(format!("reading the answer: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(Fail::new(format!("answer larger than {MAX_BODY} bytes")));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// Reads SSE events until the JSON-RPC answer with `id` (skipping server
/// notifications and requests on the same stream).
async fn answer_on_stream(events: &mut EventReader, id: u64) -> Result<Value, Fail> {
    loop {
        let ev = events.next().await?;
        if ev.data.is_empty() || !(ev.event.is_empty() || ev.event == "message") {
            continue;
        }
        let v: Value = serde_json::from_str(&ev.data).map_err(|e| Fail {
            detail: format!("SSE event data is not JSON: {e}"),
            status: None,
            body: Some(excerpt(&ev.data)),
        })?;
        if v["id"].as_u64() == Some(id) && (v.get("result").is_some() || v.get("error").is_some()) {
            return Ok(v);
        }
    }
}

#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    event: String,
    data: String,
}

/// A minimal SSE event reader over a response body.
struct EventReader {
    body: Incoming,
    buf: BytesMut,
}

impl EventReader {
    fn new(body: Incoming) -> Self {
        EventReader {
            body,
            buf: BytesMut::new(),
        }
    }

    async fn next(&mut self) -> Result<SseEvent, Fail> {
        loop {
            if let Some(ev) = take_event(&mut self.buf) {
                return Ok(ev);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if self.buf.len() + data.len() > MAX_BODY {
                            return Err(Fail::new("SSE event larger than 4 MiB"));
                        }
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(Fail::new(format!("SSE stream broke: {e}"))),
                None => return Err(Fail::new("SSE stream ended before the answer")),
            }
        }
    }
}

/// Takes one complete event (ended by a blank line) off the front of `buf`.
fn take_event(buf: &mut BytesMut) -> Option<SseEvent> {
    let (end, sep) = [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .filter_map(|sep| memchr::memmem::find(buf, sep).map(|at| (at, sep.len())))
        .min()?;
    let block = buf.split_to(end + sep);
    let text = String::from_utf8_lossy(&block[..end]);
    let mut ev = SseEvent::default();
    for line in text.split(['\n', '\r']) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => ev.event = value.to_owned(),
            "data" => {
                if !ev.data.is_empty() {
                    ev.data.push('\n');
                }
                ev.data.push_str(value);
            }
            _ => {}
        }
    }
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_any_line_end() {
        let mut buf = BytesMut::from(
            &b"event: endpoint\r\ndata: /messages?sessionId=1\r\n\r\n: comment\n\ndata: {\"a\":\ndata: 1}\n\nrest"[..],
        );
        let e1 = take_event(&mut buf).expect("first");
        assert_eq!(
            (e1.event.as_str(), e1.data.as_str()),
            ("endpoint", "/messages?sessionId=1")
        );
        assert_eq!(take_event(&mut buf), Some(SseEvent::default()));
        let e3 = take_event(&mut buf).expect("third");
        assert_eq!(e3.data, "{\"a\":\n1}");
        assert_eq!(take_event(&mut buf), None);
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn tool_sets_compare_exactly() {
        let want = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(tool_set_difference(&want, &["a".into(), "b".into()]), None);
        assert_eq!(
            tool_set_difference(&want, &["a".into(), "c".into()]).as_deref(),
            Some("tool set differs from expect_tools: missing b; unexpected c")
        );
    }

    #[test]
    fn versions_and_excerpts() {
        assert!(check_version("2025-06-18").is_ok());
        assert!(check_version("2026-07-28").is_ok());
        assert!(check_version("1999-01-01").is_err());
        let long = "é".repeat(400);
        assert!(excerpt(&long).ends_with('…'));
        assert_eq!(excerpt("short"), "short");
    }
}
