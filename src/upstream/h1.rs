//! HTTP/1.1 on an upstream connection, without a connection task: the
//! request's own task writes the request head and body and reads the response
//! head, and the response body reads the rest straight off the socket.
//!
//! Why not `hyper::client::conn::http1`: it runs each connection as a task of
//! its own and hands every request, response head and body chunk between that
//! task and the request's through channels (three task hand-offs per
//! request), and it keeps, per connection, an 8 KiB write-head buffer, its
//! read buffer and a 10 KiB dispatch channel block for as long as the
//! connection lives: an open SSE stream's included (bench/PROFILE.md §6).
//! Here an idle stream holds its socket and a few words of state; a read
//! copies what arrived out of a stack buffer into an allocation of its size,
//! handed on as the frame.
//!
//! What the codec accepts is RFC 9112's message framing, strictly: a response
//! head of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers, a
//! `Content-Length` that is one number (repeated copies must agree), chunked
//! coding as the last transfer coding (any other: read to close), 1xx
//! interim answers skipped, no body for HEAD, 204 and 304.

use crate::upstream::lines::{is_lower, is_visible, BadLine, Line, LineKind, RawHeaders};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::mcp::headers::is_event_stream_type;
use crate::upstream::timer::HeadTimer;

/// The largest response head accepted (nginx's `proxy_buffer_size` is 4-8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most response headers accepted (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line and the most trailer bytes accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// One read's most bytes (a stack buffer: nothing is held between reads).
const READ_SIZE: usize = 8 * 1024;

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket failed (reset, timed out). Its error is in the message,
    /// not a source: an error chain would say it twice.
    #[error("the upstream connection failed: {0}")]
    Io(io::Error),
    /// The upstream closed the connection before its answer was complete.
    #[error("the upstream closed the connection before its answer was complete")]
    Closed,
    /// The upstream's answer is not HTTP/1.1 as RFC 9112 frames it.
    #[error("the upstream's answer is malformed: {0}")]
    Malformed(&'static str),
    /// The request body ended before the length its head announced.
    #[error("the request body ended before its Content-Length")]
    BodyLength,
    /// The request body failed while it was being sent (see its `BodyWatch`).
    #[error("the request body failed: {0}")]
    Body(crate::upstream::body::ClientBodyError),
    /// The answer's body paused longer than its read timeout
    /// (`[proxy] response_body_timeout`).
    #[error("the upstream's answer body paused longer than {0:?}")]
    ReadTimeout(std::time::Duration),
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

impl From<BadLine> for HttpError {
    fn from(e: BadLine) -> Self {
        HttpError::Malformed(e.0)
    }
}

/// An upstream connection's byte stream.
pub enum Io {
    Plain(TcpStream),
    /// Boxed: the TLS state is large and most slots are plain.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection and the bytes read from it but not yet used.
pub struct Conn {
    pub io: Io,
    pub buf: BytesMut,
    /// Its timer for response heads, kept with it (made by the first
    /// request that waits for a head on it), which times an answer body's
    /// pauses too.
    pub timer: Option<HeadTimer>,
    /// The longest pause between two reads of the answer's body in
    /// progress, unless it is an event stream; `None`: untimed. Here, not in
    /// the body: the body moves with the response through the proxy's
    /// layers, the connection stays behind its pointer.
    pub read_timeout: Option<std::time::Duration>,
    /// When the pause in progress times out: set when a body's read finds
    /// nothing, cleared when one finds bytes (so never set on an idle
    /// connection: a body that ends read bytes last).
    pub read_deadline: Option<tokio::time::Instant>,
    /// How long this connection may idle and still be reused, from what the
    /// slot's answers said of its own idle timeout (`Keep-Alive:
    /// timeout=N`, less a margin); `None`: they said nothing.
    pub idle_limit: Option<std::time::Duration>,
}

impl Conn {
    pub fn new(io: Io) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            timer: None,
            read_timeout: None,
            read_deadline: None,
            idle_limit: None,
        }
    }

    /// Notes what an answer's `Keep-Alive` said of the slot's idle timeout
    /// (`secs`): the connection is reused only while it has idled less
    /// ([`reuse_within`]).
    pub fn note_idle_hint(&mut self, secs: u32) {
        self.idle_limit = Some(reuse_within(secs));
    }

    /// Whether a connection idle since `since` may take a request at
    /// `now`, under the pool's `idle_timeout` and the slot's own.
    pub fn fresh(
        &self,
        since: tokio::time::Instant,
        now: tokio::time::Instant,
        idle_timeout: std::time::Duration,
    ) -> bool {
        let limit = self
            .idle_limit
            .map_or(idle_timeout, |l| l.min(idle_timeout));
        now.duration_since(since) < limit
    }

    /// True when an idle connection can take a request: the upstream has
    /// neither closed it nor sent anything unasked. Polls once with a waker
    /// that does nothing: a socket with no news answers `Pending` from
    /// tokio's cached readiness without a system call.
    pub fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut rb = ReadBuf::uninit(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Reads once more into `buf`; `Ok(0)` at the end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, cx)
    }
}

