//! Supervisor tests against real child processes.
//!
//! The partition processes here are this test binary re-executed with a filter that runs
//! only [`fake_partition_process`]: the stand-in for `bulkhead-vmm` in
//! [`crate::testing`].

use std::time::Duration;

use vmm_core::control::{Event, InputDevice, InputEvent, MAX_CONSOLE_CHUNK};
use vmm_core::devices::framebuffer::{DamageRect, FramebufferLayout};

use super::*;
use crate::testing::{
    console_flood_bytes, fake_spec, kill9, wait_more_damage, wait_running, wait_state,
    DAMAGE_FLOOD_EVENTS, FLOOD_EVENTS, WAIT,
};

fn fake_test_name() -> String {
    let path = module_path!();
    let without_crate = path.split_once("::").map_or(path, |(_, rest)| rest);
    format!("{without_crate}::fake_partition_process")
}

fn fake(name: &str, mode: &str, restart: AutoRestart) -> LaunchSpec {
    fake_spec(
        std::env::current_exe().unwrap(),
        &fake_test_name(),
        name,
        mode,
        restart,
    )
}

fn supervisor(specs: Vec<LaunchSpec>) -> Supervisor {
    let sup = Supervisor::new(specs).unwrap();
    assert!(sup.start_all().is_empty());
    sup
}

fn reason(status: &PartitionStatus) -> String {
    match &status.state {
        ProcessState::Crashed { reason } => reason.clone(),
        other => panic!("expected Crashed, got {other:?}"),
    }
}

#[test]
fn kill_minus_nine_crashes_only_that_partition_and_restart_brings_it_back() {
    let sup = supervisor(vec![
        fake("a", "normal", AutoRestart::Never),
        fake("b", "normal", AutoRestart::Never),
        fake("c", "normal", AutoRestart::Never),
    ]);
    for n in ["a", "b", "c"] {
        wait_running(&sup, n);
    }
    let pid = sup.status("b").unwrap().pid.unwrap();
    kill9(pid);
    let crashed = wait_state(&sup, "b", ProcessState::is_crashed);
    assert_eq!(reason(&crashed), "killed by SIGKILL");
    assert_eq!(crashed.pid, None);

    wait_more_damage(&sup, "a", 5);
    wait_more_damage(&sup, "c", 5);
    assert_eq!(sup.status("a").unwrap().state, ProcessState::Running);
    assert_eq!(sup.status("c").unwrap().state, ProcessState::Running);

    sup.restart("b", Duration::from_secs(2)).unwrap();
    let back = wait_running(&sup, "b");
    assert_ne!(back.pid, Some(pid));
    wait_more_damage(&sup, "b", 5);
}

#[test]
fn on_crash_policy_restarts_until_a_crash_loop_stops_it_with_the_reason() {
    let sup = supervisor(vec![fake(
        "r",
        "normal",
        AutoRestart::OnCrash { max_retries: 2 },
    )]);
    let mut pid = wait_running(&sup, "r").pid.unwrap();
    for restart in 1..=2 {
        kill9(pid);
        let (status, ok) = sup
            .wait_until("r", WAIT, |s| {
                s.restarts == restart && s.state == ProcessState::Running && s.pid != Some(pid)
            })
            .unwrap();
        assert!(ok, "no automatic restart {restart}: {status:?}");
        pid = status.pid.unwrap();
    }

    kill9(pid);
    // The third crash within the window: no restart, and the window says why.
    let (status, _) = sup
        .wait_until("r", Duration::from_secs(3), |s| {
            s.state == ProcessState::Running && s.restarts > 2
        })
        .unwrap();
    let why = reason(&status);
    assert!(
        why.starts_with("crash loop: 2 automatic restart(s) within 10 min")
            && why.contains("killed by SIGKILL"),
        "{why}"
    );
    assert_eq!(status.restarts, 2);
    assert_eq!(status.pid, None);
    // Started by hand, it runs again with a fresh count.
    sup.start("r").unwrap();
    assert_eq!(wait_running(&sup, "r").restarts, 0);
}

/// The host's cgroup v2 base for partitions, or why this test cannot use one.
fn cgroup_base_or_skip() -> Option<&'static cgroup::CgroupBase> {
    match cgroup::CgroupBase::for_host() {
        Ok(b) => Some(b),
        Err(why) => {
            eprintln!("SKIPPED: no partition cgroups on this host: {why}");
            None
        }
    }
}

