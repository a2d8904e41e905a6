//! Captured sessions shared by the fleet (`[drain] migrate = "replay"` with
//! `[cluster]`): a session begun through one instance moves through any, and
//! moves once for all of them.
//!
//! ```text
//! {prefix}.sessions/{sha256(id)}/record  {"init": .., "shaping": [..]}   written by the instance that captured it
//! {prefix}.sessions/{sha256(id)}/moved   {"slot", "generation", "inner"} compare-and-set by the instance that moved it
//! ```
//!
//! Beside the fleet's `{prefix}/`, not under it: the fleet's watch reads and
//! follows `{prefix}/`, and a record per session would reach every instance
//! at every write. A role granted `{prefix}` as a prefix covers both. The
//! key is a hash of the id the client holds, so that reading etcd's keys
//! gives no one a session to use; the id itself is never written.
//!
//! Expiry without an owner: a record outlives the instance that wrote it.
//! Every record is bound to a lease that this instance grants every
//! [`FleetSessions::period`] with a TTL of `migrate_idle` plus two periods, and
//! never keeps alive. Each period the sessions that had a request here since
//! the last one are bound to the new lease (both keys, values kept); the
//! others stay on an older lease and go with it once no instance saw them
//! for `migrate_idle`. A record is deleted when its session ends (DELETE, or
//! its slot's 404) through any instance.
//!
//! The request path only marks what changed (one map insert, at capture, at
//! a shaping request and at a session's end); this task writes them, batched
//! in transactions. Reads happen only where a session must move
//! (`proxy::migrate::migrate`, `Sessions::find`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::etcd::{Compare, Etcd, EtcdError, Kv, Op, Txn};
use crate::proxy::migrate::{
    Captured, Exported, ExportedMove, FleetMove, Mirror, MirrorFuture, Sessions, Unreadable,
};
use crate::stats::{FleetTaken, FleetWrite, ProxyStats};

/// Most operations in one transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 64;
/// Most bytes of values in one transaction (etcd's default request limit is
/// 1.5 MiB; a record is at most 64 KiB of `initialize` and 128 KiB of shaping).
const TXN_BYTES: usize = 512 * 1024;
/// The wait before a failed write is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Most reads of the fleet's records at once: any request with an id whose
/// slot is gone asks etcd for its record, and the ids are the client's to
/// choose; over this, reads wait their turn (up to `request_timeout`, then
/// the request is answered 503: its session may exist).
const MAX_FETCHING: usize = 32;

/// A session's record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    init: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shaping: Vec<String>,
}

/// A change to write.
#[derive(Debug, Clone)]
enum Pending {
    Put(Arc<Captured>),
    Delete,
}

/// The fleet's copy of the captured sessions (see the module's text).
#[derive(Debug)]
pub struct FleetSessions {
    etcd: Etcd,
    /// `{prefix}.sessions/`.
    namespace: String,
    idle: Duration,
    /// Changes not written yet, by session id: the latest wins.
    pending: Mutex<HashMap<Box<[u8]>, Pending>>,
    /// Most sessions with a change queued.
    max_pending: usize,
    wake: Notify,
    fetching: tokio::sync::Semaphore,
    /// The lease new writes are bound to (0: none granted yet).
    lease: AtomicI64,
    stats: Arc<ProxyStats>,
}

impl FleetSessions {
    pub fn new(
        etcd: Etcd,
        prefix: &str,
        idle: Duration,
        max_pending: usize,
        stats: Arc<ProxyStats>,
    ) -> Arc<FleetSessions> {
        Arc::new(FleetSessions {
            etcd,
            namespace: format!("{prefix}.sessions/"),
            idle,
            pending: Mutex::default(),
            max_pending,
            wake: Notify::new(),
            fetching: tokio::sync::Semaphore::new(MAX_FETCHING),
            lease: AtomicI64::new(0),
            stats,
        })
    }

    /// How often a new lease is granted and the sessions used since are
    /// bound to it: a quarter of `migrate_idle`, between 1 s and 5 min.
    pub fn period(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
    }

