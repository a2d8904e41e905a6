//! DNS-rebinding protection at the proxy, like the MCP SDK servers' own.
//!
//! The proxy sends the upstream its own authority as `Host` (so SDK servers'
//! host checks pass), which would also switch those checks off for clients: a
//! page on `evil.example.com` rebound to 127.0.0.1 would reach a local MCP server
//! through mcpflip. So the proxy checks `Host` and `Origin` itself: on a loopback
//! listener only loopback names pass (what the SDKs do by default), and
//! `[proxy] allowed_hosts` sets the list for any listener.

use http::header::{HeaderMap, HOST, ORIGIN};

/// Which hosts a request may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostGuard {
    /// No check (a public listener without `allowed_hosts`).
    Off,
    /// Only these host names (lowercase, port ignored).
    Only(Vec<String>),
}

/// The host names a loopback listener accepts by default.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl HostGuard {
    /// The guard for a listener on `addr` with the configured `allowed_hosts`.
    pub fn new(addr: std::net::SocketAddr, allowed: Option<&[String]>) -> Self {
        match allowed {
            Some(list) if list.iter().any(|h| h == "*") => HostGuard::Off,
            Some(list) => HostGuard::Only(list.iter().map(|h| h.to_ascii_lowercase()).collect()),
            None if addr.ip().is_loopback() => {
                HostGuard::Only(LOOPBACK_NAMES.iter().map(|s| s.to_string()).collect())
            }
            None => HostGuard::Off,
        }
    }

    /// `Err(message)` when the request names a host it may not; no allocation on a pass.
    pub fn check(&self, headers: &HeaderMap, uri_host: Option<&str>) -> Result<(), String> {
        let HostGuard::Only(allowed) = self else {
            return Ok(());
        };
        let ok = |name: &str| allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
        let host = headers.get(HOST).and_then(|v| v.to_str().ok()).or(uri_host);
        if let Some(h) = host {
            let name = host_name(h);
            if !ok(name) {
                return Err(format!("Invalid Host: {h}"));
            }
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let text = origin.to_str().unwrap_or("");
            // `Origin: null` (sandboxed pages, file:) names no host and is refused too.
            let authority = text.split_once("://").map(|(_, rest)| rest).unwrap_or("");
            if !ok(host_name(authority)) {
                return Err(format!("Invalid Origin: {text}"));
            }
        }
        Ok(())
    }
}

/// The name part of `host[:port]` or `[v6]:port`.
fn host_name(authority: &str) -> &str {
    let authority = authority.split('/').next().unwrap_or("");
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(host: &'static str, origin: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn loopback_listener_accepts_loopback_names_only() {
        let g = HostGuard::new("127.0.0.1:8080".parse().expect("addr"), None);
        assert!(g.check(&headers("127.0.0.1:8080", None), None).is_ok());
        assert!(g
            .check(&headers("localhost", Some("http://localhost:3000")), None)
            .is_ok());
        assert!(g.check(&headers("[::1]:8080", None), None).is_ok());
        assert_eq!(
            g.check(&headers("evil.example.com", None), None),
            Err("Invalid Host: evil.example.com".into())
        );
        assert_eq!(
            g.check(
                &headers("127.0.0.1:8080", Some("http://evil.example.com")),
                None
            ),
            Err("Invalid Origin: http://evil.example.com".into())
        );
        assert!(g.check(&headers("127.0.0.1", Some("null")), None).is_err());
    }

    #[test]
    fn public_listener_is_open_unless_configured() {
        let public: std::net::SocketAddr = "0.0.0.0:443".parse().expect("addr");
        assert_eq!(HostGuard::new(public, None), HostGuard::Off);
        let g = HostGuard::new(public, Some(&["MCP.example.com".to_string()]));
        assert!(g
            .check(
                &headers("mcp.example.com:443", Some("https://mcp.example.com")),
                None
            )
            .is_ok());
        assert!(g.check(&headers("other.example.com", None), None).is_err());
        let any = HostGuard::new(
            "127.0.0.1:1".parse().expect("addr"),
            Some(&["*".to_string()]),
        );
        assert_eq!(any, HostGuard::Off);
    }
}
