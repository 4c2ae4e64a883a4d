//! Where the last lines of a log are, reaching back into the first backup (`path.1`) when the current
//! file is short. Only where: the lines themselves are never held. `locate` scans backwards with one
//! block buffer and returns byte ranges of open files, which the caller streams a chunk at a time, so a
//! tail of every line of a big log costs PID 1 a few blocks of memory, not the log's size.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::files;
use super::lines::memrchr_newline;
use super::rotating::backup_path;

const BLOCK: usize = 64 * 1024;

/// Bytes `start..end` of an open log file.
#[derive(Debug)]
pub struct Range {
    pub file: File,
    pub start: u64,
    pub end: u64,
    /// The range ends in the middle of a line (a backup cut short): a `'\n'` goes after it, so the
    /// next range starts on a line of its own.
    pub newline_after: bool,
}

impl Range {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Where the last `lines` lines of the log at `path` are, oldest first: the end of `path.1` when the
/// current file holds fewer lines, then the current file. With `complete`, an unfinished last line is
/// left out (a follower gets it from the live feed once it ends). A missing current file counts as
/// empty if `path.1` exists (just after a rotation); if neither exists, the error is NotFound. Neither
/// file is opened through a symlink.
pub fn locate(path: &Path, lines: usize, complete: bool) -> io::Result<Vec<Range>> {
    let current = open_if_there(path)?;
    let current_missing = current.is_none();
    let mut ranges = Vec::new();
    let mut found = 0;
    if let Some(file) = current {
        let len = file.metadata()?.len();
        let end = if complete {
            end_of_last_line(&file, len)?
        } else {
            len
        };
        let (start, count) = start_of_last_lines(&file, end, lines)?;
        found = count;
        ranges.push(Range {
            file,
            start,
            end,
            newline_after: false,
        });
    }
    if found >= lines && !current_missing {
        return Ok(ranges);
    }
    match open_if_there(&backup_path(path, 1))? {
        Some(file) => {
            let len = file.metadata()?.len();
            let (start, _) = start_of_last_lines(&file, len, lines - found)?;
            let newline_after = start < len && last_byte(&file, len)? != b'\n';
            let older = Range {
                file,
                start,
                end: len,
                newline_after,
            };
            ranges.insert(0, older);
        }
        None if current_missing => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such log", path.display()),
            ))
        }
        None => {}
    }
    Ok(ranges)
}

fn open_if_there(path: &Path) -> io::Result<Option<File>> {
    match files::open_read(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn last_byte(file: &File, len: u64) -> io::Result<u8> {
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, len - 1)?;
    Ok(byte[0])
}

/// Where the last `n` lines of `file[..end]` start, and how many lines that is (a final line without
/// `'\n'` counts). Reads backwards a block at a time into one buffer.
pub fn start_of_last_lines(file: &File, end: u64, n: usize) -> io::Result<(u64, usize)> {
    if end == 0 || n == 0 {
        return Ok((end, 0));
    }
    let mut block = vec![0u8; BLOCK];
    let mut newlines = 0;
    // The final '\n' ends the last line; it does not separate two lines.
    let mut pos = end - 1;
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK as u64);
        let buf = &mut block[..(pos - start) as usize];
        file.read_exact_at(buf, start)?;
        let mut upto = buf.len();
        while let Some(i) = memrchr_newline(&buf[..upto]) {
            newlines += 1;
            if newlines == n {
                return Ok((start + i as u64 + 1, n));
            }
            upto = i;
        }
        pos = start;
    }
    Ok((0, newlines + 1))
}

/// Just past the last `'\n'` of `file[..len]` (0 if there is none): where its complete lines end.
fn end_of_last_line(file: &File, len: u64) -> io::Result<u64> {
    let mut block = vec![0u8; BLOCK];
    let mut pos = len;
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK as u64);
        let buf = &mut block[..(pos - start) as usize];
        file.read_exact_at(buf, start)?;
        if let Some(i) = memrchr_newline(buf) {
            return Ok(start + i as u64 + 1);
        }
        pos = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The located lines, read whole (fine for the small logs of these tests).
    fn tail(path: &Path, lines: usize, complete: bool) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for range in locate(path, lines, complete)? {
            let mut buf = vec![0; range.len() as usize];
            range.file.read_exact_at(&mut buf, range.start)?;
            out.extend_from_slice(&buf);
            if range.newline_after {
                out.push(b'\n');
            }
        }
        Ok(out)
    }

    fn last(text: &str, n: usize) -> (String, usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, text).unwrap();
        let file = File::open(&path).unwrap();
        let (start, found) = start_of_last_lines(&file, text.len() as u64, n).unwrap();
        (text[start as usize..].to_string(), found)
    }

    #[test]
    fn counts_lines_from_the_end() {
        assert_eq!(last("a\nb\nc\n", 2), ("b\nc\n".into(), 2));
        assert_eq!(last("a\nb\nc\n", 3), ("a\nb\nc\n".into(), 3));
        assert_eq!(last("a\nb\nc\n", 9), ("a\nb\nc\n".into(), 3));
        assert_eq!(last("a\nb\nc", 1), ("c".into(), 1));
        assert_eq!(last("a\nb\nc", 2), ("b\nc".into(), 2));
        assert_eq!(last("\n\n", 1), ("\n".into(), 1));
        assert_eq!(last("\n\n", 5), ("\n\n".into(), 2));
        assert_eq!(last("", 5), ("".into(), 0));
        assert_eq!(last("a\n", 0), ("".into(), 0));
        assert_eq!(last("a\n", usize::MAX), ("a\n".into(), 1));
    }

    #[test]
    fn works_across_blocks() {
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        let (out, found) = last(&text, 20_000);
        assert_eq!(found, 20_000);
        let expected: String = (30_000..50_000).map(|i| format!("line {i}\n")).collect();
        assert!(out == expected);
    }

    #[test]
    fn reaches_into_the_first_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(backup_path(&path, 2), "ancient\n").unwrap();
        std::fs::write(backup_path(&path, 1), "1\n2\n3\n").unwrap();
        std::fs::write(&path, "4\n5\n").unwrap();
        assert_eq!(tail(&path, 1, false).unwrap(), b"5\n");
        assert_eq!(tail(&path, 2, false).unwrap(), b"4\n5\n");
        assert_eq!(tail(&path, 4, false).unwrap(), b"2\n3\n4\n5\n");
        assert_eq!(tail(&path, 100, false).unwrap(), b"1\n2\n3\n4\n5\n");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(tail(&path, 2, false).unwrap(), b"2\n3\n");
        std::fs::remove_file(backup_path(&path, 1)).unwrap();
        assert_eq!(
            tail(&path, 2, false).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        std::fs::write(&path, "only\n").unwrap();
        assert_eq!(tail(&path, 2, false).unwrap(), b"only\n");
    }

    #[test]
    fn complete_leaves_out_an_unfinished_line_and_a_short_backup_gets_a_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(backup_path(&path, 1), "1\n2").unwrap();
        std::fs::write(&path, "3\nhalf").unwrap();
        assert_eq!(tail(&path, 2, false).unwrap(), b"3\nhalf");
        assert_eq!(tail(&path, 3, true).unwrap(), b"1\n2\n3\n");
        std::fs::write(&path, "half").unwrap();
        assert_eq!(tail(&path, 1, true).unwrap(), b"2\n");
    }

    #[test]
    fn a_symlinked_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        let path = dir.path().join("x.log");
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let err = tail(&path, 10, false).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}
