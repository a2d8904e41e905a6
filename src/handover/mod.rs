//! Hitless upgrade: a running `mcpflip run` starts a new binary and hands it
//! its listening sockets, like nginx's USR2 upgrade, HAProxy's `-x` socket
//! transfer and sozu's upgrade over its command socket.
//!
//! ```text
//! old: socketpair, spawn BINARY ARGS (MCPFLIP_HANDOVER_FD=n) ── offer + fds (SCM_RIGHTS) ─►
//! new: load config (a bad one: `failed`), adopt the sockets whose address is unchanged
//!      (bind the others), rename its control socket over the old path, serve ─► ready
//! old: stop accepting, finish open connections and streams up to [drain] deadline,
//!      publishing its per-slot counts to the new process (counts ... counts, EOF), exit 0
//! ```
//!
//! Until `ready` arrives the old process never stops accepting: a new process
//! that fails to start, exits, says `failed` or stays silent past the timeout
//! is stopped and the old one serves on. The state (table, generations,
//! weights, drains) travels through the state file, which the old process's
//! controller has saved before every reply; the new process restores it as a
//! restart would, so drains resume. Sessions keep their slot: the slot and
//! generation are in the session id, which either process can read.
//!
//! The wire: one JSON object per line (at most [`MAX_LINE`] bytes); the
//! offer's line carries the public and admin listeners as `SCM_RIGHTS`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;

use crate::control::protocol::HandoverSlot;
use crate::control::Controller;
use crate::proxy::migrate::Sessions;
use crate::table::Table;

/// The environment variable that names the new process's end of the handover socket.
pub const ENV: &str = "MCPFLIP_HANDOVER_FD";
/// The longest line either side sends or accepts.
pub const MAX_LINE: usize = 1024 * 1024;
/// Captured sessions are sent in lines of about this many bytes.
const SESSIONS_LINE: usize = 256 * 1024;
/// How often the old process publishes its counts.
const COUNTS_EVERY: Duration = Duration::from_millis(100);
/// How long the new process waits for the offer, and either side for a write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of the handover conversation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
enum Msg {
    /// Old to new, with the public and admin listeners attached (in that order).
    Offer {
        pid: u32,
        public: SocketAddr,
        admin: SocketAddr,
        /// The old process's counts when it made the offer.
        slots: Vec<HandoverSlot>,
        /// Its running drains: slot and milliseconds left of the deadline.
        #[serde(default)]
        drains: Vec<(String, u64)>,
    },
    /// New to old: it serves; the old one may stop accepting.
    Ready { pid: u32 },
    /// New to old: it cannot take over (its config, its listeners).
    Failed { error: String },
    /// Old to new, every [`COUNTS_EVERY`] until it exits.
    Counts { slots: Vec<HandoverSlot> },
    /// Old to new: captured sessions (`[drain] migrate = "replay"`), once
    /// it serves and again once the old process's connections have ended.
    Sessions {
        sessions: Vec<crate::proxy::migrate::Exported>,
    },
}

/// Why a handover did not happen. The old process serves on in every case.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot start {}: {error}", .binary.display())]
    Spawn {
        binary: PathBuf,
        error: std::io::Error,
    },
    #[error("the handover socket failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the new process refused to take over: {0}")]
    Refused(String),
    #[error("the new process exited ({0}) before taking over; its log is in this service's log")]
    Exited(ExitStatus),
    #[error("the new process did not take over within {}; it was stopped", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the handover conversation broke: {0}")]
    Protocol(String),
}

/// The counts of every slot of `table` in this process.
fn counts(table: &Table) -> Vec<HandoverSlot> {
    table
        .slots
        .iter()
        .map(|s| HandoverSlot {
            slot: s.name.to_string(),
            live_streams: s.stats.live_streams(),
            inflight: s.stats.inflight(),
        })
        .collect()
}

