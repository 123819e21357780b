//! Seccomp filters per thread kind, as tables of allowed system calls.
//!
//! Each thread of a partition process installs the profile for what it does right after
//! it starts: the vCPU threads only run `KVM_RUN` and friends, the device thread polls
//! eventfds and does disk I/O, each virtio-blk disk's worker only does positional I/O on
//! its disk, the main thread additionally spawns those threads.
//! Filters stack, so a thread started by `Main` is limited by both. Anything off the
//! table kills the whole process with `SIGSYS`, which the supervisor reports.
//!
//! The tables are data: when the VMM grows a new system call, add a row. To find what a
//! profile misses, install it with [`Violation::Log`] and read the kernel log.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_fpu,
    kvm_irq_level, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_msr_list, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {profile:?} seccomp filter: {source}")]
    Build {
        profile: SeccompProfile,
        source: seccompiler::BackendError,
    },
    #[error("installing the {profile:?} seccomp filter: {source}")]
    Install {
        profile: SeccompProfile,
        source: seccompiler::Error,
    },
}

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeccompProfile {
    /// The process's main thread after sandboxing: control socket, spawning threads.
    Main,
    /// The device / event-loop thread: eventfds, disk I/O, dirty log, interrupts.
    Device,
    /// A vCPU thread.
    Vcpu,
    /// A virtio-blk disk's worker thread (`devices::virtio::block`).
    Block,
    /// The virtio notifier thread (`devices::virtio::notify`): waits on the queue
    /// eventfds and processes queues as a vCPU thread would, but issues no ioctl.
    Notify,
    /// The reaper left outside the PID namespace: waits for the VMM, ends like it.
    Reaper,
    /// [`SeccompProfile::Vcpu`] plus reading the rest of its own state (XSAVE, XCRs,
    /// debug registers, TSC frequency, CPUID), for a partition launched to snapshot.
    VcpuSnapshot,
    /// [`SeccompProfile::Main`] plus reading the VM's irqchip, PIT and clock, the host's
    /// CPU fingerprint and sizing the handed-over memory file, for a partition launched
    /// to snapshot (it writes only the files it was handed: nothing can be opened).
    MainSnapshot,
}

/// What happens on a system call that is not on the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Kill the process (`SIGSYS`). The only mode for production.
    KillProcess,
    /// Allow it but log it to the kernel audit log: for discovering what a profile needs.
    Log,
}

/// A condition on one system-call argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgFilter {
    Any,
    /// Argument `arg` equals one of `values`.
    OneOf {
        arg: u8,
        values: &'static [u64],
    },
    /// Argument `arg` has none of the bits in `mask` set.
    NoneOf {
        arg: u8,
        mask: u64,
    },
    /// Argument `arg` has all the bits in `mask` set.
    AllOf {
        arg: u8,
        mask: u64,
    },
    /// Argument `arg` is this process's pid (signals to ourselves only).
    OwnPid {
        arg: u8,
    },
}

/// One allowed system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallRule {
    pub name: &'static str,
    pub nr: i64,
    pub args: ArgFilter,
}

const fn any(name: &'static str, nr: i64) -> SyscallRule {
    SyscallRule {
        name,
        nr,
        args: ArgFilter::Any,
    }
}

const fn with(name: &'static str, nr: i64, args: ArgFilter) -> SyscallRule {
    SyscallRule { name, nr, args }
}

// ioctl request numbers, _IOC(dir, type, nr, size) as in <asm-generic/ioctl.h>.
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xAE;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(IOC_NONE, nr, 0)
}
const fn ior(nr: u64, size: usize) -> u64 {
    ioc(IOC_READ, nr, size)
}
const fn iow(nr: u64, size: usize) -> u64 {
    ioc(IOC_WRITE, nr, size)
}
const fn iowr(nr: u64, size: usize) -> u64 {
    ioc(IOC_READ | IOC_WRITE, nr, size)
}
use std::mem::size_of;

pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_DIRTY_LOG: u64 = iow(0x42, size_of::<kvm_dirty_log>());
const KVM_IRQ_LINE: u64 = iow(0x61, size_of::<kvm_irq_level>());
const KVM_IRQ_LINE_STATUS: u64 = iowr(0x67, size_of::<kvm_irq_level>());
const KVM_SIGNAL_MSI: u64 = iow(0xa5, size_of::<kvm_msi>());
const KVM_CLEAR_DIRTY_LOG: u64 = iowr(0xc0, size_of::<kvm_clear_dirty_log>());

