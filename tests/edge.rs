//! Issue 10, the edge: nothing a client or an upstream does can exhaust, stall
//! or steer the proxy. Each test drives the proxy over real loopback sockets
//! (raw TCP where the bytes matter) and fails on the code before its fix.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mcpflip::upstream::client::UpstreamError;
use support::mcp::http_client;
use support::{metric, metrics, read_until_closed, until, Harness, TestConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for something the proxy must do on its own (a
/// generous bound for a busy machine, not a measurement).
const PATIENCE: Duration = Duration::from_secs(15);

/// Writes `request` on a fresh connection and reads the answer to the end.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let got = read_until_closed(&mut s)
        .await
        .expect("the proxy answers and closes");
    parse_answer(&got)
}

fn parse_answer(got: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

/// The test config with `[proxy] key = value` (string values) set.
fn proxy_keys(cfg: TestConfig, keys: &[(&str, &str)]) -> TestConfig {
    keys.iter().fold(cfg, |c, (k, v)| c.set_str("proxy", k, v))
}

async fn start(h: &Harness, keys: &[(&str, &str)]) -> mcpflip::run::Running {
    support::start(proxy_keys(h.builder(), keys).load()).await
}

/// Defect 1: a connection that delivers no complete request head is closed
/// after `header_read_timeout` from accept: silent TCP, a partial h2c preface,
/// a partial HTTP/1.1 head, and the same on the admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_no_request_head_are_closed() {
    let h = Harness::new().await;
    let p = start(&h, &[("header_read_timeout", "400ms")]).await;
    let mut open = Vec::new();
    for (addr, first) in [
        (p.public_addr, &b""[..]),
        (p.public_addr, &b"PRI * HTTP/2.0\r\n"[..]),
        (
            p.public_addr,
            &b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"[..],
        ),
        (p.admin_addr, &b""[..]),
        (p.admin_addr, &b"GET /status HTTP/1.1\r\n"[..]),
    ] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(first).await.expect("write");
        open.push((addr, first, s));
    }
    for (addr, first, mut s) in open {
        let got = read_until_closed(&mut s).await;
        assert!(
            got.is_ok(),
            "{addr} kept a connection open that sent {:?} and then nothing",
            String::from_utf8_lossy(first)
        );
    }
    let m = metrics(p.admin_addr).await;
    assert!(
        metric(&m, "mcpflip_client_errors_total{kind=\"header_timeout\"}") >= 3,
        "{m}"
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 1: an HTTP/1.1 keep-alive connection with no request in progress,
/// and an HTTP/2 connection with no open stream, are closed after
/// `idle_timeout`; a request that outlasts `header_read_timeout` is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_close_after_idle_timeout() {
    let h = Harness::new().await;
    let p = start(
        &h,
        &[("header_read_timeout", "300ms"), ("idle_timeout", "1s")],
    )
    .await;
    // HTTP/1.1: a stream that lasts well past header_read_timeout, then idle.
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(b"GET /ticker?interval_ms=100&count=12 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut s)
        .await
        .expect("closed once idle for idle_timeout");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        text.matches("event: tick").count(),
        12,
        "the stream ran to its end: {text}"
    );
    assert!(text.ends_with("0\r\n\r\n"), "ended cleanly: {text:?}");

    // HTTP/2 (prior knowledge): one request, then no stream: GOAWAY and close.
    let tcp = TcpStream::connect(p.public_addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let resp = send
        .send_request(support::get(p.public_addr, "/healthz"))
        .await
        .expect("h2 request");
    assert_eq!(resp.status(), 200);
    drop(resp);
    let ended = tokio::time::timeout(PATIENCE, driver).await;
    assert!(ended.is_ok(), "an idle h2 connection stayed open");
    p.shutdown().await;
    h.stop.cancel();
}

/// The idle timer is lazy (moved when it fires, not reset per request): a
/// keep-alive connection whose requests come more often than
/// `idle_timeout` stays open however long it lives, and closes no sooner
/// than `idle_timeout` after its last request ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timer_counts_from_the_last_request() {
    let h = Harness::new().await;
    let p = start(
        &h,
        &[("header_read_timeout", "300ms"), ("idle_timeout", "1s")],
    )
    .await;
    let tcp = TcpStream::connect(p.public_addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("h1 handshake");
    let driver = tokio::spawn(conn);
    // 3 s of requests 250 ms apart on one connection: three idle periods.
    let started = tokio::time::Instant::now();
    let mut last_end = started;
    while started.elapsed() < Duration::from_secs(3) {
        let resp = send
            .send_request(support::get(p.public_addr, "/healthz"))
            .await
            .expect("the connection stays open while requests come");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("body");
        last_end = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::timeout(PATIENCE, driver)
        .await
        .expect("closed once idle")
        .expect("join")
        .expect("a clean close");
    let idle = last_end.elapsed();
    assert!(
        idle >= Duration::from_millis(900),
        "closed {idle:?} after the last request, before idle_timeout (1 s)"
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// A plain connection's protocol is told from a peek at its first bytes;
/// a first packet that is still a prefix of the h2c preface ("P", "PRI * HT")
/// is served by sniffing as before: an HTTP/1.1 request whose first byte came
/// alone, and an h2c preface cut in two, are both served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_cut_inside_the_h2c_preface_is_still_served() {
    let h = Harness::new().await;
    let p = start(&h, &[]).await;
    // HTTP/1.1, "P" alone first.
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(b"P").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let rest = format!(
        "OST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(rest.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let got = read_until_closed(&mut s)
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 "), "{text}");
    // h2c prior knowledge, the preface in two parts, then SETTINGS: the
    // server's first frame is its SETTINGS (type 4).
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(b"PRI * HT").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"TP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    let mut frame = [0u8; 9];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut frame))
        .await
        .expect("a frame in time")
        .expect("read");
    assert_eq!(
        frame[3], 4,
        "the server's first frame is SETTINGS: {frame:?}"
    );
    drop(s);
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 1 on the TLS listener: a silent TCP client, and clients that finish
/// the handshake (ALPN h2, http/1.1) and then send nothing, are closed; plain
/// HTTP sent to the TLS port is answered 400 saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_that_send_nothing_are_closed_and_plain_http_gets_400() {
    let h = Harness::new().await;
    let certs = h.dir.path().join("certs");
    mcpflip::tls::write_dev_cert(&certs, &[], false).expect("dev cert");
    let cfg = proxy_keys(h.builder(), &[("header_read_timeout", "400ms")])
        .tls(&certs.join("server.crt"), &certs.join("server.key"));
    let p = support::start(cfg.load()).await;

    let silent = TcpStream::connect(p.public_addr).await.expect("connect");
    let mut handshaken = Vec::new();
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut client =
            mcpflip::tls::client_config(Some(&certs.join("dev-ca.crt"))).expect("client config");
        client.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        let tcp = TcpStream::connect(p.public_addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        handshaken.push(tls);
    }
    let mut silent = silent;
    assert!(
        read_until_closed(&mut silent).await.is_ok(),
        "a silent client of the TLS listener stayed connected"
    );
    for mut tls in handshaken {
        let mut buf = [0u8; 1024];
        let end = tokio::time::Instant::now() + PATIENCE;
        let closed = loop {
            match tokio::time::timeout_at(end, tls.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => {} // h2 SETTINGS, GOAWAY
            }
        };
        assert!(
            closed,
            "a TLS client silent after its handshake stayed connected"
        );
    }

    let (status, text) = exchange(
        p.public_addr,
        b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("This port speaks HTTPS"), "{text}");
    let m = metrics(p.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "mcpflip_local_responses_total{code=\"400\",reason=\"not_tls\"}"
        ),
        1,
        "{m}"
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot that accepts connections, reads requests and never answers (or
/// answers its head one byte at a time, when `trickle`).
async fn silent_slot(trickle: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if trickle {
                    for b in b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-slow: yes" {
                        if s.write_all(&[*b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let _ = s.read(&mut buf).await; // until the proxy lets go
                tokio::time::sleep(Duration::from_secs(600)).await;
            });
        }
    });
    port
}

/// A slot whose every answer waits `?ms=N` before its head (a long tool call).
async fn delaying_slot() -> u16 {
    use hyper::service::service_fn;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let ms: u64 = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("ms="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"{\"ok\":true}"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

/// Defect 2: a request body that stalls is answered 408 (and stops holding the
/// slot's in-flight count); a slot that never answers, or trickles its head,
/// is answered 504 and counted as `response_timeout`; a `tools/call` gets
/// `tool_call_timeout`; an SSE body is not timed once its head arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_get_408_and_silent_slots_504() {
    let h = Harness::new().await;
    let (silent, trickle, delaying) = (
        silent_slot(false).await,
        silent_slot(true).await,
        delaying_slot().await,
    );
    let cfg = proxy_keys(
        TestConfig::new(h.dir.path())
            .slot("blue", h.blue, 100)
            .slot("green", silent, 0)
            .slot_set("green", "response_header_timeout", "\"500ms\""),
        &[
            ("client_body_timeout", "500ms"),
            ("response_header_timeout", "5s"),
            ("tool_call_timeout", "5s"),
        ],
    );
    let p = support::start(cfg.load()).await;
    let blue = support::stats(&p, "blue");

    // A body that stops after 10 of its 100 bytes.
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
        .await
        .expect("write");
    let got = read_until_closed(&mut s)
        .await
        .expect("a stalled body is answered and its connection closed");
    let (status, text) = parse_answer(&got);
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("\"error\":\"body_timeout\""), "{text}");
    until("the stalled request no longer in flight", || {
        blue.inflight() == 0
    })
    .await;

    // Green is a slot that never answers; its own timeout is 500 ms.
    assert_eq!(h.ctl("flip green --no-probe").await["ok"], true);
    let (status, text) = exchange(
        p.public_addr,
        b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("upstream_timeout"), "{text}");
    // It does not read a large body either: that is timed too (the body's
    // own timer only runs while the proxy waits on the client).
    let s = TcpStream::connect(p.public_addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let big = 8 << 20;
    let writer = tokio::spawn(async move {
        let head =
            format!("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {big}\r\n\r\n");
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&vec![b' '; big]).await;
        wr
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut got)).await;
    assert!(
        closed.is_ok(),
        "the connection of an unread body stayed open"
    );
    let (status, text) = parse_answer(&got);
    assert_eq!(status, 504, "{text}");
    writer.abort();

    // A slot that trickles its head is timed the same way.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = TestConfig::new(dir.path())
        .slot("blue", trickle, 100)
        .set_str("proxy", "response_header_timeout", "800ms");
    let q = support::start(cfg.load()).await;
    let (status, text) = exchange(
        q.public_addr,
        b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 504, "{text}");
    q.shutdown().await;

    // A slow answer: 504 after response_header_timeout, unless it is a tools/call.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = proxy_keys(
        TestConfig::new(dir.path()).slot("blue", delaying, 100),
        &[
            ("response_header_timeout", "300ms"),
            ("tool_call_timeout", "10s"),
        ],
    );
    let r = support::start(cfg.load()).await;
    let slow = b"POST /mcp?ms=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 2\r\n";
    let (status, text) = exchange(r.public_addr, &[&slow[..], b"\r\n{}"].concat()).await;
    assert_eq!(status, 504, "{text}");
    let (status, text) = exchange(
        r.public_addr,
        &[&slow[..], b"Mcp-Method: tools/call\r\n\r\n{}"].concat(),
    )
    .await;
    assert_eq!(status, 200, "a tools/call gets tool_call_timeout: {text}");
    r.shutdown().await;

    let m = metrics(p.admin_addr).await;
    for (series, want) in [
        ("mcpflip_client_errors_total{kind=\"body_timeout\"}", 1),
        (
            "mcpflip_upstream_errors_total{slot=\"green\",kind=\"response_timeout\"}",
            2,
        ),
        ("mcpflip_requests_total{slot=\"blue\",code=\"4xx\"}", 1),
        ("mcpflip_requests_total{slot=\"blue\",code=\"5xx\"}", 0),
    ] {
        assert_eq!(metric(&m, series), want, "{series} in\n{m}");
    }
    p.shutdown().await;

    // An SSE stream quieter than response_header_timeout stays open.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = TestConfig::new(dir.path())
        .slot("blue", h.blue, 100)
        .set_str("proxy", "response_header_timeout", "200ms");
    let p = support::start(cfg.load()).await;
    let mut body = http_client()
        .request(support::get(
            p.public_addr,
            "/ticker?interval_ms=700&count=3",
        ))
        .await
        .expect("stream")
        .into_body();
    let mut events = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the quiet stream is not cut");
        if let Ok(d) = frame.into_data() {
            events += String::from_utf8_lossy(&d).matches("event: tick").count();
        }
    }
    assert_eq!(events, 3);
    p.shutdown().await;
    h.stop.cancel();
}

/// A request whose chunked body has an invalid chunk size.
const BAD_CHUNK: &[u8] = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"jsonrpc\"\r\nzz\r\n";

/// Defect 3: a broken client body is the client's 400, never the slot's 5xx:
/// 20 of them during `deploy green`'s watch window do not roll green back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_client_bodies_are_400_and_never_roll_back_a_deploy() {
    let h = Harness::new().await;
    let cfg = h
        .builder()
        .set_str("watch", "window", "3s")
        .set_str("watch", "interval", "1500ms")
        .set("watch", "max_error_ratio", "0.05");
    let p = support::start(cfg.load()).await;
    let socket = h.socket();
    let deploy = tokio::spawn(async move {
        mcpflip::control::client::send(&socket, "deploy green", |_| {}).await
    });
    until("green serving", || {
        p.controller
            .tables
            .load()
            .get("green")
            .is_some_and(|s| s.weight > 0)
    })
    .await;
    for i in 0..20 {
        let (status, text) = if i % 2 == 0 {
            exchange(p.public_addr, BAD_CHUNK).await
        } else {
            // A body cut short: the client closes its side after 10 of 100 bytes.
            let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
            s.write_all(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"",
            )
            .await
            .expect("write");
            s.shutdown().await.expect("half close");
            parse_answer(&read_until_closed(&mut s).await.expect("answered"))
        };
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("body_invalid"), "{text}");
    }
    let reply = tokio::time::timeout(Duration::from_secs(30), deploy)
        .await
        .expect("deploy ends")
        .expect("task")
        .expect("reply");
    assert_eq!(
        reply["ok"], true,
        "a client rolled the deploy back: {reply}"
    );
    assert_eq!(reply["watch"]["result"], "passed", "{reply}");
    let m = metrics(p.admin_addr).await;
    for (series, want) in [
        ("mcpflip_client_errors_total{kind=\"body_invalid\"}", 20),
        ("mcpflip_requests_total{slot=\"green\",code=\"4xx\"}", 20),
        ("mcpflip_requests_total{slot=\"green\",code=\"5xx\"}", 0),
        (
            "mcpflip_upstream_errors_total{slot=\"green\",kind=\"reset\"}",
            0,
        ),
    ] {
        assert_eq!(metric(&m, series), want, "{series} in\n{m}");
    }
    p.shutdown().await;
    h.stop.cancel();
}

/// Bytes the proxy has queued for `client_port` on its connection from
/// `proxy_port` (the kernel's send queue: a client that does not read makes
/// it grow).
fn send_queue(proxy_port: u16, client_port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let (local, remote) = (
        format!("0100007F:{proxy_port:04X}"),
        format!("0100007F:{client_port:04X}"),
    );
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
                .then(|| f.get(4)?.split(':').next())
                .flatten()
                .and_then(|tx| u64::from_str_radix(tx, 16).ok())
        })
        .next()
        .unwrap_or(0)
}

