//! Which MCP transport era a request belongs to, read from its headers and URL
//! only: the proxy never parses a body to decide.
//!
//! The answer feeds the access log and `mcpflip_mcp_requests_total{era}`, so an
//! operator sees how much traffic each era still carries while clients move to
//! the stateless 2026-07-28 revision. Routing does not depend on it: a session tag
//! pins, anything else goes by weight.

use http::header::ACCEPT;
use http::{HeaderMap, Method};

use crate::mcp::headers::{MCP_METHOD, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, STATELESS_REVISION};
use crate::mcp::tag::TagSite;

/// The protocol era of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// HTTP+SSE (2024-11-05): the `GET` opening the stream, and POSTs to its endpoint URL.
    LegacySse,
    /// Streamable HTTP with an `Mcp-Session-Id` (2025-03-26 to 2025-11-25).
    Session,
    /// Streamable HTTP without a session and before 2026-07-28: `initialize`
    /// POSTs, and every request to a server run stateless.
    Sessionless,
    /// The stateless 2026-07-28 revision (`MCP-Protocol-Version` ≥ 2026-07-28 or an `Mcp-Method` header).
    Stateless,
    /// A request that names no era: a `GET` with no session, no
    /// `MCP-Protocol-Version` and no `Accept: text/event-stream` (OAuth
    /// discovery, a health check, a browser). The SDKs' legacy SSE clients
    /// ask for the stream (`EventSource` and httpx-sse send that `Accept`),
    /// so counting these apart keeps `legacy_sse` to what is legacy SSE. It
    /// is proxied as a legacy open would be ([`Era::may_open_legacy_stream`]):
    /// an answer that is an event stream gets the legacy handling.
    Other,
}

impl Era {
    pub const ALL: [Era; 5] = [
        Era::LegacySse,
        Era::Session,
        Era::Sessionless,
        Era::Stateless,
        Era::Other,
    ];

    /// The `era` label value.
    pub fn label(self) -> &'static str {
        match self {
            Era::LegacySse => "legacy_sse",
            Era::Session => "session",
            Era::Sessionless => "sessionless",
            Era::Stateless => "stateless",
            Era::Other => "other",
        }
    }

    /// Whether the request may open a legacy SSE stream (a `GET` with no
    /// session and no protocol version, whatever its `Accept`): its answer,
    /// if an event stream, is handled as the legacy transport's.
    pub fn may_open_legacy_stream(self) -> bool {
        matches!(self, Era::LegacySse | Era::Other)
    }

    /// Classifies a request; `site` is where its session tag was found, if any.
    pub fn of(method: &Method, headers: &HeaderMap, site: Option<TagSite>) -> Era {
        Era::of_headers(
            method,
            headers.contains_key(MCP_SESSION_ID),
            headers.contains_key(MCP_METHOD),
            headers.get(MCP_PROTOCOL_VERSION).map(|v| v.as_bytes()),
            site,
            || {
                headers
                    .get_all(ACCEPT)
                    .iter()
                    .any(|v| accepts_event_stream(v.as_bytes()))
            },
        )
    }

    /// [`Era::of`] from what a request's headers say: whether it carries
    /// `Mcp-Session-Id` and `Mcp-Method`, and its first
    /// `MCP-Protocol-Version`; `accepts_sse` (asked only of a `GET` that
    /// says none of these) whether an `Accept` asks for `text/event-stream`.
    pub fn of_headers(
        method: &Method,
        session: bool,
        mcp_method: bool,
        protocol_version: Option<&[u8]>,
        site: Option<TagSite>,
        accepts_sse: impl FnOnce() -> bool,
    ) -> Era {
        match site {
            Some(TagSite::Query { .. }) => return Era::LegacySse,
            Some(TagSite::Header { .. }) => return Era::Session,
            None => {}
        }
        if session {
            return Era::Session;
        }
        let modern =
            mcp_method || protocol_version.is_some_and(|v| v >= STATELESS_REVISION.as_bytes());
        if modern {
            Era::Stateless
        } else if method == Method::GET && protocol_version.is_none() {
            // A legacy SSE open: no session id, and no MCP-Protocol-Version (2025-06-18
            // and later clients send it, also on the GET stream of a stateless server),
            // asking for an event stream; without that, a plain GET.
            if accepts_sse() {
                Era::LegacySse
            } else {
                Era::Other
            }
        } else {
            Era::Sessionless
        }
    }
}

/// Whether an `Accept` value names `text/event-stream` (in any case, among
/// others or alone).
pub fn accepts_event_stream(value: &[u8]) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    value
        .windows(SSE.len())
        .any(|w| w.eq_ignore_ascii_case(SSE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    type Case = (
        Method,
        &'static [(&'static str, &'static str)],
        Option<TagSite>,
        Era,
    );

    #[test]
    fn eras_from_headers_alone() {
        let tagged_query = Some(TagSite::Query {
            value_at: 0,
            prefix_len: 4,
        });
        let tagged_header = Some(TagSite::Header { prefix_len: 4 });
        let cases: &[Case] = &[
            (
                Method::GET,
                &[("accept", "text/event-stream")],
                None,
                Era::LegacySse,
            ),
            (
                Method::GET,
                &[("accept", "application/json, Text/Event-Stream")],
                None,
                Era::LegacySse,
            ),
            // OAuth discovery, a health check, a browser: no era.
            (Method::GET, &[], None, Era::Other),
            (Method::GET, &[("accept", "*/*")], None, Era::Other),
            (
                Method::GET,
                &[("accept", "application/json")],
                None,
                Era::Other,
            ),
            (Method::POST, &[], tagged_query, Era::LegacySse),
            (
                Method::POST,
                &[("mcp-session-id", "mf1.blue.0.x")],
                tagged_header,
                Era::Session,
            ),
            (
                Method::DELETE,
                &[("mcp-session-id", "untagged")],
                None,
                Era::Session,
            ),
            (Method::POST, &[], None, Era::Sessionless),
            (
                Method::GET,
                &[("mcp-protocol-version", "2025-11-25")],
                None,
                Era::Sessionless,
            ),
            (
                Method::POST,
                &[("mcp-protocol-version", "2025-11-25")],
                None,
                Era::Sessionless,
            ),
            (
                Method::POST,
                &[("mcp-protocol-version", "2026-07-28")],
                None,
                Era::Stateless,
            ),
            (
                Method::POST,
                &[("mcp-protocol-version", "2027-01-01")],
                None,
                Era::Stateless,
            ),
            (
                Method::POST,
                &[("mcp-method", "subscriptions/listen")],
                None,
                Era::Stateless,
            ),
        ];
        for (method, h, site, want) in cases {
            assert_eq!(Era::of(method, &headers(h), *site), *want, "{method} {h:?}");
        }
    }

    /// The counters are indexed by `era as usize`: `ALL` is in that order.
    #[test]
    fn all_is_in_discriminant_order() {
        for (i, e) in Era::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i, "{e:?}");
        }
        let opens: Vec<Era> = Era::ALL
            .into_iter()
            .filter(|e| e.may_open_legacy_stream())
            .collect();
        assert_eq!(opens, [Era::LegacySse, Era::Other]);
    }
}
