//! Per-slot live counts: the atomics the request path updates, the guards that
//! update them, and the wake-up a drain waits on when a slot reaches zero.
//!
//! A `SlotStats` belongs to a slot *name* and outlives table swaps, so a flip or a
//! reload never resets a count. Counts change only through guards (increment on
//! creation, decrement in `Drop`), so a client that vanishes, an upstream that
//! dies or a panic can never leak a count. Nothing here takes a lock on the
//! request path: a guard is one or two atomic operations.
//!
//! [`ProxyStats`] holds the listener-wide counters that belong to no slot:
//! open connections, refused connections, client faults, and the answers the
//! proxy makes itself before a slot is chosen.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::mcp::{method, Era};
use crate::shard::{self, Padded, PerWorker, SHARDS};
use crate::upstream::UpstreamError;
use tokio_util::sync::CancellationToken;

/// Upper bounds (seconds) of the stream-duration histogram buckets.
pub const STREAM_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Upper bounds (seconds) of the drain-duration histogram buckets.
pub const DRAIN_BUCKETS: [f64; 10] = [0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Upper bounds (seconds) of the request-duration histogram buckets: from a
/// cached `tools/list` (sub-millisecond) to a slow tool call.
pub const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];
/// Upper bounds (seconds) of the probe-step histogram buckets.
pub const PROBE_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The probe's step names (`probe::probe`), for the `step` label; a step not
/// listed here is not timed.
pub const PROBE_STEPS: [&str; 7] = [
    "discover",
    "endpoint",
    "initialize",
    "initialized",
    "tools/list",
    "canary",
    "close",
];

/// A fixed-bucket histogram made of atomics, encoded at scrape time.
///
/// Each observation lands in exactly one bucket (the last one is the `+Inf`
/// overflow), so a snapshot's cumulative buckets and its count come from the
/// same loads: `+Inf` always equals `_count`, whatever runs concurrently.
/// Each worker writes a shard of its own (`crate::shard`): the buckets and the
/// sum of shard `s` are in blocks `s * blocks ..` of `words`, on cache lines
/// no other shard uses.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// Per shard, `blocks` blocks: `bounds.len() + 1` per-bucket (not
    /// cumulative) counts, then the sum in microseconds.
    words: Box<[Padded<[AtomicU64; LINE_WORDS]>]>,
    /// Blocks of `LINE_WORDS` per shard.
    blocks: usize,
}

/// `u64`s in one [`Padded`] block.
const LINE_WORDS: usize = 16;

/// A histogram as the exposition formats want it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations (equal to the `+Inf` bucket).
    pub count: u64,
    /// `(upper bound, cumulative count)`, ascending; the last bound is `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        let blocks = (bounds.len() + 2).div_ceil(LINE_WORDS);
        Self {
            bounds,
            words: (0..SHARDS * blocks).map(|_| Padded::default()).collect(),
            blocks,
        }
    }

    /// Word `i` of shard `shard`.
    fn word(&self, shard: usize, i: usize) -> &AtomicU64 {
        &self.words[shard * self.blocks + i / LINE_WORDS].0[i % LINE_WORDS]
    }

    /// Records one observation: two relaxed atomic adds on this worker's
    /// shard, no allocation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        let shard = shard::index() % SHARDS;
        self.word(shard, i).fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.word(shard, self.bounds.len() + 1)
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// Bucket `i`'s count (not cumulative), over every shard.
    fn bucket(&self, i: usize) -> u64 {
        (0..SHARDS)
            .map(|s| self.word(s, i).load(Ordering::Relaxed))
            .sum()
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        (0..=self.bounds.len()).map(|i| self.bucket(i)).sum()
    }

    /// Cumulative buckets ending in `+Inf`, the count and the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        for (i, b) in bounds.enumerate() {
            cumulative += self.bucket(i);
            buckets.push((b, cumulative));
        }
        let sum = (0..SHARDS)
            .map(|s| self.word(s, self.bounds.len() + 1).load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add);
        HistogramSnapshot {
            sum: sum as f64 / 1e6,
            count: cumulative,
            buckets,
        }
    }
}

/// What a slot's requests write, per worker (`crate::shard`).
#[derive(Debug, Default)]
struct SlotShard {
    /// Responses by status class, 1xx..5xx.
    requests: [AtomicU64; 5],
    /// Requests by protocol era, indexed like `Era::ALL`.
    eras: [AtomicU64; Era::ALL.len()],
    /// One more than the milliseconds since the slot's `epoch` of this
    /// worker's last request pinned to the slot (0: none).
    last_pinned_ms: AtomicU64,
}

