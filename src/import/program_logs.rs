//! A program's `stdout_logfile`/`stderr_logfile` and their rotation settings. stackinit keeps every
//! byte a service writes (there is no NONE), rotates both streams by one size and count, and names
//! per-replica files itself when no path is given.
#![forbid(unsafe_code)]

use super::emit::Table;
use super::names::Names;
use super::report::{ImportError, Skips};
use super::supervisord::{boolean, byte_size, integer, Section, Value};

/// Smallest rotation size stackinit accepts.
const MIN_LOG_BYTES: u64 = 1024;

pub fn convert(
    section: &Section,
    names: &Names,
    logs_dir: &str,
    table: &mut Table,
    skips: &mut Skips,
) -> Result<(), ImportError> {
    let redirect = section
        .get("redirect_stderr")
        .map(boolean)
        .transpose()?
        .unwrap_or(false);
    let stdout = log_path(section.get("stdout_logfile"), "stdout", names, skips)?;
    let stderr = log_path(section.get("stderr_logfile"), "stderr", names, skips)?;
    let service = table.path.last().cloned().unwrap_or_default();
    if let Some((path, v)) = &stdout {
        table.set("stdout", path.clone(), Some(&v.at));
    }
    if redirect {
        let v = section.get("redirect_stderr");
        let target = match &stdout {
            Some((path, _)) => Some(path.clone()),
            None if names.numprocs == 1 => Some(format!(
                "{}/{service}.out.log",
                logs_dir.trim_end_matches('/')
            )),
            None => None,
        };
        match (target, v) {
            (Some(path), Some(v)) => {
                table
                    .set("stderr", path, Some(&v.at))
                    .note("redirect_stderr: stderr goes to the stdout file (lines from both interleave)");
            }
            (None, Some(v)) => skips.add(&v.at, "redirect_stderr", "with numprocs and no stdout_logfile each replica has its own <logs_dir>/NAME@N.out.log and .err.log; stderr keeps its own file"),
            _ => {}
        }
        if let Some((_, v)) = &stderr {
            skips.add(
                &v.at,
                "stderr_logfile",
                "ignored by supervisord too, since redirect_stderr=true",
            );
        }
    } else if let Some((path, v)) = &stderr {
        table.set("stderr", path.clone(), Some(&v.at));
    }
    rotation(section, table, skips)
}

/// The file a stream goes to: None for supervisord's automatic file (stackinit's default path is
/// `<logs_dir>/NAME.out.log`), or for what stackinit cannot do (reported).
fn log_path<'a>(
    value: Option<&'a Value>,
    stream: &str,
    names: &Names,
    skips: &mut Skips,
) -> Result<Option<(String, &'a Value)>, ImportError> {
    let Some(v) = value else { return Ok(None) };
    let key = format!("{stream}_logfile");
    let path = names.expand(v, 0)?;
    match path.trim().to_uppercase().as_str() {
        "AUTO" => return Ok(None),
        "NONE" => {
            skips.add(
                &v.at,
                key,
                "stackinit keeps every log: the stream goes to its default file in logs_dir",
            );
            return Ok(None);
        }
        "SYSLOG" => {
            skips.add(
                &v.at,
                key,
                "stackinit does not log to syslog: the stream goes to its default file in logs_dir",
            );
            return Ok(None);
        }
        _ => {}
    }
    if names.numprocs > 1 && names.expand(v, 1)? != path {
        skips.add(&v.at, key, "a file per process: each replica gets <logs_dir>/NAME@N.out.log (.err.log) instead; set [init] logs_dir to choose the directory");
        return Ok(None);
    }
    if !path.starts_with('/') {
        skips.add(&v.at, key, format!("{path:?} is relative to supervisord's working directory: the stream goes to its default file in logs_dir"));
        return Ok(None);
    }
    Ok(Some((path, v)))
}

/// `*_logfile_maxbytes` and `*_logfile_backups`: one setting for both streams in stackinit.
fn rotation(section: &Section, table: &mut Table, skips: &mut Skips) -> Result<(), ImportError> {
    let mut sizes = Vec::new();
    for v in [
        section.get("stdout_logfile_maxbytes"),
        section.get("stderr_logfile_maxbytes"),
    ]
    .into_iter()
    .flatten()
    {
        match byte_size(v)? {
            0 => skips.add(&v.at, "logfile_maxbytes=0", "stackinit always rotates (never rotating fills the disk); the default 50MB applies"),
            n if n < MIN_LOG_BYTES => skips.add(&v.at, "logfile_maxbytes", format!("{n} bytes is below stackinit's 1KB minimum; the default 50MB applies")),
            n => sizes.push((n, v)),
        }
    }
    if let Some((bytes, v)) = one_for_both(
        sizes,
        "stderr_logfile_maxbytes",
        "stackinit rotates stdout and stderr at one size",
        skips,
    ) {
        table.set("log_max_bytes", size_text(bytes), Some(&v.at));
    }
    let mut counts = Vec::new();
    for v in [
        section.get("stdout_logfile_backups"),
        section.get("stderr_logfile_backups"),
    ]
    .into_iter()
    .flatten()
    {
        match integer(v)? {
            n if (0..=1000).contains(&n) => counts.push((n, v)),
            n => {
                return Err(ImportError::at(
                    &v.at,
                    format!("{n} backups is out of range (0 to 1000)"),
                ))
            }
        }
    }
    if let Some((n, v)) = one_for_both(
        counts,
        "stderr_logfile_backups",
        "stackinit keeps one number of backups for both streams",
        skips,
    ) {
        table.set("log_backups", n, Some(&v.at));
    }
    Ok(())
}

/// stdout's value of a setting stackinit has once for both streams (or stderr's, if stdout sets none);
/// a differing stderr value is reported.
fn one_for_both<'a, T: PartialEq + Copy>(
    values: Vec<(T, &'a Value)>,
    what: &str,
    why: &str,
    skips: &mut Skips,
) -> Option<(T, &'a Value)> {
    let first = values.first().copied()?;
    for (value, v) in values.iter().skip(1) {
        if *value != first.0 {
            skips.add(&v.at, what, format!("{why}: {}'s applies", first.1.at));
        }
    }
    Some(first)
}

/// Bytes as stackinit writes sizes: the largest exact unit.
pub fn size_text(bytes: u64) -> String {
    for (unit, scale) in [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10)] {
        if bytes % scale == 0 {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}
