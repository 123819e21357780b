//! Test harness shared by the integration tests: the hardware-virtualization lab runner
//! and the boot benchmark. Micro-guests are assembled with `vmm_core::microguest`.

pub mod bench;
pub mod keymap;
pub mod lab;
