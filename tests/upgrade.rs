//! The hitless upgrade, on the real binary: `mcpflip ctl upgrade` to a
//! rebuilt binary (a copy of the built one) under a continuous load of
//! requests and 50 open SSE streams loses no request and cuts no stream; the
//! streams' sessions keep reaching their slot through the new process; a
//! drain that was waiting goes on waiting for the old process's streams
//! (`status` shows the handover); the old process exits 0 once they end. A
//! failed upgrade (a bad config, a binary that exits, one that hangs) leaves
//! the old process serving as before.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use support::mcp::{http_client, initialize, post_json, SseSession};
use support::proc::{ctl, ProxyProcess, BIN};
use support::{closed_port, Harness, TestConfig};

/// The streams held across the upgrade.
const STREAMS: usize = 50;

/// A continuous load of Streamable HTTP requests (an `initialize`, so a new
/// session each) on four keep-alive connections, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(base: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let client = http_client();
            let url = format!("{base}/mcp");
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, body) = post_json(&client, &url, None, initialize()).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status != 200 || !body.contains("\"result\"") {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if errors.len() < 5 {
                            errors.push(format!("{status}: {body}"));
                        }
                    }
                }
                errors
            }));
        }
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    /// Requests sent so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the loops: requests sent, failed, and the first failures.
    async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.expect("load task"));
        }
        let sent = self.sent.load(Ordering::Relaxed);
        (sent, self.failed.load(Ordering::Relaxed), errors)
    }
}

/// A process this test started indirectly (the new process of an upgrade):
/// SIGKILLed when dropped, so that a failing test leaves nothing behind.
struct Pid(i32);

impl Drop for Pid {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid this test learned from `ctl upgrade`.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A copy of the built binary: "the rebuilt binary" the upgrade starts.
fn rebuilt(dir: &Path) -> PathBuf {
    let p = dir.join("mcpflip-rebuilt");
    std::fs::copy(BIN, &p).expect("copy the binary");
    p
}

fn status(socket: &Path) -> Value {
    let out = ctl(socket, &["--json", "status"]);
    assert!(out.ok(), "status: {out:?}");
    serde_json::from_str(&out.stdout).expect("status JSON")
}

fn slot<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .expect("slot in status")
}

/// `mcpflip ctl upgrade --binary BINARY` on the process `old` serves: the
/// new process's pid, and the reply.
fn upgrade(socket: &Path, binary: &Path, old: &ProxyProcess) -> (i32, Value) {
    let out = ctl(
        socket,
        &[
            "--json",
            "upgrade",
            "--binary",
            binary.to_str().expect("utf-8"),
        ],
    );
    assert!(out.ok(), "upgrade: {out:?}\n{}", old.stderr());
    let reply: Value = serde_json::from_str(&out.stdout).expect("upgrade JSON");
    let new_pid = reply["new_pid"].as_i64().expect("new_pid") as i32;
    (new_pid, reply)
}

