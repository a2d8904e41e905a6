//! The controller: the one place that changes the table. Every change (weights,
//! flip, drain, retire, standby) builds a new `Table`, swaps it in with one
//! atomic store, and persists the state off the request path. Drains run here
//! too: they end when the slot's guards bring its counts to zero.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::uri::{Authority, Scheme};
use http::HeaderValue;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::state::PersistedState;
use crate::stats::StatsRegistry;
use crate::table::{Slot, SlotState, Table, Tables};
use crate::upstream::UpstreamClient;

/// A control error with a stable machine code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CtlError {
    pub code: &'static str,
    pub message: String,
    /// More fields for the error reply (a failed probe's steps, a rollback's reason).
    pub extra: Option<serde_json::Map<String, Value>>,
}

impl CtlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            extra: None,
        }
    }

    /// Adds `key: value` to the error reply.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    /// The error as a control reply line.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"ok": false, "error": self.message, "code": self.code});
        if let (Some(extra), Some(obj)) = (&self.extra, v.as_object_mut()) {
            for (k, x) in extra {
                obj.insert(k.clone(), x.clone());
            }
        }
        v
    }
    pub(crate) fn unknown_slot(name: &str, table: &Table) -> Self {
        let known: Vec<&str> = table.slots.iter().map(|s| &*s.name).collect();
        Self::new(
            "unknown_slot",
            format!("no slot named {name:?} (slots: {})", known.join(", ")),
        )
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy)]
pub struct DrainOutcome {
    pub drained_after_ms: u64,
    /// Streams ended at the deadline.
    pub forced: u64,
}

#[derive(Debug)]
struct DrainHandle {
    cancel: CancellationToken,
    outcome: watch::Receiver<Option<DrainOutcome>>,
    started: Instant,
    deadline: Duration,
}

#[derive(Debug)]
pub struct Controller {
    pub tables: Arc<Tables>,
    pub(crate) config: Mutex<Config>,
    pub(crate) write: tokio::sync::Mutex<()>,
    previous_active: Mutex<Option<String>>,
    drains: Mutex<HashMap<String, DrainHandle>>,
    /// The watch window running after the last probed flip.
    pub(crate) watch: Mutex<Option<crate::watch::WatchHandle>>,
    /// The last rollback: from, to, reason, at.
    pub(crate) last_rollback: Mutex<Option<Value>>,
    /// Held by the one `deploy` that may run at a time.
    pub(crate) deploying: tokio::sync::Mutex<()>,
    /// The public listener's TLS config, when it terminates TLS (`reload` swaps it).
    pub(crate) tls: Mutex<Option<crate::proxy::TlsSlot>>,
    /// Per-name stats: a slot's counters outlive table swaps and reloads.
    pub(crate) stats: StatsRegistry,
    version: AtomicU64,
    pub flips_total: AtomicU64,
    pub rollbacks_total: AtomicU64,
    state_file: std::path::PathBuf,
    shutdown: CancellationToken,
}

pub(crate) fn build_slot(
    stats: &StatsRegistry,
    cfg: &Config,
    name: &str,
    upstream: &str,
    weight: u32,
    state: SlotState,
    generation: u32,
) -> Result<Slot, CtlError> {
    let uri: http::Uri = upstream.parse().map_err(|e| {
        CtlError::new(
            "bad_config",
            format!("slot {name}: bad upstream {upstream:?}: {e}"),
        )
    })?;
    let authority = uri
        .authority()
        .cloned()
        .unwrap_or_else(|| Authority::from_static("127.0.0.1"));
    let host_header = HeaderValue::from_str(authority.as_str())
        .map_err(|e| CtlError::new("bad_config", format!("slot {name}: {e}")))?;
    Ok(Slot {
        name: Arc::from(name),
        upstream: upstream.to_string(),
        scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
        authority,
        host_header,
        weight,
        state,
        generation,
        tag_prefix: crate::mcp::tag::tag_prefix(name, generation),
        stats: stats.get(name),
        client: if uri.scheme_str() == Some("https") {
            // Loaded once, by the config's validation.
            let tls = cfg.resolved.slot_tls.get(name).ok_or_else(|| {
                CtlError::new("bad_config", format!("slot {name}: no TLS client resolved"))
            })?;
            UpstreamClient::with_tls(
                cfg.proxy.connect_timeout,
                cfg.proxy.pool_idle_timeout,
                rustls::ClientConfig::clone(tls),
            )
        } else {
            UpstreamClient::new(cfg.proxy.connect_timeout, cfg.proxy.pool_idle_timeout)
        },
    })
}