/// The next line (without its end), `None` at the end of the stream; a
/// line longer than [`MAX_LINE`] is an error.
async fn next_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> Result<Option<String>, HandoverError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(HandoverError::Protocol(if n > MAX_LINE {
            format!("a line longer than {MAX_LINE} bytes")
        } else {
            "a line cut short".into()
        }));
    }
    buf.pop();
    String::from_utf8(buf)
        .map(Some)
        .map_err(|e| HandoverError::Protocol(e.to_string()))
}

fn line(msg: &Msg) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; no memory is touched.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the old process hands over.
pub struct Offer<'a> {
    pub binary: &'a Path,
    pub args: &'a [OsString],
    pub public: (BorrowedFd<'a>, SocketAddr),
    pub admin: (BorrowedFd<'a>, SocketAddr),
    pub table: &'a Table,
    /// The running drains: slot and what is left of its deadline.
    pub drains: Vec<(String, Duration)>,
    pub timeout: Duration,
}

/// A new process that took over.
pub struct Successor {
    pub pid: u32,
    write: OwnedWriteHalf,
    /// Kept so that the child is not reaped as an orphan of a dropped handle.
    _child: tokio::process::Child,
}

/// Starts `offer.binary` with `offer.args` and hands it the listeners; returns
/// once it says it serves. On any failure the child is stopped (SIGKILL) and
/// the caller keeps serving.
pub async fn start_successor(offer: Offer<'_>) -> Result<Successor, HandoverError> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(offer.binary);
    cmd.args(offer.args)
        .env(ENV, their_fd.to_string())
        .stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl).
    unsafe {
        cmd.pre_exec(move || set_cloexec(their_fd, false));
    }
    let mut child = cmd.spawn().map_err(|error| HandoverError::Spawn {
        binary: offer.binary.to_path_buf(),
        error,
    })?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    let result = async {
        ours.set_write_timeout(Some(IO_TIMEOUT))?;
        let msg = line(&Msg::Offer {
            pid: std::process::id(),
            public: offer.public.1,
            admin: offer.admin.1,
            slots: counts(offer.table),
            drains: offer
                .drains
                .iter()
                .map(|(s, d)| (s.clone(), d.as_millis() as u64))
                .collect(),
        });
        let fds = [offer.public.0.as_raw_fd(), offer.admin.0.as_raw_fd()];
        let sent = match ours.send_with_fd(&msg, &fds) {
            Ok(n) => n,
            Err(e) => {
                // Most likely it exited already: say how.
                return Err(match tokio::time::timeout(IO_TIMEOUT, child.wait()).await {
                    Ok(Ok(s)) => HandoverError::Exited(s),
                    _ => HandoverError::Io(e),
                });
            }
        };
        if sent != msg.len() {
            return Err(HandoverError::Protocol("the offer was cut short".into()));
        }
        ours.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(ours)?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let answer = tokio::select! {
            status = child.wait() => {
                // It may have said why before exiting (a bad config): that
                // line is in the socket already.
                if let Ok(Ok(Some(text))) =
                    tokio::time::timeout(Duration::from_millis(100), next_line(&mut lines)).await
                {
                    if let Ok(Msg::Failed { error }) = serde_json::from_str::<Msg>(&text) {
                        return Err(HandoverError::Refused(error));
                    }
                }
                return Err(match status {
                    Ok(s) => HandoverError::Exited(s),
                    Err(e) => HandoverError::Io(e),
                });
            }
            _ = tokio::time::sleep(offer.timeout) => return Err(HandoverError::Timeout(offer.timeout)),
            l = next_line(&mut lines) => l,
        };
        let text = match answer {
            Ok(Some(t)) => t,
            Err(e) => return Err(e),
            Ok(None) => {
                // It closed its end: it is exiting; report how.
                let status = tokio::time::timeout(IO_TIMEOUT, child.wait()).await;
                return Err(match status {
                    Ok(Ok(s)) => HandoverError::Exited(s),
                    _ => HandoverError::Protocol("the new process closed the handover socket".into()),
                });
            }
        };
        match serde_json::from_str::<Msg>(&text) {
            Ok(Msg::Ready { .. }) => Ok(write),
            Ok(Msg::Failed { error }) => Err(HandoverError::Refused(error)),
            Ok(other) => Err(HandoverError::Protocol(format!("unexpected {other:?}"))),
            Err(e) => Err(HandoverError::Protocol(e.to_string())),
        }
    }
    .await;
    match result {
        Ok(write) => Ok(Successor {
            pid,
            write,
            _child: child,
        }),
        Err(e) => {
            // A process that exited explains the broken conversation best.
            let e = match e {
                HandoverError::Io(_) | HandoverError::Protocol(_) => {
                    match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                        Ok(Ok(s)) => HandoverError::Exited(s),
                        _ => e,
                    }
                }
                e => e,
            };
            let _ = child.start_kill();
            let _ = tokio::time::timeout(IO_TIMEOUT, child.wait()).await;
            Err(e)
        }
    }
}

