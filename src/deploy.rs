//! Probe-gated flips, the watch window with automatic rollback, and `deploy`:
//! the guide's manual sequence (smoke test, flip, `sleep 120`, verify, roll back
//! by hand) as controller operations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::controller::{Controller, CtlError, DrainOutcome};
use crate::probe::{self, ProbeReport};
use crate::watch::{WatchHandle, WatchOutcome};

/// The watch judges the 5xx share only once the new slot answered this many requests.
const MIN_ANSWERS_FOR_RATIO: u64 = 10;
/// How often a waiting `deploy` reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How `flip` was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlipOptions {
    pub no_probe: bool,
    pub drain: bool,
    /// Drain deadline for the old slots (else `[drain] deadline`).
    pub deadline: Option<Duration>,
    /// Watch window (else `[watch] window`).
    pub window: Option<Duration>,
}

fn probe_failed(report: &ProbeReport) -> CtlError {
    CtlError::new(
        "probe_failed",
        format!(
            "probe of {} failed: {}; nothing changed",
            report.slot,
            report.error.as_deref().unwrap_or("unknown failure")
        ),
    )
    .with("probe", serde_json::to_value(report).unwrap_or(Value::Null))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Controller {
    /// `probe SLOT`: the configured MCP probe against the slot's upstream.
    pub async fn probe_slot(&self, name: &str) -> Result<ProbeReport, CtlError> {
        let table = self.tables.load_full();
        let slot = table
            .get(name)
            .ok_or_else(|| CtlError::unknown_slot(name, &table))?;
        let (cfg, _) = self.probe_settings();
        let report = probe::probe(slot, &cfg).await;
        tracing::info!(
            slot = name,
            ok = report.ok,
            ms = report.ms,
            error = report.error.as_deref().unwrap_or(""),
            "probe"
        );
        Ok(report)
    }

    /// `flip SLOT`: probes first (unless `no_probe`); on a pass flips and starts
    /// the watch window. A failed probe changes nothing.
    pub async fn gated_flip(
        self: &Arc<Self>,
        to: &str,
        opts: FlipOptions,
    ) -> Result<(Value, Vec<String>), CtlError> {
        let report = if opts.no_probe {
            None
        } else {
            let r = self.probe_slot(to).await?;
            if !r.ok {
                return Err(probe_failed(&r));
            }
            Some(r)
        };
        self.cancel_watch("superseded by a new flip");
        let (mut reply, from) = self.flip(to, opts.drain, opts.deadline).await?;
        reply["probe"] = report
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok())
            .unwrap_or(Value::Null);
        // A flip without a probe is not watched by probes either: the operator opted out.
        if report.is_some() {
            let (_, w) = self.probe_settings();
            let window = opts.window.unwrap_or(w.window);
            self.start_watch(to, window);
            reply["watch_ms"] = json!(window.as_millis() as u64);
        }
        Ok((reply, from))
    }

    /// The running watch, for `status`.
    pub fn watch_status(&self) -> Option<Value> {
        let w = self.watch.lock().ok()?;
        let h = w.as_ref()?;
        if h.tx.borrow().is_some() {
            return None;
        }
        Some(json!({
            "slot": h.slot,
            "elapsed_ms": h.started.elapsed().as_millis() as u64,
            "window_ms": h.window.as_millis() as u64,
            "probes": h.probes.load(Ordering::Relaxed),
        }))
    }

    fn cancel_watch(&self, why: &str) {
        let Ok(mut w) = self.watch.lock() else { return };
        if let Some(h) = w.take() {
            WatchHandle::finish(
                &h.tx,
                WatchOutcome::Cancelled {
                    why: why.to_owned(),
                },
            );
            h.cancel.cancel();
        }
    }

    fn start_watch(self: &Arc<Self>, slot: &str, window: Duration) {
        let (_, cfg) = self.probe_settings();
        let (tx, _) = watch::channel(None);
        let tx = Arc::new(tx);
        let cancel = self.shutdown_token().child_token();
        let probes = Arc::new(AtomicU64::new(0));
        let handle = WatchHandle {
            slot: slot.to_owned(),
            cancel: cancel.clone(),
            tx: Arc::clone(&tx),
            started: Instant::now(),
            window,
            probes: Arc::clone(&probes),
        };
        if let Ok(mut w) = self.watch.lock() {
            *w = Some(handle);
        }
        let ctl = Arc::clone(self);
        let slot = slot.to_owned();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                o = ctl.run_watch(&slot, window, cfg, &probes) => o,
            };
            match &outcome {
                WatchOutcome::Passed { probes } => {
                    tracing::info!(slot, probes, "watch window passed")
                }
                other => tracing::warn!(slot, outcome = ?other, "watch window failed"),
            }
            WatchHandle::finish(&tx, outcome);
        });
    }

    async fn run_watch(
        self: &Arc<Self>,
        slot: &str,
        window: Duration,
        cfg: crate::config::WatchConfig,
        probes: &AtomicU64,
    ) -> WatchOutcome {
        let Some(stats) = self.tables.load().get(slot).map(|s| Arc::clone(&s.stats)) else {
            return WatchOutcome::Failed {
                reason: format!("slot {slot} vanished"),
            };
        };
        let answers = |s: &crate::stats::SlotStats| (1..=5).map(|c| s.responses(c)).sum::<u64>();
        let (base_5xx, base_all) = (stats.responses(5), answers(&stats));
        let end = tokio::time::Instant::now() + window;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                return WatchOutcome::Passed {
                    probes: probes.load(Ordering::Relaxed),
                };
            }
            tokio::time::sleep_until((now + cfg.interval).min(end)).await;
            let errors = stats.responses(5) - base_5xx;
            let all = answers(&stats) - base_all;
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
                match self.probe_slot(slot).await {
                    Ok(r) if r.ok => {
                        probes.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        reason = Some(format!(
                            "probe of {slot} failed: {}",
                            r.error.as_deref().unwrap_or("unknown failure")
                        ))
                    }
                    Err(e) => reason = Some(e.message),
                }
            }
            let Some(reason) = reason else { continue };
            if !cfg.auto_rollback {
                return WatchOutcome::Failed { reason };
            }
            return match self.rollback_inner(&reason).await {
                Ok(v) => WatchOutcome::RolledBack {
                    to: v["to"].as_str().unwrap_or("?").to_owned(),
                    reason,
                },
                Err(e) => WatchOutcome::Failed {
                    reason: format!("{reason}; no rollback: {}", e.message),
                },
            };
        }
    }

    /// `rollback`: back to the slot active before the last flip, if it passes its probe.
    pub async fn rollback(self: &Arc<Self>) -> Result<Value, CtlError> {
        self.cancel_watch("manual rollback");
        self.rollback_inner("manual rollback").await
    }

    async fn rollback_inner(self: &Arc<Self>, reason: &str) -> Result<Value, CtlError> {
        let Some(to) = self.previous_active() else {
            return Err(CtlError::new(
                "no_previous",
                "there is no previous slot to roll back to (no flip since the state was created)",
            ));
        };
        let report = self.probe_slot(&to).await?;
        if !report.ok {
            return Err(probe_failed(&report));
        }
        let (mut reply, _) = self.flip(&to, true, None).await?;
        self.rollbacks_total.fetch_add(1, Ordering::Relaxed);
        let record = json!({"from": reply["from"], "to": to, "reason": reason, "at": now_ms()});
        tracing::warn!(from = %reply["from"], to, reason, "rolled back");
        if let Ok(mut r) = self.last_rollback.lock() {
            *r = Some(record);
        }
        reply["reason"] = json!(reason);
        reply["probe"] = serde_json::to_value(&report).unwrap_or(Value::Null);
        Ok(reply)
    }

    /// `deploy SLOT`: probe → flip → drain the old slots → watch, with progress.
    pub async fn deploy(
        self: &Arc<Self>,
        to: &str,
        deadline: Option<Duration>,
        window: Option<Duration>,
        mut progress: impl FnMut(Value),
    ) -> Result<Value, CtlError> {
        let Ok(_one) = self.deploying.try_lock() else {
            return Err(CtlError::new(
                "busy",
                "another deploy is running; wait for it (or watch `status`)",
            ));
        };
        let started = Instant::now();
        progress(json!({"event": "progress", "phase": "probe", "slot": to}));
        let opts = FlipOptions {
            no_probe: false,
            drain: true,
            deadline,
            window,
        };
        let (flip, from) = self.gated_flip(to, opts).await?;
        progress(
            json!({"event": "progress", "phase": "flip", "from": flip["from"], "to": to, "draining": from}),
        );
        let mut drained: Vec<(String, DrainOutcome)> = Vec::new();
        for f in &from {
            let drain_progress = |mut p: Value| {
                p["phase"] = json!("drain");
                progress(p);
            };
            match self.wait_drained(f, None, drain_progress).await {
                Ok(o) => drained.push((f.clone(), o)),
                // A rollback flipped back to `f`: the watch outcome says why.
                Err(e) if e.code == "drain_cancelled" => break,
                Err(e) => return Err(e),
            }
        }
        let outcome = self.wait_watch(to, &mut progress).await;
        let mut reply = json!({
            "ok": true,
            "from": flip["from"],
            "to": to,
            "probe": flip["probe"],
            "drained": drained.iter().map(|(s, o)| json!({"slot": s, "drained_after_ms": o.drained_after_ms, "forced": o.forced})).collect::<Vec<_>>(),
            "drained_after_ms": drained.iter().map(|(_, o)| o.drained_after_ms).max(),
            "forced": drained.iter().map(|(_, o)| o.forced).sum::<u64>(),
            "watch": outcome.to_json(),
            "elapsed_ms": started.elapsed().as_millis() as u64,
        });
        let (code, message) = match &outcome {
            WatchOutcome::Passed { .. } => return Ok(reply),
            WatchOutcome::RolledBack { reason, to: back } => (
                "rolled_back",
                format!("{to} was rolled back to {back}: {reason}"),
            ),
            WatchOutcome::Failed { reason } => {
                ("watch_failed", format!("{to} failed its watch: {reason}"))
            }
            WatchOutcome::Cancelled { why } => (
                "watch_cancelled",
                format!("the watch of {to} ended early: {why}"),
            ),
        };
        let mut err = CtlError::new(code, message);
        if let Some(obj) = reply.as_object_mut() {
            obj.remove("ok");
            for (k, v) in std::mem::take(obj) {
                err = err.with(&k, v);
            }
        }
        Err(err)
    }

    /// Waits for the watch of `slot` to end, reporting its countdown.
    async fn wait_watch(&self, slot: &str, progress: &mut impl FnMut(Value)) -> WatchOutcome {
        let found = self.watch.lock().ok().and_then(|w| {
            w.as_ref()
                .filter(|h| h.slot == slot)
                .map(|h| (h.tx.subscribe(), h.started, h.window, Arc::clone(&h.probes)))
        });
        let Some((mut rx, started, window, probes)) = found else {
            return WatchOutcome::Cancelled {
                why: "superseded by another flip".to_owned(),
            };
        };
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            if let Some(o) = rx.borrow().clone() {
                return o;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return rx.borrow().clone().unwrap_or(WatchOutcome::Cancelled { why: "the watch stopped".to_owned() });
                },
                _ = tick.tick() => progress(json!({
                    "event": "progress", "phase": "watch", "slot": slot,
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                    "window_ms": window.as_millis() as u64,
                    "probes": probes.load(Ordering::Relaxed),
                })),
            }
        }
    }
}
