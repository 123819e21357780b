//! passt's stream protocol, shared with the VMM's virtio-net device: a 4-byte
//! big-endian length before each Ethernet frame, bounded on read.

pub use vmm_core::devices::virtio::net::stream::{
    encode, FrameReader, StreamError, ETH_HLEN, LEN_BYTES, MAX_FRAME_LEN,
};
