//! Loading and validating the TOML config.
//!
//! `load` returns every problem it can find, each as `FILE:LINE:COL: key: message`, so `stackinit check`
//! and a failed `reload` show the user all of them at once.
#![forbid(unsafe_code)]

pub mod diff;
pub mod env_file;
mod overlay;
mod schema;
pub mod secrets;
pub mod units;
mod validate;
pub mod values;

use std::fmt;
use std::path::{Path, PathBuf};

pub use overlay::MAX_OVERLAY_BYTES;
pub use schema::*;
pub use units::{Bytes, Mode, Percent, Secs};
pub use validate::MIN_SECRET_OFF_LOOPBACK;

/// One problem in a config file, located by line and column (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// Dotted path of the offending key, e.g. `service.app.after`. Empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// The embedded demo stack that `stackinit run` uses when there is no config file.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// A valid config, where it came from (`None`: the built-in demo), and what `check` would warn about.
pub struct Loaded {
    pub path: Option<PathBuf>,
    pub config: Config,
    /// `FILE:LINE:COL: key: warning: ...`, for `check` to print and startup to log.
    pub warnings: Vec<ConfigError>,
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    load_checked(path).map(|(config, _)| config)
}

/// Read and validate a config file, with its user-data overlay merged if `[init] user_data` names one that
/// exists; the config and its warnings. A bad overlay is no error of the config: the baked config alone is
/// returned, with the overlay's errors in `Config::user_data` (nothing of it half-applied).
fn load_checked(path: &Path) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let text = read_config(path)?;
    let (mut config, warnings) = validate::parse_and_validate(path, &text)?;
    let Some(overlay_path) = config.init.user_data.clone() else {
        return Ok((config, warnings));
    };
    let overlay = match overlay::read(&overlay_path) {
        Ok(None) => return Ok((config, warnings)),
        Ok(Some(overlay)) => overlay,
        Err(error) => {
            config.user_data = Some(overlay::refused(&overlay_path, &[error]));
            return Ok((config, warnings));
        }
    };
    match validate::parse_and_validate_layered((path, &text), (&overlay_path, &overlay)) {
        Ok((mut merged, warnings)) => {
            merged.user_data = Some(UserData {
                path: overlay_path,
                errors: Vec::new(),
            });
            Ok((merged, warnings))
        }
        Err(errors) => {
            config.user_data = Some(overlay::refused(&overlay_path, &errors));
            Ok((config, warnings))
        }
    }
}

fn read_config(path: &Path) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            key: String::new(),
            message: format!("cannot read config: {e}"),
        }]
    })
}

/// `stackinit check --user-data FILE`: the config at `base` with FILE merged onto it, as a launch with that
/// user data would load it. Errors point into FILE where it set the value.
pub fn load_with_overlay(base: &Path, overlay_path: &Path) -> Result<Loaded, Vec<ConfigError>> {
    let text = read_config(base)?;
    let overlay = match overlay::read(overlay_path) {
        Ok(Some(overlay)) => overlay,
        Ok(None) => {
            return Err(vec![overlay::error_at_start(
                overlay_path,
                "no such file".into(),
            )])
        }
        Err(error) => return Err(vec![error]),
    };
    let (config, warnings) =
        validate::parse_and_validate_layered((base, &text), (overlay_path, &overlay))?;
    Ok(Loaded {
        path: Some(base.to_path_buf()),
        config,
        warnings,
    })
}

/// Parse and validate config text; `path` is only used to name the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    validate::parse_and_validate(path, text).map(|(config, _)| config)
}

