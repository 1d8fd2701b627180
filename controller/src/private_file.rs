//! Files only root may read or change: the takeover's record (which `restore` acts on as
//! root), the user's rules (which `run` reads back), imported rules. Written atomically
//! whatever the umask: a missing directory is made mode 0700, the file mode 0600, and the
//! temporary file beside it is made afresh (`O_EXCL`: a leftover or a planted symlink is
//! removed, never written through), flushed, then renamed over the file.
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// Where writing a private file failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PrivateWriteError {
    /// The file or directory the failing step touched.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

/// Writes `bytes` to `path` as described in the module doc.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), PrivateWriteError> {
    let fail = |p: &Path| {
        let path = p.to_path_buf();
        move |source| PrivateWriteError { path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail(dir))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(&tmp)(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail(&tmp))?;
    f.write_all(bytes).map_err(fail(&tmp))?;
    f.sync_all().map_err(fail(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn private_whatever_the_leftovers() {
        let dir = std::env::temp_dir().join(format!("bw-private-{}", std::process::id()));
        let path = dir.join("sub").join("rules");
        write(&path, b"one\n").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
        // A leftover temporary file (or a symlink planted there) is replaced, not followed.
        let tmp = path.with_file_name("rules.tmp");
        std::os::unix::fs::symlink("/etc/passwd-never", &tmp).unwrap();
        write(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert!(!tmp.exists() && std::fs::symlink_metadata(&tmp).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
