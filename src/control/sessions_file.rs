//! The captured sessions across a restart of the proxy (`[drain] migrate =
//! "replay"` without a fleet): written beside the state file every
//! `migrate_save_interval` and when the proxy shuts down, and taken back
//! when it starts again, so that a session captured before `systemctl
//! restart mcpflip`, or before a crash and the restart after it, can still
//! move when its slot goes away. (A hitless upgrade hands them over on its
//! socket instead; a fleet keeps them in its etcd.) The file stays: a crash
//! before the next save finds it again. A session that ended after the
//! last save comes back with it, and is forgotten once idle for
//! `migrate_idle` (its client no longer uses its id).
//!
//! The file is JSON lines: a header (`{"version":1,"saved_at":...}`), then
//! one session per line, as the handover sends them. It is written as the
//! state file is ([`persist::write_atomic`]: a fresh temporary file, never a
//! link, mode 0600, fsync, rename, fsync of the directory) and read as it is
//! (never through a link, never a file another user owns), each line and the
//! whole file bounded. A file that cannot be used is logged and left where
//! it is for the operator; the proxy starts without its sessions.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::control::persist;
use crate::proxy::migrate::{Exported, Sessions};
use crate::stats::ProxyStats;

/// The format this version writes and reads.
const FORMAT: u32 = 1;
/// The largest file read: every captured body together is at most 256 MiB,
/// and JSON's escapes may grow a body in a string.
const MAX_FILE: u64 = 1 << 30;
/// The largest line read: one session, its `initialize` (64 KiB at most) and
/// its kept requests and unanswered calls, escaped.
const MAX_LINE: u64 = 4 << 20;

/// The file's first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    version: u32,
    /// When it was written, in seconds since the Unix epoch: the time the
    /// proxy was down counts as idle time.
    saved_at: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Why a save is made: it is logged at `info` at the shutdown only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Interval,
    Shutdown,
}

/// The one writer of a proxy's sessions file: saves every
/// `migrate_save_interval`, and once more at the shutdown, one at a time,
/// each with what the store holds when it starts (so none lands older
/// than one before it).
pub struct Saver {
    path: PathBuf,
    sessions: Arc<Sessions>,
    stats: Arc<ProxyStats>,
    one_at_a_time: Mutex<()>,
}

impl Saver {
    pub fn new(path: PathBuf, sessions: Arc<Sessions>, stats: Arc<ProxyStats>) -> Arc<Saver> {
        Arc::new(Saver {
            path,
            sessions,
            stats,
            one_at_a_time: Mutex::new(()),
        })
    }

    /// Writes the sessions now, durably (blocking: file I/O and fsync); how many.
    pub fn save(&self) -> Result<usize, persist::SaveError> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let saved = save(&self.path, &self.sessions);
        self.stats
            .note_sessions_saved(saved.as_ref().ok().map(|_| unix_now()));
        saved
    }

    /// [`Saver::save`] off the runtime's threads, logged.
    pub async fn save_logged(self: &Arc<Self>, when: When) {
        let me = Arc::clone(self);
        let path = self.path.display();
        match tokio::task::spawn_blocking(move || me.save()).await {
            Ok(Ok(n)) if when == When::Shutdown => {
                tracing::info!(%path, sessions = n, "captured sessions saved for the next start")
            }
            Ok(Ok(n)) => tracing::debug!(%path, sessions = n, "captured sessions saved"),
            Ok(Err(e)) => tracing::warn!(
                %path,
                error = %e,
                "cannot save the captured sessions: the proxy started again would not have those captured since the last save"
            ),
            Err(e) => tracing::warn!(%path, error = %e, "the save of the captured sessions failed"),
        }
    }

    /// Saves every `interval` until `stop`, and within `MOVES_SAVED_WITHIN`
    /// of sessions moving (a deploy): a move lost to a crash would send the
    /// session back to the slot its id names, where its server may still
    /// hold the session as it was before it moved.
    pub async fn every(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval_at(start + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut moves = tokio::time::interval_at(start + MOVES_SAVED_WITHIN, MOVES_SAVED_WITHIN);
        moves.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut moved = self.stats.migrated();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = moves.tick() => {
                    if self.stats.migrated() == moved {
                        continue;
                    }
                }
            }
            moved = self.stats.migrated();
            self.save_logged(When::Interval).await;
        }
    }
}

/// How soon after sessions moved the file holds their moves.
const MOVES_SAVED_WITHIN: Duration = Duration::from_secs(2);

/// Writes every session `sessions` holds to `path`, durably; how many.
fn save(path: &Path, sessions: &Sessions) -> Result<usize, persist::SaveError> {
    let header = Header {
        version: FORMAT,
        saved_at: unix_now(),
    };
    let mut n = 0;
    persist::write_atomic_with(path, |w| {
        line(w, &header)?;
        sessions.export_each(|s| {
            n += 1;
            line(w, &s)
        })?;
        Ok(())
    })?;
    Ok(n)
}

/// What [`take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// No file: the proxy stopped without one, or this is its first start.
    None,
    /// Read: the sessions read, and how many of them were added (not idle
    /// past `migrate_idle`, within the store's bounds).
    Read { read: usize, added: usize },
    /// Not used (a link, another user's file, too large, corrupt), and left
    /// where it is: why.
    Refused(String),
}

/// Reads the sessions file at `path` into `sessions`.
pub fn take(path: &Path, sessions: &Sessions) -> Taken {
    let f = match persist::open_own(path, MAX_FILE) {
        Ok(Some(f)) => f,
        Ok(None) => return Taken::None,
        Err(persist::OpenError::Refused(why)) => return Taken::Refused(why),
        Err(persist::OpenError::Read(e)) => return Taken::Refused(format!("cannot read it: {e}")),
    };
    let list = match read(f) {
        Ok(list) => list,
        Err(why) => return Taken::Refused(why),
    };
    let read = list.len();
    let added = sessions.import(list);
    Taken::Read { read, added }
}

