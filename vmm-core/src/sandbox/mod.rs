//! Confining a partition process before guest code runs.
//!
//! The process that parses guest data is assumed to be compromisable, so after it has
//! opened what it needs (`/dev/kvm`, the VM and vCPU fds, disk images, the control socket,
//! the framebuffer memfd) and before the first `KVM_RUN`, [`apply_process_sandbox`]:
//!
//! 1. closes every fd not on the keep-list;
//! 2. sets rlimits: no core dumps, a small open-file limit, no locked memory, and an
//!    optional address-space cap (guest RAM is mapped into this process and counts
//!    against it, so the cap must be RAM plus headroom: [`address_space_for_guest`]);
//! 3. moves into new user, mount, IPC, network and UTS namespaces where the host allows
//!    (no network devices at all), makes its mounts private and covers `/proc` with an
//!    empty read-only tmpfs: the partition needs no `/proc` after this point, so it gets
//!    none (the supervisor measures it from the host's). The PID namespace comes earlier
//!    and differently, before the VM exists: [`enter_pid_namespace`] (the process forks
//!    into it);
//! 4. makes the process non-dumpable (`PR_SET_DUMPABLE 0`: no core, no ptrace by other
//!    processes of the user, its `/proc` entries owned by root);
//! 5. sets `no_new_privs`;
//! 6. applies a Landlock allowlist: only the listed paths can be opened, no TCP, no
//!    abstract sockets, no signals out of the sandbox.
//!
//! Then each thread installs its [`SeccompProfile`]; every one answers `openat` with
//! `EACCES`, so nothing is opened after start whatever Landlock allows (and glibc's own
//! lazy opens from any thread fail instead of killing the partition).
//!
//! **Fail closed.** Every step is attempted, even after one failed, and every failure is
//! collected into one [`SandboxError`]: a step the host supports that fails means the
//! partition must not run (its caller stops before guest code runs and says why). Only
//! what the host lacks outright (no unprivileged user namespaces, no Landlock in the
//! kernel) is a [`SandboxGap`]: the process runs with a reduced sandbox, and the gaps are
//! in the [`SandboxReport`] for the caller to report (the supervisor shows them as a badge
//! on the partition; a bare run prints them).
//!
//! Call it while the process is still single-threaded: the kernel refuses a new user
//! namespace to a multi-threaded process, and Landlock restricts only the calling thread
//! and what it creates later.

mod landlock;
mod pid_namespace;
mod seccomp;

use std::io;
use std::os::fd::RawFd;

use rustix::io::Errno;
use rustix::mount::{mount, mount_change, MountFlags, MountPropagationFlags};
use rustix::process::{getgid, getuid, setrlimit, Resource, Rlimit};
use rustix::thread::UnshareFlags;
use serde::{Deserialize, Serialize};
use tracing::warn;

pub use landlock::{
    support as landlock_support, Access, AllowedPath, LandlockError, LandlockSupport,
};
pub use pid_namespace::{enter_pid_namespace, PidNamespace, PidNamespaceRefused};
pub use seccomp::{
    install, install_programs, install_with, ArgFilter, SeccompError, SeccompProfile, SyscallRule,
    Violation, KVM_GET_DIRTY_LOG, KVM_RUN,
};

/// Headroom above guest RAM for the address-space cap: heap, thread stacks and glibc's
/// per-thread malloc arenas (64 MiB of address space each).
pub const ADDRESS_SPACE_HEADROOM: u64 = 1 << 30;

/// The address-space cap for a partition with `guest_ram` bytes of RAM and a
/// `framebuffer`-byte framebuffer.
pub fn address_space_for_guest(guest_ram: u64, framebuffer: u64) -> u64 {
    guest_ram
        .saturating_add(framebuffer)
        .saturating_add(ADDRESS_SPACE_HEADROOM)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Paths the process may still open afterwards.
    pub allowed_paths: Vec<AllowedPath>,
    /// Fds to keep open besides stdin, stdout and stderr.
    pub keep_fds: Vec<RawFd>,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// `RLIMIT_AS` in bytes; `None` leaves it unlimited.
    pub address_space: Option<u64>,
    /// Try to enter new namespaces.
    pub namespaces: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            allowed_paths: Vec::new(),
            keep_fds: Vec::new(),
            max_open_files: 256,
            address_space: None,
            namespaces: true,
        }
    }
}

