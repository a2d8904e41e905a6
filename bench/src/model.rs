//! The results of one run as data: what `run` measures, what the JSON file in
//! `bench/results/` holds, and everything `render` and `diff` read. Plain
//! serde types and the pure functions over them; nothing here starts a
//! process or reads `/proc`, so a file written on one machine renders and
//! diffs on any other.
//!
//! Every per-round figure is a [`Series`] (median, min–max and each round in
//! the file). Durations are seconds (`_s`) or milliseconds (`_ms`) as named.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::stats::Series;

/// The version of the file format; `render` and `diff` refuse other versions.
pub const SCHEMA: u32 = 1;

/// One of the five targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Direct,
    Mcpflip,
    Nginx,
    Haproxy,
    Caddy,
}

impl Kind {
    /// The order of a round.
    pub const ALL: [Kind; 5] = [
        Kind::Direct,
        Kind::Mcpflip,
        Kind::Nginx,
        Kind::Haproxy,
        Kind::Caddy,
    ];

    /// The targets mcpflip is compared with, in the summary's column order.
    pub const ANCHORS: [Kind; 4] = [Kind::Nginx, Kind::Haproxy, Kind::Caddy, Kind::Direct];

    pub fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Mcpflip => "mcpflip",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Caddy => "caddy",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Mcpflip => "mcpflip",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "HAProxy",
            Kind::Caddy => "Caddy",
        }
    }

    /// The binary an anchor needs.
    pub fn binary(self) -> Option<&'static str> {
        match self {
            Kind::Nginx => Some("nginx"),
            Kind::Haproxy => Some("haproxy"),
            Kind::Caddy => Some("caddy"),
            Kind::Direct | Kind::Mcpflip => None,
        }
    }

    /// Whether the target has a worker count to set (the multi-core section).
    pub fn has_workers(self) -> bool {
        matches!(self, Kind::Mcpflip | Kind::Nginx | Kind::Haproxy)
    }
}

/// A deployment slot (the two `mcpflip upstream` processes are named so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Slot::Blue => 0,
            Slot::Green => 1,
        }
    }

    /// The slot a name (a header value, a JSON string) names.
    pub fn parse(name: &[u8]) -> Option<Slot> {
        match name {
            b"blue" => Some(Slot::Blue),
            b"green" => Some(Slot::Green),
            _ => None,
        }
    }
}

/// Which CPUs each party runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuPlan {
    /// The proxy under test (its worker count is `proxy.len()`).
    pub proxy: Vec<usize>,
    /// The two `mcpflip upstream` slots.
    pub upstream: Vec<usize>,
    /// The load generators (this process, and wrk).
    pub loadgen: Vec<usize>,
}

impl CpuPlan {
    /// Splits `cpus`: the proxy gets the last `proxy_cores` (default: a quarter,
    /// at least one); with four or more CPUs the upstreams get the next quarter
    /// and the load generator the rest, with fewer the upstreams and the load
    /// generator share what the proxy does not get.
    pub fn new(cpus: &[usize], proxy_cores: Option<usize>) -> CpuPlan {
        let n = cpus.len();
        if n <= 1 {
            return CpuPlan {
                proxy: cpus.to_vec(),
                upstream: cpus.to_vec(),
                loadgen: cpus.to_vec(),
            };
        }
        let p = proxy_cores.unwrap_or((n / 4).max(1)).clamp(1, n - 1);
        let (rest, proxy) = cpus.split_at(n - p);
        if rest.len() < 3 {
            return CpuPlan {
                proxy: proxy.to_vec(),
                upstream: rest.to_vec(),
                loadgen: rest.to_vec(),
            };
        }
        let u = (n / 4).clamp(1, rest.len() - 1);
        let (loadgen, upstream) = rest.split_at(rest.len() - u);
        CpuPlan {
            proxy: proxy.to_vec(),
            upstream: upstream.to_vec(),
            loadgen: loadgen.to_vec(),
        }
    }

    /// The proxies' worker count: mcpflip `workers`, nginx `worker_processes`,
    /// HAProxy `nbthread`, Caddy `GOMAXPROCS`.
    pub fn workers(&self) -> usize {
        self.proxy.len()
    }

    /// The CPUs a proxy with `workers` workers gets in the multi-core section:
    /// that many of the proxy's own cores when it has them (pinned), else
    /// every CPU (unpinned: its workers share the cores with the upstreams
    /// and the load generator). `all` is every CPU the bench may use.
    pub fn for_workers(&self, workers: usize, all: &[usize]) -> (Vec<usize>, bool) {
        if workers <= self.proxy.len() {
            (self.proxy[..workers].to_vec(), true)
        } else {
            (all.to_vec(), false)
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "proxy under test on CPU {} ({} worker{}), upstreams on CPU {}, load generator on CPU {}",
            list(&self.proxy),
            self.workers(),
            if self.workers() == 1 { "" } else { "s" },
            list(&self.upstream),
            list(&self.loadgen)
        )
    }
}

