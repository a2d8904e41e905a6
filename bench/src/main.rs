//! `mcpflip-bench`: mcpflip side by side with nginx, HAProxy and Caddy (and
//! direct, no proxy), every workload of issues 5 and 14 on loopback. A run
//! writes its results as JSON (`bench/results/<date>-<machine>.json`) and
//! renders `BENCHMARKS.md` from that file; `render` does the same for any
//! results file and `diff` compares two.
//!
//! Layout: `bench` (command line, settings, the rounds), `targets` (the
//! processes and their configs), `http` (the load generator's client), `load`
//! (request/response loops), `wrk` (the second load generator), `streams`
//! (SSE streams and sessions), `w1`..`w5` and `multicore` (the workloads),
//! `profile` (perf), `model` (the results as data), `figures` (ratios and the
//! issue's targets), `report` (the markdown), `diff`, `sys` (cores, limits,
//! /proc), `stats` (histograms, medians, number formats), and `soak` (issue
//! 10's soak: mixed load, deploys and upstream kills through mcpflip alone,
//! with verdicts; `mcpflip-bench soak`), and `fleet` (issue 15's fleet figures:
//! propagation and drain detection with three instances and etcd).
//!
//! It never imports the mcpflip library: it builds and runs the release
//! binary, as operators do. The anchors come from Debian's packages
//! (`bench/setup.sh`).

mod bench;
mod diff;
mod figures;
#[cfg(test)]
mod fixture;
mod fleet;
mod history;
mod http;
mod load;
mod model;
mod multicore;
mod pgo;
mod profile;
mod report;
mod shield;
mod soak;
mod stats;
mod streams;
mod sys;
mod targets;
mod w1;
mod w2;
mod w3;
mod w4;
mod w5;
mod wrk;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;

use bench::{Bench, Cli, Command, Options, Settings, SoakOptions, Workload};
use model::{Kind, Meta, Run, Version};
use targets::Env;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(o)) => run(o),
        Some(Command::Render { file, out, soak }) => render(&file, soak.as_deref(), out.as_deref()),
        Some(Command::Diff { a, b }) => diff(&a, &b),
        Some(Command::History { files, last }) => history(files, last),
        Some(Command::Fleet { flips, mcpflip }) => fleet_figures(flips, mcpflip),
        Some(Command::Pgo { profile }) => pgo_build(&profile),
        Some(Command::Soak(o)) => match soak(&o) {
            Ok(true) => Ok(()),
            Ok(false) => {
                eprintln!("mcpflip-bench: the soak FAILED (see the checks above)");
                return ExitCode::FAILURE;
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcpflip-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `pgo`: the profile-guided build, its path on stdout.
fn pgo_build(profile: &str) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        bail!(
            "built without optimisations, the training run would measure the load generator; run\n    \
             cargo run -p mcpflip-bench --release -- pgo --profile {profile}"
        );
    }
    let root = root();
    let bin = pgo::build(&root, profile, |args, flags, dir| {
        cargo_build(&root, args, Some(flags), dir)
    })?;
    println!("{}", bin.display());
    Ok(())
}

/// The repository: this crate's parent directory.
fn fleet_figures(flips: usize, mcpflip: Option<PathBuf>) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        bail!(
            "built without optimisations; run\n    cargo run -p mcpflip-bench --release -- fleet"
        );
    }
    let root = root();
    let mcpflip = match mcpflip {
        Some(p) => p,
        None => build_mcpflip(&root, false)?,
    };
    fleet::run(&root, &mcpflip, flips)
}

fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

