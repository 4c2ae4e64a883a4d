//! Reading a user-data overlay file: bounded, UTF-8, absent is not an error.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::Path;

use super::{ConfigError, UserData};

/// Largest overlay read. EC2 user data is at most 16 KB; anything much larger is not an overlay.
pub const MAX_OVERLAY_BYTES: u64 = 64 * 1024;

/// The overlay's text, `None` when there is no file.
pub fn read(path: &Path) -> Result<Option<String>, ConfigError> {
    let file = match super::env_file::open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error_at_start(path, format!("cannot read user data: {e}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_OVERLAY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error_at_start(path, format!("cannot read user data: {e}")))?;
    if bytes.len() as u64 > MAX_OVERLAY_BYTES {
        return Err(error_at_start(
            path,
            format!("user data larger than {MAX_OVERLAY_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| error_at_start(path, format!("user data is not UTF-8 text: {e}")))
}

pub fn error_at_start(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        key: String::new(),
        message,
    }
}

/// An overlay refused for `errors`: reported, never applied.
pub fn refused(path: &Path, errors: &[ConfigError]) -> UserData {
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    tracing::error!(
        "user data {} refused; running the baked config without it:\n{}",
        path.display(),
        errors.join("\n")
    );
    UserData {
        path: path.to_path_buf(),
        errors,
    }
}
