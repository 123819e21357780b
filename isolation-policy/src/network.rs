//! Network settings of a partition: offline, or NAT behind an allowlist firewall.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Offline,
    Nat,
}

impl NetworkMode {
    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::Offline => "offline",
            NetworkMode::Nat => "nat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// Any protocol (`"any"` in TOML).
    Any,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        }
    }

    fn covers(self, other: Protocol) -> bool {
        self == Protocol::Any || self == other
    }
}

/// Why a protocol, network, destination or port range does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    #[error("unknown protocol `{0}`")]
    UnknownProtocol(String),
    #[error("`{0}` is not an IP address")]
    NotAnAddress(String),
    #[error("prefix `/{prefix}` is not in 0..={max}")]
    BadPrefix { prefix: String, max: u8 },
    #[error("`{0}` is neither `*`, an IP network like 10.0.0.0/8, nor a host name")]
    BadDestination(String),
    #[error("`{0}` is not a port number (1-65535)")]
    BadPort(String),
    #[error("port range `{0}` runs backwards")]
    BackwardsRange(String),
}

impl FromStr for Protocol {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            "any" => Ok(Protocol::Any),
            _ => Err(NetParseError::UnknownProtocol(s.to_string())),
        }
    }
}

/// An IP network `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }

    /// True for `0.0.0.0/0` and `::/0`.
    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

impl FromStr for Cidr {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| NetParseError::NotAnAddress(addr.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                NetParseError::BadPrefix {
                    prefix: p.to_string(),
                    max,
                }
            })?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where a firewall rule points.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// `*`: anywhere.
    Any,
    Cidr(Cidr),
    /// A host name; `*.example.org` matches every subdomain of example.org.
    Host(String),
}

impl Destination {
    pub fn is_everything(&self) -> bool {
        match self {
            Destination::Any => true,
            Destination::Cidr(c) => c.is_everything(),
            Destination::Host(_) => false,
        }
    }

    fn matches(&self, target: &NetTarget) -> bool {
        match self {
            Destination::Any => true,
            Destination::Cidr(c) => target.ip.is_some_and(|ip| c.contains(ip)),
            Destination::Host(pattern) => target
                .host
                .as_deref()
                .is_some_and(|h| host_matches(pattern, h)),
        }
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
        None => host == pattern,
    }
}

impl FromStr for Destination {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(Destination::Any);
        }
        let looks_like_ip = s.contains(':')
            || s.split('/')
                .next()
                .is_some_and(|a| a.chars().all(|c| c.is_ascii_digit() || c == '.'));
        if looks_like_ip {
            return s.parse().map(Destination::Cidr);
        }
        let name = s.strip_prefix("*.").unwrap_or(s);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if valid {
            Ok(Destination::Host(s.to_ascii_lowercase()))
        } else {
            Err(NetParseError::BadDestination(s.to_string()))
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Any => f.write_str("*"),
            Destination::Cidr(c) => c.fmt(f),
            Destination::Host(h) => f.write_str(h),
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(p: u16) -> Self {
        PortRange { first: p, last: p }
    }
    pub fn contains(&self, p: u16) -> bool {
        (self.first..=self.last).contains(&p)
    }
}

impl FromStr for PortRange {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| NetParseError::BadPort(p.to_string()))
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (parse(a)?, parse(b)?);
                if first > last {
                    return Err(NetParseError::BackwardsRange(s.to_string()));
                }
                Ok(PortRange { first, last })
            }
            None => parse(s).map(PortRange::single),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One firewall rule; rules are checked in order, first match wins, no match denies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallRule {
    pub action: FirewallAction,
    pub protocol: Protocol,
    pub destination: Destination,
    /// Empty means every port.
    pub ports: Vec<PortRange>,
    /// Where the rule was written (line and column in partitions.toml).
    pub line: usize,
    pub column: usize,
}

impl FirewallRule {
    pub fn matches(&self, target: &NetTarget) -> bool {
        self.protocol.covers(target.protocol)
            && self.destination.matches(target)
            && (self.ports.is_empty()
                || target
                    .port
                    .is_some_and(|p| self.ports.iter().any(|r| r.contains(p))))
    }

