//! `BENCHMARKS.md` from a run's results ([`Run`], as the JSON file holds
//! them): the machine and versions, the ratios, the targets of issue 14 and
//! where mcpflip stands, one section per workload with absolute medians
//! (min–max), the profile, the soak's section when one was merged in
//! (`soak::report` writes it, and a soak's own file), and what limited each
//! result. It reads nothing but
//! the `Run`: `mcpflip-bench render RUN.json` writes the same text the run
//! wrote.

use std::fmt::Write as _;

use crate::figures::{self, Goal};
use crate::model::{
    self, AccessLog, Kind, Meta, MultiCore, Profiles, Run, Shielded, W1Cell, W1Static, STEAL_LIMIT,
    STEAL_TRIES, W1, W2, W3, W4, W5,
};
use crate::soak;
use crate::stats::{self, Series};

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.0}%", v * 100.0)
    } else {
        "—".to_owned()
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn labels(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.label())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The markdown report of `run`.
pub fn render(run: &Run) -> String {
    if !run.has_comparison() && run.soak.is_some() {
        return soak::report::document(run);
    }
    let mut o = String::new();
    let m = &run.meta;
    let _ = writeln!(o, "# mcpflip benchmarks\n");
    let _ = writeln!(
        o,
        "Written by `{}` on {} ({:.0} s for the whole run, build excluded), from the results \
         file it wrote{} (`mcpflip-bench render` on that file writes this text again).{}",
        m.command,
        m.date,
        m.elapsed_s,
        if m.file.is_empty() {
            String::new()
        } else {
            format!(", `{}`", m.file)
        },
        if m.quick {
            " **Quick mode: a smoke test, one short run per figure; not the reference numbers.**"
        } else if !m.complete {
            " **A partial run (some workloads or targets only).**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "Every figure is the median of {} round{}{} with (min–max) beside it. Within a round every \
         target runs once, {}, then the next round starts (A B A B), so slow \
         drift of the machine hits every target alike. Loopback only; the upstream is mcpflip's \
         own `mcpflip upstream` (two of them: blue and green). The numbers are the ones the \
         command printed while it ran; `bench/README.md` explains each workload.\n",
        m.rounds,
        plural(m.rounds),
        {
            // W2 takes W1's count since 2026-12-07 (its p99 is the figure
            // that needs the rounds most); a file from before has W2's
            // rounds at the common count.
            let w2 = run
                .w2
                .as_ref()
                .and_then(|w| w.levels.first())
                .and_then(|l| l.cells.first())
                .map(|c| c.p99_ms.0.len())
                .filter(|&n| n == m.w1_rounds && n != m.rounds);
            match (m.w1_rounds != m.rounds, w2) {
                (true, Some(_)) => format!(
                    " ({} for W1, W2 and the runs made of W1: the access log, the multi-core \
                     section, W5)",
                    m.w1_rounds
                ),
                (true, None) => format!(
                    " ({} for W1 and the runs made of it: the access log, the multi-core section, W5)",
                    m.w1_rounds
                ),
                (false, _) => String::new(),
            }
        },
        if m.rotated && m.stepped {
            let first: Vec<Kind> = crate::bench::rotated(m.targets.len(), 0)
                .into_iter()
                .map(|i| m.targets[i])
                .collect();
            format!(
                "the first round in the order {}, each next one with every target one place on \
                 in the list {} (so each target takes every place once in {} rounds, and runs \
                 right after different targets from round to round)",
                labels(&first),
                labels(&m.targets),
                m.targets.len()
            )
        } else if m.rotated {
            format!(
                "the first round in the order {}, each next one starting one target further on",
                labels(&m.targets)
            )
        } else {
            format!("always in the order {}", labels(&m.targets))
        }
    );
    machine(&mut o, m);
    summary(&mut o, run);
    goals_table(&mut o, run);
    if let Some(w) = &run.w1 {
        w1_section(&mut o, m, w);
    }
    if let Some(w) = &run.w1_wrk {
        wrk_section(&mut o, run, w);
    }
    if let Some(st) = &run.w1_static {
        static_section(&mut o, run, st);
    }
    if let Some(a) = &run.access_log {
        access_log_section(&mut o, a);
    }
    if let Some(mc) = &run.multicore {
        multicore_section(&mut o, m, mc);
    }
    if let Some(p) = &run.profile {
        profile_section(&mut o, p);
    }
    if let Some(w) = &run.w2 {
        w2_section(&mut o, w);
        scale_section(&mut o, w);
    }
    if let Some(w) = &run.w3 {
        w3_section(&mut o, w);
    }
    if let Some(w) = &run.w4 {
        w4_section(&mut o, w);
    }
    if let Some(w) = &run.w5 {
        w5_section(&mut o, w);
    }
    if let Some(s) = &run.soak {
        soak::report::section(&mut o, s);
    }
    limits(&mut o, run);
    o
}

fn machine(o: &mut String, m: &Meta) {
    let _ = writeln!(o, "## Machine and versions\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(
        o,
        "| machine | {} |",
        if m.machine.hostname.is_empty() {
            "unknown"
        } else {
            &m.machine.hostname
        }
    );
    let _ = writeln!(
        o,
        "| CPU | {}, {} core{} |",
        m.machine.cpu_model,
        m.machine.cores,
        plural(m.machine.cores)
    );
    let _ = writeln!(o, "| memory | {:.1} GiB |", m.machine.memory_gib);
    if let Some(steal) = m.steal_s {
        let offered = m.elapsed_s * m.machine.cores as f64;
        let _ = writeln!(
            o,
            "| hypervisor steal | {steal:.1} s over the run ({:.1} % of {} cores × {:.0} s): time the host ran other guests while this one wanted its CPUs (`/proc/stat`); more than a few percent moves every timed figure |",
            if offered > 0.0 { 100.0 * steal / offered } else { 0.0 },
            m.machine.cores,
            m.elapsed_s
        );
    }
    let _ = writeln!(o, "| kernel | Linux {} |", m.machine.kernel);
    let _ = writeln!(
        o,
        "| cores | {}{} |",
        m.plan.describe(),
        if m.pinned {
            ""
        } else {
            " (**not pinned**: taskset was not found)"
        }
    );
    if let Some(s) = &m.shield {
        let _ = writeln!(o, "| CPU shield | {} |", shield_line(s));
    }
    let _ = writeln!(
        o,
        "| same core count for all | mcpflip `workers` = nginx `worker_processes` = HAProxy `nbthread` = Caddy `GOMAXPROCS` = {} (the multi-core section varies it) |",
        m.plan.workers()
    );
    for v in &m.versions {
        let _ = writeln!(o, "| {} | {} |", v.name, v.version.replace('|', "\\|"));
    }
    let _ = writeln!(
        o,
        "| load generators | this bench's own (Rust, tokio, raw HTTP/1.1 sockets, one thread per load-generator core) for every workload; wrk for the W1 cross-check |"
    );
    let _ = writeln!(
        o,
        "| file descriptors | RLIMIT_NOFILE {} for every process (hard limit {}) |\n",
        m.nofile, m.nofile_hard
    );
}

/// The processes the shield line names; the results file has them all.
const SHIELD_NAMES: usize = 6;

/// What the CPU shield did, in one line (the report's machine table, and
/// the run's own output).
pub fn shield_line(s: &Shielded) -> String {
    let mut line = format!(
        "{} thread{} of other processes ({}) moved off CPU {} for the run and put back after, \
         so that their work does not stall the proxy under test (`--no-shield` leaves them)",
        s.threads,
        plural(s.threads),
        match s.processes.len() {
            0 => "none".to_owned(),
            n if n <= SHIELD_NAMES => s.processes.join(", "),
            n => format!(
                "{} and {} more",
                s.processes[..SHIELD_NAMES].join(", "),
                n - SHIELD_NAMES
            ),
        },
        model::list(&s.cpus)
    );
    if s.left > 0 {
        let _ = write!(line, "; {} may run there alone and stayed", s.left);
    }
    if s.refused > 0 {
        let _ = write!(
            line,
            "; {} could not be moved (another user's: run as root to move them)",
            s.refused
        );
    }
    line
}

fn summary(o: &mut String, run: &Run) {
    let ratios = figures::ratios(run);
    let anchors = figures::anchors(run);
    if ratios.is_empty() || anchors.is_empty() {
        return;
    }
    let _ = writeln!(o, "## Summary: mcpflip against each (ratio of medians)\n");
    let _ = write!(o, "| workload | metric | better |");
    for k in &anchors {
        let _ = write!(o, " mcpflip / {} |", k.label());
    }
    let _ = write!(o, "\n|---|---|---|");
    for _ in &anchors {
        let _ = write!(o, "---|");
    }
    let _ = writeln!(o);
    // One row per (workload, metric), in the order the figures come.
    let mut rows: Vec<(&str, &str, &str)> = Vec::new();
    for r in &ratios {
        let row = (r.workload.as_str(), r.metric, r.better.word());
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    for (workload, metric, better) in rows {
        let _ = write!(o, "| {workload} | {metric} | {better} |");
        for &k in &anchors {
            let v = ratios
                .iter()
                .find(|r| r.workload == workload && r.metric == metric && r.against == k)
                .map_or(f64::NAN, |r| r.value);
            let _ = write!(o, " {} |", stats::ratio(v));
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "\n1.10× on requests/s means 10% more; 0.90× on a latency, memory or CPU figure means 10% \
         less. W3's failed requests and W4's deploy times are counts and durations, not ratios: \
         see their sections. Direct has no proxy process, so no CPU or memory of its own.\n"
    );
}

fn bound(g: &Goal, b: f64) -> String {
    let op = match g.better {
        figures::Better::Higher => "≥",
        figures::Better::Lower => "≤",
    };
    format!("{op} {}", g.unit.show(b))
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn goals_table(o: &mut String, run: &Run) {
    let goals = figures::goals(run);
    if goals.is_empty() {
        return;
    }
    let _ = writeln!(o, "## The targets of issue 14, and where mcpflip stands\n");
    let _ = writeln!(
        o,
        "Ratios are mcpflip's median over nginx's; the spread is the lowest and highest \
         round-by-round ratio. \"today\" is the figure when the issue was filed. W3, W4 and W5 are \
         the issue-5 targets that must stay met.\n"
    );
    let _ = writeln!(
        o,
        "| figure | today | must | stretch | measured | spread over the rounds | must | stretch |\n|---|---|---|---|---|---|---|---|"
    );
    for g in &goals {
        let spread = if g.rounds.0.iter().filter(|v| v.is_finite()).count() > 1 {
            format!(
                "{}–{}",
                g.unit.show(g.rounds.min()),
                g.unit.show(g.rounds.max())
            )
        } else {
            "—".to_owned()
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} |",
            g.figure,
            g.today,
            bound(g, g.must),
            g.stretch.map_or("—".to_owned(), |s| bound(g, s)),
            g.unit.show(g.value),
            g.detail,
            spread,
            met(g.must_met()),
            match g.stretch {
                Some(_) => met(g.stretch_met()),
                None => "—",
            }
        );
    }
    let _ = writeln!(o);
}

/// One W1 table (a concurrency, one load generator).
fn w1_table(o: &mut String, m: &Meta, cells: &[W1Cell]) {
    let cpu0 = model::list(&m.plan.upstream);
    let stolen = cells.iter().any(|c| !c.steal_pct.0.is_empty());
    let _ = writeln!(
        o,
        "| target | requests/s | p50 ms | p99 ms | proxy CPU µs per request | proxy busy | CPU {cpu0} (upstream + load gen) | {}failed |\n|---|---|---|---|---|---|---|---|{}",
        if stolen { "stolen % | " } else { "" },
        if stolen { "---|" } else { "" },
    );
    for cell in cells {
        let cores = Series(
            cell.upstream_cores
                .0
                .iter()
                .zip(&cell.loadgen_cores.0)
                .map(|(a, b)| a + b)
                .collect(),
        );
        let direct = cell.target == Kind::Direct;
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {}{} |",
            cell.target.label(),
            cell.rps.show(stats::int),
            cell.p50_ms.show(stats::ms),
            cell.p99_ms.show(stats::ms),
            if direct {
                "—".to_owned()
            } else {
                cell.cpu_us.show(stats::two)
            },
            if direct {
                "—".to_owned()
            } else {
                cell.proxy_busy.show(pct)
            },
            cores.show(stats::two),
            if stolen {
                format!("{} | ", cell.steal_pct.show(stats::one))
            } else {
                String::new()
            },
            cell.failed
        );
    }
    let _ = writeln!(o);
}

fn w1_section(o: &mut String, m: &Meta, w: &W1) {
    let _ = writeln!(o, "## W1 — request/response\n");
    let _ = writeln!(
        o,
        "`tools/call get_document` POSTs (Streamable HTTP, one session opened through the target, \
         ~110-byte request, ~110-byte JSON answer) over keep-alive connections, closed loop: each \
         connection sends its next request when the answer is in. {:.1} s warm-up, then {:.1} s \
         measured per run. Latency is from the first byte sent to the last byte of the answer: the \
         service time at that load (a closed loop cannot see queueing before the send; W3 uses an \
         open loop). \"proxy busy\" is the proxy's CPU time over the window divided by its \
         cores, and \"proxy CPU µs per request\" its CPU time over the requests answered (the \
         efficiency figure, which holds even when another core is the bottleneck); \"CPU {}\" \
         is the upstream's plus the load generator's, in cores.\n",
        w.warmup_s,
        w.measure_s,
        model::list(&m.plan.upstream),
    );
    steal_rule(
        o,
        "run",
        w.levels
            .iter()
            .flat_map(|l| l.cells.iter())
            .map(|c| (&c.steal_pct, c.remeasured)),
    );
    for l in &w.levels {
        let _ = writeln!(o, "**c = {}**\n", l.conc);
        w1_table(o, m, &l.cells);
    }
}

fn wrk_section(o: &mut String, run: &Run, w: &W1) {
    let m = &run.meta;
    let _ = writeln!(o, "### W1 with wrk (the cross-check)\n");
    let _ = writeln!(
        o,
        "The same requests from a second load generator, in the same rounds: `{}` with a Lua \
         script that POSTs the same `tools/call` with the target's `Mcp-Session-Id`, pinned to \
         the load generator's cores, {:.0} s per run (wrk has no warm-up; the run of this bench's \
         own generator just before it warmed the target). wrk's latency is its own (from the \
         request's send; it also hides queueing before the send).\n",
        w.generator, w.measure_s
    );
    for l in &w.levels {
        let _ = writeln!(o, "**c = {}, wrk**\n", l.conc);
        w1_table(o, m, &l.cells);
        // Both generators' ratios side by side.
        let ours = run.w1.as_ref();
        let mut lines = Vec::new();
        for k in figures::anchors(run) {
            let ratio = |w: &W1| -> f64 {
                match (w.cell(l.conc, Kind::Mcpflip), w.cell(l.conc, k)) {
                    (Some(a), Some(b)) => a.rps.median() / b.rps.median(),
                    _ => f64::NAN,
                }
            };
            lines.push(format!(
                "mcpflip / {}: {} with this bench's generator, {} with wrk",
                k.label(),
                stats::ratio(ours.map_or(f64::NAN, ratio)),
                stats::ratio(ratio(w))
            ));
        }
        if !lines.is_empty() {
            let _ = writeln!(
                o,
                "Requests/s at c={}, both load generators: {}.\n",
                l.conc,
                lines.join("; ")
            );
        }
    }
}

/// mcpflip over `k` at `conc` in `w`: the ratio of the medians of `figure`,
/// and the spread of the round-by-round ratios.
fn ratio_and_spread(w: &W1, conc: usize, k: Kind, figure: fn(&W1Cell) -> &Series) -> String {
    match (w.cell(conc, Kind::Mcpflip), w.cell(conc, k)) {
        (Some(a), Some(b)) => {
            let (value, rounds) = figures::ratio_of(figure(a), figure(b));
            format!(
                "{} ({}–{})",
                stats::ratio(value),
                stats::two(rounds.min()),
                stats::two(rounds.max())
            )
        }
        _ => "—".to_owned(),
    }
}

fn static_section(o: &mut String, run: &Run, st: &W1Static) {
    let m = &run.meta;
    let cpu0 = model::list(&m.plan.upstream);
    let conc = st.ours.concs().first().copied().unwrap_or(64);
    let _ = writeln!(
        o,
        "### W1 behind a static upstream: the proxy as the bound
"
    );
    let _ = writeln!(
        o,
        "Not one of issue 14's rows, which use the MCP upstream above: the same request at c={conc}, \
         in rounds of their own, with every proxy in front of one static upstream instead: {}. It \
         runs where the MCP upstreams run (CPU {cpu0}, beside the load generator) and does less \
         work per request than the demo server, so that the proxy's own core, not CPU {cpu0}, is \
         the first to fill (bench/PROFILE.md §60). A run measured the proxy where its \"proxy \
         busy\" is near 100 %; where CPU {cpu0} is near {} core{} instead, it measured that core \
         again. Direct is left out: it has no proxy to bound.\n",
        st.upstream,
        m.plan.upstream.len(),
        plural(m.plan.upstream.len()),
    );
    steal_rule(
        o,
        "run",
        std::iter::once(&st.ours)
            .chain(st.wrk.as_ref())
            .flat_map(|w| w.levels.iter())
            .flat_map(|l| l.cells.iter())
            .map(|c| (&c.steal_pct, c.remeasured)),
    );
    for (w, what) in std::iter::once((&st.ours, "this bench's generator"))
        .chain(st.wrk.as_ref().map(|w| (w, "wrk")))
    {
        for l in &w.levels {
            let _ = writeln!(o, "**c = {}, {what}, static upstream**\n", l.conc);
            w1_table(o, m, &l.cells);
        }
    }
    let mut lines = Vec::new();
    for k in figures::anchors(run) {
        if st.ours.cell(conc, k).is_none() {
            continue;
        }
        let both = |figure: fn(&W1Cell) -> &Series| {
            format!(
                "{} with this bench's generator{}",
                ratio_and_spread(&st.ours, conc, k, figure),
                st.wrk
                    .as_ref()
                    .filter(|w| w.cell(conc, k).is_some())
                    .map_or(String::new(), |w| format!(
                        ", {} with wrk",
                        ratio_and_spread(w, conc, k, figure)
                    ))
            )
        };
        lines.push(format!(
            "- mcpflip / {}: requests/s {}; proxy CPU per request {}.",
            k.label(),
            both(|c| &c.rps),
            both(|c| &c.cpu_us)
        ));
    }
    if !lines.is_empty() {
        let _ = writeln!(
            o,
            "Ratios of the medians, with the round-by-round spread:\n\n{}\n",
            lines.join("\n")
        );
    }
}

fn access_log_section(o: &mut String, a: &AccessLog) {
    let _ = writeln!(o, "## W1 with mcpflip's access log on\n");
    let _ = writeln!(
        o,
        "mcpflip at c={} with its access log on ({}) and off (`access_log = \"off\"`), two processes \
         with the same config side by side, run back to back in each round ({:.1} s measured \
         each). The log goes to a file (the process's stderr), as under a service manager; it \
         wrote {} over the runs.\n",
        a.conc,
        a.how,
        a.measure_s,
        bytes(a.log_bytes)
    );
    let _ = writeln!(
        o,
        "| access log | requests/s | proxy CPU µs per request |\n|---|---|---|"
    );
    let _ = writeln!(
        o,
        "| off | {} | {} |",
        a.off_rps.show(stats::int),
        a.off_cpu_us.show(stats::two)
    );
    let _ = writeln!(
        o,
        "| on | {} | {} |",
        a.on_rps.show(stats::int),
        a.on_cpu_us.show(stats::two)
    );
    let ratio = Series::per_round_ratio(&a.on_rps, &a.off_rps);
    let _ = writeln!(
        o,
        "\nOn ÷ off: {} of the requests/s ({} round by round), {} of the CPU per request; {} \
         failed requests.\n",
        stats::ratio(a.on_rps.median() / a.off_rps.median()),
        ratio.show(stats::two),
        stats::ratio(a.on_cpu_us.median() / a.off_cpu_us.median()),
        a.failed
    );
}

pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} bytes")
    }
}

