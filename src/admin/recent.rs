//! The last events of the control plane, kept for the status page: what a page
//! opened now lists under "last events", and what the `/events` feed sends a
//! client when it connects or falls behind. Bounded ([`KEEP`] events). Drain
//! and watch progress (once a second each) and state saves (one per change)
//! are not kept: they would push everything else out; the feed still sends
//! them as they come.
//!
//! One task, [`record`], fills it from the event hub; it never blocks the hub
//! (a broadcast receiver that falls behind only misses events, and says so).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::control::controller::now_ms;
use crate::control::protocol::Event;

/// How many events the page lists.
pub const KEEP: usize = 50;

/// The name of the marker that stands for events a reader missed.
pub const LAGGED: &str = "lagged";

/// Whether the list keeps events named `name`.
pub fn keeps(name: &str) -> bool {
    !matches!(name, "progress" | "state_saved")
}

/// `event` as the page and the feed show it: its JSON with `at`, the time it
/// was seen (milliseconds since the Unix epoch).
pub fn stamped(event: &Event) -> Value {
    let mut v = event.to_value();
    if let Some(o) = v.as_object_mut() {
        o.insert("at".into(), Value::from(now_ms()));
    }
    v
}

/// The marker for `missed` events a reader could not keep up with.
pub fn lagged(missed: u64) -> Value {
    serde_json::json!({"event": LAGGED, "missed": missed, "at": now_ms()})
}

/// The last [`KEEP`] events, oldest first.
#[derive(Debug, Default)]
pub struct Recent {
    events: Mutex<VecDeque<Value>>,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Value>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a stamped event (or a lag marker), dropping the oldest beyond [`KEEP`].
    pub fn push(&self, v: Value) {
        let mut events = self.lock();
        if events.len() == KEEP {
            events.pop_front();
        }
        events.push_back(v);
    }

    /// The events, oldest first.
    pub fn list(&self) -> Vec<Value> {
        self.lock().iter().cloned().collect()
    }
}

/// Fills `recent` from the hub until `stop` is cancelled or the hub closes.
pub async fn record(
    recent: Arc<Recent>,
    mut rx: broadcast::Receiver<Event>,
    stop: CancellationToken,
) {
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => return,
            got = rx.recv() => got,
        };
        match got {
            Ok(e) if keeps(e.name()) => recent.push(stamped(&e)),
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => recent.push(lagged(n)),
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_events_and_leaves_progress_out() {
        let recent = Arc::new(Recent::default());
        let (tx, rx) = broadcast::channel(4 * KEEP);
        let stop = CancellationToken::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let task = tokio::spawn(record(Arc::clone(&recent), rx, stop.clone()));
            for i in 0..(KEEP as u64 + 10) {
                tx.send(Event::StateSaved { revision: i }).expect("send");
                tx.send(Event::Retired {
                    slot: format!("s{i}"),
                })
                .expect("send");
            }
            drop(tx);
            task.await.expect("the recorder ends when the hub closes");
        });
        let list = recent.list();
        assert_eq!(list.len(), KEEP);
        assert!(list
            .iter()
            .all(|v| v["event"] == "retired" && v["at"].is_u64()));
        assert_eq!(list[0]["slot"], "s10", "the oldest kept");
        assert_eq!(list[KEEP - 1]["slot"], format!("s{}", KEEP + 9));
    }

    #[test]
    fn a_recorder_that_falls_behind_says_how_many_it_missed() {
        let recent = Arc::new(Recent::default());
        let (tx, rx) = broadcast::channel(2);
        for _ in 0..5 {
            tx.send(Event::Retired { slot: "x".into() }).expect("send");
        }
        drop(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(record(Arc::clone(&recent), rx, CancellationToken::new()));
        let list = recent.list();
        assert_eq!(list[0]["event"], LAGGED);
        assert_eq!(list[0]["missed"], 3);
        assert_eq!(list.len(), 3);
    }
}
