//! Real official-SDK peers behind the real binary. The core issue's "done when":
//! two official Python SDK
//! (1.x) servers as blue and green behind the real `mcpflip run` binary, a Python
//! SDK legacy SSE client holding a session on blue through
//! `mcpflip ctl flip green --no-probe --drain`, new sessions on green, and
//! `mcpflip ctl drain blue --wait` returning only after that session closes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;

use serde_json::Value;
use support::proc::BIN;
use support::TestConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An official SDK runtime the peers run on.
#[derive(Clone, Copy, Debug)]
enum Sdk {
    Py1,
    Py2,
    Ts,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::Py1 => "py1",
            Sdk::Py2 => "py2",
            Sdk::Ts => "node",
        }
    }

    /// Installs the peer (idempotent); fails with the command to run by hand.
    /// Tests run in parallel threads: one install at a time.
    fn install(self) {
        static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
        let status = std::process::Command::new("bash")
            .arg(repo().join("tests/peers/install.sh"))
            .arg(self.name())
            .status()
            .expect("bash runs");
        assert!(
            status.success(),
            "could not install the {} MCP SDK peer; run `bash tests/peers/install.sh {}` and read its error",
            self.name(),
            self.name()
        );
    }

    /// A command running `script` (server or client) on this SDK.
    fn command(self, script: &str) -> Command {
        self.install();
        match self {
            Sdk::Py1 | Sdk::Py2 => {
                let mut c =
                    Command::new(repo().join(format!("target/peers/{}/bin/python", self.name())));
                c.arg(repo().join(format!("tests/peers/{script}.py")));
                c
            }
            Sdk::Ts => {
                let mut c = Command::new("node");
                c.arg(repo().join(format!("tests/peers/{script}.mjs")));
                c.env("PEERS_DIR", repo().join("target/peers"));
                c
            }
        }
    }
}

struct Proc {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
    /// Its stderr lines so far (also echoed to the test's stderr).
    err: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = Arc::clone(&err);
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("{l}");
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
        Proc { child, out, err }
    }

    /// How many of its stderr lines start with `prefix`.
    fn stderr_count(&self, prefix: &str) -> usize {
        self.err
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// The next stdout line as JSON, or `None` once the process has closed
    /// its stdout (it exited).
    async fn try_json(&mut self) -> Option<Value> {
        let l = self.out.next_line().await.expect("read")?;
        Some(serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.out.next_line())
            .await
            .expect("a line within 60 s")
            .expect("read")
            .expect("process still running")
    }

    async fn json(&mut self) -> Value {
        let l = self.line().await;
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"))
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
        stdin.flush().await.expect("flush");
    }

    async fn call(&mut self, tool: &str) -> Value {
        self.send(&format!("call {tool}")).await;
        self.json().await
    }
}

async fn server(sdk: Sdk, slot: &str, transport: &str) -> (Proc, u16) {
    server_with(sdk, slot, transport, &[]).await
}

async fn server_with(sdk: Sdk, slot: &str, transport: &str, flags: &[&str]) -> (Proc, u16) {
    let mut p = Proc::spawn(
        sdk.command("server")
            .args(["--port", "0", "--slot", slot, "--transport", transport])
            .args(flags),
    );
    let ready = p.line().await;
    let port = ready
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected server line {ready:?}"));
    (p, port)
}

async fn client(sdk: Sdk, base: &str, transport: &str) -> Proc {
    client_env(sdk, base, transport, &[]).await
}

async fn client_env(sdk: Sdk, base: &str, transport: &str, env: &[(&str, &Path)]) -> Proc {
    let path = if transport == "sse" { "sse" } else { "mcp" };
    let mut c = Proc::spawn(
        sdk.command("client")
            .args(["--url", &format!("{base}/{path}"), "--transport", transport])
            .envs(env.iter().map(|(k, v)| (*k, *v))),
    );
    let ready = c.json().await;
    assert_eq!(ready["event"], "ready", "{ready}");
    c
}

async fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .await
        .expect("ctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_legacy_session_survives_a_flip_and_drain_waits_for_it() {
    scenario(Sdk::Py1, Sdk::Py1, Era::LegacySse).await;
}

/// The protocol eras of the matrix, each as the SDK servers run it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Era {
    /// HTTP+SSE (2024-11-05).
    LegacySse,
    /// Streamable HTTP with sessions, event store and resumption (2025-11-25).
    Stateful,
    /// Streamable HTTP, server run stateless (no session id).
    Stateless,
    /// A Python 2.x server, which speaks 2026-07-28 to clients that do (Python 2.x)
    /// and 2025-11-25 with sessions to the others.
    Y2026,
}

