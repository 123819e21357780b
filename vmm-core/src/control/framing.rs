//! Length-prefixed frames over a Unix stream socket: a `u32` little-endian payload
//! length, then that many bytes of JSON. Lengths above [`MAX_MESSAGE`] are refused before
//! anything is allocated or read.
//!
//! A reader never holds more than [`MAX_FDS_PER_MESSAGE`] received fds: each `recvmsg`
//! only has room for what is left of the frame's budget, so the kernel closes any extra
//! fds before they reach this process and the frame is a violation. And a frame, once
//! begun, must end within the reader's frame deadline ([`FRAME_DEADLINE`]); between
//! frames the reader waits as long as the socket lets it.
//!
//! The deadline is enforced with `poll` per read, not the socket's read timeout
//! (`SO_RCVTIMEO`): that timeout belongs to the socket's owner (the supervisor sets it
//! for the handshake and clears it after), is shared by every clone of the socket and
//! counts per call rather than per frame, so using it would mean a `setsockopt` before
//! each read and restoring the owner's value after, a system call the partition's
//! seccomp profile does not allow. Reads inside a frame are non-blocking and only
//! poll (with what is left of the deadline) when nothing has arrived, so a frame that
//! arrives whole costs no extra system call.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::messages::Message;
use super::scm::{recv_with_fds, send_with_fds, RecvError, MAX_FDS_PER_MESSAGE};
use super::ControlError;

/// Largest payload of one frame, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
const HEADER_LEN: usize = 4;
/// How long a frame may take from its first byte to its last by default.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(2);

/// A decoded message and the fds that came with it.
#[derive(Debug)]
pub struct Received<M> {
    pub message: M,
    pub fds: Vec<OwnedFd>,
}