/// The live counts and counters of one slot.
#[derive(Debug)]
pub struct SlotStats {
    name: Arc<str>,
    live_streams: AtomicU64,
    inflight: AtomicU64,
    /// Number of drains waiting on this slot; guards only notify when it is > 0,
    /// so the common zero-crossing at concurrency 1 costs no wake-up.
    watchers: AtomicUsize,
    idle: Notify,
    /// Largest SSE `retry:` (ms) this slot has sent; a drain waits at least this long.
    max_retry_ms: AtomicU64,
    epoch: Instant,
    /// Responses, eras and the last pinned request, per worker.
    hot: PerWorker<SlotShard>,
    /// 5xx caused by the slot: its own 5xx answers and the proxy's 502/504 for
    /// its faults (never a client's fault). The watch window reads this.
    upstream_failures: AtomicU64,
    upstream_errors: [AtomicU64; UpstreamError::ALL.len()],
    /// Connections made to the slot, by every generation's client.
    upstream_connections: Arc<AtomicU64>,
    pub stream_duration: AtomicHistogram,
    pub drain_duration: AtomicHistogram,
    /// Request durations, arrival to the end of the response body (long-lived
    /// streams excepted: they are in `stream_duration`).
    pub request_duration: AtomicHistogram,
    /// The same per MCP method named by `Mcp-Method`, indexed like `mcp::method`.
    mcp_method_duration: Box<[AtomicHistogram]>,
    /// Probes of this slot: `[passed, failed]`.
    probes: [AtomicU64; 2],
    /// Probe step durations, indexed like `PROBE_STEPS`.
    probe_steps: Box<[AtomicHistogram]>,
    /// Drains of this slot: `[drained, forced at the deadline]`.
    drains: [AtomicU64; 2],
    /// Streams a drain deadline ended.
    forced_streams: AtomicU64,
    /// Cancelled when a drain deadline passes: open streams end at their next
    /// event boundary (or their connection is closed after the grace). It stays
    /// cancelled while a `ForceHold` lives, so a stream opened on the slot
    /// meanwhile ends at once too.
    force: ArcSwap<CancellationToken>,
    /// Connect failures in a row (passive health), or `UNHEALTHY_AFTER` after a
    /// failed active probe; any answer of the slot or a passing probe resets
    /// it. `/readyz` reads it (`health`).
    health_failures: AtomicU32,
    /// Live streams and requests in flight on this slot in the process this
    /// one took over from (a hitless upgrade), until that process exits: a
    /// drain is over only when both processes are idle.
    previous: [AtomicU64; 2],
    /// Set when a drain deadline passed or `drain --migrate` began: with
    /// `[drain] migrate = "replay"` the slot's sessions move to a serving slot.
    cut: AtomicBool,
}

/// Connect failures in a row after which a slot counts as down for `/readyz`.
pub const UNHEALTHY_AFTER: u32 = 3;

