//! Host-name rules that follow DNS: the relay learns which addresses passt's resolver
//! gave for a name by reading the resolver's UDP answers on their way to the guest, and
//! keeps each mapping for its TTL (clamped to [`TTL_MIN`]..[`TTL_MAX`]).
//!
//! Trust: only answers coming from passt's side, from a resolver address on port 53, are
//! read, and only when they answer a query the guest sent to that resolver (same resolver,
//! guest port, transaction id and name). Nothing the guest sends about names is learned.
//! DNS over TCP is not read (name rules then do not match: they fail closed).
//!
//! The parser is defensive (pure, bounded, never panics; property-tested and fuzzed):
//! compression pointers at most [`MAX_POINTERS`] per name, names at most 255 bytes,
//! labels only letters, digits, `-` and `_` (a label holding a `.` could otherwise pose
//! as two), at most [`MAX_ANSWERS`] answers read, CNAME chains followed [`MAX_CHAIN`] deep.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

pub const MAX_NAME: usize = 255;
pub const MAX_POINTERS: usize = 16;
pub const MAX_ANSWERS: usize = 64;
pub const MAX_CHAIN: usize = 8;
/// A mapping lives at least this long (a name that rotates addresses keeps working)...
pub const TTL_MIN: u32 = 30;
/// ...and at most this long.
pub const TTL_MAX: u32 = 3600;
/// Names remembered per address, addresses remembered, queries awaiting an answer.
pub const MAX_NAMES_PER_ADDR: usize = 8;
pub const MAX_ADDRS: usize = 4096;
pub const MAX_PENDING: usize = 256;
/// How long a query waits for its answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Why a DNS message was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("name at byte {0} is longer than 255 bytes")]
    NameTooLong(usize),
    #[error("name at byte {0} follows more than {MAX_POINTERS} compression pointers")]
    PointerLoop(usize),
    #[error("label at byte {0} uses a reserved label type")]
    LabelType(usize),
    #[error("label at byte {0} holds a byte no host name has")]
    LabelByte(usize),
    #[error("{0} questions; only single-question messages are read")]
    Questions(u16),
    #[error("a query where an answer was expected, or the reverse")]
    Direction,
    #[error("record at byte {0} has a bad length for its type")]
    RecordLength(usize),
}

fn be16(m: &[u8], at: usize) -> Result<u16, DnsError> {
    match m.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(DnsError::Truncated(at)),
    }
}

fn be32(m: &[u8], at: usize) -> Result<u32, DnsError> {
    match m.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(DnsError::Truncated(at)),
    }
}

/// Reads the (possibly compressed) name at `at`, lowercased and without the final dot;
/// returns it and where the data after it starts.
pub fn read_name(m: &[u8], at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut pos = at;
    let mut after = None;
    let mut jumps = 0;
    loop {
        let len = *m.get(pos).ok_or(DnsError::Truncated(pos))?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, after.unwrap_or(pos + 1)));
            }
            0x00 => {
                let label = m
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(DnsError::Truncated(pos))?;
                if name.len() + usize::from(len) + 1 > MAX_NAME {
                    return Err(DnsError::NameTooLong(at));
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        return Err(DnsError::LabelByte(pos));
                    }
                    name.push(char::from(b.to_ascii_lowercase()));
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                jumps += 1;
                if jumps > MAX_POINTERS {
                    return Err(DnsError::PointerLoop(at));
                }
                let target = usize::from(be16(m, pos)? & 0x3fff);
                after.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(DnsError::LabelType(pos)),
        }
    }
}

/// The header and question of a message: (id, is a response, rcode, name, offset after the
/// question).
fn header(m: &[u8]) -> Result<(u16, bool, u8, String, usize), DnsError> {
    let id = be16(m, 0)?;
    let flags = be16(m, 2)?;
    let qd = be16(m, 4)?;
    if qd != 1 {
        return Err(DnsError::Questions(qd));
    }
    let (qname, at) = read_name(m, 12)?;
    // QTYPE, QCLASS.
    be32(m, at)?;
    Ok((
        id,
        flags & 0x8000 != 0,
        (flags & 0x000f) as u8,
        qname,
        at + 4,
    ))
}

/// A query the guest sent: its id and name.
pub fn parse_query(m: &[u8]) -> Result<(u16, String), DnsError> {
    let (id, response, _, qname, _) = header(m)?;
    if response {
        return Err(DnsError::Direction);
    }
    Ok((id, qname))
}

/// What an answer says: for `qname` (and each name of its CNAME chain, `names[0]` being
/// `qname`), these addresses, each with the TTL to keep it (the smallest along its chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u16,
    pub names: Vec<String>,
    pub addrs: Vec<(IpAddr, u32)>,
}

struct Record {
    owner: String,
    rtype: u16,
    ttl: u32,
    addr: Option<IpAddr>,
    target: Option<String>,
}