/// Interrupt injection, from whichever thread emulates a device.
const IRQ_IOCTLS: [u64; 3] = [KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS, KVM_SIGNAL_MSI];

/// vCPU thread: run, and the register access a reset or a debug dump needs.
const VCPU_IOCTLS: &[u64] = &[
    KVM_RUN,
    ior(0x81, size_of::<kvm_regs>()),
    iow(0x82, size_of::<kvm_regs>()),
    ior(0x83, size_of::<kvm_sregs>()),
    iow(0x84, size_of::<kvm_sregs>()),
    iowr(0x88, size_of::<kvm_msrs>()),
    iow(0x89, size_of::<kvm_msrs>()),
    ior(0x8c, size_of::<kvm_fpu>()),
    iow(0x8d, size_of::<kvm_fpu>()),
    ior(0x8e, size_of::<kvm_lapic_state>()),
    iow(0x8f, size_of::<kvm_lapic_state>()),
    ior(0x98, size_of::<kvm_mp_state>()),
    iow(0x99, size_of::<kvm_mp_state>()),
    ior(0x9f, size_of::<kvm_vcpu_events>()),
    iow(0xa0, size_of::<kvm_vcpu_events>()),
    io(0xad), // KVM_KVMCLOCK_CTRL
    IRQ_IOCTLS[0],
    IRQ_IOCTLS[1],
    IRQ_IOCTLS[2],
];

/// Device thread: dirty log, interrupts, non-blocking mode on its own fds.
const DEVICE_IOCTLS: &[u64] = &[
    KVM_GET_DIRTY_LOG,
    KVM_CLEAR_DIRTY_LOG,
    IRQ_IOCTLS[0],
    IRQ_IOCTLS[1],
    IRQ_IOCTLS[2],
    libc::FIONBIO,
];

/// What a vCPU thread reads of itself for a snapshot, beyond [`VCPU_IOCTLS`].
const SNAPSHOT_VCPU_IOCTLS: &[u64] = &[
    ior(0xa4, size_of::<kvm_xsave>()),     // KVM_GET_XSAVE
    ior(0xa6, size_of::<kvm_xcrs>()),      // KVM_GET_XCRS
    ior(0xa1, size_of::<kvm_debugregs>()), // KVM_GET_DEBUGREGS
    io(0xa3),                              // KVM_GET_TSC_KHZ
    iowr(0x91, size_of::<kvm_cpuid2>()),   // KVM_GET_CPUID2
];

/// What the main thread reads for a snapshot: the VM's irqchip, clock and PIT, and the
/// host fingerprint (supported CPUID, MSR index list) from `/dev/kvm`.
const SNAPSHOT_MAIN_IOCTLS: &[u64] = &[
    iowr(0x62, size_of::<kvm_irqchip>()),   // KVM_GET_IRQCHIP
    ior(0x7c, size_of::<kvm_clock_data>()), // KVM_GET_CLOCK
    ior(0x9f, size_of::<kvm_pit_state2>()), // KVM_GET_PIT2
    iowr(0x05, size_of::<kvm_cpuid2>()),    // KVM_GET_SUPPORTED_CPUID
    iowr(0x02, size_of::<kvm_msr_list>()),  // KVM_GET_MSR_INDEX_LIST
];

const SNAPSHOT_VCPU: &[SyscallRule] = &[with(
    "ioctl",
    libc::SYS_ioctl,
    ArgFilter::OneOf {
        arg: 1,
        values: SNAPSHOT_VCPU_IOCTLS,
    },
)];

/// The memory file is written with `pwrite64` and synced with `fsync` (both in
/// [`DEVICE`]), then sized with `ftruncate` so untouched pages stay holes.
const SNAPSHOT_MAIN: &[SyscallRule] = &[
    with(
        "ioctl",
        libc::SYS_ioctl,
        ArgFilter::OneOf {
            arg: 1,
            values: SNAPSHOT_MAIN_IOCTLS,
        },
    ),
    any("ftruncate", libc::SYS_ftruncate),
];

