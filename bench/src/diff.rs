//! `mcpflip-bench diff A.json B.json`: how mcpflip's ratios to the other
//! targets moved from run A to run B, and which targets of issue 14 each run
//! met. Ratios, not absolute figures: a ratio carries over between runs on a
//! noisy machine (every target ran under the same conditions within a run),
//! an absolute figure does not.

use std::fmt::Write as _;

use crate::figures::{self, Better};
use crate::model::Run;
use crate::stats;

/// A ratio in both runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What the ratio is (`W1 c=64 requests/s, mcpflip / nginx`).
    pub key: String,
    pub better: Better,
    pub a: f64,
    pub b: f64,
}

impl Change {
    /// B relative to A: `0.10` is 10% higher.
    pub fn relative(&self) -> f64 {
        self.b / self.a - 1.0
    }

    /// Whether B is better than A (`None`: the same, or not comparable).
    pub fn improved(&self) -> Option<bool> {
        let r = self.relative();
        if !r.is_finite() || r == 0.0 {
            return None;
        }
        Some(match self.better {
            Better::Higher => r > 0.0,
            Better::Lower => r < 0.0,
        })
    }
}

/// The ratios of both runs, matched by what they measure (in A's order, then
/// what only B has), and the keys present in one run only.
pub fn changes(a: &Run, b: &Run) -> (Vec<Change>, Vec<String>, Vec<String>) {
    let ra = figures::ratios(a);
    let rb = figures::ratios(b);
    let mut both = Vec::new();
    let mut only_a = Vec::new();
    // A ratio neither run could take (direct has no proxy CPU) says nothing.
    let ra: Vec<_> = ra.into_iter().filter(|x| x.value.is_finite()).collect();
    let rb: Vec<_> = rb.into_iter().filter(|x| x.value.is_finite()).collect();
    for x in &ra {
        match rb.iter().find(|y| y.key() == x.key()) {
            Some(y) => both.push(Change {
                key: x.key(),
                better: x.better,
                a: x.value,
                b: y.value,
            }),
            None => only_a.push(x.key()),
        }
    }
    let only_b = rb
        .iter()
        .filter(|y| !ra.iter().any(|x| x.key() == y.key()))
        .map(|y| y.key())
        .collect();
    (both, only_a, only_b)
}

fn describe(run: &Run, name: &str) -> String {
    let m = &run.meta;
    format!(
        "{name}: {} on {} ({}, {} cores), mcpflip {}{}",
        m.date,
        if m.machine.hostname.is_empty() {
            "an unnamed machine"
        } else {
            &m.machine.hostname
        },
        m.machine.cpu_model,
        m.machine.cores,
        m.version("mcpflip").unwrap_or("unknown"),
        if m.quick {
            ", quick mode"
        } else if !m.complete {
            ", partial run"
        } else {
            ""
        }
    )
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "not met",
        None => "not measured",
    }
}

