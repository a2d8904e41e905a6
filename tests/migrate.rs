//! Live session migration (issue 16) against recording upstreams: what the
//! new slot receives when a session moves (the replayed `initialize`,
//! `notifications/initialized`, the session-shaping requests in order, then
//! the client's request, all on the new session id), the client's id kept on
//! the way out, `drain --migrate` with ten open streams, and the causes a
//! session cannot move for.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use mcpflip::stats::{LocalResponse, MigrateFailure};
use mcpflip::upstream::UpstreamError;
use serde_json::{json, Value};
use support::mcp::{call_whoami as call, http_client, initialize, open_session as open, post_json};
use support::TestConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What one recording upstream saw: (session id, method or HTTP verb), in order.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, String)>>);

impl Seen {
    fn of(&self, session: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(s, _)| s == session)
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn sessions(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(s, _)| s.clone())
            .collect();
        s.dedup();
        s
    }
}

type Answer = hyper::Response<BoxBody<Bytes, Infallible>>;

fn answer(status: u16, session: Option<&str>, body: Option<Value>) -> Answer {
    let mut b = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    b.body(Full::new(Bytes::from(body)).boxed())
        .expect("answer")
}

/// A Streamable HTTP server with sessions that records every request.
async fn recording(slot: &'static str) -> (u16, Arc<Seen>) {
    let u = upstream(slot).await;
    (u.port, u.seen)
}

/// [`recording`], and a token that takes it down: its port then refuses
/// connections (every answer closes its connection, so none is pooled).
async fn stoppable(slot: &'static str) -> (u16, Arc<Seen>, CancellationToken) {
    let u = upstream(slot).await;
    (u.port, u.seen, u.stop)
}

/// One recording upstream.
struct Upstream {
    port: u16,
    seen: Arc<Seen>,
    /// Takes it down.
    stop: CancellationToken,
    /// Set to `true`: the `held` tool calls answer.
    release: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Answers tool calls on an SSE stream: the priming event (with an id) at
/// once, then the answer as the tool has it (`held`: once released;
/// `never`: not at all; `closed`: the stream ends there, for the client to
/// resume later, as a server that polls does; others: at once).
async fn upstream(slot: &'static str) -> Upstream {
    upstream_at(slot, 0).await
}

/// [`upstream`] on `port` (0: any), as a process started again at its
/// address is.
async fn upstream_at(slot: &'static str, port: u16) -> Upstream {
    let l = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let next = Arc::new(AtomicU32::new(1));
    let log = Arc::clone(&seen);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let release = Arc::new(tokio::sync::watch::Sender::new(false));
    let released = Arc::clone(&release);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stopped.cancelled() => return,
                a = l.accept() => match a { Ok((tcp, _)) => tcp, Err(_) => return },
            };
            let (seen, next, release) = (Arc::clone(&log), Arc::clone(&next), released.subscribe());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let (seen, next, release) =
                        (Arc::clone(&seen), Arc::clone(&next), release.clone());
                    async move { Ok::<_, Infallible>(serve(slot, req, &seen, &next, release).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Upstream {
        port,
        seen,
        stop,
        release,
    }
}

/// An SSE body fed by a channel; it ends when the sender is dropped.
struct Channel(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A tool call answered on an SSE stream (see [`upstream`]).
fn sse_call(
    session: &str,
    msg: &Value,
    result: Value,
    mut release: tokio::sync::watch::Receiver<bool>,
) -> Answer {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = tx.send(Bytes::from(format!(
        "id: {session}-{}\ndata: \n\n",
        msg["id"]
    )));
    let answer = Bytes::from(format!("event: message\ndata: {result}\n\n"));
    match msg["params"]["name"].as_str() {
        Some("held") => {
            tokio::spawn(async move {
                if release.wait_for(|r| *r).await.is_ok() {
                    let _ = tx.send(answer);
                }
            });
        }
        // The stream ends after its priming event (SSE polling).
        Some("closed") => drop(tx),
        // The stream stays open until the proxy lets go of it.
        Some("never") => {
            tokio::spawn(async move { tx.closed().await });
        }
        _ => {
            let _ = tx.send(answer);
        }
    }
    hyper::Response::builder()
        .header("content-type", "text/event-stream")
        .header("mcp-session-id", session)
        .body(Channel(rx).boxed())
        .expect("stream")
}

async fn serve(
    slot: &'static str,
    req: hyper::Request<Incoming>,
    seen: &Seen,
    next: &AtomicU32,
    release: tokio::sync::watch::Receiver<bool>,
) -> Answer {
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let verb = req.method().clone();
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let record = |s: &str, what: &str| {
        seen.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((s.to_owned(), what.to_owned()))
    };
    if verb != hyper::Method::POST {
        let Some(s) = session else {
            return answer(400, None, None);
        };
        if verb == hyper::Method::GET {
            if let Some(id) = last_event_id.as_ref().filter(|id| !id.ends_with("-ev")) {
                // A call's stream resumed (polling): one more event, still
                // no answer, and the stream ends again.
                record(&s, &format!("GET last-event-id={id}"));
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let _ = tx.send(Bytes::from(format!("id: {id}+\ndata: \n\n")));
                return hyper::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Channel(rx).boxed())
                    .expect("stream");
            }
            match &last_event_id {
                Some(id) => record(&s, &format!("GET last-event-id={id}")),
                None => record(&s, "GET"),
            }
            // One event with an id, then silence until the proxy lets go.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let _ = tx.send(Bytes::from(format!("id: {s}-ev\ndata: \n\n")));
            tokio::spawn(async move { tx.closed().await });
            return hyper::Response::builder()
                .header("content-type", "text/event-stream")
                .body(Channel(rx).boxed())
                .expect("stream");
        }
        record(&s, verb.as_str());
        return answer(200, None, None);
    }
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = msg["method"].as_str().unwrap_or("").to_owned();
    if method == "initialize" {
        let s = format!("{slot}-{}", next.fetch_add(1, Ordering::Relaxed));
        record(&s, &method);
        let result = json!({"jsonrpc":"2.0","id":msg["id"],"result":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "serverInfo":{"name":slot,"version":"1"}}});
        return answer(200, Some(&s), Some(result));
    }
    let Some(s) = session else {
        return answer(400, None, None);
    };
    record(&s, &method);
    if msg.get("id").is_none() {
        return answer(202, None, None);
    }
    // Like the SDK servers, every answer names the session.
    let result = json!({"jsonrpc":"2.0","id":msg["id"],"result":{"slot":slot,"session":s}});
    if matches!(
        msg["params"]["name"].as_str(),
        Some("held" | "never" | "closed")
    ) {
        return sse_call(&s, &msg, result, release);
    }
    answer(200, Some(&s), Some(result))
}

fn request(id: u32, method: &str, params: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params})
}

fn config(dir: &std::path::Path, blue: u16, green: u16, migrate: &str) -> TestConfig {
    TestConfig::blue_green(dir, blue, green)
        .set_str("drain", "migrate", migrate)
        .set_str("drain", "deadline", "60s")
}

/// Lets green take new sessions beside blue (where every move below starts).
async fn green_serves_too(socket: &std::path::Path) {
    let r = support::ctl(socket, "weights blue=100 green=1").await;
    assert!(r.get("error").is_none(), "{r}");
}

/// A GET that opens session `sid`'s stream: `uri` is the proxy's URL, or a
/// path with `host` on a connection of the test's own.
fn stream_get(uri: &str, host: Option<&str>, sid: &str) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::get(uri);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    req.header("mcp-session-id", sid)
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .expect("get")
}

/// A proxy started on [`config`] (as `edit` leaves it), with its public URL,
/// its control socket, a client, and the directory that holds its config,
/// state and socket (kept until the test ends).
type Rig = (
    mcpflip::run::Running,
    String,
    std::path::PathBuf,
    support::mcp::HttpClient,
    tempfile::TempDir,
);