fn multicore_section(o: &mut String, m: &Meta, mc: &MultiCore) {
    let counts: Vec<String> = mc.levels.iter().map(|l| l.workers.to_string()).collect();
    let _ = writeln!(o, "## Multi-core: {} workers each\n", counts.join(" and "));
    let _ = writeln!(
        o,
        "On {} ({}, {} core{} for the bench), W1 at c={} with every proxy given the same worker \
         count: mcpflip `[proxy] workers`, nginx `worker_processes`, HAProxy `nbthread`. With \
         fewer cores than the proxy needs of its own, its workers are not pinned and share every \
         core with the upstreams and the load generator (on 2 cores that is the only way to give \
         it 2 workers); what it then gains from a second worker is what the others leave free. \
         The same command on a larger machine gives every worker count its own cores. {:.1} s \
         measured per run, both load generators.\n",
        if m.machine.hostname.is_empty() {
            "this machine"
        } else {
            &m.machine.hostname
        },
        m.machine.cpu_model,
        m.machine.cores,
        plural(m.machine.cores),
        mc.conc,
        mc.measure_s
    );
    for l in &mc.levels {
        let _ = writeln!(
            o,
            "**{} worker{}**: proxy on CPU {}{}{}\n",
            l.workers,
            plural(l.workers),
            model::list(&l.proxy_cpus),
            if l.dedicated {
                " (its own cores)"
            } else {
                " (unpinned: shared with the upstreams and the load generator)"
            },
            if l.from_w1 {
                "; the setup of W1 above, so these are W1's c=64 figures"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "| target | requests/s | requests/s, wrk | proxy CPU µs per request | …, wrk | p99 ms | p99 ms, wrk | proxy busy |\n|---|---|---|---|---|---|---|---|"
        );
        for c in &l.ours {
            let w = l.wrk.iter().find(|x| x.target == c.target);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                c.target.label(),
                c.rps.show(stats::int),
                w.map_or("—".to_owned(), |w| w.rps.show(stats::int)),
                c.cpu_us.show(stats::two),
                w.map_or("—".to_owned(), |w| w.cpu_us.show(stats::two)),
                c.p99_ms.show(stats::ms),
                w.map_or("—".to_owned(), |w| w.p99_ms.show(stats::ms)),
                c.proxy_busy.show(pct)
            );
        }
        let get = |cells: &[W1Cell], k: Kind| cells.iter().find(|c| c.target == k).cloned();
        let mut lines = Vec::new();
        for k in [Kind::Nginx, Kind::Haproxy] {
            let r = |cells: &[W1Cell]| match (get(cells, Kind::Mcpflip), get(cells, k)) {
                (Some(a), Some(b)) => a.rps.median() / b.rps.median(),
                _ => f64::NAN,
            };
            if get(&l.ours, k).is_some() {
                lines.push(format!(
                    "mcpflip / {}: {} (wrk {})",
                    k.label(),
                    stats::ratio(r(&l.ours)),
                    stats::ratio(r(&l.wrk))
                ));
            }
        }
        let _ = writeln!(o);
        if !lines.is_empty() {
            let _ = writeln!(o, "Requests/s ratios: {}.\n", lines.join("; "));
        }
    }
}

