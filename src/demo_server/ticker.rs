//! `GET /ticker?interval_ms=M&count=N&pad=P&phase_ms=F`: a timer-driven SSE
//! stream for tests and benchmarks. Each event carries its generation time
//! (`ts_us`, Unix microseconds) so a client can measure relay latency, and is
//! emitted as its own body frame. No task or channel per stream: the body
//! polls its own interval.
//!
//! Without `phase_ms` the first event comes one interval after the request.
//! With it, every event comes when the Unix time in milliseconds, modulo the
//! interval, is `F`: streams given the same phases tick on the same schedule
//! whenever they were opened (the benchmark spreads N streams evenly over the
//! interval, so that every proxy relays the same events at the same times).

use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::wire::{itoa_u64, query_pairs, Stop};

/// Default `interval_ms`.
pub(crate) const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Largest accepted `pad` (bytes of 'x' per event).
pub(crate) const MAX_PAD: usize = 1 << 20;

/// Parsed `/ticker` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TickerParams {
    pub interval_ms: u64,
    /// 0 = forever.
    pub count: u64,
    pub pad: usize,
    /// The events' place in the wall clock's interval, ms (`< interval_ms`).
    pub phase_ms: Option<u64>,
}

impl TickerParams {
    /// Parses the query string; unknown keys are ignored, malformed values
    /// are an error message.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut p = TickerParams {
            interval_ms: DEFAULT_INTERVAL_MS,
            count: 0,
            pad: 0,
            phase_ms: None,
        };
        for (k, v) in query_pairs(query) {
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| format!("{k} must be a non-negative integer"))
            };
            match k {
                "interval_ms" => p.interval_ms = num()?.max(1),
                "count" => p.count = num()?,
                "pad" => {
                    let n = num()?;
                    if n > MAX_PAD as u64 {
                        return Err(format!("pad must be at most {MAX_PAD}"));
                    }
                    p.pad = n as usize;
                }
                "phase_ms" => p.phase_ms = Some(num()?),
                _ => {}
            }
        }
        if p.phase_ms.is_some_and(|f| f >= p.interval_ms) {
            return Err("phase_ms must be less than interval_ms".to_owned());
        }
        Ok(p)
    }
}

/// The stream state, polled by [`super::body::Body`].
pub(crate) struct Ticker {
    interval: Interval,
    next: u64,
    count: u64,
    pad: usize,
    stop: Stop,
}

impl Ticker {
    /// The first event is emitted one interval after the request, or with
    /// `phase_ms` at the phase's next time.
    pub(crate) fn new(p: TickerParams, stop: CancellationToken) -> Self {
        let period = Duration::from_millis(p.interval_ms);
        let interval = match p.phase_ms {
            None => {
                let mut i = tokio::time::interval_at(Instant::now() + period, period);
                i.set_missed_tick_behavior(MissedTickBehavior::Delay);
                i
            }
            Some(phase) => {
                let first = Duration::from_micros(until_phase(now_us(), p.interval_ms, phase));
                // A late tick does not move the schedule the stream shares.
                let mut i = tokio::time::interval_at(Instant::now() + first, period);
                i.set_missed_tick_behavior(MissedTickBehavior::Skip);
                i
            }
        };
        Self {
            interval,
            next: 1,
            count: p.count,
            pad: p.pad,
            stop: Stop::new(stop),
        }
    }

    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.stop.poll_stopped(cx) || (self.count != 0 && self.next > self.count) {
            return Poll::Ready(None);
        }
        if self.interval.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        let n = self.next;
        self.next += 1;
        Poll::Ready(Some(tick_event(n, now_us(), self.pad)))
    }
}

