//! One Bulkhead partition: a KVM virtual machine with its memory map, vCPUs, boot
//! path and devices. No GUI and no policy language here: a partition is launched from a
//! plain [`launch::LaunchConfig`] and the files handed with it.
//!
//! Layers, each using only the ones below it: the `bulkhead-vmm` binary (flags) ->
//! [`partition`] (run loop, supervised or bare) -> [`control`] (protocol) and [`builder`]
//! (assembles a VM) -> [`vstate`] / [`arch`] / [`acpi`] -> [`devices`]; [`launch`],
//! [`layout`], [`evdev`] and the shared-memory types are plain data every layer may use.

pub mod acpi;
pub mod arch;
pub mod builder;
pub mod control;
pub mod devices;
pub mod evdev;
pub mod hostcheck;
pub mod launch;
pub mod layout;
pub mod microguest;
pub mod partition;
pub mod sandbox;
pub mod shm;
pub mod snapshot;
pub mod vmm;
pub mod vstate;
