//! The KVM VM: in-kernel irqchip and PIT, memory slots, irqfds, ioeventfds, dirty logging.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::layout::KVM_TSS_ADDR;
use crate::shm::MappedRegion;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("creating the KVM VM: {0}")]
    Create(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR at {KVM_TSS_ADDR:#x}: {0}")]
    Tss(kvm_ioctls::Error),
    #[error("creating the in-kernel irqchip: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("creating the in-kernel PIT: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("registering memory slot {slot} at {gpa:#x} ({size:#x} bytes): {source}")]
    Slot {
        slot: u32,
        gpa: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
    #[error("registering irqfd for GSI {gsi}: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("registering an ioeventfd for the 4-byte value {value} at {addr:#x}: {source}")]
    Ioeventfd {
        addr: u64,
        value: u32,
        source: kvm_ioctls::Error,
    },
    #[error("reading the dirty log of slot {slot}: {source}")]
    DirtyLog {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

pub struct Vm {
    fd: VmFd,
    next_slot: u32,
}

impl Vm {
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(VmError::Tss)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Self { fd, next_slot: 0 })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    fn add_slot(&mut self, gpa: u64, size: u64, host: u64, flags: u32) -> Result<u32, VmError> {
        let slot = self.next_slot;
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: `host` points at a live mapping of `size` bytes owned by the caller's
        // GuestMemoryMmap / MmapRegion, which the partition keeps alive as long as the VM
        // fd (the VM is dropped first or together with them, never after).
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|source| VmError::Slot {
            slot,
            gpa,
            size,
            source,
        })?;
        self.next_slot += 1;
        Ok(slot)
    }

    pub fn register_guest_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for region in mem.iter() {
            let host = region.as_ptr() as u64;
            self.add_slot(region.start_addr().raw_value(), region.len(), host, 0)?;
        }
        Ok(())
    }

    /// Maps the framebuffer region at `gpa` with dirty-page logging; returns the slot.
    pub fn register_framebuffer(
        &mut self,
        region: &MappedRegion,
        gpa: u64,
    ) -> Result<u32, VmError> {
        let host = region.as_ptr() as u64;
        self.add_slot(gpa, region.len() as u64, host, KVM_MEM_LOG_DIRTY_PAGES)
    }

    /// Pages of `slot` written since the last call (one bit per 4 KiB page).
    pub fn dirty_log(&self, slot: u32, size: usize) -> Result<Vec<u64>, VmError> {
        self.fd
            .get_dirty_log(slot, size)
            .map_err(|source| VmError::DirtyLog { slot, source })
    }

    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Has KVM signal `evt` instead of exiting when the guest writes the 4-byte `value`
    /// to the MMIO address `addr` (other values and widths still exit).
    pub fn register_ioeventfd(&self, evt: &EventFd, addr: u64, value: u32) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &kvm_ioctls::IoEventAddress::Mmio(addr), value)
            .map_err(|source| VmError::Ioeventfd {
                addr,
                value,
                source,
            })
    }
}

/// The in-kernel devices and clock of a VM, as saved for a snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    pub pic_master: kvm_bindings::kvm_irqchip,
    pub pic_slave: kvm_bindings::kvm_irqchip,
    pub ioapic: kvm_bindings::kvm_irqchip,
    pub pit: kvm_bindings::kvm_pit_state2,
    pub clock: kvm_bindings::kvm_clock_data,
    /// Host wall-clock time when the clock was read (ns since the epoch): the guest's
    /// clock moves on by the time the snapshot spent on disk.
    pub saved_at_ns: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("VM state: {what}: {source}")]
pub struct VmStateError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

fn irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_bindings::kvm_irqchip, VmStateError> {
    let mut chip = kvm_bindings::kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip).map_err(|source| VmStateError {
        what: "KVM_GET_IRQCHIP",
        source,
    })?;
    Ok(chip)
}

impl Vm {
    /// Reads the irqchip, PIT and clock; call with every vCPU parked.
    pub fn save_state(&self) -> Result<VmState, VmStateError> {
        let e = |what| move |source| VmStateError { what, source };
        Ok(VmState {
            pic_master: irqchip(&self.fd, kvm_bindings::KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: irqchip(&self.fd, kvm_bindings::KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: irqchip(&self.fd, kvm_bindings::KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(e("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(e("KVM_GET_CLOCK"))?,
            saved_at_ns: wall_ns(),
        })
    }

    /// Sets the PIT, the clock (advanced by the wall-clock time since the save, so the
    /// guest's time of day is right again) and the irqchip; before any vCPU state.
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmStateError> {
        let e = |what| move |source| VmStateError { what, source };
        self.fd.set_pit2(&state.pit).map_err(e("KVM_SET_PIT2"))?;
        let elapsed = wall_ns().saturating_sub(state.saved_at_ns);
        let clock = kvm_bindings::kvm_clock_data {
            clock: state.clock.clock.saturating_add(elapsed),
            // The saved flags describe the saving host's clock; setting them would ask
            // for a realtime correction on top of ours.
            flags: 0,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(e("KVM_SET_CLOCK"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd.set_irqchip(chip).map_err(e("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}
