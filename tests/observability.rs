//! Observability of a real proxy process (the built binary, HTTPS with the dev
//! certificate) doing a deploy while clients hold SSE streams:
//!
//! - every scrape taken all along parses with the reference parsers
//!   (prometheus_client's strict OpenMetrics parser, or its text-format parser
//!   for the 0.0.4 scrapes) and every histogram in it is consistent;
//! - `Accept` picks the format;
//! - the logs are JSON line by line, the access log has nginx's fields and a
//!   session fingerprint but never a session id; text logs off a terminal carry
//!   no colour codes;
//! - the Grafana dashboard and the alert rules query only metrics that a real
//!   scrape has, and the rules load and pass their unit tests in promtool.
//!
//! The reference tools are installed by `tests/tools/install.sh` under
//! `target/tools`. One deploy run is shared by the tests that read it.

mod support;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcpflip::demo_server::{ServerConfig, Transport};
use mcpflip::probe::events::EventReader;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_mcpflip");

/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// What a scraper that wants the 0.0.4 text format sends.
const TEXT_ACCEPT: &str = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs a reference tool (idempotent); fails with the command to run by hand.
fn install(tool: &str) -> PathBuf {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let status = Command::new("bash")
        .arg(repo().join("tests/tools/install.sh"))
        .arg(tool)
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "could not install {tool}; run `bash tests/tools/install.sh {tool}` and read its error"
    );
    let tools = repo().join("target/tools");
    match tool {
        "prom" => tools.join("prom/bin/python"),
        _ => tools.join("promtool/usr/bin/promtool"),
    }
}

/// How a scrape asked for its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Prometheus,
    Text,
    Nothing,
}

#[derive(Debug)]
struct Scrape {
    ask: Ask,
    content_type: String,
    file: PathBuf,
    body: String,
}

/// Everything the shared deploy run left to judge.
#[derive(Debug)]
struct Run {
    scrapes: Vec<Scrape>,
    stderr: String,
    access_log: String,
    /// Session ids the clients were given (tagged): none may appear in a log.
    session_ids: Vec<String>,
    /// The last scrape, in the text format, taken after the deploy and a reload.
    last: String,
}

fn run() -> &'static Run {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    RUN.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(deploy_run()).map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .unwrap_or_else(|e| panic!("the shared deploy run failed: {e}"))
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn https_client(ca: &Path) -> anyhow::Result<HttpsClient> {
    let tls = mcpflip::tls::client_config(Some(ca)).map_err(anyhow::Error::msg)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The proxy process: its stderr lines arrive on a channel, read by a thread.
struct Proxy {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    seen: Vec<String>,
}

impl Proxy {
    fn spawn(config: &Path) -> anyhow::Result<Proxy> {
        let mut child = Command::new(BIN)
            .args(["run", "--ignore-state", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proxy {
            child,
            lines,
            reader: Some(reader),
            seen: Vec::new(),
        })
    }

    /// Reads stderr until a line satisfies `pick`.
    fn wait_line<T>(&mut self, mut pick: impl FnMut(&str) -> Option<T>) -> anyhow::Result<T> {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                anyhow::anyhow!(
                    "no such line on the proxy's stderr:\n{}",
                    self.seen.join("\n")
                )
            })?;
            let found = pick(&line);
            self.seen.push(line);
            if let Some(v) = found {
                return Ok(v);
            }
        }
    }

    /// SIGTERM, then waits for exit 0 and returns the whole stderr.
    fn stop(mut self) -> anyhow::Result<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            anyhow::ensure!(
                std::time::Instant::now() < end,
                "the proxy did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.seen.extend(self.lines.try_iter());
        let all = self.seen.join("\n");
        anyhow::ensure!(status.success(), "the proxy exited with {status}:\n{all}");
        Ok(all)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listeners' addresses from the proxy's "mcpflip is serving" line, JSON
/// or text.
fn serving_addrs(line: &str) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    if !line.contains("mcpflip is serving") {
        return None;
    }
    let field = |name: &str| -> Option<std::net::SocketAddr> {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            return v[name].as_str()?.parse().ok();
        }
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..].split_whitespace().next()?.parse().ok()
    };
    Some((field("public_addr")?, field("admin_addr")?))
}