async fn rig(
    blue: u16,
    green: u16,
    migrate: &str,
    edit: impl FnOnce(TestConfig) -> TestConfig,
) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = support::start(edit(config(dir.path(), blue, green, migrate)).load()).await;
    let url = format!("http://{}/mcp", proxy.public_addr);
    let socket = dir.path().join("control.sock");
    (proxy, url, socket, http_client(), dir)
}

#[tokio::test]
async fn a_session_moves_with_its_shaping_requests_in_order_and_keeps_its_id() {
    let (blue, blue_seen) = recording("blue").await;
    let (green, green_seen) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| c).await;

    let sid = open(&client, &url).await;
    for (id, method, params) in [
        (2, "logging/setLevel", json!({"level":"debug"})),
        (3, "resources/subscribe", json!({"uri":"file:///a"})),
    ] {
        let (status, _, _) =
            post_json(&client, &url, Some(&sid), request(id, method, params)).await;
        assert_eq!(status, 200, "{method}");
    }
    let (_, r) = call(&client, &url, &sid, 4).await;
    assert_eq!(r["result"]["slot"], "blue");
    assert_eq!(proxy.proxy_stats.captured_sessions(), 1);
    assert!(proxy.proxy_stats.captured_bytes() > initialize().to_string().len() as u64);

    // Green serves; blue is drained with --migrate: the session moves.
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    let (status, r) = call(&client, &url, &sid, 5).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["slot"], "green", "{r}");
    let new = r["result"]["session"].as_str().expect("green's session");
    assert_eq!(
        green_seen.of(new),
        [
            "initialize",
            "notifications/initialized",
            "logging/setLevel",
            "resources/subscribe",
            "tools/call"
        ],
        "what green got for the moved session, in order"
    );
    // Later calls stay on the moved session; nothing more goes to blue.
    let before = blue_seen.0.lock().map(|v| v.len()).unwrap_or(0);
    let (_, r) = call(&client, &url, &sid, 6).await;
    assert_eq!(r["result"]["session"], new);
    assert_eq!(blue_seen.0.lock().map(|v| v.len()).unwrap_or(0), before);
    assert_eq!(
        proxy.proxy_stats.migrated(),
        1,
        "one replay, not one per call"
    );

    // A DELETE ends the session: it is forgotten, and reaches green under its new id.
    let del = http::Request::delete(&url)
        .header("mcp-session-id", &sid)
        .body(Full::new(Bytes::new()))
        .expect("delete");
    let resp = client.request(del).await.expect("delete answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        green_seen.of(new).last().map(String::as_str),
        Some("DELETE")
    );
    assert_eq!(proxy.proxy_stats.captured_sessions(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn drain_migrate_ends_ten_open_streams_at_once_and_every_session_moves() {
    let (blue, _blue_seen) = recording("blue").await;
    let (green, green_seen) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| c).await;

    let mut sessions = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..10 {
        let sid = open(&client, &url).await;
        let get = stream_get(&url, None, &sid);
        let resp = client.request(get).await.expect("stream opens");
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(resp.into_body().collect()));
        sessions.push(sid);
    }
    support::until("ten streams open on blue", || {
        proxy
            .controller
            .tables
            .load()
            .get("blue")
            .is_some_and(|s| s.stats.live_streams() == 10)
    })
    .await;
    green_serves_too(&socket).await;
    // The deadline is 60 s: a drain that ends before it was not waiting for it.
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert_eq!(r["forced"], 10, "{r}");
    assert!(
        r["drained_after_ms"].as_u64().is_some_and(|ms| ms < 60_000),
        "{r}"
    );
    for s in streams {
        s.await.expect("join").expect("each stream ended cleanly");
    }
    for (i, sid) in sessions.iter().enumerate() {
        let (status, r) = call(&client, &url, sid, 10 + i as u32).await;
        assert_eq!(
            (status, r["result"]["slot"].clone()),
            (200, json!("green")),
            "{r}"
        );
    }
    assert_eq!(green_seen.sessions().len(), 10);
    assert_eq!(proxy.proxy_stats.migrated(), 10);
    let status = support::ctl(&socket, "status").await;
    assert_eq!(status["migration"]["migrated"], 10, "{status}");
    assert_eq!(status["migration"]["captured_sessions"], 10, "{status}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_slot_refusing_connections_moves_its_sessions_or_names_the_cause() {
    let (blue, _b, blue_stop) = stoppable("blue").await;
    let (green, _g) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| c).await;
    let sid = open(&client, &url).await;
    // Blue's process is gone (its port refuses) and nothing else serves:
    // nowhere to go, and the call was never sent: the slot's 502.
    blue_stop.cancel();
    let (status, _) = call(&client, &url, &sid, 2).await;
    assert_eq!(status, 502);
    assert_eq!(
        proxy.proxy_stats.migrate_failures(MigrateFailure::NoSlot),
        1
    );
    // Green serves now: the next call moves the session there, blue still
    // "serving" in the table (nobody retired it).
    let r = support::ctl(&socket, "weights green=100").await;
    assert!(r.get("error").is_none(), "{r}");
    let (status, r) = call(&client, &url, &sid, 3).await;
    // Sent again as it was, but for its session id: green's own, the one
    // the replayed `initialize` got there.
    assert_eq!(
        (
            status,
            r["result"]["slot"].clone(),
            r["result"]["session"].clone()
        ),
        (200, json!("green"), json!("green-1")),
        "{r}"
    );
    assert_eq!(proxy.proxy_stats.migrated(), 1);
    // Each refused connection is blue's error once, moved or not.
    let refusals = proxy
        .controller
        .tables
        .load()
        .get("blue")
        .map(|b| b.stats.upstream_errors(UpstreamError::Connect));
    assert_eq!(refusals, Some(2));
    // The moved session goes on at green without asking blue first (a
    // slot that does not answer its connections would cost each request
    // its connect timeout), and stays there once blue's process is back at
    // its address (with none of its sessions). Before, each request tried
    // blue first, and the first to reach the new process went there (an
    // SDK server answers it 404: the session, alive at green, ended, and
    // its capture was forgotten).
    let (status, r) = call(&client, &url, &sid, 4).await;
    assert_eq!(
        (status, &r["result"]["slot"]),
        (200, &json!("green")),
        "{r}"
    );
    let tried = |p: &mcpflip::run::Running| {
        p.controller
            .tables
            .load()
            .get("blue")
            .map(|b| b.stats.upstream_errors(UpstreamError::Connect))
    };
    assert_eq!(tried(&proxy), Some(2), "blue was not asked again");
    let again = upstream_at("blue", blue).await;
    let (status, r) = call(&client, &url, &sid, 5).await;
    assert_eq!(
        (status, &r["result"]["session"]),
        (200, &json!("green-1")),
        "{r}"
    );
    assert!(
        again.seen.sessions().is_empty(),
        "blue's new process was asked"
    );
    assert_eq!(proxy.proxy_stats.captured_sessions(), 1);
    // A session the proxy never saw begin (created before it started) whose
    // slot is retired: the SDK-style 404, counted as not captured.
    let r = support::ctl(&socket, "weights blue=0").await;
    assert!(r.get("error").is_none(), "{r}");
    let r = support::ctl(&socket, "retire blue").await;
    assert!(r.get("error").is_none(), "{r}");
    let (status, _) = call(&client, &url, "mf1.blue.0.blue-99", 4).await;
    assert_eq!(status, 404);
    assert_eq!(
        proxy
            .proxy_stats
            .migrate_failures(MigrateFailure::NotCaptured),
        1
    );
    proxy.shutdown().await;
}

