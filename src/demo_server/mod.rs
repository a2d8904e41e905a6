//! The built-in demo MCP server (`mcpflip upstream`) used by the demo, the tests and
//! the benchmarks: a small, fast MCP server on hyper 1.x (HTTP/1.1 and h2c).
//!
//! This file owns the public API ([`Transport`], [`ServerConfig`],
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
//!
//! Every response names the slot that made it in `X-Served-By` (as `whoami`
//! does in a tool result): a client behind a proxy can tell which slot a
//! stream or an error page came from before any body arrives, which the soak
//! benchmark needs to attribute a broken stream to the slot it killed.

mod body;
mod legacy;
mod reply;
mod sessions;
mod streamable;
mod ticker;
mod tools;
mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::body::Body;
use self::reply::{method_not_allowed, sse_response, text};

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
pub struct ServerConfig {
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

impl ServerConfig {
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

/// How long open connections get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The response header that names the slot (`X-Served-By: blue`).
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// Shared server state: each transport owns its sessions.
struct State {
    transport: Transport,
    /// The slot's name as a header value (`None` when it is not one).
    served_by: Option<HeaderValue>,
    legacy: legacy::Legacy,
    streamable: streamable::Streamable,
    shutdown: CancellationToken,
}

/// Serves until `shutdown` is cancelled. On cancel: stop accepting, end open
/// SSE streams, let in-flight requests finish (bounded), return.
pub async fn serve(
    listener: TcpListener,
    cfg: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let dispatcher = Arc::new(tools::Dispatcher::new(
        &cfg.slot,
        cfg.tools.as_deref(),
        cfg.fail_initialize,
    ));
    let state = Arc::new(State {
        transport: cfg.transport,
        served_by: HeaderValue::from_str(&cfg.slot).ok(),
        legacy: legacy::Legacy::new(Arc::clone(&dispatcher), shutdown.clone()),
        streamable: streamable::Streamable::new(dispatcher, shutdown.clone()),
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
        "demo server: serving"
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
                tracing::warn!(error = %e, "demo server: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "demo server: set_nodelay failed");
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
    state.streamable.end_all();
    state.legacy.end_all();
    let _ = done_rx.recv().await;
    tracing::info!("demo server: stopped");
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
        async move {
            let mut resp = route(&state, req).await;
            if let Some(v) = &state.served_by {
                resp.headers_mut().insert(SERVED_BY, v.clone());
            }
            Ok::<_, Infallible>(resp)
        }
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
                    tracing::debug!("demo server: connection did not finish in time, dropping");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "demo server: connection ended with error");
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
            Method::GET => state.legacy.open_stream(),
            _ => method_not_allowed("GET"),
        },
        "/messages" if state.transport.sse() => match *method {
            Method::POST => state.legacy.post_message(req).await,
            _ => method_not_allowed("POST"),
        },
        "/mcp" if state.transport.streamable() => match *method {
            Method::POST => state.streamable.post(req).await,
            Method::GET => state.streamable.get(&req),
            Method::DELETE => state.streamable.delete(&req),
            _ => method_not_allowed("GET, POST, DELETE"),
        },
        "/stateless" if state.transport.streamable() => match *method {
            Method::POST => state.streamable.post_stateless(req).await,
            _ => method_not_allowed("POST"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::wire::{accepts_event_stream, query_param, MCP_SESSION_ID};
    use super::*;
    use bytes::Bytes;
    use http::header::{HeaderValue, CONTENT_TYPE};
    use http::HeaderMap;
    use http_body_util::BodyExt;

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
        cfg: ServerConfig,
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
        let (addr, token, task) = start(ServerConfig::new("blue", Transport::Both)).await;
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
        let (addr, token, task) = start(ServerConfig::new("green", Transport::Both)).await;
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

        let (addr, token, task) = start(ServerConfig::new("g", Transport::Sse)).await;
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
        let (addr, token, task) = start(ServerConfig::new("g", Transport::Sse)).await;
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
            // Every answer, errors and streams alike, names its slot.
            assert_eq!(
                resp.headers().get(SERVED_BY).map(HeaderValue::as_bytes),
                Some(&b"g"[..]),
                "{method} {uri}"
            );
            let _ = resp.into_body().collect().await;
        }
        let resp = c
            .send_request(request(Method::GET, "/ticker?count=1&interval_ms=1", ""))
            .await
            .expect("GET /ticker");
        assert_eq!(
            resp.headers().get(SERVED_BY).map(HeaderValue::as_bytes),
            Some(&b"g"[..])
        );
        let _ = resp.into_body().collect().await;
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("serve returns");
    }
}
