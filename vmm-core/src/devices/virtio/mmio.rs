//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2), modern devices only.
//!
//! Registers are 32 bits wide and must be accessed with aligned 32-bit loads and stores;
//! anything else reads as zero and is ignored on write. The device-specific config space
//! starts at 0x100 and takes 8-, 16-, 32- and 64-bit accesses. A driver that breaks the
//! protocol in a way the device cannot recover from (bad queue layout, malformed chains)
//! finds `DEVICE_NEEDS_RESET` in the status register and a config-change interrupt.

use std::sync::Arc;

use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::queue::{QueueError, Queues};
use super::{status, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::devices::persist::{self, PersistError};
use crate::devices::{BusDevice, InterruptLine};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("BLKH" would not fit any registry; any value works).
pub const MMIO_VENDOR_ID: u32 = 0x4b48_4c42;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// How often [`VirtioMmioDevice::process_queue`] goes back to a queue the device left
/// unfinished when the queue has no ioeventfd to kick itself through.
const UNFINISHED_PASSES: usize = 16;

/// InterruptStatus bits.
pub const INT_USED_BUFFER: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

/// A virtio device model behind a virtio-mmio register window.
pub struct VirtioMmioDevice<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn InterruptLine>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    /// Each queue's ioeventfd (a second handle to what KVM signals), when it has one: the
    /// transport kicks itself through it to come back to a queue it left unfinished.
    queue_events: Vec<Option<EventFd>>,
}

/// What [`VirtioMmioDevice::new`] can fail on (a device model bug, never the guest).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmioError {
    #[error("queue {index} has maximum size {size}, which is not a power of two in 1..=32768")]
    BadQueueSize { index: usize, size: u16 },
    #[error("device declares {count} queues, the transport supports at most 64")]
    TooManyQueues { count: usize },
}

