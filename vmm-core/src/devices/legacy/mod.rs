//! Legacy PC devices: serial, i8042, CMOS.
