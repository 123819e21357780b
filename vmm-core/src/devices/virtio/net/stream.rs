//! passt's stream protocol (also QEMU's `-netdev stream` and libkrun's `unixstream`): each
//! Ethernet frame is preceded by its length as a 4-byte big-endian integer.
//!
//! The peer (passt, or the firewall relay in front of it) is not trusted: a length below
//! an Ethernet header or above [`MAX_FRAME_LEN`] is a broken stream, and the backend is
//! cut ([`FrameReader::push`] returns [`StreamError`]) rather than resynchronised.

use std::collections::VecDeque;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Destination, source, EtherType.
pub const ETH_HLEN: usize = 14;
/// The largest frame either side may send: passt's largest MTU (65520) plus the Ethernet
/// header, rounded up to 64 KiB.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// The peer broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the stream announced a frame of {len} bytes; frames are {ETH_HLEN}..={MAX_FRAME_LEN} bytes")]
    BadLength { len: u32 },
}

/// The length prefix and `frame`, as they go on the wire. `frame.len()` must be at most
/// [`MAX_FRAME_LEN`] (the device checks that before).
pub fn encode(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN_BYTES + frame.len());
    // MAX_FRAME_LEN fits in u32; saturating keeps a caller's mistake visible to the peer
    // as a bad length rather than a silently wrapped one.
    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    out
}

/// Splits a byte stream into frames; keeps at most one partial frame.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// The bytes of the frame (or length prefix) being assembled.
    partial: Vec<u8>,
    /// Length of the frame being assembled, once its prefix is complete.
    want: Option<usize>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes`, appending every frame they complete to `out`.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        out: &mut VecDeque<Vec<u8>>,
    ) -> Result<(), StreamError> {
        while !bytes.is_empty() {
            match self.want {
                None => {
                    let need = LEN_BYTES - self.partial.len();
                    let take = need.min(bytes.len());
                    self.partial.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.partial.len() == LEN_BYTES {
                        let mut be = [0u8; LEN_BYTES];
                        be.copy_from_slice(&self.partial);
                        let len = u32::from_be_bytes(be);
                        let ok = usize::try_from(len)
                            .ok()
                            .filter(|l| (ETH_HLEN..=MAX_FRAME_LEN).contains(l));
                        let Some(len) = ok else {
                            return Err(StreamError::BadLength { len });
                        };
                        self.partial.clear();
                        self.want = Some(len);
                    }
                }
                Some(len) => {
                    let take = (len - self.partial.len()).min(bytes.len());
                    self.partial.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.partial.len() == len {
                        out.push_back(std::mem::take(&mut self.partial));
                        self.want = None;
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes held for a frame not yet complete.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn frames_split_at_any_byte_come_out_whole_and_in_order() {
        let a = frame(60, 1);
        let b = frame(1514, 2);
        let mut wire = encode(&a);
        wire.extend(encode(&b));
        for cut in 0..wire.len() {
            let mut r = FrameReader::new();
            let mut out = VecDeque::new();
            r.push(&wire[..cut], &mut out).unwrap();
            r.push(&wire[cut..], &mut out).unwrap();
            assert_eq!(
                out,
                VecDeque::from(vec![a.clone(), b.clone()]),
                "cut at {cut}"
            );
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn a_zero_length_is_refused() {
        let mut out = VecDeque::new();
        let err = FrameReader::new()
            .push(&[0, 0, 0, 0], &mut out)
            .unwrap_err();
        assert_eq!(err, StreamError::BadLength { len: 0 });
    }

    #[test]
    fn a_length_shorter_than_an_ethernet_header_is_refused() {
        let mut out = VecDeque::new();
        let err = FrameReader::new()
            .push(&13u32.to_be_bytes(), &mut out)
            .unwrap_err();
        assert_eq!(err, StreamError::BadLength { len: 13 });
    }

    #[test]
    fn a_length_over_the_bound_is_refused_before_any_payload_is_buffered() {
        let mut out = VecDeque::new();
        let mut r = FrameReader::new();
        let len = (MAX_FRAME_LEN + 1) as u32;
        assert_eq!(
            r.push(&len.to_be_bytes(), &mut out).unwrap_err(),
            StreamError::BadLength { len }
        );
        let mut r = FrameReader::new();
        assert!(r.push(&u32::MAX.to_be_bytes(), &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn the_largest_frame_passes() {
        let f = frame(MAX_FRAME_LEN, 7);
        let mut out = VecDeque::new();
        FrameReader::new().push(&encode(&f), &mut out).unwrap();
        assert_eq!(out.pop_front().unwrap(), f);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_yield_an_out_of_bounds_frame(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)
        ) {
            let mut r = FrameReader::new();
            let mut out = VecDeque::new();
            for c in &chunks {
                if r.push(c, &mut out).is_err() {
                    break;
                }
            }
            for f in &out {
                prop_assert!((ETH_HLEN..=MAX_FRAME_LEN).contains(&f.len()));
            }
            prop_assert!(r.pending() <= MAX_FRAME_LEN);
        }
    }
}
