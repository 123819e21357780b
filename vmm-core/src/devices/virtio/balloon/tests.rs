//! The balloon against a driver that behaves like Linux's virtio_balloon, then hostile
//! ones. "Discarded" is checked by content: guest RAM here is a private anonymous
//! mapping, so a page the device dropped reads back as zeros.

use super::*;
use crate::devices::virtio::mmio::{reg, INT_CONFIG_CHANGE};
use crate::devices::virtio::test_utils::{Desc, TestDriver, MEM_SIZE, VRING_DESC_F_NEXT};
use crate::devices::virtio::{status, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use vm_memory::{Bytes, GuestAddress};

/// Pages the tests fill and discard: above the test driver's rings and buffers.
const DATA: u64 = 0x8_0000;
const PAGES: u64 = 16;

/// Linux's probe with free page reporting negotiated: three queues, DRIVER_OK.
fn running_balloon() -> TestDriver<VirtioBalloon> {
    let mut d = TestDriver::new(VirtioBalloon::new());
    assert!(d.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING));
    for q in 0..3 {
        d.setup_queue_with(q, TestDriver::<VirtioBalloon>::standard_layout(q, 64));
    }
    d.driver_ok();
    assert_eq!(d.status() & status::DRIVER_OK, status::DRIVER_OK);
    d
}

fn fill_data(d: &TestDriver<VirtioBalloon>) {
    d.mem
        .write_slice(
            &vec![0xaa; (PAGES * PAGE_SIZE) as usize],
            GuestAddress(DATA),
        )
        .unwrap();
}

/// Whether page `i` of the data area still holds what `fill_data` wrote.
fn page_kept(d: &TestDriver<VirtioBalloon>, i: u64) -> bool {
    let bytes = d.read_mem(DATA + i * PAGE_SIZE, PAGE_SIZE as usize);
    if bytes.iter().all(|&b| b == 0xaa) {
        return true;
    }
    assert!(bytes.iter().all(|&b| b == 0), "page {i} half discarded");
    false
}

fn counters(d: &TestDriver<VirtioBalloon>) -> BalloonCounters {
    d.dev.lock().unwrap().device().counters()
}

fn pfn_array(d: &mut TestDriver<VirtioBalloon>, pfns: &[u32]) -> (u64, u32) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    let a = d.alloc(bytes.len(), 0);
    d.mem.write_slice(&bytes, GuestAddress(a)).unwrap();
    (a, bytes.len() as u32)
}

// ---- a well-behaved driver ----

#[test]
fn offers_free_page_reporting_and_deflate_on_oom_and_identifies_as_a_balloon() {
    let d = TestDriver::new(VirtioBalloon::new());
    assert_eq!(d.read32(reg::DEVICE_ID), device_type::BALLOON);
    assert_eq!(
        d.device_features(),
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BALLOON_F_REPORTING
            | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    );
    assert_eq!(VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 1 << 2, "feature bit 2");
}

#[test]
fn a_guest_under_pressure_deflates_below_the_target_and_keeps_its_pages() {
    // Linux with DEFLATE_ON_OOM negotiated: inflate to the target, then its OOM
    // notifier / shrinker takes pages back on its own and lowers `actual`.
    let mut d = TestDriver::new(VirtioBalloon::new());
    let features =
        VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING | VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
    assert!(d.negotiate(features));
    for q in 0..3 {
        d.setup_queue_with(q, TestDriver::<VirtioBalloon>::standard_layout(q, 64));
    }
    d.driver_ok();
    assert_eq!(d.status() & status::DRIVER_OK, status::DRIVER_OK);
    let handle = BalloonHandle::new(d.dev.clone());
    handle.set_target_pages(PAGES as u32);
    assert!(d.take_irq());
    fill_data(&d);
    let first = (DATA / PAGE_SIZE) as u32;
    let all: Vec<u32> = (first..first + PAGES as u32).collect();
    let (a, len) = pfn_array(&mut d, &all);
    d.add_chain(INFLATE_QUEUE, &[(a, len, false)]);
    d.notify(INFLATE_QUEUE as u32);
    assert_eq!(d.take_used(INFLATE_QUEUE).len(), 1);
    d.write32(reg::CONFIG + 4, PAGES as u32);
    assert_eq!(handle.actual_pages(), PAGES as u32);
    // Memory pressure: half the balloon comes back without the host asking.
    let (a, len) = pfn_array(&mut d, &all[..PAGES as usize / 2]);
    let head = d.add_chain(DEFLATE_QUEUE, &[(a, len, false)]);
    d.notify(DEFLATE_QUEUE as u32);
    assert_eq!(d.take_used(DEFLATE_QUEUE), vec![(u32::from(head), 0)]);
    d.write32(reg::CONFIG + 4, PAGES as u32 / 2);
    assert!(!d.needs_reset(), "deflating below the target is allowed");
    assert_eq!(handle.actual_pages(), PAGES as u32 / 2);
    // The target stays the host's and is not pushed at the guest again...
    assert_eq!(handle.target_pages(), PAGES as u32);
    assert_eq!(d.read32(reg::CONFIG), PAGES as u32);
    d.take_irq();
    handle.set_target_pages(PAGES as u32);
    assert!(!d.take_irq(), "the same target again raises no interrupt");
    // ...and the deflated pages are the guest's to use again.
    d.mem.write_obj(0x55u8, GuestAddress(DATA)).unwrap();
    assert_eq!(d.read_mem(DATA, 1), [0x55]);
}

