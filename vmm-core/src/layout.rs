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
/// One window per IO-APIC pin in [`VIRTIO_IRQS`] (0xd000_0000 + 13 pages stays far below
/// the framebuffer).
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = VIRTIO_IRQS.len() as u64;
/// IO-APIC pins for virtio-mmio devices, window `n` gets `VIRTIO_IRQS[n]` (edge-triggered,
/// active high, declared in the DSDT like every other pin). KVM's in-kernel IO-APIC has
/// 24 pins: 16..=23 first, then the ISA pins no emulated or conventional device uses.
/// Kept out: 0 (the in-kernel PIT), 1 and 12 (i8042), 2 (the PIC cascade on a PC), 3
/// (COM2), 4 (COM1), 8 (RTC), 9 (the ACPI SCI on a PC; none here, hardware-reduced),
/// 13-15 (FPU, IDE: left for a future legacy device). [`VIRTIO_RESERVED_IRQS`] is the
/// list the tests check against.
pub const VIRTIO_IRQS: [u32; 13] = [16, 17, 18, 19, 20, 21, 22, 23, 5, 6, 7, 10, 11];
/// Pins a virtio device must never get (see [`VIRTIO_IRQS`]).
pub const VIRTIO_RESERVED_IRQS: [u32; 10] = [0, 1, 2, 3, 4, 8, 9, 12, 14, 15];

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