#[test]
fn a_partition_process_lives_in_its_own_cgroup_with_its_limits_until_it_ends() {
    let Some(base) = cgroup_base_or_skip() else {
        return;
    };
    let mut spec = fake("cg", "normal", AutoRestart::Never);
    spec.resources.cpu_weight = 250;
    spec.resources.cpu_max_percent = 50;
    spec.resources.io_weight = 40;
    let sup = supervisor(vec![spec]);
    let status = wait_running(&sup, "cg");
    let pid = status.pid.unwrap();
    let dir = status.resources.cgroup.clone().expect("no cgroup");
    assert!(dir.starts_with(base.dir()), "{}", dir.display());
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    let procs: Vec<u32> = read("cgroup.procs")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(procs.contains(&pid), "{pid} not in {procs:?}");
    let rel = dir.strip_prefix(cgroup::cgroup2_mount().unwrap()).unwrap();
    assert_eq!(
        cgroup::cgroup_of(pid).unwrap(),
        format!("/{}", rel.display()),
        "the kernel's view of the process"
    );

    // Another process of the partition (its relay, passt) joins it by pid.
    let mut helper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    sup.add_to_cgroup("cg", helper.id()).unwrap();
    assert!(read("cgroup.procs").contains(&helper.id().to_string()));

    if base.controllers().contains("cpu") {
        assert_eq!(read("cpu.weight").trim(), "250");
        assert_eq!(read("cpu.max").trim(), "50000 100000");
        let mut r = sup.status("cg").unwrap();
        assert!(!r.resources.missing.iter().any(|m| m.starts_with("cpu")));
        // A change in the policy editor reaches the running partition.
        let mut changed = fake("cg", "normal", AutoRestart::Never).resources;
        changed.cpu_weight = 700;
        sup.set_resources("cg", changed).unwrap();
        assert_eq!(read("cpu.weight").trim(), "700");
        assert_eq!(read("cpu.max").trim(), "max 100000");
        r = sup.status("cg").unwrap();
        assert_eq!(r.resources.cgroup.as_ref(), Some(&dir));
    } else {
        eprintln!(
            "SKIPPED cpu values: cgroup v2 here offers no cpu controller ({:?} enabled)",
            base.controllers()
        );
        let badge = status.resources.badge().unwrap();
        assert!(
            badge.contains("cpu") && badge.contains(": no controller"),
            "{badge}"
        );
    }
    if base.controllers().contains("memory") {
        let limit: u64 = read("memory.max").trim().parse().unwrap();
        assert_eq!(
            limit,
            (16 << 20) + 64 * 64 * 4 + cgroup::VMM_ALLOWANCE_BYTES
        );
        assert_eq!(read("memory.swap.max").trim(), "0");
        assert_eq!(read("memory.oom.group").trim(), "1");
    } else {
        eprintln!("SKIPPED memory values: cgroup v2 here offers no memory controller");
    }
    if base.controllers().contains("io") {
        assert_eq!(read("io.weight").trim(), "default 40");
    } else {
        eprintln!("SKIPPED io values: cgroup v2 here offers no io controller");
    }

    sup.stop("cg", Duration::from_secs(5)).unwrap();
    // Its cgroup goes with it, helpers and all.
    assert!(!dir.exists(), "{} left behind", dir.display());
    let ended = helper.wait().unwrap();
    assert!(
        !ended.success(),
        "the helper was killed with the cgroup: {ended}"
    );
    assert_eq!(sup.status("cg").unwrap().resources.cgroup, None);
}

#[test]
fn a_partition_over_its_memory_limit_is_killed_alone_and_the_others_run_on() {
    let Some(base) = cgroup_base_or_skip() else {
        return;
    };
    if !base.controllers().contains("memory") {
        eprintln!("SKIPPED: cgroup v2 here offers no memory controller");
        return;
    }
    let sup = supervisor(vec![
        fake("hog", "memory_hog", AutoRestart::Never),
        fake("calm", "normal", AutoRestart::Never),
    ]);
    wait_running(&sup, "calm");
    // Its limit is guest RAM + framebuffer + the VMM allowance (~272 MiB); it touches 1 GiB.
    let status = wait_state(&sup, "hog", |s| s.is_crashed());
    assert!(
        reason(&status).contains("SIGKILL"),
        "killed by the kernel's OOM killer in its cgroup: {status:?}"
    );
    assert_eq!(status.resources.cgroup, None, "its cgroup went with it");
    // Nothing else was touched: the other partition and this supervisor run on.
    std::thread::sleep(Duration::from_millis(300));
    let calm = sup.status("calm").unwrap();
    assert_eq!(calm.state, ProcessState::Running, "{calm:?}");
    sup.stop("calm", Duration::from_secs(5)).unwrap();
}

