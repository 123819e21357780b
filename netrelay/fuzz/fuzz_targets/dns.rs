//! The relay's DNS answer parser and name table on arbitrary messages: never a panic,
//! names always bounded and made of host-name bytes, chains and answer lists bounded, and
//! an answer teaches nothing unless it answers the query noted for it.
//!
//! `cargo fuzz run dns seeds/dns` in `netrelay/fuzz/`.

#![no_main]

use std::net::IpAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use netrelay::dns::{self, Names, MAX_ANSWERS, MAX_CHAIN, MAX_NAME};

fuzz_target!(|data: &[u8]| {
    let _ = dns::parse_query(data);
    if let Ok(a) = dns::parse_response(data) {
        assert!(a.names.len() <= MAX_CHAIN + 1);
        assert!(a.addrs.len() <= MAX_ANSWERS);
        for n in &a.names {
            assert!(n.len() <= MAX_NAME);
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
        }
    }
    let resolver: IpAddr = [10, 0, 2, 3].into();
    let now = Instant::now();
    let mut names = Names::default();
    // Unsolicited: nothing learned.
    assert_eq!(names.answer(resolver, 4000, data, now), 0);
    // The guest's own bytes as a query, then the same bytes as the answer.
    names.query(resolver, 4000, data, now);
    let _ = names.answer(resolver, 4000, data, now);
});
