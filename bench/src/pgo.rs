//! The profile-guided build of mcpflip (`mcpflip-bench pgo`, and what a run
//! measures unless `--no-pgo`): an instrumented build, trained by this bench's
//! own W2, W3 and W5 (SSE streams, flips under load, tools/call over one and
//! 100,000 sessions) against mcpflip alone, then the build that lays the code
//! out by that profile (bench/PROFILE.md §57).
//!
//! The steps are rustc's (`-Cprofile-generate`, `llvm-profdata merge`,
//! `-Cprofile-use`), with `--target` set to the host so that build scripts
//! and proc macros are neither instrumented nor optimised by the profile.
//! The instrumented build keeps a target directory of its own
//! (`target/pgo/gen`), so that its dependencies are built once; the profile's
//! file name holds a hash of its content, so that a new profile rebuilds every
//! crate with it and a stale one is never reused.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{bail, Context};

/// The workloads that train the instrumented build (the `--only` of the
/// training run). W1 is left out: the rows the issue judges are W1's, and the
/// profile comes from the same request path as W5 drives it.
pub const TRAINING: &str = "w2,w3,w5";

/// What the build steps need from the toolchain.
pub struct Toolchain {
    /// The host's target triple (`rustc -vV`).
    pub host: String,
    /// rustc's own `llvm-profdata` (the `llvm-tools` component).
    pub profdata: PathBuf,
}

impl Toolchain {
    /// The host triple and rustc's `llvm-profdata`, which `rustup component
    /// add llvm-tools` installs once when it is missing; an error that says how
    /// to install it when that fails.
    pub fn find() -> anyhow::Result<Toolchain> {
        let rustc = |args: &[&str]| -> anyhow::Result<String> {
            let out = Process::new("rustc")
                .args(args)
                .output()
                .with_context(|| format!("cannot run rustc {}", args.join(" ")))?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let sysroot = rustc(&["--print", "sysroot"])?;
        let vv = rustc(&["-vV"])?;
        if let Ok(found) = Toolchain::at(&vv, Path::new(&sysroot)) {
            return Ok(found);
        }
        // As a missing anchor runs bench/setup.sh: rustup adds the component
        // once (the run says so), then the check is made again and its error,
        // if any, says what to do by hand.
        println!(
            "mcpflip-bench: llvm-profdata is missing; running rustup component add llvm-tools"
        );
        let added = Process::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .status()
            .is_ok_and(|s| s.success());
        if !added {
            println!("mcpflip-bench: rustup could not add llvm-tools");
        }
        Toolchain::at(&vv, Path::new(&sysroot))
    }

    /// As `find`, from `rustc -vV`'s text and the sysroot.
    pub fn at(rustc_vv: &str, sysroot: &Path) -> anyhow::Result<Toolchain> {
        let host = rustc_vv
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .context("rustc -vV printed no host line")?
            .trim()
            .to_owned();
        let profdata = sysroot
            .join("lib/rustlib")
            .join(&host)
            .join("bin/llvm-profdata");
        if !profdata.is_file() {
            bail!(
                "the profile-guided build needs rustc's llvm-profdata ({} is missing); install it with\n    \
                 rustup component add llvm-tools\nor measure the build without a profile: --no-pgo",
                profdata.display()
            );
        }
        Ok(Toolchain { host, profdata })
    }
}

/// Where the steps keep their files, under `target/pgo`.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            dir: root.join("target/pgo"),
        }
    }

    /// The instrumented build's own target directory.
    pub fn gen_target(&self) -> PathBuf {
        self.dir.join("gen")
    }

    /// Where the instrumented processes write their raw profiles.
    pub fn raw(&self) -> PathBuf {
        self.dir.join("raw")
    }

    /// The merged profile, named by a hash of its bytes.
    pub fn profile(&self, bytes: &[u8]) -> PathBuf {
        self.dir
            .join(format!("mcpflip-{:016x}.profdata", fnv1a(bytes)))
    }
}

/// The `cargo build` arguments of mcpflip's binary with `profile`, for
/// `host` when given (the profile-guided steps name it; the plain build does
/// not, and keeps `target/<profile>`).
pub fn build_args(profile: &str, host: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "build",
        "--profile",
        profile,
        "-p",
        "mcpflip",
        "--bin",
        "mcpflip",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(host) = host {
        args.extend(["--target".to_owned(), host.to_owned()]);
    }
    args
}

/// RUSTFLAGS for the instrumented build: the raw profiles go to `raw`.
pub fn generate_flags(raw: &Path) -> String {
    format!("-Cprofile-generate={}", raw.display())
}

/// RUSTFLAGS for the build that uses the profile. A function whose code no
/// longer matches the profile is only noted (`-pgo-warn-mismatch` is off by
/// default); the profile is made from the same tree a moment before.
pub fn use_flags(profile: &Path) -> String {
    format!("-Cprofile-use={}", profile.display())
}

/// The training run's arguments to this bench (the instrumented `mcpflip`
/// against no other target, one round, nothing written to the repository).
pub fn training_args(gen_bin: &Path, dir: &Path) -> Vec<String> {
    vec![
        "--only".into(),
        TRAINING.into(),
        "--targets".into(),
        "mcpflip".into(),
        "--rounds".into(),
        "1".into(),
        "--no-profile".into(),
        "--no-shield".into(),
        "--no-pgo".into(),
        "--mcpflip".into(),
        gen_bin.display().to_string(),
        "--json".into(),
        dir.join("training.json").display().to_string(),
        "--out".into(),
        dir.join("training.md").display().to_string(),
    ]
}

