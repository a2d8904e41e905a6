//! The controller: the one owner of the control state. Its owner task takes
//! commands in order from a queue, runs the pure [`state::apply`], builds the
//! routing table (a new generation of a slot gets a new connection pool),
//! hands the state to the one persister and waits until it is durable, then
//! publishes the table (`Tables::swap`), starts or stops drains, and
//! broadcasts what happened. A command's reply is sent after all of that, so
//! `ok` means the change routes and is on disk.
//!
//! When the save fails, a command is refused and nothing changes (the table
//! was never published). A fact that cannot be refused (a drain that ended,
//! a rollback after a failed watch) is applied anyway and reported with
//! `persisted: false`, in `status` and in `mcpflip_state_persisted`.
//!
//! [`Controller`] is the handle everyone else holds: the request path reads
//! `tables`; the control server, drains, the watch window and deploys issue
//! commands through it like any client. Drains live in `drain`, the watch in
//! `watch`, deploys in `deploy`, reloads in `reload`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use http::HeaderValue;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProxyConfig, SlotConfig};
use crate::control::drain::{self, Drains};
use crate::control::host::Host;
use crate::control::persist::{Persister, SaveError};
use crate::control::protocol::{
    CtlError, DeployStatus, DrainOutcome, DrainStarted, Event, Flipped, HandoverSlot,
    HandoverStatus, Lifecycle, MigrationStatus, Progress, RollbackRecord, SlotBrief, SlotStatus,
    StateFileStatus, Status, Upgraded, Weight, Weighted,
};
use crate::control::state::{self, Command, State};
use crate::control::store::{self, Joined, Shared, SharedDrain, Store};
use crate::control::watch::Watcher;
use crate::probe::{self, ProbeReport};
use crate::proxy::TlsSlot;
use crate::stats::{MigrateFailure, SlotStats, StatsRegistry};
use crate::table::{Slot, SlotState, Table, Tables};
use crate::upstream::UpstreamClient;

/// Commands waiting for the owner.
const QUEUE: usize = 64;
/// Events a slow subscriber may fall behind by before it misses some.
const HUB: usize = 1024;

/// Where a slot forwards to, resolved from its config once.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: String,
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// What `tls` trusts and presents (swapped by `reload`).
    live: Option<Arc<crate::tls::SlotTls>>,
    /// `[[slot]] response_header_timeout`, else `[proxy]`'s.
    response_timeout: Duration,
    /// `[[slot]] response_body_timeout`, else `[proxy]`'s.
    body_timeout: Duration,
}

impl Upstream {
    /// The upstream of `slot` in a validated config.
    pub fn of(slot: &SlotConfig, config: &Config) -> Result<Upstream, CtlError> {
        let bad = |e: String| {
            CtlError::BadConfig(format!(
                "slot {}: upstream {:?}: {e}",
                slot.name, slot.upstream
            ))
        };
        let uri: http::Uri = slot.upstream.parse().map_err(|e| bad(format!("{e}")))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("no host".into()))?;
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|e| bad(format!("{e}")))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let tls = if scheme == Scheme::HTTPS {
            Some(
                config
                    .resolved
                    .slot_tls
                    .get(&slot.name)
                    .cloned()
                    .ok_or_else(|| bad("its TLS client was not resolved".into()))?,
            )
        } else {
            None
        };
        let live = config.resolved.slot_live.get(&slot.name).cloned();
        Ok(Upstream {
            url: slot.upstream.clone(),
            scheme,
            authority,
            host_header,
            tls,
            live,
            response_timeout: slot
                .response_header_timeout
                .unwrap_or(config.proxy.response_header_timeout),
            body_timeout: slot
                .response_body_timeout
                .unwrap_or(config.proxy.response_body_timeout),
        })
    }

    /// A new client, with a pool of its own, counting its connections in
    /// the slot's `stats`.
    fn client(&self, proxy: &ProxyConfig, stats: &SlotStats) -> UpstreamClient {
        match &self.tls {
            Some(tls) => UpstreamClient::with_tls(
                proxy.connect_timeout,
                proxy.pool_idle_timeout,
                rustls::ClientConfig::clone(tls),
                self.live.clone(),
            ),
            None => UpstreamClient::new(proxy.connect_timeout, proxy.pool_idle_timeout),
        }
        .with_response_timeout(self.response_timeout)
        .with_body_timeout(self.body_timeout)
        .with_connection_counter(stats.connection_counter())
    }
}

/// What a slot needs beyond its control state: where it forwards, the client
/// of its current generation, and its counters (which outlive generations).
#[derive(Debug, Clone)]
struct Runtime {
    upstream: Upstream,
    generation: u32,
    client: UpstreamClient,
    stats: Arc<SlotStats>,
}

/// A command that went through.
#[derive(Debug, Clone)]
pub struct Applied {
    /// What changed (empty: the command changed nothing).
    pub events: Vec<Event>,
    /// False when the state could not be saved (only for facts; a command is refused instead).
    pub persisted: bool,
    pub state: Arc<State>,
}

enum Op {
    Apply {
        cmd: Command,
        /// Deadline of the drains this command starts (else `[drain] deadline`).
        deadline: Option<Duration>,
        /// A fact (a drain ended, a rollback after a failed watch) is applied
        /// even when the state cannot be saved.
        fact: bool,
        reply: oneshot::Sender<Result<Applied, CtlError>>,
    },
    /// A drain task ended: `Command::Drained`, applied as a fact unless task
    /// `id` is no longer the slot's drain (flipped back meanwhile).
    Drained {
        cmd: Command,
        id: u64,
        reply: oneshot::Sender<Result<Applied, CtlError>>,
    },
    /// A state another instance of the fleet committed (at etcd `revision`):
    /// routed here unless this instance already has it or a later one.
    Adopt {
        shared: Box<Shared>,
        revision: i64,
        done: oneshot::Sender<()>,
    },
    /// A reload: the reconcile command, the new config (swapped in with the
    /// state change), and the upstreams of new and re-addressed slots.
    Reconfigure {
        cmd: Command,
        config: Arc<Config>,
        upstreams: BTreeMap<String, Upstream>,
        reply: oneshot::Sender<Result<Applied, CtlError>>,
    },
}

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

