//! Disposables from a warm snapshot, through the supervisor, with the real sandboxed
//! `bulkhead-vmm partition` on this host's /dev/kvm (the test card: a software KVM runs
//! it). The first disposable cold-boots to the card's marker and is snapshotted inside
//! its sandbox; the next ones restore from that snapshot, also sandboxed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_supervisor::launch::vmm_binary;
use bulkhead_supervisor::{
    AutoRestart, BootFiles, LaunchSpec, ProcessState, SandboxStatus, Supervisor,
};
use vmm_core::launch::{AgentChannel, BootConfig, DisplaySize, LaunchConfig, NetworkConfig};
use vmm_core::microguest::TEST_CARD_COLOURS;

const WAIT: Duration = Duration::from_secs(30);
const MARKER: &str = "TEST-CARD-READY";
const SIDE: u32 = 64;

fn binary() -> PathBuf {
    let binary = vmm_binary();
    assert!(
        binary.is_file(),
        "{} missing: build it first (cargo build -p vmm-core --bin bulkhead-vmm) or set BULKHEAD_VMM",
        binary.display()
    );
    binary
}

fn card_template() -> LaunchSpec {
    let launch = LaunchConfig {
        name: "card".into(),
        memory_mib: 16,
        vcpus: 1,
        display: Some(DisplaySize {
            width: SIDE,
            height: SIDE,
        }),
        boot: BootConfig::TestCard,
        disks: Vec::new(),
        network: NetworkConfig::None,
        agent: AgentChannel::VirtioConsole,
        snapshot_on: None,
    };
    LaunchSpec {
        program: binary(),
        ..LaunchSpec::partition(launch, BootFiles::None, AutoRestart::Never)
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the partition runs and has sent more damage (its guest is executing).
fn wait_running_and_painting(sup: &Supervisor, name: &str) {
    let (status, ok) = sup
        .wait_until(name, WAIT, |s| s.state == ProcessState::Running)
        .unwrap();
    assert!(ok, "{name} not running: {status:?}");
    let before = status.damage_events;
    let (status, ok) = sup
        .wait_until(name, WAIT, |s| s.damage_events > before + 3)
        .unwrap();
    assert!(ok, "{name} paints nothing: {status:?}");
    assert!(
        matches!(
            status.sandbox,
            Some(SandboxStatus::Full | SandboxStatus::Reduced { .. })
        ),
        "{name} must run confined: {:?}",
        status.sandbox
    );
}

/// The pixel at the start of `row` (XRGB).
fn pixel(sup: &Supervisor, name: &str, row: u32) -> u32 {
    let fb = sup.framebuffer(name).unwrap().expect("a framebuffer");
    fb.pixel(0, row).expect("inside the screen") & 0x00ff_ffff
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_first_disposable_is_snapshotted_at_its_marker_and_the_next_ones_restore_from_it_sandboxed() {
    let cache = tempfile::tempdir().unwrap();
    let sup = Supervisor::new(Vec::new()).unwrap();
    sup.set_log_dir(Some(cache.path().join("logs")));
    let template = card_template();

    let first = sup
        .start_disposable_in(&template, MARKER, cache.path())
        .unwrap();
    assert_eq!(first.name, "disp1");
    assert!(!first.restored, "nothing cached yet: a cold boot");
    let dir = wait_for("disp1's snapshot", || sup.snapshot_result("disp1").unwrap())
        .unwrap_or_else(|e| panic!("snapshot failed: {e}"));
    assert_eq!(dir, first.snapshot_dir);
    assert_eq!(files_in(&dir), ["memory", "state"]);
    // Resumed after the snapshot: disp1 runs on as a disposable.
    wait_running_and_painting(&sup, "disp1");

    let second = sup
        .start_disposable_in(&template, MARKER, cache.path())
        .unwrap();
    let third = sup
        .start_disposable_in(&template, MARKER, cache.path())
        .unwrap();
    assert_eq!(
        (second.name.as_str(), third.name.as_str()),
        ("disp2", "disp3")
    );
    assert!(second.restored && third.restored);
    for name in ["disp1", "disp2", "disp3"] {
        wait_running_and_painting(&sup, name);
    }
    // The bands below the animated rows were painted once, before the marker: a
    // restored clone shows them without ever running that code.
    for name in ["disp2", "disp3"] {
        assert_eq!(pixel(&sup, name, SIDE / 2), TEST_CARD_COLOURS[4], "{name}");
        let log = sup.status(name).unwrap().log_file.expect("a log");
        let log = std::fs::read_to_string(log).unwrap();
        assert!(log.contains("restored from a snapshot"), "{log}");
    }
    let log = std::fs::read_to_string(sup.status("disp1").unwrap().log_file.unwrap()).unwrap();
    assert!(log.contains("snapshot written"), "{log}");
    eprintln!("{log}");
    // Nothing but the finished snapshot is left in the cache (no staging directory).
    assert_eq!(
        files_in(cache.path()),
        [
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            "logs".into()
        ]
    );

    for name in ["disp1", "disp2", "disp3"] {
        sup.remove(name, Duration::from_secs(5)).unwrap();
    }
    assert!(sup.names().is_empty());
}

#[test]
fn a_damaged_snapshot_stops_the_restored_disposable_before_its_guest_runs() {
    let cache = tempfile::tempdir().unwrap();
    let sup = Supervisor::new(Vec::new()).unwrap();
    sup.set_log_dir(Some(cache.path().join("logs")));
    let template = card_template();
    let first = sup
        .start_disposable_in(&template, MARKER, cache.path())
        .unwrap();
    wait_for("disp1's snapshot", || sup.snapshot_result("disp1").unwrap())
        .unwrap_or_else(|e| panic!("snapshot failed: {e}"));
    sup.remove("disp1", Duration::from_secs(5)).unwrap();
    // Truncate the state file: the restore must refuse it, not run a half guest.
    let state = first.snapshot_dir.join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let next = sup
        .start_disposable_in(&template, MARKER, cache.path())
        .unwrap();
    assert!(next.restored);
    let (status, ok) = sup
        .wait_until(&next.name, WAIT, |s| {
            s.state.is_crashed() || matches!(s.state, ProcessState::Exited { .. })
        })
        .unwrap();
    assert!(ok, "{status:?}");
    assert_eq!(status.damage_events, 0, "the guest must not run");
    // The process can be seen gone before the supervisor's stderr pump has written its
    // last line to the log: wait for the refusal there (bounded), then show the log.
    let log_file = status.log_file.expect("a log");
    let refused = Instant::now() + WAIT;
    let log = loop {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        if log.contains("snapshot truncated") || Instant::now() > refused {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.contains("snapshot truncated"), "{log}");
}
