//! The SSE event scanner: finds event boundaries (an empty line) in passing bytes
//! without copying them, notes `retry:` fields, and rewrites the legacy
//! `endpoint` event so that its POST URL carries the session tag. For a
//! migrated session, event ids get the new slot's tag ([`EventIdTag`]).
//!
//! It never buffers a stream: only the first event of a legacy SSE GET is held
//! until complete (bounded), everything else goes out as it comes in.

use bytes::{Bytes, BytesMut};

/// The longest line read as a `retry:` field (`retry: ` and the 20 digits of
/// the largest u64 fit with room to spare); a longer line is no `retry:`
/// field, whichever way the stream is cut.
pub const MAX_RETRY_LINE: usize = 64;

/// Tracks where the stream stands relative to event boundaries.
#[derive(Debug, Clone)]
pub struct SseScanner {
    /// Bytes of the current line seen so far (across chunks).
    line_len: usize,
    /// The current line began with '\r' (so "\r\n" alone is an empty line).
    line_cr: bool,
    /// True when everything sent so far ends exactly at an event boundary.
    boundary: bool,
    /// The current line's bytes while it could still be a `retry:` field
    /// (up to [`MAX_RETRY_LINE`]), so a field cut across chunks is read whole.
    head: [u8; MAX_RETRY_LINE],
}

impl Default for SseScanner {
    fn default() -> Self {
        Self {
            line_len: 0,
            line_cr: false,
            boundary: true,
            head: [0; MAX_RETRY_LINE],
        }
    }
}

impl SseScanner {
    /// Whether the bytes seen so far end between two events.
    pub fn at_boundary(&self) -> bool {
        self.boundary
    }

    /// Consumes `data`; returns the largest `retry:` value (ms) found in it.
    pub fn feed(&mut self, data: &[u8]) -> Option<u64> {
        let mut retry = None;
        if self.line_len == 0 {
            self.skim(data, &mut retry);
        } else {
            // A line begun in an earlier chunk: line by line.
            self.scan(data, false, &mut retry);
        }
        retry
    }

    /// [`Self::scan`] without a stop, for `data` that starts a line (the
    /// common case: an event read whole): no line is carried across chunks,
    /// so each line is looked at where it lies. The line ends are found many
    /// bytes at a time as bit masks ([`for_each_line_end`]) rather than with
    /// one `memchr` call per line (bench/PROFILE.md §35).
    fn skim(&mut self, data: &[u8], retry: &mut Option<u64>) {
        debug_assert_eq!(self.line_len, 0);
        let mut start = 0;
        for_each_line_end(data, |nl| {
            let line = &data[start..nl];
            // Only a short line can be a `retry:` field.
            if line.len() <= MAX_RETRY_LINE && line.first() == Some(&b'r') {
                note_retry(line, retry);
            }
            self.boundary = line.is_empty() || line == b"\r";
            start = nl + 1;
        });
        let rest = &data[start..];
        if !rest.is_empty() {
            self.line_cr = rest[0] == b'\r';
            let len = rest.len();
            if len <= MAX_RETRY_LINE {
                self.head[..len].copy_from_slice(rest);
            }
            self.line_len = len;
            self.boundary = false;
        }
    }

    /// Consumes `data` up to and including the first event boundary in it, and
    /// returns the offset just past that boundary; `None` (all consumed) if none.
    pub fn feed_to_boundary(&mut self, data: &[u8]) -> Option<usize> {
        let mut retry = None;
        self.scan(data, true, &mut retry)
    }

