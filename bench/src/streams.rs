//! Long-lived SSE streams.
//!
//! - W2: N `/ticker` streams held at once, each event carrying the upstream's
//!   send time (`ts_us`); the relay latency of an event is the client's clock
//!   at arrival minus `ts_us` (same machine, same clock).
//! - W4: MCP sessions that hold a stream and end at chosen times: half legacy
//!   HTTP+SSE (`GET /sse`, the stream is the session), half Streamable HTTP
//!   (`initialize`, then the standalone `GET /mcp` stream).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Conn};
use crate::stats;
use crate::sys::{self, CpuMeter, CpuUse};

/// Connection attempts in flight at once while streams open.
const OPENING: usize = 128;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Finds `"ts_us":<digits>` in one event.
fn ts_us(event: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(event, b"\"ts_us\":")? + 8;
    let digits = event[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
    Some(digits)
}

/// What one W2 run measured.
pub struct TickerRun {
    pub opened: usize,
    pub failed: usize,
    /// Time to open all streams.
    pub setup: Duration,
    /// Proxy RSS before the streams opened, KiB (`None` for direct).
    pub rss_before_kib: Option<f64>,
    /// Proxy RSS growth with the streams open, KiB (`None` for direct).
    pub rss_growth_kib: Option<f64>,
    pub hist: Histogram<u64>,
    pub events: u64,
    pub window: Duration,
    pub cpu: CpuUse,
    /// The hypervisor's steal over the window (`None` where not counted).
    pub stolen: Option<sys::Stolen>,
    /// Streams that ended before we closed them.
    pub cut: usize,
    /// Each measured event's `(ts_us, arrival_us)`, when asked for.
    pub arrivals: Vec<(u64, u64)>,
}

struct Shared {
    measuring: AtomicBool,
    events: AtomicU64,
    ready: AtomicUsize,
    failed: AtomicUsize,
    cut: AtomicUsize,
    hist: Mutex<Histogram<u64>>,
    /// `Some` when each event's times are kept.
    arrivals: Option<Mutex<Vec<(u64, u64)>>>,
    stop: CancellationToken,
}

/// Opens `n` ticker streams through `addr` (spread over `sources`), measures,
/// closes them. `proxy` lists the proxy's processes (empty for direct);
/// `groups` are the processes whose CPU time is read over the window;
/// `arrivals` keeps each measured event's send and arrival times.
#[allow(clippy::too_many_arguments)]
pub async fn tickers(
    addr: SocketAddr,
    host: &str,
    n: usize,
    interval_ms: u64,
    pad: usize,
    sources: &[Ipv4Addr],
    proxy: impl Fn() -> Vec<u32>,
    groups: impl Fn() -> Vec<(&'static str, Vec<u32>)>,
    window: Duration,
    arrivals: bool,
) -> TickerRun {
    let pids0 = proxy();
    let rss0 = sys::rss_kib(&pids0);
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        events: AtomicU64::new(0),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        cut: AtomicUsize::new(0),
        hist: Mutex::new(stats::histogram()),
        arrivals: arrivals.then(|| Mutex::new(Vec::new())),
        stop: CancellationToken::new(),
    });
    let opening = Arc::new(Semaphore::new(OPENING));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let src = if sources.is_empty() {
            None
        } else {
            Some(sources[i % sources.len()])
        };
        // Stream i's events come at its own place in the wall clock's
        // interval, the N streams spread evenly over it: every target relays
        // the same events at the same times, however its streams opened
        // (bench/PROFILE.md §56).
        let req: Arc<[u8]> = http::get_stream(
            host,
            &format!(
                "/ticker?interval_ms={interval_ms}&pad={pad}&phase_ms={}",
                phase_ms(i, n, interval_ms)
            ),
            None,
        )
        .into();
        tasks.push(tokio::spawn(ticker_stream(
            addr,
            src,
            req,
            shared.clone(),
            opening.clone(),
        )));
    }
    let open_deadline = Instant::now() + Duration::from_secs(120);
    while shared.ready.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire) < n
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup = started.elapsed();
    // Steady state: every stream has had its first events.
    tokio::time::sleep(Duration::from_millis(interval_ms.max(500) + 500)).await;
    let pids = proxy();
    let rss_growth_kib =
        (!pids.is_empty()).then(|| sys::rss_kib(&pids).saturating_sub(rss0) as f64);
    let meter = CpuMeter::start(groups());
    let steal = sys::StealMeter::start();
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Release);
    tokio::time::sleep(window).await;
    shared.measuring.store(false, Ordering::Release);
    let window = t0.elapsed();
    let stolen = steal.stop();
    let cpu = meter.stop();
    shared.stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let hist = shared
        .hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| stats::histogram());
    TickerRun {
        opened: shared.ready.load(Ordering::Acquire),
        failed: shared.failed.load(Ordering::Acquire),
        setup,
        rss_before_kib: (!pids0.is_empty()).then_some(rss0 as f64),
        rss_growth_kib,
        hist,
        events: shared.events.load(Ordering::Acquire),
        window,
        cpu,
        stolen,
        cut: shared.cut.load(Ordering::Acquire),
        arrivals: shared
            .arrivals
            .as_ref()
            .and_then(|a| a.lock().ok().map(|mut a| std::mem::take(&mut *a)))
            .unwrap_or_default(),
    }
}

