//! virtio-net through guest memory against a real socketpair peer: a driver that behaves
//! like Linux's virtio_net, then hostile drivers and a hostile peer. Every test runs the
//! real worker thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::test_utils::{Desc, TestDriver, VRING_DESC_F_NEXT};
use crate::devices::virtio::{
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::{Bytes, GuestAddress};

const TIMEOUT: Duration = Duration::from_secs(10);
const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

struct Nic {
    d: TestDriver<VirtioNet>,
    peer: UnixStream,
    worker: Option<JoinHandle<()>>,
}

fn new_nic() -> Nic {
    let (ours, peer) = UnixStream::pair().unwrap();
    let (dev, worker) = VirtioNet::new(NetConfig {
        backend: ours.into(),
        mac: MAC,
    })
    .unwrap();
    let d = TestDriver::new(dev);
    let h = worker.start(&d.dev, false).unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    Nic {
        d,
        peer,
        worker: Some(h),
    }
}

/// An Ethernet frame of `len` bytes: broadcast destination, our MAC, IPv4 type, then a
/// pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_add(seed)));
    f
}

impl Nic {
    fn stats(&self) -> NetStats {
        self.d.dev.lock().unwrap().device().stats()
    }

    fn connected(&self) -> bool {
        self.d.dev.lock().unwrap().device().is_connected()
    }

    /// Puts `hdr + frame` in one readable buffer on the transmit queue and notifies.
    fn transmit(&mut self, frame: &[u8]) -> u16 {
        let mut data = vec![0u8; HDR_LEN];
        data.extend_from_slice(frame);
        let a = self.d.alloc(data.len(), 0);
        self.d.mem.write_slice(&data, GuestAddress(a)).unwrap();
        let head = self.d.add_chain(TX_QUEUE, &[(a, data.len() as u32, false)]);
        self.d.notify(TX_QUEUE as u32);
        head
    }

    /// One frame as the peer reads it off the stream.
    fn peer_read_frame(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.peer.read_exact(&mut len).unwrap();
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        self.peer.read_exact(&mut f).unwrap();
        f
    }

    fn peer_send(&mut self, frame: &[u8]) {
        self.peer.write_all(&stream::encode(frame)).unwrap();
    }

    /// Offers one receive buffer of `len` bytes; returns its address.
    fn offer_rx(&mut self, len: usize) -> u64 {
        let a = self.d.alloc(len, 0xee);
        self.d.add_chain(RX_QUEUE, &[(a, len as u32, true)]);
        self.d.notify(RX_QUEUE as u32);
        a
    }

    fn wait_used(&mut self, q: usize, n: usize) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.d.take_used(q));
            assert!(
                Instant::now() < deadline,
                "only {got:?} of {n} used on queue {q}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    fn wait_until(&self, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Nic {
    fn drop(&mut self) {
        // The worker must end once the device is gone; the test's driver holds the only
        // strong reference.
        let h = self.worker.take();
        let dev = std::mem::replace(
            &mut self.d.dev,
            TestDriver::new(
                VirtioNet::new(NetConfig {
                    backend: UnixStream::pair().unwrap().0.into(),
                    mac: MAC,
                })
                .unwrap()
                .0,
            )
            .dev,
        );
        drop(dev);
        if let Some(h) = h {
            let deadline = Instant::now() + TIMEOUT;
            while !h.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "worker did not end with its device"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            h.join().unwrap();
        }
    }
}

#[test]
fn config_space_holds_the_mac_and_only_mac_is_offered() {
    let n = new_nic();
    assert_eq!(n.d.read_bytes(reg::CONFIG, 6), MAC);
    assert_eq!(
        n.d.device_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | feature::MAC
    );
    assert_eq!(n.d.device_features() & VIRTIO_RING_F_INDIRECT_DESC, 0);
    // Past the config struct reads as zero, and writes change nothing.
    n.d.write_bytes(reg::CONFIG, &[0; 6]);
    assert_eq!(n.d.read_bytes(reg::CONFIG, 6), MAC);
    assert_eq!(n.d.read_bytes(reg::CONFIG + 8, 4), [0; 4]);
}

#[test]
fn a_transmitted_frame_reaches_the_peer_with_its_length_prefix() {
    let mut n = new_nic();
    n.d.init();
    let f = frame(60, 1);
    let head = n.transmit(&f);
    assert_eq!(n.peer_read_frame(), f);
    assert_eq!(n.wait_used(TX_QUEUE, 1), vec![(u32::from(head), 0)]);
    assert_eq!(n.stats().tx_frames, 1);
}

