//! Probe-gated flips, the watch window with automatic rollback, and `deploy`,
//! against built-in MCP upstreams on loopback (each failure kind made for real:
//! a wrong tool set, a failing `initialize`, a slot that hangs, one that is down).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpflip::demo_server::{ServerConfig, Transport};
use serde_json::{json, Value};
use support::mcp::http_client;
use support::{closed_port, until, upstream, TestConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A port that accepts connections and never answers.
async fn hanging() -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (port, task)
}

async fn ctl(socket: &Path, line: &str) -> Value {
    support::ctl(socket, line).await
}

fn step<'a>(reply: &'a Value, name: &str) -> &'a Value {
    reply["probe"]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {reply}"))
}

/// The names of a passing probe's steps, in order.
fn step_names(reply: &Value) -> Vec<&str> {
    reply["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().unwrap_or(""))
        .collect()
}

fn failed_step(reply: &Value) -> &Value {
    reply["probe"]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["ok"] == false))
        .unwrap_or_else(|| panic!("no failed step in {reply}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_a_good_slot_and_names_every_kind_of_failure() {
    let stop = CancellationToken::new();
    let good = upstream(ServerConfig::new("good", Transport::Both), &stop).await;
    let mut partial = ServerConfig::new("partial", Transport::Both);
    partial.tools = Some(vec!["get_document".into(), "list_documents".into()]);
    let partial = upstream(partial, &stop).await;
    let mut broken = ServerConfig::new("broken", Transport::Both);
    broken.fail_initialize = true;
    let broken = upstream(broken, &stop).await;
    let (hang, _hold) = hanging().await;
    let down = closed_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = TestConfig::new(dir.path())
        .set_str("probe", "timeout", "1s")
        .expect_all_tools()
        .set(
            "probe",
            "canary",
            r#"{ tool = "get_document", arguments = { id = "health" }, expect = "ok" }"#,
        )
        .slot("good", good, 100)
        .slot("partial", partial, 0)
        .slot("broken", broken, 0)
        .slot("hang", hang, 0)
        .slot("down", down, 0);
    let p = support::start(cfg.load()).await;
    let sock = dir.path().join("control.sock");

    let ok = ctl(&sock, "probe good").await;
    assert_eq!(ok["ok"], true, "{ok}");
    let names = step_names(&ok);
    assert_eq!(
        names,
        ["initialize", "initialized", "tools/list", "canary", "close"]
    );
    assert!(ok["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .all(|s| s["ok"] == true && s["ms"].is_u64()));
    assert_eq!(ok["protocol"], "2025-11-25");

    let r = ctl(&sock, "probe partial").await;
    assert_eq!(
        (r["ok"].clone(), r["code"].clone()),
        (json!(false), json!("probe_failed")),
        "{r}"
    );
    let f = failed_step(&r);
    assert_eq!(f["step"], "tools/list", "{r}");
    let detail = f["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("missing search_documents, slow, whoami"),
        "{detail}"
    );

    let r = ctl(&sock, "probe broken").await;
    let f = failed_step(&r);
    assert_eq!(
        (f["step"].as_str(), f["status"].as_u64()),
        (Some("initialize"), Some(500)),
        "{r}"
    );
    assert!(
        f["body"]
            .as_str()
            .unwrap_or("")
            .contains("initialize failed"),
        "{r}"
    );

    let r = ctl(&sock, "probe hang").await;
    let f = failed_step(&r);
    assert_eq!(f["step"], "initialize", "{r}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap_or("")
            .contains("probe timeout (1s)"),
        "{r}"
    );

    let r = ctl(&sock, "probe down").await;
    let f = failed_step(&r);
    assert_eq!(f["step"], "initialize", "{r}");
    assert!(
        f["detail"].as_str().unwrap_or("").contains("(connect)"),
        "{r}"
    );

    // A flip to a slot that fails its probe changes nothing.
    for bad in ["partial", "broken", "down"] {
        let r = ctl(&sock, &format!("flip {bad} --drain")).await;
        assert_eq!(r["code"], "probe_failed", "{r}");
        assert_eq!(step(&r, "initialize")["step"], "initialize");
    }
    let s = ctl(&sock, "status").await;
    assert_eq!(s["active"], "good", "{s}");
    assert_eq!(s["flips_total"], 0, "{s}");
    p.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_mismatch_and_legacy_sse_probe() {
    let stop = CancellationToken::new();
    let blue = upstream(ServerConfig::new("blue", Transport::Sse), &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sse = |dir: &Path, expect: &str| {
        TestConfig::new(dir)
            .set_str("probe", "transport", "sse")
            .set_str("probe", "path", "/sse")
            .set(
                "probe",
                "canary",
                format!(r#"{{ tool = "whoami", expect = "{expect}" }}"#),
            )
            .slot("blue", blue, 100)
    };
    let p = support::start(sse(dir.path(), "blue").expect_all_tools().load()).await;
    let sock = dir.path().join("control.sock");
    let r = ctl(&sock, "probe blue").await;
    assert_eq!(r["ok"], true, "{r}");
    let names = step_names(&r);
    assert_eq!(
        names,
        [
            "endpoint",
            "initialize",
            "initialized",
            "tools/list",
            "canary"
        ]
    );
    p.shutdown().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let p = support::start(sse(dir.path(), "green").load()).await;
    let r = ctl(&dir.path().join("control.sock"), "probe blue").await;
    let f = failed_step(&r);
    assert_eq!(f["step"], "canary", "{r}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap_or("")
            .contains("does not contain \"green\""),
        "{r}"
    );
    p.shutdown().await;
    stop.cancel();
}

struct Pair {
    dir: tempfile::TempDir,
    green_stop: CancellationToken,
    blue_stop: CancellationToken,
    proxy: mcpflip::run::Running,
}

impl Pair {
    /// Blue and green, `[probe]` expecting every tool, and `[watch]` with `watch`.
    async fn new(watch: &[(&str, &str)]) -> Pair {
        let blue_stop = CancellationToken::new();
        let green_stop = CancellationToken::new();
        let blue = upstream(ServerConfig::new("blue", Transport::Both), &blue_stop).await;
        let green = upstream(ServerConfig::new("green", Transport::Both), &green_stop).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = TestConfig::blue_green(dir.path(), blue, green)
            .set_str("probe", "timeout", "2s")
            .expect_all_tools();
        for (k, v) in watch {
            cfg = cfg.set("watch", k, *v);
        }
        let proxy = support::start(cfg.load()).await;
        Pair {
            dir,
            green_stop,
            blue_stop,
            proxy,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Starts `deploy green` on its own connection; the task returns the final reply.
    fn deploy(&self, line: &'static str) -> tokio::task::JoinHandle<(Value, Vec<Value>)> {
        let sock = self.socket();
        tokio::spawn(async move {
            let mut progress = Vec::new();
            let reply = mcpflip::control::client::send(&sock, line, |p| progress.push(p.clone()))
                .await
                .expect("deploy reply");
            (reply, progress)
        })
    }

    /// Waits until `slot` is the active one (the deploy flipped).
    async fn until_active(&self, slot: &str) {
        let p = &self.proxy;
        until(&format!("{slot} is active"), || {
            p.controller
                .tables
                .load()
                .active()
                .is_some_and(|s| &*s.name == slot)
        })
        .await;
    }

    async fn active(&self) -> Value {
        ctl(&self.socket(), "status").await["active"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_that_dies_after_the_flip_is_rolled_back_while_blue_is_up() {
    let pair = Pair::new(&[("window", r#""30s""#), ("interval", r#""100ms""#)]).await;
    let deploy = pair.deploy("deploy green");
    let p = &pair.proxy;
    pair.until_active("green").await;
    pair.green_stop.cancel(); // green's process dies during the watch window
    let (reply, progress) = tokio::time::timeout(Duration::from_secs(20), deploy)
        .await
        .expect("deploy ends")
        .expect("task");
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["code"], "rolled_back", "{reply}");
    assert_eq!(reply["watch"]["result"], "rolled_back", "{reply}");
    assert_eq!(reply["watch"]["to"], "blue", "{reply}");
    let reason = reply["watch"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("probe of green failed"), "{reason}");
    let phases: Vec<&str> = progress
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert!(phases.starts_with(&["probe", "flip"]), "{phases:?}");

    let s = ctl(&pair.socket(), "status").await;
    assert_eq!(s["active"], "blue", "{s}");
    assert_eq!(s["rollbacks_total"], 1, "{s}");
    assert_eq!(s["last_rollback"]["from"], "green", "{s}");
    assert!(
        s["last_rollback"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("green"),
        "{s}"
    );

    let text = support::metrics(p.admin_addr).await;
    assert!(text.contains("mcpflip_rollbacks_total 1"), "{text}");
    pair.proxy.shutdown().await;
    pair.blue_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_answering_5xx_is_rolled_back_by_its_error_share() {
    // A long interval: the 5xx share is read before the next probe would run.
    let pair = Pair::new(&[
        ("window", r#""30s""#),
        ("interval", r#""1500ms""#),
        ("max_error_ratio", "0.05"),
    ])
    .await;
    let deploy = pair.deploy("deploy green");
    let p = &pair.proxy;
    pair.until_active("green").await;
    pair.green_stop.cancel();
    let client = http_client();
    for _ in 0..20 {
        let resp = client
            .request(
                http::Request::post(format!("http://{}/mcp", p.public_addr))
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
                    )))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), 502);
    }
    let (reply, _) = tokio::time::timeout(Duration::from_secs(20), deploy)
        .await
        .expect("deploy ends")
        .expect("task");
    assert_eq!(reply["code"], "rolled_back", "{reply}");
    let reason = reply["watch"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("with 5xx"), "{reason}");
    assert_eq!(pair.active().await, "blue");
    pair.proxy.shutdown().await;
    pair.blue_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_passes_its_watch_and_rollback_by_hand_needs_a_live_previous_slot() {
    let pair = Pair::new(&[("window", r#""600ms""#), ("interval", r#""100ms""#)]).await;
    let (reply, progress) = pair.deploy("deploy green").await.expect("task");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        (reply["from"].as_str(), reply["to"].as_str()),
        (Some("blue"), Some("green"))
    );
    assert_eq!(reply["watch"]["result"], "passed", "{reply}");
    assert!(
        reply["watch"]["probes"].as_u64().unwrap_or(0) >= 1,
        "{reply}"
    );
    assert!(reply["drained_after_ms"].is_u64(), "{reply}");
    assert!(
        progress.iter().any(|p| p["phase"] == "watch"),
        "{progress:?}"
    );
    let s = ctl(&pair.socket(), "status").await;
    assert_eq!(s["slots"][0]["state"], "drained", "{s}");

    // By hand: back to blue (it still passes its probe), then blue dies and
    // a rollback to it is refused with nothing changed.
    let r = ctl(&pair.socket(), "rollback").await;
    assert_eq!(
        (r["ok"].clone(), r["to"].clone()),
        (json!(true), json!("blue")),
        "{r}"
    );
    let r = ctl(&pair.socket(), "rollback").await;
    assert_eq!(r["to"], "green", "{r}");
    pair.blue_stop.cancel();
    let r = ctl(&pair.socket(), "rollback").await;
    assert_eq!(r["code"], "probe_failed", "{r}");
    assert_eq!(pair.active().await, "green");
    assert_eq!(ctl(&pair.socket(), "status").await["rollbacks_total"], 2);

    let r = ctl(&pair.socket(), "deploy nosuch").await;
    assert_eq!(r["code"], "unknown_slot", "{r}");
    pair.proxy.shutdown().await;
    pair.green_stop.cancel();
}

/// Every event the hub has for `rx` now, as JSON.
fn drain_events(
    rx: &mut tokio::sync::broadcast::Receiver<mcpflip::control::protocol::Event>,
) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e.to_value());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_records_each_deploy_phase_as_it_happens_and_the_hub_announces_it() {
    let pair = Pair::new(&[("window", r#""1s""#), ("interval", r#""200ms""#)]).await;
    let p = &pair.proxy;
    let mut hub = p.controller.subscribe();
    let client = http_client();
    let session = support::mcp::SseSession::open(&client, &format!("http://{}", p.public_addr))
        .await
        .expect("a session held on blue");
    let deploy = pair.deploy("deploy green");

    // The watch window (1 s) ends while blue still drains: the record has
    // its outcome at once, not when the drain is over.
    until("the watch ended during the drain", || {
        p.controller
            .deploy_status()
            .is_some_and(|d| d.watch.is_some())
    })
    .await;
    let d = serde_json::to_value(p.controller.deploy_status()).expect("json");
    assert_eq!(d["phase"], "drain", "{d}");
    assert_eq!(d["watch"]["result"], "passed", "{d}");
    assert_eq!(
        (d["to"].as_str(), d["from"].as_str()),
        (Some("green"), Some("blue")),
        "{d}"
    );
    assert_eq!(d["probe"]["ok"], true, "{d}");
    assert!(d["flipped_at"].is_u64(), "{d}");
    assert_eq!(d["draining"], json!(["blue"]), "{d}");
    assert!(d.get("drained").is_none(), "{d}");
    let s = ctl(&pair.socket(), "status").await;
    assert_eq!(
        s["deploy"]["phase"], "drain",
        "status carries the deploy: {s}"
    );

    drop(session);
    let (reply, _) = deploy.await.expect("task");
    assert_eq!(reply["ok"], true, "{reply}");
    let d = ctl(&pair.socket(), "status").await["deploy"].clone();
    assert_eq!(d["phase"], "passed", "{d}");
    assert_eq!(d["drained"][0]["slot"], "blue", "{d}");
    assert_eq!(
        d["elapsed_ms"],
        reply["elapsed_ms"]
            .as_u64()
            .map(|_| d["elapsed_ms"].clone())
            .unwrap_or_default()
    );
    let events = drain_events(&mut hub);
    let names: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|n| *n != "progress" && *n != "state_saved")
        .collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("no {n} in {names:?}"))
    };
    assert!(
        at("deploy_started") < at("probe_done")
            && at("probe_done") < at("flipped")
            && at("flipped") < at("watch_ended")
            && at("watch_ended") < at("drain_ended")
            && at("drain_ended") < at("deploy_ended"),
        "{names:?}"
    );
    let probe = events
        .iter()
        .find(|e| e["event"] == "probe_done")
        .expect("probe_done");
    let steps: Vec<&str> = probe["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert!(
        steps.starts_with(&["initialize", "initialized", "tools/list"]),
        "{probe}"
    );
    let ended = events
        .iter()
        .find(|e| e["event"] == "deploy_ended")
        .expect("deploy_ended");
    assert_eq!(ended["ok"], true, "{ended}");

    // A deploy whose probe fails: recorded as failed, with the failed step.
    pair.blue_stop.cancel();
    let r = ctl(&pair.socket(), "deploy blue").await;
    assert_eq!(r["code"], "probe_failed", "{r}");
    let d = ctl(&pair.socket(), "status").await["deploy"].clone();
    assert_eq!(
        (d["phase"].as_str(), d["code"].as_str(), d["to"].as_str()),
        (Some("failed"), Some("probe_failed"), Some("blue")),
        "{d}"
    );
    assert_eq!(d["probe"]["ok"], false, "{d}");
    assert_eq!(d["probe"]["steps"][0]["ok"], false, "{d}");
    assert!(d.get("flipped_at").is_none(), "{d}");
    let events = drain_events(&mut hub);
    let ended = events
        .iter()
        .find(|e| e["event"] == "deploy_ended")
        .expect("deploy_ended");
    assert_eq!(
        (ended["ok"].as_bool(), ended["code"].as_str()),
        (Some(false), Some("probe_failed")),
        "{ended}"
    );
    // A refused deploy (the active slot) never started: the record stays.
    let r = ctl(&pair.socket(), "deploy green").await;
    assert_eq!(r["code"], "already_active", "{r}");
    assert_eq!(ctl(&pair.socket(), "status").await["deploy"]["to"], "blue");
    assert!(drain_events(&mut hub)
        .iter()
        .all(|e| e["event"] != "deploy_started"));
    pair.proxy.shutdown().await;
    pair.green_stop.cancel();
}
