//! A fleet instance cut off from etcd but not from its clients (issue 15):
//! instance B runs in a network namespace of this test's own with two veth
//! links (tests/support/netns.rs), one its clients use and one it reaches
//! etcd through (via forwarders on the host side to the three loopback
//! members); instance A runs on the host. Cutting B's etcd link: B keeps
//! serving on its last table, refuses changes with `cluster_unavailable`,
//! says `cluster: disconnected since ...` in `status` and
//! `mcpflip_cluster_connected 0`, while A flips on. Restoring the link: B
//! reads the table again, adopts A's flip, and publishes its counts under a
//! new lease (A sees it again).
//!
//! Needs root for `ip netns`; fails (does not skip) with what to do otherwise.
//! Blue and green are the built-in MCP server, bound to the host side of the
//! clients' link so that both instances reach them.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::etcd::EtcdCluster;
use support::mcp::{get_text, http_client, initialize, post_json, HttpClient};
use support::netns::{self, Netns};
use support::proc::{ProxyProcess, BIN};
use support::{closed_port, ctl, TestConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use mcpflip::demo_server::{self, ServerConfig, Transport};

/// Forwards `addr:0` to `127.0.0.1:to`; returns the port it listens on.
async fn forwarder(addr: Ipv4Addr, to: u16, stop: CancellationToken) -> u16 {
    let l = TcpListener::bind((addr, 0)).await.expect("bind forwarder");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            tokio::spawn(async move {
                if let Ok(mut out) = TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

async fn slot_on(addr: Ipv4Addr, name: &str, stop: &CancellationToken) -> u16 {
    let l = TcpListener::bind((addr, 0)).await.expect("bind slot");
    let port = l.local_addr().expect("addr").port();
    let stop = stop.clone();
    let cfg = ServerConfig::new(name, Transport::Both);
    tokio::spawn(async move { demo_server::serve(l, cfg, stop).await });
    port
}

async fn whoami_new_session(client: &HttpClient, base: &str) -> String {
    let (status, sid, body) = post_json(client, &format!("{base}/mcp"), None, initialize()).await;
    assert_eq!(status, 200, "{body}");
    let sid = sid.expect("session id");
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}});
    let (status, _, body) = post_json(client, &format!("{base}/mcp"), Some(&sid), call).await;
    assert_eq!(status, 200, "{body}");
    ["blue", "green"]
        .into_iter()
        .find(|s| body.contains(&format!("\"text\":\"{s}\"")))
        .unwrap_or_else(|| panic!("neither blue nor green: {body}"))
        .to_owned()
}

async fn until_status(
    socket: &Path,
    proc: &ProxyProcess,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = ctl(socket, "status").await;
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}\nlast status: {s}\nits log:\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn instances(s: &Value) -> usize {
    s["cluster"]["instances"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_etcd_serves_refuses_changes_and_rejoins() {
    if let Err(why) = netns::available() {
        panic!("{why}");
    }
    let ns = Netns::create().unwrap_or_else(|e| panic!("cannot make the namespace: {e}"));
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let etcd = EtcdCluster::start(3);
    let blue = slot_on(ns.client_host, "blue", &stop).await;
    let green = slot_on(ns.client_host, "green", &stop).await;
    let mut via_link = Vec::new();
    for i in 0..3 {
        let port = forwarder(ns.etcd_host, etcd.client_port(i), stop.clone()).await;
        via_link.push(format!("\"http://{}:{port}\"", ns.etcd_host));
    }
    let config = |dir: &std::path::Path, name: &str, endpoints: String| {
        TestConfig::new(dir)
            .slot_url(
                "blue",
                &format!("http://{}:{blue}", ns.client_host),
                Some(100),
                None,
            )
            .slot_url(
                "green",
                &format!("http://{}:{green}", ns.client_host),
                Some(0),
                None,
            )
            .set("cluster", "etcd", endpoints)
            .set_str("cluster", "prefix", "/partition-test")
            .set_str("cluster", "instance", name)
            .set_str("cluster", "lease_ttl", "2s")
            .set_str("cluster", "request_timeout", "300ms")
    };

    // A on the host.
    let dir_a = tempfile::tempdir().expect("tempdir");
    let port_a = closed_port();
    let cfg_a = config(dir_a.path(), "edge-a", etcd.toml_endpoints()).listen_port(port_a);
    let sock_a = cfg_a.socket();
    let mut a = ProxyProcess::spawn(&cfg_a.write(), &sock_a, &[]);
    a.ready().await;

    // B in the namespace: clients on its link, etcd through the other.
    let dir_b = tempfile::tempdir().expect("tempdir");
    let (public_b, admin_b) = (
        SocketAddr::from((ns.client_ns, 18080)),
        SocketAddr::from((ns.client_ns, 18081)),
    );
    let cfg_b = config(dir_b.path(), "edge-b", format!("[{}]", via_link.join(", ")))
        .set_str("listen", "addr", public_b.to_string())
        .set_str("admin", "addr", admin_b.to_string());
    let sock_b = cfg_b.socket();
    let mut b = ProxyProcess::spawn_with(ns.command(BIN), &cfg_b.write(), &sock_b, &[]);
    b.ready().await;
    let base_b = format!("http://{public_b}");
    let client = http_client();

    until_status(&sock_a, &a, "A sees both instances", |s| instances(s) == 2).await;
    until_status(&sock_b, &b, "B sees both instances", |s| instances(s) == 2).await;
    assert_eq!(whoami_new_session(&client, &base_b).await, "blue");

    // Cut B off from etcd (not from its clients).
    ns.etcd_link(false);
    let s = until_status(&sock_b, &b, "B disconnected", |s| {
        s["cluster"]["connected"] == false
    })
    .await;
    assert!(
        s["cluster"]["disconnected_since_ms"].as_u64().is_some(),
        "{s}"
    );
    let r = ctl(&sock_b, "flip green --no-probe").await;
    assert_eq!(r["code"], "cluster_unavailable", "{r}");
    assert_eq!(
        whoami_new_session(&client, &base_b).await,
        "blue",
        "B serves on its last table"
    );
    let text = support::proc::ctl_env(&["status"], &[("MCPFLIP_SOCKET", &sock_b)]);
    assert!(
        text.stdout.contains("cluster: disconnected since"),
        "{}",
        text.stdout
    );
    let m = get_text(&client, &format!("http://{admin_b}/metrics")).await;
    assert!(m.contains("mcpflip_cluster_connected 0"), "{m}");

    // The rest of the fleet goes on: A flips, and B's lease runs out there.
    let r = ctl(&sock_a, "flip green --no-probe").await;
    assert_eq!(r["ok"], true, "{r}");
    until_status(&sock_a, &a, "B's lease expired", |s| instances(s) == 1).await;
    assert_eq!(
        whoami_new_session(&client, &base_b).await,
        "blue",
        "B still serves on the table it had"
    );

    // Link back: B adopts A's flip and publishes again under a new lease.
    ns.etcd_link(true);
    until_status(&sock_b, &b, "B back, on A's flip", |s| {
        s["cluster"]["connected"] == true && s["active"] == "green"
    })
    .await;
    assert_eq!(whoami_new_session(&client, &base_b).await, "green");
    until_status(&sock_a, &a, "A sees B again", |s| instances(s) == 2).await;
    let r = ctl(&sock_b, "flip blue --no-probe").await;
    assert_eq!(r["ok"], true, "{r}");
    until_status(&sock_a, &a, "A on B's flip", |s| s["active"] == "blue").await;
    drop(b);
    drop(a);
    drop(etcd);
}
