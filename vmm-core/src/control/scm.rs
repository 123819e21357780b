//! Sending and receiving bytes with file descriptors attached (`SCM_RIGHTS`) on a Unix
//! stream socket.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{align_of, size_of, MaybeUninit};
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// Most fds one frame may carry, and so the most a reader holds at any time; the control
/// protocol never sends more than one at a time, so anything past this is a protocol
/// violation, detected via `MSG_CTRUNC`.
pub const MAX_FDS_PER_MESSAGE: usize = 4;

/// `CMSG_SPACE` for [`MAX_FDS_PER_MESSAGE`] fds: one header plus the fds, padded to the
/// header's alignment. A receive buffer is at most this long, so a fifth fd truncates.
const CMSG_SPACE_FOR_MAX_FDS: usize = size_of::<libc::cmsghdr>()
    + (MAX_FDS_PER_MESSAGE * size_of::<RawFd>()).next_multiple_of(align_of::<libc::cmsghdr>());

/// A control buffer already aligned for `cmsghdr`, so rustix uses all of it and no more
/// (it would otherwise skip up to 8 bytes to align, and accept more fds than we allow).
#[repr(C, align(8))]
struct CmsgBuf([MaybeUninit<u8>; CMSG_SPACE_FOR_MAX_FDS]);

const _: () = assert!(align_of::<CmsgBuf>() >= align_of::<libc::cmsghdr>());

impl CmsgBuf {
    fn new() -> CmsgBuf {
        CmsgBuf([MaybeUninit::uninit(); CMSG_SPACE_FOR_MAX_FDS])
    }
}

/// Writes all of `bytes`, attaching `fds` to the first `sendmsg`.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} fds in one message, at most {MAX_FDS_PER_MESSAGE}",
                fds.len()
            ),
        ));
    }
    let mut sent = 0;
    let mut pending_fds = fds;
    while sent < bytes.len() {
        match sendmsg_once(sock, &bytes[sent..], pending_fds) {
            Ok(n) => {
                sent += n;
                // The kernel attached the fds to the first skb; never send them twice.
                pending_fds = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sendmsg_once(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = CmsgBuf::new();
    let mut control = SendAncillaryBuffer::new(&mut space.0);
    // The buffer holds MAX_FDS_PER_MESSAGE fds and the caller checked the count.
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds do not fit one control message", fds.len()),
        ));
    }
    // NOSIGNAL turns a closed peer into EPIPE instead of killing us with SIGPIPE.
    Ok(sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Why [`recv_with_fds`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer attached more fds than the caller had room for (at most
    /// [`MAX_FDS_PER_MESSAGE`] per frame).
    #[error("peer sent more than {max} fds in one message")]
    TooManyFds { max: usize },
}

/// One `recvmsg` into `buf`, taking at most `fd_room` fds (close-on-exec), which are
/// appended to `fds`. Returns the byte count, 0 at end of stream. `fd_room` is capped at
/// [`MAX_FDS_PER_MESSAGE`].
///
/// The control buffer is sized for exactly `fd_room` fds, so the kernel never installs
/// more than that in this process: any fds past it are closed by the kernel before the
/// call returns and reported as [`RecvError::TooManyFds`] (`MSG_CTRUNC`). A caller that
/// passes what is left of a frame's budget therefore never holds more than the budget,
/// however the peer spreads its fds over its sends. With `dont_wait`, a read that would
/// block fails with `WouldBlock` instead.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    fd_room: usize,
    dont_wait: bool,
) -> Result<usize, RecvError> {
    loop {
        match recvmsg_once(sock, buf, fds, fd_room.min(MAX_FDS_PER_MESSAGE), dont_wait) {
            Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `CMSG_LEN` for `n` fds (0 for none): unpadded, so the kernel's room for fds,
/// `(len - header) / 4`, is exactly `n` (`CMSG_SPACE` would round 1 up to 2 and 3 to 4).
const fn cmsg_len(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    size_of::<libc::cmsghdr>() + n * size_of::<RawFd>()
}

const _: () = assert!(cmsg_len(MAX_FDS_PER_MESSAGE) <= CMSG_SPACE_FOR_MAX_FDS);

fn recvmsg_once(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    fd_room: usize,
    dont_wait: bool,
) -> Result<usize, RecvError> {
    let mut space = CmsgBuf::new();
    // The buffer is aligned, so a prefix of it is too: room for exactly `fd_room` fds.
    let mut control = RecvAncillaryBuffer::new(&mut space.0[..cmsg_len(fd_room)]);
    // CMSG_CLOEXEC keeps received fds from leaking into anything we exec.
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if dont_wait {
        flags |= RecvFlags::DONTWAIT;
    }
    let received =
        recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags).map_err(io::Error::from)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received_fds) = message {
            fds.extend(received_fds);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        // Whatever did fit was taken (the caller closes it with `fds`); the rest the
        // kernel already discarded.
        return Err(RecvError::TooManyFds {
            max: MAX_FDS_PER_MESSAGE,
        });
    }
    Ok(received.bytes)
}
