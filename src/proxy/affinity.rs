//! Session affinity without a shared store: the session tag codec, and the
//! routing decision for one request.
//!
//! A tag is `mf1.<slot>.<generation>.` put before the upstream's own session id,
//! in the `Mcp-Session-Id` header (Streamable HTTP) or in the `sessionId` /
//! `session_id` query parameter of the legacy SSE POST URL. It is visible ASCII,
//! versioned (`mf1`), and decoded with no lookup, so a restarted proxy or a
//! second instance with the same config routes a session identically.

use std::sync::Arc;

use http::{HeaderValue, Request};

use crate::proxy::sse::find_in_query;
use crate::table::{Slot, Table};

/// The version prefix of every tag this proxy writes.
pub const TAG_VERSION: &str = "mf1.";

/// A decoded tag: which slot and generation, and the upstream's own id.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct SessionTag<'a> {
    pub slot: &'a str,
    pub generation: u32,
    /// The upstream's session id, exactly as it issued it.
    pub inner: &'a str,
}

impl<'a> SessionTag<'a> {
    /// Decodes `mf1.<slot>.<gen>.<inner>`; `None` when it is not one of ours.
    pub fn decode(s: &'a str) -> Option<Self> {
        let rest = s.strip_prefix(TAG_VERSION)?;
        let (slot, rest) = rest.split_once('.')?;
        let (generation, inner) = rest.split_once('.')?;
        if slot.is_empty()
            || generation.is_empty()
            || !generation.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(SessionTag {
            slot,
            generation: generation.parse().ok()?,
            inner,
        })
    }

    /// Length of the tag prefix before `inner`.
    pub fn prefix_len(&self, full: &str) -> usize {
        full.len() - self.inner.len()
    }
}

/// The tag prefix for sessions created on slot `name` at `generation`
/// (`mf1.blue.3.`); slots keep theirs in `Slot::tag_prefix`.
pub fn tag_prefix(name: &str, generation: u32) -> Arc<str> {
    Arc::from(format!("{TAG_VERSION}{name}.{generation}."))
}

/// Tags an upstream session id header value: one allocation, no formatting.
pub fn tag_header(slot: &Slot, inner: &HeaderValue) -> Option<HeaderValue> {
    let inner = inner.as_bytes();
    // MCP session ids are visible ASCII (0x21..=0x7E); anything else is left untagged.
    if !inner.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return None;
    }
    let mut v = Vec::with_capacity(slot.tag_prefix.len() + inner.len());
    v.extend_from_slice(slot.tag_prefix.as_bytes());
    v.extend_from_slice(inner);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
}

/// Where a session tag was found in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagSite {
    /// `Mcp-Session-Id` header, whose tag prefix is this long.
    Header { prefix_len: usize },
    /// Query parameter at this byte offset of the query string, with this prefix length.
    Query { value_at: usize, prefix_len: usize },
}

/// The routing decision for one request.
pub enum Route {
    /// The session's slot (tag still to be stripped at `site`).
    Pinned { slot: Arc<Slot>, site: TagSite },
    /// No session: picked by weight.
    Picked(Arc<Slot>),
    /// A tag that names a retired, stale, unknown or non-serving slot.
    SessionGone,
    /// Nothing serves.
    NoSlot,
}

/// Decides where `req` goes on the snapshot `table`.
pub fn route<B>(table: &Table, req: &Request<B>) -> Route {
    if let Some(value) = req.headers().get(crate::proxy::forward::MCP_SESSION_ID) {
        let text = value.to_str().unwrap_or_default();
        if let Some(tag) = SessionTag::decode(text) {
            let site = TagSite::Header {
                prefix_len: tag.prefix_len(text),
            };
            return pinned(table, &tag, site);
        }
    } else if let Some(query) = req.uri().query() {
        if let Some((at, key_len)) = find_in_query(query) {
            let value_at = at + key_len;
            let value = query[value_at..].split('&').next().unwrap_or("");
            if let Some(tag) = SessionTag::decode(value) {
                let site = TagSite::Query {
                    value_at,
                    prefix_len: tag.prefix_len(value),
                };
                return pinned(table, &tag, site);
            }
        }
    }
    match table.pick() {
        Some(slot) => Route::Picked(Arc::clone(slot)),
        None => Route::NoSlot,
    }
}

fn pinned(table: &Table, tag: &SessionTag<'_>, site: TagSite) -> Route {
    match table.get(tag.slot) {
        Some(slot) if slot.generation == tag.generation && slot.state.accepts_pinned() => {
            Route::Pinned {
                slot: Arc::clone(slot),
                site,
            }
        }
        _ => Route::SessionGone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_round_trip() {
        let t = SessionTag::decode("mf1.blue.3.abc.def").expect("a tag");
        assert_eq!(
            t,
            SessionTag {
                slot: "blue",
                generation: 3,
                inner: "abc.def"
            }
        );
        assert_eq!(t.prefix_len("mf1.blue.3.abc.def"), "mf1.blue.3.".len());
        assert_eq!(SessionTag::decode("abc"), None);
        assert_eq!(SessionTag::decode("mf1.blue.x.abc"), None);
        assert_eq!(SessionTag::decode("mf1.blue.3"), None);
        assert_eq!(SessionTag::decode("mf2.blue.3.abc"), None);
    }
}