/// The sessions of a sessions file ([`persist::open_own`]), their idle time
/// grown by the time since it was written; or why it is refused.
fn read(f: std::io::Take<std::fs::File>) -> Result<Vec<Exported>, String> {
    let mut lines = BufReader::new(f);
    let mut buf = Vec::new();
    let mut next = |buf: &mut Vec<u8>| -> Result<bool, String> {
        buf.clear();
        let n = (&mut lines)
            .take(MAX_LINE + 1)
            .read_until(b'\n', buf)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if n as u64 > MAX_LINE {
            return Err(format!("a line is longer than {MAX_LINE} bytes"));
        }
        Ok(n > 0)
    };
    if !next(&mut buf)? {
        return Err("it is empty".into());
    }
    let header: Header =
        serde_json::from_slice(&buf).map_err(|e| format!("its first line is corrupt: {e}"))?;
    if header.version != FORMAT {
        return Err(format!(
            "its format version is {}; this mcpflip reads version {FORMAT}",
            header.version
        ));
    }
    let down = unix_now().saturating_sub(header.saved_at);
    let mut out = Vec::new();
    let mut number = 1;
    while next(&mut buf)? {
        number += 1;
        let mut s: Exported =
            serde_json::from_slice(&buf).map_err(|e| format!("line {number} is corrupt: {e}"))?;
        s.idle_s = s.idle_s.saturating_add(down);
        out.push(s);
    }
    Ok(out)
}

/// `v` as one line of JSON.
fn line(w: &mut dyn std::io::Write, v: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    fn store() -> Sessions {
        Sessions::new(
            1000,
            Duration::from_secs(3600),
            Arc::new(crate::stats::ProxyStats::default()),
        )
    }

    fn exported(id: &str, idle_s: u64) -> Exported {
        Exported {
            id: id.into(),
            init: r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#.into(),
            shaping: vec![r#"{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":"debug"}}"#.into()],
            unanswered: Vec::new(),
            moved: None,
            idle_s,
        }
    }

    #[test]
    fn saved_sessions_come_back_with_what_they_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.sessions.json");
        let before = store();
        // One with all a session may hold: an unanswered call, a move.
        let mut full = exported("mf1.blue.1.b", 0);
        full.unanswered = vec![("ev-7".into(), "event: message\ndata: {}\n\n".into())];
        full.moved = Some(crate::proxy::migrate::ExportedMove {
            slot: "green".into(),
            generation: 3,
            inner: "upstream-id".into(),
        });
        assert_eq!(
            before.import(vec![exported("mf1.blue.1.a", 5), full.clone()]),
            2
        );
        assert_eq!(save(&path, &before).expect("saved"), 2);
        let mode = std::fs::metadata(&path).expect("written").mode() & 0o777;
        assert_eq!(mode, 0o600);

        let after = store();
        assert_eq!(take(&path, &after), Taken::Read { read: 2, added: 2 });
        let (mut got, _) = after.export();
        got.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].shaping, exported("", 0).shaping, "kept requests too");
        assert!(got[0].idle_s >= 5, "{got:?}");
        got[1].idle_s = 0;
        assert_eq!(got[1], full, "every field comes back");
        // Taken again (a second start after a crash): held already, not added twice.
        assert_eq!(take(&path, &after), Taken::Read { read: 2, added: 0 });
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(take(&path, &after), Taken::None);
    }

    #[test]
    fn time_down_counts_as_idle_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.json");
        let long_ago = unix_now() - 7200;
        let mut text = format!("{{\"version\":1,\"saved_at\":{long_ago}}}\n");
        text.push_str(&serde_json::to_string(&exported("mf1.blue.1.a", 0)).expect("json"));
        text.push('\n');
        std::fs::write(&path, text).expect("write");
        // Idle 2 h against `migrate_idle` of 1 h: not taken.
        assert_eq!(take(&path, &store()), Taken::Read { read: 1, added: 0 });
    }

    #[test]
    fn a_planted_link_a_corrupt_file_and_an_overlong_line_are_refused_and_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "{\"version\":1,\"saved_at\":0}\n").expect("write");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(matches!(take(&link, &store()), Taken::Refused(why) if why.contains("symlink")));
        assert!(link.exists());

        let corrupt = dir.path().join("corrupt.json");
        std::fs::write(&corrupt, "{\"version\":1,\"saved_at\":0}\n{\"id\":").expect("write");
        assert!(matches!(take(&corrupt, &store()), Taken::Refused(why) if why.contains("line 2")));
        assert!(corrupt.exists(), "left for the operator");

        let fifo = dir.path().join("fifo.json");
        crate::files::make_fifo(&fifo);
        assert!(
            matches!(take(&fifo, &store()), Taken::Refused(why) if why.contains("not a plain file")),
            "a FIFO neither blocks the start nor is read"
        );

        let newer = dir.path().join("newer.json");
        std::fs::write(&newer, "{\"version\":2,\"saved_at\":0}\n").expect("write");
        assert!(
            matches!(take(&newer, &store()), Taken::Refused(why) if why.contains("version is 2"))
        );

        let long = dir.path().join("long.json");
        let mut f = std::fs::File::create(&long).expect("create");
        writeln!(f, "{{\"version\":1,\"saved_at\":0}}").expect("write");
        f.write_all(&vec![b' '; MAX_LINE as usize + 10])
            .expect("write");
        drop(f);
        assert!(matches!(take(&long, &store()), Taken::Refused(why) if why.contains("longer")));
    }
}
