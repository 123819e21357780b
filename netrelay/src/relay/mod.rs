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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use isolation_policy::network::Protocol;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvFlags, SendFlags};

use crate::control::{self, ControlError, FromRelay, ToRelay};
use crate::dns::Names;
use crate::packet::{
    classify_with, drop_report, parse_l4, tcp_rst_frame, DropReason, Endpoint, Flow, Verdict,
    IPPROTO_TCP, IPPROTO_UDP, L4, TCP_ACK, TCP_RST,
};
use crate::rules::{Denial, RuleSet, DNS_PORT};
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
    Refused {
        flow: Flow,
        denial: Denial,
    },
    Dropped(DropReason),
    /// A tracked flow the new rule set denies was cut.
    Cut {
        flow: Flow,
        denial: Denial,
    },
    /// A rule set from the control channel took effect.
    RulesApplied {
        generation: u64,
        cut_flows: u32,
    },
    /// The control channel broke its protocol or failed; the message was dropped.
    Control(String),
}

/// Counters, for the final report, the control channel's `stats` and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub to_passt: u64,
    pub to_guest: u64,
    pub bytes_to_passt: u64,
    pub bytes_to_guest: u64,
    pub refused: u64,
    pub dropped: u64,
    /// Every denial (refused, dropped because denied, cut).
    pub denied: u64,
}

/// Denials reported on the control channel per second at most.
pub const DENIED_PER_SECOND: u32 = 20;
/// How often `stats` goes out on the control channel.
pub const STATS_EVERY: Duration = Duration::from_secs(5);

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

/// Relays until one side ends with a fixed rule set; `on_event` hears every refusal and
/// drop.
pub fn run(
    guest: &OwnedFd,
    passt: &OwnedFd,
    rules: &RuleSet,
    stats: &mut Stats,
    on_event: &mut dyn FnMut(&Event),
) -> RelayEnd {
    run_with(guest, passt, None, rules.clone(), stats, on_event)
}

/// Relays until one side ends. With a `control` socket the relay reads nothing from the
/// guest until the first `rules` message arrives (`rules` is replaced by it), reports
/// denials and counters on it, and a closed control channel leaves the last rule set in
/// force.
pub fn run_with(
    guest: &OwnedFd,
    passt: &OwnedFd,
    control: Option<&OwnedFd>,
    rules: RuleSet,
    stats: &mut Stats,
    on_event: &mut dyn FnMut(&Event),
) -> RelayEnd {
    let mut relay = Relay {
        rules,
        names: Names::default(),
        flows: FlowTable::default(),
        generation: 0,
        control: control.map(|fd| Control::new(fd.as_fd())),
    };
    match relay.run(guest, passt, stats, on_event) {
        Ok(()) => RelayEnd::Closed(Side::Guest),
        Err(e) => e,
    }
}

struct Relay<'a> {
    rules: RuleSet,
    names: Names,
    flows: FlowTable,
    generation: u64,
    control: Option<Control<'a>>,
}

