//! `stackinit readahead LIST`: ask the kernel to start reading the files named in LIST (one path per line)
//! into the page cache, and exit without waiting for them.
//!
//! A freshly launched instance reads its app from a cold disk: on EC2 an EBS volume made from a snapshot
//! fetches each block from S3 on first touch, and under QEMU every read is emulated. An interpreter
//! importing a framework reads hundreds of small files one at a time, each read waiting for the last.
//! Started as a job at boot beside the app, this queues them all at once (`posix_fadvise(WILLNEED)`), so the
//! disk works in parallel while the app spends CPU on what has already arrived. The list comes from the image
//! build (image/install.sh records what loading the app opened), as systemd-readahead's replay once did.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

pub fn main(list: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(list) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("stackinit readahead: {}: {e}", list.display());
            return ExitCode::FAILURE;
        }
    };
    let (mut queued, mut missing, mut bytes) = (0u64, 0u64, 0u64);
    for path in text.lines().map(str::trim).filter(|l| l.starts_with('/')) {
        match queue(Path::new(path)) {
            Some(size) => {
                queued += 1;
                bytes += size;
            }
            None => missing += 1,
        }
    }
    // Missing files are not an error: the list is a hint, and an app update may have moved some.
    eprintln!(
        "stackinit readahead: queued {queued} files ({} KiB) from {}; {missing} not found",
        bytes / 1024,
        list.display()
    );
    ExitCode::SUCCESS
}

/// Start reading one regular file into the page cache; its size, or `None` if it cannot be opened.
fn queue(path: &Path) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok().filter(|m| m.is_file())?.len();
    // Advice only: a failure just means no head start for this file.
    let _ = posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    Some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_existing_regular_files_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.pyc");
        std::fs::write(&file, vec![7u8; 10_000]).unwrap();
        assert_eq!(queue(&file), Some(10_000));
        assert_eq!(queue(&dir.path().join("missing")), None);
        assert_eq!(queue(dir.path()), None, "directories are skipped");
    }
}
