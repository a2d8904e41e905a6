//! The run as a whole: the command line (run, `render`, `diff`, `soak`), the
//! settings a run resolves to (full or `--quick`), and [`Bench`], which owns
//! the upstreams and the targets and runs the rounds (every target once per
//! round, so A B A B: slow drift of the machine hits every target alike; each
//! round starts one target further on, so no target always follows the same
//! one).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{CpuPlan, Kind};
use crate::sys;
use crate::targets::{Env, Target, Upstreams};

/// Round `by`'s order of `0..n`: a base order shifted by `by` (each target
/// `+ by` modulo `n`), so that over `n` rounds each target takes every place
/// once. The base is a Williams sequence (0, 1, −1, 2, −2, … modulo `n`; for
/// an odd `n`, that of `n − 1` and then `n − 1`), whose steps from one place
/// to the next differ: a target's predecessor changes from round to round,
/// where a plain rotation kept every target right after the same one in each
/// round (mcpflip always ran right after `direct`, which had just driven the
/// upstreams hardest).
pub(crate) fn rotated(n: usize, by: usize) -> Vec<usize> {
    let even = n - n % 2;
    let williams = (0..even).map(|k| {
        let step = k.div_ceil(2);
        if k % 2 == 1 {
            step
        } else {
            (even - step) % even
        }
    });
    williams
        .chain((even < n).then(|| n - 1))
        .map(|b| (b + by) % n)
        .collect()
}

/// The parts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Request/response, with this bench's load generator and with wrk.
    W1,
    /// SSE streams, and the scale row.
    W2,
    /// Flips under load.
    W3,
    /// Deploy time.
    W4,
    /// Affinity cost.
    W5,
    /// W1 c=64 behind a static upstream: the proxy as the bound.
    W1Static,
    /// W1 c=64 with mcpflip's access log on and off.
    AccessLog,
    /// W1 c=64 with 1, 2, … workers for every proxy.
    Multicore,
}

impl Workload {
    pub const ALL: [Workload; 8] = [
        Workload::W1,
        Workload::W1Static,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::W5,
        Workload::AccessLog,
        Workload::Multicore,
    ];
}

/// `mcpflip-bench`: the comparison benchmark.
#[derive(Debug, Parser)]
#[command(
    name = "mcpflip-bench",
    about = "mcpflip side by side with nginx, HAProxy and Caddy (and direct) on loopback",
    long_about = "Runs every workload (W1..W5, the access-log and multi-core sections) against \
direct, mcpflip, nginx, HAProxy and Caddy on loopback, writes the results as JSON \
(bench/results/<date>-<machine>.json) and renders BENCHMARKS.md from them.\n\n\
`soak` runs issue 10's soak instead (mcpflip alone, 30 minutes or --smoke). \
Run it from the repository: cargo run -p mcpflip-bench --release -- [--quick]. \
The anchors come from Debian's packages: bench/setup.sh (as root) installs them.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Options,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the benchmark (what no subcommand does too).
    Run(Options),
    /// Render a results file as BENCHMARKS.md's markdown (stdout, or --out).
    Render {
        /// A results file (`bench/results/*.json`).
        file: PathBuf,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A soak's results file (`mcpflip-bench soak`): its section is
        /// rendered into the report (BENCHMARKS.md's soak figures).
        #[arg(long)]
        soak: Option<PathBuf>,
    },
    /// The soak: mixed load through mcpflip for 30 minutes (or --minutes, or
    /// --smoke: 2), a deploy every minute, an upstream killed every three;
    /// exits 1 when a check fails.
    Soak(SoakOptions),
    /// The fleet's figures (issue 15): propagation of a flip to 3 instances
    /// through a 3-member etcd, and the fleet drain's detection time.
    Fleet {
        /// Flips to time.
        #[arg(long, default_value_t = 200)]
        flips: usize,
        /// The mcpflip binary (default: build the profiling profile).
        #[arg(long)]
        mcpflip: Option<PathBuf>,
    },
    /// Build mcpflip profile-guided, as a run measures it: an instrumented
    /// build, trained by this bench's W2, W3 and W5 against mcpflip alone,
    /// then the build laid out by that profile (bench/PROFILE.md §57). Prints
    /// the binary's path: `target/<host>/<profile>/mcpflip`.
    Pgo {
        /// The cargo profile of both builds: `release` (what ships) or
        /// `profiling` (the same code with line tables).
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// How each target of issue 14 fared over many runs: in how many it was
    /// met, and its spread (bench/PROFILE.md §59).
    History {
        /// Results files, oldest first (default: every file in
        /// bench/results/, by name, which starts with the run's date).
        files: Vec<PathBuf>,
        /// How many of the latest values each line shows.
        #[arg(long, default_value_t = 5)]
        last: usize,
    },
    /// Print how mcpflip's ratios moved from run A to run B.
    Diff {
        /// The earlier results file.
        a: PathBuf,
        /// The later results file.
        b: PathBuf,
    },
}