impl Relay<'_> {
    fn run(
        &mut self,
        guest: &OwnedFd,
        passt: &OwnedFd,
        stats: &mut Stats,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(), RelayEnd> {
        let (mut from_guest, mut from_passt) = (FrameReader::new(), FrameReader::new());
        let (mut to_guest, mut to_passt) = (Out::default(), Out::default());
        let mut frames = std::collections::VecDeque::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut next_tick = Instant::now() + STATS_EVERY;
        loop {
            // With a control channel, the guest waits for its first rule set.
            let rules_known = self.control.is_none() || self.generation > 0;
            let read_guest =
                rules_known && to_passt.pending() < OUT_MAX && to_guest.pending() < OUT_MAX;
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
            let control_fd = self.control.as_ref().filter(|c| c.open).map(|c| c.fd);
            let mut fds = vec![
                PollFd::from_borrowed_fd(guest.as_fd(), ge),
                PollFd::from_borrowed_fd(passt.as_fd(), pe),
            ];
            if let Some(fd) = control_fd {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            let timeout = rustix::event::Timespec {
                tv_sec: wait.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: wait.subsec_nanos().into(),
            };
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(error) => {
                    return Err(RelayEnd::Io {
                        side: Side::Guest,
                        error,
                    })
                }
            }
            let (gr, pr) = (fds[0].revents(), fds[1].revents());
            let cr = fds.get(2).map(|f| f.revents());
            drop(fds);
            let readable = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
            if cr.is_some_and(|r| r.intersects(readable)) {
                self.control_message(stats, &mut to_guest, &mut to_passt, on_event);
            }
            if read_guest && gr.intersects(readable) {
                read_side(guest, Side::Guest, &mut buf, &mut from_guest, &mut frames)?;
                for f in frames.drain(..) {
                    self.guest_frame(&f, stats, &mut to_guest, &mut to_passt, on_event);
                }
            }
            if read_passt && pr.intersects(readable) {
                read_side(passt, Side::Passt, &mut buf, &mut from_passt, &mut frames)?;
                for f in frames.drain(..) {
                    self.flows.saw_passt(&f);
                    self.learn(&f);
                    stats.to_guest += 1;
                    stats.bytes_to_guest += f.len() as u64;
                    to_guest.push(&f);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + STATS_EVERY;
                self.flows.expire(now);
                self.names.expire(now);
                if let Some(c) = &mut self.control {
                    c.stats(stats);
                }
            }
            to_passt.flush(passt, Side::Passt)?;
            to_guest.flush(guest, Side::Guest)?;
        }
    }

    fn guest_frame(
        &mut self,
        f: &[u8],
        stats: &mut Stats,
        to_guest: &mut Out,
        to_passt: &mut Out,
        on_event: &mut dyn FnMut(&Event),
    ) {
        let now = Instant::now();
        // A flow allowed through a name stays allowed by it after the name's TTL.
        let flow_names: Vec<String> = parse_l4(f)
            .and_then(|l4| self.flows.map.get(&FlowKey::outbound(&l4)))
            .map(|s| s.names.clone())
            .unwrap_or_default();
        match classify_with(f, &self.rules, &self.names, &flow_names, now) {
            Verdict::Forward => {
                self.flows.saw_guest(f, &self.names, now);
                self.note_query(f, now);
                stats.to_passt += 1;
                stats.bytes_to_passt += f.len() as u64;
                to_passt.push(f);
            }
            Verdict::Refuse {
                reply,
                flow,
                denial,
            } => {
                stats.refused += 1;
                stats.denied += 1;
                self.flows.forget(f);
                to_guest.push(&reply);
                self.report(&flow, &denial);
                on_event(&Event::Refused { flow, denial });
            }
            Verdict::Drop(d) => {
                stats.dropped += 1;
                // Denied pings and RSTs, fragments, protocols and ICMP types the relay
                // does not pass: denials too, reported with what they tried to reach.
                if let Some((protocol, dst, port, reason)) = drop_report(f, &d) {
                    stats.denied += 1;
                    let host = self.host(dst);
                    if let Some(c) = &mut self.control {
                        c.denied(protocol, dst, port, host, reason);
                    }
                }
                on_event(&Event::Dropped(d));
            }
        }
    }

    fn report(&mut self, flow: &Flow, denial: &Denial) {
        if let Some(c) = &mut self.control {
            c.denied(
                flow.protocol.name().to_string(),
                flow.dst,
                flow.port,
                flow.host.clone(),
                denial.to_string(),
            );
        }
    }

    fn host(&self, ip: IpAddr) -> Option<String> {
        self.names
            .names_for(ip, Instant::now())
            .first()
            .map(|s| s.to_string())
    }

    /// A DNS query the guest sent to passt's resolver (forwarded, so allowed).
    fn note_query(&mut self, f: &[u8], now: Instant) {
        if let Some(l4) = parse_l4(f) {
            if l4.proto == IPPROTO_UDP
                && l4.dport == DNS_PORT
                && self.rules.resolvers.contains(&l4.dst)
            {
                self.names.query(l4.dst, l4.sport, l4.payload, now);
            }
        }
    }

    /// An answer from passt's resolver on its way to the guest: host-name rules follow it.
    fn learn(&mut self, f: &[u8]) {
        if let Some(l4) = parse_l4(f) {
            if l4.proto == IPPROTO_UDP
                && l4.sport == DNS_PORT
                && self.rules.resolvers.contains(&l4.src)
            {
                self.names
                    .answer(l4.src, l4.dport, l4.payload, Instant::now());
            }
        }
    }

    fn control_message(
        &mut self,
        stats: &mut Stats,
        to_guest: &mut Out,
        to_passt: &mut Out,
        on_event: &mut dyn FnMut(&Event),
    ) {
        let Some(c) = &mut self.control else {
            return;
        };
        let msg = match c.recv() {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                on_event(&Event::Control(e.to_string()));
                return;
            }
        };
        match msg {
            ToRelay::Rules { rules, dns } => {
                match control::rule_set(&rules, dns, &self.rules.resolvers) {
                    Ok(set) => {
                        self.rules = set;
                        self.generation += 1;
                        let cut = self.cut_denied_flows(stats, to_guest, to_passt, on_event);
                        let applied = FromRelay::RulesApplied {
                            generation: self.generation,
                            cut_flows: cut,
                        };
                        if let Some(c) = &mut self.control {
                            c.send(&applied);
                        }
                        on_event(&Event::RulesApplied {
                            generation: self.generation,
                            cut_flows: cut,
                        });
                    }
                    Err(e) => {
                        let error = e.to_string();
                        on_event(&Event::Control(format!("rules rejected: {error}")));
                        if let Some(c) = &mut self.control {
                            c.send(&FromRelay::RulesRejected { error });
                        }
                    }
                }
            }
        }
    }

    /// Cuts every tracked flow the current rules deny: TCP gets a RST each way.
    fn cut_denied_flows(
        &mut self,
        stats: &mut Stats,
        to_guest: &mut Out,
        to_passt: &mut Out,
        on_event: &mut dyn FnMut(&Event),
    ) -> u32 {
        let now = Instant::now();
        let denied: Vec<(FlowKey, Denial)> = self
            .flows
            .map
            .iter()
            .filter_map(|(k, state)| {
                let mut names = self.names.names_for(k.remote, now);
                names.extend(state.names.iter().map(String::as_str));
                self.rules
                    .check_names(k.protocol(), k.remote, Some(k.remote_port), &names)
                    .err()
                    .map(|d| (*k, d))
            })
            .collect();
        let mut cut = 0u32;
        for (key, denial) in denied {
            let Some(state) = self.flows.map.remove(&key) else {
                continue;
            };
            if key.proto == IPPROTO_TCP {
                let (to_g, to_p) = state.resets(&key);
                to_guest.push(&to_g);
                to_passt.push(&to_p);
            }
            cut = cut.saturating_add(1);
            stats.denied += 1;
            let flow = Flow {
                protocol: key.protocol(),
                dst: key.remote,
                port: Some(key.remote_port),
                host: self.host(key.remote),
            };
            self.report(&flow, &denial);
            on_event(&Event::Cut { flow, denial });
        }
        cut
    }
}

