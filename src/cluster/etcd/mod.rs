//! A small etcd v3 client that speaks etcd's own JSON gateway (`POST
//! /v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, `/v3/lease/*`,
//! `/v3/auth/authenticate`) over the hyper client and rustls the proxy
//! already has. The `etcd-client` crate would need `protoc` at build time,
//! which a fresh machine does not have; the gateway is part of every etcd
//! since 3.4.
//!
//! What the edge needs of it: every request has a timeout per endpoint
//! ([`Settings::request_timeout`]); an endpoint that cannot be reached, does
//! not answer in time, or answers "unavailable" is skipped for the next one,
//! and the one that answered is tried first next time (so stopping one member
//! changes nothing); responses are read up to [`MAX_RESPONSE`] bytes; https
//! endpoints are verified against a CA and may be given a client certificate;
//! with a username, a token from `/v3/auth/authenticate` goes with every
//! request and is fetched again when etcd says it expired.
//!
//! Errors are typed ([`EtcdError`]): callers tell "etcd cannot be reached"
//! from "etcd refused" by the variant and by etcd's gRPC status code, never
//! by a message.

pub mod watch;
pub mod wire;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use watch::{Watch, WatchBatch, WatchEvent};
use wire::{code, GatewayError};
pub use wire::{EtcdError, Kv};

/// The largest response body read (a range over a fleet's prefix).
pub const MAX_RESPONSE: usize = 16 << 20;

/// How to reach etcd.
#[derive(Clone)]
pub struct Settings {
    /// `http://host:port` or `https://host:port`, tried in order.
    pub endpoints: Vec<String>,
    /// For https endpoints: the CA to verify them with and the client
    /// certificate to present (`None`: plain http only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub credentials: Option<Credentials>,
    /// How long one request may take on one endpoint.
    pub request_timeout: Duration,
}

/// An etcd user and its password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .field("credentials", &self.credentials)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A status that says "this member cannot serve now": another may.
fn transient(code: i32) -> bool {
    matches!(code, code::UNAVAILABLE | code::DEADLINE_EXCEEDED)
}

/// How one try on one endpoint failed.
enum Attempt {
    /// Not reached, reset, or not etcd's JSON: try the next endpoint.
    Transport(String),
    Status(GatewayError),
    TooLarge,
}

/// A comparison a transaction makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key was last changed at `revision` (0: it does not exist).
    ModRevision { key: Vec<u8>, revision: i64 },
    /// The key was created at `revision` (0: it does not exist).
    CreateRevision { key: Vec<u8>, revision: i64 },
    /// The key holds `value`.
    Value { key: Vec<u8>, value: Vec<u8> },
    /// The key exists (was created at some revision).
    Exists { key: Vec<u8> },
}

/// An operation of a transaction's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// Binds the existing `key` to `lease`, its value kept.
    Touch {
        key: Vec<u8>,
        lease: i64,
    },
    Get {
        key: Vec<u8>,
    },
    /// Whether `key` exists: a `Get` of the key alone (its entry in
    /// [`TxnOutcome::gets`] has no value), so that asking costs no value's
    /// bytes.
    Exists {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
}

/// A transaction: `success` runs when every comparison holds, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// How a transaction went.
#[derive(Debug, Clone, Default)]
pub struct TxnOutcome {
    pub succeeded: bool,
    /// The store's revision after it.
    pub revision: i64,
    /// What each `Get` (and `Exists`) of the branch that ran read, in order.
    pub gets: Vec<Vec<Kv>>,
    /// How many keys each `Delete` of the branch that ran removed, in order.
    pub deleted: Vec<i64>,
}

/// A lease etcd granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
}

struct Inner {
    endpoints: Vec<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
    credentials: Option<Credentials>,
    token: Mutex<Option<String>>,
}

/// A handle on etcd; clones share the connections and the token.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.inner.endpoints)
            .finish()
    }
}