#[test]
fn two_partitions_of_the_same_name_get_separate_cgroups() {
    let Some(base) = cgroup_base_or_skip() else {
        return;
    };
    let one = base.create("same").unwrap();
    let two = base.create("same").unwrap();
    assert_ne!(one.path(), two.path());
    assert!(two.path().ends_with("same-2"), "{}", two.path().display());
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    two.add_pid(child.id()).unwrap();
    assert_eq!(two.pids().unwrap(), [child.id()]);
    // Removing one leaves the other's process alone.
    one.remove(Duration::from_secs(1)).unwrap();
    assert!(child.try_wait().unwrap().is_none());
    two.remove(Duration::from_secs(1)).unwrap();
    assert!(!two.path().exists());
    child.wait().unwrap();
}

#[test]
fn garbage_on_the_socket_cuts_off_only_that_partition() {
    let sup = supervisor(vec![
        fake("good", "normal", AutoRestart::OnCrash { max_retries: 3 }),
        fake("junk", "garbage", AutoRestart::OnCrash { max_retries: 3 }),
        fake("huge", "oversized", AutoRestart::Never),
        fake("offscreen", "bad_damage", AutoRestart::Never),
        fake("liar", "wrong_name", AutoRestart::Never),
        fake("tiny", "small_fb", AutoRestart::Never),
        fake("shrinkable", "unsealed_fb", AutoRestart::Never),
        fake("chatty", "oversized_console", AutoRestart::Never),
    ]);
    let cases = [
        ("junk", "message length"),
        ("huge", "exceeds the maximum"),
        ("offscreen", "outside the screen"),
        ("liar", "says it is partition"),
        ("tiny", "the layout needs"),
        ("shrinkable", "F_SEAL_SHRINK missing"),
        ("chatty", "console bytes holds 4097 items"),
    ];
    for (name, why) in cases {
        let status = wait_state(&sup, name, ProcessState::is_crashed);
        let r = reason(&status);
        assert!(
            r.starts_with("protocol violation: ") && r.contains(why),
            "{name}: {r}"
        );
        let (status, gone) = sup.wait_until(name, WAIT, |s| s.pid.is_none()).unwrap();
        assert!(gone, "{name}: cut-off process must be killed: {status:?}");
    }
    // Protocol violations are not crashes to retry: a hostile partition stays off.
    let junk = sup.status("junk").unwrap();
    assert_eq!(junk.restarts, 0);
    assert!(junk.state.is_crashed());

    wait_running(&sup, "good");
    wait_more_damage(&sup, "good", 5);
}

#[test]
fn a_partition_stalling_mid_frame_or_hoarding_fds_is_cut_off_while_a_quiet_one_is_not() {
    let sup = supervisor(vec![
        fake("stall", "stall_mid_frame", AutoRestart::Never),
        fake("hoard", "fd_hoard", AutoRestart::Never),
        fake("quiet", "quiet", AutoRestart::Never),
    ]);
    wait_running(&sup, "quiet");
    let quiet_since = std::time::Instant::now();
    for (name, why) in [
        ("stall", "frame not complete"),
        ("hoard", "more than 4 fds"),
    ] {
        let status = wait_state(&sup, name, ProcessState::is_crashed);
        let r = reason(&status);
        assert!(
            r.starts_with("protocol violation: ") && r.contains(why),
            "{name}: {r}"
        );
    }
    // Idle between frames is no violation, however long.
    let idle_for = vmm_core::control::FRAME_DEADLINE * 2;
    if let Some(left) = idle_for.checked_sub(quiet_since.elapsed()) {
        std::thread::sleep(left);
    }
    assert_eq!(sup.status("quiet").unwrap().state, ProcessState::Running);
}

