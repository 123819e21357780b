//! `bulkhead run` through the supervisor, with a real partition process: the built-in
//! test card (a KVM micro-guest that runs on software-only KVM too).

use std::process::Command;

#[test]
fn run_saves_the_screenshot_at_the_marker_logs_serial_and_exits_4_on_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let png_path = dir.path().join("card.png");
    let log = dir.path().join("serial.log");
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "run",
            "--test-card",
            "--mem=16M",
            "--display=1024x768",
            "--timeout=12",
        ])
        .args(["--screenshot-on=TEST-CARD-READY", "--name=card"])
        .arg(format!("--serial={}", log.display()))
        .arg(format!("--screenshot={}", png_path.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("partition card stopped by the host (timeout)"),
        "{stderr}"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("TEST-CARD-READY"));

    let shot = image::open(&png_path).unwrap().to_rgb8();
    assert_eq!(shot.dimensions(), (1024, 768));
    let px = |x: u32, y: u32| {
        let [r, g, b] = shot.get_pixel(x, y).0;
        u32::from_be_bytes([0, r, g, b])
    };
    for (band, colour) in vmm_core::microguest::TEST_CARD_COLOURS.iter().enumerate() {
        assert_eq!(px(700, band as u32 * 96 + 48), *colour, "band {band}");
    }
}

#[test]
fn run_without_hardware_virtualization_says_so_for_a_linux_kernel() {
    let (_, virt) = match vmm_core::hostcheck::open_kvm() {
        Ok(v) => v,
        Err(e) => panic!("/dev/kvm: {e}"),
    };
    if virt == vmm_core::hostcheck::Virtualization::Hardware {
        eprintln!("this host has hardware virtualization: nothing to refuse");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["run", "--kernel=/nonexistent", "--timeout=5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("no hardware virtualization"), "{stderr}");
}
