//! The relay between two real socketpairs: a "guest" peer (what the VMM would send) and a
//! "passt" peer.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;
use crate::rules::parse_allow;

struct Peers {
    guest: UnixStream,
    passt: UnixStream,
    relay: JoinHandle<(RelayEnd, Stats, Vec<Event>)>,
}

fn start(rules: RuleSet) -> Peers {
    let (guest, relay_guest) = UnixStream::pair().unwrap();
    let (passt, relay_passt) = UnixStream::pair().unwrap();
    for s in [&guest, &passt] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let relay = std::thread::spawn(move || {
        let (g, p): (OwnedFd, OwnedFd) = (relay_guest.into(), relay_passt.into());
        let mut stats = Stats::default();
        let mut events = Vec::new();
        let end = run(&g, &p, &rules, &mut stats, &mut |e| events.push(e.clone()));
        (end, stats, events)
    });
    Peers {
        guest,
        passt,
        relay,
    }
}

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut f).unwrap();
    f
}

/// An IPv4 TCP SYN from 192.0.2.2 to 192.0.2.1:`port`.
fn syn(port: u16) -> Vec<u8> {
    let mut f = vec![0x9a; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let mut ip = vec![
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1,
    ];
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&port.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = crate::packet::TCP_SYN;
    ip.extend(t);
    f.extend(ip);
    f
}

fn rules() -> RuleSet {
    RuleSet {
        rules: vec![parse_allow("tcp:192.0.2.1:8080", 1).unwrap()],
        ..RuleSet::default()
    }
}

#[test]
fn an_allowed_syn_reaches_passt_and_passts_answer_reaches_the_guest() {
    let mut p = start(rules());
    p.guest.write_all(&encode(&syn(8080))).unwrap();
    assert_eq!(read_frame(&mut p.passt), syn(8080));
    let answer = vec![0x42u8; 60];
    p.passt.write_all(&encode(&answer)).unwrap();
    assert_eq!(read_frame(&mut p.guest), answer);
    drop(p.guest);
    let (end, stats, _) = p.relay.join().unwrap();
    assert!(matches!(end, RelayEnd::Closed(Side::Guest)), "{end}");
    assert_eq!((stats.to_passt, stats.to_guest), (1, 1));
}

#[test]
fn a_denied_syn_is_answered_with_a_rst_and_never_reaches_passt() {
    let mut p = start(rules());
    p.guest.write_all(&encode(&syn(8081))).unwrap();
    let rst = read_frame(&mut p.guest);
    assert_eq!(
        rst[14 + 20 + 13],
        crate::packet::TCP_RST | crate::packet::TCP_ACK
    );
    // passt got nothing: the next thing it reads is the allowed SYN sent after.
    p.guest.write_all(&encode(&syn(8080))).unwrap();
    assert_eq!(read_frame(&mut p.passt), syn(8080));
    drop(p.passt);
    let (end, stats, events) = p.relay.join().unwrap();
    assert!(matches!(end, RelayEnd::Closed(Side::Passt)), "{end}");
    assert_eq!(stats.refused, 1);
    assert!(matches!(
        &events[0],
        Event::Refused {
            denial: Denial::NoRuleAllows,
            ..
        }
    ));
}

#[test]
fn a_bad_length_from_either_side_ends_the_relay() {
    let mut p = start(rules());
    p.guest.write_all(&0u32.to_be_bytes()).unwrap();
    let (end, _, _) = p.relay.join().unwrap();
    assert!(
        matches!(
            end,
            RelayEnd::Protocol {
                side: Side::Guest,
                ..
            }
        ),
        "{end}"
    );
    // Both sockets are closed with it.
    let mut b = [0u8; 1];
    assert_eq!(p.passt.read(&mut b).unwrap(), 0);

    let mut p = start(rules());
    p.passt.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let (end, _, _) = p.relay.join().unwrap();
    assert!(
        matches!(
            end,
            RelayEnd::Protocol {
                side: Side::Passt,
                ..
            }
        ),
        "{end}"
    );
    assert_eq!(p.guest.read(&mut b).unwrap(), 0);
}

#[test]
fn the_log_limit_lets_a_burst_through_then_counts_the_rest() {
    let mut l = LogLimit::new(3);
    assert_eq!(l.allow(), Some(0));
    assert_eq!(l.allow(), Some(0));
    assert_eq!(l.allow(), Some(0));
    assert_eq!(l.allow(), None);
    assert_eq!(l.allow(), None);
}

/// Not a pass/fail test: `cargo test -p bulkhead-netrelay --release -- --ignored
/// --nocapture relay_cost` prints the relay's CPU time per MiB of allowed 1514-byte frames
/// from the guest side and of frames from passt.
#[test]
#[ignore]
fn relay_cost_per_mib_of_frames() {
    let p = start(RuleSet {
        rules: vec![parse_allow("tcp:*:*", 1).unwrap()],
        ..RuleSet::default()
    });
    let mut frame = syn(8080);
    frame[14 + 20 + 13] = crate::packet::TCP_ACK;
    frame.resize(1514, 0x61);
    frame[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let wire = encode(&frame);
    let mib = 256usize;
    let count = mib * (1 << 20) / frame.len();
    let cpu = nix_like_rusage;
    for (name, mut from, mut to) in [
        (
            "guest -> passt",
            p.guest.try_clone().unwrap(),
            p.passt.try_clone().unwrap(),
        ),
        (
            "passt -> guest",
            p.passt.try_clone().unwrap(),
            p.guest.try_clone().unwrap(),
        ),
    ] {
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut left = count * wire_len();
            while left > 0 {
                let n = to.read(&mut buf).unwrap();
                assert!(n > 0);
                left -= n.min(left);
            }
        });
        let (c0, t0) = (cpu(), std::time::Instant::now());
        for _ in 0..count {
            from.write_all(&wire).unwrap();
        }
        reader.join().unwrap();
        let (c1, t1) = (cpu(), t0.elapsed());
        let sent = (count * frame.len()) as f64 / f64::from(1 << 20);
        eprintln!(
            "{name}: {sent:.0} MiB in {:.2} s wall ({:.0} MiB/s); process CPU {:.1} ms per MiB \
             (relay + both test peers)",
            t1.as_secs_f64(),
            sent / t1.as_secs_f64(),
            (c1 - c0) * 1000.0 / sent
        );
    }

    fn wire_len() -> usize {
        4 + 1514
    }
}

