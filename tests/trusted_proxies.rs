//! `[proxy] trusted_proxies` (docs/config.md, docs/operations.md): behind a
//! load balancer in HTTP mode, the `X-Forwarded-*` headers of a trusted
//! proxy are believed and anyone else's are dropped.
//!
//! Proven on loopback sockets, with a slot that records the request heads it
//! gets, a trusted proxy on 127.0.0.1 and a client on 127.0.0.2: the trusted
//! proxy's `-Proto` and `-Host` reach the slot in place of the proxy's own
//! (HTTP/1.1 and HTTP/2), its `X-Forwarded-For` is kept, and `replace` names
//! the client it forwards for; the client's own claims are dropped in every
//! mode. And with real HAProxy in HTTP mode in front of the built binary
//! (`option forwardfor`, `X-Forwarded-Proto: https`), the access log's
//! `client_ip` is the client HAProxy names, not an address the client
//! claimed, and a client that connects directly is logged as itself.

mod support;

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use support::proc::ProxyProcess;
use support::{closed_port, connect_from, head_recorder, read_to_close, TestConfig};
use tokio::io::AsyncWriteExt;

const TRUSTED: [u8; 4] = [127, 0, 0, 1];
const CLIENT: [u8; 4] = [127, 0, 0, 2];

/// Sends `request` to `to` on a connection from `from`; the answer, read
/// until the proxy closes (every request here says `Connection: close`).
async fn send_from(from: [u8; 4], to: SocketAddr, request: &str) -> String {
    let mut raw = connect_from(from, to).await;
    raw.write_all(request.as_bytes()).await.expect("write");
    read_to_close(&mut raw).await
}

/// A GET that claims to be forwarded for 198.51.100.1 and 203.0.113.9 (two
/// lines), over HTTPS, for `public.example`.
fn claiming(public: SocketAddr) -> String {
    format!(
        "GET /mcp HTTP/1.1\r\nHost: {public}\r\nX-Forwarded-For: 198.51.100.1\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\n\
         X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n"
    )
}

/// The `x-forwarded-*` lines of a recorded (lower-cased) head, in order.
fn forwarding(head: &str) -> Vec<String> {
    head.split("\r\n")
        .filter(|l| l.starts_with("x-forwarded-"))
        .map(str::to_owned)
        .collect()
}

