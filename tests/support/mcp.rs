//! The tests' own MCP client: a plain HTTP client, a legacy HTTP+SSE session
//! and a Streamable HTTP POST. Written apart from the library (the demo has its
//! own client, the probe its own reader) so that the proxy is checked against
//! an independent reading of the wire.

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The plain HTTP/1.1 client of the tests.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One SSE event: its `event:` name (empty for the default) and joined `data:`.
#[derive(Debug)]
struct Event {
    name: String,
    data: String,
}

/// Reads SSE events off a response body (`\n` or `\r\n` line ends).
struct Events {
    body: Incoming,
    buf: BytesMut,
}

impl Events {
    async fn next(&mut self) -> anyhow::Result<Event> {
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let raw = self.buf.split_to(end.1);
                let text = String::from_utf8_lossy(&raw[..end.0]).into_owned();
                let mut ev = Event {
                    name: String::new(),
                    data: String::new(),
                };
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.name = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                return Ok(ev);
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => bail!("the SSE stream broke: {e}"),
                None => bail!("the SSE stream ended"),
            }
        }
    }
}

/// `(end of the event, end of its blank line)` of the first complete event.
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\n\n") {
            Some((i, i + 2))
        } else if b[i..].starts_with(b"\r\n\r\n") {
            Some((i, i + 4))
        } else {
            None
        }
    })
}

/// A legacy HTTP+SSE MCP session (2024-11-05) held open through the proxy.
pub struct SseSession {
    client: HttpClient,
    post_url: String,
    events: Events,
    next_id: u64,
}

impl SseSession {
    /// `GET {base}/sse`, reads the `endpoint` event, and initializes.
    pub async fn open(client: &HttpClient, base: &str) -> anyhow::Result<Self> {
        let req = http::Request::get(format!("{base}/sse"))
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))?;
        let resp = client.request(req).await.context("GET /sse")?;
        if !resp.status().is_success() {
            bail!("GET /sse answered {}", resp.status());
        }
        let mut events = Events {
            body: resp.into_body(),
            buf: BytesMut::new(),
        };
        let first = events.next().await?;
        if first.name != "endpoint" {
            bail!("the first event was {:?}, not endpoint", first.name);
        }
        let post_url = if first.data.starts_with('/') {
            format!("{base}{}", first.data)
        } else {
            first.data
        };
        let mut s = SseSession {
            client: client.clone(),
            post_url,
            events,
            next_id: 1,
        };
        s.request(
            "initialize",
            json!({"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "mcpflip-tests", "version": "1"}}),
        )
        .await?;
        s.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(s)
    }

    /// The (tagged) POST URL of this session.
    pub fn post_url(&self) -> &str {
        &self.post_url
    }

    /// Posts `msg` to the session's URL; its answers come on the stream.
    pub async fn post(&self, msg: Value) -> anyhow::Result<()> {
        let req = http::Request::post(&self.post_url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(msg.to_string())))?;
        let resp = self.client.request(req).await.context("POST")?;
        if !resp.status().is_success() {
            bail!("POST answered {}", resp.status());
        }
        let _ = resp.into_body().collect().await;
        Ok(())
    }

    /// Sends a request; waits for its response on the stream.
    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        loop {
            let ev = self.events.next().await?;
            if ev.data.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&ev.data)
                .map_err(|e| anyhow!("bad message {:?}: {e}", ev.data))?;
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    bail!("{method} failed: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// The next message on the stream, whatever it is (a notification, an
    /// answer), as JSON, and the name of its event.
    /// The next event as it came: `(event type, data)`, the type empty
    /// where the event named none.
    pub async fn next_event(&mut self) -> anyhow::Result<(String, String)> {
        let ev = self.events.next().await?;
        Ok((ev.name, ev.data))
    }

    pub async fn next_message(&mut self) -> anyhow::Result<(String, Value)> {
        loop {
            let ev = self.events.next().await?;
            if ev.data.is_empty() {
                continue;
            }
            let v = serde_json::from_str(&ev.data)
                .map_err(|e| anyhow!("bad message {:?}: {e}", ev.data))?;
            return Ok((ev.name, v));
        }
    }

    /// Calls `tool`; returns the text of its first content item.
    pub async fn call(&mut self, tool: &str, args: Value) -> anyhow::Result<String> {
        let r = self
            .request("tools/call", json!({"name": tool, "arguments": args}))
            .await?;
        Ok(r["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

/// A Streamable HTTP POST: `(status, Mcp-Session-Id, body text)`.
pub async fn post_json(
    client: &HttpClient,
    url: &str,
    session: Option<&str>,
    body: Value,
) -> (u16, Option<String>, String) {
    let mut req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let resp = client
        .request(
            req.body(Full::new(Bytes::from(body.to_string())))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, sid, String::from_utf8_lossy(&body).into_owned())
}

/// A Streamable HTTP session through the proxy at `url` (`initialize`, then
/// `notifications/initialized`): its id as the client holds it.
pub async fn open_session(client: &HttpClient, url: &str) -> String {
    let (status, sid, _) = post_json(client, url, None, initialize()).await;
    assert_eq!(status, 200);
    let sid = sid.expect("a session id");
    let (status, _, _) = post_json(
        client,
        url,
        Some(&sid),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);
    sid
}

/// Session `sid` calls `whoami` (request `id`): the status and the answer
/// (a 200 must give the client its own session id back).
pub async fn call_whoami(client: &HttpClient, url: &str, sid: &str, id: u32) -> (u16, Value) {
    let (status, back, body) = post_json(
        client,
        url,
        Some(sid),
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"whoami"}}),
    )
    .await;
    if status == 200 {
        assert_eq!(
            back.as_deref(),
            Some(sid),
            "the client keeps its session id"
        );
    }
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// An `initialize` request body (2025-06-18).
pub fn initialize() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
}

/// The text of a GET of `url` (e.g. the admin listener's `/metrics`).
pub async fn get_text(client: &HttpClient, url: &str) -> String {
    let resp = client
        .request(
            http::Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
