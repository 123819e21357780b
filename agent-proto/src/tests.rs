use proptest::prelude::*;

use super::*;

fn png(rest: &[u8]) -> Vec<u8> {
    let mut p = PNG_SIGNATURE.to_vec();
    p.extend_from_slice(rest);
    p
}

fn clipboard() -> impl Strategy<Value = Clipboard> {
    prop_oneof![
        ".{0,64}".prop_map(Clipboard::Text),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Clipboard::Png(png(&b))),
    ]
}

fn file_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._é-]{1,40}".prop_filter("not a dot name", |n| n != "." && n != "..")
}

fn files() -> impl Strategy<Value = Vec<FileEntry>> {
    proptest::collection::vec(
        (file_name(), any::<u64>()).prop_map(|(name, size)| FileEntry { name, size }),
        0..6,
    )
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        (any::<u16>(), any::<u32>())
            .prop_map(|(version, features)| AgentMessage::Hello { version, features }),
        any::<u32>().prop_map(|id| AgentMessage::Pong { id }),
        (any::<u32>(), proptest::option::of(clipboard()))
            .prop_map(|(id, content)| AgentMessage::Clipboard { id, content }),
        any::<u32>().prop_map(|id| AgentMessage::ClipboardSet { id }),
        (any::<u32>(), ".{0,40}").prop_map(|(id, reason)| AgentMessage::Failed { id, reason }),
        (any::<u32>(), any::<bool>(), files()).prop_map(|(offer, is_move, files)| {
            AgentMessage::FileOffer {
                offer,
                is_move,
                files,
            }
        }),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(id, data)| AgentMessage::FileData { id, data }),
        any::<u32>().prop_map(|id| AgentMessage::Done { id }),
        (any::<u32>(), url(), proptest::option::of(file_name())).prop_map(
            |(request, url, target)| AgentMessage::OpenUrl {
                request,
                url,
                target
            }
        ),
    ]
}

fn url() -> impl Strategy<Value = String> {
    "https?://[a-z0-9.-]{1,20}(/[!-~]{0,40})?"
}

fn host_message() -> impl Strategy<Value = HostMessage> {
    prop_oneof![
        any::<u16>().prop_map(|version| HostMessage::Hello { version }),
        any::<u32>().prop_map(|id| HostMessage::Ping { id }),
        any::<u32>().prop_map(|id| HostMessage::ClipboardGet { id }),
        (any::<u32>(), clipboard())
            .prop_map(|(id, content)| HostMessage::ClipboardSet { id, content }),
        proptest::collection::vec(any::<u8>(), 0..=MAX_ENTROPY)
            .prop_map(|entropy| HostMessage::Restored { entropy }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            0..=MAX_PAYLOAD as u32
        )
            .prop_map(|(id, offer, index, offset, len)| HostMessage::FileRead {
                id,
                offer,
                index,
                offset,
                len
            }),
        (any::<u32>(), any::<u32>(), file_name(), files()).prop_map(
            |(id, transfer, source, files)| HostMessage::FileIncoming {
                id,
                transfer,
                source,
                files
            }
        ),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(
                |(id, transfer, index, offset, data)| HostMessage::FileWrite {
                    id,
                    transfer,
                    index,
                    offset,
                    data
                }
            ),
        (any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(id, transfer, abort)| {
            HostMessage::FileCommit {
                id,
                transfer,
                abort,
            }
        }),
        (any::<u32>(), proptest::option::of(".{0,40}"))
            .prop_map(|(offer, error)| HostMessage::FileOutcome { offer, error }),
        (any::<u32>(), url()).prop_map(|(id, url)| HostMessage::OpenUrl { id, url }),
        (any::<u32>(), proptest::option::of(".{0,40}"))
            .prop_map(|(request, error)| HostMessage::OpenOutcome { request, error }),
    ]
}

fn decode_all<M: Frame>(chunks: &[&[u8]]) -> Result<Vec<M>, DecodeError> {
    let mut d = Decoder::<M>::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(c, &mut out)?;
    }
    Ok(out)
}

