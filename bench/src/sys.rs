//! The machine side of the benchmark: the CPUs it may use and its pinning,
//! the file-descriptor limit, readings from `/proc` (RSS and CPU time of a
//! process tree), and the facts the results record (CPU, kernel, versions).
//!
//! Linux only, like the anchors' configs (epoll, `/proc`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::model::{Machine, STEAL_LIMIT, STEAL_TRIES};

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set of the size we pass; the kernel writes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread (and every thread it starts afterwards) to `cpus`.
pub fn pin_self(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: `set` is zero-initialised and filled with CPU_SET before the call.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises `RLIMIT_NOFILE` towards `want`: the hard limit too when we may
/// (root with CAP_SYS_RESOURCE), else the soft limit up to the hard one.
/// Returns (soft, hard) now in force. Children inherit them.
pub fn raise_nofile(want: u64) -> (u64, u64) {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (1024, 1024);
        }
        if lim.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return (want, want);
            }
        }
        let soft = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            (soft.rlim_cur, soft.rlim_max)
        } else {
            (lim.rlim_cur, lim.rlim_max)
        }
    }
}

/// The local port range for outgoing connections: (low, high).
pub fn ephemeral_ports() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// `pid` and every process below it.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|x| x.parse().ok())) {
                parents.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = parents.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Fields of `/proc/<pid>/stat` after the command name: index 0 is the state,
/// 1 the ppid, 11 utime, 12 stime (`man 5 proc`, fields 3.. shifted by 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Resident memory of `pids`, in KiB (`VmRSS`).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_kib(p, "VmRSS")).sum()
}

/// A KiB figure of `/proc/<pid>/status`: `VmRSS` (resident now), `VmHWM`
/// (the most it was resident since it started).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok()
}

/// The file descriptors `pid` has open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of `pids` (every thread), in seconds: the sum of each thread's
/// run time in `/proc/<pid>/task/<tid>/schedstat` (nanoseconds), or, where
/// the kernel has no schedstat, user + system time from `/proc/<pid>/stat`
/// (clock ticks: 10 ms steps, too coarse for short windows).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| process_cpu(p)).sum()
}

