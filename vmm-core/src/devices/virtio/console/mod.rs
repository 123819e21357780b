//! virtio-console (virtio 1.2, 5.3) with a single port: the byte stream between the guest
//! agent (`/dev/hvc0`) and the partition process.
//!
//! Without `VIRTIO_CONSOLE_F_MULTIPORT` the device has two queues: receiveq (0, host to
//! guest) and transmitq (1, guest to host). Both directions are buffered in bounded queues
//! on the host side: bytes for the guest wait until the driver posts receive buffers, and
//! guest output waits in its transmit ring (back-pressure) once the host-side buffer is
//! full, so neither side can make the VMM grow without bound.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::mmio::VirtioMmioDevice;
use super::queue::{QueueError, Queues};
use super::{device_type, VirtioDevice};

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Host-side buffer limit in each direction.
pub const BUFFER_LIMIT: usize = 64 * 1024;
/// Bytes taken from one transmit chain at most; the rest of a larger chain is dropped
/// (only a misbehaving driver sends more: Linux sends at most a page per chain).
pub const MAX_TX_CHAIN: usize = BUFFER_LIMIT;

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// struct virtio_console_config: cols, rows (u16), max_nr_ports, emerg_wr (u32).
const CONFIG_LEN: usize = 12;

pub struct VirtioConsole {
    to_guest: VecDeque<u8>,
    from_guest: VecDeque<u8>,
    /// Signalled whenever guest output arrives, so a host thread can poll/epoll on it.
    output_evt: EventFd,
}

impl VirtioConsole {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            to_guest: VecDeque::new(),
            from_guest: VecDeque::new(),
            output_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Queues bytes for the guest; returns how many fit in the host-side buffer.
    fn queue_to_guest(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(BUFFER_LIMIT - self.to_guest.len());
        self.to_guest.extend(&bytes[..n]);
        n
    }

    fn take_from_guest(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.from_guest.len());
        for (dst, src) in buf.iter_mut().zip(self.from_guest.drain(..n)) {
            *dst = src;
        }
        n
    }

    fn fill_receive_queue(&mut self, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        for _ in 0..queues.size(RX_QUEUE) {
            if self.to_guest.is_empty() {
                break;
            }
            let Some(chain) = queues.pop(RX_QUEUE)? else {
                break;
            };
            let room = usize::try_from(chain.writable_len()).unwrap_or(usize::MAX);
            let n = room.min(self.to_guest.len());
            let bytes: Vec<u8> = self.to_guest.drain(..n).collect();
            let written = queues.write_to_chain(RX_QUEUE, &chain, &bytes)?;
            // `written` <= BUFFER_LIMIT.
            queues.add_used(RX_QUEUE, chain.head, written as u32)?;
        }
        Ok(())
    }

    fn drain_transmit_queue(&mut self, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        let before = self.from_guest.len();
        for _ in 0..queues.size(TX_QUEUE) {
            let Some(chain) = queues.pop(TX_QUEUE)? else {
                break;
            };
            let len = usize::try_from(chain.readable_len())
                .unwrap_or(usize::MAX)
                .min(MAX_TX_CHAIN);
            if len > BUFFER_LIMIT - self.from_guest.len() {
                // No room: leave the chain in the ring until the host reads.
                queues.undo_pop(TX_QUEUE);
                break;
            }
            let bytes = queues.read_from_chain(TX_QUEUE, &chain, len)?;
            self.from_guest.extend(bytes);
            queues.add_used(TX_QUEUE, chain.head, 0)?;
        }
        if self.from_guest.len() > before {
            // A full eventfd counter still reads as readable, so the error is harmless.
            let _ = self.output_evt.write(1);
        }
        Ok(())
    }
}

/// Bytes waiting in either direction.
#[derive(serde::Serialize, serde::Deserialize)]
struct ConsoleState {
    to_guest: Vec<u8>,
    from_guest: Vec<u8>,
}

impl VirtioDevice for VirtioConsole {
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        crate::devices::persist::encode(&ConsoleState {
            to_guest: self.to_guest.iter().copied().collect(),
            from_guest: self.from_guest.iter().copied().collect(),
        })
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        let s: ConsoleState = crate::devices::persist::decode(state)?;
        if s.to_guest.len() > BUFFER_LIMIT || s.from_guest.len() > BUFFER_LIMIT {
            return Err(crate::devices::persist::PersistError::Mismatch(format!(
                "console buffers of {} and {} bytes (at most {BUFFER_LIMIT})",
                s.to_guest.len(),
                s.from_guest.len()
            )));
        }
        self.to_guest = s.to_guest.into();
        self.from_guest = s.from_guest.into();
        if !self.from_guest.is_empty() {
            // Whoever reads guest output waits for this event.
            let _ = self.output_evt.write(1);
        }
        Ok(())
    }

    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // No F_SIZE and no F_MULTIPORT: the fields are defined but meaningless; report
        // one port and an 80x25 screen for drivers that peek anyway.
        let mut config = [0u8; CONFIG_LEN];
        config[0..2].copy_from_slice(&80u16.to_le_bytes());
        config[2..4].copy_from_slice(&25u16.to_le_bytes());
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        copy_config(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, which is not offered.
    }

    fn process_queue(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        match index {
            RX_QUEUE => self.fill_receive_queue(queues),
            TX_QUEUE => self.drain_transmit_queue(queues),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        // A new driver must not receive a previous session's stream halves.
        self.to_guest.clear();
        self.from_guest.clear();
    }
}

/// Copies the part of `config` at `offset..offset+data.len()`; bytes past the end stay 0.
pub(crate) fn copy_config(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// The host side of the console: write bytes to the guest, read what the guest wrote.
/// Cheap to clone; all clones share the device.
#[derive(Clone)]
pub struct ConsoleHandle {
    dev: Arc<Mutex<VirtioMmioDevice<VirtioConsole>>>,
}

impl ConsoleHandle {
    /// `dev` is the same `Arc` the MMIO bus holds.
    pub fn new(dev: Arc<Mutex<VirtioMmioDevice<VirtioConsole>>>) -> Self {
        Self { dev }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VirtioMmioDevice<VirtioConsole>> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `bytes` for the guest and delivers as much as its receive buffers take.
    /// Returns how many bytes were accepted (fewer than `bytes.len()` when the host-side
    /// buffer of [`BUFFER_LIMIT`] bytes is full; retry later).
    pub fn write_to_guest(&self, bytes: &[u8]) -> usize {
        let mut dev = self.lock();
        let n = dev.device_mut().queue_to_guest(bytes);
        dev.process_queue(RX_QUEUE);
        n
    }

    /// Copies guest output into `buf`; returns the byte count (0 when there is none).
    /// Freed space lets transmit chains the guest left waiting go through.
    pub fn read_from_guest(&self, buf: &mut [u8]) -> usize {
        let mut dev = self.lock();
        let n = dev.device_mut().take_from_guest(buf);
        if n > 0 {
            dev.process_queue(TX_QUEUE);
        }
        n
    }

    /// Whether the guest driver runs. Bytes written earlier are kept until the driver's
    /// initial reset, which drops them (they would belong to no session).
    pub fn is_ready(&self) -> bool {
        self.lock().is_active()
    }

    /// Bytes waiting for the guest to post receive buffers.
    pub fn pending_to_guest(&self) -> usize {
        self.lock().device().to_guest.len()
    }

    /// An eventfd that becomes readable when guest output arrives (read it to rearm).
    pub fn guest_output_event(&self) -> io::Result<EventFd> {
        self.lock().device().output_evt.try_clone()
    }
}

#[cfg(test)]
mod tests;
