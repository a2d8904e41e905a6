//! W3 (flip under load): an open-loop load of session-less `tools/call
//! whoami` POSTs (the upstream's `/stateless` endpoint, so no request is
//! pinned and every one follows the flips) while the active slot changes
//! 1,000 times, one flip every few milliseconds, each by the proxy's own
//! mechanism: mcpflip `weights` over its control socket, nginx config rewrite
//! and `nginx -s reload`, HAProxy `set server ... weight` over its runtime API,
//! Caddy `POST /load` on its admin API. Direct runs the same load without
//! flips, as the baseline.
//!
//! Counted: failed requests (by cause), latency from each request's scheduled
//! send time (coordinated-omission corrected), answers from blue and from
//! green (proof that the flips took effect), and the time the flips took.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use crate::bench::Bench;
use crate::http;
use crate::load::{self, Load};
use crate::model::{Kind, W3Cell, W3};
use crate::stats;
use crate::targets::Slot;

pub async fn run_w3(b: &mut Bench) -> anyhow::Result<W3> {
    let s = b.settings.clone();
    let mut w = W3 {
        flips: s.w3_flips,
        every_ms: s.w3_every.as_millis() as u64,
        rate: s.w3_rate,
        conns: s.w3_conns,
        cells: b.kinds().into_iter().map(W3Cell::new).collect(),
    };
    b.restart_all().await?;
    for round in b.rounds() {
        for i in b.order(round) {
            let kind = b.targets[i].kind;
            let load = Load {
                addr: b.targets[i].addr(),
                host: b.targets[i].host(),
                path: "/stateless",
                body: http::WHOAMI,
                sessions: Default::default(),
                conns: s.w3_conns,
            };
            let groups = b.cpu_groups(i);
            let flip_errors = RefCell::new((0u64, None::<String>));
            let flip_time = Cell::new(Duration::ZERO);
            let target = &mut b.targets[i];
            let flips = async {
                let started = Instant::now();
                if kind == Kind::Direct {
                    // Same window as the slowest paced run, without flips.
                    tokio::time::sleep(s.w3_every * s.w3_flips as u32).await;
                } else {
                    let mut next = Instant::now();
                    let mut to = Slot::Green;
                    for _ in 0..s.w3_flips {
                        tokio::time::sleep_until(next.into()).await;
                        next += s.w3_every;
                        if let Err(e) = target.flip(to).await {
                            let mut fe = flip_errors.borrow_mut();
                            fe.0 += 1;
                            fe.1.get_or_insert_with(|| format!("{e:#}"));
                        }
                        to = to.other();
                    }
                }
                flip_time.set(started.elapsed());
                // Let requests sent around the last flip finish inside the window.
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let o = load::run(
                &load,
                Some(s.w3_rate),
                s.w3_warmup,
                Duration::ZERO,
                groups,
                Some(flips),
            )
            .await;
            let (nerr, first_err) = flip_errors.into_inner();
            let flip_time = flip_time.into_inner();
            let crashed = b.revive(i).await?;
            b.targets[i].reset().await?;
            let cell = &mut w.cells[i];
            cell.failed.push(o.failed.total() as f64);
            cell.p50_ms.push(stats::quantile_ms(&o.hist, 0.5));
            cell.p99_ms.push(stats::quantile_ms(&o.hist, 0.99));
            cell.max_ms.push(stats::quantile_ms(&o.hist, 1.0));
            cell.flip_time_s.push(if kind == Kind::Direct {
                f64::NAN
            } else {
                flip_time.as_secs_f64()
            });
            cell.by_slot[0] += o.by_slot[0];
            cell.by_slot[1] += o.by_slot[1];
            cell.requests += o.ok + o.failed.total();
            cell.reconnects += o.reconnects;
            cell.failures.add(&o.failed);
            cell.flip_errors += nerr;
            if let Some(c) = crashed {
                let done = (s.w3_flips as u64).saturating_sub(nerr);
                cell.crashes
                    .push(format!("{c}; after about {done} successful flips"));
            }
            if cell.flip_error.is_none() {
                cell.flip_error = first_err;
            }
            b.log(&format!(
                "W3 {round} {:<8} {} flips in {:>5.2} s  {:>6} requests, {:>4} failed  p50 {:>6} ms p99 {:>6} ms max {:>7} ms  blue/green answers {}/{}  reconnects {}{}",
                kind.label(),
                if kind == Kind::Direct { 0 } else { s.w3_flips },
                flip_time.as_secs_f64(),
                o.ok + o.failed.total(),
                o.failed.total(),
                stats::ms(stats::quantile_ms(&o.hist, 0.5)),
                stats::ms(stats::quantile_ms(&o.hist, 0.99)),
                stats::ms(stats::quantile_ms(&o.hist, 1.0)),
                o.by_slot[0],
                o.by_slot[1],
                o.reconnects,
                if nerr > 0 { format!("  FLIP ERRORS: {nerr}") } else { String::new() },
            ));
            if o.failed.total() > 0 {
                b.log(&format!("   failures: {}", o.failed.describe()));
            }
        }
    }
    b.restart_all().await?;
    Ok(w)
}
