//! `agent_decoder`: bytes a compromised guest agent writes on its console (and, for
//! symmetry, what a confused host could send the agent), through agent-proto's
//! stream [`Decoder`] in pieces of fuzzer-chosen sizes.
//!
//! Besides "never panics": the decoder never holds more than `MAX_FRAME` bytes, no single
//! allocation exceeds [`AGENT_ALLOC_CAP`], a failed decoder stays failed, the messages do
//! not depend on how the stream was cut, and every decoded message encodes back to a
//! frame that decodes to itself.

use bulkhead_agent_proto::{
    features, AgentMessage, Clipboard, Decoder, FileEntry, Frame, HostMessage, MAX_FRAME,
    PNG_SIGNATURE, PROTOCOL_VERSION,
};

use crate::largest_allocation;

/// Largest single allocation one input may cause: the decoder reserves at most one body,
/// a decoded message copies at most one payload, re-encoding writes one frame.
pub const AGENT_ALLOC_CAP: usize = 2 * MAX_FRAME;

/// Longest input used: two maximal frames and a little.
const MAX_AGENT_INPUT: usize = 2 * MAX_FRAME + 64;

/// Input: one mode byte, then the stream. Mode bit 0 picks the direction: clear, agent →
/// host ([`AgentMessage`], the hostile one); set, host → agent ([`HostMessage`]). Bits
/// 1..8 choose the piece size the stream is fed in (`1 + (mode >> 1) * 97` bytes, so
/// from single bytes to whole frames). Returns whether any message decoded.
pub fn agent_decoder(data: &[u8]) -> bool {
    let data = &data[..data.len().min(MAX_AGENT_INPUT)];
    let Some((&mode, stream)) = data.split_first() else {
        return false;
    };
    let piece = 1 + usize::from(mode >> 1) * 97;
    let mut decoded = 0;
    let largest = largest_allocation(|| {
        decoded = if mode & 1 == 0 {
            feed::<AgentMessage>(stream, piece)
        } else {
            feed::<HostMessage>(stream, piece)
        };
    });
    assert!(
        largest <= AGENT_ALLOC_CAP,
        "one allocation of {largest} bytes (cap {AGENT_ALLOC_CAP})"
    );
    decoded > 0
}

/// Decodes `stream` in `piece`-byte pushes and in one push; checks the invariants and
/// returns how many messages came out.
fn feed<M: Frame + PartialEq + std::fmt::Debug>(stream: &[u8], piece: usize) -> usize {
    let mut pieces = Decoder::<M>::new();
    let mut got = Vec::new();
    let mut error = None;
    for chunk in stream.chunks(piece) {
        match pieces.push(chunk, &mut got) {
            Ok(()) => assert!(
                pieces.buffered() <= MAX_FRAME,
                "decoder holds {} bytes",
                pieces.buffered()
            ),
            Err(e) => {
                // Failed stays failed, whatever comes next.
                assert_eq!(
                    pieces.push(b"\x01\x00\x00\x00\x02", &mut got),
                    Err(e.clone())
                );
                error = Some(e);
                break;
            }
        }
    }

    let mut whole = Decoder::<M>::new();
    let mut at_once = Vec::new();
    let whole_result = whole.push(stream, &mut at_once);
    assert_eq!(at_once, got, "messages depend on how the stream was cut");
    assert_eq!(
        whole_result.err(),
        error,
        "errors depend on how the stream was cut"
    );

    for message in &got {
        let frame = message
            .encode()
            .unwrap_or_else(|e| panic!("a decoded message does not encode: {e}"));
        let mut again = Vec::new();
        Decoder::<M>::new()
            .push(&frame, &mut again)
            .unwrap_or_else(|e| panic!("a re-encoded message does not decode: {e}"));
        assert_eq!(again.as_slice(), std::slice::from_ref(message));
    }
    got.len()
}

