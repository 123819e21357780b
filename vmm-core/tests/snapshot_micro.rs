//! Snapshot and restore of micro-guests on the host's /dev/kvm (hardware or kvm-pvm):
//! a counting guest continues exactly where it stopped, clones start from the same
//! point, and damaged snapshots are refused with the reason.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_core::builder::{self, BootSource, VmConfig};
use vmm_core::devices::legacy::SerialSink;
use vmm_core::hostcheck;
use vmm_core::microguest::Asm;
use vmm_core::snapshot::{Snapshot, SnapshotError, SnapshotFiles, MEMORY_FILE, STATE_FILE};
use vmm_core::vmm::RunningPartition;

const LOAD_ADDR: u64 = 0x10_0000;
/// Where the counting guest keeps its counter (below its code, in RAM).
const COUNTER: u64 = 0x8_0000;
const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.0.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "guest printed too little");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Forever: counter = [COUNTER] + 1, stored back; esi counts too and must agree (else
/// `ud2`, a crash); the counter's low byte goes to COM1; a delay.
fn counting_guest() -> Asm {
    let mut asm = Asm::new();
    asm.bytes(&[0x31, 0xf6]); // xor esi, esi
    let top = asm.here();
    asm.mov_rbx(COUNTER).load_eax_rbx();
    asm.bytes(&[0xff, 0xc0]); // inc eax
    asm.store_eax_rbx();
    asm.bytes(&[0xff, 0xc6]); // inc esi
    asm.bytes(&[0x39, 0xf0]); // cmp eax, esi
    let diverged = asm.jne();
    asm.mov_dx(0x3f8).out_al();
    // A short delay: `loop` takes a few µs per iteration on a software KVM.
    asm.mov_ecx(0x1000).loop_self().jmp_back(top);
    asm.bind(diverged);
    asm.ud2();
    asm
}

fn config(boot: BootSource, out: &Captured) -> VmConfig {
    VmConfig {
        mem_mib: 16,
        vcpus: 1,
        boot,
        display: None,
        serial: SerialSink::new(Box::new(out.clone())),
        disks: Vec::new(),
    }
}

fn kvm() -> kvm_ioctls::Kvm {
    hostcheck::open_kvm()
        .expect("snapshot tests need /dev/kvm")
        .0
}

/// Runs the counting guest until it printed `n` bytes, snapshots it into `dir`; returns
/// everything it printed.
fn snapshot_counting_guest(dir: &Path, n: usize) -> Vec<u8> {
    let kvm = kvm();
    let out = Captured::default();
    let boot = BootSource::Raw {
        code: counting_guest().code,
        load_addr: LOAD_ADDR,
    };
    let p = builder::build(&kvm, config(boot, &out))
        .unwrap()
        .start()
        .unwrap();
    out.wait_for(n);
    let files = SnapshotFiles::create(dir).unwrap();
    let report = p
        .snapshot(&kvm, &files, 0, serde_json::Value::Null)
        .unwrap();
    eprintln!("snapshot: {report:?}");
    // Paused: nothing more is printed.
    let printed = out.bytes();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(out.bytes(), printed, "the guest ran on after the snapshot");
    p.finish();
    printed
}

fn restore(dir: &Path, verify: bool) -> Result<(RunningPartition, Captured), SnapshotError> {
    let kvm = kvm();
    let mut snap = Snapshot::open(dir, &kvm, verify)?;
    let out = Captured::default();
    let p = builder::restore(&kvm, config(BootSource::Snapshot, &out), None, &mut snap).map_err(
        |e| match e {
            builder::BuildError::Snapshot(s) => s,
            other => panic!("restore failed outside the snapshot: {other}"),
        },
    )?;
    Ok((p.start().unwrap(), out))
}

fn assert_counts_on(before: &[u8], after: &[u8]) {
    let mut last = *before.last().unwrap();
    for (i, &b) in after.iter().enumerate() {
        assert_eq!(
            b,
            last.wrapping_add(1),
            "byte {i} after restore: {b}, expected {} (before: ...{:?}, after: {:?})",
            last.wrapping_add(1),
            &before[before.len().saturating_sub(8)..],
            &after[..after.len().min(16)]
        );
        last = b;
    }
}

#[test]
fn a_restored_counting_guest_continues_exactly_where_it_was_snapshotted() {
    let dir = tempfile::tempdir().unwrap();
    let before = snapshot_counting_guest(dir.path(), 40);
    assert_counts_on(&[0], &before);

    let (p, out) = restore(dir.path(), true).unwrap();
    out.wait_for(300);
    assert_eq!(p.finish(), vmm_core::devices::StopReason::Stopped);
    // More than 256 bytes: the counter wrapped its low byte, so this is the memory
    // counter and esi agreeing (the guest crashes otherwise), not a lucky byte.
    assert_counts_on(&before, &out.bytes());
}

#[test]
fn two_restores_of_one_snapshot_both_start_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let before = snapshot_counting_guest(dir.path(), 10);
    let (a, out_a) = restore(dir.path(), false).unwrap();
    let (b, out_b) = restore(dir.path(), false).unwrap();
    out_a.wait_for(20);
    out_b.wait_for(20);
    a.finish();
    b.finish();
    assert_counts_on(&before, &out_a.bytes());
    assert_counts_on(&before, &out_b.bytes());
}

