//! A per-launch overlay (EC2 user data) merged onto the baked config, then validated as one config whose
//! errors point into whichever file set the value: the overlay's keys at `OVERLAY:LINE:COL`, the rest at
//! the baked file's. The two texts are checked as one string (the baked text, a newline, the overlay), the
//! overlay's spans shifted past the baked text, so every check and its spans work unchanged.
//!
//! Merge rules: tables merge key by key, recursively (`[service.app] replicas = 5` changes one key,
//! `environment` gains or changes variables, a new `[service.x]` adds a service); any other value, arrays
//! included (`[[proxy.server]]`, `server_name`, `listen`), replaces the baked one whole.
#![forbid(unsafe_code)]

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::doc::KeyPath;
use super::{syntax_message, validate_root, Report};
use crate::config::{Config, ConfigError};

/// `[init]` keys an overlay may set: the ones read when they are used (at shutdown), not at boot.
pub const OVERLAY_INIT_KEYS: &[&str] = &["shutdown_drain", "shutdown_timeout"];

/// The baked config (`base`) with the overlay merged onto it, validated; its warnings, or every error.
pub(crate) fn parse_and_validate_layered(
    base: (&Path, &str),
    overlay: (&Path, &str),
) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let (base_path, base_text) = base;
    let (overlay_path, overlay_text) = overlay;
    let start = base_text.len() + 1;
    let combined = format!("{base_text}\n{overlay_text}");
    let mut report = Report::new(base_path, &combined);
    report.second = Some((overlay_path.to_path_buf(), start));
    let (base_table, base_errors) = DeTable::parse_recoverable(base_text);
    let (overlay_table, overlay_errors) = DeTable::parse_recoverable(overlay_text);
    // As in a single file, only the first syntax error of each is reliable.
    for (errors, text, shift) in [
        (&base_errors, base_text, 0),
        (&overlay_errors, overlay_text, start),
    ] {
        if let Some(e) = errors.first() {
            let span = e.span().unwrap_or(0..0);
            let message = syntax_message(text, e.message(), span.clone());
            report.error(span.start + shift, &KeyPath::root(), message);
        }
    }
    if !report.is_empty() {
        return Err(report.into_errors());
    }
    let overlay_root = shifted(
        Spanned::new(
            overlay_table.span(),
            DeValue::Table(overlay_table.into_inner()),
        ),
        start,
    );
    // Refused `[init]` keys are reported with whatever else is wrong; the result is an error either way.
    check_overlay_init(&overlay_root, &mut report);
    let mut root = Spanned::new(base_table.span(), DeValue::Table(base_table.into_inner()));
    merge(&mut root, overlay_root);
    validate_root(root, report)
}

/// An overlay sets only the `[init]` keys that take effect after boot; the rest are baked into the image.
fn check_overlay_init(root: &Spanned<DeValue<'_>>, report: &mut Report<'_>) {
    let DeValue::Table(top) = root.get_ref() else {
        return;
    };
    let Some(init) = top.get("init") else {
        return;
    };
    let path = KeyPath::root().key("init");
    let DeValue::Table(keys) = init.get_ref() else {
        return; // the section's own check says what `init` must be
    };
    for key in keys.keys() {
        let name: &str = key.get_ref();
        if !OVERLAY_INIT_KEYS.contains(&name) {
            report.error(
                key.span().start,
                &path.key(name),
                format!(
                    "[init] {name} cannot be set per launch: it takes effect at boot, before user data is read; \
                     only {} can",
                    OVERLAY_INIT_KEYS.join(" and ")
                ),
            );
        }
    }
}

/// Merge `over` onto `base`: tables key by key, anything else replaced.
fn merge<'i>(base: &mut Spanned<DeValue<'i>>, over: Spanned<DeValue<'i>>) {
    let both_tables = matches!(
        (base.get_ref(), over.get_ref()),
        (DeValue::Table(_), DeValue::Table(_))
    );
    if !both_tables {
        *base = over;
        return;
    }
    let (DeValue::Table(into), DeValue::Table(from)) = (base.get_mut(), over.into_inner()) else {
        return;
    };
    for (key, value) in from {
        match into.get_mut(key.get_ref().as_ref()) {
            Some(existing) => merge(existing, value),
            None => {
                into.insert(key, value);
            }
        }
    }
}