/// Real HAProxy in HTTP mode on 127.0.0.1 (`TRUSTED`) in front of
/// `public`, with `option forwardfor` and the `extra` lines: running, and
/// where it listens.
async fn haproxy_in_front(
    dir: &std::path::Path,
    public: SocketAddr,
    extra: &str,
) -> (support::tools::Haproxy, SocketAddr) {
    support::tools::Haproxy::in_front(dir, public, &format!("  option forwardfor\n{extra}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarding_headers_are_believed_and_anyone_elses_dropped() {
    for mode in ["append", "replace", "off"] {
        let (port, mut heads) = head_recorder().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = support::start(
            TestConfig::blue_green(dir.path(), port, closed_port())
                .set(
                    "proxy",
                    "trusted_proxies",
                    "[\"127.0.0.1\", \"10.0.0.0/8\"]",
                )
                .set_str("proxy", "x_forwarded", mode)
                .load(),
        )
        .await;
        let public = p.public_addr;

        // From the trusted proxy, over HTTP/1.1.
        let answer = send_from(TRUSTED, public, &claiming(public)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{mode}: {answer}");
        let head = heads.recv().await.expect("the slot got the request");
        let expected: Vec<String> = match mode {
            "append" => vec![
                "x-forwarded-host: public.example".into(),
                "x-forwarded-proto: https".into(),
                "x-forwarded-for: 198.51.100.1, 203.0.113.9, 127.0.0.1".into(),
            ],
            // The client the trusted proxy names, alone.
            "replace" => vec![
                "x-forwarded-host: public.example".into(),
                "x-forwarded-proto: https".into(),
                "x-forwarded-for: 203.0.113.9".into(),
            ],
            _ => vec![],
        };
        assert_eq!(forwarding(&head), expected, "{mode}, trusted: {head}");

        // From anyone else: its claims are dropped whatever the mode.
        let answer = send_from(CLIENT, public, &claiming(public)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{mode}: {answer}");
        let head = heads.recv().await.expect("the slot got the request");
        let expected: Vec<String> = match mode {
            "off" => vec![],
            _ => vec![
                format!("x-forwarded-host: {public}"),
                "x-forwarded-proto: http".into(),
                "x-forwarded-for: 127.0.0.2".into(),
            ],
        };
        assert_eq!(forwarding(&head), expected, "{mode}, untrusted: {head}");

        // From the trusted proxy over HTTP/2 (the headers read from the map).
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_local_address(Some(IpAddr::from(TRUSTED)));
        let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build(connector);
        let req = http::Request::get(format!("http://{public}/mcp"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = h2.request(req).await.expect("h2 request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let head = heads.recv().await.expect("the slot got the request");
        let expected: Vec<String> = match mode {
            "append" => vec![
                format!("x-forwarded-host: {public}"),
                "x-forwarded-proto: https".into(),
                "x-forwarded-for: 203.0.113.9, 127.0.0.1".into(),
            ],
            "replace" => vec![
                format!("x-forwarded-host: {public}"),
                "x-forwarded-proto: https".into(),
                "x-forwarded-for: 203.0.113.9".into(),
            ],
            _ => vec![],
        };
        assert_eq!(forwarding(&head), expected, "{mode}, h2: {head}");
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_in_http_mode_the_access_log_names_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The built binary, as an operator runs it, with its access log.
    let (port, mut heads) = head_recorder().await;
    let public = SocketAddr::from((TRUSTED, closed_port()));
    let access = dir.path().join("access.log");
    let cfg = TestConfig::blue_green(dir.path(), port, closed_port())
        .listen_port(public.port())
        .set("proxy", "trusted_proxies", "[\"127.0.0.1\"]")
        .set_str("log", "access_log", access.to_str().expect("utf-8"));
    let mut proc = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proc.ready().await;
    let (_h, front) = haproxy_in_front(
        dir.path(),
        public,
        "  http-request set-header X-Forwarded-Proto https\n",
    )
    .await;

    // A client on 127.0.0.2 that claims 6.6.6.6, through HAProxy: HAProxy
    // adds the address it saw as a line of its own and says https.
    let answer = send_from(
        CLIENT,
        front,
        &format!(
            "GET /mcp HTTP/1.1\r\nHost: {public}\r\nX-Forwarded-For: 6.6.6.6\r\n\
             X-Forwarded-Proto: gopher\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    assert_eq!(
        forwarding(&head),
        [
            format!("x-forwarded-host: {public}"),
            "x-forwarded-proto: https".to_owned(),
            "x-forwarded-for: 6.6.6.6, 127.0.0.2, 127.0.0.1".to_owned(),
        ],
        "{head}"
    );

    // The same client, straight to mcpflip: its claims are not believed.
    let answer = send_from(CLIENT, public, &claiming(public)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.recv().await.expect("the slot got the request");
    assert!(head.contains("x-forwarded-for: 127.0.0.2\r\n"), "{head}");
    assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");

    // Both lines name the client 127.0.0.2: the first beside HAProxy's
    // address, the second beside its own.
    let log = support::access_lines(&access, 2).await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains(" remote_addr=127.0.0.1:") && lines[0].contains(" client_ip=127.0.0.2 "),
        "{log}"
    );
    assert!(
        lines[1].contains(" remote_addr=127.0.0.2:") && lines[1].contains(" client_ip=127.0.0.2 "),
        "{log}"
    );
    assert!(
        !log.contains("6.6.6.6") && !log.contains("203.0.113.9"),
        "{log}"
    );
    drop(proc);
}

/// `[proxy] rate_limit` behind real HAProxy in HTTP mode (trusted): every
/// request reaches mcpflip from HAProxy's address, yet each client HAProxy
/// names has a budget of its own, and a client cannot escape its own by
/// claiming another address in `X-Forwarded-For`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_rate_limit_counts_each_client_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, _heads) = head_recorder().await;
    let public = SocketAddr::from((TRUSTED, closed_port()));
    let cfg = TestConfig::blue_green(dir.path(), port, closed_port())
        .listen_port(public.port())
        .set("proxy", "trusted_proxies", "[\"127.0.0.1\"]")
        .set(
            "proxy",
            "rate_limit",
            "{ requests = 1, per = \"1m\", burst = 2 }",
        );
    let mut proc = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proc.ready().await;
    let (_h, front) = haproxy_in_front(dir.path(), public, "").await;
    let request = |claim: &str| {
        format!(
            "GET /mcp HTTP/1.1\r\nHost: {public}\r\nX-Forwarded-For: {claim}\r\nConnection: close\r\n\r\n"
        )
    };
    let status = |answer: &str| answer.get(9..12).unwrap_or_default().to_owned();
    // 127.0.0.2's burst of two, each claiming another address.
    for claim in ["6.6.6.6", "6.6.6.7"] {
        let answer = send_from(CLIENT, front, &request(claim)).await;
        assert_eq!(status(&answer), "200", "{answer}");
    }
    let answer = send_from(CLIENT, front, &request("6.6.6.8")).await;
    assert_eq!(status(&answer), "429", "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: "),
        "{answer}"
    );
    // Another client through the same HAProxy is served.
    let answer = send_from([127, 0, 0, 3], front, &request("6.6.6.6")).await;
    assert_eq!(status(&answer), "200", "{answer}");
    drop(proc);
}

/// Azure's Application Gateway and IIS write the client with its port in
/// `X-Forwarded-For` (`a.b.c.d:port`, `[v6]:port`): behind a trusted one
/// the client is that address, which `replace` sends the slot alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_entry_with_a_port_names_its_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, mut heads) = head_recorder().await;
    let cfg = TestConfig::blue_green(dir.path(), port, closed_port())
        .set("proxy", "trusted_proxies", "[\"127.0.0.1\"]")
        .set_str("proxy", "x_forwarded", "replace");
    let p = support::start(cfg.load()).await;
    let public = p.public_addr;
    for (sent, client) in [
        ("198.51.100.7:4711", "198.51.100.7"),
        ("[2001:db8::7]:4711", "2001:db8::7"),
    ] {
        let request = format!(
            "GET /mcp HTTP/1.1\r\nHost: {public}\r\nX-Forwarded-For: {sent}\r\nConnection: close\r\n\r\n"
        );
        let answer = send_from(TRUSTED, public, &request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let head = heads.recv().await.expect("the slot got the request");
        assert!(
            head.contains(&format!("\r\nx-forwarded-for: {client}\r\n")),
            "{sent}: {head}"
        );
    }
    p.shutdown().await;
}