fn render(file: &Path, soak: Option<&Path>, out: Option<&Path>) -> anyhow::Result<()> {
    let mut run = Run::read(file)?;
    if let Some(p) = soak {
        run.soak = Some(
            Run::read(p)?
                .soak
                .with_context(|| format!("{} holds no soak results", p.display()))?,
        );
    }
    let text = report::render(&run);
    match out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `history`: the files given, or every file in bench/results/ by name.
fn history(files: Vec<PathBuf>, last: usize) -> anyhow::Result<()> {
    let files = if files.is_empty() {
        sys::files_with_extension(&root().join("bench/results"), "json")?
    } else {
        files
    };
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        match Run::read(f) {
            Ok(run) => match history::not_counted(&run) {
                None => runs.push(run),
                Some(why) => skipped.push((name, why.to_owned())),
            },
            Err(e) => skipped.push((name, format!("{e:#}"))),
        }
    }
    anyhow::ensure!(
        !runs.is_empty(),
        "none of the {} files is a run with figures of issue 14",
        files.len()
    );
    print!("{}", history::render(&runs, &skipped, last));
    Ok(())
}

fn diff(a: &Path, b: &Path) -> anyhow::Result<()> {
    let (ra, rb) = (Run::read(a)?, Run::read(b)?);
    print!(
        "{}",
        diff::render(&ra, &a.display().to_string(), &rb, &b.display().to_string())
    );
    Ok(())
}

/// Builds the `mcpflip` binary with the `profiling` profile (the release code
/// with line tables, so that perf names lines; the shipped release build has
/// no debug info), profile-guided unless `pgo` is false (`pgo` module), and
/// returns its path.
fn build_mcpflip(root: &Path, pgo: bool) -> anyhow::Result<PathBuf> {
    if pgo {
        return pgo::build(root, "profiling", |args, flags, dir| {
            cargo_build(root, args, Some(flags), dir)
        });
    }
    let args = pgo::build_args("profiling", None);
    cargo_build(root, &args, None, None)
}

/// Runs `cargo ARGS` in the repository (with `RUSTFLAGS` set to `rustflags`
/// when given, in `target_dir` when given) and returns the path of the
/// `mcpflip` executable cargo says it built, whatever the target directory.
fn cargo_build(
    root: &Path,
    args: &[String],
    rustflags: Option<&str>,
    target_dir: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("mcpflip-bench: building mcpflip (cargo {})", args.join(" "));
    let mut build = Process::new(&cargo);
    // `cargo run -p mcpflip-bench` hands this process its package's variables
    // (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...). ring's build script
    // reruns when they change, so a cargo started with them rebuilt ring, and
    // everything over it, each time after a `cargo build` from a shell (seven
    // minutes with LTO): the nested cargo gets the shell's environment.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR" | "CARGO_MANIFEST_PATH" | "CARGO_MANIFEST_LINKS"
            )
            || name.starts_with("CARGO_BIN_")
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
        {
            build.env_remove(&*name);
        }
    }
    if let Some(flags) = rustflags {
        build
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", flags);
    }
    build.current_dir(root).args(args);
    if let Some(dir) = target_dir {
        build.arg("--target-dir").arg(dir);
    }
    let mut child = build
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut exe = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "mcpflip" {
            if let Some(p) = msg["executable"].as_str() {
                exe = Some(PathBuf::from(p));
            }
        }
    }
    if !child.wait()?.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    exe.context("cargo built no mcpflip executable")
}

/// Checks that the anchors (and wrk) are installed; runs `bench/setup.sh`
/// once when one is missing.
fn ensure_anchors(root: &Path, kinds: &[Kind], wrk: bool) -> anyhow::Result<()> {
    let missing = || -> Vec<&'static str> {
        kinds
            .iter()
            .filter_map(|k| k.binary())
            .chain(wrk.then_some("wrk"))
            .filter(|b| sys::find_binary(b).is_none())
            .collect()
    };
    let before = missing();
    if before.is_empty() {
        return Ok(());
    }
    let setup = root.join("bench/setup.sh");
    println!(
        "mcpflip-bench: {} not installed; running {}",
        before.join(", "),
        setup.display()
    );
    let status = Process::new("bash")
        .arg(&setup)
        .status()
        .with_context(|| format!("cannot run {}", setup.display()))?;
    let after = missing();
    if !status.success() || !after.is_empty() {
        bail!(
            "the anchors are missing ({}); install them with:\n    sudo {}\n\
             or run only some targets: cargo run -p mcpflip-bench --release -- --targets direct,mcpflip",
            after.join(", "),
            setup.display()
        );
    }
    Ok(())
}

