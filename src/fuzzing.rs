//! The properties the fuzz targets in `fuzz/` check, one function per parser
//! that input reaches. They live in the library so that the fuzz targets
//! (nightly, libFuzzer) and `tests/fuzz_corpus.rs` (stable, every committed
//! corpus file) run exactly the same checks. Each function takes the raw
//! fuzzer bytes and panics, with what differed, when its property fails.
//!
//! Not part of the product's interface: hidden from the docs, used by nothing
//! but the fuzz targets and the tests.

use std::path::Path;
use std::str::FromStr;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, HOST, ORIGIN};
use http::uri::Authority;
use http::Uri;

use crate::config::Config;
use crate::control::persist::{self, StateFile};
use crate::control::protocol::{parse_line, Request};
use crate::control::state::{State, MAX_GENERATION};
use crate::mcp::tag::{tag_header, tag_prefix, SessionTag};
use crate::proxy::h1 as server_h1;
use crate::proxy::host_guard::{
    authority_host, authority_host_slow, origin_host, HostGuard, Refused,
};
use crate::proxy::sse::{
    find_in_query, find_session_param, EndpointRewrite, EventIdTag, LastEventId, Rewritten,
    SseScanner, MAX_EVENT_ID,
};
use crate::upstream::h1;

/// Fuzzer bytes as cut points and a payload: byte 0 says how many cuts
/// (0 to 7), each cut is two little-endian bytes (taken modulo the payload's
/// length + 1), the rest is the payload. Returns the payload and its chunks.
pub fn chunked(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], Vec::new());
    };
    let n = usize::from(n % 8);
    let (cuts, payload) = rest.split_at((2 * n).min(rest.len()));
    let mut at: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (payload.len() + 1))
        .collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for cut in at {
        chunks.push(&payload[start..cut]);
        start = cut;
    }
    chunks.push(&payload[start..]);
    (payload, chunks)
}

/// The SSE scanner: the event boundaries, `at_boundary` after every chunk and
/// the largest `retry:` are the same whatever the chunking of the same bytes,
/// and agree with a line-by-line model of the grammar; `feed_to_boundary`
/// never returns an offset past its data.
pub fn sse_scanner(data: &[u8]) {
    let (payload, chunks) = chunked(data);

    // The model: lines end at '\n'; an empty line ("" or "\r") ends an event.
    let mut model_boundary = vec![true; payload.len() + 1];
    let mut model_retry: Option<u64> = None;
    let mut line_start = 0;
    for (i, &b) in payload.iter().enumerate() {
        model_boundary[i + 1] = false;
        if b == b'\n' {
            let line = &payload[line_start..i];
            model_boundary[i + 1] = line.is_empty() || line == b"\r";
            if let Some(ms) = retry_of(line) {
                model_retry = Some(model_retry.map_or(ms, |r| r.max(ms)));
            }
            line_start = i + 1;
        }
    }
    let model_ends: Vec<usize> = (1..=payload.len())
        .filter(|&i| model_boundary[i] && payload[i - 1] == b'\n')
        .collect();

    // `feed`, chunk by chunk.
    let mut s = SseScanner::default();
    let mut retry: Option<u64> = None;
    let mut at = 0;
    for c in &chunks {
        if let Some(ms) = s.feed(c) {
            retry = Some(retry.map_or(ms, |r| r.max(ms)));
        }
        at += c.len();
        assert_eq!(
            s.at_boundary(),
            model_boundary[at],
            "at_boundary after {at} bytes of {payload:?} cut as {chunks:?}"
        );
    }
    assert_eq!(
        retry, model_retry,
        "largest retry of {payload:?} cut as {chunks:?}"
    );

    // `feed_to_boundary`, chunk by chunk: every boundary, in order.
    let mut s = SseScanner::default();
    let mut ends = Vec::new();
    let mut base = 0;
    for c in &chunks {
        let mut off = 0;
        while let Some(end) = s.feed_to_boundary(&c[off..]) {
            assert!(
                end >= 1 && end <= c.len() - off,
                "feed_to_boundary returned {end} for {} bytes",
                c.len() - off
            );
            off += end;
            ends.push(base + off);
            if off == c.len() {
                break;
            }
        }
        base += c.len();
    }
    assert_eq!(
        ends, model_ends,
        "event ends of {payload:?} cut as {chunks:?}"
    );
}