/// Reads frames of `M` from one end of the control socket.
pub struct MessageReader<M> {
    stream: UnixStream,
    /// Fixed `MAX_MESSAGE` buffer: a peer chooses lengths, never our allocation size.
    buf: Box<[u8]>,
    /// Fds of the frame being read; never more than [`MAX_FDS_PER_MESSAGE`].
    fds: VecDeque<OwnedFd>,
    frame_deadline: Duration,
    /// When the frame being read must be complete; `None` until its first byte.
    deadline: Option<Instant>,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message> MessageReader<M> {
    /// A reader with the default [`FRAME_DEADLINE`].
    pub fn new(stream: UnixStream) -> Self {
        Self::with_frame_deadline(stream, FRAME_DEADLINE)
    }

    /// A reader that cuts off a frame not complete `frame_deadline` after its first byte.
    pub fn with_frame_deadline(stream: UnixStream, frame_deadline: Duration) -> Self {
        Self {
            stream,
            buf: vec![0; MAX_MESSAGE].into_boxed_slice(),
            fds: VecDeque::new(),
            frame_deadline,
            deadline: None,
            _message: PhantomData,
        }
    }

    /// Fds held for the frame being read (at most [`MAX_FDS_PER_MESSAGE`]).
    pub fn held_fds(&self) -> usize {
        self.fds.len()
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Blocks for the next message: as long as the socket allows until its first byte,
    /// then at most the frame deadline for the rest. Any error other than
    /// [`ControlError::Io`] means the peer broke the protocol and the connection must be
    /// dropped. On any error, every fd received with the frame so far is closed.
    pub fn recv(&mut self) -> Result<Received<M>, ControlError> {
        self.deadline = None;
        let result = self.recv_frame();
        self.deadline = None;
        if result.is_err() {
            self.fds.clear();
        }
        result
    }

    fn recv_frame(&mut self) -> Result<Received<M>, ControlError> {
        let mut header = [0u8; HEADER_LEN];
        let got = self.read_full(&mut header)?;
        if got == 0 {
            return Err(ControlError::Closed);
        }
        if got < HEADER_LEN {
            return Err(ControlError::Truncated {
                expected: HEADER_LEN,
                got,
            });
        }
        let len = u32::from_le_bytes(header) as usize;
        if len == 0 {
            return Err(ControlError::Empty);
        }
        if len > MAX_MESSAGE {
            return Err(ControlError::Oversized {
                len,
                max: MAX_MESSAGE,
            });
        }
        let mut payload = std::mem::take(&mut self.buf);
        let got = self.read_full(&mut payload[..len]);
        let decoded = got.and_then(|got| {
            if got < len {
                return Err(ControlError::Truncated { expected: len, got });
            }
            serde_json::from_slice::<M>(&payload[..len]).map_err(ControlError::Malformed)
        });
        self.buf = payload;
        let message = decoded?;
        let fds = self.take_fds(message.fd_count())?;
        Ok(Received { message, fds })
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read. The first
    /// byte of a frame starts its deadline; after that, reads never block past it.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ControlError> {
        let mut got = 0;
        while got < buf.len() {
            let in_frame = self.deadline.is_some();
            let room = MAX_FDS_PER_MESSAGE.saturating_sub(self.fds.len());
            let read = recv_with_fds(
                self.stream.as_fd(),
                &mut buf[got..],
                &mut self.fds,
                room,
                in_frame,
            );
            let n = match read {
                Ok(n) => n,
                Err(RecvError::Io(e)) if in_frame && e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_in_frame(got, buf.len())?;
                    continue;
                }
                Err(RecvError::TooManyFds { max }) => return Err(ControlError::TooManyFds { max }),
                Err(RecvError::Io(e)) => return Err(ControlError::Io(e)),
            };
            if n == 0 {
                break;
            }
            if self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.frame_deadline);
            }
            got += n;
        }
        Ok(got)
    }

    /// Waits until the socket is readable or the frame's deadline passes.
    fn wait_in_frame(&self, got: usize, expected: usize) -> Result<(), ControlError> {
        let timed_out = || ControlError::FrameTimeout {
            deadline: self.frame_deadline,
            expected,
            got,
        };
        loop {
            let left = self.deadline.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Err(timed_out());
            }
            let timeout = Timespec::try_from(left).map_err(|_| timed_out())?;
            let mut fds = [PollFd::new(&self.stream, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                // Data, end of stream or an error: the next read says which.
                Ok(n) if n > 0 => return Ok(()),
                Ok(_) => return Err(timed_out()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ControlError::Io(e.into())),
            }
        }
    }

    /// The writer attaches a message's fds to its first byte, so by the time the whole
    /// frame is read they have arrived, and nothing else may be queued.
    fn take_fds(&mut self, want: usize) -> Result<Vec<OwnedFd>, ControlError> {
        let got = self.fds.len();
        if got != want {
            self.fds.clear();
            return Err(ControlError::FdMismatch {
                expected: want,
                got,
            });
        }
        Ok(self.fds.drain(..).collect())
    }
}

/// Writes frames of `M` to one end of the control socket.
pub struct MessageWriter<M> {
    stream: UnixStream,
    buf: Vec<u8>,
    _message: PhantomData<fn(M)>,
}

impl<M: Message> MessageWriter<M> {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(HEADER_LEN + 1024),
            _message: PhantomData,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends a message that carries no fds.
    pub fn send(&mut self, message: &M) -> Result<(), ControlError> {
        self.send_with_fds(message, &[])
    }

    /// Sends a message with exactly `message.fd_count()` fds attached.
    pub fn send_with_fds(
        &mut self,
        message: &M,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ControlError> {
        if fds.len() != message.fd_count() {
            return Err(ControlError::FdMismatch {
                expected: message.fd_count(),
                got: fds.len(),
            });
        }
        self.encode(message)?;
        send_with_fds(self.stream.as_fd(), &self.buf, fds)?;
        Ok(())
    }

    fn encode(&mut self, message: &M) -> Result<(), ControlError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER_LEN]);
        serde_json::to_writer(&mut self.buf, message).map_err(ControlError::Encode)?;
        let len = self.buf.len() - HEADER_LEN;
        if len > MAX_MESSAGE {
            return Err(ControlError::TooLargeToSend {
                len,
                max: MAX_MESSAGE,
            });
        }
        self.buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }
}
