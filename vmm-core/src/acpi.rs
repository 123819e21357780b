//! ACPI tables the VMM writes into guest memory (RSDP, XSDT, FADT, MADT, DSDT).
//!
//! The platform is hardware-reduced ACPI: no PM timer, no GPEs, no SCI, no FACS. Power-off
//! and reset go through the FADT's sleep control and reset registers, which are the ports
//! of [`crate::devices::legacy::acpi_pm::AcpiPm`]. The DSDT declares `_S5_` (so Linux's
//! `acpi_power_off` has a sleep type to write), one `LNRO0005` node per virtio-mmio window
//! (the only way the Debian kernel discovers virtio-mmio devices), and the ISA devices the
//! VMM emulates as PNP nodes.
//!
//! Why the ISA devices must be declared: with a hardware-reduced FADT, Linux x86 drops the
//! legacy PIC (`acpi_generic_reduced_hw_init`), so ISA IRQs 0-15 get no identity mapping to
//! IO-APIC pins; a device only gets its interrupt when an ACPI node asks for it (the 8250
//! then binds through `8250_pnp`, built into the Debian kernel). The i8042 is deliberately
//! not declared and the FADT says "no 8042", so the guest's `i8042` driver skips probing
//! (keyboard input comes through virtio-input; reboot through the ACPI reset register, and
//! the kernel's last-resort i8042 reset pulse writes the ports directly).
//!
//! Interrupt model in the MADT: one local APIC per vCPU (APIC id = vCPU index, processor
//! UID = index), LINT1 as NMI on every CPU, one IO-APIC with id 0 (the reset value of
//! KVM's in-kernel IO-APIC id register) at [`layout::IOAPIC_ADDR`], GSI base 0, 24 pins. No
//! interrupt source overrides: KVM's default GSI routing sends GSI n to IO-APIC pin n
//! (also GSI 0, where the in-kernel PIT raises its interrupt), unlike a PC's IRQ0→pin 2;
//! and the hardware-reduced kernel never uses the PIT as its timer anyway.
//!
//! Memory: every table lives in [`layout::ACPI_TABLES_START`]..[`layout::ACPI_TABLES_END`]
//! with the RSDP first, at 0xe0000, where the kernel's BIOS-area scan finds it even
//! without `boot_params.acpi_rsdp_addr`.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

pub const OEM_ID: [u8; 6] = *b"BLKHD ";
const OEM_REVISION: u32 = 1;

pub use crate::layout::S5_SLEEP_TYPE;

/// KVM's in-kernel IO-APIC has 24 pins (GSI 0..=23).
pub const IOAPIC_PINS: u32 = 24;
pub const IOAPIC_ID: u8 = 0;

/// xAPIC ids are 8 bits and 0xff is the broadcast id.
pub const MAX_VCPUS: u8 = 254;

/// FADT IA-PC boot architecture flags (ACPI 6.5, table 5.11).
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// MADT structure types.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;

/// One virtio-mmio window as the guest should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    pub base: u64,
    pub size: u64,
    /// IO-APIC pin (GSI); edge-triggered, active high.
    pub gsi: u32,
}

impl VirtioMmioSlot {
    /// Slot `n` of the standard layout: window `n` and GSI `layout::VIRTIO_IRQS[n]`. Past
    /// the table the GSI is `u32::MAX`, which [`create_acpi_tables`] refuses.
    pub fn standard(n: u32) -> Self {
        Self {
            base: layout::VIRTIO_MMIO_BASE + u64::from(n) * layout::VIRTIO_MMIO_SIZE,
            size: layout::VIRTIO_MMIO_SIZE,
            gsi: usize::try_from(n)
                .ok()
                .and_then(|n| layout::VIRTIO_IRQS.get(n))
                .copied()
                .unwrap_or(u32::MAX),
        }
    }
}

/// An ISA device the VMM emulates, declared as a PNP node so the guest maps its IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsaDevice {
    /// A 16550 UART (`PNP0501`); `uid` 1 is COM1.
    Serial { uid: u8, port: u16, irq: u8 },
    /// The CMOS real-time clock (`PNP0B00`).
    Rtc { port: u16, irq: u8 },
}

