//! systemd's `EnvironmentFile=`: `KEY=VALUE` lines, read when a service starts.
//!
//! As systemd reads them: blank lines and lines starting with `#` or `;` are skipped; whitespace around the
//! key and an unquoted value is dropped; a value in double quotes keeps its spaces and takes `\` escapes
//! (`\"`, `\\`); a value in single quotes is taken as written; a line ending in `\` continues on the next.
//! Stricter than systemd, which skips what it cannot read: a line that is no assignment, or a name that is no
//! variable name, is an error (`FILE:LINE: ...`) and the service does not start, saying why.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::Path;

/// Largest environment file read: far more than any set of variables, and a bound on what init reads.
pub const MAX_ENV_FILE_BYTES: u64 = 1 << 20;

/// The variables of `spec`, a path optionally prefixed with `-` (then a missing file is no error).
pub fn read(spec: &str) -> Result<Vec<(String, String)>, String> {
    let (optional, path) = match spec.strip_prefix('-') {
        Some(path) => (true, path),
        None => (false, spec),
    };
    let path = Path::new(path);
    let file = match open_regular(path) {
        Ok(file) => file,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("environment_file {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("environment_file {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(format!(
            "environment_file {}: larger than {MAX_ENV_FILE_BYTES} bytes",
            path.display()
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("environment_file {}: not UTF-8 text", path.display()))?;
    parse(&text).map_err(|(line, message)| format!("{}:{line}: {message}", path.display()))
}

/// Open `path` for reading only if it is a regular file. Init reads it: a FIFO would block the open (hence
/// O_NONBLOCK) or the read until some writer came, and a device could be read forever.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// The assignments in `text`, in order; or the first bad line's number and what is wrong with it.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let number = index + 1;
        let mut logical = line.to_string();
        // A trailing backslash joins the next line (not inside single quotes, which take it as written).
        while logical.ends_with('\\') && !logical.trim_start().contains("='") {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next),
                None => break,
            }
        }
        let trimmed = logical.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err((number, "expected KEY=VALUE".into()));
        };
        let key = key.trim();
        if !is_variable_name(key) {
            return Err((
                number,
                format!("{key:?} is not a variable name (letters, digits and _, not starting with a digit)"),
            ));
        }
        let value = unquote(value.trim()).map_err(|m| (number, m))?;
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(value: &str) -> Result<String, String> {
    if let Some(inner) = value.strip_prefix('\'') {
        return inner
            .strip_suffix('\'')
            .map(str::to_string)
            .ok_or_else(|| "unterminated single quote".into());
    }
    let Some(inner) = value.strip_prefix('"') else {
        return Ok(value.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => out.push(escaped),
                None => return Err("unterminated double quote".into()),
            },
            '"' => {
                return if chars.as_str().trim().is_empty() {
                    Ok(out)
                } else {
                    Err("text after the closing quote".into())
                }
            }
            c => out.push(c),
        }
    }
    Err("unterminated double quote".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_environment_file_lines() {
        let text = "# a comment\n; another\n\n  DATABASE_URL = postgres://db/app  \n\
                    QUOTED=\"two  spaces \\\"and\\\" quotes\"\nSINGLE='kept \\ as is'\nEMPTY=\n\
                    LONG=first \\\nsecond\nEQUALS=a=b\n";
        let vars = parse(text).unwrap();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("DATABASE_URL"), Some("postgres://db/app"));
        assert_eq!(get("QUOTED"), Some("two  spaces \"and\" quotes"));
        assert_eq!(get("SINGLE"), Some("kept \\ as is"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("LONG"), Some("first second"));
        assert_eq!(get("EQUALS"), Some("a=b"));
        assert_eq!(vars.len(), 6);
    }

    #[test]
    fn bad_lines_are_located() {
        assert_eq!(parse("A=1\nnot an assignment\n").unwrap_err().0, 2);
        assert_eq!(parse("1A=x\n").unwrap_err().0, 1);
        assert_eq!(parse("export A=1\n").unwrap_err().0, 1);
        assert_eq!(parse("A=\"open\n").unwrap_err().0, 1);
    }

    #[test]
    fn a_dash_makes_a_missing_file_optional() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.env");
        assert_eq!(read(&format!("-{}", missing.display())).unwrap(), vec![]);
        let e = read(&missing.display().to_string()).unwrap_err();
        assert!(e.contains("nope.env"), "{e}");
        let file = dir.path().join("app.env");
        let fifo = dir.path().join("fifo.env");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read(&fifo.display().to_string()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::write(&file, "A=1\nB\n").unwrap();
        let e = read(&file.display().to_string()).unwrap_err();
        assert_eq!(e, format!("{}:2: expected KEY=VALUE", file.display()));
    }
}
