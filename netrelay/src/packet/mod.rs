//! Classifies the Ethernet frames a guest sends (towards passt) and builds the refusals
//! sent back to it. Pure functions over byte slices: nothing here does I/O, allocates
//! without bound or panics on any input (property-tested).
//!
//! What passes: ARP; IPv4/IPv6 TCP, UDP and ICMP echo that the [`RuleSet`] allows; the
//! link's own business (DHCP and DHCPv6 client to server, IPv6 neighbour discovery and
//! multicast listener reports), which passt answers itself. Everything else is dropped:
//! fragments (IPv4 MF/offset, the IPv6 fragment header), routing headers, AH/ESP, VLAN
//! tags, other EtherTypes and protocols, truncated or inconsistent headers.
//!
//! A denied TCP segment gets a RST at once (so `connect()` fails fast instead of timing
//! out), a denied UDP datagram an ICMP "administratively prohibited" (type 3 code 13, or
//! ICMPv6 type 1 code 1), a denied ping nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use isolation_policy::network::Protocol;

use crate::dns::Names;
use crate::rules::{Denial, RuleSet};

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers walked at most.
const MAX_EXT_HEADERS: usize = 8;
/// ICMPv6 errors carry at most this much of the offending packet (IPv6 minimum MTU).
const ICMPV6_ERROR_MAX: usize = 1280;

/// Why a frame was dropped without a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    Truncated,
    /// Lengths or versions that contradict each other.
    Malformed,
    Fragment,
    EtherType(u16),
    Protocol(u8),
    /// An IPv6 extension header the relay does not let through (routing, AH, ESP, …) or
    /// too many of them.
    ExtensionHeader(u8),
    /// ICMP other than echo requests, or ICMPv6 outside echo/ND/MLD.
    IcmpType(u8),
    /// A denied ping, or a denied RST (nothing to refuse).
    Denied(Denial),
}

/// A flow the rules refused, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub protocol: Protocol,
    pub dst: IpAddr,
    pub port: Option<u16>,
    /// A name passt's resolver gave `dst` for, when the relay saw one.
    pub host: Option<String>,
}

/// What a frame is checked against: the rules and the names learned from DNS answers.
#[derive(Clone, Copy)]
struct Cx<'a> {
    rules: &'a RuleSet,
    names: &'a Names,
    /// Names the frame's flow was allowed through when it started.
    flow_names: &'a [String],
    now: Instant,
}

impl Cx<'_> {
    fn check(&self, protocol: Protocol, ip: IpAddr, port: Option<u16>) -> Result<(), Denial> {
        let mut names = self.names.names_for(ip, self.now);
        names.extend(self.flow_names.iter().map(String::as_str));
        self.rules.check_names(protocol, ip, port, &names)
    }

    fn host(&self, ip: IpAddr) -> Option<String> {
        self.names
            .names_for(ip, self.now)
            .first()
            .map(|s| s.to_string())
            .or_else(|| self.flow_names.first().cloned())
    }
}

/// What to do with one frame from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to passt.
    Forward,
    Drop(DropReason),
    /// Drop it and send `reply` back to the guest.
    Refuse {
        reply: Vec<u8>,
        flow: Flow,
        denial: Denial,
    },
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// The verdict on `frame`, an Ethernet frame from the guest, with no names known.
pub fn classify(frame: &[u8], rules: &RuleSet) -> Verdict {
    classify_with(frame, rules, &Names::default(), &[], Instant::now())
}

/// The verdict on `frame`, host-name rules matching through the names learned for its
/// destination (`names`, at `now`) and those its flow started with (`flow_names`).
pub fn classify_with(
    frame: &[u8],
    rules: &RuleSet,
    names: &Names,
    flow_names: &[String],
    now: Instant,
) -> Verdict {
    let rules = Cx {
        rules,
        names,
        flow_names,
        now,
    };
    let Some(ethertype) = be16(frame, 12) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    let l3 = &frame[ETH_HLEN..];
    match ethertype {
        ETHERTYPE_ARP => Verdict::Forward,
        ETHERTYPE_IPV4 => ipv4(frame, l3, rules),
        ETHERTYPE_IPV6 => ipv6(frame, l3, rules),
        other => Verdict::Drop(DropReason::EtherType(other)),
    }
}

