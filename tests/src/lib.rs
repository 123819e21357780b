//! Test harness shared by the integration tests: a tiny x86-64 assembler for
//! micro-guests, and the hardware-virtualization lab runner.

pub mod asm;
pub mod bench;
pub mod lab;
