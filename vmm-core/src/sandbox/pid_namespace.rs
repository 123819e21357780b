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
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{
    getgid, getuid, set_parent_process_death_signal, waitpid, Pid, Resource, Signal, WaitOptions,
};
use rustix::thread::UnshareFlags;

use super::seccomp::{self, SeccompProfile};

/// What [`enter_pid_namespace`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// This process is PID 1 of a new PID namespace; its reaper waits outside.
    Entered,
    /// The host does not offer one (no unprivileged user namespaces); the process goes
    /// on in the host's PID namespace, a [`super::SandboxGap::PidNamespace`].
    Refused(PidNamespaceRefused),
}

/// Why no PID namespace could be created: the errors of both attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no PID namespace: with a user namespace ({with_user}), without ({without})")]
pub struct PidNamespaceRefused {
    /// `unshare(CLONE_NEWUSER | CLONE_NEWPID)`.
    pub with_user: Errno,
    /// `unshare(CLONE_NEWPID)` alone.
    pub without: Errno,
}

/// Moves the rest of this process's life into a new PID namespace (see the module docs).
/// Returns in the child only; the parent never returns from here.
///
/// Call it while the process is single-threaded and has not opened `/dev/kvm` yet.
///
/// `Err` when a step the host supports failed (the id maps of the new user namespace,
/// an unexpected `unshare` error, the fork): the partition must not run.
pub fn enter_pid_namespace() -> io::Result<PidNamespace> {
    if let Err(refused) = unshare_pid_namespace()? {
        return Ok(PidNamespace::Refused(refused));
    }
    let (alive_read, alive_write) = pipe_with(PipeFlags::CLOEXEC)?;
    // SAFETY: the caller guarantees a single thread, so the child's copy of the process
    // has no locks held by threads that no longer exist and may run ordinary Rust. No
    // safe fork exists (rustix's is unsafe for the same reason); glibc's runs the atfork
    // handlers that keep its own state consistent.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(alive_write);
            die_with_reaper(&alive_read)?;
            Ok(PidNamespace::Entered)
        }
        child => {
            drop(alive_read);
            reap(child, alive_write)
        }
    }
}

/// User and PID namespace together, or the PID namespace alone (privileged hosts).
/// `Ok(Err(_))` when the host does not offer one; `Err` when something failed.
fn unshare_pid_namespace() -> io::Result<Result<(), PidNamespaceRefused>> {
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    let with_user = match super::unshare(UnshareFlags::NEWUSER | UnshareFlags::NEWPID) {
        Ok(()) => {
            super::map_ids(uid, gid).map_err(io::Error::other)?;
            return Ok(Ok(()));
        }
        Err(e) if super::host_lacks(e) => e,
        Err(e) => return Err(e.into()),
    };
    // On failure unshare changed nothing, so the second try starts clean.
    match super::unshare(UnshareFlags::NEWPID) {
        Ok(()) => Ok(Ok(())),
        Err(without) if super::host_lacks(without) => {
            Ok(Err(PidNamespaceRefused { with_user, without }))
        }
        Err(e) => Err(e.into()),
    }
}

/// The VMM must not outlive its reaper: the supervisor watches (and kills) the reaper.
fn die_with_reaper(alive_read: &OwnedFd) -> io::Result<()> {
    set_parent_process_death_signal(Some(Signal::KILL))?;
    // The reaper may have died before the line above; then its end of the pipe is
    // closed and the death signal will never come. (getppid() cannot tell: the parent
    // is outside this namespace and shows as 0.)
    let mut pfd = [PollFd::new(alive_read, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ready = poll(&mut pfd, Some(&zero))?;
    if ready > 0 && pfd[0].revents().contains(PollFlags::HUP) {
        return Err(io::Error::other("the reaper exited before the VMM started"));
    }
    Ok(())
}

/// The parent's whole remaining life: drop everything, wait, end like the child.
fn reap(child: libc::pid_t, alive_write: OwnedFd) -> ! {
    // The control socket and everything else belong to the VMM now.
    if let Err(e) = super::close_fds_except(&[alive_write.as_fd().as_raw_fd()]) {
        tracing::warn!("reaper: closing fds: {e}");
    }
    if let Err(e) = super::set_rlimit("RLIMIT_CORE", Resource::Core, 0) {
        tracing::warn!("reaper: {e}");
    }
    match super::set_no_new_privs() {
        Err(e) => tracing::warn!("reaper: seccomp filter not installed: {e}"),
        Ok(()) => {
            if let Err(e) = seccomp::install(SeccompProfile::Reaper) {
                tracing::warn!("reaper: seccomp filter not installed: {e}");
            }
        }
    }
    let status = wait_for(child);
    end_like(status)
}

fn wait_for(child: libc::pid_t) -> libc::c_int {
    let Some(pid) = Pid::from_raw(child) else {
        exit_now(1)
    };
    loop {
        match waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((waited, status))) if waited == pid => return status.as_raw(),
            Err(Errno::INTR) => {}
            // No child to wait for: nothing sensible to report but failure.
            _ => exit_now(1),
        }
    }
}

fn end_like(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        // SAFETY: default disposition, then an unblocked raise of the same signal: the
        // process ends by it, as the child did (no core: RLIMIT_CORE is 0). Only libc
        // offers these for any signal number (rustix's sigaction is runtime-only and
        // unsafe; nix's Signal cannot name real-time signals). All pointers are to the
        // live local `set`.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(signal);
        }
        exit_now(128 + signal);
    }
    exit_now(libc::WEXITSTATUS(status))
}

/// `_exit`: ends the process at once, without atexit handlers or stdio flushing, whose
/// system calls the reaper's seccomp filter does not allow.
fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit takes an int and never returns; the reaper holds nothing that needs
    // flushing or unwinding.
    unsafe { libc::_exit(code) }
}
