//! W5 (affinity cost): W1 at c=64 with every request naming the same session,
//! then with requests cycling through 100,000 distinct sessions (all opened
//! through mcpflip, so each carries mcpflip's slot tag; the other targets get
//! the upstream's own ids). The ratio of the two, per round, shows what
//! affinity costs.
//!
//! With mcpflip among the targets, the same pair of runs also goes to a second
//! mcpflip with live session migration on (`[drain] migrate = "replay"`),
//! through which its own sessions are opened: it captures each session's
//! `initialize`, and every request of a session touches the session's idle
//! clock. Its ratio must stay at or above 0.95 (issue 16), and its RSS growth
//! over opening the sessions, divided by the sessions it captured, is the
//! memory a captured session costs.

use std::sync::Arc;
use std::time::Duration;

use crate::bench::{Bench, Round};
use crate::http;
use crate::load::{self, Load, Outcome};
use crate::model::{Kind, W5Capture, W5Cell, W5};
use crate::stats;
use crate::sys;
use crate::targets::Target;

/// How long opened sessions settle before the RSS is read (jemalloc's
/// background purge runs meanwhile, as for W2's streams).
const SETTLE: Duration = Duration::from_secs(1);

fn failures(o: &Outcome) -> String {
    if o.failed.total() == 0 {
        String::new()
    } else {
        format!("  FAILED: {}", o.failed.describe())
    }
}

pub async fn run_w5(b: &mut Bench) -> anyhow::Result<W5> {
    let s = b.settings.clone();
    b.restart_all().await?;
    // All sessions are opened through mcpflip (tagged ids), or directly when
    // mcpflip is not among the targets.
    let mcpflip = b.index(Kind::Mcpflip);
    let via = mcpflip.or_else(|| b.index(Kind::Direct)).unwrap_or(0);
    let rss_before = mcpflip.map(|i| sys::rss_kib(&b.targets[i].pids()));
    let started = std::time::Instant::now();
    let tagged = load::create_sessions(
        b.targets[via].addr(),
        &b.targets[via].host(),
        s.w5_sessions,
        s.c64,
    )
    .await?;
    let created_in = started.elapsed();
    b.log(&format!(
        "W5 opened {} sessions through {} in {:.1} s",
        tagged.len(),
        b.targets[via].kind.label(),
        created_in.as_secs_f64()
    ));
    let rss_growth_off = match (mcpflip, rss_before) {
        (Some(i), Some(before)) => {
            tokio::time::sleep(SETTLE).await;
            Some(sys::rss_kib(&b.targets[i].pids()).saturating_sub(before) as f64)
        }
        _ => None,
    };
    // The upstream's own ids: what a proxy without tags forwards.
    let inner: Vec<String> = tagged
        .iter()
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_owned())
        .collect();
    let tagged = Arc::new(tagged);
    let inner = Arc::new(inner);
    let mut capture = match mcpflip {
        Some(_) => Some(Capture::open(b, rss_growth_off).await?),
        None => None,
    };
    let mut w = W5 {
        sessions: s.w5_sessions,
        conns: s.c64,
        created_in_s: created_in.as_secs_f64(),
        cells: b.kinds().into_iter().map(W5Cell::new).collect(),
        capture: None,
    };
    for round in Bench::rounds_of(b.settings.w1_rounds) {
        for i in b.order(round) {
            let t = &b.targets[i];
            let all = if t.kind == Kind::Mcpflip {
                tagged.clone()
            } else {
                inner.clone()
            };
            pair(b, t, t.kind.label(), round, all, &mut w.cells[i]).await;
        }
        if let Some(c) = capture.as_mut() {
            pair(
                b,
                &c.target,
                "capture",
                round,
                c.sessions.clone(),
                &mut c.figures.cell,
            )
            .await;
        }
    }
    if let Some(mut c) = capture {
        c.target.stop();
        w.capture = Some(c.figures);
    }
    Ok(w)
}

/// The second mcpflip, with capture on, and the sessions opened through it.
struct Capture {
    target: Target,
    sessions: Arc<Vec<String>>,
    figures: W5Capture,
}

