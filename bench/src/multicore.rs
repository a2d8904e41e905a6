//! The multi-core section: W1 at c=64 with 1, 2, … workers for every proxy
//! that has a worker count (mcpflip `[proxy] workers`, nginx
//! `worker_processes`, HAProxy `nbthread`), with both load generators. A
//! worker count the plan's proxy cores can hold gets that many of them; a
//! larger one runs unpinned on every CPU (on 2 cores, the only way to give a
//! proxy 2 workers). The worker count and cores of W1 itself are not measured
//! twice: that level is W1's c=64 figures.

use std::sync::Arc;

use crate::bench::Bench;
use crate::model::{Kind, MultiCore, MultiCoreLevel, W1Cell, W1};
use crate::w1;

/// The cells of the targets with a worker count, from a W1 run at `conc`.
fn from(w: Option<&W1>, conc: usize) -> Option<Vec<W1Cell>> {
    let level = w?.levels.iter().find(|l| l.conc == conc)?;
    Some(
        level
            .cells
            .iter()
            .filter(|c| c.target.has_workers())
            .cloned()
            .collect(),
    )
}

pub async fn run_multicore(
    b: &mut Bench,
    w1: Option<&W1>,
    w1_wrk: Option<&W1>,
) -> anyhow::Result<Option<MultiCore>> {
    let s = b.settings.clone();
    let which: Vec<usize> = (0..b.targets.len())
        .filter(|&i| b.targets[i].kind.has_workers())
        .collect();
    if !which.iter().any(|&i| b.targets[i].kind == Kind::Mcpflip) {
        return Ok(None);
    }
    let mut mc = MultiCore {
        conc: s.c64,
        measure_s: s.w1_measure.as_secs_f64(),
        levels: Vec::new(),
    };
    let plan = b.plan().clone();
    for &workers in &s.mc_workers {
        let (cpus, dedicated) = plan.for_workers(workers, &b.env.all_cpus);
        // W1's own setup: reuse its figures (with wrk's, when wrk ran).
        if dedicated && workers == plan.workers() {
            let ours = from(w1, s.c64);
            let wrk = match (&b.env.wrk, from(w1_wrk, s.c64)) {
                (None, _) => Some(Vec::new()),
                (Some(_), w) => w,
            };
            if let (Some(ours), Some(wrk)) = (ours, wrk) {
                mc.levels.push(MultiCoreLevel {
                    workers,
                    proxy_cpus: cpus,
                    dedicated,
                    from_w1: true,
                    ours,
                    wrk,
                });
                continue;
            }
        }
        b.log(&format!(
            "multi-core: {workers} worker{} on CPU {}{}",
            if workers == 1 { "" } else { "s" },
            crate::model::list(&cpus),
            if dedicated { "" } else { " (unpinned)" }
        ));
        let mut sessions = Vec::new();
        for &i in &which {
            b.targets[i].set_workers(workers, cpus.clone());
            b.targets[i].restart().await?;
            sessions.push(Arc::new(vec![w1::session_for(&b.targets[i]).await?]));
        }
        let mut level = MultiCoreLevel {
            workers,
            proxy_cpus: cpus.clone(),
            dedicated,
            from_w1: false,
            ours: which
                .iter()
                .map(|&i| W1Cell::new(b.targets[i].kind))
                .collect(),
            wrk: if b.env.wrk.is_some() {
                which
                    .iter()
                    .map(|&i| W1Cell::new(b.targets[i].kind))
                    .collect()
            } else {
                Vec::new()
            },
        };
        for round in Bench::rounds_of(b.settings.w1_rounds) {
            for (j, &i) in which.iter().enumerate() {
                let t = &b.targets[i];
                let o = w1::closed_loop(b, t, &sessions[j], s.c64, s.w1_measure).await;
                w1::add(&mut level.ours[j], &o, workers);
                b.log(&w1::cell_line(
                    &format!("multi-core {round} w={workers}"),
                    t,
                    &level.ours[j],
                ));
                if let Some(cell) = level.wrk.get_mut(j) {
                    let m = w1::wrk_loop(b, t, &sessions[j][0], s.c64).await;
                    w1::add_wrk(cell, m.as_ref(), workers, s.wrk_seconds);
                    b.log(&w1::cell_line(
                        &format!("multi-core {round} w={workers} wrk"),
                        t,
                        cell,
                    ));
                }
            }
        }
        mc.levels.push(level);
    }
    // Back to the plan's workers for whatever runs next.
    for &i in &which {
        b.targets[i].set_workers(plan.workers(), plan.proxy.clone());
        b.targets[i].restart().await?;
    }
    Ok(Some(mc))
}
