//! A small SSE event reader over a response body, for the proxy's own MCP
//! clients (the probe, and the demo's simulated clients). Bounded: an event
//! larger than [`MAX_EVENT`] is an error, not something to buffer.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// The largest event (and unread backlog) the reader holds.
pub const MAX_EVENT: usize = 4 << 20;

/// One event: its `event:` name (empty when absent) and its joined `data:` lines.
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Why no event could be read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("SSE event larger than {} MiB", MAX_EVENT >> 20)]
    TooLarge,
    #[error("SSE stream broke: {0}")]
    Broken(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("SSE stream ended")]
    Ended,
}

/// Reads events off a `text/event-stream` body.
/// Generic over the body: the probe reads its pooled client's
/// (`UpstreamBody`), the demo's clients read hyper's own.
pub struct EventReader<B = Incoming> {
    body: B,
    buf: BytesMut,
}

impl<B> EventReader<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(body: B) -> Self {
        EventReader {
            body,
            buf: BytesMut::new(),
        }
    }

    /// The body and what was read of it past the events taken.
    pub fn into_parts(self) -> (B, BytesMut) {
        (self.body, self.buf)
    }

    /// The next complete event (comments and empty events included).
    pub async fn next(&mut self) -> Result<SseEvent, EventError> {
        loop {
            if let Some(ev) = take_event(&mut self.buf) {
                return Ok(ev);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if self.buf.len() + data.len() > MAX_EVENT {
                            return Err(EventError::TooLarge);
                        }
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(EventError::Broken(e.into())),
                None => return Err(EventError::Ended),
            }
        }
    }
}

impl SseEvent {
    /// The event as a stream carries it (its comments and ids are not kept).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.event.len() + self.data.len() + 16);
        if !self.event.is_empty() {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(self.event.as_bytes());
            out.push(b'\n');
        }
        for line in self.data.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out
    }
}

/// Takes one complete event (ended by a blank line) off the front of `buf`.
pub fn take_event(buf: &mut BytesMut) -> Option<SseEvent> {
    let (end, sep) = [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .filter_map(|sep| memchr::memmem::find(buf, sep).map(|at| (at, sep.len())))
        .min()?;
    let block = buf.split_to(end + sep);
    let text = String::from_utf8_lossy(&block[..end]);
    let mut ev = SseEvent::default();
    for line in text.split(['\n', '\r']) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => ev.event = value.to_owned(),
            "data" => {
                if !ev.data.is_empty() {
                    ev.data.push('\n');
                }
                ev.data.push_str(value);
            }
            _ => {}
        }
    }
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_any_line_end() {
        let mut buf = BytesMut::from(
            &b"event: endpoint\r\ndata: /messages?sessionId=1\r\n\r\n: comment\n\ndata: {\"a\":\ndata: 1}\n\nrest"[..],
        );
        let e1 = take_event(&mut buf).expect("first");
        assert_eq!(
            (e1.event.as_str(), e1.data.as_str()),
            ("endpoint", "/messages?sessionId=1")
        );
        assert_eq!(take_event(&mut buf), Some(SseEvent::default()));
        let e3 = take_event(&mut buf).expect("third");
        assert_eq!(e3.data, "{\"a\":\n1}");
        assert_eq!(take_event(&mut buf), None);
        assert_eq!(&buf[..], b"rest");
    }
}
