//! virtio-blk through guest memory: a driver that behaves like Linux's virtio_blk, then
//! hostile ones. Every test runs the real worker thread on a temporary file.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::request::{req_type, status, FLAG_UNMAP};
use super::*;
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::test_utils::{Desc, TestDriver, MEM_SIZE, VRING_DESC_F_NEXT};
use crate::devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

const TIMEOUT: Duration = Duration::from_secs(10);
/// Default test disk: 64 sectors.
const DISK_BYTES: u64 = 64 * SECTOR_SIZE;

/// The byte a fresh test disk holds at `offset`.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(7) % 251) as u8
}

fn disk_file(bytes: u64) -> File {
    let mut f = tempfile::tempfile().unwrap();
    let data: Vec<u8> = (0..bytes).map(pattern).collect();
    f.write_all(&data).unwrap();
    f
}

fn file_bytes(f: &File) -> Vec<u8> {
    let len = f.metadata().unwrap().len();
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, 0).unwrap();
    b
}

struct Disk {
    d: TestDriver<VirtioBlock>,
    /// A second fd of the disk file, for checking what the device did.
    file: File,
    worker: Option<JoinHandle<()>>,
}

fn new_disk(bytes: u64, read_only: bool) -> (Disk, BlockWorker) {
    let file = disk_file(bytes);
    let (dev, worker) = VirtioBlock::new(DiskConfig {
        file: file.try_clone().unwrap(),
        read_only,
        id: "root".into(),
    })
    .unwrap();
    let d = TestDriver::new(dev);
    (
        Disk {
            d,
            file,
            worker: None,
        },
        worker,
    )
}

impl Disk {
    fn start(&mut self, worker: BlockWorker) {
        let h = worker.start(&self.d.dev, self.d.mem.clone(), None).unwrap();
        self.worker = Some(h);
    }

    fn in_flight(&self) -> usize {
        self.d.dev.lock().unwrap().device().in_flight()
    }

    /// Waits for `n` used entries.
    fn wait_used(&mut self, n: usize) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.d.take_used(0));
            assert!(Instant::now() < deadline, "only {got:?} of {n} answers");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got.len(), n, "more answers than requests: {got:?}");
        got
    }

    fn header(&mut self, kind: u32, sector: u64) -> u64 {
        let a = self.d.alloc(16, 0);
        self.d.mem.write_obj(kind, GuestAddress(a)).unwrap();
        self.d.mem.write_obj(sector, GuestAddress(a + 8)).unwrap();
        a
    }

    fn status_byte(&mut self) -> u64 {
        self.d.alloc(1, 0xee)
    }

    fn status_at(&self, addr: u64) -> u8 {
        self.d.read_mem(addr, 1)[0]
    }

    /// Submits header + `data` + status, notifies, waits; returns (status, used len).
    fn run(&mut self, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
        let h = self.header(kind, sector);
        let s = self.status_byte();
        let mut bufs = vec![(h, 16, false)];
        bufs.extend_from_slice(data);
        bufs.push((s, 1, true));
        let head = self.d.add_chain(0, &bufs);
        self.d.notify(0);
        let used = self.wait_used(1);
        assert_eq!(used[0].0, u32::from(head));
        (self.status_at(s), used[0].1)
    }

    /// A discard / write-zeroes request with one segment.
    fn run_range(&mut self, kind: u32, sector: u64, sectors: u32, flags: u32) -> u8 {
        let seg = self.d.alloc(16, 0);
        self.d.mem.write_obj(sector, GuestAddress(seg)).unwrap();
        self.d
            .mem
            .write_obj(sectors, GuestAddress(seg + 8))
            .unwrap();
        self.d.mem.write_obj(flags, GuestAddress(seg + 12)).unwrap();
        self.run(kind, 0, &[(seg, 16, false)]).0
    }
}

fn running_disk(bytes: u64, read_only: bool) -> Disk {
    let (mut disk, worker) = new_disk(bytes, read_only);
    disk.d.init();
    disk.start(worker);
    disk
}

fn config_u32(d: &TestDriver<VirtioBlock>, at: usize) -> u32 {
    let b = d.read_bytes(reg::CONFIG + at as u64, 4);
    u32::from_le_bytes(b.try_into().unwrap())
}

fn config_capacity(d: &TestDriver<VirtioBlock>) -> u64 {
    let b = d.read_bytes(reg::CONFIG, 8);
    u64::from_le_bytes(b.try_into().unwrap())
}

// ---- features and config space ----