/// The text `diff` prints.
pub fn render(a: &Run, a_name: &str, b: &Run, b_name: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "A = {}", describe(a, a_name));
    let _ = writeln!(o, "B = {}", describe(b, b_name));
    if a.meta.machine.cpu_model != b.meta.machine.cpu_model
        || a.meta.machine.cores != b.meta.machine.cores
    {
        let _ = writeln!(
            o,
            "Different machines: the ratios carry over roughly, the absolute figures do not."
        );
    }
    let (both, only_a, only_b) = changes(a, b);
    let _ = writeln!(o, "\n## mcpflip's ratios, A → B\n");
    let _ = writeln!(
        o,
        "| figure | better | A | B | change |\n|---|---|---|---|---|"
    );
    for c in &both {
        let r = c.relative();
        let change = if r.is_finite() {
            format!(
                "{:+.1}%{}",
                r * 100.0,
                match c.improved() {
                    Some(true) => " better",
                    Some(false) => " worse",
                    None => "",
                }
            )
        } else {
            "—".to_owned()
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            c.key,
            c.better.word(),
            stats::ratio(c.a),
            stats::ratio(c.b),
            change
        );
    }
    if !only_a.is_empty() {
        let _ = writeln!(o, "\nOnly in A: {}.", only_a.join("; "));
    }
    if !only_b.is_empty() {
        let _ = writeln!(o, "\nOnly in B: {}.", only_b.join("; "));
    }

    let ga = figures::goals(a);
    let gb = figures::goals(b);
    if !ga.is_empty() || !gb.is_empty() {
        let _ = writeln!(o, "\n## The targets of issue 14 (must), A → B\n");
        let _ = writeln!(o, "| figure | A | B |\n|---|---|---|");
        let mut figures_seen: Vec<&str> = ga.iter().map(|g| g.figure.as_str()).collect();
        for g in &gb {
            if !figures_seen.contains(&g.figure.as_str()) {
                figures_seen.push(&g.figure);
            }
        }
        for f in figures_seen {
            let cell = |gs: &[figures::Goal]| match gs.iter().find(|g| g.figure == f) {
                Some(g) => format!("{} ({})", g.unit.show(g.value), met(g.must_met())),
                None => "—".to_owned(),
            };
            let _ = writeln!(o, "| {f} | {} | {} |", cell(&ga), cell(&gb));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::model::Kind;

    /// Run B: mcpflip 20% faster at W1 c=64 and with 3.5 KiB streams at N=1,000.
    fn better_run() -> Run {
        let mut b = fixture::run();
        let w1 = b.w1.as_mut().expect("fixture has W1");
        for l in &mut w1.levels {
            for c in &mut l.cells {
                if c.target == Kind::Mcpflip && l.conc == 64 {
                    c.rps.0.iter_mut().for_each(|v| *v *= 1.2);
                }
            }
        }
        // The multi-core row of W1's worker count is W1's c=64.
        let mc = b.multicore.as_mut().expect("fixture has multi-core");
        for c in &mut mc.levels[0].ours {
            if c.target == Kind::Mcpflip {
                c.rps.0.iter_mut().for_each(|v| *v *= 1.2);
            }
        }
        let w2 = b.w2.as_mut().expect("fixture has W2");
        for c in &mut w2.levels[0].cells {
            if c.target == Kind::Mcpflip {
                c.mem_kib = crate::stats::Series(vec![3.5; 3]);
            }
        }
        b.access_log = None;
        b.meta.machine.hostname = "bigger-host".to_owned();
        b
    }

    #[test]
    fn a_ratio_that_moved_is_reported_with_its_direction() {
        let (a, b) = (fixture::run(), better_run());
        let (both, only_a, only_b) = changes(&a, &b);
        let c = both
            .iter()
            .find(|c| c.key == "W1 c=64 requests/s, mcpflip / nginx")
            .expect("W1 ratio in both");
        assert!((c.relative() - 0.2).abs() < 1e-9);
        assert_eq!(c.improved(), Some(true));
        // Memory is lower-is-better: 10 → 3.5 KiB is −65%, better.
        let m = both
            .iter()
            .find(|c| c.key == "W2 N=1,000 memory per stream, mcpflip / nginx")
            .expect("W2 ratio in both");
        assert!((m.relative() + 0.65).abs() < 1e-9);
        assert_eq!(m.improved(), Some(true));
        // Unchanged figures are neither better nor worse.
        let same = both
            .iter()
            .find(|c| c.key == "W1 c=1 requests/s, mcpflip / nginx")
            .expect("c=1 ratio");
        assert_eq!(same.improved(), None);
        assert!(only_a.is_empty() && only_b.is_empty());
        assert!(both
            .iter()
            .all(|c| !c.key.contains("mcpflip / direct") || c.a.is_finite()));

        let text = render(&a, "a.json", &b, "b.json");
        assert!(
            text.contains(
                "| W1 c=64 requests/s, mcpflip / nginx | higher | 0.83× | 1.00× | +20.0% better |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| W2 N=1,000 memory per stream, mcpflip / nginx | lower | 0.71× | 0.25× | -65.0% better |"),
            "{text}"
        );
        // The goal moved from not met to met; the access-log goal is only in A.
        assert!(
            text.contains(
                "| W1 c=64 requests/s vs nginx, 1 worker each | 0.83× (not met) | 1.00× (met) |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| W1 c=64 with the access log on vs off | 0.97× (met) | — |"),
            "{text}"
        );
        assert!(text.contains("A = a.json: 2026-11-24T22:05:31Z on bench-host"));
        assert!(text.contains("B = b.json: 2026-11-24T22:05:31Z on bigger-host"));
    }

    #[test]
    fn a_worse_ratio_is_called_worse() {
        let (a, b) = (fixture::run(), better_run());
        // From B back to A: every improvement is a regression.
        let (both, _, _) = changes(&b, &a);
        let c = both
            .iter()
            .find(|c| c.key == "W1 c=64 requests/s, mcpflip / nginx")
            .expect("W1 ratio");
        assert_eq!(c.improved(), Some(false));
        assert!(render(&b, "b", &a, "a").contains("-16.7% worse"));
    }

    #[test]
    fn parts_in_one_run_only_are_listed() {
        let a = fixture::run();
        let mut b = fixture::run();
        b.w1_wrk = None;
        b.multicore = None;
        let (_, only_a, only_b) = changes(&a, &b);
        assert!(only_a.contains(&"W1 c=64 (wrk) requests/s, mcpflip / nginx".to_owned()));
        assert!(only_b.is_empty());
        assert!(render(&a, "a", &b, "b").contains("Only in A: "));
    }

    #[test]
    fn runs_on_different_machines_are_flagged() {
        let a = fixture::run();
        let mut b = fixture::run();
        b.meta.machine.cores = 16;
        assert!(render(&a, "a", &b, "b").contains("Different machines"));
        assert!(!render(&a, "a", &a, "a").contains("Different machines"));
    }
}
