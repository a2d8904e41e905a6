//! The control socket: a Unix socket (mode 0600, in a directory only root or
//! the proxy's user can write; peers checked by uid) that takes one request
//! per line and answers JSON lines.
//!
//! Lines are capped at [`MAX_LINE`] bytes: a longer one is answered with a
//! `line_too_long` error (which never quotes it) and the connection closes,
//! without waiting for its end. A malformed request gets a `bad_command`
//! error and the connection stays usable. A connection idle longer than
//! [`IDLE`] is closed, and a reader that stops reading gets [`WRITE`] per line.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use crate::control::controller::{Controller, FlipOptions};
use crate::control::deploy::{self, DeployOptions};
use crate::control::paths;
use crate::control::protocol::{parse_line, CtlError, Drained, Reply, Request, MAX_LINE};
use crate::control::reload;

/// A control connection with no complete line for this long is closed.
pub const IDLE: Duration = Duration::from_secs(600);
/// The longest a reply line may take to be written.
pub const WRITE: Duration = Duration::from_secs(30);

/// Binds the control socket: checks (or creates, 0700) its directory,
/// replaces a stale socket, refuses a live one or a file that is not a socket.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    paths::secure_dir(paths::parent_of(path))
        .map_err(|e| anyhow::anyhow!("[control] socket: {e}"))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "control socket {} is in use by another running mcpflip; stop it first or set [control] socket to another path",
                    path.display()
                );
            }
            std::fs::remove_file(path).map_err(|e| {
                anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display())
            })?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it or set [control] socket to another path",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("cannot chmod 0600 {}: {e}", path.display()))?;
    Ok(listener)
}

/// Binds the control socket for a process that takes over from a running
/// one (a hitless upgrade): binds a temporary name beside it and renames it
/// over the path, so the path always names a live socket (the old one's,
/// then this one's) and a `ctl` never finds it missing.
pub fn bind_replacing(path: &Path) -> anyhow::Result<UnixListener> {
    paths::secure_dir(paths::parent_of(path))
        .map_err(|e| anyhow::anyhow!("[control] socket: {e}"))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; remove it or set [control] socket to another path",
                path.display()
            );
        }
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.new", std::process::id()));
    let temp = std::path::PathBuf::from(name);
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)
        .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", temp.display()))?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        anyhow::bail!("cannot put the control socket at {}: {e}", path.display());
    }
    Ok(listener)
}

/// How long, once `serve` stops, its connections get to write the reply of
/// the command they run (an `upgrade`'s reply is written as the process that
/// handed over stops serving).
const FINISH: Duration = Duration::from_secs(5);

/// Serves control connections until `stop`; then waits (up to 5 s) for the
/// commands still running to reply.
pub async fn serve(listener: UnixListener, ctl: Arc<Controller>, stop: CancellationToken) {
    let me = paths::euid();
    // At the descriptor limit: back off (doubling, capped), as every listener does.
    let mut backoff = crate::proxy::accept::Backoff::new("control");
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => {
                tracker.close();
                let _ = tokio::time::timeout(FINISH, tracker.wait()).await;
                return;
            }
            (s, _) = backoff.accept(|| listener.accept()) => s,
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| paths::trusted_uid(c.uid(), me));
        let ctl = Arc::clone(&ctl);
        let stop = stop.clone();
        tracker.spawn(async move {
            if allowed {
                connection(stream, ctl, stop).await;
            } else {
                let (_, mut w) = stream.into_split();
                let _ = write_line(&mut w, &CtlError::Forbidden.to_reply().to_value()).await;
            }
        });
    }
}

