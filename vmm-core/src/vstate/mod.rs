//! VM-level state: the KVM VM, guest memory, vCPUs.
