//! The request headers the forwarder reads on every request, found in one
//! pass over them.
//!
//! A request has about eight headers. Looking up `Host`, `Origin`,
//! `Mcp-Method` and `Mcp-Session-Id` one by one hashed each name (a custom
//! name byte by byte) and probed the map: about 700 instructions per request.
//! One pass compares each header's name with the four (a standard name is a
//! tag compare, a custom one a length check first), and finds the first value
//! of each, as `HeaderMap::get` does, and how many `Host` and `Origin` values
//! came (bench/PROFILE.md §19).

use http::header::{HeaderMap, HeaderValue, HOST, ORIGIN};

use crate::mcp::headers::{LAST_EVENT_ID, MCP_METHOD, MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::upstream::lines::{LineKind, RawHeaders};

/// What one pass found.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    /// The first `Host`, and how many came.
    pub host: Option<HeaderValue>,
    pub hosts: u32,
    /// The first `Origin`, and how many came.
    pub origin: Option<HeaderValue>,
    pub origins: u32,
    /// The first `Mcp-Method`.
    pub mcp_method: Option<HeaderValue>,
    /// The first `Mcp-Session-Id`, and how many came.
    pub session: Option<HeaderValue>,
    pub sessions: u32,
    /// The first `MCP-Protocol-Version`.
    pub protocol_version: Option<HeaderValue>,
    /// The first `Last-Event-ID`, and how many came.
    pub last_event_id: Option<HeaderValue>,
    pub last_event_ids: u32,
}

impl Scan {
    pub fn of(headers: &HeaderMap) -> Scan {
        let mut s = Scan::default();
        for (name, value) in headers {
            if name == HOST {
                s.host.get_or_insert_with(|| value.clone());
                s.hosts += 1;
            } else if name == ORIGIN {
                s.origin.get_or_insert_with(|| value.clone());
                s.origins += 1;
            } else if name == MCP_SESSION_ID {
                s.session.get_or_insert_with(|| value.clone());
                s.sessions += 1;
            } else if name == MCP_METHOD {
                s.mcp_method.get_or_insert_with(|| value.clone());
            } else if name == MCP_PROTOCOL_VERSION {
                s.protocol_version.get_or_insert_with(|| value.clone());
            } else if name == LAST_EVENT_ID {
                s.last_event_id.get_or_insert_with(|| value.clone());
                s.last_event_ids += 1;
            }
        }
        s
    }

    /// The same from a head's lines as they came (the request's map is then
    /// empty: [`crate::upstream::RequestBody::Read`]): a value for each first
    /// line of a kind read here, sharing the head's bytes. `None` for a value
    /// `HeaderValue` refuses (none in practice: httparse checked the same
    /// bytes); the caller then takes the whole map.
    pub fn of_lines(lines: &RawHeaders) -> Option<Scan> {
        let mut s = Scan::default();
        for (kind, value) in lines.read_values() {
            let slot = match kind {
                LineKind::Host => {
                    s.hosts += 1;
                    &mut s.host
                }
                LineKind::Origin => {
                    s.origins += 1;
                    &mut s.origin
                }
                LineKind::SessionId => {
                    s.sessions += 1;
                    &mut s.session
                }
                LineKind::McpMethod => &mut s.mcp_method,
                LineKind::McpProtocolVersion => &mut s.protocol_version,
                LineKind::LastEventId => {
                    s.last_event_ids += 1;
                    &mut s.last_event_id
                }
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(HeaderValue::from_maybe_shared(value()).ok()?);
            }
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `head` as the lines of a head that came with them.
    fn lines_of(head: &[(&str, &str)]) -> RawHeaders {
        RawHeaders::of_pairs(head.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// The pass finds what `get` and `get_all` find, whatever the order, the
    /// repeats and the spelling the names came in; over the lines as they
    /// came, the same.
    #[test]
    fn one_pass_finds_what_the_lookups_find() {
        let heads: [&[(&str, &str)]; 5] = [
            &[],
            &[
                ("Host", "a:1"),
                ("Mcp-Session-Id", "s"),
                ("Mcp-Method", "ping"),
            ],
            &[
                ("origin", "http://o"),
                ("HOST", "a"),
                ("host", "b"),
                ("mcp-session-id", "1"),
                ("MCP-SESSION-ID", "2"),
                ("Origin", "http://p"),
                ("x-other", "z"),
            ],
            &[
                ("mcp-method", "tools/call"),
                ("mcp-methods", "no"),
                ("mcp-session", "no"),
                ("MCP-Protocol-Version", "2025-06-18"),
                ("last-event-id", "e1"),
                ("Last-Event-ID", "e2"),
            ],
            &[("accept", "*/*"), ("content-type", "application/json")],
        ];
        for head in heads {
            let mut map = HeaderMap::new();
            for (n, v) in head {
                map.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let s = Scan::of(&map);
            let from_lines = Scan::of_lines(&lines_of(head)).expect("good values");
            assert_eq!(format!("{s:?}"), format!("{from_lines:?}"), "{head:?}");
            assert_eq!(s.mcp_method.as_ref(), map.get(MCP_METHOD), "{head:?}");
            // The first of each name the proxy decides on, and how many came.
            for (name, first, count) in [
                (HOST, &s.host, s.hosts),
                (ORIGIN, &s.origin, s.origins),
                (MCP_SESSION_ID, &s.session, s.sessions),
                (LAST_EVENT_ID, &s.last_event_id, s.last_event_ids),
            ] {
                assert_eq!(first.as_ref(), map.get(&name), "{name} in {head:?}");
                assert_eq!(
                    count as usize,
                    map.get_all(&name).iter().count(),
                    "{name} in {head:?}"
                );
            }
        }
    }
}