#[test]
fn writable_file_offers_flush_discard_and_limits_and_describes_its_size() {
    let (disk, _w) = new_disk(DISK_BYTES, false);
    let d = &disk.d;
    assert_eq!(d.read32(reg::DEVICE_ID), device_type::BLOCK);
    let f = d.device_features();
    let want = VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | feature::SIZE_MAX
        | feature::SEG_MAX
        | feature::BLK_SIZE
        | feature::FLUSH
        | feature::DISCARD
        | feature::WRITE_ZEROES;
    assert_eq!(f, want);
    assert_eq!(config_capacity(d), 64);
    assert_eq!(config_u32(d, config::SIZE_MAX), SIZE_MAX);
    assert_eq!(config_u32(d, config::SEG_MAX), SEG_MAX);
    assert_eq!(config_u32(d, config::BLK_SIZE), 512);
    assert_eq!(
        config_u32(d, config::MAX_DISCARD_SECTORS),
        MAX_DISCARD_SECTORS
    );
    assert_eq!(config_u32(d, config::MAX_DISCARD_SEG), 1);
    assert_eq!(config_u32(d, config::MAX_WRITE_ZEROES_SEG), 1);
    assert_eq!(
        d.read_bytes(reg::CONFIG + config::WRITE_ZEROES_MAY_UNMAP as u64, 1),
        [1]
    );
    // A 32-bit read of the capacity's halves, as Linux's virtio_cread64 may do.
    assert_eq!(d.read32(reg::CONFIG), 64);
    assert_eq!(d.read32(reg::CONFIG + 4), 0);
    assert_eq!(d.read_bytes(reg::CONFIG + 0x80, 8), vec![0; 8]);
    // The driver may take every offered feature.
    assert!(d.negotiate(want));
}

#[test]
fn read_only_disk_offers_the_ro_bit_and_no_discard() {
    let (disk, _w) = new_disk(DISK_BYTES, true);
    let f = disk.d.device_features();
    assert_ne!(f & feature::RO, 0);
    assert_eq!(f & (feature::DISCARD | feature::WRITE_ZEROES), 0);
    assert_eq!(config_u32(&disk.d, config::MAX_DISCARD_SECTORS), 0);
    assert!(disk.d.negotiate(f));
}

#[test]
fn capacity_rounds_a_partial_last_sector_down() {
    let (disk, _w) = new_disk(10 * SECTOR_SIZE + 100, false);
    assert_eq!(config_capacity(&disk.d), 10);
}

#[test]
fn config_writes_are_ignored() {
    let (disk, _w) = new_disk(DISK_BYTES, false);
    disk.d.write_bytes(reg::CONFIG, &[0xff; 8]);
    disk.d.write_bytes(reg::CONFIG + 32, &[1]);
    assert_eq!(config_capacity(&disk.d), 64);
}

#[test]
fn id_longer_than_20_bytes_is_refused() {
    let r = VirtioBlock::new(DiskConfig {
        file: disk_file(512),
        read_only: false,
        id: "a".repeat(21),
    });
    assert!(matches!(r, Err(BlockError::IdTooLong { .. })));
}

#[test]
fn a_character_device_is_not_a_disk() {
    let r = VirtioBlock::new(DiskConfig {
        file: File::open("/dev/null").unwrap(),
        read_only: true,
        id: String::new(),
    });
    assert!(matches!(r, Err(BlockError::NotADisk)));
}

// ---- a well-behaved driver ----

#[test]
fn read_returns_the_file_contents_across_several_segments() {
    let mut disk = running_disk(DISK_BYTES, false);
    let a = disk.d.alloc(512, 0);
    let b = disk.d.alloc(1024, 0);
    let c = disk.d.alloc(512, 0);
    let (st, len) = disk.run(
        req_type::IN,
        3,
        &[(a, 512, true), (b, 1024, true), (c, 512, true)],
    );
    assert_eq!((st, len), (status::OK, 2048 + 1));
    let mut got = disk.d.read_mem(a, 512);
    got.extend(disk.d.read_mem(b, 1024));
    got.extend(disk.d.read_mem(c, 512));
    let want: Vec<u8> = (3 * 512..3 * 512 + 2048).map(pattern).collect();
    assert_eq!(got, want);
    assert!(disk.d.take_irq());
}

#[test]
fn write_then_read_round_trips_across_several_segments() {
    let mut disk = running_disk(DISK_BYTES, false);
    let data: Vec<u8> = (0..1536u32).map(|i| (i * 13 % 256) as u8).collect();
    let a = disk.d.alloc(1024, 0);
    let b = disk.d.alloc(512, 0);
    disk.d
        .mem
        .write_slice(&data[..1024], GuestAddress(a))
        .unwrap();
    disk.d
        .mem
        .write_slice(&data[1024..], GuestAddress(b))
        .unwrap();
    let (st, len) = disk.run(req_type::OUT, 60, &[(a, 1024, false), (b, 512, false)]);
    assert_eq!((st, len), (status::OK, 1));
    let file = file_bytes(&disk.file);
    assert_eq!(file.len() as u64, DISK_BYTES, "size unchanged");
    assert_eq!(&file[60 * 512..63 * 512], &data[..]);
    assert_eq!(
        file[60 * 512 - 1],
        pattern(60 * 512 - 1),
        "neighbour untouched"
    );
    // And back through the device, split differently.
    let r1 = disk.d.alloc(512, 0);
    let r2 = disk.d.alloc(1024, 0);
    let (st, _) = disk.run(req_type::IN, 60, &[(r1, 512, true), (r2, 1024, true)]);
    assert_eq!(st, status::OK);
    let mut got = disk.d.read_mem(r1, 512);
    got.extend(disk.d.read_mem(r2, 1024));
    assert_eq!(got, data);
}

