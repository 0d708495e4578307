//! Files that hold secrets (keys, tokens, configs with keys in them).
//!
//! Every secret file is created with mode 0600 and every directory that holds one with 0700,
//! in the same system call that creates it: a file is never visible to others, even between
//! its creation and a later `chmod`. Writes go to a fresh temporary file in the same directory
//! and are renamed over the target, so a reader sees the old contents or the new, never half.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

/// Mode of a secret file: read and write for its owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of a directory that holds secrets: its owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Create `dir` and any missing parents with mode 0700. Directories that already exist are
/// left as they are (an operator may have chosen their mode).
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(PRIVATE_DIR_MODE);
    builder.create(dir)
}

/// Create an empty 0600 file at `path` (its parent must exist); fails with
/// [`io::ErrorKind::AlreadyExists`] when there is one, which is left as it is.
pub fn create_private_file(path: &Path) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(PRIVATE_FILE_MODE);
    options.open(path).map(drop)
}

/// Write `contents` to `path` as a 0600 file, atomically: a temporary file created 0600 next to
/// it, synced, then renamed over `path`. The parent directory is created 0700 if missing.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    create_private_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(io::Error::other)?;
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        u64::from_le_bytes(suffix)
    ));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(PRIVATE_FILE_MODE);
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn secret_files_and_their_directories_are_private_from_the_start() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("a/b/secret.key");
        write_private(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&root.path().join("a/b")), 0o700);
    }

    #[test]
    fn rewriting_replaces_a_wider_file_with_a_private_one() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("token");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        let left: Vec<_> = fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }
}
