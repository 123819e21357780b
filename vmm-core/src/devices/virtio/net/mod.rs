//! virtio-net (virtio 1.2, 5.1): one Ethernet interface whose other end is an `AF_UNIX`
//! stream socket speaking passt's protocol ([`stream`]: a 4-byte big-endian length before
//! each frame). The socket arrives already connected (a socketpair end handed over by the
//! supervisor, or made by a bare run); this module opens nothing.
//!
//! # Features
//!
//! Only `VIRTIO_NET_F_MAC` (the partition's stable, locally administered address, in
//! config space). No checksum or segmentation offloads, no mergeable receive buffers, no
//! control queue, no multiqueue, no indirect descriptors: one receive queue (0), one
//! transmit queue (1). With `VIRTIO_F_VERSION_1` every buffer starts with the 12-byte
//! `virtio_net_hdr_v1`; the driver's transmit header is ignored (nothing is offloaded) and
//! the receive header is all zero but `num_buffers = 1`.
//!
//! # Threading
//!
//! Transmit happens where the transport calls [`VirtioDevice::process_queue`] (the vCPU
//! that wrote QueueNotify, transport mutex held): each frame is copied out of guest memory
//! and sent with `send(MSG_DONTWAIT | MSG_NOSIGNAL)`, so a vCPU never blocks on the peer.
//! What the socket does not take stays in a one-frame pending buffer and the rest of the
//! ring waits; the [`NetWorker`] polls for `POLLOUT` and resumes the queue.
//!
//! Receive runs on the worker thread (one per interface, started with the vCPUs, confined
//! to its own seccomp profile, see `seccomp.rs`): it polls the socket and an eventfd the
//! device kicks, reads without the lock, splits the stream into frames, and takes the
//! transport mutex only to queue them and fill receive buffers. At most
//! [`RX_BACKLOG_BYTES`] (plus one read) wait for receive buffers; beyond that the worker
//! stops reading, so passt is slowed down rather than host memory grown.
//!
//! # What is checked
//!
//! Every chain comes through [`Queues::pop`] (bounded, inside guest RAM, no indirect
//! tables unless negotiated, which is never). A transmit chain must be device-readable
//! only and carry a header plus an Ethernet frame of at most [`stream::MAX_FRAME_LEN`]
//! bytes; anything else is dropped (returned used, counted, logged rate-limited) and the
//! device goes on. A received frame larger than the receive chain is dropped and the chain
//! kept for the next one. A bad length from the peer, end of stream or a socket error cuts
//! the backend: the socket is closed, the link behaves like an unplugged cable (frames
//! from the guest are dropped), nothing panics.

mod seccomp;
pub mod stream;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::net::SendFlags;

use super::mmio::VirtioMmioDevice;
use super::queue::{QueueError, Queues};
use super::{device_type, VirtioDevice};

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// `struct virtio_net_hdr_v1` (virtio 1.2, 5.1.6).
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const HDR_NUM_BUFFERS: usize = 10;
/// Frames from the peer waiting for receive buffers, in bytes.
pub const RX_BACKLOG_BYTES: usize = 1 << 20;

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// Feature bits (virtio 1.2, 5.1.3).
pub mod feature {
    pub const MAC: u64 = 1 << 5;
}

/// `struct virtio_net_config`: only `mac` is meaningful without further features.
pub mod config {
    pub const MAC: usize = 0;
    /// `mac[6]` and the `status` field after it (read as 0: STATUS is not offered).
    pub const LEN: usize = 8;
}

/// One interface as the partition's configuration gives it.
#[derive(Debug)]
pub struct NetConfig {
    /// A connected `AF_UNIX` stream socket speaking passt's protocol.
    pub backend: OwnedFd,
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network backend fd is not a socket: {0}")]
    NotASocket(#[source] io::Error),
    #[error("creating the network worker's eventfd: {0}")]
    EventFd(#[source] io::Error),
    #[error("starting the network worker thread: {0}")]
    Thread(#[source] io::Error),
    #[error("network worker thread: seccomp filter not installed: {0}")]
    Seccomp(String),
}

/// What the device has counted since it was built (for tests and diagnostics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_dropped: u64,
    pub rx_frames: u64,
    pub rx_dropped: u64,
}

/// Wakes the worker and tells it when to stop.
#[derive(Debug)]
pub(crate) struct Signal {
    /// A non-blocking eventfd.
    pub kick: OwnedFd,
    pub stop: AtomicBool,
}

impl Signal {
    pub fn wake(&self) {
        // An eventfd counter only overflows after 2^64-2 unread kicks.
        let _ = rustix::io::write(&self.kick, &1u64.to_ne_bytes());
    }

    /// Clears pending kicks.
    pub fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.kick, &mut b);
    }
}