#[test]
fn the_last_sector_can_be_read_and_written() {
    let mut disk = running_disk(DISK_BYTES, false);
    let a = disk.d.alloc(512, 0x5a);
    assert_eq!(
        disk.run(req_type::OUT, 63, &[(a, 512, false)]).0,
        status::OK
    );
    assert_eq!(&file_bytes(&disk.file)[63 * 512..], &[0x5a; 512][..]);
}

#[test]
fn header_data_and_status_may_share_descriptors() {
    // "Any layout": header and data in one readable buffer, no separate status buffer.
    let mut disk = running_disk(DISK_BYTES, false);
    let out = disk.d.alloc(16 + 512, 0x77);
    disk.d
        .mem
        .write_obj(req_type::OUT, GuestAddress(out))
        .unwrap();
    disk.d.mem.write_obj(0u32, GuestAddress(out + 4)).unwrap();
    disk.d.mem.write_obj(5u64, GuestAddress(out + 8)).unwrap();
    let s = disk.status_byte();
    let head = disk.d.add_chain(0, &[(out, 528, false), (s, 1, true)]);
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1), vec![(u32::from(head), 1)]);
    assert_eq!(disk.status_at(s), status::OK);
    assert_eq!(&file_bytes(&disk.file)[5 * 512..6 * 512], &[0x77; 512][..]);
    // Read data and status in one writable buffer.
    let h = disk.header(req_type::IN, 5);
    let inb = disk.d.alloc(513, 0);
    let head = disk.d.add_chain(0, &[(h, 16, false), (inb, 513, true)]);
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1), vec![(u32::from(head), 513)]);
    assert_eq!(disk.d.read_mem(inb, 512), vec![0x77; 512]);
    assert_eq!(disk.status_at(inb + 512), status::OK);
}

#[test]
fn flush_completes_ok() {
    let mut disk = running_disk(DISK_BYTES, false);
    assert_eq!(disk.run(req_type::FLUSH, 0, &[]), (status::OK, 1));
    let mut ro = running_disk(DISK_BYTES, true);
    assert_eq!(ro.run(req_type::FLUSH, 0, &[]), (status::OK, 1));
}

#[test]
fn get_id_returns_the_nul_padded_role() {
    let mut disk = running_disk(DISK_BYTES, false);
    let id = disk.d.alloc(ID_BYTES, 0xff);
    let (st, len) = disk.run(req_type::GET_ID, 0, &[(id, ID_BYTES as u32, true)]);
    assert_eq!((st, len), (status::OK, ID_BYTES as u32 + 1));
    let mut want = b"root".to_vec();
    want.resize(ID_BYTES, 0);
    assert_eq!(disk.d.read_mem(id, ID_BYTES), want);
    // A shorter buffer gets what fits, and nothing past it.
    let short = disk.d.alloc(8, 0xff);
    let (st, len) = disk.run(req_type::GET_ID, 0, &[(short, 3, true)]);
    assert_eq!((st, len), (status::OK, 4));
    assert_eq!(disk.d.read_mem(short, 8), b"roo\xff\xff\xff\xff\xff");
}

#[test]
fn write_zeroes_zeroes_the_range_with_and_without_unmap() {
    let mut disk = running_disk(DISK_BYTES, false);
    assert_eq!(disk.run_range(req_type::WRITE_ZEROES, 2, 3, 0), status::OK);
    assert_eq!(
        disk.run_range(req_type::WRITE_ZEROES, 10, 8, FLAG_UNMAP),
        status::OK
    );
    let file = file_bytes(&disk.file);
    assert_eq!(file.len() as u64, DISK_BYTES, "size unchanged");
    for (i, &b) in file.iter().enumerate() {
        let zeroed = (2 * 512..5 * 512).contains(&i) || (10 * 512..18 * 512).contains(&i);
        let want = if zeroed { 0 } else { pattern(i as u64) };
        assert_eq!(b, want, "byte {i}");
    }
}

#[test]
fn write_zeroes_falls_back_to_writing_zeroes_where_the_file_system_cannot_zero_ranges() {
    // tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE (EOPNOTSUPP).
    let Ok(mut f) = tempfile::tempfile_in("/dev/shm") else {
        eprintln!("no /dev/shm; skipped");
        return;
    };
    let data: Vec<u8> = (0..DISK_BYTES).map(pattern).collect();
    f.write_all(&data).unwrap();
    let (dev, worker) = VirtioBlock::new(DiskConfig {
        file: f.try_clone().unwrap(),
        read_only: false,
        id: "scratch".into(),
    })
    .unwrap();
    let mut disk = Disk {
        d: TestDriver::new(dev),
        file: f,
        worker: None,
    };
    disk.d.init();
    disk.start(worker);
    assert_eq!(disk.run_range(req_type::WRITE_ZEROES, 1, 2, 0), status::OK);
    let file = file_bytes(&disk.file);
    assert_eq!(file.len() as u64, DISK_BYTES);
    for (i, &b) in file.iter().enumerate() {
        let want = if (512..3 * 512).contains(&i) {
            0
        } else {
            pattern(i as u64)
        };
        assert_eq!(b, want, "byte {i}");
    }
}

