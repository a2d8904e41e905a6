//! TLS termination, HTTP/2 to clients, https:// upstreams and live reload, with
//! real TLS clients (rustls) on loopback and the development certificate.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcpflip::demo_server::{ServerConfig, Transport};
use serde_json::{json, Value};
use support::mcp::{http_client, SseSession};
use support::pki::Pki;
use support::{until, TestConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn upstream(name: &str, stop: &CancellationToken) -> u16 {
    support::upstream(ServerConfig::new(name, Transport::Both), stop).await
}

/// Blue and green built-in upstreams, the dev certificate, and the proxy on a
/// TLS listener with `[drain] deadline` when given.
async fn tls_proxy(
    stop: &CancellationToken,
    drain_deadline: Option<&str>,
) -> (
    tempfile::TempDir,
    mcpflip::tls::DevCert,
    PathBuf,
    mcpflip::run::Running,
) {
    let (blue, green) = (upstream("blue", stop).await, upstream("green", stop).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let dev =
        mcpflip::tls::write_dev_cert(&dir.path().join("certs"), &[], false).expect("dev cert");
    let mut cfg = TestConfig::blue_green(dir.path(), blue, green).tls(&dev.cert, &dev.key);
    if let Some(d) = drain_deadline {
        cfg = cfg.set_str("drain", "deadline", d);
    }
    let p = support::start(cfg.load()).await;
    (dir, dev, cfg.path(), p)
}

fn client_tls(ca: &Path) -> rustls::ClientConfig {
    mcpflip::tls::client_config(Some(ca)).expect("client config")
}

type H2Client = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn h2_client(ca: &Path) -> H2Client {
    https_client(client_tls(ca), true)
}

/// An HTTPS client with `tls`, speaking HTTP/2 only (`h2`) or HTTP/1.1.
fn https_client(tls: rustls::ClientConfig, h2: bool) -> H2Client {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if h2 {
        connector.enable_http2().build()
    } else {
        connector.enable_http1().build()
    };
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(connector)
}

/// The leaf certificate a fresh TLS handshake with the proxy presents.
async fn presented_cert(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca)));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

async fn ctl(dir: &Path, line: &str) -> Value {
    mcpflip::control::client::send(&dir.join("control.sock"), line, |_| {})
        .await
        .expect("control reply")
}

