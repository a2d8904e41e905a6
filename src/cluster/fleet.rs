//! [`Fleet`]: this instance's place in the fleet. It is the controller's
//! [`Store`]: a change is one etcd transaction on `{prefix}/table` that
//! compares the key's revision with the one the change was computed from (a
//! lost race is `conflict`, etcd out of reach `cluster_unavailable`). It
//! also holds what the fleet's tasks (`sync`, `report`) learnt: whether etcd
//! answers, every live instance's published counts, and the propagation
//! histogram.
//!
//! Nothing here is on the request path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::etcd::{Compare, Etcd, EtcdError, Op, Txn};
use crate::config::ClusterConfig;
use crate::control::controller::now_ms;
use crate::control::protocol::{
    ClusterStatus, CtlError, DeployStatus, FleetDeploy, InstanceStatus, SlotCounts,
};
use crate::control::store::{BoxFuture, Shared, Store};
use crate::stats::{AtomicHistogram, HistogramSnapshot};

/// Buckets of `mcpflip_cluster_propagation_seconds` (loopback is ~ms; a WAN
/// fleet ~100 ms).
pub const PROPAGATION_BOUNDS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What an instance publishes at `{prefix}/instances/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The etcd revision of the table it routes by.
    pub revision: i64,
    /// When it was published (wall clock, ms since the epoch), for readers
    /// that only read it once (`ctl --cluster status`).
    #[serde(default)]
    pub at_ms: u64,
    pub slots: Vec<SlotCounts>,
}

/// An instance's last report, and when it arrived here.
#[derive(Debug, Clone)]
pub struct Seen {
    pub report: Report,
    pub at: Instant,
}

/// This instance in its fleet.
#[derive(Debug)]
pub struct Fleet {
    pub etcd: Etcd,
    pub prefix: String,
    pub instance: String,
    pub lease_ttl: Duration,
    connected: AtomicBool,
    /// When etcd stopped answering (ms since the epoch; 0: it answers).
    disconnected_ms: AtomicU64,
    /// The etcd revision of the table that routes here.
    revision: AtomicI64,
    /// Every live instance's last report (this one's included), by name.
    instances: watch::Sender<BTreeMap<String, Seen>>,
    /// Counts the times etcd was lost: the watch, which may hang on a
    /// connection that a partition left open, starts again on each.
    losses: watch::Sender<u64>,
    propagation: AtomicHistogram,
    /// Who holds `{prefix}/locks/deploy`, and `{prefix}/deploy`, as last seen.
    deploy_lock: std::sync::Mutex<Option<String>>,
    deploy: std::sync::Mutex<Option<(String, DeployStatus)>>,
    /// The deploy record to write next (`write_deploys` writes the latest, in order).
    deploy_out: watch::Sender<Option<Vec<u8>>>,
}

/// What `{prefix}/deploy` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRecord {
    pub by: String,
    pub status: DeployStatus,
}

/// The fleet's deploy lock while held: its lease is kept alive; dropping
/// it revokes the lease, which releases the lock (and so would the lease
/// running out if this instance died).
struct DeployLock {
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fleet {
    pub fn new(etcd: Etcd, c: &ClusterConfig) -> Arc<Fleet> {
        Arc::new(Fleet {
            etcd,
            prefix: c.prefix.clone(),
            instance: c.instance.clone(),
            lease_ttl: c.lease_ttl,
            connected: AtomicBool::new(true),
            disconnected_ms: AtomicU64::new(0),
            revision: AtomicI64::new(0),
            instances: watch::Sender::new(BTreeMap::new()),
            losses: watch::Sender::new(0),
            propagation: AtomicHistogram::new(PROPAGATION_BOUNDS),
            deploy_lock: Default::default(),
            deploy: Default::default(),
            deploy_out: watch::Sender::new(None),
        })
    }

    /// `{prefix}/table`.
    pub fn table_key(&self) -> Vec<u8> {
        format!("{}/table", self.prefix).into_bytes()
    }

    /// `{prefix}/locks/deploy`: held by the instance that deploys.
    pub fn lock_key(&self) -> Vec<u8> {
        format!("{}/locks/deploy", self.prefix).into_bytes()
    }

    /// `{prefix}/deploy`: the fleet's deploy and its phase.
    pub fn deploy_key(&self) -> Vec<u8> {
        format!("{}/deploy", self.prefix).into_bytes()
    }

    /// Writes the deploy's records to `{prefix}/deploy` as they come, the
    /// latest one when several came meanwhile, in order; until `stop`.
    pub async fn write_deploys(&self, stop: tokio_util::sync::CancellationToken) {
        let mut rx = self.deploy_out.subscribe();
        let key = self.deploy_key();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let Some(value) = rx.borrow_and_update().clone() else {
                continue;
            };
            while let Err(e) = self.etcd.put(&key, &value, 0).await {
                tracing::warn!(error = %e, "cannot record the deploy's phase in etcd; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if rx.has_changed().unwrap_or(false) {
                    break;
                }
            }
        }
    }

    /// The lock's holder changed (`None`: released).
    pub fn set_deploy_lock(&self, holder: Option<String>) {
        *lock(&self.deploy_lock) = holder;
    }

    /// `{prefix}/deploy` changed.
    pub fn set_deploy(&self, value: Option<&[u8]>) {
        *lock(&self.deploy) = value
            .and_then(|v| serde_json::from_slice::<DeployRecord>(v).ok())
            .map(|r| (r.by, r.status));
    }

    /// `{prefix}/instances/`.
    pub fn instances_prefix(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    /// `{prefix}/instances/{name}` of this instance.
    pub fn instance_key(&self) -> Vec<u8> {
        format!("{}{}", self.instances_prefix(), self.instance).into_bytes()
    }

    /// etcd answered.
    pub fn mark_connected(&self) {
        if !self.connected.swap(true, Ordering::SeqCst) {
            tracing::info!("the fleet's etcd answers again");
        }
        self.disconnected_ms.store(0, Ordering::SeqCst);
    }

    /// etcd cannot be reached (`why`).
    pub fn mark_disconnected(&self, why: &EtcdError) {
        if self.connected.swap(false, Ordering::SeqCst) {
            self.disconnected_ms.store(now_ms(), Ordering::SeqCst);
            self.losses.send_modify(|n| *n += 1);
            tracing::error!(error = %why, "the fleet's etcd cannot be reached: serving on the last table, refusing changes until it is back");
        }
    }

    /// Changes each time etcd is lost.
    pub fn losses(&self) -> watch::Receiver<u64> {
        self.losses.subscribe()
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The etcd revision of the table that routes here.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    fn note_revision(&self, revision: i64) {
        self.revision.fetch_max(revision, Ordering::SeqCst);
    }

    /// Replaces every instance's report (after reading them all).
    pub fn set_instances(&self, all: BTreeMap<String, Seen>) {
        self.instances.send_replace(all);
    }

    /// One instance published (`Some`) or its key went (`None`: its lease
    /// expired or it stopped).
    pub fn set_instance(&self, name: &str, report: Option<Report>) {
        self.instances.send_modify(|m| match report {
            Some(report) => {
                m.insert(
                    name.to_owned(),
                    Seen {
                        report,
                        at: Instant::now(),
                    },
                );
            }
            None => {
                m.remove(name);
            }
        });
    }

    /// The name of an instance key, if `key` is one.
    pub fn instance_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(&self.instances_prefix())
    }

    /// How long until every other instance reports `slot` idle for `quiet`
    /// (`Some(ZERO)`: they do now; `None`: one is busy or has not yet seen
    /// the table at `revision`, so only its next report can change that).
    fn others_quiet_in(&self, slot: &str, quiet: Duration, revision: i64) -> Option<Duration> {
        let all = self.instances.borrow();
        let mut wait = Duration::ZERO;
        for (name, seen) in all.iter() {
            if *name == self.instance {
                continue;
            }
            if seen.report.revision < revision {
                return None;
            }
            let Some(c) = seen.report.slots.iter().find(|c| c.slot == slot) else {
                continue;
            };
            let idle = c.idle_ms?;
            let idle = Duration::from_millis(idle) + seen.at.elapsed();
            wait = wait.max(quiet.saturating_sub(idle));
        }
        Some(wait)
    }

    fn fail(&self, e: EtcdError) -> CtlError {
        if e.is_unavailable() {
            self.mark_disconnected(&e);
            CtlError::ClusterUnavailable {
                reason: e.to_string(),
            }
        } else {
            CtlError::Internal(format!("the fleet's etcd: {e}"))
        }
    }
}

/// The counts of `slots` summed over `instances`.
pub(crate) fn totals<'a>(instances: impl Iterator<Item = &'a InstanceStatus>) -> Vec<SlotCounts> {
    let mut sum: BTreeMap<String, SlotCounts> = BTreeMap::new();
    for i in instances {
        for c in &i.slots {
            let t = sum.entry(c.slot.clone()).or_insert_with(|| SlotCounts {
                slot: c.slot.clone(),
                ..Default::default()
            });
            t.live_streams += c.live_streams;
            t.inflight += c.inflight;
            t.responses += c.responses;
            t.errors_5xx += c.errors_5xx;
        }
    }
    sum.into_values().collect()
}

impl Store for Fleet {
    fn commit<'a>(&'a self, base: i64, next: &'a Shared) -> BoxFuture<'a, Result<i64, CtlError>> {
        Box::pin(async move {
            let mut shared = next.clone();
            shared.by = self.instance.clone();
            let value = serde_json::to_vec(&shared)
                .map_err(|e| CtlError::Internal(format!("cannot write the table: {e}")))?;
            let key = self.table_key();
            let txn = Txn {
                compare: vec![Compare::ModRevision {
                    key: key.clone(),
                    revision: base,
                }],
                success: vec![Op::Put {
                    key,
                    value,
                    lease: 0,
                }],
                failure: vec![],
            };
            let out = self.etcd.txn(&txn).await.map_err(|e| self.fail(e))?;
            self.mark_connected();
            if !out.succeeded {
                return Err(CtlError::Conflict { seen: base });
            }
            self.note_revision(out.revision);
            Ok(out.revision)
        })
    }

    fn read(&self) -> BoxFuture<'_, Result<Option<(Shared, i64)>, CtlError>> {
        Box::pin(async move {
            let (kv, _) = self
                .etcd
                .get(&self.table_key())
                .await
                .map_err(|e| self.fail(e))?;
            self.mark_connected();
            let Some(kv) = kv else { return Ok(None) };
            let shared: Shared = serde_json::from_slice(&kv.value).map_err(|e| {
                CtlError::Internal(format!("the fleet's table in etcd is not mcpflip's: {e}"))
            })?;
            Ok(Some((shared, kv.mod_revision)))
        })
    }

    fn others_idle<'a>(&'a self, slot: &'a str, quiet: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut rx = self.instances.subscribe();
            // Reports from before the drain began cannot vouch for it.
            let revision = self.revision();
            loop {
                rx.borrow_and_update();
                match self.others_quiet_in(slot, quiet, revision) {
                    Some(Duration::ZERO) => return,
                    Some(wait) => {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = rx.changed() => {}
                        }
                    }
                    None => {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }

    fn status(&self) -> ClusterStatus {
        let instances: Vec<InstanceStatus> = self
            .instances
            .borrow()
            .iter()
            .map(|(name, seen)| InstanceStatus {
                name: name.clone(),
                lease_age_ms: seen.at.elapsed().as_millis() as u64,
                slots: seen.report.slots.clone(),
            })
            .collect();
        let since = self.disconnected_ms.load(Ordering::SeqCst);
        let deploy_lock = lock(&self.deploy_lock).clone();
        let deploy = lock(&self.deploy).clone().map(|(by, status)| FleetDeploy {
            orphaned: !status.phase.ended() && deploy_lock.is_none(),
            by,
            status,
        });
        ClusterStatus {
            deploy_lock,
            deploy,
            instance: self.instance.clone(),
            prefix: self.prefix.clone(),
            connected: self.connected(),
            disconnected_since_ms: (since > 0).then_some(since),
            revision: self.revision(),
            totals: totals(instances.iter()),
            instances,
        }
    }

    fn lock_deploy(&self) -> BoxFuture<'_, Result<Box<dyn Send + Sync>, CtlError>> {
        Box::pin(async move {
            let lease = match self
                .etcd
                .try_lock(&self.lock_key(), self.instance.as_bytes(), self.lease_ttl)
                .await
            {
                Ok(Ok(lease)) => lease,
                Ok(Err(holder)) => {
                    let holder = String::from_utf8_lossy(&holder).into_owned();
                    tracing::info!(%holder, "a deploy runs on another instance of the fleet");
                    return Err(CtlError::Busy);
                }
                Err(e) => return Err(self.fail(e)),
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let (etcd, token, every) = (self.etcd.clone(), stop.clone(), self.lease_ttl / 3);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(every) => {
                            if let Ok(None) = etcd.keep_alive(lease.id).await {
                                tracing::error!("the fleet's deploy lock expired while the deploy ran (etcd was out of reach longer than lease_ttl)");
                                return;
                            }
                        }
                    }
                }
                let _ = etcd.revoke(lease.id).await;
            });
            let guard: Box<dyn Send + Sync> = Box::new(DeployLock { stop });
            Ok(guard)
        })
    }

    fn record_deploy(&self, status: &DeployStatus) {
        let record = DeployRecord {
            by: self.instance.clone(),
            status: status.clone(),
        };
        let Ok(value) = serde_json::to_vec(&record) else {
            return;
        };
        self.deploy_out.send_replace(Some(value));
    }

    fn others_answers(&self, slot: &str) -> (u64, u64) {
        let all = self.instances.borrow();
        all.iter()
            .filter(|(name, _)| **name != self.instance)
            .filter_map(|(_, seen)| seen.report.slots.iter().find(|c| c.slot == slot))
            .fold((0, 0), |(e, a), c| (e + c.errors_5xx, a + c.responses))
    }

    fn propagation(&self) -> HistogramSnapshot {
        self.propagation.snapshot()
    }

    fn adopted(&self, revision: i64, committed_ms: u64) {
        self.note_revision(revision);
        let took = now_ms().saturating_sub(committed_ms);
        self.propagation.observe(Duration::from_millis(took));
    }
}
