//! Length-prefixed frames over a Unix stream socket: a `u32` little-endian payload
//! length, then that many bytes of JSON. Lengths above [`MAX_MESSAGE`] are refused before
//! anything is allocated or read.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::messages::Message;
use super::scm::{recv_with_fds, send_with_fds, RecvError};
use super::ControlError;

/// Largest payload of one frame, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
const HEADER_LEN: usize = 4;

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
    fds: VecDeque<OwnedFd>,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message> MessageReader<M> {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: vec![0; MAX_MESSAGE].into_boxed_slice(),
            fds: VecDeque::new(),
            _message: PhantomData,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Blocks for the next message. Any error other than [`ControlError::Io`] means the
    /// peer broke the protocol and the connection must be dropped.
    pub fn recv(&mut self) -> Result<Received<M>, ControlError> {
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

    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ControlError> {
        let mut got = 0;
        while got < buf.len() {
            let n = recv_with_fds(self.stream.as_fd(), &mut buf[got..], &mut self.fds).map_err(
                |e| match e {
                    RecvError::TooManyFds { max } => ControlError::TooManyFds { max },
                    RecvError::Io(e) => ControlError::Io(e),
                },
            )?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
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
