//! One client connection's life on a listener (public or admin), with the timers
//! hyper does not have and the close that no client can hold off:
//!
//! - From accept until its first complete request head (the TLS handshake
//!   included), a connection has `header_read_timeout`; then it is dropped. A
//!   socket that sends nothing, a partial h2c preface, a TLS client that stops
//!   after the handshake: each holds a descriptor for that long at most.
//! - A connection with no request in progress (HTTP/1.1 keep-alive) or no open
//!   stream (HTTP/2) for `idle_timeout` is closed gracefully (HTTP/1.1 at once,
//!   HTTP/2 with GOAWAY) and dropped if still open [`FORCE_GRACE`] later.
//! - A forced stream (drain deadline, `drain --migrate`) must end within
//!   [`FORCE_GRACE`]: hyper stops polling a response body while the client's
//!   socket (h1) or the stream's window (h2) is full, so a client that does
//!   not read can only be ended here, at the connection.
//!   - HTTP/1.1: the connection *settles*. If the forced response ends
//!     within the grace (its client reads), the connection stays open for
//!     the client's next request; if not, it is dropped. Closing it right
//!     after a response whose head said keep-alive would race the client's
//!     next request on it (sent before the client saw the close, it fails:
//!     a migrated session's next call would die for nothing).
//!   - HTTP/2: GOAWAY at once (a client sees it before it opens another
//!     stream), dropped after the grace. That ends the connection's other
//!     streams too; a forced drain deadline is the point where that is
//!     acceptable.
//!
//! - A connection whose client stops taking what it is sent for
//!   `send_timeout` (nginx's `send_timeout`, HAProxy's `timeout client`
//!   while it writes) is dropped: its socket refused writes that long
//!   ([`SendWatch`]), or a response frame was not taken on that long
//!   ([`Tracked`]: HTTP/2 polls a body only when the stream's window has
//!   room, so a client that never opens it is seen there). Checked every
//!   `send_timeout` while a request is in progress (so within twice it);
//!   an event stream that waits for its next event sends nothing and is
//!   not stalled.
//!
//! - A connection that closes with the rest of a request unread (a 413 for a
//!   body over `max_request_body`; hyper's 400 or 431 for a head it cannot
//!   read, `proxy::h1`; the 503 at a connection cap) closes *lingering*, as nginx's
//!   `lingering_close`: its socket is kept past the connection (a duplicate
//!   descriptor, made only then), shut for writing, and read off until the
//!   client closes, [`LINGERING_TIMEOUT`] passes without data, or
//!   [`LINGERING_TIME`] in all. Closed with unread data, the socket would
//!   send a reset, and a client still writing its body (one that reads only
//!   once its request is out: Python's `http.client`, curl without `Expect`)
//!   would get that reset instead of its answer.
//!
//! Nothing here runs per request beyond a few atomic operations (three for
//! the idle timer, about four more for the send check's count of what is
//! handed out; bench/PROFILE.md §40) and a clock read: the timers are lazy
//! (as nginx's and HAProxy's are). A request's
//! end stores the time; the driver's timer, set for the idle deadline of an
//! earlier request, moves itself to the new one when it fires. Only a
//! driver whose timer found the connection busy asks to be woken by the end
//! of the request (`Notify`), so a keep-alive connection's requests neither
//! reset a timer nor wake the driver one by one.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::StreamGuard;
use crate::upstream::lines::{RawAnswer, RawHeaders};

/// How long a forced or idle-closed connection may take to finish before it
/// is dropped.
pub const FORCE_GRACE: Duration = Duration::from_secs(5);

/// A lingering close ends after this long without data from the client
/// (nginx's `lingering_timeout`).
pub const LINGERING_TIMEOUT: Duration = Duration::from_secs(5);
/// A lingering close ends after this long in all (nginx's `lingering_time`).
pub const LINGERING_TIME: Duration = Duration::from_secs(30);

/// A listener's connection timers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accept to the first complete request head.
    pub header_read: Duration,
    /// With no request in progress / no open stream.
    pub idle: Duration,
    /// A client that takes nothing of what it is sent for this long.
    pub send: Duration,
}

/// A handle on one connection, shared by its driver, its requests and the
/// watchers of its streams.
#[derive(Debug, Clone, Default)]
pub struct Conn(Arc<ConnState>);

