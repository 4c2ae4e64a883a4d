//! Loading and validating the TOML config.
//!
//! `load` returns every problem it can find, each as `FILE:LINE:COL: key: message`, so `stackinit check`
//! and a failed `reload` show the user all of them at once.
#![forbid(unsafe_code)]

pub mod diff;
mod schema;
pub mod secrets;
pub mod units;
mod validate;
pub mod values;

use std::fmt;
use std::path::{Path, PathBuf};

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

/// Read and validate a config file; the config and its warnings.
fn load_checked(path: &Path) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            key: String::new(),
            message: format!("cannot read config: {e}"),
        }]
    })?;
    validate::parse_and_validate(path, &text)
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

/// `stackinit check`: print every error as `FILE:LINE:COL: key: message`, exit 1 if there are any.
pub fn check_command(arg: crate::cli::ConfigArg) -> std::process::ExitCode {
    match load_or_demo(&arg) {
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
            println!(
                "{name}: ok ({} services, {replicas} processes{})",
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
