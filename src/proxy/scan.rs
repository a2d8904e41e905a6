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

use crate::mcp::headers::{MCP_METHOD, MCP_SESSION_ID};

/// What one pass found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan<'a> {
    /// The first `Host`, and how many came.
    pub host: Option<&'a HeaderValue>,
    pub hosts: u32,
    /// The first `Origin`, and how many came.
    pub origin: Option<&'a HeaderValue>,
    pub origins: u32,
    /// The first `Mcp-Method`.
    pub mcp_method: Option<&'a HeaderValue>,
    /// The first `Mcp-Session-Id`.
    pub session: Option<&'a HeaderValue>,
}

impl<'a> Scan<'a> {
    pub fn of(headers: &'a HeaderMap) -> Scan<'a> {
        let mut s = Scan::default();
        for (name, value) in headers {
            if name == HOST {
                s.host.get_or_insert(value);
                s.hosts += 1;
            } else if name == ORIGIN {
                s.origin.get_or_insert(value);
                s.origins += 1;
            } else if name == MCP_SESSION_ID {
                s.session.get_or_insert(value);
            } else if name == MCP_METHOD {
                s.mcp_method.get_or_insert(value);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pass finds what `get` and `get_all` find, whatever the order, the
    /// repeats and the spelling the names came in.
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
            assert_eq!(s.host, map.get(HOST), "{head:?}");
            assert_eq!(
                s.hosts as usize,
                map.get_all(HOST).iter().count(),
                "{head:?}"
            );
            assert_eq!(s.origin, map.get(ORIGIN), "{head:?}");
            assert_eq!(
                s.origins as usize,
                map.get_all(ORIGIN).iter().count(),
                "{head:?}"
            );
            assert_eq!(s.mcp_method, map.get(MCP_METHOD), "{head:?}");
            assert_eq!(s.session, map.get(MCP_SESSION_ID), "{head:?}");
        }
    }
}
