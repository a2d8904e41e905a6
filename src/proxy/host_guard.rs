//! `Host` and `Origin` checks: RFC 3986 authority syntax on every listener, and
//! DNS-rebinding protection like the MCP SDK servers' own where configured.
//!
//! The proxy sends the upstream its own authority as `Host` (so SDK servers'
//! host checks pass), which would also switch those checks off for clients: a
//! page on `evil.example.com` rebound to 127.0.0.1 would reach a local MCP server
//! through mcpflip. So the proxy checks `Host` and `Origin` itself: on a loopback
//! listener only loopback names pass (what the SDKs do by default), and
//! `allowed_hosts` sets the list for any listener.
//!
//! Before any list applies, both headers must parse as what they are (RFC 9110
//! §7.2, RFC 6454 §7): a repeated `Host` or `Origin`, a value that is not ASCII,
//! userinfo (`localhost:80@evil.com`), a port that is not digits
//! (`localhost:evil.com`), text after an IP literal (`[::1]evil.com`) are 400,
//! on every listener, so nothing malformed reaches a slot in `X-Forwarded-Host`.
//! `http::uri::Authority` accepts the last two (and ports above 65535), so the
//! grammar is checked here, strictly: a host is an IPv6 literal or a name of
//! letters, digits, `-`, `.`, `_`, `~` (every such value also parses as an
//! `Authority`; a unit test holds that). Checking never allocates on a pass.

use std::net::Ipv6Addr;

use http::header::HeaderMap;
use http::{Uri, Version};

use crate::proxy::scan::Scan;

/// Which hosts a request may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostGuard {
    /// Syntax only (a public listener without `allowed_hosts`).
    Off,
    /// Only these host names (port ignored; IPv6 literals in brackets).
    Only(Vec<String>),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `Host` or `Origin` is malformed or repeated: 400.
    #[error("{0}")]
    Malformed(String),
    /// A well-formed name that is not allowed: 403.
    #[error("{0}")]
    NotAllowed(String),
}

/// The host names a loopback listener accepts by default.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl HostGuard {
    /// The guard for a listener on `addr` with the configured `allowed_hosts`.
    pub fn new(addr: std::net::SocketAddr, allowed: Option<&[String]>) -> Self {
        match allowed {
            Some(list) if list.iter().any(|h| h == "*") => HostGuard::Off,
            Some(list) => HostGuard::Only(list.iter().map(|h| normalize(h)).collect()),
            None if addr.ip().is_loopback() => {
                HostGuard::Only(LOOPBACK_NAMES.iter().map(|s| s.to_string()).collect())
            }
            None => HostGuard::Off,
        }
    }

    /// Checks the `Host`, the target's authority (absolute form, HTTP/2
    /// `:authority`) and `Origin` of an HTTP/1.1 request.
    pub fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), Refused> {
        self.check_scanned(&Scan::of(headers), uri, Version::HTTP_11)
    }

    /// [`HostGuard::check`] on the `Host` and `Origin` values the request's
    /// one pass over its headers found (bench/PROFILE.md §18, §19), for a
    /// request of `version`: from HTTP/1.1 on, a request that names no host
    /// at all is malformed (RFC 9112 §3.2; nginx and Caddy answer it 400).
    pub fn check_scanned(&self, scan: &Scan, uri: &Uri, version: Version) -> Result<(), Refused> {
        let (host, hosts, origin, origins) = (
            scan.host.as_ref(),
            scan.hosts,
            scan.origin.as_ref(),
            scan.origins,
        );
        if hosts > 1 {
            return Err(Refused::Malformed(
                "Bad Request: more than one Host header".into(),
            ));
        }
        let host = match host {
            Some(v) => {
                let text = v.to_str().map_err(|_| {
                    Refused::Malformed(format!("Bad Request: Host {} is not ASCII", shown(v)))
                })?;
                let name = authority_host(text).map_err(|why| {
                    Refused::Malformed(format!("Bad Request: Host {text:?} {why}"))
                })?;
                Some((text, name))
            }
            None => None,
        };
        let target = match uri.authority() {
            Some(a) => {
                let text = a.as_str();
                let name = authority_host(text).map_err(|why| {
                    Refused::Malformed(format!(
                        "Bad Request: request target authority {text:?} {why}"
                    ))
                })?;
                Some((text, name))
            }
            None => None,
        };
        if host.is_none() && target.is_none() && version >= Version::HTTP_11 {
            return Err(Refused::Malformed(
                "Bad Request: no Host header (an HTTP/1.1 or HTTP/2 request must name its host)"
                    .into(),
            ));
        }
        if let (Some((h, _)), Some((t, _))) = (host, target) {
            // RFC 9113 §8.3.1: Host must not differ from :authority; a smuggled
            // second name would reach the slot in X-Forwarded-Host.
            if !h.eq_ignore_ascii_case(t) {
                return Err(Refused::Malformed(format!(
                    "Bad Request: Host {h:?} differs from the request target's authority {t:?}"
                )));
            }
        }
        if origins > 1 {
            return Err(Refused::Malformed(
                "Bad Request: more than one Origin header".into(),
            ));
        }
        let origin = match origin {
            Some(v) => {
                let text = v.to_str().map_err(|_| {
                    Refused::Malformed(format!("Bad Request: Origin {} is not ASCII", shown(v)))
                })?;
                // `Origin: null` (sandboxed pages, file:) is well-formed and names no host.
                let name = if text == "null" {
                    None
                } else {
                    Some(origin_host(text).map_err(|why| {
                        Refused::Malformed(format!("Bad Request: Origin {text:?} {why}"))
                    })?)
                };
                Some((text, name))
            }
            None => None,
        };

        let HostGuard::Only(allowed) = self else {
            return Ok(());
        };
        let ok = |name: &str| allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
        for (text, name) in [host, target].into_iter().flatten() {
            if !ok(name) {
                return Err(Refused::NotAllowed(format!("Invalid Host: {text}")));
            }
        }
        if let Some((text, name)) = origin {
            // `null` names no host and is refused where hosts are listed.
            if !name.is_some_and(ok) {
                return Err(Refused::NotAllowed(format!("Invalid Origin: {text}")));
            }
        }
        Ok(())
    }
}

