//! `bulkhead policy …`

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory and lint it.
    Check,
}

pub fn run(_cmd: PolicyCommand) -> ExitCode {
    ExitCode::SUCCESS
}