/// `0,1,2` (the form `taskset -c` takes).
pub fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The machine the run measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    /// Model name and clock, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The CPUs this benchmark may use.
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    /// `8c-amd-epyc-7b13`: the machine part of a result file's name.
    pub fn slug(&self) -> String {
        let model = self
            .cpu_model
            .split(" @ ")
            .next()
            .unwrap_or(&self.cpu_model)
            .to_ascii_lowercase();
        let mut words = String::new();
        for w in model.split(|c: char| !c.is_ascii_alphanumeric()) {
            // Marketing words say nothing about the machine.
            if w.is_empty() || ["processor", "cpu", "core", "tm", "r"].contains(&w) {
                continue;
            }
            if words.len() + w.len() > 24 {
                break;
            }
            if !words.is_empty() {
                words.push('-');
            }
            words.push_str(w);
        }
        if words.is_empty() {
            words.push_str("unknown");
        }
        format!("{}c-{words}", self.cores)
    }
}

/// A program and its version line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub name: String,
    pub version: String,
}

/// The facts around the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// RFC 3339, UTC.
    pub date: String,
    /// The command line that ran (for the report's first line).
    pub command: String,
    /// Where the run wrote this file (relative to the repository when inside it).
    #[serde(default)]
    pub file: String,
    pub quick: bool,
    /// Every workload against every target: the run that may write BENCHMARKS.md.
    pub complete: bool,
    pub elapsed_s: f64,
    /// CPU time the hypervisor gave elsewhere while the run wanted it (all
    /// CPUs, seconds; `/proc/stat`'s steal): a run with much of it measured
    /// a machine taken away in bursts. Not in files of earlier runs.
    #[serde(default)]
    pub steal_s: Option<f64>,
    pub rounds: usize,
    /// W1's rounds, and those of the access log, the multi-core section, W5
    /// and (since 2026-12-07) W2.
    pub w1_rounds: usize,
    /// Each round started one target further on (`Bench::order`); false in
    /// files of earlier runs, whose rounds all ran in the targets' order.
    #[serde(default)]
    pub rotated: bool,
    /// Each round's order stepped through the targets as `Bench::order`
    /// does since 2026-12-07 (a target's predecessor changes from round to
    /// round); false in files of earlier runs, whose rounds were rotations of
    /// one order, each target always right after the same one.
    #[serde(default)]
    pub stepped: bool,
    pub targets: Vec<Kind>,
    pub machine: Machine,
    pub plan: CpuPlan,
    /// `taskset` was found: the processes were pinned to their cores.
    pub pinned: bool,
    pub versions: Vec<Version>,
    /// RLIMIT_NOFILE of every process: the soft limit in force, and the hard one.
    pub nofile: u64,
    pub nofile_hard: u64,
    /// Other processes' threads moved off the proxy's cores for the run
    /// (`None`: not shielded, `--no-shield`, or a file of an earlier run).
    #[serde(default)]
    pub shield: Option<Shielded>,
}

/// What the CPU shield did (`crate::shield`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shielded {
    /// The CPUs kept for the proxy under test.
    pub cpus: Vec<usize>,
    /// Threads of other processes moved off them (and put back after the run).
    pub threads: usize,
    /// Those threads' processes (`comm`), each once.
    pub processes: Vec<String>,
    /// Threads that may run on the kept CPUs alone, so stayed.
    pub left: usize,
    /// Threads the kernel would not move (another user's, without root).
    pub refused: usize,
}

impl Meta {
    pub fn version(&self, name: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.version.as_str())
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub schema: u32,
    pub meta: Meta,
    #[serde(default)]
    pub w1: Option<W1>,
    /// W1 again with wrk as the load generator (the cross-check).
    #[serde(default)]
    pub w1_wrk: Option<W1>,
    /// W1 at c=64 behind a static upstream (the proxy as the bound).
    #[serde(default)]
    pub w1_static: Option<W1Static>,
    #[serde(default)]
    pub access_log: Option<AccessLog>,
    #[serde(default)]
    pub multicore: Option<MultiCore>,
    #[serde(default)]
    pub profile: Option<Profiles>,
    #[serde(default)]
    pub w2: Option<W2>,
    #[serde(default)]
    pub w3: Option<W3>,
    #[serde(default)]
    pub w4: Option<W4>,
    #[serde(default)]
    pub w5: Option<W5>,
    /// The soak (`mcpflip-bench soak`): a file of its own, or merged into a
    /// comparison's report by `render --soak`.
    #[serde(default)]
    pub soak: Option<Soak>,
}

impl Run {
    pub fn new(meta: Meta) -> Run {
        Run {
            schema: SCHEMA,
            meta,
            w1: None,
            w1_wrk: None,
            w1_static: None,
            access_log: None,
            multicore: None,
            profile: None,
            w2: None,
            w3: None,
            w4: None,
            w5: None,
            soak: None,
        }
    }

