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
use vmm_core::partition::{self, bare, supervised};

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
        VmmCommand::Restore(args) => restore(&args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn fail(e: &dyn std::fmt::Display) -> i32 {
    eprintln!("bulkhead-vmm: {e}");
    1
}

/// Exit codes: 0 powered off or rebooted, 1 could not start (a sandbox step failed
/// included), 3 crashed, 4 timeout.
fn run(args: &args::RunArgs) -> i32 {
    let mut clock = bare::PhaseClock::start();
    let sandbox = if args.no_sandbox {
        bare::Sandbox::Off
    } else {
        // First thing, single-threaded, before any VM exists.
        match partition::enter_pid_namespace() {
            Ok(pid_gap) => bare::Sandbox::Confine { pid_gap },
            Err(e) => return fail(&format!("sandbox: entering a PID namespace: {e}")),
        }
    };
    // Network helpers (passt, the relay) end with the partition: see the end of run().
    let (launch, files, net_helpers) = match args.launch() {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let options = match args.bare_options(sandbox, &launch) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    clock.mark("PID namespace, files, network helpers");
    let code = ended(bare::run(&launch, files, options, clock));
    if args.no_sandbox {
        // Killed and reaped.
        drop(net_helpers);
    } else {
        // A confined process may not kill or wait (seccomp). It need not: the helpers
        // live in its PID namespace, which ends with it, and both end by themselves
        // when its socket closes.
        std::mem::forget(net_helpers);
    }
    code
}

/// The exit code and the last line of a bare run or restore.
fn ended(result: Result<bare::Outcome, bare::BareError>) -> i32 {
    match result {
        Ok(bare::Outcome::Stopped(reason)) => {
            let _ = std::io::stdout().flush();
            let (code, text) = bare::exit_code(&reason);
            eprintln!("bulkhead-vmm: {text}");
            code
        }
        Ok(bare::Outcome::Snapshotted(dir)) => {
            let _ = std::io::stdout().flush();
            eprintln!("bulkhead-vmm: partition snapshotted to {}", dir.display());
            0
        }
        Err(e) => fail(&e),
    }
}

/// `restore DIR`: exit codes as `run`'s; 1 also when the snapshot is refused.
fn restore(args: &args::RestoreArgs) -> i32 {
    let mut clock = bare::PhaseClock::start();
    let sandbox = if args.no_sandbox {
        bare::Sandbox::Off
    } else {
        match partition::enter_pid_namespace() {
            Ok(pid_gap) => bare::Sandbox::Confine { pid_gap },
            Err(e) => return fail(&format!("sandbox: entering a PID namespace: {e}")),
        }
    };
    clock.mark("PID namespace");
    let (kvm, mut snapshot, config, options) = match args.open(sandbox) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    clock.mark("snapshot read");
    ended(bare::restore(&kvm, &mut snapshot, config, options, clock))
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