impl Capture {
    /// Starts it, opens W5's sessions through it and reads what they cost.
    async fn open(b: &Bench, rss_growth_off: Option<f64>) -> anyhow::Result<Capture> {
        let s = &b.settings;
        let mut target = Target::mcpflip_with_capture(&b.env, &b.upstreams)?;
        target.start().await?;
        let before = sys::rss_kib(&target.pids());
        let sessions =
            load::create_sessions(target.addr(), &target.host(), s.w5_sessions, s.c64).await?;
        tokio::time::sleep(SETTLE).await;
        let growth = sys::rss_kib(&target.pids()).saturating_sub(before) as f64;
        let status = target.ctl("status").await?;
        let migration = &status["migration"];
        let figures = W5Capture {
            how: "a second mcpflip with `[drain] migrate = \"replay\"`, its sessions opened through it"
                .to_owned(),
            cell: W5Cell::new(Kind::Mcpflip),
            captured: migration["captured_sessions"].as_u64().unwrap_or(0),
            captured_bytes: migration["captured_bytes"].as_u64().unwrap_or(0),
            rss_growth_kib: growth,
            rss_growth_off_kib: rss_growth_off,
        };
        b.log(&format!(
            "W5 capture: {} sessions captured ({} bytes of bodies); RSS +{} KiB = {} bytes per session{}",
            figures.captured,
            figures.captured_bytes,
            stats::int(growth),
            stats::int(figures.bytes_per_session()),
            figures
                .bytes_per_session_off(s.w5_sessions)
                .map_or(String::new(), |off| format!(
                    " (capture off: {} bytes per session opened)",
                    stats::int(off)
                )),
        ));
        if figures.captured != sessions.len() as u64 {
            anyhow::bail!(
                "W5 capture: {} sessions opened but {} captured",
                sessions.len(),
                figures.captured
            );
        }
        Ok(Capture {
            target,
            sessions: Arc::new(sessions),
            figures,
        })
    }
}

/// One round of `t`: the load naming one session, then all of `all`, back
/// to back; their figures and ratio into `cell`.
async fn pair(
    b: &Bench,
    t: &Target,
    label: &str,
    round: Round,
    all: Arc<Vec<String>>,
    cell: &mut W5Cell,
) {
    let s = &b.settings;
    let first = Arc::new(vec![all[0].clone()]);
    let mut rps = [0.0; 2];
    let mut cpu = [f64::NAN; 2];
    for (j, sessions) in [first, all].into_iter().enumerate() {
        let load = Load {
            addr: t.addr(),
            host: t.host(),
            path: "/mcp",
            body: http::CALL,
            sessions,
            conns: s.c64,
        };
        let o = load::run::<std::future::Ready<()>>(
            &load,
            None,
            s.w1_warmup,
            s.w5_measure,
            b.groups_of(t, std::process::id()),
            None,
        )
        .await;
        rps[j] = o.rps();
        if t.kind != Kind::Direct && o.ok > 0 {
            cpu[j] = o.cpu.seconds("proxy") * 1e6 / o.ok as f64;
        }
        cell.failed += o.failed.total();
        if j == 0 {
            cell.one.push(o.rps());
            cell.cpu_one_us.push(cpu[0]);
        } else {
            cell.many.push(o.rps());
            cell.cpu_many_us.push(cpu[1]);
        }
        b.log(&format!(
            "W5 {round} {:<8} {:>7} session{} {:>9} req/s  p99 {:>7} ms  proxy {:>6} µs CPU/request{}",
            label,
            stats::int(load.sessions.len() as f64),
            if load.sessions.len() == 1 { " " } else { "s" },
            stats::int(o.rps()),
            stats::ms(stats::quantile_ms(&o.hist, 0.99)),
            stats::two(cpu[j]),
            failures(&o),
        ));
    }
    cell.ratio.push(rps[1] / rps[0]);
    cell.cpu_ratio.push(cpu[1] / cpu[0]);
}
