//! One request's life, in phases: check `Host`/`Origin` → route → rewrite the
//! request → send through the slot's pooled client → classify and rewrite the
//! response → count it.
//!
//! Who failed decides the answer and where it is counted: an upstream fault
//! (connect, reset, no response head in time) is the slot's 502/504 and its
//! `upstream_errors`; a client fault (a request body that breaks or pauses too
//! long) is 400/408, a client error, and never in the slot's 5xx share, so no
//! client can make the watch roll a deploy back.
//!
//! The hot path: one `ArcSwap` load, a few atomics, header edits. No lock, no
//! map lookup, no body buffering.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;

use crate::mcp::headers::{LAST_EVENT_ID, MCP_SESSION_ID};
use crate::mcp::tag::{self, TagSite};
use crate::mcp::Era;
use crate::proxy::affinity::{self, Route};
use crate::proxy::body::{Cut, ResponseBody, Resume};
use crate::proxy::conn::Conn;
use crate::proxy::exchange::Exchange;
use crate::proxy::host_guard::{HostGuard, Refused};
use crate::proxy::migrate::{self, Captured, Sessions, StreamHold, Unreadable};
use crate::proxy::rate_limit::RateLimit;
use crate::proxy::scan::Scan;
use crate::proxy::splice::Splicer;
use crate::proxy::sse::{
    find_in_query, session_params_repeated, EndpointRewrite, EventIdTag, LastEventId,
};
use crate::proxy::trusted::Trusted;
use crate::stats::{ClientFault, LocalResponse, MigrateFailure, ProxyStats};
use crate::table::{Slot, Tables};
use crate::upstream::client::{Answer, Wait};
use crate::upstream::h1::{
    ProxyHeaders, XForwarded, X_FORWARDED_CLIENT_CERT, X_FORWARDED_FOR, X_FORWARDED_HOST,
    X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::upstream::lines::{into_map_headers, BadLine, LineKind, RawHeaders};
use crate::upstream::{BodyState, ForwardBody, RequestBody, SendError, UpstreamError};
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// `tracing::info!` naming the request's id (`[proxy] request_id`) when it
/// has one: the lines of a session's move, found from a client's report.
macro_rules! info_id {
    ($id:expr, $($rest:tt)+) => {
        match $id.and_then(|v: &HeaderValue| v.to_str().ok()) {
            Some(id) => tracing::info!(request_id = %id, $($rest)+),
            None => tracing::info!($($rest)+),
        }
    };
}

/// What the request path needs besides the request itself.
#[derive(Debug)]
pub struct Forwarder {
    pub tables: Arc<Tables>,
    pub preserve_host: bool,
    /// Which forwarding headers go out (`[proxy] x_forwarded`).
    pub x_forwarded: XForwarded,
    /// Every request gets an id in `X-Request-Id` (`[proxy] request_id`).
    pub request_id: bool,
    /// The load balancers whose `X-Forwarded-*` are believed
    /// (`[proxy] trusted_proxies`).
    pub trusted: Trusted,
    /// `https` when the public listener terminates TLS.
    pub proto: HeaderValue,
    /// Idle interval for SSE keep-alive comments (off when `None`).
    pub sse_keepalive: Option<std::time::Duration>,
    /// DNS-rebinding guard on `Host` and `Origin`.
    pub host_guard: HostGuard,
    /// The only clients served (`[proxy] allowed_clients`; `None`: every one).
    pub allowed_clients: Option<Trusted>,
    /// Requests per client address (`[proxy] rate_limit`; `None`: no limit).
    pub rate_limit: Option<RateLimit>,
    /// `[proxy] client_ip_header`: where a trusted proxy names the client,
    /// when not `X-Forwarded-For`.
    pub client_ip_header: Option<HeaderName>,
    /// Longest pause between two reads of a client's request body.
    pub client_body_timeout: Duration,
    /// `[proxy] max_request_body`.
    pub max_request_body: u64,
    /// Response header timeout of a `tools/call` (`Mcp-Method` header).
    pub tool_call_timeout: Duration,
    /// Counters that belong to no slot.
    pub stats: Arc<ProxyStats>,
    /// Captured sessions, when `[drain] migrate = "replay"` (else `None`, and
    /// the request path is exactly what it is without migration).
    pub sessions: Option<Arc<Sessions>>,
    /// With migration on: how long a call in flight at a cut may take to
    /// answer before its stream ends with the JSON-RPC error.
    pub call_grace: Duration,
    /// `[drain] migrate_on_404`: a captured session its slot answers 404 is
    /// replayed and its request sent again.
    pub migrate_on_404: bool,
}

/// Where a request goes, decided on one table snapshot.
enum Decided {
    /// Answered by the proxy (boxed: the rare case).
    Answer(Box<Response<ResponseBody>>),
    /// To this slot, with the tag to strip; the session id the client holds
    /// (migration on).
    Go(Arc<Slot>, Option<TagSite>, Option<HeaderValue>),
    /// Its session (the id the client holds) must move first, or (a legacy
    /// HTTP+SSE session, `true`) has moved with its stream.
    Move(Option<HeaderValue>, bool),
}

impl Decided {
    fn answer(resp: Response<ResponseBody>) -> Decided {
        Decided::Answer(Box::new(resp))
    }
}

/// What `forward` keeps of the one pass over a request's headers.
struct Read {
    session: Option<HeaderValue>,
    host: Option<HeaderValue>,
    last_event_id: Option<HeaderValue>,
    era: Era,
}

/// Where `send_to` sends a request, and what the one pass over its headers
/// found that it needs again (no second lookup).
struct Routed {
    slot: Arc<Slot>,
    /// The session tag to strip.
    site: Option<TagSite>,
    /// The session's new upstream id, when it moved.
    moved: Option<HeaderValue>,
    /// With migration on: the session id the client holds, for the store.
    client_sid: Option<HeaderValue>,
    /// The client's first `Mcp-Session-Id` and first `Host`, as sent.
    session: Option<HeaderValue>,
    host: Option<HeaderValue>,
    era: Era,
    /// The client's first `Last-Event-ID`.
    last_event_id: Option<HeaderValue>,
    h1: bool,
    /// The client's connection is served by [`crate::proxy::h1`], which
    /// writes an answer's header lines as the slot sent them.
    own_h1: bool,
}

/// The client end of a connection, made once per connection: its address, its
/// IP as a header value (`X-Forwarded-For` then costs no formatting), the
/// connection's handle (a forced stream closes it), and whether it is a
/// trusted proxy's (`[proxy] trusted_proxies`).
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
    pub conn: Conn,
    pub trusted: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, conn: Conn, trusted: bool) -> Peer {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            ip,
            conn,
            trusted,
        }
    }
}

