//! x86_64 specifics: boot protocol structures, CPUID, MP table, initial register state.

pub mod boot;
pub mod cpuid;
pub mod mptable;
pub mod regs;
pub mod vmlinux;
