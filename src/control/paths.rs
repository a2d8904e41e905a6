//! Paths another local user could plant: the state directory, the control
//! socket's directory and the socket itself. A directory the proxy writes in
//! (and every directory above it) must be owned by root or by the user the
//! proxy runs as, and must not be writable by group or others unless it has
//! the sticky bit (like `/tmp`); a symlink on the way must be owned by one of
//! them too. Otherwise the user who controls it could point the state file at
//! any file, or put their own listener where `ctl` looks for the proxy.
//!
//! Missing directories are created 0700. Every refusal names the path, its
//! owner and its mode, and says what to do.

use std::fs::Metadata;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// A path the proxy (or `ctl`) will not trust, or cannot look at.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("refusing {}: {why} (owner uid {owner}, mode {mode:04o}); {fix}", .path.display())]
    Untrusted {
        path: PathBuf,
        owner: u32,
        mode: u32,
        why: String,
        fix: &'static str,
    },
    #[error("cannot use {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const FIX_DIR: &str = "use a directory that only root or this user can write (0700 is created when missing), e.g. /run/mcpflip or /var/lib/mcpflip";

/// The user the proxy (or `ctl`) runs as.
pub fn euid() -> u32 {
    // SAFETY-free: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `uid` may own what the proxy trusts: root, or the user it runs as.
pub fn trusted_uid(uid: u32, me: u32) -> bool {
    uid == 0 || uid == me
}

/// The rule for one directory on the way, from its owner and mode: `Err(why)`
/// when another user could replace what is in it.
pub fn judge_dir(owner: u32, mode: u32, me: u32) -> Result<(), String> {
    if !trusted_uid(owner, me) {
        return Err(format!(
            "it is owned by uid {owner}, not by root or uid {me} (the user running mcpflip)"
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(
            "group or others may write in it and it has no sticky bit, so they can replace what is in it"
                .to_owned(),
        );
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PathError + '_ {
    move |source| PathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn untrusted(path: &Path, meta: &Metadata, why: String, fix: &'static str) -> PathError {
    PathError::Untrusted {
        path: path.to_path_buf(),
        owner: meta.uid(),
        mode: meta.mode() & 0o7777,
        why,
        fix,
    }
}

fn absolute(path: &Path) -> Result<PathBuf, PathError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(io(path))?;
    Ok(cwd.join(path))
}

/// Checks `dir` and everything above it: symlinks on the way owned by root or
/// this user, and every real directory (after links are followed) passing
/// [`judge_dir`]. The directory must exist.
pub fn check_dir(dir: &Path) -> Result<(), PathError> {
    let me = euid();
    let dir = absolute(dir)?;
    // The path as written: a link another user made could point anywhere.
    let mut at = PathBuf::new();
    for c in dir.components() {
        at.push(c);
        if matches!(
            c,
            Component::RootDir | Component::CurDir | Component::ParentDir
        ) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&at).map_err(io(&at))?;
        if meta.file_type().is_symlink() && !trusted_uid(meta.uid(), me) {
            return Err(untrusted(
                &at,
                &meta,
                format!("it is a symlink owned by uid {}", meta.uid()),
                FIX_DIR,
            ));
        }
    }
    // The directories it resolves to, from the root down.
    let real = std::fs::canonicalize(&dir).map_err(io(&dir))?;
    for d in real.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let meta = std::fs::metadata(d).map_err(io(d))?;
        if !meta.is_dir() {
            return Err(untrusted(d, &meta, "it is not a directory".into(), FIX_DIR));
        }
        if let Err(why) = judge_dir(meta.uid(), meta.mode(), me) {
            return Err(untrusted(d, &meta, why, FIX_DIR));
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700 when it is missing, then
/// [`check_dir`]s it.
pub fn secure_dir(dir: &Path) -> Result<(), PathError> {
    let dir = absolute(dir)?;
    if std::fs::symlink_metadata(&dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
    }
    check_dir(&dir)
}

/// The directory a file lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// What `ctl` checks before it sends anything: the socket's directory passes
/// [`check_dir`], and the socket is a socket owned by root or this user.
pub fn check_socket(socket: &Path) -> Result<(), PathError> {
    check_dir(parent_of(socket))?;
    let meta = std::fs::symlink_metadata(socket).map_err(io(socket))?;
    if !meta.file_type().is_socket() {
        return Err(untrusted(
            socket,
            &meta,
            "it is not a socket".into(),
            "point --socket (or [control] socket) at the proxy's control socket",
        ));
    }
    if !trusted_uid(meta.uid(), euid()) {
        return Err(untrusted(
            socket,
            &meta,
            format!(
                "the socket is owned by uid {}, not by root or uid {} (you)",
                meta.uid(),
                euid()
            ),
            "another user may have put their own listener there; talk only to a socket that root or you created",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_rule_for_a_directory() {
        let me = 1000;
        assert!(judge_dir(0, 0o40755, me).is_ok(), "root's 0755");
        assert!(judge_dir(me, 0o40700, me).is_ok(), "mine, 0700");
        assert!(
            judge_dir(0, 0o41777, me).is_ok(),
            "/tmp: world-writable with the sticky bit"
        );
        let e = judge_dir(1001, 0o40700, me).expect_err("another user's");
        assert!(e.contains("uid 1001"), "{e}");
        let e = judge_dir(me, 0o40777, me).expect_err("world-writable, no sticky bit");
        assert!(e.contains("sticky"), "{e}");
        assert!(judge_dir(me, 0o40770, me).is_err(), "group-writable");
        assert!(judge_dir(0, 0o40755, 0).is_ok(), "root running as root");
    }

    #[test]
    fn missing_directories_are_made_0700_and_open_ones_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("a/b");
        secure_dir(&d).expect("created");
        for p in [t.path().join("a"), d.clone()] {
            let mode = std::fs::metadata(&p).expect("made").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
        std::fs::set_permissions(t.path().join("a"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let e = secure_dir(&d).expect_err("a world-writable parent");
        let msg = e.to_string();
        assert!(
            msg.contains(&t.path().join("a").display().to_string()) && msg.contains("0777"),
            "{msg}"
        );
    }

    #[test]
    fn a_socket_must_be_a_socket_in_a_trusted_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let sock = t.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        check_socket(&sock).expect("our own socket");
        let file = t.path().join("f");
        std::fs::write(&file, b"").expect("file");
        assert!(check_socket(&file)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
        assert!(matches!(
            check_socket(&t.path().join("none")),
            Err(PathError::Io { .. })
        ));
    }
}
