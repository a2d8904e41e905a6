//! Header lines as they came: a head's bytes and where each of its lines
//! lies in them, each told by its name's kind ([`LineKind`]), unparsed into a
//! `HeaderMap`.
//!
//! A W1 request used to build two maps: the request's (from the client's
//! head) and the answer's (from the slot's), each line a hashed insert, a
//! checked `HeaderValue` and a reference count, about a fifth of the
//! request's instructions. The common request and answer now go through the
//! proxy as lines, their maps empty: the forwarder reads what it needs from the
//! request's lines (`proxy::scan::Scan::of_lines`), and each side is written
//! from its lines (bench/PROFILE.md §22, §31). Anything else (a `Connection`
//! line that names headers to drop, a stream whose slot sets
//! `X-Accel-Buffering` otherwise than `no`, hyper's connections, a session
//! that moves) takes the whole map ([`RawHeaders::into_map`]).
//!
//! httparse accepts exactly the name and value bytes `HeaderName` and
//! `HeaderValue` accept (a token; visible ASCII, obs-text, space and tab), so
//! a line written as it came is one a map would hold.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A header line `http` refuses. None in practice: httparse checked the same
/// bytes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadLine(pub &'static str);

/// Most header names [`Names`] keeps per worker.
const MAX_NAMES: usize = 32;
/// Longest header name [`Names`] keeps: a slot chooses the names' lengths
/// (up to the head's 64 KiB), and the list lives as long as the worker.
const MAX_NAME_LEN: usize = 64;

thread_local! {
    /// The header names of the heads this worker made maps of, as the peers
    /// spelled them. Taken out for one map and put back after it.
    static NAMES: std::cell::Cell<Names> = const { std::cell::Cell::new(Names(Vec::new())) };
}

/// Header names seen before, by their exact bytes: a slot answers every
/// request with the same names, in the same order, and an exact compare with
/// the name at the same place in the last answer costs a fraction of
/// `HeaderName::from_bytes` (its checks and lowering, and for a custom name
/// an allocation and a copy; bench/PROFILE.md §17). The first [`MAX_NAMES`]
/// distinct spellings of at most [`MAX_NAME_LEN`] bytes are kept; any other
/// name is parsed each time.
#[derive(Default)]
struct Names(Vec<(Box<[u8]>, HeaderName)>);

impl Names {
    /// The name spelled `raw`, the `i`-th of its head.
    fn get(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
        if let Some((r, n)) = self.0.get(i) {
            if **r == *raw {
                return Ok(n.clone());
            }
        }
        if let Some((_, n)) = self.0.iter().find(|(r, _)| **r == *raw) {
            return Ok(n.clone());
        }
        let name = HeaderName::from_bytes(raw)?;
        if self.0.len() < MAX_NAMES && raw.len() <= MAX_NAME_LEN {
            self.0.push((raw.into(), name.clone()));
        }
        Ok(name)
    }
}

/// What the proxy does with a header line, told by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    Other,
    ContentLength,
    TransferEncoding,
    Connection,
    /// `Keep-Alive` (hop-by-hop): a slot's answer may say in it how long
    /// the slot keeps an idle connection open (`timeout=5`).
    KeepAlive,
    /// Another hop-by-hop header (RFC 9110 §7.6.1): `Proxy-Connection`,
    /// `TE`, `Trailer`, `Upgrade`, `Proxy-Authenticate`,
    /// `Proxy-Authorization`.
    HopByHop,
    ContentType,
    Date,
    SessionId,
    /// Names a request's head carries that the proxy acts on.
    Host,
    Origin,
    McpMethod,
    McpProtocolVersion,
    LastEventId,
    XForwardedFor,
    XForwardedHost,
    XForwardedProto,
    XForwardedClientCert,
    XRequestId,
    UserAgent,
    Expect,
}

