//! Drains: one task per draining slot, owned by [`Drains`]. A drain ends when
//! no stream is open, nothing is in flight, and no pinned request arrived for
//! the quiet period (never less than the largest SSE `retry:` the slot sent),
//! or at its deadline, where the remaining streams end at an event boundary.
//! Event driven: the guard that brings a count to zero wakes the drain; the
//! only timers are the quiet period, the deadline and a once-a-second
//! progress event. When it ends, the task tells the controller (`drained`)
//! like any client, then its waiters.
//!
//! The controller starts and cancels drain tasks as the state says
//! (`Drains::reconcile` after every change): a slot flipped back, weighted
//! up or restarted stops draining, and its waiters hear `drain_cancelled`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::control::host::Host;
use crate::control::protocol::{CtlError, DrainOutcome, DrainStatus, Event, Progress};
use crate::control::state::Command;
use crate::stats::SlotStats;
use crate::table::{SlotState, Table};

/// How often a drain reports its counts.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// After the deadline ended the streams, how long to wait for them to close.
const FORCE_GRACE: Duration = Duration::from_secs(5);

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

/// Returns once `slot` is drained everywhere: here (idle and quiet, as
/// [`until_drained`]) and on every other instance of the fleet (as they
/// report it; on its own, at once). Here is checked again after the fleet,
/// since a pinned request may have arrived meanwhile.
async fn until_drained_everywhere<H: Host>(
    ctl: &H,
    slot: &str,
    stats: &SlotStats,
    quiet: Duration,
) {
    loop {
        until_drained(stats, quiet).await;
        ctl.others_idle(slot, quiet).await;
        let quiet = quiet.max(stats.max_retry());
        if stats.is_idle() && stats.since_last_pinned().is_none_or(|s| s >= quiet) {
            return;
        }
    }
}

/// How long a drain's end waits before it is committed again while the
/// fleet's etcd cannot be reached.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(1);

/// One drain task's handle.
#[derive(Debug)]
struct Handle {
    /// Tells this task from an earlier drain of the same slot and generation.
    id: u64,
    generation: u32,
    cancel: CancellationToken,
    /// Cut the drain now, whatever its deadline (`drain --migrate` on a
    /// slot already draining).
    cut: CancellationToken,
    outcome: watch::Receiver<Option<DrainOutcome>>,
    started: Instant,
    deadline: Duration,
}

/// The drain tasks, by slot name.
#[derive(Debug, Default)]
pub struct Drains {
    tasks: Mutex<HashMap<String, Handle>>,
    next_id: AtomicU64,
    /// Deadlines for the next drain of a slot, taken once: what was left of
    /// the drains of the process this one took over from (`handover`).
    resumed: Mutex<HashMap<String, Duration>>,
}

impl Drains {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next drain of each named slot gets this deadline instead of the
    /// configured one (the remaining time of a drain handed over).
    pub(crate) fn resume_with(&self, deadlines: impl IntoIterator<Item = (String, Duration)>) {
        self.resumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(deadlines);
    }