/// The addresses and the upper-layer payload of an IP packet.
#[derive(Debug, Clone, Copy)]
struct Ip<'a> {
    src: IpAddr,
    dst: IpAddr,
    /// The whole IP packet (header included), without Ethernet padding.
    packet: &'a [u8],
    /// The upper-layer header and data.
    payload: &'a [u8],
}

fn ipv4<'a>(frame: &'a [u8], l3: &'a [u8], rules: Cx<'_>) -> Verdict {
    if l3.len() < 20 {
        return Verdict::Drop(DropReason::Truncated);
    }
    let ihl = usize::from(l3[0] & 0x0f) * 4;
    let total = usize::from(be16(l3, 2).unwrap_or(0));
    if l3[0] >> 4 != 4 || ihl < 20 || total < ihl {
        return Verdict::Drop(DropReason::Malformed);
    }
    if total > l3.len() {
        return Verdict::Drop(DropReason::Truncated);
    }
    let frag = be16(l3, 6).unwrap_or(0);
    if frag & 0x2000 != 0 || frag & 0x1fff != 0 {
        return Verdict::Drop(DropReason::Fragment);
    }
    let addr = |at: usize| IpAddr::V4(Ipv4Addr::new(l3[at], l3[at + 1], l3[at + 2], l3[at + 3]));
    let ip = Ip {
        src: addr(12),
        dst: addr(16),
        packet: &l3[..total],
        payload: &l3[ihl..total],
    };
    match l3[9] {
        IPPROTO_TCP => tcp(frame, ip, rules),
        IPPROTO_UDP => udp(frame, ip, rules),
        IPPROTO_ICMP => match ip.payload.first() {
            None => Verdict::Drop(DropReason::Truncated),
            Some(8) => ping(ip, rules),
            Some(&t) => Verdict::Drop(DropReason::IcmpType(t)),
        },
        p => Verdict::Drop(DropReason::Protocol(p)),
    }
}