fn profile_section(o: &mut String, ps: &Profiles) {
    let p = &ps.mcpflip;
    let _ = writeln!(o, "### Where mcpflip's CPU goes under W1 (c=64)\n");
    let _ = writeln!(
        o,
        "`perf record -F 999 -p <pid>` for {:.0} s while W1 ran at c=64 ({}). On loopback the \
         kernel's share is large: each proxied request costs two `writev` and two `recvfrom`, and \
         the receiving side's TCP work and the wake-up of its reader run inside the sender's \
         `writev`.\n",
        p.seconds, p.perf
    );
    let _ = writeln!(
        o,
        "| proxy | req/s during the profile | CPU µs per request | in the kernel | in user space |\n|---|---|---|---|---|"
    );
    for (name, q) in [("mcpflip", Some(p)), ("nginx", ps.nginx.as_ref())] {
        let Some(q) = q else { continue };
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} µs ({:.0}%) | {} µs ({:.0}%) |",
            stats::int(q.rps),
            stats::two(q.cpu_us),
            stats::two(q.cpu_us * q.kernel_share),
            q.kernel_share * 100.0,
            stats::two(q.cpu_us * (1.0 - q.kernel_share)),
            (1.0 - q.kernel_share) * 100.0
        );
    }
    if let Some(n) = &ps.nginx {
        let (mk, mu) = (p.cpu_us * p.kernel_share, p.cpu_us * (1.0 - p.kernel_share));
        let (nk, nu) = (n.cpu_us * n.kernel_share, n.cpu_us * (1.0 - n.kernel_share));
        let _ = writeln!(
            o,
            "\nmcpflip's kernel time per request is {:.2}× nginx's and its user-space time {:.2}× \
             nginx's. At its present kernel cost per request, mcpflip with no user-space cost at all \
             would do {:.2}× nginx's requests/s here (nginx's total ÷ mcpflip's kernel part): the \
             ceiling of W1's ratio on this setup unless the kernel part shrinks too (fewer \
             syscalls or wake-ups per request).\n",
            mk / nk,
            mu / nu,
            n.cpu_us / mk
        );
    }
    let _ = writeln!(
        o,
        "mcpflip's user-space self time by component (share of all its samples):\n\n| % | component |\n|---|---|"
    );
    for c in p.components.iter().filter(|c| c.percent >= 0.3) {
        let _ = writeln!(o, "| {:.1} | {} |", c.percent, c.name);
    }
    let _ = writeln!(
        o,
        "\nmcpflip's top symbols by self time:\n\n| self % | where | symbol |\n|---|---|---|"
    );
    for s in &p.top {
        let _ = writeln!(
            o,
            "| {:.2} | {} | `{}` |",
            s.percent,
            s.place,
            s.symbol.replace('|', "\\|")
        );
    }
    let _ = writeln!(o);
}