/// An allowed name as `check` compares it: lowercase, IPv6 in brackets.
fn normalize(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.parse::<Ipv6Addr>().is_ok() {
        format!("[{lower}]")
    } else {
        lower
    }
}

/// A header value for a message, non-ASCII bytes escaped.
fn shown(v: &http::HeaderValue) -> String {
    format!("{:?}", String::from_utf8_lossy(v.as_bytes()))
}

/// The host of an RFC 3986 `authority` without userinfo (`host [":" port]`),
/// or why it is not one.
pub fn authority_host(s: &str) -> Result<&str, &'static str> {
    // The shape of nearly every request, in one pass: a name, then an
    // optional port (bench/PROFILE.md §15). Anything else, errors included,
    // takes the full parse below, which accepts the same values.
    let b = s.as_bytes();
    let name = b.iter().take_while(|&&c| is_name_byte(c)).count();
    if name > 0 {
        match b.get(name) {
            None => return Ok(s),
            Some(b':') if is_port(&b[name + 1..]) => return Ok(&s[..name]),
            _ => {}
        }
    }
    authority_host_slow(s)
}

/// A byte of a host name as `authority_host` takes it.
fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// An RFC 3986 port `authority_host` takes: empty, or 1 to 5 digits up to 65535.
fn is_port(p: &[u8]) -> bool {
    p.len() <= 5
        && p.iter().all(u8::is_ascii_digit)
        && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
}

/// [`authority_host`] without its fast path: the fuzz target holds that
/// both give the same answer for every input.
#[doc(hidden)]
pub fn authority_host_slow(s: &str) -> Result<&str, &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.contains('@') {
        return Err("carries userinfo ('@'), which a Host never does");
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err("has an IPv6 literal without its ']'");
        };
        let literal = &rest[..close];
        if literal.parse::<Ipv6Addr>().is_err() {
            return Err("has an invalid IPv6 literal");
        }
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("has text after its IPv6 literal"),
        };
        (&s[..close + 2], port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err("has no host");
        }
        if !host.bytes().all(is_name_byte) {
            return Err(
                "is not a host name (letters, digits, '-', '.', '_', '~') or an IP address",
            );
        }
        (host, port)
    };
    if let Some(port) = port {
        // RFC 3986 allows an empty port; anything else is 1 to 5 digits up to 65535.
        if !is_port(port.as_bytes()) {
            return Err("has a port that is not a number from 0 to 65535");
        }
    }
    Ok(host)
}