/// The answer scan (`mcp::answers::AnswerScan`, which tells a legacy
/// session's stream which calls were answered): the events it dispatches and
/// the ids it finds are the same whatever the chunking, and agree with a
/// model that reads the whole stream at once: WHATWG lines (`\r\n`, `\n` or
/// `\r`), `data` lines joined with `\n`, an event dispatched at a blank line
/// when it has data, and each `message` event's data read by `serde_json` as
/// a JSON-RPC answer (an id, a non-null `result` or `error`, no `method`).
/// Only data that is a JSON object holds the scan to the model: what is not
/// JSON the scan does not check (an answer the client could not read either).
pub fn answers(data: &[u8]) {
    use crate::mcp::answers::AnswerScan;
    let (payload, chunks) = chunked(data);

    let mut got: Vec<Option<Vec<u8>>> = Vec::new();
    let mut scan = AnswerScan::default();
    for c in &chunks {
        scan.feed(c, |id| got.push(id.map(<[u8]>::to_vec)));
    }

    // The model: lines, then events, then serde_json.
    let mut lines = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < payload.len() {
        match payload[i] {
            b'\n' => {
                lines.push(&payload[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&payload[start..i]);
                if payload.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let mut want: Vec<Option<Option<Vec<u8>>>> = Vec::new();
    let (mut kind, mut data_lines): (&[u8], Vec<&[u8]>) = (b"", Vec::new());
    for line in lines {
        if line.is_empty() {
            if !data_lines.is_empty() {
                let data = data_lines.join(&b'\n');
                want.push(if kind.is_empty() || kind == b"message" {
                    model_answer(&data)
                } else {
                    Some(None)
                });
            }
            (kind, data_lines) = (b"", Vec::new());
            continue;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"data" => data_lines.push(value),
            b"event" => kind = value,
            _ => {}
        }
    }
    assert_eq!(
        got.len(),
        want.len(),
        "events dispatched from {payload:?} cut as {chunks:?}: {got:?}"
    );
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        if let Some(w) = w {
            assert_eq!(
                g, w,
                "event {n} of {payload:?} cut as {chunks:?}: the scan found {g:?}, the model {w:?}"
            );
        }
    }
}

/// What the model says of an event's data: `None` when the scan is not held
/// to it (not a JSON object), else the answer's id, if it is one.
fn model_answer(data: &[u8]) -> Option<Option<Vec<u8>>> {
    let text = std::str::from_utf8(data).ok()?;
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(text).ok()?;
    // Valid JSON that is no answer (a key of the four twice, a request, a
    // notification) is held to "no answer".
    Some(
        crate::mcp::answers::serde_answer_id(text)
            .flatten()
            .map(|id| id.get().as_bytes().to_vec()),
    )
}

/// The `retry:` grammar the model holds the scanner to (one line, without '\n').
fn retry_of(line: &[u8]) -> Option<u64> {
    if line.len() > crate::proxy::sse::MAX_RETRY_LINE {
        return None;
    }
    let v = line.strip_prefix(b"retry:")?;
    let v = v.strip_suffix(b"\r").unwrap_or(v);
    let v = v.strip_prefix(b" ").unwrap_or(v);
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The prefix the event id property tags with.
const ID_PREFIX: &[u8] = b"mf1.green.2.";

/// The last event id (`proxy::sse::LastEventId`, which follows a call's
/// stream for its resumption after a move): what it holds after the payload
/// is the same whatever the chunking, and equals a line model of SSE (lines
/// end at `\r` or `\n`; only ended lines count): an `id:` line sets it to its
/// value after one optional space, `None` when that is empty or longer than
/// `MAX_EVENT_ID`, unchanged when it has a NUL; a line `id` alone clears it.
pub fn last_event_id(data: &[u8]) {
    let (payload, chunks) = chunked(data);
    let run = |chunks: &[&[u8]]| {
        let mut t = LastEventId::default();
        for c in chunks {
            t.feed(c);
        }
        t.get().cloned()
    };
    let mut model: Option<&[u8]> = None;
    let mut start = 0;
    while let Some(i) = payload[start..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
    {
        let line = &payload[start..start + i];
        if line == b"id" {
            model = None;
        } else if let Some(rest) = line.strip_prefix(b"id:") {
            let value = rest.strip_prefix(b" ").unwrap_or(rest);
            if value.len() > MAX_EVENT_ID || value.is_empty() {
                model = None;
            } else if !value.contains(&0) {
                model = Some(value);
            }
        }
        start += i + 1;
    }
    let whole = run(&[payload]);
    assert_eq!(whole.as_deref(), model, "the last id of {payload:?}");
    assert_eq!(
        run(&chunks),
        whole,
        "chunking changed the last id of {payload:?} cut as {chunks:?}"
    );
}

/// The event id tag (`proxy::sse::EventIdTag`, a moved session's events):
/// the output is the same whatever the chunking, and equals a line model of
/// SSE (lines end at `\r` or `\n`): the prefix goes before the value of each
/// `id:` line (after one optional space) whose value is not empty, and
/// nowhere else; every other byte passes as it came. A chunk with no id in it
/// passes as the same bytes.
pub fn event_id_tag(data: &[u8]) {
    let (payload, chunks) = chunked(data);
    let run = |chunks: &[&[u8]]| -> Vec<u8> {
        let mut t = EventIdTag::new(Bytes::from_static(ID_PREFIX));
        let mut out = Vec::new();
        for c in chunks {
            let before = out.len();
            out.extend_from_slice(&t.push(Bytes::copy_from_slice(c)));
            assert!(out.len() >= before + c.len(), "a chunk lost bytes: {c:?}");
        }
        out
    };
    // The model, over the whole payload.
    let mut model = Vec::with_capacity(payload.len());
    let mut start = 0;
    while start <= payload.len() {
        let end = payload[start..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map_or(payload.len(), |i| start + i);
        let line = &payload[start..end];
        let mut value_at = None;
        if let Some(rest) = line.strip_prefix(b"id:") {
            let skip = usize::from(rest.first() == Some(&b' '));
            if rest.len() > skip {
                value_at = Some(start + 3 + skip);
            }
        }
        match value_at {
            Some(v) => {
                model.extend_from_slice(&payload[start..v]);
                model.extend_from_slice(ID_PREFIX);
                model.extend_from_slice(&payload[v..end]);
            }
            None => model.extend_from_slice(line),
        }
        if end < payload.len() {
            model.push(payload[end]);
        }
        start = end + 1;
    }
    let whole = run(&[payload]);
    assert_eq!(whole, model, "tagging {payload:?} whole");
    let cut = run(&chunks);
    assert_eq!(
        cut, whole,
        "chunking changed the output of {payload:?} cut as {chunks:?}"
    );
}

/// The tag and the upstream authority the endpoint property rewrites with.
const REWRITE_TAG: &str = "mf1.blue.3.";
const REWRITE_UPSTREAM: &str = "127.0.0.1:3001";

/// The legacy endpoint rewrite: byte 0 picks the first-event limit, the rest is
/// [`chunked`]. The output is the same whatever the chunking; while the first
/// event is held, what is held stays within the limit; the output is the input
/// except for one URL, which is the input's (relative when it named the
/// upstream) with the tag inserted exactly once, before the session key's value.
pub fn endpoint_rewrite(data: &[u8]) {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    // Small limits, so the fuzzer reaches the held-too-long path too.
    let limit = 16 + usize::from(limit) * 4;
    let (payload, chunks) = chunked(rest);
    let run = |chunks: &[&[u8]]| -> Vec<u8> {
        let mut r = EndpointRewrite::new(REWRITE_TAG.into(), REWRITE_UPSTREAM.into())
            .with_first_event_limit(limit);
        let mut out = Vec::new();
        let mut held = true;
        for c in chunks {
            if !held {
                out.extend_from_slice(c);
                continue;
            }
            match r.push(Bytes::copy_from_slice(c)) {
                Rewritten::Pending => assert!(
                    r.held() <= limit,
                    "held {} bytes over the limit {limit}",
                    r.held()
                ),
                Rewritten::Done(b) => {
                    out.extend_from_slice(&b);
                    held = false;
                }
            }
        }
        if held {
            out.extend(r.finish().unwrap_or_default());
        }
        out
    };
    let whole = run(&[payload]);
    let cut = run(&chunks);
    assert_eq!(
        cut, whole,
        "chunking changed the output of {payload:?} cut as {chunks:?}"
    );
    if whole == payload {
        return;
    }
    // One span differs: it starts where the outputs first differ.
    let pre = whole
        .iter()
        .zip(payload)
        .take_while(|(a, b)| a == b)
        .count();
    // Only the first event is text; what follows it may be any bytes.
    let line_start = payload[..pre]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line_end = payload[line_start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(payload.len(), |i| line_start + i);
    let line = std::str::from_utf8(&payload[line_start..line_end])
        .expect("only a UTF-8 first event is rewritten");
    let body = line.trim_end_matches('\r');
    let value = body
        .strip_prefix("data:")
        .expect("only a data line is rewritten");
    let url_start = line_start + 5 + (value.len() - value.trim_start().len());
    let url_in = value.trim();
    let tail = &payload[url_start + url_in.len()..];
    assert!(
        whole.starts_with(&payload[..url_start]) && whole.ends_with(tail),
        "bytes outside the URL changed: {payload:?} -> {whole:?}"
    );
    let url_out = std::str::from_utf8(&whole[url_start..whole.len() - tail.len()])
        .expect("the rewritten URL is UTF-8");
    let (at, key_len) = find_session_param(url_out).expect("the new URL has the session key");
    let value_at = at + key_len;
    assert!(
        url_out[value_at..].starts_with(REWRITE_TAG),
        "no tag before the session value: {url_out:?}"
    );
    let untagged = format!(
        "{}{}",
        &url_out[..value_at],
        &url_out[value_at + REWRITE_TAG.len()..]
    );
    let relative = ["http://", "https://"]
        .iter()
        .find_map(|s| url_in.strip_prefix(s))
        .and_then(|r| r.strip_prefix(REWRITE_UPSTREAM))
        .filter(|r| r.starts_with('/'));
    assert!(
        untagged == url_in || Some(untagged.as_str()) == relative,
        "the URL changed beyond its tag: {url_in:?} -> {url_out:?}"
    );
    assert_eq!(
        url_out.matches(REWRITE_TAG).count(),
        url_in.matches(REWRITE_TAG).count() + 1,
        "the tag is not added exactly once: {url_in:?} -> {url_out:?}"
    );
}

/// The session-tag codec. For a slot name the config allows, any generation
/// and any visible-ASCII inner id built from the input, the header and query
/// forms round-trip. For the input itself as a header value or a query
/// string, a decoded tag re-encodes to exactly the prefix it was read from.
pub fn session_tag(data: &[u8]) {
    // Arbitrary input, header form.
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(t) = SessionTag::decode(s) {
            let prefix = tag_prefix(t.slot, t.generation);
            assert!(
                s.starts_with(&*prefix) && t.prefix_len(s) == prefix.len(),
                "{s:?} decodes to {t:?}, which encodes as {prefix:?}"
            );
            assert_eq!(&s[prefix.len()..], t.inner);
        }
        // Query form: the key is at a parameter's start, and the value
        // decodes the same way.
        if let Some((at, key_len)) = find_in_query(s) {
            assert!(
                at == 0 || s.as_bytes()[at - 1] == b'&',
                "{s:?}: key at {at}"
            );
            let key = &s[at..at + key_len];
            assert!(
                key == "sessionId=" || key == "session_id=",
                "{s:?}: {key:?}"
            );
            let value = s[at + key_len..].split('&').next().unwrap_or("");
            if let Some(t) = SessionTag::decode(value) {
                assert!(value.starts_with(&*tag_prefix(t.slot, t.generation)));
            }
        }
    }

    // Round trip of what the proxy itself writes.
    let Some((head, rest)) = data.split_first_chunk::<5>() else {
        return;
    };
    let generation = u32::from_le_bytes([head[0], head[1], head[2], head[3]]).min(MAX_GENERATION);
    let name_len = 1 + usize::from(head[4] % 32);
    const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    let name: String = rest
        .iter()
        .take(name_len)
        .map(|b| char::from(NAME[usize::from(b % 64)]))
        .collect();
    if name.is_empty() {
        return;
    }
    let inner_bytes = rest.get(name_len..).unwrap_or_default();
    let inner: String = inner_bytes
        .iter()
        .map(|b| char::from(0x21 + b % 94))
        .collect();
    let prefix = tag_prefix(&name, generation);
    let header = HeaderValue::from_str(&inner).expect("visible ASCII is a header value");
    let tagged = tag_header(&prefix, &header).expect("visible ASCII is tagged");
    let text = tagged.to_str().expect("a tag is ASCII");
    let t = SessionTag::decode(text).expect("our own tag decodes");
    assert_eq!(
        (t.slot, t.generation, t.inner),
        (name.as_str(), generation, inner.as_str())
    );
    assert_eq!(&text[t.prefix_len(text)..], inner);
    // Query form, the way the legacy endpoint URL carries it (no '&' or '#' in a
    // query value; an upstream percent-encodes those).
    let inner_q: String = inner.chars().filter(|c| !matches!(c, '&' | '#')).collect();
    let query = format!("a=1&sessionId={prefix}{inner_q}&b=2");
    let (at, key_len) = find_in_query(&query).expect("the key is found");
    let value = query[at + key_len..].split('&').next().unwrap_or("");
    let t = SessionTag::decode(value).expect("our own tag decodes from a query");
    assert_eq!(
        (t.slot, t.generation, t.inner),
        (name.as_str(), generation, inner_q.as_str())
    );
}

/// The Host/Origin guard. Input: byte 0 picks the allow list, then `Host` and
/// `Origin` separated by a 0 byte. An accepted request's `Host` is a valid
/// authority (as `http::uri::Authority` parses it too) without userinfo,
/// whose host is on the list (ASCII case aside); a value with '@' or a
/// non-ASCII byte is always refused as malformed.
pub fn host_guard(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let lists: [&[&str]; 3] = [&[], &["mcp.example.com", "::1"], &["*"]];
    let allowed: Vec<String> = lists[usize::from(pick % 3)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let addr = if pick & 4 == 0 {
        "127.0.0.1:8080"
    } else {
        "0.0.0.0:8080"
    };
    let guard = HostGuard::new(
        addr.parse().expect("a socket address"),
        (!allowed.is_empty()).then_some(allowed.as_slice()),
    );
    let mut parts = rest.splitn(2, |&b| b == 0);
    let host = parts.next().unwrap_or_default();
    let origin = parts.next();

    // The authority grammar on its own.
    if let Ok(s) = std::str::from_utf8(host) {
        assert_eq!(
            authority_host(s),
            authority_host_slow(s),
            "{s:?}: the fast path and the full parse differ"
        );
        if let Ok(name) = authority_host(s) {
            let a = Authority::from_str(s)
                .unwrap_or_else(|e| panic!("{s:?} passes the guard's grammar but not http's: {e}"));
            assert!(
                a.host()
                    .eq_ignore_ascii_case(name.trim_start_matches('[').trim_end_matches(']'))
                    || a.host().eq_ignore_ascii_case(name),
                "{s:?}: guard host {name:?}, http host {:?}",
                a.host()
            );
            assert!(!s.contains('@'), "{s:?} has userinfo");
        }
        if let Ok(name) = origin_host(s) {
            let (_, authority) = s.split_once("://").expect("an origin has ://");
            assert_eq!(authority_host(authority), Ok(name));
        }
    }

    let Ok(host_value) = HeaderValue::from_bytes(host) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(HOST, host_value);
    if let Some(o) = origin {
        let Ok(v) = HeaderValue::from_bytes(o) else {
            return;
        };
        headers.insert(ORIGIN, v);
    }
    let verdict = guard.check(&headers, &Uri::from_static("/mcp"));
    let bad = |v: &[u8]| v.contains(&b'@') || !v.is_ascii();
    if bad(host) || origin.is_some_and(|o| bad(o) && o != b"null") {
        assert!(
            matches!(verdict, Err(Refused::Malformed(_))),
            "{host:?} / {origin:?} not refused as malformed: {verdict:?}"
        );
    }
    if verdict.is_ok() {
        let s = std::str::from_utf8(host).expect("an accepted Host is ASCII");
        let a = Authority::from_str(s).expect("an accepted Host is an authority");
        if let Some(p) = a.port() {
            assert!(s.ends_with(p.as_str()));
        }
        if let HostGuard::Only(list) = &guard {
            let name = authority_host(s).expect("accepted");
            assert!(
                list.iter().any(|l| l.eq_ignore_ascii_case(name)),
                "{s:?} accepted, {name:?} is not on {list:?}"
            );
            if let Some(o) = origin {
                let o = std::str::from_utf8(o).expect("an accepted Origin is ASCII");
                let name = origin_host(o).expect("an accepted Origin parses");
                assert!(list.iter().any(|l| l.eq_ignore_ascii_case(name)));
            }
        }
    }
}

/// The control protocol: a line that parses, words or JSON, re-serialises to
/// a JSON line that parses back to the same request (what `ctl` sends is what
/// the proxy acts on), and the JSON round trip is stable.
pub fn control_line(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = parse_line(line) else {
        return;
    };
    let json = req.to_line();
    let back: Request = parse_line(&json)
        .unwrap_or_else(|e| panic!("{line:?} parsed as {req:?}, whose JSON {json:?} fails: {e}"));
    assert_eq!(back, req, "{line:?} -> {json:?}");
    assert_eq!(back.to_line(), json, "JSON of {req:?} is not stable");
}

/// The config loader: TOML text gives a validated config or an error that
/// names the file; a config that validates serialises to TOML that validates
/// again to the same config.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No directory part: relative paths stay as written, nothing is joined.
    let path = Path::new("fuzz.toml");
    let config = match Config::parse(text, path) {
        Ok(c) => c,
        Err(e) => {
            assert_eq!(e.file, path);
            assert!(
                e.to_string().starts_with("fuzz.toml"),
                "error does not name the file: {e}"
            );
            return;
        }
    };
    let first = toml::Value::try_from(&config).expect("a valid config serialises");
    let again_text = toml::to_string(&config).expect("a valid config serialises to TOML");
    let again = Config::parse(&again_text, path).unwrap_or_else(|e| {
        panic!("{text:?} validates, its serialisation {again_text:?} does not: {e}")
    });
    let second = toml::Value::try_from(&again).expect("a valid config serialises");
    assert_eq!(first, second, "{text:?} -> {again_text:?}");
}

/// The state-file reader: never panics; a file it accepts, restored onto a
/// config of its own slots, passes the state machine's rules or is refused
/// with a reason; a restored state written back reads back to the same state.
pub fn state_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = persist::parse(text) else {
        return;
    };
    assert_eq!(file.version, persist::FORMAT);
    let config: Vec<(String, u32)> = file
        .slots
        .iter()
        .map(|(n, e)| (n.clone(), e.weight))
        .collect();
    let restore = |f: &StateFile| {
        State::restore(
            &config,
            &f.records(),
            f.previous_active.as_deref(),
            f.revision,
        )
    };
    let Ok((state, _)) = restore(&file) else {
        return;
    };
    state.check().expect("a restored state passes the rules");
    let written = serde_json::to_string(&StateFile::of(&state)).expect("a state file serialises");
    let reread = persist::parse(&written).unwrap_or_else(|e| {
        panic!("{text:?}: the state written back, {written:?}, is refused: {e}")
    });
    let (again, _) = restore(&reread).expect("a written state restores");
    assert_eq!(
        StateFile::of(&again),
        StateFile::of(&state),
        "{text:?} -> {written:?}"
    );
}

/// What reading one upstream answer came to: its head (status, header
/// count), the body bytes decoded, and whether the body ended; or an error.
#[derive(Debug, PartialEq, Eq)]
enum H1Outcome {
    Error,
    Answer {
        status: u16,
        headers: usize,
        body: Vec<u8>,
        ended: bool,
    },
}

/// Reads one answer from `pieces` as the client does: the head parsed after
/// each read, then the body decoded after each read.
fn h1_read(pieces: &[&[u8]]) -> H1Outcome {
    let mut buf = bytes::BytesMut::new();
    let mut rest = pieces.iter();
    let head = loop {
        match h1::parse_response(&mut buf, &http::Method::GET) {
            Err(_) => return H1Outcome::Error,
            Ok(Some(head)) => break head,
            Ok(None) => match rest.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return H1Outcome::Error,
            },
        }
    };
    let mut framing = head.framing;
    let mut body = Vec::new();
    loop {
        match h1::decode(&mut framing, &mut buf) {
            Err(_) => return H1Outcome::Error,
            Ok(h1::Decoded::Data(d)) => {
                assert!(!d.is_empty(), "an empty data frame");
                body.extend_from_slice(&d);
            }
            Ok(h1::Decoded::End) => break,
            Ok(h1::Decoded::NeedMore) => match rest.next() {
                Some(p) => buf.extend_from_slice(p),
                None => break,
            },
        }
    }
    H1Outcome::Answer {
        status: head.status.as_u16(),
        headers: head.headers.len(),
        body,
        ended: framing == h1::Framing::Done,
    }
}

/// The upstream HTTP/1.1 codec (`upstream::h1`): an answer read in pieces,
/// however the reads cut it, comes to what it comes to read whole (the same
/// head, body bytes, end or error), and the body is never longer than what
/// arrived.
///
/// And the head the proxy writes the client for that answer frames the body
/// the slot's framing decoded: a `Content-Length` that is the decoded
/// body's length, chunked coding, or nothing for a bodiless status; one
/// framing header, never the slot's own beside it.
pub fn h1_response(data: &[u8]) {
    let (payload, chunks) = chunked(data);
    let whole = h1_read(&[payload]);
    let cut = h1_read(&chunks);
    assert_eq!(whole, cut, "read whole vs in {} pieces", chunks.len());
    if let H1Outcome::Answer { body, ended, .. } = &whole {
        assert!(body.len() <= payload.len());
        if *ended {
            h1_relayed_head(payload, body.len());
        }
    }
}

/// A body that only tells its size, as the upstream client's does from the
/// slot's framing.
struct Sized(Option<u64>);

impl http_body::Body for Sized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(None)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.map_or_else(
            http_body::SizeHint::default,
            http_body::SizeHint::with_exact,
        )
    }
}

/// Writes the client's head for the answer at the front of `payload` (whose
/// body decoded to `body` bytes and ended) as `proxy::h1` writes it from the
/// slot's lines, and checks its framing.
fn h1_relayed_head(payload: &[u8], body: usize) {
    let mut buf = bytes::BytesMut::from(payload);
    let Ok(Some(raw)) = h1::parse_response_raw(&mut buf, &http::Method::GET) else {
        panic!("an answer read whole parses with its lines as they came");
    };
    let hint = match raw.framing {
        h1::Framing::Length(n) => Some(n),
        h1::Framing::Empty | h1::Framing::Done => Some(0),
        _ => None,
    };
    let bodiless = raw.status.is_informational()
        || raw.status == http::StatusCode::NO_CONTENT
        || raw.status == http::StatusCode::NOT_MODIFIED;
    let mut out = Vec::new();
    let (framing, _) = server_h1::encode_head(
        raw.status,
        Some(&raw.headers),
        &HeaderMap::new(),
        &Sized(hint),
        bodiless,
        true,
        &mut out,
    );
    let shown = String::from_utf8_lossy(&out).into_owned();
    match framing {
        server_h1::Framing::Length(n) => {
            assert_eq!(
                n, body as u64,
                "the client is told another length: {shown:?}"
            )
        }
        server_h1::Framing::Chunked => {}
        server_h1::Framing::None => assert!(bodiless && body == 0, "{shown:?}"),
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    assert!(
        matches!(resp.parse(&out), Ok(httparse::Status::Complete(_))),
        "the head written does not parse: {shown:?}"
    );
    let count = |name: &str| {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let (lengths, codings) = (count("content-length"), count("transfer-encoding"));
    assert!(lengths + codings <= 1, "framed twice: {shown:?}");
    assert_eq!(
        codings == 1,
        framing == server_h1::Framing::Chunked,
        "{shown:?}"
    );
    if !bodiless {
        assert_eq!(
            lengths == 1,
            matches!(framing, server_h1::Framing::Length(_)),
            "{shown:?}"
        );
    }
    // The map hyper frames the answer from (HTTP/2, and the HTTP/1.1
    // connections hyper serves): a length only where it is the body's (a
    // 304 keeps the one its resource has), none on a 204.
    let map = raw
        .headers
        .into_map()
        .expect("lines that parsed make a map");
    let length = map.get(http::header::CONTENT_LENGTH);
    if raw.status == http::StatusCode::NO_CONTENT {
        assert!(length.is_none(), "a 204 with a length: {map:?}");
    } else if let (Some(v), false) = (length, bodiless) {
        assert_eq!(
            v.to_str().ok().and_then(|v| v.parse::<u64>().ok()),
            Some(body as u64),
            "the map says another length: {map:?}"
        );
    }
}

/// What the client-side head parser made of a request stream.
#[derive(Debug, PartialEq, Eq)]
enum RequestOutcome {
    /// Still incomplete after every byte.
    Partial,
    /// Handed to hyper (the buffer left as it was).
    Hyper,
    /// Served here: method, target, headers as (name, value bytes), keep-alive,
    /// body length, head length.
    Head {
        method: String,
        uri: String,
        headers: Vec<(String, Vec<u8>)>,
        keep_alive: bool,
        body: usize,
        head_len: usize,
    },
}

/// Feeds `chunks` to `proxy::h1`'s head parser as the connection does (a
/// parse after each read), checking what each parse leaves in the buffer.
fn h1_request_read(chunks: &[&[u8]]) -> RequestOutcome {
    let mut buf = bytes::BytesMut::new();
    for c in chunks {
        buf.extend_from_slice(c);
        let before = buf.clone();
        match server_h1::parse_request(&mut buf) {
            server_h1::Parsed::Partial => assert_eq!(buf, before, "a partial head takes nothing"),
            server_h1::Parsed::Hyper => {
                assert_eq!(buf, before, "what hyper serves is left as it was");
                return RequestOutcome::Hyper;
            }
            server_h1::Parsed::Head(mut head) => {
                assert!(before.ends_with(&buf), "only the head is taken");
                if let Some(lines) = head.req.body_mut().take_lines() {
                    *head.req.headers_mut() = lines_as_the_map(&head.req, &lines);
                }
                let head_len = before.len() - buf.len();
                assert_eq!(
                    &head.bytes[..],
                    &before[..head_len],
                    "the head is its bytes"
                );
                assert!(head_len <= server_h1::MAX_HEAD && head.body <= server_h1::MAX_BODY);
                let close = head
                    .req
                    .headers()
                    .get_all(http::header::CONNECTION)
                    .iter()
                    .any(|v| {
                        v.as_bytes()
                            .split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                    });
                assert_eq!(
                    head.keep_alive, !close,
                    "keep-alive is what Connection says"
                );
                return RequestOutcome::Head {
                    method: head.req.method().to_string(),
                    uri: head.req.uri().to_string(),
                    headers: head
                        .req
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect(),
                    keep_alive: head.keep_alive,
                    body: head.body,
                    head_len,
                };
            }
        }
    }
    RequestOutcome::Partial
}

/// A request's header lines kept as they came (`upstream::lines`) against
/// the map made of them: the map can be made (httparse took only bytes
/// `http` takes), the forwarder reads the same values from the lines as from
/// the map (`Scan`), and the upstream head written from the lines is the one
/// written from the map the forwarder strips of hop-by-hop lines (the lines
/// are kept only when `Connection` names no other header): the same request
/// line, and each name's values in the
/// same order (the lines keep the client's spelling of names and the order
/// between different names, which a map groups by name). Returns the map.
fn lines_as_the_map(
    req: &http::Request<crate::upstream::RequestBody>,
    lines: &crate::upstream::lines::RawHeaders,
) -> HeaderMap {
    use crate::proxy::scan::Scan;
    use crate::upstream::h1::{ProxyHeaders, ReqFraming};
    assert!(req.headers().is_empty(), "kept lines leave the map empty");
    let map = lines
        .clone()
        .into_map()
        .expect("a line httparse took is one http takes");
    let from_lines = Scan::of_lines(lines).expect("the values http takes");
    assert_eq!(
        format!("{from_lines:?}"),
        format!("{:?}", Scan::of(&map)),
        "the forwarder reads the lines as the map"
    );
    let proxy = ProxyHeaders {
        x_forwarded: h1::XForwarded::Append,
        host: HeaderValue::from_static("slot:3001"),
        forwarded_host: Some(HeaderValue::from_static("public.example")),
        forwarded_proto: HeaderValue::from_static("http"),
        forwarded_for: HeaderValue::from_static("192.0.2.7"),
        client_cert: Some(HeaderValue::from_static("Hash=00")),
        request_id: Some(HeaderValue::from_static("0123456789abcdef0123456789abcdef")),
        cut: Some((crate::mcp::headers::MCP_SESSION_ID, 3)),
        lines: None,
    };
    let written = |headers: &HeaderMap, proxy: &ProxyHeaders| {
        let mut r = http::Request::new(());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = headers.clone();
        let (parts, ()) = r.into_parts();
        let mut out = Vec::new();
        h1::encode_head(
            &parts,
            "up:80",
            Some(proxy),
            ReqFraming::Length(0),
            0,
            &mut out,
        );
        fields(&out)
    };
    // The forwarder writes a map with its hop-by-hop lines (and what its
    // `Connection` names) stripped; the encoder leaves those out of kept lines.
    let mut stripped = map.clone();
    crate::proxy::forward::strip_hop_by_hop(&mut stripped);
    let by_map = written(&stripped, &proxy);
    let with_lines = ProxyHeaders {
        lines: Some(Box::new(lines.clone())),
        ..proxy.clone()
    };
    let by_lines = written(&HeaderMap::new(), &with_lines);
    assert_eq!(
        by_lines, by_map,
        "the upstream head from the lines is the one from the map"
    );
    map
}

/// A written head: its first line, and each field name (lowercase) with its
/// values in order.
type Fields = (Vec<u8>, std::collections::BTreeMap<Vec<u8>, Vec<Vec<u8>>>);

fn fields(head: &[u8]) -> Fields {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default().to_vec();
    let mut by_name = std::collections::BTreeMap::<Vec<u8>, Vec<Vec<u8>>>::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let at = line
            .windows(2)
            .position(|w| w == b": ")
            .expect("a written field line has ': '");
        by_name
            .entry(line[..at].to_ascii_lowercase())
            .or_default()
            .push(line[at + 2..].to_vec());
    }
    (first, by_name)
}

/// The client-side HTTP/1.1 head parser (`proxy::h1`): a request stream read
/// in pieces, however the reads cut it, comes to what it comes to read whole
/// (the same request, or hyper's either way); a request handed to hyper
/// leaves the buffer exactly as it was, and one served here takes exactly
/// its head off it.
pub fn h1_request(data: &[u8]) {
    let (payload, chunks) = chunked(data);
    let whole = h1_request_read(&[payload]);
    let cut = h1_request_read(&chunks);
    // A stream cut short of its end may still be partial where the whole is
    // not; cut at the same bytes they must agree.
    assert_eq!(whole, cut, "read whole vs in {} pieces", chunks.len());
}

/// `proxy::proxy_protocol::parse`, as the listener's read loop relies on it:
/// never a panic; a header is recognised only once whole, and every prefix of
/// its bytes is "incomplete", never refused (the loop consumes what it saw and
/// waits for more); once whole it gives the same length and address whatever
/// follows it; "incomplete" is said only of input shorter than the largest
/// header taken, and of no prefix of a refused input is a header recognised.
pub fn proxy_protocol(data: &[u8]) {
    use crate::proxy::proxy_protocol::{parse, MAX_V2};
    let whole = parse(data);
    match &whole {
        Ok(Some((len, _))) => assert!(*len <= data.len(), "a header longer than its input"),
        Ok(None) => assert!(data.len() < MAX_V2, "incomplete at {} bytes", data.len()),
        Err(_) => {}
    }
    // Prefixes: the read loop's view of the same bytes arriving in pieces.
    for cut in 1..data.len().min(MAX_V2 + 1) {
        let part = parse(&data[..cut]);
        match &whole {
            Ok(Some((len, addr))) if cut >= *len => assert!(
                matches!(&part, Ok(Some((l, a))) if l == len && a == addr),
                "the header whole at {len} bytes, then {part:?} with {cut}"
            ),
            Ok(_) => assert!(
                matches!(part, Ok(None)),
                "a prefix of {cut} bytes of a header that is {whole:?}: {part:?}"
            ),
            Err(_) => assert!(
                !matches!(part, Ok(Some(_))),
                "a refused input's prefix of {cut} bytes is a header: {part:?}"
            ),
        }
    }
}
