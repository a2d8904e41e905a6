//! One exchange's record, from the request's arrival to the end of its response
//! body: what the latency histograms and the access log need. It rides in the
//! `ResponseBody` and is closed when the body ends (or the client goes away),
//! because a streamed body's size and duration are only known then.
//!
//! On the request path it costs one clock read at the start and one at the
//! end, an `Arc` clone of the slot's stats, and a few relaxed atomic adds into
//! fixed histograms; no lock, no map, no allocation. Only when the access log
//! is on does it fill in a boxed `access::Record` (and read the clock at the
//! upstream's answer too), which the log's own thread formats and writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};

use crate::log::access::{self, Fingerprint, Inline, Record};
use crate::mcp::headers::MCP_SESSION_ID;
use crate::mcp::{method, Era};
use crate::proxy::sse::find_in_query;
use crate::stats::SlotStats;
use crate::upstream::lines::RawHeaders;

pub use crate::log::access::End;

/// The record of one exchange.
#[derive(Debug)]
pub struct Exchange {
    started: Instant,
    /// The slot that answered; `None` for answers the proxy made before routing.
    slot: Option<Arc<SlotStats>>,
    /// Index of the `Mcp-Method` header's value in `mcp::method`, when
    /// present. A byte, beside `timed` (`method::COUNT` fits one): the record
    /// is 40 bytes, not 56, in a response that is copied about seven times
    /// per request (bench/PROFILE.md §43, §45).
    mcp_method: Option<u8>,
    /// False for long-lived streams: their lifetime is not a request latency.
    timed: bool,
    /// The access-log line; `None` while the access log is off. Boxed: this
    /// record rides in the response body, which moves about ten times per
    /// request; inline, its 400 bytes were two thirds of every move, access
    /// log on or off (bench/PROFILE.md §14). It is taken out of its box (freed
    /// here, on the worker) when the line is handed to the writer.
    line: Option<Box<Record>>,
}

impl Exchange {
    /// Starts the record of `req` from `peer` (reads the clock);
    /// `mcp_header` is its first `Mcp-Method` (found by `proxy::scan`).
    pub fn start<B>(
        req: &Request<B>,
        mcp_header: Option<&HeaderValue>,
        session: Option<&HeaderValue>,
        peer: SocketAddr,
    ) -> Exchange {
        let started = Instant::now();
        let mcp_method = mcp_header.map(|v| method::index(v.as_bytes()) as u8);
        let line = access::enabled().then(|| {
            let mut r = Record::new(peer, req.method().clone(), req.uri().path());
            if let Some(m) = mcp_header.and_then(|v| v.to_str().ok()) {
                r.mcp_method = Inline::new(m);
            }
            r.session = session_of(req, session);
            Box::new(r)
        });
        Exchange {
            started,
            slot: None,
            mcp_method,
            timed: !mcp_method.is_some_and(|i| method::is_subscription(i.into())),
            line,
        }
    }

    /// The client's address the access-log line shows beside the peer's
    /// (`[proxy] trusted_proxies`); read only when the log is on.
    pub fn client_ip(&mut self, ip: impl FnOnce() -> std::net::IpAddr) {
        if let Some(l) = self.line.as_mut() {
            l.client_ip = Some(ip());
        }
    }

    /// The certificate the connection's client presented, as the slot is
    /// told it (`X-Forwarded-Client-Cert`, which starts with `Hash=` and
    /// its SHA-256 in hex): the hash is the line's `client_cert`.
    pub fn client_cert(&mut self, value: &http::HeaderValue) {
        if let Some(l) = self.line.as_mut() {
            let hash = value
                .as_bytes()
                .strip_prefix(b"Hash=")
                .and_then(|v| v.get(..crate::log::access::CERT_HASH))
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            if let Some(h) = hash.and_then(|h| std::str::from_utf8(h).ok()) {
                l.client_cert = crate::log::access::Inline::new(h);
            }
        }
    }

    /// The request's `X-Request-Id` (`[proxy] request_id`): the line's
    /// `request_id`.
    pub fn request_id(&mut self, value: &http::HeaderValue) {
        if let Some(l) = self.line.as_mut() {
            // Visible ASCII (`forward::request_id`).
            if let Ok(id) = value.to_str() {
                l.request_id = crate::log::access::Inline::new(id);
            }
        }
    }

    /// Whether the request has an access-log line (the log is on).
    pub fn logged(&self) -> bool {
        self.line.is_some()
    }

    /// The client's `User-Agent`: the line's `user_agent` (its first
    /// [`access::MAX_USER_AGENT`] bytes; one that is not UTF-8 is left out).
    pub fn user_agent(&mut self, value: &[u8]) {
        if let (Some(l), Ok(ua)) = (self.line.as_mut(), std::str::from_utf8(value)) {
            l.user_agent = access::Inline::new(ua);
        }
    }

    /// Whether the request's `Mcp-Method` is `tools/call` (read once, at the start).
    pub fn is_tools_call(&self) -> bool {
        self.mcp_method
            .is_some_and(|i| method::is_tools_call(i.into()))
    }