impl Forwarder {
    /// Serves one client request, and records it (latency histograms, access
    /// log) when its response body ends.
    ///
    /// The request is routed here rather than in an async function of its
    /// own: each level of those moves the request in and its response out
    /// (bench/PROFILE.md §19).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps each parameter twice in its state (moved into a local); \
                  an async block captures it once: 592 bytes less per request"
    )]
    pub fn forward<'a>(
        &'a self,
        mut req: Request<RequestBody>,
        peer: &'a Peer,
    ) -> impl Future<Output = Response<ResponseBody>> + 'a {
        async move {
            // Scoped: a borrowed local stays in the future's state across every
            // await in its scope (`-Zprint-type-sizes`: the scan twice, 496 of
            // its bytes, before this block).
            let (decided, mut exchange, read, request_id) = {
                let scan = match Forwarder::scan(&mut req) {
                    Ok(scan) => scan,
                    Err(e) => return bad_header(&e),
                };
                let mut exchange = Exchange::start(
                    &req,
                    scan.mcp_method.as_ref(),
                    scan.session.as_ref(),
                    peer.addr,
                );
                // Behind `trusted_proxies`: the client they name, read once.
                let client = (!self.trusted.is_empty()).then(|| self.client_ip(&req, peer));
                if let Some(ip) = client {
                    exchange.client_ip(|| ip);
                }
                if let Some(cert) = peer.conn.client_cert() {
                    exchange.client_cert(cert);
                }
                if exchange.logged() {
                    let ua =
                        RequestBody::first_value(&req, LineKind::UserAgent, &header::USER_AGENT);
                    if let Some(ua) = ua {
                        exchange.user_agent(ua);
                    }
                }
                let request_id = self.request_id.then(|| request_id(&req, peer));
                if let Some(id) = &request_id {
                    exchange.request_id(id);
                }
                let decided = self.decide(&req, &scan, peer, client);
                // A session that moves is of the session era; `site` is known
                // here for the rest.
                let era = match &decided {
                    Decided::Move(_, true) => Era::LegacySse,
                    Decided::Go(_, site, _) => Era::of_headers(
                        req.method(),
                        scan.session.is_some(),
                        scan.mcp_method.is_some(),
                        scan.protocol_version.as_ref().map(HeaderValue::as_bytes),
                        *site,
                        || {
                            RequestBody::any_value(
                                &req,
                                &header::ACCEPT,
                                crate::mcp::era::accepts_event_stream,
                            )
                        },
                    ),
                    _ => Era::Session,
                };
                let read = Read {
                    session: scan.session,
                    host: scan.host,
                    last_event_id: scan.last_event_id,
                    era,
                };
                (decided, exchange, read, request_id)
            };
            let mut resp = 'answer: {
                let (slot, site, moved, client_sid) = match decided {
                    Decided::Answer(resp) => break 'answer *resp,
                    Decided::Go(slot, site, client_sid) => {
                        if let (Some(sessions), Some(sid)) = (&self.sessions, &client_sid) {
                            // Its idle clock (`decide` reset a Streamable
                            // HTTP session's already).
                            if !matches!(site, Some(TagSite::Header { .. })) {
                                sessions.touch(sid.as_bytes());
                            }
                        }
                        (slot, site, None, client_sid)
                    }
                    Decided::Move(client_sid, _) => {
                        // A session that moves reads the map (its replay
                        // copies it) and changes it (its id): all of it,
                        // where `proxy::h1` kept the lines as they came. A
                        // session that stays is passed on from its lines.
                        if let Err(e) = RequestBody::whole_map(&mut req) {
                            break 'answer bad_header(&e);
                        }
                        match Box::pin(self.moved(&req, client_sid.as_ref(), request_id.as_ref()))
                            .await
                        {
                            Ok((slot, inner)) => (slot, None, Some(inner), client_sid),
                            Err(answer) => break 'answer answer,
                        }
                    }
                };
                let routed = Routed {
                    slot,
                    site,
                    moved,
                    client_sid,
                    session: read.session,
                    host: read.host,
                    era: read.era,
                    last_event_id: read.last_event_id,
                    h1: req.version() < http::Version::HTTP_2,
                    own_h1: matches!(req.body(), RequestBody::Read { .. }),
                };
                // By reference: one copy in this future's state.
                self.send_to(req, peer, &mut exchange, routed, request_id.as_ref())
                    .await
            };
            if let Some(id) = request_id {
                // Back to the client, the proxy's own answers included; a
                // slot that sends one (an echo, usually) keeps its own, from
                // its lines or in the map alike.
                let sent = resp.headers().contains_key(X_REQUEST_ID)
                    || resp
                        .body()
                        .raw_headers()
                        .is_some_and(|r| r.values_named(b"x-request-id").next().is_some());
                if !sent {
                    resp.headers_mut().insert(X_REQUEST_ID, id);
                }
            }
            exchange.respond(&resp, resp.body().raw_headers());
            resp.body_mut().attach(exchange);
            resp
        }
    }

    /// What is read of a request's headers: from its lines as they came when
    /// `proxy::h1` kept them (its map is empty then), else from its map; a
    /// line `http` refuses among them (none in practice) makes the whole map,
    /// which fails on it.
    fn scan(req: &mut Request<RequestBody>) -> Result<Scan, BadLine> {
        if let RequestBody::Read {
            lines: Some(lines), ..
        } = req.body()
        {
            if let Some(scan) = Scan::of_lines(lines) {
                return Ok(scan);
            }
        }
        RequestBody::whole_map(req)?;
        Ok(Scan::of(req.headers()))
    }

    /// Where a request goes: the client's checks (`allowed_clients`,
    /// `rate_limit`), the `Host` check, then its session's slot or a pick. A
    /// refusal, or no slot to go to, is answered here. `client` is the
    /// client a trusted proxy names, when `trusted_proxies` is set.
    fn decide(
        &self,
        req: &Request<RequestBody>,
        scan: &Scan,
        peer: &Peer,
        client: Option<IpAddr>,
    ) -> Decided {
        let method = req.method();
        if self.allowed_clients.is_some() || self.rate_limit.is_some() {
            if let Some(answer) = self.refused_client(req, client.unwrap_or(peer.addr.ip())) {
                return answer;
            }
        }
        if http_body::Body::size_hint(req.body())
            .exact()
            .is_some_and(|n| n > self.max_request_body)
        {
            return self.too_large(req, peer);
        }
        if let Some((answer, why)) = unforwardable(req, scan) {
            self.stats.count_local(answer);
            tracing::debug!(%method, uri = %req.uri(), peer = %peer.addr, "{why}");
            let status = StatusCode::from_u16(answer.code()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut resp = jsonrpc_error(status, why);
            close_after_unread_body(&mut resp, req, peer);
            return Decided::answer(resp);
        }
        if let Err(refused) = self
            .host_guard
            .check_scanned(scan, req.uri(), req.version())
        {
            let (status, answer) = match &refused {
                Refused::Malformed(_) => {
                    self.stats.count_client_fault(ClientFault::BadHost);
                    (StatusCode::BAD_REQUEST, LocalResponse::BadHost)
                }
                Refused::NotAllowed(_) => (StatusCode::FORBIDDEN, LocalResponse::HostNotAllowed),
            };
            self.stats.count_local(answer);
            tracing::debug!(%method, uri = %req.uri(), peer = %peer.addr, status = status.as_u16(), "{refused}");
            return Decided::answer(jsonrpc_error(status, &refused.to_string()));
        }
        // With migration on: the session id the client holds, for the store
        // (a legacy HTTP+SSE POST holds it in its URL).
        let legacy = scan.session.is_none();
        let client_sid = self.sessions.as_ref().and_then(|_| match &scan.session {
            Some(sid) => Some(sid.clone()),
            None => legacy_sid(req.uri()),
        });
        let table = self.tables.load();
        match affinity::route(&table, req, scan.session.as_ref()) {
            // A session whose slot cut it, or that moved already: its slot
            // may serve again (a rollback, a process back at its address),
            // but the session lives where it moved, and goes on there.
            Route::Pinned { slot, site }
                if matches!(site, TagSite::Header { .. })
                    && client_sid.as_ref().is_some_and(|sid| {
                        migrate::must_move(&slot) || self.touched_moved(sid)
                    }) =>
            {
                Decided::Move(client_sid, false)
            }
            // A legacy session whose stream moved (or is moving) off the
            // slot its URL names, which may still serve it.
            Route::Pinned {
                site: TagSite::Query { .. },
                ..
            } if self.legacy_moved_off(client_sid.as_ref()) => Decided::Move(client_sid, true),
            Route::Pinned { slot, site } => Decided::Go(slot, Some(site), client_sid),
            Route::Picked(slot) => Decided::Go(slot, None, client_sid),
            Route::SessionGone if client_sid.is_some() => Decided::Move(client_sid, legacy),
            Route::SessionGone => {
                self.stats.count_local(LocalResponse::SessionGone);
                tracing::debug!(%method, uri = %req.uri(), status = 404, "session not found (its slot is gone or not serving)");
                Decided::answer(session_not_found())
            }
            Route::NoSlot => {
                self.stats.count_local(LocalResponse::NoSlot);
                tracing::warn!(%method, uri = %req.uri(), status = 503, "no slot is serving");
                Decided::answer(no_slot())
            }
        }
    }

    /// A request from a client not in `[proxy] allowed_clients` (403), or
    /// over `[proxy] rate_limit` (429 with `Retry-After`). A trusted proxy's
    /// own requests (no client named past it) are neither refused nor
    /// limited, as its connections are not capped.
    #[inline(never)]
    fn refused_client(&self, req: &Request<RequestBody>, client: IpAddr) -> Option<Decided> {
        if self.trusted.contains(client) {
            return None;
        }
        if self
            .allowed_clients
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(client))
        {
            self.stats.count_local(LocalResponse::ClientNotAllowed);
            tracing::debug!(method = %req.method(), uri = %req.uri(), %client, status = 403, "not in [proxy] allowed_clients");
            return Some(Decided::answer(local_error(
                StatusCode::FORBIDDEN,
                None,
                "client_not_allowed",
                &format!(
                    "{client} is not among the clients this proxy serves ([proxy] allowed_clients)"
                ),
            )));
        }
        let limited = self.rate_limit.as_ref()?.check(client).err()?;
        self.stats.count_local(LocalResponse::RateLimited);
        let secs = limited.retry_after_secs();
        tracing::debug!(method = %req.method(), uri = %req.uri(), %client, status = 429, retry_after = secs, "over [proxy] rate_limit");
        let mut resp = local_error(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "rate_limited",
            &format!("too many requests from your address ([proxy] rate_limit); retry in {secs} s"),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        Some(Decided::answer(resp))
    }

    /// The answer to a request whose declared length is over `[proxy]
    /// max_request_body`: 413 before a slot is asked, and before hyper tells
    /// a client that sent `Expect: 100-continue` to go on.
    #[cold]
    #[inline(never)]
    fn too_large(&self, req: &Request<RequestBody>, peer: &Peer) -> Decided {
        let declared = http_body::Body::size_hint(req.body()).lower();
        self.stats.count_client_fault(ClientFault::BodyTooLarge);
        self.stats.count_local(LocalResponse::BodyTooLarge);
        tracing::debug!(method = %req.method(), uri = %req.uri(), peer = %peer.addr, declared, status = 413, "request body over [proxy] max_request_body");
        let mut resp = local_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            "body_too_large",
            &too_large_message(self.max_request_body),
        );
        close_after_unread_body(&mut resp, req, peer);
        Decided::answer(resp)
    }

    /// Where a session whose slot is gone continues: where it moved already,
    /// or a serving slot it is replayed on now. `Err` (counted, logged) when
    /// it cannot move: the answer to give ([`Forwarder::not_moved`]).
    async fn moved(
        &self,
        req: &Request<RequestBody>,
        client_sid: Option<&HeaderValue>,
        request_id: Option<&HeaderValue>,
    ) -> Result<(Arc<Slot>, HeaderValue), Response<ResponseBody>> {
        let (Some(sessions), Some(sid)) = (&self.sessions, client_sid) else {
            return Err(session_not_found());
        };
        let fail = |cause| self.not_moved(cause, req.method(), request_id);
        let captured = Self::captured(sessions, sid).await.map_err(fail)?;
        if captured.is_legacy() {
            // Its stream moves it, or has not (and its failure is counted there).
            return match self.legacy_moved(&captured, None).await {
                Some(found) => Ok(found),
                None => {
                    self.stats.count_local(LocalResponse::SessionGone);
                    info_id!(request_id, method = %req.method(), "a legacy SSE session's stream did not move with its slot: answered 404");
                    Err(session_not_found())
                }
            };
        }
        if let Some(found) = migrate::current(&self.tables.load(), &captured) {
            return Ok(found);
        }
        match migrate::migrate(
            &self.tables,
            &captured,
            None,
            None,
            req.headers(),
            req.uri(),
            sessions.mirror(),
        )
        .await
        {
            Ok((slot, inner, replayed)) => {
                if replayed {
                    self.stats.count_migrated();
                    info_id!(request_id, to = %slot.name, method = %req.method(), "session migrated: initialize replayed on a serving slot");
                }
                Ok((slot, inner))
            }
            Err(cause) => Err(fail(cause)),
        }
    }

    /// The captured session `sid`, read from the fleet if need be; why it
    /// cannot move when it is not to be had.
    async fn captured(
        sessions: &Sessions,
        sid: &HeaderValue,
    ) -> Result<Arc<Captured>, MigrateFailure> {
        match sessions.find(sid.as_bytes()).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(MigrateFailure::NotCaptured),
            Err(Unreadable) => Err(MigrateFailure::ClusterUnavailable),
        }
    }

    /// The answer to a request of a session that could not move, counted and
    /// logged: the SDK-style 404 only where the session cannot move at all
    /// (an MCP client ends its session on it); where its next request may
    /// move it, what says so (502 for a slot that failed the replay, 503 with
    /// no slot serving or the fleet's record unreadable).
    fn not_moved(
        &self,
        cause: MigrateFailure,
        method: &http::Method,
        request_id: Option<&HeaderValue>,
    ) -> Response<ResponseBody> {
        self.stats.count_migrate_failure(cause);
        let (local, resp) = match cause {
            MigrateFailure::NotCaptured | MigrateFailure::Refused => {
                (LocalResponse::SessionGone, session_not_found())
            }
            MigrateFailure::Upstream => (
                LocalResponse::SessionNotMoved,
                local_error(
                    StatusCode::BAD_GATEWAY,
                    None,
                    "session_not_moved",
                    "this session's slot is gone and the serving slot failed while the session was moved there; try again",
                ),
            ),
            MigrateFailure::NoSlot => (LocalResponse::NoSlot, no_slot()),
            MigrateFailure::ClusterUnavailable => {
                (LocalResponse::ClusterUnavailable, cluster_unavailable())
            }
        };
        self.stats.count_local(local);
        info_id!(request_id, %method, %cause, status = resp.status().as_u16(), "session could not migrate");
        resp
    }

    /// Reads a small POST body whole (migration on only): the proxy may need
    /// its method (capture), its id (a cut call's error) or to send it again
    /// (a slot that refused the connection).
    async fn buffer_body(&self, body: RequestBody) -> Result<Bytes, BodyState> {
        // Read with its head by `proxy::h1`: whole already.
        let body = match body {
            RequestBody::Read { body, .. } => return Ok(body.unwrap_or_default()),
            body => body,
        };
        let limited = http_body_util::Limited::new(body, migrate::MAX_BODY as usize);
        match tokio::time::timeout(self.client_body_timeout, limited.collect()).await {
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(_)) => Err(BodyState::Broken),
            Err(_) => Err(BodyState::TimedOut),
        }
    }

    /// Not an `async fn`, as `forward`: the request and the route's fields
    /// are kept once in the future's state.
    fn send_to<'a>(
        &'a self,
        mut req: Request<RequestBody>,
        peer: &'a Peer,
        exchange: &'a mut Exchange,
        routed: Routed,
        request_id: Option<&'a HeaderValue>,
    ) -> impl Future<Output = Response<ResponseBody>> + 'a {
        // Taken apart before the block: taken apart inside it, the route's
        // fields were kept twice in its state, as captured and as locals.
        let Routed {
            mut slot,
            site,
            moved,
            client_sid,
            session,
            host,
            era,
            last_event_id,
            h1,
            own_h1,
        } = routed;
        async move {
            let method = req.method().clone();
            let stats = Arc::clone(&slot.stats);
            // Tool calls run long: they get their own response header timeout.
            let wait = if exchange.is_tools_call() {
                self.tool_call_timeout
            } else {
                slot.client.response_timeout()
            };
            stats.count_era(era);
            exchange.routed(&stats, era);
            // The tagged `Mcp-Session-Id` the client sent: it stays in the map,
            // the encoder cuts the tag off as it writes it (`cut` below), and the
            // answer gives it back as it came.
            let mut tagged_in: Option<(HeaderValue, usize)> = None;
            // A GET that resumes, on the call's own slot, a call's stream which
            // that slot ended unanswered: the stream's `Last-Event-ID` and the
            // call's error event (see `Sessions::note_unanswered`), for a pinned
            // session or a moved one alike.
            let mut resumed: Option<(Bytes, Bytes)> = None;
            if let Some(site) = site {
                // A DELETE ends its session: it is no sign of more requests to come,
                // so it does not hold a drain's quiet period.
                if method != http::Method::DELETE {
                    stats.touch_pinned();
                }
                match site {
                    TagSite::Header { prefix_len } => {
                        tagged_in = session.map(|v| (v, prefix_len));
                        if let Some(last) = resumes(&method, last_event_id.as_ref()) {
                            resumed = self.resumed_call(last, client_sid.as_ref());
                        }
                    }
                    TagSite::Query {
                        value_at,
                        prefix_len,
                    } => strip_query_tag(&mut req, value_at, prefix_len),
                }
            }
            if let Some(inner) = &moved {
                if method != http::Method::DELETE {
                    stats.touch_pinned();
                }
                if let Some(last) = resumes(&method, last_event_id.as_ref()) {
                    if let Some(resp) =
                        self.resumed_unanswered(last, client_sid.as_ref(), &slot.tag_prefix)
                    {
                        return resp;
                    }
                    // A call's stream this slot ended unanswered, resumed here
                    // (its id carries this slot's tag, as the client holds it).
                    resumed = self.resumed_call(last, client_sid.as_ref());
                }
                if era == Era::LegacySse {
                    // The new upstream session, in the POST URL.
                    if let Some(uri) = with_session_value(req.uri(), inner) {
                        *req.uri_mut() = uri;
                    }
                } else {
                    req.headers_mut().insert(MCP_SESSION_ID, inner.clone());
                    migrate::last_event_id(req.headers_mut(), &slot.tag_prefix);
                }
            }
            let inflight = stats.inflight_guard();
            // A legacy SSE session starts with a GET that carries no session id.
            let legacy_get = era.may_open_legacy_stream() && site.is_none() && moved.is_none();

            let mut proxy = self.rewrite_request(&mut req, host, &slot, peer);
            proxy.request_id = request_id.cloned();
            proxy.cut = tagged_in.as_ref().map(|(_, n)| (MCP_SESSION_ID, *n));
            let (head, body) = req.into_parts();
            // Migration on: a small POST is read whole (see `buffer_body`).
            // Its length is its `Content-Length`, as the body knows it (the
            // map is empty while the lines are kept); a chunked body is not
            // small.
            let small = self.sessions.is_some()
                && head.method == http::Method::POST
                && http_body::Body::size_hint(&body)
                    .exact()
                    .is_some_and(|n| n <= migrate::MAX_BODY);
            let (buffered, body, watch) = if small {
                match Box::pin(self.buffer_body(body)).await {
                    Ok(bytes) => (
                        Some(bytes.clone()),
                        ForwardBody::from(bytes),
                        crate::upstream::BodyWatch::default(),
                    ),
                    Err(state) => return self.body_failed(state, &slot, &method, peer, h1),
                }
            } else {
                let (body, watch) =
                    ForwardBody::client(body, self.client_body_timeout, self.max_request_body);
                (None, body, watch)
            };
            // What the store needs of the body: its kind, for every answer.
            // Its id only for a call cut (an error, or a stream's end):
            // read then (`call_id`).
            let kind = buffered
                .as_deref()
                .map_or(migrate::Kind::Other, migrate::kind);
            let call_id = || buffered.as_deref().and_then(migrate::call_id);
            // A legacy session's call: its answer comes on the session's
            // stream, which notes it as it passes; noted before it is sent.
            let mut legacy_call = (era == Era::LegacySse)
                .then(|| self.legacy_call(client_sid.as_ref(), call_id()))
                .flatten();
            // The slot's header lines go to the client as they came, with no
            // `HeaderMap` made of them, when [`crate::proxy::h1`] writes the
            // answer (bench/PROFILE.md §22); its session id is read and set
            // on the lines.
            let answer = if own_h1 { Answer::Raw } else { Answer::Map };
            // The answer's head within `wait`, counted from the body's end.
            let head_wait = Wait {
                period: wait,
                body: &watch,
            };
            // The head stays here: the client borrows it, and a refused
            // request is sent elsewhere from it (bench/PROFILE.md §23).
            let mut head = head;
            let mut sent = slot
                .client
                .send(
                    &slot.scheme,
                    &slot.authority,
                    &head,
                    body,
                    Some(&proxy),
                    head_wait,
                    answer,
                )
                .await;
            let mut moved = moved;
            // The slot refuses connections (its process is gone): a request of a
            // session that can move goes where the session moved, as it was (the
            // client hands its body back unsent, and the head is still here:
            // nothing of it went out, nothing of its body was read). The refusal
            // is the old slot's error; the answer, the new slot's.
            let mut resend = match &mut sent {
                Err(SendError::Upstream {
                    kind: kind @ (UpstreamError::Connect | UpstreamError::Timeout),
                    unsent,
                    ..
                }) if client_sid.is_some() => unsent.take().map(|body| (Some(*kind), body)),
                _ => None,
            };
            // `[drain] migrate_on_404`: the slot answers 404 to a session the
            // proxy captured, which its server lost (restarted on its own):
            // the session is replayed and the request sent again, its body
            // being a GET's none or a small POST's, read whole.
            if resend.is_none()
                && self.migrate_on_404
                && era == Era::Session
                && method != http::Method::DELETE
                && matches!(&sent, Ok(r) if r.status() == StatusCode::NOT_FOUND)
                // Held here, or maybe by another instance of the fleet (its
                // record is read as for a gone slot's session): an id
                // nobody captured costs no replay, and off a fleet no lookup
                // past this process's own.
                && self
                    .sessions
                    .as_ref()
                    .zip(client_sid.as_ref())
                    .is_some_and(|(s, sid)| s.mirror().is_some() || s.get(sid.as_bytes()).is_some())
            {
                resend = match (&method, &buffered) {
                    (&http::Method::GET, _) => {
                        Some((None, Box::new(ForwardBody::from(Bytes::new()))))
                    }
                    (_, Some(b)) => Some((None, Box::new(ForwardBody::from(b.clone())))),
                    _ => None,
                };
            }
            if let Some((refused, retry)) = resend {
                // The retry reads the head's map (a replay copies it) and
                // edits it: made whole from the client's lines, if they were
                // kept, and written from the map from now on.
                if let Some(lines) = proxy.lines.take() {
                    match lines.into_map() {
                        Ok(map) => {
                            head.headers = map;
                            strip_hop_by_hop(&mut head.headers);
                        }
                        Err(e) => return bad_header(&e),
                    }
                }
                let to = Box::pin(self.moved_for(
                    &head.headers,
                    &head.uri,
                    client_sid.as_ref(),
                    refused.is_some().then_some(&*slot.name),
                    if refused.is_some() {
                        None
                    } else {
                        moved.as_ref()
                    },
                    request_id,
                ))
                .await;
                if let Ok((to, inner)) = to {
                    if era == Era::LegacySse {
                        if let Some(uri) = with_session_value(&head.uri, &inner) {
                            head.uri = uri;
                        }
                    } else {
                        if let Some(resp) = resumes(&head.method, head.headers.get(LAST_EVENT_ID))
                            .and_then(|last| {
                                self.resumed_unanswered(last, client_sid.as_ref(), &to.tag_prefix)
                            })
                        {
                            if let Some(kind) = refused {
                                stats.count_upstream_error(kind);
                            }
                            return resp;
                        }
                        head.headers.insert(MCP_SESSION_ID, inner.clone());
                        migrate::last_event_id(&mut head.headers, &to.tag_prefix);
                    }
                    proxy.cut = None;
                    if !self.preserve_host {
                        proxy.host = to.host_header.clone();
                    }
                    // Already in origin form (`rewrite_request`): the pool knows where.
                    if let Some(kind) = refused {
                        stats.count_upstream_error(kind);
                    }
                    sent = Box::pin(to.client.send(
                        &to.scheme,
                        &to.authority,
                        &head,
                        *retry,
                        Some(&proxy),
                        head_wait,
                        answer,
                    ))
                    .await;
                    to.stats.touch_pinned();
                    slot = to;
                    moved = Some(inner);
                }
            }
            let stats = &slot.stats;
            let inflight = if Arc::ptr_eq(inflight.stats(), stats) {
                inflight
            } else {
                stats.inflight_guard()
            };
            let resp = match sent {
                Ok(resp) => {
                    stats.note_answer();
                    resp
                }
                Err(SendError::ClientBody(state)) => {
                    return self.body_failed(state, &slot, &method, peer, h1);
                }
                Err(SendError::Upstream { kind, error, .. }) => {
                    stats.count_upstream_error(kind);
                    if matches!(kind, UpstreamError::Connect | UpstreamError::Timeout) {
                        stats.note_connect_failure();
                    }
                    let (status, code) = match kind {
                        // A send fails before any body is read: never
                        // `ReadTimeout` nor `BodyReset` here, but a timeout
                        // and a broken connection all the same.
                        UpstreamError::Timeout
                        | UpstreamError::ResponseTimeout
                        | UpstreamError::ReadTimeout => {
                            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
                        }
                        UpstreamError::Connect => (StatusCode::BAD_GATEWAY, "upstream_connect"),
                        UpstreamError::Reset | UpstreamError::BodyReset => {
                            (StatusCode::BAD_GATEWAY, "upstream_reset")
                        }
                    };
                    stats.count_response(status.as_u16());
                    stats.count_upstream_failure();
                    let cause = match &error {
                        Some(e) => error_chain(e),
                        None => format!(
                            "no response head within {}",
                            humantime::format_duration(wait)
                        ),
                    };
                    match request_id.and_then(|v| v.to_str().ok()) {
                        // With `[proxy] request_id`: the id the client got,
                        // to find this line from its report.
                        Some(id) => {
                            tracing::warn!(slot = %slot.name, %method, status = status.as_u16(), request_id = %id, error = %cause, "upstream failed")
                        }
                        None => {
                            tracing::warn!(slot = %slot.name, %method, status = status.as_u16(), error = %cause, "upstream failed")
                        }
                    }
                    let reached =
                        matches!(kind, UpstreamError::Reset | UpstreamError::ResponseTimeout);
                    if let Some(id) = reached.then(call_id).flatten() {
                        // Migration on, a call whose slot went away mid-call: the
                        // client gets a JSON-RPC error for its id, not an HTTP error
                        // some SDK clients never turn into one.
                        self.stats.count_interrupted();
                        return json_response(
                            StatusCode::OK,
                            String::from_utf8_lossy(&migrate::interrupted(&id)).into_owned(),
                        );
                    }
                    let mut resp = local_error(status, Some(&slot.name), code, &cause);
                    if watch.state() == BodyState::Sending && h1 {
                        // The rest of the client's body will never be read: close
                        // the connection rather than wait for it (an HTTP/2
                        // stream's window holds the client back on its own).
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        peer.conn.close_soon();
                    }
                    return resp;
                }
            };
            let (mut parts, mut body) = resp.into_parts();
            // Noted when the slot's head was parsed (the same test as the probes').
            let is_sse = body.is_event_stream();
            // A stream's answer says `X-Accel-Buffering: no` once. A slot that
            // says so itself (sse-starlette, under the Python SDK, does) keeps
            // its line; one that says nothing gets ours beside its lines; any
            // other value is replaced in the map. `(said no once, said else)`.
            let (accel_said, accel_other) = match body.raw_headers().filter(|_| is_sse) {
                Some(r) => {
                    let mut v = r.values_named(b"x-accel-buffering");
                    match (v.next(), v.next()) {
                        (None, _) => (false, false),
                        (Some(no), None) if no.eq_ignore_ascii_case(b"no") => (true, false),
                        _ => (false, true),
                    }
                }
                None => (false, false),
            };
            // Lines as they came are written for the common answer: one whose
            // `Connection` names headers to drop, or a stream whose slot set
            // `X-Accel-Buffering` otherwise, is made a map here.
            if accel_other || body.raw_headers().is_some_and(RawHeaders::names_headers) {
                let mut resp = Response::from_parts(parts, body);
                into_map_headers(&mut resp);
                (parts, body) = resp.into_parts();
            }
            exchange.upstream_answered();
            stats.count_response(parts.status.as_u16());
            // 600-999 is no status HTTP defines: a client takes it as a
            // 5xx (RFC 9110 §15), and so does the watch window.
            if parts.status.as_u16() >= 500 {
                stats.count_upstream_failure();
            }
            strip_hop_by_hop(&mut parts.headers);
            if let Some(sessions) = &self.sessions {
                self.record(sessions, &parts, &method, kind, &buffered, &client_sid);
            }
            // Only a 2xx session id is pinned: SDK servers return a fresh id
            // with a 400 too. The id the client gets: a moved session keeps
            // the one it has; any other is tagged with its slot, and a new
            // session whose `initialize` was read whole is captured under it.
            if let Some(call) = legacy_call.as_mut() {
                call.accepted = parts.status.is_success();
            }
            if parts.status.is_success()
                && era == Era::LegacySse
                && kind == migrate::Kind::Initialize
                && matches!(site, Some(TagSite::Query { .. }))
            {
                if let (Some(sessions), Some(sid), Some(init)) =
                    (&self.sessions, &client_sid, &buffered)
                {
                    sessions.capture_legacy(sid, init.clone());
                }
            }
            if parts.status.is_success() {
                let given = |id: &HeaderValue| -> Option<HeaderValue> {
                    if let (Some(_), Some(sid)) = (&moved, &client_sid) {
                        return Some(sid.clone());
                    }
                    let sent = tagged_in.as_ref().map(|(v, _)| v);
                    let tagged = tag::tag_header_as(&slot.tag_prefix, id, sent)?;
                    if let (Some(sessions), migrate::Kind::Initialize, Some(init)) =
                        (&self.sessions, kind, &buffered)
                    {
                        if site.is_none() && moved.is_none() {
                            sessions.capture(&tagged, init.clone());
                        }
                    }
                    Some(tagged)
                };
                if let Some(raw) = body.raw_headers_mut() {
                    if let Some(id) = raw.session_id().and_then(|id| given(&id)) {
                        raw.set_session_id(id);
                    }
                } else if let Some(id) = parts.headers.get_mut(MCP_SESSION_ID) {
                    if let Some(given) = given(id) {
                        *id = given;
                    }
                }
            }
            let body = if is_sse {
                exchange.stream_opened(&method);
                if !accel_said {
                    parts
                        .headers
                        .insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
                }
                let rewrite = (legacy_get && parts.status.is_success()).then(|| {
                    EndpointRewrite::new(slot.tag_prefix.to_string(), slot.authority.to_string())
                });
                // The request is now a live stream; it stops counting as in flight.
                let guard = stats.stream_guard();
                drop(inflight);
                let resume = |last_id, replaces| {
                    self.sessions
                        .as_ref()
                        .zip(client_sid.as_ref())
                        .map(|(sessions, sid)| Resume {
                            sessions: Arc::clone(sessions),
                            sid: sid.clone(),
                            last_id,
                            replaces,
                        })
                };
                let cut = match (call_id(), resumed) {
                    (Some(id), _) => Some(Cut {
                        event: migrate::interrupted_event(&id),
                        stats: Arc::clone(&self.stats),
                        grace: self.call_grace,
                        resume: resume(LastEventId::default(), None),
                    }),
                    // The resumed call's stream goes on here: cut, broken off or
                    // ended unanswered again, it is the call's as the POST's was.
                    (None, Some((last, event))) => Some(Cut {
                        event,
                        stats: Arc::clone(&self.stats),
                        grace: self.call_grace,
                        resume: resume(LastEventId::resuming(last.clone()), Some(last)),
                    }),
                    (None, None) => None,
                };
                // A moved session's event ids name the slot that minted them.
                let ids = moved
                    .as_ref()
                    .map(|_| EventIdTag::new(Bytes::copy_from_slice(slot.tag_prefix.as_bytes())));
                // Migration on: a legacy session's stream moves with it.
                let splicer = match (&rewrite, &self.sessions) {
                    (Some(_), Some(sessions)) => {
                        let headers = match proxy.lines.take() {
                            Some(lines) => lines.into_map().unwrap_or_default(),
                            None => head.headers.clone(),
                        };
                        Some(Splicer::new(
                            Arc::clone(&self.tables),
                            Arc::clone(sessions),
                            Arc::clone(&self.stats),
                            head.uri.clone(),
                            headers,
                            &slot,
                            self.call_grace,
                        ))
                    }
                    _ => None,
                };
                // A captured session's stream keeps it in use while open,
                // however long since its last request (a legacy session's
                // splicer holds it already).
                let hold = match (&self.sessions, &client_sid, &rewrite) {
                    (Some(sessions), Some(sid), None) => {
                        sessions.get(sid.as_bytes()).map(StreamHold::new)
                    }
                    _ => None,
                };
                let body = ResponseBody::stream(
                    body,
                    guard,
                    rewrite,
                    ids,
                    self.sse_keepalive,
                    &peer.conn,
                    cut,
                )
                .holding(hold);
                match splicer {
                    Some(splicer) => body.splice_with(splicer),
                    None => body,
                }
            } else {
                ResponseBody::plain(body, inflight)
            };
            Response::from_parts(parts, body)
        }
    }

    /// A moved session's GET that resumes (`Last-Event-ID`) a call's stream
    /// which a slot it left ended before the answer (SSE polling): the new
    /// slot never had that call, so the resumption is answered here with the
    /// call's JSON-RPC error, as the rest of that stream. Without it the GET
    /// opened a fresh stream on the new session, and the client waited for
    /// its request timeout. `None` for anything else, and for an id the new
    /// slot minted (`prefix`): that slot resumes its own streams.
    fn resumed_unanswered(
        &self,
        last: &[u8],
        client_sid: Option<&HeaderValue>,
        prefix: &str,
    ) -> Option<Response<ResponseBody>> {
        let (sessions, sid) = (self.sessions.as_ref()?, client_sid?);
        if last.starts_with(prefix.as_bytes()) {
            return None;
        }
        let event = sessions.take_unanswered(sid.as_bytes(), last)?;
        self.stats.count_interrupted();
        tracing::info!("a call's stream resumed after its session moved: answered with the call's JSON-RPC error");
        let mut resp = Response::new(ResponseBody::local(event));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        Some(resp)
    }

    /// A GET that resumes (`Last-Event-ID`) a call's stream its slot ended
    /// unanswered, on that slot: that stream's id and the call's error.
    fn resumed_call(
        &self,
        last: &[u8],
        client_sid: Option<&HeaderValue>,
    ) -> Option<(Bytes, Bytes)> {
        let (sessions, sid) = (self.sessions.as_ref()?, client_sid?);
        let event = sessions.peek_unanswered(sid.as_bytes(), last)?;
        Some((Bytes::copy_from_slice(last), event))
    }

    /// [`Forwarder::moved`] for a request already taken apart: away from
    /// `avoid`, the slot that refused its connection, or (`None`) off
    /// upstream session `stale`, which its slot answered 404.
    async fn moved_for(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        client_sid: Option<&HeaderValue>,
        avoid: Option<&str>,
        stale: Option<&HeaderValue>,
        request_id: Option<&HeaderValue>,
    ) -> Result<(Arc<Slot>, HeaderValue), ()> {
        let (Some(sessions), Some(sid)) = (&self.sessions, client_sid) else {
            return Err(());
        };
        let captured = match Self::captured(sessions, sid).await {
            Ok(c) => c,
            Err(cause) => {
                self.stats.count_migrate_failure(cause);
                return Err(());
            }
        };
        if captured.is_legacy() {
            return self.legacy_moved(&captured, avoid).await.ok_or(());
        }
        let from = avoid.unwrap_or("its slot");
        match migrate::migrate(
            &self.tables,
            &captured,
            avoid,
            stale,
            headers,
            uri,
            sessions.mirror(),
        )
        .await
        {
            Ok((slot, inner, replayed)) => {
                if replayed {
                    self.stats.count_migrated();
                    let why = match avoid {
                        Some(_) => "its slot refused the connection",
                        None => "its slot answered 404 (its server lost the session)",
                    };
                    info_id!(request_id, %from, to = %slot.name, "session migrated: {why}");
                }
                Ok((slot, inner))
            }
            Err(cause) => {
                self.stats.count_migrate_failure(cause);
                info_id!(request_id, %from, %cause, "session could not migrate");
                Err(())
            }
        }
    }

    /// Notes a legacy session's call `id` as waiting for its answer.
    /// Boxed: it lives in the request's future across the send, one word
    /// there for every request.
    fn legacy_call(&self, sid: Option<&HeaderValue>, id: Option<Bytes>) -> Option<Box<LegacyCall>> {
        let (sessions, sid, id) = (self.sessions.as_ref()?, sid?, id?);
        let c = sessions.get(sid.as_bytes()).filter(|c| c.is_legacy())?;
        c.note_call(id.clone());
        Some(Box::new(LegacyCall {
            c,
            id,
            accepted: false,
        }))
    }

    /// Resets Streamable HTTP session `sid`'s idle clock (in a fleet, notes
    /// one held elsewhere for its renewal); whether it moved (migration on).
    fn touched_moved(&self, sid: &HeaderValue) -> bool {
        self.sessions
            .as_ref()
            .is_some_and(|s| s.touch_streamable(sid.as_bytes()))
    }

    /// Whether legacy session `sid`'s stream moved, or is moving, off the
    /// slot its POST URL names (migration on).
    fn legacy_moved_off(&self, sid: Option<&HeaderValue>) -> bool {
        let (Some(sessions), Some(sid)) = (&self.sessions, sid) else {
            return false;
        };
        sessions
            .get(sid.as_bytes())
            .is_some_and(|c| c.is_legacy() && (c.has_moved() || c.is_moving()))
    }

    /// Where legacy session `c` lives now (not `avoid`, a slot that just
    /// refused its POST): once its stream's move under way is done, or one
    /// that starts within [`LEGACY_MOVE_WAIT`] (the stream sees its slot go
    /// when it reads next). `None`: its stream did not move.
    async fn legacy_moved(
        &self,
        c: &Captured,
        avoid: Option<&str>,
    ) -> Option<(Arc<Slot>, HeaderValue)> {
        let until = tokio::time::Instant::now() + LEGACY_MOVE_WAIT;
        loop {
            drop(c.moving().await);
            let found = migrate::current(&self.tables.load(), c)
                .filter(|(slot, _)| avoid != Some(&*slot.name));
            if found.is_some() || tokio::time::Instant::now() >= until {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Keeps the store in step with a session's life: capture is done by the
    /// caller; shaping requests are recorded, ended sessions forgotten.
    fn record(
        &self,
        sessions: &Sessions,
        parts: &http::response::Parts,
        method: &http::Method,
        kind: migrate::Kind,
        buffered: &Option<Bytes>,
        client_sid: &Option<HeaderValue>,
    ) {
        let Some(sid) = client_sid else { return };
        let found = parts.status != StatusCode::NOT_FOUND;
        if *method == http::Method::DELETE || !found {
            sessions.remove(sid.as_bytes(), found);
        } else if let (true, migrate::Kind::Shaping, Some(body)) =
            (parts.status.is_success(), kind, buffered)
        {
            sessions.shape(sid.as_bytes(), body.clone());
        }
    }

    /// The answer to a client body that failed: its fault, whatever the
    /// upstream client made of it. A 4xx of the slot, never its 5xx share.
    fn body_failed(
        &self,
        state: BodyState,
        slot: &Slot,
        method: &http::Method,
        peer: &Peer,
        h1: bool,
    ) -> Response<ResponseBody> {
        let (status, fault, code, message) = match state {
            BodyState::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ClientFault::BodyTooLarge,
                "body_too_large",
                too_large_message(self.max_request_body),
            ),
            BodyState::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                ClientFault::BodyTimeout,
                "body_timeout",
                format!(
                    "the request body paused longer than client_body_timeout ({})",
                    humantime::format_duration(self.client_body_timeout)
                ),
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                ClientFault::BodyInvalid,
                "body_invalid",
                "the request body was malformed or cut short".to_owned(),
            ),
        };
        self.stats.count_client_fault(fault);
        slot.stats.count_response(status.as_u16());
        tracing::debug!(slot = %slot.name, %method, status = status.as_u16(), peer = %peer.addr, "{message}");
        let mut resp = local_error(status, Some(&slot.name), code, &message);
        if h1 {
            // The rest of a broken body cannot be told from a next
            // request: close (an HTTP/2 stream ends on its own).
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            peer.conn.close_soon();
            if state == BodyState::TooLarge {
                // The client is still sending: read off after the answer.
                peer.conn.linger();
            }
        }
        resp
    }

    /// Puts `req` in the form a slot gets (origin-form target, HTTP/1.1,
    /// no hop-by-hop headers) and returns the headers the proxy sets on it,
    /// which the upstream client writes in place of the client's.
    /// `host` is the request's first `Host` (found by `proxy::scan`).
    fn rewrite_request(
        &self,
        req: &mut Request<RequestBody>,
        host: Option<HeaderValue>,
        slot: &Slot,
        peer: &Peer,
    ) -> ProxyHeaders {
        let client_host = host.or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // The upstream gets the origin-form target; the pool knows where to
        // send it. An HTTP/1.1 client's URI already is that form (no rebuild);
        // an HTTP/2 one (or an absolute-form h1 one) carries scheme and authority.
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        // Upstream connections are HTTP/1.1 whatever the client spoke.
        if req.version() == http::Version::HTTP_2 {
            join_cookies(req.headers_mut());
        }
        *req.version_mut() = http::Version::HTTP_11;
        strip_hop_by_hop(req.headers_mut());
        let host = match (&client_host, self.preserve_host) {
            (Some(h), true) => h.clone(),
            _ => slot.host_header.clone(),
        };
        let (x_forwarded, forwarded_proto, forwarded_host, forwarded_for) =
            if self.trusted.is_empty() {
                (
                    self.x_forwarded,
                    self.proto.clone(),
                    client_host,
                    peer.ip.clone(),
                )
            } else {
                self.behind_trusted(req, peer, client_host)
            };
        // A trusted proxy's word on its client's certificate, else the one
        // this connection presented (`tls.client_ca`); never a client's own.
        let client_cert = if peer.trusted {
            RequestBody::first_value(
                req,
                LineKind::XForwardedClientCert,
                &X_FORWARDED_CLIENT_CERT,
            )
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .or_else(|| peer.conn.client_cert().cloned())
        } else {
            peer.conn.client_cert().cloned()
        };
        ProxyHeaders {
            x_forwarded,
            host,
            forwarded_host,
            forwarded_proto,
            forwarded_for,
            client_cert,
            request_id: None,
            cut: None,
            // Written upstream in place of the map, which holds only the
            // lines read here.
            lines: req.body_mut().take_lines(),
        }
    }
}