#[derive(Debug, Default)]
struct ConnState {
    /// Requests whose response has not ended (h1: 0 or 1; h2: open streams).
    active: AtomicU32,
    /// A request head has been delivered.
    started: AtomicBool,
    /// Close now gracefully; drop after [`FORCE_GRACE`] (an HTTP/2 stream
    /// was forced, or the rest of a request body will never be read).
    forced: AtomicBool,
    /// An HTTP/1.1 stream was forced: its response must end within
    /// [`FORCE_GRACE`], or the connection is dropped.
    settle: AtomicBool,
    /// Its requests come as HTTP/2 (set by the first): a forced stream then
    /// closes the connection (GOAWAY) instead of settling it.
    h2: AtomicBool,
    /// Close once the open requests end, with no deadline (HTTP/2: GOAWAY;
    /// its open streams go on): the process is handing over or stopping.
    wind_down: AtomicBool,
    /// The driver asked the connection to close gracefully (`proxy::h1`
    /// reads it: closed between requests, `Connection: close` on the answer
    /// in progress).
    closing: AtomicBool,
    /// When a request last ended, in [`clock`] milliseconds.
    last_end: AtomicU64,
    /// `X-Forwarded-Client-Cert` for the certificate the client presented
    /// (`tls.client_ca`), set once after the handshake. Boxed: 16 bytes on
    /// every other connection, not the value's 40.
    client_cert: std::sync::OnceLock<Box<http::HeaderValue>>,
    /// The driver waits for the last request to end (its timer found the
    /// connection busy): the end wakes it.
    wants_end: AtomicBool,
    /// Wakes the driver: the last request ended (when asked), or a stream
    /// was forced, or the connection is to wind down. Always through
    /// [`ConnState::signal`].
    wake: Notify,
    /// Raised before each `wake` notification and lowered by the driver when
    /// it takes one: the driver polls its `Notified` only while this is up
    /// (or the `Notified` is new), not on every wake-up of the connection.
    signalled: AtomicBool,
    /// Guards of forced streams that ended: they count until their response
    /// has ended on the connection (HTTP/1.1: it settled) or the connection
    /// is gone, so a drain never reports `drained` while a client still
    /// waits for the end of a stream it counted.
    parked: Mutex<Vec<StreamGuard>>,
    /// The connection's socket descriptor plus one (0: not known), for a
    /// lingering close.
    socket: std::sync::atomic::AtomicI32,
    /// A duplicate of the socket, made when the connection is to close
    /// lingering ([`Conn::linger`]); the driver's caller reads it off.
    lingering: Mutex<Option<std::os::fd::OwnedFd>>,
    /// When the client's socket last refused a write ([`clock`] plus one;
    /// 0: its last write went through). [`SendWatch`] sets it.
    write_blocked: AtomicU64,
    /// Response frames handed to the connection and not taken on yet (the
    /// body not polled again), by the parity of the send check's `epoch`
    /// they were handed in ([`Tracked`]).
    handed: [AtomicU32; 2],
    /// Send checks so far (the driver's, every `send_timeout` while busy).
    epoch: AtomicU32,
}

