//! Turns a byte stream from a pipe into whole lines, buffering the unfinished tail.
//!
//! The pipe outlives the processes writing into it, so an unfinished line stays buffered until its newline
//! arrives, even when that newline comes from the next process after a restart (the two halves then form one
//! line; that is the price of never dropping bytes). To keep memory bounded, an unfinished line that reaches
//! [`MAX_LINE`] bytes is cut there and terminated with a `'\n'` we add; the rest continues as a new line.
#![forbid(unsafe_code)]

use bytes::{BufMut, Bytes, BytesMut};

/// Longest line kept whole; longer unterminated input is cut into lines of this size (plus an added `'\n'`).
pub const MAX_LINE: usize = 64 * 1024;

/// How much free room each read gets; the default pipe holds 64 KiB.
const READ_ROOM: usize = 64 * 1024;

/// Input buffer of one pump. Reads append to it; [`LineBuffer::take_lines`] removes the complete lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: BytesMut,
}

impl LineBuffer {
    pub fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_ROOM * 2),
        }
    }

    /// The buffer to read into, with at least 64 KiB of free room. The space taken by lines handed out
    /// earlier is reused once nobody holds them any more.
    pub fn read_target(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            self.buf.reserve(READ_ROOM);
        }
        &mut self.buf
    }

    /// Bytes buffered, complete lines and the unfinished tail together.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Removes and returns every complete line buffered (each ends with `'\n'`), as one contiguous run.
    /// An unfinished tail of [`MAX_LINE`] bytes or more is cut into terminated lines too.
    /// Returns `None` when there is no complete line yet.
    pub fn take_lines(&mut self) -> Option<Bytes> {
        let complete = match memrchr_newline(&self.buf) {
            Some(last) => self.buf.split_to(last + 1),
            None => BytesMut::new(),
        };
        if self.buf.len() < MAX_LINE {
            return (!complete.is_empty()).then(|| complete.freeze());
        }
        // Rare: a runaway line. Copy so we can add the newlines we owe.
        let mut out =
            BytesMut::with_capacity(complete.len() + self.buf.len() + self.buf.len() / MAX_LINE);
        out.extend_from_slice(&complete);
        while self.buf.len() >= MAX_LINE {
            out.extend_from_slice(&self.buf.split_to(MAX_LINE));
            out.put_u8(b'\n');
        }
        Some(out.freeze())
    }

    /// At the end of the stream: everything left, the unfinished tail terminated with an added `'\n'`.
    pub fn take_all(&mut self) -> Option<Bytes> {
        let mut lines = self.take_lines();
        if self.buf.is_empty() {
            return lines;
        }
        let mut out =
            BytesMut::with_capacity(lines.as_ref().map_or(0, Bytes::len) + self.buf.len() + 1);
        if let Some(lines) = lines.take() {
            out.extend_from_slice(&lines);
        }
        out.extend_from_slice(&self.buf.split());
        out.put_u8(b'\n');
        Some(out.freeze())
    }
}

/// Iterates over the lines of a run of complete lines, as cheap slices of it (no copy, no allocation).
pub fn split_lines(run: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= run.len() {
            return None;
        }
        let end = match memchr_newline(&run[start..]) {
            Some(i) => start + i + 1,
            None => run.len(),
        };
        let line = run.slice(start..end);
        start = end;
        Some(line)
    })
}

/// Position of the first `'\n'`.
pub fn memchr_newline(haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == b'\n')
}

