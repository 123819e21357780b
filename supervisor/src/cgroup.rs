//! Resource shares for partitions through cgroup v2: one cgroup per partition holding its
//! processes (the VMM with its PID-namespace child, later its relay and passt: any pid
//! can be added), with `cpu.weight`, `cpu.max`, `memory.max` (guest RAM + framebuffer +
//! [`VMM_ALLOWANCE_BYTES`]), `memory.swap.max`, `io.weight` and `io.max` written from
//! [`Resources`].
//!
//! Where the partition cgroups go ([`CgroupBase::for_host`]):
//! - as root: `<cgroup2 mount>/bulkhead/<partition>`, controllers enabled top-down;
//! - otherwise in a delegated subtree of the app's own cgroup (systemd's `Delegate=yes`,
//!   as `systemd-run --user --scope -p Delegate=yes bulkhead` gives): the app moves
//!   itself into a leaf `app` child (cgroup v2 allows processes only in leaves once
//!   controllers are enabled) and each partition gets a sibling. Plain cgroupfs writes,
//!   no D-Bus: the same code path as root, and systemd leaves a delegated subtree alone;
//! - neither: no cgroup, and [`ResourceStatus::badge`] says why in the window.
//!
//! A controller this host's cgroup v2 lacks (a hybrid host keeps cpu, memory and io in
//! cgroup v1) is reported the same way, per controller.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a partition process needs beyond its guest's RAM and framebuffer: the VMM's own
/// heap, thread stacks, device queues and buffers, the PID-namespace reaper, and the
/// kernel memory charged to it (KVM's page tables, the dirty log). Measured: a test-card
/// partition (64 MiB guest, 1280x800 framebuffer = 4000 KiB) has 4.3 – 5.4 MiB RSS in
/// all, under 2 MiB beyond the framebuffer (`gui/tests/cli_ps.rs` prints it). A Linux
/// guest's devices (block worker buffers, console and network queues) and KVM's page
/// tables (about 2 MiB per GiB of guest RAM, more with shadow paging) add tens of MiB,
/// not measured here (no hardware virtualization on this host); 256 MiB leaves a healthy
/// partition far from its own limit while still bounding what it can take from the desktop.
pub const VMM_ALLOWANCE_BYTES: u64 = 256 << 20;
/// `cpu.max` period, µs.
const CPU_PERIOD_US: u64 = 100_000;
/// The controllers partitions use.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "io"];

/// The limits of one partition's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// `cpu.weight`, 1 – 10000.
    pub cpu_weight: u32,
    /// Percent of one host CPU; 0: no cap.
    pub cpu_max_percent: u32,
    /// `memory.max`, bytes.
    pub memory_max_bytes: u64,
    /// `io.weight`, 1 – 10000.
    pub io_weight: u32,
    /// Bytes per second each way on each disk's device; 0: no cap.
    pub io_max_bytes_per_sec: u64,
    /// The least guest memory memory balancing leaves the partition, MiB (its
    /// `memory_min_mib`; not a cgroup file: the balloon enforces it, see
    /// [`crate::memory_balance`]).
    pub memory_min_mib: u32,
}

impl Resources {
    /// The limits of a partition with this much guest RAM and framebuffer.
    pub fn new(guest_memory_bytes: u64, framebuffer_bytes: u64) -> Resources {
        Resources {
            cpu_weight: 100,
            cpu_max_percent: 0,
            memory_max_bytes: guest_memory_bytes
                .saturating_add(framebuffer_bytes)
                .saturating_add(VMM_ALLOWANCE_BYTES),
            io_weight: 100,
            io_max_bytes_per_sec: 0,
            memory_min_mib: isolation_policy::default_memory_min_mib(
                u32::try_from(guest_memory_bytes >> 20).unwrap_or(u32::MAX),
            ),
        }
    }

    /// `cpu.max`: quota and period, or `max` for no cap.
    fn cpu_max(&self) -> String {
        match self.cpu_max_percent {
            0 => format!("max {CPU_PERIOD_US}"),
            // The kernel refuses a quota under 1 ms.
            p => format!(
                "{} {CPU_PERIOD_US}",
                (u64::from(p) * CPU_PERIOD_US / 100).max(1000)
            ),
        }
    }

