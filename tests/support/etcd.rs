//! Real etcd for the fleet tests: `tests/tools/install.sh etcd` finds or
//! unpacks the binary (Debian's `etcd-server`, never its service), and
//! [`EtcdCluster`] runs members of our own on loopback ephemeral ports, each
//! with its data directory under one temporary directory (on /dev/shm when
//! there is one: etcd fsyncs every write). Members stop, start again on
//! their data, or all go at once; every process is killed when the cluster
//! is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tools;

/// The etcd binary (installed on first use; panics with the command to run).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD") {
        return PathBuf::from(p);
    }
    tools::ensure("etcd");
    tools::dir().join("etcd/usr/bin/etcd")
}

/// One member: its ports, its data, its process while it runs.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of etcd members on 127.0.0.1.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    extra: Vec<String>,
}

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("mcpflip-etcd-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("mcpflip-etcd-")
        .tempdir()
        .expect("tempdir")
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, &[])
    }

    /// Starts `n` members with `extra` flags each (TLS, auth-token TTL, ...).
    pub fn start_with(n: usize, extra: &[String]) -> EtcdCluster {
        // A port picked free can be taken before etcd binds it: try again.
        for attempt in 0..3 {
            let mut c = EtcdCluster {
                dir: scratch(),
                members: Vec::new(),
                extra: extra.to_vec(),
            };
            for i in 0..n {
                let name = format!("m{i}");
                c.members.push(Member {
                    data: c.dir.path().join(format!("{name}.data")),
                    log: c.dir.path().join(format!("{name}.log")),
                    name,
                    client: super::closed_port(),
                    peer: super::closed_port(),
                    child: None,
                });
            }
            for i in 0..n {
                c.spawn(i);
            }
            if c.wait_healthy(Duration::from_secs(30)) {
                return c;
            }
            eprintln!(
                "etcd did not come up (attempt {}):\n{}",
                attempt + 1,
                c.logs()
            );
        }
        panic!("a {n}-member etcd cluster did not come up three times");
    }

    fn scheme(&self) -> &'static str {
        if self.extra.iter().any(|a| a.starts_with("--cert-file")) {
            "https"
        } else {
            "http"
        }
    }

    fn spawn(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let scheme = self.scheme();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log file");
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client);
        let child = Command::new(binary())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", "mcpflip-test"])
            .args(["--initial-cluster-state", "new"])
            // Quick elections: a stopped member is noticed in a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        m.child = Some(child);
    }

    /// The client URLs, one per member.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The client port of member `i`.
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client
    }

    /// The endpoints as a TOML array.
    pub fn toml_endpoints(&self) -> String {
        let list: Vec<String> = self.endpoints().iter().map(super::config::q).collect();
        format!("[{}]", list.join(", "))
    }

    /// Every member's log so far.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- {}:\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Stops member `i` (SIGTERM, then waits for it).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        if self.members[i].child.is_none() {
            self.spawn(i);
        }
    }

    /// Stops every member.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }

    /// Starts every stopped member and waits until the cluster answers.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.restart(i);
        }
        assert!(
            self.wait_healthy(Duration::from_secs(30)),
            "etcd did not come back:\n{}",
            self.logs()
        );
    }

    /// Whether every running member reports itself healthy (it has a
    /// leader) within `limit`.
    fn wait_healthy(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            let mut all = true;
            for m in &mut self.members {
                let Some(c) = m.child.as_mut() else { continue };
                if c.try_wait().ok().flatten().is_some() {
                    return false;
                }
                all &= health(m.client, &self.extra);
            }
            if all {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The temporary directory the members' data lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `GET /health` of a member says `"health":"true"` (plain HTTP members
/// only; a TLS member is taken as healthy once its port accepts).
fn health(port: u16, extra: &[String]) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if extra.iter().any(|a| a.starts_with("--cert-file")) {
        return true;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
