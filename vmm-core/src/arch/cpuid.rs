//! Per-vCPU CPUID: what KVM supports, with the topology filled in and the hypervisor
//! bit and KVM paravirt leaves kept so the guest uses kvm-clock.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Supported(kvm_ioctls::Error),
    #[error(
        "KVM does not report the paravirtual leaf 0x40000001; the guest would not use kvm-clock"
    )]
    NoKvmLeaves,
}

const HYPERVISOR_BIT: u32 = 1 << 31;
const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

/// KVM's supported CPUID, without checking for the paravirtual leaves.
pub fn supported_unchecked(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)
}

/// KVM's supported CPUID; fails when the KVM leaves a stock kernel needs are missing.
pub fn supported(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    let cpuid = supported_unchecked(kvm)?;
    let has_kvm_leaves = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == KVM_FEATURES_LEAF);
    let has_signature = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == KVM_SIGNATURE_LEAF);
    if !(has_kvm_leaves && has_signature) {
        return Err(CpuidError::NoKvmLeaves);
    }
    Ok(cpuid)
}

/// Fills leaf 1 (APIC id, logical processor count, CLFLUSH line), the x2APIC id in the
/// extended topology leaves, and sets the hypervisor bit.
pub fn for_vcpu(base: &CpuId, cpu_index: u8, cpu_count: u8) -> CpuId {
    let mut cpuid = base.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (u32::from(cpu_index) << 24)
                    | (u32::from(cpu_count) << 16)
                    | (8 << 8) // CLFLUSH line size in 8-byte units
                    | (entry.ebx & 0xff);
                entry.ecx |= HYPERVISOR_BIT;
                if cpu_count > 1 {
                    entry.edx |= 1 << 28; // HTT: the logical count in EBX is valid
                }
            }
            0xb | 0x1f => {
                entry.edx = u32::from(cpu_index);
                // Level 0 (SMT): one thread per core; level 1 (core): all vCPUs.
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = u32::BITS - u32::from(cpu_count.max(1) - 1).leading_zeros();
                        entry.ebx = u32::from(cpu_count);
                        entry.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn base() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_ff00,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let c = for_vcpu(&base(), 3, 4);
        let l1 = c.as_slice()[0];
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!((l1.ebx >> 8) & 0xff, 8);
        assert_ne!(l1.ecx & HYPERVISOR_BIT, 0);
    }

    #[test]
    fn extended_topology_reports_x2apic_id() {
        let c = for_vcpu(&base(), 5, 8);
        let lb = c.as_slice()[1];
        assert_eq!(lb.edx, 5);
        assert_eq!(lb.ebx, 8);
        assert_eq!(lb.eax, 3);
    }
}