#[test]
fn discard_completes_ok_and_keeps_the_file_size() {
    let mut disk = running_disk(DISK_BYTES, false);
    assert_eq!(disk.run_range(req_type::DISCARD, 0, 16, 0), status::OK);
    assert_eq!(disk.run_range(req_type::DISCARD, 63, 0, 0), status::OK);
    let file = file_bytes(&disk.file);
    assert_eq!(file.len() as u64, DISK_BYTES);
    assert_eq!(
        file[16 * 512],
        pattern(16 * 512),
        "past the range untouched"
    );
}

#[test]
fn requests_made_available_before_driver_ok_are_served_at_driver_ok() {
    let (mut disk, worker) = new_disk(DISK_BYTES, false);
    disk.start(worker);
    assert!(disk.d.negotiate(VIRTIO_F_VERSION_1));
    disk.d
        .setup_queue_with(0, TestDriver::<VirtioBlock>::standard_layout(0, 16));
    let h = disk.header(req_type::IN, 1);
    let buf = disk.d.alloc(512, 0);
    let s = disk.status_byte();
    let head = disk
        .d
        .add_chain(0, &[(h, 16, false), (buf, 512, true), (s, 1, true)]);
    disk.d.notify(0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(disk.d.take_used(0), vec![], "nothing before DRIVER_OK");
    disk.d.driver_ok();
    assert_eq!(disk.wait_used(1), vec![(u32::from(head), 513)]);
    assert_eq!(disk.status_at(s), status::OK);
}

#[test]
fn notifications_before_the_driver_set_up_the_queue_are_ignored() {
    let (mut disk, worker) = new_disk(DISK_BYTES, false);
    disk.start(worker);
    disk.d.notify(0);
    assert!(disk.d.negotiate(VIRTIO_F_VERSION_1));
    disk.d.notify(0);
    disk.d.notify(7);
    // DRIVER_OK with no queue ready: the device runs, but has nothing to look at.
    disk.d.driver_ok();
    disk.d.notify(0);
    assert!(!disk.d.needs_reset());
    assert!(!disk.d.take_irq());
    assert_eq!(disk.in_flight(), 0);
    // A proper start afterwards works.
    disk.d.init();
    let buf = disk.d.alloc(512, 0);
    assert_eq!(
        disk.run(req_type::IN, 0, &[(buf, 512, true)]),
        (status::OK, 513)
    );
}

#[test]
fn requests_notified_before_the_worker_starts_are_served_once_it_runs() {
    let (mut disk, worker) = new_disk(DISK_BYTES, false);
    assert!(disk.d.negotiate(VIRTIO_F_VERSION_1));
    disk.d
        .setup_queue_with(0, TestDriver::<VirtioBlock>::standard_layout(0, 16));
    disk.d.driver_ok();
    // 8 requests of 2 descriptors (header, status) fill the 16 descriptors.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let h = disk.header(req_type::FLUSH, 0);
        let s = disk.status_byte();
        disk.d.add_chain(0, &[(h, 16, false), (s, 1, true)]);
        statuses.push(s);
    }
    disk.d.notify(0);
    assert_eq!(
        disk.in_flight(),
        8,
        "all taken, none answered: no worker yet"
    );
    disk.start(worker);
    let used = disk.wait_used(8);
    assert!(used.iter().all(|&(_, len)| len == 1));
    for s in statuses {
        assert_eq!(disk.status_at(s), status::OK);
    }
    assert_eq!(disk.in_flight(), 0);
}

#[test]
fn in_flight_requests_are_bounded_by_the_queue_size() {
    let (mut disk, worker) = new_disk(DISK_BYTES, false);
    assert!(disk.d.negotiate(VIRTIO_F_VERSION_1));
    disk.d
        .setup_queue_with(0, TestDriver::<VirtioBlock>::standard_layout(0, 4));
    disk.d.driver_ok();
    // The same two descriptors published as eight requests, as a hostile driver may.
    let h = disk.header(req_type::FLUSH, 0);
    let s = disk.status_byte();
    let head = disk.d.add_chain(0, &[(h, 16, false), (s, 1, true)]);
    for _ in 0..3 {
        disk.d.publish(0, head);
    }
    disk.d.notify(0);
    assert_eq!(disk.in_flight(), 4);
    for _ in 0..4 {
        disk.d.publish(0, head);
    }
    disk.d.notify(0);
    assert_eq!(disk.in_flight(), 4, "the rest waits in the ring");
    disk.start(worker);
    assert_eq!(disk.wait_used(8).len(), 8);
}

