//! The public listener: accept (backing off at the descriptor limit), cap the
//! open connections, terminate TLS, serve HTTP/1.1 and HTTP/2 with hyper-util's
//! auto connection under the connection timers of `conn`, and hand every
//! request to the [`Forwarder`].
//!
//! Malformed HTTP is answered 4xx by hyper and ends only that connection. At
//! `max_connections` a new connection is answered 503 (when it sends a request
//! head in time) or closed, so the proxy degrades before the kernel's
//! descriptor limit; so is one whose address holds `max_connections_per_ip`
//! (`per_ip`), so that one client cannot take them all; a refused request's
//! unread body is read off before the close (lingering, as after a 413), so
//! that a client still writing reads its 503. Plain HTTP sent to
//! the TLS listener gets a 400 that says so (`plaintext`).
//!
//! With `[drain] migrate = "replay"`, `migrate` keeps each session's
//! `initialize` and moves a session whose slot is gone to a serving one;
//! `splice` moves a legacy HTTP+SSE session with its open GET stream.

pub mod accept;
pub mod affinity;
pub mod body;
pub mod conn;
pub mod exchange;
pub mod forward;
pub mod h1;
pub mod host_guard;
pub mod migrate;
pub mod per_ip;
pub mod plaintext;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod scan;
pub mod splice;
pub mod sse;
pub mod trusted;
pub mod workers;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, StatusCode};
use hyper::body::Body as _;
use hyper::service::service_fn;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::{ClientFault, LocalResponse, ProxyStats, Refusal};
use crate::upstream::lines::RawAnswer;
use crate::upstream::RequestBody;
use conn::{Conn, Connections, End, Limits, Tracked};
pub use forward::Forwarder;

/// The public listener's TLS config, swapped by `reload` (new handshakes get the
/// new certificates; established connections keep theirs).
pub type TlsSlot = Arc<ArcSwap<rustls::ServerConfig>>;

/// HTTP/2 streams one client connection may have open at once: nginx's
/// default (`http2_max_concurrent_streams`; HAProxy's is 100). Each may
/// hold a connection to a slot, so `max_connections_per_ip`, which counts
/// TCP connections, bounds a client's slot connections at this many times
/// its own.
const MAX_STREAMS: u32 = 128;
/// Connections being refused at once (each waits at most `header_read_timeout`
/// for a request head to answer 503 to); beyond this they are closed at once.
const MAX_REFUSING: usize = 64;

/// How the public listener treats its connections.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    pub max_connections: usize,
    pub tls: Option<TlsSlot>,
    /// Every connection starts with a PROXY protocol header
    /// (`[listen] proxy_protocol`).
    pub proxy_protocol: bool,
    /// The workers client connections are spread over.
    pub workers: Arc<workers::Workers>,
    /// The open connections per client address, when capped
    /// (`[proxy] max_connections_per_ip`).
    pub per_ip: Option<Arc<per_ip::PerIp>>,
}