impl LineKind {
    /// The kind of the header named `name` (any case).
    pub fn of(name: &[u8]) -> LineKind {
        let is = |s: &str| is_lower(name, s.as_bytes());
        match name.len() {
            2 if is("te") => LineKind::HopByHop,
            4 if is("date") => LineKind::Date,
            4 if is("host") => LineKind::Host,
            6 if is("origin") => LineKind::Origin,
            6 if is("expect") => LineKind::Expect,
            7 if is("trailer") || is("upgrade") => LineKind::HopByHop,
            10 if is("connection") => LineKind::Connection,
            10 if is("keep-alive") => LineKind::KeepAlive,
            10 if is("mcp-method") => LineKind::McpMethod,
            10 if is("user-agent") => LineKind::UserAgent,
            12 if is("content-type") => LineKind::ContentType,
            12 if is("x-request-id") => LineKind::XRequestId,
            13 if is("last-event-id") => LineKind::LastEventId,
            14 if is("content-length") => LineKind::ContentLength,
            14 if is("mcp-session-id") => LineKind::SessionId,
            15 if is("x-forwarded-for") => LineKind::XForwardedFor,
            16 if is("proxy-connection") => LineKind::HopByHop,
            16 if is("x-forwarded-host") => LineKind::XForwardedHost,
            17 if is("transfer-encoding") => LineKind::TransferEncoding,
            17 if is("x-forwarded-proto") => LineKind::XForwardedProto,
            18 if is("proxy-authenticate") => LineKind::HopByHop,
            19 if is("proxy-authorization") => LineKind::HopByHop,
            20 if is("mcp-protocol-version") => LineKind::McpProtocolVersion,
            23 if is("x-forwarded-client-cert") => LineKind::XForwardedClientCert,
            _ => LineKind::Other,
        }
    }

    /// A request header the forwarder reads (`proxy::scan`: the `Host` and
    /// `Origin` checks, routing, `Era`, a resumption's `Last-Event-ID`, the
    /// access log), taken from the lines while they are kept as they came
    /// ([`crate::upstream::RequestBody::Read`]).
    pub fn is_read(self) -> bool {
        matches!(
            self,
            LineKind::Host
                | LineKind::Origin
                | LineKind::SessionId
                | LineKind::McpMethod
                | LineKind::McpProtocolVersion
                | LineKind::LastEventId
        )
    }

    /// Hop-by-hop: never passed on as it came.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            LineKind::Connection
                | LineKind::TransferEncoding
                | LineKind::KeepAlive
                | LineKind::HopByHop
        )
    }
}

