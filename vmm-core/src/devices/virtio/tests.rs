//! Transport tests: a driver that behaves like Linux, then hostile ones. The device behind
//! the transport is the real virtio-rng, so every request also checks its used ring.

use proptest::prelude::*;

use super::mmio::{reg, INT_CONFIG_CHANGE, INT_USED_BUFFER, MMIO_MAGIC};
use super::rng::{VirtioRng, MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
use super::test_utils::{Desc, TestDriver, MEM_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use super::{device_type, status, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

fn rng_driver() -> TestDriver<VirtioRng> {
    TestDriver::new(VirtioRng::new())
}

fn running_rng() -> TestDriver<VirtioRng> {
    let mut d = rng_driver();
    d.init();
    d
}

/// After a hostile act: NEEDS_RESET is set, the driver was told (config interrupt), and a
/// reset plus a clean probe brings the device back to serving requests.
fn assert_broken_then_recovers(mut d: TestDriver<VirtioRng>) {
    assert!(d.needs_reset(), "status {:#x}", d.status());
    assert_ne!(d.read32(reg::INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
    assert!(d.take_irq());
    // The device stays out of service until reset.
    let buf = d.alloc(16, 0);
    d.add_chain(0, &[(buf, 16, true)]);
    d.notify(0);
    assert!(d.needs_reset());
    d.init();
    assert!(!d.needs_reset());
    assert_eq!(
        d.read32(reg::INTERRUPT_STATUS),
        0,
        "reset clears interrupts"
    );
    let buf = d.alloc(32, 0);
    let head = d.add_chain(0, &[(buf, 32, true)]);
    d.notify(0);
    assert_eq!(d.take_used(0), vec![(u32::from(head), 32)]);
}

// ---- a well-behaved driver ----

#[test]
fn identity_registers_read_like_a_modern_virtio_mmio_device() {
    let d = rng_driver();
    assert_eq!(d.read32(reg::MAGIC), MMIO_MAGIC);
    assert_eq!(d.read32(reg::VERSION), 2);
    assert_eq!(d.read32(reg::DEVICE_ID), device_type::RNG);
    assert_eq!(
        d.device_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    );
    assert_eq!(d.read32(reg::SHM_LEN_LOW), u32::MAX, "no shared memory");
}

#[test]
fn linux_probe_sequence_reaches_driver_ok() {
    let d = running_rng();
    assert_eq!(d.status(), 0xf);
    d.write32(reg::QUEUE_SEL, 0);
    assert_eq!(d.read32(reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    assert_eq!(d.read32(reg::QUEUE_READY), 1);
}

#[test]
fn rng_fills_writable_buffers_and_interrupts() {
    let mut d = running_rng();
    let a = d.alloc(64, 0);
    let b = d.alloc(64, 0);
    let head_a = d.add_chain(0, &[(a, 64, true)]);
    let head_b = d.add_chain(0, &[(b, 64, true)]);
    d.notify(0);
    assert_eq!(
        d.take_used(0),
        vec![(u32::from(head_a), 64), (u32::from(head_b), 64)]
    );
    assert!(d.take_irq());
    assert_eq!(d.read32(reg::INTERRUPT_STATUS), INT_USED_BUFFER);
    d.write32(reg::INTERRUPT_ACK, INT_USED_BUFFER);
    assert_eq!(d.read32(reg::INTERRUPT_STATUS), 0);
    let (ra, rb) = (d.read_mem(a, 64), d.read_mem(b, 64));
    // 64 random bytes are all zero, or two draws equal, with probability 2^-512.
    assert_ne!(ra, vec![0; 64]);
    assert_ne!(ra, rb);
}

fn running_rng_with_event_idx() -> TestDriver<VirtioRng> {
    let mut d = rng_driver();
    d.init_with(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    d
}

/// Adds one 8-byte request to queue 0 of `d`, notifies, and checks it was served.
fn serve_one(d: &mut TestDriver<VirtioRng>) {
    let buf = d.alloc(8, 0);
    d.add_chain(0, &[(buf, 8, true)]);
    d.notify(0);
    assert_eq!(d.take_used(0).len(), 1);
}

#[test]
fn with_event_idx_a_drained_queue_asks_to_be_kicked_for_the_next_chain_only() {
    let mut d = running_rng_with_event_idx();
    for expected_next in 1..=3u16 {
        serve_one(&mut d);
        // Linux kicks only when its new available index passes avail_event.
        assert_eq!(d.avail_event(0), expected_next);
    }
}

#[test]
fn without_event_idx_the_used_ring_tail_is_left_alone() {
    let mut d = running_rng();
    serve_one(&mut d);
    assert_eq!(d.avail_event(0), 0);
}

#[test]
fn with_event_idx_the_interrupt_waits_until_the_used_index_passes_used_event() {
    let mut d = running_rng_with_event_idx();
    // Interrupt me once the used index passes 2, i.e. with the third used chain.
    d.set_used_event(0, 2);
    serve_one(&mut d);
    assert!(!d.take_irq(), "used index 1 has not passed used_event 2");
    for _ in 0..2 {
        let buf = d.alloc(8, 0);
        d.add_chain(0, &[(buf, 8, true)]);
    }
    d.notify(0);
    assert_eq!(d.take_used(0).len(), 2);
    assert!(d.take_irq(), "used index 3 passed used_event 2");
}

#[test]
fn without_event_idx_every_returned_batch_interrupts_whatever_used_event_says() {
    let mut d = running_rng();
    d.set_used_event(0, 100);
    serve_one(&mut d);
    assert!(d.take_irq());
}

/// Fills queue 0 of `d` with one ring's worth of small requests, then notifies.
fn fill_the_ring_and_notify(d: &mut TestDriver<VirtioRng>) {
    for _ in 0..QUEUE_SIZE {
        let buf = d.alloc(4, 0);
        d.add_chain(0, &[(buf, 4, true)]);
    }
    d.notify(0);
    assert_eq!(d.take_used(0).len(), usize::from(QUEUE_SIZE));
}

/// Gives queue 0's transport an eventfd to kick itself through, as the builder does with
/// the one KVM signals; returns the test's handle to it.
fn own_queue_event(d: &TestDriver<VirtioRng>) -> vmm_sys_util::eventfd::EventFd {
    let own = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    d.dev
        .lock()
        .unwrap()
        .set_queue_event(0, own.try_clone().unwrap());
    own
}

#[test]
fn with_event_idx_a_queue_left_after_a_full_ring_kicks_itself_through_its_eventfd() {
    let mut d = running_rng_with_event_idx();
    let own = own_queue_event(&d);
    fill_the_ring_and_notify(&mut d);
    // The device stopped at its limit, not at an empty ring: more may have come without
    // a kick, so the notifier thread is asked to come back.
    assert_eq!(own.read().unwrap(), 1);
    // That pass finds the ring empty and re-arms it.
    d.notify(0);
    assert_eq!(d.avail_event(0), QUEUE_SIZE);
    assert!(own.read().is_err(), "an empty ring asks for nothing more");
}

#[test]
fn with_event_idx_a_queue_left_after_a_full_ring_without_an_eventfd_is_finished_in_place() {
    let mut d = running_rng_with_event_idx();
    fill_the_ring_and_notify(&mut d);
    assert_eq!(
        d.avail_event(0),
        QUEUE_SIZE,
        "the second pass re-armed the ring"
    );
}

#[test]
fn without_event_idx_a_full_ring_needs_no_second_look() {
    let mut d = running_rng();
    let own = own_queue_event(&d);
    fill_the_ring_and_notify(&mut d);
    // Every later chain comes with its own kick.
    assert!(own.read().is_err());
}

proptest! {
    /// used_event is the guest's to write: any value only decides interrupts, and every
    /// request is still served.
    #[test]
    fn any_used_event_still_serves_every_request(used_event in any::<u16>(), n in 1usize..8) {
        let mut d = running_rng_with_event_idx();
        d.set_used_event(0, used_event);
        for _ in 0..n {
            let buf = d.alloc(8, 0);
            d.add_chain(0, &[(buf, 8, true)]);
        }
        d.notify(0);
        prop_assert_eq!(d.take_used(0).len(), n);
        prop_assert!(!d.needs_reset());
        prop_assert_eq!(d.avail_event(0), n as u16);
    }
}

#[test]
fn rng_spreads_over_a_multi_buffer_chain_and_skips_readable_ones() {
    let mut d = running_rng();
    let ro = d.alloc(16, 0xaa);
    let w1 = d.alloc(5, 0);
    let w2 = d.alloc(300, 0);
    let head = d.add_chain(0, &[(ro, 16, false), (w1, 5, true), (w2, 300, true)]);
    d.notify(0);
    assert_eq!(d.take_used(0), vec![(u32::from(head), 305)]);
    assert_eq!(
        d.read_mem(ro, 16),
        vec![0xaa; 16],
        "readable buffer untouched"
    );
    assert_ne!(d.read_mem(w2, 300), vec![0; 300]);
}

#[test]
fn rng_caps_one_request() {
    let mut d = running_rng();
    let big = d.alloc(2 * MAX_BYTES_PER_REQUEST, 0);
    let head = d.add_chain(0, &[(big, 2 * MAX_BYTES_PER_REQUEST as u32, true)]);
    d.notify(0);
    assert_eq!(
        d.take_used(0),
        vec![(u32::from(head), MAX_BYTES_PER_REQUEST as u32)]
    );
    let tail = d.read_mem(big + MAX_BYTES_PER_REQUEST as u64, 4096);
    assert_eq!(tail, vec![0; 4096], "nothing written past the cap");
}

#[test]
fn buffers_made_available_before_driver_ok_are_served_at_driver_ok() {
    let mut d = rng_driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.setup_queue_with(0, TestDriver::<VirtioRng>::standard_layout(0, 16));
    let buf = d.alloc(8, 0);
    let head = d.add_chain(0, &[(buf, 8, true)]);
    d.notify(0);
    assert_eq!(
        d.take_used(0),
        vec![],
        "no buffer consumed before DRIVER_OK"
    );
    assert!(!d.take_irq());
    d.driver_ok();
    assert_eq!(d.take_used(0), vec![(u32::from(head), 8)]);
    assert!(d.take_irq());
}

#[test]
fn reset_returns_every_register_to_its_initial_value() {
    let mut d = running_rng();
    let buf = d.alloc(8, 0);
    d.add_chain(0, &[(buf, 8, true)]);
    d.notify(0);
    d.write32(reg::STATUS, 0);
    assert_eq!(d.status(), 0);
    assert_eq!(d.read32(reg::INTERRUPT_STATUS), 0);
    d.write32(reg::QUEUE_SEL, 0);
    assert_eq!(d.read32(reg::QUEUE_READY), 0);
    // And a queue of a different size at a different place works afterwards.
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    let mut layout = TestDriver::<VirtioRng>::standard_layout(1, 8);
    layout.size = 8;
    d.setup_queue_with(0, layout);
    d.driver_ok();
    let buf = d.alloc(8, 0);
    let head = d.add_chain(0, &[(buf, 8, true)]);
    d.notify(0);
    assert_eq!(d.take_used(0), vec![(u32::from(head), 8)]);
}

// ---- negotiation and status abuse ----

#[test]
fn features_without_version_1_are_refused() {
    let d = rng_driver();
    assert!(!d.negotiate(0), "legacy drivers are not supported");
    assert_eq!(d.status() & status::FEATURES_OK, 0);
}

#[test]
fn features_the_device_did_not_offer_are_refused() {
    let d = rng_driver();
    assert!(!d.negotiate(VIRTIO_F_VERSION_1 | (1 << 28)));
}

#[test]
fn driver_ok_before_features_ok_is_ignored() {
    let d = rng_driver();
    d.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.write32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(d.status(), status::ACKNOWLEDGE | status::DRIVER);
}

#[test]
fn clearing_status_bits_without_reset_is_ignored() {
    let d = running_rng();
    d.write32(reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(d.status(), 0xf);
}

#[test]
fn driver_cannot_set_needs_reset_itself() {
    let d = running_rng();
    d.write32(reg::STATUS, 0xf | status::DEVICE_NEEDS_RESET);
    assert!(!d.needs_reset());
}

#[test]
fn features_written_after_features_ok_do_not_change_negotiation() {
    let d = rng_driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.write_driver_features(u64::MAX);
    d.write32(reg::STATUS, 0xf);
    assert_eq!(d.status(), 0xf, "still running on the negotiated features");
}

// ---- register abuse ----

#[test]
fn writes_to_read_only_registers_change_nothing() {
    let d = running_rng();
    for r in [
        reg::MAGIC,
        reg::VERSION,
        reg::DEVICE_ID,
        reg::VENDOR_ID,
        reg::DEVICE_FEATURES,
        reg::QUEUE_NUM_MAX,
        reg::INTERRUPT_STATUS,
        reg::CONFIG_GENERATION,
        0x0f8,
    ] {
        d.write32(r, 0xdead_beef);
    }
    assert_eq!(d.read32(reg::MAGIC), MMIO_MAGIC);
    assert_eq!(d.read32(reg::VERSION), 2);
    assert_eq!(d.read32(reg::DEVICE_ID), device_type::RNG);
    assert_eq!(d.read32(reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    assert_eq!(d.read32(reg::INTERRUPT_STATUS), 0);
    assert_eq!(d.status(), 0xf);
}

#[test]
fn odd_width_and_unaligned_register_accesses_are_ignored() {
    let d = running_rng();
    assert_eq!(d.read_bytes(reg::MAGIC, 1), vec![0]);
    assert_eq!(d.read_bytes(reg::MAGIC, 2), vec![0, 0]);
    assert_eq!(d.read_bytes(reg::MAGIC, 8), vec![0; 8]);
    assert_eq!(d.read_bytes(reg::MAGIC + 1, 4), vec![0; 4]);
    assert_eq!(d.read_bytes(reg::MAGIC, 0), Vec::<u8>::new());
    d.write_bytes(reg::STATUS, &[0]);
    d.write_bytes(reg::STATUS, &[0, 0]);
    d.write_bytes(reg::STATUS, &[0; 8]);
    d.write_bytes(reg::STATUS + 2, &[0; 4]);
    d.write_bytes(reg::STATUS, &[]);
    assert_eq!(d.status(), 0xf, "no partial write reset the device");
}

#[test]
fn config_space_accesses_out_of_range_read_zero() {
    let d = running_rng();
    assert_eq!(d.read_bytes(reg::CONFIG, 8), vec![0; 8]);
    assert_eq!(d.read_bytes(0xffc, 4), vec![0; 4]);
    d.write_bytes(0xfff, &[1]);
    d.write_bytes(reg::CONFIG, &[1; 64]);
    assert_eq!(d.status(), 0xf);
}

#[test]
fn notify_for_a_missing_queue_is_ignored() {
    let d = running_rng();
    for q in [1, 7, u32::MAX] {
        d.notify(q);
    }
    assert_eq!(d.status(), 0xf);
    assert!(!d.take_irq());
}

#[test]
fn registers_of_a_missing_queue_are_inert() {
    let d = rng_driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.write32(reg::QUEUE_SEL, 5);
    assert_eq!(d.read32(reg::QUEUE_NUM_MAX), 0);
    d.write32(reg::QUEUE_NUM, 8);
    d.write32(reg::QUEUE_READY, 1);
    assert_eq!(d.read32(reg::QUEUE_READY), 0);
    assert!(!d.needs_reset());
}

#[test]
fn queue_layout_writes_while_running_are_ignored() {
    let mut d = running_rng();
    d.write32(reg::QUEUE_SEL, 0);
    d.write32(reg::QUEUE_DESC_LOW, 0x8_0000);
    d.write32(reg::QUEUE_NUM, 2);
    let buf = d.alloc(8, 0);
    let head = d.add_chain(0, &[(buf, 8, true)]);
    d.notify(0);
    assert_eq!(d.take_used(0), vec![(u32::from(head), 8)]);
}

#[test]
fn queue_size_not_a_power_of_two_breaks_the_device() {
    let mut d = rng_driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    let mut l = TestDriver::<VirtioRng>::standard_layout(0, 16);
    l.size = 12;
    d.setup_queue_with(0, l);
    assert_eq!(d.read32(reg::QUEUE_READY), 0);
    assert!(d.needs_reset());
}

#[test]
fn queue_size_above_the_maximum_breaks_the_device() {
    for size in [QUEUE_SIZE * 2, 0] {
        let mut d = rng_driver();
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        let mut l = TestDriver::<VirtioRng>::standard_layout(0, 16);
        l.size = size;
        d.setup_queue_with(0, l);
        assert!(d.needs_reset(), "size {size}");
        d.driver_ok();
        assert_eq!(d.status() & status::DRIVER_OK, 0, "cannot start broken");
    }
    // 2^32 - 1 does not even fit the 16-bit size.
    let d = rng_driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.write32(reg::QUEUE_SEL, 0);
    d.write32(reg::QUEUE_NUM, u32::MAX);
    assert!(d.needs_reset());
}

#[test]
fn rings_outside_guest_memory_break_the_device() {
    let d = rng_driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    let mut l = TestDriver::<VirtioRng>::standard_layout(0, 16);
    l.used = MEM_SIZE - 8; // the used ring runs off the end of RAM
                           // Not through setup_queue_with: its bookkeeping would write the ring.
    d.write32(reg::QUEUE_SEL, 0);
    d.write32(reg::QUEUE_NUM, 16);
    d.write32(reg::QUEUE_DESC_LOW, l.desc as u32);
    d.write32(reg::QUEUE_DRIVER_LOW, l.avail as u32);
    d.write32(reg::QUEUE_DEVICE_LOW, l.used as u32);
    d.write32(reg::QUEUE_DEVICE_HIGH, 0xffff_0000);
    d.write32(reg::QUEUE_READY, 1);
    assert_eq!(d.read32(reg::QUEUE_READY), 0);
    assert!(d.needs_reset());
}

#[test]
fn misaligned_descriptor_table_breaks_the_device() {
    let d = rng_driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.write32(reg::QUEUE_SEL, 0);
    d.write32(reg::QUEUE_DESC_LOW, 0x1_0008);
    assert!(d.needs_reset());
}

// ---- hostile descriptor chains ----

#[test]
fn descriptor_loop_breaks_the_device_without_hanging() {
    let mut d = running_rng();
    let buf = d.alloc(16, 0);
    let flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    d.write_desc(
        0,
        0,
        Desc {
            addr: buf,
            len: 16,
            flags,
            next: 1,
        },
    );
    d.write_desc(
        0,
        1,
        Desc {
            addr: buf,
            len: 16,
            flags,
            next: 0,
        },
    );
    d.publish(0, 0);
    d.notify(0);
    assert_eq!(d.take_used(0), vec![], "no used entry for a looping chain");
    assert_broken_then_recovers(d);
}

#[test]
fn self_referencing_descriptor_breaks_the_device() {
    let mut d = running_rng();
    let buf = d.alloc(16, 0);
    let flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    d.write_desc(
        0,
        3,
        Desc {
            addr: buf,
            len: 16,
            flags,
            next: 3,
        },
    );
    d.publish(0, 3);
    d.notify(0);
    assert_broken_then_recovers(d);
}

#[test]
fn chain_longer_than_the_queue_breaks_the_device() {
    let mut d = running_rng();
    let buf = d.alloc(16, 0);
    let size = QUEUE_SIZE;
    // Every descriptor links to the next one, the last back to the first: a chain of
    // `size` descriptors that never ends.
    for i in 0..size {
        let flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
        d.write_desc(
            0,
            i,
            Desc {
                addr: buf,
                len: 1,
                flags,
                next: (i + 1) % size,
            },
        );
    }
    d.publish(0, 0);
    d.notify(0);
    assert_broken_then_recovers(d);
}

#[test]
fn next_index_past_the_table_breaks_the_device() {
    let mut d = running_rng();
    let buf = d.alloc(16, 0);
    let flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    d.write_desc(
        0,
        0,
        Desc {
            addr: buf,
            len: 16,
            flags,
            next: QUEUE_SIZE + 5,
        },
    );
    d.publish(0, 0);
    d.notify(0);
    assert_broken_then_recovers(d);
}

#[test]
fn head_index_past_the_table_breaks_the_device() {
    let mut d = running_rng();
    d.publish(0, 0xffff);
    d.notify(0);
    assert_broken_then_recovers(d);
}

#[test]
fn buffer_past_the_end_of_memory_breaks_the_device() {
    for (addr, len) in [
        (MEM_SIZE, 16u32),
        (MEM_SIZE - 8, 16),
        (u64::MAX - 4, 16),
        (0x8000_0000, 4096),
        (0, u32::MAX),
    ] {
        let mut d = running_rng();
        d.add_chain(0, &[(addr, len, true)]);
        d.notify(0);
        assert_eq!(d.take_used(0), vec![], "{addr:#x}+{len:#x}");
        assert_broken_then_recovers(d);
    }
}

#[test]
fn avail_index_far_ahead_of_the_device_breaks_it() {
    let d = running_rng();
    d.set_avail_idx(0, QUEUE_SIZE + 1);
    d.notify(0);
    assert_broken_then_recovers(d);
}

#[test]
fn chain_over_four_gigabytes_breaks_the_device() {
    let mut d = running_rng();
    let buf = d.alloc(16, 0);
    let flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    d.write_desc(
        0,
        0,
        Desc {
            addr: buf,
            len: u32::MAX,
            flags,
            next: 1,
        },
    );
    d.write_desc(
        0,
        1,
        Desc {
            addr: buf,
            len: 16,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        },
    );
    d.publish(0, 0);
    d.notify(0);
    assert_broken_then_recovers(d);
}

#[test]
fn zero_length_chain_is_answered_with_zero_bytes() {
    let mut d = running_rng();
    let head = d.add_chain(0, &[(0, 0, true)]);
    d.notify(0);
    assert_eq!(d.take_used(0), vec![(u32::from(head), 0)]);
    assert!(!d.needs_reset());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random register traffic on top of a random descriptor table never panics, and a
    /// reset always brings the device back.
    #[test]
    fn random_register_and_ring_traffic_never_panics(
        ops in proptest::collection::vec((0u64..0x140, 0usize..9, any::<u32>()), 1..64),
        descs in proptest::collection::vec(any::<(u64, u32, u16, u16)>(), 16),
        avail in proptest::collection::vec(any::<u16>(), 1..8),
    ) {
        let mut d = running_rng();
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            // Keep a share of addresses inside RAM so chains get past the first check.
            let addr = if i % 2 == 0 { addr % MEM_SIZE } else { *addr };
            d.write_desc(0, i as u16, Desc { addr, len: len % 0x2_0000, flags: *flags, next: next % 32 });
        }
        for head in avail {
            d.publish(0, head % 20);
        }
        d.notify(0);
        for (offset, width, value) in ops {
            let bytes = value.to_le_bytes();
            let data: Vec<u8> = (0..width).map(|i| bytes[i % 4]).collect();
            d.write_bytes(offset, &data);
            d.read_bytes(offset, width);
        }
        d.notify(0);
        d.init();
        let buf = d.alloc(8, 0);
        let head = d.add_chain(0, &[(buf, 8, true)]);
        d.notify(0);
        prop_assert_eq!(d.take_used(0), vec![(u32::from(head), 8)]);
    }
}

// ---- indirect descriptors (never offered) ----

const VRING_DESC_F_INDIRECT: u16 = 4;

/// Writes one descriptor at an arbitrary guest address (an indirect table's entry).
fn write_desc_at(d: &TestDriver<VirtioRng>, at: u64, desc: Desc) {
    use vm_memory::{Bytes, GuestAddress};
    d.mem.write_obj(desc.addr, GuestAddress(at)).unwrap();
    d.mem.write_obj(desc.len, GuestAddress(at + 8)).unwrap();
    d.mem.write_obj(desc.flags, GuestAddress(at + 12)).unwrap();
    d.mem.write_obj(desc.next, GuestAddress(at + 14)).unwrap();
}

#[test]
fn an_indirect_table_without_the_feature_stops_that_device_and_no_other() {
    assert_eq!(
        rng_driver().device_features() & (1 << 28),
        0,
        "VIRTIO_RING_F_INDIRECT_DESC is not offered"
    );
    // The indirect descriptor as the head, and behind a direct one.
    for behind_a_direct_one in [false, true] {
        let mut d = running_rng();
        let mut other = running_rng();
        let target = d.alloc(16, 0xaa);
        let table = d.alloc(16, 0);
        write_desc_at(
            &d,
            table,
            Desc {
                addr: target,
                len: 16,
                flags: VRING_DESC_F_WRITE,
                next: 0,
            },
        );
        let indirect = Desc {
            addr: table,
            len: 16,
            flags: VRING_DESC_F_INDIRECT,
            next: 0,
        };
        if behind_a_direct_one {
            let first = d.alloc(8, 0xbb);
            let direct = Desc {
                addr: first,
                len: 8,
                flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                next: 1,
            };
            d.write_desc(0, 0, direct);
            d.write_desc(0, 1, indirect);
        } else {
            d.write_desc(0, 0, indirect);
        }
        d.publish(0, 0);
        d.notify(0);
        assert_eq!(d.take_used(0), vec![], "no used entry for the chain");
        assert_eq!(
            d.read_mem(target, 16),
            vec![0xaa; 16],
            "the device never wrote through the indirect table"
        );

        // Another device on the same VMM serves requests as before.
        let buf = other.alloc(32, 0);
        let head = other.add_chain(0, &[(buf, 32, true)]);
        other.notify(0);
        assert_eq!(other.take_used(0), vec![(u32::from(head), 32)]);
        assert!(!other.needs_reset());

        assert_broken_then_recovers(d);
    }
}
