//! W1 (request/response): closed-loop `tools/call` POSTs over keep-alive
//! connections, Streamable HTTP with one session per target (opened through
//! it), at each concurrency; in the same rounds, the same request from wrk at
//! c=64 (the cross-check). Also the W1 variants that need nothing but a
//! target and a session: mcpflip with its access log on and off.

use std::sync::Arc;
use std::time::Duration;

use crate::bench::Bench;
use crate::http::{self, Conn};
use crate::load::{self, Load, Outcome};
use crate::model::{AccessLog, Kind, W1Cell, W1Level, W1Static, W1};
use crate::stats::{self, Series};
use crate::sys;
use crate::targets::{Target, Upstreams};
use crate::wrk;

/// Adds one run of this bench's load generator to `cell`.
pub fn add(cell: &mut W1Cell, o: &Outcome, workers: usize) {
    cell.rps.push(o.rps());
    cell.p50_ms.push(stats::quantile_ms(&o.hist, 0.50));
    cell.p99_ms.push(stats::quantile_ms(&o.hist, 0.99));
    cell.cpu_us.push(if o.ok > 0 && !o.cpu.groups.is_empty() {
        o.cpu.seconds("proxy") * 1e6 / o.ok as f64
    } else {
        f64::NAN
    });
    cell.proxy_busy
        .push(o.cpu.cores("proxy") / workers.max(1) as f64);
    cell.upstream_cores.push(o.cpu.cores("upstream"));
    cell.loadgen_cores.push(o.cpu.cores("loadgen"));
    cell.failed += o.failed.total();
}

/// Adds one wrk run (or a failed one: NaN, so the rounds stay aligned).
pub fn add_wrk(cell: &mut W1Cell, m: Option<&wrk::Measured>, workers: usize, seconds: u64) {
    let Some(m) = m else {
        for s in [
            &mut cell.rps,
            &mut cell.p50_ms,
            &mut cell.p99_ms,
            &mut cell.cpu_us,
            &mut cell.proxy_busy,
            &mut cell.upstream_cores,
            &mut cell.loadgen_cores,
        ] {
            s.push(f64::NAN);
        }
        return;
    };
    let r = &m.result;
    let rps = r.rps();
    cell.rps.push(rps);
    cell.p50_ms.push(r.p50_us as f64 / 1000.0);
    cell.p99_ms.push(r.p99_us as f64 / 1000.0);
    let answered = rps * seconds as f64;
    cell.cpu_us.push(if answered > 0.0 {
        m.cpu.seconds("proxy") * 1e6 / answered
    } else {
        f64::NAN
    });
    cell.proxy_busy
        .push(m.cpu.cores("proxy") / workers.max(1) as f64);
    cell.upstream_cores.push(m.cpu.cores("upstream"));
    cell.loadgen_cores.push(m.cpu.cores("loadgen"));
    cell.failed += r.failed();
}

/// Adds a kept run's steal (`least_stolen`) to `cell`.
pub fn add_steal(cell: &mut W1Cell, stolen: &Option<sys::Stolen>, remeasured: usize) {
    cell.steal_pct
        .push(stolen.map_or(f64::NAN, |s| s.share * 100.0));
    cell.remeasured += remeasured;
}

/// The line of a run measured again for the hypervisor's steal.
fn stolen_line(what: &str, t: &Target, rps: f64, share: f64) -> String {
    format!(
        "{what} {:<8} {:>9} req/s  the hypervisor stole {:.1} % of the run's CPU time: measured again",
        t.kind.label(),
        stats::int(rps),
        share * 100.0
    )
}

/// Opens one session through the target (`initialize` + `initialized`).
pub async fn session_for(t: &Target) -> anyhow::Result<String> {
    let mut conn = Conn::open(t.addr(), None).await?;
    Ok(http::initialize(&mut conn, &t.host()).await?)
}

/// One closed-loop run of W1's request against `t` with `conns` connections.
pub async fn closed_loop(
    b: &Bench,
    t: &Target,
    session: &Arc<Vec<String>>,
    conns: usize,
    measure: Duration,
) -> Outcome {
    let load = Load {
        addr: t.addr(),
        host: t.host(),
        path: "/mcp",
        body: http::CALL,
        sessions: session.clone(),
        conns,
    };
    load::run::<std::future::Ready<()>>(
        &load,
        None,
        b.settings.w1_warmup,
        measure,
        b.groups_of(t, std::process::id()),
        None,
    )
    .await
}

/// One wrk run of W1's request against `t` (`None`, logged, when wrk failed).
pub async fn wrk_loop(b: &Bench, t: &Target, session: &str, conns: usize) -> Option<wrk::Measured> {
    let bin = b.env.wrk.as_deref()?;
    let script = t.dir().join("wrk.lua");
    if let Err(e) = std::fs::write(&script, wrk::script(http::CALL, Some(session))) {
        b.log(&format!("   wrk: cannot write {}: {e}", script.display()));
        return None;
    }
    let pin = b
        .env
        .taskset
        .as_deref()
        .map(|ts| (ts, b.env.plan.loadgen.as_slice()));
    match wrk::run(
        bin,
        pin,
        &script,
        t.addr(),
        conns,
        b.env.plan.loadgen.len(),
        b.settings.wrk_seconds,
        b.groups_of(t, std::process::id()),
    )
    .await
    {
        Ok(m) => Some(m),
        Err(e) => {
            b.log(&format!("   wrk against {}: {e:#}", t.kind.label()));
            None
        }
    }
}

