//! HTTP/1.1 client connections served by the proxy itself, hyper kept for
//! everything else.
//!
//! Why: hyper's server side was about 13.8 k of the 32.4 k instructions a
//! proxied request cost (bench/PROFILE.md §20): its dispatcher, the body
//! channel every request gets, the service future's box and copy, its
//! keep-alive read and its write queue. The request MCP clients send is
//! plain: a complete head, a `Content-Length` body that arrives with it, a
//! JSON answer or an event stream back. This connection serves that request
//! itself, in the connection's task:
//!
//! - a head of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers,
//!   HTTP/1.1, no `Transfer-Encoding`, `Expect` or `Upgrade`, no `CONNECT`,
//!   a `Content-Length` that is one number and whose body has been read
//!   with the head (or no body);
//! - the answer written from its map in one buffer, framed by its length
//!   (`Content-Length`) or chunked, with `Date` from a per-second cache and
//!   `Connection: close` when the request, the answer or a graceful close
//!   asks for it; an event stream relayed frame by frame;
//! - while the answer is awaited or streamed, the read side is watched: a
//!   client that closes abandons its request (its body is dropped, its
//!   stream counts end), as hyper does without half-close.
//!
//! Anything else (a head still incomplete at [`MAX_HEAD`], a malformed one,
//! chunked or unread request bodies, `Expect: 100-continue`, HTTP/1.0,
//! upgrades) is handed to hyper for the rest of the connection, with the
//! bytes read so far given back first ([`Rewind`]): every answer hyper gives
//! such a request (400, 431, 100 Continue, a streamed body under
//! `client_body_timeout`) stays hyper's. The connection's timers are
//! `conn::run`'s, for both.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::proxy::conn::Conn;
use crate::upstream::h1::{
    chunk_line, encode_chunk, fold_length, lists_token, poll_fill, put, put_length, take, CHUNKED,
    CHUNK_LINE_MAX, LAST_CHUNK,
};
use crate::upstream::lines::{
    connection_names_headers, into_map_headers, Line, LineKind, RawAnswer, RawHeaders,
};
use crate::upstream::RequestBody;

/// The largest request head served here; a longer one goes to hyper (which
/// answers 431 beyond its own limit).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most request headers served here (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// The largest request body read here whole before the request is served;
/// a longer one is streamed by hyper.
pub const MAX_BODY: usize = 64 * 1024;
/// How long the rest of a body is waited for here once its head is
/// complete (most come with the head, or a round trip after it); a body
/// still incomplete then goes to hyper, which answers 408 after
/// `client_body_timeout` without progress.
pub const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// A data frame at least this large is written from its own buffer, not
/// copied into the connection's.
const COPY_MAX: usize = 16 * 1024;
/// Answer bytes gathered before they are written.
const WRITE_MAX: usize = 64 * 1024;
/// The write buffer's capacity kept from one answer to the next.
const KEEP_OUT: usize = 8 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

thread_local! {
    /// The `Date` of the current second.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// What the front of the read buffer holds.
// A return value, moved once: boxing the head would cost an allocation per
// request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Parsed {
    /// The start of a request head (or nothing).
    Partial,
    /// A request head served here, taken off the buffer.
    Head(Head),
    /// A request hyper serves: the buffer is left as it was.
    Hyper,
}

/// A request head served here.
#[derive(Debug)]
pub(crate) struct Head {
    /// The request, its body still to be put in.
    pub req: Request<RequestBody>,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// Its `Content-Length`: the body follows in the buffer.
    pub body: usize,
    /// The head's bytes, to give back should hyper have to serve it.
    pub bytes: Bytes,
}

/// Takes a complete request head off the front of `buf`.
pub(crate) fn parse_request(buf: &mut BytesMut) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::Hyper,
    };
    if len > MAX_HEAD || req.version != Some(1) {
        return Parsed::Hyper;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    if method == Method::CONNECT {
        return Parsed::Hyper;
    }
    let path = (path.as_ptr() as usize - base, path.len());
    let mut length = None;
    let mut keep_alive = true;
    let mut names_headers = false;
    // Where each name and value lie in `buf` (httparse's slices borrow it).
    let mut lines = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let kind = LineKind::of(name);
        match kind {
            LineKind::ContentLength if fold_length(&mut length, h.value).is_err() => {
                return Parsed::Hyper
            }
            LineKind::TransferEncoding | LineKind::Expect => return Parsed::Hyper,
            LineKind::HopByHop if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::Hyper,
            LineKind::Connection => {
                keep_alive &= !lists_token(h.value, b"close");
                names_headers |= connection_names_headers(h.value);
            }
            _ => {}
        }
        lines.push(Line::of(base, h, kind));
    }
    // A body longer than this is streamed by hyper.
    let body = match length.map(usize::try_from) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(_) => return Parsed::Hyper,
    };
    let bytes = take(buf, len);
    // The lines go upstream as they came, with no map made of them, unless a
    // `Connection` line names headers to drop: the whole map drops them
    // (bench/PROFILE.md §22, §29). Every other hop-by-hop line is left out by
    // the upstream encoder as it writes the lines.
    let lines = RawHeaders::new(bytes.clone(), lines);
    let (map, lines) = if names_headers {
        (lines.into_map().ok(), None)
    } else {
        (Some(HeaderMap::new()), Some(Box::new(lines)))
    };
    let Some(map) = map else {
        give_back(buf, &bytes);
        return Parsed::Hyper;
    };
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice(path.0..path.0 + path.1)) else {
        give_back(buf, &bytes);
        return Parsed::Hyper;
    };
    let mut req = Request::new(RequestBody::Read { body: None, lines });
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = map;
    Parsed::Head(Head {
        req,
        keep_alive,
        body,
        bytes,
    })
}

/// Puts a head taken off the buffer back in front of what followed it, for
/// hyper to read.
fn give_back(buf: &mut BytesMut, head: &[u8]) {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// How an answer's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length`: this many bytes left.
    Length(u64),
    Chunked,
}