#[test]
fn reported_free_range_is_discarded_and_returned() {
    let mut d = running_balloon();
    fill_data(&d);
    let head = d.add_chain(
        REPORTING_QUEUE,
        &[(DATA + PAGE_SIZE, 4 * PAGE_SIZE as u32, true)],
    );
    d.notify(REPORTING_QUEUE as u32);
    assert_eq!(d.take_used(REPORTING_QUEUE), vec![(u32::from(head), 0)]);
    assert!(d.take_irq());
    let kept: Vec<bool> = (0..6).map(|i| page_kept(&d, i)).collect();
    assert_eq!(kept, [true, false, false, false, false, true]);
    assert_eq!(counters(&d).reported_bytes, 4 * PAGE_SIZE);
}

#[test]
fn reported_range_keeps_partial_pages_at_its_ends() {
    let mut d = running_balloon();
    fill_data(&d);
    // From the middle of page 1 to the middle of page 4: only pages 2 and 3 are whole.
    let start = DATA + PAGE_SIZE + 100;
    d.add_chain(REPORTING_QUEUE, &[(start, 3 * PAGE_SIZE as u32, true)]);
    d.notify(REPORTING_QUEUE as u32);
    assert_eq!(d.take_used(REPORTING_QUEUE).len(), 1);
    let kept: Vec<bool> = (0..6).map(|i| page_kept(&d, i)).collect();
    assert_eq!(kept, [true, true, false, false, true, true]);
}

#[test]
fn inflated_pfns_are_discarded_and_deflate_returns_buffers() {
    let mut d = running_balloon();
    fill_data(&d);
    let first = (DATA / PAGE_SIZE) as u32;
    // Two runs and a single page, out of order.
    let (a, len) = pfn_array(&mut d, &[first + 7, first, first + 1, first + 2, first + 9]);
    let head = d.add_chain(INFLATE_QUEUE, &[(a, len, false)]);
    d.notify(INFLATE_QUEUE as u32);
    assert_eq!(d.take_used(INFLATE_QUEUE), vec![(u32::from(head), 0)]);
    let kept: Vec<u64> = (0..PAGES).filter(|&i| !page_kept(&d, i)).collect();
    assert_eq!(kept, [0, 1, 2, 7, 9]);
    assert_eq!(counters(&d).inflated_bytes, 5 * PAGE_SIZE);
    let head = d.add_chain(DEFLATE_QUEUE, &[(a, len, false)]);
    d.notify(DEFLATE_QUEUE as u32);
    assert_eq!(d.take_used(DEFLATE_QUEUE), vec![(u32::from(head), 0)]);
    // A deflated page is usable again.
    d.mem.write_obj(0x55u8, GuestAddress(DATA)).unwrap();
    assert_eq!(d.read_mem(DATA, 1), [0x55]);
}

