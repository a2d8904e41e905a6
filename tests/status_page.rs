//! The status page on the admin listener, as an operator sees it:
//!
//! - in headless Chromium (Debian's `chromium`, driven with the DevTools
//!   protocol), a real `mcpflip ctl deploy green` while a legacy SSE session
//!   is held open on blue through the proxy shows blue draining (its stream
//!   on the drain chart), then drained, then green serving, with the deploy's
//!   phases and events; the page asks nothing of anyone but the admin
//!   listener, throws nothing, and its CSP holds. Screenshots are left in
//!   `target/tmp/status-page/`;
//! - in a fleet (two instances, a real etcd), the page lists the instances
//!   and their counts, and a drain counts the streams another instance
//!   holds (in Chromium and without JavaScript);
//! - with `tls.acme` and a CA that cannot be reached, the page says why the
//!   certificate did not come; with `migrate = "replay"`, it counts the
//!   sessions captured and the one a deploy moves;
//! - without JavaScript (a plain GET) the page holds the same state,
//!   server-rendered, and a meta refresh;
//! - the `/events` feed outlives the admin listener's header timeout, ends at
//!   shutdown, and the listener's Host guard, read-only methods and security
//!   headers apply.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mcpflip::probe::events::EventReader;
use serde_json::Value;
use support::browser::{self, Browser};
use support::mcp::{get_text, http_client, HttpClient, SseSession};
use support::proc::{self, ProxyProcess};
use support::Harness;

/// What the page shows, for a failure message.
const SHOW: &str = "JSON.stringify({conn: document.querySelector('#conn')?.dataset.conn, \
    slots: [...document.querySelectorAll('#slots tbody tr')].map(r => r.dataset.slot + '=' + r.dataset.state), \
    deploy: document.querySelector('#deploy')?.innerText, drains: document.querySelector('#drains')?.innerText})";

/// Records every change of the slots' states as the page draws them
/// (`window.__seen`: one `blue=serving green=standby` line per change).
const RECORDER: &str = "(() => { window.__seen = []; \
    const rec = () => { const s = [...document.querySelectorAll('#slots tbody tr')] \
        .map(r => r.dataset.slot + '=' + r.dataset.state).join(' '); \
      if (window.__seen[window.__seen.length - 1] !== s) window.__seen.push(s); }; \
    rec(); \
    new MutationObserver(rec).observe(document.getElementById('slots'), {subtree: true, childList: true, attributes: true}); \
    return true; })()";

/// Fails naming the first of `wants` the plain page `html` lacks.
fn has_all(html: &str, wants: &[&str]) {
    for want in wants {
        assert!(html.contains(want), "no {want} in the plain page:\n{html}");
    }
}

/// What a browser test starts from: Chromium, a runtime for the clients,
/// and blue and green upstreams on it.
fn browser_test() -> (PathBuf, tokio::runtime::Runtime, Harness) {
    let chromium = browser::chromium();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let h = rt.block_on(Harness::new());
    (chromium, rt, h)
}

/// Where the screenshots go.
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page")
}

