//! Request/response load over keep-alive connections.
//!
//! - The closed loop (W1, W5): each connection sends its next request as soon
//!   as the last answer is in. It measures capacity (requests/s at that
//!   concurrency) and the service time at that load: the latency of a request
//!   counts from its send to the end of its answer. Closed loops hide queueing
//!   before the send (coordinated omission), so these percentiles are service
//!   times at saturation, the same for every target.
//! - The open loop (W3): requests leave on a fixed schedule whatever happens;
//!   a request's latency counts from its *scheduled* send time, so a stall
//!   during a flip shows in full (corrected for coordinated omission).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::http::{self, Conn, HttpError};
use crate::model::Failures;
use crate::stats;
use crate::sys::{CpuMeter, CpuUse};

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What to send.
#[derive(Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub host: String,
    pub path: &'static str,
    pub body: &'static [u8],
    /// Session ids, used round robin; empty: no `Mcp-Session-Id`.
    pub sessions: Arc<Vec<String>>,
    pub conns: usize,
}

/// What a run measured (requests started and finished inside the
/// measurement window).
pub struct Outcome {
    pub ok: u64,
    pub failed: Failures,
    /// Idle keep-alive connections found closed by the proxy before reuse
    /// (reopened without losing a request, as a careful client does).
    pub reconnects: u64,
    pub hist: Histogram<u64>,
    /// Answers from blue and green (W3 asks `whoami`).
    pub by_slot: [u64; 2],
    pub window: Duration,
    pub cpu: CpuUse,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            ok: 0,
            failed: Failures::default(),
            reconnects: 0,
            hist: stats::histogram(),
            by_slot: [0; 2],
            window: Duration::ZERO,
            cpu: CpuUse::default(),
        }
    }

    fn merge(&mut self, o: &Outcome) {
        self.ok += o.ok;
        self.failed.add(&o.failed);
        self.reconnects += o.reconnects;
        let _ = self.hist.add(&o.hist);
        self.by_slot[0] += o.by_slot[0];
        self.by_slot[1] += o.by_slot[1];
    }

    /// Successful requests per second in the window.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Runs the open or closed loop: `warmup` unmeasured, then `measure` (CPU of