#[test]
fn target_reaches_the_driver_with_a_config_interrupt_and_actual_is_read_back() {
    let d = running_balloon();
    let handle = BalloonHandle::new(d.dev.clone());
    let generation = d.read32(reg::CONFIG_GENERATION);
    handle.set_target_pages(1234);
    assert!(d.take_irq());
    assert_ne!(d.read32(reg::INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
    assert_ne!(d.read32(reg::CONFIG_GENERATION), generation);
    assert_eq!(d.read32(reg::CONFIG), 1234);
    d.write32(reg::CONFIG + 4, 1000);
    assert_eq!(d.read32(reg::CONFIG + 4), 1000);
    assert_eq!(d.dev.lock().unwrap().device().actual_pages(), 1000);
    // num_pages is the host's: the driver cannot move the target.
    d.write32(reg::CONFIG, 7);
    assert_eq!(d.read32(reg::CONFIG), 1234);
}

#[test]
fn state_survives_save_and_restore() {
    let d = running_balloon();
    BalloonHandle::new(d.dev.clone()).set_target_pages(99);
    d.write32(reg::CONFIG + 4, 42);
    let saved = d.dev.lock().unwrap().device().save_state().unwrap();
    let mut fresh = VirtioBalloon::new();
    fresh.restore_state(&saved).unwrap();
    assert_eq!((fresh.num_pages, fresh.actual), (99, 42));
    assert!(fresh.restore_state(b"{not json").is_err());
}

// ---- hostile drivers ----

#[test]
fn inflated_pfns_outside_guest_ram_are_skipped_and_the_rest_discarded() {
    let mut d = running_balloon();
    fill_data(&d);
    let first = (DATA / PAGE_SIZE) as u32;
    let past_ram = (MEM_SIZE / PAGE_SIZE) as u32;
    let hole = (crate::layout::MMIO_HOLE_START / PAGE_SIZE) as u32;
    let fb = (crate::layout::FRAMEBUFFER_ADDR / PAGE_SIZE) as u32;
    let (a, len) = pfn_array(
        &mut d,
        &[past_ram, hole, first + 3, fb, u32::MAX, past_ram - 1 + 1],
    );
    let head = d.add_chain(INFLATE_QUEUE, &[(a, len, false)]);
    d.notify(INFLATE_QUEUE as u32);
    assert_eq!(d.take_used(INFLATE_QUEUE), vec![(u32::from(head), 0)]);
    assert!(!d.needs_reset(), "bad PFNs are data, not a broken ring");
    let gone: Vec<u64> = (0..PAGES).filter(|&i| !page_kept(&d, i)).collect();
    assert_eq!(gone, [3]);
    let c = counters(&d);
    assert_eq!(c.inflated_bytes, PAGE_SIZE);
    assert!(c.refused >= 4, "{c:?}");
}

#[test]
fn a_pfn_run_crossing_the_end_of_ram_discards_nothing() {
    let mut d = running_balloon();
    let last = (MEM_SIZE / PAGE_SIZE) as u32 - 1;
    d.mem
        .write_obj(0xaau8, GuestAddress(u64::from(last) * PAGE_SIZE))
        .unwrap();
    let (a, len) = pfn_array(&mut d, &[last, last + 1]);
    d.add_chain(INFLATE_QUEUE, &[(a, len, false)]);
    d.notify(INFLATE_QUEUE as u32);
    assert_eq!(d.take_used(INFLATE_QUEUE).len(), 1);
    assert_eq!(d.read_mem(u64::from(last) * PAGE_SIZE, 1), [0xaa]);
    assert_eq!(counters(&d).inflated_bytes, 0);
}

#[test]
fn a_reported_range_outside_guest_ram_breaks_the_device_and_discards_nothing() {
    for (addr, len) in [
        (MEM_SIZE - PAGE_SIZE, 2 * PAGE_SIZE as u32),
        (crate::layout::MMIO_HOLE_START, PAGE_SIZE as u32),
        (crate::layout::FRAMEBUFFER_ADDR, u32::MAX),
        (u64::MAX - PAGE_SIZE, PAGE_SIZE as u32),
    ] {
        let mut d = running_balloon();
        fill_data(&d);
        d.add_chain(
            REPORTING_QUEUE,
            &[(DATA, PAGE_SIZE as u32, true), (addr, len, true)],
        );
        d.notify(REPORTING_QUEUE as u32);
        assert!(d.needs_reset(), "{addr:#x}+{len:#x}");
        assert!(d.take_used(REPORTING_QUEUE).is_empty());
        assert!(page_kept(&d, 0), "nothing of a refused chain is discarded");
        assert_eq!(counters(&d).reported_bytes, 0);
    }
}

#[test]
fn a_huge_pfn_array_is_read_only_up_to_the_cap() {
    let mut d = running_balloon();
    fill_data(&d);
    let first = (DATA / PAGE_SIZE) as u32;
    // A chain of 0x1000-byte readable buffers all naming the same PFN array, far more
    // PFNs in total than the cap; the device reads the capped prefix and returns it.
    let (a, _) = pfn_array(&mut d, &vec![first; 1024]);
    let bufs: Vec<(u64, u32, bool)> = (0..32).map(|_| (a, 4096, false)).collect();
    let head = d.add_chain(INFLATE_QUEUE, &bufs);
    d.notify(INFLATE_QUEUE as u32);
    assert_eq!(d.take_used(INFLATE_QUEUE), vec![(u32::from(head), 0)]);
    assert!(!page_kept(&d, 0));
    // Each run of the same PFN is a run of its own page: at most the cap's worth counted.
    assert!(counters(&d).inflated_bytes <= MAX_PFNS_PER_CHAIN as u64 * PAGE_SIZE);
}

#[test]
fn a_looping_chain_breaks_the_device() {
    let mut d = running_balloon();
    let a = d.alloc(16, 0);
    d.write_desc(
        INFLATE_QUEUE,
        0,
        Desc {
            addr: a,
            len: 16,
            flags: VRING_DESC_F_NEXT,
            next: 0,
        },
    );
    d.publish(INFLATE_QUEUE, 0);
    d.notify(INFLATE_QUEUE as u32);
    assert!(d.needs_reset());
}

#[test]
fn an_available_index_far_ahead_breaks_the_device() {
    let d = running_balloon();
    d.set_avail_idx(REPORTING_QUEUE, 1000);
    d.notify(REPORTING_QUEUE as u32);
    assert!(d.needs_reset());
}

#[test]
fn notifications_before_driver_ok_and_to_absent_queues_do_nothing() {
    let mut d = TestDriver::new(VirtioBalloon::new());
    d.notify(INFLATE_QUEUE as u32);
    d.notify(REPORTING_QUEUE as u32);
    d.notify(7);
    d.notify(u32::MAX);
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    // A driver without reporting sets up two queues; the third is never ready.
    for q in 0..2 {
        d.setup_queue_with(q, TestDriver::<VirtioBalloon>::standard_layout(q, 64));
    }
    fill_data(&d);
    let first = (DATA / PAGE_SIZE) as u32;
    let (a, len) = pfn_array(&mut d, &[first]);
    d.add_chain(INFLATE_QUEUE, &[(a, len, false)]);
    d.notify(INFLATE_QUEUE as u32);
    assert!(page_kept(&d, 0), "no work before DRIVER_OK");
    d.notify(REPORTING_QUEUE as u32);
    d.driver_ok();
    // DRIVER_OK runs what was already queued.
    assert!(!page_kept(&d, 0));
    assert!(!d.needs_reset());
}

#[test]
fn config_reads_and_writes_out_of_range_are_harmless() {
    let d = running_balloon();
    assert_eq!(d.read_bytes(reg::CONFIG + 16, 8), vec![0; 8]);
    assert_eq!(d.read_bytes(reg::CONFIG + 0xf00, 4), vec![0; 4]);
    d.write_bytes(reg::CONFIG + 5, &[1, 2, 3]);
    d.write_bytes(reg::CONFIG + 0xfff, &[1]);
    assert_eq!(d.read32(reg::CONFIG + 4), 0);
    let mut dev = VirtioBalloon::new();
    let mut buf = [0xffu8; 8];
    dev.read_config(u64::MAX - 2, &mut buf);
    assert_eq!(buf, [0; 8]);
    dev.write_config(u64::MAX, &[1, 2, 3, 4]);
    assert_eq!(dev.actual, 0);
}

proptest::proptest! {
    /// Whatever PFNs a guest inflates, only pages of guest RAM are touched and nothing
    /// panics.
    #[test]
    fn arbitrary_pfns_never_touch_anything_but_guest_ram(pfns in proptest::collection::vec(proptest::num::u32::ANY, 0..64)) {
        let mut d = running_balloon();
        let (a, len) = pfn_array(&mut d, &pfns);
        if len > 0 {
            d.add_chain(INFLATE_QUEUE, &[(a, len, false)]);
            d.notify(INFLATE_QUEUE as u32);
            proptest::prop_assert!(!d.needs_reset());
        }
        let in_ram = pfns.iter().filter(|&&p| u64::from(p) < MEM_SIZE / PAGE_SIZE).count() as u64;
        proptest::prop_assert!(counters(&d).inflated_bytes <= in_ram * PAGE_SIZE);
    }
}
