//! Each test runs the sandbox in a forked child, since seccomp, Landlock and
//! namespaces cannot be undone and would break the test runner. A forked child has a
//! single thread, which is also what `unshare(CLONE_NEWUSER)` requires.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::*;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Signaled(i32),
}

/// Runs `f` in a forked child and reports how the child ended; `f`'s return value is
/// its exit code.
fn in_child(f: impl FnOnce() -> i32) -> Outcome {
    // SAFETY: fork has no memory-safety preconditions; the child only runs `f` and then
    // `_exit`s without returning into the test harness. glibc keeps malloc usable in the
    // child of a multi-threaded parent.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's atexit handlers or
        // destructors twice.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child, writing into a live int.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    }
}

fn under_profile(profile: SeccompProfile, f: impl FnOnce() -> i32) -> Outcome {
    in_child(move || {
        if set_no_new_privs().is_err() {
            return 90;
        }
        if install(profile).is_err() {
            return 91;
        }
        f()
    })
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn open_read(path: &Path) -> Result<(), i32> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path; the fd is closed right away.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: closing the fd we just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

fn open_write(path: &Path) -> Result<(), i32> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: as in open_read.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: closing the fd we just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

#[test]
fn ioctl_numbers_match_the_kernel_headers() {
    assert_eq!(KVM_RUN, 0xAE80);
    assert_eq!(KVM_GET_DIRTY_LOG, 0x4010_AE42);
}

#[test]
fn every_profile_compiles() {
    for p in [
        SeccompProfile::Main,
        SeccompProfile::Device,
        SeccompProfile::Vcpu,
        SeccompProfile::Block,
        SeccompProfile::Notify,
        SeccompProfile::Reaper,
    ] {
        let programs = p.compile(Violation::KillProcess).unwrap();
        assert!(!programs.is_empty());
    }
}

#[test]
fn socket_creation_kills_a_vcpu_thread_with_sigsys() {
    let outcome = under_profile(SeccompProfile::Vcpu, || {
        // SAFETY: socket() takes integers only.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        0
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS));
}

#[test]
fn execve_kills_every_profile_with_sigsys() {
    for profile in [
        SeccompProfile::Main,
        SeccompProfile::Device,
        SeccompProfile::Vcpu,
    ] {
        let outcome = under_profile(profile, || {
            let sh = c"/bin/sh";
            let argv = [sh.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path and null-terminated argv/envp arrays.
            unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            0
        });
        assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS), "{profile:?}");
    }
}

/// glibc opens files lazily from whatever thread gets there first (the first heap of a
/// thread's arena to shrink reads /proc/sys/vm/overcommit_memory): that must fail, not
/// kill the partition, as it did a vCPU thread in the lab.
#[test]
fn no_thread_profile_opens_a_file_but_a_library_open_is_an_error_not_a_kill() {
    for profile in [
        SeccompProfile::Device,
        SeccompProfile::Vcpu,
        SeccompProfile::Block,
        SeccompProfile::Notify,
        SeccompProfile::VcpuSnapshot,
    ] {
        let outcome = under_profile(profile, || match open_read(Path::new("/etc/hostname")) {
            Err(libc::EACCES) => 0,
            Err(_) => 1,
            Ok(()) => 2,
        });
        assert_eq!(outcome, Outcome::Exited(0), "{profile:?}");
    }
}

#[test]
fn executable_mappings_are_forbidden() {
    let outcome = under_profile(SeccompProfile::Device, || {
        // SAFETY: an anonymous mapping that is never used.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        0
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS));
}

#[test]
fn ioctl_off_the_table_is_forbidden() {
    let outcome = under_profile(SeccompProfile::Vcpu, || {
        let mut ws = [0u16; 4];
        // SAFETY: TIOCGWINSZ writes a winsize (4 u16) into `ws`.
        unsafe { libc::ioctl(0, libc::TIOCGWINSZ, ws.as_mut_ptr()) };
        0
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS));
}

#[test]
fn the_notifier_thread_cannot_run_a_vcpu_or_open_files() {
    let run = under_profile(SeccompProfile::Notify, || {
        // SAFETY: KVM_RUN on fd 0 (never a vCPU); the filter kills before the kernel
        // would look at it.
        unsafe { libc::ioctl(0, KVM_RUN as libc::c_ulong, 0) };
        0
    });
    assert_eq!(run, Outcome::Signaled(libc::SIGSYS));
    let open = under_profile(SeccompProfile::Notify, || {
        i32::from(open_read(Path::new("/etc/hostname")) != Err(libc::EACCES))
    });
    assert_eq!(open, Outcome::Exited(0));
}