#[test]
fn a_frame_from_the_peer_lands_in_a_receive_buffer_after_a_zeroed_header() {
    let mut n = new_nic();
    n.d.init();
    let a = n.offer_rx(HDR_LEN + 1514);
    let f = frame(1514, 9);
    n.peer_send(&f);
    let used = n.wait_used(RX_QUEUE, 1);
    assert_eq!(used[0].1 as usize, HDR_LEN + f.len());
    let got = n.d.read_mem(a, HDR_LEN + f.len());
    let mut hdr = [0u8; HDR_LEN];
    hdr[10] = 1; // num_buffers
    assert_eq!(got[..HDR_LEN], hdr);
    assert_eq!(got[HDR_LEN..], f[..]);
}

#[test]
fn frames_from_the_peer_wait_for_buffers_the_driver_adds_later() {
    let mut n = new_nic();
    n.d.init();
    let frames: Vec<_> = (0..5).map(|i| frame(100 + i * 10, i as u8)).collect();
    for f in &frames {
        n.peer_send(f);
    }
    n.wait_until("the backlog", |n| {
        n.d.dev.lock().unwrap().device().rx_backlog.len() == frames.len()
    });
    let addrs: Vec<_> = (0..5).map(|_| n.offer_rx(2048)).collect();
    let used = n.wait_used(RX_QUEUE, 5);
    for ((a, f), u) in addrs.iter().zip(&frames).zip(&used) {
        assert_eq!(u.1 as usize, HDR_LEN + f.len());
        assert_eq!(n.d.read_mem(a + HDR_LEN as u64, f.len()), *f);
    }
}

#[test]
fn an_oversized_transmit_chain_is_dropped_and_the_next_frame_still_goes_out() {
    let mut n = new_nic();
    n.d.init();
    let big = vec![0u8; stream::MAX_FRAME_LEN + 1];
    n.transmit(&big);
    let f = frame(60, 2);
    n.transmit(&f);
    assert_eq!(n.peer_read_frame(), f);
    assert_eq!(n.wait_used(TX_QUEUE, 2).len(), 2);
    assert_eq!(n.stats().tx_dropped, 1);
    assert!(!n.d.needs_reset());
}

#[test]
fn a_truncated_transmit_chain_is_dropped() {
    let mut n = new_nic();
    n.d.init();
    // A header and 13 bytes: less than an Ethernet header.
    n.transmit(&[0u8; 13]);
    // Only part of a header.
    let a = n.d.alloc(4, 0);
    n.d.add_chain(TX_QUEUE, &[(a, 4, false)]);
    n.d.notify(TX_QUEUE as u32);
    assert_eq!(n.wait_used(TX_QUEUE, 2), vec![(0, 0), (1, 0)]);
    assert_eq!(n.stats().tx_dropped, 2);
    let f = frame(60, 3);
    n.transmit(&f);
    assert_eq!(n.peer_read_frame(), f);
}

#[test]
fn a_transmit_chain_with_a_writable_buffer_is_dropped() {
    let mut n = new_nic();
    n.d.init();
    let a = n.d.alloc(HDR_LEN + 60, 0);
    let w = n.d.alloc(64, 0);
    n.d.add_chain(
        TX_QUEUE,
        &[(a, (HDR_LEN + 60) as u32, false), (w, 64, true)],
    );
    n.d.notify(TX_QUEUE as u32);
    n.wait_used(TX_QUEUE, 1);
    assert_eq!(n.stats().tx_dropped, 1);
    assert_eq!(
        n.d.read_mem(w, 64),
        vec![0; 64],
        "the device wrote into a tx chain"
    );
}

#[test]
fn a_frame_split_over_many_transmit_buffers_is_sent_whole() {
    let mut n = new_nic();
    n.d.init();
    let f = frame(1000, 4);
    let mut data = vec![0u8; HDR_LEN];
    data.extend_from_slice(&f);
    let bufs: Vec<_> = data
        .chunks(7)
        .map(|c| {
            let a = n.d.alloc(c.len(), 0);
            n.d.mem.write_slice(c, GuestAddress(a)).unwrap();
            (a, c.len() as u32, false)
        })
        .collect();
    n.d.add_chain(TX_QUEUE, &bufs);
    n.d.notify(TX_QUEUE as u32);
    assert_eq!(n.peer_read_frame(), f);
}

#[test]
fn a_received_frame_larger_than_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut n = new_nic();
    n.d.init();
    let a = n.offer_rx(HDR_LEN + 100);
    n.peer_send(&frame(200, 1));
    let small = frame(80, 2);
    n.peer_send(&small);
    let used = n.wait_used(RX_QUEUE, 1);
    assert_eq!(used[0].1 as usize, HDR_LEN + small.len());
    assert_eq!(n.d.read_mem(a + HDR_LEN as u64, small.len()), small);
    assert_eq!(n.stats().rx_dropped, 1);
}