impl SlotStats {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(name),
            live_streams: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            watchers: AtomicUsize::new(0),
            idle: Notify::new(),
            max_retry_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            hot: PerWorker::default(),
            upstream_failures: AtomicU64::new(0),
            upstream_errors: Default::default(),
            upstream_connections: Arc::default(),
            stream_duration: AtomicHistogram::new(&STREAM_BUCKETS),
            drain_duration: AtomicHistogram::new(&DRAIN_BUCKETS),
            request_duration: AtomicHistogram::new(&REQUEST_BUCKETS),
            mcp_method_duration: (0..method::COUNT)
                .map(|_| AtomicHistogram::new(&REQUEST_BUCKETS))
                .collect(),
            probes: Default::default(),
            probe_steps: PROBE_STEPS
                .iter()
                .map(|_| AtomicHistogram::new(&PROBE_BUCKETS))
                .collect(),
            drains: Default::default(),
            forced_streams: AtomicU64::new(0),
            force: ArcSwap::from_pointee(CancellationToken::new()),
            health_failures: AtomicU32::new(0),
            previous: Default::default(),
            cut: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn live_streams(&self) -> u64 {
        self.live_streams.load(Ordering::SeqCst)
    }

    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::SeqCst)
    }

    /// True when no stream is open and no request is in flight, here and in
    /// the process this one took over from.
    pub fn is_idle(&self) -> bool {
        self.live_streams() == 0 && self.inflight() == 0 && self.previous() == (0, 0)
    }

    /// `(live streams, in flight)` of this slot in the process handing over
    /// to this one (zeros when there is none).
    pub fn previous(&self) -> (u64, u64) {
        (
            self.previous[0].load(Ordering::SeqCst),
            self.previous[1].load(Ordering::SeqCst),
        )
    }

    /// Records the previous process's counts (published over the handover
    /// socket); waiters are woken when they fall to zero.
    pub fn set_previous(&self, live_streams: u64, inflight: u64) {
        self.previous[0].store(live_streams, Ordering::SeqCst);
        self.previous[1].store(inflight, Ordering::SeqCst);
        self.wake_at_zero();
    }

    /// The slot answered (any status): it is reachable. A load before the
    /// store keeps the common case a read of a shared cache line.
    pub fn note_answer(&self) {
        if self.health_failures.load(Ordering::Relaxed) != 0 {
            self.health_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A connection to the slot could not be made (refused or timed out).
    pub fn note_connect_failure(&self) {
        self.health_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The outcome of an active health probe (`[health] interval`).
    pub fn note_health_probe(&self, passed: bool) {
        let v = if passed { 0 } else { UNHEALTHY_AFTER };
        self.health_failures.store(v, Ordering::Relaxed);
    }

    /// False once the slot's last `UNHEALTHY_AFTER` requests all failed to
    /// connect, or its last active probe failed.
    pub fn is_healthy(&self) -> bool {
        self.health_failures.load(Ordering::Relaxed) < UNHEALTHY_AFTER
    }

    /// Takes an in-flight guard: the request counts until the guard drops.
    pub fn inflight_guard(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(Arc::clone(self))
    }

    /// Takes a live-stream guard: the stream counts until the guard drops.
    pub fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        self.live_streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard {
            stats: Arc::clone(self),
            opened: Instant::now(),
        }
    }

    /// Records that a request pinned to this slot (a session's request) arrived.
    pub fn touch_pinned(&self) {
        // One more than the milliseconds since `epoch`: 0 stays "none", even
        // for a request in the slot's first millisecond.
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let stamp = ms.saturating_add(1);
        self.hot
            .local()
            .last_pinned_ms
            .store(stamp, Ordering::Relaxed);
    }

    /// Time since the last pinned request, or `None` if none ever arrived.
    pub fn since_last_pinned(&self) -> Option<Duration> {
        let ms = self
            .hot
            .iter()
            .map(|s| s.last_pinned_ms.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        if ms == 0 {
            return None;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(
            now.saturating_add(1).saturating_sub(ms),
        ))
    }

    /// Notes an SSE `retry:` value sent by this slot.
    pub fn note_retry(&self, ms: u64) {
        self.max_retry_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn max_retry(&self) -> Duration {
        Duration::from_millis(self.max_retry_ms.load(Ordering::Relaxed))
    }

    /// Counts a response by status class (1xx..5xx).
    pub fn count_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.hot.local().requests[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a 5xx the slot caused: its own 5xx answer, or the proxy's 502/504
    /// for its connect, reset or timeout (see `upstream_failures`).
    pub fn count_upstream_failure(&self) {
        self.upstream_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// 5xx answers the slot caused so far: what the watch window judges.
    /// Client faults (a broken or slow request body) are 4xx and never here.
    pub fn upstream_failures(&self) -> u64 {
        self.upstream_failures.load(Ordering::Relaxed)
    }

    /// Responses of status class `class` (1..=5) so far.
    pub fn responses(&self, class: usize) -> u64 {
        let class = class.clamp(1, 5) - 1;
        self.hot
            .iter()
            .map(|s| s.requests[class].load(Ordering::Relaxed))
            .sum()
    }

    pub fn count_era(&self, era: Era) {
        self.hot.local().eras[era as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of protocol era `era` so far.
    pub fn era_requests(&self, era: Era) -> u64 {
        self.hot
            .iter()
            .map(|s| s.eras[era as usize].load(Ordering::Relaxed))
            .sum()
    }

    pub fn count_upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_errors(&self, kind: UpstreamError) -> u64 {
        self.upstream_errors[kind as usize].load(Ordering::Relaxed)
    }

    /// The counter of connections made to the slot, for its clients
    /// (`UpstreamClient::with_connection_counter`).
    pub fn connection_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.upstream_connections)
    }

    /// Connections made to the slot so far (a request on a reused one
    /// makes none).
    pub fn upstream_connections(&self) -> u64 {
        self.upstream_connections.load(Ordering::Relaxed)
    }

    /// Records a finished request: its duration, and under its MCP method
    /// (an index from `mcp::method::index`) when it named one.
    pub fn observe_request(&self, took: Duration, mcp_method: Option<usize>) {
        self.request_duration.observe(took);
        if let Some(h) = mcp_method.and_then(|i| self.mcp_method_duration.get(i)) {
            h.observe(took);
        }
    }

    /// The duration histogram of MCP method index `i`.
    pub fn mcp_method_duration(&self, i: usize) -> Option<&AtomicHistogram> {
        self.mcp_method_duration.get(i)
    }

    /// Counts one probe of this slot and times its steps (named as in `PROBE_STEPS`).
    pub fn record_probe<'a>(&self, passed: bool, steps: impl Iterator<Item = (&'a str, Duration)>) {
        self.probes[usize::from(!passed)].fetch_add(1, Ordering::Relaxed);
        for (name, took) in steps {
            if let Some(i) = PROBE_STEPS.iter().position(|s| *s == name) {
                self.probe_steps[i].observe(took);
            }
        }
    }

    /// Probes so far that passed (`true`) or failed.
    pub fn probes(&self, passed: bool) -> u64 {
        self.probes[usize::from(!passed)].load(Ordering::Relaxed)
    }

    /// The duration histogram of probe step `PROBE_STEPS[i]`.
    pub fn probe_step(&self, i: usize) -> Option<&AtomicHistogram> {
        self.probe_steps.get(i)
    }

    /// Records a finished drain: how long it took and how many streams its
    /// deadline ended (0: it drained by itself).
    pub fn record_drain(&self, took: Duration, forced_streams: u64) {
        self.drain_duration.observe(took);
        self.drains[usize::from(forced_streams > 0)].fetch_add(1, Ordering::Relaxed);
        self.forced_streams
            .fetch_add(forced_streams, Ordering::Relaxed);
    }

    /// Drains so far that ended by themselves (`false`) or at the deadline (`true`).
    pub fn drains(&self, forced: bool) -> u64 {
        self.drains[usize::from(forced)].load(Ordering::Relaxed)
    }

    /// Streams ended by drain deadlines so far.
    pub fn forced_streams(&self) -> u64 {
        self.forced_streams.load(Ordering::Relaxed)
    }

    /// The token a new stream watches for a forced end (one atomic load, no lock).
    pub fn force_token(&self) -> CancellationToken {
        CancellationToken::clone(&self.force.load())
    }

    /// Marks the slot as cut (its sessions may move) or not.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Release);
    }

    /// Whether a drain deadline or `drain --migrate` cut this slot's sessions.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Ends every open stream of this slot at its next event boundary; a stream
    /// whose client does not read has its connection closed after the grace
    /// (`proxy::body`). Streams opened later end at once too (shutdown).
    pub fn force_end_streams(&self) {
        self.force.load().cancel();
    }

    /// Ends the streams open now at their next event boundaries (as
    /// `force_end_streams` does); streams opened later run.
    pub fn end_open_streams(&self) {
        drop(self.force_streams());
    }

    /// Ends every open stream as `force_end_streams` does, and every stream
    /// opened until the returned hold drops; then streams run again.
    pub fn force_streams(&self) -> ForceHold<'_> {
        self.force_end_streams();
        ForceHold(self)
    }

    /// Lets streams opened from now on run again.
    fn rearm_force(&self) {
        if self.force.load().is_cancelled() {
            self.force.store(Arc::new(CancellationToken::new()));
        }
    }

    /// Waits until no stream of this slot is open (in-flight requests aside).
    pub async fn wait_streams_ended(&self) {
        self.wait_until(|s| s.live_streams() == 0).await
    }

    /// Waits until the slot is idle. Event driven: the guard that brings a count
    /// to zero wakes this future; there is no polling.
    pub async fn wait_idle(&self) {
        self.wait_until(SlotStats::is_idle).await
    }

    async fn wait_until(&self, done: impl Fn(&SlotStats) -> bool) {
        let _watch = WatchGuard::new(self);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a zero-crossing between the check and
            // the await cannot be missed.
            notified.as_mut().enable();
            if done(self) {
                return;
            }
            notified.await;
        }
    }

    /// Called by a guard whose count reached zero: wakes the waiters (only
    /// while someone waits), which check their own condition.
    fn wake_at_zero(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.idle.notify_waiters();
        }
    }
}