/// The framing of an answer with a body: its good `Content-Length` when it
/// has one, else the body's known size, else chunked (as hyper frames it).
fn framing_of<B: Body>(length: Option<u64>, body: &B) -> Framing {
    if let Some(n) = length {
        return Framing::Length(n);
    }
    if body.is_end_stream() {
        return Framing::Length(0);
    }
    match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// Writes an answer's head into `out`, in one pass over its headers: the
/// status line, the headers (`raw`, the slot's lines as they came, then those
/// of the map) but the framing, `Connection` and other hop-by-hop ones, then
/// the framing (`bodiless`: none; else from its `Content-Length`, or the
/// body), a `Date` when it has none, and `Connection: close` when the answer
/// or the caller (`keep_alive` false) asks. Returns the framing and whether
/// the connection may carry another request.
pub(crate) fn encode_head<B: Body>(
    status: StatusCode,
    raw: Option<&RawHeaders>,
    headers: &HeaderMap,
    body: &B,
    bodiless: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + raw.map_or(0, RawHeaders::size);
    out.reserve(size + 128);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // A HEAD or 304 answer keeps the length it would have had; 1xx and 204
    // have none.
    let keep_length = bodiless && !(status.is_informational() || status == StatusCode::NO_CONTENT);
    let mut noted = Noted {
        keep_length,
        ..Noted::default()
    };
    if let Some(raw) = raw {
        let mut copy = raw.copier();
        for line in raw.iter() {
            // The slot's `Connection` is about the slot's connection: left
            // out, and never a reason to close the client's.
            if line.kind != LineKind::Connection && noted.note(line.kind, line.value) {
                copy.line(out, &line);
            }
        }
        copy.finish(out);
    }
    for (name, value) in headers {
        if noted.note(kind_of(name), value.as_bytes()) {
            put(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let framing = if bodiless {
        Framing::None
    } else {
        framing_of(noted.length.filter(|_| !noted.bad_length), body)
    };
    match framing {
        Framing::None => {}
        Framing::Length(n) => put_length(out, n),
        Framing::Chunked => out.extend_from_slice(CHUNKED),
    }
    if !noted.dated {
        date(out);
    }
    let keep_alive = keep_alive && !noted.close;
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// The kind of a map's header name, as [`LineKind::of`] tells a line's.
fn kind_of(name: &HeaderName) -> LineKind {
    if *name == header::CONTENT_LENGTH {
        LineKind::ContentLength
    } else if *name == header::TRANSFER_ENCODING {
        LineKind::TransferEncoding
    } else if *name == header::CONNECTION {
        LineKind::Connection
    } else if *name == header::DATE {
        LineKind::Date
    } else {
        LineKind::Other
    }
}

/// What [`encode_head`] notes of the headers it writes.
#[derive(Default)]
struct Noted {
    keep_length: bool,
    length: Option<u64>,
    bad_length: bool,
    dated: bool,
    close: bool,
}

impl Noted {
    /// Notes a header; true when it is written as it is.
    fn note(&mut self, kind: LineKind, value: &[u8]) -> bool {
        match kind {
            LineKind::ContentLength => {
                self.bad_length |= fold_length(&mut self.length, value).is_err();
                self.keep_length
            }
            LineKind::Connection => {
                self.close |= lists_token(value, b"close");
                false
            }
            // Every other hop-by-hop line is the proxy's to write or drop.
            kind if kind.is_hop_by_hop() => false,
            LineKind::Date => {
                self.dated = true;
                true
            }
            _ => true,
        }
    }
}

/// Appends `date: <now>` (IMF-fixdate), formatted once a second per worker.
fn date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            d.1.clear();
            use std::fmt::Write as _;
            let _ = write!(d.1, "{}", httpdate::HttpDate::from(now));
            d.0 = secs;
        }
        put(out, b"date", d.1.as_bytes());
    });
}

/// Watches the read side while an answer is awaited or streamed: `Ready`
/// when the client closed (or the socket failed). What it sends meanwhile
/// (a pipelined request) is kept, up to [`MAX_HEAD`]; beyond that the
/// socket is not read until the answer ends.
fn client_gone<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<()> {
    while buf.len() < MAX_HEAD {
        match poll_fill(io, buf, cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Pending
}

/// What a connection served here hands on: the socket, the bytes read off
/// it that hyper is to read first, and the service.
type Handoff<I, S> = Option<(I, BytesMut, S)>;

/// What [`read_request`] found.
// A return value, moved once (see `Parsed`).
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request served here, and whether the connection may carry another.
    Request(Request<RequestBody>, bool),
    /// The client closed (or the connection is closing gracefully).
    Closed,
    /// A request hyper serves: everything read is in the buffer.
    Hyper,
}

/// Reads the next request: its head, and its body when the head says it has
/// one (waited for at most [`BODY_WAIT`]).
async fn read_request<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    conn: &Conn,
) -> io::Result<Next> {
    let head = loop {
        if !buf.is_empty() {
            match parse_request(buf) {
                Parsed::Partial => {}
                Parsed::Head(head) => break head,
                Parsed::Hyper => return Ok(Next::Hyper),
            }
        }
        let n = std::future::poll_fn(|cx| {
            // A graceful close ends a connection between requests.
            if buf.is_empty() && conn.closing() {
                return Poll::Ready(Ok(0));
            }
            poll_fill(io, buf, cx)
        })
        .await?;
        if n == 0 {
            // Closed, between requests or inside a head (no answer, as
            // hyper gives none).
            return Ok(Next::Closed);
        }
    };
    let Head {
        mut req,
        keep_alive,
        body,
        bytes,
    } = head;
    if buf.len() < body {
        // A complete head: the connection's first-head timer is done with.
        // The rest of the body is waited for here a little.
        conn.head_seen();
        let rest = std::future::poll_fn(|cx| {
            while buf.len() < body {
                if ready!(poll_fill(io, buf, cx))? == 0 {
                    return Poll::Ready(Ok::<_, io::Error>(false));
                }
            }
            Poll::Ready(Ok(true))
        });
        match tokio::time::timeout(BODY_WAIT, rest).await {
            Ok(Ok(true)) => {}
            Ok(Err(e)) => return Err(e),
            // Still coming: hyper streams it, under `client_body_timeout`.
            // Closed inside the body: hyper forwards the request as it
            // always did, and the body's end is the client's fault (400).
            Err(_) | Ok(Ok(false)) => {
                drop(req);
                give_back(buf, &bytes);
                return Ok(Next::Hyper);
            }
        }
    }
    drop(bytes);
    if body > 0 {
        if let RequestBody::Read { body: b, .. } = req.body_mut() {
            *b = Some(take(buf, body));
        }
    }
    Ok(Next::Request(req, keep_alive))
}

/// Serves requests off `io` until the connection ends (`None`) or a request
/// is for hyper.
///
/// Each phase of a request (reading it, awaiting its answer, relaying the
/// answer) keeps its state in a future or a scope of its own: this
/// future is boxed for the connection's life, and a state machine keeps
/// room for every local that lives across an await, side by side
/// (bench/PROFILE.md §21).
async fn serve<I, S, B>(mut io: I, service: S, conn: Conn) -> Result<Handoff<I, S>, BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes> + RawAnswer + Unpin,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let (call, bodiless_method, keep_alive) =
            match read_request(&mut io, &mut buf, &conn).await? {
                Next::Request(req, keep_alive) => {
                    let bodiless_method = req.method() == Method::HEAD;
                    (service.call(req), bodiless_method, keep_alive)
                }
                Next::Closed => return Ok(None),
                Next::Hyper => return Ok(Some((io, buf, service))),
            };
        // The call (the forwarder's boxed future) goes once it answered,
        // not with the answer's end: an event stream does not keep it.
        let answered = {
            let mut call = std::pin::pin!(call);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = call.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                client_gone(&mut io, &mut buf, cx).map(|()| None)
            })
            .await
        };
        let (body, framing, keep_alive) = match answered {
            Some(Ok(resp)) => start(resp, bodiless_method, keep_alive, &conn, &mut out),
            Some(Err(never)) => match never {},
            // The client left: the request is abandoned.
            None => return Ok(None),
        };
        let complete = match framing {
            Framing::None | Framing::Length(0) => {
                // The answer is over: its body (and the request's `Active`)
                // goes before the write.
                drop(body);
                true
            }
            _ => match relay(&mut io, &mut buf, body, framing, &mut out).await? {
                Relayed::Complete => true,
                Relayed::Cut => false,
                Relayed::ClientGone => return Ok(None),
            },
        };
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
        }
        io.flush().await?;
        if !(complete && keep_alive) {
            let _ = io.shutdown().await;
            return Ok(None);
        }
        if out.capacity() > KEEP_OUT {
            out = Vec::new();
        }
    }
}