    fn scan(
        &mut self,
        data: &[u8],
        stop_at_boundary: bool,
        retry: &mut Option<u64>,
    ) -> Option<usize> {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let seg = &data[start..nl];
            let len = self.line_len + seg.len();
            let first_cr = if self.line_len == 0 {
                seg.first() == Some(&b'\r')
            } else {
                self.line_cr
            };
            let empty = len == 0 || (len == 1 && first_cr);
            // Only a short line can be a `retry:` field; one begun in an
            // earlier chunk is read from `head`, so the cut does not matter.
            if len <= MAX_RETRY_LINE && seg.len() < len {
                let mut line = [0; MAX_RETRY_LINE];
                line[..self.line_len].copy_from_slice(&self.head[..self.line_len]);
                line[self.line_len..len].copy_from_slice(seg);
                note_retry(&line[..len], retry);
            } else if len <= MAX_RETRY_LINE {
                note_retry(seg, retry);
            }
            self.line_len = 0;
            self.line_cr = false;
            self.boundary = empty;
            start = nl + 1;
            if empty && stop_at_boundary {
                return Some(start);
            }
        }
        let rest = &data[start..];
        if !rest.is_empty() {
            if self.line_len == 0 {
                self.line_cr = rest[0] == b'\r';
            }
            let len = self.line_len + rest.len();
            if len <= MAX_RETRY_LINE {
                self.head[self.line_len..len].copy_from_slice(rest);
            }
            self.line_len = len;
            self.boundary = false;
        }
        None
    }
}

/// Calls `f` with the offset of each line end ('\n') in `data`, in order:
/// 64 bytes at a time as a bit mask (four [`newlines`]), then 16 at a time,
/// and the last few bytes as the 16 that end `data` (a second look at some
/// bytes, masked off) rather than one by one.
fn for_each_line_end(data: &[u8], mut f: impl FnMut(usize)) {
    let mut each = |at: usize, mut mask: u64| {
        while mask != 0 {
            f(at + mask.trailing_zeros() as usize);
            mask &= mask - 1;
        }
    };
    let wide = data.chunks_exact(4 * BLOCK);
    let rest = wide.remainder();
    for (i, b) in wide.enumerate() {
        let mask = u64::from(newlines(block(b, 0)))
            | u64::from(newlines(block(b, BLOCK))) << BLOCK
            | u64::from(newlines(block(b, 2 * BLOCK))) << (2 * BLOCK)
            | u64::from(newlines(block(b, 3 * BLOCK))) << (3 * BLOCK);
        each(i * 4 * BLOCK, mask);
    }
    let at = data.len() - rest.len();
    let narrow = rest.chunks_exact(BLOCK);
    let tail = narrow.remainder().len();
    for (i, b) in narrow.enumerate() {
        each(at + i * BLOCK, u64::from(newlines(block(b, 0))));
    }
    if tail != 0 && data.len() >= BLOCK {
        let last = data.len() - BLOCK;
        let seen = BLOCK - tail;
        each(last + seen, u64::from(newlines(block(data, last)) >> seen));
    } else if tail != 0 {
        let mut short = [0; BLOCK];
        short[..tail].copy_from_slice(data);
        each(0, u64::from(newlines(&short)));
    }
}

/// The bytes [`newlines`] looks at.
const BLOCK: usize = 16;

/// The block at `at` in `b`.
#[inline]
fn block(b: &[u8], at: usize) -> &[u8; BLOCK] {
    b[at..at + BLOCK].try_into().expect("a whole block")
}

/// Bit `i` set where `block[i]` is a line end: one compare of 16 bytes and
/// one `pmovmskb`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn newlines(block: &[u8; BLOCK]) -> u16 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    // SAFETY: `block` is BLOCK (16) readable bytes, what an unaligned 128-bit
    // load reads; SSE2, all these need, is part of every x86_64 CPU.
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast());
        _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\n' as i8))) as u16
    }
}

/// Bit `i` set where `block[i]` is a line end, a byte at a time.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn newlines(block: &[u8; BLOCK]) -> u16 {
    newlines_bytewise(block)
}

/// [`newlines`] a byte at a time: for other CPUs, and the tests' reference.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn newlines_bytewise(block: &[u8; BLOCK]) -> u16 {
    let mut mask = 0;
    for (i, &b) in block.iter().enumerate() {
        mask |= u16::from(b == b'\n') << i;
    }
    mask
}

