//! JSON-RPC 2.0 parsing and MCP method dispatch, plus the built-in tools and
//! their fake document store. Transport-independent and synchronous: the
//! only slow operation (the `slow` tool) is returned to the caller as a
//! [`SlowCall`] for it to run and deliver however its transport requires.
//!
//! Replies are written straight into byte buffers; the static parts
//! (initialize results, `tools/list`, `whoami`) are serialized once.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `serverInfo.name`.
pub(crate) const SERVER_NAME: &str = "mcpflip-upstream";
/// Protocol versions this server speaks, oldest first.
pub(crate) const SUPPORTED_VERSIONS: [&str; 4] =
    ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// Answered when the client asks for a version we do not know.
pub(crate) const LATEST_VERSION: &str = "2025-11-25";
/// Upper bound for `slow {seconds}`.
pub(crate) const MAX_SLOW_SECONDS: f64 = 3600.0;

pub(crate) const PARSE_ERROR: i64 = -32700;
pub(crate) const INVALID_REQUEST: i64 = -32600;
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
pub(crate) const INVALID_PARAMS: i64 = -32602;
pub(crate) const INTERNAL_ERROR: i64 = -32603;

/// The built-in tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tool {
    GetDocument,
    ListDocuments,
    SearchDocuments,
    Slow,
    Whoami,
}

impl Tool {
    pub(crate) const ALL: [Tool; 5] = [
        Tool::GetDocument,
        Tool::ListDocuments,
        Tool::SearchDocuments,
        Tool::Slow,
        Tool::Whoami,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::GetDocument => "get_document",
            Tool::ListDocuments => "list_documents",
            Tool::SearchDocuments => "search_documents",
            Tool::Slow => "slow",
            Tool::Whoami => "whoami",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == name)
    }

    fn description(self) -> &'static str {
        match self {
            Tool::GetDocument => "Return the text of a document by id. The document \"health\" reads \"ok\".",
            Tool::ListDocuments => "List the ids of all documents.",
            Tool::SearchDocuments => "Return the ids of documents whose text contains the query (case-insensitive).",
            Tool::Slow => "Sleep for the given number of seconds, then answer. Emits progress notifications when a progressToken is given.",
            Tool::Whoami => "Return the name of the deployment slot serving this call.",
        }
    }

    fn input_schema(self) -> Value {
        match self {
            Tool::GetDocument => json!({
                "type": "object",
                "properties": {"id": {"type": "string", "description": "Document id"}},
                "required": ["id"],
            }),
            Tool::SearchDocuments => json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "Text to look for"}},
                "required": ["query"],
            }),
            Tool::Slow => json!({
                "type": "object",
                "properties": {"seconds": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_SLOW_SECONDS,
                    "description": "How long to sleep",
                }},
                "required": ["seconds"],
            }),
            Tool::ListDocuments | Tool::Whoami => json!({"type": "object", "properties": {}}),
        }
    }
}

/// The fake document store: (id, text).
pub(crate) const DOCUMENTS: [(&str, &str); 5] = [
    ("health", "ok"),
    (
        "readme",
        "# mcpflip-upstream\n\nThe demo MCP server bundled with mcpflip. It serves a handful of fake documents.",
    ),
    (
        "blue-green",
        "# Blue-green deploys\n\nTwo slots, blue and green, run side by side; traffic flips from one to the other at once.",
    ),
    (
        "drains",
        "# SSE-aware drains\n\nOpen event streams on the old slot are allowed to finish before it is stopped.",
    ),
    (
        "sessions",
        "# Session affinity\n\nEvery MCP session stays pinned to the slot that created it.",
    ),
];

/// An incoming JSON-RPC message. `id` is `Some(Value::Null)` for an explicit
/// `"id": null` and `None` when absent.
#[derive(Debug, Deserialize)]
pub(crate) struct Message<'a> {
    #[serde(default, deserialize_with = "present")]
    pub id: Option<Value>,
    #[serde(default, borrow)]
    pub method: Option<Cow<'a, str>>,
    #[serde(default)]
    pub params: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Message<'_> {
    /// A request expects a response.
    pub(crate) fn is_request(&self) -> bool {
        self.method.is_some() && self.id.is_some()
    }

    pub(crate) fn is_initialize(&self) -> bool {
        self.is_request() && self.method.as_deref() == Some("initialize")
    }
}

