//! The real binary as a child process: `mcpflip run` on a test config (killed
//! when dropped), and `mcpflip ctl` runs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mcpflip");

/// A running `mcpflip run`; killed (SIGKILL) when dropped.
pub struct ProxyProcess {
    child: Child,
    socket: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl ProxyProcess {
    /// Starts `mcpflip run --config CONFIG ARGS...`; `socket` is its control socket.
    pub fn spawn(config: &Path, socket: &Path, args: &[&str]) -> Self {
        Self::spawn_with(Command::new(BIN), config, socket, args)
    }

    /// [`ProxyProcess::spawn`] through `program` (e.g. `ip netns exec NS BIN`).
    pub fn spawn_with(mut program: Command, config: &Path, socket: &Path, args: &[&str]) -> Self {
        program.args(["run", "--config"]).arg(config).args(args);
        Self::spawn_command(program, socket)
    }

    /// Starts `cmd` (a `mcpflip run`, perhaps behind a wrapper or with more
    /// environment); `socket` is its control socket.
    pub fn spawn_command(mut cmd: Command, socket: &Path) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mcpflip run starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        ProxyProcess {
            child,
            socket: socket.to_path_buf(),
            stderr,
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stderr read so far once it contains `needle` (or after 10 s):
    /// the log reaches the test through a reader thread, so a line the
    /// process wrote before it became ready may not be here yet when
    /// `wait_ready` returns.
    pub fn stderr_with(&self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.stderr();
            if log.contains(needle) || Instant::now() >= end {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Whether its control socket accepts a connection; panics (with its
    /// stderr) if the process exited.
    pub fn is_ready(&mut self) -> bool {
        if let Some(status) = self.exited() {
            // Let the stderr thread catch up before reporting.
            std::thread::sleep(Duration::from_millis(50));
            panic!("mcpflip run exited with {status}:\n{}", self.stderr());
        }
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    /// Blocks until the control socket answers (30 s at most).
    pub fn wait_ready(&mut self) {
        let end = Instant::now() + Duration::from_secs(30);
        while !self.is_ready() {
            assert!(
                Instant::now() < end,
                "mcpflip run did not come up:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `wait_ready` for async tests.
    pub async fn ready(&mut self) {
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.is_ready() {
            assert!(
                tokio::time::Instant::now() < end,
                "mcpflip run did not come up:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, then reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits (30 s at most) and returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY-free: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit()
    }

    /// Waits (30 s at most) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "mcpflip run did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `mcpflip ctl` printed and how it exited.
#[derive(Debug)]
pub struct CtlRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlRun {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `mcpflip ctl ARGS...` with `env` and no inherited MCPFLIP_* variables;
/// a run that takes over a minute is killed (`code` is then `None`).
pub fn ctl_env(args: &[&str], env: &[(&str, &Path)]) -> CtlRun {
    let mut child = Command::new(BIN)
        .arg("ctl")
        .args(args)
        .env_remove("MCPFLIP_SOCKET")
        .env_remove("MCPFLIP_CONFIG")
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mcpflip ctl runs");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let end = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    CtlRun {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `mcpflip ctl --socket SOCKET ARGS...`.
pub fn ctl(socket: &Path, args: &[&str]) -> CtlRun {
    let mut all = vec!["--socket", socket.to_str().expect("utf-8 socket path")];
    all.extend_from_slice(args);
    ctl_env(&all, &[])
}