/// Well-formed traffic in both directions, plus a few broken frames, each behind a mode
/// byte (direction and piece size).
pub(crate) fn agent_seeds() -> Vec<Vec<u8>> {
    let png: Vec<u8> = PNG_SIGNATURE.iter().copied().chain([0u8; 24]).collect();
    let agent = [
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            features: features::CLIPBOARD,
        },
        AgentMessage::Pong { id: 7 },
        AgentMessage::Clipboard {
            id: 1,
            content: Some(Clipboard::Text("héllo, clipboard".into())),
        },
        AgentMessage::Clipboard {
            id: 2,
            content: Some(Clipboard::Png(png.clone())),
        },
        AgentMessage::Clipboard {
            id: 3,
            content: None,
        },
        AgentMessage::ClipboardSet { id: 4 },
        AgentMessage::Failed {
            id: 5,
            reason: "no X display".into(),
        },
        AgentMessage::FileOffer {
            offer: 1,
            is_move: true,
            files: vec![
                FileEntry {
                    name: "report.pdf".into(),
                    size: 70_000,
                },
                FileEntry {
                    name: "notes.txt".into(),
                    size: 0,
                },
            ],
        },
        AgentMessage::FileData {
            id: 6,
            data: b"file bytes".to_vec(),
        },
        AgentMessage::Done { id: 8 },
        AgentMessage::OpenUrl {
            request: 2,
            url: "https://example.org/a?b=c".into(),
            target: None,
        },
        AgentMessage::OpenUrl {
            request: 3,
            url: "http://192.0.2.1/".into(),
            target: Some("browser".into()),
        },
    ];
    let host = [
        HostMessage::Hello {
            version: PROTOCOL_VERSION,
        },
        HostMessage::Ping { id: 9 },
        HostMessage::ClipboardGet { id: 10 },
        HostMessage::ClipboardSet {
            id: 11,
            content: Clipboard::Text("pasted".into()),
        },
        HostMessage::ClipboardSet {
            id: 12,
            content: Clipboard::Png(png),
        },
        HostMessage::Restored {
            entropy: (0..64).collect(),
        },
        HostMessage::FileRead {
            id: 13,
            offer: 1,
            index: 0,
            offset: 65_536,
            len: 4096,
        },
        HostMessage::FileIncoming {
            id: 14,
            transfer: 3,
            source: "work".into(),
            files: vec![FileEntry {
                name: "report.pdf".into(),
                size: 70_000,
            }],
        },
        HostMessage::FileWrite {
            id: 15,
            transfer: 3,
            index: 0,
            offset: 0,
            data: b"file bytes".to_vec(),
        },
        HostMessage::FileCommit {
            id: 16,
            transfer: 3,
            abort: false,
        },
        HostMessage::FileOutcome {
            offer: 1,
            error: Some("refused by policy".into()),
        },
        HostMessage::OpenUrl {
            id: 17,
            url: "https://example.org/".into(),
        },
        HostMessage::OpenOutcome {
            request: 2,
            error: None,
        },
    ];
    let mut seeds = Vec::new();
    let mut all_agent = Vec::new();
    for (i, m) in agent.iter().enumerate() {
        let frame = m.encode().expect("seed encodes");
        all_agent.extend_from_slice(&frame);
        seeds.push([vec![(i as u8) << 1], frame].concat());
    }
    seeds.push([vec![0], all_agent.clone()].concat());
    seeds.push([vec![0xfe], all_agent].concat());
    let mut all_host = Vec::new();
    for (i, m) in host.iter().enumerate() {
        let frame = m.encode().expect("seed encodes");
        all_host.extend_from_slice(&frame);
        seeds.push([vec![((i as u8) << 1) | 1], frame].concat());
    }
    seeds.push([vec![1], all_host].concat());
    // Broken: an oversized header, an empty frame, an unknown kind, a length past the end.
    seeds.push(vec![0, 0xff, 0xff, 0xff, 0x7f]);
    seeds.push(vec![0, 0, 0, 0, 0]);
    seeds.push(vec![0, 1, 0, 0, 0, 0x7f]);
    seeds.push(vec![0, 9, 0, 0, 0, 0x85, 1, 0, 0, 0, 0xff, 0xff, 0, 0]);
    seeds
}