/// Starts an answer: its head into `out`; its body, framing, and whether the
/// connection may carry another request after it.
fn start<B: Body + RawAnswer>(
    resp: Response<B>,
    bodiless_method: bool,
    keep_alive: bool,
    conn: &Conn,
    out: &mut Vec<u8>,
) -> (B, Framing, bool) {
    let (parts, mut body) = resp.into_parts();
    let raw = body.take_raw_headers();
    let status = parts.status;
    let bodiless = bodiless_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let keep_alive = keep_alive && !conn.closing();
    let (framing, keep_alive) = encode_head(
        status,
        raw.as_deref(),
        &parts.headers,
        &body,
        bodiless,
        keep_alive,
        out,
    );
    (body, framing, keep_alive)
}

/// How relaying an answer's body ended.
enum Relayed {
    /// To its end, framed in full.
    Complete,
    /// The body failed, or did not match its length: the client sees the
    /// answer cut (the connection closes).
    Cut,
    /// The client closed.
    ClientGone,
}

/// One step of relaying a body.
enum Step {
    Frame(Option<Result<http_body::Frame<Bytes>, BoxError>>),
    /// The body has nothing now, and what is gathered did not go out at
    /// once: it goes out first.
    Write,
    /// Writing to the client failed.
    Failed(io::Error),
    ClientGone,
}

/// Relays `body` after the head in `out`, as `framing` frames it. Frames
/// that are ready are gathered and written together; before waiting for the
/// next one, what is gathered is written (an event goes out as it comes).
///
/// On a socket that writes vectors, the newest frame is held rather than
/// copied: when the body has nothing more for now, it goes out from its own
/// buffer beside what `out` holds, in one `writev` (an event stream's event:
/// no copy and no allocation; bench/PROFILE.md §34). A frame that another
/// follows is copied into `out` as before.
async fn relay<I, B>(
    io: &mut I,
    buf: &mut BytesMut,
    mut body: B,
    framing: Framing,
    out: &mut Vec<u8>,
) -> io::Result<Relayed>
where
    I: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let chunked = framing == Framing::Chunked;
    let vectored = io.is_write_vectored();
    let mut held: Option<Bytes> = None;
    // Bytes of `out` and `held` (framed) already written, when a write
    // waits.
    let mut written = 0;
    loop {
        let step = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Step::Frame(f.map(|r| r.map_err(Into::into)))),
            Poll::Pending if !out.is_empty() || held.is_some() => {
                // Written now when the socket takes it all (the common
                // case): the wake-ups the body registered in this poll
                // stand, and the task waits for them without asking the
                // body again (bench/PROFILE.md §46).
                let data = held.as_deref().unwrap_or_default();
                match poll_send(io, cx, out, chunked, data, &mut written) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::Failed(e)),
                    Poll::Pending => return Poll::Ready(Step::Write),
                }
                written = 0;
                held = None;
                // Waiting for the body (an event stream between events):
                // the buffer is not kept meanwhile.
                *out = Vec::new();
                client_gone(io, buf, cx).map(|()| Step::ClientGone)
            }
            Poll::Pending => client_gone(io, buf, cx).map(|()| Step::ClientGone),
        })
        .await;
        let data = match step {
            Step::Write => {
                // The socket is full (or a flush waits): the rest goes out
                // as the client takes it.
                let data = held.as_deref().unwrap_or_default();
                std::future::poll_fn(|cx| poll_send(io, cx, out, chunked, data, &mut written))
                    .await?;
                written = 0;
                held = None;
                *out = Vec::new();
                continue;
            }
            Step::Failed(e) => return Err(e),
            Step::ClientGone => return Ok(Relayed::ClientGone),
            Step::Frame(None) => break,
            Step::Frame(Some(Err(e))) => {
                tracing::debug!(error = %e, "the answer's body failed: cut");
                gather(out, chunked, held.take());
                return Ok(Relayed::Cut);
            }
            Step::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Trailers are dropped, as hyper drops them for HTTP/1.1.
                _ => continue,
            },
        };
        gather(out, chunked, held.take());
        if !chunked {
            if data.len() as u64 > left {
                tracing::debug!("the answer's body is longer than its Content-Length: cut");
                return Ok(Relayed::Cut);
            }
            left -= data.len() as u64;
        }
        if data.len() >= COPY_MAX {
            write_framed(io, out, chunked, &data, 0).await?;
            out.clear();
        } else if vectored {
            held = Some(data);
        } else {
            gather(out, chunked, Some(data));
        }
        if out.len() >= WRITE_MAX {
            io.write_all(out).await?;
            out.clear();
        }
        // A body that knows its end says so with its last frame: no poll
        // for the end (the slot's connection goes back to its pool now).
        if body.is_end_stream() {
            break;
        }
    }
    gather(out, chunked, held.take());
    if chunked {
        out.extend_from_slice(LAST_CHUNK);
    } else if left != 0 {
        tracing::debug!("the answer's body ended before its Content-Length: cut");
        return Ok(Relayed::Cut);
    }
    Ok(Relayed::Complete)
}

