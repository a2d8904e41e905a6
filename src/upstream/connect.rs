//! Where a slot's new connections go: its name looked up one lookup at a
//! time ([`Resolver`]), and its addresses raced as RFC 8305 ("Happy
//! Eyeballs") has clients do it.
//!
//! Tried one after the other, an address that drops the connection attempt
//! (a blackholed route: IPv6 announced in DNS but not routed, a firewall that
//! drops, a host that is down) held every new connection for the whole of
//! `connect_timeout`, and the next address never got its turn: the slot
//! failed with a 504 although another of its addresses answered at once.
//! Here an attempt starts on each address in turn, the next one as soon as
//! the one before failed or after [`ATTEMPT_DELAY`] without an answer, the
//! earlier ones going on meanwhile; the first to connect wins and the others
//! are dropped. The addresses alternate between IPv6 and IPv4 after the
//! resolver's first (RFC 8305 §4), so one broken family costs one delay, not
//! one per address, and the address that answered last goes first.
//! `connect_timeout` (the caller's) still bounds the whole.
//!
//! Go's dialer, curl and Chrome race the two families the same way (a
//! 200–300 ms head start for the first); nginx tries a server's next address
//! only after `proxy_connect_timeout`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an attempt goes unanswered before the next address is tried
/// beside it (RFC 8305 §5 recommends 250 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// How long a name's lookup, its addresses or its failure, is used again
/// without a new one.
pub const FRESH: Duration = Duration::from_secs(1);

/// Where a slot's new connections go: its name's addresses, looked up one
/// lookup at a time and used again for [`FRESH`], and the one that answered
/// last.
///
/// One lookup at a time: each lookup is a `getaddrinfo` on a blocking
/// thread that cannot be called off. With the slot's resolver down, every
/// request that needed a new connection started one of its own, and each
/// held a thread for the resolver's own timeouts (5 s per try) after the
/// request had given up: a burst of requests became as many threads (up to
/// tokio's 512 per worker) and as many queries at a resolver already in
/// trouble. Now the requests that need the name while it is being looked up
/// wait for that lookup (Go's resolver shares concurrent lookups the same
/// way); one that gives up (`connect_timeout`) lets the next waiter look it
/// up again. A failed lookup is kept as long as addresses are: the requests
/// that waited behind it, and those that come in its second, fail at once
/// with its error rather than each asking again in turn (one at a time, a
/// name that does not resolve would have queued every request to the slot
/// behind a lookup of its own). A kept answer is not dropped when
/// a connection to it fails: with the slot down, every request would then
/// wait its turn for a lookup of its own before its refusal; an address that
/// changed (a container made again) is seen within [`FRESH`].
#[derive(Debug, Default)]
pub struct Resolver {
    kept: tokio::sync::Mutex<Option<Kept>>,
    /// The address the last new connection went to, tried first next time
    /// when the name still has it.
    last: std::sync::Mutex<Option<SocketAddr>>,
    lookups: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Kept {
    host: String,
    port: u16,
    at: Instant,
    /// The addresses, or why there are none (its kind and text).
    answer: Result<Vec<SocketAddr>, (io::ErrorKind, String)>,
}

impl Resolver {
    /// A connection to the first address of `host:port` that accepts one
    /// (an IP literal is parsed, not looked up).
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let addrs = self.addresses(host, port).await?;
        self.connect_to(host, addrs).await
    }

