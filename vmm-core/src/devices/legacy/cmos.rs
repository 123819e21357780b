//! A tiny CMOS/RTC on ports 0x70/0x71: the wall clock in BCD and a register D that says
//! the battery is fine, so the guest reads the time without long polling loops.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::devices::{byte_register_read, BusDevice};

pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

pub struct Cmos {
    index: u8,
    /// Plain CMOS RAM for everything that is not the clock.
    ram: [u8; 128],
}

fn bcd(v: u64) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// (year, month, day, weekday 1=Sunday, hour, minute, second) in UTC.
fn civil_from_unix(secs: u64) -> (u64, u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 4) % 7 + 1; // 1970-01-01 was a Thursday
    (
        year as u64,
        month as u64,
        day as u64,
        weekday,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

impl Default for Cmos {
    fn default() -> Self {
        Self {
            index: 0,
            ram: [0; 128],
        }
    }
}

impl Cmos {
    fn register(&self, index: u8) -> u8 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (y, mo, d, wd, h, mi, s) = civil_from_unix(now);
        match index {
            REG_SECONDS => bcd(s),
            REG_MINUTES => bcd(mi),
            REG_HOURS => bcd(h),
            REG_WEEKDAY => bcd(wd),
            REG_DAY => bcd(d),
            REG_MONTH => bcd(mo),
            REG_YEAR => bcd(y % 100),
            REG_CENTURY => bcd(y / 100),
            REG_A => 0x26, // no update in progress
            REG_B => 0x02, // 24-hour, BCD
            REG_C => 0x00,
            REG_D => 0x80, // valid RAM and time
            i => self.ram[usize::from(i & 0x7f)],
        }
    }
}

/// The clock registers are read from the host's clock, so only the index and RAM count.
#[derive(serde::Serialize, serde::Deserialize)]
struct CmosState {
    index: u8,
    ram: Vec<u8>,
}

impl BusDevice for Cmos {
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        crate::devices::persist::encode(&CmosState {
            index: self.index,
            ram: self.ram.to_vec(),
        })
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        let s: CmosState = crate::devices::persist::decode(state)?;
        self.ram = s.ram.as_slice().try_into().map_err(|_| {
            crate::devices::persist::PersistError::Mismatch(format!(
                "CMOS RAM of {} bytes, not 128",
                s.ram.len()
            ))
        })?;
        self.index = s.index;
        Ok(())
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            1 => self.register(self.index),
            _ => 0xff,
        };
        byte_register_read(data, value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            // Bit 7 is the NMI mask, not part of the index.
            0 => self.index = byte & 0x7f,
            1 => self.ram[usize::from(self.index)] = byte,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_epoch_and_a_leap_day_convert_correctly() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 5, 0, 0, 0));
        // 2024-02-29 12:34:56 UTC
        assert_eq!(civil_from_unix(1_709_210_096), (2024, 2, 29, 5, 12, 34, 56));
    }

    #[test]
    fn clock_registers_are_bcd_and_status_says_valid() {
        let mut c = Cmos::default();
        let mut b = [0u8];
        c.write(0, &[0x8d]);
        c.read(1, &mut b);
        assert_eq!(b[0], 0x80);
        c.write(0, &[REG_MONTH]);
        c.read(1, &mut b);
        assert!((0x01..=0x12).contains(&b[0]) && b[0] & 0xf <= 9);
    }

    #[test]
    fn ram_beyond_the_clock_is_plain_storage() {
        let mut c = Cmos::default();
        c.write(0, &[0x40]);
        c.write(1, &[0xab]);
        let mut b = [0u8];
        c.read(1, &mut b);
        assert_eq!(b[0], 0xab);
    }
}
