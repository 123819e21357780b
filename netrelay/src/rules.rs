//! What the relay enforces: the partition's firewall rules (isolation-policy's types,
//! first match wins, no match denies) plus the DNS rule, and the `--allow` syntax of bare
//! runs.

use std::net::IpAddr;

use isolation_policy::network::{
    Destination, FirewallAction, FirewallRule, NetParseError, NetTarget, PortRange, Protocol,
};

/// The relay's rule set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSet {
    pub rules: Vec<FirewallRule>,
    /// DNS (port 53) may go to `resolvers`; it never goes anywhere else.
    pub dns: bool,
    /// The resolver passt hands out by DHCP.
    pub resolvers: Vec<IpAddr>,
    /// Where each rule was written (`sources[i]` for `rules[i]`, e.g.
    /// `partitions.toml:27`), for denial reasons; a rule without one is named by its line.
    pub sources: Vec<String>,
}

/// Why a destination is refused, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A rule denied it (its position in the rule list, 1-based, and where it was written).
    Rule {
        index: usize,
        source: String,
    },
    NoRuleAllows,
    /// Port 53 to something other than passt's resolver, or DNS is off.
    Dns,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Rule { index, source } => write!(f, "rule {index} ({source}) denies"),
            Denial::NoRuleAllows => f.write_str("no rule allows"),
            Denial::Dns => f.write_str("DNS goes only to passt's resolver, and only with dns on"),
        }
    }
}

pub const DNS_PORT: u16 = 53;

impl RuleSet {
    /// Where rule `i` (0-based) was written.
    pub fn source_of(&self, i: usize) -> String {
        match self.sources.get(i) {
            Some(s) => s.clone(),
            None => format!("line {}", self.rules.get(i).map_or(0, |r| r.line)),
        }
    }

    /// Whether a new flow of `protocol` to `ip`:`port` may start.
    pub fn check(&self, protocol: Protocol, ip: IpAddr, port: Option<u16>) -> Result<(), Denial> {
        self.check_names(protocol, ip, port, &[])
    }

