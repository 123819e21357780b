//! The launch contract: everything a partition process is started with.
//!
//! The supervisor sends one [`LaunchConfig`] in the handshake
//! (the control protocol's `Command::Hello`) and then hands over, one per message, the open
//! files it names ([`FileRole`], in the order of [`LaunchConfig::file_roles`]). The
//! partition process reads no argv beyond its control fd and opens nothing itself: the
//! config is plain data, the files are fds. Bare `bulkhead-vmm run` builds the same
//! config from its flags and opens the files itself.

use std::fs::File;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::devices::framebuffer::{FramebufferError, FramebufferLayout};

/// The kernel command line partitions boot with unless told otherwise.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";
/// vCPUs a partition may have.
pub const MAX_VCPUS: u8 = 8;
/// Guest memory bounds, MiB. The upper bound keeps RAM below the 64 GiB the memory map
/// plans for; the lower one is what a micro-guest needs.
pub const MIN_MEMORY_MIB: u64 = 2;
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;
/// Disks a partition may have (`/dev/vda` …).
pub const MAX_DISKS: usize = 8;
/// Bytes of the name, the command line and a disk id.
pub const MAX_NAME: usize = 64;
pub const MAX_CMDLINE: usize = 2048;
/// virtio-blk ids are 20 bytes.
pub const MAX_DISK_ID: usize = 20;
/// Bytes of a snapshot marker (a serial line the guest prints).
pub const MAX_MARKER: usize = 256;

/// A partition, as its process is launched: plain values, no paths, no policy language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchConfig {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// `None`: no framebuffer (serial only).
    pub display: Option<DisplaySize>,
    pub boot: BootConfig,
    /// In order: `/dev/vda`, `/dev/vdb`, … Each one's file is handed over.
    pub disks: Vec<DiskConfig>,
    pub network: NetworkConfig,
    /// Where the guest agent talks to the host.
    pub agent: AgentChannel,
    /// When this text appears on the serial console: pause, write a snapshot to the
    /// handed-over [`FileRole::SnapshotStateOut`] and [`FileRole::SnapshotMemoryOut`]
    /// files, report `Event::Snapshot` and stay paused until the supervisor resumes it
    /// (it copies what must match the snapshot, a disk, meanwhile). Once per process.
    #[serde(default)]
    pub snapshot_on: Option<String>,
    /// The supervisor may ask for a snapshot at any time (`Command::Snapshot`, its two
    /// files handed over with it): the partition keeps what a snapshot needs (`/dev/kvm`)
    /// and runs under the seccomp profiles that can read its whole state.
    #[serde(default)]
    pub snapshot_on_request: bool,
}

/// What the boot vCPU runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootConfig {
    /// A Linux kernel (bzImage or uncompressed vmlinux, told apart by its first bytes)
    /// through the 64-bit boot protocol; the kernel (and the initrd, when
    /// `initrd` is true) are handed over as files.
    Linux { cmdline: String, initrd: bool },
    /// The built-in test card micro-guest (runs on any KVM, software ones included).
    TestCard,
    /// Continue from a snapshot: its state and memory files are handed over read-only
    /// ([`FileRole::SnapshotState`], [`FileRole::SnapshotMemory`]); memory is mapped
    /// `MAP_PRIVATE`, so the snapshot is never written. `verify` rehashes the memory
    /// file first (reads it all). The other fields of the config must be the snapshot's.
    Snapshot { verify: bool },
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The disk's role as the guest reads it (`/sys/block/vdX/serial`), e.g. `root`.
    pub id: String,
    pub read_only: bool,
}

/// The partition's network device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkConfig {
    /// No network device at all: nothing in ACPI, no interface in the guest.
    #[default]
    None,
    /// One virtio-net interface whose other end is a connected `AF_UNIX` stream socket
    /// speaking passt's protocol (a 4-byte big-endian length before each Ethernet frame),
    /// handed over as [`FileRole::Network`]. The peer is passt or the firewall relay in
    /// front of it; the partition never gets a host socket of its own. The MAC is
    /// [`partition_mac`] of the partition's name.
    Stream,
}

