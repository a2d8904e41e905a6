//! `[listen] tls.acme` against a real ACME CA: Let's Encrypt's test server,
//! Pebble (Debian's `pebble`, unpacked by `tests/tools/install.sh pebble`),
//! whose validation authority resolves the domain through
//! pebble-challtestsrv's DNS (every name: 127.0.0.1) and connects to the
//! listener's port for `tls-alpn-01`, as Let's Encrypt does on port 443.
//!
//! Proven here: a listener that starts with no certificate serves a
//! placeholder, answers the CA's challenge itself, and serves the issued
//! certificate (which chains to Pebble's root) from the next handshake,
//! with its expiry in the gauge and the files written; a restart with a
//! certificate not yet due orders nothing and reuses the account; one whose
//! certificate is due orders a new one with the same account.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::pki::Pki;
use support::{closed_port, TestConfig};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const DOMAIN: &str = "mcp.example.test";

/// A child process killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble and its DNS server, validating on `tls_port`.
struct Pebble {
    _dns: Kill,
    _ca: Kill,
    directory: String,
    management: String,
    /// The CA of Pebble's own HTTPS.
    https_ca: PathBuf,
}

fn pebble_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PEBBLE_DIR") {
        return PathBuf::from(dir).join(name);
    }
    support::tools::ensure("pebble");
    support::tools::dir().join("pebble/usr/bin").join(name)
}

impl Pebble {
    async fn start(dir: &Path, tls_port: u16) -> Pebble {
        Self::start_with(dir, tls_port, None).await
    }

    /// As `start`; with `eab` (key id, base64url HMAC key) Pebble asks every
    /// new account for external account binding.
    async fn start_with(dir: &Path, tls_port: u16, eab: Option<(&str, &str)>) -> Pebble {
        let pki = Pki::new(&dir.join("pebble-pki"));
        let (dns, dns_mgmt) = (closed_port(), closed_port());
        let challtestsrv = Command::new(pebble_bin("pebble-challtestsrv"))
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv starts");
        let (listen, management) = (closed_port(), closed_port());
        let config = dir.join("pebble.json");
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": pki.server,
            "privateKey": pki.server_key,
            "httpPort": closed_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab.is_some(),
        });
        if let Some((kid, key)) = eab {
            pebble["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string())
            .expect("pebble config");
        let ca = Command::new(pebble_bin("pebble"))
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random sleep before validating, no nonce refused on purpose.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble starts");
        let p = Pebble {
            _dns: Kill(challtestsrv),
            _ca: Kill(ca),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: format!("https://127.0.0.1:{management}"),
            https_ca: pki.ca.clone(),
        };
        let directory = p.directory.clone();
        support::until_async("Pebble's directory answers", || async {
            get(&p.https_ca, &directory).await.is_some()
        })
        .await;
        let mut p = p;
        assert!(
            p._dns.0.try_wait().expect("dns server").is_none(),
            "pebble-challtestsrv exited (run it by hand to see why)"
        );
        p
    }

    /// Pebble's root for the certificates it issues (it makes one per run).
    async fn root(&self, dir: &Path) -> PathBuf {
        let pem = get(&self.https_ca, &format!("{}/roots/0", self.management))
            .await
            .expect("Pebble's root");
        let path = dir.join("pebble-root.pem");
        std::fs::write(&path, pem).expect("write root");
        path
    }
}

/// The body of a GET of `url` over HTTPS trusting `ca`, if it answered 200.
async fn get(ca: &Path, url: &str) -> Option<String> {
    let tls = mcpflip::tls::client_config(Some(ca)).expect("client tls");
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The certificate the listener at `port` presents for `DOMAIN` to a client
/// that trusts `root` only: its DER, or the handshake's error.
async fn served(port: u16, root: &Path) -> Result<Vec<u8>, String> {
    let tls = mcpflip::tls::client_config(Some(root)).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).expect("name");
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = stream.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| "no certificate".to_owned())
}

/// `GET /healthz` over HTTPS to the listener at `port` as `DOMAIN`, trusting `root`.
async fn healthz(port: u16, root: &Path) -> u16 {
    let tls = mcpflip::tls::client_config(Some(root)).expect("client tls");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("http/1.1");
    tokio::spawn(conn);
    let req = http::Request::get("/healthz")
        .header("host", DOMAIN)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send.send_request(req)
        .await
        .expect("answer")
        .status()
        .as_u16()
}

