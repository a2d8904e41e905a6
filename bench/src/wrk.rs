//! wrk, the second load generator: W1's requests from a program nobody here
//! wrote, so that a ratio cannot come from a quirk of this bench's own client.
//! A Lua script sends the same `tools/call` with the target's session and, at
//! the end, prints one line of JSON (requests, duration, errors, percentiles)
//! that [`parse`] reads; wrk's human-readable output is not parsed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::process::Command;

use crate::model;
use crate::sys::{CpuMeter, CpuUse};

/// The prefix of the line the script's `done` prints.
const TAG: &str = "mcpflip-bench-wrk ";

/// A Lua long string that holds `s` verbatim (a level no `]=…=]` in `s` closes).
fn lua_string(s: &str) -> String {
    let mut level = 0;
    loop {
        let eq = "=".repeat(level);
        if !s.contains(&format!("]{eq}]")) {
            return format!("[{eq}[{s}]{eq}]");
        }
        level += 1;
    }
}

/// The script: POST `body` with `session` (when given), report at the end.
pub fn script(body: &[u8], session: Option<&str>) -> String {
    let body = String::from_utf8_lossy(body);
    let mut s = String::new();
    s.push_str("-- written by mcpflip-bench: W1's request, and one JSON line at the end\n");
    s.push_str("wrk.method = \"POST\"\n");
    s.push_str(&format!("wrk.body = {}\n", lua_string(&body)));
    s.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    s.push_str("wrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n");
    if let Some(id) = session {
        s.push_str(&format!(
            "wrk.headers[\"Mcp-Session-Id\"] = {}\n",
            lua_string(id)
        ));
        s.push_str("wrk.headers[\"MCP-Protocol-Version\"] = \"2025-06-18\"\n");
    }
    s.push_str(&format!(
        r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{TAG}{{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#
    ));
    s
}

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WrkResult {
    /// Responses read (including non-2xx ones, which `status` counts).
    pub requests: u64,
    pub duration_us: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Responses with a status of 400 or more.
    pub status: u64,
    pub timeout: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl WrkResult {
    /// Answered with a 2xx/3xx.
    pub fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.status)
    }

    pub fn failed(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }

    pub fn rps(&self) -> f64 {
        self.ok() as f64 / (self.duration_us as f64 / 1e6).max(1e-9)
    }
}

/// Finds the script's line in wrk's output.
pub fn parse(stdout: &str) -> anyhow::Result<WrkResult> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(TAG))
        .context("wrk printed no result line (did the script load?)")?;
    serde_json::from_str(line).with_context(|| format!("wrk's result line {line:?}"))
}

/// A wrk run and the CPU use over it.
pub struct Measured {
    pub result: WrkResult,
    pub cpu: CpuUse,
}

/// Runs wrk against `addr` for `seconds` with `conns` connections and
/// `threads` threads, pinned with `pin` (a `taskset -c CPUS` prefix, when
/// given). CPU use of `groups` (plus wrk itself as `loadgen`) is read over
/// wrk's run.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    wrk: &Path,
    pin: Option<(&Path, &[usize])>,
    script_path: &Path,
    addr: SocketAddr,
    conns: usize,
    threads: usize,
    seconds: u64,
    groups: Vec<(&'static str, Vec<u32>)>,
) -> anyhow::Result<Measured> {
    let mut cmd = match pin {
        Some((taskset, cpus)) => {
            let mut c = Command::new(taskset);
            c.arg("-c").arg(model::list(cpus)).arg(wrk);
            c
        }
        None => Command::new(wrk),
    };
    cmd.arg("-t")
        .arg(threads.clamp(1, conns.max(1)).to_string())
        .arg("-c")
        .arg(conns.to_string())
        .arg("-d")
        .arg(format!("{seconds}s"))
        .args(["--timeout", "10s", "-s"])
        .arg(script_path)
        .arg(format!("http://{addr}/mcp"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().context("cannot start wrk")?;
    let mut groups = groups;
    if let Some(pid) = child.id() {
        groups.retain(|g| g.0 != "loadgen");
        groups.push(("loadgen", vec![pid]));
    }
    // The window is wrk's run: it is over before wrk prints and exits (and
    // its /proc entry is gone once it is reaped).
    let meter = CpuMeter::start(groups);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = meter.stop();
    let out = tokio::time::timeout(Duration::from_secs(seconds + 30), child.wait_with_output())
        .await
        .context("wrk did not finish")?
        .context("wrk failed")?;
    if !out.status.success() {
        bail!(
            "wrk exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let result = parse(&String::from_utf8_lossy(&out.stdout))?;
    Ok(Measured { result, cpu })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_line_is_found_among_wrks_own_output() {
        let out = "Running 2s test @ http://127.0.0.1:1/mcp\n  1 threads and 64 connections\n\
                   mcpflip-bench-wrk {\"requests\":1000,\"duration_us\":2000000,\"connect\":0,\"read\":1,\
                   \"write\":0,\"status\":10,\"timeout\":2,\"p50_us\":800,\"p99_us\":2100,\"max_us\":9000}\n\
                   Requests/sec:    500.00\n";
        let r = parse(out).expect("parses");
        assert_eq!(r.ok(), 990);
        assert_eq!(r.failed(), 13);
        assert_eq!(r.rps(), 495.0);
        assert_eq!((r.p50_us, r.p99_us), (800, 2100));
    }

    #[test]
    fn no_result_line_is_an_error() {
        assert!(parse("Running 2s test\nunable to connect\n").is_err());
    }

    #[test]
    fn the_script_holds_the_body_and_session_verbatim() {
        let s = script(br#"{"a":"]]"}"#, Some("blue.1.abc"));
        // `]]` in the body needs a long string of level 1.
        assert!(s.contains(r#"wrk.body = [=[{"a":"]]"}]=]"#), "{s}");
        assert!(
            s.contains(r#"wrk.headers["Mcp-Session-Id"] = [[blue.1.abc]]"#),
            "{s}"
        );
        assert!(s.contains("latency:percentile(99)"));
        let none = script(b"{}", None);
        assert!(!none.contains("Mcp-Session-Id"));
    }
}