/// The partition's MAC address: derived from its name (FNV-1a), so it stays the same
/// across restarts; locally administered and unicast (first byte `x2`, `x6`, `xA`, `xE`).
pub fn partition_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The guest agent's byte channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentChannel {
    /// `/dev/hvc1`: the agent's own virtio console, relayed over the control socket.
    #[default]
    VirtioConsole,
}

/// A framebuffer size, `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplaySize {
    pub width: u32,
    pub height: u32,
}

impl DisplaySize {
    pub fn layout(self) -> Result<FramebufferLayout, FramebufferError> {
        FramebufferLayout::new(self.width, self.height)
    }
}

impl std::str::FromStr for DisplaySize {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::DisplaySize(s.to_string());
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let size = DisplaySize {
            width: w.trim().parse().map_err(|_| bad())?,
            height: h.trim().parse().map_err(|_| bad())?,
        };
        size.layout()
            .map_err(|e| ParseError::DisplayBounds(e.to_string()))?;
        Ok(size)
    }
}

impl std::fmt::Display for DisplaySize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// A display flag: `WIDTHxHEIGHT`, or `none` for no framebuffer.
pub fn parse_display(s: &str) -> Result<Option<DisplaySize>, ParseError> {
    if s.eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

/// A command-line value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("`{0}` is not a memory size; write e.g. 512M or 2G")]
    MemorySize(String),
    #[error("`{0}` is too large a memory size")]
    MemoryTooLarge(String),
    #[error("`{0}` is not a whole number of MiB")]
    MemoryNotMib(String),
    #[error("`{0}` is not a display size; write WIDTHxHEIGHT, e.g. 1024x768")]
    DisplaySize(String),
    #[error("{0}")]
    DisplayBounds(String),
}

/// A memory size in MiB: plain MiB, or with a K/M/G suffix (`512M`, `2G`, `1GiB`).
pub fn parse_memory_mib(s: &str) -> Result<u64, ParseError> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (num, kib_per_unit) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64),
        Some('M') => (&t[..t.len() - 1], 1024),
        Some('G') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1024),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| ParseError::MemorySize(s.to_string()))?;
    let kib = n
        .checked_mul(kib_per_unit)
        .ok_or_else(|| ParseError::MemoryTooLarge(s.to_string()))?;
    if kib % 1024 != 0 {
        return Err(ParseError::MemoryNotMib(s.to_string()));
    }
    Ok(kib / 1024)
}

/// Which handed-over file a control-protocol `Command::File` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileRole {
    /// `/dev/kvm`, opened by the supervisor.
    Kvm,
    Kernel,
    Initrd,
    /// Disk `n` of [`LaunchConfig::disks`].
    Disk(u8),
    /// The network stream socket of [`NetworkConfig::Stream`].
    Network,
    /// A snapshot's state file to restore from (read-only).
    SnapshotState,
    /// A snapshot's memory file to restore from (read-only, mapped copy-on-write).
    SnapshotMemory,
    /// An empty file for [`LaunchConfig::snapshot_on`] to write the state into.
    SnapshotStateOut,
    /// An empty file for [`LaunchConfig::snapshot_on`] to write guest RAM into.
    SnapshotMemoryOut,
}

/// A launch config that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error("partition name {0:?} is empty, longer than {MAX_NAME} bytes or not [a-zA-Z0-9_.-]")]
    Name(String),
    #[error("{0} vCPUs requested; a partition has 1..={MAX_VCPUS}")]
    Vcpus(u8),
    #[error(
        "{0} MiB of memory requested; a partition has {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB"
    )]
    Memory(u64),
    #[error("display {0}: {1}")]
    Display(DisplaySize, String),
    #[error("the test card needs a display")]
    TestCardWithoutDisplay,
    #[error("kernel command line of {0} bytes exceeds {MAX_CMDLINE}")]
    Cmdline(usize),
    #[error("{0} disks requested; a partition has at most {MAX_DISKS}")]
    Disks(usize),
    #[error("disk id {0:?} is longer than {MAX_DISK_ID} bytes or not printable ASCII")]
    DiskId(String),
    #[error("expected the {expected:?} file next, got {got:?}")]
    UnexpectedFile { expected: FileRole, got: FileRole },
    #[error("expected {expected} handed-over files, got {got}")]
    FileCount { expected: usize, got: usize },
    #[error("snapshot marker of {0} bytes: it must be 1..={MAX_MARKER} bytes")]
    Marker(usize),
}