fn config_text(dir: &Path, sections: &str, blue: u16, green: u16) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n{sections}\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [control]\nsocket = \"{}\"\nstate_file = \"{}\"\n\
         [[slot]]\nname = \"blue\"\nupstream = \"http://127.0.0.1:{blue}\"\nweight = 100\n\
         [[slot]]\nname = \"green\"\nupstream = \"http://127.0.0.1:{green}\"\nweight = 0\n",
        dir.join("control.sock").display(),
        dir.join("state.json").display(),
    )
}

/// One scrape of `/metrics`, saved under `dir` as `.om` or `.txt` by the
/// content type it came back with.
async fn scrape(
    admin: std::net::SocketAddr,
    ask: Ask,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Scrape> {
    let client = support::mcp::http_client();
    let mut req = support::get(admin, "/metrics");
    match ask {
        Ask::Prometheus => {
            req.headers_mut()
                .insert(header::ACCEPT, PROMETHEUS_ACCEPT.parse()?);
        }
        Ask::Text => {
            req.headers_mut()
                .insert(header::ACCEPT, TEXT_ACCEPT.parse()?);
        }
        Ask::Nothing => {}
    }
    let resp = client.request(req).await?;
    anyhow::ensure!(resp.status() == 200, "GET /metrics: {}", resp.status());
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    let ext = if content_type.starts_with("application/openmetrics-text") {
        "om"
    } else {
        "txt"
    };
    let file = dir.join(format!("{n:04}.{ext}"));
    std::fs::write(&file, &body)?;
    Ok(Scrape {
        ask,
        content_type,
        file,
        body,
    })
}

async fn post(
    client: &HttpsClient,
    url: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let mut req = http::Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_string())))?)
        .await?;
    let (parts, body) = resp.into_parts();
    Ok((parts, body.collect().await?.to_bytes()))
}

/// Opens a legacy SSE session; returns its held stream and its POST URL.
async fn open_legacy(client: &HttpsClient, base: &str) -> anyhow::Result<(EventReader, String)> {
    let req = http::Request::get(format!("{base}/sse"))
        .header(header::ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))?;
    let resp = client.request(req).await?;
    anyhow::ensure!(resp.status() == 200, "GET /sse: {}", resp.status());
    let mut events = EventReader::new(resp.into_body());
    let endpoint = events.next().await?;
    anyhow::ensure!(endpoint.event == "endpoint", "first event {endpoint:?}");
    Ok((events, endpoint.data))
}

/// Waits until a scrape contains `needle`.
async fn until_scraped(
    latest: &mut tokio::sync::watch::Receiver<String>,
    needle: &str,
) -> anyhow::Result<()> {
    let wait = latest.wait_for(|body| body.contains(needle));
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .map_err(|_| anyhow::anyhow!("no scrape showed {needle:?}"))?
        .map_err(|_| anyhow::anyhow!("the scraper stopped before a scrape showed {needle:?}"))?;
    Ok(())
}

async fn ctl(socket: &Path, line: &str) -> anyhow::Result<Value> {
    mcpflip::control::client::send(socket, line, |_| {}).await
}

