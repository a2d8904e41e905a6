//! W4 (deploy time): the active slot holds M MCP sessions with open streams
//! (half legacy SSE, half Streamable HTTP); at t0 the deploy starts and the
//! sessions end at random times within T of it.
//!
//! - mcpflip: the deploy is `flip <other> --no-probe --drain --wait` on the
//!   control socket; it returns when the old slot is drained. Deploy time =
//!   reply − t0; detection latency = reply − the last session's close.
//! - nginx, HAProxy, Caddy, direct: nothing reports a drain, so the guide's
//!   script sleeps a fixed 120 s after the switch. The same sessions run
//!   through them (they relay them); their deploy time is the 120 s, and the
//!   time wasted is 120 s − the last close.

use std::time::Duration;

use crate::bench::Bench;
use crate::model::{Kind, W4Cell, W4};
use crate::stats;
use crate::streams;
use crate::targets::Slot;

/// The guide's fixed wait after switching nginx or Caddy.
pub const GUIDE_SLEEP: Duration = Duration::from_secs(120);

pub async fn run_w4(b: &mut Bench) -> anyhow::Result<W4> {
    let s = b.settings.clone();
    let mut w = W4 {
        sessions: s.w4_sessions,
        span_s: s.w4_span.as_secs_f64(),
        guide_sleep_s: GUIDE_SLEEP.as_secs_f64(),
        cells: b.kinds().into_iter().map(W4Cell::new).collect(),
    };
    b.restart_all().await?;
    let mut seed = 1u64;
    for round in b.rounds() {
        for i in b.order(round) {
            let kind = b.targets[i].kind;
            let runs = if kind == Kind::Mcpflip {
                s.w4_mcpflip_runs
            } else {
                1
            };
            for _ in 0..runs {
                seed += 1;
                let addr = b.targets[i].addr();
                let host = b.targets[i].host();
                let target = &mut b.targets[i];
                let to = target.active().other();
                let run = streams::deploy(
                    addr,
                    &host,
                    s.w4_sessions,
                    s.w4_span,
                    seed,
                    move || async move {
                        if kind != Kind::Mcpflip {
                            return Ok(false);
                        }
                        let reply = target
                            .ctl(&format!("flip {} --no-probe --drain --wait", to.name()))
                            .await?;
                        let forced: u64 = reply["drained"]
                            .as_array()
                            .map(|d| d.iter().filter_map(|x| x["forced"].as_u64()).sum())
                            .unwrap_or(0);
                        anyhow::ensure!(
                            forced == 0,
                            "the drain ended {forced} streams at its deadline"
                        );
                        Ok(true)
                    },
                )
                .await?;
                if kind == Kind::Mcpflip {
                    b.targets[i].set_active(to);
                }
                let cell = &mut w.cells[i];
                cell.last_close_s.push(run.last_close.as_secs_f64());
                if let Some(d) = run.deploy {
                    cell.deploy_s.push(d.as_secs_f64());
                }
                if let Some(d) = run.detection {
                    cell.detection_ms.push(d.as_secs_f64() * 1000.0);
                }
                cell.failed += run.failed;
                cell.cut += run.cut;
                let what = match (run.deploy, run.detection) {
                    (Some(d), Some(det)) => format!(
                        "deploy {:>6.3} s, detection {} ms",
                        d.as_secs_f64(),
                        stats::ms(det.as_secs_f64() * 1000.0)
                    ),
                    _ => format!(
                        "deploy {} s (fixed sleep), {:.1} s of it after the last session",
                        GUIDE_SLEEP.as_secs(),
                        (GUIDE_SLEEP - run.last_close).as_secs_f64()
                    ),
                };
                b.log(&format!(
                    "W4 {round} {:<8} {}/{} sessions, last closed at {:>6.3} s, {what}{}",
                    kind.label(),
                    run.opened,
                    s.w4_sessions,
                    run.last_close.as_secs_f64(),
                    if run.failed + run.cut > 0 {
                        format!("  FAILED: {} did not open, {} cut", run.failed, run.cut)
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    // Back to blue for whatever runs next.
    for t in &mut b.targets {
        if t.kind == Kind::Mcpflip && t.active() != Slot::Blue {
            t.ctl("flip blue --no-probe").await?;
            t.set_active(Slot::Blue);
        }
    }
    b.restart_all().await?;
    Ok(w)
}
