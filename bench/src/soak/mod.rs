//! `mcpflip-bench soak`: mixed load through the real `mcpflip` binary
//! (release code) for 30 minutes (`--minutes`, or `--smoke`: 2), with a
//! `deploy` every minute and an upstream SIGKILLed every three, then the
//! verdicts: no failed request beyond the killed upstreams' own, live counts
//! back to exactly 0, RSS within 2× of its start, file descriptors back to
//! theirs, every deploy passed.
//!
//! Layout: `plan` (when the operator acts), `clients` (the load), `operator`
//! (slot processes, deploys, kills), `gauges` (`/proc`, `/status`,
//! `/metrics`), `ledger` (whose failure is whose, the verdicts), `wire` (SSE
//! events, session tags), `report` (the markdown). This file wires them: the processes, the timeline,
//! and the [`Soak`] record the results file holds.
//!
//! It stops by itself: every client has timeouts, the operator's deploys end
//! within the load, and the wait for the counts is bounded.

mod clients;
mod gauges;
mod ledger;
mod operator;
pub mod plan;
pub mod report;
mod wire;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::bench::SoakOptions;
use crate::model::{FailureCount, Machine, Slot, Soak, SoakEnd};
use crate::sys;
use crate::targets::{self, Control};
use clients::{Ctx, Recorder, MIX};
use gauges::{Gauges, Sampler};
use operator::{Operator, Slots};

/// How long the clients get to stop after the load ends (their own
/// timeouts are 30 s).
const CLIENTS_STOP: Duration = Duration::from_secs(60);
/// How long the operator gets to finish a deploy after the load ends.
const OPERATOR_STOP: Duration = Duration::from_secs(120);
/// How long the counts get to reach 0 once the clients have stopped.
const ZERO_WAIT: Duration = Duration::from_secs(30);
/// The proxy's upstream pool closes idle connections after this (set in
/// its config), so that the descriptors at the end show what leaked.
const POOL_IDLE: Duration = Duration::from_secs(5);
/// How long after the counts reach 0 the end is read: the pool's idle
/// connections have closed (hyper's pool looks for expired ones every
/// `pool_idle_timeout`, so an idle one goes within twice that), and freed
/// memory has had a few seconds to go back (the issue's "a few seconds after
/// the streams close").
const SETTLE: Duration = Duration::from_secs(2 * POOL_IDLE.as_secs() + 2);
/// Failures kept as examples in the results.
const EXAMPLES: usize = 20;

/// Progress lines, stamped with the time since the soak started (after
/// the build).
#[derive(Clone, Copy)]
pub struct Log(pub Instant);

impl Log {
    pub fn say(&self, msg: &str) {
        println!("[{:>7.1}s] {msg}", self.0.elapsed().as_secs_f64());
    }
}

