//! What travels over the control socket: [`Command`]s from the supervisor to a partition
//! process and [`Event`]s back.
//!
//! Every variable-length field has a fixed cap so one message always fits in
//! [`super::MAX_MESSAGE`] bytes; senders split long data with [`Event::serial_chunks`],
//! [`Event::console_chunks`], [`Event::damage_chunks`], [`Command::input_chunks`] and
//! [`Command::console_chunks`], and receivers re-check the caps with [`Event::validate`] /
//! [`Command::validate`] because the other side is not trusted to have done so.

use serde::{Deserialize, Serialize};

use crate::devices::framebuffer::{DamageRect, FramebufferLayout};
/// Input travels as the shared evdev vocabulary, unchanged.
pub use crate::evdev::{InputDevice, InputEvent};
use crate::launch::{FileRole, LaunchConfig};
/// The parts of the sandbox a host can lack, as the sandbox module names them.
pub use crate::sandbox::SandboxGap;

/// Bumped on any incompatible change to [`Command`] or [`Event`].
/// 2: [`Command::ConsoleWrite`] and [`Event::Console`].
/// 3: the supervisor speaks first; [`Command::Hello`] carries the [`LaunchConfig`] and
///    [`Command::File`] hands over its files; [`Command::Input`] carries the shared
///    [`InputEvent`], which names its `device`.
/// 4: [`Event::Sandbox`], sent before `State(Ready)`.
/// 5: [`Command::AgentWrite`] and [`Event::Agent`], the guest agent's own console.
/// 6: [`Event::Snapshot`]; the launch may boot from a snapshot or snapshot at a marker
///    (`BootConfig::Snapshot`, `LaunchConfig::snapshot_on`, four more file roles).
/// 7: [`Command::SetBalloon`]; [`VmStats::balloon_mib`] reports the balloon's size.
/// 8: [`Command::Snapshot`] (on request, `LaunchConfig::snapshot_on_request`).
pub const PROTOCOL_VERSION: u32 = 8;

/// Serial bytes per [`Event::Serial`]. JSON spends up to 4 bytes per byte, so
/// 4096 bytes stay well inside the 64 KiB frame.
pub const MAX_SERIAL_CHUNK: usize = 4096;
/// Console bytes per [`Command::ConsoleWrite`] and [`Event::Console`] (and the agent's
/// [`Command::AgentWrite`] and [`Event::Agent`]), for the same reason as
/// [`MAX_SERIAL_CHUNK`].
pub const MAX_CONSOLE_CHUNK: usize = 4096;
/// Rectangles per [`Event::Damage`].
pub const MAX_DAMAGE_RECTS: usize = 512;
/// Input events per [`Command::Input`].
pub const MAX_INPUT_EVENTS: usize = 256;
/// Bytes of any string field (names, reasons, service arguments).
pub const MAX_TEXT: usize = 1024;
/// Gaps per [`SandboxStatus::Reduced`] (more than there are kinds of gap).
pub const MAX_SANDBOX_GAPS: usize = 8;

/// Supervisor → partition process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// First message on a new connection: the protocol version and what to run. The
    /// files it names follow, one [`Command::File`] each, in
    /// [`LaunchConfig::file_roles`] order.
    Hello {
        version: u32,
        launch: Box<LaunchConfig>,
    },
    /// Carries exactly one fd (SCM_RIGHTS): the launch file in `role`.
    File {
        role: FileRole,
    },
    /// Start the vCPUs. Sent once, after the partition's `Hello` (and `Framebuffer`, if
    /// any) arrived, so the supervisor has mapped the framebuffer before the guest draws.
    Start,
    Pause,
    Resume,
    /// Ask the guest to power off (ACPI power button); the supervisor kills the process
    /// if it has not exited within its timeout.
    Stop,
    Input {
        events: Vec<InputEvent>,
    },
    /// Make the framebuffer memfd consistent (flush pending damage) and answer
    /// [`Event::ScreenshotReady`]; the pixels themselves are read from shared memory.
    Screenshot {
        id: u64,
    },
    /// Answer with [`Event::Stats`].
    Stats {
        id: u64,
    },
    /// The supervisor's decision on an [`Event::ServiceRequest`].
    ServiceReply {
        id: u64,
        allowed: bool,
    },
    /// Bytes for the guest's first virtio-console (`/dev/hvc0`, a plain byte stream).
    ConsoleWrite {
        bytes: Vec<u8>,
    },
    /// Bytes for the guest agent's virtio-console (`/dev/hvc1`); the supervisor frames
    /// them (crate `bulkhead-agent-proto`), the partition only carries them.
    AgentWrite {
        bytes: Vec<u8>,
    },
    /// How much of the guest's RAM the memory balloon should hold, MiB (0: none, the
    /// guest has all of it). At most the guest's RAM: a bigger target is ignored (and
    /// logged, rate-limited) by the partition, see [`balloon_target_pages`]. The guest
    /// driver moves towards it at its own pace; [`VmStats::balloon_mib`] says where it is.
    SetBalloon {
        target_mib: u32,
    },
    /// Carries exactly two fds (SCM_RIGHTS), empty files opened for writing: the
    /// snapshot's state, then its memory. Pause, write the snapshot into them, answer
    /// [`Event::Snapshot`] and, once written, stay paused until [`Command::Resume`] (the
    /// supervisor copies the writable disks meanwhile). Only for a launch with
    /// `snapshot_on_request`; any other partition treats it as a protocol violation.
    Snapshot,
}

