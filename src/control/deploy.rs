//! `deploy`: the guide's manual sequence (smoke test, flip, `sleep 120`,
//! verify, roll back by hand) as one task: probe the slot, flip with a drain,
//! wait until each old slot's last session ends, then wait for the watch
//! window. One deploy runs at a time; it issues commands through the
//! controller like any client and reports its phases as it goes.

use std::sync::Arc;
use std::time::Instant;

use crate::control::controller::{Controller, FlipOptions};
use crate::control::protocol::{CtlError, Deployed, Drained, Progress, WatchOutcome};
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
    let started = Instant::now();
    // Refused before the probe: an unknown or retired slot, or the active one.
    ctl.check(&Command::Flip {
        to: to.to_owned(),
        drain: true,
    })?;
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
    progress(Progress::Flip {
        from: flip.from.clone(),
        to: to.to_owned(),
        draining: flip.draining.clone(),
    });
    let mut drained = Vec::new();
    for slot in &flip.draining {
        match ctl.wait_drained(slot, None, &mut progress).await {
            Ok(outcome) => drained.push(Drained {
                slot: slot.clone(),
                outcome,
            }),
            // A rollback flipped back to `slot`: the watch outcome says why.
            Err(CtlError::DrainCancelled { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    let watch = ctl.watch.wait(&**ctl, to, &mut progress).await;
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
