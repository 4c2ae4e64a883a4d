//! Deserialize each section on its own, recovering from errors by dropping the offending key and retrying,
//! so that every structural error in the file is reported in one run.
#![forbid(unsafe_code)]

use serde::de::DeserializeOwned;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

use super::doc::{self, KeyPath, Seg};
use super::Report;
use crate::config::{Config, InitSpec, ProxySpec, ServiceSpec};

/// Bound on retries per section; each retry removes one key, so this only guards against surprises.
const MAX_ERRORS_PER_SECTION: usize = 100;

/// The config as far as it could be read, and what had to be left out to read it.
pub(crate) struct Recovered {
    pub config: Config,
    /// Keys (or whole sections) that were dropped after an error. Checks skip anything under them, so a
    /// bad value is reported once, not again as a missing one.
    pub dropped: Vec<KeyPath>,
    /// Every name under `[service]`, including services that could not be read at all.
    pub service_names: Vec<String>,
}

impl Recovered {
    pub fn is_dropped(&self, path: &KeyPath) -> bool {
        self.dropped.iter().any(|d| path.starts_with(d))
    }
}

pub(crate) fn deserialize(root: &Spanned<DeValue<'_>>, report: &mut Report) -> Recovered {
    let mut recovered = Recovered {
        config: Config::default(),
        dropped: Vec::new(),
        service_names: Vec::new(),
    };
    let DeValue::Table(table) = root.get_ref() else {
        return recovered;
    };
    for (key, value) in table.iter() {
        let path = KeyPath::root().key(key.get_ref());
        match key.get_ref().as_ref() {
            "init" => {
                if let Some(init) = section::<InitSpec>(root, &path, report, &mut recovered.dropped)
                {
                    recovered.config.init = init;
                }
            }
            "proxy" => {
                // A `[proxy]` that cannot be read still exists: keep a default one so that checks which
                // depend on its presence (the reserved name `proxy`) still apply.
                let proxy = section::<ProxySpec>(root, &path, report, &mut recovered.dropped);
                recovered.config.proxy = Some(proxy.unwrap_or_default());
            }
            "service" => match value.get_ref() {
                DeValue::Table(services) => {
                    for name in services.keys() {
                        let name = name.get_ref().to_string();
                        let path = path.key(&name);
                        if let Some(spec) =
                            section::<ServiceSpec>(root, &path, report, &mut recovered.dropped)
                        {
                            recovered.config.service.insert(name.clone(), spec);
                        }
                        recovered.service_names.push(name);
                    }
                }
                other => {
                    report.error(
                        value.span().start,
                        &path,
                        format!(
                            "expected a table of services like [service.app], found {}",
                            other.type_str()
                        ),
                    );
                    recovered.dropped.push(path);
                }
            },
            other => {
                let hint = suggestion(other, &["init", "service", "proxy"])
                    .map_or_else(String::new, |s| format!(" (did you mean \"{s}\"?)"));
                report.error(
                    key.span().start,
                    &path,
                    format!("unknown section \"{other}\"{hint}; the sections are init, service and proxy"),
                );
            }
        }
    }
    recovered
}

/// Deserialize the value at `path` as a `T`. On an error, report it, drop the innermost key that holds it,
/// and try again. Returns `None` when the section itself is unusable (e.g. not a table).
fn section<T: DeserializeOwned>(
    root: &Spanned<DeValue<'_>>,
    path: &KeyPath,
    report: &mut Report,
    dropped: &mut Vec<KeyPath>,
) -> Option<T> {
    let mut value = doc::lookup(root, path)?.value.clone();
    for _ in 0..MAX_ERRORS_PER_SECTION {
        let error = match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(parsed) => return Some(parsed),
            Err(error) => error,
        };
        let offset = error.span().map_or(value.span().start, |s| s.start);
        let inner = doc::path_at(&value, offset);
        let full = KeyPath([path.0.clone(), inner.0.clone()].concat());
        report.error(
            offset,
            &shown_key(root, &full),
            friendly_message(error.message()),
        );
        let removable = inner.up_to_last_key();
        if removable.0.is_empty() || !doc::remove(&mut value, &removable) {
            break;
        }
        dropped.push(KeyPath([path.0.clone(), removable.0].concat()));
    }
    dropped.push(path.clone());
    None
}

/// The key to show for an error at `path`: an element of a list of plain values is shown as the list's key
/// (`service.app.after`), an element that is a table keeps its index (`proxy.server[0]`).
fn shown_key(root: &Spanned<DeValue<'_>>, path: &KeyPath) -> KeyPath {
    match path.0.last() {
        Some(Seg::Index(_)) => match doc::lookup(root, path) {
            Some(found) if found.value.get_ref().is_table() => path.clone(),
            _ => path.up_to_last_key(),
        },
        _ => path.clone(),
    }
}

/// Reword serde's messages for people who write TOML rather than Rust.
pub(crate) fn friendly_message(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backticked(expected);
        return match suggestion(name, &known) {
            Some(best) => format!("unknown key \"{name}\" (did you mean \"{best}\"?)"),
            None if known.is_empty() => format!("unknown key \"{name}\": this table takes no keys"),
            None if known.len() <= 12 => format!(
                "unknown key \"{name}\" (expected one of: {})",
                known.join(", ")
            ),
            None => format!("unknown key \"{name}\""),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        return format!(
            "unknown value \"{name}\" (expected one of: {})",
            backticked(expected).join(", ")
        );
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        return format!("missing required key \"{name}\"");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "expected {}, found {}",
                toml_words(expected),
                toml_words(found)
            );
        }
    }
    if message.contains("untagged enum OneOrMany") {
        return "expected a string or an array of strings".into();
    }
    if message.contains("untagged enum TcpProbeTarget") {
        return "expected true (the service's own listen socket) or an address like \"127.0.0.1:5432\"".into();
    }
    message.to_string()
}

/// serde's Rust-flavoured type names in TOML terms.
fn toml_words(text: &str) -> String {
    let text = text.trim();
    let replaced = match text {
        "a sequence" => "an array",
        "a map" => "a table",
        "map" => "table",
        "sequence" => "array",
        "a boolean" => "true or false",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        _ if text.starts_with("struct ") => "a table",
        _ => text,
    };
    replaced.to_string()
}

/// The names inside backticks: "expected one of `a`, `b`" -> ["a", "b"].
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The closest known name, if it is close enough to be a likely typo.
pub(crate) fn suggestion<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 1.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            friendly_message("unknown field `comand`, expected one of `command`, `directory`"),
            "unknown key \"comand\" (did you mean \"command\"?)"
        );
        assert_eq!(
            friendly_message("unknown field `zzz`, expected `path`"),
            "unknown key \"zzz\" (expected one of: path)"
        );
        assert_eq!(
            friendly_message("invalid type: string \"x\", expected a sequence"),
            "expected an array, found string \"x\""
        );
        assert_eq!(
            friendly_message(
                "unknown variant `sometimes`, expected one of `always`, `on-failure`, `never`"
            ),
            "unknown value \"sometimes\" (expected one of: always, on-failure, never)"
        );
        assert_eq!(
            friendly_message("missing field `cert`"),
            "missing required key \"cert\""
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggestion("comand", &["command", "directory"]),
            Some("command")
        );
        assert_eq!(
            suggestion("servce", &["init", "service", "proxy"]),
            Some("service")
        );
        assert_eq!(suggestion("xyz", &["init", "service", "proxy"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