/// Notes the value of `line` (without its '\n') if it is a `retry:` field.
fn note_retry(line: &[u8], retry: &mut Option<u64>) {
    let Some(v) = line.strip_prefix(b"retry:") else {
        return;
    };
    let v = v.strip_suffix(b"\r").unwrap_or(v);
    let v = v.strip_prefix(b" ").unwrap_or(v);
    if let Some(ms) = std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        *retry = Some(retry.map_or(ms, |r: u64| r.max(ms)));
    }
}

/// Holds back the first event of a legacy SSE stream until it is complete, then
/// rewrites it if it is the `endpoint` event.
#[derive(Debug)]
pub struct EndpointRewrite {
    buf: BytesMut,
    max_first_event: usize,
    scanner: SseScanner,
    tag_prefix: String,
    upstream_authority: String,
    /// The session id the rewritten endpoint gives the client (tagged).
    session: Option<Box<str>>,
}

/// The first event may not grow beyond this before we give up and pass it on.
const MAX_FIRST_EVENT: usize = 16 * 1024;

/// What the rewrite stage produced for a chunk.
pub enum Rewritten {
    /// Still waiting for the first event to complete.
    Pending,
    /// Bytes to send on; the rewrite stage is finished.
    Done(Bytes),
}

impl EndpointRewrite {
    /// `tag_prefix` is the tag to put before the upstream's session key
    /// (`mf1.blue.3.`); `upstream_authority` lets absolute URLs that point at the
    /// upstream itself become relative, so clients keep talking to the proxy.
    pub fn new(tag_prefix: String, upstream_authority: String) -> Self {
        Self {
            buf: BytesMut::new(),
            max_first_event: MAX_FIRST_EVENT,
            scanner: SseScanner::default(),
            tag_prefix,
            upstream_authority,
            session: None,
        }
    }

    /// The session id (tagged) the client got in the rewritten `endpoint`
    /// event: `None` until then, or if the first event was not one.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The same stage with another bound on the held first event (the fuzz
    /// property uses small ones, so that the fuzzer reaches that path).
    #[doc(hidden)]
    pub fn with_first_event_limit(mut self, limit: usize) -> Self {
        self.max_first_event = limit;
        self
    }

    /// How many bytes of the first event are held now.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Feeds a chunk of the stream.
    pub fn push(&mut self, data: Bytes) -> Rewritten {
        let seen = self.buf.len();
        self.buf.extend_from_slice(&data);
        match self.scanner.feed_to_boundary(&self.buf[seen..]) {
            // A first event over the limit passes on untouched, as it does
            // when it arrives in pieces (below): the cut must not decide.
            Some(end) if seen + end > self.max_first_event => {
                Rewritten::Done(std::mem::take(&mut self.buf).freeze())
            }
            Some(end) => {
                let end = seen + end;
                let rest = self.buf.split_off(end);
                let event = std::mem::take(&mut self.buf);
                let mut out =
                    BytesMut::with_capacity(event.len() + self.tag_prefix.len() + rest.len());
                match rewrite_endpoint(&event, &self.tag_prefix, &self.upstream_authority) {
                    Some(new_event) => {
                        self.session = endpoint_session(&new_event).map(Into::into);
                        out.extend_from_slice(new_event.as_bytes());
                    }
                    None => out.extend_from_slice(&event),
                }
                out.extend_from_slice(&rest);
                Rewritten::Done(out.freeze())
            }
            None if self.buf.len() > self.max_first_event => {
                Rewritten::Done(std::mem::take(&mut self.buf).freeze())
            }
            None => Rewritten::Pending,
        }
    }

    /// The stream ended before the first event completed: pass on what we held.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf).freeze())
    }
}

