//! Disposables from a warm snapshot.
//!
//! The first disposable of a template (a [`LaunchSpec`]) cold-boots to its app-ready
//! marker, is snapshotted there into the cache and runs on as that disposable; every
//! later one restores from the snapshot (memory mapped copy-on-write, so clones share
//! the pages none of them wrote) with its own copy of each writable disk as the
//! snapshot's guest last saw it. The cache is keyed by everything the guest was booted
//! from (launch config, kernel, initramfs, template image, the partition's settings, the
//! VMM binary, the marker), so a changed template or image makes a new snapshot.
//!
//! Clones are not twins: virtio-rng answers every request from the host's `getrandom`,
//! each clone gets its own disk copy and its own name, and right after a restore the
//! supervisor sends the guest agent fresh host entropy (`Restored`), which its root
//! helper credits to the kernel and reseeds the CRNG with (without an agent, the kernel
//! takes fresh virtio-rng bytes when it next reseeds on its own). A disposable has its
//! template's network and rules through its own passt and relay (the snapshot keeps no
//! frame in flight; passt hands every guest the same address, so the lease holds).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use vmm_core::launch::BootConfig;

use crate::launch::{BootFiles, DiskFile, LaunchSpec, SnapshotPlan};
use crate::{AutoRestart, Supervisor, SupervisorError};

/// The serial line a template partition prints when its app window is up.
pub const APP_READY_MARKER: &str = "BULKHEAD-APP-READY";

#[derive(Debug, thiserror::Error)]
pub enum DisposableError {
    #[error("disposable of {template:?}: reading {path}: {source}")]
    Identity {
        template: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disposable of {template:?}: {source}")]
    Launch {
        template: String,
        source: crate::LaunchFileError,
    },
    #[error("disposable of {template:?}: its disk: {source}")]
    Disk {
        template: String,
        source: crate::private_disk::PrivateDiskError,
    },
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("no disposable template for `@dispvm`: give a partition `kind = \"disposable\"` in partitions.toml, or name one with `@dispvm:NAME`")]
    NoDefault,
    #[error("`{target}`: no partition {name:?} in the policy to make disposables of")]
    UnknownTemplate { target: String, name: String },
}

/// A disposable just started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposable {
    /// `disp1`, `disp2`, …
    pub name: String,
    /// Restored from the template's snapshot (`false`: cold boot, snapshotted at the
    /// marker).
    pub restored: bool,
    /// The template's snapshot directory in the cache.
    pub snapshot_dir: PathBuf,
}

/// `$XDG_CACHE_HOME/bulkhead/disposables`.
pub fn cache_dir() -> PathBuf {
    crate::guest_image::cache_root().join("disposables")
}

