//! The stock Debian guest run the way the app runs it: a sandboxed `bulkhead-vmm` process
//! under the real supervisor (`lab-supervise` links `bulkhead-supervisor`), driven only
//! through the control socket. One boot serves every test here (the guest takes tens of
//! seconds in the lab); each test checks one behaviour of it:
//! keys typed through the control interface reach the guest's console (serial and the
//! framebuffer PNG read from shared memory), tablet moves arrive as absolute evdev events,
//! bytes round-trip over the virtio console, and the partition process, seccomp filters
//! installed, survives all of it until the guest powers off through ACPI.
//! Runs directly on /dev/kvm with VT-x/AMD-V, otherwise in the lab (the output says which).

use std::sync::OnceLock;

use bulkhead_tests::console_pattern;
use bulkhead_tests::lab::{
    run_guest, static_guest_evtest, GuestRun, RunOutput, Screenshot, READY_MARKER,
};
use vmm_core::evdev::{BTN_LEFT, EV_ABS, EV_KEY, EV_SYN};

/// What the person "types": shifted and unshifted keys, digits, punctuation.
const TYPED: &str = "Hello, Bulkhead! 6*7=42 (keys)";
const CONSOLE_LINE: &str = "ping from the host 42";
const PATTERN_BYTES: usize = 6000;
/// Tablet positions sent, in framebuffer pixels (1024x768: the last one is the corner).
const MOVES: [(i32, i32); 3] = [(100, 200), (640, 400), (1023, 767)];
/// 3 moves of (ABS_X, ABS_Y, SYN) and a click of (BTN_LEFT 1, SYN, BTN_LEFT 0, SYN).
const TABLET_EVENTS: usize = 13;

/// The guest side: each part announces itself on serial, then waits for the host.
fn guest_script() -> String {
    format!(
        r#"
ev=$(grep -A5 'Bulkhead virtio tablet' /proc/bus/input/devices | grep -o 'event[0-9]*' | head -n 1)
echo "TABLET-NODE[$ev] ABS-CAPS[$(cat /sys/class/input/$ev/device/capabilities/abs)]"
/evtest /dev/input/$ev
exec 3<>/dev/hvc0
stty raw -echo <&3 && echo CONSOLE-RAW
printf '\033[2J\033[H\033[?25l' > /dev/tty1
echo KEYS-READY
read -r typed < /dev/tty1
echo "TYPED[$typed]"
dd if=/dev/input/$ev of=/tmp/ev bs=24 count={TABLET_EVENTS} 2>/dev/null &
reader=$!
until ls -l /proc/$reader/fd 2>/dev/null | grep -q "input/$ev"; do sleep 0.1; done
echo TABLET-READY
wait $reader
od -An -v -tu2 -w24 /tmp/ev | sed 's/^/EV/'
echo CONSOLE-READY
read -r line <&3
echo "GUEST-GOT[$line]" >&3
echo "CONSOLE-LINE[$line]"
dd bs=1 count={PATTERN_BYTES} <&3 >/tmp/blob 2>/dev/null
cat /tmp/blob >&3
echo "BLOB-ECHOED $(wc -c < /tmp/blob)"
sleep 1
poweroff -f
"#
    )
}

fn console_reply() -> String {
    format!("GUEST-GOT[{CONSOLE_LINE}]\n")
}

fn host_steps() -> Vec<String> {
    let mut steps = vec![
        "wait-serial:KEYS-READY".to_string(),
        "sandbox-report".into(),
        format!("type:{TYPED}\\n"),
        "wait-serial:TYPED[".into(),
        "screenshot:keys".into(),
        "wait-serial:TABLET-READY".into(),
    ];
    steps.extend(MOVES.iter().map(|(x, y)| format!("tablet:{x},{y}")));
    steps.extend([
        "click".into(),
        // Pause, stats and resume mid-session: the sandboxed process must serve them under
        // its seccomp filters, and the guest must carry on (the console part needs it).
        "pause".into(),
        "stats".into(),
        "sleep:500".into(),
        "resume".into(),
        "wait-serial:CONSOLE-READY".into(),
        format!("console:{CONSOLE_LINE}\\n"),
        format!("wait-console:{}", console_reply().trim_end()),
        format!("console-pattern:{PATTERN_BYTES}"),
        "wait-serial:BLOB-ECHOED".into(),
        format!(
            "wait-console-bytes:{}",
            console_reply().len() + PATTERN_BYTES
        ),
        "wait-exit".into(),
    ]);
    steps
}

/// The one supervised boot all tests here look at.
fn supervised_run() -> &'static RunOutput {
    static RUN: OnceLock<RunOutput> = OnceLock::new();
    RUN.get_or_init(|| {
        let evtest = std::fs::read(static_guest_evtest()).expect("reading guest-evtest");
        let run = GuestRun {
            test_script: guest_script(),
            test_files: vec![("evtest".into(), 0o755, evtest)],
            supervise: Some(host_steps()),
            timeout_s: 240,
            ..GuestRun::default()
        };
        let out = run_guest(&run);
        eprintln!("{}", out.summary());
        eprintln!("--- supervisor events ---\n{}", out.file_text("events.log"));
        out.save_artifacts("supervised");
        out
    })
}

fn booted() -> &'static RunOutput {
    let out = supervised_run();
    assert!(
        out.serial.contains(READY_MARKER),
        "guest never reached init under the supervisor\n{}",
        out.diagnostics()
    );
    out
}

#[test]
fn supervised_partition_runs_every_step_and_powers_off_cleanly() {
    let out = booted();
    assert_eq!(
        out.exit_code,
        0,
        "a step failed:\n{}\n{}",
        out.file_text("events.log"),
        out.diagnostics()
    );
    // Exited 0 is the ACPI power-off; a syscall outside the seccomp tables would have
    // killed the process (SIGSYS) and shown as crashed instead.
    assert_eq!(out.file_text("final.txt").trim(), "FINAL exited=0");
}

