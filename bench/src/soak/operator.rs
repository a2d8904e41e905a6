//! The soak's operator: the slots' `mcpflip upstream` processes (started on
//! their fixed ports, stopped, SIGKILLed) and the deploys, as
//! `examples/deploy.sh` does them: start the idle slot, `standby` it,
//! `deploy` it, then stop the drained slot and `retire` it (or, when the
//! deploy fails, stop and retire the new one). During the deploys the plan
//! marks, the slot being drained is killed a few seconds after the flip, and
//! the operator answers as one would: `retire` it (its process is gone),
//! start it again, `standby` it (a new generation).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::gauges::{self, Gauges};
use super::plan::{self, Step};
use super::Log;
use crate::model::{Deploy, Kill, Slot};
use crate::targets::{self, Control};

/// The two slots' processes, on ports that stay theirs for the whole soak
/// (the proxy's config names them).
pub struct Slots {
    mcpflip: PathBuf,
    dir: PathBuf,
    ports: [u16; 2],
    children: [Option<Child>; 2],
}

impl Slots {
    pub fn new(mcpflip: &Path, dir: &Path, ports: [u16; 2]) -> Slots {
        Slots {
            mcpflip: mcpflip.to_path_buf(),
            dir: dir.to_path_buf(),
            ports,
            children: [None, None],
        }
    }

    pub fn port(&self, slot: Slot) -> u16 {
        self.ports[slot.index()]
    }