/// Reads a response: its question and the A/AAAA/CNAME answers for it.
pub fn parse_response(m: &[u8]) -> Result<Answer, DnsError> {
    let (id, response, rcode, qname, mut at) = header(m)?;
    if !response {
        return Err(DnsError::Direction);
    }
    let mut answer = Answer {
        id,
        names: vec![qname],
        addrs: Vec::new(),
    };
    if rcode != 0 {
        return Ok(answer);
    }
    let count = usize::from(be16(m, 6)?).min(MAX_ANSWERS);
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let (owner, next) = read_name(m, at)?;
        let rtype = be16(m, next)?;
        let class = be16(m, next + 2)?;
        let ttl = be32(m, next + 4)?;
        let rdlen = usize::from(be16(m, next + 8)?);
        let rdata_at = next + 10;
        let rdata = m
            .get(rdata_at..rdata_at + rdlen)
            .ok_or(DnsError::Truncated(rdata_at))?;
        at = rdata_at + rdlen;
        if class != CLASS_IN {
            continue;
        }
        let (addr, target) = match rtype {
            TYPE_A => {
                let o: [u8; 4] = rdata
                    .try_into()
                    .map_err(|_| DnsError::RecordLength(rdata_at))?;
                (Some(IpAddr::V4(Ipv4Addr::from(o))), None)
            }
            TYPE_AAAA => {
                let o: [u8; 16] = rdata
                    .try_into()
                    .map_err(|_| DnsError::RecordLength(rdata_at))?;
                (Some(IpAddr::V6(Ipv6Addr::from(o))), None)
            }
            TYPE_CNAME => {
                let (t, end) = read_name(m, rdata_at)?;
                if end != at {
                    return Err(DnsError::RecordLength(rdata_at));
                }
                (None, Some(t))
            }
            _ => continue,
        };
        records.push(Record {
            owner,
            rtype,
            ttl,
            addr,
            target,
        });
    }
    // Follow the chain from the question: each step a CNAME owned by the last name.
    let mut chain_ttl = vec![u32::MAX];
    for _ in 0..MAX_CHAIN {
        let last = answer.names.last().map(String::as_str).unwrap_or("");
        let Some(c) = records
            .iter()
            .find(|r| r.rtype == TYPE_CNAME && r.owner == last)
        else {
            break;
        };
        let Some(t) = c.target.clone() else { break };
        if answer.names.contains(&t) {
            break;
        }
        let ttl = chain_ttl.last().copied().unwrap_or(u32::MAX).min(c.ttl);
        answer.names.push(t);
        chain_ttl.push(ttl);
    }
    for r in &records {
        let Some(addr) = r.addr else { continue };
        if let Some(i) = answer.names.iter().position(|n| *n == r.owner) {
            let ttl = r.ttl.min(chain_ttl.get(i).copied().unwrap_or(u32::MAX));
            answer.addrs.push((addr, ttl));
        }
    }
    Ok(answer)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Learned {
    name: String,
    expires: Instant,
}

/// What the relay learned from passt's resolver, and the guest's queries awaiting it.
#[derive(Debug, Default, Clone)]
pub struct Names {
    by_addr: BTreeMap<IpAddr, Vec<Learned>>,
    /// (resolver, guest port, id) -> (name asked, when).
    pending: BTreeMap<(IpAddr, u16, u16), (String, Instant)>,
}

impl Names {
    /// The names `ip` was an answer for, still within their TTL.
    pub fn names_for(&self, ip: IpAddr, now: Instant) -> Vec<&str> {
        self.by_addr.get(&ip).map_or(Vec::new(), |v| {
            v.iter()
                .filter(|l| l.expires > now)
                .map(|l| l.name.as_str())
                .collect()
        })
    }

    /// Notes a query the guest sent to `resolver` from `guest_port` (a UDP payload).
    pub fn query(&mut self, resolver: IpAddr, guest_port: u16, payload: &[u8], now: Instant) {
        let Ok((id, name)) = parse_query(payload) else {
            return;
        };
        if self.pending.len() >= MAX_PENDING {
            self.pending
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < QUERY_TIMEOUT);
        }
        if self.pending.len() < MAX_PENDING {
            self.pending.insert((resolver, guest_port, id), (name, now));
        }
    }

    /// Learns from an answer `resolver` sent to `guest_port` (a UDP payload from passt's
    /// side), if it answers a pending query for the same name. Returns how many
    /// addresses were learned.
    pub fn answer(
        &mut self,
        resolver: IpAddr,
        guest_port: u16,
        payload: &[u8],
        now: Instant,
    ) -> usize {
        let Ok(a) = parse_response(payload) else {
            return 0;
        };
        let Some((asked, at)) = self.pending.remove(&(resolver, guest_port, a.id)) else {
            return 0;
        };
        if now.saturating_duration_since(at) >= QUERY_TIMEOUT || a.names.first() != Some(&asked) {
            return 0;
        }
        let mut learned = 0;
        for (addr, ttl) in &a.addrs {
            let expires = now + Duration::from_secs(u64::from((*ttl).clamp(TTL_MIN, TTL_MAX)));
            if !self.by_addr.contains_key(addr) && self.by_addr.len() >= MAX_ADDRS {
                self.expire(now);
                if self.by_addr.len() >= MAX_ADDRS {
                    continue;
                }
            }
            let v = self.by_addr.entry(*addr).or_default();
            v.retain(|l| l.expires > now);
            for name in &a.names {
                if let Some(l) = v.iter_mut().find(|l| l.name == *name) {
                    l.expires = l.expires.max(expires);
                } else if v.len() < MAX_NAMES_PER_ADDR {
                    v.push(Learned {
                        name: name.clone(),
                        expires,
                    });
                }
            }
            learned += 1;
        }
        learned
    }

    /// Forgets what has expired.
    pub fn expire(&mut self, now: Instant) {
        self.by_addr.retain(|_, v| {
            v.retain(|l| l.expires > now);
            !v.is_empty()
        });
        self.pending
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < QUERY_TIMEOUT);
    }
}

#[cfg(test)]
mod tests;
