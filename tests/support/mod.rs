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

/// A loopback port nothing listens on (bound, then let go).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
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