/// Counts complete SSE events on a response body as they arrive.
fn count_events(
    body: hyper::body::Incoming,
) -> (
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&n);
    let task = tokio::spawn(async move {
        let mut body = body;
        let mut tail = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                tail.extend_from_slice(&data);
                while let Some(at) = tail.windows(2).position(|w| w == b"\n\n") {
                    tail.drain(..at + 2);
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    (n, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_h2_streams_are_counted_each_and_reload_swaps_the_certificate_under_them() {
    let stop = CancellationToken::new();
    let (dir, dev, path, p) = tls_proxy(&stop, None).await;
    let d = dir.path();
    let base = format!("https://localhost:{}", p.public_addr.port());
    let client = h2_client(&dev.ca);

    // An MCP request over HTTPS + h2.
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let resp = client
        .request(
            http::Request::post(format!("{base}/mcp"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(Full::new(Bytes::from(init.to_string())))
                .expect("req"),
        )
        .await
        .expect("https response");
    assert_eq!(
        (resp.status(), resp.version()),
        (http::StatusCode::OK, http::Version::HTTP_2)
    );
    assert!(resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap_or("")
        .starts_with("mf1.blue."));

    // Three SSE streams on one h2 connection; the first is never read.
    let mut streams = Vec::new();
    for pad in [16384, 0, 0] {
        let resp = client
            .request(
                http::Request::get(format!("{base}/ticker?interval_ms=20&pad={pad}"))
                    .body(Full::new(Bytes::new()))
                    .expect("req"),
            )
            .await
            .expect("stream");
        assert_eq!(resp.status(), 200);
        streams.push(resp.into_body());
    }
    let blue_stats = support::stats(&p, "blue");
    until("3 live streams on blue", || blue_stats.live_streams() == 3).await;
    let stalled = streams.remove(0);
    let (a, _ta) = count_events(streams.remove(0));
    let (b, _tb) = count_events(streams.remove(0));
    // The unread stream's window fills (16 KiB events) while the others flow.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = a.load(std::sync::atomic::Ordering::Relaxed);
    until("streams keep flowing beside a stalled one", || {
        a.load(std::sync::atomic::Ordering::Relaxed) >= before + 20
            && b.load(std::sync::atomic::Ordering::Relaxed) >= before + 20
    })
    .await;

    // A new certificate: `reload` serves it to new handshakes; open streams go on.
    let old_cert = presented_cert(p.public_addr, &dev.ca).await;
    let dev2 = mcpflip::tls::write_dev_cert(&d.join("certs"), &[], true).expect("new dev cert");
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    let new_cert = presented_cert(p.public_addr, &dev2.ca).await;
    assert_ne!(old_cert, new_cert, "new handshakes get the new certificate");
    let before = a.load(std::sync::atomic::Ordering::Relaxed);
    until("the old connection's streams survive the reload", || {
        a.load(std::sync::atomic::Ordering::Relaxed) >= before + 10
    })
    .await;
    assert_eq!(blue_stats.live_streams(), 3);

    // Reloads under load drop nothing: requests on new and pooled connections all succeed.
    let load = {
        let client = client.clone();
        let base = base.clone();
        let init = init.to_string();
        tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..200 {
                let r = client
                    .request(
                        http::Request::post(format!("{base}/mcp"))
                            .header("content-type", "application/json")
                            .header("accept", "application/json, text/event-stream")
                            .body(Full::new(Bytes::from(init.clone())))
                            .expect("req"),
                    )
                    .await;
                if !matches!(r, Ok(ref r) if r.status() == 200) {
                    failed += 1;
                }
            }
            failed
        })
    };
    for _ in 0..5 {
        assert_eq!(ctl(d, "reload").await["ok"], true);
        let _ = presented_cert(p.public_addr, &dev2.ca).await;
    }
    assert_eq!(
        load.await.expect("load task"),
        0,
        "requests failed during reloads"
    );

    // A bad config is refused with its file and line; nothing is dropped.
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("{text}[drain]\nquiet = \"never\"\n")).expect("write");
    let r = ctl(d, "reload").await;
    assert_eq!(r["code"], "bad_config", "{r}");
    let msg = r["error"].as_str().unwrap_or("");
    assert!(
        msg.contains("mcpflip.toml:") && msg.contains("the running config stays"),
        "{msg}"
    );
    let before = a.load(std::sync::atomic::Ordering::Relaxed);
    until("streams still flow after a refused reload", || {
        a.load(std::sync::atomic::Ordering::Relaxed) >= before + 10
    })
    .await;
    assert_eq!(blue_stats.live_streams(), 3);
    assert_eq!(ctl(d, "status").await["active"], "blue");

    drop(stalled);
    drop(client);
    _ta.abort();
    _tb.abort();
    until("streams closed", || blue_stats.live_streams() == 0).await;
    p.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_readdresses_slots_keeping_runtime_weights() {
    let stop = CancellationToken::new();
    let (blue, green, canary) = (
        upstream("blue", &stop).await,
        upstream("green", &stop).await,
        upstream("canary", &stop).await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cfg = TestConfig::blue_green(d, blue, green);
    let p = support::start(cfg.load()).await;
    // Runtime weights differ from the file's.
    assert_eq!(ctl(d, "weights blue=70 green=30").await["ok"], true);

    cfg.clone()
        .slot_url("canary", &format!("http://127.0.0.1:{canary}"), None, None)
        .write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["changed"].to_string().contains("slot canary added"),
        "{r}"
    );
    let s = ctl(d, "status").await;
    let weight = |s: &Value, n: &str| {
        s["slots"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == n).cloned())
            .unwrap_or_else(|| panic!("no slot {n} in {s}"))
    };
    assert_eq!(
        weight(&s, "blue")["weight"],
        70,
        "runtime weights persist: {s}"
    );
    assert_eq!(weight(&s, "canary")["state"], "standby");

    // Removing a serving slot is refused; re-addressing one gives a new generation.
    let moved = upstream("green2", &stop).await;
    cfg.clone()
        .clear_slots()
        .slot("blue", blue, 100)
        .slot_url("canary", &format!("http://127.0.0.1:{canary}"), None, None)
        .write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["code"], "slot_in_use", "{r}");
    assert_eq!(
        ctl(d, "status").await["slots"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(ctl(d, "weights blue=100 green=0").await["ok"], true);
    cfg.clone()
        .clear_slots()
        .slot("blue", blue, 100)
        .slot_url("green", &format!("http://127.0.0.1:{moved}"), None, None)
        .write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    let changed = r["changed"].to_string();
    assert!(
        changed.contains("slot green re-addressed") && changed.contains("slot canary removed"),
        "{r}"
    );
    let s = ctl(d, "status").await;
    assert_eq!(weight(&s, "green")["generation"], 2, "{s}");
    assert_eq!(s["slots"].as_array().map(Vec::len), Some(2));
    let r = ctl(d, "flip green --no-probe").await;
    assert_eq!(r["ok"], true, "{r}");
    let mut sse = SseSession::open(&http_client(), &format!("http://{}", p.public_addr))
        .await
        .expect("session");
    assert_eq!(sse.call("whoami", json!({})).await.expect("call"), "green2");
    drop(sse);
    p.shutdown().await;
    stop.cancel();
}

/// A TLS front for a plain upstream: an `https://` slot to test against.
fn tls_front(backend: u16, cert: &Path, key: &Path) -> u16 {
    let tls = mcpflip::config::TlsConfig {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        sni: vec![],
        client_ca: None,
        client_crl: None,
        client_auth: Default::default(),
        min_version: Default::default(),
        ciphers: Vec::new(),
        acme: None,
    };
    tls_front_with(backend, &tls).0
}

/// A TLS front that requires a client certificate the test CA signed, for a
/// plain upstream.
fn mtls_front(backend: u16, pki: &Pki) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let tls = mcpflip::config::TlsConfig {
        cert: pki.server.clone(),
        key: pki.server_key.clone(),
        sni: vec![],
        client_ca: Some(pki.ca.clone()),
        client_crl: None,
        client_auth: Default::default(),
        min_version: Default::default(),
        ciphers: Vec::new(),
        acme: None,
    };
    tls_front_with(backend, &tls)
}

/// A TLS front configured as `tls` for a plain upstream: its port, and the
/// client certificate each connection presented.
fn tls_front_with(
    backend: u16,
    tls: &mcpflip::config::TlsConfig,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(mcpflip::tls::server_config(tls).expect("server config"));
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let port = l.local_addr().expect("addr").port();
    let l = TcpListener::from_std(l).expect("listener");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                    {
                        let _ = tx.send(leaf.to_vec());
                    }
                    if let Ok(mut up) = TcpStream::connect(("127.0.0.1", backend)).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                }
            });
        }
    });
    (port, rx)
}

