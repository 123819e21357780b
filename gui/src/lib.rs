//! The `bulkhead` desktop app as a library, so the snapshot tests and the benchmark can
//! drive the same `App` the binary runs. Without the `desktop` feature it is only the
//! supervisor, which the lab's static test driver links.

#[cfg(feature = "desktop")]
pub mod app;
#[cfg(feature = "desktop")]
pub mod display;
#[cfg(feature = "desktop")]
pub mod input;
pub mod supervisor;
