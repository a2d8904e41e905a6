//! The fleet (issue 15) with real processes: a three-member etcd of our own
//! on loopback (tests/support/etcd.rs), three `mcpflip run` instances (the
//! built binary) sharing it, and blue and green served by the official
//! Python MCP SDK's server (tests/peers/server.py, Streamable HTTP) in the
//! flip-and-drain test, by the built-in MCP server (`mcpflip upstream`'s,
//! in this test process) in the others, which need no SDK behaviour. Both
//! answer `whoami` with their slot's name, which is what the tests read.
//!
//! Proven here: a flip on one instance routes new sessions to green through
//! every instance while sessions pinned to blue stay on blue through every
//! instance; the fleet's drain waits for a stream held through another
//! instance and completes right after it closes; `status` shows the fleet;
//! two concurrent flips from two instances never both succeed and race to a
//! `conflict`; a deploy's watch rolls the fleet back on the 5xx another
//! instance served; `kill -9` of the instance holding the last blue stream lets
//! the drain complete once its lease expires; one etcd member stopped
//! changes nothing; all of etcd stopped keeps every instance serving and
//! refuses changes with `cluster_unavailable` (status and metric say
//! disconnected) until etcd is back.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::etcd::EtcdCluster;
use support::mcp::{
    call_whoami, get_text, http_client, initialize, open_session, post_json, HttpClient, SseSession,
};
use support::proc::ProxyProcess;
use support::{closed_port, ctl, metric, upstream, TestConfig};
use tokio_util::sync::CancellationToken;

use mcpflip::demo_server::{ServerConfig, Transport};

