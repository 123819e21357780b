//! Supervisor tests against real child processes.
//!
//! The partition processes here are this test binary re-executed with a filter that runs
//! only [`fake_partition_process`]: a stand-in for `bulkhead-vmm` at the process
//! boundary (it speaks the real protocol over the real socket, shares a real memfd and
//! installs the real seccomp profile), without a VM behind it.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_core::control::{
    control_stream_from_inherited_fd, Command, Event, InputDevice, InputEvent, MessageWriter,
    PartitionEndpoint, PartitionStats, VmState, MAX_CONSOLE_CHUNK,
};
use vmm_core::devices::framebuffer::{DamageRect, FramebufferLayout};
use vmm_core::shm::Memfd;

use super::*;

const WAIT: Duration = Duration::from_secs(20);

fn fake_test_name() -> String {
    let path = module_path!();
    let without_crate = path.split_once("::").map_or(path, |(_, rest)| rest);
    format!("{without_crate}::fake_partition_process")
}

fn fake(name: &str, mode: &str, restart: RestartPolicy) -> LaunchSpec {
    LaunchSpec {
        name: name.to_string(),
        program: std::env::current_exe().unwrap(),
        args: [
            fake_test_name().as_str(),
            "--exact",
            "--quiet",
            "--test-threads=1",
            "--",
            &format!("mode={mode}"),
            &format!("name={name}"),
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        restart,
    }
}

fn supervisor(specs: Vec<LaunchSpec>) -> Supervisor {
    let sup = Supervisor::new(specs).unwrap();
    assert!(sup.start_all().is_empty());
    sup
}

fn wait_state(
    sup: &Supervisor,
    name: &str,
    pred: impl Fn(&PartitionState) -> bool,
) -> PartitionStatus {
    let (status, ok) = sup.wait_until(name, WAIT, |s| pred(&s.state)).unwrap();
    assert!(ok, "{name}: condition not reached, last status {status:?}");
    status
}

fn wait_running(sup: &Supervisor, name: &str) -> PartitionStatus {
    wait_state(sup, name, |s| *s == PartitionState::Running)
}

/// Waits until the partition has sent `more` further damage events.
fn wait_more_damage(sup: &Supervisor, name: &str, more: u64) {
    let start = sup.status(name).unwrap().damage_events;
    let (status, ok) = sup
        .wait_until(name, WAIT, |s| s.damage_events >= start + more)
        .unwrap();
    assert!(ok, "{name} stopped rendering: {status:?}");
}

fn kill9(pid: u32) {
    // SAFETY: kill takes integers only; `pid` is our live child (checked by the caller
    // via a status with a pid).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

fn reason(status: &PartitionStatus) -> String {
    match &status.state {
        PartitionState::Crashed { reason } => reason.clone(),
        other => panic!("expected Crashed, got {other:?}"),
    }
}

#[test]
fn kill_minus_nine_crashes_only_that_partition_and_restart_brings_it_back() {
    let sup = supervisor(vec![
        fake("a", "normal", RestartPolicy::Never),
        fake("b", "normal", RestartPolicy::Never),
        fake("c", "normal", RestartPolicy::Never),
    ]);
    for n in ["a", "b", "c"] {
        wait_running(&sup, n);
    }
    let pid = sup.status("b").unwrap().pid.unwrap();
    kill9(pid);
    let crashed = wait_state(&sup, "b", PartitionState::is_crashed);
    assert_eq!(reason(&crashed), "killed by SIGKILL");
    assert_eq!(crashed.pid, None);

    wait_more_damage(&sup, "a", 5);
    wait_more_damage(&sup, "c", 5);
    assert_eq!(sup.status("a").unwrap().state, PartitionState::Running);
    assert_eq!(sup.status("c").unwrap().state, PartitionState::Running);

    sup.restart("b", Duration::from_secs(2)).unwrap();
    let back = wait_running(&sup, "b");
    assert_ne!(back.pid, Some(pid));
    wait_more_damage(&sup, "b", 5);
}

#[test]
fn on_crash_policy_restarts_until_retries_run_out() {
    let sup = supervisor(vec![fake(
        "r",
        "normal",
        RestartPolicy::OnCrash { max_retries: 1 },
    )]);
    let first = wait_running(&sup, "r").pid.unwrap();
    kill9(first);
    let (status, ok) = sup
        .wait_until("r", WAIT, |s| {
            s.restarts == 1 && s.state == PartitionState::Running && s.pid != Some(first)
        })
        .unwrap();
    assert!(ok, "no automatic restart: {status:?}");

    kill9(status.pid.unwrap());
    let (status, _) = sup
        .wait_until("r", Duration::from_secs(2), |s| {
            s.state == PartitionState::Running && s.restarts > 1
        })
        .unwrap();
    assert!(
        status.state.is_crashed(),
        "retries exhausted, must stay crashed: {status:?}"
    );
    assert_eq!(status.restarts, 1);
}

#[test]
fn garbage_on_the_socket_cuts_off_only_that_partition() {
    let sup = supervisor(vec![
        fake("good", "normal", RestartPolicy::OnCrash { max_retries: 3 }),
        fake("junk", "garbage", RestartPolicy::OnCrash { max_retries: 3 }),
        fake("huge", "oversized", RestartPolicy::Never),
        fake("offscreen", "bad_damage", RestartPolicy::Never),
        fake("liar", "wrong_name", RestartPolicy::Never),
        fake("tiny", "small_fb", RestartPolicy::Never),
        fake("shrinkable", "unsealed_fb", RestartPolicy::Never),
        fake("chatty", "oversized_console", RestartPolicy::Never),
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
        let status = wait_state(&sup, name, PartitionState::is_crashed);
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
fn forbidden_syscall_kills_the_partition_and_is_reported() {
    let sup = supervisor(vec![
        fake("bad", "forbidden_syscall", RestartPolicy::Never),
        fake("ok", "normal", RestartPolicy::Never),
    ]);
    let status = wait_state(&sup, "bad", PartitionState::is_crashed);
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
            RestartPolicy::OnCrash { max_retries: 3 },
        ),
        fake(
            "polite",
            "normal",
            RestartPolicy::OnCrash { max_retries: 3 },
        ),
    ]);
    wait_running(&sup, "stubborn");
    wait_running(&sup, "polite");
    sup.stop_all(Duration::from_millis(1500));

    let stubborn = sup.status("stubborn").unwrap();
    assert_eq!(stubborn.state, PartitionState::Stopped);
    assert_eq!(stubborn.pid, None);
    assert!(stubborn.killed_after_timeout);
    let exit = stubborn.last_exit.unwrap();
    assert!(
        exit.contains("SIGKILL") && exit.contains("ignoring the stop"),
        "{exit}"
    );

    let polite = sup.status("polite").unwrap();
    assert_eq!(polite.state, PartitionState::Stopped);
    assert!(!polite.killed_after_timeout);
    assert_eq!(polite.last_exit.as_deref(), Some("exited with status 0"));
    // A requested stop is not a crash: no restart happens.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sup.status("polite").unwrap().pid, None);
}

#[test]
fn framebuffer_pixels_arrive_through_shared_memory() {
    let sup = supervisor(vec![fake("fb", "normal", RestartPolicy::Never)]);
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
    let sup = supervisor(vec![fake("cmd", "normal", RestartPolicy::Never)]);
    wait_running(&sup, "cmd");
    sup.pause("cmd").unwrap();
    wait_state(&sup, "cmd", |s| *s == PartitionState::Paused);
    sup.resume("cmd").unwrap();
    wait_running(&sup, "cmd");

    let key = |value| InputEvent {
        kind: InputDevice::Keyboard,
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
        fake("agent", "normal", RestartPolicy::Never),
        fake("bystander", "normal", RestartPolicy::Never),
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
    assert_eq!(sup.status("agent").unwrap().state, PartitionState::Running);
}

#[test]
fn console_output_beyond_the_buffer_keeps_the_newest_bytes() {
    let sup = supervisor(vec![fake("loud", "console_flood", RestartPolicy::Never)]);
    // The fake sends everything and exits 0; the event reader has drained by then.
    wait_state(&sup, "loud", |s| matches!(s, PartitionState::Exited { .. }));
    let got = sup.take_console("loud").unwrap();
    let sent = console_flood_bytes();
    assert_eq!(got.len(), MAX_CONSOLE_BUFFER);
    assert!(got[..] == sent[sent.len() - MAX_CONSOLE_BUFFER..]);
}

#[test]
fn partition_exiting_with_an_error_shows_crashed_with_the_status() {
    let sup = supervisor(vec![fake("x", "exit3", RestartPolicy::Never)]);
    let status = wait_state(&sup, "x", PartitionState::is_crashed);
    assert_eq!(reason(&status), "guest fault: triple fault");
    assert_eq!(status.last_exit.as_deref(), Some("exited with status 3"));
}

#[test]
fn launch_errors_name_what_failed() {
    let dup = Supervisor::new(vec![
        fake("same", "normal", RestartPolicy::Never),
        fake("same", "normal", RestartPolicy::Never),
    ]);
    assert!(matches!(dup, Err(SupervisorError::DuplicateName(n)) if n == "same"));

    let mut missing = fake("ghost", "normal", RestartPolicy::Never);
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

// ---- the app's backend over the supervisor ----

fn app_info(name: &str) -> crate::app::model::PartitionInfo {
    crate::app::model::PartitionInfo {
        name: name.to_string(),
        label: crate::app::model::Label::Blue,
        kind: "work".to_string(),
        memory_mib: 256,
        vcpus: 1,
        display: (64, 64),
        source: crate::app::model::SourceKind::SoftwareFramebuffer,
    }
}

#[test]
fn app_backend_shows_shared_pixels_forwards_input_and_reports_a_crash() {
    use crate::app::backend::PartitionBackend;
    use crate::app::model::{PartitionState as AppState, SourceKind};

    let sup = Arc::new(Supervisor::new(vec![fake("app", "normal", RestartPolicy::Never)]).unwrap());
    let mut backend = SupervisedPartition::new(app_info("app"), Arc::clone(&sup)).unwrap();
    assert_eq!(backend.info().source, SourceKind::Partition);
    assert!(SupervisedPartition::new(app_info("nobody"), Arc::clone(&sup)).is_err());
    backend.start().unwrap();
    wait_running(&sup, "app");
    wait_more_damage(&sup, "app", 3);

    backend.poll();
    let frame = backend.frame().expect("a running partition has a frame");
    assert_eq!(frame.layout, FramebufferLayout::new(64, 64).unwrap());
    assert!(!frame.damage.is_empty(), "the first frame is all damage");
    let first = u32::from_le_bytes(frame.pixels[0..4].try_into().unwrap());
    assert!(first > 0);

    wait_more_damage(&sup, "app", 3);
    backend.poll();
    let frame = backend.frame().unwrap();
    assert!(frame.damage.contains(&DamageRect {
        x: 0,
        y: 0,
        w: 1,
        h: 1
    }));
    let later = u32::from_le_bytes(frame.pixels[0..4].try_into().unwrap());
    assert!(
        later > first,
        "damaged pixel not copied: {first} -> {later}"
    );

    let key = crate::input::InputEvent::Key {
        code: 30,
        pressed: true,
    };
    backend.send_input(&[key]).unwrap();
    let mut serial = Vec::new();
    for _ in 0..200 {
        backend.poll();
        backend.read_serial(&mut serial);
        if serial.ends_with(b"input:2\n") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        serial.ends_with(b"input:2\n"),
        "key + SYN_REPORT reach the partition"
    );

    kill9(sup.status("app").unwrap().pid.unwrap());
    wait_state(&sup, "app", PartitionState::is_crashed);
    assert_eq!(
        backend.state(),
        AppState::Crashed {
            reason: "killed by SIGKILL".to_string()
        }
    );
    assert!(backend.frame().is_none());
}

#[test]
fn app_input_becomes_evdev_for_the_right_device() {
    use crate::input::InputEvent as App;
    let wire = to_wire(&[
        App::Key {
            code: 30,
            pressed: true,
        },
        App::PointerAbs { x: 5, y: 6 },
    ]);
    let kinds: Vec<_> = wire
        .iter()
        .map(|e| (e.kind, e.ev_type, e.code, e.value))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (InputDevice::Keyboard, 1, 30, 1),
            (InputDevice::Keyboard, 0, 0, 0),
            (InputDevice::Tablet, 3, 0, 5),
            (InputDevice::Tablet, 3, 1, 6),
            (InputDevice::Tablet, 0, 0, 0),
        ]
    );
}

// ---- benchmark ----

const FLOOD_EVENTS: u64 = 20_000;

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
    let spec = fake("bare", "flood", RestartPolicy::Never);
    let mut spawned = super::spawn::spawn_partition(&spec).unwrap();
    let mut reader =
        vmm_core::control::MessageReader::<Event>::new(spawned.socket.try_clone().unwrap());
    let mut writer = MessageWriter::<Command>::new(spawned.socket);
    let before = cpu_time();
    writer
        .send(&Command::Hello {
            version: vmm_core::control::PROTOCOL_VERSION,
        })
        .unwrap();
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
    let sup = Supervisor::new(vec![fake("flood", "flood", RestartPolicy::Never)]).unwrap();
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

/// Entry point of the fake partition process. In a normal test run it is given no
/// `--control-fd` and returns at once; re-executed by [`fake`], it never returns.
#[test]
fn fake_partition_process() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |key: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(key))
            .map(str::to_string)
    };
    let Some(fd) = args
        .iter()
        .position(|a| a == "--control-fd")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let mode = arg("mode=").unwrap();
    let name = arg("name=").unwrap();
    // SAFETY: fd 3 was inherited from the supervisor and nothing here owns it yet.
    let stream = unsafe { control_stream_from_inherited_fd(fd) }.unwrap();
    std::process::exit(run_fake(stream, &mode, &name));
}