impl ConnState {
    /// Wakes the driver (see `signalled`).
    fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl Conn {
    pub fn new() -> Conn {
        Conn::default()
    }

    /// A request head arrived (`h1`: as HTTP/1.x): the connection is busy
    /// until the guard drops (the response body ends or the request is
    /// abandoned).
    pub fn begin(&self, h1: bool) -> Active {
        self.0.active.fetch_add(1, Ordering::Relaxed);
        self.0.started.store(true, Ordering::Relaxed);
        if !h1 {
            self.0.h2.store(true, Ordering::Relaxed);
        }
        Active(self.clone())
    }

    /// The client's verified certificate, as its `X-Forwarded-Client-Cert`
    /// value (set once, after the TLS handshake).
    pub fn set_client_cert(&self, value: http::HeaderValue) {
        let _ = self.0.client_cert.set(Box::new(value));
    }

    /// [`Conn::set_client_cert`]'s value, when the client presented one.
    pub fn client_cert(&self) -> Option<&http::HeaderValue> {
        self.0.client_cert.get().map(|b| &**b)
    }

    /// A complete request head arrived whose body is still being read
    /// before the request starts: the first-head timer is done with.
    pub fn head_seen(&self) {
        self.0.started.store(true, Ordering::Relaxed);
    }

    /// Asks the connection to close once the request in progress is
    /// answered, or at once between requests (`proxy::h1`'s graceful close).
    pub fn close_gracefully(&self) {
        self.0.closing.store(true, Ordering::Release);
    }

    /// Whether [`Conn::close_gracefully`] was asked.
    pub fn closing(&self) -> bool {
        self.0.closing.load(Ordering::Acquire)
    }

    /// A stream of this connection was forced. HTTP/1.1: the connection
    /// settles (kept if the response ends within [`FORCE_GRACE`], else
    /// dropped); HTTP/2: closed now gracefully, dropped after the grace.
    pub fn force_stream(&self) {
        if self.0.h2.load(Ordering::Relaxed) {
            self.force();
        } else {
            self.0.settle.store(true, Ordering::Release);
            self.0.signal();
        }
    }

    /// Closes the connection now gracefully, and drops it after [`FORCE_GRACE`].
    fn force(&self) {
        self.0.forced.store(true, Ordering::Release);
        self.0.signal();
    }

    /// Closes the connection gracefully once its open requests and streams
    /// end, however long they last (HTTP/2: GOAWAY now, so that the client
    /// opens its next streams elsewhere).
    pub fn wind_down(&self) {
        if !self.0.wind_down.swap(true, Ordering::AcqRel) {
            self.0.signal();
        }
    }

    /// The connection's socket, for [`Conn::linger`] and the send check:
    /// set once, while the socket is open, by whoever serves the connection.
    pub fn set_socket(&self, fd: std::os::fd::RawFd) {
        self.0.socket.store(fd.saturating_add(1), Ordering::Relaxed);
    }

    /// The connection is to close with the rest of a request body unread:
    /// its socket is kept (a duplicate descriptor) and read off after the
    /// connection is dropped ([`linger`]). Call while a request of the
    /// connection is served (its socket is open then).
    pub fn linger(&self) {
        let fd = self.0.socket.load(Ordering::Relaxed) - 1;
        if fd < 0 {
            return;
        }
        // SAFETY: `fd` is this connection's socket, set by its server, which
        // holds it open while it serves a request; the borrow ends here.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        match socket.try_clone_to_owned() {
            Ok(dup) => {
                if let Ok(mut l) = self.0.lingering.lock() {
                    l.get_or_insert(dup);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "no lingering close: the socket could not be duplicated")
            }
        }
    }

    /// The socket to close lingering, once the connection is dropped.
    pub fn take_lingering(&self) -> Option<std::os::fd::OwnedFd> {
        self.0.lingering.lock().ok()?.take()
    }

    /// Closes the connection after the response in progress, and drops it
    /// [`FORCE_GRACE`] later if it has not closed by then (an HTTP/1.1 request
    /// body the proxy will never read keeps hyper from closing on its own).
    pub fn close_soon(&self) {
        self.force();
    }

    /// Keeps a forced stream's guard until the connection is gone.
    pub fn park(&self, guard: StreamGuard) {
        if let Ok(mut p) = self.0.parked.lock() {
            p.push(guard);
        }
    }

    /// Watches `force` for a stream of this connection until
    /// the returned handle drops (the stream ended): when it fires, the stream
    /// is forced ([`Conn::force_stream`]) and its body told
    /// ([`ForceWatch::poll_forced`]). A task of its own: the stream's body is
    /// not polled while its client does not read, so it cannot watch for
    /// itself.
    pub fn watch_force(&self, force: CancellationToken) -> ForceWatch {
        self.watch(force, false)
    }

    /// [`Conn::watch_force`] for a stream that moves when forced (a legacy
    /// HTTP+SSE session's, `proxy::splice`): its body is told, and its
    /// connection is forced only if the stream has neither moved nor ended
    /// (the handle dropped) within [`FORCE_GRACE`]: a client that does not
    /// read never lets its body move.
    pub fn watch_force_moving(&self, force: CancellationToken) -> ForceWatch {
        self.watch(force, true)
    }

    fn watch(&self, force: CancellationToken, moving: bool) -> ForceWatch {
        let (ended, mut ended_rx) = oneshot::channel::<()>();
        let signal = Arc::new(ForceSignal::default());
        if force.is_cancelled() {
            // Forced before it opened (shutdown): the body sees it at once.
            signal.set();
        }
        let conn = self.clone();
        let told = signal.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A stream that ends because it was forced still forces its
                // connection (its body also does, when it sees the force);
                // one that moves, only if it has not moved in the grace.
                biased;
                _ = force.cancelled() => {
                    told.set();
                    if moving {
                        tokio::select! {
                            _ = &mut ended_rx => return,
                            _ = tokio::time::sleep(FORCE_GRACE) => {}
                        }
                    }
                    conn.force_stream();
                }
                _ = &mut ended_rx => {}
            }
        });
        ForceWatch {
            _ended: ended,
            signal,
        }
    }
}

