//! What an import found besides the config: where each input came from, what it could not convert (and
//! why), and the errors that stop it.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A line of an input file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub file: Rc<Path>,
    pub line: usize,
}

impl Origin {
    pub fn new(file: &Rc<Path>, line: usize) -> Origin {
        Origin {
            file: file.clone(),
            line,
        }
    }

    /// The directory of the file, as supervisord's `%(here)s` means it.
    pub fn dir(&self) -> PathBuf {
        self.file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Something in the input that the output does not do: `FILE:LINE: what: why`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub at: Origin,
    pub what: String,
    pub why: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.at, self.what, self.why)
    }
}

/// Input the import refuses, as supervisord or nginx would: it writes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportError {
    pub at: Option<Origin>,
    pub message: String,
}

impl ImportError {
    pub fn at(at: &Origin, message: impl Into<String>) -> ImportError {
        ImportError {
            at: Some(at.clone()),
            message: message.into(),
        }
    }

    pub fn file(file: &Path, message: impl fmt::Display) -> ImportError {
        ImportError {
            at: None,
            message: format!("{}: {message}", file.display()),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{at}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The list of what was not converted, in input order once sorted.
#[derive(Debug, Default)]
pub struct Skips(pub Vec<Skipped>);

impl Skips {
    pub fn add(&mut self, at: &Origin, what: impl Into<String>, why: impl Into<String>) {
        self.0.push(Skipped {
            at: at.clone(),
            what: what.into(),
            why: why.into(),
        });
    }

    /// Sorted by file and line; the same line reported twice for the same reason counts once.
    pub fn into_sorted(self) -> Vec<Skipped> {
        let mut list = self.0;
        list.sort_by(|a, b| a.at.cmp(&b.at));
        list.dedup();
        list
    }
}

/// Largest input file read (supervisord and nginx configs are a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most files one import reads, includes and globs together.
pub const MAX_FILES: usize = 256;

/// Read an input file, bounded in size.
pub fn read_input(path: &Path) -> Result<String, ImportError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| ImportError::file(path, e))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ImportError::file(path, format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ImportError::file(
            path,
            format!("larger than {MAX_FILE_BYTES} bytes; is this a config file?"),
        ));
    }
    Ok(text)
}
