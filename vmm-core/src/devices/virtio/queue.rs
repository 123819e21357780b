//! Checked access to a device's virtqueues: every chain a device sees has been walked to
//! its end and every buffer lies inside guest memory.
//!
//! `virtio-queue` does the ring bookkeeping; its chain iterator stops silently on a loop,
//! a bad index or an unreadable descriptor, so [`Queues::pop`] re-checks that a chain really
//! ended (its last descriptor has no NEXT flag) and that each buffer is backed by guest RAM.
//! It also follows indirect tables silently, so unless the driver negotiated
//! `VIRTIO_RING_F_INDIRECT_DESC` (no device offers it) chains are walked here instead,
//! and one naming an indirect table breaks the device like any other bad chain.

use virtio_queue::desc::split::Descriptor;

use super::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// A descriptor chain the device may use: at most `queue size` buffers, all in guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub buffers: Vec<Buffer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE); otherwise device-readable.
    pub writable: bool,
}

/// Why a queue cannot be used any more; the transport answers with DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("queue {queue}: available index {avail_idx} is more than the queue size ahead of {next_avail}")]
    AvailIndex {
        queue: usize,
        avail_idx: u16,
        next_avail: u16,
    },
    #[error("queue {queue}: chain at head {head} does not end within the queue (loop, bad next index or over 4 GiB)")]
    UnterminatedChain { queue: usize, head: u16 },
    #[error(
        "queue {queue}: chain at head {head} has a buffer {addr:#x}+{len:#x} outside guest memory"
    )]
    BufferOutOfRange {
        queue: usize,
        head: u16,
        addr: u64,
        len: u32,
    },
    #[error(
        "queue {queue}: chain at head {head} has {have} writable bytes, the device needs {need}"
    )]
    BufferTooSmall {
        queue: usize,
        head: u16,
        have: u64,
        need: u64,
    },
    #[error("queue {queue}: chain at head {head} uses an indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated { queue: usize, head: u16 },
    #[error("queue {queue}: guest memory access failed: {reason}")]
    Memory { queue: usize, reason: String },
}

/// The queues of an active device, lent to [`super::VirtioDevice::process_queue`].
pub struct Queues<'a> {
    mem: &'a GuestMemoryMmap,
    queues: &'a mut [Queue],
    /// Bit `i` set: queue `i` got used buffers since the transport last looked.
    used_mask: u64,
    /// VIRTIO_RING_F_INDIRECT_DESC was negotiated; otherwise a chain naming an indirect
    /// table is refused.
    indirect: bool,
    /// Chains taken from each queue (the transport has at most 64) during this call.
    popped: [u16; 64],
}

impl<'a> Queues<'a> {
    /// The queues of a device whose driver accepted `driver_features`.
    pub(crate) fn new(
        mem: &'a GuestMemoryMmap,
        queues: &'a mut [Queue],
        driver_features: u64,
    ) -> Self {
        Self {
            mem,
            queues,
            used_mask: 0,
            indirect: driver_features & VIRTIO_RING_F_INDIRECT_DESC != 0,
            popped: [0; 64],
        }
    }

    /// Whether the device took a whole ring's worth of chains from queue `index` in this
    /// call: it stopped at its per-call limit, not at an empty ring, so the driver may
    /// have more for it that no kick will announce (the ring was not re-armed).
    pub(crate) fn took_a_full_ring(&self, index: usize) -> bool {
        let size = self.size(index);
        size > 0 && self.popped.get(index).is_some_and(|&n| n >= size)
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        self.mem
    }

    pub(crate) fn used_mask(&self) -> u64 {
        self.used_mask
    }

    /// Whether queue `index` exists and the driver made it ready.
    pub fn is_ready(&self, index: usize) -> bool {
        self.queues.get(index).is_some_and(|q| q.ready())
    }

    /// Size the driver chose for queue `index` (0 when the queue does not exist).
    pub fn size(&self, index: usize) -> u16 {
        self.queues.get(index).map_or(0, |q| q.size())
    }

