//! CPU and memory of partition processes, read from `/proc` (the sandbox keeps a
//! partition's own view of it private, so the supervisor's side measures).

use std::time::{Duration, Instant};

/// CPU and memory of the partition process, sampled from /proc about once a second.
#[derive(Debug, Default)]
pub struct ProcessUsage {
    last: Option<(u32, Instant, u64)>,
    /// Percent of one host CPU over the last period.
    pub cpu_percent: f32,
    /// Resident memory, MiB.
    pub rss_mib: Option<u32>,
}

impl ProcessUsage {
    pub const PERIOD: Duration = Duration::from_secs(1);

    /// `pid` is the partition process the supervisor knows; the figures are those of
    /// `measured(pid)` (the app passes [`crate::vm_process`]: the VMM it runs), looked up
    /// only when a sample is due.
    pub fn sample(&mut self, pid: Option<u32>, measured: impl Fn(u32) -> u32) {
        let Some(pid) = pid else {
            *self = ProcessUsage::default();
            return;
        };
        let now = Instant::now();
        if let Some((last_pid, at, _)) = self.last {
            if last_pid == pid && now.duration_since(at) < Self::PERIOD {
                return;
            }
        }
        let vm = measured(pid);
        let Some(ticks) = cpu_ticks(vm) else {
            *self = ProcessUsage::default();
            return;
        };
        if let Some((last_pid, at, last_ticks)) = self.last {
            let secs = now.duration_since(at).as_secs_f32();
            if last_pid == pid && secs > 0.0 {
                let used = ticks.saturating_sub(last_ticks) as f32 / clock_ticks_per_second();
                self.cpu_percent = 100.0 * used / secs;
            }
        }
        self.last = Some((pid, now, ticks));
        self.rss_mib = rss_mib(vm);
    }
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat; the command
/// name before them may hold spaces, so count from the closing parenthesis).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_mib(pid: u32) -> Option<u32> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    u32::try_from(pages * page_size() / (1 << 20)).ok()
}

fn clock_ticks_per_second() -> f32 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        t => t as f32,
    }
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// What a partition process is titled in `ps` (argv[0], set by the supervisor).
pub const TITLE_PREFIX: &str = "bulkhead-vmm: ";

/// A partition process as `/proc` shows it, found by its title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProcess {
    /// The partition's name, from the title.
    pub name: String,
    /// The process the supervisor started.
    pub pid: u32,
    /// The supervisor that started it (the app or `bulkhead up`).
    pub parent: u32,
    /// Resident memory of the VM process ([`crate::vm_process`]), KiB.
    pub rss_kib: Option<u64>,
    /// Its cgroup v2 path, as `/proc/PID/cgroup` gives it.
    pub cgroup: Option<String>,
}

/// Every process of this user titled as a partition ([`TITLE_PREFIX`]), by pid. The
/// title is the process's own argv, so this is for people, never for decisions.
pub fn partition_processes() -> Vec<PartitionProcess> {
    let me = rustix::process::geteuid().as_raw();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<PartitionProcess> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let arg0 = cmdline.split(|b| *b == 0).next()?;
            let name = std::str::from_utf8(arg0).ok()?.strip_prefix(TITLE_PREFIX)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u32>().ok())
            };
            if field("Uid:")? != me {
                return None;
            }
            // The PID-namespace reaper's child is the VMM, titled the same: list it once.
            let parent = field("PPid:").unwrap_or(0);
            if is_titled(parent, name) {
                return None;
            }
            Some(PartitionProcess {
                name: name.to_string(),
                pid,
                parent,
                rss_kib: rss_kib(crate::vm_process(pid)),
                cgroup: crate::cgroup::cgroup_of(pid),
            })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

fn is_titled(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .next()
            .is_some_and(|a| a == format!("{TITLE_PREFIX}{name}").as_bytes())
    })
}

