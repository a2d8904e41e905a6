//! The watch window after a probed flip, owned by [`Watcher`]: one task that
//! probes the new slot every `[watch] interval`, reads its share of 5xx
//! answers, reports a countdown once a second, and on a failure rolls back to
//! the previous slot (when `auto_rollback` is on and that slot still passes
//! its probe). A new flip or a manual rollback ends the window early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::WatchConfig;
use crate::control::host::Host;
use crate::control::protocol::{Event, Progress, WatchOutcome, WatchStatus};
use crate::stats::SlotStats;

/// The watch judges the 5xx share only once the new slot answered this many requests.
const MIN_ANSWERS_FOR_RATIO: u64 = 10;
/// How often the window reports its countdown.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Handle {
    slot: String,
    cancel: CancellationToken,
    outcome: Arc<watch::Sender<Option<WatchOutcome>>>,
    started: Instant,
    window: Duration,
    probes: Arc<AtomicU64>,
}

/// The watch window that runs (at most one: a new flip ends the last one).
#[derive(Debug, Default)]
pub struct Watcher {
    current: Mutex<Option<Handle>>,
    /// Windows ended, by outcome (`WATCH_RESULTS` order), for `/metrics`;
    /// shared with the window's task, which sets most outcomes.
    ended: Arc<[AtomicU64; 4]>,
    /// The slot and outcome of the last window, once its task ended it (set
    /// before `watch_ended` is published, so a status read on that event has
    /// it); cleared when a window starts, so it is never an older window's.
    last: Arc<Mutex<Option<(String, WatchOutcome)>>>,
}

/// The `result` label values of `mcpflip_watch_outcomes_total`, as the
/// control protocol spells them.
pub const WATCH_RESULTS: [&str; 4] = ["passed", "rolled_back", "failed", "cancelled"];

fn result_index(o: &WatchOutcome) -> usize {
    match o {
        WatchOutcome::Passed { .. } => 0,
        WatchOutcome::RolledBack { .. } => 1,
        WatchOutcome::Failed { .. } => 2,
        WatchOutcome::Cancelled { .. } => 3,
    }
}

/// Sets the outcome unless one is set already, and counts it when it does.
fn finish(ended: &[AtomicU64; 4], tx: &watch::Sender<Option<WatchOutcome>>, outcome: WatchOutcome) {
    let i = result_index(&outcome);
    let set = tx.send_if_modified(|o| {
        if o.is_none() {
            *o = Some(outcome);
            true
        } else {
            false
        }
    });
    if set {
        ended[i].fetch_add(1, Ordering::Relaxed);
    }
}

impl Watcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Handle>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `slot` for `window`, ending the window that ran.
    pub(crate) fn start<H: Host>(&self, ctl: &Arc<H>, slot: &str, window: Duration) {
        let cfg = ctl.config().watch.clone();
        let (tx, _) = watch::channel(None);
        let tx = Arc::new(tx);
        let cancel = ctl.shutdown_token().child_token();
        let probes = Arc::new(AtomicU64::new(0));
        let old = self.lock().replace(Handle {
            slot: slot.to_owned(),
            cancel: cancel.clone(),
            outcome: Arc::clone(&tx),
            started: Instant::now(),
            window,
            probes: Arc::clone(&probes),
        });
        if let Some(old) = old {
            finish(
                &self.ended,
                &old.outcome,
                WatchOutcome::Cancelled {
                    reason: "superseded by a new flip".into(),
                },
            );
            old.cancel.cancel();
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let ctl = Arc::clone(ctl);
        let slot = slot.to_owned();
        let ended = Arc::clone(&self.ended);
        let last = Arc::clone(&self.last);
        tokio::spawn(async move {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                o = run(&*ctl, &slot, window, &cfg, &probes) => o,
            };
            match &outcome {
                WatchOutcome::Passed { probes } => {
                    tracing::info!(slot, probes, "watch window passed")
                }
                other => tracing::warn!(slot, outcome = ?other, "watch window failed"),
            }
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some((slot.clone(), outcome.clone()));
            ctl.publish(Event::WatchEnded {
                slot: slot.clone(),
                outcome: outcome.clone(),
            });
            finish(&ended, &tx, outcome);
        });
    }

    /// Ends the window that runs, if any, with `why`.
    pub(crate) fn cancel(&self, why: &str) {
        if let Some(h) = self.lock().take() {
            finish(
                &self.ended,
                &h.outcome,
                WatchOutcome::Cancelled {
                    reason: why.to_owned(),
                },
            );
            h.cancel.cancel();
        }
    }

    /// How the window that started last ended, when its task ended it (passed,
    /// rolled back or failed) and it watched `slot`.
    pub fn last_outcome(&self, slot: &str) -> Option<WatchOutcome> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(s, _)| s == slot)
            .map(|(_, o)| o.clone())
    }

    /// Windows that ended with `WATCH_RESULTS[i]` so far.
    pub fn ended(&self, i: usize) -> u64 {
        self.ended.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The window that runs, for `status`.
    pub fn status(&self) -> Option<WatchStatus> {
        let w = self.lock();
        let h = w.as_ref()?;
        if h.outcome.borrow().is_some() {
            return None;
        }
        Some(WatchStatus {
            slot: h.slot.clone(),
            elapsed_ms: h.started.elapsed().as_millis() as u64,
            window_ms: h.window.as_millis() as u64,
            probes: h.probes.load(Ordering::Relaxed),
        })
    }

    /// Waits for the window of `slot` to end, passing its countdown to `progress`.
    pub(crate) async fn wait<H: Host>(
        &self,
        ctl: &H,
        slot: &str,
        mut progress: impl FnMut(Progress),
    ) -> WatchOutcome {
        let mut events = ctl.subscribe();
        let found = self.lock().as_ref().filter(|h| h.slot == slot).map(|h| {
            (
                h.outcome.subscribe(),
                Progress::Watch {
                    slot: slot.to_owned(),
                    elapsed_ms: h.started.elapsed().as_millis() as u64,
                    window_ms: h.window.as_millis() as u64,
                    probes: h.probes.load(Ordering::Relaxed),
                },
            )
        });
        let Some((mut rx, first)) = found else {
            return WatchOutcome::Cancelled {
                reason: "superseded by another flip".to_owned(),
            };
        };
        if rx.borrow().is_none() {
            progress(first);
        }
        loop {
            if let Some(o) = rx.borrow_and_update().clone() {
                return o;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return rx.borrow().clone().unwrap_or(WatchOutcome::Cancelled { reason: "the watch stopped".to_owned() });
                },
                e = events.recv() => match e {
                    Ok(Event::Progress(p @ Progress::Watch { .. })) if matches!(&p, Progress::Watch { slot: s, .. } if s == slot) => progress(p),
                    Err(broadcast::error::RecvError::Closed) => return WatchOutcome::Cancelled { reason: "the proxy is shutting down".to_owned() },
                    _ => {}
                },
            }
        }
    }
}