/// The device model; receive runs on the [`NetWorker`] started for it.
pub struct VirtioNet {
    mac: [u8; 6],
    /// `None` once cut: the link is down for good.
    backend: Option<Arc<OwnedFd>>,
    /// Frames from the peer, oldest first, waiting for receive buffers.
    rx_backlog: VecDeque<Vec<u8>>,
    rx_backlog_bytes: usize,
    /// Bytes of a frame the socket has not taken yet (a partial send).
    tx_pending: Vec<u8>,
    signal: Arc<Signal>,
    stats: NetStats,
}

/// What a snapshot keeps of the device itself (its rings are the transport's).
#[derive(serde::Serialize, serde::Deserialize)]
struct NetState {
    mac: [u8; 6],
}

/// The interface's worker before it runs.
pub struct NetWorker {
    backend: Arc<OwnedFd>,
    signal: Arc<Signal>,
}

impl VirtioNet {
    /// The device and its (not yet started) worker.
    pub fn new(config: NetConfig) -> Result<(Self, NetWorker), NetError> {
        rustix::net::sockopt::socket_type(&config.backend)
            .map_err(|e| NetError::NotASocket(e.into()))?;
        let signal = Arc::new(Signal {
            kick: rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
            )
            .map_err(|e| NetError::EventFd(e.into()))?,
            stop: AtomicBool::new(false),
        });
        let backend = Arc::new(config.backend);
        let dev = VirtioNet {
            mac: config.mac,
            backend: Some(backend.clone()),
            rx_backlog: VecDeque::new(),
            rx_backlog_bytes: 0,
            tx_pending: Vec::new(),
            signal: signal.clone(),
            stats: NetStats::default(),
        };
        Ok((dev, NetWorker { backend, signal }))
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Whether the peer is still connected.
    pub fn is_connected(&self) -> bool {
        self.backend.is_some()
    }

    pub(crate) fn wants_rx(&self) -> bool {
        self.backend.is_some() && self.rx_backlog_bytes < RX_BACKLOG_BYTES
    }

    pub(crate) fn wants_tx(&self) -> bool {
        self.backend.is_some() && !self.tx_pending.is_empty()
    }

    /// Queues frames the worker read (the receive queue is processed after).
    pub(crate) fn queue_rx(&mut self, frames: &mut VecDeque<Vec<u8>>) {
        for f in frames.drain(..) {
            self.rx_backlog_bytes += f.len();
            self.rx_backlog.push_back(f);
        }
    }

    /// Cuts the backend for good: the peer broke the protocol, hung up or failed.
    pub(crate) fn cut(&mut self, why: &dyn std::fmt::Display) {
        // No shutdown(2): this may run on a vCPU thread, whose seccomp profile has no
        // shutdown. Dropping this reference and waking the worker, which then drops its
        // own, closes the socket; the peer sees the end of the stream.
        if self.backend.take().is_some() {
            crate::limited!(warn, reason = %why, "virtio-net: backend cut; the link is down");
        }
        self.rx_backlog.clear();
        self.rx_backlog_bytes = 0;
        self.tx_pending.clear();
        self.signal.wake();
    }

    /// Sends what is pending; `Ok(true)` when nothing is left.
    fn flush(&mut self) -> bool {
        while !self.tx_pending.is_empty() {
            let Some(b) = &self.backend else {
                self.tx_pending.clear();
                return true;
            };
            match rustix::net::send(
                &**b,
                &self.tx_pending,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    self.tx_pending.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => {
                    self.signal.wake();
                    return false;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    self.cut(&format!("send: {e}"));
                    return true;
                }
            }
        }
        true
    }

    fn transmit(&mut self, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        if !self.flush() {
            return Ok(());
        }
        let size = usize::from(queues.size(TX_QUEUE));
        // One ring's worth per call: a driver refilling from another vCPU cannot hold
        // this one here.
        for _ in 0..size {
            let Some(chain) = queues.pop(TX_QUEUE)? else {
                break;
            };
            let len = chain.readable_len();
            let max = (HDR_LEN + stream::MAX_FRAME_LEN) as u64;
            let min = (HDR_LEN + stream::ETH_HLEN) as u64;
            let writable = chain.writable_len() > 0;
            if writable || !(min..=max).contains(&len) {
                crate::limited!(
                    debug,
                    len,
                    writable,
                    "virtio-net: malformed transmit chain dropped"
                );
                self.stats.tx_dropped += 1;
                queues.add_used(TX_QUEUE, chain.head, 0)?;
                continue;
            }
            // len <= max, so it fits usize.
            let data = queues.read_from_chain(TX_QUEUE, &chain, len as usize)?;
            queues.add_used(TX_QUEUE, chain.head, 0)?;
            if self.backend.is_none() {
                self.stats.tx_dropped += 1;
                continue;
            }
            self.stats.tx_frames += 1;
            self.tx_pending = stream::encode(&data[HDR_LEN..]);
            if !self.flush() {
                break;
            }
        }
        Ok(())
    }

