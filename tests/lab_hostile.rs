//! A hostile Linux guest: root in the stock Debian guest, with no virtio driver bound
//! (`virtio_mmio` is blacklisted on the command line, so the ACPI-declared devices stay
//! unclaimed and `/dev/mem` may map them under STRICT_DEVMEM / IO_STRICT_DEVMEM),
//! scribbles over every virtio-mmio window, unmapped MMIO and the I/O port space, then
//! powers off. The VMM must never panic, and the guest's own `poweroff -f` must still end
//! the partition with exit status 0 ("partition powered off").
//!
//! What is left alone, and why (each would stop or blind the run for a legitimate reason,
//! not because the VMM failed):
//! - the ACPI sleep control / status / reset ports (`layout::ACPI_SLEEP_CONTROL_PORT`..=
//!   `ACPI_RESET_PORT`): a byte there legitimately powers off or resets the partition
//!   mid-scribble; the final `poweroff -f` goes through them;
//! - the i8042 ports 0x60..=0x64: command 0xfe on 0x64 legitimately resets the CPU
//!   (`reboot=k`);
//! - 0x92 (fast A20/reset) and 0xcf9 (PCI reset control): reset ports on a PC; the VMM
//!   ignores them today, a future VMM may not;
//! - COM1 (0x3f8..=0x3ff): the test reports over it; a scribbled line control register
//!   would lose the report, not hurt the VMM;
//! - the PIC (0x20/0x21, 0xa0/0xa1), ELCR (0x4d0/0x4d1), PIT (0x40..=0x43) and speaker
//!   (0x61): KVM's in-kernel devices, not the VMM's; scribbling them hangs the guest's own
//!   timer and interrupts;
//! - the IO-APIC, local APIC and framebuffer pages (claimed by the guest kernel, so
//!   `/dev/mem` refuses them anyway) and guest RAM (the guest's own business); queue
//!   addresses written to the devices point outside RAM, so a device that does follow
//!   them cannot corrupt the guest that has to power off afterwards.
//!
//! Bounded for the lab (an exit costs 50–350 µs there, a `devmem` process ~60 ms): about
//! 50 `devmem` accesses per device window, 6 per empty window, 40 on unmapped MMIO, and
//! one write and one read (4 KiB `dd` blocks to `/dev/port`) of every other port below
//! 0x1000 and of 16 random blocks of 256 ports above (~16,000 exits; a sweep of all 64 Ki
//! ports took 50–100 s there).
//!
//! Runs directly on /dev/kvm with VT-x/AMD-V, otherwise in the lab (the output says which).

use std::fmt::Write as _;

use bulkhead_tests::lab::{run_guest, DiskSource, GuestRun, LabDisk, READY_MARKER};
use vmm_core::devices::legacy::{i8042, serial};
use vmm_core::devices::virtio::mmio::{reg, MMIO_MAGIC};
use vmm_core::layout;

/// Ports never written or read, inclusive ranges (see the module comment).
fn spared_ports() -> Vec<(u16, u16)> {
    let i8042_last = i8042::I8042_PORT + i8042::I8042_LEN as u16 - 1;
    let mut spared = vec![
        (0x20, 0x21),
        (0x40, 0x43),
        (i8042::I8042_PORT, i8042_last),
        (0x92, 0x92),
        (0xa0, 0xa1),
        (
            layout::ACPI_SLEEP_CONTROL_PORT,
            layout::ACPI_RESET_PORT.max(layout::ACPI_SLEEP_STATUS_PORT),
        ),
        (serial::COM1_PORT, serial::COM1_PORT + 7),
        (0x4d0, 0x4d1),
        (0xcf9, 0xcf9),
    ];
    spared.sort_unstable();
    spared
}

/// Every port but [`spared_ports`], as inclusive ranges.
fn allowed_ports() -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut next: u32 = 0;
    for (lo, hi) in spared_ports() {
        if u32::from(lo) > next {
            out.push((next as u16, lo - 1));
        }
        next = next.max(u32::from(hi) + 1);
    }
    if next <= 0xffff {
        out.push((next as u16, 0xffff));
    }
    out
}