/// The demo config with its paths made usable by the current user (root gets `/logs`).
pub fn demo_text() -> String {
    DEMO_CONFIG
        .replace(
            "@LOGS_DIR@",
            &crate::paths::demo_logs_dir().display().to_string(),
        )
        .replace(
            "@CONTROL_SOCKET@",
            &crate::paths::default_control_socket().display().to_string(),
        )
        .replace(
            "@RUNTIME_DIR@",
            &crate::paths::runtime_dir().display().to_string(),
        )
        // Root runs the workers unprivileged, as the AMI would; anyone else runs them as themselves.
        .replace(
            "@WORKER_USER@",
            if nix::unistd::geteuid().is_root() {
                "user = \"nobody\"\n"
            } else {
                ""
            },
        )
}

/// Which config file a command uses: the one given, else the system one if present.
/// `None` means "no file": `run` then uses the demo stack.
pub fn resolve_path(arg: &crate::cli::ConfigArg) -> Option<PathBuf> {
    if let Some(path) = &arg.config {
        return Some(path.clone());
    }
    let system = Path::new(crate::paths::DEFAULT_CONFIG);
    system.exists().then(|| system.to_path_buf())
}

/// Load the config a command names; with no file, the demo stack (named `<built-in demo>` in errors).
pub fn load_or_demo(arg: &crate::cli::ConfigArg) -> Result<Loaded, Vec<ConfigError>> {
    let (path, (config, warnings)) = match resolve_path(arg) {
        Some(path) => {
            let checked = load_checked(&path)?;
            (Some(path), checked)
        }
        None => (
            None,
            validate::parse_and_validate(Path::new("<built-in demo>"), &demo_text())?,
        ),
    };
    Ok(Loaded {
        path,
        config,
        warnings,
    })
}

/// `stackinit check`: print every error as `FILE:LINE:COL: key: message`, exit 1 if there are any. With
/// `--user-data FILE`, the config with that overlay merged, as a launch with it would run. Without it, an
/// overlay already at `[init] user_data` that would be refused counts as an error too.
pub fn check_command(
    arg: crate::cli::ConfigArg,
    user_data: Option<&Path>,
) -> std::process::ExitCode {
    let loaded = match (user_data, resolve_path(&arg)) {
        (Some(overlay), Some(base)) => load_with_overlay(&base, overlay),
        (Some(_), None) => Err(vec![ConfigError {
            file: PathBuf::from(crate::paths::DEFAULT_CONFIG),
            line: 1,
            col: 1,
            key: String::new(),
            message: "--user-data needs the baked config: no such file (name one with --config)"
                .into(),
        }]),
        (None, _) => load_or_demo(&arg),
    };
    let refused = loaded
        .as_ref()
        .ok()
        .and_then(|l| l.config.user_data.as_ref())
        .filter(|u| !u.errors.is_empty())
        .cloned();
    if let Some(refused) = refused {
        for e in &refused.errors {
            eprintln!("{e}");
        }
        eprintln!(
            "the user data at {} would be refused: the baked config would run without it",
            refused.path.display()
        );
        return std::process::ExitCode::FAILURE;
    }
    match loaded {
        Ok(Loaded {
            path,
            config,
            warnings,
        }) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            let name = path.map_or_else(
                || "<built-in demo>".to_string(),
                |p| p.display().to_string(),
            );
            let replicas: u32 = config.service.values().map(|s| s.replicas.max(1)).sum();
            let with = user_data.map_or_else(String::new, |p| format!(" with {}", p.display()));
            println!(
                "{name}{with}: ok ({} services, {replicas} processes{})",
                config.service.len(),
                if config.proxy.is_some() {
                    ", proxy"
                } else {
                    ""
                }
            );
            std::process::ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{} error{}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// `stackinit config --default` prints the built-in demo; `stackinit config` prints the file in use.
pub fn print_command(default: bool, arg: crate::cli::ConfigArg) -> std::process::ExitCode {
    if default {
        print!("{}", demo_text());
        return std::process::ExitCode::SUCCESS;
    }
    match resolve_path(&arg) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stackinit: cannot read {}: {e}", path.display());
                std::process::ExitCode::FAILURE
            }
        },
        None => {
            print!("{}", demo_text());
            std::process::ExitCode::SUCCESS
        }
    }
}