impl Successor {
    /// Publishes this process's captured sessions to the new one, then its
    /// counts until [`Publisher::finish`] (or until this process exits: its
    /// end closes then, which the new process reads as zeros).
    pub fn publish(self, table: Arc<Table>, sessions: Option<Arc<Sessions>>) -> Publisher {
        let mut write = self.write;
        let child = self._child;
        let (finish, mut finished) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _child = child;
            if let Some(s) = &sessions {
                if send_sessions(&mut write, s).await.is_err() {
                    return;
                }
            }
            loop {
                let msg = line(&Msg::Counts {
                    slots: counts(&table),
                });
                match tokio::time::timeout(IO_TIMEOUT, write.write_all(&msg)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(COUNTS_EVERY) => {}
                    _ = &mut finished => break,
                }
            }
            // This process's connections have ended: what they captured
            // since the first time goes too.
            if let Some(s) = &sessions {
                let _ = send_sessions(&mut write, s).await;
            }
        });
        Publisher { finish, task }
    }
}

/// The old process's side of the conversation once the new one serves.
pub struct Publisher {
    finish: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Sends the captured sessions a last time and ends the conversation.
    pub async fn finish(self) {
        let _ = self.finish.send(());
        let _ = self.task.await;
    }
}

/// Writes every session of `sessions` in lines of at most [`SESSIONS_LINE`]
/// bytes of sessions (one larger has a line of its own; one too large for
/// any line is left out, and logged).
async fn send_sessions(write: &mut OwnedWriteHalf, sessions: &Sessions) -> std::io::Result<()> {
    let (list, mut skipped) = sessions.export();
    let total = list.len();
    // What a line holds besides its sessions: `{"msg":"sessions","sessions":[]}`, the commas, the end.
    const FRAME: usize = 64;
    let mut batch = Vec::new();
    let mut size = 0;
    let mut sent = 0;
    for x in list {
        // Measured as written: escaping can make a body's JSON longer than it.
        let n = serde_json::to_vec(&x).map_or(usize::MAX, |v| v.len() + 1);
        if n > MAX_LINE - FRAME {
            skipped += 1;
            continue;
        }
        if !batch.is_empty() && size + n > SESSIONS_LINE {
            sent += batch.len();
            write_sessions(write, std::mem::take(&mut batch)).await?;
            size = 0;
        }
        size += n;
        batch.push(x);
    }
    if !batch.is_empty() {
        sent += batch.len();
        write_sessions(write, batch).await?;
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "captured sessions not handed over (not UTF-8, or too large for the handover)"
        );
    }
    tracing::info!(sessions = sent, of = total, "captured sessions handed over");
    Ok(())
}

