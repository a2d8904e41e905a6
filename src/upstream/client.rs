//! The client a slot forwards through: a pool of our own HTTP/1.1 connections
//! (TCP, rustls for `https://` upstreams; the wire format is [`h1`]'s), and
//! the classification of its failures.
//!
//! A slot's client talks to one upstream, so a request takes the newest idle
//! connection from one list (LIFO: the warmest, and the oldest age out),
//! writes itself on it from its own task and reads the answer's head; the
//! response body reads the rest off the same socket and puts the connection
//! back the moment its last byte is read (see [`UpstreamBody`]). No
//! connection task, no channel between tasks, no key hashing.
//!
//! A connection is handed out only while it is open (`Conn::is_open`: the
//! upstream neither closed it nor sent anything while it idled). A request
//! whose first write failed on a reused connection (it closed in the
//! meantime) is sent once more on a new one. A connection idle for
//! `pool_idle_timeout`, or for less than the slot says it keeps one open
//! (its answers' `Keep-Alive: timeout=N`, less a margin), is not handed out:
//! a request sent as the slot closes it would be lost. Those, and the ones
//! the upstream closed, are dropped by a reaper task that lives as long as
//! the pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::upstream::body::{BodyState, BodyWatch, ForwardBody};
use crate::upstream::h1::{
    self, Conn, Decoded, Framing, HttpError, Io, ProxyHeaders, RawHead, ReqFraming,
};
use crate::upstream::lines::{RawAnswer, RawHeaders};
use crate::upstream::timer::HeadTimer;

/// Kinds of upstream failure, the `kind` label of `mcpflip_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// The connection was refused or could not be made.
    Connect,
    /// The connection could not be made within `connect_timeout`.
    Timeout,
    /// The connection broke (reset, closed early, unparsable answer).
    Reset,
    /// No response head within the response header timeout.
    ResponseTimeout,
    /// An answer's body (not an event stream) paused longer than the
    /// response body timeout, after its head was passed on.
    ReadTimeout,
    /// The connection broke inside an answer's body, after its head was
    /// passed on (reset, closed before the body's end, a chunk that cannot
    /// be framed): the client's answer was cut.
    BodyReset,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 6] = [
        Self::Connect,
        Self::Timeout,
        Self::Reset,
        Self::ResponseTimeout,
        Self::ReadTimeout,
        Self::BodyReset,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::ResponseTimeout => "response_timeout",
            Self::ReadTimeout => "read_timeout",
            Self::BodyReset => "body_reset",
        }
    }
}

/// Why the client got no response head.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request URI names no upstream (`scheme://authority`).
    #[error("the request URI {0} names no upstream")]
    NoUpstream(Uri),
    /// The TCP connection could not be made.
    #[error("connecting to {authority} failed")]
    Connect {
        authority: Authority,
        #[source]
        source: std::io::Error,
    },
    /// The connection was not made within `connect_timeout`: the name's
    /// lookup, the TCP connection or the TLS handshake (`step`).
    #[error("{step} {authority} took longer than connect_timeout ({timeout:?})")]
    ConnectTimeout {
        step: ConnectStep,
        authority: Authority,
        timeout: Duration,
    },
    /// The upstream's host is not a name TLS can verify.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The TLS handshake failed.
    #[error("TLS handshake with {authority} failed")]
    Tls {
        authority: Authority,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the connection broke, the answer did not parse).
    #[error(transparent)]
    Http(HttpError),
    /// No response head within the wait (`UpstreamClient::send`).
    #[error("no response head within {0:?}")]
    ResponseTimeout(Duration),
}

/// The step of making a connection that ran out of `connect_timeout`, as
/// its error message says it: a resolver that does not answer is not a slot
/// that does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStep {
    Lookup,
    Tcp,
    Tls,
}

impl std::fmt::Display for ConnectStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectStep::Lookup => "looking up the name of",
            ConnectStep::Tcp => "connecting to",
            ConnectStep::Tls => "the TLS handshake with",
        })
    }
}

/// Why a forwarded request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The client's request body failed (timed out or broke): the client's fault.
    #[error("the client's request body failed ({0:?})")]
    ClientBody(BodyState),
    /// The slot failed.
    #[error("{kind:?}")]
    Upstream {
        kind: UpstreamError,
        /// The client error, for the message (none for a response timeout).
        error: Option<ClientError>,
        /// The request's body, untouched, when no connection to the slot
        /// could be made (nothing of the request was sent nor read from the
        /// client): the forwarder, which kept the head, may send it elsewhere
        /// without having copied it before.
        unsent: Unsent,
    },
}

/// The most idle connections a slot keeps (what hyper-util's pool was given).
const MAX_IDLE: usize = 1024;

/// A cheaply cloneable pooled client; clones share the pool.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
    /// The slot's response header timeout.
    response_timeout: Duration,
    /// The longest pause between two reads of an answer's body that is not
    /// an event stream (`[proxy] response_body_timeout`); `None`: untimed.
    body_timeout: Option<Duration>,
}

/// A slot's connections and how new ones are made.
struct Pool {
    /// Idle connections, newest last, one list per thread index (modulo):
    /// a worker takes back the connections its own reactor drives (see
    /// `proxy::workers`). A short lock, never held across an await: a push
    /// or a pop (a few closed ones skipped at most).
    idle: Box<[Mutex<Vec<Idle>>]>,
    idle_timeout: Duration,
    connect_timeout: Duration,
    tls: tokio_rustls::TlsConnector,
    /// What `tls` trusts and presents (`https://` slots), for `reload`.
    live: Option<Arc<crate::tls::SlotTls>>,
    /// The reaper of expired idle connections runs.
    reaping: std::sync::atomic::AtomicBool,
    /// Connections made so far (the slot's counter, which outlives its
    /// clients: `mcpflip_upstream_connections_total`).
    made: Arc<std::sync::atomic::AtomicU64>,
    /// The slot's addresses (`upstream::connect`).
    resolver: crate::upstream::connect::Resolver,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle_timeout", &self.idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Where a connection goes: an idle one serves only requests for the same.
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    authority: Authority,
}

