//! A stock Debian kernel with the default initramfs, snapshotted at a serial marker by
//! `bulkhead-vmm run --snapshot-on` and restored twice by `bulkhead-vmm restore`: each
//! restore continues the guest's counter from where it stopped, runs commands, and
//! reads different bytes from /dev/hwrng (virtio-rng); copies of the snapshot with the
//! state file cut short or one byte changed are refused, the guest never running.

use bulkhead_tests::lab::{run_guest, GuestRun, LabSnapshot, READY_MARKER};

/// Counts to 3, says SNAPSHOT-NOW (the VMM pauses and writes the snapshot within
/// milliseconds) and sleeps; a restored guest wakes up, counts on to 6 and reads the RNG.
const SCRIPT: &str = r#"
n=0
while [ $n -lt 6 ]; do
  n=$((n+1))
  echo "COUNT $n"
  if [ $n = 3 ]; then echo SNAPSHOT-NOW; sleep 2; fi
done
echo "UPTIME $(cut -d' ' -f1 /proc/uptime)"
echo "TOKEN $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
poweroff -f
"#;

fn token(log: &str) -> &str {
    log.lines()
        .find_map(|l| l.strip_prefix("TOKEN "))
        .unwrap_or_else(|| panic!("no TOKEN line in\n{log}"))
}

#[test]
fn a_linux_guest_snapshotted_at_a_marker_continues_in_two_restores_with_different_rng() {
    let run = GuestRun {
        display: None,
        test_script: SCRIPT.into(),
        timeout_s: 240,
        snapshot: Some(LabSnapshot {
            marker: "SNAPSHOT-NOW".into(),
            restores: 2,
            damaged: true,
        }),
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts("snapshot-restore");
    assert!(out.serial.contains(READY_MARKER), "{}", out.diagnostics());
    assert_eq!(out.exit_code, 0, "{}", out.diagnostics());
    assert!(
        out.vmm_stderr.contains("partition snapshotted to /snap"),
        "{}",
        out.diagnostics()
    );
    // The snapshotted run stopped at the marker.
    assert!(out.serial.contains("COUNT 3"), "{}", out.serial);
    assert!(!out.serial.contains("COUNT 4"), "{}", out.serial);
    let mut tokens = Vec::new();
    for i in 1..=2 {
        let log = out.file_text(&format!("restore{i}.log"));
        eprintln!("restore {i} serial:\n{log}");
        assert!(
            out.vmm_stderr.contains(&format!("restore {i} exit 0")),
            "{}",
            out.diagnostics()
        );
        // Continues: the next count, never a reboot or an earlier count.
        assert!(log.contains("COUNT 4") && log.contains("COUNT 6"), "{log}");
        assert!(
            !log.contains("COUNT 1") && !log.contains(READY_MARKER),
            "{log}"
        );
        assert!(log.contains("UPTIME "), "{log}");
        let t = token(&log).to_string();
        assert_eq!(t.len(), 32, "{log}");
        tokens.push(t);
    }
    for line in out.vmm_stderr.lines().filter(|l| l.contains("restored")) {
        eprintln!("{line}");
    }
    assert_ne!(tokens[0], tokens[1], "two restores read the same RNG bytes");

    // Damaged copies of the same snapshot are refused with one line each, before the
    // guest runs a single instruction.
    for (kind, says) in [
        ("truncated", "snapshot truncated"),
        ("corrupted", "fails its checksum"),
    ] {
        assert!(
            out.vmm_stderr
                .contains(&format!("damaged {kind}: state of ")),
            "the damaged {kind} copy was not made\n{}",
            out.diagnostics()
        );
        let exit = format!("damaged {kind} exit ");
        assert!(
            out.vmm_stderr.contains(&exit) && !out.vmm_stderr.contains(&format!("{exit}0")),
            "the damaged {kind} snapshot must be refused\n{}",
            out.diagnostics()
        );
        let refusal = out
            .vmm_stderr
            .lines()
            .find(|l| l.contains(says))
            .unwrap_or_else(|| panic!("no {says:?} refusal\n{}", out.vmm_stderr));
        eprintln!("{kind}: {refusal}");
        let log = out.file_text(&format!("damaged-{kind}.log"));
        assert!(
            !log.contains("COUNT"),
            "the {kind} snapshot's guest ran: {log}"
        );
    }
}
