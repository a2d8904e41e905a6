//! The watch window after a probed flip: its handle and how it ended. The
//! window itself runs in `deploy`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How a watch window ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchOutcome {
    Passed {
        probes: u64,
    },
    RolledBack {
        reason: String,
        to: String,
    },
    /// The slot failed but was not rolled back (auto_rollback off, or the old slot failed its probe).
    Failed {
        reason: String,
    },
    Cancelled {
        why: String,
    },
}

impl WatchOutcome {
    pub fn to_json(&self) -> Value {
        match self {
            WatchOutcome::Passed { probes } => json!({"result": "passed", "probes": probes}),
            WatchOutcome::RolledBack { reason, to } => {
                json!({"result": "rolled_back", "reason": reason, "to": to})
            }
            WatchOutcome::Failed { reason } => json!({"result": "failed", "reason": reason}),
            WatchOutcome::Cancelled { why } => json!({"result": "cancelled", "reason": why}),
        }
    }
}

/// A running (or finished) watch window.
#[derive(Debug)]
pub struct WatchHandle {
    pub(crate) slot: String,
    pub(crate) cancel: CancellationToken,
    pub(crate) tx: Arc<watch::Sender<Option<WatchOutcome>>>,
    pub(crate) started: Instant,
    pub(crate) window: Duration,
    pub(crate) probes: Arc<AtomicU64>,
}

impl WatchHandle {
    /// Sets the outcome unless one is set already.
    pub(crate) fn finish(tx: &watch::Sender<Option<WatchOutcome>>, outcome: WatchOutcome) {
        tx.send_if_modified(|o| {
            if o.is_none() {
                *o = Some(outcome);
                true
            } else {
                false
            }
        });
    }
}
