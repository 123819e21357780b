//! A filesystem allowlist with Landlock (Linux 5.13+), through the `landlock` crate.
//!
//! Everything the running kernel's Landlock ABI can restrict is restricted, except what
//! the allowlist grants: file access, TCP bind/connect (ABI 4+, never granted), abstract
//! Unix sockets and signals to processes outside the sandbox (ABI 6+). Rights from later
//! ABIs are left alone until someone decides what this allowlist means for them.

use std::io;
use std::path::PathBuf;

use landlock::{
    Access as _, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    PathFdError, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};
use rustix::fs::{fstat, FileType};

/// How a path on the allowlist may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read files (and list directories).
    Read,
    /// Read and write files; in a directory also create and remove them.
    ReadWrite,
    /// Read, write and ioctl on a device node (`/dev/kvm`).
    Device,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPath {
    pub path: PathBuf,
    pub access: Access,
}

impl AllowedPath {
    pub fn new(path: impl Into<PathBuf>, access: Access) -> Self {
        Self {
            path: path.into(),
            access,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("allowlisted path {path}: {source}")]
    Open { path: PathBuf, source: PathFdError },
    #[error("allowlisted path {path}: {source}")]
    Path { path: PathBuf, source: io::Error },
    #[error("allowlisted path {path}: {source}")]
    Rule { path: PathBuf, source: RulesetError },
    #[error("landlock {op} failed: {source}")]
    Ruleset {
        op: &'static str,
        source: RulesetError,
    },
    #[error("landlock ABI {abi} was reported, but the kernel enforced nothing")]
    NotEnforced { abi: u32 },
}

/// What the kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandlockSupport {
    Available { abi: u32 },
    Unavailable { reason: String },
}

/// The newest ABI whose rights this allowlist handles; newer kernels get the same rules.
const NEWEST_HANDLED_ABI: u32 = 6;

/// Only the rights a rule on a non-directory may carry.
fn file_rights() -> BitFlags<AccessFs> {
    AccessFs::Execute
        | AccessFs::WriteFile
        | AccessFs::ReadFile
        | AccessFs::Truncate
        | AccessFs::IoctlDev
}

fn wanted(access: Access, is_dir: bool) -> BitFlags<AccessFs> {
    let base = match access {
        Access::Read => AccessFs::ReadFile | AccessFs::ReadDir,
        Access::ReadWrite => {
            AccessFs::ReadFile
                | AccessFs::ReadDir
                | AccessFs::WriteFile
                | AccessFs::Truncate
                | AccessFs::MakeReg
                | AccessFs::RemoveFile
                | AccessFs::MakeDir
                | AccessFs::RemoveDir
        }
        Access::Device => AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
    };
    if is_dir {
        base
    } else {
        base & file_rights()
    }
}

/// Asks the kernel which Landlock ABI it speaks.
pub fn support() -> LandlockSupport {
    match probe() {
        Ok(abi) => LandlockSupport::Available { abi },
        Err(e) => LandlockSupport::Unavailable {
            reason: absent_reason(&e),
        },
    }
}

/// The Landlock ABI version, or the kernel's error.
///
/// The one raw Landlock call left: the `landlock` crate keeps this query private (it
/// wants programs not to branch on it), but the sandbox report names the ABI.
pub(super) fn probe() -> io::Result<u32> {
    const CREATE_RULESET_VERSION: libc::c_uint = 1 << 0;
    // SAFETY: with the VERSION flag the kernel reads no attribute (null, size 0) and
    // only returns a number; no memory is passed or returned.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if abi < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(abi).map_err(|_| io::Error::other(format!("Landlock ABI {abi} out of range")))
}

/// Whether `probe`'s error means this kernel has no Landlock (not built in: `ENOSYS`;
/// not enabled at boot: `EOPNOTSUPP`), as opposed to a failure.
pub(super) fn is_absent(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP))
}

pub(super) fn absent_reason(err: &io::Error) -> String {
    format!("landlock_create_ruleset: {err} (kernel without Landlock, or not in its lsm= list)")
}

/// Restricts the calling thread, and threads and processes it creates later, to the
/// allowlist. Needs `no_new_privs` first. Fds opened before keep working.
///
/// `abi` is what [`support`] reported; every right of that ABI (up to
/// [`NEWEST_HANDLED_ABI`]) is handled, and anything the kernel refuses is an error, never
/// a silently weaker sandbox.
pub fn restrict_self(allowed: &[AllowedPath], abi: u32) -> Result<(), LandlockError> {
    let ruleset_err = |op| move |source| LandlockError::Ruleset { op, source };
    let crate_abi = ABI::from(abi.min(NEWEST_HANDLED_ABI) as i32);
    let handled = AccessFs::from_all(crate_abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(handled)
        .map_err(ruleset_err("handle_access"))?;
    // Empty sets (older ABIs) are refused by the crate; they would handle nothing anyway.
    let net = AccessNet::from_all(crate_abi);
    if !net.is_empty() {
        ruleset = ruleset
            .handle_access(net)
            .map_err(ruleset_err("handle_access"))?;
    }
    let scopes = Scope::from_all(crate_abi);
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(ruleset_err("scope"))?;
    }
    let mut created = ruleset.create().map_err(ruleset_err("create_ruleset"))?;
    for entry in allowed {
        created = add_path_rule(created, entry, handled)?;
    }
    let status = created
        .restrict_self()
        .map_err(ruleset_err("restrict_self"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(LandlockError::NotEnforced { abi });
    }
    Ok(())
}

fn add_path_rule(
    ruleset: landlock::RulesetCreated,
    entry: &AllowedPath,
    handled: BitFlags<AccessFs>,
) -> Result<landlock::RulesetCreated, LandlockError> {
    let path = || entry.path.clone();
    let fd = PathFd::new(&entry.path).map_err(|source| LandlockError::Open {
        path: path(),
        source,
    })?;
    // The type of what was opened, not of whatever the path names by now.
    let stat = fstat(&fd).map_err(|e| LandlockError::Path {
        path: path(),
        source: e.into(),
    })?;
    let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
    let rule = PathBeneath::new(fd, wanted(entry.access, is_dir) & handled);
    ruleset
        .add_rule(rule)
        .map_err(|source| LandlockError::Rule {
            path: path(),
            source,
        })
}