/// The rule for a run the hypervisor stole from (W1's runs, W2's windows),
/// with what it did in this run, from each cell's kept shares and the count
/// of runs measured again; nothing for a results file without them. Says
/// whether the cells have a "stolen %" column.
fn steal_rule<'a>(
    o: &mut String,
    what: &str,
    cells: impl Iterator<Item = (&'a Series, usize)>,
) -> bool {
    let (mut kept, mut remeasured, mut over) = (0, 0, 0);
    for (pct, again) in cells {
        kept += pct.0.len();
        remeasured += again;
        over += pct.0.iter().filter(|&&p| p > STEAL_LIMIT * 100.0).count();
    }
    if kept == 0 {
        return false;
    }
    let limit = stats::int(STEAL_LIMIT * 100.0);
    let _ = writeln!(
        o,
        "A stall of the guest's CPUs (the hypervisor running another guest: `/proc/stat`'s \
         steal) sets a p99, and takes from a throughput, for whichever target it falls on \
         (bench/PROFILE.md §55). So a {what} that lost more than {limit} % of its CPU time (its \
         length × the machine's CPUs) to steal is measured again, up to {STEAL_TRIES} {what}s \
         for one target's round and alike for every target, and the least stolen is kept. Here \
         {remeasured} {what}{} measured again for the {kept} kept, and {over} kept {what}{} still \
         lost more than {limit} % (the \"stolen %\" column: each kept {what}'s share).\n",
        if remeasured == 1 { " was" } else { "s were" },
        if over == 1 { "" } else { "s" },
    );
    true
}