/// Stream `i` of `n`'s place in an interval of `interval_ms`: evenly spread.
fn phase_ms(i: usize, n: usize, interval_ms: u64) -> u64 {
    (i as u64 * interval_ms) / n.max(1) as u64
}

async fn ticker_stream(
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    req: Arc<[u8]>,
    shared: Arc<Shared>,
    opening: Arc<Semaphore>,
) {
    let permit = opening.acquire().await;
    let opened = async {
        let stream = http::connect(addr, src).await.ok()?;
        let mut conn = Conn::new_small(stream);
        let head = conn.send_head(&req, false).await.ok()?;
        (head.status == 200 && head.event_stream).then_some(conn)
    }
    .await;
    drop(permit);
    let Some(mut conn) = opened else {
        shared.failed.fetch_add(1, Ordering::AcqRel);
        return;
    };
    shared.ready.fetch_add(1, Ordering::AcqRel);
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let more = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = conn.next_data() => r,
        };
        match more {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                if !shared.stop.is_cancelled() {
                    shared.cut.fetch_add(1, Ordering::AcqRel);
                }
                return;
            }
        }
        let arrived = now_us();
        let data: &[u8] = if pending.is_empty() {
            &conn.body
        } else {
            pending.extend_from_slice(&conn.body);
            &pending
        };
        let mut used = 0;
        while let Some(end) = memchr::memmem::find(&data[used..], b"\n\n") {
            let event = &data[used..used + end];
            used += end + 2;
            if let Some(ts) = ts_us(event) {
                if shared.measuring.load(Ordering::Relaxed) {
                    shared.events.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut h) = shared.hist.lock() {
                        stats::record(&mut h, arrived.saturating_sub(ts));
                    }
                    if let Some(Ok(mut a)) = shared.arrivals.as_ref().map(|a| a.lock()) {
                        a.push((ts, arrived));
                    }
                }
            }
        }
        if pending.is_empty() {
            if used < conn.body.len() {
                pending.extend_from_slice(&conn.body[used..]);
            }
        } else {
            pending.drain(..used);
        }
    }
}

/// One W4 run.
pub struct DeployRun {
    pub opened: usize,
    pub failed: usize,
    /// Last session closed, counted from the deploy command.
    pub last_close: Duration,
    /// Deploy command to "drained" reply (mcpflip only).
    pub deploy: Option<Duration>,
    /// "Drained" reply minus the last session's close (mcpflip only).
    pub detection: Option<Duration>,
    /// Sessions the proxy ended before the client closed them.
    pub cut: usize,
}

