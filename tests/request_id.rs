//! `[proxy] request_id` (docs/config.md, docs/logs.md): every request gets
//! an id, sent to the slot and back to the client in `X-Request-Id` and
//! written in the access log, as nginx's `$request_id` is used.
//!
//! Proven on loopback sockets with a slot that records the request heads it
//! gets: a client's own id never reaches the slot (a new one, 128 random
//! bits in hex, does, and comes back to the client), a trusted proxy's is
//! kept, one that is too long is replaced, the proxy's own answers carry one
//! too, over HTTP/1.1 and HTTP/2; off, a client's passes as any header. And
//! with real HAProxy in front (`unique-id-format`), the id HAProxy gave the
//! request is the one the slot, the client and the access log see.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use support::proc::ProxyProcess;
use support::{closed_port, connect_from, head_recorder, read_to_close, TestConfig};
use tokio::io::AsyncWriteExt;

const TRUSTED: [u8; 4] = [127, 0, 0, 1];
const CLIENT: [u8; 4] = [127, 0, 0, 2];

/// Sends a GET of /mcp to `to` from `from` with `extra` header lines; the
/// answer, read until the proxy closes.
async fn get_from(from: [u8; 4], to: SocketAddr, host: &str, extra: &str) -> String {
    let mut raw = connect_from(from, to).await;
    let request = format!("GET /mcp HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    raw.write_all(request.as_bytes()).await.expect("write");
    read_to_close(&mut raw).await
}

/// Every `x-request-id` value of a (lower-cased) head or an answer.
fn ids(head: &str) -> Vec<String> {
    head.split("\r\n")
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_owned())
        })
        .collect()
}

