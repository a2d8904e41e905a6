//! The run as a whole: the command-line options, the settings they resolve to
//! (full or `--quick`), and [`Bench`], which owns the upstreams and the
//! targets and runs the rounds (every target once per round, in the same
//! order, so A B A B: slow drift of the machine hits every target alike).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::sys;
use crate::targets::{Env, Kind, Target, Upstreams};

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
    W5,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::W5,
    ];

    fn parse(s: &str) -> Option<Workload> {
        match s.trim().to_ascii_uppercase().as_str() {
            "W1" => Some(Workload::W1),
            "W2" => Some(Workload::W2),
            "W3" => Some(Workload::W3),
            "W4" => Some(Workload::W4),
            "W5" => Some(Workload::W5),
            _ => None,
        }
    }
}

pub const USAGE: &str = "\
cargo bench --bench compare [-- OPTIONS]

Runs every workload (W1..W5) against direct, mcpflip, nginx, HAProxy and Caddy
on loopback and writes BENCHMARKS.md at the repository root.

  --quick               each workload briefly (smoke test, about 2 minutes);
                        writes target/compare/BENCHMARKS.quick.md unless --out
                        (also: MCPFLIP_BENCH_QUICK=1)
  --only W1,W3          only these workloads (writes target/compare/BENCHMARKS.partial.md unless --out)
  --targets a,b         only these targets: direct,mcpflip,nginx,haproxy,caddy
  --rounds N            rounds per workload (default 3 and 5 for W1; quick 1)
  --proxy-cores N       cores (and workers) for the proxy under test
  --flip-every-ms N     W3's pace: one flip every N ms (default 5)
  --out PATH            where to write the report
  --no-profile          skip the perf profile of mcpflip under W1
  --keep                keep the temporary directory (configs, logs)
  -h, --help            this text

The anchors come from Debian's packages: run benches/setup.sh (as root) first.";

/// Parsed command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub only: Vec<Workload>,
    pub targets: Vec<Kind>,
    pub rounds: Option<usize>,
    pub proxy_cores: Option<usize>,
    pub flip_every_ms: Option<u64>,
    pub out: Option<PathBuf>,
    pub profile: bool,
    pub keep: bool,
}

impl Options {
    pub fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Option<Options>> {
        let mut o = Options {
            quick: std::env::var("MCPFLIP_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty()),
            only: Workload::ALL.to_vec(),
            targets: Kind::ALL.to_vec(),
            rounds: None,
            proxy_cores: None,
            flip_every_ms: None,
            out: None,
            profile: true,
            keep: false,
        };
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (a.clone(), None),
            };
            let mut value = |name: &str| -> anyhow::Result<String> {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .with_context(|| format!("{name} needs a value"))
            };
            match flag.as_str() {
                // `cargo bench` passes --bench to harness-less benches.
                "--bench" => {}
                "--quick" => o.quick = true,
                "--only" => {
                    o.only = value("--only")?
                        .split(',')
                        .map(|w| {
                            Workload::parse(w)
                                .with_context(|| format!("unknown workload {w:?} (W1..W5)"))
                        })
                        .collect::<anyhow::Result<_>>()?;
                }
                "--targets" => {
                    o.targets = value("--targets")?
                        .split(',')
                        .map(|t| {
                            Kind::parse(t.trim()).with_context(|| {
                                format!(
                                    "unknown target {t:?} (direct, mcpflip, nginx, haproxy, caddy)"
                                )
                            })
                        })
                        .collect::<anyhow::Result<_>>()?;
                    // Keep the canonical order.
                    o.targets = Kind::ALL
                        .into_iter()
                        .filter(|k| o.targets.contains(k))
                        .collect();
                }
                "--rounds" => o.rounds = Some(value("--rounds")?.parse().context("--rounds N")?),
                "--proxy-cores" => {
                    o.proxy_cores =
                        Some(value("--proxy-cores")?.parse().context("--proxy-cores N")?)
                }
                "--flip-every-ms" => {
                    o.flip_every_ms = Some(
                        value("--flip-every-ms")?
                            .parse()
                            .context("--flip-every-ms N")?,
                    )
                }
                "--out" => o.out = Some(PathBuf::from(value("--out")?)),
                "--no-profile" => o.profile = false,
                "--keep" => o.keep = true,
                "-h" | "--help" => return Ok(None),
                other if other.starts_with('-') => bail!("unknown option {other:?}\n\n{USAGE}"),
                // A bench-name filter (`cargo bench -- compare`): nothing to filter.
                _ => {}
            }
        }
        if o.rounds == Some(0) {
            bail!("--rounds must be at least 1");
        }
        Ok(Some(o))
    }

    /// Every workload against every target: the run that may write BENCHMARKS.md.
    pub fn complete(&self) -> bool {
        !self.quick
            && self.only.len() == Workload::ALL.len()
            && self.targets.len() == Kind::ALL.len()
    }

    pub fn wants(&self, w: Workload) -> bool {
        self.only.contains(&w)
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
    pub w2_max_reason: String,
    pub w2_interval_ms: u64,
    pub w2_pad: usize,
    pub w2_window: Duration,
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
}

impl Settings {
    /// `max_streams`: the largest W2 level the machine allows.
    pub fn new(o: &Options, max_streams: usize, max_reason: String) -> Settings {
        let ms = Duration::from_millis;
        // 1k, 10k (or the most the machine allows, if less), and the most the
        // machine allows when that is more (full runs only).
        let mut levels = vec![1_000, max_streams.clamp(1_000, 10_000)];
        if max_streams > 10_000 && !o.quick {
            levels.push(max_streams);
        }
        levels.dedup();
        if o.quick {
            Settings {
                quick: true,
                rounds: o.rounds.unwrap_or(1),
                w1_rounds: o.rounds.unwrap_or(1),
                w1_conc: vec![1, 64, 256],
                w1_warmup: ms(300),
                w1_measure: ms(1000),
                w2_levels: levels,
                w2_max_reason: max_reason,
                w2_interval_ms: 500,
                w2_pad: 256,
                w2_window: ms(1500),
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
            }
        } else {
            Settings {
                quick: false,
                rounds: o.rounds.unwrap_or(3),
                w1_rounds: o.rounds.unwrap_or(5),
                w1_conc: vec![1, 64, 256],
                w1_warmup: ms(400),
                w1_measure: ms(2000),
                w2_levels: levels,
                w2_max_reason: max_reason,
                w2_interval_ms: 500,
                w2_pad: 256,
                w2_window: ms(2500),
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

    /// The targets in the order of a round.
    pub fn order(&self, _round: Round) -> Vec<usize> {
        (0..self.targets.len()).collect()
    }

    /// Process groups whose CPU time a run reads: the proxy under test, the
    /// upstreams, and this process (the load generator).
    pub fn cpu_groups(&self, i: usize) -> Vec<(&'static str, Vec<u32>)> {
        vec![
            ("proxy", self.targets[i].pids()),
            ("upstream", self.upstreams.pids()),
            ("loadgen", vec![std::process::id()]),
        ]
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

/// The largest number of streams W2 may hold on this machine, and why.
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
                "the open-file limit: RLIMIT_NOFILE is {nofile} here and could not be raised (raising \
                 the hard limit needs root with CAP_SYS_RESOURCE), and a proxy holds two sockets \
                 per stream, so one proxy process can hold about {} streams",
                round(fds)
            ),
        )
    }
}
