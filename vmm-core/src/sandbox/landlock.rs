//! A filesystem allowlist with Landlock (Linux 5.13+), through the raw system calls.
//!
//! Everything the running kernel's Landlock ABI can restrict is restricted, except what
//! the allowlist grants: file access, TCP bind/connect (ABI 4+, never granted), abstract
//! Unix sockets and signals to processes outside the sandbox (ABI 6+).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
    Path { path: PathBuf, source: io::Error },
    #[error("landlock {op} failed: {source}")]
    Sys { op: &'static str, source: io::Error },
}

/// What the kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandlockSupport {
    Available { abi: u32 },
    Unavailable { reason: String },
}

// Access rights from <linux/landlock.h>, with the ABI that introduced them.
const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13; // ABI 2
const TRUNCATE: u64 = 1 << 14; // ABI 3
const IOCTL_DEV: u64 = 1 << 15; // ABI 5

const NET_BIND_TCP: u64 = 1 << 0; // ABI 4
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0; // ABI 6
const SCOPE_SIGNAL: u64 = 1 << 1;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

/// Only the rights a rule on a non-directory may carry.
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

fn handled_fs(abi: u32) -> u64 {
    let mut rights = EXECUTE
        | WRITE_FILE
        | READ_FILE
        | READ_DIR
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        rights |= REFER;
    }
    if abi >= 3 {
        rights |= TRUNCATE;
    }
    if abi >= 5 {
        rights |= IOCTL_DEV;
    }
    rights
}

fn wanted(access: Access, is_dir: bool) -> u64 {
    let base = match access {
        Access::Read => READ_FILE | READ_DIR,
        Access::ReadWrite => {
            READ_FILE
                | READ_DIR
                | WRITE_FILE
                | TRUNCATE
                | MAKE_REG
                | REMOVE_FILE
                | MAKE_DIR
                | REMOVE_DIR
        }
        Access::Device => READ_FILE | WRITE_FILE | IOCTL_DEV,
    };
    if is_dir {
        base
    } else {
        base & FILE_RIGHTS
    }
}

/// Asks the kernel which Landlock ABI it speaks.
pub fn support() -> LandlockSupport {
    // SAFETY: with the VERSION flag the kernel reads no attribute (null, size 0) and
    // only returns a number.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if abi < 0 {
        let err = io::Error::last_os_error();
        return LandlockSupport::Unavailable {
            reason: format!(
                "landlock_create_ruleset: {err} (kernel without Landlock, or not in its lsm= list)"
            ),
        };
    }
    LandlockSupport::Available { abi: abi as u32 }
}

/// Restricts the calling thread, and threads and processes it creates later, to the
/// allowlist. Needs `no_new_privs` first. Fds opened before keep working.
pub fn restrict_self(allowed: &[AllowedPath], abi: u32) -> Result<(), LandlockError> {
    let handled = handled_fs(abi);
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: if abi >= 4 {
            NET_BIND_TCP | NET_CONNECT_TCP
        } else {
            0
        },
        scoped: if abi >= 6 {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        },
    };
    // Older kernels reject attribute sizes that cover fields they do not know.
    let attr_size = match abi {
        0..=3 => std::mem::size_of::<u64>(),
        4 | 5 => 2 * std::mem::size_of::<u64>(),
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: `attr` is a live, initialised landlock_ruleset_attr of which the kernel
    // reads `attr_size` <= size_of::<RulesetAttr>() bytes.
    let raw = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr, attr_size, 0u32) };
    if raw < 0 {
        return Err(LandlockError::Sys {
            op: "create_ruleset",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    let ruleset = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    for entry in allowed {
        add_path_rule(&ruleset, entry, handled)?;
    }
    // SAFETY: plain int arguments; the ruleset fd is open for the whole call.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) } < 0 {
        return Err(LandlockError::Sys {
            op: "restrict_self",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn add_path_rule(
    ruleset: &OwnedFd,
    entry: &AllowedPath,
    handled: u64,
) -> Result<(), LandlockError> {
    let path_err = |source| LandlockError::Path {
        path: entry.path.clone(),
        source,
    };
    let fd = open_path(&entry.path).map_err(path_err)?;
    let is_dir = std::fs::metadata(&entry.path).map_err(path_err)?.is_dir();
    let rule = PathBeneathAttr {
        allowed_access: wanted(entry.access, is_dir) & handled,
        parent_fd: fd.as_raw_fd(),
    };
    // SAFETY: `rule` is a live landlock_path_beneath_attr (packed, as the kernel
    // declares it) and both fds are open for the whole call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &rule,
            0u32,
        )
    };
    if rc < 0 {
        return Err(path_err(io::Error::last_os_error()));
    }
    Ok(())
}

fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))?;
    // SAFETY: `c` is a valid NUL-terminated path; O_PATH opens without any access.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