/// The progress line of a run.
pub fn line(
    what: &str,
    t: &Target,
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    busy: f64,
) -> String {
    format!(
        "{what} {:<8} {:>9} req/s  p50 {:>7} ms  p99 {:>7} ms  proxy {:>3.0}% busy, {:>6} µs CPU/request",
        t.kind.label(),
        stats::int(rps),
        stats::ms(p50),
        stats::ms(p99),
        100.0 * busy,
        if t.kind == Kind::Direct {
            "—".to_owned()
        } else {
            stats::two(cpu_us)
        },
    )
}

/// The last figure of a series (what a run just added).
fn last(s: &Series) -> f64 {
    s.0.last().copied().unwrap_or(f64::NAN)
}

/// The line of the run just added to `cell`.
pub fn cell_line(what: &str, t: &Target, cell: &W1Cell) -> String {
    line(
        what,
        t,
        last(&cell.rps),
        last(&cell.p50_ms),
        last(&cell.p99_ms),
        last(&cell.cpu_us),
        last(&cell.proxy_busy),
    )
}

fn failures(o: &Outcome) -> String {
    if o.failed.total() == 0 {
        String::new()
    } else {
        format!("  FAILED: {}", o.failed.describe())
    }
}

/// W1 with this bench's load generator and, at c=64, with wrk (when installed).
pub async fn run_w1(b: &mut Bench) -> anyhow::Result<(W1, Option<W1>)> {
    let s = b.settings.clone();
    let cells = |b: &Bench| b.kinds().into_iter().map(W1Cell::new).collect::<Vec<_>>();
    let mut w = W1 {
        generator: "mcpflip-bench".to_owned(),
        warmup_s: s.w1_warmup.as_secs_f64(),
        measure_s: s.w1_measure.as_secs_f64(),
        levels: s
            .w1_conc
            .iter()
            .map(|&conc| W1Level {
                conc,
                cells: cells(b),
            })
            .collect(),
    };
    let mut with_wrk = b.env.wrk.as_ref().map(|_| W1 {
        generator: b
            .env
            .wrk
            .as_deref()
            .and_then(|p| crate::sys::version_of(p.to_str()?, &["-v"]))
            .map_or_else(|| "wrk".to_owned(), |v| short_wrk_version(&v)),
        warmup_s: 0.0,
        measure_s: s.wrk_seconds as f64,
        levels: vec![W1Level {
            conc: s.c64,
            cells: cells(b),
        }],
    });
    b.restart_all().await?;
    let mut sessions = Vec::new();
    for t in &b.targets {
        sessions.push(Arc::new(vec![session_for(t).await?]));
    }
    for round in Bench::rounds_of(s.w1_rounds) {
        for (li, &c) in s.w1_conc.iter().enumerate() {
            for i in b.order(round) {
                let t = &b.targets[i];
                let what = format!("W1 {round} c={c:<3}");
                let kept = sys::least_stolen(
                    || closed_loop(b, t, &sessions[i], c, s.w1_measure),
                    |o, share| b.log(&stolen_line(&what, t, o.rps(), share)),
                )
                .await;
                let o = kept.value;
                let cell = &mut w.levels[li].cells[i];
                add(cell, &o, t.workers());
                add_steal(cell, &kept.stolen, kept.remeasured);
                b.log(&format!("{}{}", cell_line(&what, t, cell), failures(&o)));
            }
        }
        if let Some(ww) = &mut with_wrk {
            for i in b.order(round) {
                let t = &b.targets[i];
                let what = format!("W1 {round} c={:<3} wrk", s.c64);
                let kept = sys::least_stolen(
                    || wrk_loop(b, t, &sessions[i][0], s.c64),
                    |m, share| {
                        let rps = m.as_ref().map_or(f64::NAN, |m| m.result.rps());
                        b.log(&stolen_line(&what, t, rps, share));
                    },
                )
                .await;
                let m = kept.value;
                let cell = &mut ww.levels[0].cells[i];
                add_wrk(cell, m.as_ref(), t.workers(), s.wrk_seconds);
                add_steal(cell, &kept.stolen, kept.remeasured);
                let failed = m.as_ref().map_or(0, |m| m.result.failed());
                b.log(&format!(
                    "{}{}",
                    cell_line(&what, t, cell),
                    if failed > 0 {
                        format!("  FAILED: {failed}")
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    Ok((w, with_wrk))
}

/// W1 at c=64, both load generators, with every proxy in front of one static
/// upstream (an nginx process that answers every request with the demo's
/// answer to the call) instead of the MCP upstreams: the proxy as the bound
/// where the upstream and the load generator share a core (bench/PROFILE.md
/// §60). The run's own targets and upstreams stand aside, idle, and come
/// back after; direct has no proxy to bound, so it is left out. `None`,
/// logged, when nginx is not installed.
pub async fn run_static(b: &mut Bench) -> anyhow::Result<Option<W1Static>> {
    let Some(nginx) = sys::find_binary("nginx") else {
        b.log("W1 behind a static upstream: skipped, nginx is not installed (bench/setup.sh)");
        return Ok(None);
    };
    // `nginx version: nginx/1.22.1` → `nginx 1.22.1`.
    let version = nginx
        .to_str()
        .and_then(|p| sys::version_of(p, &["-v"]))
        .map(|v| v.trim_start_matches("nginx version: ").replace('/', " "))
        .unwrap_or_else(|| "nginx".to_owned());
    let upstream = format!(
        "{version}, one process, `return 200` with the demo's 91-byte answer to the call and a fixed `Mcp-Session-Id`"
    );
    let statics = Upstreams::start_static(&b.env, &nginx)?;
    let targets = b
        .kinds()
        .into_iter()
        .filter(|&k| k != Kind::Direct)
        .map(|k| Target::in_dir(k, &format!("static-{}", k.key()), &b.env, &statics))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let own_targets = std::mem::replace(&mut b.targets, targets);
    let own_upstreams = std::mem::replace(&mut b.upstreams, statics);
    let settings = b.settings.clone();
    b.settings.w1_conc = vec![settings.c64];
    b.log(&format!("W1 behind a static upstream: {upstream}"));
    let measured = run_w1(b).await;
    b.settings = settings;
    for t in &mut b.targets {
        t.stop();
    }
    b.targets = own_targets;
    let mut statics = std::mem::replace(&mut b.upstreams, own_upstreams);
    statics.stop();
    let (ours, wrk) = measured?;
    Ok(Some(W1Static {
        upstream,
        ours,
        wrk,
    }))
}

/// `wrk 4.1.0` from wrk's banner (`wrk debian/4.1.0-3+b2 [epoll] Copyright …`).
pub fn short_wrk_version(banner: &str) -> String {
    banner
        .split(" Copyright")
        .next()
        .unwrap_or(banner)
        .trim()
        .to_owned()
}

/// mcpflip at c=64 with its access log off and on: two processes with the
/// same config, run back to back in each round.
pub async fn run_access_log(b: &mut Bench) -> anyhow::Result<Option<AccessLog>> {
    let Some(i) = b.index(Kind::Mcpflip) else {
        return Ok(None);
    };
    let s = b.settings.clone();
    let mut on = Target::mcpflip_with_access_log(&b.env, &b.upstreams)?;
    on.start().await?;
    let off_session = Arc::new(vec![session_for(&b.targets[i]).await?]);
    let on_session = Arc::new(vec![session_for(&on).await?]);
    let size = |t: &Target| std::fs::metadata(t.log_path()).map_or(0, |m| m.len());
    let log_before = size(&on);
    let mut a = AccessLog {
        conc: s.c64,
        measure_s: s.w1_measure.as_secs_f64(),
        how: "`[log] access_log = \"stderr\"`, mcpflip's default; the log's own thread formats and writes it"
            .to_owned(),
        off_rps: Series::default(),
        on_rps: Series::default(),
        off_cpu_us: Series::default(),
        on_cpu_us: Series::default(),
        log_bytes: 0,
        failed: 0,
    };
    for round in Bench::rounds_of(s.w1_rounds) {
        for (t, session, log) in [
            (&b.targets[i], &off_session, false),
            (&on, &on_session, true),
        ] {
            let o = closed_loop(b, t, session, s.c64, s.w1_measure).await;
            let mut cell = W1Cell::new(Kind::Mcpflip);
            add(&mut cell, &o, t.workers());
            let (rps, cpu) = if log {
                (&mut a.on_rps, &mut a.on_cpu_us)
            } else {
                (&mut a.off_rps, &mut a.off_cpu_us)
            };
            rps.push(last(&cell.rps));
            cpu.push(last(&cell.cpu_us));
            a.failed += o.failed.total();
            b.log(&format!(
                "{}{}",
                cell_line(
                    &format!("access log {round} {}", if log { "on " } else { "off" }),
                    t,
                    &cell
                ),
                failures(&o)
            ));
        }
    }
    a.log_bytes = size(&on).saturating_sub(log_before);
    on.stop();
    Ok(Some(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_banner_is_cut_to_its_version() {
        assert_eq!(
            short_wrk_version("wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"),
            "wrk debian/4.1.0-3+b2 [epoll]"
        );
    }

    #[test]
    fn a_failed_wrk_run_keeps_the_rounds_aligned() {
        let mut cell = W1Cell::new(Kind::Nginx);
        add_wrk(&mut cell, None, 1, 2);
        assert_eq!(cell.rps.0.len(), 1);
        assert!(cell.rps.0[0].is_nan());
        assert_eq!(cell.cpu_us.0.len(), 1);
    }
}
