//! An address-range bus for port I/O and MMIO devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes inside its registered range.
///
/// `offset` is relative to the device's base. `data` is the access width the guest used
/// (1, 2, 4 or 8 bytes; anything else must be tolerated). Guest-controlled values must be
/// checked: a device must never panic on what a guest writes.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);

    /// This device's state for a snapshot (see [`super::persist`]). The default refuses.
    fn save_state(&self) -> Result<Vec<u8>, super::persist::PersistError> {
        Err(super::persist::PersistError::Unsupported(
            "this device".into(),
        ))
    }

    /// Takes back what [`BusDevice::save_state`] returned, before the guest runs.
    fn restore_state(&mut self, _state: &[u8]) -> Result<(), super::persist::PersistError> {
        Err(super::persist::PersistError::Unsupported(
            "this device".into(),
        ))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {base:#x} has zero length or wraps around")]
    BadRange { base: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base })?;
        let overlaps_before = self
            .devices
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps_before {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// Every device with its base address, in address order.
    pub fn devices(&self) -> impl Iterator<Item = (u64, &Arc<Mutex<dyn BusDevice>>)> {
        self.devices.iter().map(|(base, e)| (*base, &e.device))
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((addr - base, &entry.device))
    }

    /// Returns false when no device claims `addr`; the caller decides what an unclaimed
    /// access means (reads of nothing return all ones on real hardware).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

impl Bus {
    /// A string instruction's port reads (`rep insb` and friends): `data` holds
    /// `data.len() / unit` accesses of `unit` bytes each, all to `addr`, filled in order
    /// under one lock of the device. A `unit` that does not divide `data` (or is 0) makes
    /// it one access, as before. Returns false when no device claims `addr`.
    pub fn read_units(&self, addr: u64, data: &mut [u8], unit: usize) -> bool {
        let Some((offset, dev)) = self.find(addr) else {
            return false;
        };
        let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
        if unit == 0 || data.len() % unit != 0 {
            dev.read(offset, data);
        } else {
            for chunk in data.chunks_exact_mut(unit) {
                dev.read(offset, chunk);
            }
        }
        true
    }

    /// A string instruction's port writes (`rep outsb` and friends): every `unit`-byte
    /// access in `data`, in order, to the device at `addr`. See [`Bus::read_units`].
    pub fn write_units(&self, addr: u64, data: &[u8], unit: usize) -> bool {
        let Some((offset, dev)) = self.find(addr) else {
            return false;
        };
        let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
        if unit == 0 || data.len() % unit != 0 {
            dev.write(offset, data);
        } else {
            for chunk in data.chunks_exact(unit) {
                dev.write(offset, chunk);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u8)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn access_is_routed_with_offset_relative_to_base() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x3f8, 8)
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn string_accesses_reach_the_device_unit_by_unit_in_order() {
        let mut bus = Bus::new();
        let echo = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(echo.clone(), 0x3f8, 8).unwrap();
        let bytes: Vec<u8> = (0..=255).collect();
        assert!(bus.write_units(0x3f8, &bytes, 1));
        assert!(bus.write_units(0x3f9, &[7, 0, 8, 0], 2));
        assert!(!bus.write_units(0x500, &bytes, 1));
        let got = std::mem::take(&mut echo.lock().unwrap().0);
        let want: Vec<(u64, u8)> = bytes
            .iter()
            .map(|b| (0, *b))
            .chain([(1, 7), (1, 8)])
            .collect();
        assert_eq!(got, want);
        // A unit that does not divide the data is one access, as a plain OUT would be.
        assert!(bus.write_units(0x3f8, &[1, 2, 3], 2));
        assert!(bus.write_units(0x3f8, &[4], 0));
        assert_eq!(echo.lock().unwrap().0, [(0, 1), (0, 4)]);
        let mut d = [0u8; 6];
        assert!(bus.read_units(0x3fa, &mut d, 2));
        assert_eq!(d, [2; 6]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x100, 0x10)
            .unwrap();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        assert!(bus.insert(dev.clone(), 0x10f, 1).is_err());
        assert!(bus.insert(dev.clone(), 0xf8, 0x10).is_err());
        assert!(bus.insert(dev.clone(), 0x110, 1).is_ok());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }
}
