//! MCP header names and protocol revisions, as the transports define them.
//!
//! The names are `HeaderName`s, not strings: a `HeaderMap` lookup by `&str`
//! parses and lowercases the name on every call (about 150 instructions each,
//! several per request).

use http::HeaderName;

/// The Streamable HTTP session header (2025-03-26 and later).
pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// The negotiated protocol revision, sent on every request after `initialize`
/// (2025-06-18 and later).
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// The id of the last SSE event a reconnecting client saw (resumption).
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// The JSON-RPC method, mirrored in a header (2026-07-28).
pub const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");

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
