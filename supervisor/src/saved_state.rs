//! A running partition's state, saved on request, and a partition continued from it.
//!
//! Saving ([`Supervisor::save_running`], for export): the supervisor makes a staging
//! directory with two empty files and hands them over with [`Command::Snapshot`]; the
//! partition process pauses its guest and writes `state` and `memory` into them
//! ([`vmm_core::snapshot`]); while the guest waits paused, the supervisor copies each
//! writable disk (`disk1.img`, … by disk index, as [`crate::disposable`] names them) so
//! the disk matches the memory that caches it; then the guest resumes (or stays paused,
//! if it was) and the staging directory is renamed into place — a directory under the
//! final name is always complete.
//!
//! Continuing: a partition whose [`LaunchSpec::resume`] directory holds a `state` file
//! (import puts a bundle's saved state there, and its disk copy as the private disk)
//! starts from that snapshot instead of booting, once: the directory is renamed to
//! `resume.used` before its files are opened, so a later start boots cold (the disk has
//! moved on by then) and nothing is deleted.
//!
//! [`Command::Snapshot`]: vmm_core::control::Command::Snapshot

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_core::control::SnapshotOutcome;
use vmm_core::launch::BootConfig;
use vmm_core::snapshot::{MEMORY_FILE, STATE_FILE};

use crate::launch::{BootFiles, DiskFile, LaunchSpec};
use crate::{ProcessState, Supervisor, SupervisorError};

/// Where a `restart_from = "snapshot"` partition keeps its last good snapshot:
/// `…/partitions/NAME/failover`.
pub fn failover_dir(name: &str) -> PathBuf {
    crate::private_disk::data_root()
        .join("partitions")
        .join(name)
        .join("failover")
}

/// Where a partition's state waits to be continued: `…/partitions/NAME/resume`.
pub fn resume_dir(name: &str) -> PathBuf {
    crate::private_disk::data_root()
        .join("partitions")
        .join(name)
        .join("resume")
}

/// Why a partition cannot be saved while it runs, for a person.
pub const NOT_ON_REQUEST: &str = "it was launched without snapshots on request";

/// What [`Supervisor::save_running`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    pub dir: PathBuf,
    pub state_bytes: u64,
    pub memory_bytes: u64,
    pub memory_pages_written: u64,
    /// The disk copies in `dir`, by file name, with the disk's id.
    pub disks: Vec<(String, String)>,
    /// How long the guest stood paused (snapshot and disk copies).
    pub paused_for: Duration,
}

/// The file name of disk `index`'s copy in a saved state (the disposables' naming).
pub fn disk_file_name(index: usize) -> String {
    format!("disk{index}.img")
}

impl Supervisor {
    /// Whether [`Supervisor::save_running`] can save `name` (when it runs), or why not.
    pub fn can_save_running(&self, name: &str) -> Result<(), String> {
        let slot = self.slot(name).map_err(|e| e.to_string())?;
        if !slot.spec.launch.snapshot_on_request {
            return Err(NOT_ON_REQUEST.into());
        }
        writable_disks(&slot.spec).map(|_| ())
    }