fn damaged(damage: impl FnOnce(&Path)) -> SnapshotError {
    let dir = tempfile::tempdir().unwrap();
    snapshot_counting_guest(dir.path(), 3);
    damage(dir.path());
    match restore(dir.path(), false) {
        Ok(_) => panic!("a damaged snapshot was restored"),
        Err(e) => e,
    }
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_truncated_state_file_is_refused() {
    let e = damaged(|d| {
        let f = OpenOptions::new()
            .write(true)
            .open(d.join(STATE_FILE))
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2).unwrap();
    });
    assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
    eprintln!("refused: {e}");
}

#[test]
fn another_format_version_is_refused() {
    let e = damaged(|d| rewrite(&d.join(STATE_FILE), |b| b[8] ^= 0x40));
    assert!(matches!(e, SnapshotError::FormatVersion { .. }), "{e}");
    eprintln!("refused: {e}");
}

#[test]
fn a_snapshot_from_a_host_with_other_cpu_features_is_refused() {
    let e = damaged(|d| rewrite(&d.join(STATE_FILE), |b| b[12] ^= 1));
    assert!(matches!(e, SnapshotError::CpuFeatures), "{e}");
    eprintln!("refused: {e}");
}

#[test]
fn a_corrupted_state_record_is_refused_by_its_checksum() {
    // The last record is the memory record; its payload ends the file.
    let e = damaged(|d| {
        rewrite(&d.join(STATE_FILE), |b| {
            let last = b.len() - 2;
            b[last] ^= 1;
        })
    });
    assert!(matches!(e, SnapshotError::Checksum { .. }), "{e}");
    eprintln!("refused: {e}");
}

#[test]
fn a_truncated_memory_file_is_refused() {
    let e = damaged(|d| {
        let f = OpenOptions::new()
            .write(true)
            .open(d.join(MEMORY_FILE))
            .unwrap();
        f.set_len(4096).unwrap();
    });
    assert!(matches!(e, SnapshotError::MemoryFile(_)), "{e}");
    eprintln!("refused: {e}");
}

#[test]
fn changed_memory_with_its_mtime_put_back_is_caught_only_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_counting_guest(dir.path(), 3);
    let path = dir.path().join(MEMORY_FILE);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    // The counter's page: a changed guest.
    f.write_all_at(&[0x55], COUNTER + 1).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let e = match restore(dir.path(), true) {
        Ok(_) => panic!("verify missed a changed memory file"),
        Err(e) => e,
    };
    assert!(matches!(e, SnapshotError::MemoryFile(_)), "{e}");
    // Without --verify only size and mtime are checked (documented): it restores.
    let (p, _) = restore(dir.path(), false).unwrap();
    p.finish();
}

#[test]
fn a_snapshot_restored_with_another_memory_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_counting_guest(dir.path(), 3);
    let kvm = kvm();
    let mut snap = Snapshot::open(dir.path(), &kvm, false).unwrap();
    let out = Captured::default();
    let mut cfg = config(BootSource::Snapshot, &out);
    cfg.mem_mib = 32;
    let err = builder::restore(&kvm, cfg, None, &mut snap).err().unwrap();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