fn process_cpu(pid: u32) -> f64 {
    let from_schedstat = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .and_then(|dir| {
            let mut ns = 0u64;
            let mut any = false;
            for t in dir.flatten() {
                let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
                ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
                any = true;
            }
            any.then_some(ns as f64 / 1e9)
        });
    from_schedstat.unwrap_or_else(|| {
        stat_fields(pid)
            .and_then(|f| Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
            .map_or(0.0, |t| t as f64 / clock_ticks())
    })
}

/// CPU time of named process groups over an interval.
pub struct CpuMeter {
    groups: Vec<(&'static str, Vec<u32>, f64)>,
    started: Instant,
}

/// What a [`CpuMeter`] measured: per group, CPU seconds and the share of one
/// core it used (1.0 = one core busy all the time).
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub groups: Vec<(&'static str, f64, f64)>,
}

impl CpuUse {
    /// Share of one core used by `name` (0 when not measured).
    pub fn cores(&self, name: &str) -> f64 {
        self.groups
            .iter()
            .find(|g| g.0 == name)
            .map_or(0.0, |g| g.2)
    }

    /// CPU seconds used by `name`.
    pub fn seconds(&self, name: &str) -> f64 {
        self.groups
            .iter()
            .find(|g| g.0 == name)
            .map_or(0.0, |g| g.1)
    }
}

impl CpuMeter {
    pub fn start(groups: Vec<(&'static str, Vec<u32>)>) -> CpuMeter {
        CpuMeter {
            groups: groups
                .into_iter()
                .map(|(n, p)| {
                    let c = cpu_seconds(&p);
                    (n, p, c)
                })
                .collect(),
            started: Instant::now(),
        }
    }

    pub fn stop(self) -> CpuUse {
        let wall = self.started.elapsed().as_secs_f64().max(1e-6);
        CpuUse {
            groups: self
                .groups
                .into_iter()
                .map(|(n, p, c0)| {
                    let used = (cpu_seconds(&p) - c0).max(0.0);
                    (n, used, used / wall)
                })
                .collect(),
        }
    }
}

/// How [`settle`] decides that processes have gone quiet: less than `busy`
/// of CPU time over each of `quiet_steps` consecutive `step`s.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    pub step: std::time::Duration,
    pub busy: std::time::Duration,
    pub quiet_steps: u32,
    /// Gives up waiting after this long.
    pub limit: std::time::Duration,
}

impl Quiet {
    /// Under 2 % of a core for 300 ms, waiting at most 30 s: what is left of a
    /// proxy's and the upstreams' work once a run's connections have closed
    /// (their teardown and, for a garbage-collected proxy, its collection).
    pub const AFTER_A_RUN: Quiet = Quiet {
        step: std::time::Duration::from_millis(100),
        busy: std::time::Duration::from_millis(2),
        quiet_steps: 3,
        limit: std::time::Duration::from_secs(30),
    };
}

/// Waits until the processes `pids()` lists (asked again at every step, so a
/// process that ends counts as quiet) use less CPU than `q` allows, and says
/// how long that took and whether they got there before `q.limit`.
///
/// Between two runs the one that just ended may still be tearing down its
/// connections on the core the next target is pinned to: thousands of SSE
/// streams closing take a proxy hundreds of milliseconds (Caddy, after
/// 9,000, more than a second and a garbage collection), which the next
/// target's window would otherwise pay for.
pub async fn settle(pids: impl Fn() -> Vec<u32>, q: Quiet) -> (std::time::Duration, bool) {
    let started = Instant::now();
    let mut last = cpu_seconds(&pids());
    let mut quiet = 0;
    while started.elapsed() < q.limit {
        tokio::time::sleep(q.step).await;
        let now = cpu_seconds(&pids());
        // A process that ended takes its time with it: no negative use.
        let used = (now - last).max(0.0);
        last = now;
        if used < q.busy.as_secs_f64() {
            quiet += 1;
            if quiet >= q.quiet_steps {
                return (started.elapsed(), true);
            }
        } else {
            quiet = 0;
        }
    }
    (started.elapsed(), false)
}

/// Time the hypervisor ran something else while this guest's CPUs wanted to
/// run (all CPUs together, in seconds): the `steal` column of `/proc/stat`'s
/// `cpu` line. `None` where the kernel does not count it.
pub fn steal_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    steal_of(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// The steal ticks of `/proc/stat`'s text: the eighth number of its `cpu`
/// line (user, nice, system, idle, iowait, irq, softirq, steal).
fn steal_of(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// The CPUs `/proc/stat` lists (its `cpuN` lines).
fn cpus_of(stat: &str) -> usize {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
}

/// The hypervisor's steal over a measurement window: started before it,
/// read after it (bench/PROFILE.md §55: a window's tail latency follows it).
pub struct StealMeter {
    ticks: Option<u64>,
    cpus: usize,
    started: Instant,
}

/// What a [`StealMeter`] read over its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stolen {
    /// Seconds, all CPUs together.
    pub seconds: f64,
    /// Of the CPU time the window offered (its length × the CPUs).
    pub share: f64,
}

impl StealMeter {
    pub fn start() -> StealMeter {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        StealMeter {
            ticks: steal_of(&stat),
            cpus: cpus_of(&stat).max(1),
            started: Instant::now(),
        }
    }

    /// `None` where the kernel does not count steal.
    pub fn stop(&self) -> Option<Stolen> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks = steal_of(&stat)?.checked_sub(self.ticks?)?;
        Some(stolen(
            ticks,
            clock_ticks(),
            self.started.elapsed(),
            self.cpus,
        ))
    }
}

/// The share a window's steal counts as: none where it could not be read.
pub fn share_of(stolen: Option<Stolen>) -> f64 {
    stolen.map_or(0.0, |s| s.share)
}

/// Whether a window stolen from by `share` is kept over the one kept so far
/// (the first always is; of two, the less stolen).
pub fn less_stolen(kept: Option<f64>, share: f64) -> bool {
    kept.is_none_or(|k| share < k)
}

/// A measurement [`least_stolen`] kept.
pub struct Kept<T> {
    pub value: T,
    pub stolen: Option<Stolen>,
    /// Windows measured again before it.
    pub remeasured: usize,
}

/// Runs `once` until a run loses no more than [`STEAL_LIMIT`] of its CPU
/// time to the hypervisor, [`STEAL_TRIES`] runs at most, and keeps the least
/// stolen; `again` hears of each run measured again.
pub async fn least_stolen<T, F: std::future::Future<Output = T>>(
    once: impl FnMut() -> F,
    again: impl FnMut(&T, f64),
) -> Kept<T> {
    least_stolen_by(once, again, || {
        let meter = StealMeter::start();
        move || meter.stop()
    })
    .await
}

/// [`least_stolen`], with `meter` starting a reading of the steal over one
/// run (what it returns ends it).
async fn least_stolen_by<T, F, M>(
    mut once: impl FnMut() -> F,
    mut again: impl FnMut(&T, f64),
    mut meter: impl FnMut() -> M,
) -> Kept<T>
where
    F: std::future::Future<Output = T>,
    M: FnOnce() -> Option<Stolen>,
{
    let mut kept: Option<(T, Option<Stolen>)> = None;
    let mut remeasured = 0;
    for attempt in 0..STEAL_TRIES {
        let reading = meter();
        let value = once().await;
        let stolen = reading();
        let share = share_of(stolen);
        let over = share > STEAL_LIMIT;
        if over && attempt + 1 < STEAL_TRIES {
            remeasured += 1;
            again(&value, share);
        }
        if less_stolen(kept.as_ref().map(|k| share_of(k.1)), share) {
            kept = Some((value, stolen));
        }
        if !over {
            break;
        }
    }
    let (value, stolen) = kept.expect("STEAL_TRIES is at least one");
    Kept {
        value,
        stolen,
        remeasured,
    }
}

fn stolen(ticks: u64, per_second: f64, window: Duration, cpus: usize) -> Stolen {
    let seconds = ticks as f64 / per_second;
    let offered = window.as_secs_f64() * cpus as f64;
    Stolen {
        seconds,
        share: if offered > 0.0 {
            seconds / offered
        } else {
            0.0
        },
    }
}

/// The facts about the machine the report starts with.
///
/// `cores`: the CPUs this benchmark may use (read before it pins itself).
pub fn machine(cores: usize) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .and_then(|(_, v)| v.trim().parse::<f64>().ok());
    let cpu_model = match mhz {
        Some(m) => format!("{cpu_model} @ {:.2} GHz", m / 1000.0),
        None => cpu_model,
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| String::new(), |s| s.trim().to_owned());
    Machine {
        hostname,
        cpu_model,
        cores,
        kernel,
        memory_gib,
    }
}

/// First line of a command's output (stdout, else stderr), or `None`.
pub fn version_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let s = String::from_utf8_lossy(&text);
    s.lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// The revision a report names for the mcpflip binary `bin`: the commit it
/// was built from (`mcpflip --version` says `mcpflip 0.1.0 (git
/// abc1234def56)`), and the checkout's when that is elsewhere or has
/// uncommitted changes, so a run is not credited to a commit the binary
/// was not built from.
pub fn mcpflip_rev(bin: &Path, root: &Path) -> String {
    let built = bin
        .to_str()
        .and_then(|b| version_of(b, &["--version"]))
        .and_then(|v| built_commit(&v));
    label_rev(built.as_deref(), &git_rev(root))
}

/// `abc1234def56` from `mcpflip 0.1.0 (git abc1234def56)`; `None` for an
/// older binary (no commit) or one built outside a checkout (`unknown`).
fn built_commit(version: &str) -> Option<String> {
    let rest = version.split_once("(git ")?.1;
    let commit = rest.strip_suffix(')')?;
    (!commit.is_empty() && commit.bytes().all(|b| b.is_ascii_hexdigit())).then(|| commit.to_owned())
}

/// The label for a binary built at `built` run from a checkout at `checkout`
/// (as [`git_rev`] gives it).
fn label_rev(built: Option<&str>, checkout: &str) -> String {
    match built {
        None => checkout.to_owned(),
        Some(b) if b.starts_with(checkout) || checkout.starts_with(b) => checkout.to_owned(),
        Some(b) => format!("{b} (the checkout is at {checkout})"),
    }
}

/// `git describe`-like revision of the repository at `dir` (`abc1234`, with
/// `-dirty` when the tree has uncommitted changes).
pub fn git_rev(dir: &Path) -> String {
    let rev = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(rev) = rev else {
        return "unknown (not a git checkout)".to_owned();
    };
    let dirty = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{rev}-dirty")
    } else {
        rev
    }
}