/// Microseconds from `now_us` (Unix) to the next time, strictly later, at
/// which the Unix time in ms modulo `interval_ms` is `phase_ms`.
fn until_phase(now_us: u64, interval_ms: u64, phase_ms: u64) -> u64 {
    let interval = interval_ms * 1000;
    let into = now_us % interval;
    let phase = phase_ms * 1000;
    if phase > into {
        phase - into
    } else {
        interval - into + phase
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `id: <n>\nevent: tick\ndata: {"n":<n>,"ts_us":<ts>,"pad":"<x * pad>"}\n\n`
pub(crate) fn tick_event(n: u64, ts_us: u64, pad: usize) -> Bytes {
    let mut nb = [0u8; 20];
    let mut tb = [0u8; 20];
    let n = itoa_u64(n, &mut nb);
    let ts = itoa_u64(ts_us, &mut tb);
    let mut out = Vec::with_capacity(2 * n.len() + ts.len() + pad + 64);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(n);
    out.extend_from_slice(b"\nevent: tick\ndata: {\"n\":");
    out.extend_from_slice(n);
    out.extend_from_slice(b",\"ts_us\":");
    out.extend_from_slice(ts);
    out.extend_from_slice(b",\"pad\":\"");
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        assert_eq!(
            TickerParams::parse(None),
            Ok(TickerParams {
                interval_ms: 1000,
                count: 0,
                pad: 0,
                phase_ms: None,
            })
        );
        assert_eq!(
            TickerParams::parse(Some("interval_ms=0&count=3&pad=5&x=y")),
            Ok(TickerParams {
                interval_ms: 1,
                count: 3,
                pad: 5,
                phase_ms: None,
            })
        );
        assert_eq!(
            TickerParams::parse(Some("interval_ms=500&phase_ms=499"))
                .expect("a phase inside the interval")
                .phase_ms,
            Some(499)
        );
        assert!(TickerParams::parse(Some("interval_ms=500&phase_ms=500")).is_err());
        assert!(TickerParams::parse(Some("phase_ms=x")).is_err());
        assert!(TickerParams::parse(Some("count=-1")).is_err());
        assert!(TickerParams::parse(Some("pad=99999999")).is_err());
    }

    #[test]
    fn event_format() {
        assert_eq!(
            &tick_event(3, 1700000000000001, 4)[..],
            b"id: 3\nevent: tick\ndata: {\"n\":3,\"ts_us\":1700000000000001,\"pad\":\"xxxx\"}\n\n"
        );
    }

    #[tokio::test]
    async fn emits_count_events_then_ends() {
        let p = TickerParams {
            interval_ms: 1,
            count: 2,
            pad: 0,
            phase_ms: None,
        };
        let mut t = Ticker::new(p, CancellationToken::new());
        let mut got = Vec::new();
        while let Some(b) = std::future::poll_fn(|cx| t.poll_event(cx)).await {
            got.push(b);
        }
        assert_eq!(got.len(), 2);
        assert!(got[1].starts_with(b"id: 2\n"));
    }

    #[test]
    fn the_phase_is_the_next_time_in_the_wall_clocks_interval() {
        // 12.345 s into the epoch, a 500 ms interval: 345 ms into it.
        let now = 12_345_000;
        assert_eq!(until_phase(now, 500, 400), 55_000);
        // At or past the phase: the next interval's.
        assert_eq!(until_phase(now, 500, 345), 500_000);
        assert_eq!(until_phase(now, 500, 0), 155_000);
        assert_eq!(until_phase(now + 1, 500, 345), 499_999);
    }

    #[tokio::test]
    async fn streams_with_one_phase_tick_together_whenever_they_opened() {
        // A phase half an interval ahead, so that both streams' first events
        // are still to come when the second opens.
        let phase = (now_us() / 1000 + 100) % 200;
        let p = TickerParams {
            interval_ms: 200,
            count: 2,
            pad: 0,
            phase_ms: Some(phase),
        };
        let ts = |b: &Bytes| -> u64 {
            let s = std::str::from_utf8(b).expect("utf-8");
            let at = s.find("\"ts_us\":").expect("ts_us") + 8;
            s[at..]
                .split(',')
                .next()
                .expect("a number")
                .parse()
                .expect("digits")
        };
        let events = |mut t: Ticker| async move {
            let mut got = Vec::new();
            while let Some(b) = std::future::poll_fn(|cx| t.poll_event(cx)).await {
                got.push(ts(&b));
            }
            got
        };
        let first = tokio::spawn(events(Ticker::new(p, CancellationToken::new())));
        // Without the phase, the second's events would come 50 ms after the
        // first's.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = tokio::spawn(events(Ticker::new(p, CancellationToken::new())));
        let (first, second) = (first.await.expect("first"), second.await.expect("second"));
        assert_eq!((first.len(), second.len()), (2, 2));
        for (a, b) in first.iter().zip(&second) {
            for t in [a, b] {
                // On the phase (the timer wheel fires a few ms late; a
                // loaded machine may add some).
                let late = (t / 1000 + 200 - phase) % 200;
                assert!(late < 25, "{late} ms after the phase");
            }
            assert!(a.abs_diff(*b) < 25_000, "{a} {b}");
        }
        assert!(
            (175_000..225_000).contains(&(first[1] - first[0])),
            "{first:?}"
        );
    }

    #[tokio::test]
    async fn stops_on_cancel() {
        let token = CancellationToken::new();
        let mut t = Ticker::new(TickerParams::parse(None).expect("defaults"), token.clone());
        token.cancel();
        assert!(std::future::poll_fn(|cx| t.poll_event(cx)).await.is_none());
    }
}
