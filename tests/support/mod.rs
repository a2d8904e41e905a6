//! Test harness: built-in upstreams and the proxy in-process on port 0, a ctl
//! client, and wait-for helpers (conditions, never fixed sleeps).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use mcpflip::config::Config;
use mcpflip::demo_server::{self, ServerConfig, Transport};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

    pub fn config(&self, extra: &str) -> Config {
        let text = format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[control]\nsocket = \"{}\"\nstate_file = \"{}\"\n[drain]\nquiet = \"50ms\"\n{extra}\n\
             [[slot]]\nname = \"blue\"\nupstream = \"http://127.0.0.1:{}\"\nweight = 100\n[[slot]]\nname = \"green\"\nupstream = \"http://127.0.0.1:{}\"\nweight = 0\n",
            self.socket().display(),
            self.dir.path().join("state.json").display(),
            self.blue,
            self.green
        );
        Config::parse(&text, std::path::Path::new("test.toml")).expect("valid test config")
    }

    /// Starts the proxy on the default test config (state file ignored).
    pub async fn start(&self) -> mcpflip::run::Running {
        mcpflip::run::start(self.config(""), true)
            .await
            .expect("proxy starts")
    }

    pub async fn ctl(&self, line: &str) -> Value {
        mcpflip::control::client::send(&self.socket(), line, |_| {})
            .await
            .expect("control reply")
    }
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