/// A running partition's balloon as its supervisor last recorded it for `bulkhead ps`
/// (which runs in another process): `DIR/NAME.balloon` beside the partition's log, one
/// line `PID TARGET_MIB ACTUAL_MIB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonFigures {
    /// The partition process it belongs to (a file of an earlier process is stale).
    pub pid: u32,
    pub target_mib: u32,
    /// What the guest's driver says the balloon holds.
    pub actual_mib: u32,
}

fn balloon_path(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    crate::log::log_path(dir, name).with_extension("balloon")
}

/// Replaces `DIR/NAME.balloon` (written under a temporary name, then renamed).
pub fn write_balloon_file(
    dir: &std::path::Path,
    name: &str,
    f: BalloonFigures,
) -> std::io::Result<()> {
    let path = balloon_path(dir, name);
    let tmp = path.with_extension("balloon.tmp");
    std::fs::write(
        &tmp,
        format!("{} {} {}\n", f.pid, f.target_mib, f.actual_mib),
    )?;
    std::fs::rename(&tmp, &path)
}

/// The balloon of partition process `pid` named `name`, if its supervisor recorded one
/// in `dir`; `None` for a missing, malformed or stale (other pid) file.
pub fn read_balloon_file(dir: &std::path::Path, name: &str, pid: u32) -> Option<BalloonFigures> {
    let text = std::fs::read_to_string(balloon_path(dir, name)).ok()?;
    let mut f = text.split_whitespace().map(|w| w.parse::<u32>().ok());
    let figures = BalloonFigures {
        pid: f.next()??,
        target_mib: f.next()??,
        actual_mib: f.next()??,
    };
    (figures.pid == pid).then_some(figures)
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size() / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_titled_process_of_this_user_is_listed_once_with_its_memory_and_cgroup() {
        use std::os::unix::process::CommandExt;
        let name = format!("usage-test-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg0(format!("{TITLE_PREFIX}{name}"))
            .arg("30")
            .spawn()
            .unwrap();
        // The spawn returns once the exec has begun, before the kernel has laid out the
        // new argv (a window that widens on a loaded host): wait for it, bounded.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::read(&cmdline).is_ok_and(|c| c.is_empty()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let listed: Vec<_> = partition_processes()
            .into_iter()
            .filter(|p| p.name == name)
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let p = &listed[0];
        assert_eq!((p.pid, p.parent), (child.id(), std::process::id()));
        assert!(p.rss_kib.is_some_and(|k| k > 0), "{p:?}");
        assert_eq!(p.cgroup, crate::cgroup::cgroup_of(std::process::id()));
    }

    #[test]
    fn a_recorded_balloon_reads_back_for_its_process_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = BalloonFigures {
            pid: 42,
            target_mib: 400,
            actual_mib: 380,
        };
        write_balloon_file(dir.path(), "work", f).unwrap();
        assert_eq!(read_balloon_file(dir.path(), "work", 42), Some(f));
        assert_eq!(read_balloon_file(dir.path(), "work", 43), None, "stale");
        assert_eq!(read_balloon_file(dir.path(), "mail", 42), None);
        std::fs::write(dir.path().join("mail.balloon"), "42 lots\n").unwrap();
        assert_eq!(read_balloon_file(dir.path(), "mail", 42), None);
    }

    #[test]
    fn cpu_and_memory_of_a_busy_process_are_measured_from_proc() {
        let me = std::process::id();
        let mut usage = ProcessUsage::default();
        usage.sample(Some(me), |p| p);
        let until = Instant::now() + ProcessUsage::PERIOD + Duration::from_millis(300);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        usage.sample(Some(me), |p| p);
        assert!(
            usage.cpu_percent > 20.0,
            "busy loop measured at {}%",
            usage.cpu_percent
        );
        assert!(usage.rss_mib.is_some());
        usage.sample(None, |p| p);
        assert_eq!(usage.cpu_percent, 0.0);
    }
}
