//! `bulkhead image …`

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the default guest image into the cache (reuses what is there).
    Build,
}

pub fn run(_cmd: ImageCommand) -> ExitCode {
    ExitCode::SUCCESS
}
