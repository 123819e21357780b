//! A minimal i8042 keyboard controller: enough for Linux to probe it quickly, and the
//! CPU reset line (command 0xfe) that `reboot=k` uses.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::devices::{byte_register_read, BusDevice, StopHandle, StopReason};

pub const I8042_PORT: u16 = 0x60;
/// Ports 0x60..=0x64; 0x61 belongs to the PIT speaker and is handled by KVM.
pub const I8042_LEN: u64 = 5;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_RESET_CPU: u8 = 0xfe;
const MAX_QUEUED: usize = 16;

pub struct I8042 {
    ctr: u8,
    out: VecDeque<u8>,
    expecting_ctr: bool,
    last_was_command: bool,
    stop: Arc<StopHandle>,
}

impl I8042 {
    pub fn new(stop: Arc<StopHandle>) -> Self {
        Self {
            ctr: 0x47,
            out: VecDeque::new(),
            expecting_ctr: false,
            last_was_command: false,
            stop,
        }
    }

    fn push(&mut self, byte: u8) {
        if self.out.len() < MAX_QUEUED {
            self.out.push_back(byte);
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_SYSTEM_FLAG;
        if !self.out.is_empty() {
            s |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            s |= STATUS_COMMAND;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR => self.expecting_ctr = true,
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST | CMD_AUX_TEST => self.push(0x00),
            CMD_RESET_CPU => self.stop.request(StopReason::Reset),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.last_was_command = false;
        if std::mem::take(&mut self.expecting_ctr) {
            self.ctr = byte;
        }
        // Bytes for the keyboard itself get no answer: there is no PS/2 keyboard, the
        // guest's input comes through virtio-input.
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct I8042State {
    ctr: u8,
    out: Vec<u8>,
    expecting_ctr: bool,
    last_was_command: bool,
}

impl BusDevice for I8042 {
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        crate::devices::persist::encode(&I8042State {
            ctr: self.ctr,
            out: self.out.iter().copied().collect(),
            expecting_ctr: self.expecting_ctr,
            last_was_command: self.last_was_command,
        })
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        let s: I8042State = crate::devices::persist::decode(state)?;
        if s.out.len() > MAX_QUEUED {
            return Err(crate::devices::persist::PersistError::Mismatch(format!(
                "{} queued i8042 bytes (at most {MAX_QUEUED})",
                s.out.len()
            )));
        }
        self.ctr = s.ctr;
        self.out = s.out.into();
        self.expecting_ctr = s.expecting_ctr;
        self.last_was_command = s.last_was_command;
        Ok(())
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.out.pop_front().unwrap_or(0),
            4 => self.status(),
            _ => 0xff,
        };
        byte_register_read(data, value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            0 => self.data(byte),
            4 => self.command(byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_a_reset() {
        let stop = StopHandle::new().unwrap();
        let mut dev = I8042::new(stop.clone());
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn controller_config_round_trips_and_self_test_passes() {
        let mut dev = I8042::new(StopHandle::new().unwrap());
        dev.write(4, &[CMD_WRITE_CTR]);
        dev.write(0, &[0x65]);
        dev.write(4, &[CMD_READ_CTR]);
        let mut b = [0u8];
        dev.read(4, &mut b);
        assert_ne!(b[0] & STATUS_OUTPUT_FULL, 0);
        dev.read(0, &mut b);
        assert_eq!(b[0], 0x65);
        dev.write(4, &[CMD_SELF_TEST]);
        dev.read(0, &mut b);
        assert_eq!(b[0], 0x55);
        dev.read(4, &mut b);
        assert_eq!(b[0] & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn a_flood_of_commands_does_not_grow_the_queue_without_bound() {
        let mut dev = I8042::new(StopHandle::new().unwrap());
        for _ in 0..10_000 {
            dev.write(4, &[CMD_SELF_TEST]);
        }
        assert_eq!(dev.out.len(), MAX_QUEUED);
    }
}