impl Target {
    /// The same connection target, by the authority's bytes: a slot's
    /// client always names its upstream with the same text, and `http`'s
    /// case-insensitive `Authority` comparison cost 280 instructions per
    /// checkout (bench/PROFILE.md). Two spellings of one host only keep
    /// separate idle connections.
    fn same(&self, https: bool, authority: &Authority) -> bool {
        self.https == https && self.authority.as_str() == authority.as_str()
    }
}

/// A connection and where it goes, boxed once when it is made: a request
/// moves it out of the pool, through the send and into the response's body
/// as one pointer, not as the 112 bytes of the two (bench/PROFILE.md §42).
struct Pooled {
    conn: Conn,
    target: Target,
}

struct Idle {
    conn: Box<Pooled>,
    since: Instant,
}

/// The response body of an upstream answer, read straight off its
/// connection. The connection goes back to the pool the moment the body's
/// last byte is read (when the upstream keeps it alive); a body dropped
/// before its end closes the connection (the rest of the answer would
/// otherwise be read as the next one's).
pub struct UpstreamBody {
    conn: Option<Box<Pooled>>,
    framing: Framing,
    keep_alive: bool,
    /// The answer's `Content-Type` says `text/event-stream`.
    event_stream: bool,
    /// Where the connection goes back to.
    home: Option<Arc<Pool>>,
    /// The answer's headers as they came, when asked for ([`Answer::Raw`]):
    /// its map is empty then. Boxed: an open stream's body holds the field.
    raw: Option<Box<RawHeaders>>,
}

/// A request's body a failed send gives back, when none of the request went
/// out (its head is the caller's: the sends borrow it).
pub type Unsent = Option<Box<ForwardBody>>;

/// How [`UpstreamClient::send`] gives an answer's headers.
impl RawAnswer for UpstreamBody {
    fn take_raw_headers(&mut self) -> Option<Box<RawHeaders>> {
        self.raw.take()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// In the response's `HeaderMap`.
    Map,
    /// As they came, in the body ([`UpstreamBody::take_raw_headers`]); the
    /// response's map is empty.
    Raw,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

/// The response header timeout of a client made without one.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

impl UpstreamClient {
    /// A client for plain `http://` upstreams.
    pub fn new(connect_timeout: Duration, pool_idle: Duration) -> Self {
        // Never used for TLS (the slot is http://): an empty root store is enough.
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Self::with_tls(connect_timeout, pool_idle, tls, None)
    }

    /// A client that speaks TLS to `https://` upstreams with `tls` (and plain
    /// HTTP to `http://` ones); `live` is what `tls` trusts and presents,
    /// kept so that `reload` can swap it.
    pub fn with_tls(
        connect_timeout: Duration,
        pool_idle: Duration,
        mut tls: rustls::ClientConfig,
        live: Option<Arc<crate::tls::SlotTls>>,
    ) -> Self {
        // HTTP/1.1 only upstream.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let lists = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
        let pool = Pool {
            idle: (0..lists).map(|_| Mutex::new(Vec::new())).collect(),
            idle_timeout: pool_idle,
            connect_timeout,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            live,
            reaping: std::sync::atomic::AtomicBool::new(false),
            made: Arc::default(),
            resolver: Default::default(),
        };
        Self {
            pool: Arc::new(pool),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            body_timeout: None,
        }
    }

    /// This client counting the connections it makes in `made` (shared
    /// with the slot's clients before and after it). Call on a new client,
    /// whose pool no clone shares yet.
    pub fn with_connection_counter(mut self, made: Arc<std::sync::atomic::AtomicU64>) -> Self {
        if let Some(pool) = Arc::get_mut(&mut self.pool) {
            pool.made = made;
        }
        self
    }

    /// This client with `timeout` as its response header timeout.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// This client with `timeout` as the longest pause between two reads of
    /// an answer's body (not an event stream's) that [`UpstreamClient::send`]
    /// gets; the body then fails with [`HttpError::ReadTimeout`].
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = Some(timeout);
        self
    }

    /// What this client trusts and presents to an `https://` slot.
    pub fn tls(&self) -> Option<&Arc<crate::tls::SlotTls>> {
        self.pool.live.as_ref()
    }

    /// The slot's response header timeout.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Idle connections a request could take now: open, not expired.
    pub fn idle_connections(&self) -> usize {
        let now = Instant::now();
        (0..self.pool.idle.len())
            .map(|i| {
                self.pool
                    .lock_at(i)
                    .iter_mut()
                    .map(|e| {
                        e.conn.conn.fresh(e.since, now, self.pool.idle_timeout)
                            && e.conn.conn.is_open()
                    })
                    .filter(|&open| open)
                    .count()
            })
            .sum()
    }

    /// Sends `req` (an absolute URI: `scheme://authority/path`) as is; probes
    /// keep their own timeout.
    pub async fn request(
        &self,
        req: Request<ForwardBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let uri = req.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ClientError::NoUpstream(uri.clone()));
        };
        let https = *scheme == Scheme::HTTPS;
        let authority = authority.clone();
        // The request line is origin-form: the URI's path and query.
        let (head, body) = req.into_parts();
        let mut resp = self
            .pool
            .send(https, &authority, &head, body, None, None, Answer::Map)
            .await
            .map_err(|(e, _)| e)?;
        // The probe's own timeout bounds it whole; a connection a client's
        // request used before keeps no timeout of its.
        resp.body_mut().time_reads(None);
        Ok(resp)
    }

    /// Sends a client's request (`head` and `body`) to `scheme://authority`
    /// (the request URI is sent as its request target: origin-form) and waits
    /// at most `wait.period` for the response head, counted from the end of
    /// the client's body (`wait.body`): a client that sends its body slowly
    /// does not make the slot look slow. A failure is the client's when its body
    /// failed, however the connection reports it.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps each parameter twice in its state: the body once (bench/PROFILE.md §22)"
    )]
    #[expect(
        clippy::too_many_arguments,
        reason = "the request's head is borrowed, its body given: the head is not moved at each level (bench/PROFILE.md §23)"
    )]
    pub fn send<'a>(
        &'a self,
        scheme: &'a Scheme,
        authority: &'a Authority,
        head: &'a http::request::Parts,
        body: ForwardBody,
        proxy: Option<&'a ProxyHeaders>,
        wait: Wait<'a>,
        answer: Answer,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + 'a {
        async move {
            let https = *scheme == Scheme::HTTPS;
            let watch = wait.body;
            match self
                .pool
                .send(https, authority, head, body, proxy, Some(&wait), answer)
                .await
            {
                Ok(mut resp) => {
                    resp.body_mut().time_reads(self.body_timeout);
                    Ok(resp)
                }
                Err((ClientError::ResponseTimeout(_), _)) => Err(SendError::Upstream {
                    kind: UpstreamError::ResponseTimeout,
                    error: None,
                    unsent: None,
                }),
                Err((e, unsent)) => {
                    let state = watch.state();
                    if state.is_client_fault() {
                        return Err(SendError::ClientBody(state));
                    }
                    Err(SendError::Upstream {
                        kind: classify(&e),
                        error: Some(e),
                        unsent,
                    })
                }
            }
        }
    }
}

