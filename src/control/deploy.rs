//! `deploy`: the guide's manual sequence (smoke test, flip, `sleep 120`,
//! verify, roll back by hand) as one task: probe the slot, flip with a drain,
//! wait until each old slot's last session ends, then wait for the watch
//! window. One deploy runs at a time; it issues commands through the
//! controller like any client and reports its phases as it goes: to the
//! caller as progress lines, to everyone as the record `status.deploy`
//! (probe steps, flip, drains, watch, how it ended) and as `deploy_started`
//! and `deploy_ended` events around the events its commands publish.

use std::sync::Arc;
use std::time::Instant;

use crate::control::controller::{now_ms, Controller, FlipOptions};
use crate::control::protocol::{
    CtlError, DeployPhase, DeployStatus, Deployed, Drained, Event, Progress, WatchOutcome,
};
use crate::control::state::Command;

/// What `deploy SLOT` was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployOptions {
    /// Drain deadline for the old slot (else `[drain] deadline`).
    pub deadline: Option<std::time::Duration>,
    /// Watch window (else `[watch] window`; zero skips it).
    pub window: Option<std::time::Duration>,
}

/// Runs a deploy of `to`; `Ok` when it passed its watch. A slot that is
/// already active, a failed probe (nothing changed) or a watch that failed
/// or rolled back is an error.
pub async fn deploy(
    ctl: &Arc<Controller>,
    to: &str,
    opts: DeployOptions,
    mut progress: impl FnMut(Progress),
) -> Result<Deployed, CtlError> {
    let Ok(_one) = ctl.deploying.try_lock() else {
        return Err(CtlError::Busy);
    };
    // In a fleet, one deploy at a time in the whole fleet: its probe, flip
    // and watch run once, here.
    let _fleet_lock = match ctl.store() {
        Some(store) => Some(store.lock_deploy().await?),
        None => None,
    };
    let started = Instant::now();
    // Refused before the probe: an unknown or retired slot, or the active one.
    // A refused deploy never started: the last deploy's record stays.
    ctl.check(&Command::Flip {
        to: to.to_owned(),
        drain: true,
    })?;
    let from = ctl.tables.load().active().map(|s| s.name.to_string());
    ctl.deploy_begin(DeployStatus {
        to: to.to_owned(),
        from: from.clone(),
        phase: DeployPhase::Probe,
        started_at: now_ms(),
        elapsed_ms: 0,
        probe: None,
        flipped_at: None,
        draining: Vec::new(),
        drained: Vec::new(),
        watch: None,
        error: None,
        code: None,
    });
    ctl.publish(Event::DeployStarted {
        to: to.to_owned(),
        from,
    });
    let result = phases(ctl, to, opts, started, &mut progress).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    ctl.deploy_update(|d| match &result {
        Ok(_) => d.phase = DeployPhase::Passed,
        Err(e) => {
            d.phase = DeployPhase::Failed;
            d.error = Some(e.to_string());
            d.code = Some(e.code().as_str().to_owned());
            if let CtlError::ProbeFailed { report } = e {
                d.probe = Some((**report).clone());
            }
        }
    });
    ctl.publish(Event::DeployEnded {
        to: to.to_owned(),
        ok: result.is_ok(),
        elapsed_ms,
        code: result.as_ref().err().map(|e| e.code().as_str().to_owned()),
        error: result.as_ref().err().map(|e| e.to_string()),
    });
    result
}

/// The deploy's phases, after its refusals: probe and flip, drain, watch.
async fn phases(
    ctl: &Arc<Controller>,
    to: &str,
    opts: DeployOptions,
    started: Instant,
    mut progress: impl FnMut(Progress),
) -> Result<Deployed, CtlError> {
    progress(Progress::Probe {
        slot: to.to_owned(),
    });
    let flip = ctl
        .flip(
            to,
            FlipOptions {
                no_probe: false,
                drain: true,
                deadline: opts.deadline,
                window: opts.window,
            },
        )
        .await?;
    ctl.deploy_update(|d| {
        d.probe = flip.probe.clone();
        d.from = flip.from.clone();
        d.flipped_at = Some(flip.flipped_at);
        d.draining = flip.draining.clone();
        d.phase = DeployPhase::Drain;
    });
    progress(Progress::Flip {
        from: flip.from.clone(),
        to: to.to_owned(),
        draining: flip.draining.clone(),
    });
    let drains = async {
        let mut drained = Vec::new();
        for slot in &flip.draining {
            match ctl.wait_drained(slot, None, &mut progress).await {
                Ok(outcome) => {
                    let d = Drained {
                        slot: slot.clone(),
                        outcome,
                    };
                    ctl.deploy_update(|r| r.drained.push(d.clone()));
                    drained.push(d);
                }
                // A rollback flipped back to `slot`: the watch outcome says why.
                Err(CtlError::DrainCancelled { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(drained)
    };
    let drained = drains.await?;
    ctl.deploy_update(|d| d.phase = DeployPhase::Watch);
    let watch = ctl.watch.wait(&**ctl, to, &mut progress).await;
    ctl.deploy_update(|d| d.watch = Some(watch.clone()));
    let reply = Deployed {
        from: flip.from,
        to: to.to_owned(),
        probe: flip.probe,
        drained_after_ms: drained.iter().map(|d| d.outcome.drained_after_ms).max(),
        forced: drained.iter().map(|d| d.outcome.forced).sum(),
        drained,
        watch: watch.clone(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    let deploy = Box::new(reply.clone());
    match watch {
        WatchOutcome::Passed { .. } => Ok(reply),
        WatchOutcome::RolledBack {
            reason, to: back, ..
        } => Err(CtlError::RolledBack {
            message: format!("{to} was rolled back to {back}: {reason}"),
            deploy,
        }),
        WatchOutcome::Failed { reason } => Err(CtlError::WatchFailed {
            message: format!("{to} failed its watch: {reason}"),
            deploy,
        }),
        WatchOutcome::Cancelled { reason } => Err(CtlError::WatchCancelled {
            message: format!("the watch of {to} ended early: {reason}"),
            deploy,
        }),
    }
}