/// A fast ticker for a client that will stop reading.
const FLOOD: &str = "/ticker?interval_ms=1&pad=16384";

/// Defect 4, HTTP/1.1: a forced stream whose client stopped reading ends
/// within the grace: `drain --wait` reports `drained` only once the stream
/// no longer counts, and the client's connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_stream_whose_h1_client_does_not_read_is_ended() {
    let h = Harness::new().await;
    let p = h.start().await;
    let blue = support::stats(&p, "blue");
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock.connect(p.public_addr).await.expect("connect");
    let client_port = s.local_addr().expect("addr").port();
    s.write_all(format!("GET {FLOOD} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 64];
    let n = s.read(&mut head).await.expect("head");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    until("1 live stream", || blue.live_streams() == 1).await;
    // The client reads no more: the proxy's send queue fills.
    until("the proxy's send queue to the client is full", || {
        send_queue(p.public_addr.port(), client_port) > 256 * 1024
    })
    .await;
    assert_eq!(h.ctl("weights green=1").await["ok"], true);
    let r = h.ctl("drain blue --wait --deadline 300ms").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["forced"], 1, "{r}");
    assert_eq!(
        blue.live_streams(),
        0,
        "the slot reported drained while its forced stream was still open: {r}"
    );
    assert!(
        read_until_closed(&mut s).await.is_ok(),
        "the forced stream's connection is still open"
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 4, HTTP/2: the same with a client that stops reading one stream (its
/// flow-control window fills; hyper stops polling the body). The connection is
/// dropped after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_stream_whose_h2_client_does_not_read_is_ended() {
    let h = Harness::new().await;
    let p = h.start().await;
    let blue = support::stats(&p, "blue");
    let tcp = TcpStream::connect(p.public_addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let resp = send
        .send_request(support::get(p.public_addr, FLOOD))
        .await
        .expect("h2 stream");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // One frame read, then none: the stream's window fills at once.
    body.frame().await.expect("a frame").expect("data");
    until("1 live stream", || blue.live_streams() == 1).await;
    assert_eq!(h.ctl("weights green=1").await["ok"], true);
    let r = h.ctl("drain blue --wait --deadline 500ms").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["forced"], 1, "{r}");
    assert_eq!(
        blue.live_streams(),
        0,
        "the slot reported drained while its forced stream was still open: {r}"
    );
    let ended = tokio::time::timeout(PATIENCE, driver).await;
    assert!(
        ended.is_ok(),
        "the forced stream's h2 connection is still open"
    );
    drop(body);
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 5: at `max_connections` a new connection is answered 503 with
/// `Connection: close` and counted; the others keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_new_connections_get_503() {
    let h = Harness::new().await;
    let p = support::start(h.builder().set("proxy", "max_connections", "2").load()).await;
    let client = http_client();
    let mut held = Vec::new();
    for _ in 0..2 {
        let req = support::get(p.public_addr, "/ticker?interval_ms=1000");
        held.push(client.request(req).await.expect("stream").into_body());
    }
    until("2 open connections", || {
        p.proxy_stats.open_connections() == 2
    })
    .await;
    let (status, text) = exchange(
        p.public_addr,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("\"error\":\"max_connections\""), "{text}");
    let m = metrics(p.admin_addr).await;
    assert_eq!(metric(&m, "mcpflip_open_connections"), 2, "{m}");
    assert_eq!(
        metric(
            &m,
            "mcpflip_connections_refused_total{reason=\"max_connections\"}"
        ),
        1,
        "{m}"
    );
    held.pop();
    until("1 open connection", || {
        p.proxy_stats.open_connections() == 1
    })
    .await;
    let (status, text) = exchange(
        p.public_addr,
        b"GET /ticker?count=1&interval_ms=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    drop(held);
    p.shutdown().await;
    h.stop.cancel();
}

/// At a connection cap, a client that writes its whole request before it
/// reads (Python's `http.client`, curl without `Expect`) reads its 503: the
/// refused connection closes lingering, as after a 413, not with a reset that
/// would destroy the answer in the client's buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_connection_cap_a_client_still_writing_reads_its_503() {
    let h = Harness::new().await;
    let p = support::start(
        h.builder()
            .set("proxy", "max_connections", "2")
            .set("proxy", "max_connections_per_ip", "1")
            .load(),
    )
    .await;
    let to = p.public_addr;
    let mut post = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 8388608\r\n\r\n"
        .to_vec();
    post.resize(post.len() + (8 << 20), b' ');
    // A's stream takes its address's cap; with B's, the whole cap is taken
    // for a third address.
    let mut held = vec![stream_from(A, to).await];
    for (from, why) in [
        (A, "max_connections_per_ip"),
        ([127, 0, 0, 4], "max_connections"),
    ] {
        if why == "max_connections" {
            held.push(stream_from(B, to).await);
        }
        for _ in 0..3 {
            let (mut r, w) = support::connect_from(from, to).await.into_split();
            let written = write_unasked(w, post.clone()).await.expect("the writer");
            assert!(written.is_some(), "{why}: the request was cut with a reset");
            drop(written);
            let got = read_until_closed(&mut r)
                .await
                .expect("answered and closed");
            let (status, text) = parse_answer(&got);
            assert_eq!(status, 503, "{why}: {text}");
            assert!(text.contains(&format!("\"error\":\"{why}\"")), "{text}");
        }
    }
    drop(held);
    p.shutdown().await;
    h.stop.cancel();
}

/// `[proxy] max_connections_per_ip`: an address at its cap has its new
/// connection answered 503 (`max_connections_per_ip`, counted) while
/// another address is served, and gets room back as its connections close;
/// a trusted proxy's connections are not capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_per_ip_that_address_gets_503_and_others_are_served() {
    let h = Harness::new().await;
    let p = support::start(
        h.builder()
            .set("proxy", "max_connections_per_ip", "2")
            .load(),
    )
    .await;
    let to = p.public_addr;
    // Two streams held open from A.
    let held = vec![stream_from(A, to).await, stream_from(A, to).await];
    let (status, text) = once_from(A, to).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("\"error\":\"max_connections_per_ip\""),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    let (status, text) = once_from(B, to).await;
    assert_eq!(status, 200, "another address: {text}");
    let m = metrics(p.admin_addr).await;
    let refused = "mcpflip_connections_refused_total{reason=\"max_connections_per_ip\"}";
    assert_eq!(metric(&m, refused), 1, "{m}");
    assert_eq!(
        metric(
            &m,
            "mcpflip_connections_refused_total{reason=\"max_connections\"}"
        ),
        0,
        "{m}"
    );
    // The map holds A alone once B's connection is gone, and nothing once
    // A's are.
    let admin = p.admin_addr;
    let per_ip = "mcpflip_client_addresses{limit=\"max_connections_per_ip\"}";
    let addresses = || async move { metric(&metrics(admin).await, per_ip) };
    support::until_async("A alone in the per-address map", || async {
        addresses().await == 1
    })
    .await;
    // One of A's streams closes: A has room again.
    let mut held = held;
    held.pop();
    until_async_status(|| once_from(A, to), 200).await;
    drop(held);
    support::until_async("an empty per-address map", || async {
        addresses().await == 0
    })
    .await;
    p.shutdown().await;

    // Behind a trusted proxy every client arrives from its address: not capped.
    let p = support::start(
        h.builder()
            .set("proxy", "max_connections_per_ip", "1")
            .set("proxy", "trusted_proxies", "[\"127.0.0.2\"]")
            .load(),
    )
    .await;
    let to = p.public_addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(stream_from(A, to).await);
    }
    held.push(stream_from(B, to).await);
    let (status, text) = once_from(B, to).await;
    assert_eq!(status, 503, "an untrusted address is still capped: {text}");
    drop(held);
    p.shutdown().await;
    h.stop.cancel();
}