#[test]
fn a_bad_length_from_the_peer_cuts_the_backend_and_later_frames_are_dropped() {
    for len in [0u32, 13, (stream::MAX_FRAME_LEN + 1) as u32, u32::MAX] {
        let mut n = new_nic();
        n.d.init();
        n.offer_rx(2048);
        n.peer.write_all(&len.to_be_bytes()).unwrap();
        n.wait_until("the cut", |n| !n.connected());
        // The peer sees the stream end.
        let mut b = [0u8; 1];
        assert_eq!(n.peer.read(&mut b).unwrap(), 0, "length {len}");
        n.transmit(&frame(60, 1));
        n.wait_used(TX_QUEUE, 1);
        assert_eq!(n.stats().tx_dropped, 1);
        assert!(
            !n.d.needs_reset(),
            "a broken peer is not the driver's fault"
        );
    }
}

#[test]
fn the_peer_hanging_up_cuts_the_backend() {
    let mut n = new_nic();
    n.d.init();
    n.peer.shutdown(std::net::Shutdown::Both).unwrap();
    n.wait_until("the cut", |n| !n.connected());
    n.transmit(&frame(60, 1));
    n.wait_used(TX_QUEUE, 1);
}

#[test]
fn a_peer_that_stops_reading_delays_transmission_and_nothing_is_lost() {
    let mut n = new_nic();
    n.d.init();
    let frames: Vec<_> = (0..64u8).map(|i| frame(60_000, i)).collect();
    let mut data = Vec::new();
    for f in &frames {
        let mut d = vec![0u8; HDR_LEN];
        d.extend_from_slice(f);
        data.push(d);
    }
    // One guest buffer, reused: the device copies each frame out before returning it.
    let a = n.d.alloc(HDR_LEN + 60_000, 0);
    for d in &data {
        n.d.mem.write_slice(d, GuestAddress(a)).unwrap();
        n.d.add_chain(TX_QUEUE, &[(a, d.len() as u32, false)]);
        n.d.notify(TX_QUEUE as u32);
        // Wait until the device took it (or stopped taking: back-pressure).
        std::thread::sleep(Duration::from_millis(1));
        if n.d.dev.lock().unwrap().device().wants_tx() {
            break;
        }
    }
    assert!(
        n.d.dev.lock().unwrap().device().wants_tx(),
        "3.8 MB never filled the socket buffer"
    );
    // The rest of the frames (written after the stall) are not checked: the buffer was
    // overwritten. Read what went out: every frame whole, in order.
    let sent = n.stats().tx_frames as usize;
    for f in frames.iter().take(sent) {
        assert_eq!(n.peer_read_frame()[..16], f[..16]);
    }
    n.wait_until("the pending frame flushed", |n| {
        !n.d.dev.lock().unwrap().device().wants_tx()
    });
}

#[test]
fn an_indirect_descriptor_breaks_only_the_device() {
    let mut n = new_nic();
    n.d.init();
    let a = n.d.alloc(HDR_LEN + 60, 0);
    n.d.write_desc(
        TX_QUEUE,
        0,
        Desc {
            addr: a,
            len: 16,
            flags: 4, // VRING_DESC_F_INDIRECT
            next: 0,
        },
    );
    n.d.publish(TX_QUEUE, 0);
    n.d.notify(TX_QUEUE as u32);
    assert!(n.d.needs_reset());
}

#[test]
fn a_buffer_outside_guest_memory_breaks_only_the_device() {
    let mut n = new_nic();
    n.d.init();
    n.d.add_chain(RX_QUEUE, &[(u64::MAX - 100, 2048, true)]);
    n.d.notify(RX_QUEUE as u32);
    // Receive chains are looked at when a frame needs one.
    n.peer_send(&frame(60, 1));
    n.wait_until("the reset request", |n| n.d.needs_reset());
    let mut n = new_nic();
    n.d.init();
    n.d.add_chain(TX_QUEUE, &[(1 << 40, 100, false)]);
    n.d.notify(TX_QUEUE as u32);
    assert!(n.d.needs_reset());
}

#[test]
fn a_looping_transmit_chain_breaks_only_the_device() {
    let mut n = new_nic();
    n.d.init();
    let a = n.d.alloc(HDR_LEN + 60, 0);
    for i in 0..2u16 {
        n.d.write_desc(
            TX_QUEUE,
            i,
            Desc {
                addr: a,
                len: 36,
                flags: VRING_DESC_F_NEXT,
                next: 1 - i,
            },
        );
    }
    n.d.publish(TX_QUEUE, 0);
    n.d.notify(TX_QUEUE as u32);
    assert!(n.d.needs_reset());
}

