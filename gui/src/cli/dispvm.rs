//! `bulkhead dispvm [TARGET]`: disposables of a partition's template, headless, from
//! its warm snapshot (`bulkhead_supervisor::disposable`): the first one ever cold-boots
//! to its app-ready marker and is snapshotted, later ones restore from it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead_supervisor::{ProcessState, Supervisor};

#[derive(Debug, clap::Args)]
pub struct DispvmArgs {
    /// `@dispvm` (the first partition with `kind = "disposable"`), `@dispvm:NAME` or a
    /// partition NAME: whose template, app and settings the disposables get.
    #[arg(default_value = "@dispvm")]
    pub target: String,
    /// How many disposables to start side by side.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub count: u32,
    /// Policy directory (default: $BULKHEAD_POLICY_DIR, ~/.config/bulkhead, /etc/bulkhead).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Run the built-in test card instead of Linux.
    #[arg(long)]
    pub test_card: bool,
    /// Stop them after this many seconds (default: run until Ctrl-C or they end).
    #[arg(long = "for")]
    pub duration: Option<u64>,
}

pub fn run(args: DispvmArgs) -> ExitCode {
    let (_, policy, engine) = match super::policy_and_engine(args.dir, args.test_card) {
        Ok(found) => found,
        Err(code) => return code,
    };
    // A plain partition name is a disposable of that partition.
    let target = match args.target.starts_with('@') {
        true => args.target.clone(),
        false => format!("@dispvm:{}", args.target),
    };
    let supervisor = match Supervisor::new(Vec::new()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead: {e}");
            return ExitCode::from(1);
        }
    };
    super::catch_interrupt();
    let mut names = Vec::new();
    for _ in 0..args.count {
        let started = Instant::now();
        match supervisor.start_dispvm_target(&policy, &target, engine) {
            Ok(Some(d)) => {
                let how = match d.restored {
                    true => "restored from its template's snapshot",
                    false => "cold boot; snapshotted at its app-ready marker for the next ones",
                };
                println!(
                    "{}: {how}, started in {} ms",
                    d.name,
                    started.elapsed().as_millis()
                );
                names.push(d.name);
            }
            Ok(None) => {
                eprintln!(
                    "bulkhead: `{}` is not a disposable target: write @dispvm, @dispvm:NAME or a partition name",
                    args.target
                );
                break;
            }
            Err(e) => {
                eprintln!("bulkhead: {e}");
                break;
            }
        }
    }
    if names.is_empty() {
        return ExitCode::from(1);
    }
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let alive = names.iter().any(|n| {
            supervisor.status(n).is_ok_and(|s| {
                !matches!(
                    s.state,
                    ProcessState::Crashed { .. }
                        | ProcessState::Exited { .. }
                        | ProcessState::Stopped
                )
            })
        });
        if !alive || super::interrupted() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in &names {
        let state = supervisor.status(name).map(|s| s.state);
        // Its disk (and the first one's working copy) goes with its process.
        let _ = supervisor.remove(name, Duration::from_secs(5));
        println!("{name}: {state:?}, removed");
    }
    ExitCode::SUCCESS
}