/// True when the header name `name` is `lower` (lowercase letters and `-`),
/// in any case. Eight bytes at a time: for a byte of a token (what httparse
/// lets through in a name), setting bit 5 lowers a letter and keeps `-`, and
/// no other token byte becomes a lowercase letter or `-` that way.
pub(crate) fn is_lower(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (name, lower);
    while a.len() >= 8 {
        let x = u64::from_le_bytes(a[..8].try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        if x | 0x2020_2020_2020_2020 != y {
            return false;
        }
        (a, b) = (&a[8..], &b[8..]);
    }
    a.iter().zip(b).all(|(&x, &y)| x | 0x20 == y)
}

/// One header line of a head: where its name and value lie in the head's
/// bytes, and its kind.
#[derive(Clone, Copy, Debug)]
pub struct Line {
    name: (u32, u32),
    value: (u32, u32),
    kind: LineKind,
}

impl Line {
    /// What the line is to the proxy.
    pub fn kind(&self) -> LineKind {
        self.kind
    }

    /// The line of `h`, in a buffer that starts at `base` ([`span_of`]).
    pub fn of(base: usize, h: &httparse::Header<'_>, kind: LineKind) -> Line {
        let (ns, ne, vs, ve) = span_of(base, h);
        Line {
            name: (ns, ne),
            value: (vs, ve),
            kind,
        }
    }
}

/// An answer's headers as its slot sent them: the head's bytes and where each
/// line lies in them, unparsed into a `HeaderMap`. The forwarder passes the
/// common answer on to an HTTP/1.1 client of its own connection written from
/// these lines ([`RawHeaders::iter`], [`LineCopy`]); anything else takes the map
/// ([`RawHeaders::into_map`]). httparse accepted each name and value, with
/// the same bytes as `HeaderName` and `HeaderValue` accept: a line written as
/// it came is one the map would hold (bench/PROFILE.md §22).
#[derive(Debug, Clone)]
pub struct RawHeaders {
    head: Bytes,
    lines: Vec<Line>,
    /// The value written in place of the `Mcp-Session-Id` lines' (at most
    /// one line is written then).
    session_id: Option<HeaderValue>,
}

impl RawHeaders {
    /// The `lines` of `head`, as httparse found them there ([`Line::of`]).
    pub fn new(head: Bytes, lines: Vec<Line>) -> RawHeaders {
        RawHeaders {
            head,
            lines,
            session_id: None,
        }
    }

    /// The lines of a head that came with `pairs` (name, value), in order:
    /// for tests that compare a path over lines with one over a map.
    #[cfg(test)]
    pub(crate) fn of_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> RawHeaders {
        let (mut text, mut spans) = (Vec::new(), Vec::new());
        for (n, v) in pairs {
            let ns = text.len() as u32;
            text.extend_from_slice(n);
            let ne = text.len() as u32;
            text.extend_from_slice(b": ");
            let vs = text.len() as u32;
            text.extend_from_slice(v);
            spans.push((ns, ne, vs, text.len() as u32));
            text.extend_from_slice(b"\r\n");
        }
        let head = Bytes::from(text);
        let lines = spans
            .iter()
            .map(|&(ns, ne, vs, ve)| Line {
                name: (ns, ne),
                value: (vs, ve),
                kind: LineKind::of(&head[ns as usize..ne as usize]),
            })
            .collect();
        RawHeaders::new(head, lines)
    }

    /// The lines of the kinds the forwarder reads ([`LineKind::is_read`]),
    /// in order, each with a way to its value (sharing the head's bytes).
    pub fn read_values(&self) -> impl Iterator<Item = (LineKind, impl Fn() -> Bytes + '_)> + '_ {
        self.lines
            .iter()
            .filter(|l| l.kind.is_read())
            .map(move |l| {
                (l.kind, move || {
                    self.head.slice(l.value.0 as usize..l.value.1 as usize)
                })
            })
    }

    /// True when a line of `kind` is there.
    fn has(&self, kind: LineKind) -> bool {
        self.lines.iter().any(|l| l.kind == kind)
    }

    /// About the bytes the lines take written out.
    pub fn size(&self) -> usize {
        self.head.len()
    }

    /// True when a `Connection` line names a header to drop with it
    /// ([`connection_names_headers`]): only a map drops what it names
    /// (`proxy::forward::strip_hop_by_hop`). Every other hop-by-hop line
    /// (`Connection: keep-alive`, `Keep-Alive`, `Transfer-Encoding`) is left
    /// out where the lines are written, on either side.
    pub fn names_headers(&self) -> bool {
        self.values(LineKind::Connection)
            .any(connection_names_headers)
    }

    /// The values of the lines named `lower` (lowercase; the name in any
    /// case), in order.
    pub fn values_named<'a>(
        &'a self,
        lower: &'a [u8],
    ) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        self.lines
            .iter()
            .filter(move |l| is_lower(&self.head[l.name.0 as usize..l.name.1 as usize], lower))
            .map(|l| &self.head[l.value.0 as usize..l.value.1 as usize])
    }

    /// The values of the lines of `kind`, in order.
    pub fn values(&self, kind: LineKind) -> impl DoubleEndedIterator<Item = &[u8]> + '_ {
        self.lines
            .iter()
            .filter(move |l| l.kind == kind)
            .map(|l| &self.head[l.value.0 as usize..l.value.1 as usize])
    }

    /// The first `Mcp-Session-Id`, as it will be written: the one set by
    /// [`RawHeaders::set_session_id`], else the slot's.
    pub fn session_id(&self) -> Option<HeaderValue> {
        if let Some(v) = &self.session_id {
            return Some(v.clone());
        }
        let l = self.lines.iter().find(|l| l.kind == LineKind::SessionId)?;
        HeaderValue::from_maybe_shared(self.head.slice(l.value.0 as usize..l.value.1 as usize)).ok()
    }

    /// Writes `value` in place of the `Mcp-Session-Id` lines. Only for an
    /// answer that has one ([`RawHeaders::session_id`]).
    pub fn set_session_id(&mut self, value: HeaderValue) {
        self.session_id = Some(value);
    }

    /// The lines in order, each as its kind, its name as the slot spelled it
    /// and its value; the `Mcp-Session-Id` set by
    /// [`RawHeaders::set_session_id`] comes once, in place of the slot's.
    pub fn iter(&self) -> impl Iterator<Item = HeaderLine<'_>> + '_ {
        let mut session_given = false;
        let head: &[u8] = &self.head;
        self.lines.iter().filter_map(move |l| {
            let name = &head[l.name.0 as usize..l.name.1 as usize];
            match (l.kind, &self.session_id) {
                (LineKind::SessionId, Some(v)) => {
                    if session_given {
                        return None;
                    }
                    session_given = true;
                    Some(HeaderLine {
                        kind: l.kind,
                        name,
                        value: v.as_bytes(),
                        whole: None,
                    })
                }
                _ => {
                    let (ne, vs, ve) = (l.name.1 as usize, l.value.0 as usize, l.value.1 as usize);
                    // `name: value` and CRLF, exactly as `put` writes it.
                    let whole = (vs == ne + 2
                        && head[ne..vs] == *b": "
                        && head.get(ve..ve + 2) == Some(b"\r\n"))
                    .then_some((l.name.0, ve as u32 + 2));
                    Some(HeaderLine {
                        kind: l.kind,
                        name,
                        value: &head[vs..ve],
                        whole,
                    })
                }
            }
        })
    }

    /// A writer of these lines into a head of our own ([`LineCopy`]).
    pub fn copier(&self) -> LineCopy<'_> {
        LineCopy {
            head: &self.head,
            run: (0, 0),
        }
    }

    /// The headers in a map, each value sharing the head's bytes, the
    /// `Mcp-Session-Id` set by [`RawHeaders::set_session_id`] in place of
    /// the slot's.
    pub fn into_map(self) -> Result<HeaderMap, BadLine> {
        // Room for more than the answer's headers when it has a length: hyper
        // keeps this map, once it has written the answer, for the next
        // request head on the client connection, which then takes the
        // forwarding headers (`rewrite_request`) without growing. A streamed
        // answer (SSE) holds its connection for long, with this map kept
        // meanwhile: exactly its size (bench/PROFILE.md §12).
        let room = if self.has(LineKind::ContentLength) {
            MAP_ROOM
        } else {
            0
        };
        let mut map = self.map_of(|_| true, room)?;
        if let Some(v) = self.session_id {
            map.insert(crate::mcp::headers::MCP_SESSION_ID, v);
        }
        Ok(map)
    }

    /// The map of the lines whose kind `keep` keeps, with room for at least
    /// `room` headers.
    fn map_of(&self, keep: impl Fn(LineKind) -> bool, room: usize) -> Result<HeaderMap, BadLine> {
        let count = self.lines.iter().filter(|l| keep(l.kind)).count();
        let mut map = HeaderMap::with_capacity(count.max(room));
        let mut names = NAMES.with(|n| n.take());
        for (i, l) in self.lines.iter().enumerate() {
            if !keep(l.kind) {
                continue;
            }
            let Ok(name) = names.get(i, &self.head[l.name.0 as usize..l.name.1 as usize]) else {
                NAMES.with(|n| n.set(names));
                return Err(BadLine("bad header name"));
            };
            let raw = self.head.slice(l.value.0 as usize..l.value.1 as usize);
            let Ok(value) = HeaderValue::from_maybe_shared(raw) else {
                NAMES.with(|n| n.set(names));
                return Err(BadLine("bad header value"));
            };
            map.append(name, value);
        }
        NAMES.with(|n| n.set(names));
        Ok(map)
    }
}

