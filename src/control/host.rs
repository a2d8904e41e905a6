//! What the drain and watch tasks need from the control plane, as a trait the
//! controller implements: the table to read counts from, the event hub, the
//! shutdown token, and the few commands they issue (a drain's end, a probe, a
//! rollback). The tasks depend on this, not on the controller, so the
//! controller can own them without a module cycle.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::protocol::{CtlError, Event, Flipped};
use crate::control::state::Command;
use crate::probe::ProbeReport;
use crate::table::Tables;

/// The control plane as its tasks see it.
pub trait Host: Send + Sync + 'static {
    /// The routing table (for slots, generations and live counts).
    fn tables(&self) -> &Tables;
    /// The config as it is now.
    fn config(&self) -> Arc<Config>;
    /// Cancelled when the proxy shuts down.
    fn shutdown_token(&self) -> &CancellationToken;
    /// Every event from now on.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
    /// Publishes an event (nobody listening is fine).
    fn publish(&self, event: Event);
    /// Whether the state file holds the state that routes.
    fn persisted(&self) -> bool;
    /// Applies drain task `id`'s end (`Command::Drained`) unless a later
    /// change made it moot; `Ok(persisted)`.
    fn drained(&self, cmd: Command, id: u64)
        -> impl Future<Output = Result<bool, CtlError>> + Send;
    /// Runs the configured probe against `slot`.
    fn probe(&self, slot: &str) -> impl Future<Output = Result<ProbeReport, CtlError>> + Send;
    /// Returns once the rest of the fleet (if any) reports `slot` idle for
    /// `quiet`; on its own, at once.
    fn others_idle(
        &self,
        slot: &str,
        quiet: std::time::Duration,
    ) -> impl Future<Output = ()> + Send;
    /// The 5xx and all answers of `slot` on the rest of the fleet (none on its own).
    fn others_answers(&self, slot: &str) -> (u64, u64);
    /// Flips back to the previous slot (after probing it) because `reason`;
    /// kept even if it cannot be saved.
    fn roll_back(&self, reason: &str) -> impl Future<Output = Result<Flipped, CtlError>> + Send;
}