/// The handle of the control plane.
#[derive(Debug)]
pub struct Controller {
    /// The routing table the request path reads (only the owner task stores it).
    pub tables: Arc<Tables>,
    state: ArcSwap<State>,
    ops: mpsc::Sender<Op>,
    events: broadcast::Sender<Event>,
    config: ArcSwap<Config>,
    pub(crate) drains: Drains,
    pub(crate) watch: Watcher,
    /// Held by the one `deploy` that may run at a time.
    pub(crate) deploying: tokio::sync::Mutex<()>,
    /// The public listener's TLS config, when it terminates TLS (`reload` swaps it).
    tls: Option<TlsSlot>,
    /// The admin listener's (`[admin] tls`), set once it serves.
    admin_tls: std::sync::OnceLock<TlsSlot>,
    pub flips_total: AtomicU64,
    pub rollbacks_total: AtomicU64,
    pub state_save_failures_total: AtomicU64,
    /// Outcome counters `/metrics` reads (reloads; the start time).
    pub counters: crate::metrics::counters::ControlCounters,
    state_file: Mutex<StateFileStatus>,
    last_rollback: Mutex<Option<RollbackRecord>>,
    /// `tls.acme`'s record for `status` and the metrics (set by `acme::run`).
    acme: Mutex<Option<crate::control::protocol::AcmeStatus>>,
    /// The deploy that runs or ran last (only `deploy` writes it).
    deploy_run: Mutex<Option<DeployRun>>,
    /// The fleet's shared store, when `[cluster]` is set.
    store: Option<Arc<dyn Store>>,
    /// The process that handed over to this one, and since when, while it runs.
    handover: Mutex<Option<(u32, Instant)>>,
    upgrader: OnceLock<mpsc::Sender<UpgradeRequest>>,
    shutdown: CancellationToken,
    /// The public listener's counters (set once the listener is wired), for
    /// the migration counts in `status`.
    pub proxy_stats: std::sync::OnceLock<Arc<crate::stats::ProxyStats>>,
}

/// How long a new process has, by default, to take over (`ctl upgrade --timeout`).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// An `upgrade` for the wiring that owns the listeners.
#[derive(Debug)]
pub struct UpgradeRequest {
    pub binary: Option<PathBuf>,
    pub timeout: Duration,
    pub reply: oneshot::Sender<Result<Upgraded, CtlError>>,
}

