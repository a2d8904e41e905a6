//! An etcd watch as the JSON gateway streams it: one HTTP response whose body
//! is a sequence of JSON messages, one per line (`{"result": {...}}`), read
//! as it arrives. A message is at most [`MAX_MESSAGE`] bytes; a longer one,
//! a message that is not JSON, or the end of the body ends the watch with an
//! error, and the caller watches again from the revision after the last one
//! it saw.

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::wire::{self, EtcdError, WatchMessage};

/// The largest watch message read (a batch of events; etcd's own limit on a
/// value is 1.5 MiB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// One change of a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(wire::Kv),
    Delete { key: Vec<u8>, mod_revision: i64 },
}

/// What one watch message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Changes, in revision order, and the store's revision when they were sent.
    Events {
        revision: i64,
        events: Vec<WatchEvent>,
    },
    /// The revision the watch started from was compacted away: read the keys
    /// again (at least `compact_revision`) and watch from there.
    Compacted { compact_revision: i64 },
    /// etcd ended the watch (an expired token, for one): watch again.
    Canceled { reason: String },
}

/// An open watch.
#[derive(Debug)]
pub struct Watch {
    body: Incoming,
    buf: BytesMut,
}

impl Watch {
    pub(super) fn new(body: Incoming, buf: BytesMut) -> Self {
        Watch { body, buf }
    }

    /// The next message that says something (progress and creation
    /// notices are skipped).
    pub async fn next(&mut self) -> Result<WatchBatch, EtcdError> {
        loop {
            let msg = self.message().await?;
            if let Some(batch) = batch(msg)? {
                return Ok(batch);
            }
        }
    }

    /// The next raw message.
    pub(super) async fn message(&mut self) -> Result<WatchMessage, EtcdError> {
        loop {
            if let Some(end) = memchr::memchr(b'\n', &self.buf) {
                let line = self.buf.split_to(end + 1);
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line).map_err(|e| {
                    EtcdError::Protocol(format!("a watch message that is not etcd's JSON: {e}"))
                });
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(EtcdError::Protocol(format!(
                    "a watch message over {MAX_MESSAGE} bytes"
                )));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(EtcdError::Unavailable {
                        tried: 1,
                        last: format!("the watch stream broke: {e}"),
                    })
                }
                None => {
                    return Err(EtcdError::Unavailable {
                        tried: 1,
                        last: "the watch stream ended".into(),
                    })
                }
            }
        }
    }
}

/// The batch a message carries, `None` for a notice without events.
pub(super) fn batch(msg: WatchMessage) -> Result<Option<WatchBatch>, EtcdError> {
    if let Some(e) = msg.error {
        return Err(EtcdError::Status {
            code: e.code,
            message: e.message,
        });
    }
    let Some(r) = msg.result else {
        return Ok(None);
    };
    if r.compact_revision > 0 {
        return Ok(Some(WatchBatch::Compacted {
            compact_revision: r.compact_revision,
        }));
    }
    if r.canceled {
        return Ok(Some(WatchBatch::Canceled {
            reason: r.cancel_reason,
        }));
    }
    if r.events.is_empty() {
        return Ok(None);
    }
    let events = r
        .events
        .into_iter()
        .map(|e| match e.kind.as_deref() {
            Some("DELETE") => WatchEvent::Delete {
                key: e.kv.key,
                mod_revision: e.kv.mod_revision,
            },
            _ => WatchEvent::Put(e.kv),
        })
        .collect();
    Ok(Some(WatchBatch::Events {
        revision: r.header.revision,
        events,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Option<WatchBatch> {
        batch(serde_json::from_str(line).expect("json")).expect("batch")
    }

    #[test]
    fn messages_become_batches() {
        assert_eq!(
            parse(r#"{"result":{"header":{"revision":"2"},"created":true}}"#),
            None
        );
        assert_eq!(
            parse(
                r#"{"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"L3AvYQ==","create_revision":"3","mod_revision":"3","version":"1","value":"MQ=="}},{"type":"DELETE","kv":{"key":"L3AvYQ==","mod_revision":"4"}}]}}"#
            ),
            Some(WatchBatch::Events {
                revision: 3,
                events: vec![
                    WatchEvent::Put(wire::Kv {
                        key: b"/p/a".to_vec(),
                        value: b"1".to_vec(),
                        create_revision: 3,
                        mod_revision: 3,
                        version: 1,
                        lease: 0
                    }),
                    WatchEvent::Delete {
                        key: b"/p/a".to_vec(),
                        mod_revision: 4
                    }
                ]
            })
        );
        assert_eq!(
            parse(
                r#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"4"}}"#
            ),
            Some(WatchBatch::Compacted {
                compact_revision: 4
            })
        );
        assert!(matches!(
            parse(
                r#"{"result":{"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = Unauthenticated"}}"#
            ),
            Some(WatchBatch::Canceled { .. })
        ));
    }
}