/// Resolves at the first SIGINT or SIGTERM (never, when they cannot be
/// caught).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// `2026-11-24T22:05:31Z` → `2026-11-24T2205Z` (a file name without colons).
fn stamp(date: &str) -> String {
    let (day, time) = date.split_once('T').unwrap_or((date, ""));
    let hm: String = time.chars().filter(char::is_ascii_digit).take(4).collect();
    format!("{day}T{hm}Z")
}

/// How the measured mcpflip was built, as the report's versions table says.
fn build_note(opts: &Options) -> &'static str {
    match (&opts.mcpflip, opts.no_pgo) {
        (Some(_), _) => "the binary given with --mcpflip",
        (None, false) => {
            "profiling profile: release + line tables, profile-guided by W2, W3 and W5 (bench/PROFILE.md §57)"
        }
        (None, true) => "profiling profile: release + line tables",
    }
}

fn versions(root: &Path, mcpflip: &Path, build: &str) -> Vec<Version> {
    let v = |cmd: &str, args: &[&str]| {
        sys::find_binary(cmd)
            .and_then(|p| sys::version_of(p.to_str()?, args))
            .unwrap_or_else(|| "not installed".to_owned())
    };
    let rustc = sys::version_of("rustc", &["--version"]).unwrap_or_default();
    [
        (
            "mcpflip",
            format!("git {} ({build}, {rustc})", sys::mcpflip_rev(mcpflip, root)),
        ),
        ("nginx", v("nginx", &["-v"])),
        ("HAProxy", v("haproxy", &["-v"])),
        ("Caddy", v("caddy", &["version"])),
        ("wrk", w1::short_wrk_version(&v("wrk", &["-v"]))),
        ("perf", v("perf", &["--version"])),
    ]
    .into_iter()
    .map(|(name, version)| Version {
        name: name.to_owned(),
        version,
    })
    .collect()
}

