//! `[proxy] trusted_proxies`: the peers whose `X-Forwarded-*` headers are
//! believed, as nginx's `set_real_ip_from` with `real_ip_recursive on` and
//! Caddy's `trusted_proxies`.
//!
//! With the list empty (the default) nothing changes: every client's
//! `X-Forwarded-For` is kept in front of its address (nginx's default) and
//! nobody's `-Proto` or `-Host` reaches a slot. With it set, a connection
//! from an address in it is a trusted proxy's: its `X-Forwarded-Proto` and
//! `-Host` go on to the slot in place of the proxy's, and the client behind
//! it is read from its `X-Forwarded-For` (the access log's `client_ip`). Any
//! other connection is a client's own: its `X-Forwarded-*` claims are dropped.

use std::net::IpAddr;

use ipnet::IpNet;

/// The address blocks of the trusted proxies (empty: none is).
#[derive(Debug, Clone, Default)]
pub struct Trusted {
    nets: Box<[IpNet]>,
}

impl Trusted {
    pub fn new(nets: &[IpNet]) -> Trusted {
        Trusted { nets: nets.into() }
    }

    /// Whether the list is empty: then nothing of this module applies.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy's. An IPv4 peer of a dual-stack
    /// listener (`::ffff:a.b.c.d`) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client behind `peer`, a trusted proxy, from the `X-Forwarded-For`
    /// lines `chain` (in the order they came): its addresses read from the
    /// right, the nearest that is not a trusted proxy's; the farthest when
    /// all are. An entry may carry a port (`203.0.113.9:4711`,
    /// `[2001:db8::7]:4711`, as Azure's Application Gateway and IIS write
    /// them) or brackets: its address counts. `peer` itself when the chain
    /// names no address, or when an entry read before the answer is not an
    /// address (`unknown`, an obfuscated identifier): what follows it cannot
    /// be told apart from a claim. Empty list elements are skipped (RFC 9110
    /// §5.6.1).
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        chain: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        self.client_in(peer, chain, false)
    }

    /// [`Trusted::client`] over RFC 7239 `Forwarded` lines: each element's
    /// `for=` node (`for=192.0.2.60`, `for="[2001:db8::17]:4711"`); an element
    /// without one, or whose node is not an address (`unknown`,
    /// `_hidden`), ends the walk as an unreadable entry does.
    pub fn client_forwarded<'a>(
        &self,
        peer: IpAddr,
        chain: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        self.client_in(peer, chain, true)
    }

    fn client_in<'a>(
        &self,
        peer: IpAddr,
        chain: impl DoubleEndedIterator<Item = &'a [u8]>,
        forwarded: bool,
    ) -> IpAddr {
        let mut farthest = None;
        for line in chain.rev() {
            for entry in line.rsplit(|&b| b == b',') {
                let entry = entry.trim_ascii();
                if entry.is_empty() {
                    continue;
                }
                let entry = if forwarded {
                    match for_node(entry) {
                        Some(node) => node,
                        None => return peer,
                    }
                } else {
                    entry
                };
                let Some(ip) = std::str::from_utf8(entry).ok().and_then(entry_address) else {
                    return peer;
                };
                let ip = ip.to_canonical();
                if !self.contains(ip) {
                    return ip;
                }
                farthest = Some(ip);
            }
        }
        farthest.unwrap_or(peer)
    }
}

/// The `for=` node of a `Forwarded` element (`for=192.0.2.60;proto=https`),
/// unquoted; the parameter's name is case-insensitive (RFC 7239 §4).
fn for_node(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        if !name.trim_ascii().eq_ignore_ascii_case(b"for") {
            return None;
        }
        let value = value[1..].trim_ascii();
        Some(
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value),
        )
    })
}