impl IsaDevice {
    pub const COM1: IsaDevice = IsaDevice::Serial {
        uid: 1,
        port: 0x3f8,
        irq: 4,
    };
    pub const RTC: IsaDevice = IsaDevice::Rtc { port: 0x70, irq: 8 };
}

/// What the tables describe.
#[derive(Debug, Clone, Copy)]
pub struct AcpiConfig<'a> {
    pub vcpus: u8,
    pub virtio: &'a [VirtioMmioSlot],
    pub isa: &'a [IsaDevice],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("ACPI tables need at least one vCPU")]
    NoVcpus,
    #[error("{count} vCPUs do not fit xAPIC ids; at most {MAX_VCPUS}")]
    TooManyVcpus { count: u8 },
    #[error("virtio-mmio window {base:#x}+{size:#x} is not addressable with 32 bits or is empty")]
    SlotNotAddressable { base: u64, size: u64 },
    #[error("GSI {gsi} is past the IO-APIC's {IOAPIC_PINS} pins")]
    BadGsi { gsi: u32 },
    #[error("GSI {gsi} is given to two devices (edge-triggered pins cannot be shared)")]
    SharedGsi { gsi: u32 },
    #[error("virtio-mmio windows at {a:#x} and {b:#x} overlap")]
    OverlappingSlots { a: u64, b: u64 },
    #[error("{count} virtio-mmio windows exceed the {max} the DSDT can name")]
    TooManySlots { count: usize, max: usize },
    #[error("serial port uid {uid} cannot be named COM1..COM9")]
    BadSerialUid { uid: u8 },
    #[error("ACPI tables need {needed:#x} bytes at {start:#x}, only up to {end:#x} is reserved")]
    TooLarge { needed: u64, start: u64, end: u64 },
    #[error(
        "cannot write ACPI table {table} at {addr:#x} ({len} bytes) into guest memory: {reason}"
    )]
    GuestMemory {
        table: &'static str,
        addr: u64,
        len: usize,
        reason: String,
    },
}

/// Builds all tables into `mem` and returns the RSDP address (for
/// `boot_params.acpi_rsdp_addr`; it is also found by the BIOS-area scan).
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    config: &AcpiConfig<'_>,
) -> Result<GuestAddress, AcpiError> {
    validate(config)?;
    let mut place = Placer::new();
    let rsdp_addr = place.take(Rsdp::len())?;

    let dsdt = to_bytes(&build_dsdt(config));
    let dsdt_addr = place.take(dsdt.len())?;
    let fadt = to_bytes(&build_fadt(config, dsdt_addr));
    let fadt_addr = place.take(fadt.len())?;
    let madt = to_bytes(&build_madt(config.vcpus));
    let madt_addr = place.take(madt.len())?;

    let mut xsdt = XSDT::new(OEM_ID, *b"BLKHXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let xsdt_addr = place.take(xsdt.len())?;
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    for (table, addr, bytes) in [
        ("DSDT", dsdt_addr, &dsdt),
        ("FACP", fadt_addr, &fadt),
        ("APIC", madt_addr, &madt),
        ("XSDT", xsdt_addr, &xsdt),
        ("RSDP", rsdp_addr, &rsdp),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| AcpiError::GuestMemory {
                table,
                addr,
                len: bytes.len(),
                reason: e.to_string(),
            })?;
    }
    Ok(GuestAddress(rsdp_addr))
}

