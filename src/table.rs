//! The routing table: slots with upstream, weight, state and generation, and the
//! weighted pick. A `Table` is immutable; every change builds a new one and
//! swaps it into the [`Tables`] holder in one atomic store. Readers load the
//! current snapshot once per request and never lock.

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use http::uri::{Authority, Scheme};
use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::stats::SlotStats;
use crate::upstream::UpstreamClient;

/// The largest weight a slot may have, in the config and at run time (the
/// cumulative pick adds weights in a `u32`: thousands of slots at this bound
/// still fit).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// The lifecycle state of a slot (INTERFACE.md, "Slot states").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// weight > 0: gets new sessions.
    Serving,
    /// weight 0: not serving; ready to take traffic.
    Standby,
    /// weight 0: still serves the sessions pinned to it.
    Draining,
    /// No live stream, nothing in flight: safe to stop.
    Drained,
    /// Its process is gone: pinned requests are answered 404.
    Retired,
}

impl SlotState {
    pub const ALL: [SlotState; 5] = [
        Self::Serving,
        Self::Standby,
        Self::Draining,
        Self::Drained,
        Self::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Standby => "standby",
            Self::Draining => "draining",
            Self::Drained => "drained",
            Self::Retired => "retired",
        }
    }

    /// Whether requests pinned to a slot in this state are forwarded to it. A
    /// drained slot's process is still up until it is retired, so a late request
    /// of one of its sessions is still served rather than cut with a 404.
    pub fn accepts_pinned(self) -> bool {
        matches!(self, Self::Serving | Self::Draining | Self::Drained)
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One upstream slot as the request path sees it. Built by the controller for
/// each table; a new generation of a slot (a restarted process) always comes
/// with a new `client`, so no pooled connection to the old process is reused.
#[derive(Debug)]
pub struct Slot {
    pub name: Arc<str>,
    /// The upstream URL as configured (for status output).
    pub upstream: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` value sent upstream unless `preserve_host` is set.
    pub host_header: HeaderValue,
    pub weight: u32,
    pub state: SlotState,
    pub generation: u32,
    /// `mf1.<name>.<generation>.`, made once per slot version (see `affinity`).
    pub tag_prefix: Arc<str>,
    pub stats: Arc<SlotStats>,
    pub client: UpstreamClient,
}

/// An immutable snapshot of every slot.
#[derive(Debug)]
pub struct Table {
    pub slots: Vec<Arc<Slot>>,
    /// Running sums of the weights of serving slots, aligned with `slots`.
    cumulative: Vec<u32>,
    total: u32,
    /// Increases with every swap; lets waiters see that something changed.
    pub version: u64,
}

impl Table {
    pub fn new(slots: Vec<Arc<Slot>>, version: u64) -> Table {
        let mut total = 0u32;
        let cumulative = slots
            .iter()
            .map(|s| {
                if s.state == SlotState::Serving {
                    total = total.saturating_add(s.weight);
                }
                total
            })
            .collect();
        Table {
            slots,
            cumulative,
            total,
            version,
        }
    }

    /// Weighted pick among serving slots; `None` when no slot serves.
    pub fn pick(&self) -> Option<&Arc<Slot>> {
        self.pick_with(fastrand::u32(..self.total.max(1)))
    }

    /// The pick for a given point in `0..total` (split out for tests).
    fn pick_with(&self, point: u32) -> Option<&Arc<Slot>> {
        if self.total == 0 {
            return None;
        }
        let i = self.cumulative.partition_point(|&c| c <= point);
        self.slots.get(i)
    }

    /// Weighted pick that skips `avoid` (for retrying a refused connection).
    pub fn pick_other(&self, avoid: &str) -> Option<&Arc<Slot>> {
        let total: u32 = self
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Serving && &*s.name != avoid)
            .map(|s| s.weight)
            .sum();
        if total == 0 {
            return None;
        }
        let mut point = fastrand::u32(..total);
        for s in &self.slots {
            if s.state == SlotState::Serving && &*s.name != avoid {
                if point < s.weight {
                    return Some(s);
                }
                point -= s.weight;
            }
        }
        None
    }

    /// The slot called `name` (a linear scan: tables hold a handful of slots).
    pub fn get(&self, name: &str) -> Option<&Arc<Slot>> {
        self.slots.iter().find(|s| &*s.name == name)
    }

    /// The serving slot with the highest weight, if any.
    pub fn active(&self) -> Option<&Arc<Slot>> {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Serving)
            .max_by_key(|s| s.weight)
    }
}

/// The one shared holder of the current table.
#[derive(Debug)]
pub struct Tables(ArcSwap<Table>);

impl Tables {
    pub fn new(table: Table) -> Self {
        Tables(ArcSwap::from_pointee(table))
    }

    /// The current snapshot: one atomic load, no lock.
    pub fn load(&self) -> Guard<Arc<Table>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<Table> {
        self.0.load_full()
    }

    /// Replaces the table, returning the one it replaced. Only the
    /// controller's owner task calls this.
    pub(crate) fn swap(&self, table: Arc<Table>) -> Arc<Table> {
        self.0.swap(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SlotStats;

    fn slot(name: &str, weight: u32, state: SlotState) -> Arc<Slot> {
        Arc::new(Slot {
            name: Arc::from(name),
            upstream: "http://127.0.0.1:1".into(),
            scheme: Scheme::HTTP,
            authority: Authority::from_static("127.0.0.1:1"),
            host_header: HeaderValue::from_static("127.0.0.1:1"),
            weight,
            state,
            generation: 1,
            tag_prefix: crate::mcp::tag::tag_prefix(name, 1),
            stats: SlotStats::new(name),
            client: UpstreamClient::new(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(1),
            ),
        })
    }

    #[tokio::test]
    async fn weighted_pick_follows_weights() {
        let t = Table::new(
            vec![
                slot("blue", 30, SlotState::Serving),
                slot("green", 70, SlotState::Serving),
                slot("red", 50, SlotState::Standby),
            ],
            1,
        );
        for (point, expected) in [(0, "blue"), (29, "blue"), (30, "green"), (99, "green")] {
            let picked = t.pick_with(point).map(|s| s.name.clone()).expect("a slot");
            assert_eq!(&*picked, expected, "point {point}");
        }
        let mut blue = 0;
        for _ in 0..10_000 {
            if &*t.pick().expect("a slot").name == "blue" {
                blue += 1;
            }
        }
        assert!((2_500..3_500).contains(&blue), "blue got {blue} of 10000");
        assert_eq!(&*t.pick_other("green").expect("a slot").name, "blue");
    }

    #[tokio::test]
    async fn nothing_serving_picks_nothing() {
        let t = Table::new(vec![slot("blue", 100, SlotState::Draining)], 1);
        assert!(t.pick().is_none());
        assert!(t.active().is_none());
    }
}
