//! Real official-SDK peers behind the real binary. The core issue's "done when":
//! two official Python SDK
//! (1.x) servers as blue and green behind the real `mcpflip run` binary, a Python
//! SDK legacy SSE client holding a session on blue through
//! `mcpflip ctl flip green --no-probe --drain`, new sessions on green, and
//! `mcpflip ctl drain blue --wait` returning only after that session closes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_mcpflip");

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
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Proc { child, out }
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
    let mut p = Proc::spawn(sdk.command("server").args([
        "--port",
        "0",
        "--slot",
        slot,
        "--transport",
        transport,
    ]));
    let ready = p.line().await;
    let port = ready
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected server line {ready:?}"));
    (p, port)
}

async fn client(sdk: Sdk, base: &str, transport: &str) -> Proc {
    let path = if transport == "sse" { "sse" } else { "mcp" };
    let mut c = Proc::spawn(sdk.command("client").args([
        "--url",
        &format!("{base}/{path}"),
        "--transport",
        transport,
    ]));
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
    scenario(Sdk::Py1, Sdk::Py1, "sse").await;
}

/// Clients of every SDK, on both session transports, against Python and
/// TypeScript SDK servers: each session stays on blue through the flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_matrix_sessions_survive_a_flip_and_drain() {
    for server in [Sdk::Py1, Sdk::Ts] {
        for client in [Sdk::Py1, Sdk::Py2, Sdk::Ts] {
            for transport in ["sse", "streamable-http"] {
                eprintln!("matrix: server {server:?}, client {client:?}, {transport}");
                scenario(server, client, transport).await;
            }
        }
    }
}

/// Starts the real `mcpflip run` in front of `blue` and `green`; returns once its
/// control socket answers.
async fn start_proxy(
    blue: u16,
    green: u16,
    quiet: &str,
) -> (tempfile::TempDir, PathBuf, String, Child) {
    start_proxy_with(blue, green, &format!("[drain]\nquiet = \"{quiet}\"\n")).await
}

/// `start_proxy` with more config sections (`[drain]`, `[probe]`, `[watch]`...).
async fn start_proxy_with(
    blue: u16,
    green: u16,
    sections: &str,
) -> (tempfile::TempDir, PathBuf, String, Child) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.path().join("mcpflip.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[admin]\naddr = \"127.0.0.1:0\"\n[control]\nsocket = \"{}\"\nstate_file = \"{}\"\n{sections}\
             [[slot]]\nname = \"blue\"\nupstream = \"http://127.0.0.1:{blue}\"\nweight = 100\n[[slot]]\nname = \"green\"\nupstream = \"http://127.0.0.1:{green}\"\n",
            socket.display(),
            dir.path().join("state.json").display()
        ),
    )
    .expect("write config");
    let proxy = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
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
    let base = format!("http://127.0.0.1:{port}");
    (dir, socket, base, proxy)
}

async fn scenario(server_sdk: Sdk, client_sdk: Sdk, transport: &str) {
    let (_blue, blue) = server(server_sdk, "blue", transport).await;
    let (_green, green) = server(server_sdk, "green", transport).await;
    // A Streamable HTTP session without an open stream is seen only through its
    // requests, so the quiet period must outlast the gap between its calls.
    let quiet = if transport == "sse" { "100ms" } else { "2s" };
    let (_dir, socket, base, mut proxy) = start_proxy(blue, green, quiet).await;

    let mut held = client(client_sdk, &base, transport).await;
    let r = held.call("whoami").await;
    assert_eq!(
        (r["ok"].clone(), r["text"].clone()),
        (Value::Bool(true), "blue".into()),
        "{r}"
    );

    let (ok, out) = ctl(&socket, &["flip", "green", "--no-probe", "--drain"]).await;
    assert!(ok, "{out}");

    let mut fresh = client(client_sdk, &base, transport).await;
    let r = fresh.call("whoami").await;
    assert_eq!(r["text"], "green", "{r}");
    fresh.send("quit").await;
    assert_eq!(fresh.json().await["event"], "closed");

    let r = held.call("whoami").await;
    assert_eq!(
        (r["ok"].clone(), r["text"].clone()),
        (Value::Bool(true), "blue".into()),
        "{r}"
    );

    let mut drain = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(&socket)
        .args(["drain", "blue", "--wait"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ctl drain");
    // While the session is open, the drain must not return, and the session keeps working.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            drain.try_wait().expect("try_wait").is_none(),
            "drain returned while the session was open"
        );
        let r = held.call("whoami").await;
        assert_eq!(r["text"], "blue", "{r}");
    }
    held.send("quit").await;
    assert_eq!(held.json().await["event"], "closed");
    let out = tokio::time::timeout(Duration::from_secs(30), drain.wait_with_output())
        .await
        .expect("drain returns once the session closed")
        .expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("blue drained after"), "{text}");
    let (_, status) = ctl(&socket, &["--json", "status"]).await;
    assert!(status.contains("\"state\":\"drained\""), "{status}");

    let _ = proxy.start_kill();
}

/// The stateless 2026-07-28 revision (Python SDK 2.x on both sides): no session,
/// so every request goes by weight, and a drain of blue completes on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_2026_requests_follow_the_weights_through_a_flip() {
    let (_blue, blue) = server(Sdk::Py2, "blue", "streamable-http").await;
    let (_green, green) = server(Sdk::Py2, "green", "streamable-http").await;
    let (_dir, socket, base, mut proxy) = start_proxy(blue, green, "100ms").await;
    let mut c = client(Sdk::Py2, &base, "streamable-http").await;
    let r = c.call("whoami").await;
    assert_eq!(r["text"], "blue", "{r}");
    let (ok, out) = ctl(&socket, &["flip", "green", "--no-probe", "--drain"]).await;
    assert!(ok, "{out}");
    let r = c.call("whoami").await;
    assert_eq!(
        r["text"], "green",
        "stateless requests follow the new weights: {r}"
    );
    let (ok, out) = ctl(&socket, &["wait", "blue", "drained", "--timeout", "30s"]).await;
    assert!(ok && out.contains("blue drained after"), "{out}");
    c.send("quit").await;
    assert_eq!(c.json().await["event"], "closed");
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
    let sections = "[drain]\nquiet = \"2s\"\n[probe]\ncanary = { tool = \"get_document\", arguments = { id = \"health\" }, expect = \"ok\" }\n\
                    [watch]\nwindow = \"1s\"\ninterval = \"200ms\"\n";
    let (_dir, socket, base, mut proxy) = start_proxy_with(blue, green, sections).await;
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
