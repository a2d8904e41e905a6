//! `[listen] proxy_protocol` (docs/config.md, docs/operations.md): behind a
//! load balancer in TCP mode, the client's address comes from the PROXY
//! protocol header that starts each connection.
//!
//! Proven here on loopback sockets, with a slot that records the request
//! heads it gets: versions 1 and 2 name the client in `X-Forwarded-For` (IPv4
//! and IPv6, every request of a keep-alive connection); a version 2 `LOCAL`
//! header (the load balancer's own health check) is served as the peer's;
//! a connection without a header, with a bad one or with one cut short is
//! closed unanswered, within `header_read_timeout`, and counted in
//! `mcpflip_client_errors_total{kind="proxy_protocol"}`; TLS follows the
//! header; `reload` says turning it on needs a restart. And with real
//! HAProxy in front (`send-proxy` and `send-proxy-v2`) of the built binary,
//! a client connecting from 127.0.0.2 is named 127.0.0.2 in
//! `X-Forwarded-For` and the access log, though the proxy's own peer is
//! HAProxy on 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::proc::ProxyProcess;
use support::{closed_port, head_recorder, metrics, read_to_close, read_until_closed, TestConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A proxy whose listener takes the PROXY protocol, in front of a slot that
/// records heads.
async fn proxied(
    dir: &std::path::Path,
    tune: impl FnOnce(TestConfig) -> TestConfig,
) -> (
    mcpflip::run::Running,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (port, heads) = head_recorder().await;
    let cfg =
        TestConfig::blue_green(dir, port, closed_port()).set("listen", "proxy_protocol", "true");
    let p = support::start(tune(cfg).load()).await;
    (p, heads)
}

/// The `X-Forwarded-For` of a recorded head.
fn forwarded_for(head: &str) -> &str {
    head.split("\r\n")
        .find_map(|l| l.strip_prefix("x-forwarded-for: "))
        .unwrap_or_else(|| panic!("no x-forwarded-for in {head}"))
}

/// A version 2 header: `command` (0 LOCAL, 1 PROXY), its family and
/// protocol byte, then its addresses.
fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    h.extend_from_slice(addresses);
    h
}

fn v2_tcp6(source: &str, port: u16) -> Vec<u8> {
    let mut a = [0u8; 36];
    let ip: std::net::Ipv6Addr = source.parse().expect("IPv6");
    a[..16].copy_from_slice(&ip.octets());
    a[16..32].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    a[32..34].copy_from_slice(&port.to_be_bytes());
    a[34..36].copy_from_slice(&8080u16.to_be_bytes());
    v2(1, 0x21, &a)
}

fn get(public: SocketAddr, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET /mcp HTTP/1.1\r\nHost: {public}\r\nConnection: {connection}\r\n\r\n")
}

/// Sends `bytes` on a new connection and reads what comes back until the
/// proxy closes it: a close with the request unread may reset the
/// connection, which counts as closed.
async fn refused(to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut raw = TcpStream::connect(to).await.expect("connect");
    raw.write_all(bytes).await.expect("write");
    read_until_closed(&mut raw)
        .await
        .expect("closed within 15 s")
}

