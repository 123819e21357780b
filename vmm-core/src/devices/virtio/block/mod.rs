//! virtio-blk (virtio 1.2, 5.2): one disk backed by an already-open regular file or block
//! device. The partition process is handed the fd; this module opens nothing.
//!
//! # Threading
//!
//! Parsing and the answers that need no file access happen where the transport calls
//! [`VirtioDevice::process_queue`], with the transport mutex held: on the vCPU thread that
//! wrote QueueNotify (or at DRIVER_OK). That is cheap and bounded (a 16-byte header, a
//! 16-byte discard segment, the 20-byte id). File I/O never happens there: a request
//! that needs the disk is sent over an `mpsc` channel to one worker thread per disk, which
//! does the `pread`/`pwrite`/`fdatasync`/`fallocate` with no lock held, copies between
//! the file and guest memory, writes the status byte, and only then takes the transport
//! mutex briefly to put the finished batch in the used ring and raise the interrupt (the
//! transport's own `process_queue`). So a slow disk stalls neither the notifying vCPU nor
//! a vCPU acknowledging this device's interrupt.
//!
//! A channel rather than an eventfd: it carries the parsed request, needs no fd and no
//! extra system call beyond `futex`, and its disconnection is the stop signal: the worker
//! holds only a `Weak` to the device, so when the device is dropped its sender goes with
//! it and the worker's `recv` returns, ending the thread.
//!
//! The worker is not started at construction: the partition process must still be
//! single-threaded when it applies its sandbox, which happens after the VM is built.
//! [`BlockWorker::start`] runs at `Partition::start_with`, next to the vCPU threads, and
//! installs the worker's own seccomp profile ([`crate::sandbox::SeccompProfile::Block`]:
//! `preadv`, `pwritev`, `pread64`, `pwrite64`, `fdatasync`, `fallocate` with exactly the two modes used here,
//! plus the common table: `futex` for the channel and mutex, `write` for the irqfd).
//! Requests notified before the worker runs wait in the channel.
//!
//! At most the driver's queue size of requests is in flight; further chains stay in the
//! ring until answers free room. A reset bumps a session counter: queued requests of the
//! earlier session are skipped, and those finished meanwhile are not put in the new
//! session's used ring. (One already running completes into guest memory, like DMA in
//! flight on real hardware; Linux drains its queue before resetting anyway.)
//!
//! # Parsing
//!
//! Done here, in `request.rs`, on top of [`super::queue::Queues::pop`]'s checked chains
//! (bounded length, no loops, every buffer inside guest RAM). rust-vmm's `virtio-blk`
//! request parser was considered but is not published on crates.io (`cargo info
//! virtio-blk` finds nothing), so it cannot be pinned next to `virtio-queue 0.18` /
//! `vm-memory 0.18`; the parser here is small and follows the "any layout" rule.
//!
//! # Features offered
//!
//! `SIZE_MAX` ([`SIZE_MAX`] per segment), `SEG_MAX` ([`SEG_MAX`] segments), `BLK_SIZE`
//! (512), `FLUSH` (the guest runs a write-back cache and sends flushes, which become
//! `fdatasync`), `RO` for read-only disks, and for writable regular files `DISCARD`
//! (punch hole; a file system without holes keeps the data, which discard allows) and
//! `WRITE_ZEROES` (zero range, or punch hole when the driver allows unmapping; written
//! zeroes where the file system has neither), one segment per request. Not offered: multiqueue, topology, geometry,
//! config write-back toggle, secure erase, zoned.
//!
//! Data moves straight between the file and guest RAM: the worker turns a request's
//! segments into host iovecs (each piece bounds-checked into a guest memory region by
//! vm-memory's `get_slices`) and calls `preadv`/`pwritev` at the request's offset,
//! resuming after short transfers. No bounce buffer, no memcpy, no per-request
//! allocation (the iovec array is reused). I/O stays positional (no shared cursor).

mod request;
mod worker;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use request::{req_type, status as blk_status, ID_BYTES};
use request::{Op, Reject, Request, Seg};
use worker::{Job, Worker};

use super::mmio::VirtioMmioDevice;
use super::queue::{QueueError, Queues};
use super::{device_type, VirtioDevice};
use crate::sandbox::SeccompProfile;