/// A session that only listens on its GET stream, with no request for
/// longer than `migrate_idle`, is in use: it is kept, and moves at the cut.
/// Before, it was forgotten after `migrate_idle` (2 s here, 1 h by default:
/// a client that keeps its session open for hours and calls a tool now and
/// then), and its first request after the cut got the 404 on which an MCP
/// client ends its session. Once its stream is closed it idles out as any
/// session does.
#[tokio::test]
async fn a_session_listening_on_its_stream_is_in_use_however_long_since_its_last_request() {
    let (blue, _b) = recording("blue").await;
    let (green, _g) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| {
        c.set_str("drain", "migrate_idle", "2s")
    })
    .await;
    let sid = open(&client, &url).await;
    let idle = open(&client, &url).await;
    let resp = client
        .request(stream_get(&url, None, &sid))
        .await
        .expect("stream opens");
    assert_eq!(resp.status(), 200);
    let stream = tokio::spawn(resp.into_body().collect());
    let blue_stats = support::stats(&proxy, "blue");
    support::until("the stream open on blue", || blue_stats.live_streams() == 1).await;
    // Past migrate_idle and its sweeps (every second): the session with no
    // stream is forgotten, the listening one is kept.
    support::until("the idle session forgotten", || {
        proxy.proxy_stats.captured_sessions() == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(proxy.proxy_stats.captured_sessions(), 1);

    green_serves_too(&socket).await;
    for line in ["drain blue", "drain blue --migrate"] {
        let r = support::ctl(&socket, line).await;
        assert!(r.get("error").is_none(), "{line}: {r}");
    }
    support::until("blue's stream ended by the cut", || stream.is_finished()).await;
    let (status, r) = call(&client, &url, &sid, 2).await;
    assert_eq!(
        (status, &r["result"]["slot"]),
        (200, &json!("green")),
        "{r}"
    );
    let (status, _) = call(&client, &url, &idle, 3).await;
    assert_eq!(status, 404, "the session with no stream idled out");
    // Its stream is gone: it idles out too (a stream's hold is let go).
    support::until("the moved session forgotten once idle", || {
        proxy.proxy_stats.captured_sessions() == 0
    })
    .await;
    proxy.shutdown().await;
}

/// mcpflip's own MCP server as `slot` on `port` (0: any), as a process of
/// its own would be: its port, and its task (ended once `stop` is
/// cancelled and its connections closed).
async fn demo_at(
    slot: &str,
    port: u16,
    stop: &CancellationToken,
) -> (u16, tokio::task::JoinHandle<std::io::Result<()>>) {
    use mcpflip::demo_server::{ServerConfig, Transport};
    let l = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let cfg = ServerConfig::new(slot, Transport::Both);
    (
        port,
        tokio::spawn(mcpflip::demo_server::serve(l, cfg, stop.clone())),
    )
}

/// `[drain] migrate_on_404`: blue's server restarts on its own at its
/// address (a crash and systemd's restart: the control plane saw nothing)
/// and answers the sessions it lost 404. With the key, a captured session
/// is replayed there and its request sent again, the client keeping its
/// id, and again after a second restart; a session the proxy never
/// captured still gets its 404. Without the key (the default) the 404
/// passes, as the spec has it for a session its server ended.
#[tokio::test]
async fn with_migrate_on_404_a_session_its_restarted_server_lost_goes_on() {
    let whoami = |r: &Value| r["result"]["content"][0]["text"].clone();
    for on in [false, true] {
        let stop = CancellationToken::new();
        let first = stop.child_token();
        let (blue, first_run) = demo_at("blue", 0, &first).await;
        let (green, _green) = demo_at("green", 0, &stop).await;
        let (proxy, url, _socket, client, _dir) = rig(blue, green, "replay", |c| {
            c.set("drain", "migrate_on_404", on.to_string())
        })
        .await;
        let sid = open(&client, &url).await;
        let (status, r) = call(&client, &url, &sid, 2).await;
        assert_eq!((status, whoami(&r)), (200, json!("blue")), "{r}");

        // Blue's process is gone and started again at its address.
        first.cancel();
        first_run.await.expect("join").expect("blue stopped");
        let second = stop.child_token();
        let (_, second_run) = demo_at("blue", blue, &second).await;
        let (status, r) = call(&client, &url, &sid, 3).await;
        if !on {
            assert_eq!(status, 404, "{r}");
            assert_eq!(proxy.proxy_stats.migrated(), 0);
            proxy.shutdown().await;
            stop.cancel();
            continue;
        }
        assert_eq!((status, whoami(&r)), (200, json!("blue")), "{r}");
        assert_eq!(proxy.proxy_stats.migrated(), 1);
        let (status, _) = call(&client, &url, &sid, 4).await;
        assert_eq!(status, 200);
        assert_eq!(proxy.proxy_stats.migrated(), 1, "moved once");

        // Once more: the session's new upstream id is lost in turn.
        second.cancel();
        second_run.await.expect("join").expect("blue stopped");
        let (_, _third) = demo_at("blue", blue, &stop).await;
        let (status, r) = call(&client, &url, &sid, 5).await;
        assert_eq!((status, whoami(&r)), (200, json!("blue")), "{r}");
        assert_eq!(proxy.proxy_stats.migrated(), 2);

        // An id the proxy never captured: the slot's 404, no replay.
        let (status, _) = call(&client, &url, "mf1.blue.1.made-up", 6).await;
        assert_eq!(status, 404);
        assert_eq!(proxy.proxy_stats.migrated(), 2);
        proxy.shutdown().await;
        stop.cancel();
    }
}

/// A slot that answers every request 503 (an overloaded or starting
/// server); taken down by the token, its port then refusing connections.
async fn failing() -> (u16, CancellationToken) {
    let l = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stopped.cancelled() => return,
                a = l.accept() => match a { Ok((tcp, _)) => tcp, Err(_) => return },
            };
            tokio::spawn(async move {
                let svc = service_fn(|_: hyper::Request<Incoming>| async {
                    Ok::<_, Infallible>(answer(503, None, None))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (port, stop)
}

/// A session whose slot is retired, moved while the serving slot fails (a
/// 503 to the replayed `initialize`, then its port refusing connections),
/// is answered 502 (`session_not_moved`) each time, and moves on the
/// request after the slot is back. Before, each was answered 404, on which
/// an MCP client ends its session, though nothing of it was lost.
#[tokio::test]
async fn a_session_whose_move_fails_on_the_serving_slot_is_not_told_it_is_gone() {
    let (blue, _b) = recording("blue").await;
    let (green, green_down) = failing().await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| c).await;
    let sid = open(&client, &url).await;
    for line in ["weights blue=0 green=100", "retire blue"] {
        let r = support::ctl(&socket, line).await;
        assert!(r.get("error").is_none(), "{line}: {r}");
    }
    let failed = || proxy.proxy_stats.migrate_failures(MigrateFailure::Upstream);
    // Green answers 503, then its port refuses: each time a 502.
    for (n, id) in [(1, 2), (2, 3)] {
        if n == 2 {
            green_down.cancel();
        }
        let (status, r) = call(&client, &url, &sid, id).await;
        assert_eq!(
            (status, &r["error"]),
            (502, &json!("session_not_moved")),
            "{r}"
        );
        assert_eq!(failed(), n);
    }
    assert_eq!(
        proxy
            .proxy_stats
            .local_responses(LocalResponse::SessionNotMoved),
        2
    );
    // Green's process is back at its address: the same session moves.
    let _green = upstream_at("green", green).await;
    let (status, r) = call(&client, &url, &sid, 4).await;
    assert_eq!(
        (status, &r["result"]["slot"], &r["result"]["session"]),
        (200, &json!("green"), &json!("green-1")),
        "{r}"
    );
    assert_eq!(proxy.proxy_stats.migrated(), 1);
    assert_eq!(
        proxy
            .proxy_stats
            .migrate_failures(MigrateFailure::NotCaptured),
        0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn with_migration_off_a_session_of_a_gone_slot_gets_the_404() {
    let (blue, _b) = recording("blue").await;
    let (green, _g) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "off", |c| c).await;
    let sid = open(&client, &url).await;
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    let r = support::ctl(&socket, "retire blue").await;
    assert!(r.get("error").is_none(), "{r}");
    let (status, _) = call(&client, &url, &sid, 2).await;
    assert_eq!(
        status, 404,
        "the behaviour before migration, kept when it is off"
    );
    assert_eq!(proxy.proxy_stats.captured_sessions(), 0, "nothing captured");
    proxy.shutdown().await;
}

/// The JSON-RPC answer (`result` or `error`) in an SSE body.
fn sse_answer(body: &str) -> Value {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m.get("result").is_some() || m.get("error").is_some())
        .unwrap_or(Value::Null)
}

/// Starts a tool call whose answer comes on an SSE stream; the task yields
/// the whole body.
fn start_call(
    client: &support::mcp::HttpClient,
    url: &str,
    sid: &str,
    id: u32,
    tool: &str,
) -> tokio::task::JoinHandle<String> {
    let req = http::Request::post(url)
        .header("mcp-session-id", sid)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from(
            request(id, "tools/call", json!({"name": tool})).to_string(),
        )))
        .expect("call");
    let client = client.clone();
    tokio::spawn(async move {
        let resp = client.request(req).await.expect("call answered");
        assert_eq!(resp.status(), 200);
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("the stream ends cleanly");
        String::from_utf8_lossy(&body.to_bytes()).into_owned()
    })
}

/// A call in flight when its slot is cut is not failed for a cut that came
/// between its first event and its answer: it has `migrate_call_grace` to
/// answer. A call that does not answer within the grace gets the JSON-RPC
/// error for its id. (The SDK test's 100 ms ticker failed now and then on a
/// call that was a few milliseconds from its answer at the cut.)
#[tokio::test]
async fn a_call_in_flight_at_the_cut_may_answer_within_its_grace() {
    let blue = upstream("blue").await;
    let (green, _g) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue.port, green, "replay", |c| {
        c.set_str("drain", "migrate_call_grace", "3s")
    })
    .await;
    let sid = open(&client, &url).await;

    let held = start_call(&client, &url, &sid, 2, "held");
    let never = start_call(&client, &url, &sid, 3, "never");
    let blue_stats = support::stats(&proxy, "blue");
    support::until("both calls streaming from blue", || {
        blue_stats.live_streams() == 2
    })
    .await;
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate").await;
    assert!(r.get("error").is_none(), "{r}");
    // The cut has happened (blue's streams are forced until they end, or the
    // held call's stream ended already); only now does blue answer it.
    support::until("blue's streams forced", || {
        blue_stats.force_token().is_cancelled() || held.is_finished()
    })
    .await;
    blue.release.send_replace(true);

    let body = held.await.expect("join");
    let a = sse_answer(&body);
    assert_eq!(
        a["result"]["slot"], "blue",
        "the held call's answer: {body}"
    );
    // The unanswered call's error, after its grace.
    assert_interrupted(&never.await.expect("join"), 3);
    assert_eq!(proxy.proxy_stats.interrupted(), 1);
    // The session itself moved at the cut.
    let (status, r) = call(&client, &url, &sid, 4).await;
    assert_eq!(
        (status, r["result"]["slot"].clone()),
        (200, json!("green")),
        "{r}"
    );
    proxy.shutdown().await;
}