/// The DER of the first certificate in the PEM file `path`.
fn der(path: &Path) -> Vec<u8> {
    mcpflip::tls::read_chain(path).expect("chain")[0].to_vec()
}

/// `[[slot]] cert` and `key`: an `https://` slot that requires a client
/// certificate gets the configured one; a slot without one, or with one
/// its CA did not sign, is refused at the handshake; `reload` renews the
/// certificate under a running slot without a new generation, its open
/// session going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_slot_that_requires_a_client_certificate_gets_the_configured_one() {
    let stop = CancellationToken::new();
    let plain = upstream("remote", &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pki = Pki::new(&d.join("pki"));
    let stranger = mcpflip::tls::write_dev_cert(&d.join("stranger"), &[], false).expect("dev");
    let (front, mut presented) = mtls_front(plain, &pki);
    let url = format!("https://127.0.0.1:{front}");
    let with_cert = |cert: &Path, key: &Path| {
        TestConfig::new(d)
            .slot_url("remote", &url, Some(100), Some(&pki.ca))
            .slot_set(
                "remote",
                "cert",
                support::config::q(cert.display().to_string()),
            )
            .slot_set(
                "remote",
                "key",
                support::config::q(key.display().to_string()),
            )
            .slot_url("anon", &url, None, Some(&pki.ca))
            // Idle connections go soon: the next request after a renewal
            // makes a new one.
            .set_str("proxy", "pool_idle_timeout", "100ms")
    };
    // A certificate from a CA the slot does not trust: refused.
    let cfg = with_cert(&stranger.cert, &stranger.key);
    let p = support::start(cfg.load()).await;
    let r = ctl(d, "probe remote").await;
    assert_eq!(r["ok"], false, "{r}");
    // No certificate at all: refused.
    let r = ctl(d, "probe anon").await;
    assert_eq!(r["ok"], false, "{r}");
    let detail = r["probe"]["steps"][0]["detail"].as_str().unwrap_or("");
    assert!(detail.contains("CertificateRequired"), "{detail}");
    // The CA's certificate, by reload: the same generation.
    with_cert(&pki.member.cert, &pki.member.key).write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["changed"]
            .to_string()
            .contains("slot remote client certificate re-read"),
        "{r}"
    );
    let r = ctl(d, "probe remote").await;
    assert_eq!(r["ok"], true, "{r}");
    let mut sse = SseSession::open(&http_client(), &format!("http://{}", p.public_addr))
        .await
        .expect("a session through the mutual-TLS slot");
    assert_eq!(sse.call("whoami", json!({})).await.expect("call"), "remote");
    // Renewed (another certificate of the CA): the session goes on, and the
    // next connection presents the new one.
    with_cert(&pki.revoked.cert, &pki.revoked.key).write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    let status = ctl(d, "status").await;
    let remote = status["slots"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "remote").cloned())
        .expect("slot remote");
    assert_eq!(remote["generation"], 1, "no new generation: {status}");
    // The certificate's expiry is a metric, and follows the reload.
    let m = support::metrics(p.admin_addr).await;
    let series = |cert: &Path| {
        format!(
            "mcpflip_slot_client_certificate_expiry_timestamp_seconds{{slot=\"remote\",file=\"{}\"}}",
            cert.display()
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(support::metric(&m, &series(&pki.revoked.cert)) > now, "{m}");
    assert_eq!(support::metric(&m, &series(&pki.member.cert)), 0, "{m}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sse.call("whoami", json!({})).await.expect("call"), "remote");
    let mut seen = Vec::new();
    while let Ok(der) = presented.try_recv() {
        seen.push(der);
    }
    assert!(
        seen.contains(&der(&pki.member.cert)),
        "the member certificate was presented"
    );
    assert!(
        seen.contains(&der(&pki.revoked.cert)),
        "a connection after the renewal presented the new certificate"
    );
    assert!(
        !seen.contains(&der(&stranger.cert)),
        "the front refused the stranger"
    );
    drop(sse);
    p.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_the_slot_ca() {
    let stop = CancellationToken::new();
    let plain = upstream("remote", &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let dev = mcpflip::tls::write_dev_cert(&d.join("certs"), &[], false).expect("dev cert");
    let front = tls_front(plain, &dev.cert, &dev.key);
    let url = format!("https://localhost:{front}");
    let cfg = TestConfig::new(d)
        .slot_url("remote", &url, Some(100), Some(&dev.ca))
        .slot_url("untrusted", &url, None, None)
        // Idle connections go soon: a probe after a reload makes a new one.
        .set_str("proxy", "pool_idle_timeout", "100ms");
    let p = support::start(cfg.load()).await;
    let r = ctl(d, "probe remote").await;
    assert_eq!(r["ok"], true, "{r}");
    let mut sse = SseSession::open(&http_client(), &format!("http://{}", p.public_addr))
        .await
        .expect("session through the https upstream");
    assert_eq!(sse.call("whoami", json!({})).await.expect("call"), "remote");
    drop(sse);
    // The same server, but verified against the system roots: refused.
    let r = ctl(d, "probe untrusted").await;
    assert_eq!(r["ok"], false, "{r}");
    let detail = r["probe"]["steps"][0]["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("(connect)") && detail.to_lowercase().contains("certificate"),
        "{detail}"
    );
    // The CAs swapped by reload, in place: each slot's next connection is
    // verified by its new `ca`, with no new generation.
    let other = mcpflip::tls::write_dev_cert(&d.join("other"), &[], false).expect("other CA");
    TestConfig::new(d)
        .slot_url("remote", &url, Some(100), Some(&other.ca))
        .slot_url("untrusted", &url, None, Some(&dev.ca))
        .set_str("proxy", "pool_idle_timeout", "100ms")
        .write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    let changed = r["changed"].to_string();
    for slot in ["remote", "untrusted"] {
        assert!(
            changed.contains(&format!("slot {slot} trusted CAs re-read")),
            "{r}"
        );
    }
    assert!(!changed.contains("re-addressed"), "{r}");
    let status = ctl(d, "status").await;
    for s in status["slots"].as_array().expect("slots") {
        assert_eq!(s["generation"], 1, "no new generation: {status}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = ctl(d, "probe untrusted").await;
    assert_eq!(r["ok"], true, "trusted now: {r}");
    let r = ctl(d, "probe remote").await;
    assert_eq!(r["ok"], false, "another CA now: {r}");
    p.shutdown().await;
    stop.cancel();
}

/// Shutdown over HTTPS + h2: an open SSE stream is ended at an event boundary
/// once the drain deadline passes (a clean end of stream, not a reset), and the
/// graceful shutdown (GOAWAY, then close) completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_h2_streams_cleanly_at_event_boundaries() {
    let stop = CancellationToken::new();
    let (_dir, dev, _path, p) = tls_proxy(&stop, Some("300ms")).await;
    let client = h2_client(&dev.ca);
    let resp = client
        .request(
            http::Request::get(format!(
                "https://localhost:{}/ticker?interval_ms=10&pad=3000",
                p.public_addr.port()
            ))
            .body(Full::new(Bytes::new()))
            .expect("req"),
        )
        .await
        .expect("stream");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let reader = tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => all.extend_from_slice(f.data_ref().map(|b| &b[..]).unwrap_or(&[])),
                Err(e) => return Err(format!("stream broke: {e}")),
            }
        }
        Ok(all)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(20), p.shutdown())
        .await
        .expect("shutdown ends after the deadline");
    let all = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the stream ends")
        .expect("task")
        .expect("a clean end, not a reset");
    assert!(
        all.len() > 3000 && all.ends_with(b"\n\n"),
        "ended between events: {} bytes",
        all.len()
    );
    stop.cancel();
}

/// Plain HTTP to the TLS port gets a 400 that says to use https://, not a
/// failed handshake the client reports as garbage; TLS on the same port still works.
#[tokio::test]
async fn plain_http_to_the_tls_port_is_answered_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stop = CancellationToken::new();
    let (_dir, dev, _cfg, p) = tls_proxy(&stop, None).await;
    let mut tcp = TcpStream::connect(p.public_addr).await.expect("connect");
    tcp.write_all(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text:?}");
    assert!(text.contains("Use https://"), "{text:?}");
    // The port still speaks TLS.
    assert!(!presented_cert(p.public_addr, &dev.ca).await.is_empty());
    p.shutdown().await;
    stop.cancel();
}

/// One `GET /healthz` over a fresh HTTPS connection that trusts `ca` and
/// presents `identity`: the status, or the error that ended it.
async fn get_with_identity(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<&mcpflip::config::CertPair>,
    h2: bool,
) -> Result<(u16, http::Version), String> {
    get_with_headers(addr, ca, identity, h2, &[]).await
}

/// [`get_with_identity`] with `headers` on the request.
async fn get_with_headers(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<&mcpflip::config::CertPair>,
    h2: bool,
    headers: &[(&str, &str)],
) -> Result<(u16, http::Version), String> {
    let tls = mcpflip::tls::client_config_with_identity(Some(ca), identity).expect("client tls");
    let client = https_client(tls, h2);
    let mut req = http::Request::get(format!("https://{addr}/healthz"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(15), client.request(req))
        .await
        .map_err(|_| "no answer in 15 s".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    Ok((resp.status().as_u16(), resp.version()))
}

/// `[listen] tls.client_ca`, mutual TLS: a client with a certificate the
/// CA signed is served over HTTP/1.1 and HTTP/2; one with no certificate or
/// with another CA's is refused in the handshake, counted; `reload` swaps
/// the CA for new handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_ca_only_clients_with_a_certificate_it_signed_are_served() {
    let stop = CancellationToken::new();
    let blue = upstream("blue", &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = Pki::new(&dir.path().join("ours"));
    let theirs = Pki::new(&dir.path().join("theirs"));
    let (ca, member, outsider) = (&ours.ca, &ours.member, &theirs.member);
    let cfg = TestConfig::blue_green(dir.path(), blue, blue).set("listen", "tls", ours.listen(""));
    let p = support::start(cfg.load()).await;
    let addr = p.public_addr;

    let ok = get_with_identity(addr, ca, Some(member), false).await;
    assert_eq!(ok, Ok((200, http::Version::HTTP_11)));
    let ok = get_with_identity(addr, ca, Some(member), true).await;
    assert_eq!(ok, Ok((200, http::Version::HTTP_2)));
    let refused = get_with_identity(addr, ca, None, false).await;
    assert!(refused.is_err(), "no certificate: {refused:?}");
    let refused = get_with_identity(addr, ca, Some(outsider), true).await;
    assert!(refused.is_err(), "another CA's certificate: {refused:?}");
    let series = "mcpflip_client_errors_total{kind=\"client_certificate\"}";
    support::until_async("both refusals counted", || async {
        support::metric(&support::metrics(p.admin_addr).await, series) >= 2
    })
    .await;
    let m = support::metrics(p.admin_addr).await;
    assert_eq!(support::metric(&m, series), 2, "{m}");
    assert_eq!(
        support::metric(&m, "mcpflip_client_errors_total{kind=\"tls_handshake\"}"),
        0,
        "{m}"
    );

    // The other CA from now on: its client is served, ours is refused.
    cfg.set("listen", "tls", ours.listen_for(&theirs.ca, ""))
        .write();
    let r = ctl(dir.path(), "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    let ok = get_with_identity(addr, ca, Some(outsider), false).await;
    assert_eq!(ok, Ok((200, http::Version::HTTP_11)));
    let refused = get_with_identity(addr, ca, Some(member), false).await;
    assert!(refused.is_err(), "the old CA's certificate: {refused:?}");
    p.shutdown().await;
    stop.cancel();
}

/// Under `tls.client_ca` a slot is told the client's certificate in
/// `X-Forwarded-Client-Cert` (its SHA-256 and subject), over HTTP/1.1 and
/// HTTP/2; a value the client sends itself never reaches the slot, with
/// or without TLS; a trusted proxy's is passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_told_the_client_certificate_and_never_a_clients_claim() {
    let (port, mut heads) = support::head_recorder().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let hash = pki.member_hash();
    let cfg = TestConfig::blue_green(dir.path(), port, support::closed_port()).set(
        "listen",
        "tls",
        pki.listen(""),
    );
    let p = support::start(cfg.load()).await;
    let forged = [(
        "x-forwarded-client-cert",
        "Hash=forged;Subject=\"CN=admin\"",
    )];
    let expected = format!("\r\nx-forwarded-client-cert: hash={hash};subject=\"cn=mcpflip\"\r\n");
    for h2 in [false, true] {
        let got = get_with_headers(p.public_addr, &pki.ca, Some(&pki.member), h2, &forged).await;
        assert_eq!(got.map(|(s, _)| s), Ok(200), "h2 {h2}");
        let head = heads.recv().await.expect("the slot got the request");
        assert!(head.contains(&expected), "h2 {h2}: {head}");
        assert!(
            !head.contains("forged") && !head.contains("admin"),
            "{head}"
        );
    }
    p.shutdown().await;

    // Plain HTTP: a client's claim is dropped; a trusted proxy's passes.
    let cfg = TestConfig::blue_green(dir.path(), port, support::closed_port()).set(
        "proxy",
        "trusted_proxies",
        "[\"127.0.0.2\"]",
    );
    let p = support::start(cfg.load()).await;
    let request = "GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                   X-Forwarded-Client-Cert: Hash=ab;Subject=\"CN=via-lb\"\r\nConnection: close\r\n\r\n";
    for (from, passed) in [([127, 0, 0, 1], false), ([127, 0, 0, 2], true)] {
        let mut raw = support::connect_from(from, p.public_addr).await;
        tokio::io::AsyncWriteExt::write_all(&mut raw, request.as_bytes())
            .await
            .expect("write");
        let answer = support::read_to_close(&mut raw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let head = heads.recv().await.expect("the slot got the request");
        assert_eq!(
            head.contains("\r\nx-forwarded-client-cert: hash=ab;subject=\"cn=via-lb\"\r\n"),
            passed,
            "from {from:?}: {head}"
        );
        assert_eq!(
            head.matches("x-forwarded-client-cert").count(),
            usize::from(passed)
        );
    }
    p.shutdown().await;
}

/// `tls.client_crl`: a client certificate its CA revoked is refused in the
/// handshake (counted) while the CA's others are served; `reload` re-reads
/// the list (here: dropped, and the revoked one is served again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_until_the_list_changes() {
    let stop = CancellationToken::new();
    let blue = upstream("blue", &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (ca, member, gone) = (&pki.ca, &pki.member, &pki.revoked);
    let with_crl = pki.listen(&format!(", client_crl = \"{}\"", pki.crl.display()));
    let cfg = TestConfig::blue_green(dir.path(), blue, blue).set("listen", "tls", with_crl);
    let p = support::start(cfg.load()).await;
    let addr = p.public_addr;
    assert_eq!(
        get_with_identity(addr, ca, Some(member), false).await,
        Ok((200, http::Version::HTTP_11))
    );
    let refused = get_with_identity(addr, ca, Some(gone), false).await;
    assert!(refused.is_err(), "a revoked certificate: {refused:?}");
    let series = "mcpflip_client_errors_total{kind=\"client_certificate\"}";
    support::until_async("the refusal counted", || async {
        support::metric(&support::metrics(p.admin_addr).await, series) >= 1
    })
    .await;
    assert_eq!(
        support::metric(&support::metrics(p.admin_addr).await, series),
        1
    );

    cfg.set("listen", "tls", pki.listen("")).write();
    let r = ctl(dir.path(), "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        get_with_identity(addr, ca, Some(gone), false).await,
        Ok((200, http::Version::HTTP_11)),
        "no list after the reload"
    );
    p.shutdown().await;
    stop.cancel();
}

/// `tls.client_auth = "optional"`: a client without a certificate is served
/// (and the slot told no certificate), one with the CA's is served and told,
/// and one with another CA's is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_optional_client_auth_a_certificate_is_checked_only_when_presented() {
    let (port, mut heads) = support::head_recorder().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = Pki::new(&dir.path().join("ours"));
    let theirs = Pki::new(&dir.path().join("theirs"));
    let (ca, member, outsider) = (&ours.ca, &ours.member, &theirs.member);
    let optional = ours.listen(", client_auth = \"optional\"");
    let cfg = TestConfig::blue_green(dir.path(), port, support::closed_port())
        .set("listen", "tls", optional);
    let p = support::start(cfg.load()).await;
    let addr = p.public_addr;

    assert_eq!(
        get_with_identity(addr, ca, None, false).await.map(|r| r.0),
        Ok(200)
    );
    let head = heads.recv().await.expect("the slot got the request");
    assert!(!head.contains("x-forwarded-client-cert"), "{head}");
    assert_eq!(
        get_with_identity(addr, ca, Some(member), true)
            .await
            .map(|r| r.0),
        Ok(200)
    );
    let head = heads.recv().await.expect("the slot got the request");
    assert!(head.contains("x-forwarded-client-cert: hash="), "{head}");
    let refused = get_with_identity(addr, ca, Some(outsider), false).await;
    assert!(refused.is_err(), "another CA's certificate: {refused:?}");
    p.shutdown().await;
}

/// The suite a client negotiates with `addr` (trusting `ca`) when it speaks
/// only `versions` and offers only the suites `offer` keeps, or `None` when
/// the handshake fails.
async fn handshake(
    addr: std::net::SocketAddr,
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    offer: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in mcpflip::tls::read_chain(ca).expect("ca") {
        roots.add(c).expect("root");
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| offer(&format!("{:?}", s.suite())));
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.ok()?;
    let suite = tls.get_ref().1.negotiated_cipher_suite()?;
    Some(format!("{:?}", suite.suite()))
}

/// Whether a TLS handshake with `addr` succeeds for a client that speaks
/// only `version`, trusting `ca`.
async fn handshake_with(
    addr: std::net::SocketAddr,
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> bool {
    handshake(addr, ca, &[version], |_| true).await.is_some()
}

/// A proxy config for a slot on `plain` with `[listen] tls` on `dev`'s
/// certificate, `extra` appended inside the table (`, min_version = ...`).
fn dev_tls(d: &Path, plain: u16, dev: &mcpflip::tls::DevCert, extra: &str) -> TestConfig {
    TestConfig::new(d).slot("blue", plain, 100).set(
        "listen",
        "tls",
        format!(
            "{{ cert = {}, key = {}{extra} }}",
            support::config::q(dev.cert.display().to_string()),
            support::config::q(dev.key.display().to_string())
        ),
    )
}

/// `[listen] tls.min_version = "1.3"` (nginx's `ssl_protocols TLSv1.3`): a
/// TLS 1.2 client is refused at the handshake (counted), a TLS 1.3 one is
/// served; by default both are; `reload` applies a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_min_version_refuses_older_clients_and_reload_applies_it() {
    let stop = CancellationToken::new();
    let plain = upstream("blue", &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let dev = mcpflip::tls::write_dev_cert(&d.join("certs"), &[], false).expect("dev cert");
    let with = |min: &str| dev_tls(d, plain, &dev, min);
    let cfg = with(", min_version = \"1.3\"");
    let p = support::start(cfg.load()).await;
    let addr = p.public_addr;
    assert!(
        !handshake_with(addr, &dev.ca, &rustls::version::TLS12).await,
        "TLS 1.2 refused"
    );
    assert!(
        handshake_with(addr, &dev.ca, &rustls::version::TLS13).await,
        "TLS 1.3 served"
    );
    let m = support::metrics(p.admin_addr).await;
    assert_eq!(
        support::metric(&m, "mcpflip_client_errors_total{kind=\"tls_handshake\"}"),
        1,
        "{m}"
    );
    // Back to the default by reload: TLS 1.2 is served again.
    with("").write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        handshake_with(addr, &dev.ca, &rustls::version::TLS12).await,
        "TLS 1.2 served"
    );
    assert!(handshake_with(addr, &dev.ca, &rustls::version::TLS13).await);
    p.shutdown().await;
    stop.cancel();
}

/// The suite a client offering only `suites` (TLS 1.2 and 1.3) gets.
async fn handshake_suite(addr: std::net::SocketAddr, ca: &Path, suites: &[&str]) -> Option<String> {
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    handshake(addr, ca, &versions, |s| suites.contains(&s)).await
}

/// `[listen] tls.ciphers` (nginx's `ssl_ciphers`): a client that offers
/// only suites outside the list is refused at the handshake, one that offers
/// a listed suite gets it; `reload` without the list serves every suite again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ciphers_limit_the_suites_a_client_can_get_and_reload_applies_them() {
    let stop = CancellationToken::new();
    let plain = upstream("blue", &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let dev = mcpflip::tls::write_dev_cert(&d.join("certs"), &[], false).expect("dev cert");
    let with = |extra: &str| dev_tls(d, plain, &dev, extra);
    let p = support::start(
        with(", ciphers = [\"TLS13_AES_256_GCM_SHA384\", \"TLS13_CHACHA20_POLY1305_SHA256\"]")
            .load(),
    )
    .await;
    let addr = p.public_addr;
    let aes128 = ["TLS13_AES_128_GCM_SHA256"];
    let tls12 = [
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ];
    assert_eq!(
        handshake_suite(addr, &dev.ca, &aes128).await,
        None,
        "unlisted suite refused"
    );
    assert_eq!(
        handshake_suite(addr, &dev.ca, &tls12).await,
        None,
        "no TLS 1.2 suite is listed"
    );
    assert_eq!(
        handshake_suite(
            addr,
            &dev.ca,
            &["TLS13_AES_128_GCM_SHA256", "TLS13_CHACHA20_POLY1305_SHA256"]
        )
        .await
        .as_deref(),
        Some("TLS13_CHACHA20_POLY1305_SHA256"),
        "a listed suite the client offers"
    );
    let m = support::metrics(p.admin_addr).await;
    assert_eq!(
        support::metric(&m, "mcpflip_client_errors_total{kind=\"tls_handshake\"}"),
        2,
        "{m}"
    );
    // Without the list (reload), every suite rustls offers again.
    with("").write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        handshake_suite(addr, &dev.ca, &aes128).await.as_deref(),
        Some("TLS13_AES_128_GCM_SHA256")
    );
    assert!(
        handshake_suite(addr, &dev.ca, &tls12).await.is_some(),
        "TLS 1.2 again"
    );
    // A list with a name rustls does not know is refused by reload, and the
    // listener keeps what it had.
    with(", ciphers = [\"ECDHE-RSA-AES256-GCM-SHA384\"]").write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown cipher suite")),
        "{r}"
    );
    assert!(handshake_suite(addr, &dev.ca, &aes128).await.is_some());
    p.shutdown().await;
    stop.cancel();
}

/// The access log names the certificate a client presented (its SHA-256,
/// as the slot is told it) and nothing for a client without one, on the
/// built binary as an operator runs it (`tls.client_auth = "optional"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_client_certificate() {
    let (port, _heads) = support::head_recorder().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let hash = pki.member_hash();
    let public = support::closed_port();
    let access = dir.path().join("access.log");
    let cfg = TestConfig::blue_green(dir.path(), port, support::closed_port())
        .listen_port(public)
        .set("listen", "tls", pki.listen(", client_auth = \"optional\""))
        .set_str("log", "access_log", access.to_str().expect("utf-8"));
    let mut proc = support::proc::ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proc.ready().await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], public));
    let with = get_with_identity(addr, &pki.ca, Some(&pki.member), false).await;
    assert_eq!(with.map(|(s, _)| s), Ok(200));
    let without = get_with_identity(addr, &pki.ca, None, true).await;
    assert_eq!(without.map(|(s, _)| s), Ok(200));
    let log = support::access_lines(&access, 2).await;
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines[0].contains(&format!(" client_cert=\"{hash}\" ")),
        "{log}"
    );
    assert!(!lines[1].contains("client_cert"), "{log}");
}

