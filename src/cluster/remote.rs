//! Remote control through etcd: `mcpflip ctl --cluster CONFIG ...` from any
//! machine that reaches etcd (a CI runner), with etcd's TLS and users as the
//! access control.
//!
//! `status` is read from etcd directly (the table, every instance's counts,
//! the deploy lock and record). Every other command is put, as the typed
//! request's JSON line, at `{prefix}/commands/{id}`; one live instance, the
//! leader (it holds `{prefix}/leader`, bound to its lease; any instance can
//! be it), takes it (the delete that removes it tells the taker), runs it
//! like a request from its control socket, and writes each progress line at
//! `{prefix}/results/{id}/p{seq}` and the reply at `{prefix}/results/{id}/reply`
//! under a lease of [`RESULTS_TTL`]. `ctl` watches those keys and renders them
//! with the same code as a local `ctl`, with the same exit codes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::etcd::{Compare, Etcd, EtcdError, Op, Txn, WatchBatch, WatchEvent};
use super::fleet::{self, DeployRecord, Fleet, Report};
use crate::control::controller::now_ms;
use crate::control::protocol::{
    parse_line, ClusterStatus, CtlError, DrainStatus, FleetDeploy, InstanceStatus, Reply, Request,
    SlotStatus, StateFileStatus, Status,
};
use crate::control::store::Shared;
use crate::control::Controller;

/// How long a command's progress and reply stay in etcd.
pub const RESULTS_TTL: Duration = Duration::from_secs(600);
/// How long `ctl --cluster` waits for an instance to take its command.
pub const TAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often an instance that is not the leader tries to become it.
const CAMPAIGN_EVERY: Duration = Duration::from_secs(1);

fn commands_prefix(prefix: &str) -> String {
    format!("{prefix}/commands/")
}

fn results_prefix(prefix: &str, id: &str) -> String {
    format!("{prefix}/results/{id}/")
}

