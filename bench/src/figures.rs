//! The figures derived from a run: every ratio of mcpflip to another target
//! (the summary table, and what `diff` compares between two runs) and the
//! targets of issue 14 with their thresholds, each measured value and whether
//! it is met. Pure functions over [`Run`]; the report and `diff` only format
//! what these return, so the two never disagree.
//!
//! A ratio is the ratio of the two medians (nothing rounded in mcpflip's
//! favour); its spread is the min–max of the per-round ratios (each round ran
//! every target once, back to back).

use crate::model::{Kind, Run, W1};
use crate::stats::Series;

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn word(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }

    /// `v` meets `bound` (`None` when `v` was not measured).
    pub fn meets(self, v: f64, bound: f64) -> Option<bool> {
        if !v.is_finite() {
            return None;
        }
        Some(match self {
            Better::Higher => v >= bound,
            Better::Lower => v <= bound,
        })
    }
}

/// mcpflip's figure divided by another target's.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// `W1 c=64`, `W1 c=64 (wrk)`, `W2 N=1,000`, …
    pub workload: String,
    pub metric: &'static str,
    pub better: Better,
    pub against: Kind,
    /// The ratio of the medians.
    pub value: f64,
    /// The ratio round by round.
    pub rounds: Series,
}

impl Ratio {
    /// What `diff` matches two runs' ratios by.
    pub fn key(&self) -> String {
        format!(
            "{} {}, mcpflip / {}",
            self.workload,
            self.metric,
            self.against.label()
        )
    }
}

/// `a` over `b`: the ratio of the medians, and the round-by-round ratios.
pub fn ratio_of(a: &Series, b: &Series) -> (f64, Series) {
    (a.median() / b.median(), Series::per_round_ratio(a, b))
}

/// The anchors this run measured, in the summary's column order.
pub fn anchors(run: &Run) -> Vec<Kind> {
    Kind::ANCHORS
        .into_iter()
        .filter(|k| run.meta.targets.contains(k))
        .collect()
}

/// `1,000` for N and counts in labels.
fn thousands(n: usize) -> String {
    crate::stats::int(n as f64)
}

