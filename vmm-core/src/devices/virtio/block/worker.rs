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
use vm_memory::{Bytes, GuestMemoryMmap};

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
    /// Reused for every request; at most SEG_MAX * SIZE_MAX bytes.
    pub buf: Vec<u8>,
}

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
                let buf = sized(&mut self.buf, *len)?;
                self.file.read_exact_at(buf, *offset)?;
                scatter(&self.mem, data, buf)?;
                Ok(*len)
            }
            Op::Write { offset, len, data } => {
                let buf = sized(&mut self.buf, *len)?;
                gather(&self.mem, data, buf)?;
                self.file.write_all_at(buf, *offset)?;
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

/// The bounce buffer, `len` bytes (at most SEG_MAX * SIZE_MAX, checked by the parser).
/// Not cleared per request: a read fills all of it or fails (and then nothing is copied
/// to the guest), a write's gather fills all of it first.
fn sized(buf: &mut Vec<u8>, len: u64) -> Result<&mut [u8], WorkerError> {
    let len = usize::try_from(len).map_err(|_| WorkerError::GuestMemory)?;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    Ok(&mut buf[..len])
}

/// Copies `buf` into the guest segments, in order (their lengths add up to `buf.len()`).
fn scatter(mem: &GuestMemoryMmap, segs: &[Seg], buf: &[u8]) -> Result<(), WorkerError> {
    let mut at = 0usize;
    for s in segs {
        let n = s.len as usize;
        let part = buf.get(at..at + n).ok_or(WorkerError::GuestMemory)?;
        mem.write_slice(part, s.addr)
            .map_err(|_| WorkerError::GuestMemory)?;
        at += n;
    }
    Ok(())
}

/// Fills `buf` from the guest segments, in order.
fn gather(mem: &GuestMemoryMmap, segs: &[Seg], buf: &mut [u8]) -> Result<(), WorkerError> {
    let mut at = 0usize;
    for s in segs {
        let n = s.len as usize;
        let part = buf.get_mut(at..at + n).ok_or(WorkerError::GuestMemory)?;
        mem.read_slice(part, s.addr)
            .map_err(|_| WorkerError::GuestMemory)?;
        at += n;
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
