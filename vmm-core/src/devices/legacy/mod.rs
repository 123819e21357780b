//! Legacy PC devices: 16550 serial, i8042 (reset line), CMOS RTC.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod serial;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::{SerialConsole, SerialSink, SerialTap};