/// The relay's end of the control channel.
struct Control<'a> {
    fd: BorrowedFd<'a>,
    open: bool,
    buf: Vec<u8>,
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl<'a> Control<'a> {
    fn new(fd: BorrowedFd<'a>) -> Self {
        Control {
            fd,
            open: true,
            buf: vec![0; control::MAX_MESSAGE + 1],
            window: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    fn recv(&mut self) -> Result<Option<ToRelay>, ControlError> {
        match control::recv_on(self.fd, &mut self.buf, true) {
            Err(ControlError::Closed) => {
                self.open = false;
                Err(ControlError::Closed)
            }
            r => r,
        }
    }

    /// Sends without blocking; false when the message was dropped.
    fn send(&mut self, msg: &FromRelay) -> bool {
        if !self.open {
            return false;
        }
        match control::send_on(self.fd, msg, true) {
            Ok(()) => true,
            Err(ControlError::Closed) => {
                self.open = false;
                false
            }
            Err(_) => false,
        }
    }

    fn denied(
        &mut self,
        protocol: String,
        destination: IpAddr,
        port: Option<u16>,
        host: Option<String>,
        reason: String,
    ) {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used = 0;
        }
        if self.used >= DENIED_PER_SECOND {
            self.suppressed += 1;
            return;
        }
        let msg = FromRelay::Denied {
            protocol,
            destination,
            port,
            host,
            reason,
            suppressed: self.suppressed,
        };
        if self.send(&msg) {
            self.used += 1;
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    fn stats(&mut self, s: &Stats) {
        self.send(&FromRelay::Stats {
            frames_in: s.to_guest,
            frames_out: s.to_passt,
            bytes_in: s.bytes_to_guest,
            bytes_out: s.bytes_to_passt,
            denied: s.denied,
        });
    }
}

/// The flows the guest opened, so a new rule set can cut the ones it denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FlowKey {
    proto: u8,
    guest: IpAddr,
    guest_port: u16,
    remote: IpAddr,
    remote_port: u16,
}

impl FlowKey {
    /// The flow of a frame from the guest.
    fn outbound(l4: &L4<'_>) -> Self {
        FlowKey {
            proto: l4.proto,
            guest: l4.src,
            guest_port: l4.sport,
            remote: l4.dst,
            remote_port: l4.dport,
        }
    }

    fn protocol(&self) -> Protocol {
        if self.proto == IPPROTO_TCP {
            Protocol::Tcp
        } else {
            Protocol::Udp
        }
    }
}

#[derive(Debug, Clone)]
struct FlowState {
    /// The names passt's resolver had given the remote address when the flow started.
    names: Vec<String>,
    guest_mac: [u8; 6],
    remote_mac: [u8; 6],
    /// The sequence number after the guest's latest segment.
    guest_next: u32,
    /// The sequence number after passt's latest segment, once one was seen.
    remote_next: Option<u32>,
    /// What the guest last acknowledged.
    guest_ack: Option<u32>,
    last: Instant,
}

impl FlowState {
    /// RSTs to the guest and to passt.
    fn resets(&self, k: &FlowKey) -> (Vec<u8>, Vec<u8>) {
        let guest = Endpoint {
            mac: self.guest_mac,
            ip: k.guest,
            port: k.guest_port,
        };
        let remote = Endpoint {
            mac: self.remote_mac,
            ip: k.remote,
            port: k.remote_port,
        };
        let remote_seq = self.remote_next.or(self.guest_ack).unwrap_or(0);
        (
            tcp_rst_frame(remote, guest, remote_seq, self.guest_next),
            tcp_rst_frame(guest, remote, self.guest_next, remote_seq),
        )
    }
}

/// Flows tracked at most; past it new flows are not tracked (they are still checked
/// frame by frame, so a rule change still stops them, just without the RST).
pub const MAX_FLOWS: usize = 16 * 1024;
const TCP_IDLE: Duration = Duration::from_secs(2 * 3600);
const UDP_IDLE: Duration = Duration::from_secs(180);

#[derive(Default)]
struct FlowTable {
    // A BTreeMap: no random hash keys (no getrandom under seccomp), bounded by MAX_FLOWS.
    map: BTreeMap<FlowKey, FlowState>,
}

/// Sequence number `a` is after `b` (RFC 1982 arithmetic).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl FlowTable {
    fn saw_guest(&mut self, f: &[u8], names: &Names, now: Instant) {
        let Some(l4) = parse_l4(f) else { return };
        let key = FlowKey::outbound(&l4);
        if l4.flags & TCP_RST != 0 {
            self.map.remove(&key);
            return;
        }
        let ack = (l4.flags & TCP_ACK != 0).then_some(l4.ack);
        if let Some(s) = self.map.get_mut(&key) {
            if seq_after(l4.seq_end(), s.guest_next) {
                s.guest_next = l4.seq_end();
            }
            if ack.is_some() {
                s.guest_ack = ack;
            }
            s.last = now;
        } else if self.map.len() < MAX_FLOWS {
            self.map.insert(
                key,
                FlowState {
                    names: names
                        .names_for(l4.dst, now)
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                    guest_mac: l4.src_mac,
                    remote_mac: l4.dst_mac,
                    guest_next: l4.seq_end(),
                    remote_next: None,
                    guest_ack: ack,
                    last: now,
                },
            );
        }
    }

    fn saw_passt(&mut self, f: &[u8]) {
        let Some(l4) = parse_l4(f) else { return };
        let key = FlowKey {
            proto: l4.proto,
            guest: l4.dst,
            guest_port: l4.dport,
            remote: l4.src,
            remote_port: l4.sport,
        };
        if l4.flags & TCP_RST != 0 {
            self.map.remove(&key);
            return;
        }
        if let Some(s) = self.map.get_mut(&key) {
            let end = l4.seq_end();
            if s.remote_next.is_none_or(|n| seq_after(end, n)) {
                s.remote_next = Some(end);
            }
            s.last = Instant::now();
        }
    }

    /// A refused frame's flow is gone (the guest got a RST or an ICMP error).
    fn forget(&mut self, f: &[u8]) {
        if let Some(l4) = parse_l4(f) {
            self.map.remove(&FlowKey::outbound(&l4));
        }
    }

    fn expire(&mut self, now: Instant) {
        self.map.retain(|k, s| {
            let idle = if k.proto == IPPROTO_TCP {
                TCP_IDLE
            } else {
                UDP_IDLE
            };
            now.saturating_duration_since(s.last) < idle
        });
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