/// A request's id (`[proxy] request_id`): the `X-Request-Id` a trusted
/// proxy sent (1 to 64 visible ASCII bytes), so that one id follows the
/// request through both; else a new one, 128 random bits in hex as nginx's
/// `$request_id` (not a secret: any client sees its own).
fn request_id(req: &Request<RequestBody>, peer: &Peer) -> HeaderValue {
    if peer.trusted {
        let sent = RequestBody::first_value(req, LineKind::XRequestId, &X_REQUEST_ID).filter(|v| {
            (1..=crate::log::access::MAX_REQUEST_ID).contains(&v.len())
                && v.iter().all(u8::is_ascii_graphic)
        });
        if let Some(v) = sent.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            return v;
        }
    }
    let id = crate::log::access::hex_digits::<32>(fastrand::u128(..));
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

impl Forwarder {
    /// The client's address with `[proxy] trusted_proxies` set: behind a
    /// trusted proxy, the one its `X-Forwarded-For` names; else the peer's.
    fn client_ip(&self, req: &Request<RequestBody>, peer: &Peer) -> IpAddr {
        let ip = peer.addr.ip().to_canonical();
        if !peer.trusted {
            return ip;
        }
        // `X-Forwarded-For`, or `[proxy] client_ip_header`. Walked where the
        // lines are, nothing collected: behind a trusted proxy this is every
        // request.
        let forwarded_for = X_FORWARDED_FOR;
        let name = self.client_ip_header.as_ref().unwrap_or(&forwarded_for);
        match RequestBody::lines(req) {
            Some(lines) if self.client_ip_header.is_none() => self
                .trusted
                .client(ip, lines.values(LineKind::XForwardedFor)),
            Some(lines) if *name == header::FORWARDED => self
                .trusted
                .client_forwarded(ip, lines.values_named(name.as_str().as_bytes())),
            Some(lines) => self
                .trusted
                .client(ip, lines.values_named(name.as_str().as_bytes())),
            None => {
                let values = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes);
                if *name == header::FORWARDED {
                    self.trusted.client_forwarded(ip, values)
                } else {
                    self.trusted.client(ip, values)
                }
            }
        }
    }

    /// The forwarding headers with `[proxy] trusted_proxies` set (mode,
    /// `-Proto`, `-Host`, `-For`'s last address). From a trusted proxy: its
    /// `X-Forwarded-Proto` and `-Host` in place of the proxy's own, and with
    /// `replace` the client it names. From anyone else: its
    /// `X-Forwarded-For` is dropped too (`append` acts as `replace`). Not
    /// inlined: the request path without the list stays as it was.
    #[inline(never)]
    fn behind_trusted(
        &self,
        req: &Request<RequestBody>,
        peer: &Peer,
        host: Option<HeaderValue>,
    ) -> (XForwarded, HeaderValue, Option<HeaderValue>, HeaderValue) {
        if !peer.trusted {
            let mode = match self.x_forwarded {
                XForwarded::Append => XForwarded::Replace,
                mode => mode,
            };
            return (mode, self.proto.clone(), host, peer.ip.clone());
        }
        let first = |kind, name: HeaderName| {
            RequestBody::first_value(req, kind, &name)
                .map(<[u8]>::trim_ascii)
                .filter(|v| !v.is_empty())
        };
        // The two schemes there are cost no copy.
        let proto = match first(LineKind::XForwardedProto, X_FORWARDED_PROTO) {
            Some(b"https") => HeaderValue::from_static("https"),
            Some(b"http") => HeaderValue::from_static("http"),
            Some(v) => HeaderValue::from_bytes(v).unwrap_or_else(|_| self.proto.clone()),
            None => self.proto.clone(),
        };
        let host = first(LineKind::XForwardedHost, X_FORWARDED_HOST)
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .or(host);
        let last = match self.x_forwarded {
            XForwarded::Replace => HeaderValue::try_from(self.client_ip(req, peer).to_string())
                .unwrap_or_else(|_| peer.ip.clone()),
            _ => peer.ip.clone(),
        };
        (self.x_forwarded, proto, host, last)
    }
}

