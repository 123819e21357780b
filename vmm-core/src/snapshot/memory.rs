//! Guest RAM in its own sparse file, mapped back copy-on-write.
//!
//! Writing scans every 4 KiB page and writes only pages that are not all zero, then sets
//! the file's length: pages the guest never touched (or zeroed) stay holes, so the file
//! takes disk space for what the guest used. Restore maps each region `MAP_PRIVATE`:
//! pages are read from the file on first touch, and every partition restored from the
//! same file shares the untouched ones through the page cache.
//!
//! The framebuffer's pixels follow guest RAM in the same file, page-aligned and sparse
//! the same way: they are guest-visible memory too, and kept out of the state file they
//! cost a restore no hashing (a 1024x768 screen is 3 MiB, most of the state file it was).
//! A restore copies them straight from the file into the framebuffer's memfd.
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
    /// Where the framebuffer's pixels lie in the file, if the partition has one.
    pub framebuffer: Option<FileSpan>,
}

/// `len` bytes at `file_offset` of the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpan {
    pub file_offset: u64,
    pub len: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> SnapshotError {
    move |source| SnapshotError::Io { what, source }
}

/// Writes the non-zero pages of `file`'s contents page by page: hashes every byte and
/// writes only pages that are not all zero (the rest stay holes).
struct SparseWriter<'a> {
    file: &'a File,
    hasher: Sha256,
    pages_written: u64,
}

impl SparseWriter<'_> {
    fn page(&mut self, bytes: &[u8], at: u64) -> Result<(), SnapshotError> {
        self.hasher.update(bytes);
        if bytes.iter().any(|&b| b != 0) {
            self.file
                .write_all_at(bytes, at)
                .map_err(io("writing the memory file"))?;
            self.pages_written += 1;
        }
        Ok(())
    }
}

/// Writes every non-zero page of `mem`, then of `framebuffer` (page-aligned after RAM),
/// to `file` (which must be empty) and returns the record that lets [`map_memory`] and
/// [`read_framebuffer`] find and check them.
pub fn write_memory(
    mem: &GuestMemoryMmap,
    framebuffer: Option<&[u8]>,
    file: &File,
) -> Result<MemoryRecord, SnapshotError> {
    let mut w = SparseWriter {
        file,
        hasher: Sha256::new(),
        pages_written: 0,
    };
    let mut regions = Vec::new();
    let mut offset = 0u64;
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
            w.page(&page[..n], offset + at)?;
            at += n as u64;
        }
        offset += len;
    }
    let framebuffer = match framebuffer {
        Some(pixels) => {
            // Guest RAM regions are whole pages, so this is page-aligned already; the
            // hash covers the padding to the page as zeros, like any hole.
            let span = FileSpan {
                file_offset: offset,
                len: pixels.len() as u64,
            };
            for (i, chunk) in pixels.chunks(PAGE).enumerate() {
                w.page(chunk, offset + (i * PAGE) as u64)?;
            }
            offset += (pixels.len() as u64).div_ceil(PAGE as u64) * PAGE as u64;
            if pixels.len() % PAGE != 0 {
                w.hasher.update(&[0u8; PAGE][..PAGE - pixels.len() % PAGE]);
            }
            Some(span)
        }
        None => None,
    };
    let SparseWriter {
        hasher,
        pages_written,
        ..
    } = w;
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
        framebuffer,
    })
}

/// The data extents of `file` within `[start, end)`, as (offset, len): holes are left
/// out (a file system without SEEK_DATA gives the whole range as one extent).
fn data_extents(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let mut extents = Vec::new();
    let mut at = start;
    while at < end {
        let data = match seek(file, SeekFrom::Data(at)) {
            Ok(d) if d < end => d,
            // ENXIO: no data after `at`.
            Ok(_) | Err(rustix::io::Errno::NXIO) => break,
            Err(_) => {
                extents.push((at, end - at));
                break;
            }
        };
        let hole = seek(file, SeekFrom::Hole(data)).map_or(end, |h| h.min(end));
        extents.push((data, hole - data));
        at = hole;
    }
    extents
}