/// Serves the public listener until `stop` is cancelled, then stops accepting
/// and returns the open connections, to be closed gracefully.
pub async fn serve(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    settings: Settings,
    stop: CancellationToken,
) -> Arc<Connections> {
    let builder = Arc::new(conn::Builders::new(MAX_STREAMS));
    let connections = Connections::new();
    let refusing = Arc::new(AtomicUsize::new(0));
    let stats = Arc::clone(&forwarder.stats);
    let mut backoff = accept::Backoff::new("public");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = backoff.accept(|| listener.accept()) => accepted,
        };
        let head_deadline = Instant::now() + settings.limits.header_read;
        let _ = tcp.set_nodelay(true);
        let tls = settings
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
        if stats.open_connections() >= settings.max_connections as u64 {
            stats.count_refused(Refusal::MaxConnections);
            if refusing.load(Ordering::Relaxed) >= MAX_REFUSING {
                continue; // dropped: closed at once
            }
            let refusal = Refusing::new(&refusing);
            let builder = Arc::clone(&builder);
            let (stats, max) = (Arc::clone(&stats), settings.max_connections);
            let proxy_protocol = settings.proxy_protocol;
            let header_read = settings.limits.header_read;
            tokio::spawn(async move {
                let _refusal = refusal;
                let mut tcp = tcp;
                // The header first: the 503 goes to the request after it.
                if proxy_protocol
                    && client_of(&mut tcp, peer, head_deadline, &stats)
                        .await
                        .is_none()
                {
                    return;
                }
                let at = Accepted {
                    tcp,
                    tls,
                    head_deadline,
                };
                let answer = Refused(Refusal::MaxConnections, max);
                at.refuse(&builder, answer, header_read, &stats).await;
            });
            continue;
        }
        let counted = stats.connection();
        let entered = connections.enter();
        let forwarder = Arc::clone(&forwarder);
        let builder = Arc::clone(&builder);
        let shutdown = connections.shutdown_token().clone();
        let winding_down = stop.clone();
        let limits = settings.limits;
        let proxy_protocol = settings.proxy_protocol;
        let per_ip = settings.per_ip.clone();
        let refusing = Arc::clone(&refusing);
        settings.workers.spawn(tcp, move |mut tcp| async move {
            let conn = Conn::new();
            let stats = Arc::clone(&forwarder.stats);
            let addr = if proxy_protocol {
                match client_of(&mut tcp, peer, head_deadline, &stats).await {
                    Some(client) => client,
                    None => return,
                }
            } else {
                peer
            };
            let trusted = forwarder.trusted.contains(addr.ip());
            // Counted against its address, a trusted proxy's aside.
            let _held = match per_ip.filter(|_| !trusted) {
                None => None,
                Some(per_ip) => match per_ip.enter(addr.ip()) {
                    Some(held) => Some(held),
                    None => {
                        stats.count_refused(Refusal::MaxConnectionsPerIp);
                        drop((counted, entered));
                        if refusing.load(Ordering::Relaxed) >= MAX_REFUSING {
                            return; // closed at once
                        }
                        let _refusal = Refusing::new(&refusing);
                        tracing::debug!(peer = %addr, "refused: the address holds max_connections_per_ip");
                        let at = Accepted {
                            tcp,
                            tls,
                            head_deadline,
                        };
                        let answer = Refused(Refusal::MaxConnectionsPerIp, per_ip.max() as usize);
                        Box::pin(at.refuse(&builder, answer, limits.header_read, &stats)).await;
                        return;
                    }
                },
            };
            let _counted = (counted, entered);
            let peer = Arc::new(forward::Peer::new(addr, conn.clone(), trusted));
            let service = service_fn(move |req: http::Request<RequestBody>| {
                // A request head arrived: the connection is busy until its
                // response body is gone.
                let h1 = req.version() < http::Version::HTTP_2;
                let active = peer.conn.begin(h1);
                let forwarder = Arc::clone(&forwarder);
                let peer = Arc::clone(&peer);
                let winding_down = winding_down.is_cancelled();
                // Boxed: hyper moves the service's future into the
                // connection's in-flight slot (a copy of its whole size per
                // request) and keeps that slot, sized for the future, for the
                // connection's life (an open SSE stream's too). Boxed, both
                // are a pointer. Made in its box (`boxed_in_place`): made on
                // the stack and moved in, all of its 4.9 KB were copied.
                boxed_in_place(|| async move {
                    let mut resp = forwarder.forward(req, &peer).await;
                    if winding_down {
                        // The listener stopped (shutdown, or a new process
                        // took it over): this connection's next request
                        // must go to a fresh connection. HTTP/1.1 is told in
                        // the response, so that the client never sends on a
                        // connection closed under it (an idle close races
                        // the client's next request); HTTP/2 gets GOAWAY.
                        if h1 {
                            resp.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        } else {
                            peer.conn.wind_down();
                        }
                    }
                    Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, active)))
                })
            });
            let at = Accepted {
                tcp,
                tls,
                head_deadline,
            };
            // Counted until its socket is closed (a lingering close too).
            let end = at
                .drive(&builder, service, &conn, limits, &stats, &shutdown)
                .await;
            match end {
                End::HeaderTimeout => {
                    stats.count_client_fault(ClientFault::HeaderTimeout);
                    tracing::debug!(peer = %addr, "no request head within header_read_timeout: closed");
                }
                End::SendTimeout => {
                    stats.count_client_fault(ClientFault::SendTimeout);
                    tracing::debug!(peer = %addr, "the client took nothing of its answer for send_timeout: dropped");
                }
                End::Closed | End::Dropped => {}
            }
        });
    }
    connections
}