/// How long [`UpstreamClient::send`] waits for a response head: `period`,
/// counted from the end of the client's body (`body`).
#[derive(Clone, Copy)]
pub struct Wait<'a> {
    pub period: Duration,
    pub body: &'a BodyWatch,
}

/// `exchange` within `wait` (from `start`), on `timer` (a kept connection's,
/// or made now): `None` when the slot gave no head in time. A client still
/// sending its body (each pause bounded by its body timeout), or a slot still
/// taking it, has not started the clock: a period in which the slot took
/// nothing of a body still coming restarts it.
///
/// `exchange` is pinned where the caller made it: moved in here, it would be
/// copied once more per request (bench/PROFILE.md §19).
async fn within<F: Future>(
    mut exchange: Pin<&mut F>,
    timer: &mut Option<HeadTimer>,
    start: Instant,
    wait: &Wait<'_>,
) -> Option<F::Output> {
    let mut deadline = start + wait.period;
    let timer = timer.get_or_insert_with(|| HeadTimer::new(deadline));
    let mut frames = wait.body.frames();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        loop {
            ready!(timer.poll_until(deadline, cx));
            let body = wait.body;
            if body.state() == BodyState::Sending
                && (body.waiting_on_client() || body.frames() != frames)
            {
                frames = body.frames();
                deadline = Instant::now() + wait.period;
                continue;
            }
            return Poll::Ready(None);
        }
    })
    .await
}