/// Position of the last `'\n'`. Scans word-sized chunks from the end, which is several times faster than a
/// byte loop on the long runs the pump sees.
pub fn memrchr_newline(haystack: &[u8]) -> Option<usize> {
    const WORD: usize = std::mem::size_of::<u64>();
    const LO: u64 = u64::from_ne_bytes([0x01; WORD]);
    const HI: u64 = u64::from_ne_bytes([0x80; WORD]);
    const NL: u64 = u64::from_ne_bytes([b'\n'; WORD]);
    let mut end = haystack.len();
    while end >= WORD {
        let chunk: [u8; WORD] = match haystack[end - WORD..end].try_into() {
            Ok(chunk) => chunk,
            Err(_) => break,
        };
        let x = u64::from_ne_bytes(chunk) ^ NL;
        // Classic "has zero byte" test: non-zero iff some byte of x is zero, i.e. some byte was '\n'.
        if x.wrapping_sub(LO) & !x & HI != 0 {
            break;
        }
        end -= WORD;
    }
    haystack[..end].iter().rposition(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(buffer: &mut LineBuffer, data: &[u8]) {
        buffer.read_target().extend_from_slice(data);
    }

    #[test]
    fn complete_lines_come_out_and_the_tail_waits() {
        let mut b = LineBuffer::new();
        feed(&mut b, b"one\ntwo\nthr");
        assert_eq!(b.take_lines().as_deref(), Some(&b"one\ntwo\n"[..]));
        assert_eq!(b.take_lines(), None);
        assert_eq!(b.len(), 3);
        // The rest of the line arrives later, maybe from the next process.
        feed(&mut b, b"ee\nfo");
        assert_eq!(b.take_lines().as_deref(), Some(&b"three\n"[..]));
        assert_eq!(b.take_all().as_deref(), Some(&b"fo\n"[..]));
        assert!(b.is_empty());
        assert_eq!(b.take_all(), None);
    }

    #[test]
    fn empty_lines_are_lines() {
        let mut b = LineBuffer::new();
        feed(&mut b, b"\n\nx\n");
        let run = b.take_lines().unwrap_or_default();
        let lines: Vec<Bytes> = split_lines(&run).collect();
        assert_eq!(
            lines,
            vec![Bytes::from("\n"), Bytes::from("\n"), Bytes::from("x\n")]
        );
    }

    #[test]
    fn runaway_line_is_cut_at_max_line() {
        let mut b = LineBuffer::new();
        feed(&mut b, b"a\n");
        feed(&mut b, &vec![b'x'; MAX_LINE * 2 + 10]);
        let run = b.take_lines().unwrap_or_default();
        let lines: Vec<Bytes> = split_lines(&run).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(&lines[0][..], b"a\n");
        assert_eq!(lines[1].len(), MAX_LINE + 1);
        assert_eq!(lines[2].len(), MAX_LINE + 1);
        assert!(lines[1].ends_with(b"x\n"));
        assert_eq!(b.len(), 10);
        // Just under the limit stays buffered.
        feed(&mut b, &vec![b'y'; MAX_LINE - 11]);
        assert_eq!(b.take_lines(), None);
        feed(&mut b, b"y");
        assert_eq!(b.take_lines().map(|r| r.len()), Some(MAX_LINE + 1));
    }

    #[test]
    fn a_long_line_with_its_newline_stays_whole() {
        let mut b = LineBuffer::new();
        let mut line = vec![b'z'; MAX_LINE * 3];
        line.push(b'\n');
        feed(&mut b, &line);
        assert_eq!(b.take_lines().map(|r| r.len()), Some(line.len()));
    }

    #[test]
    fn split_lines_handles_a_missing_final_newline() {
        let run = Bytes::from_static(b"a\nbc");
        let lines: Vec<Bytes> = split_lines(&run).collect();
        assert_eq!(lines, vec![Bytes::from("a\n"), Bytes::from("bc")]);
    }

    #[test]
    fn memrchr_matches_a_byte_loop() {
        let mut data = [b'q'; 100];
        for len in 0..data.len() {
            for nl in [None, Some(0), Some(3), Some(7), Some(8), Some(50), Some(99)] {
                data.iter_mut().for_each(|b| *b = b'q');
                if let Some(nl) = nl {
                    data[nl] = b'\n';
                }
                let hay = &data[..len];
                assert_eq!(
                    memrchr_newline(hay),
                    hay.iter().rposition(|&b| b == b'\n'),
                    "len {len} nl {nl:?}"
                );
            }
        }
        // Bytes that differ from '\n' only in high bits must not match.
        assert_eq!(memrchr_newline(&[0x8a; 16]), None);
        assert_eq!(memrchr_newline(&[0x0b; 16]), None);
    }
}
