//! The stackinit binary: a thin dispatcher over the library's roles (init, supervisor, proxy, client).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use stackinit::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(stackinit::paths::default_control_socket);
    match cli.command {
        None if std::process::id() == 1 => stackinit::init::main(Default::default()),
        None => {
            eprintln!("stackinit: not PID 1; use `stackinit run` to supervise in the foreground (see --help)");
            ExitCode::from(2)
        }
        Some(Command::Init(config)) => stackinit::init::main(config),
        Some(Command::Run(config)) => stackinit::stack::run_foreground(config),
        Some(Command::Check { config, user_data }) => {
            stackinit::config::check_command(config, user_data.as_deref())
        }
        Some(Command::UserData { config, no_reload }) => {
            stackinit::user_data::main(config, no_reload, cli.socket.as_deref(), &cli.timeout)
        }
        Some(Command::Config { default, config }) => {
            stackinit::config::print_command(default, config)
        }
        Some(Command::Proxy(config)) => stackinit::proxy::main(config),
        Some(Command::DemoWorker) => stackinit::demo::worker_main(),
        Some(Command::ForkFrom { socket }) => stackinit::fork_from::main(&socket),
        Some(Command::Readahead { list }) => stackinit::readahead::main(&list),
        Some(Command::SecretsExec { program, argv }) => {
            stackinit::secrets::exec_main(&program, &argv)
        }
        Some(Command::Import {
            supervisor,
            nginx,
            out,
        }) => stackinit::import::main(&supervisor, &nginx, out.as_deref()),
        Some(command) => stackinit::control::client::main(&socket, &cli.timeout, command),
    }
}
