//! How each target of issue 14 fared over many runs (`mcpflip-bench history`):
//! for every figure [`figures::goals`] computes, in how many of the runs that
//! measured it the "must" was met, and the spread of its value across runs.
//!
//! One run's ratio is a median over a few rounds; a figure that sits at parity
//! on a noisy host is met by one run and missed by the next, and only the
//! runs together tell a figure that is met from one that is a coin
//! (bench/PROFILE.md §59). Pure functions over parsed runs; `main` reads the
//! files.

use std::fmt::Write as _;

use crate::figures::{self, Better, Goal, Unit};
use crate::model::Run;
use crate::stats::Series;

/// One figure over the runs, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub figure: String,
    pub better: Better,
    pub must: f64,
    pub unit: Unit,
    /// Each run's value, by the run's date.
    pub values: Vec<(String, f64)>,
}

impl Row {
    /// Runs that measured the figure.
    pub fn measured(&self) -> usize {
        self.values.iter().filter(|(_, v)| v.is_finite()).count()
    }

    /// Runs whose value met the must.
    pub fn met(&self) -> usize {
        self.values
            .iter()
            .filter(|(_, v)| self.better.meets(*v, self.must) == Some(true))
            .count()
    }

    /// The measured values as a series (median, min–max).
    pub fn series(&self) -> Series {
        Series(
            self.values
                .iter()
                .map(|(_, v)| *v)
                .filter(|v| v.is_finite())
                .collect(),
        )
    }
}

/// Why a parsed results file is not counted, if it is not: a quick run (a
/// smoke test), or a file with no figure of issue 14 (a soak, a run without
/// mcpflip or nginx).
pub fn not_counted(run: &Run) -> Option<&'static str> {
    if run.meta.quick {
        Some("a quick run (smoke test)")
    } else if figures::goals(run).is_empty() {
        Some("no figure of issue 14 (a soak, or a run without mcpflip and nginx)")
    } else {
        None
    }
}

/// Whether every must `run` measured was met (and it measured one).
pub fn met_every_must(run: &Run) -> bool {
    let goals = figures::goals(run);
    !goals.is_empty() && goals.iter().all(|g| g.must_met() == Some(true))
}

/// Every figure any of `runs` measured, in the order the runs first name
/// them, the goals first and then the figures measured beside them
/// ([`figures::beside`]); `runs` are taken oldest first, those
/// [`not_counted`] left out.
pub fn rows(runs: &[Run]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let counted: Vec<&Run> = runs.iter().filter(|r| not_counted(r).is_none()).collect();
    let goals = counted.iter().map(|&r| (r, figures::goals(r)));
    let beside = counted.iter().map(|&r| (r, figures::beside(r)));
    for (run, figures) in goals.chain(beside) {
        for g in figures {
            let Goal {
                figure,
                better,
                must,
                unit,
                value,
                ..
            } = g;
            let value = (run.meta.date.clone(), value);
            match out.iter_mut().find(|r| r.figure == figure) {
                Some(r) => r.values.push(value),
                None => out.push(Row {
                    figure,
                    better,
                    must,
                    unit,
                    values: vec![value],
                }),
            }
        }
    }
    out
}