/// `[proxy] rate_limit`: an address over its burst is answered 429 with
/// `Retry-After` (counted) on a connection that stays usable, while another
/// address is served; behind a trusted proxy each client it names has a
/// budget of its own and the proxy's own requests are not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_rate_limit_an_address_gets_429_with_retry_after_and_others_are_served() {
    let h = Harness::new().await;
    // One a minute, three at once.
    let limit = "{ requests = 1, per = \"1m\", burst = 3 }";
    let p = support::start(h.builder().set("proxy", "rate_limit", limit).load()).await;
    let to = p.public_addr;
    let mut a = support::connect_from(A, to).await;
    let get = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for n in 0..3 {
        let (status, text) = ask(&mut a, get).await;
        assert_eq!(status, 200, "request {n} of the burst: {text}");
    }
    // Over: 429 on the same connection, which goes on.
    for _ in 0..2 {
        let (status, text) = ask(&mut a, get).await;
        assert_eq!(status, 429, "{text}");
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains("retry-after: 60\r\n") || lower.contains("retry-after: 59\r\n"),
            "one request a minute: {text}"
        );
        assert!(text.contains("\"error\":\"rate_limited\""), "{text}");
    }
    // A new connection from the same address is still over.
    let (status, text) = once_from(A, to).await;
    assert_eq!(status, 429, "{text}");
    let (status, text) = once_from(B, to).await;
    assert_eq!(status, 200, "another address: {text}");
    // Over HTTP/2 each stream is a request.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(std::net::IpAddr::from([127, 0, 0, 4])));
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(connector);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = http::Request::get(format!("http://{to}/healthz"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = h2.request(req).await.expect("h2 request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        statuses.push((
            resp.status().as_u16(),
            resp.headers().get("retry-after").cloned(),
        ));
    }
    assert_eq!(
        statuses.iter().map(|s| s.0).collect::<Vec<_>>(),
        [200, 200, 200, 429]
    );
    assert!(statuses[3].1.is_some(), "a Retry-After: {statuses:?}");
    let m = metrics(p.admin_addr).await;
    let series = "mcpflip_local_responses_total{code=\"429\",reason=\"rate_limited\"}";
    assert_eq!(metric(&m, series), 4, "{m}");
    // Three addresses remembered: A, B and the HTTP/2 client.
    let remembered = "mcpflip_client_addresses{limit=\"rate_limit\"}";
    assert_eq!(metric(&m, remembered), 3, "{m}");
    drop(a);
    p.shutdown().await;

    // Behind a trusted proxy (A), the client it names is limited.
    let p = support::start(
        h.builder()
            .set(
                "proxy",
                "rate_limit",
                "{ requests = 1, per = \"1m\", burst = 1 }",
            )
            .set("proxy", "trusted_proxies", "[\"127.0.0.2\"]")
            .load(),
    )
    .await;
    let to = p.public_addr;
    let mut a = support::connect_from(A, to).await;
    let for_client = |ip: &str| {
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: {ip}\r\n\r\n")
    };
    assert_eq!(ask(&mut a, &for_client("198.51.100.7")).await.0, 200);
    assert_eq!(ask(&mut a, &for_client("198.51.100.7")).await.0, 429);
    assert_eq!(
        ask(&mut a, &for_client("198.51.100.8")).await.0,
        200,
        "another client"
    );
    // The proxy's own requests (no client named) are not limited.
    for _ in 0..3 {
        assert_eq!(ask(&mut a, get).await.0, 200);
    }
    // An untrusted address's claims name nobody: it is limited as itself.
    let mut b = support::connect_from(B, to).await;
    assert_eq!(ask(&mut b, &for_client("198.51.100.9")).await.0, 200);
    assert_eq!(ask(&mut b, &for_client("198.51.100.10")).await.0, 429);
    p.shutdown().await;
    h.stop.cancel();
}

/// `[proxy] allowed_clients`: a client outside the list is answered 403
/// (counted) on every request, one inside is served; behind a trusted
/// proxy the client it names is checked, and an untrusted address cannot
/// claim its way in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_allowed_clients_gets_403_and_one_inside_is_served() {
    let h = Harness::new().await;
    let p = support::start(
        h.builder()
            .set(
                "proxy",
                "allowed_clients",
                "[\"127.0.0.2/32\", \"10.0.0.0/8\"]",
            )
            .load(),
    )
    .await;
    let to = p.public_addr;
    let get = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut a = support::connect_from(A, to).await;
    assert_eq!(ask(&mut a, get).await.0, 200);
    let mut b = support::connect_from(B, to).await;
    for _ in 0..2 {
        let (status, text) = ask(&mut b, get).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("\"error\":\"client_not_allowed\""), "{text}");
    }
    let m = metrics(p.admin_addr).await;
    let series = "mcpflip_local_responses_total{code=\"403\",reason=\"client_not_allowed\"}";
    assert_eq!(metric(&m, series), 2, "{m}");
    p.shutdown().await;

    // Behind a trusted proxy (A): the client it names.
    let p = support::start(
        h.builder()
            .set("proxy", "allowed_clients", "[\"198.51.100.0/24\"]")
            .set("proxy", "trusted_proxies", "[\"127.0.0.2\"]")
            .load(),
    )
    .await;
    let to = p.public_addr;
    let for_client = |ip: &str| {
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: {ip}\r\n\r\n")
    };
    let mut a = support::connect_from(A, to).await;
    assert_eq!(ask(&mut a, &for_client("198.51.100.7")).await.0, 200);
    assert_eq!(ask(&mut a, &for_client("203.0.113.1")).await.0, 403);
    assert_eq!(ask(&mut a, get).await.0, 200, "the proxy's own request");
    let mut b = support::connect_from(B, to).await;
    assert_eq!(
        ask(&mut b, &for_client("198.51.100.7")).await.0,
        403,
        "an untrusted address's claim is not believed"
    );
    p.shutdown().await;

    // `client_ip_header`: the trusted proxy names the client in its own
    // header (a CDN's); `X-Forwarded-For` then names nobody.
    let p = support::start(
        h.builder()
            .set("proxy", "allowed_clients", "[\"198.51.100.0/24\"]")
            .set("proxy", "trusted_proxies", "[\"127.0.0.2\"]")
            .set_str("proxy", "client_ip_header", "CF-Connecting-IP")
            .load(),
    )
    .await;
    let to = p.public_addr;
    let named = |ip: &str, forwarded: &str| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nCF-Connecting-IP: {ip}\r\n\
             X-Forwarded-For: {forwarded}\r\n\r\n"
        )
    };
    let mut a = support::connect_from(A, to).await;
    assert_eq!(
        ask(&mut a, &named("198.51.100.7", "203.0.113.1")).await.0,
        200
    );
    assert_eq!(
        ask(&mut a, &named("203.0.113.1", "198.51.100.7")).await.0,
        403,
        "X-Forwarded-For is not the header asked for"
    );
    // Over HTTP/2 (the header map's path) the same.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(std::net::IpAddr::from(A)));
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(connector);
    for (ip, want) in [("198.51.100.9", 200), ("203.0.113.9", 403)] {
        let req = http::Request::get(format!("http://{to}/healthz"))
            .header("cf-connecting-ip", ip)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = h2.request(req).await.expect("h2 request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), want, "{ip} over HTTP/2");
    }
    let mut b = support::connect_from(B, to).await;
    assert_eq!(
        ask(&mut b, &named("198.51.100.7", "198.51.100.7")).await.0,
        403,
        "an untrusted address's claim is not believed"
    );
    p.shutdown().await;

    // `client_ip_header = "Forwarded"` (RFC 7239): the `for=` node of each
    // element, read from the right as X-Forwarded-For's entries are.
    let p = support::start(
        h.builder()
            .set("proxy", "allowed_clients", "[\"198.51.100.0/24\"]")
            .set(
                "proxy",
                "trusted_proxies",
                "[\"127.0.0.2\", \"10.0.0.0/8\"]",
            )
            .set_str("proxy", "client_ip_header", "Forwarded")
            .load(),
    )
    .await;
    let to = p.public_addr;
    let forwarded = |value: &str| {
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nForwarded: {value}\r\n\r\n")
    };
    let mut a = support::connect_from(A, to).await;
    for (value, want) in [
        ("for=198.51.100.7;proto=https", 200),
        ("for=203.0.113.1", 403),
        ("for=\"198.51.100.8:4711\", for=10.1.2.3;by=10.0.0.1", 200),
        ("for=198.51.100.9, for=203.0.113.2", 403),
        ("For=203.0.113.3, for=198.51.100.10", 200),
        // An obfuscated node before the answer: the trusted proxy itself
        // (127.0.0.2, not in allowed_clients' list, is a trusted proxy: served).
        ("for=203.0.113.4, for=_hidden", 200),
    ] {
        assert_eq!(
            ask(&mut a, &forwarded(value)).await.0,
            want,
            "Forwarded: {value}"
        );
    }
    let (status, text) = ask(&mut a, &forwarded("for=\"[2001:db8::1]:80\"")).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("2001:db8::1 is not among"), "{text}");
    p.shutdown().await;
    h.stop.cancel();
}

/// `[admin] allowed_clients`: the admin listener answers 403 to any other
/// address on every request. And `reload` names what it cannot apply of
/// `[admin]` and `[cluster]` (both were once left out of its reply, so a
/// changed `allowed_hosts` looked applied and was not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_only_allowed_clients_and_reload_names_what_it_cannot_apply() {
    let h = Harness::new().await;
    let cfg = h
        .builder()
        .set("admin", "allowed_clients", "[\"127.0.0.2\"]");
    let p = support::start(cfg.load()).await;
    let get = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut a = support::connect_from(A, p.admin_addr).await;
    let (status, text) = ask(&mut a, get).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("mcpflip_"), "{text}");
    let mut b = support::connect_from(B, p.admin_addr).await;
    for _ in 0..2 {
        let (status, text) = ask(&mut b, get).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("[admin] allowed_clients"), "{text}");
        assert!(!text.contains("mcpflip_"), "{text}");
    }

    cfg.clone()
        .set("admin", "allowed_hosts", "[\"metrics.internal\"]")
        .set("cluster", "etcd", "[\"http://127.0.0.1:2379\"]")
        .set_str("cluster", "instance", "edge-1")
        .write();
    let r = h.ctl("reload").await;
    assert_eq!(r["ok"], true, "{r}");
    let restart: Vec<&str> = r["restart_required"]
        .as_array()
        .map(|a| a.iter().filter_map(|w| w.as_str()).collect())
        .unwrap_or_default();
    assert!(
        restart.contains(&"[admin] allowed_hosts") && restart.contains(&"[cluster]"),
        "{r}"
    );
    // Still the running settings: 127.0.0.1 is a loopback name.
    assert_eq!(ask(&mut a, get).await.0, 200);
    p.shutdown().await;
    h.stop.cancel();
}

/// Writes one request on a kept-alive connection and reads its answer (a
/// head and a `Content-Length` body): status and text.
async fn ask(s: &mut TcpStream, request: &str) -> (u16, String) {
    s.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length");
            if got.len() >= end + 4 + length {
                return parse_answer(&got);
            }
        }
    }
}

const A: [u8; 4] = [127, 0, 0, 2];
const B: [u8; 4] = [127, 0, 0, 3];

/// An SSE stream from `from`, open once its head (200) is read.
async fn stream_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let mut s = support::connect_from(from, to).await;
    s.write_all(b"GET /ticker?interval_ms=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.expect("the stream's head");
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    s
}

/// One request from `from` on a connection of its own: status and answer.
async fn once_from(from: [u8; 4], to: SocketAddr) -> (u16, String) {
    let mut s = support::connect_from(from, to).await;
    s.write_all(b"GET /ticker?count=1&interval_ms=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut s)
        .await
        .expect("the proxy answers and closes");
    parse_answer(&got)
}

/// Retries `ask` until it answers `want` (a closed connection's count is
/// given back when the proxy sees the close).
async fn until_async_status<F, Fut>(ask: F, want: u16)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (u16, String)>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = ask().await;
        if status == want {
            return;
        }
        assert!(tokio::time::Instant::now() < end, "still {status}: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Defect 6: malformed `Host` / `Origin` values are 400 on the public listener,
/// counted, and never reach a slot; the admin listener has the guard too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_hosts_are_400_and_the_admin_listener_is_guarded() {
    let h = Harness::new().await;
    let p = h.start().await;
    let attacks: [&[u8]; 6] = [
        b"Host: localhost:80@evil.com\r\n",
        b"Host: localhost:evil.com\r\n",
        b"Host: [::1]evil.com\r\n",
        b"Host: localhost\r\nHost: evil.com\r\n",
        b"Host: l\xc3\xb6calhost\r\n",
        b"Host: localhost\r\nOrigin: http://localhost:80@evil.com\r\n",
    ];
    for headers in attacks {
        // A request the slot would answer 200.
        let req = [
            &b"GET /healthz HTTP/1.1\r\n"[..],
            headers,
            b"Connection: close\r\n\r\n",
        ]
        .concat();
        let (status, text) = exchange(p.public_addr, &req).await;
        assert_eq!(
            status,
            400,
            "{:?} -> {text}",
            String::from_utf8_lossy(headers)
        );
        assert!(text.contains("Bad Request"), "{text}");
    }
    let blue = support::stats(&p, "blue");
    assert_eq!(
        (1..=5).map(|c| blue.responses(c)).sum::<u64>(),
        0,
        "a malformed Host reached the slot"
    );
    let m = metrics(p.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "mcpflip_local_responses_total{code=\"400\",reason=\"bad_host\"}"
        ),
        6,
        "{m}"
    );
    assert_eq!(
        metric(&m, "mcpflip_client_errors_total{kind=\"bad_host\"}"),
        6
    );

    // The admin listener answers /status only to loopback names.
    let admin = p.admin_addr;
    let status_with = |host: &'static [u8]| async move {
        let req = [
            &b"GET /status HTTP/1.1\r\nHost: "[..],
            host,
            b"\r\nConnection: close\r\n\r\n",
        ]
        .concat();
        exchange(admin, &req).await
    };
    let (status, text) = status_with(b"evil.example.com").await;
    assert_eq!(status, 403, "{text}");
    assert!(
        !text.contains("upstream"),
        "the refused answer leaks slots: {text}"
    );
    let (status, _) = status_with(b"localhost:80@evil.com").await;
    assert_eq!(status, 400);
    let (status, text) = status_with(b"localhost").await;
    assert_eq!(status, 200, "{text}");
    p.shutdown().await;
    h.stop.cancel();
}

