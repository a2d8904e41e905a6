//! The access log: one line per exchange, handed by the request path to a
//! writer thread as a record (no formatting, no system call on the request
//! path), formatted there as text or JSON and written in batches: the thread
//! drains the queue every 20 ms and writes what it found in one go.
//!
//! The request path's cost is one record pushed on its thread's batch; a
//! batch goes to the writer, in one channel send, when it holds [`BATCH`]
//! lines or when its thread runs out of work (the runtime's
//! `on_thread_park` calls [`flush_thread`]), so a line waits at most until its
//! worker idles or 63 more lines end there. When the writer falls
//! [`QUEUE_LINES`] lines behind, batches are dropped, never waited for, and
//! counted (`mcpflip_access_log_dropped_lines_total`). Formatting with
//! tracing-subscriber on the request thread cost about 20 times as much per
//! line, more than the 5% of W1 throughput the access log may take; a send per
//! line cost about 400 instructions more than a push (bench/PROFILE.md).

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;

use crate::mcp::Era;

/// Records the writer may queue before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;

/// Records a worker thread gathers before it hands them over in one send.
pub const BATCH: usize = 64;

/// The longest path a line prints (a client controls it; MCP endpoints are short).
pub const MAX_PATH: usize = 128;
/// A slot name's longest (config validation).
pub const MAX_SLOT: usize = 32;
/// The longest `Mcp-Method` a line prints.
pub const MAX_MCP_METHOD: usize = 48;
/// A client certificate's SHA-256, in hex.
pub const CERT_HASH: usize = 64;
/// The longest `X-Request-Id` kept (`proxy::forward::request_id`).
pub const MAX_REQUEST_ID: usize = 64;
/// The longest `User-Agent` a line prints (a client controls it).
pub const MAX_USER_AGENT: usize = 128;

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

/// A short, non-reversible stand-in for a session id: 32 bits of a keyed hash
/// (foldhash's quality variant) under a seed drawn at random once per process,
/// so lines of one session correlate within a process's log while the id
/// itself (a bearer credential for its session) is never written: 32 bits
/// cannot give back an id of 128 random bits, and without the seed they do
/// not even confirm a guess. SipHash cost 300 instructions per request here,
/// this a tenth of that (bench/PROFILE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u32);