    /// The key of session `id`'s `part` (`record` or `moved`).
    fn key(&self, id: &[u8], part: &str) -> Vec<u8> {
        let mut k = String::with_capacity(self.namespace.len() + 64 + 1 + part.len());
        k.push_str(&self.namespace);
        crate::tls::sha256_hex(&mut k, id);
        k.push('/');
        k.push_str(part);
        k.into_bytes()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, id: &[u8], change: Pending) {
        {
            let mut pending = self.pending();
            if pending.len() >= self.max_pending && !pending.contains_key(id) {
                drop(pending);
                self.stats.count_fleet_write(FleetWrite::Dropped, 1);
                tracing::warn!("a captured session's change was not queued for the fleet: {} sessions wait already (migrate_max_sessions)", self.max_pending);
                return;
            }
            pending.insert(id.into(), change);
        }
        self.wake.notify_one();
    }

    /// Writes the queued changes and keeps the sessions used here alive,
    /// until `stop`; `sessions` is this process's store.
    pub async fn run(self: Arc<Self>, sessions: Weak<Sessions>, stop: CancellationToken) {
        let period = self.period();
        let mut renew = tokio::time::interval(period);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = renew.tick() => {
                    let Some(sessions) = sessions.upgrade() else { return };
                    // Bound to the lease granted before this one: the
                    // sessions used during the period that just ended.
                    if let Err(e) = self.renew(&sessions, period).await {
                        tracing::warn!(error = %e, "the fleet's session records could not be renewed; trying again in {}", humantime::format_duration(period));
                    }
                }
                _ = self.wake.notified() => {}
            }
            if let Err(e) = self.flush().await {
                // Once per outage at warn (it is retried every second).
                if !failing {
                    tracing::warn!(error = %e, "captured sessions could not be written to the fleet's etcd; trying again every second");
                }
                failing = true;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => self.wake.notify_one(),
                }
            } else if std::mem::take(&mut failing) {
                tracing::info!("captured sessions are written to the fleet's etcd again");
            }
        }
    }

    /// The lease to bind writes to, granted if there is none yet.
    async fn lease(&self) -> Result<i64, EtcdError> {
        match self.lease.load(Ordering::Acquire) {
            0 => self.grant().await,
            id => Ok(id),
        }
    }

    async fn grant(&self) -> Result<i64, EtcdError> {
        let lease = self.etcd.grant(self.idle + 2 * self.period()).await?;
        self.lease.store(lease.id, Ordering::Release);
        Ok(lease.id)
    }

    /// Grants the next lease and binds to it the sessions that had a request
    /// here within the last period (and a little more, for the clock's
    /// whole seconds), both keys where they exist: those this instance
    /// holds, and those another one holds that were used through this one
    /// (a client the load balancer moved here after its session began).
    async fn renew(&self, sessions: &Sessions, period: Duration) -> Result<(), EtcdError> {
        let lease = self.grant().await?;
        let mut used = sessions.used_within(period + Duration::from_secs(2));
        // A legacy session has no keys in etcd (its stream moves it, here
        // alone): one in a chunk would send the chunk key by key.
        used.retain(|c| !c.is_legacy());
        let mut keys = Vec::with_capacity(used.len() * 2);
        for c in &used {
            keys.push(self.key(c.id(), "record"));
            if c.moved_to().is_some() {
                keys.push(self.key(c.id(), "moved"));
            }
        }
        // Its record only: a move of it is renewed by the instances that
        // hold the session (and took the move).
        for id in sessions.take_foreign() {
            keys.push(self.key(&id, "record"));
        }
        for keys in keys.chunks(TXN_OPS) {
            // All of them, or (one is gone: its session ended through
            // another instance, a move is not recorded, or a client made
            // the id up) which still exist, in the same transaction.
            let all = Txn {
                compare: exists(keys),
                success: touch(keys, lease),
                failure: keys.iter().map(|k| Op::Exists { key: k.clone() }).collect(),
            };
            let out = self.etcd.txn(&all).await?;
            if out.succeeded {
                continue;
            }
            // Those that exist, in one more. A gone record is not written
            // again: an ended session stays ended. A made-up id costs no
            // transaction of its own (at most MAX_FOREIGN of them a period).
            let there: Vec<Vec<u8>> = if out.gets.len() == keys.len() {
                keys.iter()
                    .zip(&out.gets)
                    .filter(|(_, kvs)| !kvs.is_empty())
                    .map(|(k, _)| k.clone())
                    .collect()
            } else {
                // Not an answer per key: every key, each on its own below
                // if need be.
                keys.to_vec()
            };
            if there.is_empty() {
                continue;
            }
            let some = Txn {
                compare: exists(&there),
                success: touch(&there, lease),
                failure: vec![],
            };
            if self.etcd.txn(&some).await?.succeeded {
                continue;
            }
            // One of those ended meanwhile: each on its own (sessions that
            // existed a moment ago, not made-up ids).
            for key in there {
                let one = std::slice::from_ref(&key);
                let one = Txn {
                    compare: exists(one),
                    success: touch(one, lease),
                    failure: vec![],
                };
                self.etcd.txn(&one).await?;
            }
        }
        Ok(())
    }

    /// Writes what is queued, in transactions of at most [`TXN_OPS`]
    /// operations and [`TXN_BYTES`] of values. On a failure what was not
    /// written goes back in the queue (unless a later change of the same
    /// session came meanwhile).
    async fn flush(&self) -> Result<(), EtcdError> {
        let taken: Vec<(Box<[u8]>, Pending)> = self.pending().drain().collect();
        if taken.is_empty() {
            return Ok(());
        }
        let lease = match self.lease().await {
            Ok(l) => l,
            Err(e) => {
                self.requeue(taken);
                return Err(e);
            }
        };
        let mut rest = taken.as_slice();
        while !rest.is_empty() {
            let mut ops = Vec::new();
            let mut bytes = 0;
            let mut n = 0;
            for (id, change) in rest {
                if n > 0 && (ops.len() + 2 > TXN_OPS || bytes >= TXN_BYTES) {
                    break;
                }
                n += 1;
                match change {
                    Pending::Put(c) => {
                        let Some(value) = record_of(c) else { continue };
                        bytes += value.len();
                        ops.push(Op::Put {
                            key: self.key(id, "record"),
                            value,
                            lease,
                        });
                    }
                    Pending::Delete => {
                        ops.push(Op::Delete {
                            key: self.key(id, "record"),
                        });
                        ops.push(Op::Delete {
                            key: self.key(id, "moved"),
                        });
                    }
                }
            }
            let txn = Txn {
                compare: vec![],
                success: ops,
                failure: vec![],
            };
            if let Err(e) = self.etcd.txn(&txn).await {
                self.stats
                    .count_fleet_write(FleetWrite::Failed, rest.len() as u64);
                // An expired lease: grant another next time.
                if e.status_code() == Some(super::etcd::wire::code::NOT_FOUND) {
                    self.lease.store(0, Ordering::Release);
                }
                self.requeue(rest.to_vec());
                return Err(e);
            }
            self.stats.count_fleet_write(FleetWrite::Ok, n as u64);
            rest = &rest[n..];
        }
        Ok(())
    }

    fn requeue(&self, changes: Vec<(Box<[u8]>, Pending)>) {
        let mut pending = self.pending();
        for (id, change) in changes {
            pending.entry(id).or_insert(change);
        }
    }

    /// Both keys of session `id`, read at one revision.
    async fn read(&self, id: &[u8]) -> Result<(Option<Kv>, Option<Kv>), EtcdError> {
        let txn = Txn {
            compare: vec![],
            success: vec![
                Op::Get {
                    key: self.key(id, "record"),
                },
                Op::Get {
                    key: self.key(id, "moved"),
                },
            ],
            failure: vec![],
        };
        let mut gets = self.etcd.txn(&txn).await?.gets.into_iter();
        let first = |g: Option<Vec<Kv>>| g.and_then(|kvs| kvs.into_iter().next());
        let record = first(gets.next());
        let moved = first(gets.next());
        Ok((record, moved))
    }
}