/// Reads once from `io` into `buf` (through a stack buffer of
/// `READ_SIZE` bytes); `Ok(0)` at the end of the stream. An empty buffer
/// allocates just what arrived: an idle stream keeps no read buffer between
/// events. Both codecs read this way (the client side's in `proxy::h1`).
pub fn poll_fill<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
    let mut rb = ReadBuf::uninit(&mut stack);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            buf.extend_from_slice(rb.filled());
            Poll::Ready(Ok(rb.filled().len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqFraming {
    /// No body and no framing header (a GET).
    None,
    Length(u64),
    Chunked,
}

impl ReqFraming {
    /// The framing of a body: `end` when it has nothing to send, `exact` its
    /// size when known. A method that carries content gets `Content-Length: 0`
    /// for an empty body, as hyper's client sent it.
    pub fn of(method: &Method, end: bool, exact: Option<u64>) -> ReqFraming {
        if end {
            let content = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
            return if content {
                ReqFraming::Length(0)
            } else {
                ReqFraming::None
            };
        }
        match exact {
            Some(n) => ReqFraming::Length(n),
            None => ReqFraming::Chunked,
        }
    }
}

/// The client's address, and those of the proxies before it (de facto).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The scheme the client spoke to the proxy (de facto).
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The host the client asked the proxy for (de facto).
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The client's TLS certificate, as the proxy verified it (Envoy's format).
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The request's id (`[proxy] request_id`; de facto, as nginx's examples,
/// Envoy and Heroku name it).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The headers the proxy sets on a request it forwards, written by
/// [`encode_head`] in place of any of the same name the client sent: what a
/// slot reads in them comes from the proxy alone. Kept out of the request's
/// `HeaderMap`: four inserts there cost a hash, a probe and, often, the
/// map's growth, on every request (bench/PROFILE.md §13).
#[derive(Debug, Clone)]
pub struct ProxyHeaders {
    /// Which of the forwarding headers go out, and whether the client's
    /// `X-Forwarded-For` is kept in front of its address.
    pub x_forwarded: XForwarded,
    /// `Host`.
    pub host: HeaderValue,
    /// `X-Forwarded-Host`: the host the client asked for, when it named one.
    pub forwarded_host: Option<HeaderValue>,
    /// `X-Forwarded-Proto`.
    pub forwarded_proto: HeaderValue,
    /// The client's address: `X-Forwarded-For`, after the client's own
    /// with [`XForwarded::Append`].
    pub forwarded_for: HeaderValue,
    /// `X-Forwarded-Client-Cert`: the certificate a client presented under
    /// `tls.client_ca`, or what a trusted proxy said of its client's. The
    /// client's own never goes out.
    pub client_cert: Option<HeaderValue>,
    /// `X-Request-Id` (`[proxy] request_id`), in place of the client's.
    pub request_id: Option<HeaderValue>,
    /// The first header of this name goes out without its first this many
    /// bytes (a session tag, which the map keeps: the answer reuses it).
    pub cut: Option<(HeaderName, usize)>,
    /// The request's header lines as they came, written in place of its map
    /// (which then holds only those the forwarder reads:
    /// [`crate::upstream::RequestBody::Read`]).
    pub lines: Option<Box<RawHeaders>>,
}

/// What a slot is told of the client in `X-Forwarded-For`, `-Host` and
/// `-Proto` (`[proxy] x_forwarded`). Whichever, the client's own `-Host` and
/// `-Proto` never reach a slot: what a slot reads in them is the proxy's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XForwarded {
    /// `X-Forwarded-For` is the client's own (every one it sent, in order,
    /// joined by `, `) followed by its address, as nginx's
    /// `$proxy_add_x_forwarded_for`: for a proxy behind a load balancer
    /// that sets it.
    #[default]
    Append,
    /// `X-Forwarded-For` is the client's address alone: for a proxy at the
    /// edge, where a client could otherwise claim any address.
    Replace,
    /// None of the three goes out, and the client's are dropped.
    Off,
}

impl XForwarded {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            XForwarded::Append => "append",
            XForwarded::Replace => "replace",
            XForwarded::Off => "off",
        }
    }
}

pub use crate::upstream::lines::put;

