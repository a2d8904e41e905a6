//! Headless Chromium, driven with the DevTools protocol over
//! `--remote-debugging-pipe`: Chromium reads commands on fd 3 and writes
//! replies and events on fd 4, each a JSON message ended by a NUL byte (the
//! transport Puppeteer's `pipe: true` uses). No WebSocket, no debugging port
//! to find or to leave open to other local users.
//!
//! The browser is Debian's `chromium`, installed by `tests/tools/install.sh
//! chromium` (or `CHROMIUM=/path`); it runs in a process group of its own,
//! closed with `Browser.close` and killed (the group) when dropped.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::{json, Value};

/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs Chromium if needed (`tests/tools/install.sh chromium`) and
/// returns the program to run.
pub fn chromium() -> PathBuf {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(repo.join("tests/tools/install.sh"))
        .arg("chromium")
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "Chromium is missing; run `bash tests/tools/install.sh chromium` (as root it runs \
         `apt-get install -y --no-install-recommends chromium fonts-dejavu-core`) or set CHROMIUM"
    );
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// A pipe whose two ends are at fd 10 or above and close on exec.
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    let high = |fd: i32| -> anyhow::Result<OwnedFd> {
        // SAFETY: fd is ours; F_DUPFD_CLOEXEC returns a new one we own.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        // SAFETY: fd came from pipe2 and is closed exactly once, here.
        unsafe { libc::close(fd) };
        if new < 0 {
            bail!("fcntl: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `new` is a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    };
    Ok((high(fds[0])?, high(fds[1])?))
}

/// What the page did that a test may judge.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every URL the page requested.
    pub requests: Vec<String>,
    /// Uncaught exceptions and console or log errors (CSP violations among them).
    pub errors: Vec<String>,
}

/// A headless Chromium with one page.
pub struct Browser {
    child: Child,
    to: File,
    from: Receiver<Vec<u8>>,
    next_id: u64,
    session: String,
    pub seen: Seen,
    pub stderr: PathBuf,
}

impl Browser {
    /// Starts Chromium (its profile and stderr under `dir`) with one blank
    /// page attached, 1280x1000, its network, runtime and log events on.
    pub fn start(program: &Path, dir: &Path) -> anyhow::Result<Browser> {
        let (cmd_read, cmd_write) = pipe()?;
        let (out_read, out_write) = pipe()?;
        let stderr = dir.join("chromium.stderr");
        let mut command = Command::new(program);
        command
            .args([
                "--headless",
                "--remote-debugging-pipe",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--hide-scrollbars",
                "--force-color-profile=srgb",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .env("DBUS_SESSION_BUS_ADDRESS", "disabled:")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Chromium refuses to run as root with its sandbox.
            command.arg("--no-sandbox");
        }
        let (r, w) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        // SAFETY: between fork and exec only dup2 runs (async-signal-safe);
        // both sources are at fd 10 or above, so neither is clobbered.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        drop((cmd_read, out_write));
        let (tx, from) = std::sync::mpsc::channel();
        let mut reader = File::from(out_read);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).take(end).collect();
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to: File::from(cmd_write),
            from,
            next_id: 1,
            session: String::new(),
            seen: Seen::default(),
            stderr,
        };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or_else(|| anyhow!("no targetId in {target}"))?
            .to_owned();
        let attached = b.call_browser(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {attached}"))?
            .to_owned();
        for domain in ["Page", "Runtime", "Network", "Log"] {
            b.call(&format!("{domain}.enable"), json!({}))?;
        }
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        Ok(b)
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::from(s);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .with_context(|| format!("{method}: the browser's pipe is closed"))?;
        Ok(id)
    }

    fn wait_reply(&mut self, id: u64, method: &str) -> anyhow::Result<Value> {
        let end = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let raw = match self.from.recv_timeout(left) {
                Ok(raw) => raw,
                Err(RecvTimeoutError::Timeout) => bail!("{method}: no reply in {CALL_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{method}: the browser exited; see {}",
                        self.stderr.display()
                    )
                }
            };
            let msg: Value = serde_json::from_slice(&raw)?;
            if msg["id"] == json!(id) {
                if let Some(e) = msg.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(msg["result"].clone());
            }
            self.note(&msg);
        }
    }

    /// Keeps what the page did: its requests, its errors.
    fn note(&mut self, msg: &Value) {
        let p = &msg["params"];
        match msg["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                if let Some(url) = p["request"]["url"].as_str() {
                    self.seen.requests.push(url.to_owned());
                }
            }
            Some("Runtime.exceptionThrown") => self
                .seen
                .errors
                .push(format!("exception: {}", p["exceptionDetails"])),
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                self.seen.errors.push(format!("console: {}", p["args"]))
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => self
                .seen
                .errors
                .push(format!("log: {}", p["entry"]["text"])),
            _ => {}
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.send(None, method, params)?;
        self.wait_reply(id, method)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let session = self.session.clone();
        let id = self.send(Some(&session), method, params)?;
        self.wait_reply(id, method)
    }

    /// Evaluates `js` in the page; its value (JSON).
    pub fn eval(&mut self, js: &str) -> anyhow::Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{js}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    pub fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        let r = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(e) = r.get("errorText") {
            bail!("navigate to {url}: {e}");
        }
        Ok(())
    }

    /// Waits (60 s at most) until `js` evaluates to `true`; the error names
    /// `what` and what `show` evaluates to then.
    pub fn until(&mut self, what: &str, js: &str, show: &str) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if self.eval(js)? == json!(true) {
                return Ok(());
            }
            if Instant::now() > end {
                let now = self
                    .eval(show)
                    .unwrap_or_else(|e| Value::from(e.to_string()));
                bail!("timed out waiting for {what}; the page shows: {now}");
            }
            // Drain events meanwhile, so the page's requests and errors are kept.
            while let Ok(raw) = self.from.try_recv() {
                if let Ok(msg) = serde_json::from_slice::<Value>(&raw) {
                    self.note(&msg);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = r["data"]
            .as_str()
            .ok_or_else(|| anyhow!("no screenshot data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely, then end the whole group (renderers, zygotes).
        let _ = self.send(None, "Browser.close", json!({}));
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the process group this browser leads (its own pid).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