/// A call whose POST stream its slot ended before the answer (SSE polling:
/// "resume me later"), resumed by the client only after its session moved:
/// the resumption gets the call's JSON-RPC error at once, as the rest of that
/// stream. Before, the resuming GET opened a fresh stream on the new session,
/// which never had the call, and the client waited for its request timeout.
#[tokio::test]
async fn a_call_resumed_after_its_session_moved_gets_its_error_not_silence() {
    let blue = upstream("blue").await;
    let (green, green_seen) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue.port, green, "replay", |c| c).await;
    let sid = open(&client, &url).await;
    let last = polled_call(&client, &url, &sid, 2).await;
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");

    assert_interrupted(&resume(&client, &url, &sid, &last).await, 2);
    assert_eq!(proxy.proxy_stats.interrupted(), 1);
    let green_session = green_seen.sessions().first().cloned().expect("moved");
    assert!(
        !green_seen
            .of(&green_session)
            .iter()
            .any(|m| m.starts_with("GET")),
        "green was not asked for a call it never had: {:?}",
        green_seen.of(&green_session)
    );

    // Once only: the same resumption again opens a live stream on green.
    let (new_id, stream) = get_stream(&client, &url, &sid, Some(&last)).await;
    assert_eq!(new_id, format!("mf1.green.1.{green_session}-ev"));
    drop(stream);
    assert_eq!(proxy.proxy_stats.interrupted(), 1);
    let (status, r) = call(&client, &url, &sid, 3).await;
    assert_eq!((status, r["result"]["slot"].clone()), (200, json!("green")));
    proxy.shutdown().await;
}

/// The value of the first `id:` field of an SSE body.
fn event_id(body: &str, what: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("{what}: none in {body:?}"))
        .to_owned()
}

