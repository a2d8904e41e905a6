//! `mcpflip demo`: a self-contained blue-green deploy on loopback. Two built-in
//! MCP slots, the proxy on an embedded config, clients holding legacy SSE
//! sessions of different lengths and one long Streamable HTTP session; a
//! deploy of a broken green that the probe refuses, then a real deploy (probe,
//! flip, drain, watch) of the fixed green, with a timeline of who is where and
//! how the live counts fall. The short legacy sessions end on their own; the
//! long ones (one Streamable HTTP, one legacy SSE) would hold blue until the
//! drain deadline, so `drain blue --migrate` moves them to green (`[drain]
//! migrate = "replay"`): the first under the id it has, the second on its
//! open stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::deploy::{deploy, DeployOptions};
use crate::control::display::counted;
use crate::control::protocol::{CtlError, Progress};
use crate::demo_server::{self, ServerConfig, Transport};
use crate::probe::events::EventReader;

/// The demo's plain HTTP client (tests have their own in `tests/support`).
type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Timeline(Instant);

impl Timeline {
    fn say(&self, msg: impl AsRef<str>) {
        println!(
            "[{:>6.2}s] {}",
            self.0.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

/// A legacy HTTP+SSE MCP session held open through the proxy (the demo's own
/// client; tests have theirs in `tests/support`).
struct SseSession {
    client: HttpClient,
    post_url: String,
    events: EventReader,
    next_id: u64,
}

impl SseSession {
    /// Opens `GET {base}/sse`, reads the endpoint, and initializes.
    async fn open(client: &HttpClient, base: &str) -> anyhow::Result<Self> {
        let req = http::Request::get(format!("{base}/sse"))
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))?;
        let resp = client.request(req).await.context("GET /sse")?;
        if !resp.status().is_success() {
            bail!("GET /sse answered {}", resp.status());
        }
        let mut s = SseSession {
            client: client.clone(),
            post_url: String::new(),
            events: EventReader::new(resp.into_body()),
            next_id: 1,
        };
        let (event, data) = s.next_event().await?;
        if event != "endpoint" {
            bail!("first event was {event:?}, not endpoint");
        }
        s.post_url = if data.starts_with('/') {
            format!("{base}{data}")
        } else {
            data
        };
        s.request("initialize", json!({"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "mcpflip-demo", "version": "1"}})).await?;
        s.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(s)
    }

    async fn next_event(&mut self) -> anyhow::Result<(String, String)> {
        loop {
            let ev = self.events.next().await?;
            if ev.data.is_empty() {
                continue; // comments and keep-alives
            }
            let event = if ev.event.is_empty() {
                "message".to_owned()
            } else {
                ev.event
            };
            return Ok((event, ev.data));
        }
    }

    async fn post(&self, msg: Value) -> anyhow::Result<()> {
        let req = http::Request::post(&self.post_url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(msg.to_string())))?;
        let resp = self.client.request(req).await.context("POST message")?;
        if !resp.status().is_success() {
            bail!("POST answered {}", resp.status());
        }
        let _ = resp.into_body().collect().await;
        Ok(())
    }

    /// Sends a request and waits for its response on the stream.
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        loop {
            let (_, data) = self.next_event().await?;
            let v: Value =
                serde_json::from_str(&data).with_context(|| format!("bad message {data:?}"))?;
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    bail!("{method} failed: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Calls `tool` and returns its text.
    async fn call(&mut self, tool: &str, args: Value) -> anyhow::Result<String> {
        let r = self
            .request("tools/call", json!({"name": tool, "arguments": args}))
            .await?;
        Ok(r["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

/// A Streamable HTTP MCP session through the proxy (the demo's own client):
/// one JSON-RPC message per POST, the session named by `Mcp-Session-Id`.
struct HttpSession {
    client: HttpClient,
    url: String,
    /// The session id as the proxy gave it (tagged with its slot).
    sid: String,
    next_id: u64,
}

impl HttpSession {
    /// `initialize` then `notifications/initialized` on `{base}/mcp`.
    async fn open(client: &HttpClient, base: &str) -> anyhow::Result<Self> {
        let mut s = HttpSession {
            client: client.clone(),
            url: format!("{base}/mcp"),
            sid: String::new(),
            next_id: 1,
        };
        let (sid, _) = s
            .post(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "mcpflip-demo", "version": "1"}}}),
            )
            .await?;
        s.sid = sid.ok_or_else(|| anyhow!("initialize answered without Mcp-Session-Id"))?;
        s.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(s)
    }

    /// POSTs `msg`; the answer's session id and JSON body (`Null` for 202).
    async fn post(&self, msg: Value) -> anyhow::Result<(Option<String>, Value)> {
        let mut req = http::Request::post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if !self.sid.is_empty() {
            req = req.header("mcp-session-id", &self.sid);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(msg.to_string())))?)
            .await
            .context("POST /mcp")?;
        let status = resp.status();
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "POST /mcp answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).context("an answer that is not JSON")?
        };
        Ok((sid, v))
    }

    /// Calls `tool`; its text. Fails if the answer names another session.
    async fn call(&mut self, tool: &str) -> anyhow::Result<String> {
        let id = self.next_id;
        self.next_id += 1;
        let (sid, v) = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": tool, "arguments": {}}}))
            .await?;
        if let Some(sid) = sid.filter(|s| *s != self.sid) {
            bail!("the session id changed from {} to {sid}", self.sid);
        }
        if let Some(e) = v.get("error") {
            bail!("{tool} failed: {e}");
        }
        Ok(v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

/// A long session of the demo: Streamable HTTP (client 4) or legacy SSE
/// (client 5).
enum Long {
    Http(HttpSession),
    Sse(SseSession),
}

impl Long {
    async fn whoami(&mut self) -> anyhow::Result<String> {
        match self {
            Long::Http(s) => s.call("whoami").await,
            Long::Sse(s) => s.call("whoami", json!({})).await,
        }
    }

    /// How the client holds its session, for the timeline.
    fn held(&self, who: &str) -> String {
        match self {
            Long::Http(s) => format!(
                "same session id {} (mcpflip replayed its initialize on {who})",
                s.sid
            ),
            Long::Sse(_) => format!(
                "on the same SSE stream and POST URL (mcpflip spliced the stream onto a new session on {who})"
            ),
        }
    }
}

/// A long session: a call every 200 ms, a line when the slot that answers
/// changes, until `stop` or a few calls after it moved. Returns the calls
/// answered by each slot, in order.
async fn long_session(
    client: u32,
    mut s: Long,
    t: Arc<Timeline>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<(String, u32)>> {
    let mut answered: Vec<(String, u32)> = Vec::new();
    let mut calls = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(answered),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let who = s.whoami().await?;
        calls += 1;
        match answered.last_mut() {
            Some((slot, n)) if *slot == who => *n += 1,
            _ => {
                if !answered.is_empty() {
                    t.say(format!(
                        "client {client}: call {calls} answered by {who}, {}",
                        s.held(&who)
                    ));
                }
                answered.push((who, 1));
            }
        }
        // Enough to show it stays there.
        if answered.len() > 1 && answered.last().is_some_and(|(_, n)| *n >= 3) {
            return Ok(answered);
        }
    }
}

/// A plain HTTP client for the demo.
fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Starts a built-in MCP slot on `port` (0: any); `tools` limits its tool set.
async fn start_slot(
    name: &str,
    port: u16,
    tools: Option<&[&str]>,
    stop: &CancellationToken,
) -> anyhow::Result<u16> {
    // The fixed green comes back on the port the broken one had, which is free
    // once the stopped server's accept loop has let its listener go.
    let mut tries = 0;
    let l = loop {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        match socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .and_then(|()| socket.listen(1024))
        {
            Ok(l) => break l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(anyhow!("cannot listen on 127.0.0.1:{port}: {e}")),
        }
    };
    let port = l.local_addr()?.port();
    let mut cfg = ServerConfig::new(name, Transport::Both);
    cfg.tools = tools.map(|t| t.iter().map(|s| s.to_string()).collect());
    let stop = stop.clone();
    tokio::spawn(async move { demo_server::serve(l, cfg, stop).await });
    Ok(port)
}

/// A fresh directory only this user can use (0700, a random name: nobody can
/// have made it first) for the demo's control socket and state file.
fn private_dir() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for _ in 0..16 {
        let dir = std::env::temp_dir().join(format!("mcpflip-demo-{:016x}", fastrand::u64(..)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => bail!("cannot create {}: {e}", dir.display()),
        }
    }
    bail!("cannot find a free name for the demo's directory")
}

/// Runs the demo; `Ok` when the deploy succeeded.
pub async fn run() -> anyhow::Result<()> {
    let t = Arc::new(Timeline(Instant::now()));
    let dir = private_dir()?;
    let stop = CancellationToken::new();
    let blue = start_slot("blue", 0, None, &stop).await?;
    // Green's first build has a registration bug: two of its five tools are missing.
    let broken_stop = stop.child_token();
    let green = start_slot(
        "green",
        0,
        Some(&["get_document", "list_documents", "slow"]),
        &broken_stop,
    )
    .await?;
    t.say(format!(
        "blue  slot: built-in MCP server on 127.0.0.1:{blue}"
    ));
    t.say(format!(
        "green slot: built-in MCP server on 127.0.0.1:{green} (new build, not yet verified)"
    ));
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[control]\nsocket = \"{sock}\"\nstate_file = \"{state}\"\n[drain]\ndeadline = \"30s\"\nquiet = \"200ms\"\nmigrate = \"replay\"\n\
         [probe]\nexpect_tools = [\"get_document\", \"list_documents\", \"search_documents\", \"slow\", \"whoami\"]\n\
         canary = {{ tool = \"get_document\", arguments = {{ id = \"health\" }}, expect = \"ok\" }}\n\
         [watch]\nwindow = \"2s\"\ninterval = \"500ms\"\n\
         [[slot]]\nname = \"blue\"\nupstream = \"http://127.0.0.1:{blue}\"\nweight = 100\n[[slot]]\nname = \"green\"\nupstream = \"http://127.0.0.1:{green}\"\nweight = 0\n",
        sock = dir.join("control.sock").display(),
        state = dir.join("state.json").display(),
    );
    let config = Config::parse(&text, std::path::Path::new("<embedded demo config>"))
        .map_err(|e| anyhow!("{e}"))?;
    let running = crate::run::start(config, true).await?;
    let base = format!("http://{}", running.public_addr);
    let ctl = Arc::clone(&running.controller);
    t.say(format!(
        "mcpflip listening on {base} (status page http://{admin}/, metrics http://{admin}/metrics)",
        admin = running.admin_addr
    ));

    let client = http_client();
    // Three clients hold legacy SSE sessions of different lengths.
    let holds = [1.0f64, 2.0, 3.5];
    let mut tasks = Vec::new();
    for (i, hold) in holds.iter().enumerate() {
        let mut s = SseSession::open(&client, &base).await?;
        let who = s.call("whoami", json!({})).await?;
        t.say(format!(
            "client {} opened an SSE session on {who} (will hold it {hold}s)",
            i + 1
        ));
        let t = Arc::clone(&t);
        let hold = *hold;
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs_f64(hold);
            let mut calls = 0;
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let who = s.call("whoami", json!({})).await?;
                if who != "blue" {
                    bail!("client {} was moved to {who}", i + 1);
                }
                calls += 1;
            }
            t.say(format!(
                "client {} closes its session ({calls} calls, all answered by blue)",
                i + 1
            ));
            Ok::<_, anyhow::Error>(())
        }));
    }
    // A fourth client works in one long Streamable HTTP session.
    let mut long = HttpSession::open(&client, &base).await?;
    let who = long.call("whoami").await?;
    t.say(format!(
        "client 4 opened a Streamable HTTP session on {who} (session id {}); it calls whoami every 200 ms and does not stop",
        long.sid
    ));
    let stop_long = CancellationToken::new();
    let long_task = tokio::spawn(long_session(
        4,
        Long::Http(long),
        Arc::clone(&t),
        stop_long.clone(),
    ));
    // A fifth holds a legacy SSE session as long: its session lives in its
    // open stream.
    let mut legacy = SseSession::open(&client, &base).await?;
    let who = legacy.call("whoami", json!({})).await?;
    t.say(format!(
        "client 5 opened a legacy SSE session on {who}; it calls whoami every 200 ms and does not stop"
    ));
    let legacy_task = tokio::spawn(long_session(
        5,
        Long::Sse(legacy),
        Arc::clone(&t),
        stop_long.clone(),
    ));
    let status = ctl.status();
    t.say(format!(
        "live streams: blue {}, green {}",
        status.slots[0].live_streams, status.slots[1].live_streams
    ));