/// The markdown `history` prints: which runs, then one line per figure.
/// `skipped` names the files that are not counted (not a bench run this
/// build reads, or [`not_counted`]), with the reason.
pub fn render(runs: &[Run], skipped: &[(String, String)], last: usize) -> String {
    let mut o = String::new();
    let counted: Vec<&Run> = runs.iter().filter(|r| not_counted(r).is_none()).collect();
    let complete = counted.iter().filter(|r| r.meta.complete).count();
    let _ = writeln!(o, "# The targets of issue 14 over {} runs\n", counted.len());
    if let (Some(first), Some(latest)) = (counted.first(), counted.last()) {
        let mut machines: Vec<String> = Vec::new();
        for r in &counted {
            let m = r.meta.machine.slug();
            if !machines.contains(&m) {
                machines.push(m);
            }
        }
        let _ = writeln!(
            o,
            "From {} to {}; {complete} of them complete (every workload, every target), the others \
             a part (`--only`, `--targets`). Machines: {}.\n",
            first.meta.date,
            latest.meta.date,
            machines.join(", ")
        );
    }
    let all_met = counted
        .iter()
        .filter(|r| r.meta.complete && met_every_must(r))
        .count();
    let _ = writeln!(
        o,
        "Complete runs that met every must: {all_met} of {complete}.\n"
    );
    let _ = writeln!(
        o,
        "\"met\" counts the runs whose value met the must; the median and min–max are over those \
         runs' values (each one run's ratio of medians). A figure met in about half of its runs \
         is at parity within the host's noise.\n"
    );
    let _ = writeln!(
        o,
        "| figure | must | met | median | min–max | the last {last}, oldest first |\n|---|---|---|---|---|---|"
    );
    for r in rows(runs) {
        let s = r.series();
        let bound = match r.better {
            Better::Higher => "≥",
            Better::Lower => "≤",
        };
        let recent: Vec<String> = r
            .values
            .iter()
            .rev()
            .take(last)
            .rev()
            .map(|(_, v)| {
                if v.is_finite() {
                    r.unit.show(*v)
                } else {
                    "—".to_owned()
                }
            })
            .collect();
        let spread = if s.0.is_empty() {
            "—".to_owned()
        } else {
            format!("{}–{}", r.unit.show(s.min()), r.unit.show(s.max()))
        };
        let _ = writeln!(
            o,
            "| {} | {bound} {} | {} of {} | {} | {spread} | {} |",
            r.figure,
            r.unit.show(r.must),
            r.met(),
            r.measured(),
            if s.0.is_empty() {
                "—".to_owned()
            } else {
                r.unit.show(s.median())
            },
            recent.join(", ")
        );
    }
    if !skipped.is_empty() {
        let _ = writeln!(o, "\nNot counted ({}):\n", skipped.len());
        for (file, why) in skipped {
            let _ = writeln!(o, "- {file}: {why}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::model::Kind;

    /// The fixture with mcpflip's c=1 p99 scaled by `k` in every round.
    fn run_with_c1_p99(date: &str, k: f64) -> Run {
        let mut r = fixture::run();
        r.meta.date = date.to_owned();
        let w1 = r.w1.as_mut().expect("fixture has W1");
        for l in w1.levels.iter_mut().filter(|l| l.conc == 1) {
            for c in l.cells.iter_mut().filter(|c| c.target == Kind::Mcpflip) {
                let nginx_like = c.p99_ms.0.clone();
                c.p99_ms = Series(nginx_like.iter().map(|v| v * k).collect());
            }
        }
        r
    }

    fn c1_row(rows: &[Row]) -> &Row {
        rows.iter()
            .find(|r| r.figure.starts_with("W1 c=1 p99"))
            .expect("the c=1 p99 figure")
    }

    #[test]
    fn a_figure_is_counted_met_only_in_the_runs_that_met_it() {
        let base = c1_row(&rows(&[fixture::run()])).values[0].1;
        assert!(base.is_finite(), "the fixture measures c=1 p99");
        // Scale mcpflip's p99 so that the ratio lands on each side of 1.0.
        let under = 0.9 / base;
        let over = 1.2 / base;
        let runs = vec![
            run_with_c1_p99("2026-12-01T00:00:00Z", under),
            run_with_c1_p99("2026-12-02T00:00:00Z", over),
            run_with_c1_p99("2026-12-03T00:00:00Z", under),
        ];
        let all = rows(&runs);
        let r = c1_row(&all);
        assert_eq!(r.measured(), 3);
        assert_eq!(r.met(), 2, "{:?}", r.values);
        assert_eq!(r.values[1].0, "2026-12-02T00:00:00Z", "kept in run order");
        assert!((r.series().max() - 1.2).abs() < 1e-9, "{:?}", r.values);
        // The second run misses c=1 p99, so it did not meet every must.
        assert!(!met_every_must(&runs[1]));
    }

    #[test]
    fn every_must_met_only_when_each_measured_one_is() {
        // The fixture's access log, W3, W4 and W5 are met; its W1 and W2 are not.
        let mut r = fixture::run();
        assert!(!met_every_must(&r));
        r.w1 = None;
        r.w1_wrk = None;
        r.multicore = None;
        r.w2 = None;
        assert!(met_every_must(&r), "{:?}", figures::goals(&r));
        let w3 = r.w3.as_mut().expect("fixture has W3");
        for c in w3.cells.iter_mut().filter(|c| c.target == Kind::Mcpflip) {
            c.failed = Series(vec![0.0, 1.0, 0.0]);
        }
        assert!(!met_every_must(&r), "one failed request in W3");
    }

    #[test]
    fn quick_runs_are_left_out_and_skipped_files_are_named() {
        let mut quick = fixture::run();
        quick.meta.quick = true;
        assert_eq!(not_counted(&quick), Some("a quick run (smoke test)"));
        let mut soak = fixture::run();
        soak.meta.targets.retain(|k| *k != Kind::Nginx);
        assert!(not_counted(&soak).is_some());
        assert_eq!(not_counted(&fixture::run()), None);
        let runs = vec![fixture::run(), quick];
        let all = rows(&runs);
        assert!(all.iter().all(|r| r.values.len() == 1), "{all:?}");
        let text = render(&runs, &[("soak.json".into(), "not a bench run".into())], 5);
        assert!(text.contains("over 1 runs"), "{text}");
        assert!(text.contains("- soak.json: not a bench run"), "{text}");
        assert!(text.contains("| W1 c=1 p99 vs nginx | ≤ "), "{text}");
    }

    #[test]
    fn the_static_upstream_row_is_listed_after_the_goals_and_counts_for_no_verdict() {
        let mut met = fixture::run();
        met.w1 = None;
        met.w1_wrk = None;
        met.multicore = None;
        met.w2 = None;
        assert!(met_every_must(&met), "{:?}", figures::goals(&met));
        // The fixture's static row is 1.10× (wrk 1.11×); below 1.0× it would
        // miss the W1 must, and still no verdict counts it.
        let mut slower = met.clone();
        let st = slower
            .w1_static
            .as_mut()
            .expect("fixture has the static row");
        for c in st.ours.levels[0]
            .cells
            .iter_mut()
            .filter(|c| c.target == Kind::Mcpflip)
        {
            c.rps = Series(vec![70_000.0; 3]);
        }
        assert!(met_every_must(&slower));
        let all = rows(&[met, slower]);
        let i = all
            .iter()
            .position(|r| {
                r.figure
                    .starts_with("W1 c=64 requests/s vs nginx behind a static upstream (beside")
            })
            .expect("the static row");
        assert!(
            all[..i].iter().all(|r| !r.figure.contains("static")),
            "after the goals: {all:?}"
        );
        assert_eq!(all[i].measured(), 2);
        assert_eq!(all[i].met(), 1, "{:?}", all[i].values);
        assert!(
            all[i + 1].figure.contains("static upstream, wrk"),
            "{all:?}"
        );
    }
}
