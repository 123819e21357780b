//! The disk's I/O thread: runs parsed requests against the file with positional I/O and
//! hands the results back to the device for the used ring.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, Weak};

use tracing::debug;
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::request::{status, Op, Request, Seg};
use super::{Done, VirtioBlock, REQUEST_QUEUE};
use crate::devices::virtio::mmio::VirtioMmioDevice;

/// Requests run back to back before their results are published (one lock, one
/// interrupt for the batch).
const MAX_BATCH: usize = 32;
/// Zeroes written per `pwrite` when the file system cannot zero a range itself.
const ZERO_CHUNK: usize = 64 * 1024;

/// A request and the device session it belongs to.
pub(crate) struct Job {
    pub generation: u64,
    pub request: Request,
}

pub(crate) struct Worker {
    pub file: File,
    pub mem: GuestMemoryMmap,
    pub jobs: Receiver<Job>,
    /// The device's current session; jobs of an earlier one are skipped.
    pub generation: Arc<AtomicU64>,
    /// Reused for every request: the request's segments as host iovecs into guest RAM
    /// (at most 2 * SEG_MAX entries, a segment crossing one region boundary).
    pub iovecs: Vec<libc::iovec>,
}

// SAFETY: the iovecs are only scratch space, rebuilt from guest memory (which the worker
// owns a handle to) before every use; no pointer in them is read across requests.
unsafe impl Send for Worker {}