/// The `Last-Event-ID` of a GET: only a GET resumes a stream, so no other
/// request is looked up for one.
fn resumes<'a>(method: &http::Method, last: Option<&'a HeaderValue>) -> Option<&'a [u8]> {
    if method != http::Method::GET {
        return None;
    }
    last.map(HeaderValue::as_bytes)
}

/// How long a legacy session's POST that finds its slot gone waits for the
/// session's stream to move (the stream sees the slot go at its next read).
const LEGACY_MOVE_WAIT: Duration = Duration::from_secs(2);

/// A legacy session's call noted as waiting for its answer on the stream:
/// forgotten again unless its slot accepted it.
struct LegacyCall {
    c: Arc<Captured>,
    id: Bytes,
    accepted: bool,
}

impl Drop for LegacyCall {
    fn drop(&mut self) {
        if !self.accepted {
            self.c.answered(&self.id);
        }
    }
}

/// The session id (tagged) in a legacy HTTP+SSE POST URL.
fn legacy_sid(uri: &Uri) -> Option<HeaderValue> {
    let query = uri.query()?;
    let (at, key_len) = find_in_query(query)?;
    let value = query[at + key_len..].split('&').next()?;
    tag::SessionTag::decode(value)?;
    HeaderValue::from_str(value).ok()
}