impl Etcd {
    /// A client for `settings` (no connection is made yet).
    pub fn new(settings: Settings) -> Etcd {
        let tls = settings
            .tls
            .map(|c| rustls::ClientConfig::clone(&c))
            .unwrap_or_else(|| {
                // Plain http endpoints only: an empty root store is never used.
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.request_timeout));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Etcd {
            inner: Arc::new(Inner {
                endpoints: settings
                    .endpoints
                    .iter()
                    .map(|e| e.trim_end_matches('/').to_owned())
                    .collect(),
                client,
                timeout: settings.request_timeout,
                preferred: AtomicUsize::new(0),
                credentials: settings.credentials,
                token: Mutex::new(None),
            }),
        }
    }

    /// How long one request may take (`[cluster] request_timeout`).
    pub fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The endpoints, in the order they are tried from.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn token(&self) -> Option<String> {
        self.inner
            .token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Gets a fresh token for the configured user.
    async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some(c) = &self.inner.credentials else {
            return Ok(());
        };
        let body = to_body(&wire::AuthenticateRequest {
            name: &c.username,
            password: &c.password,
        })?;
        let r: wire::AuthenticateResponse = match self
            .send("/v3/auth/authenticate", &body, None)
            .await
            .and_then(|b| parse(&b))
        {
            Ok(r) => r,
            Err(EtcdError::Status { message, .. }) => {
                return Err(EtcdError::Auth {
                    username: c.username.clone(),
                    message,
                })
            }
            Err(e) => return Err(e),
        };
        if r.token.is_empty() {
            return Err(EtcdError::Auth {
                username: c.username.clone(),
                message: "etcd gave no token (is authentication enabled on this cluster?)".into(),
            });
        }
        *self.inner.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.token);
        Ok(())
    }

    /// One unary call: the token first when there is none yet, a fresh one
    /// once when etcd says it is no longer valid.
    async fn call<R: DeserializeOwned>(
        &self,
        path: &str,
        req: &impl Serialize,
    ) -> Result<R, EtcdError> {
        let body = to_body(req)?;
        if self.inner.credentials.is_some() && self.token().is_none() {
            self.authenticate().await?;
        }
        let mut fresh = false;
        loop {
            let token = self.token();
            match self.send(path, &body, token.as_deref()).await {
                Err(EtcdError::Status { code, .. })
                    if code == code::UNAUTHENTICATED
                        && !fresh
                        && self.inner.credentials.is_some() =>
                {
                    self.authenticate().await?;
                    fresh = true;
                }
                r => return r.and_then(|b| parse(&b)),
            }
        }
    }

    /// Sends `body` to `path` on one endpoint after another until one answers.
    async fn send(
        &self,
        path: &str,
        body: &Bytes,
        token: Option<&str>,
    ) -> Result<Bytes, EtcdError> {
        let n = self.inner.endpoints.len();
        let first = self.inner.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = String::from("no endpoint configured");
        for k in 0..n {
            let i = (first + k) % n;
            let endpoint = &self.inner.endpoints[i];
            let attempt = tokio::time::timeout(
                self.inner.timeout,
                self.attempt(endpoint, path, body, token),
            )
            .await;
            match attempt {
                Ok(Ok(answer)) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(_) => {
                    last = format!(
                        "{endpoint}: no answer within {}",
                        crate::config::duration_text(self.inner.timeout)
                    )
                }
                Ok(Err(Attempt::Transport(why))) => last = format!("{endpoint}: {why}"),
                Ok(Err(Attempt::Status(g))) if transient(g.code) => {
                    last = format!("{endpoint}: {} (gRPC status {})", g.message, g.code)
                }
                Ok(Err(Attempt::Status(g))) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Err(EtcdError::Status {
                        code: g.code,
                        message: g.message,
                    });
                }
                Ok(Err(Attempt::TooLarge)) => {
                    return Err(EtcdError::Protocol(format!(
                        "{endpoint}{path} answered more than {MAX_RESPONSE} bytes"
                    )))
                }
            }
        }
        Err(EtcdError::Unavailable { tried: n, last })
    }

    fn request(
        &self,
        endpoint: &str,
        path: &str,
        body: &Bytes,
        token: Option<&str>,
    ) -> Result<http::Request<Full<Bytes>>, Attempt> {
        let mut req = http::Request::post(format!("{endpoint}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, t);
        }
        req.body(Full::new(body.clone()))
            .map_err(|e| Attempt::Transport(format!("bad request: {e}")))
    }

    async fn attempt(
        &self,
        endpoint: &str,
        path: &str,
        body: &Bytes,
        token: Option<&str>,
    ) -> Result<Bytes, Attempt> {
        let req = self.request(endpoint, path, body, token)?;
        let resp = self
            .inner
            .client
            .request(req)
            .await
            .map_err(|e| Attempt::Transport(describe(&e)))?;
        let status = resp.status();
        let bytes = match Limited::new(resp.into_body(), MAX_RESPONSE).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(Attempt::TooLarge),
            Err(e) => return Err(Attempt::Transport(format!("reading the answer: {e}"))),
        };
        if status.is_success() {
            return Ok(bytes);
        }
        match serde_json::from_slice::<GatewayError>(&bytes) {
            Ok(g) if g.code != 0 => Err(Attempt::Status(g)),
            _ => Err(Attempt::Transport(format!(
                "HTTP {status} that is not etcd's (is this an etcd client URL?)"
            ))),
        }
    }

    /// The value of `key`, and the store's revision.
    pub async fn get(&self, key: &[u8]) -> Result<(Option<Kv>, i64), EtcdError> {
        let r: wire::RangeResponse = self
            .call(
                "/v3/kv/range",
                &wire::RangeRequest {
                    key,
                    range_end: &[],
                    keys_only: false,
                },
            )
            .await?;
        Ok((r.kvs.into_iter().next(), r.header.revision))
    }

    /// Every key that starts with `prefix`, and the store's revision.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<(Vec<Kv>, i64), EtcdError> {
        let end = wire::prefix_end(prefix);
        let r: wire::RangeResponse = self
            .call(
                "/v3/kv/range",
                &wire::RangeRequest {
                    key: prefix,
                    range_end: &end,
                    keys_only: false,
                },
            )
            .await?;
        Ok((r.kvs, r.header.revision))
    }

    /// Puts `value` at `key`, bound to `lease` (0: none); returns the new revision.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let r: wire::HeaderOnly = self
            .call(
                "/v3/kv/put",
                &wire::PutRequest {
                    key,
                    value,
                    lease,
                    ignore_value: false,
                },
            )
            .await?;
        Ok(r.header.revision)
    }

    /// Deletes `key`; returns how many keys went (0 or 1).
    pub async fn delete(&self, key: &[u8]) -> Result<i64, EtcdError> {
        let r: wire::DeleteResponse = self
            .call(
                "/v3/kv/deleterange",
                &wire::DeleteRequest {
                    key,
                    range_end: &[],
                },
            )
            .await?;
        Ok(r.deleted)
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnOutcome, EtcdError> {
        let compare = txn
            .compare
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => wire::CompareJson {
                    key,
                    target: "MOD",
                    result: "EQUAL",
                    mod_revision: Some(*revision),
                    create_revision: None,
                    value: None,
                },
                Compare::CreateRevision { key, revision } => wire::CompareJson {
                    key,
                    target: "CREATE",
                    result: "EQUAL",
                    mod_revision: None,
                    create_revision: Some(*revision),
                    value: None,
                },
                Compare::Value { key, value } => wire::CompareJson {
                    key,
                    target: "VALUE",
                    result: "EQUAL",
                    mod_revision: None,
                    create_revision: None,
                    value: Some(value),
                },
                Compare::Exists { key } => wire::CompareJson {
                    key,
                    target: "CREATE",
                    result: "GREATER",
                    mod_revision: None,
                    create_revision: Some(0),
                    value: None,
                },
            })
            .collect();
        let req = wire::TxnRequest {
            compare,
            success: request_ops(&txn.success),
            failure: request_ops(&txn.failure),
        };
        let r: wire::TxnResponse = self.call("/v3/kv/txn", &req).await?;
        let mut out = TxnOutcome {
            succeeded: r.succeeded,
            revision: r.header.revision,
            ..Default::default()
        };
        for resp in r.responses {
            if let Some(range) = resp.response_range {
                out.gets.push(range.kvs);
            }
            if let Some(d) = resp.response_delete_range {
                out.deleted.push(d.deleted);
            }
        }
        Ok(out)
    }

    /// A lock: creates `key` holding `value`, bound to a new lease of `ttl`,
    /// unless the key exists. `Ok(Ok(lease))` when this call took it (revoke
    /// the lease to release it), `Ok(Err(holder))` with the value of the key
    /// that is there.
    pub async fn try_lock(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Result<Lease, Vec<u8>>, EtcdError> {
        let lease = self.grant(ttl).await?;
        let txn = Txn {
            compare: vec![Compare::CreateRevision {
                key: key.to_vec(),
                revision: 0,
            }],
            success: vec![Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                lease: lease.id,
            }],
            failure: vec![Op::Get { key: key.to_vec() }],
        };
        match self.txn(&txn).await {
            Ok(out) if out.succeeded => Ok(Ok(lease)),
            Ok(out) => {
                let _ = self.revoke(lease.id).await;
                let holder = out
                    .gets
                    .into_iter()
                    .next()
                    .and_then(|kvs| kvs.into_iter().next())
                    .map(|kv| kv.value)
                    .unwrap_or_default();
                Ok(Err(holder))
            }
            Err(e) => {
                let _ = self.revoke(lease.id).await;
                Err(e)
            }
        }
    }

    /// Grants a lease of `ttl` (whole seconds, at least one).
    pub async fn grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        let secs = ttl.as_secs().max(1) as i64;
        let r: wire::LeaseResponse = self
            .call("/v3/lease/grant", &wire::LeaseGrantRequest { TTL: secs })
            .await?;
        if r.ID == 0 {
            return Err(EtcdError::Protocol("a lease grant without a lease".into()));
        }
        Ok(Lease {
            id: r.ID,
            ttl: Duration::from_secs(r.TTL.max(0) as u64),
        })
    }

    /// Renews `lease`; `Ok(None)` when etcd no longer has it (it expired).
    pub async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, EtcdError> {
        let r: wire::KeepAliveStream = self
            .call("/v3/lease/keepalive", &wire::LeaseId { ID: lease })
            .await?;
        Ok(r.result
            .filter(|l| l.TTL > 0)
            .map(|l| Duration::from_secs(l.TTL as u64)))
    }

    /// Revokes `lease` (its keys go with it); one etcd no longer has is fine.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self
            .call::<wire::HeaderOnly>("/v3/lease/revoke", &wire::LeaseId { ID: lease })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status_code() == Some(code::NOT_FOUND) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Watches every key under `prefix` from `start_revision` (0: from now).
    /// Returns once etcd confirmed the watch.
    pub async fn watch(&self, prefix: &[u8], start_revision: i64) -> Result<Watch, EtcdError> {
        let end = wire::prefix_end(prefix);
        let body = to_body(&wire::WatchCreate {
            create_request: wire::WatchCreateRequest {
                key: prefix,
                range_end: &end,
                start_revision,
            },
        })?;
        if self.inner.credentials.is_some() && self.token().is_none() {
            self.authenticate().await?;
        }
        let mut fresh = false;
        loop {
            let token = self.token();
            match self.open_watch(&body, token.as_deref()).await {
                // A watch refused for its token says so only in words; a
                // fresh token once, then the refusal stands.
                Err(EtcdError::Status { code, .. })
                    if code == code::UNAUTHENTICATED
                        && !fresh
                        && self.inner.credentials.is_some() =>
                {
                    self.authenticate().await?;
                    fresh = true;
                }
                r => return r,
            }
        }
    }

    async fn open_watch(&self, body: &Bytes, token: Option<&str>) -> Result<Watch, EtcdError> {
        let n = self.inner.endpoints.len();
        let first = self.inner.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = String::from("no endpoint configured");
        for k in 0..n {
            let i = (first + k) % n;
            let endpoint = &self.inner.endpoints[i];
            let opened = tokio::time::timeout(self.inner.timeout, async {
                let req =
                    self.request(endpoint, "/v3/watch", body, token)
                        .map_err(|a| match a {
                            Attempt::Transport(w) => w,
                            _ => "bad request".into(),
                        })?;
                let resp = self
                    .inner
                    .client
                    .request(req)
                    .await
                    .map_err(|e| describe(&e))?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status()));
                }
                let mut w = Watch::new(resp.into_body(), BytesMut::new());
                // The first message confirms the watch (or refuses it).
                let first = w.message().await.map_err(|e| e.to_string())?;
                Ok((w, first))
            })
            .await;
            match opened {
                Err(_) => {
                    last = format!(
                        "{endpoint}: no answer within {}",
                        crate::config::duration_text(self.inner.timeout)
                    )
                }
                Ok(Err(why)) => last = format!("{endpoint}: {why}"),
                Ok(Ok((w, first))) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    let created = first.result.as_ref().is_some_and(|r| r.created);
                    match watch::batch(first)? {
                        Some(WatchBatch::Canceled { reason }) => {
                            // Refused at creation, with a reason in words only.
                            // With a user, an expired token is the usual one:
                            // the caller fetches a fresh token once.
                            return Err(EtcdError::Status {
                                code: if self.inner.credentials.is_some() {
                                    code::UNAUTHENTICATED
                                } else {
                                    code::UNKNOWN
                                },
                                message: reason,
                            });
                        }
                        Some(other) => {
                            return Err(EtcdError::Protocol(format!(
                                "the watch began with {other:?} instead of its confirmation"
                            )))
                        }
                        None if created => return Ok(w),
                        None => {
                            return Err(EtcdError::Protocol(
                                "the watch did not begin with its confirmation".into(),
                            ))
                        }
                    }
                }
            }
        }
        Err(EtcdError::Unavailable { tried: n, last })
    }
}