/// Finds `name` on `PATH` or in `/usr/sbin`, `/sbin` (where Debian puts nginx
/// and HAProxy).
pub fn find_binary(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What one open descriptor of a process is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fd {
    /// A TCP socket: its local and remote ports (loopback here) and its state.
    Tcp {
        local: u16,
        remote: u16,
        state: &'static str,
    },
    /// Anything else, as `/proc/<pid>/fd/<n>` links it (`anon_inode:[eventpoll]`,
    /// `socket:[…]` of a Unix socket, `pipe:[…]`, a path).
    Other(String),
}

/// The states of `/proc/net/tcp` (`include/net/tcp_states.h`).
fn tcp_state(hex: &str) -> &'static str {
    match hex {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// The TCP sockets of `/proc/net/tcp{,6}` text, by inode.
pub fn tcp_sockets(text: &str) -> HashMap<u64, Fd> {
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let inode = f.get(9)?.parse::<u64>().ok()?;
            Some((
                inode,
                Fd::Tcp {
                    local: port(f.get(1)?)?,
                    remote: port(f.get(2)?)?,
                    state: tcp_state(f.get(3)?),
                },
            ))
        })
        .collect()
}

/// Every open descriptor of `pid`, as far as `/proc` says what it is.
pub fn fds_of(pid: u32) -> Vec<Fd> {
    let mut tcp = HashMap::new();
    for f in ["tcp", "tcp6"] {
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")) {
            tcp.extend(tcp_sockets(&t));
        }
    }
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<Fd> = dir
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse::<u64>().ok())
                .and_then(|inode| tcp.get(&inode).cloned())
                .unwrap_or(Fd::Other(link))
        })
        .collect();
    out.sort();
    out
}

