//! Sending and receiving bytes with file descriptors attached (`SCM_RIGHTS`) on a Unix
//! stream socket.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Most fds one `recvmsg` accepts; the control protocol never sends more than one at a
/// time, so anything past this is a protocol violation, detected via `MSG_CTRUNC`.
pub const MAX_FDS_PER_MESSAGE: usize = 4;

/// Room for one `cmsghdr` with [`MAX_FDS_PER_MESSAGE`] ints, 8-byte aligned.
const CMSG_BUF_WORDS: usize = 8;

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
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
    let mut cmsg_buf = [0u64; CMSG_BUF_WORDS];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "no name, no iov, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let space = cmsg_space(fds.len());
        debug_assert!(space <= std::mem::size_of_val(&cmsg_buf));
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cmsg_buf`, which is 8-byte aligned, zeroed and at
        // least `space` bytes long (fds.len() <= MAX_FDS_PER_MESSAGE, checked by the
        // caller), so CMSG_FIRSTHDR returns a non-null pointer to a header inside it and
        // CMSG_DATA has room for `fds.len()` ints after it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len =
                libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as usize;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: `msg` points at `iov` (valid for `bytes.len()` bytes, only read by the
    // kernel) and, if set, `cmsg_buf`; both outlive the call. MSG_NOSIGNAL turns a closed
    // peer into EPIPE instead of killing us with SIGPIPE.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One `recvmsg` into `buf`; received fds (close-on-exec) are appended to `fds`.
/// Returns the byte count, 0 at end of stream.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    loop {
        match recvmsg_once(sock, buf, fds) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn recvmsg_once(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut cmsg_buf = [0u64; CMSG_BUF_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "no name, no iov, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS_PER_MESSAGE);
    // SAFETY: iov describes `buf` (writable, buf.len() bytes) and msg_control describes
    // `cmsg_buf` (at least cmsg_space(MAX_FDS_PER_MESSAGE) bytes); both outlive the call.
    // MSG_CMSG_CLOEXEC keeps received fds from leaking into anything we exec.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    take_fds(&msg, fds);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Whatever did fit was taken (and will be closed with `fds`); the rest the kernel
        // already discarded.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer sent more than {MAX_FDS_PER_MESSAGE} fds in one message"),
        ));
    }
    Ok(n as usize)
}

/// Moves every `SCM_RIGHTS` fd in `msg`'s control data into `fds`.
fn take_fds(msg: &libc::msghdr, fds: &mut VecDeque<OwnedFd>) {
    // SAFETY: `msg` was filled by a successful recvmsg, so its control buffer holds
    // `msg_controllen` bytes of well-formed cmsg headers; CMSG_FIRSTHDR/CMSG_NXTHDR stay
    // within that length and return null at the end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null cmsg pointers from CMSG_FIRSTHDR/NXTHDR point at a complete
        // header inside the control buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is pure arithmetic.
            let data_len = header.cmsg_len - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points just past the header; the kernel wrote `count`
            // ints there (cmsg_len covers them, within the control buffer).
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: reading the i-th of `count` ints written by the kernel.
                let raw = unsafe { data.add(i).read_unaligned() };
                // SAFETY: SCM_RIGHTS installed `raw` as a new fd in this process that
                // nothing else owns; we take sole ownership (closed on drop).
                fds.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as above; CMSG_NXTHDR returns null past the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}