/// Each of `keys` exists.
fn exists(keys: &[Vec<u8>]) -> Vec<Compare> {
    keys.iter()
        .map(|k| Compare::Exists { key: k.clone() })
        .collect()
}

/// Binds each of `keys` to `lease`, their values kept.
fn touch(keys: &[Vec<u8>], lease: i64) -> Vec<Op> {
    keys.iter()
        .map(|k| Op::Touch {
            key: k.clone(),
            lease,
        })
        .collect()
}

/// The record of captured session `c`; `None` when a body is not text (the
/// proxy captures JSON bodies only, so none in practice).
fn record_of(c: &Captured) -> Option<Vec<u8>> {
    let text = |b: &Bytes| String::from_utf8(b.to_vec()).ok();
    let record = Record {
        init: text(c.init())?,
        shaping: c.shaping().iter().map(text).collect::<Option<_>>()?,
    };
    serde_json::to_vec(&record).ok()
}

/// The move a `moved` key holds (a value that is not one is no move).
fn move_of(kv: Option<&Kv>) -> FleetMove {
    match kv {
        None => FleetMove::default(),
        Some(kv) => FleetMove {
            to: serde_json::from_slice(&kv.value).ok(),
            revision: kv.mod_revision,
        },
    }
}

impl Mirror for FleetSessions {
    fn changed(&self, c: &Arc<Captured>) {
        self.queue(c.id(), Pending::Put(Arc::clone(c)));
    }