/// The client's address on a listener that takes the PROXY protocol: the
/// one the load balancer's header names, else `peer`'s; `None` when the
/// connection brought no valid header by `deadline` (counted; the caller
/// closes it). Boxed: the read's state (a timer among it) would otherwise
/// size every connection's task.
async fn client_of(
    tcp: &mut TcpStream,
    peer: std::net::SocketAddr,
    deadline: Instant,
    stats: &ProxyStats,
) -> Option<std::net::SocketAddr> {
    match Box::pin(proxy_protocol::read(tcp, deadline)).await {
        Ok(client) => Some(client.unwrap_or(peer)),
        Err(e) => {
            stats.count_client_fault(ClientFault::ProxyProtocol);
            tracing::debug!(peer = %peer, error = %e, "closed: no valid PROXY protocol header");
            None
        }
    }
}

/// The future `make` makes, made in its box: the box is allocated first and
/// the future written into it, so that only what it holds before its first
/// poll is written, not its whole size copied from the stack
/// (bench/PROFILE.md §21).
fn boxed_in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// One connection being refused (bounded by [`MAX_REFUSING`]).
struct Refusing(Arc<AtomicUsize>);

impl Refusing {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Refusing(Arc::clone(count))
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection refused at a cap, and the cap.
#[derive(Debug, Clone, Copy)]
struct Refused(Refusal, usize);

impl Refused {
    /// The answer: 503, `Retry-After`, and the connection closes.
    fn answer(self) -> http::Response<body::ResponseBody> {
        let Refused(why, max) = self;
        let message = match why {
            Refusal::MaxConnections => format!(
                "the proxy holds its maximum of {max} client connections ([proxy] max_connections); retry shortly"
            ),
            Refusal::MaxConnectionsPerIp => format!(
                "your address holds its maximum of {max} connections to the proxy ([proxy] max_connections_per_ip); close one, or retry shortly"
            ),
        };
        let mut resp = forward::local_error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            why.as_str(),
            &message,
        );
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    }
}

/// A connection just accepted, with the TLS it is to speak (if the listener
/// has it) and its first-head deadline.
struct Accepted {
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    head_deadline: Instant,
}

impl Accepted {
    /// Answers the connection's first request with `refused`'s 503 and
    /// closes it; closed unanswered when no request head comes within
    /// `header_read`.
    async fn refuse(
        self,
        builders: &conn::Builders,
        refused: Refused,
        header_read: Duration,
        stats: &ProxyStats,
    ) {
        let limits = Limits {
            header_read,
            // Answer once, then close.
            idle: Duration::ZERO,
            send: header_read,
        };
        let conn = Conn::new();
        let service = {
            let conn = conn.clone();
            service_fn(move |req: http::Request<RequestBody>| {
                let h1 = req.version() < http::Version::HTTP_2;
                let active = conn.begin(h1);
                // A body it never reads: read off after the answer, or the
                // close resets the answer out of a client still writing.
                if h1 && matches!(req.body(), RequestBody::Hyper(b) if !b.is_end_stream()) {
                    conn.linger();
                }
                async move { Ok::<_, Infallible>(refused.answer().map(|b| Tracked::new(b, active))) }
            })
        };
        // Still counted among the refusing (bounded by MAX_REFUSING) until
        // its socket is closed, lingering too.
        let never = CancellationToken::new();
        self.drive(builders, service, &conn, limits, stats, &never)
            .await;
    }

