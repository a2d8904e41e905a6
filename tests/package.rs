//! Shipping: the Debian package is built with cargo-deb and installed with
//! dpkg into a root this test makes, its maintainer scripts run, and the
//! installed binary checks the installed config; the Dockerfile passes
//! hadolint.
//!
//! What is real and what is not, on purpose:
//! - The package is built by `cargo deb --no-build` from the binary this test
//!   run built (copied to where cargo-deb expects a release build), not from a
//!   fresh `cargo build --release`, which would add minutes of both cores to
//!   every test run. Layout, metadata, conffiles, the unit, the man pages and
//!   the maintainer scripts are exactly what `cargo deb` ships.
//! - It is installed by the real `dpkg -i`, with `--root` (its own database)
//!   and `--force-script-chrootless`: the maintainer scripts run for real, as
//!   on a machine, but write inside the root through `DPKG_ROOT` (useradd
//!   --prefix), so the test machine gets no user and no files. The root has no
//!   libc6 or passwd in its package database, hence `--force-depends`.
//! - The Docker image is not built (no Docker daemon here); hadolint checks
//!   the Dockerfile.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

use support::proc::BIN;
use support::tools;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// `cargo deb` on this run's binary; returns the .deb.
fn build_deb(work: &Path) -> PathBuf {
    let release = work.join("target/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::copy(BIN, release.join("mcpflip")).expect("copy the binary");
    let out = work.join("deb");
    run(Command::new(tools::cargo_deb())
        .current_dir(REPO)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .args(["--no-build", "--fast", "-o"])
        .arg(&out));
    let debs: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("deb dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs[0].clone()
}

/// An empty system root with its own dpkg database and the accounts files a
/// fresh Debian has (root only).
fn make_root(root: &Path) {
    for d in [
        "etc",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/log",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    for (f, text, mode) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644),
        ("etc/group", "root:x:0:\n", 0o644),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("etc/gshadow", "root:*::\n", 0o640),
        ("var/lib/dpkg/status", "", 0o644),
        ("var/lib/dpkg/available", "", 0o644),
    ] {
        let p = root.join(f);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

fn dpkg(root: &Path, args: &[&str]) -> String {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args))
}

#[test]
fn the_deb_installs_creates_its_user_and_the_installed_binary_checks_the_installed_config() {
    // dpkg sets the packaged files' owners and the postinst chowns the state
    // directory to the new user: that needs root, like a real install.
    // SAFETY-free: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test installs a package (dpkg --root) and must run as root"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(work.path());

    // The package's metadata: conffile, dependencies, maintainer scripts.
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: mcpflip"), "{info}");
    assert!(info.contains("Depends: libc6"), "{info}");
    let control = work.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).expect("conffiles"),
        "/etc/mcpflip/mcpflip.toml\n/etc/logrotate.d/mcpflip\n"
    );

    let root = work.path().join("root");
    make_root(&root);
    let deb_arg = deb.to_str().expect("utf-8 path");
    dpkg(&root, &["-i", deb_arg]);

    // Installed: the binary, the config, the unit, the man pages, completions.
    for f in [
        "usr/bin/mcpflip",
        "etc/mcpflip/mcpflip.toml",
        "etc/logrotate.d/mcpflip",
        "usr/lib/systemd/system/mcpflip.service",
        "usr/share/man/man1/mcpflip.1.gz",
        "usr/share/man/man1/mcpflip-ctl-deploy.1.gz",
        "usr/share/bash-completion/completions/mcpflip",
        "usr/share/zsh/vendor-completions/_mcpflip",
        "usr/share/fish/vendor_completions.d/mcpflip.fish",
        "usr/share/doc/mcpflip/docs/config.md",
    ] {
        assert!(root.join(f).is_file(), "{f} is not installed");
    }
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).expect("status");
    assert!(
        status.contains("Package: mcpflip\nStatus: install ok installed"),
        "{status}"
    );

    // The postinst made the system user and its state directory (0700, its own).
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("mcpflip:"))
        .unwrap_or_else(|| panic!("no mcpflip user in {passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid > 0 && uid < 1000, "a system uid: {user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    let group = std::fs::read_to_string(root.join("etc/group")).expect("group");
    assert!(group.lines().any(|l| l.starts_with("mcpflip:")), "{group}");
    let state = std::fs::metadata(root.join("var/lib/mcpflip")).expect("state dir");
    assert_eq!((state.uid(), state.mode() & 0o7777), (uid, 0o700));

    // The installed binary runs and accepts the installed config, which
    // names the production paths.
    let out = run(Command::new(root.join("usr/bin/mcpflip"))
        .args(["check", "--config"])
        .arg(root.join("etc/mcpflip/mcpflip.toml")));
    assert!(out.contains("is valid"), "{out}");
    assert!(
        out.contains("control       /run/mcpflip/control.sock"),
        "{out}"
    );
    assert!(
        out.contains("state file    /var/lib/mcpflip/state.json"),
        "{out}"
    );
    let man = run(Command::new(root.join("usr/bin/mcpflip")).arg("man"));
    assert!(man.contains(".TH mcpflip 1"), "{man}");

    // Installing again (an upgrade to the same version) keeps the user.
    dpkg(&root, &["-i", deb_arg]);
    let again = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert_eq!(
        again.lines().filter(|l| l.starts_with("mcpflip:")).count(),
        1,
        "{again}"
    );

    // Purge removes the files, the state and the logs (systemd's
    // LogsDirectory made /var/log/mcpflip); the user stays.
    std::fs::create_dir_all(root.join("var/log/mcpflip")).expect("log dir");
    std::fs::write(root.join("var/log/mcpflip/access.log"), "a line\n").expect("a log");
    dpkg(&root, &["--purge", "mcpflip"]);
    assert!(!root.join("var/log/mcpflip").exists());
    assert!(!root.join("etc/logrotate.d/mcpflip").exists());
    assert!(!root.join("usr/bin/mcpflip").exists());
    assert!(!root.join("etc/mcpflip/mcpflip.toml").exists());
    assert!(!root.join("var/lib/mcpflip").exists());
    assert!(std::fs::read_to_string(root.join("etc/passwd"))
        .expect("passwd")
        .contains("mcpflip:"));
}

/// The shipped unit runs the binary and config the package installs.
#[test]
fn the_unit_runs_the_packaged_binary_on_the_packaged_config() {
    let unit = std::fs::read_to_string(Path::new(REPO).join("contrib/systemd/mcpflip.service"))
        .expect("unit");
    let toml = std::fs::read_to_string(Path::new(REPO).join("Cargo.toml")).expect("manifest");
    assert!(
        unit.contains("/usr/bin/mcpflip run --config /etc/mcpflip/mcpflip.toml"),
        "{unit}"
    );
    assert!(unit.contains("User=mcpflip"), "{unit}");
    assert!(
        toml.contains(r#"["target/release/mcpflip", "usr/bin/", "755"]"#)
            && toml
                .contains(r#"["contrib/debian/mcpflip.toml", "etc/mcpflip/mcpflip.toml", "644"]"#),
        "the package installs /usr/bin/mcpflip and /etc/mcpflip/mcpflip.toml"
    );
}

/// hadolint (the Dockerfile linter) finds nothing to say about the Dockerfile.
#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new(tools::venv_bin("hadolint"))
        .arg("--no-color")
        .arg(Path::new(REPO).join("Dockerfile"))
        .output()
        .expect("hadolint runs");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(Path::new(REPO).join("Dockerfile")).expect("Dockerfile");
    for needle in [
        "FROM rust:1-bookworm AS build",
        "FROM debian:bookworm-slim",
        "USER 10001:10001",
        "VOLUME [\"/var/lib/mcpflip\", \"/run/mcpflip\"]",
        "EXPOSE 8080 9090",
        "HEALTHCHECK",
        "/healthz",
    ] {
        assert!(text.contains(needle), "the Dockerfile lacks {needle:?}");
    }
}
