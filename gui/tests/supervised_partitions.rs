//! Real partition processes under the supervisor: three `bulkhead-vmm` processes, each a
//! KVM VM running the built-in test card (it runs on a software-only KVM too). One is
//! killed with SIGKILL; the others keep rendering through shared memory; it restarts.

use std::time::Duration;

use bulkhead_supervisor::{
    vm_process, AutoRestart, BootFiles, LaunchSpec, ProcessState, Supervisor,
};
use vmm_core::launch::{AgentChannel, BootConfig, DisplaySize, LaunchConfig, NetworkConfig};
use vmm_core::microguest::TEST_CARD_COLOURS;

const WAIT: Duration = Duration::from_secs(60);

fn launch_config(name: &str, boot: BootConfig) -> LaunchConfig {
    LaunchConfig {
        name: name.into(),
        memory_mib: 16,
        vcpus: 1,
        display: Some(DisplaySize {
            width: 1024,
            height: 768,
        }),
        boot,
        disks: Vec::new(),
        network: NetworkConfig::None,
        agent: AgentChannel::VirtioConsole,
        snapshot_on: None,
        snapshot_on_request: false,
    }
}

fn test_card(name: &str) -> LaunchSpec {
    LaunchSpec::partition(
        launch_config(name, BootConfig::TestCard),
        BootFiles::None,
        AutoRestart::Never,
    )
}

fn damage_count(sup: &Supervisor, name: &str) -> u64 {
    sup.status(name).unwrap().damage_events
}

fn wait_for_more_damage(sup: &Supervisor, name: &str, after: u64) {
    let (_, ok) = sup
        .wait_until(name, WAIT, |s| s.damage_events > after)
        .unwrap();
    assert!(
        ok,
        "{name} sent no damage after {after} events: {:?}",
        sup.status(name)
    );
}

#[test]
fn killing_one_of_three_partitions_leaves_the_others_rendering_and_restart_works() {
    let binary = bulkhead_supervisor::launch::vmm_binary();
    assert!(
        binary.is_file(),
        "{} missing: build it first (cargo build -p vmm-core --bin bulkhead-vmm) or set BULKHEAD_VMM",
        binary.display()
    );
    let names = ["browser", "mail", "work"];
    let sup = Supervisor::new(names.iter().map(|n| test_card(n)).collect()).unwrap();
    assert!(sup.start_all().is_empty());
    for n in names {
        let (st, ok) = sup
            .wait_until(n, WAIT, |s| {
                s.state == ProcessState::Running && s.damage_events > 0
            })
            .unwrap();
        assert!(ok, "{n} did not start rendering: {st:?}");
    }

    // The pixels arrive through the shared framebuffer, not the socket.
    let fb = sup
        .framebuffer("work")
        .unwrap()
        .expect("framebuffer shared");
    let (_, painted) = sup
        .wait_until("work", WAIT, |_| {
            fb.pixel(512, 96 + 48).map(|p| p & 0xff_ffff) == Some(TEST_CARD_COLOURS[1])
        })
        .unwrap();
    assert!(
        painted,
        "orange band never appeared in the shared framebuffer"
    );

    // Stats come from the partition process: its vCPUs really ran the guest (the test
    // card's serial line is port I/O, so it exits once it has painted the bands).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        sup.request_stats("work").unwrap();
        let (st, ok) = sup
            .wait_until("work", Duration::from_millis(500), |s| {
                s.stats
                    .is_some_and(|st| st.vcpu_exits > 0 && st.damage_events > 0)
            })
            .unwrap();
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stats with vCPU exits and damage from work: {st:?}"
        );
    }

    let victim = sup.status("mail").unwrap().pid.expect("mail has a pid");
    // The VM runs in PID 1 of the partition's own PID namespace, under a reaper the
    // supervisor watches; kill the process that holds the guest, as a person would.
    let vmm = vm_process(victim);
    assert_ne!(vmm, victim, "mail's VMM is not in its own PID namespace");
    // SAFETY: kill(2) on a pid our supervisor started; no memory is involved.
    assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGKILL) }, 0);
    let (st, ok) = sup
        .wait_until("mail", WAIT, |s| {
            matches!(s.state, ProcessState::Crashed { .. })
        })
        .unwrap();
    assert!(ok, "mail not shown as crashed: {st:?}");
    match &st.state {
        ProcessState::Crashed { reason } => assert!(reason.contains("SIGKILL"), "{reason}"),
        other => panic!("{other:?}"),
    }

    for n in ["browser", "work"] {
        assert_eq!(sup.status(n).unwrap().state, ProcessState::Running);
        wait_for_more_damage(&sup, n, damage_count(&sup, n));
    }

    sup.restart("mail", Duration::from_secs(5)).unwrap();
    let (st, ok) = sup
        .wait_until("mail", WAIT, |s| s.state == ProcessState::Running)
        .unwrap();
    assert!(ok, "mail did not come back: {st:?}");
    assert_ne!(st.pid, Some(victim));
    wait_for_more_damage(&sup, "mail", damage_count(&sup, "mail"));

    sup.stop_all(Duration::from_secs(5));
    for n in names {
        let st = sup.status(n).unwrap();
        assert!(!st.killed_after_timeout, "{n} had to be killed on stop");
    }
}

