//! The `bulkhead` desktop app as a library, so the snapshot tests and the benchmark can
//! drive the same `App` the binary runs. Partitions run under `bulkhead-supervisor`;
//! [`supervised`] is the app's adapter to it.

pub mod app;
pub mod bundle;
pub mod display;
pub mod input;
pub mod supervised;
pub mod template_build;