/// Appends the header line `name: value`.
pub fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One header line of [`RawHeaders::iter`].
#[derive(Clone, Copy, Debug)]
pub struct HeaderLine<'a> {
    pub kind: LineKind,
    /// The name as the peer spelled it.
    pub name: &'a [u8],
    pub value: &'a [u8],
    /// Where `name: value` and its CRLF lie in the head, when the peer wrote
    /// the line exactly so (one space, no trailing blanks, CRLF): the line
    /// can then be copied as it is, with its neighbours ([`LineCopy`]).
    whole: Option<(u32, u32)>,
}

/// Writes header lines into a head of our own: a run of lines that lie
/// together in their peer's head, each as `put` would write it, goes in
/// one copy, where each line cost four (name, `": "`, value, CRLF; 22 small
/// `memcpy` calls for a W1 request's two heads, bench/PROFILE.md §30). A line
/// written otherwise ([`LineCopy::put`]) ends the run first, so the order
/// stays the order of the calls. [`LineCopy::finish`] writes what is left.
pub struct LineCopy<'a> {
    head: &'a [u8],
    /// The run not yet written: a range of `head`, empty when none.
    run: (u32, u32),
}

impl LineCopy<'_> {
    /// Writes `line` (from the same [`RawHeaders`]).
    #[inline]
    pub fn line(&mut self, out: &mut Vec<u8>, line: &HeaderLine<'_>) {
        match line.whole {
            Some((start, end)) if start == self.run.1 && self.run.0 != self.run.1 => {
                self.run.1 = end;
            }
            Some(span) => {
                self.flush(out);
                self.run = span;
            }
            None => self.put(out, line.name, line.value),
        }
    }

    /// Writes the line `name: value`, after the run before it.
    #[inline]
    pub fn put(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        self.flush(out);
        put(out, name, value);
    }

    /// Writes the run not yet written.
    #[inline]
    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.run.0 != self.run.1 {
            out.extend_from_slice(&self.head[self.run.0 as usize..self.run.1 as usize]);
            self.run = (0, 0);
        }
    }

    /// Writes what is left; the lines are all out after it.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.flush(out);
    }
}