/// Asserts that an SSE body answers call `id` with the proxy's JSON-RPC error.
fn assert_interrupted(body: &str, id: u32) {
    let a = sse_answer(body);
    assert_eq!(a["id"], id, "{body}");
    assert!(
        a["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("interrupted by a deploy")),
        "the call's error: {body}"
    );
}

/// Makes call `id` a polled one: its slot ends the stream after the
/// priming event (the `closed` tool). That event's id.
async fn polled_call(client: &support::mcp::HttpClient, url: &str, sid: &str, id: u32) -> String {
    let body = start_call(client, url, sid, id, "closed")
        .await
        .expect("join");
    assert_eq!(sse_answer(&body), Value::Null, "no answer yet: {body}");
    event_id(&body, "the priming event's id")
}

/// The whole body of a GET of session `sid` that resumes from `last`; it
/// must end within 10 s.
async fn resume(client: &support::mcp::HttpClient, url: &str, sid: &str, last: &str) -> String {
    let req = http::Request::get(url)
        .header("mcp-session-id", sid)
        .header("accept", "text/event-stream")
        .header("last-event-id", last)
        .body(Full::new(Bytes::new()))
        .expect("get");
    let wait = std::time::Duration::from_secs(10);
    let resp = tokio::time::timeout(wait, client.request(req))
        .await
        .expect("the resumption is answered")
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(wait, resp.into_body().collect())
        .await
        .expect("the resumed stream ends (with the call's answer, or for polling), not silence")
        .expect("cleanly")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// A polled call resumed on its own slot, which ends the resumed stream
/// unanswered again with a new event id, then resumed once more only after
/// the session moved: the call's error comes, keyed by the resumed stream's
/// last id. Before, only the POST's own stream was remembered.
#[tokio::test]
async fn a_call_resumed_on_its_slot_and_again_after_the_move_gets_its_error() {
    let blue = upstream("blue").await;
    let (green, _g) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue.port, green, "replay", |c| c).await;
    let sid = open(&client, &url).await;
    let first = polled_call(&client, &url, &sid, 2).await;
    // Resumed on blue: one more event, and the stream ends unanswered again.
    let body = resume(&client, &url, &sid, &first).await;
    assert_eq!(sse_answer(&body), Value::Null, "no answer yet: {body}");
    let second = event_id(&body, "the resumed stream's event id");
    assert_eq!(second, format!("{first}+"));
    let (blue_session, _) = first.rsplit_once('-').expect("<session>-<call id>");
    assert!(
        blue.seen
            .of(blue_session)
            .contains(&format!("GET last-event-id={first}")),
        "blue resumed the call's stream"
    );

    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    assert_interrupted(&resume(&client, &url, &sid, &second).await, 2);
    // The first stream's id was replaced, not kept beside it.
    let (_, stream) = get_stream(&client, &url, &sid, Some(&first)).await;
    drop(stream);
    assert_eq!(proxy.proxy_stats.interrupted(), 1);
    proxy.shutdown().await;
}

/// The same on a session that moved already: a polled call on the slot it
/// moved to (its event ids carry that slot's tag), resumed there and ended
/// unanswered again, then resumed once more after the session moved on to
/// a third slot: the call's error comes.
#[tokio::test]
async fn a_moved_sessions_call_resumed_on_its_slot_and_again_after_a_second_move_gets_its_error() {
    let (blue, _b) = recording("blue").await;
    let (green, _g) = recording("green").await;
    let (red, _r) = recording("red").await;
    let (proxy, url, socket, client, _dir) =
        rig(blue, green, "replay", |c| c.slot("red", red, 0)).await;
    let sid = open(&client, &url).await;
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    let first = polled_call(&client, &url, &sid, 2).await;
    assert!(first.starts_with("mf1.green."), "a call on green: {first}");
    let body = resume(&client, &url, &sid, &first).await;
    assert_eq!(sse_answer(&body), Value::Null, "no answer yet: {body}");
    let second = event_id(&body, "the resumed stream's event id");
    assert_eq!(second, format!("{first}+"), "resumed on green, tagged");

    let r = support::ctl(&socket, "weights green=1 red=100").await;
    assert!(r.get("error").is_none(), "{r}");
    let r = support::ctl(&socket, "drain green --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    assert_interrupted(&resume(&client, &url, &sid, &second).await, 2);
    assert_eq!(proxy.proxy_stats.interrupted(), 1);
    let (status, r) = call(&client, &url, &sid, 3).await;
    assert_eq!((status, r["result"]["slot"].clone()), (200, json!("red")));
    proxy.shutdown().await;
}

/// `drain --migrate` on a slot already draining (a deploy waiting for a long
/// session) cuts that drain now rather than at its deadline (60 s here):
/// its stream ends, the drain ends, the session moves. Before, the running
/// drain kept its deadline and `--migrate` changed nothing.
#[tokio::test]
async fn drain_migrate_cuts_a_drain_already_running() {
    let (blue, _b) = recording("blue").await;
    let (green, _g) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| c).await;
    let sid = open(&client, &url).await;
    let get = stream_get(&url, None, &sid);
    let resp = client.request(get).await.expect("stream opens");
    assert_eq!(resp.status(), 200);
    let stream = tokio::spawn(resp.into_body().collect());
    let blue_stats = support::stats(&proxy, "blue");
    support::until("the stream open on blue", || blue_stats.live_streams() == 1).await;
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue").await;
    assert!(r.get("error").is_none(), "{r}");
    assert!(
        !blue_stats.is_cut(),
        "a drain with a deadline does not cut at once"
    );

    let r = support::ctl(&socket, "drain blue --migrate").await;
    assert!(r.get("error").is_none(), "{r}");
    support::until("blue's stream ended by the cut", || stream.is_finished()).await;
    stream
        .await
        .expect("join")
        .expect("the stream ended cleanly");
    let r = support::ctl(&socket, "wait blue").await;
    assert_eq!(r["forced"], 1, "{r}");
    let (status, r) = call(&client, &url, &sid, 2).await;
    assert_eq!(
        (status, r["result"]["slot"].clone()),
        (200, json!("green")),
        "{r}"
    );
    proxy.shutdown().await;
}

/// A cut ends an HTTP/1.1 stream at an event boundary and leaves its
/// connection open: the client's next request on it (the session's next
/// call, which the new slot answers) is served. Before, the cut closed the
/// connection right after the stream's end, whose head had said keep-alive:
/// a client that sent its next request before it saw the close lost it
/// (hyper's `IncompleteMessage`, httpx's `RemoteProtocolError`), and a
/// migrated session's next call died for nothing.
#[tokio::test]
async fn a_cut_stream_leaves_its_http1_connection_open_for_the_next_request() {
    let (blue, _b) = recording("blue").await;
    let (green, _g) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| c).await;
    let sid = open(&client, &url).await;
    let tcp = tokio::net::TcpStream::connect(proxy.public_addr)
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h1 handshake");
    let driver = tokio::spawn(conn);
    let host = proxy.public_addr.to_string();
    let get = stream_get("/mcp", Some(&host), &sid);
    let resp = send.send_request(get).await.expect("stream opens");
    assert_eq!(resp.status(), 200);
    let stream = tokio::spawn(resp.into_body().collect());
    let blue_stats = support::stats(&proxy, "blue");
    support::until("the stream open on blue", || blue_stats.live_streams() == 1).await;
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert_eq!(r["forced"], 1, "{r}");
    stream
        .await
        .expect("join")
        .expect("the cut stream ended cleanly");

    // The connection outlives the cut: a close, had there been one, came
    // with the stream's end, and `ready` sees it.
    send.ready()
        .await
        .expect("the cut stream's connection is still open");
    let call = http::Request::post("/mcp")
        .header("host", &host)
        .header("mcp-session-id", &sid)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from(
            request(2, "tools/call", json!({"name":"whoami"})).to_string(),
        )))
        .expect("call");
    let resp = send
        .send_request(call)
        .await
        .expect("the next request on the cut stream's connection is answered");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let r: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(
        r["result"]["slot"],
        "green",
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        !driver.is_finished(),
        "the connection closed after the call"
    );
    drop(send);
    proxy.shutdown().await;
}

/// Opens a GET stream of session `sid` (with `Last-Event-ID` if given);
/// the id of its first event and the body, still open.
async fn get_stream(
    client: &support::mcp::HttpClient,
    url: &str,
    sid: &str,
    last_event_id: Option<&str>,
) -> (String, Incoming) {
    let mut req = http::Request::get(url)
        .header("mcp-session-id", sid)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).expect("get"))
        .await
        .expect("stream opens");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while !seen.windows(2).any(|w| w == b"\n\n") {
        match body.frame().await {
            Some(Ok(f)) => seen.extend_from_slice(f.data_ref().expect("data")),
            other => panic!("the stream ended before its first event: {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no id in {text:?}"))
        .to_owned();
    (id, body)
}

/// A GET that reconnects after its session moved: a `Last-Event-ID` the old
/// slot minted is not passed to the new session (it names an event the new
/// server never had; the Python SDK server answers it with an empty stream,
/// which the Python client resumes again and again), so the GET opens a live
/// stream there. The new session's event ids carry the new slot's tag on the
/// way out and lose it on the way back, so resuming on the new slot works.
#[tokio::test]
async fn a_reconnecting_get_of_a_moved_session_resumes_only_what_the_new_slot_sent() {
    let (blue, _b) = recording("blue").await;
    let (green, green_seen) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| c).await;
    let sid = open(&client, &url).await;
    let (old_id, stream) = get_stream(&client, &url, &sid, None).await;
    assert_eq!(
        old_id, "blue-1-ev",
        "a session that never moved: ids as the slot wrote them"
    );
    let stream = tokio::spawn(stream.collect());
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    stream
        .await
        .expect("join")
        .expect("the stream ended cleanly at the cut");

    // The client reconnects with the last id it saw: blue's.
    let (new_id, body) = get_stream(&client, &url, &sid, Some(&old_id)).await;
    let green_session = green_seen
        .sessions()
        .first()
        .cloned()
        .expect("green's session");
    assert_eq!(
        green_seen.of(&green_session).last().map(String::as_str),
        Some("GET"),
        "green got the GET without blue's event id"
    );
    assert_eq!(
        new_id,
        format!("mf1.green.1.{green_session}-ev"),
        "green's id, tagged"
    );
    drop(body);
    // Resuming from green's event reaches green with green's own id.
    let (_, body) = get_stream(&client, &url, &sid, Some(&new_id)).await;
    assert_eq!(
        green_seen.of(&green_session).last(),
        Some(&format!("GET last-event-id={green_session}-ev"))
    );
    drop(body);
    proxy.shutdown().await;
}