async fn write_sessions(
    write: &mut OwnedWriteHalf,
    sessions: Vec<crate::proxy::migrate::Exported>,
) -> std::io::Result<()> {
    let msg = line(&Msg::Sessions { sessions });
    match tokio::time::timeout(IO_TIMEOUT, write.write_all(&msg)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// The new process's side: the offer it got, and the sockets that came with it.
pub struct Incoming {
    stream: std::os::unix::net::UnixStream,
    pub old_pid: u32,
    /// The public and admin listeners (taken by the wiring).
    pub public: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    slots: Vec<HandoverSlot>,
    drains: Vec<(String, Duration)>,
}

impl Incoming {
    /// The handover this process was started for, if any: reads the offer
    /// (and its sockets) from the descriptor named by [`ENV`], which is
    /// removed from the environment so that no later child inherits it.
    /// Call before any thread is started.
    pub fn from_env() -> Result<Option<Incoming>, HandoverError> {
        let Some(value) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        std::env::remove_var(ENV);
        let fd: RawFd = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .filter(|fd| *fd > 2)
            .ok_or_else(|| {
                HandoverError::Protocol(format!("{ENV}={value:?} is not a descriptor"))
            })?;
        // It must be a socket: a number that names some other descriptor is refused.
        // SAFETY: fstat into a zeroed struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(HandoverError::Protocol(format!(
                "{ENV}={fd} is not a socket"
            )));
        }
        set_cloexec(fd, true)?;
        // SAFETY: the descriptor was made for this process by its parent and nothing else owns it.
        let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut buf = vec![0u8; MAX_LINE];
        let mut fds = [-1 as RawFd; 2];
        let (mut len, nfds) = stream.recv_with_fd(&mut buf, &mut fds)?;
        // Own what came before anything can fail, so that nothing leaks.
        let owned: Vec<OwnedFd> = fds[..nfds]
            .iter()
            // SAFETY: SCM_RIGHTS gave this process these new descriptors.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
            .collect();
        for fd in &owned {
            set_cloexec(fd.as_raw_fd(), true)?;
        }
        while !buf[..len].contains(&b'\n') {
            if len == buf.len() {
                return Err(HandoverError::Protocol("the offer is too long".into()));
            }
            let n = std::io::Read::read(&mut &stream, &mut buf[len..])?;
            if n == 0 {
                return Err(HandoverError::Protocol("the offer was cut short".into()));
            }
            len += n;
        }
        let end = buf[..len].iter().position(|b| *b == b'\n').unwrap_or(len);
        let Msg::Offer {
            pid, slots, drains, ..
        } = serde_json::from_slice(&buf[..end])
            .map_err(|e| HandoverError::Protocol(e.to_string()))?
        else {
            return Err(HandoverError::Protocol(
                "the first message is not an offer".into(),
            ));
        };
        let mut owned = owned.into_iter();
        let (Some(p), Some(a)) = (owned.next(), owned.next()) else {
            return Err(HandoverError::Protocol(format!(
                "the offer came with {nfds} sockets, not 2"
            )));
        };
        Ok(Some(Incoming {
            stream,
            old_pid: pid,
            public: Some(std::net::TcpListener::from(p)),
            admin: Some(std::net::TcpListener::from(a)),
            slots,
            drains: drains
                .into_iter()
                .map(|(s, ms)| (s, Duration::from_millis(ms)))
                .collect(),
        }))
    }

    /// Tells the old process why this one cannot take over (it serves on).
    pub fn fail(&self, error: &str) {
        let msg = line(&Msg::Failed {
            error: error.to_owned(),
        });
        let _ = std::io::Write::write_all(&mut &self.stream, &msg);
    }

    /// The old process's counts when it made the offer (for
    /// `Controller::start_after`).
    pub fn counts(&self) -> &[HandoverSlot] {
        &self.slots
    }

    /// What the old process's drains had left of their deadlines.
    pub fn drains(&self) -> Vec<(String, Duration)> {
        self.drains.clone()
    }

    /// Tells the old process this one serves; follows its counts until it
    /// exits, and takes the sessions it captured into `sessions`.
    pub fn ready(
        self,
        ctl: Arc<Controller>,
        sessions: Option<Arc<Sessions>>,
    ) -> Result<(), HandoverError> {
        let msg = line(&Msg::Ready {
            pid: std::process::id(),
        });
        std::io::Write::write_all(&mut &self.stream, &msg)?;
        self.stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(self.stream)?;
        let old = self.old_pid;
        ctl.set_handover(Some(old));
        let since = Instant::now();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream);
            while let Ok(Some(text)) = next_line(&mut lines).await {
                match serde_json::from_str::<Msg>(&text) {
                    Ok(Msg::Counts { slots }) => apply_counts(&ctl, &slots),
                    Ok(Msg::Sessions { sessions: list }) => {
                        let n = list.len();
                        match &sessions {
                            Some(s) => {
                                let added = s.import(list);
                                tracing::info!(sent = n, added, "captured sessions taken over");
                            }
                            None => tracing::info!(
                                sent = n,
                                "captured sessions not taken over: [drain] migrate is off here"
                            ),
                        }
                    }
                    _ => {}
                }
            }
            // It exited (or broke the conversation): nothing of it counts any more.
            for s in &ctl.tables.load().slots {
                s.stats.set_previous(0, 0);
            }
            ctl.set_handover(None);
            tracing::info!(
                pid = old,
                after_s = since.elapsed().as_secs(),
                "the process that handed over has exited"
            );
        });
        Ok(())
    }
}