fn is_generated(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_an_id_the_slot_and_the_client_both_see() {
    let (port, mut heads) = head_recorder().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = support::start(
        TestConfig::blue_green(dir.path(), port, closed_port())
            .set("proxy", "trusted_proxies", "[\"127.0.0.1\"]")
            .set("proxy", "request_id", "true")
            .load(),
    )
    .await;
    let public = p.public_addr;
    let host = public.to_string();

    // A client's own id (here one that would inject a log field) is
    // replaced: the slot gets one new id, and the client the same.
    let answer = get_from(
        CLIENT,
        public,
        &host,
        "X-Request-Id: forged\" status=500\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    let sent = ids(&head);
    assert_eq!(sent.len(), 1, "{head}");
    assert!(is_generated(&sent[0]), "{head}");
    assert_eq!(ids(&answer), sent, "{answer}");
    // The next request, another id.
    let answer = get_from(CLIENT, public, &host, "").await;
    let next = ids(&heads.recv().await.expect("the slot got the request"));
    assert!(
        is_generated(&next[0]) && next != sent,
        "{next:?} after {sent:?}"
    );
    assert_eq!(ids(&answer), next, "{answer}");

    // A trusted proxy's id is kept, so one id follows the request through
    // both; one over 64 bytes is not.
    let answer = get_from(TRUSTED, public, &host, "X-Request-Id: lb-7f3a-0001\r\n").await;
    let head = heads.recv().await.expect("the slot got the request");
    assert_eq!(ids(&head), ["lb-7f3a-0001"], "{head}");
    assert_eq!(ids(&answer), ["lb-7f3a-0001"], "{answer}");
    let long = "a".repeat(65);
    get_from(TRUSTED, public, &host, &format!("X-Request-Id: {long}\r\n")).await;
    let head = heads.recv().await.expect("the slot got the request");
    assert!(is_generated(&ids(&head)[0]), "{head}");

    // The proxy's own answer (a host it refuses) carries one too.
    let answer = get_from(CLIENT, public, "evil.example", "").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let local = ids(&answer);
    assert!(local.len() == 1 && is_generated(&local[0]), "{answer}");

    // HTTP/2 (the headers read from the map, the answer written from one),
    // from the untrusted client.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(std::net::IpAddr::from(CLIENT)));
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(connector);
    let req = http::Request::get(format!("http://{public}/mcp"))
        .header("x-request-id", "forged-over-h2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h2.request(req).await.expect("h2 answer");
    assert_eq!(resp.status(), 200);
    let head = heads.recv().await.expect("the slot got the request");
    let sent = ids(&head);
    assert!(sent.len() == 1 && is_generated(&sent[0]), "{head}");
    assert_eq!(
        resp.headers()
            .get_all("x-request-id")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect::<Vec<_>>(),
        sent
    );
    p.shutdown().await;

    // Off (the default): a client's id passes as any header, and none is
    // added.
    let p = support::start(TestConfig::blue_green(dir.path(), port, closed_port()).load()).await;
    let public = p.public_addr;
    let answer = get_from(
        CLIENT,
        public,
        &public.to_string(),
        "X-Request-Id: mine\r\n",
    )
    .await;
    let head = heads.recv().await.expect("the slot got the request");
    assert_eq!(ids(&head), ["mine"], "{head}");
    assert!(ids(&answer).is_empty(), "{answer}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_its_unique_id_is_the_requests_id_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, mut heads) = head_recorder().await;
    let public = SocketAddr::from((TRUSTED, closed_port()));
    let access = dir.path().join("access.log");
    let cfg = TestConfig::blue_green(dir.path(), port, closed_port())
        .listen_port(public.port())
        .set("proxy", "trusted_proxies", "[\"127.0.0.1\"]")
        .set("proxy", "request_id", "true")
        .set_str("log", "format", "json")
        .set_str("log", "access_log", access.to_str().expect("utf-8"));
    let mut proc = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proc.ready().await;
    // On 127.0.0.1: a trusted proxy.
    let (_h, front) = support::tools::Haproxy::in_front(
        dir.path(),
        public,
        "  unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid\n\
         \x20 http-request set-header X-Request-Id %[unique-id]\n",
    )
    .await;

    let answer = get_from(CLIENT, front, &public.to_string(), "X-Request-Id: mine\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    let sent = ids(&head);
    // HAProxy's: the client's address and port first, in hex.
    assert_eq!(sent.len(), 1, "{head}");
    assert!(sent[0].starts_with("7f000002:"), "{head}");
    let back: Vec<String> = ids(&answer)
        .iter()
        .map(|i| i.to_ascii_lowercase())
        .collect();
    assert_eq!(back, sent, "{answer}");
    let log = support::access_lines(&access, 1).await;
    let line: serde_json::Value = serde_json::from_str(log.lines().next().expect("a line"))
        .unwrap_or_else(|e| panic!("{e}: {log}"));
    // The head recorder lower-cased what it got; HAProxy wrote it in capitals.
    assert_eq!(
        line["request_id"].as_str().map(str::to_ascii_lowercase),
        Some(sent[0].clone()),
        "{log}"
    );
    drop(proc);
}

/// A slot that cannot be reached: the client's 502 carries the id, and the
/// proxy's `upstream failed` line names it, so a user's report finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_failed_line_names_the_request_id_the_client_got() {
    let dir = tempfile::tempdir().expect("tempdir");
    let public = SocketAddr::from((TRUSTED, closed_port()));
    let cfg = TestConfig::blue_green(dir.path(), closed_port(), closed_port())
        .listen_port(public.port())
        .set("proxy", "request_id", "true");
    let mut proc = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proc.ready().await;
    let answer = get_from(CLIENT, public, &public.to_string(), "").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let id = ids(&answer);
    assert!(id.len() == 1 && is_generated(&id[0]), "{answer}");
    let line = proc.stderr_with("upstream failed");
    assert!(line.contains(&format!("request_id={}", id[0])), "{line}");
    drop(proc);
}

/// A slot that answers with an `X-Request-Id` of its own keeps it, over
/// HTTP/1.1 (its lines passed as they came) and HTTP/2 (a map) alike: the
/// client gets one id, the slot's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slots_own_request_id_reaches_the_client_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nx-request-id: slot-7\r\n\
                            content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let p = support::start(
        TestConfig::blue_green(dir.path(), port, closed_port())
            .set("proxy", "request_id", "true")
            .load(),
    )
    .await;
    let public = p.public_addr;
    let answer = get_from(CLIENT, public, &public.to_string(), "").await;
    assert_eq!(ids(&answer), ["slot-7"], "{answer}");
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::get(format!("http://{public}/mcp"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h2.request(req).await.expect("h2 answer");
    let got: Vec<&str> = resp
        .headers()
        .get_all("x-request-id")
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert_eq!(got, ["slot-7"]);
    p.shutdown().await;
}

/// A session that moves (`[drain] migrate = "replay"`): the main log's
/// `session migrated` line names the id of the request that moved it, the
/// one its client got back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_migrated_line_names_the_request_id_the_client_got() {
    use http_body_util::BodyExt as _;
    let stop = tokio_util::sync::CancellationToken::new();
    let slot = |name: &'static str| {
        support::upstream(
            mcpflip::demo_server::ServerConfig::new(name, mcpflip::demo_server::Transport::Both),
            &stop,
        )
    };
    let (blue, green) = (slot("blue").await, slot("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = closed_port();
    let cfg = TestConfig::blue_green(dir.path(), blue, green)
        .listen_port(port)
        .set("proxy", "request_id", "true")
        .set_str("drain", "migrate", "replay");
    let mut proc = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proc.ready().await;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let client = support::mcp::http_client();
    let sid = support::mcp::open_session(&client, &url).await;
    let r = support::ctl(&cfg.socket(), "weights blue=100 green=1").await;
    assert!(r.get("error").is_none(), "{r}");
    let r = support::ctl(&cfg.socket(), "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    let req = http::Request::post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &sid)
        .body(Full::new(Bytes::from(
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#,
        )))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an id")
        .to_owned();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("green"), "{body:?}");
    let line = proc.stderr_with("session migrated");
    assert!(line.contains(&format!("request_id={id}")), "{line}");
    drop(proc);
    stop.cancel();
}