/// `mov [addr], value` (32 bits), to RAM or a device register.
fn store32(asm: &mut Asm, addr: u64, value: u32) {
    asm.mov_rbx(addr).mov_eax(value).store_eax_rbx();
}

/// A guest that sets up virtio-rng (window 3 without a display: keyboard, console, the
/// agent's console, rng),
/// prints READY, waits for a byte on COM1, then asks the device for 8 random bytes,
/// prints them and resets. Snapshotted while it waits, each restore draws its own bytes.
fn rng_guest() -> Asm {
    const BASE: u64 = vmm_core::layout::VIRTIO_MMIO_BASE + 3 * vmm_core::layout::VIRTIO_MMIO_SIZE;
    const DESC: u64 = 0x20_0000;
    const AVAIL: u64 = 0x20_1000;
    const USED: u64 = 0x20_2000;
    const DATA: u64 = 0x20_3000;
    let mut asm = Asm::new();
    // Probe: reset, ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK, queue 0 of 8, DRIVER_OK.
    for (reg, value) in [
        (0x070, 0),
        (0x070, 1),
        (0x070, 3),
        (0x024, 1),
        (0x020, 1),
        (0x024, 0),
        (0x020, 0),
        (0x070, 0xb),
        (0x030, 0),
        (0x038, 8),
        (0x080, DESC as u32),
        (0x084, 0),
        (0x090, AVAIL as u32),
        (0x094, 0),
        (0x0a0, USED as u32),
        (0x0a4, 0),
        (0x044, 1),
        (0x070, 0xf),
    ] {
        store32(&mut asm, BASE + reg, value);
    }
    // One device-writable descriptor of 8 bytes, ring[0] = head 0.
    store32(&mut asm, DESC, DATA as u32);
    store32(&mut asm, DESC + 4, 0);
    store32(&mut asm, DESC + 8, 8);
    store32(&mut asm, DESC + 12, 2);
    store32(&mut asm, AVAIL + 4, 0);
    asm.print("READY\n");
    // Until COM1 has a byte: the line status register reads 0x60 when idle.
    asm.mov_dx(0x3fd);
    let wait = asm.here();
    asm.in_al().cmp_al(0x60);
    let got = asm.jne();
    asm.jmp_back(wait);
    asm.bind(got);
    store32(&mut asm, AVAIL, 1 << 16); // avail idx 1
    store32(&mut asm, BASE + 0x050, 0); // QueueNotify
    let poll = asm.here();
    asm.mov_rbx(USED).load_eax_rbx().cmp_eax(1 << 16);
    let done = asm.jne();
    let out = asm.jmp();
    asm.bind(done).jmp_back(poll).bind(out);
    asm.mov_rsi(DATA)
        .mov_ecx(8)
        .mov_dx(0x3f8)
        .rep_outsb()
        .reset();
    asm
}

#[test]
fn two_restores_of_one_snapshot_draw_different_virtio_rng_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let kvm = kvm();
    let out = Captured::default();
    let boot = BootSource::Raw {
        code: rng_guest().code,
        load_addr: LOAD_ADDR,
    };
    let p = builder::build(&kvm, config(boot, &out))
        .unwrap()
        .start()
        .unwrap();
    out.wait_for(b"READY\n".len());
    let files = SnapshotFiles::create(dir.path()).unwrap();
    p.snapshot(&kvm, &files, 0, serde_json::Value::Null)
        .unwrap();
    p.finish();

    let draw = || {
        let (p, out) = restore(dir.path(), false).unwrap();
        p.serial().lock().unwrap().enqueue_input(b"g");
        assert_eq!(
            p.wait_timeout(WAIT),
            Some(vmm_core::devices::StopReason::Reset)
        );
        p.finish();
        let bytes = out.bytes();
        assert_eq!(bytes.len(), 8, "restored guest printed {bytes:?}");
        bytes
    };
    let (a, b) = (draw(), draw());
    eprintln!("clone A {a:02x?}, clone B {b:02x?}");
    assert_ne!(a, b, "two clones drew the same random bytes");
    assert!(
        a != [0; 8] && b != [0; 8],
        "the device did not fill the buffer"
    );
}