#[test]
fn reset_drops_requests_of_the_previous_session() {
    let (mut disk, worker) = new_disk(DISK_BYTES, false);
    disk.d.init();
    let a = disk.d.alloc(512, 0x11);
    let h = disk.header(req_type::OUT, 0);
    let s = disk.status_byte();
    disk.d
        .add_chain(0, &[(h, 16, false), (a, 512, false), (s, 1, true)]);
    disk.d.notify(0);
    assert_eq!(disk.in_flight(), 1);
    disk.d.write32(reg::STATUS, 0);
    disk.start(worker);
    disk.d.init();
    let b = disk.d.alloc(512, 0);
    assert_eq!(
        disk.run(req_type::IN, 0, &[(b, 512, true)]),
        (status::OK, 513)
    );
    let want: Vec<u8> = (0..512).map(pattern).collect();
    assert_eq!(disk.d.read_mem(b, 512), want, "the stale write never ran");
    assert_eq!(disk.status_at(s), 0xee, "no status for the stale request");
}

#[test]
fn worker_thread_exits_when_the_device_is_dropped() {
    let mut disk = running_disk(DISK_BYTES, false);
    let buf = disk.d.alloc(512, 0);
    disk.run(req_type::IN, 0, &[(buf, 512, true)]);
    let h = disk.worker.take().unwrap();
    drop(disk);
    let deadline = Instant::now() + TIMEOUT;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "worker still running");
        std::thread::sleep(Duration::from_millis(1));
    }
    h.join().unwrap();
}

#[test]
fn a_request_without_a_worker_gets_ioerr() {
    let (mut disk, worker) = new_disk(DISK_BYTES, false);
    drop(worker);
    disk.d.init();
    assert_eq!(disk.run(req_type::FLUSH, 0, &[]), (status::IOERR, 1));
}

// ---- read-only disks ----

#[test]
fn read_only_write_is_refused_with_ioerr_and_file_is_unchanged() {
    let mut disk = running_disk(DISK_BYTES, true);
    let before = file_bytes(&disk.file);
    let a = disk.d.alloc(512, 0x42);
    assert_eq!(
        disk.run(req_type::OUT, 0, &[(a, 512, false)]),
        (status::IOERR, 1)
    );
    assert_eq!(disk.run_range(req_type::DISCARD, 0, 8, 0), status::IOERR);
    assert_eq!(
        disk.run_range(req_type::WRITE_ZEROES, 0, 8, 0),
        status::IOERR
    );
    assert_eq!(file_bytes(&disk.file), before);
    // Reads still work.
    let r = disk.d.alloc(512, 0);
    assert_eq!(disk.run(req_type::IN, 1, &[(r, 512, true)]).0, status::OK);
}

// ---- hostile requests answered with a status ----

#[test]
fn write_past_end_of_disk_gets_ioerr_and_file_is_unchanged() {
    let mut disk = running_disk(DISK_BYTES, false);
    let before = file_bytes(&disk.file);
    let a = disk.d.alloc(1024, 0x42);
    // Starts inside, ends one sector past the end; and entirely past the end.
    for sector in [63, 64, 1000] {
        assert_eq!(
            disk.run(req_type::OUT, sector, &[(a, 1024, false)]),
            (status::IOERR, 1),
            "sector {sector}"
        );
    }
    assert_eq!(file_bytes(&disk.file), before);
}

#[test]
fn read_past_end_of_disk_gets_ioerr_and_leaves_the_buffer_alone() {
    let mut disk = running_disk(DISK_BYTES, false);
    let a = disk.d.alloc(1024, 0xcc);
    assert_eq!(
        disk.run(req_type::IN, 63, &[(a, 1024, true)]),
        (status::IOERR, 1)
    );
    assert_eq!(disk.d.read_mem(a, 1024), vec![0xcc; 1024]);
}

#[test]
fn sector_times_512_overflow_gets_ioerr_and_file_is_unchanged() {
    let mut disk = running_disk(DISK_BYTES, false);
    let before = file_bytes(&disk.file);
    let a = disk.d.alloc(512, 0x42);
    // sector * 512 wraps to a small offset; sector * 512 + len wraps too.
    for sector in [1u64 << 55, u64::MAX, u64::MAX / 512] {
        assert_eq!(
            disk.run(req_type::OUT, sector, &[(a, 512, false)]),
            (status::IOERR, 1)
        );
        assert_eq!(
            disk.run(req_type::IN, sector, &[(a, 512, true)]),
            (status::IOERR, 1)
        );
    }
    assert_eq!(
        disk.run_range(req_type::WRITE_ZEROES, u64::MAX, 1, 0),
        status::IOERR
    );
    assert_eq!(
        disk.run_range(req_type::DISCARD, 1 << 55, 1, 0),
        status::IOERR
    );
    assert_eq!(file_bytes(&disk.file), before);
}

#[test]
fn misaligned_length_gets_ioerr_and_file_is_unchanged() {
    let mut disk = running_disk(DISK_BYTES, false);
    let before = file_bytes(&disk.file);
    let a = disk.d.alloc(1024, 0x42);
    for len in [1, 511, 513, 1000] {
        assert_eq!(
            disk.run(req_type::OUT, 0, &[(a, len, false)]),
            (status::IOERR, 1),
            "write of {len}"
        );
        assert_eq!(
            disk.run(req_type::IN, 0, &[(a, len, true)]),
            (status::IOERR, 1),
            "read of {len}"
        );
    }
    // Two segments of 256 add up to a sector: that is fine.
    let b = disk.d.alloc(256, 0);
    assert_eq!(
        disk.run(req_type::IN, 0, &[(a, 256, true), (b, 256, true)])
            .0,
        status::OK
    );
    assert_eq!(file_bytes(&disk.file), before);
}

