//! The access log: one line per exchange, handed by the request path to a
//! writer thread as a record (no formatting, no system call on the request
//! path), formatted there as text or JSON and written in batches: the thread
//! drains the queue every 20 ms and writes what it found in one go.
//!
//! The request path's cost is one boxed record and one `try_send`; when the
//! writer falls [`QUEUE_LINES`] lines behind, records are dropped, never waited for,
//! and counted (`mcpflip_access_log_dropped_lines_total`). Formatting with
//! tracing-subscriber on the request thread cost about 20 times as much per
//! line, more than the 5% of W1 throughput the access log may take (README).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;

use crate::mcp::Era;

/// Records the writer may queue before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;

/// The longest path a line prints (a client controls it; MCP endpoints are short).
pub const MAX_PATH: usize = 128;
/// The longest `Mcp-Method` a line prints.
pub const MAX_MCP_METHOD: usize = 48;

/// How often the writer drains the queue: the most a line waits, and what
/// the queue must hold at the highest request rate (16,384 lines in 20 ms is
/// 800,000 requests/s).
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Bytes formatted before they are written out, while the queue is not empty.
const WRITE_CHUNK: usize = 64 * 1024;

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Sent whole.
    Complete,
    /// The client went away (or the connection ended) before the end.
    ClientGone,
    /// The upstream failed mid-body.
    UpstreamError,
    /// A drain deadline ended the stream at an event boundary.
    Forced,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::ClientGone => "client_gone",
            End::UpstreamError => "upstream_error",
            End::Forced => "forced",
        }
    }
}

/// A short, non-reversible stand-in for a session id: 32 bits of SipHash under
/// a key drawn at random once per process, so lines of one session correlate
/// within a process's log while the id itself (a bearer credential for its
/// session) is never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u32);