/// A deploy's record for `status`: what it did so far, and its clock.
#[derive(Debug)]
struct DeployRun {
    started: Instant,
    /// How long it took, once it ended.
    took: Option<Duration>,
    status: DeployStatus,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Controller {
    /// Starts the owner task on `state` (the config's, or one restored from the
    /// state file) and resumes the drains of slots that were draining.
    pub fn start(
        config: Config,
        state: State,
        tls: Option<TlsSlot>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Controller>, CtlError> {
        Self::start_after(config, state, tls, shutdown, &[], Vec::new(), None)
    }

    /// `start` for a process that takes over from another (`handover`)
    /// and/or joins a fleet. `previous` are the handing-over process's
    /// counts, marked on the slots before any drain resumes, so that no
    /// drain ends while it still serves the slot; `drains` are the deadlines
    /// its drains had left, which the resumed drains keep. In a fleet
    /// (`joined`), changes are committed through its store first.
    pub fn start_after(
        config: Config,
        state: State,
        tls: Option<TlsSlot>,
        shutdown: CancellationToken,
        previous: &[HandoverSlot],
        drains: Vec<(String, Duration)>,
        joined: Option<Joined>,
    ) -> Result<Arc<Controller>, CtlError> {
        let stats = StatsRegistry::default();
        for p in previous {
            stats.get(&p.slot).set_previous(p.live_streams, p.inflight);
        }
        let mut runtime = BTreeMap::new();
        for sc in &config.slots {
            let upstream = Upstream::of(sc, &config)?;
            let generation = state.get(&sc.name).map_or(1, |r| r.generation);
            let stats = stats.get(&sc.name);
            runtime.insert(
                sc.name.clone(),
                Runtime {
                    client: upstream.client(&config.proxy, &stats),
                    upstream,
                    generation,
                    stats,
                },
            );
        }
        let table = table_of(&state, &runtime);
        let (ops, rx) = mpsc::channel(QUEUE);
        let (events, _) = broadcast::channel(HUB);
        let persister = Persister::spawn(config.control.state_file.clone());
        let (mut deadline, quiet) = (config.drain.deadline, config.drain.quiet);
        if let Some(left) = joined
            .as_ref()
            .and_then(|j| store::remaining(&j.drains, now_ms()))
        {
            // Drains the fleet started before this instance: their deadline is the fleet's.
            deadline = left;
        }
        let proxy = config.proxy.clone();
        let ctl = Arc::new(Controller {
            tables: Arc::new(Tables::new(table)),
            state_file: Mutex::new(StateFileStatus {
                path: config.control.state_file.clone(),
                persisted: true,
                revision: state.revision,
                error: None,
            }),
            state: ArcSwap::from_pointee(state.clone()),
            ops,
            events,
            config: ArcSwap::from_pointee(config),
            drains: Drains::default(),
            watch: Watcher::default(),
            deploying: tokio::sync::Mutex::new(()),
            tls,
            admin_tls: std::sync::OnceLock::new(),
            flips_total: AtomicU64::new(0),
            rollbacks_total: AtomicU64::new(0),
            state_save_failures_total: AtomicU64::new(0),
            counters: Default::default(),
            last_rollback: Mutex::new(None),
            acme: Mutex::new(None),
            deploy_run: Mutex::new(None),
            store: joined.as_ref().map(|j| Arc::clone(&j.store)),
            handover: Mutex::new(None),
            upgrader: OnceLock::new(),
            shutdown,
            proxy_stats: std::sync::OnceLock::new(),
        });
        let owner = Owner {
            ctl: Arc::clone(&ctl),
            state,
            runtime,
            stats,
            proxy,
            persister,
            revision: joined.as_ref().map_or(0, |j| j.revision),
            shared_drains: joined.map(|j| j.drains).unwrap_or_default(),
        };
        tokio::spawn(owner.run(rx));
        ctl.drains.resume_with(drains);
        ctl.drains
            .reconcile(&ctl, &ctl.tables.load_full(), deadline, quiet);
        Ok(ctl)
    }

    /// Every event from now on: changes, drain and watch progress, how they end.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Publishes an event to the subscribers (none is fine).
    pub(crate) fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Routes a state another instance of the fleet committed at etcd
    /// `revision`; returns once it routes (or was found older than what does).
    pub async fn adopt(&self, shared: Shared, revision: i64) -> Result<(), CtlError> {
        let (done, rx) = oneshot::channel();
        self.ops
            .send(Op::Adopt {
                shared: Box::new(shared),
                revision,
                done,
            })
            .await
            .map_err(|_| CtlError::ShuttingDown)?;
        rx.await.map_err(|_| CtlError::ShuttingDown)
    }

    /// The fleet's store, when this instance is in one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// The config as it is now (`reload` replaces it).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The control state as it is now.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    pub(crate) fn listener_tls(&self) -> Option<&TlsSlot> {
        self.tls.as_ref()
    }

    /// `tls.acme`'s record, changed by `f` (made for `domains` at `directory`
    /// on first use).
    pub fn note_acme(
        &self,
        domains: &[String],
        directory: &str,
        f: impl FnOnce(&mut crate::control::protocol::AcmeStatus),
    ) {
        let mut acme = lock(&self.acme);
        let record = acme.get_or_insert_with(|| crate::control::protocol::AcmeStatus {
            domains: domains.to_vec(),
            directory: directory.to_owned(),
            ..Default::default()
        });
        f(record);
    }

    /// `tls.acme`'s record, once `acme::run` started.
    pub fn acme_status(&self) -> Option<crate::control::protocol::AcmeStatus> {
        lock(&self.acme).clone()
    }

    /// The listener's certificate files changed under `tls.acme` (a new
    /// certificate was issued): they are read again and served from the next
    /// handshake, and the expiry gauge follows, as a `reload` of the
    /// certificates alone would do.
    pub fn refresh_listener_tls(&self) -> Result<(), String> {
        let config = self.config();
        let tls = config.listen.tls.as_ref().ok_or("no [listen] tls")?;
        let (server, mut certificates) = crate::tls::listener_tls(tls)?;
        if let Some(admin) = &config.admin.tls {
            certificates.extend(crate::tls::listener_tls(admin)?.1);
        }
        if let Some(slot) = self.listener_tls() {
            slot.store(Arc::clone(&server));
        }
        self.config.rcu(|c| {
            let mut next = Config::clone(c);
            next.resolved.listener_tls = Some(Arc::clone(&server));
            next.resolved.certificates = certificates.clone();
            next
        });
        Ok(())
    }

    /// The admin listener's TLS config, when it terminates TLS.
    pub(crate) fn admin_tls(&self) -> Option<&TlsSlot> {
        self.admin_tls.get()
    }

    /// Hands the admin listener's TLS config to `reload`.
    pub(crate) fn set_admin_tls(&self, slot: TlsSlot) {
        let _ = self.admin_tls.set(slot);
    }

    async fn submit(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<Applied, CtlError>>) -> Op,
    ) -> Result<Applied, CtlError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| CtlError::ShuttingDown)?;
        rx.await.map_err(|_| CtlError::ShuttingDown)?
    }

    /// Applies a command; the reply comes once the change routes and is on disk.
    pub async fn apply(
        &self,
        cmd: Command,
        deadline: Option<Duration>,
    ) -> Result<Applied, CtlError> {
        self.submit(|reply| Op::Apply {
            cmd,
            deadline,
            fact: false,
            reply,
        })
        .await
    }

    /// Applies a fact: kept even when it cannot be saved (`persisted: false`).
    pub(crate) async fn apply_fact(&self, cmd: Command) -> Result<Applied, CtlError> {
        self.submit(|reply| Op::Apply {
            cmd,
            deadline: None,
            fact: true,
            reply,
        })
        .await
    }

    /// A reload's state change and new config, applied together.
    pub(crate) async fn reconfigure(
        &self,
        cmd: Command,
        config: Arc<Config>,
        upstreams: BTreeMap<String, Upstream>,
    ) -> Result<Applied, CtlError> {
        self.submit(|reply| Op::Reconfigure {
            cmd,
            config,
            upstreams,
            reply,
        })
        .await
    }

    /// `status`: the slots with their live counts, drains, watch, state file.
    pub fn status(&self) -> Status {
        let table = self.tables.load_full();
        let drains = self.drains.status();
        Status {
            slots: table
                .slots
                .iter()
                .map(|s| SlotStatus {
                    name: s.name.to_string(),
                    upstream: s.upstream.clone(),
                    weight: s.weight,
                    state: s.state,
                    generation: s.generation,
                    live_streams: s.stats.live_streams(),
                    inflight: s.stats.inflight(),
                })
                .collect(),
            active: table.active().map(|s| s.name.to_string()),
            flips_total: self.flips_total.load(Ordering::Relaxed),
            rollbacks_total: self.rollbacks_total.load(Ordering::Relaxed),
            drain: drains.first().cloned(),
            drains,
            watch: self.watch.status(),
            last_rollback: lock(&self.last_rollback).clone(),
            state_file: lock(&self.state_file).clone(),
            deploy: self.deploy_status(),
            handover: self.handover_status(&table),
            migration: self.migration_status(),
            acme: lock(&self.acme).clone(),
            cluster: self.store.as_ref().map(|s| s.status()),
        }
    }

    /// The process handing over to this one, with its counts, while it runs.
    fn handover_status(&self, table: &Table) -> Option<HandoverStatus> {
        let (pid, since) = (*lock(&self.handover))?;
        Some(HandoverStatus {
            pid,
            since_ms: since.elapsed().as_millis() as u64,
            slots: table
                .slots
                .iter()
                .map(|s| {
                    let (live_streams, inflight) = s.stats.previous();
                    HandoverSlot {
                        slot: s.name.to_string(),
                        live_streams,
                        inflight,
                    }
                })
                .collect(),
        })
    }

    /// Records that process `pid` handed over to this one (`None`: it exited).
    pub fn set_handover(&self, pid: Option<u32>) {
        *lock(&self.handover) = pid.map(|p| (p, Instant::now()));
    }

    /// Where `upgrade` requests go: the wiring that owns the listeners
    /// (`mcpflip run`) sets it once; without it `upgrade` is refused.
    pub fn set_upgrader(&self, tx: mpsc::Sender<UpgradeRequest>) {
        let _ = self.upgrader.set(tx);
    }

    /// `upgrade`: asks the wiring to start the new binary and hand over.
    /// Refused while a deploy or a watch window runs (their timers are not
    /// handed over) and while a handover to this process is still running.
    pub async fn upgrade(
        &self,
        binary: Option<PathBuf>,
        timeout: Option<Duration>,
    ) -> Result<Upgraded, CtlError> {
        let Some(tx) = self.upgrader.get() else {
            return Err(CtlError::UpgradeFailed(
                "this process was not started by `mcpflip run`, which alone can hand over its listeners".into(),
            ));
        };
        let deploying = self.deploying.try_lock().is_err();
        if deploying || self.watch.status().is_some() {
            return Err(CtlError::UpgradeFailed(
                "a deploy or a watch window is running (their timers are not handed over); upgrade once it ends".into(),
            ));
        }
        if lock(&self.handover).is_some() {
            return Err(CtlError::UpgradeFailed(
                "the process this one took over from still serves its streams; upgrade once it exited (`status` shows it)".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        tx.send(UpgradeRequest {
            binary,
            timeout: timeout.unwrap_or(UPGRADE_TIMEOUT),
            reply,
        })
        .await
        .map_err(|_| CtlError::ShuttingDown)?;
        rx.await.map_err(|_| CtlError::ShuttingDown)?
    }

    /// Migration's counts, once the proxy runs with `[drain] migrate = "replay"`.
    pub fn migration_status(&self) -> Option<MigrationStatus> {
        let mode = self.config.load().drain.migrate;
        if mode == crate::config::MigrateMode::Off {
            return None;
        }
        let stats = self.proxy_stats.get()?;
        Some(MigrationStatus {
            mode: mode.as_str().to_owned(),
            captured_sessions: stats.captured_sessions(),
            captured_bytes: stats.captured_bytes(),
            migrated: stats.migrated(),
            failed: MigrateFailure::ALL
                .iter()
                .map(|c| (c.as_str().to_owned(), stats.migrate_failures(*c)))
                .collect(),
            interrupted_calls: stats.interrupted(),
        })
    }

    /// The deploy that runs, or the last one.
    pub fn deploy_status(&self) -> Option<DeployStatus> {
        let run = lock(&self.deploy_run);
        let run = run.as_ref()?;
        let mut status = run.status.clone();
        status.elapsed_ms = run
            .took
            .unwrap_or_else(|| run.started.elapsed())
            .as_millis() as u64;
        // The window runs beside the drain and may end first: the deploy
        // records it once it waits for it, `status` shows it as it happens.
        if status.watch.is_none() && status.flipped_at.is_some() && !status.phase.ended() {
            status.watch = self.watch.last_outcome(&status.to);
        }
        Some(status)
    }

    /// A deploy starts: its record replaces the last one's.
    pub(crate) fn deploy_begin(&self, status: DeployStatus) {
        if let Some(store) = &self.store {
            store.record_deploy(&status);
        }
        *lock(&self.deploy_run) = Some(DeployRun {
            started: Instant::now(),
            took: None,
            status,
        });
    }

    /// The running deploy's record changes; once its phase says it ended, its clock stops.
    pub(crate) fn deploy_update(&self, change: impl FnOnce(&mut DeployStatus)) {
        if let Some(run) = lock(&self.deploy_run).as_mut() {
            change(&mut run.status);
            if run.status.phase.ended() && run.took.is_none() {
                run.took = Some(run.started.elapsed());
            }
            if let Some(store) = &self.store {
                let mut status = run.status.clone();
                status.elapsed_ms = run
                    .took
                    .unwrap_or_else(|| run.started.elapsed())
                    .as_millis() as u64;
                store.record_deploy(&status);
            }
        }
    }

    /// Whether the state file holds the state that routes.
    pub fn persisted(&self) -> bool {
        lock(&self.state_file).persisted
    }

    fn unknown(&self, name: &str) -> CtlError {
        let table = self.tables.load();
        CtlError::unknown_slot(name, table.slots.iter().map(|s| &*s.name))
    }

    /// `probe SLOT`: the configured MCP probe straight to the slot's upstream.
    pub async fn probe(&self, name: &str) -> Result<ProbeReport, CtlError> {
        let slot = self
            .tables
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| self.unknown(name))?;
        let cfg = self.config();
        let report = probe::probe(&slot, &cfg.probe).await;
        tracing::info!(
            slot = name,
            ok = report.ok,
            ms = report.ms,
            error = report.error.as_deref().unwrap_or(""),
            "probe"
        );
        self.publish(Event::ProbeDone {
            slot: name.to_owned(),
            ok: report.ok,
            ms: report.ms,
            error: report.error.clone(),
            steps: report.steps.clone(),
        });
        Ok(report)
    }

    /// `weights NAME=W ...`: one table swap. With `drain`, a serving slot set
    /// to 0 drains (by `deadline`, else `[drain] deadline`) instead of going
    /// to standby.
    pub async fn set_weights(
        &self,
        weights: Vec<Weight>,
        drain: bool,
        deadline: Option<Duration>,
    ) -> Result<Weighted, CtlError> {
        let before = self.state();
        let applied = self
            .apply(Command::Weights { weights, drain }, deadline)
            .await?;
        // The serving slots this change took out of service: they drain with
        // `drain`; without it they stop taking their own sessions too and, as
        // after `flip` without `--drain`, the reply says so (HAProxy's weight
        // 0 drains; this one does not unless asked).
        let left = |to: SlotState| -> Vec<String> {
            applied
                .state
                .slots
                .iter()
                .filter(|s| {
                    s.state == to
                        && before
                            .slots
                            .iter()
                            .any(|b| b.name == s.name && b.state == SlotState::Serving)
                })
                .map(|s| s.name.clone())
                .collect()
        };
        let cut = left(SlotState::Standby);
        let warning = (!cut.is_empty()).then(|| {
            self.cut_warning(
                &cut,
                &format!(
                    "`drain {}` lets them finish (`weights ... --drain` drains at once)",
                    cut.join("`, `drain ")
                ),
            )
        });
        Ok(Weighted {
            slots: briefs(&applied.state),
            warning,
            draining: left(SlotState::Draining),
            drained: None,
        })
    }

    /// The warning of a change that put `cut` to standby without a drain:
    /// what now happens to their sessions, and `finish`, how not to.
    fn cut_warning(&self, cut: &[String], finish: &str) -> String {
        let fate = if self.config().drain.migrate == crate::config::MigrateMode::Replay {
            "its open sessions move to a serving slot ([drain] migrate = \"replay\"), \
             its streams end and their calls in flight get `migrate_call_grace` to answer"
        } else {
            "requests of its open sessions now get 404"
        };
        format!(
            "{} went to standby without a drain: {fate}; {finish}",
            cut.join(", ")
        )
    }

    /// Whether `cmd` would apply to the state as it is now (a dry run of the
    /// state machine): refuses what it would refuse before a probe runs.
    pub fn check(&self, cmd: &Command) -> Result<(), CtlError> {
        state::apply(&self.state(), cmd).map(|_| ())
    }

    /// `flip SLOT`: probes first (unless `no_probe`); on a pass flips and
    /// starts the watch window. A failed probe changes nothing.
    pub async fn flip(self: &Arc<Self>, to: &str, opts: FlipOptions) -> Result<Flipped, CtlError> {
        let cmd = Command::Flip {
            to: to.to_owned(),
            drain: opts.drain,
        };
        // An unknown, retired or already active slot is refused without a probe.
        self.check(&cmd)?;
        let report = if opts.no_probe {
            None
        } else {
            let r = self.probe(to).await?;
            if !r.ok {
                return Err(CtlError::ProbeFailed {
                    report: Box::new(r),
                });
            }
            Some(r)
        };
        let applied = self.apply(cmd, opts.deadline).await?;
        self.watch.cancel("superseded by a new flip");
        let mut reply = flipped(&applied, to);
        tracing::info!(from = ?reply.from, to, drain = opts.drain, "flipped");
        if !opts.drain && reply.from.is_some() {
            let cut = standby_of(&applied);
            if !cut.is_empty() {
                reply.warning = Some(
                    self.cut_warning(&cut, &format!("use `flip {to} --drain` to let them finish")),
                );
            }
        }
        reply.probe = report;
        // A flip without a probe is not watched by probes either: the operator opted out.
        if reply.probe.is_some() {
            let window = opts.window.unwrap_or(self.config().watch.window);
            self.watch.start(self, to, window);
            reply.watch_ms = Some(window.as_millis() as u64);
        }
        Ok(reply)
    }

    /// `rollback`: back to the slot active before the last flip, if it passes
    /// its probe; ends the watch window.
    pub async fn rollback(self: &Arc<Self>) -> Result<Flipped, CtlError> {
        self.watch.cancel("manual rollback");
        self.roll_back("manual rollback", false).await
    }

    /// Flips back to the previous slot after probing it. From the watch
    /// window (`fact`), the flip is kept even if it cannot be saved.
    pub(crate) async fn roll_back(&self, reason: &str, fact: bool) -> Result<Flipped, CtlError> {
        let to = self
            .state()
            .previous_active
            .clone()
            .ok_or(CtlError::NoPrevious)?;
        let report = self.probe(&to).await?;
        if !report.ok {
            return Err(CtlError::ProbeFailed {
                report: Box::new(report),
            });
        }
        let cmd = Command::Flip {
            to: to.clone(),
            drain: true,
        };
        let applied = if fact {
            self.apply_fact(cmd).await?
        } else {
            self.apply(cmd, None).await?
        };
        self.rollbacks_total.fetch_add(1, Ordering::Relaxed);
        let mut reply = flipped(&applied, &to);
        tracing::warn!(from = ?reply.from, to, reason, "rolled back");
        *lock(&self.last_rollback) = Some(RollbackRecord {
            from: reply.from.clone(),
            to: to.clone(),
            reason: reason.to_owned(),
            at: now_ms(),
        });
        self.publish(Event::RolledBack {
            from: reply.from.clone(),
            to,
            reason: reason.to_owned(),
        });
        reply.reason = Some(reason.to_owned());
        reply.probe = Some(report);
        Ok(reply)
    }

    /// Waits until `slot` is drained (`drain --wait`, `wait`), passing its
    /// progress to `progress`; `timeout` gives up waiting.
    pub async fn wait_drained(
        &self,
        slot: &str,
        timeout: Option<Duration>,
        progress: impl FnMut(Progress),
    ) -> Result<DrainOutcome, CtlError> {
        drain::wait(self, &self.drains, slot, timeout, progress).await
    }

    /// `drain SLOT`: no new sessions; pinned ones keep going to it.
    pub async fn drain(
        &self,
        name: &str,
        deadline: Option<Duration>,
    ) -> Result<DrainStarted, CtlError> {
        self.apply(
            Command::Drain {
                slot: name.to_owned(),
            },
            deadline,
        )
        .await?;
        // `--migrate` (a zero deadline) on a slot that was draining already:
        // its running drain keeps the deadline it started with, so cut it
        // now (a new drain with a zero deadline cuts itself at once anyway).
        if deadline.is_some_and(|d| d.is_zero()) {
            self.drains.cut(name);
        }
        Ok(DrainStarted {
            slot: name.to_owned(),
            state: SlotState::Draining,
        })
    }

    /// `retire SLOT` (its process is gone) / `standby SLOT` (started again: a
    /// new generation and a fresh connection pool).
    pub async fn lifecycle(&self, name: &str, retire: bool) -> Result<Lifecycle, CtlError> {
        let slot = name.to_owned();
        let cmd = if retire {
            Command::Retire { slot }
        } else {
            Command::Standby { slot }
        };
        let applied = self.apply(cmd, None).await?;
        let r = applied.state.get(name).ok_or_else(|| self.unknown(name))?;
        Ok(Lifecycle {
            slot: name.to_owned(),
            state: r.state,
            generation: r.generation,
        })
    }
}

impl Host for Controller {
    fn tables(&self) -> &Tables {
        &self.tables
    }

    fn config(&self) -> Arc<Config> {
        Controller::config(self)
    }

    fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        Controller::subscribe(self)
    }

    fn publish(&self, event: Event) {
        Controller::publish(self, event)
    }

    fn persisted(&self) -> bool {
        Controller::persisted(self)
    }

    async fn drained(&self, cmd: Command, id: u64) -> Result<bool, CtlError> {
        let applied = self.submit(|reply| Op::Drained { cmd, id, reply }).await?;
        Ok(applied.persisted)
    }

    async fn probe(&self, slot: &str) -> Result<ProbeReport, CtlError> {
        Controller::probe(self, slot).await
    }

    fn others_answers(&self, slot: &str) -> (u64, u64) {
        self.store
            .as_ref()
            .map_or((0, 0), |s| s.others_answers(slot))
    }

    async fn others_idle(&self, slot: &str, quiet: Duration) {
        if let Some(store) = &self.store {
            store.others_idle(slot, quiet).await;
        }
    }

    async fn roll_back(&self, reason: &str) -> Result<Flipped, CtlError> {
        Controller::roll_back(self, reason, true).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn briefs(state: &State) -> Vec<SlotBrief> {
    state
        .slots
        .iter()
        .map(|s| SlotBrief {
            name: s.name.clone(),
            weight: s.weight,
            state: s.state,
            generation: s.generation,
        })
        .collect()
}

/// The reply of a flip that went through.
fn flipped(applied: &Applied, to: &str) -> Flipped {
    let (from, draining) = applied
        .events
        .iter()
        .find_map(|e| match e {
            Event::Flipped { from, draining, .. } => Some((from.clone(), draining.clone())),
            _ => None,
        })
        .unwrap_or_default();
    Flipped {
        from,
        to: to.to_owned(),
        draining,
        flipped_at: now_ms(),
        probe: None,
        watch_ms: None,
        warning: None,
        drained: None,
        reason: None,
        persisted: applied.persisted,
    }
}

fn standby_of(applied: &Applied) -> Vec<String> {
    applied
        .events
        .iter()
        .find_map(|e| match e {
            Event::Flipped { standby, .. } => Some(standby.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// The routing table of `state` over `runtime`.
fn table_of(state: &State, runtime: &BTreeMap<String, Runtime>) -> Table {
    let slots = state
        .slots
        .iter()
        .filter_map(|r| {
            let rt = runtime.get(&r.name)?;
            Some(Arc::new(Slot {
                name: Arc::from(r.name.as_str()),
                upstream: rt.upstream.url.clone(),
                scheme: rt.upstream.scheme.clone(),
                authority: rt.upstream.authority.clone(),
                host_header: rt.upstream.host_header.clone(),
                weight: r.weight,
                state: r.state,
                generation: r.generation,
                tag_prefix: crate::mcp::tag::tag_prefix(&r.name, r.generation),
                stats: Arc::clone(&rt.stats),
                client: rt.client.clone(),
            }))
        })
        .collect();
    Table::new(slots, state.revision)
}

/// With `[drain] migrate = "replay"`: a slot that took its sessions' requests
/// in `before` and takes none in `after` (put to standby by `flip` or
/// `weights` without a drain, or retired) has its sessions moved rather than
/// answered 404: it is cut, and its open streams end at event boundaries, so
/// that a legacy HTTP+SSE session's stream moves too (its POSTs follow it). A
/// slot that serves again is no longer cut.
fn cut_left_without_drain(before: &Table, after: &Table) {
    for slot in after.slots.iter() {
        let Some(was) = before.get(&slot.name) else {
            continue;
        };
        if was.generation != slot.generation {
            continue;
        }
        if slot.state == SlotState::Serving {
            if was.state != SlotState::Serving {
                slot.stats.set_cut(false);
            }
        } else if was.state.accepts_pinned() && !slot.state.accepts_pinned() {
            tracing::info!(slot = %slot.name, streams = slot.stats.live_streams(), "left service without a drain: its sessions move ([drain] migrate = \"replay\")");
            slot.stats.set_cut(true);
            slot.stats.end_open_streams();
        }
    }
}

/// The owner task: the only code that changes the state, the table and the file.
struct Owner {
    ctl: Arc<Controller>,
    state: State,
    runtime: BTreeMap<String, Runtime>,
    stats: StatsRegistry,
    /// `[proxy]` as the proxy started (it needs a restart to change).
    proxy: ProxyConfig,
    persister: Persister,
    /// In a fleet: the etcd revision of the shared state `state` is (0: none read).
    revision: i64,
    /// In a fleet: the clocks of the drains `state` runs.
    shared_drains: BTreeMap<String, SharedDrain>,
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let stop = self.ctl.shutdown.clone();
        loop {
            let op = tokio::select! {
                _ = stop.cancelled() => return,
                op = rx.recv() => match op { Some(op) => op, None => return },
            };
            match op {
                Op::Apply {
                    cmd,
                    deadline,
                    fact,
                    reply,
                } => {
                    let r = self.apply(&cmd, deadline, fact, &BTreeMap::new()).await;
                    let _ = reply.send(r);
                }
                Op::Drained { cmd, id, reply } => {
                    let r = match &cmd {
                        Command::Drained { slot, generation }
                            if self.ctl.drains.is_current(slot, id) =>
                        {
                            match self.apply(&cmd, None, true, &BTreeMap::new()).await {
                                // In a fleet, another instance committed this
                                // drain's end first: it ended all the same.
                                Err(CtlError::NotDraining { .. })
                                    if self.state.get(slot).is_some_and(|r| {
                                        r.state == SlotState::Drained && r.generation == *generation
                                    }) =>
                                {
                                    Ok(Applied {
                                        events: Vec::new(),
                                        persisted: true,
                                        state: self.ctl.state(),
                                    })
                                }
                                r => r,
                            }
                        }
                        Command::Drained { slot, .. } => {
                            Err(CtlError::DrainCancelled { slot: slot.clone() })
                        }
                        other => Err(CtlError::Internal(format!("not a drain's end: {other:?}"))),
                    };
                    let _ = reply.send(r);
                }
                Op::Adopt {
                    shared,
                    revision,
                    done,
                } => {
                    self.adopt(*shared, revision).await;
                    let _ = done.send(());
                }
                Op::Reconfigure {
                    cmd,
                    config,
                    upstreams,
                    reply,
                } => {
                    let r = self.apply(&cmd, None, false, &upstreams).await;
                    if r.is_ok() {
                        self.ctl.config.store(config);
                    }
                    let _ = reply.send(r);
                }
            }
        }
    }

    /// The runtime of `next`: a slot keeps its client while its generation
    /// stays; a new generation (or a new upstream) gets a new client.
    fn runtime_of(
        &self,
        next: &State,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> BTreeMap<String, Runtime> {
        next.slots
            .iter()
            .filter_map(|r| {
                let cur = self.runtime.get(&r.name);
                let rt = match (cur, upstreams.get(&r.name)) {
                    (Some(cur), None) if cur.generation == r.generation => cur.clone(),
                    (cur, new) => {
                        let upstream = new.or(cur.map(|c| &c.upstream))?.clone();
                        let stats = cur
                            .map(|c| Arc::clone(&c.stats))
                            .unwrap_or_else(|| self.stats.get(&r.name));
                        Runtime {
                            client: upstream.client(&self.proxy, &stats),
                            upstream,
                            generation: r.generation,
                            stats,
                        }
                    }
                };
                Some((r.name.clone(), rt))
            })
            .collect()
    }

    async fn apply(
        &mut self,
        cmd: &Command,
        deadline: Option<Duration>,
        fact: bool,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Result<Applied, CtlError> {
        let Some(store) = self.ctl.store.clone() else {
            return self.apply_local(cmd, deadline, fact, upstreams).await;
        };
        // A fact (a drain's end, the watch's rollback) that lost a race is
        // computed again on the state that won: a drain's end that another
        // instance committed first then changes nothing.
        let mut tries = if fact { 3 } else { 1 };
        loop {
            tries -= 1;
            match self.apply_shared(&*store, cmd, deadline, upstreams).await {
                Err(CtlError::Conflict { .. }) if tries > 0 => {
                    if let Ok(Some((shared, revision))) = store.read().await {
                        self.adopt(shared, revision).await;
                    }
                }
                r => return r,
            }
        }
    }

    /// In a fleet: the change is committed to the store (compared with the
    /// revision it was computed from), then routed here; the state file is
    /// written after it, as the fallback for a start without etcd.
    async fn apply_shared(
        &mut self,
        store: &dyn Store,
        cmd: &Command,
        deadline: Option<Duration>,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Result<Applied, CtlError> {
        let (next, events) = state::apply(&self.state, cmd)?;
        if events.is_empty() {
            return Ok(Applied {
                events,
                persisted: true,
                state: self.ctl.state(),
            });
        }
        self.check_upstreams(&next, upstreams)?;
        let cfg = self.ctl.config();
        let deadline = deadline.unwrap_or(cfg.drain.deadline);
        let now = now_ms();
        let shared = Shared {
            drains: store::drains_of(&self.shared_drains, &next, now, deadline),
            state: next,
            committed_ms: now,
            by: String::new(),
        };
        self.revision = store.commit(self.revision, &shared).await?;
        let runtime = self.runtime_of(&shared.state, upstreams);
        self.save_fallback(&shared.state).await;
        self.shared_drains = shared.drains;
        self.commit(shared.state, runtime, &events, Some(deadline));
        Ok(Applied {
            events,
            persisted: true,
            state: self.ctl.state(),
        })
    }

    /// Routes a state another instance committed.
    async fn adopt(&mut self, shared: Shared, revision: i64) {
        if revision <= self.revision {
            return;
        }
        let now = now_ms();
        let store = self.ctl.store.clone();
        let adopted = |committed_ms| {
            if let Some(store) = &store {
                store.adopted(revision, committed_ms);
            }
        };
        if shared.state == self.state {
            self.revision = revision;
            self.shared_drains = shared.drains;
            adopted(shared.committed_ms);
            return;
        }
        if let Some(unknown) = shared
            .state
            .slots
            .iter()
            .find(|r| !self.runtime.contains_key(&r.name))
        {
            tracing::error!(
                slot = %unknown.name,
                by = %shared.by,
                "the fleet's table names a slot this instance's config does not have: not adopted (reload this instance with the fleet's slots); its changes conflict until then"
            );
            return;
        }
        self.revision = revision;
        let runtime = self.runtime_of(&shared.state, &BTreeMap::new());
        let deadline = store::remaining(&shared.drains, now);
        tracing::info!(revision, by = %shared.by, rev = shared.state.revision, "adopted the fleet's table");
        self.shared_drains = shared.drains;
        let committed_ms = shared.committed_ms;
        // Routed first (that is what propagation measures), then written down.
        self.commit(shared.state.clone(), runtime, &[], deadline);
        adopted(committed_ms);
        self.save_fallback(&shared.state).await;
    }

    /// In a fleet, the state file is the fallback: a failure is logged and
    /// shown in `status`, not a refusal (the commit to etcd is the durable one).
    async fn save_fallback(&mut self, state: &State) {
        match self.persister.save(state).await {
            Ok(()) => self.durable(state.revision, None),
            Err(e) => {
                self.ctl
                    .state_save_failures_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %e.path.display(), error = %e, "cannot write the local state file (the fleet's table in etcd holds the change; the file is only the fallback for a start without etcd)");
                self.behind(&e);
            }
        }
    }

    fn check_upstreams(
        &self,
        next: &State,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Result<(), CtlError> {
        match next
            .slots
            .iter()
            .find(|r| !self.runtime.contains_key(&r.name) && !upstreams.contains_key(&r.name))
        {
            Some(missing) => Err(CtlError::Internal(format!(
                "slot {} has no upstream",
                missing.name
            ))),
            None => Ok(()),
        }
    }

    /// On its own: the change is saved to the state file, then routed.
    async fn apply_local(
        &mut self,
        cmd: &Command,
        deadline: Option<Duration>,
        fact: bool,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Result<Applied, CtlError> {
        let (next, events) = state::apply(&self.state, cmd)?;
        if events.is_empty() {
            return Ok(Applied {
                events,
                persisted: self.ctl.persisted(),
                state: self.ctl.state(),
            });
        }
        self.check_upstreams(&next, upstreams)?;
        let runtime = self.runtime_of(&next, upstreams);
        let persisted = match self.persister.save(&next).await {
            Ok(()) => {
                self.durable(next.revision, None);
                true
            }
            Err(e) => {
                self.ctl
                    .state_save_failures_total
                    .fetch_add(1, Ordering::Relaxed);
                self.ctl.publish(Event::StateNotSaved {
                    path: e.path.clone(),
                    error: e.to_string(),
                });
                if !fact {
                    tracing::error!(path = %e.path.display(), error = %e, ?cmd, "cannot save the state: the command is refused and nothing changed");
                    self.restore_file(&e).await;
                    return Err(CtlError::StateNotSaved {
                        path: e.path.clone(),
                        error: e.to_string(),
                    });
                }
                tracing::error!(path = %e.path.display(), error = %e, ?cmd, "CANNOT SAVE THE STATE: the change is applied but not on disk (persisted: false); a restart would come back on an older state");
                self.behind(&e);
                false
            }
        };
        self.commit(next, runtime, &events, deadline);
        Ok(Applied {
            events,
            persisted,
            state: self.ctl.state(),
        })
    }

    /// After a refused save that may have replaced the file (the rename
    /// happened, the directory fsync failed), writes the current state back.
    async fn restore_file(&mut self, e: &SaveError) {
        if !e.after_rename() {
            lock(&self.ctl.state_file).error = Some(e.to_string());
            return;
        }
        match self.persister.save(&self.state).await {
            Ok(()) => self.durable(self.state.revision, Some(e)),
            Err(again) => {
                tracing::error!(error = %again, "cannot write the state back either: the file may hold a change that was refused");
                self.behind(&again);
            }
        }
    }

    /// The file holds `revision`; `error` is the last failure, if one just happened.
    fn durable(&self, revision: u64, error: Option<&SaveError>) {
        let mut f = lock(&self.ctl.state_file);
        f.persisted = true;
        f.revision = revision;
        f.error = error.map(|e| e.to_string());
        drop(f);
        self.ctl.publish(Event::StateSaved { revision });
    }

    /// The file does not hold the state that routes.
    fn behind(&self, e: &SaveError) {
        let mut f = lock(&self.ctl.state_file);
        f.persisted = false;
        f.error = Some(e.to_string());
    }

    fn commit(
        &mut self,
        next: State,
        runtime: BTreeMap<String, Runtime>,
        events: &[Event],
        deadline: Option<Duration>,
    ) {
        let table = Arc::new(table_of(&next, &runtime));
        self.runtime = runtime;
        self.state = next.clone();
        let before = self.ctl.tables.swap(Arc::clone(&table));
        if self.ctl.config().drain.migrate == crate::config::MigrateMode::Replay {
            cut_left_without_drain(&before, &table);
        }
        self.ctl.state.store(Arc::new(next));
        let cfg = self.ctl.config();
        self.ctl.drains.reconcile(
            &self.ctl,
            &table,
            deadline.unwrap_or(cfg.drain.deadline),
            cfg.drain.quiet,
        );
        for e in events {
            if matches!(e, Event::Flipped { .. }) {
                self.ctl.flips_total.fetch_add(1, Ordering::Relaxed);
            }
            self.ctl.publish(e.clone());
        }
    }
}
