//! `GET /events`: the control plane as a server-sent event stream, for the
//! status page's `EventSource` and for `curl -N`. It opens with a `retry:`
//! hint, the full `status` and the `recent` events; then it sends every hub
//! event as it comes (`event: NAME`, the event's JSON with `at`), a fresh
//! `status` after events that change state (one after a burst), a `status`
//! once a second while it differs from the last one sent (the counts, the
//! drain and watch clocks), and a keep-alive comment after 15 s of quiet.
//!
//! Bounded: the body is made only as fast as the connection takes it, so
//! nothing queues per client but the hub's own buffer. A client that reads
//! too slowly falls behind that buffer; it is then told `lagged` (how many
//! events it missed) and resynchronised with a full `status` and `recent`.
//! The number of feeds open at once is capped ([`Feeds`]). The feed ends when
//! the proxy shuts down (or the hub closes).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::Value;
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};

use crate::admin::recent::{lagged, stamped};
use crate::control::protocol::Event;

/// How often the feed looks at the status for changed counts.
pub const REFRESH: Duration = Duration::from_secs(1);
/// A comment after this long without anything sent (proxies and browsers
/// close connections that look dead).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What `EventSource` waits before it reconnects (a restarting proxy).
const RETRY_MS: u64 = 3000;
/// Feeds open at once; one more is answered 503.
pub const MAX_FEEDS: usize = 64;

/// What a feed reads besides the hub.
pub trait Source: Send + Sync + 'static {
    /// The full status, as `/status` has it (without `ok`).
    fn status(&self) -> Value;
    /// The recent events, oldest first.
    fn recent(&self) -> Vec<Value>;
}

/// The open feeds, counted against [`MAX_FEEDS`].
#[derive(Debug, Default)]
pub struct Feeds {
    open: Arc<AtomicUsize>,
}

/// One open feed's place; given back when its body is dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Feeds {
    /// A place for one more feed, or `None` at [`MAX_FEEDS`].
    pub fn try_open(&self) -> Option<Permit> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_FEEDS).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(Arc::clone(&self.open)))
    }

    /// Feeds open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One client's feed: what it has sent, and what it waits on.
pub struct Feed {
    source: Arc<dyn Source>,
    rx: broadcast::Receiver<Event>,
    stop: CancellationToken,
    refresh: Interval,
    /// The last status sent (a refresh sends only a changed one).
    last_status: Value,
    /// An event that changes state went out since the last status.
    dirty: bool,
    opened: bool,
    last_sent: Instant,
    keep_alive: Duration,
    _permit: Option<Permit>,
}

