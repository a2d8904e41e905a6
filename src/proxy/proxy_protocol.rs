//! The PROXY protocol (HAProxy's, versions 1 and 2) on the public listener,
//! `[listen] proxy_protocol`: a load balancer in TCP mode (HAProxy's
//! `send-proxy`/`send-proxy-v2`, AWS's NLB, ...) sends the client's address
//! in a header before the connection's first byte, and that address becomes
//! the client's, in `X-Forwarded-For` and the access log. As nginx's `listen
//! ... proxy_protocol` and HAProxy's `accept-proxy`, the listener then
//! requires the header on every connection.
//!
//! The header is read exactly, nothing after it: what follows (a TLS
//! ClientHello, an HTTP/1.1 head, the HTTP/2 preface) stays in the socket for
//! the handshake and the protocol sniff, as if the header had not been there.
//! It is peeked at; a peek that shows an incomplete header consumes what it
//! saw (all of it is header), so that the next peek waits for more bytes
//! instead of spinning on the same ones. Bounded: version 1 by its 107 bytes,
//! version 2 by [`MAX_V2`], both by the connection's `header_read_timeout`.
//! Parsed by the `ppp` crate.

use std::net::SocketAddr;

use ppp::{v1, v2, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Version 1's first bytes.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 header, its line end included.
const MAX_V1: usize = 107;
/// Version 2's signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2's fixed part: the signature, version and command, family and
/// protocol, and the length of what follows.
const V2_FIXED: usize = 16;
/// The longest version 2 header taken: its fixed part and 1 KiB of
/// addresses (216 bytes for a UNIX socket pair) and TLVs (cloud load
/// balancers send a few dozen bytes of them).
pub const MAX_V2: usize = V2_FIXED + 1024;

/// Why a connection's PROXY protocol header was refused; the connection is
/// closed without an answer.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no complete PROXY protocol header within header_read_timeout")]
    Timeout,
    #[error("the connection ended before its PROXY protocol header did")]
    Closed,
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("PROXY protocol header of {0} bytes, over the {MAX_V2} taken")]
    TooLong(usize),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads `tcp`'s PROXY protocol header by `deadline`. `Some(address)`: the
/// client's address it names; `None`: one that names none (version 2
/// `LOCAL`, a load balancer's own health check; version 1 `UNKNOWN`; a family
/// other than TCP over IPv4 or IPv6), so the connection's own peer is the
/// client.
pub async fn read(tcp: &mut TcpStream, deadline: Instant) -> Result<Option<SocketAddr>, Refused> {
    match tokio::time::timeout_at(deadline, read_header(tcp)).await {
        Ok(read) => read,
        Err(_) => Err(Refused::Timeout),
    }
}

async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, Refused> {
    let mut buf = vec![0u8; MAX_V2];
    // Bytes of the header consumed from the socket so far, at buf's start.
    let mut have = 0;
    loop {
        let n = tcp.peek(&mut buf[have..]).await?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        let seen = have + n;
        let (len, client) = match parse(&buf[..seen])? {
            Some(header) => header,
            None if seen == buf.len() => return Err(Refused::TooLong(seen)),
            None => {
                // Every byte seen is the header's: take them, so that the
                // next peek waits for the rest.
                read_exact(tcp, &mut buf[have..seen]).await?;
                have = seen;
                continue;
            }
        };
        read_exact(tcp, &mut buf[have..len]).await?;
        return Ok(client);
    }
}

/// Takes bytes already peeked at; the end of the stream is `Closed`.
async fn read_exact(tcp: &mut TcpStream, into: &mut [u8]) -> Result<(), Refused> {
    match tcp.read_exact(into).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Refused::Closed),
        Err(e) => Err(Refused::Io(e)),
    }
}