/// 64-bit FNV-1a: a name for the profile's content, not a defence.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Builds, trains and rebuilds; returns the profile-guided binary.
/// `build(args, rustflags, target_dir)` runs one `cargo build` and returns the
/// executable cargo reported.
pub fn build(
    root: &Path,
    profile: &str,
    build: impl Fn(&[String], &str, Option<&Path>) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let tools = Toolchain::find()?;
    let layout = Layout::new(root);
    let raw = layout.raw();
    if raw.exists() {
        std::fs::remove_dir_all(&raw).with_context(|| format!("cannot clear {}", raw.display()))?;
    }
    std::fs::create_dir_all(&raw).with_context(|| format!("cannot create {}", raw.display()))?;

    println!("mcpflip-bench: pgo 1/3: the instrumented build (target/pgo/gen)");
    let args = build_args(profile, Some(&tools.host));
    let gen_bin = build(&args, &generate_flags(&raw), Some(&layout.gen_target()))?;

    println!("mcpflip-bench: pgo 2/3: training it with this bench's {TRAINING}");
    let me = std::env::current_exe().context("cannot find this bench's executable")?;
    let status = Process::new(&me)
        .args(training_args(&gen_bin, &layout.dir))
        .status()
        .with_context(|| format!("cannot run {}", me.display()))?;
    if !status.success() {
        bail!("the training run failed ({status}); its report: target/pgo/training.md");
    }
    let profraw = crate::sys::files_with_extension(&raw, "profraw")?;
    if profraw.is_empty() {
        bail!(
            "the training run left no profile in {} (did mcpflip exit on SIGTERM?)",
            raw.display()
        );
    }
    let merged = layout.dir.join("merged.profdata");
    let status = Process::new(&tools.profdata)
        .arg("merge")
        .arg("-o")
        .arg(&merged)
        .args(&profraw)
        .status()
        .with_context(|| format!("cannot run {}", tools.profdata.display()))?;
    if !status.success() {
        bail!("llvm-profdata merge failed ({status})");
    }
    let bytes = std::fs::read(&merged)?;
    let named = layout.profile(&bytes);
    std::fs::rename(&merged, &named)?;

    println!(
        "mcpflip-bench: pgo 3/3: the build laid out by {}",
        named.strip_prefix(root).unwrap_or(&named).display()
    );
    build(&args, &use_flags(&named), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    const VV: &str = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";

    #[test]
    fn a_toolchain_without_llvm_profdata_says_how_to_install_it() {
        let sysroot = tempfile::tempdir().unwrap();
        let err = Toolchain::at(VV, sysroot.path())
            .err()
            .expect("no llvm-profdata");
        let text = format!("{err:#}");
        assert!(text.contains("rustup component add llvm-tools"), "{text}");
        assert!(text.contains("--no-pgo"), "{text}");
    }

    #[test]
    fn the_host_triple_and_llvm_profdata_come_from_rustc() {
        let sysroot = tempfile::tempdir().unwrap();
        let bin = sysroot
            .path()
            .join("lib/rustlib/x86_64-unknown-linux-gnu/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("llvm-profdata"), "").unwrap();
        let t = Toolchain::at(VV, sysroot.path()).unwrap();
        assert_eq!(t.host, "x86_64-unknown-linux-gnu");
        assert_eq!(t.profdata, bin.join("llvm-profdata"));
        assert!(Toolchain::at("rustc 1.95.0\n", sysroot.path()).is_err());
    }

    #[test]
    fn a_new_profile_gets_a_new_name_so_every_crate_is_built_with_it() {
        let l = Layout::new(Path::new("/r"));
        assert_eq!(l.profile(b"one"), l.profile(b"one"));
        assert_ne!(l.profile(b"one"), l.profile(b"two"));
        assert!(use_flags(&l.profile(b"one")).starts_with("-Cprofile-use=/r/target/pgo/mcpflip-"));
    }

    #[test]
    fn builds_name_the_host_so_build_scripts_stay_uninstrumented() {
        let a = build_args("release", Some("x86_64-unknown-linux-gnu"));
        let at = a.iter().position(|x| x == "--target").unwrap();
        assert_eq!(a[at + 1], "x86_64-unknown-linux-gnu");
        assert_eq!(
            generate_flags(Path::new("/r/target/pgo/raw")),
            "-Cprofile-generate=/r/target/pgo/raw"
        );
    }

    #[test]
    fn training_runs_mcpflip_alone_without_pgo_and_writes_under_target() {
        let a = training_args(Path::new("/g/mcpflip"), Path::new("/r/target/pgo"));
        let after = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(after("--targets"), "mcpflip");
        assert_eq!(after("--only"), TRAINING);
        assert_eq!(after("--mcpflip"), "/g/mcpflip");
        assert!(after("--json").starts_with("/r/target/pgo/"));
        assert!(after("--out").starts_with("/r/target/pgo/"));
        assert!(a.contains(&"--no-pgo".to_owned()));
        // The training run parses as a run of this bench.
        let cli =
            crate::bench::Cli::try_parse_from(std::iter::once("mcpflip-bench".to_owned()).chain(a))
                .unwrap();
        assert!(cli.run.no_pgo);
    }
}
