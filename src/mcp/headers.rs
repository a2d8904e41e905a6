//! MCP header names and protocol revisions, as the transports define them.
//!
//! The names are `HeaderName`s, not strings: a `HeaderMap` lookup by `&str`
//! parses and lowercases the name on every call (about 150 instructions each,
//! several per request).

use http::{header, HeaderMap, HeaderName};

/// The Streamable HTTP session header (2025-03-26 and later).
pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// The negotiated protocol revision, sent on every request after `initialize`
/// (2025-06-18 and later).
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// The id of the last SSE event a reconnecting client saw (resumption).
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// The JSON-RPC method, mirrored in a header (2026-07-28).
pub const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");

/// True when `Content-Type` says `text/event-stream` (an SSE body): the
/// media type compared on its bytes without case, its parameters after `;`
/// ignored. One test for the forwarder and the probes.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_event_stream_type(v.as_bytes()))
}

/// [`is_event_stream`] on one `Content-Type` value.
pub fn is_event_stream_type(v: &[u8]) -> bool {
    let media = v.split(|&b| b == b';').next().unwrap_or(v);
    media
        .trim_ascii()
        .eq_ignore_ascii_case(b"text/event-stream")
}

/// The first protocol revision without sessions, whose requests all carry `Mcp-Method`.
pub const STATELESS_REVISION: &str = "2026-07-28";
/// The revision a client proposes in `initialize` (the latest with the handshake).
pub const PROPOSED_VERSION: &str = "2025-11-25";
/// Protocol revisions the proxy understands.
pub const ACCEPTED_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    PROPOSED_VERSION,
    STATELESS_REVISION,
];

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn an_event_stream_is_told_by_its_media_type() {
        for (ct, sse) in [
            (Some("text/event-stream"), true),
            (Some("Text/Event-Stream; charset=utf-8"), true),
            (Some(" text/event-stream ;x=y"), true),
            (Some("text/event-streams"), false),
            (Some("text/event"), false),
            (Some("application/json"), false),
            (None, false),
        ] {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            assert_eq!(is_event_stream(&h), sse, "{ct:?}");
        }
    }
}