    /// `host:port`'s addresses: an IP literal's own, or a name's from
    /// [`Resolver::lookup`].
    pub async fn addresses(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
            Err(_) => self.lookup(host, port).await,
        }
    }

    /// A connection to the first of `addrs` (the addresses of `host`) that
    /// accepts one: raced when there are several.
    pub async fn connect_to(&self, host: &str, addrs: Vec<SocketAddr>) -> io::Result<TcpStream> {
        // The first address tried, when there is a race to lose.
        let mut first = None;
        let tried = match addrs[..] {
            [] => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no address"),
            )),
            // The common case (an IP literal, a name with one address): no race.
            [one] => TcpStream::connect(one).await,
            _ => {
                let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
                let addrs = order(addrs, last);
                first = Some(addrs[0]);
                first_to_connect(addrs, ATTEMPT_DELAY).await
            }
        };
        let peer = tried.as_ref().ok().and_then(|s| s.peer_addr().ok());
        if let (Some(first), Some(peer)) = (first, peer) {
            // Once per change of address (the winner goes first next time):
            // a dead address of the slot's name shows in the log.
            if peer != first {
                tracing::info!(
                    name = host,
                    first = %first,
                    connected = %peer,
                    "the first address of a slot's name refused the connection or did not answer in {} ms; another took it",
                    ATTEMPT_DELAY.as_millis()
                );
            }
        }
        if peer.is_some() {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = peer;
        }
        tried
    }

    /// `host:port`'s addresses: the kept ones while fresh, else a lookup
    /// (or the lookup another request is making).
    pub async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let mut kept = self.kept.lock().await;
        if let Some(k) = kept
            .as_ref()
            .filter(|k| k.host == host && k.port == port && k.at.elapsed() < FRESH)
        {
            return told(&k.answer);
        }
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    Err((
                        io::ErrorKind::NotFound,
                        format!("{host} resolved to no address"),
                    ))
                } else {
                    Ok(addrs)
                }
            }
            Err(e) => Err((e.kind(), e.to_string())),
        };
        let told = told(&answer);
        *kept = Some(Kept {
            host: host.to_owned(),
            port,
            at: Instant::now(),
            answer,
        });
        told
    }

    /// Lookups started so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A kept answer as a lookup's result.
fn told(answer: &Result<Vec<SocketAddr>, (io::ErrorKind, String)>) -> io::Result<Vec<SocketAddr>> {
    match answer {
        Ok(addrs) => Ok(addrs.clone()),
        Err((kind, message)) => Err(io::Error::new(*kind, message.clone())),
    }
}

/// The order `addrs` are tried in: `last` first when it is among them (the
/// address that answered last time: a dead first address then costs the
/// slot's first new connection its delay, not every one), then as
/// [`interleave`] puts them.
pub fn order(addrs: Vec<SocketAddr>, last: Option<SocketAddr>) -> Vec<SocketAddr> {
    let mut addrs = interleave(addrs);
    if let Some(i) = last.and_then(|l| addrs.iter().position(|a| *a == l)) {
        addrs[..=i].rotate_right(1);
    }
    addrs
}