/// A request that names no host (HTTP/1.1 without `Host`, RFC 9112 §3.2)
/// and a `CONNECT` are 400, a `TRACE` 405, counted, and never reach a slot,
/// as nginx answers them; an HTTP/1.0 request may still come without `Host`. Before,
/// the first went to the slot and the second reached it as `CONNECT /`,
/// whose 2xx hyper took for a tunnel: the client got no answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_host_and_connect_are_400() {
    let h = Harness::new().await;
    let p = h.start().await;
    let port = p.public_addr.port();
    let connect = format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    for (req, why) in [
        (
            "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
            "no Host header",
        ),
        (connect, "CONNECT is not served"),
        (
            "TRACE / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: secret\r\n\r\n".to_string(),
            "TRACE is not served",
        ),
    ] {
        let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let (head, body) = read_message(&mut s, &mut buf).await;
        let status = if req.starts_with("TRACE") { 405 } else { 400 };
        assert!(
            head.starts_with(&format!("http/1.1 {status}")),
            "{req:?} -> {head}"
        );
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(why), "{req:?} -> {body}");
    }
    let blue = support::stats(&p, "blue");
    assert_eq!(
        (1..=5).map(|c| blue.responses(c)).sum::<u64>(),
        0,
        "a request without a host, a CONNECT or a TRACE reached the slot"
    );
    // HTTP/1.0 has no Host requirement: served.
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut s).await.expect("an answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    let m = metrics(p.admin_addr).await;
    for (series, n) in [
        (
            "mcpflip_local_responses_total{code=\"400\",reason=\"bad_host\"}",
            1,
        ),
        (
            "mcpflip_local_responses_total{code=\"400\",reason=\"bad_request\"}",
            1,
        ),
        (
            "mcpflip_local_responses_total{code=\"405\",reason=\"method_not_allowed\"}",
            1,
        ),
        ("mcpflip_client_errors_total{kind=\"bad_host\"}", 1),
    ] {
        assert_eq!(metric(&m, series), n, "{series}\n{m}");
    }
    p.shutdown().await;
    h.stop.cancel();
}

/// A request body in a transfer coding other than `chunked` alone is `501`
/// (as nginx answers it, RFC 9112 §6.1), counted, never reaches a slot, and
/// the connection closes after it with the body read off (the client that
/// writes it whole reads its 501, not a reset). Before, hyper took
/// `gzip, chunked` for chunked, the header went as hop-by-hop, and the slot
/// got the coded bytes as the content with nothing to say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_in_another_transfer_coding_is_501() {
    let h = Harness::new().await;
    let p = h.start().await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for coding in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
        let request =
            format!("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n{coding}\r\n{body}GET /next HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(request.as_bytes()).await.expect("write");
        let got = read_until_closed(&mut s).await.unwrap_or_else(|got| {
            panic!(
                "{coding:?}: not closed: {:?}",
                String::from_utf8_lossy(&got)
            )
        });
        let (status, text) = parse_answer(&got);
        assert_eq!(status, 501, "{coding:?}: {text}");
        assert!(text.contains("other than chunked"), "{coding:?}: {text}");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{coding:?}: the bytes after the body were served: {text}"
        );
    }
    let blue = support::stats(&p, "blue");
    assert_eq!(
        (1..=5).map(|c| blue.responses(c)).sum::<u64>(),
        0,
        "a request in another transfer coding reached the slot"
    );
    // Chunked alone is served.
    let json = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
        json.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let got = read_until_closed(&mut s).await.expect("an answer");
    let (status, text) = parse_answer(&got);
    assert_ne!(status, 501, "{text}");
    assert_eq!(
        (1..=5).map(|c| blue.responses(c)).sum::<u64>(),
        1,
        "the chunked request did not reach the slot: {text}"
    );
    let m = metrics(p.admin_addr).await;
    let series = "mcpflip_local_responses_total{code=\"501\",reason=\"not_implemented\"}";
    assert_eq!(metric(&m, series), 2, "{series}\n{m}");
    p.shutdown().await;
    h.stop.cancel();
}