impl Fingerprint {
    pub fn of(session_id: &[u8]) -> Fingerprint {
        static KEY: OnceLock<RandomState> = OnceLock::new();
        let h = KEY.get_or_init(RandomState::new).hash_one(session_id);
        Fingerprint(h as u32)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Up to `N` bytes of text copied out of a request: a record must not hold a
/// slice of hyper's read buffer (that would keep the buffer from being reused
/// and cost an allocation per request), nor allocate one of its own.
#[derive(Clone, Copy)]
pub struct Inline<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> Inline<N> {
    pub const EMPTY: Self = Inline {
        len: 0,
        bytes: [0; N],
    };

    /// The first `N` bytes of `s`, cut at a character boundary.
    pub fn new(s: &str) -> Self {
        let mut len = s.len().min(N);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; N];
        bytes[..len].copy_from_slice(&s.as_bytes()[..len]);
        Inline { len, bytes }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> std::fmt::Debug for Inline<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One access-log line, as the request path fills it in. Sent by value: no
/// allocation, and nothing borrowed from the request.
#[derive(Debug)]
pub struct Record {
    pub remote_addr: SocketAddr,
    pub method: Method,
    /// The path without its query (which may carry a legacy session id).
    pub path: Inline<MAX_PATH>,
    pub status: u16,
    pub bytes_sent: u64,
    /// When the body ended (the line's timestamp).
    pub ended: Option<Instant>,
    pub request_time: Duration,
    pub upstream_time: Option<Duration>,
    pub slot: Option<Arc<str>>,
    pub era: Option<Era>,
    /// The `Mcp-Method` header (empty when absent).
    pub mcp_method: Inline<MAX_MCP_METHOD>,
    pub session: Option<Fingerprint>,
    pub end: End,
}

impl Record {
    pub fn new(remote_addr: SocketAddr, method: Method, path: &str) -> Record {
        Record {
            remote_addr,
            method,
            path: Inline::new(path),
            status: 0,
            bytes_sent: 0,
            ended: None,
            request_time: Duration::ZERO,
            upstream_time: None,
            slot: None,
            era: None,
            mcp_method: Inline::EMPTY,
            session: None,
            end: End::Complete,
        }
    }
}

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `2026-11-29T23:00:32.188790Z  INFO access: remote_addr=... method=POST ...`,
    /// like the main log's text lines.
    Text,
    /// One JSON object per line, like the main log's JSON lines.
    Json,
}

struct Queue {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

// `Stop` is sent once; boxing the common variant is the allocation avoided.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Record),
    /// Write out what is queued and end (sent by `Writer`'s drop).
    Stop,
}

static WRITER: OnceLock<Queue> = OnceLock::new();

/// Whether the access log is on (one atomic load).
pub fn enabled() -> bool {
    WRITER.get().is_some()
}

/// Hands `record` to the writer; drops (and counts) it when the writer is
/// [`QUEUE_LINES`] lines behind. Never blocks.
pub fn send(record: Record) {
    let Some(q) = WRITER.get() else { return };
    match q.tx.try_send(Msg::Line(record)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            q.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Lines dropped so far: the writer fell behind, or a write failed.
pub fn dropped_lines() -> u64 {
    WRITER
        .get()
        .map_or(0, |q| q.dropped.load(Ordering::Relaxed))
}

/// The running writer; dropping it writes out what is queued and stops it.
pub struct Writer {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(q) = WRITER.get() {
            // Blocking send: at exit, the queued lines are written before Stop.
            let _ = q.tx.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the process's access-log writer on `sink`. `None` when one runs already.
pub fn start(sink: Box<dyn Write + Send>, style: Style) -> std::io::Result<Option<Writer>> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    if WRITER
        .set(Queue {
            tx,
            dropped: AtomicU64::new(0),
        })
        .is_err()
    {
        return Ok(None);
    }
    let thread = std::thread::Builder::new()
        .name("mcpflip-access-log".into())
        .spawn(move || write_loop(rx, sink, style))?;
    Ok(Some(Writer {
        thread: Some(thread),
    }))
}

fn write_loop(rx: Receiver<Msg>, mut sink: Box<dyn Write + Send>, style: Style) {
    let mut clock = Clock::new();
    let mut out = Pending::default();
    loop {
        // The writer wakes on its own clock, never on a send: a send to a
        // receiver that is not parked costs the request path no system call.
        std::thread::sleep(DRAIN_EVERY);
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(r)) => {
                    format(&mut out.buf, &r, style, &mut clock);
                    out.lines += 1;
                    if out.buf.len() >= WRITE_CHUNK {
                        out.write(&mut sink);
                    }
                }
                Ok(Msg::Stop) | Err(TryRecvError::Disconnected) => {
                    out.write(&mut sink);
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        out.write(&mut sink);
    }
}

/// Formatted lines not written yet.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    lines: u64,
}

impl Pending {
    /// Writes and flushes; a failed write (a full disk) loses those lines,
    /// counted as dropped, and the proxy goes on.
    fn write(&mut self, sink: &mut Box<dyn Write + Send>) {
        if self.buf.is_empty() {
            return;
        }
        if sink
            .write_all(&self.buf)
            .and_then(|_| sink.flush())
            .is_err()
        {
            if let Some(q) = WRITER.get() {
                q.dropped.fetch_add(self.lines, Ordering::Relaxed);
            }
        }
        self.buf.clear();
        self.lines = 0;
    }
}

/// Turns a record's `Instant` into wall-clock time, and formats the date
/// part once per second.
struct Clock {
    wall: SystemTime,
    mono: Instant,
    second: u64,
    date: [u8; 20],
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall: SystemTime::now(),
            mono: Instant::now(),
            second: u64::MAX,
            date: [b'0'; 20],
        }
    }

    /// `2026-11-29T23:00:32.188790Z` for `at`.
    fn write(&mut self, out: &mut Vec<u8>, at: Option<Instant>) {
        let when = match at {
            Some(t) if t >= self.mono => self.wall + (t - self.mono),
            Some(t) => self.wall - (self.mono - t),
            None => SystemTime::now(),
        };
        let since = when.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if secs != self.second {
            self.second = secs;
            let (y, mo, d) = civil(secs / 86_400);
            let s = secs % 86_400;
            let text = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.",
                s / 3600,
                s / 60 % 60,
                s % 60
            );
            self.date.copy_from_slice(&text.as_bytes()[..20]);
        }
        out.extend_from_slice(&self.date);
        six(out, since.subsec_micros());
        out.push(b'Z');
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y.max(0) as u64, m as u64, d as u64)
}

/// The decimal digits of `n`.
fn num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` (below 1,000,000) as six digits, zero-padded.
fn six(out: &mut Vec<u8>, mut n: u32) {
    let mut d = [b'0'; 6];
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&d);
}

/// Seconds with microsecond precision: `0.002781`.
fn seconds(out: &mut Vec<u8>, d: Duration) {
    num(out, d.as_secs());
    out.push(b'.');
    six(out, d.subsec_micros());
}

fn addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                num(out, *o);
            }
            out.push(b':');
            num(out, v4.port());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

fn hex8(out: &mut Vec<u8>, f: Fingerprint) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(HEX[((f.0 >> (shift * 4)) & 0xf) as usize]);
    }
}

/// `s` as a JSON string body (or a quoted text value): `"` and `\` escaped,
/// control characters as `\u00XX`.
fn escaped(out: &mut Vec<u8>, s: &str) {
    let plain = |b: &u8| !matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f);
    if s.as_bytes().iter().all(plain) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            b => out.push(b),
        }
    }
}

