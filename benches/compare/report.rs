//! `BENCHMARKS.md`: the machine and versions, the ratios, the targets
//! and where mcpflip stands, one table per workload with absolute medians
//! (min–max), the profile, and what limited each result. Rendered only from
//! the numbers this run measured (and printed as it went).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::bench::{Options, Settings};
use crate::profile::Profiles;
use crate::stats::{self, Series};
use crate::sys::{self, CpuPlan, Machine};
use crate::targets::Kind;
use crate::w1::{W1, W5};
use crate::w2::W2;
use crate::w3::W3;
use crate::w4::{self, GUIDE_SLEEP, W4};

/// Everything measured.
#[derive(Default)]
pub struct Results {
    pub w1: Option<W1>,
    pub w2: Option<W2>,
    pub w3: Option<W3>,
    pub w4: Option<W4>,
    pub w5: Option<W5>,
    pub profile: Option<Profiles>,
}

/// The facts around the numbers.
pub struct Meta {
    machine: Machine,
    plan: CpuPlan,
    versions: Vec<(&'static str, String)>,
    settings: Settings,
    complete: bool,
    kinds: Vec<Kind>,
    date: String,
    command: String,
    nofile: u64,
    elapsed: Duration,
}

impl Meta {
    pub fn collect(
        machine: Machine,
        root: &Path,
        o: &Options,
        s: &Settings,
        plan: &CpuPlan,
        nofile: u64,
    ) -> Meta {
        let v = |cmd: &str, args: &[&str]| {
            sys::find_binary(cmd)
                .and_then(|p| sys::version_of(p.to_str()?, args))
                .unwrap_or_else(|| "not installed".to_owned())
        };
        let rustc = sys::version_of("rustc", &["--version"]).unwrap_or_default();
        let versions = vec![
            (
                "mcpflip",
                format!("git {} (release profile, {rustc})", sys::git_rev(root)),
            ),
            ("nginx", v("nginx", &["-v"])),
            ("HAProxy", v("haproxy", &["-v"])),
            ("Caddy", v("caddy", &["version"])),
        ];
        let date = sys::version_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
        let mut command = "cargo bench --bench compare".to_owned();
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        if !args.is_empty() {
            command.push_str(" -- ");
            command.push_str(&args.join(" "));
        }
        Meta {
            machine,
            plan: plan.clone(),
            versions,
            settings: s.clone(),
            complete: o.complete(),
            kinds: o.targets.clone(),
            date,
            command,
            nofile,
            elapsed: Duration::ZERO,
        }
    }

    pub fn finish(mut self, elapsed: Duration) -> Meta {
        self.elapsed = elapsed;
        self
    }

    /// The lines printed before the run starts.
    pub fn header(&self) -> String {
        let mut s = format!(
            "compare: {} ({} cores, kernel {}); {}\n",
            self.machine.cpu_model,
            self.machine.cores,
            self.machine.kernel,
            self.plan.describe()
        );
        for (name, v) in &self.versions {
            let _ = writeln!(s, "compare: {name}: {v}");
        }
        let _ = write!(
            s,
            "compare: {} rounds{}; targets: {}",
            self.settings.rounds,
            if self.settings.quick { ", quick" } else { "" },
            self.kinds
                .iter()
                .map(|k| k.label())
                .collect::<Vec<_>>()
                .join(", ")
        );
        s
    }
}

/// The ratio of two medians.
fn ratio(a: &Series, b: &Series) -> f64 {
    a.median() / b.median()
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.0}%", v * 100.0)
    } else {
        "—".to_owned()
    }
}

const ANCHORS: [Kind; 4] = [Kind::Nginx, Kind::Haproxy, Kind::Caddy, Kind::Direct];

