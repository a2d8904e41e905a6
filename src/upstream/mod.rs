//! The built-in demo MCP server ("upstream") used by the demo, the tests and
//! the benchmarks: a small, fast MCP server on hyper 1.x (HTTP/1.1 and h2c).
//!
//! This file owns the public API ([`Transport`], [`UpstreamConfig`],
//! [`serve`]), the accept loop and graceful shutdown, request routing and
//! the small HTTP helpers shared by the transports. The transports live in
//! `legacy` (HTTP+SSE, 2024-11-05) and `streamable` (Streamable HTTP,
//! 2025-03-26 and later), the MCP methods and tools in `tools`, the test
//! stream in `ticker`, session maps in `sessions` and response bodies in
//! `body`.
//!
//! Routes: `GET /sse` + `POST /messages?sessionId=` (when [`Transport::Sse`]
//! or [`Transport::Both`]), `POST|GET|DELETE /mcp` and the session-less
//! `POST /stateless` (when [`Transport::StreamableHttp`] or
//! [`Transport::Both`]), and always `GET /ticker` and `GET /healthz`.

mod body;
mod legacy;
mod sessions;
mod streamable;
mod ticker;
mod tools;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::body::Body;

/// Which MCP transports the upstream serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Legacy HTTP+SSE (`GET /sse`, `POST /messages`).
    Sse,
    /// Streamable HTTP (`/mcp`).
    StreamableHttp,
    /// Both of the above.
    Both,
}

impl Transport {
    fn sse(self) -> bool {
        matches!(self, Transport::Sse | Transport::Both)
    }

    fn streamable(self) -> bool {
        matches!(self, Transport::StreamableHttp | Transport::Both)
    }
}

/// Configuration of one upstream server.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The slot name returned by the `whoami` tool.
    pub slot: String,
    /// Which transports to serve.
    pub transport: Transport,
    /// `None` = all built-in tools; `Some(list)` = advertise and serve only
    /// these (simulates a broken deploy).
    pub tools: Option<Vec<String>>,
    /// Answer `initialize` with HTTP 500 and a JSON-RPC error body.
    pub fail_initialize: bool,
}

impl UpstreamConfig {
    /// All built-in tools, `initialize` succeeds.
    pub fn new(slot: impl Into<String>, transport: Transport) -> Self {
        Self {
            slot: slot.into(),
            transport,
            tools: None,
            fail_initialize: false,
        }
    }
}

/// Largest accepted request body.
const MAX_BODY: usize = 4 << 20;
/// How long open connections get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub(crate) static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");

/// Shared server state.
pub(crate) struct State {
    pub transport: Transport,
    pub dispatcher: tools::Dispatcher,
    pub legacy: sessions::SessionMap<legacy::Session>,
    pub streamable: sessions::SessionMap<Arc<streamable::Session>>,
    pub shutdown: CancellationToken,
}

/// Serves until `shutdown` is cancelled. On cancel: stop accepting, end open
/// SSE streams, let in-flight requests finish (bounded), return.
pub async fn serve(
    listener: TcpListener,
    cfg: UpstreamConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(State {
        transport: cfg.transport,
        dispatcher: tools::Dispatcher::new(&cfg.slot, cfg.tools.as_deref(), cfg.fail_initialize),
        legacy: sessions::SessionMap::new(),
        streamable: sessions::SessionMap::new(),
        shutdown: shutdown.clone(),
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // No HTTP/1 timer on purpose: with one, hyper's 30 s header-read timeout
    // also closes idle keep-alive connections, which races with a proxy's
    // connection pool. Idle connections stay open until the client closes.
    builder.http2().max_concurrent_streams(4096);
    let builder = Arc::new(builder);
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        slot = %cfg.slot,
        transport = ?cfg.transport,
        "upstream: serving"
    );

    // Every connection task holds a clone of `done_tx`; `recv` returns
    // `None` once all of them have finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Per-connection failures and fd exhaustion: back off briefly.
                tracing::warn!(error = %e, "upstream: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "upstream: set_nodelay failed");
        }
        tokio::spawn(serve_connection(
            builder.clone(),
            stream,
            state.clone(),
            done_tx.clone(),
        ));
    }
    drop(listener);
    drop(done_tx);
    // Sessions' streams end through the cancelled token; drop the maps now.
    for s in state.streamable.drain() {
        s.end();
    }
    drop(state.legacy.drain());
    let _ = done_rx.recv().await;
    tracing::info!("upstream: stopped");
    Ok(())
}

async fn serve_connection(
    builder: Arc<Builder<TokioExecutor>>,
    stream: TcpStream,
    state: Arc<State>,
    _done: mpsc::Sender<()>,
) {
    let shutdown = state.shutdown.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!("upstream: connection did not finish in time, dropping");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "upstream: connection ended with error");
    }
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method();
    match req.uri().path() {
        "/healthz" => match *method {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok"),
            _ => method_not_allowed("GET, HEAD"),
        },
        "/ticker" => match *method {
            Method::GET => match ticker::TickerParams::parse(req.uri().query()) {
                Ok(p) => sse_response(Body::Ticker(Box::new(ticker::Ticker::new(
                    p,
                    state.shutdown.clone(),
                )))),
                Err(msg) => text(StatusCode::BAD_REQUEST, msg),
            },
            _ => method_not_allowed("GET"),
        },
        "/sse" if state.transport.sse() => match *method {
            Method::GET => legacy::open_stream(state),
            _ => method_not_allowed("GET"),
        },
        "/messages" if state.transport.sse() => match *method {
            Method::POST => legacy::post_message(state, req).await,
            _ => method_not_allowed("POST"),
        },
        "/mcp" if state.transport.streamable() => match *method {
            Method::POST => streamable::post(state, req).await,
            Method::GET => streamable::get(state, &req),
            Method::DELETE => streamable::delete(state, &req),
            _ => method_not_allowed("GET, POST, DELETE"),
        },
        "/stateless" if state.transport.streamable() => match *method {
            Method::POST => streamable::post_stateless(state, req).await,
            _ => method_not_allowed("POST"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Reads the whole request body, up to [`MAX_BODY`].
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Err(e) => {
            tracing::debug!(error = %e, "upstream: reading request body failed");
            Err(text(StatusCode::BAD_REQUEST, "could not read request body"))
        }
    }
}

/// `key=value` pairs of a query string (no percent-decoding: every value
/// this server reads is plain ASCII).
pub(crate) fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

pub(crate) fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query_pairs(query).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// `true` if any `Accept` value mentions `text/event-stream`.
pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), b"text/event-stream").is_some())
}