#[test]
fn fork_is_forbidden_but_threads_start_under_main() {
    let threads = under_profile(SeccompProfile::Main, || {
        // clone3 answers ENOSYS, so glibc falls back to clone(CLONE_THREAD …).
        match std::thread::spawn(|| 7).join() {
            Ok(7) => 0,
            _ => 1,
        }
    });
    assert_eq!(threads, Outcome::Exited(0));

    let fork = under_profile(SeccompProfile::Main, || {
        // SAFETY: if fork succeeded (it must not), the child exits at once.
        if unsafe { libc::fork() } == 0 {
            // SAFETY: ends the grandchild immediately.
            unsafe { libc::_exit(0) };
        }
        0
    });
    assert_eq!(fork, Outcome::Signaled(libc::SIGSYS));
}

#[test]
fn allowed_work_runs_under_each_profile() {
    for profile in [
        SeccompProfile::Main,
        SeccompProfile::Device,
        SeccompProfile::Vcpu,
    ] {
        let outcome = under_profile(profile, || {
            let v: Vec<u8> = (0..100_000).map(|i| i as u8).collect();
            let mut out = std::io::sink();
            let _ = out.write_all(&v);
            // SAFETY: getpid touches no memory.
            let _ = unsafe { libc::getpid() };
            let _ = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(1));
            0
        });
        assert_eq!(outcome, Outcome::Exited(0), "{profile:?}");
    }
}

