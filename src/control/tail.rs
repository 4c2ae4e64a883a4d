//! The last lines of a log file, read from its end (fallback until `crate::logs::tail` exists).
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

const CHUNK: u64 = 64 * 1024;

/// The last `lines` lines of the file, like `tail -n`: an unterminated last line counts as a line.
/// Reads backwards in chunks, so the cost follows the size of the answer, not of the file.
pub fn tail(path: &Path, lines: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let end = file.metadata()?.len();
    if lines == 0 || end == 0 {
        return Ok(Vec::new());
    }
    let mut chunks: Vec<Vec<u8>> = Vec::new(); // from the end backwards
    let mut start_in_first = 0;
    let mut newlines = 0;
    let mut pos = end;
    'read: while pos > 0 {
        let size = CHUNK.min(pos);
        pos -= size;
        let mut chunk = vec![0; size as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk)?;
        for i in (0..chunk.len()).rev() {
            // The newline that ends the file ends the last line; it doesn't start one.
            if chunk[i] != b'\n' || pos + i as u64 == end - 1 {
                continue;
            }
            newlines += 1;
            if newlines == lines {
                start_in_first = i + 1;
                chunks.push(chunk);
                break 'read;
            }
        }
        chunks.push(chunk);
    }
    let mut out = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for (index, chunk) in chunks.iter().rev().enumerate() {
        let from = if index == 0 { start_in_first } else { 0 };
        out.extend_from_slice(&chunk[from..]);
    }
    Ok(out)
}

/// Drop an unterminated last line: in follow mode it arrives whole on the live feed once finished.
pub fn complete_lines(mut text: Vec<u8>) -> Vec<u8> {
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    text.truncate(keep);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(content: &[u8], lines: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, content).unwrap();
        tail(&path, lines).unwrap()
    }

    #[test]
    fn last_lines_of_a_small_file() {
        assert_eq!(tail_of(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_of(b"a\nb\nc\n", 3), b"a\nb\nc\n");
        assert_eq!(tail_of(b"a\nb\nc\n", 10), b"a\nb\nc\n");
        assert_eq!(tail_of(b"a\nb\nc\n", 0), b"");
        assert_eq!(tail_of(b"", 5), b"");
    }

    #[test]
    fn unterminated_last_line_counts() {
        assert_eq!(tail_of(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_of(b"a\nb\nc", 1), b"c");
        assert_eq!(complete_lines(b"a\nb\nc".to_vec()), b"a\nb\n");
        assert_eq!(complete_lines(b"c".to_vec()), b"");
    }

    #[test]
    fn empty_lines_are_lines() {
        assert_eq!(tail_of(b"a\n\n\n", 2), b"\n\n");
    }

    #[test]
    fn lines_spanning_chunks() {
        let mut content = Vec::new();
        for n in 0..50_000 {
            content.extend_from_slice(format!("line {n:06} {}\n", "x".repeat(n % 17)).as_bytes());
        }
        let got = tail_of(&content, 30_000);
        let text = String::from_utf8(got).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 30_000);
        assert!(lines[0].starts_with("line 020000 "));
        assert!(lines[29_999].starts_with("line 049999 "));
        // A line longer than a chunk.
        let long = format!("first\n{}\nlast\n", "y".repeat(200_000));
        assert_eq!(tail_of(long.as_bytes(), 2).len(), 200_000 + 1 + 5);
    }

    #[test]
    fn missing_file_is_an_error() {
        assert_eq!(
            tail(Path::new("/nonexistent/log"), 3).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
