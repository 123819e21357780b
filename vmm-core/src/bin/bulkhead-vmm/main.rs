//! `bulkhead-vmm`: one partition per process. No GUI dependencies; builds static.
//!
//! - `bulkhead-vmm partition --control-fd N`: the supervisor's partition process; all it
//!   runs with arrives over the control socket (see `vmm_core::launch`).
//! - `bulkhead-vmm run …`: one partition, bare, from flags (scripts, tests, benchmarks).
//! - `bulkhead-vmm check`: what this host's /dev/kvm can run.

mod args;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use args::{VmmCli, VmmCommand};
use vmm_core::hostcheck::{self, Virtualization};
use vmm_core::partition::{bare, supervised};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match VmmCli::parse().command {
        VmmCommand::Check => check(),
        VmmCommand::Partition { control_fd } => match supervised::run(control_fd) {
            Ok(code) => code,
            Err(e) => fail(&e),
        },
        VmmCommand::Run(args) => run(&args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn fail(e: &dyn std::fmt::Display) -> i32 {
    eprintln!("bulkhead-vmm: {e}");
    1
}

/// Exit codes: 0 powered off or rebooted, 1 could not start, 3 crashed, 4 timeout.
fn run(args: &args::RunArgs) -> i32 {
    // Dropped (helpers killed and reaped) after the partition has finished.
    let (launch, files, _net_helpers) = match args.launch() {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let options = match args.bare_options() {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    match bare::run(&launch, files, options) {
        Ok(reason) => {
            let _ = std::io::stdout().flush();
            let (code, text) = bare::exit_code(&reason);
            eprintln!("bulkhead-vmm: {text}");
            code
        }
        Err(e) => fail(&e),
    }
}

fn check() -> i32 {
    match hostcheck::open_kvm() {
        Ok((_, Virtualization::Hardware)) => {
            println!(
                "hardware virtualization available: partitions with stock Linux guests can run"
            );
            0
        }
        Ok((_, Virtualization::Software { name })) => {
            println!("{}", hostcheck::HostError::SoftwareOnly { name });
            2
        }
        Err(e) => {
            println!("{e}");
            1
        }
    }
}
