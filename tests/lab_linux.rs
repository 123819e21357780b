//! The stock Debian kernel boots in a Bulkhead partition: reaches our init, binds vesafb,
//! draws fbcon text and a pattern we can see in the screenshot, and powers off cleanly.
//! Runs directly on /dev/kvm with VT-x/AMD-V, otherwise in the lab (the output says which).

use bulkhead_tests::lab::{run_guest, GuestRun, RunOutput, Screenshot, READY_MARKER};

const RED: [u8; 3] = [0xcc, 0x00, 0x00];
const GREEN: [u8; 3] = [0x73, 0xd2, 0x16];

/// `rows` rows of one colour in the framebuffer's XRGB byte order (B, G, R, X).
fn rows_of(colour: [u8; 3], width: usize, rows: usize) -> Vec<u8> {
    let px = [colour[2], colour[1], colour[0], 0];
    px.iter().copied().cycle().take(width * 4 * rows).collect()
}

/// Clears the console, writes a line of text on tty1, and the red/green bands at row 600.
fn draw_script(width: usize) -> String {
    let row_bytes = width * 4;
    format!(
        r#"
dmesg | grep -q 'fb0: VESA VGA frame buffer device' && echo VESAFB-BOUND
dmesg | grep -o 'vesafb: mode is [0-9x]*' | head -n 1
echo "vCPUs: $(nproc)"
printf '\033[2J\033[H\033[?25l' > /dev/tty1
echo "BULKHEAD FBCON TEXT" > /dev/tty1
dd if=/bands.bin of=/dev/fb0 bs={row_bytes} seek=600 2>/dev/null && echo BANDS-WRITTEN
echo SHOT-NOW
sleep 1
poweroff -f
"#
    )
}

fn run_drawing_guest(name: &str, vcpus: u8, width: u32, height: u32, bzimage: bool) -> RunOutput {
    let mut bands = rows_of(RED, width as usize, 32);
    bands.extend(rows_of(GREEN, width as usize, 32));
    let run = GuestRun {
        vcpus,
        display: Some((width, height)),
        test_script: draw_script(width as usize),
        test_files: vec![("bands.bin".into(), 0o644, bands)],
        screenshot_on: Some("SHOT-NOW".into()),
        bzimage,
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts(name);
    out
}

fn assert_drawn(out: &RunOutput, vcpus: u8, width: u32, height: u32) {
    assert!(
        out.serial.contains(READY_MARKER),
        "guest never reached init\n{}",
        out.diagnostics()
    );
    assert!(out.serial.contains("VESAFB-BOUND"), "vesafb did not bind");
    assert!(out
        .serial
        .contains(&format!("vesafb: mode is {width}x{height}x32")));
    assert!(out.serial.contains(&format!("vCPUs: {vcpus}")));
    assert!(out.serial.contains("BANDS-WRITTEN"));
    let png = out.screenshot.as_deref().expect("no screenshot taken");
    let shot = Screenshot::decode(png);
    assert_eq!((shot.width, shot.height), (width as usize, height as usize));
    for x in [0, width as usize / 2, width as usize - 1] {
        assert_eq!(shot.pixel(x, 600), RED, "red band at ({x}, 600)");
        assert_eq!(shot.pixel(x, 631), RED);
        assert_eq!(shot.pixel(x, 632), GREEN, "green band at ({x}, 632)");
        assert_eq!(shot.pixel(x, 663), GREEN);
    }
    // "BULKHEAD FBCON TEXT" is 19 cells of 8x16 in the first text row; the rest of that
    // row is empty after the clear.
    let text = shot.lit_pixels(0, 0, 19 * 8, 16);
    let right_of_text = shot.lit_pixels(21 * 8, 0, width as usize, 16);
    assert!(
        text > 150,
        "only {text} lit pixels where fbcon text should be"
    );
    assert_eq!(right_of_text, 0, "unexpected pixels right of the text");
    assert_eq!(out.exit_code, 0, "{}", out.summary());
    assert!(
        out.vmm_stderr.contains("partition powered off"),
        "{}",
        out.vmm_stderr
    );
}

#[test]
fn debian_bzimage_boots_to_init_draws_on_vesafb_and_powers_off_cleanly() {
    let out = run_drawing_guest("boot-1vcpu-1024x768-bzimage", 1, 1024, 768, true);
    assert_drawn(&out, 1, 1024, 768);
}

#[test]
fn two_vcpus_at_1280x800_boot_the_extracted_vmlinux_draw_and_power_off() {
    let out = run_drawing_guest("boot-2vcpu-1280x800-vmlinux", 2, 1280, 800, false);
    assert_drawn(&out, 2, 1280, 800);
}

#[test]
fn guest_reboot_ends_the_partition_with_a_clean_status() {
    let run = GuestRun {
        display: None,
        test_script: "echo REBOOTING\nreboot -f".into(),
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    assert!(out.serial.contains("REBOOTING"));
    assert_eq!(out.exit_code, 0);
    assert!(
        out.vmm_stderr.contains("partition rebooted"),
        "{}",
        out.diagnostics()
    );
}

#[test]
fn virtio_mmio_devices_declared_in_acpi_are_probed_by_the_stock_drivers() {
    let script = r#"
echo "virtio devices: $(ls /sys/bus/virtio/devices | wc -l)"
for d in /sys/bus/virtio/devices/*; do echo "virtio $(basename $d) id=$(cat $d/device) driver=$(basename $(readlink $d/driver))"; done
grep -q 'Name="Bulkhead virtio keyboard"' /proc/bus/input/devices && echo KEYBOARD-PRESENT
grep -q 'Name="Bulkhead virtio tablet"' /proc/bus/input/devices && echo TABLET-PRESENT
[ -c /dev/hvc0 ] && echo HVC0-PRESENT
echo "rng: $(cat /sys/class/misc/hw_random/rng_current)"
bytes=$(head -c 64 /dev/hwrng | od -An -tx1 | tr -d ' \n')
echo "hwrng bytes: ${#bytes}"
[ "$bytes" != "$(printf '%0128d' 0)" ] && echo HWRNG-NONZERO
poweroff -f
"#;
    let run = GuestRun {
        test_script: script.into(),
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts("virtio-probe");
    let s = &out.serial;
    // Keyboard, tablet, console, the agent's console, rng, balloon.
    assert!(s.contains("virtio devices: 6"), "{}", out.diagnostics());
    // Device ids: 18 input, 3 console, 4 entropy, 5 balloon; all bound to their drivers.
    for (id, driver) in [
        ("0x0012", "virtio_input"),
        ("0x0003", "virtio_console"),
        ("0x0004", "virtio_rng"),
        ("0x0005", "virtio_balloon"),
    ] {
        assert!(
            s.contains(&format!("id={id} driver={driver}")),
            "{id} not bound to {driver}\n{s}"
        );
    }
    for marker in [
        "KEYBOARD-PRESENT",
        "TABLET-PRESENT",
        "HVC0-PRESENT",
        "HWRNG-NONZERO",
    ] {
        assert!(s.contains(marker), "{marker} missing\n{s}");
    }
    assert!(s.contains("rng: virtio_rng"), "{s}");
    assert!(s.contains("hwrng bytes: 128"), "{s}");
    assert_eq!(out.exit_code, 0);
}