/// Ports below this, where every PC device lives, are all scribbled.
const LEGACY_PORTS_END: u32 = 0x1000;
/// Blocks of 256 ports above [`LEGACY_PORTS_END`] scribbled besides, picked at random
/// (a sweep of all 64 Ki ports took 100 s in the lab).
const RANDOM_PORT_BLOCKS: usize = 16;

/// The port ranges that are scribbled, inclusive: the allowed ports below
/// [`LEGACY_PORTS_END`] and in [`RANDOM_PORT_BLOCKS`] random blocks above.
fn scribbled_ports() -> Vec<(u16, u16)> {
    let mut rng = Rng(0x9047_5eed_0123_4567);
    let mut blocks = vec![(0u32, LEGACY_PORTS_END - 1)];
    while blocks.len() <= RANDOM_PORT_BLOCKS {
        let lo = (LEGACY_PORTS_END + (rng.next() % u64::from(0x1_0000 - LEGACY_PORTS_END)) as u32)
            & !0xff;
        if !blocks.iter().any(|&(b, _)| b == lo) {
            blocks.push((lo, lo + 0xff));
        }
    }
    blocks.sort_unstable();
    let mut out = Vec::new();
    for (blo, bhi) in blocks {
        for (alo, ahi) in allowed_ports() {
            let lo = blo.max(u32::from(alo));
            let hi = bhi.min(u32::from(ahi));
            if lo <= hi {
                out.push((lo as u16, hi as u16));
            }
        }
    }
    out
}

/// xorshift64*: the scribbles are the same on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn value(&mut self) -> u64 {
        const INTERESTING: [u64; 6] = [0, 1, 0xff, 0x8000_0000, 0xffff_ffff, u64::MAX];
        match self.next() % 3 {
            0 => INTERESTING[(self.next() % 6) as usize],
            _ => self.next(),
        }
    }
}

/// Queue addresses that are neither RAM nor anything the guest needs: past the guest's
/// 256 MiB, the window itself, the top of the address space.
const NOT_RAM: u64 = 0x3000_0000;