/// `uri` with the value of its `sessionId` / `session_id` parameter
/// replaced by `value` (a moved legacy session's new upstream id).
fn with_session_value(uri: &Uri, value: &HeaderValue) -> Option<Uri> {
    let query = uri.query()?;
    let (at, key_len) = find_in_query(query)?;
    let start = at + key_len;
    let end = query[start..].find('&').map_or(query.len(), |e| start + e);
    let pq = format!(
        "{}?{}{}{}",
        uri.path(),
        &query[..start],
        value.to_str().ok()?,
        &query[end..]
    );
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

/// Cuts the session tag (`prefix_len` bytes at `value_at` of the query) out
/// of a legacy SSE POST URL, so the upstream sees its own session id (the
/// route already decoded it: no second decode). A header's tag is cut by the
/// encoder.
fn strip_query_tag(req: &mut Request<RequestBody>, value_at: usize, prefix_len: usize) {
    let uri = req.uri();
    let Some(query) = uri.query() else { return };
    let stripped = format!(
        "{}?{}{}",
        uri.path(),
        &query[..value_at],
        &query[value_at + prefix_len..]
    );
    if let Ok(pq) = PathAndQuery::try_from(stripped) {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(pq);
        if let Ok(new) = Uri::from_parts(parts) {
            *req.uri_mut() = new;
        }
    }
}

/// Why a request is no slot's to answer, and the answer it gets, if it is
/// not: a body in a transfer coding other than `chunked` (`501`, see
/// [`transfer_coding`]); a `CONNECT` (`400 bad_request`), a tunnel, which is a forward
/// proxy's work (hyper would send it on as `CONNECT /` and take a 2xx for a
/// tunnel; nginx answers it 400 too); a `TRACE` (`405`, as nginx answers
/// it), which a slot would answer with the request's own headers, cookies
/// and credentials included (cross-site tracing); or (`400 bad_request`) a
/// session, or the last event id where a moved session resumes,
/// named twice, since the slot might read another copy than the proxy routed
/// by (the first of two headers for most servers, both joined for Node's,
/// the last of two query parameters for Starlette's).
fn unforwardable(req: &Request<RequestBody>, scan: &Scan) -> Option<(LocalResponse, &'static str)> {
    if req.version() == http::Version::HTTP_11 {
        if let Some(refused) = transfer_coding(req.headers()) {
            return Some(refused);
        }
    }
    if req.method() == Method::CONNECT {
        return Some((
            LocalResponse::BadRequest,
            "Bad Request: CONNECT is not served (mcpflip is a reverse proxy, not a tunnel)",
        ));
    }
    if req.method() == Method::TRACE {
        return Some((
            LocalResponse::MethodNotAllowed,
            "Method Not Allowed: TRACE is not served (it would echo the request's credentials)",
        ));
    }
    if scan.sessions > 1
        || scan.last_event_ids > 1
        || req.uri().query().is_some_and(session_params_repeated)
    {
        return Some((
            LocalResponse::BadRequest,
            "Bad Request: more than one session id (Mcp-Session-Id, sessionId or session_id) or Last-Event-ID",
        ));
    }
    None
}

/// A request body in a transfer coding other than `chunked` alone, refused
/// `501` as nginx refuses it (RFC 9112 §6.1: a coding not understood). hyper
/// reads `gzip, chunked` as chunked and takes the chunks off, and the header
/// is hop-by-hop: the slot would get the coded bytes as the content, with
/// nothing to say so. Only a request hyper read has the header (the proxy's
/// own HTTP/1.1 reader hands any `Transfer-Encoding` to hyper, and HTTP/2
/// has none); hyper drops a `Content-Length` beside it and closes the
/// connection after the answer (RFC 9112 §6.3).
fn transfer_coding(headers: &HeaderMap) -> Option<(LocalResponse, &'static str)> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let first = codings.next()?;
    if codings.next().is_some()
        || !first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked")
    {
        return Some((
            LocalResponse::NotImplemented,
            "Not Implemented: a Transfer-Encoding other than chunked",
        ));
    }
    None
}

/// An HTTP/2 request's cookies as one `Cookie` line, their values joined
/// with `; `, as RFC 9113 §8.2.3 asks of a request passed on over HTTP/1.1:
/// browsers send each cookie as a field of its own over HTTP/2 (crumbs, which
/// compress better), while an HTTP/1.1 server may expect the one line RFC
/// 6265 §5.4 has a client send: one that reads the first loses the rest, a
/// CGI-style one that joins repeated lines with `,` gives the first cookie
/// the others as part of its value. nginx joins them too.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(second)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    // Valid: values that were valid, joined by visible ASCII.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// An HTTP/1.1 request's body that a local answer leaves unread cannot be
/// told from a next request: the connection closes after `resp`, lingering
/// (read off after the answer, or the close resets it).
fn close_after_unread_body(
    resp: &mut Response<ResponseBody>,
    req: &Request<RequestBody>,
    peer: &Peer,
) {
    if req.version() < http::Version::HTTP_2
        && !matches!(req.body(), RequestBody::Read { .. })
        && !http_body::Body::is_end_stream(req.body())
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        peer.conn.close_soon();
        peer.conn.linger();
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|h| h == name)
}