/// `mcpflip ctl --cluster CONFIG REQUEST`: prints as `ctl` does; the exit code.
pub async fn ctl(config: &Path, request: &Request, json: bool) -> anyhow::Result<i32> {
    let (c, resolved) = crate::config::load_cluster(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let etcd = Etcd::new(super::etcd::Settings {
        endpoints: c.etcd.clone(),
        tls: resolved.cluster_tls.clone(),
        credentials: c.username.as_ref().map(|u| super::etcd::Credentials {
            username: u.clone(),
            password: resolved.cluster_password.clone().unwrap_or_default(),
        }),
        request_timeout: c.request_timeout,
    });
    let prefix = c.prefix.clone();
    if matches!(request, Request::Status) {
        let status = read_status(&etcd, &prefix).await?;
        return crate::control::client::render(request, json, |_| async move { Ok(status) }).await;
    }
    let line = request.to_line();
    crate::control::client::render(request, json, |on_progress| {
        submit(etcd, prefix, line, on_progress)
    })
    .await
}

/// Puts the command, then follows its results until the reply.
async fn submit(
    etcd: Etcd,
    prefix: String,
    line: String,
    mut on_progress: Box<dyn FnMut(&Value) + Send + '_>,
) -> anyhow::Result<Value> {
    let id = format!("{:016x}{:08x}", fastrand::u64(..), now_ms() as u32);
    let key = format!("{}{id}", commands_prefix(&prefix));
    let revision = etcd.put(key.as_bytes(), line.as_bytes(), 0).await?;
    let results = results_prefix(&prefix, &id);
    let mut watch = etcd.watch(results.as_bytes(), revision + 1).await?;
    let mut taken = false;
    let check = tokio::time::sleep(TAKE_TIMEOUT);
    tokio::pin!(check);
    loop {
        let batch = tokio::select! {
            b = watch.next() => b?,
            _ = &mut check, if !taken => {
                // Nobody took it: take it back (unless one did just now).
                if etcd.delete(key.as_bytes()).await? == 1 {
                    anyhow::bail!("no live mcpflip instance of {prefix} took the command within {}s (is any running, and does it reach etcd?)", TAKE_TIMEOUT.as_secs());
                }
                taken = true;
                continue;
            }
        };
        let WatchBatch::Events { events, .. } = batch else {
            anyhow::bail!("etcd ended the watch of the command's results: {batch:?}");
        };
        for e in events {
            let WatchEvent::Put(kv) = e else { continue };
            taken = true;
            let v: Value = serde_json::from_slice(&kv.value)
                .map_err(|e| anyhow::anyhow!("a result that is not JSON: {e}"))?;
            if kv.key.ends_with(b"/reply") {
                return Ok(v);
            }
            on_progress(&v);
        }
    }
}

/// `status` from etcd alone: the fleet's table and its instances' counts.
async fn read_status(etcd: &Etcd, prefix: &str) -> anyhow::Result<Value> {
    let (kvs, _) = etcd.get_prefix(format!("{prefix}/").as_bytes()).await?;
    let instances_prefix = format!("{prefix}/instances/");
    let (mut table, mut instances, mut lock, mut deploy) = (None, Vec::new(), None, None);
    for kv in &kvs {
        let key = String::from_utf8_lossy(&kv.key);
        if key == format!("{prefix}/table") {
            let shared: Shared = serde_json::from_slice(&kv.value)
                .map_err(|e| anyhow::anyhow!("the fleet's table is not mcpflip's: {e}"))?;
            table = Some((shared, kv.mod_revision));
        } else if let Some(name) = key.strip_prefix(&instances_prefix) {
            if let Ok(r) = serde_json::from_slice::<Report>(&kv.value) {
                instances.push(InstanceStatus {
                    name: name.to_owned(),
                    lease_age_ms: now_ms().saturating_sub(r.at_ms),
                    slots: r.slots,
                });
            }
        } else if key == format!("{prefix}/locks/deploy") {
            lock = Some(String::from_utf8_lossy(&kv.value).into_owned());
        } else if key == format!("{prefix}/deploy") {
            deploy = serde_json::from_slice::<DeployRecord>(&kv.value).ok();
        }
    }
    let Some((shared, revision)) = table else {
        anyhow::bail!("no fleet at {prefix}: no instance has written its table yet");
    };
    let totals = fleet::totals(instances.iter());
    let count = |slot: &str| totals.iter().find(|t| t.slot == slot);
    let now = now_ms();
    let status = Status {
        slots: shared
            .state
            .slots
            .iter()
            .map(|r| SlotStatus {
                name: r.name.clone(),
                upstream: String::new(),
                weight: r.weight,
                state: r.state,
                generation: r.generation,
                live_streams: count(&r.name).map_or(0, |t| t.live_streams),
                inflight: count(&r.name).map_or(0, |t| t.inflight),
            })
            .collect(),
        active: shared.state.active().map(|a| a.name.clone()),
        flips_total: 0,
        rollbacks_total: 0,
        drain: None,
        drains: shared
            .drains
            .iter()
            .map(|(slot, d)| DrainStatus {
                slot: slot.clone(),
                elapsed_ms: now.saturating_sub(d.started_ms),
                deadline_ms: d.deadline_ms,
            })
            .collect(),
        watch: None,
        last_rollback: None,
        state_file: StateFileStatus {
            path: format!("etcd:{prefix}/table").into(),
            persisted: true,
            revision: shared.state.revision,
            error: None,
        },
        deploy: None,
        handover: None,
        migration: None,
        acme: None,
        cluster: Some(ClusterStatus {
            instance: "(ctl --cluster)".into(),
            prefix: prefix.to_owned(),
            connected: true,
            disconnected_since_ms: None,
            revision,
            totals: totals.clone(),
            instances,
            deploy: deploy.map(|d| FleetDeploy {
                orphaned: !d.status.phase.ended() && lock.is_none(),
                by: d.by,
                status: d.status,
            }),
            deploy_lock: lock,
        }),
    };
    let mut status = status;
    status.drain = status.drains.first().cloned();
    Ok(Reply::Status(Box::new(status)).to_value())
}

/// On every instance: campaigns for `{prefix}/leader`; while it holds it,
/// takes the commands of the queue and runs them. Until `stop`.
pub async fn serve(ctl: Arc<Controller>, fleet: Arc<Fleet>, stop: CancellationToken) {
    loop {
        let term = async {
            match lead(&ctl, &fleet).await {
                Ok(()) => {}
                Err(e) if e.is_unavailable() => fleet.mark_disconnected(&e),
                Err(e) => tracing::warn!(error = %e, "the fleet's command queue"),
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = term => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CAMPAIGN_EVERY) => {}
        }
    }
}

/// One try at leading: `Ok` when another instance leads (try again later).
async fn lead(ctl: &Arc<Controller>, fleet: &Fleet) -> Result<(), EtcdError> {
    let etcd = &fleet.etcd;
    let lease = etcd.grant(fleet.lease_ttl).await?;
    let key = format!("{}/leader", fleet.prefix).into_bytes();
    let won = etcd
        .txn(&Txn {
            compare: vec![Compare::CreateRevision {
                key: key.clone(),
                revision: 0,
            }],
            success: vec![Op::Put {
                key,
                value: fleet.instance.clone().into_bytes(),
                lease: lease.id,
            }],
            failure: vec![],
        })
        .await?;
    if !won.succeeded {
        etcd.revoke(lease.id).await?;
        return Ok(());
    }
    tracing::info!("this instance runs the fleet's command queue (ctl --cluster)");
    let every = fleet.lease_ttl / 3;
    let keep = async {
        loop {
            tokio::time::sleep(every).await;
            match etcd.keep_alive(lease.id).await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    let queue = async {
        let prefix = commands_prefix(&fleet.prefix);
        let (waiting, revision) = etcd.get_prefix(prefix.as_bytes()).await?;
        for kv in waiting {
            take(ctl, fleet, &kv.key, &kv.value).await;
        }
        let mut watch = etcd.watch(prefix.as_bytes(), revision + 1).await?;
        loop {
            if let WatchBatch::Events { events, .. } = watch.next().await? {
                for e in events {
                    if let WatchEvent::Put(kv) = e {
                        take(ctl, fleet, &kv.key, &kv.value).await;
                    }
                }
            } else {
                return Ok(());
            }
        }
    };
    let r = tokio::select! {
        r = keep => r,
        r = queue => r,
    };
    let _ = etcd.revoke(lease.id).await;
    r
}

/// Takes the command at `key` (if no one else did) and runs it in a task of its own.
async fn take(ctl: &Arc<Controller>, fleet: &Fleet, key: &[u8], value: &[u8]) {
    match fleet.etcd.delete(key).await {
        Ok(1) => {}
        _ => return,
    }
    let Some(id) = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.rsplit('/').next())
        .map(str::to_owned)
    else {
        return;
    };
    let results = results_prefix(&fleet.prefix, &id);
    let line = String::from_utf8_lossy(value).into_owned();
    let (ctl, etcd) = (Arc::clone(ctl), fleet.etcd.clone());
    tokio::spawn(async move {
        let lease = match etcd.grant(RESULTS_TTL).await {
            Ok(l) => l.id,
            Err(e) => {
                tracing::warn!(error = %e, "cannot run a queued command: no lease for its results");
                return;
            }
        };
        tracing::info!(id, command = %crate::control::protocol::quote(&line, 200), "running a command from the fleet's queue");
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let run = {
            let ctl = Arc::clone(&ctl);
            tokio::spawn(async move {
                let request = parse_line(&line)?;
                crate::control::server::execute(&ctl, request, tx).await
            })
        };
        let mut seq = 0u64;
        while let Some(v) = rx.recv().await {
            seq += 1;
            let key = format!("{results}p{seq:08}");
            let _ = etcd
                .put(key.as_bytes(), v.to_string().as_bytes(), lease)
                .await;
        }
        let reply = match run.await {
            Ok(Ok(r)) => r.to_value(),
            Ok(Err(e)) => e.to_reply().to_value(),
            Err(e) => CtlError::Internal(format!("command failed: {e}"))
                .to_reply()
                .to_value(),
        };
        let key = format!("{results}reply");
        // The reply must arrive: etcd may be briefly away.
        for _ in 0..30 {
            match etcd
                .put(key.as_bytes(), reply.to_string().as_bytes(), lease)
                .await
            {
                Ok(_) => return,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        tracing::error!(id, "cannot write a queued command's reply to etcd");
    });
}