/// `devmem` accesses for virtio-mmio window `base`: registers read at several widths
/// (also unaligned and across the window's end), a driver that lies at every step of the
/// handshake, queues at addresses that are not RAM, notifications of queues that do not
/// exist, config space writes, then random writes. A window with no device behind it
/// (past the declared ones) gets a few of each: it is unmapped MMIO.
fn window_script(base: u64, populated: bool, rng: &mut Rng) -> String {
    let mut s = String::new();
    let rd = |s: &mut String, off: u64, width: u32| {
        let _ = writeln!(s, "m {:#x} {width}", base + off);
    };
    let wr = |s: &mut String, off: u64, width: u32, value: u64| {
        let _ = writeln!(s, "m {:#x} {width} {value:#x}", base + off);
    };
    rd(&mut s, reg::MAGIC, 64);
    rd(&mut s, reg::CONFIG + 3, 32);
    // Across the end of the window (into the next one, or unmapped after the last).
    rd(&mut s, 0xffe, 32);
    wr(&mut s, 0xffc, 32, 0xffff_ffff);
    if !populated {
        wr(&mut s, reg::STATUS, 32, 0xf);
        wr(&mut s, reg::QUEUE_NOTIFY, 32, 0);
        return s;
    }
    for off in [
        reg::DEVICE_ID,
        reg::QUEUE_NUM_MAX,
        reg::INTERRUPT_STATUS,
        reg::CONFIG_GENERATION,
        0x800,
    ] {
        rd(&mut s, off, 32);
    }
    rd(&mut s, reg::CONFIG + 1, 16);
    // The handshake, wrongly: features beyond what is offered, FEATURES_OK anyway.
    wr(&mut s, reg::STATUS, 32, 0);
    wr(&mut s, reg::STATUS, 32, 3);
    wr(&mut s, reg::DEVICE_FEATURES_SEL, 32, 0xffff_ffff);
    rd(&mut s, reg::DEVICE_FEATURES, 32);
    for sel in [1, 0x7fff_ffff] {
        wr(&mut s, reg::DRIVER_FEATURES_SEL, 32, sel);
        wr(&mut s, reg::DRIVER_FEATURES, 32, 0xffff_ffff);
    }
    wr(&mut s, reg::STATUS, 32, 0xb);
    // Queue 0 and one that does not exist: an impossible size, rings outside RAM (in
    // the window itself, at the top of the address space).
    for q in [0, 0xffff_ffff] {
        wr(&mut s, reg::QUEUE_SEL, 32, q);
        wr(&mut s, reg::QUEUE_NUM, 32, 0xffff_ffff);
        wr(&mut s, reg::QUEUE_DESC_LOW, 32, NOT_RAM);
        wr(&mut s, reg::QUEUE_DRIVER_LOW, 32, base);
        wr(&mut s, reg::QUEUE_DEVICE_LOW, 32, 0xffff_f000);
        wr(&mut s, reg::QUEUE_DEVICE_HIGH, 32, 0xffff_ffff);
        wr(&mut s, reg::QUEUE_READY, 32, 1);
    }
    wr(&mut s, reg::STATUS, 32, 0xf);
    for q in [0, 1, 0xffff_ffff] {
        wr(&mut s, reg::QUEUE_NOTIFY, 32, q);
    }
    wr(&mut s, reg::INTERRUPT_ACK, 32, 0xffff_ffff);
    // Config space at every width, read-only registers.
    wr(&mut s, reg::CONFIG, 64, u64::MAX);
    wr(&mut s, reg::CONFIG, 8, 0x11);
    wr(&mut s, reg::CONFIG + 8, 32, 0xffff_ffff);
    wr(&mut s, reg::SHM_SEL, 32, 0xffff_ffff);
    rd(&mut s, reg::SHM_LEN_LOW, 32);
    wr(&mut s, reg::MAGIC, 32, 0);
    // Random writes, anywhere in the first 0x200 bytes but the status and the queue
    // address registers (a reset there would zero the addresses, and queues at 0 are RAM).
    let mut done = 0;
    while done < 8 {
        let width = [8, 16, 32, 64][(rng.next() % 4) as usize];
        let off = (rng.next() % 0x200) & !(u64::from(width / 8) - 1);
        if off / 8 == reg::STATUS / 8 || (reg::QUEUE_DESC_LOW..reg::SHM_SEL).contains(&(off & !7)) {
            continue;
        }
        let value = rng.value() & (u64::MAX >> (64 - width));
        wr(&mut s, off, width, value);
        done += 1;
    }
    wr(&mut s, reg::STATUS, 32, 0);
    s
}

/// Keyboard, tablet, console, the agent's console, rng, the one disk and the balloon:
/// the windows with a device behind.
const DECLARED_WINDOWS: usize = 7;

/// MMIO nobody maps: past RAM, the hole's start, past the virtio windows, past the
/// framebuffer's memslot, where a PC has its HPET, above 4 GiB.
const UNMAPPED: [u64; 10] = [
    NOT_RAM,
    layout::MMIO_HOLE_START,
    layout::VIRTIO_MMIO_BASE + layout::VIRTIO_MMIO_MAX_DEVICES * layout::VIRTIO_MMIO_SIZE,
    layout::VIRTIO_MMIO_BASE + 0x10_0000,
    layout::FRAMEBUFFER_ADDR + 0x80_0000,
    0xdfff_f000,
    0xfeb0_0000,
    0xfed0_0000,
    layout::MMIO_HOLE_END,
    0x8_0000_0000,
];