fn validate(config: &AcpiConfig<'_>) -> Result<(), AcpiError> {
    if config.vcpus == 0 {
        return Err(AcpiError::NoVcpus);
    }
    if config.vcpus > MAX_VCPUS {
        return Err(AcpiError::TooManyVcpus {
            count: config.vcpus,
        });
    }
    if config.virtio.len() > 256 {
        return Err(AcpiError::TooManySlots {
            count: config.virtio.len(),
            max: 256,
        });
    }
    for slot in config.virtio {
        let fits = slot.size > 0
            && slot
                .base
                .checked_add(slot.size)
                .is_some_and(|end| end <= 1 << 32);
        if !fits {
            return Err(AcpiError::SlotNotAddressable {
                base: slot.base,
                size: slot.size,
            });
        }
        if slot.gsi >= IOAPIC_PINS {
            return Err(AcpiError::BadGsi { gsi: slot.gsi });
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for slot in config.virtio {
        if !used.insert(slot.gsi) {
            return Err(AcpiError::SharedGsi { gsi: slot.gsi });
        }
    }
    for (i, a) in config.virtio.iter().enumerate() {
        // Sizes were checked non-zero and below 4 GiB above.
        if let Some(b) = config.virtio[i + 1..]
            .iter()
            .find(|b| a.base < b.base + b.size && b.base < a.base + a.size)
        {
            return Err(AcpiError::OverlappingSlots {
                a: a.base,
                b: b.base,
            });
        }
    }
    for dev in config.isa {
        let irq = match *dev {
            IsaDevice::Serial { uid, irq, .. } => {
                if !(1..=9).contains(&uid) {
                    return Err(AcpiError::BadSerialUid { uid });
                }
                irq
            }
            IsaDevice::Rtc { irq, .. } => irq,
        };
        if u32::from(irq) >= IOAPIC_PINS {
            return Err(AcpiError::BadGsi {
                gsi: u32::from(irq),
            });
        }
        if !used.insert(u32::from(irq)) {
            return Err(AcpiError::SharedGsi {
                gsi: u32::from(irq),
            });
        }
    }
    Ok(())
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Hands out 16-byte aligned addresses inside the reserved BIOS area.
struct Placer {
    next: u64,
}

impl Placer {
    fn new() -> Self {
        Self {
            next: layout::ACPI_TABLES_START,
        }
    }

    fn take(&mut self, len: usize) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(16);
        let end = addr + len as u64;
        if end > layout::ACPI_TABLES_END {
            return Err(AcpiError::TooLarge {
                needed: end - layout::ACPI_TABLES_START,
                start: layout::ACPI_TABLES_START,
                end: layout::ACPI_TABLES_END,
            });
        }
        self.next = end;
        Ok(addr)
    }
}

fn io_port_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn build_fadt(config: &AcpiConfig<'_>, dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"BLKHFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // Power and sleep buttons, if any, are control-method devices (there are none).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    let has_rtc = config
        .isa
        .iter()
        .any(|d| matches!(d, IsaDevice::Rtc { .. }));
    let mut boot_arch = IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_PCIE_ASPM_CONTROLS;
    if !config.isa.is_empty() {
        boot_arch |= IAPC_LEGACY_DEVICES;
    }
    if !has_rtc {
        boot_arch |= IAPC_CMOS_RTC_NOT_PRESENT;
    }
    fadt.iapc_boot_arch = boot_arch.into();
    fadt.reset_reg = io_port_gas(layout::ACPI_RESET_PORT);
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_port_gas(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_gas(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"BULKHEAD").into();
    fadt.finalize()
}

fn build_madt(vcpus: u8) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", 36, 5, OEM_ID, *b"BLKHAPIC", OEM_REVISION);
    let mut body = Vec::new();
    // Local interrupt controller address, then flags: no PCAT_COMPAT (the hardware-reduced
    // kernel ignores the 8259s; KVM's stay masked behind LINT0).
    body.extend_from_slice(&(layout::LAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for cpu in 0..vcpus {
        // type, length, processor UID, APIC id, flags (enabled)
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_IO_APIC, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // NMI on LINT1 of all processors (UID 0xff), flags 0: bus-conforming polarity/trigger.
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    madt.append_slice(&body);
    madt
}

fn build_dsdt(config: &AcpiConfig<'_>) -> Sdt {
    let mut body = Vec::new();
    let isa: Vec<Vec<u8>> = config.isa.iter().map(isa_device_aml).collect();
    let virtio: Vec<Vec<u8>> = config
        .virtio
        .iter()
        .enumerate()
        .map(|(i, slot)| virtio_device_aml(i, slot))
        .collect();
    let children: Vec<RawAml> = isa.iter().chain(&virtio).map(|b| RawAml(b)).collect();
    let children: Vec<&dyn Aml> = children.iter().map(|c| c as &dyn Aml).collect();
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"BLKHDSDT", OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt
}

/// Already-encoded AML, so devices can be built one at a time and then nested.
struct RawAml<'a>(&'a [u8]);

impl Aml for RawAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.0);
    }
}

fn virtio_device_aml(index: usize, slot: &VirtioMmioSlot) -> Vec<u8> {
    // validate() checked base + size <= 4 GiB and gsi < 24.
    let mem = aml::Memory32Fixed::new(true, slot.base as u32, slot.size as u32);
    // Consumer, edge-triggered, active high, exclusive: how the irqfd behaves.
    let irq = aml::Interrupt::new(true, true, false, false, slot.gsi);
    let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
    let uid = index as u32;
    let name = format!("VR{index:02X}");
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &uid);
    let cca = aml::Name::new("_CCA".into(), &1u8);
    let crs = aml::Name::new("_CRS".into(), &crs);
    to_bytes(&aml::Device::new(
        name.as_str().into(),
        vec![&hid, &uid, &cca, &crs],
    ))
}