    /// Takes the next available chain of queue `index`, checked; `Ok(None)` when the ring
    /// is empty or the queue is not ready.
    ///
    /// An empty ring re-arms the driver's notifications (with `VIRTIO_RING_F_EVENT_IDX`,
    /// `avail_event` becomes the next index the device will take), so a device that stops
    /// at `None` is kicked when the driver adds more, and one that stops earlier (data
    /// pending on the host side, requests in flight) is not kicked for buffers it will
    /// come back to anyway.
    pub fn pop(&mut self, index: usize) -> Result<Option<Chain>, QueueError> {
        // Twice at most: a chain added while re-arming is taken now, since its kick may
        // have been suppressed; a ring empty again after that stays armed.
        for _ in 0..2 {
            if let Some(chain) = self.pop_available(index)? {
                if let Some(n) = self.popped.get_mut(index) {
                    *n = n.saturating_add(1);
                }
                return Ok(Some(chain));
            }
            if !self.arm_notification(index)? {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// With `VIRTIO_RING_F_EVENT_IDX`: asks the driver of ready queue `index` to notify
    /// once it makes the next chain available; true when one already is.
    fn arm_notification(&mut self, index: usize) -> Result<bool, QueueError> {
        let mem = self.mem;
        let Some(queue) = self.queues.get_mut(index).filter(|q| q.ready()) else {
            return Ok(false);
        };
        if !queue.event_idx_enabled() {
            return Ok(false);
        }
        queue
            .enable_notification(mem)
            .map_err(|e| QueueError::Memory {
                queue: index,
                reason: e.to_string(),
            })
    }

    /// [`Queues::pop`] without re-arming.
    fn pop_available(&mut self, index: usize) -> Result<Option<Chain>, QueueError> {
        let mem = self.mem;
        let Some(queue) = self.queues.get_mut(index).filter(|q| q.ready()) else {
            return Ok(None);
        };
        let next_avail = queue.next_avail();
        let mut iter = match queue.iter(mem) {
            Ok(iter) => iter,
            Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                let avail_idx = queue
                    .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                    .map(|w| w.0)
                    .unwrap_or(0);
                return Err(QueueError::AvailIndex {
                    queue: index,
                    avail_idx,
                    next_avail,
                });
            }
            Err(e) => {
                return Err(QueueError::Memory {
                    queue: index,
                    reason: e.to_string(),
                })
            }
        };
        let Some(desc_chain) = iter.next() else {
            return Ok(None);
        };
        let head = desc_chain.head_index();
        let descriptors = if self.indirect {
            let descriptors: Vec<Descriptor> = desc_chain.collect();
            // The crate's iterator yields nothing for a head index past the table and
            // stops early on loops or bad links; a proper chain always ends on a
            // descriptor without NEXT.
            let terminated = descriptors.last().is_some_and(|d| !d.has_next());
            if !terminated {
                return Err(QueueError::UnterminatedChain { queue: index, head });
            }
            descriptors
        } else {
            // The crate's iterator follows indirect tables silently, so without the
            // feature the chain is walked here: each descriptor is read once, so a guest
            // cannot flip a flag between a check and the use.
            let table = GuestAddress(queue.desc_table());
            walk_direct(mem, table, queue.size(), head).map_err(|e| match e {
                Walk::Indirect => QueueError::IndirectNotNegotiated { queue: index, head },
                Walk::Unterminated => QueueError::UnterminatedChain { queue: index, head },
            })?
        };
        let mut buffers = Vec::with_capacity(descriptors.len());
        for d in descriptors {
            let in_ram = d.len() == 0
                || mem.check_range(
                    d.addr(),
                    d.len() as usize,
                    if d.is_write_only() {
                        Permissions::Write
                    } else {
                        Permissions::Read
                    },
                );
            if !in_ram {
                return Err(QueueError::BufferOutOfRange {
                    queue: index,
                    head,
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            buffers.push(Buffer {
                addr: d.addr(),
                len: d.len(),
                writable: d.is_write_only(),
            });
        }
        Ok(Some(Chain { head, buffers }))
    }

    /// Puts the last popped chain of queue `index` back, for a device that cannot take it
    /// yet (back-pressure). Only valid right after a successful [`Queues::pop`].
    pub fn undo_pop(&mut self, index: usize) {
        if let Some(q) = self.queues.get_mut(index) {
            q.go_to_previous_position();
        }
        if let Some(n) = self.popped.get_mut(index) {
            *n = n.saturating_sub(1);
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, index: usize, head: u16, len: u32) -> Result<(), QueueError> {
        let mem = self.mem;
        let queue = self.queues.get_mut(index).ok_or(QueueError::Memory {
            queue: index,
            reason: "no such queue".to_string(),
        })?;
        queue
            .add_used(mem, head, len)
            .map_err(|e| QueueError::Memory {
                queue: index,
                reason: e.to_string(),
            })?;
        self.used_mask |= 1 << index;
        Ok(())
    }

    /// Copies `data` into the writable buffers of `chain`; returns the bytes written
    /// (fewer than `data.len()` when the buffers are smaller).
    pub fn write_to_chain(
        &self,
        index: usize,
        chain: &Chain,
        data: &[u8],
    ) -> Result<usize, QueueError> {
        let mut written = 0usize;
        for b in chain.buffers.iter().filter(|b| b.writable) {
            if written == data.len() {
                break;
            }
            let n = (b.len as usize).min(data.len() - written);
            self.mem
                .write_slice(&data[written..written + n], b.addr)
                .map_err(|e| QueueError::Memory {
                    queue: index,
                    reason: e.to_string(),
                })?;
            written += n;
        }
        Ok(written)
    }

    /// Reads up to `limit` bytes from the readable buffers of `chain`.
    pub fn read_from_chain(
        &self,
        index: usize,
        chain: &Chain,
        limit: usize,
    ) -> Result<Vec<u8>, QueueError> {
        let mut out = Vec::new();
        for b in chain.buffers.iter().filter(|b| !b.writable) {
            let n = (b.len as usize).min(limit - out.len());
            if n == 0 {
                break;
            }
            let start = out.len();
            out.resize(start + n, 0);
            self.mem
                .read_slice(&mut out[start..], b.addr)
                .map_err(|e| QueueError::Memory {
                    queue: index,
                    reason: e.to_string(),
                })?;
        }
        Ok(out)
    }
}

/// Why [`walk_direct`] gave up on a chain.
enum Walk {
    Indirect,
    /// A loop, a next index past the table, an unreadable descriptor or over 4 GiB.
    Unterminated,
}

/// The descriptors of the chain at `head` in the table at `table` of `size` entries,
/// with the same limits as `virtio-queue`'s iterator (at most `size` descriptors, indices
/// inside the table, at most 4 GiB in total, virtio 1.2, 2.7.5.2), refusing any
/// descriptor that names an indirect table.
fn walk_direct(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Result<Vec<Descriptor>, Walk> {
    let mut descriptors = Vec::new();
    let mut index = head;
    let mut total: u32 = 0;
    loop {
        if descriptors.len() >= usize::from(size) || index >= size {
            return Err(Walk::Unterminated);
        }
        let at = table
            .checked_add(u64::from(index) * 16)
            .ok_or(Walk::Unterminated)?;
        let desc: Descriptor = mem.read_obj(at).map_err(|_| Walk::Unterminated)?;
        if desc.refers_to_indirect_table() {
            return Err(Walk::Indirect);
        }
        total = total.checked_add(desc.len()).ok_or(Walk::Unterminated)?;
        descriptors.push(desc);
        if !desc.has_next() {
            return Ok(descriptors);
        }
        index = desc.next();
    }
}

impl Chain {
    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.writable)
            .map(|b| u64::from(b.len))
            .sum()
    }

    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.buffers
            .iter()
            .filter(|b| !b.writable)
            .map(|b| u64::from(b.len))
            .sum()
    }

    /// The same chain without its first `n` writable bytes (for filling it in pieces).
    pub fn skip_writable(&self, mut n: usize) -> Chain {
        let mut buffers = Vec::with_capacity(self.buffers.len());
        for b in self.buffers.iter().filter(|b| b.writable) {
            let len = b.len as usize;
            if n >= len {
                n -= len;
                continue;
            }
            buffers.push(Buffer {
                // In range: the buffer was checked against guest memory by `Queues::pop`.
                addr: GuestAddress(b.addr.0 + n as u64),
                len: (len - n) as u32,
                writable: true,
            });
            n = 0;
        }
        Chain {
            head: self.head,
            buffers,
        }
    }
}