/// The header at the start of `seen`: `Some((its length, the client's
/// address))` once complete, `None` while more bytes could complete it.
pub fn parse(seen: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, Refused> {
    let starts = |sig: &[u8]| sig.starts_with(&seen[..seen.len().min(sig.len())]);
    let v1 = starts(V1_PREFIX);
    if !v1 && !starts(V2_SIGNATURE) {
        return Err(Refused::Missing);
    }
    if v1 {
        // Parsed once its line ended: `ppp` takes a line cut inside its
        // last field for a wrong one.
        return match memchr::memchr(b'\n', seen) {
            Some(end) => match v1::Header::try_from(&seen[..=end]) {
                Ok(h) => Ok(Some((h.header.len(), of_v1(&h.addresses)))),
                Err(e) => Err(Refused::Invalid(e.to_string())),
            },
            None if seen.len() >= MAX_V1 => Err(Refused::Invalid(format!(
                "a version 1 header ends within {MAX_V1} bytes"
            ))),
            None => Ok(None),
        };
    }
    if seen.len() >= V2_FIXED && seen.starts_with(V2_SIGNATURE) {
        let len = V2_FIXED + usize::from(u16::from_be_bytes([seen[14], seen[15]]));
        if len > MAX_V2 {
            return Err(Refused::TooLong(len));
        }
    }
    match v2::Header::try_from(seen) {
        Ok(h) => Ok(Some((h.len(), of_v2(&h)))),
        Err(e) if e.is_incomplete() => Ok(None),
        Err(e) => Err(Refused::Invalid(e.to_string())),
    }
}

fn of_v1(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn of_v2(h: &v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == v2::Command::Local || h.protocol != v2::Protocol::Stream {
        return None;
    }
    match &h.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const V1_TCP4: &[u8] = b"PROXY TCP4 203.0.113.9 192.0.2.1 51000 443\r\n";

    /// A version 2 header: `command` (0 LOCAL, 1 PROXY), `family` byte,
    /// then `rest` (addresses and TLVs).
    fn v2(command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        h.extend_from_slice(rest);
        h
    }

    fn v2_tcp4(tlvs: &[u8]) -> Vec<u8> {
        let mut rest = vec![198, 51, 100, 7, 192, 0, 2, 1];
        rest.extend_from_slice(&51000u16.to_be_bytes());
        rest.extend_from_slice(&443u16.to_be_bytes());
        rest.extend_from_slice(tlvs);
        v2(1, 0x11, &rest)
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("address"))
    }

    #[test]
    fn both_versions_name_the_client_and_their_exact_length() {
        let mut with_request = V1_TCP4.to_vec();
        with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&with_request).unwrap(),
            Some((V1_TCP4.len(), addr("203.0.113.9:51000")))
        );
        let v1_tcp6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert_eq!(
            parse(v1_tcp6).unwrap(),
            Some((v1_tcp6.len(), addr("[2001:db8::7]:51000")))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET").unwrap(),
            Some((15, None)),
            "UNKNOWN: the connection's own peer is the client"
        );

        // TLVs (an NLB's endpoint id, say) are skipped with the header.
        let tlvs = [0xEA, 0x00, 0x03, b'v', b'p', b'c'];
        let mut h = v2_tcp4(&tlvs);
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01"); // a TLS ClientHello after it
        assert_eq!(parse(&h).unwrap(), Some((len, addr("198.51.100.7:51000"))));

        let mut six = [0u8; 36];
        six[..16].copy_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        six[32..34].copy_from_slice(&51000u16.to_be_bytes());
        let h = v2(1, 0x21, &six);
        assert_eq!(
            parse(&h).unwrap(),
            Some((h.len(), addr("[2001:db8::7]:51000")))
        );
        // LOCAL (the load balancer's own health check), a UNIX socket pair,
        // or UDP: no client address, the peer's is used.
        let local = v2(0, 0x00, &[]);
        assert_eq!(parse(&local).unwrap(), Some((16, None)));
        let unix = v2(1, 0x31, &[0u8; 216]);
        assert_eq!(parse(&unix).unwrap(), Some((16 + 216, None)));
        let mut udp = v2_tcp4(&[]);
        udp[13] = 0x12;
        assert_eq!(parse(&udp).unwrap().map(|(_, a)| a), Some(None));
    }

    #[test]
    fn every_cut_of_a_header_is_incomplete_not_refused() {
        for h in [V1_TCP4.to_vec(), v2_tcp4(&[1, 0, 1, 9])] {
            for cut in 1..h.len() {
                assert_eq!(parse(&h[..cut]).unwrap(), None, "{:?}", &h[..cut]);
            }
        }
    }

    #[test]
    fn what_is_not_a_header_is_refused_at_its_first_byte_that_says_so() {
        for not in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PRI * HTTP/2.0",
            b"\x16\x03\x01\x02\x00",
            b"PROXX",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert!(
                matches!(parse(not), Err(Refused::Missing)),
                "{not:?}: {:?}",
                parse(not)
            );
        }
        for bad in [
            &b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"[..],
            b"PROXY TCP4 203.0.113.9 192.0.2.1 99999 443\r\n",
            b"PROXY TCP7 203.0.113.9 192.0.2.1 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Refused::Invalid(_))),
                "{bad:?}: {:?}",
                parse(bad)
            );
        }
        // Version 1 ends within 107 bytes.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(120, b'1');
        assert!(matches!(parse(&long), Err(Refused::Invalid(_))));
        // Version 2 declares its length: one over the bound is refused at
        // once, before its bytes arrive.
        let mut big = v2(1, 0x11, &[]);
        big[14..16].copy_from_slice(&((MAX_V2 - 16 + 1) as u16).to_be_bytes());
        assert!(matches!(parse(&big), Err(Refused::TooLong(n)) if n == MAX_V2 + 1));
        // A wrong version or command.
        let mut v3 = v2_tcp4(&[]);
        v3[12] = 0x31;
        assert!(matches!(parse(&v3), Err(Refused::Invalid(_))));
    }

    /// Over a real socket: the header sent a few bytes at a time is read
    /// whole, and what follows it stays for the connection's protocol.
    #[tokio::test]
    async fn a_header_in_pieces_is_read_exactly_and_the_rest_stays() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        for header in [V1_TCP4.to_vec(), v2_tcp4(&[0xEA, 0, 1, 7])] {
            let sent = header.clone();
            let client = tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(to).await.unwrap();
                c.set_nodelay(true).unwrap();
                for piece in sent.chunks(5) {
                    c.write_all(piece).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
                c
            });
            let (mut tcp, _) = listener.accept().await.unwrap();
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            let client_addr = read(&mut tcp, deadline).await.unwrap();
            assert!(client_addr.is_some());
            let _c = client.await.unwrap();
            let mut next = [0u8; 16];
            tcp.read_exact(&mut next).await.unwrap();
            assert_eq!(&next, b"GET / HTTP/1.1\r\n");
        }
    }

    #[tokio::test]
    async fn silence_and_a_cut_header_end_at_the_deadline_or_the_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let mut c = tokio::net::TcpStream::connect(to).await.unwrap();
        let (mut tcp, _) = listener.accept().await.unwrap();
        c.write_all(b"PROXY TCP4 203.0").await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(200);
        assert!(matches!(
            read(&mut tcp, deadline).await,
            Err(Refused::Timeout)
        ));
        let mut c = tokio::net::TcpStream::connect(to).await.unwrap();
        let (mut tcp, _) = listener.accept().await.unwrap();
        c.write_all(&v2_tcp4(&[])[..20]).await.unwrap();
        drop(c);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        assert!(matches!(
            read(&mut tcp, deadline).await,
            Err(Refused::Closed)
        ));
    }
}
