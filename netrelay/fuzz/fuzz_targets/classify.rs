//! The relay's frame classifier on arbitrary frames: it must never panic, and whatever it
//! forwards must be something the rules allow (checked again here from the frame's own
//! fields for IPv4/IPv6 TCP and UDP with a plain header).
//!
//! `cargo fuzz run classify` in `netrelay/fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netrelay::packet::{classify, Verdict};
use netrelay::rules::{parse_allow, RuleSet};

fuzz_target!(|data: &[u8]| {
    let rules = RuleSet {
        rules: vec![
            parse_allow("tcp:192.0.2.1:8080", 1).expect("rule"),
            parse_allow("udp:[2001:db8::1]:9999", 2).expect("rule"),
        ],
        dns: true,
        resolvers: vec!["192.0.2.53".parse().expect("address")],
        sources: Vec::new(),
    };
    let verdict = classify(data, &rules);
    if verdict != Verdict::Forward || data.len() < 14 + 20 {
        return;
    }
    // IPv4 TCP with no options: the destination must be the allowed one.
    if data[12..14] == [0x08, 0x00] && data[14] == 0x45 && data[14 + 9] == 6 {
        let dst = &data[14 + 16..14 + 20];
        let port = u16::from_be_bytes([data[14 + 22], data[14 + 23]]);
        assert!(
            (dst == [192, 0, 2, 1] && port == 8080) || (dst == [192, 0, 2, 53] && port == 53),
            "forwarded TCP to {dst:?}:{port}"
        );
    }
});
