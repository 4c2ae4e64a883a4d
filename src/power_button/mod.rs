//! The ACPI power button, read straight from evdev: EC2 stop/terminate and QEMU's `system_powerdown` press
//! it, and with no acpid or logind around PID 1 has to notice itself.
//!
//! Each `/dev/input/event*` that can report KEY_POWER is read through tokio's `AsyncFd` (epoll, no polling,
//! no blocking threads), and every press is sent to the supervisor, which shuts down exactly as on SIGTERM.
//! The directory can be moved with `STACKINIT_INPUT_DIR` so tests can put a FIFO named `event0` there.
#![allow(unsafe_code)] // audited: see the SAFETY comments

pub mod input_event;

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

use input_event::{Decoder, EV_KEY, KEY_POWER};

const DEFAULT_INPUT_DIR: &str = "/dev/input";
/// `KEY_MAX` is 0x2ff, so the EV_KEY capability bitmap is 96 bytes.
const KEY_BITMAP_BYTES: usize = 0x300 / 8;

// EVIOCGBIT(EV_KEY, len) = _IOC(_IOC_READ, 'E', 0x20 + EV_KEY, len): which key codes a device can report.
nix::ioctl_read_buf!(eviocgbit_key, b'E', 0x20 + EV_KEY as u8, u8);

/// Whether the supervisor should watch the power button: as PID 1, or when a test points us at a fake device.
pub fn wanted(pid1: bool) -> bool {
    pid1 || std::env::var_os("STACKINIT_INPUT_DIR").is_some()
}

fn input_dir() -> PathBuf {
    std::env::var_os("STACKINIT_INPUT_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_INPUT_DIR), PathBuf::from)
}

/// Start watching on the current tokio runtime; each press sends `()` on `on_press`. Devices are found
/// once, now (with no udev, the kernel has created the nodes in devtmpfs before we run). Never panics:
/// without a runtime or devices it logs and returns.
pub fn spawn_watcher(on_press: UnboundedSender<()>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("power button: no tokio runtime to watch on");
        return;
    };
    let dir = input_dir();
    let devices = power_button_devices(&dir);
    if devices.is_empty() {
        tracing::info!(
            "power button: no input device with KEY_POWER in {}",
            dir.display()
        );
        return;
    }
    for (path, file) in devices {
        runtime.spawn(watch_device(path, file, on_press.clone()));
    }
}

/// Open every `event*` in `dir` that may report KEY_POWER, non-blocking.
fn power_button_devices(dir: &Path) -> Vec<(PathBuf, File)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .map(|e| e.path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| match open_device(&path) {
            Ok(Some(file)) => Some((path, file)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!("power button: cannot open {}: {e}", path.display());
                None
            }
        })
        .collect()
}

/// Open one device; `None` when it is an evdev device that cannot report KEY_POWER.
fn open_device(path: &Path) -> io::Result<Option<File>> {
    let is_fifo = std::fs::metadata(path)?.file_type().is_fifo();
    // A FIFO (test stand-in) is opened read-write so it never reports EOF when a writer closes.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(is_fifo)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    match reports_key_power(&file) {
        Some(false) => Ok(None),
        // Yes, or not an evdev device at all (a FIFO in tests): watch it.
        Some(true) | None => Ok(Some(file)),
    }
}

/// Ask the device for its key bitmap; `None` if it does not answer EVIOCGBIT.
fn reports_key_power(file: &File) -> Option<bool> {
    let mut bits = [0u8; KEY_BITMAP_BYTES];
    // SAFETY: EVIOCGBIT writes at most `bits.len()` bytes (the length is encoded in the request) into the
    // buffer we own for the duration of the call; on a non-evdev file it fails with ENOTTY and writes nothing.
    unsafe { eviocgbit_key(file.as_raw_fd(), &mut bits) }.ok()?;
    let code = usize::from(KEY_POWER);
    Some(bits[code / 8] & (1 << (code % 8)) != 0)
}

async fn watch_device(path: PathBuf, file: File, on_press: UnboundedSender<()>) {
    // SAFETY: the `File` owns its fd, and nothing replaces or closes that fd while the AsyncFd owns the File.
    // (Registering inside the task also guarantees the runtime context `register` needs.)
    let fd = match unsafe { AsyncFd::register(file) } {
        Ok(fd) => fd,
        Err(e) => {
            // e.g. EPERM: a regular file cannot be watched with epoll.
            tracing::warn!("power button: cannot watch {}: {e}", path.display());
            return;
        }
    };
    tracing::info!("power button: watching {}", path.display());
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 64 * input_event::EVENT_SIZE];
    loop {
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::warn!("power button: {} failed: {e}", path.display());
                return;
            }
        };
        let n = match guard.try_io(|inner| inner.get_ref().read(&mut buf)) {
            Err(_would_block) => continue,
            Ok(Ok(0)) => {
                tracing::warn!("power button: {} closed", path.display());
                return;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => {
                // ENODEV: the device went away.
                tracing::warn!("power button: reading {} failed: {e}", path.display());
                return;
            }
        };
        let mut presses = 0;
        decoder.feed(&buf[..n], |event| {
            presses += usize::from(event.is_power_press())
        });
        for _ in 0..presses {
            tracing::info!("power button pressed ({})", path.display());
            if on_press.send(()).is_err() {
                return; // Nobody listens any more: the supervisor is shutting down.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::input_event::InputEvent;
    use super::*;
    use std::io::Write;

    #[test]
    fn a_fifo_stands_in_for_a_device_and_presses_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("event0");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(dir.path().join("mouse0"), b"not an event device").unwrap();
        let devices = power_button_devices(dir.path());
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].0, fifo);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for (path, file) in power_button_devices(dir.path()) {
                tokio::spawn(watch_device(path, file, tx.clone()));
            }
            let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let press = InputEvent {
                kind: EV_KEY,
                code: KEY_POWER,
                value: 1,
            };
            let release = InputEvent { value: 0, ..press };
            let other = InputEvent { code: 30, ..press };
            // Split the press over two writes, and close the writer: neither may confuse the reader.
            let bytes = [other.encode(), press.encode(), release.encode()].concat();
            writer.write_all(&bytes[..30]).unwrap();
            writer.flush().unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            writer.write_all(&bytes[30..]).unwrap();
            drop(writer);
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            writer.write_all(&press.encode()).unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(rx.try_recv().is_err(), "exactly one press per press");
        });
    }

    #[test]
    fn a_missing_directory_means_no_devices() {
        assert!(power_button_devices(Path::new("/nonexistent/input")).is_empty());
    }
}
