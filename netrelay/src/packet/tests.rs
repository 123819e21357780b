//! Hand-built frames through the classifier, and generated ones for the properties: a
//! denied destination never passes, nothing panics.

use super::*;
use crate::rules::parse_allow;
use proptest::prelude::*;

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const PASST_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
const GUEST4: [u8; 4] = [192, 0, 2, 2];
const GW4: [u8; 4] = [192, 0, 2, 1];
const ELSEWHERE4: [u8; 4] = [192, 0, 2, 77];
const GUEST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const GW6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn rules() -> RuleSet {
    RuleSet {
        rules: vec![
            parse_allow("tcp:192.0.2.1:8080", 1).unwrap(),
            parse_allow("udp:192.0.2.1:9999", 2).unwrap(),
            parse_allow("tcp:[2001:db8::1]:8080", 3).unwrap(),
            parse_allow("icmp:192.0.2.1", 4).unwrap(),
        ],
        dns: true,
        resolvers: vec!["192.0.2.53".parse().unwrap()],
        sources: Vec::new(),
    }
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = PASST_MAC.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, dst: [u8; 4], frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&GUEST4);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    eth(ETHERTYPE_IPV4, &h)
}

fn ipv6(next: u8, dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0, 0, 0, next, 64];
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&GUEST6);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    eth(ETHERTYPE_IPV6, &h)
}

fn tcp(dport: u16, flags: u8, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t.extend_from_slice(data);
    t
}

fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(data);
    u
}