fn with_type(status: StatusCode, body: Body, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, Body::full(body), "text/plain; charset=utf-8")
}

pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    with_type(status, Body::full(body), "application/json")
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

pub(crate) fn sse_response(body: Body) -> Response<Body> {
    let mut resp = with_type(StatusCode::OK, body, "text/event-stream");
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    resp
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = Some("a=1&sessionId=abc&flag&&b=");
        assert_eq!(query_param(q, "sessionId"), Some("abc"));
        assert_eq!(query_param(q, "flag"), Some(""));
        assert_eq!(query_param(q, "b"), Some(""));
        assert_eq!(query_param(q, "zz"), None);
        assert_eq!(query_param(None, "a"), None);
    }

    #[test]
    fn accept_header() {
        let mut h = HeaderMap::new();
        assert!(!accepts_event_stream(&h));
        h.append(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        assert!(!accepts_event_stream(&h));
        h.append(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert!(accepts_event_stream(&h));
    }

    use http_body_util::Full;

    async fn start(
        cfg: UpstreamConfig,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(listener, cfg, token.clone()));
        (addr, token, task)
    }

    async fn client(
        addr: std::net::SocketAddr,
    ) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        send
    }

    fn request(method: Method, uri: &str, body: &'static str) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
        *req.method_mut() = method;
        *req.uri_mut() = uri.parse().expect("uri");
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
        req
    }

    /// Legacy session end to end: endpoint event, POST, reply on the stream,
    /// then shutdown ends the stream and `serve` returns.
    #[tokio::test]
    async fn legacy_roundtrip_and_shutdown() {
        let (addr, token, task) = start(UpstreamConfig::new("blue", Transport::Both)).await;
        let mut sse = client(addr).await;
        let resp = sse
            .send_request(request(Method::GET, "/sse", ""))
            .await
            .expect("GET /sse");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/event-stream");
        let mut body = resp.into_body();
        let first = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        let first = std::str::from_utf8(&first).expect("utf8");
        let endpoint = first
            .strip_prefix("event: endpoint\ndata: ")
            .and_then(|s| s.strip_suffix("\n\n"))
            .expect("endpoint event")
            .to_owned();
        assert!(endpoint.starts_with("/messages?sessionId="));

        let mut post = client(addr).await;
        let resp = post
            .send_request(request(
                Method::POST,
                &endpoint,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#,
            ))
            .await
            .expect("POST");
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let ev = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(
            &ev[..],
            &b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"blue\"}],\"isError\":false}}\n\n"[..]
        );

        token.cancel();
        assert!(body.frame().await.is_none(), "stream ends on shutdown");
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("serve returns")
            .expect("join")
            .expect("serve ok");
    }

    /// `POST /stateless` answers a `tools/call` with no session, issues none,
    /// and is served only with the Streamable HTTP transport.
    #[tokio::test]
    async fn stateless_call() {
        let (addr, token, task) = start(UpstreamConfig::new("green", Transport::Both)).await;
        let mut c = client(addr).await;
        let resp = c
            .send_request(request(
                Method::POST,
                "/stateless",
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami"}}"#,
            ))
            .await
            .expect("POST /stateless");
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get(&MCP_SESSION_ID).is_none());
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            &body[..],
            &br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"green"}],"isError":false}}"#[..]
        );
        let resp = c
            .send_request(request(Method::GET, "/stateless", ""))
            .await
            .expect("GET /stateless");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        let _ = resp.into_body().collect().await;
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("serve returns");

        let (addr, token, task) = start(UpstreamConfig::new("g", Transport::Sse)).await;
        let mut c = client(addr).await;
        let resp = c
            .send_request(request(Method::POST, "/stateless", "{}"))
            .await
            .expect("POST /stateless");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let _ = resp.into_body().collect().await;
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("serve returns");
    }

    #[tokio::test]
    async fn routes_and_transport_gating() {
        let (addr, token, task) = start(UpstreamConfig::new("g", Transport::Sse)).await;
        let mut c = client(addr).await;
        for (method, uri, status) in [
            (Method::GET, "/healthz", StatusCode::OK),
            (Method::POST, "/mcp", StatusCode::NOT_FOUND),
            (Method::GET, "/nope", StatusCode::NOT_FOUND),
            (Method::POST, "/messages", StatusCode::BAD_REQUEST),
            (
                Method::POST,
                "/messages?sessionId=0123456789abcdef0123456789abcdef",
                StatusCode::NOT_FOUND,
            ),
            (Method::GET, "/ticker?count=x", StatusCode::BAD_REQUEST),
        ] {
            let resp = c
                .send_request(request(method.clone(), uri, "{}"))
                .await
                .expect("request");
            assert_eq!(resp.status(), status, "{method} {uri}");
            let _ = resp.into_body().collect().await;
        }
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("serve returns");
    }
}