fn run_fake(stream: UnixStream, mode: &str, name: &str) -> i32 {
    let mut raw = stream.try_clone().unwrap();
    let said = if mode == "wrong_name" {
        "someone-else"
    } else {
        name
    };
    let Ok(PartitionEndpoint {
        mut commands,
        mut events,
    }) = PartitionEndpoint::handshake(stream, said)
    else {
        return 10;
    };
    let layout = FramebufferLayout::new(64, 64).unwrap();
    let memfd = Memfd::create("fake-fb", layout.region_size() as usize).unwrap();
    let pixels = memfd.map_shared_rw().unwrap();
    let offered = match mode {
        "small_fb" => OwnedFd::from(
            Memfd::create("small", 4096)
                .unwrap()
                .try_clone_file()
                .unwrap(),
        ),
        "unsealed_fb" => unsealed_memfd(layout.bytes()),
        _ => OwnedFd::from(memfd.try_clone_file().unwrap()),
    };
    events
        .send_with_fds(&Event::Framebuffer { layout }, &[offered.as_fd()])
        .unwrap();
    if mode.ends_with("_fb") {
        return idle();
    }
    events.send(&Event::State(VmState::Ready)).unwrap();
    if commands.recv().map(|r| r.message).ok() != Some(Command::Start) {
        return 11;
    }
    events.send(&Event::State(VmState::Running)).unwrap();
    match mode {
        "garbage" => {
            raw.write_all(b"this is not a frame at all").unwrap();
            idle()
        }
        "oversized" => {
            raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
            idle()
        }
        "bad_damage" => {
            let rects = vec![DamageRect {
                x: 60,
                y: 0,
                w: 10,
                h: 1,
            }];
            events.send(&Event::Damage { rects }).unwrap();
            idle()
        }
        "forbidden_syscall" => {
            vmm_core::sandbox::set_no_new_privs().unwrap();
            vmm_core::sandbox::install(vmm_core::sandbox::SeccompProfile::Vcpu).unwrap();
            // SAFETY: socket() takes integers; the filter kills us before it returns.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            12
        }
        "flood" => {
            let damage = Event::Damage {
                rects: vec![DamageRect {
                    x: 0,
                    y: 0,
                    w: 64,
                    h: 1,
                }],
            };
            for _ in 0..FLOOD_EVENTS {
                events.send(&damage).unwrap();
            }
            events.send(&Event::State(VmState::PoweredOff)).unwrap();
            0
        }
        "oversized_console" => {
            let bytes = vec![b'!'; MAX_CONSOLE_CHUNK + 1];
            events.send(&Event::Console { bytes }).unwrap();
            idle()
        }
        "console_flood" => {
            for e in Event::console_chunks(&console_flood_bytes()) {
                events.send(&e).unwrap();
            }
            events.send(&Event::State(VmState::PoweredOff)).unwrap();
            0
        }
        "exit3" => {
            let fault = VmState::GuestFault {
                reason: "triple fault".into(),
            };
            events.send(&Event::State(fault)).unwrap();
            3
        }
        _ => {
            let events = Arc::new(Mutex::new(events));
            let obey_stop = mode != "ignore_stop";
            let e = Arc::clone(&events);
            std::thread::spawn(move || serve_commands(commands, e, obey_stop));
            render(&events, &pixels)
        }
    }
}