#[test]
fn a_partition_that_reads_slowly_is_cut_off_and_sends_never_block_the_caller() {
    let sup = supervisor(vec![
        fake(
            "slow",
            "slow_reader",
            AutoRestart::OnCrash { max_retries: 3 },
        ),
        fake("fine", "normal", AutoRestart::Never),
    ]);
    wait_running(&sup, "slow");
    wait_running(&sup, "fine");
    let fine_before = sup.status("fine").unwrap().damage_events;
    // A full chunk of pointer events per call: the socket buffer fills after a few
    // dozen calls, then only the queue is left.
    let events: Vec<InputEvent> = (0..vmm_core::control::MAX_INPUT_EVENTS)
        .map(|i| InputEvent {
            device: InputDevice::Tablet,
            ev_type: 3,
            code: 0,
            value: i as i32,
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut refused = None;
    let began = std::time::Instant::now();
    while began.elapsed() < WAIT {
        let t = std::time::Instant::now();
        let sent = sup.send_input("slow", &events);
        slowest = slowest.max(t.elapsed());
        if let Err(e) = sent {
            refused = Some(e);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let err = refused.expect("a partition that does not read is cut off");
    assert!(err.to_string().contains("\"slow\""), "{err}");
    println!(
        "slowest send_input: {slowest:?}; cut off after {:?}",
        began.elapsed()
    );
    assert!(
        slowest < Duration::from_millis(50),
        "send_input waited {slowest:?} on a partition"
    );
    let status = wait_state(&sup, "slow", ProcessState::is_crashed);
    let r = reason(&status);
    assert!(
        r.starts_with("protocol violation: ") && r.contains("did not read"),
        "{r}"
    );
    let (status, gone) = sup.wait_until("slow", WAIT, |s| s.pid.is_none()).unwrap();
    assert!(gone, "cut-off process must be killed: {status:?}");
    assert_eq!(status.restarts, 0, "a cut-off partition stays off");
    // Other commands to it fail at once, naming it, instead of waiting.
    let t = std::time::Instant::now();
    let err = sup.pause("slow").unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(50));
    assert!(err.to_string().contains("\"slow\""), "{err}");

    // The other partition rendered all along and still does.
    assert!(sup.status("fine").unwrap().damage_events > fine_before);
    wait_more_damage(&sup, "fine", 5);
    assert_eq!(sup.status("fine").unwrap().state, ProcessState::Running);
}

#[test]
fn a_flood_of_full_screen_damage_is_taken_as_at_most_one_screen_per_poll() {
    let sup = supervisor(vec![
        fake("flood", "damage_flood", AutoRestart::Never),
        fake("calm", "normal", AutoRestart::Never),
    ]);
    let screen = 64 * 64;
    let mut polls = 0;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let done = sup.status("flood").unwrap().damage_events >= DAMAGE_FLOOD_EVENTS;
        let taken = sup.take_damage("flood").unwrap();
        let area: u64 = taken.iter().map(DamageRect::area).sum();
        assert!(area <= screen, "one poll took {area} pixels: {taken:?}");
        assert!(taken.len() <= MAX_KEPT_DAMAGE_RECTS, "{taken:?}");
        polls += 1;
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flood did not arrive: {:?}",
            sup.status("flood").unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(polls > 1);
    assert_eq!(sup.status("flood").unwrap().state, ProcessState::Running);
    wait_more_damage(&sup, "calm", 5);
}

#[test]
fn forbidden_syscall_kills_the_partition_and_is_reported() {
    let sup = supervisor(vec![
        fake("bad", "forbidden_syscall", AutoRestart::Never),
        fake("ok", "normal", AutoRestart::Never),
    ]);
    let status = wait_state(&sup, "bad", ProcessState::is_crashed);
    let r = reason(&status);
    assert!(
        r.contains("SIGSYS") && r.contains("forbidden system call"),
        "{r}"
    );
    wait_more_damage(&sup, "ok", 3);
}

#[test]
fn stop_all_kills_a_partition_that_ignores_stop() {
    let sup = supervisor(vec![
        fake(
            "stubborn",
            "ignore_stop",
            AutoRestart::OnCrash { max_retries: 3 },
        ),
        fake("polite", "normal", AutoRestart::OnCrash { max_retries: 3 }),
    ]);
    wait_running(&sup, "stubborn");
    wait_running(&sup, "polite");
    sup.stop_all(Duration::from_millis(1500));

    let stubborn = sup.status("stubborn").unwrap();
    assert_eq!(stubborn.state, ProcessState::Stopped);
    assert_eq!(stubborn.pid, None);
    assert!(stubborn.killed_after_timeout);
    let exit = stubborn.last_exit.unwrap();
    assert!(
        exit.contains("SIGKILL") && exit.contains("ignoring the stop"),
        "{exit}"
    );

    let polite = sup.status("polite").unwrap();
    assert_eq!(polite.state, ProcessState::Stopped);
    assert!(!polite.killed_after_timeout);
    assert_eq!(polite.last_exit.as_deref(), Some("exited with status 0"));
    // A requested stop is not a crash: no restart happens.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sup.status("polite").unwrap().pid, None);
}

#[test]
fn framebuffer_pixels_arrive_through_shared_memory() {
    let sup = supervisor(vec![fake("fb", "normal", AutoRestart::Never)]);
    wait_running(&sup, "fb");
    wait_more_damage(&sup, "fb", 3);
    let fb = sup.framebuffer("fb").unwrap().expect("framebuffer offered");
    assert_eq!(fb.layout(), FramebufferLayout::new(64, 64).unwrap());
    let damage = sup.take_damage("fb").unwrap();
    assert!(!damage.is_empty());
    assert!(damage.iter().all(|r| fb.contains(r)));

    // The fake writes its frame counter into pixel (0,0) after the memfd crossed the
    // socket; only shared memory can carry the later values.
    let first = fb.pixel(0, 0).unwrap();
    wait_more_damage(&sup, "fb", 3);
    let later = fb.pixel(0, 0).unwrap();
    assert!(later > first, "pixel did not change: {first} -> {later}");
    let mut rect = Vec::new();
    fb.read_rect(
        DamageRect {
            x: 0,
            y: 0,
            w: 2,
            h: 2,
        },
        &mut rect,
    )
    .unwrap();
    assert_eq!(rect.len(), 16);
    assert!(fb
        .read_rect(
            DamageRect {
                x: 63,
                y: 0,
                w: 2,
                h: 1
            },
            &mut rect
        )
        .is_err());
}

#[test]
fn commands_reach_the_partition_and_answers_come_back() {
    let sup = supervisor(vec![fake("cmd", "normal", AutoRestart::Never)]);
    wait_running(&sup, "cmd");
    sup.pause("cmd").unwrap();
    wait_state(&sup, "cmd", |s| *s == ProcessState::Paused);
    sup.resume("cmd").unwrap();
    wait_running(&sup, "cmd");

    let key = |value| InputEvent {
        device: InputDevice::Keyboard,
        ev_type: 1,
        code: 30,
        value,
    };
    sup.send_input("cmd", &[key(1), key(0)]).unwrap();
    sup.request_stats("cmd").unwrap();
    let shot = sup.request_screenshot("cmd").unwrap();
    let (status, ok) = sup.wait_until("cmd", WAIT, |s| s.stats.is_some()).unwrap();
    assert!(ok, "{status:?}");
    assert_eq!(status.stats.unwrap().uptime_ms, 1234);

    let mut serial = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..200 {
        serial.extend(sup.take_serial("cmd").unwrap());
        ready.extend(sup.take_screenshots_ready("cmd").unwrap());
        if serial.ends_with(b"input:2\n") && ready.contains(&shot) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        serial.ends_with(b"input:2\n"),
        "{:?}",
        String::from_utf8_lossy(&serial)
    );
    assert!(ready.contains(&shot));
}

/// Takes console output until `len` bytes arrived or [`WAIT`] passed.
fn take_console_until(sup: &Supervisor, name: &str, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while got.len() < len && std::time::Instant::now() < deadline {
        got.extend(sup.take_console(name).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    got
}

#[test]
fn console_bytes_round_trip_through_the_partition_process_in_order() {
    let sup = supervisor(vec![
        fake("agent", "normal", AutoRestart::Never),
        fake("bystander", "normal", AutoRestart::Never),
    ]);
    wait_running(&sup, "agent");
    wait_running(&sup, "bystander");
    // Every byte value, more than three chunks, over two calls. The fake validates each
    // command (so the chunks respect the cap) and answers with every byte inverted, so
    // matching output can only have passed through the partition process.
    let sent: Vec<u8> = (0..=255).cycle().take(3 * MAX_CONSOLE_CHUNK + 17).collect();
    sup.console_write("agent", &sent[..100]).unwrap();
    sup.console_write("agent", &sent[100..]).unwrap();
    let want: Vec<u8> = sent.iter().map(|b| !b).collect();
    let got = take_console_until(&sup, "agent", want.len());
    assert_eq!(got.len(), want.len());
    assert!(got == want, "console bytes changed or reordered on the way");
    assert!(sup.take_console("agent").unwrap().is_empty());
    assert!(
        sup.take_console("bystander").unwrap().is_empty(),
        "console bytes reach only the named partition"
    );
    assert_eq!(sup.status("agent").unwrap().state, ProcessState::Running);
}

#[test]
fn console_output_beyond_the_buffer_keeps_the_newest_bytes() {
    let sup = supervisor(vec![fake("loud", "console_flood", AutoRestart::Never)]);
    // The fake sends everything and exits 0; the event reader has drained by then.
    wait_state(&sup, "loud", |s| matches!(s, ProcessState::Exited { .. }));
    let got = sup.take_console("loud").unwrap();
    let sent = console_flood_bytes();
    assert_eq!(got.len(), MAX_CONSOLE_BUFFER);
    assert!(got[..] == sent[sent.len() - MAX_CONSOLE_BUFFER..]);
}

#[test]
fn partition_exiting_with_an_error_shows_crashed_with_the_status() {
    let sup = supervisor(vec![fake("x", "exit3", AutoRestart::Never)]);
    let status = wait_state(&sup, "x", ProcessState::is_crashed);
    assert_eq!(reason(&status), "guest fault: triple fault");
    assert_eq!(status.last_exit.as_deref(), Some("exited with status 3"));
}

#[test]
fn launch_errors_name_what_failed() {
    let dup = Supervisor::new(vec![
        fake("same", "normal", AutoRestart::Never),
        fake("same", "normal", AutoRestart::Never),
    ]);
    assert!(matches!(dup, Err(SupervisorError::DuplicateName(n)) if n == "same"));

    let mut missing = fake("ghost", "normal", AutoRestart::Never);
    missing.program = "/nonexistent/bulkhead-vmm".into();
    let sup = Supervisor::new(vec![missing]).unwrap();
    let err = sup.start("ghost").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/bulkhead-vmm"),
        "{err}"
    );
    assert!(matches!(
        sup.status("nope"),
        Err(SupervisorError::UnknownPartition(_))
    ));
    assert!(matches!(
        sup.pause("ghost"),
        Err(SupervisorError::NotRunning(_))
    ));
}

// ---- benchmark ----

/// CPU time (user + system) of this whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid out-buffer; getrusage writes only into it.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// Baseline: the bare protocol cost, reading the same flood with a plain reader and no
/// bookkeeping.
fn bare_reader_cpu() -> Duration {
    let spec = fake("bare", "flood", AutoRestart::Never);
    let mut spawned = super::spawn::spawn_partition(&spec, None).unwrap();
    let mut reader =
        vmm_core::control::MessageReader::<Event>::new(spawned.socket.try_clone().unwrap());
    let mut writer = vmm_core::control::MessageWriter::<Command>::new(spawned.socket);
    let before = cpu_time();
    let files = spec.open_files().unwrap();
    vmm_core::control::send_launch(&mut writer, &spec.launch, files).unwrap();
    reader.recv().unwrap();
    writer.send(&Command::Start).unwrap();
    let mut damage = 0;
    while let Ok(r) = reader.recv() {
        if matches!(r.message, Event::Damage { .. }) {
            damage += 1;
        }
    }
    let spent = cpu_time() - before;
    spawned.child.wait().unwrap();
    assert_eq!(damage, FLOOD_EVENTS);
    spent
}

fn supervisor_cpu() -> Duration {
    let sup = Supervisor::new(vec![fake("flood", "flood", AutoRestart::Never)]).unwrap();
    let before = cpu_time();
    sup.start("flood").unwrap();
    let (status, ok) = sup
        .wait_until("flood", Duration::from_secs(120), |s| {
            s.pid.is_none() && s.damage_events > 0
        })
        .unwrap();
    let spent = cpu_time() - before;
    assert!(ok, "{status:?}");
    assert_eq!(status.damage_events, FLOOD_EVENTS);
    spent
}

/// Supervisor CPU per damage event against the bare protocol cost, in one run.
/// `cargo test -p bulkhead --lib supervisor::tests::bench_ -- --ignored --nocapture --test-threads=1`
#[test]
#[ignore = "benchmark: run explicitly"]
fn bench_supervisor_cost_per_damage_event() {
    // Warm up both paths once, then measure each three times and keep the best.
    bare_reader_cpu();
    supervisor_cpu();
    let best = |f: fn() -> Duration| (0..3).map(|_| f()).min().unwrap();
    let bare = best(bare_reader_cpu);
    let sup = best(supervisor_cpu);
    let per = |d: Duration| d.as_nanos() as f64 / FLOOD_EVENTS as f64;
    println!(
        "damage events: {FLOOD_EVENTS}; bare protocol read {:.0} ns/event; supervisor {:.0} ns/event; ratio {:.2}",
        per(bare),
        per(sup),
        per(sup) / per(bare)
    );
}

// ---- the fake partition process ----

#[test]
fn a_reduced_sandbox_shows_in_the_status_and_the_guest_still_starts() {
    let sup = supervisor(vec![
        fake("reduced", "reduced_sandbox", AutoRestart::Never),
        fake("full", "normal", AutoRestart::Never),
    ]);
    let reduced = wait_running(&sup, "reduced");
    assert_eq!(
        reduced.sandbox,
        Some(SandboxStatus::Reduced {
            missing: vec![SandboxGap::Landlock]
        })
    );
    assert_eq!(reduced.sandbox_gaps(), &[SandboxGap::Landlock]);
    let full = wait_running(&sup, "full");
    assert_eq!(full.sandbox, Some(SandboxStatus::Full));
    assert!(full.sandbox_gaps().is_empty());
}

#[test]
fn a_failed_sandbox_crashes_the_partition_with_the_reason_and_it_is_neither_started_nor_restarted()
{
    let sup = supervisor(vec![fake(
        "broken",
        "sandbox_failed",
        AutoRestart::OnCrash { max_retries: 3 },
    )]);
    let status = wait_state(
        &sup,
        "broken",
        |s| matches!(s, ProcessState::Crashed { reason } if reason.contains("sandbox")),
    );
    let reason = reason(&status);
    assert!(
        reason.starts_with("sandbox failed, the guest did not run"),
        "{reason}"
    );
    assert!(reason.contains(crate::testing::SANDBOX_FAILURE), "{reason}");
    assert_eq!(status.sandbox, None);
    std::thread::sleep(Duration::from_millis(500));
    let later = sup.status("broken").unwrap();
    assert_eq!(
        later.restarts, 0,
        "a failing sandbox fails again: no restart"
    );
    assert!(later.pid.is_none());
}

#[test]
fn ready_without_a_sandbox_report_is_a_protocol_violation() {
    let sup = supervisor(vec![fake(
        "unsure",
        "ready_without_sandbox",
        AutoRestart::Never,
    )]);
    let status = wait_state(&sup, "unsure", ProcessState::is_crashed);
    assert!(
        reason(&status).contains("said Ready without reporting a working sandbox"),
        "{status:?}"
    );
}

#[test]
fn a_sandbox_report_after_start_is_a_protocol_violation() {
    let sup = supervisor(vec![fake(
        "liar",
        "second_sandbox_report",
        AutoRestart::Never,
    )]);
    let status = wait_state(&sup, "liar", ProcessState::is_crashed);
    assert!(
        reason(&status).contains("second sandbox report"),
        "{status:?}"
    );
}

#[test]
fn partition_output_goes_escaped_to_its_own_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::new(vec![fake("noisy", "noisy_output", AutoRestart::Never)]).unwrap();
    sup.set_log_dir(Some(dir.path().to_path_buf()));
    sup.start("noisy").unwrap();
    let status = wait_running(&sup, "noisy");
    let path = dir.path().join("noisy.log");
    assert_eq!(status.log_file.as_deref(), Some(path.as_path()));
    let escaped = "\\x1b]0;owned\\x07\\x1b[2Jhidden\\x0dvisible";
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.matches(escaped).count() == 2 || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        text.matches(escaped).count(),
        2,
        "stdout and stderr: {text}"
    );
    assert_eq!(text.matches("plain line\n").count(), 2, "{text}");
    assert!(
        text.bytes()
            .all(|b| b == b'\n' || (0x20..0x7f).contains(&b)),
        "only printable ASCII and newlines: {text:?}"
    );
}

#[test]
fn fake_partition_process() {
    crate::testing::fake_partition_main();
}

/// A fake partition that claims `memory_mib` of RAM and keeps at least `min_mib`.
fn fake_with_memory(name: &str, memory_mib: u64, min_mib: u32) -> LaunchSpec {
    let mut spec = fake(name, "normal", AutoRestart::Never);
    spec.launch.memory_mib = memory_mib;
    spec.resources.memory_min_mib = min_mib;
    spec
}

#[test]
fn a_balloon_target_reaches_the_partition_and_its_size_comes_back_in_stats() {
    let sup = supervisor(vec![fake("a", "normal", AutoRestart::Never)]);
    wait_running(&sup, "a");
    assert_eq!(sup.status("a").unwrap().balloon_target_mib, 0);
    sup.set_balloon("a", 8).unwrap();
    assert_eq!(sup.status("a").unwrap().balloon_target_mib, 8);
    sup.request_stats("a").unwrap();
    let (status, ok) = sup
        .wait_until("a", WAIT, |s| {
            s.stats.and_then(|st| st.balloon_mib) == Some(8)
        })
        .unwrap();
    assert!(ok, "{status:?}");
    // More than the guest's 16 MiB is refused here, before it reaches the partition.
    let err = sup.set_balloon("a", 17).unwrap_err();
    assert!(
        matches!(
            err,
            SupervisorError::BalloonTarget {
                target_mib: 17,
                memory_mib: 16,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(sup.status("a").unwrap().balloon_target_mib, 8);
    assert!(matches!(
        sup.set_balloon("nobody", 1),
        Err(SupervisorError::UnknownPartition(_))
    ));
    sup.stop("a", Duration::from_secs(5)).unwrap();
    wait_state(&sup, "a", |s| {
        !matches!(s, ProcessState::Running | ProcessState::Stopping)
    });
    assert!(matches!(
        sup.set_balloon("a", 1),
        Err(SupervisorError::NotRunning(_))
    ));
}

#[test]
fn memory_balancing_inflates_running_partitions_under_pressure_and_deflates_with_plenty() {
    let sup = supervisor(vec![
        fake_with_memory("small", 1024, 256),
        fake_with_memory("big", 2048, 512),
    ]);
    wait_running(&sup, "small");
    wait_running(&sup, "big");
    let states = sup.balloon_states();
    assert_eq!(states.len(), 2, "{states:?}");
    let host = |available_mib| memory_balance::HostMemory {
        total_mib: 16_000,
        available_mib,
    };
    // Plenty: nothing to do.
    assert!(sup.balance_memory(host(8_000)).is_empty());
    // 10 % available, 1600 MiB short of 20 %: shared 768 : 1536 by room.
    let sent = sup.balance_memory(host(1_600));
    assert_eq!(
        sent,
        [("big".to_string(), 1067), ("small".to_string(), 533)]
    );
    assert_eq!(sup.status("small").unwrap().balloon_target_mib, 533);
    // The same figures again (the guests are still giving): nothing more is asked.
    assert!(sup.balance_memory(host(1_600)).is_empty());
    // Worse: everyone down to their minimum, no further.
    let sent = sup.balance_memory(host(10));
    assert_eq!(
        sent,
        [("big".to_string(), 1536), ("small".to_string(), 768)]
    );
    // Plenty again: every balloon empties.
    let sent = sup.balance_memory(host(6_000));
    assert_eq!(sent, [("big".to_string(), 0), ("small".to_string(), 0)]);
    assert_eq!(sup.status("big").unwrap().balloon_target_mib, 0);
}

#[test]
fn the_memory_balancer_keeps_balloon_sizes_current_and_stops_with_the_supervisor() {
    let sup = supervisor(vec![fake("a", "normal", AutoRestart::Never)]);
    wait_running(&sup, "a");
    let dir = tempfile::tempdir().unwrap();
    sup.set_log_dir(Some(dir.path().to_path_buf()));
    sup.start_memory_balancing().unwrap();
    sup.start_memory_balancing().unwrap();
    // No request_stats here: the balancer asks every period, and records what it
    // learnt for `bulkhead ps` beside the partition's log.
    let pid = sup.status("a").unwrap().pid.unwrap();
    let until = std::time::Instant::now() + WAIT;
    let (status, recorded) = loop {
        let st = sup.status("a").unwrap();
        let figures = st
            .stats
            .and_then(|s| s.balloon_mib)
            .map(|actual| usage::BalloonFigures {
                pid,
                target_mib: st.balloon_target_mib,
                actual_mib: actual,
            });
        let recorded = usage::read_balloon_file(dir.path(), "a", pid);
        if figures.is_some() && recorded == figures {
            break (st, recorded);
        }
        assert!(
            std::time::Instant::now() < until,
            "status {st:?}, recorded {recorded:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(recorded.is_some(), "{status:?}");
    // This host decides the plan; with plenty of memory, even a forced target goes.
    if memory_balance::HostMemory::read().is_ok_and(|h| {
        h.available_mib > h.total_mib * memory_balance::DEFLATE_ABOVE_PERCENT / 100 + 100
    }) {
        sup.set_balloon("a", 4).unwrap();
        let (status, ok) = sup
            .wait_until("a", WAIT, |s| s.balloon_target_mib == 0)
            .unwrap();
        assert!(
            ok,
            "the balancer did not empty a balloon with plenty: {status:?}"
        );
    }
    let began = std::time::Instant::now();
    drop(sup);
    assert!(began.elapsed() < Duration::from_secs(10));
}