/// Why a body could not be turned into a [`Message`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ParseError {
    #[error("Parse error")]
    Json,
    #[error("Batches are not supported")]
    Batch,
}

impl ParseError {
    pub(crate) fn code(&self) -> i64 {
        match self {
            ParseError::Json => PARSE_ERROR,
            ParseError::Batch => INVALID_REQUEST,
        }
    }

    /// The JSON-RPC error response for this failure (`id: null`).
    pub(crate) fn to_response(&self) -> Bytes {
        error_response(&Value::Null, self.code(), &self.to_string())
    }
}

/// Parses one JSON-RPC message (objects only; batches are refused).
pub(crate) fn parse(body: &[u8]) -> Result<Message<'_>, ParseError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body).map_err(|_| ParseError::Json),
        Some(b'[') => Err(ParseError::Batch),
        _ => Err(ParseError::Json),
    }
}

/// A `tools/call` of `slow`, to be run by the transport.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlowCall {
    pub id: Value,
    pub seconds: f64,
    pub progress_token: Option<Value>,
}

impl SlowCall {
    /// The final JSON-RPC response.
    pub(crate) fn response(&self) -> Bytes {
        let mut text = String::with_capacity(24);
        let _ = write!(text, "slept {} s", self.seconds);
        tool_text_response(&self.id, &text, false)
    }

    /// A `notifications/progress` message, if the caller asked for progress.
    pub(crate) fn progress(&self, progress: u64) -> Option<Bytes> {
        let token = self.progress_token.as_ref()?;
        let msg = json!({
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {
                "progressToken": token,
                "progress": progress,
                "total": self.seconds,
                "message": format!("slept {progress} of {} s", self.seconds),
            },
        });
        serde_json::to_vec(&msg).ok().map(Bytes::from)
    }

    /// Sleeps `seconds`, handing `emit` a progress notification after each
    /// whole second (when a progress token was given) and finally the
    /// response. On `stop` it emits the cancelled response instead; it gives
    /// up silently when `closed` resolves or `emit` returns `false` (the
    /// receiver is gone).
    pub(crate) async fn run(
        &self,
        stop: &CancellationToken,
        closed: impl Future<Output = ()>,
        mut emit: impl FnMut(Bytes) -> bool,
    ) {
        let start = Instant::now();
        tokio::pin!(closed);
        if self.progress_token.is_some() {
            let mut k = 1u64;
            while k as f64 <= self.seconds {
                tokio::select! {
                    _ = tokio::time::sleep_until(start + Duration::from_secs(k)) => {}
                    _ = stop.cancelled() => {
                        emit(self.cancelled_response());
                        return;
                    }
                    _ = &mut closed => return,
                }
                if let Some(p) = self.progress(k) {
                    if !emit(p) {
                        return;
                    }
                }
                k += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(start + Duration::from_secs_f64(self.seconds)) => {
                emit(self.response());
            }
            _ = stop.cancelled() => {
                emit(self.cancelled_response());
            }
            _ = &mut closed => {}
        }
    }

    /// The answer when the server is shutting down mid-call.
    pub(crate) fn cancelled_response(&self) -> Bytes {
        tool_text_response(&self.id, "cancelled: server shutting down", true)
    }

    /// Runs the call to its end and returns its one reply, for a plain JSON
    /// answer (no progress stream); the cancelled answer if `stop` fires first.
    pub(crate) async fn reply(&self, stop: &CancellationToken) -> Bytes {
        let mut reply = None;
        self.run(stop, std::future::pending(), |msg| {
            reply = Some(msg);
            true
        })
        .await;
        reply.unwrap_or_else(|| self.cancelled_response())
    }
}

/// What the transport must do with a message.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Notification or response: nothing to send back.
    NoReply,
    /// A serialized JSON-RPC response.
    Reply(Bytes),
    /// `initialize` while `fail_initialize` is set: answer HTTP 500 with this body.
    Fail(Bytes),
    /// Run the `slow` tool, then send [`SlowCall::response`].
    Slow(SlowCall),
}

/// Per-server dispatch state; static replies are pre-serialized.
pub(crate) struct Dispatcher {
    enabled: [bool; Tool::ALL.len()],
    fail_initialize: bool,
    /// `initialize` results, indexed like [`SUPPORTED_VERSIONS`].
    init_results: Vec<Vec<u8>>,
    tools_list_result: Vec<u8>,
    whoami_result: Vec<u8>,
}

