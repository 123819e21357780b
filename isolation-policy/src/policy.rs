//! A checked policy: partitions plus ordered rules. (The module `load` builds one from a
//! directory; `decide` answers requests with it.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::network::NetworkMode;
use crate::partition::{Kind, Partition, RestartFrom, RestartPolicy};
use crate::rules::Rule;

/// A partition resolved to plain values, for the supervisor to turn into a VMM config.
/// It carries nothing of the rule language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpec {
    pub name: String,
    pub label: String,
    /// Border colour `[r, g, b]`.
    pub label_rgb: [u8; 3],
    pub kind: Kind,
    pub memory_mib: u32,
    /// The least memory balancing leaves the partition, MiB (at most `memory_mib`).
    /// A spec written before the field existed reads 0: see
    /// [`PartitionSpec::memory_floor_mib`].
    #[serde(default)]
    pub memory_min_mib: u32,
    pub vcpus: u32,
    pub display_width: u32,
    pub display_height: u32,
    /// Image name in the image cache: the kernel and initramfs to boot.
    pub image: String,
    /// The template whose root image the partition boots read-only (`debian-12`).
    pub template: Option<String>,
    /// The command its session starts; `None`: a terminal.
    pub app: Option<String>,
    /// Size of the private disk created on first start, MiB.
    pub private_disk_mib: u32,
    /// X keyboard layout.
    pub keyboard: String,
    /// Extra kernel command line, appended to the VMM's own.
    pub cmdline_extra: String,
    pub network: NetworkMode,
    /// With `network = Nat`: may the partition use the NAT's DNS resolver?
    #[serde(default)]
    pub dns: bool,
    /// With `network = Nat`: its firewall rules (first match wins, no match denies).
    /// Not serialised: the rules are the policy file's, read from it.
    #[serde(skip)]
    pub firewall: Vec<crate::network::FirewallRule>,
    /// The file the partition (and its rules) is written in.
    #[serde(skip)]
    pub file: std::path::PathBuf,
    pub autostart: bool,
    pub restart: RestartPolicy,
    #[serde(default = "boot")]
    pub restart_from: RestartFrom,
    pub cpu_weight: u32,
    /// Percent of one host CPU; 0: no cap.
    pub cpu_max_percent: u32,
    pub io_weight: u32,
    /// MiB/s per disk device; 0: no cap.
    pub io_max_mib_s: u32,
}

fn boot() -> RestartFrom {
    RestartFrom::Boot
}

impl PartitionSpec {
    /// The least memory balancing leaves the partition, MiB: `memory_min_mib`, or its
    /// default when the spec has none (0), never above `memory_mib`.
    pub fn memory_floor_mib(&self) -> u32 {
        match self.memory_min_mib {
            0 => crate::partition::default_memory_min_mib(self.memory_mib),
            min => min.min(self.memory_mib),
        }
    }
}

/// The secure clipboard's buffer holds at most this much by default, and never more: the
/// guest agent protocol carries at most 256 KiB of content in one message.
pub const CLIPBOARD_MAX_BYTES_LIMIT: usize = 256 * 1024;

/// App-wide settings from `partitions.toml`'s top-level tables (`[clipboard]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppSettings {
    /// `[clipboard] max_bytes`: the largest clipboard the host buffer takes (1..=256 KiB).
    pub clipboard_max_bytes: usize,
    /// `[file_transfer] max_mib`: the most one `bulkhead-copy`/`-move` carries.
    pub file_transfer_max_bytes: u64,
}

/// `[file_transfer] max_mib` limits: 1 MiB to 1 TiB, 4 GiB by default.
pub const FILE_TRANSFER_MAX_MIB_LIMIT: u64 = 1 << 20;
pub const FILE_TRANSFER_DEFAULT_MIB: u64 = 4096;

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            clipboard_max_bytes: CLIPBOARD_MAX_BYTES_LIMIT,
            file_transfer_max_bytes: FILE_TRANSFER_DEFAULT_MIB << 20,
        }
    }
}

/// A checked policy: every rule names known partitions and tags.
#[derive(Debug, Clone)]
pub struct Policy {
    dir: PathBuf,
    partitions: Vec<Partition>,
    rules: Vec<Rule>,
    settings: AppSettings,
}

impl Policy {
    /// A policy from parts that have been checked together (by `Sources::check`).
    pub(crate) fn new(
        dir: PathBuf,
        partitions: Vec<Partition>,
        rules: Vec<Rule>,
        settings: AppSettings,
    ) -> Self {
        Policy {
            dir,
            partitions,
            rules,
            settings,
        }
    }

    /// The app-wide settings (`[clipboard]`).
    pub fn settings(&self) -> AppSettings {
        self.settings
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    pub fn partition(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The plain resolved configuration of one partition.
    pub fn spec(&self, name: &str) -> Option<PartitionSpec> {
        let p = self.partition(name)?;
        Some(PartitionSpec {
            name: p.name.clone(),
            label: p.label.name().to_string(),
            label_rgb: p.label.rgb(),
            kind: p.kind,
            memory_mib: p.memory_mib,
            memory_min_mib: p.memory_min_mib(),
            vcpus: p.vcpus,
            display_width: p.display.0,
            display_height: p.display.1,
            image: p.image.clone(),
            template: p.template.clone(),
            app: p.app.clone(),
            private_disk_mib: p.private_disk_mib,
            keyboard: p.keyboard.clone(),
            cmdline_extra: p.cmdline.clone(),
            network: p.network.mode,
            dns: p.network.dns,
            firewall: p.network.rules.clone(),
            file: p.file.clone(),
            autostart: p.autostart,
            restart: p.restart,
            restart_from: p.restart_from,
            cpu_weight: p.cpu_weight,
            cpu_max_percent: p.cpu_max_percent,
            io_weight: p.io_weight,
            io_max_mib_s: p.io_max_mib_s,
        })
    }

    /// Every partition resolved, in file order.
    pub fn specs(&self) -> Vec<PartitionSpec> {
        self.partitions
            .iter()
            .filter_map(|p| self.spec(&p.name))
            .collect()
    }
}