/// The public and admin addresses from the proxy's "mcpflip is serving" line.
fn serving_addrs(p: &ProxyProcess) -> (SocketAddr, SocketAddr) {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let err = p.stderr();
        if let Some(line) = err.lines().find(|l| l.contains("mcpflip is serving")) {
            let field = |name: &str| -> SocketAddr {
                let at = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
                line[at..]
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
            };
            return (field("public_addr"), field("admin_addr"));
        }
        assert!(std::time::Instant::now() < end, "no serving line:\n{err}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The distinct states `slot` went through, in order, from the recorder's lines.
fn states_of(seen: &[String], slot: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in seen {
        let state = line
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{slot}=")))
            .unwrap_or("(absent)");
        if out.last().map(String::as_str) != Some(state) {
            out.push(state.to_owned());
        }
    }
    out
}

#[test]
fn a_deploy_shows_live_in_chromium_blue_draining_then_drained_then_green_serving() {
    let (chromium, rt, h) = browser_test();
    let cfg = h
        .builder()
        .set_str("drain", "deadline", "2m")
        .set_str("watch", "window", "2s")
        .set_str("watch", "interval", "500ms");
    let path = cfg.write();
    let mut proxy = ProxyProcess::spawn(&path, &cfg.socket(), &["--ignore-state"]);
    proxy.wait_ready();
    let (public, admin) = serving_addrs(&proxy);
    let page = format!("http://{admin}/");
    let client = http_client();

    // A session held open on blue, through the proxy.
    let session = rt
        .block_on(SseSession::open(&client, &format!("http://{public}")))
        .expect("a legacy SSE session through the proxy");
    assert!(
        session.post_url().contains(".blue."),
        "{}",
        session.post_url()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Browser::start(&chromium, dir.path()).expect("chromium starts");
    b.navigate(&page).expect("open the page");
    b.until(
        "the feed to be live with blue serving and green on standby",
        "document.querySelector('#conn')?.dataset.conn === 'live' \
         && !!document.querySelector('tr[data-slot=blue][data-state=serving]') \
         && !!document.querySelector('tr[data-slot=green][data-state=standby]')",
        SHOW,
    )
    .expect("the page");
    assert_eq!(b.eval(RECORDER).expect("recorder"), Value::Bool(true));

    let socket = cfg.socket();
    let deploy = std::thread::spawn(move || proc::ctl(&socket, &["deploy", "green"]));

    b.until(
        "blue draining, its held stream on the drain view, the deploy in its drain phase",
        "!!document.querySelector('tr[data-slot=blue][data-state=draining]') \
         && !!document.querySelector('tr[data-slot=green][data-state=serving]') \
         && document.querySelector('#drains .drain[data-slot=blue] .live')?.textContent === '1 live stream' \
         && !!document.querySelector('#drains .drain[data-slot=blue] svg.spark polyline') \
         && !!document.querySelector('#deploy li[data-phase=probe][data-state=done]') \
         && !!document.querySelector('#deploy li[data-phase=flip][data-state=done]') \
         && !!document.querySelector('#deploy li[data-phase=drain][data-state=active]')",
        SHOW,
    )
    .expect("blue draining");
    // Let the drain run a couple of seconds, so the chart has a line to show.
    b.until(
        "two seconds of drain",
        "Number(document.querySelector('#drains .drain[data-slot=blue] meter')?.value) >= 2000",
        SHOW,
    )
    .expect("the drain clock");

    // Without JavaScript: the same state, rendered by the server, and the refresh.
    let html = rt.block_on(get_text(&client, &page));
    has_all(
        &html,
        &[
            "<noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>",
            "<tr data-slot=\"blue\" data-state=\"draining\">",
            "<tr data-slot=\"green\" data-state=\"serving\">",
            "<div class=\"drain\" data-slot=\"blue\">",
            "<span class=\"live\">1 live stream</span>",
            "data-phase=\"drain\" data-state=\"active\"",
        ],
    );

    std::fs::create_dir_all(shots()).expect("screenshot dir");
    b.screenshot(&shots().join("deploy-draining.png"))
        .expect("screenshot while draining");

    // The session ends: blue drains, the deploy finishes its watch.
    rt.block_on(async move { drop(session) });
    b.until(
        "blue drained, green serving, the deploy passed",
        "!!document.querySelector('tr[data-slot=blue][data-state=drained]') \
         && !!document.querySelector('tr[data-slot=green][data-state=serving]') \
         && document.querySelector('#deploy .deploy-head')?.dataset.phase === 'passed' \
         && !!document.querySelector('#deploy li[data-phase=watch][data-state=done]') \
         && !!document.querySelector('#events li[data-event=deploy_ended]')",
        SHOW,
    )
    .expect("the deploy passed");
    b.screenshot(&shots().join("deploy-passed.png"))
        .expect("screenshot after the deploy");

    let run = deploy.join().expect("the ctl thread");
    assert!(run.ok(), "ctl deploy failed: {run:?}");

    let seen: Vec<String> =
        serde_json::from_value(b.eval("window.__seen").expect("seen")).expect("strings");
    assert_eq!(
        states_of(&seen, "blue"),
        ["serving", "draining", "drained"],
        "{seen:?}"
    );
    assert_eq!(
        states_of(&seen, "green").last().map(String::as_str),
        Some("serving"),
        "{seen:?}"
    );
    let events: Vec<String> = serde_json::from_value(
        b.eval("[...document.querySelectorAll('#events li')].map(li => li.dataset.event)")
            .expect("events"),
    )
    .expect("strings");
    // Newest first.
    let at = |name: &str| {
        events
            .iter()
            .position(|e| e == name)
            .unwrap_or_else(|| panic!("no {name} among {events:?}"))
    };
    assert!(
        at("deploy_ended") < at("watch_ended")
            && at("watch_ended") < at("flipped")
            && at("drain_ended") < at("flipped")
            && at("flipped") < at("deploy_started"),
        "{events:?}"
    );

    // Only the admin listener was asked for anything, and nothing failed.
    let origin = format!("http://{admin}/");
    assert!(
        b.seen.requests.iter().all(|u| u.starts_with(&origin)),
        "{:?}",
        b.seen.requests
    );
    for path in ["", "style.css", "app.js", "events"] {
        let url = format!("{origin}{path}");
        assert!(
            b.seen.requests.contains(&url),
            "{url} not among {:?}",
            b.seen.requests
        );
    }
    assert!(b.seen.errors.is_empty(), "{:?}", b.seen.errors);
    // The CSP's Trusted Types hold: the page cannot parse HTML into its DOM.
    assert_eq!(
        b.eval("(() => { try { document.body.innerHTML = '<i>x</i>'; return 'parsed'; } catch (e) { return e.name; } })()")
            .expect("eval"),
        Value::from("TypeError")
    );
    drop(b);
    assert!(proxy.terminate().success(), "{}", proxy.stderr());
}

/// In a fleet the page shows every instance's counts, and a drain counts
/// the streams the fleet holds: here a legacy SSE session held on blue
/// through edge-2 keeps the drain of a deploy run on edge-1 open, and
/// edge-1's page (in Chromium, and without JavaScript) says so, "1 live
/// stream in the fleet (0 here)", not the "0 live streams" of edge-1 alone.
#[test]
fn in_a_fleet_the_page_shows_the_instances_and_the_fleets_streams_on_the_drain() {
    let (chromium, rt, h) = browser_test();
    let etcd = support::etcd::EtcdCluster::start(1);
    let mut instances = Vec::new();
    for n in 1..=2 {
        let dir = h.dir.path().join(format!("edge-{n}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let (public, admin) = (support::closed_port(), support::closed_port());
        let cfg = support::TestConfig::blue_green(&dir, h.blue, h.green)
            .listen_port(public)
            .set_str("admin", "addr", format!("127.0.0.1:{admin}"))
            .set_str("drain", "deadline", "2m")
            .set_str("watch", "window", "1s")
            .set_str("watch", "interval", "500ms")
            .set("cluster", "etcd", etcd.toml_endpoints())
            .set_str("cluster", "prefix", "/page-test")
            .set_str("cluster", "instance", format!("edge-{n}"))
            .set_str("cluster", "lease_ttl", "2s");
        let socket = cfg.socket();
        let path = cfg.write();
        let mut proxy = ProxyProcess::spawn(&path, &socket, &[]);
        proxy.wait_ready();
        instances.push((proxy, socket, public, admin));
    }
    let client = http_client();
    let page = format!("http://127.0.0.1:{}/", instances[0].3);

    // A session held open on blue through edge-2.
    let session = rt
        .block_on(SseSession::open(
            &client,
            &format!("http://127.0.0.1:{}", instances[1].2),
        ))
        .expect("a legacy SSE session through edge-2");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Browser::start(&chromium, dir.path()).expect("chromium starts");
    b.navigate(&page).expect("open the page");
    b.until(
        "both instances on edge-1's page, edge-2 holding blue's stream",
        "document.querySelector('#conn')?.dataset.conn === 'live' \
         && document.querySelector('#fleet .fleet-head b')?.textContent === 'edge-1' \
         && !!document.querySelector('#fleet .etcd.up') \
         && document.querySelector('#instances tr[data-instance=\"edge-1\"] .name')?.textContent === 'edge-1 (this one)' \
         && document.querySelector('#instances tr[data-instance=\"edge-2\"] td[data-slot=blue]')?.textContent === '1 / 0' \
         && document.querySelector('#instances tr.total td[data-slot=blue]')?.textContent === '1 / 0'",
        "document.querySelector('#fleet')?.innerText",
    )
    .expect("the fleet section");

    let socket = instances[0].1.clone();
    let deploy = std::thread::spawn(move || proc::ctl(&socket, &["deploy", "green"]));
    b.until(
        "blue draining on edge-1, held open by edge-2's stream",
        "document.querySelector('#drains .drain[data-slot=blue] .live')?.textContent === '1 live stream in the fleet (0 here)' \
         && document.querySelector('#deploy li[data-phase=drain][data-state=active] .detail')?.textContent.startsWith('blue: 1 live stream in the fleet (0 here), ') \
         && document.querySelector('#fleet .lock')?.textContent === 'edge-1'",
        SHOW,
    )
    .expect("the fleet's drain");
    let html = rt.block_on(get_text(&client, &page));
    has_all(
        &html,
        &[
            "<section id=\"fleet-section\">",
            "<tr data-instance=\"edge-2\">",
            "<span class=\"live\">1 live stream in the fleet (0 here)</span>",
        ],
    );
    std::fs::create_dir_all(shots()).expect("screenshot dir");
    b.screenshot(&shots().join("fleet-draining.png"))
        .expect("screenshot while draining");

    // edge-2's page shows the deploy edge-1 runs, and who runs it.
    let other = rt.block_on(get_text(
        &client,
        &format!("http://127.0.0.1:{}/", instances[1].3),
    ));
    assert!(
        other.contains(" · by <b class=\"by\">edge-1</b>"),
        "edge-2's page:\n{other}"
    );

    // The stream ends: the fleet's drain completes.
    rt.block_on(async move { drop(session) });
    b.until(
        "blue drained, the deploy passed",
        "!!document.querySelector('tr[data-slot=blue][data-state=drained]') \
         && document.querySelector('#deploy .deploy-head')?.dataset.phase === 'passed'",
        SHOW,
    )
    .expect("the deploy passed");
    let run = deploy.join().expect("the ctl thread");
    assert!(run.ok(), "ctl deploy failed: {run:?}");
    assert!(b.seen.errors.is_empty(), "{:?}", b.seen.errors);
    drop(b);
    for (mut p, ..) in instances {
        assert!(p.terminate().success(), "{}", p.stderr());
    }
}

/// `[listen] tls.acme` with a CA that cannot be reached: the page (drawn
/// by app.js in Chromium) shows the domains, the failed order and why.
#[test]
fn the_page_shows_why_the_acme_certificate_did_not_come() {
    // The runtime runs blue and green.
    let (chromium, _rt, h) = browser_test();
    let pki = support::pki::Pki::new(&h.dir.path().join("pki"));
    let q = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    let (cfg, _, admin) = h.builder_on_ports();
    let cfg = cfg.set(
        "listen",
        "tls",
        format!(
            "{{ cert = {}, key = {}, acme = {{ domains = [\"mcp.example.test\"], directory = \"https://127.0.0.1:{}/dir\", directory_ca = {} }} }}",
            q(&h.dir.path().join("site.crt")),
            q(&h.dir.path().join("site.key")),
            support::closed_port(),
            q(&pki.ca),
        ),
    );
    let path = cfg.write();
    let mut proxy = ProxyProcess::spawn(&path, &cfg.socket(), &["--ignore-state"]);
    proxy.wait_ready();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Browser::start(&chromium, dir.path()).expect("chromium starts");
    b.navigate(&format!("http://127.0.0.1:{admin}/"))
        .expect("open the page");
    b.until(
        "the failed order on the page, drawn from the feed",
        "document.querySelector('#conn')?.dataset.conn === 'live' \
         && document.querySelector('#acme .acme-head b')?.textContent === 'mcp.example.test' \
         && Number(document.querySelector('#acme .acme-counts')?.dataset.failed) >= 1 \
         && document.querySelector('#acme .acme-counts')?.textContent.startsWith('0 issued, ') \
         && (document.querySelector('#acme .acme-error')?.textContent || '').startsWith('last order failed: a new account at https://127.0.0.1:')",
        "document.querySelector('#acme')?.innerText",
    )
    .expect("the acme section");
    assert!(b.seen.errors.is_empty(), "{:?}", b.seen.errors);
    drop(b);
    assert!(proxy.terminate().success(), "{}", proxy.stderr());
}

/// `[drain] migrate = "replay"`: the page counts the captured session, then
/// its move when a deploy with `--migrate` ends blue and the session's next
/// call goes to green.
#[test]
fn the_page_counts_the_sessions_a_deploy_moves() {
    // The runtime runs blue and green.
    let (chromium, rt, h) = browser_test();
    let (cfg, public, admin) = h.builder_on_ports();
    let cfg = cfg
        .set_str("drain", "migrate", "replay")
        .set_str("watch", "window", "1s")
        .set_str("watch", "interval", "500ms");
    let path = cfg.write();
    let mut proxy = ProxyProcess::spawn(&path, &cfg.socket(), &["--ignore-state"]);
    proxy.wait_ready();
    let client = http_client();
    let url = format!("http://127.0.0.1:{public}/mcp");
    let sid = rt.block_on(support::mcp::open_session(&client, &url));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Browser::start(&chromium, dir.path()).expect("chromium starts");
    b.navigate(&format!("http://127.0.0.1:{admin}/"))
        .expect("open the page");
    let counts = "document.querySelector('#migration .migration-counts')";
    b.until(
        "the captured session on the page",
        &format!(
            "document.querySelector('#conn')?.dataset.conn === 'live' \
             && ({counts}?.textContent || '').startsWith('1 session captured (') \
             && {counts}?.dataset.migrated === '0'"
        ),
        &format!("{counts}?.textContent"),
    )
    .expect("the migration section");
    let run = proc::ctl(&cfg.socket(), &["deploy", "green", "--migrate"]);
    assert!(run.ok(), "ctl deploy failed: {run:?}");
    let (status, answer) = rt.block_on(support::mcp::call_whoami(&client, &url, &sid, 7));
    assert_eq!(status, 200, "{answer}");
    b.until(
        "the session's move on the page",
        &format!(
            "{counts}?.dataset.migrated === '1' \
             && ({counts}?.textContent || '').includes(' · 1 moved · 0 could not move · ')"
        ),
        &format!("{counts}?.textContent"),
    )
    .expect("the move");
    assert!(b.seen.errors.is_empty(), "{:?}", b.seen.errors);
    drop(b);
    assert!(proxy.terminate().success(), "{}", proxy.stderr());
}

async fn get(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    method: http::Method,
) -> http::Response<hyper::body::Incoming> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client
        .request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_javascript_the_page_is_whole_and_the_listener_is_guarded() {
    let h = Harness::new().await;
    let p = h.start().await;
    let client = http_client();
    let base = format!("http://{}", p.admin_addr);

    let r = get(&client, &format!("{base}/"), &[], http::Method::GET).await;
    assert_eq!(r.status(), 200);
    let hd = r.headers().clone();
    assert_eq!(hd["content-type"], "text/html; charset=utf-8");
    assert_eq!(hd["x-content-type-options"], "nosniff");
    assert_eq!(hd["x-frame-options"], "DENY");
    let csp = hd["content-security-policy"].to_str().expect("ascii");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    let html = String::from_utf8(
        r.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf-8");
    for want in [
        "<noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>",
        "<tr data-slot=\"blue\" data-state=\"serving\"><td class=\"name\">blue</td>",
        "<tr data-slot=\"green\" data-state=\"standby\"><td class=\"name\">green</td>",
        &format!("<td class=\"upstream\">http://127.0.0.1:{}</td>", h.blue),
        "<script src=\"/app.js\" defer></script>",
        "No deploy since the proxy started.",
    ] {
        assert!(html.contains(want), "no {want} in:\n{html}");
    }

    for (path, ctype) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let r = get(&client, &format!("{base}{path}"), &[], http::Method::GET).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ctype, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }

    // A page elsewhere rebound to 127.0.0.1 gets nothing (DNS rebinding).
    for (path, header) in [
        ("/", ("host", "evil.example.com")),
        ("/events", ("host", "evil.example.com")),
        ("/status", ("origin", "http://evil.example.com")),
    ] {
        let r = get(
            &client,
            &format!("{base}{path}"),
            &[header],
            http::Method::GET,
        )
        .await;
        assert_eq!(r.status(), 403, "{path} with {header:?}");
    }
    let r = get(
        &client,
        &format!("{base}/"),
        &[("host", &format!("localhost:{}", p.admin_addr.port()))],
        http::Method::GET,
    )
    .await;
    assert_eq!(r.status(), 200, "a loopback name passes");

    // Read-only.
    let r = get(&client, &format!("{base}/"), &[], http::Method::POST).await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    p.shutdown().await;
}

/// The next SSE event that is not a comment.
async fn next_event(r: &mut EventReader) -> mcpflip::probe::events::SseEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), r.next())
            .await
            .expect("an event within 30 s")
            .expect("the feed goes on");
        if !ev.event.is_empty() {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_outlives_the_header_timeout_and_ends_at_shutdown() {
    let h = Harness::new().await;
    let p = support::start(
        h.builder()
            .set_str("proxy", "header_read_timeout", "300ms")
            .load(),
    )
    .await;
    let client = http_client();
    let resp = get(
        &client,
        &format!("http://{}/events", p.admin_addr),
        &[],
        http::Method::GET,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let mut feed = EventReader::new(resp.into_body());
    let first = next_event(&mut feed).await;
    assert_eq!(first.event, "status");
    let status: Value = serde_json::from_str(&first.data).expect("status JSON");
    assert_eq!(status["active"], "blue");
    assert_eq!(status["slots"][0]["name"], "blue");
    assert_eq!(next_event(&mut feed).await.event, "recent");

    // Well past the header timeout, the feed still carries what happens.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = h.ctl("weights blue=90 green=10").await;
    assert_eq!(r["ok"], true, "{r}");
    let mut got = Vec::new();
    let weights = loop {
        let ev = next_event(&mut feed).await;
        got.push(ev.event.clone());
        if ev.event == "status" {
            let s: Value = serde_json::from_str(&ev.data).expect("status JSON");
            if s["slots"][1]["weight"] == 10 {
                break s;
            }
        }
    };
    assert!(got.contains(&"weights_set".to_owned()), "{got:?}");
    assert_eq!(weights["slots"][0]["weight"], 90);

    // Shutdown ends it (the process would not end a connection of its own here).
    p.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if feed.next().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the feed did not end at shutdown");
}

#[test]
fn docs_status_page_md_documents_every_event_of_the_feed() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.md"))
        .expect("docs/status-page.md");
    let missing: Vec<&str> = mcpflip::control::protocol::Event::NAMES
        .iter()
        .chain(&["status", "recent", "lagged"])
        .copied()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/status-page.md: {missing:?}"
    );
}