/// Waits until slot `name` in `status` satisfies `cond`.
async fn until_slot(
    socket: &Path,
    name: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = ctl(socket, "status").await?;
        let slot = status["slots"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .cloned()
            .unwrap_or(Value::Null);
        if cond(&slot) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn deploy_run() -> anyhow::Result<Run> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("observability");
    let _ = std::fs::remove_dir_all(&dir);
    let scrapes_dir = dir.join("scrapes");
    std::fs::create_dir_all(&scrapes_dir)?;
    let certs = dir.join("certs");
    let out = Command::new(BIN)
        .args(["cert", "--dev", "--dir"])
        .arg(&certs)
        .output()?;
    anyhow::ensure!(out.status.success(), "cert --dev: {out:?}");

    let stop = CancellationToken::new();
    let blue = support::upstream(ServerConfig::new("blue", Transport::Both), &stop).await;
    let green = support::upstream(ServerConfig::new("green", Transport::Both), &stop).await;
    let access = dir.join("access.log");
    let sections = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n\
         [drain]\nquiet = \"50ms\"\ndeadline = \"30s\"\n\
         [probe]\ntimeout = \"2s\"\n\
         [watch]\nwindow = \"5s\"\ninterval = \"200ms\"\n\
         [log]\nformat = \"json\"\naccess_log = \"{}\"\n",
        certs.join("server.crt").display(),
        certs.join("server.key").display(),
        access.display()
    );
    let config = dir.join("mcpflip.toml");
    std::fs::write(&config, config_text(&dir, &sections, blue, green))?;
    let socket = dir.join("control.sock");

    let mut proxy = Proxy::spawn(&config)?;
    let (public, admin) = proxy.wait_line(serving_addrs)?;
    let base = format!("https://localhost:{}", public.port());
    let client = https_client(&certs.join("dev-ca.crt"))?;

    // Scrapes all along, each way a scraper may ask, until told to stop.
    let done = CancellationToken::new();
    let (latest_tx, mut latest) = tokio::sync::watch::channel(String::new());
    let scraper = {
        let done = done.clone();
        let scrapes_dir = scrapes_dir.clone();
        tokio::spawn(async move {
            let mut scrapes = Vec::new();
            let asks = [Ask::Prometheus, Ask::Text, Ask::Nothing];
            // Bounded: at most 1,500 scrapes (the run takes a few seconds).
            for n in 0..1500 {
                let s = scrape(admin, asks[n % 3], n, &scrapes_dir).await?;
                latest_tx.send_replace(s.body.clone());
                scrapes.push(s);
                if done.is_cancelled() && n % 3 == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(scrapes)
        })
    };

    // Sessions of each era on blue.
    let mut session_ids = Vec::new();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "obs", "version": "1"}}});
    let (parts, _) = post(&client, &format!("{base}/mcp"), &[], init).await?;
    let session = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow::anyhow!("no session id: {parts:?}"))?
        .to_owned();
    session_ids.push(session.clone());
    let with_session = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    post(
        &client,
        &format!("{base}/mcp"),
        &with_session,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await?;
    let listed = [
        ("mcp-method", "tools/list"),
        with_session[0],
        with_session[1],
    ];
    let (parts, _) = post(
        &client,
        &format!("{base}/mcp"),
        &listed,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await?;
    anyhow::ensure!(parts.status == 200, "tools/list: {}", parts.status);
    let called = [
        ("mcp-method", "tools/call"),
        with_session[0],
        with_session[1],
    ];
    post(
        &client,
        &format!("{base}/mcp"),
        &called,
        json!({"jsonrpc": "2.0", "id": 3,
        "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}),
    )
    .await?;
    // A stateless (2026-07-28) request and a session this proxy never made.
    post(
        &client,
        &format!("{base}/mcp"),
        &[
            ("mcp-method", "ping"),
            ("mcp-protocol-version", "2026-07-28"),
        ],
        json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}),
    )
    .await?;
    post(
        &client,
        &format!("{base}/mcp"),
        &[("mcp-session-id", "mf1.blue.9.gone")],
        json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}),
    )
    .await?;

    let (first, post_url) = open_legacy(&client, &base).await?;
    let (second, _) = open_legacy(&client, &base).await?;
    let legacy_id = post_url
        .split(['=', '&'])
        .find(|p| p.starts_with("mf1."))
        .ok_or_else(|| anyhow::anyhow!("no tagged session in {post_url}"))?
        .to_owned();
    session_ids.push(legacy_id);
    let post_to = if post_url.starts_with("http") {
        post_url.clone()
    } else {
        format!("{base}{post_url}")
    };
    let (parts, _) = post(
        &client,
        &post_to,
        &[],
        json!({"jsonrpc": "2.0", "id": 6,
        "method": "initialize", "params": {"protocolVersion": "2024-11-05",
        "capabilities": {}, "clientInfo": {"name": "obs", "version": "1"}}}),
    )
    .await?;
    anyhow::ensure!(parts.status.is_success(), "legacy POST: {}", parts.status);
    until_slot(&socket, "blue", "two streams on blue", |s| {
        s["live_streams"] == 2
    })
    .await?;
    until_scraped(&mut latest, "mcpflip_live_streams{slot=\"blue\"} 2\n").await?;

    // The deploy, by the binary as an operator runs it.
    let deploy = tokio::process::Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(&socket)
        .args(["deploy", "green"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    until_slot(&socket, "blue", "blue draining", |s| {
        s["state"] == "draining"
    })
    .await?;
    // The streams hold the drain, and the watch window (5 s) outlasts these waits:
    // both are seen by a scrape before the streams close.
    until_scraped(&mut latest, "mcpflip_drain_elapsed_seconds{slot=\"blue\"}").await?;
    until_scraped(&mut latest, "mcpflip_watch_active 1\n").await?;
    drop(first);
    until_slot(&socket, "blue", "one stream left", |s| {
        s["live_streams"] == 1
    })
    .await?;
    drop(second);
    let out = deploy.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "deploy failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reload = ctl(&socket, "reload").await?;
    anyhow::ensure!(reload["ok"] == true, "reload: {reload}");

    done.cancel();
    let scrapes = scraper.await??;
    let last = scrape(admin, Ask::Text, 9999, &scrapes_dir).await?.body;
    let stderr = proxy.stop()?;
    stop.cancel();
    Ok(Run {
        scrapes,
        stderr,
        access_log: std::fs::read_to_string(&access)?,
        session_ids,
        last,
    })
}

/// The value of the sample written exactly as `series` (name and labels).
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Every sample name in a set of scrapes.
fn sample_names(scrapes: &[Scrape]) -> BTreeSet<String> {
    scrapes
        .iter()
        .flat_map(|s| s.body.lines())
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The `mcpflip_...` (and `process_...`) names a query or rule file mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("mcpflip_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let ident_before =
            start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if !ident_before {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

#[test]
fn every_scrape_of_a_deploy_parses_strictly_and_its_histograms_are_consistent() {
    let python = install("prom");
    let run = run();
    let mut cmd = Command::new(&python);
    cmd.arg(repo().join("tests/tools/check_scrape.py"));
    for s in &run.scrapes {
        cmd.arg(&s.file);
    }
    let out = cmd.output().expect("python runs");
    assert!(
        out.status.success(),
        "a scrape was rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("checker output");
    assert!(
        summary["files"]["openmetrics"].as_u64() >= Some(5),
        "{summary}"
    );
    assert!(summary["files"]["text"].as_u64() >= Some(10), "{summary}");

    // The run shows in the numbers.
    let last = &run.last;
    let v = |series: &str| value(last, series).unwrap_or_else(|| panic!("no {series} in:\n{last}"));
    assert!(v("mcpflip_stream_duration_seconds_count{slot=\"blue\"}") >= 2.0);
    assert_eq!(
        v("mcpflip_stream_duration_seconds_bucket{slot=\"blue\",le=\"+Inf\"}"),
        v("mcpflip_stream_duration_seconds_count{slot=\"blue\"}")
    );
    assert!(v("mcpflip_request_duration_seconds_count{slot=\"blue\"}") >= 6.0);
    assert!(
        v("mcpflip_mcp_request_duration_seconds_count{slot=\"blue\",method=\"tools/list\"}") >= 1.0
    );
    assert!(
        v("mcpflip_mcp_request_duration_seconds_count{slot=\"blue\",method=\"tools/call\"}") >= 1.0
    );
    assert_eq!(v("mcpflip_flips_total"), 1.0);
    assert_eq!(
        v("mcpflip_drains_total{slot=\"blue\",result=\"drained\"}"),
        1.0
    );
    assert_eq!(
        v("mcpflip_drain_duration_seconds_count{slot=\"blue\"}"),
        1.0
    );
    assert!(v("mcpflip_probes_total{slot=\"green\",result=\"passed\"}") >= 1.0);
    assert!(
        v("mcpflip_probe_step_duration_seconds_count{slot=\"green\",step=\"tools/list\"}") >= 1.0
    );
    assert_eq!(v("mcpflip_watch_outcomes_total{result=\"passed\"}"), 1.0);
    assert_eq!(v("mcpflip_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(
        v("mcpflip_slot_state{slot=\"green\",state=\"serving\"}"),
        1.0
    );
    let build = last
        .lines()
        .find(|l| l.starts_with("mcpflip_build_info{"))
        .expect("build info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let expiry = last
        .lines()
        .find(|l| l.starts_with("mcpflip_certificate_expiry_timestamp_seconds{name=\"localhost\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no certificate expiry in:\n{last}"));
    assert!(expiry > now, "{expiry} <= {now}");
    // While it ran: the drain and the watch were visible.
    let during = |needle: &str| run.scrapes.iter().any(|s| s.body.contains(needle));
    assert!(during("mcpflip_drain_elapsed_seconds{slot=\"blue\"}"));
    assert!(during("mcpflip_watch_active 1\n"));
    assert!(during("mcpflip_live_streams{slot=\"blue\"} 2\n"));
}

#[test]
fn the_scrape_format_follows_the_scrapers_accept_header() {
    let run = run();
    for s in &run.scrapes {
        let (om, eof) = (
            s.content_type
                .starts_with("application/openmetrics-text; version=1.0.0"),
            s.body.ends_with("# EOF\n"),
        );
        match s.ask {
            Ask::Prometheus => {
                assert!(om && eof, "{:?} got {} (eof {eof})", s.ask, s.content_type);
                assert!(s.body.contains("# TYPE mcpflip_requests counter\n"));
            }
            Ask::Text | Ask::Nothing => {
                assert!(
                    s.content_type.starts_with("text/plain; version=0.0.4") && !eof,
                    "{:?} got {} (eof {eof})",
                    s.ask,
                    s.content_type
                );
                assert!(s.body.contains("# TYPE mcpflip_requests_total counter\n"));
            }
        }
    }
}

#[test]
fn logs_are_json_line_by_line_and_the_access_log_has_nginx_fields_but_no_session_id() {
    let run = run();
    let mut main = 0;
    for line in run.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        main += 1;
    }
    assert!(main >= 3, "{}", run.stderr);
    let lines: Vec<Value> = run
        .access_log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["target"] == "access"));
    for fields in [
        "remote_addr",
        "method",
        "path",
        "status",
        "bytes_sent",
        "request_time",
        "end",
    ] {
        assert!(
            lines.iter().all(|l| !l[fields].is_null()),
            "{fields} missing"
        );
    }
    let find = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        lines
            .iter()
            .find(|l| pred(l))
            .cloned()
            .unwrap_or_else(|| panic!("no access line for {what}:\n{}", run.access_log))
    };
    let init = find("initialize", &|l| {
        l["era"] == "sessionless" && l["status"] == 200
    });
    assert_eq!(init["method"], "POST");
    assert_eq!(init["path"], "/mcp");
    assert_eq!(init["slot"], "blue");
    assert!(init["bytes_sent"].as_u64() > Some(0), "{init}");
    let (total, upstream) = (
        init["request_time"].as_f64(),
        init["upstream_time"].as_f64(),
    );
    assert!(upstream.is_some() && total >= upstream, "{init}");
    assert!(
        init["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{init}"
    );
    let fp = init["session"]
        .as_str()
        .expect("initialize carries the new session's fingerprint");
    assert!(
        fp.len() == 8 && fp.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fp}"
    );
    let listed = find("tools/list", &|l| {
        l["mcp_method"] == "tools/list" && l["era"] == "session"
    });
    assert_eq!(listed["session"], fp, "one session, one fingerprint");
    let gone = find("a gone session", &|l| l["status"] == 404);
    assert!(
        gone["slot"].is_null() && gone["upstream_time"].is_null(),
        "{gone}"
    );
    let streams: Vec<&Value> = lines
        .iter()
        .filter(|l| l["method"] == "GET" && l["path"] == "/sse")
        .collect();
    assert_eq!(streams.len(), 2, "{}", run.access_log);
    for s in streams {
        assert_eq!(s["era"], "legacy_sse");
        assert_eq!(s["end"], "client_gone", "{s}");
        assert!(s["bytes_sent"].as_u64() > Some(0), "{s}");
    }
    assert!(lines
        .iter()
        .any(|l| l["era"] == "legacy_sse" && l["method"] == "POST" && l["session"].is_string()));
    for id in &run.session_ids {
        // The upstream's own id, after the `mf1.<slot>.<gen>.` tag.
        let inner = id.splitn(4, '.').nth(3).unwrap_or(id);
        assert!(
            !run.access_log.contains(inner) && !run.stderr.contains(inner),
            "session id {id} written to a log"
        );
    }
    assert!(!run.access_log.contains('\u{1b}') && !run.stderr.contains('\u{1b}'));
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_a_real_scrape_has() {
    let run = run();
    let path = repo().join("contrib/grafana/mcpflip.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let have = sample_names(&run.scrapes);
    let missing: Vec<&String> = queried.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no scrape has: {missing:?}"
    );
    // What an operator watches during a deploy is there.
    for needed in [
        "mcpflip_live_streams",
        "mcpflip_requests_total",
        "mcpflip_upstream_errors_total",
        "mcpflip_request_duration_seconds_bucket",
        "mcpflip_drain_duration_seconds_bucket",
        "mcpflip_flips_total",
        "mcpflip_rollbacks_total",
        "mcpflip_probes_total",
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn the_alert_rules_load_in_promtool_pass_their_tests_and_name_only_real_metrics() {
    let promtool = install("promtool");
    let rules = repo().join("contrib/prometheus/alerts.yml");
    let out = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&promtool)
        .arg("test")
        .arg("rules")
        .arg(repo().join("contrib/prometheus/alerts.test.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&rules).expect("rules");
    for alert in [
        "McpflipDrainNearDeadline",
        "McpflipDrainForced",
        "McpflipRolledBack",
        "McpflipServingSlot5xx",
        "McpflipNoServingSlot",
        "McpflipCertificateExpiresSoon",
    ] {
        assert!(
            text.contains(&format!("alert: {alert}")),
            "no alert {alert}"
        );
    }
    let have = sample_names(&run().scrapes);
    let named = metric_names(&text);
    let missing: Vec<&String> = named.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "the alert rules name metrics no scrape has: {missing:?}"
    );
}

/// Defect 3: text logs written to a file carried ANSI colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_off_a_terminal_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let blue = support::upstream(ServerConfig::new("blue", Transport::Both), &stop).await;
    let config = dir.path().join("mcpflip.toml");
    // No [log] section: the defaults (text, access log beside the main log).
    std::fs::write(&config, config_text(dir.path(), "", blue, blue)).expect("config");
    let mut proxy = Proxy::spawn(&config).expect("proxy starts");
    let (public, _) = proxy.wait_line(serving_addrs).expect("serving line");
    let resp = support::mcp::http_client()
        .request(support::get(public, "/healthz-through-the-proxy"))
        .await
        .expect("request");
    let _ = resp.into_body().collect().await;
    let socket = dir.path().join("control.sock");
    let status = ctl(&socket, "status").await.expect("status");
    assert_eq!(status["ok"], true);
    let log = proxy.stop().expect("clean stop");
    stop.cancel();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log written to a pipe:\n{log:?}"
    );
    let line = log
        .lines()
        .find(|l| l.contains(" access: "))
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    for field in [
        "remote_addr=127.0.0.1:",
        "method=GET",
        "path=\"/healthz-through-the-proxy\"",
        "status=",
        "bytes_sent=",
        "request_time=",
        "slot=\"blue\"",
        "end=\"complete\"",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[test]
fn every_family_a_scrape_has_is_in_the_metrics_reference() {
    let run = run();
    let readme = std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs/metrics.md");
    let documented: BTreeSet<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("mcpflip_") || n.starts_with("process_"))
        .collect();
    // The 0.0.4 text format's family names: `_total` on counters, as documented.
    let families: BTreeSet<&str> = run
        .last
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let missing: Vec<&&str> = families.difference(&documented).collect();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    let stale: Vec<&&str> = documented.difference(&families).collect();
    assert!(stale.is_empty(), "documented but not exposed: {stale:?}");
}

/// SIGUSR1 reopens the access-log file by its path, as nginx's does, so
/// that logrotate can move it away (`postrotate`) without `copytruncate`'s
/// lost lines: the lines before go to the moved file, the lines after to a
/// new one. A link planted at the path is refused (the same checks as at
/// start), and the lines go on to the file open before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_and_never_through_a_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let blue = support::upstream(ServerConfig::new("blue", Transport::Both), &stop).await;
    let config = dir.path().join("mcpflip.toml");
    let access = dir.path().join("access.log");
    let log = format!("[log]\naccess_log = \"{}\"\n", access.display());
    std::fs::write(&config, config_text(dir.path(), &log, blue, blue)).expect("config");
    let mut proxy = Proxy::spawn(&config).expect("proxy starts");
    let (public, _) = proxy.wait_line(serving_addrs).expect("serving line");
    let get = |path: &'static str| async move {
        let resp = support::mcp::http_client()
            .request(support::get(public, path))
            .await
            .expect("request");
        let _ = resp.into_body().collect().await;
    };
    let lines_in = |file: &Path, what: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    let usr1 = |proxy: &Proxy| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(proxy.child.id() as i32, libc::SIGUSR1) };
    };

    get("/before-rotation").await;
    support::until("the first line is written", || {
        lines_in(&access, "/before-rotation") == 1
    })
    .await;
    // logrotate's rename, then its postrotate signal.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&access, &rotated).expect("rotate");
    get("/between").await;
    support::until("lines go on to the moved file until the signal", || {
        lines_in(&rotated, "/between") == 1
    })
    .await;
    usr1(&proxy);
    proxy
        .wait_line(|l| l.contains("access log reopened").then_some(()))
        .expect("the reopen is logged");
    get("/after-rotation").await;
    support::until("the new file has the next line", || {
        lines_in(&access, "/after-rotation") == 1
    })
    .await;
    assert_eq!(lines_in(&rotated, "/before-rotation"), 1);
    assert_eq!(lines_in(&rotated, "/after-rotation"), 0);
    assert_eq!(lines_in(&access, "/before-rotation"), 0);
    assert_eq!(lines_in(&access, "/between"), 0);

    // A link planted where the log was: not followed.
    let target = dir.path().join("elsewhere");
    std::fs::rename(&access, dir.path().join("access.log.2")).expect("rotate");
    std::os::unix::fs::symlink(&target, &access).expect("plant a link");
    usr1(&proxy);
    proxy
        .wait_line(|l| l.contains("cannot reopen the access log").then_some(()))
        .expect("the refusal is logged");
    get("/after-the-link").await;
    support::until("the line goes on to the file open before", || {
        lines_in(&dir.path().join("access.log.2"), "/after-the-link") == 1
    })
    .await;
    assert!(!target.exists(), "the link was followed");
    proxy.stop().expect("clean stop");
    stop.cancel();
}

/// The packaged `/etc/logrotate.d/mcpflip`, run by real logrotate on a
/// running proxy's access log: its directives as shipped, with the test's
/// directory for `/var/log/mcpflip`, the test's user for `su` and the
/// proxy's pid for the unit's `systemctl kill --signal=USR1`. Two
/// rotations: the moved file keeps the lines before, mcpflip makes the new
/// one (`nocreate`), and the second rotation compresses the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_logrotate_file_rotates_the_access_log_with_no_line_lost() {
    support::tools::ensure("logrotate");
    let packaged = std::fs::read_to_string(repo().join("contrib/debian/logrotate"))
        .expect("contrib/debian/logrotate");
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let blue = support::upstream(ServerConfig::new("blue", Transport::Both), &stop).await;
    let config = dir.path().join("mcpflip.toml");
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs).expect("log dir");
    let access = logs.join("access.log");
    let log = format!("[log]\naccess_log = \"{}\"\n", access.display());
    std::fs::write(&config, config_text(dir.path(), &log, blue, blue)).expect("config");
    let mut proxy = Proxy::spawn(&config).expect("proxy starts");
    let (public, _) = proxy.wait_line(serving_addrs).expect("serving line");

    let signal = "systemctl kill --signal=USR1 --kill-who=main mcpflip.service";
    assert!(packaged.contains(signal), "{packaged}");
    let user = "su mcpflip mcpflip";
    assert!(packaged.contains(user), "{packaged}");
    let rules = packaged
        .replace("/var/log/mcpflip", logs.to_str().expect("utf-8"))
        .replace(user, "su root root")
        .replace(signal, &format!("kill -USR1 {}", proxy.child.id()));
    let conf = dir.path().join("logrotate.conf");
    std::fs::write(&conf, rules).expect("logrotate config");
    let state = dir.path().join("logrotate.state");
    let rotate = || {
        let out = Command::new("logrotate")
            .arg("--force")
            .arg("--state")
            .arg(&state)
            .arg(&conf)
            .output()
            .expect("logrotate runs");
        assert!(
            out.status.success(),
            "logrotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let get = |path: String| async move {
        let resp = support::mcp::http_client()
            .request(support::get(public, &path))
            .await
            .expect("request");
        let _ = resp.into_body().collect().await;
    };
    let has = |file: &Path, what: &str| {
        std::fs::read_to_string(file).is_ok_and(|t| t.lines().any(|l| l.contains(what)))
    };

    for round in 1..=2 {
        let before = format!("/before-rotation-{round}");
        get(before.clone()).await;
        support::until("the line is written", || has(&access, &before)).await;
        rotate();
        proxy
            .wait_line(|l| l.contains("access log reopened").then_some(()))
            .expect("logrotate's postrotate signal reopened the log");
        let after = format!("/after-rotation-{round}");
        get(after.clone()).await;
        support::until("the new file has the next line", || has(&access, &after)).await;
        let moved = logs.join("access.log.1");
        assert!(has(&moved, &before), "round {round}: the moved file");
        assert!(!has(&moved, &after) && !has(&access, &before));
    }
    assert!(
        logs.join("access.log.2.gz").is_file(),
        "the first rotation compressed by the second (delaycompress)"
    );
    proxy.stop().expect("clean stop");
    stop.cancel();
}

