//! Issue 10, the edge under resource pressure, on the real binary: accept loops
//! at the file-descriptor limit (CPU time from /proc), and memory after bursts
//! of SSE streams (VmRSS from /proc). Both are resource bounds, not timings.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http_body_util::BodyExt;
use mcpflip::demo_server::{ServerConfig, Transport};
use support::mcp::http_client;
use support::proc::ProxyProcess;
use support::TestConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// The proxy binary as a child process (killed when dropped), and its addresses.
struct Proxy {
    process: ProxyProcess,
    public: SocketAddr,
    admin: SocketAddr,
    socket: std::path::PathBuf,
}

/// Starts `mcpflip run` with `[proxy]` keys `proxy` (raw TOML values) and one
/// slot on `upstream`; waits until it answers.
async fn spawn_proxy(dir: &Path, upstream: u16, proxy: &[(&str, &str)]) -> Proxy {
    let (public, admin) = (support::closed_port(), support::closed_port());
    let cfg = proxy
        .iter()
        .fold(TestConfig::new(dir), |c, (k, v)| c.set("proxy", k, *v))
        .listen_port(public)
        .set_str("admin", "addr", format!("127.0.0.1:{admin}"))
        .slot("blue", upstream, 100);
    let mut process = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &["--ignore-state"]);
    process.ready().await;
    Proxy {
        process,
        public: SocketAddr::from(([127, 0, 0, 1], public)),
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        socket: cfg.socket(),
    }
}

/// Lowers the open-file limit of the running process `pid` to `n`.
fn limit_files(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit reads `lim` and writes nothing back (null old limit).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// User + system CPU time of `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start at `state`.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 1000 / hz)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Defect 5: at its file-descriptor limit, with the public listener full and an
/// admin scrape and a control client waiting, the proxy stays nearly idle (it
/// backs off instead of retrying `accept` at once), and it serves both once
/// descriptors are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loops_back_off_at_the_descriptor_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    const LIMIT: u64 = 64;
    // Connections are not cut early, nor refused before the kernel's limit.
    let p = spawn_proxy(
        dir.path(),
        support::closed_port(),
        &[
            ("header_read_timeout", "\"2m\""),
            ("max_connections", "100000"),
        ],
    )
    .await;
    let pid = p.process.id();
    limit_files(pid, LIMIT);
    // Fill the proxy's descriptor table with idle client connections.
    let mut fillers = Vec::new();
    for _ in 0..LIMIT + 16 {
        fillers.push(
            tokio::net::TcpStream::connect(p.public)
                .await
                .expect("connect (the kernel queues it)"),
        );
    }
    support::until("the proxy is at its descriptor limit", || {
        open_fds(pid) as u64 >= LIMIT
    })
    .await;
    // An admin scrape and a control client now wait in their listeners' queues.
    let mut scrape = tokio::net::TcpStream::connect(p.admin)
        .await
        .expect("connect admin");
    scrape
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut control = tokio::net::UnixStream::connect(&p.socket)
        .await
        .expect("connect control");
    control.write_all(b"status\n").await.expect("write");

    let (cpu0, wall0) = (cpu_time(pid), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (cpu, wall) = (cpu_time(pid) - cpu0, wall0.elapsed());
    assert!(
        cpu.as_secs_f64() < 0.2 * wall.as_secs_f64(),
        "the proxy spun at its descriptor limit: {cpu:?} of CPU in {wall:?}"
    );

    // Descriptors free again: the waiting scrape and control client are served.
    drop(fillers);
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut scrape, &mut answer),
    )
    .await
    .expect("the scrape is answered once descriptors are free")
    .expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        BufReader::new(&mut control).read_line(&mut line),
    )
    .await
    .expect("the control client is answered")
    .expect("read");
    assert!(line.contains("\"ok\":true"), "{line}");
}

/// Opens `n` SSE streams through `addr`, `batch` at a time; returns their bodies.
async fn open_streams(
    client: &support::mcp::HttpClient,
    addr: SocketAddr,
    n: usize,
) -> Vec<hyper::body::Incoming> {
    let mut bodies = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut pending = Vec::new();
        for _ in chunk {
            let req = support::get(addr, "/ticker?interval_ms=60000");
            pending.push(tokio::spawn(client.request(req)));
        }
        for p in pending {
            let resp = p.await.expect("task").expect("stream opens");
            assert_eq!(resp.status(), 200);
            bodies.push(resp.into_body());
        }
    }
    bodies
}

async fn live_streams(admin: SocketAddr) -> u64 {
    let Ok(resp) = http_client().request(support::get(admin, "/metrics")).await else {
        return u64::MAX;
    };
    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
    let text = body
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("mcpflip_live_streams{slot=\"blue\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// Defect 7: after bursts of 2,000 SSE streams open and close, the proxy's RSS
/// returns to within 2x its post-startup baseline within a few seconds, cycle
/// after cycle (glibc's malloc kept its freed arenas: RSS stayed at the
/// high-water mark and climbed across cycles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_after_bursts_of_streams() {
    let stop = CancellationToken::new();
    let upstream = support::upstream(ServerConfig::new("blue", Transport::Both), &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = spawn_proxy(dir.path(), upstream, &[]).await;
    let pid = p.process.id();
    let client = http_client();
    // Post-startup baseline: after a few requests have warmed the runtime.
    drop(open_streams(&client, p.public, 20).await);
    support::until_async("warm-up streams closed", || async {
        live_streams(p.admin).await == 0
    })
    .await;
    let baseline = rss_kib(pid);
    let mut report = Vec::new();
    for cycle in 0..3 {
        let bodies = open_streams(&client, p.public, 2000).await;
        support::until_async("2000 live streams", || async {
            live_streams(p.admin).await == 2000
        })
        .await;
        let peak = rss_kib(pid);
        drop(bodies);
        support::until_async("0 live streams", || async {
            live_streams(p.admin).await == 0
        })
        .await;
        // A few seconds for the allocator to give freed memory back.
        let closed = tokio::time::Instant::now();
        let after = loop {
            let now = rss_kib(pid);
            if now <= 2 * baseline || closed.elapsed() >= Duration::from_secs(10) {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        report.push(format!(
            "cycle {cycle}: peak {peak} KiB, {after} KiB {:?} after the last stream closed",
            closed.elapsed()
        ));
        assert!(
            after <= 2 * baseline,
            "RSS stayed above 2x the {baseline} KiB baseline: {}",
            report.join("; ")
        );
    }
    eprintln!("baseline {baseline} KiB; {}", report.join("; "));
    stop.cancel();
}
