//! A PID namespace for the partition process.
//!
//! `unshare(CLONE_NEWPID)` moves only the caller's future children, and a process whose
//! children would land in another PID namespace may not create threads. So the partition
//! process forks once, first thing, while it is single-threaded and before it opens
//! `/dev/kvm` (a VM belongs to the address space that created it): the child is PID 1 of
//! the new namespace and goes on to be the VMM, threads and all; the parent stays outside
//! as its reaper, which only waits and then ends the way the child ended (same exit code,
//! same signal), so the supervisor still sees the partition's real end. Inside the
//! namespace the VMM sees no other process: there is nothing to name, signal or trace.
//!
//! Unprivileged, a PID namespace needs a user namespace: both are created together here
//! (the later [`super::apply_process_sandbox`] nests its own user namespace inside it).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::seccomp::{self, SeccompProfile};

/// What [`enter_pid_namespace`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// This process is PID 1 of a new PID namespace; its reaper waits outside.
    Entered {
        /// Steps that degraded (an id map that could not be written).
        warnings: Vec<String>,
    },
    /// The host refused; the process goes on in the host's PID namespace.
    Refused(String),
}

/// Moves the rest of this process's life into a new PID namespace (see the module docs).
/// Returns in the child only; the parent never returns from here.
///
/// Call it while the process is single-threaded and has not opened `/dev/kvm` yet.
pub fn enter_pid_namespace() -> io::Result<PidNamespace> {
    let mut warnings = Vec::new();
    if let Err(reason) = unshare_pid_namespace(&mut warnings) {
        return Ok(PidNamespace::Refused(reason));
    }
    let (alive_read, alive_write) = pipe()?;
    // SAFETY: the caller guarantees a single thread, so the child's copy of the process
    // has no locks held by threads that no longer exist and may run ordinary Rust.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(alive_write);
            die_with_reaper(&alive_read)?;
            Ok(PidNamespace::Entered { warnings })
        }
        child => {
            drop(alive_read);
            reap(child, alive_write)
        }
    }
}

/// User and PID namespace together, or the PID namespace alone (privileged hosts).
fn unshare_pid_namespace(warnings: &mut Vec<String>) -> Result<(), String> {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: unshare takes flags only; on failure nothing changed.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) } == 0 {
        super::map_ids(uid, gid, warnings);
        return Ok(());
    }
    let user_err = io::Error::last_os_error();
    // SAFETY: as above.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(format!(
        "no PID namespace: with a user namespace ({user_err}), without ({err})"
    ))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the live two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created both fds; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The VMM must not outlive its reaper: the supervisor watches (and kills) the reaper.
fn die_with_reaper(alive_read: &OwnedFd) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // The reaper may have died before the line above; then its end of the pipe is
    // closed and the death signal will never come. (getppid() cannot tell: the parent
    // is outside this namespace and shows as 0.)
    let mut pfd = libc::pollfd {
        fd: alive_read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    if ready > 0 && pfd.revents & libc::POLLHUP != 0 {
        return Err(io::Error::other("the reaper exited before the VMM started"));
    }
    Ok(())
}

/// The parent's whole remaining life: drop everything, wait, end like the child.
fn reap(child: libc::pid_t, alive_write: OwnedFd) -> ! {
    // The control socket and everything else belong to the VMM now.
    if let Err(e) = super::close_fds_except(&[alive_write.as_raw_fd()]) {
        tracing::warn!("reaper: closing fds: {e}");
    }
    if let Err(e) = super::set_rlimit("RLIMIT_CORE", libc::RLIMIT_CORE, 0) {
        tracing::warn!("reaper: {e}");
    }
    let filtered = super::set_no_new_privs()
        .map_err(|e| e.to_string())
        .and_then(|()| seccomp::install(SeccompProfile::Reaper).map_err(|e| e.to_string()));
    if let Err(e) = filtered {
        tracing::warn!("reaper: seccomp filter not installed: {e}");
    }
    let status = wait_for(child);
    end_like(status)
}

fn wait_for(child: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing into a live int.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            return status;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // No child to wait for: nothing sensible to report but failure.
            // SAFETY: ends the process; nothing in it needs cleaning up.
            unsafe { libc::_exit(1) };
        }
    }
}

fn end_like(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        // SAFETY: default disposition, then an unblocked raise of the same signal: the
        // process ends by it, as the child did (no core: RLIMIT_CORE is 0).
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(signal);
            libc::_exit(128 + signal);
        }
    }
    // SAFETY: ends the process with the child's exit code.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}
