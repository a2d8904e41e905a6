//! The state file and its one writer.
//!
//! One persister task writes the state: a unique temporary file in the state
//! directory, opened with `O_CREAT | O_EXCL | O_NOFOLLOW` (never a file or
//! link someone put there), written, `fsync`ed, renamed over the state file,
//! and the directory `fsync`ed. Saves are queued in order; when several wait,
//! only the latest is written and all of them are answered with its result,
//! so nothing older ever lands after something newer. [`Persister::save`]
//! returns once the state is durable: the controller replies after that.
//!
//! Reading refuses what the proxy did not write: a link, a file another user
//! owns, one larger than [`MAX_FILE`], a format version it does not know.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::control::paths::{self, PathError};
use crate::control::state::{SlotRecord, State};
use crate::table::SlotState;

/// The format this version writes and reads.
pub const FORMAT: u32 = 1;
/// The largest state file read (a few hundred bytes per slot).
pub const MAX_FILE: u64 = 1 << 20;

/// The state file as it is on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// The format version ([`FORMAT`]).
    pub version: u32,
    /// Grows by one with every change (absent in files of the first release).
    #[serde(default)]
    pub revision: u64,
    pub slots: BTreeMap<String, SlotEntry>,
    #[serde(default)]
    pub previous_active: Option<String>,
}

/// One slot in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotEntry {
    pub weight: u32,
    pub state: SlotState,
    pub generation: u32,
}

impl StateFile {
    pub fn of(state: &State) -> Self {
        StateFile {
            version: FORMAT,
            revision: state.revision,
            slots: state
                .slots
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        SlotEntry {
                            weight: s.weight,
                            state: s.state,
                            generation: s.generation,
                        },
                    )
                })
                .collect(),
            previous_active: state.previous_active.clone(),
        }
    }

    /// The slots as the state machine's records.
    pub fn records(&self) -> BTreeMap<String, SlotRecord> {
        self.slots
            .iter()
            .map(|(name, e)| {
                (
                    name.clone(),
                    SlotRecord {
                        name: name.clone(),
                        weight: e.weight,
                        state: e.state,
                        generation: e.generation,
                    },
                )
            })
            .collect()
    }
}

/// Why the state file cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("state file {}: {reason}; fix or delete it, or start with `mcpflip run --ignore-state` to use the config's weights", .path.display())]
    Refused { path: PathBuf, reason: String },
    #[error("cannot read state file {}: {source}; start with `mcpflip run --ignore-state` to use the config's weights", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Path(#[from] PathError),
}

fn refused(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::Refused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Why a file the proxy wrote cannot be read back ([`open_own`]).
#[derive(Debug)]
pub enum OpenError {
    /// It is not what the proxy writes (a link, not a plain file, another
    /// user's, too large): why.
    Refused(String),
    Read(std::io::Error),
}

/// Opens a file the proxy wrote (the state file, the sessions file) to read
/// it back; `Ok(None)` when there is none. Refuses what the proxy did not
/// write: a link (never followed), anything but a plain file (a FIFO put
/// there does not block the open), a file owned by another user than root
/// or this one, one larger than `max` bytes. What it gives reads at most
/// `max` bytes.
pub fn open_own(path: &Path, max: u64) -> Result<Option<std::io::Take<std::fs::File>>, OpenError> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(OpenError::Refused(
                "it is a symlink; the proxy writes a plain file".into(),
            ))
        }
        Err(e) => return Err(OpenError::Read(e)),
    };
    let meta = f.metadata().map_err(OpenError::Read)?;
    if !meta.is_file() {
        return Err(OpenError::Refused("it is not a plain file".into()));
    }
    if !paths::trusted_uid(meta.uid(), paths::euid()) {
        return Err(OpenError::Refused(format!(
            "it is owned by uid {}, not by root or uid {} (the user running mcpflip)",
            meta.uid(),
            paths::euid()
        )));
    }
    if meta.len() > max {
        return Err(OpenError::Refused(format!(
            "it is {} bytes; such a file is at most {max}",
            meta.len()
        )));
    }
    Ok(Some(f.take(max)))
}

/// Reads the state file; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<StateFile>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = match open_own(path, MAX_FILE) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(OpenError::Refused(why)) => return Err(refused(path, why)),
        Err(OpenError::Read(e)) => return Err(read_err(e)),
    };
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(read_err)?;
    parse(&text)
        .map(Some)
        .map_err(|reason| refused(path, reason))
}