/// `addrs` in the order they are tried: the resolver's first, then the
/// families in turn, each in the resolver's order (RFC 8305 §4).
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_v6 = first.is_ipv6();
    let mut out = Vec::with_capacity(addrs.len());
    let (same, other): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let (mut same, mut other) = (same.into_iter(), other.into_iter());
    loop {
        match (same.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Connects to the first of `addrs` that accepts: an attempt starts on each
/// in turn, the next when every attempt so far failed or `delay` after the
/// last one started; all that were started go on until one connects. The
/// error, when none does, is the first attempt's.
pub async fn first_to_connect(addrs: Vec<SocketAddr>, delay: Duration) -> io::Result<TcpStream> {
    let mut addrs = addrs.into_iter();
    let mut running = Vec::new();
    let mut first_error = None;
    // Fires at once: the first attempt starts on the first poll.
    let mut next_start = pin!(tokio::time::sleep(Duration::ZERO));
    std::future::poll_fn(|cx| loop {
        let start_now = running.is_empty() || next_start.as_mut().poll(cx).is_ready();
        if start_now {
            if let Some(addr) = addrs.next() {
                running.push(Box::pin(TcpStream::connect(addr)));
                next_start.as_mut().reset(Instant::now() + delay);
                continue;
            }
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].as_mut().poll(cx) {
                Poll::Ready(Ok(stream)) => return Poll::Ready(Ok(stream)),
                Poll::Ready(Err(e)) => {
                    first_error.get_or_insert(e);
                    drop(running.swap_remove(i));
                }
                Poll::Pending => i += 1,
            }
        }
        if !running.is_empty() {
            return Poll::Pending;
        }
        // Every attempt so far failed: the next address now, or the end.
        if addrs.len() == 0 {
            return Poll::Ready(Err(first_error.take().unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
            })));
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 80)
    }

    fn any_port() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
    }

    fn v6(last: u16) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last)),
            80,
        )
    }

    #[tokio::test]
    async fn lookups_at_the_same_time_are_one_and_their_answer_is_kept_a_while() {
        let r = std::sync::Arc::new(Resolver::default());
        let lookups: Vec<_> = (0..20)
            .map(|_| {
                let r = std::sync::Arc::clone(&r);
                tokio::spawn(async move { r.lookup("localhost", 80).await })
            })
            .collect();
        for l in lookups {
            let addrs = l.await.expect("join").expect("localhost resolves");
            assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        }
        assert_eq!(r.lookups(), 1, "twenty requests, one lookup");
        r.lookup("localhost", 80).await.expect("kept");
        assert_eq!(r.lookups(), 1);
        // Another port is another name.
        r.lookup("localhost", 81).await.expect("resolves");
        assert_eq!(r.lookups(), 2);
        // Kept for FRESH.
        tokio::time::sleep(FRESH).await;
        r.lookup("localhost", 81).await.expect("resolves");
        assert_eq!(r.lookups(), 3);
    }

    #[tokio::test]
    async fn an_ip_literal_is_never_looked_up() {
        let live = tokio::net::TcpListener::bind(any_port()).await.unwrap();
        let port = live.local_addr().unwrap().port();
        let r = Resolver::default();
        let s = r.connect("127.0.0.1", port).await.expect("connects");
        assert_eq!(s.peer_addr().unwrap(), live.local_addr().unwrap());
        assert_eq!(r.lookups(), 0);
    }

    #[test]
    fn the_address_that_answered_last_goes_first() {
        let addrs = vec![v6(1), v6(2), v4(1), v4(2)];
        assert_eq!(
            order(addrs.clone(), Some(v4(2))),
            vec![v4(2), v6(1), v4(1), v6(2)]
        );
        assert_eq!(order(addrs.clone(), Some(v6(1))), interleave(addrs.clone()));
        // Gone from the name: the resolver's order.
        assert_eq!(order(addrs.clone(), Some(v4(9))), interleave(addrs));
    }

    #[test]
    fn families_alternate_after_the_resolvers_first() {
        assert_eq!(
            interleave(vec![v6(1), v6(2), v6(3), v4(1), v4(2)]),
            vec![v6(1), v4(1), v6(2), v4(2), v6(3)]
        );
        assert_eq!(
            interleave(vec![v4(1), v6(1), v4(2)]),
            vec![v4(1), v6(1), v4(2)]
        );
        assert_eq!(interleave(vec![v4(2), v4(1)]), vec![v4(2), v4(1)]);
        assert_eq!(interleave(vec![]), vec![]);
    }

    /// A listener whose accept queue is full: the kernel drops further
    /// SYNs, so a connection attempt to it hangs as one to a blackholed
    /// address does.
    struct Stuck {
        addr: SocketAddr,
        _listener: tokio::net::TcpListener,
        _queued: Vec<TcpStream>,
    }

    async fn stuck() -> Stuck {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(any_port()).unwrap();
        // A backlog of 0 queues one connection; the next SYN is dropped.
        let listener = sock.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..2 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_millis(100), s.connect(addr)).await
            {
                queued.push(c);
            }
        }
        Stuck {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    /// An address nothing listens on.
    fn refusing() -> SocketAddr {
        let l = std::net::TcpListener::bind(any_port()).unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn an_address_that_never_answers_does_not_hold_up_the_next() {
        let stuck = stuck().await;
        // The full queue drops an attempt: it would hang here.
        let alone = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(stuck.addr));
        assert!(alone.await.is_err(), "the stuck listener accepted");

        let live = tokio::net::TcpListener::bind(any_port()).await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let started = std::time::Instant::now();
        let stream = tokio::time::timeout(
            Duration::from_secs(3),
            first_to_connect(vec![stuck.addr, live_addr], ATTEMPT_DELAY),
        )
        .await
        .expect("the live address was never tried")
        .expect("connected");
        assert_eq!(stream.peer_addr().unwrap(), live_addr);
        let took = started.elapsed();
        assert!(
            took >= ATTEMPT_DELAY,
            "the second address started before the first had its delay: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_address_hands_over_at_once() {
        // A port nothing listens on: refused, and the next address starts
        // without waiting out the delay.
        let closed = refusing();
        let live = tokio::net::TcpListener::bind(any_port()).await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            first_to_connect(vec![closed, live_addr], Duration::from_secs(60)),
        )
        .await
        .expect("waited for the delay after a refusal")
        .expect("connected");
        assert_eq!(stream.peer_addr().unwrap(), live_addr);
    }

    #[tokio::test]
    async fn when_every_address_fails_the_first_error_is_told() {
        let e = first_to_connect(vec![refusing(), refusing()], ATTEMPT_DELAY)
            .await
            .expect_err("nothing listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}