fn w2_section(o: &mut String, w: &W2) {
    let _ = writeln!(o, "## W2 — SSE streams\n");
    let _ = writeln!(
        o,
        "N concurrent `GET /ticker?interval_ms={}&pad={}` streams (one event every {} ms per \
         stream, ~{} bytes each, carrying the upstream's send time `ts_us`{}). Each run starts the \
         proxy{} afresh; memory per stream = (proxy RSS with the N streams open − RSS before) / N, \
         summed over the proxy's processes (nginx: master and workers). Relay latency = client \
         clock at arrival − `ts_us`, every event of a {:.1} s window. CPU per 1,000 events = the \
         proxy's CPU time over the window (every thread's run time from `/proc/<pid>/task/*/schedstat`, in ns) per 1,000 events relayed. \
         Clients connect from 127.0.0.2.. so their side never runs out of ports.\n",
        w.interval_ms,
        w.pad,
        w.interval_ms,
        w.pad + 60,
        if w.phased {
            format!(
                "; stream i's events come when the wall clock is i × {} / N ms into its {} ms \
                 interval, the upstream's `phase_ms`, so every target relays the same events at \
                 the same times, however its streams opened",
                w.interval_ms, w.interval_ms
            )
        } else {
            String::new()
        },
        if w.phased { " and the two upstreams" } else { "" },
        w.window_s,
    );
    let settles: Vec<f64> = w
        .levels
        .iter()
        .flat_map(|l| l.cells.iter())
        .flat_map(|c| c.settle_s.0.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    if !settles.is_empty() {
        let lo = settles.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = settles.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            o,
            "Before each run the bench waits until every proxy and the upstreams have used under \
             2 % of a core for 300 ms ({}–{} s here): the last run's N streams close at its end, \
             and their teardown (for Caddy after 9,000 streams, about 2 s and a garbage \
             collection) would otherwise run on the next target's core during its window.\n",
            stats::one(lo),
            stats::one(hi),
        );
    }
    let stolen = steal_rule(
        o,
        "window",
        w.levels
            .iter()
            .flat_map(|l| l.cells.iter())
            .map(|c| (&c.steal_pct, c.remeasured)),
    );
    for l in &w.levels {
        let _ = writeln!(o, "**N = {}**\n", stats::int(l.n as f64));
        let _ = writeln!(
            o,
            "| target | memory per stream (KiB) | relay p50 ms | relay p99 ms | proxy CPU ms per 1k events | time to open N (s) | {}failed / cut |\n|---|---|---|---|---|---|---|{}",
            if stolen { "stolen % | " } else { "" },
            if stolen { "---|" } else { "" },
        );
        for c in &l.cells {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {}{} / {} |",
                c.target.label(),
                c.mem_kib.show(stats::two),
                c.p50_ms.show(stats::ms),
                c.p99_ms.show(stats::ms),
                c.cpu_per_1k_ms.show(stats::two),
                c.setup_s.show(stats::one),
                if stolen {
                    format!("{} | ", c.steal_pct.show(stats::one))
                } else {
                    String::new()
                },
                c.failed,
                c.cut
            );
        }
        let _ = writeln!(o);
    }
}

/// Streams the projection is for.
pub const PROJECTED_STREAMS: f64 = 100_000.0;

/// RSS with `streams` open, GiB: the RSS before plus `streams` × the
/// per-stream growth measured at the largest N.
pub fn projected_gib(rss_before_kib: f64, per_stream_kib: f64, streams: f64) -> f64 {
    (rss_before_kib + per_stream_kib * streams) / 1024.0 / 1024.0
}

fn scale_section(o: &mut String, w: &W2) {
    let Some(n) = w.largest() else { return };
    let _ = writeln!(o, "### Scale: the largest N, and 100,000 streams\n");
    let _ = writeln!(
        o,
        "The most streams one proxy process can hold here: {} ({}). {}The projection \
         for {} streams is linear: the RSS before the streams plus {} × the memory per stream \
         measured at N = {}. Holding them for real also needs {} file descriptors in the proxy \
         (two per stream) and more than one upstream address (one address pair has ~28,000 \
         ephemeral ports).\n",
        stats::int(w.max_n as f64),
        w.max_reason,
        if n < w.max_n {
            format!(
                "This run measured up to N = {} (quick mode or a lower level set). ",
                stats::int(n as f64)
            )
        } else {
            String::new()
        },
        stats::int(PROJECTED_STREAMS),
        stats::int(PROJECTED_STREAMS),
        stats::int(n as f64),
        stats::int(2.0 * PROJECTED_STREAMS)
    );
    let _ = writeln!(
        o,
        "| target | N | memory per stream (KiB) | relay p99 ms | RSS before (MiB) | projected RSS for {} streams (GiB) |\n|---|---|---|---|---|---|",
        stats::int(PROJECTED_STREAMS)
    );
    let Some(level) = w.levels.iter().find(|l| l.n == n) else {
        return;
    };
    for c in &level.cells {
        if c.target == Kind::Direct {
            continue;
        }
        let before = c.rss_before_kib.median();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            c.target.label(),
            stats::int(n as f64),
            c.mem_kib.show(stats::two),
            c.p99_ms.show(stats::ms),
            stats::one(before / 1024.0),
            stats::two(projected_gib(before, c.mem_kib.median(), PROJECTED_STREAMS))
        );
    }
    let _ = writeln!(o);
}

fn w3_section(o: &mut String, w: &W3) {
    let _ = writeln!(o, "## W3 — flip under load\n");
    let _ = writeln!(
        o,
        "An open-loop load of {} requests/s over {} keep-alive connections (session-less \
         `tools/call whoami` on the upstream's `/stateless` endpoint, so every request follows \
         the flips) while the active slot changes {} times, one flip every {} ms: mcpflip \
         `weights` over its control socket, nginx config rewrite + `nginx -s reload`, HAProxy \
         `set server slots/<slot> weight` over its runtime API, Caddy `POST /load` with the other \
         upstream. Direct runs the same load without flips (the baseline). Latency counts from \
         each request's *scheduled* send time (coordinated omission corrected). A request fails \
         when the connection closes before its answer, breaks, times out (10 s) or gets a non-2xx. \
         An idle keep-alive connection found closed before reuse is reopened without a failure \
         (\"reconnects\"), as a careful client does.\n",
        stats::int(w.rate),
        w.conns,
        stats::int(w.flips as f64),
        w.every_ms
    );
    let _ = writeln!(
        o,
        "| target | failed requests per run | p50 ms | p99 ms | max ms | time for the flips (s) | answers blue / green | reconnects | failures by cause |\n|---|---|---|---|---|---|---|---|---|"
    );
    for c in &w.cells {
        let causes = c.failures.describe();
        let mut flip_err = match (&c.flip_error, c.flip_errors) {
            (Some(e), n) if n > 0 => format!("; {n} flips failed: {e}"),
            _ => String::new(),
        };
        if let Some(first) = c.crashes.first() {
            let _ = write!(
                flip_err,
                "; **the process died in {} of {} runs** (`{}`)",
                c.crashes.len(),
                c.failed.0.len(),
                first.replace('`', "'")
            );
        }
        let _ = writeln!(
            o,
            "| {} | {} (of {} per run) | {} | {} | {} | {} | {} / {} | {} | {}{} |",
            c.target.label(),
            c.failed.show(stats::int),
            stats::int(c.requests as f64 / c.failed.0.len().max(1) as f64),
            c.p50_ms.show(stats::ms),
            c.p99_ms.show(stats::ms),
            c.max_ms.show(stats::ms),
            if c.target == Kind::Direct {
                "no flips".to_owned()
            } else {
                c.flip_time_s.show(stats::two)
            },
            stats::int(c.by_slot[0] as f64),
            stats::int(c.by_slot[1] as f64),
            stats::int(c.reconnects as f64),
            if causes.is_empty() {
                "—".to_owned()
            } else {
                causes
            },
            flip_err.replace('|', "\\|"),
        );
    }
    let _ = writeln!(o);
}