pub const QUEUE_SIZE: u16 = 256;
pub const REQUEST_QUEUE: usize = 0;
pub const SECTOR_SIZE: u64 = 512;
/// Data segments per request; without indirect descriptors a chain also needs the header
/// and status descriptors, and Linux sends at most this many.
pub const SEG_MAX: u32 = 128;
/// Bytes per data segment.
pub const SIZE_MAX: u32 = 64 * 1024;
/// Per discard request: fallocate punches any size quickly.
pub const MAX_DISCARD_SECTORS: u32 = 4 << 20; // 2 GiB
/// Per write-zeroes request: bounded because a file system without ZERO_RANGE makes the
/// worker write the zeroes itself.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 64 << 10; // 32 MiB
/// Discard granularity hint: 4 KiB, the page size of every file system we expect.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Feature bits (virtio 1.2, 5.2.3).
pub mod feature {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Offsets in struct virtio_blk_config (virtio 1.2, 5.2.4).
pub mod config {
    pub const CAPACITY: usize = 0;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// Up to and including the write-zeroes fields (and their padding).
    pub const LEN: usize = 60;
}

/// One disk as the partition's configuration gives it.
#[derive(Debug)]
pub struct DiskConfig {
    /// An open regular file or block device; opened read-write unless `read_only`.
    pub file: File,
    pub read_only: bool,
    /// What GET_ID answers (the disk's role, e.g. `root`, `private`): at most 20 bytes,
    /// NUL-padded. Linux shows it in `/sys/block/vdX/serial`.
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk id {id:?} is longer than {ID_BYTES} bytes")]
    IdTooLong { id: String },
    #[error("disk fd is neither a regular file nor a block device")]
    NotADisk,
    #[error("finding the disk's size: {0}")]
    Size(#[source] io::Error),
    #[error("starting the disk worker thread: {0}")]
    Thread(#[source] io::Error),
    #[error("disk worker thread: seccomp filter not installed: {0}")]
    Seccomp(String),
}

/// What the parser needs to know about the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// In 512-byte sectors; a partial last sector of the file is not part of the disk.
    pub capacity: u64,
    pub read_only: bool,
    /// DISCARD / WRITE_ZEROES offered (writable regular files).
    pub discard: bool,
}

impl DiskInfo {
    pub fn capacity_bytes(&self) -> u64 {
        // capacity = size / 512, so this is at most the file size.
        self.capacity * SECTOR_SIZE
    }
}

/// A request the worker finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Done {
    pub generation: u64,
    pub head: u16,
    pub used_len: u32,
}

/// The device model; its I/O runs on the [`BlockWorker`] started for it.
pub struct VirtioBlock {
    info: DiskInfo,
    id: [u8; ID_BYTES],
    jobs: Sender<Job>,
    /// Bumped at every reset, shared with the worker.
    generation: Arc<AtomicU64>,
    /// Requests sent to the worker and not yet in the used ring.
    in_flight: usize,
    /// Finished by the worker, waiting for the used ring.
    completed: Vec<Done>,
}

/// The disk's worker before it runs: it owns the file.
pub struct BlockWorker {
    file: File,
    jobs: Receiver<Job>,
    generation: Arc<AtomicU64>,
}

impl VirtioBlock {
    /// The device and its (not yet started) worker.
    pub fn new(disk: DiskConfig) -> Result<(Self, BlockWorker), BlockError> {
        let id_bytes = disk.id.as_bytes();
        if id_bytes.len() > ID_BYTES {
            return Err(BlockError::IdTooLong { id: disk.id });
        }
        let mut id = [0u8; ID_BYTES];
        id[..id_bytes.len()].copy_from_slice(id_bytes);
        let (size, regular) = disk_size(&disk.file)?;
        let info = DiskInfo {
            capacity: size / SECTOR_SIZE,
            read_only: disk.read_only,
            discard: regular && !disk.read_only,
        };
        let (tx, rx) = mpsc::channel();
        let generation = Arc::new(AtomicU64::new(0));
        let device = Self {
            info,
            id,
            jobs: tx,
            generation: generation.clone(),
            in_flight: 0,
            completed: Vec::new(),
        };
        let worker = BlockWorker {
            file: disk.file,
            jobs: rx,
            generation,
        };
        Ok((device, worker))
    }

    pub fn info(&self) -> DiskInfo {
        self.info
    }