/// Which namespaces the process ended up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaces {
    /// New user namespace plus mount, IPC, network and UTS.
    UserAndAll,
    /// No user namespace (not permitted), but mount, IPC, network and UTS (the process
    /// is privileged).
    AllWithoutUser,
    None,
}

/// A part of the sandbox this host cannot provide; the partition runs without it and
/// says so (the control protocol carries these, the app shows them as a badge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SandboxGap {
    /// No user namespace: unprivileged user namespaces are disabled on this host.
    UserNamespace,
    /// No PID namespace: the process can see (not signal: Landlock) the host's processes.
    PidNamespace,
    /// No mount, IPC, network or UTS namespace (and so no private `/proc`).
    Namespaces,
    /// No Landlock in this kernel: no filesystem allowlist (seccomp still refuses
    /// `openat` once the partition runs).
    Landlock,
}

impl SandboxGap {
    /// "no Landlock", "no user namespace", …: how the app's badge names it.
    pub fn describe(self) -> &'static str {
        match self {
            SandboxGap::UserNamespace => "no user namespace",
            SandboxGap::PidNamespace => "no PID namespace",
            SandboxGap::Namespaces => "no namespaces",
            SandboxGap::Landlock => "no Landlock",
        }
    }
}

/// What [`apply_process_sandbox`] did, when every step the host supports succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    pub namespaces: Namespaces,
    pub landlock: LandlockSupport,
    /// `/proc` is covered by an empty tmpfs in the process's own mount namespace.
    pub proc_hidden: bool,
    /// What the host lacks, sorted, no duplicates; empty for the full sandbox.
    pub gaps: Vec<SandboxGap>,
    /// One line per gap with the host's reason, already logged.
    pub warnings: Vec<String>,
}

/// One sandbox step the host supports that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxStepError {
    #[error("closing inherited fds: {0}")]
    CloseFds(io::Error),
    #[error("setting {name} to {value}: {source}")]
    Rlimit {
        name: &'static str,
        value: u64,
        source: io::Error,
    },
    #[error("entering new {what} namespaces: {source}")]
    Unshare {
        what: &'static str,
        source: io::Error,
    },
    #[error("writing {path} in the new user namespace: {source}")]
    IdMap {
        path: &'static str,
        source: io::Error,
    },
    #[error("making mounts private: {0}")]
    PrivateMounts(io::Error),
    #[error("covering /proc with an empty tmpfs: {0}")]
    HideProc(io::Error),
    #[error("PR_SET_DUMPABLE 0: {0}")]
    Dumpable(io::Error),
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(io::Error),
    #[error("probing Landlock: {0}")]
    LandlockProbe(io::Error),
    #[error(transparent)]
    Landlock(#[from] LandlockError),
}

/// Sandbox steps the host supports failed: the partition must not run. Names every
/// failed step.
#[derive(Debug, thiserror::Error)]
#[error("sandbox incomplete, {} step(s) failed: {}", .failures.len(), join(.failures))]
pub struct SandboxError {
    pub failures: Vec<SandboxStepError>,
}

