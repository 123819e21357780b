//! ACPI power management registers (hardware-reduced sleep control, reset).
