//! Parsing with source spans, and the semantic checks serde cannot express.
//!
//! The steps, each collecting every error it finds rather than stopping at the first:
//! 1. parse the TOML into a spanned document (`doc`); syntax errors end the run here;
//! 2. deserialize `[init]`, each `[service.X]` and `[proxy]` on its own (`sections`), dropping a bad key and
//!    retrying so one typo hides neither the next one nor the other sections;
//! 3. check what serde cannot (`checks`, `proxy_checks`, `listens`, `graph`): references, cycles, clashing addresses,
//!    users, signals, modes, ranges.
#![forbid(unsafe_code)]

mod checks;
mod ctx;
mod dashboard_checks;
pub use dashboard_checks::MIN_SECRET_OFF_LOOPBACK;
pub(crate) use overlay::parse_and_validate_layered;
mod doc;
mod graph;
mod limits;
mod listens;
mod overlay;
mod proxy_checks;
mod secrets_checks;
mod sections;

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{Config, ConfigError};
use doc::KeyPath;

/// Errors (and warnings) found so far, with the text needed to turn byte offsets into lines and columns.
pub(crate) struct Report<'t> {
    file: PathBuf,
    text: &'t str,
    /// A second file whose text follows the first in `text` from this byte on (a user-data overlay after the
    /// baked config): offsets from there are located in it.
    second: Option<(PathBuf, usize)>,
    errors: Vec<ConfigError>,
    /// What may well be wrong but cannot be known from here (a permission an ACL may still grant): printed by
    /// `check` and logged at startup, never a reason to refuse the config.
    warnings: Vec<ConfigError>,
}