/// Keeps a slot's streams forced (see `SlotStats::force_streams`).
#[derive(Debug)]
pub struct ForceHold<'a>(&'a SlotStats);

impl Drop for ForceHold<'_> {
    fn drop(&mut self) {
        self.0.rearm_force();
    }
}

struct WatchGuard<'a>(&'a SlotStats);

impl<'a> WatchGuard<'a> {
    fn new(stats: &'a SlotStats) -> Self {
        stats.watchers.fetch_add(1, Ordering::SeqCst);
        Self(stats)
    }
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<SlotStats>);

impl InflightGuard {
    pub fn stats(&self) -> &Arc<SlotStats> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.wake_at_zero();
        }
    }
}

/// Counts one open SSE stream until dropped, and records how long it was open.
#[derive(Debug)]
pub struct StreamGuard {
    stats: Arc<SlotStats>,
    opened: Instant,
}

impl StreamGuard {
    pub fn stats(&self) -> &Arc<SlotStats> {
        &self.stats
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.stats.stream_duration.observe(self.opened.elapsed());
        if self.stats.live_streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.stats.wake_at_zero();
        }
    }
}

/// The `SlotStats` of every slot name ever configured; consulted only when a
/// table is built, never on the request path.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    by_name: Mutex<Vec<Arc<SlotStats>>>,
}