/// User + system CPU seconds of this process so far.
fn nix_like_rusage() -> f64 {
    // SAFETY: rusage is plain integers and timevals; all zeroes is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to `u`, which outlives the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0);
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

struct Controlled {
    guest: UnixStream,
    passt: UnixStream,
    client: crate::control::Client,
    relay: JoinHandle<(RelayEnd, Stats, Vec<Event>)>,
}

fn start_controlled() -> Controlled {
    let (guest, relay_guest) = UnixStream::pair().unwrap();
    let (passt, relay_passt) = UnixStream::pair().unwrap();
    for s in [&guest, &passt] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let (ours, theirs) = crate::control::socketpair().unwrap();
    let client = crate::control::Client::new(ours).unwrap();
    let relay = std::thread::spawn(move || {
        let (g, p): (OwnedFd, OwnedFd) = (relay_guest.into(), relay_passt.into());
        let mut stats = Stats::default();
        let mut events = Vec::new();
        let end = run_with(
            &g,
            &p,
            Some(&theirs),
            RuleSet::default(),
            &mut stats,
            &mut |e| events.push(e.clone()),
        );
        (end, stats, events)
    });
    Controlled {
        guest,
        passt,
        client,
        relay,
    }
}

fn allow_spec(dest: &str, ports: &str) -> crate::control::RuleSpec {
    crate::control::RuleSpec {
        action: isolation_policy::network::FirewallAction::Allow,
        protocol: isolation_policy::network::Protocol::Tcp,
        dest: dest.into(),
        ports: ports.into(),
        source: "p.toml:4".into(),
    }
}

/// A TCP segment between 192.0.2.2:40000 (guest) and 192.0.2.1:`port` with `flags`.
fn segment(port: u16, flags: u8, seq: u32, ack: u32, from_guest: bool, data: &[u8]) -> Vec<u8> {
    let mut f = syn(port);
    let t = 14 + 20;
    f[t + 13] = flags;
    f[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    f[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(data);
    let total = (40 + data.len()) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    if !from_guest {
        let (a, b) = (f[0..6].to_vec(), f[6..12].to_vec());
        f[0..6].copy_from_slice(&b);
        f[6..12].copy_from_slice(&a);
        let (s, d) = (f[26..30].to_vec(), f[30..34].to_vec());
        f[26..30].copy_from_slice(&d);
        f[30..34].copy_from_slice(&s);
        let (sp, dp) = (f[t..t + 2].to_vec(), f[t + 2..t + 4].to_vec());
        f[t..t + 2].copy_from_slice(&dp);
        f[t + 2..t + 4].copy_from_slice(&sp);
    }
    f
}

use crate::control::FromRelay;

#[test]
fn with_a_control_channel_the_guest_waits_for_the_first_rule_set() {
    let mut c = start_controlled();
    c.guest.write_all(&encode(&syn(8080))).unwrap();
    // Nothing reaches passt before the rules.
    c.passt
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(c.passt.read(&mut b).is_err());
    c.passt
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.client
        .send_rules(vec![allow_spec("192.0.2.1", "8080")], false)
        .unwrap();
    assert_eq!(
        c.client.recv().unwrap(),
        FromRelay::RulesApplied {
            generation: 1,
            cut_flows: 0
        }
    );
    assert_eq!(read_frame(&mut c.passt), syn(8080));
    drop(c.guest);
    let (end, _, _) = c.relay.join().unwrap();
    assert!(matches!(end, RelayEnd::Closed(Side::Guest)), "{end}");
}

#[test]
fn a_new_rule_set_cuts_the_flows_it_denies_with_rsts_both_ways_and_reports_them() {
    let mut c = start_controlled();
    c.client
        .send_rules(
            vec![
                allow_spec("192.0.2.1", "8080"),
                allow_spec("192.0.2.1", "9090"),
            ],
            false,
        )
        .unwrap();
    assert!(matches!(
        c.client.recv().unwrap(),
        FromRelay::RulesApplied { generation: 1, .. }
    ));
    // Two connections: guest SYN, passt's SYN-ACK (seq 5000), guest data.
    for port in [8080, 9090] {
        let syn = segment(port, crate::packet::TCP_SYN, 100, 0, true, &[]);
        c.guest.write_all(&encode(&syn)).unwrap();
        assert_eq!(read_frame(&mut c.passt), syn);
        let synack = segment(
            port,
            crate::packet::TCP_SYN | crate::packet::TCP_ACK,
            5000,
            101,
            false,
            &[],
        );
        c.passt.write_all(&encode(&synack)).unwrap();
        assert_eq!(read_frame(&mut c.guest), synack);
        let data = segment(port, crate::packet::TCP_ACK, 101, 5001, true, b"hello");
        c.guest.write_all(&encode(&data)).unwrap();
        assert_eq!(read_frame(&mut c.passt), data);
    }
    // The new set keeps 8080 only.
    c.client
        .send_rules(vec![allow_spec("192.0.2.1", "8080")], false)
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(c.client.recv().unwrap());
    }
    assert!(
        got.contains(&FromRelay::RulesApplied {
            generation: 2,
            cut_flows: 1
        }),
        "{got:?}"
    );
    assert!(
        got.contains(&FromRelay::Denied {
            protocol: "tcp".into(),
            destination: "192.0.2.1".parse().unwrap(),
            port: Some(9090),
            host: None,
            reason: "no rule allows".into(),
            suppressed: 0,
        }),
        "{got:?}"
    );
    // The guest gets a RST from 192.0.2.1:9090 at passt's next sequence number...
    let to_guest = read_frame(&mut c.guest);
    let l4 = crate::packet::parse_l4(&to_guest).unwrap();
    assert_eq!((l4.sport, l4.dport), (9090, 40000));
    assert_eq!(l4.flags & crate::packet::TCP_RST, crate::packet::TCP_RST);
    assert_eq!((l4.seq, l4.ack), (5001, 106));
    assert_eq!(l4.dst_mac, to_guest[0..6]);
    // ...and passt one from the guest at the guest's.
    let to_passt = read_frame(&mut c.passt);
    let l4 = crate::packet::parse_l4(&to_passt).unwrap();
    assert_eq!(
        (l4.sport, l4.dport, l4.seq, l4.ack),
        (40000, 9090, 106, 5001)
    );
    assert_eq!(l4.flags & crate::packet::TCP_RST, crate::packet::TCP_RST);
    // The kept flow still works.
    let more = segment(8080, crate::packet::TCP_ACK, 106, 5001, true, b"x");
    c.guest.write_all(&encode(&more)).unwrap();
    assert_eq!(read_frame(&mut c.passt), more);
    drop(c.guest);
    let (_, stats, events) = c.relay.join().unwrap();
    assert_eq!(stats.denied, 1);
    assert!(events.iter().any(|e| matches!(e, Event::Cut { .. })));
}

#[test]
fn bad_control_messages_are_dropped_and_the_old_rules_stay() {
    let mut c = start_controlled();
    c.client
        .send_rules(vec![allow_spec("192.0.2.1", "8080")], false)
        .unwrap();
    assert!(matches!(
        c.client.recv().unwrap(),
        FromRelay::RulesApplied { generation: 1, .. }
    ));
    let raw = |b: &[u8]| {
        rustix::net::send(&c.client, b, rustix::net::SendFlags::empty()).unwrap();
    };
    raw(b"\xff\xfe garbage");
    raw(br#"{"type":"rules","dns":false}"#);
    raw(&vec![b'{'; crate::control::MAX_MESSAGE + 1]);
    c.client
        .send_rules(vec![allow_spec("192.0.2.1", "0")], false)
        .unwrap();
    match c.client.recv().unwrap() {
        FromRelay::RulesRejected { error } => {
            assert!(error.contains("ports \"0\""), "{error}")
        }
        other => panic!("{other:?}"),
    }
    // Rule set 1 still applies.
    c.guest.write_all(&encode(&syn(8080))).unwrap();
    assert_eq!(read_frame(&mut c.passt), syn(8080));
    c.guest.write_all(&encode(&syn(8081))).unwrap();
    let rst = read_frame(&mut c.guest);
    assert_eq!(
        rst[14 + 20 + 13],
        crate::packet::TCP_RST | crate::packet::TCP_ACK
    );
    match c.client.recv().unwrap() {
        FromRelay::Denied { port, reason, .. } => {
            assert_eq!((port, reason.as_str()), (Some(8081), "no rule allows"))
        }
        other => panic!("{other:?}"),
    }
    drop(c.guest);
    let (end, _, events) = c.relay.join().unwrap();
    assert!(matches!(end, RelayEnd::Closed(Side::Guest)), "{end}");
    let errors = events
        .iter()
        .filter(|e| matches!(e, Event::Control(_)))
        .count();
    assert_eq!(errors, 4, "{events:?}");
}

#[test]
fn denial_reports_are_rate_limited_and_count_what_was_suppressed() {
    let mut c = start_controlled();
    c.client.send_rules(Vec::new(), false).unwrap();
    assert!(matches!(
        c.client.recv().unwrap(),
        FromRelay::RulesApplied { .. }
    ));
    let n = DENIED_PER_SECOND as usize + 15;
    for _ in 0..n {
        c.guest.write_all(&encode(&syn(8081))).unwrap();
        let _ = read_frame(&mut c.guest);
    }
    let mut reported = 0;
    while let Some(m) = c.client.try_recv().unwrap() {
        assert!(
            matches!(m, FromRelay::Denied { suppressed: 0, .. }),
            "{m:?}"
        );
        reported += 1;
    }
    assert_eq!(reported, DENIED_PER_SECOND as usize);
    // After the window the next report carries the count of what was held back (unless
    // the burst straddled a window edge, in which case fewer were suppressed).
    std::thread::sleep(Duration::from_millis(1100));
    c.guest.write_all(&encode(&syn(8081))).unwrap();
    let _ = read_frame(&mut c.guest);
    match c.client.recv().unwrap() {
        FromRelay::Denied { suppressed, .. } => {
            assert!((1..=15).contains(&suppressed), "{suppressed}")
        }
        other => panic!("{other:?}"),
    }
    drop(c.guest);
    let (_, stats, _) = c.relay.join().unwrap();
    assert_eq!(stats.denied, n as u64 + 1);
}

/// An IPv4 UDP frame `src`:`sport` -> `dst`:`dport` (guest MAC 02:00:00:00:00:02,
/// passt's 9a:9a:…); `to_guest` swaps the MACs.
fn udp4(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
    to_guest: bool,
) -> Vec<u8> {
    let guest_mac = [2u8, 0, 0, 0, 0, 2];
    let passt_mac = [0x9au8; 6];
    let mut f = Vec::new();
    if to_guest {
        f.extend_from_slice(&guest_mac);
        f.extend_from_slice(&passt_mac);
    } else {
        f.extend_from_slice(&passt_mac);
        f.extend_from_slice(&guest_mac);
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn dns_name(n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in n.split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

/// A DNS message for `q`: a query, or an answer giving `a` for it.
fn dns(id: u16, q: &str, a: Option<[u8; 4]>) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(if a.is_some() {
        &[0x81, 0x80]
    } else {
        &[0x01, 0x00]
    });
    m.extend_from_slice(&[0, 1, 0, u8::from(a.is_some()), 0, 0, 0, 0]);
    m.extend(dns_name(q));
    m.extend_from_slice(&[0, 1, 0, 1]);
    if let Some(ip) = a {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
        m.extend_from_slice(&ip);
    }
    m
}

const RESOLVER: [u8; 4] = [192, 0, 2, 53];
const GUEST: [u8; 4] = [192, 0, 2, 2];

/// A SYN from the guest to `dst`:443.
fn syn_to(dst: [u8; 4]) -> Vec<u8> {
    let mut f = syn(443);
    f[30..34].copy_from_slice(&dst);
    f
}

#[test]
fn a_host_name_rule_allows_the_addresses_the_resolver_answered_and_nothing_the_guest_claims() {
    let (guest, relay_guest) = UnixStream::pair().unwrap();
    let (passt, relay_passt) = UnixStream::pair().unwrap();
    for s in [&guest, &passt] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let (ours, theirs) = crate::control::socketpair().unwrap();
    let mut client = crate::control::Client::new(ours).unwrap();
    let relay = std::thread::spawn(move || {
        let (g, p): (OwnedFd, OwnedFd) = (relay_guest.into(), relay_passt.into());
        let mut stats = Stats::default();
        let rules = RuleSet {
            resolvers: vec![IpAddr::from(RESOLVER)],
            ..RuleSet::default()
        };
        run_with(&g, &p, Some(&theirs), rules, &mut stats, &mut |_| {})
    });
    let (mut guest, mut passt) = (guest, passt);
    client
        .send_rules(
            vec![crate::control::RuleSpec {
                dest: "*.example.org".into(),
                ..allow_spec("*", "443")
            }],
            true,
        )
        .unwrap();
    assert!(matches!(
        client.recv().unwrap(),
        FromRelay::RulesApplied { .. }
    ));
    // The guest sends an "answer" to the resolver (DNS is allowed, so passt gets it):
    // nothing is learned from it.
    let forged = udp4(
        GUEST,
        40000,
        RESOLVER,
        53,
        &dns(1, "www.example.org", Some([203, 0, 113, 9])),
        false,
    );
    guest.write_all(&encode(&forged)).unwrap();
    assert_eq!(read_frame(&mut passt), forged);
    guest.write_all(&encode(&syn_to([203, 0, 113, 9]))).unwrap();
    let rst = read_frame(&mut guest);
    assert_eq!(
        rst[14 + 20 + 13] & crate::packet::TCP_RST,
        crate::packet::TCP_RST
    );
    assert!(matches!(
        client.recv().unwrap(),
        FromRelay::Denied { host: None, .. }
    ));
    // A real lookup: query to the resolver, answer from it.
    let q = udp4(
        GUEST,
        40001,
        RESOLVER,
        53,
        &dns(2, "www.example.org", None),
        false,
    );
    guest.write_all(&encode(&q)).unwrap();
    assert_eq!(read_frame(&mut passt), q);
    let a = udp4(
        RESOLVER,
        53,
        GUEST,
        40001,
        &dns(2, "www.example.org", Some([203, 0, 113, 9])),
        true,
    );
    passt.write_all(&encode(&a)).unwrap();
    assert_eq!(read_frame(&mut guest), a);
    guest.write_all(&encode(&syn_to([203, 0, 113, 9]))).unwrap();
    assert_eq!(read_frame(&mut passt), syn_to([203, 0, 113, 9]));
    // Port 80 to the same address is still denied, and the report names the host.
    let mut s80 = syn_to([203, 0, 113, 9]);
    s80[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&80u16.to_be_bytes());
    guest.write_all(&encode(&s80)).unwrap();
    let _ = read_frame(&mut guest);
    assert_eq!(
        client.recv().unwrap(),
        FromRelay::Denied {
            protocol: "tcp".into(),
            destination: "203.0.113.9".parse().unwrap(),
            port: Some(80),
            host: Some("www.example.org".into()),
            reason: "no rule allows".into(),
            suppressed: 0,
        }
    );
    drop(guest);
    let end = relay.join().unwrap();
    assert!(matches!(end, RelayEnd::Closed(Side::Guest)), "{end}");
}

#[test]
fn every_denial_path_is_reported_on_the_control_channel() {
    let mut c = start_controlled();
    c.client
        .send_rules(vec![allow_spec("192.0.2.1", "8080")], false)
        .unwrap();
    assert!(matches!(
        c.client.recv().unwrap(),
        FromRelay::RulesApplied { .. }
    ));
    let t = 14 + 20;
    // Denied TCP: a RST back.
    c.guest.write_all(&encode(&syn(22))).unwrap();
    assert_eq!(
        read_frame(&mut c.guest)[t + 13] & crate::packet::TCP_RST,
        crate::packet::TCP_RST
    );
    // Denied UDP: ICMP administratively prohibited back.
    let udp = udp4(GUEST, 5000, [192, 0, 2, 1], 9999, b"x", false);
    c.guest.write_all(&encode(&udp)).unwrap();
    let icmp = read_frame(&mut c.guest);
    assert_eq!((icmp[14 + 9], icmp[t], icmp[t + 1]), (1, 3, 13));
    // Denied RST and ping: nothing back.
    let mut rst = syn(23);
    rst[t + 13] = crate::packet::TCP_RST;
    c.guest.write_all(&encode(&rst)).unwrap();
    let mut ping = syn(0);
    ping[14 + 9] = 1;
    ping[t..t + 8].copy_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
    c.guest.write_all(&encode(&ping)).unwrap();
    // A fragment of an allowed flow and an unknown protocol (GRE).
    let mut frag = syn(8080);
    frag[14 + 6] = 0x20;
    c.guest.write_all(&encode(&frag)).unwrap();
    let mut gre = syn(8080);
    gre[14 + 9] = 47;
    c.guest.write_all(&encode(&gre)).unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        match c.client.recv().unwrap() {
            FromRelay::Denied {
                protocol,
                destination,
                port,
                reason,
                ..
            } => {
                assert_eq!(destination, IpAddr::from([192, 0, 2, 1]));
                got.push((protocol, port, reason));
            }
            other => panic!("{other:?}"),
        }
    }
    let want = [
        ("tcp", Some(22), "no rule allows"),
        ("udp", Some(9999), "no rule allows"),
        ("tcp", Some(23), "no rule allows"),
        ("icmp", None, "no rule allows"),
        ("tcp", Some(8080), "IP fragments are not relayed"),
        ("ip-proto-47", None, "IP protocol 47 is not relayed"),
    ];
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0.as_str(), g.1, g.2.as_str()), w, "{got:?}");
    }
    // Nothing of it reached passt: the next frame there is an allowed SYN.
    c.guest.write_all(&encode(&syn(8080))).unwrap();
    assert_eq!(read_frame(&mut c.passt), syn(8080));
    drop(c.guest);
    let (_, stats, _) = c.relay.join().unwrap();
    assert_eq!(stats.denied, 6);
}
