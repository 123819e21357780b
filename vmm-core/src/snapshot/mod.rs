//! Snapshots: a paused partition written to a directory, and restored from it.
//!
//! A snapshot directory holds two files:
//! - `state`: the versioned, checksummed records ([`format`]) — the configuration, the
//!   VM's irqchip/PIT/clock, every vCPU, every device on the port-I/O and MMIO buses (by
//!   base address) and where guest RAM and the framebuffer lie in `memory`;
//! - `memory`: guest RAM, sparse ([`memory`]), mapped back `MAP_PRIVATE` on restore, then
//!   the framebuffer's pixels, copied back into its memfd.
//!
//! Modelled on Firecracker's `persist.rs`/`snapshot` crate: save with every vCPU parked,
//! restore in the order memory, VM (irqchip before any LAPIC), vCPUs (CPUID before
//! MSRs, events last), devices, then run. A snapshot is refused with one line when its
//! file is truncated, from another format version, from a host with other CPU features
//! (the fingerprint of KVM_GET_SUPPORTED_CPUID and the MSR index list), or when a record's
//! checksum or the memory file's size/mtime (or, with `verify`, its hash) is wrong.

pub mod format;
pub mod memory;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::devices::framebuffer::FramebufferLayout;
use crate::devices::persist::PersistError;
use format::{Fingerprint, Records};
use memory::MemoryRecord;

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a Bulkhead snapshot (wrong magic)")]
    NotASnapshot,
    #[error("snapshot truncated: it ends inside {what}")]
    Truncated { what: String },
    #[error("snapshot format version {found}; this bulkhead-vmm reads only version {supported}")]
    FormatVersion { found: u32, supported: u32 },
    #[error("snapshot was taken on a host with other CPU features (KVM CPUID/MSR fingerprint differs); restore it on the host that took it")]
    CpuFeatures,
    #[error("snapshot record {record:?} fails its checksum (corrupted)")]
    Checksum { record: String },
    #[error("snapshot malformed: {0}")]
    Malformed(String),
    #[error("snapshot has no {0:?} record")]
    Missing(String),
    #[error("snapshot memory file {0}")]
    MemoryFile(String),
    #[error("snapshot does not fit this partition: {0}")]
    Mismatch(String),
    #[error("snapshot record {record:?}: {source}")]
    Record {
        record: String,
        source: PersistError,
    },
    #[error("snapshot: device at {device} cannot be saved: {source}")]
    Device {
        device: String,
        source: PersistError,
    },
    #[error("snapshot guest memory: {0}")]
    Memory(String),
    #[error("snapshot: {0}")]
    Vcpu(#[from] crate::vstate::vcpu::VcpuStateError),
    #[error("snapshot: {0}")]
    Vm(#[from] crate::vstate::vm::VmStateError),
    #[error("snapshot: {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("snapshot: opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot: the partition stopped before it could be paused")]
    Stopped,
}

/// What the VM was built with; a restore builds the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotConfig {
    pub mem_mib: u64,
    pub vcpus: u8,
    pub display: Option<FramebufferLayout>,
    pub disks: usize,
    /// The caller's own record (the bare binary keeps its launch flags here).
    pub extra: serde_json::Value,
}

