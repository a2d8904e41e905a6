//! The fleet: many mcpflip instances in front of the same slots that flip and
//! drain as one, coordinated through etcd (`[cluster]`).
//!
//! ```text
//! ctl ─► controller ─► Fleet (Store): txn on {prefix}/table, compared with its revision
//! etcd ─► sync (watch {prefix}/) ─► controller.adopt (table) / Fleet (instances' counts)
//! report ─► {prefix}/instances/{instance} (lease-bound counts) ─► every drain's others_idle
//! ```
//!
//! `etcd` is the client (etcd's JSON gateway over hyper and rustls); `fleet`
//! the store and what the instance knows of the fleet; `sync` the watch;
//! `report` this instance's counts; `remote` the command queue of `ctl
//! --cluster` and its leader; `sessions` the captured sessions of `[drain]
//! migrate = "replay"`, shared. [`join`] reads the fleet's table at
//! start (a restarted instance takes it from etcd, not from its state file)
//! and [`spawn`] starts the tasks. The request path never touches any of it.

pub mod etcd;
pub mod fleet;
pub mod remote;
pub mod report;
pub mod sessions;
pub mod sync;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, Config};
use crate::control::protocol::CtlError;
use crate::control::state::State;
use crate::control::store::{Joined, Shared, Store};
use crate::control::Controller;
pub use fleet::Fleet;

/// The etcd client of `[cluster]`.
pub fn client(c: &ClusterConfig, config: &Config) -> etcd::Etcd {
    etcd::Etcd::new(etcd::Settings {
        endpoints: c.etcd.clone(),
        tls: config.resolved.cluster_tls.clone(),
        credentials: c.username.as_ref().map(|u| etcd::Credentials {
            username: u.clone(),
            password: config.resolved.cluster_password.clone().unwrap_or_default(),
        }),
        request_timeout: c.request_timeout,
    })
}

/// Joins the fleet: the state to start on is the fleet's table (checked
/// against this config's slots); a fleet without one gets `local`. When
/// etcd cannot be reached, `local` (the state file's) it is, with a
/// warning, and the watch adopts the fleet's table once etcd answers.
pub async fn join(
    c: &ClusterConfig,
    config: &Config,
    local: State,
) -> anyhow::Result<(State, Joined, Arc<Fleet>)> {
    let fleet = Fleet::new(client(c, config), c);
    let configured: Vec<(String, u32)> = config
        .slots
        .iter()
        .map(|s| (s.name.clone(), s.weight))
        .collect();
    let store: Arc<dyn Store> = fleet.clone();
    for _ in 0..3 {
        match fleet.read().await {
            Ok(Some((shared, revision))) => {
                let saved = shared
                    .state
                    .slots
                    .iter()
                    .map(|r| (r.name.clone(), r.clone()))
                    .collect();
                let (state, notes) = State::restore(
                    &configured,
                    &saved,
                    shared.state.previous_active.as_deref(),
                    shared.state.revision,
                )
                .map_err(|e| anyhow::anyhow!("the fleet's table at {}: {e}", c.prefix))?;
                for n in notes {
                    tracing::warn!("the fleet's table: {n}");
                }
                tracing::info!(prefix = %c.prefix, instance = %c.instance, revision, "joined the fleet: routing by its table");
                fleet.adopted(revision, shared.committed_ms);
                let joined = Joined {
                    store,
                    revision,
                    drains: shared.drains,
                };
                return Ok((state, joined, fleet));
            }
            Ok(None) => {
                let shared = Shared {
                    state: local.clone(),
                    drains: Default::default(),
                    committed_ms: crate::control::controller::now_ms(),
                    by: String::new(),
                };
                match fleet.commit(0, &shared).await {
                    Ok(revision) => {
                        tracing::info!(prefix = %c.prefix, instance = %c.instance, "the fleet had no table: this instance's state is now the fleet's");
                        let joined = Joined {
                            store,
                            revision,
                            drains: Default::default(),
                        };
                        return Ok((local, joined, fleet));
                    }
                    // Another instance created it first: read it.
                    Err(CtlError::Conflict { .. }) => continue,
                    Err(e) => return unreachable_start(e, local, store, fleet),
                }
            }
            Err(e) => return unreachable_start(e, local, store, fleet),
        }
    }
    anyhow::bail!(
        "the fleet's table at {} keeps changing while this instance starts; start it again",
        c.prefix
    )
}

fn unreachable_start(
    e: CtlError,
    local: State,
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
) -> anyhow::Result<(State, Joined, Arc<Fleet>)> {
    match e {
        CtlError::ClusterUnavailable { .. } => {
            tracing::warn!(error = %e, "starting on the local state file: the fleet's etcd cannot be reached; its table is adopted once it answers, and changes are refused until then");
            Ok((
                local,
                Joined {
                    store,
                    revision: 0,
                    drains: Default::default(),
                },
                fleet,
            ))
        }
        e => Err(anyhow::anyhow!("{e}")),
    }
}

/// Starts the watch and the counts' publisher; they end at `stop`.
pub fn spawn(ctl: &Arc<Controller>, fleet: &Arc<Fleet>, stop: &CancellationToken) {
    tokio::spawn(sync::run(
        Arc::clone(ctl),
        Arc::clone(fleet),
        stop.child_token(),
    ));
    tokio::spawn(remote::serve(
        Arc::clone(ctl),
        Arc::clone(fleet),
        stop.child_token(),
    ));
    let (f, token) = (Arc::clone(fleet), stop.child_token());
    tokio::spawn(async move { f.write_deploys(token).await });
    tokio::spawn(report::run(
        Arc::clone(ctl),
        Arc::clone(fleet),
        stop.child_token(),
    ));
}
