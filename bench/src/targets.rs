//! The processes under test: the two `mcpflip upstream` slots (blue, green) and,
//! in front of them, one of mcpflip, nginx, HAProxy or Caddy (or nothing:
//! direct). Each proxy is configured the way its own documentation recommends
//! for SSE, started as our own child on an ephemeral loopback port, pinned to
//! the proxy CPUs, and stopped at the end. `flip` switches its active slot the
//! way its operators do: mcpflip's control socket, nginx's config rewrite and
//! reload, HAProxy's runtime API, Caddy's admin API.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::http;
pub use crate::model::Slot;
use crate::model::{self, CpuPlan, Kind};
use crate::sys;

/// What every process needs to know.
#[derive(Debug, Clone)]
pub struct Env {
    /// Temporary directory for configs, sockets and logs.
    pub dir: PathBuf,
    /// The `mcpflip` binary (release build).
    pub mcpflip: PathBuf,
    pub plan: CpuPlan,
    /// Every CPU the bench may use (a proxy with more workers than the plan
    /// has proxy cores runs on all of them).
    pub all_cpus: Vec<usize>,
    /// `taskset`, when available (pinning is skipped without it).
    pub taskset: Option<PathBuf>,
    /// `wrk`, when installed (the W1 cross-check is skipped without it).
    pub wrk: Option<PathBuf>,
    /// RLIMIT_NOFILE of every process (nginx and HAProxy are told to stay within it).
    pub nofile: u64,
}

