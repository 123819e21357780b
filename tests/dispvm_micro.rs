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
        snapshot_on_request: false,
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

/// The test card with one writable disk (a plain file; the card never reads it, but the
/// supervisor must copy it with the snapshot), snapshots allowed on request.
fn card_with_disk(name: &str, disk: &Path) -> LaunchSpec {
    let mut spec = card_template();
    spec.launch.name = name.into();
    spec.launch.snapshot_on_request = true;
    spec.launch.disks = vec![vmm_core::launch::DiskConfig {
        id: "private".into(),
        read_only: false,
    }];
    spec.disk_files = vec![bulkhead_supervisor::launch::DiskFile::Path(
        disk.to_path_buf(),
    )];
    spec
}

#[test]
fn a_running_partition_saved_on_request_runs_on_and_another_continues_from_its_state() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("private.img");
    let content: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&disk, &content).unwrap();
    let sup = Supervisor::new(vec![card_with_disk("saved", &disk)]).unwrap();
    sup.set_log_dir(Some(tmp.path().join("logs")));
    sup.start("saved").unwrap();
    wait_running_and_painting(&sup, "saved");

    // Paused before: saved, and still paused after.
    sup.pause("saved").unwrap();
    let (_, paused) = sup
        .wait_until("saved", WAIT, |s| s.state == ProcessState::Paused)
        .unwrap();
    assert!(paused);
    let dir = tmp.path().join("state");
    let saved = sup
        .save_running("saved", &dir, Duration::from_secs(30))
        .unwrap();
    assert_eq!(files_in(&dir), ["disk0.img", "memory", "state"]);
    assert_eq!(std::fs::read(dir.join("disk0.img")).unwrap(), content);
    assert_eq!(
        saved.disks,
        [("disk0.img".to_string(), "private".to_string())]
    );
    assert!(
        saved.state_bytes > 0 && saved.memory_pages_written > 0,
        "{saved:?}"
    );
    assert!(
        !tmp.path().join("state.partial").exists(),
        "no staging left"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sup.status("saved").unwrap().state, ProcessState::Paused);
    // Running before: saved, and running (painting) after.
    sup.resume("saved").unwrap();
    wait_running_and_painting(&sup, "saved");
    let again = tmp.path().join("again");
    sup.save_running("saved", &again, Duration::from_secs(30))
        .unwrap();
    wait_running_and_painting(&sup, "saved");
    let log = std::fs::read_to_string(sup.status("saved").unwrap().log_file.unwrap()).unwrap();
    assert_eq!(log.matches("snapshot written").count(), 2, "{log}");

    // Another partition continues from the first state, once, on its own disk copy.
    let resume = tmp.path().join("copy").join("resume");
    std::fs::create_dir_all(resume.parent().unwrap()).unwrap();
    std::fs::rename(&dir, &resume).unwrap();
    let mut copy = card_with_disk("copy", &resume.with_file_name("private.img"));
    std::fs::rename(
        resume.join("disk0.img"),
        resume.with_file_name("private.img"),
    )
    .unwrap();
    copy.resume = Some(resume.clone());
    sup.add(copy).unwrap();
    sup.start("copy").unwrap();
    wait_running_and_painting(&sup, "copy");
    assert_eq!(pixel(&sup, "copy", SIDE / 2), TEST_CARD_COLOURS[4]);
    let log = std::fs::read_to_string(sup.status("copy").unwrap().log_file.unwrap()).unwrap();
    assert!(log.contains("restored from a snapshot"), "{log}");
    assert!(!resume.exists() && resume.with_file_name("resume.used").is_dir());
    sup.stop("copy", Duration::from_secs(5)).unwrap();
    sup.start("copy").unwrap();
    wait_running_and_painting(&sup, "copy");
    let log = std::fs::read_to_string(sup.status("copy").unwrap().log_file.unwrap()).unwrap();
    let last_start = log.rsplit("=== partition").next().unwrap_or_default();
    assert!(
        !last_start.contains("restored from a snapshot"),
        "the second start boots: {log}"
    );

    for name in ["saved", "copy"] {
        sup.remove(name, Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn saving_is_refused_with_a_reason_for_a_stopped_partition_and_one_launched_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plain = card_template();
    plain.launch.name = "plain".into();
    let sup = Supervisor::new(vec![plain]).unwrap();
    sup.set_log_dir(Some(tmp.path().join("logs")));
    let dir = tmp.path().join("state");
    sup.start("plain").unwrap();
    wait_running_and_painting(&sup, "plain");
    let e = sup
        .save_running("plain", &dir, Duration::from_secs(10))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be snapshotted"), "{e}");
    assert!(!dir.exists() && !tmp.path().join("state.partial").exists());
    wait_running_and_painting(&sup, "plain");
    sup.stop("plain", Duration::from_secs(5)).unwrap();
    assert!(sup
        .save_running("plain", &dir, Duration::from_secs(10))
        .is_err());
    assert!(!dir.exists());
}

#[test]
fn a_failover_partition_that_crashes_continues_from_its_snapshot_with_its_disk_put_back() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("private.img");
    let content = vec![0x5au8; 1 << 20];
    std::fs::write(&disk, &content).unwrap();
    let mut spec = card_with_disk("kiosk", &disk);
    spec.restart = AutoRestart::OnCrash { max_retries: 3 };
    let dir = tmp.path().join("failover");
    spec.failover = Some(bulkhead_supervisor::launch::Failover {
        dir: dir.clone(),
        marker: MARKER.into(),
    });
    let sup = Supervisor::new(vec![spec]).unwrap();
    sup.set_log_dir(Some(tmp.path().join("logs")));
    sup.start("kiosk").unwrap();
    // The cold boot is snapshotted at its marker, disk included, and runs on.
    let taken = wait_for("the failover snapshot", || {
        sup.snapshot_result("kiosk").unwrap()
    })
    .unwrap_or_else(|e| panic!("snapshot failed: {e}"));
    assert_eq!(taken, dir);
    assert_eq!(files_in(&dir), ["disk0.img", "memory", "state"]);
    wait_running_and_painting(&sup, "kiosk");

    // After the snapshot the disk changes, then the partition crashes.
    std::fs::write(&disk, vec![0xa5u8; 1 << 20]).unwrap();
    let pid = sup.status("kiosk").unwrap().pid.expect("a pid");
    let vmm = bulkhead_supervisor::vm_process(pid);
    // SAFETY: kill(2) with a pid we read from our own child's /proc entry; no memory.
    assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGKILL) }, 0);
    let (status, ok) = sup
        .wait_until("kiosk", WAIT, |s| {
            s.restarts == 1 && s.state == ProcessState::Running
        })
        .unwrap();
    assert!(ok, "not restarted: {status:?}");
    wait_running_and_painting(&sup, "kiosk");
    let log = std::fs::read_to_string(status.log_file.expect("a log")).unwrap();
    let last = log.rsplit("=== partition").next().unwrap_or_default();
    assert!(last.contains("restored from a snapshot"), "{log}");
    assert_eq!(pixel(&sup, "kiosk", SIDE / 2), TEST_CARD_COLOURS[4]);
    // The disk as the snapshot knows it; the crashed one kept, not lost.
    assert_eq!(std::fs::read(&disk).unwrap(), content);
    let crashed: Vec<String> = files_in(tmp.path())
        .into_iter()
        .filter(|n| n.starts_with("private.crashed-") && n.ends_with(".img"))
        .collect();
    assert_eq!(crashed.len(), 1, "{:?}", files_in(tmp.path()));
    assert_eq!(
        std::fs::read(tmp.path().join(&crashed[0])).unwrap(),
        vec![0xa5u8; 1 << 20]
    );
    // The snapshot stays for the next crash.
    assert_eq!(files_in(&dir), ["disk0.img", "memory", "state"]);
    sup.remove("kiosk", Duration::from_secs(5)).unwrap();
}
