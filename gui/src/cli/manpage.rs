//! `bulkhead manpage`

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ManArgs {}

pub fn run(_args: ManArgs) -> ExitCode {
    ExitCode::SUCCESS
}
