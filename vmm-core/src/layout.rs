//! The x86_64 guest physical memory map every partition uses.
//!
//! RAM runs from 0 up to [`MMIO_HOLE_START`] and continues at 4 GiB; the hole holds the
//! framebuffer, the virtio-mmio windows, the IO-APIC and the local APIC.

/// Boot-time structures in low memory (the 64-bit boot protocol values the lab proved).
pub const GDT_ADDR: u64 = 0x500;
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPTE_ADDR: u64 = 0xa000;
/// Four page directories, 0xb000..0xf000.
pub const PDE_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x1_0000;
/// The MP table and ACPI tables live in the BIOS area the kernel scans, marked reserved.
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_ADDR: u64 = 0x9fc00;
pub const ACPI_TABLES_START: u64 = 0xe0000;
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// Where the kernel image is loaded.
pub const KERNEL_LOAD_ADDR: u64 = 0x100_0000;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// virtio-mmio windows: device `n` at `VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSIs 16..=23: KVM's in-kernel IO-APIC has 24 pins.
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = 8;
/// IO-APIC pins for virtio-mmio devices, in order (edge-triggered, active high). The
/// legacy ISA pins below 16 stay for serial (4), i8042 (1, 12) and RTC (8).
pub const VIRTIO_IRQ_BASE: u32 = 16;

/// The linear framebuffer (kept below 4 GiB: the 6.1 vesafb reads a 32-bit base).
pub const FRAMEBUFFER_ADDR: u64 = 0xe000_0000;
pub const FRAMEBUFFER_MAX_SIZE: u64 = 0x1000_0000;

/// KVM's TSS needs three pages of guest-physical space that is not RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// Port of the ACPI sleep control / status registers (hardware-reduced ACPI).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
pub const ACPI_RESET_PORT: u16 = 0x3c2;
pub const ACPI_RESET_VALUE: u8 = 0x1;

/// Ends of the two RAM regions for `mem_bytes` of guest RAM.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

/// The sleep type the DSDT's `_S5_` declares; the ACPI PM device powers off when the
/// guest writes it. Platform data shared by the tables and the device.
pub const S5_SLEEP_TYPE: u8 = 5;