/// A request that names its session twice (two `Mcp-Session-Id` headers, a
/// legacy POST's `session_id` or `sessionId` twice in its query), or the
/// last event it saw twice (`Last-Event-ID`, read to resume a moved
/// session's stream), is 400 and
/// never reaches a slot: the proxy routed by the first while the slot read
/// the one its framework picks (Starlette's query map keeps the last), with
/// only the first's tag taken off. Before, both went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_names_its_session_twice_is_400() {
    let h = Harness::new().await;
    let (slot, mut heads) = hop_by_hop_slot().await;
    let cfg = TestConfig::new(h.dir.path()).slot("blue", slot, 100);
    let p = support::start(cfg.load()).await;
    let tag = "mf1.blue.1.";
    for (target, headers) in [
        (
            "/mcp".to_string(),
            format!("Mcp-Session-Id: {tag}a\r\nMcp-Session-Id: {tag}b\r\n"),
        ),
        (
            format!("/messages?session_id={tag}a&session_id=b"),
            String::new(),
        ),
        (
            format!("/messages?sessionId={tag}a&session_id={tag}b"),
            String::new(),
        ),
        (
            "/mcp".to_string(),
            format!("Mcp-Session-Id: {tag}a\r\nLast-Event-ID: 1\r\nLast-Event-ID: 2\r\n"),
        ),
    ] {
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let (head, body) = read_message(&mut s, &mut buf).await;
        assert!(
            head.starts_with("http/1.1 400"),
            "{target} {headers:?}: {head}"
        );
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("more than one session id"), "{body}");
    }
    assert!(
        heads.try_recv().is_err(),
        "a session named twice reached the slot"
    );
    // Named once, it goes on.
    let (status, _) = exchange(
        p.public_addr,
        b"POST /messages?x=1&session_id=b HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Connection: close\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 200);
    let m = metrics(p.admin_addr).await;
    let series = "mcpflip_local_responses_total{code=\"400\",reason=\"bad_request\"}";
    assert_eq!(metric(&m, series), 4, "{m}");
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot that answers on kept connections with the framing its path names:
/// `/both` a `Content-Length` beside chunked coding that says more than the
/// body, `/short` one that says less, `/gzip` a transfer coding other than
/// chunked and `/gzip-chunked` one before chunked (then it closes), `/204` a 204 with a length, `/listed` its
/// length as a list (`2, 2`); anything else `{}` by its length.
async fn framing_slot() -> u16 {
    scripted_slot(|path| match path {
        "/both" => (&b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"[..], true),
        "/short" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", true),
        "/listed" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}", true),
        "/204" => (b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n", true),
        "/gzip" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00", false),
        "/gzip-chunked" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n", false),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true),
    })
    .await
}

/// A slot that answers each request with the fixed bytes `script` gives
/// for its path, then reads the next request on the same connection, or
/// closes it when `script` says so.
async fn scripted_slot(script: fn(&str) -> (&'static [u8], bool)) -> u16 {
    raw_slot::<(), _, _>(move |mut s, _tx| async move {
        let mut buf = Vec::new();
        while let Some(end) = read_head(&mut s, &mut buf).await {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            let path = head.split(' ').nth(1).unwrap_or_default();
            let (answer, go_on) = script(path);
            if s.write_all(answer).await.is_err() || !go_on {
                return;
            }
        }
    })
    .await
    .0
}

/// A slot's `Content-Length` beside `Transfer-Encoding` is not passed on
/// (RFC 9112 §6.3): the client gets the body framed by the proxy alone, and
/// its connection carries the next answer intact. Before, the slot's length
/// framed the re-chunked body: one that said more cut the client's
/// connection short, one that said less left the rest to be read as the
/// next answer. A transfer coding the proxy would have to take off is the
/// slot's 502 (nginx's "upstream sent unknown Transfer-Encoding"), not coded
/// bytes handed on as the content: `gzip, chunked` was taken for chunked
/// and the gzip coding dropped (as Debian 12's nginx 1.22 still does). A 204's length is not passed on either:
/// over HTTP/2 it was, and the client took the answer for a protocol error,
/// as it took a length given as a list (`2, 2`, which HTTP/1.1 allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slots_length_beside_chunked_coding_or_on_a_204_is_not_passed_on() {
    let h = Harness::new().await;
    let slot = framing_slot().await;
    let cfg = TestConfig::new(h.dir.path()).slot("blue", slot, 100);
    let p = support::start(cfg.load()).await;
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    let mut buf = Vec::new();
    for (path, status, body) in [
        ("/both", "200", &b"{}"[..]),
        ("/short", "200", b"abcd"),
        ("/ok", "200", b"{}"),
        ("/204", "204", b""),
        ("/listed", "200", b"{}"),
        ("/gzip-chunked", "502", b""),
        ("/gzip", "502", b""),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(request.as_bytes()).await.expect("write");
        let (head, got) = read_message(&mut s, &mut buf).await;
        assert!(
            head.starts_with(&format!("http/1.1 {status}")),
            "{path}: {head}"
        );
        if status == "502" {
            let text = String::from_utf8_lossy(&got);
            assert!(text.contains("Transfer-Encoding"), "{path}: {text}");
        } else {
            assert_eq!(got, body, "{path}: {head}");
            assert!(!head.contains("content-length: 50"), "{path}: {head}");
            assert!(!head.contains("content-length: 8"), "{path}: {head}");
        }
    }
    assert!(buf.is_empty(), "bytes past the last answer: {buf:?}");

    // The same answers over HTTP/2, which hyper frames from the headers.
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    for (path, status, body) in [
        ("/both", 200, &b"{}"[..]),
        ("/short", 200, b"abcd"),
        ("/204", 204, b""),
        ("/listed", 200, b"{}"),
    ] {
        let resp = h2
            .get(
                format!("http://{}{path}", p.public_addr)
                    .parse()
                    .expect("uri"),
            )
            .await
            .unwrap_or_else(|e| panic!("{path} over HTTP/2: {e:?}"));
        assert_eq!(resp.status(), status, "{path}");
        let length = resp.headers().get("content-length").cloned();
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], body, "{path}");
        if let Some(n) = length {
            assert_eq!(
                n.to_str().ok(),
                Some(body.len().to_string().as_str()),
                "{path}"
            );
        }
    }
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot that sends an answer's head and part of its body, then stalls:
/// `/length` (a `Content-Length` of 100, 10 bytes sent), `/chunked` (one
/// chunk, no end), `/events` (an event stream: one event, then quiet).
/// `/slow` sends its 4-byte body a byte every 400 ms (each pause under the
/// test's timeout, the whole over it).
async fn stalling_slot() -> u16 {
    raw_slot::<(), _, _>(|mut s, _tx| async move {
        let mut buf = Vec::new();
        while let Some(end) = read_head(&mut s, &mut buf).await {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end);
            if head.starts_with("get /slow ") {
                if s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                for b in b"{ok}" {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    if s.write_all(&[*b]).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            let answer: &[u8] = if head.starts_with("get /chunked ") {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            } else if head.starts_with("get /events ") {
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n10\r\ndata: {\"n\": 1}\n\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
            // Stalls until the proxy lets go.
            let mut rest = [0u8; 1024];
            while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
            return;
        }
    })
    .await
    .0
}

/// A slot that stalls inside an answer's body (not an event stream) for
/// `response_body_timeout` has that answer cut: the client's connection is
/// closed before the body's end (HTTP/1.1) or its stream reset (HTTP/2),
/// and it is counted as `read_timeout` and in the watch's error share.
/// Before, nothing timed the body once its head was out: the client waited,
/// and held a connection to the slot, for as long as both stayed open. The pause is timed between reads,
/// not over the whole body, and an event stream is never timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_stalls_inside_a_body_has_that_answer_cut() {
    let h = Harness::new().await;
    let slot = stalling_slot().await;
    // Green, the same server, is a slot known to pause: its own timeout.
    let cfg = TestConfig::new(h.dir.path())
        .slot("blue", slot, 100)
        .slot("green", slot, 0)
        .slot_set("green", "response_body_timeout", "\"1h\"");
    let p = support::start(proxy_keys(cfg, &[("response_body_timeout", "1s")]).load()).await;

    // A body whose pauses are each shorter than the timeout is whole.
    let (status, text) = exchange(
        p.public_addr,
        b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("\r\n\r\n{ok}"), "{text}");

    for (path, sent, end) in [
        ("/length", "0123456789", None),
        ("/chunked", "hello", Some("0\r\n\r\n")),
    ] {
        let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(request.as_bytes()).await.expect("write");
        let started = std::time::Instant::now();
        let got = read_until_closed(&mut s).await.unwrap_or_else(|got| {
            panic!(
                "{path}: still open after 15 s: {:?}",
                String::from_utf8_lossy(&got)
            )
        });
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        assert!(text.contains(sent), "{path}: {text}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{path}: cut before the timeout: {text}"
        );
        match end {
            Some(end) => assert!(!text.ends_with(end), "{path}: {text}"),
            None => assert!(
                text.to_ascii_lowercase().contains("content-length: 100"),
                "{path}: {text}"
            ),
        }
    }

    // Over HTTP/2 the stream is reset: the body fails, not ends.
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let resp = h2
        .get(
            format!("http://{}/length", p.public_addr)
                .parse()
                .expect("uri"),
        )
        .await
        .expect("/length over HTTP/2");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(PATIENCE, resp.into_body().collect())
        .await
        .expect("the HTTP/2 stream ends within the patience");
    assert!(body.is_err(), "a cut body read as whole: {body:?}");

    // An event stream quiet for longer than the timeout stays open.
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let quiet = tokio::time::timeout(Duration::from_millis(2500), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(quiet.is_err(), "the event stream ended: {text}");
    assert!(text.contains("data: {\"n\": 1}"), "{text}");

    let m = metrics(p.admin_addr).await;
    let series = "mcpflip_upstream_errors_total{slot=\"blue\",kind=\"read_timeout\"}";
    assert_eq!(metric(&m, series), 3, "{series} in\n{m}");
    // And in what the watch judges: each cut answer failed as a 5xx would.
    let blue = support::stats(&p, "blue");
    assert_eq!(blue.upstream_failures(), 3);
    drop(s);

    // `[[slot]] response_body_timeout` overrides `[proxy]`'s.
    assert_eq!(h.ctl("flip green --no-probe").await["ok"], true);
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(b"GET /length HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let open = tokio::time::timeout(Duration::from_millis(2500), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        open.is_err(),
        "green's answer was cut at [proxy]'s timeout: {text}"
    );
    assert!(text.contains("0123456789"), "{text}");
    let green = support::stats(&p, "green");
    assert_eq!(green.upstream_errors(UpstreamError::ReadTimeout), 0);
    drop(s);
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot that sends an answer's head and part of its body, then breaks off
/// (killed, crashed): `/length` (a `Content-Length` of 100, 10 bytes sent)
/// and `/chunked` (one chunk, no end) close the connection, `/bad` sends a
/// chunk size that is not hex, `/events` an event stream's first event and
/// closes without its last chunk. `/ok` is whole.
async fn breaking_slot() -> u16 {
    scripted_slot(|path| match path {
        "/length" => (&b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"[..], false),
        "/chunked" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", false),
        "/bad" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", false),
        "/events" => (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n10\r\ndata: {\"n\": 1}\n\n\r\n", false),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true),
    })
    .await
}

/// A slot that breaks off inside an answer's body (its connection closed
/// before the body's end, or a chunk it cannot frame) has the client's
/// answer cut, and it is counted as `body_reset` in
/// `mcpflip_upstream_errors_total`; an answer that is not an event stream
/// counts in the watch's error share too, as a 5xx would. Before, such an
/// answer showed in the access log alone: the counter an operator alerts on
/// (nginx's "upstream prematurely closed connection while reading upstream")
/// stayed at 0, and a new slot that crashed inside its answers passed its
/// watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_breaks_inside_a_body_is_counted() {
    let h = Harness::new().await;
    let slot = breaking_slot().await;
    let cfg = TestConfig::new(h.dir.path()).slot("blue", slot, 100);
    let p = support::start(cfg.load()).await;

    let (status, text) = exchange(
        p.public_addr,
        b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("\r\n\r\n{}"), "{text}");

    for (path, sent) in [
        ("/length", "0123456789"),
        ("/chunked", "hello"),
        ("/bad", "hello"),
        ("/events", "data: {\"n\": 1}"),
    ] {
        let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.expect("write");
        let got = read_until_closed(&mut s).await.unwrap_or_else(|got| {
            panic!(
                "{path}: still open after 15 s: {:?}",
                String::from_utf8_lossy(&got)
            )
        });
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        assert!(text.contains(sent), "{path}: {text}");
        // Cut: neither the last chunk nor the announced length came.
        assert!(!text.ends_with("0\r\n\r\n"), "{path}: {text}");
        if path == "/length" {
            assert!(
                text.to_ascii_lowercase().contains("content-length: 100"),
                "{text}"
            );
        }
    }

    let m = metrics(p.admin_addr).await;
    let series = "mcpflip_upstream_errors_total{slot=\"blue\",kind=\"body_reset\"}";
    assert_eq!(metric(&m, series), 4, "{series} in\n{m}");
    let series = "mcpflip_upstream_errors_total{slot=\"blue\",kind=\"reset\"}";
    assert_eq!(metric(&m, series), 0, "{series} in\n{m}");
    // The three cut answers failed as a 5xx would; the stream's break is
    // counted above only (a stream a slot ends at a deploy is not a failed call).
    let blue = support::stats(&p, "blue");
    assert_eq!(blue.upstream_failures(), 3);
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot that keeps an idle connection `idle` long (saying so in
/// `Keep-Alive: timeout=N` when `say`; Node's HTTP server says `timeout=5`
/// on every answer, uvicorn closes after 5 s without saying) and closes one
/// that idled that long when the next request comes on it, as if its close
/// had crossed the request on the way: that request is lost unanswered.
/// Each connection and each such loss is reported.
async fn keep_alive_slot(
    idle: Duration,
    say: bool,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
    raw_slot(move |mut s, tx| async move {
        let _ = tx.send("connection");
        let mut buf = Vec::new();
        let mut answered = std::time::Instant::now();
        let answer = if say {
            format!(
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout={}\r\nContent-Length: 2\r\n\r\n{{}}",
                idle.as_secs()
            )
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_owned()
        };
        while let Some(end) = read_head(&mut s, &mut buf).await {
            buf.drain(..end);
            if answered.elapsed() >= idle {
                let _ = tx.send("lost");
                return;
            }
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            answered = std::time::Instant::now();
        }
    })
    .await
}

/// Sends a GET on one client connection after each pause; each must be
/// answered 200 `{}` with no `Keep-Alive` passed on. What the slot saw.
async fn paced_requests(
    p: &mcpflip::run::Running,
    pauses: &[u64],
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) -> Vec<&'static str> {
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    let mut buf = Vec::new();
    for pause in pauses {
        tokio::time::sleep(Duration::from_millis(*pause)).await;
        s.write_all(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        let (head, body) = read_message(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "after {pause} ms: {head}");
        assert!(!head.contains("keep-alive:"), "{head}");
        assert_eq!(body, b"{}");
    }
    let mut events = Vec::new();
    while let Ok(e) = seen.try_recv() {
        events.push(e);
    }
    events
}

/// A connection to a slot is reused only while it has idled less than the
/// slot said it keeps one (`Keep-Alive: timeout=N`, less a margin): a
/// request sent on one the slot is closing at that moment is lost, and the
/// client gets a 502 for a call the slot never saw (an MCP call is not sent
/// twice). Before, only `pool_idle_timeout` (90 s) bounded the reuse, and
/// behind Node's servers (5 s) the request that came just as the slot closed
/// its idle connection failed. The header is not passed on.
// One thread, one worker: the slot's connections go back to the idle list
// the next request takes them from (each worker thread has its own).
#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_slot_is_closing_is_not_reused() {
    let h = Harness::new().await;
    let (slot, mut seen) = keep_alive_slot(Duration::from_secs(1), true).await;
    let cfg = TestConfig::new(h.dir.path())
        .slot("blue", slot, 100)
        .set("proxy", "workers", "1");
    let p = support::start(cfg.load()).await;
    let events = paced_requests(&p, &[0, 200, 1200], &mut seen).await;
    // The second request on the first connection, the third on a new one.
    assert_eq!(events, ["connection", "connection"]);
    // As the metrics count them.
    let m = metrics(p.admin_addr).await;
    let series = "mcpflip_upstream_connections_total{slot=\"blue\"}";
    assert_eq!(metric(&m, series), 2, "{series} in\n{m}");
    p.shutdown().await;
    h.stop.cancel();
}

/// By default a connection to a slot is not reused once it idled 4 s
/// (`pool_idle_timeout`): under the 5 s after which uvicorn, the Python
/// SDK's server, closes an idle connection without saying so. Before, the
/// default was 90 s, and a request that came about 5 s after the last one
/// could go out on a connection uvicorn was closing: a 502 for a call the
/// slot never saw.
// One thread, one worker, as above.
#[tokio::test(flavor = "current_thread")]
async fn by_default_a_connection_is_not_reused_past_uvicorns_idle_timeout() {
    let h = Harness::new().await;
    let (slot, mut seen) = keep_alive_slot(Duration::from_secs(5), false).await;
    let cfg = TestConfig::new(h.dir.path())
        .slot("blue", slot, 100)
        .set("proxy", "workers", "1");
    let p = support::start(cfg.load()).await;
    let events = paced_requests(&p, &[0, 300, 5_200], &mut seen).await;
    assert_eq!(events, ["connection", "connection"]);
    let blue = support::stats(&p, "blue");
    assert_eq!(blue.upstream_connections(), 2);
    p.shutdown().await;
    h.stop.cancel();
}

/// Typed classification: a connect timeout (a slot whose accept queue is full
/// drops the SYN) is `timeout` and 504; a refused connect is `connect` and 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_classified_by_type() {
    let h = Harness::new().await;
    // A listener with a backlog of one that never accepts: once its queue is
    // full, further SYNs are dropped and a connect waits.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let full = sock.listen(1).expect("listen");
    let full_port = full.local_addr().expect("addr").port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let attempt = tokio::time::timeout(
            Duration::from_millis(300),
            TcpStream::connect(("127.0.0.1", full_port)),
        )
        .await;
        match attempt {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let refused = support::closed_port();
    let cfg = TestConfig::new(h.dir.path())
        .slot("blue", full_port, 100)
        .slot("green", refused, 0)
        .set_str("proxy", "connect_timeout", "300ms");
    let p = support::start(cfg.load()).await;
    let get = b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let (status, text) = exchange(p.public_addr, get).await;
    assert_eq!(status, 504, "{text}");
    assert_eq!(h.ctl("flip green --no-probe").await["ok"], true);
    let (status, text) = exchange(p.public_addr, get).await;
    assert_eq!(status, 502, "{text}");
    let m = metrics(p.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "mcpflip_upstream_errors_total{slot=\"blue\",kind=\"timeout\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "mcpflip_upstream_errors_total{slot=\"green\",kind=\"connect\"}"
        ),
        1,
        "{m}"
    );
    drop(fillers);
    drop(full);
    p.shutdown().await;
    h.stop.cancel();
}

/// Writes a POST head with `Content-Length: len`, then `len` bytes of
/// spaces, on `w`; stops at the first write the proxy refuses. The task
/// gives `w` back once all went: dropped, it would close the connection's
/// sending side, which the proxy takes for the client gone.
fn post_body(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    len: usize,
) -> tokio::task::JoinHandle<Option<tokio::net::tcp::OwnedWriteHalf>> {
    tokio::spawn(async move {
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {len}\r\n\r\n"
        );
        w.write_all(head.as_bytes()).await.ok()?;
        let chunk = vec![b' '; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).await.ok()?;
            left -= n;
        }
        Some(w)
    })
}

/// A POST of `len` bytes written without waiting for an answer (no
/// `Expect`), and the answer read until the connection closes.
async fn post_unasked(to: SocketAddr, len: usize) -> (u16, String) {
    let (mut r, w) = TcpStream::connect(to).await.expect("connect").into_split();
    let writer = post_body(w, len);
    let got = read_until_closed(&mut r)
        .await
        .expect("answered and closed");
    writer.abort();
    parse_answer(&got)
}

/// A slot on a loopback port that serves each connection with `serve`,
/// which tells what it saw on the channel.
async fn raw_slot<T, F, Fut>(serve: F) -> (u16, tokio::sync::mpsc::UnboundedReceiver<T>)
where
    T: Send + 'static,
    F: Fn(TcpStream, tokio::sync::mpsc::UnboundedSender<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, tx.clone()));
        }
    });
    (port, rx)
}