impl StatsRegistry {
    /// The stats of `name`, created on first use.
    pub fn get(&self, name: &str) -> Arc<SlotStats> {
        let mut all = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.iter().find(|s| s.name() == name) {
            return Arc::clone(s);
        }
        let s = SlotStats::new(name);
        all.push(Arc::clone(&s));
        s
    }
}

/// A client fault: the `kind` label of `mcpflip_client_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// No complete request head within `header_read_timeout` of accept.
    HeaderTimeout,
    /// A request body paused longer than `client_body_timeout` (answered 408).
    BodyTimeout,
    /// A request body that broke: a bad chunk, cut short, reset (answered 400).
    BodyInvalid,
    /// A malformed or duplicate `Host` / `Origin`, or no `Host` (answered 400).
    BadHost,
    /// Plain HTTP sent to the TLS listener (answered 400).
    NotTls,
    /// No valid PROXY protocol header where the listener requires one
    /// (closed without an answer).
    ProxyProtocol,
    /// A TLS handshake that failed (no shared version or cipher, a client
    /// that gave up or refused the certificate, garbage).
    TlsHandshake,
    /// A TLS client with no certificate, or one `tls.client_ca` does not
    /// vouch for (mutual TLS).
    ClientCertificate,
    /// A request body larger than `max_request_body` (answered 413).
    BodyTooLarge,
    /// A client that took nothing of what it was sent for `send_timeout`
    /// (its connection dropped).
    SendTimeout,
}

impl ClientFault {
    pub const ALL: [ClientFault; 10] = [
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::BodyInvalid,
        Self::BadHost,
        Self::NotTls,
        Self::ProxyProtocol,
        Self::TlsHandshake,
        Self::ClientCertificate,
        Self::BodyTooLarge,
        Self::SendTimeout,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::BodyInvalid => "body_invalid",
            Self::BadHost => "bad_host",
            Self::NotTls => "not_tls",
            Self::ProxyProtocol => "proxy_protocol",
            Self::TlsHandshake => "tls_handshake",
            Self::ClientCertificate => "client_certificate",
            Self::BodyTooLarge => "body_too_large",
            Self::SendTimeout => "send_timeout",
        }
    }
}

/// An answer the proxy makes itself before a slot is chosen: the `code` and
/// `reason` labels of `mcpflip_local_responses_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalResponse {
    /// 400: `Host` or `Origin` is not a valid authority, or is repeated.
    BadHost,
    /// 403: the Host guard refused the name (DNS-rebinding guard).
    HostNotAllowed,
    /// 404: the session's slot is gone or not serving.
    SessionGone,
    /// 503: no slot is serving.
    NoSlot,
    /// 400: a request the proxy cannot forward (`CONNECT`, a session or a
    /// `Last-Event-ID` named twice).
    BadRequest,
    /// 400: plain HTTP on the TLS listener.
    NotTls,
    /// 429: the client's address is over `[proxy] rate_limit`.
    RateLimited,
    /// 403: the client's address is not in `[proxy] allowed_clients`.
    ClientNotAllowed,
    /// 413: a declared `Content-Length` over `[proxy] max_request_body`.
    BodyTooLarge,
    /// 405: `TRACE`, which would echo the request's credentials (nginx
    /// answers it 405 too).
    MethodNotAllowed,
    /// 501: a request body in a transfer coding other than `chunked`.
    NotImplemented,
    /// 503: the session's slot is gone and its record in the fleet's etcd
    /// could not be read (it may exist: the client is told to come again).
    ClusterUnavailable,
    /// 502: the session's slot is gone and the serving slot failed (did not
    /// connect, reset, timed out, answered 5xx) while it was replayed there;
    /// its next request tries again.
    SessionNotMoved,
}

