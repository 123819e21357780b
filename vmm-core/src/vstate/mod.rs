//! VM-level state: the KVM VM, guest memory, vCPUs.

pub mod exits;
pub mod memory;
pub mod vcpu;
pub mod vm;
