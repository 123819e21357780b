//! The relay's control channel (`bulkhead-netrelay --control-fd N`): an AF_UNIX
//! `SOCK_SEQPACKET` socket between the supervisor and the relay, one JSON message per
//! datagram, at most [`MAX_MESSAGE`] bytes.
//!
//! - To the relay ([`ToRelay`]): the whole rule set, replaced at once; it applies to new
//!   flows and cuts the tracked flows it now denies (TCP gets a RST both ways).
//! - From the relay ([`FromRelay`]): denials (rate limited, with a count of what was not
//!   reported), an acknowledgement of each rule set, periodic counters.
//!
//! Either side may be hostile to the other: a datagram that is oversized, not JSON, or
//! not exactly one of these messages is a protocol error. The relay logs and drops it and
//! keeps the rules it had; [`Client::recv`] returns an error naming it. Nothing here
//! blocks the relay: it sends with `MSG_DONTWAIT` and drops what the socket does not take.
//!
//! This module is part of the library so the supervisor can use the types and
//! [`Client`] without the relay's loop; it needs only serde and rustix.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use isolation_policy::network::{
    Destination, FirewallAction, FirewallRule, NetParseError, PortRange, Protocol,
};
use rustix::net::{RecvFlags, SendFlags};
use serde::{Deserialize, Serialize};

use crate::rules::RuleSet;

/// The largest datagram either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A message to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToRelay {
    /// Replace the whole rule set (first match wins, no match denies). `dns`: DNS may go
    /// to passt's resolver (the relay's `--resolver`).
    Rules { rules: Vec<RuleSpec>, dns: bool },
}

/// A message from the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromRelay {
    /// The guest tried something the rules deny (a new flow, or a flow a new rule set cut).
    Denied {
        /// `tcp`, `udp` or `icmp`.
        protocol: String,
        destination: IpAddr,
        port: Option<u16>,
        /// The name the guest looked up for `destination`, when the relay saw it.
        host: Option<String>,
        /// `rule 2 (FILE:LINE) denies`, `no rule allows`, or why DNS was refused.
        reason: String,
        /// Denials not reported since the previous `denied` message (rate limit).
        suppressed: u64,
    },
    /// A `rules` message took effect: `generation` counts rule sets applied (the first
    /// is 1); `cut_flows` existing flows were cut because the new set denies them.
    RulesApplied { generation: u64, cut_flows: u32 },
    /// A `rules` message was refused (the previous rule set stays): what was wrong.
    RulesRejected { error: String },
    /// Counters since the relay started, every few seconds. `out` is what the guest sent
    /// (frames forwarded to passt), `in` what it received (frames from passt); `denied`
    /// counts every denial, reported or not.
    Stats {
        frames_in: u64,
        frames_out: u64,
        bytes_in: u64,
        bytes_out: u64,
        denied: u64,
    },
}

/// One firewall rule as the supervisor sends it: the same syntax as the policy file and
/// the relay's `--allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub action: FirewallAction,
    pub protocol: Protocol,
    /// `*`, a host name (`*.example.org` for its subdomains), an address, a CIDR; IPv6
    /// with or without brackets.
    pub dest: String,
    /// `""` for every port, `80`, `80,443`, `8000-8080`.
    pub ports: String,
    /// Where the rule was written, e.g. `/home/u/.config/bulkhead/partitions.toml:27`.
    pub source: String,
}

/// Why a [`RuleSpec`] does not make a rule; names the rule and the bad field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleSpecError {
    #[error("rule {index} ({source_file}): dest {value:?}: {error}")]
    Dest {
        index: usize,
        source_file: String,
        value: String,
        error: NetParseError,
    },
    #[error("rule {index} ({source_file}): ports {value:?}: {error}")]
    Ports {
        index: usize,
        source_file: String,
        value: String,
        error: NetParseError,
    },
    #[error("rule {index} ({source_file}): ports {value:?}: icmp has no ports; leave it empty")]
    IcmpPorts {
        index: usize,
        source_file: String,
        value: String,
    },
    #[error("rule {index}: source is {len} bytes; at most {MAX_SOURCE}")]
    SourceTooLong { index: usize, len: usize },
}

/// The longest `source` accepted (it is echoed in every denial).
pub const MAX_SOURCE: usize = 4096;

impl RuleSpec {
    /// `rule` as written at `source_file` (its line is appended: `FILE:LINE`).
    pub fn from_rule(rule: &FirewallRule, source_file: &str) -> Self {
        let dest = match &rule.destination {
            Destination::Any => "*".to_string(),
            Destination::Host(h) => h.clone(),
            // A single address without its /32 or /128.
            Destination::Cidr(c) if c.prefix == if c.addr.is_ipv4() { 32 } else { 128 } => {
                c.addr.to_string()
            }
            Destination::Cidr(c) => c.to_string(),
        };
        let ports: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
        RuleSpec {
            action: rule.action,
            protocol: rule.protocol,
            dest,
            ports: ports.join(","),
            source: format!("{source_file}:{}", rule.line),
        }
    }

    /// The relay's rule; `index` (1-based) names it in errors.
    pub fn to_rule(&self, index: usize) -> Result<FirewallRule, RuleSpecError> {
        if self.source.len() > MAX_SOURCE {
            return Err(RuleSpecError::SourceTooLong {
                index,
                len: self.source.len(),
            });
        }
        let dest = self.dest.trim();
        let dest = dest
            .strip_prefix('[')
            .and_then(|d| d.strip_suffix(']'))
            .unwrap_or(dest);
        let destination: Destination = dest.parse().map_err(|error| RuleSpecError::Dest {
            index,
            source_file: self.source.clone(),
            value: self.dest.clone(),
            error,
        })?;
        let ports = match self.ports.trim() {
            "" | "*" => Vec::new(),
            p => p
                .split(',')
                .map(|r| r.parse::<PortRange>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| RuleSpecError::Ports {
                    index,
                    source_file: self.source.clone(),
                    value: self.ports.clone(),
                    error,
                })?,
        };
        if self.protocol == Protocol::Icmp && !ports.is_empty() {
            return Err(RuleSpecError::IcmpPorts {
                index,
                source_file: self.source.clone(),
                value: self.ports.clone(),
            });
        }
        Ok(FirewallRule {
            action: self.action,
            protocol: self.protocol,
            destination,
            ports,
            line: index,
            column: 0,
        })
    }
}