    /// Saves running partition `name` into `dir` (which must not exist): see the module
    /// doc. `timeout` bounds the VMM's part; the disk copies take as long as they take.
    /// A partition with a network, a throwaway disk or none running is refused.
    pub fn save_running(
        &self,
        name: &str,
        dir: &Path,
        timeout: Duration,
    ) -> Result<SavedState, SupervisorError> {
        let slot = self.slot(name)?;
        let refuse = |reason: String| SupervisorError::NoSnapshot {
            name: name.to_string(),
            reason,
        };
        if dir.exists() {
            return Err(refuse(format!("{} exists already", dir.display())));
        }
        let disks = writable_disks(&slot.spec).map_err(refuse)?;
        let was_paused = matches!(self.status(name)?.state, ProcessState::Paused);
        let staging = staging_dir(dir);
        let _ = std::fs::remove_dir_all(&staging);
        let io = |what: &str, path: &Path, e: std::io::Error| {
            refuse(format!("{what} {}: {e}", path.display()))
        };
        std::fs::create_dir_all(&staging).map_err(|e| io("creating", &staging, e))?;
        let cleanup = |e: SupervisorError| {
            let _ = std::fs::remove_dir_all(&staging);
            e
        };
        let create = |file: &str| -> Result<File, SupervisorError> {
            let path = staging.join(file);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| io("creating", &path, e))
        };
        let state = create(STATE_FILE).map_err(cleanup)?;
        let memory = create(MEMORY_FILE).map_err(cleanup)?;
        let began = Instant::now();
        let outcome = slot
            .request_snapshot(state, memory, timeout)
            .map_err(cleanup)?;
        let (state_bytes, memory_bytes, memory_pages_written) = match outcome {
            SnapshotOutcome::Written {
                state_bytes,
                memory_bytes,
                memory_pages_written,
            } => (state_bytes, memory_bytes, memory_pages_written),
            SnapshotOutcome::Failed { reason } => return Err(cleanup(refuse(reason))),
        };
        // The guest waits paused: each disk must be copied as its memory knows it.
        let copied = copy_disks(&disks, &staging);
        if !was_paused {
            if let Err(e) = self.resume(name) {
                tracing::warn!(partition = %name, "resuming after its snapshot: {e}");
            }
        }
        let paused_for = began.elapsed();
        let copied = copied.map_err(|e| cleanup(refuse(e)))?;
        std::fs::rename(&staging, dir).map_err(|e| cleanup(io("renaming into", dir, e)))?;
        tracing::info!(partition = %name, dir = %dir.display(), ?paused_for, "running partition saved");
        Ok(SavedState {
            dir: dir.to_path_buf(),
            state_bytes,
            memory_bytes,
            memory_pages_written,
            disks: copied,
            paused_for,
        })
    }
}

/// The saved memory file's mtime (seconds, nanoseconds). The snapshot records it and a
/// restore refuses a memory file whose mtime changed (the cheap check that keeps restore
/// lazy), so whoever carries a saved state elsewhere — a bundle — carries this too and
/// sets it back with [`set_memory_mtime`] once the content is proven unchanged.
pub fn memory_mtime(dir: &Path) -> std::io::Result<(i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir.join(MEMORY_FILE))?;
    Ok((meta.mtime(), meta.mtime_nsec()))
}

/// Sets the memory file's mtime in `dir` back to `(seconds, nanoseconds)`.
pub fn set_memory_mtime(dir: &Path, (sec, nsec): (i64, i64)) -> std::io::Result<()> {
    let time = u64::try_from(sec)
        .ok()
        .zip(u32::try_from(nsec).ok().filter(|n| *n < 1_000_000_000))
        .map(|(s, n)| std::time::UNIX_EPOCH + Duration::new(s, n))
        .ok_or_else(|| std::io::Error::other(format!("memory file time {sec}.{nsec}")))?;
    OpenOptions::new()
        .write(true)
        .open(dir.join(MEMORY_FILE))?
        .set_modified(time)
}

/// `DIR.partial`, beside it.
fn staging_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dir.with_file_name(name)
}

/// The writable disks to copy with a snapshot: (index, id, file), or why it cannot be.
fn writable_disks(spec: &LaunchSpec) -> Result<Vec<(usize, String, PathBuf)>, String> {
    let mut out = Vec::new();
    for (i, (disk, file)) in spec.launch.disks.iter().zip(&spec.disk_files).enumerate() {
        if disk.read_only {
            continue;
        }
        match file {
            DiskFile::Private { path, .. } | DiskFile::Path(path) => {
                out.push((i, disk.id.clone(), path.clone()))
            }
            DiskFile::Throwaway { .. } | DiskFile::CopyOf(_) => {
                return Err(format!(
                    "its disk {:?} exists only inside its process (a throwaway disk)",
                    disk.id
                ))
            }
            DiskFile::Template(_) => {}
        }
    }
    Ok(out)
}

