//! Guest RAM in its own sparse file, mapped back copy-on-write.
//!
//! Writing scans every 4 KiB page and writes only pages that are not all zero, then sets
//! the file's length: pages the guest never touched (or zeroed) stay holes, so the file
//! takes disk space for what the guest used. Restore maps each region `MAP_PRIVATE`:
//! pages are read from the file on first touch, and every partition restored from the
//! same file shares the untouched ones through the page cache.
//!
//! Integrity: the file's SHA-256 (holes read as zeros) is computed while writing and kept
//! in the checksummed state file with the file's size and modification time. A restore
//! checks size and mtime (cheap, keeps restore lazy); `--verify` also rehashes the whole
//! file before mapping it (reads every byte, so not lazy). A change that keeps size and
//! mtime (someone resetting the mtime on purpose) is only caught with `--verify`.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use super::SnapshotError;

const PAGE: usize = 4096;

/// Where each guest RAM region lies in the memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionRecord {
    pub guest_addr: u64,
    pub len: u64,
    pub file_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRecord {
    pub regions: Vec<MemoryRegionRecord>,
    pub file_len: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    /// SHA-256 of the whole file (holes as zeros), hex.
    pub sha256: String,
    /// Pages written (not all zero), for the report.
    pub pages_written: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> SnapshotError {
    move |source| SnapshotError::Io { what, source }
}

/// Writes every non-zero page of `mem` to `file` (which must be empty) and returns the
/// record that lets [`map_memory`] find and check them.
pub fn write_memory(mem: &GuestMemoryMmap, file: &File) -> Result<MemoryRecord, SnapshotError> {
    let mut hasher = Sha256::new();
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut pages_written = 0u64;
    let mut page = [0u8; PAGE];
    for region in mem.iter() {
        let len = region.len();
        regions.push(MemoryRegionRecord {
            guest_addr: region.start_addr().raw_value(),
            len,
            file_offset: offset,
        });
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(PAGE as u64) as usize;
            let slice = region
                .get_slice(MemoryRegionAddress(at), n)
                .map_err(|e| SnapshotError::Memory(e.to_string()))?;
            slice.copy_to(&mut page[..n]);
            hasher.update(&page[..n]);
            if page[..n].iter().any(|&b| b != 0) {
                file.write_all_at(&page[..n], offset + at)
                    .map_err(io("writing the memory file"))?;
                pages_written += 1;
            }
            at += n as u64;
        }
        offset += len;
    }
    // Pages never written stay holes up to the full length.
    file.set_len(offset)
        .map_err(io("setting the memory file's length"))?;
    file.sync_all().map_err(io("syncing the memory file"))?;
    let meta = file
        .metadata()
        .map_err(io("reading the memory file's metadata"))?;
    Ok(MemoryRecord {
        regions,
        file_len: offset,
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        sha256: hex(&hasher.finalize()),
        pages_written,
    })
}

/// Checks `file` against the record: size and mtime always, the whole-file hash when
/// `verify` is set.
pub fn check_memory_file(
    record: &MemoryRecord,
    file: &File,
    verify: bool,
) -> Result<(), SnapshotError> {
    let meta = file
        .metadata()
        .map_err(io("reading the memory file's metadata"))?;
    if meta.len() != record.file_len {
        return Err(SnapshotError::MemoryFile(format!(
            "is {} bytes, the snapshot wrote {} (truncated or replaced)",
            meta.len(),
            record.file_len
        )));
    }
    if (meta.mtime(), meta.mtime_nsec()) != (record.mtime_sec, record.mtime_nsec) {
        return Err(SnapshotError::MemoryFile(
            "was modified after the snapshot was written (its mtime changed; copy snapshots with `cp -p`)"
                .into(),
        ));
    }
    if verify {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < record.file_len {
            let n = (record.file_len - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .map_err(io("reading the memory file"))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        if hex(&hasher.finalize()) != record.sha256 {
            return Err(SnapshotError::MemoryFile(
                "does not match its SHA-256 (corrupted)".into(),
            ));
        }
    }
    Ok(())
}

/// Maps every region of the record from `file`, copy-on-write. `expected` is the layout
/// the configuration asks for; a snapshot with another layout is refused.
pub fn map_memory(
    record: &MemoryRecord,
    file: File,
    expected: &[(u64, u64)],
) -> Result<GuestMemoryMmap, SnapshotError> {
    let layout: Vec<(u64, u64)> = record
        .regions
        .iter()
        .map(|r| (r.guest_addr, r.len))
        .collect();
    if layout != expected {
        return Err(SnapshotError::Mismatch(format!(
            "guest memory layout {layout:x?} differs from the configuration's {expected:x?}"
        )));
    }
    let file = std::sync::Arc::new(file);
    let mut regions = Vec::with_capacity(record.regions.len());
    for r in &record.regions {
        let end = r.file_offset.checked_add(r.len);
        if end.is_none_or(|e| e > record.file_len) {
            return Err(SnapshotError::Malformed(format!(
                "memory region at {:#x} lies outside the memory file",
                r.guest_addr
            )));
        }
        let len = usize::try_from(r.len)
            .map_err(|_| SnapshotError::Malformed("memory region too large".into()))?;
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Memory(format!("mapping the memory file: {e}")))?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or_else(|| {
                SnapshotError::Malformed(format!(
                    "memory region at {:#x} wraps the address space",
                    r.guest_addr
                ))
            })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| SnapshotError::Memory(e.to_string()))
}