impl<D: VirtioDevice> VirtioMmioDevice<D> {
    /// Wraps `device`; `interrupt` is the line (irqfd) for this window's GSI.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn InterruptLine>,
    ) -> Result<Self, MmioError> {
        let sizes = device.queue_max_sizes();
        if sizes.len() > 64 {
            return Err(MmioError::TooManyQueues { count: sizes.len() });
        }
        let queues = sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|_| MmioError::BadQueueSize { index, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            queue_events: Vec::new(),
        })
    }

    /// Gives the transport a handle to the eventfd KVM signals for queue `index`.
    pub fn set_queue_event(&mut self, index: usize, evt: EventFd) {
        if index < self.queues.len() {
            if self.queue_events.len() <= index {
                self.queue_events.resize_with(index + 1, || None);
            }
            self.queue_events[index] = Some(evt);
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The status register as the driver sees it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The driver finished initialisation and the device has not failed.
    pub fn is_active(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.status & (status::DEVICE_NEEDS_RESET | status::FAILED) == 0
    }

    pub fn needs_reset(&self) -> bool {
        self.status & status::DEVICE_NEEDS_RESET != 0
    }

    fn offered_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | self.device.device_features()
    }

    /// Runs the device on queue `index` if the device is active; raises the used-buffer
    /// interrupt when buffers were returned, or marks the device broken on a queue error.
    /// Host-side handles call this after giving the device new data.
    pub fn process_queue(&mut self, index: usize) {
        // A device takes at most one ring's worth per call, so that a driver adding
        // buffers from another vCPU cannot hold this thread. Under EVENT_IDX the driver
        // does not kick for chains added while the device was busy, so a queue left
        // unfinished is looked at again: through its ioeventfd (later, by the notifier
        // thread, after whatever else is waiting) or, without one, right here, a bounded
        // number of times.
        for _ in 0..UNFINISHED_PASSES {
            if !self.process_queue_once(index) {
                return;
            }
            if let Some(evt) = self.queue_events.get(index).and_then(Option::as_ref) {
                // A full counter still wakes the notifier, so an error changes nothing.
                let _ = evt.write(1);
                return;
            }
        }
    }

    /// One pass of the device over queue `index`; true when, under EVENT_IDX, it left
    /// the queue unfinished (took a whole ring's worth without finding it empty).
    fn process_queue_once(&mut self, index: usize) -> bool {
        if !self.is_active() || !self.queues.get(index).is_some_and(|q| q.ready()) {
            return false;
        }
        // Only what was offered counts, whatever the driver wrote.
        let negotiated = self.driver_features & self.offered_features();
        let mut queues = Queues::new(&self.mem, &mut self.queues, negotiated);
        let result = self.device.process_queue(index, &mut queues);
        let used = queues.used_mask();
        let unfinished =
            negotiated & VIRTIO_RING_F_EVENT_IDX != 0 && queues.took_a_full_ring(index);
        if used != 0 && self.driver_wants_interrupt(used) {
            self.raise(INT_USED_BUFFER);
        }
        match result {
            Ok(()) => unfinished,
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// Whether the driver asked to hear of the buffers just returned on the queues in
    /// `used` (bit `i`: queue `i`). Asks every such queue, since asking also marks its
    /// used buffers as announced. Without `VIRTIO_RING_F_EVENT_IDX` the answer is yes;
    /// with it, yes when the used index passed the driver's `used_event` (a value the
    /// guest writes: it can only cost itself interrupts). Unreadable: yes.
    fn driver_wants_interrupt(&mut self, used: u64) -> bool {
        let mut wanted = false;
        for (index, queue) in self.queues.iter_mut().enumerate().take(64) {
            if used & (1 << index) != 0 {
                wanted |= queue.needs_notification(&self.mem).unwrap_or(true);
            }
        }
        wanted
    }

    /// The device changed its config space on the host's behalf (a balloon target):
    /// bumps the generation and, once the driver runs, raises the config interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    fn process_all_queues(&mut self) {
        for index in 0..self.queues.len() {
            self.process_queue(index);
        }
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        if let Err(e) = self.interrupt.trigger() {
            crate::limited!(warn, error = %e, "virtio-mmio: cannot raise interrupt");
        }
    }

    /// Marks the device broken (virtio 1.2, 2.1.2): the driver must reset it.
    fn fail(&mut self, err: &QueueError) {
        crate::limited!(warn, device = self.device.device_type(), error = %err, "virtio device needs reset");
        let was_running = self.status & status::DRIVER_OK != 0;
        self.status |= status::DEVICE_NEEDS_RESET;
        if was_running {
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            // No shared memory regions: their length reads as all ones (virtio 1.2, 4.2.2).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(
                    offset,
                    "virtio-mmio: read of write-only or unknown register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.write_status(value),
            reg::SHM_SEL => {}
            _ => debug!(
                offset,
                value, "virtio-mmio: write to read-only or unknown register"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let negotiating = self.status & status::DRIVER != 0
            && self.status & status::FEATURES_OK == 0
            && !self.needs_reset();
        if !negotiating {
            debug!(
                value,
                "virtio-mmio: driver features written outside negotiation"
            );
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => debug!(value, "virtio-mmio: driver features for a selector past 1"),
        }
    }

    /// Queue layout may change only between FEATURES_OK and DRIVER_OK, on a queue that is
    /// not ready. Values the device cannot use break it (NEEDS_RESET), rather than leaving
    /// it half configured.
    fn write_queue_register(&mut self, offset: u64, value: u32) {
        let configuring = self.status & status::FEATURES_OK != 0
            && self.status & status::DRIVER_OK == 0
            && !self.needs_reset();
        let index = self.queue_select as usize;
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(index).filter(|_| configuring) else {
            debug!(
                offset,
                value,
                index,
                "virtio-mmio: queue register written out of order or for a missing queue"
            );
            return;
        };
        if offset == reg::QUEUE_READY {
            match value {
                0 => queue.set_ready(false),
                1 if queue.ready() => {}
                1 => {
                    queue.set_ready(true);
                    if !queue.is_valid(mem) {
                        queue.set_ready(false);
                        let e = QueueError::Memory {
                            queue: index,
                            reason: "rings do not fit in guest memory".to_string(),
                        };
                        self.fail(&e);
                    }
                }
                _ => debug!(value, "virtio-mmio: QueueReady takes 0 or 1"),
            }
            return;
        }
        if queue.ready() {
            debug!(
                offset,
                index, "virtio-mmio: layout of a ready queue written"
            );
            return;
        }
        let result = match offset {
            reg::QUEUE_NUM => u16::try_from(value)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| queue.try_set_size(size)),
            reg::QUEUE_DESC_LOW => set_low(queue.desc_table(), value, |a| {
                queue.try_set_desc_table_address(a)
            }),
            reg::QUEUE_DESC_HIGH => set_high(queue.desc_table(), value, |a| {
                queue.try_set_desc_table_address(a)
            }),
            reg::QUEUE_DRIVER_LOW => set_low(queue.avail_ring(), value, |a| {
                queue.try_set_avail_ring_address(a)
            }),
            reg::QUEUE_DRIVER_HIGH => set_high(queue.avail_ring(), value, |a| {
                queue.try_set_avail_ring_address(a)
            }),
            reg::QUEUE_DEVICE_LOW => set_low(queue.used_ring(), value, |a| {
                queue.try_set_used_ring_address(a)
            }),
            reg::QUEUE_DEVICE_HIGH => set_high(queue.used_ring(), value, |a| {
                queue.try_set_used_ring_address(a)
            }),
            _ => Ok(()),
        };
        if let Err(e) = result {
            let e = QueueError::Memory {
                queue: index,
                reason: format!("register {offset:#x} = {value:#x} rejected: {e}"),
            };
            self.fail(&e);
        }
    }

    fn notify(&mut self, value: u32) {
        if !self.is_active() {
            debug!(
                value,
                "virtio-mmio: notification while the device is not running"
            );
            return;
        }
        self.process_queue(value as usize);
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET belongs to the device; the driver can neither set nor clear it.
        let requested = value & !status::DEVICE_NEEDS_RESET;
        let current = self.status & !status::DEVICE_NEEDS_RESET;
        if requested & current != current {
            debug!(
                current,
                requested, "virtio-mmio: driver tried to clear status bits without a reset"
            );
            return;
        }
        let added = requested & !current;
        let mut new = current | (added & (status::ACKNOWLEDGE | status::DRIVER | status::FAILED));
        if added & status::FEATURES_OK != 0 {
            if new & status::DRIVER != 0 && self.features_acceptable() {
                new |= status::FEATURES_OK;
            } else {
                debug!(
                    features = self.driver_features,
                    "virtio-mmio: FEATURES_OK refused"
                );
            }
        }
        let activate =
            added & status::DRIVER_OK != 0 && new & status::FEATURES_OK != 0 && !self.needs_reset();
        if activate {
            new |= status::DRIVER_OK;
        } else if added & status::DRIVER_OK != 0 {
            debug!("virtio-mmio: DRIVER_OK before FEATURES_OK ignored");
        }
        self.status = new | (self.status & status::DEVICE_NEEDS_RESET);
        if activate {
            let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
            for queue in &mut self.queues {
                queue.set_event_idx(event_idx);
            }
            // Buffers made available before DRIVER_OK and data the host queued meanwhile.
            self.process_all_queues();
        }
    }

    fn features_acceptable(&self) -> bool {
        let unknown = self.driver_features & !self.offered_features();
        unknown == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }
}

fn set_low(
    old: u64,
    low: u32,
    set: impl FnOnce(vm_memory::GuestAddress) -> Result<(), virtio_queue::Error>,
) -> Result<(), virtio_queue::Error> {
    set(vm_memory::GuestAddress(
        (old & !0xffff_ffff) | u64::from(low),
    ))
}

fn set_high(
    old: u64,
    high: u32,
    set: impl FnOnce(vm_memory::GuestAddress) -> Result<(), virtio_queue::Error>,
) -> Result<(), virtio_queue::Error> {
    set(vm_memory::GuestAddress(
        (old & 0xffff_ffff) | (u64::from(high) << 32),
    ))
}

/// One queue as the driver configured it (virtio-queue's `QueueState`, which has no serde).
#[derive(serde::Serialize, serde::Deserialize)]
struct QueueSnapshot {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// The transport's registers, its queues and the device's own state.
#[derive(serde::Serialize, serde::Deserialize)]
struct TransportState {
    device_type: u32,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    queues: Vec<QueueSnapshot>,
    device: serde_json::Value,
}

impl<D: VirtioDevice> VirtioMmioDevice<D> {
    fn save_transport(&self) -> Result<Vec<u8>, PersistError> {
        let device = self.device.save_state()?;
        let device = serde_json::from_slice(&device)
            .map_err(|e| PersistError::Encode(format!("device state: {e}")))?;
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let s = q.state();
                QueueSnapshot {
                    max_size: s.max_size,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx_enabled: s.event_idx_enabled,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                }
            })
            .collect();
        persist::encode(&TransportState {
            device_type: self.device.device_type(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues,
            device,
        })
    }

    fn restore_transport(&mut self, state: &[u8]) -> Result<(), PersistError> {
        let s: TransportState = persist::decode(state)?;
        let here = self.device.device_type();
        if s.device_type != here {
            return Err(PersistError::Mismatch(format!(
                "a virtio device of type {} saved where this partition has type {here}",
                s.device_type
            )));
        }
        if s.queues.len() != self.queues.len() {
            return Err(PersistError::Mismatch(format!(
                "{} queues saved, the device has {}",
                s.queues.len(),
                self.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (index, (q, current)) in s.queues.iter().zip(&self.queues).enumerate() {
            if q.max_size != current.max_size() {
                return Err(PersistError::Mismatch(format!(
                    "queue {index}: maximum size {} saved, the device has {}",
                    q.max_size,
                    current.max_size()
                )));
            }
            let queue = Queue::try_from(virtio_queue::QueueState {
                max_size: q.max_size,
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx_enabled: q.event_idx_enabled,
                size: q.size,
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
            })
            .map_err(|e| PersistError::Mismatch(format!("queue {index}: {e}")))?;
            queues.push(queue);
        }
        let device = serde_json::to_vec(&s.device)
            .map_err(|e| PersistError::Decode(format!("device state: {e}")))?;
        self.device.restore_state(&device)?;
        self.queues = queues;
        self.queue_select = s.queue_select;
        self.device_features_select = s.device_features_select;
        self.driver_features_select = s.driver_features_select;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.interrupt_status = s.interrupt_status;
        self.config_generation = s.config_generation;
        if self.interrupt_status != 0 {
            // An interrupt the guest had not acknowledged: raised again, since a lost
            // one stalls the driver and a spurious one is checked and ignored.
            if let Err(e) = self.interrupt.trigger() {
                return Err(PersistError::Mismatch(format!(
                    "raising the pending interrupt: {e}"
                )));
            }
        }
        Ok(())
    }
}

impl<D: VirtioDevice> BusDevice for VirtioMmioDevice<D> {
    fn save_state(&self) -> Result<Vec<u8>, PersistError> {
        self.save_transport()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), PersistError> {
        self.restore_transport(state)
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            data.fill(0);
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            debug!(
                offset,
                len = data.len(),
                "virtio-mmio: register read not 32-bit aligned"
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                offset,
                len = data.len(),
                "virtio-mmio: register write not 32 bits wide"
            );
            return;
        };
        if offset % 4 != 0 {
            debug!(offset, "virtio-mmio: unaligned register write");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}