/// The same value with every span moved `by` bytes on.
fn shifted(value: Spanned<DeValue<'_>>, by: usize) -> Spanned<DeValue<'_>> {
    let span = shift(value.span(), by);
    let inner = match value.into_inner() {
        DeValue::Table(table) => DeValue::Table(
            table
                .into_iter()
                .map(|(k, v)| {
                    let key_span = shift(k.span(), by);
                    (Spanned::new(key_span, k.into_inner()), shifted(v, by))
                })
                .collect(),
        ),
        DeValue::Array(array) => {
            DeValue::Array(array.into_iter().map(|v| shifted(v, by)).collect())
        }
        other => other,
    };
    Spanned::new(span, inner)
}

fn shift(span: Range<usize>, by: usize) -> Range<usize> {
    span.start + by..span.end + by
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAKED: &str = "[init]\nlogs_dir = \"/logs\"\n\
        [service.app]\ncommand = [\"app\"]\nreplicas = 3\nenvironment = { A = \"1\", B = \"2\" }\n\
        [proxy]\nlisten = [\"127.0.0.1:8080\"]\n\
        [[proxy.server]]\nserver_name = [\"baked.example\"]\n";

    fn layered(overlay: &str) -> Result<Config, Vec<String>> {
        parse_and_validate_layered(
            (Path::new("baked.toml"), BAKED),
            (Path::new("user-data"), overlay),
        )
        .map(|(config, _)| config)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn tables_merge_key_by_key_and_arrays_replace() {
        let config = layered(
            "[service.app]\nreplicas = 5\nenvironment = { B = \"two\", C = \"3\" }\n\
             [service.worker]\ncommand = [\"worker\"]\n\
             [proxy]\nextra_server_names = [\"alb.example\"]\n\
             [[proxy.server]]\nserver_name = [\"launch.example\"]\n\
             [init]\nshutdown_drain = \"40s\"\n",
        )
        .unwrap();
        let app = &config.service["app"];
        assert_eq!(app.replicas, 5);
        assert_eq!(app.command, ["app"], "keys the overlay does not set stay");
        let env: Vec<(&str, &str)> = app
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", "two"), ("C", "3")]);
        assert!(config.service.contains_key("worker"));
        let proxy = config.proxy.unwrap();
        assert_eq!(proxy.listen, ["127.0.0.1:8080"]);
        assert_eq!(proxy.extra_server_names, ["alb.example"]);
        assert_eq!(proxy.server.len(), 1);
        assert_eq!(proxy.server[0].server_name, ["launch.example"]);
        assert_eq!(config.init.shutdown_drain.0.as_secs(), 40);
        assert_eq!(config.init.logs_dir, Path::new("/logs"));
    }

    #[test]
    fn errors_point_into_the_file_that_set_the_value() {
        let errors = layered("\n[service.app]\nreplicas = \"many\"\n").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("user-data:3:12: service.app.replicas:"),
            "{errors:?}"
        );
        // A service the overlay adds without a command; an unknown key; a dependency on nothing.
        let errors =
            layered("[service.worker]\nafter = [\"nothing\"]\n[service.app]\ncomand = [\"x\"]\n")
                .unwrap_err();
        assert!(
            errors.iter().all(|e| e.starts_with("user-data:")),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("service.app.comand")),
            "{errors:#?}"
        );
        assert!(errors.iter().any(|e| e.contains("nothing")), "{errors:#?}");
    }

    #[test]
    fn syntax_errors_and_boot_time_init_keys_are_refused() {
        let errors = layered("[service.app]\nreplicas = \n").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("user-data:2:"), "{errors:?}");
        let errors = layered("[init]\nlogs_dir = \"/tmp\"\nshutdown_drain = \"5s\"\n").unwrap_err();
        // (and the overlay's other errors still come with it)
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "user-data:2:1: init.logs_dir: [init] logs_dir cannot be set per launch"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn an_empty_overlay_is_the_baked_config() {
        let baked = super::super::parse_and_validate(Path::new("baked.toml"), BAKED)
            .unwrap()
            .0;
        assert_eq!(layered("").unwrap(), baked);
        assert_eq!(layered("# nothing per launch\n").unwrap(), baked);
    }
}