#[test]
fn oversized_segment_gets_ioerr_and_file_is_unchanged() {
    let mut disk = running_disk(1024 * SECTOR_SIZE, false);
    let before = file_bytes(&disk.file);
    let len = SIZE_MAX + 512;
    let a = disk.d.alloc(len as usize, 0x42);
    assert_eq!(
        disk.run(req_type::OUT, 0, &[(a, len, false)]),
        (status::IOERR, 1)
    );
    assert_eq!(
        disk.run(req_type::IN, 0, &[(a, len, true)]),
        (status::IOERR, 1)
    );
    assert_eq!(file_bytes(&disk.file), before);
    // Exactly SIZE_MAX is allowed.
    assert_eq!(
        disk.run(req_type::IN, 0, &[(a, SIZE_MAX, true)]).0,
        status::OK
    );
}

#[test]
fn more_segments_than_seg_max_gets_ioerr_and_file_is_unchanged() {
    let mut disk = running_disk(DISK_BYTES * 4, false);
    let before = file_bytes(&disk.file);
    let a = disk.d.alloc(512, 0x42);
    let too_many: Vec<(u64, u32, bool)> = (0..=SEG_MAX).map(|_| (a, 512, false)).collect();
    assert_eq!(disk.run(req_type::OUT, 0, &too_many), (status::IOERR, 1));
    assert_eq!(file_bytes(&disk.file), before);
    // SEG_MAX segments are fine (the same buffer, read many times).
    let ok: Vec<(u64, u32, bool)> = (0..SEG_MAX).map(|_| (a, 512, false)).collect();
    assert_eq!(disk.run(req_type::OUT, 0, &ok).0, status::OK);
}

#[test]
fn read_into_a_device_readable_buffer_gets_ioerr() {
    let mut disk = running_disk(DISK_BYTES, false);
    let a = disk.d.alloc(512, 0xcc);
    assert_eq!(
        disk.run(req_type::IN, 0, &[(a, 512, false)]),
        (status::IOERR, 1)
    );
    assert_eq!(disk.d.read_mem(a, 512), vec![0xcc; 512], "not written");
}

#[test]
fn write_from_a_device_writable_buffer_gets_ioerr_and_file_is_unchanged() {
    let mut disk = running_disk(DISK_BYTES, false);
    let before = file_bytes(&disk.file);
    let a = disk.d.alloc(512, 0x42);
    assert_eq!(
        disk.run(req_type::OUT, 0, &[(a, 512, true)]),
        (status::IOERR, 1)
    );
    assert_eq!(disk.d.read_mem(a, 512), vec![0x42; 512], "not written");
    assert_eq!(file_bytes(&disk.file), before);
}

#[test]
fn readable_buffer_after_a_writable_one_gets_ioerr_and_file_is_unchanged() {
    let mut disk = running_disk(DISK_BYTES, false);
    let before = file_bytes(&disk.file);
    let h = disk.header(req_type::OUT, 0);
    let w = disk.d.alloc(512, 0);
    let r = disk.d.alloc(512, 0x42);
    let s = disk.status_byte();
    disk.d.add_chain(
        0,
        &[
            (h, 16, false),
            (w, 512, true),
            (r, 512, false),
            (s, 1, true),
        ],
    );
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1)[0].1, 1);
    assert_eq!(disk.status_at(s), status::IOERR);
    assert_eq!(file_bytes(&disk.file), before);
}

#[test]
fn flush_or_get_id_with_stray_data_gets_ioerr() {
    let mut disk = running_disk(DISK_BYTES, false);
    let a = disk.d.alloc(512, 0);
    assert_eq!(
        disk.run(req_type::FLUSH, 0, &[(a, 512, false)]),
        (status::IOERR, 1)
    );
    assert_eq!(
        disk.run(req_type::FLUSH, 0, &[(a, 512, true)]),
        (status::IOERR, 1)
    );
    assert_eq!(
        disk.run(req_type::GET_ID, 0, &[(a, 20, false)]),
        (status::IOERR, 1)
    );
}

#[test]
fn header_shorter_than_16_bytes_or_writable_gets_ioerr() {
    let mut disk = running_disk(DISK_BYTES, false);
    let h = disk.header(req_type::IN, 0);
    let s = disk.status_byte();
    disk.d.add_chain(0, &[(h, 15, false), (s, 1, true)]);
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1)[0].1, 1);
    assert_eq!(disk.status_at(s), status::IOERR);
    // A header the driver marked device-writable is no header.
    let s2 = disk.status_byte();
    disk.d.add_chain(0, &[(h, 16, true), (s2, 1, true)]);
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1)[0].1, 1);
    assert_eq!(disk.status_at(s2), status::IOERR);
}

