//! The DNS answer parser and the name table, on well-formed and hostile messages.

use proptest::prelude::*;

use super::*;

/// A name in wire format, uncompressed.
fn name(n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in n.split('.').filter(|l| !l.is_empty()) {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

fn header(id: u16, response: bool, rcode: u8, an: u16) -> Vec<u8> {
    let flags: u16 = if response { 0x8180 } else { 0x0100 } | u16::from(rcode);
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&an.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m
}

fn query(id: u16, q: &str) -> Vec<u8> {
    let mut m = header(id, false, 0, 0);
    m.extend(name(q));
    m.extend_from_slice(&[0, 1, 0, 1]);
    m
}

enum Rr<'a> {
    A(&'a str, [u8; 4], u32),
    Aaaa(&'a str, Ipv6Addr, u32),
    Cname(&'a str, &'a str, u32),
}

fn response(id: u16, q: &str, answers: &[Rr<'_>]) -> Vec<u8> {
    let mut m = header(id, true, 0, answers.len() as u16);
    m.extend(name(q));
    m.extend_from_slice(&[0, 1, 0, 1]);
    for a in answers {
        let (owner, t, ttl, rdata) = match a {
            Rr::A(o, ip, ttl) => (o, 1u16, ttl, ip.to_vec()),
            Rr::Aaaa(o, ip, ttl) => (o, 28, ttl, ip.octets().to_vec()),
            Rr::Cname(o, t, ttl) => (o, 5, ttl, name(t)),
        };
        m.extend(name(owner));
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend(rdata);
    }
    m
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn an_answer_maps_its_addresses_to_the_question_through_the_cname_chain() {
    let m = response(
        7,
        "WWW.Example.org",
        &[
            Rr::Cname("www.example.org", "cdn.example.net", 600),
            Rr::A("cdn.example.net", [192, 0, 2, 10], 20),
            Rr::Aaaa("cdn.example.net", "2001:db8::10".parse().unwrap(), 900),
            // Not on the chain: ignored.
            Rr::A("unrelated.test", [192, 0, 2, 99], 300),
        ],
    );
    let a = parse_response(&m).unwrap();
    assert_eq!(a.id, 7);
    assert_eq!(a.names, vec!["www.example.org", "cdn.example.net"]);
    assert_eq!(
        a.addrs,
        vec![(ip("192.0.2.10"), 20), (ip("2001:db8::10"), 600)]
    );
}

#[test]
fn compressed_names_are_followed() {
    // Question at 12; the answer's owner is a pointer to it (0xc00c).
    let mut m = header(1, true, 0, 1);
    m.extend(name("a.example.org"));
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 1]);
    let a = parse_response(&m).unwrap();
    assert_eq!(a.addrs, vec![(ip("198.51.100.1"), 60)]);
    // "x" + pointer to "example.org" inside the question.
    let mut m = header(1, true, 0, 1);
    m.extend(name("a.example.org"));
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'x', 0xc0, 14]);
    let a = parse_response(&m).unwrap();
    assert_eq!(a.names, vec!["a.example.org", "x.example.org"]);
}

#[test]
fn hostile_names_are_refused() {
    // A pointer to itself.
    let mut m = header(1, true, 0, 0);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(parse_response(&m), Err(DnsError::PointerLoop(12)));
    // A label with a dot in it would pose as "allowed.org".
    let mut m = header(1, true, 0, 0);
    m.extend_from_slice(&[11]);
    m.extend_from_slice(b"allowed.org");
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(parse_response(&m), Err(DnsError::LabelByte(12)));
    // Longer than 255 bytes.
    let mut m = header(1, true, 0, 0);
    for _ in 0..5 {
        m.push(63);
        m.extend_from_slice(&[b'a'; 63]);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(parse_response(&m), Err(DnsError::NameTooLong(12)));
    // Reserved label type, truncation, two questions, a query.
    let mut m = header(1, true, 0, 0);
    m.extend_from_slice(&[0x40, 0, 0, 1, 0, 1]);
    assert_eq!(parse_response(&m), Err(DnsError::LabelType(12)));
    assert!(matches!(
        parse_response(&header(1, true, 0, 0)),
        Err(DnsError::Truncated(_))
    ));
    let mut two = response(1, "a.test", &[]);
    two[5] = 2;
    assert_eq!(parse_response(&two), Err(DnsError::Questions(2)));
    assert_eq!(
        parse_response(&query(1, "a.test")),
        Err(DnsError::Direction)
    );
    // An A record of 5 bytes.
    let mut m = response(1, "a.test", &[Rr::A("a.test", [1, 2, 3, 4], 60)]);
    let n = m.len();
    m[n - 5] = 5;
    m.push(0);
    assert!(parse_response(&m).is_err());
}

#[test]
fn cname_chains_stop_at_their_bound_and_at_loops() {
    let names: Vec<String> = (0..20).map(|i| format!("n{i}.test")).collect();
    let mut rrs: Vec<Rr<'_>> = names
        .windows(2)
        .map(|w| Rr::Cname(w[0].as_str(), w[1].as_str(), 300))
        .collect();
    rrs.push(Rr::A(names[19].as_str(), [192, 0, 2, 1], 300));
    rrs.push(Rr::A(names[3].as_str(), [192, 0, 2, 3], 300));
    let a = parse_response(&response(1, "n0.test", &rrs)).unwrap();
    assert_eq!(a.names.len(), MAX_CHAIN + 1);
    // The end of a chain too long is not learned; an address inside the bound is.
    assert_eq!(a.addrs, vec![(ip("192.0.2.3"), 300)]);
    let looped = response(
        1,
        "a.test",
        &[
            Rr::Cname("a.test", "b.test", 300),
            Rr::Cname("b.test", "a.test", 300),
            Rr::A("b.test", [192, 0, 2, 2], 300),
        ],
    );
    let a = parse_response(&looped).unwrap();
    assert_eq!(a.names, vec!["a.test", "b.test"]);
    assert_eq!(a.addrs, vec![(ip("192.0.2.2"), 300)]);
}

#[test]
fn answers_are_learned_only_for_pending_queries_and_expire_after_their_clamped_ttl() {
    let r = ip("10.0.2.3");
    let t0 = Instant::now();
    let answer = response(9, "api.test", &[Rr::A("api.test", [192, 0, 2, 5], 5)]);
    let mut n = Names::default();
    // Unsolicited: nothing learned.
    assert_eq!(n.answer(r, 4000, &answer, t0), 0);
    assert!(n.names_for(ip("192.0.2.5"), t0).is_empty());
    // Asked from another port, or for another name, or answered by another resolver.
    n.query(r, 4001, &query(9, "api.test"), t0);
    assert_eq!(n.answer(r, 4000, &answer, t0), 0);
    n.query(r, 4000, &query(9, "other.test"), t0);
    assert_eq!(n.answer(r, 4000, &answer, t0), 0);
    n.query(r, 4000, &query(9, "api.test"), t0);
    assert_eq!(n.answer(ip("10.0.2.4"), 4000, &answer, t0), 0);
    // The real thing.
    assert_eq!(n.answer(r, 4000, &answer, t0), 1);
    assert_eq!(n.names_for(ip("192.0.2.5"), t0), vec!["api.test"]);
    // An answer is used once.
    assert_eq!(n.answer(r, 4000, &answer, t0), 0);
    // TTL 5 is kept TTL_MIN seconds.
    let t = |s: u64| t0 + Duration::from_secs(s);
    assert_eq!(n.names_for(ip("192.0.2.5"), t(29)), vec!["api.test"]);
    assert!(n.names_for(ip("192.0.2.5"), t(30)).is_empty());
    // A huge TTL is kept TTL_MAX.
    n.query(r, 4000, &query(10, "api.test"), t0);
    let long = response(
        10,
        "api.test",
        &[Rr::A("api.test", [192, 0, 2, 6], u32::MAX)],
    );
    assert_eq!(n.answer(r, 4000, &long, t0), 1);
    assert!(!n.names_for(ip("192.0.2.6"), t(3599)).is_empty());
    assert!(n.names_for(ip("192.0.2.6"), t(3600)).is_empty());
    n.expire(t(3600));
    assert!(n.by_addr.is_empty());
    // A late answer (after QUERY_TIMEOUT) is not learned.
    n.query(r, 4000, &query(11, "api.test"), t0);
    let late = response(11, "api.test", &[Rr::A("api.test", [192, 0, 2, 7], 60)]);
    assert_eq!(n.answer(r, 4000, &late, t(31)), 0);
}

#[test]
fn a_rotating_name_keeps_every_address_it_was_given() {
    let r = ip("10.0.2.3");
    let t0 = Instant::now();
    let mut n = Names::default();
    for (id, last) in [(1u16, 1u8), (2, 2), (3, 3)] {
        n.query(r, 5000, &query(id, "rot.test"), t0);
        let a = response(id, "rot.test", &[Rr::A("rot.test", [192, 0, 2, last], 60)]);
        assert_eq!(n.answer(r, 5000, &a, t0), 1);
    }
    for last in 1..=3u8 {
        assert_eq!(
            n.names_for(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), t0),
            vec!["rot.test"]
        );
    }
}

#[test]
fn the_tables_stay_bounded() {
    let r = ip("10.0.2.3");
    let t0 = Instant::now();
    let mut n = Names::default();
    for id in 0..(MAX_PENDING as u16 + 50) {
        n.query(r, 6000, &query(id, "q.test"), t0);
    }
    assert_eq!(n.pending.len(), MAX_PENDING);
    // Many names for one address: at most MAX_NAMES_PER_ADDR kept.
    let mut n = Names::default();
    for id in 0..20u16 {
        let q = format!("n{id}.test");
        n.query(r, 6000, &query(id, &q), t0);
        let a = response(id, &q, &[Rr::A(&q, [192, 0, 2, 1], 60)]);
        n.answer(r, 6000, &a, t0);
    }
    assert_eq!(n.names_for(ip("192.0.2.1"), t0).len(), MAX_NAMES_PER_ADDR);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_parser(m in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_response(&m);
        let _ = parse_query(&m);
        let _ = read_name(&m, 0);
    }

    #[test]
    fn mutated_answers_never_panic_and_learn_only_what_they_say(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let mut m = response(
            3,
            "www.example.org",
            &[
                Rr::Cname("www.example.org", "cdn.example.net", 600),
                Rr::A("cdn.example.net", [192, 0, 2, 10], 20),
            ],
        );
        for (at, v) in flips {
            let i = at % m.len();
            m[i] = v;
        }
        m.truncate(cut % (m.len() + 1));
        if let Ok(a) = parse_response(&m) {
            prop_assert!(a.names.len() <= MAX_CHAIN + 1);
            prop_assert!(a.addrs.len() <= MAX_ANSWERS);
            for n in &a.names {
                prop_assert!(n.len() <= MAX_NAME);
                prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'));
            }
        }
    }

    #[test]
    fn a_guest_cannot_teach_names_by_answering_itself(
        m in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        // Whatever the guest sends as a "query" (even a well-formed answer), only an
        // answer from the resolver side teaches anything.
        let r = ip("10.0.2.3");
        let t0 = Instant::now();
        let mut n = Names::default();
        n.query(r, 7000, &m, t0);
        let forged = response(1, "allowed.test", &[Rr::A("allowed.test", [203, 0, 113, 9], 60)]);
        n.query(r, 7000, &forged, t0);
        prop_assert!(n.by_addr.is_empty());
    }
}
