//! The `mcpflip ctl` client: sends one command line to the control socket and
//! prints the replies, readable by default or as raw JSON lines.

use std::io::{IsTerminal, Write};
use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Sends `command`; returns the final reply (the one with `"ok"`).
pub async fn send(
    socket: &Path,
    command: &str,
    mut on_progress: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the control socket {}: {e}\n(is `mcpflip run` running? set --socket or MCPFLIP_SOCKET to its [control] socket)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{}\n", command.trim()).as_bytes())
        .await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let v: Value =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("bad reply {line:?}: {e}"))?;
        if v.get("ok").is_some() {
            return Ok(v);
        }
        on_progress(&v);
    }
    anyhow::bail!("the proxy closed the control connection without a reply")
}

/// Runs `mcpflip ctl`: prints and returns the exit code (0 when ok).
pub async fn run(socket: &Path, command: &str, json: bool) -> anyhow::Result<i32> {
    let tty = std::io::stderr().is_terminal();
    let mut printed_progress = false;
    let mut phase = String::new();
    let reply = send(socket, command, |p| {
        if json {
            println!("{p}");
            return;
        }
        let this = p["phase"].as_str().unwrap_or("drain");
        if tty {
            // A new phase keeps the last line of the previous one: a timeline.
            if printed_progress && this != phase {
                eprintln!();
            }
            eprint!("\r\x1b[K{}", progress_line(p));
            let _ = std::io::stderr().flush();
            printed_progress = true;
        } else if this != phase || this != "drain" && this != "watch" {
            eprintln!("{}", progress_line(p));
        }
        phase = this.to_owned();
    })
    .await?;
    if printed_progress {
        eprintln!();
    }
    if json {
        println!("{reply}");
    } else {
        println!("{}", human(&reply));
    }
    Ok(if reply["ok"] == Value::Bool(true) {
        0
    } else {
        1
    })
}

fn secs(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / 1000.0
}

/// A 20-cell bar of `done` out of `total`.
fn bar(done: f64, total: f64) -> String {
    let cells = if total > 0.0 {
        ((done / total).clamp(0.0, 1.0) * 20.0).round() as usize
    } else {
        0
    };
    format!("[{}{}]", "#".repeat(cells), ".".repeat(20 - cells))
}

fn progress_line(p: &Value) -> String {
    let slot = p["slot"].as_str().unwrap_or("?");
    match p["phase"].as_str() {
        Some("probe") => format!("probe    {slot}: initialize, tools/list, canary ..."),
        Some("flip") => format!(
            "flip     {} -> {}; draining {}",
            p["from"].as_str().unwrap_or("(none)"),
            p["to"].as_str().unwrap_or("?"),
            p["draining"]
                .as_array()
                .map(|d| d
                    .iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "nothing".to_owned()),
        ),
        Some("watch") => {
            let (elapsed, window) = (secs(&p["elapsed_ms"]), secs(&p["window_ms"]));
            format!(
                "watch    {slot}: {} {:.0}s left, {} probes passed",
                bar(elapsed, window),
                (window - elapsed).max(0.0),
                p["probes"],
            )
        }
        // `drain --wait`, `wait` and the drain phase of `deploy`.
        _ => {
            let (elapsed, deadline) = (secs(&p["elapsed_ms"]), secs(&p["deadline_ms"]));
            format!(
                "drain    {slot}: {} live streams, {} in flight {} {:.1}s of {:.0}s deadline",
                p["live_streams"],
                p["inflight"],
                bar(elapsed, deadline),
                elapsed,
                deadline,
            )
        }
    }
}

/// The steps of a probe report, one line each.
fn probe_lines(report: &Value, out: &mut String) {
    let Some(steps) = report["steps"].as_array() else {
        return;
    };
    for st in steps {
        let ok = st["ok"] == Value::Bool(true);
        out.push_str(&format!(
            "  {} {:<12} {:>5}ms  {}\n",
            if ok { "ok  " } else { "FAIL" },
            st["step"].as_str().unwrap_or("?"),
            st["ms"],
            st["detail"].as_str().unwrap_or(""),
        ));
        if let Some(status) = st["status"].as_u64() {
            out.push_str(&format!("       HTTP {status}"));
            if let Some(b) = st["body"].as_str() {
                out.push_str(&format!(": {b}"));
            }
            out.push('\n');
        }
    }
}

