//! The command line: without a subcommand the binary serves (flags in [`crate::config::Args`]); `spool ...`
//! runs the operator tools of [`spool`]. `main.rs` only parses and dispatches.

pub mod serve;
pub mod spool;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Args;

/// The whole command line.
#[derive(Parser)]
#[command(
    name = "im-callback-forwarder",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Serving flags (used when no subcommand is given).
    #[command(flatten)]
    pub serve: Args,
    /// An operator tool instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Inspect a disk spool (read-only; safe while a forwarder serves from it).
    #[command(subcommand)]
    Spool(spool::SpoolCommand),
}

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A spool tool failed.
    #[error(transparent)]
    Spool(#[from] spool::SpoolToolError),
}

/// Runs a subcommand; its exit code on success (a tool may report a finding with a non-zero code).
pub fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Spool(command) => Ok(spool::run(command)?),
    }
}