    /// Whether it holds any part of the comparison (a soak's file holds none).
    pub fn has_comparison(&self) -> bool {
        self.w1.is_some()
            || self.w1_wrk.is_some()
            || self.w1_static.is_some()
            || self.access_log.is_some()
            || self.multicore.is_some()
            || self.profile.is_some()
            || self.w2.is_some()
            || self.w3.is_some()
            || self.w4.is_some()
            || self.w5.is_some()
    }

    pub fn to_json(&self) -> anyhow::Result<String> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        Ok(s)
    }

    pub fn from_json(text: &str) -> anyhow::Result<Run> {
        // The version first, so that an old or new file gets a clear error
        // instead of a missing-field one.
        let v: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        match v.get("schema").and_then(serde_json::Value::as_u64) {
            Some(s) if s == u64::from(SCHEMA) => {}
            Some(s) => bail!("result schema {s}; this mcpflip-bench reads schema {SCHEMA}"),
            None => bail!("not an mcpflip-bench result (no \"schema\")"),
        }
        serde_json::from_value(v).context("not an mcpflip-bench result")
    }

    pub fn read(path: &Path) -> anyhow::Result<Run> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Run::from_json(&text).with_context(|| format!("{}", path.display()))
    }
}

/// W1 figures of one target at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W1Cell {
    pub target: Kind,
    pub rps: Series,
    pub p50_ms: Series,
    pub p99_ms: Series,
    /// The proxy's CPU time per request, µs (robust to a saturated CPU 0).
    pub cpu_us: Series,
    /// Share of its cores the proxy used (1.0 = all of them busy).
    pub proxy_busy: Series,
    /// The upstreams' and the load generator's load, in cores.
    pub upstream_cores: Series,
    pub loadgen_cores: Series,
    /// The share of each kept run's CPU time (its length × the machine's
    /// CPUs) the hypervisor stole, in %; empty in results files written
    /// before the bench read it, and in the multi-core section.
    #[serde(default)]
    pub steal_pct: Series,
    /// Runs measured again because the hypervisor stole more than
    /// [`STEAL_LIMIT`] of their CPU time.
    #[serde(default)]
    pub remeasured: usize,
    pub failed: u64,
}

impl W1Cell {
    pub fn new(target: Kind) -> W1Cell {
        W1Cell {
            target,
            rps: Series::default(),
            p50_ms: Series::default(),
            p99_ms: Series::default(),
            cpu_us: Series::default(),
            proxy_busy: Series::default(),
            upstream_cores: Series::default(),
            loadgen_cores: Series::default(),
            steal_pct: Series::default(),
            remeasured: 0,
            failed: 0,
        }
    }
}

/// The cell of `k` in `cells`.
pub fn cell_of<T, F: Fn(&T) -> Kind>(cells: &[T], k: Kind, kind: F) -> Option<&T> {
    cells.iter().find(|c| kind(c) == k)
}

/// W1 at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W1Level {
    pub conc: usize,
    pub cells: Vec<W1Cell>,
}

/// W1 (request/response), with one load generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W1 {
    /// `mcpflip-bench` (this program's own) or `wrk`.
    pub generator: String,
    /// Seconds of load before the measured window (0 for wrk, which has none).
    pub warmup_s: f64,
    pub measure_s: f64,
    pub levels: Vec<W1Level>,
}

impl W1 {
    pub fn cell(&self, c: usize, k: Kind) -> Option<&W1Cell> {
        let level = self.levels.iter().find(|l| l.conc == c)?;
        cell_of(&level.cells, k, |c| c.target)
    }

    pub fn concs(&self) -> Vec<usize> {
        self.levels.iter().map(|l| l.conc).collect()
    }
}

/// W1 at c=64 with every proxy in front of one static upstream instead of
/// the MCP upstreams: an upstream that costs less per request than the
/// demo server, so that on a machine where the upstream and the load
/// generator share a core the proxy's own core is the bound
/// (bench/PROFILE.md §60). Not one of issue 14's rows; reported beside W1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W1Static {
    /// What answers behind every proxy (its server and version).
    pub upstream: String,
    /// This program's load generator (one level: c=64).
    pub ours: W1,
    /// wrk, when installed.
    pub wrk: Option<W1>,
}

/// mcpflip at W1 c=64 with its access log on and off, back to back in each round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessLog {
    pub conc: usize,
    pub measure_s: f64,
    /// How the log was switched on (the environment or config given).
    pub how: String,
    pub off_rps: Series,
    pub on_rps: Series,
    pub off_cpu_us: Series,
    pub on_cpu_us: Series,
    /// Bytes the access log wrote over the runs: proof that it was on.
    pub log_bytes: u64,
    pub failed: u64,
}

