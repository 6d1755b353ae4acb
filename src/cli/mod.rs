//! The command line: without a subcommand the binary serves (flags in [`crate::config::Args`]); `spool ...`,
//! `check`, `send-test` and `redrive` run the operator tools of [`spool`], [`check`], [`send_test`] and [`redrive`]. `main.rs` only
//! parses and dispatches.

pub mod check;
pub mod redrive;
pub mod send_test;
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
    /// Check a configuration against Kafka and the spool directory, without serving.
    ///
    /// Takes the flags and environment of serving. Never writes to the topics. One line per check; exits 1 if
    /// any fails.
    Check(Box<check::CheckArgs>),
    /// Post test callbacks to a forwarder as Tencent would; exit 1 unless every answer is OK.
    ///
    /// Posts the documented Group.CallbackSendMsgException sample (fresh Random and EventTime) with Tencent's
    /// query parameters, signed when a token is given; prints each answer. Plain http:// only.
    SendTest(send_test::SendTestArgs),
    /// Publish the dead letters that today's parser accepts, as live callbacks of the same bodies would be.
    ///
    /// Takes the flags and environment of serving. Sign and RequestTime are not verified again (the record was
    /// authenticated when it arrived); the SdkAppid must be a configured app. Ids redriven are kept in
    /// --state-file, so a second run publishes nothing twice.
    Redrive(Box<redrive::RedriveArgs>),
}

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A spool tool failed.
    #[error(transparent)]
    Spool(#[from] spool::SpoolToolError),
    /// `check` could not run.
    #[error(transparent)]
    Check(#[from] check::CheckError),
    /// `send-test` could not send.
    #[error(transparent)]
    SendTest(#[from] send_test::SendTestError),
    /// `redrive` stopped.
    #[error(transparent)]
    Redrive(#[from] redrive::RedriveError),
}

/// Runs a subcommand; its exit code on success (a tool may report a finding with a non-zero code).
pub fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Spool(command) => Ok(spool::run(command)?),
        Command::Check(args) => Ok(check::run(*args)?),
        Command::SendTest(args) => Ok(send_test::run(args)?),
        Command::Redrive(args) => Ok(redrive::run(*args)?),
    }
}
