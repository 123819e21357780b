//! Real partition processes under the supervisor: three `bulkhead-vmm` processes, each a
//! KVM VM running the built-in test card (it runs on a software-only KVM too). One is
//! killed with SIGKILL; the others keep rendering through shared memory; it restarts.

use std::time::Duration;

use bulkhead::supervisor::launch::vmm_binary;
use bulkhead::supervisor::{vm_process, LaunchSpec, PartitionState, RestartPolicy, Supervisor};
use vmm_core::microguest::TEST_CARD_COLOURS;

const WAIT: Duration = Duration::from_secs(60);

fn test_card(name: &str) -> LaunchSpec {
    LaunchSpec {
        name: name.into(),
        program: vmm_binary(),
        args: [
            "run",
            "--test-card",
            "--mem=16M",
            "--display=1024x768",
            "--serial=-",
        ]
        .iter()
        .map(Into::into)
        .chain([format!("--name={name}").into()])
        .collect(),
        restart: RestartPolicy::Never,
    }
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
    let binary = vmm_binary();
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
                s.state == PartitionState::Running && s.damage_events > 0
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
            matches!(s.state, PartitionState::Crashed { .. })
        })
        .unwrap();
    assert!(ok, "mail not shown as crashed: {st:?}");
    match &st.state {
        PartitionState::Crashed { reason } => assert!(reason.contains("SIGKILL"), "{reason}"),
        other => panic!("{other:?}"),
    }

    for n in ["browser", "work"] {
        assert_eq!(sup.status(n).unwrap().state, PartitionState::Running);
        wait_for_more_damage(&sup, n, damage_count(&sup, n));
    }

    sup.restart("mail", Duration::from_secs(5)).unwrap();
    let (st, ok) = sup
        .wait_until("mail", WAIT, |s| s.state == PartitionState::Running)
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

#[test]
fn a_partition_process_that_cannot_boot_is_reported_not_hidden() {
    // A Linux partition on a host without the kernel it names fails with a clear reason.
    let spec = LaunchSpec {
        name: "broken".into(),
        program: vmm_binary(),
        args: ["run", "--kernel=/nonexistent/vmlinuz", "--name=broken"]
            .iter()
            .map(Into::into)
            .collect(),
        restart: RestartPolicy::Never,
    };
    let sup = Supervisor::new(vec![spec]).unwrap();
    sup.start("broken").unwrap();
    let (st, ok) = sup
        .wait_until("broken", WAIT, |s| {
            matches!(
                s.state,
                PartitionState::Crashed { .. } | PartitionState::Exited { .. }
            )
        })
        .unwrap();
    assert!(ok, "{st:?}");
    assert_ne!(st.state, PartitionState::Exited { status: 0 }, "{st:?}");
}

#[test]
fn a_partition_with_restart_on_crash_comes_back_by_itself_after_kill_minus_nine() {
    let mut spec = test_card("browser");
    spec.restart = RestartPolicy::OnCrash { max_retries: 2 };
    let sup = Supervisor::new(vec![spec]).unwrap();
    sup.start("browser").unwrap();
    let (st, ok) = sup
        .wait_until("browser", WAIT, |s| {
            s.state == PartitionState::Running && s.damage_events > 0
        })
        .unwrap();
    assert!(ok, "browser did not start rendering: {st:?}");
    let first = st.pid.expect("browser has a pid");
    let vmm = vm_process(first);
    // SAFETY: kill(2) on a pid our supervisor started; no memory is involved.
    assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGKILL) }, 0);
    let (st, ok) = sup
        .wait_until("browser", WAIT, |s| {
            s.restarts == 1 && s.state == PartitionState::Running && s.pid != Some(first)
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