impl Controller {
    /// Builds the first table from the config, with the persisted state applied.
    pub fn new(
        config: Config,
        persisted: Option<PersistedState>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, CtlError> {
        let stats = StatsRegistry::default();
        let mut slots = Vec::new();
        for s in &config.slots {
            let rec = persisted.as_ref().and_then(|p| p.slots.get(&s.name));
            let (weight, state, generation) = match rec {
                Some(r) => (r.weight, r.state, r.generation.max(1)),
                None if s.weight > 0 => (s.weight, SlotState::Serving, 1),
                None => (0, SlotState::Standby, 1),
            };
            slots.push(Arc::new(build_slot(
                &stats,
                &config,
                &s.name,
                &s.upstream,
                weight,
                state,
                generation,
            )?));
        }
        let state_file = config.control.state_file.clone();
        let ctl = Arc::new(Controller {
            tables: Arc::new(Tables::new(Table::new(slots, 1))),
            config: Mutex::new(config),
            write: tokio::sync::Mutex::new(()),
            previous_active: Mutex::new(persisted.and_then(|p| p.previous_active)),
            drains: Mutex::new(HashMap::new()),
            watch: Mutex::new(None),
            last_rollback: Mutex::new(None),
            deploying: tokio::sync::Mutex::new(()),
            tls: Mutex::new(None),
            stats,
            version: AtomicU64::new(1),
            flips_total: AtomicU64::new(0),
            rollbacks_total: AtomicU64::new(0),
            state_file,
            shutdown,
        });
        Ok(ctl)
    }

    /// Restarts the drains of slots persisted as draining (after a restart).
    pub fn resume_drains(self: &Arc<Self>) {
        let table = self.tables.load_full();
        for s in table
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Draining)
        {
            self.spawn_drain(&s.name, self.drain_deadline());
        }
    }

    pub fn drain_deadline(&self) -> Duration {
        self.config
            .lock()
            .map(|c| c.drain.deadline)
            .unwrap_or(Duration::from_secs(300))
    }

    /// The `[probe]` and `[watch]` sections as they are now.
    pub fn probe_settings(&self) -> (crate::config::ProbeConfig, crate::config::WatchConfig) {
        let c = self.config.lock().unwrap_or_else(|p| p.into_inner());
        (c.probe.clone(), c.watch.clone())
    }

    fn drain_quiet(&self) -> Duration {
        self.config
            .lock()
            .map(|c| c.drain.quiet)
            .unwrap_or(Duration::from_secs(1))
    }