/// The first `dispN` not in `taken`.
pub fn next_name(taken: &[String]) -> String {
    (1u32..)
        .map(|n| format!("disp{n}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| "disp".into())
}

impl Supervisor {
    /// Starts a disposable of `template` (see the module doc): restored from the
    /// template's snapshot in [`cache_dir`] when there is one, else cold-booted and
    /// snapshotted when its guest prints `marker` ([`APP_READY_MARKER`] for template
    /// partitions). The disposable is a partition of this supervisor named `dispN`;
    /// its disk goes with its process, [`Supervisor::remove`] takes it off the list.
    pub fn start_disposable(
        &self,
        template: &LaunchSpec,
        marker: &str,
    ) -> Result<Disposable, DisposableError> {
        self.start_disposable_in(template, marker, &cache_dir())
    }

    /// [`Supervisor::start_disposable`] with the snapshots kept under `cache`.
    pub fn start_disposable_in(
        &self,
        template: &LaunchSpec,
        marker: &str,
        cache: &Path,
    ) -> Result<Disposable, DisposableError> {
        let name = next_name(&self.names());
        let key = cache_key(template, marker)?;
        let dir = cache.join(&key);
        let complete = dir.join(vmm_core::snapshot::STATE_FILE).is_file();
        let spec = if complete {
            restore_spec(template, &name, &dir)
        } else {
            cold_spec(template, &name, marker, &dir, cache)?
        };
        self.add(spec)?;
        if let Err(e) = self.start(&name) {
            let _ = self.remove(&name, std::time::Duration::ZERO);
            return Err(e.into());
        }
        tracing::info!(%name, template = %template.name(), restored = complete, "disposable started");
        Ok(Disposable {
            name,
            restored: complete,
            snapshot_dir: dir,
        })
    }

    /// How the snapshot at a disposable's marker went: its directory, the reason it
    /// failed, or `None` while it is not taken (or the partition takes none).
    pub fn snapshot_result(
        &self,
        name: &str,
    ) -> Result<Option<Result<PathBuf, String>>, SupervisorError> {
        Ok(self.slot(name)?.snapshot_result())
    }
}

/// Which partition's disposable a policy target asks for: `@dispvm` is the first
/// partition of kind `disposable`, `@dispvm:NAME` is partition NAME's. `Ok(None)`: the
/// target is not a disposable one (a partition name, `@host`, …).
pub fn dispvm_template(
    policy: &isolation_policy::Policy,
    target: &str,
) -> Result<Option<isolation_policy::PartitionSpec>, DisposableError> {
    if target == "@dispvm" {
        return policy
            .specs()
            .into_iter()
            .find(|s| s.kind == isolation_policy::Kind::Disposable)
            .map(Some)
            .ok_or(DisposableError::NoDefault);
    }
    let Some(name) = target.strip_prefix("@dispvm:") else {
        return Ok(None);
    };
    policy
        .spec(name)
        .map(Some)
        .ok_or_else(|| DisposableError::UnknownTemplate {
            target: target.to_string(),
            name: name.to_string(),
        })
}

/// What the test card prints once its bands are painted.
pub const TEST_CARD_MARKER: &str = "TEST-CARD-READY";

impl Supervisor {
    /// Where a policy decision's target is `@dispvm` or `@dispvm:NAME` (open-in, copy
    /// to a disposable): starts that disposable and returns it; `Ok(None)` for any other
    /// target, which the caller resolves as a partition name.
    pub fn start_dispvm_target(
        &self,
        policy: &isolation_policy::Policy,
        target: &str,
        engine: crate::launch::Engine,
    ) -> Result<Option<Disposable>, DisposableError> {
        let Some(spec) = dispvm_template(policy, target)? else {
            return Ok(None);
        };
        let template = crate::launch::launch_spec(&spec, engine);
        self.start_disposable(&template, crate::launch::up_marker(&spec, engine))
            .map(Some)
    }
}

/// The template's launch (its network and firewall rules too), renamed, never restarted
/// (a disposable that crashed is gone, not brought back with its state).
fn base(template: &LaunchSpec, name: &str) -> LaunchSpec {
    let mut spec = template.clone();
    spec.launch.name = name.to_string();
    spec.restart = AutoRestart::Never;
    spec.snapshot = None;
    spec.launch.snapshot_on = None;
    if let Some(config) = &mut spec.guest_config {
        config.name = name.to_string();
    }
    spec
}

fn disk_name(index: usize) -> String {
    format!("disk{index}.img")
}

/// A later disposable: memory and devices from the snapshot, each writable disk a
/// private copy of the one the snapshot's guest had.
fn restore_spec(template: &LaunchSpec, name: &str, dir: &Path) -> LaunchSpec {
    let mut spec = base(template, name);
    spec.launch.boot = BootConfig::Snapshot { verify: false };
    spec.boot_files = BootFiles::Snapshot {
        dir: dir.to_path_buf(),
    };
    // Booted already: the settings archive rode in the snapshot's initramfs.
    spec.guest_config = None;
    spec.disk_files = spec
        .disk_files
        .iter()
        .zip(&spec.launch.disks)
        .enumerate()
        .map(|(i, (file, disk))| match disk.read_only {
            true => file.clone(),
            false => DiskFile::CopyOf(dir.join(disk_name(i))),
        })
        .collect();
    spec
}

/// The first disposable: a cold boot whose writable disks are fresh files it keeps
/// until it ends, copied into the snapshot while it waits paused at the marker.
fn cold_spec(
    template: &LaunchSpec,
    name: &str,
    marker: &str,
    dir: &Path,
    cache: &Path,
) -> Result<LaunchSpec, DisposableError> {
    let mut spec = base(template, name);
    let mut plan = SnapshotPlan {
        dir: dir.to_path_buf(),
        copy_disks: Vec::new(),
        remove_on_exit: Vec::new(),
        replace: false,
    };
    let work = cache.join("work");
    let disk_err = |source| DisposableError::Disk {
        template: template.name().to_string(),
        source,
    };
    for i in 0..spec.disk_files.len() {
        if spec.launch.disks.get(i).is_none_or(|d| d.read_only) {
            continue;
        }
        let path = work.join(format!("{name}-{}-{}", std::process::id(), disk_name(i)));
        match &spec.disk_files[i] {
            DiskFile::Private { size_mib, .. } | DiskFile::Throwaway { size_mib } => {
                crate::private_disk::fresh_at(&path, *size_mib).map_err(disk_err)?
            }
            // Never the template's own file: the disposable writes to it.
            DiskFile::Path(source) | DiskFile::CopyOf(source) => {
                std::fs::create_dir_all(&work).map_err(|source| {
                    disk_err(crate::private_disk::PrivateDiskError::Io {
                        what: "creating",
                        path: work.clone(),
                        source,
                    })
                })?;
                let _ = std::fs::remove_file(&path);
                crate::private_disk::sparse_copy(source, &path).map_err(disk_err)?
            }
            DiskFile::Template(_) => continue,
        }
        spec.disk_files[i] = DiskFile::Path(path.clone());
        plan.copy_disks.push((path.clone(), disk_name(i)));
        plan.remove_on_exit.push(path);
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DisposableError::Identity {
            template: template.name().to_string(),
            path: parent.to_path_buf(),
            source,
        })?;
    }
    spec.launch.snapshot_on = Some(marker.to_string());
    spec.snapshot = Some(plan);
    Ok(spec)
}

/// What the snapshot depends on, hashed: the launch (name aside), every boot and disk
/// file's identity (path, size, mtime), the guest settings (name aside), the VMM binary
/// and the marker.
pub fn cache_key(template: &LaunchSpec, marker: &str) -> Result<String, DisposableError> {
    let anon = base(template, "disposable");
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(format!("{:?}", anon.launch).as_bytes());
    part(format!("{:?}", anon.guest_config).as_bytes());
    part(marker.as_bytes());
    let identity = |path: &Path| -> Result<String, DisposableError> {
        let meta = std::fs::metadata(path).map_err(|source| DisposableError::Identity {
            template: template.name().to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(format!("{}:{}:{mtime}", path.display(), meta.len()))
    };
    let mut files = vec![anon.program.clone()];
    match &anon.boot_files {
        BootFiles::None => {}
        BootFiles::Linux { kernel, initrd } => {
            files.push(kernel.clone());
            files.extend(initrd.clone());
        }
        BootFiles::DefaultImage => {
            let image = crate::guest_image::ensure_default(&mut |s| tracing::info!("{s}"))
                .map_err(|e| DisposableError::Launch {
                    template: template.name().to_string(),
                    source: e.into(),
                })?;
            files.push(image.kernel);
            files.push(image.initrd);
        }
        BootFiles::Snapshot { dir } => files.push(dir.join(vmm_core::snapshot::STATE_FILE)),
    }
    for file in &anon.disk_files {
        match file {
            DiskFile::Path(p) | DiskFile::CopyOf(p) => files.push(p.clone()),
            DiskFile::Template(name) => {
                let installed = crate::template::TemplateStore::open_default()
                    .installed(name)
                    .map_err(|e| DisposableError::Launch {
                        template: template.name().to_string(),
                        source: e.into(),
                    })?
                    .ok_or_else(|| DisposableError::Launch {
                        template: template.name().to_string(),
                        source: crate::LaunchFileError::TemplateMissing(name.clone()),
                    })?;
                files.push(installed.image);
            }
            DiskFile::Private { size_mib, .. } | DiskFile::Throwaway { size_mib } => {
                part(format!("fresh disk {size_mib} MiB").as_bytes())
            }
        }
    }
    // The program may be a bare name found on PATH: its identity is then its name.
    for f in files {
        let id = match f.is_absolute() || f.exists() {
            true => identity(&f)?,
            false => f.display().to_string(),
        };
        part(id.as_bytes());
    }
    let digest = h.finalize();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::launch::{AgentChannel, DiskConfig, DisplaySize, LaunchConfig};

    fn spec(dir: &Path) -> LaunchSpec {
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"kernel one").unwrap();
        let launch = LaunchConfig {
            name: "browser".into(),
            memory_mib: 64,
            vcpus: 1,
            display: Some(DisplaySize {
                width: 64,
                height: 64,
            }),
            boot: BootConfig::Linux {
                cmdline: String::new(),
                initrd: false,
            },
            disks: vec![DiskConfig {
                id: "private".into(),
                read_only: false,
            }],
            network: vmm_core::launch::NetworkConfig::None,
            agent: AgentChannel::VirtioConsole,
            snapshot_on: None,
            snapshot_on_request: false,
        };
        let mut s = LaunchSpec::partition(
            launch,
            BootFiles::Linux {
                kernel,
                initrd: None,
            },
            AutoRestart::Never,
        );
        s.disk_files = vec![DiskFile::Throwaway { size_mib: 64 }];
        s
    }

    #[test]
    fn dispvm_targets_name_the_disposable_template_and_other_targets_are_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("partitions.toml"),
            "[partition.work]\nlabel = \"blue\"\n\n[partition.scratch]\nlabel = \"red\"\nkind = \"disposable\"\n",
        )
        .unwrap();
        let policy = isolation_policy::Policy::load(dir.path()).unwrap().0;
        let d = dispvm_template(&policy, "@dispvm").unwrap().unwrap();
        assert_eq!(d.name, "scratch");
        assert_eq!(
            dispvm_template(&policy, "@dispvm:work")
                .unwrap()
                .unwrap()
                .name,
            "work"
        );
        assert!(dispvm_template(&policy, "work").unwrap().is_none());
        assert!(dispvm_template(&policy, "@host").unwrap().is_none());
        let e = dispvm_template(&policy, "@dispvm:nope").unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }

    #[test]
    fn disposables_are_named_disp_and_the_first_free_number() {
        assert_eq!(next_name(&[]), "disp1");
        assert_eq!(
            next_name(&["disp1".into(), "disp3".into(), "work".into()]),
            "disp2"
        );
    }

    #[test]
    fn a_changed_kernel_or_config_is_another_snapshot_and_the_name_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        let key = cache_key(&s, APP_READY_MARKER).unwrap();
        let mut renamed = s.clone();
        renamed.launch.name = "mail".into();
        assert_eq!(cache_key(&renamed, APP_READY_MARKER).unwrap(), key);
        let mut bigger = s.clone();
        bigger.launch.memory_mib = 128;
        assert_ne!(cache_key(&bigger, APP_READY_MARKER).unwrap(), key);
        assert_ne!(cache_key(&s, "OTHER-MARKER").unwrap(), key);
        // A rebuilt kernel (new size) invalidates the snapshot.
        std::fs::write(dir.path().join("vmlinuz"), b"kernel two, longer").unwrap();
        assert_ne!(cache_key(&s, APP_READY_MARKER).unwrap(), key);
    }

    #[test]
    fn the_first_disposable_snapshots_at_the_marker_and_later_ones_restore_with_disk_copies() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        let snap = dir.path().join("cache/key");
        let cold = cold_spec(&s, "disp1", "READY", &snap, &dir.path().join("cache")).unwrap();
        assert_eq!(cold.launch.snapshot_on.as_deref(), Some("READY"));
        assert_eq!(cold.restart, AutoRestart::Never);
        let plan = cold.snapshot.as_ref().unwrap();
        let DiskFile::Path(disk) = &cold.disk_files[0] else {
            panic!("{:?}", cold.disk_files)
        };
        assert!(disk.is_file(), "a fresh disk made for disp1");
        assert_eq!(plan.copy_disks, vec![(disk.clone(), "disk0.img".into())]);
        assert_eq!(plan.remove_on_exit, vec![disk.clone()]);

        let warm = restore_spec(&s, "disp2", &snap);
        assert_eq!(warm.launch.boot, BootConfig::Snapshot { verify: false });
        assert_eq!(warm.boot_files, BootFiles::Snapshot { dir: snap.clone() });
        assert_eq!(
            warm.disk_files,
            vec![DiskFile::CopyOf(snap.join("disk0.img"))]
        );
        assert!(warm.launch.snapshot_on.is_none() && warm.snapshot.is_none());
        warm.launch.validate().unwrap();
    }
}