    /// The request goes to this slot, classified as `era`.
    pub fn routed(&mut self, stats: &Arc<SlotStats>, era: Era) {
        self.slot = Some(Arc::clone(stats));
        if let Some(l) = self.line.as_mut() {
            l.era = Some(era);
            l.slot = access::Inline::new(stats.name());
        }
    }

    /// The upstream's response headers arrived.
    pub fn upstream_answered(&mut self) {
        if let Some(l) = self.line.as_mut() {
            l.upstream_time = Some(self.started.elapsed());
        }
    }

    /// The response is an event stream; one opened by a GET (a standalone or
    /// legacy SSE stream) lives as long as its session, so it is not timed as a
    /// request (`mcpflip_stream_duration_seconds` has it).
    pub fn stream_opened(&mut self, by: &Method) {
        if by == Method::GET {
            self.timed = false;
        }
    }

    /// Notes the response's status, and the session it starts (an
    /// `initialize` answer's `Mcp-Session-Id`, in its map or in `raw`, the
    /// slot's lines still to be written) when the request carried none.
    pub fn respond<B>(&mut self, resp: &Response<B>, raw: Option<&RawHeaders>) {
        if let Some(l) = self.line.as_mut() {
            l.status = resp.status().as_u16();
            if l.session.is_none() {
                l.session = match raw {
                    Some(raw) => raw.session_id(),
                    None => resp.headers().get(MCP_SESSION_ID).cloned(),
                }
                .map(|v| Fingerprint::of(v.as_bytes()));
            }
        }
    }

    /// `n` more body bytes went to the client.
    pub fn sent(&mut self, n: usize) {
        if let Some(l) = self.line.as_mut() {
            l.bytes_sent += n as u64;
        }
    }

    /// Closes the record: the latency histograms, then the access-log line.
    pub fn end(self, how: End) {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.started);
        if let (true, Some(stats)) = (self.timed, &self.slot) {
            stats.observe_request(took, self.mcp_method.map(usize::from));
        }
        if let Some(mut l) = self.line {
            l.request_time = took;
            l.ended = Some(now);
            l.end = how;
            access::send(*l);
        }
    }
}

/// The fingerprint of the session id a request carries: its first
/// `Mcp-Session-Id` (`header`), or the legacy SSE POST URL's `sessionId` /
/// `session_id`.
fn session_of<B>(req: &Request<B>, header: Option<&HeaderValue>) -> Option<Fingerprint> {
    if let Some(v) = header {
        return Some(Fingerprint::of(v.as_bytes()));
    }
    let query = req.uri().query()?;
    let (at, key_len) = find_in_query(query)?;
    let value = query[at + key_len..].split('&').next()?;
    Some(Fingerprint::of(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::headers::MCP_METHOD;

    #[test]
    fn the_session_comes_from_the_header_or_the_legacy_query() {
        let with_header = Request::post("/mcp")
            .header(MCP_SESSION_ID, "abc")
            .body(())
            .expect("request");
        assert_eq!(
            session_of(&with_header, with_header.headers().get(MCP_SESSION_ID)),
            Some(Fingerprint::of(b"abc"))
        );
        let legacy = Request::post("/messages/?session_id=xyz&x=1")
            .body(())
            .expect("request");
        assert_eq!(session_of(&legacy, None), Some(Fingerprint::of(b"xyz")));
        let none = Request::post("/mcp").body(()).expect("request");
        assert_eq!(session_of(&none, None), None);
    }

    /// The record rides in the response body through every move of the
    /// response (bench/PROFILE.md §45).
    #[test]
    fn an_exchange_is_five_words() {
        let size = std::mem::size_of::<Option<Exchange>>();
        assert!(size <= 40, "Option<Exchange> is {size} bytes");
    }

    #[test]
    fn an_exchange_times_requests_but_not_get_streams_nor_subscriptions() {
        let stats = SlotStats::new("blue");
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        let call = Request::post("/mcp")
            .header(MCP_METHOD, "tools/call")
            .body(())
            .expect("request");
        let mut ex = Exchange::start(&call, call.headers().get(MCP_METHOD), None, peer);
        ex.routed(&stats, Era::Stateless);
        ex.end(End::Complete);
        let get = Request::get("/mcp").body(()).expect("request");
        let mut ex = Exchange::start(&get, get.headers().get(MCP_METHOD), None, peer);
        ex.routed(&stats, Era::Session);
        ex.stream_opened(&Method::GET);
        ex.end(End::ClientGone);
        let listen = Request::post("/mcp")
            .header(MCP_METHOD, "subscriptions/listen")
            .body(())
            .expect("request");
        let mut ex = Exchange::start(&listen, listen.headers().get(MCP_METHOD), None, peer);
        ex.routed(&stats, Era::Stateless);
        ex.end(End::Complete);
        assert_eq!(stats.request_duration.count(), 1);
        let call_i = method::index(b"tools/call");
        assert_eq!(
            stats.mcp_method_duration(call_i).map(|h| h.count()),
            Some(1)
        );
        let listen_i = method::index(b"subscriptions/listen");
        assert_eq!(
            stats.mcp_method_duration(listen_i).map(|h| h.count()),
            Some(0)
        );
    }
}
