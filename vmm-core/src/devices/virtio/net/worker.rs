//! The interface's receive thread: waits for the socket or a kick, reads frames from the
//! peer without any lock, and hands them to the device for the receive queue. It also
//! resumes transmission when a partial send left bytes pending.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use rustix::event::{PollFd, PollFlags};
use rustix::net::RecvFlags;

use super::stream::FrameReader;
use super::{Signal, VirtioNet, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::mmio::VirtioMmioDevice;

/// Bytes read from the socket per `recv`.
const READ_CHUNK: usize = 64 * 1024;
/// Wake up this often even without events, to notice a dropped device.
const TICK: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 0,
    tv_nsec: 500_000_000,
};

/// Serves the interface until the device is dropped or the backend is cut.
pub(crate) fn run(
    backend: Arc<OwnedFd>,
    signal: Arc<Signal>,
    dev: Weak<Mutex<VirtioMmioDevice<VirtioNet>>>,
) {
    let mut reader = FrameReader::new();
    let mut frames = VecDeque::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if signal.stop.load(Ordering::Acquire) {
            return;
        }
        let (want_rx, want_tx) = {
            let Some(d) = dev.upgrade() else { return };
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            let n = d.device();
            if !n.is_connected() {
                return;
            }
            (n.wants_rx(), n.wants_tx())
        };
        let mut events = PollFlags::empty();
        if want_rx {
            events |= PollFlags::IN;
        }
        if want_tx {
            events |= PollFlags::OUT;
        }
        // The socket is polled only for what is wanted: a hung-up peer would otherwise
        // wake this loop constantly while the guest has no room for its frames.
        let mut fds = [
            PollFd::from_borrowed_fd(signal.kick.as_fd(), PollFlags::IN),
            PollFd::from_borrowed_fd(backend.as_fd(), events),
        ];
        let polled = if events.is_empty() { 1 } else { 2 };
        match rustix::event::poll(&mut fds[..polled], Some(&TICK)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                cut(&dev, &format!("poll: {e}"));
                return;
            }
        }
        let sock = if polled == 2 {
            fds[1].revents()
        } else {
            PollFlags::empty()
        };
        if fds[0].revents().contains(PollFlags::IN) {
            signal.drain();
        }
        if sock.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) && want_rx {
            match rustix::net::recv(&*backend, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    cut(&dev, &"the peer closed the stream");
                    return;
                }
                Ok((n, _)) => {
                    let n = n.min(buf.len());
                    if let Err(e) = reader.push(&buf[..n], &mut frames) {
                        cut(&dev, &e);
                        return;
                    }
                    if !frames.is_empty() {
                        let Some(d) = dev.upgrade() else { return };
                        let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
                        d.device_mut().queue_rx(&mut frames);
                        d.process_queue(RX_QUEUE);
                    }
                }
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    cut(&dev, &format!("recv: {e}"));
                    return;
                }
            }
        }
        if sock.intersects(PollFlags::OUT | PollFlags::ERR | PollFlags::HUP) && want_tx {
            let Some(d) = dev.upgrade() else { return };
            let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
            d.process_queue(TX_QUEUE);
        }
    }
}

fn cut(dev: &Weak<Mutex<VirtioMmioDevice<VirtioNet>>>, why: &dyn std::fmt::Display) {
    if let Some(d) = dev.upgrade() {
        let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
        d.device_mut().cut(why);
    }
}