/// A legacy HTTP+SSE server (2024-11-05) that records every message: `GET
/// /sse` opens a session (`{slot}-{n}`, named in the `endpoint` event), and
/// the answers to what is posted to `/messages/?session_id=` come on that
/// session's stream. An `initialize` is preceded by a log notification
/// ("hello from {slot}"); the `never` tool is never answered; the `tear`
/// tool gets half an answer, then the stream's connection is dropped (as a
/// killed server's). The session ends with its stream.
async fn legacy_upstream(slot: &'static str) -> (u16, Arc<Seen>) {
    type Streams =
        Mutex<std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<Bytes>>>;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let streams: Arc<Streams> = Arc::default();
    let next = Arc::new(AtomicU32::new(1));
    let log = Arc::clone(&seen);
    let breakers: Arc<Mutex<std::collections::HashMap<String, CancellationToken>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (seen, streams, next) = (Arc::clone(&log), Arc::clone(&streams), Arc::clone(&next));
            let breakers = Arc::clone(&breakers);
            // Cancelled by the `tear` tool: the connection is dropped, as a
            // killed server's would be.
            let broken = CancellationToken::new();
            let breaker = broken.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let (seen, streams, next) =
                        (Arc::clone(&seen), Arc::clone(&streams), Arc::clone(&next));
                    let (breakers, breaker) = (Arc::clone(&breakers), breaker.clone());
                    async move {
                        let record = |s: &str, what: &str| {
                            seen.0
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((s.to_owned(), what.to_owned()))
                        };
                        let streams = |f: &mut dyn FnMut(&mut std::collections::HashMap<_, _>)| {
                            f(&mut streams.lock().unwrap_or_else(|p| p.into_inner()))
                        };
                        if req.method() == hyper::Method::GET {
                            let s = format!("{slot}-{}", next.fetch_add(1, Ordering::Relaxed));
                            record(&s, "GET /sse");
                            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                            let _ = tx.send(Bytes::from(format!(
                                "event: endpoint\r\ndata: /messages/?session_id={s}\r\n\r\n"
                            )));
                            streams(&mut |m| {
                                m.insert(s.clone(), tx.clone());
                            });
                            breakers
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(s.clone(), breaker);
                            return Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "text/event-stream")
                                    .body(Channel(rx).boxed())
                                    .expect("stream"),
                            );
                        }
                        let s = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("session_id="))
                            .unwrap_or_default()
                            .to_owned();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let mut tx = None;
                        streams(&mut |m| tx = m.get(&s).filter(|t| !t.is_closed()).cloned());
                        let Some(tx) = tx else {
                            return Ok(answer(404, None, None));
                        };
                        let method = msg["method"].as_str().unwrap_or_default();
                        record(&s, &format!("{method} id={}", msg["id"]));
                        let send = |v: Value| {
                            let _ = tx
                                .send(Bytes::from(format!("event: message\r\ndata: {v}\r\n\r\n")));
                        };
                        if method == "initialize" {
                            send(json!({"jsonrpc":"2.0","method":"notifications/message",
                                "params":{"level":"info","data":format!("hello from {slot}")}}));
                            send(json!({"jsonrpc":"2.0","id":msg["id"],"result":{
                                "protocolVersion":"2024-11-05","capabilities":{},
                                "serverInfo":{"name":slot,"version":"1"}}}));
                        } else if msg["params"]["name"] == "tear" {
                            // Half an answer, then the stream's connection breaks.
                            let _ = tx.send(Bytes::from(format!(
                                "event: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{},\"res",
                                msg["id"]
                            )));
                            let breaker = breakers
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get(&s)
                                .cloned();
                            tokio::spawn(async move {
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                                if let Some(b) = breaker {
                                    b.cancel();
                                }
                            });
                        } else if msg["params"]["name"] == "split" {
                            // Half of this call's answer; 300 ms later its
                            // rest and, in the same write, the answer of call
                            // `then` (two answers ready at once).
                            let _ = tx.send(Bytes::from(format!(
                                "event: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{},\"res",
                                msg["id"]
                            )));
                            let then = json!({"jsonrpc":"2.0",
                                "id":msg["params"]["arguments"]["then"],"result":{"slot":slot}});
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                                let _ = tx.send(Bytes::from(format!(
                                    "ult\":{{\"slot\":\"{slot}\"}}}}\r\n\r\nevent: message\r\ndata: {then}\r\n\r\n"
                                )));
                            });
                        } else if msg["params"]["name"] == "big" {
                            // Half a MiB of answer, its id last (as the
                            // TypeScript SDK's servers write it).
                            let _ = tx.send(Bytes::from(format!(
                                "event: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{}\"}}]}},\"id\":{}}}\r\n\r\n",
                                "x".repeat(512 * 1024),
                                msg["id"]
                            )));
                        } else if msg.get("id").is_some() && msg["params"]["name"] != "never" {
                            send(
                                json!({"jsonrpc":"2.0","id":msg["id"],"result":{"slot":slot,"session":s}}),
                            );
                        }
                        Ok(answer(202, None, None))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = broken.cancelled() => {}
                }
            });
        }
    });
    (port, seen)
}

