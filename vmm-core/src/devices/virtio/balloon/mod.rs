//! virtio-balloon (virtio 1.2, 5.5): the guest hands back memory it does not use, and the
//! host drops those pages from the partition process (`madvise(MADV_DONTNEED)` on the
//! guest RAM mapping, which is anonymous and private: the next guest touch of such a page
//! faults in a fresh zero page).
//!
//! Queues, in transport order: 0 inflate, 1 deflate, 2 free page reporting. The spec
//! numbers the reporting queue 4, but a driver only creates the queues of the features
//! it negotiated, packed (Linux `virtio_find_vqs` skips absent names and the mmio
//! transport numbers the rest consecutively); this device offers neither the stats queue
//! nor free page hinting, so reporting is transport queue 2.
//!
//! - **Free page reporting** (`VIRTIO_BALLOON_F_REPORTING`): the guest's page allocator
//!   reports free blocks (2 MiB and up on x86) as device-writable buffers; each buffer is
//!   a free range. The device discards the whole pages inside it and returns the buffer.
//!   This is what makes an idle partition give back what its programs freed.
//! - **Inflate/deflate**: arrays of little-endian 32-bit PFNs (4 KiB frames). Inflated
//!   pages are discarded; deflate needs nothing (a discarded page comes back on touch),
//!   so `VIRTIO_BALLOON_F_MUST_TELL_HOST` is not offered. The target (`num_pages`) is
//!   set by [`BalloonHandle::set_target_pages`] (the supervisor's `SetBalloon`); it
//!   starts at 0 (no inflation).
//! - **Deflate on OOM** (`VIRTIO_BALLOON_F_DEFLATE_ON_OOM`): a guest under its own memory
//!   pressure takes pages back out of the balloon (below the target) instead of killing
//!   its programs. The device needs nothing for it (deflate is always honoured); Linux
//!   then counts ballooned pages as used rather than shrinking `MemTotal`, so inside the
//!   guest an inflated balloon shows in `MemAvailable`, not in `MemTotal`.
//!
//! Everything the guest names is untrusted: descriptors are checked by
//! [`super::Queues::pop`] (a reported range outside guest RAM breaks the device, like any
//! bad chain), PFNs are checked one by one against the RAM regions of the guest memory
//! map (RAM only: the framebuffer and the MMIO hole are not in it) and the ones outside
//! are skipped and logged, and a chain's PFN array is read up to
//! [`MAX_PFNS_PER_CHAIN`] entries.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::mmio::VirtioMmioDevice;
use super::queue::{QueueError, Queues};
use super::{device_type, VirtioDevice};

pub const INFLATE_QUEUE: usize = 0;
pub const DEFLATE_QUEUE: usize = 1;
pub const REPORTING_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Free page reporting (virtio 1.2, 5.5.3).
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
/// The driver may deflate the balloon when the guest would otherwise run out of memory
/// (virtio 1.2, 5.5.3).
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;

/// The balloon's page size, whatever the guest's (virtio 1.2, 5.5.6).
pub const PAGE_SIZE: u64 = 4096;
/// PFNs read from one inflate/deflate chain at most. Linux sends 256 per buffer; a guest
/// offering a 4 GiB "array" must not make one vCPU exit read it all.
pub const MAX_PFNS_PER_CHAIN: usize = 16 * 1024;

/// Config space (virtio 1.2, 5.5.4): `num_pages` (device), `actual` (driver), then the
/// free page hint command id and the poison value, neither of which is offered.
const CONFIG_LEN: u64 = 16;
const CONFIG_NUM_PAGES: u64 = 0;
const CONFIG_ACTUAL: u64 = 4;

/// What the balloon has given back so far (for tests, benchmarks and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Bytes discarded because the guest reported them free.
    pub reported_bytes: u64,
    /// Bytes discarded because the guest put them in the balloon.
    pub inflated_bytes: u64,
    /// Ranges or PFNs skipped because they were not guest RAM.
    pub refused: u64,
}

#[derive(Debug, Default)]
pub struct VirtioBalloon {
    /// Pages the host wants in the balloon.
    num_pages: u32,
    /// Pages the driver says are in the balloon.
    actual: u32,
    counters: BalloonCounters,
}

#[derive(Serialize, Deserialize)]
struct SavedBalloon {
    num_pages: u32,
    actual: u32,
}

