//! Guest RAM and the framebuffer's separate memory region.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{ram_regions, MMIO_HOLE_START};

pub const MIN_MEM_MIB: u64 = 2;
pub const MAX_MEM_MIB: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {mib} MiB is outside {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB")]
    BadSize { mib: u64 },
    #[error("allocating {mib} MiB of guest memory: {reason}")]
    Allocate { mib: u64, reason: String },
    #[error("allocating the {bytes}-byte framebuffer: {reason}")]
    Framebuffer { bytes: usize, reason: String },
}

/// Guest RAM of `mib` MiB laid out around the MMIO hole.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mib) {
        return Err(MemoryError::BadSize { mib });
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(mib << 20)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Allocate {
        mib,
        reason: e.to_string(),
    })
}

/// Low RAM end: where the MMIO hole or the end of RAM starts.
pub fn low_ram_end(mib: u64) -> u64 {
    (mib << 20).min(MMIO_HOLE_START)
}