/// `value` quoted and escaped.
fn quoted(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    escaped(out, value);
    out.push(b'"');
}

/// A value of a fixed set (method, slot name, era, end): nothing to escape.
fn trusted(out: &mut Vec<u8>, json: bool, v: &str) {
    if json {
        out.push(b'"');
    }
    out.extend_from_slice(v.as_bytes());
    if json {
        out.push(b'"');
    }
}

fn format(out: &mut Vec<u8>, r: &Record, style: Style, clock: &mut Clock) {
    let json = style == Style::Json;
    // Each key as the style writes it: `,"k":` or ` k=`.
    let key = |out: &mut Vec<u8>, k: Key| out.extend_from_slice(if json { k.1 } else { k.0 });
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        clock.write(out, r.ended);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"access\",\"remote_addr\":\"");
        addr(out, &r.remote_addr);
        out.push(b'"');
    } else {
        clock.write(out, r.ended);
        out.extend_from_slice(b"  INFO access: remote_addr=");
        addr(out, &r.remote_addr);
    }
    key(out, METHOD);
    // A method is a token (RFC 9110): no quote, backslash or control byte.
    trusted(out, json, r.method.as_str());
    key(out, PATH);
    quoted(out, r.path.as_str());
    key(out, STATUS);
    num(out, r.status);
    key(out, BYTES_SENT);
    num(out, r.bytes_sent);
    key(out, REQUEST_TIME);
    seconds(out, r.request_time);
    if let Some(u) = r.upstream_time {
        key(out, UPSTREAM_TIME);
        seconds(out, u);
    }
    if let Some(s) = &r.slot {
        // Slot names are `[A-Za-z0-9_-]` (config validation).
        key(out, SLOT);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
    if let Some(e) = r.era {
        key(out, ERA);
        out.push(b'"');
        out.extend_from_slice(e.label().as_bytes());
        out.push(b'"');
    }
    if !r.mcp_method.is_empty() {
        key(out, MCP_METHOD);
        quoted(out, r.mcp_method.as_str());
    }
    if let Some(f) = r.session {
        key(out, SESSION);
        if json {
            out.push(b'"');
        }
        hex8(out, f);
        if json {
            out.push(b'"');
        }
    }
    key(out, END);
    out.push(b'"');
    out.extend_from_slice(r.end.as_str().as_bytes());
    out.push(b'"');
    if json {
        out.push(b'}');
    }
    out.push(b'\n');
}