impl Pool {
    /// This thread's idle list.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.lock_at(crate::shard::index())
    }

    fn lock_at(&self, i: usize) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding the lock leaves a valid Vec: carry on.
        self.idle[i % self.idle.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The newest idle connection to `target` that is still open (and not
    /// idle since before `now - idle_timeout`).
    fn checkout(&self, https: bool, authority: &Authority, now: Instant) -> Option<Box<Pooled>> {
        let mut idle = self.lock();
        // Newest first; closed or expired ones met on the way are dropped. A
        // slot's client has one target, so the newest is almost always the
        // one taken.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if !idle[i].conn.target.same(https, authority) {
                continue;
            }
            let mut e = idle.remove(i);
            if e.conn.conn.fresh(e.since, now, self.idle_timeout) && e.conn.conn.is_open() {
                return Some(e.conn);
            }
        }
        None
    }

    /// Sends the request (`head` and `body`) on an idle connection or a new
    /// one. When no connection could be made, the error carries the body
    /// back, unsent.
    /// With `wait`, the whole of it (a new connection included) is bounded
    /// by `wait` (`ClientError::ResponseTimeout`).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps each parameter twice in its state: the body once (bench/PROFILE.md §22)"
    )]
    #[expect(
        clippy::too_many_arguments,
        reason = "the target is borrowed as its two parts: nothing of it is cloned per request"
    )]
    fn send<'a>(
        self: &'a Arc<Self>,
        https: bool,
        authority: &'a Authority,
        head: &'a http::request::Parts,
        body: ForwardBody,
        proxy: Option<&'a ProxyHeaders>,
        wait: Option<&'a Wait<'a>>,
        answer: Answer,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, (ClientError, Unsent)>> + 'a {
        async move {
            let start = Instant::now();
            let (mut conn, mut reused) = match self.checkout(https, authority, start) {
                Some(conn) => (conn, true),
                // Boxed: a new connection (TCP, maybe TLS) is the cold path, and
                // its future would otherwise make every request's future larger.
                None => match Box::pin(self.connect_within(https, authority, start, wait)).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err((e, Some(Box::new(body)))),
                },
            };
            let mut body = body;
            let answered = loop {
                let sent = match wait {
                    None => exchange(&mut conn.conn, authority, head, body, proxy, reused).await,
                    Some(wait) => {
                        // Out of the connection while it is borrowed for the
                        // exchange; back with it after.
                        let mut timer = conn.conn.timer.take();
                        let sent = {
                            let sent = std::pin::pin!(exchange(
                                &mut conn.conn,
                                authority,
                                head,
                                body,
                                proxy,
                                reused
                            ));
                            within(sent, &mut timer, start, wait).await
                        };
                        conn.conn.timer = timer;
                        match sent {
                            Some(sent) => sent,
                            None => return Err((ClientError::ResponseTimeout(wait.period), None)),
                        }
                    }
                };
                match sent {
                    Ok(answered) => {
                        if let Some(secs) = answered.idle_hint {
                            conn.conn.note_idle_hint(secs);
                        }
                        break answered;
                    }
                    // A reused connection closed before the request went out:
                    // nothing was sent, so it is safe to send once more.
                    Err((_, Some(unsent))) if reused => {
                        conn = match Box::pin(self.connect_within(https, authority, start, wait))
                            .await
                        {
                            Ok(conn) => conn,
                            Err(e) => return Err((e, Some(unsent))),
                        };
                        body = *unsent;
                        reused = false;
                    }
                    Err((e, _)) => return Err((ClientError::Http(e), None)),
                }
            };
            let (map, raw) = match answer {
                Answer::Raw => (http::HeaderMap::new(), Some(Box::new(answered.headers))),
                Answer::Map => match answered.headers.into_map() {
                    Ok(map) => (map, None),
                    Err(e) => return Err((ClientError::Http(e.into()), None)),
                },
            };
            let mut resp = Response::new(UpstreamBody {
                conn: Some(conn),
                framing: answered.framing,
                keep_alive: answered.keep_alive,
                event_stream: answered.event_stream,
                home: Some(Arc::clone(self)),
                raw,
            });
            *resp.status_mut() = answered.status;
            *resp.version_mut() = answered.version;
            *resp.headers_mut() = map;
            // A body that ended with its head (204, Content-Length: 0): the
            // connection is ready again now.
            resp.body_mut().release_if_ended();
            Ok(resp)
        }
    }

    /// A new connection to `authority` (over TLS when `https`), within what
    /// is left of `wait`.
    async fn connect_within(
        &self,
        https: bool,
        authority: &Authority,
        start: Instant,
        wait: Option<&Wait<'_>>,
    ) -> Result<Box<Pooled>, ClientError> {
        let target = Target {
            https,
            authority: authority.clone(),
        };
        let conn = match wait {
            None => self.connect(&target).await,
            Some(wait) => tokio::time::timeout_at(start + wait.period, self.connect(&target))
                .await
                .map_err(|_| ClientError::ResponseTimeout(wait.period))?,
        }?;
        self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Box::new(Pooled { conn, target }))
    }

    /// A new connection to `target`.
    async fn connect(&self, target: &Target) -> Result<Conn, ClientError> {
        let authority = &target.authority;
        // `host()` keeps an IPv6 literal's brackets.
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = authority
            .port_u16()
            .unwrap_or(if target.https { 443 } else { 80 });
        // The lookup and the TCP connection share connect_timeout.
        let deadline = Instant::now() + self.connect_timeout;
        let timed_out = |step| ClientError::ConnectTimeout {
            step,
            authority: authority.clone(),
            timeout: self.connect_timeout,
        };
        let failed = |source| ClientError::Connect {
            authority: authority.clone(),
            source,
        };
        let addrs = tokio::time::timeout_at(deadline, self.resolver.addresses(host, port))
            .await
            .map_err(|_| timed_out(ConnectStep::Lookup))?
            .map_err(failed)?;
        let tcp = tokio::time::timeout_at(deadline, self.resolver.connect_to(host, addrs))
            .await
            .map_err(|_| timed_out(ConnectStep::Tcp))?
            .map_err(failed)?;
        // Small requests and answers: never wait for Nagle.
        let _ = tcp.set_nodelay(true);
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| ClientError::ServerName(host.to_owned()))?;
            // The handshake is part of connecting: a slot that took the
            // connection but reads nothing (it stopped accepting) is not a
            // slow answer (nginx bounds its handshake with an upstream by
            // `proxy_connect_timeout` too).
            let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
                .await
                .map_err(|_| timed_out(ConnectStep::Tls))?
                .map_err(|source| ClientError::Tls {
                    authority: authority.clone(),
                    source,
                })?;
            Ok(Conn::new(Io::Tls(Box::new(tls))))
        } else {
            Ok(Conn::new(Io::Plain(tcp)))
        }
    }

    /// Puts a connection that is ready for a request back, newest last.
    fn put(self: &Arc<Self>, conn: Box<Pooled>) {
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            return;
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        if !self
            .reaping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }
}