impl Fingerprint {
    pub fn of(session_id: &[u8]) -> Fingerprint {
        static KEY: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
        let h = KEY.get_or_init(Default::default).hash_one(session_id);
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
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The bytes (UTF-8: `new` cuts at a character boundary), for the
    /// writer, which copies them without checking them again.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
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
    /// The client's address when `[proxy] trusted_proxies` is set: behind a
    /// trusted proxy the one its `X-Forwarded-For` names, else the peer's
    /// (`None`: not set, and the line has no `client_ip`).
    pub client_ip: Option<IpAddr>,
    /// The SHA-256 (hex) of the certificate the client presented on this
    /// connection (`[listen] tls.client_ca`); empty when none.
    pub client_cert: Inline<CERT_HASH>,
    /// `X-Request-Id` (`[proxy] request_id`); empty when off.
    pub request_id: Inline<MAX_REQUEST_ID>,
    pub method: Method,
    /// The path without its query (which may carry a legacy session id).
    pub path: Inline<MAX_PATH>,
    pub status: u16,
    pub bytes_sent: u64,
    /// When the body ended (the line's timestamp).
    pub ended: Option<Instant>,
    pub request_time: Duration,
    pub upstream_time: Option<Duration>,
    /// The slot's name (at most 32 bytes, config validation), copied: an
    /// `Arc` clone here would bounce one reference count between every worker
    /// and the writer thread on every request.
    pub slot: Inline<MAX_SLOT>,
    pub era: Option<Era>,
    /// The `Mcp-Method` header (empty when absent).
    pub mcp_method: Inline<MAX_MCP_METHOD>,
    pub session: Option<Fingerprint>,
    /// The client's `User-Agent` (empty when absent, or not UTF-8).
    pub user_agent: Inline<MAX_USER_AGENT>,
    pub end: End,
}

impl Record {
    pub fn new(remote_addr: SocketAddr, method: Method, path: &str) -> Record {
        Record {
            remote_addr,
            client_ip: None,
            client_cert: Inline::EMPTY,
            request_id: Inline::EMPTY,
            method,
            path: Inline::new(path),
            status: 0,
            bytes_sent: 0,
            ended: None,
            request_time: Duration::ZERO,
            upstream_time: None,
            slot: Inline::EMPTY,
            era: None,
            mcp_method: Inline::EMPTY,
            session: None,
            user_agent: Inline::EMPTY,
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
    tx: Sender<Msg>,
    /// Lines sent and not yet taken by the writer: the bound on the queue.
    queued: AtomicUsize,
    dropped: AtomicU64,
}

impl Queue {
    /// Sends `lines` to the writer, or drops and counts them when the
    /// writer is [`QUEUE_LINES`] behind (or gone). Never blocks.
    fn hand_off(&self, lines: Vec<Record>) {
        let n = lines.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > QUEUE_LINES {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        if self.tx.send(Msg::Lines(lines)).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

enum Msg {
    Lines(Vec<Record>),
    /// Write out what came before, then open the file again by its path
    /// (`SIGUSR1`, after a rotation).
    Reopen,
    /// Write out what is queued and end (sent by `Writer`'s drop).
    Stop,
}

/// Opens the access log's file again by its path, for [`reopen`].
pub type Reopener = Box<dyn FnMut() -> std::io::Result<Box<dyn Write + Send>> + Send>;

static WRITER: OnceLock<Queue> = OnceLock::new();

/// A thread's lines not handed over yet; handed over when the thread ends too.
struct Local(Vec<Record>);

impl Drop for Local {
    fn drop(&mut self) {
        if let (Some(q), false) = (WRITER.get(), self.0.is_empty()) {
            q.hand_off(std::mem::take(&mut self.0));
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local(Vec::new())) };
}

/// Whether the access log is on (one atomic load).
pub fn enabled() -> bool {
    WRITER.get().is_some()
}

/// Queues `record` on this thread's batch, handed to the writer when it holds
/// [`BATCH`] lines or when the thread next idles ([`flush_thread`]).
pub fn send(record: Record) {
    let Some(q) = WRITER.get() else { return };
    let sent = LOCAL.try_with(|local| {
        let mut local = local.borrow_mut();
        local.0.push(record);
        if local.0.len() >= BATCH {
            q.hand_off(std::mem::take(&mut local.0));
        }
    });
    if sent.is_err() {
        // The thread is ending (its batch is gone): lost, and counted.
        q.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands this thread's gathered lines to the writer. The runtime calls it
/// whenever a worker runs out of work (`on_thread_park`); `run` calls it when
/// the proxy returns. Cheap when the batch is empty or the log is off.
pub fn flush_thread() {
    let Some(q) = WRITER.get() else { return };
    let _ = LOCAL.try_with(|local| {
        let mut local = local.borrow_mut();
        if !local.0.is_empty() {
            q.hand_off(std::mem::take(&mut local.0));
        }
    });
}

/// Asks the writer to write out what it holds and open its file again by
/// its path (logrotate's `postrotate`, nginx's `-s reopen`). Lines queued
/// before go to the old file, later ones to the new. `false` when the access
/// log is off; on stderr it is a no-op. Never blocks.
pub fn reopen() -> bool {
    WRITER.get().is_some_and(|q| q.tx.send(Msg::Reopen).is_ok())
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
            // At exit: this thread's lines, then Stop after everything queued.
            flush_thread();
            let _ = q.tx.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the process's access-log writer on `sink`, which `reopen` (when
/// given: a file) opens again. `None` when one runs already.
pub fn start(
    sink: Box<dyn Write + Send>,
    reopen: Option<Reopener>,
    style: Style,
) -> std::io::Result<Option<Writer>> {
    // Unbounded as a channel, bounded in lines by `Queue::queued`.
    let (tx, rx) = mpsc::channel();
    if WRITER
        .set(Queue {
            tx,
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        })
        .is_err()
    {
        return Ok(None);
    }
    let thread = std::thread::Builder::new()
        .name("mcpflip-access-log".into())
        .spawn(move || write_loop(rx, sink, reopen, style))?;
    Ok(Some(Writer {
        thread: Some(thread),
    }))
}

fn write_loop(
    rx: Receiver<Msg>,
    mut sink: Box<dyn Write + Send>,
    mut reopen: Option<Reopener>,
    style: Style,
) {
    let mut clock = Clock::new();
    let mut out = Pending::default();
    let queued = WRITER.get().map(|q| &q.queued);
    loop {
        // The writer wakes on its own clock, never on a send: a send to a
        // receiver that is not parked costs the request path no system call.
        std::thread::sleep(DRAIN_EVERY);
        clock.resync();
        loop {
            match rx.try_recv() {
                Ok(Msg::Lines(lines)) => {
                    if let Some(q) = queued {
                        q.fetch_sub(lines.len(), Ordering::Relaxed);
                    }
                    for r in &lines {
                        format(&mut out.buf, r, style, &mut clock);
                        out.lines += 1;
                        if out.buf.len() >= WRITE_CHUNK {
                            out.write(&mut sink);
                        }
                    }
                }
                Ok(Msg::Reopen) => {
                    out.write(&mut sink);
                    let Some(open) = reopen.as_mut() else {
                        continue;
                    };
                    match open() {
                        Ok(file) => {
                            sink = file;
                            tracing::info!("access log reopened");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot reopen the access log: writing on to the file open before")
                        }
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
/// part once per second. The wall clock is read once per drain of the queue
/// (so a clock step shows within 20 ms): each line is then an `Instant`
/// difference and integer arithmetic (a `SystemTime` sum and an epoch
/// difference per line cost twice as much).
struct Clock {
    mono: Instant,
    /// Nanoseconds since the Unix epoch at `mono`.
    wall_ns: u64,
    second: u64,
    date: [u8; 20],
}

impl Clock {
    fn new() -> Clock {
        let mut c = Clock {
            mono: Instant::now(),
            wall_ns: 0,
            second: u64::MAX,
            date: [b'0'; 20],
        };
        c.resync();
        c
    }

    /// Reads the wall clock again.
    fn resync(&mut self) {
        self.mono = Instant::now();
        self.wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }

    /// `2026-11-29T23:00:32.188790Z` for `at`.
    fn write(&mut self, out: &mut Vec<u8>, at: Option<Instant>) {
        let at = at.unwrap_or_else(Instant::now);
        let ns = match at.checked_duration_since(self.mono) {
            Some(d) => self.wall_ns.saturating_add(d.as_nanos() as u64),
            None => self
                .wall_ns
                .saturating_sub(self.mono.duration_since(at).as_nanos() as u64),
        };
        let secs = ns / 1_000_000_000;
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
        six(out, (ns % 1_000_000_000 / 1_000) as u32);
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

/// The two decimal digits of 0..=99.
fn pair(n: u32) -> [u8; 2] {
    [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]
}

/// `n` (below 1,000,000) as six digits, zero-padded.
fn six(out: &mut Vec<u8>, n: u32) {
    let (a, b, c) = (pair(n / 10_000 % 100), pair(n / 100 % 100), pair(n % 100));
    out.extend_from_slice(&[a[0], a[1], b[0], b[1], c[0], c[1]]);
}

/// `n` (0..=255) in decimal, without a call to a formatter.
fn octet(out: &mut Vec<u8>, n: u8) {
    let n = u32::from(n);
    if n >= 100 {
        let p = pair(n % 100);
        out.extend_from_slice(&[b'0' + (n / 100) as u8, p[0], p[1]]);
    } else if n >= 10 {
        out.extend_from_slice(&pair(n));
    } else {
        out.push(b'0' + n as u8);
    }
}

/// Seconds with microsecond precision: `0.002781`.
fn seconds(out: &mut Vec<u8>, d: Duration) {
    match d.as_secs() {
        // Almost every request: one digit, no formatter.
        s @ 0..=9 => out.push(b'0' + s as u8),
        s => num(out, s),
    }
    out.push(b'.');
    six(out, d.subsec_micros());
}

fn addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            octet(out, a);
            out.push(b'.');
            octet(out, b);
            out.push(b'.');
            octet(out, c);
            out.push(b'.');
            octet(out, d);
            out.push(b':');
            num(out, v4.port());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

fn hex8(out: &mut Vec<u8>, f: Fingerprint) {
    out.extend_from_slice(&hex_digits::<8>(u128::from(f.0)));
}

/// The low `N` hex digits of `v`, lowercase, leading zeros kept.
pub fn hex_digits<const N: usize>(v: u128) -> [u8; N] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut d = [0; N];
    for (i, slot) in d.iter_mut().enumerate() {
        *slot = HEX[((v >> ((N - 1 - i) * 4)) & 0xf) as usize];
    }
    d
}

/// `s` as a JSON string body (or a quoted text value): `"` and `\` escaped,
/// control characters as `\u00XX`.
fn escaped(out: &mut Vec<u8>, s: &[u8]) {
    let plain = |b: &u8| !matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f);
    if s.iter().all(plain) {
        out.extend_from_slice(s);
        return;
    }
    for &b in s {
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
fn quoted(out: &mut Vec<u8>, value: &[u8]) {
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
    // A line is at most about 450 bytes (the path and method are bounded):
    // one capacity check for the line instead of one per field.
    out.reserve(512);
    match style {
        Style::Text => format_as::<false>(out, r, clock),
        Style::Json => format_as::<true>(out, r, clock),
    }
}

/// One line, its style a constant: every key is a copy of a known length
/// (inlined moves, no call to `memcpy`).
fn format_as<const JSON: bool>(out: &mut Vec<u8>, r: &Record, clock: &mut Clock) {
    let json = JSON;
    // Each key as the style writes it: `,"k":` or ` k=`.
    let key = |out: &mut Vec<u8>, k: Key| out.extend_from_slice(if JSON { k.1 } else { k.0 });
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
    if let Some(ip) = r.client_ip {
        key(out, CLIENT_IP);
        if json {
            let _ = write!(out, "\"{ip}\"");
        } else {
            let _ = write!(out, "{ip}");
        }
    }
    if !r.client_cert.is_empty() {
        // Hex digits (`Exchange::client_cert`).
        key(out, CLIENT_CERT);
        out.push(b'"');
        out.extend_from_slice(r.client_cert.as_bytes());
        out.push(b'"');
    }
    if !r.request_id.is_empty() {
        key(out, REQUEST_ID);
        quoted(out, r.request_id.as_bytes());
    }
    key(out, METHOD);
    // A method is a token (RFC 9110): no quote, backslash or control byte.
    trusted(out, json, r.method.as_str());
    key(out, PATH);
    quoted(out, r.path.as_bytes());
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
    if !r.slot.is_empty() {
        // Slot names are `[A-Za-z0-9_-]` (config validation).
        key(out, SLOT);
        out.push(b'"');
        out.extend_from_slice(r.slot.as_bytes());
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
        quoted(out, r.mcp_method.as_bytes());
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
    if !r.user_agent.is_empty() {
        key(out, USER_AGENT);
        quoted(out, r.user_agent.as_bytes());
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
const CLIENT_IP: Key = (b" client_ip=", b",\"client_ip\":");
const CLIENT_CERT: Key = (b" client_cert=", b",\"client_cert\":");
const REQUEST_ID: Key = (b" request_id=", b",\"request_id\":");
const USER_AGENT: Key = (b" user_agent=", b",\"user_agent\":");
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
        r.slot = Inline::new("blue");
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
        r.slot = Inline::EMPTY;
        format(&mut out, &r, Style::Text, &mut Clock::new());
        let line = String::from_utf8(out).expect("utf-8");
        assert!(
            line.ends_with(&format!(" INFO access: remote_addr=127.0.0.1:4321 method=POST path=\"/mcp\" status=200 bytes_sent=110 request_time=0.002781 era=\"session\" mcp_method=\"tools/\\\"call\" session={} end=\"complete\"\n", Fingerprint::of(b"secret"))),
            "{line}"
        );
    }

    #[test]
    fn client_cert_is_written_in_both_styles_when_set() {
        let mut r = record();
        let mut out = Vec::new();
        format(&mut out, &r, Style::Json, &mut Clock::new());
        assert!(!String::from_utf8_lossy(&out).contains("client_cert"));
        let hash = "ab".repeat(32);
        r.client_cert = Inline::new(&hash);
        for (style, want) in [
            (Style::Text, format!(" client_cert=\"{hash}\" method=POST ")),
            (
                Style::Json,
                format!(",\"client_cert\":\"{hash}\",\"method\":"),
            ),
        ] {
            out.clear();
            format(&mut out, &r, style, &mut Clock::new());
            let line = String::from_utf8(out.clone()).expect("utf-8");
            assert!(line.contains(&want), "{line}");
        }
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["client_cert"], hash);
    }

    #[test]
    fn request_id_is_written_quoted_and_escaped_when_set() {
        let mut r = record();
        let mut out = Vec::new();
        format(&mut out, &r, Style::Json, &mut Clock::new());
        assert!(!String::from_utf8_lossy(&out).contains("request_id"));
        // A trusted proxy's id is visible ASCII, quotes included.
        r.request_id = Inline::new("lb\"1");
        for (style, want) in [
            (Style::Text, " request_id=\"lb\\\"1\" method=POST "),
            (Style::Json, ",\"request_id\":\"lb\\\"1\",\"method\":"),
        ] {
            out.clear();
            format(&mut out, &r, style, &mut Clock::new());
            let line = String::from_utf8(out.clone()).expect("utf-8");
            assert!(line.contains(want), "{line}");
        }
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["request_id"], "lb\"1");
    }

    #[test]
    fn client_ip_follows_remote_addr_when_set() {
        let mut r = record();
        let mut out = Vec::new();
        format(&mut out, &r, Style::Text, &mut Clock::new());
        assert!(!String::from_utf8_lossy(&out).contains("client_ip"));
        r.client_ip = Some("2001:db8::7".parse().expect("ip"));
        out.clear();
        format(&mut out, &r, Style::Text, &mut Clock::new());
        let line = String::from_utf8(out.clone()).expect("utf-8");
        assert!(
            line.contains(
                " INFO access: remote_addr=127.0.0.1:4321 client_ip=2001:db8::7 method=POST "
            ),
            "{line}"
        );
        out.clear();
        format(&mut out, &r, Style::Json, &mut Clock::new());
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["client_ip"], "2001:db8::7");
        assert_eq!(v["remote_addr"], "127.0.0.1:4321");
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
