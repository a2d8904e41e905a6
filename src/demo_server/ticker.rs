//! `GET /ticker?interval_ms=M&count=N&pad=P`: a timer-driven SSE stream for
//! tests and benchmarks. Each event carries its generation time (`ts_us`,
//! Unix microseconds) so a client can measure relay latency, and is
//! emitted as its own body frame. No task or channel per stream: the body
//! polls its own interval.

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
}

impl TickerParams {
    /// Parses the query string; unknown keys are ignored, malformed values
    /// are an error message.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut p = TickerParams {
            interval_ms: DEFAULT_INTERVAL_MS,
            count: 0,
            pad: 0,
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
                _ => {}
            }
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
    /// The first event is emitted one interval after the request.
    pub(crate) fn new(p: TickerParams, stop: CancellationToken) -> Self {
        let period = Duration::from_millis(p.interval_ms);
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                pad: 0
            })
        );
        assert_eq!(
            TickerParams::parse(Some("interval_ms=0&count=3&pad=5&x=y")),
            Ok(TickerParams {
                interval_ms: 1,
                count: 3,
                pad: 5
            })
        );
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
        };
        let mut t = Ticker::new(p, CancellationToken::new());
        let mut got = Vec::new();
        while let Some(b) = std::future::poll_fn(|cx| t.poll_event(cx)).await {
            got.push(b);
        }
        assert_eq!(got.len(), 2);
        assert!(got[1].starts_with(b"id: 2\n"));
    }

    #[tokio::test]
    async fn stops_on_cancel() {
        let token = CancellationToken::new();
        let mut t = Ticker::new(TickerParams::parse(None).expect("defaults"), token.clone());
        token.cancel();
        assert!(std::future::poll_fn(|cx| t.poll_event(cx)).await.is_none());
    }
}