    /// Runs the TLS handshake where there is one, then serves the
    /// connection with [`conn::drive`]; a failed handshake is `Closed`.
    /// A connection a request asked to close lingering ([`Conn::linger`])
    /// is read off before this returns (until `shutdown` at the latest).
    async fn drive<S, B>(
        self,
        builders: &conn::Builders,
        service: S,
        conn: &Conn,
        limits: Limits,
        stats: &ProxyStats,
        shutdown: &CancellationToken,
    ) -> End
    where
        S: hyper::service::Service<
                http::Request<RequestBody>,
                Response = http::Response<B>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body<Data = bytes::Bytes> + RawAnswer + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Accepted {
            tcp,
            tls,
            head_deadline,
        } = self;
        conn.set_socket(std::os::fd::AsRawFd::as_raw_fd(&tcp));
        let timed = conn::Timed {
            conn,
            limits,
            head_deadline,
            shutdown,
        };
        let end = match tls {
            None => {
                let proto = builders.sniff(&tcp, head_deadline).await;
                serve_io(builders, proto, tcp, service, timed).await
            }
            // Boxed: the handshake's and a TLS connection's state would
            // otherwise size every connection's task, plain ones included
            // (8.7 KiB for the handshake alone); a TLS connection allocates
            // far more than this box for its buffers anyway.
            Some(acceptor) => {
                Box::pin(async move {
                    match handshake(tcp, acceptor, head_deadline, stats).await {
                        Some(io) => {
                            // Only under `tls.client_ca` does a client present one.
                            if let Some(leaf) =
                                io.get_ref().1.peer_certificates().and_then(|c| c.first())
                            {
                                if let Some(v) = crate::tls::forwarded_client_cert(leaf) {
                                    conn.set_client_cert(v);
                                }
                            }
                            let proto = conn::Builders::by_alpn(io.get_ref().1.alpn_protocol());
                            serve_io(builders, proto, io, service, timed).await
                        }
                        None => End::Closed,
                    }
                })
                .await
            }
        };
        if let Some(socket) = conn.take_lingering() {
            conn::linger(socket, shutdown).await;
        }
        end
    }
}

/// Serves a connection whose protocol is `proto`: HTTP/1.1 with
/// [`h1::Connection`], anything else with hyper-util's.
async fn serve_io<I, S, B>(
    builders: &conn::Builders,
    proto: conn::Proto,
    io: I,
    service: S,
    timed: conn::Timed<'_>,
) -> End
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<RequestBody>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + RawAnswer + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(builder) = builders.hyper(proto) else {
        let http1 = Arc::clone(builders.http1());
        // What the client does not take is timed (`send_timeout`).
        let io = conn::SendWatch::new(io, timed.conn);
        let connection = h1::Connection::new(io, service, http1, timed.conn.clone());
        return conn::run(connection, |c| c.graceful_shutdown(), timed).await;
    };
    // Boxed: hyper-util's connection (HTTP/2, or a protocol still to be
    // told) is about 3.5 KiB; inline, it would size the task of every
    // connection, the HTTP/1.1 ones `h1` serves (an open SSE stream's)
    // included.
    Box::pin(conn::drive(builder, io, h1::Adapt(service), timed)).await
}

/// The TLS handshake, within the connection's first-head deadline. A client
/// that opens with plain HTTP is answered 400 (`plaintext`).
async fn handshake(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    deadline: Instant,
    stats: &ProxyStats,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout_at(deadline, plaintext::is_plain_http(&tcp)).await {
        Err(_) => {
            stats.count_client_fault(ClientFault::HeaderTimeout);
            return None;
        }
        Ok(Err(_)) => return None,
        Ok(Ok(true)) => {
            stats.count_client_fault(ClientFault::NotTls);
            stats.count_local(LocalResponse::NotTls);
            let _ = tokio::time::timeout_at(deadline, plaintext::refuse(tcp)).await;
            return None;
        }
        Ok(Ok(false)) => {}
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            // tokio-rustls gives rustls's own error inside the I/O error.
            let refused_certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|e| {
                    matches!(
                        e,
                        rustls::Error::NoCertificatesPresented
                            | rustls::Error::InvalidCertificate(_)
                    )
                });
            if refused_certificate {
                stats.count_client_fault(ClientFault::ClientCertificate);
                tracing::info!(error = %e, "TLS handshake refused: client certificate (tls.client_ca)");
            } else {
                stats.count_client_fault(ClientFault::TlsHandshake);
                tracing::debug!(error = %e, "TLS handshake failed");
            }
            None
        }
        Err(_) => {
            stats.count_client_fault(ClientFault::HeaderTimeout);
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}
