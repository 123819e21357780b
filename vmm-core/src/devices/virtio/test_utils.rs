//! A test-side virtio-mmio driver: it lays out split virtqueues in a real
//! `GuestMemoryMmap` and drives the transport's registers the way Linux's
//! `virtio_mmio` + `virtio_ring` do, with knobs for behaving badly.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{reg, VirtioMmioDevice};
use super::{status, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

pub const MEM_SIZE: u64 = 0x10_0000;
/// Queue `q`'s rings live at RING_BASE + q * RING_STRIDE.
const RING_BASE: u64 = 0x1_0000;
const RING_STRIDE: u64 = 0x4000;
/// Buffers handed out by [`TestDriver::alloc`] start here.
const BUF_BASE: u64 = 0x4_0000;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

pub struct TestDriver<D: VirtioDevice> {
    pub dev: Arc<Mutex<VirtioMmioDevice<D>>>,
    pub mem: GuestMemoryMmap,
    pub irq: Arc<EventFd>,
    pub layouts: Vec<Layout>,
    avail_idx: Vec<u16>,
    next_desc: Vec<u16>,
    used_seen: Vec<u16>,
    next_buf: u64,
}

/// One descriptor as the test wants it written.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl<D: VirtioDevice> TestDriver<D> {
    pub fn new(device: D) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let dev = VirtioMmioDevice::new(device, mem.clone(), irq.clone()).unwrap();
        let queues = dev.device().queue_max_sizes().len();
        Self {
            dev: Arc::new(Mutex::new(dev)),
            mem,
            irq,
            layouts: Vec::new(),
            avail_idx: vec![0; queues],
            next_desc: vec![0; queues],
            used_seen: vec![0; queues],
            next_buf: BUF_BASE,
        }
    }

    pub fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.lock().unwrap().read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write32(&self, offset: u64, value: u32) {
        self.dev.lock().unwrap().write(offset, &value.to_le_bytes());
    }

    pub fn read_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.dev.lock().unwrap().read(offset, &mut b);
        b
    }

    pub fn write_bytes(&self, offset: u64, data: &[u8]) {
        self.dev.lock().unwrap().write(offset, data);
    }

    pub fn status(&self) -> u32 {
        self.read32(reg::STATUS)
    }

    pub fn needs_reset(&self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }

    /// Consumes the interrupt eventfd: true if the device raised it since the last call.
    pub fn take_irq(&self) -> bool {
        self.irq.read().is_ok()
    }

    pub fn device_features(&self) -> u64 {
        self.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read32(reg::DEVICE_FEATURES);
        self.write32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read32(reg::DEVICE_FEATURES);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    pub fn write_driver_features(&self, features: u64) {
        self.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.write32(reg::DRIVER_FEATURES, features as u32);
        self.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features (VERSION_1), FEATURES_OK — the probe sequence
    /// of Linux's virtio core up to queue setup. Returns whether FEATURES_OK stuck.
    pub fn negotiate(&self, features: u64) -> bool {
        self.write32(reg::STATUS, 0);
        self.write32(reg::STATUS, status::ACKNOWLEDGE);
        self.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write_driver_features(features);
        self.write32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.status() & status::FEATURES_OK != 0
    }

    pub fn standard_layout(q: usize, size: u16) -> Layout {
        let base = RING_BASE + q as u64 * RING_STRIDE;
        Layout {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
        }
    }

    /// Programs queue `q` as vm_setup_vq does; does not check the outcome.
    pub fn setup_queue_with(&mut self, q: usize, layout: Layout) {
        // Fresh, zeroed rings, as the Linux driver allocates them.
        for (addr, len) in [
            (layout.desc, 0x1000),
            (layout.avail, 0x1000),
            (layout.used, 0x2000),
        ] {
            if addr + len <= MEM_SIZE {
                self.mem
                    .write_slice(&vec![0u8; len as usize], GuestAddress(addr))
                    .unwrap();
            }
        }
        self.write32(reg::QUEUE_SEL, q as u32);
        assert_eq!(self.read32(reg::QUEUE_READY), 0, "queue already set up");
        self.write32(reg::QUEUE_NUM, u32::from(layout.size));
        self.write32(reg::QUEUE_DESC_LOW, layout.desc as u32);
        self.write32(reg::QUEUE_DESC_HIGH, (layout.desc >> 32) as u32);
        self.write32(reg::QUEUE_DRIVER_LOW, layout.avail as u32);
        self.write32(reg::QUEUE_DRIVER_HIGH, (layout.avail >> 32) as u32);
        self.write32(reg::QUEUE_DEVICE_LOW, layout.used as u32);
        self.write32(reg::QUEUE_DEVICE_HIGH, (layout.used >> 32) as u32);
        self.write32(reg::QUEUE_READY, 1);
        if self.layouts.len() <= q {
            self.layouts.resize(q + 1, layout);
        }
        self.layouts[q] = layout;
        self.avail_idx[q] = 0;
        self.next_desc[q] = 0;
        self.used_seen[q] = 0;
    }

    /// The whole Linux probe: negotiate VERSION_1, set up every queue at its maximum
    /// size, DRIVER_OK. Panics if the device refuses.
    pub fn init(&mut self) {
        self.init_with(VIRTIO_F_VERSION_1);
    }

    /// [`TestDriver::init`] accepting `features` (which must include VERSION_1).
    pub fn init_with(&mut self, features: u64) {
        assert!(self.negotiate(features), "FEATURES_OK refused");
        let queues = self.avail_idx.len();
        for q in 0..queues {
            self.write32(reg::QUEUE_SEL, q as u32);
            let max = self.read32(reg::QUEUE_NUM_MAX) as u16;
            assert!(max > 0);
            self.setup_queue_with(q, Self::standard_layout(q, max));
            assert_eq!(self.read32(reg::QUEUE_READY), 1, "queue {q} not ready");
        }
        self.driver_ok();
        assert_eq!(
            self.status(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
    }

    pub fn driver_ok(&self) {
        self.write32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    /// A fresh buffer of `len` bytes in guest RAM, filled with `fill`.
    pub fn alloc(&mut self, len: usize, fill: u8) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (addr + len as u64).next_multiple_of(16);
        assert!(self.next_buf <= MEM_SIZE, "test ran out of buffer space");
        self.mem
            .write_slice(&vec![fill; len], GuestAddress(addr))
            .unwrap();
        addr
    }

    pub fn write_desc(&self, q: usize, index: u16, d: Desc) {
        let at = self.layouts[q].desc + u64::from(index) * 16;
        self.mem.write_obj(d.addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(d.len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(d.flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(d.next, GuestAddress(at + 14)).unwrap();
    }

    /// Publishes `head` in the available ring (without notifying).
    pub fn publish(&mut self, q: usize, head: u16) {
        let l = self.layouts[q];
        let slot = self.avail_idx[q] % l.size;
        self.mem
            .write_obj(head, GuestAddress(l.avail + 4 + u64::from(slot) * 2))
            .unwrap();
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.set_avail_idx(q, self.avail_idx[q]);
    }

    /// Writes the available ring's idx field directly (hostile drivers lie here).
    pub fn set_avail_idx(&self, q: usize, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.layouts[q].avail + 2))
            .unwrap();
    }

    /// Writes a well-formed chain of `(addr, len, writable)` buffers and publishes it.
    pub fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.layouts[q].size;
        let head = self.next_desc[q] % size;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = (head + i as u16) % size;
            let last = i + 1 == bufs.len();
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(
                q,
                index,
                Desc {
                    addr,
                    len,
                    flags,
                    next: (index + 1) % size,
                },
            );
        }
        self.next_desc[q] = (head + bufs.len() as u16) % size;
        self.publish(q, head);
        head
    }

    /// Writes the available ring's `used_event` (VIRTIO_RING_F_EVENT_IDX): interrupt me
    /// once the used index passes `idx`.
    pub fn set_used_event(&self, q: usize, idx: u16) {
        let l = self.layouts[q];
        self.mem
            .write_obj(idx, GuestAddress(l.avail + 4 + u64::from(l.size) * 2))
            .unwrap();
    }

    /// The used ring's `avail_event` (VIRTIO_RING_F_EVENT_IDX): the device wants a kick
    /// once the available index passes it.
    pub fn avail_event(&self, q: usize) -> u16 {
        let l = self.layouts[q];
        self.mem
            .read_obj(GuestAddress(l.used + 4 + u64::from(l.size) * 8))
            .unwrap()
    }

    pub fn notify(&self, q: u32) {
        self.write32(reg::QUEUE_NOTIFY, q);
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.layouts[q].used + 2))
            .unwrap()
    }

    /// Used elements (id, len) added since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let l = self.layouts[q];
        let idx = self.used_idx(q);
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let slot = u64::from(self.used_seen[q] % l.size);
            let at = l.used + 4 + slot * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }
}