/// Writes the request head into `out`: the request line (origin-form: the
/// URI's path and query), the headers but the framing ones (given by
/// `framing`), and `Host: host` when the headers carry none. With `proxy`,
/// its headers replace the request's `Host` and `X-Forwarded-*`. `out` gets
/// room for `room` bytes more, which the caller appends after the head (the
/// body's first bytes go out in the same write): one allocation for both,
/// where growing it for the body cost a `realloc` and a copy of the head
/// on every request with a body (bench/PROFILE.md §15).
pub fn encode_head(
    parts: &http::request::Parts,
    host: &str,
    proxy: Option<&ProxyHeaders>,
    framing: ReqFraming,
    room: usize,
    out: &mut Vec<u8>,
) {
    let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let lines = proxy.and_then(|p| p.lines.as_deref());
    let size: usize = match lines {
        Some(l) => l.size(),
        None => headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum(),
    };
    let extra = proxy.map_or(0, |p| {
        p.host.len()
            + p.forwarded_host.as_ref().map_or(0, HeaderValue::len)
            + p.forwarded_proto.len()
            + p.forwarded_for.len()
            + p.client_cert.as_ref().map_or(0, |c| c.len() + 28)
            + p.request_id.as_ref().map_or(0, |c| c.len() + 16)
            + 80
    });
    out.reserve(method.as_str().len() + target.len() + size + host.len() + extra + 64 + room);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match proxy {
        Some(p) => put(out, b"host", p.host.as_bytes()),
        None if !headers.contains_key(header::HOST) => put(out, b"host", host.as_bytes()),
        None => {}
    }
    // Whether the client sent an `X-Forwarded-For`: its values are written
    // after the other lines, by a second pass only then.
    let mut prior_for = false;
    let mut cut = proxy.and_then(|p| p.cut.as_ref());
    // The client's `X-Request-Id` gives way to the proxy's.
    let own_id = proxy.is_some_and(|p| p.request_id.is_some());
    if let (Some(lines), Some(_)) = (lines, proxy) {
        let mut copy = lines.copier();
        for line in lines.iter() {
            let (name, value) = (line.name, line.value);
            match line.kind {
                LineKind::ContentLength
                | LineKind::TransferEncoding
                | LineKind::Host
                | LineKind::XForwardedHost
                | LineKind::XForwardedProto
                | LineKind::XForwardedClientCert => continue,
                LineKind::XForwardedFor => {
                    prior_for = true;
                    continue;
                }
                LineKind::XRequestId if own_id => continue,
                // None comes with the lines (`proxy::h1` keeps them only
                // then); never passed on.
                k if k.is_hop_by_hop() => continue,
                _ => {}
            }
            if let Some((_, n)) = cut.filter(|(c, _)| is_lower(name, c.as_str().as_bytes())) {
                cut = None;
                copy.put(out, name, value.get(*n..).unwrap_or(value));
                continue;
            }
            copy.line(out, &line);
        }
        copy.finish(out);
    }
    for (name, value) in headers.iter().filter(|_| lines.is_none()) {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        if proxy.is_some() {
            if name == header::HOST
                || name == X_FORWARDED_HOST
                || name == X_FORWARDED_PROTO
                || name == X_FORWARDED_CLIENT_CERT
            {
                continue;
            }
            if name == X_FORWARDED_FOR {
                prior_for = true;
                continue;
            }
            if own_id && name == X_REQUEST_ID {
                continue;
            }
            if let Some((_, n)) = cut.filter(|(c, _)| c == name) {
                cut = None;
                let v = value.as_bytes();
                put(out, name.as_str().as_bytes(), v.get(*n..).unwrap_or(v));
                continue;
            }
        }
        put(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(cert) = proxy.and_then(|p| p.client_cert.as_ref()) {
        put(out, b"x-forwarded-client-cert", cert.as_bytes());
    }
    if let Some(id) = proxy.and_then(|p| p.request_id.as_ref()) {
        put(out, b"x-request-id", id.as_bytes());
    }
    if let Some(p) = proxy.filter(|p| p.x_forwarded != XForwarded::Off) {
        if let Some(h) = &p.forwarded_host {
            put(out, b"x-forwarded-host", h.as_bytes());
        }
        put(out, b"x-forwarded-proto", p.forwarded_proto.as_bytes());
        out.extend_from_slice(b"x-forwarded-for: ");
        if prior_for && p.x_forwarded == XForwarded::Append {
            // Every one the client sent, in order (a field sent as several
            // lines is one list, RFC 9110 §5.3); one that is empty or not
            // visible ASCII is left out.
            let mut prior = |v: &[u8]| {
                if !v.is_empty() && is_visible(v) {
                    out.extend_from_slice(v);
                    out.extend_from_slice(b", ");
                }
            };
            match lines {
                Some(l) => l
                    .iter()
                    .filter(|l| matches!(l.kind, LineKind::XForwardedFor))
                    .for_each(|l| prior(l.value)),
                None => headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .for_each(|v| prior(v.as_bytes())),
            }
        }
        out.extend_from_slice(p.forwarded_for.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => put_length(out, n),
        ReqFraming::Chunked => out.extend_from_slice(CHUNKED),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the header line `content-length: n`.
pub fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The header line of a chunked body.
pub const CHUNKED: &[u8] = b"transfer-encoding: chunked\r\n";

/// Appends one chunk of chunked coding (`data` must not be empty), in one
/// reservation: an event relayed into an empty buffer allocates once, not
/// once per part (bench/PROFILE.md §33).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    let mut line = [0; CHUNK_LINE_MAX];
    let line = chunk_line(data.len(), &mut line);
    out.reserve(line.len() + data.len() + 2);
    out.extend_from_slice(line);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The longest chunk-size line [`chunk_line`] writes: 16 hex digits and CRLF.
pub const CHUNK_LINE_MAX: usize = 18;

/// The chunk-size line of a chunk of `len` bytes (lowercase hex, no leading
/// zeros, then CRLF), written into `buf`.
pub fn chunk_line(len: usize, buf: &mut [u8; CHUNK_LINE_MAX]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - (len | 1).leading_zeros()).div_ceil(4) as usize;
    for (i, d) in buf[..digits].iter_mut().rev().enumerate() {
        *d = HEX[(len >> (4 * i)) & 0xf];
    }
    buf[digits..digits + 2].copy_from_slice(b"\r\n");
    &buf[..digits + 2]
}

/// The last chunk of chunked coding, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How the response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    /// This many bytes are left.
    Length(u64),
    /// Chunked coding, in this state.
    Chunked(Chunk),
    /// Everything until the upstream closes (the connection is not reused).
    UntilClose,
    /// The body has ended.
    Done,
}

/// Where chunked decoding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section, this many bytes read of it.
    Trailers(usize),
}

/// A parsed response head, its headers as they came ([`RawHeaders`]).
#[derive(Debug)]
pub struct RawHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: RawHeaders,
    pub framing: Framing,
    /// The connection may carry another request once this body has ended.
    pub keep_alive: bool,
    /// The first `Content-Type` says `text/event-stream`
    /// ([`crate::mcp::headers::is_event_stream`]).
    pub event_stream: bool,
    /// How long the slot keeps the connection open while it idles, as its
    /// `Keep-Alive: timeout=N` says (seconds); `None`: it did not say.
    pub idle_hint: Option<u32>,
}

impl RawHead {
    /// The head with its headers in a map.
    pub fn into_head(self) -> Result<Head, HttpError> {
        Ok(Head {
            status: self.status,
            version: self.version,
            headers: self.headers.into_map()?,
            framing: self.framing,
            keep_alive: self.keep_alive,
            event_stream: self.event_stream,
        })
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this body has ended.
    pub keep_alive: bool,
    /// The first `Content-Type` says `text/event-stream`
    /// ([`crate::mcp::headers::is_event_stream`]), noted while the map was
    /// filled.
    pub event_stream: bool,
}

/// Parses a response head off the front of `buf`: `Ok(None)` while it is
/// incomplete. Interim 1xx heads are dropped. The header values share the
/// head's bytes (no copy); what follows the head stays in `buf`.
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, HttpError> {
    match parse_response_raw(buf, method)? {
        Some(raw) => raw.into_head().map(Some),
        None => Ok(None),
    }
}

/// [`parse_response`], its headers left as they came.
pub fn parse_response_raw(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<RawHead>, HttpError> {
    loop {
        // Uninitialised: httparse writes only the headers it finds (100
        // `EMPTY_HEADER`s cost 3.2 KB of stores per answer).
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(HttpError::Malformed("response head too large"));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::Malformed("too many response headers"))
            }
            Err(_) => return Err(HttpError::Malformed("response head does not parse")),
        };
        if len > MAX_HEAD {
            return Err(HttpError::Malformed("response head too large"));
        }
        let code = res.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| HttpError::Malformed("bad status code"))?;
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(HttpError::Malformed(
                    "101 to a request that asked no upgrade",
                ));
            }
            // 100 Continue, 103 Early Hints: the answer follows.
            buf.advance(len);
            continue;
        }
        let count = res.headers.len();
        let mut lines = Vec::with_capacity(count);
        let mut noted = Noted::default();
        // Offsets into `buf` of each name and value, so that the bytes can be
        // split off (httparse's slices borrow `buf`).
        for h in res.headers.iter() {
            let kind = LineKind::of(h.name.as_bytes());
            noted.note(kind, h.value);
            lines.push(Line::of(base, h, kind));
        }
        if noted.content_length
            && (noted.transfer_encoding
                || status == StatusCode::NO_CONTENT
                || noted.length_repeated
                || noted.length.is_err())
        {
            // Transfer-Encoding overrides a length, which is not passed on
            // (RFC 9112 §6.3 item 3): the client's framing is the proxy's
            // own. A 204 has none to pass on (RFC 9110 §8.6; an HTTP/2
            // client takes one for a protocol error). A length given more
            // than once (`7, 7`, two lines that agree) is passed on as the
            // body's size, once, by whichever writer frames the answer; a
            // bad one is the slot's 502 where it would frame a body, and is
            // left out of a HEAD's or a 304's answer, as one given twice.
            lines.retain(|l| l.kind() != LineKind::ContentLength);
        }
        let headers = RawHeaders::new(buf.split_to(len).freeze(), lines);
        let (framing, framed) = framing(method, status, &headers, &noted)?;
        let keep_alive = framed
            && version == Version::HTTP_11
            && !(noted.connection
                && headers
                    .values(LineKind::Connection)
                    .any(|v| is_visible(v) && lists_token(v, b"close")));
        return Ok(Some(RawHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
            event_stream: noted.content_type == Some(true),
            idle_hint: noted.idle_hint,
        }));
    }
}