#[test]
fn log_mode_reports_without_killing() {
    let outcome = in_child(|| {
        if set_no_new_privs().is_err()
            || install_with(SeccompProfile::Vcpu, Violation::Log).is_err()
        {
            return 91;
        }
        // SAFETY: socket() takes integers only; the fd is closed.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return 2;
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

fn landlock_abi() -> Option<u32> {
    match landlock_support() {
        LandlockSupport::Available { abi } => Some(abi),
        LandlockSupport::Unavailable { reason } => {
            eprintln!("skipping Landlock assertions: {reason}");
            None
        }
    }
}

#[test]
fn landlock_opens_listed_files_and_refuses_the_rest() {
    let Some(abi) = landlock_abi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("disk.img");
    let secret = dir.path().join("secret");
    std::fs::write(&allowed, b"disk").unwrap();
    std::fs::write(&secret, b"secret").unwrap();
    let rules = vec![AllowedPath::new(&allowed, Access::Read)];
    let outcome = in_child(move || {
        if set_no_new_privs().is_err() || landlock::restrict_self(&rules, abi).is_err() {
            return 90;
        }
        if open_read(&allowed).is_err() {
            return 1;
        }
        if open_write(&allowed) != Err(libc::EACCES) {
            return 2;
        }
        if open_read(&secret) != Err(libc::EACCES) {
            return 3;
        }
        if open_read(Path::new("/etc/passwd")) != Err(libc::EACCES) {
            return 4;
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

fn rlimit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live `r`.
    unsafe { libc::getrlimit(resource, &mut r) };
    r.rlim_cur
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD on any int is harmless; it fails with EBADF if closed.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn net_ns() -> std::io::Result<std::path::PathBuf> {
    std::fs::read_link("/proc/self/ns/net")
}

#[test]
fn full_sandbox_closes_fds_limits_resources_and_isolates() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("private.img");
    std::fs::write(&image, b"private").unwrap();
    let host_net = net_ns().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let outcome = in_child(move || {
        let stray = std::fs::File::open("/dev/null").unwrap();
        let kept = std::fs::File::open("/dev/null").unwrap();
        let config = SandboxConfig {
            allowed_paths: vec![AllowedPath::new(&image, Access::ReadWrite)],
            keep_fds: vec![kept.as_raw_fd()],
            max_open_files: 64,
            address_space: Some(address_space_for_guest(256 << 20, 8 << 20)),
            namespaces: true,
        };
        let Ok(report) = apply_process_sandbox(&config) else {
            return 90;
        };
        if fd_is_open(stray.as_raw_fd()) || !fd_is_open(kept.as_raw_fd()) {
            return 1;
        }
        std::mem::forget(stray);
        if rlimit(libc::RLIMIT_CORE) != 0 || rlimit(libc::RLIMIT_NOFILE) != 64 {
            return 2;
        }
        if rlimit(libc::RLIMIT_AS) != (256 << 20) + (8 << 20) + ADDRESS_SPACE_HEADROOM {
            return 3;
        }
        if report.namespaces != Namespaces::None && net_ns().ok() == Some(host_net.clone()) {
            return 4;
        }
        if report.namespaces == Namespaces::None && report.warnings.is_empty() {
            return 5;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return 6;
        }
        if matches!(report.landlock, LandlockSupport::Available { .. }) {
            if open_write(&image).is_err() {
                return 7;
            }
            if open_read(Path::new("/etc/passwd")) != Err(libc::EACCES) {
                return 8;
            }
        }
        0
    });
    drop(listener);
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn this_host_gives_full_namespaces_and_landlock() {
    // Documents what the development host provides; a host without them gets the
    // degraded path covered above, with warnings.
    let outcome = in_child(|| {
        let Ok(report) = apply_process_sandbox(&SandboxConfig::default()) else {
            return 90;
        };
        match (
            report.namespaces,
            report.landlock,
            report.warnings.is_empty(),
        ) {
            (Namespaces::UserAndAll, LandlockSupport::Available { .. }, true) => 0,
            (Namespaces::None, _, _) => 1,
            (Namespaces::AllWithoutUser, _, _) => 2,
            _ => 3,
        }
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn missing_allowlisted_path_is_an_error_naming_it() {
    let Some(abi) = landlock_abi() else { return };
    let outcome = in_child(move || {
        let _ = set_no_new_privs();
        let rules = vec![AllowedPath::new("/nonexistent/bulkhead.img", Access::Read)];
        match landlock::restrict_self(&rules, abi) {
            Err(e) if e.to_string().contains("/nonexistent/bulkhead.img") => 0,
            _ => 1,
        }
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn threads_started_under_main_can_narrow_to_their_own_profile() {
    let outcome = under_profile(SeccompProfile::Main, || {
        let vcpu = std::thread::spawn(|| {
            if install(SeccompProfile::Vcpu).is_err() {
                return 1;
            }
            // SAFETY: getpid touches no memory.
            unsafe { libc::getpid() };
            0
        });
        vcpu.join().unwrap_or(2)
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn the_vmm_sequence_sandbox_then_main_then_thread_profiles_runs() {
    // What bulkhead-vmm does: sandbox the process, confine the main thread, start a vCPU
    // and a device thread that narrow further, and do their kind of work.
    let outcome = in_child(|| {
        let Ok(_report) = apply_process_sandbox(&SandboxConfig::default()) else {
            return 90;
        };
        if install(SeccompProfile::Main).is_err() {
            return 91;
        }
        let spawn = |profile| {
            std::thread::spawn(move || {
                if install(profile).is_err() {
                    return 1;
                }
                let v: Vec<u64> = (0..10_000).collect();
                std::thread::sleep(std::time::Duration::from_millis(1));
                i32::from(v.len() != 10_000) * 2
            })
        };
        let vcpu = spawn(SeccompProfile::Vcpu);
        let device = spawn(SeccompProfile::Device);
        let a = vcpu.join().unwrap_or(3);
        let b = device.join().unwrap_or(3);
        a * 10 + b
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn abort_under_a_profile_is_reported_as_sigabrt_not_as_seccomp() {
    for profile in [
        SeccompProfile::Main,
        SeccompProfile::Device,
        SeccompProfile::Vcpu,
    ] {
        let outcome = under_profile(profile, || std::process::abort());
        assert_eq!(outcome, Outcome::Signaled(libc::SIGABRT), "{profile:?}");
    }
}

fn enter_or_skip() -> Option<i32> {
    match enter_pid_namespace() {
        Ok(PidNamespace::Entered) => None,
        Ok(PidNamespace::Refused(_)) => Some(43),
        Err(_) => Some(44),
    }
}

#[test]
fn the_vmm_side_is_pid_1_and_the_reaper_ends_with_its_exit_code() {
    let outcome = in_child(|| {
        if let Some(code) = enter_or_skip() {
            return code;
        }
        // PID 1, and a thread can still be started (the reason for the fork).
        let thread_ok = std::thread::spawn(|| 7).join().ok() == Some(7);
        match (std::process::id(), thread_ok) {
            (1, true) => 42,
            (1, false) => 2,
            _ => 3,
        }
    });
    assert_eq!(outcome, Outcome::Exited(42));
}

#[test]
fn a_seccomp_kill_inside_the_namespace_ends_the_reaper_with_sigsys() {
    let outcome = in_child(|| {
        if let Some(code) = enter_or_skip() {
            return code;
        }
        if set_no_new_privs().is_err() || install(SeccompProfile::Vcpu).is_err() {
            return 91;
        }
        // SAFETY: socket() takes integers only.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        0
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS));
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Gone, or a zombie nobody needs to kill.
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[test]
fn killing_the_reaper_takes_the_vmm_with_it() {
    // SAFETY: as in `in_child`; the child only enters the namespace and sleeps.
    let reaper = unsafe { libc::fork() };
    assert!(reaper >= 0, "fork failed");
    if reaper == 0 {
        if let Some(code) = enter_or_skip() {
            // SAFETY: ends the forked child without unwinding into the harness.
            unsafe { libc::_exit(code) };
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let vmm = loop {
        if let Some(&vmm) = children_of(reaper).first() {
            break vmm;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no VMM process appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // SAFETY: signals our own child.
    unsafe { libc::kill(reaper, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: waits for our own child, writing into a live int.
    assert_eq!(unsafe { libc::waitpid(reaper, &mut status, 0) }, reaper);
    while !is_dead(vmm) {
        assert!(
            std::time::Instant::now() < deadline,
            "the VMM {vmm} outlived its reaper"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn control_messages_carry_an_fd_under_the_thread_profiles() {
    use crate::control::{Event, MessageReader, MessageWriter};
    use crate::devices::framebuffer::FramebufferLayout;
    use crate::shm::Memfd;
    use std::os::fd::AsFd;

    for profile in [
        SeccompProfile::Main,
        SeccompProfile::Device,
        SeccompProfile::Vcpu,
    ] {
        // Sockets and the memfd exist before the filter, as in the VMM.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let layout = FramebufferLayout::new(64, 64).unwrap();
        let memfd = Memfd::create("fb", layout.region_size() as usize).unwrap();
        let outcome = under_profile(profile, move || {
            let mut writer = MessageWriter::<Event>::new(a);
            if writer
                .send_with_fds(&Event::Framebuffer { layout }, &[memfd.as_fd()])
                .is_err()
            {
                return 1;
            }
            // vCPU threads only ever send.
            if profile == SeccompProfile::Vcpu {
                return 0;
            }
            let mut reader = MessageReader::<Event>::new(b);
            let Ok(received) = reader.recv() else {
                return 2;
            };
            // Adopting and mapping a received memfd is the supervisor's side, which runs
            // unfiltered; here it is enough that the fd arrived.
            if received.fds.len() != 1 {
                return 3;
            }
            0
        });
        assert_eq!(outcome, Outcome::Exited(0), "{profile:?}");
    }
}

#[test]
fn landlock_alone_refuses_tcp_and_signals_to_processes_outside() {
    let Some(abi) = landlock_abi() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let parent = std::process::id() as i32;
    let outcome = in_child(move || {
        if set_no_new_privs().is_err() || landlock::restrict_self(&[], abi).is_err() {
            return 90;
        }
        // Same network namespace as the listener: only Landlock stands in the way.
        if abi >= 4 && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return 1;
        }
        // SAFETY: signal 0 only checks permission; nothing is delivered.
        if abi >= 6 && unsafe { libc::kill(parent, 0) } == 0 {
            return 2;
        }
        0
    });
    drop(listener);
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn landlock_read_write_directory_allows_creating_files_in_it_only() {
    let Some(abi) = landlock_abi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("allowed");
    std::fs::create_dir(&inside).unwrap();
    let rules = vec![AllowedPath::new(&inside, Access::ReadWrite)];
    let outside = dir.path().join("not-allowed.img");
    let created = inside.join("new.img");
    let outcome = in_child(move || {
        if set_no_new_privs().is_err() || landlock::restrict_self(&rules, abi).is_err() {
            return 90;
        }
        if std::fs::write(&created, b"x").is_err() {
            return 1;
        }
        if std::fs::remove_file(&created).is_err() {
            return 2;
        }
        if std::fs::write(&outside, b"x").is_ok() {
            return 3;
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

/// Makes this (forked, single-threaded) process's kernel look as if it had no Landlock:
/// `landlock_create_ruleset` answers ENOSYS, as on a kernel built without it. Only the
/// test child is affected; nothing in a real run can ask for this.
fn hide_landlock() -> bool {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    let map = std::collections::BTreeMap::from([(libc::SYS_landlock_create_ruleset, Vec::new())]);
    let Ok(filter) = SeccompFilter::new(
        map,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        std::env::consts::ARCH
            .try_into()
            .unwrap_or(seccompiler::TargetArch::x86_64),
    ) else {
        return false;
    };
    let Ok(program) = BpfProgram::try_from(filter) else {
        return false;
    };
    set_no_new_privs().is_ok() && seccompiler::apply_filter(&program).is_ok()
}

fn dumpable() -> i32 {
    // SAFETY: PR_GET_DUMPABLE takes no pointers and returns the flag.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE) }
}

#[test]
fn a_hard_rlimit_as_below_the_cap_fails_the_sandbox_naming_it_yet_every_other_step_runs() {
    let host_net = net_ns().unwrap();
    let outcome = in_child(move || {
        let hard = libc::rlimit {
            rlim_cur: 8 << 30,
            rlim_max: 8 << 30,
        };
        // SAFETY: setrlimit reads the live `hard`.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &hard) } != 0 {
            return 90;
        }
        let config = SandboxConfig {
            address_space: Some(16 << 30),
            ..SandboxConfig::default()
        };
        let err = match apply_process_sandbox(&config) {
            Ok(_) => return 1,
            Err(e) => e,
        };
        let text = err.to_string();
        if !text.contains("RLIMIT_AS") || !text.contains(&(16u64 << 30).to_string()) {
            return 2;
        }
        if err.failures.len() != 1 {
            return 3;
        }
        // The steps after the failed one were still applied.
        if net_ns().ok() == Some(host_net.clone()) {
            return 4;
        }
        if dumpable() != 0 || rlimit(libc::RLIMIT_NOFILE) != 256 {
            return 5;
        }
        if landlock_abi().is_some() && open_read(Path::new("/etc/passwd")) != Err(libc::EACCES) {
            return 6;
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn a_kernel_without_landlock_gives_a_reduced_sandbox_reporting_the_gap() {
    let outcome = in_child(|| {
        if !hide_landlock() {
            return 90;
        }
        let report = match apply_process_sandbox(&SandboxConfig::default()) {
            Ok(r) => r,
            Err(_) => return 1,
        };
        if !report.gaps.contains(&SandboxGap::Landlock) {
            return 2;
        }
        if !matches!(report.landlock, LandlockSupport::Unavailable { .. }) {
            return 3;
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn a_confined_process_is_not_dumpable_and_sees_no_proc() {
    let outcome = in_child(|| {
        let Ok(report) = apply_process_sandbox(&SandboxConfig::default()) else {
            return 90;
        };
        if dumpable() != 0 {
            return 1;
        }
        if report.namespaces != Namespaces::None {
            if !report.proc_hidden {
                return 2;
            }
            // Landlock may refuse to list it at all: equally nothing to see.
            if let Ok(mut entries) = std::fs::read_dir("/proc") {
                if entries.next().is_some() {
                    return 3;
                }
            }
            if std::fs::metadata("/proc/self/status").is_ok() {
                return 4;
            }
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

/// A file under `$HOME` the test may read; removed when dropped.
fn file_under_home() -> tempfile::NamedTempFile {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let mut file = tempfile::Builder::new()
        .prefix(".bulkhead-sandbox-test")
        .tempfile_in(home)
        .unwrap();
    file.write_all(b"private").unwrap();
    file
}

/// The partition's own confinement ([`crate::partition::confine`]), then the main
/// thread's filter, as a partition process has them once its guest runs.
fn confine_like_a_partition() -> bool {
    crate::partition::confine(None, 4 << 30, 0).is_ok() && install(SeccompProfile::Main).is_ok()
}

#[test]
fn a_confined_partition_process_cannot_open_a_file_under_home() {
    let file = file_under_home();
    let path = file.path().to_path_buf();
    let home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap());
    let outcome = in_child(move || {
        if open_read(&path).is_err() {
            return 90;
        }
        if !confine_like_a_partition() {
            return 91;
        }
        if open_read(&path).is_ok() || open_write(&path).is_ok() {
            return 1;
        }
        if open_read(&home).is_ok() {
            return 2;
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn without_landlock_seccomp_alone_still_refuses_opening_a_file_under_home() {
    let file = file_under_home();
    let path = file.path().to_path_buf();
    let outcome = in_child(move || {
        if !hide_landlock() {
            return 90;
        }
        if !confine_like_a_partition() {
            return 91;
        }
        match open_read(&path) {
            Err(libc::EACCES) => 0,
            Err(_) => 1,
            Ok(()) => 2,
        }
    });
    assert_eq!(outcome, Outcome::Exited(0));
}
