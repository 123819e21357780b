//! The relay loop: one single-threaded `poll` over the guest side (the VMM's stream) and
//! passt's side. Frames from the guest are classified ([`crate::packet::classify`]) and
//! forwarded, dropped or answered with a refusal; frames from passt go to the guest
//! unchanged (only their framing is checked). Writes never block: each direction has a
//! bounded output buffer, and a side is not read while the buffer its frames would go to
//! is full, so a slow peer slows the other down instead of growing memory.
//!
//! The relay ends when either side closes, breaks the protocol or fails; both sockets
//! close with it, so the VMM sees its link go down and passt (one-off) exits. A dead
//! relay never leaves the guest connected to passt directly.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvFlags, SendFlags};

use crate::packet::{classify, DropReason, Flow, Verdict};
use crate::rules::{Denial, RuleSet};
use crate::stream::{encode, FrameReader, StreamError};

/// Bytes waiting for one side before the relay stops reading what would add to them.
pub const OUT_MAX: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;

/// Which socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Guest,
    Passt,
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayEnd {
    #[error("the {0:?} side closed")]
    Closed(Side),
    #[error("the {side:?} side broke the stream protocol: {error}")]
    Protocol { side: Side, error: StreamError },
    #[error("the {side:?} side failed: {error}")]
    Io {
        side: Side,
        error: rustix::io::Errno,
    },
}

/// Something worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Refused { flow: Flow, denial: Denial },
    Dropped(DropReason),
}

/// Counters, for the final report and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub to_passt: u64,
    pub to_guest: u64,
    pub refused: u64,
    pub dropped: u64,
}

#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    at: usize,
}

impl Out {
    fn pending(&self) -> usize {
        self.buf.len() - self.at
    }

    fn push(&mut self, frame: &[u8]) {
        if self.at > 0 && self.at >= self.buf.len() / 2 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(&encode(frame));
    }

    /// Sends what the socket takes now.
    fn flush(&mut self, fd: &OwnedFd, side: Side) -> Result<(), RelayEnd> {
        while self.pending() > 0 {
            match rustix::net::send(
                fd,
                &self.buf[self.at..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => self.at += n,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(error) => return Err(RelayEnd::Io { side, error }),
            }
        }
        if self.pending() == 0 {
            self.buf.clear();
            self.at = 0;
        }
        Ok(())
    }
}

/// Reads what `fd` has into `reader`, completed frames into `frames`.
fn read_side(
    fd: &OwnedFd,
    side: Side,
    buf: &mut [u8],
    reader: &mut FrameReader,
    frames: &mut std::collections::VecDeque<Vec<u8>>,
) -> Result<(), RelayEnd> {
    match rustix::net::recv(fd, &mut *buf, RecvFlags::DONTWAIT) {
        Ok((0, _)) => Err(RelayEnd::Closed(side)),
        Ok((n, _)) => reader
            .push(&buf[..n.min(buf.len())], frames)
            .map_err(|error| RelayEnd::Protocol { side, error }),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(()),
        Err(error) => Err(RelayEnd::Io { side, error }),
    }
}

/// Relays until one side ends; `on_event` hears every refusal and drop.
pub fn run(
    guest: &OwnedFd,
    passt: &OwnedFd,
    rules: &RuleSet,
    stats: &mut Stats,
    on_event: &mut dyn FnMut(&Event),
) -> RelayEnd {
    match run_inner(guest, passt, rules, stats, on_event) {
        Ok(()) => RelayEnd::Closed(Side::Guest),
        Err(e) => e,
    }
}

fn run_inner(
    guest: &OwnedFd,
    passt: &OwnedFd,
    rules: &RuleSet,
    stats: &mut Stats,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(), RelayEnd> {
    let (mut from_guest, mut from_passt) = (FrameReader::new(), FrameReader::new());
    let (mut to_guest, mut to_passt) = (Out::default(), Out::default());
    let mut frames = std::collections::VecDeque::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read_guest = to_passt.pending() < OUT_MAX && to_guest.pending() < OUT_MAX;
        let read_passt = to_guest.pending() < OUT_MAX;
        let mut ge = PollFlags::empty();
        let mut pe = PollFlags::empty();
        if read_guest {
            ge |= PollFlags::IN;
        }
        if to_guest.pending() > 0 {
            ge |= PollFlags::OUT;
        }
        if read_passt {
            pe |= PollFlags::IN;
        }
        if to_passt.pending() > 0 {
            pe |= PollFlags::OUT;
        }
        let mut fds = [
            PollFd::from_borrowed_fd(guest.as_fd(), ge),
            PollFd::from_borrowed_fd(passt.as_fd(), pe),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(error) => {
                return Err(RelayEnd::Io {
                    side: Side::Guest,
                    error,
                })
            }
        }
        let (gr, pr) = (fds[0].revents(), fds[1].revents());
        let readable = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
        if read_guest && gr.intersects(readable) {
            read_side(guest, Side::Guest, &mut buf, &mut from_guest, &mut frames)?;
            for f in frames.drain(..) {
                match classify(&f, rules) {
                    Verdict::Forward => {
                        stats.to_passt += 1;
                        to_passt.push(&f);
                    }
                    Verdict::Refuse {
                        reply,
                        flow,
                        denial,
                    } => {
                        stats.refused += 1;
                        to_guest.push(&reply);
                        on_event(&Event::Refused { flow, denial });
                    }
                    Verdict::Drop(d) => {
                        stats.dropped += 1;
                        on_event(&Event::Dropped(d));
                    }
                }
            }
        }
        if read_passt && pr.intersects(readable) {
            read_side(passt, Side::Passt, &mut buf, &mut from_passt, &mut frames)?;
            for f in frames.drain(..) {
                stats.to_guest += 1;
                to_guest.push(&f);
            }
        }
        to_passt.flush(passt, Side::Passt)?;
        to_guest.flush(guest, Side::Guest)?;
    }
}

/// At most `per_second` log lines a second; says how many were skipped.
pub struct LogLimit {
    per_second: u32,
    window: Instant,
    used: u32,
    skipped: u64,
}

impl LogLimit {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Instant::now(),
            used: 0,
            skipped: 0,
        }
    }

    /// `Some(skipped since the last line)` when a line may be written now.
    pub fn allow(&mut self) -> Option<u64> {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            Some(std::mem::take(&mut self.skipped))
        } else {
            self.skipped += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests;
