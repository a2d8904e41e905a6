//! Reading the files an operator names (the config, certificates, keys, CA
//! bundles, the etcd password file) with a size bound: a path that points at
//! `/dev/zero`, a log or a disk image gets a clear error instead of a hang
//! and the memory of the whole file.

use std::io::Read;
use std::path::Path;

/// The most a config file may hold.
pub const MAX_CONFIG: u64 = 1024 * 1024;
/// The most a PEM file (certificates, a key, a CA bundle) may hold.
pub const MAX_PEM: u64 = 1024 * 1024;
/// The most a password file may hold.
pub const MAX_SECRET: u64 = 4096;

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is larger than {max} bytes, the most such a file may hold")]
    TooLarge { max: u64 },
}

/// The bytes of `path`, at most `max` of them.
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    Ok(out)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, max: u64) -> Result<String, ReadError> {
    let bytes = read(path, max)?;
    String::from_utf8(bytes).map_err(|_| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not UTF-8 text",
        ))
    })
}

/// A FIFO at `path`, for the tests that plant one where the proxy opens a file.
#[cfg(test)]
pub fn make_fifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo(3) on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_bound_is_refused_and_dev_zero_does_not_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![b'x'; 11]).expect("write");
        assert_eq!(read(&p, 11).expect("at the bound").len(), 11);
        assert!(matches!(read(&p, 10), Err(ReadError::TooLarge { max: 10 })));
        let zero = read(Path::new("/dev/zero"), MAX_CONFIG);
        assert!(matches!(zero, Err(ReadError::TooLarge { .. })), "{zero:?}");
        assert!(matches!(
            read(&dir.path().join("none"), 10),
            Err(ReadError::Io(_))
        ));
    }
}
