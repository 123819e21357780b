//! A partition as data: one `[partition.<name>]` table of `partitions.toml`, with
//! defaults filled in. (The module `partitions_toml` reads the file; `fields` lists the
//! table's keys.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::diag::Location;
use crate::label::Label;
use crate::network::Network;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    App,
    Template,
    Disposable,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::App, Kind::Template, Kind::Disposable];
    pub fn name(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Template => "template",
            Kind::Disposable => "disposable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartPolicy {
    Never,
    OnCrash,
}

/// What a crashed partition restarts from (`restart_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartFrom {
    /// A cold boot.
    Boot,
    /// The snapshot taken when it last came up (its app ready), its private disk put back
    /// as it was then (the crashed disk is kept beside it).
    Snapshot,
}

impl RestartFrom {
    pub fn name(self) -> &'static str {
        match self {
            RestartFrom::Boot => "boot",
            RestartFrom::Snapshot => "snapshot",
        }
    }
}

impl RestartPolicy {
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnCrash => "on-crash",
        }
    }
}

/// Limits on what a partition may ask for; beyond them a value is impossible.
pub mod limits {
    pub const MEMORY_MIB: (i64, i64) = (64, 1 << 20);
    /// The least a partition's balloon may leave it (`memory_min_mib`); also at most
    /// its `memory_mib`, checked across the two fields.
    pub const MEMORY_MIN_MIB: (i64, i64) = (128, 1 << 20);
    pub const VCPUS: (i64, i64) = (1, 64);
    pub const CPU_WEIGHT: (i64, i64) = (1, 10_000);
    /// Percent of one host CPU (`150`: one and a half CPUs); 0 means no cap.
    pub const CPU_MAX_PERCENT: (i64, i64) = (0, 6_400);
    pub const IO_WEIGHT: (i64, i64) = (1, 10_000);
    /// MiB/s each way on each disk's host device; 0 means no cap.
    pub const IO_MAX_MIB_S: (i64, i64) = (0, 100_000);
    pub const WIDTH: (u32, u32) = (320, 7680);
    pub const HEIGHT: (u32, u32) = (200, 4320);
    /// The framebuffer lives in the 3–4 GiB MMIO hole beside the virtio windows.
    pub const FRAMEBUFFER_BYTES: u64 = 256 << 20;
    pub const NAME_LEN: usize = 31;
    pub const CMDLINE_LEN: usize = 1024;
    /// A private disk holds at least a home directory and at most 4 TiB.
    pub const PRIVATE_DISK_MIB: (i64, i64) = (64, 4 << 20);
    pub const APP_LEN: usize = 512;
}

/// One partition as written in `partitions.toml`, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub label: Label,
    pub kind: Kind,
    /// Guest RAM the partition boots with: the most it ever has.
    pub memory_mib: u32,
    /// The least memory balancing leaves it, MiB, as written; `None`: the default,
    /// [`default_memory_min_mib`]. Read it with [`Partition::memory_min_mib`].
    pub memory_min_written: Option<u32>,
    pub vcpus: u32,
    pub display: (u32, u32),
    /// Kernel + initramfs image name in the image cache.
    pub image: String,
    /// The template (a root image built by `bulkhead template build`) whose root the
    /// partition boots read-only; `None`: the busybox guest image alone.
    pub template: Option<String>,
    /// The command the partition starts in its template's session (`firefox-esr`);
    /// `None`: a terminal.
    pub app: Option<String>,
    /// Size of the private disk (the user's home) created on first start, MiB.
    pub private_disk_mib: u32,
    /// X keyboard layout (`us`, `de`, `fr,us`).
    pub keyboard: String,
    pub cmdline: String,
    pub tags: BTreeSet<String>,
    pub autostart: bool,
    pub restart: RestartPolicy,
    pub restart_from: RestartFrom,
    /// Share of host CPU time against other partitions (cgroup `cpu.weight`).
    pub cpu_weight: u32,
    /// Hard CPU cap in percent of one host CPU (cgroup `cpu.max`); 0: none.
    pub cpu_max_percent: u32,
    /// Share of disk time against other partitions (cgroup `io.weight`).
    pub io_weight: u32,
    /// Read and write bandwidth cap per disk device, MiB/s (cgroup `io.max`); 0: none.
    pub io_max_mib_s: u32,
    pub network: Network,
    /// May text copied in this partition be pasted elsewhere?
    pub clipboard_copy_out: bool,
    /// May text from elsewhere be pasted here?
    pub clipboard_paste_in: bool,
    pub file_send: bool,
    pub file_receive: bool,
    /// Where each field was written: field path (`memory_mib`, `clipboard.copy_out`) → (line, column).
    pub positions: BTreeMap<String, (usize, usize)>,
    /// The file and line of the `[partition.<name>]` header.
    pub file: PathBuf,
    pub line: usize,
}