fn linux(name: &str, kernel: &std::path::Path) -> LaunchSpec {
    let boot = BootConfig::Linux {
        cmdline: "console=ttyS0".into(),
        initrd: false,
    };
    let files = BootFiles::Linux {
        kernel: kernel.into(),
        initrd: None,
    };
    LaunchSpec::partition(launch_config(name, boot), files, AutoRestart::Never)
}

#[test]
fn a_partition_whose_kernel_cannot_be_opened_is_reported_not_hidden() {
    let sup = Supervisor::new(vec![linux(
        "broken",
        std::path::Path::new("/nonexistent/vmlinuz"),
    )])
    .unwrap();
    let err = sup.start("broken").unwrap_err().to_string();
    let st = sup.status("broken").unwrap();
    assert!(st.state.is_crashed(), "{st:?}");
    assert_eq!(st.pid, None, "nothing was spawned");
    // On a software-only KVM the host check refuses first; otherwise the missing file.
    assert!(
        err.contains("/nonexistent/vmlinuz") || err.contains("no hardware virtualization"),
        "{err}"
    );
}

#[test]
fn a_partition_process_that_cannot_boot_is_reported_not_hidden() {
    if vmm_core::hostcheck::open_kvm_device_for_linux().is_err() {
        eprintln!("no hardware virtualization: a Linux launch is refused before any process");
        return;
    }
    // A kernel file that is neither a bzImage nor a vmlinux: the partition process
    // refuses it itself.
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let sup = Supervisor::new(vec![linux("broken", &kernel)]).unwrap();
    sup.start("broken").unwrap();
    let (st, ok) = sup
        .wait_until("broken", WAIT, |s| {
            matches!(
                s.state,
                ProcessState::Crashed { .. } | ProcessState::Exited { .. }
            )
        })
        .unwrap();
    assert!(ok, "{st:?}");
    assert_ne!(st.state, ProcessState::Exited { status: 0 }, "{st:?}");
}

#[test]
fn a_partition_with_restart_on_crash_comes_back_by_itself_after_kill_minus_nine() {
    let mut spec = test_card("browser");
    spec.restart = AutoRestart::OnCrash { max_retries: 2 };
    let sup = Supervisor::new(vec![spec]).unwrap();
    sup.start("browser").unwrap();
    let (st, ok) = sup
        .wait_until("browser", WAIT, |s| {
            s.state == ProcessState::Running && s.damage_events > 0
        })
        .unwrap();
    assert!(ok, "browser did not start rendering: {st:?}");
    let first = st.pid.expect("browser has a pid");
    let vmm = vm_process(first);
    // SAFETY: kill(2) on a pid our supervisor started; no memory is involved.
    assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGKILL) }, 0);
    let (st, ok) = sup
        .wait_until("browser", WAIT, |s| {
            s.restarts == 1 && s.state == ProcessState::Running && s.pid != Some(first)
        })
        .unwrap();
    assert!(ok, "browser was not restarted by its policy: {st:?}");
    assert!(
        st.last_exit
            .as_deref()
            .is_some_and(|e| e.contains("SIGKILL")),
        "{st:?}"
    );
    wait_for_more_damage(&sup, "browser", damage_count(&sup, "browser"));
}

#[test]
fn a_balloon_target_reaches_a_sandboxed_partition_which_reports_its_balloon_and_runs_on() {
    let binary = bulkhead_supervisor::launch::vmm_binary();
    assert!(binary.is_file(), "{} missing", binary.display());
    let sup = Supervisor::new(vec![test_card("ballooned")]).unwrap();
    assert!(sup.start_all().is_empty());
    let (st, ok) = sup
        .wait_until("ballooned", WAIT, |s| s.state == ProcessState::Running)
        .unwrap();
    assert!(ok, "{st:?}");
    // Through the partition's seccomp filters: the target lands in the device (the test
    // card has no balloon driver, so the balloon stays empty) and the guest runs on.
    sup.set_balloon("ballooned", 8).unwrap();
    assert!(
        sup.set_balloon("ballooned", 17).is_err(),
        "above its 16 MiB"
    );
    let before = damage_count(&sup, "ballooned");
    sup.request_stats("ballooned").unwrap();
    let (st, ok) = sup
        .wait_until("ballooned", WAIT, |s| {
            s.stats.is_some_and(|st| st.balloon_mib.is_some())
        })
        .unwrap();
    assert!(ok, "no stats: {st:?}");
    assert_eq!(st.stats.and_then(|s| s.balloon_mib), Some(0));
    assert_eq!(st.balloon_target_mib, 8);
    wait_for_more_damage(&sup, "ballooned", before);
    assert_eq!(
        sup.status("ballooned").unwrap().state,
        ProcessState::Running
    );
}