/// One worker count of the multi-core section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiCoreLevel {
    pub workers: usize,
    pub proxy_cpus: Vec<usize>,
    /// The proxy had cores of its own; false: it shared every core.
    pub dedicated: bool,
    /// The same setup as W1's (worker count and cores): its c=64 figures are
    /// W1's, not measured twice.
    pub from_w1: bool,
    /// This program's load generator.
    pub ours: Vec<W1Cell>,
    /// wrk (empty when wrk is not installed).
    pub wrk: Vec<W1Cell>,
}

/// W1 at one concurrency with 1, 2, … workers for every proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiCore {
    pub conc: usize,
    pub measure_s: f64,
    pub levels: Vec<MultiCoreLevel>,
}

/// One symbol of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Symbol {
    /// Share of all samples, percent.
    pub percent: f64,
    pub symbol: String,
    /// `kernel` or `user`.
    pub place: String,
}

/// User-space self time of one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub percent: f64,
    pub name: String,
}

/// A profile summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// perf's own version line.
    pub perf: String,
    pub seconds: f64,
    pub rps: f64,
    /// The proxy's CPU time per request during the profile, µs.
    pub cpu_us: f64,
    /// Share of samples in the kernel.
    pub kernel_share: f64,
    /// By self time, largest first.
    pub top: Vec<Symbol>,
    /// User-space self time by component, largest first.
    pub components: Vec<Component>,
}

/// The profiles of one run: mcpflip, and nginx for the kernel/user split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profiles {
    pub mcpflip: Profile,
    pub nginx: Option<Profile>,
}

/// W2 figures of one target at one N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W2Cell {
    pub target: Kind,
    /// KiB per stream.
    pub mem_kib: Series,
    /// The proxy's RSS before the streams opened, KiB (for the projection).
    pub rss_before_kib: Series,
    pub p50_ms: Series,
    pub p99_ms: Series,
    /// Proxy CPU milliseconds per 1,000 events.
    pub cpu_per_1k_ms: Series,
    /// Seconds to open all streams.
    pub setup_s: Series,
    /// Seconds the bench waited, before this run, for every proxy and the
    /// upstreams to go quiet (`sys::settle`); empty in results files written
    /// before it did.
    #[serde(default)]
    pub settle_s: Series,
    /// The share of the kept window's CPU time (its length × the machine's
    /// CPUs) the hypervisor stole, in %; empty in results files written
    /// before the bench read it.
    #[serde(default)]
    pub steal_pct: Series,
    /// Windows measured again because the hypervisor stole more than
    /// [`STEAL_LIMIT`] of their CPU time.
    #[serde(default)]
    pub remeasured: usize,
    pub failed: usize,
    pub cut: usize,
    pub events: u64,
}

/// The share of a measured window's CPU time (its length × the machine's
/// CPUs) the hypervisor may steal before the window is measured again (W1,
/// W2): a p99 is the few slowest answers or events of a window of seconds,
/// and one stall of the guest's CPUs sets it, and a throughput, for whichever
/// target it falls on (bench/PROFILE.md §55).
pub const STEAL_LIMIT: f64 = 0.01;

/// Windows per target and round at most: the first and two more when the
/// hypervisor stole more than [`STEAL_LIMIT`]; the least stolen is kept.
pub const STEAL_TRIES: usize = 3;

impl W2Cell {
    pub fn new(target: Kind) -> W2Cell {
        W2Cell {
            target,
            mem_kib: Series::default(),
            rss_before_kib: Series::default(),
            p50_ms: Series::default(),
            p99_ms: Series::default(),
            cpu_per_1k_ms: Series::default(),
            setup_s: Series::default(),
            settle_s: Series::default(),
            steal_pct: Series::default(),
            remeasured: 0,
            failed: 0,
            cut: 0,
            events: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W2Level {
    pub n: usize,
    pub cells: Vec<W2Cell>,
}

/// W2 (SSE streams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W2 {
    pub interval_ms: u64,
    pub pad: usize,
    pub window_s: f64,
    /// The largest N the machine allows (file descriptors, ephemeral ports).
    pub max_n: usize,
    /// Why the largest N is what it is.
    pub max_reason: String,
    /// Whether each stream's events came at its own phase of the interval,
    /// spread evenly, and every run started the upstreams afresh (false in
    /// results files written before: the events came one interval after each
    /// stream opened, from upstreams that had served the runs before).
    #[serde(default)]
    pub phased: bool,
    pub levels: Vec<W2Level>,
}

impl W2 {
    pub fn cell(&self, n: usize, k: Kind) -> Option<&W2Cell> {
        let level = self.levels.iter().find(|l| l.n == n)?;
        cell_of(&level.cells, k, |c| c.target)
    }

    pub fn ns(&self) -> Vec<usize> {
        self.levels.iter().map(|l| l.n).collect()
    }

    /// The largest N measured: the scale row.
    pub fn largest(&self) -> Option<usize> {
        self.levels.iter().map(|l| l.n).max()
    }
}

/// Failed requests by cause.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Failures {
    /// The proxy closed the keep-alive connection while the request was on
    /// its way (a client sees this as a dropped request).
    pub closed: u64,
    /// The connection broke inside the answer, or the answer was malformed.
    pub broken: u64,
    pub connect: u64,
    pub timeout: u64,
    pub status_5xx: u64,
    pub status_other: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        self.closed
            + self.broken
            + self.connect
            + self.timeout
            + self.status_5xx
            + self.status_other
    }