/// More console output than the supervisor keeps, with no repeating pattern at the
/// buffer's size, so a wrong cut shows.
fn console_flood_bytes() -> Vec<u8> {
    (0..MAX_CONSOLE_BUFFER + 3 * MAX_CONSOLE_CHUNK + 7)
        .map(|i| (i % 251) as u8)
        .collect()
}

fn unsealed_memfd(size: usize) -> OwnedFd {
    let name = c"unsealed";
    // SAFETY: valid C string; the new fd is owned right below.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: fresh fd from memfd_create, owned by nothing else.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.set_len(size as u64).unwrap();
    file.into()
}

fn idle() -> i32 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Writes a frame counter into pixel (0,0) and reports the damage, like a guest
/// drawing and the dirty log noticing.
fn render(events: &Mutex<MessageWriter<Event>>, pixels: &vmm_core::shm::MappedRegion) -> i32 {
    for frame in 1u32.. {
        pixels.write_at(0, &frame.to_le_bytes()).unwrap();
        let damage = Event::Damage {
            rects: vec![DamageRect {
                x: 0,
                y: 0,
                w: 1,
                h: 1,
            }],
        };
        if events.lock().unwrap().send(&damage).is_err() {
            return 20;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    21
}

fn serve_commands(
    mut commands: vmm_core::control::MessageReader<Command>,
    events: Arc<Mutex<MessageWriter<Event>>>,
    obey_stop: bool,
) {
    let send = |e: Event| {
        let _ = events.lock().unwrap().send(&e);
    };
    while let Ok(received) = commands.recv() {
        let command = received.message;
        command.validate().unwrap();
        match command {
            Command::Stop if obey_stop => {
                send(Event::State(VmState::Stopping));
                send(Event::State(VmState::PoweredOff));
                std::process::exit(0);
            }
            Command::Pause => send(Event::State(VmState::Paused)),
            Command::Resume => send(Event::State(VmState::Running)),
            Command::Input { events } => send(Event::Serial {
                bytes: format!("input:{}\n", events.len()).into_bytes(),
            }),
            Command::Stats { id } => send(Event::Stats {
                id,
                stats: PartitionStats {
                    uptime_ms: 1234,
                    ..PartitionStats::default()
                },
            }),
            Command::Screenshot { id } => send(Event::ScreenshotReady { id }),
            Command::ConsoleWrite { bytes } => send(Event::Console {
                bytes: bytes.iter().map(|b| !b).collect(),
            }),
            _ => {}
        }
    }
    // Supervisor gone: a partition never outlives its connection.
    std::process::exit(0);
}