    /// Requests handed to the worker and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Takes finished requests from the worker; the transport's `process_queue` then puts
    /// them in the used ring. Results of a session the driver has reset are dropped.
    pub(crate) fn complete(&mut self, done: Vec<Done>) {
        let current = self.generation.load(Ordering::Acquire);
        self.completed
            .extend(done.into_iter().filter(|d| d.generation == current));
    }

    /// Parses one chain and answers it, or hands it to the worker.
    fn dispatch(
        &mut self,
        queues: &mut Queues<'_>,
        chain: &super::queue::Chain,
    ) -> Result<(), QueueError> {
        let mem = queues.mem();
        let request = match request::parse(mem, chain, &self.info) {
            Ok(r) => r,
            Err((Reject::NoStatus, problem)) => {
                debug!(
                    head = chain.head,
                    ?problem,
                    "virtio-blk: chain without status"
                );
                return queues.add_used(REQUEST_QUEUE, chain.head, 0);
            }
            Err((Reject::Status { addr, code }, problem)) => {
                debug!(
                    head = chain.head,
                    ?problem,
                    code,
                    "virtio-blk: request refused"
                );
                write_status(mem, addr, code)?;
                return queues.add_used(REQUEST_QUEUE, chain.head, 1);
            }
        };
        match request.op {
            Op::GetId { ref data } => {
                let n = write_segments(mem, data, &self.id)?;
                write_status(mem, request.status, blk_status::OK)?;
                // n <= ID_BYTES.
                queues.add_used(REQUEST_QUEUE, request.head, n as u32 + 1)
            }
            // Nothing was ever written through a read-only disk.
            Op::Flush if self.info.read_only => {
                write_status(mem, request.status, blk_status::OK)?;
                queues.add_used(REQUEST_QUEUE, request.head, 1)
            }
            _ => self.send(queues, request),
        }
    }

    fn send(&mut self, queues: &mut Queues<'_>, request: Request) -> Result<(), QueueError> {
        let job = Job {
            generation: self.generation.load(Ordering::Acquire),
            request,
        };
        match self.jobs.send(job) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(mpsc::SendError(job)) => {
                // The worker is gone (never started, or its partition is shutting down).
                debug!("virtio-blk: no worker; request answered with IOERR");
                let r = job.request;
                write_status(queues.mem(), r.status, blk_status::IOERR)?;
                queues.add_used(REQUEST_QUEUE, r.head, 1)
            }
        }
    }
}

impl BlockWorker {
    /// Starts the worker thread for `dev` (which must wrap the device this worker came
    /// with). With `filter`, the thread installs that seccomp profile before serving and
    /// this returns only once it has; the thread ends when `dev` is dropped.
    pub fn start(
        self,
        dev: &Arc<Mutex<VirtioMmioDevice<VirtioBlock>>>,
        mem: GuestMemoryMmap,
        filter: Option<SeccompProfile>,
    ) -> Result<JoinHandle<()>, BlockError> {
        let weak = Arc::downgrade(dev);
        let worker = Worker {
            file: self.file,
            mem,
            jobs: self.jobs,
            generation: self.generation,
            iovecs: Vec::with_capacity(2 * SEG_MAX as usize),
        };
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
        let handle = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || {
                if let Some(profile) = filter {
                    if let Err(e) = crate::sandbox::install(profile) {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                drop(ready_tx);
                worker.run(weak);
            })
            .map_err(BlockError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(BlockError::Seccomp(e))
            }
            Err(_) => {
                let _ = handle.join();
                Err(BlockError::Seccomp("the thread ended early".into()))
            }
        }
    }
}

/// What a disk's device model holds once drained: only what it was built with, checked
/// on restore against the disk the caller reopened.
#[derive(serde::Serialize, serde::Deserialize)]
struct BlockState {
    capacity: u64,
    read_only: bool,
    id: Vec<u8>,
}