    pub fn add(&mut self, o: &Failures) {
        self.closed += o.closed;
        self.broken += o.broken;
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.status_5xx += o.status_5xx;
        self.status_other += o.status_other;
    }

    /// `3 closed by the proxy before the answer, 1 5xx` (empty when none).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.closed, "closed by the proxy before the answer"),
            (self.broken, "broken answer"),
            (self.connect, "connect failed"),
            (self.timeout, "timed out"),
            (self.status_5xx, "5xx"),
            (self.status_other, "other non-2xx"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        parts.join(", ")
    }
}

/// W3 figures of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W3Cell {
    pub target: Kind,
    /// Failed requests per run.
    pub failed: Series,
    pub p50_ms: Series,
    pub p99_ms: Series,
    pub max_ms: Series,
    /// Seconds the flips took.
    pub flip_time_s: Series,
    /// Answers from blue and from green.
    pub by_slot: [u64; 2],
    pub requests: u64,
    pub reconnects: u64,
    pub failures: Failures,
    pub flip_errors: u64,
    pub flip_error: Option<String>,
    /// The process died during a run (how), once per run it did.
    pub crashes: Vec<String>,
}

impl W3Cell {
    pub fn new(target: Kind) -> W3Cell {
        W3Cell {
            target,
            failed: Series::default(),
            p50_ms: Series::default(),
            p99_ms: Series::default(),
            max_ms: Series::default(),
            flip_time_s: Series::default(),
            by_slot: [0; 2],
            requests: 0,
            reconnects: 0,
            failures: Failures::default(),
            flip_errors: 0,
            flip_error: None,
            crashes: Vec::new(),
        }
    }
}

/// W3 (flip under load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W3 {
    pub flips: usize,
    pub every_ms: u64,
    pub rate: f64,
    pub conns: usize,
    pub cells: Vec<W3Cell>,
}

impl W3 {
    pub fn cell(&self, k: Kind) -> Option<&W3Cell> {
        cell_of(&self.cells, k, |c| c.target)
    }
}

/// W4 figures of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W4Cell {
    pub target: Kind,
    /// Seconds from t0 to the last session's close, per deploy.
    pub last_close_s: Vec<f64>,
    /// Seconds from t0 to "drained" (mcpflip), per deploy.
    pub deploy_s: Vec<f64>,
    /// Milliseconds from the last close to "drained" (mcpflip), per deploy.
    pub detection_ms: Vec<f64>,
    pub failed: usize,
    pub cut: usize,
}

impl W4Cell {
    pub fn new(target: Kind) -> W4Cell {
        W4Cell {
            target,
            last_close_s: Vec::new(),
            deploy_s: Vec::new(),
            detection_ms: Vec::new(),
            failed: 0,
            cut: 0,
        }
    }
}

/// W4 (deploy time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W4 {
    pub sessions: usize,
    pub span_s: f64,
    /// The guide's fixed wait after switching a proxy without a drain signal.
    pub guide_sleep_s: f64,
    pub cells: Vec<W4Cell>,
}

impl W4 {
    pub fn cell(&self, k: Kind) -> Option<&W4Cell> {
        cell_of(&self.cells, k, |c| c.target)
    }
}

/// W5 figures of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W5Cell {
    pub target: Kind,
    pub one: Series,
    pub many: Series,
    /// Per round: many / one (paired runs, back to back).
    pub ratio: Series,
    /// The proxy's CPU µs per request with one session and with many.
    pub cpu_one_us: Series,
    pub cpu_many_us: Series,
    /// Per round: CPU per request with many / with one.
    pub cpu_ratio: Series,
    pub failed: u64,
}

impl W5Cell {
    pub fn new(target: Kind) -> W5Cell {
        W5Cell {
            target,
            one: Series::default(),
            many: Series::default(),
            ratio: Series::default(),
            cpu_one_us: Series::default(),
            cpu_many_us: Series::default(),
            cpu_ratio: Series::default(),
            failed: 0,
        }
    }
}

/// W5 (affinity cost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W5 {
    pub sessions: usize,
    pub conns: usize,
    pub created_in_s: f64,
    pub cells: Vec<W5Cell>,
    /// The same with mcpflip capturing sessions for migration (absent in
    /// runs from before it was measured, and without mcpflip among the targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<W5Capture>,
}