/// An extension header (hop-by-hop, destination options, …) of 8 bytes.
fn ext(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

fn refused(v: Verdict) -> (Vec<u8>, Flow, Denial) {
    match v {
        Verdict::Refuse {
            reply,
            flow,
            denial,
        } => (reply, flow, denial),
        other => panic!("not refused: {other:?}"),
    }
}

/// The checksum over the pseudo-header and segment of a reply verifies (sums to zero).
fn l4_ok(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> bool {
    l4_checksum(src, dst, proto, seg) == 0
}

#[test]
fn an_allowed_tcp_connection_passes() {
    let f = ipv4(IPPROTO_TCP, GW4, 0, &tcp(8080, TCP_SYN, 1, 0, &[]));
    assert_eq!(classify(&f, &rules()), Verdict::Forward);
    let f = ipv6(IPPROTO_TCP, GW6, &tcp(8080, TCP_SYN, 1, 0, &[]));
    assert_eq!(classify(&f, &rules()), Verdict::Forward);
}

#[test]
fn a_syn_to_a_denied_port_gets_a_valid_rst_at_once() {
    let f = ipv4(IPPROTO_TCP, GW4, 0, &tcp(8081, TCP_SYN, 1000, 0, &[]));
    let (reply, flow, denial) = refused(classify(&f, &rules()));
    assert_eq!(flow.port, Some(8081));
    assert_eq!(denial, Denial::NoRuleAllows);
    assert_eq!(reply[0..6], GUEST_MAC);
    assert_eq!(reply[6..12], PASST_MAC);
    let ip = &reply[ETH_HLEN..];
    assert_eq!(fold(sum(0, &ip[..20])), 0, "IPv4 header checksum");
    assert_eq!(ip[12..16], GW4);
    assert_eq!(ip[16..20], GUEST4);
    let t = &ip[20..];
    assert_eq!(be16(t, 0), Some(8081));
    assert_eq!(be16(t, 2), Some(40000));
    assert_eq!(t[13], TCP_RST | TCP_ACK);
    assert_eq!(be32(t, 8), Some(1001), "acknowledges the SYN");
    assert!(l4_ok(
        IpAddr::from(GW4),
        IpAddr::from(GUEST4),
        IPPROTO_TCP,
        t
    ));
}

#[test]
fn a_syn_to_a_denied_address_gets_a_rst_over_ipv4_and_ipv6() {
    let f = ipv4(IPPROTO_TCP, ELSEWHERE4, 0, &tcp(8080, TCP_SYN, 1, 0, &[]));
    refused(classify(&f, &rules()));
    let mut other6 = GW6;
    other6[15] = 9;
    let f = ipv6(IPPROTO_TCP, other6, &tcp(8080, TCP_SYN, 7, 0, &[]));
    let (reply, _, _) = refused(classify(&f, &rules()));
    assert_eq!(be16(&reply, 12), Some(ETHERTYPE_IPV6));
    let ip = &reply[ETH_HLEN..];
    assert_eq!(ip[6], IPPROTO_TCP);
    assert_eq!(ip[24..40], GUEST6);
    assert!(l4_ok(
        IpAddr::from(other6),
        IpAddr::from(GUEST6),
        IPPROTO_TCP,
        &ip[40..]
    ));
    assert_eq!(be32(&ip[40..], 8), Some(8));
}

#[test]
fn a_segment_of_a_denied_flow_with_an_ack_is_reset_at_its_ack_number() {
    let f = ipv4(
        IPPROTO_TCP,
        ELSEWHERE4,
        0,
        &tcp(80, TCP_ACK, 5, 777, b"data"),
    );
    let (reply, _, _) = refused(classify(&f, &rules()));
    let t = &reply[ETH_HLEN + 20..];
    assert_eq!(t[13], TCP_RST);
    assert_eq!(be32(t, 4), Some(777));
}

#[test]
fn a_rst_to_a_denied_destination_is_dropped_not_answered() {
    let f = ipv4(IPPROTO_TCP, ELSEWHERE4, 0, &tcp(80, TCP_RST, 5, 0, &[]));
    assert!(matches!(
        classify(&f, &rules()),
        Verdict::Drop(DropReason::Denied(_))
    ));
}

#[test]
fn denied_udp_gets_icmp_administratively_prohibited_quoting_the_datagram() {
    let f = ipv4(IPPROTO_UDP, GW4, 0, &udp(5000, 9998, b"hello"));
    let (reply, flow, _) = refused(classify(&f, &rules()));
    assert_eq!(flow.protocol, Protocol::Udp);
    let ip = &reply[ETH_HLEN..];
    assert_eq!(ip[9], IPPROTO_ICMP);
    let icmp = &ip[20..];
    assert_eq!((icmp[0], icmp[1]), (3, 13));
    assert_eq!(fold(sum(0, icmp)), 0, "ICMP checksum");
    // The quoted IP header and the first 8 bytes (the UDP header).
    assert_eq!(icmp[8..], f[ETH_HLEN..ETH_HLEN + 28]);
}

#[test]
fn denied_udp_over_ipv6_gets_icmpv6_administratively_prohibited() {
    let f = ipv6(IPPROTO_UDP, GW6, &udp(5000, 9999, b"x"));
    let (reply, _, _) = refused(classify(&f, &rules()));
    let ip = &reply[ETH_HLEN..];
    assert_eq!(ip[6], IPPROTO_ICMPV6);
    let m = &ip[40..];
    assert_eq!((m[0], m[1]), (1, 1));
    assert!(l4_ok(
        IpAddr::from(GW6),
        IpAddr::from(GUEST6),
        IPPROTO_ICMPV6,
        m
    ));
}

#[test]
fn allowed_udp_passes() {
    let f = ipv4(IPPROTO_UDP, GW4, 0, &udp(5000, 9999, b"x"));
    assert_eq!(classify(&f, &rules()), Verdict::Forward);
}

#[test]
fn dns_passes_only_to_passts_resolver_and_only_with_dns_on() {
    let to = |dst| ipv4(IPPROTO_UDP, dst, 0, &udp(5353, 53, b"q"));
    assert_eq!(classify(&to([192, 0, 2, 53]), &rules()), Verdict::Forward);
    let (_, _, d) = refused(classify(&to(GW4), &rules()));
    assert_eq!(d, Denial::Dns);
    let mut off = rules();
    off.dns = false;
    refused(classify(&to([192, 0, 2, 53]), &off));
}

#[test]
fn dhcp_arp_and_neighbour_discovery_pass_without_rules() {
    let none = RuleSet::default();
    let dhcp = ipv4(IPPROTO_UDP, [255; 4], 0, &udp(68, 67, &[1; 300]));
    assert_eq!(classify(&dhcp, &none), Verdict::Forward);
    assert_eq!(
        classify(&eth(ETHERTYPE_ARP, &[0; 28]), &none),
        Verdict::Forward
    );
    let ns = ipv6(IPPROTO_ICMPV6, GW6, &[135, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(classify(&ns, &none), Verdict::Forward);
    // An MLD report behind a hop-by-hop header with a router alert.
    let mut mld = ext(IPPROTO_ICMPV6);
    mld.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(classify(&ipv6(0, GW6, &mld), &none), Verdict::Forward);
    let dhcp6 = ipv6(IPPROTO_UDP, GW6, &udp(546, 547, &[1; 20]));
    assert_eq!(classify(&dhcp6, &none), Verdict::Forward);
}

#[test]
fn pings_pass_only_where_allowed_and_other_icmp_is_dropped() {
    let ping = |dst| ipv4(IPPROTO_ICMP, dst, 0, &[8, 0, 0, 0, 0, 1, 0, 1]);
    assert_eq!(classify(&ping(GW4), &rules()), Verdict::Forward);
    assert!(matches!(
        classify(&ping(ELSEWHERE4), &rules()),
        Verdict::Drop(DropReason::Denied(_))
    ));
    let unreach = ipv4(IPPROTO_ICMP, GW4, 0, &[3, 3, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        classify(&unreach, &rules()),
        Verdict::Drop(DropReason::IcmpType(3))
    );
}

#[test]
fn fragments_are_dropped_even_to_allowed_destinations() {
    let t = tcp(8080, TCP_SYN, 1, 0, &[]);
    let more = ipv4(IPPROTO_TCP, GW4, 0x2000, &t);
    assert_eq!(
        classify(&more, &rules()),
        Verdict::Drop(DropReason::Fragment)
    );
    let later = ipv4(IPPROTO_TCP, GW4, 0x0010, &t);
    assert_eq!(
        classify(&later, &rules()),
        Verdict::Drop(DropReason::Fragment)
    );
    let mut frag6 = ext(IPPROTO_TCP);
    frag6.extend_from_slice(&t);
    assert_eq!(
        classify(&ipv6(44, GW6, &frag6), &rules()),
        Verdict::Drop(DropReason::Fragment)
    );
}

#[test]
fn a_denied_destination_behind_extension_headers_is_still_refused() {
    let mut p = ext(60);
    p.extend(ext(IPPROTO_TCP));
    let mut other6 = GW6;
    other6[15] = 3;
    p.extend(tcp(8080, TCP_SYN, 1, 0, &[]));
    refused(classify(&ipv6(0, other6, &p), &rules()));
    // Allowed, the same chain passes.
    assert_eq!(classify(&ipv6(0, GW6, &p), &rules()), Verdict::Forward);
}

#[test]
fn routing_headers_and_too_many_extension_headers_are_dropped() {
    let mut p = ext(IPPROTO_TCP);
    p.extend(tcp(8080, TCP_SYN, 1, 0, &[]));
    assert_eq!(
        classify(&ipv6(43, GW6, &p), &rules()),
        Verdict::Drop(DropReason::ExtensionHeader(43))
    );
    let mut chain = Vec::new();
    for _ in 0..20 {
        chain.extend(ext(60));
    }
    assert!(matches!(
        classify(&ipv6(60, GW6, &chain), &rules()),
        Verdict::Drop(DropReason::ExtensionHeader(_))
    ));
}

#[test]
fn vlan_tags_and_unknown_ethertypes_are_dropped() {
    let inner = ipv4(IPPROTO_TCP, GW4, 0, &tcp(8080, TCP_SYN, 1, 0, &[]));
    let mut tagged = inner[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    tagged.extend_from_slice(&inner[12..]);
    assert_eq!(
        classify(&tagged, &rules()),
        Verdict::Drop(DropReason::EtherType(0x8100))
    );
    assert_eq!(
        classify(&eth(0x88cc, &[0; 40]), &rules()),
        Verdict::Drop(DropReason::EtherType(0x88cc))
    );
}

#[test]
fn every_truncation_of_an_allowed_packet_is_dropped() {
    let frames = [
        ipv4(IPPROTO_TCP, GW4, 0, &tcp(8080, TCP_SYN, 1, 0, b"abc")),
        ipv4(IPPROTO_UDP, GW4, 0, &udp(1, 9999, b"abc")),
        ipv6(IPPROTO_TCP, GW6, &tcp(8080, TCP_SYN, 1, 0, b"abc")),
    ];
    for f in &frames {
        assert_eq!(classify(f, &rules()), Verdict::Forward);
        for cut in 0..f.len() {
            assert!(
                matches!(classify(&f[..cut], &rules()), Verdict::Drop(_)),
                "cut at {cut} of {}",
                f.len()
            );
        }
    }
}

#[test]
fn inconsistent_lengths_and_versions_are_dropped() {
    let mut f = ipv4(IPPROTO_TCP, GW4, 0, &tcp(8080, TCP_SYN, 1, 0, &[]));
    f[ETH_HLEN] = 0x44; // IHL 16 bytes
    assert_eq!(classify(&f, &rules()), Verdict::Drop(DropReason::Malformed));
    let mut f = ipv4(IPPROTO_TCP, GW4, 0, &tcp(8080, TCP_SYN, 1, 0, &[]));
    f[ETH_HLEN] = 0x65; // version 6 in an IPv4 EtherType
    assert_eq!(classify(&f, &rules()), Verdict::Drop(DropReason::Malformed));
    let mut f = ipv4(IPPROTO_TCP, GW4, 0, &tcp(8080, TCP_SYN, 1, 0, &[]));
    f[ETH_HLEN + 20 + 12] = 0xf0; // data offset 60 > segment
    assert_eq!(classify(&f, &rules()), Verdict::Drop(DropReason::Malformed));
}

#[test]
fn ethernet_padding_after_the_ip_packet_is_allowed() {
    let mut f = ipv4(IPPROTO_TCP, GW4, 0, &tcp(8080, TCP_SYN, 1, 0, &[]));
    f.extend_from_slice(&[0; 6]);
    assert_eq!(classify(&f, &rules()), Verdict::Forward);
}

/// A generated outbound packet: protocol, family, extension headers, VLAN, fragment bits.
#[derive(Debug, Clone)]
struct Gen {
    v6: bool,
    proto: u8,
    dst_last: u8,
    port: u16,
    exts: Vec<u8>,
    vlan: bool,
    frag: u16,
    cut: Option<usize>,
    flags: u8,
}

fn gen() -> impl Strategy<Value = Gen> {
    (
        any::<bool>(),
        prop_oneof![
            Just(IPPROTO_TCP),
            Just(IPPROTO_UDP),
            Just(IPPROTO_ICMP),
            Just(IPPROTO_ICMPV6),
            any::<u8>()
        ],
        prop_oneof![Just(1u8), Just(53), any::<u8>()],
        prop_oneof![Just(8080u16), Just(9999), Just(53), any::<u16>()],
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(60), Just(43), Just(44), any::<u8>()],
            0..4,
        ),
        any::<bool>(),
        prop_oneof![Just(0u16), Just(0x2000), any::<u16>()],
        proptest::option::of(0usize..120),
        any::<u8>(),
    )
        .prop_map(
            |(v6, proto, dst_last, port, exts, vlan, frag, cut, flags)| Gen {
                v6,
                proto,
                dst_last,
                port,
                exts,
                vlan,
                frag,
                cut,
                flags,
            },
        )
}

fn build(g: &Gen) -> Vec<u8> {
    let l4 = match g.proto {
        IPPROTO_TCP => tcp(g.port, g.flags, 1, 2, b"payload"),
        IPPROTO_UDP => udp(4000, g.port, b"payload"),
        _ => vec![g.flags, 0, 0, 0, 0, 0, 0, 0],
    };
    let mut f = if g.v6 {
        let mut dst = GW6;
        dst[15] = g.dst_last;
        let mut payload = l4;
        let mut next = g.proto;
        for e in g.exts.iter().rev() {
            let mut h = ext(next);
            h.extend(payload);
            payload = h;
            next = *e;
        }
        ipv6(next, dst, &payload)
    } else {
        ipv4(g.proto, [192, 0, 2, g.dst_last], g.frag, &l4)
    };
    if g.vlan {
        f.splice(12..12, [0x81, 0x00, 0x00, 0x01]);
    }
    if let Some(c) = g.cut {
        f.truncate(c);
    }
    f
}

/// Whether `rules()` allows what the generated packet targets: TCP 8080 and ping to the
/// gateway, UDP 9999 to the IPv4 gateway, DNS to the resolver (.53). ICMPv6 link
/// traffic passes anywhere.
fn may_pass(g: &Gen) -> bool {
    let gw = g.dst_last == 1;
    match g.proto {
        IPPROTO_TCP => (gw && g.port == 8080) || (!g.v6 && g.dst_last == 53 && g.port == 53),
        IPPROTO_UDP => {
            (gw && !g.v6 && g.port == 9999) || (!g.v6 && g.dst_last == 53 && g.port == 53)
        }
        IPPROTO_ICMP => gw && !g.v6,
        IPPROTO_ICMPV6 => g.v6,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn a_denied_destination_never_passes(g in gen()) {
        let f = build(&g);
        let v = classify(&f, &rules());
        if v == Verdict::Forward {
            prop_assert!(may_pass(&g), "forwarded {g:?}");
            prop_assert!(!g.vlan, "a VLAN-tagged frame passed: {g:?}");
            prop_assert!(g.v6 || g.frag & 0x3fff == 0, "a fragment passed: {g:?}");
            prop_assert!(!g.v6 || !g.exts.iter().any(|e| *e == 43 || *e == 44), "{g:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(f in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = classify(&f, &rules());
        if let Verdict::Drop(d) = classify(&f, &RuleSet::default()) {
            let _ = drop_report(&f, &d);
        }
        let _ = parse_l4(&f);
    }

    #[test]
    fn every_generated_drop_that_is_a_denial_names_its_destination(g in gen()) {
        let f = build(&g);
        if let Verdict::Drop(d) = classify(&f, &rules()) {
            let denial = matches!(
                d,
                DropReason::Denied(_) | DropReason::Fragment | DropReason::Protocol(_)
                    | DropReason::ExtensionHeader(_) | DropReason::IcmpType(_)
            );
            prop_assert_eq!(drop_report(&f, &d).is_some(), denial && !g.vlan, "{:?} {:?}", d, g);
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_ethernet_and_ip_start_never_panic(
        v6 in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut f = eth(if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 }, &[]);
        f.push(if v6 { 0x60 } else { 0x45 });
        f.extend(rest);
        let _ = classify(&f, &rules());
    }
}

#[test]
fn drop_reports_name_protocol_destination_and_port_where_known() {
    // An IPv4 first fragment of TCP to 8080: its port is known.
    let mut t = vec![0u8; 20];
    t[2..4].copy_from_slice(&8080u16.to_be_bytes());
    t[12] = 5 << 4;
    let first = ipv4(IPPROTO_TCP, GW4, 0x2000, &t);
    let (p, dst, port, why) = drop_report(&first, &DropReason::Fragment).unwrap();
    assert_eq!(
        (p.as_str(), dst, port),
        ("tcp", IpAddr::from(GW4), Some(8080))
    );
    assert_eq!(why, "IP fragments are not relayed");
    // A later fragment: no port (its bytes are data, not a header).
    let later = ipv4(IPPROTO_TCP, GW4, 0x0010, &t);
    assert_eq!(drop_report(&later, &DropReason::Fragment).unwrap().2, None);
    // IPv6 behind a fragment header: the protocol inside it.
    let mut fh = vec![IPPROTO_UDP, 0, 0, 0x08, 0, 0, 0, 1];
    fh.extend_from_slice(&[0; 8]);
    let v6 = ipv6(44, GW6, &fh);
    let (p, dst, port, _) = drop_report(&v6, &DropReason::Fragment).unwrap();
    assert_eq!((p.as_str(), dst, port), ("udp", IpAddr::from(GW6), None));
    // Garbage is not a denial.
    assert_eq!(drop_report(&first[..20], &DropReason::Truncated), None);
    assert_eq!(drop_report(&first, &DropReason::Malformed), None);
}