fn request_ops(ops: &[Op]) -> Vec<wire::RequestOp<'_>> {
    ops.iter()
        .map(|op| match op {
            Op::Put { key, value, lease } => wire::RequestOp::RequestPut(wire::PutRequest {
                key,
                value,
                lease: *lease,
                ignore_value: false,
            }),
            Op::Touch { key, lease } => wire::RequestOp::RequestPut(wire::PutRequest {
                key,
                value: &[],
                lease: *lease,
                ignore_value: true,
            }),
            Op::Get { key } => wire::RequestOp::RequestRange(wire::RangeRequest {
                key,
                range_end: &[],
                keys_only: false,
            }),
            Op::Exists { key } => wire::RequestOp::RequestRange(wire::RangeRequest {
                key,
                range_end: &[],
                keys_only: true,
            }),
            Op::Delete { key } => wire::RequestOp::RequestDeleteRange(wire::DeleteRequest {
                key,
                range_end: &[],
            }),
        })
        .collect()
}

fn to_body(req: &impl Serialize) -> Result<Bytes, EtcdError> {
    serde_json::to_vec(req)
        .map(Bytes::from)
        .map_err(|e| EtcdError::Protocol(format!("cannot write the request: {e}")))
}

fn parse<R: DeserializeOwned>(body: &[u8]) -> Result<R, EtcdError> {
    serde_json::from_slice(body).map_err(|e| EtcdError::Protocol(format!("not etcd's JSON: {e}")))
}

/// A client error with its causes (hyper's own message is only the outermost).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}