impl LocalResponse {
    pub const ALL: [LocalResponse; 13] = [
        Self::BadHost,
        Self::HostNotAllowed,
        Self::SessionGone,
        Self::NoSlot,
        Self::BadRequest,
        Self::NotTls,
        Self::RateLimited,
        Self::ClientNotAllowed,
        Self::BodyTooLarge,
        Self::MethodNotAllowed,
        Self::NotImplemented,
        Self::ClusterUnavailable,
        Self::SessionNotMoved,
    ];
    pub fn code(self) -> u16 {
        match self {
            Self::BadHost | Self::BadRequest | Self::NotTls => 400,
            Self::HostNotAllowed | Self::ClientNotAllowed => 403,
            Self::SessionGone => 404,
            Self::MethodNotAllowed => 405,
            Self::RateLimited => 429,
            Self::BodyTooLarge => 413,
            Self::NoSlot | Self::ClusterUnavailable => 503,
            Self::NotImplemented => 501,
            Self::SessionNotMoved => 502,
        }
    }
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadHost => "bad_host",
            Self::HostNotAllowed => "host_not_allowed",
            Self::SessionGone => "session_gone",
            Self::NoSlot => "no_slot",
            Self::BadRequest => "bad_request",
            Self::NotTls => "not_tls",
            Self::RateLimited => "rate_limited",
            Self::ClientNotAllowed => "client_not_allowed",
            Self::BodyTooLarge => "body_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotImplemented => "not_implemented",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::SessionNotMoved => "session_not_moved",
        }
    }
}

/// Why a connection was refused: the `reason` label of
/// `mcpflip_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The public listener holds `max_connections` open connections.
    MaxConnections,
    /// The client's address holds `max_connections_per_ip`.
    MaxConnectionsPerIp,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Self::MaxConnections, Self::MaxConnectionsPerIp];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// Why a session could not be migrated: the `cause` label of
/// `mcpflip_migrations_failed_total`. Its request is then answered 404, as
/// without migration, where the session cannot move (`NotCaptured`,
/// `Refused`); where it may move later it is told so: 502 (`Upstream`) or
/// 503 (`NoSlot`, `ClusterUnavailable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrateFailure {
    /// The session's `initialize` was not captured (created before the proxy
    /// started, with migration off, a chunked or oversized body, the store full,
    /// or forgotten after `migrate_idle`).
    #[error("the session's initialize was not captured")]
    NotCaptured,
    /// No slot serves.
    #[error("no slot is serving")]
    NoSlot,
    /// The serving slot failed (connect, reset, timeout, a 5xx) during the
    /// replay.
    #[error("the serving slot failed during the replay")]
    Upstream,
    /// The serving slot answered the replayed `initialize` without a session
    /// (a 4xx, a JSON-RPC error, no session id).
    #[error("the serving slot refused the replayed initialize")]
    Refused,
    /// The session's record in the fleet's etcd could not be read (etcd
    /// did not answer within `request_timeout`, or as many reads waited
    /// that long for their turn).
    #[error("the fleet's record of the session could not be read")]
    ClusterUnavailable,
}

impl MigrateFailure {
    pub const ALL: [MigrateFailure; 5] = [
        Self::NotCaptured,
        Self::NoSlot,
        Self::Upstream,
        Self::Refused,
        Self::ClusterUnavailable,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotCaptured => "not_captured",
            Self::NoSlot => "no_slot",
            Self::Upstream => "upstream",
            Self::Refused => "refused",
            Self::ClusterUnavailable => "cluster_unavailable",
        }
    }
}

/// The public listener's counters that belong to no slot. Atomics only.
#[derive(Debug, Default)]
pub struct ProxyStats {
    open_connections: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    client_faults: [AtomicU64; ClientFault::ALL.len()],
    local: [AtomicU64; LocalResponse::ALL.len()],
    /// Sessions moved to another slot (`proxy::migrate`).
    migrated: AtomicU64,
    migrate_failures: [AtomicU64; MigrateFailure::ALL.len()],
    /// Captured sessions held now, and their bodies' bytes (gauges the store keeps).
    captured: AtomicU64,
    captured_bytes: AtomicU64,
    /// Sessions not captured because the store was full.
    capture_refused: AtomicU64,
    /// The sessions file (`control::sessions_file`): when it was last
    /// written whole (seconds since the Unix epoch; 0: not yet), and the
    /// saves that failed.
    sessions_saved_at: AtomicU64,
    sessions_save_failures: AtomicU64,
    /// Calls cut in flight and answered with a JSON-RPC error.
    interrupted: AtomicU64,
    /// Client addresses the per-address limits keep state for.
    addresses: [AtomicU64; AddressMap::ALL.len()],
    /// Captured sessions' records written to the fleet's etcd, by result.
    fleet_writes: [AtomicU64; FleetWrite::ALL.len()],
    /// Sessions taken from the fleet's etcd, by what was taken.
    fleet_taken: [AtomicU64; FleetTaken::ALL.len()],
}