/// Copies the framebuffer's pixels from the memory file into `dst` (the framebuffer's
/// own mapping, freshly created and so all zero), checking the span against the file
/// and `dst`. Only the file's data extents are read: a mostly black screen's holes stay
/// unallocated pages of the memfd.
pub fn read_framebuffer(
    record: &MemoryRecord,
    file: &File,
    dst: &crate::shm::MappedRegion,
) -> Result<(), SnapshotError> {
    let span = record
        .framebuffer
        .ok_or_else(|| SnapshotError::Missing("framebuffer".into()))?;
    if span
        .file_offset
        .checked_add(span.len)
        .is_none_or(|end| end > record.file_len)
    {
        return Err(SnapshotError::Malformed(
            "framebuffer lies outside the memory file".into(),
        ));
    }
    let len = usize::try_from(span.len)
        .ok()
        .filter(|&len| len <= dst.len())
        .ok_or_else(|| {
            SnapshotError::Mismatch(format!(
                "framebuffer of {} bytes saved, this one has {}",
                span.len,
                dst.len()
            ))
        })?;
    let start = span.file_offset;
    for (at, n) in data_extents(file, start, start + len as u64) {
        // Both within the span just checked against `dst`.
        dst.fill_from_file((at - start) as usize, file, at, n as usize)
            .map_err(|e| SnapshotError::Memory(format!("framebuffer: {e}")))?;
    }
    Ok(())
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
    file: std::sync::Arc<File>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::Memfd;
    use vm_memory::Bytes;

    fn guest_memory() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 * PAGE)]).unwrap();
        mem.write_slice(b"guest", GuestAddress(PAGE as u64))
            .unwrap();
        mem
    }

    /// 1.5 pages of pixels: the last page is partial, the first all zero (a hole).
    fn pixels() -> Vec<u8> {
        let mut p = vec![0u8; PAGE + PAGE / 2];
        p[PAGE..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8 | 1);
        p
    }

    /// A memory file on tmpfs semantics (holes and SEEK_DATA, wherever the tests run).
    fn memory_file() -> File {
        let fd =
            rustix::fs::memfd_create("snapshot-memory", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        File::from(fd)
    }

    #[test]
    fn framebuffer_pixels_come_back_from_the_memory_file_and_the_hash_covers_them() {
        let file = memory_file();
        let record = write_memory(&guest_memory(), Some(&pixels()), &file).unwrap();
        let span = record.framebuffer.unwrap();
        assert_eq!(span.file_offset, 4 * PAGE as u64);
        assert_eq!(record.file_len, 6 * PAGE as u64);
        // Guest page 1 and the pixels' second page; zero pages stay holes.
        assert_eq!(record.pages_written, 2);
        check_memory_file(&record, &file, true).unwrap();

        let memfd = Memfd::create("fb-test", 2 * PAGE).unwrap();
        let region = memfd.map_shared_rw().unwrap();
        read_framebuffer(&record, &file, &region).unwrap();
        // The all-zero first page was a hole and was not copied: the memfd holds one
        // page (until the read below faults in the other).
        let allocated = rustix::fs::fstat(&memfd).unwrap().st_blocks * 512;
        assert_eq!(allocated, PAGE as i64);
        let mut back = vec![0u8; pixels().len()];
        region.read_at(0, &mut back).unwrap();
        assert_eq!(back, pixels());

        // One changed pixel byte fails the full check.
        file.write_all_at(&[0], span.file_offset + PAGE as u64)
            .unwrap();
        let mut changed = record.clone();
        let meta = file.metadata().unwrap();
        (changed.mtime_sec, changed.mtime_nsec) = (meta.mtime(), meta.mtime_nsec());
        assert!(matches!(
            check_memory_file(&changed, &file, true),
            Err(SnapshotError::MemoryFile(m)) if m.contains("SHA-256")
        ));
    }

    #[test]
    fn a_framebuffer_span_outside_the_file_or_larger_than_the_screen_is_refused() {
        let file = tempfile::tempfile().unwrap();
        let mut record = write_memory(&guest_memory(), Some(&pixels()), &file).unwrap();
        let memfd = Memfd::create("fb-small", PAGE).unwrap();
        let small = memfd.map_shared_rw().unwrap();
        assert!(matches!(
            read_framebuffer(&record, &file, &small),
            Err(SnapshotError::Mismatch(_))
        ));
        record.framebuffer = Some(FileSpan {
            file_offset: record.file_len - 1,
            len: 2,
        });
        assert!(matches!(
            read_framebuffer(&record, &file, &small),
            Err(SnapshotError::Malformed(_))
        ));
        record.framebuffer = None;
        assert!(matches!(
            read_framebuffer(&record, &file, &small),
            Err(SnapshotError::Missing(_))
        ));
    }
}
