//! `reload` (and SIGHUP): re-read the config file and apply what can change
//! without dropping a connection. The new config is loaded and validated
//! whole first (certificates included); an invalid one is refused with its
//! error and the running config stays.
//!
//! Applied live: slots added, removed (only when idle) or re-addressed (a new
//! generation: the old process's sessions get the 404 that makes clients
//! start over), `[drain]`, `[probe]`, `[watch]`, `[health]`, and the listener's
//! certificates (new handshakes get them; open connections keep theirs).
//! Runtime weights and states persist. Listener addresses, the control
//! socket, the state file and `[proxy]` need a restart (`mcpflip ctl upgrade`
//! makes one without dropping a connection); the reply names them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::control::controller::{Controller, Upstream};
use crate::control::protocol::{CtlError, Event, Reloaded};
use crate::control::state::{Command, ConfigSlot};

/// Re-reads the config file this proxy was started with.
/// Tells systemd `RELOADING=1` first and `READY=1` after, applied or refused
/// (`Type=notify-reload` waits for both; a refusal fails `ctl reload`, which
/// fails `systemctl reload` through `ExecReload`).
pub async fn reload(ctl: &Arc<Controller>) -> Result<Reloaded, CtlError> {
    crate::notify::reloading();
    let result = apply(ctl).await;
    ctl.counters.count_reload(result.is_ok());
    crate::notify::ready();
    result
}

async fn apply(ctl: &Arc<Controller>) -> Result<Reloaded, CtlError> {
    let old = ctl.config();
    let new = Config::load(&old.source)
        .map_err(|e| CtlError::BadConfig(format!("{e}; the running config stays")))?;
    let mut changed: Vec<String> = Vec::new();
    let mut restart: Vec<String> = Vec::new();

    for (what, differs) in [
        ("[listen] addr", old.listen.addr != new.listen.addr),
        (
            "[listen] proxy_protocol",
            old.listen.proxy_protocol != new.listen.proxy_protocol,
        ),
        ("[admin] addr", old.admin.addr != new.admin.addr),
        (
            "[admin] allowed_hosts",
            old.admin.allowed_hosts != new.admin.allowed_hosts,
        ),
        (
            "[admin] allowed_clients",
            old.admin.allowed_clients != new.admin.allowed_clients,
        ),
        ("[control] socket", old.control.socket != new.control.socket),
        (
            "[control] state_file",
            old.control.state_file != new.control.state_file,
        ),
        ("[proxy]", old.proxy != new.proxy),
        ("[log]", old.log != new.log),
        ("[cluster]", old.cluster != new.cluster),
    ] {
        if differs {
            restart.push(what.to_owned());
        }
    }

    // Certificates were loaded by validation; swapped in only once the rest applied.
    let new_tls = match (&new.resolved.listener_tls, ctl.listener_tls()) {
        (Some(cfg), Some(slot)) => Some((Arc::clone(cfg), Arc::clone(slot))),
        (None, None) => None,
        _ => {
            restart.push("[listen] tls (turning TLS on or off)".to_owned());
            None
        }
    };

    let new_admin_tls = match (&new.resolved.admin_tls, ctl.admin_tls()) {
        (Some(cfg), Some(slot)) => Some((Arc::clone(cfg), Arc::clone(slot))),
        (None, None) => None,
        _ => {
            restart.push("[admin] tls (turning TLS on or off)".to_owned());
            None
        }
    };

    let table = ctl.tables.load_full();
    let mut slots = Vec::new();
    let mut upstreams = BTreeMap::new();
    for sc in &new.slots {
        // A new `ca`, `cert` or `key` is swapped in place below: only a new
        // address makes a new generation.
        let readdressed = table
            .get(&sc.name)
            .is_some_and(|cur| cur.upstream != sc.upstream);
        if readdressed || table.get(&sc.name).is_none() {
            upstreams.insert(sc.name.clone(), Upstream::of(sc, &new)?);
        }
        slots.push(ConfigSlot {
            name: sc.name.clone(),
            weight: sc.weight,
            readdressed,
        });
    }
    let busy = table
        .slots
        .iter()
        .filter(|s| s.stats.live_streams() + s.stats.inflight() > 0)
        .map(|s| s.name.to_string())
        .collect();
    for (what, differs) in [
        ("[drain]", old.drain != new.drain),
        ("[probe]", old.probe != new.probe),
        ("[watch]", old.watch != new.watch),
        ("[health]", old.health != new.health),
    ] {
        if differs {
            changed.push(format!("{what} settings"));
        }
    }

    // The slots with a new client (new or re-addressed): theirs is read now.
    let upstreams_new: Vec<String> = upstreams.keys().cloned().collect();
    let new = Arc::new(new);
    let applied = ctl
        .reconfigure(
            Command::Reconcile { slots, busy },
            Arc::clone(&new),
            upstreams,
        )
        .await?;
    let mut slot_changes: Vec<String> = applied
        .events
        .iter()
        .filter_map(|e| match e {
            Event::SlotAdded { slot, state } => Some(format!(
                "slot {slot} added ({}, {state})",
                new.slots
                    .iter()
                    .find(|s| s.name == *slot)
                    .map_or("?", |s| s.upstream.as_str())
            )),
            Event::SlotReaddressed { slot, generation } => Some(format!(
                "slot {slot} re-addressed: {} -> {} (generation {generation}; its old sessions get 404)",
                table.get(slot).map_or("?", |s| s.upstream.as_str()),
                new.slots
                    .iter()
                    .find(|s| s.name == *slot)
                    .map_or("?", |s| s.upstream.as_str())
            )),
            Event::SlotRemoved { slot } => Some(format!(
                "slot {slot} removed (was {})",
                table
                    .get(slot)
                    .map_or_else(|| "?".to_owned(), |s| s.state.to_string())
            )),
            _ => None,
        })
        .collect();
    slot_changes.append(&mut changed);
    let mut changed = slot_changes;
    // A slot that kept its address trusts the CAs and presents the client
    // certificate read now from its next handshake on: renewed without a
    // new generation.
    for sc in new
        .slots
        .iter()
        .filter(|sc| !upstreams_new.contains(&sc.name))
    {
        let (Some(running), Some(read)) = (
            table.get(&sc.name).and_then(|s| s.client.tls()),
            new.resolved.slot_live.get(&sc.name),
        ) else {
            continue;
        };
        for what in running.update(read) {
            changed.push(format!(
                "slot {} {what} (from its next connection on; open ones keep theirs)",
                sc.name
            ));
        }
    }
    if let Some((cfg, slot)) = new_tls {
        slot.store(cfg);
        changed.push("[listen] tls certificates re-read (new handshakes use them; open connections keep theirs)".to_owned());
    }
    if let Some((cfg, slot)) = new_admin_tls {
        slot.store(cfg);
        changed.push("[admin] tls certificates re-read (new handshakes use them)".to_owned());
    }
    tracing::info!(?changed, ?restart, "config reloaded");
    ctl.publish(Event::Reloaded {
        changed: changed.clone(),
        restart_required: restart.clone(),
    });
    Ok(Reloaded {
        changed,
        restart_required: restart,
    })
}