async fn write_line(w: &mut OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    let line = format!("{v}\n");
    match tokio::time::timeout(WRITE, w.write_all(line.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// What the reader got.
enum Read {
    Line(String),
    Closed,
    TooLong,
    Failed(String),
}

/// Reads lines of at most [`MAX_LINE`] bytes.
struct Lines<R> {
    read: R,
    codec: LinesCodec,
    buf: BytesMut,
}

impl<R: tokio::io::AsyncRead + Unpin> Lines<R> {
    fn new(read: R) -> Self {
        Lines {
            read,
            codec: LinesCodec::new_with_max_length(MAX_LINE),
            buf: BytesMut::with_capacity(4096),
        }
    }

    async fn next(&mut self) -> Read {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(line)) => return Read::Line(line),
                Ok(None) => {}
                Err(LinesCodecError::MaxLineLengthExceeded) => return Read::TooLong,
                Err(LinesCodecError::Io(e)) => return Read::Failed(e.to_string()),
            }
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return match self.codec.decode_eof(&mut self.buf) {
                        Ok(Some(line)) => Read::Line(line),
                        Ok(None) => Read::Closed,
                        Err(LinesCodecError::MaxLineLengthExceeded) => Read::TooLong,
                        Err(LinesCodecError::Io(e)) => Read::Failed(e.to_string()),
                    }
                }
                Ok(_) => {}
                Err(e) => return Read::Failed(e.to_string()),
            }
        }
    }
}