fn join(failures: &[SandboxStepError]) -> String {
    failures
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects gaps and failures while every step is attempted.
#[derive(Default)]
struct Steps {
    gaps: Vec<SandboxGap>,
    warnings: Vec<String>,
    failures: Vec<SandboxStepError>,
}

impl Steps {
    fn gap(&mut self, gap: SandboxGap, line: String) {
        warn!("sandbox reduced: {}: {line}", gap.describe());
        self.gaps.push(gap);
        self.warnings.push(line);
    }

    fn check<T>(&mut self, result: Result<T, SandboxStepError>) -> Option<T> {
        result.map_err(|e| self.failures.push(e)).ok()
    }
}

/// Applies steps 1–6 above to the calling (single-threaded) process. Every step is
/// attempted; `Err` names each one that failed, and then the process must not run guest
/// code. `Ok` may still list [`SandboxReport::gaps`] the host could not provide.
pub fn apply_process_sandbox(config: &SandboxConfig) -> Result<SandboxReport, SandboxError> {
    let mut steps = Steps::default();
    let closed = close_fds_except(&config.keep_fds).map_err(SandboxStepError::CloseFds);
    steps.check(closed);
    set_rlimits(config, &mut steps);
    let (namespaces, proc_hidden) = if config.namespaces {
        enter_namespaces(&mut steps)
    } else {
        steps.gap(
            SandboxGap::Namespaces,
            "namespaces disabled by configuration".to_string(),
        );
        (Namespaces::None, false)
    };
    // After the id maps: a non-dumpable process's /proc/self files belong to root.
    steps.check(set_not_dumpable());
    steps.check(set_no_new_privs());
    let landlock = match landlock::probe() {
        Ok(abi) => {
            let restricted = landlock::restrict_self(&config.allowed_paths, abi);
            steps.check(restricted.map_err(SandboxStepError::from));
            LandlockSupport::Available { abi }
        }
        Err(e) if landlock::is_absent(&e) => {
            let reason = landlock::absent_reason(&e);
            steps.gap(
                SandboxGap::Landlock,
                format!("no filesystem allowlist, only seccomp refuses opening files: {reason}"),
            );
            LandlockSupport::Unavailable { reason }
        }
        Err(e) => {
            steps.failures.push(SandboxStepError::LandlockProbe(e));
            LandlockSupport::Unavailable {
                reason: "probe failed".to_string(),
            }
        }
    };
    if !steps.failures.is_empty() {
        return Err(SandboxError {
            failures: steps.failures,
        });
    }
    steps.gaps.sort_unstable();
    steps.gaps.dedup();
    Ok(SandboxReport {
        namespaces,
        landlock,
        proc_hidden,
        gaps: steps.gaps,
        warnings: steps.warnings,
    })
}

/// Sets `no_new_privs`, required before unprivileged seccomp and Landlock.
pub fn set_no_new_privs() -> Result<(), SandboxStepError> {
    rustix::thread::set_no_new_privs(true).map_err(|e| SandboxStepError::NoNewPrivs(e.into()))
}

/// `PR_SET_DUMPABLE 0`: no core dump, no ptrace attach by the user's other processes,
/// `/proc/<pid>` entries owned by root.
fn set_not_dumpable() -> Result<(), SandboxStepError> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| SandboxStepError::Dumpable(e.into()))
}

/// Closes every fd from 3 up except `keep`.
///
/// Any `OwnedFd`/`File` elsewhere in the process whose fd is not in `keep` is left
/// dangling, so call it only where nothing else holds fds: a single-threaded process
/// right after start, or right before confining itself. (It should be declared unsafe;
/// it is not yet because its callers are being rewritten.)
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .filter(|fd| *fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 3u32;
    for fd in keep {
        if fd > from {
            close_range(from, fd - 1)?;
        }
        from = fd + 1;
    }
    close_range(from, u32::MAX)
}

/// Raw `close_range`: neither std nor rustix offers it, as closing fds by number is
/// outside Rust's fd ownership by nature.
fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range takes integers only and touches no memory, so memory safety is
    // not at stake. Fd ownership is: the only callers are the partition start-up and
    // apply_process_sandbox (single-threaded, every fd they still use is on the
    // keep-list, which is outside the range) and the reaper (which keeps only its pipe).
    // `close_fds_except` being a safe fn that relies on this is a known gap, see its docs.
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // Kernels before 5.9: close one by one what /proc says is open.
    let open: Vec<u32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    for fd in open {
        // SAFETY: as for close_range above; the read_dir iterator whose fd may be in the
        // list was dropped when `collect` finished, so nothing uses that fd any more.
        unsafe { rustix::io::close(fd as RawFd) };
    }
    Ok(())
}

fn set_rlimits(config: &SandboxConfig, steps: &mut Steps) {
    steps.check(set_rlimit("RLIMIT_CORE", Resource::Core, 0));
    steps.check(set_rlimit("RLIMIT_MEMLOCK", Resource::Memlock, 0));
    steps.check(set_rlimit(
        "RLIMIT_NOFILE",
        Resource::Nofile,
        config.max_open_files,
    ));
    if let Some(bytes) = config.address_space {
        // An inherited hard limit below the cap makes this fail (EPERM): the partition
        // does not run rather than run with a limit nobody chose for it.
        steps.check(set_rlimit("RLIMIT_AS", Resource::As, bytes));
    }
}