fn every(period: Duration) -> Interval {
    let mut i = tokio::time::interval_at(Instant::now() + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

/// One SSE event (`data` is one line: serde_json escapes newlines).
fn frame(out: &mut String, name: &str, data: &Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

impl Feed {
    /// A feed of `rx` (subscribed before the first status is read, so that
    /// nothing falls between the two) until `stop`.
    pub fn new(
        source: Arc<dyn Source>,
        rx: broadcast::Receiver<Event>,
        stop: CancellationToken,
        permit: Option<Permit>,
    ) -> Feed {
        Feed {
            source,
            rx,
            stop,
            refresh: every(REFRESH),
            last_status: Value::Null,
            dirty: false,
            opened: false,
            last_sent: Instant::now(),
            keep_alive: KEEP_ALIVE,
            _permit: permit,
        }
    }

    /// Other clocks than [`REFRESH`] and [`KEEP_ALIVE`] (tests).
    #[cfg(test)]
    fn with_clocks(mut self, refresh: Duration, keep_alive: Duration) -> Feed {
        self.refresh = every(refresh);
        self.keep_alive = keep_alive;
        self
    }

    fn status(&mut self, out: &mut String) {
        let status = self.source.status();
        frame(out, "status", &status);
        self.last_status = status;
        self.dirty = false;
    }

    /// `status` and `recent`: everything a page needs to draw itself.
    fn resync(&mut self, out: &mut String) {
        self.status(out);
        frame(out, "recent", &Value::Array(self.source.recent()));
    }

    fn event(&mut self, e: &Event, out: &mut String) {
        frame(out, e.name(), &stamped(e));
        // Progress carries its own counts; every other event may change the status.
        if !matches!(e, Event::Progress(_)) {
            self.dirty = true;
        }
    }

    /// The next chunk of the stream; `None` ends it.
    pub async fn next(&mut self) -> Option<Bytes> {
        let chunk = self.make().await?;
        self.last_sent = Instant::now();
        Some(Bytes::from(chunk))
    }

    async fn make(&mut self) -> Option<String> {
        let mut out = String::new();
        if !self.opened {
            self.opened = true;
            out.push_str(&format!("retry: {RETRY_MS}\n\n"));
            self.resync(&mut out);
            return Some(out);
        }
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            // Events first, as they come; a burst ends with one status.
            match self.rx.try_recv() {
                Ok(e) => {
                    self.event(&e, &mut out);
                    return Some(out);
                }
                Err(TryRecvError::Lagged(n)) => {
                    frame(&mut out, "lagged", &lagged(n));
                    self.resync(&mut out);
                    return Some(out);
                }
                Err(TryRecvError::Closed) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if self.dirty {
                self.status(&mut out);
                return Some(out);
            }
            let quiet_until = self.last_sent + self.keep_alive;
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                got = self.rx.recv() => match got {
                    Ok(e) => {
                        self.event(&e, &mut out);
                        return Some(out);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        frame(&mut out, "lagged", &lagged(n));
                        self.resync(&mut out);
                        return Some(out);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.refresh.tick() => {
                    let status = self.source.status();
                    if status != self.last_status {
                        frame(&mut out, "status", &status);
                        self.last_status = status;
                        self.dirty = false;
                        return Some(out);
                    }
                }
                _ = tokio::time::sleep_until(quiet_until) => {
                    return Some(": keep-alive\n\n".to_owned());
                }
            }
        }
    }
}

type Step = (Option<Bytes>, Feed);

async fn step(mut feed: Feed) -> Step {
    let chunk = feed.next().await;
    (chunk, feed)
}

/// A [`Feed`] as a response body: each frame is made when hyper asks for it.
pub struct FeedBody {
    next: Option<ReusableBoxFuture<'static, Step>>,
}

impl FeedBody {
    pub fn new(feed: Feed) -> FeedBody {
        FeedBody {
            next: Some(ReusableBoxFuture::new(step(feed))),
        }
    }
}

impl Body for FeedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (chunk, feed) = ready!(next.poll(cx));
        match chunk {
            Some(data) => {
                next.set(step(feed));
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            None => {
                // Ended: the feed (its hub receiver and its permit) goes now.
                self.next = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A status that counts how often it was read, and changes when told to.
    #[derive(Default)]
    struct Fake {
        version: AtomicU64,
        reads: AtomicU64,
    }

    impl Source for Fake {
        fn status(&self) -> Value {
            self.reads.fetch_add(1, Ordering::Relaxed);
            serde_json::json!({"version": self.version.load(Ordering::Relaxed)})
        }
        fn recent(&self) -> Vec<Value> {
            vec![serde_json::json!({"event": "retired", "slot": "old"})]
        }
    }

    /// The SSE event names in a chunk, in order (comments as `:`).
    fn names(chunk: &Bytes) -> Vec<String> {
        std::str::from_utf8(chunk)
            .expect("utf-8")
            .lines()
            .filter_map(|l| {
                l.strip_prefix("event: ")
                    .map(str::to_owned)
                    .or_else(|| l.starts_with(':').then(|| ":".to_owned()))
            })
            .collect()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn feed(capacity: usize) -> (Arc<Fake>, broadcast::Sender<Event>, CancellationToken, Feed) {
        let fake = Arc::new(Fake::default());
        let (tx, rx) = broadcast::channel(capacity);
        let stop = CancellationToken::new();
        let f = Feed::new(Arc::clone(&fake) as Arc<dyn Source>, rx, stop.clone(), None)
            .with_clocks(Duration::from_millis(20), Duration::from_millis(200));
        (fake, tx, stop, f)
    }

    #[test]
    fn opens_with_status_and_recent_then_sends_events_and_one_status_after_a_burst() {
        rt().block_on(async {
            let (_fake, tx, _stop, mut f) = feed(16);
            let first = f.next().await.expect("opening");
            let text = std::str::from_utf8(&first).expect("utf-8");
            assert!(text.starts_with("retry: 3000\n\n"), "{text}");
            assert_eq!(names(&first), ["status", "recent"]);
            assert!(
                text.contains(r#"data: [{"event":"retired","slot":"old"}]"#),
                "{text}"
            );
            tx.send(Event::Retired { slot: "a".into() }).expect("send");
            tx.send(Event::Retired { slot: "b".into() }).expect("send");
            let a = f.next().await.expect("a");
            assert_eq!(names(&a), ["retired"]);
            let a = std::str::from_utf8(&a).expect("utf-8");
            assert!(a.contains(r#""slot":"a""#) && a.contains(r#""at":"#), "{a}");
            assert_eq!(names(&f.next().await.expect("b")), ["retired"]);
            assert_eq!(names(&f.next().await.expect("status")), ["status"]);
        });
    }

    #[test]
    fn a_reader_that_falls_behind_is_told_and_resynchronised() {
        rt().block_on(async {
            let (fake, tx, _stop, mut f) = feed(4);
            f.next().await.expect("opening");
            let reads = fake.reads.load(Ordering::Relaxed);
            for i in 0..10 {
                tx.send(Event::StateSaved { revision: i }).expect("send");
            }
            let chunk = f.next().await.expect("lagged");
            assert_eq!(names(&chunk), ["lagged", "status", "recent"]);
            let text = std::str::from_utf8(&chunk).expect("utf-8");
            assert!(text.contains(r#""missed":6"#), "{text}");
            assert_eq!(fake.reads.load(Ordering::Relaxed), reads + 1);
            // Then the four the hub still holds, in order.
            for rev in 6..10 {
                let c = f.next().await.expect("event");
                let t = std::str::from_utf8(&c).expect("utf-8");
                assert!(t.contains(&format!(r#""revision":{rev}"#)), "{t}");
            }
        });
    }

    #[test]
    fn refreshes_only_a_changed_status_and_keeps_quiet_connections_alive() {
        rt().block_on(async {
            let (fake, _tx, _stop, mut f) = feed(4);
            f.next().await.expect("opening");
            fake.version.store(1, Ordering::Relaxed);
            assert_eq!(names(&f.next().await.expect("refresh")), ["status"]);
            // Unchanged, it is not sent again: what goes out next is the
            // keep-alive, once the feed was quiet long enough.
            assert_eq!(names(&f.next().await.expect("keep-alive")), [":"]);
            fake.version.store(2, Ordering::Relaxed);
            assert_eq!(names(&f.next().await.expect("refresh")), ["status"]);
        });
    }

    #[test]
    fn ends_on_stop_and_when_the_hub_closes() {
        rt().block_on(async {
            let (_fake, _tx, stop, mut f) = feed(4);
            f.next().await.expect("opening");
            stop.cancel();
            assert!(f.next().await.is_none());
            let (_fake, tx, _stop, mut f) = feed(4);
            f.next().await.expect("opening");
            drop(tx);
            assert!(f.next().await.is_none());
        });
    }

    #[test]
    fn feeds_are_capped_and_a_dropped_one_gives_its_place_back() {
        let feeds = Feeds::default();
        let held: Vec<Permit> = (0..MAX_FEEDS)
            .map(|_| feeds.try_open().expect("a place"))
            .collect();
        assert!(feeds.try_open().is_none());
        drop(held);
        assert_eq!(feeds.open(), 0);
        assert!(feeds.try_open().is_some());
    }
}
