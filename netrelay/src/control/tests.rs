//! The control channel over a real SOCK_SEQPACKET socketpair.

use std::os::fd::AsFd;

use super::*;
use isolation_policy::network::Cidr;

fn spec(action: FirewallAction, protocol: Protocol, dest: &str, ports: &str) -> RuleSpec {
    RuleSpec {
        action,
        protocol,
        dest: dest.to_string(),
        ports: ports.to_string(),
        source: "/home/u/.config/bulkhead/partitions.toml:27".to_string(),
    }
}

#[test]
fn rules_cross_the_socketpair_and_parse_into_the_relays_rule_set() {
    let (ours, theirs) = socketpair().unwrap();
    let client = Client::new(ours).unwrap();
    let rules = vec![
        spec(FirewallAction::Deny, Protocol::Tcp, "192.0.2.7", "22"),
        spec(FirewallAction::Allow, Protocol::Tcp, "*", "80,443"),
        spec(
            FirewallAction::Allow,
            Protocol::Udp,
            "[2001:db8::/32]",
            "8000-8080",
        ),
        spec(FirewallAction::Allow, Protocol::Any, "example.org", ""),
    ];
    client.send_rules(rules.clone(), true).unwrap();
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let got: ToRelay = recv_on(theirs.as_fd(), &mut buf, false).unwrap().unwrap();
    let ToRelay::Rules { rules: specs, dns } = got;
    assert_eq!(specs, rules);
    let set = rule_set(&specs, dns, &["192.0.2.53".parse().unwrap()]).unwrap();
    assert!(set.dns);
    assert_eq!(set.rules.len(), 4);
    assert_eq!(
        set.check(Protocol::Tcp, "192.0.2.7".parse().unwrap(), Some(22)),
        Err(crate::rules::Denial::Rule {
            index: 1,
            source: "/home/u/.config/bulkhead/partitions.toml:27".into()
        })
    );
    assert_eq!(
        crate::rules::Denial::Rule {
            index: 1,
            source: "f.toml:27".into()
        }
        .to_string(),
        "rule 1 (f.toml:27) denies"
    );
    assert!(set
        .check(Protocol::Tcp, "198.51.100.1".parse().unwrap(), Some(443))
        .is_ok());
    assert!(set
        .check(Protocol::Udp, "2001:db8::9".parse().unwrap(), Some(8040))
        .is_ok());
    assert_eq!(
        set.rules[2].destination,
        Destination::Cidr("2001:db8::/32".parse::<Cidr>().unwrap())
    );
}

#[test]
fn relay_messages_reach_the_client() {
    let (ours, theirs) = socketpair().unwrap();
    let mut client = Client::new(ours).unwrap();
    assert!(client.try_recv().unwrap().is_none());
    let msgs = [
        FromRelay::Denied {
            protocol: "tcp".into(),
            destination: "192.0.2.7".parse().unwrap(),
            port: Some(22),
            host: Some("example.org".into()),
            reason: "no rule allows".into(),
            suppressed: 3,
        },
        FromRelay::RulesApplied {
            generation: 2,
            cut_flows: 1,
        },
        FromRelay::Stats {
            frames_in: 1,
            frames_out: 2,
            bytes_in: 3,
            bytes_out: 4,
            denied: 5,
        },
    ];
    for m in &msgs {
        send_on(theirs.as_fd(), m, true).unwrap();
    }
    for m in &msgs {
        assert_eq!(&client.recv().unwrap(), m);
    }
    drop(theirs);
    assert!(matches!(client.recv(), Err(ControlError::Closed)));
}