impl<'t> Report<'t> {
    fn new(file: &Path, text: &'t str) -> Report<'t> {
        Report {
            file: file.to_path_buf(),
            text,
            second: None,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Record an error at byte `offset`, about the key `key` (may be empty).
    pub fn error(&mut self, offset: usize, key: &KeyPath, message: impl Into<String>) {
        let error = self.located(offset, key, message.into());
        self.errors.push(error);
    }

    /// Record a warning: said like an error, with `warning: ` before the message.
    pub fn warning(&mut self, offset: usize, key: &KeyPath, message: impl Into<String>) {
        let warning = self.located(offset, key, format!("warning: {}", message.into()));
        self.warnings.push(warning);
    }

    fn located(&self, offset: usize, key: &KeyPath, message: String) -> ConfigError {
        let (file, (line, col)) = match &self.second {
            Some((second, start)) if offset >= *start => (
                second,
                doc::line_col(self.text.get(*start..).unwrap_or(""), offset - start),
            ),
            _ => (&self.file, doc::line_col(self.text, offset)),
        };
        ConfigError {
            file: file.clone(),
            line,
            col,
            key: key.to_string(),
            message,
        }
    }

    fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors in file order, without exact repeats.
    fn into_errors(self) -> Vec<ConfigError> {
        let mut errors = self.errors;
        // A stable sort keeps errors at the same position in the order the checks found them.
        let second = self.second.map(|(file, _)| file);
        errors.sort_by_key(|e| (Some(&e.file) == second.as_ref(), e.line, e.col));
        errors.dedup();
        errors
    }
}

/// Where to point for `path`: its value (or key) if present, else the nearest enclosing table that is.
pub(crate) fn span_for(root: &Spanned<DeValue<'_>>, path: &KeyPath, at_key: bool) -> Range<usize> {
    let mut path = path.clone();
    loop {
        if let Some(found) = doc::lookup(root, &path) {
            return match (at_key, found.key_span) {
                (true, Some(key_span)) => key_span,
                _ => found.value.span(),
            };
        }
        if path.0.pop().is_none() {
            return 0..0;
        }
    }
}

/// The config and its warnings, or every error.
pub(crate) fn parse_and_validate(
    path: &Path,
    text: &str,
) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let mut report = Report::new(path, text);
    let (table, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        // Only the first syntax error is reliable: toml's recovery misreads what follows (an unclosed array
        // swallows the next lines, each then reported as another error). So report it alone and check
        // nothing else until it is fixed.
        if let Some(e) = syntax_errors.first() {
            let span = e.span().unwrap_or(0..0);
            report.error(
                span.start,
                &KeyPath::root(),
                syntax_message(text, e.message(), span),
            );
        }
        return Err(report.into_errors());
    }
    let root = Spanned::new(table.span(), DeValue::Table(table.into_inner()));
    validate_root(root, report)
}

/// The checks after parsing: each section deserialized, then the semantic checks.
fn validate_root(
    root: Spanned<DeValue<'_>>,
    mut report: Report<'_>,
) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let recovered = sections::deserialize(&root, &mut report);
    checks::run(&root, &recovered, &mut report);
    if report.is_empty() {
        let mut warnings = report.warnings;
        warnings.sort_by_key(|w| (w.line, w.col));
        Ok((recovered.config, warnings))
    } else {
        Err(report.into_errors())
    }
}

/// toml's syntax message, naming the key for "duplicate key" (the span covers it).
fn syntax_message(text: &str, message: &str, span: Range<usize>) -> String {
    let message = message.trim();
    match text.get(span) {
        Some(key) if message == "duplicate key" && !key.trim().is_empty() => {
            format!(
                "duplicate key {:?}: it is already defined above",
                key.trim().trim_matches('"')
            )
        }
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse_and_validate(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn one_error(text: &str) -> String {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        errors[0].clone()
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = one_error("[init]\nlogs_dir = \"/logs\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
    }

    #[test]
    fn unknown_key_points_at_the_key() {
        let e = one_error("[service.app]\ncommand = [\"x\"]\n  comand = 1\n");
        assert!(
            e.starts_with("t.toml:3:3: service.app.comand: unknown key \"comand\""),
            "{e}"
        );
        assert!(e.contains("did you mean \"command\""), "{e}");
    }

    #[test]
    fn bad_duration_points_at_the_value() {
        let e = one_error("[service.app]\ncommand = [\"x\"]\nstop_grace = \"5 parsecs\"\n");
        assert!(
            e.starts_with("t.toml:3:14: service.app.stop_grace: invalid duration"),
            "{e}"
        );
    }

    #[test]
    fn errors_in_one_section_do_not_hide_others() {
        let text = "[init]\nbogus = 1\n[service.a]\ncommand = [\"x\"]\nbad1 = 1\nbad2 = 2\n[service.b]\ncommand = 5\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("t.toml:2:1: init.bogus:"));
        assert!(errors[1].starts_with("t.toml:5:1: service.a.bad1:"));
        assert!(errors[2].starts_with("t.toml:6:1: service.a.bad2:"));
        assert!(errors[3].starts_with("t.toml:8:11: service.b.command:"));
    }

    #[test]
    fn cycle_is_named_and_located() {
        let text = "[service.a]\ncommand = [\"x\"]\nafter = [\"b\"]\n[service.b]\ncommand = [\"x\"]\nafter = [\"a\"]\n";
        let e = one_error(text);
        assert_eq!(
            e,
            "t.toml:6:10: service.b.after: dependency cycle: a -> b -> a"
        );
    }

    #[test]
    fn server_names_the_proxy_cannot_compile_are_errors() {
        // fuzz/regressions/config/server-name-star-passes-check-but-not-the-proxy, as found.
        let e = one_error("[[proxy.server]]\nserver_name=[\"*\"]");
        assert_eq!(
            e,
            "t.toml:2:14: proxy.server[0].server_name: server name \"*\": \
             a wildcard may only be `*.` at the start or `.*` at the end"
        );
        let server = |name: &str| format!("[[proxy.server]]\nserver_name = [{name:?}]\n");
        for bad in ["a*b", "*.", ".", ".*", "*.*.x", "x.*.*", "w*.example.org"] {
            let e = one_error(&server(bad));
            assert!(e.contains("wildcard"), "{bad}: {e}");
        }
        for good in [
            "*.example.org",
            ".example.org",
            "www.example.*",
            "~^a*$",
            "a.b",
        ] {
            assert_eq!(errors(&server(good)), Vec::<String>::new(), "{good}");
        }
    }

    #[test]
    fn replicas_are_bounded_before_any_is_expanded() {
        // fuzz/regressions/config/four-billion-replicas-exhaust-the-checker: an error, at once.
        let started = std::time::Instant::now();
        let e = one_error(
            "[service.a]\ncommand = [\"x\"]\nreplicas = 4000000000\nlisten = \"unix:/run/a.sock\"\n",
        );
        assert_eq!(
            e,
            "t.toml:3:12: service.a.replicas: replicas = 4000000000 is more than 1024, the most one service may have"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let ok = "[service.a]\ncommand = [\"x\"]\nreplicas = 1024\nlisten = \"unix:/run/a.sock\"\n";
        assert_eq!(errors(ok), Vec::<String>::new());
    }

    #[test]
    fn demo_config_is_valid() {
        let text = crate::config::demo_text();
        assert_eq!(errors(&text), Vec::<String>::new());
    }
}
