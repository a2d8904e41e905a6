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
    let reply = send(socket, command, |p| {
        if json {
            println!("{p}");
        } else if tty {
            eprint!("\r\x1b[K{}", progress_line(p));
            let _ = std::io::stderr().flush();
            printed_progress = true;
        } else {
            eprintln!("{}", progress_line(p));
        }
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

fn progress_line(p: &Value) -> String {
    let secs = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1000.0;
    format!(
        "draining {}: {} live streams, {} in flight, {:.1}s elapsed (deadline {:.0}s)",
        p["slot"].as_str().unwrap_or("?"),
        p["live_streams"],
        p["inflight"],
        secs(&p["elapsed_ms"]),
        secs(&p["deadline_ms"]),
    )
}

/// A readable rendering of a final reply.
pub fn human(v: &Value) -> String {
    if v["ok"] != Value::Bool(true) {
        return format!(
            "error ({}): {}",
            v["code"].as_str().unwrap_or("?"),
            v["error"].as_str().unwrap_or("?")
        );
    }
    let mut out = String::new();
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
                s["weight"],
                s["generation"],
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
    if let Some(to) = v["to"].as_str() {
        out.push_str(&format!(
            "flipped {} -> {to}\n",
            v["from"].as_str().unwrap_or("(none)")
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