/// Proxy config on fixed loopback ports (the new process must find the same
/// addresses in its config to take the sockets over).
fn config(h: &Harness) -> (TestConfig, u16, u16) {
    let (cfg, public, admin) = h.builder_on_ports();
    (cfg.set_str("drain", "deadline", "5m"), public, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_loses_no_request_cuts_no_stream_and_keeps_affinity() {
    let h = Harness::new().await;
    let (cfg, public, admin) = config(&h);
    let path = cfg.write();
    let socket = cfg.socket();
    let mut old = ProxyProcess::spawn(&path, &socket, &[]);
    old.ready().await;
    let binary = rebuilt(h.dir.path());
    let base = format!("http://127.0.0.1:{public}");
    let client = http_client();

    // 50 legacy SSE sessions on blue, then blue drains behind green.
    let mut sessions = Vec::new();
    for _ in 0..STREAMS {
        sessions.push(SseSession::open(&client, &base).await.expect("session"));
    }
    let flip = ctl(&socket, &["flip", "green", "--drain", "--no-probe"]);
    assert!(flip.ok(), "{flip:?}");
    let st = status(&socket);
    assert_eq!(slot(&st, "blue")["state"], "draining");
    assert_eq!(slot(&st, "blue")["live_streams"], STREAMS as u64);

    // A continuous load of Streamable HTTP requests (a new session each) on
    // keep-alive connections, through the whole upgrade.
    let load = Load::start(&base);
    support::until("the load runs", || load.sent() > 50).await;

    let (new_pid, reply) = upgrade(&socket, &binary, &old);
    let _new = Pid(new_pid);
    assert_eq!(reply["old_pid"], old.id());
    assert!(alive(new_pid));
    let after_upgrade = load.sent();

    // The control socket is the new process's; the old one still holds the
    // streams, so blue's drain goes on waiting for them.
    let st = status(&socket);
    assert_eq!(st["handover"]["pid"], old.id(), "{st}");
    assert_eq!(slot(&st, "blue")["state"], "draining", "{st}");
    let held = st["handover"]["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot"] == "blue"))
        .expect("blue in the handover")
        .clone();
    assert_eq!(held["live_streams"], STREAMS as u64, "{st}");
    assert_eq!(
        slot(&st, "blue")["live_streams"],
        0,
        "no stream moved: {st}"
    );
    // The drain resumed with what was left of its deadline (5m), not a new one.
    let drain = st["drains"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["slot"] == "blue"))
        .expect("blue's drain runs in the new process");
    let deadline = drain["deadline_ms"].as_u64().expect("deadline_ms");
    assert!(deadline < 300_000 && deadline > 200_000, "{drain}");
    assert!(old.exited().is_none(), "the old process serves its streams");

    // Every held session still works, and its requests (sent through the new
    // process: the old one accepts no more connections) still reach blue.
    for s in &mut sessions {
        let who = s
            .call("whoami", json!({}))
            .await
            .expect("the stream survived");
        assert_eq!(who, "blue");
    }
    support::until("the load ran on the new process", || {
        load.sent() > after_upgrade + 50
    })
    .await;
    let st = status(&socket);
    assert_eq!(slot(&st, "blue")["state"], "draining");

    // Closing the streams ends the old process (exit 0) and then the drain.
    drop(sessions);
    let code = old.wait_exit();
    assert!(
        code.success(),
        "the old process exited {code}:\n{}",
        old.stderr()
    );
    support::until_async("blue drained", || async {
        slot(&status(&socket), "blue")["state"] == "drained"
    })
    .await;
    assert!(status(&socket).get("handover").is_none());

    let (sent, failed, errors) = load.stop().await;
    assert_eq!(
        failed, 0,
        "of {sent} requests, these failed (the first few): {errors:?}"
    );
    // The new process serves on alone; its admin listener is the old one's socket.
    let ready = support::mcp::get_text(&client, &format!("http://127.0.0.1:{admin}/readyz")).await;
    assert!(ready.contains("\"ready\":true"), "{ready}");
    // SAFETY: kill(2) on the new process this test started through ctl.
    unsafe { libc::kill(new_pid, libc::SIGTERM) };
    support::until("the new process exits on SIGTERM", || !alive(new_pid)).await;
}