/// Writes the request (`parts` and `body`) on `conn` and reads the response
/// head. The whole request is written before the answer is read (MCP's
/// requests are small JSON bodies). On a failed first write the body comes
/// back in the error when nothing of it was taken yet, or all of it was (then
/// buffered): the caller, which kept the head, may send it on another
/// connection.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps each parameter twice in its state: the body once (bench/PROFILE.md §22)"
)]
fn exchange<'a>(
    conn: &'a mut Conn,
    authority: &'a Authority,
    parts: &'a http::request::Parts,
    mut body: ForwardBody,
    proxy: Option<&'a ProxyHeaders>,
    reused: bool,
) -> impl Future<Output = Result<RawHead, (HttpError, Unsent)>> + 'a {
    async move {
        let framing = ReqFraming::of(
            &parts.method,
            body.is_end_stream(),
            body.size_hint().exact(),
        );
        // `ReqFraming::None` is a body at its end already.
        let mut ended = body.is_end_stream();
        // The body's first bytes, when they are already here, go with the head
        // in one write.
        let mut first: Option<Bytes> = None;
        if !ended {
            let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
            match polled.await {
                Poll::Ready(Some(Ok(frame))) => {
                    first = frame.into_data().ok();
                    ended = body.is_end_stream();
                }
                Poll::Ready(None) => ended = true,
                Poll::Ready(Some(Err(e))) => return Err((HttpError::Body(e), None)),
                Poll::Pending => {}
            }
        }
        // The body's first bytes, their chunk's size line and the last chunk.
        let room = first.as_ref().map_or(0, |d| d.len() + 24);
        let mut out = Vec::new();
        h1::encode_head(parts, authority.as_str(), proxy, framing, room, &mut out);
        let mut sent: u64 = 0;
        if let Some(d) = first.as_ref().filter(|d| !d.is_empty()) {
            sent = d.len() as u64;
            match framing {
                ReqFraming::Chunked => h1::encode_chunk(d, &mut out),
                _ => out.extend_from_slice(d),
            }
        }
        if ended && framing == ReqFraming::Chunked {
            out.extend_from_slice(h1::LAST_CHUNK);
        }
        let written = match conn.io.write(&out).await {
            Ok(n) => n,
            Err(e) => {
                let unsent = match first {
                    _ if !reused => None,
                    None => Some(body),
                    Some(d) if ended => Some(ForwardBody::from(d)),
                    Some(_) => None,
                };
                return Err((e.into(), unsent.map(Box::new)));
            }
        };
        // The common request went whole in that write; the rest of a larger
        // one goes while the slot's answer is watched for.
        let mut early = None;
        if written < out.len() || !ended {
            let rest = Rest {
                out,
                at: written,
                data: Bytes::new(),
                framing,
                ended,
                sent,
                listening: true,
                early: None,
                closed: None,
            };
            // Boxed: off the common path, its state stays out of the
            // request's future.
            early = Box::pin(rest.send(conn, &mut body, &parts.method))
                .await
                .map_err(|e| (e, None))?;
            if let Some(head) = early.take_if(|h| !h.keep_alive) {
                // It ended the sending: nothing more goes to the slot.
                return Ok(head);
            }
        } else if let ReqFraming::Length(n) = framing {
            if sent != n {
                return Err((HttpError::BodyLength, None));
            }
        }
        conn.io
            .flush()
            .await
            .map_err(|e| (HttpError::from(e), None))?;
        if let Some(head) = early {
            return Ok(head);
        }
        loop {
            // Nothing read yet (the usual case right after the request went
            // out): no parse of an empty buffer.
            if !conn.buf.is_empty() {
                if let Some(head) =
                    h1::parse_response_raw(&mut conn.buf, &parts.method).map_err(|e| (e, None))?
                {
                    return Ok(head);
                }
            }
            match std::future::poll_fn(|cx| conn.poll_fill(cx)).await {
                Ok(0) => return Err((HttpError::Closed, None)),
                Ok(_) => {}
                Err(e) => return Err((e.into(), None)),
            }
        }
    }
}

/// What is left to send of a request after its first write: the rest of
/// that write (`out` from `at`), then the body's frames as they come. The
/// slot's answer is watched for meanwhile (RFC 9112 §9.5): a slot may answer
/// before it has read the whole body (a 413 to a body too large, a 401) and
/// stop reading. An error answer, or one that closes the connection, is then
/// the answer and the rest is not sent (waiting to write it, the proxy
/// answered 502 once the slot closed); any other early answer is kept until
/// the whole body went.
struct Rest {
    out: Vec<u8>,
    at: usize,
    /// A frame's data being written as it came (`Content-Length` framing).
    data: Bytes,
    framing: ReqFraming,
    /// The body has nothing more (what is in `out` or `data` goes still).
    ended: bool,
    /// Body bytes taken so far.
    sent: u64,
    /// The slot's side is still read (it has not closed it, nor answered).
    listening: bool,
    /// An answer that came before the body's end and lets it go on.
    early: Option<RawHead>,
    /// The write that found the slot's connection closed: what the slot
    /// sent before it closed is read first (its answer may be there, not
    /// yet seen: the reactor tells of the write's error before the read's
    /// readiness).
    closed: Option<std::io::Error>,
}