fn set_rlimit(name: &'static str, resource: Resource, value: u64) -> Result<(), SandboxStepError> {
    let limit = Rlimit {
        current: Some(value),
        maximum: Some(value),
    };
    setrlimit(resource, limit).map_err(|e| SandboxStepError::Rlimit {
        name,
        value,
        source: e.into(),
    })
}

/// `unshare` for namespace flags. rustix marks it unsafe only because of `CLONE_FILES`
/// (a thread could keep using fds from a table it no longer shares), so that flag is
/// refused here, which makes the call safe.
fn unshare(flags: UnshareFlags) -> rustix::io::Result<()> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(rustix::io::Errno::INVAL);
    }
    // SAFETY: without CLONE_FILES (checked above) unshare changes no fd table; the other
    // flags only move this thread into new namespaces and touch no memory.
    unsafe { rustix::thread::unshare_unsafe(flags) }
}

/// No CLONE_NEWPID: unshared here it would stop this process from creating threads; see
/// [`enter_pid_namespace`].
const NS_FLAGS: UnshareFlags = UnshareFlags::NEWNS
    .union(UnshareFlags::NEWIPC)
    .union(UnshareFlags::NEWNET)
    .union(UnshareFlags::NEWUTS);

/// Whether `unshare` failed because the host does not offer the namespace to us
/// (disabled, not built in, or out of namespaces by configuration) rather than because
/// something went wrong.
fn host_lacks(err: Errno) -> bool {
    matches!(
        err,
        Errno::PERM | Errno::INVAL | Errno::NOSPC | Errno::USERS
    )
}

/// Step 3; returns where the process ended up and whether `/proc` is hidden.
fn enter_namespaces(steps: &mut Steps) -> (Namespaces, bool) {
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    let user_err = match unshare(UnshareFlags::NEWUSER | NS_FLAGS) {
        Ok(()) => {
            steps.check(map_ids(uid, gid));
            return (Namespaces::UserAndAll, private_mounts_without_proc(steps));
        }
        Err(e) if host_lacks(e) => e,
        Err(e) => {
            steps.failures.push(SandboxStepError::Unshare {
                what: "user, mount, IPC, network and UTS",
                source: e.into(),
            });
            return (Namespaces::None, false);
        }
    };
    steps.gap(
        SandboxGap::UserNamespace,
        format!("the host refuses an unprivileged user namespace ({user_err})"),
    );
    // On failure unshare changed nothing, so the second try starts clean.
    match unshare(NS_FLAGS) {
        Ok(()) => (
            Namespaces::AllWithoutUser,
            private_mounts_without_proc(steps),
        ),
        Err(e) if host_lacks(e) => {
            steps.gap(
                SandboxGap::Namespaces,
                format!("mount, IPC, network and UTS namespaces refused ({e}): the process shares the host's network, IPC and /proc"),
            );
            (Namespaces::None, false)
        }
        Err(e) => {
            steps.failures.push(SandboxStepError::Unshare {
                what: "mount, IPC, network and UTS",
                source: e.into(),
            });
            (Namespaces::None, false)
        }
    }
}

/// Maps our uid/gid to root inside the new user namespace, so the process keeps a
/// sensible identity there; it still has no privilege outside.
fn map_ids(uid: u32, gid: u32) -> Result<(), SandboxStepError> {
    let writes = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ];
    for (path, text) in writes {
        std::fs::write(path, text.as_bytes())
            .map_err(|source| SandboxStepError::IdMap { path, source })?;
    }
    Ok(())
}

/// In our own mount namespace: stops mount events propagating between the host and us,
/// then covers `/proc` with an empty, read-only tmpfs (the partition reads nothing
/// there once confined, so it gets no `/proc` at all rather than a private one). Returns
/// whether `/proc` is hidden.
fn private_mounts_without_proc(steps: &mut Steps) -> bool {
    let private = mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| SandboxStepError::PrivateMounts(e.into()));
    if steps.check(private).is_none() {
        // Mounting over /proc would propagate to the host's namespace.
        return false;
    }
    let hidden = mount(
        "bulkhead-noproc",
        "/proc",
        "tmpfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"size=4k,mode=0555",
    )
    .map_err(|e| SandboxStepError::HideProc(e.into()));
    steps.check(hidden).is_some()
}

#[cfg(test)]
mod tests;