/// Runs a failed upgrade and checks that the old process serves on: same
/// pid, the control socket answers, requests succeed.
async fn fails_and_serves_on(h: &Harness, args: &[&str], expect: &str, before: impl FnOnce()) {
    let (cfg, public, _) = config(h);
    let path = cfg.write();
    let socket = cfg.socket();
    let mut old = ProxyProcess::spawn(&path, &socket, &[]);
    old.ready().await;
    let client = http_client();
    let url = format!("http://127.0.0.1:{public}/mcp");
    let mut session = SseSession::open(&client, &format!("http://127.0.0.1:{public}"))
        .await
        .expect("session");
    before();
    let mut all = vec!["upgrade"];
    all.extend_from_slice(args);
    let out = ctl(&socket, &all);
    assert_eq!(out.code, Some(1), "{out:?}");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("upgrade_failed"), "{out:?}");
    assert!(said.contains(expect), "{expect:?} in {out:?}");
    assert!(said.contains("serves on as before"), "{out:?}");
    // The same process serves, its stream included.
    assert!(old.exited().is_none());
    let st = status(&socket);
    assert!(st.get("handover").is_none());
    assert_eq!(slot(&st, "blue")["live_streams"], 1);
    let (code, _, _) = post_json(&client, &url, None, initialize()).await;
    assert_eq!(code, 200);
    assert_eq!(
        session.call("whoami", json!({})).await.expect("stream"),
        "blue"
    );
    drop(session);
    let code = old.terminate();
    assert!(code.success(), "{}", old.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_bad_config_fails_and_the_old_process_serves_on() {
    let h = Harness::new().await;
    let (cfg, _, _) = config(&h);
    let path = cfg.path();
    fails_and_serves_on(&h, &[], "bad config", || {
        std::fs::write(&path, "[listen\naddr = ").expect("break the config");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_binary_that_exits_fails_and_the_old_process_serves_on() {
    let h = Harness::new().await;
    fails_and_serves_on(
        &h,
        &["--binary", "/bin/false"],
        "exited (exit status: 1)",
        || {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_binary_that_hangs_times_out_and_the_old_process_serves_on() {
    let h = Harness::new().await;
    let hang = h.dir.path().join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 600\n").expect("script");
    std::fs::set_permissions(
        &hang,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .expect("chmod");
    fails_and_serves_on(
        &h,
        &["--binary", hang.to_str().expect("utf-8"), "--timeout", "2s"],
        "did not take over within 2s",
        || {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_applies_a_new_listener_address_and_proxy_section() {
    let h = Harness::new().await;
    let (cfg, public, admin) = config(&h);
    let path = cfg.write();
    let socket = cfg.socket();
    let mut old = ProxyProcess::spawn(&path, &socket, &[]);
    old.ready().await;
    // What `reload` cannot apply: a new admin address and a [proxy] change.
    let reload_said = {
        let moved = closed_port();
        cfg.clone()
            .set_str("admin", "addr", format!("127.0.0.1:{moved}"))
            .set_str("proxy", "idle_timeout", "30s")
            .write();
        let out = ctl(&socket, &["--json", "reload"]);
        assert!(out.ok(), "{out:?}");
        (moved, out.stdout)
    };
    let (moved, said) = reload_said;
    assert!(
        said.contains("[admin] addr") && said.contains("[proxy]"),
        "{said}"
    );

    let out = ctl(&socket, &["--json", "upgrade"]);
    assert!(out.ok(), "{out:?}\n{}", old.stderr());
    let reply: Value = serde_json::from_str(&out.stdout).expect("json");
    let _new = Pid(reply["new_pid"].as_i64().expect("new_pid") as i32);
    assert!(old.wait_exit().success(), "{}", old.stderr());

    // The public socket was taken over; the admin listener moved.
    let client = http_client();
    let (code, _, _) = post_json(
        &client,
        &format!("http://127.0.0.1:{public}/mcp"),
        None,
        initialize(),
    )
    .await;
    assert_eq!(code, 200);
    let ready = support::mcp::get_text(&client, &format!("http://127.0.0.1:{moved}/readyz")).await;
    assert!(ready.contains("\"ready\":true"), "{ready}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", admin))
            .await
            .is_err(),
        "the old admin address is closed"
    );
    // The new process runs the new config: a reload finds nothing to restart for.
    let out = ctl(&socket, &["--json", "reload"]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains("\"restart_required\":[]"),
        "{}",
        out.stdout
    );
}

/// `n` upgrades in a row under a continuous load of requests, each with
/// `STREAMS` SSE sessions held across it: every request must succeed and
/// every held session must still answer (through the new process) after its
/// upgrade. Returns `(requests sent, requests failed)`.
async fn upgrades_under_load(n: usize) -> (u64, u64) {
    let h = Harness::new().await;
    let (cfg, public, _) = config(&h);
    let path = cfg.write();
    let socket = cfg.socket();
    let mut first = ProxyProcess::spawn(&path, &socket, &[]);
    first.ready().await;
    let binaries = [PathBuf::from(BIN), rebuilt(h.dir.path())];
    let base = format!("http://127.0.0.1:{public}");

    let load = Load::start(&base);
    let started = std::time::Instant::now();
    let mut current: Option<Pid> = None;
    for i in 0..n {
        let client = http_client();
        let mut sessions = Vec::new();
        for _ in 0..STREAMS {
            sessions.push(SseSession::open(&client, &base).await.expect("session"));
        }
        let binary = binaries[i % 2].to_str().expect("utf-8");
        let out = ctl(&socket, &["--json", "upgrade", "--binary", binary]);
        assert!(out.ok(), "upgrade {i}: {out:?}\n{}", first.stderr());
        let reply: Value = serde_json::from_str(&out.stdout).expect("json");
        let new_pid = reply["new_pid"].as_i64().expect("new_pid") as i32;
        for s in &mut sessions {
            let who = s.call("whoami", json!({})).await;
            assert_eq!(
                who.as_deref().ok(),
                Some("blue"),
                "upgrade {i}: a held stream broke: {who:?}"
            );
        }
        drop(sessions);
        drop(client);
        support::until_async("the old process finished", || async {
            status(&socket).get("handover").is_none()
        })
        .await;
        // The old process exits; its own guard (if any) must not kill the new one.
        if let Some(old) = current.replace(Pid(new_pid)) {
            support::until("the old process exited", || !alive(old.0)).await;
            std::mem::forget(old);
        }
    }
    let (sent, failed, errors) = load.stop().await;
    println!(
        "upgrades under load: {n} upgrades in {:.1}s, {STREAMS} SSE sessions held across each; \
         requests sent {sent}, failed {failed}; first failures: {errors:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(first.wait_exit().success(), "{}", first.stderr());
    (sent, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_few_upgrades_in_a_row_under_load_lose_nothing() {
    let (sent, failed) = upgrades_under_load(3).await;
    assert!(sent > 0);
    assert_eq!(failed, 0);
}

/// The benchmark of the done-when: 100 upgrades (`UPGRADES=N` for another
/// count) under load. Run it with
/// `cargo test --release --test upgrade -- --ignored --nocapture upgrades_bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark (about a minute): run it with --ignored"]
async fn upgrades_bench() {
    let n = std::env::var("UPGRADES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let (_, failed) = upgrades_under_load(n).await;
    assert_eq!(failed, 0);
}

/// `[drain] migrate = "replay"` across an upgrade: the sessions the old
/// process captured are handed to the new one (those captured before it
/// served, and those its open connections captured after), so a session
/// whose slot is then cut moves under its id, where it got the 404 of a
/// session never captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_the_captured_sessions_over() {
    let h = Harness::new().await;
    let (cfg, public, admin) = config(&h);
    let cfg = cfg.set_str("drain", "migrate", "replay");
    let path = cfg.write();
    let socket = cfg.socket();
    let mut old = ProxyProcess::spawn(&path, &socket, &[]);
    old.ready().await;
    let url = format!("http://127.0.0.1:{public}/mcp");
    // A session captured before the upgrade, on a connection that stays
    // with the old process.
    let kept_alive = http_client();
    let before = support::mcp::open_session(&kept_alive, &url).await;

    let binary = rebuilt(h.dir.path());
    let (new_pid, _) = upgrade(&socket, &binary, &old);
    let _new = Pid(new_pid);
    // A session the old process captures after the new one serves, on the
    // connection it still holds.
    let after = support::mcp::open_session(&kept_alive, &url).await;
    drop(kept_alive);
    let code = old.wait_exit();
    assert!(
        code.success(),
        "the old process exited {code}:\n{}",
        old.stderr()
    );

    // Green serves; blue's sessions are cut: both move, through the new process.
    let r = support::ctl(&socket, "weights blue=100 green=1").await;
    assert!(r.get("error").is_none(), "{r}");
    let r = support::ctl(&socket, "drain blue --migrate --wait").await;
    assert!(r.get("error").is_none(), "{r}");
    let client = http_client();
    for (n, sid) in [&before, &after].into_iter().enumerate() {
        let (status, answer) = support::mcp::call_whoami(&client, &url, sid, n as u32 + 2).await;
        assert_eq!(status, 200, "session {n}: {answer}");
        assert_eq!(
            answer["result"]["content"][0]["text"], "green",
            "session {n} moved: {answer}"
        );
    }
    let metrics =
        support::mcp::get_text(&client, &format!("http://127.0.0.1:{admin}/metrics")).await;
    assert_eq!(
        support::metric(&metrics, "mcpflip_sessions_migrated_total"),
        2,
        "{metrics}"
    );
    // SAFETY: kill(2) on the new process this test started through ctl.
    unsafe { libc::kill(new_pid, libc::SIGTERM) };
    support::until("the new process exits on SIGTERM", || !alive(new_pid)).await;
}

/// The new process of an upgrade takes the captured sessions from the old
/// one, not from the sessions file the old one saved: that file is older,
/// and a session that moved again since would go back to where it was then.
/// Here a session moves blue → green, a restart saves that, it moves green
/// → blue, and an upgrade follows: its next call must reach blue, where the
/// file says green (whose server still holds the session it had there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_takes_the_sessions_the_old_process_holds_not_its_older_file() {
    let h = Harness::new().await;
    let (cfg, public, _) = config(&h);
    let cfg =
        cfg.set_str("drain", "migrate", "replay")
            .set_str("drain", "migrate_save_interval", "1h");
    let path = cfg.write();
    let socket = cfg.socket();
    let url = format!("http://127.0.0.1:{public}/mcp");
    // A client per call: no keep-alive connection holds the old process.
    let whoami = |sid: &str, id: u32| {
        let client = http_client();
        let (url, sid) = (url.clone(), sid.to_owned());
        async move {
            let (status, r) = support::mcp::call_whoami(&client, &url, &sid, id).await;
            assert_eq!(status, 200, "{r}");
            r["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        }
    };
    let command = |line: &str| {
        let socket = socket.clone();
        let line = line.to_owned();
        async move {
            let r = support::ctl(&socket, &line).await;
            assert!(r.get("error").is_none(), "{line}: {r}");
        }
    };

    let mut first = ProxyProcess::spawn(&path, &socket, &[]);
    first.ready().await;
    let sid = support::mcp::open_session(&http_client(), &url).await;
    command("weights blue=100 green=1").await;
    command("drain blue --migrate --wait").await;
    assert_eq!(whoami(&sid, 2).await, "green");
    let code = first.terminate();
    assert!(code.success(), "{code}:\n{}", first.stderr());

    let mut old = ProxyProcess::spawn(&path, &socket, &[]);
    old.ready().await;
    command("weights blue=100 green=1").await;
    command("drain green --migrate --wait").await;
    assert_eq!(whoami(&sid, 3).await, "blue");

    let binary = rebuilt(h.dir.path());
    let (new_pid, _) = upgrade(&socket, &binary, &old);
    let _new = Pid(new_pid);
    let code = old.wait_exit();
    assert!(
        code.success(),
        "the old process exited {code}:\n{}",
        old.stderr()
    );
    assert_eq!(
        whoami(&sid, 4).await,
        "blue",
        "the move the old process made"
    );
    // SAFETY: kill(2) on the new process this test started through ctl.
    unsafe { libc::kill(new_pid, libc::SIGTERM) };
    support::until("the new process exits on SIGTERM", || !alive(new_pid)).await;
}
