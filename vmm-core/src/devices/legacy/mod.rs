//! Legacy PC devices: serial, i8042, CMOS.
pub mod acpi_pm;