    /// True when the rule allows any protocol to anywhere on every port.
    pub fn is_wide_open(&self) -> bool {
        self.action == FirewallAction::Allow
            && self.protocol == Protocol::Any
            && self.destination.is_everything()
            && self.ports.is_empty()
    }
}

impl fmt::Display for FirewallRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            FirewallAction::Allow => "allow",
            FirewallAction::Deny => "deny",
        };
        write!(
            f,
            "{action} {} to {}",
            self.protocol.name(),
            self.destination
        )?;
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            write!(f, " port {}", ports.join(","))?;
        }
        Ok(())
    }
}

/// A partition's network settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub mode: NetworkMode,
    /// May the partition use the NAT's DNS resolver?
    pub dns: bool,
    pub rules: Vec<FirewallRule>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            mode: NetworkMode::Offline,
            dns: false,
            rules: Vec::new(),
        }
    }
}

/// A network connection a partition wants to make.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetTarget {
    /// The host name, when known (from the partition's DNS query or SNI).
    pub host: Option<String>,
    pub ip: Option<IpAddr>,
    pub protocol: Protocol,
    pub port: Option<u16>,
}

impl NetTarget {
    pub fn tcp(host: &str, port: u16) -> Self {
        let ip = host.parse().ok();
        NetTarget {
            host: if ip.is_some() {
                None
            } else {
                Some(host.to_string())
            },
            ip,
            protocol: Protocol::Tcp,
            port: Some(port),
        }
    }
}

impl fmt::Display for NetTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.protocol.name())?;
        match (&self.host, self.ip) {
            (Some(h), Some(ip)) => write!(f, "{h} ({ip})")?,
            (Some(h), None) => f.write_str(h)?,
            (None, Some(ip)) => write!(f, "{ip}")?,
            (None, None) => f.write_str("?")?,
        }
        if let Some(p) = self.port {
            write!(f, " port {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains_addresses_inside_its_prefix_only() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let odd: Cidr = "192.168.4.0/22".parse().unwrap();
        assert!(odd.contains("192.168.7.255".parse().unwrap()));
        assert!(!odd.contains("192.168.8.0".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_cidr_prefix_is_rejected() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
    }

    #[test]
    fn wildcard_host_matches_subdomains_not_the_bare_domain() {
        let d: Destination = "*.example.org".parse().unwrap();
        let t = |h: &str| NetTarget::tcp(h, 443);
        assert!(d.matches(&t("mail.example.org")));
        assert!(d.matches(&t("A.B.EXAMPLE.ORG")));
        assert!(!d.matches(&t("example.org")));
        assert!(!d.matches(&t("badexample.org")));
    }

    #[test]
    fn destination_rejects_garbage() {
        assert!("exa mple.org".parse::<Destination>().is_err());
        assert!("-bad.org".parse::<Destination>().is_err());
        assert!("300.1.1.1".parse::<Destination>().is_err());
    }

    #[test]
    fn port_ranges_parse_and_reject_zero_and_backwards() {
        assert_eq!("443".parse::<PortRange>().unwrap(), PortRange::single(443));
        assert!("8000-8100".parse::<PortRange>().unwrap().contains(8050));
        assert!("0".parse::<PortRange>().is_err());
        assert!("90-80".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }

    #[test]
    fn firewall_rule_checks_protocol_destination_and_port() {
        let rule = FirewallRule {
            action: FirewallAction::Allow,
            protocol: Protocol::Tcp,
            destination: Destination::Any,
            ports: vec![PortRange::single(443)],
            line: 1,
            column: 1,
        };
        assert!(rule.matches(&NetTarget::tcp("example.org", 443)));
        assert!(!rule.matches(&NetTarget::tcp("example.org", 22)));
        let mut udp = NetTarget::tcp("example.org", 443);
        udp.protocol = Protocol::Udp;
        assert!(!rule.matches(&udp));
    }
}