fn w1_ratios(out: &mut Vec<Ratio>, run: &Run, w: &W1, suffix: &str) {
    for c in w.concs() {
        let Some(m) = w.cell(c, Kind::Mcpflip) else {
            continue;
        };
        for k in anchors(run) {
            let Some(o) = w.cell(c, k) else { continue };
            let workload = format!("W1 c={c}{suffix}");
            let rows: [(&'static str, Better, &Series, &Series); 3] = [
                ("requests/s", Better::Higher, &m.rps, &o.rps),
                ("p99 latency", Better::Lower, &m.p99_ms, &o.p99_ms),
                ("proxy CPU per request", Better::Lower, &m.cpu_us, &o.cpu_us),
            ];
            for (metric, better, a, b) in rows {
                let (value, rounds) = ratio_of(a, b);
                out.push(Ratio {
                    workload: workload.clone(),
                    metric,
                    better,
                    against: k,
                    value,
                    rounds,
                });
            }
        }
    }
}

/// Every ratio of mcpflip to another target that the run measured.
pub fn ratios(run: &Run) -> Vec<Ratio> {
    let mut out = Vec::new();
    if !run.meta.targets.contains(&Kind::Mcpflip) {
        return out;
    }
    if let Some(w) = &run.w1 {
        w1_ratios(&mut out, run, w, "");
    }
    if let Some(w) = &run.w1_wrk {
        w1_ratios(&mut out, run, w, " (wrk)");
    }
    if let Some(st) = &run.w1_static {
        w1_ratios(&mut out, run, &st.ours, ", static upstream");
        if let Some(w) = &st.wrk {
            w1_ratios(&mut out, run, w, ", static upstream (wrk)");
        }
    }
    if let Some(mc) = &run.multicore {
        for l in mc.levels.iter().filter(|l| !l.from_w1) {
            for (cells, suffix) in [(&l.ours, ""), (&l.wrk, " (wrk)")] {
                let get = |k: Kind| cells.iter().find(|c| c.target == k);
                let Some(m) = get(Kind::Mcpflip) else {
                    continue;
                };
                for k in anchors(run) {
                    let Some(o) = get(k) else { continue };
                    let workload = format!(
                        "W1 c={}, {} worker{}{suffix}",
                        mc.conc,
                        l.workers,
                        if l.workers == 1 { "" } else { "s" }
                    );
                    let rows: [(&'static str, Better, &Series, &Series); 2] = [
                        ("requests/s", Better::Higher, &m.rps, &o.rps),
                        ("proxy CPU per request", Better::Lower, &m.cpu_us, &o.cpu_us),
                    ];
                    for (metric, better, a, b) in rows {
                        let (value, rounds) = ratio_of(a, b);
                        out.push(Ratio {
                            workload: workload.clone(),
                            metric,
                            better,
                            against: k,
                            value,
                            rounds,
                        });
                    }
                }
            }
        }
    }
    if let Some(w) = &run.w2 {
        for n in w.ns() {
            let Some(m) = w.cell(n, Kind::Mcpflip) else {
                continue;
            };
            for k in anchors(run) {
                let Some(o) = w.cell(n, k) else { continue };
                let rows: [(&'static str, &Series, &Series); 3] = [
                    ("memory per stream", &m.mem_kib, &o.mem_kib),
                    ("relay p99", &m.p99_ms, &o.p99_ms),
                    ("CPU per 1k events", &m.cpu_per_1k_ms, &o.cpu_per_1k_ms),
                ];
                for (metric, a, b) in rows {
                    let (value, rounds) = ratio_of(a, b);
                    out.push(Ratio {
                        workload: format!("W2 N={}", thousands(n)),
                        metric,
                        better: Better::Lower,
                        against: k,
                        value,
                        rounds,
                    });
                }
            }
        }
    }
    if let Some(w) = &run.w3 {
        if let Some(m) = w.cell(Kind::Mcpflip) {
            for k in anchors(run) {
                let Some(o) = w.cell(k) else { continue };
                let (value, rounds) = ratio_of(&m.p99_ms, &o.p99_ms);
                out.push(Ratio {
                    workload: "W3 flips".to_owned(),
                    metric: "p99 latency",
                    better: Better::Lower,
                    against: k,
                    value,
                    rounds,
                });
            }
        }
    }
    if let Some(w) = &run.w5 {
        if let Some(m) = w.cell(Kind::Mcpflip) {
            for k in anchors(run) {
                let Some(o) = w.cell(k) else { continue };
                let (value, rounds) = ratio_of(&m.many, &o.many);
                out.push(Ratio {
                    workload: format!("W5 c={}", w.conns),
                    metric: "req/s, many sessions",
                    better: Better::Higher,
                    against: k,
                    value,
                    rounds,
                });
            }
        }
    }
    out
}

/// How a goal's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `0.83×`
    Ratio,
    /// `0.741 ms`
    Ms,
    /// `12`
    Count,
    /// `0.96`
    Plain,
}

impl Unit {
    /// `v` written in this unit.
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Ratio => crate::stats::ratio(v),
            Unit::Ms => format!("{} ms", crate::stats::ms(v)),
            Unit::Count => crate::stats::int(v),
            Unit::Plain => crate::stats::two(v),
        }
    }
}

/// One target of issue 14, and the measured value.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub figure: String,
    /// The value when the issue was filed.
    pub today: &'static str,
    pub better: Better,
    pub must: f64,
    pub stretch: Option<f64>,
    pub unit: Unit,
    /// NaN when not measured.
    pub value: f64,
    /// The spread over the rounds (per-round ratios, or the samples).
    pub rounds: Series,
    /// The absolute figures behind the value.
    pub detail: String,
}

impl Goal {
    pub fn must_met(&self) -> Option<bool> {
        self.better.meets(self.value, self.must)
    }

    pub fn stretch_met(&self) -> Option<bool> {
        self.better.meets(self.value, self.stretch?)
    }
}