/// A response body that may carry its answer's headers as they came
/// ([`RawHeaders`]), out of the response's map: whoever writes or hands on the
/// response takes them.
pub trait RawAnswer {
    fn take_raw_headers(&mut self) -> Option<Box<RawHeaders>> {
        None
    }
}

impl RawAnswer for http_body_util::Full<Bytes> {}

/// Moves the headers `resp`'s body carries as they came ([`RawAnswer`]) into
/// its map, for a writer that knows only the map (hyper). A line `http`
/// refuses (none: httparse checked the same bytes) is left out.
pub fn into_map_headers<B: RawAnswer>(resp: &mut http::Response<B>) {
    let Some(raw) = resp.body_mut().take_raw_headers() else {
        return;
    };
    match raw.into_map() {
        Ok(map) => {
            // What was set on the answer after the slot's lines (e.g.
            // `Connection: close` on a winding-down connection) replaces the
            // lines of its name (`extend` inserts a name's first value and
            // appends the rest).
            let set = std::mem::replace(resp.headers_mut(), map);
            resp.headers_mut().extend(set);
        }
        Err(e) => tracing::warn!(error = %e, "an answer's headers were left out"),
    }
}

/// True when the `Connection` value `v` lists a token other than `close`
/// and `keep-alive` (any case, RFC 9110 §7.6.1): the name of a header to
/// drop with it. The SDKs' HTTP clients (httpx, undici) send `Connection:
/// keep-alive` on every request, and Node's server on every answer: those
/// name nothing.
pub fn connection_names_headers(v: &[u8]) -> bool {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii).any(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// Where a parsed header's name and value lie in the buffer that starts at
/// `base`: (name start, name end, value start, value end). A head is at most
/// [`MAX_HEAD`](crate::upstream::h1::MAX_HEAD) bytes, so each fits a `u32`.
pub fn span_of(base: usize, h: &httparse::Header<'_>) -> (u32, u32, u32, u32) {
    let n = h.name.as_ptr() as usize - base;
    let v = h.value.as_ptr() as usize - base;
    (
        n as u32,
        (n + h.name.len()) as u32,
        v as u32,
        (v + h.value.len()) as u32,
    )
}

/// The least room of a response's [`HeaderMap`]: a request head of ordinary
/// size plus the four forwarding headers fit without a rehash.
pub(crate) const MAP_ROOM: usize = 12;

/// True when `v` is a header value `HeaderValue::to_str` takes: visible
/// ASCII, spaces and tabs.
pub(crate) fn is_visible(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (32..127).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_header_names_are_the_names_from_bytes_gives() {
        let mut names = Names::default();
        let spellings: Vec<String> = (0..MAX_NAMES + 8)
            .map(|i| format!("X-Name-{i}"))
            .chain(["content-type", "Content-Type", "mcp-session-id"].map(String::from))
            .collect();
        // Twice over, at their own places and shifted: kept or not, the
        // same name as a fresh parse.
        for round in 0..2 {
            for (i, raw) in spellings.iter().enumerate() {
                let got = names.get(i + round, raw.as_bytes()).expect("a name");
                assert_eq!(
                    got,
                    HeaderName::from_bytes(raw.as_bytes()).unwrap(),
                    "{raw}"
                );
            }
        }
        assert_eq!(names.0.len(), MAX_NAMES, "bounded");
        // A long name is parsed, never kept.
        let mut fresh = Names::default();
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for _ in 0..2 {
            let got = fresh.get(0, long.as_bytes()).expect("a name");
            assert_eq!(got.as_str(), long);
        }
        assert!(fresh.0.is_empty(), "kept a {}-byte name", long.len());
        assert!(names.get(0, b"bad name").is_err());
        assert!(names.get(0, b"").is_err());
    }

    #[test]
    fn line_kinds_are_the_names_the_proxy_acts_on_in_any_case() {
        use LineKind::*;
        for (name, kind) in [
            ("Content-Length", ContentLength),
            ("TRANSFER-ENCODING", TransferEncoding),
            ("connection", Connection),
            ("Keep-Alive", KeepAlive),
            ("Proxy-Connection", HopByHop),
            ("TE", HopByHop),
            ("Trailer", HopByHop),
            ("Upgrade", HopByHop),
            ("Proxy-Authenticate", HopByHop),
            ("proxy-authorization", HopByHop),
            ("Content-Type", ContentType),
            ("Date", Date),
            ("Mcp-Session-Id", SessionId),
            ("Content-Lengths", Other),
            ("X-Date", Other),
            ("mcp-session-ie", Other),
            ("te2", Other),
        ] {
            assert_eq!(LineKind::of(name.as_bytes()), kind, "{name}");
        }
    }

    /// A head as the connections parse it: httparse's lines, `Line::of`.
    fn parsed(head: &'static [u8]) -> RawHeaders {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(head).unwrap().is_complete());
        let base = head.as_ptr() as usize;
        let lines = resp
            .headers
            .iter()
            .map(|h| Line::of(base, h, LineKind::of(h.name.as_bytes())))
            .collect();
        RawHeaders::new(Bytes::from_static(head), lines)
    }

    #[test]
    fn lines_copied_in_runs_are_the_lines_written_one_by_one() {
        let mut raw = parsed(
            b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nX-Tight:b\r\nX-Blanks:  c  \r\n\
              X-Lf: d\nMcp-Session-Id: s\r\nX-Left-Out: e\r\nX-After: f\r\n\
              Mcp-Session-Id: t\r\nX-Last: g\r\n\r\n",
        );
        for session in [None, Some("tagged")] {
            if let Some(v) = session {
                raw.set_session_id(HeaderValue::from_static(v));
            }
            // Each line by `put`, the one left out skipped, a line of our
            // own in the middle: what the copier must write too.
            let (mut want, mut got) = (Vec::new(), Vec::new());
            let mut copy = raw.copier();
            for line in raw.iter() {
                if line.name == b"X-Left-Out" {
                    continue;
                }
                put(&mut want, line.name, line.value);
                copy.line(&mut got, &line);
                if line.name == b"X-After" {
                    put(&mut want, b"x-ours", b"1");
                    copy.put(&mut got, b"x-ours", b"1");
                }
            }
            copy.finish(&mut got);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "session id {session:?}"
            );
        }
        // Only a line exactly as `put` writes it is copied as it came.
        let whole: Vec<bool> = raw.iter().map(|l| l.whole.is_some()).collect();
        assert_eq!(
            whole,
            [true, false, false, false, false, true, true, true],
            "Content-Type, tight, blanks, LF, the set session id, left-out, after, last"
        );
    }
}