proptest! {
    #[test]
    fn agent_messages_survive_any_split_of_the_stream(
        msgs in proptest::collection::vec(agent_message(), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| m.encode().unwrap()).collect();
        let at = cut.index(stream.len() + 1);
        let (a, b) = stream.split_at(at);
        prop_assert_eq!(decode_all::<AgentMessage>(&[a, b]).unwrap(), msgs.clone());
        // And byte by byte.
        let singles: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(decode_all::<AgentMessage>(&singles).unwrap(), msgs);
    }

    #[test]
    fn host_messages_round_trip(msg in host_message()) {
        let frame = msg.encode().unwrap();
        prop_assert_eq!(decode_all::<HostMessage>(&[&frame]).unwrap(), vec![msg]);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_buffer_past_the_frame_cap(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
    ) {
        let mut d = Decoder::<AgentMessage>::new();
        let mut out = Vec::new();
        for c in &chunks {
            let failed = d.push(c, &mut out).is_err();
            prop_assert!(d.buffered() <= MAX_FRAME);
            if failed {
                // Failed stays failed, whatever follows.
                prop_assert!(d.push(&[0, 0, 0, 0], &mut out).is_err());
                break;
            }
        }
    }

    #[test]
    fn a_truncated_body_is_refused_not_misread(msg in agent_message(), cut in 1usize..8) {
        let frame = msg.encode().unwrap();
        let body = &frame[4..];
        let short = &body[..body.len().saturating_sub(cut)];
        prop_assert!(AgentMessage::decode_body(short).is_err());
    }
}

#[test]
fn an_oversized_header_is_refused_before_its_body_is_buffered() {
    let mut d = Decoder::<AgentMessage>::new();
    let mut out = Vec::new();
    let len = (MAX_BODY as u32 + 1).to_le_bytes();
    assert_eq!(
        d.push(&len, &mut out),
        Err(DecodeError::Oversized { len: MAX_BODY + 1 })
    );
    assert_eq!(d.buffered(), 0);
    assert!(d.push(&[1, 2, 3], &mut out).is_err());
}

#[test]
fn a_full_size_clipboard_fits_and_one_byte_more_does_not_encode() {
    let max = Clipboard::Png(png(&vec![7; MAX_PAYLOAD - PNG_SIGNATURE.len()]));
    let msg = AgentMessage::Clipboard {
        id: 9,
        content: Some(max),
    };
    let frame = msg.encode().unwrap();
    assert!(frame.len() <= MAX_FRAME);
    assert_eq!(decode_all::<AgentMessage>(&[&frame]).unwrap(), vec![msg]);
    let over = HostMessage::ClipboardSet {
        id: 1,
        content: Clipboard::Text("x".repeat(MAX_PAYLOAD + 1)),
    };
    assert_eq!(
        over.encode().unwrap_err(),
        EncodeError {
            field: "clipboard text",
            len: MAX_PAYLOAD + 1,
            max: MAX_PAYLOAD
        }
    );
}

#[test]
fn a_field_longer_than_its_cap_is_refused_even_inside_a_legal_frame() {
    // Failed's reason may hold MAX_TEXT bytes; announce one more.
    let mut body = vec![0x85, 1, 0, 0, 0];
    body.extend_from_slice(&(MAX_TEXT as u32 + 1).to_le_bytes());
    body.extend(std::iter::repeat_n(b'a', MAX_TEXT + 1));
    assert_eq!(
        AgentMessage::decode_body(&body),
        Err(DecodeError::FieldTooLong {
            field: "reason",
            len: MAX_TEXT + 1,
            max: MAX_TEXT
        })
    );
}

#[test]
fn malformed_bodies_name_what_is_wrong() {
    assert_eq!(AgentMessage::decode_body(&[]), Err(DecodeError::Empty));
    assert_eq!(
        AgentMessage::decode_body(&[0x7f]),
        Err(DecodeError::UnknownKind(0x7f))
    );
    // A host kind arriving from the agent is unknown there.
    assert_eq!(
        AgentMessage::decode_body(&[0x01, 1, 0]),
        Err(DecodeError::UnknownKind(0x01))
    );
    assert_eq!(
        AgentMessage::decode_body(&[0x82, 1, 0, 0, 0, 0]),
        Err(DecodeError::Trailing(1))
    );
    let text = |b: &[u8]| {
        let mut body = vec![0x83, 0, 0, 0, 0, 1];
        body.extend_from_slice(&(b.len() as u32).to_le_bytes());
        body.extend_from_slice(b);
        body
    };
    assert_eq!(
        AgentMessage::decode_body(&text(&[0xff, 0xfe])),
        Err(DecodeError::NotUtf8 {
            field: "clipboard text"
        })
    );
    let mut not_png = vec![0x83, 0, 0, 0, 0, 2, 3, 0, 0, 0];
    not_png.extend_from_slice(b"GIF");
    assert_eq!(
        AgentMessage::decode_body(&not_png),
        Err(DecodeError::NotPng)
    );
    assert_eq!(
        AgentMessage::decode_body(&[0x83, 0, 0, 0, 0, 9]),
        Err(DecodeError::UnknownContent(9))
    );
}

#[test]
fn a_zero_length_frame_is_refused() {
    assert_eq!(
        decode_all::<AgentMessage>(&[&[0, 0, 0, 0]]),
        Err(DecodeError::Empty)
    );
}

#[test]
fn restored_carries_at_most_max_entropy_bytes_each_way() {
    let full = HostMessage::Restored {
        entropy: vec![0xa5; MAX_ENTROPY],
    };
    let frame = full.encode().unwrap();
    assert_eq!(decode_all::<HostMessage>(&[&frame]).unwrap(), vec![full]);
    let over = HostMessage::Restored {
        entropy: vec![0; MAX_ENTROPY + 1],
    };
    assert_eq!(
        over.encode().unwrap_err(),
        EncodeError {
            field: "entropy",
            len: MAX_ENTROPY + 1,
            max: MAX_ENTROPY
        }
    );
    // A hostile host (or a broken one) announcing more is refused by the agent's decoder.
    let mut body = vec![0x05];
    body.extend_from_slice(&(MAX_ENTROPY as u32 + 1).to_le_bytes());
    body.extend(std::iter::repeat_n(0u8, MAX_ENTROPY + 1));
    assert_eq!(
        HostMessage::decode_body(&body),
        Err(DecodeError::FieldTooLong {
            field: "entropy",
            len: MAX_ENTROPY + 1,
            max: MAX_ENTROPY
        })
    );
}

fn offer_with_name(name: &str) -> Vec<u8> {
    // Encoded by hand: the encoder does not check names, the decoder must.
    let mut body = vec![0x86];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&(name.len() as u32).to_le_bytes());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&5u64.to_le_bytes());
    body
}