/// A key as text (` k=`) and as JSON (`,"k":`).
type Key = (&'static [u8], &'static [u8]);
const METHOD: Key = (b" method=", b",\"method\":");
const PATH: Key = (b" path=", b",\"path\":");
const STATUS: Key = (b" status=", b",\"status\":");
const BYTES_SENT: Key = (b" bytes_sent=", b",\"bytes_sent\":");
const REQUEST_TIME: Key = (b" request_time=", b",\"request_time\":");
const UPSTREAM_TIME: Key = (b" upstream_time=", b",\"upstream_time\":");
const SLOT: Key = (b" slot=", b",\"slot\":");
const ERA: Key = (b" era=", b",\"era\":");
const MCP_METHOD: Key = (b" mcp_method=", b",\"mcp_method\":");
const SESSION: Key = (b" session=", b",\"session\":");
const END: Key = (b" end=", b",\"end\":");

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let mut r = Record::new(
            SocketAddr::from(([127, 0, 0, 1], 4321)),
            Method::POST,
            "/mcp",
        );
        r.status = 200;
        r.bytes_sent = 110;
        r.request_time = Duration::from_micros(2781);
        r.upstream_time = Some(Duration::from_micros(2615));
        r.slot = Some(Arc::from("blue"));
        r.era = Some(Era::Session);
        r.mcp_method = Inline::new("tools/\"call");
        r.session = Some(Fingerprint::of(b"secret"));
        r
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut out = Vec::new();
        format(&mut out, &record(), Style::Json, &mut Clock::new());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["path"], "/mcp");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_sent"], 110);
        assert_eq!(v["request_time"], 0.002781);
        assert_eq!(v["upstream_time"], 0.002615);
        assert_eq!(v["mcp_method"], "tools/\"call");
        let fp = Fingerprint::of(b"secret").to_string();
        assert_eq!(v["session"], fp.as_str());
        assert_eq!(v["end"], "complete");
        assert!(v["timestamp"]
            .as_str()
            .is_some_and(|t| t.len() == 27 && t.ends_with('Z')));
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
    }

    #[test]
    fn inline_text_is_cut_at_a_character_boundary() {
        let long = format!("/{}é", "a".repeat(MAX_PATH - 2));
        let cut = Inline::<MAX_PATH>::new(&long);
        assert_eq!(cut.as_str().len(), MAX_PATH - 1);
        assert!(cut.as_str().ends_with('a'));
        assert_eq!(Inline::<8>::new("/mcp").as_str(), "/mcp");
        assert!(Inline::<8>::EMPTY.is_empty());
    }

    #[test]
    fn text_lines_read_like_the_main_log() {
        let mut out = Vec::new();
        let mut r = record();
        r.upstream_time = None;
        r.slot = None;
        format(&mut out, &r, Style::Text, &mut Clock::new());
        let line = String::from_utf8(out).expect("utf-8");
        assert!(
            line.ends_with(&format!(" INFO access: remote_addr=127.0.0.1:4321 method=POST path=\"/mcp\" status=200 bytes_sent=110 request_time=0.002781 era=\"session\" mcp_method=\"tools/\\\"call\" session={} end=\"complete\"\n", Fingerprint::of(b"secret"))),
            "{line}"
        );
    }

    #[test]
    fn dates_are_proleptic_gregorian() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(20_786), (2026, 11, 29));
    }

    #[test]
    fn a_fingerprint_is_eight_hex_digits_stable_per_id_and_not_the_id() {
        let a = Fingerprint::of(b"mf1.blue.1.0123456789abcdef").to_string();
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert_eq!(
            a,
            Fingerprint::of(b"mf1.blue.1.0123456789abcdef").to_string()
        );
        assert_ne!(
            a,
            Fingerprint::of(b"mf1.blue.1.0123456789abcdee").to_string()
        );
    }
}
