//! Drain until zero: a slot is drained when no stream is open, nothing is in
//! flight, and no pinned request arrived for the quiet period (never less than
//! the largest SSE `retry:` the slot sent). Event driven: the guard that brings a
//! count to zero wakes the waiter; the only timer is the quiet period itself.

use std::time::Duration;

use crate::stats::SlotStats;

/// Returns once `stats` is idle and has been quiet for `quiet`.
pub async fn until_drained(stats: &SlotStats, quiet: Duration) {
    loop {
        stats.wait_idle().await;
        let quiet = quiet.max(stats.max_retry());
        match stats.since_last_pinned() {
            Some(since) if since < quiet => tokio::time::sleep(quiet - since).await,
            _ if stats.is_idle() => return,
            _ => {}
        }
    }
}