/// The process families every Prometheus client exports, as the proxy
/// process reads them of itself: started under `ulimit -n 1000`, its
/// `process_max_fds` is 1000; 40 client connections held open are 40 more
/// `process_open_fds` (each one socket; nothing else opens meanwhile);
/// it started just now and holds some memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_families_are_the_proxys_own() {
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let blue = support::upstream(ServerConfig::new("blue", Transport::Both), &stop).await;
    let (public, admin) = (support::closed_port(), support::closed_port());
    let cfg = support::TestConfig::blue_green(dir.path(), blue, blue)
        .listen_port(public)
        .set_str("admin", "addr", format!("127.0.0.1:{admin}"));
    let config = cfg.write();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 1000 && exec \"$0\" run --config \"$1\"")
        .arg(BIN)
        .arg(&config);
    let mut proc = support::proc::ProxyProcess::spawn_command(cmd, &cfg.socket());
    proc.ready().await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let before = support::metrics(admin).await;
    assert_eq!(value(&before, "process_max_fds"), 1000.0, "{before}");
    let started = value(&before, "process_start_time_seconds");
    assert!(
        started > now - 60.0 && started <= now + 1.0,
        "{started} vs {now}"
    );
    assert!(
        value(&before, "process_resident_memory_bytes") > 1e6,
        "{before}"
    );
    assert!(
        value(&before, "process_virtual_memory_bytes") > 1e6,
        "{before}"
    );
    // Whole clock ticks: a process this young may not have used one yet.
    assert!(
        value(&before, "process_cpu_seconds_total") >= 0.0,
        "{before}"
    );

    // Each connection is one more descriptor in the proxy, once accepted.
    let open = value(&before, "process_open_fds");
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", public))
                .await
                .expect("connect"),
        );
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut now_open;
    loop {
        let after = support::metrics(admin).await;
        now_open = value(&after, "process_open_fds");
        if now_open >= open + 40.0 || tokio::time::Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        now_open >= open + 40.0 && now_open < open + 60.0,
        "{open} open before, {now_open} with 40 connections held"
    );
    drop(held);
    drop(proc);
    stop.cancel();
}