fn w4_section(o: &mut String, w: &W4) {
    let _ = writeln!(o, "## W4 — deploy time\n");
    let _ = writeln!(
        o,
        "The active slot holds {} MCP sessions with open streams (half legacy SSE `GET /sse`, \
         half Streamable HTTP `initialize` + `GET /mcp`); at t0 the deploy starts and the \
         sessions end at random times within {:.1} s. mcpflip: the deploy is `flip <other> \
         --no-probe --drain --wait` on the control socket, which answers when the old slot is \
         drained; deploy time = answer − t0, detection latency = answer − the last session's \
         close (both on the load generator's clock). nginx, HAProxy, Caddy, direct: nothing \
         reports a drain, so the guide's script switches and then sleeps a fixed {:.0} s; the same \
         sessions run through them once per round, and the idle wait is {:.0} s − the last close.\n",
        w.sessions, w.span_s, w.guide_sleep_s, w.guide_sleep_s
    );
    let _ = writeln!(
        o,
        "| target | deploys | deploy time (s) | last session closed at (s) | detection latency p50 / p99 ms | waited after the last session (s) | failed / cut sessions |\n|---|---|---|---|---|---|---|"
    );
    for c in &w.cells {
        let last = Series(c.last_close_s.clone());
        let (deploy, detection, waited) = if c.target == Kind::Mcpflip {
            let waited = Series(c.detection_ms.iter().map(|d| d / 1000.0).collect());
            (
                Series(c.deploy_s.clone()).show(|v| format!("{v:.3}")),
                format!(
                    "{} / {}",
                    stats::ms(stats::quantile(&c.detection_ms, 0.5)),
                    stats::ms(stats::quantile(&c.detection_ms, 0.99))
                ),
                waited.show(|v| format!("{v:.4}")),
            )
        } else {
            let waited = Series(c.last_close_s.iter().map(|l| w.guide_sleep_s - l).collect());
            (
                format!("{:.0} (fixed sleep)", w.guide_sleep_s),
                "— (no drain signal)".to_owned(),
                waited.show(stats::one),
            )
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} / {} |",
            c.target.label(),
            c.last_close_s.len(),
            deploy,
            last.show(|v| format!("{v:.3}")),
            detection,
            waited,
            c.failed,
            c.cut
        );
    }
    let _ = writeln!(
        o,
        "\nmcpflip's p99 over {} deploys is the largest value but one at most; run more rounds \
         (`--rounds`) for a finer tail. A session longer than {:.0} s would be cut by the fixed \
         sleep; mcpflip waits for it (up to `[drain] deadline`).\n",
        w.cell(Kind::Mcpflip).map_or(0, |c| c.detection_ms.len()),
        w.guide_sleep_s
    );
}

fn w5_section(o: &mut String, w: &W5) {
    let _ = writeln!(o, "## W5 — affinity cost\n");
    let _ = writeln!(
        o,
        "W1 at c={}, first with every request naming one session, then with requests cycling \
         through {} distinct sessions (opened through mcpflip in {:.1} s; mcpflip gets its \
         tagged ids, which it decodes and strips on every request; the other targets get the \
         upstream's own ids, which they pass through). The two runs are back to back in each \
         round; the ratio is taken per round.\n",
        w.conns,
        stats::int(w.sessions as f64),
        w.created_in_s
    );
    let _ = writeln!(
        o,
        "| target | req/s, 1 session | req/s, {n} sessions | ratio | proxy CPU µs per request, 1 session | …, {n} sessions | CPU ratio | failed |\n|---|---|---|---|---|---|---|---|",
        n = stats::int(w.sessions as f64)
    );
    let capture = w.capture.as_ref().map(|c| ("mcpflip, capture on", &c.cell));
    let rows = w.cells.iter().map(|c| (c.target.label(), c)).chain(capture);
    for (label, c) in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            label,
            c.one.show(stats::int),
            c.many.show(stats::int),
            c.ratio.show(stats::two),
            c.cpu_one_us.show(stats::two),
            c.cpu_many_us.show(stats::two),
            c.cpu_ratio.show(stats::two),
            c.failed
        );
    }
    let _ = writeln!(
        o,
        "\nThe req/s ratio is the issue's measure; when the core of the upstream and the load generator is near \
         saturation it also moves with the upstream's cost, so the proxy's own CPU per request \
         (lower is better; a CPU ratio of 1.00 means affinity costs nothing) is shown beside it."
    );
    if let Some(c) = &w.capture {
        let _ = writeln!(
            o,
            "\n**Capture on** (live session migration, issue 16): {}. It keeps each session's \
             `initialize` for a replay, and each request of a session touches the session's idle \
             clock in a sharded map. Its {} sessions were opened through it ({} captured, {} bytes \
             of captured bodies, {} per session). Memory per captured session: its RSS grew by {} \
             KiB over opening them, **{} bytes per session**{}.",
            c.how,
            stats::int(w.sessions as f64),
            stats::int(c.captured as f64),
            stats::int(c.captured_bytes as f64),
            stats::int(c.body_bytes_per_session()),
            stats::int(c.rss_growth_kib),
            stats::int(c.bytes_per_session()),
            c.bytes_per_session_off(w.sessions)
                .map_or(String::new(), |off| format!(
                    " (mcpflip with capture off grew {} bytes per session opened through it: \
                     connections and allocator, not sessions)",
                    stats::int(off)
                )),
        );
    }
    let _ = writeln!(o);
}