/// Puts a prefix before the value of every `id:` field of an SSE stream as it
/// passes, never holding bytes back: a field name cut across chunks is
/// carried over as state. A moved session's events then name the slot that
/// minted them (its session tag prefix), so that a `Last-Event-ID` the client
/// sends later can be told from one a slot it left minted (see
/// `proxy::migrate::last_event_id`).
#[derive(Debug)]
pub struct EventIdTag {
    prefix: Bytes,
    state: IdState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdState {
    /// At the start of a line.
    LineStart,
    /// This many bytes of `id:` matched at the start of the line.
    Name(u8),
    /// Just after `id:`: a space (dropped by readers) or the value is next.
    Colon,
    /// Just after `id: `: the value is next.
    Space,
    /// Anywhere else in a line.
    Rest,
}

impl EventIdTag {
    pub fn new(prefix: Bytes) -> Self {
        EventIdTag {
            prefix,
            state: IdState::LineStart,
        }
    }

    /// `data` with the prefix put before each `id:` value that starts in it
    /// (the same bytes, not copied, when none does). An empty `id:` (which
    /// resets the client's last event id) is left empty.
    pub fn push(&mut self, data: Bytes) -> Bytes {
        let mut at = Vec::new();
        let mut i = 0;
        while i < data.len() {
            if self.state == IdState::Rest {
                // Skip to the next line: most bytes are here.
                match memchr::memchr2(b'\n', b'\r', &data[i..]) {
                    Some(j) => {
                        i += j + 1;
                        self.state = IdState::LineStart;
                        continue;
                    }
                    None => break,
                }
            }
            let b = data[i];
            self.state = match (self.state, b) {
                (_, b'\n' | b'\r') => IdState::LineStart,
                (IdState::LineStart, b'i') => IdState::Name(1),
                (IdState::Name(1), b'd') => IdState::Name(2),
                (IdState::Name(2), b':') => IdState::Colon,
                (IdState::Colon, b' ') => IdState::Space,
                (IdState::Colon | IdState::Space, _) => {
                    at.push(i);
                    IdState::Rest
                }
                _ => IdState::Rest,
            };
            i += 1;
        }
        if at.is_empty() {
            return data;
        }
        let mut out = BytesMut::with_capacity(data.len() + at.len() * self.prefix.len());
        let mut from = 0;
        for i in at {
            out.extend_from_slice(&data[from..i]);
            out.extend_from_slice(&self.prefix);
            from = i;
        }
        out.extend_from_slice(&data[from..]);
        out.freeze()
    }
}

/// The longest event id [`LastEventId`] keeps (SDK servers mint ids of 36 to
/// about 70 bytes); a longer one is not kept.
pub const MAX_EVENT_ID: usize = 256;

/// The value of the last `id:` field that passed, as a client reads it (one
/// space after the colon dropped; an empty value resets it), whichever way the
/// stream is cut into chunks. It follows a call's POST stream, so that a
/// client resuming that stream with `Last-Event-ID` can be recognised (see
/// `proxy::migrate::Sessions::note_unanswered`).
#[derive(Debug, Default)]
pub struct LastEventId {
    state: LastIdState,
    value: Vec<u8>,
    last: Option<Bytes>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LastIdState {
    #[default]
    LineStart,
    Name(u8),
    /// Just after `id:`.
    Colon,
    /// In the value (its bytes go to `value`).
    Value,
    /// In a value longer than [`MAX_EVENT_ID`].
    TooLong,
    Rest,
}

impl LastEventId {
    /// A tracker for a stream that resumes from `last` (the client's
    /// `Last-Event-ID`): that stays the last id until the stream sends another.
    pub fn resuming(last: Bytes) -> Self {
        LastEventId {
            last: Some(last),
            ..Default::default()
        }
    }

    /// The last id seen, if any (and if it was not too long to keep).
    pub fn get(&self) -> Option<&Bytes> {
        self.last.as_ref()
    }

