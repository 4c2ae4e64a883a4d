//! Opening and renaming log files as PID 1 without being pointed elsewhere.
//!
//! A service whose user may write in `logs_dir` can replace its own log with a symlink (or a hard link)
//! to a root-only path; root following it would create and fill that path with the service's output
//! (`/etc/cron.d/x`: root code execution). So every open and rename here works on a handle of the
//! log's directory, never follows a symlink in the file's own name (`O_NOFOLLOW`), and accepts only a
//! regular file with a single link, or a character device (`stdout = "/dev/null"`). Anything else is
//! refused with an error that says what was found. The directory path itself is the admin's and is
//! followed as written.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, openat, renameat, FcntlArg, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

/// `path` opened for appending, created (mode 0666 less the umask) if missing.
pub fn open_append(path: &Path) -> io::Result<File> {
    open_in_dir(path, OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT)
}

/// `path` opened for reading.
pub fn open_read(path: &Path) -> io::Result<File> {
    open_in_dir(path, OFlag::O_RDONLY)
}

/// Rename `from` to `to` (in the same directory, as a rotation does) on a handle of that directory;
/// a symlink at either name is renamed or replaced, never followed.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    let (dir_path, from_name) = split(from)?;
    let (_, to_name) = split(to)?;
    let dir = open_dir(dir_path)?;
    renameat(&dir, from_name, &dir, to_name).map_err(io::Error::from)
}

fn open_in_dir(path: &Path, flags: OFlag) -> io::Result<File> {
    let (dir_path, name) = split(path)?;
    let dir = open_dir(dir_path)?;
    // O_NONBLOCK: a FIFO planted at the name must not block PID 1 in open(2); it is refused below.
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = openat(&dir, name, flags, Mode::from_bits_truncate(0o666)).map_err(open_error)?;
    check_kind(&fd)?;
    // Blocking again (writers and readers expect it); F_SETFL sets only the status flags.
    fcntl(&fd, FcntlArg::F_SETFL(flags & OFlag::O_APPEND))?;
    Ok(File::from(fd))
}

/// What a failed open found, for the errors a planted file gives. The caller names the path.
fn open_error(errno: Errno) -> io::Error {
    match errno {
        Errno::ELOOP => refused("a symbolic link (log files are never opened through one)"),
        // O_NONBLOCK write-open of a FIFO (or a socket) with no reader.
        Errno::ENXIO => refused("a FIFO or a socket, not a regular file"),
        Errno::EISDIR => refused("a directory"),
        _ => io::Error::new(io::Error::from(errno).kind(), errno.desc()),
    }
}

/// A regular file with one link, or a character device; what a log may be.
fn check_kind(fd: &OwnedFd) -> io::Result<()> {
    let stat = fstat(fd)?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    match kind {
        SFlag::S_IFREG if stat.st_nlink > 1 => Err(refused(&format!(
            "a file with {} hard links (log files must not be linked elsewhere)",
            stat.st_nlink
        ))),
        SFlag::S_IFREG | SFlag::S_IFCHR => Ok(()),
        SFlag::S_IFIFO => Err(refused("a FIFO, not a regular file")),
        SFlag::S_IFDIR => Err(refused("a directory")),
        _ => Err(refused("something other than a regular file")),
    }
}

/// A handle on `dir`, good for the `*at` calls and nothing else.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(dir, flags, Mode::empty()).map_err(|errno| {
        let kind = io::Error::from(errno).kind();
        io::Error::new(
            kind,
            format!("directory {}: {}", dir.display(), errno.desc()),
        )
    })
}

/// The directory and the file name of `path` (a name, not `..` or `/`).
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| refused("a path that names no file"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// An error that says what was found where a log file belongs.
fn refused(found: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("refusing {found}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn opens_creates_and_appends_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        open_append(&path).unwrap().write_all(b"one\n").unwrap();
        open_append(&path).unwrap().write_all(b"two\n").unwrap();
        let mut text = String::new();
        open_read(&path).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "one\ntwo\n");
        open_append(Path::new("/dev/null")).unwrap();
    }

    #[test]
    fn refuses_symlinks_hard_links_fifos_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("root-only");
        std::fs::write(&target, "secret\n").unwrap();
        let link = dir.path().join("sym.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let hard = dir.path().join("hard.log");
        std::fs::hard_link(&target, &hard).unwrap();
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        for (path, says) in [
            (&link, "refusing a symbolic link"),
            (&hard, "refusing a file with 2 hard links"),
            (&fifo, "FIFO"),
            (&dir.path().to_path_buf(), "refusing a directory"),
        ] {
            for result in [open_append(path), open_read(path)] {
                let err = result.unwrap_err();
                assert!(err.to_string().contains(says), "{}: {err}", path.display());
            }
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n");
    }

    #[test]
    fn rename_moves_a_symlink_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "kept\n").unwrap();
        let link = dir.path().join("a.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        rename(&link, &dir.path().join("a.log.1")).unwrap();
        assert!(std::fs::symlink_metadata(dir.path().join("a.log.1"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept\n");
    }
}