    fn receive(&mut self, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        let was_full = self.rx_backlog_bytes >= RX_BACKLOG_BYTES;
        while let Some(frame) = self.rx_backlog.front() {
            let Some(chain) = queues.pop(RX_QUEUE)? else {
                break;
            };
            let need = (HDR_LEN + frame.len()) as u64;
            let frame_len = frame.len();
            let Some(frame) = self.rx_backlog.pop_front() else {
                break;
            };
            self.rx_backlog_bytes -= frame_len;
            if chain.writable_len() < need {
                // Keep the buffers for a frame that fits.
                queues.undo_pop(RX_QUEUE);
                crate::limited!(
                    debug,
                    frame = frame_len,
                    buffer = chain.writable_len(),
                    "virtio-net: received frame larger than the receive buffer dropped"
                );
                self.stats.rx_dropped += 1;
                continue;
            }
            let mut out = vec![0u8; HDR_LEN];
            out[HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
            out.extend_from_slice(&frame);
            let written = queues.write_to_chain(RX_QUEUE, &chain, &out)?;
            // written <= HDR_LEN + MAX_FRAME_LEN.
            queues.add_used(RX_QUEUE, chain.head, written as u32)?;
            self.stats.rx_frames += 1;
        }
        if was_full && self.rx_backlog_bytes < RX_BACKLOG_BYTES {
            self.signal.wake();
        }
        Ok(())
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.signal.stop.store(true, Ordering::Release);
        self.signal.wake();
    }
}

impl NetWorker {
    /// Starts the worker thread for `dev` (which must wrap the device this worker came
    /// with). With `confine`, the thread installs its seccomp profile before serving and
    /// this returns only once it has; the thread ends when `dev` is dropped or the backend
    /// is cut.
    pub fn start(
        self,
        dev: &Arc<Mutex<VirtioMmioDevice<VirtioNet>>>,
        confine: bool,
    ) -> Result<JoinHandle<()>, NetError> {
        let weak = Arc::downgrade(dev);
        let program = if confine {
            Some(seccomp::worker_filter().map_err(|e| NetError::Seccomp(e.to_string()))?)
        } else {
            None
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let handle = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || {
                if let Some(p) = program {
                    if let Err(e) = seccompiler::apply_filter(&p) {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                drop(ready_tx);
                worker::run(self.backend, self.signal, weak);
            })
            .map_err(NetError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(NetError::Seccomp(e))
            }
            Err(_) => {
                let _ = handle.join();
                Err(NetError::Seccomp("the thread ended early".into()))
            }
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        // The rings are the transport's. Frames in flight are not kept: a restored
        // partition talks to a new passt over a new stream, where half a frame would put
        // the stream out of step, and a lost frame is what any network may do. The
        // guest's lease stays good: passt hands every guest the host's address.
        crate::devices::persist::encode(&NetState { mac: self.mac })
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        let s: NetState = crate::devices::persist::decode(state)?;
        if s.mac != self.mac {
            // A clone under another name: its config space shows its own address; the
            // driver keeps the one it read at probe until the guest changes it.
            tracing::info!(
                saved = ?s.mac,
                now = ?self.mac,
                "virtio-net restored under another MAC address"
            );
        }
        self.rx_backlog.clear();
        self.rx_backlog_bytes = 0;
        self.tx_pending.clear();
        Ok(())
    }

    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        feature::MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; config::LEN];
        c[config::MAC..config::MAC + 6].copy_from_slice(&self.mac);
        super::console::copy_config(&c, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only: the driver may not change it (no VIRTIO_NET_F_CTRL_MAC_ADDR).
    }

    fn process_queue(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        match index {
            RX_QUEUE => self.receive(queues),
            TX_QUEUE => self.transmit(queues),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        // A partial frame already on the wire is finished (the stream must stay in step);
        // frames not yet given to the guest are forgotten with the driver.
        self.rx_backlog.clear();
        self.rx_backlog_bytes = 0;
        self.signal.wake();
    }
}