/// The host's CPU features as KVM offers them: a snapshot restores only where they are
/// the same, since the guest has seen (and may use) every feature in its CPUID.
pub fn host_fingerprint(kvm: &Kvm) -> Result<Fingerprint, SnapshotError> {
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| SnapshotError::Memory(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    let msrs = kvm
        .get_msr_index_list()
        .map_err(|e| SnapshotError::Memory(format!("KVM_GET_MSR_INDEX_LIST: {e}")))?;
    let mut h = Sha256::new();
    for e in cpuid.as_slice() {
        // KVM fills some leaves by running CPUID on whichever host CPU takes the ioctl:
        // the APIC ids in them differ from call to call and are not features.
        let (mut eax, mut ebx, mut edx) = (e.eax, e.ebx, e.edx);
        match e.function {
            0x1 => ebx &= 0x00ff_ffff,
            0xb | 0x1f => edx = 0,
            0x8000_001e => eax = 0,
            _ => {}
        }
        for v in [e.function, e.index, e.flags, eax, ebx, e.ecx, edx] {
            h.update(v.to_le_bytes());
        }
    }
    h.update([0xff]);
    for m in msrs.as_slice() {
        h.update(m.to_le_bytes());
    }
    Ok(h.finalize().into())
}

/// Record names.
pub(crate) mod record {
    pub const CONFIG: &str = "config";
    pub const VM: &str = "vm";
    pub const MEMORY: &str = "memory";
    pub fn vcpu(index: u8) -> String {
        format!("vcpu{index}")
    }
    pub fn pio(base: u64) -> String {
        format!("pio@{base:#x}")
    }
    pub fn mmio(base: u64) -> String {
        format!("mmio@{base:#x}")
    }
}

fn json<T: Serialize>(name: &str, value: &T) -> Result<Vec<u8>, SnapshotError> {
    serde_json::to_vec(value).map_err(|e| SnapshotError::Record {
        record: name.to_string(),
        source: PersistError::Encode(e.to_string()),
    })
}

/// A snapshot directory's files, created empty for writing.
pub struct SnapshotFiles {
    pub state: File,
    pub memory: File,
    pub state_path: PathBuf,
}

impl SnapshotFiles {
    /// Creates `dir` if needed and (re)creates both files empty. Opened before the guest
    /// runs, so a confined partition does not need to open anything later.
    pub fn create(dir: &Path) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|source| SnapshotError::Open { path, source })
        };
        Ok(Self {
            state: open(STATE_FILE)?,
            memory: open(MEMORY_FILE)?,
            state_path: dir.join(STATE_FILE),
        })
    }

    /// Files opened by someone else (the supervisor, for a confined partition that
    /// opens nothing): both must be empty and writable.
    pub fn from_files(state: File, memory: File) -> Result<Self, SnapshotError> {
        for (file, what) in [(&state, "state"), (&memory, "memory")] {
            let len = file
                .metadata()
                .map_err(|source| SnapshotError::Io {
                    what: "reading a handed-over snapshot file's size",
                    source,
                })?
                .len();
            if len != 0 {
                return Err(SnapshotError::Malformed(format!(
                    "the handed-over {what} file to write is not empty ({len} bytes)"
                )));
            }
        }
        Ok(Self {
            state,
            memory,
            state_path: PathBuf::from("(handed-over state file)"),
        })
    }
}

/// What a written snapshot holds, for the log line.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    pub state_bytes: u64,
    pub memory_bytes: u64,
    pub memory_pages_written: u64,
    pub devices: usize,
    /// State this host could not give (per vCPU), recorded in the snapshot too.
    pub unavailable: Vec<String>,
}

/// A snapshot read and checked, ready to restore from.
pub struct Snapshot {
    records: Records,
    pub config: SnapshotConfig,
    memory: MemoryRecord,
    memory_file: Option<std::sync::Arc<File>>,
    mapped: bool,
}

impl Snapshot {
    /// Reads `dir/state` and opens `dir/memory`; refuses another format version, another
    /// host's CPU features, a bad checksum, or a memory file that changed (with `verify`,
    /// also one whose content no longer matches its hash).
    pub fn open(dir: &Path, kvm: &Kvm, verify: bool) -> Result<Self, SnapshotError> {
        let state_path = dir.join(STATE_FILE);
        let state = File::open(&state_path).map_err(|source| SnapshotError::Open {
            path: state_path.clone(),
            source,
        })?;
        let memory_path = dir.join(MEMORY_FILE);
        let memory_file = File::open(&memory_path).map_err(|source| SnapshotError::Open {
            path: memory_path,
            source,
        })?;
        Self::from_files(&state, memory_file, kvm, verify)
    }

