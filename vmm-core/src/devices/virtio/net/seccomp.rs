//! The virtio-net worker's seccomp profile: poll its socket and eventfd, `recv`/`send`
//! on the socket, `read`/`write` on the eventfds (its kick and the guest's irqfd),
//! `futex` for the device lock, `fcntl(F_GETFD)` and `close` when its socket reference drops,
//! and what every thread needs (memory, exit, signals for a
//! panic's abort). No `open`, no `socket`, no `connect`, no `ioctl`.
//!
//! Built here with seccompiler rather than as a row of `sandbox::SeccompProfile`, so the
//! device owns what its thread may do. It stacks on whatever filter the spawning thread
//! already has (filters only narrow).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// System calls allowed with any arguments.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_futex,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

#[derive(Debug, thiserror::Error)]
#[error("building the virtio-net worker's seccomp filter: {0}")]
pub struct FilterError(#[from] seccompiler::BackendError);

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, FilterError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// The compiled filter; anything off the table kills the process.
pub fn worker_filter() -> Result<BpfProgram, FilterError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    let no_exec = || SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64);
    // Memory, never executable.
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
    // abort() signals only this process.
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
    let filter = SeccompFilter::new(map, SeccompAction::KillProcess, SeccompAction::Allow, arch)?;
    Ok(BpfProgram::try_from(filter)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_filter_compiles() {
        assert!(!worker_filter().unwrap().is_empty());
    }
}