    /// Whether `slot`'s process runs (a process that ended is reaped).
    pub fn running(&mut self, slot: Slot) -> bool {
        match &mut self.children[slot.index()] {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts `slot`'s process and waits until it listens (off the runtime's
    /// threads: the clients keep running meanwhile).
    pub async fn start(&mut self, slot: Slot) -> anyhow::Result<()> {
        if let Some(mut old) = self.children[slot.index()].take() {
            let _ = tokio::task::spawn_blocking(move || targets::stop_child(&mut old)).await;
        }
        let (exe, dir, port) = (self.mcpflip.clone(), self.dir.clone(), self.port(slot));
        let child = tokio::task::spawn_blocking(move || -> anyhow::Result<Child> {
            let name = format!("upstream-{}", slot.name());
            let mut cmd = Command::new(&exe);
            cmd.args(["upstream", "--port", &port.to_string()])
                .args(["--slot", slot.name(), "--transport", "both"])
                .env("RUST_LOG", "warn");
            let mut child = targets::spawn(cmd, &dir, &name)?;
            match targets::wait_listening(&mut child, port, &dir, &name) {
                Ok(()) => Ok(child),
                Err(e) => {
                    targets::stop_child(&mut child);
                    Err(e)
                }
            }
        })
        .await??;
        self.children[slot.index()] = Some(child);
        Ok(())
    }

    /// Stops `slot`'s process as a service manager does (SIGTERM; it ends
    /// its streams and lets requests finish).
    pub async fn stop(&mut self, slot: Slot) {
        if let Some(mut c) = self.children[slot.index()].take() {
            let _ = tokio::task::spawn_blocking(move || targets::stop_child(&mut c)).await;
        }
    }

    /// SIGKILLs `slot`'s process and reaps it.
    pub async fn kill(&mut self, slot: Slot) -> anyhow::Result<()> {
        let mut c = self.children[slot.index()]
            .take()
            .with_context(|| format!("{} has no process to kill", slot.name()))?;
        // SAFETY: kill(2) on the pid of our own child, not reaped yet.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
        tokio::task::spawn_blocking(move || c.wait())
            .await?
            .context("waiting for the killed upstream")?;
        Ok(())
    }

    pub fn stop_all(&mut self) {
        for c in self.children.iter_mut().flatten() {
            targets::stop_child(c);
        }
        self.children = [None, None];
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Deploys and kills on the plan's schedule.
pub struct Operator {
    pub slots: Slots,
    pub socket: PathBuf,
    pub gauges: Gauges,
    /// The start of the load (the plan's times count from it).
    pub start: Instant,
    pub log: Log,
}

/// What the operator did.
#[derive(Debug, Default)]
pub struct Done {
    pub deploys: Vec<Deploy>,
    pub kills: Vec<Kill>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

impl Operator {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Runs `steps` (stops early when `stop` is cancelled or a step cannot
    /// be carried out).
    pub async fn run(mut self, steps: Vec<Step>, stop: CancellationToken) -> (Done, Slots) {
        let mut done = Done::default();
        for (i, step) in steps.into_iter().enumerate() {
            tokio::select! {
                _ = tokio::time::sleep_until((self.start + step.at).into()) => {}
                _ = stop.cancelled() => break,
            }
            if let Err(e) = self.deploy(i + 1, step, &mut done).await {
                let msg = format!("deploy #{} could not be carried out: {e:#}", i + 1);
                self.log.say(&msg);
                done.error = Some(msg);
                break;
            }
        }
        (done, self.slots)
    }

    /// One deploy as `examples/deploy.sh` does it, with a kill when the
    /// step says so.
    async fn deploy(&mut self, n: usize, step: Step, done: &mut Done) -> anyhow::Result<()> {
        let mut ctl = Control::connect(&self.socket).await?;
        let status = self.gauges.status().await?;
        let from = status["active"]
            .as_str()
            .and_then(|s| Slot::parse(s.as_bytes()))
            .with_context(|| format!("no active slot in /status: {status}"))?;
        let to = from.other();
        if !self.slots.running(to) {
            self.slots.start(to).await?;
        }
        // A restarted slot is a new generation: sessions of its old process get a 404.
        ctl.ok(&format!("standby {}", to.name())).await?;
        let at_s = self.start.elapsed().as_secs_f64();
        self.log.say(&format!(
            "deploy #{n}: {} → {}{}",
            from.name(),
            to.name(),
            if step.kill {
                format!(
                    "; {} will be killed {} s after the flip",
                    from.name(),
                    plan::KILL_AFTER_FLIP.as_secs()
                )
            } else {
                String::new()
            }
        ));
        let started = Instant::now();
        let mut deploy_ctl = Control::connect(&self.socket).await?;
        let line = format!("deploy {}", to.name());
        let command = deploy_ctl.send(&line, |_| {});
        let (reply, kill) = if step.kill {
            let (reply, kill) = tokio::join!(command, self.kill(n, from, &mut ctl));
            (reply, Some(kill))
        } else {
            (command.await, None)
        };
        let elapsed_s = started.elapsed().as_secs_f64();
        let mut record = match reply {
            Ok(v) => deploy_record(n, at_s, from, to, elapsed_s, &v),
            Err(e) => Deploy {
                n,
                at_s,
                from,
                to,
                outcome: "error".to_owned(),
                message: Some(format!("{e:#}")),
                elapsed_s,
                drained_after_ms: None,
                forced: 0,
                killed: step.kill,
            },
        };
        record.killed = step.kill;
        match kill {
            Some(Ok(k)) => {
                self.log.say(&format!(
                    "   killed {} (generation {}, {}, {} live streams, {} in flight) at {:.1} s; \
                     retired, restarted and standby (generation {}) {} ms later",
                    k.slot.name(),
                    k.generation,
                    k.state,
                    k.live_streams,
                    k.inflight,
                    k.killed_ms as f64 / 1000.0,
                    k.new_generation,
                    k.recovered_ms - k.killed_ms
                ));
                done.kills.push(k);
            }
            Some(Err(e)) => self.log.say(&format!("   the kill failed: {e:#}")),
            None => {}
        }
        self.log.say(&format!(
            "   deploy #{n} {} in {:.1} s{}{}",
            record.outcome,
            record.elapsed_s,
            record.drained_after_ms.map_or(String::new(), |ms| format!(
                ", {} drained after {:.1} s",
                from.name(),
                ms as f64 / 1000.0
            )),
            record
                .message
                .as_deref()
                .map_or(String::new(), |m| format!(": {m}"))
        ));
        // As deploy.sh: the drained slot is stopped and retired; a refused or
        // rolled-back release is.
        let gone = if record.outcome == "passed" { from } else { to };
        self.slots.stop(gone).await;
        let retired = ctl.ok(&format!("retire {}", gone.name())).await;
        done.deploys.push(record);
        retired?;
        Ok(())
    }

    /// Kills `slot` (the one being drained) [`plan::KILL_AFTER_FLIP`] after
    /// the flip, then retires, restarts and re-standbys it.
    async fn kill(&mut self, deploy: usize, slot: Slot, ctl: &mut Control) -> anyhow::Result<Kill> {
        // The flip has happened once the old slot drains.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.gauges.status().await?;
            let state = gauges::slot_status(&status, slot.name())
                .and_then(|s| s["state"].as_str())
                .unwrap_or("");
            if state == "draining" {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not start draining within 20 s", slot.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(plan::KILL_AFTER_FLIP).await;
        let status = self.gauges.status().await?;
        let s = gauges::slot_status(&status, slot.name())
            .with_context(|| format!("{} is not in /status", slot.name()))?;
        let generation = s["generation"]
            .as_u64()
            .context("no generation in /status")? as u32;
        let (state, live_streams, inflight) = (
            s["state"].as_str().unwrap_or("?").to_owned(),
            s["live_streams"].as_u64().unwrap_or(0),
            s["inflight"].as_u64().unwrap_or(0),
        );
        let killed_ms = self.ms();
        self.slots.kill(slot).await?;
        ctl.ok(&format!("retire {}", slot.name())).await?;
        self.slots.start(slot).await?;
        let reply = ctl.ok(&format!("standby {}", slot.name())).await?;
        let recovered_ms = self.ms();
        let new_generation = reply["generation"].as_u64().unwrap_or(0) as u32;
        Ok(Kill {
            slot,
            generation,
            deploy,
            state,
            live_streams,
            inflight,
            killed_ms,
            recovered_ms,
            new_generation,
            failures: 0,
        })
    }
}

/// A deploy's final reply as a record: `passed` when `ok`, else its code.
fn deploy_record(n: usize, at_s: f64, from: Slot, to: Slot, elapsed_s: f64, v: &Value) -> Deploy {
    let passed = v["ok"] == Value::Bool(true);
    Deploy {
        n,
        at_s,
        from,
        to,
        outcome: if passed {
            "passed".to_owned()
        } else {
            v["code"].as_str().unwrap_or("failed").to_owned()
        },
        message: (!passed).then(|| v["error"].as_str().unwrap_or("").to_owned()),
        elapsed_s,
        drained_after_ms: v["drained_after_ms"].as_u64(),
        forced: v["forced"].as_u64().unwrap_or(0),
        killed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_passed_deploy_keeps_its_drain_time() {
        let v = json!({"ok": true, "from": "blue", "to": "green", "drained_after_ms": 12_345,
                       "forced": 0, "watch": {"outcome": "passed"}});
        let d = deploy_record(3, 140.0, Slot::Blue, Slot::Green, 13.0, &v);
        assert_eq!(d.outcome, "passed");
        assert_eq!(d.drained_after_ms, Some(12_345));
        assert_eq!(d.message, None);
    }

    #[test]
    fn a_failed_deploy_keeps_its_code_and_message() {
        let v = json!({"ok": false, "code": "rolled_back", "error": "green was rolled back to blue: 5xx",
                       "drained_after_ms": null, "forced": 2});
        let d = deploy_record(1, 20.0, Slot::Blue, Slot::Green, 9.0, &v);
        assert_eq!(d.outcome, "rolled_back");
        assert_eq!(
            d.message.as_deref(),
            Some("green was rolled back to blue: 5xx")
        );
        assert_eq!((d.drained_after_ms, d.forced), (None, 2));
    }
}