impl Rest {
    /// Sends the rest: `Ok(None)` once all of it went and no answer came
    /// yet; `Ok(Some(head))` for an answer that came first. One that ended
    /// the sending leaves its connection to carry no other request (the
    /// slot has not read the whole request).
    async fn send(
        mut self,
        conn: &mut Conn,
        body: &mut ForwardBody,
        method: &http::Method,
    ) -> Result<Option<RawHead>, HttpError> {
        let refused = std::future::poll_fn(|cx| self.poll_send(cx, conn, body, method)).await?;
        if let Some(mut head) = refused {
            head.keep_alive = false;
            return Ok(Some(head));
        }
        if let ReqFraming::Length(n) = self.framing {
            if self.sent != n {
                return Err(HttpError::BodyLength);
            }
        }
        Ok(self.early)
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn,
        body: &mut ForwardBody,
        method: &http::Method,
    ) -> Poll<Result<Option<RawHead>, HttpError>> {
        loop {
            if self.closed.is_some() {
                match ready!(conn.poll_fill(cx)) {
                    Ok(n) if n > 0 => {
                        if let Some(head) = h1::parse_response_raw(&mut conn.buf, method)? {
                            return Poll::Ready(Ok(Some(head)));
                        }
                        continue;
                    }
                    _ => {
                        let e = self.closed.take().expect("checked");
                        return Poll::Ready(Err(e.into()));
                    }
                }
            }
            if self.listening {
                match conn.poll_fill(cx) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        if let Some(head) = h1::parse_response_raw(&mut conn.buf, method)? {
                            if !head.keep_alive
                                || head.status.is_client_error()
                                || head.status.is_server_error()
                            {
                                return Poll::Ready(Ok(Some(head)));
                            }
                            self.early = Some(head);
                            self.listening = false;
                        }
                        continue;
                    }
                    // Closed or broken: the write tells whether the request
                    // can still go (a slot may close only its sending side).
                    Poll::Ready(_) => self.listening = false,
                    Poll::Pending => {}
                }
            }
            let pending = if self.at < self.out.len() {
                &self.out[self.at..]
            } else {
                &self.data[..]
            };
            if !pending.is_empty() {
                let n = match ready!(Pin::new(&mut conn.io).poll_write(cx, pending)) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                        ) && self.early.is_none() =>
                    {
                        self.closed = Some(e);
                        continue;
                    }
                    Err(e) => return Poll::Ready(Err(e.into())),
                };
                if n == 0 {
                    return Poll::Ready(Err(
                        std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                    ));
                }
                if self.at < self.out.len() {
                    self.at += n;
                } else {
                    bytes::Buf::advance(&mut self.data, n);
                }
                continue;
            }
            if self.ended {
                return Poll::Ready(Ok(None));
            }
            self.out.clear();
            self.at = 0;
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    self.ended = body.is_end_stream();
                    let d = frame.into_data().unwrap_or_default();
                    self.sent += d.len() as u64;
                    match self.framing {
                        ReqFraming::Chunked => {
                            if !d.is_empty() {
                                h1::encode_chunk(&d, &mut self.out);
                            }
                            if self.ended {
                                self.out.extend_from_slice(h1::LAST_CHUNK);
                            }
                        }
                        _ => self.data = d,
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(HttpError::Body(e))),
                None => {
                    self.ended = true;
                    if self.framing == ReqFraming::Chunked {
                        self.out.extend_from_slice(h1::LAST_CHUNK);
                    }
                }
            }
        }
    }
}

/// Closes a pool's idle connections once they have idled `timeout`, or the
/// upstream closed them, until the pool is gone.
async fn reap(pool: Weak<Pool>, timeout: Duration) {
    // As hyper-util's pool: check every `timeout`, at least every 90 ms apart.
    let every = timeout.max(Duration::from_millis(90));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        for i in 0..pool.idle.len() {
            // Dropped outside the lock.
            let expired: Vec<Idle> = pool
                .lock_at(i)
                .extract_if(.., |e| {
                    !e.conn.conn.fresh(e.since, now, timeout) || !e.conn.conn.is_open()
                })
                .collect();
            drop(expired);
        }
    }
}

impl UpstreamBody {
    /// The answer's headers as they came, when they were asked for that way
    /// ([`Answer::Raw`]) and not taken yet.
    pub fn raw_headers(&self) -> Option<&RawHeaders> {
        self.raw.as_deref()
    }

    pub fn raw_headers_mut(&mut self) -> Option<&mut RawHeaders> {
        self.raw.as_deref_mut()
    }

    /// Whether the answer's `Content-Type` says `text/event-stream`
    /// (`mcp::headers::is_event_stream`), noted when its head was parsed: no
    /// lookup in its map.
    pub fn is_event_stream(&self) -> bool {
        self.event_stream
    }

    /// Times the pauses between reads of this body with `timeout` (never
    /// an event stream's): past it, the body fails with
    /// [`HttpError::ReadTimeout`]. Set on its connection, which the next
    /// answer read on it sets again.
    pub fn time_reads(&mut self, timeout: Option<Duration>) {
        if let Some(p) = self.conn.as_deref_mut() {
            p.conn.read_timeout = timeout;
        }
    }

