//! Shared memory between the VM and the supervisor: an anonymous `memfd` that the
//! partition process maps into the guest (the framebuffer) and the supervisor maps
//! read-only, so pixels never travel through the socket. Shared by the VM core and the
//! control protocol, so neither depends on the other for it.
//!
//! The creator seals the size. A receiver refuses a memfd without `F_SEAL_SHRINK`: a
//! hostile partition could otherwise truncate it under the GUI's mapping and turn the
//! GUI's next read into SIGBUS.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

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
        let cname = CString::new(name).map_err(|_| MemfdError::BadName(name.to_string()))?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        let raw = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(sys("memfd_create", name)(io::Error::last_os_error()));
        }
        // SAFETY: memfd_create just returned this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = File::from(fd);
        file.set_len(size as u64).map_err(sys("ftruncate", name))?;
        let fd = OwnedFd::from(file);
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on an fd we own takes an int argument and touches no memory.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(sys("F_ADD_SEALS", name)(io::Error::last_os_error()));
        }
        Ok(Memfd { fd, size })
    }

    /// Adopts a memfd received from a partition process, checking that its size is
    /// sealed against shrinking.
    pub fn from_received(fd: OwnedFd) -> Result<Memfd, MemfdError> {
        // SAFETY: F_GET_SEALS takes no argument and touches no memory.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(MemfdError::NotMemfd(io::Error::last_os_error()));
        }
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(MemfdError::NotSealed { seals });
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
/// it is never handed out as `&[u8]`; bytes are copied in and out instead.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access copies
// through raw pointers, so moving or sharing it across threads adds no data race beyond
// the cross-process one the copy methods already tolerate.
unsafe impl Send for MappedRegion {}
// SAFETY: see `Send`; `&MappedRegion` only allows copies through raw pointers.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> Result<MappedRegion, MemfdError> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping (addr null) of `len` bytes of a file at least `len`
        // bytes long (the size is sealed against shrinking); it aliases no Rust object.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(sys("mmap", "")(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or(MemfdError::BadSize(len as u64))?;
        Ok(MappedRegion { ptr, len, writable })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Start of the mapping, for handing to `vm_memory` / KVM as a memslot's host address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), MemfdError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemfdError::OutOfRange {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the mapping.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemfdError> {
        self.check(offset, dst.len())?;
        // SAFETY: offset..offset+dst.len() is inside the mapping (checked above) and the
        // file cannot shrink (sealed), so the source is readable; `dst` is a distinct Rust
        // buffer, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        Ok(())
    }

    /// Copies `src` into the mapping at `offset`; fails on a read-only mapping.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), MemfdError> {
        if !self.writable {
            return Err(MemfdError::ReadOnly);
        }
        self.check(offset, src.len())?;
        // SAFETY: the destination range is inside a PROT_WRITE mapping (checked above);
        // `src` is a Rust buffer, not part of the mapping, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len());
        }
        Ok(())
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned and nothing uses the mapping
        // after drop (no references into it were ever handed out).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
