//! The `bulkhead` desktop app as a library, so the snapshot tests and the benchmark can
//! drive the same `App` the binary runs.

pub mod app;
pub mod display;
pub mod input;
pub mod supervisor;
