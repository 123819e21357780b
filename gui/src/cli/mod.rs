//! The command line. Without a subcommand `bulkhead` opens the desktop app.

pub mod bundle;
pub mod dispvm;
pub mod image;
pub mod manpage;
pub mod policy;
pub mod ps;
pub mod run;
pub mod template;
pub mod up;

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
    /// Start the configured partitions headless and print their states.
    Up(up::UpArgs),
    /// Start disposables of a partition's template from its warm snapshot.
    Dispvm(dispvm::DispvmArgs),
    /// List this user's running partitions: pid, host memory, cgroup.
    Ps(ps::PsArgs),
    /// Build or locate the guest image (Debian kernel + initramfs) in the cache.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Build, list and remove templates: read-only Debian root images for partitions.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Write a stopped partition (config, rules naming it, private disk) to one encrypted file.
    Export(bundle::ExportArgs),
    /// Add a partition from a file made by `bulkhead export`, checking everything first.
    Import(bundle::ImportArgs),
    /// Write the man pages into a directory (used by packaging).
    #[command(hide = true)]
    Man(manpage::ManArgs),
}

pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Policy(cmd)) => policy::run(cmd),
        Some(Command::Up(args)) => up::run(args),
        Some(Command::Dispvm(args)) => dispvm::run(args),
        Some(Command::Ps(args)) => ps::run(args),
        Some(Command::Image(cmd)) => image::run(cmd),
        Some(Command::Template(cmd)) => template::run(cmd),
        Some(Command::Export(args)) => bundle::export(args),
        Some(Command::Import(args)) => bundle::import(args),
        Some(Command::Man(args)) => manpage::run(args),
        None => bulkhead::supervised::run_desktop(),
    }
}

/// The policy in `dir` (default: the user's) and the engine partitions run on, as `up`
/// and `dispvm` both start: a policy that does not load is printed and ends the command,
/// a host that cannot run Linux guests is said once.
pub(crate) fn policy_and_engine(
    dir: Option<std::path::PathBuf>,
    test_card: bool,
) -> Result<
    (
        std::path::PathBuf,
        isolation_policy::Policy,
        bulkhead_supervisor::launch::Engine,
    ),
    ExitCode,
> {
    use bulkhead_supervisor::launch::Engine;
    let dir = dir.unwrap_or_else(isolation_policy::default_policy_dir);
    let policy = match isolation_policy::Policy::load(&dir) {
        Ok((policy, _)) => policy,
        Err(e) => {
            eprintln!("bulkhead: {e}");
            return Err(ExitCode::from(1));
        }
    };
    let (engine, notice) = if test_card {
        (Engine::TestCard, None)
    } else {
        Engine::for_host()
    };
    if let Some(n) = notice {
        eprintln!("bulkhead: {n}");
    }
    Ok((dir, policy, engine))
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// From now on Ctrl-C only marks the command interrupted ([`interrupted`]), so `up` and
/// `dispvm` can stop their partitions before they exit.
pub(crate) fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
    // `on_interrupt` has the C signature `signal` expects.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        )
    };
}

/// Whether Ctrl-C came since [`catch_interrupt`].
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}