/// Opens `m` sessions through `addr`, then runs `command` (the deploy: its
/// future resolves when the proxy reports the old slot drained) while the
/// sessions close at random times within `span` of it.
pub async fn deploy<F, Fut>(
    addr: SocketAddr,
    host: &str,
    m: usize,
    span: Duration,
    seed: u64,
    command: F,
) -> anyhow::Result<DeployRun>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let mut rng = fastrand::Rng::with_seed(seed);
    let go = CancellationToken::new();
    let t0 = Arc::new(Mutex::new(None::<Instant>));
    let opening = Arc::new(Semaphore::new(32));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(m);
    for i in 0..m {
        let end = span.mul_f64(rng.f64() * 0.95 + 0.05);
        let host = host.to_owned();
        let go = go.clone();
        let t0 = t0.clone();
        let opening = opening.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire().await;
            let conn = open_session(addr, &host, i % 2 == 0).await;
            drop(permit);
            let Ok(mut conn) = conn else {
                return Err(());
            };
            ready.fetch_add(1, Ordering::AcqRel);
            go.cancelled().await;
            let start = t0.lock().ok().and_then(|t| *t).unwrap_or_else(Instant::now);
            let close_at = start + end;
            // Hold the stream (reading whatever comes) until its end time.
            let cut = loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(close_at.into()) => break false,
                    r = conn.next_data() => match r {
                        Ok(true) => {}
                        Ok(false) | Err(_) => break true,
                    },
                }
            };
            let closed = Instant::now();
            drop(conn);
            Ok((closed, cut))
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Acquire) < m && Instant::now() < deadline {
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    if let Ok(mut t) = t0.lock() {
        *t = Some(start);
    }
    go.cancel();
    let waited = command().await?;
    let replied = Instant::now();
    let mut last = start;
    let (mut opened, mut failed, mut cut) = (0, 0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok((closed, was_cut))) => {
                opened += 1;
                cut += usize::from(was_cut);
                last = last.max(closed);
            }
            _ => failed += 1,
        }
    }
    Ok(DeployRun {
        opened,
        failed,
        last_close: last - start,
        deploy: waited.then(|| replied - start),
        detection: waited.then(|| replied.saturating_duration_since(last)),
        cut,
    })
}

/// Opens one session with its stream: legacy (`GET /sse` up to its
/// `endpoint` event) or Streamable HTTP (`initialize`, `initialized`, then
/// `GET /mcp` with the session id).
async fn open_session(addr: SocketAddr, host: &str, legacy: bool) -> anyhow::Result<Conn> {
    let mut conn = Conn::open(addr, None).await?;
    if legacy {
        let head = conn
            .send_head(&http::get_stream(host, "/sse", None), false)
            .await?;
        anyhow::ensure!(head.status == 200, "GET /sse answered {}", head.status);
        let mut seen = Vec::new();
        while memchr::memmem::find(&seen, b"\n\n").is_none() {
            anyhow::ensure!(
                conn.next_data().await?,
                "the SSE stream ended before `endpoint`"
            );
            seen.extend_from_slice(&conn.body);
        }
        anyhow::ensure!(
            memchr::memmem::find(&seen, b"event: endpoint").is_some(),
            "first SSE event is not `endpoint`"
        );
        return Ok(conn);
    }
    let sid = http::initialize(&mut conn, host).await?;
    let head = conn
        .send_head(&http::get_stream(host, "/mcp", Some(&sid)), false)
        .await?;
    anyhow::ensure!(
        head.status == 200 && head.event_stream,
        "GET /mcp answered {}",
        head.status
    );
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_spread_evenly_over_the_interval() {
        let phases: Vec<u64> = (0..1000).map(|i| phase_ms(i, 1000, 500)).collect();
        assert_eq!(phases[0], 0);
        assert_eq!(*phases.last().expect("1000"), 499);
        // Two streams per millisecond, none left out.
        let mut per_ms = [0; 500];
        for p in phases {
            per_ms[p as usize] += 1;
        }
        assert!(per_ms.iter().all(|&c| c == 2), "{per_ms:?}");
        // Every phase inside the interval (the upstream refuses one outside).
        assert!((0..9000).all(|i| phase_ms(i, 9000, 500) < 500));
    }
}