impl VirtioBalloon {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// Pages the driver last said it holds.
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }

    /// Drops the guest pages of `[addr, addr + len)` that lie wholly inside one RAM
    /// region. Returns the bytes discarded; a range not (entirely) in RAM discards
    /// nothing and counts as refused.
    fn discard(&mut self, mem: &GuestMemoryMmap, addr: u64, len: u64) -> u64 {
        // Only whole balloon pages: a partial page may still hold guest data.
        let start = addr.next_multiple_of(PAGE_SIZE);
        let Some(end) = addr.checked_add(len).map(|e| e - e % PAGE_SIZE) else {
            self.counters.refused += 1;
            return 0;
        };
        if end <= start {
            return 0;
        }
        let Some(region) = mem.find_region(GuestAddress(start)) else {
            self.counters.refused += 1;
            return 0;
        };
        let offset = start - region.start_addr().0;
        let in_region = region.len().saturating_sub(offset);
        if end - start > in_region {
            self.counters.refused += 1;
            return 0;
        }
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(offset)) else {
            self.counters.refused += 1;
            return 0;
        };
        let n = (end - start) as usize;
        // SAFETY: `host..host + n` lies inside this region's mapping (checked above
        // against its length), which stays mapped for the device's life (the device holds
        // a clone of the memory map). MADV_DONTNEED on the private anonymous (or private
        // file, after a snapshot restore) mapping only replaces the pages' contents with
        // zero (or the file's) pages on the next touch; no Rust reference into guest
        // memory exists (guest memory is only accessed through volatile copies).
        let r = unsafe { libc::madvise(host.cast(), n, libc::MADV_DONTNEED) };
        if r != 0 {
            crate::limited!(
                warn,
                addr = start,
                len = n,
                error = %std::io::Error::last_os_error(),
                "virtio-balloon: madvise failed"
            );
            return 0;
        }
        n as u64
    }

    /// Discards every page of an inflate chain's PFN array, coalescing runs.
    fn inflate(&mut self, mem: &GuestMemoryMmap, bytes: &[u8]) {
        let mut run: Option<(u64, u64)> = None;
        for pfn in bytes.chunks_exact(4) {
            let pfn = u64::from(u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]));
            let addr = pfn * PAGE_SIZE;
            run = match run {
                Some((start, len)) if start + len == addr => Some((start, len + PAGE_SIZE)),
                Some((start, len)) => {
                    self.inflate_range(mem, start, len);
                    Some((addr, PAGE_SIZE))
                }
                None => Some((addr, PAGE_SIZE)),
            };
        }
        if let Some((start, len)) = run {
            self.inflate_range(mem, start, len);
        }
    }

    fn inflate_range(&mut self, mem: &GuestMemoryMmap, start: u64, len: u64) {
        let before = self.counters.refused;
        let done = self.discard(mem, start, len);
        self.counters.inflated_bytes += done;
        if self.counters.refused != before {
            crate::limited!(
                warn,
                addr = start,
                len,
                "virtio-balloon: inflated pages outside guest RAM ignored"
            );
        }
    }
}

/// The host side of a running balloon: sets the target and reads the counters.
#[derive(Clone)]
pub struct BalloonHandle {
    dev: Arc<Mutex<VirtioMmioDevice<VirtioBalloon>>>,
}

impl BalloonHandle {
    pub fn new(dev: Arc<Mutex<VirtioMmioDevice<VirtioBalloon>>>) -> Self {
        Self { dev }
    }

    pub fn counters(&self) -> BalloonCounters {
        self.dev
            .lock()
            .map(|d| d.device().counters())
            .unwrap_or_default()
    }

    /// Asks the guest to hold `pages` 4 KiB pages in the balloon. Setting the target it
    /// already has changes nothing (no config interrupt).
    pub fn set_target_pages(&self, pages: u32) {
        if let Ok(mut d) = self.dev.lock() {
            if d.device().num_pages == pages {
                return;
            }
            d.device_mut().num_pages = pages;
            d.config_changed();
        }
    }

    /// The target last set, in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.dev.lock().map(|d| d.device().num_pages).unwrap_or(0)
    }

    /// The 4 KiB pages the guest's driver last said it holds (`actual`): what it
    /// reports, so only as true as the guest.
    pub fn actual_pages(&self) -> u32 {
        self.dev
            .lock()
            .map(|d| d.device().actual_pages())
            .unwrap_or(0)
    }
}

impl VirtioDevice for VirtioBalloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_BALLOON_F_REPORTING | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN as usize];
        config[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.actual.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .filter(|&o| o < CONFIG_LEN)
                .map_or(0, |o| config[o as usize]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's, and only as one aligned 32-bit write.
        if offset == CONFIG_ACTUAL && data.len() == 4 {
            self.actual = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        } else if offset != CONFIG_NUM_PAGES {
            crate::limited!(
                debug,
                offset,
                len = data.len(),
                "virtio-balloon: config write ignored"
            );
        }
    }

    fn process_queue(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        let mem = queues.mem().clone();
        // One ring's worth per notification; the driver notifies again for later buffers.
        for _ in 0..queues.size(index) {
            let Some(chain) = queues.pop(index)? else {
                break;
            };
            match index {
                INFLATE_QUEUE => {
                    let bytes = queues.read_from_chain(index, &chain, MAX_PFNS_PER_CHAIN * 4)?;
                    self.inflate(&mem, &bytes);
                }
                // Nothing to do: a discarded page faults back in when the guest uses it.
                DEFLATE_QUEUE => {}
                REPORTING_QUEUE => {
                    for b in &chain.buffers {
                        // pop() checked the buffer lies in guest RAM.
                        let done = self.discard(&mem, b.addr.0, u64::from(b.len));
                        self.counters.reported_bytes += done;
                    }
                }
                _ => {}
            }
            queues.add_used(index, chain.head, 0)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        // The target is the host's and survives a driver reset; what the driver held
        // is gone with it.
        self.actual = 0;
    }

    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        crate::devices::persist::encode(&SavedBalloon {
            num_pages: self.num_pages,
            actual: self.actual,
        })
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        let s: SavedBalloon = crate::devices::persist::decode(state)?;
        self.num_pages = s.num_pages;
        self.actual = s.actual;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
