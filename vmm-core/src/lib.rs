//! One Bulkhead partition: a KVM virtual machine with its memory map, vCPUs, boot
//! path and devices. No GUI and no policy language here: the caller hands in a plain,
//! resolved [`builder::VmConfig`].

pub mod acpi;
pub mod arch;
pub mod builder;
pub mod cli;
pub mod control;
pub mod devices;
pub mod guest_image;
pub mod hostcheck;
pub mod layout;
pub mod microguest;
pub mod partition;
pub mod sandbox;
pub mod shm;
pub mod vmm;
pub mod vstate;