async fn connection(stream: UnixStream, ctl: Arc<Controller>, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut lines = Lines::new(read);
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(IDLE, lines.next()) => match r {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let line = match read {
            Read::Line(l) => l,
            Read::Closed => return,
            Read::TooLong => {
                let e = CtlError::LineTooLong { max: MAX_LINE };
                let _ = write_line(&mut write, &e.to_reply().to_value()).await;
                return;
            }
            Read::Failed(why) => {
                let e = CtlError::BadCommand(format!("unreadable line: {why}"));
                let _ = write_line(&mut write, &e.to_reply().to_value()).await;
                return;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let ctl2 = Arc::clone(&ctl);
        let run = tokio::spawn(async move {
            let request = parse_line(&line)?;
            execute(&ctl2, request, tx).await
        });
        while let Some(v) = rx.recv().await {
            if write_line(&mut write, &v).await.is_err() {
                run.abort();
                return;
            }
        }
        let reply = match run.await {
            Ok(Ok(r)) => r.to_value(),
            Ok(Err(e)) => e.to_reply().to_value(),
            Err(e) => CtlError::Internal(format!("command failed: {e}"))
                .to_reply()
                .to_value(),
        };
        if write_line(&mut write, &reply).await.is_err() {
            return;
        }
    }
}

/// Waits for each slot of `slots` to be drained (`--wait` of a `flip` or
/// `weights` that drains them), in turn.
async fn all_drained(
    ctl: &Controller,
    slots: &[String],
    mut progress: impl FnMut(crate::control::protocol::Progress),
) -> Result<Vec<Drained>, CtlError> {
    let mut drained = Vec::with_capacity(slots.len());
    for slot in slots {
        let outcome = ctl.wait_drained(slot, None, &mut progress).await?;
        drained.push(Drained {
            slot: slot.clone(),
            outcome,
        });
    }
    Ok(drained)
}

/// Runs one request; progress lines go to `tx`, the final reply is returned.
pub async fn execute(
    ctl: &Arc<Controller>,
    request: Request,
    tx: mpsc::UnboundedSender<Value>,
) -> Result<Reply, CtlError> {
    let progress = {
        let tx = tx.clone();
        move |p: crate::control::protocol::Progress| {
            let _ = tx.send(p.to_value());
        }
    };
    match request {
        Request::Status => Ok(Reply::Status(Box::new(ctl.status()))),
        Request::Weights {
            weights,
            drain,
            wait,
            deadline,
        } => {
            if !drain && (wait || deadline.is_some()) {
                return Err(CtlError::BadCommand(
                    "`wait` and `deadline` of `weights` go with `drain`".into(),
                ));
            }
            let mut reply = ctl.set_weights(weights, drain, deadline).await?;
            if wait {
                reply.drained = Some(all_drained(ctl, &reply.draining, progress).await?);
            }
            Ok(Reply::Weights(reply))
        }
        Request::Flip {
            slot,
            no_probe,
            drain,
            wait,
            deadline,
        } => {
            let opts = FlipOptions {
                no_probe,
                drain,
                deadline,
                window: None,
            };
            let mut reply = ctl.flip(&slot, opts).await?;
            if drain && wait {
                reply.drained = Some(all_drained(ctl, &reply.draining, progress).await?);
            }
            Ok(Reply::Flip(Box::new(reply)))
        }
        Request::Drain {
            slot,
            wait,
            deadline,
            migrate,
        } => {
            // `--migrate`: a drain whose deadline is now (see `drain`).
            let deadline = if migrate {
                Some(Duration::ZERO)
            } else {
                deadline
            };
            let started = ctl.drain(&slot, deadline).await?;
            if !wait {
                return Ok(Reply::Drain(started));
            }
            let outcome = ctl.wait_drained(&slot, None, progress).await?;
            Ok(Reply::Drained(Drained { slot, outcome }))
        }
        Request::Wait { slot, timeout, .. } => {
            let outcome = ctl.wait_drained(&slot, timeout, progress).await?;
            Ok(Reply::Drained(Drained { slot, outcome }))
        }
        Request::Probe { slot } => {
            let report = ctl.probe(&slot).await?;
            if !report.ok {
                return Err(CtlError::ProbeFailed {
                    report: Box::new(report),
                });
            }
            Ok(Reply::Probe(Box::new(report)))
        }
        Request::Rollback => ctl.rollback().await.map(|r| Reply::Flip(Box::new(r))),
        Request::Retire { slot } => ctl.lifecycle(&slot, true).await.map(Reply::Lifecycle),
        Request::Standby { slot } => ctl.lifecycle(&slot, false).await.map(Reply::Lifecycle),
        Request::Reload => reload::reload(ctl).await.map(Reply::Reload),
        Request::Upgrade { binary, timeout } => {
            ctl.upgrade(binary, timeout).await.map(Reply::Upgrade)
        }
        Request::Deploy {
            slot,
            deadline,
            watch,
            migrate,
        } => {
            // A task of its own: a client that goes away does not stop a deploy
            // halfway (its drains and watch go on, and `status` shows them).
            let ctl = Arc::clone(ctl);
            let opts = DeployOptions {
                deadline: if migrate {
                    Some(Duration::ZERO)
                } else {
                    deadline
                },
                window: watch,
            };
            let task =
                tokio::spawn(async move { deploy::deploy(&ctl, &slot, opts, progress).await });
            drop(tx);
            task.await
                .map_err(|e| CtlError::Internal(format!("the deploy failed: {e}")))?
                .map(|d| Reply::Deploy(Box::new(d)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8]) -> Vec<Read> {
        let mut lines = Lines::new(input);
        let mut out = Vec::new();
        loop {
            match lines.next().await {
                Read::Closed => return out,
                r @ (Read::TooLong | Read::Failed(_)) => {
                    out.push(r);
                    return out;
                }
                r => out.push(r),
            }
        }
    }

    /// The codec, not the parser, bounds a line: MAX_LINE bytes are read,
    /// one more is refused, with or without its newline (the control-line
    /// fuzz target only sees lines within the bound).
    #[tokio::test]
    async fn lines_are_bounded_by_the_codec() {
        let max = "x".repeat(MAX_LINE);
        let got = read_all(format!("status\n{max}\n").as_bytes()).await;
        assert!(
            matches!(&got[..], [Read::Line(a), Read::Line(b)] if a == "status" && b.len() == MAX_LINE),
            "{} reads",
            got.len()
        );
        for input in [format!("{max}y\nstatus\n"), format!("{max}y")] {
            let got = read_all(input.as_bytes()).await;
            assert!(matches!(&got[..], [Read::TooLong]), "{} reads", got.len());
        }
    }
}
