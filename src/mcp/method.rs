//! The MCP methods the proxy knows by name, for the bounded `method` label of
//! the per-method latency histogram. A request names its method in the
//! `Mcp-Method` header (2026-07-28); the proxy never reads a body to learn it.
//!
//! The list is fixed at compile time so that a client cannot grow the label set:
//! any other value counts as `other`.

/// Client-to-server methods and notifications of the MCP revisions the proxy
/// accepts (2024-11-05 to 2026-07-28), the most frequent first.
pub const KNOWN: [&str; 24] = [
    "tools/call",
    "tools/list",
    "resources/read",
    "resources/list",
    "resources/templates/list",
    "prompts/get",
    "prompts/list",
    "completion/complete",
    "ping",
    "initialize",
    "server/discover",
    "subscriptions/listen",
    "resources/subscribe",
    "resources/unsubscribe",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/message",
];

/// The label of an unknown method.
pub const OTHER: &str = "other";

/// Number of label values: every known method, then `other`.
pub const COUNT: usize = KNOWN.len() + 1;
// An index is kept in a byte (`proxy::exchange::Exchange`).
const _: () = assert!(COUNT <= u8::MAX as usize);

/// The index of `method` in [`KNOWN`], or `KNOWN.len()` for `other`: byte
/// compares only, no allocation.
pub fn index(method: &[u8]) -> usize {
    KNOWN
        .iter()
        .position(|m| m.as_bytes() == method)
        .unwrap_or(KNOWN.len())
}

/// The label value of index `i` (as returned by [`index`]).
pub fn label(i: usize) -> &'static str {
    KNOWN.get(i).copied().unwrap_or(OTHER)
}

/// Whether index `i` is `tools/call`, whose answer may take long.
pub fn is_tools_call(i: usize) -> bool {
    label(i) == "tools/call"
}

/// The index of `subscriptions/listen`: a long-lived stream, not a request
/// whose duration is a latency.
pub fn is_subscription(i: usize) -> bool {
    label(i) == "subscriptions/listen"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_round_trip_and_anything_else_is_other() {
        for (i, m) in KNOWN.iter().enumerate() {
            assert_eq!(index(m.as_bytes()), i);
            assert_eq!(label(i), *m);
        }
        assert_eq!(label(index(b"tools/call2")), OTHER);
        assert_eq!(label(index(b"")), OTHER);
        assert!(is_subscription(index(b"subscriptions/listen")));
        assert!(!is_subscription(index(b"tools/call")));
    }
}