/// W5 against a second mcpflip with live session migration on (`[drain]
/// migrate = "replay"`): every session's `initialize` is kept, and each
/// request of a session touches its idle clock in the sharded store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W5Capture {
    /// How the second mcpflip was set up.
    pub how: String,
    /// Its figures, measured as the other targets' (sessions opened through it).
    pub cell: W5Cell,
    /// Sessions it held captured once they were opened (`status.migration`).
    pub captured: u64,
    /// Bytes of captured bodies it held (`mcpflip_captured_session_bytes`).
    pub captured_bytes: u64,
    /// Its RSS growth over opening the sessions, KiB.
    pub rss_growth_kib: f64,
    /// mcpflip's RSS growth (capture off) over opening as many, KiB (`None`
    /// when the sessions were not opened through it).
    pub rss_growth_off_kib: Option<f64>,
}

impl W5Capture {
    /// RSS growth per captured session, bytes.
    pub fn bytes_per_session(&self) -> f64 {
        self.rss_growth_kib * 1024.0 / self.captured as f64
    }

    /// The same for mcpflip with capture off, bytes per session opened.
    pub fn bytes_per_session_off(&self, sessions: usize) -> Option<f64> {
        Some(self.rss_growth_off_kib? * 1024.0 / sessions as f64)
    }

    /// Captured bodies per session, bytes.
    pub fn body_bytes_per_session(&self) -> f64 {
        self.captured_bytes as f64 / self.captured as f64
    }
}

impl W5 {
    pub fn cell(&self, k: Kind) -> Option<&W5Cell> {
        cell_of(&self.cells, k, |c| c.target)
    }
}

// ----- the soak -------------------------------------------------------------

/// What a soak client was doing when a request succeeded or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exchange {
    /// Streamable HTTP: `initialize` (a new session, routed by weight).
    Initialize,
    /// Streamable HTTP: `notifications/initialized`.
    Initialized,
    /// Streamable HTTP: a `tools/call` answered with JSON.
    Call,
    /// Streamable HTTP: `tools/call slow`, answered with an SSE stream
    /// (progress notifications, then the result).
    SlowCall,
    /// Streamable HTTP: `DELETE` of the session.
    Delete,
    /// Legacy HTTP+SSE: `GET /sse` up to its `endpoint` event.
    SseOpen,
    /// Legacy HTTP+SSE: a `POST` to the endpoint (answered 202).
    SsePost,
    /// Legacy HTTP+SSE: the reply to a `POST`, on the session's stream.
    SseReply,
    /// `POST /stateless` (`tools/call whoami`, routed by weight).
    Stateless,
    /// `GET /ticker`, read to its last event.
    Ticker,
    /// A stream opened and then dropped by its client on purpose.
    Vanish,
}

impl Exchange {
    pub const ALL: [Exchange; 11] = [
        Exchange::Initialize,
        Exchange::Initialized,
        Exchange::Call,
        Exchange::SlowCall,
        Exchange::Delete,
        Exchange::SseOpen,
        Exchange::SsePost,
        Exchange::SseReply,
        Exchange::Stateless,
        Exchange::Ticker,
        Exchange::Vanish,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Exchange::Initialize => "Streamable HTTP initialize",
            Exchange::Initialized => "Streamable HTTP notifications/initialized",
            Exchange::Call => "Streamable HTTP tools/call (JSON answer)",
            Exchange::SlowCall => "Streamable HTTP tools/call slow (SSE answer)",
            Exchange::Delete => "Streamable HTTP DELETE",
            Exchange::SseOpen => "legacy SSE: GET /sse to its endpoint event",
            Exchange::SsePost => "legacy SSE: POST (202)",
            Exchange::SseReply => "legacy SSE: reply on the stream",
            Exchange::Stateless => "stateless POST",
            Exchange::Ticker => "GET /ticker read to its end",
            Exchange::Vanish => "stream dropped by its client",
        }
    }
}

/// Why a soak request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The connection to the proxy could not be opened.
    Connect,
    /// The proxy closed the connection before any byte of an answer.
    Closed,
    /// The answer or the stream broke (EOF or reset inside it, malformed).
    Broken,
    /// No answer (or no next event) in time.
    Timeout,
    /// An HTTP status other than the one asked for (`status` says which).
    Status,
    /// `404` with the JSON-RPC "Session not found" body: the session is gone.
    SessionNotFound,
    /// Answered by a slot other than the one that holds the session.
    WrongSlot,
    /// The status was right but the answer was not (no result, wrong id, events out of order).
    WrongAnswer,
    /// A stream ended cleanly before its last event.
    Cut,
}

impl Cause {
    pub fn label(self) -> &'static str {
        match self {
            Cause::Connect => "connect failed",
            Cause::Closed => "closed before any answer",
            Cause::Broken => "broken answer or stream",
            Cause::Timeout => "timed out",
            Cause::Status => "HTTP status",
            Cause::SessionNotFound => "404 Session not found",
            Cause::WrongSlot => "answered by the wrong slot",
            Cause::WrongAnswer => "wrong answer",
            Cause::Cut => "stream ended early",
        }
    }
}

