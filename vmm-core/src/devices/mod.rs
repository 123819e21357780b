//! Devices the guest reaches through port I/O or MMIO exits.
//!
//! A device is a [`BusDevice`] placed on a [`Bus`] at a base address. The bus hands the
//! device offsets relative to that base, so a device never sees (or trusts) an absolute
//! guest address it did not register for.

pub mod bus;
pub mod framebuffer;
pub mod legacy;
pub mod persist;
pub mod ratelimit;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

use std::io;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Something a device can raise to interrupt the guest: in a running VM an `EventFd`
/// registered with KVM as an irqfd; in device-model tests a plain `EventFd` the test reads.
pub trait InterruptLine: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
}

impl InterruptLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Answers a read of an 8-bit register: the value in the first byte, zeros above it
/// whatever width the guest used.
pub fn byte_register_read(data: &mut [u8], value: u8) {
    data.fill(0);
    if let Some(first) = data.first_mut() {
        *first = value;
    }
}

/// Why a partition stopped running guest code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off (ACPI sleep state 5 or an explicit shutdown port).
    PowerOff,
    /// The guest asked for a reset (i8042 pulse, ACPI reset register, reboot).
    Reset,
    /// The guest or a vCPU failed; the string is a one-line diagnostic.
    Crashed(String),
    /// The host asked the partition to stop.
    Stopped,
}

/// Shared by devices and vCPUs: the first stop request wins and wakes whoever waits on
/// the event.
pub struct StopHandle {
    reason: Mutex<Option<StopReason>>,
    evt: EventFd,
}

impl StopHandle {
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// Records `reason` unless an earlier one is already recorded, then wakes waiters.
    pub fn request(&self, reason: StopReason) {
        let mut guard = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(reason);
        }
        drop(guard);
        // A full eventfd counter still wakes readers, so the error is not actionable.
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.reason().is_some()
    }

    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}