/// W1 requests/s of mcpflip against nginx at c=64 from `cells` (one worker count).
fn rps_goal(
    figure: String,
    today: &'static str,
    m: Option<&crate::model::W1Cell>,
    n: Option<&crate::model::W1Cell>,
) -> Option<Goal> {
    let (m, n) = (m?, n?);
    let (value, rounds) = ratio_of(&m.rps, &n.rps);
    Some(Goal {
        figure,
        today,
        better: Better::Higher,
        must: 1.0,
        stretch: Some(1.25),
        unit: Unit::Ratio,
        value,
        rounds,
        detail: format!(
            "{} vs {} req/s",
            crate::stats::int(m.rps.median()),
            crate::stats::int(n.rps.median())
        ),
    })
}

/// Figures measured beside the rows, in their form but not among
/// them: W1 c=64 requests/s behind the static upstream (the proxy as the
/// bound, bench/PROFILE.md §60, §61), with each load generator, against the
/// issue's W1 must (≥ 1.0×). `history` lists them after the goals; no verdict
/// counts them.
pub fn beside(run: &Run) -> Vec<Goal> {
    let Some(st) = &run.w1_static else {
        return Vec::new();
    };
    std::iter::once((&st.ours, ""))
        .chain(st.wrk.as_ref().map(|w| (w, ", wrk")))
        .flat_map(|(w, generator)| {
            w.concs().into_iter().filter_map(move |c| {
                rps_goal(
                    format!("W1 c={c} requests/s vs nginx behind a static upstream{generator} (beside the issue's rows)"),
                    "—",
                    w.cell(c, Kind::Mcpflip),
                    w.cell(c, Kind::Nginx),
                )
            })
        })
        .collect()
}

