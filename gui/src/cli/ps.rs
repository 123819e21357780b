//! `bulkhead ps`: this user's partition processes as the host sees them (found by their
//! `bulkhead-vmm: NAME` title), whoever started them: the app or `bulkhead up`.

use std::process::ExitCode;

use bulkhead_supervisor::usage::{partition_processes, read_balloon_file, PartitionProcess};

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Also list the configured partitions that have no process (from this policy
    /// directory; default: $BULKHEAD_POLICY_DIR, ~/.config/bulkhead, /etc/bulkhead).
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// One table row; shared with `bulkhead up`'s status lines. The memory is the host's
/// (RSS), with the balloon when memory balancing has inflated it.
pub fn row(
    name: &str,
    state: &str,
    pid: Option<u32>,
    rss_kib: Option<u64>,
    balloon_mib: Option<u32>,
    cgroup: &str,
) -> String {
    let pid = pid.map_or("-".to_string(), |p| p.to_string());
    let mem = rss_kib.map_or("-".to_string(), |k| {
        bulkhead::app::memory_text(k / 1024, balloon_mib)
    });
    format!("{name:<12} {state:<10} {pid:>8} {mem:>10}  {cgroup}")
}

pub fn header() -> String {
    format!(
        "{:<12} {:<10} {:>8} {:>10}  CGROUP",
        "NAME", "STATE", "PID", "MEMORY"
    )
}

pub fn run(args: PsArgs) -> ExitCode {
    let running = partition_processes();
    println!("{}", header());
    for p in &running {
        print_process(p);
    }
    if args.all {
        let dir = args
            .dir
            .unwrap_or_else(isolation_policy::default_policy_dir);
        match isolation_policy::Policy::load(&dir) {
            Ok((policy, _)) => {
                for p in policy.partitions() {
                    if !running.iter().any(|r| r.name == p.name) {
                        println!("{}", row(&p.name, "stopped", None, None, None, "-"));
                    }
                }
            }
            Err(e) => {
                eprintln!("bulkhead: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn print_process(p: &PartitionProcess) {
    // Recorded beside the partition's log by the supervisor that runs it.
    let balloon = bulkhead_supervisor::log::default_log_dir()
        .and_then(|dir| read_balloon_file(&dir, &p.name, p.pid))
        .map(|f| f.actual_mib);
    println!(
        "{}",
        row(
            &p.name,
            "running",
            Some(p.pid),
            p.rss_kib,
            balloon,
            p.cgroup.as_deref().unwrap_or("-"),
        )
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_the_balloon_beside_the_host_memory_when_inflated() {
        let r = row(
            "work",
            "running",
            Some(42),
            Some(612 * 1024),
            Some(400),
            "-",
        );
        assert!(r.contains("612 MiB (balloon 400 MiB)"), "{r}");
        let r = row("work", "running", Some(42), Some(612 * 1024), Some(0), "-");
        assert!(r.contains("612 MiB") && !r.contains("balloon"), "{r}");
        let r = row("work", "stopped", None, None, None, "-");
        assert!(!r.contains("MiB"), "{r}");
    }
}