/// The options of a run.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Each workload briefly (a smoke test, about 3 minutes); writes under
    /// target/compare/ unless --out / --json.
    #[arg(
        long,
        env = "MCPFLIP_BENCH_QUICK",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub quick: bool,
    /// Only these parts (writes under target/compare/ unless --out / --json).
    #[arg(long, value_delimiter = ',', ignore_case = true)]
    pub only: Vec<Workload>,
    /// Only these targets.
    #[arg(long, value_delimiter = ',', ignore_case = true)]
    pub targets: Vec<Kind>,
    /// Rounds per workload (default 3, and 5 for W1, W2 and the access log; quick 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// Cores, and workers, for the proxy under test.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub proxy_cores: Option<u32>,
    /// The multi-core section's worker counts (default 1,2 and the proxy's cores).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: Vec<u32>,
    /// W3's pace: one flip every N ms (default 5).
    #[arg(long)]
    pub flip_every_ms: Option<u64>,
    /// Where the markdown report goes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the JSON results go.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use this mcpflip binary instead of building it (profile-guided, with
    /// the profiling profile).
    #[arg(long)]
    pub mcpflip: Option<PathBuf>,
    /// Skip the perf profile of mcpflip under W1.
    #[arg(long)]
    pub no_profile: bool,
    /// Measure mcpflip built without a profile (by default it is built
    /// profile-guided, as `mcpflip-bench pgo` builds it).
    #[arg(long)]
    pub no_pgo: bool,
    /// Keep the temporary directory (every config and log).
    #[arg(long)]
    pub keep: bool,
    /// W2: write every measured event's upstream send time and client
    /// arrival (`ts_us arrival_us`, Unix microseconds) to one file per run
    /// in DIR, to split the relay latency into hops against a packet capture
    /// (bench/profile/hops.py).
    #[arg(long, value_name = "DIR")]
    pub w2_arrivals: Option<PathBuf>,
    /// Leave other processes on the proxy's cores (by default their threads
    /// are moved off them for the run and put back after).
    #[arg(long)]
    pub no_shield: bool,
}

impl Options {
    /// The parts to run (every part when `--only` is not given).
    pub fn parts(&self) -> Vec<Workload> {
        if self.only.is_empty() {
            Workload::ALL.to_vec()
        } else {
            Workload::ALL
                .into_iter()
                .filter(|w| self.only.contains(w))
                .collect()
        }
    }

    /// The targets, in the order of a round.
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| self.targets.is_empty() || self.targets.contains(k))
            .collect()
    }

    /// Every part against every target, full length: the run that may write
    /// BENCHMARKS.md and `bench/results/`.
    pub fn complete(&self) -> bool {
        !self.quick
            && self.parts().len() == Workload::ALL.len()
            && self.kinds().len() == Kind::ALL.len()
    }

    pub fn wants(&self, w: Workload) -> bool {
        self.parts().contains(&w)
    }
}

/// The options of a soak.
#[derive(Debug, Clone, Args)]
pub struct SoakOptions {
    /// Minutes of load.
    #[arg(long, default_value_t = SOAK_MINUTES, value_parser = clap::value_parser!(u32).range(1..=24 * 60))]
    pub minutes: u32,
    /// Two minutes (two deploys, one kill): a smoke test; writes under
    /// target/compare/ unless --out / --json.
    #[arg(long, conflicts_with = "minutes")]
    pub smoke: bool,
    /// Where the markdown section goes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the JSON results go.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use this mcpflip binary instead of building target/profiling/mcpflip.
    #[arg(long)]
    pub mcpflip: Option<PathBuf>,
    /// Keep the temporary directory (the config and every process's log).
    #[arg(long)]
    pub keep: bool,
}

