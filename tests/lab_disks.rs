//! virtio-blk with the stock Debian driver: two disks appear in order as /dev/vda and
//! /dev/vdb with their ids, sizes and read-only flags; the guest reads the read-only one
//! byte-exact, cannot write to it, and what it writes to the other lands in the host file.
//! Runs directly on /dev/kvm with VT-x/AMD-V, otherwise in the lab (the output says which).

use bulkhead_tests::lab::{run_guest, DiskSource, GuestRun, LabDisk, READY_MARKER};

const MIB: usize = 1 << 20;
const MARKER: &[u8] = b"BULKHEAD-WRITTEN";
/// Where the guest writes the marker on the writable disk: past the copied first MiB,
/// in sector 7 of the second.
const MARKER_AT: usize = MIB + 7 * 512;

/// A recognisable pattern that no run of zeroes or repeats could pass for.
fn pattern(len: usize) -> Vec<u8> {
    let mut out = b"BULKHEAD-DISK-A\n".to_vec();
    out.extend((0..len - out.len()).map(|i| (i * 7 % 251) as u8));
    out
}

const SCRIPT: &str = r#"
echo "SERIALS $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial)"
echo "RO $(cat /sys/block/vda/ro) $(cat /sys/block/vdb/ro)"
echo "SECTORS $(cat /sys/block/vda/size) $(cat /sys/block/vdb/size)"
dd if=/dev/vda bs=16 count=1 2>/dev/null
if echo overwrite | dd of=/dev/vda bs=512 count=1 conv=notrunc 2>/dev/null; then
    echo RO-WRITE-ACCEPTED
else
    echo RO-WRITE-REFUSED
fi
dd if=/dev/vda of=/dev/vdb bs=4096 count=256 2>/dev/null && echo COPIED
printf 'BULKHEAD-WRITTEN' | dd of=/dev/vdb bs=512 seek=2055 conv=notrunc 2>/dev/null
sync && echo SYNCED
poweroff -f
"#;

#[test]
fn two_disks_appear_in_order_and_the_guest_reads_one_and_writes_the_other() {
    let root = pattern(MIB);
    let run = GuestRun {
        display: None,
        test_script: SCRIPT.into(),
        disks: vec![
            LabDisk {
                name: "root.img".into(),
                source: DiskSource::Bytes(root.clone()),
                read_only: true,
                id: None,
            },
            LabDisk {
                name: "data.img".into(),
                source: DiskSource::Bytes(vec![0; 2 * MIB]),
                read_only: false,
                id: None,
            },
        ],
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts("disks");
    assert!(
        out.serial.contains(READY_MARKER),
        "guest never reached init\n{}",
        out.diagnostics()
    );
    assert_eq!(out.exit_code, 0, "guest did not power off cleanly");
    assert!(out.serial.contains("SERIALS disk0 disk1"), "disk ids");
    assert!(out.serial.contains("RO 1 0"), "read-only flags");
    assert!(out.serial.contains("SECTORS 2048 4096"), "capacities");
    assert!(out.serial.contains("BULKHEAD-DISK-A"), "first bytes of vda");
    assert!(out.serial.contains("RO-WRITE-REFUSED"));
    assert!(out.serial.contains("COPIED") && out.serial.contains("SYNCED"));

    let ro_after = &out.files["root.img"];
    assert!(ro_after == &root, "the read-only disk changed on the host");
    let data = &out.files["data.img"];
    assert_eq!(data.len(), 2 * MIB);
    assert!(
        data[..MIB] == root[..],
        "the copy through the guest is not byte-exact"
    );
    assert_eq!(&data[MARKER_AT..MARKER_AT + MARKER.len()], MARKER);
    assert!(data[MIB..MARKER_AT].iter().all(|&b| b == 0));
}