    fn ended(&self, id: &[u8]) {
        self.queue(id, Pending::Delete);
    }

    fn fetch<'a>(&'a self, id: &'a [u8]) -> MirrorFuture<'a, Result<Option<Exported>, Unreadable>> {
        Box::pin(async move {
            // A read waits its turn, up to one request's time: a burst of
            // sessions moving at once (a deploy, etcd slow for a moment) is
            // served late rather than told its sessions are gone.
            let wait = self.etcd.request_timeout();
            let Ok(Ok(_one)) = tokio::time::timeout(wait, self.fetching.acquire()).await else {
                tracing::debug!("{MAX_FETCHING} reads of session records were in flight for {}: a session's request is answered 503", humantime::format_duration(wait));
                return Err(Unreadable);
            };
            let (record, moved) = match self.read(id).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "the fleet's record of a session could not be read: its request is answered 503");
                    return Err(Unreadable);
                }
            };
            let Some(record) = record else {
                return Ok(None);
            };
            let record: Record = match serde_json::from_slice(&record.value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "a session record in the fleet's etcd is not mcpflip's: ignored");
                    return Ok(None);
                }
            };
            let moved = move_of(moved.as_ref()).to;
            self.stats.count_fleet_taken(FleetTaken::Record);
            if moved.is_some() {
                self.stats.count_fleet_taken(FleetTaken::Move);
            }
            let Ok(id) = String::from_utf8(id.to_vec()) else {
                return Ok(None);
            };
            Ok(Some(Exported {
                id,
                init: record.init,
                shaping: record.shaping,
                unanswered: vec![],
                moved,
                idle_s: 0,
            }))
        })
    }

    fn move_of<'a>(&'a self, id: &'a [u8]) -> MirrorFuture<'a, Result<FleetMove, ()>> {
        Box::pin(async move {
            match self.etcd.get(&self.key(id, "moved")).await {
                Ok((kv, _)) => {
                    let m = move_of(kv.as_ref());
                    if m.to.is_some() {
                        self.stats.count_fleet_taken(FleetTaken::Move);
                    }
                    Ok(m)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the fleet's etcd could not be asked where a session moved");
                    Err(())
                }
            }
        })
    }

    fn record_move<'a>(
        &'a self,
        id: &'a [u8],
        revision: i64,
        to: &'a ExportedMove,
    ) -> MirrorFuture<'a, Result<Option<FleetMove>, ()>> {
        Box::pin(async move {
            let key = self.key(id, "moved");
            let run = async {
                let lease = self.lease().await?;
                let value = serde_json::to_vec(to)
                    .map_err(|e| EtcdError::Protocol(format!("cannot write a move: {e}")))?;
                let txn = Txn {
                    compare: vec![Compare::ModRevision {
                        key: key.clone(),
                        revision,
                    }],
                    success: vec![Op::Put {
                        key: key.clone(),
                        value,
                        lease,
                    }],
                    failure: vec![Op::Get { key: key.clone() }],
                };
                self.etcd.txn(&txn).await
            };
            match run.await {
                Ok(out) if out.succeeded => {
                    self.stats.count_fleet_write(FleetWrite::Ok, 1);
                    Ok(None)
                }
                Ok(out) => {
                    let kv = out
                        .gets
                        .into_iter()
                        .next()
                        .and_then(|k| k.into_iter().next());
                    let first = move_of(kv.as_ref());
                    if first.to.is_some() {
                        self.stats.count_fleet_taken(FleetTaken::Raced);
                    }
                    Ok(Some(first))
                }
                Err(e) => {
                    self.stats.count_fleet_write(FleetWrite::Failed, 1);
                    tracing::warn!(error = %e, "the fleet's etcd could not record a session's move");
                    Err(())
                }
            }
        })
    }
}