const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass of cheap name compares, no hashing.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(conn) = headers.get(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            let named: Vec<HeaderName> = list
                .split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect();
            for n in named {
                headers.remove(n);
            }
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// The answer to a request with a header line `http` refuses.
fn bad_header(e: &BadLine) -> Response<ResponseBody> {
    local_error(StatusCode::BAD_REQUEST, None, "bad_header", &e.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// What a client whose body is over `[proxy] max_request_body` is told.
fn too_large_message(max: u64) -> String {
    format!(
        "the request body is larger than this proxy takes ({max} bytes, [proxy] max_request_body)"
    )
}

/// A JSON error written by the proxy itself.
pub fn local_error(
    status: StatusCode,
    slot: Option<&str>,
    code: &str,
    message: &str,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": code,
        "slot": slot,
        "message": message,
    });
    json_response(status, body.to_string())
}

/// The 404 an SDK server gives for an unknown session: MCP clients start a new
/// session on it (Streamable HTTP spec, "Session Management").
pub fn session_not_found() -> Response<ResponseBody> {
    json_response(
        StatusCode::NOT_FOUND,
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#
            .to_string(),
    )
}

/// The 503 when no slot serves.
fn no_slot() -> Response<ResponseBody> {
    local_error(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        "no_slot",
        "no slot is serving",
    )
}

/// The 503 for a request of a session whose slot is gone and whose record
/// in the fleet's etcd could not be read: the session may exist, so the
/// client is told to come again (`Retry-After: 1`), not that it is gone.
fn cluster_unavailable() -> Response<ResponseBody> {
    let mut resp = local_error(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        "cluster_unavailable",
        "this session's slot is gone and the fleet's record of it could not be read; try again",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// A JSON-RPC error answer, as the SDK servers give for a refused Host.
fn jsonrpc_error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json_response(
        status,
        serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32000, "message": message}})
            .to_string(),
    )
}