fn config(dir: &Path, port: u16, blue: u16, pebble: &Pebble, renew_before: &str) -> TestConfig {
    acme_config(
        dir,
        port,
        blue,
        &pebble.directory,
        &pebble.https_ca,
        &format!("email = \"ops@example.test\", renew_before = \"{renew_before}\""),
    )
}

/// A proxy on `port` in front of `blue` whose certificate (`site.crt` in
/// `dir`) comes from the ACME CA at `directory` (HTTPS checked against
/// `ca`), with `extra` keys in `tls.acme`.
fn acme_config(
    dir: &Path,
    port: u16,
    blue: u16,
    directory: &str,
    ca: &Path,
    extra: &str,
) -> TestConfig {
    let q = |p: &Path| support::config::q(p.display().to_string());
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    TestConfig::new(dir)
        .slot("blue", blue, 100)
        .listen_port(port)
        .set("proxy", "allowed_hosts", format!("[\"{DOMAIN}\"]"))
        .set(
            "listen",
            "tls",
            format!(
                "{{ cert = {}, key = {}, acme = {{ domains = [\"{DOMAIN}\"], directory = {}, directory_ca = {}{extra} }} }}",
                q(&dir.join("site.crt")),
                q(&dir.join("site.key")),
                support::config::q(directory),
                q(ca),
            ),
        )
}

