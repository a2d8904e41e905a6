//! W1 (request/response) and W5 (affinity cost): closed-loop `tools/call`
//! POSTs over keep-alive connections, Streamable HTTP with sessions.
//!
//! W1: one session per target (opened through it), at each concurrency.
//! W5: the same at c=64, with every request naming the same session, then
//! with requests cycling through 100,000 distinct sessions (all opened through
//! mcpflip, so each carries mcpflip's slot tag; the other targets get the
//! upstream's own ids). The ratio of the two shows what affinity costs.

use std::sync::Arc;
use std::time::Duration;

use crate::bench::Bench;
use crate::http::{self, Conn};
use crate::load::{self, Load, Outcome};
use crate::stats::{self, Series};
use crate::targets::Kind;

/// W1 figures of one target at one concurrency.
#[derive(Default, Clone)]
pub struct W1Cell {
    pub rps: Series,
    pub p50: Series,
    pub p99: Series,
    /// The proxy's CPU time per request, µs (robust to a saturated CPU 0).
    pub cpu_us: Series,
    /// Share of its cores the proxy used (1.0 = all of them busy).
    pub proxy_busy: Series,
    /// CPU 0's load: upstream + load generator, in cores.
    pub upstream_cores: Series,
    pub loadgen_cores: Series,
    pub failed: u64,
}

impl W1Cell {
    fn add(&mut self, o: &Outcome, proxy_cores: usize) {
        self.rps.push(o.rps());
        self.p50.push(stats::quantile_ms(&o.hist, 0.50));
        self.p99.push(stats::quantile_ms(&o.hist, 0.99));
        if o.ok > 0 && !o.cpu.groups.is_empty() {
            self.cpu_us.push(o.cpu.seconds("proxy") * 1e6 / o.ok as f64);
        }
        self.proxy_busy
            .push(o.cpu.cores("proxy") / proxy_cores.max(1) as f64);
        self.upstream_cores.push(o.cpu.cores("upstream"));
        self.loadgen_cores.push(o.cpu.cores("loadgen"));
        self.failed += o.failed.total();
    }
}

/// W1 results: per concurrency, per target.
#[derive(Default)]
pub struct W1 {
    pub conc: Vec<usize>,
    pub cells: Vec<Vec<(Kind, W1Cell)>>,
    pub warmup: Duration,
    pub measure: Duration,
}

impl W1 {
    pub fn cell(&self, c: usize, k: Kind) -> Option<&W1Cell> {
        let i = self.conc.iter().position(|&x| x == c)?;
        self.cells[i]
            .iter()
            .find(|(kk, _)| *kk == k)
            .map(|(_, c)| c)
    }
}

/// Opens one session through the target (`initialize` + `initialized`).
async fn session_for(b: &Bench, i: usize) -> anyhow::Result<String> {
    let t = &b.targets[i];
    let mut conn = Conn::open(t.addr(), None).await?;
    Ok(http::initialize(&mut conn, &t.host()).await?)
}

pub async fn run_w1(b: &mut Bench) -> anyhow::Result<W1> {
    let s = b.settings.clone();
    let mut w = W1 {
        conc: s.w1_conc.clone(),
        cells: s
            .w1_conc
            .iter()
            .map(|_| {
                b.kinds()
                    .into_iter()
                    .map(|k| (k, W1Cell::default()))
                    .collect()
            })
            .collect(),
        warmup: s.w1_warmup,
        measure: s.w1_measure,
    };
    b.restart_all().await?;
    let mut sessions = Vec::new();
    for i in 0..b.targets.len() {
        sessions.push(Arc::new(vec![session_for(b, i).await?]));
    }
    for round in Bench::rounds_of(s.w1_rounds) {
        for (ci, &c) in s.w1_conc.iter().enumerate() {
            for i in b.order(round) {
                let t = &b.targets[i];
                let load = Load {
                    addr: t.addr(),
                    host: t.host(),
                    path: "/mcp",
                    body: http::CALL,
                    sessions: sessions[i].clone(),
                    conns: c,
                };
                let o = load::run::<std::future::Ready<()>>(
                    &load,
                    None,
                    s.w1_warmup,
                    s.w1_measure,
                    b.cpu_groups(i),
                    None,
                )
                .await;
                b.log(&format!(
                    "W1 {round} c={c:<3} {:<8} {:>9} req/s  p50 {:>7} ms  p99 {:>7} ms  proxy {:>3.0}% busy, {:>6} µs CPU/request{}",
                    t.kind.label(),
                    stats::int(o.rps()),
                    stats::ms(stats::quantile_ms(&o.hist, 0.5)),
                    stats::ms(stats::quantile_ms(&o.hist, 0.99)),
                    100.0 * o.cpu.cores("proxy") / b.env.plan.workers() as f64,
                    if t.kind == Kind::Direct {
                        "—".to_owned()
                    } else {
                        stats::two(o.cpu.seconds("proxy") * 1e6 / o.ok.max(1) as f64)
                    },
                    failures(&o),
                ));
                w.cells[ci][i].1.add(&o, b.env.plan.workers());
            }
        }
    }
    Ok(w)
}

fn failures(o: &Outcome) -> String {
    if o.failed.total() == 0 {
        String::new()
    } else {
        format!("  FAILED: {}", o.failed.describe())
    }
}

/// W5 figures of one target.
#[derive(Default, Clone)]
pub struct W5Cell {
    pub one: Series,
    pub many: Series,
    /// Per round: many / one (paired runs, back to back).
    pub ratio: Series,
    /// The proxy's CPU µs per request with one session and with many.
    pub cpu_one: Series,
    pub cpu_many: Series,
    /// Per round: CPU per request with many / with one.
    pub cpu_ratio: Series,
    pub failed: u64,
}

#[derive(Default)]
pub struct W5 {
    pub sessions: usize,
    pub conns: usize,
    pub created_in: Duration,
    pub cells: Vec<(Kind, W5Cell)>,
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
        64,
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
        conns: 64,
        created_in,
        cells: b
            .kinds()
            .into_iter()
            .map(|k| (k, W5Cell::default()))
            .collect(),
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
                    conns: 64,
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
                let cell = &mut w.cells[i].1;
                cell.failed += o.failed.total();
                if j == 0 {
                    cell.one.push(o.rps());
                    cell.cpu_one.push(cpu[0]);
                } else {
                    cell.many.push(o.rps());
                    cell.cpu_many.push(cpu[1]);
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
            w.cells[i].1.ratio.push(rps[1] / rps[0]);
            w.cells[i].1.cpu_ratio.push(cpu[1] / cpu[0]);
        }
    }
    Ok(w)
}