#[test]
fn notifications_and_peer_frames_before_driver_ok_do_nothing() {
    let mut n = new_nic();
    for q in [0, 1, 2, 99] {
        n.d.notify(q);
    }
    n.peer_send(&frame(60, 1));
    n.wait_until("the early frame read", |n| {
        !n.d.dev.lock().unwrap().device().rx_backlog.is_empty()
    });
    assert_eq!(n.d.status(), 0);
    // The driver's probe resets the device, which forgets the early frame; later ones
    // arrive.
    n.d.init();
    let a = n.offer_rx(2048);
    n.peer_send(&frame(70, 2));
    let used = n.wait_used(RX_QUEUE, 1);
    assert_eq!(used[0].1 as usize, HDR_LEN + 70);
    assert_eq!(n.d.read_mem(a + HDR_LEN as u64, 70), frame(70, 2));
}

#[test]
fn a_reset_forgets_frames_waiting_for_buffers_and_the_device_works_again() {
    let mut n = new_nic();
    n.d.init();
    n.peer_send(&frame(60, 1));
    n.wait_until("the backlog", |n| {
        !n.d.dev.lock().unwrap().device().rx_backlog.is_empty()
    });
    n.d.write32(reg::STATUS, 0);
    assert!(n.d.dev.lock().unwrap().device().rx_backlog.is_empty());
    n.d.init();
    let f = frame(70, 5);
    n.transmit(&f);
    assert_eq!(n.peer_read_frame(), f);
}

#[test]
fn a_flood_from_the_peer_is_bounded_while_the_guest_gives_no_buffers() {
    let mut n = new_nic();
    n.d.init();
    let mut peer = n.peer.try_clone().unwrap();
    peer.set_nonblocking(true).unwrap();
    let wire = stream::encode(&frame(60_000, 1));
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let at = sent % wire.len();
        match peer.write(&wire[at..]) {
            Ok(k) => sent += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
    let backlog = n.d.dev.lock().unwrap().device().rx_backlog_bytes;
    assert!(sent > RX_BACKLOG_BYTES, "only {sent} bytes sent");
    assert!(
        backlog <= RX_BACKLOG_BYTES + 2 * stream::MAX_FRAME_LEN,
        "backlog grew to {backlog}"
    );
}

#[test]
fn a_worker_under_its_seccomp_filter_still_moves_frames_both_ways_and_ends() {
    // The filter is per thread (no TSYNC): only the worker is confined. A system call off
    // its table would kill this whole test process.
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (dev, worker) = VirtioNet::new(NetConfig {
        backend: ours.into(),
        mac: MAC,
    })
    .unwrap();
    let mut d = TestDriver::new(dev);
    let h = worker.start(&d.dev, true).unwrap();
    d.init();
    let a = d.alloc(2048, 0);
    d.add_chain(RX_QUEUE, &[(a, 2048, true)]);
    d.notify(RX_QUEUE as u32);
    // Back-pressure makes the worker flush transmissions too: fill the socket first.
    let f = frame(1000, 3);
    peer.write_all(&stream::encode(&f)).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while d.take_used(RX_QUEUE).is_empty() {
        assert!(Instant::now() < deadline, "no frame received");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(d.read_mem(a + HDR_LEN as u64, f.len()), f);
    // The peer hangs up: the confined worker cuts the backend (logging) and exits.
    drop(peer);
    let deadline = Instant::now() + TIMEOUT;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "confined worker did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
    h.join().unwrap();
    assert!(!d.dev.lock().unwrap().device().is_connected());
}

#[test]
fn a_saved_interface_restores_under_another_mac_without_the_frames_in_flight() {
    let (ours, _peer) = UnixStream::pair().unwrap();
    let (mut dev, _worker) = VirtioNet::new(NetConfig {
        backend: ours.into(),
        mac: MAC,
    })
    .unwrap();
    // Half a frame the old peer never took, and a frame the guest never received.
    dev.tx_pending = vec![0; 100];
    dev.rx_backlog.push_back(frame(64, 1));
    dev.rx_backlog_bytes = 64;
    let state = dev.save_state().unwrap();

    let (theirs, _peer2) = UnixStream::pair().unwrap();
    let other = [0x02, 0, 0, 0, 0, 0x99];
    let (mut restored, _w) = VirtioNet::new(NetConfig {
        backend: theirs.into(),
        mac: other,
    })
    .unwrap();
    restored.tx_pending = vec![1; 10];
    restored.restore_state(&state).unwrap();
    assert!(
        restored.tx_pending.is_empty(),
        "no half frame on a new stream"
    );
    assert!(restored.rx_backlog.is_empty() && restored.rx_backlog_bytes == 0);
    let mut config = [0u8; 6];
    restored.read_config(0, &mut config);
    assert_eq!(config, other, "config space shows the clone's own address");
    assert!(restored.restore_state(b"not a state").is_err());
}