/// A [`Command::SetBalloon`] target as the balloon's 4 KiB pages, or why it is refused:
/// the balloon can hold at most the guest's RAM (`guest_mib`).
pub fn balloon_target_pages(target_mib: u32, guest_mib: u64) -> Result<u32, BalloonTargetError> {
    if u64::from(target_mib) > guest_mib {
        return Err(BalloonTargetError {
            target_mib,
            guest_mib,
        });
    }
    target_mib
        .checked_mul(PAGES_PER_MIB)
        .ok_or(BalloonTargetError {
            target_mib,
            guest_mib,
        })
}

/// 4 KiB balloon pages in one MiB.
pub const PAGES_PER_MIB: u32 = 256;

/// A balloon target larger than the guest's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("balloon target {target_mib} MiB is more than the guest's {guest_mib} MiB of RAM")]
pub struct BalloonTargetError {
    pub target_mib: u32,
    pub guest_mib: u64,
}

/// What the virtual machine inside a partition process is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Process is up, VM built, vCPUs not started yet (waiting for [`Command::Start`]).
    Ready,
    Running,
    Paused,
    /// A stop was requested; the guest is shutting down.
    Stopping,
    /// The guest powered off; the process is about to exit 0.
    PoweredOff,
    /// The guest faulted (triple fault, internal KVM error); the process is about to
    /// exit non-zero.
    GuestFault {
        reason: String,
    },
}

/// What came of the snapshot a launch asked for at its marker ([`Event::Snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotOutcome {
    /// Both handed-over files are complete; the partition stays paused until `Resume`.
    Written {
        state_bytes: u64,
        memory_bytes: u64,
        memory_pages_written: u64,
    },
    /// Nothing usable was written; the partition runs on.
    Failed { reason: String },
}

/// Counters reported by [`Event::Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// Peak resident memory of the partition process (its high-water mark), KiB: the
    /// sandbox keeps the process out of /proc, so the current figure is the supervisor's
    /// to read.
    pub rss_kib: u64,
    pub uptime_ms: u64,
    pub vcpu_exits: u64,
    pub damage_events: u64,
    /// MiB the guest's balloon driver says it holds (`actual`, rounded down); `None`
    /// when the partition has no balloon.
    #[serde(default)]
    pub balloon_mib: Option<u32>,
}

/// How a partition process is confined: [`Event::Sandbox`], sent once, after confining
/// itself and before any guest code runs (so before it could be compromised).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxStatus {
    /// Every sandbox step applied.
    Full,
    /// Running without what this host lacks.
    Reduced { missing: Vec<SandboxGap> },
    /// A step the host supports failed: the process exits without running the guest.
    Failed { reason: String },
}

/// Partition process → supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// First message on a new connection.
    Hello {
        version: u32,
        /// The partition name the process was started for.
        name: String,
        pid: u32,
    },
    /// Carries exactly one fd (SCM_RIGHTS): the framebuffer memfd, sealed against
    /// shrinking, at least `layout.bytes()` long.
    Framebuffer {
        layout: FramebufferLayout,
    },
    State(VmState),
    /// How the process is confined; exactly once, before `State(Ready)`.
    Sandbox(SandboxStatus),
    /// Pixels changed inside these rectangles since the previous `Damage`.
    Damage {
        rects: Vec<DamageRect>,
    },
    /// Bytes the guest wrote to its serial console.
    Serial {
        bytes: Vec<u8>,
    },
    /// Bytes the guest wrote to its first virtio-console (`/dev/hvc0`).
    Console {
        bytes: Vec<u8>,
    },
    /// Bytes the guest wrote to the agent's virtio-console (`/dev/hvc1`): hostile,
    /// decoded by the supervisor.
    Agent {
        bytes: Vec<u8>,
    },
    /// The guest agent asks for an inter-partition service (clipboard, file copy, …).
    ServiceRequest {
        id: u64,
        service: String,
        argument: String,
        target: String,
    },
    ScreenshotReady {
        id: u64,
    },
    Stats {
        id: u64,
        stats: VmStats,
    },
    /// The launch's `snapshot_on` marker appeared and the snapshot was taken (or not).
    Snapshot(SnapshotOutcome),
}

/// A message failed its size caps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{field} holds {len} items, more than the limit {max}")]
    TooMany {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        return Err(LimitError::TooMany { field, len, max });
    }
    Ok(())
}

/// A message type that may carry file descriptors.
pub trait Message: Serialize + serde::de::DeserializeOwned {
    /// How many fds travel with this message (SCM_RIGHTS).
    fn fd_count(&self) -> usize;
}