/// A readable rendering of a final reply.
pub fn human(v: &Value) -> String {
    let mut out = String::new();
    if v["ok"] != Value::Bool(true) {
        out.push_str(&format!(
            "error ({}): {}\n",
            v["code"].as_str().unwrap_or("?"),
            v["error"].as_str().unwrap_or("?")
        ));
        if v["probe"].is_object() {
            out.push_str(&format!(
                "probe of {}:\n",
                v["probe"]["slot"].as_str().unwrap_or("?")
            ));
            probe_lines(&v["probe"], &mut out);
        }
        if let Some(d) = v["drained"].as_array() {
            for o in d {
                out.push_str(&format!("{}\n", drained_line(o)));
            }
        }
        return out.trim_end().to_string();
    }
    if v["steps"].is_array() {
        out.push_str(&format!(
            "probe of {} passed in {}ms (protocol {})\n",
            v["slot"].as_str().unwrap_or("?"),
            v["ms"],
            v["protocol"].as_str().unwrap_or("?")
        ));
        probe_lines(v, &mut out);
        return out.trim_end().to_string();
    }
    if let Some(slots) = v["slots"].as_array() {
        out.push_str(&format!(
            "{:<10} {:<9} {:>6} {:>4} {:>8} {:>8}  {}\n",
            "SLOT", "STATE", "WEIGHT", "GEN", "STREAMS", "INFLIGHT", "UPSTREAM"
        ));
        for s in slots {
            out.push_str(&format!(
                "{:<10} {:<9} {:>6} {:>4} {:>8} {:>8}  {}\n",
                s["name"].as_str().unwrap_or(""),
                s["state"].as_str().unwrap_or(""),
                s["weight"].as_u64().unwrap_or(0),
                s["generation"].as_u64().unwrap_or(0),
                s.get("live_streams")
                    .map(|x| x.to_string())
                    .unwrap_or_default(),
                s.get("inflight").map(|x| x.to_string()).unwrap_or_default(),
                s["upstream"].as_str().unwrap_or(""),
            ));
        }
        if let Some(a) = v["active"].as_str() {
            out.push_str(&format!("active: {a}\n"));
        }
    }
    if let Some(changed) = v["changed"].as_array() {
        if changed.is_empty() {
            out.push_str("reloaded: nothing changed\n");
        }
        for c in changed {
            out.push_str(&format!("reloaded: {}\n", c.as_str().unwrap_or("?")));
        }
        for r in v["restart_required"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "not applied (needs a restart): {}\n",
                r.as_str().unwrap_or("?")
            ));
        }
        return out.trim_end().to_string();
    }
    if v["watch"].is_object() && v["drained"].is_array() {
        return deploy_summary(v);
    }
    if let Some(to) = v["to"].as_str() {
        let verb = if v["reason"].is_string() {
            "rolled back"
        } else {
            "flipped"
        };
        out.push_str(&format!(
            "{verb} {} -> {to}",
            v["from"].as_str().unwrap_or("(none)")
        ));
        match (&v["probe"]["ms"], v["reason"].as_str()) {
            (Value::Number(ms), _) => out.push_str(&format!(" (probe passed in {ms}ms)")),
            (_, _) if v.get("probe").is_some() => out.push_str(" (no probe)"),
            _ => {}
        }
        if let Some(r) = v["reason"].as_str() {
            out.push_str(&format!(": {r}"));
        }
        out.push('\n');
    }
    if let Some(w) = v["warning"].as_str() {
        out.push_str(&format!("warning: {w}\n"));
    }
    if let Some(w) = v["watch"].as_object() {
        out.push_str(&format!(
            "watch: {}{}\n",
            w.get("result").and_then(Value::as_str).unwrap_or("?"),
            w.get("probes")
                .map(|p| format!(" ({p} probes)"))
                .unwrap_or_default()
        ));
    }
    if let Some(d) = v["drained"].as_array() {
        for o in d {
            out.push_str(&format!("{}\n", drained_line(o)));
        }
    }
    if v.get("drained_after_ms").is_some() {
        out.push_str(&format!("{}\n", drained_line(v)));
    } else if let (Some(slot), Some(state)) = (v["slot"].as_str(), v["state"].as_str()) {
        out.push_str(&format!("{slot}: {state}"));
        if let Some(g) = v["generation"].as_u64() {
            out.push_str(&format!(" (generation {g})"));
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("ok\n");
    }
    out.trim_end().to_string()
}

/// The final reply of a successful `deploy`.
fn deploy_summary(v: &Value) -> String {
    let mut out = format!(
        "deployed {} -> {} in {:.1}s\n  probe  passed in {}ms\n",
        v["from"].as_str().unwrap_or("(none)"),
        v["to"].as_str().unwrap_or("?"),
        secs(&v["elapsed_ms"]),
        v["probe"]["ms"],
    );
    for o in v["drained"].as_array().into_iter().flatten() {
        out.push_str(&format!("  drain  {}\n", drained_line(o)));
    }
    out.push_str(&format!(
        "  watch  {} ({} probes)",
        v["watch"]["result"].as_str().unwrap_or("?"),
        v["watch"]["probes"]
    ));
    out
}

fn drained_line(o: &Value) -> String {
    let forced = o["forced"].as_u64().unwrap_or(0);
    format!(
        "{} drained after {:.3}s{}",
        o["slot"].as_str().unwrap_or("?"),
        o["drained_after_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        if forced > 0 {
            format!(" ({forced} streams ended at the deadline)")
        } else {
            String::new()
        }
    )
}