#[test]
fn an_offer_naming_a_path_or_control_characters_is_refused_by_the_decoder() {
    for bad in ["..", ".", "", "a/b", "/etc", "x\ny", "nul\0", "\u{7f}del"] {
        let got = AgentMessage::decode_body(&offer_with_name(bad));
        assert!(
            matches!(got, Err(DecodeError::BadName(_))),
            "{bad:?} gave {got:?}"
        );
    }
    assert!(AgentMessage::decode_body(&offer_with_name("report (1).pdf")).is_ok());
}

#[test]
fn an_offer_of_too_many_files_is_refused_before_allocating() {
    let mut body = vec![0x86];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.push(1);
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        AgentMessage::decode_body(&body),
        Err(DecodeError::TooManyFiles {
            count: u32::MAX as usize
        })
    );
    let files = vec![
        FileEntry {
            name: "f".into(),
            size: 1
        };
        MAX_FILES + 1
    ];
    assert!(AgentMessage::FileOffer {
        offer: 1,
        is_move: false,
        files
    }
    .encode()
    .is_err());
}

#[test]
fn a_file_read_longer_than_a_payload_is_refused() {
    let msg = HostMessage::FileRead {
        id: 1,
        offer: 2,
        index: 0,
        offset: 0,
        len: MAX_PAYLOAD as u32 + 1,
    };
    assert!(msg.encode().is_err());
    let mut body = vec![0x06];
    for v in [1u32, 2, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    assert!(matches!(
        HostMessage::decode_body(&body),
        Err(DecodeError::FieldTooLong { .. })
    ));
}

#[test]
fn a_full_size_file_write_and_a_full_incoming_list_fit_in_a_frame() {
    let write = HostMessage::FileWrite {
        id: u32::MAX,
        transfer: u32::MAX,
        index: u32::MAX,
        offset: u64::MAX,
        data: vec![1; MAX_PAYLOAD],
    };
    let frame = write.encode().unwrap();
    assert!(frame.len() <= MAX_FRAME);
    assert_eq!(decode_all::<HostMessage>(&[&frame]).unwrap(), vec![write]);
    let incoming = HostMessage::FileIncoming {
        id: 1,
        transfer: 2,
        source: "s".repeat(MAX_NAME),
        files: vec![
            FileEntry {
                name: "n".repeat(MAX_NAME),
                size: u64::MAX
            };
            MAX_FILES
        ],
    };
    let frame = incoming.encode().unwrap();
    assert!(frame.len() <= MAX_FRAME);
    assert_eq!(
        decode_all::<HostMessage>(&[&frame]).unwrap(),
        vec![incoming]
    );
}

#[test]
fn a_bool_field_other_than_0_or_1_is_refused() {
    let mut body = vec![0x09];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes());
    body.push(2);
    assert!(matches!(
        HostMessage::decode_body(&body),
        Err(DecodeError::NotBool { value: 2, .. })
    ));
}

