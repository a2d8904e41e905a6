//! The etcd client (`mcpflip::cluster::etcd`) against real etcd: a
//! three-member cluster of our own on loopback (tests/support/etcd.rs).
//! Keys, transactions, leases and watches; one member stopped changes
//! nothing and every member stopped is `Unavailable` until they are back;
//! https with a CA and a client certificate; a user and password whose
//! token expires; and, against loopback servers that are not etcd, the
//! response bound, the per-request timeout and failing over past them.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpflip::cluster::etcd::{
    Compare, Credentials, Etcd, EtcdError, Op, Settings, Txn, WatchBatch, WatchEvent,
};
use serde_json::{json, Value};
use support::etcd::EtcdCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn settings(endpoints: Vec<String>) -> Settings {
    Settings {
        endpoints,
        tls: None,
        credentials: None,
        request_timeout: Duration::from_secs(2),
    }
}

fn client(c: &EtcdCluster) -> Etcd {
    Etcd::new(settings(c.endpoints()))
}

/// Retries `f` until it succeeds (a cluster electing its leader answers
/// "unavailable" for a moment).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EtcdError>>,
{
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < end => {
                eprintln!("{what}: {e}; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_transactions_leases_and_watches() {
    let cluster = EtcdCluster::start(3);
    let etcd = client(&cluster);
    let rev = eventually("first put", || etcd.put(b"/t/a", b"1", 0)).await;
    let (kv, _) = etcd.get(b"/t/a").await.expect("get");
    let kv = kv.expect("the key is there");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"1"[..], rev));
    assert_eq!(etcd.get(b"/t/none").await.expect("get").0, None);

    // A watch from the next revision sees every change after it, in order.
    let mut watch = etcd.watch(b"/t/", rev + 1).await.expect("watch");

    // Compare-and-swap on the key's mod revision: one success, one refusal
    // that reads back what is there.
    let cas = |expect: i64, value: &[u8]| Txn {
        compare: vec![Compare::ModRevision {
            key: b"/t/a".to_vec(),
            revision: expect,
        }],
        success: vec![Op::Put {
            key: b"/t/a".to_vec(),
            value: value.to_vec(),
            lease: 0,
        }],
        failure: vec![Op::Get {
            key: b"/t/a".to_vec(),
        }],
    };
    let ok = etcd.txn(&cas(rev, b"2")).await.expect("txn");
    assert!(ok.succeeded);
    let refused = etcd.txn(&cas(rev, b"3")).await.expect("txn");
    assert!(!refused.succeeded);
    assert_eq!(refused.gets[0][0].value, b"2");
    assert_eq!(refused.gets[0][0].mod_revision, ok.revision);

    // Create-if-absent: once.
    let create = Txn {
        compare: vec![Compare::CreateRevision {
            key: b"/t/lock".to_vec(),
            revision: 0,
        }],
        success: vec![Op::Put {
            key: b"/t/lock".to_vec(),
            value: b"me".to_vec(),
            lease: 0,
        }],
        failure: vec![],
    };
    assert!(etcd.txn(&create).await.expect("txn").succeeded);
    assert!(!etcd.txn(&create).await.expect("txn").succeeded);
    let del = Txn {
        compare: vec![Compare::Value {
            key: b"/t/lock".to_vec(),
            value: b"me".to_vec(),
        }],
        success: vec![Op::Delete {
            key: b"/t/lock".to_vec(),
        }],
        failure: vec![],
    };
    let d = etcd.txn(&del).await.expect("txn");
    assert_eq!((d.succeeded, d.deleted.as_slice()), (true, &[1][..]));

    // A key bound to a lease lives while it is kept alive and goes with it.
    let lease = etcd.grant(Duration::from_secs(5)).await.expect("grant");
    assert_eq!(lease.ttl, Duration::from_secs(5));
    etcd.put(b"/t/leased", b"x", lease.id).await.expect("put");
    assert!(etcd
        .keep_alive(lease.id)
        .await
        .expect("keepalive")
        .is_some());
    etcd.revoke(lease.id).await.expect("revoke");
    assert_eq!(etcd.get(b"/t/leased").await.expect("get").0, None);
    assert_eq!(etcd.keep_alive(lease.id).await.expect("keepalive"), None);
    etcd.revoke(lease.id).await.expect("revoking twice is fine");
    let (all, _) = etcd.get_prefix(b"/t/").await.expect("prefix");
    assert_eq!(
        all.iter().map(|k| k.key.as_slice()).collect::<Vec<_>>(),
        vec![&b"/t/a"[..]]
    );

    let mut seen = Vec::new();
    while seen.len() < 5 {
        match tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch events")
            .expect("watch")
        {
            WatchBatch::Events { events, .. } => seen.extend(events),
            other => panic!("{other:?}"),
        }
    }
    let shape: Vec<(String, bool)> = seen
        .iter()
        .map(|e| match e {
            WatchEvent::Put(kv) => (String::from_utf8_lossy(&kv.key).into_owned(), true),
            WatchEvent::Delete { key, .. } => (String::from_utf8_lossy(key).into_owned(), false),
        })
        .collect();
    let expected: Vec<(String, bool)> = [
        ("/t/a", true),
        ("/t/lock", true),
        ("/t/lock", false),
        ("/t/leased", true),
        ("/t/leased", false),
    ]
    .iter()
    .map(|(k, put)| ((*k).to_owned(), *put))
    .collect();
    assert_eq!(shape, expected);

    // A watch from a compacted revision says so.
    compact(&cluster.endpoints()[0], ok.revision + 1).await;
    let mut old = etcd.watch(b"/t/", rev).await.expect("watch");
    assert!(matches!(
        old.next().await.expect("message"),
        WatchBatch::Compacted { compact_revision } if compact_revision > rev
    ));
}

