//! virtio devices over the virtio-mmio transport.
//!
//! [`mmio::VirtioMmioDevice`] is the transport (virtio 1.x "modern" register layout only)
//! and the [`VirtioDevice`] trait is what a device model implements: its type, queues,
//! feature bits, config space and the work done when a queue has buffers. The three device
//! models are [`input::VirtioInput`] (keyboard, absolute tablet), [`console::VirtioConsole`]
//! (one port, the guest agent's byte stream), [`rng::VirtioRng`], [`block::VirtioBlock`]
//! (one disk each; its file I/O runs on a worker thread, see that module) and
//! [`net::VirtioNet`] (one interface on a passt-protocol stream socket; receive runs on a
//! worker thread).
//!
//! # Threading
//!
//! A transport lives in an `Arc<Mutex<VirtioMmioDevice<D>>>` shared by the MMIO bus (vCPU
//! threads) and the host-side handles ([`input::InputEventSender`],
//! [`console::ConsoleHandle`]). Everything that touches a queue happens with that mutex
//! held: a QueueNotify write processes the queue on the notifier thread (an ioeventfd, see
//! [`notify`]) or, where KVM took no eventfd, on the vCPU thread that wrote it, and a
//! host handle pushing data (input events, console bytes) processes the receive queue on the
//! caller's thread. The guest is told about used buffers through the [`InterruptLine`]
//! (an irqfd in a VM), so nobody ever waits on the guest while holding the lock.
//!
//! # Guest memory
//!
//! Devices hold their own clone of the `GuestMemoryMmap` (a vector of `Arc`ed regions, so a
//! clone is cheap and shares the mappings). Partitions have a fixed memory map for their
//! whole life (no hotplug), so a snapshot taken at construction stays correct.
//!
//! # What the guest needs
//!
//! The Debian 6.1 generic kernel (`linux-image-6.1.0-*-amd64`) has the virtio core as
//! modules; see [`GUEST_MODULES`] for the list the guest initramfs loads, in order.

pub mod balloon;
pub mod block;
pub mod console;
pub mod input;
pub mod mmio;
pub mod net;
pub mod notify;
pub mod queue;
pub mod rng;
/// The test-side virtio-mmio driver; public only with the `fuzzing` feature, for
/// `vmm-core/fuzz/`.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod test_utils;
#[cfg(test)]
mod tests;

pub use mmio::VirtioMmioDevice;
pub use queue::{Chain, QueueError, Queues};

/// Kernel modules (paths below `/lib/modules/<version>/kernel/`) the guest initramfs
/// must `insmod`, in this order, for virtio-mmio devices declared in ACPI plus
/// virtio-input, virtio-console, virtio-rng and virtio-blk, on Debian's
/// `linux-image-6.1.0-*-amd64`. Checked against 6.1.0-56 (6.1.192-2): the `.modinfo`
/// `depends=` fields (`virtio` needs `virtio_ring`; `virtio_mmio`, `virtio_input`,
/// `virtio_console` and `virtio-rng` need both) and `config-6.1.0-56-amd64`; `virtio_blk`
/// against 6.1.0-57 (6.1.192-3: `depends=virtio,virtio_ring`); `virtio_net` needs
/// `net_failover`, which needs `failover` (guest-stack.md, `modprobe --show-depends`). The package ships no
/// `modules.dep`; the `.ko` files are not compressed.
///
/// Built in (`=y`), so not in the list: ACPI and PNPACPI (the `LNRO0005` nodes and the
/// PNP serial/RTC nodes), `8250` + `8250_pnp`, the input core and the VT keyboard
/// handler (keys reach the console without evdev), `hvc_console` (`CONFIG_HVC_DRIVER`),
/// `rng-core` (`CONFIG_HW_RANDOM`, gives `/dev/hwrng`), `virtio_anchor`, i8042/atkbd,
/// rtc_cmos, vesafb and fbcon.
///
/// `evdev` is last: it is only needed for `/dev/input/event*` (a guest-side test reading
/// tablet events, or a GUI stack in the guest); virtio_input works without it.
pub const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/virtio/virtio_input.ko",
    "drivers/char/virtio_console.ko",
    "drivers/char/hw_random/virtio-rng.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/virtio/virtio_balloon.ko",
    "drivers/input/evdev.ko",
];

/// virtio device ids (virtio 1.2, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const RNG: u32 = 4;
    pub const BALLOON: u32 = 5;
    pub const INPUT: u32 = 18;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Feature bit every modern device offers and every driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Indirect descriptor tables (virtio 1.2, 2.7.5.3). No device here offers it, so a chain
/// naming an indirect table breaks the device instead of being followed.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// The `used_event` and `avail_event` ring fields (virtio 1.2, 2.7.7 and 2.7.10), offered
/// by every device. A device re-arms the driver's notifications only when it finds a queue
/// empty ([`Queues::pop`]) and the transport raises the used-buffer interrupt only when the
/// driver's `used_event` asks for it: Linux's console, for one, kicks after every receive
/// buffer it adds, and each kick is a VM exit (hundreds while the console probes).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A device model behind the virtio-mmio transport.
///
/// The transport owns negotiation, status, queue setup and interrupts; the device only sees
/// queues once the driver has set `DRIVER_OK`. Everything the guest hands over (config
/// offsets, descriptor chains) is untrusted: implementations return a [`QueueError`]
/// rather than panic, and the transport then marks the device `DEVICE_NEEDS_RESET`.
pub trait VirtioDevice: Send {
    /// The virtio device id (see [`device_type`]).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue (powers of two); the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];

    /// Device-specific feature bits offered besides [`VIRTIO_F_VERSION_1`].
    fn device_features(&self) -> u64 {
        0
    }

    /// Reads `data.len()` bytes of config space at `offset`. Out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes config space. Read-only or out-of-range bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Consumes available buffers of queue `index` (which is ready and valid). Called on a
    /// guest notification, once after `DRIVER_OK`, and when a host handle has new data.
    fn process_queue(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), QueueError>;

    /// Forgets all per-driver state; the driver wrote 0 to the status register.
    fn reset(&mut self);

    /// The device's own state for a snapshot (the transport saves queues and registers).
    /// The default refuses, so a device nobody taught to save fails the snapshot.
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        Err(crate::devices::persist::PersistError::Unsupported(format!(
            "virtio device type {}",
            self.device_type()
        )))
    }

    /// Takes back what [`VirtioDevice::save_state`] returned, before the guest runs.
    fn restore_state(
        &mut self,
        _state: &[u8],
    ) -> Result<(), crate::devices::persist::PersistError> {
        Err(crate::devices::persist::PersistError::Unsupported(format!(
            "virtio device type {}",
            self.device_type()
        )))
    }
}