/// A stream's force as its body sees it: one atomic load per poll, where
/// polling the token's own future took two mutexes (about 450 instructions
/// per relayed event, bench/PROFILE.md §33).
#[derive(Debug, Default)]
struct ForceSignal {
    forced: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl ForceSignal {
    fn set(&self) {
        self.forced.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// A stream's force watcher (ended when dropped), and what it saw.
#[derive(Debug)]
pub struct ForceWatch {
    _ended: oneshot::Sender<()>,
    signal: Arc<ForceSignal>,
}

impl ForceWatch {
    /// Whether the stream's slot forced it; if not yet, `cx`'s task is woken
    /// when it does.
    pub fn poll_forced(&self, cx: &mut Context<'_>) -> bool {
        let s = &self.signal;
        if s.forced.load(Ordering::Acquire) {
            return true;
        }
        s.waker.register(cx.waker());
        // A force set between the load and the registration woke nobody.
        s.forced.load(Ordering::Acquire)
    }
}

/// One request in progress on a connection.
#[derive(Debug)]
pub struct Active(Conn);

impl Drop for Active {
    fn drop(&mut self) {
        let s = &self.0 .0;
        // Stored before the count falls: a driver that sees no request
        // active sees when the last one ended.
        s.last_end.store(clock(), Ordering::Relaxed);
        // SeqCst with `busy`'s two: of the end's decrement and the driver's
        // flag, whichever comes second sees the first.
        if s.active.fetch_sub(1, Ordering::SeqCst) == 1
            && s.wants_end.load(Ordering::SeqCst)
            && s.wants_end.swap(false, Ordering::SeqCst)
        {
            s.signal();
        }
    }
}

/// Milliseconds on tokio's clock (paused in tests as it is) since the first
/// call: the idle clock's unit.
fn clock() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(base).as_millis() as u64
}

/// The [`Instant`] of a [`clock`] reading.
fn instant(ms: u64) -> Instant {
    let now = clock();
    let now_i = Instant::now();
    now_i
        .checked_sub(Duration::from_millis(now.saturating_sub(ms)))
        .unwrap_or(now_i)
}

/// A response body that keeps its request [`Active`] until it is dropped,
/// and counts what it handed out as not taken on until it is polled (again):
/// its head, then each data frame (the connection's send check). HTTP/2
/// polls a body only once the stream's window has room.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    active: Active,
    /// The parity of the epoch its head or last data frame was handed out
    /// in, until it is polled.
    handed: Option<usize>,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, active: Active) -> Self {
        let state = &active.0 .0;
        let p = (state.epoch.load(Ordering::Acquire) & 1) as usize;
        state.handed[p].fetch_add(1, Ordering::Relaxed);
        Tracked {
            inner,
            active,
            handed: Some(p),
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let Some(p) = self.handed {
            self.active.0 .0.handed[p].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let state = &this.active.0 .0;
        if let Some(p) = this.handed.take() {
            state.handed[p].fetch_sub(1, Ordering::Relaxed);
        }
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.is_data() {
                let p = (state.epoch.load(Ordering::Acquire) & 1) as usize;
                state.handed[p].fetch_add(1, Ordering::Relaxed);
                this.handed = Some(p);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: RawAnswer> RawAnswer for Tracked<B> {
    fn take_raw_headers(&mut self) -> Option<Box<RawHeaders>> {
        self.inner.take_raw_headers()
    }
}

/// The client's socket, watched for writes it refuses: how long it has
/// taken none is what `send_timeout` limits (the driver reads it). A write
/// that is refused (`Pending`) marks the time once; one that goes through
/// clears it.
#[derive(Debug)]
pub struct SendWatch<I> {
    io: I,
    conn: Conn,
    blocked: bool,
}

impl<I> SendWatch<I> {
    pub fn new(io: I, conn: &Conn) -> Self {
        SendWatch {
            io,
            conn: conn.clone(),
            blocked: false,
        }
    }

    fn note<T>(&mut self, polled: &Poll<std::io::Result<T>>) {
        match polled {
            Poll::Pending if !self.blocked => {
                self.blocked = true;
                self.conn
                    .0
                    .write_blocked
                    .store(clock() + 1, Ordering::Relaxed);
            }
            Poll::Ready(_) if self.blocked => {
                self.blocked = false;
                self.conn.0.write_blocked.store(0, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SendWatch<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SendWatch<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.note(&polled);
        polled
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.note(&polled);
        polled
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The send check, every `send` while a request is in progress: whether
/// the client took nothing for at least `send`. Then starts the next epoch.
///
/// While its socket refuses writes, what counts is whether the client takes
/// bytes: the kernel's send queue (`outq`, its size at the previous check)
/// must have shrunk since the previous check. The kernel wakes a writer only
/// once much of a large queue has gone, so a slow reader may see no write go
/// through for longer than `send` and is still taking its answer. While the
/// socket takes writes, a head or frame handed out before the previous check
/// and still not taken on is the client's doing (HTTP/2: a stream whose
/// window it never opens), whatever its other streams do.
fn stalled(state: &ConnState, send: Duration, outq: &mut Option<u32>) -> bool {
    let queued = send_queue(state);
    let drained = matches!((*outq, queued), (Some(before), Some(now)) if now < before);
    *outq = queued;
    let blocked = state.write_blocked.load(Ordering::Relaxed);
    // Frames of the epoch before the one ending now share the next one's
    // parity: handed out before the previous check, at least `send` ago.
    let epoch = state.epoch.load(Ordering::Acquire);
    let older = ((epoch + 1) & 1) as usize;
    let stalled = if blocked != 0 {
        instant(blocked - 1) + send <= Instant::now() && !drained
    } else {
        state.handed[older].load(Ordering::Relaxed) > 0
    };
    if !stalled {
        state.epoch.store(epoch.wrapping_add(1), Ordering::Release);
    }
    stalled
}

/// Bytes in the connection's socket send queue not yet taken by the client
/// (`SIOCOUTQ`), when its socket is known.
fn send_queue(state: &ConnState) -> Option<u32> {
    let fd = state.socket.load(Ordering::Relaxed) - 1;
    if fd < 0 {
        return None;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is this connection's socket (set by its server, open
    // while the driver runs); TIOCOUTQ writes one int.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    (r == 0).then(|| u32::try_from(queued).unwrap_or(0))
}

/// True when a request is in progress; then the end of the last one wakes
/// the driver. The flag is raised before the count is read again, so an end
/// between the two is never missed (it either sees the flag or is seen).
fn busy(state: &ConnState) -> bool {
    if state.active.load(Ordering::SeqCst) == 0 {
        return false;
    }
    state.wants_end.store(true, Ordering::SeqCst);
    if state.active.load(Ordering::SeqCst) == 0 {
        state.wants_end.store(false, Ordering::SeqCst);
        return false;
    }
    true
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Closed by either side, or after a graceful close.
    Closed,
    /// No complete request head within `header_read_timeout` of accept.
    HeaderTimeout,
    /// Dropped: a forced or idle-closed connection outlived its grace.
    Dropped,
    /// Dropped: its client took nothing of what it was sent for `send_timeout`.
    SendTimeout,
}

/// What woke [`drive`]'s loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The connection ended (closed by either side, or after a graceful close).
    Closed,
    /// The connection's `wake` was notified.
    Wake,
    /// The timer fired.
    Timer,
    /// The listener is shutting down.
    Shut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first request head (the timer is its deadline).
    Head,
    /// Serving; the timer, when armed, is the idle deadline.
    Open,
    /// HTTP/1.1 with a forced stream: the timer is when the connection is
    /// dropped unless the response ended first.
    Settling,
    /// Closing; the timer is when the connection is dropped.
    Closing,
}

/// The HTTP/1.1 + HTTP/2 builder every listener uses: hyper's own h1 header
/// timer is off (it would start at the end of each response and cut idle
/// keep-alive connections; [`drive`] times the first head and idleness itself).
pub fn builder(max_streams: u32) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// The HTTP/2 connection preface a client with prior knowledge opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a client connection speaks, as far as it is known before
/// anything is read off it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.x: served by `proxy::h1` (hyper for what it hands on).
    H1,
    /// HTTP/2 (the h2c preface, or ALPN `h2`).
    H2,
    /// Not known yet: hyper-util's `auto` reads the first bytes.
    Auto,
}

/// One listener's builders: `auto` tells HTTP/1.1 from an h2c preface by
/// reading the connection's first bytes and handing them back (hyper-util's
/// `Rewind`); `h2` serves a connection known to speak HTTP/2 (the preface
/// peeked at, or ALPN); `http1` is what `proxy::h1`, which serves a
/// connection known to speak HTTP/1.x, hands a connection to when hyper is
/// to serve it (with the same settings as `builder`'s HTTP/1.1).
///
/// Why a peek rather than `auto` for every connection: `auto`'s reader gets
/// the request head in two parts (the sniffed bytes, then the rest), and
/// hyper's HTTP/1.1 read buffer, asked for 8 KiB more while holding the
/// first part, doubled to 16 KiB for the connection's life
/// (bench/PROFILE.md §10); and a peek lets `proxy::h1` serve the connection.
#[derive(Debug, Clone)]
pub struct Builders {
    auto: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    http1: Arc<hyper::server::conn::http1::Builder>,
}

impl Builders {
    pub fn new(max_streams: u32) -> Builders {
        let auto = builder(max_streams);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true);
        Builders {
            h2: auto.clone().http2_only(),
            auto,
            http1: Arc::new(http1),
        }
    }

    /// hyper-util's builder for `proto`; `None` for HTTP/1.x, which
    /// `proxy::h1` serves.
    pub fn hyper(&self, proto: Proto) -> Option<&auto::Builder<TokioExecutor>> {
        match proto {
            Proto::H1 => None,
            Proto::H2 => Some(&self.h2),
            Proto::Auto => Some(&self.auto),
        }
    }

    /// hyper's HTTP/1.1 builder, for the connections `proxy::h1` hands on.
    pub fn http1(&self) -> &Arc<hyper::server::conn::http1::Builder> {
        &self.http1
    }

    /// The protocol of a plain TCP connection, from a peek at its first
    /// bytes (nothing is read off the socket): `H2` for the h2c preface,
    /// `H1` for anything else, `Auto` while what arrived is still a prefix
    /// of the preface (a peek cannot wait for more without spinning).
    pub async fn sniff(&self, tcp: &tokio::net::TcpStream, deadline: Instant) -> Proto {
        let mut first = [0u8; H2_PREFACE.len()];
        match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 && !H2_PREFACE.starts_with(&first[..n]) => Proto::H1,
            Ok(Ok(n)) if n == H2_PREFACE.len() => Proto::H2,
            // Closed, failed, timed out (the head timer ends it), or a
            // prefix of the preface so far.
            _ => Proto::Auto,
        }
    }

    /// The protocol of a TLS connection, by the one ALPN chose.
    pub fn by_alpn(alpn: Option<&[u8]>) -> Proto {
        match alpn {
            Some(b"h2") => Proto::H2,
            Some(b"http/1.1") => Proto::H1,
            _ => Proto::Auto,
        }
    }
}

/// What [`run`] times a connection by.
#[derive(Debug, Clone, Copy)]
pub struct Timed<'a> {
    /// The connection's handle (its requests, forced streams, wind-down).
    pub conn: &'a Conn,
    /// Its listener's timers.
    pub limits: Limits,
    /// Accept + `header_read_timeout` (a TLS handshake already spent part
    /// of it).
    pub head_deadline: Instant,
    /// The listener's shutdown: close gracefully.
    pub shutdown: &'a CancellationToken,
}

/// Serves one connection with `service` (hyper-util's connection) until it
/// ends, timed by `timed`.
pub async fn drive<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    timed: Timed<'_>,
) -> End
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // What the client does not take is timed (`send_timeout`).
    let io = SendWatch::new(io, timed.conn);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    run(connection, |c| c.graceful_shutdown(), timed).await
}

/// Serves one connection, `connection` (hyper's, or `proxy::h1`'s), until it
/// ends, under the timers above; `graceful_shutdown` asks it to close once
/// its requests in progress end.
pub async fn run<C, E, G>(connection: C, mut graceful_shutdown: G, timed: Timed<'_>) -> End
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
    G: FnMut(std::pin::Pin<&mut C>),
{
    let Timed {
        conn,
        limits,
        head_deadline,
        shutdown,
    } = timed;
    let state = &conn.0;
    tokio::pin!(connection);
    let timer = tokio::time::sleep_until(head_deadline);
    tokio::pin!(timer);
    // The wake-up and shutdown futures live across iterations: made anew on
    // every poll of the connection, each would register and unregister a
    // waiter (a lock) per poll.
    let wake = state.wake.notified();
    tokio::pin!(wake);
    let shut = shutdown.cancelled();
    tokio::pin!(shut);
    let mut armed = true;
    // The timer is the next send check (the connection is busy).
    let mut watching = false;
    // The socket's send queue at the last send check.
    let mut outq = None;
    let mut phase = Phase::Head;
    let mut graceful = false;
    // After an event, or at the start, every source is polled (to register
    // the task's waker with a new or reset one); otherwise only those that
    // may be ready: a wake-up of the connection (a read, a write) then costs
    // the connection's poll and three atomic loads, not three more polls.
    let mut fresh = true;
    let end = loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = connection.as_mut().poll(cx) {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return Poll::Ready(Event::Closed);
            }
            let all = std::mem::take(&mut fresh);
            if (all || state.signalled.load(Ordering::Acquire)) && wake.as_mut().poll(cx).is_ready()
            {
                // Lowered before the states are read: a signal after this
                // raises it again, or leaves a permit the next `Notified` takes.
                state.signalled.store(false, Ordering::Release);
                return Poll::Ready(Event::Wake);
            }
            if armed && (all || timer.is_elapsed()) && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            if !graceful && (all || shutdown.is_cancelled()) && shut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Shut);
            }
            Poll::Pending
        })
        .await;
        fresh = true;
        match event {
            Event::Closed => break End::Closed,
            Event::Wake => {
                wake.set(state.wake.notified());
                if !graceful && state.wind_down.load(Ordering::Acquire) {
                    graceful_shutdown(connection.as_mut());
                    graceful = true;
                }
                if state.forced.load(Ordering::Acquire) && phase != Phase::Closing {
                    if !graceful {
                        graceful_shutdown(connection.as_mut());
                        graceful = true;
                    }
                    phase = Phase::Closing;
                    timer.as_mut().reset(Instant::now() + FORCE_GRACE);
                    armed = true;
                    watching = false;
                } else if phase == Phase::Settling {
                    // The end of the response in progress at the settle
                    // consumes the flag `busy` raised (the connection may be
                    // busy again already, with the client's next request).
                    if !state.wants_end.load(Ordering::SeqCst) {
                        phase = Phase::Open;
                        settled(state, timer.as_mut(), limits.idle);
                    }
                } else if phase != Phase::Closing && state.settle.swap(false, Ordering::AcqRel) {
                    phase = Phase::Settling;
                    timer.as_mut().reset(Instant::now() + FORCE_GRACE);
                    armed = true;
                    watching = false;
                    if !busy(state) {
                        phase = Phase::Open;
                        settled(state, timer.as_mut(), limits.idle);
                    }
                } else if phase != Phase::Closing
                    && (!armed || watching)
                    && state.active.load(Ordering::Acquire) == 0
                {
                    // The request the timer found busy ended: idle from its end.
                    watching = false;
                    phase = Phase::Open;
                    timer
                        .as_mut()
                        .reset(instant(state.last_end.load(Ordering::Relaxed)) + limits.idle);
                    armed = true;
                }
            }
            Event::Timer => {
                watching = false;
                match phase {
                    Phase::Head if !state.started.load(Ordering::Relaxed) => {
                        break End::HeaderTimeout
                    }
                    Phase::Head | Phase::Open if busy(state) => {
                        // Busy: the end of the last request wakes us; until
                        // then, the client is checked for taking what it is sent.
                        phase = Phase::Open;
                        if stalled(state, limits.send, &mut outq) {
                            break End::SendTimeout;
                        }
                        watching = true;
                        timer.as_mut().reset(Instant::now() + limits.send);
                    }
                    Phase::Head | Phase::Open
                        if instant(state.last_end.load(Ordering::Relaxed)) + limits.idle
                            > Instant::now() =>
                    {
                        // Requests came and went since the timer was set: the
                        // idle deadline is the last one's end + idle.
                        phase = Phase::Open;
                        let at = instant(state.last_end.load(Ordering::Relaxed)) + limits.idle;
                        timer.as_mut().reset(at);
                    }
                    Phase::Head | Phase::Open => {
                        if !graceful {
                            graceful_shutdown(connection.as_mut());
                            graceful = true;
                        }
                        phase = Phase::Closing;
                        timer.as_mut().reset(Instant::now() + FORCE_GRACE);
                    }
                    // A forced response that did not end within the grace.
                    Phase::Settling | Phase::Closing => break End::Dropped,
                }
            }
            Event::Shut => {
                graceful_shutdown(connection.as_mut());
                graceful = true;
            }
        }
    };
    // The connection (and with it every body and guard it holds) is dropped on
    // return; the parked guards of its forced streams go with it.
    if let Ok(mut p) = state.parked.lock() {
        p.clear();
    }
    end
}