impl Message for Command {
    fn fd_count(&self) -> usize {
        match self {
            Command::File { .. } => 1,
            Command::Snapshot => 2,
            _ => 0,
        }
    }
}

impl Message for Event {
    fn fd_count(&self) -> usize {
        match self {
            Event::Framebuffer { .. } => 1,
            _ => 0,
        }
    }
}

impl Command {
    /// Checks every cap; the partition process calls this on what it receives.
    pub fn validate(&self) -> Result<(), LimitError> {
        match self {
            Command::Input { events } => check_len("input events", events.len(), MAX_INPUT_EVENTS),
            Command::ConsoleWrite { bytes } => {
                check_len("console bytes", bytes.len(), MAX_CONSOLE_CHUNK)
            }
            Command::AgentWrite { bytes } => {
                check_len("agent bytes", bytes.len(), MAX_CONSOLE_CHUNK)
            }
            _ => Ok(()),
        }
    }

    /// Splits input events into [`Command::Input`] messages within the cap.
    pub fn input_chunks(events: &[InputEvent]) -> impl Iterator<Item = Command> + '_ {
        events
            .chunks(MAX_INPUT_EVENTS)
            .map(|c| Command::Input { events: c.to_vec() })
    }

    /// Splits bytes for the guest console into [`Command::ConsoleWrite`] messages within
    /// the cap.
    pub fn console_chunks(bytes: &[u8]) -> impl Iterator<Item = Command> + '_ {
        bytes
            .chunks(MAX_CONSOLE_CHUNK)
            .map(|c| Command::ConsoleWrite { bytes: c.to_vec() })
    }

    /// Splits bytes for the guest agent into [`Command::AgentWrite`] messages within the
    /// cap.
    pub fn agent_chunks(bytes: &[u8]) -> impl Iterator<Item = Command> + '_ {
        bytes
            .chunks(MAX_CONSOLE_CHUNK)
            .map(|c| Command::AgentWrite { bytes: c.to_vec() })
    }
}

impl Event {
    /// Checks every cap; the supervisor calls this on what it receives.
    pub fn validate(&self) -> Result<(), LimitError> {
        match self {
            Event::Hello { name, .. } => check_len("partition name", name.len(), MAX_TEXT),
            Event::State(VmState::GuestFault { reason }) => {
                check_len("fault reason", reason.len(), MAX_TEXT)
            }
            Event::Sandbox(SandboxStatus::Reduced { missing }) => {
                check_len("sandbox gaps", missing.len(), MAX_SANDBOX_GAPS)
            }
            Event::Sandbox(SandboxStatus::Failed { reason }) => {
                check_len("sandbox failure reason", reason.len(), MAX_TEXT)
            }
            Event::Snapshot(SnapshotOutcome::Failed { reason }) => {
                check_len("snapshot failure reason", reason.len(), MAX_TEXT)
            }
            Event::Damage { rects } => check_len("damage rects", rects.len(), MAX_DAMAGE_RECTS),
            Event::Serial { bytes } => check_len("serial bytes", bytes.len(), MAX_SERIAL_CHUNK),
            Event::Console { bytes } => check_len("console bytes", bytes.len(), MAX_CONSOLE_CHUNK),
            Event::Agent { bytes } => check_len("agent bytes", bytes.len(), MAX_CONSOLE_CHUNK),
            Event::ServiceRequest {
                service,
                argument,
                target,
                ..
            } => {
                check_len("service name", service.len(), MAX_TEXT)?;
                check_len("service argument", argument.len(), MAX_TEXT)?;
                check_len("service target", target.len(), MAX_TEXT)
            }
            _ => Ok(()),
        }
    }

    /// Splits serial output into [`Event::Serial`] messages within the cap.
    pub fn serial_chunks(bytes: &[u8]) -> impl Iterator<Item = Event> + '_ {
        bytes
            .chunks(MAX_SERIAL_CHUNK)
            .map(|c| Event::Serial { bytes: c.to_vec() })
    }

    /// Splits guest console output into [`Event::Console`] messages within the cap.
    pub fn console_chunks(bytes: &[u8]) -> impl Iterator<Item = Event> + '_ {
        bytes
            .chunks(MAX_CONSOLE_CHUNK)
            .map(|c| Event::Console { bytes: c.to_vec() })
    }

    /// Splits guest agent output into [`Event::Agent`] messages within the cap.
    pub fn agent_chunks(bytes: &[u8]) -> impl Iterator<Item = Event> + '_ {
        bytes
            .chunks(MAX_CONSOLE_CHUNK)
            .map(|c| Event::Agent { bytes: c.to_vec() })
    }

    /// Splits damage into [`Event::Damage`] messages within the cap.
    pub fn damage_chunks(rects: &[DamageRect]) -> impl Iterator<Item = Event> + '_ {
        rects
            .chunks(MAX_DAMAGE_RECTS)
            .map(|c| Event::Damage { rects: c.to_vec() })
    }
}
