//! The soak's markdown: a document of its own for a soak's results file, and
//! the section a comparison's report (BENCHMARKS.md, `render --soak`) shows.
//! It reads nothing but the [`Soak`] record, so `render` on the file gives
//! the text the run printed.

use std::fmt::Write as _;

use crate::model::{Run, Soak, SoakSample};
use crate::stats;

/// The whole document for a results file that holds a soak only.
pub fn document(run: &Run) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# mcpflip soak\n");
    if let Some(s) = &run.soak {
        section(&mut o, s);
    }
    o
}

fn passed(ok: bool) -> &'static str {
    if ok {
        "**passed**"
    } else {
        "**FAILED**"
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `12.3 s`, or `—`.
fn secs(v: Option<f64>) -> String {
    v.map_or("—".to_owned(), |t| format!("{t:.1} s"))
}

/// The soak section.
pub fn section(o: &mut String, s: &Soak) {
    let m = &s.machine;
    let _ = writeln!(
        o,
        "## Soak: {} minute{} of mixed load, a deploy every minute, an upstream killed every three\n",
        s.minutes,
        if s.minutes == 1.0 { "" } else { "s" }
    );
    let _ = writeln!(
        o,
        "`{}` on {} ({}, {} core{}, Linux {}), mcpflip {}; rendered from `{}`.{}\n",
        s.command,
        s.date,
        m.cpu_model,
        m.cores,
        if m.cores == 1 { "" } else { "s" },
        m.kernel,
        s.mcpflip,
        s.file,
        if s.smoke {
            " **A smoke run (2 minutes): not the reference figures.**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "Through the `mcpflip` binary (release code) on loopback, in front of two `mcpflip upstream` \
         slots (blue and green) on ports of their own. The operator follows \
         `examples/deploy.sh`: a `ctl deploy` every minute, alternating blue and green (start the \
         idle slot, `standby`, `deploy`, then stop the drained slot and `retire` it); during \
         every third deploy the slot being drained is killed with SIGKILL {} s after the flip, \
         then `retire`d, started again and `standby`d (a new generation). A failure is the \
         killed upstream's own when the request was routed to the killed slot (its session's \
         tag, the upstream's `X-Served-By`, or the slot the proxy's own error names) and it was \
         in flight at the kill, sent before the operator was done, or belongs to a session of \
         the killed generation and failed after the kill. Every other failure fails the soak.\n",
        super::plan::KILL_AFTER_FLIP.as_secs()
    );

    let _ = writeln!(o, "| check | result | |\n|---|---|---|");
    for c in &s.checks {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            c.name,
            passed(c.passed),
            c.detail.replace('|', "\\|")
        );
    }
    let _ = writeln!(o);

    let _ = writeln!(
        o,
        "**The load** ({:.0} s; every client checks what it gets: status, the JSON-RPC id and \
         result, the slot that answered, every event in order):\n",
        s.load_s
    );
    let _ = writeln!(o, "| clients | at once | what each does |\n|---|---|---|");
    for p in &s.mix {
        let _ = writeln!(o, "| {} | {} | {} |", p.what, p.clients, p.detail);
    }
    let _ = writeln!(o);

    let _ = writeln!(
        o,
        "| request | answered as asked | failed | of which the killed upstreams' own |\n|---|---|---|---|"
    );
    for r in &s.requests {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            r.exchange.label(),
            stats::int(r.ok as f64),
            r.failed,
            r.expected
        );
    }
    let total: u64 = s.requests.iter().map(|r| r.ok).sum();
    let _ = writeln!(
        o,
        "\n{} requests answered as asked, {} SSE events read.\n",
        stats::int(total as f64),
        stats::int(s.sse_events as f64)
    );

    if s.failures.is_empty() {
        let _ = writeln!(o, "No request failed.\n");
    } else {
        let _ = writeln!(
            o,
            "Failures by cause:\n\n| request | cause | the killed upstreams' own | other |\n|---|---|---|---|"
        );
        for f in &s.failures {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                f.exchange.label(),
                f.what,
                f.expected,
                f.unexpected
            );
        }
        let _ = writeln!(o);
    }

    let outcomes = {
        let mut v: Vec<(String, usize)> = Vec::new();
        for d in &s.deploys {
            match v.iter_mut().find(|(k, _)| *k == d.outcome) {
                Some(e) => e.1 += 1,
                None => v.push((d.outcome.clone(), 1)),
            }
        }
        v.iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let drains: Vec<f64> = s
        .deploys
        .iter()
        .filter_map(|d| d.drained_after_ms)
        .map(|ms| ms as f64 / 1000.0)
        .collect();
    let drain = stats::Series(drains.clone());
    let _ = writeln!(
        o,
        "**Deploys**: {} of {} planned ({}); the old slot drained in {} s (median, {}–{} s) \
         where no kill cut its drain short.\n",
        s.deploys.len(),
        s.planned_deploys,
        if outcomes.is_empty() {
            "none".to_owned()
        } else {
            outcomes
        },
        stats::one(drain.median()),
        stats::one(drain.min()),
        stats::one(drain.max()),
    );
    let _ = writeln!(
        o,
        "| # | at | deploy | outcome | old slot drained after | command took | kill |\n|---|---|---|---|---|---|---|"
    );
    for d in &s.deploys {
        let _ = writeln!(
            o,
            "| {} | {:.0} s | {} → {} | {}{} | {} | {:.1} s | {} |",
            d.n,
            d.at_s,
            d.from.name(),
            d.to.name(),
            d.outcome,
            d.message
                .as_deref()
                .map_or(String::new(), |m| format!(": {}", m.replace('|', "\\|"))),
            secs(d.drained_after_ms.map(|ms| ms as f64 / 1000.0)),
            d.elapsed_s,
            if d.killed { "yes" } else { "" }
        );
    }
    let _ = writeln!(o);

    if !s.kills.is_empty() {
        let _ = writeln!(
            o,
            "**Kills** ({} of {} planned):\n\n| deploy | slot (generation) | its state | live streams | in flight | at | operator done after | failures that were its own |\n|---|---|---|---|---|---|---|---|",
            s.kills.len(),
            s.planned_kills
        );
        for k in &s.kills {
            let _ = writeln!(
                o,
                "| #{} | {} ({} → {}) | {} | {} | {} | {:.1} s | {} ms | {} |",
                k.deploy,
                k.slot.name(),
                k.generation,
                k.new_generation,
                k.state,
                k.live_streams,
                k.inflight,
                k.killed_ms as f64 / 1000.0,
                k.recovered_ms.saturating_sub(k.killed_ms),
                k.failures
            );
        }
        let _ = writeln!(o);
    }

    let e = &s.end;
    let _ = writeln!(
        o,
        "**The proxy at the end**: {}; `/status` {}; `/metrics` {}.\n",
        match e.zero_after_s {
            Some(t) => format!("every live count was 0 {t:.1} s after the load stopped"),
            None => format!("the live counts were not 0 within {:.0} s", e.waited_s),
        },
        counts(&e.status),
        counts(&e.metrics)
    );
    let _ = writeln!(
        o,
        "| | at the start (idle) | peak | at the end |\n|---|---|---|---|\n\
         | resident memory (VmRSS; peak VmHWM) | {} | {} | {} |\n\
         | open file descriptors | {} | {} | {} |\n",
        mib(s.rss_kib.start),
        mib(s.rss_kib.peak),
        mib(s.rss_kib.end),
        s.fds.start,
        s.fds.peak,
        s.fds.end
    );
    let _ = writeln!(
        o,
        "The end is read {:.0} s after the counts reached 0, once the upstream pool's idle \
         connections have closed (`pool_idle_timeout` 5 s here; hyper's pool looks for expired \
         ones every that long). The descriptors at the start: {}. At the end: {}.\n",
        e.settle_s,
        list(&e.fds_start),
        list(&e.fds_end)
    );
    let _ = writeln!(
        o,
        "The proxy's log (its access log included, `[log] access_log = \"stderr\"`, the \
         default) came to {}{}.\n",
        crate::report::bytes(e.log_bytes),
        match e.access_log_dropped {
            Some(0) => "; no access-log line was dropped".to_owned(),
            Some(n) => format!("; {n} access-log lines were dropped"),
            None => String::new(),
        }
    );
    if e.log_error_count > 0 {
        let _ = writeln!(
            o,
            "The proxy logged {} ERROR line{} (not one of the checks; the first ones):\n",
            e.log_error_count,
            if e.log_error_count == 1 { "" } else { "s" }
        );
        for l in &e.log_errors {
            let _ = writeln!(o, "    {l}");
        }
        let _ = writeln!(o);
    }
    timeline(o, &s.samples);

    if !s.examples.is_empty() {
        let _ = writeln!(
            o,
            "Failures that were not the killed upstreams' own (the first {}):\n\n| at | request | cause | slot (generation) | what the client saw |\n|---|---|---|---|---|",
            s.examples.len()
        );
        for f in &s.examples {
            let _ = writeln!(
                o,
                "| {:.3} s (sent {:.3} s) | {} | {} | {} | {} |",
                f.failed_ms as f64 / 1000.0,
                f.sent_ms as f64 / 1000.0,
                f.exchange.label(),
                f.what(),
                match (f.slot, f.generation) {
                    (Some(s), Some(g)) => format!("{} ({g})", s.name()),
                    (Some(s), None) => s.name().to_owned(),
                    _ => "unknown".to_owned(),
                },
                f.detail.replace('|', "\\|").replace('\n', " ")
            );
        }
        let _ = writeln!(o);
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "not read".to_owned()
    } else {
        v.join(", ")
    }
}