/// One instance: its process, its public and admin addresses, its socket.
struct Instance {
    proc: ProxyProcess,
    base: String,
    admin: String,
    socket: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Instance {
    async fn ctl(&self, line: &str) -> Value {
        ctl(&self.socket, line).await
    }

    async fn status(&self) -> Value {
        self.ctl("status").await
    }
}

struct Fleet {
    etcd: EtcdCluster,
    instances: Vec<Instance>,
    client: HttpClient,
    /// Stops the built-in green alone (a child of the fleet's stop).
    green_stop: CancellationToken,
    _stop: tokio_util::sync::DropGuard,
    _sdk_servers: Vec<SdkServer>,
}

/// What serves blue and green.
#[derive(Clone, Copy, PartialEq)]
enum Slots {
    BuiltIn,
    /// The official Python MCP SDK (2.x), Streamable HTTP.
    PythonSdk,
}

/// A Python SDK server process; killed when dropped.
struct SdkServer(std::process::Child);

impl Drop for SdkServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tests/peers/server.py` (installed by tests/peers/install.sh py2)
/// as `slot`; returns it and its port.
fn sdk_server(slot: &str) -> (SdkServer, u16) {
    use std::io::BufRead;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let install = std::process::Command::new("bash")
        .arg(repo.join("tests/peers/install.sh"))
        .arg("py2")
        .status()
        .expect("bash runs");
    assert!(
        install.success(),
        "could not install the py2 MCP SDK peer; run `bash tests/peers/install.sh py2` and read its error"
    );
    let mut child = std::process::Command::new(repo.join("target/peers/py2/bin/python"))
        .arg(repo.join("tests/peers/server.py"))
        .args([
            "--port",
            "0",
            "--slot",
            slot,
            "--transport",
            "streamable-http",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the Python SDK server starts");
    let out = child.stdout.take().expect("stdout");
    let server = SdkServer(child);
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("READY line");
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected server line {line:?}"));
    (server, port)
}

fn slot_of(status: &Value, name: &str) -> Value {
    status["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no slot {name} in {status}"))
}

fn state_of(status: &Value, name: &str) -> String {
    slot_of(status, name)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits (20 s at most) until `cond` holds for `instance`'s status.
async fn until_status(i: &Instance, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = i.status().await;
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}\nlast status: {s}\nits log:\n{}",
            i.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Fleet {
    /// Three etcd members, blue (active) and green, three instances.
    async fn start(stop: CancellationToken) -> Fleet {
        Self::start_with(stop, Slots::BuiltIn).await
    }

    async fn start_with(stop: CancellationToken, kind: Slots) -> Fleet {
        Self::start_tuned(stop, kind, |_, _, c| c).await
    }

    /// As `start_with`, each instance's config passed through `tune` last
    /// (with the instance's number, 1 to 3, and the etcd it is to use).
    async fn start_tuned(
        stop: CancellationToken,
        kind: Slots,
        tune: impl Fn(usize, &EtcdCluster, TestConfig) -> TestConfig,
    ) -> Fleet {
        let etcd = EtcdCluster::start(3);
        let mut sdk_servers = Vec::new();
        let green_stop = stop.child_token();
        let (blue, green) = match kind {
            Slots::BuiltIn => (
                upstream(ServerConfig::new("blue", Transport::Both), &stop).await,
                upstream(ServerConfig::new("green", Transport::Both), &green_stop).await,
            ),
            Slots::PythonSdk => {
                let (b, blue) = sdk_server("blue");
                let (g, green) = sdk_server("green");
                sdk_servers.extend([b, g]);
                (blue, green)
            }
        };
        let mut instances = Vec::new();
        for n in 1..=3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (port, admin) = (closed_port(), closed_port());
            let cfg = TestConfig::blue_green(dir.path(), blue, green)
                .listen_port(port)
                .set_str("admin", "addr", format!("127.0.0.1:{admin}"))
                .set_str("drain", "quiet", "300ms")
                .set_str("drain", "deadline", "60s")
                .set_str("watch", "interval", "200ms")
                .set("cluster", "etcd", etcd.toml_endpoints())
                .set_str("cluster", "prefix", "/fleet-test")
                .set_str("cluster", "instance", format!("edge-{n}"))
                .set_str("cluster", "lease_ttl", "2s")
                .set_str("cluster", "request_timeout", "1s");
            let cfg = tune(n, &etcd, cfg);
            let socket = cfg.socket();
            let config = cfg.write();
            let mut proc = ProxyProcess::spawn(&config, &socket, &[]);
            proc.ready().await;
            instances.push(Instance {
                proc,
                base: format!("http://127.0.0.1:{port}"),
                admin: format!("http://127.0.0.1:{admin}"),
                socket,
                config,
                _dir: dir,
            });
        }
        let fleet = Fleet {
            etcd,
            instances,
            client: http_client(),
            green_stop,
            _stop: stop.drop_guard(),
            _sdk_servers: sdk_servers,
        };
        // Every instance sees every other one's counts.
        for i in &fleet.instances {
            until_status(i, "three instances in the fleet", |s| {
                s["cluster"]["instances"].as_array().map(Vec::len) == Some(3)
            })
            .await;
        }
        fleet
    }

    fn i(&self, n: usize) -> &Instance {
        &self.instances[n - 1]
    }
}

/// A new Streamable HTTP session through `base`: `(session id, slot that answered)`.
async fn new_session(client: &HttpClient, base: &str) -> (String, String) {
    let (status, sid, body) = post_json(client, &format!("{base}/mcp"), None, initialize()).await;
    assert_eq!(status, 200, "{body}");
    let sid = sid.expect("a session id");
    let slot = whoami(client, base, &sid).await;
    (sid, slot)
}

/// The slot that answers session `sid`'s `whoami` through `base`.
async fn whoami(client: &HttpClient, base: &str, sid: &str) -> String {
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}});
    let (status, _, body) = post_json(client, &format!("{base}/mcp"), Some(sid), call).await;
    assert_eq!(status, 200, "whoami through {base}: {body}");
    for slot in ["blue", "green"] {
        if body.contains(&format!("\"text\":\"{slot}\"")) {
            return slot.to_owned();
        }
    }
    panic!("whoami answered neither blue nor green: {body}")
}

async fn sse_whoami(s: &mut SseSession) -> String {
    s.call("whoami", json!({})).await.expect("whoami")
}

/// A Streamable HTTP session's standalone SSE stream (`GET /mcp`) through
/// `base`, held open until the returned body is dropped.
async fn hold_stream(client: &HttpClient, base: &str, sid: &str) -> hyper::body::Incoming {
    let req = http::Request::get(format!("{base}/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-06-18")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("GET /mcp");
    assert_eq!(resp.status(), 200, "GET /mcp through {base}");
    resp.into_body()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_reaches_the_fleet_and_its_drain_waits_for_the_fleet() {
    let f = Fleet::start_with(CancellationToken::new(), Slots::PythonSdk).await;
    let c = &f.client;

    // Pinned to blue before the flip: one session through instance 1, and
    // one whose stream (GET /mcp) is held through instance 3.
    let (pinned, slot) = new_session(c, &f.i(1).base).await;
    assert_eq!(slot, "blue");
    let (streaming, slot) = new_session(c, &f.i(3).base).await;
    assert_eq!(slot, "blue");
    let held = hold_stream(c, &f.i(3).base, &streaming).await;

    let r = f.i(1).ctl("flip green --drain --no-probe").await;
    assert_eq!(r["ok"], true, "{r}");

    // Every instance routes by the new table: new sessions land on green.
    for n in 1..=3 {
        until_status(f.i(n), "green active everywhere", |s| {
            s["active"] == "green"
        })
        .await;
        let (_, slot) = new_session(c, &f.i(n).base).await;
        assert_eq!(slot, "green", "a new session through instance {n}");
        // The session pinned to blue stays on blue, whichever instance it goes through.
        assert_eq!(
            whoami(c, &f.i(n).base, &pinned).await,
            "blue",
            "instance {n}"
        );
    }

    // The drain waits for the stream held through instance 3, wherever it is asked.
    let waiter = {
        let socket = f.i(2).socket.clone();
        tokio::spawn(async move { ctl(&socket, "wait blue drained --timeout 30s").await })
    };
    let s = until_status(
        f.i(1),
        "instance 3's blue stream in the fleet's status",
        |s| {
            s["cluster"]["totals"]
                .as_array()
                .and_then(|t| t.iter().find(|x| x["slot"] == "blue"))
                .is_some_and(|b| b["live_streams"] == 1)
        },
    )
    .await;
    let edge3 = s["cluster"]["instances"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["name"] == "edge-3"))
        .cloned()
        .expect("edge-3 in status");
    assert!(edge3["lease_age_ms"].as_u64().is_some(), "{edge3}");
    // Well past the quiet period, instance 1 (idle itself) still drains: the fleet is not idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 1..=3 {
        assert_eq!(
            state_of(&f.i(n).status().await, "blue"),
            "draining",
            "instance {n}"
        );
    }
    assert!(!waiter.is_finished(), "wait ended while a stream was open");
    // `ctl status` renders the fleet.
    let text = support::proc::ctl_env(&["status"], &[("MCPFLIP_SOCKET", &f.i(1).socket)]);
    assert!(text.ok(), "{text:?}");
    assert!(
        text.stdout.contains("cluster: connected") && text.stdout.contains("edge-3"),
        "{}",
        text.stdout
    );

    drop(held);
    let r = waiter.await.expect("waiter");
    assert_eq!(r["ok"], true, "{r}\n{}", f.i(2).proc.stderr());
    for n in 1..=3 {
        until_status(f.i(n), "blue drained everywhere", |s| {
            state_of(s, "blue") == "drained"
        })
        .await;
    }

    // `weights --drain` is the same fleet-wide drain: green, set to 0
    // through instance 3, drains on every instance, its sessions keep going
    // to it whichever instance they pass, and it is drained only once the
    // stream held through instance 2 ends.
    let (on_green, slot) = new_session(c, &f.i(2).base).await;
    assert_eq!(slot, "green");
    let held = hold_stream(c, &f.i(2).base, &on_green).await;
    let r = f.i(3).ctl("weights blue=100 green=0 --drain").await;
    assert_eq!(r["draining"], json!(["green"]), "{r}");
    for n in 1..=3 {
        until_status(f.i(n), "green draining, blue serving everywhere", |s| {
            state_of(s, "green") == "draining" && state_of(s, "blue") == "serving"
        })
        .await;
        assert_eq!(whoami(c, &f.i(n).base, &on_green).await, "green");
        let (_, slot) = new_session(c, &f.i(n).base).await;
        assert_eq!(slot, "blue", "a new session through instance {n}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        state_of(&f.i(1).status().await, "green"),
        "draining",
        "instance 2's stream keeps the fleet's drain open"
    );
    drop(held);
    let r = f.i(1).ctl("wait green drained --timeout 30s").await;
    assert_eq!(r["ok"], true, "{r}");
    for n in 1..=3 {
        until_status(f.i(n), "green drained everywhere", |s| {
            state_of(s, "green") == "drained"
        })
        .await;
    }

    // Propagation is measured on the instances that adopted the flip.
    let m = get_text(c, &format!("{}/metrics", f.i(2).admin)).await;
    assert!(m.contains("mcpflip_cluster_connected 1"), "{m}");
    let count = m
        .lines()
        .find_map(|l| l.strip_prefix("mcpflip_cluster_propagation_seconds_count "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(count >= 1, "{m}");

    // Two concurrent flips from two instances never both go through, and
    // they race to a `conflict` (the loser retries).
    let mut conflicts = 0;
    let mut to = "green";
    for round in 0..20 {
        let line = format!("flip {to} --no-probe");
        let (a, b) = tokio::join!(f.i(1).ctl(&line), f.i(2).ctl(&line));
        let oks = [&a, &b].iter().filter(|r| r["ok"] == true).count();
        assert_eq!(oks, 1, "round {round}: {a} / {b}");
        let loser = if a["ok"] == true { &b } else { &a };
        match loser["code"].as_str() {
            Some("conflict") => conflicts += 1,
            // It had already adopted the winner's flip.
            Some("already_active") => {}
            other => panic!("round {round}: {other:?}: {loser}"),
        }
        if conflicts > 0 {
            break;
        }
        for n in 1..=3 {
            until_status(f.i(n), "the flip everywhere", |s| s["active"] == to).await;
        }
        to = if to == "blue" { "green" } else { "blue" };
    }
    assert!(conflicts > 0, "no concurrent flip ever conflicted");
    drop(f.etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_etcd_outages() {
    let mut f = Fleet::start(CancellationToken::new()).await;
    let c = f.client.clone();

    // The last blue stream is held through instance 3, which dies with it.
    let mut held = SseSession::open(&c, &f.i(3).base).await.expect("SSE via 3");
    assert!(sse_whoami(&mut held).await.contains("blue"));
    let r = f.i(1).ctl("flip green --drain --no-probe").await;
    assert_eq!(r["ok"], true, "{r}");
    until_status(f.i(1), "instance 3's blue stream counted", |s| {
        s["cluster"]["totals"]
            .as_array()
            .and_then(|t| t.iter().find(|x| x["slot"] == "blue"))
            .is_some_and(|b| b["live_streams"] == 1)
    })
    .await;
    f.instances[2].proc.kill9();
    // Its lease (2 s) expires with its counts, and the fleet's drain completes.
    until_status(f.i(1), "blue drained after edge-3's lease expired", |s| {
        state_of(s, "blue") == "drained"
            && s["cluster"]["instances"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    drop(held);

    // One etcd member stopped changes nothing.
    f.etcd.stop(0);
    let r = f.i(2).ctl("flip blue --no-probe").await;
    assert_eq!(r["ok"], true, "{r}");
    until_status(f.i(1), "blue active on instance 1", |s| {
        s["active"] == "blue"
    })
    .await;

    // All of etcd stopped: every instance serves on its table, refuses changes.
    f.etcd.stop_all();
    for n in 1..=2 {
        let r = f.i(n).ctl("flip green --no-probe").await;
        assert_eq!(r["code"], "cluster_unavailable", "instance {n}: {r}");
        let (_, slot) = new_session(&c, &f.i(n).base).await;
        assert_eq!(slot, "blue", "instance {n} serves on its last table");
        let s = until_status(f.i(n), "disconnected", |s| {
            s["cluster"]["connected"] == false
        })
        .await;
        assert!(
            s["cluster"]["disconnected_since_ms"].as_u64().is_some(),
            "{s}"
        );
        let text = support::proc::ctl_env(&["status"], &[("MCPFLIP_SOCKET", &f.i(n).socket)]);
        assert!(
            text.stdout.contains("cluster: disconnected since"),
            "{}",
            text.stdout
        );
        let m = get_text(&c, &format!("{}/metrics", f.i(n).admin)).await;
        assert!(m.contains("mcpflip_cluster_connected 0"), "{m}");
        assert_eq!(
            get_status(&c, &format!("{}/healthz", f.i(n).admin)).await,
            200
        );
    }

    // etcd back: changes go through again, and reach the other instance.
    f.etcd.restart_all();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = f.i(1).ctl("flip green --no-probe").await;
        if r["ok"] == true {
            break;
        }
        assert_eq!(r["code"], "cluster_unavailable", "{r}");
        assert!(
            tokio::time::Instant::now() < end,
            "etcd never came back: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_status(f.i(2), "green on instance 2 after the outage", |s| {
        s["active"] == "green" && s["cluster"]["connected"] == true
    })
    .await;

    // A restarted instance takes the table from etcd, not from its state
    // file (which never saw these weights: it was dead).
    let r = f.i(1).ctl("weights blue=30 green=70").await;
    assert_eq!(r["ok"], true, "{r}");
    let dead = &mut f.instances[2];
    dead.proc = ProxyProcess::spawn(&dead.config, &dead.socket, &[]);
    dead.proc.ready().await;
    let s = f.i(3).status().await;
    assert_eq!(slot_of(&s, "blue")["weight"], 30, "{s}");
    assert_eq!(slot_of(&s, "green")["weight"], 70, "{s}");
}

async fn get_status(client: &HttpClient, url: &str) -> u16 {
    let resp = client
        .request(
            http::Request::get(url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    resp.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deploy_at_a_time_in_the_fleet_and_an_orphaned_one_shows() {
    let mut f = Fleet::start(CancellationToken::new()).await;

    // A deploy on instance 1 with a long watch window holds the fleet's lock.
    let deploying = {
        let socket = f.i(1).socket.clone();
        // Its instance dies before it replies.
        tokio::spawn(async move {
            let _ =
                mcpflip::control::client::send(&socket, "deploy green --watch 60s", |_| {}).await;
        })
    };
    let s = until_status(f.i(2), "edge-1 holds the deploy lock", |s| {
        s["cluster"]["deploy_lock"] == "edge-1"
            && s["cluster"]["deploy"]["status"]["phase"] == "watch"
            && s["active"] == "green"
    })
    .await;
    assert_eq!(s["cluster"]["deploy"]["by"], "edge-1", "{s}");
    assert_eq!(s["cluster"]["deploy"]["orphaned"], false, "{s}");

    // No second deploy anywhere in the fleet meanwhile.
    for n in [2, 3] {
        let r = f.i(n).ctl("deploy blue --watch 0s").await;
        assert_eq!(r["code"], "busy", "instance {n}: {r}");
    }

    // The deploying instance dies: its lease ends the lock, the others see
    // the last phase as orphaned, and the committed flip stands.
    f.instances[0].proc.kill9();
    drop(deploying);
    let s = until_status(f.i(2), "the lock released, the deploy orphaned", |s| {
        s["cluster"]["deploy_lock"].is_null() && s["cluster"]["deploy"]["orphaned"] == true
    })
    .await;
    assert_eq!(s["cluster"]["deploy"]["status"]["phase"], "watch", "{s}");
    assert_eq!(s["active"], "green", "{s}");
    let text = support::proc::ctl_env(&["status"], &[("MCPFLIP_SOCKET", &f.i(2).socket)]);
    assert!(
        text.stdout.contains("ORPHANED in its watch phase"),
        "{}",
        text.stdout
    );

    // Another instance may deploy now.
    let r = f.i(3).ctl("deploy blue --watch 0s").await;
    assert_eq!(r["ok"], true, "{r}");
    let s = until_status(f.i(2), "edge-3's deploy passed", |s| {
        s["cluster"]["deploy"]["by"] == "edge-3"
            && s["cluster"]["deploy"]["status"]["phase"] == "passed"
    })
    .await;
    assert_eq!(s["cluster"]["deploy"]["orphaned"], false, "{s}");
    assert_eq!(s["active"], "blue", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_rolls_back_on_the_5xx_that_another_instance_served() {
    // The watch checks every 4 s: the 5xx share is read from etcd before the
    // next probe of the dead green would fail the window by itself.
    let f = Fleet::start_tuned(CancellationToken::new(), Slots::BuiltIn, |_, _, c| {
        c.set_str("watch", "interval", "4s")
            .set("watch", "max_error_ratio", "0.05")
    })
    .await;
    let deploying = {
        let socket = f.i(1).socket.clone();
        tokio::spawn(async move {
            mcpflip::control::client::send(&socket, "deploy green --watch 30s", |_| {})
                .await
                .expect("deploy reply")
        })
    };
    until_status(f.i(2), "green active through edge-2", |s| {
        s["active"] == "green" && s["cluster"]["deploy"]["status"]["phase"] == "watch"
    })
    .await;
    // Green dies; only edge-2 takes traffic, so every 5xx is edge-2's.
    f.green_stop.cancel();
    for _ in 0..20 {
        let (status, _, body) = post_json(
            &f.client,
            &format!("{}/mcp", f.i(2).base),
            None,
            initialize(),
        )
        .await;
        assert_eq!(status, 502, "{body}");
    }
    let reply = tokio::time::timeout(Duration::from_secs(20), deploying)
        .await
        .expect("the deploy ends")
        .expect("task");
    assert_eq!(reply["code"], "rolled_back", "{reply}");
    let reason = reply["watch"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("green answered 20 of 20 requests with 5xx"),
        "{reason}"
    );
    // The deploying instance served none of them itself: edge-2 did.
    let s = f.i(1).status().await;
    let fives = |name: &str| {
        s["cluster"]["instances"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["name"] == name))
            .and_then(|i| i["slots"].as_array())
            .and_then(|slots| slots.iter().find(|c| c["slot"] == "green"))
            .map(|c| c["errors_5xx"].clone())
            .unwrap_or_else(|| panic!("no green counts of {name} in {s}"))
    };
    assert_eq!(fives("edge-1"), 0, "{s}");
    assert_eq!(fives("edge-2"), 20, "{s}");
    // The rollback is the fleet's.
    for n in 1..=3 {
        until_status(f.i(n), "blue active everywhere after the rollback", |s| {
            s["active"] == "blue"
        })
        .await;
    }
    let s = f.i(3).status().await;
    assert_eq!(s["cluster"]["deploy"]["by"], "edge-1", "{s}");
    assert_eq!(s["cluster"]["deploy"]["status"]["phase"], "failed", "{s}");
    assert_eq!(
        s["cluster"]["deploy"]["status"]["code"], "rolled_back",
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_cluster_from_outside_the_instances_deploys() {
    let f = Fleet::start(CancellationToken::new()).await;
    // A CI runner's config: only where etcd is and the fleet's prefix.
    let runner = tempfile::tempdir().expect("tempdir");
    let config = runner.path().join("runner.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\netcd = {}\nprefix = \"/fleet-test\"\ninstance = \"ci\"\n",
            f.etcd.toml_endpoints()
        ),
    )
    .expect("write runner config");
    let path = config.to_str().expect("utf-8 path").to_owned();
    let run = move |args: &[&str]| {
        let mut all = vec!["--cluster", path.as_str()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            support::proc::ctl_env(&refs, &[])
        })
    };

    let status = run(&["status"]).await.expect("ctl");
    assert!(status.ok(), "{status:?}");
    assert!(
        status.stdout.contains("active: blue") && status.stdout.contains("edge-3"),
        "{}",
        status.stdout
    );

    let deploy = run(&["deploy", "green", "--watch", "0s"])
        .await
        .expect("ctl");
    assert!(deploy.ok(), "{deploy:?}");
    assert!(
        deploy.stdout.contains("deployed blue -> green"),
        "{}",
        deploy.stdout
    );
    for n in 1..=3 {
        until_status(f.i(n), "green active after the remote deploy", |s| {
            s["active"] == "green" && state_of(s, "blue") == "drained"
        })
        .await;
    }

    // An error reply renders and exits as a local `ctl` does.
    let refused = run(&["flip", "nosuch"]).await.expect("ctl");
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stdout.contains("no slot named"),
        "{}",
        refused.stdout
    );
    let json = run(&["--json", "status"]).await.expect("ctl");
    let v: Value = serde_json::from_str(json.stdout.trim()).expect("JSON status");
    assert_eq!(v["active"], "green", "{v}");
    assert_eq!(
        v["cluster"]["instances"].as_array().map(Vec::len),
        Some(3),
        "{v}"
    );
}

/// Three instances with `[drain] migrate = "replay"` and `migrate_idle` of
/// 6 s: the records renewed every 1.5 s, and gone 9 s after the last use.
async fn migrating_fleet() -> Fleet {
    migrating_fleet_tuned(|_, _, c| c).await
}

/// [`migrating_fleet`], each instance's config passed through `tune` last.
async fn migrating_fleet_tuned(
    tune: impl Fn(usize, &EtcdCluster, TestConfig) -> TestConfig,
) -> Fleet {
    Fleet::start_tuned(CancellationToken::new(), Slots::BuiltIn, |n, etcd, c| {
        let c = c
            .set_str("drain", "migrate", "replay")
            .set_str("drain", "migrate_idle", "6s");
        tune(n, etcd, c)
    })
    .await
}

/// Forwards a new local port to etcd member 0 (`to`), holding back each
/// piece of what the instance sends for `delay`: an etcd that answers
/// slowly. Bound here and served by the test's runtime.
fn slow_etcd(to: u16, delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let port = l.local_addr().expect("addr").port();
    let l = tokio::net::TcpListener::from_std(l).expect("listener");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let (mut from_instance, mut to_instance) = inbound.into_split();
                let (mut from_etcd, mut to_etcd) = out.into_split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from_instance.read(&mut buf).await {
                        tokio::time::sleep(delay).await;
                        if to_etcd.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_etcd.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut from_etcd, &mut to_instance).await;
                    let _ = to_instance.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    port
}

/// The fleet's session records (`{prefix}.sessions/`): their keys.
async fn session_keys(f: &Fleet) -> Vec<String> {
    session_revisions(f)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// Each session key in etcd with the revision it was last written at (a
/// renewal's touch writes it).
async fn session_revisions(f: &Fleet) -> Vec<(String, i64)> {
    let etcd = mcpflip::cluster::etcd::Etcd::new(mcpflip::cluster::etcd::Settings {
        endpoints: f.etcd.endpoints(),
        tls: None,
        credentials: None,
        request_timeout: Duration::from_secs(2),
    });
    let (kvs, _) = etcd
        .get_prefix(b"/fleet-test.sessions/")
        .await
        .expect("etcd answers");
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

/// The sum over the fleet's instances of the metric line `series`.
async fn fleet_metric(f: &Fleet, series: &str) -> u64 {
    let mut sum = 0;
    for i in &f.instances {
        let text = get_text(&f.client, &format!("{}/metrics", i.admin)).await;
        sum += metric(&text, series);
    }
    sum
}

async fn instance_metric(f: &Fleet, n: usize, series: &str) -> u64 {
    let text = get_text(&f.client, &format!("{}/metrics", f.i(n).admin)).await;
    metric(&text, series)
}

/// Answers `whoami` through `base` for session `sid` (request `id`): the
/// slot's name; the client keeps its id (`call_whoami` checks it).
async fn moved_whoami(f: &Fleet, n: usize, sid: &str, id: u32) -> String {
    let (status, body) = call_whoami(&f.client, &format!("{}/mcp", f.i(n).base), sid, id).await;
    assert_eq!(
        status,
        200,
        "whoami through instance {n}: {body}\nits log:\n{}",
        f.i(n).proc.stderr()
    );
    body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `[drain] migrate = "replay"` in a fleet: a session captured through one
/// instance moves through another that never saw it begin, and moves once
/// for all of them (the others take that move, nothing is replayed twice,
/// even when three requests race through three instances); its record in
/// etcd goes with a DELETE through any instance, and one nobody uses expires
/// after `migrate_idle` while one in use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_session_moves_once_through_any_instance_of_the_fleet() {
    let mut f = migrating_fleet().await;
    let url = |n: usize| format!("{}/mcp", f.i(n).base);
    let written = "mcpflip_cluster_session_writes_total{result=\"ok\"}";

    // Three sessions begin on blue through instance 1: `one` moves one
    // request at a time, `race` through three instances at once, `idle`
    // is never used again.
    let one = open_session(&f.client, &url(1)).await;
    let race = open_session(&f.client, &url(1)).await;
    let idle = open_session(&f.client, &url(1)).await;
    assert_eq!(moved_whoami(&f, 1, &one, 2).await, "blue");
    support::until_async("the three records written to etcd", || async {
        session_keys(&f).await.len() == 3 && instance_metric(&f, 1, written).await >= 3
    })
    .await;
    let keys = session_keys(&f).await;
    for sid in [&one, &race, &idle] {
        assert!(
            keys.iter().all(|k| !k.contains(sid.as_str())),
            "the id the client holds is never written: {keys:?}"
        );
    }
    assert!(keys.iter().all(|k| k.ends_with("/record")), "{keys:?}");

    // Blue's process is gone: flipped away from and retired, fleet-wide.
    retire_blue(&f, 1).await;

    // Instance 2 never saw `one` begin: it reads the record, replays it on
    // green and records the move; instances 3 and 1 take that move.
    assert_eq!(moved_whoami(&f, 2, &one, 3).await, "green");
    assert_eq!(
        instance_metric(
            &f,
            2,
            "mcpflip_cluster_sessions_taken_total{what=\"record\"}"
        )
        .await,
        1
    );
    assert_eq!(moved_whoami(&f, 3, &one, 4).await, "green");
    assert_eq!(moved_whoami(&f, 1, &one, 5).await, "green");
    assert_eq!(
        fleet_metric(&f, "mcpflip_sessions_migrated_total").await,
        1,
        "one replay for the fleet"
    );
    assert_eq!(
        fleet_metric(&f, "mcpflip_cluster_sessions_taken_total{what=\"move\"}").await,
        2,
        "instances 3 and 1 took instance 2's move"
    );
    let raced = "mcpflip_cluster_sessions_taken_total{what=\"raced\"}";
    assert_eq!(
        fleet_metric(&f, raced).await,
        0,
        "no instance replayed it a second time"
    );
    assert!(session_keys(&f).await.iter().any(|k| k.ends_with("/moved")));

    // Three requests of `race` through the three instances at once: one
    // replay is kept, whoever wins, and every answer comes from green.
    let answers = tokio::join!(
        moved_whoami(&f, 1, &race, 11),
        moved_whoami(&f, 2, &race, 12),
        moved_whoami(&f, 3, &race, 13),
    );
    assert_eq!(answers, ("green".into(), "green".into(), "green".into()));
    assert_eq!(
        fleet_metric(&f, "mcpflip_sessions_migrated_total").await,
        2,
        "one more replay kept for the fleet, not three"
    );
    // The others either took that move before replaying, or replayed too
    // and took it after (their replays raced): never a second move.
    let late = fleet_metric(&f, raced).await;
    assert!(late <= 2, "{late}");
    // Each raced replay's own upstream session is closed on green (a
    // DELETE green answers 200: it had that session). Whether replays race
    // is the scheduler's: about one run in two here has two, the others none.
    let closes = || {
        f.instances
            .iter()
            .flat_map(|i| {
                i.proc
                    .stderr()
                    .lines()
                    .filter(|l| l.contains("closed the upstream session a raced replay opened"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    support::until_async("every raced replay's session closed", || async {
        closes().len() as u64 == late
    })
    .await;
    for line in closes() {
        assert!(line.contains("status=200"), "{line}");
    }
    for n in 1..=3 {
        assert_eq!(moved_whoami(&f, n, &race, 20 + n as u32).await, "green");
    }
    assert_eq!(fleet_metric(&f, "mcpflip_sessions_migrated_total").await, 2);
    assert_eq!(
        fleet_metric(&f, raced).await,
        late,
        "no replay after the race"
    );

    // A DELETE of `race` through instance 3 removes its record and move.
    let before = session_keys(&f).await.len();
    let resp = f
        .client
        .request(
            http::Request::delete(url(3))
                .header("mcp-session-id", &race)
                .header("mcp-protocol-version", "2025-06-18")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("DELETE");
    assert!(resp.status().is_success(), "{}", resp.status());
    support::until_async("race's record and move deleted", || async {
        session_keys(&f).await.len() == before - 2
    })
    .await;

    // `one` in use (a request a second through instance 3) keeps its
    // record; `idle`, used by no instance, expires (migrate_idle 6 s plus
    // two renewal periods of 1.5 s after its last renewal).
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut n = 100;
    loop {
        n += 1;
        assert_eq!(moved_whoami(&f, 3, &one, n).await, "green");
        let keys = session_keys(&f).await;
        if keys.len() < 3 {
            assert_eq!(
                keys.len(),
                2,
                "idle's record expired, one's record and move stay: {keys:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "idle's record never expired: {keys:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Past its own lease's lifetime, `one` is still there and still moved.
    for _ in 0..10 {
        n += 1;
        assert_eq!(moved_whoami(&f, 3, &one, n).await, "green");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let keys = session_keys(&f).await;
    assert_eq!(
        keys.len(),
        2,
        "one's record and move are kept alive: {keys:?}"
    );
    // `idle` is gone from the fleet: through an instance that never held it
    // it cannot move.
    let (status, _) = call_whoami(&f.client, &url(2), &idle, 999).await;
    assert_eq!(status, 404);

    // etcd gone: a session still begins and is captured (on green now); its
    // record is written once etcd is back.
    f.etcd.stop_all();
    let late = open_session(&f.client, &format!("{}/mcp", f.i(1).base)).await;
    let failed = "mcpflip_cluster_session_writes_total{result=\"failed\"}";
    support::until_async("a write failed while etcd is down", || async {
        instance_metric(&f, 1, failed).await >= 1
    })
    .await;
    f.etcd.restart_all();
    support::until_async("late's record written once etcd is back", || async {
        session_keys(&f).await.len() == 3
    })
    .await;
    assert_eq!(moved_whoami(&f, 1, &late, 1000).await, "green");
}

/// A session that began through instance 1 and whose requests then all
/// come through instance 2 (a load balancer that moved its client), which
/// never read its record (nothing moved), keeps its record in etcd while it
/// is used: instance 2 renews it with its own lease. Before, only the
/// instance holding it renewed it, and only for requests it saw: the record
/// went after `migrate_idle` while the session was in use, and its move then
/// found nothing (`not_captured`, 404). `idle`, used by no one, expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_used_only_through_another_instance_keeps_its_record() {
    let f = migrating_fleet().await;
    let url = format!("{}/mcp", f.i(1).base);
    let used = open_session(&f.client, &url).await;
    let idle = open_session(&f.client, &url).await;
    support::until_async("both records written to etcd", || async {
        session_keys(&f).await.len() == 2
    })
    .await;
    // Once a second through instance 2, until `idle`'s record expires
    // (migrate_idle 6 s plus two renewal periods of 1.5 s).
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut n = 10;
    loop {
        n += 1;
        assert_eq!(moved_whoami(&f, 2, &used, n).await, "blue");
        if session_keys(&f).await.len() < 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "idle's record never expired"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        session_keys(&f).await.len(),
        1,
        "the session in use kept its record"
    );
    // And it moves through instance 2 once blue is gone; `idle` cannot.
    retire_blue(&f, 2).await;
    assert_eq!(moved_whoami(&f, 2, &used, 100).await, "green");
    let (status, _) = call_whoami(&f.client, &format!("{}/mcp", f.i(2).base), &idle, 101).await;
    assert_eq!(status, 404, "idle's record is gone");
    drop(f.etcd);
}

/// Green made active and blue retired through instance `n`, and blue seen
/// retired by every instance.
async fn retire_blue(f: &Fleet, n: usize) {
    assert_eq!(f.i(n).ctl("flip green --no-probe").await["ok"], true);
    let r = f.i(n).ctl("retire blue").await;
    assert_eq!(r["ok"], true, "{r}");
    for n in 1..=3 {
        until_status(f.i(n), "blue retired everywhere", |s| {
            state_of(s, "blue") == "retired"
        })
        .await;
    }
}

/// A session held by another instance whose record cannot be read (etcd
/// down) is answered 503 with `Retry-After`, and moves through the same
/// instance once etcd is back. Before, it was answered 404 as a session
/// never captured: an MCP client starts over on a 404 (the spec), so an
/// etcd outage ended every session that had to move, while their records
/// were intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_record_cannot_be_read_is_told_to_come_again_not_that_it_is_gone() {
    let mut f = migrating_fleet().await;
    let sid = open_session(&f.client, &format!("{}/mcp", f.i(1).base)).await;
    support::until_async("its record written to etcd", || async {
        session_keys(&f).await.len() == 1
    })
    .await;
    retire_blue(&f, 1).await;

    f.etcd.stop_all();
    let resp = f
        .client
        .request(
            http::Request::post(format!("{}/mcp", f.i(2).base))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", &sid)
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami"}})
                        .to_string(),
                )))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let retry = resp.headers().get("retry-after").cloned();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(
        status,
        503,
        "{body}\ninstance 2's log:\n{}",
        f.i(2).proc.stderr()
    );
    assert_eq!(retry.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert_eq!(body["error"], "cluster_unavailable", "{body}");
    let unavailable = "mcpflip_migrations_failed_total{cause=\"cluster_unavailable\"}";
    assert_eq!(instance_metric(&f, 2, unavailable).await, 1);
    assert_eq!(
        instance_metric(
            &f,
            2,
            "mcpflip_local_responses_total{code=\"503\",reason=\"cluster_unavailable\"}"
        )
        .await,
        1
    );
    assert_eq!(
        instance_metric(
            &f,
            2,
            "mcpflip_migrations_failed_total{cause=\"not_captured\"}"
        )
        .await,
        0
    );

    // etcd back: the same session, through the same instance, moves.
    f.etcd.restart_all();
    assert_eq!(moved_whoami(&f, 2, &sid, 3).await, "green");
    assert_eq!(moved_whoami(&f, 3, &sid, 4).await, "green");
    assert_eq!(fleet_metric(&f, "mcpflip_sessions_migrated_total").await, 1);
}

/// More sessions than the reads of records allowed at once (32) move through
/// one instance at the same moment, while its etcd answers slowly (150 ms a
/// request): every one moves. Before, a request that found 32 reads in
/// flight was answered 404 at once, as a session never captured: a deploy
/// that moved many sessions through an instance whose etcd was slow for a
/// moment ended some of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sessions_than_reads_at_once_all_move_while_etcd_is_slow() {
    const SESSIONS: usize = 40;
    let f = migrating_fleet_tuned(|n, etcd, c| {
        if n != 2 {
            return c;
        }
        let slow = slow_etcd(etcd.client_port(0), Duration::from_millis(150));
        c.set("cluster", "etcd", format!("[\"http://127.0.0.1:{slow}\"]"))
    })
    .await;
    let url1 = format!("{}/mcp", f.i(1).base);
    let mut sids = Vec::new();
    for _ in 0..SESSIONS {
        sids.push(open_session(&f.client, &url1).await);
    }
    support::until_async("every record written to etcd", || async {
        session_keys(&f).await.len() == SESSIONS
    })
    .await;
    retire_blue(&f, 1).await;

    let url2 = format!("{}/mcp", f.i(2).base);
    let calls: Vec<_> = sids
        .iter()
        .enumerate()
        .map(|(k, sid)| {
            let (client, url, sid) = (f.client.clone(), url2.clone(), sid.clone());
            tokio::spawn(async move { call_whoami(&client, &url, &sid, 100 + k as u32).await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("call"));
    }
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {SESSIONS} did not move: {failed:?}\ninstance 2's log:\n{}",
        failed.len(),
        f.i(2).proc.stderr()
    );
    for (_, body) in &answers {
        assert_eq!(body["result"]["content"][0]["text"], "green", "{body}");
    }
    assert_eq!(
        instance_metric(
            &f,
            2,
            "mcpflip_cluster_sessions_taken_total{what=\"record\"}"
        )
        .await,
        SESSIONS as u64
    );
}

/// `[drain] migrate_on_404` in a fleet: green's server, holding a session
/// captured through instance 1, restarts on its own at its address (the
/// control plane sees nothing). The session's next request, through
/// instance 2, which never held it, gets the new process's 404; instance 2
/// reads the session's record, replays it on green and sends the request
/// again, and instance 3 then takes that move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_migrate_on_404_a_session_its_restarted_server_lost_goes_on_through_any_instance() {
    let f = migrating_fleet_tuned(|_, _, c| c.set("drain", "migrate_on_404", "true")).await;
    assert_eq!(f.i(1).ctl("flip green --no-probe").await["ok"], true);
    for n in 1..=3 {
        until_status(f.i(n), "green active everywhere", |s| {
            s["active"] == "green"
        })
        .await;
    }
    let sid = open_session(&f.client, &format!("{}/mcp", f.i(1).base)).await;
    assert_eq!(moved_whoami(&f, 1, &sid, 2).await, "green");
    support::until_async("its record written to etcd", || async {
        session_keys(&f).await.len() == 1
    })
    .await;

    // Green's process ends and a new one starts at its port.
    let upstream = slot_of(&f.i(1).status().await, "green")["upstream"].clone();
    let port: u16 = upstream
        .as_str()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("green's upstream: {upstream}"));
    f.green_stop.cancel();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(tokio::time::Instant::now() < end, "green's port: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let again = CancellationToken::new();
    let _again = again.clone().drop_guard();
    tokio::spawn(mcpflip::demo_server::serve(
        listener,
        ServerConfig::new("green", Transport::Both),
        again,
    ));

    assert_eq!(moved_whoami(&f, 2, &sid, 3).await, "green");
    assert_eq!(
        instance_metric(&f, 2, "mcpflip_sessions_migrated_total").await,
        1
    );
    assert_eq!(moved_whoami(&f, 3, &sid, 4).await, "green");
    assert_eq!(
        fleet_metric(&f, "mcpflip_sessions_migrated_total").await,
        1,
        "moved once for the fleet"
    );
}

/// What etcd has committed through raft: every transaction that may write,
/// whether its comparisons held or not.
async fn proposals(f: &Fleet) -> u64 {
    let url = format!("{}/metrics", f.etcd.endpoints()[0]);
    let text = support::mcp::get_text(&f.client, &url).await;
    support::metric(&text, "etcd_server_proposals_committed_total")
}

/// A client that makes session ids up (tagged as this fleet tags them) and
/// sends each once through an instance that does not hold it costs the
/// renewal no transaction per id. Before, a chunk holding one made-up id
/// failed its transaction and every key of the chunk was then touched in a
/// transaction of its own: 400 made-up ids, over 400 raft proposals (each a
/// disk sync) within a renewal period. The session in use keeps its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_session_ids_cost_the_renewal_no_transaction_each() {
    let f = migrating_fleet().await;
    let real = open_session(&f.client, &format!("{}/mcp", f.i(1).base)).await;
    support::until_async("the session's record written to etcd", || async {
        session_keys(&f).await.len() == 1
    })
    .await;
    let tag = mcpflip::mcp::tag::SessionTag::decode(&real).expect("a tagged id");
    let prefix = &real[..tag.prefix_len(&real)];
    let url = format!("{}/mcp", f.i(2).base);
    let before = proposals(&f).await;
    for n in 0..400 {
        let (status, _) = call_whoami(&f.client, &url, &format!("{prefix}made-up-{n}"), n).await;
        assert_eq!(status, 404, "a made-up session is not found");
    }
    // The real one is used through instance 2 too, and the renewals of
    // two periods (1.5 s each) run.
    assert_eq!(moved_whoami(&f, 2, &real, 1000).await, "blue");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let spent = proposals(&f).await - before;
    assert!(
        spent < 150,
        "{spent} raft proposals for 400 made-up session ids in two renewal periods"
    );
    assert_eq!(
        session_keys(&f).await.len(),
        1,
        "the real session's record stays"
    );
    assert_eq!(moved_whoami(&f, 2, &real, 1001).await, "blue");
    drop(f.etcd);
}

/// A session whose record is gone from etcd (ended or expired through
/// another instance) while its client still uses it here, in the same
/// renewals as 60 sessions in use here, costs each renewal one transaction
/// more, not one per session, and the 60 are still renewed (fewer than 100
/// raft proposals in all over two periods; 167 before). Before, the chunk's
/// transaction failed on the gone record, and each of the 61 keys was then
/// touched in a transaction of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_elsewhere_costs_the_renewal_one_transaction() {
    let f = migrating_fleet().await;
    let url = |n: usize| format!("{}/mcp", f.i(n).base);
    let mut here = Vec::new();
    for _ in 0..60 {
        here.push(open_session(&f.client, &url(2)).await);
    }
    support::until_async("60 records written to etcd", || async {
        session_keys(&f).await.len() == 60
    })
    .await;
    let ours = session_keys(&f).await;
    let gone = open_session(&f.client, &url(1)).await;
    support::until_async("61 records written to etcd", || async {
        session_keys(&f).await.len() == 61
    })
    .await;
    // The record of `gone` (instance 1's) goes; its session lives on.
    let etcd = mcpflip::cluster::etcd::Etcd::new(mcpflip::cluster::etcd::Settings {
        endpoints: f.etcd.endpoints(),
        tls: None,
        credentials: None,
        request_timeout: Duration::from_secs(2),
    });
    for key in session_keys(&f).await {
        if !ours.contains(&key) {
            assert_eq!(etcd.delete(key.as_bytes()).await.expect("etcd"), 1);
        }
    }
    let written = session_revisions(&f).await;
    assert_eq!(written.len(), 60);
    let before = proposals(&f).await;
    // All 61 used through instance 2 for two renewal periods (1.5 s each):
    // `gone` noted as another's in each renewal.
    let end = tokio::time::Instant::now() + Duration::from_millis(3500);
    let mut n = 0;
    while tokio::time::Instant::now() < end {
        for sid in here.iter().chain([&gone]) {
            n += 1;
            assert_eq!(moved_whoami(&f, 2, sid, n).await, "blue");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let spent = proposals(&f).await - before;
    assert!(
        spent < 100,
        "{spent} raft proposals in two renewal periods of 60 sessions and one gone"
    );
    // Renewed: each of the 60 bound to a later lease; the gone one is not
    // written again.
    let renewed = session_revisions(&f).await;
    assert_eq!(
        renewed.len(),
        60,
        "the 60 in use keep theirs, gone stays gone"
    );
    for (key, revision) in &renewed {
        let (_, was) = written
            .iter()
            .find(|(k, _)| k == key)
            .expect("written before");
        assert!(revision > was, "{key} was not renewed");
    }
    drop(f.etcd);
}
