//! Readiness for orchestrators (`GET /readyz` on the admin listener): the
//! process's phase (serving, shutting down, handing over to a new process)
//! and the health of the serving slots, passive (a slot whose last
//! `stats::UNHEALTHY_AFTER` requests all failed to connect is down) and,
//! with `[health] interval`, active (the MCP probe of every serving slot).
//! `/healthz` stays the liveness check: it says only that the process answers.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::control::Controller;
use crate::table::{SlotState, Table};

/// What the process is doing with its listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepting new connections.
    Serving = 0,
    /// Shutdown started: no new connections; open streams drain.
    ShuttingDown = 1,
    /// A new process took the listeners over (`ctl upgrade`, SIGUSR2); this
    /// one finishes its open streams and exits.
    HandingOver = 2,
}

/// The process's phase, shared by the wiring (which changes it) and the
/// admin listener (which reports it). Once it leaves `Serving` it never
/// returns.
#[derive(Debug, Default)]
pub struct Lifecycle(AtomicU8);

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::SeqCst) {
            0 => Phase::Serving,
            1 => Phase::ShuttingDown,
            _ => Phase::HandingOver,
        }
    }

    /// Moves to `phase` unless the process already left `Serving` (a
    /// shutdown during a handover stays a handover).
    pub fn enter(&self, phase: Phase) {
        let _ = self.0.compare_exchange(
            Phase::Serving as u8,
            phase as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// One serving slot as `/readyz` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotHealth {
    pub slot: String,
    pub healthy: bool,
}

/// The `/readyz` answer's body.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub phase: Phase,
    /// Why not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The serving slots (weight above 0) and whether each is healthy.
    pub serving: Vec<SlotHealth>,
}

/// Ready while serving and at least one serving slot is healthy.
pub fn readiness(lifecycle: &Lifecycle, table: &Table) -> Readiness {
    let phase = lifecycle.phase();
    let serving: Vec<SlotHealth> = table
        .slots
        .iter()
        .filter(|s| s.state == SlotState::Serving)
        .map(|s| SlotHealth {
            slot: s.name.to_string(),
            healthy: s.stats.is_healthy(),
        })
        .collect();
    let reason = match phase {
        Phase::ShuttingDown => {
            Some("shutting down: no new connections; open streams are draining".to_owned())
        }
        Phase::HandingOver => Some(
            "handing over to a new process (upgrade): this one accepts no new connections"
                .to_owned(),
        ),
        Phase::Serving if serving.is_empty() => Some("no slot is serving".to_owned()),
        Phase::Serving if !serving.iter().any(|s| s.healthy) => Some(format!(
            "no serving slot is healthy: {} (their last {} requests failed to connect, or their health probe failed)",
            serving
                .iter()
                .map(|s| s.slot.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            crate::stats::UNHEALTHY_AFTER
        )),
        Phase::Serving => None,
    };
    Readiness {
        ready: reason.is_none(),
        phase,
        reason,
        serving,
    }
}

/// How often the prober looks at `[health] interval` while it is unset
/// (a reload may set it).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Probes every serving slot each `[health] interval` (read anew each round,
/// so a reload applies) until `stop`.
pub async fn probe_serving(ctl: Arc<Controller>, stop: CancellationToken) {
    loop {
        let config = ctl.config();
        let wait = config.health.interval.unwrap_or(IDLE_CHECK);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if ctl.config().health.interval.is_none() {
            continue;
        }
        let table = ctl.tables.load_full();
        for slot in table.slots.iter().filter(|s| s.state == SlotState::Serving) {
            let report = tokio::select! {
                _ = stop.cancelled() => return,
                r = crate::probe::probe(slot, &config.probe) => r,
            };
            if !report.ok && slot.stats.is_healthy() {
                tracing::warn!(slot = %slot.name, "health probe failed: /readyz counts the slot as down until it answers");
            }
            slot.stats.note_health_probe(report.ok);
        }
    }
}
