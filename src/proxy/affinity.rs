//! Session affinity without a shared store: the routing decision for one
//! request, from the session tag it carries (codec in [`crate::mcp::tag`]).

use std::sync::Arc;

use http::{HeaderValue, Request};

use crate::mcp::tag::{SessionTag, TagSite};
use crate::proxy::sse::find_in_query;
use crate::table::{Slot, Table};

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

/// Decides where `req` goes on the snapshot `table`; `session` is its first
/// `Mcp-Session-Id` (found by `proxy::scan`).
pub fn route<B>(table: &Table, req: &Request<B>, session: Option<&HeaderValue>) -> Route {
    if let Some(value) = session {
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