/// Copies a frame into `out`, framed.
fn gather(out: &mut Vec<u8>, chunked: bool, data: Option<Bytes>) {
    match data {
        Some(data) if chunked => encode_chunk(&data, out),
        Some(data) => out.extend_from_slice(&data),
        None => {}
    }
}

/// Writes `out` and then `data`, framed, from their own buffers (a held
/// frame, or one of [`COPY_MAX`] bytes or more), on from the first `done`
/// bytes: one `writev` when the socket takes them all.
async fn write_framed<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &[u8],
    chunked: bool,
    data: &[u8],
    mut done: usize,
) -> io::Result<()> {
    std::future::poll_fn(|cx| poll_write_framed(io, cx, out, chunked, data, &mut done)).await
}

/// [`write_framed`] as a poll: `done` counts the bytes written, across
/// polls that return `Pending`. An empty `data` is no chunk.
fn poll_write_framed<I: AsyncWrite + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    out: &[u8],
    chunked: bool,
    data: &[u8],
    done: &mut usize,
) -> Poll<io::Result<()>> {
    let mut line = [0; CHUNK_LINE_MAX];
    let (line, crlf): (&[u8], &[u8]) = if chunked && !data.is_empty() {
        (chunk_line(data.len(), &mut line), b"\r\n")
    } else {
        (&[], &[])
    };
    let mut parts = [out, line, data, crlf];
    advance(&mut parts, *done);
    loop {
        let Some(first) = parts.iter().position(|p| !p.is_empty()) else {
            return Poll::Ready(Ok(()));
        };
        let slices = parts.map(io::IoSlice::new);
        let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[first..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *done += n;
        advance(&mut parts, n);
    }
}

/// [`poll_write_framed`], then a flush: what the relay sends before it
/// waits for the body.
fn poll_send<I: AsyncWrite + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    out: &[u8],
    chunked: bool,
    data: &[u8],
    done: &mut usize,
) -> Poll<io::Result<()>> {
    ready!(poll_write_framed(io, cx, out, chunked, data, done))?;
    Pin::new(io).poll_flush(cx)
}

/// Drops the first `n` bytes of `parts`.
fn advance(parts: &mut [&[u8]], mut n: usize) {
    for part in parts {
        let k = n.min(part.len());
        *part = &part[k..];
        n -= k;
        if n == 0 {
            break;
        }
    }
}

/// A client connection speaking HTTP/1.1: served here request by request,
/// or by hyper from the first request that is not served here on.
pub struct Connection<I, S> {
    state: State<I, S>,
    /// The connection's handle: its graceful close is asked there.
    conn: Conn,
    http1: Arc<hyper::server::conn::http1::Builder>,
}

type Own<I, S> = Pin<Box<dyn Future<Output = Result<Handoff<I, S>, BoxError>> + Send>>;
type Hyper = Pin<Box<dyn HyperConn>>;

/// hyper's connection, once a connection is handed to it.
trait HyperConn: Future<Output = hyper::Result<()>> + Send {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> HyperConn for hyper::server::conn::http1::Connection<TokioIo<Rewind<I>>, Adapt<S>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + RawAnswer + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self)
    }
}

enum State<I, S> {
    Own(Own<I, S>),
    Hyper(Hyper),
    Done,
}

impl<I, S, B> Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + RawAnswer + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Serves `io`, the connection `conn`, with `service`; `http1` serves
    /// what is handed to hyper.
    pub fn new(
        io: I,
        service: S,
        http1: Arc<hyper::server::conn::http1::Builder>,
        conn: Conn,
    ) -> Connection<I, S> {
        let own: Own<I, S> = Box::pin(serve(io, service, conn.clone()));
        Connection {
            state: State::Own(own),
            conn,
            http1,
        }
    }

    /// Closes the connection once the request in progress is answered, or
    /// at once between requests.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.conn.close_gracefully();
        if let State::Hyper(c) = &mut this.state {
            c.as_mut().graceful_shutdown();
        }
    }
}