const FCNTL_CMDS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD_CLOEXEC as u64,
];

const PRCTL_OPS: &[u64] = &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64];

/// What every thread of the process needs: memory, futexes, time, logging to stderr,
/// thread start-up and exit. No executable mappings.
const COMMON: &[SyscallRule] = &[
    any("read", libc::SYS_read),
    any("write", libc::SYS_write),
    any("readv", libc::SYS_readv),
    any("writev", libc::SYS_writev),
    any("close", libc::SYS_close),
    any("lseek", libc::SYS_lseek),
    any("fstat", libc::SYS_fstat),
    any("newfstatat", libc::SYS_newfstatat),
    any("statx", libc::SYS_statx),
    with(
        "fcntl",
        libc::SYS_fcntl,
        ArgFilter::OneOf {
            arg: 1,
            values: FCNTL_CMDS,
        },
    ),
    any("futex", libc::SYS_futex),
    with(
        "mmap",
        libc::SYS_mmap,
        ArgFilter::NoneOf {
            arg: 2,
            mask: libc::PROT_EXEC as u64,
        },
    ),
    with(
        "mprotect",
        libc::SYS_mprotect,
        ArgFilter::NoneOf {
            arg: 2,
            mask: libc::PROT_EXEC as u64,
        },
    ),
    any("munmap", libc::SYS_munmap),
    any("mremap", libc::SYS_mremap),
    any("madvise", libc::SYS_madvise),
    any("brk", libc::SYS_brk),
    any("rt_sigreturn", libc::SYS_rt_sigreturn),
    any("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    // abort() resets SIGABRT's handler before raising it; without this a panic would be
    // reported as a seccomp kill instead of SIGABRT.
    any("rt_sigaction", libc::SYS_rt_sigaction),
    any("sigaltstack", libc::SYS_sigaltstack),
    any("set_robust_list", libc::SYS_set_robust_list),
    any("rseq", libc::SYS_rseq),
    with(
        "prctl",
        libc::SYS_prctl,
        ArgFilter::OneOf {
            arg: 0,
            values: PRCTL_OPS,
        },
    ),
    any("sched_yield", libc::SYS_sched_yield),
    any("sched_getaffinity", libc::SYS_sched_getaffinity),
    any("clock_gettime", libc::SYS_clock_gettime),
    any("clock_nanosleep", libc::SYS_clock_nanosleep),
    any("nanosleep", libc::SYS_nanosleep),
    any("getrandom", libc::SYS_getrandom),
    any("getpid", libc::SYS_getpid),
    any("gettid", libc::SYS_gettid),
    with("tgkill", libc::SYS_tgkill, ArgFilter::OwnPid { arg: 0 }),
    any("restart_syscall", libc::SYS_restart_syscall),
    any("exit", libc::SYS_exit),
    any("exit_group", libc::SYS_exit_group),
    // Allowed here but answered with EACCES by a program of its own (see `compile`): once
    // the partition runs nothing is opened in any thread, whatever Landlock (or its
    // absence) would allow. An error, not a kill, because glibc itself opens files
    // lazily from any thread: the first time a thread's malloc heap shrinks it reads
    // /proc/sys/vm/overcommit_memory (seen killing a vCPU thread whose exit tally had
    // grown), and counting CPUs for a new arena reads /sys. Both cope with the error.
    // `open` and `openat2` are not listed: those kill.
    any("openat", libc::SYS_openat),
];

/// A vCPU thread: KVM_RUN and register access; it may kick other threads via eventfds
/// (`write`, in COMMON) and report on the control socket.
const VCPU: &[SyscallRule] = &[
    with(
        "ioctl",
        libc::SYS_ioctl,
        ArgFilter::OneOf {
            arg: 1,
            values: VCPU_IOCTLS,
        },
    ),
    any("sendmsg", libc::SYS_sendmsg),
    any("sendto", libc::SYS_sendto),
];

/// The device / event-loop thread.
const DEVICE: &[SyscallRule] = &[
    with(
        "ioctl",
        libc::SYS_ioctl,
        ArgFilter::OneOf {
            arg: 1,
            values: DEVICE_IOCTLS,
        },
    ),
    any("epoll_wait", libc::SYS_epoll_wait),
    any("epoll_pwait", libc::SYS_epoll_pwait),
    any("epoll_pwait2", libc::SYS_epoll_pwait2),
    any("epoll_ctl", libc::SYS_epoll_ctl),
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("preadv", libc::SYS_preadv),
    any("pwritev", libc::SYS_pwritev),
    any("fsync", libc::SYS_fsync),
    any("fdatasync", libc::SYS_fdatasync),
    any("fallocate", libc::SYS_fallocate),
    any("sendmsg", libc::SYS_sendmsg),
    any("recvmsg", libc::SYS_recvmsg),
    any("sendto", libc::SYS_sendto),
    any("recvfrom", libc::SYS_recvfrom),
    any("shutdown", libc::SYS_shutdown),
    any("timerfd_settime", libc::SYS_timerfd_settime),
    any("timerfd_gettime", libc::SYS_timerfd_gettime),
    any("getrusage", libc::SYS_getrusage),
];

/// A virtio-blk worker: positional reads and writes, flushes, hole punching / zeroing
/// (exactly the two modes it uses) on its one disk fd. It waits for requests and takes
/// the device lock with `futex` and raises the guest interrupt by writing the irqfd
/// (`write`), both in COMMON.
const BLOCK: &[SyscallRule] = &[
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("preadv", libc::SYS_preadv),
    any("pwritev", libc::SYS_pwritev),
    any("fdatasync", libc::SYS_fdatasync),
    with(
        "fallocate",
        libc::SYS_fallocate,
        ArgFilter::OneOf {
            arg: 1,
            values: &[
                (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
                (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u64,
            ],
        },
    ),
];

/// The notifier: `poll` on its eventfds; a queue it processes may send on a socket (the
/// network's transmit), like a vCPU thread; reading and writing eventfds is in COMMON.
const NOTIFY: &[SyscallRule] = &[
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    any("sendmsg", libc::SYS_sendmsg),
    any("sendto", libc::SYS_sendto),
];

/// Extra for the main thread: starting threads (never processes).
const MAIN_EXTRA: &[SyscallRule] = &[
    with(
        "clone",
        libc::SYS_clone,
        ArgFilter::AllOf {
            arg: 0,
            mask: libc::CLONE_THREAD as u64,
        },
    ),
    // Allowed here but answered with ENOSYS by the first program (see `compile`): its
    // flags sit in memory a filter cannot read, and glibc falls back to clone(), which
    // is checked.
    any("clone3", libc::SYS_clone3),
    // New threads install their own, narrower profile on top of this one; filters can
    // only be added, never removed, so this grants nothing.
    with(
        "prctl",
        libc::SYS_prctl,
        ArgFilter::OneOf {
            arg: 0,
            values: &[libc::PR_SET_NO_NEW_PRIVS as u64],
        },
    ),
    with(
        "seccomp",
        libc::SYS_seccomp,
        ArgFilter::OneOf {
            arg: 0,
            values: &[libc::SECCOMP_SET_MODE_FILTER as u64],
        },
    ),
];

/// The reaper: wait, then re-raise the child's signal on itself or exit with its code.
/// Nothing else, not even memory allocation.
const REAPER: &[SyscallRule] = &[
    any("wait4", libc::SYS_wait4),
    any("rt_sigaction", libc::SYS_rt_sigaction),
    any("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    any("rt_sigreturn", libc::SYS_rt_sigreturn),
    any("getpid", libc::SYS_getpid),
    any("gettid", libc::SYS_gettid),
    with("tgkill", libc::SYS_tgkill, ArgFilter::OwnPid { arg: 0 }),
    any("restart_syscall", libc::SYS_restart_syscall),
    any("exit", libc::SYS_exit),
    any("exit_group", libc::SYS_exit_group),
];

impl SeccompProfile {
    /// The full table for this profile.
    pub fn rules(self) -> Vec<SyscallRule> {
        let mut rules = COMMON.to_vec();
        match self {
            SeccompProfile::Reaper => return REAPER.to_vec(),
            SeccompProfile::Vcpu => rules.extend_from_slice(VCPU),
            SeccompProfile::Device => rules.extend_from_slice(DEVICE),
            SeccompProfile::Block => rules.extend_from_slice(BLOCK),
            SeccompProfile::Notify => rules.extend_from_slice(NOTIFY),
            SeccompProfile::Main => {
                rules.extend_from_slice(DEVICE);
                rules.extend_from_slice(MAIN_EXTRA);
            }
            SeccompProfile::VcpuSnapshot => {
                rules.extend_from_slice(VCPU);
                rules.extend_from_slice(SNAPSHOT_VCPU);
            }
            SeccompProfile::MainSnapshot => {
                rules.extend_from_slice(DEVICE);
                rules.extend_from_slice(MAIN_EXTRA);
                rules.extend_from_slice(SNAPSHOT_MAIN);
            }
        }
        rules
    }

    /// Compiles the profile into the BPF programs to install, in order.
    pub fn compile(self, violation: Violation) -> Result<Vec<BpfProgram>, SeccompError> {
        let build = |source| SeccompError::Build {
            profile: self,
            source,
        };
        let mismatch = match violation {
            Violation::KillProcess => SeccompAction::KillProcess,
            Violation::Log => SeccompAction::Log,
        };
        let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for rule in self.rules() {
            let chain = map.entry(rule.nr).or_default();
            chain.extend(seccomp_rules(rule.args).map_err(build)?);
        }
        // An empty chain means "any arguments"; a syscall listed both with and without
        // conditions must therefore stay unconditional.
        for rule in self.rules() {
            if rule.args == ArgFilter::Any {
                map.insert(rule.nr, Vec::new());
            }
        }
        let table =
            SeccompFilter::new(map, mismatch, SeccompAction::Allow, arch()).map_err(build)?;
        let mut programs = Vec::new();
        // First: once the table is installed, installing anything needs its permission.
        if matches!(self, SeccompProfile::Main | SeccompProfile::MainSnapshot) {
            programs.push(errno_for(libc::SYS_clone3, libc::ENOSYS).map_err(build)?);
        }
        if self != SeccompProfile::Reaper {
            programs.push(errno_for(libc::SYS_openat, libc::EACCES).map_err(build)?);
        }
        programs.push(BpfProgram::try_from(table).map_err(build)?);
        Ok(programs)
    }
}

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

/// A program answering system call `nr` with `errno` and allowing everything else (the
/// other programs still decide); stacked filters take the strictest answer.
fn errno_for(nr: i64, errno: i32) -> Result<BpfProgram, seccompiler::BackendError> {
    let map = BTreeMap::from([(nr, Vec::new())]);
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch(),
    )?;
    BpfProgram::try_from(filter)
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    // Every filtered argument is a C `int` or a 32-bit ioctl number; the upper half of
    // the register is not defined for those, so compare the low 32 bits only.
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn seccomp_rules(args: ArgFilter) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let one = |c| SeccompRule::new(vec![c]).map(|r| vec![r]);
    match args {
        ArgFilter::Any => Ok(Vec::new()),
        ArgFilter::OneOf { arg, values } => values
            .iter()
            .map(|v| SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)?]))
            .collect(),
        ArgFilter::NoneOf { arg, mask } => one(cond(arg, SeccompCmpOp::MaskedEq(mask), 0)?),
        ArgFilter::AllOf { arg, mask } => one(cond(arg, SeccompCmpOp::MaskedEq(mask), mask)?),
        ArgFilter::OwnPid { arg } => {
            one(cond(arg, SeccompCmpOp::Eq, u64::from(std::process::id()))?)
        }
    }
}

/// Installs `profile` on the calling thread; the process must already be
/// `no_new_privs` (see [`super::set_no_new_privs`]).
pub fn install(profile: SeccompProfile) -> Result<(), SeccompError> {
    install_with(profile, Violation::KillProcess)
}

/// [`install`] with a chosen reaction to violations.
pub fn install_with(profile: SeccompProfile, violation: Violation) -> Result<(), SeccompError> {
    install_programs(profile, &profile.compile(violation)?)
}

/// Installs programs compiled earlier with [`SeccompProfile::compile`] in this same
/// process ([`ArgFilter::OwnPid`] bakes in the pid).
pub fn install_programs(
    profile: SeccompProfile,
    programs: &[BpfProgram],
) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { profile, source })?;
    }
    Ok(())
}