/// POSTs raw JSON to an etcd member (for what the client does not do:
/// compaction, users and roles).
async fn raw(endpoint: &str, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let client = support::mcp::http_client();
    let mut req =
        http::Request::post(format!("{endpoint}{path}")).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let resp = client
        .request(
            req.body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .expect("request"),
        )
        .await
        .expect("etcd answers");
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn compact(endpoint: &str, revision: i64) {
    let (status, v) = raw(
        endpoint,
        "/v3/kv/compaction",
        json!({"revision": revision.to_string()}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_stopped_changes_nothing_and_all_stopped_is_unavailable() {
    let mut cluster = EtcdCluster::start(3);
    let etcd = client(&cluster);
    let rev = eventually("first put", || etcd.put(b"/f/k", b"0", 0)).await;
    // The watch is on the first member, the one every request prefers now.
    let mut watch = etcd.watch(b"/f/", rev + 1).await.expect("watch");

    cluster.stop(0);
    // Requests go to the next member; a quorum of two still writes.
    for i in 1..=5u8 {
        let started = Instant::now();
        etcd.put(b"/f/k", &[b'0' + i], 0)
            .await
            .unwrap_or_else(|e| panic!("put {i} with one member down: {e}"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a request waited out the stopped member"
        );
    }
    // The watch on the stopped member ends; watching again from after the
    // last change seen goes to a member that is up and misses nothing.
    let mut last = rev;
    let mut values = Vec::new();
    loop {
        match watch.next().await {
            Ok(WatchBatch::Events { events, .. }) => {
                for e in events {
                    if let WatchEvent::Put(kv) = e {
                        last = kv.mod_revision;
                        values.push(kv.value[0]);
                    }
                }
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                break;
            }
        }
    }
    let mut watch = etcd.watch(b"/f/", last + 1).await.expect("watch again");
    while values.len() < 5 {
        match tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("events")
            .expect("watch")
        {
            WatchBatch::Events { events, .. } => {
                for e in events {
                    if let WatchEvent::Put(kv) = e {
                        values.push(kv.value[0]);
                    }
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(values, b"12345");

    // Every member stopped: a typed "cannot be reached", in bounded time.
    cluster.stop_all();
    let started = Instant::now();
    let e = etcd.get(b"/f/k").await.expect_err("nothing answers");
    assert!(e.is_unavailable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    assert!(etcd
        .watch(b"/f/", 0)
        .await
        .expect_err("no watch")
        .is_unavailable());

    // Back: the same client works again.
    cluster.restart_all();
    let (kv, _) = eventually("get after restart", || etcd.get(b"/f/k")).await;
    assert_eq!(kv.map(|k| k.value), Some(b"5".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, server, server_key, client_cert, client_key] = support::pki::certificates(dir.path());
    let arg = |k: &str, p: &Path| format!("--{k}={}", p.display());
    let cluster = EtcdCluster::start_with(
        1,
        &[
            arg("cert-file", &server),
            arg("key-file", &server_key),
            arg("trusted-ca-file", &ca),
            "--client-cert-auth".into(),
        ],
    );
    let pair = mcpflip::config::CertPair {
        cert: client_cert.clone(),
        key: client_key.clone(),
    };
    let tls = |identity: Option<&mcpflip::config::CertPair>, ca: &Path| {
        Some(Arc::new(
            mcpflip::tls::client_config_with_identity(Some(ca), identity).expect("tls"),
        ))
    };
    let with = Etcd::new(Settings {
        tls: tls(Some(&pair), &ca),
        ..settings(cluster.endpoints())
    });
    eventually("put over https", || with.put(b"/tls/k", b"v", 0)).await;
    let (kv, _) = with.get(b"/tls/k").await.expect("get");
    assert_eq!(kv.map(|k| k.value), Some(b"v".to_vec()));
    let mut w = with.watch(b"/tls/", 0).await.expect("a watch over https");
    with.put(b"/tls/k", b"w", 0).await.expect("put");
    assert!(matches!(
        w.next().await.expect("watch"),
        WatchBatch::Events { .. }
    ));

    // No client certificate: etcd refuses the handshake.
    let without = Etcd::new(Settings {
        tls: tls(None, &ca),
        ..settings(cluster.endpoints())
    });
    assert!(without
        .get(b"/tls/k")
        .await
        .expect_err("refused")
        .is_unavailable());
    // A server certificate from another CA: refused by the client.
    let other = tempfile::tempdir().expect("tempdir");
    let [other_ca, ..] = support::pki::certificates(other.path());
    let stranger = Etcd::new(Settings {
        tls: tls(Some(&pair), &other_ca),
        ..settings(cluster.endpoints())
    });
    let e = stranger.get(b"/tls/k").await.expect_err("unknown CA");
    assert!(e.is_unavailable(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_token_expires_and_one_without_permission() {
    // Simple tokens live one second here, so expiry is quick to reach.
    let cluster = EtcdCluster::start_with(1, &["--auth-token-ttl=1".into()]);
    let ep = cluster.endpoints()[0].clone();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let admin = |path: &'static str, body: Value| {
        let ep = ep.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                let (status, v) = raw(&ep, path, body.clone(), None).await;
                if status == 200 {
                    return;
                }
                assert!(Instant::now() < end, "{path}: {status} {v}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    admin(
        "/v3/auth/user/add",
        json!({"name": "root", "password": "rootpw"}),
    )
    .await;
    admin("/v3/auth/role/add", json!({"name": "root"})).await;
    admin(
        "/v3/auth/user/grant",
        json!({"user": "root", "role": "root"}),
    )
    .await;
    admin(
        "/v3/auth/user/add",
        json!({"name": "edge", "password": "edgepw"}),
    )
    .await;
    admin("/v3/auth/role/add", json!({"name": "fleet"})).await;
    admin(
        "/v3/auth/role/grant",
        json!({"name": "fleet", "perm": {"permType": "READWRITE", "key": b64("/a/"), "range_end": b64("/a0")}}),
    )
    .await;
    admin(
        "/v3/auth/user/grant",
        json!({"user": "edge", "role": "fleet"}),
    )
    .await;
    admin("/v3/auth/enable", json!({})).await;

    let creds = |user: &str, password: &str| Settings {
        credentials: Some(Credentials {
            username: user.into(),
            password: password.into(),
        }),
        ..settings(vec![ep.clone()])
    };
    let edge = Etcd::new(creds("edge", "edgepw"));
    edge.put(b"/a/k", b"1", 0).await.expect("put with a token");
    let mut w = edge.watch(b"/a/", 0).await.expect("a watch with a token");
    // Outside its role: etcd's permission error, by its code.
    let e = edge.put(b"/b/k", b"1", 0).await.expect_err("not its keys");
    assert_eq!(e.status_code(), Some(7), "{e}");

    // Wait until a token taken now is refused: the client's older one is
    // too. A use renews a simple token, so look less often than its TTL.
    let (_, v) = raw(
        &ep,
        "/v3/auth/authenticate",
        json!({"name": "edge", "password": "edgepw"}),
        None,
    )
    .await;
    let token = v["token"].as_str().expect("token").to_owned();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (status, _) = raw(
            &ep,
            "/v3/kv/range",
            json!({"key": b64("/a/k")}),
            Some(&token),
        )
        .await;
        if status == 401 {
            break;
        }
        assert!(Instant::now() < end, "the token never expired");
    }
    // The client fetches a fresh token by itself.
    edge.put(b"/a/k", b"2", 0)
        .await
        .expect("put after the token expired");
    let (kv, _) = edge.get(b"/a/k").await.expect("get");
    assert_eq!(kv.map(|k| k.value), Some(b"2".to_vec()));
    assert!(matches!(
        w.next().await.expect("watch"),
        WatchBatch::Events { .. }
    ));

    let wrong = Etcd::new(creds("edge", "nope"));
    match wrong.get(b"/a/k").await {
        Err(EtcdError::Auth { username, .. }) => assert_eq!(username, "edge"),
        other => panic!("{other:?}"),
    }
    let anonymous = Etcd::new(settings(vec![ep.clone()]));
    let e = anonymous.get(b"/a/k").await.expect_err("no user");
    assert!(matches!(e, EtcdError::Status { .. }), "{e}");
}

/// A loopback server that answers every connection with `answer` (or
/// never answers when it is `None`); returns its URL.
async fn not_etcd(answer: Option<Vec<u8>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                match answer {
                    Some(a) => {
                        let _ = s.write_all(&a).await;
                    }
                    None => {
                        // Hold the connection without a word.
                        let _ = s.read(&mut buf).await;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_are_not_etcd_are_skipped_or_bounded() {
    let cluster = EtcdCluster::start(1);
    let real = cluster.endpoints()[0].clone();
    let silent = not_etcd(None).await;
    let html = not_etcd(Some(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
            .to_vec(),
    ))
    .await;
    let closed = format!("http://127.0.0.1:{}", support::closed_port());
    // Each of these is skipped for the next endpoint: silence after the
    // request timeout, a refused connection, an answer that is not etcd's.
    let etcd = Etcd::new(Settings {
        request_timeout: Duration::from_millis(500),
        ..settings(vec![silent.clone(), closed.clone(), html.clone(), real])
    });
    eventually("put past three bad endpoints", || {
        etcd.put(b"/n/k", b"v", 0)
    })
    .await;
    // The endpoint that answered is tried first from then on.
    let started = Instant::now();
    etcd.get(b"/n/k").await.expect("get");
    assert!(started.elapsed() < Duration::from_millis(500));

    let none = Etcd::new(Settings {
        request_timeout: Duration::from_millis(300),
        ..settings(vec![silent, closed, html])
    });
    match none.get(b"/n/k").await {
        Err(EtcdError::Unavailable { tried, .. }) => assert_eq!(tried, 3),
        other => panic!("{other:?}"),
    }

    // An answer larger than the bound is refused, not read whole.
    let huge = mcpflip::cluster::etcd::MAX_RESPONSE + 1;
    let mut big = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {huge}\r\n\r\n"
    )
    .into_bytes();
    big.extend(std::iter::repeat_n(b' ', huge));
    let flood = Etcd::new(settings(vec![not_etcd(Some(big)).await]));
    assert!(matches!(
        flood.get(b"/n/k").await,
        Err(EtcdError::Protocol(_))
    ));
}