/// The slot every test's proxy is in front of (the built-in MCP server).
async fn blue(stop: &CancellationToken) -> u16 {
    support::upstream(
        mcpflip::demo_server::ServerConfig::new("blue", mcpflip::demo_server::Transport::Both),
        stop,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_gets_its_certificate_from_an_acme_ca_and_renews_it() {
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let port = closed_port();
    let pebble = Pebble::start(d, port).await;
    let root = pebble.root(d).await;
    let blue = blue(&stop).await;

    // No certificate yet: the proxy starts on a placeholder and orders one.
    let p = support::start(config(d, port, blue, &pebble, "30d").load()).await;
    support::until_async("the issued certificate served", || async {
        served(port, &root).await.is_ok()
    })
    .await;
    let first = served(port, &root).await.expect("served");
    let names = mcpflip::tls::certificate_names(&d.join("site.crt")).expect("cert file");
    assert_eq!(names, [DOMAIN]);
    assert!(d.join("site.key").exists());
    assert!(d.join("site.crt.account.json").exists());
    // The listener serves HTTP over it.
    assert_eq!(healthz(port, &root).await, 200);
    // `status` and the counter say so; its expiry is in the gauge, without a reload.
    let status = support::ctl(&config(d, port, blue, &pebble, "30d").socket(), "status").await;
    assert_eq!(status["acme"]["issued"], 1, "{status}");
    assert_eq!(status["acme"]["failed"], 0, "{status}");
    assert_eq!(status["acme"]["domains"][0], DOMAIN, "{status}");
    assert!(
        status["acme"]["next_check_ms"].as_u64().is_some(),
        "{status}"
    );
    let m = support::metrics(p.admin_addr).await;
    assert_eq!(
        support::metric(&m, "mcpflip_acme_orders_total{result=\"issued\"}"),
        1,
        "{m}"
    );
    let series = format!(
        "mcpflip_certificate_expiry_timestamp_seconds{{name=\"{DOMAIN}\",file=\"{}\"}}",
        d.join("site.crt").display()
    );
    assert!(support::metric(&m, &series) > 0, "{m}");
    p.shutdown().await;

    // Started again with the certificate not due: nothing is ordered (the
    // same certificate is served).
    let cert = std::fs::read(d.join("site.crt")).expect("cert");
    let p = support::start(config(d, port, blue, &pebble, "30d").load()).await;
    // An order takes Pebble about a second here.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served(port, &root).await.expect("served"), first);
    assert_eq!(std::fs::read(d.join("site.crt")).expect("cert"), cert);
    p.shutdown().await;

    // Due (renew_before longer than its life): a new one, same account.
    let account = std::fs::read(d.join("site.crt.account.json")).expect("account");
    let p = support::start(config(d, port, blue, &pebble, "100000d").load()).await;
    support::until_async("a renewed certificate served", || async {
        served(port, &root).await.is_ok_and(|c| c != first)
    })
    .await;
    assert_eq!(
        std::fs::read(d.join("site.crt.account.json")).expect("account"),
        account,
        "the account is reused"
    );
    p.shutdown().await;
    stop.cancel();
}

/// A CA that cannot be reached: the listener still starts, on a placeholder
/// no client trusts, and `status` and the counter say why the order failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_acme_ca_is_unreachable_serves_a_placeholder_and_says_why() {
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let port = closed_port();
    let pki = Pki::new(&d.join("pki"));
    let blue = blue(&stop).await;
    let unreachable = format!("https://127.0.0.1:{}/dir", closed_port());
    let cfg = acme_config(d, port, blue, &unreachable, &pki.ca, "");
    let p = support::start(cfg.load()).await;
    support::until_async("the failed order in status", || async {
        support::ctl(&cfg.socket(), "status").await["acme"]["failed"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })
    .await;
    let status = support::ctl(&cfg.socket(), "status").await;
    assert_eq!(status["acme"]["issued"], 0, "{status}");
    let error = status["acme"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("a new account at https://127.0.0.1:"),
        "{status}"
    );
    // The status page says so too.
    let page = support::mcp::get_text(
        &support::mcp::http_client(),
        &format!("http://{}/", p.admin_addr),
    )
    .await;
    assert!(
        page.contains(
            "<p class=\"acme-error\">last order failed: a new account at https://127.0.0.1:"
        ),
        "{page}"
    );
    let m = support::metrics(p.admin_addr).await;
    assert_eq!(
        support::metric(&m, "mcpflip_acme_orders_total{result=\"failed\"}"),
        1,
        "{m}"
    );
    // The listener presents a certificate, which no CA vouches for.
    let refused = served(port, &pki.ca)
        .await
        .expect_err("an untrusted placeholder");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    assert!(!d.join("site.crt").exists(), "nothing written");
    p.shutdown().await;
    stop.cancel();
}

/// Two instances' worth of a fleet: etcd, Pebble validating on B's port
/// only, the slot, and a home for each instance under one directory.
struct AcmeFleet {
    stop: CancellationToken,
    dir: tempfile::TempDir,
    etcd: support::etcd::EtcdCluster,
    pebble: Pebble,
    /// Pebble's root for the certificates it issues.
    root: PathBuf,
    blue: u16,
    port_a: u16,
    port_b: u16,
}

impl AcmeFleet {
    async fn start() -> AcmeFleet {
        let stop = CancellationToken::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = support::etcd::EtcdCluster::start(1);
        let (port_a, port_b) = (closed_port(), closed_port());
        let pebble = Pebble::start(dir.path(), port_b).await;
        let root = pebble.root(dir.path()).await;
        let blue = blue(&stop).await;
        AcmeFleet {
            stop,
            dir,
            etcd,
            pebble,
            root,
            blue,
            port_a,
            port_b,
        }
    }

    /// Instance `name` ("a" or "b", on its port), at home in `dir/name`,
    /// with `extra` keys in `tls.acme` (after the e-mail; `renew_before` is
    /// left to its default, a third of the certificate's lifetime).
    async fn instance(
        &self,
        name: &str,
        extra: &str,
    ) -> (
        support::proc::ProxyProcess,
        TestConfig,
        std::net::SocketAddr,
    ) {
        let port = if name == "a" {
            self.port_a
        } else {
            self.port_b
        };
        let home = self.dir.path().join(name);
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
        std::fs::create_dir_all(&home).expect("dir");
        let cfg = acme_config(
            &home,
            port,
            self.blue,
            &self.pebble.directory,
            &self.pebble.https_ca,
            &format!("email = \"ops@example.test\"{extra}"),
        )
        .set_str("admin", "addr", admin.to_string())
        .set("cluster", "etcd", self.etcd.toml_endpoints())
        .set_str("cluster", "prefix", "/acme-test")
        .set_str("cluster", "instance", name)
        .set_str("cluster", "lease_ttl", "2s");
        let socket = cfg.socket();
        let file = cfg.write();
        let mut proc = support::proc::ProxyProcess::spawn(&file, &socket, &[]);
        proc.ready().await;
        (proc, cfg, admin)
    }
}

/// Waits (60 s at most) until the listener at `port` serves a certificate
/// `root` vouches for; `logs` says why not.
async fn until_served(port: u16, root: &Path, logs: impl Fn() -> String) {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while served(port, root).await.is_err() {
        assert!(
            tokio::time::Instant::now() < end,
            "the listener on {port} never got its certificate:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// In a fleet the CA's validation may reach any instance: the instance that
/// orders publishes its challenge answer through etcd and every instance
/// serves it. Here Pebble validates on instance B's port only, so instance
/// A's certificate can come only through B. With `share = false` each
/// orders its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_another_instance_answers_the_challenge() {
    let f = AcmeFleet::start().await;
    let (d, root, port_a, port_b) = (f.dir.path(), &f.root, f.port_a, f.port_b);
    let mut procs = Vec::new();
    for name in ["b", "a"] {
        procs.push(f.instance(name, ", share = false").await.0);
    }
    until_served(port_a, root, || {
        format!(
            "a's log:\n{}\nb's log:\n{}",
            procs[1].stderr(),
            procs[0].stderr()
        )
    })
    .await;
    let names = mcpflip::tls::certificate_names(&d.join("a/site.crt")).expect("a's cert file");
    assert_eq!(names, [DOMAIN]);
    // B got its own too (validated on its own port).
    support::until_async("b's certificate served", || async {
        served(port_b, root).await.is_ok()
    })
    .await;
    assert_ne!(
        served(port_a, root).await.expect("a's"),
        served(port_b, root).await.expect("b's"),
        "with share = false each instance has a certificate of its own"
    );
    drop(procs);
    f.stop.cancel();
}

/// `tls.acme.share` (the default): the certificate one instance ordered is
/// kept in etcd, and an instance started later on a fresh disk takes it
/// instead of ordering: both serve the same certificate, the CA saw one
/// order, and the second instance's files hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_one_order_serves_every_instance() {
    let f = AcmeFleet::start().await;
    let (d, root, port_a, port_b) = (f.dir.path(), &f.root, f.port_a, f.port_b);
    let (b, _, _) = f.instance("b", "").await;
    until_served(port_b, root, || b.stderr()).await;
    let (a, a_cfg, a_admin) = f.instance("a", "").await;
    until_served(port_a, root, || a.stderr()).await;
    assert_eq!(
        served(port_a, root).await.expect("a's"),
        served(port_b, root).await.expect("b's"),
        "a serves the certificate b ordered"
    );
    assert_eq!(
        std::fs::read(d.join("a/site.crt")).expect("a's cert"),
        std::fs::read(d.join("b/site.crt")).expect("b's cert")
    );
    assert_eq!(
        std::fs::read(d.join("a/site.key")).expect("a's key"),
        std::fs::read(d.join("b/site.key")).expect("b's key")
    );
    let status = support::ctl(&a_cfg.socket(), "status").await;
    assert_eq!(status["acme"]["shared"], 1, "{status}");
    assert_eq!(status["acme"]["issued"], 0, "{status}");
    assert!(
        !d.join("a/site.crt.account.json").exists(),
        "a never talked to the CA"
    );
    let m = support::metrics(a_admin).await;
    assert_eq!(
        support::metric(&m, "mcpflip_acme_orders_total{result=\"shared\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        support::metric(&m, "mcpflip_acme_orders_total{result=\"issued\"}"),
        0,
        "{m}"
    );
    drop((a, b));
    f.stop.cancel();
}

/// A CA that asks for external account binding (ZeroSSL, Google Trust
/// Services): without `tls.acme.eab` the order fails and says why; with the
/// key id and HMAC key file the CA handed out, the certificate comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_asks_for_external_account_binding_gets_it() {
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let port = closed_port();
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with(d, port, Some(("kid-1", key))).await;
    let root = pebble.root(d).await;
    let blue = blue(&stop).await;
    // Without it: refused by the CA, the reason in status.
    let home = d.join("without");
    std::fs::create_dir_all(&home).expect("dir");
    let cfg = config(&home, port, blue, &pebble, "30d");
    let p = support::start(cfg.load()).await;
    support::until_async("the refused order in status", || async {
        support::ctl(&cfg.socket(), "status").await["acme"]["failed"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })
    .await;
    let status = support::ctl(&cfg.socket(), "status").await;
    let error = status["acme"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("a new account at"), "{status}");
    assert!(served(port, &root).await.is_err());
    p.shutdown().await;
    // With it.
    let home = d.join("with");
    std::fs::create_dir_all(&home).expect("dir");
    let key_file = home.join("eab.key");
    std::fs::write(&key_file, format!("{key}\n")).expect("key file");
    let eab = format!(
        "eab = {{ kid = \"kid-1\", hmac_key_file = {} }}",
        support::config::q(key_file.display().to_string())
    );
    let cfg = acme_config(&home, port, blue, &pebble.directory, &pebble.https_ca, &eab);
    let p = support::start(cfg.load()).await;
    support::until_async("the certificate served", || async {
        served(port, &root).await.is_ok()
    })
    .await;
    p.shutdown().await;
    stop.cancel();
}