/// Responses of every status class so far.
fn answers(s: &SlotStats) -> u64 {
    (1..=5).map(|c| s.responses(c)).sum()
}

/// The window itself.
async fn run<H: Host>(
    ctl: &H,
    slot: &str,
    window: Duration,
    cfg: &WatchConfig,
    probes: &AtomicU64,
) -> WatchOutcome {
    let Some(stats) = ctl.tables().load().get(slot).map(|s| Arc::clone(&s.stats)) else {
        return WatchOutcome::Failed {
            reason: format!("slot {slot} vanished"),
        };
    };
    // Only 5xx the slot caused count: a client's broken body is its own 4xx.
    // In a fleet, the share is the fleet's: this instance's answers and the
    // others' as they published them.
    let fleet = |slot: &str| {
        let (e, a) = ctl.others_answers(slot);
        (stats.upstream_failures() + e, answers(&stats) + a)
    };
    let (base_5xx, base_all) = fleet(slot);
    let started = tokio::time::Instant::now();
    let end = started + window;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            return WatchOutcome::Passed {
                probes: probes.load(Ordering::Relaxed),
            };
        }
        let next = tokio::time::sleep_until((now + cfg.interval).min(end));
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = &mut next => break,
                _ = tick.tick() => ctl.publish(Event::Progress(Progress::Watch {
                    slot: slot.to_owned(),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    window_ms: window.as_millis() as u64,
                    probes: probes.load(Ordering::Relaxed),
                })),
            }
        }
        let (now_5xx, now_all) = fleet(slot);
        // An instance whose lease expired takes its counts with it.
        let errors = now_5xx.saturating_sub(base_5xx);
        let all = now_all.saturating_sub(base_all);
        let mut reason = None;
        if all >= MIN_ANSWERS_FOR_RATIO {
            let ratio = errors as f64 / all as f64;
            if ratio > cfg.max_error_ratio {
                reason = Some(format!(
                    "{slot} answered {errors} of {all} requests with 5xx ({:.1}% > max_error_ratio {:.1}%)",
                    ratio * 100.0,
                    cfg.max_error_ratio * 100.0
                ));
            }
        }
        if reason.is_none() {
            match ctl.probe(slot).await {
                Ok(r) if r.ok => {
                    probes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => {
                    reason = Some(format!(
                        "probe of {slot} failed: {}",
                        r.error.as_deref().unwrap_or("unknown failure")
                    ))
                }
                Err(e) => reason = Some(e.to_string()),
            }
        }
        let Some(reason) = reason else { continue };
        if !cfg.auto_rollback {
            return WatchOutcome::Failed { reason };
        }
        // The new slot fails: flipping back is kept even if it cannot be saved.
        return match ctl.roll_back(&reason).await {
            Ok(r) => WatchOutcome::RolledBack {
                to: r.to,
                reason,
                persisted: r.persisted,
            },
            Err(e) => WatchOutcome::Failed {
                reason: format!("{reason}; no rollback: {e}"),
            },
        };
    }
}