#[test]
fn the_partition_process_runs_the_linux_guest_inside_its_sandbox() {
    let out = booted();
    let report = out.file_text("sandbox.txt");
    let line = |key: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key:?} in the sandbox report:\n{report}"))
            .trim()
            .to_string()
    };
    // The VMM is PID 1 of its own PID namespace; its reaper waits outside.
    let nspid = line("vmm NSpid:");
    let pids: Vec<&str> = nspid.split_whitespace().collect();
    assert_eq!(
        pids.len(),
        2,
        "host pid and namespace pid expected:\n{report}"
    );
    assert_eq!(pids[1], "1", "{report}");
    for role in ["reaper", "vmm"] {
        assert_eq!(line(&format!("{role} NoNewPrivs:")), "1", "{report}");
        let modes = line(&format!("{role} thread seccomp modes:"));
        assert!(
            !modes.is_empty() && modes.split_whitespace().all(|m| m == "2"),
            "every {role} thread must be seccomp-filtered: {modes}"
        );
    }
    // vCPU, control and main threads at least.
    assert!(line("vmm thread seccomp modes:").split_whitespace().count() >= 3);
    for ns in ["user", "mnt", "net", "ipc", "uts", "pid_for_children"] {
        assert_eq!(line(&format!("ns {ns}:")), "own", "{report}");
    }
}

#[test]
fn typed_keys_appear_on_the_guest_console() {
    let out = booted();
    assert!(
        out.serial.contains(&format!("TYPED[{TYPED}]")),
        "the guest read something else from tty1:\n{}",
        out.serial
    );
}

#[test]
fn typed_keys_are_visible_in_the_shared_framebuffer() {
    let out = booted();
    let png = out
        .files
        .get("keys.png")
        .unwrap_or_else(|| panic!("no screenshot\n{}", out.file_text("events.log")));
    let shot = Screenshot::decode(png);
    assert_eq!((shot.width, shot.height), (1024, 768));
    // fbcon echoed the typed line into the first 8x16 text row of a cleared screen.
    let cells = TYPED.chars().filter(|c| *c != ' ').count();
    let text = shot.lit_pixels(0, 0, TYPED.len() * 8, 16);
    let right_of_text = shot.lit_pixels((TYPED.len() + 2) * 8, 0, 1024, 16);
    let below = shot.lit_pixels(0, 48, 1024, 768);
    assert!(
        text > cells * 8,
        "{text} lit pixels for {cells} typed glyphs"
    );
    assert_eq!(right_of_text, 0, "pixels right of the typed text");
    assert_eq!(below, 0, "pixels below the typed line");
}

/// `(type, code, value)` of every `EV` line the guest printed (`od -tu2` of
/// `struct input_event`: 8 words of timestamp, type, code, value low, value high).
fn guest_events(serial: &str) -> Vec<(u16, u16, i32)> {
    serial
        .lines()
        .filter_map(|l| l.strip_prefix("EV"))
        .filter_map(|l| {
            let w: Vec<u32> = l
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            (w.len() == 12).then(|| (w[8] as u16, w[9] as u16, (w[10] | (w[11] << 16)) as i32))
        })
        .collect()
}

#[test]
fn tablet_moves_arrive_as_absolute_events_in_the_guest() {
    let out = booted();
    assert!(
        out.serial.contains("ABS-CAPS[3]"),
        "the tablet should report exactly ABS_X and ABS_Y:\n{}",
        out.serial
    );
    // The guest driver's view of the axes: the 1024x768 framebuffer's pixel range.
    assert!(
        out.serial
            .contains("NAME[Bulkhead virtio tablet] ABS_X[min=0 max=1023] ABS_Y[min=0 max=767]"),
        "evdev in the guest reports other ranges:\n{}",
        out.serial
    );
    let mut expected = Vec::new();
    for (x, y) in MOVES {
        expected.extend([(EV_ABS, 0, x), (EV_ABS, 1, y), (EV_SYN, 0, 0)]);
    }
    expected.extend([
        (EV_KEY, BTN_LEFT, 1),
        (EV_SYN, 0, 0),
        (EV_KEY, BTN_LEFT, 0),
        (EV_SYN, 0, 0),
    ]);
    assert_eq!(guest_events(&out.serial), expected, "{}", out.serial);
}

#[test]
fn bytes_round_trip_over_the_virtio_console() {
    let out = booted();
    assert!(out.serial.contains("CONSOLE-RAW"));
    assert!(
        out.serial
            .contains(&format!("CONSOLE-LINE[{CONSOLE_LINE}]")),
        "the guest did not read the host's line from /dev/hvc0:\n{}",
        out.serial
    );
    assert!(out.serial.contains(&format!("BLOB-ECHOED {PATTERN_BYTES}")));
    let mut expected = console_reply().into_bytes();
    expected.extend(console_pattern(PATTERN_BYTES));
    let got = out.files.get("console.bin").cloned().unwrap_or_default();
    assert_eq!(got.len(), expected.len(), "console bytes received");
    assert!(got == expected, "console bytes differ from what was sent");
}

#[test]
fn guest_event_lines_decode_type_code_and_value() {
    let serial = "EV 1 2 3 4 5 6 7 8 3 0 1023 0\nEV 0 0 0 0 0 0 0 0 1 272 1 0\nnoise\n";
    assert_eq!(
        guest_events(serial),
        vec![(EV_ABS, 0, 1023), (EV_KEY, BTN_LEFT, 1)]
    );
}