    /// Consumes a chunk of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            if self.state == LastIdState::Rest {
                match memchr::memchr2(b'\n', b'\r', &data[i..]) {
                    Some(j) => {
                        i += j + 1;
                        self.state = LastIdState::LineStart;
                        continue;
                    }
                    None => return,
                }
            }
            let b = data[i];
            self.state = match (self.state, b) {
                (LastIdState::Colon | LastIdState::Value, b'\n' | b'\r') => {
                    self.commit();
                    LastIdState::LineStart
                }
                (LastIdState::TooLong, b'\n' | b'\r') => {
                    // The client has an id we did not keep: match nothing.
                    self.last = None;
                    LastIdState::LineStart
                }
                (LastIdState::Name(2), b'\n' | b'\r') => {
                    // `id` alone: an empty value.
                    self.last = None;
                    LastIdState::LineStart
                }
                (_, b'\n' | b'\r') => LastIdState::LineStart,
                (LastIdState::LineStart, b'i') => LastIdState::Name(1),
                (LastIdState::Name(1), b'd') => LastIdState::Name(2),
                (LastIdState::Name(2), b':') => {
                    self.value.clear();
                    LastIdState::Colon
                }
                (LastIdState::Colon, b' ') => LastIdState::Value,
                (LastIdState::Colon | LastIdState::Value, _) => {
                    if self.value.len() == MAX_EVENT_ID {
                        LastIdState::TooLong
                    } else {
                        self.value.push(b);
                        LastIdState::Value
                    }
                }
                (LastIdState::TooLong, _) => LastIdState::TooLong,
                _ => LastIdState::Rest,
            };
            i += 1;
        }
    }

    fn commit(&mut self) {
        // A value with a NUL is ignored by readers (the field, not the id).
        if self.value.contains(&0) {
            return;
        }
        self.last = (!self.value.is_empty()).then(|| Bytes::copy_from_slice(&self.value));
    }
}

/// Rewrites one complete SSE event if it is `event: endpoint`; `None` otherwise.
pub fn rewrite_endpoint(
    event: &[u8],
    tag_prefix: &str,
    upstream_authority: &str,
) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut is_endpoint = false;
    let mut out = String::with_capacity(text.len() + tag_prefix.len());
    let mut rewrote = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        if let Some(v) = field(body, "event") {
            is_endpoint = v == "endpoint";
        }
        if let Some(v) = field(body, "data") {
            if !rewrote {
                if let Some(url) = tag_url(v, tag_prefix, upstream_authority) {
                    // Only the URL changes: the field name, the blanks around
                    // the URL and the line ending stay as the upstream wrote them.
                    let url_at = body.len() - v.trim_start().len();
                    let url_end = body.len() - (v.len() - v.trim_end().len());
                    out.push_str(&body[..url_at]);
                    out.push_str(&url);
                    out.push_str(&body[url_end..]);
                    out.push_str(ending);
                    rewrote = true;
                    continue;
                }
            }
        }
        out.push_str(line);
    }
    (is_endpoint && rewrote).then_some(out)
}