/// How a write of a captured session's record to the fleet went: the
/// `result` label of `mcpflip_cluster_session_writes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetWrite {
    Ok,
    /// etcd refused it or could not be reached (retried while the session lives).
    Failed,
    /// Not queued: the queue held a change for `migrate_max_sessions` sessions already.
    Dropped,
}

impl FleetWrite {
    pub const ALL: [FleetWrite; 3] = [Self::Ok, Self::Failed, Self::Dropped];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }
}

/// What this instance took from the fleet's record of a session: the
/// `what` label of `mcpflip_cluster_sessions_taken_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetTaken {
    /// A session begun through another instance (its `initialize` and shaping).
    Record,
    /// A move another instance made (nothing replayed here).
    Move,
    /// A move another instance recorded while this one replayed the session
    /// too: theirs is taken, this replay's upstream session is closed (DELETE).
    Raced,
}

impl FleetTaken {
    pub const ALL: [FleetTaken; 3] = [Self::Record, Self::Move, Self::Raced];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Move => "move",
            Self::Raced => "raced",
        }
    }
}

/// A per-address limit's map: the `limit` label of `mcpflip_client_addresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressMap {
    /// `[proxy] max_connections_per_ip`: addresses with an open connection.
    ConnectionsPerIp,
    /// `[proxy] rate_limit`: addresses whose budget is not whole yet (and
    /// stale ones not swept yet, at most `max_clients`).
    RateLimit,
}

impl AddressMap {
    pub const ALL: [AddressMap; 2] = [Self::ConnectionsPerIp, Self::RateLimit];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionsPerIp => "max_connections_per_ip",
            Self::RateLimit => "rate_limit",
        }
    }
}

