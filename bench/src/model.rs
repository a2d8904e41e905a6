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
    pub rounds: usize,
    pub w1_rounds: usize,
    pub targets: Vec<Kind>,
    pub machine: Machine,
    pub plan: CpuPlan,
    /// `taskset` was found: the processes were pinned to their cores.
    pub pinned: bool,
    pub versions: Vec<Version>,
    /// RLIMIT_NOFILE of every process: the soft limit in force, and the hard one.
    pub nofile: u64,
    pub nofile_hard: u64,
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
}

impl Run {
    pub fn new(meta: Meta) -> Run {
        Run {
            schema: SCHEMA,
            meta,
            w1: None,
            w1_wrk: None,
            access_log: None,
            multicore: None,
            profile: None,
            w2: None,
            w3: None,
            w4: None,
            w5: None,
        }
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
    pub failed: usize,
    pub cut: usize,
    pub events: u64,
}

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
}

impl W5 {
    pub fn cell(&self, k: Kind) -> Option<&W5Cell> {
        cell_of(&self.cells, k, |c| c.target)
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