#[test]
fn unknown_request_types_get_unsupp() {
    let mut disk = running_disk(DISK_BYTES, false);
    for kind in [2, 3, 5, 10, 14, 15, 0x8000_0000, u32::MAX] {
        assert_eq!(
            disk.run(kind, 0, &[]),
            (status::UNSUPP, 1),
            "type {kind:#x}"
        );
    }
}

#[test]
fn discard_with_flags_gets_unsupp_and_too_many_sectors_ioerr() {
    let mut disk = running_disk(DISK_BYTES, false);
    assert_eq!(
        disk.run_range(req_type::DISCARD, 0, 1, FLAG_UNMAP),
        status::UNSUPP
    );
    assert_eq!(
        disk.run_range(req_type::WRITE_ZEROES, 0, 1, 2),
        status::UNSUPP
    );
    assert_eq!(
        disk.run_range(req_type::DISCARD, 0, MAX_DISCARD_SECTORS + 1, 0),
        status::IOERR
    );
    assert_eq!(
        disk.run_range(req_type::WRITE_ZEROES, 0, MAX_WRITE_ZEROES_SECTORS + 1, 0),
        status::IOERR
    );
    assert_eq!(
        disk.run_range(req_type::WRITE_ZEROES, 60, 5, 0),
        status::IOERR
    );
    // Two segments where the device said one.
    let seg = disk.d.alloc(32, 0);
    assert_eq!(
        disk.run(req_type::DISCARD, 0, &[(seg, 32, false)]),
        (status::IOERR, 1)
    );
    assert_eq!(file_bytes(&disk.file).len() as u64, DISK_BYTES);
    assert_eq!(file_bytes(&disk.file)[60 * 512], pattern(60 * 512));
}

#[test]
fn chain_without_status_is_returned_with_len_0_and_file_is_unchanged() {
    let mut disk = running_disk(DISK_BYTES, false);
    let before = file_bytes(&disk.file);
    let h = disk.header(req_type::OUT, 0);
    let a = disk.d.alloc(512, 0x42);
    let head = disk.d.add_chain(0, &[(h, 16, false), (a, 512, false)]);
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1), vec![(u32::from(head), 0)]);
    // Header only.
    let head = disk.d.add_chain(0, &[(h, 16, false)]);
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1), vec![(u32::from(head), 0)]);
    assert_eq!(file_bytes(&disk.file), before);
    assert!(!disk.d.needs_reset());
}

#[test]
fn status_descriptor_of_zero_bytes_is_no_status() {
    let mut disk = running_disk(DISK_BYTES, false);
    let h = disk.header(req_type::FLUSH, 0);
    let s = disk.status_byte();
    let head = disk.d.add_chain(0, &[(h, 16, false), (s, 0, true)]);
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1), vec![(u32::from(head), 0)]);
    assert_eq!(disk.status_at(s), 0xee, "zero-length buffer not written");
    // With a data buffer before it, the data buffer's last byte is the status, which
    // leaves a data length that is not a whole sector.
    let h = disk.header(req_type::IN, 0);
    let a = disk.d.alloc(512, 0xcc);
    let head = disk
        .d
        .add_chain(0, &[(h, 16, false), (a, 512, true), (s, 0, true)]);
    disk.d.notify(0);
    assert_eq!(disk.wait_used(1), vec![(u32::from(head), 1)]);
    assert_eq!(disk.status_at(a + 511), status::IOERR);
    assert_eq!(disk.d.read_mem(a, 511), vec![0xcc; 511]);
}

// ---- hostile chains that break the queue ----

#[test]
fn descriptor_outside_guest_memory_breaks_the_device_and_file_is_unchanged() {
    for (addr, len) in [
        (MEM_SIZE, 512u32),
        (MEM_SIZE - 256, 512),
        (u64::MAX - 100, 512),
    ] {
        let mut disk = running_disk(DISK_BYTES, false);
        let before = file_bytes(&disk.file);
        let h = disk.header(req_type::OUT, 0);
        let s = disk.status_byte();
        disk.d
            .add_chain(0, &[(h, 16, false), (addr, len, false), (s, 1, true)]);
        disk.d.notify(0);
        assert!(disk.d.needs_reset(), "{addr:#x}");
        assert_eq!(disk.d.take_used(0), vec![]);
        assert_eq!(disk.status_at(s), 0xee);
        assert_eq!(file_bytes(&disk.file), before);
        // A reset brings the disk back.
        disk.d.init();
        let b = disk.d.alloc(512, 0);
        assert_eq!(disk.run(req_type::IN, 0, &[(b, 512, true)]).0, status::OK);
    }
}

#[test]
fn descriptor_chain_loop_breaks_the_device_without_hanging() {
    let mut disk = running_disk(DISK_BYTES, false);
    let before = file_bytes(&disk.file);
    let h = disk.header(req_type::OUT, 0);
    let a = disk.d.alloc(512, 0x42);
    disk.d.write_desc(
        0,
        0,
        Desc {
            addr: h,
            len: 16,
            flags: VRING_DESC_F_NEXT,
            next: 1,
        },
    );
    disk.d.write_desc(
        0,
        1,
        Desc {
            addr: a,
            len: 512,
            flags: VRING_DESC_F_NEXT,
            next: 0,
        },
    );
    disk.d.publish(0, 0);
    disk.d.notify(0);
    assert!(disk.d.needs_reset());
    assert_eq!(disk.d.take_used(0), vec![]);
    assert_eq!(file_bytes(&disk.file), before);
}

