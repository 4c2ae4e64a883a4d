//! Command-line interface (the contract in shared/DESIGN.md).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "stackinit",
    version,
    about = "Boot, supervise and serve a web stack from one binary."
)]
pub struct Cli {
    /// Control socket (default: $STACKINIT_SOCKET, else /run/stackinit/control.sock).
    #[arg(long, global = true, env = "STACKINIT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// How long a control command waits for stackinit's answer: "10s", "500ms"; 0 waits forever.
    /// `logs --follow` waits this long for the first answer, then follows until the log ends.
    #[arg(long, global = true, env = "STACKINIT_TIMEOUT", default_value = "10s")]
    pub timeout: String,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArg {
    /// Config file (default: /etc/stackinit/stackinit.toml; `run` falls back to the built-in demo).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor in the foreground (under systemd, in a terminal, in tests).
    Run(ConfigArg),
    /// Run as the first process of a machine or PID namespace (what PID 1 does with no arguments).
    Init(ConfigArg),
    /// Validate a config: exit 0, or print FILE:LINE:COL: messages and exit 1.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Validate this per-launch overlay (EC2 user data) merged onto the config, before launching with it.
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
    },
    /// Fetch this instance's user data from IMDS into `[init] user_data` (the per-launch overlay), say on the
    /// console whether it applies, and reload the running stack with it. A boot job of the image.
    UserData {
        #[command(flatten)]
        config: ConfigArg,
        /// Only write the file; do not ask the running stack to reload.
        #[arg(long)]
        no_reload: bool,
    },
    /// Show services: a table, or `{"services": [...]}` with --json.
    Status {
        /// A service (`app`) or replica (`app@1`).
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped service.
    Start { name: String },
    /// Stop a service (stop signal, grace period, then SIGKILL to its process group).
    Stop { name: String },
    /// Restart a service; replicas are replaced one at a time.
    Restart {
        name: String,
        /// Wait until every replica is replaced and ready (exit 0), the rollout halts (exit 1), or
        /// DURATION passes (exit 5; default 10m), as `kubectl rollout status` does.
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "10m")]
        wait: Option<String>,
    },
    /// Re-read the config and apply the difference (`--dry-run`: only say what would change, as `diff`).
    Reload {
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: the plan as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// What `reload` would do, service by service, without doing it: against the running stack's own
    /// config file, or against `--config PATH`.
    Diff {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Convert a supervisord configuration and nginx sites into a commented stackinit.toml that passes
    /// `stackinit check`; list what was not converted, with FILE:LINE and why.
    Import {
        /// supervisord files: supervisord.conf (its [include] files are read too) or conf.d/*.conf.
        #[arg(long, num_args = 1.., value_name = "FILE")]
        supervisor: Vec<PathBuf>,
        /// nginx files: sites (sites-enabled/*) or a whole nginx.conf; `include` is followed.
        #[arg(long, num_args = 1.., value_name = "FILE")]
        nginx: Vec<PathBuf>,
        /// Where to write the config (default: standard output).
        #[arg(long, short, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Print a service's log.
    Logs {
        name: String,
        /// Show stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Keep printing new lines as they are written.
        #[arg(long, short)]
        follow: bool,
        /// How many lines from the end to print first.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
    },
    /// Stop all services in order and power off (or reboot, or just exit when not PID 1).
    Shutdown {
        #[arg(long)]
        reboot: bool,
    },
    /// Print config: `--default` prints the built-in demo stack.
    Config {
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The HTTP(S) proxy; init runs it as the `proxy` service with its sockets handed in.
    #[command(hide = true)]
    Proxy(ConfigArg),
    /// A tiny pre-forked demo worker serving its LISTEN_FDS socket, for the built-in demo stack.
    #[command(hide = true)]
    DemoWorker,
    /// Start this replica by forking it from a template process listening on SOCKET (see stackinit_wsgi.py
    /// --template): its stdio, LISTEN_FDS sockets and environment go to the forked worker, which becomes
    /// the replica's main process.
    ForkFrom {
        /// The template's socket.
        socket: std::path::PathBuf,
    },
    /// Start reading the files listed in LIST (one path per line) into the page cache, and exit: a boot-time
    /// job that warms a cold disk for the app (see image/install.sh, which records the list).
    Readahead {
        /// The file list.
        list: std::path::PathBuf,
    },
    /// A service's first step when it has `secrets`: fetch them (the request is in STACKINIT_SECRETS),
    /// add them to the environment and exec PROGRAM with ARGV (argv[0] first). Init runs it.
    #[command(hide = true)]
    SecretsExec {
        program: std::path::PathBuf,
        #[arg(last = true)]
        argv: Vec<std::ffi::OsString>,
    },
}
