//! Command line → settings → telemetry → the command (`cli/`).

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use candystore::config::Settings;
use candystore::telemetry;

fn main() -> ExitCode {
    let help = format!("{}\n{}", Settings::help(), cli::EXIT_CODES);
    let matches = cli::Cli::command().after_help(help).get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("candystore: {e}");
            return cli::Exit::Usage.into();
        }
    };
    let serving = matches!(cli.command, cli::Command::Serve);
    // A command says what it did on stdout: its log speaks only of what went
    // wrong, unless LOG_LEVEL asks for more than its default.
    let level = if serving || settings.log_level != "info" {
        settings.log_level.as_str()
    } else {
        "warn"
    };
    telemetry::init(level, settings.log_format, serving);
    if !serving {
        // `candystore dead-letters list | head` ends quietly when head does,
        // as other commands of a shell do, instead of panicking on a closed pipe.
        // (`serve` keeps Rust's default: a write to a closed socket is an error.)
        // SAFETY: resetting a signal's disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("candystore: cannot start the runtime: {e}");
            return cli::Exit::Failed.into();
        }
    };
    cli::exit_status(runtime.block_on(cli::run(cli.command, settings)), serving)
}
