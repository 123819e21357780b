use super::*;
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::test_utils::TestDriver;
use vm_memory::{Bytes, GuestAddress};

fn running_console() -> (TestDriver<VirtioConsole>, ConsoleHandle) {
    let mut d = TestDriver::new(VirtioConsole::new().unwrap());
    d.init();
    let handle = ConsoleHandle::new(d.dev.clone());
    (d, handle)
}

fn read_all(handle: &ConsoleHandle) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        let n = handle.read_from_guest(&mut buf);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn guest_output_reaches_the_host_and_wakes_it() {
    let (mut d, handle) = running_console();
    let evt = handle.guest_output_event().unwrap();
    assert!(evt.read().is_err(), "no output yet");
    let a = d.alloc(5, 0);
    d.mem.write_slice(b"hello", GuestAddress(a)).unwrap();
    let b = d.alloc(6, 0);
    d.mem.write_slice(b" world", GuestAddress(b)).unwrap();
    let head = d.add_chain(TX_QUEUE, &[(a, 5, false), (b, 6, false)]);
    d.notify(TX_QUEUE as u32);
    assert_eq!(d.take_used(TX_QUEUE), vec![(u32::from(head), 0)]);
    assert!(d.take_irq());
    assert_eq!(evt.read().unwrap(), 1);
    assert_eq!(read_all(&handle), b"hello world");
}

#[test]
fn host_bytes_wait_for_receive_buffers() {
    let (mut d, handle) = running_console();
    assert_eq!(handle.write_to_guest(b"ping\n"), 5);
    assert_eq!(handle.pending_to_guest(), 5);
    assert!(!d.take_irq());
    let rx = d.alloc(64, 0);
    let head = d.add_chain(RX_QUEUE, &[(rx, 64, true)]);
    d.notify(RX_QUEUE as u32);
    assert_eq!(d.take_used(RX_QUEUE), vec![(u32::from(head), 5)]);
    assert_eq!(d.read_mem(rx, 5), b"ping\n");
    assert_eq!(handle.pending_to_guest(), 0);
    assert!(d.take_irq());
}

#[test]
fn host_bytes_go_straight_into_posted_buffers_and_split_across_them() {
    let (mut d, handle) = running_console();
    let r1 = d.alloc(4, 0);
    let r2 = d.alloc(4, 0);
    let h1 = d.add_chain(RX_QUEUE, &[(r1, 4, true)]);
    let h2 = d.add_chain(RX_QUEUE, &[(r2, 4, true)]);
    d.notify(RX_QUEUE as u32);
    assert_eq!(d.take_used(RX_QUEUE), vec![], "nothing to deliver yet");
    assert_eq!(handle.write_to_guest(b"abcdef"), 6);
    assert_eq!(
        d.take_used(RX_QUEUE),
        vec![(u32::from(h1), 4), (u32::from(h2), 2)]
    );
    assert_eq!(d.read_mem(r1, 4), b"abcd");
    assert_eq!(d.read_mem(r2, 2), b"ef");
}

#[test]
fn host_side_buffer_is_bounded() {
    let (_d, handle) = running_console();
    let big = vec![7u8; BUFFER_LIMIT + 100];
    assert_eq!(handle.write_to_guest(&big), BUFFER_LIMIT);
    assert_eq!(handle.write_to_guest(b"more"), 0);
}

#[test]
fn guest_output_beyond_the_host_buffer_waits_in_the_ring_and_is_not_lost() {
    let (mut d, handle) = running_console();
    let chunk = 4096usize;
    let chunks = BUFFER_LIMIT / chunk + 4;
    let mut sent = Vec::new();
    for i in 0..chunks {
        let data: Vec<u8> = (0..chunk).map(|j| (i * 7 + j) as u8).collect();
        let a = d.alloc(chunk, 0);
        d.mem.write_slice(&data, GuestAddress(a)).unwrap();
        d.add_chain(TX_QUEUE, &[(a, chunk as u32, false)]);
        sent.extend_from_slice(&data);
    }
    d.notify(TX_QUEUE as u32);
    let used_first = d.take_used(TX_QUEUE).len();
    assert_eq!(used_first, BUFFER_LIMIT / chunk, "back-pressure once full");
    assert_eq!(
        read_all(&handle),
        sent,
        "draining lets the rest through, in order"
    );
    assert_eq!(used_first + d.take_used(TX_QUEUE).len(), chunks);
}

#[test]
fn oversized_transmit_chain_is_truncated_not_buffered_whole() {
    let (mut d, handle) = running_console();
    let len = 3 * MAX_TX_CHAIN;
    let a = d.alloc(len, b'x');
    let head = d.add_chain(TX_QUEUE, &[(a, len as u32, false)]);
    d.notify(TX_QUEUE as u32);
    assert_eq!(d.take_used(TX_QUEUE), vec![(u32::from(head), 0)]);
    assert_eq!(read_all(&handle).len(), MAX_TX_CHAIN);
}

