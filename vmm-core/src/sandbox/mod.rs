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
//!    (no network devices at all). The PID namespace comes earlier and differently,
//!    before the VM exists: [`enter_pid_namespace`] (the process forks into it);
//! 4. sets `no_new_privs`;
//! 5. applies a Landlock allowlist: only the listed paths can be opened, no TCP, no
//!    abstract sockets, no signals out of the sandbox.
//!
//! Then each thread installs its [`SeccompProfile`]. Steps the host cannot do are logged
//! as warnings and listed in the [`SandboxReport`], never skipped silently.
//!
//! Call it while the process is still single-threaded: the kernel refuses a new user
//! namespace to a multi-threaded process, and Landlock restricts only the calling thread
//! and what it creates later.

mod landlock;
mod pid_namespace;
mod seccomp;

use std::io;
use std::os::fd::RawFd;

use rustix::mount::{mount_change, MountPropagationFlags};
use rustix::process::{getgid, getuid, setrlimit, Resource, Rlimit};
use rustix::thread::UnshareFlags;
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

/// What [`apply_process_sandbox`] managed to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    pub fds_closed: bool,
    pub namespaces: Namespaces,
    pub landlock: LandlockSupport,
    /// One line per step that was degraded, already logged.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("closing inherited fds: {0}")]
    CloseFds(io::Error),
    #[error("setting {name} to {value}: {source}")]
    Rlimit {
        name: &'static str,
        value: u64,
        source: io::Error,
    },
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(io::Error),
    #[error(transparent)]
    Landlock(#[from] LandlockError),
}

/// Applies steps 1–5 above to the calling (single-threaded) process.
pub fn apply_process_sandbox(config: &SandboxConfig) -> Result<SandboxReport, SandboxError> {
    let mut warnings = Vec::new();
    close_fds_except(&config.keep_fds).map_err(SandboxError::CloseFds)?;
    set_rlimits(config)?;
    let namespaces = if config.namespaces {
        enter_namespaces(&mut warnings)
    } else {
        degrade(
            &mut warnings,
            "namespaces disabled by configuration".to_string(),
        );
        Namespaces::None
    };
    set_no_new_privs()?;
    let landlock = landlock::support();
    match &landlock {
        LandlockSupport::Available { abi } => landlock::restrict_self(&config.allowed_paths, *abi)?,
        LandlockSupport::Unavailable { reason } => degrade(
            &mut warnings,
            format!(
                "no filesystem allowlist, the process can open any file its user can: {reason}"
            ),
        ),
    }
    Ok(SandboxReport {
        fds_closed: true,
        namespaces,
        landlock,
        warnings,
    })
}

fn degrade(warnings: &mut Vec<String>, line: String) {
    warn!("sandbox degraded: {line}");
    warnings.push(line);
}

/// Sets `no_new_privs`, required before unprivileged seccomp and Landlock.
pub fn set_no_new_privs() -> Result<(), SandboxError> {
    rustix::thread::set_no_new_privs(true).map_err(|e| SandboxError::NoNewPrivs(e.into()))
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

fn set_rlimits(config: &SandboxConfig) -> Result<(), SandboxError> {
    set_rlimit("RLIMIT_CORE", Resource::Core, 0)?;
    set_rlimit("RLIMIT_MEMLOCK", Resource::Memlock, 0)?;
    set_rlimit("RLIMIT_NOFILE", Resource::Nofile, config.max_open_files)?;
    if let Some(bytes) = config.address_space {
        set_rlimit("RLIMIT_AS", Resource::As, bytes)?;
    }
    Ok(())
}

fn set_rlimit(name: &'static str, resource: Resource, value: u64) -> Result<(), SandboxError> {
    let limit = Rlimit {
        current: Some(value),
        maximum: Some(value),
    };
    setrlimit(resource, limit).map_err(|e| SandboxError::Rlimit {
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

fn enter_namespaces(warnings: &mut Vec<String>) -> Namespaces {
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    let user_err = match unshare(UnshareFlags::NEWUSER | NS_FLAGS) {
        Ok(()) => {
            map_ids(uid, gid, warnings);
            make_mounts_private(warnings);
            return Namespaces::UserAndAll;
        }
        Err(e) => e,
    };
    // On failure unshare changed nothing, so the second try starts clean.
    if let Err(err) = unshare(NS_FLAGS) {
        degrade(
            warnings,
            format!("no namespaces: user namespace refused ({user_err}), others refused ({err}); the process shares the host's network and IPC"),
        );
        return Namespaces::None;
    }
    degrade(
        warnings,
        format!("no user namespace ({user_err}); other namespaces entered as a privileged process"),
    );
    make_mounts_private(warnings);
    Namespaces::AllWithoutUser
}

/// Maps our uid/gid to root inside the new user namespace, so the process keeps a
/// sensible identity there; it still has no privilege outside.
fn map_ids(uid: u32, gid: u32, warnings: &mut Vec<String>) {
    let writes = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ];
    for (path, text) in writes {
        if let Err(e) = std::fs::write(path, text.as_bytes()) {
            degrade(warnings, format!("writing {path}: {e}; ids stay unmapped"));
            return;
        }
    }
}

/// Stops mount events propagating between the host and our mount namespace.
fn make_mounts_private(warnings: &mut Vec<String>) {
    if let Err(err) = mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    ) {
        degrade(
            warnings,
            format!("making mounts private: {}", io::Error::from(err)),
        );
    }
}

#[cfg(test)]
mod tests;