impl Worker {
    /// Serves jobs until the device is dropped (its sender goes away).
    pub fn run(mut self, dev: Weak<Mutex<VirtioMmioDevice<VirtioBlock>>>) {
        while let Ok(job) = self.jobs.recv() {
            let mut done = Vec::new();
            done.extend(self.execute(job));
            while done.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok(job) => done.extend(self.execute(job)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if done.is_empty() {
                continue;
            }
            let Some(dev) = dev.upgrade() else {
                return;
            };
            let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
            dev.device_mut().complete(done);
            dev.process_queue(REQUEST_QUEUE);
        }
    }

    /// Runs one job; `None` if it belongs to a session the driver has reset.
    fn execute(&mut self, job: Job) -> Option<Done> {
        if job.generation != self.generation.load(Ordering::Acquire) {
            return None;
        }
        let req = job.request;
        let (code, data_len) = match self.run_op(&req.op) {
            Ok(n) => (status::OK, n),
            Err(e) => {
                debug!(error = %e, op = ?OpName::of(&req.op), "virtio-blk: request failed");
                (status::IOERR, 0)
            }
        };
        let status_written = self.mem.write_obj(code, req.status).is_ok();
        // data_len <= SEG_MAX * SIZE_MAX.
        let used_len = if status_written { data_len + 1 } else { 0 };
        Some(Done {
            generation: job.generation,
            head: req.head,
            used_len: used_len as u32,
        })
    }

    /// Performs `op`; returns the bytes written into guest memory.
    fn run_op(&mut self, op: &Op) -> Result<u64, WorkerError> {
        match op {
            Op::Read { offset, len, data } => {
                guest_iovecs(&self.mem, data, *len, &mut self.iovecs)?;
                positional_io(&self.file, &mut self.iovecs, *offset, Direction::Read)?;
                Ok(*len)
            }
            Op::Write { offset, len, data } => {
                guest_iovecs(&self.mem, data, *len, &mut self.iovecs)?;
                positional_io(&self.file, &mut self.iovecs, *offset, Direction::Write)?;
                Ok(0)
            }
            Op::Flush => {
                self.file.sync_data()?;
                Ok(0)
            }
            // Answered by the device itself; never sent here.
            Op::GetId { .. } => Ok(0),
            Op::Discard { offset, len } => {
                match fallocate(&self.file, PUNCH_HOLE, *offset, *len) {
                    // Discard is a hint: a file system without holes keeps the data.
                    Err(e) if unsupported(&e) => Ok(0),
                    r => r.map(|()| 0),
                }
            }
            Op::WriteZeroes { offset, len, unmap } => {
                let mode = if *unmap { PUNCH_HOLE } else { ZERO_RANGE };
                match fallocate(&self.file, mode, *offset, *len) {
                    Err(e) if unsupported(&e) => self.write_zeroes(*offset, *len).map(|()| 0),
                    r => r.map(|()| 0),
                }
            }
        }
    }

    fn write_zeroes(&self, mut offset: u64, len: u64) -> Result<(), WorkerError> {
        let zeroes = vec![0u8; ZERO_CHUNK];
        let end = offset + len;
        while offset < end {
            // Bounded by ZERO_CHUNK.
            let n = (end - offset).min(ZERO_CHUNK as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("disk I/O: {0}")]
    Io(#[from] io::Error),
    #[error("guest memory access failed")]
    GuestMemory,
}

/// For the log line only.
#[derive(Debug)]
enum OpName {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

impl OpName {
    fn of(op: &Op) -> Self {
        match op {
            Op::Read { .. } => Self::Read,
            Op::Write { .. } => Self::Write,
            Op::Flush => Self::Flush,
            Op::GetId { .. } => Self::GetId,
            Op::Discard { .. } => Self::Discard,
            Op::WriteZeroes { .. } => Self::WriteZeroes,
        }
    }
}

/// Fills `out` with host iovecs covering the guest segments `segs` in order, `len` bytes
/// in all (the parser's sum of their lengths). Every piece is checked to lie inside guest
/// RAM; a segment crossing from one memory region into the next becomes two entries.
/// The disk then reads into / writes from guest memory directly: no bounce buffer, no
/// copy, nothing allocated per request once `out` has grown to its bound.
fn guest_iovecs(
    mem: &GuestMemoryMmap,
    segs: &[Seg],
    len: u64,
    out: &mut Vec<libc::iovec>,
) -> Result<(), WorkerError> {
    out.clear();
    let mut total = 0u64;
    for s in segs {
        let n = usize::try_from(s.len).map_err(|_| WorkerError::GuestMemory)?;
        let mut covered = 0usize;
        for slice in mem.get_slices(s.addr, n) {
            let slice = slice.map_err(|_| WorkerError::GuestMemory)?;
            covered += slice.len();
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        if covered != n {
            return Err(WorkerError::GuestMemory);
        }
        total += u64::from(s.len);
    }
    if total != len || out.len() > IOV_MAX {
        return Err(WorkerError::GuestMemory);
    }
    Ok(())
}

/// The kernel's limit on iovecs per call; SEG_MAX (128) segments stay far below it.
const IOV_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// File into guest memory (`preadv`).
    Read,
    /// Guest memory into the file (`pwritev`).
    Write,
}

/// Moves all of `iovecs` from/to the file at `offset`, resuming after short transfers.
/// A transfer of 0 bytes (the file shrank under us) is an error, never a loop.
fn positional_io(
    file: &File,
    iovecs: &mut [libc::iovec],
    mut offset: u64,
    direction: Direction,
) -> Result<(), WorkerError> {
    let mut first = 0usize;
    while first < iovecs.len() {
        if iovecs[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let rest = &iovecs[first..];
        // Both fit: the parser keeps offset + len inside the disk (an i64 file size), and
        // `rest` has at most IOV_MAX entries.
        let (Ok(off), Ok(count)) = (i64::try_from(offset), i32::try_from(rest.len())) else {
            return Err(WorkerError::Io(io::Error::from(
                io::ErrorKind::InvalidInput,
            )));
        };
        // SAFETY: every iovec was built by `guest_iovecs` from a VolatileSlice of guest
        // RAM that the bounds check of `get_slices` placed inside a mapped region, and the
        // mapping lives as long as `self.mem`, which outlives this call. The kernel copies
        // to/from those ranges only; the guest touching them meanwhile can only change
        // its own data, as with DMA on real hardware. `fd` is open for the call.
        let n = unsafe {
            match direction {
                Direction::Read => libc::preadv(file.as_raw_fd(), rest.as_ptr(), count, off),
                Direction::Write => libc::pwritev(file.as_raw_fd(), rest.as_ptr(), count, off),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(WorkerError::Io(e));
        }
        if n == 0 {
            return Err(WorkerError::Io(io::Error::from(
                io::ErrorKind::UnexpectedEof,
            )));
        }
        // n > 0 and at most the sum of the iovec lengths.
        let mut moved = n as usize;
        offset += moved as u64;
        while moved > 0 && first < iovecs.len() {
            let v = &mut iovecs[first];
            let step = moved.min(v.iov_len);
            // SAFETY: step <= iov_len, so the advanced base stays inside the same iovec.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(step) }.cast();
            v.iov_len -= step;
            moved -= step;
            if v.iov_len == 0 {
                first += 1;
            }
        }
    }
    Ok(())
}

/// The two fallocate modes the worker uses; the seccomp profile allows exactly these.
pub const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
pub const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> Result<(), WorkerError> {
    if len == 0 {
        return Ok(());
    }
    // The parser keeps offset + len inside the disk, whose size came from a file offset
    // (an i64), so both convert.
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(WorkerError::Io(io::Error::from(
            io::ErrorKind::InvalidInput,
        )));
    };
    loop {
        // SAFETY: fallocate takes only integers and an fd; `file` keeps the fd open for
        // the call, and KEEP_SIZE means it never changes the file's size.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(WorkerError::Io(e));
        }
    }
}

fn unsupported(e: &WorkerError) -> bool {
    matches!(e, WorkerError::Io(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP))
}

#[cfg(test)]
mod direct_io_tests {
    use std::io::Write;

    use vm_memory::GuestAddress;

    use super::*;

    /// Two adjacent 4 KiB regions: a segment over 0x800..0x1800 crosses from one into
    /// the other, as a guest buffer can at a memory-slot boundary.
    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .unwrap()
    }

    fn seg(addr: u64, len: u32) -> Seg {
        Seg {
            addr: GuestAddress(addr),
            len,
        }
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn a_segment_across_two_memory_regions_reads_and_writes_both_parts() {
        let mem = two_regions();
        let data: Vec<u8> = (0..0x1200u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = file_with(&data);
        let segs = [seg(0x800, 0x1000), seg(0x1a00, 0x200)];
        let mut iov = Vec::new();
        guest_iovecs(&mem, &segs, 0x1200, &mut iov).unwrap();
        assert_eq!(
            iov.len(),
            3,
            "the first segment splits at the region boundary"
        );
        positional_io(&file, &mut iov, 0, Direction::Read).unwrap();
        let mut got = vec![0u8; 0x1000];
        mem.read_slice(&mut got, GuestAddress(0x800)).unwrap();
        assert_eq!(got, data[..0x1000]);
        let mut tail = vec![0u8; 0x200];
        mem.read_slice(&mut tail, GuestAddress(0x1a00)).unwrap();
        assert_eq!(tail, data[0x1000..]);

        // And back out, at another file offset.
        guest_iovecs(&mem, &segs, 0x1200, &mut iov).unwrap();
        positional_io(&file, &mut iov, 0x200, Direction::Write).unwrap();
        let mut back = vec![0u8; 0x1200];
        file.read_exact_at(&mut back, 0x200).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_segment_reaching_past_guest_ram_is_refused_before_any_io() {
        let mem = two_regions();
        let mut iov = Vec::new();
        let past_end = [seg(0x1f00, 0x200)];
        assert!(matches!(
            guest_iovecs(&mem, &past_end, 0x200, &mut iov),
            Err(WorkerError::GuestMemory)
        ));
        let outside = [seg(0x10_0000, 0x200)];
        assert!(matches!(
            guest_iovecs(&mem, &outside, 0x200, &mut iov),
            Err(WorkerError::GuestMemory)
        ));
    }

    #[test]
    fn segments_that_do_not_add_up_to_the_request_length_are_refused() {
        let mem = two_regions();
        let mut iov = Vec::new();
        assert!(matches!(
            guest_iovecs(&mem, &[seg(0, 0x200)], 0x400, &mut iov),
            Err(WorkerError::GuestMemory)
        ));
    }

    #[test]
    fn a_read_past_the_end_of_a_shrunken_file_is_an_error_not_a_loop() {
        let mem = two_regions();
        let file = file_with(&[1u8; 0x100]);
        let mut iov = Vec::new();
        guest_iovecs(&mem, &[seg(0, 0x200)], 0x200, &mut iov).unwrap();
        let r = positional_io(&file, &mut iov, 0, Direction::Read);
        assert!(
            matches!(r, Err(WorkerError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{r:?}"
        );
    }
}