/// One failed request of the soak, with what is known of where it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub exchange: Exchange,
    pub cause: Cause,
    /// The HTTP status, for [`Cause::Status`] (and 404s).
    #[serde(default)]
    pub status: Option<u16>,
    /// The slot the request was routed to, where the client can know it: the
    /// session's tag, the upstream's `X-Served-By`, or the `slot` of the
    /// proxy's own JSON error.
    #[serde(default)]
    pub slot: Option<Slot>,
    /// The slot generation in the session's tag (session requests only).
    #[serde(default)]
    pub generation: Option<u32>,
    /// Milliseconds from the start of the load to the request's send, and to its failure.
    pub sent_ms: u64,
    pub failed_ms: u64,
    /// What the client saw (the proxy's error code, the bytes that were wrong).
    pub detail: String,
}

impl Failure {
    /// `HTTP 502` for a status, the cause's label otherwise.
    pub fn what(&self) -> String {
        match (self.cause, self.status) {
            (Cause::Status, Some(s)) => format!("HTTP {s}"),
            (c, _) => c.label().to_owned(),
        }
    }
}

/// Requests of one kind: answered as asked, and failed (of those, how many
/// were the killed upstream's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeCount {
    pub exchange: Exchange,
    pub ok: u64,
    pub failed: u64,
    pub expected: u64,
}

/// Failures of one kind and cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureCount {
    pub exchange: Exchange,
    /// [`Failure::what`]: the cause, or the HTTP status.
    pub what: String,
    /// Failures of requests routed to a killed upstream within its kill window.
    pub expected: u64,
    /// Every other failure: each one fails the soak.
    pub unexpected: u64,
}

/// One SIGKILL of an upstream slot process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    pub slot: Slot,
    /// The slot's generation while the killed process served it.
    pub generation: u32,
    /// The deploy it happened in (its number, from 1).
    pub deploy: usize,
    /// The slot's state and counts (`status`) just before the kill.
    pub state: String,
    pub live_streams: u64,
    pub inflight: u64,
    /// Milliseconds from the start of the load: the kill, and the end of the
    /// operator's answer to it (`retire`, restart, `standby`).
    pub killed_ms: u64,
    pub recovered_ms: u64,
    /// The generation `standby` gave the restarted process.
    pub new_generation: u32,
    /// Failures attributed to this kill.
    pub failures: u64,
}

/// One `ctl deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    /// From 1.
    pub n: usize,
    /// Seconds from the start of the load to the `deploy` command.
    pub at_s: f64,
    pub from: Slot,
    pub to: Slot,
    /// `passed`, or the error code of the final reply (`rolled_back`,
    /// `probe_failed`, …), or `error` when the command itself failed.
    pub outcome: String,
    #[serde(default)]
    pub message: Option<String>,
    /// The command's duration, seconds.
    pub elapsed_s: f64,
    /// How long the old slot took to drain (`None`: its drain was cancelled
    /// by a kill's `retire`, or the deploy failed first).
    #[serde(default)]
    pub drained_after_ms: Option<u64>,
    /// Streams the drain deadline ended.
    pub forced: u64,
    /// An upstream was killed during this deploy.
    pub killed: bool,
}

/// A slot's live counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotCounts {
    pub slot: String,
    pub live_streams: u64,
    pub inflight: u64,
}

/// The proxy after the load stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakEnd {
    /// Seconds from the end of the load until `/status` showed every count at
    /// 0 (`None`: not within `waited_s`).
    #[serde(default)]
    pub zero_after_s: Option<f64>,
    pub waited_s: f64,
    /// How long after that the end (RSS, descriptors) was read.
    #[serde(default)]
    pub settle_s: f64,
    /// `/status` at the end of the wait.
    pub status: Vec<SlotCounts>,
    /// The `mcpflip_live_streams` and `mcpflip_inflight_requests` gauges of `/metrics`, read after.
    pub metrics: Vec<SlotCounts>,
    /// Set when the proxy process was not running at the end (how it ended).
    #[serde(default)]
    pub proxy_exit: Option<String>,
    /// Client tasks that had not finished 60 s after the load stopped.
    pub stuck_clients: u64,
    /// The proxy's descriptors at the start and at the end, grouped by what
    /// they are (`2 × TCP ESTABLISHED an ephemeral port → blue upstream :3001`).
    #[serde(default)]
    pub fds_start: Vec<String>,
    #[serde(default)]
    pub fds_end: Vec<String>,
    /// ERROR lines of the proxy's log (the first few): not a check of the
    /// issue's, shown so that nothing the proxy said goes unread.
    #[serde(default)]
    pub log_errors: Vec<String>,
    /// How many ERROR lines it wrote in all.
    #[serde(default)]
    pub log_error_count: u64,
    /// The size of the proxy's log file (its access log included), bytes.
    #[serde(default)]
    pub log_bytes: u64,
    /// `mcpflip_access_log_dropped_lines_total` at the end (`None`: not in /metrics).
    #[serde(default)]
    pub access_log_dropped: Option<u64>,
}