    /// Once the body has ended: its connection goes back to the pool when
    /// the upstream keeps it alive and sent nothing more, else it closes.
    fn release_if_ended(&mut self) {
        if self.framing == Framing::Empty {
            self.framing = Framing::Done;
        }
        if self.framing != Framing::Done {
            return;
        }
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.conn.buf.is_empty() {
                if let Some(pool) = self.home.take() {
                    pool.put(conn);
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_deref_mut().map(|p| &mut p.conn) else {
                return Poll::Ready(None);
            };
            match h1::decode(&mut this.framing, &mut conn.buf) {
                Ok(Decoded::Data(d)) => {
                    // The last bytes: the connection goes back now, so that
                    // the body ends with this frame.
                    this.release_if_ended();
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Decoded::End) => {
                    this.release_if_ended();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let filled = match conn.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    // An event stream is never timed: one test of a flag it
                    // holds, on the relay's path.
                    if this.event_stream {
                        return Poll::Pending;
                    }
                    let Some(timeout) = conn.read_timeout else {
                        return Poll::Pending;
                    };
                    // A clock read per pause, not per read: a body that
                    // arrives with its head never pauses.
                    let deadline = *conn
                        .read_deadline
                        .get_or_insert_with(|| Instant::now() + timeout);
                    let timer = conn.timer.get_or_insert_with(|| HeadTimer::new(deadline));
                    ready!(timer.poll_until(deadline, cx));
                    this.conn = None;
                    return Poll::Ready(Some(Err(HttpError::ReadTimeout(timeout))));
                }
            };
            match filled {
                Ok(0) => {
                    this.conn = None;
                    if this.framing == Framing::UntilClose {
                        this.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(HttpError::Closed)));
                }
                Ok(_) => conn.read_deadline = None,
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done | Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Ended but not yet given back: give it back; otherwise it is
        // dropped, and with it the connection.
        self.release_if_ended();
    }
}

/// Sorts a client error into the `kind` label of `mcpflip_upstream_errors_total`,
/// by its variant and the types in its source chain (never by its text).
pub fn classify(err: &ClientError) -> UpstreamError {
    match err {
        ClientError::ConnectTimeout { .. } => UpstreamError::Timeout,
        // The OS reports its own connect timeout as `TimedOut`.
        ClientError::Connect { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
            UpstreamError::Timeout
        }
        ClientError::NoUpstream(_)
        | ClientError::Connect { .. }
        | ClientError::ServerName(_)
        | ClientError::Tls { .. } => UpstreamError::Connect,
        ClientError::Http(HttpError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            UpstreamError::Timeout
        }
        ClientError::Http(_) => UpstreamError::Reset,
        ClientError::ResponseTimeout(_) => UpstreamError::ResponseTimeout,
    }
}

#[cfg(test)]
mod tests {
    //! The pool against a raw upstream on loopback that counts its connections.
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Clone, Copy, PartialEq)]
    enum Upstream {
        /// Answers every request, keeps the connection.
        KeepAlive,
        /// Answers one request (without `Connection: close`), then hangs up.
        CloseAfterOne,
        /// Promises 10 bytes, sends 2, then waits.
        Stall,
        /// Answers every request with a chunked body, keeps the connection.
        Chunked,
        /// Answers as `KeepAlive` after as many milliseconds as the request
        /// target's `?ms=` says.
        Delay,
    }