fn limits(o: &mut String, run: &Run) {
    let m = &run.meta;
    let _ = writeln!(o, "## What limited each result\n");
    let cores = m.machine.cores;
    let _ = writeln!(
        o,
        "- **The machine.** {} core{} for everything: {}. The proxies are compared on equal \
         terms (same cores, same workers, same upstreams, same load generator), but absolute \
         numbers are far below what any of them does on a larger machine.",
        cores,
        plural(cores),
        m.plan.describe()
    );
    if let Some(w) = &run.w1 {
        for l in &w.levels {
            let mut parts = Vec::new();
            for cell in &l.cells {
                let k = cell.target;
                let cpu0 = cell.upstream_cores.median() + cell.loadgen_cores.median();
                let busy = cell.proxy_busy.median();
                let shared = m.plan.upstream == m.plan.loadgen;
                let cpu0_full = shared && cpu0 >= 0.9 * m.plan.upstream.len() as f64;
                let why = if k == Kind::Direct {
                    if cpu0_full {
                        "the upstream and the load generator, which share their core".to_owned()
                    } else {
                        "round trips (the cores are not saturated)".to_owned()
                    }
                } else if busy >= 0.9 {
                    format!("its own CPU ({} busy)", pct(busy))
                } else if cpu0_full {
                    format!(
                        "the upstream + load generator core ({} cores busy; proxy {} busy)",
                        stats::two(cpu0),
                        pct(busy)
                    )
                } else {
                    format!("latency, not CPU (proxy {} busy)", pct(busy))
                };
                parts.push(format!("{}: {why}", k.label()));
            }
            let _ = writeln!(o, "- **W1 c={}.** {}.", l.conc, parts.join("; "));
        }
    }
    if run.profile.is_some() {
        let _ = writeln!(
            o,
            "- **mcpflip under W1**: see the profile above for the functions that hold its CPU."
        );
    }
    if let Some(w) = &run.w2 {
        let _ = writeln!(
            o,
            "- **W2.** The event rate is low on purpose (one event per stream every {} ms), so \
             relay latency is not CPU-bound; memory per stream is each proxy's per-connection \
             state (two sockets' buffers, the request/response state) and what its allocator \
             keeps. The largest N: {}.",
            w.interval_ms, w.max_reason
        );
    }
    if run.w3.is_some() {
        let _ = writeln!(
            o,
            "- **W3.** Failures come from the flip mechanism, not from load (the rate is far below \
             every target's capacity): an nginx reload starts new workers and retires the old \
             ones, which close their keep-alive connections; Caddy's `/load` replaces its HTTP \
             server the same way; HAProxy and mcpflip change weights in place."
        );
    }
    if run.w4.is_some() {
        let _ = writeln!(
            o,
            "- **W4.** mcpflip's deploy time is the longest session plus the detection latency \
             (a stream's close reaching the proxy, the guard drop waking the drain, the reply on \
             the Unix socket), measured on one clock. The anchors have no drain signal at all."
        );
    }
    if let Some(w) = &run.w5 {
        let _ = writeln!(
            o,
            "- **W5.** Affinity lives in the session id; there is no table to grow. Around the \
             proxy, the upstream looks each of the 100,000 sessions up (the same for every target: \
             *direct*'s ratio is that cost alone), and when the core it shares with the load \
             generator answers more slowly a proxy sleeps and wakes more per request, so its CPU \
             per request moves too.{}",
            if w.capture.is_some() {
                " With capture on (live session migration) mcpflip does keep a table, of captured \
                 sessions: its memory per session is measured beside the W5 table."
            } else {
                ""
            }
        );
    }
    let shielded = match &run.meta.shield {
        Some(s) if s.threads > 0 => format!(
            " Their threads were kept off the proxy's CPU {} for the run (the CPU shield), so \
             they stall the upstreams and the load generator, every target alike, and no longer \
             the proxy under test alone; per-CPU kernel work and the host's own scheduling can \
             still stall any core.",
            model::list(&s.cpus)
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "- **Noise.** A shared virtual machine: other processes (builds, tests) may run beside \
         the benchmark; the min–max ranges show how much that moved each figure.{shielded}\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn the_targets_table_shows_ratio_spread_and_status() {
        let text = render(&fixture::run());
        for row in [
            "| W1 c=64 requests/s vs nginx, 1 worker each | 0.83× | ≥ 1.00× | ≥ 1.25× | 0.83× (40,000 vs 48,000 req/s) | 0.83×–0.84× | **not met** | **not met** |",
            "| W1 c=64 requests/s vs nginx, 2 workers each, wrk | 0.70× | ≥ 1.00× | ≥ 1.25× | 1.30× (65,000 vs 50,000 req/s) | 1.30×–1.30× | **met** | **met** |",
            "| W2 memory per open SSE stream vs nginx, N=9,000 | 2.45× | ≤ 1.00× | ≤ 0.50× | 0.46× (6.50 vs 14.00 KiB) | 0.46×–0.46× | **met** | **met** |",
            "| W1 c=1 p99 vs nginx | 1.29× | ≤ 1.00× | — | 0.83× (0.250 vs 0.300 ms) | 0.83×–0.83× | **met** | — |",
            "| W4 drain detection p99 | 0.741 ms | ≤ 5.00 ms | — | 0.900 ms (p50 0.580 ms over 12 deploys) | 0.500 ms–0.900 ms | **met** | — |",
        ] {
            assert!(text.contains(row), "missing row\n{row}\nin\n{text}");
        }
    }

    #[test]
    fn the_report_names_the_machine_and_both_load_generators() {
        let text = render(&fixture::run());
        assert!(text.contains("| machine | bench-host |"));
        assert!(
            text.contains("| hypervisor steal | 24.0 s over the run (2.0 % of 2 cores × 600 s)"),
            "{text}"
        );
        let mut older = fixture::run();
        older.meta.steal_s = None;
        older.meta.shield = None;
        assert!(!render(&older).contains("hypervisor steal"));
        assert!(!render(&older).contains("CPU shield"));
        assert!(
            text.contains(
                "| CPU shield | 6 threads of other processes (process_api, sshd) moved off CPU 1 \
                 for the run and put back after"
            ),
            "{text}"
        );
        let mut partly = fixture::run();
        if let Some(s) = partly.meta.shield.as_mut() {
            s.refused = 3;
        }
        assert!(render(&partly).contains("; 3 could not be moved (another user's"));
        if let Some(s) = partly.meta.shield.as_mut() {
            s.processes = (0..9).map(|i| format!("p{i}")).collect();
        }
        assert!(render(&partly).contains("(p0, p1, p2, p3, p4, p5 and 3 more) moved off CPU 1"));
        assert!(text.contains("Their threads were kept off the proxy's CPU 1 for the run"));
        assert!(!render(&older).contains("Their threads were kept off"));
        assert!(text.contains(
            "from the results file it wrote, `bench/results/2026-11-24T2205Z-2c-amd-epyc.json`"
        ));
        assert!(text.contains("| CPU | AMD EPYC @ 2.60 GHz, 2 cores |"));
        assert!(text.contains("### W1 with wrk (the cross-check)"));
        assert!(text.contains("mcpflip / nginx: 0.83× with this bench's generator, 1.11× with wrk"));
        assert!(text.contains("## Multi-core: 1 and 2 workers each"));
        assert!(text.contains("**2 workers**: proxy on CPU 0,1 (unpinned"));
        assert!(text.contains("Requests/s ratios: mcpflip / nginx: 1.20× (wrk 1.30×)"));
        assert!(!text.contains("Quick mode"));
    }

    #[test]
    fn the_scale_row_projects_100k_streams() {
        let text = render(&fixture::run());
        // (10,240 KiB + 100,000 × 6.5 KiB) / 1024² = 0.63 GiB.
        assert!(
            text.contains("| mcpflip | 9,000 | 6.50 | 0.900 | 10.0 | 0.63 |"),
            "{text}"
        );
        let want = (10_240.0 + 650_000.0) / 1_048_576.0;
        assert!((projected_gib(10_240.0, 6.5, 100_000.0) - want).abs() < 1e-12);
    }

    #[test]
    fn w5_shows_capture_on_beside_the_targets_and_its_memory_per_session() {
        let text = render(&fixture::run());
        assert!(
            text.contains("| mcpflip, capture on | 40,000 | 38,000 | 0.95 (0.94–0.96) |"),
            "{text}"
        );
        // 50,000 KiB over 100,000 captured sessions; 21.6 MB of bodies.
        assert!(
            text.contains(
                "its RSS grew by 50,000 KiB over opening them, **512 bytes per session**"
            ),
            "{text}"
        );
        assert!(
            text.contains("21,600,000 bytes of captured bodies, 216 per session"),
            "{text}"
        );
        assert!(
            text.contains("capture off grew 41 bytes per session"),
            "{text}"
        );
        assert!(
            text.contains("| W5 req/s with 100,000 sessions ÷ with 1, capture on | — | ≥ 0.95 |"),
            "{text}"
        );
        // A run from before capture was measured reads and renders without it.
        let mut old = fixture::run();
        if let Some(w) = old.w5.as_mut() {
            w.capture = None;
        }
        let json = old.to_json().expect("serialises");
        assert!(!json.contains("\"capture\""));
        let back = Run::from_json(&json).expect("reads back");
        assert!(!render(&back).contains("capture on"));
    }

    #[test]
    fn w2_says_how_long_the_runs_waited_to_settle() {
        let text = render(&fixture::run());
        assert!(
            text.contains(
                "Before each run the bench waits until every proxy and the upstreams have used \
                 under 2 % of a core for 300 ms (0.3–2.4 s here)"
            ),
            "{text}"
        );
        // A results file from before the bench waited has no such field.
        let mut old = fixture::run();
        for l in &mut old.w2.as_mut().expect("w2").levels {
            for c in &mut l.cells {
                c.settle_s = Default::default();
            }
        }
        let json = old.to_json().expect("serialises");
        let back =
            Run::from_json(&json.replace("\"settle_s\"", "\"unknown_field\"")).expect("reads");
        assert!(!render(&back).contains("Before each run the bench waits"));
    }

    #[test]
    fn w2_shows_each_windows_steal_and_the_windows_measured_again() {
        let run = fixture::run();
        let text = render(&run);
        let cells: usize = run
            .w2
            .as_ref()
            .expect("w2")
            .levels
            .iter()
            .map(|l| l.cells.len())
            .sum();
        // Each fixture cell: one window measured again, one of its three
        // kept windows over 1 %.
        assert!(
            text.contains(&format!(
                "Here {cells} windows were measured again for the {} kept, and {cells} kept \
                 windows still lost more than 1 %",
                cells * 3
            )),
            "{text}"
        );
        assert!(text.contains("| stolen % | failed / cut |"), "{text}");
        assert!(text.contains("| 0.4 (0.2–1.6) | 0 / 0 |"), "{text}");
        // A results file from before the bench read the steal: no column.
        let mut old = run.clone();
        for l in &mut old.w2.as_mut().expect("w2").levels {
            for c in &mut l.cells {
                c.steal_pct = Default::default();
                c.remeasured = 0;
            }
        }
        let text = render(&old);
        assert!(!text.contains("time to open N (s) | stolen %"), "{text}");
        assert!(!text.contains("windows were measured again"), "{text}");
    }

    #[test]
    fn w2_says_its_streams_tick_on_one_schedule_only_where_they_did() {
        let mut run = fixture::run();
        run.w2.as_mut().expect("w2").phased = true;
        let text = render(&run);
        assert!(text.contains("the upstream's `phase_ms`"), "{text}");
        assert!(
            text.contains("Each run starts the proxy and the two upstreams afresh"),
            "{text}"
        );
        // A results file from before: its streams ticked from when they opened.
        let json = run.to_json().expect("serialises");
        let back = Run::from_json(&json.replace("\"phased\"", "\"unknown_field\"")).expect("reads");
        let text = render(&back);
        assert!(!text.contains("phase_ms"), "{text}");
        assert!(text.contains("Each run starts the proxy afresh"), "{text}");
    }

    #[test]
    fn the_rounds_say_whether_w2_took_w1s_count() {
        let mut run = fixture::run();
        run.meta.rounds = 3;
        run.meta.w1_rounds = 5;
        // The fixture's W2 has three rounds: the common count.
        let text = render(&run);
        assert!(
            text.contains("(5 for W1 and the runs made of it:"),
            "{text}"
        );
        for l in &mut run.w2.as_mut().expect("w2").levels {
            for c in &mut l.cells {
                c.p99_ms.0 = vec![1.0; 5];
            }
        }
        let text = render(&run);
        assert!(
            text.contains("(5 for W1, W2 and the runs made of W1:"),
            "{text}"
        );
    }

    #[test]
    fn the_order_of_the_rounds_is_told_as_it_was() {
        let mut run = fixture::run();
        run.meta.targets = vec![
            Kind::Direct,
            Kind::Mcpflip,
            Kind::Nginx,
            Kind::Haproxy,
            Kind::Caddy,
        ];
        run.meta.rotated = true;
        run.meta.stepped = true;
        let text = render(&run);
        assert!(
            text.contains("the first round in the order direct, mcpflip, HAProxy, nginx, Caddy, each next one with every target one place on"),
            "{text}"
        );
        run.meta.stepped = false;
        let text = render(&run);
        assert!(
            text.contains("the first round in the order direct, mcpflip, nginx, HAProxy, Caddy, each next one starting one target further on"),
            "{text}"
        );
    }

    #[test]
    fn w1_shows_each_runs_steal() {
        let mut run = fixture::run();
        let w1 = run.w1.as_mut().expect("w1");
        w1.levels[0].cells[0].remeasured = 2;
        let runs: usize = w1.levels.iter().map(|l| l.cells.len() * 3).sum();
        let text = render(&run);
        assert!(
            text.contains(&format!(
                "Here 2 runs were measured again for the {runs} kept, and 0 kept runs still lost \
                 more than 1 %"
            )),
            "{text}"
        );
        assert!(text.contains("| stolen % | failed |"), "{text}");
        assert!(text.contains("| 0.2 (0.1–0.3) | 0 |"), "{text}");
    }

    #[test]
    fn the_static_upstream_row_shows_each_ratio_with_its_spread() {
        let text = render(&fixture::run());
        assert!(
            text.contains("### W1 behind a static upstream: the proxy as the bound"),
            "{text}"
        );
        assert!(text.contains("**c = 64, wrk, static upstream**"), "{text}");
        assert!(
            text.contains(
                "- mcpflip / nginx: requests/s 1.10× (1.05–1.16) with this bench's generator, \
                 1.11× (1.11–1.11) with wrk; proxy CPU per request 0.92× (0.92–0.92) with this \
                 bench's generator, 0.91× (0.91–0.91) with wrk."
            ),
            "{text}"
        );
        // HAProxy ran only with this bench's generator: no wrk ratio to show.
        assert!(
            text.contains(
                "- mcpflip / HAProxy: requests/s 1.11× (1.06–1.17) with this bench's generator; \
                 proxy CPU per request 0.88× (0.88–0.88) with this bench's generator."
            ),
            "{text}"
        );
        // The summary and `diff` carry its ratios, apart from W1's own.
        assert!(text.contains("| W1 c=64, static upstream (wrk) | requests/s | higher |"));
        let mut without = fixture::run();
        without.w1_static = None;
        assert!(!render(&without).contains("static upstream"));
    }

    #[test]
    fn a_quick_run_says_so() {
        let mut run = fixture::run();
        run.meta.quick = true;
        run.meta.complete = false;
        assert!(render(&run).contains("**Quick mode"));
    }

    #[test]
    fn the_json_file_renders_the_same_report() {
        let run = fixture::run();
        let json = run.to_json().expect("serialises");
        let back = Run::from_json(&json).expect("reads back");
        assert_eq!(render(&back), render(&run));
    }

    #[test]
    fn a_partial_run_renders_what_it_has() {
        let mut run = fixture::run();
        run.w2 = None;
        run.multicore = None;
        run.meta.complete = false;
        let text = render(&run);
        assert!(text.contains("**A partial run"));
        assert!(!text.contains("## W2"));
        assert!(!text.contains("Multi-core"));
        assert!(text.contains("## W1 — request/response"));
    }
}