impl ProxyStats {
    /// Counts an accepted connection until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(Arc::clone(self))
    }

    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub fn count_refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    pub fn count_client_fault(&self, kind: ClientFault) {
        self.client_faults[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_faults(&self, kind: ClientFault) -> u64 {
        self.client_faults[kind as usize].load(Ordering::Relaxed)
    }

    pub fn count_local(&self, answer: LocalResponse) {
        self.local[answer as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn local_responses(&self, answer: LocalResponse) -> u64 {
        self.local[answer as usize].load(Ordering::Relaxed)
    }

    pub fn count_fleet_write(&self, result: FleetWrite, n: u64) {
        self.fleet_writes[result as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn fleet_writes(&self, result: FleetWrite) -> u64 {
        self.fleet_writes[result as usize].load(Ordering::Relaxed)
    }

    pub fn count_fleet_taken(&self, what: FleetTaken) {
        self.fleet_taken[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fleet_taken(&self, what: FleetTaken) -> u64 {
        self.fleet_taken[what as usize].load(Ordering::Relaxed)
    }

    pub fn count_migrated(&self) {
        self.migrated.fetch_add(1, Ordering::Relaxed);
    }

    pub fn migrated(&self) -> u64 {
        self.migrated.load(Ordering::Relaxed)
    }

    pub fn count_migrate_failure(&self, cause: MigrateFailure) {
        self.migrate_failures[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn migrate_failures(&self, cause: MigrateFailure) -> u64 {
        self.migrate_failures[cause as usize].load(Ordering::Relaxed)
    }

    /// `map` holds `delta` more (or fewer) addresses.
    pub fn add_addresses(&self, map: AddressMap, delta: i64) {
        let a = &self.addresses[map as usize];
        if delta >= 0 {
            a.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            a.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    pub fn addresses(&self, map: AddressMap) -> u64 {
        self.addresses[map as usize].load(Ordering::Relaxed)
    }

    pub fn set_captured(&self, n: usize, bytes: usize) {
        self.captured.store(n as u64, Ordering::Relaxed);
        self.captured_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    pub fn captured_bytes(&self) -> u64 {
        self.captured_bytes.load(Ordering::Relaxed)
    }

    pub fn captured_sessions(&self) -> u64 {
        self.captured.load(Ordering::Relaxed)
    }

    /// A save of the sessions file: its time when it succeeded, else none.
    pub fn note_sessions_saved(&self, at: Option<u64>) {
        match at {
            Some(t) => self.sessions_saved_at.store(t, Ordering::Relaxed),
            None => {
                self.sessions_save_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn sessions_saved_at(&self) -> u64 {
        self.sessions_saved_at.load(Ordering::Relaxed)
    }

    pub fn sessions_save_failures(&self) -> u64 {
        self.sessions_save_failures.load(Ordering::Relaxed)
    }

    pub fn count_capture_refused(&self) {
        self.capture_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn capture_refused(&self) -> u64 {
        self.capture_refused.load(Ordering::Relaxed)
    }

    pub fn count_interrupted(&self) {
        self.interrupted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn interrupted(&self) -> u64 {
        self.interrupted.load(Ordering::Relaxed)
    }
}

/// One open client connection of the public listener (the gauge).
#[derive(Debug)]
pub struct ConnectionGuard(Arc<ProxyStats>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn guards_count_and_wake_at_zero() {
        let s = SlotStats::new("blue");
        let a = s.stream_guard();
        let b = s.inflight_guard();
        assert_eq!((s.live_streams(), s.inflight()), (1, 1));
        let waiter = {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.wait_idle().await })
        };
        tokio::task::yield_now().await;
        drop(a);
        assert!(!waiter.is_finished());
        drop(b);
        waiter.await.expect("waiter finished");
        assert!(s.is_idle());
    }

    #[test]
    fn histogram_is_cumulative_once_and_ends_in_inf_equal_to_count() {
        let h = AtomicHistogram::new(&STREAM_BUCKETS);
        // The two streams (0.3 s and 2 s), and one beyond every bound.
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(2));
        h.observe(Duration::from_secs(10_000));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets.len(), STREAM_BUCKETS.len() + 1);
        assert_eq!(s.buckets[0], (0.1, 0));
        assert_eq!(s.buckets[1], (0.5, 1));
        assert_eq!(s.buckets[2], (1.0, 1));
        assert_eq!(s.buckets[3], (5.0, 2));
        assert_eq!(s.buckets[11], (3600.0, 2));
        assert_eq!(s.buckets[12], (f64::INFINITY, 3));
        assert!(s.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!((s.sum - 10_002.3).abs() < 1e-6, "{}", s.sum);
    }

    #[test]
    fn workers_write_shards_that_readers_add_up() {
        // Each worker thread writes its own shard (crate::shard); the
        // histogram, the response and era counts and the last pinned request
        // read across all of them, as the metrics scrape and a drain do.
        let h = Arc::new(AtomicHistogram::new(&REQUEST_BUCKETS));
        let s = SlotStats::new("blue");
        assert_eq!(s.since_last_pinned(), None);
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let (h, s) = (h.clone(), s.clone());
                std::thread::spawn(move || {
                    crate::shard::set_index(i);
                    for _ in 0..=i {
                        h.observe(Duration::from_millis(2));
                        s.count_response(200);
                        s.count_era(Era::Session);
                    }
                    h.observe(Duration::from_secs(100));
                    s.count_response(503);
                    s.touch_pinned();
                })
            })
            .collect();
        for t in threads {
            t.join().expect("joins");
        }
        let snap = h.snapshot();
        assert_eq!(snap.count, 6 + 3);
        assert_eq!(h.count(), 9);
        let at = |bound: f64| {
            snap.buckets
                .iter()
                .find(|b| b.0 == bound)
                .expect("a bound")
                .1
        };
        assert_eq!(at(0.001), 0);
        assert_eq!(at(0.0025), 6);
        assert_eq!(snap.buckets.last(), Some(&(f64::INFINITY, 9)));
        assert!(
            (snap.sum - (6.0 * 0.002 + 300.0)).abs() < 1e-6,
            "{}",
            snap.sum
        );
        assert_eq!(s.responses(2), 6);
        assert_eq!(s.responses(5), 3);
        assert_eq!(s.era_requests(Era::Session), 6);
        assert_eq!(s.era_requests(Era::LegacySse), 0);
        assert!(s.since_last_pinned().is_some());
    }

    #[test]
    fn probes_and_drains_count_by_outcome() {
        let s = SlotStats::new("green");
        s.record_probe(
            true,
            [
                ("initialize", Duration::from_millis(3)),
                ("bogus", Duration::ZERO),
            ]
            .into_iter(),
        );
        s.record_probe(false, std::iter::empty());
        assert_eq!((s.probes(true), s.probes(false)), (1, 1));
        let init = PROBE_STEPS.iter().position(|n| *n == "initialize");
        assert_eq!(
            init.and_then(|i| s.probe_step(i)).map(|h| h.count()),
            Some(1)
        );
        s.record_drain(Duration::from_secs(1), 0);
        s.record_drain(Duration::from_secs(300), 4);
        assert_eq!(
            (s.drains(false), s.drains(true), s.forced_streams()),
            (1, 1, 4)
        );
        assert_eq!(s.drain_duration.count(), 2);
    }
}