/// What a moved legacy session's client reads next on its stream: the
/// error of call `interrupted` (never answered on the old slot), green's
/// notification from the replay (its answers to the replay never show), and,
/// for call `next` posted to its old POST URL, green's answer, returned.
async fn goes_on_from_green(
    s: &mut support::mcp::SseSession,
    interrupted: u32,
    next: u32,
) -> Value {
    let (_, first) = s.next_message().await.expect("the stream goes on");
    assert_eq!(
        first["id"], interrupted,
        "the unanswered call's error first: {first}"
    );
    assert!(
        first["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("interrupted by a deploy")),
        "{first}"
    );
    let (name, hello) = s.next_message().await.expect("green's notification");
    assert_eq!(
        (name.as_str(), &hello["params"]["data"]),
        ("message", &json!("hello from green")),
        "what green sent during the replay passes, its answers do not: {hello}"
    );
    s.post(request(next, "tools/call", json!({"name": "whoami"})))
        .await
        .expect("the old POST URL still takes requests");
    let (_, r) = s.next_message().await.expect("the answer");
    assert_eq!(r["id"], next, "{r}");
    assert_eq!(r["result"]["slot"], "green", "{r}");
    r
}

/// A legacy HTTP+SSE session opened through a proxy with migration on, in
/// front of legacy blue and green (which takes no new session yet).
struct Legacy {
    proxy: mcpflip::run::Running,
    socket: std::path::PathBuf,
    s: support::mcp::SseSession,
    blue_seen: Arc<Seen>,
    green_seen: Arc<Seen>,
    _dir: tempfile::TempDir,
}

async fn legacy_session() -> Legacy {
    legacy_session_with(|c| c).await
}

/// [`legacy_session`] on a config `edit` changes.
async fn legacy_session_with(edit: impl FnOnce(TestConfig) -> TestConfig) -> Legacy {
    let (blue, blue_seen) = legacy_upstream("blue").await;
    let (green, green_seen) = legacy_upstream("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", edit).await;
    let s = support::mcp::SseSession::open(&client, url.trim_end_matches("/mcp"))
        .await
        .expect("legacy session");
    Legacy {
        proxy,
        socket,
        s,
        blue_seen,
        green_seen,
        _dir,
    }
}

impl Legacy {
    /// A `whoami` call, which blue answers.
    async fn answered_by_blue(&mut self) {
        let r = self
            .s
            .request("tools/call", json!({"name": "whoami"}))
            .await
            .expect("call");
        assert_eq!(r["slot"], "blue", "{r}");
    }

    /// Call `id` of the `never` tool, which blue never answers (its answer
    /// would come on blue's stream), once it reached blue.
    async fn unanswered(&mut self, id: u32) {
        self.s
            .post(request(id, "tools/call", json!({"name": "never"})))
            .await
            .expect("post");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    async fn status(&self) -> Value {
        support::ctl(&self.socket, "status").await
    }

    async fn end(self) {
        drop(self.s);
        self.proxy.shutdown().await;
    }
}

/// A legacy HTTP+SSE session outlives its slot on the client's one open
/// stream: at `drain blue --migrate` the proxy opens the session again on
/// green (its `initialize`, `notifications/initialized` and `setLevel`
/// replayed, in order, under the proxy's own ids), and the client's stream
/// goes on from green without an `endpoint` event or any answer to the
/// replay: first the error of the call blue never answered, then green's
/// notification, then the answer to the client's next call, which its old
/// POST URL carried to green's session.
#[tokio::test]
async fn a_legacy_sessions_stream_moves_and_its_post_url_follows() {
    let mut l = legacy_session().await;
    assert!(
        l.s.post_url().contains("session_id=mf1.blue.1.blue-1"),
        "{}",
        l.s.post_url()
    );
    l.s.request("logging/setLevel", json!({"level": "debug"}))
        .await
        .expect("setLevel");
    l.answered_by_blue().await;
    l.unanswered(10).await;

    green_serves_too(&l.socket).await;
    let r = support::ctl(&l.socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");

    // The same stream, now from green.
    let r = goes_on_from_green(&mut l.s, 10, 11).await;
    assert_eq!(r["result"]["session"], "green-1", "{r}");

    assert_eq!(
        l.green_seen.of("green-1"),
        [
            "GET /sse",
            r#"initialize id="mcpflip-replay-0""#,
            "notifications/initialized id=null",
            r#"logging/setLevel id="mcpflip-replay-1""#,
            "tools/call id=11",
        ],
        "green's session: the replay in order, then the client's call"
    );
    assert_eq!(
        l.blue_seen.of("blue-1").last().map(String::as_str),
        Some("tools/call id=10"),
        "nothing reached blue after the move"
    );
    let status = l.status().await;
    assert_eq!(status["migration"]["migrated"], 1, "{status}");
    assert_eq!(status["migration"]["interrupted_calls"], 1, "{status}");
    let live: Vec<(Value, Value)> = status["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .map(|s| (s["name"].clone(), s["live_streams"].clone()))
        .collect();
    assert_eq!(
        live,
        [(json!("blue"), json!(0)), (json!("green"), json!(1))],
        "the stream counts on green now"
    );
    l.end().await;
}

/// A legacy session whose stream breaks inside an event (its slot killed
/// while it sent an answer) moves, and its client never gets the half event
/// as a message: it is dispatched under a type MCP clients ignore
/// (`mcpflip-torn`), the call it answered gets its interrupted-call error,
/// and the stream goes on from green. Before, the half event was ended with
/// a blank line and came as a `message` carrying half a JSON-RPC answer.
#[tokio::test]
async fn a_legacy_stream_broken_inside_an_event_moves_without_a_torn_message() {
    let mut l = legacy_session().await;
    l.answered_by_blue().await;
    // Green takes new sessions too: where the session goes (a move picks
    // another slot than the one it leaves).
    green_serves_too(&l.socket).await;

    l.s.post(request(12, "tools/call", json!({"name": "tear"})))
        .await
        .expect("post");
    let (kind, data) = l.s.next_event().await.expect("what came of the torn event");
    assert_eq!(
        kind, "mcpflip-torn",
        "the half answer is not a message: {data:?}"
    );
    assert!(
        data.starts_with(r#"{"jsonrpc":"2.0","id":12,"res"#),
        "{data:?}"
    );
    goes_on_from_green(&mut l.s, 12, 13).await;
    assert_eq!(
        l.green_seen.of("green-1").last().map(String::as_str),
        Some("tools/call id=13")
    );
    let status = l.status().await;
    assert_eq!(status["migration"]["migrated"], 1, "{status}");
    assert_eq!(status["migration"]["interrupted_calls"], 1, "{status}");
    l.end().await;
}

/// A legacy session's call whose answer is large (half a MiB, its id after
/// the result) is known as answered once that passes, so a move errs only
/// the call still waiting. Before, an answer over 256 KiB was not read for
/// its id: the move sent the client a stray interrupted-call error for the
/// call it already had the answer of, first.
#[tokio::test]
async fn a_large_answer_on_a_legacy_stream_is_not_erred_again_when_it_moves() {
    let mut l = legacy_session().await;
    let text = l.s.call("big", json!({})).await.expect("the large call");
    assert_eq!(text.len(), 512 * 1024);
    l.unanswered(10).await;

    green_serves_too(&l.socket).await;
    let r = support::ctl(&l.socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    goes_on_from_green(&mut l.s, 10, 11).await;
    let status = l.status().await;
    assert_eq!(status["migration"]["interrupted_calls"], 1, "{status}");
    l.end().await;
}

/// `weights blue=0 green=100` without `--drain` puts blue to standby: with
/// migration on, that cut is a move, not a 404, in both eras. A legacy
/// session's stream, which blue would keep sending, ends there and goes on
/// from green, its old POST URL carried along. Before, the stream stayed
/// open on blue while every POST of the session waited for it to move, then
/// got 404: the session was dead with its stream still open.
#[tokio::test]
async fn a_legacy_session_of_a_slot_put_to_standby_without_a_drain_moves() {
    let mut l = legacy_session().await;
    l.answered_by_blue().await;
    l.unanswered(10).await;

    let r = support::ctl(&l.socket, "weights blue=0 green=100").await;
    let warning = r["warning"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(
        warning.starts_with(
            "blue went to standby without a drain: its open sessions move to a serving slot"
        ),
        "the warning says what happens with migration on: {warning}"
    );
    let r = goes_on_from_green(&mut l.s, 10, 11).await;
    assert_eq!(r["result"]["session"], "green-1", "{r}");
    assert_eq!(
        l.green_seen.of("green-1").last().map(String::as_str),
        Some("tools/call id=11")
    );
    let status = l.status().await;
    assert_eq!(status["migration"]["migrated"], 1, "{status}");
    assert_eq!(status["slots"][0]["live_streams"], 0, "{status}");
    l.end().await;
}

/// The Streamable HTTP era of the same cut: the session's GET stream on blue
/// ends (its client reconnects, and so moves), and its next call is
/// replayed on green; `flip blue` then serves blue again, and a new
/// session's stream there is not ended by the earlier cut.
#[tokio::test]
async fn a_streamable_session_of_a_slot_put_to_standby_without_a_drain_moves() {
    let (blue, _b) = recording("blue").await;
    let (green, _g) = recording("green").await;
    let (proxy, url, socket, client, _dir) = rig(blue, green, "replay", |c| c).await;
    let sid = open(&client, &url).await;
    let (_, stream) = get_stream(&client, &url, &sid, None).await;
    let stream = tokio::spawn(stream.collect());

    let r = support::ctl(&socket, "weights blue=0 green=100").await;
    assert!(r.get("error").is_none(), "{r}");
    tokio::time::timeout(std::time::Duration::from_secs(5), stream)
        .await
        .expect("blue's stream ends at the cut")
        .expect("join")
        .expect("cleanly");
    let (status, r) = call(&client, &url, &sid, 2).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["slot"], "green", "{r}");
    assert_eq!(proxy.proxy_stats.migrated(), 1);

    // Blue serves again, green goes to standby: the moved session moves
    // on from green (replayed on blue as a new session), rather than going
    // back to its old session on blue, which never saw what it did on green.
    let r = support::ctl(&socket, "weights blue=100 green=0").await;
    assert!(r.get("error").is_none(), "{r}");
    let (status, r) = call(&client, &url, &sid, 3).await;
    assert_eq!(
        (status, &r["result"]["session"]),
        (200, &json!("blue-2")),
        "{r}"
    );
    assert_eq!(proxy.proxy_stats.migrated(), 2);
    // Its new sessions' streams run.
    let again = open(&client, &url).await;
    let (_, mut body) = get_stream(&client, &url, &again, None).await;
    let (_, r) = call(&client, &url, &again, 2).await;
    assert_eq!(r["result"]["slot"], "blue", "{r}");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), body.frame())
            .await
            .is_err(),
        "a stream of blue serving again stays open"
    );
    drop(body);
    proxy.shutdown().await;
}

/// A cut that comes inside an answer sends that answer's end and drops the
/// rest of the chunk it came in: a second answer in that rest never reaches
/// the client, so its call gets the interrupted-call error on green. Before,
/// the whole chunk was read for answers first, the dropped one counted as
/// passed, and its call was left with neither answer nor error.
#[tokio::test]
async fn an_answer_dropped_at_the_cut_leaves_its_call_to_be_erred() {
    let mut l = legacy_session_with(|c| c.set_str("drain", "migrate_call_grace", "0s")).await;
    l.answered_by_blue().await;
    green_serves_too(&l.socket).await;
    // Call 13 is answered by blue only with the rest of call 12's answer.
    l.unanswered(13).await;
    l.s.post(request(
        12,
        "tools/call",
        json!({"name": "split", "arguments": {"then": 13}}),
    ))
    .await
    .expect("post");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let r = support::ctl(&l.socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    let (_, first) = l.s.next_message().await.expect("call 12's answer");
    assert_eq!(
        (&first["id"], &first["result"]["slot"]),
        (&json!(12), &json!("blue")),
        "the answer the cut came inside is sent whole: {first}"
    );
    goes_on_from_green(&mut l.s, 13, 14).await;
    l.end().await;
}

/// A real `mcpflip run` with migration on, in front of the harness's blue and
/// green on fixed ports, started again on the same config as a restart does:
/// its sessions file, and a client for its public URL.
struct Restarting {
    _h: support::Harness,
    cfg: TestConfig,
    socket: std::path::PathBuf,
    saved: std::path::PathBuf,
    url: String,
    client: support::mcp::HttpClient,
}

impl Restarting {
    async fn new(edit: impl FnOnce(TestConfig) -> TestConfig) -> Self {
        let h = support::Harness::new().await;
        let (cfg, public, _) = h.builder_on_ports();
        let cfg = edit(cfg.set_str("drain", "migrate", "replay"));
        cfg.write();
        Restarting {
            socket: cfg.socket(),
            saved: h.dir.path().join("state.sessions.json"),
            url: format!("http://127.0.0.1:{public}/mcp"),
            client: http_client(),
            cfg,
            _h: h,
        }
    }

    /// The proxy on the config as it is now, once its control socket answers.
    async fn start(&self) -> support::proc::ProxyProcess {
        let mut proxy = support::proc::ProxyProcess::spawn(&self.cfg.path(), &self.socket, &[]);
        proxy.ready().await;
        proxy
    }

    /// A new session, opened through the proxy.
    async fn open(&self) -> String {
        open(&self.client, &self.url).await
    }

    /// The status and the slot that answered session `sid`'s `whoami` (request `id`).
    async fn whoami(&self, sid: &str, id: u32) -> (u16, Value, Value) {
        let (status, r) = call(&self.client, &self.url, sid, id).await;
        (status, r["result"]["content"][0]["text"].clone(), r)
    }
}

/// SIGTERM, and a clean exit.
fn stop(mut proxy: support::proc::ProxyProcess) {
    let code = proxy.terminate();
    assert!(code.success(), "{code}:\n{}", proxy.stderr());
}

/// A restart of the proxy (SIGTERM, then `mcpflip run` again on the same
/// config, as `systemctl restart mcpflip` does) keeps the sessions it
/// captured: saved beside the state file at the shutdown (mode 0600) and
/// taken back at the start, so that a session opened before the restart
/// moves under its id when its slot is cut after it, where it got the 404 of
/// a session never captured; where a moved session went comes back too. A
/// proxy killed with SIGKILL comes back with what its last periodic save
/// (`migrate_save_interval`) held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_proxy_keeps_the_sessions_it_captured() {
    use std::os::unix::fs::MetadataExt;
    let mut t = Restarting::new(|c| {
        c.set_str("drain", "deadline", "60s")
            .set_str("drain", "migrate_save_interval", "1h")
    })
    .await;
    let socket = t.socket.clone();

    let mut proxy = t.start().await;
    let sid = t.open().await;
    let (status, slot, r) = t.whoami(&sid, 2).await;
    assert_eq!((status, slot), (200, json!("blue")), "{r}");
    let code = proxy.terminate();
    assert!(code.success(), "{code}:\n{}", proxy.stderr());
    let mode = std::fs::metadata(&t.saved)
        .unwrap_or_else(|e| panic!("no sessions file ({e}):\n{}", proxy.stderr()))
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let proxy = t.start().await;
    let log = proxy.stderr_with("captured sessions taken back");
    assert!(log.contains("read=1 added=1"), "{log}");
    green_serves_too(&socket).await;
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    let (status, slot, r) = t.whoami(&sid, 3).await;
    assert_eq!(
        (status, slot),
        (200, json!("green")),
        "{r}\n{}",
        proxy.stderr()
    );

    // Again, once it moved: where it moved to comes back too (else its
    // request would go to blue, the slot its id names).
    stop(proxy);
    t.cfg = t
        .cfg
        .clone()
        .set_str("drain", "migrate_save_interval", "200ms");
    t.cfg.write();
    let mut proxy = t.start().await;
    let (status, slot, r) = t.whoami(&sid, 4).await;
    assert_eq!((status, slot), (200, json!("green")), "{r}");

    // Killed: what the last periodic save held comes back.
    let other = t.open().await;
    let (status, slot, r) = t.whoami(&other, 2).await;
    assert_eq!((status, slot), (200, json!("green")), "{r}");
    support::until("a periodic save holds the new session", || {
        std::fs::read_to_string(&t.saved).is_ok_and(|text| text.contains(&other))
    })
    .await;
    proxy.kill9();
    let proxy = t.start().await;
    let r = support::ctl(&socket, "weights blue=1 green=100").await;
    assert!(r.get("error").is_none(), "{r}");
    let r = support::ctl(&socket, "drain green --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    for (sid, id) in [(&sid, 5), (&other, 3)] {
        let (status, slot, r) = t.whoami(sid, id).await;
        assert_eq!((status, slot), (200, json!("blue")), "{r}");
    }
    stop(proxy);
}

/// The periodic save (`migrate_save_interval`) and what it tells: a save
/// that cannot be written (here a directory stands at the file's path) is
/// counted and the proxy serves on; once the path is free, the next save
/// writes every captured session and its time.
#[tokio::test]
async fn a_failed_save_of_the_captured_sessions_is_counted_and_the_next_one_writes_them() {
    let (blue, _) = recording("blue").await;
    let (green, _) = recording("green").await;
    let (proxy, url, _socket, client, dir) = rig(blue, green, "replay", |c| {
        c.set_str("drain", "migrate_save_interval", "100ms")
    })
    .await;
    let saved = dir.path().join("state.sessions.json");
    std::fs::create_dir(&saved).expect("mkdir");
    std::fs::write(saved.join("kept"), b"x").expect("a file in it");
    let stats = std::sync::Arc::clone(&proxy.proxy_stats);
    let sid = open(&client, &url).await;
    support::until("a failed save is counted", || {
        stats.sessions_save_failures() >= 2
    })
    .await;
    assert_eq!(stats.sessions_saved_at(), 0);
    let (status, _) = call(&client, &url, &sid, 2).await;
    assert_eq!(status, 200, "the proxy serves on");

    std::fs::remove_dir_all(&saved).expect("rm");
    support::until("a save succeeds", || {
        std::fs::read_to_string(&saved).is_ok_and(|t| t.contains(&sid))
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    support::until("its time is kept", || stats.sessions_saved_at() + 5 >= now).await;
    proxy.shutdown().await;
}

/// A move is saved within seconds, whatever `migrate_save_interval` says: a
/// proxy killed after a deploy moved its sessions comes back with the
/// moves. Lost, the session would go back to the slot its id names, where
/// blue's server, still running after its drain, holds the session as it
/// was before it moved (answered "blue", a session split in two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_is_saved_at_once_so_a_killed_proxy_keeps_it() {
    let t = Restarting::new(|c| c.set_str("drain", "migrate_save_interval", "1h")).await;

    let mut proxy = t.start().await;
    let sid = t.open().await;
    green_serves_too(&t.socket).await;
    let r = support::ctl(&t.socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    let (status, slot, r) = t.whoami(&sid, 2).await;
    assert_eq!((status, slot), (200, json!("green")), "{r}");
    support::until("the move is saved", || {
        std::fs::read_to_string(&t.saved)
            .is_ok_and(|text| text.contains(&sid) && text.contains("green"))
    })
    .await;
    proxy.kill9();

    let proxy = t.start().await;
    let (status, slot, r) = t.whoami(&sid, 3).await;
    assert_eq!((status, slot), (200, json!("green")), "{r}");
    stop(proxy);
}