    /// [`RuleSet::check`], where `names` are the host names passt's resolver gave `ip` for
    /// (a host-name rule matches when one of them does).
    pub fn check_names(
        &self,
        protocol: Protocol,
        ip: IpAddr,
        port: Option<u16>,
        names: &[&str],
    ) -> Result<(), Denial> {
        if port == Some(DNS_PORT) && matches!(protocol, Protocol::Tcp | Protocol::Udp) {
            return if self.dns && self.resolvers.contains(&ip) {
                Ok(())
            } else {
                Err(Denial::Dns)
            };
        }
        let target = |host: Option<&str>| NetTarget {
            host: host.map(str::to_string),
            ip: Some(ip),
            protocol,
            port,
        };
        for (i, rule) in self.rules.iter().enumerate() {
            let matched = match rule.destination {
                Destination::Host(_) => names.iter().any(|n| rule.matches(&target(Some(n)))),
                _ => rule.matches(&target(None)),
            };
            if matched {
                return match rule.action {
                    FirewallAction::Allow => Ok(()),
                    FirewallAction::Deny => Err(Denial::Rule {
                        index: i + 1,
                        source: self.source_of(i),
                    }),
                };
            }
        }
        Err(Denial::NoRuleAllows)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    #[error("--allow {arg:?}: write PROTO:DEST:PORTS, e.g. tcp:*:443 or udp:[2001:db8::1]:123")]
    Shape { arg: String },
    #[error("--allow {arg:?}: {source}")]
    Part { arg: String, source: NetParseError },
}

/// `PROTO:DEST:PORTS` (PROTO tcp|udp|icmp|any; DEST `*`, a host name, an address or CIDR, IPv6 in
/// brackets; PORTS `80`, `80,443`, `8000-8080` or `*`; icmp takes no ports: `icmp:DEST`).
/// `position` (1-based) becomes the rule's line, for denial messages.
pub fn parse_allow(arg: &str, position: usize) -> Result<FirewallRule, AllowError> {
    let shape = || AllowError::Shape {
        arg: arg.to_string(),
    };
    let part = |source| AllowError::Part {
        arg: arg.to_string(),
        source,
    };
    let (proto, rest) = arg.split_once(':').ok_or_else(shape)?;
    let protocol: Protocol = proto.parse().map_err(part)?;
    let (dest, ports) = if let Some(r) = rest.strip_prefix('[') {
        let (d, after) = r.split_once(']').ok_or_else(shape)?;
        match after {
            "" => (d, None),
            a => (d, Some(a.strip_prefix(':').ok_or_else(shape)?)),
        }
    } else {
        match rest.split_once(':') {
            Some((d, p)) => (d, Some(p)),
            None => (rest, None),
        }
    };
    // A host name matches the addresses passt's resolver answered for it (needs --dns).
    let destination: Destination = dest.parse().map_err(part)?;
    let ports = match ports {
        None | Some("*") => Vec::new(),
        Some(p) => p
            .split(',')
            .map(|r| r.parse::<PortRange>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(part)?,
    };
    if protocol == Protocol::Icmp && !ports.is_empty() {
        return Err(shape());
    }
    Ok(FirewallRule {
        action: FirewallAction::Allow,
        protocol,
        destination,
        ports,
        line: position,
        column: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allow_arguments_parse_every_documented_shape() {
        let r = parse_allow("tcp:*:443", 1).unwrap();
        assert_eq!(
            (r.protocol, r.destination.clone()),
            (Protocol::Tcp, Destination::Any)
        );
        assert_eq!(r.ports, vec![PortRange::single(443)]);
        let r = parse_allow("udp:10.0.0.0/8:80,443", 2).unwrap();
        assert_eq!(r.ports.len(), 2);
        assert_eq!(r.line, 2);
        let r = parse_allow("tcp:[2001:db8::1]:8000-8080", 1).unwrap();
        assert!(r.matches(&NetTarget {
            host: None,
            ip: Some(ip("2001:db8::1")),
            protocol: Protocol::Tcp,
            port: Some(8040)
        }));
        let r = parse_allow("tcp:[2001:db8::/32]", 1).unwrap();
        assert!(r.ports.is_empty());
        assert!(parse_allow("icmp:192.0.2.1", 1).is_ok());
    }

    #[test]
    fn bad_allow_arguments_name_the_argument() {
        for bad in [
            "tcp",
            "tcp:*:0",
            "sctp:*:1",
            "tcp:[::1:80",
            "tcp:300.0.0.1:80",
            "icmp:*:7",
        ] {
            let e = parse_allow(bad, 1).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(
            parse_allow("tcp:*.example.org:443", 1).unwrap().destination,
            Destination::Host("*.example.org".into())
        );
    }

    #[test]
    fn no_rule_denies_and_first_match_wins() {
        let mut set = RuleSet::default();
        assert_eq!(
            set.check(Protocol::Tcp, ip("192.0.2.1"), Some(80)),
            Err(Denial::NoRuleAllows)
        );
        set.rules.push(parse_allow("tcp:192.0.2.1:80", 1).unwrap());
        assert_eq!(set.check(Protocol::Tcp, ip("192.0.2.1"), Some(80)), Ok(()));
        assert!(set.check(Protocol::Tcp, ip("192.0.2.1"), Some(81)).is_err());
        assert!(set.check(Protocol::Udp, ip("192.0.2.1"), Some(80)).is_err());
        assert!(set.check(Protocol::Tcp, ip("192.0.2.9"), Some(80)).is_err());
    }

    #[test]
    fn dns_goes_only_to_the_resolver_and_only_when_on() {
        let mut set = RuleSet {
            rules: vec![parse_allow("udp:*:*", 1).unwrap()],
            dns: false,
            resolvers: vec![ip("192.0.2.53")],
            sources: Vec::new(),
        };
        assert_eq!(
            set.check(Protocol::Udp, ip("192.0.2.53"), Some(53)),
            Err(Denial::Dns)
        );
        set.dns = true;
        assert_eq!(set.check(Protocol::Udp, ip("192.0.2.53"), Some(53)), Ok(()));
        assert_eq!(set.check(Protocol::Tcp, ip("192.0.2.53"), Some(53)), Ok(()));
        // A wide rule does not open DNS to anyone else.
        assert_eq!(
            set.check(Protocol::Udp, ip("8.8.8.8"), Some(53)),
            Err(Denial::Dns)
        );
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn host_name_rules_match_only_through_the_names_learned_for_the_address() {
        let set = RuleSet {
            rules: vec![
                parse_allow("tcp:*.example.org:443", 1).unwrap(),
                parse_allow("tcp:api.test:443", 2).unwrap(),
            ],
            ..RuleSet::default()
        };
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(
            set.check(Protocol::Tcp, ip, Some(443)),
            Err(Denial::NoRuleAllows)
        );
        assert_eq!(
            set.check_names(Protocol::Tcp, ip, Some(443), &["www.example.org"]),
            Ok(())
        );
        assert_eq!(
            set.check_names(Protocol::Tcp, ip, Some(443), &["other.net", "api.test"]),
            Ok(())
        );
        assert!(set
            .check_names(Protocol::Tcp, ip, Some(80), &["www.example.org"])
            .is_err());
        // `*.example.org` is its subdomains only; names never widen DNS.
        assert!(set
            .check_names(
                Protocol::Tcp,
                ip,
                Some(443),
                &["example.org", "evilexample.org"]
            )
            .is_err());
        assert_eq!(
            set.check_names(Protocol::Udp, ip, Some(53), &["www.example.org"]),
            Err(Denial::Dns)
        );
    }
}