/// The session id in an `endpoint` event's URL (`sessionId` / `session_id`).
pub fn endpoint_session(event: &str) -> Option<&str> {
    let url = event
        .lines()
        .find_map(|l| field(l.trim_end_matches('\r'), "data"))?;
    let (at, key_len) = find_session_param(url.trim())?;
    let value = &url.trim()[at + key_len..];
    let value = value.split(['&', '#']).next().unwrap_or_default();
    (!value.is_empty()).then_some(value)
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// Inserts `tag_prefix` before the value of `sessionId` / `session_id` in `url`.
pub fn tag_url(url: &str, tag_prefix: &str, upstream_authority: &str) -> Option<String> {
    let url = url.trim();
    // An absolute URL that points at the upstream itself becomes relative, so
    // the client resolves it against the proxy it connected to.
    let url = ["http://", "https://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .and_then(|rest| rest.strip_prefix(upstream_authority))
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(url);
    let (pos, key_len) = find_session_param(url)?;
    let value_at = pos + key_len;
    let mut out = String::with_capacity(url.len() + tag_prefix.len());
    out.push_str(&url[..value_at]);
    out.push_str(tag_prefix);
    out.push_str(&url[value_at..]);
    Some(out)
}

/// Finds `sessionId=` or `session_id=` as a query parameter of a URL; returns
/// its offset in `s` and the length of `key=`.
pub fn find_session_param(s: &str) -> Option<(usize, usize)> {
    let q = s.find('?')?;
    find_in_query(&s[q + 1..]).map(|(at, len)| (q + 1 + at, len))
}

/// True when a query string names a session more than once (`sessionId`
/// or `session_id`, twice or both): which one a server reads is its own
/// choice (Starlette's query map keeps the last), the proxy routes by the
/// first.
pub fn session_params_repeated(query: &str) -> bool {
    // Another one in what follows the first's parameter, by the one matcher.
    find_in_query(query).is_some_and(|(at, _)| {
        query[at..]
            .find('&')
            .is_some_and(|end| find_in_query(&query[at + end + 1..]).is_some())
    })
}

/// Like [`find_session_param`] on a bare query string (no '?').
pub fn find_in_query(query: &str) -> Option<(usize, usize)> {
    let mut at = 0;
    for part in query.split('&') {
        for key in ["sessionId=", "session_id="] {
            if part.starts_with(key) {
                return Some((at, key.len()));
            }
        }
        at += part.len() + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_named_twice_in_a_query_is_seen() {
        for (query, twice) in [
            ("session_id=a", false),
            ("x=1&sessionId=a&y=2", false),
            ("session_id=a&session_id=b", true),
            ("sessionId=a&x=1&session_id=b", true),
            ("session_id=a&my_session_id=b", false),
            ("", false),
        ] {
            assert_eq!(session_params_repeated(query), twice, "{query:?}");
        }
    }

    /// Feeds `chunks` through a tagger; the bytes out, joined.
    fn tagged(chunks: &[&str]) -> String {
        let mut t = EventIdTag::new(Bytes::from_static(b"mf1.green.2."));
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&t.push(Bytes::copy_from_slice(c.as_bytes())));
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn event_ids_get_the_prefix_wherever_the_stream_is_cut() {
        let stream = "id: a-1\ndata: {\"id\":1}\n\nid:a-2\r\nretry: 200\r\n\r\n: id: a comment\nevent: message\ndata: id: x\nid:\n\nid: \n\n";
        let want = "id: mf1.green.2.a-1\ndata: {\"id\":1}\n\nid:mf1.green.2.a-2\r\nretry: 200\r\n\r\n: id: a comment\nevent: message\ndata: id: x\nid:\n\nid: \n\n";
        assert_eq!(tagged(&[stream]), want);
        // Cut at every byte: the same output.
        for at in 0..=stream.len() {
            assert_eq!(tagged(&[&stream[..at], &stream[at..]]), want, "cut at {at}");
        }
        let bytes: Vec<String> = stream.chars().map(String::from).collect();
        let each: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(tagged(&each), want);
    }

    fn last_id(stream: &[u8], cut: usize) -> Option<Bytes> {
        let mut t = LastEventId::default();
        for chunk in stream.chunks(cut) {
            t.feed(chunk);
        }
        t.get().cloned()
    }

    #[test]
    fn the_last_event_id_is_read_as_a_client_reads_it_wherever_the_stream_is_cut() {
        let long = format!("id: {}\ndata: x\n\n", "a".repeat(MAX_EVENT_ID + 1));
        let cases: [(&[u8], Option<&str>); 9] = [
            (b"id: a-1\ndata: \n\n", Some("a-1")),
            (b"id:a-1\r\ndata: x\r\n\r\n", Some("a-1")),
            (b"id:  two spaces\n\n", Some(" two spaces")),
            // The last id stays until another replaces it.
            (b"id: a\n\ndata: no id\n\n", Some("a")),
            (b"id: a\n\nid: b\ndata: x\n\n", Some("b")),
            // An empty id resets it; a NUL makes the field ignored.
            (b"id: a\n\nid:\n\n", None),
            (b"id: a\n\nid\n\n", None),
            (b"id: a\n\nid: b\0c\n\n", Some("a")),
            (b"data: id: x\n: id: y\nidx: z\n\n", None),
        ];
        for (stream, want) in cases {
            for cut in 1..=stream.len() {
                assert_eq!(
                    last_id(stream, cut).as_deref(),
                    want.map(str::as_bytes),
                    "{:?} in chunks of {cut}",
                    String::from_utf8_lossy(stream)
                );
            }
        }
        assert_eq!(last_id(long.as_bytes(), 7), None, "too long to keep");
        let mut t = LastEventId::resuming(Bytes::from_static(b"x"));
        t.feed(b"data: no id\n\n");
        assert_eq!(t.get().map(|b| &b[..]), Some(&b"x"[..]), "resumed from x");
        t.feed(b"id: y\n\n");
        assert_eq!(t.get().map(|b| &b[..]), Some(&b"y"[..]));
        let max = format!("id: {}\n\n", "b".repeat(MAX_EVENT_ID));
        assert_eq!(
            last_id(max.as_bytes(), 5).map(|b| b.len()),
            Some(MAX_EVENT_ID)
        );
    }

    #[test]
    fn a_chunk_without_an_id_passes_uncopied() {
        let mut t = EventIdTag::new(Bytes::from_static(b"p."));
        let data = Bytes::from_static(b"event: message\ndata: {}\n\n");
        let out = t.push(data.clone());
        assert_eq!(out.as_ptr(), data.as_ptr());
    }

    #[test]
    fn boundaries_across_chunks_and_line_ends() {
        let mut s = SseScanner::default();
        assert!(s.at_boundary());
        s.feed(b"data: a\n");
        assert!(!s.at_boundary());
        s.feed(b"\n");
        assert!(s.at_boundary());
        s.feed(b"data: b\r\n\r");
        assert!(!s.at_boundary());
        s.feed(b"\n");
        assert!(s.at_boundary());
        s.feed(b"data: c");
        assert!(!s.at_boundary());
        assert_eq!(s.feed_to_boundary(b"\n\ndata: d\n\n"), Some(2));
        assert!(s.at_boundary());
    }

    #[test]
    fn every_line_end_is_found_once_in_order_whatever_the_length() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..300 {
            for _ in 0..40 {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if rng.is_multiple_of(5) {
                            b'\n'
                        } else {
                            b'a' + (rng % 26) as u8
                        }
                    })
                    .collect();
                let want: Vec<usize> = memchr::memchr_iter(b'\n', &data).collect();
                let mut got = Vec::new();
                for_each_line_end(&data, |at| got.push(at));
                assert_eq!(got, want, "{len} bytes: {data:?}");
            }
        }
        // Every block with line ends in any of its places.
        for bits in 0..=u16::MAX {
            let block: [u8; BLOCK] = std::array::from_fn(|i| {
                if bits >> i & 1 == 1 {
                    b'\n'
                } else {
                    i as u8 * 17
                }
            });
            assert_eq!(newlines(&block), bits);
            assert_eq!(newlines_bytewise(&block), bits);
        }
    }

    /// The skim (`feed` at a line start) against the line-by-line scan:
    /// many payloads, whole and cut once anywhere.
    #[test]
    fn skimming_agrees_with_the_line_by_line_scan() {
        const PIECES: [&[u8]; 6] = [b"\n", b"\r", b"a", b"retry:", b"7", b"\r\n"];
        fn both(chunks: &[&[u8]]) {
            let (mut fast, mut slow) = (SseScanner::default(), SseScanner::default());
            for c in chunks {
                let mut slow_retry = None;
                slow.scan(c, false, &mut slow_retry);
                assert_eq!(fast.feed(c), slow_retry, "{chunks:?}");
                assert_eq!(fast.boundary, slow.boundary, "{chunks:?}");
                assert_eq!(fast.line_len, slow.line_len, "{chunks:?}");
                assert_eq!(fast.line_cr, slow.line_cr, "{chunks:?}");
                let kept = slow.line_len.min(MAX_RETRY_LINE);
                assert_eq!(fast.head[..kept], slow.head[..kept], "{chunks:?}");
            }
        }
        let mut payload = Vec::new();
        // Payloads of up to six pieces; those of up to five also behind
        // padding that puts their line ends on either side of a block's edge.
        let padded = (0..=5u32).flat_map(|n| [7, 14, 15, 16, 17, 31, 33].map(|pad| (n, pad)));
        for (n, pad) in (0..=6u32).map(|n| (n, 0)).chain(padded) {
            for mut code in 0..6usize.pow(n) {
                payload.clear();
                payload.resize(pad, b'a');
                for _ in 0..n {
                    payload.extend_from_slice(PIECES[code % 6]);
                    code /= 6;
                }
                both(&[&payload]);
                for cut in 0..=payload.len() {
                    both(&[&payload[..cut], &payload[cut..]]);
                }
            }
        }
        // Lines about as long as a `retry:` field may be (leading zeros keep
        // the value readable), whole or cut anywhere.
        for zeros in MAX_RETRY_LINE - 10..MAX_RETRY_LINE {
            let long = format!("data: x\nretry:{}7\n\nretry: 9", "0".repeat(zeros));
            for cut in 0..=long.len() {
                both(&[&long.as_bytes()[..cut], &long.as_bytes()[cut..], b"\n"]);
            }
        }
    }

    #[test]
    fn retry_is_noted() {
        let mut s = SseScanner::default();
        assert_eq!(
            s.feed(b"retry: 3000\nid: 1\ndata: x\n\nretry:500\n\n"),
            Some(3000)
        );
    }

    #[test]
    fn endpoint_rewrite_both_keys_and_forms() {
        let p = "mf1.blue.1.";
        let a = "127.0.0.1:3001";
        assert_eq!(
            tag_url("/messages?sessionId=abc", p, a).as_deref(),
            Some("/messages?sessionId=mf1.blue.1.abc")
        );
        assert_eq!(
            tag_url("/messages/?session_id=abc", p, a).as_deref(),
            Some("/messages/?session_id=mf1.blue.1.abc")
        );
        assert_eq!(
            tag_url("http://127.0.0.1:3001/m?x=1&sessionId=abc", p, a).as_deref(),
            Some("/m?x=1&sessionId=mf1.blue.1.abc")
        );
        assert_eq!(
            tag_url("https://public.example/m?sessionId=abc", p, a).as_deref(),
            Some("https://public.example/m?sessionId=mf1.blue.1.abc")
        );
        assert_eq!(tag_url("/messages?other=abc", p, a), None);
    }

    #[test]
    fn endpoint_event_split_across_chunks() {
        let mut r = EndpointRewrite::new("mf1.green.2.".into(), "h:1".into());
        assert!(matches!(
            r.push(Bytes::from_static(b"event: endpoint\r\nda")),
            Rewritten::Pending
        ));
        match r.push(Bytes::from_static(b"ta: /messages/?session_id=ff\r\n\r\nevent: message\n")) {
            Rewritten::Done(b) => assert_eq!(
                &b[..],
                b"event: endpoint\r\ndata: /messages/?session_id=mf1.green.2.ff\r\n\r\nevent: message\n"
            ),
            Rewritten::Pending => panic!("should be done"),
        }
    }

    #[test]
    fn other_first_event_passes_unchanged() {
        let mut r = EndpointRewrite::new("mf1.a.1.".into(), "h:1".into());
        match r.push(Bytes::from_static(
            b"event: message\ndata: /x?sessionId=1\n\n",
        )) {
            Rewritten::Done(b) => assert_eq!(&b[..], b"event: message\ndata: /x?sessionId=1\n\n"),
            Rewritten::Pending => panic!("should be done"),
        }
    }
}