impl<I, S, B> Future for Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + RawAnswer + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Own(own) => match ready!(own.as_mut().poll(cx)) {
                    Ok(Some((io, buf, service))) => {
                        let io = TokioIo::new(Rewind::new(buf.freeze(), io));
                        let mut c: Hyper =
                            Box::pin(this.http1.serve_connection(io, Adapt(service)));
                        if this.conn.closing() {
                            c.as_mut().graceful_shutdown();
                        }
                        this.state = State::Hyper(c);
                    }
                    Ok(None) => {
                        this.state = State::Done;
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) => {
                        this.state = State::Done;
                        return Poll::Ready(Err(e));
                    }
                },
                State::Hyper(c) => {
                    let end = ready!(c.as_mut().poll(cx));
                    if let Err(e) = &end {
                        // hyper answered a head it could not read (400, or
                        // 431 past its buffer) and closes with the rest of
                        // the request unread, which a client still writing
                        // it would get as a reset instead of the answer:
                        // closed lingering, as after a 413. Its connection
                        // still holds the socket here.
                        if e.is_parse() || e.is_parse_too_large() {
                            this.conn.linger();
                        }
                    }
                    return Poll::Ready(end.map_err(Into::into));
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A service over [`RequestBody`] as hyper calls it.
#[derive(Debug, Clone)]
pub struct Adapt<S>(pub S);

impl<S, B> Service<Request<Incoming>> for Adapt<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    B: RawAnswer,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = WithMap<S::Future>;

    fn call(&self, req: Request<Incoming>) -> WithMap<S::Future> {
        WithMap {
            inner: self.0.call(req.map(RequestBody::Hyper)),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Adapt`]'s answer, with the slot's header lines that came as they
    /// were ([`RawAnswer`]) put in its map: hyper writes only the map.
    #[derive(Debug)]
    pub struct WithMap<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for WithMap<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: RawAnswer,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut out = ready!(self.project().inner.poll(cx));
        if let Ok(resp) = &mut out {
            into_map_headers(resp);
        }
        Poll::Ready(out)
    }
}

/// A socket whose first reads give back bytes read off it before.
#[derive(Debug)]
pub struct Rewind<I> {
    pre: Bytes,
    io: I,
}

impl<I> Rewind<I> {
    pub fn new(pre: Bytes, io: I) -> Rewind<I> {
        Rewind { pre, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            if this.pre.is_empty() {
                this.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt as _, Full};
    use hyper::service::service_fn;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn parsed(text: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(text);
        let p = parse_request(&mut buf);
        (p, buf)
    }

    #[test]
    fn a_plain_request_is_parsed_here_and_its_body_left_to_follow() {
        let (p, buf) = parsed(
            b"POST /mcp?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nMcp-Session-Id: s1\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nhello GET",
        );
        let Parsed::Head(head) = p else {
            panic!("not served here: {p:?}")
        };
        assert_eq!(head.req.method(), Method::POST);
        assert_eq!(head.req.uri(), "/mcp?x=1");
        assert!(head.keep_alive);
        assert_eq!(head.body, 5);
        assert_eq!(&buf[..], b"hello GET");
        // The lines as they came, the map empty until made whole.
        let mut req = head.req;
        assert!(req.headers().is_empty(), "{:?}", req.headers());
        RequestBody::whole_map(&mut req).unwrap();
        assert_eq!(req.headers()["host"], "a");
        assert_eq!(req.headers()["mcp-session-id"], "s1");
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(req.headers()["content-length"], "5");
        assert_eq!(req.headers().len(), 5);
        assert!(req.body_mut().take_lines().is_none());
    }

    #[test]
    fn a_connection_line_that_names_a_header_makes_the_whole_map() {
        // `Connection` may name headers to drop: the forwarder strips them
        // from the whole map, and no lines go upstream as they came.
        let (p, _) = parsed(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\nAccept: */*\r\n\r\n",
        );
        let Parsed::Head(mut head) = p else {
            panic!("not served here: {p:?}")
        };
        assert_eq!(head.req.headers().len(), 4);
        assert!(head.req.body_mut().take_lines().is_none());
        // `Connection: keep-alive` (what the SDKs' clients send) and the
        // other hop-by-hop lines name nothing: the lines are kept, and the
        // upstream encoder leaves those out.
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive , close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 300\r\nTE: trailers\r\n\r\n",
        ] {
            let (p, _) = parsed(head);
            let Parsed::Head(mut h) = p else {
                panic!("not served here: {p:?}")
            };
            assert!(h.req.headers().is_empty(), "{:?}", h.req.headers());
            assert!(
                h.req.body_mut().take_lines().is_some(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn connection_close_ends_keep_alive_and_a_partial_head_waits() {
        let (p, _) = parsed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(
            matches!(
                p,
                Parsed::Head(Head {
                    keep_alive: false,
                    body: 0,
                    ..
                })
            ),
            "{p:?}"
        );
        let partial = b"GET / HTTP/1.1\r\nHost: a\r\n";
        let (p, buf) = parsed(partial);
        assert!(matches!(p, Parsed::Partial), "{p:?}");
        assert_eq!(&buf[..], partial, "nothing taken");
    }

    #[test]
    fn what_hyper_serves_is_left_in_the_buffer_untouched() {
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(MAX_HEAD + 1));
        let cases: Vec<&[u8]> = vec![
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            big.as_bytes(),
            long.as_bytes(),
        ];
        for text in cases {
            let (p, buf) = parsed(text);
            assert!(
                matches!(p, Parsed::Hyper),
                "{p:?} for {:?}",
                String::from_utf8_lossy(&text[..40.min(text.len())])
            );
            assert_eq!(&buf[..], text, "the buffer is as it was");
        }
    }

    #[test]
    fn a_head_http_refuses_after_the_parse_is_given_back_whole() {
        let mut buf = BytesMut::from(&b"rest"[..]);
        give_back(&mut buf, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n\r\nrest");
    }

    #[test]
    fn answers_are_framed_as_hyper_frames_them() {
        let full = Full::new(Bytes::from_static(b"abc"));
        assert_eq!(framing_of(None, &full), Framing::Length(3));
        let empty = Full::new(Bytes::new());
        assert_eq!(framing_of(None, &empty), Framing::Length(0));
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let stream = Watched {
            rx,
            dropped: Arc::default(),
            polls: Arc::default(),
        };
        assert_eq!(framing_of(None, &stream), Framing::Chunked);
        assert_eq!(
            framing_of(Some(7), &stream),
            Framing::Length(7),
            "the header's length wins"
        );
    }

    fn head_text<B: Body>(
        status: StatusCode,
        h: &HeaderMap,
        body: &B,
        bodiless: bool,
        keep_alive: bool,
    ) -> (String, Framing, bool) {
        let mut out = Vec::new();
        let (f, k) = encode_head(status, None, h, body, bodiless, keep_alive, &mut out);
        (String::from_utf8(out).unwrap(), f, k)
    }

    #[test]
    fn an_answers_lines_as_they_came_are_written_with_their_framing() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
            Mcp-Session-Id: inner\r\nDate: Mon, 30 Nov 2026 19:00:00 GMT\r\n\
            Content-Length: 2\r\nX-Two: a\r\nX-Two: b\r\n\r\n{}";
        let mut buf = BytesMut::from(&text[..]);
        let head = crate::upstream::h1::parse_response_raw(&mut buf, &Method::POST)
            .unwrap()
            .unwrap();
        let mut raw = head.headers;
        raw.set_session_id(HeaderValue::from_static("tagged"));
        let two = Full::new(Bytes::from_static(b"{}"));
        let mut set = HeaderMap::new();
        set.insert("x-set", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        let (f, k) = encode_head(
            StatusCode::OK,
            Some(&raw),
            &set,
            &two,
            false,
            true,
            &mut out,
        );
        let t = String::from_utf8(out).unwrap();
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: tagged\r\n\
             Date: Mon, 30 Nov 2026 19:00:00 GMT\r\nX-Two: a\r\nX-Two: b\r\nx-set: 1\r\n\
             content-length: 2\r\n\r\n"
        );
        assert_eq!((f, k), (Framing::Length(2), true));
        // A HEAD answer keeps the slot's length; a `Connection: close` set
        // on the answer after the slot's lines closes.
        set.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let mut out = Vec::new();
        let (f, k) = encode_head(StatusCode::OK, Some(&raw), &set, &two, true, true, &mut out);
        let t = String::from_utf8(out).unwrap();
        assert!(t.contains("Content-Length: 2\r\n"), "{t}");
        assert!(t.ends_with("connection: close\r\n\r\n"), "{t}");
        assert_eq!((f, k), (Framing::None, false));
    }

    #[tokio::test]
    async fn hyper_writes_an_answers_lines_put_in_its_map() {
        // A request hyper serves (here HTTP/1.0) is answered by hyper, which
        // writes only the map: the slot's lines carried by the body go there.
        let text = b"HTTP/1.1 200 OK\r\nX-From-Slot: yes\r\nContent-Length: 2\r\n\r\n";
        let svc = service_fn(move |_req: Request<RequestBody>| {
            let mut buf = BytesMut::from(&text[..]);
            let head = crate::upstream::h1::parse_response_raw(&mut buf, &Method::GET)
                .unwrap()
                .unwrap();
            let mut resp = Response::new(Carried {
                raw: Some(Box::new(head.headers)),
                body: Full::new(Bytes::from_static(b"ok")),
            });
            resp.headers_mut()
                .insert("x-set", HeaderValue::from_static("1"));
            Box::pin(std::future::ready(Ok::<_, Infallible>(resp)))
                as Pin<Box<dyn Future<Output = Result<Response<Carried>, Infallible>> + Send>>
        });
        let text = until_closed(svc, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
        assert!(
            text.starts_with("HTTP/1.") && text.contains(" 200 OK\r\n"),
            "{text}"
        );
        assert!(text.contains("x-from-slot: yes\r\n"), "{text}");
        assert!(text.contains("x-set: 1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
    }

    /// A body that carries an answer's lines as they came.
    struct Carried {
        raw: Option<Box<RawHeaders>>,
        body: Full<Bytes>,
    }

    impl RawAnswer for Carried {
        fn take_raw_headers(&mut self) -> Option<Box<RawHeaders>> {
            self.raw.take()
        }
    }

    impl Body for Carried {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            Pin::new(&mut self.get_mut().body).poll_frame(cx)
        }

        fn is_end_stream(&self) -> bool {
            self.body.is_end_stream()
        }

        fn size_hint(&self) -> http_body::SizeHint {
            self.body.size_hint()
        }
    }

    #[test]
    fn heads_carry_their_framing_a_date_and_a_close() {
        let two = Full::new(Bytes::from_static(b"{}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let (t, f, k) = head_text(StatusCode::OK, &h, &two, false, true);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("content-type: application/json\r\n"), "{t}");
        assert!(t.contains("content-length: 2\r\n"), "{t}");
        assert!(
            !t.contains("transfer-encoding") && !t.contains("connection"),
            "{t}"
        );
        assert!(
            t.contains("\r\ndate: ") && t.ends_with(" GMT\r\n\r\n"),
            "{t}"
        );
        assert_eq!((f, k), (Framing::Length(2), true));
        // The answer's own length is its framing; a bad one is not used.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let (t, f, _) = head_text(StatusCode::OK, &h, &two, false, true);
        assert!(
            t.contains("content-length: 99\r\n") && f == Framing::Length(99),
            "{t}"
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9x"));
        let (t, f, _) = head_text(StatusCode::OK, &h, &two, false, true);
        assert!(
            t.contains("content-length: 2\r\n") && !t.contains("9x") && f == Framing::Length(2),
            "{t}"
        );
        // `Connection: close` from the answer or the caller closes.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Close"));
        let (t, _, k) = head_text(StatusCode::OK, &h, &two, false, true);
        assert!(
            !k && t.matches("connection: close\r\n").count() == 1 && !t.contains("Close"),
            "{t}"
        );
        let (t, _, k) = head_text(StatusCode::OK, &HeaderMap::new(), &two, false, false);
        assert!(!k && t.contains("connection: close\r\n"), "{t}");
        // HEAD and 304 keep the length they would have had; 204 has none.
        let (t, f, _) = head_text(StatusCode::NOT_MODIFIED, &h, &two, true, true);
        assert!(
            t.contains("content-length: 99\r\n") && f == Framing::None,
            "{t}"
        );
        let (t, _, _) = head_text(StatusCode::NO_CONTENT, &h, &two, true, true);
        assert!(!t.contains("content-length"), "{t}");
        let mut dated = HeaderMap::new();
        dated.insert(header::DATE, HeaderValue::from_static("then"));
        let status = StatusCode::from_u16(599).unwrap();
        let (t, _, _) = head_text(status, &dated, &two, false, true);
        assert!(
            t.starts_with("HTTP/1.1 599 \r\n") && t.matches("date").count() == 1,
            "{t}"
        );
    }

    type Answer = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

    /// Answers every request with what it saw: which path served it (hyper
    /// or here), its method, target and body.
    fn echo() -> impl Service<
        Request<RequestBody>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = Answer,
    > + Clone {
        service_fn(|req: Request<RequestBody>| {
            Box::pin(async move {
                let path = match req.body() {
                    RequestBody::Hyper(_) => "hyper",
                    RequestBody::Read { .. } => "own",
                };
                let line = format!("{} {} {}", path, req.method(), req.uri());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let text = format!("{line} {}", String::from_utf8_lossy(&body));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            }) as Pin<Box<dyn Future<Output = _> + Send>>
        })
    }

    fn http1() -> Arc<hyper::server::conn::http1::Builder> {
        Arc::new(hyper::server::conn::http1::Builder::new())
    }

    /// Reads answers off `client` until `n` bodies have been read whole (the
    /// bodies of `echo` are framed by length).
    async fn answers(client: &mut DuplexStream, n: usize) -> Vec<(String, String)> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        while out.len() < n {
            let mut chunk = [0u8; 4096];
            let k = client.read(&mut chunk).await.unwrap();
            assert!(
                k > 0,
                "closed after {} answers: {:?}",
                out.len(),
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&chunk[..k]);
            out.clear();
            let mut rest = &got[..];
            while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if rest.len() < end + 4 + len {
                    break;
                }
                let body = String::from_utf8_lossy(&rest[end + 4..end + 4 + len]).into_owned();
                out.push((head, body));
                rest = &rest[end + 4 + len..];
            }
        }
        out
    }

    #[tokio::test]
    async fn pipelined_and_split_requests_are_served_here_in_order() {
        let (mut client, task) = open(echo());
        client
            .write_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = answers(&mut client, 2).await;
        assert_eq!(got[0].1, "own POST /a hi");
        assert_eq!(got[1].1, "own GET /b ");
        assert!(
            got[0].0.starts_with("http/1.1 200 ok") && got[0].0.contains("date: "),
            "{}",
            got[0].0
        );
        // A head and its body in two writes, as Python's http.client sends them.
        client
            .write_all(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.write_all(b"abc").await.unwrap();
        assert_eq!(answers(&mut client, 1).await[0].1, "own POST /c abc");
        drop(client);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_request_hyper_serves_hands_it_the_rest_of_the_connection() {
        let (mut client, task) = open(echo());
        client
            .write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(answers(&mut client, 1).await[0].1, "own GET /first ");
        client
            .write_all(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = answers(&mut client, 2).await;
        assert_eq!(got[0].1, "hyper POST /chunked abc");
        assert_eq!(got[1].1, "hyper GET /after ");
        // A malformed head gets hyper's 400.
        client
            .write_all(b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&rest)
        );
        let _ = task.await.unwrap();
    }

    #[tokio::test]
    async fn a_body_that_stalls_goes_to_hyper_with_what_came() {
        let (mut client, task) = open(echo());
        client
            .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
            .await
            .unwrap();
        tokio::time::sleep(BODY_WAIT + std::time::Duration::from_millis(300)).await;
        client.write_all(b"cd").await.unwrap();
        assert_eq!(answers(&mut client, 1).await[0].1, "hyper POST /slow abcd");
        drop(client);
        let _ = task.await.unwrap();
    }

    /// A connection served by `svc`, on an in-memory socket: the client's
    /// end, and the task serving it.
    fn open<S, B>(svc: S) -> (DuplexStream, tokio::task::JoinHandle<Result<(), BoxError>>)
    where
        S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send,
        B: Body<Data = Bytes> + RawAnswer + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(Connection::new(server, svc, http1(), Conn::new()));
        (client, task)
    }

    /// A service that answers each request at once with what `answer`
    /// makes of it.
    fn answering(
        answer: fn(&Request<RequestBody>) -> Response<Full<Bytes>>,
    ) -> impl Service<
        Request<RequestBody>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = Answer,
    > + Clone {
        service_fn(move |req: Request<RequestBody>| {
            Box::pin(std::future::ready(Ok(answer(&req)))) as Answer
        })
    }

    /// Sends `request` on a connection served by `svc` and reads until the
    /// connection closes; the connection must end without an error.
    async fn until_closed<S, B>(svc: S, request: &[u8]) -> String
    where
        S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send,
        B: Body<Data = Bytes> + RawAnswer + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut client, task) = open(svc);
        client.write_all(request).await.unwrap();
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        task.await.unwrap().unwrap();
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test]
    async fn connection_close_is_answered_then_the_connection_ends() {
        let request = b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let text = until_closed(echo(), request).await;
        assert!(
            text.contains("connection: close\r\n") && text.ends_with("own GET /bye "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_graceful_close_waits_for_the_answer_in_progress() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
        let svc = service_fn(move |_req: Request<RequestBody>| {
            let rx = rx.lock().unwrap().take();
            Box::pin(async move {
                if let Some(rx) = rx {
                    let _ = rx.await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
            }) as Pin<Box<dyn Future<Output = _> + Send>>
        });
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Box::pin(Connection::new(server, svc, http1(), Conn::new()));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Served up to the wait for the answer.
        tokio::task::yield_now().await;
        assert!(conn.as_mut().poll(&mut cx).is_pending());
        conn.as_mut().graceful_shutdown();
        assert!(
            conn.as_mut().poll(&mut cx).is_pending(),
            "the request in progress goes on"
        );
        tx.send(()).unwrap();
        conn.await.unwrap();
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.contains("connection: close\r\n") && text.ends_with("done"),
            "{text}"
        );
    }

    /// A body that streams what the test sends, counts its polls and says
    /// when it is dropped.
    struct Watched {
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        dropped: Arc<AtomicBool>,
        polls: Arc<AtomicUsize>,
    }

    /// What [`answering_once`]'s service returns.
    type Once<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

    /// A service that answers its one request with `body`.
    fn answering_once<B: Body + Send + 'static>(
        body: B,
    ) -> impl Service<
        Request<RequestBody>,
        Response = Response<B>,
        Error = Infallible,
        Future = Once<B>,
    > + Send
           + 'static {
        let body = std::sync::Mutex::new(Some(body));
        service_fn(move |_req: Request<RequestBody>| {
            let body = body.lock().unwrap().take().expect("one request");
            Box::pin(async move { Ok(Response::new(body)) }) as Once<B>
        })
    }

    /// Reads an answer's head (and whatever came with it) off `client`.
    async fn read_head(client: &mut DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let k = client.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..k]);
        }
        got
    }

    #[tokio::test]
    async fn a_streams_body_is_polled_twice_per_event() {
        // Once for the event, once to find nothing more: the write that
        // follows does not wait, so the body's wake-ups stand (PROFILE §46).
        let (events, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let polls = Arc::new(AtomicUsize::new(0));
        let svc = answering_once(Watched {
            rx,
            dropped: Arc::default(),
            polls: Arc::clone(&polls),
        });
        let (mut client, task) = open(svc);
        client
            .write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_head(&mut client).await;
        let mut chunk = [0u8; 1024];
        let before = polls.load(Ordering::SeqCst);
        for n in 0..10u8 {
            let event = format!("data: {n}\n\n");
            events.send(Bytes::from(event.clone())).await.unwrap();
            let k = client.read(&mut chunk).await.unwrap();
            assert_eq!(&chunk[..k], format!("9\r\n{event}\r\n").as_bytes());
        }
        // Every event relayed, and the connection idle again.
        tokio::task::yield_now().await;
        let polls = polls.load(Ordering::SeqCst) - before;
        assert_eq!(polls, 20, "body polls for 10 events");
        drop(client);
        task.await.unwrap().unwrap();
        drop(events);
    }

    impl RawAnswer for Watched {}

    impl Body for Watched {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.rx
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_held_frame_goes_out_whole_whatever_each_write_takes() {
        for chunked in [true, false] {
            for head in [&b"HTTP/1.1 200 OK\r\n\r\n"[..], b""] {
                let mut want = head.to_vec();
                if chunked {
                    want.extend_from_slice(b"f\r\ndata: {\"n\":1}\n\n\r\n");
                } else {
                    want.extend_from_slice(b"data: {\"n\":1}\n\n");
                }
                // Resumed after any number of bytes a write that waited took.
                for done in 0..=want.len() {
                    // A pipe that takes at most 3 bytes at a time: every write
                    // ends inside a part, or at its edge.
                    let (mut w, mut r) = tokio::io::duplex(3);
                    let reader = tokio::spawn(async move {
                        let mut got = Vec::new();
                        r.read_to_end(&mut got).await.expect("read");
                        got
                    });
                    write_framed(&mut w, head, chunked, b"data: {\"n\":1}\n\n", done)
                        .await
                        .expect("written");
                    drop(w);
                    assert_eq!(
                        String::from_utf8_lossy(&reader.await.expect("reader")),
                        String::from_utf8_lossy(&want[done..]),
                        "chunked: {chunked}, head: {}, from {done}",
                        !head.is_empty()
                    );
                }
            }
        }
        // No data, no chunk (a chunk of none would end the body).
        let mut sink = Vec::new();
        write_framed(&mut sink, b"head", true, b"", 0)
            .await
            .expect("written");
        assert_eq!(sink, b"head");
    }

    #[tokio::test]
    async fn a_stream_whose_client_reads_slowly_loses_no_byte() {
        // A pipe of 16 bytes: every event's write waits for the client, in
        // the middle of its chunk, and is taken on where it stopped.
        let (events, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let svc = answering_once(Watched {
            rx,
            dropped: Arc::default(),
            polls: Arc::default(),
        });
        let (mut client, server) = tokio::io::duplex(16);
        let task = tokio::spawn(Connection::new(server, svc, http1(), Conn::new()));
        client
            .write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut want = Vec::new();
        for n in 0..6 {
            let event = format!("data: {}\n\n", n.to_string().repeat(40 + n));
            want.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
            events.send(Bytes::from(event)).await.unwrap();
        }
        want.extend_from_slice(b"0\r\n\r\n");
        drop(events);
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        task.await.unwrap().unwrap();
        let body = all.split(|_| false).next().unwrap();
        let at = body
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        assert_eq!(
            String::from_utf8_lossy(&all[at..]),
            String::from_utf8_lossy(&want)
        );
    }

    #[tokio::test]
    async fn a_stream_goes_out_event_by_event_and_ends_when_its_client_leaves() {
        let (events, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let dropped = Arc::new(AtomicBool::new(false));
        let svc = answering_once(Watched {
            rx,
            dropped: Arc::clone(&dropped),
            polls: Arc::default(),
        });
        let (mut client, task) = open(svc);
        client
            .write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_head(&mut client).await;
        let mut chunk = [0u8; 1024];
        let head = String::from_utf8_lossy(&got).to_lowercase();
        assert!(
            head.contains("transfer-encoding: chunked"),
            "the head goes out before any event: {head}"
        );
        events
            .send(Bytes::from_static(b"data: 1\n\n"))
            .await
            .unwrap();
        let k = client.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..k], b"9\r\ndata: 1\n\n\r\n");
        drop(client);
        task.await.unwrap().unwrap();
        assert!(
            dropped.load(Ordering::SeqCst),
            "the body goes with its client"
        );
    }

    #[tokio::test]
    async fn head_and_204_answers_carry_no_body_and_keep_the_connection() {
        let svc = answering(|req| {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"body")));
            if req.uri() == "/none" {
                *resp.status_mut() = StatusCode::NO_CONTENT;
            }
            resp
        });
        let request = b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n\
GET /none HTTP/1.1\r\nHost: x\r\n\r\n\
GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let text = until_closed(svc, request).await;
        let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 3, "{text}");
        assert!(
            answers[0].starts_with("200 OK\r\n") && answers[0].ends_with("\r\n\r\n"),
            "HEAD: no body: {text}"
        );
        assert!(
            answers[1].starts_with("204 No Content\r\n") && answers[1].ends_with("\r\n\r\n"),
            "204: no body: {text}"
        );
        assert!(!answers[1].contains("content-length"), "{text}");
        assert!(
            answers[2].contains("content-length: 4\r\n") && answers[2].ends_with("body"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_length_ends_the_connection() {
        let svc = answering(|_| {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"abc")));
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
            resp
        });
        let text = until_closed(svc, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            text.contains("content-length: 10\r\n") && text.ends_with("abc"),
            "{text}"
        );
    }
}
