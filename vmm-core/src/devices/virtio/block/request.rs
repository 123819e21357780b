//! Turning a checked descriptor chain into a block request (virtio 1.2, 5.2.6).
//!
//! The chain is read as two byte streams, as the spec's "any layout" rule requires
//! (2.7.4: the device must not assume a particular arrangement of descriptors): the
//! device-readable bytes (16-byte header, then write data or a discard segment) and the
//! device-writable bytes (read data or the id, then the 1-byte status as the chain's very
//! last byte). Every guest-controlled number is checked here, before the worker sees the
//! request: direction of each buffer, lengths, segment count and size, and the byte range
//! on the disk with checked arithmetic.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    DiskInfo, MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_SECTORS, SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
use crate::devices::virtio::queue::Chain;

/// Request types (virtio 1.2, 5.2.6).
pub mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values.
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// struct virtio_blk_req's header: type, reserved, sector.
pub const HEADER_LEN: u64 = 16;
/// struct virtio_blk_discard_write_zeroes: sector, num_sectors, flags.
pub const DISCARD_SEGMENT_LEN: u64 = 16;
/// The only flag defined for discard / write-zeroes segments.
pub const FLAG_UNMAP: u32 = 1;
/// Length of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;

/// A piece of guest memory: inside guest RAM, checked by `Queues::pop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub addr: GuestAddress,
    pub len: u32,
}

impl Seg {
    fn len64(&self) -> u64 {
        u64::from(self.len)
    }
}

/// What a well-formed request asks of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at byte `offset` into `data`.
    Read {
        offset: u64,
        len: u64,
        data: Vec<Seg>,
    },
    /// Write `len` bytes from `data` at byte `offset`.
    Write {
        offset: u64,
        len: u64,
        data: Vec<Seg>,
    },
    Flush,
    /// Answered on the spot (no file access): the id into `data`.
    GetId {
        data: Vec<Seg>,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
}

/// A request ready to run: the operation, where its status byte goes, the chain's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: u16,
    pub status: GuestAddress,
    pub op: Op,
}

/// A request the device answers without running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No device-writable byte at the end of the chain: nowhere to put a status, so the
    /// chain goes back untouched with length 0.
    NoStatus,
    /// The status byte at `addr` gets `code` (IOERR or UNSUPP).
    Status { addr: GuestAddress, code: u8 },
}

/// Why a request is refused; only for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    NoStatus,
    ReadableAfterWritable,
    ShortHeader,
    WrongDirection,
    ReadOnly,
    Misaligned,
    TooManySegments,
    SegmentTooLarge,
    OutOfRange,
    BadDiscardSegment,
    TooManySectors,
    UnsupportedFlags,
    Unsupported,
    GuestMemory,
}

