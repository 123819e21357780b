//! `bulkhead-netrelay`: the firewall between a partition's virtio-net stream (the VMM's
//! socket) and passt. It runs as its own process with nothing but those two sockets
//! (and stderr) and its own seccomp profile, so neither a compromised guest nor a
//! compromised partition process can widen what the partition's rules allow.
//!
//! - [`control`]: the supervisor's control channel (rule updates in, denials and
//!   counters out) and the client the supervisor uses.
//! - [`dns`]: learns host names from passt's resolver's answers, for host-name rules.
//! - [`rules`]: the rule set (isolation-policy's `FirewallRule`s plus DNS) and the bare
//!   `--allow PROTO:DEST:PORTS` syntax.
//! - [`packet`]: classifies each frame from the guest, builds RSTs and ICMP refusals.
//! - [`relay`]: the two-socket loop (passt's stream protocol on both sides).
//! - [`sandbox`]: closing every other fd and the seccomp profile.

pub mod control;
pub mod dns;
pub mod packet;
pub mod relay;
pub mod rules;
pub mod sandbox;
pub mod stream;
