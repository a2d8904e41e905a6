//! The packaging tools the tests run (cargo-deb, hadolint,
//! kubernetes-validate), installed pinned under `target/tools` by
//! `tests/tools/install.sh` on first use. A failed install fails the test
//! with the command to run by hand.

use std::path::PathBuf;
use std::process::Command;

pub const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/install.sh");

/// `target/tools`: where the tools live.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools")
}

/// Installs `which` (`cargo-deb` or `pkg`) unless it is there; panics with how
/// to install it by hand when that fails.
pub fn ensure(which: &str) {
    let out = Command::new("bash")
        .arg(INSTALL)
        .arg(which)
        .env("TOOLS_DIR", dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {INSTALL}: {e}"));
    assert!(
        out.status.success(),
        "installing {which} failed; run `{INSTALL} {which}` by hand (needs cargo, python3 with venv, \
         and access to crates.io and PyPI):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cargo-deb binary.
pub fn cargo_deb() -> PathBuf {
    ensure("cargo-deb");
    dir().join("bin/cargo-deb")
}

/// A program of the tools' Python venv (`hadolint`, `kubernetes-validate`, `python`).
pub fn venv_bin(name: &str) -> PathBuf {
    ensure("pkg");
    dir().join("pkg/bin").join(name)
}

/// HAProxy (`tests/tools/install.sh haproxy`, or `HAPROXY=/path`): the
/// program to run; panics with how to install it when that fails.
pub fn haproxy() -> PathBuf {
    let out = Command::new("bash")
        .arg(INSTALL)
        .arg("haproxy")
        .env("TOOLS_DIR", dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {INSTALL}: {e}"));
    assert!(
        out.status.success(),
        "HAProxy is missing; run `bash {INSTALL} haproxy` (as root it runs \
         `apt-get install -y --no-install-recommends haproxy`) or set HAPROXY:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::env::var_os("HAPROXY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("haproxy"))
}

/// An HAProxy process running `config` (written to `dir`, checked with
/// `haproxy -c` first); killed when dropped.
pub struct Haproxy(std::process::Child);

impl Haproxy {
    pub fn start(dir: &std::path::Path, config: &str) -> Haproxy {
        let haproxy = haproxy();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write the HAProxy config");
        let check = Command::new(&haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .expect("haproxy runs");
        assert!(check.status.success(), "{check:?}");
        Haproxy(
            Command::new(&haproxy)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("haproxy starts"),
        )
    }
}

impl Haproxy {
    /// HAProxy in HTTP mode on 127.0.0.1 in front of `public`, with the
    /// `listen` section's `lines` (each ending in a newline): running, and
    /// where it listens.
    pub async fn in_front(
        dir: &std::path::Path,
        public: std::net::SocketAddr,
        lines: &str,
    ) -> (Haproxy, std::net::SocketAddr) {
        let front = std::net::SocketAddr::from(([127, 0, 0, 1], super::closed_port()));
        let h = Haproxy::start(
            dir,
            &format!(
                "global\n  maxconn 64\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 listen front\n  bind {front}\n{lines}\
                 \x20 server mcpflip {public}\n"
            ),
        );
        super::until_async("HAProxy listens", || async move {
            tokio::net::TcpStream::connect(front).await.is_ok()
        })
        .await;
        (h, front)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