// ---- the worker's seccomp profile ----

/// Runs `f` in a forked child (seccomp cannot be undone); returns its exit code, or
/// `128 + signal` if a signal ended it.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork has no memory-safety preconditions; the child only runs `f` and then
    // `_exit`s without returning into the test harness (glibc keeps malloc usable in the
    // child of a multi-threaded parent).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    // SAFETY: waits for our own child, writing into a live int.
    let rc = unsafe { libc::waitpid(pid, &mut st, 0) };
    assert_eq!(rc, pid);
    if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        libc::WEXITSTATUS(st)
    }
}

#[test]
fn worker_serves_every_request_type_under_its_seccomp_profile() {
    let code = in_child(|| {
        if crate::sandbox::set_no_new_privs().is_err() {
            return 90;
        }
        let (mut disk, worker) = new_disk(DISK_BYTES, false);
        disk.d.init();
        let h = match worker.start(&disk.d.dev, disk.d.mem.clone(), Some(SeccompProfile::Block)) {
            Ok(h) => h,
            Err(_) => return 91,
        };
        let a = disk.d.alloc(1024, 0x42);
        let results = [
            disk.run(req_type::OUT, 0, &[(a, 1024, false)]).0,
            disk.run(req_type::IN, 0, &[(a, 1024, true)]).0,
            disk.run(req_type::FLUSH, 0, &[]).0,
            disk.run_range(req_type::DISCARD, 8, 8, 0),
            disk.run_range(req_type::WRITE_ZEROES, 16, 8, 0),
            disk.run_range(req_type::WRITE_ZEROES, 24, 8, FLAG_UNMAP),
            // Refused requests take the worker's error path too.
            disk.run(req_type::IN, 1 << 40, &[(a, 512, true)]).0,
        ];
        if results[..6].iter().any(|&s| s != status::OK) || results[6] != status::IOERR {
            return 92;
        }
        drop(disk);
        if h.join().is_err() {
            return 93;
        }
        0
    });
    assert_eq!(code, 0, "128 + {} is SIGSYS", libc::SIGSYS);
}

// ---- random chains ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random descriptor tables over random headers never panic, never change the file's
    /// size (nothing written past the disk), and a reset brings the disk back.
    #[test]
    fn random_descriptor_chains_never_panic_or_write_outside_the_disk(
        headers in proptest::collection::vec(
            (prop_oneof![Just(0u32), Just(1), Just(4), Just(8), Just(11), Just(13), any::<u32>()],
             prop_oneof![Just(0u64), Just(63), Just(64), Just(u64::MAX / 512), any::<u64>()],
             any::<u64>()),
            4),
        descs in proptest::collection::vec(
            (0usize..6, any::<u64>(), prop_oneof![Just(16u32), Just(512), Just(1), Just(0), 0u32..0x2_0000],
             0u16..4, 0u16..24),
            16),
        heads in proptest::collection::vec(0u16..20, 1..8),
    ) {
        let mut disk = running_disk(DISK_BYTES, false);
        // Four 16-byte header slots (random type, sector, and a discard segment), then
        // a data area; descriptors point at one of them, or anywhere.
        let hdr = disk.d.alloc(4 * 32, 0);
        for (i, (kind, sector, seg)) in headers.iter().enumerate() {
            let at = hdr + 32 * i as u64;
            disk.d.mem.write_obj(*kind, GuestAddress(at)).unwrap();
            disk.d.mem.write_obj(*sector, GuestAddress(at + 8)).unwrap();
            disk.d.mem.write_obj(*seg, GuestAddress(at + 16)).unwrap();
        }
        let data = disk.d.alloc(0x2_0000, 0x42);
        // Below `end` the test owns nothing: a request still running when the test
        // resets the device cannot scribble over the rings or the next request.
        let end = data + 0x2_0000;
        for (i, (target, raw, len, flags, next)) in descs.iter().enumerate() {
            let addr = match target {
                0..=1 => hdr + 32 * (raw % 4),
                2..=3 => data + raw % 0x2_0000,
                4 => hdr + raw % (end - hdr),
                _ => *raw | (1 << 63),
            };
            disk.d.write_desc(0, i as u16, Desc { addr, len: *len, flags: *flags, next: *next });
        }
        for head in heads {
            disk.d.publish(0, head);
        }
        disk.d.notify(0);
        // Reset and one good read: the worker runs jobs in order, so once that is
        // answered, everything before it has run (or was skipped).
        disk.d.init();
        let b = disk.d.alloc(512, 0);
        prop_assert_eq!(disk.run(req_type::IN, 0, &[(b, 512, true)]).0, status::OK);
        prop_assert_eq!(disk.file.metadata().unwrap().len(), DISK_BYTES);
        prop_assert!(!disk.worker.as_ref().unwrap().is_finished(), "worker died");
    }
}