fn run(opts: Options) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        bail!(
            "built without optimisations, the load generator would be the bottleneck; run\n    \
             cargo run -p mcpflip-bench --release -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
    }
    let root = root();
    let kinds = opts.kinds();
    let wants_wrk = opts.wants(Workload::W1)
        || opts.wants(Workload::W1Static)
        || opts.wants(Workload::Multicore);
    ensure_anchors(&root, &kinds, wants_wrk)?;
    let mcpflip = match &opts.mcpflip {
        Some(p) => p.clone(),
        None => build_mcpflip(&root, !opts.no_pgo)?,
    };
    // The run's time and the hypervisor's steal over it, the build excluded
    // (as the report says).
    let started = Instant::now();
    let steal_before = sys::steal_seconds();

    // Pin before the runtime starts its threads: they inherit the mask.
    let cpus = sys::allowed_cpus();
    let machine = sys::machine(cpus.len());
    let plan = model::CpuPlan::new(&cpus, opts.proxy_cores.map(|c| c as usize));
    sys::pin_self(&plan.loadgen).context("cannot pin the load generator")?;
    // Other processes off the proxy's cores until the run ends (dropped last).
    let shield = (!opts.no_shield && plan.proxy.len() < cpus.len())
        .then(|| shield::Shield::raise(&plan.proxy));
    let (nofile, nofile_hard) = sys::raise_nofile(1 << 20);
    let (max_n, max_reason) = bench::max_streams(nofile);
    let settings = Settings::new(&opts, max_n, max_reason, plan.workers());
    let dir = tempfile::Builder::new()
        .prefix("mcpflip-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let env = Env {
        dir: dir.path().to_path_buf(),
        mcpflip,
        plan: plan.clone(),
        all_cpus: cpus.clone(),
        taskset: sys::find_binary("taskset"),
        wrk: if wants_wrk {
            sys::find_binary("wrk")
        } else {
            None
        },
        nofile,
    };
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut command = "cargo run -p mcpflip-bench --release".to_owned();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    let meta = Meta {
        date,
        command,
        file: String::new(),
        quick: settings.quick,
        complete: opts.complete(),
        elapsed_s: 0.0,
        steal_s: None,
        rounds: settings.rounds,
        w1_rounds: settings.w1_rounds,
        rotated: true,
        stepped: true,
        targets: kinds.clone(),
        machine,
        plan: plan.clone(),
        pinned: env.taskset.is_some(),
        versions: versions(&root, &env.mcpflip, build_note(&opts)),
        nofile,
        nofile_hard,
        shield: shield.as_ref().map(|s| s.record.clone()),
    };
    println!(
        "mcpflip-bench: {} ({} cores, kernel {}); {}",
        meta.machine.cpu_model,
        meta.machine.cores,
        meta.machine.kernel,
        plan.describe()
    );
    for v in &meta.versions {
        println!("mcpflip-bench: {}: {}", v.name, v.version);
    }
    println!(
        "mcpflip-bench: {} rounds{}; targets: {}",
        settings.rounds,
        if settings.quick { ", quick" } else { "" },
        kinds
            .iter()
            .map(|k| k.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if env.taskset.is_none() {
        println!("mcpflip-bench: taskset not found; processes are not pinned to their cores");
    }
    if let Some(s) = &meta.shield {
        println!("mcpflip-bench: {}", report::shield_line(s));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.loadgen.len().max(1))
        .enable_all()
        .build()?;
    let mut results = Run::new(meta);
    let measured = rt.block_on(async {
        let mut b = Bench::new(env, settings, &kinds, started)?;
        b.log(&format!(
            "upstreams on 127.0.0.1:{} (blue) and :{} (green); temp dir {}",
            b.upstreams.port(targets::Slot::Blue),
            b.upstreams.port(targets::Slot::Green),
            dir.path().display()
        ));
        // SIGINT or SIGTERM ends the run through here, so that the children
        // stop and the shield comes down (a killed run would leave other
        // processes' threads off the proxy's cores).
        let r = tokio::select! {
            r = workloads(&mut b, &opts, &mut results) => r,
            signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
        };
        b.stop();
        r
    });
    drop(rt);
    if opts.keep {
        let kept = dir.keep();
        println!("mcpflip-bench: kept {}", kept.display());
    }
    measured?;
    results.meta.elapsed_s = started.elapsed().as_secs_f64();
    results.meta.steal_s = steal_before
        .zip(sys::steal_seconds())
        .map(|(before, after)| (after - before).max(0.0));

    let name = format!(
        "{}-{}",
        stamp(&results.meta.date),
        results.meta.machine.slug()
    );
    let (json, md) = if opts.complete() {
        (
            root.join("bench/results").join(format!("{name}.json")),
            root.join("BENCHMARKS.md"),
        )
    } else {
        let kind = if opts.quick { "quick" } else { "partial" };
        (
            root.join("target/compare")
                .join(format!("{name}.{kind}.json")),
            root.join(format!("target/compare/BENCHMARKS.{kind}.md")),
        )
    };
    let json = opts.json.clone().unwrap_or(json);
    let md = opts.out.clone().unwrap_or(md);
    results.meta.file = json
        .strip_prefix(&root)
        .unwrap_or(&json)
        .display()
        .to_string();
    for p in [&json, &md] {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    std::fs::write(&json, results.to_json()?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    // The report comes from the file, so that the file is all it needs.
    let text = report::render(&Run::read(&json)?);
    println!("\n{text}");
    std::fs::write(&md, text).with_context(|| format!("cannot write {}", md.display()))?;
    println!(
        "mcpflip-bench: wrote {} and {} ({:.0} s in all{})",
        json.display(),
        md.display(),
        started.elapsed().as_secs_f64(),
        results.meta.steal_s.map_or_else(String::new, |s| format!(
            ", {s:.1} s of it stolen by the hypervisor"
        ))
    );
    Ok(())
}

/// `soak`: runs it, writes its results and its report section; `Ok(false)`
/// when a check failed.
fn soak(opts: &SoakOptions) -> anyhow::Result<bool> {
    if cfg!(debug_assertions) {
        bail!(
            "built without optimisations; run\n    cargo run -p mcpflip-bench --release -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
    }
    let started = Instant::now();
    let root = root();
    let mcpflip = match &opts.mcpflip {
        Some(p) => p.clone(),
        None => build_mcpflip(&root, false)?,
    };
    let (nofile, nofile_hard) = sys::raise_nofile(1 << 16);
    let cpus = sys::allowed_cpus();
    let machine = sys::machine(cpus.len());
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let command = format!(
        "cargo run -p mcpflip-bench --release -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let rustc = sys::version_of("rustc", &["--version"]).unwrap_or_default();
    let version = format!(
        "git {} (profiling profile: release + line tables, {rustc})",
        sys::mcpflip_rev(&mcpflip, &root)
    );
    println!(
        "mcpflip-bench: soak of mcpflip {version} on {} ({} cores)",
        machine.cpu_model, machine.cores
    );
    let mut result = soak::run(opts, &mcpflip, machine.clone(), soak::Log(Instant::now()))?;
    let name = format!("{}-{}", stamp(&date), machine.slug());
    let (json, md) = if opts.reference() {
        (
            root.join("bench/results").join(format!("{name}.soak.json")),
            root.join("target/compare/SOAK.md"),
        )
    } else {
        let kind = if opts.smoke { "smoke" } else { "partial" };
        (
            root.join("target/compare")
                .join(format!("{name}.soak.{kind}.json")),
            root.join(format!("target/compare/SOAK.{kind}.md")),
        )
    };
    let json = opts.json.clone().unwrap_or(json);
    let md = opts.out.clone().unwrap_or(md);
    let file = json
        .strip_prefix(&root)
        .unwrap_or(&json)
        .display()
        .to_string();
    result.date = date.clone();
    result.command = command.clone();
    result.file = file.clone();
    result.mcpflip = version.clone();
    let meta = Meta {
        date,
        command,
        file,
        quick: opts.smoke,
        complete: false,
        elapsed_s: started.elapsed().as_secs_f64(),
        steal_s: None,
        rounds: 1,
        w1_rounds: 1,
        rotated: false,
        stepped: false,
        targets: vec![Kind::Mcpflip],
        plan: model::CpuPlan::new(&cpus, None),
        machine,
        pinned: false,
        versions: vec![Version {
            name: "mcpflip".to_owned(),
            version,
        }],
        nofile,
        nofile_hard,
        shield: None,
    };
    let passed = result.passed();
    let mut run = Run::new(meta);
    run.soak = Some(result);
    for p in [&json, &md] {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    std::fs::write(&json, run.to_json()?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let text = report::render(&Run::read(&json)?);
    println!("\n{text}");
    std::fs::write(&md, text).with_context(|| format!("cannot write {}", md.display()))?;
    println!(
        "mcpflip-bench: wrote {} and {} ({:.0} s in all); the soak {}",
        json.display(),
        md.display(),
        started.elapsed().as_secs_f64(),
        if passed { "passed" } else { "FAILED" }
    );
    Ok(passed)
}

async fn workloads(b: &mut Bench, opts: &Options, r: &mut Run) -> anyhow::Result<()> {
    for t in &mut b.targets {
        t.start().await?;
    }
    if opts.wants(Workload::W1) {
        let (w, with_wrk) = w1::run_w1(b).await?;
        r.w1 = Some(w);
        r.w1_wrk = with_wrk;
        if !opts.no_profile && !b.settings.quick {
            r.profile = profile::under_w1(b).await;
        }
    }
    if opts.wants(Workload::W1Static) {
        r.w1_static = w1::run_static(b).await?;
    }
    if opts.wants(Workload::AccessLog) {
        r.access_log = w1::run_access_log(b).await?;
    }
    if opts.wants(Workload::Multicore) {
        r.multicore = multicore::run_multicore(b, r.w1.as_ref(), r.w1_wrk.as_ref()).await?;
    }
    if opts.wants(Workload::W5) {
        r.w5 = Some(w5::run_w5(b).await?);
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_files_are_named_without_colons() {
        assert_eq!(stamp("2026-11-24T22:05:31Z"), "2026-11-24T2205Z");
    }
}