fn unmapped_script() -> String {
    let mut s = String::new();
    for addr in UNMAPPED {
        let _ = writeln!(s, "u {addr:#x} 8");
        let _ = writeln!(s, "u {:#x} 64", addr + 8);
        let _ = writeln!(s, "u {:#x} 32 0xffffffff", addr + 4);
        let _ = writeln!(s, "u {addr:#x} 64 0xffffffffffffffff");
    }
    s
}

fn ports_script() -> String {
    let mut s = String::new();
    for (lo, hi) in scribbled_ports() {
        let n = u32::from(hi) - u32::from(lo) + 1;
        let _ = writeln!(s, "p {lo} {n}");
    }
    s
}

/// The guest's /test.sh.
fn hostile_script() -> String {
    let mut rng = Rng(0x5c1b_b1e5_0bad_f00d);
    let windows = (0..layout::VIRTIO_MMIO_MAX_DEVICES)
        .map(|n| layout::VIRTIO_MMIO_BASE + n * layout::VIRTIO_MMIO_SIZE);
    let mut windows_script = String::new();
    for (n, base) in windows.clone().enumerate() {
        windows_script.push_str(&window_script(base, n < DECLARED_WINDOWS, &mut rng));
    }
    let magic_reads: String = windows
        .map(|base| format!(" $(devmem {base:#x} 32 2>&1)"))
        .collect();
    format!(
        r#"
echo "VIRTIO-BOUND $(ls /sys/bus/virtio/devices | wc -l)"
echo "VIRTIO-MMIO-LOADED $(grep -c '^virtio_mmio ' /proc/modules)"
echo "ACPI-WINDOWS $(grep -c LNRO0005 /proc/iomem)"
echo "MAGIC-BEFORE{magic_reads}"
mfail=0; ufail=0; pfail=0
m() {{ devmem "$@" >/dev/null 2>&1 || mfail=$((mfail+1)); }}
u() {{ devmem "$@" >/dev/null 2>&1 || ufail=$((ufail+1)); }}
p() {{
    dd if=/scribble.bin of=/dev/port bs=4096 iflag=skip_bytes,count_bytes oflag=seek_bytes skip=$1 seek=$1 count=$2 conv=notrunc 2>/dev/null || pfail=$((pfail+1))
    dd if=/dev/port of=/dev/null bs=4096 iflag=skip_bytes,count_bytes skip=$1 count=$2 2>/dev/null || pfail=$((pfail+1))
}}
t0=$(date +%s)
while read -r f a w v; do $f $a $w $v; done <<'EOF'
{windows_script}EOF
t1=$(date +%s)
echo "WINDOWS-SCRIBBLED failed=$mfail seconds=$((t1-t0))"
while read -r f a w v; do $f $a $w $v; done <<'EOF'
{unmapped}EOF
t2=$(date +%s)
echo "UNMAPPED-SCRIBBLED failed=$ufail seconds=$((t2-t1))"
while read -r f a n; do $f $a $n; done <<'EOF'
{ports}EOF
t3=$(date +%s)
echo "PORTS-SCRIBBLED failed=$pfail seconds=$((t3-t2))"
echo "MAGIC-AFTER{magic_reads}"
echo SCRIBBLE-DONE
poweroff -f
"#,
        unmapped = unmapped_script(),
        ports = ports_script(),
    )
}

/// 64 KiB of port values, one per port, the same on every run.
fn scribble_bytes() -> Vec<u8> {
    let mut rng = Rng(0xd0_0d1e_5ca7_7e75);
    (0..0x1_0000).map(|_| rng.next() as u8).collect()
}