impl Problem {
    fn code(self) -> u8 {
        match self {
            Problem::UnsupportedFlags | Problem::Unsupported => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// Parses `chain` for the disk `disk`. `Err` carries what to answer and why.
pub fn parse(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    disk: &DiskInfo,
) -> Result<Request, (Reject, Problem)> {
    // The status is the chain's last byte, and it must be device-writable. Zero-length
    // descriptors carry no bytes, so they cannot be the status.
    let Some(last) = chain.buffers.iter().rev().find(|b| b.len > 0) else {
        return Err((Reject::NoStatus, Problem::NoStatus));
    };
    if !last.writable {
        return Err((Reject::NoStatus, Problem::NoStatus));
    }
    // In range: `Queues::pop` checked addr..addr+len against guest memory and len > 0.
    let status_addr = GuestAddress(last.addr.0 + u64::from(last.len) - 1);
    let fail = |p: Problem| {
        Err((
            Reject::Status {
                addr: status_addr,
                code: p.code(),
            },
            p,
        ))
    };

    // Readable bytes first, then writable ones (virtio 1.2, 2.7.4.2).
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for b in chain.buffers.iter().filter(|b| b.len > 0) {
        let seg = Seg {
            addr: b.addr,
            len: b.len,
        };
        if b.writable {
            writable.push(seg);
        } else if !writable.is_empty() {
            return fail(Problem::ReadableAfterWritable);
        } else {
            readable.push(seg);
        }
    }
    // Drop the status byte from the writable stream.
    if let Some(w) = writable.last_mut() {
        w.len -= 1;
        if w.len == 0 {
            writable.pop();
        }
    }

    let Some(header) = read_stream(mem, &readable, 0, HEADER_LEN) else {
        return fail(Problem::ShortHeader);
    };
    let header = match header {
        Ok(h) => h,
        Err(()) => return fail(Problem::GuestMemory),
    };
    let kind = le_u32(&header[0..4]);
    let sector = le_u64(&header[8..16]);
    let out_data = skip(&readable, HEADER_LEN);
    let in_data = writable;

    let op = match kind {
        req_type::IN => {
            if !out_data.is_empty() {
                return fail(Problem::WrongDirection);
            }
            let (offset, len) = match data_range(&in_data, sector, disk) {
                Ok(r) => r,
                Err(p) => return fail(p),
            };
            Op::Read {
                offset,
                len,
                data: in_data,
            }
        }
        req_type::OUT => {
            if disk.read_only {
                return fail(Problem::ReadOnly);
            }
            if !in_data.is_empty() {
                return fail(Problem::WrongDirection);
            }
            let (offset, len) = match data_range(&out_data, sector, disk) {
                Ok(r) => r,
                Err(p) => return fail(p),
            };
            Op::Write {
                offset,
                len,
                data: out_data,
            }
        }
        req_type::FLUSH => {
            if !out_data.is_empty() || !in_data.is_empty() {
                return fail(Problem::WrongDirection);
            }
            Op::Flush
        }
        req_type::GET_ID => {
            if !out_data.is_empty() {
                return fail(Problem::WrongDirection);
            }
            Op::GetId { data: in_data }
        }
        req_type::DISCARD | req_type::WRITE_ZEROES => {
            if disk.read_only {
                return fail(Problem::ReadOnly);
            }
            if !disk.discard {
                return fail(Problem::Unsupported);
            }
            if !in_data.is_empty() {
                return fail(Problem::WrongDirection);
            }
            // One segment per request: max_discard_seg = max_write_zeroes_seg = 1.
            let total: u64 = out_data.iter().map(Seg::len64).sum();
            if total != DISCARD_SEGMENT_LEN {
                return fail(Problem::BadDiscardSegment);
            }
            let seg = match read_stream(mem, &out_data, 0, DISCARD_SEGMENT_LEN) {
                Some(Ok(s)) => s,
                Some(Err(())) => return fail(Problem::GuestMemory),
                None => return fail(Problem::BadDiscardSegment),
            };
            let seg_sector = le_u64(&seg[0..8]);
            let num_sectors = le_u32(&seg[8..12]);
            let flags = le_u32(&seg[12..16]);
            let discard = kind == req_type::DISCARD;
            // Discard takes no flags, write-zeroes only UNMAP (virtio 1.2, 5.2.6.2).
            let allowed = if discard { 0 } else { FLAG_UNMAP };
            if flags & !allowed != 0 {
                return fail(Problem::UnsupportedFlags);
            }
            let max = if discard {
                MAX_DISCARD_SECTORS
            } else {
                MAX_WRITE_ZEROES_SECTORS
            };
            if num_sectors > max {
                return fail(Problem::TooManySectors);
            }
            let len = u64::from(num_sectors) * SECTOR_SIZE;
            let Some(offset) = disk_range(seg_sector, len, disk) else {
                return fail(Problem::OutOfRange);
            };
            if discard {
                Op::Discard { offset, len }
            } else {
                Op::WriteZeroes {
                    offset,
                    len,
                    unmap: flags & FLAG_UNMAP != 0,
                }
            }
        }
        _ => return fail(Problem::Unsupported),
    };
    Ok(Request {
        head: chain.head,
        status: status_addr,
        op,
    })
}

/// Checks an IN/OUT data stream: segment count and size, multiple of the sector size, and
/// inside the disk. Returns the byte offset and length.
fn data_range(data: &[Seg], sector: u64, disk: &DiskInfo) -> Result<(u64, u64), Problem> {
    if data.len() > SEG_MAX as usize {
        return Err(Problem::TooManySegments);
    }
    if data.iter().any(|s| s.len > SIZE_MAX) {
        return Err(Problem::SegmentTooLarge);
    }
    // At most SEG_MAX * SIZE_MAX, far from overflowing.
    let len: u64 = data.iter().map(Seg::len64).sum();
    if len % SECTOR_SIZE != 0 {
        return Err(Problem::Misaligned);
    }
    let offset = disk_range(sector, len, disk).ok_or(Problem::OutOfRange)?;
    Ok((offset, len))
}

/// Byte offset of `sector` if `len` bytes from there stay inside the disk.
pub fn disk_range(sector: u64, len: u64, disk: &DiskInfo) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= disk.capacity_bytes()).then_some(offset)
}

/// `len` bytes of the stream `segs` starting `start` bytes in; `None` if the stream is
/// shorter, `Some(Err)` if guest memory could not be read.
fn read_stream(
    mem: &GuestMemoryMmap,
    segs: &[Seg],
    start: u64,
    len: u64,
) -> Option<Result<Vec<u8>, ()>> {
    let total: u64 = segs.iter().map(Seg::len64).sum();
    if total < start.checked_add(len)? {
        return None;
    }
    let mut out = vec![0u8; usize::try_from(len).ok()?];
    let mut filled = 0usize;
    for s in skip(segs, start) {
        if filled == out.len() {
            break;
        }
        let n = (s.len as usize).min(out.len() - filled);
        if mem
            .read_slice(&mut out[filled..filled + n], s.addr)
            .is_err()
        {
            return Some(Err(()));
        }
        filled += n;
    }
    Some(Ok(out))
}

/// The stream `segs` without its first `n` bytes.
pub fn skip(segs: &[Seg], mut n: u64) -> Vec<Seg> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        let len = s.len64();
        if n >= len {
            n -= len;
            continue;
        }
        out.push(Seg {
            // n < len <= u32::MAX, and the whole segment is inside guest memory.
            addr: GuestAddress(s.addr.0 + n),
            len: (len - n) as u32,
        });
        n = 0;
    }
    out
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