/// A settling connection's forced response ended: its parked guards go,
/// and the idle timer runs from the response's end.
fn settled(state: &ConnState, timer: std::pin::Pin<&mut tokio::time::Sleep>, idle: Duration) {
    if let Ok(mut p) = state.parked.lock() {
        p.clear();
    }
    timer.reset(instant(state.last_end.load(Ordering::Relaxed)) + idle);
}

/// The open connections of one listener, for a graceful shutdown.
#[derive(Debug, Default)]
pub struct Connections {
    shutdown: CancellationToken,
    open: AtomicUsize,
    closed: Notify,
}

impl Connections {
    pub fn new() -> Arc<Self> {
        Arc::new(Connections::default())
    }

    /// Counts a connection until the guard drops.
    pub fn enter(self: &Arc<Self>) -> Entered {
        self.open.fetch_add(1, Ordering::SeqCst);
        Entered(Arc::clone(self))
    }

    /// Cancelled when the listener shuts down: connections close gracefully.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Asks every connection to close gracefully and waits until all have.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.closed().await
    }

    /// Waits until every connection has closed (on its own).
    pub async fn closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One connection counted by [`Connections`].
#[derive(Debug)]
pub struct Entered(Arc<Connections>);

impl Drop for Entered {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// nginx's lingering close of `socket` (see the module's text): shut for
/// writing (the answer is out), then read off until the client closes, an
/// error, [`LINGERING_TIMEOUT`] without data or [`LINGERING_TIME`] in all;
/// then closed, or at once when `stop` (the listener's shutdown) fires.
/// Call once the connection itself is dropped.
pub async fn linger(socket: std::os::fd::OwnedFd, stop: &CancellationToken) {
    use tokio::io::AsyncReadExt as _;
    let socket = std::net::TcpStream::from(socket);
    let _ = socket.shutdown(std::net::Shutdown::Write);
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut socket) = tokio::net::TcpStream::from_std(socket) else {
        return;
    };
    let end = Instant::now() + LINGERING_TIME;
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = 0u64;
    loop {
        let until = end.min(Instant::now() + LINGERING_TIMEOUT);
        let more = tokio::select! {
            _ = stop.cancelled() => None,
            r = tokio::time::timeout_at(until, socket.read(&mut buf)) => r.ok().and_then(Result::ok),
        };
        match more {
            Some(n) if n > 0 => read += n as u64,
            _ => break,
        }
    }
    tracing::debug!(
        bytes = read,
        "lingering close: the rest of the request read off"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ForceWatch::poll_forced` says, polled once from a waker that
    /// counts its wake-ups.
    fn poll_forced(watch: &ForceWatch, woken: &Arc<Woken>) -> bool {
        let waker = std::task::Waker::from(woken.clone());
        watch.poll_forced(&mut Context::from_waker(&waker))
    }

    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_streams_body_is_told_of_its_force_and_woken_by_it() {
        let conn = Conn::new();
        let token = CancellationToken::new();
        let watch = conn.watch_force(token.clone());
        let woken = Arc::new(Woken::default());
        assert!(!poll_forced(&watch, &woken));
        tokio::task::yield_now().await;
        assert!(
            !poll_forced(&watch, &woken),
            "forced before the token fired"
        );
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        token.cancel();
        // The watcher runs on this runtime: its task sets the force and wakes
        // the body's task, which then reads it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while woken.0.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the body was never woken");
            tokio::task::yield_now().await;
        }
        assert!(poll_forced(&watch, &woken));
        // The connection was forced too (HTTP/1.1: it settles).
        assert!(conn.0.settle.load(Ordering::Acquire));
        // A stream opened after the force (shutdown) sees it at its first poll.
        let late = conn.watch_force(token);
        assert!(poll_forced(&late, &Arc::new(Woken::default())));
    }

    /// A stream that moves when forced (a legacy session's) is told at
    /// once, but its connection is forced only if the stream has not moved
    /// (dropped its watch) within the grace.
    #[tokio::test]
    async fn a_moving_streams_connection_is_forced_only_if_it_does_not_move() {
        let (moved, stuck) = (Conn::new(), Conn::new());
        let token = CancellationToken::new();
        let a = moved.watch_force_moving(token.clone());
        let b = stuck.watch_force_moving(token.clone());
        token.cancel();
        let woken = Arc::new(Woken::default());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(poll_forced(&a, &woken) && poll_forced(&b, &woken)) {
            assert!(Instant::now() < deadline, "the bodies were never told");
            tokio::task::yield_now().await;
        }
        assert!(!moved.0.settle.load(Ordering::Acquire));
        drop(a);
        tokio::time::sleep(FORCE_GRACE + Duration::from_millis(10)).await;
        assert!(
            !moved.0.settle.load(Ordering::Acquire),
            "a stream that moved keeps its connection"
        );
        assert!(
            stuck.0.settle.load(Ordering::Acquire),
            "one that did not move within the grace is forced"
        );
        drop(b);
    }
}