/// The relay's rule set for `specs`, keeping `resolvers` (passt's, from the command line).
pub fn rule_set(
    specs: &[RuleSpec],
    dns: bool,
    resolvers: &[IpAddr],
) -> Result<RuleSet, RuleSpecError> {
    let rules = specs
        .iter()
        .enumerate()
        .map(|(i, s)| s.to_rule(i + 1))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RuleSet {
        rules,
        dns,
        resolvers: resolvers.to_vec(),
        sources: specs.iter().map(|s| s.source.clone()).collect(),
    })
}

/// A control-channel failure.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket is not SOCK_SEQPACKET ({0:?})")]
    NotSeqpacket(rustix::net::SocketType),
    #[error("control message of {len} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge { len: usize },
    #[error("control message is not a valid message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the control peer closed the channel")]
    Closed,
    #[error("the control socket is full; message dropped")]
    Full,
}

/// Encodes `msg` as one datagram, refusing what would exceed [`MAX_MESSAGE`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ControlError> {
    let bytes = serde_json::to_vec(msg)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(ControlError::TooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// Decodes one datagram (already bounded by the receive buffer).
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ControlError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(ControlError::TooLarge { len: bytes.len() });
    }
    Ok(serde_json::from_slice(bytes)?)
}

/// Checks `fd` is a `SOCK_SEQPACKET` socket (datagram boundaries are the framing).
pub fn check_seqpacket(fd: BorrowedFd<'_>) -> Result<(), ControlError> {
    let t = rustix::net::sockopt::socket_type(fd).map_err(std::io::Error::from)?;
    if t != rustix::net::SocketType::SEQPACKET {
        return Err(ControlError::NotSeqpacket(t));
    }
    Ok(())
}

/// Sends one message as one datagram; `dontwait`: fail with [`ControlError::Full`]
/// instead of blocking.
pub fn send_on<T: Serialize>(
    fd: BorrowedFd<'_>,
    msg: &T,
    dontwait: bool,
) -> Result<(), ControlError> {
    let bytes = encode(msg)?;
    let mut flags = SendFlags::NOSIGNAL;
    if dontwait {
        flags |= SendFlags::DONTWAIT;
    }
    loop {
        return match rustix::net::send(fd, &bytes, flags) {
            Ok(_) => Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => Err(ControlError::Full),
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                Err(ControlError::Closed)
            }
            Err(e) => Err(std::io::Error::from(e).into()),
        };
    }
}

/// Receives one datagram into `buf` (which must hold `MAX_MESSAGE + 1` bytes so an
/// oversized one is seen as such). `Ok(None)`: nothing there (`dontwait` only).
pub fn recv_on<T: for<'de> Deserialize<'de>>(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    dontwait: bool,
) -> Result<Option<T>, ControlError> {
    let flags = if dontwait {
        RecvFlags::DONTWAIT
    } else {
        RecvFlags::empty()
    };
    let n = loop {
        match rustix::net::recv(fd, &mut *buf, flags) {
            Ok((0, _)) => return Err(ControlError::Closed),
            Ok((n, _)) => break n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) if dontwait => return Ok(None),
            Err(rustix::io::Errno::CONNRESET) => return Err(ControlError::Closed),
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    };
    if n > MAX_MESSAGE || n >= buf.len() {
        return Err(ControlError::TooLarge { len: n });
    }
    decode(&buf[..n]).map(Some)
}

/// A `SOCK_SEQPACKET` socketpair (close-on-exec both ends): the supervisor keeps one
/// end (wrap it in [`Client`]) and passes the other to the relay as `--control-fd`
/// (clear its close-on-exec flag in the child).
pub fn socketpair() -> Result<(OwnedFd, OwnedFd), ControlError> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?)
}

/// The supervisor's end of a relay's control channel.
#[derive(Debug)]
pub struct Client {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Client {
    /// Wraps the supervisor's end; refuses anything but a `SOCK_SEQPACKET` socket.
    pub fn new(fd: OwnedFd) -> Result<Self, ControlError> {
        check_seqpacket(fd.as_fd())?;
        Ok(Client {
            fd,
            buf: vec![0; MAX_MESSAGE + 1],
        })
    }

    /// Replaces the relay's rule set (blocks only while the socket buffer is full; the
    /// relay answers with `rules_applied` or `rules_rejected`).
    pub fn send_rules(&self, rules: Vec<RuleSpec>, dns: bool) -> Result<(), ControlError> {
        self.send(&ToRelay::Rules { rules, dns })
    }

    pub fn send(&self, msg: &ToRelay) -> Result<(), ControlError> {
        send_on(self.fd.as_fd(), msg, false)
    }

    /// The next message, waiting for it. A malformed or oversized datagram is an error
    /// (the channel stays usable: the next call reads the next datagram).
    pub fn recv(&mut self) -> Result<FromRelay, ControlError> {
        match recv_on(self.fd.as_fd(), &mut self.buf, false)? {
            Some(m) => Ok(m),
            None => Err(ControlError::Closed),
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Result<Option<FromRelay>, ControlError> {
        recv_on(self.fd.as_fd(), &mut self.buf, true)
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests;