    /// A response's body rides in every move of the response up the proxy's
    /// layers (about ten per request): its connection and where that goes
    /// stay behind one pointer (bench/PROFILE.md §42). Inline, the two were
    /// 112 of the body's 160 bytes.
    #[test]
    fn a_response_body_holds_its_connection_behind_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Option<Box<Pooled>>>(),
            std::mem::size_of::<usize>()
        );
        let body = std::mem::size_of::<UpstreamBody>();
        assert!(body <= 48, "UpstreamBody is {body} bytes");
    }

    struct Counts {
        accepted: AtomicUsize,
        closed: AtomicUsize,
    }

    async fn upstream(mode: Upstream) -> (Authority, Arc<Counts>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let counts = Arc::new(Counts {
            accepted: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
        });
        let c = Arc::clone(&counts);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                c.accepted.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    c.closed.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        if mode == Upstream::Delay {
                            let head = String::from_utf8_lossy(&buf);
                            let ms = head
                                .split_once("?ms=")
                                .and_then(|(_, r)| r.split(' ').next())
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        buf.clear();
                        let answer: &[u8] = match mode {
                            Upstream::Stall => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
                            Upstream::Chunked => {
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1;x=y\r\nk\r\n0\r\nT: 1\r\n\r\n"
                            }
                            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        };
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                        if mode == Upstream::CloseAfterOne {
                            c.closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        (authority, counts)
    }

    fn get(authority: &Authority) -> Request<ForwardBody> {
        Request::builder()
            .uri(format!("http://{authority}/"))
            .header(http::header::HOST, authority.as_str())
            .body(ForwardBody::from(Bytes::new()))
            .unwrap()
    }

    /// `client.send` of a GET for `target`, waiting at most `wait`: its
    /// body, or the error.
    async fn send_waiting(
        client: &UpstreamClient,
        authority: &Authority,
        target: &str,
        wait: Duration,
    ) -> Result<Bytes, SendError> {
        let req = Request::builder()
            .uri(target)
            .header(http::header::HOST, authority.as_str())
            .body(ForwardBody::from(Bytes::new()))
            .unwrap();
        let (head, body) = req.into_parts();
        let resp = client
            .send(
                &Scheme::HTTP,
                authority,
                &head,
                body,
                None,
                Wait {
                    period: wait,
                    body: &BodyWatch::default(),
                },
                Answer::Map,
            )
            .await?;
        Ok(resp.into_body().collect().await.unwrap().to_bytes())
    }

    /// A kept connection's head timer (set once, for an earlier request's
    /// deadline) times each request by its own wait: a longer wait after a
    /// short one is not cut at the earlier deadline, a shorter one after a
    /// long one is not let run to the later one.
    #[tokio::test]
    async fn each_request_on_a_kept_connection_is_timed_by_its_own_wait() {
        let (authority, counts) = upstream(Upstream::Delay).await;
        let client = UpstreamClient::new(Duration::from_secs(5), Duration::from_secs(90));
        let short = Duration::from_millis(300);
        // Sets the connection's timer for now + 300 ms.
        let body = send_waiting(&client, &authority, "/?ms=0", short).await;
        assert_eq!(&body.unwrap()[..], b"ok");
        // 600 ms to answer, with 5 s to wait: the timer fires at the first
        // request's deadline and is set again for this one's.
        let body = send_waiting(&client, &authority, "/?ms=600", Duration::from_secs(5)).await;
        assert_eq!(&body.unwrap()[..], b"ok");
        assert_eq!(
            counts.accepted.load(Ordering::SeqCst),
            1,
            "one kept connection"
        );
        // The timer is now set for 5 s after the second request began; this
        // one waits 300 ms for an answer that takes 3 s.
        let began = Instant::now();
        let err = send_waiting(&client, &authority, "/?ms=3000", short)
            .await
            .expect_err("an answer slower than the wait");
        assert!(
            matches!(
                err,
                SendError::Upstream {
                    kind: UpstreamError::ResponseTimeout,
                    ..
                }
            ),
            "{err:?}"
        );
        let took = began.elapsed();
        assert!(
            took >= short && took < Duration::from_millis(2500),
            "timed out after {took:?}, not at its own 300 ms"
        );
        assert_eq!(
            counts.accepted.load(Ordering::SeqCst),
            1,
            "one kept connection"
        );
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    /// `n` requests in a row on an upstream answering as `mode` does: every
    /// answer is `ok`, and all of them go over one connection.
    async fn sequential_on_one_connection(mode: Upstream, n: usize) {
        let (authority, counts) = upstream(mode).await;
        let client = UpstreamClient::new(Duration::from_secs(5), Duration::from_secs(90));
        for _ in 0..n {
            let resp = client.request(get(&authority)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            assert_eq!(client.idle_connections(), 1);
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn one_connection_serves_sequential_requests() {
        sequential_on_one_connection(Upstream::KeepAlive, 5).await;
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_and_its_connection_reused() {
        sequential_on_one_connection(Upstream::Chunked, 3).await;
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_never_handed_out() {
        let (authority, counts) = upstream(Upstream::CloseAfterOne).await;
        let client = UpstreamClient::new(Duration::from_secs(5), Duration::from_secs(90));
        for round in 1..=3 {
            let resp = client.request(get(&authority)).await.unwrap();
            assert_eq!(resp.status(), 200, "round {round}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            // The upstream hung up on the idle connection; once the pool's
            // connection has seen it, nothing is offered.
            until("the pool sees the close", || client.idle_connections() == 0).await;
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let (authority, counts) = upstream(Upstream::KeepAlive).await;
        let client = UpstreamClient::new(Duration::from_secs(5), Duration::from_millis(100));
        let resp = client.request(get(&authority)).await.unwrap();
        resp.into_body().collect().await.unwrap();
        until("the upstream sees its idle connection closed", || {
            counts.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(client.idle_connections(), 0);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_along() {
        let (authority, counts) = upstream(Upstream::Stall).await;
        let client = UpstreamClient::new(Duration::from_secs(5), Duration::from_secs(90));
        for _ in 0..2 {
            let resp = client.request(get(&authority)).await.unwrap();
            let mut body = resp.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&first[..], b"ok");
            drop(body);
            assert_eq!(client.idle_connections(), 0);
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
        until("both cut connections closed", || {
            counts.closed.load(Ordering::SeqCst) == 2
        })
        .await;
    }

    /// A body that pauses past the client's body timeout fails with
    /// `ReadTimeout` (and its connection closes); a probe's body (`request`)
    /// on the same client is not timed by it, nor made untimed for good.
    #[tokio::test]
    async fn a_body_that_pauses_past_the_body_timeout_fails() {
        let (authority, counts) = upstream(Upstream::Stall).await;
        let timeout = Duration::from_millis(200);
        let client = UpstreamClient::new(Duration::from_secs(5), Duration::from_secs(90))
            .with_body_timeout(timeout);
        let watch = BodyWatch::default();
        let sent = |client: UpstreamClient| {
            let authority = authority.clone();
            let watch = &watch;
            async move {
                let (head, body) = get(&authority).into_parts();
                let wait = Wait {
                    period: Duration::from_secs(5),
                    body: watch,
                };
                let resp = client
                    .send(
                        &Scheme::HTTP,
                        &authority,
                        &head,
                        body,
                        None,
                        wait,
                        Answer::Map,
                    )
                    .await
                    .unwrap();
                resp.into_body()
            }
        };
        for _ in 0..2 {
            let mut body = sent(client.clone()).await;
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&first[..], b"ok");
            let started = Instant::now();
            let err = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("the pause is timed")
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(err, HttpError::ReadTimeout(t) if t == timeout),
                "{err}"
            );
            assert!(started.elapsed() >= timeout);
            // The probe between the two sends does not time out.
            let resp = client.request(get(&authority)).await.unwrap();
            let mut probe = resp.into_body();
            probe.frame().await.unwrap().unwrap();
            assert!(
                tokio::time::timeout(timeout * 3, probe.frame())
                    .await
                    .is_err(),
                "a probe's body was timed by the client's body timeout"
            );
        }
        until("the timed-out connections closed", || {
            counts.closed.load(Ordering::SeqCst) >= 2
        })
        .await;
        assert_eq!(client.idle_connections(), 0);
    }

    #[tokio::test]
    async fn failures_are_classified_by_variant() {
        // Nothing listens on a port just freed: refused, a connect failure.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let authority = Authority::try_from(format!("127.0.0.1:{port}")).unwrap();
        let client = UpstreamClient::new(Duration::from_secs(5), Duration::from_secs(90));
        let err = client.request(get(&authority)).await.unwrap_err();
        assert_eq!(classify(&err), UpstreamError::Connect, "{err}");
        // An upstream that answers garbage: the exchange broke.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        tokio::spawn(async move {
            if let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(b"not http at all\r\n\r\n").await;
            }
        });
        let err = client.request(get(&authority)).await.unwrap_err();
        assert_eq!(classify(&err), UpstreamError::Reset, "{err}");
    }
}