/// The address of an `X-Forwarded-For` entry: a bare one, one with a port
/// (`a.b.c.d:p`, `[v6]:p`), or a bracketed IPv6 one (`[v6]`).
pub fn entry_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> Trusted {
        let nets: Vec<IpNet> = list.iter().map(|e| e.parse().unwrap()).collect();
        Trusted::new(&nets)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_elements_name_the_client_in_their_for_node() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let walk = |lines: &[&str]| t.client_forwarded(peer, lines.iter().map(|l| l.as_bytes()));
        assert_eq!(
            walk(&["for=192.0.2.60;proto=https;by=10.0.0.1"]),
            ip("192.0.2.60")
        );
        // Nearest untrusted from the right, quoted IPv6 with a port, any case.
        assert_eq!(
            walk(&["For=\"[2001:db8:cafe::17]:4711\", for=10.1.1.1"]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            walk(&[
                "for=198.51.100.1",
                "proto=http;for=203.0.113.5:80, for=10.2.2.2"
            ]),
            ip("203.0.113.5")
        );
        // All trusted: the farthest.
        assert_eq!(walk(&["for=10.3.3.3, for=10.4.4.4"]), ip("10.3.3.3"));
        // An obfuscated or unknown node, or an element without `for`, before
        // the answer: the peer (what lies beyond cannot be told from a claim).
        assert_eq!(walk(&["for=192.0.2.1, for=unknown"]), peer);
        assert_eq!(walk(&["for=192.0.2.1, for=_hidden"]), peer);
        assert_eq!(walk(&["for=192.0.2.1, proto=https"]), peer);
        // Not X-Forwarded-For: a bare address is no `for=` node.
        assert_eq!(walk(&["192.0.2.7"]), peer);
        assert_eq!(
            t.client(peer, ["192.0.2.7"].iter().map(|l| l.as_bytes())),
            ip("192.0.2.7")
        );
    }

    #[test]
    fn membership_matches_ipv4_peers_of_a_dual_stack_listener() {
        let t = trusted(&["10.0.0.0/8", "::1/128"]);
        assert!(t.contains(ip("10.9.8.7")));
        assert!(t.contains(ip("::ffff:10.9.8.7")));
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(!t.contains(ip("127.0.0.1")));
        assert!(!Trusted::default().contains(ip("10.0.0.1")));
    }

    /// Any bytes a client sends (lines of digits, separators, letters,
    /// non-UTF-8): no panic, and the answer is the peer or an address the
    /// chain names; a trusted one only when every address read before the
    /// stop is trusted.
    #[test]
    fn any_chain_gives_the_peer_or_an_address_it_names() {
        let t = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
        let peer = ip("10.0.0.1");
        const BYTES: &[u8] = b"0123456789.:, \tabf\xff";
        let mut rng = fastrand::Rng::with_seed(7);
        let mut named_some = 0;
        for _ in 0..20_000 {
            // Entries: addresses trusted or not, IPv4, IPv6, mapped, and what
            // is not an address, joined by commas with or without spaces.
            let entry = |rng: &mut fastrand::Rng| -> Vec<u8> {
                let n = rng.u8(..);
                match rng.u8(..8) {
                    0 => format!("10.{n}.0.{}", rng.u8(..)).into_bytes(),
                    1 => format!("203.0.{n}.9").into_bytes(),
                    2 => format!("2001:db8::{n:x}").into_bytes(),
                    3 => format!("2001:db9::{n:x}").into_bytes(),
                    4 => format!("::ffff:10.0.0.{n}").into_bytes(),
                    5 => [&b"unknown"[..], b"1.2.3.4:80", b"", b"[::1]", b"\xff"][rng.usize(..5)]
                        .to_vec(),
                    _ => (0..rng.usize(0..12))
                        .map(|_| BYTES[rng.usize(..BYTES.len())])
                        .collect(),
                }
            };
            let lines: Vec<Vec<u8>> = (0..rng.usize(0..4))
                .map(|_| {
                    let mut line = Vec::new();
                    for i in 0..rng.usize(1..5) {
                        if i > 0 {
                            line.extend_from_slice([&b","[..], b", ", b" ,\t"][rng.usize(..3)]);
                        }
                        line.extend(entry(&mut rng));
                    }
                    line
                })
                .collect();
            let chain: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let got = t.client(peer, chain.iter().copied());
            if got == peer {
                continue;
            }
            named_some += 1;
            let named: Vec<IpAddr> = chain
                .iter()
                .flat_map(|l| l.split(|&b| b == b','))
                .filter_map(|e| entry_address(std::str::from_utf8(e.trim_ascii()).ok()?))
                .map(|a: IpAddr| a.to_canonical())
                .collect();
            assert!(named.contains(&got), "{got} is not named in {lines:?}");
            if t.contains(got) {
                assert!(named.iter().all(|a| t.contains(*a)), "{got} from {lines:?}");
            }
        }
        // Not vacuous: many chains named a client.
        assert!(
            named_some > 1_000,
            "only {named_some} chains named a client"
        );
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_address_from_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let client = |chain: &[&str]| {
            let lines: Vec<&[u8]> = chain.iter().map(|l| l.as_bytes()).collect();
            t.client(peer, lines.iter().copied()).to_string()
        };
        // A load balancer's hop: the address it saw.
        assert_eq!(client(&["203.0.113.9"]), "203.0.113.9");
        // A client's claim in front of it is not believed.
        assert_eq!(client(&["1.2.3.4, 203.0.113.9"]), "203.0.113.9");
        // Trusted hops are walked past, across lines, spaces and tabs.
        assert_eq!(
            client(&["1.2.3.4,203.0.113.9", "10.1.1.1 ,\t10.2.2.2"]),
            "203.0.113.9"
        );
        // Empty elements are skipped.
        assert_eq!(client(&["203.0.113.9, ,", ""]), "203.0.113.9");
        // All trusted: the farthest.
        assert_eq!(client(&["10.3.3.3, 10.2.2.2"]), "10.3.3.3");
        // None: the peer.
        assert_eq!(client(&[]), "10.0.0.1");
        assert_eq!(client(&[" , "]), "10.0.0.1");
        // An address with a port, or in brackets, is that address.
        assert_eq!(client(&["203.0.113.9:4711"]), "203.0.113.9");
        assert_eq!(client(&["[2001:db8::7]:4711, 10.2.2.2:80"]), "2001:db8::7");
        assert_eq!(client(&["[2001:db8::7]"]), "2001:db8::7");
        // What is not an address ends the walk at the peer...
        assert_eq!(client(&["unknown, 10.2.2.2"]), "10.0.0.1");
        assert_eq!(client(&["203.0.113.9:port"]), "10.0.0.1");
        assert_eq!(client(&["[203.0.113.9]"]), "10.0.0.1");
        // ...unless an untrusted address came before it, from the right.
        assert_eq!(client(&["unknown, 203.0.113.9"]), "203.0.113.9");
        // IPv6, and an IPv4 address written as mapped IPv6.
        assert_eq!(client(&["2001:db8::7"]), "2001:db8::7");
        assert_eq!(client(&["::ffff:203.0.113.9"]), "203.0.113.9");
        assert_eq!(client(&["203.0.113.9, ::ffff:10.1.1.1"]), "203.0.113.9");
    }
}
