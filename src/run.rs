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
use crate::proxy::host_guard::HostGuard;
use crate::proxy::{self, Forwarder};

/// A running proxy.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub controller: Arc<Controller>,
    stop: CancellationToken,
    public: JoinHandle<hyper_util::server::graceful::GracefulShutdown>,
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
    let header_timeout = config.proxy.header_read_timeout;
    let preserve_host = config.proxy.preserve_host;
    let sse_keepalive = config.proxy.sse_keepalive;
    let host_guard = HostGuard::new(public_addr, config.proxy.allowed_hosts.as_deref());
    let controller = Controller::start(config, state, tls.clone(), stop.child_token())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let forwarder = Arc::new(Forwarder {
        tables: Arc::clone(&controller.tables),
        preserve_host,
        proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
        sse_keepalive,
        host_guard,
    });
    let admin = tokio::spawn(crate::admin::serve(
        admin,
        Arc::clone(&controller),
        crate::admin::Settings {
            // The admin listener has no allowed_hosts of its own: loopback names
            // on a loopback address, no check elsewhere.
            guard: HostGuard::new(admin_addr, None),
            header_read_timeout: header_timeout,
        },
        stop.child_token(),
    ));
    tokio::spawn(server::serve(
        control,
        Arc::clone(&controller),
        stop.child_token(),
    ));
    let public = tokio::spawn(proxy::serve(
        public,
        forwarder,
        header_timeout,
        tls,
        stop.child_token(),
    ));
    tracing::info!(%public_addr, %admin_addr, "mcpflip is serving");
    Ok(Running {
        public_addr,
        admin_addr,
        controller,
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
        if let Some(g) = graceful {
            let _ = tokio::time::timeout(Duration::from_secs(5), g.shutdown()).await;
        }
        // Its feeds ended at `stop`; it returns once its idle connections closed.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.admin).await;
    }
}
