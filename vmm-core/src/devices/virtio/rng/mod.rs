//! virtio-rng (virtio 1.2, 5.4): one request queue whose writable buffers the device fills
//! from the host kernel's `getrandom(2)`.

use std::io;

use super::queue::{QueueError, Queues};
use super::{device_type, VirtioDevice};

pub const QUEUE_SIZE: u16 = 256;
/// Bytes handed out per request at most: the Linux driver asks for small chunks, and a
/// guest offering a huge buffer must not make one vCPU exit pull megabytes of entropy.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

#[derive(Debug, Default)]
pub struct VirtioRng {}

impl VirtioRng {
    pub fn new() -> Self {
        Self {}
    }
}

/// Fills `buf` from `getrandom(2)` (blocking only until the host pool is initialised,
/// which on a running desktop it long is).
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        match rustix::rand::getrandom(rest, rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl VirtioDevice for VirtioRng {
    // Stateless: every request is filled fresh from the host, which is also what makes
    // two restores of one snapshot see different random bytes.
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        crate::devices::persist::encode(&())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        crate::devices::persist::decode::<()>(state)
    }

    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn process_queue(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        if index != 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; 4096];
        // One ring's worth per notification; the driver notifies again for later buffers.
        for _ in 0..queues.size(0) {
            let Some(chain) = queues.pop(0)? else {
                break;
            };
            let want = usize::try_from(chain.writable_len())
                .unwrap_or(usize::MAX)
                .min(MAX_BYTES_PER_REQUEST);
            let mut written = 0usize;
            let mut offset_chain = chain.clone();
            while written < want {
                let n = (want - written).min(buf.len());
                if let Err(e) = fill_random(&mut buf[..n]) {
                    crate::limited!(warn, error = %e, "virtio-rng: getrandom failed");
                    break;
                }
                let done = queues.write_to_chain(0, &offset_chain, &buf[..n])?;
                written += done;
                if done < n {
                    break;
                }
                offset_chain = offset_chain.skip_writable(done);
            }
            // `written` <= MAX_BYTES_PER_REQUEST, far below u32::MAX.
            queues.add_used(0, chain.head, written as u32)?;
        }
        Ok(())
    }

    fn reset(&mut self) {}
}
