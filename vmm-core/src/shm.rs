//! Shared memory between the VM and the supervisor: an anonymous `memfd` that the
//! partition process maps into the guest (the framebuffer) and the supervisor maps
//! read-only, so pixels never travel through the socket. Shared by the VM core and the
//! control protocol, so neither depends on the other for it.
//!
//! The creator seals the size. A receiver refuses a memfd without `F_SEAL_SHRINK`: a
//! hostile partition could otherwise truncate it under the GUI's mapping and turn the
//! GUI's next read into SIGBUS.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::fs::{fcntl_add_seals, fcntl_get_seals, memfd_create, MemfdFlags, SealFlags};
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
    #[error("memfd name {0:?} contains a NUL byte")]
    BadName(String),
    #[error("memfd size {0} is zero or does not fit the address space")]
    BadSize(u64),
    #[error("{op} on memfd {name:?}: {source}")]
    Sys {
        op: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("received fd is not a size-sealed memfd (F_SEAL_SHRINK missing, seals {seals:#x})")]
    NotSealed { seals: i32 },
    #[error("received fd is not a memfd: {0}")]
    NotMemfd(io::Error),
    #[error("range {offset}+{len} is outside the {size}-byte mapping")]
    OutOfRange {
        offset: usize,
        len: usize,
        size: usize,
    },
    #[error("mapping is read-only")]
    ReadOnly,
    #[error("reading a file into the mapping: {0}")]
    Read(String),
    #[error("mapping {len} bytes of memfd: {source}")]
    Map { len: usize, source: MmapRegionError },
}

fn sys<'a>(op: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> MemfdError + 'a {
    move |source| MemfdError::Sys {
        op,
        name: name.to_string(),
        source,
    }
}

/// A size-sealed memfd.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    size: usize,
}

impl Memfd {
    /// Creates a zero-filled memfd of `size` bytes whose size can never change again.
    pub fn create(name: &str, size: usize) -> Result<Memfd, MemfdError> {
        if size == 0 || size > isize::MAX as usize {
            return Err(MemfdError::BadSize(size as u64));
        }
        // rustix would refuse it too, but as a bare EINVAL that does not say why.
        if name.contains('\0') {
            return Err(MemfdError::BadName(name.to_string()));
        }
        let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| sys("memfd_create", name)(e.into()))?;
        let file = File::from(fd);
        file.set_len(size as u64).map_err(sys("ftruncate", name))?;
        let fd = OwnedFd::from(file);
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| sys("F_ADD_SEALS", name)(e.into()))?;
        Ok(Memfd { fd, size })
    }

    /// Adopts a memfd received from a partition process, checking that its size is
    /// sealed against shrinking.
    pub fn from_received(fd: OwnedFd) -> Result<Memfd, MemfdError> {
        let seals = fcntl_get_seals(&fd).map_err(|e| MemfdError::NotMemfd(e.into()))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(MemfdError::NotSealed {
                seals: seals.bits() as i32,
            });
        }
        let file = File::from(fd);
        let len = file.metadata().map_err(sys("fstat", "received"))?.len();
        let size = usize::try_from(len)
            .ok()
            .filter(|s| *s > 0 && *s <= isize::MAX as usize)
            .ok_or(MemfdError::BadSize(len))?;
        Ok(Memfd {
            fd: OwnedFd::from(file),
            size,
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A second handle on the same memory, e.g. for `vm_memory`'s `FileOffset`.
    pub fn try_clone_file(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }

    /// Maps the whole memfd shared and writable (the partition process's side).
    pub fn map_shared_rw(&self) -> Result<MappedRegion, MemfdError> {
        MappedRegion::map(self.fd.as_fd(), self.size, true)
    }

    /// Maps the whole memfd shared and read-only (the GUI's side).
    pub fn map_readonly(&self) -> Result<MappedRegion, MemfdError> {
        MappedRegion::map(self.fd.as_fd(), self.size, false)
    }

    /// Maps only the first `len` bytes read-only: a peer chooses the memfd's size, so
    /// the receiver maps what it needs rather than whatever it was given.
    pub fn map_readonly_prefix(&self, len: usize) -> Result<MappedRegion, MemfdError> {
        if len == 0 || len > self.size {
            return Err(MemfdError::OutOfRange {
                offset: 0,
                len,
                size: self.size,
            });
        }
        MappedRegion::map(self.fd.as_fd(), len, false)
    }
}

impl AsRawFd for Memfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A `MAP_SHARED` mapping, unmapped on drop.
///
/// The other side (a guest, or the partition process) writes this memory concurrently, so
/// it is never handed out as `&[u8]`; bytes are copied in and out instead (vm-memory's
/// volatile slices, which own the mapping and its bounds checks).
#[derive(Debug)]
pub struct MappedRegion {
    map: MmapRegion,
    writable: bool,
}

impl MappedRegion {
    fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> Result<MappedRegion, MemfdError> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // The mapping keeps its own handle on the memfd (a dup), so it stays valid
        // whatever happens to the `Memfd`.
        let file = File::from(fd.try_clone_to_owned().map_err(sys("dup", ""))?);
        let map = MmapRegionBuilder::new(len)
            .with_mmap_prot(prot)
            .with_mmap_flags(libc::MAP_SHARED)
            .with_file_offset(FileOffset::new(file, 0))
            .build()
            .map_err(|source| MemfdError::Map { len, source })?;
        Ok(MappedRegion { map, writable })
    }

    pub fn len(&self) -> usize {
        self.map.size()
    }

    pub fn is_empty(&self) -> bool {
        self.map.size() == 0
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Start of the mapping, for handing to `vm_memory` / KVM as a memslot's host address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    fn out_of_range(&self, offset: usize, len: usize) -> MemfdError {
        MemfdError::OutOfRange {
            offset,
            len,
            size: self.len(),
        }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the mapping.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemfdError> {
        let len = dst.len();
        let slice = self
            .map
            .get_slice(offset, len)
            .map_err(|_| self.out_of_range(offset, len))?;
        slice.copy_to(dst);
        Ok(())
    }

    /// Reads `len` bytes of `file` from `file_offset` straight into the mapping at
    /// `offset` (moves the file's shared offset); fails on a read-only mapping.
    pub fn fill_from_file(
        &self,
        offset: usize,
        file: &File,
        file_offset: u64,
        len: usize,
    ) -> Result<(), MemfdError> {
        use std::io::{Seek, SeekFrom};
        use vm_memory::ReadVolatile;
        if !self.writable {
            return Err(MemfdError::ReadOnly);
        }
        let mut slice = self
            .map
            .get_slice(offset, len)
            .map_err(|_| self.out_of_range(offset, len))?;
        let mut file = file;
        file.seek(SeekFrom::Start(file_offset))
            .map_err(sys("lseek", ""))?;
        file.read_exact_volatile(&mut slice)
            .map_err(|e| MemfdError::Read(e.to_string()))
    }

    /// Copies `src` into the mapping at `offset`; fails on a read-only mapping.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), MemfdError> {
        if !self.writable {
            return Err(MemfdError::ReadOnly);
        }
        let slice = self
            .map
            .get_slice(offset, src.len())
            .map_err(|_| self.out_of_range(offset, src.len()))?;
        slice.copy_from(src);
        Ok(())
    }
}