#[test]
fn check_file_name_accepts_plain_names_and_refuses_the_rest() {
    assert!(check_file_name("notes.txt").is_ok());
    assert!(check_file_name("..hidden").is_ok());
    assert_eq!(check_file_name(""), Err(NameError::Empty));
    assert!(matches!(check_file_name(".."), Err(NameError::Dots(_))));
    assert!(matches!(check_file_name("a/b"), Err(NameError::Slash(_))));
    assert!(matches!(
        check_file_name("a\tb"),
        Err(NameError::Control(_))
    ));
    assert!(matches!(
        check_file_name(&"x".repeat(MAX_NAME + 1)),
        Err(NameError::TooLong(_))
    ));
}

#[test]
fn check_url_accepts_web_urls_and_refuses_other_schemes_and_unprintable_text() {
    for good in [
        "http://a",
        "https://example.org/a?b=c#d",
        "HTTPS://EXAMPLE.ORG/",
    ] {
        assert_eq!(check_url(good), Ok(()), "{good}");
    }
    assert_eq!(check_url("file:///etc/passwd"), Err(UrlError::Scheme));
    assert_eq!(check_url("javascript:alert(1)"), Err(UrlError::Scheme));
    assert_eq!(check_url("https://"), Err(UrlError::Scheme));
    assert_eq!(check_url("http://a b"), Err(UrlError::NotPrintable));
    assert_eq!(check_url("http://a\nb"), Err(UrlError::NotPrintable));
    assert_eq!(check_url("http://é.fr"), Err(UrlError::NotPrintable));
    let long = format!("https://{}", "a".repeat(MAX_URL));
    assert!(matches!(check_url(&long), Err(UrlError::TooLong(_))));
}

#[test]
fn an_open_request_with_a_bad_url_or_target_is_refused_by_the_decoder() {
    let body = |url: &str, target: Option<&str>| {
        // Encoded by hand: the decoder must check what an encoder would not.
        let mut b = vec![0x89];
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&(url.len() as u32).to_le_bytes());
        b.extend_from_slice(url.as_bytes());
        match target {
            None => b.push(0),
            Some(t) => {
                b.push(1);
                b.extend_from_slice(&(t.len() as u32).to_le_bytes());
                b.extend_from_slice(t.as_bytes());
            }
        }
        b
    };
    assert_eq!(
        AgentMessage::decode_body(&body("https://example.org/", Some("browser"))),
        Ok(AgentMessage::OpenUrl {
            request: 7,
            url: "https://example.org/".into(),
            target: Some("browser".into())
        })
    );
    assert!(matches!(
        AgentMessage::decode_body(&body("file:///etc/shadow", None)),
        Err(DecodeError::BadUrl(UrlError::Scheme))
    ));
    assert!(matches!(
        AgentMessage::decode_body(&body("https://a/\x1b[2J", None)),
        Err(DecodeError::BadUrl(UrlError::NotPrintable))
    ));
    assert!(matches!(
        AgentMessage::decode_body(&body("https://a/", Some("../vault"))),
        Err(DecodeError::BadName(_))
    ));
}
