//! The seam between the controller and a store the control state is shared
//! through (the fleet's etcd, `crate::cluster`). Without one, the controller
//! commits to its state file alone, as it always did; with one, a change is
//! committed to the store first (compared with the revision it was computed
//! from, so two instances cannot interleave), and the state file is written
//! after it as the fallback for a start without the store.
//!
//! The trait lives here, in the control path, and the fleet implements it, so
//! the controller never names the fleet (no module cycle, no `if cluster`
//! around the owner).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::protocol::{ClusterStatus, CtlError, DeployStatus};
use crate::control::state::State;

/// A boxed future (the trait is used as `dyn Store`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// When a drain started, for every instance of the fleet, so they agree on
/// its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedDrain {
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub deadline_ms: u64,
}

/// The control state as the fleet shares it: the state, the drains' clocks,
/// and when and where it was committed (for the propagation metric).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub state: State,
    #[serde(default)]
    pub drains: BTreeMap<String, SharedDrain>,
    /// Wall-clock milliseconds of the commit.
    pub committed_ms: u64,
    /// The instance that committed it.
    pub by: String,
}

/// A store the controller commits through.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Commits `next` if the shared state is still at revision `base` (0: it
    /// does not exist yet); `Ok(revision)` of the commit, `Err(Conflict)` when
    /// it moved on, `Err(ClusterUnavailable)` when the store cannot be reached.
    fn commit<'a>(&'a self, base: i64, next: &'a Shared) -> BoxFuture<'a, Result<i64, CtlError>>;

    /// The shared state as it is now, with its revision (`None`: none yet).
    fn read(&self) -> BoxFuture<'_, Result<Option<(Shared, i64)>, CtlError>>;

    /// Returns once every other live instance reports `slot` idle (no stream,
    /// nothing in flight) for at least `quiet`; an instance whose lease
    /// expired counts as idle.
    fn others_idle<'a>(&'a self, slot: &'a str, quiet: Duration) -> BoxFuture<'a, ()>;

    /// The fleet as `status` shows it.
    fn status(&self) -> ClusterStatus;

    /// Takes the fleet's deploy lock (one deploy at a time in the fleet);
    /// dropping the guard releases it. `Busy` when another instance holds it.
    fn lock_deploy(&self) -> BoxFuture<'_, Result<Box<dyn Send + Sync>, CtlError>>;

    /// Records the running deploy's phase for the fleet (best effort).
    fn record_deploy(&self, status: &DeployStatus);

    /// The 5xx and all answers of `slot` on the other instances, as they
    /// published them last (counters since each one started).
    fn others_answers(&self, slot: &str) -> (u64, u64);

    /// Commit elsewhere -> routed here, for `mcpflip_cluster_propagation_seconds`.
    fn propagation(&self) -> crate::stats::HistogramSnapshot;

    /// The shared state at `revision`, committed elsewhere at `committed_ms`,
    /// now routes here.
    fn adopted(&self, revision: i64, committed_ms: u64);
}

/// What the controller starts with in a fleet: the store, the revision of
/// the shared state it starts on (0: none was read), and the drains' clocks.
#[derive(Debug, Clone)]
pub struct Joined {
    pub store: std::sync::Arc<dyn Store>,
    pub revision: i64,
    pub drains: BTreeMap<String, SharedDrain>,
}

/// The drain clocks `next` keeps: those of `before` for slots still
/// draining, a new clock (`now_ms`, `deadline`) for slots that start.
pub fn drains_of(
    before: &BTreeMap<String, SharedDrain>,
    next: &State,
    now_ms: u64,
    deadline: Duration,
) -> BTreeMap<String, SharedDrain> {
    next.slots
        .iter()
        .filter(|s| s.state == crate::table::SlotState::Draining)
        .map(|s| {
            let clock = before.get(&s.name).copied().unwrap_or(SharedDrain {
                started_ms: now_ms,
                deadline_ms: deadline.as_millis() as u64,
            });
            (s.name.clone(), clock)
        })
        .collect()
}

/// What is left of the deadline of the drains in `drains` (the least, when
/// several run), at `now_ms`.
pub fn remaining(drains: &BTreeMap<String, SharedDrain>, now_ms: u64) -> Option<Duration> {
    drains
        .values()
        .map(|d| {
            let end = d.started_ms.saturating_add(d.deadline_ms);
            Duration::from_millis(end.saturating_sub(now_ms))
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draining(names: &[&str]) -> State {
        let mut s = State::from_config([("blue", 0), ("green", 100), ("red", 0)]);
        for r in &mut s.slots {
            if names.contains(&r.name.as_str()) {
                r.state = crate::table::SlotState::Draining;
            }
        }
        s
    }

    #[test]
    fn a_drain_keeps_its_clock_and_a_new_one_starts_now() {
        let d = Duration::from_secs(60);
        let first = drains_of(&BTreeMap::new(), &draining(&["blue"]), 1_000, d);
        assert_eq!(
            first["blue"],
            SharedDrain {
                started_ms: 1_000,
                deadline_ms: 60_000
            }
        );
        // Later, red starts draining too: blue keeps its start, red gets now.
        let second = drains_of(&first, &draining(&["blue", "red"]), 5_000, d);
        assert_eq!(second["blue"].started_ms, 1_000);
        assert_eq!(second["red"].started_ms, 5_000);
        // Blue drained: its clock goes.
        let third = drains_of(&second, &draining(&["red"]), 9_000, d);
        assert!(!third.contains_key("blue"));
    }

    #[test]
    fn what_is_left_of_a_shared_deadline() {
        let mut m = BTreeMap::new();
        assert_eq!(remaining(&m, 0), None);
        m.insert(
            "blue".into(),
            SharedDrain {
                started_ms: 1_000,
                deadline_ms: 10_000,
            },
        );
        assert_eq!(remaining(&m, 4_000), Some(Duration::from_secs(7)));
        // Past its deadline: nothing left (the streams end at once).
        assert_eq!(remaining(&m, 20_000), Some(Duration::ZERO));
    }
}