fn ipv6<'a>(frame: &'a [u8], l3: &'a [u8], rules: Cx<'_>) -> Verdict {
    if l3.len() < 40 {
        return Verdict::Drop(DropReason::Truncated);
    }
    if l3[0] >> 4 != 6 {
        return Verdict::Drop(DropReason::Malformed);
    }
    let total = 40 + usize::from(be16(l3, 4).unwrap_or(0));
    if total > l3.len() {
        return Verdict::Drop(DropReason::Truncated);
    }
    let addr = |at: usize| {
        let mut o = [0u8; 16];
        o.copy_from_slice(&l3[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let packet = &l3[..total];
    let mut next = l3[6];
    let mut at = 40;
    for _ in 0..=MAX_EXT_HEADERS {
        let ip = Ip {
            src: addr(8),
            dst: addr(24),
            packet,
            payload: &packet[at..],
        };
        match next {
            IPPROTO_TCP => return tcp(frame, ip, rules),
            IPPROTO_UDP => return udp(frame, ip, rules),
            IPPROTO_ICMPV6 => {
                return match ip.payload.first() {
                    None => Verdict::Drop(DropReason::Truncated),
                    Some(128) => ping(ip, rules),
                    // Neighbour discovery (RS, RA, NS, NA, redirect) and multicast
                    // listener queries/reports: the link's own traffic, answered by passt.
                    Some(130..=137 | 143) => Verdict::Forward,
                    Some(&t) => Verdict::Drop(DropReason::IcmpType(t)),
                };
            }
            // Hop-by-hop options (MLD reports carry a router alert), destination options.
            0 | 60 => {
                let Some(len) = packet.get(at + 1) else {
                    return Verdict::Drop(DropReason::Truncated);
                };
                let end = at + (usize::from(*len) + 1) * 8;
                if end > packet.len() {
                    return Verdict::Drop(DropReason::Truncated);
                }
                next = packet[at];
                at = end;
            }
            44 => return Verdict::Drop(DropReason::Fragment),
            p @ (43 | 50 | 51 | 59 | 135 | 139 | 140 | 253 | 254) => {
                return Verdict::Drop(DropReason::ExtensionHeader(p))
            }
            p => return Verdict::Drop(DropReason::Protocol(p)),
        }
    }
    Verdict::Drop(DropReason::ExtensionHeader(next))
}

fn tcp(frame: &[u8], ip: Ip<'_>, rules: Cx<'_>) -> Verdict {
    let p = ip.payload;
    if p.len() < 20 {
        return Verdict::Drop(DropReason::Truncated);
    }
    let doff = usize::from(p[12] >> 4) * 4;
    if doff < 20 || doff > p.len() {
        return Verdict::Drop(DropReason::Malformed);
    }
    let port = be16(p, 2).unwrap_or(0);
    match rules.check(Protocol::Tcp, ip.dst, Some(port)) {
        Ok(()) => Verdict::Forward,
        Err(denial) => {
            let flags = p[13];
            if flags & TCP_RST != 0 {
                return Verdict::Drop(DropReason::Denied(denial));
            }
            Verdict::Refuse {
                reply: tcp_reset(frame, &ip),
                flow: Flow {
                    protocol: Protocol::Tcp,
                    dst: ip.dst,
                    port: Some(port),
                    host: rules.host(ip.dst),
                },
                denial,
            }
        }
    }
}

fn udp(frame: &[u8], ip: Ip<'_>, rules: Cx<'_>) -> Verdict {
    let p = ip.payload;
    if p.len() < 8 {
        return Verdict::Drop(DropReason::Truncated);
    }
    let len = usize::from(be16(p, 4).unwrap_or(0));
    if len < 8 || len > p.len() {
        return Verdict::Drop(DropReason::Malformed);
    }
    let (sport, dport) = (be16(p, 0).unwrap_or(0), be16(p, 2).unwrap_or(0));
    // DHCP (68 -> 67) and DHCPv6 (546 -> 547): passt's own server.
    if (ip.dst.is_ipv4() && (sport, dport) == (68, 67))
        || (ip.dst.is_ipv6() && (sport, dport) == (546, 547))
    {
        return Verdict::Forward;
    }
    match rules.check(Protocol::Udp, ip.dst, Some(dport)) {
        Ok(()) => Verdict::Forward,
        Err(denial) => Verdict::Refuse {
            reply: admin_prohibited(frame, &ip),
            flow: Flow {
                protocol: Protocol::Udp,
                dst: ip.dst,
                port: Some(dport),
                host: rules.host(ip.dst),
            },
            denial,
        },
    }
}

fn ping(ip: Ip<'_>, rules: Cx<'_>) -> Verdict {
    match rules.check(Protocol::Icmp, ip.dst, None) {
        Ok(()) => Verdict::Forward,
        Err(d) => Verdict::Drop(DropReason::Denied(d)),
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// One's-complement sum of 16-bit words (RFC 1071), not yet folded.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The checksum of an upper-layer segment with its pseudo-header.
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum(acc, &s.octets());
            acc = sum(acc, &d.octets());
            acc += u32::from(proto);
            // Segments here are at most a few hundred bytes.
            acc += segment.len() as u32;
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            acc = sum(acc, &v6(s));
            acc = sum(acc, &v6(d));
            acc += segment.len() as u32;
            acc += u32::from(proto);
        }
    }
    fold(sum(acc, segment))
}

/// An Ethernet + IP header for a reply to the guest, followed by `segment`.
fn reply_frame(frame: &[u8], src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> Vec<u8> {
    // To the guest's MAC, from the MAC it addressed (passt's).
    let mac = |at: usize| {
        let mut m = [0u8; 6];
        m.copy_from_slice(&frame[at..at + 6]);
        m
    };
    ip_frame(mac(6), mac(0), src, dst, proto, segment)
}

/// An Ethernet frame to `dst_mac` from `src_mac` carrying an IP packet `src` -> `dst`
/// with `segment` as its payload (`segment` is at most a few hundred bytes here).
fn ip_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    segment: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(ETH_HLEN + 40 + segment.len());
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let total = (20 + segment.len()) as u16;
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[6] = 0x40; // DF
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = fold(sum(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(segment.len() as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            out.extend_from_slice(&h);
        }
        // Both addresses come from one IP header.
        _ => {}
    }
    out.extend_from_slice(segment);
    out
}

/// A RST answering the TCP segment in `ip` (RFC 9293 3.10.7.1: if it carried an ACK,
/// the RST takes that as its sequence number; otherwise it acknowledges the segment).
fn tcp_reset(frame: &[u8], ip: &Ip<'_>) -> Vec<u8> {
    let p = ip.payload;
    let doff = usize::from(p[12] >> 4) * 4;
    let flags = p[13];
    let seq = be32(p, 4).unwrap_or(0);
    let ack = be32(p, 8).unwrap_or(0);
    let data_len = p.len().saturating_sub(doff) as u32;
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&p[2..4]);
    t[2..4].copy_from_slice(&p[0..2]);
    if flags & TCP_ACK != 0 {
        t[4..8].copy_from_slice(&ack.to_be_bytes());
        t[13] = TCP_RST;
    } else {
        let consumed = data_len + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        t[8..12].copy_from_slice(&seq.wrapping_add(consumed).to_be_bytes());
        t[13] = TCP_RST | TCP_ACK;
    }
    t[12] = 5 << 4;
    let c = l4_checksum(ip.dst, ip.src, IPPROTO_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    reply_frame(frame, ip.dst, ip.src, IPPROTO_TCP, &t)
}

/// ICMP destination unreachable, communication administratively prohibited, quoting
/// the offending packet (its IP header and 8 bytes for IPv4; up to the IPv6 minimum MTU).
fn admin_prohibited(frame: &[u8], ip: &Ip<'_>) -> Vec<u8> {
    let (proto, kind, code, quote) = match ip.dst {
        IpAddr::V4(_) => {
            let ihl = ip.packet.len() - ip.payload.len();
            let n = (ihl + 8).min(ip.packet.len());
            (IPPROTO_ICMP, 3u8, 13u8, &ip.packet[..n])
        }
        IpAddr::V6(_) => {
            let n = ip.packet.len().min(ICMPV6_ERROR_MAX - 40 - 8);
            (IPPROTO_ICMPV6, 1u8, 1u8, &ip.packet[..n])
        }
    };
    let mut m = vec![kind, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(quote);
    let c = match ip.dst {
        IpAddr::V4(_) => fold(sum(0, &m)),
        IpAddr::V6(_) => l4_checksum(ip.dst, ip.src, IPPROTO_ICMPV6, &m),
    };
    m[2..4].copy_from_slice(&c.to_be_bytes());
    reply_frame(frame, ip.dst, ip.src, proto, &m)
}

/// The transport header fields of a TCP or UDP frame, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4<'a> {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// TCP only (0 for UDP).
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The TCP or UDP payload.
    pub payload: &'a [u8],
}

impl L4<'_> {
    /// The sequence number just after this segment (what the receiver acknowledges).
    pub fn seq_end(&self) -> u32 {
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        self.seq
            .wrapping_add(len)
            .wrapping_add(u32::from(self.flags & TCP_SYN != 0))
            .wrapping_add(u32::from(self.flags & TCP_FIN != 0))
    }
}

/// The TCP/UDP fields of `frame` (either direction), or `None` for anything else:
/// other protocols, fragments, truncated or inconsistent headers. Bounded like
/// [`classify`]; never panics.
pub fn parse_l4(frame: &[u8]) -> Option<L4<'_>> {
    let mac = |at: usize| -> Option<[u8; 6]> { frame.get(at..at + 6)?.try_into().ok() };
    let (dst_mac, src_mac) = (mac(0)?, mac(6)?);
    let l3 = frame.get(ETH_HLEN..)?;
    let (src, dst, proto, payload) = match be16(frame, 12)? {
        ETHERTYPE_IPV4 => {
            let ihl = usize::from(*l3.first()? & 0x0f) * 4;
            let total = usize::from(be16(l3, 2)?);
            if l3.len() < 20 || l3[0] >> 4 != 4 || ihl < 20 || total < ihl || total > l3.len() {
                return None;
            }
            let frag = be16(l3, 6)?;
            if frag & 0x3fff != 0 {
                return None;
            }
            let a =
                |at: usize| IpAddr::V4(Ipv4Addr::new(l3[at], l3[at + 1], l3[at + 2], l3[at + 3]));
            (a(12), a(16), l3[9], &l3[ihl..total])
        }
        ETHERTYPE_IPV6 => {
            if l3.len() < 40 || l3[0] >> 4 != 6 {
                return None;
            }
            let total = 40 + usize::from(be16(l3, 4)?);
            let packet = l3.get(..total)?;
            let a = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&l3[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let (mut next, mut at) = (l3[6], 40usize);
            for _ in 0..MAX_EXT_HEADERS {
                if next != 0 && next != 60 {
                    break;
                }
                let len = usize::from(*packet.get(at + 1)?);
                next = *packet.get(at)?;
                at += (len + 1) * 8;
            }
            (a(8), a(24), next, packet.get(at..)?)
        }
        _ => return None,
    };
    match proto {
        IPPROTO_TCP => {
            let doff = usize::from(*payload.get(12)? >> 4) * 4;
            if doff < 20 || doff > payload.len() {
                return None;
            }
            Some(L4 {
                dst_mac,
                src_mac,
                proto,
                src,
                dst,
                sport: be16(payload, 0)?,
                dport: be16(payload, 2)?,
                seq: be32(payload, 4)?,
                ack: be32(payload, 8)?,
                flags: payload[13],
                payload: &payload[doff..],
            })
        }
        IPPROTO_UDP => {
            let len = usize::from(be16(payload, 4)?);
            if len < 8 || len > payload.len() {
                return None;
            }
            Some(L4 {
                dst_mac,
                src_mac,
                proto,
                src,
                dst,
                sport: be16(payload, 0)?,
                dport: be16(payload, 2)?,
                seq: 0,
                ack: 0,
                flags: 0,
                payload: &payload[8..len],
            })
        }
        _ => None,
    }
}

/// What a dropped frame tried to reach, for a denial report: (protocol name, destination,
/// port), or `None` when the drop is not a denial (truncated, malformed, not IP) or says
/// nothing about a destination. Bounded like [`classify`]; never panics.
pub fn drop_report(
    frame: &[u8],
    reason: &DropReason,
) -> Option<(String, IpAddr, Option<u16>, String)> {
    let why = match reason {
        DropReason::Denied(d) => d.to_string(),
        DropReason::Fragment => "IP fragments are not relayed".to_string(),
        DropReason::Protocol(p) => format!("IP protocol {p} is not relayed"),
        DropReason::ExtensionHeader(h) => format!("IPv6 extension header {h} is not relayed"),
        DropReason::IcmpType(t) => format!("ICMP type {t} is not relayed"),
        DropReason::Truncated | DropReason::Malformed | DropReason::EtherType(_) => return None,
    };
    let l3 = frame.get(ETH_HLEN..)?;
    let (dst, proto, l4, first) = match be16(frame, 12)? {
        ETHERTYPE_IPV4 => {
            let ihl = usize::from(*l3.first()? & 0x0f) * 4;
            let dst = IpAddr::V4(Ipv4Addr::new(
                *l3.get(16)?,
                *l3.get(17)?,
                *l3.get(18)?,
                *l3.get(19)?,
            ));
            let first = be16(l3, 6)? & 0x1fff == 0;
            (dst, *l3.get(9)?, l3.get(ihl..), first)
        }
        ETHERTYPE_IPV6 => {
            let o: [u8; 16] = l3.get(24..40)?.try_into().ok()?;
            let (mut next, mut at, mut first) = (*l3.get(6)?, 40usize, true);
            for _ in 0..=MAX_EXT_HEADERS {
                match next {
                    0 | 60 => {
                        let len = usize::from(*l3.get(at + 1)?);
                        next = *l3.get(at)?;
                        at += (len + 1) * 8;
                    }
                    44 => {
                        first = be16(l3, at + 2)? & 0xfff8 == 0;
                        next = *l3.get(at)?;
                        at += 8;
                    }
                    _ => break,
                }
            }
            (IpAddr::V6(Ipv6Addr::from(o)), next, l3.get(at..), first)
        }
        _ => return None,
    };
    let name = match proto {
        IPPROTO_TCP => "tcp".to_string(),
        IPPROTO_UDP => "udp".to_string(),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => "icmp".to_string(),
        p => format!("ip-proto-{p}"),
    };
    let port = match (proto, first) {
        (IPPROTO_TCP | IPPROTO_UDP, true) => l4.and_then(|p| be16(p, 2)),
        _ => None,
    };
    Some((name, dst, port, why))
}

/// One end of a TCP connection, for [`tcp_rst_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: [u8; 6],
    pub ip: IpAddr,
    pub port: u16,
}

/// A RST|ACK from `from` to `to` with sequence number `seq` and acknowledgement `ack`:
/// how the relay cuts a connection the rules no longer allow.
pub fn tcp_rst_frame(from: Endpoint, to: Endpoint, seq: u32, ack: u32) -> Vec<u8> {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&from.port.to_be_bytes());
    t[2..4].copy_from_slice(&to.port.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = TCP_RST | TCP_ACK;
    let c = l4_checksum(from.ip, to.ip, IPPROTO_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ip_frame(to.mac, from.mac, from.ip, to.ip, IPPROTO_TCP, &t)
}

#[cfg(test)]
mod tests;
