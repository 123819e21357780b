//! Starting one partition process with its end of the control socket as fd
//! [`CONTROL_FD`], its stdout and stderr on a pipe the supervisor reads (into the
//! partition's log, [`crate::log`]), and signalling it by pidfd so a recycled pid is
//! never hit.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
    /// The read end of the child's stdout and stderr.
    pub output: OwnedFd,
}

/// Starts `spec.program spec.args… --control-fd 3`; with `cgroup_procs` (a cgroup's
/// `cgroup.procs`, open for writing) the child joins that cgroup before it execs, so
/// everything it runs and forks is in it from the start.
pub fn spawn_partition(
    spec: &LaunchSpec,
    cgroup_procs: Option<&std::fs::File>,
) -> io::Result<Spawned> {
    let procs_fd = cgroup_procs.map(AsRawFd::as_raw_fd);
    // Both ends are close-on-exec; the child's end is dup'ed onto CONTROL_FD below.
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    // Close-on-exec too; the Command dups the write end onto fds 1 and 2, and drops its
    // copies when it goes out of scope, so the read end sees EOF once the child is gone.
    let (output, output_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let mut command = Command::new(&spec.program);
    command
        // What `ps` and `top -c` show: the partition's name (the VMM sets its thread
        // name, `top`'s default column, once it knows it).
        .arg0(format!("bulkhead-vmm: {}", spec.name()))
        .args(&spec.args)
        .arg("--control-fd")
        .arg(CONTROL_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(output_write.try_clone()?))
        .stderr(Stdio::from(output_write));
    // SAFETY: the hook runs in the forked child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes at most three system calls (write,
    // dup2 or fcntl) on plain integers and a static buffer, and allocates nothing.
    // `procs_fd` is open in the parent (the caller holds its `File` across this call),
    // so in the child too, until the exec closes it (CLOEXEC); writing "0" to a
    // cgroup.procs file moves the writer. `theirs_fd` stays open in the parent until
    // after spawn, so it is open in the child too; dup2 onto CONTROL_FD clears CLOEXEC
    // on the copy (and fcntl does when it already is CONTROL_FD), so exactly this fd
    // survives the exec, and no Rust object in the child owns CONTROL_FD.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = procs_fd {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            let rc = if theirs_fd != CONTROL_FD {
                libc::dup2(theirs_fd, CONTROL_FD)
            } else {
                libc::fcntl(theirs_fd, libc::F_SETFD, 0)
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(command);
    drop(theirs);
    let pidfd = Pidfd::open(child.id())?;
    Ok(Spawned {
        child,
        pidfd,
        socket: ours,
        output,
    })
}

/// A process handle that stays bound to one process even after its pid is reused.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl std::os::fd::AsFd for Pidfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Pidfd {
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        Ok(Pidfd(fd))
    }

    /// Sends SIGKILL; a process that already exited is not an error.
    pub fn kill(&self) -> io::Result<()> {
        match rustix::process::pidfd_send_signal(&self.0, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
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
