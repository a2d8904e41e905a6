//! Wiring: restores the control state (or starts from the config's), binds
//! the public, admin and control listeners around one controller, and shuts
//! them down in order (`/readyz` turns 503, stop accepting, drain every slot
//! up to the deadline, end what is left at event boundaries; the admin
//! listener answers until the end). Used by `mcpflip run`, the demo and the
//! tests (which bind port 0).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MigrateMode};
use crate::control::controller::Controller;
use crate::control::persist::{self, LoadError};
use crate::control::sessions_file::{self, Taken};
use crate::control::state::State;
use crate::control::{paths, server};
use crate::health::{Lifecycle, Phase};
use crate::proxy::conn::{Connections, Limits};
use crate::proxy::host_guard::HostGuard;
use crate::proxy::migrate::Sessions;
use crate::proxy::{self, Forwarder};
use crate::stats::ProxyStats;

/// A running proxy.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub controller: Arc<Controller>,
    /// The public listener's counters that belong to no slot.
    pub proxy_stats: Arc<ProxyStats>,
    /// Serving, shutting down or handing over (`/readyz` reports it).
    pub lifecycle: Arc<Lifecycle>,
    /// Stops the public listener's accept loop and the control server.
    stop_accepting: CancellationToken,
    /// Stops everything else (the admin listener, the controller's tasks).
    stop: CancellationToken,
    public: JoinHandle<Arc<Connections>>,
    admin: JoinHandle<()>,
    control: JoinHandle<()>,
    /// The public and admin listening sockets (second descriptors) with their
    /// addresses, to hand over in an upgrade.
    sockets: [(OwnedFd, SocketAddr); 2],
    deadline: Duration,
    /// `[proxy] idle_timeout`: how long a handover waits for idle connections.
    idle: Duration,
    /// The worker threads client connections run on: kept until the
    /// connections have closed (dropping it stops the threads).
    workers: Arc<proxy::workers::Workers>,
    /// The captured sessions (`[drain] migrate = "replay"`), handed over in
    /// an upgrade.
    sessions: Option<Arc<Sessions>>,
    /// Their writer, without a fleet: saves them beside the state file
    /// every `migrate_save_interval` and at a shutdown.
    sessions_file: Option<Arc<sessions_file::Saver>>,
}