/// What the loop that fills an answer's map notes for its framing and its
/// kind, so that the common answer (a length, no `Transfer-Encoding`, no
/// `Connection`) costs no lookup after it (four hashed lookups before, the
/// forwarder's `Content-Type` included; bench/PROFILE.md §19).
#[derive(Debug)]
struct Noted {
    transfer_encoding: bool,
    content_length: bool,
    /// More than one `Content-Length` value (equal or not).
    length_repeated: bool,
    connection: bool,
    /// A `Content-Type` came; the first one's verdict.
    content_type: Option<bool>,
    /// The `Content-Length` values folded in order: the length, or why they
    /// are bad (reported only when no `Transfer-Encoding` overrides them).
    length: Result<Option<u64>, &'static str>,
    /// The last `timeout` a `Keep-Alive` line gave (seconds).
    idle_hint: Option<u32>,
}

impl Default for Noted {
    fn default() -> Self {
        Noted {
            transfer_encoding: false,
            content_length: false,
            length_repeated: false,
            connection: false,
            content_type: None,
            length: Ok(None),
            idle_hint: None,
        }
    }
}

impl Noted {
    fn note(&mut self, kind: LineKind, value: &[u8]) {
        match kind {
            LineKind::ContentLength => {
                self.length_repeated |= self.content_length || value.contains(&b',');
                self.content_length = true;
                if let Ok(length) = &mut self.length {
                    if let Err(e) = fold_length(length, value) {
                        self.length = Err(e);
                    }
                }
            }
            LineKind::TransferEncoding => self.transfer_encoding = true,
            LineKind::Connection => self.connection = true,
            LineKind::ContentType if self.content_type.is_none() => {
                self.content_type = Some(is_event_stream_type(value));
            }
            LineKind::KeepAlive => {
                self.idle_hint = keep_alive_timeout(value).or(self.idle_hint);
            }
            _ => {}
        }
    }
}