    /// [`Snapshot::open`] on files already open (a confined partition gets them handed
    /// over and opens nothing). Only reads them.
    pub fn from_files(
        state: &File,
        memory_file: File,
        kvm: &Kvm,
        verify: bool,
    ) -> Result<Self, SnapshotError> {
        let len = state
            .metadata()
            .map_err(|source| SnapshotError::Io {
                what: "reading the state file's size",
                source,
            })?
            .len();
        if len > format::MAX_STATE_FILE {
            return Err(SnapshotError::Malformed(format!(
                "state file of {len} bytes (at most {})",
                format::MAX_STATE_FILE
            )));
        }
        // Positional: a handed-over file's offset is whatever its opener left.
        let mut bytes = vec![0; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(state, &mut bytes, 0).map_err(|source| {
            SnapshotError::Io {
                what: "reading the state file",
                source,
            }
        })?;
        let snapshot = Self::from_bytes(&bytes, kvm)?;
        memory::check_memory_file(&snapshot.memory, &memory_file, verify)?;
        Ok(Self {
            memory_file: Some(std::sync::Arc::new(memory_file)),
            ..snapshot
        })
    }

    fn from_bytes(bytes: &[u8], kvm: &Kvm) -> Result<Self, SnapshotError> {
        let records = Records::decode(bytes)?;
        if records.fingerprint != host_fingerprint(kvm)? {
            return Err(SnapshotError::CpuFeatures);
        }
        let mut snapshot = Self {
            config: SnapshotConfig {
                mem_mib: 0,
                vcpus: 0,
                display: None,
                disks: 0,
                extra: serde_json::Value::Null,
            },
            memory: MemoryRecord {
                regions: Vec::new(),
                file_len: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
                sha256: String::new(),
                pages_written: 0,
                framebuffer: None,
            },
            records,
            memory_file: None,
            mapped: false,
        };
        snapshot.config = snapshot.decode(record::CONFIG)?;
        snapshot.memory = snapshot.decode(record::MEMORY)?;
        Ok(snapshot)
    }

    pub(crate) fn raw(&self, name: &str) -> Result<&[u8], SnapshotError> {
        self.records
            .get(name)
            .ok_or_else(|| SnapshotError::Missing(name.to_string()))
    }

    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<T, SnapshotError> {
        serde_json::from_slice(self.raw(name)?).map_err(|e| SnapshotError::Record {
            record: name.to_string(),
            source: PersistError::Decode(e.to_string()),
        })
    }

    /// Names of every record, for checking that each one was used.
    pub(crate) fn record_names(&self) -> impl Iterator<Item = &str> {
        self.records.records.iter().map(|(n, _)| n.as_str())
    }

    /// Guest RAM mapped copy-on-write from the memory file (once).
    pub(crate) fn map_memory(
        &mut self,
        expected: &[(u64, u64)],
    ) -> Result<vm_memory::GuestMemoryMmap, SnapshotError> {
        if std::mem::replace(&mut self.mapped, true) {
            return Err(SnapshotError::MemoryFile("already mapped".into()));
        }
        let file = self
            .memory_file
            .clone()
            .ok_or_else(|| SnapshotError::MemoryFile("not open".into()))?;
        memory::map_memory(&self.memory, file, expected)
    }

    /// Copies the saved framebuffer's pixels into `dst`.
    pub(crate) fn read_framebuffer(
        &self,
        dst: &crate::shm::MappedRegion,
    ) -> Result<(), SnapshotError> {
        let file = self
            .memory_file
            .as_deref()
            .ok_or_else(|| SnapshotError::MemoryFile("not open".into()))?;
        memory::read_framebuffer(&self.memory, file, dst)
    }
}

/// Collects records for [`write`].
pub(crate) struct Writer {
    pub records: Records,
}

impl Writer {
    pub fn new(kvm: &Kvm) -> Result<Self, SnapshotError> {
        Ok(Self {
            records: Records {
                fingerprint: host_fingerprint(kvm)?,
                records: Vec::new(),
            },
        })
    }

    pub fn json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<(), SnapshotError> {
        let bytes = json(name, value)?;
        self.records.push(name, bytes);
        Ok(())
    }

    pub fn raw(&mut self, name: &str, bytes: Vec<u8>) {
        self.records.push(name, bytes);
    }

    /// Writes the memory file, then the state file (last: a snapshot whose state file
    /// is complete has its memory too).
    pub fn finish(
        mut self,
        mem: &vm_memory::GuestMemoryMmap,
        framebuffer: Option<&[u8]>,
        files: &SnapshotFiles,
    ) -> Result<(u64, MemoryRecord), SnapshotError> {
        let record = memory::write_memory(mem, framebuffer, &files.memory)?;
        self.json(record::MEMORY, &record)?;
        let bytes = self.records.encode();
        std::io::Write::write_all(&mut &files.state, &bytes).map_err(|source| {
            SnapshotError::Io {
                what: "writing the state file",
                source,
            }
        })?;
        files.state.sync_all().map_err(|source| SnapshotError::Io {
            what: "syncing the state file",
            source,
        })?;
        Ok((bytes.len() as u64, record))
    }
}