impl Dispatcher {
    pub(crate) fn new(slot: &str, tools: Option<&[String]>, fail_initialize: bool) -> Self {
        let mut enabled = [tools.is_none(); Tool::ALL.len()];
        for name in tools.unwrap_or_default() {
            match Tool::ALL.iter().position(|t| t.name() == name) {
                Some(i) => enabled[i] = true,
                None => {
                    tracing::warn!(tool = %name, "demo server: ignoring unknown tool in override")
                }
            }
        }
        let init_results = SUPPORTED_VERSIONS
            .iter()
            .map(|v| {
                to_vec(&json!({
                    "protocolVersion": v,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION")},
                }))
            })
            .collect();
        let tools_json: Vec<Value> = Tool::ALL
            .iter()
            .zip(enabled)
            .filter(|(_, on)| *on)
            .map(|(t, _)| {
                json!({
                    "name": t.name(),
                    "description": t.description(),
                    "inputSchema": t.input_schema(),
                })
            })
            .collect();
        Self {
            enabled,
            fail_initialize,
            init_results,
            tools_list_result: to_vec(&json!({ "tools": tools_json })),
            whoami_result: tool_result(slot, false),
        }
    }

    fn is_enabled(&self, tool: Tool) -> bool {
        Tool::ALL
            .iter()
            .position(|t| *t == tool)
            .is_some_and(|i| self.enabled[i])
    }

    /// Handles one message.
    pub(crate) fn dispatch(&self, msg: &Message<'_>) -> Outcome {
        let (Some(method), Some(id)) = (msg.method.as_deref(), msg.id.as_ref()) else {
            return Outcome::NoReply;
        };
        match method {
            "initialize" => {
                if self.fail_initialize {
                    return Outcome::Fail(error_response(
                        id,
                        INTERNAL_ERROR,
                        "initialize failed (fail_initialize is set)",
                    ));
                }
                let requested = msg
                    .params
                    .as_ref()
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str);
                let version = requested
                    .filter(|r| SUPPORTED_VERSIONS.contains(r))
                    .unwrap_or(LATEST_VERSION);
                let idx = SUPPORTED_VERSIONS
                    .iter()
                    .position(|v| *v == version)
                    .unwrap_or(SUPPORTED_VERSIONS.len() - 1);
                Outcome::Reply(result_response(id, &self.init_results[idx]))
            }
            "ping" => Outcome::Reply(result_response(id, b"{}")),
            "tools/list" => Outcome::Reply(result_response(id, &self.tools_list_result)),
            "tools/call" => self.call_tool(id, msg.params.as_ref()),
            _ => Outcome::Reply(error_response(
                id,
                METHOD_NOT_FOUND,
                &format!("Method not found: {method}"),
            )),
        }
    }

    fn call_tool(&self, id: &Value, params: Option<&Value>) -> Outcome {
        let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
            return Outcome::Reply(error_response(
                id,
                INVALID_PARAMS,
                "tools/call requires params.name",
            ));
        };
        let tool = match Tool::from_name(name) {
            Some(t) if self.is_enabled(t) => t,
            _ => {
                return Outcome::Reply(error_response(
                    id,
                    INVALID_PARAMS,
                    &format!("Unknown tool: {name}"),
                ))
            }
        };
        let args = params.and_then(|p| p.get("arguments"));
        let arg = |key: &str| args.and_then(|a| a.get(key));
        match tool {
            Tool::Whoami => Outcome::Reply(result_response(id, &self.whoami_result)),
            Tool::ListDocuments => {
                let ids: Vec<&str> = DOCUMENTS.iter().map(|(id, _)| *id).collect();
                Outcome::Reply(tool_text_response(id, &ids.join("\n"), false))
            }
            Tool::GetDocument => {
                let reply = match arg("id").and_then(Value::as_str) {
                    None => tool_text_response(id, "missing string argument \"id\"", true),
                    Some(doc) => match DOCUMENTS.iter().find(|(d, _)| *d == doc) {
                        Some((_, text)) => tool_text_response(id, text, false),
                        None => tool_text_response(id, &format!("document not found: {doc}"), true),
                    },
                };
                Outcome::Reply(reply)
            }
            Tool::SearchDocuments => {
                let reply = match arg("query").and_then(Value::as_str) {
                    None => tool_text_response(id, "missing string argument \"query\"", true),
                    Some(q) => tool_text_response(id, &search(q).join("\n"), false),
                };
                Outcome::Reply(reply)
            }
            Tool::Slow => match arg("seconds").and_then(Value::as_f64) {
                Some(s) if s.is_finite() && (0.0..=MAX_SLOW_SECONDS).contains(&s) => {
                    Outcome::Slow(SlowCall {
                        id: id.clone(),
                        seconds: s,
                        progress_token: params
                            .and_then(|p| p.get("_meta"))
                            .and_then(|m| m.get("progressToken"))
                            .filter(|t| t.is_string() || t.is_number())
                            .cloned(),
                    })
                }
                _ => Outcome::Reply(tool_text_response(
                    id,
                    &format!(
                        "argument \"seconds\" must be a number between 0 and {MAX_SLOW_SECONDS}"
                    ),
                    true,
                )),
            },
        }
    }
}