/// Reads from `s` into `got` until it holds a whole head: where the head
/// ends, or `None` when the connection ends first.
async fn read_head(s: &mut TcpStream, got: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A slot that answers `200 ok` as soon as it has a request head, then
/// reads the request's body to its end (its `Content-Length`) and counts it.
async fn answering_first_slot() -> (u16, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    raw_slot(|mut s, tx| async move {
        let mut got = Vec::new();
        let Some(head_end) = read_head(&mut s, &mut got).await else {
            return;
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\nok",
        )
        .await
        .is_err()
        {
            return;
        }
        let mut body = got.len() - head_end;
        let mut buf = vec![0u8; 64 * 1024];
        while body < len {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body += n,
            }
        }
        let _ = tx.send(body);
    })
    .await
}

/// A slot that answers `401` with `Connection: close` as soon as it has a
/// request head, and closes.
async fn refusing_slot() -> u16 {
    let (port, _) = raw_slot(|mut s, _: tokio::sync::mpsc::UnboundedSender<()>| async move {
        if read_head(&mut s, &mut Vec::new()).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    })
    .await;
    port
}

/// A slot may answer before it has read the whole request body (RFC 9112
/// §9.5). The demo server answers 413 to a body over 4 MiB and closes with
/// the rest unread: the client gets that 413, where the proxy answered 502
/// once its write of the rest failed. A slot that refuses a request on its
/// head (a 401) is answered at once while the client's body still comes,
/// where the proxy waited for the body's end. An early answer that is no
/// error and keeps its connection lets the whole body go on to the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_comes_before_the_body_end_is_the_answer() {
    let h = Harness::new().await;
    let (first, mut bodies) = answering_first_slot().await;
    let cfg = TestConfig::new(h.dir.path())
        .slot("blue", h.blue, 100)
        .slot("green", first, 0)
        .slot("gray", refusing_slot().await, 0);
    let p = support::start(cfg.load()).await;
    let (status, text) = post_unasked(p.public_addr, 16 << 20).await;
    assert_eq!(status, 413, "{text}");
    let m = metrics(p.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "mcpflip_upstream_errors_total{slot=\"blue\",kind=\"reset\"}"
        ),
        0,
        "{m}"
    );
    // A slot that refuses on the head: answered while the body is paused
    // half-way (long before `client_body_timeout`, a minute).
    let r = support::ctl(&h.socket(), "weights blue=0 gray=100").await;
    assert!(r.get("error").is_none(), "{r}");
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 1048576\r\n\r\n",
    )
    .await
    .expect("head");
    s.write_all(&[b' '; 128 * 1024])
        .await
        .expect("half the body");
    let got = read_until_closed(&mut s)
        .await
        .expect("answered and closed");
    let (status, text) = parse_answer(&got);
    assert_eq!(status, 401, "{text}");
    // The slot that answers first and reads on gets the whole body.
    let r = support::ctl(&h.socket(), "weights gray=0 green=100").await;
    assert!(r.get("error").is_none(), "{r}");
    let len = 4 << 20;
    let (mut r, w) = TcpStream::connect(p.public_addr)
        .await
        .expect("connect")
        .into_split();
    let writer = post_body(w, len);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok") {
        match tokio::time::timeout(PATIENCE, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no answer: {other:?} {}", String::from_utf8_lossy(&got)),
        }
    }
    assert_eq!(parse_answer(&got).0, 200);
    let w = writer.await.expect("writer");
    assert!(w.is_some(), "the whole body was written");
    let received = tokio::time::timeout(PATIENCE, bodies.recv()).await;
    assert_eq!(received, Ok(Some(len)), "the slot read the whole body");
    p.shutdown().await;
    h.stop.cancel();
}

/// Reads one HTTP/1.1 message from `s` (`buf` keeps what follows it): its
/// head, lowercased, and its body (by `Content-Length`, or chunked).
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!(
                "the message stopped short: {other:?}: {:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().expect("a length"));
    let mut body = Vec::new();
    if let Some(n) = length {
        while buf.len() < n {
            more(s, buf).await;
        }
        body.extend(buf.drain(..n));
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                more(s, buf).await;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                .expect("a chunk size");
            while buf.len() < line_end + 2 + size + 2 {
                more(s, buf).await;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    (head, body)
}

/// A slot that serves requests on kept connections and answers each path
/// with the hop-by-hop headers a real server sends: Node's `Connection:
/// keep-alive` and `Keep-Alive` (`/node`), `Connection: close` (`/close`,
/// then it closes), a `Connection` that names a header (`/named`), a chunked
/// body (`/chunked`). Each request head it got goes to the channel.
async fn hop_by_hop_slot() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    raw_slot(|mut s, tx| async move {
        let mut buf = Vec::new();
        while let Some(end) = read_head(&mut s, &mut buf).await {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end);
            let answer: &[u8] = if head.starts_with("get /node ") {
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n{}"
            } else if head.starts_with("get /close ") {
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n{}"
            } else if head.starts_with("get /named ") {
                b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n{}"
            } else {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            };
            let close = head.starts_with("get /close ");
            let _ = tx.send(head);
            if s.write_all(answer).await.is_err() || close {
                return;
            }
        }
    })
    .await
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) stop at the proxy both ways,
/// whichever path a message takes: the `Connection: keep-alive` the SDKs'
/// clients send on every request and Node's server on every answer, which
/// are written from the lines as they came, and a `Connection` that names a
/// header, which goes through a map that drops what it names. A slot's
/// `Connection: close` closes the slot's connection, not the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_proxy_both_ways() {
    let h = Harness::new().await;
    let (slot, mut heads) = hop_by_hop_slot().await;
    let cfg = TestConfig::new(h.dir.path()).slot("blue", slot, 100);
    let p = support::start(cfg.load()).await;
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    let mut buf = Vec::new();
    for (path, connection) in [
        ("/node", "keep-alive"),
        ("/close", "keep-alive"),
        ("/named", "keep-alive"),
        ("/chunked", "keep-alive"),
        ("/node", "keep-alive, x-drop"),
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\
             Keep-Alive: 300\r\nTE: trailers\r\nX-Drop: 1\r\nX-Kept-Req: 1\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.expect("write");
        let (head, body) = read_message(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert_eq!(body, b"{}", "{path}: {head}");
        assert!(head.contains("x-kept: 1"), "{path}: {head}");
        for gone in ["connection:", "keep-alive:", "x-secret:"] {
            assert!(!head.contains(gone), "{path} answered with {gone} {head}");
        }
        let got = tokio::time::timeout(PATIENCE, heads.recv())
            .await
            .expect("the slot got the request")
            .expect("a head");
        assert!(got.contains("x-kept-req: 1"), "{path}: {got}");
        for gone in ["connection:", "keep-alive:", "te:"] {
            assert!(
                !got.contains(gone),
                "{path} went upstream with {gone} {got}"
            );
        }
        // Only a `Connection` that names it drops `X-Drop`.
        assert_eq!(
            got.contains("x-drop: 1"),
            !connection.contains("x-drop"),
            "{path}: {got}"
        );
    }
    p.shutdown().await;
    h.stop.cancel();
}