impl LaunchConfig {
    /// Checks every bound; the partition process calls this on what it receives.
    pub fn validate(&self) -> Result<(), LaunchError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(LaunchError::Name(self.name.chars().take(80).collect()));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(LaunchError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(LaunchError::Memory(self.memory_mib));
        }
        if let Some(d) = self.display {
            d.layout()
                .map_err(|e| LaunchError::Display(d, e.to_string()))?;
        }
        match &self.boot {
            BootConfig::Linux { cmdline, .. } if cmdline.len() > MAX_CMDLINE => {
                return Err(LaunchError::Cmdline(cmdline.len()))
            }
            BootConfig::TestCard if self.display.is_none() => {
                return Err(LaunchError::TestCardWithoutDisplay)
            }
            _ => {}
        }
        if let Some(marker) = &self.snapshot_on {
            if marker.is_empty() || marker.len() > MAX_MARKER {
                return Err(LaunchError::Marker(marker.len()));
            }
        }
        if self.disks.len() > MAX_DISKS {
            return Err(LaunchError::Disks(self.disks.len()));
        }
        for disk in &self.disks {
            let ok = disk.id.len() <= MAX_DISK_ID && disk.id.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(LaunchError::DiskId(disk.id.chars().take(40).collect()));
            }
        }
        Ok(())
    }

    /// The files handed over after the config, in order.
    pub fn file_roles(&self) -> Vec<FileRole> {
        let mut roles = vec![FileRole::Kvm];
        match &self.boot {
            BootConfig::Linux { initrd, .. } => {
                roles.push(FileRole::Kernel);
                if *initrd {
                    roles.push(FileRole::Initrd);
                }
            }
            BootConfig::Snapshot { .. } => {
                roles.extend([FileRole::SnapshotState, FileRole::SnapshotMemory]);
            }
            BootConfig::TestCard => {}
        }
        // validate() bounds the count far below u8::MAX.
        roles.extend((0..self.disks.len().min(MAX_DISKS)).map(|i| FileRole::Disk(i as u8)));
        if self.network == NetworkConfig::Stream {
            roles.push(FileRole::Network);
        }
        if self.snapshot_on.is_some() {
            roles.extend([FileRole::SnapshotStateOut, FileRole::SnapshotMemoryOut]);
        }
        roles
    }
}

/// The open files a partition runs with, as [`LaunchConfig::file_roles`] lists them.
#[derive(Debug)]
pub struct LaunchFiles {
    pub kvm: OwnedFd,
    pub kernel: Option<File>,
    pub initrd: Option<File>,
    pub disks: Vec<File>,
    /// The stream socket of [`NetworkConfig::Stream`].
    pub network: Option<OwnedFd>,
    /// The snapshot of [`BootConfig::Snapshot`], read-only.
    pub snapshot_in: Option<SnapshotPair>,
    /// The empty files [`LaunchConfig::snapshot_on`] writes.
    pub snapshot_out: Option<SnapshotPair>,
}

/// A snapshot's two files (`state`, `memory`).
#[derive(Debug)]
pub struct SnapshotPair {
    pub state: File,
    pub memory: File,
}

