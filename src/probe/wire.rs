//! The probe's transports: Streamable HTTP (JSON or SSE-framed answers, the
//! session header, 2026-07-28 `Mcp-Method` requests) and legacy HTTP+SSE (POSTs
//! answered on the event stream), straight to a slot's upstream.

use crate::upstream::UpstreamBody;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::mcp::headers::{
    is_event_stream, MCP_METHOD, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, PROPOSED_VERSION,
    STATELESS_REVISION as MODERN_VERSION,
};
use crate::probe::events::EventReader;
use crate::probe::report::{excerpt, Fail};
use crate::table::Slot;

/// A probe answer larger than this is a failure, not something to buffer.
const MAX_BODY: usize = 4 << 20;

pub(crate) enum Wire {
    Streamable {
        uri: Uri,
        session: Option<HeaderValue>,
        version: Option<HeaderValue>,
        /// Speaking 2026-07-28: `Mcp-Method` headers and `_meta` in every request.
        modern: bool,
    },
    Legacy {
        post: Uri,
        events: EventReader<UpstreamBody>,
    },
}

impl Wire {
    pub(crate) fn set_version(&mut self, v: &str) {
        if let Wire::Streamable { version, .. } = self {
            *version = HeaderValue::from_str(v).ok();
        }
    }

    pub(crate) fn go_modern(&mut self) {
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

    pub(crate) fn post(
        &self,
        slot: &Slot,
        method: &str,
        body: &Value,
    ) -> Result<Request<crate::upstream::ForwardBody>, Fail> {
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
    pub(crate) async fn request(
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

    pub(crate) async fn notify(&mut self, slot: &Slot, method: &str) -> Result<(), Fail> {
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
    pub(crate) async fn delete(&mut self, slot: &Slot) -> Result<StatusCode, Fail> {
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

pub(crate) fn slot_uri(slot: &Slot, path_and_query: &str) -> Result<Uri, Fail> {
    Uri::builder()
        .scheme(slot.scheme.clone())
        .authority(slot.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Fail::new(format!("bad probe URL {path_and_query:?}: {e}")))
}

pub(crate) fn base_request(slot: &Slot, method: Method, uri: Uri) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, slot.host_header.clone())
}

pub(crate) async fn send(
    slot: &Slot,
    req: Request<crate::upstream::ForwardBody>,
) -> Result<http::Response<UpstreamBody>, Fail> {
    slot.client.request(req).await.map_err(|e| {
        let kind = crate::upstream::classify(&e);
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
pub(crate) async fn failed_answer(resp: http::Response<UpstreamBody>, what: &str) -> Fail {
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

async fn read_body(mut body: UpstreamBody) -> Result<Bytes, Fail> {
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

/// Reads SSE events until the JSON-RPC answer with `id` (skipping server
/// notifications and requests on the same stream).
pub(crate) async fn answer_on_stream(
    events: &mut EventReader<UpstreamBody>,
    id: u64,
) -> Result<Value, Fail> {
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

/// The `initialize` parameters of the probe client.
pub(crate) fn init_params() -> Value {
    json!({
        "protocolVersion": PROPOSED_VERSION,
        "capabilities": {},
        "clientInfo": { "name": "mcpflip-probe", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// 2026-07-28 requests carry the protocol version, client info and capabilities in `_meta`.
pub(crate) fn modern_params(mut params: Value) -> Value {
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