/// Sends `bytes` on a new connection and reads until the proxy closes it.
async fn exchange(to: SocketAddr, bytes: &[u8]) -> String {
    let mut raw = TcpStream::connect(to).await.expect("connect");
    raw.write_all(bytes).await.expect("write");
    read_to_close(&mut raw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_1_and_2_name_the_client_and_local_is_the_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, mut heads) = proxied(dir.path(), |c| c).await;
    let public = p.public_addr;

    // Version 1, two requests on one connection: the header comes once.
    let mut raw = TcpStream::connect(public).await.expect("connect");
    let mut first = b"PROXY TCP4 203.0.113.9 192.0.2.1 51000 8080\r\n".to_vec();
    first.extend_from_slice(get(public, false).as_bytes());
    raw.write_all(&first).await.expect("write");
    let head = heads.recv().await.expect("the slot got the request");
    assert_eq!(forwarded_for(&head), "203.0.113.9", "{head}");
    raw.write_all(get(public, true).as_bytes())
        .await
        .expect("write");
    let answers = read_to_close(&mut raw).await;
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers}");
    let head = heads.recv().await.expect("the second request");
    assert_eq!(forwarded_for(&head), "203.0.113.9", "{head}");

    // Version 2 over IPv6.
    let mut bytes = v2_tcp6("2001:db8::7", 51000);
    bytes.extend_from_slice(get(public, true).as_bytes());
    let answer = exchange(public, &bytes).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    assert_eq!(forwarded_for(&head), "2001:db8::7", "{head}");

    // LOCAL: the load balancer speaking for itself; its address is used.
    let mut bytes = v2(0, 0x00, &[]);
    bytes.extend_from_slice(get(public, true).as_bytes());
    let answer = exchange(public, &bytes).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    assert_eq!(forwarded_for(&head), "127.0.0.1", "{head}");

    assert!(
        metrics(p.admin_addr)
            .await
            .contains("mcpflip_client_errors_total{kind=\"proxy_protocol\"} 0"),
        "no connection was refused"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_header_in_time_a_connection_is_closed_unanswered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, mut heads) = proxied(dir.path(), |c| {
        c.set_str("proxy", "header_read_timeout", "400ms")
    })
    .await;
    let public = p.public_addr;

    // A plain request, a malformed header, one over version 1's 107 bytes:
    // closed with nothing written.
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(150, b'1');
    for bytes in [
        get(public, true).into_bytes(),
        b"PROXY TCP4 203.0.113 192.0.2.1 1 2\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        long,
    ] {
        let answer = refused(public, &bytes).await;
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    }
    // A header cut short, and silence: closed at header_read_timeout.
    let started = tokio::time::Instant::now();
    let answer = refused(public, b"PROXY TCP4 203.0").await;
    assert!(answer.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    assert!(heads.try_recv().is_err(), "no request reached the slot");
    let m = metrics(p.admin_addr).await;
    assert!(
        m.contains("mcpflip_client_errors_total{kind=\"proxy_protocol\"} 4"),
        "{m}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_follows_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev =
        mcpflip::tls::write_dev_cert(&dir.path().join("certs"), &[], false).expect("dev cert");
    let (p, mut heads) = proxied(dir.path(), |c| c.tls(&dev.cert, &dev.key)).await;
    let tls = mcpflip::tls::client_config(Some(&dev.ca)).expect("client config");
    let mut raw = TcpStream::connect(p.public_addr).await.expect("connect");
    raw.write_all(b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\n")
        .await
        .expect("write");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = connector
        .connect(name, raw)
        .await
        .expect("the handshake after the header");
    s.write_all(
        format!(
            "GET /mcp HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            p.public_addr.port()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut answer),
    )
    .await
    .expect("answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    assert_eq!(forwarded_for(&head), "198.51.100.7", "{head}");
    p.shutdown().await;
}

/// Turning it on changes what every connection must send first: `reload`
/// names it among what needs a restart (`upgrade` applies it without
/// dropping a connection) and the running listener keeps taking plain
/// requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_says_turning_it_on_needs_a_restart_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, mut heads) = head_recorder().await;
    let cfg = TestConfig::blue_green(dir.path(), port, closed_port());
    let p = support::start(cfg.load()).await;
    cfg.clone().set("listen", "proxy_protocol", "true").write();
    let r = support::ctl(&cfg.socket(), "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["restart_required"]
            .as_array()
            .is_some_and(|a| a.iter().any(|w| w == "[listen] proxy_protocol")),
        "{r}"
    );
    let answer = exchange(p.public_addr, get(p.public_addr, true).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    assert_eq!(forwarded_for(&head), "127.0.0.1", "{head}");
    p.shutdown().await;
}

/// `[proxy] max_connections_per_ip` counts the client the header names,
/// not the load balancer every connection comes from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_per_address_counts_the_client_the_header_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, mut heads) = proxied(dir.path(), |c| {
        c.set("proxy", "max_connections_per_ip", "1")
    })
    .await;
    let public = p.public_addr;
    let from = |client: &str| {
        let mut bytes = format!("PROXY TCP4 {client} 192.0.2.1 51000 8080\r\n").into_bytes();
        bytes.extend_from_slice(get(public, true).as_bytes());
        bytes
    };
    // 203.0.113.9 holds a keep-alive connection.
    let mut held = TcpStream::connect(public).await.expect("connect");
    let mut first = b"PROXY TCP4 203.0.113.9 192.0.2.1 51000 8080\r\n".to_vec();
    first.extend_from_slice(get(public, false).as_bytes());
    held.write_all(&first).await.expect("write");
    heads.recv().await.expect("the slot got the request");
    let answer = exchange(public, &from("203.0.113.9")).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("max_connections_per_ip"), "{answer}");
    let answer = exchange(public, &from("203.0.113.10")).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another client: {answer}"
    );
    drop(held);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_client_is_the_one_haproxy_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The built binary, as an operator runs it, with its access log.
    let (port, mut heads) = head_recorder().await;
    let public = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let access = dir.path().join("access.log");
    let cfg = TestConfig::blue_green(dir.path(), port, closed_port())
        .listen_port(public.port())
        .set("listen", "proxy_protocol", "true")
        .set_str("log", "access_log", access.to_str().expect("utf-8"));
    let mut proc = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proc.ready().await;
    let (v1_port, v2_port) = (closed_port(), closed_port());
    let _h = support::tools::Haproxy::start(
        dir.path(),
        &format!(
            "global\n  maxconn 64\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             listen v1\n  bind 127.0.0.1:{v1_port}\n  server mcpflip {public} send-proxy\n\
             listen v2\n  bind 127.0.0.1:{v2_port}\n  server mcpflip {public} send-proxy-v2\n"
        ),
    );
    for port in [v1_port, v2_port] {
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        // A client on 127.0.0.2: HAProxy connects to mcpflip from 127.0.0.1.
        let mut raw = loop {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
                .expect("bind 127.0.0.2");
            match socket.connect(to).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < end => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("HAProxy does not listen on {to}: {e}"),
            }
        };
        raw.write_all(get(public, true).as_bytes())
            .await
            .expect("write");
        let answer = read_to_close(&mut raw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "port {port}: {answer}");
        let head = heads.recv().await.expect("the slot got the request");
        assert_eq!(forwarded_for(&head), "127.0.0.2", "port {port}: {head}");
    }
    // The access log names the client too, HAProxy nowhere.
    support::until_async("two access-log lines", || {
        let access = access.clone();
        async move { std::fs::read_to_string(&access).is_ok_and(|t| t.lines().count() >= 2) }
    })
    .await;
    let log = std::fs::read_to_string(&access).expect("access log");
    assert_eq!(log.matches("127.0.0.2:").count(), 2, "{log}");
    assert!(!log.contains("127.0.0.1:"), "{log}");
    drop(proc);
}
