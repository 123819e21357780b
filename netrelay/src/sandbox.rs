//! The relay's confinement: every fd but stdio and its two sockets closed, then a
//! seccomp filter that allows polling, `recv`/`send`, memory and exit, and nothing that
//! opens, creates or connects anything.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("closing inherited fds: {0}")]
    CloseFds(#[source] std::io::Error),
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// Closes every fd except stdio and `keep`.
pub fn close_fds_except(keep: &[RawFd]) -> Result<(), SandboxError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .chain(&[0, 1, 2])
        .filter_map(|fd| u32::try_from(*fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 0u32;
    for k in keep.iter().copied().chain(std::iter::once(u32::MAX)) {
        if k > first {
            let last = k - 1;
            // SAFETY: called first thing in main, before this process opened anything:
            // no Rust object owns an fd in this range (stdio and `keep` are skipped), so
            // none is closed behind an owner's back. close_range takes only integers.
            let rc = unsafe { libc::close_range(first, last, 0) };
            if rc != 0 {
                return Err(SandboxError::CloseFds(std::io::Error::last_os_error()));
            }
        }
        if k == u32::MAX {
            break;
        }
        first = k + 1;
    }
    Ok(())
}

const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// The relay's filter: anything off the table kills it.
pub fn filter() -> Result<BpfProgram, SandboxError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    let no_exec = || SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64);
    map.insert(
        libc::SYS_mmap,
        vec![SeccompRule::new(vec![cond(2, no_exec(), 0)?])?],
    );
    map.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![cond(2, no_exec(), 0)?])?],
    );
    // std checks an fd is still open (F_GETFD) when an OwnedFd is dropped.
    map.insert(
        libc::SYS_fcntl,
        vec![SeccompRule::new(vec![cond(
            1,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )?])?],
    );
    map.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::Eq,
            u64::from(std::process::id()),
        )?])?],
    );
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let f = SeccompFilter::new(map, SeccompAction::KillProcess, SeccompAction::Allow, arch)?;
    Ok(BpfProgram::try_from(f)?)
}

/// Installs [`filter`] on this (single-threaded) process; sets `no_new_privs` first.
pub fn confine() -> Result<(), SandboxError> {
    seccompiler::apply_filter(&filter()?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles() {
        assert!(!filter().unwrap().is_empty());
    }

    #[test]
    fn a_confined_process_cannot_open_files_but_still_relays() {
        // In a child, so the test process stays unconfined.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: fork in a test: the child only calls async-signal-safe-enough code
        // (seccomp install, send, open, _exit) and never returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match confine() {
                Ok(()) => {
                    let sent = rustix::net::send(&a, b"x", rustix::net::SendFlags::empty());
                    // Killed here (SIGSYS) if openat is refused as it must be.
                    let _ = std::fs::File::open("/etc/hostname");
                    if sent.is_ok() {
                        10
                    } else {
                        11
                    }
                }
                Err(_) => 12,
            };
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        let mut buf = [0u8; 1];
        assert_eq!(
            rustix::net::recv(&b, &mut buf, rustix::net::RecvFlags::DONTWAIT).map(|r| r.0),
            Ok(1)
        );
    }
}