    /// Swaps in a table made by `change` from the current one, and persists it.
    pub(crate) fn swap(
        &self,
        change: impl FnOnce(&Table) -> Result<Vec<Arc<Slot>>, CtlError>,
    ) -> Result<Arc<Table>, CtlError> {
        let current = self.tables.load_full();
        let slots = change(&current)?;
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        self.tables.store(Table::new(slots, version));
        let table = self.tables.load_full();
        let prev = self
            .previous_active
            .lock()
            .map(|p| p.clone())
            .unwrap_or(None);
        let state = PersistedState::of(&table, prev);
        let path = self.state_file.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = state.save(&path) {
                tracing::error!(path = %path.display(), error = %e, "cannot write the state file");
            }
        });
        Ok(table)
    }

    fn check_slot(table: &Table, name: &str) -> Result<(), CtlError> {
        table
            .get(name)
            .map(|_| ())
            .ok_or_else(|| CtlError::unknown_slot(name, table))
    }

    /// `status`: the slots with their live counts.
    pub fn status(&self) -> Value {
        let table = self.tables.load_full();
        let slots: Vec<Value> = table
            .slots
            .iter()
            .map(|s| {
                json!({
                    "name": &*s.name, "upstream": s.upstream, "weight": s.weight,
                    "state": s.state.as_str(), "generation": s.generation,
                    "live_streams": s.stats.live_streams(), "inflight": s.stats.inflight(),
                })
            })
            .collect();
        let drains: Vec<Value> = self
            .drains
            .lock()
            .map(|d| {
                d.iter()
                    .filter(|(_, h)| h.outcome.borrow().is_none())
                    .map(|(name, h)| json!({"slot": name, "elapsed_ms": h.started.elapsed().as_millis() as u64, "deadline_ms": h.deadline.as_millis() as u64}))
                    .collect()
            })
            .unwrap_or_default();
        let mut v = json!({
            "ok": true,
            "slots": slots,
            "active": table.active().map(|s| s.name.to_string()),
            "flips_total": self.flips_total.load(Ordering::Relaxed),
            "rollbacks_total": self.rollbacks_total.load(Ordering::Relaxed),
        });
        if let Some(d) = drains.first() {
            v["drain"] = d.clone();
        }
        if let Some(w) = self.watch_status() {
            v["watch"] = w;
        }
        if let Some(r) = self.last_rollback.lock().ok().and_then(|r| r.clone()) {
            v["last_rollback"] = r;
        }
        v
    }

    /// `weights NAME=W ...`: one table swap.
    pub async fn set_weights(
        self: &Arc<Self>,
        weights: &[(String, u32)],
    ) -> Result<Value, CtlError> {
        let _w = self.write.lock().await;
        let table = self.swap(|t| {
            for (n, _) in weights {
                Self::check_slot(t, n)?;
            }
            let new: Vec<Arc<Slot>> = t
                .slots
                .iter()
                .map(
                    |s| match weights.iter().find(|(n, _)| n.as_str() == &*s.name) {
                        Some((_, w)) => {
                            let state = match (s.state, *w) {
                                (SlotState::Retired, _) => SlotState::Retired,
                                (_, w) if w > 0 => SlotState::Serving,
                                (SlotState::Serving, _) => SlotState::Standby,
                                (st, _) => st,
                            };
                            Arc::new(s.with(*w, state, s.generation))
                        }
                        None => Arc::clone(s),
                    },
                )
                .collect();
            if !new
                .iter()
                .any(|s| s.state == SlotState::Serving && s.weight > 0)
            {
                return Err(CtlError::new(
                    "no_serving_slot",
                    "these weights leave no slot serving; give at least one slot a weight above 0",
                ));
            }
            if let Some((n, _)) = weights
                .iter()
                .find(|(n, w)| *w > 0 && t.get(n).is_some_and(|s| s.state == SlotState::Retired))
            {
                return Err(CtlError::new(
                    "slot_retired",
                    format!("slot {n} is retired; run `standby {n}` once its process is up again"),
                ));
            }
            Ok(new)
        })?;
        for (n, w) in weights {
            if *w > 0 {
                self.cancel_drain(n);
            }
        }
        Ok(json!({"ok": true, "slots": slot_list(&table)}))
    }

    /// `flip SLOT`: SLOT gets weight 100, every other serving slot 0 (draining if
    /// `drain`, ended at `deadline` or the configured one). No probe: see `deploy`.
    pub async fn flip(
        self: &Arc<Self>,
        to: &str,
        drain: bool,
        deadline: Option<Duration>,
    ) -> Result<(Value, Vec<String>), CtlError> {
        let _w = self.write.lock().await;
        let before = self.tables.load_full();
        Self::check_slot(&before, to)?;
        if before
            .get(to)
            .is_some_and(|s| s.state == SlotState::Retired)
        {
            return Err(CtlError::new(
                "slot_retired",
                format!("slot {to} is retired; run `standby {to}` once its process is up again"),
            ));
        }
        let from: Vec<String> = before
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Serving && &*s.name != to)
            .map(|s| s.name.to_string())
            .collect();
        let old_active = before.active().map(|s| s.name.to_string());
        self.swap(|t| {
            Ok(t.slots
                .iter()
                .map(|s| {
                    if &*s.name == to {
                        Arc::new(s.with(100, SlotState::Serving, s.generation))
                    } else if s.state == SlotState::Serving {
                        let st = if drain {
                            SlotState::Draining
                        } else {
                            SlotState::Standby
                        };
                        Arc::new(s.with(0, st, s.generation))
                    } else {
                        Arc::clone(s)
                    }
                })
                .collect())
        })?;
        if old_active.as_deref() != Some(to) {
            if let Ok(mut p) = self.previous_active.lock() {
                *p = old_active.clone();
            }
        }
        self.cancel_drain(to);
        self.flips_total.fetch_add(1, Ordering::Relaxed);
        let deadline = deadline.unwrap_or_else(|| self.drain_deadline());
        if drain {
            for f in &from {
                self.spawn_drain(f, deadline);
            }
        }
        let flipped_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        tracing::info!(from = ?from, to, drain, "flipped");
        Ok((
            json!({"ok": true, "from": old_active, "to": to, "draining": if drain { from.clone() } else { vec![] }, "flipped_at": flipped_at}),
            from,
        ))
    }

    /// `drain SLOT`: no new sessions; pinned ones keep going to it.
    pub async fn drain(
        self: &Arc<Self>,
        name: &str,
        deadline: Option<Duration>,
    ) -> Result<(), CtlError> {
        let _w = self.write.lock().await;
        let table = self.tables.load_full();
        let slot = table
            .get(name)
            .ok_or_else(|| CtlError::unknown_slot(name, &table))?;
        match slot.state {
            SlotState::Draining | SlotState::Drained => return Ok(()),
            SlotState::Retired => {
                return Err(CtlError::new(
                    "slot_retired",
                    format!("slot {name} is retired"),
                ))
            }
            _ => {}
        }
        self.swap(|t| {
            Ok(t.slots
                .iter()
                .map(|s| {
                    if &*s.name == name {
                        Arc::new(s.with(0, SlotState::Draining, s.generation))
                    } else {
                        Arc::clone(s)
                    }
                })
                .collect())
        })?;
        self.spawn_drain(name, deadline.unwrap_or_else(|| self.drain_deadline()));
        Ok(())
    }

    pub(crate) fn cancel_drain(&self, name: &str) {
        if let Ok(mut d) = self.drains.lock() {
            if let Some(h) = d.remove(name) {
                h.cancel.cancel();
            }
        }
    }

    fn spawn_drain(self: &Arc<Self>, name: &str, deadline: Duration) {
        let table = self.tables.load_full();
        let Some(slot) = table.get(name) else { return };
        let stats = Arc::clone(&slot.stats);
        let generation = slot.generation;
        let cancel = self.shutdown.child_token();
        let (tx, rx) = watch::channel(None);
        if let Ok(mut d) = self.drains.lock() {
            if let Some(old) = d.insert(
                name.to_string(),
                DrainHandle {
                    cancel: cancel.clone(),
                    outcome: rx,
                    started: Instant::now(),
                    deadline,
                },
            ) {
                old.cancel.cancel();
            }
        }
        let ctl = Arc::clone(self);
        let name = name.to_string();
        let quiet = self.drain_quiet();
        tokio::spawn(async move {
            let started = Instant::now();
            let forced = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = crate::drain::until_drained(&stats, quiet) => 0,
                _ = tokio::time::sleep(deadline) => {
                    let n = stats.live_streams();
                    tracing::warn!(slot = %name, streams = n, "drain deadline passed: ending the remaining streams at event boundaries");
                    stats.force_end_streams();
                    let _ = tokio::time::timeout(Duration::from_secs(5), stats.wait_idle()).await;
                    n
                }
            };
            let elapsed = started.elapsed();
            stats.drain_duration.observe(elapsed);
            let outcome = DrainOutcome {
                drained_after_ms: elapsed.as_millis() as u64,
                forced,
            };
            {
                let _w = ctl.write.lock().await;
                let still =
                    ctl.tables.load().get(&name).is_some_and(|s| {
                        s.state == SlotState::Draining && s.generation == generation
                    });
                if still && !cancel.is_cancelled() {
                    let _ = ctl.swap(|t| {
                        Ok(t.slots
                            .iter()
                            .map(|s| {
                                if *s.name == *name {
                                    Arc::new(s.with(0, SlotState::Drained, s.generation))
                                } else {
                                    Arc::clone(s)
                                }
                            })
                            .collect())
                    });
                }
            }
            tracing::info!(slot = %name, ms = outcome.drained_after_ms, forced, "drained");
            let _ = tx.send(Some(outcome));
        });
    }

    /// Waits until `name` is drained, calling `progress` about once a second.
    pub async fn wait_drained(
        &self,
        name: &str,
        timeout: Option<Duration>,
        mut progress: impl FnMut(Value),
    ) -> Result<DrainOutcome, CtlError> {
        let table = self.tables.load_full();
        let slot = table
            .get(name)
            .ok_or_else(|| CtlError::unknown_slot(name, &table))?;
        let stats = Arc::clone(&slot.stats);
        let (mut rx, started, deadline) = {
            let d = self
                .drains
                .lock()
                .map_err(|_| CtlError::new("internal", "drain registry poisoned"))?;
            match d.get(name) {
                Some(h) => (h.outcome.clone(), h.started, h.deadline),
                None if slot.state == SlotState::Drained => {
                    return Ok(DrainOutcome {
                        drained_after_ms: 0,
                        forced: 0,
                    })
                }
                None => {
                    return Err(CtlError::new(
                        "not_draining",
                        format!(
                            "slot {name} is {}, not draining; start with `drain {name}`",
                            slot.state
                        ),
                    ))
                }
            }
        };
        let limit = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600)));
        tokio::pin!(limit);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if let Some(o) = *rx.borrow() {
                return Ok(o);
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return Err(CtlError::new("drain_cancelled", format!("the drain of {name} was cancelled (the slot was flipped back or weighted up)")));
                },
                _ = tick.tick() => progress(json!({
                    "event": "progress", "slot": name,
                    "live_streams": stats.live_streams(), "inflight": stats.inflight(),
                    "elapsed_ms": started.elapsed().as_millis() as u64, "deadline_ms": deadline.as_millis() as u64,
                })),
                _ = &mut limit => return Err(CtlError::new("timeout", format!("slot {name} is not drained yet ({} live streams)", stats.live_streams()))),
            }
        }
    }

    /// `retire SLOT` (its process is gone) / `standby SLOT` (started again: new generation).
    pub async fn set_lifecycle(
        self: &Arc<Self>,
        name: &str,
        retire: bool,
    ) -> Result<Value, CtlError> {
        let _w = self.write.lock().await;
        let table = self.swap(|t| {
            let slot = t.get(name).ok_or_else(|| CtlError::unknown_slot(name, t))?;
            if retire
                && slot.state == SlotState::Serving
                && !t
                    .slots
                    .iter()
                    .any(|s| &*s.name != name && s.state == SlotState::Serving && s.weight > 0)
            {
                return Err(CtlError::new(
                    "last_serving_slot",
                    format!("slot {name} is the only serving slot; flip to another slot first"),
                ));
            }
            Ok(t.slots
                .iter()
                .map(|s| {
                    if &*s.name != name {
                        Arc::clone(s)
                    } else if retire {
                        Arc::new(s.with(0, SlotState::Retired, s.generation))
                    } else {
                        Arc::new(s.with(0, SlotState::Standby, s.generation + 1))
                    }
                })
                .collect())
        })?;
        self.cancel_drain(name);
        let s = table
            .get(name)
            .ok_or_else(|| CtlError::unknown_slot(name, &table))?;
        Ok(json!({"ok": true, "slot": name, "state": s.state.as_str(), "generation": s.generation}))
    }

    /// Hands the controller the listener's TLS config so `reload` can swap it.
    pub fn set_tls(&self, tls: Option<crate::proxy::TlsSlot>) {
        if let Ok(mut t) = self.tls.lock() {
            *t = tls;
        }
    }

    /// Cancelled when the proxy shuts down.
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn previous_active(&self) -> Option<String> {
        self.previous_active.lock().ok().and_then(|p| p.clone())
    }
}

fn slot_list(table: &Table) -> Vec<Value> {
    table
        .slots
        .iter()
        .map(|s| json!({"name": &*s.name, "weight": s.weight, "state": s.state.as_str(), "generation": s.generation}))
        .collect()
}