    /// Makes the drain tasks match `table`: a task for every draining slot
    /// (started with `deadline`), none for a slot that stopped draining. A
    /// finished drain of a slot that is now drained is kept for its waiters.
    pub(crate) fn reconcile<H: Host>(
        &self,
        ctl: &Arc<H>,
        table: &Table,
        deadline: Duration,
        quiet: Duration,
    ) {
        let mut tasks = self.lock();
        tasks.retain(|name, h| {
            let keep = table.get(name).is_some_and(|s| {
                s.generation == h.generation
                    && matches!(s.state, SlotState::Draining | SlotState::Drained)
            });
            if !keep {
                h.cancel.cancel();
            }
            keep
        });
        for s in &table.slots {
            if s.state != SlotState::Draining || tasks.contains_key(&*s.name) {
                continue;
            }
            let deadline = self
                .resumed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&*s.name)
                .unwrap_or(deadline);
            let cancel = ctl.shutdown_token().child_token();
            let cut = CancellationToken::new();
            let (tx, rx) = watch::channel(None);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            tasks.insert(
                s.name.to_string(),
                Handle {
                    id,
                    generation: s.generation,
                    cancel: cancel.clone(),
                    cut: cut.clone(),
                    outcome: rx,
                    started: Instant::now(),
                    deadline,
                },
            );
            tokio::spawn(run(
                Arc::clone(ctl),
                Task {
                    id,
                    slot: s.name.to_string(),
                    generation: s.generation,
                    stats: Arc::clone(&s.stats),
                    deadline,
                    quiet,
                    cancel,
                    cut,
                },
                tx,
            ));
        }
    }

    /// Cuts the running drain of `slot` now, as its deadline would
    /// (`drain SLOT --migrate` while it drains: its sessions move, its
    /// streams end at event boundaries). False when none runs.
    pub(crate) fn cut(&self, slot: &str) -> bool {
        match self.lock().get(slot) {
            Some(h) if h.outcome.borrow().is_none() => {
                h.cut.cancel();
                true
            }
            _ => false,
        }
    }

    /// The drains that run, for `status`.
    pub fn status(&self) -> Vec<DrainStatus> {
        let mut out: Vec<DrainStatus> = self
            .lock()
            .iter()
            .filter(|(_, h)| h.outcome.borrow().is_none())
            .map(|(name, h)| DrainStatus {
                slot: name.clone(),
                elapsed_ms: h.started.elapsed().as_millis() as u64,
                deadline_ms: h.deadline.as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.slot.cmp(&b.slot));
        out
    }

    /// Whether drain task `id` is still the drain of `slot` (not cancelled,
    /// not replaced by a later drain of the same generation).
    pub(crate) fn is_current(&self, slot: &str, id: u64) -> bool {
        self.lock().get(slot).is_some_and(|h| h.id == id)
    }

    fn find(
        &self,
        slot: &str,
    ) -> Option<(watch::Receiver<Option<DrainOutcome>>, Instant, Duration)> {
        self.lock()
            .get(slot)
            .map(|h| (h.outcome.clone(), h.started, h.deadline))
    }
}

struct Task {
    id: u64,
    slot: String,
    generation: u32,
    stats: Arc<SlotStats>,
    deadline: Duration,
    quiet: Duration,
    cancel: CancellationToken,
    cut: CancellationToken,
}

impl Task {
    fn progress(&self, started: Instant) -> Progress {
        Progress::Drain {
            slot: self.slot.clone(),
            live_streams: self.stats.live_streams(),
            inflight: self.stats.inflight(),
            elapsed_ms: started.elapsed().as_millis() as u64,
            deadline_ms: self.deadline.as_millis() as u64,
        }
    }
}

/// The deadline passed (or `drain --migrate`): the slot's sessions may move,
/// its streams end at event boundaries; returns how many were open.
async fn force_end(t: &Task) -> u64 {
    let n = t.stats.live_streams();
    tracing::warn!(slot = %t.slot, streams = n, "drain deadline passed: ending the remaining streams at event boundaries");
    // With `[drain] migrate = "replay"`, its sessions move to a serving slot
    // from now on (`proxy::migrate::must_move`).
    t.stats.set_cut(true);
    // Streams opened meanwhile end at once too, until this drain
    // ends or is cancelled (the slot may serve again).
    let _forced = t.stats.force_streams();
    // A forced stream ends within its grace (its connection closed
    // if its client does not read): never `drained` while one is open.
    t.stats.wait_streams_ended().await;
    let _ = tokio::time::timeout(FORCE_GRACE, t.stats.wait_idle()).await;
    n
}