/// The access log's `user_agent` (nginx's `$http_user_agent`): the
/// client's `User-Agent` as it sent it, quoted and escaped, its first 128
/// bytes; absent when the client sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_the_clients_user_agent() {
    use tokio::io::AsyncWriteExt;
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let blue = support::upstream(ServerConfig::new("blue", Transport::Both), &stop).await;
    let public = support::closed_port();
    let access = dir.path().join("access.log");
    let cfg = support::TestConfig::blue_green(dir.path(), blue, blue)
        .listen_port(public)
        .set_str("log", "format", "json")
        .set_str("log", "access_log", access.display().to_string());
    let mut proc = support::proc::ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proc.ready().await;
    let long = format!("agent/{}", "x".repeat(300));
    for ua in [
        Some("python-httpx/0.28.1 \"quoted\"".to_owned()),
        Some(long.clone()),
        None,
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", public))
            .await
            .expect("connect");
        let ua = ua
            .map(|u| format!("User-Agent: {u}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{ua}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        support::read_until_closed(&mut s).await.expect("answered");
    }
    let log = support::access_lines(&access, 3).await;
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // Written as each request ends: in any order.
    let mut agents: Vec<Option<&str>> = lines.iter().map(|l| l["user_agent"].as_str()).collect();
    agents.sort();
    assert_eq!(
        agents,
        [
            None,
            Some(&long[..128]),
            Some("python-httpx/0.28.1 \"quoted\"")
        ],
        "{log}"
    );
    drop(proc);
    stop.cancel();
}