fn copy_disks(
    disks: &[(usize, String, PathBuf)],
    staging: &Path,
) -> Result<Vec<(String, String)>, String> {
    disks
        .iter()
        .map(|(i, id, source)| {
            let file = disk_file_name(*i);
            crate::private_disk::sparse_copy(source, &staging.join(&file))
                .map_err(|e| format!("copying its disk {id:?}: {e}"))?;
            Ok((file, id.clone()))
        })
        .collect()
}

/// The spec one start of `spec` runs, when it differs from `spec`: continuing from a
/// saved state waiting in its resume directory (once); after a crash (`after_crash`),
/// continuing from its failover snapshot with its writable disks put back as that
/// snapshot knows them (each crashed disk kept beside it as `NAME.crashed-TIME.img`);
/// otherwise, for a failover partition, a cold boot snapshotted at its marker.
pub(crate) fn spec_for_start(
    spec: &LaunchSpec,
    after_crash: bool,
) -> Result<Option<LaunchSpec>, std::io::Error> {
    if let Some(resumed) = take_resume(spec)? {
        return Ok(Some(resumed));
    }
    let Some(failover) = &spec.failover else {
        return Ok(None);
    };
    let disks = match writable_disks(spec) {
        Ok(disks) => disks,
        Err(why) => {
            tracing::warn!(partition = %spec.name(), "no failover snapshot: {why}");
            return Ok(None);
        }
    };
    if after_crash && failover.dir.join(STATE_FILE).is_file() {
        for (i, _, path) in &disks {
            put_back_disk(&failover.dir.join(disk_file_name(*i)), path)?;
        }
        tracing::info!(partition = %spec.name(), dir = %failover.dir.display(), "restarting from its failover snapshot");
        return Ok(Some(continued_from(spec, &failover.dir)));
    }
    let mut cold = spec.clone();
    cold.launch.snapshot_on = Some(failover.marker.clone());
    cold.snapshot = Some(crate::launch::SnapshotPlan {
        dir: failover.dir.clone(),
        copy_disks: disks
            .iter()
            .map(|(i, _, path)| (path.clone(), disk_file_name(*i)))
            .collect(),
        remove_on_exit: Vec::new(),
        replace: true,
    });
    Ok(Some(cold))
}

/// Moves the disk at `live` aside (`STEM.crashed-UNIXTIME.EXT`, never overwriting) and
/// puts a sparse copy of `saved` in its place.
fn put_back_disk(saved: &Path, live: &Path) -> Result<(), std::io::Error> {
    if live.exists() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stem = live.file_stem().unwrap_or_default().to_string_lossy();
        let ext = live
            .extension()
            .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
        let aside = (0..100)
            .map(|n| {
                let suffix = if n == 0 {
                    String::new()
                } else {
                    format!("-{n}")
                };
                live.with_file_name(format!("{stem}.crashed-{stamp}{suffix}{ext}"))
            })
            .find(|p| !p.exists())
            .ok_or_else(|| std::io::Error::other("no free name for the crashed disk"))?;
        std::fs::rename(live, &aside)?;
        tracing::warn!(disk = %live.display(), kept = %aside.display(), "the crashed partition's disk is kept; its failover snapshot's copy takes its place");
    }
    crate::private_disk::sparse_copy(saved, live).map_err(std::io::Error::other)
}

/// If `spec`'s resume directory holds a saved state: renames it to `resume.used`
/// (replacing an older one) and returns the spec that continues from it.
pub(crate) fn take_resume(spec: &LaunchSpec) -> Result<Option<LaunchSpec>, std::io::Error> {
    let Some(dir) = &spec.resume else {
        return Ok(None);
    };
    if !dir.join(STATE_FILE).is_file() {
        return Ok(None);
    }
    let used = dir.with_file_name("resume.used");
    if used.exists() {
        std::fs::remove_dir_all(&used)?;
    }
    std::fs::rename(dir, &used)?;
    tracing::info!(partition = %spec.name(), dir = %used.display(), "continuing from a saved state");
    Ok(Some(continued_from(spec, &used)))
}

