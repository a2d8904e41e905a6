//! `reload` (and SIGHUP): re-read the config file and apply what can change
//! without dropping a connection. The new config is checked whole first; an
//! invalid one is refused with its error and the running config stays.
//!
//! Applied live: certificates (new handshakes get them; open connections keep
//! theirs), slots added, removed (only when idle) or re-addressed (a new
//! generation: the old process's sessions get the 404 that makes clients start
//! over), `[drain]`, `[probe]`, `[watch]`. Runtime weights and states persist.
//! Listener addresses, the control socket and `[proxy]` need a restart; the
//! reply names them.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::Config;
use crate::controller::{build_slot, Controller, CtlError};
use crate::table::{Slot, SlotState};

impl Controller {
    /// Re-reads the config file this proxy was started with.
    pub async fn reload(self: &Arc<Self>) -> Result<Value, CtlError> {
        let path = self
            .config
            .lock()
            .map(|c| c.source.clone())
            .map_err(|_| CtlError::new("internal", "config lock poisoned"))?;
        let new = Config::load(&path)
            .map_err(|e| CtlError::new("bad_config", format!("{e}; the running config stays")))?;
        let _w = self.write.lock().await;
        let old = self
            .config
            .lock()
            .map(|c| c.clone())
            .map_err(|_| CtlError::new("internal", "config lock poisoned"))?;
        let mut changed: Vec<String> = Vec::new();
        let mut restart: Vec<String> = Vec::new();

        for (what, differs) in [
            ("[listen] addr", old.listen.addr != new.listen.addr),
            ("[admin] addr", old.admin.addr != new.admin.addr),
            ("[control] socket", old.control.socket != new.control.socket),
            (
                "[control] state_file",
                old.control.state_file != new.control.state_file,
            ),
            ("[proxy]", old.proxy != new.proxy),
        ] {
            if differs {
                restart.push(what.to_owned());
            }
        }

        // Certificates: built now, swapped in only once everything else is valid.
        let listener_tls = self.tls.lock().ok().and_then(|t| t.clone());
        // Loaded once, by the new config's validation.
        let new_tls = match (&new.resolved.listener_tls, &listener_tls) {
            (Some(t), Some(_)) => Some(Arc::clone(t)),
            (None, None) => None,
            _ => {
                restart.push("[listen] tls (turning TLS on or off)".to_owned());
                None
            }
        };

        let table = self.tables.load_full();
        let mut slots: Vec<Arc<Slot>> = Vec::new();
        for sc in &new.slots {
            let same_ca = old
                .slots
                .iter()
                .find(|o| o.name == sc.name)
                .is_some_and(|o| o.ca == sc.ca);
            match table.get(&sc.name) {
                Some(cur) if cur.upstream == sc.upstream && same_ca => slots.push(Arc::clone(cur)),
                Some(cur) => {
                    let state = match cur.state {
                        SlotState::Retired => SlotState::Standby,
                        s => s,
                    };
                    let generation = cur.generation + 1;
                    let slot = build_slot(
                        &self.stats,
                        &new,
                        &sc.name,
                        &sc.upstream,
                        cur.weight,
                        state,
                        generation,
                    )?;
                    changed.push(format!(
                        "slot {} re-addressed: {} -> {} (generation {generation}; its old sessions get 404)",
                        sc.name, cur.upstream, sc.upstream
                    ));
                    slots.push(Arc::new(slot));
                }
                None => {
                    let state = if sc.weight > 0 {
                        SlotState::Serving
                    } else {
                        SlotState::Standby
                    };
                    let slot = build_slot(
                        &self.stats,
                        &new,
                        &sc.name,
                        &sc.upstream,
                        sc.weight,
                        state,
                        1,
                    )?;
                    changed.push(format!(
                        "slot {} added ({}, {})",
                        sc.name, sc.upstream, state
                    ));
                    slots.push(Arc::new(slot));
                }
            }
        }
        for cur in &table.slots {
            if new.slots.iter().any(|s| s.name == *cur.name) {
                continue;
            }
            let (live, inflight) = (cur.stats.live_streams(), cur.stats.inflight());
            if matches!(cur.state, SlotState::Serving | SlotState::Draining) || live + inflight > 0
            {
                return Err(CtlError::new(
                    "slot_in_use",
                    format!(
                        "the new config removes slot {}, which is {} with {live} live streams and {inflight} requests in flight; \
                         flip away from it and let it drain first. Nothing changed",
                        cur.name, cur.state
                    ),
                ));
            }
            changed.push(format!("slot {} removed (was {})", cur.name, cur.state));
        }
        if !slots
            .iter()
            .any(|s| s.state == SlotState::Serving && s.weight > 0)
        {
            return Err(CtlError::new(
                "no_serving_slot",
                "after this reload no slot would be serving; nothing changed",
            ));
        }

        for (what, differs) in [
            ("[drain]", old.drain != new.drain),
            ("[probe]", old.probe != new.probe),
            ("[watch]", old.watch != new.watch),
        ] {
            if differs {
                changed.push(format!("{what} settings"));
            }
        }

        // Everything is valid: apply it.
        let slot_change = slots.len() != table.slots.len()
            || slots
                .iter()
                .zip(&table.slots)
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if slot_change {
            self.swap(|_| Ok(slots))?;
        }
        for cur in &table.slots {
            if !new.slots.iter().any(|s| s.name == *cur.name) {
                self.cancel_drain(&cur.name);
            }
        }
        if let (Some(cfg), Some(slot)) = (new_tls, listener_tls) {
            slot.store(cfg);
            changed.push("[listen] tls certificates re-read (new handshakes use them; open connections keep theirs)".to_owned());
        }
        if let Ok(mut c) = self.config.lock() {
            *c = new;
        }
        tracing::info!(?changed, ?restart, "config reloaded");
        Ok(json!({"ok": true, "changed": changed, "restart_required": restart}))
    }
}