/// Parses state-file text (what [`load`] read): the file, or why it is refused.
pub fn parse(text: &str) -> Result<StateFile, String> {
    let file: StateFile = serde_json::from_str(text).map_err(|e| format!("it is corrupt: {e}"))?;
    if file.version != FORMAT {
        return Err(format!(
            "its format version is {}; this mcpflip reads version {FORMAT}",
            file.version
        ));
    }
    Ok(file)
}

/// The step of a save that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Create,
    Write,
    SyncFile,
    Rename,
    SyncDir,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Create => "creating the temporary file",
            Stage::Write => "writing",
            Stage::SyncFile => "fsync of the file",
            Stage::Rename => "renaming it into place",
            Stage::SyncDir => "fsync of the directory",
        })
    }
}

/// A save that failed: the state file, the step, and the OS error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error} ({stage})")]
pub struct SaveError {
    pub path: PathBuf,
    pub stage: Stage,
    pub kind: std::io::ErrorKind,
    /// The OS error as the OS says it.
    pub error: String,
}

impl SaveError {
    fn new(path: &Path, stage: Stage, e: &std::io::Error) -> Self {
        SaveError {
            path: path.to_path_buf(),
            stage,
            kind: e.kind(),
            error: e.to_string(),
        }
    }

    /// Whether the new state may have replaced the file before the failure.
    pub fn after_rename(&self) -> bool {
        self.stage == Stage::SyncDir
    }
}

/// Temporary names: `.state.json.<pid>.<n>.<random>.tmp`.
fn temp_name(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state.json".into());
    paths::parent_of(path).join(format!(
        ".{name}.{}.{}.{:016x}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u64(..)
    ))
}

