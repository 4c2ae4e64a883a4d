//! A log file that rotates by size, only between lines: `path` -> `path.1` -> ... -> `path.N`.
//!
//! Writes go straight to the file (opened `O_APPEND`, no user-space buffer), so nothing waits in memory and
//! there is nothing to flush. A run of lines that fits under the limit is written with one `write(2)`.
//!
//! Errors never panic and never stop the caller. A failed write is retried once; if the retry fails too, the
//! rest of that chunk is dropped and counted (a full disk must not block the services writing into our pipes,
//! and a pipe that is not drained blocks them). Failures and recoveries are queued as [`FileEvent`]s for the
//! owner to report, because this type also sits under stackinit's own tracing writer and must not log itself.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::files;
use super::lines::{memchr_newline, memrchr_newline};

/// Something worth telling the operator about a log file.
#[derive(Debug)]
pub enum FileEvent {
    /// Writing started failing; data is being dropped (after one retry).
    WriteFailed {
        path: PathBuf,
        error: io::Error,
    },
    /// Writing works again.
    WriteRecovered {
        path: PathBuf,
        dropped_bytes: u64,
        failed_writes: u64,
    },
    /// Rotation failed; the current file keeps growing past the limit until a rotation succeeds.
    RotateFailed {
        path: PathBuf,
        error: io::Error,
    },
    RotateRecovered {
        path: PathBuf,
    },
    /// `reopen()` could not open the file; writes retry the open.
    ReopenFailed {
        path: PathBuf,
        error: io::Error,
    },
}

impl std::fmt::Display for FileEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileEvent::WriteFailed { path, error } => {
                write!(f, "log {}: write failed ({error}); dropping output until it works again", path.display())
            }
            FileEvent::WriteRecovered { path, dropped_bytes, failed_writes } => write!(
                f,
                "log {}: writing works again; dropped {dropped_bytes} bytes in {failed_writes} failed writes",
                path.display()
            ),
            FileEvent::RotateFailed { path, error } => {
                write!(f, "log {}: rotation failed ({error}); the file grows past its limit", path.display())
            }
            FileEvent::RotateRecovered { path } => write!(f, "log {}: rotation works again", path.display()),
            FileEvent::ReopenFailed { path, error } => write!(f, "log {}: reopen failed ({error})", path.display()),
        }
    }
}

/// Totals since the file was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    pub bytes_written: u64,
    pub rotations: u64,
    pub failed_writes: u64,
    pub dropped_bytes: u64,
}

#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    /// `None` after a failed (re)open; the next write tries again.
    file: Option<File>,
    /// Bytes in the current file, as far as we know (others appending are not seen until `reopen`).
    size: u64,
    /// 0 means no limit (as in supervisord).
    max_bytes: u64,
    backups: u32,
    stats: FileStats,
    write_failing: bool,
    failed_writes_since_ok: u64,
    dropped_since_ok: u64,
    rotate_failing: bool,
    events: Vec<FileEvent>,
    /// Closed for good (shutdown): writes are dropped, nothing reopens the file.
    closed: bool,
}