    /// One `io.max` line for device `dev` (`MAJ:MIN`).
    fn io_max(&self, dev: &str) -> String {
        match self.io_max_bytes_per_sec {
            0 => format!("{dev} rbps=max wbps=max"),
            b => format!("{dev} rbps={b} wbps={b}"),
        }
    }
}

/// How a partition's resources are governed, for the window and `bulkhead ps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceStatus {
    /// The partition's cgroup, if it has one.
    pub cgroup: Option<PathBuf>,
    /// Limits not in force, each with why ("memory: no memory controller in cgroup v2").
    pub missing: Vec<String>,
}

impl ResourceStatus {
    /// "no resource limits: …" when nothing is governed, "resource limits reduced: …"
    /// when part is; `None` when every limit is in force.
    pub fn badge(&self) -> Option<String> {
        if self.missing.is_empty() {
            return None;
        }
        let every = format!("{}:", CONTROLLERS.join(", "));
        let all = self.cgroup.is_none() || self.missing.iter().any(|m| m.starts_with(&every));
        let what = if all {
            "no resource limits"
        } else {
            "resource limits reduced"
        };
        Some(format!("{what}: {}", self.missing.join("; ")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted")]
    NoCgroup2,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "not root and the app's cgroup {} is not delegated to it: start the app in a \
         delegated scope (systemd-run --user --scope -p Delegate=yes bulkhead)",
        .0.display()
    )]
    NotDelegated(PathBuf),
    #[error("cgroups {}, -2 … -16 exist: remove the empty ones (rmdir)", .0.display())]
    InUse(PathBuf),
    #[error("partition name {0:?} cannot name a cgroup")]
    BadName(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` in one `write` (cgroup files take one value per write).
fn write_value(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io_err(path))
}

fn read_value(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn controllers_of(dir: &Path) -> Result<BTreeSet<String>, CgroupError> {
    Ok(read_value(&dir.join("cgroup.controllers"))?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Enables each of [`CONTROLLERS`] `dir` offers for its children; returns those enabled.
fn enable_controllers(dir: &Path) -> BTreeSet<String> {
    let offered = controllers_of(dir).unwrap_or_default();
    let file = dir.join("cgroup.subtree_control");
    CONTROLLERS
        .iter()
        .filter(|c| offered.contains(**c))
        .filter(|c| match write_value(&file, &format!("+{c}")) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("enabling the {c} controller: {e}");
                false
            }
        })
        .map(|c| c.to_string())
        .collect()
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (`/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (mount, fstype) = line.split_once(" - ")?;
        let fstype = fstype.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The cgroup v2 path of `pid` (`/user.slice/…`), from `/proc/PID/cgroup`.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Where partition cgroups are made, and which controllers they get.
#[derive(Debug, Clone)]
pub struct CgroupBase {
    dir: PathBuf,
    /// Enabled for the children of `dir`.
    controllers: BTreeSet<String>,
    /// Why a controller is not enabled, if it is not.
    why_missing: String,
}

impl CgroupBase {
    /// The base for this process, worked out once: see the module documentation.
    pub fn for_host() -> Result<&'static CgroupBase, String> {
        static BASE: OnceLock<Result<CgroupBase, String>> = OnceLock::new();
        BASE.get_or_init(|| {
            let base = Self::detect().map_err(|e| e.to_string());
            match &base {
                Ok(b) => tracing::info!(dir = %b.dir.display(), controllers = ?b.controllers, "partition cgroups"),
                Err(e) => tracing::warn!("partitions run without resource limits: {e}"),
            }
            base
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    fn detect() -> Result<CgroupBase, CgroupError> {
        let mount = cgroup2_mount().ok_or(CgroupError::NoCgroup2)?;
        if rustix::process::geteuid().is_root() {
            return Self::prepare(&mount, "bulkhead");
        }
        let own = cgroup_of(std::process::id()).ok_or(CgroupError::NoCgroup2)?;
        let own = mount.join(own.trim_start_matches('/'));
        let delegated = ["cgroup.procs", "cgroup.subtree_control"]
            .iter()
            .all(|f| rustix::fs::access(own.join(f), rustix::fs::Access::WRITE_OK).is_ok());
        if !delegated {
            return Err(CgroupError::NotDelegated(own));
        }
        // Processes may live only in leaves once controllers are enabled: the app's own
        // processes move to a leaf beside the partitions'.
        let leaf = own.join("app");
        make_dir(&leaf)?;
        for pid in read_value(&own.join("cgroup.procs"))?.split_whitespace() {
            // A process that ended meanwhile is gone from the list anyway.
            if let Err(e) = write_value(&leaf.join("cgroup.procs"), pid) {
                tracing::debug!("moving {pid} to the app's leaf cgroup: {e}");
            }
        }
        Self::with_controllers(own)
    }

    /// `parent/name` with the controllers `parent` can give it enabled for its children.
    /// `parent` must be the hierarchy's root or hold no processes itself.
    pub fn prepare(parent: &Path, name: &str) -> Result<CgroupBase, CgroupError> {
        enable_controllers(parent);
        let dir = parent.join(name);
        make_dir(&dir)?;
        Self::with_controllers(dir)
    }

    fn with_controllers(dir: PathBuf) -> Result<CgroupBase, CgroupError> {
        let controllers = enable_controllers(&dir);
        let offered_by_root = cgroup2_mount()
            .and_then(|m| controllers_of(&m).ok())
            .unwrap_or_default();
        let why_missing = if CONTROLLERS.iter().all(|c| !offered_by_root.contains(*c)) {
            "not in this host's cgroup v2 (held by cgroup v1?)".to_string()
        } else {
            format!("not delegated to {}", dir.display())
        };
        Ok(CgroupBase {
            dir,
            controllers,
            why_missing,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn controllers(&self) -> &BTreeSet<String> {
        &self.controllers
    }

    /// A new cgroup for partition `name`: `NAME`, or `NAME-2` … when that exists (another
    /// supervisor's partition of the same name, or one left by a supervisor that was
    /// killed). Made with an exclusive `mkdir`, so it is this caller's alone: removing
    /// it never touches another's processes. One left behind is taken back on the way
    /// ([`reclaim_if_stale`]), so killed supervisors do not use up the names.
    pub fn create(&self, name: &str) -> Result<PartitionCgroup, CgroupError> {
        if name.is_empty()
            || name.starts_with('.')
            || name == "app"
            || name.starts_with("cgroup.")
            || name.contains(['/', '\0'])
        {
            return Err(CgroupError::BadName(name.to_string()));
        }
        for n in 1..=MAX_SAME_NAME {
            let path = match n {
                1 => self.dir.join(name),
                n => self.dir.join(format!("{name}-{n}")),
            };
            let made = match std::fs::create_dir(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !reclaim_if_stale(&path) {
                        continue;
                    }
                    std::fs::create_dir(&path)
                }
                made => made,
            };
            match made {
                Ok(()) => {
                    return Ok(PartitionCgroup {
                        path,
                        controllers: self.controllers.clone(),
                        why_missing: self.why_missing.clone(),
                    })
                }
                // Another supervisor took it between the two calls.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(CgroupError::InUse(self.dir.join(name)))
    }
}

/// How old an empty cgroup must be before [`reclaim_if_stale`] takes it back: far longer
/// than the moment between another supervisor's `mkdir` and its partition joining.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Removes `dir` if it is a cgroup nobody uses: made over [`STALE_AFTER`] ago (by a
/// supervisor that was killed before it could remove it) and empty, which `rmdir`
/// itself decides: the kernel refuses to remove a cgroup that holds a process or a
/// child cgroup, so a running partition's is never touched. True when it is gone.
fn reclaim_if_stale(dir: &Path) -> bool {
    let old = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_AFTER);
    old && std::fs::remove_dir(dir).is_ok()
}

/// Cgroups of one partition name that may exist side by side.
const MAX_SAME_NAME: u32 = 16;

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// One partition's cgroup. Dropping it does nothing; [`PartitionCgroup::remove`] ends it.
#[derive(Debug)]
pub struct PartitionCgroup {
    path: PathBuf,
    controllers: BTreeSet<String>,
    why_missing: String,
}

impl PartitionCgroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` (all its threads) into the partition's cgroup. Its children
    /// started after this are born in it.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        write_value(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(read_value(&self.path.join("cgroup.procs"))?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// Writes every limit its controllers allow; `disks` are the block devices
    /// (`MAJ:MIN`) of the partition's disks for `io.max`. Returns what is not in force.
    pub fn apply(&self, r: &Resources, disks: &[String]) -> ResourceStatus {
        let mut missing = Vec::new();
        let absent: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !self.controllers.contains(*c))
            .collect();
        if !absent.is_empty() {
            missing.push(format!(
                "{}: no controller, {}",
                absent.join(", "),
                self.why_missing
            ));
        }
        let mut write = |controller: &str, file: &str, value: &str| {
            if !self.controllers.contains(controller) {
                return;
            }
            if let Err(e) = write_value(&self.path.join(file), value) {
                missing.push(format!("{controller}: {file}: {e}"));
            }
        };
        write("cpu", "cpu.weight", &r.cpu_weight.to_string());
        write("cpu", "cpu.max", &r.cpu_max());
        write("memory", "memory.max", &r.memory_max_bytes.to_string());
        // Guest RAM is the guest's own to page: host swap would page it twice and let a
        // partition spill beyond its limit into the desktop's swap.
        if self.path.join("memory.swap.max").exists() {
            write("memory", "memory.swap.max", "0");
        }
        // An out-of-memory kill takes the whole partition, not one of its threads.
        write("memory", "memory.oom.group", "1");
        write("io", "io.weight", &format!("default {}", r.io_weight));
        for dev in disks {
            write("io", "io.max", &r.io_max(dev));
        }
        ResourceStatus {
            cgroup: Some(self.path.clone()),
            missing,
        }
    }

    /// Kills whatever is left in the cgroup (the partition's helpers once its VMM ended)
    /// and removes it, waiting up to `wait` for the killed to go.
    pub fn remove(&self, wait: Duration) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            write_value(&kill, "1")?;
        }
        let deadline = Instant::now() + wait;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(io_err(&self.path)(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// A new cgroup for partition `name` under this host's base, with its `cgroup.procs`
/// open for the process to join before it execs ([`crate::spawn::spawn_partition`]): a
/// partition forks its PID-namespace child at once, so moving it afterwards would leave
/// that child behind. `Err` is why the partition runs without limits.
pub fn prepare(name: &str) -> Result<(PartitionCgroup, std::fs::File), String> {
    let base = CgroupBase::for_host()?;
    let cg = base.create(name).map_err(|e| e.to_string())?;
    let path = cg.path.join("cgroup.procs");
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) => Ok((cg, f)),
        Err(e) => {
            let _ = cg.remove(Duration::ZERO);
            Err(io_err(&path)(e).to_string())
        }
    }
}

/// How a partition without a cgroup is governed: not at all, and why.
pub fn unlimited(name: &str, why: String) -> ResourceStatus {
    tracing::warn!(partition = %name, "no resource limits: {why}");
    ResourceStatus {
        cgroup: None,
        missing: vec![why],
    }
}

/// The whole-disk block devices (`MAJ:MIN`) holding `files`, for `io.max`; files on
/// no block device (tmpfs, overlay, network file systems) are left out.
pub fn disk_devices<'a>(files: impl IntoIterator<Item = &'a std::fs::File>) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let Ok(meta) = f.metadata() else { continue };
        let dev = meta.dev();
        let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        if !sys.exists() {
            continue;
        }
        // io.max takes whole disks: a partition's parent directory is its disk.
        let whole = if sys.join("partition").exists() {
            std::fs::read_to_string(sys.join("../dev"))
                .map(|s| s.trim().to_string())
                .ok()
        } else {
            Some(format!("{major}:{minor}"))
        };
        if let Some(d) = whole {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory standing in for a cgroup base: `rmdir` of a plain directory refuses
    /// one that holds anything, as the kernel refuses a cgroup that holds a process.
    fn base_in(dir: &Path) -> CgroupBase {
        CgroupBase {
            dir: dir.to_path_buf(),
            controllers: BTreeSet::new(),
            why_missing: String::new(),
        }
    }

    /// Makes `dir` look made `age` ago.
    fn age(dir: &Path, age: Duration) {
        let then = std::time::SystemTime::now() - age;
        std::fs::File::open(dir)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }

    #[test]
    fn an_empty_cgroup_left_long_ago_is_taken_back_but_a_fresh_or_busy_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_in(dir.path());
        // Left by a killed supervisor: empty and old.
        std::fs::create_dir(dir.path().join("mail")).unwrap();
        age(&dir.path().join("mail"), STALE_AFTER * 2);
        assert_eq!(base.create("mail").unwrap().path(), dir.path().join("mail"));
        // Just made by another supervisor whose partition has not joined yet.
        std::fs::create_dir(dir.path().join("work")).unwrap();
        assert_eq!(
            base.create("work").unwrap().path(),
            dir.path().join("work-2")
        );
        // Old but in use.
        std::fs::create_dir(dir.path().join("browser")).unwrap();
        std::fs::write(dir.path().join("browser/cgroup.procs"), "42\n").unwrap();
        age(&dir.path().join("browser"), STALE_AFTER * 2);
        assert_eq!(
            base.create("browser").unwrap().path(),
            dir.path().join("browser-2")
        );
        assert!(dir.path().join("browser/cgroup.procs").exists());
    }

    #[test]
    fn names_run_out_only_when_every_one_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_in(dir.path());
        for n in 1..=MAX_SAME_NAME {
            let made = base.create("vault").unwrap();
            std::fs::write(made.path().join("cgroup.procs"), format!("{n}\n")).unwrap();
            age(made.path(), STALE_AFTER * 2);
        }
        assert!(matches!(base.create("vault"), Err(CgroupError::InUse(_))));
        // One of them ended without its supervisor removing it: its name is free again.
        std::fs::remove_file(dir.path().join("vault-7/cgroup.procs")).unwrap();
        age(&dir.path().join("vault-7"), STALE_AFTER * 2);
        assert_eq!(
            base.create("vault").unwrap().path(),
            dir.path().join("vault-7")
        );
    }

    #[test]
    fn limits_are_written_in_the_kernels_formats() {
        let mut r = Resources::new(1 << 30, 4 << 20);
        assert_eq!(
            r.memory_max_bytes,
            (1 << 30) + (4 << 20) + VMM_ALLOWANCE_BYTES
        );
        assert_eq!(r.cpu_max(), "max 100000");
        r.cpu_max_percent = 150;
        assert_eq!(r.cpu_max(), "150000 100000");
        r.cpu_max_percent = 0;
        assert_eq!(r.io_max("8:0"), "8:0 rbps=max wbps=max");
        r.io_max_bytes_per_sec = 40 << 20;
        assert_eq!(r.io_max("8:0"), "8:0 rbps=41943040 wbps=41943040");
    }

    /// What `apply` writes where, on a directory standing in for a cgroup with every
    /// controller (this test does not prove the kernel takes the values: the cgroup test
    /// in `tests.rs` does, on a host whose cgroup v2 has the controllers).
    #[test]
    fn apply_writes_each_limit_to_its_file_and_reports_nothing_missing() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "cpu.weight",
            "cpu.max",
            "memory.max",
            "memory.swap.max",
            "memory.oom.group",
            "io.weight",
            "io.max",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let cg = PartitionCgroup {
            path: dir.path().to_path_buf(),
            controllers: CONTROLLERS.iter().map(|c| c.to_string()).collect(),
            why_missing: String::new(),
        };
        let mut r = Resources::new(64 << 20, 0);
        r.cpu_weight = 300;
        r.cpu_max_percent = 25;
        r.io_weight = 10;
        r.io_max_bytes_per_sec = 1 << 20;
        let status = cg.apply(&r, &["259:0".to_string()]);
        assert_eq!(status.missing, Vec::<String>::new());
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("cpu.weight"), "300");
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(
            read("memory.max"),
            ((64 << 20) + VMM_ALLOWANCE_BYTES).to_string()
        );
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("io.weight"), "default 10");
        assert_eq!(read("io.max"), "259:0 rbps=1048576 wbps=1048576");
    }

    #[test]
    fn the_badge_says_whether_nothing_or_part_is_governed() {
        let none = ResourceStatus {
            cgroup: None,
            missing: vec!["not root".into()],
        };
        assert_eq!(
            none.badge().as_deref(),
            Some("no resource limits: not root")
        );
        let all_missing = ResourceStatus {
            cgroup: Some("/x".into()),
            missing: vec!["cpu, memory, io: no controller, not delegated".into()],
        };
        assert_eq!(
            all_missing.badge().as_deref(),
            Some("no resource limits: cpu, memory, io: no controller, not delegated")
        );
        let part = ResourceStatus {
            cgroup: Some("/x".into()),
            missing: vec!["io: no controller, not delegated".into()],
        };
        assert_eq!(
            part.badge().as_deref(),
            Some("resource limits reduced: io: no controller, not delegated")
        );
        assert_eq!(ResourceStatus::default().badge(), None);
    }
}