pub fn render(m: &Meta, r: &Results) -> String {
    let mut o = String::new();
    let s = &m.settings;
    let _ = writeln!(o, "# mcpflip benchmarks\n");
    let _ = writeln!(
        o,
        "Written by `{}` on {} ({:.0} s for the whole run, build excluded).{}",
        m.command,
        m.date,
        m.elapsed.as_secs_f64(),
        if s.quick {
            " **Quick mode: a smoke test, one short run per figure; not the reference numbers.**"
        } else if !m.complete {
            " **A partial run (some workloads or targets only).**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "Every figure is the median of {} run{}{} with (min–max) beside it. Within a round every \
         target runs once, always in the order {}, then the next round starts (A B A B), so slow \
         drift of the machine hits every target alike. Loopback only; the upstream is mcpflip's \
         own `mcpflip upstream` (two of them: blue and green). The numbers are the ones the \
         command printed while it ran; `benches/README.md` explains each workload.\n",
        s.rounds,
        if s.rounds == 1 { "" } else { "s" },
        if s.w1_rounds != s.rounds {
            format!(" ({} for W1, the noisiest)", s.w1_rounds)
        } else {
            String::new()
        },
        m.kinds
            .iter()
            .map(|k| k.label())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // ----- machine -----------------------------------------------------
    let _ = writeln!(o, "## Machine and versions\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(
        o,
        "| CPU | {}, {} core{} |",
        m.machine.cpu_model,
        m.machine.cores,
        if m.machine.cores == 1 { "" } else { "s" }
    );
    let _ = writeln!(o, "| memory | {:.1} GiB |", m.machine.memory_gib);
    let _ = writeln!(o, "| kernel | Linux {} |", m.machine.kernel);
    let _ = writeln!(o, "| cores | {} |", m.plan.describe());
    let _ = writeln!(
        o,
        "| same core count for all | mcpflip `workers` = nginx `worker_processes` = HAProxy `nbthread` = Caddy `GOMAXPROCS` = {} |",
        m.plan.workers()
    );
    for (name, v) in &m.versions {
        let _ = writeln!(o, "| {name} | {} |", v.replace('|', "\\|"));
    }
    let _ = writeln!(
        o,
        "| load generator | this bench's own (Rust, tokio, raw HTTP/1.1 sockets), one thread per load-generator core |"
    );
    let _ = writeln!(
        o,
        "| file descriptors | RLIMIT_NOFILE {} for every process |\n",
        m.nofile
    );

    summary(&mut o, m, r);
    targets_table(&mut o, m, r);
    if let Some(w) = &r.w1 {
        w1_section(&mut o, m, w);
    }
    if let Some(p) = &r.profile {
        profile_section(&mut o, p);
    }
    if let Some(w) = &r.w2 {
        w2_section(&mut o, w);
    }
    if let Some(w) = &r.w3 {
        w3_section(&mut o, w);
    }
    if let Some(w) = &r.w4 {
        w4_section(&mut o, w);
    }
    if let Some(w) = &r.w5 {
        w5_section(&mut o, w);
    }
    limits(&mut o, m, r);
    o
}

fn summary(o: &mut String, m: &Meta, r: &Results) {
    let present: Vec<Kind> = ANCHORS
        .into_iter()
        .filter(|k| m.kinds.contains(k))
        .collect();
    if !m.kinds.contains(&Kind::Mcpflip) || present.is_empty() {
        return;
    }
    let _ = writeln!(o, "## Summary: mcpflip against each (ratio of medians)\n");
    let _ = write!(o, "| workload | metric | better |");
    for k in &present {
        let _ = write!(o, " mcpflip / {} |", k.label());
    }
    let _ = write!(o, "\n|---|---|---|");
    for _ in &present {
        let _ = write!(o, "---|");
    }
    let _ = writeln!(o);
    let mut row = |w: &str, metric: &str, better: &str, f: &dyn Fn(Kind) -> f64| {
        let _ = write!(o, "| {w} | {metric} | {better} |");
        for &k in &present {
            let _ = write!(o, " {} |", stats::ratio(f(k)));
        }
        let _ = writeln!(o);
    };
    if let Some(w) = &r.w1 {
        for &c in &w.conc {
            let get = |k: Kind| w.cell(c, k);
            row(&format!("W1 c={c}"), "requests/s", "higher", &|k| match (
                get(Kind::Mcpflip),
                get(k),
            ) {
                (Some(a), Some(b)) => ratio(&a.rps, &b.rps),
                _ => f64::NAN,
            });
            row(&format!("W1 c={c}"), "p99 latency", "lower", &|k| match (
                get(Kind::Mcpflip),
                get(k),
            ) {
                (Some(a), Some(b)) => ratio(&a.p99, &b.p99),
                _ => f64::NAN,
            });
        }
    }
    if let Some(w) = &r.w2 {
        for &n in &w.levels {
            let get = |k: Kind| w.cell(n, k);
            let lab = format!("W2 N={}", stats::int(n as f64));
            row(
                &lab,
                "memory per stream",
                "lower",
                &|k| match (get(Kind::Mcpflip), get(k)) {
                    (Some(a), Some(b)) => ratio(&a.mem, &b.mem),
                    _ => f64::NAN,
                },
            );
            row(
                &lab,
                "relay p99",
                "lower",
                &|k| match (get(Kind::Mcpflip), get(k)) {
                    (Some(a), Some(b)) => ratio(&a.p99, &b.p99),
                    _ => f64::NAN,
                },
            );
            row(
                &lab,
                "CPU per 1k events",
                "lower",
                &|k| match (get(Kind::Mcpflip), get(k)) {
                    (Some(a), Some(b)) => ratio(&a.cpu_per_1k, &b.cpu_per_1k),
                    _ => f64::NAN,
                },
            );
        }
    }
    if let Some(w) = &r.w3 {
        let get = |k: Kind| w.cells.iter().find(|(kk, _)| *kk == k).map(|(_, c)| c);
        row(
            "W3 flips",
            "p99 latency",
            "lower",
            &|k| match (get(Kind::Mcpflip), get(k)) {
                (Some(a), Some(b)) => ratio(&a.p99, &b.p99),
                _ => f64::NAN,
            },
        );
    }
    if let Some(w) = &r.w5 {
        let get = |k: Kind| w.cells.iter().find(|(kk, _)| *kk == k).map(|(_, c)| c);
        row(
            "W5 c=64",
            "req/s, 100k sessions",
            "higher",
            &|k| match (get(Kind::Mcpflip), get(k)) {
                (Some(a), Some(b)) => ratio(&a.many, &b.many),
                _ => f64::NAN,
            },
        );
    }
    let _ = writeln!(
        o,
        "\nW3's failed requests and W4's deploy times are counts and durations, not ratios: see \
         their sections. W2's memory and CPU have no direct counterpart (no proxy process).\n"
    );
}

fn status(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn targets_table(o: &mut String, m: &Meta, r: &Results) {
    if !m.kinds.contains(&Kind::Mcpflip) {
        return;
    }
    let _ = writeln!(o, "## The targets of issue 5, and where mcpflip stands\n");
    let _ = writeln!(
        o,
        "| target | goal | measured | status |\n|---|---|---|---|"
    );
    if let Some(w) = &r.w1 {
        let (a, b) = (w.cell(64, Kind::Mcpflip), w.cell(64, Kind::Nginx));
        if let (Some(a), Some(b)) = (a, b) {
            let x = ratio(&a.rps, &b.rps);
            let _ = writeln!(
                o,
                "| W1 throughput | ≥ 1.25× nginx's requests/s at c=64 | {} req/s vs nginx {} = {} | {} |",
                stats::int(a.rps.median()),
                stats::int(b.rps.median()),
                stats::ratio(x),
                status(x.is_finite().then_some(x >= 1.25))
            );
            let (pa, pb) = (a.p99.median(), b.p99.median());
            let _ = writeln!(
                o,
                "| W1 tail | p99 at c=64 no higher than nginx's | {} ms vs {} ms | {} |",
                stats::ms(pa),
                stats::ms(pb),
                status((pa.is_finite() && pb.is_finite()).then_some(pa <= pb))
            );
        }
    }
    if let Some(w) = &r.w2 {
        for &n in &w.levels {
            let (a, b) = (w.cell(n, Kind::Mcpflip), w.cell(n, Kind::Nginx));
            if let (Some(a), Some(b)) = (a, b) {
                let x = ratio(&a.mem, &b.mem);
                let _ = writeln!(
                    o,
                    "| W2 memory, N={} | ≤ ½ of nginx's per stream | {} KiB vs {} KiB = {} | {} |",
                    stats::int(n as f64),
                    stats::two(a.mem.median()),
                    stats::two(b.mem.median()),
                    stats::ratio(x),
                    status(x.is_finite().then_some(x <= 0.5))
                );
                let (pa, pb) = (a.p99.median(), b.p99.median());
                let _ = writeln!(
                    o,
                    "| W2 relay, N={} | p99 no higher than nginx's | {} ms vs {} ms | {} |",
                    stats::int(n as f64),
                    stats::ms(pa),
                    stats::ms(pb),
                    status((pa.is_finite() && pb.is_finite()).then_some(pa <= pb))
                );
            }
        }
    }
    if let Some(w) = &r.w3 {
        if let Some((_, c)) = w.cells.iter().find(|(k, _)| *k == Kind::Mcpflip) {
            let failed: f64 = c.failed.0.iter().sum();
            let _ = writeln!(
                o,
                "| W3 | zero failed requests while flipping | {} failed of {} requests over {} × {} flips | {} |",
                stats::int(failed),
                stats::int(c.requests as f64),
                c.failed.0.len(),
                stats::int(w.flips as f64),
                status(Some(failed == 0.0 && c.flip_errors == 0))
            );
        }
    }
    if let Some(w) = &r.w4 {
        if let Some(c) = w.cell(Kind::Mcpflip) {
            let p99 = stats::quantile(&c.detection, 0.99);
            let _ = writeln!(
                o,
                "| W4 | drain detection p99 ≤ 5 ms | p99 {} ms (p50 {} ms) over {} deploys | {} |",
                stats::ms(p99),
                stats::ms(stats::quantile(&c.detection, 0.5)),
                c.detection.len(),
                status(p99.is_finite().then_some(p99 <= 5.0))
            );
        }
    }
    if let Some(w) = &r.w5 {
        if let Some((_, c)) = w.cells.iter().find(|(k, _)| *k == Kind::Mcpflip) {
            let x = c.ratio.median();
            let _ = writeln!(
                o,
                "| W5 | req/s with {} sessions ÷ with 1 ≥ 0.95 | {} (mcpflip's CPU per request: {}×) | {} |",
                stats::int(w.sessions as f64),
                c.ratio.show(stats::two),
                stats::two(c.cpu_ratio.median()),
                status(x.is_finite().then_some(x >= 0.95))
            );
        }
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
        w.warmup.as_secs_f64(),
        w.measure.as_secs_f64(),
        sys::list(&m.plan.upstream),
    );
    for (ci, &c) in w.conc.iter().enumerate() {
        let _ = writeln!(o, "**c = {c}**\n");
        let _ = writeln!(
            o,
            "| target | requests/s | p50 ms | p99 ms | proxy CPU µs per request | proxy busy | CPU {} (upstream + load gen) | failed |\n|---|---|---|---|---|---|---|---|",
            sys::list(&m.plan.upstream)
        );
        for (k, cell) in &w.cells[ci] {
            let cores = Series(
                cell.upstream_cores
                    .0
                    .iter()
                    .zip(&cell.loadgen_cores.0)
                    .map(|(a, b)| a + b)
                    .collect(),
            );
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                k.label(),
                cell.rps.show(stats::int),
                cell.p50.show(stats::ms),
                cell.p99.show(stats::ms),
                if *k == Kind::Direct {
                    "—".to_owned()
                } else {
                    cell.cpu_us.show(stats::two)
                },
                if *k == Kind::Direct {
                    "—".to_owned()
                } else {
                    cell.proxy_busy.show(pct)
                },
                cores.show(stats::two),
                cell.failed
            );
        }
        let _ = writeln!(o);
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
    for (pct, g) in p.groups.iter().filter(|(p, _)| *p >= 0.3) {
        let _ = writeln!(o, "| {pct:.1} | {g} |");
    }
    let _ = writeln!(
        o,
        "\nmcpflip's top symbols by self time:\n\n| self % | where | symbol |\n|---|---|---|"
    );
    for (pct, sym, kind) in &p.top {
        let place = match kind.as_str() {
            "[k]" => "kernel",
            "[.]" => "user",
            _ => "",
        };
        let _ = writeln!(o, "| {pct:.2} | {place} | `{}` |", sym.replace('|', "\\|"));
    }
    let _ = writeln!(o);
}

fn w2_section(o: &mut String, w: &W2) {
    let _ = writeln!(o, "## W2 — SSE streams\n");
    let _ = writeln!(
        o,
        "N concurrent `GET /ticker?interval_ms={}&pad={}` streams (one event every {} ms per \
         stream, ~{} bytes each, carrying the upstream's send time `ts_us`). Each run starts the \
         proxy afresh; memory per stream = (proxy RSS with the N streams open − RSS before) / N, \
         summed over the proxy's processes (nginx: master and workers). Relay latency = client \
         clock at arrival − `ts_us`, every event of a {:.1} s window. CPU per 1,000 events = the \
         proxy's CPU time over the window (every thread's run time from `/proc/<pid>/task/*/schedstat`, in ns) per 1,000 events relayed. \
         Clients connect from 127.0.0.2.. so their side never runs out of ports. Largest N: {}.\n",
        w.interval_ms,
        w.pad,
        w.interval_ms,
        w.pad + 60,
        w.window.as_secs_f64(),
        w.max_reason
    );
    for (li, &n) in w.levels.iter().enumerate() {
        let _ = writeln!(o, "**N = {}**\n", stats::int(n as f64));
        let _ = writeln!(
            o,
            "| target | memory per stream (KiB) | relay p50 ms | relay p99 ms | proxy CPU ms per 1k events | time to open N (s) | failed / cut |\n|---|---|---|---|---|---|---|"
        );
        for (k, c) in &w.cells[li] {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} / {} |",
                k.label(),
                c.mem.show(stats::two),
                c.p50.show(stats::ms),
                c.p99.show(stats::ms),
                c.cpu_per_1k.show(stats::two),
                c.setup.show(stats::one),
                c.failed,
                c.cut
            );
        }
        let _ = writeln!(o);
    }
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
        w.every.as_millis()
    );
    let _ = writeln!(
        o,
        "| target | failed requests per run | p50 ms | p99 ms | max ms | time for the flips (s) | answers blue / green | reconnects | failures by cause |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (k, c) in &w.cells {
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
            k.label(),
            c.failed.show(stats::int),
            stats::int(c.requests as f64 / c.failed.0.len().max(1) as f64),
            c.p50.show(stats::ms),
            c.p99.show(stats::ms),
            c.max.show(stats::ms),
            if *k == Kind::Direct {
                "no flips".to_owned()
            } else {
                c.flip_time.show(stats::two)
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
         reports a drain, so the guide's script switches and then sleeps a fixed {} s; the same \
         sessions run through them once per round, and the idle wait is {} s − the last close.\n",
        w.sessions,
        w.span.as_secs_f64(),
        GUIDE_SLEEP.as_secs(),
        GUIDE_SLEEP.as_secs()
    );
    let _ = writeln!(
        o,
        "| target | deploys | deploy time (s) | last session closed at (s) | detection latency p50 / p99 ms | waited after the last session (s) | failed / cut sessions |\n|---|---|---|---|---|---|---|"
    );
    for (k, c) in &w.cells {
        let last = w4::series(&c.last_close);
        let (deploy, detection, waited) = if *k == Kind::Mcpflip {
            let waited = Series(c.detection.iter().map(|d| d / 1000.0).collect());
            (
                w4::series(&c.deploy).show(|v| format!("{v:.3}")),
                format!(
                    "{} / {}",
                    stats::ms(stats::quantile(&c.detection, 0.5)),
                    stats::ms(stats::quantile(&c.detection, 0.99))
                ),
                waited.show(|v| format!("{v:.4}")),
            )
        } else {
            let waited = Series(
                c.last_close
                    .iter()
                    .map(|l| GUIDE_SLEEP.as_secs_f64() - l)
                    .collect(),
            );
            (
                format!("{} (fixed sleep)", GUIDE_SLEEP.as_secs()),
                "— (no drain signal)".to_owned(),
                waited.show(stats::one),
            )
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} / {} |",
            k.label(),
            c.last_close.len(),
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
         (`--rounds`) for a finer tail. A session longer than {} s would be cut by the fixed \
         sleep; mcpflip waits for it (up to `[drain] deadline`).\n",
        w.cell(Kind::Mcpflip).map_or(0, |c| c.detection.len()),
        GUIDE_SLEEP.as_secs()
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
        w.created_in.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "| target | req/s, 1 session | req/s, {n} sessions | ratio | proxy CPU µs per request, 1 session | …, {n} sessions | CPU ratio | failed |\n|---|---|---|---|---|---|---|---|",
        n = stats::int(w.sessions as f64)
    );
    for (k, c) in &w.cells {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            k.label(),
            c.one.show(stats::int),
            c.many.show(stats::int),
            c.ratio.show(stats::two),
            c.cpu_one.show(stats::two),
            c.cpu_many.show(stats::two),
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
    let _ = writeln!(o);
}

fn limits(o: &mut String, m: &Meta, r: &Results) {
    let _ = writeln!(o, "## What limited each result\n");
    let cores = m.machine.cores;
    let _ = writeln!(
        o,
        "- **The machine.** {} core{} for everything: {}. The proxies are compared on equal \
         terms (same cores, same workers, same upstreams, same load generator), but absolute \
         numbers are far below what any of them does on a larger machine.",
        cores,
        if cores == 1 { "" } else { "s" },
        m.plan.describe()
    );
    if let Some(w) = &r.w1 {
        for &c in &w.conc {
            let mut parts = Vec::new();
            for k in Kind::ALL {
                let Some(cell) = w.cell(c, k) else { continue };
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
            let _ = writeln!(o, "- **W1 c={c}.** {}.", parts.join("; "));
        }
    }
    if r.profile.is_some() {
        let _ = writeln!(
            o,
            "- **mcpflip under W1**: see the profile above for the functions that hold its CPU."
        );
    }
    if let Some(w) = &r.w2 {
        let _ = writeln!(
            o,
            "- **W2.** The event rate is low on purpose (one event per stream every {} ms), so \
             relay latency is not CPU-bound; memory per stream is each proxy's per-connection \
             state (two sockets' buffers, the request/response state) and what its allocator \
             keeps. The largest N: {}.",
            w.interval_ms, w.max_reason
        );
    }
    if r.w3.is_some() {
        let _ = writeln!(
            o,
            "- **W3.** Failures come from the flip mechanism, not from load (the rate is far below \
             every target's capacity): an nginx reload starts new workers and retires the old \
             ones, which close their keep-alive connections; Caddy's `/load` replaces its HTTP \
             server the same way; HAProxy and mcpflip change weights in place."
        );
    }
    if r.w4.is_some() {
        let _ = writeln!(
            o,
            "- **W4.** mcpflip's deploy time is the longest session plus the detection latency \
             (a stream's close reaching the proxy, the guard drop waking the drain, the reply on \
             the Unix socket), measured on one clock. The anchors have no drain signal at all."
        );
    }
    if r.w5.is_some() {
        let _ = writeln!(
            o,
            "- **W5.** Affinity lives in the session id; there is no table to grow. What grows with \
             100,000 sessions is the upstream's own session map (the same for every target)."
        );
    }
    let _ = writeln!(
        o,
        "- **Noise.** A shared virtual machine: other processes (builds, tests) may run beside \
         the benchmark; the min–max ranges show how much that moved each figure.\n"
    );
}