/// The files in `dir` whose names end in `.ext`, sorted by name.
pub fn files_with_extension(dir: &Path, ext: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context as _;
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_labelled_with_the_commit_its_binary_was_built_from() {
        assert_eq!(
            built_commit("mcpflip 0.1.0 (git 9c5d0beb1234)").as_deref(),
            Some("9c5d0beb1234")
        );
        assert_eq!(
            built_commit("mcpflip 0.1.0"),
            None,
            "a binary from before the commit was named"
        );
        assert_eq!(built_commit("mcpflip 0.1.0 (git unknown)"), None);
        // Built from the checkout as it is: its name.
        assert_eq!(label_rev(Some("9c5d0beb1234"), "9c5d0be"), "9c5d0be");
        // Built elsewhere, or the checkout has changed since: both.
        assert_eq!(
            label_rev(Some("ce042723aaaa"), "9c5d0be"),
            "ce042723aaaa (the checkout is at 9c5d0be)"
        );
        assert_eq!(
            label_rev(Some("9c5d0beb1234"), "9c5d0be-dirty"),
            "9c5d0beb1234 (the checkout is at 9c5d0be-dirty)"
        );
        assert_eq!(label_rev(None, "9c5d0be"), "9c5d0be");
    }

    #[test]
    fn steal_is_the_eighth_figure_of_the_cpu_line() {
        let stat = "cpu  558398 0 105407 553318 2087 0 48515 32187 0 0\ncpu0 303038 0 59445 244769 1221 0 25528 16009 0 0\n";
        assert_eq!(steal_of(stat), Some(32187));
        assert_eq!(steal_of("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(steal_of("cpu  1 2 3 4\n"), None);
        assert_eq!(cpus_of(stat), 1);
        assert_eq!(cpus_of("cpu  1\ncpu0 1\ncpu1 1\nintr 5\n"), 2);
    }

    #[test]
    fn the_least_stolen_window_is_kept() {
        assert!(less_stolen(None, 0.30));
        assert!(less_stolen(Some(0.30), 0.05));
        assert!(!less_stolen(Some(0.05), 0.30));
        // Equal: the earlier window stays.
        assert!(!less_stolen(Some(0.05), 0.05));
        assert_eq!(share_of(None), 0.0);
    }

    /// `least_stolen_by` over runs numbered from 0, stolen from by `shares`
    /// in turn: (the kept run, its share, runs measured again, runs made).
    fn pick(shares: &[f64]) -> (usize, f64, usize, usize) {
        let shares = std::cell::RefCell::new(shares.iter().copied());
        let mut runs = 0;
        let mut heard = 0;
        let kept = block_on(least_stolen_by(
            || {
                runs += 1;
                std::future::ready(runs - 1)
            },
            |_, _| heard += 1,
            || {
                let share = shares.borrow_mut().next().expect("a share per run");
                move || {
                    Some(Stolen {
                        seconds: share,
                        share,
                    })
                }
            },
        ));
        assert_eq!(heard, kept.remeasured);
        (kept.value, share_of(kept.stolen), kept.remeasured, runs)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_stolen_run_is_measured_again_and_the_least_stolen_kept() {
        // Quiet at once: one run.
        assert_eq!(pick(&[0.004]), (0, 0.004, 0, 1));
        // Stolen, then quiet: the second run.
        assert_eq!(pick(&[0.30, 0.002]), (1, 0.002, 1, 2));
        // Stolen every time: three runs, the least stolen kept, and the last
        // is not "measured again".
        assert_eq!(pick(&[0.30, 0.05, 0.20]), (1, 0.05, 2, 3));
        // Exactly at the limit is not over it.
        assert_eq!(pick(&[STEAL_LIMIT]), (0, STEAL_LIMIT, 0, 1));
    }

    #[test]
    fn a_windows_steal_is_a_share_of_the_cpu_time_it_offered() {
        // 25 ticks of 10 ms over 2.5 s on 2 CPUs: 0.25 s of 5 s.
        let s = stolen(25, 100.0, Duration::from_millis(2500), 2);
        assert!((s.seconds - 0.25).abs() < 1e-9, "{s:?}");
        assert!((s.share - 0.05).abs() < 1e-9, "{s:?}");
        assert_eq!(stolen(3, 100.0, Duration::ZERO, 2).share, 0.0);
        // This machine's own counter reads, and never backwards.
        let meter = StealMeter::start();
        if let Some(s) = meter.stop() {
            assert!(s.seconds >= 0.0 && s.share >= 0.0, "{s:?}");
        }
    }

    #[test]
    fn tcp_sockets_are_read_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:D3A2 0100007F:5622 08 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        let s = tcp_sockets(text);
        assert_eq!(
            s.get(&4242),
            Some(&Fd::Tcp {
                local: 8080,
                remote: 0,
                state: "LISTEN"
            })
        );
        assert_eq!(
            s.get(&4343),
            Some(&Fd::Tcp {
                local: 54178,
                remote: 22050,
                state: "CLOSE_WAIT"
            })
        );
    }

    #[test]
    fn this_process_descriptors_are_described() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let fds = fds_of(std::process::id());
        assert!(
            fds.contains(&Fd::Tcp {
                local: port,
                remote: 0,
                state: "LISTEN"
            }),
            "{fds:?}"
        );
    }

    #[test]
    fn files_with_an_extension_are_listed_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.json", "a.json", "c.json.bak", "d.profraw"] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        let names: Vec<String> = files_with_extension(dir.path(), "json")
            .expect("listed")
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(names, ["a.json", "b.json"]);
        let err = files_with_extension(&dir.path().join("none"), "json").expect_err("no dir");
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    }

    #[tokio::test]
    async fn settling_waits_for_a_busy_process_to_go_quiet() {
        let q = Quiet {
            step: std::time::Duration::from_millis(50),
            busy: std::time::Duration::from_millis(5),
            quiet_steps: 2,
            limit: std::time::Duration::from_secs(10),
        };
        // A shell spinning for 0.6 s, then idle (sleeping) for a while.
        let mut busy = Command::new("sh")
            .args(["-c", "timeout 0.6 sh -c 'while :; do :; done'; sleep 5"])
            .spawn()
            .expect("sh");
        let pid = busy.id();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (took, quiet) = settle(|| tree(pid), q).await;
        assert!(quiet, "the spinning shell went quiet within the limit");
        assert!(
            took >= std::time::Duration::from_millis(400),
            "settled after {took:?}, while the shell still spun for ~550 ms"
        );
        assert!(
            took < std::time::Duration::from_secs(4),
            "settled after {took:?}"
        );
        let _ = busy.kill();
        let _ = busy.wait();

        // An idle process settles at once (two quiet steps), and one that
        // never quiets down is given up on at the limit.
        let mut idle = Command::new("sleep").arg("5").spawn().expect("sleep");
        let (took, quiet) = settle(|| vec![idle.id()], q).await;
        assert!(
            quiet && took < std::time::Duration::from_secs(1),
            "{took:?}"
        );
        let _ = idle.kill();
        let _ = idle.wait();
        let mut spin = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh");
        let short = Quiet {
            limit: std::time::Duration::from_millis(400),
            ..q
        };
        let (took, quiet) = settle(|| vec![spin.id()], short).await;
        let _ = spin.kill();
        let _ = spin.wait();
        assert!(
            !quiet,
            "a process spinning throughout never counts as quiet"
        );
        assert!(took >= std::time::Duration::from_millis(400), "{took:?}");
    }
}
