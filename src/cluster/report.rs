//! This instance's counts for the fleet: per slot its live streams, requests
//! in flight, how long it has been idle, and its responses (all and 5xx), at
//! `{prefix}/instances/{instance}` under a lease of `lease_ttl`, kept alive
//! at a third of it. The key goes with the lease, so an instance that died
//! with its streams counts as zero once its lease expires.
//!
//! Published when they change while a slot drains (sampled every
//! [`DRAIN_SAMPLE`], so a draining fleet writes at most that often per
//! instance), when the table changes, and at every keep-alive otherwise.
//! When etcd cannot be reached, the next round grants a new lease and
//! publishes again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::etcd::{wire::code, EtcdError};
use super::fleet::{Fleet, Report};
use crate::control::protocol::SlotCounts;
use crate::control::Controller;
use crate::table::SlotState;

/// How often the counts are looked at while a slot drains.
pub const DRAIN_SAMPLE: Duration = Duration::from_millis(25);

/// When each slot was first seen idle here (reset when it is seen busy).
#[derive(Default)]
struct IdleClock(BTreeMap<String, Instant>);

impl IdleClock {
    fn report(&mut self, ctl: &Controller, fleet: &Fleet) -> Report {
        let table = ctl.tables.load_full();
        let now = Instant::now();
        let slots = table
            .slots
            .iter()
            .map(|s| {
                let idle = s.stats.is_idle();
                let idle_ms = if idle {
                    let seen = *self.0.entry(s.name.to_string()).or_insert(now);
                    // A pinned request counts as activity even though it ended.
                    let mut d = now.duration_since(seen);
                    if let Some(p) = s.stats.since_last_pinned() {
                        d = d.min(p);
                    }
                    Some(d.as_millis() as u64)
                } else {
                    self.0.remove(&*s.name);
                    None
                };
                let responses = (1..=5).map(|c| s.stats.responses(c)).sum();
                SlotCounts {
                    slot: s.name.to_string(),
                    live_streams: s.stats.live_streams(),
                    inflight: s.stats.inflight(),
                    idle_ms,
                    responses,
                    errors_5xx: s.stats.upstream_failures(),
                }
            })
            .collect();
        Report {
            revision: fleet.revision(),
            at_ms: crate::control::controller::now_ms(),
            slots,
        }
    }
}

/// Whether `b` differs from `a` in what a drain reads: the table's
/// revision, or the counts of a slot in `draining` (idle time grows by
/// itself and is not a change; other slots' counts go out with the
/// keep-alive).
fn changed(a: &Report, b: &Report, draining: &[String]) -> bool {
    a.revision != b.revision
        || a.slots.len() != b.slots.len()
        || a.slots.iter().zip(&b.slots).any(|(x, y)| {
            x.slot != y.slot
                // The fleet's watch window reads every instance's 5xx.
                || x.errors_5xx != y.errors_5xx
                || (draining.contains(&x.slot)
                    && (x.live_streams != y.live_streams
                        || x.inflight != y.inflight
                        || x.idle_ms.is_some() != y.idle_ms.is_some()))
        })
}

/// Runs until `stop`, then revokes the lease (the counts go at once).
pub async fn run(ctl: Arc<Controller>, fleet: Arc<Fleet>, stop: CancellationToken) {
    let mut clock = IdleClock::default();
    let mut lease = 0;
    let publishing = async {
        loop {
            if let Err(e) = publish(&ctl, &fleet, &mut clock, &mut lease).await {
                if e.is_unavailable() {
                    fleet.mark_disconnected(&e);
                } else {
                    tracing::warn!(error = %e, "cannot publish this instance's counts; trying again");
                }
                lease = 0;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = publishing => {}
    }
    if lease != 0 {
        let _ = tokio::time::timeout(Duration::from_secs(1), fleet.etcd.revoke(lease)).await;
    }
}

/// One lease's life: grant, publish, keep alive; `Err` when etcd failed.
async fn publish(
    ctl: &Controller,
    fleet: &Fleet,
    clock: &mut IdleClock,
    lease: &mut i64,
) -> Result<(), EtcdError> {
    let granted = fleet.etcd.grant(fleet.lease_ttl).await?;
    *lease = granted.id;
    fleet.mark_connected();
    let key = fleet.instance_key();
    let every = fleet.lease_ttl / 3;
    let mut last = clock.report(ctl, fleet);
    put(fleet, &key, &last, *lease).await?;
    let mut next_keepalive = Instant::now() + every;
    loop {
        let draining: Vec<String> = ctl
            .tables
            .load()
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Draining)
            .map(|s| s.name.to_string())
            .collect();
        let wait = if !draining.is_empty() {
            DRAIN_SAMPLE
        } else {
            // Idle: the table's changes still publish at once (the revision).
            DRAIN_SAMPLE * 4
        };
        tokio::time::sleep(wait.min(next_keepalive.saturating_duration_since(Instant::now())))
            .await;
        let now = clock.report(ctl, fleet);
        let due = Instant::now() >= next_keepalive;
        if due {
            match fleet.etcd.keep_alive(*lease).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(EtcdError::Status {
                        code: code::NOT_FOUND,
                        message: "this instance's lease expired".into(),
                    })
                }
                Err(e) => return Err(e),
            }
            fleet.mark_connected();
            next_keepalive = Instant::now() + every;
        }
        if due || changed(&last, &now, &draining) {
            put(fleet, &key, &now, *lease).await?;
            last = now;
        }
    }
}

async fn put(fleet: &Fleet, key: &[u8], report: &Report, lease: i64) -> Result<(), EtcdError> {
    let value = serde_json::to_vec(report)
        .map_err(|e| EtcdError::Protocol(format!("cannot write the counts: {e}")))?;
    fleet.etcd.put(key, &value, lease).await?;
    Ok(())
}