fn counts(v: &[crate::model::SlotCounts]) -> String {
    if v.is_empty() {
        return "could not be read".to_owned();
    }
    v.iter()
        .map(|c| {
            let n = |x: u64| {
                if x == u64::MAX {
                    "missing".to_owned()
                } else {
                    x.to_string()
                }
            };
            format!(
                "{} {} live / {} in flight",
                c.slot,
                n(c.live_streams),
                n(c.inflight)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The proxy over the run, a row every few minutes (about a dozen rows).
fn timeline(o: &mut String, samples: &[SoakSample]) {
    let Some(last) = samples.last() else { return };
    let step = ((last.t_s / 12.0 / 60.0).ceil() * 60.0).max(10.0);
    let _ = writeln!(
        o,
        "| at | resident memory | descriptors | live streams | in flight |\n|---|---|---|---|---|"
    );
    let mut next = 0.0;
    for s in samples {
        if s.t_s + 1e-9 < next && !std::ptr::eq(s, last) {
            continue;
        }
        next = (s.t_s / step).floor() * step + step;
        let _ = writeln!(
            o,
            "| {:.0} s | {} | {} | {} | {} |",
            s.t_s,
            mib(s.rss_kib),
            s.fds,
            s.live_streams,
            s.inflight
        );
    }
    let _ = writeln!(o);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::model::{Cause, Exchange, Failure, Slot};

    fn soak_run() -> Run {
        let mut s = fixture::soak();
        s.checks = super::super::ledger::checks(&s, super::super::ledger::LIMITS);
        let mut r = Run::new(fixture::meta());
        r.soak = Some(s);
        r
    }

    #[test]
    fn a_soak_file_renders_as_a_document_of_its_own() {
        let text = crate::report::render(&soak_run());
        assert!(text.starts_with("# mcpflip soak\n"), "{text}");
        assert!(!text.contains("# mcpflip benchmarks"));
        assert!(
            text.contains("| no failed request beyond the killed upstreams' own | **passed** |")
        );
        assert!(text.contains("| #2 | green (3 → 4) | draining | 10 | 2 | 10.0 s | 500 ms | 3 |"));
        assert!(!text.contains("**FAILED**"));
    }

    #[test]
    fn a_failed_soak_says_so_and_shows_the_failures() {
        let mut r = soak_run();
        let s = r.soak.as_mut().expect("a soak");
        s.failures[0].unexpected = 1;
        s.examples.push(Failure {
            exchange: Exchange::Stateless,
            cause: Cause::Status,
            status: Some(502),
            slot: Some(Slot::Blue),
            generation: None,
            sent_ms: 30_000,
            failed_ms: 30_002,
            detail: r#"{"error":"upstream_reset","slot":"blue"}"#.to_owned(),
        });
        s.checks = super::super::ledger::checks(s, super::super::ledger::LIMITS);
        let text = crate::report::render(&r);
        assert!(
            text.contains("| no failed request beyond the killed upstreams' own | **FAILED** |")
        );
        assert!(text.contains("| 30.002 s (sent 30.000 s) | stateless POST | HTTP 502 | blue |"));
    }

    #[test]
    fn a_comparison_shows_the_soak_section_before_its_limits() {
        let mut r = fixture::run();
        r.soak = soak_run().soak;
        let text = crate::report::render(&r);
        let soak = text.find("## Soak: 2 minutes").expect("the soak section");
        let w5 = text.find("## W5").expect("W5");
        let limits = text.find("## What limited").expect("the limits");
        assert!(text.starts_with("# mcpflip benchmarks"));
        assert!(w5 < soak && soak < limits, "{w5} {soak} {limits}");
    }

    #[test]
    fn the_results_file_reads_back_the_same() {
        let r = soak_run();
        let back = Run::from_json(&r.to_json().expect("json")).expect("reads back");
        assert_eq!(back, r);
        assert_eq!(crate::report::render(&back), crate::report::render(&r));
    }
}