fn apply_counts(ctl: &Controller, slots: &[HandoverSlot]) {
    let table = ctl.tables.load();
    for s in &table.slots {
        let (live, inflight) = slots
            .iter()
            .find(|c| *c.slot == *s.name)
            .map_or((0, 0), |c| (c.live_streams, c.inflight));
        s.stats.set_previous(live, inflight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions go in lines of at most `SESSIONS_LINE` bytes of sessions
    /// (one larger alone), every line within `MAX_LINE`, and one too large
    /// for any line is left out; the other end reads them all back.
    #[tokio::test]
    async fn sessions_are_sent_in_bounded_lines_and_read_back_whole() {
        let store = Sessions::new(100, Duration::from_secs(3600), Default::default());
        let id = |n: u32| http::HeaderValue::from_str(&format!("b1.g1.s{n}")).expect("id");
        // Bodies of backslashes and quotes, whose JSON is twice as long:
        // three of 100 KiB and one of 300 KiB (a line each: two would pass
        // SESSIONS_LINE), one of 2 MiB (no line holds it).
        for (n, len) in [
            (0, 100 << 10),
            (1, 100 << 10),
            (2, 100 << 10),
            (3, 300 << 10),
            (4, 2 << 20),
        ] {
            let body = format!("{{\"pad\":\"{}\"}}", "\\\"".repeat(len / 2));
            assert!(store.capture(&id(n), bytes::Bytes::from(body)));
        }
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("pair");
        let (_read, mut write) = ours.into_split();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(theirs);
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            while let Ok(Some(text)) = next_line(&mut lines).await {
                sizes.push(text.len());
                match serde_json::from_str::<Msg>(&text) {
                    Ok(Msg::Sessions { sessions }) => {
                        got.extend(sessions.into_iter().map(|x| x.id))
                    }
                    other => panic!("{other:?}"),
                }
            }
            (got, sizes)
        });
        send_sessions(&mut write, &store).await.expect("sent");
        drop(write);
        let (mut got, sizes) = reader.await.expect("reader");
        got.sort();
        assert_eq!(got, ["b1.g1.s0", "b1.g1.s1", "b1.g1.s2", "b1.g1.s3"]);
        assert!(sizes.iter().all(|&n| n <= MAX_LINE), "{sizes:?}");
        assert_eq!(sizes.len(), 4, "a line each: {sizes:?}");
        assert_eq!(
            sizes.iter().filter(|&&n| n > SESSIONS_LINE).count(),
            1,
            "one longer than SESSIONS_LINE, alone: {sizes:?}"
        );
    }
}
