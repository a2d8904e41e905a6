//! Wiring: restores the control state (or starts from the config's), binds
//! the public, admin and control listeners around one controller, and shuts
//! them down in order (stop accepting, drain every slot up to the deadline,
//! end what is left at event boundaries). Used by `mcpflip run`, the demo and
//! the tests (which bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::controller::Controller;
use crate::control::persist::{self, LoadError};
use crate::control::state::State;
use crate::control::{paths, server};
use crate::proxy::conn::{Connections, Limits};
use crate::proxy::host_guard::HostGuard;
use crate::proxy::{self, Forwarder};
use crate::stats::ProxyStats;

/// A running proxy.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub controller: Arc<Controller>,
    /// The public listener's counters that belong to no slot.
    pub proxy_stats: Arc<ProxyStats>,
    stop: CancellationToken,
    public: JoinHandle<Arc<Connections>>,
    admin: JoinHandle<()>,
    deadline: Duration,
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

/// Starts the proxy on `config`. With `ignore_state`, the state file is not read.
pub async fn start(config: Config, ignore_state: bool) -> anyhow::Result<Running> {
    let state = initial_state(&config, ignore_state)?;
    // Certificates were loaded once, by the config's validation.
    let tls: Option<proxy::TlsSlot> = config
        .resolved
        .listener_tls
        .clone()
        .map(|c| Arc::new(arc_swap::ArcSwap::new(c)));
    let stop = CancellationToken::new();
    let deadline = config.drain.deadline;
    let public = TcpListener::bind(config.listen.addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} ([listen] addr): {e}",
            config.listen.addr
        )
    })?;
    let admin = TcpListener::bind(config.admin.addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {} ([admin] addr): {e}", config.admin.addr)
    })?;
    let control = server::bind(&config.control.socket)?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let proxy_cfg = config.proxy.clone();
    let limits = Limits {
        header_read: proxy_cfg.header_read_timeout,
        idle: proxy_cfg.idle_timeout,
    };
    let host_guard = HostGuard::new(public_addr, proxy_cfg.allowed_hosts.as_deref());
    let admin_guard = HostGuard::new(admin_addr, config.admin.allowed_hosts.as_deref());
    let (state, fleet) = match config.cluster.clone() {
        Some(c) => {
            let (state, joined, fleet) = crate::cluster::join(&c, &config, state).await?;
            (state, Some((joined, fleet)))
        }
        None => (state, None),
    };
    let (joined, fleet) = fleet.unzip();
    let controller = Controller::start_in(config, state, tls.clone(), stop.child_token(), joined)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(fleet) = &fleet {
        crate::cluster::spawn(&controller, fleet, &stop);
    }
    let proxy_stats = Arc::new(ProxyStats::default());
    let forwarder = Arc::new(Forwarder {
        tables: Arc::clone(&controller.tables),
        preserve_host: proxy_cfg.preserve_host,
        proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
        sse_keepalive: proxy_cfg.sse_keepalive,
        host_guard,
        client_body_timeout: proxy_cfg.client_body_timeout,
        tool_call_timeout: proxy_cfg.tool_call_timeout,
        stats: Arc::clone(&proxy_stats),
    });
    let admin = tokio::spawn(crate::admin::serve(
        admin,
        Arc::clone(&controller),
        crate::admin::Settings {
            guard: admin_guard,
            limits,
            proxy: Arc::clone(&proxy_stats),
        },
        stop.child_token(),
    ));
    tokio::spawn(server::serve(
        control,
        Arc::clone(&controller),
        stop.child_token(),
    ));
    let max_connections = proxy_cfg.max_connections();
    let public = tokio::spawn(proxy::serve(
        public,
        forwarder,
        proxy::Settings {
            limits,
            max_connections,
            tls,
        },
        stop.child_token(),
    ));
    tracing::info!(%public_addr, %admin_addr, max_connections, "mcpflip is serving");
    Ok(Running {
        public_addr,
        admin_addr,
        controller,
        proxy_stats,
        stop,
        public,
        admin,
        deadline,
    })
}

impl Running {
    /// Stops accepting, lets every slot drain up to the drain deadline, ends the
    /// remaining streams at event boundaries, and returns.
    pub async fn shutdown(self) {
        let table = self.controller.tables.load_full();
        self.stop.cancel();
        let graceful = self.public.await.ok();
        let all_idle = async {
            for s in &table.slots {
                s.stats.wait_idle().await;
            }
        };
        if tokio::time::timeout(self.deadline, all_idle).await.is_err() {
            tracing::warn!(
                "shutdown: drain deadline passed; ending the remaining streams at event boundaries"
            );
            for s in &table.slots {
                s.stats.force_end_streams();
            }
        }
        if let Some(connections) = graceful {
            let _ = tokio::time::timeout(Duration::from_secs(5), connections.shutdown()).await;
        }
        // Its feeds ended at `stop`; it returns once its idle connections closed.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.admin).await;
    }
}
