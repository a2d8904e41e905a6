//! W5 (affinity cost): W1 at c=64 with every request naming the same session,
//! then with requests cycling through 100,000 distinct sessions (all opened
//! through mcpflip, so each carries mcpflip's slot tag; the other targets get
//! the upstream's own ids). The ratio of the two, per round, shows what
//! affinity costs.

use std::sync::Arc;

use crate::bench::Bench;
use crate::http;
use crate::load::{self, Load, Outcome};
use crate::model::{Kind, W5Cell, W5};
use crate::stats;

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
    let via = b
        .index(Kind::Mcpflip)
        .or_else(|| b.index(Kind::Direct))
        .unwrap_or(0);
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
    // The upstream's own ids: what a proxy without tags forwards.
    let inner: Vec<String> = tagged
        .iter()
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_owned())
        .collect();
    let tagged = Arc::new(tagged);
    let inner = Arc::new(inner);
    let mut w = W5 {
        sessions: s.w5_sessions,
        conns: s.c64,
        created_in_s: created_in.as_secs_f64(),
        cells: b.kinds().into_iter().map(W5Cell::new).collect(),
    };
    for round in b.rounds() {
        for i in b.order(round) {
            let t = &b.targets[i];
            let all = if t.kind == Kind::Mcpflip {
                tagged.clone()
            } else {
                inner.clone()
            };
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
                    b.cpu_groups(i),
                    None,
                )
                .await;
                rps[j] = o.rps();
                if t.kind != Kind::Direct && o.ok > 0 {
                    cpu[j] = o.cpu.seconds("proxy") * 1e6 / o.ok as f64;
                }
                let cell = &mut w.cells[i];
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
                    t.kind.label(),
                    stats::int(load.sessions.len() as f64),
                    if load.sessions.len() == 1 { " " } else { "s" },
                    stats::int(o.rps()),
                    stats::ms(stats::quantile_ms(&o.hist, 0.99)),
                    stats::two(cpu[j]),
                    failures(&o),
                ));
            }
            w.cells[i].ratio.push(rps[1] / rps[0]);
            w.cells[i].cpu_ratio.push(cpu[1] / cpu[0]);
        }
    }
    Ok(w)
}
