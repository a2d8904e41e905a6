//! The fleet's watch: reads `{prefix}/` (the table and every instance's
//! counts), hands a table committed elsewhere to the controller (`adopt`),
//! and keeps the instances' reports for drains and `status`; then watches
//! the prefix from the revision it read. When etcd goes away the instance
//! is marked disconnected and keeps serving on its table; it reads
//! everything again once etcd answers (after a compaction too).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::etcd::{EtcdError, Kv, WatchBatch, WatchEvent};
use super::fleet::{Fleet, Report, Seen};
use crate::control::store::Shared;
use crate::control::Controller;

/// The wait before etcd is tried again, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs until `stop`.
pub async fn run(ctl: Arc<Controller>, fleet: Arc<Fleet>, stop: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let round = async {
            let from = read_all(&ctl, &fleet).await?;
            follow(&ctl, &fleet, from).await
        };
        let e = tokio::select! {
            _ = stop.cancelled() => return,
            r = round => r,
        };
        match e {
            Err(e) if e.is_unavailable() => {
                fleet.mark_disconnected(&e);
            }
            Err(e) => tracing::warn!(error = %e, "the fleet's watch ended; reading etcd again"),
            Ok(()) => backoff = FIRST_BACKOFF,
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads the table and every report; returns the revision to watch from.
async fn read_all(ctl: &Controller, fleet: &Fleet) -> Result<i64, EtcdError> {
    let prefix = format!("{}/", fleet.prefix);
    let (kvs, revision) = fleet.etcd.get_prefix(prefix.as_bytes()).await?;
    fleet.mark_connected();
    let table = fleet.table_key();
    let mut instances = BTreeMap::new();
    fleet.set_deploy_lock(None);
    fleet.set_deploy(None);
    for kv in &kvs {
        if kv.key == fleet.lock_key() {
            fleet.set_deploy_lock(Some(String::from_utf8_lossy(&kv.value).into_owned()));
        } else if kv.key == fleet.deploy_key() {
            fleet.set_deploy(Some(&kv.value));
        } else if kv.key == table {
            adopt(ctl, kv).await;
        } else if let Some(name) = fleet.instance_of(&kv.key) {
            if let Some(report) = report_of(name, &kv.value) {
                instances.insert(
                    name.to_owned(),
                    Seen {
                        report,
                        at: Instant::now(),
                    },
                );
            }
        }
    }
    fleet.set_instances(instances);
    Ok(revision + 1)
}

/// Follows the prefix from `from`; returns `Ok` when it must be read again
/// (compacted), `Err` when etcd went away.
async fn follow(ctl: &Controller, fleet: &Fleet, from: i64) -> Result<(), EtcdError> {
    let prefix = format!("{}/", fleet.prefix);
    let mut lost = fleet.losses();
    lost.borrow_and_update();
    let mut watch = fleet.etcd.watch(prefix.as_bytes(), from).await?;
    let table = fleet.table_key();
    loop {
        let batch = tokio::select! {
            b = watch.next() => b?,
            // Another request found etcd gone: this watch may hang on a
            // connection a partition left open; read everything again.
            _ = lost.changed() => return Ok(()),
        };
        match batch {
            WatchBatch::Events { events, .. } => {
                for e in events {
                    match e {
                        WatchEvent::Put(kv) if kv.key == table => adopt(ctl, &kv).await,
                        WatchEvent::Put(kv) if kv.key == fleet.lock_key() => fleet
                            .set_deploy_lock(Some(String::from_utf8_lossy(&kv.value).into_owned())),
                        WatchEvent::Put(kv) if kv.key == fleet.deploy_key() => {
                            fleet.set_deploy(Some(&kv.value))
                        }
                        WatchEvent::Delete { key, .. } if key == fleet.lock_key() => {
                            fleet.set_deploy_lock(None)
                        }
                        WatchEvent::Put(kv) => {
                            if let Some(name) = fleet.instance_of(&kv.key) {
                                if let Some(r) = report_of(name, &kv.value) {
                                    fleet.set_instance(name, Some(r));
                                }
                            }
                        }
                        WatchEvent::Delete { key, .. } => {
                            if let Some(name) = fleet.instance_of(&key) {
                                fleet.set_instance(name, None);
                            }
                        }
                    }
                }
            }
            WatchBatch::Compacted { .. } => return Ok(()),
            WatchBatch::Canceled { reason } => {
                return Err(EtcdError::Protocol(format!(
                    "etcd ended the watch: {reason}"
                )))
            }
        }
    }
}

async fn adopt(ctl: &Controller, kv: &Kv) {
    match serde_json::from_slice::<Shared>(&kv.value) {
        Ok(shared) => {
            let _ = ctl.adopt(shared, kv.mod_revision).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "the fleet's table in etcd is not mcpflip's: not adopted")
        }
    }
}

fn report_of(name: &str, value: &[u8]) -> Option<Report> {
    match serde_json::from_slice(value) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(instance = name, error = %e, "an instance's counts are not mcpflip's: ignored");
            None
        }
    }
}