/// How long a connection may idle and still be reused when its slot closes
/// idle ones after `secs` seconds: a second less (half of it below two), so
/// that a request never goes out on a connection the slot is closing at
/// that moment: it would be lost with no answer, and an MCP call is not sent
/// twice. `0`: never reused.
pub fn reuse_within(secs: u32) -> std::time::Duration {
    let hint = std::time::Duration::from_secs(u64::from(secs));
    hint - (hint / 2).min(std::time::Duration::from_secs(1))
}

/// The `timeout` parameter of a `Keep-Alive` value (`timeout=5, max=1000`:
/// how many seconds the server keeps an idle connection open, as Node's
/// HTTP server and Apache say on every answer), at most a day.
pub fn keep_alive_timeout(value: &[u8]) -> Option<u32> {
    value.split(|&b| b == b',').find_map(|param| {
        let eq = param.iter().position(|&b| b == b'=')?;
        let (name, secs) = (param[..eq].trim_ascii(), param[eq + 1..].trim_ascii());
        if !name.eq_ignore_ascii_case(b"timeout") {
            return None;
        }
        let secs = secs
            .strip_prefix(b"\"")
            .and_then(|s| s.strip_suffix(b"\""))
            .unwrap_or(secs);
        // Nine digits at most, as a length is read.
        if secs.len() > 9 {
            return None;
        }
        parse_length(secs).map(|n| n.min(86_400) as u32)
    })
}

/// Folds one `Content-Length` value (a list of equal lengths) into `length`.
pub fn fold_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), &'static str> {
    for part in value.split(|&b| b == b',') {
        let n = parse_length(part.trim_ascii()).ok_or("bad Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length");
        }
        *length = Some(n);
    }
    Ok(())
}

/// The body's framing (RFC 9112 §6.3), and whether its end is known without
/// the connection closing.
fn framing(
    method: &Method,
    status: StatusCode,
    h: &RawHeaders,
    noted: &Noted,
) -> Result<(Framing, bool), HttpError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if noted.transfer_encoding {
        // `chunked` alone, in one line; then with Content-Length the length
        // is ignored and the connection not reused (§6.3 item 3).
        let mut lines = h.values(LineKind::TransferEncoding);
        let chunked = lines
            .next()
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            && lines.next().is_none();
        if chunked {
            return Ok((Framing::Chunked(Chunk::Size), !noted.content_length));
        }
        // Another coding (`gzip`, `gzip, chunked`): the proxy would take the
        // chunks off and pass the coded bytes on as the content, the coding
        // gone with `Transfer-Encoding`, which is hop-by-hop (an HTTP/2
        // client cannot be told it at all). Refused, as nginx refuses
        // anything but `chunked` alone since 1.23 ("upstream sent unknown
        // Transfer-Encoding"), and as requests in another coding are (501).
        return Err(HttpError::Malformed(
            "Transfer-Encoding other than chunked alone",
        ));
    }
    Ok(match noted.length.map_err(HttpError::Malformed)? {
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    })
}

fn parse_length(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// True when a comma-separated header value lists `token` (ASCII case
/// aside).
pub fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// What decoding found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// More bytes are needed.
    NeedMore,
    /// The body has ended.
    End,
}

/// Takes the next piece of the body off `buf` as `framing` frames it,
/// advancing `framing`. `UntilClose` takes all there is (its end is the
/// connection's: the caller's to see).
pub fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Decoded, HttpError> {
    loop {
        match framing {
            Framing::Empty | Framing::Done => {
                *framing = Framing::Done;
                return Ok(Decoded::End);
            }
            Framing::UntilClose => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                return Ok(Decoded::Data(take(buf, buf.len())));
            }
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *framing = Framing::Done;
                }
                return Ok(Decoded::Data(take(buf, n)));
            }
            Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    // As long a line is refused whole as in pieces.
                    if used > MAX_CHUNK_LINE {
                        return Err(HttpError::Malformed("chunk size line too long"));
                    }
                    buf.advance(used);
                    *framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    });
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(HttpError::Malformed("chunk size line too long"));
                    }
                    return Ok(Decoded::NeedMore);
                }
                Err(_) => return Err(HttpError::Malformed("bad chunk size")),
            },
            Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *framing = Framing::Chunked(Chunk::DataEnd);
                }
                return Ok(Decoded::Data(take(buf, n)));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(HttpError::Malformed("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers(seen)) => {
                // Trailer fields are dropped (nothing downstream uses them);
                // an empty line ends the body.
                let Some(eol) = memchr::memchr(b'\n', buf) else {
                    if *seen + buf.len() > MAX_TRAILERS {
                        return Err(HttpError::Malformed("trailers too large"));
                    }
                    return Ok(Decoded::NeedMore);
                };
                let line = &buf[..eol];
                let empty = line.is_empty() || line == b"\r";
                // The limit counts the ending empty line too, so that it
                // holds alike whatever the reads' cuts.
                *seen += eol + 1;
                if *seen > MAX_TRAILERS {
                    return Err(HttpError::Malformed("trailers too large"));
                }
                buf.advance(eol + 1);
                if empty {
                    *framing = Framing::Done;
                }
            }
        }
    }
}

