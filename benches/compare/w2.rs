//! W2 (streams): N concurrent SSE `/ticker` streams, each at a fixed event
//! rate. Every run starts the proxy afresh, so its memory growth is the
//! streams' alone: RSS with the N streams open minus RSS before, over N. Relay
//! latency is measured per event at the client from the upstream's `ts_us`;
//! the proxy's CPU time over the window (per-thread `schedstat`), over the
//! events relayed in it, gives CPU per 1,000 events.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::bench::Bench;
use crate::stats::{self, Series};
use crate::streams;
use crate::targets::Kind;

#[derive(Default, Clone)]
pub struct W2Cell {
    /// KiB per stream.
    pub mem: Series,
    pub p50: Series,
    pub p99: Series,
    /// Proxy CPU milliseconds per 1,000 events.
    pub cpu_per_1k: Series,
    /// Seconds to open all streams.
    pub setup: Series,
    pub failed: usize,
    pub cut: usize,
    pub events: u64,
}

#[derive(Default)]
pub struct W2 {
    pub levels: Vec<usize>,
    pub cells: Vec<Vec<(Kind, W2Cell)>>,
    pub interval_ms: u64,
    pub pad: usize,
    pub window: Duration,
    /// Why the largest level is what it is.
    pub max_reason: String,
}

impl W2 {
    pub fn cell(&self, n: usize, k: Kind) -> Option<&W2Cell> {
        let i = self.levels.iter().position(|&x| x == n)?;
        self.cells[i]
            .iter()
            .find(|(kk, _)| *kk == k)
            .map(|(_, c)| c)
    }
}

/// Client source addresses: 127.0.0.2 .. so that the client side never runs
/// short of ports (each address has its own port range).
fn sources(n: usize, ports_per_source: usize) -> Vec<Ipv4Addr> {
    let k = n.div_ceil(ports_per_source.max(1)).max(1);
    (0..k)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8))
        .collect()
}

pub async fn run_w2(b: &mut Bench) -> anyhow::Result<W2> {
    let s = b.settings.clone();
    let levels = s.w2_levels.clone();
    let mut w = W2 {
        levels: levels.clone(),
        cells: levels
            .iter()
            .map(|_| {
                b.kinds()
                    .into_iter()
                    .map(|k| (k, W2Cell::default()))
                    .collect()
            })
            .collect(),
        interval_ms: s.w2_interval_ms,
        pad: s.w2_pad,
        window: s.w2_window,
        max_reason: s.w2_max_reason.clone(),
    };
    let (lo, hi) = crate::sys::ephemeral_ports();
    let per_source = ((hi - lo) as usize).saturating_sub(2000).max(1000);
    for round in b.rounds() {
        for (li, &n) in levels.iter().enumerate() {
            for i in b.order(round) {
                b.targets[i].restart().await?;
                let t = &b.targets[i];
                let addr = t.addr();
                let host = t.host();
                let kind = t.kind;
                let bref: &Bench = b;
                let run = streams::tickers(
                    addr,
                    &host,
                    n,
                    s.w2_interval_ms,
                    s.w2_pad,
                    &sources(n, per_source),
                    || bref.targets[i].pids(),
                    || bref.cpu_groups(i),
                    s.w2_window,
                )
                .await;
                let cell = &mut w.cells[li][i].1;
                let mem = run.rss_growth_kib.map(|g| g / n as f64);
                if let Some(m) = mem {
                    cell.mem.push(m);
                }
                let p50 = stats::quantile_ms(&run.hist, 0.5);
                let p99 = stats::quantile_ms(&run.hist, 0.99);
                cell.p50.push(p50);
                cell.p99.push(p99);
                let cpu_ms = run.cpu.seconds("proxy") * 1000.0;
                let per_1k = if kind == Kind::Direct || run.events == 0 {
                    f64::NAN
                } else {
                    cpu_ms / run.events as f64 * 1000.0
                };
                if per_1k.is_finite() {
                    cell.cpu_per_1k.push(per_1k);
                }
                cell.setup.push(run.setup.as_secs_f64());
                cell.failed += run.failed;
                cell.cut += run.cut;
                cell.events += run.events;
                b.log(&format!(
                    "W2 {round} N={n:<6} {:<8} open {:>6}/{n} in {:>5.1} s  {:>7} KiB/stream  relay p50 {:>6} ms p99 {:>6} ms  {:>6} ms CPU/1k events  ({} events in {:.1} s){}",
                    kind.label(),
                    run.opened,
                    run.setup.as_secs_f64(),
                    mem.map_or("—".into(), stats::two),
                    stats::ms(p50),
                    stats::ms(p99),
                    stats::two(per_1k),
                    stats::int(run.events as f64),
                    run.window.as_secs_f64(),
                    if run.failed + run.cut > 0 {
                        format!("  FAILED: {} did not open, {} cut", run.failed, run.cut)
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    for t in &mut b.targets {
        t.restart().await?;
    }
    Ok(w)
}