/// A reading at the start, its highest value, and at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub start: u64,
    pub peak: u64,
    pub end: u64,
}

/// The proxy at one moment of the soak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakSample {
    /// Seconds from the start of the load.
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub live_streams: u64,
    pub inflight: u64,
}

/// One pass/fail verdict of the soak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// One kind of soak client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixPart {
    pub what: String,
    pub clients: usize,
    pub detail: String,
}

/// The soak: mixed load through mcpflip for minutes, a `deploy` every minute,
/// an upstream killed every few, and what the proxy looked like at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Soak {
    /// Where and how it ran (a comparison's report that shows this soak
    /// names it): RFC 3339 date, the command, the results file, mcpflip's
    /// version, the machine.
    pub date: String,
    pub command: String,
    pub file: String,
    pub mcpflip: String,
    pub machine: Machine,
    /// The planned length of the load, minutes, and what it ran, seconds.
    pub minutes: f64,
    pub load_s: f64,
    pub smoke: bool,
    pub mix: Vec<MixPart>,
    /// The config file mcpflip ran with.
    pub config: String,
    pub requests: Vec<ExchangeCount>,
    /// SSE events the clients read (tickers, legacy sessions, slow calls).
    pub sse_events: u64,
    pub failures: Vec<FailureCount>,
    /// The first unexpected failures, as the clients saw them.
    pub examples: Vec<Failure>,
    pub kills: Vec<Kill>,
    pub deploys: Vec<Deploy>,
    /// What the schedule asked for (the plan of `soak::plan`).
    pub planned_deploys: usize,
    pub planned_kills: usize,
    pub end: SoakEnd,
    /// The proxy's resident memory (`VmRSS`; the peak is `VmHWM`), KiB.
    pub rss_kib: Span,
    /// The proxy's open file descriptors (`/proc/PID/fd`).
    pub fds: Span,
    /// The proxy, every 10 s.
    pub samples: Vec<SoakSample>,
    pub checks: Vec<Check>,
}

impl Soak {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_splits_small_and_large_machines() {
        let two = CpuPlan::new(&[0, 1], None);
        assert_eq!(
            (two.proxy, two.upstream, two.loadgen),
            (vec![1], vec![0], vec![0])
        );
        let sixteen: Vec<usize> = (0..16).collect();
        let p = CpuPlan::new(&sixteen, None);
        assert_eq!(p.proxy, vec![12, 13, 14, 15]);
        assert_eq!(p.upstream, vec![8, 9, 10, 11]);
        assert_eq!(p.loadgen, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn more_workers_than_proxy_cores_run_unpinned() {
        let two = CpuPlan::new(&[0, 1], None);
        assert_eq!(two.for_workers(1, &[0, 1]), (vec![1], true));
        assert_eq!(two.for_workers(2, &[0, 1]), (vec![0, 1], false));
        let sixteen: Vec<usize> = (0..16).collect();
        let p = CpuPlan::new(&sixteen, None);
        assert_eq!(p.for_workers(2, &sixteen), (vec![12, 13], true));
    }

    #[test]
    fn machine_slugs_are_short_file_name_parts() {
        let m = |model: &str, cores| Machine {
            hostname: String::new(),
            cpu_model: model.to_owned(),
            cores,
            kernel: String::new(),
            memory_gib: 0.0,
        };
        assert_eq!(m("AMD EPYC @ 2.60 GHz", 2).slug(), "2c-amd-epyc");
        assert_eq!(
            m("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 16).slug(),
            "16c-intel-xeon-platinum-8375c"
        );
        assert_eq!(m("", 1).slug(), "1c-unknown");
    }

    #[test]
    fn a_series_keeps_missing_rounds_as_null() {
        let s = Series(vec![1.0, f64::NAN, 3.0]);
        let json = serde_json::to_value(&s).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"median": 2.0, "min": 1.0, "max": 3.0, "rounds": [1.0, null, 3.0]})
        );
        let back: Series = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.0.len(), 3);
        assert!(back.0[1].is_nan());
        assert_eq!(back.median(), 2.0);
    }

    #[test]
    fn other_schemas_and_other_files_are_refused() {
        let mut v: serde_json::Value =
            serde_json::from_str(&crate::fixture::run().to_json().expect("json")).expect("value");
        v["schema"] = serde_json::json!(SCHEMA + 1);
        let err = Run::from_json(&v.to_string()).expect_err("newer schema");
        assert!(format!("{err:#}").contains("schema"), "{err:#}");
        let err = Run::from_json("{\"a\": 1}").expect_err("not a result");
        assert!(format!("{err:#}").contains("not an mcpflip-bench result"));
        assert!(Run::from_json("nope").is_err());
    }
}
