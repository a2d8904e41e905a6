//! The process's logging, set up once from `[log]`: the main log (`RUST_LOG` or
//! `[log] level`; text or JSON, with tracing-subscriber's formatters; ANSI
//! colours only when stderr is a terminal) and the access log (`access`: one
//! line per exchange, on stderr or in its own file, written by a thread of its
//! own so that the request path never formats a line nor waits for a write).

pub mod access;

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer, Registry};

use crate::config::{AccessLog, LogConfig, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the access log {path} ([log] access_log): {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the access log {path} ([log] access_log) is not a regular file or a character device"
    )]
    NotAFile { path: String },
    #[error("cannot start the access-log writer: {0}")]
    Thread(std::io::Error),
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// Keeps the access-log writer running; dropping it writes out what is queued.
#[must_use = "dropping the guard stops the access-log writer"]
pub struct LogGuard {
    _access: Option<access::Writer>,
}

/// Opens the access-log file again by its path (`SIGUSR1`), after the lines
/// queued so far are written to the old one; see [`access::reopen`].
pub fn reopen() -> bool {
    access::reopen()
}

/// Access-log lines dropped so far because the writer fell behind.
pub fn dropped_lines() -> u64 {
    access::dropped_lines()
}

/// Installs the process's logger as `cfg` says. `RUST_LOG`, when set, decides
/// the main log's filter; the access log is on or off by `[log] access_log` only.
pub fn init(cfg: &LogConfig) -> Result<LogGuard, LogError> {
    let level = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let main: Box<dyn Layer<Registry> + Send + Sync> = match cfg.format {
        LogFormat::Text => layer.with_filter(level).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(level)
            .boxed(),
    };
    let style = match cfg.format {
        LogFormat::Text => access::Style::Text,
        LogFormat::Json => access::Style::Json,
    };
    let sink: Option<(Box<dyn Write + Send>, Option<access::Reopener>)> = match &cfg.access_log {
        AccessLog::Off => None,
        AccessLog::Stderr => Some((Box::new(std::io::stderr()), None)),
        AccessLog::File(path) => {
            let file: Box<dyn Write + Send> = Box::new(open_append(path)?);
            let path = path.clone();
            // The same checks every time: no link, no FIFO.
            let reopen: access::Reopener = Box::new(move || {
                open_append(&path)
                    .map(|f| Box::new(f) as Box<dyn Write + Send>)
                    .map_err(std::io::Error::other)
            });
            Some((file, Some(reopen)))
        }
    };
    tracing_subscriber::registry()
        .with(main)
        .try_init()
        .map_err(|_| LogError::AlreadySet)?;
    let access = match sink {
        Some((sink, reopen)) => access::start(sink, reopen, style).map_err(LogError::Thread)?,
        None => None,
    };
    Ok(LogGuard { _access: access })
}

/// Opens `path` for appending: created mode 0640 when missing, never through
/// a symbolic link (O_NOFOLLOW), and only a regular file or a character device
/// (`/dev/stdout` in a container); a FIFO would block the writer forever.
fn open_append(path: &Path) -> Result<File, LogError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    let shown = || path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        // O_NONBLOCK: opening a FIFO without a reader fails instead of hanging.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| LogError::Open {
            path: shown(),
            source,
        })?;
    let kind = file
        .metadata()
        .map_err(|source| LogError::Open {
            path: shown(),
            source,
        })?
        .file_type();
    if !(kind.is_file() || kind.is_char_device()) {
        return Err(LogError::NotAFile { path: shown() });
    }
    // Writes block again (a terminal as character device would otherwise EAGAIN).
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_is_not_opened_through_a_link_nor_as_a_fifo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target.log");
        std::fs::write(&target, "").expect("write");
        let link = dir.path().join("access.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(matches!(open_append(&link), Err(LogError::Open { .. })));
        let fifo = dir.path().join("fifo");
        crate::files::make_fifo(&fifo);
        assert!(open_append(&fifo).is_err());
        let fresh = dir.path().join("fresh.log");
        open_append(&fresh).expect("created");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