fn isa_device_aml(dev: &IsaDevice) -> Vec<u8> {
    let (name, eisa, uid, port, len, irq) = match *dev {
        IsaDevice::Serial { uid, port, irq } => {
            (format!("COM{uid}"), "PNP0501", uid, port, 8u8, irq)
        }
        IsaDevice::Rtc { port, irq } => ("RTC_".to_string(), "PNP0B00", 0, port, 2u8, irq),
    };
    let io = aml::IO::new(port, port, 1, len);
    let irq = aml::Interrupt::new(true, true, false, false, u32::from(irq));
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new(eisa));
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    to_bytes(&aml::Device::new(
        name.as_str().into(),
        vec![&hid, &uid, &crs],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM_SIZE: usize = 0x20_0000;

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn slots(n: u32) -> Vec<VirtioMmioSlot> {
        (0..n).map(VirtioMmioSlot::standard).collect()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Reads a whole table (its length is in the header) and checks its checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, 36);
        assert_eq!(&header[0..4], signature, "signature at {addr:#x}");
        let t = read(mem, addr, u32_at(&header, 4) as usize);
        assert_eq!(
            sum(&t),
            0,
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        t
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| w == &needle)
            .count()
    }

    struct Parsed {
        rsdp: u64,
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
        /// Every table's start and length.
        spans: Vec<(u64, u64)>,
    }

    /// Walks the tables the way the guest does: RSDP → XSDT → FADT/MADT, FADT → DSDT.
    fn build_and_parse(vcpus: u8, virtio: &[VirtioMmioSlot], isa: &[IsaDevice]) -> Parsed {
        let mem = guest_memory();
        let config = AcpiConfig { vcpus, virtio, isa };
        let rsdp = create_acpi_tables(&mem, &config).unwrap().0;
        let r = read(&mem, rsdp, 36);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[0..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(&r), 0, "RSDP extended checksum");
        assert_eq!(r[15], 2, "RSDP revision 2 (has an XSDT)");
        let xsdt_addr = u64_at(&r, 24);
        let xsdt = table(&mem, xsdt_addr, b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        let mut fadt = None;
        let mut madt = None;
        let mut spans = vec![(rsdp, 36), (xsdt_addr, xsdt.len() as u64)];
        for e in entries {
            let sig = read(&mem, e, 4);
            match &sig[..] {
                b"FACP" => fadt = Some((e, table(&mem, e, b"FACP"))),
                b"APIC" => madt = Some((e, table(&mem, e, b"APIC"))),
                other => panic!("unexpected table {other:?}"),
            }
        }
        let (fadt_addr, fadt) = fadt.expect("XSDT points to the FADT");
        let (madt_addr, madt) = madt.expect("XSDT points to the MADT");
        let dsdt_addr = u64_at(&fadt, 140);
        let dsdt = table(&mem, dsdt_addr, b"DSDT");
        spans.push((fadt_addr, fadt.len() as u64));
        spans.push((madt_addr, madt.len() as u64));
        spans.push((dsdt_addr, dsdt.len() as u64));
        Parsed {
            rsdp,
            fadt,
            madt,
            dsdt,
            spans,
        }
    }

    #[test]
    fn rsdp_sits_at_the_start_of_the_bios_scan_area() {
        let p = build_and_parse(1, &[], &[]);
        assert_eq!(p.rsdp, 0xe0000);
    }

    #[test]
    fn all_tables_lie_in_the_reserved_area_without_overlap() {
        let mut p = build_and_parse(8, &slots(8), &[IsaDevice::COM1, IsaDevice::RTC]);
        p.spans.sort();
        for (start, len) in &p.spans {
            assert!(*start >= layout::ACPI_TABLES_START);
            assert!(start + len <= layout::ACPI_TABLES_END);
        }
        for w in p.spans.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_ports() {
        let p = build_and_parse(2, &slots(1), &[IsaDevice::COM1]);
        let flags = u32_at(&p.fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // reset_reg GAS at 116: space id 1 (I/O), 8 bits, address at +4.
        assert_eq!(p.fadt[116], 1);
        assert_eq!(p.fadt[117], 8);
        assert_eq!(u64_at(&p.fadt, 120), u64::from(layout::ACPI_RESET_PORT));
        assert_eq!(p.fadt[128], layout::ACPI_RESET_VALUE);
        // sleep control at 244, sleep status at 256.
        assert_eq!(p.fadt[244], 1);
        assert_eq!(
            u64_at(&p.fadt, 248),
            u64::from(layout::ACPI_SLEEP_CONTROL_PORT)
        );
        assert_eq!(p.fadt[256], 1);
        assert_eq!(
            u64_at(&p.fadt, 260),
            u64::from(layout::ACPI_SLEEP_STATUS_PORT)
        );
        let boot_arch = u16::from_le_bytes([p.fadt[109], p.fadt[110]]);
        assert_eq!(boot_arch & 0b10, 0, "no 8042 declared");
        assert_ne!(boot_arch & IAPC_VGA_NOT_PRESENT, 0);
        assert_ne!(
            boot_arch & IAPC_CMOS_RTC_NOT_PRESENT,
            0,
            "no RTC was configured"
        );
    }

    #[test]
    fn fadt_declares_the_rtc_when_configured() {
        let p = build_and_parse(1, &[], &[IsaDevice::RTC]);
        let boot_arch = u16::from_le_bytes([p.fadt[109], p.fadt[110]]);
        assert_eq!(boot_arch & IAPC_CMOS_RTC_NOT_PRESENT, 0);
    }

    #[test]
    fn madt_has_one_enabled_local_apic_per_vcpu_and_the_ioapic() {
        for vcpus in [1u8, 2, 7, MAX_VCPUS] {
            let p = build_and_parse(vcpus, &[], &[]);
            assert_eq!(u32_at(&p.madt, 36), layout::LAPIC_ADDR as u32);
            let mut lapic_ids = Vec::new();
            let mut ioapics = Vec::new();
            let mut nmis = 0;
            let mut off = 44;
            while off < p.madt.len() {
                let (kind, len) = (p.madt[off], p.madt[off + 1] as usize);
                assert!(len >= 2, "entry length");
                match kind {
                    MADT_LOCAL_APIC => {
                        assert_eq!(p.madt[off + 2], p.madt[off + 3], "UID = APIC id");
                        assert_eq!(u32_at(&p.madt, off + 4), 1, "enabled");
                        lapic_ids.push(p.madt[off + 3]);
                    }
                    MADT_IO_APIC => ioapics.push((
                        p.madt[off + 2],
                        u32_at(&p.madt, off + 4),
                        u32_at(&p.madt, off + 8),
                    )),
                    MADT_LOCAL_APIC_NMI => {
                        assert_eq!(p.madt[off + 5], 1, "LINT1");
                        nmis += 1;
                    }
                    other => panic!("unexpected MADT entry {other}"),
                }
                off += len;
            }
            assert_eq!(off, p.madt.len(), "entries fill the table exactly");
            assert_eq!(lapic_ids, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(ioapics, vec![(IOAPIC_ID, layout::IOAPIC_ADDR as u32, 0)]);
            assert_eq!(nmis, 1);
        }
    }

    #[test]
    fn dsdt_has_s5_once_and_one_virtio_node_per_window() {
        for n in [0u32, 1, 3, 8] {
            let p = build_and_parse(1, &slots(n), &[IsaDevice::COM1, IsaDevice::RTC]);
            assert_eq!(count(&p.dsdt, b"_S5_"), 1);
            assert_eq!(count(&p.dsdt, b"LNRO0005"), n as usize);
            for i in 0..n {
                let slot = VirtioMmioSlot::standard(i);
                // Memory32Fixed: tag 0x86, length 9, read-write, base, size.
                let mut mem32 = vec![0x86, 9, 0, 1];
                mem32.extend_from_slice(&(slot.base as u32).to_le_bytes());
                mem32.extend_from_slice(&(slot.size as u32).to_le_bytes());
                assert_eq!(count(&p.dsdt, &mem32), 1, "window {i}");
                // Extended interrupt: tag 0x89, length 6, consumer|edge (0b11), one GSI.
                let mut irq = vec![0x89, 6, 0, 0b0011, 1];
                irq.extend_from_slice(&slot.gsi.to_le_bytes());
                assert_eq!(count(&p.dsdt, &irq), 1, "interrupt of window {i}");
                assert_eq!(count(&p.dsdt, format!("VR{i:02X}").as_bytes()), 1);
            }
        }
    }

    #[test]
    fn every_virtio_window_gets_its_own_pin_and_window_clear_of_legacy_devices() {
        let all = slots(layout::VIRTIO_MMIO_MAX_DEVICES as u32);
        let mut pins: Vec<u32> = all.iter().map(|s| s.gsi).collect();
        pins.sort_unstable();
        pins.dedup();
        assert_eq!(pins.len(), all.len(), "distinct pins");
        for s in &all {
            assert!(s.gsi < IOAPIC_PINS, "{s:?}");
            assert!(!layout::VIRTIO_RESERVED_IRQS.contains(&s.gsi), "{s:?}");
            assert!(s.base + s.size <= layout::FRAMEBUFFER_ADDR, "{s:?}");
        }
        for legacy in [crate::devices::legacy::serial::COM1_IRQ, 8, 0, 1, 12] {
            assert!(layout::VIRTIO_RESERVED_IRQS.contains(&legacy));
        }
        for pair in all.windows(2) {
            assert_eq!(
                pair[0].base + pair[0].size,
                pair[1].base,
                "adjacent windows"
            );
        }
        // The whole budget with the ISA devices makes valid tables, each pin declared once.
        let p = build_and_parse(2, &all, &[IsaDevice::COM1, IsaDevice::RTC]);
        assert_eq!(count(&p.dsdt, b"LNRO0005"), all.len());
        for s in &all {
            let mut irq = vec![0x89, 6, 0, 0b0011, 1];
            irq.extend_from_slice(&s.gsi.to_le_bytes());
            assert_eq!(count(&p.dsdt, &irq), 1, "{s:?}");
        }
        // One past the budget has no pin.
        let past = VirtioMmioSlot::standard(layout::VIRTIO_MMIO_MAX_DEVICES as u32);
        assert_eq!(past.gsi, u32::MAX);
    }

    #[test]
    fn a_pin_or_window_given_twice_is_refused() {
        let mem = guest_memory();
        let acpi = |virtio: &[VirtioMmioSlot], isa: &[IsaDevice]| {
            create_acpi_tables(
                &mem,
                &AcpiConfig {
                    vcpus: 1,
                    virtio,
                    isa,
                },
            )
        };
        let a = VirtioMmioSlot::standard(0);
        let b = VirtioMmioSlot {
            gsi: a.gsi,
            ..VirtioMmioSlot::standard(1)
        };
        assert_eq!(acpi(&[a, b], &[]), Err(AcpiError::SharedGsi { gsi: a.gsi }));
        let on_com1 = VirtioMmioSlot { gsi: 4, ..a };
        assert_eq!(
            acpi(&[on_com1], &[IsaDevice::COM1]),
            Err(AcpiError::SharedGsi { gsi: 4 })
        );
        let overlapping = VirtioMmioSlot {
            base: a.base + 0x800,
            ..VirtioMmioSlot::standard(1)
        };
        assert_eq!(
            acpi(&[a, overlapping], &[]),
            Err(AcpiError::OverlappingSlots {
                a: a.base,
                b: a.base + 0x800
            })
        );
    }

    #[test]
    fn s5_package_declares_the_sleep_type_the_pm_device_expects() {
        let p = build_and_parse(1, &[], &[]);
        let at = p.dsdt.windows(4).position(|w| w == b"_S5_").unwrap();
        // NameOp "_S5_" PackageOp PkgLength NumElements BytePrefix SLP_TYP
        assert_eq!(p.dsdt[at + 4], 0x12, "package");
        assert_eq!(p.dsdt[at + 6], 4, "four elements");
        assert_eq!(&p.dsdt[at + 7..at + 9], &[0x0a, S5_SLEEP_TYPE]);
    }

    #[test]
    fn dsdt_declares_isa_devices_with_their_irqs() {
        let p = build_and_parse(1, &[], &[IsaDevice::COM1, IsaDevice::RTC]);
        assert_eq!(count(&p.dsdt, b"COM1"), 1);
        assert_eq!(count(&p.dsdt, b"RTC_"), 1);
        // IO descriptor for 0x3f8, 8 ports.
        assert_eq!(count(&p.dsdt, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
        let mut irq4 = vec![0x89, 6, 0, 0b0011, 1];
        irq4.extend_from_slice(&4u32.to_le_bytes());
        assert_eq!(count(&p.dsdt, &irq4), 1);
    }

    #[test]
    fn bad_configurations_are_refused_with_the_value() {
        let mem = guest_memory();
        let make = |vcpus, virtio: &[VirtioMmioSlot], isa: &[IsaDevice]| {
            create_acpi_tables(&mem, &AcpiConfig { vcpus, virtio, isa })
        };
        assert_eq!(make(0, &[], &[]), Err(AcpiError::NoVcpus));
        assert_eq!(
            make(255, &[], &[]),
            Err(AcpiError::TooManyVcpus { count: 255 })
        );
        let high = VirtioMmioSlot {
            base: 0xffff_f800,
            size: 0x1000,
            gsi: 16,
        };
        assert_eq!(
            make(1, &[high], &[]),
            Err(AcpiError::SlotNotAddressable {
                base: 0xffff_f800,
                size: 0x1000
            })
        );
        let bad_gsi = VirtioMmioSlot {
            gsi: 24,
            ..VirtioMmioSlot::standard(0)
        };
        assert_eq!(make(1, &[bad_gsi], &[]), Err(AcpiError::BadGsi { gsi: 24 }));
        let com10 = IsaDevice::Serial {
            uid: 10,
            port: 0x2f8,
            irq: 3,
        };
        assert_eq!(
            make(1, &[], &[com10]),
            Err(AcpiError::BadSerialUid { uid: 10 })
        );
        let err = make(1, &[bad_gsi], &[]).unwrap_err().to_string();
        assert!(err.contains("24"), "{err}");
    }

    #[test]
    fn memory_without_the_bios_area_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let err = create_acpi_tables(
            &mem,
            &AcpiConfig {
                vcpus: 1,
                virtio: &[],
                isa: &[],
            },
        )
        .unwrap_err();
        assert!(matches!(err, AcpiError::GuestMemory { .. }), "{err}");
    }

    /// Disassembles the DSDT with iasl when it is installed (apt package acpica-tools).
    #[test]
    fn dsdt_disassembles_with_iasl() {
        let Ok(status) = std::process::Command::new("iasl").arg("-v").output() else {
            eprintln!("SKIPPED: iasl not installed (apt-get install acpica-tools)");
            return;
        };
        assert!(status.status.success());
        let p = build_and_parse(2, &slots(3), &[IsaDevice::COM1, IsaDevice::RTC]);
        let dir = tempfile::tempdir().unwrap();
        let aml = dir.path().join("dsdt.aml");
        std::fs::write(&aml, &p.dsdt).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&aml)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
        assert_eq!(dsl.matches("\"LNRO0005\"").count(), 3, "{dsl}");
        assert!(dsl.contains("Name (_S5, Package"), "{dsl}");
        assert!(
            dsl.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive"),
            "{dsl}"
        );
        assert!(dsl.contains("0xD0002000"), "{dsl}");
        assert!(dsl.contains("EisaId (\"PNP0501\")"), "{dsl}");
    }
}
