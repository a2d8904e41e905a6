//! `/readyz` as an orchestrator reads it: 200 while the proxy accepts and a
//! serving slot is healthy; 503 with a JSON body saying why when the serving
//! slot is down (passively: its last requests all failed to connect; actively:
//! `[health] interval`'s probe), and from the moment shutdown starts, while
//! the open streams still drain. `/healthz` stays 200 throughout (liveness).

mod support;

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::mcp::{http_client, initialize, post_json, HttpClient, SseSession};
use support::{until_async, Harness};
use tokio_util::sync::CancellationToken;

async fn readyz(client: &HttpClient, admin: SocketAddr) -> (u16, Value) {
    let resp = client
        .request(
            http::Request::get(format!("http://{admin}/readyz"))
                .body(Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("the admin listener answers");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("/readyz body is JSON ({e}): {body:?}"));
    (status, v)
}

async fn healthz(client: &HttpClient, admin: SocketAddr) -> u16 {
    let resp = client
        .request(
            http::Request::get(format!("http://{admin}/healthz"))
                .body(Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("answers");
    resp.status().as_u16()
}

#[tokio::test]
async fn readyz_turns_503_when_the_serving_slot_stops_answering_and_200_when_it_answers_again() {
    let h = Harness::new().await;
    // Blue on a server of its own, so that it can be taken down.
    let blue_stop = CancellationToken::new();
    let blue = support::upstream(
        mcpflip::demo_server::ServerConfig::new("blue", mcpflip::demo_server::Transport::Both),
        &blue_stop,
    )
    .await;
    let cfg = support::TestConfig::blue_green(h.dir.path(), blue, h.green).load();
    let p = support::start(cfg).await;
    let client = http_client();
    let mcp = format!("http://{}/mcp", p.public_addr);

    let (status, body) = readyz(&client, p.admin_addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["phase"], "serving");
    assert_eq!(body["serving"][0]["slot"], "blue");
    assert_eq!(body["serving"][0]["healthy"], true);
    let (s, _, _) = post_json(&client, &mcp, None, initialize()).await;
    assert_eq!(s, 200);

    // Blue goes away: its requests fail to connect.
    blue_stop.cancel();
    until_async("blue refuses connections", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", blue))
            .await
            .is_err()
    })
    .await;
    for _ in 0..mcpflip::stats::UNHEALTHY_AFTER {
        let (s, _, _) = post_json(&client, &mcp, None, initialize()).await;
        assert_eq!(s, 502);
    }
    let (status, body) = readyz(&client, p.admin_addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["phase"], "serving");
    assert_eq!(body["serving"][0]["healthy"], false);
    let reason = body["reason"].as_str().expect("a reason");
    assert!(reason.contains("no serving slot is healthy"), "{reason}");
    assert!(reason.contains("blue"), "{reason}");
    assert_eq!(healthz(&client, p.admin_addr).await, 200, "liveness stays");

    // Blue is back: its next answer makes the proxy ready again.
    let again = CancellationToken::new();
    let l = tokio::net::TcpListener::bind(("127.0.0.1", blue))
        .await
        .expect("blue's port again");
    tokio::spawn(mcpflip::demo_server::serve(
        l,
        mcpflip::demo_server::ServerConfig::new("blue", mcpflip::demo_server::Transport::Both),
        again.clone(),
    ));
    let (s, _, _) = post_json(&client, &mcp, None, initialize()).await;
    assert_eq!(s, 200);
    let (status, body) = readyz(&client, p.admin_addr).await;
    assert_eq!(status, 200, "{body}");
    p.shutdown().await;
    again.cancel();
}

#[tokio::test]
async fn the_health_probe_finds_a_down_slot_without_traffic() {
    let h = Harness::new().await;
    let cfg = h
        .builder()
        .clear_slots()
        .slot("blue", support::closed_port(), 100)
        .set("health", "interval", support::config::q("100ms"))
        .load();
    let p = support::start(cfg).await;
    let client = http_client();
    until_async("/readyz is 503 without a request", || async {
        readyz(&client, p.admin_addr).await.0 == 503
    })
    .await;
    let (_, body) = readyz(&client, p.admin_addr).await;
    assert_eq!(body["serving"][0]["slot"], "blue");
    assert_eq!(body["serving"][0]["healthy"], false);
    p.shutdown().await;

    // The same slot up: the probe keeps it ready.
    let cfg = h
        .builder()
        .set("health", "interval", support::config::q("100ms"))
        .load();
    let p = support::start(cfg).await;
    let blue = support::stats(&p, "blue");
    support::until("two health probes passed", || blue.probes(true) >= 2).await;
    assert_eq!(blue.probes(false), 0);
    let (status, body) = readyz(&client, p.admin_addr).await;
    assert_eq!(status, 200, "{body}");
    p.shutdown().await;
}

#[tokio::test]
async fn readyz_is_503_from_the_start_of_shutdown_while_streams_drain() {
    let h = Harness::new().await;
    let p = h.start().await;
    let admin = p.admin_addr;
    let client = http_client();
    let base = format!("http://{}", p.public_addr);
    let mut session = SseSession::open(&client, &base).await.expect("session");
    assert_eq!(readyz(&client, admin).await.0, 200);
    let stats = support::stats(&p, "blue");
    assert_eq!(stats.live_streams(), 1);

    let shutdown = tokio::spawn(p.shutdown());
    until_async("/readyz is 503 during the drain", || async {
        readyz(&client, admin).await.0 == 503
    })
    .await;
    let (_, body) = readyz(&client, admin).await;
    assert_eq!(body["phase"], "shutting_down");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("shutting down")),
        "{body}"
    );
    assert_eq!(healthz(&client, admin).await, 200);
    // The stream is still served while the proxy drains.
    assert_eq!(stats.live_streams(), 1);
    let text = session.call("whoami", serde_json::json!({})).await;
    assert!(text.is_ok(), "the held session still works: {text:?}");
    drop(session);
    shutdown
        .await
        .expect("shutdown ends once the stream is gone");
}