/// The soak's reference length (the issue's).
pub const SOAK_MINUTES: u32 = 30;

/// The smoke run's length.
pub const SMOKE_MINUTES: u32 = 2;

impl SoakOptions {
    /// Minutes of load.
    pub fn minutes(&self) -> f64 {
        f64::from(if self.smoke {
            SMOKE_MINUTES
        } else {
            self.minutes
        })
    }

    /// The reference run: the one that writes `bench/results/`.
    pub fn reference(&self) -> bool {
        !self.smoke && self.minutes == SOAK_MINUTES
    }
}

/// Durations and sizes of every workload.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    /// W1 is the noisiest figure (CPU-bound on a shared machine): more rounds.
    pub w1_rounds: usize,
    pub w1_conc: Vec<usize>,
    pub w1_warmup: Duration,
    pub w1_measure: Duration,
    pub w2_levels: Vec<usize>,
    /// The most streams the machine allows, and why.
    pub w2_max_n: usize,
    pub w2_max_reason: String,
    pub w2_interval_ms: u64,
    pub w2_pad: usize,
    pub w2_window: Duration,
    /// `--w2-arrivals`.
    pub w2_arrivals: Option<PathBuf>,
    pub w3_flips: usize,
    /// One flip every this long (`--flip-every-ms`).
    pub w3_every: Duration,
    pub w3_rate: f64,
    pub w3_conns: usize,
    pub w3_warmup: Duration,
    pub w4_sessions: usize,
    pub w4_span: Duration,
    pub w4_mcpflip_runs: usize,
    pub w5_sessions: usize,
    pub w5_measure: Duration,
    /// wrk's run length (whole seconds: wrk takes no fractions).
    pub wrk_seconds: u64,
    /// The concurrency of the wrk cross-check, the access log and multi-core runs.
    pub c64: usize,
    /// The multi-core section's worker counts.
    pub mc_workers: Vec<usize>,
}

impl Settings {
    /// `max_streams`: the largest W2 level the machine allows; `proxy_cores`:
    /// the workers every proxy gets outside the multi-core section.
    pub fn new(
        o: &Options,
        max_streams: usize,
        max_reason: String,
        proxy_cores: usize,
    ) -> Settings {
        let ms = Duration::from_millis;
        let rounds = o.rounds.map(|r| r as usize);
        let mut mc_workers: Vec<usize> = if o.workers.is_empty() {
            vec![1, 2, proxy_cores]
        } else {
            o.workers.iter().map(|&w| w as usize).collect()
        };
        mc_workers.sort_unstable();
        mc_workers.dedup();
        // 1k, 10k (or the most the machine allows, if less), and the most the
        // machine allows when that is more (full runs only).
        // (The scale row is the largest level measured.)
        let mut levels = vec![1_000, max_streams.clamp(1_000, 10_000)];
        if max_streams > 10_000 && !o.quick {
            levels.push(max_streams);
        }
        levels.dedup();
        if o.quick {
            Settings {
                quick: true,
                rounds: rounds.unwrap_or(1),
                w1_rounds: rounds.unwrap_or(1),
                w1_conc: vec![1, 64, 256],
                w1_warmup: ms(300),
                w1_measure: ms(1000),
                w2_levels: levels,
                w2_max_n: max_streams,
                w2_max_reason: max_reason,
                w2_interval_ms: 500,
                w2_pad: 256,
                w2_window: ms(1500),
                w2_arrivals: o.w2_arrivals.clone(),
                w3_flips: 100,
                w3_every: ms(o.flip_every_ms.unwrap_or(5)),
                w3_rate: 2000.0,
                w3_conns: 64,
                w3_warmup: ms(300),
                w4_sessions: 20,
                w4_span: ms(2000),
                w4_mcpflip_runs: 3,
                w5_sessions: 10_000,
                w5_measure: ms(1000),
                wrk_seconds: 1,
                c64: 64,
                mc_workers,
            }
        } else {
            Settings {
                quick: false,
                rounds: rounds.unwrap_or(3),
                w1_rounds: rounds.unwrap_or(5),
                w1_conc: vec![1, 64, 256],
                w1_warmup: ms(400),
                w1_measure: ms(2000),
                w2_levels: levels,
                w2_max_n: max_streams,
                w2_max_reason: max_reason,
                w2_interval_ms: 500,
                w2_pad: 256,
                w2_window: ms(2500),
                w2_arrivals: o.w2_arrivals.clone(),
                w3_flips: 1000,
                w3_every: ms(o.flip_every_ms.unwrap_or(5)),
                w3_rate: 2000.0,
                w3_conns: 64,
                w3_warmup: ms(500),
                w4_sessions: 100,
                w4_span: ms(2000),
                w4_mcpflip_runs: 4,
                w5_sessions: 100_000,
                w5_measure: ms(2000),
                wrk_seconds: 2,
                c64: 64,
                mc_workers,
            }
        }
    }
}

