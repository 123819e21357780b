//! The command line. Without a subcommand `bulkhead` opens the desktop app.

pub mod policy;
pub mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Isolated KVM partitions on your desktop, each framed in its trust colour"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one partition headless (no window): boot a kernel, log serial, save screenshots.
    Run(run::RunArgs),
    /// Check and explain the partition policy.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Policy(cmd)) => policy::run(cmd),
        None => {
            eprintln!("bulkhead: the desktop app is not built yet; try `bulkhead run --help`");
            ExitCode::from(2)
        }
    }
}