/// `spec` starting from the snapshot in `dir` instead of booting; its disks stay its own.
pub fn continued_from(spec: &LaunchSpec, dir: &Path) -> LaunchSpec {
    let mut resumed = spec.clone();
    resumed.launch.boot = BootConfig::Snapshot { verify: false };
    resumed.launch.snapshot_on = None;
    resumed.boot_files = BootFiles::Snapshot {
        dir: dir.to_path_buf(),
    };
    // Booted already: the settings archive rode in the snapshot's initramfs.
    resumed.guest_config = None;
    resumed.snapshot = None;
    resumed.resume = None;
    resumed.failover = None;
    resumed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::AutoRestart;
    use vmm_core::launch::{AgentChannel, DiskConfig, LaunchConfig, NetworkConfig};

    fn spec(resume: Option<PathBuf>) -> LaunchSpec {
        let launch = LaunchConfig {
            name: "work".into(),
            memory_mib: 64,
            vcpus: 1,
            display: None,
            boot: BootConfig::TestCard,
            disks: vec![
                DiskConfig {
                    id: "root".into(),
                    read_only: true,
                },
                DiskConfig {
                    id: "private".into(),
                    read_only: false,
                },
            ],
            network: NetworkConfig::None,
            agent: AgentChannel::VirtioConsole,
            snapshot_on: None,
            snapshot_on_request: true,
        };
        let mut s = LaunchSpec::partition(launch, BootFiles::None, AutoRestart::Never);
        s.disk_files = vec![
            DiskFile::Template("debian-12".into()),
            DiskFile::Private {
                path: "/data/work/private.img".into(),
                size_mib: 64,
            },
        ];
        s.resume = resume;
        s
    }

    #[test]
    fn only_writable_disks_with_a_file_of_their_own_are_copied_with_a_snapshot() {
        let disks = writable_disks(&spec(None)).unwrap();
        assert_eq!(
            disks,
            vec![(1, "private".to_string(), "/data/work/private.img".into())]
        );
        let mut throwaway = spec(None);
        throwaway.disk_files[1] = DiskFile::Throwaway { size_mib: 64 };
        let why = writable_disks(&throwaway).unwrap_err();
        assert!(why.contains("throwaway"), "{why}");
    }

    #[test]
    fn a_saved_state_is_continued_once_then_the_partition_boots_cold() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("resume");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"state").unwrap();
        std::fs::write(dir.join(MEMORY_FILE), b"").unwrap();
        let s = spec(Some(dir.clone()));

        let resumed = take_resume(&s)
            .unwrap()
            .expect("a saved state is continued");
        let used = tmp.path().join("resume.used");
        assert_eq!(resumed.launch.boot, BootConfig::Snapshot { verify: false });
        assert_eq!(
            resumed.boot_files,
            BootFiles::Snapshot { dir: used.clone() }
        );
        assert!(resumed.guest_config.is_none() && resumed.resume.is_none());
        assert_eq!(resumed.disk_files, s.disk_files, "its disks stay its own");
        assert!(!dir.exists(), "the state is taken");
        assert_eq!(std::fs::read(used.join(STATE_FILE)).unwrap(), b"state");

        assert!(
            take_resume(&s).unwrap().is_none(),
            "the next start boots cold"
        );
    }

    #[test]
    fn a_memory_file_time_carried_elsewhere_is_set_back_to_the_nanosecond() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(MEMORY_FILE), b"m").unwrap();
        set_memory_mtime(tmp.path(), (1_700_000_000, 123_456_789)).unwrap();
        assert_eq!(
            memory_mtime(tmp.path()).unwrap(),
            (1_700_000_000, 123_456_789)
        );
        assert!(set_memory_mtime(tmp.path(), (-1, 0)).is_err());
        assert!(set_memory_mtime(tmp.path(), (1, 2_000_000_000)).is_err());
    }

    #[test]
    fn a_resume_directory_without_a_state_file_boots_cold_and_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("resume");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(MEMORY_FILE), b"").unwrap();
        assert!(take_resume(&spec(Some(dir.clone()))).unwrap().is_none());
        assert!(dir.join(MEMORY_FILE).exists());
        assert!(take_resume(&spec(None)).unwrap().is_none());
    }
}
