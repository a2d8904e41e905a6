//! `cargo bench --bench compare`: mcpflip side by side with nginx, HAProxy and
//! Caddy (and direct, no proxy), every workload of issue 5 on loopback, and
//! `BENCHMARKS.md` written from the numbers this run printed.
//!
//! Layout: `bench` (options, settings, the rounds), `targets` (the processes
//! and their configs), `http` (the load generator's client), `load`
//! (request/response loops), `streams` (SSE streams and sessions), `w1`..`w4`
//! (the workloads; W5 lives with W1), `profile` (perf), `report` (the
//! markdown), `sys` (cores, limits, /proc), `stats` (histograms, medians).
//!
//! Cargo builds the `mcpflip` binary in the release profile before this runs
//! (`CARGO_BIN_EXE_mcpflip`); the anchors come from Debian's packages
//! (`benches/setup.sh`).

mod bench;
mod http;
mod load;
mod profile;
mod report;
mod stats;
mod streams;
mod sys;
mod targets;
mod w1;
mod w2;
mod w3;
mod w4;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context};

use bench::{Bench, Options, Settings, Workload, USAGE};
use report::{Meta, Results};
use targets::{Env, Kind};

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("compare: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks that the anchors are installed; runs `benches/setup.sh` once when
/// one is missing.
fn ensure_anchors(root: &Path, kinds: &[Kind]) -> anyhow::Result<()> {
    let missing = |kinds: &[Kind]| -> Vec<&'static str> {
        kinds
            .iter()
            .filter_map(|k| k.binary())
            .filter(|b| sys::find_binary(b).is_none())
            .collect()
    };
    let before = missing(kinds);
    if before.is_empty() {
        return Ok(());
    }
    let setup = root.join("benches/setup.sh");
    println!(
        "compare: {} not installed; running {}",
        before.join(", "),
        setup.display()
    );
    let status = Command::new("bash")
        .arg(&setup)
        .status()
        .with_context(|| format!("cannot run {}", setup.display()))?;
    let after = missing(kinds);
    if !status.success() || !after.is_empty() {
        bail!(
            "the anchors are missing ({}); install them with:\n    sudo {}\n\
             or run only some targets: cargo bench --bench compare -- --targets direct,mcpflip",
            after.join(", "),
            setup.display()
        );
    }
    Ok(())
}

fn run(opts: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mcpflip = PathBuf::from(env!("CARGO_BIN_EXE_mcpflip"));
    ensure_anchors(&root, &opts.targets)?;

    // Pin before the runtime starts its threads: they inherit the mask.
    let cpus = sys::allowed_cpus();
    let machine = sys::Machine::read(cpus.len());
    let plan = sys::CpuPlan::new(&cpus, opts.proxy_cores);
    sys::pin_self(&plan.loadgen).context("cannot pin the load generator")?;
    let nofile = sys::raise_nofile(1 << 20);
    let (max_n, max_reason) = bench::max_streams(nofile);
    let settings = Settings::new(&opts, max_n, max_reason);
    let dir = tempfile::Builder::new()
        .prefix("mcpflip-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let env = Env {
        dir: dir.path().to_path_buf(),
        mcpflip,
        plan: plan.clone(),
        taskset: sys::find_binary("taskset"),
        nofile,
    };
    let meta = Meta::collect(machine, &root, &opts, &settings, &plan, nofile);
    println!("{}", meta.header());
    if env.taskset.is_none() {
        println!("compare: taskset not found; processes are not pinned to their cores");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.loadgen.len().max(1))
        .enable_all()
        .build()?;
    let results = rt.block_on(async {
        let mut b = Bench::new(env, settings, &opts.targets, started)?;
        b.log(&format!(
            "upstreams on 127.0.0.1:{} (blue) and :{} (green); temp dir {}",
            b.upstreams.port(targets::Slot::Blue),
            b.upstreams.port(targets::Slot::Green),
            dir.path().display()
        ));
        let r = workloads(&mut b, &opts).await;
        b.stop();
        r
    });
    let results = results?;
    drop(rt);
    if opts.keep {
        let kept = dir.keep();
        println!("compare: kept {}", kept.display());
    }

    let meta = meta.finish(started.elapsed());
    let text = report::render(&meta, &results);
    println!("\n{text}");
    let out = opts.out.clone().unwrap_or_else(|| {
        if opts.complete() {
            root.join("BENCHMARKS.md")
        } else if opts.quick {
            root.join("target/compare/BENCHMARKS.quick.md")
        } else {
            root.join("target/compare/BENCHMARKS.partial.md")
        }
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "compare: wrote {} ({:.0} s in all)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn workloads(b: &mut Bench, opts: &Options) -> anyhow::Result<Results> {
    let mut r = Results::default();
    for t in &mut b.targets {
        t.start().await?;
    }
    if opts.wants(Workload::W1) {
        r.w1 = Some(w1::run_w1(b).await?);
        if opts.profile && !b.settings.quick {
            r.profile = profile::under_w1(b).await;
        }
    }
    if opts.wants(Workload::W5) {
        r.w5 = Some(w1::run_w5(b).await?);
    }
    if opts.wants(Workload::W3) {
        r.w3 = Some(w3::run_w3(b).await?);
    }
    if opts.wants(Workload::W4) {
        r.w4 = Some(w4::run_w4(b).await?);
    }
    if opts.wants(Workload::W2) {
        r.w2 = Some(w2::run_w2(b).await?);
    }
    Ok(r)
}