#[test]
fn reset_drops_both_directions() {
    let (mut d, handle) = running_console();
    handle.write_to_guest(b"stale");
    let a = d.alloc(3, b'z');
    d.add_chain(TX_QUEUE, &[(a, 3, false)]);
    d.notify(TX_QUEUE as u32);
    d.write32(reg::STATUS, 0);
    assert_eq!(handle.pending_to_guest(), 0);
    assert_eq!(read_all(&handle), b"");
}

#[test]
fn writes_during_driver_setup_are_delivered_at_driver_ok() {
    let mut d = TestDriver::new(VirtioConsole::new().unwrap());
    let handle = ConsoleHandle::new(d.dev.clone());
    // The driver's initial reset drops what a previous driver left behind.
    handle.write_to_guest(b"stale");
    assert!(d.negotiate(crate::devices::virtio::VIRTIO_F_VERSION_1));
    assert_eq!(handle.pending_to_guest(), 0);
    for q in 0..2 {
        d.setup_queue_with(q, TestDriver::<VirtioConsole>::standard_layout(q, 16));
    }
    // Receive buffers posted before DRIVER_OK, as virtio_console does; bytes written now
    // wait because the device may not touch rings before DRIVER_OK.
    let rx = d.alloc(16, 0);
    let head = d.add_chain(RX_QUEUE, &[(rx, 16, true)]);
    assert!(!handle.is_ready());
    handle.write_to_guest(b"early");
    assert_eq!(d.take_used(RX_QUEUE), vec![]);
    d.driver_ok();
    assert!(handle.is_ready());
    assert_eq!(d.take_used(RX_QUEUE), vec![(u32::from(head), 5)]);
    assert_eq!(d.read_mem(rx, 5), b"early");
}

#[test]
fn config_space_reads_within_and_past_the_struct() {
    let (d, _handle) = running_console();
    assert_eq!(d.read_bytes(reg::CONFIG, 2), 80u16.to_le_bytes());
    assert_eq!(d.read_bytes(reg::CONFIG + 4, 4), 1u32.to_le_bytes());
    assert_eq!(d.read_bytes(reg::CONFIG + 10, 4), vec![0; 4]);
    assert_eq!(d.read_bytes(reg::CONFIG + 200, 8), vec![0; 8]);
    d.write_bytes(reg::CONFIG + 8, &[b'!', 0, 0, 0]);
    assert_eq!(d.status(), 0xf);
}

#[test]
fn receive_chain_without_writable_space_is_returned_empty() {
    let (mut d, handle) = running_console();
    let ro = d.alloc(8, 0);
    let head = d.add_chain(RX_QUEUE, &[(ro, 8, false)]);
    handle.write_to_guest(b"x");
    assert_eq!(d.take_used(RX_QUEUE), vec![(u32::from(head), 0)]);
    assert_eq!(d.read_mem(ro, 8), vec![0; 8], "readable buffer not written");
}

/// The host writes from its own thread while the guest (this thread) recycles receive
/// buffers and notifies: every byte arrives once, in order.
#[test]
fn host_thread_stream_reaches_the_guest_intact() {
    let (mut d, handle) = running_console();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let writer = {
        let handle = handle.clone();
        let data = data.clone();
        std::thread::spawn(move || {
            let mut off = 0;
            while off < data.len() {
                let n = handle.write_to_guest(&data[off..(off + 10_000).min(data.len())]);
                off += n;
                if n == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    const BUF: usize = 4096;
    let bufs: Vec<u64> = (0..8).map(|_| d.alloc(BUF, 0)).collect();
    let mut addr_of_head = std::collections::HashMap::new();
    for &a in &bufs {
        addr_of_head.insert(d.add_chain(RX_QUEUE, &[(a, BUF as u32, true)]), a);
    }
    d.notify(RX_QUEUE as u32);
    let mut got = Vec::new();
    // An iteration cap instead of a clock: a lost wake-up fails instead of hanging.
    for _ in 0..50_000_000u64 {
        if got.len() >= data.len() {
            break;
        }
        let used = d.take_used(RX_QUEUE);
        if used.is_empty() {
            std::thread::yield_now();
            d.notify(RX_QUEUE as u32);
            continue;
        }
        for (id, len) in used {
            let a = addr_of_head
                .remove(&(id as u16))
                .expect("used id was posted");
            got.extend(d.read_mem(a, len as usize));
            addr_of_head.insert(d.add_chain(RX_QUEUE, &[(a, BUF as u32, true)]), a);
        }
        d.notify(RX_QUEUE as u32);
    }
    writer.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "stream corrupted or reordered");
    assert!(!d.needs_reset());
}
