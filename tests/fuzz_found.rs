//! The inputs that broke a fuzz property (`mcpflip::fuzzing`, fuzz/README.md),
//! minimised, each run through that property and checked directly on the
//! function at fault, so the defect it showed stays fixed on stable.

use bytes::Bytes;
use mcpflip::control::protocol::parse_line;
use mcpflip::fuzzing;
use mcpflip::mcp::tag::SessionTag;
use mcpflip::proxy::sse::{EndpointRewrite, Rewritten, SseScanner};

/// Fuzzer bytes for a chunked property: `payload` cut at `at`.
fn cut(payload: &[u8], at: &[u16]) -> Vec<u8> {
    let mut v = vec![u8::try_from(at.len()).expect("few cuts")];
    for a in at {
        v.extend_from_slice(&a.to_le_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// A `retry:` line cut across two chunks was not seen: the scanner only read
/// `retry:` on a line that started in the chunk at hand, so a relay noted the
/// upstream's reconnect delay or not depending on how TCP cut the stream.
#[test]
fn retry_cut_across_chunks_is_noted() {
    fuzzing::sse_scanner(&cut(b"retry: 3000\n\n", &[3]));
    let mut s = SseScanner::default();
    assert_eq!(s.feed(b"ret"), None);
    assert_eq!(s.feed(b"ry: 30"), None);
    assert_eq!(s.feed(b"00\r\n\r\n"), Some(3000));
    // The same bound on a `retry:` line whichever way it is cut.
    let long = format!("retry: {}1\n\n", "0".repeat(80));
    let whole = SseScanner::default().feed(long.as_bytes());
    let mut s = SseScanner::default();
    let split = s
        .feed(&long.as_bytes()[..10])
        .or(s.feed(&long.as_bytes()[10..]));
    assert_eq!((whole, split), (None, None));
}

fn rewrite(chunks: &[&[u8]], limit: Option<usize>) -> Vec<u8> {
    let mut r = EndpointRewrite::new("mf1.blue.3.".into(), "127.0.0.1:3001".into());
    if let Some(l) = limit {
        r = r.with_first_event_limit(l);
    }
    let mut out = Vec::new();
    let mut held = true;
    for c in chunks {
        if !held {
            out.extend_from_slice(c);
            continue;
        }
        if let Rewritten::Done(b) = r.push(Bytes::copy_from_slice(c)) {
            out.extend_from_slice(&b);
            held = false;
        }
    }
    if held {
        out.extend(r.finish().unwrap_or_default());
    }
    out
}

/// The rewrite wrote its own `data: ` before the URL, so `data:/m?...` (no
/// blank, as valid SSE as with one) came out changed outside the URL.
#[test]
fn endpoint_rewrite_changes_nothing_but_the_url() {
    let input = b"event: endpoint\ndata:/m?sessionId=abc \r\n\r\n";
    fuzzing::endpoint_rewrite(&[255, 0].iter().chain(input).copied().collect::<Vec<_>>());
    assert_eq!(
        rewrite(&[input], None),
        b"event: endpoint\ndata:/m?sessionId=mf1.blue.3.abc \r\n\r\n"
    );
}

/// A first event longer than the hold limit was rewritten when it arrived in
/// one chunk and passed on untouched when it arrived in several: whether a
/// legacy session got its tag depended on TCP segmentation.
#[test]
fn oversized_first_event_is_treated_alike_however_it_arrives() {
    let event = b"event: endpoint\ndata: /m?sessionId=abc\n\n";
    // Limit 16 (byte 0 = 0), the event cut after 20 bytes.
    let mut data = vec![0];
    data.extend(cut(event, &[20]));
    fuzzing::endpoint_rewrite(&data);
    // The same at the real limit: an endpoint event over 16 KiB is passed on
    // untouched, in one chunk as in two.
    let big = format!(
        "event: endpoint\n: {}\ndata: /m?sessionId=abc\n\n",
        "x".repeat(17 * 1024)
    );
    let big = big.as_bytes();
    let (a, b) = big.split_at(16 * 1024);
    assert_eq!(rewrite(&[big], None), big);
    assert_eq!(rewrite(&[a, b], None), big);
}

/// `mf1.blue.03.x` decoded as generation 3, whose tag is `mf1.blue.3.`: a
/// second spelling of the same tag, and the stripped prefix was not the one
/// the proxy writes.
#[test]
fn a_generation_with_leading_zeros_is_no_tag() {
    fuzzing::session_tag(b"mf1.blue.03.x");
    assert_eq!(SessionTag::decode("mf1.blue.03.x"), None);
    assert_eq!(SessionTag::decode("sessionId=mf1.blue.00.x"), None);
    assert!(SessionTag::decode("mf1.blue.0.x").is_some());
    assert!(SessionTag::decode("mf1.blue.30.x").is_some());
}

/// `wait blue drained` parsed to a request whose JSON (what `ctl` sends) read
/// back as a different request: the condition word was kept in the parsed
/// request but never on the wire.
#[test]
fn wait_with_its_condition_word_round_trips() {
    fuzzing::control_line(b"wait blue drained");
    assert_eq!(
        parse_line("wait blue drained").expect("parses"),
        parse_line("wait blue").expect("parses")
    );
}

/// `weights a=1 a=2` was accepted as words but its JSON (`{"a":1,"a":2}`) is
/// refused ("given twice"): the two forms of one request disagreed.
#[test]
fn a_slot_named_twice_in_weights_is_refused_in_words_too() {
    fuzzing::control_line(b"weights a=1 a=2");
    let e = parse_line("weights a=1 a=2").expect_err("a slot given twice");
    assert!(e.to_string().contains("given twice"), "{e}");
}

/// Found by the `endpoint_rewrite` target in its first second: not a proxy
/// defect but one of the property, which read the whole stream as UTF-8 while
/// only the first event must be (a later event with any bytes passes through).
#[test]
fn bytes_after_the_endpoint_event_may_be_anything() {
    let mut data = vec![0xff, 0];
    data.extend_from_slice(b"event: endpoint\ndata: http://127.0.0.1:1500/messages?x=1&sessionId=abc\n\nevent: mess\xa1eg\ndata: {}\n\n");
    fuzzing::endpoint_rewrite(&data);
    let out = rewrite(&[&data[2..]], None);
    assert!(out.ends_with(b"sessionId=mf1.blue.3.abc\n\nevent: mess\xa1eg\ndata: {}\n\n"));
}

/// Found by hand, then made a property of `h1_response`: the head the proxy
/// writes a client framed the re-chunked body with the slot's own
/// `Content-Length` when `Transfer-Encoding` came beside it (RFC 9112 §6.3
/// says to drop it); and the map hyper frames an answer from (HTTP/2) kept a
/// 204's length, which an HTTP/2 client takes for a protocol error, and a
/// length given twice (`2, 2`), which is no HTTP/2 `content-length`.
#[test]
fn the_client_head_is_framed_by_the_body_the_slots_framing_decoded() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        // Found by the property: a 304 keeps its resource's length, and
        // kept every copy of it.
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
    ] {
        fuzzing::h1_response(&cut(answer, &[]));
    }
}