/// The first `n` bytes of `buf`, split off without a copy. A buffer taken
/// whole is replaced by an empty one, so that no capacity stays behind.
pub fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n == buf.len() {
        std::mem::take(buf).freeze()
    } else {
        buf.split_to(n).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8], method: &Method) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(text);
        let head = parse_response(&mut buf, method).unwrap().unwrap();
        (head, buf)
    }

    fn body(mut framing: Framing, bytes: &[u8], step: usize) -> Result<Vec<u8>, HttpError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match decode(&mut framing, &mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::End => return Ok(out),
                Decoded::NeedMore if fed < bytes.len() => {
                    let end = (fed + step).min(bytes.len());
                    buf.extend_from_slice(&bytes[fed..end]);
                    fed = end;
                }
                Decoded::NeedMore => return Err(HttpError::Closed),
            }
        }
    }

    #[test]
    fn a_head_is_parsed_and_its_values_share_the_bytes() {
        let (head, rest) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-A: 1\r\nX-A: 2\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            &Method::GET,
        );
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["content-type"], "text/event-stream");
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(head.framing, Framing::Chunked(Chunk::Size));
        assert!(head.keep_alive);
        assert_eq!(&rest[..], b"5\r\nhello\r\n");
    }

    #[test]
    fn a_keep_alive_timeout_is_read_from_the_answer() {
        for (value, secs) in [
            ("timeout=5", Some(5)),
            ("timeout=5, max=1000", Some(5)),
            ("max=100, Timeout = 30", Some(30)),
            ("timeout=\"7\"", Some(7)),
            ("timeout=0", Some(0)),
            ("timeout=99999999", Some(86_400)),
            ("timeout=", None),
            ("timeout=-1", None),
            ("timeout=5s", None),
            ("timeout=9999999999", None),
            ("max=5", None),
            ("", None),
        ] {
            assert_eq!(keep_alive_timeout(value.as_bytes()), secs, "{value:?}");
        }
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let raw = parse_response_raw(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(raw.idle_hint, Some(5));
        assert!(raw.keep_alive);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..]);
        let raw = parse_response_raw(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(raw.idle_hint, None);
    }

    #[test]
    fn a_slots_idle_timeout_bounds_reuse_with_a_margin() {
        let ms = std::time::Duration::from_millis;
        // Node's `timeout=5`: reused up to 4 s of idling; a short one keeps
        // half of itself; `timeout=0` is never reused.
        assert_eq!(reuse_within(5), ms(4_000));
        assert_eq!(reuse_within(2), ms(1_000));
        assert_eq!(reuse_within(1), ms(500));
        assert_eq!(reuse_within(0), ms(0));
    }

    #[test]
    fn an_incomplete_head_waits_and_a_huge_one_is_refused() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: b\r\n"[..]);
        assert!(parse_response(&mut buf, &Method::GET).unwrap().is_none());
        let mut huge = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        while huge.len() <= MAX_HEAD {
            huge.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            parse_response(&mut huge, &Method::GET),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn interim_answers_are_skipped() {
        let (head, rest) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n\
              HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            &Method::POST,
        );
        assert_eq!(head.status, 201);
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(&rest[..], b"ok");
        let mut up = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        assert!(parse_response(&mut up, &Method::GET).is_err());
    }

    /// The event-stream verdict noted while the map is filled is the one
    /// `is_event_stream` gives on the finished map (the first value counts).
    #[test]
    fn the_noted_event_stream_verdict_is_the_maps() {
        for text in [
            &b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: Text/Event-Stream; charset=utf-8\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Type: text/event-stream\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Type: application/json\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Content-Type: text/event-stream\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            let (head, _) = parse(text, &Method::GET);
            assert_eq!(
                head.event_stream,
                crate::mcp::headers::is_event_stream(&head.headers),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn raw_lines_are_the_maps_headers_as_they_came() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Two: a\r\n\
            mcp-session-id: inner\r\nX-Two: b\r\nContent-Length: 2\r\nX-Empty:\r\n\r\n{}";
        let mut buf = BytesMut::from(&text[..]);
        let raw = parse_response_raw(&mut buf, &Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..], b"{}", "the body stays");
        assert_eq!(raw.framing, Framing::Length(2));
        assert!(raw.keep_alive && !raw.event_stream);
        let lines: Vec<(LineKind, String, String)> = raw
            .headers
            .iter()
            .map(|l| {
                let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                (l.kind, s(l.name), s(l.value))
            })
            .collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[0],
            (
                LineKind::ContentType,
                "Content-Type".into(),
                "application/json".into()
            )
        );
        assert_eq!(
            lines[2],
            (LineKind::SessionId, "mcp-session-id".into(), "inner".into())
        );
        assert_eq!(lines[5], (LineKind::Other, "X-Empty".into(), String::new()));
        assert!(!raw.headers.names_headers());
        assert_eq!(raw.headers.session_id().unwrap(), "inner");
        // The map made of them is what the map-making parse gives.
        let map = parse(text, &Method::POST).0.headers;
        let mut raw = raw.headers;
        assert_eq!(raw_map(&raw), map);
        // A session id set in place of the slot's: once, where the slot's was.
        raw.set_session_id(HeaderValue::from_static("tagged"));
        assert_eq!(raw.session_id().unwrap(), "tagged");
        let ids: Vec<&[u8]> = raw
            .iter()
            .filter(|l| l.kind == LineKind::SessionId)
            .map(|l| l.value)
            .collect();
        assert_eq!(ids, [&b"tagged"[..]]);
        let map = raw.into_map().unwrap();
        assert_eq!(map.get_all("mcp-session-id").iter().count(), 1);
        assert_eq!(map["mcp-session-id"], "tagged");
        assert_eq!(map.get_all("x-two").iter().count(), 2);
    }

    /// `raw`'s map, from a copy of it.
    fn raw_map(raw: &RawHeaders) -> HeaderMap {
        raw.clone().into_map().unwrap()
    }

    #[test]
    fn only_a_connection_line_that_names_a_header_asks_for_the_map() {
        for (text, names) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..], false),
            (
                b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close, X-A\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            // What Node's server sends on every answer.
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive,, CLOSE \r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
        ] {
            let mut buf = BytesMut::from(text);
            let raw = parse_response_raw(&mut buf, &Method::GET).unwrap().unwrap();
            assert_eq!(
                raw.headers.names_headers(),
                names,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use Framing::*;
        // (answer, request method, framing, keep-alive; `None`: not asserted)
        type Case = (&'static [u8], Method, Option<Framing>, Option<bool>);
        let cases: [Case; 13] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                Method::HEAD,
                Some(Empty),
                None,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                Some(Empty),
                Some(true),
            ),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                Method::GET,
                Some(Empty),
                Some(true),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Method::GET,
                Some(Empty),
                None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
                Method::GET,
                Some(Length(7)),
                None,
            ),
            // No length: until close, never reused.
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                Some(UntilClose),
                Some(false),
            ),
            // Chunked wins over a length, and the connection goes.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                Some(Chunked(Chunk::Size)),
                Some(false),
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: x, Close\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                None,
                Some(false),
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                None,
                Some(false),
            ),
            // A bad length beside chunked coding: chunked decides, no error.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                Some(Chunked(Chunk::Size)),
                Some(false),
            ),
            // `close` in a second `Connection` header; a `Connection` without it.
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\nconnection: close\r\n\r\n",
                Method::GET,
                Some(Length(1)),
                Some(false),
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                Some(Length(1)),
                Some(true),
            ),
            // Lengths across two headers that agree.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-A: b\r\nContent-Length: 4, 4\r\n\r\n",
                Method::GET,
                Some(Length(4)),
                Some(true),
            ),
        ];
        for (text, method, framing, keep_alive) in cases {
            let h = parse(text, &method).0;
            let shown = String::from_utf8_lossy(text);
            if let Some(f) = framing {
                assert_eq!(h.framing, f, "{shown:?}");
            }
            if let Some(k) = keep_alive {
                assert_eq!(h.keep_alive, k, "{shown:?}");
            }
            // A length beside Transfer-Encoding is not passed on (§6.3 item
            // 3), nor a 204's.
            if text.windows(18).any(|w| w == b"Transfer-Encoding:") || h.status == 204 {
                assert!(!h.headers.contains_key("content-length"), "{shown:?}");
            }
        }
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            // A coding the proxy cannot take off, or no coding at all.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse_response(&mut buf, &Method::GET).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_their_cuts() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let out = body(Framing::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(out, b"hello world", "step {step}");
        }
        assert!(body(Framing::Chunked(Chunk::Size), b"5\r\nhelloXX", 64).is_err());
        assert!(body(Framing::Chunked(Chunk::Size), b"zz\r\n", 64).is_err());
        // Cut short: the caller sees the connection end while bytes are owed.
        assert!(matches!(
            body(Framing::Chunked(Chunk::Size), b"5\r\nhel", 64),
            Err(HttpError::Closed)
        ));
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut framing = Framing::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            decode(&mut framing, &mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(decode(&mut framing, &mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"def");
    }

    /// The request head `encode_head` writes for a slot at `up:80`.
    fn head(
        method: &Method,
        uri: &str,
        headers: &HeaderMap,
        proxy: Option<&ProxyHeaders>,
        framing: ReqFraming,
    ) -> String {
        let mut req = http::Request::new(());
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.parse().unwrap();
        *req.headers_mut() = headers.clone();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        encode_head(&parts, "up:80", proxy, framing, 0, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// `headers` as the lines of a head that came with them, in order.
    fn lines_of(headers: &HeaderMap) -> RawHeaders {
        RawHeaders::of_pairs(
            headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        )
    }

    #[test]
    fn the_proxy_headers_replace_the_clients_and_extend_its_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("public.example"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("spoofed"));
        headers.insert(
            "x-forwarded-client-cert",
            HeaderValue::from_static("Hash=spoofed"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        // A bodiless GET of /mcp through the proxy, written from the map,
        // and from the same headers as lines that came (the map then empty).
        let proxied = |headers: &HeaderMap, proxy: &ProxyHeaders| {
            let by_map = head(&Method::GET, "/mcp", headers, Some(proxy), ReqFraming::None);
            let with_lines = ProxyHeaders {
                lines: Some(Box::new(lines_of(headers))),
                ..proxy.clone()
            };
            let by_lines = head(
                &Method::GET,
                "/mcp",
                &HeaderMap::new(),
                Some(&with_lines),
                ReqFraming::None,
            );
            assert_eq!(by_lines, by_map, "the lines are written as the map is");
            by_map
        };
        let proxy = ProxyHeaders {
            x_forwarded: XForwarded::Append,
            host: HeaderValue::from_static("slot:3001"),
            forwarded_host: Some(HeaderValue::from_static("public.example")),
            forwarded_proto: HeaderValue::from_static("https"),
            forwarded_for: HeaderValue::from_static("192.0.2.7"),
            client_cert: None,
            request_id: None,
            cut: None,
            lines: None,
        };
        assert_eq!(
            proxied(&headers, &proxy),
            "GET /mcp HTTP/1.1\r\nhost: slot:3001\r\naccept: */*\r\n\
             x-forwarded-host: public.example\r\nx-forwarded-proto: https\r\n\
             x-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n\r\n"
        );
        // A client certificate the proxy verified: its own line, whatever
        // the mode; the client's never.
        let with_cert = ProxyHeaders {
            client_cert: Some(HeaderValue::from_static("Hash=ab;Subject=\"CN=c\"")),
            x_forwarded: XForwarded::Off,
            ..proxy.clone()
        };
        assert_eq!(
            proxied(&headers, &with_cert),
            "GET /mcp HTTP/1.1\r\nhost: slot:3001\r\naccept: */*\r\n\
             x-forwarded-client-cert: Hash=ab;Subject=\"CN=c\"\r\n\r\n"
        );
        // `[proxy] request_id`: the proxy's id in place of the client's;
        // without it the client's passes as any header.
        let mut with_id = headers.clone();
        with_id.insert("x-request-id", HeaderValue::from_static("the-client's"));
        let own_id = ProxyHeaders {
            request_id: Some(HeaderValue::from_static("0123abcd")),
            x_forwarded: XForwarded::Off,
            ..proxy.clone()
        };
        assert_eq!(
            proxied(&with_id, &own_id),
            "GET /mcp HTTP/1.1\r\nhost: slot:3001\r\naccept: */*\r\n\
             x-request-id: 0123abcd\r\n\r\n"
        );
        let passed = ProxyHeaders {
            x_forwarded: XForwarded::Off,
            ..proxy.clone()
        };
        assert_eq!(
            proxied(&with_id, &passed),
            "GET /mcp HTTP/1.1\r\nhost: slot:3001\r\naccept: */*\r\n\
             x-request-id: the-client's\r\n\r\n"
        );
        // The client's address alone, or none of the three: the client's
        // own dropped either way.
        let replace = ProxyHeaders {
            x_forwarded: XForwarded::Replace,
            ..proxy.clone()
        };
        assert_eq!(
            proxied(&headers, &replace),
            "GET /mcp HTTP/1.1\r\nhost: slot:3001\r\naccept: */*\r\n\
             x-forwarded-host: public.example\r\nx-forwarded-proto: https\r\n\
             x-forwarded-for: 192.0.2.7\r\n\r\n"
        );
        let off = ProxyHeaders {
            x_forwarded: XForwarded::Off,
            ..proxy.clone()
        };
        assert_eq!(
            proxied(&headers, &off),
            "GET /mcp HTTP/1.1\r\nhost: slot:3001\r\naccept: */*\r\n\r\n"
        );
        // No host named by the client, no prior X-Forwarded-For but one that
        // is not ASCII and an empty one: only what the proxy knows.
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        headers.append("x-forwarded-for", HeaderValue::from_static(""));
        let proxy = ProxyHeaders {
            forwarded_host: None,
            ..proxy
        };
        assert_eq!(
            proxied(&headers, &proxy),
            "GET /mcp HTTP/1.1\r\nhost: slot:3001\r\nx-forwarded-proto: https\r\n\
             x-forwarded-for: 192.0.2.7\r\n\r\n"
        );
        // A session tag cut off the first header of its name, as written.
        let sid = HeaderName::from_static("mcp-session-id");
        let mut headers = HeaderMap::new();
        headers.append(&sid, HeaderValue::from_static("mf1.blue.3.abc"));
        headers.append(&sid, HeaderValue::from_static("mf1.blue.3.second"));
        headers.insert("mcp-method", HeaderValue::from_static("mf1.blue.3.x"));
        let proxy = ProxyHeaders {
            cut: Some((sid.clone(), "mf1.blue.3.".len())),
            ..proxy
        };
        let written = proxied(&headers, &proxy);
        assert!(
            written.contains("mcp-session-id: abc\r\nmcp-session-id: mf1.blue.3.second\r\n")
                && written.contains("mcp-method: mf1.blue.3.x\r\n"),
            "{written}"
        );
        assert_eq!(
            headers.get(&sid).map(HeaderValue::as_bytes),
            Some(&b"mf1.blue.3.abc"[..]),
            "the map keeps the client's value"
        );
    }

    #[test]
    fn the_request_head_carries_the_framing_and_a_host() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("text/event-stream"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        assert_eq!(
            head(
                &Method::POST,
                "/mcp?x=1",
                &headers,
                None,
                ReqFraming::Length(12)
            ),
            "POST /mcp?x=1 HTTP/1.1\r\nhost: up:80\r\naccept: text/event-stream\r\n\
             content-length: 12\r\n\r\n"
        );
        assert_eq!(
            ReqFraming::of(&Method::GET, true, Some(0)),
            ReqFraming::None
        );
        assert_eq!(
            ReqFraming::of(&Method::POST, true, Some(0)),
            ReqFraming::Length(0)
        );
        assert_eq!(
            ReqFraming::of(&Method::POST, false, None),
            ReqFraming::Chunked
        );
        let mut chunk = Vec::new();
        encode_chunk(&[b'a'; 26], &mut chunk);
        assert_eq!(&chunk[..4], b"1a\r\n");
        assert_eq!(&chunk[4..], b"aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }

    #[test]
    fn chunk_lines_are_the_length_in_lowercase_hex() {
        let mut buf = [0; CHUNK_LINE_MAX];
        for len in [
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4095,
            4096,
            65535,
            0x1234_abcd,
            usize::MAX,
        ] {
            let want = format!("{len:x}\r\n");
            assert_eq!(chunk_line(len, &mut buf), want.as_bytes(), "{len}");
        }
    }
}
