//! The last lines of a log, reaching back into the first backup (`path.1`) when the current file is short.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::rotating::backup_path;

const BLOCK: u64 = 64 * 1024;

/// The last `lines` lines of the log at `path` (fewer if the log is shorter). When the current file holds
/// fewer lines, the rest come from the end of `path.1`. A missing current file counts as empty if `path.1`
/// exists (just after a rotation); if neither exists, the error is NotFound.
pub fn tail(path: &Path, lines: usize) -> io::Result<Vec<u8>> {
    let current = match File::open(path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let current_missing = current.is_none();
    let (mut out, found) = match current {
        Some(file) => last_lines(file, lines)?,
        None => (Vec::new(), 0),
    };
    if found < lines || current_missing {
        match File::open(backup_path(path, 1)) {
            Ok(file) => {
                let (mut older, _) = last_lines(file, lines - found)?;
                if !older.is_empty() && !older.ends_with(b"\n") {
                    older.push(b'\n');
                }
                older.extend_from_slice(&out);
                out = older;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !current_missing => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: no such log", path.display()),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The last `n` lines of `input` and how many lines that is. A final line without `'\n'` counts.
/// Reads backwards in blocks, so only the tail is read.
pub fn last_lines<R: Read + Seek>(mut input: R, n: usize) -> io::Result<(Vec<u8>, usize)> {
    let len = input.seek(SeekFrom::End(0))?;
    if len == 0 || n == 0 {
        return Ok((Vec::new(), 0));
    }
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut pos = len;
    let mut newlines = 0;
    let mut start = None;
    let mut at_last_byte = true;
    while pos > 0 && start.is_none() {
        let block_start = pos.saturating_sub(BLOCK);
        let mut block = vec![0; (pos - block_start) as usize];
        input.seek(SeekFrom::Start(block_start))?;
        input.read_exact(&mut block)?;
        for i in (0..block.len()).rev() {
            // The file's final '\n' ends the last line; it does not separate two lines.
            if std::mem::take(&mut at_last_byte) {
                continue;
            }
            if block[i] == b'\n' {
                newlines += 1;
                if newlines == n {
                    start = Some(block_start + i as u64 + 1);
                    break;
                }
            }
        }
        blocks.push(block);
        pos = block_start;
    }
    let (start, found) = match start {
        Some(start) => (start, n),
        None => (0, newlines + 1),
    };
    let mut out = Vec::with_capacity((len - start) as usize);
    for block in blocks.iter().rev() {
        out.extend_from_slice(block);
    }
    out.drain(..(start - pos) as usize);
    Ok((out, found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn last(text: &str, n: usize) -> (String, usize) {
        let (bytes, found) = last_lines(Cursor::new(text.as_bytes().to_vec()), n).unwrap();
        (String::from_utf8(bytes).unwrap(), found)
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
        assert_eq!(tail(&path, 1).unwrap(), b"5\n");
        assert_eq!(tail(&path, 2).unwrap(), b"4\n5\n");
        assert_eq!(tail(&path, 4).unwrap(), b"2\n3\n4\n5\n");
        assert_eq!(tail(&path, 100).unwrap(), b"1\n2\n3\n4\n5\n");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(tail(&path, 2).unwrap(), b"2\n3\n");
        std::fs::remove_file(backup_path(&path, 1)).unwrap();
        assert_eq!(tail(&path, 2).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::write(&path, "only\n").unwrap();
        assert_eq!(tail(&path, 2).unwrap(), b"only\n");
    }
}