/// `path.N`.
pub fn backup_path(path: &Path, n: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Opens `path` for appending, never through a symlink (see `files`), creating its directories first.
fn open_append(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    files::open_append(path)
}

impl RotatingFile {
    /// Opens (creating it and its parent directories if needed) `path` for appending.
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            max_bytes,
            backups,
            stats: FileStats::default(),
            write_failing: false,
            failed_writes_since_ok: 0,
            dropped_since_ok: 0,
            rotate_failing: false,
            events: Vec::new(),
            closed: false,
        })
    }

    /// Close the file for good; later writes are dropped. For the last steps of a shutdown, which must
    /// leave no file open for writing.
    pub fn close(&mut self) {
        self.closed = true;
        self.file = None;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn stats(&self) -> FileStats {
        self.stats
    }

    /// New limits, used from the next line on.
    pub fn set_limits(&mut self, max_bytes: u64, backups: u32) {
        self.max_bytes = max_bytes;
        self.backups = backups;
    }

    /// Reopens `path` (after an external `mv`, or on SIGUSR1). On failure the old file is closed anyway, an
    /// event is queued, and the next write retries the open.
    pub fn reopen(&mut self) {
        if self.closed {
            return;
        }
        self.file = None;
        if let Err(error) = self.ensure_open() {
            self.events.push(FileEvent::ReopenFailed {
                path: self.path.clone(),
                error,
            });
        }
    }

    /// Events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<FileEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Writes a run of complete lines (a final line without `'\n'` is treated as a line too), rotating
    /// between lines whenever the next line would push a non-empty file past `max_bytes`. A line longer than
    /// `max_bytes` gets a file of its own. As few `write(2)` calls as possible: one per rotation segment.
    pub fn write_lines(&mut self, mut run: &[u8]) {
        if self.closed {
            return;
        }
        while !run.is_empty() {
            let take = match self.room() {
                Some(room) if (run.len() as u64) <= room => run.len(),
                None => run.len(),
                // Lines that fit: up to and including the last '\n' inside the room.
                Some(room) => match memrchr_newline(&run[..room as usize]) {
                    Some(last) => last + 1,
                    None if self.size > 0 => {
                        if self.rotate() {
                            continue;
                        }
                        // Could not rotate: keep everything rather than lose it; retry on the next run.
                        run.len()
                    }
                    // An empty file and a line longer than the limit: it goes in whole.
                    None => memchr_newline(run).map_or(run.len(), |i| i + 1),
                },
            };
            self.write_chunk(&run[..take]);
            run = &run[take..];
        }
    }

    /// Bytes left before the limit; `None` without a limit.
    fn room(&self) -> Option<u64> {
        if self.max_bytes == 0 {
            return None;
        }
        // Clamp so slicing by it cannot overflow a usize on 32-bit targets.
        Some(
            self.max_bytes
                .saturating_sub(self.size)
                .min(usize::MAX as u64),
        )
    }

    fn ensure_open(&mut self) -> io::Result<&mut File> {
        if self.closed {
            return Err(io::Error::other("log file closed"));
        }
        if self.file.is_none() {
            let file = open_append(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        match self.file.as_mut() {
            Some(file) => Ok(file),
            None => Err(io::Error::other("log file not open")),
        }
    }

    /// One chunk of whole lines; retried once on error, then dropped and counted.
    fn write_chunk(&mut self, chunk: &[u8]) {
        let mut done = 0;
        let mut retried = false;
        while done < chunk.len() {
            let result = self
                .ensure_open()
                .and_then(|file| file.write(&chunk[done..]));
            match result {
                Ok(0) => {
                    if self.retry_or_drop(
                        &mut retried,
                        io::ErrorKind::WriteZero.into(),
                        chunk.len() - done,
                    ) {
                        break;
                    }
                }
                Ok(n) => {
                    done += n;
                    self.size += n as u64;
                    self.stats.bytes_written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if self.retry_or_drop(&mut retried, e, chunk.len() - done) {
                        break;
                    }
                }
            }
        }
        if done == chunk.len() && self.write_failing {
            self.write_failing = false;
            self.events.push(FileEvent::WriteRecovered {
                path: self.path.clone(),
                dropped_bytes: self.dropped_since_ok,
                failed_writes: self.failed_writes_since_ok,
            });
            self.failed_writes_since_ok = 0;
            self.dropped_since_ok = 0;
        }
    }

    /// Returns true when the rest of the chunk was dropped.
    fn retry_or_drop(&mut self, retried: &mut bool, error: io::Error, remaining: usize) -> bool {
        if !*retried {
            *retried = true;
            return false;
        }
        self.stats.failed_writes += 1;
        self.stats.dropped_bytes += remaining as u64;
        self.failed_writes_since_ok += 1;
        self.dropped_since_ok += remaining as u64;
        if !self.write_failing {
            self.write_failing = true;
            self.events.push(FileEvent::WriteFailed {
                path: self.path.clone(),
                error,
            });
        }
        true
    }

    /// `path.(N-1)` -> `path.N`, ..., `path` -> `path.1`, then a fresh `path`. With no backups, truncate.
    /// Returns false (and keeps the current file) when that fails.
    fn rotate(&mut self) -> bool {
        let result = self.try_rotate();
        match result {
            Ok(()) => {
                self.stats.rotations += 1;
                if self.rotate_failing {
                    self.rotate_failing = false;
                    self.events.push(FileEvent::RotateRecovered {
                        path: self.path.clone(),
                    });
                }
                true
            }
            Err(error) => {
                if !self.rotate_failing {
                    self.rotate_failing = true;
                    self.events.push(FileEvent::RotateFailed {
                        path: self.path.clone(),
                        error,
                    });
                }
                false
            }
        }
    }

    fn try_rotate(&mut self) -> io::Result<()> {
        if self.backups == 0 {
            // O_APPEND writes land at the new end, 0.
            self.ensure_open()?.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.backups).rev() {
            match files::rename(&backup_path(&self.path, n), &backup_path(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        files::rename(&self.path, &backup_path(&self.path, 1))?;
        // From here the old file is path.1; whatever happens, new lines must not go there.
        self.file = None;
        self.size = 0;
        self.ensure_open()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn a_closed_file_is_not_held_or_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("own.log");
        let mut f = RotatingFile::open(&path, 0, 1).unwrap();
        f.write_lines(b"before\n");
        f.close();
        let fd_open = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .any(|e| std::fs::read_link(e.unwrap().path()).is_ok_and(|target| target == path));
        assert!(!fd_open, "closed, the file must not stay open for writing");
        f.write_lines(b"after\n");
        f.reopen();
        f.write_lines(b"after reopen\n");
        assert_eq!(read(&path), "before\n");
        assert!(!f.has_events(), "writes after close are dropped quietly");
    }

    #[test]
    fn fits_exactly_then_rotates_before_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(&path, 8, 3).unwrap();
        f.write_lines(b"abc\ndef\n"); // exactly 8: no rotation
        assert_eq!(read(&path), "abc\ndef\n");
        f.write_lines(b"g\n"); // 10 > 8: rotate first
        assert_eq!(read(&backup_path(&path, 1)), "abc\ndef\n");
        assert_eq!(read(&path), "g\n");
        assert_eq!(f.stats().rotations, 1);
    }

    #[test]
    fn one_run_splits_at_line_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(&path, 10, 5).unwrap();
        f.write_lines(b"1234\n5678\nabcd\nefgh\nij\n");
        assert_eq!(read(&backup_path(&path, 2)), "1234\n5678\n");
        assert_eq!(read(&backup_path(&path, 1)), "abcd\nefgh\n");
        assert_eq!(read(&path), "ij\n");
    }

    #[test]
    fn a_line_longer_than_the_limit_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(&path, 4, 5).unwrap();
        f.write_lines(b"a\nlonglongline\nb\n");
        assert_eq!(read(&backup_path(&path, 2)), "a\n");
        assert_eq!(read(&backup_path(&path, 1)), "longlongline\n");
        assert_eq!(read(&path), "b\n");
    }

    #[test]
    fn oldest_backup_falls_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(&path, 2, 2).unwrap();
        for line in ["1\n", "2\n", "3\n", "4\n"] {
            f.write_lines(line.as_bytes());
        }
        assert_eq!(read(&path), "4\n");
        assert_eq!(read(&backup_path(&path, 1)), "3\n");
        assert_eq!(read(&backup_path(&path, 2)), "2\n");
        assert!(!backup_path(&path, 3).exists());
    }

    #[test]
    fn no_backups_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(&path, 4, 0).unwrap();
        f.write_lines(b"ab\ncd\n");
        assert_eq!(read(&path), "cd\n");
        assert!(!backup_path(&path, 1).exists());
    }

    #[test]
    fn zero_limit_means_unlimited_and_limits_change_from_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(&path, 0, 3).unwrap();
        f.write_lines(&b"x\n".repeat(1000));
        assert_eq!(f.size(), 2000);
        f.set_limits(2100, 3);
        f.write_lines(&b"y\n".repeat(50));
        assert_eq!(f.size(), 2100);
        f.write_lines(b"z\n");
        assert_eq!(read(&path), "z\n");
    }

    #[test]
    fn existing_content_counts_toward_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut f = RotatingFile::open(&path, 6, 1).unwrap();
        f.write_lines(b"new\n");
        assert_eq!(read(&backup_path(&path, 1)), "old\n");
        assert_eq!(read(&path), "new\n");
    }

    #[test]
    fn reopen_after_move_starts_a_fresh_file_and_creates_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/a.log");
        let mut f = RotatingFile::open(&path, 100, 1).unwrap();
        f.write_lines(b"before\n");
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        f.reopen();
        f.write_lines(b"after\n");
        assert_eq!(read(&path), "after\n");
        assert_eq!(read(&dir.path().join("moved")), "before\n");
        assert!(!f.has_events());
    }

    #[test]
    fn write_errors_are_counted_not_fatal() {
        // /dev/full fails every write with ENOSPC.
        let mut f = RotatingFile::open(Path::new("/dev/full"), 0, 0).unwrap();
        f.write_lines(b"lost\n");
        f.write_lines(b"lost too\n");
        let stats = f.stats();
        assert_eq!(stats.failed_writes, 2);
        assert_eq!(stats.dropped_bytes, 14);
        let events = f.take_events();
        assert_eq!(
            events.len(),
            1,
            "one report per failure episode: {events:?}"
        );
        assert!(matches!(events[0], FileEvent::WriteFailed { .. }));
    }

    #[test]
    fn rotation_failure_keeps_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(&path, 4, 1).unwrap();
        // A directory where path.1 should go makes the rename fail.
        std::fs::create_dir(backup_path(&path, 1)).unwrap();
        std::fs::write(backup_path(&path, 1).join("x"), "x").unwrap();
        f.write_lines(b"ab\ncd\nef\n");
        assert_eq!(read(&path), "ab\ncd\nef\n");
        assert!(matches!(
            f.take_events().as_slice(),
            [FileEvent::RotateFailed { .. }]
        ));
    }
}
