//! Per-slot live counts: the atomics the request path updates, the guards that
//! update them, and the wake-up a drain waits on when a slot reaches zero.
//!
//! A `SlotStats` belongs to a slot *name* and outlives table swaps, so a flip or a
//! reload never resets a count. Counts change only through guards (increment on
//! creation, decrement in `Drop`), so a client that vanishes, an upstream that
//! dies or a panic can never leak a count. Nothing here takes a lock on the
//! request path: a guard is one or two atomic operations.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::mcp::Era;
use crate::upstream::UpstreamError;
use tokio_util::sync::CancellationToken;

/// Upper bounds (seconds) of the stream-duration histogram buckets.
pub const STREAM_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Upper bounds (seconds) of the drain-duration histogram buckets.
pub const DRAIN_BUCKETS: [f64; 10] = [0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// A fixed-bucket histogram made of atomics, encoded at scrape time.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, cumulative buckets)` as Prometheus wants them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for (b, c) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += c.load(Ordering::Relaxed);
            buckets.push((*b, cumulative));
        }
        let count = self.count.load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, count));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
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
    /// Milliseconds since `epoch` of the last request pinned to this slot.
    last_pinned_ms: AtomicU64,
    /// Largest SSE `retry:` (ms) this slot has sent; a drain waits at least this long.
    max_retry_ms: AtomicU64,
    epoch: Instant,
    requests: [AtomicU64; 5],
    upstream_errors: [AtomicU64; 3],
    /// Requests by protocol era, indexed like `Era::ALL`.
    eras: [AtomicU64; 4],
    pub stream_duration: AtomicHistogram,
    pub drain_duration: AtomicHistogram,
    /// Cancelled when a drain deadline passes: open streams end at their next event boundary.
    force: ArcSwap<CancellationToken>,
}

impl SlotStats {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(name),
            live_streams: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            watchers: AtomicUsize::new(0),
            idle: Notify::new(),
            last_pinned_ms: AtomicU64::new(0),
            max_retry_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            requests: Default::default(),
            upstream_errors: Default::default(),
            eras: Default::default(),
            stream_duration: AtomicHistogram::new(&STREAM_BUCKETS),
            drain_duration: AtomicHistogram::new(&DRAIN_BUCKETS),
            force: ArcSwap::from_pointee(CancellationToken::new()),
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

    /// True when no stream is open and no request is in flight.
    pub fn is_idle(&self) -> bool {
        self.live_streams() == 0 && self.inflight() == 0
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
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_pinned_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last pinned request, or `None` if none ever arrived.
    pub fn since_last_pinned(&self) -> Option<Duration> {
        let ms = self.last_pinned_ms.load(Ordering::Relaxed);
        if ms == 0 {
            return None;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(now.saturating_sub(ms)))
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
        self.requests[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses of status class `class` (1..=5) so far.
    pub fn responses(&self, class: usize) -> u64 {
        self.requests[class.clamp(1, 5) - 1].load(Ordering::Relaxed)
    }

    pub fn count_era(&self, era: Era) {
        self.eras[era as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of protocol era `era` so far.
    pub fn era_requests(&self, era: Era) -> u64 {
        self.eras[era as usize].load(Ordering::Relaxed)
    }

    pub fn count_upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_errors(&self, kind: UpstreamError) -> u64 {
        self.upstream_errors[kind as usize].load(Ordering::Relaxed)
    }

    /// The token a new stream watches for a forced end (one atomic load, no lock).
    pub fn force_token(&self) -> CancellationToken {
        CancellationToken::clone(&self.force.load())
    }

    /// Ends every open stream of this slot at its next event boundary, and arms a
    /// fresh token for streams opened later.
    pub fn force_end_streams(&self) {
        let old = self.force.swap(Arc::new(CancellationToken::new()));
        old.cancel();
    }

    /// Waits until the slot is idle. Event driven: the guard that brings a count
    /// to zero wakes this future; there is no polling.
    pub async fn wait_idle(&self) {
        let _watch = WatchGuard::new(self);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a zero-crossing between the check and
            // the await cannot be missed.
            notified.as_mut().enable();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    fn wake_if_idle(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 && self.is_idle() {
            self.idle.notify_waiters();
        }
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
            self.0.wake_if_idle();
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
            self.stats.wake_if_idle();
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
    fn histogram_is_cumulative() {
        let h = AtomicHistogram::new(&STREAM_BUCKETS);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(2));
        h.observe(Duration::from_secs(10_000));
        let (_, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(buckets[0], (0.1, 1));
        assert_eq!(buckets[3], (5.0, 2));
        assert_eq!(buckets.last().map(|b| b.1), Some(3));
    }
}