/// The body of `GET https://localhost:{port}{path}` (HTTP/1.1), trusting `ca`.
async fn https_text(addr: std::net::SocketAddr, ca: &Path, path: &str) -> String {
    let client = https_client(client_tls(ca), false);
    let req = http::Request::get(format!("https://localhost:{}{path}", addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("https");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// `[admin] tls`: the admin listener serves `/metrics` over HTTPS (HTTP/1.1
/// and HTTP/2) and to plain HTTP only a 400 that says to use https://;
/// `reload` swaps its certificate for new handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_https_and_reload_swaps_its_certificate() {
    let stop = CancellationToken::new();
    let blue = upstream("blue", &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let first = mcpflip::tls::write_dev_cert(&d.join("first"), &[], false).expect("dev cert");
    let second = mcpflip::tls::write_dev_cert(&d.join("second"), &[], false).expect("dev cert");
    let with = |dev: &mcpflip::tls::DevCert| {
        TestConfig::new(d).slot("blue", blue, 100).set(
            "admin",
            "tls",
            format!(
                "{{ cert = {}, key = {} }}",
                support::config::q(dev.cert.display().to_string()),
                support::config::q(dev.key.display().to_string())
            ),
        )
    };
    let p = support::start(with(&first).load()).await;
    let admin = p.admin_addr;
    for h2 in [false, true] {
        let client = https_client(client_tls(&first.ca), h2);
        let req = http::Request::get(format!("https://localhost:{}/metrics", admin.port()))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = client
            .request(req)
            .await
            .expect("https to the admin listener");
        assert_eq!(resp.status(), 200, "h2 {h2}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("# TYPE mcpflip_requests_total counter"),
            "h2 {h2}"
        );
    }
    // Plain HTTP gets no metrics: a 400 that says to use https://.
    let mut raw = TcpStream::connect(admin).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .expect("write");
    let answer = support::read_to_close(&mut raw).await;
    assert!(!answer.contains("mcpflip_"), "{answer}");
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n") && answer.contains("Use https://"),
        "{answer}"
    );
    // A new certificate by reload: new handshakes get it.
    let before = presented_cert(admin, &first.ca).await;
    with(&second).write();
    let r = ctl(d, "reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["changed"]
            .to_string()
            .contains("[admin] tls certificates re-read"),
        "{r}"
    );
    let after = presented_cert(admin, &second.ca).await;
    assert_ne!(before, after, "the second certificate is served");
    // Its expiry is in the certificates' gauge, and follows the reload.
    let m = https_text(admin, &second.ca, "/metrics").await;
    let series = |cert: &Path| {
        format!(
            "mcpflip_certificate_expiry_timestamp_seconds{{name=\"localhost\",file=\"{}\"}}",
            cert.display()
        )
    };
    assert!(support::metric(&m, &series(&second.cert)) > 0, "{m}");
    assert_eq!(support::metric(&m, &series(&first.cert)), 0, "{m}");
    p.shutdown().await;
    stop.cancel();
}