impl VirtioDevice for VirtioBlock {
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        // The vCPUs are parked, so no request is added; the worker finishes those it has
        // and the snapshot asks again (for a while) until none is left.
        if self.in_flight > 0 || !self.completed.is_empty() {
            return Err(crate::devices::persist::PersistError::Busy(format!(
                "virtio-blk: {} requests in flight",
                self.in_flight
            )));
        }
        crate::devices::persist::encode(&BlockState {
            capacity: self.info.capacity,
            read_only: self.info.read_only,
            id: self.id.to_vec(),
        })
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        let s: BlockState = crate::devices::persist::decode(state)?;
        if (s.capacity, s.read_only, s.id.as_slice())
            != (self.info.capacity, self.info.read_only, &self.id[..])
        {
            return Err(crate::devices::persist::PersistError::Mismatch(format!(
                "disk {:?} of {} sectors (read-only {}) saved, reopened disk is {:?} of {} sectors (read-only {})",
                String::from_utf8_lossy(&s.id).trim_end_matches('\0'),
                s.capacity,
                s.read_only,
                String::from_utf8_lossy(&self.id).trim_end_matches('\0'),
                self.info.capacity,
                self.info.read_only
            )));
        }
        Ok(())
    }

    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        let mut f = feature::SIZE_MAX | feature::SEG_MAX | feature::BLK_SIZE | feature::FLUSH;
        if self.info.read_only {
            f |= feature::RO;
        }
        if self.info.discard {
            f |= feature::DISCARD | feature::WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; config::LEN];
        let mut put32 = |at: usize, v: u32| c[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(config::SIZE_MAX, SIZE_MAX);
        put32(config::SEG_MAX, SEG_MAX);
        put32(config::BLK_SIZE, SECTOR_SIZE as u32);
        if self.info.discard {
            put32(config::MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS);
            put32(config::MAX_DISCARD_SEG, 1);
            put32(config::DISCARD_SECTOR_ALIGNMENT, DISCARD_SECTOR_ALIGNMENT);
            put32(config::MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SECTORS);
            put32(config::MAX_WRITE_ZEROES_SEG, 1);
        }
        c[config::CAPACITY..config::CAPACITY + 8]
            .copy_from_slice(&self.info.capacity.to_le_bytes());
        c[config::WRITE_ZEROES_MAY_UNMAP] = u8::from(self.info.discard);
        super::console::copy_config(&c, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE (not offered).
    }

    fn process_queue(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        if index != REQUEST_QUEUE {
            return Ok(());
        }
        for d in std::mem::take(&mut self.completed) {
            self.in_flight = self.in_flight.saturating_sub(1);
            queues.add_used(REQUEST_QUEUE, d.head, d.used_len)?;
        }
        let size = usize::from(queues.size(REQUEST_QUEUE));
        // One ring's worth per call, like the other devices: a driver that keeps adding
        // buffers from another vCPU cannot hold this one here.
        for _ in 0..size {
            if self.in_flight >= size {
                // Back-pressure: the rest waits in the ring until answers free room.
                break;
            }
            let Some(chain) = queues.pop(REQUEST_QUEUE)? else {
                break;
            };
            self.dispatch(queues, &chain)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.in_flight = 0;
        self.completed.clear();
    }
}

/// Size in bytes and whether it is a regular file. Block devices report their size
/// through `lseek(SEEK_END)`; the file cursor moved here is never used for I/O.
fn disk_size(file: &File) -> Result<(u64, bool), BlockError> {
    let meta = file.metadata().map_err(BlockError::Size)?;
    if meta.is_file() {
        return Ok((meta.len(), true));
    }
    if meta.file_type().is_block_device() {
        let mut f = file;
        let end = f.seek(SeekFrom::End(0)).map_err(BlockError::Size)?;
        return Ok((end, false));
    }
    Err(BlockError::NotADisk)
}

fn write_status(mem: &GuestMemoryMmap, addr: GuestAddress, code: u8) -> Result<(), QueueError> {
    mem.write_obj(code, addr).map_err(|e| QueueError::Memory {
        queue: REQUEST_QUEUE,
        reason: format!("status byte: {e}"),
    })
}

/// Copies as much of `bytes` as fits into `segs`; returns the count.
fn write_segments(mem: &GuestMemoryMmap, segs: &[Seg], bytes: &[u8]) -> Result<usize, QueueError> {
    let mut at = 0usize;
    for s in segs {
        if at == bytes.len() {
            break;
        }
        let n = (s.len as usize).min(bytes.len() - at);
        mem.write_slice(&bytes[at..at + n], s.addr)
            .map_err(|e| QueueError::Memory {
                queue: REQUEST_QUEUE,
                reason: e.to_string(),
            })?;
        at += n;
    }
    Ok(at)
}
