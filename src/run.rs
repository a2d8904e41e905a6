//! Wiring: binds the public, admin and control listeners around one controller,
//! and shuts them down in order (stop accepting, drain every slot up to the
//! deadline, end what is left at event boundaries). Used by `mcpflip run`, the
//! demo and the tests (which bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::controller::Controller;
use crate::proxy::host_guard::HostGuard;
use crate::proxy::{self, Forwarder};
use crate::state::PersistedState;

/// A running proxy.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub controller: Arc<Controller>,
    stop: CancellationToken,
    public: JoinHandle<hyper_util::server::graceful::GracefulShutdown>,
    deadline: Duration,
}

/// Starts the proxy on `config`. With `ignore_state`, the state file is not read.
pub async fn start(config: Config, ignore_state: bool) -> anyhow::Result<Running> {
    let persisted = if ignore_state {
        None
    } else {
        PersistedState::load(&config.control.state_file)?
    };
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
    let control = crate::control::bind(&config.control.socket)?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let header_timeout = config.proxy.header_read_timeout;
    let preserve_host = config.proxy.preserve_host;
    let sse_keepalive = config.proxy.sse_keepalive;
    let host_guard = HostGuard::new(public_addr, config.proxy.allowed_hosts.as_deref());
    let controller = Controller::new(config, persisted, stop.child_token())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let forwarder = Arc::new(Forwarder {
        tables: Arc::clone(&controller.tables),
        preserve_host,
        proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
        sse_keepalive,
        host_guard,
    });
    controller.set_tls(tls.clone());
    controller.resume_drains();
    tokio::spawn(crate::admin::serve(
        admin,
        Arc::clone(&controller),
        stop.child_token(),
    ));
    tokio::spawn(crate::control::serve(
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
    }
}