impl Era {
    fn transport(self) -> &'static str {
        if self == Era::LegacySse {
            "sse"
        } else {
            "streamable-http"
        }
    }

    fn server_flags(self) -> &'static [&'static str] {
        if self == Era::Stateless {
            &["--stateless"]
        } else {
            &[]
        }
    }

    /// Does a client of `sdk` hold a session (pinned to its slot) in this era?
    fn has_session(self, client: Sdk) -> bool {
        match self {
            Era::LegacySse | Era::Stateful => true,
            Era::Stateless => false,
            Era::Y2026 => !matches!(client, Sdk::Py2),
        }
    }
}

/// Clients of every SDK against SDK servers, era by era. Each through a live
/// `flip green --drain` with a call running: zero failed calls, sessions stay
/// on blue, new ones land on green, resumption with `Last-Event-ID` reaches
/// blue, and the drain ends only after blue's last session (or call) is done.
async fn matrix(servers: &[Sdk], era: Era) {
    for &server in servers {
        for client in [Sdk::Py1, Sdk::Py2, Sdk::Ts] {
            eprintln!("matrix: server {server:?}, client {client:?}, {era:?}");
            scenario(server, client, era).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_legacy_sse() {
    matrix(&[Sdk::Py1, Sdk::Ts], Era::LegacySse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_streamable_http_with_sessions_and_resumption() {
    matrix(&[Sdk::Py1, Sdk::Ts], Era::Stateful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_streamable_http_stateless() {
    matrix(&[Sdk::Py1, Sdk::Ts], Era::Stateless).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_2026_07_28_server() {
    matrix(&[Sdk::Py2], Era::Y2026).await;
}

/// Starts the real `mcpflip run` in front of `blue` and `green`; returns once its
/// control socket answers.
async fn start_proxy(
    blue: u16,
    green: u16,
    quiet: &str,
) -> (tempfile::TempDir, PathBuf, String, Child) {
    start_proxy_with(blue, green, |c| c.set_str("drain", "quiet", quiet)).await
}

/// `start_proxy` with the test config changed by `edit` (`[drain]`, `[probe]`,
/// `[watch]`, `[listen] tls`...).
async fn start_proxy_with(
    blue: u16,
    green: u16,
    edit: impl FnOnce(TestConfig) -> TestConfig,
) -> (tempfile::TempDir, PathBuf, String, Child) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::closed_port();
    // One worker, as the benchmarks run it: the SDK matrix runs the
    // current-thread runtime (the other process tests run the multi-thread one).
    let cfg = edit(
        TestConfig::blue_green(dir.path(), blue, green)
            .listen_port(port)
            .set("proxy", "workers", "1"),
    );
    let socket = cfg.socket();
    let proxy = Command::new(BIN)
        .args(["run", "--config"])
        .arg(cfg.write())
        .kill_on_drop(true)
        .spawn()
        .expect("mcpflip run");
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ctl(&socket, &["status"]).await.0 {
        assert!(
            tokio::time::Instant::now() < end,
            "mcpflip run did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // With `[listen] tls`, the proxy serves https://localhost.
    let base = if cfg.text().contains("\ntls = ") {
        format!("https://localhost:{port}")
    } else {
        format!("http://127.0.0.1:{port}")
    };
    (dir, socket, base, proxy)
}

/// Starts `mcpflip ctl drain blue --wait`; it returns once blue is drained.
fn drain_blue(socket: &Path) -> Child {
    Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(["drain", "blue", "--wait"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ctl drain")
}

/// Blue's open streams plus requests in flight, from `status`.
async fn blue_load(socket: &Path) -> u64 {
    let (_, out) = ctl(socket, &["--json", "status"]).await;
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status {out:?}: {e}"));
    v["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "blue"))
        .map(|s| s["live_streams"].as_u64().unwrap_or(0) + s["inflight"].as_u64().unwrap_or(0))
        .unwrap_or_else(|| panic!("no blue in {v}"))
}

fn assert_ok(r: &Value, text: &str, what: &str) {
    assert_eq!(
        (r["ok"].clone(), r["text"].clone()),
        (Value::Bool(true), Value::from(text)),
        "{what}: {r}"
    );
}

async fn scenario(server_sdk: Sdk, client_sdk: Sdk, era: Era) {
    let transport = era.transport();
    let (blue_srv, blue) = server_with(server_sdk, "blue", transport, era.server_flags()).await;
    let (_green, green) = server_with(server_sdk, "green", transport, era.server_flags()).await;
    // A Streamable HTTP session without an open stream is seen only through its
    // requests, so the quiet period must outlast the gap between its calls.
    let quiet = if era == Era::LegacySse { "100ms" } else { "2s" };
    let (_dir, socket, base, mut proxy) = start_proxy(blue, green, quiet).await;
    let sticky = era.has_session(client_sdk);
    let after_flip = if sticky { "blue" } else { "green" };

    let mut held = client(client_sdk, &base, transport).await;
    assert_ok(&held.call("whoami").await, "blue", "first call");

    // A call is running on blue while the flip happens, and the drain waits for it.
    let before = blue_load(&socket).await;
    held.send(r#"call slow {"seconds": 2}"#).await;
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    // Without a session the call goes by weight: make sure it reached blue before
    // the flip. (A session's call is pinned to blue whenever it is sent.)
    while !sticky && blue_load(&socket).await <= before {
        assert!(
            tokio::time::Instant::now() < end,
            "the slow call never reached blue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (ok, out) = ctl(&socket, &["flip", "green", "--no-probe", "--drain"]).await;
    assert!(ok, "{out}");
    let mut drain = drain_blue(&socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        drain.try_wait().expect("try_wait").is_none(),
        "drain returned while a call was running on blue"
    );
    assert_ok(
        &held.json().await,
        "slept",
        "the call running through the flip",
    );

    let mut fresh = client(client_sdk, &base, transport).await;
    assert_ok(
        &fresh.call("whoami").await,
        "green",
        "a new client after the flip",
    );
    fresh.send("quit").await;
    assert_eq!(fresh.json().await["event"], "closed");

    assert_ok(
        &held.call("whoami").await,
        after_flip,
        "the held client after the flip",
    );
    if era == Era::Stateful || (era == Era::Y2026 && sticky) {
        // The server closes the call's SSE stream; the client comes back with
        // GET + Last-Event-ID, which must reach blue, where the rest is stored.
        let before = blue_srv.stderr_count("RESUME ");
        assert_ok(
            &held.call("interrupted").await,
            "blue",
            "a call resumed with Last-Event-ID",
        );
        assert!(
            blue_srv.stderr_count("RESUME ") > before,
            "blue saw no GET with Last-Event-ID"
        );
    }

    if sticky {
        // While the session is open, the drain must not return, and the session keeps working.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                drain.try_wait().expect("try_wait").is_none(),
                "drain returned while the session was open"
            );
            assert_ok(
                &held.call("whoami").await,
                "blue",
                "the held session during the drain",
            );
        }
    } else {
        // No session: the client's requests already go to green. Whatever it
        // still holds on blue (the TypeScript client keeps a GET stream open
        // there) ends when it quits.
        assert_ok(
            &held.call("whoami").await,
            "green",
            "a session-less client during the drain",
        );
    }
    held.send("quit").await;
    assert_eq!(held.json().await["event"], "closed");
    let out = tokio::time::timeout(Duration::from_secs(30), drain.wait_with_output())
        .await
        .expect("drain returns once blue's last session is done")
        .expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("blue drained after"), "{text}");
    let (_, status) = ctl(&socket, &["--json", "status"]).await;
    assert!(status.contains("\"state\":\"drained\""), "{status}");
    let _ = proxy.start_kill();
}

/// Issue 4's "done when" with real peers: `mcpflip ctl deploy green` between two
/// Python SDK servers while SDK clients (Python 1.x, 2.x, TypeScript) hold
/// sessions on blue. The probe passes, new sessions land on green, the deploy
/// shows its progress and returns only once blue's last session has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_between_sdk_servers_waits_for_the_last_sdk_session() {
    let (_blue, blue) = server(Sdk::Py1, "blue", "streamable-http").await;
    let (_green, green) = server(Sdk::Py1, "green", "streamable-http").await;
    let (_dir, socket, base, mut proxy) = start_proxy_with(blue, green, |c| {
        c.set_str("drain", "quiet", "2s")
            .set(
                "probe",
                "canary",
                r#"{ tool = "get_document", arguments = { id = "health" }, expect = "ok" }"#,
            )
            .set_str("watch", "window", "1s")
            .set_str("watch", "interval", "200ms")
    })
    .await;
    let mut held = Vec::new();
    for sdk in [Sdk::Py1, Sdk::Py2, Sdk::Ts] {
        let mut c = client(sdk, &base, "streamable-http").await;
        let r = c.call("whoami").await;
        assert_eq!(r["text"], "blue", "{sdk:?}: {r}");
        held.push(c);
    }
    let mut deploy = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(&socket)
        .args(["deploy", "green"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ctl deploy");
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ctl(&socket, &["--json", "status"])
        .await
        .1
        .contains("\"active\":\"green\"")
    {
        assert!(
            deploy.try_wait().expect("try_wait").is_none(),
            "deploy ended before the flip"
        );
        assert!(
            tokio::time::Instant::now() < end,
            "the deploy never flipped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut fresh = client(Sdk::Ts, &base, "streamable-http").await;
    assert_eq!(fresh.call("whoami").await["text"], "green");
    fresh.send("quit").await;
    // Sessions on blue keep working, and the deploy waits for them.
    for (i, c) in held.iter_mut().enumerate() {
        let r = c.call("whoami").await;
        assert_eq!(
            (r["ok"].clone(), r["text"].clone()),
            (Value::Bool(true), "blue".into()),
            "client {i}: {r}"
        );
        assert!(
            deploy.try_wait().expect("try_wait").is_none(),
            "deploy returned while blue had sessions"
        );
    }
    for mut c in held {
        c.send("quit").await;
        assert_eq!(c.json().await["event"], "closed");
    }
    let out = tokio::time::timeout(Duration::from_secs(60), deploy.wait_with_output())
        .await
        .expect("deploy returns once blue's sessions ended")
        .expect("output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("deployed blue -> green"), "{stdout}");
    assert!(stdout.contains("watch  passed"), "{stdout}");
    for phase in ["probe    green", "flip     blue -> green", "drain    blue"] {
        assert!(stderr.contains(phase), "progress lacks {phase:?}: {stderr}");
    }
    let (_, status) = ctl(&socket, &["--json", "status"]).await;
    assert!(
        status.contains("\"name\":\"blue\",\"state\":\"drained\""),
        "{status}"
    );
    let _ = proxy.start_kill();
}

/// Runs `tests/peers/conformance.sh ARGS`; panics with its output on failure.
async fn conformance(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join("tests/peers/conformance.sh"))
        .args(args)
        .output()
        .await
        .expect("bash runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`tests/peers/conformance.sh {}` failed (install: `bash tests/peers/conformance.sh install`):\n{text}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The MCP conformance suite (server mode) against a TypeScript SDK server,
/// directly and through mcpflip (default settings): identical result sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_results_are_identical_direct_and_through_mcpflip() {
    // conformance.sh serializes installs itself (flock).
    conformance(&["install"]).await;
    let mut srv = Proc::spawn(
        Command::new("bash")
            .arg(repo().join("tests/peers/conformance.sh"))
            .args(["server", "--port", "0"]),
    );
    let ready = srv.line().await;
    let port: u16 = ready
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected server line {ready:?}"));
    let (dir, _socket, base, mut proxy) = start_proxy(port, port, "100ms").await;
    let direct = dir.path().join("direct.jsonl");
    let proxied = dir.path().join("proxied.jsonl");
    let url = format!("http://127.0.0.1:{port}/mcp");
    conformance(&["run", "--url", &url, "--out", &direct.to_string_lossy()]).await;
    let url = format!("{base}/mcp");
    conformance(&["run", "--url", &url, "--out", &proxied.to_string_lossy()]).await;
    let direct = std::fs::read_to_string(&direct).expect("direct results");
    let proxied = std::fs::read_to_string(&proxied).expect("proxied results");
    let checks = direct.lines().count();
    assert!(
        checks >= 40,
        "the suite ran only {checks} checks:\n{direct}"
    );
    assert!(direct.contains("\"status\":\"SUCCESS\""), "{direct}");
    let differ: Vec<String> = direct
        .lines()
        .zip(proxied.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("direct:  {a}\nproxied: {b}"))
        .collect();
    assert!(
        differ.is_empty() && direct.lines().count() == proxied.lines().count(),
        "conformance results differ through mcpflip:\n{}",
        differ.join("\n")
    );
    let _ = proxy.start_kill();
}

/// 2026-07-28 (Python SDK 2.x both sides): a `subscriptions/listen` stream is a
/// live stream of the slot it opened on, the drain waits for it, and requests,
/// classified from their headers alone, count under era="stateless".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_listen_counts_as_a_live_stream_and_holds_the_drain() {
    let (_blue, blue) = server(Sdk::Py2, "blue", "streamable-http").await;
    let (_green, green) = server(Sdk::Py2, "green", "streamable-http").await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], support::closed_port()));
    let (_dir, socket, base, mut proxy) = start_proxy_with(blue, green, |c| {
        c.set_str("admin", "addr", admin.to_string())
            .set_str("drain", "quiet", "100ms")
    })
    .await;
    let mut c = client(Sdk::Py2, &base, "streamable-http").await;
    c.send("listen").await;
    assert_eq!(c.json().await["event"], "listening");
    assert_eq!(
        blue_load(&socket).await,
        1,
        "the listen stream is live on blue"
    );

    let (ok, out) = ctl(&socket, &["flip", "green", "--no-probe", "--drain"]).await;
    assert!(ok, "{out}");
    assert_ok(
        &c.call("whoami").await,
        "green",
        "a stateless call after the flip",
    );
    let mut drain = drain_blue(&socket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        drain.try_wait().expect("try_wait").is_none(),
        "drain returned while a listen stream was open on blue"
    );
    assert_eq!(blue_load(&socket).await, 1);
    c.send("unlisten").await;
    assert_eq!(c.json().await["event"], "unlistened");
    let out = tokio::time::timeout(Duration::from_secs(30), drain.wait_with_output())
        .await
        .expect("drain returns once the listen stream closed")
        .expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let metrics = admin_metrics(admin).await;
    for slot in ["blue", "green"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "mcpflip_mcp_requests_total{{slot=\"{slot}\",era=\"stateless\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no stateless count for {slot}:\n{metrics}"));
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(n >= 1, "{line}");
    }
    c.send("quit").await;
    assert_eq!(c.json().await["event"], "closed");
    let _ = proxy.start_kill();
}

/// GET /metrics over a plain TCP connection.
async fn admin_metrics(admin: std::net::SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

/// HTTPS in front of SDK servers with the development certificate: the Python
/// (httpx, `SSL_CERT_FILE`) and TypeScript (`NODE_EXTRA_CA_CERTS`) SDK clients
/// trust the dev CA and hold sessions through a flip over `https://localhost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_over_https_with_the_dev_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dev = mcpflip::tls::write_dev_cert(certs.path(), &[], false).expect("dev cert");
    let (_blue, blue) = server(Sdk::Py1, "blue", "streamable-http").await;
    let (_green, green) = server(Sdk::Py1, "green", "streamable-http").await;
    let (_dir, socket, base, mut proxy) = start_proxy_with(blue, green, |c| {
        c.tls(&dev.cert, &dev.key)
            .set_str("drain", "quiet", "100ms")
    })
    .await;
    assert!(base.starts_with("https://"), "{base}");
    let mut held = Vec::new();
    for (sdk, var) in [
        (Sdk::Py1, "SSL_CERT_FILE"),
        (Sdk::Py2, "SSL_CERT_FILE"),
        (Sdk::Ts, "NODE_EXTRA_CA_CERTS"),
    ] {
        let mut c = client_env(sdk, &base, "streamable-http", &[(var, &dev.ca)]).await;
        assert_ok(
            &c.call("whoami").await,
            "blue",
            &format!("{sdk:?} over https"),
        );
        held.push(c);
    }
    let (ok, out) = ctl(&socket, &["flip", "green", "--no-probe", "--drain"]).await;
    assert!(ok, "{out}");
    for c in held.iter_mut() {
        assert_ok(
            &c.call("whoami").await,
            "blue",
            "a session over https after the flip",
        );
        c.send("quit").await;
        assert_eq!(c.json().await["event"], "closed");
    }
    let mut fresh = client_env(
        Sdk::Ts,
        &base,
        "streamable-http",
        &[("NODE_EXTRA_CA_CERTS", &dev.ca)],
    )
    .await;
    assert_ok(&fresh.call("whoami").await, "green", "a new https client");
    fresh.send("quit").await;
    let _ = proxy.start_kill();
}

/// The probe against real Python SDK 2.x servers: one that speaks every era is
/// probed with `initialize`; one that speaks 2026-07-28 only refuses it and is
/// probed with `server/discover` and `Mcp-Method` requests, canary included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_speaks_2026_07_28_to_a_server_that_speaks_nothing_else() {
    let (_blue, blue) = server(Sdk::Py2, "blue", "streamable-http").await;
    let (_green, green) =
        server_with(Sdk::Py2, "green", "streamable-http", &["--modern-only"]).await;
    let (_dir, socket, _base, mut proxy) = start_proxy_with(blue, green, |c| {
        c.set(
            "probe",
            "expect_tools",
            r#"["get_document", "interrupted", "list_documents", "search_documents", "slow", "whoami"]"#,
        )
        .set("probe", "canary", r#"{ tool = "whoami", expect = "green" }"#)
    })
    .await;
    let (ok, out) = ctl(&socket, &["--json", "probe", "green"]).await;
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out}: {e}"));
    assert!(ok, "{v}");
    assert_eq!(v["protocol"], "2026-07-28", "{v}");
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(steps, ["discover", "tools/list", "canary"], "{v}");
    // The same probe of the dual-era server stays on the initialize handshake.
    let (ok, out) = ctl(&socket, &["--json", "probe", "blue"]).await;
    assert!(!ok, "the canary expects green: {out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out}: {e}"));
    assert_eq!(v["probe"]["steps"][0]["step"], "initialize", "{v}");
    assert_eq!(v["probe"]["protocol"], "2025-11-25", "{v}");
    let _ = proxy.start_kill();
}

/// Python 1.x SDK servers as blue and green behind a proxy with `[drain]
/// migrate = mode`: (blue's server, green's, the proxy's directory, its
/// control socket, its base URL, the proxy).
async fn migration_rig(
    mode: &str,
    transport: &str,
    server_sdk: Sdk,
) -> (Proc, Proc, tempfile::TempDir, PathBuf, String, Child) {
    let (blue_srv, blue) = server(server_sdk, "blue", transport).await;
    let (green_srv, green) = server(server_sdk, "green", transport).await;
    let legacy = transport == "sse";
    let (dir, socket, base, proxy) = start_proxy_with(blue, green, |c| {
        let c = c
            .set_str("drain", "quiet", "100ms")
            .set_str("drain", "migrate", mode);
        if legacy {
            c.set_str("probe", "transport", "sse")
                .set_str("probe", "path", "/sse")
        } else {
            c
        }
    })
    .await;
    (blue_srv, green_srv, dir, socket, base, proxy)
}

/// Issue 16, live session migration. An SDK client holding a Streamable HTTP
/// session calls `whoami` every 100 ms (`ticker`) while a second one has a
/// long `slow` call running on blue, through `deploy green` with a 2 s
/// deadline, then blue's retirement and the end of its process.
///
/// With `[drain] migrate = "replay"`: no ticker call fails, the slow call cut
/// at the deadline gets a JSON-RPC error (not a hang), and the ticker's calls
/// after blue is gone are answered by green. With migration off (the
/// baseline) the same run fails calls once blue is gone.
///
/// `transport` "sse": the same with legacy HTTP+SSE sessions (2024-11-05),
/// whose GET stream the proxy keeps open and moves (`proxy::splice`).
async fn migration_across_a_deploy(client_sdk: Sdk, replay: bool, transport: &str) {
    migration_across_a_deploy_of(Sdk::Py1, client_sdk, replay, transport).await;
}

/// [`migration_across_a_deploy`] with servers of `server_sdk`.
async fn migration_across_a_deploy_of(
    server_sdk: Sdk,
    client_sdk: Sdk,
    replay: bool,
    transport: &str,
) {
    let mode = if replay { "replay" } else { "off" };
    let (mut blue_srv, _green, _dir, socket, base, mut proxy) =
        migration_rig(mode, transport, server_sdk).await;
    let mut ticker = client(client_sdk, &base, transport).await;
    assert_ok(
        &ticker.call("whoami").await,
        "blue",
        "the ticker's first call",
    );
    let mut slow = client(client_sdk, &base, transport).await;
    assert_ok(
        &slow.call("whoami").await,
        "blue",
        "the slow client's first call",
    );
    let before = blue_load(&socket).await;
    slow.send(r#"call slow {"seconds": 60}"#).await;
    if transport == "sse" {
        // A legacy POST is answered 202 at once and its call runs with
        // nothing in flight at the proxy: its answer is to come on the
        // stream. Half a second for the POST to pass.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while transport != "sse" && blue_load(&socket).await <= before {
        assert!(
            tokio::time::Instant::now() < end,
            "the slow call never reached blue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The ticker: a call every 100 ms until told to stop; a call with no
    // answer within 10 s is a hang and ends it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticking = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut results: Vec<Value> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ticker.send("call whoami").await;
                match tokio::time::timeout(Duration::from_secs(10), ticker.try_json()).await {
                    Ok(Some(r)) => results.push(r),
                    // The SDK gave up on its session and the client exited
                    // (its last line, `"event": "error"`, is in `results`):
                    // a failure, recorded as one, not a panic of the ticker.
                    Ok(None) => {
                        results
                            .push(serde_json::json!({"ok": false, "error": "the client exited"}));
                        break;
                    }
                    Err(_) => {
                        results.push(serde_json::json!({"ok": false, "error": "hang: no answer within 10 s"}));
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (ticker, results)
        })
    };

    let (ok, out) = ctl(
        &socket,
        &["deploy", "green", "--deadline", "2s", "--watch", "0s"],
    )
    .await;
    assert!(ok, "deploy: {out}");
    // The slow call was cut at the deadline: with replay it got an error for
    // its id; without, it must not be answered "slept" by a slot that was cut.
    let cut = tokio::time::timeout(Duration::from_secs(15), slow.json()).await;
    if replay {
        let cut = cut.expect("the call cut at the deadline got an answer, not a hang");
        assert_eq!(cut["ok"], false, "{cut}");
        assert!(
            cut["error"]
                .as_str()
                .is_some_and(|e| e.contains("interrupted by a deploy")),
            "the cut call's error names the deploy: {cut}"
        );
    }
    let (ok, out) = ctl(&socket, &["retire", "blue"]).await;
    assert!(ok, "retire: {out}");
    blue_srv.child.start_kill().expect("stop blue");
    let _ = blue_srv.child.wait().await;
    // A second with blue gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ticker, results) = ticking.await.expect("ticker");
    let failed: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    eprintln!(
        "{client_sdk:?} {transport} migrate={mode}: {} calls, {} failed: {failed:?}",
        results.len(),
        failed.len()
    );
    if replay {
        assert!(
            failed.is_empty(),
            "{client_sdk:?}: failed calls with replay: {failed:?}"
        );
        assert_eq!(
            results.last().map(|r| r["text"].clone()),
            Some(Value::from("green")),
            "{client_sdk:?}: the ticker's last call"
        );
        assert_ok(
            &ticker.call("whoami").await,
            "green",
            "a call after the deploy",
        );
        let (_, out) = ctl(&socket, &["--json", "status"]).await;
        let v: Value = serde_json::from_str(out.trim()).expect("status");
        // The memory a captured session costs, for BENCHMARKS.md.
        eprintln!("{client_sdk:?} migration status: {}", v["migration"]);
        assert!(
            v["migration"]["migrated"].as_u64() == Some(2),
            "both sessions moved, once each: {}",
            v["migration"]
        );
        // The slow call alone: a ticker call in flight at the cut gets its
        // answer within the call's grace, and (legacy) the calls answered
        // before the cut are not answered again with an error.
        assert_eq!(
            v["migration"]["interrupted_calls"], 1,
            "only the slow call was interrupted: {}",
            v["migration"]
        );
    } else {
        assert!(
            !failed.is_empty(),
            "{client_sdk:?}: without migration, the calls after blue is gone fail (the baseline)"
        );
    }
    proxy.start_kill().expect("kill proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_python1_client_across_a_deploy() {
    migration_across_a_deploy(Sdk::Py1, true, "streamable-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_python2_client_across_a_deploy() {
    migration_across_a_deploy(Sdk::Py2, true, "streamable-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_typescript_client_across_a_deploy() {
    migration_across_a_deploy(Sdk::Ts, true, "streamable-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_off_python1_client_fails_across_a_deploy_baseline() {
    migration_across_a_deploy(Sdk::Py1, false, "streamable-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_legacy_sse_python1_client_across_a_deploy() {
    migration_across_a_deploy(Sdk::Py1, true, "sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_legacy_sse_python2_client_across_a_deploy() {
    migration_across_a_deploy(Sdk::Py2, true, "sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_legacy_sse_typescript_client_across_a_deploy() {
    migration_across_a_deploy(Sdk::Ts, true, "sse").await;
}

/// The TypeScript SDK's legacy server names its session `sessionId` (the
/// Python SDK's, `session_id`) and checks `initialize` its own way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_legacy_sse_typescript_server_python1_client_across_a_deploy() {
    migration_across_a_deploy_of(Sdk::Ts, Sdk::Py1, true, "sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_off_legacy_sse_python1_client_fails_across_a_deploy_baseline() {
    migration_across_a_deploy(Sdk::Py1, false, "sse").await;
}

/// Issue 16: `kill -9` of blue while SDK sessions are open on it (blue
/// draining after a flip, so green serves): with replay, each session's next
/// call is answered by green; with migration off it fails.
async fn migration_after_kill(replay: bool, transport: &str) {
    let mode = if replay { "replay" } else { "off" };
    let (blue_srv, _green, _dir, socket, base, mut proxy) =
        migration_rig(mode, transport, Sdk::Py1).await;
    let mut clients = clients_on_blue(&base, transport).await;
    let (ok, out) = ctl(&socket, &["flip", "green", "--no-probe", "--drain"]).await;
    assert!(ok, "{out}");
    for (sdk, c) in &mut clients {
        let r = c.call("whoami").await;
        assert_eq!(
            r["text"], "blue",
            "{sdk:?}: sessions stay on draining blue: {r}"
        );
    }
    let mut blue_srv = blue_srv;
    kill_9(&mut blue_srv).await;
    next_whoami(
        &mut clients,
        replay.then_some("green"),
        "after kill -9 of blue",
    )
    .await;
    proxy.start_kill().expect("kill proxy");
}

/// A client of each SDK (Python 1.x, 2.x, TypeScript) in a session of its
/// own, whose first call blue answered.
async fn clients_on_blue(base: &str, transport: &str) -> Vec<(Sdk, Proc)> {
    let mut clients = Vec::new();
    for sdk in [Sdk::Py1, Sdk::Py2, Sdk::Ts] {
        let mut c = client(sdk, base, transport).await;
        assert_ok(&c.call("whoami").await, "blue", "first call");
        clients.push((sdk, c));
    }
    clients
}

/// SIGKILL: no goodbye on any connection.
async fn kill_9(server: &mut Proc) {
    server.child.start_kill().expect("kill -9");
    let _ = server.child.wait().await;
}

/// Each client's next `whoami`: answered by `slot`, or (`None`) failed (a
/// failed call, or, Python 1.x, a client that gave up altogether).
async fn next_whoami(clients: &mut [(Sdk, Proc)], slot: Option<&str>, when: &str) {
    for (sdk, c) in clients {
        let r = c.call("whoami").await;
        match slot {
            Some(slot) => assert_ok(&r, slot, &format!("{sdk:?}: the next call {when}")),
            None => assert_ne!(r["ok"], true, "{sdk:?}: the next call {when} fails: {r}"),
        }
    }
}

/// `[drain] migrate_on_404`: blue's Python SDK server is killed (`kill -9`)
/// and started again at its port, as systemd or a container runtime
/// restarts a crashed server, with nothing said to mcpflip; blue stays the
/// active slot. The new process answers every session the old one had 404.
/// With the key each SDK client's next call is answered by the new blue
/// process, in the session it holds; without it (the default) the call
/// fails, as it does straight against the server.
async fn a_crashed_and_restarted_server(migrate_on_404: bool) {
    let (mut blue_srv, blue) = server(Sdk::Py1, "blue", "streamable-http").await;
    let (_green_srv, green) = server(Sdk::Py1, "green", "streamable-http").await;
    let (_dir, _socket, base, mut proxy) = start_proxy_with(blue, green, |c| {
        c.set_str("drain", "migrate", "replay").set(
            "drain",
            "migrate_on_404",
            migrate_on_404.to_string(),
        )
    })
    .await;
    let mut clients = clients_on_blue(&base, "streamable-http").await;
    kill_9(&mut blue_srv).await;
    let (_blue_again, port) = server_with(
        Sdk::Py1,
        "blue",
        "streamable-http",
        &["--port", &blue.to_string()],
    )
    .await;
    assert_eq!(port, blue, "blue restarted at its address");
    // Without the key the restarted server's 404 passes.
    next_whoami(
        &mut clients,
        migrate_on_404.then_some("blue"),
        "after blue's restart",
    )
    .await;
    proxy.start_kill().expect("kill proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_on_404_sessions_go_on_after_their_server_crashed_and_restarted() {
    a_crashed_and_restarted_server(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_on_404_sessions_end_with_their_restarted_server_baseline() {
    a_crashed_and_restarted_server(false).await;
}

/// `systemctl restart mcpflip` in the middle of the SDK clients' sessions:
/// SIGTERM, then `mcpflip run` again on the same config. Each client goes on
/// in its session through the new process (the slot is in the session id),
/// and when blue is then cut (`drain blue --migrate`), each client's next
/// call is answered by green, in the session it holds: the new process took
/// the captured sessions back from the file the old one saved. The baseline
/// restarts with `--ignore-state`, which leaves that file unread, as every
/// restart did before: the sessions cannot move, and the calls fail.
async fn a_restart_of_the_proxy(keeps_sessions: bool) {
    let (_blue_srv, blue) = server(Sdk::Py1, "blue", "streamable-http").await;
    let (_green_srv, green) = server(Sdk::Py1, "green", "streamable-http").await;
    // The clients' open GET streams hold a shutdown up to the drain deadline.
    let (dir, socket, base, mut proxy) = start_proxy_with(blue, green, |c| {
        c.set_str("drain", "migrate", "replay")
            .set_str("drain", "deadline", "1s")
    })
    .await;
    let mut clients = clients_on_blue(&base, "streamable-http").await;
    let pid = proxy.id().expect("pid") as i32;
    // SAFETY: kill(2) on the proxy this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let code = proxy.wait().await.expect("wait");
    assert!(code.success(), "{code}");
    let mut args = vec!["run", "--config"];
    let config = dir.path().join("mcpflip.toml");
    args.push(config.to_str().expect("utf-8"));
    if !keeps_sessions {
        args.push("--ignore-state");
    }
    let _proxy = Command::new(BIN)
        .args(&args)
        .kill_on_drop(true)
        .spawn()
        .expect("mcpflip run");
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ctl(&socket, &["status"]).await.0 {
        assert!(tokio::time::Instant::now() < end, "mcpflip did not restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    next_whoami(&mut clients, Some("blue"), "through the restarted proxy").await;
    let (ok, out) = ctl(&socket, &["flip", "green", "--no-probe"]).await;
    assert!(ok, "{out}");
    let (ok, out) = ctl(&socket, &["drain", "blue", "--migrate", "--wait"]).await;
    assert!(ok, "{out}");
    next_whoami(
        &mut clients,
        keeps_sessions.then_some("green"),
        "after blue was cut behind the restarted proxy",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_across_a_restart_of_the_proxy() {
    a_restart_of_the_proxy(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_across_a_restart_without_the_saved_sessions_fails_baseline() {
    a_restart_of_the_proxy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_after_kill_9_of_blue() {
    migration_after_kill(true, "streamable-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_off_after_kill_9_of_blue_fails_baseline() {
    migration_after_kill(false, "streamable-http").await;
}

/// Legacy HTTP+SSE sessions: `kill -9` of blue breaks their GET streams,
/// which move to green; each session's next call is answered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_replay_legacy_sse_after_kill_9_of_blue() {
    migration_after_kill(true, "sse").await;
}