impl LaunchFiles {
    /// In [`LaunchConfig::file_roles`] order.
    pub fn into_handover(self) -> Vec<(FileRole, OwnedFd)> {
        let mut out = vec![(FileRole::Kvm, self.kvm)];
        if let Some(p) = self.snapshot_in {
            out.push((FileRole::SnapshotState, p.state.into()));
            out.push((FileRole::SnapshotMemory, p.memory.into()));
        }
        out.extend(self.kernel.map(|f| (FileRole::Kernel, f.into())));
        out.extend(self.initrd.map(|f| (FileRole::Initrd, f.into())));
        out.extend(
            self.disks
                .into_iter()
                .enumerate()
                .map(|(i, f)| (FileRole::Disk(i as u8), f.into())),
        );
        out.extend(self.network.map(|fd| (FileRole::Network, fd)));
        if let Some(p) = self.snapshot_out {
            out.push((FileRole::SnapshotStateOut, p.state.into()));
            out.push((FileRole::SnapshotMemoryOut, p.memory.into()));
        }
        out
    }

    /// Puts handed-over fds back together, checking each arrived in its place.
    pub fn from_handover(
        config: &LaunchConfig,
        handed: Vec<(FileRole, OwnedFd)>,
    ) -> Result<LaunchFiles, LaunchError> {
        let roles = config.file_roles();
        if handed.len() != roles.len() {
            return Err(LaunchError::FileCount {
                expected: roles.len(),
                got: handed.len(),
            });
        }
        let (mut kvm, mut kernel, mut initrd, mut disks) = (None, None, None, Vec::new());
        let mut network = None;
        let (mut snap_state, mut snap_memory, mut out_state, mut out_memory) =
            (None, None, None, None);
        for (expected, (got, fd)) in roles.into_iter().zip(handed) {
            if expected != got {
                return Err(LaunchError::UnexpectedFile { expected, got });
            }
            match got {
                FileRole::Kvm => kvm = Some(fd),
                FileRole::Kernel => kernel = Some(File::from(fd)),
                FileRole::Initrd => initrd = Some(File::from(fd)),
                FileRole::Disk(_) => disks.push(File::from(fd)),
                FileRole::Network => network = Some(fd),
                FileRole::SnapshotState => snap_state = Some(File::from(fd)),
                FileRole::SnapshotMemory => snap_memory = Some(File::from(fd)),
                FileRole::SnapshotStateOut => out_state = Some(File::from(fd)),
                FileRole::SnapshotMemoryOut => out_memory = Some(File::from(fd)),
            }
        }
        let pair = |state: Option<File>, memory: Option<File>| match (state, memory) {
            (Some(state), Some(memory)) => Some(SnapshotPair { state, memory }),
            _ => None,
        };
        // file_roles() always starts with Kvm, and every role matched.
        let kvm = kvm.ok_or(LaunchError::FileCount {
            expected: 1,
            got: 0,
        })?;
        Ok(LaunchFiles {
            kvm,
            kernel,
            initrd,
            disks,
            network,
            snapshot_in: pair(snap_state, snap_memory),
            snapshot_out: pair(out_state, out_memory),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_mac_is_stable_locally_administered_and_unicast() {
        let a = partition_mac("browser");
        assert_eq!(a, partition_mac("browser"));
        assert_ne!(a, partition_mac("work"));
        assert_eq!(a[0] & 0x03, 0x02, "{a:02x?}");
    }

    #[test]
    fn a_stream_network_adds_one_network_file_after_the_disks() {
        let mut c = LaunchConfig {
            name: "p".into(),
            memory_mib: 64,
            vcpus: 1,
            display: None,
            boot: BootConfig::Linux {
                cmdline: String::new(),
                initrd: false,
            },
            disks: vec![DiskConfig {
                id: "root".into(),
                read_only: true,
            }],
            network: NetworkConfig::None,
            agent: AgentChannel::VirtioConsole,
            snapshot_on: None,
            snapshot_on_request: false,
        };
        assert!(!c.file_roles().contains(&FileRole::Network));
        c.network = NetworkConfig::Stream;
        assert_eq!(
            c.file_roles(),
            vec![
                FileRole::Kvm,
                FileRole::Kernel,
                FileRole::Disk(0),
                FileRole::Network
            ]
        );
    }
}
