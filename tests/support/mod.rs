//! Test harness, one dialect for every test: [`config::TestConfig`] writes the
//! configs, [`mcp`] is the tests' own MCP client, [`proc`] runs the real
//! binary, [`browser`] drives headless Chromium; built-in MCP servers and the
//! proxy in-process on port 0, a control client, and wait-for helpers
//! (conditions, never fixed sleeps).
#![allow(dead_code)]

pub mod browser;
pub mod config;
pub mod etcd;
pub mod mcp;
pub mod netns;
pub mod pki;
pub mod proc;
pub mod tools;

use std::path::PathBuf;
use std::time::Duration;

use mcpflip::config::Config;
use mcpflip::demo_server::{self, ServerConfig, Transport};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::TestConfig;

/// Blue and green built-in MCP servers and a directory for the proxy's files.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub stop: CancellationToken,
    pub blue: u16,
    pub green: u16,
}

impl Harness {
    pub async fn new() -> Self {
        let stop = CancellationToken::new();
        let blue = slot("blue", &stop).await;
        let green = slot("green", &stop).await;
        Harness {
            dir: tempfile::tempdir().expect("tempdir"),
            stop,
            blue,
            green,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// The test config: blue (weight 100) and green (0) in this directory.
    pub fn builder(&self) -> TestConfig {
        TestConfig::blue_green(self.dir.path(), self.blue, self.green)
    }

    /// [`Harness::builder`] with the public and admin listeners on fixed
    /// loopback ports (a process started from it, or one that takes its
    /// sockets over, must find the same addresses): (config, public, admin).
    pub fn builder_on_ports(&self) -> (TestConfig, u16, u16) {
        let (public, admin) = (closed_port(), closed_port());
        let cfg = self.builder().listen_port(public).set_str(
            "admin",
            "addr",
            format!("127.0.0.1:{admin}"),
        );
        (cfg, public, admin)
    }

    pub fn config(&self) -> Config {
        self.builder().load()
    }

    /// Starts the proxy on the default test config (state file ignored).
    pub async fn start(&self) -> mcpflip::run::Running {
        start(self.config()).await
    }

    pub async fn ctl(&self, line: &str) -> Value {
        ctl(&self.socket(), line).await
    }
}

/// Starts the proxy in-process on `config`, the state file ignored.
pub async fn start(config: Config) -> mcpflip::run::Running {
    mcpflip::run::start(config, true)
        .await
        .expect("proxy starts")
}

/// Sends one control line; returns the final reply.
pub async fn ctl(socket: &std::path::Path, line: &str) -> Value {
    mcpflip::control::client::send(socket, line, |_| {})
        .await
        .expect("control reply")
}

async fn slot(name: &str, stop: &CancellationToken) -> u16 {
    upstream(ServerConfig::new(name, Transport::Both), stop).await
}

/// Starts a built-in upstream on a loopback port; cancel `stop` to take it down.
pub async fn upstream(cfg: ServerConfig, stop: &CancellationToken) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let stop = stop.clone();
    tokio::spawn(async move { demo_server::serve(l, cfg, stop).await });
    port
}

/// A loopback port nothing listens on, for a process that must be given a
/// fixed address (or a slot that must refuse). A port the kernel hands out
/// (`bind(0)`, then let go) can be handed out again at once, as the source
/// port of a concurrent test's connection or another `bind(0)`; CI saw the
/// proxy then fail with "Address already in use". So the pick is below the
/// kernel's ephemeral range (`ip_local_port_range`), where the kernel never
/// picks, from a cursor shared by the test binary's threads (two picks never
/// meet) that starts at a random place (two test binaries seldom do), and a
/// port is only handed out when it can be bound now.
pub fn closed_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static POOL: OnceLock<(u32, u32)> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let &(first, len) = POOL.get_or_init(|| {
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        // Half the ports under the ephemeral range, above the well-known ones.
        let first = (low / 2).max(1024);
        let len = low.saturating_sub(first);
        assert!(len >= 1024, "ip_local_port_range starts at {low}: too low");
        NEXT.store(fastrand::u32(0..len), Ordering::Relaxed);
        (first, len)
    });
    for _ in 0..len {
        let port = (first + NEXT.fetch_add(1, Ordering::Relaxed) % len) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{}", first + len)
}

/// A TCP connection to `to` from the address `from`: on Linux all of
/// 127.0.0.0/8 is loopback, so 127.0.0.2 is a second client address
/// without a network namespace.
pub async fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind the source address");
    socket.connect(to).await.expect("connect")
}

/// Waits until `cond` holds (generous timeout; fails the test otherwise).
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the async `cond` holds (same timeout as [`until`]).
pub async fn until_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The live stats of slot `name` in a running proxy.
pub fn stats(p: &mcpflip::run::Running, name: &str) -> std::sync::Arc<mcpflip::stats::SlotStats> {
    p.controller
        .tables
        .load()
        .get(name)
        .map(|s| s.stats.clone())
        .expect("slot exists")
}

/// A body-less GET of `path` on `addr`.
pub fn get(
    addr: std::net::SocketAddr,
    path: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("valid request")
}

/// What the proxy sends on `raw` until it closes (within 10 s), as text.
pub async fn read_to_close(raw: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(raw, &mut buf),
    )
    .await
    .expect("the answer within 10 s")
    .expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

/// A slot that records each request head it gets (lowercased) and answers
/// `{}`; its port and the heads, in order.
pub async fn head_recorder() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // GETs only: a head, no body.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let _ = tx.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if tokio::io::AsyncWriteExt::write_all(&mut s, answer)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    match tokio::io::AsyncReadExt::read(&mut s, &mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (port, rx)
}

/// Reads until the peer closes (a reset counts as closed); `Err` with what
/// came if it is still open after 15 s.
pub async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(end, tokio::io::AsyncReadExt::read(s, &mut buf)).await {
            Err(_) => return Err(got),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The admin listener's `/metrics` text.
pub async fn metrics(admin: std::net::SocketAddr) -> String {
    let resp = mcp::http_client()
        .request(get(admin, "/metrics"))
        .await
        .expect("metrics");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The access-log file `path` once it holds `n` lines (waited for: the
/// writer flushes off the request path).
pub async fn access_lines(path: &std::path::Path, n: usize) -> String {
    until_async(&format!("{n} access-log lines"), || async {
        std::fs::read_to_string(path).is_ok_and(|t| t.lines().count() >= n)
    })
    .await;
    std::fs::read_to_string(path).expect("access log")
}

/// The value of the metric line that starts with `series` (0 when absent).
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