/// The host of an RFC 6454 serialized origin (`scheme "://" host [":" port]`).
pub fn origin_host(s: &str) -> Result<&str, &'static str> {
    let Some((scheme, authority)) = s.split_once("://") else {
        return Err("is not scheme://host[:port]");
    };
    let mut chars = scheme.bytes();
    if !chars.next().is_some_and(|b| b.is_ascii_alphabetic())
        || !chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err("has an invalid scheme");
    }
    if authority.contains(['/', '?', '#']) {
        return Err("has a path, query or fragment, which an origin never has");
    }
    authority_host(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HOST, ORIGIN};
    use http::HeaderValue;

    fn headers(host: &'static str, origin: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    fn root() -> Uri {
        Uri::from_static("/mcp")
    }

    fn loopback() -> HostGuard {
        HostGuard::new("127.0.0.1:8080".parse().expect("addr"), None)
    }

    #[test]
    fn loopback_listener_accepts_loopback_names_only() {
        let g = loopback();
        assert!(g.check(&headers("127.0.0.1:8080", None), &root()).is_ok());
        assert!(g
            .check(
                &headers("localhost", Some("http://localhost:3000")),
                &root()
            )
            .is_ok());
        assert!(g.check(&headers("[::1]:8080", None), &root()).is_ok());
        assert_eq!(
            g.check(&headers("evil.example.com", None), &root()),
            Err(Refused::NotAllowed("Invalid Host: evil.example.com".into()))
        );
        assert_eq!(
            g.check(
                &headers("127.0.0.1:8080", Some("http://evil.example.com")),
                &root()
            ),
            Err(Refused::NotAllowed(
                "Invalid Origin: http://evil.example.com".into()
            ))
        );
        assert!(matches!(
            g.check(&headers("127.0.0.1", Some("null")), &root()),
            Err(Refused::NotAllowed(_))
        ));
    }

    #[test]
    fn public_listener_is_open_unless_configured() {
        let public: std::net::SocketAddr = "0.0.0.0:443".parse().expect("addr");
        assert_eq!(HostGuard::new(public, None), HostGuard::Off);
        let g = HostGuard::new(public, Some(&["MCP.example.com".to_string(), "::1".into()]));
        assert!(g
            .check(
                &headers("mcp.example.com:443", Some("https://mcp.example.com")),
                &root()
            )
            .is_ok());
        assert!(g.check(&headers("[::1]:443", None), &root()).is_ok());
        assert!(g
            .check(&headers("other.example.com", None), &root())
            .is_err());
        let any = HostGuard::new(
            "127.0.0.1:1".parse().expect("addr"),
            Some(&["*".to_string()]),
        );
        assert_eq!(any, HostGuard::Off);
        // Off still checks syntax, and lets `Origin: null` through.
        assert!(HostGuard::Off
            .check(&headers("a.example", Some("null")), &root())
            .is_ok());
    }

    /// Every attack string of issue 10 is a 400, on a guarded listener and on an
    /// open one alike.
    #[test]
    fn the_issue_attack_strings_are_malformed() {
        for g in [loopback(), HostGuard::Off] {
            for host in [
                "localhost:80@evil.com",
                "localhost:evil.com",
                "[::1]evil.com",
            ] {
                let r = g.check(&headers(host, None), &root());
                assert!(matches!(r, Err(Refused::Malformed(_))), "{host}: {r:?}");
            }
            let r = g.check(
                &headers("localhost", Some("http://localhost:80@evil.com")),
                &root(),
            );
            assert!(matches!(r, Err(Refused::Malformed(_))), "origin: {r:?}");

            let mut dup = headers("localhost", None);
            dup.append(HOST, HeaderValue::from_static("evil.com"));
            let r = g.check(&dup, &root());
            assert!(
                matches!(r, Err(Refused::Malformed(ref m)) if m.contains("more than one Host")),
                "{r:?}"
            );

            let mut dup = headers("localhost", Some("http://localhost"));
            dup.append(ORIGIN, HeaderValue::from_static("http://evil.com"));
            let r = g.check(&dup, &root());
            assert!(matches!(r, Err(Refused::Malformed(_))), "{r:?}");

            let mut utf8 = HeaderMap::new();
            utf8.insert(
                HOST,
                HeaderValue::from_bytes("lоcalhost".as_bytes()).expect("opaque value"),
            );
            let r = g.check(&utf8, &root());
            assert!(
                matches!(r, Err(Refused::Malformed(ref m)) if m.contains("not ASCII")),
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_request_must_name_its_host_from_http_1_1_on() {
        let none = Scan::of(&HeaderMap::new());
        let absolute: Uri = "http://localhost/mcp".parse().expect("uri");
        for g in [loopback(), HostGuard::Off] {
            for v in [Version::HTTP_11, Version::HTTP_2] {
                assert!(
                    matches!(
                        g.check_scanned(&none, &root(), v),
                        Err(Refused::Malformed(_))
                    ),
                    "{v:?}"
                );
                // The target's authority names it (absolute form, `:authority`).
                assert!(g.check_scanned(&none, &absolute, v).is_ok(), "{v:?}");
            }
            assert!(g.check_scanned(&none, &root(), Version::HTTP_10).is_ok());
        }
    }

    #[test]
    fn request_target_authority_is_checked_and_must_match_host() {
        let g = loopback();
        let abs = Uri::from_static("http://evil.com/mcp");
        let mut no_host = HeaderMap::new();
        assert!(matches!(
            g.check(&no_host, &abs),
            Err(Refused::NotAllowed(_))
        ));
        let userinfo = Uri::from_static("http://localhost@evil.com/mcp");
        assert!(matches!(
            g.check(&no_host, &userinfo),
            Err(Refused::Malformed(_))
        ));
        let local = Uri::from_static("http://localhost:8080/mcp");
        assert!(g.check(&no_host, &local).is_ok());
        no_host.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(matches!(
            g.check(&no_host, &local),
            Err(Refused::Malformed(ref m)) if m.contains("differs")
        ));
    }

    #[test]
    fn authority_grammar() {
        for ok in [
            "localhost",
            "localhost:",
            "localhost:8080",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:80",
            "[2001:db8::7]:443",
            "mcp.example.com",
            "a_b~c-d.example",
        ] {
            let host = authority_host(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(
                authority_host_slow(ok),
                Ok(host),
                "{ok}: the fast path agrees"
            );
            assert!(ok.starts_with(host), "{ok} -> {host}");
            // Stricter than http's parser, never looser.
            assert!(ok.parse::<http::uri::Authority>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "localhost:80@evil.com",
            "user@localhost",
            "localhost:evil.com",
            "localhost:+80",
            "localhost:99999",
            "localhost:123456",
            "localhost:80:81",
            "[::1]evil.com",
            "[::1",
            "[zz]:1",
            "[::1%25eth0]",
            "exa mple",
            "a/b",
            "a%41b",
            "ex!ample",
        ] {
            assert!(authority_host(bad).is_err(), "{bad:?} accepted");
        }
        for s in [
            "localhost:65536",
            "localhost:00080",
            "a.b:1",
            "a:",
            "a::",
            "-:0",
        ] {
            assert_eq!(authority_host(s), authority_host_slow(s), "{s:?}");
        }
        assert_eq!(
            origin_host("https://mcp.example.com:8443"),
            Ok("mcp.example.com")
        );
        assert_eq!(origin_host("http://[::1]:3000"), Ok("[::1]"));
        for bad in [
            "localhost",
            "http://localhost/",
            "http://localhost?x",
            "http://localhost:80@evil.com",
            "1http://localhost",
            "http://",
        ] {
            assert!(origin_host(bad).is_err(), "{bad:?} accepted");
        }
    }
}