/// The targets of issue 14 (and the issue-5 targets it keeps), in the
/// issue's order, for what this run measured.
pub fn goals(run: &Run) -> Vec<Goal> {
    use crate::stats::{int, ms, two};
    let mut out = Vec::new();
    if !run.meta.targets.contains(&Kind::Mcpflip) || !run.meta.targets.contains(&Kind::Nginx) {
        return out;
    }
    let plural = |w: usize| if w == 1 { "" } else { "s" };
    // W1 c=64 requests/s at equal workers, with both load generators.
    match &run.multicore {
        Some(mc) => {
            for l in &mc.levels {
                for (cells, generator) in [(&l.ours, ""), (&l.wrk, ", wrk")] {
                    let get = |k: Kind| cells.iter().find(|c| c.target == k);
                    let today = match (l.workers, generator.is_empty()) {
                        (1, true) => "0.83×",
                        (2, false) => "0.70×",
                        _ => "—",
                    };
                    out.extend(rps_goal(
                        format!(
                            "W1 c={} requests/s vs nginx, {} worker{} each{generator}",
                            mc.conc,
                            l.workers,
                            plural(l.workers)
                        ),
                        today,
                        get(Kind::Mcpflip),
                        get(Kind::Nginx),
                    ));
                }
            }
        }
        None => {
            let workers = run.meta.plan.workers();
            for (w, generator) in [(&run.w1, ""), (&run.w1_wrk, ", wrk")] {
                let Some(w) = w else { continue };
                out.extend(rps_goal(
                    format!(
                        "W1 c=64 requests/s vs nginx, {workers} worker{} each{generator}",
                        plural(workers)
                    ),
                    if workers == 1 && generator.is_empty() {
                        "0.83×"
                    } else {
                        "—"
                    },
                    w.cell(64, Kind::Mcpflip),
                    w.cell(64, Kind::Nginx),
                ));
            }
        }
    }
    // Proxy CPU per request and the c=1 tail.
    for (w, generator) in [(&run.w1, ""), (&run.w1_wrk, ", wrk")] {
        let Some(w) = w else { continue };
        if let (Some(m), Some(n)) = (w.cell(64, Kind::Mcpflip), w.cell(64, Kind::Nginx)) {
            let (value, rounds) = ratio_of(&m.cpu_us, &n.cpu_us);
            out.push(Goal {
                figure: format!("W1 c=64 proxy CPU µs per request vs nginx{generator}"),
                today: if generator.is_empty() {
                    "1.32×"
                } else {
                    "—"
                },
                better: Better::Lower,
                must: 1.0,
                stretch: Some(0.8),
                unit: Unit::Ratio,
                value,
                rounds,
                detail: format!(
                    "{} vs {} µs",
                    two(m.cpu_us.median()),
                    two(n.cpu_us.median())
                ),
            });
        }
    }
    if let Some(w) = &run.w1 {
        if let (Some(m), Some(n)) = (w.cell(1, Kind::Mcpflip), w.cell(1, Kind::Nginx)) {
            let (value, rounds) = ratio_of(&m.p99_ms, &n.p99_ms);
            out.push(Goal {
                figure: "W1 c=1 p99 vs nginx".to_owned(),
                today: "1.29×",
                better: Better::Lower,
                must: 1.0,
                stretch: None,
                unit: Unit::Ratio,
                value,
                rounds,
                detail: format!("{} vs {} ms", ms(m.p99_ms.median()), ms(n.p99_ms.median())),
            });
        }
    }
    if let Some(w) = &run.w2 {
        for n in w.ns() {
            let (Some(m), Some(x)) = (w.cell(n, Kind::Mcpflip), w.cell(n, Kind::Nginx)) else {
                continue;
            };
            let (value, rounds) = ratio_of(&m.mem_kib, &x.mem_kib);
            out.push(Goal {
                figure: format!(
                    "W2 memory per open SSE stream vs nginx, N={}",
                    int(n as f64)
                ),
                today: "2.45×",
                better: Better::Lower,
                must: 1.0,
                stretch: Some(0.5),
                unit: Unit::Ratio,
                value,
                rounds,
                detail: format!(
                    "{} vs {} KiB",
                    two(m.mem_kib.median()),
                    two(x.mem_kib.median())
                ),
            });
            let (value, rounds) = ratio_of(&m.p99_ms, &x.p99_ms);
            out.push(Goal {
                figure: format!("W2 relay p99 vs nginx, N={}", int(n as f64)),
                today: "1.3–1.8×",
                better: Better::Lower,
                must: 1.0,
                stretch: None,
                unit: Unit::Ratio,
                value,
                rounds,
                detail: format!("{} vs {} ms", ms(m.p99_ms.median()), ms(x.p99_ms.median())),
            });
        }
    }
    if let Some(a) = &run.access_log {
        let (value, rounds) = ratio_of(&a.on_rps, &a.off_rps);
        out.push(Goal {
            figure: format!("W1 c={} with the access log on vs off", a.conc),
            today: "0.80×",
            better: Better::Higher,
            must: 0.95,
            stretch: None,
            unit: Unit::Ratio,
            value,
            rounds,
            detail: format!(
                "{} vs {} req/s",
                int(a.on_rps.median()),
                int(a.off_rps.median())
            ),
        });
    }
    if let Some(w) = &run.w3 {
        if let Some(c) = w.cell(Kind::Mcpflip) {
            let failed: f64 = c.failed.0.iter().filter(|v| v.is_finite()).sum();
            let mut detail = format!(
                "{} failed of {} requests over {} × {} flips",
                int(failed),
                int(c.requests as f64),
                c.failed.0.len(),
                int(w.flips as f64)
            );
            if c.flip_errors > 0 {
                detail.push_str(&format!("; {} flips failed", c.flip_errors));
            }
            out.push(Goal {
                figure: format!("W3 failed requests over {} flips", int(w.flips as f64)),
                today: "0",
                better: Better::Lower,
                must: 0.0,
                stretch: None,
                unit: Unit::Count,
                value: failed + c.flip_errors as f64,
                rounds: c.failed.clone(),
                detail,
            });
        }
    }
    if let Some(w) = &run.w4 {
        if let Some(c) = w.cell(Kind::Mcpflip) {
            let p99 = crate::stats::quantile(&c.detection_ms, 0.99);
            out.push(Goal {
                figure: "W4 drain detection p99".to_owned(),
                today: "0.741 ms",
                better: Better::Lower,
                must: 5.0,
                stretch: None,
                unit: Unit::Ms,
                value: p99,
                rounds: Series(c.detection_ms.clone()),
                detail: format!(
                    "p50 {} ms over {} deploys",
                    ms(crate::stats::quantile(&c.detection_ms, 0.5)),
                    c.detection_ms.len()
                ),
            });
        }
    }
    if let Some(w) = &run.w5 {
        if let Some(c) = w.cell(Kind::Mcpflip) {
            out.push(Goal {
                figure: format!("W5 req/s with {} sessions ÷ with 1", int(w.sessions as f64)),
                today: "0.96",
                better: Better::Higher,
                must: 0.95,
                stretch: None,
                unit: Unit::Plain,
                value: c.ratio.median(),
                rounds: c.ratio.clone(),
                detail: format!("mcpflip's CPU per request {}×", two(c.cpu_ratio.median())),
            });
        }
        // Issue 16: session capture for migration must not cost affinity.
        if let Some(c) = &w.capture {
            out.push(Goal {
                figure: format!(
                    "W5 req/s with {} sessions ÷ with 1, capture on",
                    int(w.sessions as f64)
                ),
                today: "—",
                better: Better::Higher,
                must: 0.95,
                stretch: None,
                unit: Unit::Plain,
                value: c.cell.ratio.median(),
                rounds: c.cell.ratio.clone(),
                detail: format!(
                    "{} bytes of RSS per captured session; CPU per request {}×",
                    int(c.bytes_per_session()),
                    two(c.cell.cpu_ratio.median())
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    fn goal<'a>(goals: &'a [Goal], figure: &str) -> &'a Goal {
        goals
            .iter()
            .find(|g| g.figure == figure)
            .unwrap_or_else(|| panic!("no goal {figure:?} in {goals:#?}"))
    }

    #[test]
    fn each_target_is_judged_against_its_own_bound() {
        let goals = goals(&fixture::run());
        let g = goal(&goals, "W1 c=64 requests/s vs nginx, 1 worker each");
        assert!((g.value - 40.0 / 48.0).abs() < 1e-9);
        assert_eq!((g.must_met(), g.stretch_met()), (Some(false), Some(false)));
        // The per-round spread: 40/48, 42/50, 38/46.
        assert!((g.rounds.min() - 38.0 / 46.0).abs() < 1e-9);
        assert!((g.rounds.max() - 42.0 / 50.0).abs() < 1e-9);

        let g = goal(&goals, "W1 c=64 requests/s vs nginx, 1 worker each, wrk");
        assert_eq!((g.must_met(), g.stretch_met()), (Some(true), Some(false)));
        let g = goal(&goals, "W1 c=64 requests/s vs nginx, 2 workers each");
        assert_eq!((g.must_met(), g.stretch_met()), (Some(true), Some(false)));
        let g = goal(&goals, "W1 c=64 requests/s vs nginx, 2 workers each, wrk");
        assert_eq!((g.must_met(), g.stretch_met()), (Some(true), Some(true)));

        // Lower is better: 24 / 19 µs is above 1.0.
        let g = goal(&goals, "W1 c=64 proxy CPU µs per request vs nginx");
        assert_eq!((g.must_met(), g.stretch_met()), (Some(false), Some(false)));
        let g = goal(&goals, "W1 c=1 p99 vs nginx");
        assert_eq!((g.must_met(), g.stretch_met()), (Some(true), None));

        let g = goal(&goals, "W2 memory per open SSE stream vs nginx, N=1,000");
        assert_eq!((g.must_met(), g.stretch_met()), (Some(true), Some(false)));
        let g = goal(&goals, "W2 memory per open SSE stream vs nginx, N=9,000");
        assert_eq!((g.must_met(), g.stretch_met()), (Some(true), Some(true)));
        assert_eq!(
            goal(&goals, "W2 relay p99 vs nginx, N=1,000").must_met(),
            Some(false)
        );
        assert_eq!(
            goal(&goals, "W2 relay p99 vs nginx, N=9,000").must_met(),
            Some(true)
        );

        let g = goal(&goals, "W1 c=64 with the access log on vs off");
        assert!((g.value - 0.975).abs() < 1e-9);
        assert_eq!(g.must_met(), Some(true));
        assert_eq!(
            goal(&goals, "W3 failed requests over 1,000 flips").must_met(),
            Some(true)
        );
        let g = goal(&goals, "W4 drain detection p99");
        assert_eq!(g.value, 0.9);
        assert_eq!(g.must_met(), Some(true));
        assert_eq!(
            goal(&goals, "W5 req/s with 100,000 sessions ÷ with 1").must_met(),
            Some(true)
        );
        let g = goal(
            &goals,
            "W5 req/s with 100,000 sessions ÷ with 1, capture on",
        );
        assert_eq!((g.value, g.must_met()), (0.95, Some(true)));
        assert!(
            g.detail
                .starts_with("512 bytes of RSS per captured session"),
            "{}",
            g.detail
        );
    }

    #[test]
    fn one_failed_request_or_flip_fails_w3() {
        let mut run = fixture::run();
        let w3 = run.w3.as_mut().expect("fixture has W3");
        let m = w3
            .cells
            .iter_mut()
            .find(|c| c.target == Kind::Mcpflip)
            .expect("mcpflip");
        m.failed = Series(vec![0.0, 1.0, 0.0]);
        let g = goals(&run);
        assert_eq!(
            goal(&g, "W3 failed requests over 1,000 flips").must_met(),
            Some(false)
        );

        let mut run = fixture::run();
        let w3 = run.w3.as_mut().expect("fixture has W3");
        let m = w3
            .cells
            .iter_mut()
            .find(|c| c.target == Kind::Mcpflip)
            .expect("mcpflip");
        m.flip_errors = 1;
        let g = goals(&run);
        assert_eq!(
            goal(&g, "W3 failed requests over 1,000 flips").must_met(),
            Some(false)
        );
    }

    #[test]
    fn a_figure_that_was_not_measured_is_neither_met_nor_not_met() {
        let mut run = fixture::run();
        let w1 = run.w1.as_mut().expect("fixture has W1");
        for l in &mut w1.levels {
            for c in &mut l.cells {
                if c.target == Kind::Nginx {
                    c.cpu_us = Series(vec![f64::NAN; 3]);
                }
            }
        }
        let g = goals(&run);
        let cpu = goal(&g, "W1 c=64 proxy CPU µs per request vs nginx");
        assert_eq!((cpu.must_met(), cpu.stretch_met()), (None, None));
    }

    #[test]
    fn without_the_multicore_section_w1_gives_the_equal_workers_row() {
        let mut run = fixture::run();
        run.multicore = None;
        let g = goals(&run);
        let row = goal(&g, "W1 c=64 requests/s vs nginx, 1 worker each");
        assert!((row.value - 40.0 / 48.0).abs() < 1e-9);
        assert!(g.iter().all(|x| !x.figure.contains("2 workers")));
    }

    #[test]
    fn ratios_cover_every_anchor_and_part() {
        let r = ratios(&fixture::run());
        let find = |key: &str| {
            r.iter()
                .find(|x| x.key() == key)
                .unwrap_or_else(|| panic!("no ratio {key:?}"))
        };
        let x = find("W1 c=64 requests/s, mcpflip / nginx");
        assert!((x.value - 40.0 / 48.0).abs() < 1e-9);
        assert_eq!(x.better, Better::Higher);
        let x = find("W1 c=64 (wrk) requests/s, mcpflip / HAProxy");
        assert!((x.value - 50.0 / 46.0).abs() < 1e-9);
        let x = find("W1 c=64, 2 workers (wrk) requests/s, mcpflip / nginx");
        assert!((x.value - 1.3).abs() < 1e-9);
        let x = find("W2 N=9,000 memory per stream, mcpflip / Caddy");
        assert!((x.value - 6.5 / 80.0).abs() < 1e-9);
        assert_eq!(x.better, Better::Lower);
        // Direct has no proxy CPU: the ratio is there, but not a number.
        assert!(find("W1 c=64 proxy CPU per request, mcpflip / direct")
            .value
            .is_nan());
        // W1's own worker count is not listed twice.
        assert!(r.iter().all(|x| !x.workload.contains("1 worker")));
    }
}
