//! Entry point: parse the command line and dispatch: serve (no subcommand) or run an operator tool.

use std::process::ExitCode;

use clap::Parser;
use im_callback_forwarder::cli::{self, Cli};

fn main() -> anyhow::Result<ExitCode> {
    let Cli { serve, command } = Cli::parse();
    match command {
        None => cli::serve::serve(serve).map(|()| ExitCode::SUCCESS),
        Some(command) => Ok(cli::run(command)?),
    }
}