#[test]
fn hostile_guest_scribbling_mmio_and_ports_cannot_panic_the_vmm_and_still_powers_off() {
    let run = GuestRun {
        cmdline: format!(
            "{} module_blacklist=virtio_mmio",
            vmm_core::launch::DEFAULT_CMDLINE
        ),
        test_script: hostile_script(),
        test_files: vec![("scribble.bin".into(), 0o644, scribble_bytes())],
        // A disk, so the block device's window is there to scribble on too.
        disks: vec![LabDisk {
            name: "scratch.img".into(),
            source: DiskSource::Bytes(vec![0; 1 << 20]),
            read_only: false,
            id: None,
        }],
        timeout_s: 240,
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts("hostile");
    let s = &out.serial;
    assert!(s.contains(READY_MARKER), "{}", out.diagnostics());
    // No driver touched the devices: every access below is the test's.
    assert!(s.contains("VIRTIO-BOUND 0"), "{}", out.diagnostics());
    assert!(s.contains("VIRTIO-MMIO-LOADED 0"), "{}", out.diagnostics());
    let declared = format!("ACPI-WINDOWS {DECLARED_WINDOWS}");
    assert!(s.contains(&declared), "{}", out.diagnostics());
    // devmem reached the devices: the first window answers with the magic.
    let magic = format!("MAGIC-BEFORE 0x{MMIO_MAGIC:08X}");
    assert!(s.contains(&magic), "{magic} missing\n{}", out.diagnostics());
    assert!(
        s.contains("WINDOWS-SCRIBBLED failed=0 "),
        "some virtio-mmio accesses were refused\n{}",
        out.diagnostics()
    );
    assert!(s.contains("UNMAPPED-SCRIBBLED"), "{}", out.diagnostics());
    assert!(
        s.contains("PORTS-SCRIBBLED failed=0 "),
        "some port accesses were refused\n{}",
        out.diagnostics()
    );
    // After all that, the devices still answer on their windows.
    let after = format!("MAGIC-AFTER 0x{MMIO_MAGIC:08X}");
    assert!(s.contains(&after), "{after} missing\n{}", out.diagnostics());
    assert!(s.contains("SCRIBBLE-DONE"), "{}", out.diagnostics());
    assert!(
        !out.vmm_stderr.contains("panicked"),
        "the VMM panicked\n{}",
        out.diagnostics()
    );
    assert_eq!(
        out.exit_code,
        0,
        "the guest's poweroff did not end the run cleanly\n{}",
        out.diagnostics()
    );
    assert!(
        out.vmm_stderr.contains("partition powered off"),
        "{}",
        out.diagnostics()
    );
}

#[test]
fn scribbled_ports_spare_exactly_the_reset_power_serial_and_in_kernel_ports() {
    let ranges = scribbled_ports();
    let scribbled = |port: u16| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&port));
    for port in [
        0x20,
        0x43,
        0x60,
        0x64,
        0x92,
        0xa1,
        layout::ACPI_SLEEP_CONTROL_PORT,
        layout::ACPI_RESET_PORT,
        0x3f8,
        0x3ff,
        0xcf9,
    ] {
        assert!(!scribbled(port), "port {port:#x} would be scribbled");
    }
    for port in [
        0, 0x1f, 0x70, 0x71, 0x80, 0x2f8, 0x3bf, 0x3c3, 0xcf8, 0xcfc, 0xfff,
    ] {
        assert!(scribbled(port), "port {port:#x} would be spared");
    }
    let count = |r: &[(u16, u16)]| -> u32 {
        r.iter()
            .map(|&(lo, hi)| u32::from(hi) - u32::from(lo) + 1)
            .sum()
    };
    let spared = 0x1_0000 - count(&allowed_ports());
    assert_eq!(spared, count(&spared_ports()), "spared ranges overlap");
    assert!(spared < 40, "{spared} ports spared");
    let legacy_spared: u32 = spared_ports()
        .iter()
        .filter(|&&(lo, _)| u32::from(lo) < LEGACY_PORTS_END)
        .map(|&(lo, hi)| u32::from(hi) - u32::from(lo) + 1)
        .sum();
    let expected = LEGACY_PORTS_END - legacy_spared + RANDOM_PORT_BLOCKS as u32 * 256;
    assert_eq!(count(&ranges), expected);
}
