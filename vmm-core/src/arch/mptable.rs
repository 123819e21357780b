//! The Intel MultiProcessor table: one processor entry per vCPU, an ISA bus, the
//! IO-APIC, ISA IRQ i routed to IO-APIC pin i, LINT0 as ExtINT and LINT1 as NMI.
//! The guest needs this (or an ACPI MADT) to find its interrupt topology.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR};

pub const IOAPIC_ID: u8 = 1;
const MP_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const ISA_BUS_ID: u8 = 0;
const ISA_IRQS: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit the MP table (1..=254)")]
    TooManyCpus(u8),
    #[error("writing the MP table at {addr:#x}: {source}")]
    Write {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

fn processor_entry(apic_id: u8) -> [u8; 20] {
    let mut e = [0u8; 20];
    e[0] = 0; // type: processor
    e[1] = apic_id;
    e[2] = APIC_VERSION;
    e[3] = 0x01 | if apic_id == 0 { 0x02 } else { 0 }; // enabled, bootstrap processor
    e[4..8].copy_from_slice(&0x0000_0600u32.to_le_bytes()); // family 6 signature
    e[8..12].copy_from_slice(&0x0000_0201u32.to_le_bytes()); // FPU | APIC
    e
}

fn bus_entry() -> [u8; 8] {
    let mut e = [0u8; 8];
    e[0] = 1;
    e[1] = ISA_BUS_ID;
    e[2..8].copy_from_slice(b"ISA   ");
    e
}

fn ioapic_entry() -> [u8; 8] {
    let mut e = [0u8; 8];
    e[0] = 2;
    e[1] = IOAPIC_ID;
    e[2] = APIC_VERSION;
    e[3] = 1; // usable
    e[4..8].copy_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    e
}

fn io_interrupt_entry(irq: u8) -> [u8; 8] {
    // Type 3, interrupt type INT, conforming polarity and trigger.
    [3, 0, 0, 0, ISA_BUS_ID, irq, IOAPIC_ID, irq]
}

fn local_interrupt_entry(kind: u8, lint: u8) -> [u8; 8] {
    // Type 4, to every local APIC (0xff).
    [4, kind, 0, 0, ISA_BUS_ID, 0, 0xff, lint]
}

/// The bytes of the floating pointer followed by the configuration table, as placed at
/// `base`.
pub fn build(base: u64, cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.extend_from_slice(&processor_entry(id));
        count += 1;
    }
    entries.extend_from_slice(&bus_entry());
    entries.extend_from_slice(&ioapic_entry());
    count += 2;
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&io_interrupt_entry(irq));
        count += 1;
    }
    entries.extend_from_slice(&local_interrupt_entry(3, 0)); // ExtINT on LINT0
    entries.extend_from_slice(&local_interrupt_entry(1, 1)); // NMI on LINT1
    count += 2;

    let table_addr = base + 16;
    let mut header = [0u8; 44];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header[6] = MP_SPEC_REV;
    header[8..16].copy_from_slice(b"BULKHEAD");
    header[16..28].copy_from_slice(b"PARTITION   ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    let mut table = header.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = [0u8; 16];
    floating[0..4].copy_from_slice(b"_MP_");
    floating[4..8].copy_from_slice(&(table_addr as u32).to_le_bytes());
    floating[8] = 1; // length in 16-byte units
    floating[9] = MP_SPEC_REV;
    floating[10] = checksum(&floating);

    let mut out = floating.to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(MPTABLE_ADDR, cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(|source| MptableError::Write {
            addr: MPTABLE_ADDR,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        let t = build(MPTABLE_ADDR, 4).unwrap();
        assert_eq!(sum(&t[..16]), 0);
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(len, t.len() - 16);
        assert_eq!(sum(&t[16..]), 0);
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_only_cpu0_is_bootstrap() {
        let t = build(MPTABLE_ADDR, 3).unwrap();
        let entries = &t[16 + 44..];
        let procs: Vec<_> = entries.chunks(20).take(3).collect();
        for (i, p) in procs.iter().enumerate() {
            assert_eq!(p[0], 0);
            assert_eq!(p[1], i as u8);
            assert_eq!(p[3] & 2 != 0, i == 0);
        }
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, 3 + 2 + 16 + 2);
    }

    #[test]
    fn zero_or_too_many_cpus_are_refused() {
        assert!(build(MPTABLE_ADDR, 0).is_err());
        assert!(build(MPTABLE_ADDR, 255).is_err());
    }

    #[test]
    fn table_fits_between_ebda_and_the_bios_area() {
        let t = build(MPTABLE_ADDR, 8).unwrap();
        assert!(MPTABLE_ADDR + t.len() as u64 <= 0xa0000);
    }
}