impl Env {
    /// A command that runs `program` on `cpus`.
    fn pinned(&self, cpus: &[usize], program: &Path) -> Command {
        match &self.taskset {
            Some(t) => {
                let mut c = Command::new(t);
                c.arg("-c").arg(model::list(cpus)).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// A free loopback port (bound and released; the child binds it right after).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<(File, File)> {
    let f = File::options()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .with_context(|| format!("cannot create {name}.log in {}", dir.display()))?;
    Ok((f.try_clone()?, f))
}

pub(crate) fn log_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub(crate) fn spawn(mut cmd: Command, dir: &Path, name: &str) -> anyhow::Result<Child> {
    let (out, err) = log_file(dir, name)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    cmd.spawn()
        .with_context(|| format!("cannot start {name}: {cmd:?}"))
}

/// Waits until `port` accepts connections while `child` is alive.
pub(crate) fn wait_listening(
    child: &mut Child,
    port: u16,
    dir: &Path,
    name: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited ({status}) before listening on 127.0.0.1:{port}; its log:\n{}",
                log_tail(dir, name)
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not listen on 127.0.0.1:{port} within 20 s; its log:\n{}",
                log_tail(dir, name)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cmd` as `name` and waits until it listens on `port`; stopped
/// again when it does not.
fn spawn_listening(cmd: Command, dir: &Path, name: &str, port: u16) -> anyhow::Result<Child> {
    let mut child = spawn(cmd, dir, name)?;
    match wait_listening(&mut child, port, dir, name) {
        Ok(()) => Ok(child),
        Err(e) => {
            stop_child(&mut child);
            Err(e)
        }
    }
}

/// `start` on a free loopback port, tried on three ports: one may be taken
/// between its release and the child's bind.
fn on_a_free_port(
    mut start: impl FnMut(u16) -> anyhow::Result<Child>,
) -> anyhow::Result<(u16, Child)> {
    let mut last = None;
    for _attempt in 0..3 {
        let port = free_port()?;
        match start(port) {
            Ok(child) => return Ok((port, child)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three attempts"))
}

/// nginx on `cpus` with its prefix, config and early error log in `dir`.
fn nginx_command(env: &Env, cpus: &[usize], nginx: &Path, dir: &Path) -> Command {
    let mut c = env.pinned(cpus, nginx);
    c.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    c
}

/// The top of both nginx configs (the proxy's and the static upstream's):
/// in the foreground, `workers` processes under a master or one without,
/// as many connections as the open-file limit allows, errors only.
fn nginx_head(dir: &Path, master: bool, workers: usize, nofile: u64) -> String {
    format!(
        r#"daemon off;
master_process {master};
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections {conns};
}}
"#,
        master = if master { "on" } else { "off" },
        dir = dir.display(),
        conns = nofile.saturating_sub(64).max(1024),
    )
}

/// Stops a child: SIGTERM, again after 2 s (mcpflip and Caddy stop at once on
/// a second signal), then SIGKILL to it and every process below it.
pub(crate) fn stop_child(child: &mut Child) {
    let pid = child.id();
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let tree = sys::tree(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut signalled_again = false;
    // SAFETY: kill(2) on the pid of our own child, which we have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        let now = Instant::now();
        if now > deadline {
            for &p in tree.iter().rev() {
                // SAFETY: our child and the processes it started (nginx workers).
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
            let _ = child.wait();
            break;
        }
        if !signalled_again && now + Duration::from_secs(3) > deadline {
            signalled_again = true;
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A connection to mcpflip's control socket: one command per line out, one
/// JSON object per line back (progress objects, then the final one that
/// carries `ok`).
pub struct Control {
    conn: BufReader<UnixStream>,
}

impl Control {
    /// Connects to `path`, retrying for up to 10 s while the proxy starts.
    pub async fn connect(path: &Path) -> anyhow::Result<Control> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(path).await {
                Ok(s) => {
                    return Ok(Control {
                        conn: BufReader::new(s),
                    })
                }
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "mcpflip's control socket {} did not open: {e}",
                        path.display()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Sends `line`, hands every progress object to `progress`, and returns
    /// the final object whatever its `ok` says.
    pub async fn send(
        &mut self,
        line: &str,
        mut progress: impl FnMut(&Value),
    ) -> anyhow::Result<Value> {
        self.conn
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let mut buf = String::new();
        loop {
            buf.clear();
            if self.conn.read_line(&mut buf).await? == 0 {
                bail!("mcpflip closed the control connection after {line:?}");
            }
            let v: Value = serde_json::from_str(buf.trim())
                .with_context(|| format!("bad control reply {buf:?}"))?;
            if v.get("ok").is_some() {
                return Ok(v);
            }
            progress(&v);
        }
    }

    /// [`Control::send`] for a command that must succeed: an error when the
    /// reply says `"ok": false`.
    pub async fn ok(&mut self, line: &str) -> anyhow::Result<Value> {
        let v = self.send(line, |_| {}).await?;
        if v["ok"] != Value::Bool(true) {
            bail!("`{line}` failed: {v}");
        }
        Ok(v)
    }
}

/// The two upstream slots: two `mcpflip upstream`s, or one static responder
/// as both ([`Upstreams::start_static`]).
pub struct Upstreams {
    children: Vec<Child>,
    ports: [u16; 2],
    /// The static responder's nginx binary (`None`: the MCP upstreams).
    nginx: Option<PathBuf>,
}

/// The static upstream's answer to every request: the demo upstream's answer
/// to W1's call (`http::CALL`), the same 91 bytes.
pub const STATIC_ANSWER: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;

/// The session id the static upstream gives every request.
pub const STATIC_SESSION: &str = "static-session";

impl Upstreams {
    pub fn start(env: &Env) -> anyhow::Result<Upstreams> {
        let mut children = Vec::new();
        let mut ports = [0u16; 2];
        for slot in [Slot::Blue, Slot::Green] {
            let (port, child) = on_a_free_port(|port| Upstreams::spawn(env, slot, port))?;
            ports[slot.index()] = port;
            children.push(child);
        }
        Ok(Upstreams {
            children,
            ports,
            nginx: None,
        })
    }

    /// One nginx process, pinned where the upstreams run, that answers every
    /// request with [`STATIC_ANSWER`] and [`STATIC_SESSION`]: both slots.
    /// It costs CPU 0 less per request than the demo server (5.76 µs against
    /// 6.72 under wrk at c=64, bench/PROFILE.md §60).
    pub fn start_static(env: &Env, nginx: &Path) -> anyhow::Result<Upstreams> {
        let (port, child) = on_a_free_port(|port| Upstreams::spawn_static(env, nginx, port))?;
        Ok(Upstreams {
            children: vec![child],
            ports: [port, port],
            nginx: Some(nginx.to_owned()),
        })
    }

    fn spawn_static(env: &Env, nginx: &Path, port: u16) -> anyhow::Result<Child> {
        let dir = env.dir.join("upstream-static");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("nginx.conf"),
            static_config(&dir, port, env.nofile),
        )?;
        let cmd = nginx_command(env, &env.plan.upstream, nginx, &dir);
        spawn_listening(cmd, &env.dir, "upstream-static", port)
    }

    /// Both upstreams stopped and started again on their ports: what a run
    /// left in them (an allocator's dirty pages from 9,000 streams, purged
    /// as the next run allocates) no longer runs during the next target's
    /// window (bench/PROFILE.md §56).
    pub fn restart(&mut self, env: &Env) -> anyhow::Result<()> {
        self.stop();
        self.children.clear();
        if let Some(nginx) = &self.nginx {
            let child = Upstreams::spawn_static(env, nginx, self.port(Slot::Blue))?;
            self.children.push(child);
            return Ok(());
        }
        for slot in [Slot::Blue, Slot::Green] {
            let child = Upstreams::spawn(env, slot, self.port(slot))?;
            self.children.push(child);
        }
        Ok(())
    }

    /// One upstream on `port`, listening.
    fn spawn(env: &Env, slot: Slot, port: u16) -> anyhow::Result<Child> {
        let mut cmd = env.pinned(&env.plan.upstream, &env.mcpflip);
        cmd.args(["upstream", "--port", &port.to_string()])
            .args(["--slot", slot.name(), "--transport", "both"])
            .env("RUST_LOG", "warn");
        spawn_listening(cmd, &env.dir, &format!("upstream-{}", slot.name()), port)
    }

    pub fn port(&self, slot: Slot) -> u16 {
        self.ports[slot.index()]
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    pub fn stop(&mut self) {
        for c in &mut self.children {
            stop_child(c);
        }
    }
}

/// The static upstream's nginx.conf: one process in the foreground, no log
/// but errors, keep-alive as long as the proxies keep their connections.
fn static_config(dir: &Path, port: u16, nofile: u64) -> String {
    format!(
        r#"# written by mcpflip-bench: the static upstream
{head}http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            add_header Mcp-Session-Id {STATIC_SESSION} always;
            add_header X-Served-By blue always;
            return 200 '{STATIC_ANSWER}';
        }}
    }}
}}
"#,
        head = nginx_head(dir, false, 1, nofile),
    )
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One target: a proxy process in front of the upstreams, or direct.
pub struct Target {
    pub kind: Kind,
    port: u16,
    active: Slot,
    child: Option<Child>,
    dir: PathBuf,
    upstream_ports: [u16; 2],
    binary: Option<PathBuf>,
    env: Env,
    /// Caddy's admin API port.
    admin_port: u16,
    /// mcpflip's control connection.
    ctl: Option<Control>,
    /// Workers (mcpflip `workers`, nginx `worker_processes`, HAProxy
    /// `nbthread`, Caddy `GOMAXPROCS`) and the CPUs they run on.
    workers: usize,
    cpus: Vec<usize>,
    /// mcpflip with its access log on (`[log] access_log = "stderr"`).
    access_log: bool,
    /// mcpflip capturing sessions for migration (`[drain] migrate = "replay"`).
    capture: bool,
}

impl Target {
    pub fn new(kind: Kind, env: &Env, upstreams: &Upstreams) -> anyhow::Result<Target> {
        Target::in_dir(kind, kind.key(), env, upstreams)
    }

    /// A second mcpflip, the same but for its access log, which is on.
    pub fn mcpflip_with_access_log(env: &Env, upstreams: &Upstreams) -> anyhow::Result<Target> {
        let mut t = Target::in_dir(Kind::Mcpflip, "mcpflip-access-log", env, upstreams)?;
        t.access_log = true;
        Ok(t)
    }

    /// A second mcpflip, the same but for live session migration, which is
    /// on: it captures every session's `initialize` (`[drain] migrate = "replay"`).
    pub fn mcpflip_with_capture(env: &Env, upstreams: &Upstreams) -> anyhow::Result<Target> {
        let mut t = Target::in_dir(Kind::Mcpflip, "mcpflip-capture", env, upstreams)?;
        t.capture = true;
        Ok(t)
    }

    /// A target of its own directory `name` in front of `upstreams`.
    pub fn in_dir(
        kind: Kind,
        name: &str,
        env: &Env,
        upstreams: &Upstreams,
    ) -> anyhow::Result<Target> {
        let dir = env.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let binary = match kind.binary() {
            Some(b) => Some(sys::find_binary(b).with_context(|| {
                format!("{b} is not installed; run bench/setup.sh (as root) to install the anchors")
            })?),
            None => None,
        };
        Ok(Target {
            kind,
            port: upstreams.port(Slot::Blue),
            active: Slot::Blue,
            child: None,
            dir,
            upstream_ports: [upstreams.port(Slot::Blue), upstreams.port(Slot::Green)],
            binary,
            env: env.clone(),
            admin_port: 0,
            ctl: None,
            workers: env.plan.workers(),
            cpus: env.plan.proxy.clone(),
            access_log: false,
            capture: false,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Its own directory: configs, sockets, logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Workers and CPUs from the next start on.
    pub fn set_workers(&mut self, workers: usize, cpus: Vec<usize>) {
        self.workers = workers;
        self.cpus = cpus;
    }

    /// The file the process's stdout and stderr go to (its access log, when on).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.kind.key()))
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The `Host` header clients send.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The proxy's processes (master and workers), empty for direct.
    pub fn pids(&self) -> Vec<u32> {
        self.child
            .as_ref()
            .map(|c| sys::tree(c.id()))
            .unwrap_or_default()
    }

    pub fn active(&self) -> Slot {
        self.active
    }

    /// Records a change of the active slot made through [`Target::ctl`].
    pub fn set_active(&mut self, slot: Slot) {
        self.active = slot;
    }

    fn upstream(&self, slot: Slot) -> u16 {
        self.upstream_ports[slot.index()]
    }

    /// Starts the proxy with `blue` active (a fresh process).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.active = Slot::Blue;
        if self.kind == Kind::Direct {
            self.port = self.upstream(Slot::Blue);
            return Ok(());
        }
        let mut last = None;
        for _attempt in 0..3 {
            match self.try_start() {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    if let Some(mut c) = self.child.take() {
                        stop_child(&mut c);
                    }
                    last = Some(e);
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        if self.kind == Kind::Mcpflip {
            self.connect_ctl().await?;
        }
        Ok(())
    }

    fn try_start(&mut self) -> anyhow::Result<()> {
        self.port = free_port()?;
        let name = self.kind.key();
        let cpus = self.cpus.clone();
        let cmd = match self.kind {
            Kind::Direct => return Ok(()),
            Kind::Mcpflip => {
                let path = self.dir.join("mcpflip.toml");
                std::fs::write(&path, self.mcpflip_config())?;
                let _ = std::fs::remove_file(self.dir.join("state.json"));
                let mut c = self.env.pinned(&cpus, &self.env.mcpflip);
                c.arg("run")
                    .arg("--config")
                    .arg(&path)
                    .arg("--ignore-state")
                    // The access log is `[log] access_log` (in the config); the
                    // main log stays quiet either way.
                    .env("RUST_LOG", "warn");
                c
            }
            Kind::Nginx => {
                std::fs::write(self.dir.join("nginx.conf"), self.nginx_config())?;
                nginx_command(&self.env, &cpus, self.bin(), &self.dir)
            }
            Kind::Haproxy => {
                std::fs::write(self.dir.join("haproxy.cfg"), self.haproxy_config())?;
                let _ = std::fs::remove_file(self.dir.join("haproxy.sock"));
                let mut c = self.env.pinned(&cpus, self.bin());
                c.arg("-f").arg(self.dir.join("haproxy.cfg")).arg("-db");
                c
            }
            Kind::Caddy => {
                self.admin_port = free_port()?;
                let cfg = self.caddy_config(self.active);
                std::fs::write(
                    self.dir.join("caddy.json"),
                    serde_json::to_vec_pretty(&cfg)?,
                )?;
                let mut c = self.env.pinned(&cpus, self.bin());
                c.arg("run")
                    .arg("--config")
                    .arg(self.dir.join("caddy.json"))
                    .env("GOMAXPROCS", self.workers.to_string())
                    .env("HOME", &self.dir)
                    .env("XDG_CONFIG_HOME", self.dir.join("config"))
                    .env("XDG_DATA_HOME", self.dir.join("data"));
                c
            }
        };
        let mut child = spawn(cmd, &self.dir, name)?;
        let ready = wait_listening(&mut child, self.port, &self.dir, name);
        self.child = Some(child);
        ready
    }

    fn bin(&self) -> &Path {
        self.binary
            .as_deref()
            .expect("anchors have their binary resolved in Target::new")
    }

    /// How the proxy process ended, when it has (a crash: its status and the
    /// line of its log that says why).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        let log = log_tail(&self.dir, self.kind.key());
        let why = log
            .lines()
            .find(|l| l.starts_with("panic:") || l.contains("fatal error") || l.contains("[emerg]"))
            .or_else(|| log.lines().last())
            .unwrap_or("")
            .trim()
            .to_owned();
        self.child = None;
        Some(format!("{} exited ({status}): {why}", self.kind.label()))
    }

    /// Stops the proxy (nothing for direct).
    pub fn stop(&mut self) {
        self.ctl = None;
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// A fresh process (memory readings start from a clean heap).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.start().await
    }

    // ----- configs -------------------------------------------------------

    fn mcpflip_config(&self) -> String {
        let weight = |s: Slot| if s == self.active { 100 } else { 0 };
        format!(
            r#"# written by mcpflip-bench
[listen]
addr = "127.0.0.1:{port}"

[admin]
addr = "127.0.0.1:0"

[control]
socket = "{dir}/control.sock"
state_file = "{dir}/state.json"

[drain]
deadline = "5m"
quiet = "1s"
migrate = "{migrate}"
# Room for W5's sessions, whatever its settings.
migrate_max_sessions = 10000000

[proxy]
workers = {workers}

[log]
# On: mcpflip's default, beside the main log on stderr (the process's log file).
access_log = "{access_log}"

[[slot]]
name = "blue"
upstream = "http://127.0.0.1:{blue}"
weight = {wb}

[[slot]]
name = "green"
upstream = "http://127.0.0.1:{green}"
weight = {wg}
"#,
            port = self.port,
            dir = self.dir.display(),
            workers = self.workers,
            access_log = if self.access_log { "stderr" } else { "off" },
            migrate = if self.capture { "replay" } else { "off" },
            blue = self.upstream(Slot::Blue),
            green = self.upstream(Slot::Green),
            wb = weight(Slot::Blue),
            wg = weight(Slot::Green),
        )
    }

    /// nginx's recipe for SSE: `proxy_buffering off`, HTTP/1.1 to the upstream
    /// with `Connection ""` and an upstream `keepalive` pool; a long
    /// `proxy_read_timeout`; `keepalive_requests` raised so that neither side
    /// closes a busy keep-alive connection every 1,000 requests (mcpflip,
    /// HAProxy and Caddy do not). The client's address, scheme and host go
    /// upstream in `X-Forwarded-*`, as mcpflip and Caddy send them by default:
    /// every target gives the upstream the same headers to parse (without
    /// them, the upstream did 11 % fewer instructions per request behind
    /// nginx, on the core that bounds W1: bench/PROFILE.md §23).
    fn nginx_config(&self) -> String {
        format!(
            r#"# written by mcpflip-bench
{head}http {{
    access_log off;
    upstream mcp {{
        server 127.0.0.1:{up};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://mcp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#,
            head = nginx_head(&self.dir, true, self.workers, self.env.nofile),
            up = self.upstream(self.active),
            port = self.port,
        )
    }

    /// HAProxy in HTTP mode with keep-alive to the servers (the default; no
    /// `option http-server-close`), long client/server timeouts and `timeout
    /// tunnel` for streams, both slots as servers with weights (the runtime
    /// API changes them). `option http-no-delay`: without it HAProxy sends
    /// each partial response with MSG_MORE, and the kernel holds every SSE
    /// event (and the stream's headers) up to 200 ms.
    /// `option forwardfor` and the two `set-header`s: the `X-Forwarded-*`
    /// that mcpflip and Caddy send by default (see `nginx_config`).
    fn haproxy_config(&self) -> String {
        let weight = |s: Slot| if s == self.active { 100 } else { 0 };
        format!(
            r#"# written by mcpflip-bench
global
    nbthread {workers}
    maxconn {maxconn}
    stats socket {dir}/haproxy.sock mode 600 level admin

defaults
    mode http
    option http-keep-alive
    option http-no-delay
    option forwardfor
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-keep-alive 1h

frontend mcp
    bind 127.0.0.1:{port}
    maxconn {maxconn}
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend slots

backend slots
    balance roundrobin
    server blue 127.0.0.1:{blue} weight {wb}
    server green 127.0.0.1:{green} weight {wg}
"#,
            workers = self.workers,
            // A proxied connection takes two descriptors.
            maxconn = (self.env.nofile.saturating_sub(1_000) / 2).max(1_000),
            dir = self.dir.display(),
            port = self.port,
            blue = self.upstream(Slot::Blue),
            green = self.upstream(Slot::Green),
            wb = weight(Slot::Blue),
            wg = weight(Slot::Green),
        )
    }

    /// Caddy's `reverse_proxy` with `flush_interval -1` (flush every write),
    /// HTTP/1.1 keep-alive to the upstream; the active slot is the one upstream
    /// (`/load` swaps the whole config, as the admin API is meant to be used).
    fn caddy_config(&self, active: Slot) -> Value {
        json!({
            "admin": {
                "listen": format!("127.0.0.1:{}", self.admin_port),
                "config": {"persist": false},
            },
            "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {"http": {"servers": {"mcp": {
                "listen": [format!("127.0.0.1:{}", self.port)],
                "automatic_https": {"disable": true},
                "routes": [{"handle": [{
                    "handler": "reverse_proxy",
                    "flush_interval": -1,
                    "upstreams": [{"dial": format!("127.0.0.1:{}", self.upstream(active))}],
                    "transport": {
                        "protocol": "http",
                        "keep_alive": {"enabled": true, "max_idle_conns_per_host": 1024},
                    },
                }]}],
            }}}},
        })
    }

    // ----- control ---------------------------------------------------------

    async fn connect_ctl(&mut self) -> anyhow::Result<()> {
        self.ctl = Some(Control::connect(&self.dir.join("control.sock")).await?);
        Ok(())
    }

    /// Sends one line to mcpflip's control socket and returns the final reply
    /// (the object that carries `ok`), skipping progress lines.
    pub async fn ctl(&mut self, line: &str) -> anyhow::Result<Value> {
        if self.ctl.is_none() {
            self.connect_ctl().await?;
        }
        self.ctl
            .as_mut()
            .context("no control connection")?
            .ok(line)
            .await
    }

    /// Makes `to` the active slot, the way operators of this proxy do.
    pub async fn flip(&mut self, to: Slot) -> anyhow::Result<()> {
        let from = to.other();
        match self.kind {
            Kind::Direct => bail!("direct has no proxy to flip"),
            Kind::Mcpflip => {
                self.ctl(&format!("weights {}=100 {}=0", to.name(), from.name()))
                    .await?;
            }
            Kind::Nginx => {
                self.active = to;
                std::fs::write(self.dir.join("nginx.conf"), self.nginx_config())?;
                let out = tokio::process::Command::new(self.bin())
                    .arg("-p")
                    .arg(&self.dir)
                    .arg("-c")
                    .arg(self.dir.join("nginx.conf"))
                    .arg("-e")
                    .arg(self.dir.join("error.log"))
                    .args(["-s", "reload"])
                    .output()
                    .await?;
                if !out.status.success() {
                    bail!(
                        "nginx -s reload failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            Kind::Haproxy => {
                let mut s = UnixStream::connect(self.dir.join("haproxy.sock")).await?;
                s.write_all(
                    format!(
                        "set server slots/{} weight 100; set server slots/{} weight 0\n",
                        to.name(),
                        from.name()
                    )
                    .as_bytes(),
                )
                .await?;
                let mut out = String::new();
                s.read_to_string(&mut out).await?;
                if !out.trim().is_empty() {
                    bail!("HAProxy runtime API answered: {}", out.trim());
                }
            }
            Kind::Caddy => {
                let body = serde_json::to_vec(&self.caddy_config(to))?;
                let addr = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
                let mut conn = http::Conn::open(addr, None).await?;
                let host = format!("127.0.0.1:{}", self.admin_port);
                let mut req = Vec::with_capacity(body.len() + 256);
                http::write_post(&mut req, &host, "/load", None, &body);
                let head = conn.roundtrip(&req, false).await?;
                if head.status != 200 {
                    bail!(
                        "Caddy /load answered {}: {}",
                        head.status,
                        String::from_utf8_lossy(&conn.body)
                    );
                }
            }
        }
        self.active = to;
        Ok(())
    }

    /// Back to `blue` active, by the same mechanism (no restart).
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Direct => Ok(()),
            Kind::Mcpflip => {
                self.ctl("weights blue=100 green=0").await?;
                self.active = Slot::Blue;
                Ok(())
            }
            _ if self.active == Slot::Blue => Ok(()),
            _ => self.flip(Slot::Blue).await,
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}