/// An HTTP/2 request's cookies, which browsers send as a field each, reach
/// the slot as one `Cookie` line joined with `; ` (RFC 9113 §8.2.3), as
/// nginx passes them on. Before, each went as a line of its own, which a
/// server that expects one `Cookie` line (RFC 6265 §5.4) misreads. An
/// HTTP/1.1 request's lines go as they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_requests_cookies_reach_the_slot_as_one_line() {
    let h = Harness::new().await;
    let (slot, mut heads) = hop_by_hop_slot().await;
    let cfg = TestConfig::new(h.dir.path()).slot("blue", slot, 100);
    let p = support::start(cfg.load()).await;
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    for (cookies, want) in [
        (&["a=1", "b=2", "c=3"][..], "cookie: a=1; b=2; c=3\r\n"),
        (&["only=1"][..], "cookie: only=1\r\n"),
    ] {
        let mut req = http::Request::get(format!("http://{}/chunked", p.public_addr));
        for c in cookies {
            req = req.header("cookie", *c);
        }
        let resp = h2
            .request(req.body(http_body_util::Empty::new()).expect("request"))
            .await
            .expect("answered over HTTP/2");
        assert_eq!(resp.status(), 200);
        let got = tokio::time::timeout(PATIENCE, heads.recv())
            .await
            .expect("the slot got the request")
            .expect("a head");
        assert!(got.contains(want), "{cookies:?}: {got}");
        assert_eq!(got.matches("cookie:").count(), 1, "{cookies:?}: {got}");
    }
    // HTTP/1.1: the lines as they came.
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let (head, _) = read_message(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let got = tokio::time::timeout(PATIENCE, heads.recv())
        .await
        .expect("the slot got the request")
        .expect("a head");
    assert!(got.contains("cookie: a=1\r\ncookie: b=2\r\n"), "{got}");
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot that answers `GET /PATH` with a one-event SSE stream (chunked)
/// whose `X-Accel-Buffering` line is the path's: `/none` sends none, `/no`
/// `no`, `/yes` `yes`, `/twice` two lines.
async fn accel_slot() -> u16 {
    raw_slot::<(), _, _>(|mut s, _tx| async move {
        let mut buf = Vec::new();
        while let Some(end) = read_head(&mut s, &mut buf).await {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end);
            let accel = match head.split(' ').nth(1) {
                Some("/no") => "X-Accel-Buffering: no\r\n",
                Some("/yes") => "X-Accel-Buffering: yes\r\n",
                Some("/twice") => "X-Accel-Buffering: no\r\nX-Accel-Buffering: no\r\n",
                _ => "",
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{accel}X-Kept: 1\r\n\
                 Transfer-Encoding: chunked\r\n\r\nf\r\ndata: {{\"a\":1}}\n\n\r\n0\r\n\r\n"
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

/// An SSE answer tells buffering proxies in front not to buffer it, once:
/// `X-Accel-Buffering: no` whatever the slot said (nothing, `no`, `yes`,
/// twice), with the slot's other lines, over HTTP/1.1 from the answer's lines
/// or from its map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_says_x_accel_buffering_no_once() {
    let h = Harness::new().await;
    let slot = accel_slot().await;
    let cfg = TestConfig::new(h.dir.path()).slot("blue", slot, 100);
    let p = support::start(cfg.load()).await;
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    let mut buf = Vec::new();
    for path in ["/none", "/no", "/yes", "/twice", "/none"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(request.as_bytes()).await.expect("write");
        let (head, body) = read_message(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        let accel: Vec<&str> = head
            .lines()
            .filter_map(|l| l.strip_prefix("x-accel-buffering:"))
            .map(str::trim)
            .collect();
        assert_eq!(accel, ["no"], "{path}: {head}");
        assert!(head.contains("x-kept: 1"), "{path}: {head}");
        assert!(
            head.contains("content-type: text/event-stream"),
            "{path}: {head}"
        );
        assert_eq!(body, b"data: {\"a\":1}\n\n", "{path}: {head}");
    }
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot that reads each request to its end (by `Content-Length`, or to
/// the last chunk) and tells what it got: the body's bytes as they came
/// (chunk lines included) and whether the request was whole. A whole one is
/// answered `200 ok`.
async fn reading_slot() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(usize, bool)>) {
    raw_slot(|mut s, tx| async move {
        let mut got = Vec::new();
        loop {
            let Some(head_end) = read_head(&mut s, &mut got).await else {
                return;
            };
            let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
            let length: Option<usize> = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok());
            got.drain(..head_end);
            let whole = |got: &[u8]| match length {
                Some(n) => got.len() >= n,
                None => got.ends_with(b"0\r\n\r\n"),
            };
            let mut buf = vec![0u8; 16 * 1024];
            while !whole(&got) {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send((got.len(), false));
                        return;
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send((got.len(), true));
            got.clear();
            let ok =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(ok).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A request body of `frames` frames of `size` bytes with no declared length.
struct Frames(usize, usize);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        this.0 -= 1;
        let frame = http_body::Frame::data(Bytes::from(vec![b' '; this.1]));
        std::task::Poll::Ready(Some(Ok(frame)))
    }
}

/// `[proxy] max_request_body`: a declared length over it is answered 413
/// before any slot is asked (and before `100 Continue`), a body without one
/// (chunked, HTTP/2) is cut at it and answered 413, and one at it exactly
/// goes through; the client's 4xx, never the slot's 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_max_request_body_is_413_and_never_reaches_the_slot_whole() {
    let h = Harness::new().await;
    let (port, mut seen) = reading_slot().await;
    let cfg = TestConfig::new(h.dir.path())
        .slot("blue", port, 100)
        .set_str("proxy", "max_request_body", "1KiB");
    let p = support::start(cfg.load()).await;
    let post = |len: usize| {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\n\r\n{}",
            " ".repeat(len)
        )
    };
    let is_413 = |status: u16, text: &str| {
        assert_eq!(status, 413, "{text}");
        assert!(text.contains("\"error\":\"body_too_large\""), "{text}");
        assert!(text.contains("1024 bytes"), "{text}");
    };
    // At the cap: the slot gets it whole. One byte over: 413 on a connection
    // that goes on (the body was read with its head).
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    assert_eq!(ask(&mut s, &post(1024)).await.0, 200);
    assert_eq!(seen.recv().await, Some((1024, true)));
    let (status, text) = ask(&mut s, &post(1025)).await;
    is_413(status, &text);
    assert_eq!(
        ask(&mut s, &post(10)).await.0,
        200,
        "the connection goes on"
    );
    assert_eq!(
        seen.recv().await,
        Some((10, true)),
        "the 1025 bytes never came"
    );

    // A large declared length with `Expect: 100-continue`: 413 at once, no
    // `100 Continue`, and the connection closes (its body was never read).
    let (status, text) = exchange(
        p.public_addr,
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await;
    is_413(status, &text);
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // A client that sends a large body without waiting still reads its 413.
    for _ in 0..5 {
        let (status, text) = post_unasked(p.public_addr, 16 << 20).await;
        is_413(status, &text);
    }
    // So does one that writes its whole request before it reads (Python's
    // http.client, curl without `Expect`): the proxy reads the rest of the
    // body off before it closes (nginx's lingering close), so the client's
    // writes end, and it reads its 413 where a reset would have cut it.
    for _ in 0..3 {
        let (mut r, w) = TcpStream::connect(p.public_addr)
            .await
            .expect("connect")
            .into_split();
        let started = std::time::Instant::now();
        let written = post_body(w, 16 << 20).await.expect("the writer");
        assert!(
            written.is_some(),
            "the body was cut with a reset after {:?}",
            started.elapsed()
        );
        drop(written);
        let got = read_until_closed(&mut r)
            .await
            .expect("answered and closed");
        let (status, text) = parse_answer(&got);
        is_413(status, &text);
    }

    // Chunked, no length: cut past the cap; the slot never gets its end.
    let mut s = TcpStream::connect(p.public_addr).await.expect("connect");
    s.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("head");
    let chunk = format!("200\r\n{}\r\n", " ".repeat(512));
    for _ in 0..8 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let got = read_until_closed(&mut s)
        .await
        .expect("answered and closed");
    let (status, text) = parse_answer(&got);
    is_413(status, &text);
    let (bytes, whole) = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .expect("the slot's connection ends")
        .expect("seen");
    assert!(!whole, "the slot got the end of a body over the cap");
    assert!(bytes <= 1024 + 64, "{bytes} bytes reached the slot");

    // HTTP/2: a declared length over the cap, and a body without one.
    let h2: hyper_util::client::legacy::Client<
        _,
        http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
    > = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let to = p.public_addr;
    let request = |body| {
        http::Request::post(format!("http://{to}/mcp"))
            .header("content-type", "application/json")
            .body(body)
            .expect("request")
    };
    let resp = h2
        .request(request(Full::new(Bytes::from(vec![b' '; 2000])).boxed()))
        .await
        .expect("h2 request");
    assert_eq!(resp.status(), 413);
    let resp = h2
        .request(request(Frames(8, 512).boxed()))
        .await
        .expect("h2 request");
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("body_too_large"),
        "{body:?}"
    );
    let resp = h2
        .request(request(Frames(2, 512).boxed()))
        .await
        .expect("h2 request");
    assert_eq!(resp.status(), 200, "1024 bytes without a length go through");

    let m = metrics(p.admin_addr).await;
    for (series, want) in [
        ("mcpflip_client_errors_total{kind=\"body_too_large\"}", 13),
        (
            "mcpflip_local_responses_total{code=\"413\",reason=\"body_too_large\"}",
            11,
        ),
        ("mcpflip_requests_total{slot=\"blue\",code=\"5xx\"}", 0),
    ] {
        assert_eq!(metric(&m, series), want, "{series} in\n{m}");
    }
    p.shutdown().await;
    h.stop.cancel();
}

/// Writes `bytes` on `w` in 64 KiB pieces; `None` at the first write the
/// proxy refuses (a reset), else `w` back (dropped, it would close the
/// connection's sending side).
fn write_unasked(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    bytes: Vec<u8>,
) -> tokio::task::JoinHandle<Option<tokio::net::tcp::OwnedWriteHalf>> {
    tokio::spawn(async move {
        for piece in bytes.chunks(64 * 1024) {
            w.write_all(piece).await.ok()?;
        }
        Some(w)
    })
}

/// A head the proxy cannot serve, a client still writing: a head too large
/// (431) and a malformed head followed by a large body (400) are answered
/// and then closed lingering, as after a 413, so that a client that writes
/// its whole request before it reads gets the answer, not a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_the_proxy_refuses_is_answered_to_a_client_still_writing() {
    let h = Harness::new().await;
    let p = start(&h, &[]).await;
    let big = "a".repeat(16 << 20);
    let too_large = format!("GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n");
    let mut malformed =
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nNot A Header\r\nContent-Length: 8388608\r\n\r\n"
            .to_vec();
    malformed.resize(malformed.len() + (8 << 20), b' ');
    for (want, request) in [(431, too_large.into_bytes()), (400, malformed)] {
        for _ in 0..3 {
            let (mut r, w) = TcpStream::connect(p.public_addr)
                .await
                .expect("connect")
                .into_split();
            let written = write_unasked(w, request.clone()).await.expect("the writer");
            assert!(
                written.is_some(),
                "{want}: the request was cut with a reset"
            );
            drop(written);
            let got = read_until_closed(&mut r)
                .await
                .expect("answered and closed");
            let (status, text) = parse_answer(&got);
            assert_eq!(status, want, "{text}");
        }
    }
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot that answers every request with 4 MiB (a plain answer, not a
/// stream), and tells when it is done writing one (or its connection broke).
async fn large_answer_slot() -> (u16, tokio::sync::mpsc::UnboundedReceiver<bool>) {
    raw_slot(|mut s, tx| async move {
        let mut got = Vec::new();
        while read_head(&mut s, &mut got).await.is_some() {
            got.clear();
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 4194304\r\n\r\n";
            let sent = s.write_all(head).await.is_ok()
                && s.write_all(&vec![b'x'; 4 << 20]).await.is_ok();
            let _ = tx.send(sent);
            if !sent {
                return;
            }
        }
    })
    .await
}

/// Clients the proxy dropped for `send_timeout` so far.
async fn send_timeouts(p: &mcpflip::run::Running) -> u64 {
    let m = metrics(p.admin_addr).await;
    metric(&m, "mcpflip_client_errors_total{kind=\"send_timeout\"}")
}

/// The proxy in front of [`large_answer_slot`] (blue), with 1 s timers.
async fn large_answer_proxy(h: &Harness) -> mcpflip::run::Running {
    let (large, _) = large_answer_slot().await;
    let cfg = TestConfig::new(h.dir.path())
        .slot("blue", large, 100)
        .slot("green", h.green, 0)
        .slot("gray", delaying_slot().await, 0);
    let cfg = proxy_keys(
        cfg,
        &[
            ("header_read_timeout", "1s"),
            ("idle_timeout", "1s"),
            ("send_timeout", "1s"),
        ],
    );
    support::start(cfg.load()).await
}

/// An HTTP/2 client that opens 20 streams and never opens their windows
/// (`SETTINGS_INITIAL_WINDOW_SIZE` 0, legal) while it answers pings: each
/// answer's body waits for a window that never comes, and held a connection
/// to the slot with it, on a connection that idle_timeout never closed (its
/// requests were in progress). Now the client, taking nothing for
/// `send_timeout`, has its connection dropped, and every slot connection
/// goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_never_opens_its_windows_is_dropped_after_send_timeout() {
    let h = Harness::new().await;
    let p = large_answer_proxy(&h).await;
    let blue = support::stats(&p, "blue");
    let tcp = TcpStream::connect(p.public_addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let mut held = Vec::new();
    for _ in 0..20 {
        let resp = send
            .send_request(support::get(p.public_addr, "/large"))
            .await
            .expect("h2 stream");
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    assert_eq!(blue.inflight(), 20, "every answer waits for its window");
    let ended = tokio::time::timeout(PATIENCE, driver).await;
    assert!(
        ended.is_ok(),
        "the connection of a client that takes nothing is still open"
    );
    until("no request in flight on blue", || blue.inflight() == 0).await;
    assert_eq!(send_timeouts(&p).await, 1);
    drop(held);
    p.shutdown().await;
    h.stop.cancel();
}

/// The same over HTTP/1.1: a client that reads the head of a large answer
/// and then nothing (its receive buffer full, the proxy's send queue full)
/// is dropped after `send_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h1_client_that_stops_reading_its_answer_is_dropped_after_send_timeout() {
    let h = Harness::new().await;
    let p = large_answer_proxy(&h).await;
    let blue = support::stats(&p, "blue");
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock.connect(p.public_addr).await.expect("connect");
    s.write_all(b"GET /large HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 64];
    let n = s.read(&mut head).await.expect("head");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(blue.inflight(), 1);
    // Reads nothing more for well past send_timeout (1 s) plus its check.
    tokio::time::sleep(Duration::from_secs(4)).await;
    until("no request in flight on blue", || blue.inflight() == 0).await;
    assert_eq!(send_timeouts(&p).await, 1);
    // What the client then reads ends short of the answer: it was cut.
    let got = read_until_closed(&mut s)
        .await
        .expect("the connection is closed");
    assert!(got.len() + n < 4 << 20, "{} bytes", got.len() + n);
    p.shutdown().await;
    h.stop.cancel();
}

/// What `send_timeout` does not end: an event stream that waits for its next
/// event (nothing to send), a slow reader that takes its answer bit by bit,
/// and a call whose answer takes longer than it to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timeout_spares_quiet_streams_slow_readers_and_slow_answers() {
    let h = Harness::new().await;
    let p = large_answer_proxy(&h).await;
    // A quiet stream on green (a tick a minute).
    assert_eq!(h.ctl("weights blue=0 green=100").await["ok"], true);
    let mut quiet = TcpStream::connect(p.public_addr).await.expect("connect");
    quiet
        .write_all(b"GET /ticker?interval_ms=60000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 64];
    let n = quiet.read(&mut head).await.expect("head");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    // A slow reader of blue's 4 MiB: 64 KiB every 300 ms would take a
    // minute; it reads for 4 s.
    assert_eq!(h.ctl("weights blue=100 green=0").await["ok"], true);
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = sock.connect(p.public_addr).await.expect("connect");
    slow.write_all(b"GET /large HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut read = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..13 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = slow.read(&mut buf).await.expect("the slow reader reads");
        assert!(
            n > 0,
            "the slow reader's connection closed after {read} bytes"
        );
        read += n;
    }
    drop(slow);
    // A call answered after 2.5 s (its head included): nothing to send
    // meanwhile.
    assert_eq!(h.ctl("weights blue=0 gray=100").await["ok"], true);
    let (status, text) = exchange(
        p.public_addr,
        b"GET /call?ms=2500 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(send_timeouts(&p).await, 0);
    // The quiet stream is still open (what it has is read; it does not end).
    let mut rest = [0u8; 4096];
    while let Ok(read) =
        tokio::time::timeout(Duration::from_millis(200), quiet.read(&mut rest)).await
    {
        let n = read.expect("the quiet stream reads");
        assert!(n > 0, "the quiet stream ended");
    }
    drop(quiet);
    p.shutdown().await;
    h.stop.cancel();
}

/// One HTTP/2 connection opens at most 128 streams at once (nginx's
/// default): each may hold a connection to a slot, and a client's
/// connections are what `max_connections_per_ip` counts. Before, 1,024.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_has_at_most_128_streams_at_once() {
    let h = Harness::new().await;
    let cfg = TestConfig::new(h.dir.path())
        .slot("blue", delaying_slot().await, 100)
        .slot("green", h.green, 0);
    let p = support::start(cfg.load()).await;
    let blue = support::stats(&p, "blue");
    let tcp = TcpStream::connect(p.public_addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let mut send = send.clone();
            let req = support::get(p.public_addr, "/call?ms=3000");
            tokio::spawn(async move { send.send_request(req).await.map(|r| r.status()) })
        })
        .collect();
    until("128 requests in flight", || blue.inflight() == 128).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(blue.inflight(), 128, "no more streams than 128 at once");
    for call in calls {
        let status = call.await.expect("join");
        assert!(
            matches!(status, Ok(s) if s == 200),
            "every request is served in turn: {status:?}"
        );
    }
    p.shutdown().await;
    h.stop.cancel();
}

/// A network namespace of the test's own for a proxy whose slot is named by
/// a host name (tests/support/netns.rs); fails, does not skip, without root.
fn slot_name_namespace() -> support::netns::Netns {
    if let Err(why) = support::netns::available() {
        panic!("{why}");
    }
    support::netns::Netns::create().unwrap_or_else(|e| panic!("cannot make the namespace: {e}"))
}

/// The namespace's resolver: a UDP socket of the test on the host's end of
/// the clients' link, named by the namespace's `resolv.conf` (one try, 5 s).
async fn namespace_resolver(ns: &support::netns::Netns) -> tokio::net::UdpSocket {
    let dns = tokio::net::UdpSocket::bind((ns.client_host, 53))
        .await
        .expect("bind the namespace's resolver");
    ns.etc_file("hosts", "127.0.0.1 localhost\n");
    ns.etc_file(
        "resolv.conf",
        &format!(
            "nameserver {}\noptions timeout:5 attempts:1\n",
            ns.client_host
        ),
    );
    dns
}

/// `mcpflip run` inside `ns` with one slot, blue, at `upstream`, its
/// listeners on the namespace's end of the clients' link, and `keys` set in
/// `[proxy]`; its public address.
async fn proxy_in_namespace(
    ns: &support::netns::Netns,
    dir: &std::path::Path,
    upstream: &str,
    keys: &[(&str, &str)],
) -> (support::proc::ProxyProcess, SocketAddr) {
    let public = SocketAddr::from((ns.client_ns, 18080));
    let cfg = proxy_keys(
        TestConfig::new(dir)
            .slot_url("blue", upstream, Some(100), None)
            .set_str("listen", "addr", public.to_string())
            .set_str(
                "admin",
                "addr",
                SocketAddr::from((ns.client_ns, 18081)).to_string(),
            ),
        keys,
    );
    let socket = cfg.socket();
    let mut proxy = support::proc::ProxyProcess::spawn_with(
        ns.command(support::proc::BIN),
        &cfg.write(),
        &socket,
        &[],
    );
    proxy.ready().await;
    (proxy, public)
}

/// `n` MCP `initialize` POSTs to `public` at once: status, session, body.
fn initializes_at_once(
    public: SocketAddr,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(u16, Option<String>, String)>> {
    let client = http_client();
    (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                support::mcp::post_json(
                    &client,
                    &format!("http://{public}/mcp"),
                    None,
                    support::mcp::initialize(),
                )
                .await
            })
        })
        .collect()
}

/// A slot named by a host name with two addresses, the first of which drops
/// connection attempts (a blackholed route, an IPv6 address that is not
/// routed): every new connection was held on it for all of
/// `connect_timeout` and failed with a 504, although the slot answered on
/// its other address. Now the next address is tried beside it after 250 ms
/// (RFC 8305). The proxy runs in a network namespace whose `/etc/hosts`
/// names `slot.test` with both (tests/support/netns.rs); the dropping
/// address is a listener whose accept queue is full, the other the demo
/// server, both on the host's ends of the namespace's two links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_address_that_drops_connections_does_not_hold_up_the_next() {
    let ns = slot_name_namespace();
    let stop = tokio_util::sync::CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let live = TcpListener::bind((ns.client_host, 0)).await.expect("bind");
    let port = live.local_addr().expect("addr").port();
    let cfg =
        mcpflip::demo_server::ServerConfig::new("blue", mcpflip::demo_server::Transport::Both);
    tokio::spawn(mcpflip::demo_server::serve(live, cfg, stop.clone()));
    // The same port on the other link's address, its queue full: one
    // connection waits there unaccepted, and the kernel drops every SYN
    // after it.
    let dropping = tokio::net::TcpSocket::new_v4().expect("socket");
    dropping
        .bind(SocketAddr::from((ns.etcd_host, port)))
        .expect("bind the same port on the other address");
    let dropping = dropping.listen(0).expect("listen");
    let _queued = TcpStream::connect((ns.etcd_host, port))
        .await
        .expect("queued");
    let attempt = TcpStream::connect((ns.etcd_host, port));
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), attempt)
            .await
            .is_err(),
        "a full accept queue should drop the attempt"
    );
    ns.etc_file(
        "hosts",
        &format!("{} slot.test\n{} slot.test\n", ns.etcd_host, ns.client_host),
    );
    let order = ns
        .command("getent")
        .args(["ahosts", "slot.test"])
        .output()
        .expect("getent");
    let order = String::from_utf8_lossy(&order.stdout).into_owned();
    assert!(
        order.starts_with(&ns.etcd_host.to_string()),
        "the namespace's resolver must give the dropping address first:\n{order}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (proxy, public) =
        proxy_in_namespace(&ns, dir.path(), &format!("http://slot.test:{port}"), &[]).await;
    // One after the other: each its own session.
    for i in 0..3 {
        let (status, sid, body) = initializes_at_once(public, 1)
            .pop()
            .expect("one")
            .await
            .expect("join");
        assert_eq!(status, 200, "session {i}: {body}\n{}", proxy.stderr());
        assert!(sid.is_some(), "{body}");
    }
    // The dead address shows in the log, once: the live one goes first
    // from then on.
    let log = proxy.stderr();
    let dead = format!("first={}:{port}", ns.etcd_host);
    assert_eq!(log.matches(&dead).count(), 1, "{log}");
    drop(dropping);
}

/// A slot named by a host name while its resolver does not answer: every
/// request that needed a new connection started a lookup of its own (a
/// `getaddrinfo` on a blocking thread that outlives the request, the
/// resolver's 5 s per try), so a burst of requests became as many threads
/// and as many queries at a resolver already in trouble. Now the requests
/// wait for the one lookup under way. The proxy runs in a network namespace
/// whose `resolv.conf` names a UDP socket of this test that counts the
/// queries and answers none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_slot_whose_resolver_is_silent_share_one_lookup() {
    let ns = slot_name_namespace();
    let dns = namespace_resolver(&ns).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (proxy, public) = proxy_in_namespace(
        &ns,
        dir.path(),
        "http://slot.test:8000",
        &[("connect_timeout", "2s")],
    )
    .await;
    let requests = initializes_at_once(public, 20);
    // Within the requests' wait (connect_timeout): one getaddrinfo asks for
    // A and AAAA, two queries.
    let mut queries = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut buf = [0u8; 512];
    while let Ok(got) = tokio::time::timeout_at(until, dns.recv_from(&mut buf)).await {
        let (n, from) = got.expect("recv");
        queries.push((from, buf[..n.min(2)].to_vec()));
    }
    assert!(
        !queries.is_empty() && queries.len() <= 2,
        "{} queries for 20 requests at once: {queries:?}",
        queries.len()
    );
    for r in requests {
        let (status, _, body) = r.await.expect("join");
        assert_eq!(status, 504, "{body}\n{}", proxy.stderr());
        // The resolver, not the slot, is named as what did not answer.
        assert!(
            body.contains("looking up the name of slot.test:8000"),
            "{body}"
        );
    }
}

/// An `https://` slot that takes the connection but never answers the TLS
/// handshake (a server that stopped accepting: the kernel completed the TCP
/// handshake, nobody reads the ClientHello) held the request for its whole
/// response header timeout (`tool_call_timeout`, 10 minutes, for a tool
/// call) and was counted as a slow answer. The handshake is now part of
/// connecting, bounded by `connect_timeout` as nginx bounds its handshake
/// with an upstream by `proxy_connect_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_slot_that_never_finishes_its_handshake_is_a_connect_timeout() {
    let h = Harness::new().await;
    let silent = silent_slot(false).await;
    let cfg = proxy_keys(
        TestConfig::new(h.dir.path()).slot_url(
            "blue",
            &format!("https://127.0.0.1:{silent}"),
            Some(100),
            None,
        ),
        &[
            ("connect_timeout", "1s"),
            ("response_header_timeout", "30s"),
        ],
    );
    let p = support::start(cfg.load()).await;
    let (status, body) = exchange(
        p.public_addr,
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("connect_timeout"), "{body}");
    assert!(body.contains("the TLS handshake with"), "{body}");
    let m = metrics(p.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            r#"mcpflip_upstream_errors_total{slot="blue",kind="timeout"}"#
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"mcpflip_upstream_errors_total{slot="blue",kind="response_timeout"}"#
        ),
        0
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot's status past 599 is not one HTTP defines: RFC 9110 §15 has a
/// client take it as a 5xx, and the proxy counted it among the slot's 5xx
/// answers, but not as the slot's failure, so a new slot answering 600 to
/// every call passed its watch window. Now it is both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_status_past_599_is_the_slots_failure() {
    let h = Harness::new().await;
    let slot = scripted_slot(|_| (b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\n{}", true)).await;
    let cfg = TestConfig::new(h.dir.path()).slot("blue", slot, 100);
    let p = support::start(cfg.load()).await;
    let (status, text) = exchange(
        p.public_addr,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 600, "passed on as it came: {text}");
    let blue = support::stats(&p, "blue");
    assert_eq!(blue.responses(5), 1, "counted among the 5xx");
    assert_eq!(blue.upstream_failures(), 1, "and as the slot's failure");
    p.shutdown().await;
    h.stop.cancel();
}

/// A slot named by a host name that does not resolve (the resolver answers
/// NXDOMAIN at once): the failed lookup is kept for the second addresses are
/// kept, so the requests that wait behind it fail with its error instead of
/// each asking the resolver again, one at a time. The resolver is a UDP
/// socket of this test that answers every query NXDOMAIN and counts the
/// `A` queries for the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_name_that_does_not_resolve_is_asked_once_for_requests_at_once() {
    let ns = slot_name_namespace();
    let dns = namespace_resolver(&ns).await;
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = std::sync::Arc::clone(&asked);
    let answering = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = dns.recv_from(&mut buf).await {
            let q = &buf[..n];
            // The question: labels up to a zero, then type and class.
            let Some(end) = (12..n).find(|&i| q[i] == 0).map(|i| i + 5) else {
                continue;
            };
            if end > n {
                continue;
            }
            if &q[12..end - 4] == b"\x04slot\x04test\x00" && q[end - 4..end - 2] == [0, 1] {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // NXDOMAIN: the id, QR RD RA and rcode 3, one question, no records.
            let mut answer = vec![q[0], q[1], 0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0];
            answer.extend_from_slice(&q[12..end]);
            let _ = dns.send_to(&answer, from).await;
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (proxy, public) = proxy_in_namespace(&ns, dir.path(), "http://slot.test:8000", &[]).await;
    let requests = initializes_at_once(public, 20);
    for r in requests {
        let (status, _, body) = r.await.expect("join");
        assert_eq!(status, 502, "{body}\n{}", proxy.stderr());
        assert!(body.contains("slot.test"), "{body}");
    }
    let asked = asked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=2).contains(&asked),
        "the resolver was asked for slot.test {asked} times for 20 requests at once"
    );
    answering.abort();
}