impl Partition {
    /// A partition with every default, as `add_partition` writes it.
    pub fn with_defaults(name: &str, label: Label) -> Self {
        Partition {
            name: name.to_string(),
            label,
            kind: Kind::App,
            memory_mib: 1024,
            memory_min_written: None,
            vcpus: 1,
            display: (1280, 800),
            image: "default".into(),
            template: None,
            app: None,
            private_disk_mib: 2048,
            keyboard: "us".into(),
            cmdline: String::new(),
            tags: BTreeSet::new(),
            autostart: false,
            restart: RestartPolicy::Never,
            restart_from: RestartFrom::Boot,
            cpu_weight: 100,
            cpu_max_percent: 0,
            io_weight: 100,
            io_max_mib_s: 0,
            network: Network::default(),
            clipboard_copy_out: true,
            clipboard_paste_in: true,
            file_send: true,
            file_receive: true,
            positions: BTreeMap::new(),
            file: PathBuf::new(),
            line: 0,
        }
    }

    /// The least memory balancing leaves this partition, MiB: as written, else the
    /// default for its `memory_mib`.
    pub fn memory_min_mib(&self) -> u32 {
        self.memory_min_written
            .unwrap_or_else(|| default_memory_min_mib(self.memory_mib))
    }

    /// The (line, column) where `field` was written, else the table header.
    pub fn position_of(&self, field: &str) -> (usize, usize) {
        self.positions.get(field).copied().unwrap_or((self.line, 1))
    }

    pub fn location_of(&self, field: &str) -> Location {
        let (line, column) = self.position_of(field);
        Location::new(&self.file, line, column)
    }
}

/// `memory_min_mib` when it is not written: half of `memory_mib` (rounded down), but not
/// below 256 MiB, and never more than `memory_mib` itself.
pub fn default_memory_min_mib(memory_mib: u32) -> u32 {
    (memory_mib / 2).max(256).min(memory_mib)
}

/// Is `layout` a plausible X keyboard layout list (`us`, `de`, `fr,us`, `gb+extd`)?
pub fn valid_keyboard(layout: &str) -> bool {
    !layout.is_empty()
        && layout.len() <= 64
        && layout
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ",+_-".contains(c))
}

/// Is `name` usable as a partition name (and in rule files)?
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= limits::NAME_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_minimum_is_half_the_memory_but_not_below_256_mib_nor_above_the_memory() {
        assert_eq!(default_memory_min_mib(1024), 512);
        assert_eq!(default_memory_min_mib(4097), 2048);
        assert_eq!(default_memory_min_mib(400), 256);
        assert_eq!(default_memory_min_mib(512), 256);
        assert_eq!(default_memory_min_mib(200), 200);
        assert_eq!(default_memory_min_mib(64), 64);
        let mut p = Partition::with_defaults("a", Label::Red);
        assert_eq!(p.memory_min_mib(), 512);
        p.memory_min_written = Some(300);
        assert_eq!(p.memory_min_mib(), 300);
    }

    #[test]
    fn bad_partition_names_are_rejected() {
        assert!(valid_name("work-2"));
        assert!(!valid_name("Work"));
        assert!(!valid_name("@anyvm"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(32)));
    }
}