#[test]
fn malformed_and_oversized_datagrams_are_errors_and_the_channel_survives_them() {
    let (ours, theirs) = socketpair().unwrap();
    let mut client = Client::new(ours).unwrap();
    let raw = |b: &[u8]| {
        rustix::net::send(&theirs, b, rustix::net::SendFlags::empty()).unwrap();
    };
    raw(b"not json");
    raw(br#"{"type":"stats","frames_in":1}"#);
    raw(br#"{"type":"rules_applied","generation":1,"cut_flows":0,"extra":1}"#);
    raw(br#"{"type":"launch_missiles"}"#);
    raw(&vec![b' '; MAX_MESSAGE + 100]);
    for _ in 0..4 {
        assert!(matches!(client.recv(), Err(ControlError::Malformed(_))));
    }
    assert!(matches!(client.recv(), Err(ControlError::TooLarge { .. })));
    let ok = FromRelay::RulesApplied {
        generation: 1,
        cut_flows: 0,
    };
    send_on(theirs.as_fd(), &ok, true).unwrap();
    assert_eq!(client.recv().unwrap(), ok);
}

#[test]
fn a_rule_set_too_large_for_one_datagram_is_refused_before_sending() {
    let (ours, _theirs) = socketpair().unwrap();
    let client = Client::new(ours).unwrap();
    let big = vec![spec(FirewallAction::Allow, Protocol::Tcp, "*", "443"); 2000];
    assert!(matches!(
        client.send_rules(big, false),
        Err(ControlError::TooLarge { .. })
    ));
}

#[test]
fn a_stream_socket_is_not_a_control_channel() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(matches!(
        Client::new(a.into()),
        Err(ControlError::NotSeqpacket(_))
    ));
}

#[test]
fn bad_rule_fields_are_named_in_the_error() {
    let cases = [
        (
            spec(FirewallAction::Allow, Protocol::Tcp, "300.1.1.1", "80"),
            "dest \"300.1.1.1\"",
        ),
        (
            spec(FirewallAction::Allow, Protocol::Tcp, "bad host!", ""),
            "dest \"bad host!\"",
        ),
        (
            spec(FirewallAction::Allow, Protocol::Tcp, "*", "0"),
            "ports \"0\"",
        ),
        (
            spec(FirewallAction::Allow, Protocol::Tcp, "*", "90-80"),
            "ports \"90-80\"",
        ),
        (
            spec(FirewallAction::Allow, Protocol::Icmp, "*", "7"),
            "icmp has no ports",
        ),
    ];
    for (s, want) in cases {
        let e = rule_set(&[s], false, &[]).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        assert!(
            e.starts_with("rule 1 (/home/u/.config/bulkhead/partitions.toml:27)"),
            "{e}"
        );
    }
    // Unknown protocols or actions never get this far: the message does not parse.
    let bad = br#"{"type":"rules","dns":false,"rules":[{"action":"allow","protocol":"sctp","dest":"*","ports":"","source":"x"}]}"#;
    let e = decode::<ToRelay>(bad).unwrap_err().to_string();
    assert!(e.contains("sctp"), "{e}");
}

#[test]
fn from_rule_writes_what_to_rule_reads_back() {
    let toml_rules = [
        "tcp:*:443",
        "udp:10.0.0.0/8:80,443",
        "tcp:[2001:db8::1]:8000-8080",
        "icmp:192.0.2.1",
    ];
    for (i, a) in toml_rules.iter().enumerate() {
        let mut rule = crate::rules::parse_allow(a, i + 3).unwrap();
        rule.action = FirewallAction::Deny;
        let s = RuleSpec::from_rule(&rule, "/p.toml");
        assert_eq!(s.source, format!("/p.toml:{}", i + 3));
        let back = s.to_rule(1).unwrap();
        assert_eq!(
            (back.action, back.protocol, &back.destination, &back.ports),
            (rule.action, rule.protocol, &rule.destination, &rule.ports),
            "{s:?}"
        );
    }
    let host = FirewallRule {
        action: FirewallAction::Allow,
        protocol: Protocol::Tcp,
        destination: Destination::Host("*.example.org".into()),
        ports: vec![PortRange::single(443)],
        line: 9,
        column: 1,
    };
    let s = RuleSpec::from_rule(&host, "f");
    assert_eq!(
        (s.dest.as_str(), s.ports.as_str()),
        ("*.example.org", "443")
    );
    assert_eq!(s.to_rule(1).unwrap().destination, host.destination);
}

#[test]
fn the_documented_json_shapes_parse() {
    let rules = r#"{"type":"rules","dns":true,"rules":[{"action":"allow","protocol":"tcp","dest":"example.org","ports":"443","source":"/home/u/.config/bulkhead/partitions.toml:27"}]}"#;
    assert!(matches!(
        decode::<ToRelay>(rules.as_bytes()).unwrap(),
        ToRelay::Rules { dns: true, .. }
    ));
    let denied = FromRelay::Denied {
        protocol: "tcp".into(),
        destination: "192.0.2.7".parse().unwrap(),
        port: Some(22),
        host: None,
        reason: "no rule allows".into(),
        suppressed: 0,
    };
    assert_eq!(
        String::from_utf8(encode(&denied).unwrap()).unwrap(),
        r#"{"type":"denied","protocol":"tcp","destination":"192.0.2.7","port":22,"host":null,"reason":"no rule allows","suppressed":0}"#
    );
}