/// One drain, from start to `drained` (or its cancellation, which drops `tx`).
async fn run<H: Host>(ctl: Arc<H>, t: Task, tx: watch::Sender<Option<DrainOutcome>>) {
    let started = Instant::now();
    // A zero deadline is `drain --migrate`: the slot's sessions may move at
    // once (with `[drain] migrate = "replay"`), before any stream is ended.
    // A drain that is not cut keeps its sessions where they are.
    t.stats.set_cut(t.deadline.is_zero());
    let work = async {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(t.deadline), if t.deadline.is_zero() => {
                force_end(&t).await
            }
            _ = t.cut.cancelled() => force_end(&t).await,
            _ = until_drained_everywhere(&*ctl, &t.slot, &t.stats, t.quiet) => 0,
            _ = tokio::time::sleep(t.deadline) => force_end(&t).await,
        }
    };
    tokio::pin!(work);

    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let forced = loop {
        tokio::select! {
            _ = t.cancel.cancelled() => return,
            forced = &mut work => break forced,
            _ = tick.tick() => ctl.publish(Event::Progress(t.progress(started))),
        }
    };
    let elapsed = started.elapsed();
    t.stats.record_drain(elapsed, forced);
    let cmd = Command::Drained {
        slot: t.slot.clone(),
        generation: t.generation,
    };
    // In a fleet cut off from etcd, the end waits for etcd (it is the fleet's
    // fact, committed once); the streams here have ended either way.
    let applied = loop {
        match ctl.drained(cmd.clone(), t.id).await {
            Err(CtlError::ClusterUnavailable { .. }) => tokio::select! {
                _ = t.cancel.cancelled() => return,
                _ = tokio::time::sleep(RETRY_UNAVAILABLE) => {}
            },
            other => break other,
        }
    };
    // Flipped back (or shutting down) while the drain ended: nobody waits for it.
    let persisted = match applied {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(slot = %t.slot, error = %e, "the drain's end was not applied");
            return;
        }
    };
    if t.cancel.is_cancelled() {
        return;
    }
    let outcome = DrainOutcome {
        drained_after_ms: elapsed.as_millis() as u64,
        forced,
        persisted,
    };
    tracing::info!(slot = %t.slot, ms = outcome.drained_after_ms, forced, "drained");
    ctl.publish(Event::DrainEnded {
        slot: t.slot.clone(),
        outcome,
    });
    let _ = tx.send(Some(outcome));
}

/// Waits until `slot` is drained, passing its progress (about once a second)
/// to `progress`. `timeout` gives up waiting (the drain goes on).
pub async fn wait<H: Host>(
    ctl: &H,
    drains: &Drains,
    slot: &str,
    timeout: Option<Duration>,
    mut progress: impl FnMut(Progress),
) -> Result<DrainOutcome, CtlError> {
    let table = ctl.tables().load_full();
    let s = table
        .get(slot)
        .cloned()
        .ok_or_else(|| CtlError::unknown_slot(slot, table.slots.iter().map(|s| &*s.name)))?;
    // Subscribe before looking at the drain, so no progress falls in between.
    let mut events = ctl.subscribe();
    let Some((mut outcome, started, deadline)) = drains.find(slot) else {
        return match s.state {
            SlotState::Drained => Ok(DrainOutcome {
                drained_after_ms: 0,
                forced: 0,
                persisted: ctl.persisted(),
            }),
            state => Err(CtlError::NotDraining {
                slot: slot.to_owned(),
                state,
            }),
        };
    };
    if outcome.borrow().is_none() {
        progress(Progress::Drain {
            slot: slot.to_owned(),
            live_streams: s.stats.live_streams(),
            inflight: s.stats.inflight(),
            elapsed_ms: started.elapsed().as_millis() as u64,
            deadline_ms: deadline.as_millis() as u64,
        });
    }
    let limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(limit);
    loop {
        if let Some(o) = *outcome.borrow_and_update() {
            return Ok(o);
        }
        tokio::select! {
            changed = outcome.changed() => if changed.is_err() {
                return Err(CtlError::DrainCancelled { slot: slot.to_owned() });
            },
            e = events.recv() => match e {
                Ok(Event::Progress(p @ Progress::Drain { .. })) if progress_of(&p) == Some(slot) => progress(p),
                Err(broadcast::error::RecvError::Closed) => return Err(CtlError::ShuttingDown),
                _ => {}
            },
            _ = &mut limit => return Err(CtlError::Timeout {
                slot: slot.to_owned(),
                live_streams: s.stats.live_streams(),
                inflight: s.stats.inflight(),
            }),
        }
    }
}

fn progress_of(p: &Progress) -> Option<&str> {
    match p {
        Progress::Drain { slot, .. } | Progress::Watch { slot, .. } | Progress::Probe { slot } => {
            Some(slot)
        }
        Progress::Flip { .. } => None,
    }
}
