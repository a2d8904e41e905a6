//! The control plane's outcome counters that have no better home: bumped (one
//! relaxed atomic add) where the outcome is known, read by `/metrics` at
//! scrape time. Per-slot counts live in `stats::SlotStats`, watch outcomes in
//! the `Watcher`, drain outcomes in the slot's stats.
//!
//! Imports nothing of the crate, so the controller may hold it without a
//! cycle through the metrics module that reads the controller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `result` label values of `mcpflip_reloads_total`.
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "failed"];

/// Proxy-wide outcome counters.
#[derive(Debug)]
pub struct ControlCounters {
    /// When the proxy started (for `mcpflip_start_time_seconds`).
    started: SystemTime,
    reloads: [AtomicU64; 2],
}

impl Default for ControlCounters {
    fn default() -> Self {
        ControlCounters {
            started: SystemTime::now(),
            reloads: Default::default(),
        }
    }
}

impl ControlCounters {
    /// When the proxy started, seconds since the Unix epoch.
    pub fn started(&self) -> f64 {
        self.started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Counts a `reload` (control command or SIGHUP) by whether it was applied.
    pub fn count_reload(&self, applied: bool) {
        self.reloads[usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads so far with result `RELOAD_RESULTS[i]`.
    pub fn reloads(&self, i: usize) -> u64 {
        self.reloads.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}