/// The state to start on: the state file's, checked as strictly as a
/// command's result, or the config's (with `ignore_state`, or no file yet).
/// The state directory is created (0700) when missing and refused when
/// another user could plant files in it.
pub fn initial_state(config: &Config, ignore_state: bool) -> anyhow::Result<State> {
    let path = &config.control.state_file;
    paths::secure_dir(paths::parent_of(path))
        .map_err(|e| anyhow::anyhow!("[control] state_file: {e}"))?;
    persist::remove_stale_temps(path);
    let configured: Vec<(String, u32)> = config
        .slots
        .iter()
        .map(|s| (s.name.clone(), s.weight))
        .collect();
    let from_config = || State::from_config(configured.iter().map(|(n, w)| (n.as_str(), *w)));
    if ignore_state {
        tracing::info!(
            "--ignore-state: starting from the config's weights; the next change overwrites {}",
            path.display()
        );
        return Ok(from_config());
    }
    let Some(file) = persist::load(path)? else {
        return Ok(from_config());
    };
    let (state, notes) = State::restore(
        &configured,
        &file.records(),
        file.previous_active.as_deref(),
        file.revision,
    )
    .map_err(|e| LoadError::Refused {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    for n in notes {
        tracing::warn!("state file {}: {n}", path.display());
    }
    let (active, generation) = state
        .active()
        .map(|a| (a.name.as_str(), a.generation))
        .unwrap_or(("none", 0));
    tracing::info!(
        "state restored from {} (active: {active}, generation {generation}); start with --ignore-state to use the config's weights",
        path.display()
    );
    Ok(state)
}

/// Listening sockets this process did not bind itself: from the process it
/// takes over from (`handover`), or from systemd (socket activation).
#[derive(Default)]
pub struct Inherited {
    /// The public listener, with the address it is bound to.
    pub public: Option<std::net::TcpListener>,
    /// The admin listener.
    pub admin: Option<std::net::TcpListener>,
    /// Take the control socket over from a live process (bind beside it and
    /// rename over it) instead of refusing a socket in use.
    pub replace_control: bool,
    /// The counts of the process handing over, per slot.
    pub previous: Vec<crate::control::protocol::HandoverSlot>,
    /// What its drains had left of their deadlines, per slot.
    pub drains: Vec<(String, Duration)>,
}

/// The listener for `addr` (`what` names the key in errors): `inherited`
/// when it is bound to `addr` (or `addr` asks for port 0 on its address),
/// else a fresh one (the inherited one is closed: the address changed).
async fn listener(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
    what: &str,
) -> anyhow::Result<TcpListener> {
    if let Some(l) = inherited {
        let bound = l.local_addr()?;
        if bound == addr || (addr.port() == 0 && bound.ip() == addr.ip()) {
            l.set_nonblocking(true)?;
            tracing::info!(%bound, "{what}: listening socket taken over");
            return Ok(TcpListener::from_std(l)?);
        }
        tracing::info!(old = %bound, new = %addr, "{what} changed: binding the new address");
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))
}

/// A second descriptor of `l`'s socket, kept to hand the socket over.
fn keep(l: &TcpListener) -> anyhow::Result<(OwnedFd, SocketAddr)> {
    Ok((l.as_fd().try_clone_to_owned()?, l.local_addr()?))
}

/// Starts the proxy on `config`. With `ignore_state`, the state file is not read.
pub async fn start(config: Config, ignore_state: bool) -> anyhow::Result<Running> {
    start_with(config, ignore_state, Inherited::default()).await
}

/// `start` with listening sockets taken over instead of bound.
pub async fn start_with(
    config: Config,
    ignore_state: bool,
    inherited: Inherited,
) -> anyhow::Result<Running> {
    let state = initial_state(&config, ignore_state)?;
    // Only a handover takes the control socket over from a live process.
    let handover = inherited.replace_control;
    // Certificates were loaded once, by the config's validation.
    let tls: Option<proxy::TlsSlot> = config
        .resolved
        .listener_tls
        .clone()
        .map(|c| Arc::new(arc_swap::ArcSwap::new(c)));
    let admin_tls: Option<proxy::TlsSlot> = config
        .resolved
        .admin_tls
        .clone()
        .map(|c| Arc::new(arc_swap::ArcSwap::new(c)));
    let stop = CancellationToken::new();
    let stop_accepting = stop.child_token();
    let lifecycle = Arc::new(Lifecycle::default());
    let deadline = config.drain.deadline;
    let public = listener(config.listen.addr, inherited.public, "[listen] addr").await?;
    let admin = listener(config.admin.addr, inherited.admin, "[admin] addr").await?;
    let control = if inherited.replace_control {
        server::bind_replacing(&config.control.socket)?
    } else {
        server::bind(&config.control.socket)?
    };
    let sockets = [keep(&public)?, keep(&admin)?];
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let proxy_cfg = config.proxy.clone();
    let proxy_protocol = config.listen.proxy_protocol;
    let drain_cfg = config.drain.clone();
    let sessions_path = config.control.sessions_file();
    let limits = Limits {
        header_read: proxy_cfg.header_read_timeout,
        idle: proxy_cfg.idle_timeout,
        send: proxy_cfg.send_timeout,
    };
    let host_guard = HostGuard::new(public_addr, proxy_cfg.allowed_hosts.as_deref());
    let admin_guard = HostGuard::new(admin_addr, config.admin.allowed_hosts.as_deref());
    let admin_clients = config
        .admin
        .allowed_clients
        .as_deref()
        .map(crate::proxy::trusted::Trusted::new);
    let (state, fleet) = match config.cluster.clone() {
        Some(c) => {
            let (state, joined, fleet) = crate::cluster::join(&c, &config, state).await?;
            (state, Some((joined, fleet)))
        }
        None => (state, None),
    };
    let (joined, fleet) = fleet.unzip();
    let controller = Controller::start_after(
        config,
        state,
        tls.clone(),
        stop_accepting.child_token(),
        &inherited.previous,
        inherited.drains,
        joined,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(slot) = &admin_tls {
        controller.set_admin_tls(Arc::clone(slot));
    }
    // The fleet's tasks (the watch, the counts under this instance's lease,
    // the command queue) end when this process stops accepting: after an
    // upgrade the new process is the instance.
    if let Some(fleet) = &fleet {
        crate::cluster::spawn(&controller, fleet, &stop_accepting);
    }
    // `tls.acme`: the certificate is ordered and renewed by this process
    // while it is the one that accepts (after an upgrade, the new one).
    if controller
        .config()
        .listen
        .tls
        .as_ref()
        .is_some_and(|t| t.acme.is_some())
    {
        let shared = fleet
            .as_ref()
            .map(|f| crate::acme::Fleet::new(f.etcd.clone(), &f.prefix));
        tokio::spawn(crate::acme::run(
            Arc::clone(&controller),
            shared,
            stop_accepting.child_token(),
        ));
    }
    let proxy_stats = Arc::new(ProxyStats::default());
    let _ = controller.proxy_stats.set(Arc::clone(&proxy_stats));
    let sessions = (drain_cfg.migrate == MigrateMode::Replay).then(|| {
        let s = Arc::new(Sessions::new(
            drain_cfg.migrate_max_sessions,
            drain_cfg.migrate_idle,
            Arc::clone(&proxy_stats),
        ));
        tokio::spawn(Arc::clone(&s).expire_every(stop.child_token()));
        // In a fleet the captured sessions are shared through its etcd.
        if let Some(fleet) = &fleet {
            let shared = crate::cluster::sessions::FleetSessions::new(
                fleet.etcd.clone(),
                &fleet.prefix,
                drain_cfg.migrate_idle,
                drain_cfg.migrate_max_sessions,
                Arc::clone(&proxy_stats),
            );
            s.set_mirror(Arc::clone(&shared) as Arc<dyn crate::proxy::migrate::Mirror>);
            tokio::spawn(shared.run(Arc::downgrade(&s), stop.child_token()));
        }
        s
    });
    // Alone, what the proxy captured before a restart (a fleet's etcd has
    // it), and saved for the next one.
    let sessions_file = sessions.as_ref().filter(|_| fleet.is_none()).map(|s| {
        let path = sessions_path.clone();
        persist::remove_stale_temps(&path);
        // In a handover the old process sends what it holds now; its last
        // save, older, would hold moves made since as they were before.
        if !ignore_state && !handover {
            take_sessions(&path, s);
        }
        let saver = sessions_file::Saver::new(path, Arc::clone(s), Arc::clone(&proxy_stats));
        let every = drain_cfg.migrate_save_interval;
        tokio::spawn(Arc::clone(&saver).every(every, stop_accepting.child_token()));
        saver
    });
    let forwarder = Arc::new(Forwarder {
        tables: Arc::clone(&controller.tables),
        preserve_host: proxy_cfg.preserve_host,
        x_forwarded: proxy_cfg.x_forwarded,
        request_id: proxy_cfg.request_id,
        trusted: crate::proxy::trusted::Trusted::new(&proxy_cfg.trusted_proxies),
        proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
        sse_keepalive: proxy_cfg.sse_keepalive,
        host_guard,
        allowed_clients: proxy_cfg
            .allowed_clients
            .as_deref()
            .map(crate::proxy::trusted::Trusted::new),
        rate_limit: proxy_cfg
            .rate_limit
            .as_ref()
            .map(|r| crate::proxy::rate_limit::RateLimit::new(r, Arc::clone(&proxy_stats))),
        client_ip_header: proxy_cfg
            .client_ip_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        client_body_timeout: proxy_cfg.client_body_timeout,
        max_request_body: proxy_cfg.max_request_body,
        tool_call_timeout: proxy_cfg.tool_call_timeout,
        stats: Arc::clone(&proxy_stats),
        sessions: sessions.clone(),
        call_grace: drain_cfg.migrate_call_grace,
        migrate_on_404: drain_cfg.migrate_on_404,
    });
    let admin = tokio::spawn(crate::admin::serve(
        admin,
        Arc::clone(&controller),
        crate::admin::Settings {
            guard: admin_guard,
            allowed_clients: admin_clients,
            limits,
            proxy: Arc::clone(&proxy_stats),
            lifecycle: Arc::clone(&lifecycle),
            tls: admin_tls,
        },
        stop.child_token(),
    ));
    let control = tokio::spawn(server::serve(
        control,
        Arc::clone(&controller),
        stop_accepting.child_token(),
    ));
    tokio::spawn(crate::health::probe_serving(
        Arc::clone(&controller),
        stop_accepting.child_token(),
    ));
    let max_connections = proxy_cfg.max_connections();
    // `workers = 0`: one per core, as nginx's `worker_processes auto`.
    let count = match proxy_cfg.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let workers = proxy::workers::Workers::start(count, crate::log::access::flush_thread)
        .map_err(|e| anyhow::anyhow!("cannot start the worker threads: {e}"))?;
    let public = tokio::spawn(proxy::serve(
        public,
        forwarder,
        proxy::Settings {
            limits,
            max_connections,
            tls,
            proxy_protocol,
            workers: Arc::clone(&workers),
            per_ip: proxy_cfg
                .max_connections_per_ip
                .map(|n| crate::proxy::per_ip::PerIp::new(n, Arc::clone(&proxy_stats))),
        },
        stop_accepting.child_token(),
    ));
    tracing::info!(%public_addr, %admin_addr, max_connections, workers = count, "mcpflip is serving");
    Ok(Running {
        public_addr,
        admin_addr,
        controller,
        proxy_stats,
        lifecycle,
        stop_accepting,
        stop,
        public,
        admin,
        control,
        sockets,
        deadline,
        idle: limits.idle,
        workers,
        sessions,
        sessions_file,
    })
}

/// Takes the sessions a stopped proxy saved at `path` into `sessions`, and says so.
fn take_sessions(path: &std::path::Path, sessions: &Sessions) {
    match sessions_file::take(path, sessions) {
        Taken::None => {}
        Taken::Read { read, added } => tracing::info!(
            path = %path.display(),
            read,
            added,
            "captured sessions taken back from before the restart (those idle past migrate_idle are not)"
        ),
        Taken::Refused(why) => tracing::warn!(
            path = %path.display(),
            "the captured sessions saved before the restart are not used: {why}; the file is left as it is until the next save replaces it"
        ),
    }
}

/// One line for `systemctl status` (`STATUS=`): the active slot and the
/// live streams per slot.
pub fn status_line(ctl: &Controller) -> String {
    let table = ctl.tables.load();
    let streams: Vec<String> = table
        .slots
        .iter()
        .map(|s| format!("{} {}", s.name, s.stats.live_streams()))
        .collect();
    format!(
        "active: {}; live streams: {}",
        table.active().map_or("none", |s| &*s.name),
        streams.join(", ")
    )
}

impl Running {
    /// The captured sessions, with `[drain] migrate = "replay"`.
    pub fn sessions(&self) -> Option<Arc<Sessions>> {
        self.sessions.clone()
    }

    /// The public and admin listening sockets, with their addresses.
    pub fn sockets(&self) -> [(BorrowedFd<'_>, SocketAddr); 2] {
        let [(p, pa), (a, aa)] = &self.sockets;
        [(p.as_fd(), *pa), (a.as_fd(), *aa)]
    }

    /// Stops accepting, lets every slot drain up to the drain deadline, ends the
    /// remaining streams at event boundaries, and returns.
    pub async fn shutdown(self) {
        self.finish(Phase::ShuttingDown).await
    }

    /// A new process took the listeners over: stops accepting on them (and on
    /// the control socket, whose path the new process owns now) at once,
    /// closes idle keep-alive connections so that their clients move over,
    /// and finishes the open requests and streams as `shutdown` does.
    pub async fn hand_over(self) {
        self.finish(Phase::HandingOver).await
    }

    async fn finish(self, phase: Phase) {
        let started = std::time::Instant::now();
        let table = self.controller.tables.load_full();
        self.lifecycle.enter(phase);
        self.stop_accepting.cancel();
        if phase == Phase::HandingOver {
            // The admin listener is the new process's too: stop taking its connections.
            self.stop.cancel();
        }
        // From here on each response tells its client to reconnect (to the
        // new process, in a handover): see `proxy::serve`.
        let graceful = self.public.await.ok();
        let all_idle = async {
            for s in &table.slots {
                s.stats.wait_idle().await;
            }
        };
        if tokio::time::timeout(self.deadline, all_idle).await.is_err() {
            tracing::warn!(
                "{}: drain deadline passed; ending the remaining streams at event boundaries",
                match phase {
                    Phase::HandingOver => "handover",
                    _ => "shutdown",
                }
            );
            for s in &table.slots {
                s.stats.force_end_streams();
            }
        }
        if let Some(connections) = graceful {
            if phase == Phase::HandingOver {
                // Idle keep-alive connections are not closed under their
                // clients (a request sent as the close happens would be
                // lost): each goes with its next response, or at its idle
                // timeout, within what is left of the deadline.
                let left = self.deadline.saturating_sub(started.elapsed());
                let wait = left.min(self.idle + Duration::from_secs(1));
                let _ = tokio::time::timeout(wait, connections.closed()).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), connections.shutdown()).await;
        }
        // The connections are closed: what they captured is all there is.
        // A new process that took over has the sessions already.
        if let (Phase::ShuttingDown, Some(saver)) = (phase, &self.sessions_file) {
            saver.save_logged(sessions_file::When::Shutdown).await;
        }
        // Commands still running (an `upgrade`'s own reply) finish.
        let _ = self.control.await;
        // The admin listener answered (`/readyz`: 503) until now; its feeds
        // end at `stop`, and it returns once its idle connections closed.
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.admin).await;
        // The client connections are closed: the worker threads may stop.
        drop(self.workers);
    }
}
