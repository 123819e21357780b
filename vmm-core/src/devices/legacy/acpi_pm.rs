//! ACPI power management registers (hardware-reduced sleep control, reset).
//!
//! The FADT built by the ACPI tables points the guest's sleep control, sleep status and
//! reset registers at three consecutive I/O ports starting at
//! [`layout::ACPI_SLEEP_CONTROL_PORT`]. Linux powers off by writing
//! `SLP_EN | SLP_TYP << 2` to sleep control, with `SLP_TYP` taken from the DSDT's `_S5_`
//! package ([`crate::layout::S5_SLEEP_TYPE`]), and reboots by writing the FADT's reset value
//! to the reset register.

use std::sync::Arc;

use tracing::debug;

use crate::devices::{BusDevice, StopHandle, StopReason};
use crate::layout;

/// Bits of the hardware-reduced sleep control register (ACPI 6.5, 4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
pub const SLP_TYP_SHIFT: u8 = 2;
pub const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;

/// Register offsets inside the port range.
pub const SLEEP_CONTROL: u64 = 0;
pub const SLEEP_STATUS: u64 =
    (layout::ACPI_SLEEP_STATUS_PORT - layout::ACPI_SLEEP_CONTROL_PORT) as u64;
pub const RESET: u64 = (layout::ACPI_RESET_PORT - layout::ACPI_SLEEP_CONTROL_PORT) as u64;
/// Ports the device occupies, from [`layout::ACPI_SLEEP_CONTROL_PORT`].
pub const PORT_RANGE_LEN: u64 = RESET + 1;

pub struct AcpiPm {
    stop: Arc<StopHandle>,
}

impl AcpiPm {
    pub fn new(stop: Arc<StopHandle>) -> Self {
        Self { stop }
    }

    fn write_sleep_control(&self, value: u8) {
        let sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if value & SLP_EN == 0 {
            return;
        }
        if sleep_type == crate::layout::S5_SLEEP_TYPE {
            crate::limited!(info, "guest requested ACPI power-off (S5)");
            self.stop.request(StopReason::PowerOff);
        } else {
            // Only _S5_ is declared; a guest asking for another state gets nothing.
            debug!(
                sleep_type,
                "ACPI sleep request for an undeclared state ignored"
            );
        }
    }
}

impl BusDevice for AcpiPm {
    // No registers hold state: status reads as zero, the rest is write-only.
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        crate::devices::persist::encode(&())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        crate::devices::persist::decode::<()>(state)
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS never set (the partition never sleeps); the other
        // registers are write-only.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // The FADT declares byte registers; a wider access is taken as its low byte.
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL => self.write_sleep_control(value),
            // Write-1-to-clear of status bits that are never set.
            SLEEP_STATUS => {}
            RESET if value == layout::ACPI_RESET_VALUE => {
                crate::limited!(
                    info,
                    "guest requested reset through the ACPI reset register"
                );
                self.stop.request(StopReason::Reset);
            }
            _ => debug!(offset, value, "ACPI PM write ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (AcpiPm, Arc<StopHandle>) {
        let stop = StopHandle::new().unwrap();
        (AcpiPm::new(stop.clone()), stop)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut pm, stop) = device();
        // What Linux's acpi_hw_extended_sleep writes for S5.
        let value = (crate::layout::S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN;
        pm.write(SLEEP_CONTROL, &[value]);
        assert_eq!(stop.reason(), Some(StopReason::PowerOff));
        assert_eq!(stop.event().read().unwrap(), 1);
    }

    #[test]
    fn sleep_type_without_slp_en_does_nothing() {
        let (mut pm, stop) = device();
        pm.write(
            SLEEP_CONTROL,
            &[crate::layout::S5_SLEEP_TYPE << SLP_TYP_SHIFT],
        );
        assert_eq!(stop.reason(), None);
    }

    #[test]
    fn undeclared_sleep_states_are_ignored() {
        let (mut pm, stop) = device();
        for typ in (0..8u8).filter(|&t| t != crate::layout::S5_SLEEP_TYPE) {
            pm.write(SLEEP_CONTROL, &[(typ << SLP_TYP_SHIFT) | SLP_EN]);
        }
        assert_eq!(stop.reason(), None);
    }

    #[test]
    fn reset_register_value_requests_reset() {
        let (mut pm, stop) = device();
        pm.write(RESET, &[0x42]);
        assert_eq!(stop.reason(), None, "only the FADT's reset value resets");
        pm.write(RESET, &[layout::ACPI_RESET_VALUE]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn reads_are_zero_and_odd_accesses_are_harmless() {
        let (mut pm, stop) = device();
        let mut buf = [0xffu8; 4];
        pm.read(SLEEP_STATUS, &mut buf);
        assert_eq!(buf, [0; 4]);
        pm.write(SLEEP_STATUS, &[0xff]);
        pm.write(SLEEP_CONTROL, &[]);
        pm.write(7, &[0xff, 0xff]);
        assert_eq!(stop.reason(), None);
    }

    #[test]
    fn port_range_matches_layout() {
        assert_eq!(
            layout::ACPI_SLEEP_CONTROL_PORT as u64 + PORT_RANGE_LEN - 1,
            layout::ACPI_RESET_PORT as u64
        );
    }
}