/// Writes `bytes` as the file at `path`, durably: a fresh temporary file
/// (never an existing file or link), fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SaveError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] of what `fill` writes, through a buffer (a large file
/// is never whole in memory).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), SaveError> {
    let mut tries = 0;
    let (tmp, mut f) = loop {
        let tmp = temp_name(path);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            // A name taken (by chance or by someone): another name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(SaveError::new(path, Stage::Create, &e)),
        }
    };
    let result = (|| {
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, &mut f);
        fill(&mut w)
            .and_then(|()| w.flush())
            .map_err(|e| SaveError::new(path, Stage::Write, &e))?;
        drop(w);
        f.sync_all()
            .map_err(|e| SaveError::new(path, Stage::SyncFile, &e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| SaveError::new(path, Stage::Rename, &e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    let dir = std::fs::File::open(paths::parent_of(path))
        .map_err(|e| SaveError::new(path, Stage::SyncDir, &e))?;
    dir.sync_all()
        .map_err(|e| SaveError::new(path, Stage::SyncDir, &e))
}

/// Removes temporary files a killed proxy left in the state directory.
pub fn remove_stale_temps(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(paths::parent_of(path)) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let plain = e.file_type().is_ok_and(|t| t.is_file());
        if plain && n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

struct Job {
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), SaveError>>,
}

/// The handle of the one task that writes the state file. The task ends when
/// the handle is dropped.
#[derive(Debug)]
pub struct Persister {
    path: PathBuf,
    jobs: mpsc::UnboundedSender<Job>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Persister {
    /// Starts the writer of `path` (its directory checked by the caller).
    pub fn spawn(path: PathBuf) -> Persister {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let target = path.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                // The latest state includes every change before it.
                let bytes = batch.last().map(|j| j.bytes.clone()).unwrap_or_default();
                let path = target.clone();
                let result = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
                    .await
                    .unwrap_or_else(|e| {
                        Err(SaveError {
                            path: target.clone(),
                            stage: Stage::Write,
                            kind: std::io::ErrorKind::Other,
                            error: format!("the writer failed: {e}"),
                        })
                    });
                for job in batch {
                    let _ = job.done.send(result.clone());
                }
            }
        });
        Persister { path, jobs }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `state` now (so saves keep the order of the calls); the future
    /// resolves once it is durable, or with why it is not.
    pub fn save(
        &self,
        state: &State,
    ) -> impl std::future::Future<Output = Result<(), SaveError>> + Send + 'static {
        let path = self.path.clone();
        let gone = move |path: PathBuf| SaveError {
            path,
            stage: Stage::Write,
            kind: std::io::ErrorKind::BrokenPipe,
            error: "the state writer has stopped".into(),
        };
        let queued = serde_json::to_vec_pretty(&StateFile::of(state))
            .map_err(|e| SaveError {
                path: path.clone(),
                stage: Stage::Write,
                kind: std::io::ErrorKind::InvalidData,
                error: e.to_string(),
            })
            .and_then(|bytes| {
                let (done, rx) = oneshot::channel();
                self.jobs
                    .send(Job { bytes, done })
                    .map(|()| rx)
                    .map_err(|_| gone(path.clone()))
            });
        async move {
            match queued {
                Ok(rx) => rx.await.map_err(|_| gone(path))?,
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(blue: u32) -> State {
        let mut s = State::from_config([("blue", blue), ("green", 0)]);
        s.revision = u64::from(blue);
        s
    }

    #[test]
    fn written_state_reads_back_and_old_files_still_load() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("state.json");
        assert_eq!(load(&p).expect("no file yet"), None);
        let s = state(7);
        write_atomic(&p, &serde_json::to_vec(&StateFile::of(&s)).expect("json")).expect("saved");
        let back = load(&p).expect("loads").expect("a file");
        assert_eq!(back, StateFile::of(&s));
        // The first release's format: no revision.
        std::fs::write(
            &p,
            r#"{"version":1,"slots":{"blue":{"weight":100,"state":"serving","generation":2}},"previous_active":null}"#,
        )
        .expect("write");
        let old = load(&p).expect("loads").expect("a file");
        assert_eq!((old.revision, old.slots["blue"].generation), (0, 2));
        let leftovers: Vec<_> = std::fs::read_dir(t.path())
            .expect("dir")
            .flatten()
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn files_the_proxy_did_not_write_are_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("state.json");
        for (text, needle) in [
            ("", "corrupt"),
            ("{not json", "corrupt"),
            (r#"{"version":999,"slots":{}}"#, "999"),
        ] {
            std::fs::write(&p, text).expect("write");
            let e = load(&p).expect_err(text).to_string();
            assert!(e.contains(needle) && e.contains("--ignore-state"), "{e}");
        }
        std::fs::write(&p, vec![b' '; MAX_FILE as usize + 1]).expect("write");
        assert!(load(&p).expect_err("huge").to_string().contains("at most"));
        std::fs::remove_file(&p).expect("rm");
        std::os::unix::fs::symlink(t.path().join("elsewhere"), &p).expect("symlink");
        assert!(load(&p)
            .expect_err("a link")
            .to_string()
            .contains("symlink"));
        std::fs::remove_file(&p).expect("rm");
        crate::files::make_fifo(&p);
        assert!(load(&p)
            .expect_err("a FIFO, refused without blocking")
            .to_string()
            .contains("not a plain file"),);
    }

    #[test]
    fn a_planted_temporary_name_or_link_is_never_written_through() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("state.json");
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        // The first release's fixed temporary name, as a link.
        std::os::unix::fs::symlink(&victim, t.path().join(".state.json.tmp")).expect("link");
        write_atomic(&p, b"{}").expect("saved");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert!(std::fs::symlink_metadata(&p)
            .expect("state")
            .file_type()
            .is_file());
        // A stale temporary file of a killed proxy is cleaned up; the link is not ours.
        std::fs::write(t.path().join(".state.json.1.2.3.tmp"), b"half").expect("stale");
        remove_stale_temps(&p);
        assert!(!t.path().join(".state.json.1.2.3.tmp").exists());
        assert!(std::fs::symlink_metadata(t.path().join(".state.json.tmp")).is_ok());
    }

    #[tokio::test]
    async fn saves_are_durable_in_order_and_failures_name_path_and_error() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("state.json");
        let persister = Persister::spawn(p.clone());
        // Many saves queued at once: each answered, the file holds the last.
        let saves: Vec<_> = (1..=20).map(|i| persister.save(&state(i))).collect();
        for save in saves {
            save.await.expect("saved");
        }
        assert_eq!(load(&p).expect("loads").expect("file").revision, 20);
        // The directory is gone: the error names the file and the OS error.
        let gone = t.path().join("gone/state.json");
        let e = Persister::spawn(gone.clone())
            .save(&state(1))
            .await
            .expect_err("no directory");
        assert_eq!((e.path.clone(), e.stage), (gone, Stage::Create));
        assert!(e.error.contains("No such file"), "{e}");
    }
}
