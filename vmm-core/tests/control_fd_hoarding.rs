//! A hostile peer hoarding fds on the control socket, measured in this process's fd table
//! (`/proc/self/fd`). Its own test binary with a single test, so no other test opens or
//! closes fds while it counts.

use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use vmm_core::control::{ControlError, Event, MessageReader, MAX_FDS_PER_MESSAGE, MAX_MESSAGE};

fn open_fds() -> usize {
    // The directory handle itself is counted every time, so differences are exact.
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// One byte with `fds` attached, as a hostile peer would send it; false once the
/// socket is full or gone.
fn send_byte_with_fds(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> bool {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    sendmsg(sock, &[IoSlice::new(b"x")], &mut control, flags).is_ok()
}

#[test]
fn a_header_then_one_byte_sends_with_fds_never_make_the_reader_hold_more_than_the_max() {
    let (peer, ours) = UnixStream::pair().unwrap();
    let files: Vec<_> = (0..MAX_FDS_PER_MESSAGE)
        .map(|_| tempfile::tempfile().unwrap())
        .collect();
    let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    let baseline = open_fds();

    let reader = std::thread::spawn(move || {
        let mut reader = MessageReader::<Event>::new(ours);
        let result = reader.recv();
        let held = reader.held_fds();
        // Returned so its socket stays open while we count.
        (result, held, reader)
    });
    // A frame of the largest size, begun and never finished.
    (&peer)
        .write_all(&(MAX_MESSAGE as u32).to_le_bytes())
        .unwrap();
    assert!(send_byte_with_fds(peer.as_fd(), &fds));
    // The reader takes those first fds and holds them while it waits for the rest.
    let start = Instant::now();
    while open_fds() != baseline + MAX_FDS_PER_MESSAGE {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the reader never took the frame's first fds: {} open, baseline {baseline}",
            open_fds()
        );
        std::thread::yield_now();
    }

    let mut peak = 0;
    let mut sent = 1;
    while sent < 200 && send_byte_with_fds(peer.as_fd(), &fds) {
        sent += 1;
        peak = peak.max(open_fds());
    }
    let (result, held, _reader) = reader.join().unwrap();
    peak = peak.max(open_fds());
    assert!(
        matches!(result, Err(ControlError::TooManyFds { max }) if max == MAX_FDS_PER_MESSAGE),
        "{result:?}"
    );
    assert_eq!(held, 0);
    assert!(
        peak <= baseline + MAX_FDS_PER_MESSAGE,
        "peak {peak} open fds, baseline {baseline}, after {sent} sends"
    );
    assert_eq!(
        open_fds(),
        baseline,
        "every received fd is closed once the frame is refused"
    );
}