fn json_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::lines::LineKind;

    /// A 502's message says each cause once: it read "the upstream
    /// connection failed: the upstream connection failed: Broken pipe (os
    /// error 32): Broken pipe (os error 32)".
    #[test]
    fn an_upstream_error_chain_says_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = crate::upstream::ClientError::Http(crate::upstream::h1::HttpError::from(io));
        assert_eq!(
            error_chain(&e),
            "the upstream connection failed: broken pipe"
        );
    }

    /// A legacy POST URL: the session id the client holds is read only
    /// when it carries a slot's tag, and a moved session's new upstream id
    /// replaces the whole value, the other parameters kept.
    #[test]
    fn a_legacy_post_url_gives_its_session_and_takes_the_new_one() {
        let uri: Uri = "/messages/?x=1&session_id=mf1.blue.3.abc&y=2"
            .parse()
            .unwrap();
        assert_eq!(
            legacy_sid(&uri).as_ref().map(HeaderValue::as_bytes),
            Some(&b"mf1.blue.3.abc"[..])
        );
        assert_eq!(
            legacy_sid(&"/messages/?session_id=abc".parse().unwrap()),
            None
        );
        assert_eq!(legacy_sid(&"/messages/".parse().unwrap()), None);
        let new = with_session_value(&uri, &HeaderValue::from_static("xyz")).unwrap();
        assert_eq!(new, "/messages/?x=1&session_id=xyz&y=2");
        let last: Uri = "/messages?sessionId=mf1.blue.3.abc".parse().unwrap();
        let new = with_session_value(&last, &HeaderValue::from_static("u-1")).unwrap();
        assert_eq!(new, "/messages?sessionId=u-1");
    }

    #[test]
    fn the_hop_by_hop_names_are_the_raw_lines_hop_by_hop_kinds() {
        // An answer written from its lines as they came skips these kinds;
        // one written from its map has these names stripped first.
        for name in HOP_BY_HOP {
            assert!(
                LineKind::of(name.as_str().as_bytes()).is_hop_by_hop(),
                "{name}"
            );
        }
        for kind_name in [
            "content-type",
            "date",
            "mcp-session-id",
            "x-accel-buffering",
        ] {
            let name = HeaderName::from_static(kind_name);
            assert!(!is_hop_by_hop(&name));
            assert!(!LineKind::of(kind_name.as_bytes()).is_hop_by_hop());
        }
    }
}
