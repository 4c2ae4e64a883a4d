//! Creates the logs directory with the configured owner and mode.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::unistd::{Gid, Uid};

/// Creates `dir` (and its parents) if missing, then sets its owner/group (when given) and its mode.
/// An existing non-directory at `dir` is an error. Owner first: chown can clear set-id mode bits.
pub fn prepare_logs_dir(
    dir: &Path,
    owner: Option<Uid>,
    group: Option<Gid>,
    mode: u32,
) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(metadata) if !metadata.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("logs dir {}: exists and is not a directory", dir.display()),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| with_path(e, "create", dir))?
        }
        Err(e) => return Err(with_path(e, "stat", dir)),
    }
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::chown(dir, owner.map(Uid::as_raw), group.map(Gid::as_raw))
            .map_err(|e| with_path(e, "chown", dir))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| with_path(e, "chmod", dir))?;
    Ok(())
}

fn with_path(error: io::Error, what: &str, dir: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("logs dir {}: {what}: {error}", dir.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn creates_parents_and_sets_mode_and_owner() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/logs");
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        prepare_logs_dir(&dir, Some(uid), Some(gid), 0o750).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o750);
        assert_eq!(meta.uid(), uid.as_raw());
        // Existing dir: mode is fixed up.
        prepare_logs_dir(&dir, None, None, 0o700).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("logs");
        std::fs::write(&path, "x").unwrap();
        let err = prepare_logs_dir(&path, None, None, 0o755).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