/// Ids of documents whose id or text contains `query`, case-insensitively.
pub(crate) fn search(query: &str) -> Vec<&'static str> {
    let q = query.to_lowercase();
    DOCUMENTS
        .iter()
        .filter(|(id, text)| id.contains(&q) || text.to_lowercase().contains(&q))
        .map(|(id, _)| *id)
        .collect()
}

fn to_vec(v: &Value) -> Vec<u8> {
    // Serializing a `Value` to memory cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// `{"content":[{"type":"text","text":<text>}],"isError":<is_error>}`
fn tool_result(text: &str, is_error: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 64);
    write_tool_result(&mut out, text, is_error);
    out
}

fn write_tool_result(out: &mut Vec<u8>, text: &str, is_error: bool) {
    out.extend_from_slice(br#"{"content":[{"type":"text","text":"#);
    let _ = serde_json::to_writer(&mut *out, text);
    out.extend_from_slice(if is_error {
        br#"}],"isError":true}"#
    } else {
        br#"}],"isError":false}"#
    });
}

fn write_head(out: &mut Vec<u8>, id: &Value) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    let _ = serde_json::to_writer(&mut *out, id);
}

/// A success response around an already-serialized `result`.
pub(crate) fn result_response(id: &Value, result: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(result.len() + 48);
    write_head(&mut out, id);
    out.extend_from_slice(br#","result":"#);
    out.extend_from_slice(result);
    out.push(b'}');
    Bytes::from(out)
}

/// A success response carrying one text content block.
pub(crate) fn tool_text_response(id: &Value, text: &str, is_error: bool) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 112);
    write_head(&mut out, id);
    out.extend_from_slice(br#","result":"#);
    write_tool_result(&mut out, text, is_error);
    out.push(b'}');
    Bytes::from(out)
}