/// One round of a workload.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub i: usize,
    pub of: usize,
}

impl std::fmt::Display for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "r{}/{}", self.i + 1, self.of)
    }
}

/// The upstreams, the targets, and the clock.
pub struct Bench {
    pub env: Env,
    pub settings: Settings,
    pub upstreams: Upstreams,
    pub targets: Vec<Target>,
    started: Instant,
}

impl Bench {
    pub fn new(
        env: Env,
        settings: Settings,
        kinds: &[Kind],
        started: Instant,
    ) -> anyhow::Result<Bench> {
        let upstreams = Upstreams::start(&env)?;
        let targets = kinds
            .iter()
            .map(|&k| Target::new(k, &env, &upstreams))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Bench {
            env,
            settings,
            upstreams,
            targets,
            started,
        })
    }

    pub fn kinds(&self) -> Vec<Kind> {
        self.targets.iter().map(|t| t.kind).collect()
    }

    pub fn index(&self, k: Kind) -> Option<usize> {
        self.targets.iter().position(|t| t.kind == k)
    }

    pub fn rounds(&self) -> impl Iterator<Item = Round> {
        Self::rounds_of(self.settings.rounds)
    }

    /// `of` rounds.
    pub fn rounds_of(of: usize) -> impl Iterator<Item = Round> {
        (0..of).map(move |i| Round { i, of })
    }

    /// The targets in the order of a round: each round starts one target
    /// further on (round 1: direct, mcpflip, HAProxy, nginx, Caddy; round 2:
    /// mcpflip, nginx, Caddy, HAProxy, direct), and the order within a round
    /// changes which target runs right after which, so that no target always
    /// runs right after the same one, or first after a restart (a place in
    /// the order is not a property of a proxy).
    pub fn order(&self, round: Round) -> Vec<usize> {
        rotated(self.targets.len(), round.i)
    }

    /// The plan every target starts with.
    pub fn plan(&self) -> &CpuPlan {
        &self.env.plan
    }

    /// Process groups whose CPU time a run reads: the proxy under test, the
    /// upstreams, and this process (the load generator).
    pub fn cpu_groups(&self, i: usize) -> Vec<(&'static str, Vec<u32>)> {
        self.groups_of(&self.targets[i], std::process::id())
    }

    /// The same for any target, with `loadgen` as the load generator's process.
    pub fn groups_of(&self, t: &Target, loadgen: u32) -> Vec<(&'static str, Vec<u32>)> {
        vec![
            ("proxy", t.pids()),
            ("upstream", self.upstreams.pids()),
            ("loadgen", vec![loadgen]),
        ]
    }

    /// Every target's processes and the upstreams': what has to be quiet
    /// before a run whose figures the previous run's teardown would skew.
    pub fn all_pids(&self) -> Vec<u32> {
        let mut pids = self.upstreams.pids();
        for t in &self.targets {
            pids.extend(t.pids());
        }
        pids
    }

    /// Restarts target `i` if its process died during a run; returns what
    /// ended it.
    pub async fn revive(&mut self, i: usize) -> anyhow::Result<Option<String>> {
        let Some(why) = self.targets[i].exited() else {
            return Ok(None);
        };
        self.log(&format!("   {why}; starting it again"));
        self.targets[i].start().await?;
        Ok(Some(why))
    }

    /// Every proxy afresh (between workloads).
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for t in &mut self.targets {
            t.restart().await?;
        }
        Ok(())
    }

    /// One progress line on stdout, stamped with the time since the start.
    pub fn log(&self, msg: &str) {
        println!("[{:>6.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }

    pub fn stop(&mut self) {
        for t in &mut self.targets {
            t.stop();
        }
        self.upstreams.stop();
    }
}

/// The largest number of streams W2 may hold on this machine, and why
/// (`nofile`: the soft limit in force, already raised to the hard one).
pub fn max_streams(nofile: u64) -> (usize, String) {
    let (lo, hi) = sys::ephemeral_ports();
    let ports = (hi.saturating_sub(lo) as usize).saturating_sub(3_000);
    // The proxy holds two sockets per stream.
    let fds = (nofile as usize).saturating_sub(2_000) / 2;
    let round = |n: usize| n / 1_000 * 1_000;
    if ports <= fds {
        (
            round(ports),
            format!(
                "each proxy opens its upstream connections from 127.0.0.1 to one upstream port, \
                 so the ephemeral port range ({lo}–{hi}, less a margin) bounds the streams one \
                 proxy can hold; the clients spread over 127.0.0.2.. and are not the limit"
            ),
        )
    } else {
        (
            round(fds),
            format!(
                "the open-file limit: RLIMIT_NOFILE is {nofile} here (the soft limit raised to the \
                 hard limit; raising the hard limit needs CAP_SYS_RESOURCE), and a proxy holds two \
                 sockets per stream, so one proxy process can hold about {} streams",
                round(fds)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mcpflip-bench").chain(args.iter().copied()))
    }

    #[test]
    fn options_without_a_subcommand_run_the_bench() {
        let cli = parse(&[
            "--quick",
            "--only",
            "w1,Access-Log",
            "--targets",
            "nginx,mcpflip",
        ])
        .expect("parses");
        assert!(cli.command.is_none());
        let o = cli.run;
        assert!(o.quick);
        assert_eq!(o.parts(), vec![Workload::W1, Workload::AccessLog]);
        // The order of a round, whatever the order given.
        assert_eq!(o.kinds(), vec![Kind::Mcpflip, Kind::Nginx]);
        assert!(!o.complete());
    }

    /// Run in a child process (the environment is the process's): what
    /// `MCPFLIP_BENCH_QUICK` means.
    #[test]
    fn quick_from_the_environment() {
        const CHILD: &str = "MCPFLIP_BENCH_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let want = std::env::var("MCPFLIP_BENCH_QUICK").is_ok_and(|v| v == "1" || v == "yes");
            assert_eq!(parse(&[]).expect("parses").run.quick, want);
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        for (value, quick) in [("1", true), ("yes", true), ("0", false), ("", false)] {
            let out = std::process::Command::new(&exe)
                .args(["--exact", "bench::tests::quick_from_the_environment"])
                .env(CHILD, "1")
                .env("MCPFLIP_BENCH_QUICK", value)
                .output()
                .expect("runs the child");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "MCPFLIP_BENCH_QUICK={value:?} should mean quick={quick}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn every_part_and_target_by_default() {
        let o = parse(&["run"]).expect("parses");
        let Some(Command::Run(o)) = o.command else {
            panic!("`run` is the run subcommand");
        };
        assert_eq!(o.parts(), Workload::ALL.to_vec());
        assert_eq!(o.kinds(), Kind::ALL.to_vec());
        assert_eq!(o.complete(), !o.quick);
    }

    #[test]
    fn render_and_diff_take_files() {
        let cli = parse(&["render", "a.json", "--out", "B.md"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Render { ref file, ref out, .. })
                if file == &PathBuf::from("a.json") && out.as_deref() == Some(std::path::Path::new("B.md"))
        ));
        let cli = parse(&["diff", "a.json", "b.json"]).expect("parses");
        assert!(matches!(cli.command, Some(Command::Diff { .. })));
        assert!(parse(&["diff", "a.json"]).is_err());
        let cli = parse(&["history", "a.json", "b.json", "--last", "3"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::History { ref files, last: 3 }) if files.len() == 2
        ));
        let cli = parse(&["history"]).expect("no files: every result");
        assert!(matches!(
            cli.command,
            Some(Command::History { ref files, last: 5 }) if files.is_empty()
        ));
    }

    #[test]
    fn the_soak_is_thirty_minutes_unless_told() {
        let soak = |args: &[&str]| match parse(args).expect("parses").command {
            Some(Command::Soak(o)) => o,
            other => panic!("not the soak: {other:?}"),
        };
        let o = soak(&["soak"]);
        assert_eq!((o.minutes(), o.reference()), (30.0, true));
        let o = soak(&["soak", "--smoke"]);
        assert_eq!((o.minutes(), o.reference()), (2.0, false));
        let o = soak(&["soak", "--minutes", "5"]);
        assert_eq!((o.minutes(), o.reference()), (5.0, false));
        assert!(parse(&["soak", "--minutes", "0"]).is_err());
        assert!(parse(&["soak", "--smoke", "--minutes", "5"]).is_err());
        let cli = parse(&["render", "a.json", "--soak", "s.json"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Render { soak: Some(ref s), .. }) if s == &PathBuf::from("s.json")
        ));
    }

    #[test]
    fn w2_arrivals_are_kept_only_when_asked() {
        let o = parse(&[]).expect("parses").run;
        assert_eq!(Settings::new(&o, 9_000, String::new(), 1).w2_arrivals, None);
        let o = parse(&["--only", "w2", "--w2-arrivals", "/tmp/a"])
            .expect("parses")
            .run;
        let s = Settings::new(&o, 9_000, String::new(), 1);
        assert_eq!(s.w2_arrivals, Some(PathBuf::from("/tmp/a")));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--rounds", "0"]).is_err());
        assert!(parse(&["--workers", "1,0"]).is_err());
        assert!(parse(&["--only", "W9"]).is_err());
        assert!(parse(&["--targets", "envoy"]).is_err());
    }

    #[test]
    fn multicore_counts_include_the_plans_workers() {
        let o = parse(&[]).expect("parses").run;
        let s = Settings::new(&o, 9_000, String::new(), 4);
        assert_eq!(s.mc_workers, vec![1, 2, 4]);
        let o = parse(&["--workers", "2,1,2"]).expect("parses").run;
        let s = Settings::new(&o, 9_000, String::new(), 1);
        assert_eq!(s.mc_workers, vec![1, 2]);
    }

    #[test]
    fn w2_levels_end_at_the_largest_n_allowed() {
        let full = parse(&[]).expect("parses").run;
        let quick = parse(&["--quick"]).expect("parses").run;
        assert_eq!(
            Settings::new(&full, 9_000, String::new(), 1).w2_levels,
            vec![1_000, 9_000]
        );
        assert_eq!(
            Settings::new(&full, 25_000, String::new(), 1).w2_levels,
            vec![1_000, 10_000, 25_000]
        );
        assert_eq!(
            Settings::new(&quick, 25_000, String::new(), 1).w2_levels,
            vec![1_000, 10_000]
        );
    }

    #[test]
    fn each_round_starts_one_target_further_on() {
        assert_eq!(rotated(3, 0), [0, 1, 2]);
        assert_eq!(rotated(3, 1), [1, 2, 0]);
        assert_eq!(rotated(3, 4), [1, 2, 0]);
        assert_eq!(rotated(5, 0), [0, 1, 3, 2, 4]);
        assert_eq!(rotated(4, 1), [1, 2, 0, 3]);
        assert_eq!(rotated(2, 1), [1, 0]);
        // Over as many rounds as targets, each target takes every place once.
        for place in 0..5 {
            let mut at: Vec<usize> = (0..5).map(|r| rotated(5, r)[place]).collect();
            at.sort_unstable();
            assert_eq!(at, [0, 1, 2, 3, 4]);
        }
        assert!(rotated(0, 2).is_empty());
    }

    /// The targets `t` runs right after over `n` rounds of `n` targets.
    fn ran_after(n: usize, t: usize) -> std::collections::BTreeSet<usize> {
        (0..n)
            .filter_map(|r| {
                let order = rotated(n, r);
                let at = order.iter().position(|&x| x == t).expect("every target");
                at.checked_sub(1).map(|p| order[p])
            })
            .collect()
    }

    #[test]
    fn no_target_runs_after_the_same_one_in_every_round() {
        // The five targets of a full run over its five rounds (a rotation
        // kept mcpflip right after direct in each round it was not first).
        for t in 0..5 {
            let before = ran_after(5, t);
            assert!(before.len() >= 3, "target {t} ran after {before:?} only");
        }
        // Four targets: every other one, as the Williams square gives.
        for t in 0..4 {
            let before = ran_after(4, t);
            assert_eq!(before.len(), 3, "target {t} ran after {before:?} only");
        }
    }
}
