//! Starting one partition process with its end of the control socket as fd
//! [`CONTROL_FD`], and signalling it by pidfd so a recycled pid is never hit.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use super::LaunchSpec;

/// The fd number the partition process finds its control socket at.
pub const CONTROL_FD: RawFd = 3;

pub struct Spawned {
    pub child: Child,
    pub pidfd: Pidfd,
    pub socket: UnixStream,
}

/// Starts `spec.program spec.args… --control-fd 3`.
pub fn spawn_partition(spec: &LaunchSpec) -> io::Result<Spawned> {
    // Both ends are close-on-exec; the child's end is dup'ed onto CONTROL_FD below.
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .arg("--control-fd")
        .arg(CONTROL_FD.to_string())
        .stdin(Stdio::null());
    // SAFETY: the hook runs between fork and exec and only calls dup2 and fcntl, which
    // are async-signal-safe; `theirs_fd` stays open in the parent until after spawn.
    unsafe {
        command.pre_exec(move || install_control_fd(theirs_fd));
    }
    let child = command.spawn()?;
    drop(theirs);
    let pidfd = Pidfd::open(child.id())?;
    Ok(Spawned {
        child,
        pidfd,
        socket: ours,
    })
}

fn install_control_fd(fd: RawFd) -> io::Result<()> {
    if fd != CONTROL_FD {
        // SAFETY: dup2 onto a fixed number in the forked child; it clears CLOEXEC on the
        // copy, so exactly this fd survives the exec.
        if unsafe { libc::dup2(fd, CONTROL_FD) } < 0 {
            return Err(io::Error::last_os_error());
        }
    } else {
        // SAFETY: F_SETFD with plain flags on an open fd.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A process handle that stays bound to one process even after its pid is reused.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    fn open(pid: u32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Sends SIGKILL; a process that already exited is not an error.
    pub fn kill(&self) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a null siginfo and no flags reads no memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }
}

/// The process that runs the VM of partition process `pid`: its only child when the
/// partition forked into a PID namespace (then `pid` is the reaper waiting outside it),
/// otherwise `pid` itself. For CPU and memory figures.
pub fn vm_process(pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    match children.split_whitespace().collect::<Vec<_>>()[..] {
        [only] => only.parse().unwrap_or(pid),
        _ => pid,
    }
}

/// "SIGKILL", "SIGSYS", … for a signal number.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// Why a process that ended by `signal` ended, for a person.
pub fn describe_signal(signal: i32) -> String {
    match signal {
        libc::SIGSYS => "killed by SIGSYS: made a forbidden system call (seccomp)".to_string(),
        libc::SIGKILL => "killed by SIGKILL".to_string(),
        other => format!("killed by {}", signal_name(other)),
    }
}
