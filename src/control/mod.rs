//! The control path: a Unix socket (mode 0600, peers checked by uid) that takes
//! one command per line and answers JSON lines; and the `ctl` client.
//!
//! A malformed line gets a JSON error with a stable `code`; the connection stays
//! usable. Waiting commands stream `"event": "progress"` objects and end with
//! exactly one object that carries `"ok"`.

pub mod client;
pub mod protocol;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::controller::{Controller, CtlError, DrainOutcome};
use crate::deploy::FlipOptions;
use protocol::Command;

/// Binds the control socket: replaces a stale file, refuses a live one.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "control socket {} is in use by another running mcpflip; stop it first or set [control] socket to another path",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("cannot chmod 0600 {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serves control connections until `stop`.
pub async fn serve(listener: UnixListener, ctl: Arc<Controller>, stop: CancellationToken) {
    // SAFETY-free: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
        };
        let allowed = stream
            .peer_cred()
            .map(|c| c.uid() == me || c.uid() == 0)
            .unwrap_or(false);
        let ctl = Arc::clone(&ctl);
        let stop = stop.clone();
        tokio::spawn(async move {
            if allowed {
                connection(stream, ctl, stop).await;
            } else {
                let mut s = stream;
                let _ = s
                    .write_all(b"{\"ok\":false,\"error\":\"permission denied: only the proxy's user or root may control it\",\"code\":\"forbidden\"}\n")
                    .await;
            }
        });
    }
}

fn error_json(e: &CtlError) -> Value {
    e.to_json()
}

fn outcome_json(slot: &str, o: DrainOutcome) -> Value {
    json!({"ok": true, "slot": slot, "drained_after_ms": o.drained_after_ms, "forced": o.forced})
}

async fn connection(stream: UnixStream, ctl: Arc<Controller>, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            _ = stop.cancelled() => return,
            l = lines.next_line() => match l {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    let _ = write.write_all(format!("{}\n", json!({"ok": false, "error": format!("unreadable line: {e}"), "code": "bad_command"})).as_bytes()).await;
                    return;
                }
            },
        };
        if line.trim().is_empty() {
            continue;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let ctl2 = Arc::clone(&ctl);
        let run = tokio::spawn(async move { execute(&ctl2, &line, tx).await });
        while let Some(v) = rx.recv().await {
            if write.write_all(format!("{v}\n").as_bytes()).await.is_err() {
                run.abort();
                return;
            }
        }
        let reply = match run.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => error_json(&e),
            Err(e) => {
                json!({"ok": false, "error": format!("command failed: {e}"), "code": "internal"})
            }
        };
        if write
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Runs one command; progress objects go to `tx`, the final reply is returned.
pub async fn execute(
    ctl: &Arc<Controller>,
    line: &str,
    tx: mpsc::UnboundedSender<Value>,
) -> Result<Value, CtlError> {
    let progress = |v: Value| {
        let _ = tx.send(v);
    };
    match protocol::parse(line)? {
        Command::Status => Ok(ctl.status()),
        Command::Weights(w) => ctl.set_weights(&w).await,
        Command::Flip {
            slot,
            no_probe,
            drain,
            wait,
        } => {
            let opts = FlipOptions {
                no_probe,
                drain,
                ..FlipOptions::default()
            };
            let (mut reply, from) = ctl.gated_flip(&slot, opts).await?;
            if !drain && !from.is_empty() {
                reply["warning"] = json!(format!(
                    "{} went to standby without a drain: requests of its open sessions now get 404; \
                     use `flip {slot} --drain` to let them finish",
                    from.join(", ")
                ));
            }
            if drain && wait {
                let mut drained = Vec::new();
                for f in &from {
                    let o = ctl.wait_drained(f, None, progress).await?;
                    drained.push(outcome_json(f, o));
                }
                reply["drained"] = Value::Array(drained);
            }
            Ok(reply)
        }
        Command::Drain {
            slot,
            wait,
            deadline,
        } => {
            ctl.drain(&slot, deadline).await?;
            if wait {
                let o = ctl.wait_drained(&slot, None, progress).await?;
                Ok(outcome_json(&slot, o))
            } else {
                Ok(json!({"ok": true, "slot": slot, "state": "draining"}))
            }
        }
        Command::Wait { slot, timeout } => {
            let o = ctl.wait_drained(&slot, timeout, progress).await?;
            Ok(outcome_json(&slot, o))
        }
        Command::Probe(slot) => {
            let report = ctl.probe_slot(&slot).await?;
            let v = serde_json::to_value(&report)
                .map_err(|e| CtlError::new("internal", e.to_string()))?;
            if !report.ok {
                return Err(CtlError::new(
                    "probe_failed",
                    format!(
                        "probe of {slot} failed: {}",
                        report.error.as_deref().unwrap_or("unknown failure")
                    ),
                )
                .with("probe", v));
            }
            Ok(v)
        }
        Command::Rollback => ctl.rollback().await,
        Command::Reload => ctl.reload().await,
        Command::Deploy {
            slot,
            deadline,
            watch,
        } => ctl.deploy(&slot, deadline, watch, progress).await,
        Command::Retire(slot) => ctl.set_lifecycle(&slot, true).await,
        Command::Standby(slot) => ctl.set_lifecycle(&slot, false).await,
    }
}