/// A port for a slot's upstream that the kernel never hands out by itself:
/// below the ephemeral range. A slot's process is restarted on its port
/// (the proxy's config names it); an ephemeral port could meanwhile have
/// become the local end of one of the soak's own hundreds of connections,
/// and the restart would fail.
fn quiet_port(taken: &[u16]) -> anyhow::Result<u16> {
    let (lo, _) = sys::ephemeral_ports();
    if lo < 4096 {
        return targets::free_port();
    }
    let range = lo.saturating_sub(12_000).max(2048)..lo;
    let mut rng = fastrand::Rng::new();
    for _ in 0..500 {
        let p = rng.u32(range.clone()) as u16;
        if !taken.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port below the ephemeral range ({range:?})")
}

fn config(dir: &Path, port: u16, admin: u16, slots: [u16; 2]) -> String {
    format!(
        r#"# written by mcpflip-bench soak
[listen]
addr = "127.0.0.1:{port}"

[admin]
addr = "127.0.0.1:{admin}"

[control]
socket = "{dir}/control.sock"
state_file = "{dir}/state.json"

# Every client stream ends within 30 s and every session pauses under 3 s,
# so drains end by themselves well before the deadline.
[drain]
deadline = "45s"
quiet = "3s"

[probe]
path = "/mcp"
transport = "streamable-http"
timeout = "5s"
expect_tools = ["get_document", "list_documents", "search_documents", "slow", "whoami"]
canary = {{ tool = "get_document", arguments = {{ id = "health" }}, expect = "ok" }}

# A deploy every minute: the watch must end within it.
[watch]
window = "10s"
interval = "2s"
max_error_ratio = 0.05
auto_rollback = true

[proxy]
pool_idle_timeout = "{pool}s"

# The default: the soak runs what operators run, the access log's writer included.
[log]
access_log = "stderr"

[[slot]]
name = "blue"
upstream = "http://127.0.0.1:{blue}"
weight = 100

[[slot]]
name = "green"
upstream = "http://127.0.0.1:{green}"
weight = 0
"#,
        dir = dir.display(),
        pool = POOL_IDLE.as_secs(),
        blue = slots[0],
        green = slots[1],
    )
}

/// The proxy process, stopped when dropped.
struct Proxy(Option<Child>);

impl Proxy {
    /// How it ended, when it has (its status and the last line of its log).
    fn exited(&mut self, dir: &Path) -> Option<String> {
        let status = self.0.as_mut()?.try_wait().ok()??;
        let log = targets::log_tail(dir, "mcpflip");
        let last = log.lines().last().unwrap_or("").trim().to_owned();
        Some(format!("mcpflip exited ({status}): {last}"))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            targets::stop_child(&mut c);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes the proxy's config and starts it, on fresh ports up to three
/// times (a port picked free may be taken before the proxy binds it).
/// Returns the process, its public and admin ports, and the config.
fn start_proxy(
    mcpflip: &Path,
    dir: &Path,
    slots: [u16; 2],
) -> anyhow::Result<(Child, u16, u16, String)> {
    let mut last = None;
    for _attempt in 0..3 {
        let port = targets::free_port()?;
        let admin = targets::free_port()?;
        if admin == port || slots.contains(&port) || slots.contains(&admin) {
            continue;
        }
        let text = config(dir, port, admin, slots);
        let path = dir.join("mcpflip.toml");
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        let mut cmd = Command::new(mcpflip);
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--ignore-state")
            .env("RUST_LOG", "warn");
        let mut c = targets::spawn(cmd, dir, "mcpflip")?;
        match targets::wait_listening(&mut c, port, dir, "mcpflip") {
            Ok(()) => return Ok((c, port, admin, text)),
            Err(e) => {
                targets::stop_child(&mut c);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no two free ports for the proxy")))
}

/// What the soak does; `mcpflip` is the binary (release code), `machine` says
/// where it ran (the results record it).
pub fn run(opts: &SoakOptions, mcpflip: &Path, machine: Machine, log: Log) -> anyhow::Result<Soak> {
    let minutes = opts.minutes();
    let load = Duration::from_secs_f64(minutes * 60.0);
    let steps = plan::steps(load);
    let dir = tempfile::Builder::new()
        .prefix("mcpflip-soak-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let blue = quiet_port(&[])?;
    let green = quiet_port(&[blue])?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut slots = Slots::new(mcpflip, dir.path(), [blue, green]);
        slots.start(Slot::Blue).await?;
        let (exe, d) = (mcpflip.to_path_buf(), dir.path().to_path_buf());
        let (child, port, admin, text) =
            tokio::task::spawn_blocking(move || start_proxy(&exe, &d, [blue, green])).await??;
        log.say(&format!(
            "soak: {minutes} min of load through mcpflip on 127.0.0.1:{port} (admin :{admin}), \
             blue upstream on :{blue}, green on :{green}; deploys planned: {}, kills: {}; temp dir {}",
            steps.len(),
            steps.iter().filter(|s| s.kill).count(),
            dir.path().display()
        ));
        let pid = child.id();
        let mut proxy = Proxy(Some(child));
        let socket = dir.path().join("control.sock");
        // Green has no process yet: the operator says so, as after a deploy.
        Control::connect(&socket).await?.ok("retire green").await?;
        let g = Gauges {
            pid,
            admin: ([127, 0, 0, 1], admin).into(),
        };
        g.status()
            .await
            .context("the admin listener does not answer")?;
        // The idle proxy, before any load: the start of RSS and descriptors.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ports = [
            (port, "proxy listener"),
            (admin, "admin listener"),
            (blue, "blue upstream"),
            (green, "green upstream"),
        ];
        let (rss0, fds0, fds_start) = (g.rss_kib(), g.fds(), g.fd_kinds(&ports));
        log.say(&format!(
            "idle proxy: {rss0} KiB resident, {fds0} descriptors open"
        ));

        let start = Instant::now();
        let rec = Arc::new(Recorder::new(start));
        let stop = CancellationToken::new();
        let sampler = Sampler::start(g.clone(), start);
        let ctx = Ctx {
            addr: ([127, 0, 0, 1], port).into(),
            host: format!("127.0.0.1:{port}"),
            rec: rec.clone(),
            stop: stop.clone(),
        };
        let clients = spawn_clients(&ctx);
        let op_stop = CancellationToken::new();
        let operator = tokio::spawn(
            Operator {
                slots,
                socket,
                gauges: g.clone(),
                start,
                log,
            }
            .run(steps.clone(), op_stop.clone()),
        );

        // The load runs; a line a minute says how it goes.
        let end = start + load;
        loop {
            let next = (Instant::now() + Duration::from_secs(60)).min(end);
            tokio::time::sleep_until(next.into()).await;
            let (failures, _) = rec.failures();
            let ok: u64 = rec.successes().iter().map(|(_, n)| n).sum();
            log.say(&format!(
                "load at {:.0} s: {ok} answered, {} failed; proxy {} KiB, {} descriptors",
                start.elapsed().as_secs_f64(),
                failures.len(),
                g.rss_kib(),
                g.fds()
            ));
            if Instant::now() >= end {
                break;
            }
        }
        stop.cancel();
        op_stop.cancel();
        let load_s = start.elapsed().as_secs_f64();
        let stopped = Instant::now();
        let stuck = join_all(clients, CLIENTS_STOP).await;
        let (done, mut slots) = match tokio::time::timeout(OPERATOR_STOP, operator).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => bail!("the operator task failed: {e}"),
            Err(_) => bail!("the operator had not finished 120 s after the load ended"),
        };
        log.say(&format!(
            "load stopped after {load_s:.0} s; {} clients stuck; waiting for the counts",
            stuck
        ));

        // The counts must come back to 0 by themselves.
        let zero_deadline = Instant::now() + ZERO_WAIT;
        let (mut zero_after_s, mut status) = (None, Vec::new());
        while Instant::now() < zero_deadline {
            if let Ok(s) = g.status().await {
                status = gauges::status_counts(&s);
                if !status.is_empty()
                    && status
                        .iter()
                        .all(|c| c.live_streams == 0 && c.inflight == 0)
                {
                    zero_after_s = Some(stopped.elapsed().as_secs_f64());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let names: Vec<String> = status.iter().map(|c| c.slot.clone()).collect();
        let (metrics, access_log_dropped) = match g.metrics().await {
            Ok(text) => (
                gauges::metric_counts(&text, &names),
                gauges::counter(&text, "mcpflip_access_log_dropped_lines_total"),
            ),
            Err(e) => {
                log.say(&format!("/metrics: {e:#}"));
                (Vec::new(), None)
            }
        };
        tokio::time::sleep(SETTLE).await;
        // The sampler first: its admin requests would count among the descriptors.
        let samples = sampler.stop().await;
        let (rss1, fds1, hwm) = (g.rss_kib(), g.fds(), g.peak_rss_kib());
        let fds_end = g.fd_kinds(&ports);
        let proxy_exit = proxy.exited(dir.path());
        log.say(&format!(
            "end: {rss1} KiB resident (peak {hwm}), {fds1} descriptors; counts {}",
            match zero_after_s {
                Some(t) => format!("at 0 {t:.1} s after the load stopped"),
                None => format!("not 0 after {:.0} s", ZERO_WAIT.as_secs()),
            }
        ));
        proxy.stop();
        slots.stop_all();
        let log_path = dir.path().join("mcpflip.log");
        let (log_error_count, log_errors) = log_errors(&log_path);
        let log_bytes = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        if let Some(e) = &done.error {
            log.say(e);
        }

        let (failures, overflow) = rec.failures();
        let t = ledger::tally(&rec.successes(), &failures, &done.kills, EXAMPLES);
        let mut failure_counts = t.failures;
        if overflow > 0 {
            failure_counts.push(FailureCount {
                exchange: crate::model::Exchange::Call,
                what: format!("failures beyond the {} kept one by one", failures.len()),
                expected: 0,
                unexpected: overflow,
            });
        }
        let mut kills = done.kills;
        for (k, n) in kills.iter_mut().zip(&t.per_kill) {
            k.failures = *n;
        }
        let rss_peak = hwm.max(samples.iter().map(|s| s.rss_kib).max().unwrap_or(0));
        let mut soak = Soak {
            date: String::new(),
            command: String::new(),
            file: String::new(),
            mcpflip: String::new(),
            machine,
            minutes,
            load_s,
            smoke: opts.smoke,
            mix: MIX.describe(),
            config: text,
            requests: t.requests,
            sse_events: rec.sse_events(),
            failures: failure_counts,
            examples: t.examples,
            kills,
            deploys: done.deploys,
            planned_deploys: steps.len(),
            planned_kills: steps.iter().filter(|s| s.kill).count(),
            end: SoakEnd {
                zero_after_s,
                waited_s: ZERO_WAIT.as_secs_f64(),
                settle_s: SETTLE.as_secs_f64(),
                status,
                metrics,
                proxy_exit,
                stuck_clients: stuck,
                fds_start,
                fds_end,
                log_errors,
                log_error_count,
                log_bytes,
                access_log_dropped,
            },
            rss_kib: gauges::span(rss0, rss1, std::iter::once(rss_peak)),
            fds: gauges::span(fds0, fds1, samples.iter().map(|s| s.fds)),
            samples: gauges::thin(&samples, 10.0),
            checks: Vec::new(),
        };
        soak.checks = ledger::checks(&soak, ledger::LIMITS);
        Ok(soak)
    });
    drop(rt);
    if opts.keep {
        let kept = dir.keep();
        println!("mcpflip-bench: kept {}", kept.display());
    }
    result
}

/// ERROR lines the proxy logged: how many, and the first few (colour codes
/// taken out). The file also holds the access log: it is read line by line.
fn log_errors(path: &Path) -> (u64, Vec<String>) {
    use std::io::BufRead as _;
    let mut n = 0;
    let mut first = Vec::new();
    let Ok(f) = std::fs::File::open(path) else {
        return (0, first);
    };
    for line in std::io::BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        let plain = strip_ansi(&line);
        if plain.split_whitespace().nth(1) == Some("ERROR") {
            n += 1;
            if first.len() < 10 {
                first.push(plain.chars().take(400).collect());
            }
        }
    }
    (n, first)
}

/// `line` without its ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Starts every client of [`MIX`].
fn spawn_clients(ctx: &Ctx) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut seed = 0u64;
    let mut next = || {
        seed += 1;
        seed
    };
    for _ in 0..MIX.sessions {
        tasks.push(tokio::spawn(clients::session(ctx.clone(), next())));
    }
    for _ in 0..MIX.legacy {
        tasks.push(tokio::spawn(clients::legacy(ctx.clone(), next())));
    }
    let interval = Duration::from_secs_f64(MIX.stateless_conns as f64 / MIX.stateless_rate);
    for i in 0..MIX.stateless_conns {
        let offset = interval.mul_f64(i as f64 / MIX.stateless_conns as f64);
        tasks.push(tokio::spawn(clients::stateless(
            ctx.clone(),
            interval,
            offset,
        )));
    }
    for _ in 0..MIX.tickers {
        tasks.push(tokio::spawn(clients::ticker(ctx.clone(), next())));
    }
    for _ in 0..MIX.vanishing {
        tasks.push(tokio::spawn(clients::vanishing(ctx.clone(), next())));
    }
    tasks
}

/// Waits for `tasks` up to `limit`; aborts and counts those still running.
async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>, limit: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + limit;
    let mut stuck = 0;
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
            stuck += 1;
        }
    }
    stuck
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_found_with_or_without_colours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("mcpflip.log");
        std::fs::write(
            &p,
            "\u{1b}[2m2026-11-29T23:56:01Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m mcpflip::controller: cannot write\n\
             2026-11-29T23:56:02Z  WARN mcpflip::drain: deadline\n\
             2026-11-29T23:56:03Z ERROR mcpflip::proxy: another\n",
        )
        .expect("write");
        let (n, lines) = log_errors(&p);
        assert_eq!(n, 2);
        assert_eq!(
            lines[0],
            "2026-11-29T23:56:01Z ERROR mcpflip::controller: cannot write"
        );
    }

    #[test]
    fn slot_ports_stay_out_of_the_kernels_way() {
        let (lo, _) = sys::ephemeral_ports();
        let a = quiet_port(&[]).expect("a port");
        let b = quiet_port(&[a]).expect("another");
        assert_ne!(a, b);
        if lo >= 4096 {
            assert!(u32::from(a) < lo && u32::from(b) < lo, "{a} {b} below {lo}");
        }
    }

    #[test]
    fn the_config_names_both_slots_and_the_soaks_timers() {
        let c = config(Path::new("/tmp/x"), 1, 2, [3, 4]);
        assert!(c.contains("upstream = \"http://127.0.0.1:3\""));
        assert!(c.contains("upstream = \"http://127.0.0.1:4\""));
        assert!(c.contains("quiet = \"3s\""));
        assert!(c.contains("pool_idle_timeout = \"5s\""));
        // Think times stay under the quiet period, streams under the deadline.
        assert!(clients::LONGEST_STREAM < Duration::from_secs(45));
        // The longest stream plus the quiet period fits in a deploy's room.
        assert!(clients::LONGEST_STREAM + Duration::from_secs(3) < plan::DEPLOY_ROOM);
    }
}