    t.say("deploy green   (the guide: curl smoke test, reload nginx, `sleep 120`)");
    match deploy(&ctl, "green", DeployOptions::default(), |_| {}).await {
        Err(CtlError::ProbeFailed { report }) => {
            let why = report.error.as_deref().unwrap_or("?");
            t.say(format!("refused: {why}"));
            t.say("nothing changed: every session stays on blue, no client saw the broken build");
        }
        Err(e) => bail!("the broken green was not refused by its probe but failed with: {e}"),
        Ok(_) => bail!("the broken green passed its probe"),
    }
    broken_stop.cancel();
    start_slot("green", green, None, &stop).await?;
    ctl.lifecycle("green", false)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    t.say(format!(
        "green restarted with the fixed build on 127.0.0.1:{green}; `standby green`"
    ));

    t.say("deploy green");
    let t2 = Arc::clone(&t);
    let (mut phase, mut last) = ("", u64::MAX);
    let ctl2 = Arc::clone(&ctl);
    let deployed = tokio::spawn(async move {
        deploy(&ctl2, "green", DeployOptions::default(), move |p| {
            let now = crate::control::display::phase(&p);
            match &p {
                Progress::Probe { .. } if phase != now => {
                    t2.say("  probe: initialize, tools/list, canary get_document(health)")
                }
                Progress::Flip { from, .. } => t2.say(format!(
                    "  flip: {} -> green; blue is draining, new sessions go to green",
                    from.as_deref().unwrap_or("?")
                )),
                Progress::Drain {
                    live_streams,
                    inflight,
                    ..
                } if *live_streams != last => {
                    t2.say(format!(
                        "  drain: blue has {}, {inflight} in flight",
                        counted(*live_streams, "live stream")
                    ));
                    last = *live_streams;
                }
                Progress::Watch { window_ms, .. } if phase != now => t2.say(format!(
                    "  watch: probing green every 500ms until the {:.0}s window ends",
                    *window_ms as f64 / 1000.0
                )),
                _ => {}
            }
            phase = now;
        })
        .await
    });
    // A client arriving mid-deploy, once the flip is done.
    let flipped = Instant::now() + Duration::from_secs(10);
    while ctl
        .tables
        .load()
        .active()
        .is_none_or(|s| &*s.name != "green")
    {
        if Instant::now() > flipped {
            bail!("green never became active");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fresh = SseSession::open(&client, &base).await?;
    let who = fresh.call("whoami", json!({})).await?;
    drop(fresh);
    t.say(format!(
        "a client that connected during the deploy landed on {who}"
    ));
    if who != "green" {
        bail!("new session landed on {who}, not green");
    }
    // The legacy sessions end on their own; client 4's would keep blue
    // draining until the deadline.
    for task in tasks {
        task.await??;
    }
    // Their streams close once the proxy sees the connections go: client
    // 5's alone stays.
    let blue_stats = ctl.tables.load().get("blue").map(|s| Arc::clone(&s.stats));
    if let Some(stats) = blue_stats {
        let closed = Instant::now() + Duration::from_secs(5);
        while stats.live_streams() > 1 {
            if Instant::now() > closed {
                bail!("blue's short SSE sessions' streams did not close");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    t.say("blue's short SSE sessions have ended; clients 4 and 5 still work on blue, so the drain would wait for its 30s deadline");
    t.say("drain blue --migrate   (blue's sessions move to green; [drain] migrate = \"replay\")");
    ctl.drain("blue", Some(Duration::ZERO))
        .await
        .map_err(|e| anyhow!("drain --migrate: {e}"))?;
    let reply = deployed.await?.map_err(|e| anyhow!("deploy failed: {e}"))?;
    for (client, task, kept) in [
        (4, long_task, "one session id throughout"),
        (5, legacy_task, "one stream throughout"),
    ] {
        let moved = match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(joined) => joined??,
            Err(_) => {
                stop_long.cancel();
                bail!("client {client}'s session did not reach green");
            }
        };
        match moved.as_slice() {
            [(first, before), (then, after)] if first == "blue" && then == "green" => t.say(format!(
                "client {client}: {before} calls answered by blue, then {after} by green, {kept}, none failed"
            )),
            other => bail!("client {client}'s calls were answered by {other:?}, not blue then green"),
        }
    }
    let drained_ms = reply.drained_after_ms.unwrap_or(0);
    t.say(format!(
        "deploy done in {:.2}s: probe passed, blue drained after {:.2}s, watch {}",
        reply.elapsed_ms as f64 / 1000.0,
        drained_ms as f64 / 1000.0,
        match reply.watch {
            crate::control::protocol::WatchOutcome::Passed { .. } => "passed",
            _ => "did not pass",
        }
    ));
    t.say(format!(
        "blue drained after {:.2}s: its short SSE sessions closed, its long sessions moved; safe to stop blue (the guide would still be sleeping for {:.0}s)",
        drained_ms as f64 / 1000.0,
        120.0 - drained_ms as f64 / 1000.0
    ));
    for s in ctl.status().slots {
        t.say(format!(
            "  {:<6} {:<8} weight {:>3}  live streams {}",
            s.name, s.state, s.weight, s.live_streams
        ));
    }
    // Client 5's stream was open at the cut, and moved; no other stream
    // was cut.
    if reply.forced > 1 {
        bail!("{} streams had to be forced", reply.forced);
    }
    running.shutdown().await;
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    t.say("deploy succeeded");
    Ok(())
}