/// `groups` read over it), then stops. With `during`, the measurement window
/// lasts until that future ends instead (W3 runs its flips in it).
pub async fn run<F: std::future::Future<Output = ()>>(
    load: &Load,
    rate: Option<f64>,
    warmup: Duration,
    measure: Duration,
    groups: Vec<(&'static str, Vec<u32>)>,
    during: Option<F>,
) -> Outcome {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(load.conns);
    for i in 0..load.conns {
        let load = load.clone();
        let phase = phase.clone();
        tasks.push(tokio::spawn(async move {
            match rate {
                None => closed_conn(&load, i, &phase).await,
                Some(r) => open_conn(&load, i, r, start, &phase).await,
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    phase.store(MEASURE, Ordering::Release);
    let meter = CpuMeter::start(groups);
    let t0 = Instant::now();
    match during {
        Some(f) => f.await,
        None => tokio::time::sleep(measure).await,
    }
    phase.store(STOP, Ordering::Release);
    let window = t0.elapsed();
    let cpu = meter.stop();
    let mut out = Outcome::new();
    for t in tasks {
        if let Ok(o) = t.await {
            out.merge(&o);
        }
    }
    out.window = window;
    out.cpu = cpu;
    out
}

fn classify(e: &HttpError, f: &mut Failures) {
    match e {
        HttpError::Connect(_) => f.connect += 1,
        HttpError::ClosedBeforeResponse => f.closed += 1,
        HttpError::Broken(_) | HttpError::Malformed(_) => f.broken += 1,
    }
}

/// One request's outcome.
#[derive(Default)]
struct Light {
    ok: u64,
    failed: Failures,
    reconnects: u64,
    by_slot: [u64; 2],
    latency_us: Option<u64>,
}

/// One request on `conn` (opened first if needed; dropped when it cannot be
/// reused). Latency counts from `latency_from`.
async fn one(
    load: &Load,
    conn: &mut Option<Conn>,
    req: &[u8],
    check_idle: bool,
    latency_from: Instant,
) -> Light {
    let mut out = Light::default();
    if check_idle {
        if let Some(c) = conn.as_mut() {
            if c.peer_closed() {
                *conn = None;
                out.reconnects += 1;
            }
        }
    }
    let c = match conn {
        Some(c) => c,
        None => match Conn::open(load.addr, None).await {
            Ok(c) => conn.insert(c),
            Err(e) => {
                classify(&e, &mut out.failed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                return out;
            }
        },
    };
    let result = tokio::time::timeout(REQUEST_TIMEOUT, c.roundtrip(req, false)).await;
    let us = latency_from.elapsed().as_micros() as u64;
    match result {
        Ok(Ok(head)) => {
            if (200..300).contains(&head.status) {
                out.ok += 1;
                out.latency_us = Some(us);
                if memchr::memmem::find(&c.body, b"\"text\":\"blue\"").is_some() {
                    out.by_slot[0] += 1;
                } else if memchr::memmem::find(&c.body, b"\"text\":\"green\"").is_some() {
                    out.by_slot[1] += 1;
                }
            } else if head.status >= 500 {
                out.failed.status_5xx += 1;
            } else {
                out.failed.status_other += 1;
            }
            if head.close {
                *conn = None;
            }
        }
        Ok(Err(e)) => {
            classify(&e, &mut out.failed);
            *conn = None;
        }
        Err(_) => {
            out.failed.timeout += 1;
            *conn = None;
        }
    }
    out
}

/// Where connection `i` starts in `load.sessions`: each connection walks the
/// list in order from its own start (`k += 1`), so every session is named
/// equally often and this load generator reads its ids sequentially (a
/// stride through 100,000 ids cost it two cache misses a request: W5 is to
/// measure the targets' cost of many sessions, not its own). A connection's
/// block is about the ids one opening task got, so the upstream still sees them
/// scattered over its table.
fn first_session(load: &Load, i: usize) -> usize {
    i * load.sessions.len() / load.conns.max(1)
}

fn session(load: &Load, k: usize) -> Option<&str> {
    if load.sessions.is_empty() {
        None
    } else {
        Some(load.sessions[k % load.sessions.len()].as_str())
    }
}

async fn closed_conn(load: &Load, i: usize, phase: &AtomicU8) -> Outcome {
    let mut out = Outcome::new();
    let mut conn = None;
    let mut req = Vec::with_capacity(512);
    let mut k = first_session(load, i);
    loop {
        let before = phase.load(Ordering::Acquire);
        if before == STOP {
            return out;
        }
        http::write_post(&mut req, &load.host, load.path, session(load, k), load.body);
        k += 1;
        let r = one(load, &mut conn, &req, false, Instant::now()).await;
        // Count a request only if it started and ended inside the window.
        if before == MEASURE && phase.load(Ordering::Acquire) == MEASURE {
            out.absorb(r);
        }
    }
}

async fn open_conn(load: &Load, i: usize, rate: f64, start: Instant, phase: &AtomicU8) -> Outcome {
    let mut out = Outcome::new();
    let mut conn = None;
    let mut req = Vec::with_capacity(512);
    let interval = Duration::from_secs_f64(load.conns as f64 / rate);
    let mut due = start + interval.mul_f64(i as f64 / load.conns as f64);
    let mut k = first_session(load, i);
    loop {
        tokio::time::sleep_until(due.into()).await;
        let before = phase.load(Ordering::Acquire);
        if before == STOP {
            return out;
        }
        http::write_post(&mut req, &load.host, load.path, session(load, k), load.body);
        k += 1;
        let r = one(load, &mut conn, &req, true, due).await;
        if before == MEASURE && phase.load(Ordering::Acquire) == MEASURE {
            out.absorb(r);
        }
        due += interval;
    }
}

impl Outcome {
    fn absorb(&mut self, l: Light) {
        self.ok += l.ok;
        self.failed.add(&l.failed);
        self.reconnects += l.reconnects;
        self.by_slot[0] += l.by_slot[0];
        self.by_slot[1] += l.by_slot[1];
        if let Some(us) = l.latency_us {
            stats::record(&mut self.hist, us);
        }
    }
}

/// Opens `n` Streamable HTTP sessions through `addr` (`initialize` only, over
/// `conns` connections) and returns their `Mcp-Session-Id`s.
pub async fn create_sessions(
    addr: SocketAddr,
    host: &str,
    n: usize,
    conns: usize,
) -> anyhow::Result<Vec<String>> {
    let mut tasks = Vec::new();
    for i in 0..conns {
        let count = n / conns + usize::from(i < n % conns);
        let host = host.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            let mut conn = Conn::open(addr, None).await?;
            let mut req = Vec::with_capacity(512);
            http::write_post(&mut req, &host, "/mcp", None, http::INITIALIZE);
            while ids.len() < count {
                let head = conn.roundtrip(&req, true).await?;
                match head.session {
                    Some(s) if head.status == 200 => ids.push(s),
                    _ => anyhow::bail!("initialize answered {}", head.status),
                }
                if head.close {
                    conn = Conn::open(addr, None).await?;
                }
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}
