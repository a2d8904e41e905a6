//! What the soak's clients read off the wire besides HTTP framing: SSE events
//! split out of body chunks, and mcpflip's session tag (`mf1.<slot>.<gen>.`,
//! the slot and generation a session is pinned to) in an `Mcp-Session-Id` or
//! in the legacy endpoint URL. A leaf: the model's `Slot` only.

use crate::model::Slot;

/// The slot and generation a session tag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub slot: Slot,
    pub generation: u32,
}

/// Decodes the tag at the start of `id` (an `Mcp-Session-Id`, or the value of
/// the legacy URL's session parameter).
pub fn tag(id: &str) -> Option<Tag> {
    let mut parts = id.strip_prefix("mf1.")?.splitn(3, '.');
    let slot = Slot::parse(parts.next()?.as_bytes())?;
    let generation = parts.next()?;
    if generation.is_empty() || !generation.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The upstream's own id follows; an empty one is not a session.
    parts.next().filter(|inner| !inner.is_empty())?;
    Some(Tag {
        slot,
        generation: generation.parse().ok()?,
    })
}

/// The tag in a legacy endpoint URL: its `sessionId` (TypeScript servers and
/// `mcpflip upstream`) or `session_id` (Python servers) parameter.
pub fn endpoint_tag(url: &str) -> Option<Tag> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "sessionId" || *k == "session_id")
        .and_then(|(_, v)| tag(v))
}

/// One SSE event: its `event:` name (empty for the default `message`),
/// `id:` and `data:` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub id: String,
    pub data: String,
}

/// Splits a stream's body chunks into events.
#[derive(Debug, Default)]
pub struct Events {
    pending: Vec<u8>,
}

impl Events {
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete event, if one has arrived. Comments (`: keepalive`)
    /// and blank keep-alive blocks are skipped.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let (end, sep) = find_boundary(&self.pending)?;
            let block: Vec<u8> = self.pending.drain(..end + sep).take(end).collect();
            let text = String::from_utf8_lossy(&block);
            let mut ev = Event::default();
            let mut any = false;
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => ev.name = value.to_owned(),
                    "id" => ev.id = value.to_owned(),
                    "data" => {
                        if any {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(value);
                        any = true;
                    }
                    _ => {}
                }
            }
            if any || !ev.name.is_empty() {
                return Some(ev);
            }
        }
    }
}

/// The end of the first event block in `b` and the length of its separator
/// (`\n\n` or `\r\n\r\n`).
fn find_boundary(b: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(b, b"\n\n").map(|i| (i, 2));
    let crlf = memchr::memmem::find(b, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 <= c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_slot_and_generation() {
        assert_eq!(
            tag("mf1.green.12.abc.def"),
            Some(Tag {
                slot: Slot::Green,
                generation: 12
            })
        );
        assert_eq!(tag("mf1.blue.x.abc"), None);
        assert_eq!(tag("mf1.blue.3."), None);
        assert_eq!(tag("mf1.red.3.abc"), None);
        assert_eq!(tag("abc"), None);
    }

    #[test]
    fn endpoint_urls_carry_the_tag_in_either_parameter() {
        let t = Some(Tag {
            slot: Slot::Blue,
            generation: 2,
        });
        assert_eq!(endpoint_tag("/messages?sessionId=mf1.blue.2.0a1b"), t);
        assert_eq!(
            endpoint_tag("http://127.0.0.1:9/messages/?x=1&session_id=mf1.blue.2.0a1b"),
            t
        );
        assert_eq!(endpoint_tag("/messages?sessionId=0a1b"), None);
        assert_eq!(endpoint_tag("/messages"), None);
    }

    #[test]
    fn events_are_the_same_however_the_bytes_are_chunked() {
        let text = b"event: endpoint\ndata: /messages?sessionId=a\n\n: keepalive\n\nid: 7\r\nevent: tick\r\ndata: {\"n\":7}\r\n\r\ndata: a\ndata: b\n\n";
        let want = vec![
            Event {
                name: "endpoint".into(),
                id: String::new(),
                data: "/messages?sessionId=a".into(),
            },
            Event {
                name: "tick".into(),
                id: "7".into(),
                data: "{\"n\":7}".into(),
            },
            Event {
                name: String::new(),
                id: String::new(),
                data: "a\nb".into(),
            },
        ];
        for size in [1, 2, 3, 7, text.len()] {
            let mut ev = Events::default();
            let mut got = Vec::new();
            for chunk in text.chunks(size) {
                ev.push(chunk);
                while let Some(e) = ev.next_event() {
                    got.push(e);
                }
            }
            assert_eq!(got, want, "chunks of {size}");
        }
    }
}
