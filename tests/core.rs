//! The core issue's behaviour over real sockets: routing, affinity through a
//! flip, exact live counts, event-driven drain, deadlines, control errors,
//! socket mode and persisted state.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::mcp::{http_client, post_json, SseSession};
use support::{head_recorder, read_to_close, until, Harness, TestConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_session_keeps_its_slot_and_drain_waits_for_it() {
    let h = Harness::new().await;
    let p = h.start().await;
    let base = format!("http://{}", p.public_addr);
    let client = http_client();
    let mut held = SseSession::open(&client, &base).await.expect("session");
    assert!(
        held.post_url().contains("sessionId=mf1.blue.1."),
        "{}",
        held.post_url()
    );
    assert_eq!(held.call("whoami", json!({})).await.expect("call"), "blue");

    let flip = h.ctl("flip green --no-probe --drain").await;
    assert_eq!(flip["ok"], true, "{flip}");
    let mut fresh = SseSession::open(&client, &base).await.expect("new session");
    assert_eq!(
        fresh.call("whoami", json!({})).await.expect("call"),
        "green"
    );
    drop(fresh);
    assert_eq!(held.call("whoami", json!({})).await.expect("call"), "blue");

    let socket = h.socket();
    let waiter = tokio::spawn(async move {
        mcpflip::control::client::send(&socket, "drain blue --wait", |_| {}).await
    });
    // The drain must not finish while the session is open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "drain returned while a session was open"
    );
    assert_eq!(
        held.call("whoami", json!({}))
            .await
            .expect("call still served"),
        "blue"
    );
    drop(held);
    let reply = waiter.await.expect("join").expect("reply");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["forced"], 0);
    let status = h.ctl("status").await;
    assert_eq!(status["slots"][0]["state"], "drained", "{status}");
    assert_eq!(status["slots"][0]["live_streams"], 0);
    p.shutdown().await;
    h.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_session_is_tagged_pinned_and_404_once_retired() {
    let h = Harness::new().await;
    let p = h.start().await;
    let url = format!("http://{}/mcp", p.public_addr);
    let client = http_client();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let (status, sid, _) = post_json(&client, &url, None, init.clone()).await;
    assert_eq!(status, 200);
    let sid = sid.expect("a session id");
    assert!(sid.starts_with("mf1.blue.1."), "{sid}");
    h.ctl("flip green --no-probe --drain").await;
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}});
    let (status, back, body) = post_json(&client, &url, Some(&sid), call.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"blue\""), "{body}");
    assert_eq!(
        back.as_deref(),
        Some(sid.as_str()),
        "the answer names the session as the client does"
    );
    // A new session lands on green.
    let (_, sid2, _) = post_json(&client, &url, None, init).await;
    assert!(sid2.expect("id").starts_with("mf1.green.1."));
    // Once blue is retired, its sessions get the SDK's 404.
    let r = h.ctl("retire blue").await;
    assert_eq!(r["ok"], true, "{r}");
    let (status, _, body) = post_json(&client, &url, Some(&sid), call.clone()).await;
    assert_eq!(status, 404);
    assert!(body.contains("Session not found"), "{body}");
    // A forged tag for a standby slot never reaches it.
    let (status, _, _) = post_json(&client, &url, Some("mf1.blue.7.abc"), call).await;
    assert_eq!(status, 404);
    p.shutdown().await;
    h.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_counts_are_exact_and_deadline_ends_streams_between_events() {
    let h = Harness::new().await;
    let p = h.start().await;
    let client = http_client();
    let blue = support::stats(&p, "blue");
    let mut streams = Vec::new();
    for _ in 0..6 {
        let req = support::get(p.public_addr, "/ticker?interval_ms=20&pad=3000");
        streams.push(client.request(req).await.expect("stream").into_body());
    }
    until("6 live streams", || blue.live_streams() == 6).await;
    streams.truncate(4); // two clients vanish without closing
    until("4 live streams", || blue.live_streams() == 4).await;
    // Drain with a short deadline (green serves meanwhile): every remaining
    // stream ends at an event boundary.
    assert_eq!(h.ctl("weights green=1").await["ok"], true);
    let r = h.ctl("drain blue --wait --deadline 300ms").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["forced"], 4, "{r}");
    for body in streams {
        let bytes = body
            .collect()
            .await
            .expect("stream ended cleanly")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.ends_with("\n\n"),
            "stream ended inside an event: {:?}",
            &text[text.len().saturating_sub(80)..]
        );
    }
    until("0 live streams", || {
        blue.live_streams() == 0 && blue.inflight() == 0
    })
    .await;
    p.shutdown().await;
    h.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_errors_keep_the_connection_and_socket_is_private() {
    let h = Harness::new().await;
    let p = h.start().await;
    let mode = std::fs::metadata(h.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let s = tokio::net::UnixStream::connect(h.socket())
        .await
        .expect("connect");
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    for (line, code) in [
        ("bogus", "bad_command"),
        ("flip purple --no-probe", "unknown_slot"),
        ("weights blue=x", "bad_command"),
    ] {
        w.write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
        let reply: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.expect("read").expect("line"))
                .expect("json");
        assert_eq!(reply["ok"], false);
        assert_eq!(reply["code"], code, "{reply}");
    }
    w.write_all(b"status\n").await.expect("write");
    let reply: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.expect("read").expect("line")).expect("json");
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["active"], "blue");
    p.shutdown().await;
    h.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_and_weights_route() {
    let h = Harness::new().await;
    let p = mcpflip::run::start(h.config(), false)
        .await
        .expect("proxy starts");
    let r = h.ctl("weights blue=0 green=100").await;
    assert_eq!(r["ok"], true, "{r}");
    let client = http_client();
    let mut s = SseSession::open(&client, &format!("http://{}", p.public_addr))
        .await
        .expect("session");
    assert_eq!(s.call("whoami", json!({})).await.expect("call"), "green");
    drop(s);
    let state = h.dir.path().join("state.json");
    until("state written", || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains("\"green\"") && t.contains("100"))
    })
    .await;
    p.shutdown().await;
    let p = mcpflip::run::start(h.config(), false)
        .await
        .expect("proxy restarts");
    assert_eq!(p.controller.status().active.as_deref(), Some("green"));
    p.shutdown().await;
    std::fs::write(&state, "{not json").expect("write");
    let err = mcpflip::run::start(h.config(), false)
        .await
        .err()
        .expect("corrupt state refused");
    assert!(err.to_string().contains("--ignore-state"), "{err}");
    h.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_malformed_http_is_400_and_metrics_show_it() {
    let h = Harness::new().await;
    let dead = support::closed_port();
    let p = support::start(TestConfig::blue_green(h.dir.path(), dead, h.green).load()).await;
    let client = http_client();
    let url = format!("http://{}/mcp", p.public_addr);
    let (status, _, body) = post_json(
        &client,
        &url,
        None,
        json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json error body");
    assert_eq!(
        (v["slot"].as_str(), v["error"].as_str()),
        (Some("blue"), Some("upstream_connect"))
    );

    // Garbage on one connection gets a 4xx; the proxy keeps serving the others.
    let mut raw = tokio::net::TcpStream::connect(p.public_addr)
        .await
        .expect("connect");
    raw.write_all(b"NOT HTTP AT ALL\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut buf),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    h.ctl("flip green --no-probe").await;
    let (status, _, _) = post_json(&client, &url, None, json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})).await;
    assert_eq!(status, 200);
    // A plain GET (OAuth discovery) names no era; one that asks for an
    // event stream, with no session and no protocol version, is a legacy
    // SSE open, whatever it is answered.
    for accept in [None, Some("text/event-stream")] {
        let mut get = http::Request::get(format!(
            "http://{}/.well-known/oauth-protected-resource",
            p.public_addr
        ));
        if let Some(a) = accept {
            get = get.header("accept", a);
        }
        let resp = client
            .request(get.body(Full::new(Bytes::new())).expect("req"))
            .await
            .expect("get");
        let _ = resp.into_body().collect().await;
    }

    let metrics = client
        .request(
            http::Request::get(format!("http://{}/metrics", p.admin_addr))
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(
        &metrics
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes(),
    )
    .into_owned();
    for needle in [
        "mcpflip_upstream_errors_total{slot=\"blue\",kind=\"connect\"} 1",
        "mcpflip_requests_total{slot=\"blue\",code=\"5xx\"} 1",
        "mcpflip_requests_total{slot=\"green\",code=\"2xx\"} 1",
        "mcpflip_live_streams{slot=\"blue\"} 0",
        "mcpflip_slot_state{slot=\"green\",state=\"serving\"} 1",
        "mcpflip_slot_weight{slot=\"green\"} 100",
        "mcpflip_flips_total 1",
        "mcpflip_stream_duration_seconds_bucket",
        "mcpflip_drain_duration_seconds_count",
        // A POST with no session and no 2026-07-28 headers: an older era's session-less request.
        "mcpflip_mcp_requests_total{slot=\"blue\",era=\"sessionless\"} 1",
        "mcpflip_mcp_requests_total{slot=\"green\",era=\"sessionless\"} 1",
        "mcpflip_mcp_requests_total{slot=\"green\",era=\"stateless\"} 0",
        "mcpflip_mcp_requests_total{slot=\"green\",era=\"other\"} 1",
        "mcpflip_mcp_requests_total{slot=\"green\",era=\"legacy_sse\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    p.shutdown().await;
    h.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_stream_brings_the_count_back_to_zero() {
    let h = Harness::new().await;
    let die = tokio_util::sync::CancellationToken::new();
    let port = support::upstream(
        mcpflip::demo_server::ServerConfig::new("blue", mcpflip::demo_server::Transport::Both),
        &die,
    )
    .await;
    let p = support::start(TestConfig::blue_green(h.dir.path(), port, h.green).load()).await;
    let blue = support::stats(&p, "blue");
    let client = http_client();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let req = support::get(p.public_addr, "/ticker?interval_ms=50");
        bodies.push(client.request(req).await.expect("stream").into_body());
    }
    until("3 live streams", || blue.live_streams() == 3).await;
    die.cancel();
    until("0 live streams after the upstream died", || {
        blue.live_streams() == 0 && blue.inflight() == 0
    })
    .await;
    drop(bodies);
    p.shutdown().await;
    h.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_streams_on_one_connection_are_counted_each() {
    let h = Harness::new().await;
    let p = h.start().await;
    let blue = support::stats(&p, "blue");
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let req = support::get(p.public_addr, "/ticker?interval_ms=50");
        let resp = h2.request(req).await.expect("h2 stream");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(
            resp.headers()
                .get("x-accel-buffering")
                .map(|v| v.as_bytes()),
            Some(&b"no"[..])
        );
        bodies.push(resp.into_body());
    }
    until("4 live streams over h2", || blue.live_streams() == 4).await;
    bodies.truncate(1);
    until("1 live stream over h2", || blue.live_streams() == 1).await;
    drop(bodies);
    until("0 live streams over h2", || blue.live_streams() == 0).await;
    p.shutdown().await;
    h.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_keepalive_comments_only_when_configured() {
    let h = Harness::new().await;
    let p = support::start(
        h.builder()
            .set_str("proxy", "sse_keepalive", "100ms")
            .load(),
    )
    .await;
    let client = http_client();
    let mut body = client
        .request(idle_stream(p.public_addr))
        .await
        .expect("stream")
        .into_body();
    let mut seen = 0;
    while seen < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a keep-alive within 10 s")
            .expect("stream open")
            .expect("frame");
        if let Ok(d) = frame.into_data() {
            assert_eq!(&d[..], b": keepalive\n\n");
            seen += 1;
        }
    }
    drop(body);
    p.shutdown().await;
    // Off by default: an idle stream stays silent.
    let p = h.start().await;
    let mut body = client
        .request(idle_stream(p.public_addr))
        .await
        .expect("stream")
        .into_body();
    assert!(
        tokio::time::timeout(Duration::from_millis(400), body.frame())
            .await
            .is_err(),
        "no bytes on an idle stream by default"
    );
    drop(body);
    p.shutdown().await;
    h.stop.cancel();
}

/// A GET stream that stays idle; it carries a session id, as a Streamable HTTP
/// standalone stream does, so it is not taken for a legacy SSE session whose
/// first event (the endpoint) is held back until complete.
fn idle_stream(addr: std::net::SocketAddr) -> http::Request<Full<Bytes>> {
    let mut req = support::get(addr, "/ticker?interval_ms=60000");
    req.headers_mut()
        .insert("mcp-session-id", http::HeaderValue::from_static("s1"));
    req
}

/// DNS-rebinding guard: on a loopback listener a foreign Host or Origin gets the
/// SDK servers' 403, and everyone else keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_or_origin_is_refused_on_a_loopback_listener() {
    let h = Harness::new().await;
    let p = h.start().await;
    let client = http_client();
    let url = format!("http://{}/mcp", p.public_addr);
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    for (host, origin) in [
        (Some("evil.example.com"), None),
        (None, Some("http://evil.example.com")),
    ] {
        let mut b = http::Request::post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(h) = host {
            b = b.header("host", h);
        }
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        let resp = client
            .request(
                b.body(Full::new(Bytes::from(ping.to_string())))
                    .expect("req"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), 403);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON-RPC error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("Invalid "),
            "{v}"
        );
    }
    let (status, _, _) = post_json(&client, &url, None, ping).await;
    assert_eq!(status, 200);
    assert_eq!(
        support::stats(&p, "blue").responses(2),
        1,
        "refused requests never reach a slot"
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// A DELETE ends its session, so it does not hold a drain's quiet period: with
/// `quiet = 30s`, blue drains as soon as its last session was deleted, while a
/// pinned POST would have held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_delete_does_not_hold_the_drain_quiet_period() {
    let h = Harness::new().await;
    let p = support::start(h.builder().set_str("drain", "quiet", "30s").load()).await;
    let client = http_client();
    let url = format!("http://{}/mcp", p.public_addr);
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let (status, sid, _) = post_json(&client, &url, None, init).await;
    assert_eq!(status, 200);
    let sid = sid.expect("a tagged session id");
    assert_eq!(h.ctl("flip green --no-probe --drain").await["ok"], true);
    let resp = client
        .request(
            http::Request::delete(&url)
                .header("mcp-session-id", &sid)
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await
        .expect("delete");
    assert!(resp.status().is_success(), "{}", resp.status());
    let r = h.ctl("wait blue drained --timeout 5s").await;
    assert_eq!(r["ok"], true, "the DELETE held the 30 s quiet period: {r}");
    assert_eq!(support::stats(&p, "blue").since_last_pinned(), None);
    p.shutdown().await;
    h.stop.cancel();
}

/// A client body sent in chunks with a pause between them: the first chunk
/// goes with the request head, the rest streams after it, and the slot gets
/// the whole body (the proxy's own HTTP/1.1 client, chunked coding upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_reaches_the_slot_whole() {
    let h = Harness::new().await;
    let p = h.start().await;
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"chunked","version":"1"}}}"#;
    let (a, b) = body.split_at(40);
    let mut raw = tokio::net::TcpStream::connect(p.public_addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        p.public_addr,
        a.len()
    );
    raw.write_all(head.as_bytes()).await.expect("write");
    raw.write_all(a).await.expect("write");
    raw.write_all(b"\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.write_all(format!("{:x}\r\n", b.len()).as_bytes())
        .await
        .expect("write");
    raw.write_all(b).await.expect("write");
    raw.write_all(b"\r\n0\r\n\r\n").await.expect("write");
    let text = read_to_close(&mut raw).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\"id\":7") && text.contains("protocolVersion"),
        "{text}"
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// What a slot reads about the client comes from the proxy alone: the
/// client's own `X-Forwarded-Host` and `-Proto` are replaced, its
/// `X-Forwarded-For` lines are joined in order and extended with its address
/// (before, every line after the first was dropped: the nearest hop, which a
/// load balancer in front adds as a line of its own, was lost), the slot gets its own
/// `Host` (`preserve_host` off), each once. A client that names no host
/// (HTTP/1.0) cannot pass an `X-Forwarded-Host` of its own either: before,
/// the proxy replaced that header only when it had a host to put in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_gets_the_forwarding_headers_from_the_proxy_alone() {
    let (port, mut heads) = head_recorder().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = support::start(TestConfig::blue_green(dir.path(), port, support::closed_port()).load())
        .await;
    let public = p.public_addr.to_string();
    let ask = |request: String| {
        let addr = p.public_addr;
        async move {
            let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
            raw.write_all(request.as_bytes()).await.expect("write");
            read_to_close(&mut raw).await
        }
    };
    let answer = ask(format!(
        "GET /mcp HTTP/1.1\r\nHost: {public}\r\nX-Forwarded-Host: evil.example\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-For: 198.51.100.1\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    let lines: Vec<&str> = head.split("\r\n").collect();
    let only = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .collect()
    };
    assert_eq!(only("host"), [format!("127.0.0.1:{port}")], "{head}");
    assert_eq!(only("x-forwarded-host"), [public.as_str()], "{head}");
    assert_eq!(only("x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(
        only("x-forwarded-for"),
        ["203.0.113.9, 198.51.100.1, 127.0.0.1"],
        "{head}"
    );

    let answer = ask(
        "GET /mcp HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
            .into(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    assert!(!head.contains("evil.example"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-for: 203.0.113.9, 127.0.0.1\r\n"),
        "{head}"
    );
    p.shutdown().await;
}

/// `[proxy] x_forwarded`: `"replace"` gives a slot the client's address alone
/// (a client at the edge cannot put an address in front of its own), `"off"`
/// gives none of the three headers; neither passes the client's own on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_replace_and_off_keep_the_clients_claims_from_the_slot() {
    for mode in ["replace", "off"] {
        let (port, mut heads) = head_recorder().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = support::start(
            TestConfig::blue_green(dir.path(), port, support::closed_port())
                .set_str("proxy", "x_forwarded", mode)
                .load(),
        )
        .await;
        let public = p.public_addr.to_string();
        let mut raw = tokio::net::TcpStream::connect(p.public_addr)
            .await
            .expect("connect");
        raw.write_all(
            format!(
                "GET /mcp HTTP/1.1\r\nHost: {public}\r\nX-Forwarded-Host: evil.example\r\n\
                 X-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.9\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let answer = read_to_close(&mut raw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{mode}: {answer}");
        let head = heads.recv().await.expect("the slot got the request");
        assert!(!head.contains("evil.example"), "{mode}: {head}");
        assert!(!head.contains("203.0.113.9"), "{mode}: {head}");
        assert!(!head.contains("https"), "{mode}: {head}");
        let forwarding: Vec<&str> = head
            .split("\r\n")
            .filter(|l| l.starts_with("x-forwarded-"))
            .collect();
        match mode {
            "replace" => assert_eq!(
                forwarding,
                [
                    format!("x-forwarded-host: {public}"),
                    "x-forwarded-proto: http".into(),
                    "x-forwarded-for: 127.0.0.1".into()
                ],
                "{head}"
            ),
            _ => assert!(forwarding.is_empty(), "{head}"),
        }
        p.shutdown().await;
    }
}