/// An error response.
pub(crate) fn error_response(id: &Value, code: i64, message: &str) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 80);
    write_head(&mut out, id);
    out.extend_from_slice(br#","error":{"code":"#);
    let _ = write!(FmtVec(&mut out), "{code}");
    out.extend_from_slice(br#","message":"#);
    let _ = serde_json::to_writer(&mut out, message);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// `fmt::Write` over a byte vector.
struct FmtVec<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for FmtVec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatcher() -> Dispatcher {
        Dispatcher::new("blue", None, false)
    }

    fn reply(d: &Dispatcher, body: &str) -> Value {
        let msg = parse(body.as_bytes()).expect("valid message");
        match d.dispatch(&msg) {
            Outcome::Reply(b) => serde_json::from_slice(&b).expect("reply is JSON"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn tool_names(v: &Value) -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .expect("tools array")
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_owned())
            .collect()
    }

    #[test]
    fn initialize_negotiates_version() {
        let d = dispatcher();
        for v in SUPPORTED_VERSIONS {
            let r = reply(
                &d,
                &format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{v}","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
                ),
            );
            assert_eq!(r["result"]["protocolVersion"], v);
            assert_eq!(r["id"], 1);
            assert_eq!(r["jsonrpc"], "2.0");
        }
        let r = reply(
            &d,
            r#"{"jsonrpc":"2.0","id":"x","method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#,
        );
        assert_eq!(r["result"]["protocolVersion"], LATEST_VERSION);
        assert_eq!(r["result"]["capabilities"]["tools"]["listChanged"], false);
        assert_eq!(r["result"]["serverInfo"]["name"], SERVER_NAME);
        assert_eq!(
            r["result"]["serverInfo"]["version"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(r["id"], "x");
    }

    #[test]
    fn fail_initialize() {
        let d = Dispatcher::new("blue", None, true);
        let msg =
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#).expect("valid");
        let Outcome::Fail(b) = d.dispatch(&msg) else {
            panic!("expected Fail")
        };
        let v: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"]["code"], INTERNAL_ERROR);
        assert_eq!(v["id"], 1);
        // Other methods still work.
        assert_eq!(
            reply(&d, r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)["result"],
            json!({})
        );
    }

    #[test]
    fn notifications_and_responses_get_no_reply() {
        let d = dispatcher();
        for body in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            r#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":5,"error":{"code":1,"message":"x"}}"#,
        ] {
            let msg = parse(body.as_bytes()).expect("valid");
            assert!(!msg.is_request());
            assert_eq!(d.dispatch(&msg), Outcome::NoReply, "{body}");
        }
    }

    #[test]
    fn ping_and_unknown_method() {
        let d = dispatcher();
        let r = reply(&d, r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#);
        assert_eq!(r, json!({"jsonrpc":"2.0","id":3,"result":{}}));
        let r = reply(&d, r#"{"jsonrpc":"2.0","id":4,"method":"resources/list"}"#);
        assert_eq!(r["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(r["id"], 4);
        // Explicit null id is still a request.
        let r = reply(&d, r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#);
        assert_eq!(r["id"], Value::Null);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse(b"{not json").unwrap_err(), ParseError::Json);
        assert_eq!(parse(b"").unwrap_err(), ParseError::Json);
        assert_eq!(parse(b"42").unwrap_err(), ParseError::Json);
        assert_eq!(
            parse(br#" [{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap_err(),
            ParseError::Batch
        );
        let v: Value = serde_json::from_slice(&ParseError::Json.to_response()).expect("json");
        assert_eq!(v["error"]["code"], PARSE_ERROR);
        assert_eq!(v["id"], Value::Null);
    }

    #[test]
    fn tools_list_has_schemas() {
        let d = dispatcher();
        let r = reply(
            &d,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#,
        );
        assert_eq!(
            tool_names(&r),
            [
                "get_document",
                "list_documents",
                "search_documents",
                "slow",
                "whoami"
            ]
        );
        for t in r["result"]["tools"].as_array().expect("array") {
            assert_eq!(t["inputSchema"]["type"], "object");
            assert!(t["description"].is_string());
        }
    }

    #[test]
    fn tools_override_restricts_list_and_calls() {
        let only = vec!["whoami".to_owned(), "nope".to_owned()];
        let d = Dispatcher::new("green", Some(&only), false);
        let r = reply(&d, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert_eq!(tool_names(&r), ["whoami"]);
        let r = reply(
            &d,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_document","arguments":{"id":"health"}}}"#,
        );
        assert_eq!(r["error"]["code"], INVALID_PARAMS);
        let r = reply(
            &d,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#,
        );
        assert_eq!(r["result"]["content"][0]["text"], "green");
    }

    #[test]
    fn whoami_returns_slot_exactly() {
        let d = Dispatcher::new("blue \"quoted\"", None, false);
        let r = reply(
            &d,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"whoami"}}"#,
        );
        assert_eq!(
            r["result"],
            json!({"content":[{"type":"text","text":"blue \"quoted\""}],"isError":false})
        );
    }

    #[test]
    fn documents() {
        let d = dispatcher();
        let call = |args: &str, name: &str| {
            reply(
                &d,
                &format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{args}}}}}"#
                ),
            )
        };
        let r = call(r#"{"id":"health"}"#, "get_document");
        assert!(r["result"]["content"][0]["text"]
            .as_str()
            .expect("text")
            .contains("ok"));
        assert_eq!(r["result"]["isError"], false);
        let r = call(r#"{"id":"missing"}"#, "get_document");
        assert_eq!(r["result"]["isError"], true);
        let r = call(r#"{}"#, "get_document");
        assert_eq!(r["result"]["isError"], true);
        let r = call(r#"{}"#, "list_documents");
        let text = r["result"]["content"][0]["text"].as_str().expect("text");
        assert!(text.lines().any(|l| l == "health"));
        assert!(text.lines().count() >= 3);
        let r = call(r#"{"query":"SLOT"}"#, "search_documents");
        let text = r["result"]["content"][0]["text"].as_str().expect("text");
        assert_eq!(text, "blue-green\ndrains\nsessions");
        let r = call(r#"{"query":"zzzz"}"#, "search_documents");
        assert_eq!(r["result"]["content"][0]["text"], "");
    }

    #[test]
    fn unknown_tool_and_missing_name() {
        let d = dispatcher();
        let r = reply(
            &d,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"nope"}}"#,
        );
        assert_eq!(r["error"]["code"], INVALID_PARAMS);
        let r = reply(&d, r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        assert_eq!(r["error"]["code"], INVALID_PARAMS);
    }

    #[test]
    fn slow_is_deferred_to_transport() {
        let d = dispatcher();
        let msg = parse(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow","arguments":{"seconds":2.5},"_meta":{"progressToken":"p1"}}}"#,
        )
        .expect("valid");
        let Outcome::Slow(call) = d.dispatch(&msg) else {
            panic!("expected Slow")
        };
        assert_eq!(call.seconds, 2.5);
        assert_eq!(call.progress_token, Some(json!("p1")));
        let v: Value = serde_json::from_slice(&call.response()).expect("json");
        assert_eq!(v["id"], 7);
        assert_eq!(v["result"]["content"][0]["text"], "slept 2.5 s");
        let p: Value = serde_json::from_slice(&call.progress(1).expect("progress")).expect("json");
        assert_eq!(p["method"], "notifications/progress");
        assert_eq!(p["params"]["progressToken"], "p1");
        assert_eq!(p["params"]["progress"], 1);
        assert!(p.get("id").is_none());

        let msg = parse(
            br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"slow","arguments":{"seconds":2}}}"#,
        )
        .expect("valid");
        let Outcome::Slow(call) = d.dispatch(&msg) else {
            panic!("expected Slow")
        };
        assert!(call.progress(1).is_none());
        let v: Value = serde_json::from_slice(&call.response()).expect("json");
        assert_eq!(v["result"]["content"][0]["text"], "slept 2 s");
    }

    #[test]
    fn slow_rejects_bad_seconds() {
        let d = dispatcher();
        for args in [
            r#"{}"#,
            r#"{"seconds":-1}"#,
            r#"{"seconds":1e300}"#,
            r#"{"seconds":"2"}"#,
        ] {
            let r = reply(
                &d,
                &format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"slow","arguments":{args}}}}}"#
                ),
            );
            assert_eq!(r["result"]["isError"], true, "{args}");
        }
    }

    #[test]
    fn error_response_escapes() {
        let v: Value =
            serde_json::from_slice(&error_response(&json!("a\"b"), -1, "m\n\"x\"")).expect("json");
        assert_eq!(v["id"], "a\"b");
        assert_eq!(v["error"]["code"], -1);
        assert_eq!(v["error"]["message"], "m\n\"x\"");
    }

    fn slow_call(seconds: f64, token: Option<Value>) -> SlowCall {
        SlowCall {
            id: json!(1),
            seconds,
            progress_token: token,
        }
    }

    #[tokio::test]
    async fn slow_run_emits_progress_then_response() {
        let call = slow_call(1.05, Some(json!("p")));
        let mut got = Vec::new();
        call.run(&CancellationToken::new(), std::future::pending(), |b| {
            got.push(b);
            true
        })
        .await;
        assert_eq!(got.len(), 2);
        let p: Value = serde_json::from_slice(&got[0]).expect("json");
        assert_eq!(p["params"]["progress"], 1);
        assert_eq!(got[1], call.response());
    }

    #[tokio::test]
    async fn slow_run_stops_on_cancel_and_on_close() {
        let call = slow_call(600.0, Some(json!(1)));
        let stop = CancellationToken::new();
        stop.cancel();
        let mut got = Vec::new();
        call.run(&stop, std::future::pending(), |b| {
            got.push(b);
            true
        })
        .await;
        assert_eq!(got, [call.cancelled_response()]);

        let mut got = Vec::new();
        call.run(&CancellationToken::new(), std::future::ready(()), |b| {
            got.push(b);
            true
        })
        .await;
        assert!(got.is_empty());
    }
}
