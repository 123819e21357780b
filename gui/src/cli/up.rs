//! `bulkhead up`: the configured partitions, headless, through the same supervisor the
//! desktop app uses.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead_supervisor::guest_image;
use bulkhead_supervisor::launch::{launch_spec, Engine};
use bulkhead_supervisor::{usage, vm_process, PartitionStatus, ProcessState, Supervisor};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Policy directory (default: $BULKHEAD_POLICY_DIR, ~/.config/bulkhead, /etc/bulkhead).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Start every partition, not only those with `autostart = true`.
    #[arg(long)]
    pub all: bool,
    /// Run the built-in test card in every partition instead of Linux.
    #[arg(long)]
    pub test_card: bool,
    /// Stop everything after this many seconds (default: run until Ctrl-C).
    #[arg(long = "for")]
    pub duration: Option<u64>,
}

fn describe(state: &ProcessState) -> String {
    match state {
        ProcessState::Crashed { reason } => format!("crashed: {reason}"),
        ProcessState::Exited { status } => format!("exited ({status})"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// State, pid, host memory and cgroup of each partition, then what is not governed.
fn print_statuses(statuses: &[(String, PartitionStatus)]) {
    println!("{}", super::ps::header());
    for (name, st) in statuses {
        let rss = st.pid.and_then(|p| usage::rss_kib(vm_process(p)));
        let cgroup = st
            .resources
            .cgroup
            .as_ref()
            .map_or("-".to_string(), |c| c.display().to_string());
        // The state may be long (a crash reason): last, after the fixed columns.
        let state = describe(&st.state);
        let (short, long) = match state.split_once(": ") {
            Some((s, why)) => (s.to_string(), Some(why)),
            None => (state.clone(), None),
        };
        let balloon = st.stats.and_then(|s| s.balloon_mib);
        println!(
            "{}",
            super::ps::row(name, &short, st.pid, rss, balloon, &cgroup)
        );
        if let Some(why) = long {
            println!("  {name}: {why}");
        }
        if let Some(badge) = st.resources.badge() {
            println!("  {name}: {badge}");
        }
    }
    println!();
}

fn settled(state: &ProcessState) -> bool {
    !matches!(state, ProcessState::Booting | ProcessState::Stopped)
}

pub fn run(args: UpArgs) -> ExitCode {
    let (dir, policy, engine) = match super::policy_and_engine(args.dir, args.test_card) {
        Ok(found) => found,
        Err(code) => return code,
    };
    if engine == Engine::Linux {
        // Built once here, with its progress on screen, rather than silently by the
        // first partition's start.
        if let Err(e) = guest_image::ensure_default(&mut |s| eprintln!("bulkhead: {s}")) {
            eprintln!("bulkhead: the default guest image: {e}");
            return ExitCode::from(1);
        }
    }
    let specs: Vec<_> = policy
        .specs()
        .iter()
        .filter(|s| args.all || s.autostart)
        .map(|s| launch_spec(s, engine))
        .collect();
    if specs.is_empty() {
        eprintln!(
            "bulkhead: no partition to start in {} (use --all)",
            dir.display()
        );
        return ExitCode::from(1);
    }
    let supervisor = match Supervisor::new(specs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead: {e}");
            return ExitCode::from(1);
        }
    };
    // Balloons inflate when the host runs short, deflate when it has plenty.
    if let Err(e) = supervisor.start_memory_balancing() {
        eprintln!("bulkhead: memory balancing not started: {e}");
    }
    super::catch_interrupt();
    for e in supervisor.start_all() {
        eprintln!("bulkhead: {e}");
    }
    // File copies and open-ins between partitions: decided by the policy; with nobody
    // to ask, a question goes to the one target the policy allows outright, if any.
    let audit = bulkhead::app::audit_log::default_audit_dir();
    let mut broker = bulkhead_supervisor::services::ServiceBroker::new(
        Some(dir.clone()),
        audit.as_deref(),
        engine,
    );
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    let mut printed = Vec::new();
    loop {
        let mut events = broker.poll(&supervisor);
        events.extend(broker.answer_unattended(&supervisor));
        for event in events {
            if let bulkhead_supervisor::services::ServiceEvent::Status {
                partition,
                topic,
                text,
                ..
            } = event
            {
                println!("{partition}: {topic}: {text}");
            }
        }
        let statuses = supervisor.statuses();
        let all_settled = statuses.iter().all(|(_, st)| settled(&st.state));
        let states: Vec<(String, String)> = statuses
            .iter()
            .map(|(name, st)| (name.clone(), describe(&st.state)))
            .collect();
        if states != printed && (all_settled || started.elapsed() > Duration::from_secs(60)) {
            print_statuses(&statuses);
            printed = states;
        }
        if super::interrupted() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    supervisor.stop_all(Duration::from_secs(5));
    print_statuses(&supervisor.statuses());
    ExitCode::SUCCESS
}
