//! `bulkhead up`

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct UpArgs {}

pub fn run(_args: UpArgs) -> ExitCode {
    ExitCode::SUCCESS
}
