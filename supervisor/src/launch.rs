//! From resolved partition specs to partition-process launches: the [`LaunchConfig`] a
//! partition process is sent and the files opened for it on this side.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isolation_policy::PartitionSpec;
use vmm_core::hostcheck::{self, HostError, Virtualization};
use vmm_core::launch::{
    AgentChannel, BootConfig, DiskConfig, DisplaySize, LaunchConfig, LaunchFiles, NetworkConfig,
    SnapshotPair, DEFAULT_CMDLINE,
};

use crate::cgroup::Resources;
use crate::guest_image::{self, ImageError};
use crate::template::TemplateStore;

/// Automatic restarts of a crashing partition within [`CRASH_WINDOW`] before it stays
/// crashed: a partition that crashes now and then keeps coming back, one in a crash loop
/// stops and says so.
const MAX_AUTO_RESTARTS: u32 = 5;
/// How long an automatic restart counts against [`AutoRestart::OnCrash`]'s `max_retries`.
pub const CRASH_WINDOW: Duration = Duration::from_secs(10 * 60);

/// What to do when a partition's process crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoRestart {
    Never,
    /// Restart automatically after a growing delay, at most `max_retries` times within
    /// [`CRASH_WINDOW`]; then it stays crashed until started by hand.
    OnCrash {
        max_retries: u32,
    },
}

/// When a partition was restarted automatically, within [`CRASH_WINDOW`].
#[derive(Debug, Default)]
pub struct CrashHistory {
    restarts: std::collections::VecDeque<Instant>,
}

impl CrashHistory {
    /// A crash at `now`: the delay before restarting, or `None` when `max_retries`
    /// restarts happened within the window already (a crash loop).
    pub fn record(&mut self, now: Instant, max_retries: u32) -> Option<Duration> {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > CRASH_WINDOW)
        {
            self.restarts.pop_front();
        }
        let recent = u32::try_from(self.restarts.len()).unwrap_or(u32::MAX);
        if recent >= max_retries {
            return None;
        }
        self.restarts.push_back(now);
        // 200 ms, 400 ms, 800 ms … up to 10 s by the restarts in the window: a partition
        // that dies at once cannot spin, one that crashed long ago comes back at once.
        Some(Duration::from_millis(200 << recent.min(6)).min(Duration::from_secs(10)))
    }
}

/// Where a partition's boot files come from; opened at every start, so a rebuilt image
/// is picked up by the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFiles {
    /// The test card needs no files.
    None,
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
    },
    /// The default guest image in the cache, built (once, under a lock) if missing.
    DefaultImage,
    /// A snapshot directory (`state`, `memory`), opened read-only; the launch's boot is
    /// `BootConfig::Snapshot`.
    Snapshot { dir: PathBuf },
}

/// A snapshot to take when the guest prints `marker` (`LaunchConfig::snapshot_on`,
/// which must be set too). The partition writes into files made under a staging
/// directory beside `dir`; once it reports them written (and waits paused), the disks in
/// `copy_disks` are copied in (sparse), the staging directory is renamed to `dir` and
/// the partition resumed. A snapshot that fails leaves nothing at `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPlan {
    pub dir: PathBuf,
    /// (source file, file name in `dir`): disks whose content the snapshot's guest
    /// has cached, copied while it is paused.
    pub copy_disks: Vec<(PathBuf, String)>,
    /// Files removed when the process is reaped (the disks above, made for it).
    pub remove_on_exit: Vec<PathBuf>,
    /// A complete snapshot already in `dir` is replaced (failover keeps the latest);
    /// otherwise the first one made is kept (disposables of one template).
    pub replace: bool,
}

/// `restart_from = "snapshot"`: every cold boot is snapshotted at `marker` into `dir`
/// (with its writable disks), and an automatic restart after a crash continues from
/// there, its disks put back as they were (see [`crate::saved_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub dir: PathBuf,
    pub marker: String,
}

/// The id (virtio-blk serial) of a partition's private disk.
pub const PRIVATE_DISK_ID: &str = "private";

/// How to start one partition process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The program to run (`bulkhead-vmm`).
    pub program: PathBuf,
    /// Its arguments before the `--control-fd 3` the supervisor appends.
    pub args: Vec<OsString>,
    /// What the partition process is sent in the handshake; its name is the partition's.
    pub launch: LaunchConfig,
    pub boot_files: BootFiles,
    /// The disks' files, in the order of `launch.disks`.
    pub disk_files: Vec<DiskFile>,
    /// The partition's settings for the guest (`/etc/bulkhead/partition.conf`), appended
    /// to the initramfs as one more archive.
    pub guest_config: Option<GuestConfig>,
    pub restart: AutoRestart,
    /// The partition's cgroup limits.
    pub resources: Resources,
    /// An online partition's firewall: with it the supervisor starts passt and the relay
    /// at every start and `launch.network` must be `Stream`; `None`: no device at all.
    pub network: Option<crate::network::NetworkPlan>,
    /// Snapshot at a marker (the first disposable of a template).
    pub snapshot: Option<SnapshotPlan>,
    /// Where a saved state may wait for the next start to continue from it, once
    /// ([`crate::saved_state`]).
    pub resume: Option<PathBuf>,
    pub failover: Option<Failover>,
}

/// Where one disk's file comes from, resolved at every start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskFile {
    Path(PathBuf),
    /// The root image of a built template (read-only).
    Template(String),
    /// A persistent private disk, created sparse as ext4 of this size if missing.
    Private {
        path: PathBuf,
        size_mib: u32,
    },
    /// A fresh private disk at every start, gone when the partition process ends.
    Throwaway {
        size_mib: u32,
    },
    /// A private copy (sparse) of this file at every start, gone when the partition
    /// process ends: a restored disposable's disk as its snapshot's guest last saw it.
    CopyOf(PathBuf),
}

/// What the guest's session reads from `/etc/bulkhead/partition.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    pub name: String,
    /// The command the session starts.
    pub app: String,
    pub keyboard: String,
}

impl GuestConfig {
    /// Shell assignments, each value single-quoted so nothing in it is interpreted when
    /// the guest's script sources the file (the app command runs later, as the user).
    pub fn to_shell(&self) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        format!(
            "BULKHEAD_NAME={}\nBULKHEAD_APP={}\nBULKHEAD_KEYMAP={}\n",
            q(&self.name),
            q(&self.app),
            q(&self.keyboard)
        )
    }
}

/// Why a partition's files could not be opened for it.
#[derive(Debug, thiserror::Error)]
pub enum LaunchFileError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("opening {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the default guest image: {0}")]
    Image(#[from] ImageError),
    #[error("{disks} disk(s) configured but {files} disk file(s) given")]
    DiskCount { disks: usize, files: usize },
    #[error("template `{0}` is not built: build it with `bulkhead template build {0}`")]
    TemplateMissing(String),
    #[error(transparent)]
    PrivateDisk(#[from] crate::private_disk::PrivateDiskError),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("appending the partition's settings to its initramfs: {0}")]
    GuestConfig(std::io::Error),
    #[error("snapshot files {path}: {source}")]
    Snapshot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a snapshot plan needs the launch's snapshot_on marker, and the marker a plan")]
    SnapshotPlan,
}

impl LaunchSpec {
    /// A `bulkhead-vmm partition` launch.
    pub fn partition(
        launch: LaunchConfig,
        boot_files: BootFiles,
        restart: AutoRestart,
    ) -> LaunchSpec {
        LaunchSpec {
            program: vmm_binary(),
            args: vec!["partition".into()],
            resources: default_resources(&launch),
            launch,
            boot_files,
            disk_files: Vec::new(),
            guest_config: None,
            restart,
            network: None,
            snapshot: None,
            resume: None,
            failover: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.launch.name
    }
}

/// The limits of `launch` with default shares: its guest RAM and framebuffer plus the
/// VMM's allowance.
pub fn default_resources(launch: &LaunchConfig) -> Resources {
    let framebuffer = launch
        .display
        .map_or(0, |d| u64::from(d.width) * u64::from(d.height) * 4);
    Resources::new(launch.memory_mib.saturating_mul(1 << 20), framebuffer)
}

/// The limits `spec` asks for, for a partition launched as `launch`.
pub fn resources_of(spec: &PartitionSpec, launch: &LaunchConfig) -> Resources {
    Resources {
        cpu_weight: spec.cpu_weight,
        cpu_max_percent: spec.cpu_max_percent,
        io_weight: spec.io_weight,
        io_max_bytes_per_sec: u64::from(spec.io_max_mib_s) << 20,
        memory_min_mib: spec
            .memory_floor_mib()
            .min(u32::try_from(launch.memory_mib).unwrap_or(u32::MAX)),
        ..default_resources(launch)
    }
}

impl LaunchSpec {
    /// Opens /dev/kvm (refusing a software-only KVM for Linux), the boot files and the
    /// disks; resolves the default image first when the spec asks for it.
    pub fn open_files(&self) -> Result<LaunchFiles, LaunchFileError> {
        if self.disk_files.len() != self.launch.disks.len() {
            return Err(LaunchFileError::DiskCount {
                disks: self.launch.disks.len(),
                files: self.disk_files.len(),
            });
        }
        if self.snapshot.is_some() != self.launch.snapshot_on.is_some() {
            return Err(LaunchFileError::SnapshotPlan);
        }
        let linux = matches!(self.launch.boot, BootConfig::Linux { .. });
        let kvm = if linux {
            hostcheck::open_kvm_device_for_linux()?
        } else {
            hostcheck::open_kvm_device()?.0
        };
        let mut snapshot_in = None;
        let (kernel, initrd) = match &self.boot_files {
            BootFiles::None => (None, None),
            BootFiles::Snapshot { dir } => {
                let read = |name: &str| {
                    let path = dir.join(name);
                    File::open(&path).map_err(|source| LaunchFileError::Snapshot { path, source })
                };
                snapshot_in = Some(SnapshotPair {
                    state: read(vmm_core::snapshot::STATE_FILE)?,
                    memory: read(vmm_core::snapshot::MEMORY_FILE)?,
                });
                (None, None)
            }
            BootFiles::Linux { kernel, initrd } => (Some(kernel.clone()), initrd.clone()),
            BootFiles::DefaultImage => {
                let image = guest_image::ensure_default(&mut |s| tracing::info!("{s}"))?;
                (Some(image.kernel), Some(image.initrd))
            }
        };
        let disks = self
            .disk_files
            .iter()
            .zip(&self.launch.disks)
            .map(|(file, disk)| open_disk(file, disk.read_only))
            .collect::<Result<_, _>>()?;
        let initrd = match (initrd, &self.guest_config) {
            (Some(p), Some(config)) => Some(initrd_with_config(&p, config)?),
            (Some(p), None) => Some(open("initrd", &p, false)?),
            (None, _) => None,
        };
        Ok(LaunchFiles {
            kvm: kvm.into(),
            kernel: kernel.map(|p| open("kernel", &p, false)).transpose()?,
            initrd,
            disks,
            network: None,
            snapshot_in,
            snapshot_out: self
                .snapshot
                .as_ref()
                .map(|p| create_staging(p, &self.launch.name))
                .transpose()?,
        })
    }
}

/// Where partition `partition`'s [`SnapshotPlan`] files are written before the
/// snapshot is complete (one per process and partition: two first disposables of one
/// template may snapshot at once; the first to finish is kept).
pub fn staging_dir(plan: &SnapshotPlan, partition: &str) -> PathBuf {
    let mut name = plan.dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}-{partition}", std::process::id()));
    plan.dir.with_file_name(name)
}

/// Makes the staging directory afresh with both files empty, opened for the partition.
fn create_staging(plan: &SnapshotPlan, partition: &str) -> Result<SnapshotPair, LaunchFileError> {
    let dir = staging_dir(plan, partition);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchFileError::Snapshot { path, source }
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(err(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(err(&dir))?;
    let files =
        vmm_core::snapshot::SnapshotFiles::create(&dir).map_err(|e| LaunchFileError::Snapshot {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(SnapshotPair {
        state: files.state,
        memory: files.memory,
    })
}

fn open_disk(file: &DiskFile, read_only: bool) -> Result<File, LaunchFileError> {
    match file {
        DiskFile::Path(path) => open("disk", path, !read_only),
        DiskFile::Template(name) => match TemplateStore::open_default().installed(name)? {
            Some(t) => open("template image", &t.image, false),
            None => Err(LaunchFileError::TemplateMissing(name.clone())),
        },
        DiskFile::Private { path, size_mib } => {
            Ok(crate::private_disk::open_or_create(path, *size_mib)?)
        }
        DiskFile::Throwaway { size_mib } => Ok(crate::private_disk::throwaway(
            &std::env::temp_dir(),
            *size_mib,
        )?),
        DiskFile::CopyOf(source) => Ok(crate::private_disk::throwaway_copy(
            source,
            &std::env::temp_dir(),
        )?),
    }
}

/// The initramfs at `path` with one more newc archive holding the partition's settings,
/// in an anonymous memory file (the kernel unpacks concatenated archives in order).
fn initrd_with_config(path: &Path, config: &GuestConfig) -> Result<File, LaunchFileError> {
    use std::io::{Seek, Write};
    let base = std::fs::read(path).map_err(|source| LaunchFileError::Open {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    })?;
    let mut w = crate::guest_image::cpio::CpioWriter::new(Vec::new());
    let archive = (|| {
        w.dir("etc")?;
        w.dir("etc/bulkhead")?;
        w.file(
            "etc/bulkhead/partition.conf",
            0o644,
            config.to_shell().as_bytes(),
        )?;
        w.finish()
    })()
    .map_err(LaunchFileError::GuestConfig)?;
    let fd = rustix::fs::memfd_create("bulkhead-initrd", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| LaunchFileError::GuestConfig(e.into()))?;
    let mut file = File::from(fd);
    // The partition process reads it from the start, like a freshly opened file.
    file.write_all(&base)
        .and_then(|()| file.write_all(&archive))
        .and_then(|()| file.seek(std::io::SeekFrom::Start(0)).map(drop))
        .map_err(LaunchFileError::GuestConfig)?;
    Ok(file)
}

fn open(what: &'static str, path: &Path, write: bool) -> Result<File, LaunchFileError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|source| LaunchFileError::Open {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// What the partitions boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The default guest image: Debian's kernel and the project's initramfs.
    Linux,
    /// The built-in test card micro-guest: a real KVM partition that runs even on a
    /// software-only KVM, where stock kernels cannot.
    TestCard,
}

impl Engine {
    /// Linux where the host has VT-x/AMD-V; the test card otherwise, with the reason.
    pub fn for_host() -> (Engine, Option<String>) {
        match hostcheck::open_kvm_device() {
            Ok((_, Virtualization::Hardware)) => (Engine::Linux, None),
            Ok((_, Virtualization::Software { name })) => (
                Engine::TestCard,
                Some(format!(
                    "{}; partitions run the built-in test card instead",
                    HostError::SoftwareOnly { name }
                )),
            ),
            Err(e) => (Engine::Linux, Some(e.to_string())),
        }
    }
}

/// The partition binary: `$BULKHEAD_VMM`, else next to this executable (`/usr/bin` or
/// `target/<profile>`; for test binaries in `deps/`, one level up), else on PATH.
pub fn vmm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BULKHEAD_VMM") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().ok();
    let dirs = exe
        .iter()
        .flat_map(|e| e.ancestors().skip(1).take(2))
        .map(|d| d.join("bulkhead-vmm"));
    for candidate in dirs {
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("bulkhead-vmm")
}

/// The launch of a configured partition.
pub fn launch_spec(spec: &PartitionSpec, engine: Engine) -> LaunchSpec {
    let (boot, boot_files) = match engine {
        Engine::Linux => {
            let cmdline = match spec.cmdline_extra.is_empty() {
                true => DEFAULT_CMDLINE.to_string(),
                false => format!("{DEFAULT_CMDLINE} {}", spec.cmdline_extra),
            };
            (
                BootConfig::Linux {
                    cmdline,
                    initrd: true,
                },
                BootFiles::DefaultImage,
            )
        }
        Engine::TestCard => (BootConfig::TestCard, BootFiles::None),
    };
    let mut disk_files = Vec::new();
    let mut disks = Vec::new();
    let mut guest_config = None;
    if let (Engine::Linux, Some(template)) = (engine, &spec.template) {
        disk_files.push(DiskFile::Template(template.clone()));
        disks.push(DiskConfig {
            id: "root".into(),
            read_only: true,
        });
        disk_files.push(match spec.kind {
            isolation_policy::Kind::Disposable => DiskFile::Throwaway {
                size_mib: spec.private_disk_mib,
            },
            _ => DiskFile::Private {
                path: crate::private_disk::private_disk_path(&spec.name),
                size_mib: spec.private_disk_mib,
            },
        });
        disks.push(DiskConfig {
            id: PRIVATE_DISK_ID.into(),
            read_only: false,
        });
        guest_config = Some(GuestConfig {
            name: spec.name.clone(),
            app: spec.app.clone().unwrap_or_else(|| DEFAULT_APP.into()),
            keyboard: spec.keyboard.clone(),
        });
    }
    let launch = LaunchConfig {
        name: spec.name.clone(),
        memory_mib: u64::from(spec.memory_mib),
        vcpus: u8::try_from(spec.vcpus).unwrap_or(u8::MAX),
        display: Some(DisplaySize {
            width: spec.display_width,
            height: spec.display_height,
        }),
        boot,
        disks,
        network: NetworkConfig::None,
        agent: AgentChannel::VirtioConsole,
        snapshot_on: None,
        snapshot_on_request: false,
    };
    let network = crate::network::NetworkPlan::of(spec);
    let launch = LaunchConfig {
        network: match network {
            Some(_) => NetworkConfig::Stream,
            None => NetworkConfig::None,
        },
        // Export and failover snapshot a running partition (a restored one gets a new
        // passt and relay; its lease stays good, passt hands out the host's address).
        snapshot_on_request: true,
        ..launch
    };
    let restart = match spec.restart {
        isolation_policy::RestartPolicy::Never => AutoRestart::Never,
        isolation_policy::RestartPolicy::OnCrash => AutoRestart::OnCrash {
            max_retries: MAX_AUTO_RESTARTS,
        },
    };
    LaunchSpec {
        disk_files,
        guest_config,
        resources: resources_of(spec, &launch),
        network,
        resume: Some(crate::saved_state::resume_dir(&spec.name)),
        failover: (spec.restart_from == isolation_policy::RestartFrom::Snapshot
            && launch.snapshot_on_request)
            .then(|| Failover {
                dir: crate::saved_state::failover_dir(&spec.name),
                marker: up_marker(spec, engine).to_string(),
            }),
        ..LaunchSpec::partition(launch, boot_files, restart)
    }
}

/// Where a partition is up enough to be worth continuing from: its app's window (a
/// template partition), the initramfs shell, or the test card's bands.
pub fn up_marker(spec: &PartitionSpec, engine: Engine) -> &'static str {
    match (engine, &spec.template) {
        (Engine::TestCard, _) => crate::disposable::TEST_CARD_MARKER,
        (Engine::Linux, Some(_)) => crate::disposable::APP_READY_MARKER,
        (Engine::Linux, None) => "BULKHEAD-READY",
    }
}

/// What a template partition runs when its config names no app.
pub const DEFAULT_APP: &str = "xterm -fa Monospace -fs 12 -e tmux";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_partition_launches_with_its_resources_and_no_argv_beyond_the_mode() {
        let policy = isolation_policy::Policy::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy"),
        )
        .unwrap()
        .0;
        let spec = policy.spec("work").unwrap();
        let l = launch_spec(&spec, Engine::Linux);
        assert_eq!(l.args, vec![OsString::from("partition")]);
        assert_eq!(l.name(), "work");
        assert_eq!(l.launch.memory_mib, u64::from(spec.memory_mib));
        assert_eq!(l.boot_files, BootFiles::DefaultImage);
        assert!(
            matches!(&l.launch.boot, BootConfig::Linux { cmdline, initrd: true } if cmdline.starts_with(DEFAULT_CMDLINE))
        );
        l.launch.validate().unwrap();
        let card = launch_spec(&spec, Engine::TestCard);
        assert_eq!(card.launch.boot, BootConfig::TestCard);
        assert_eq!(card.boot_files, BootFiles::None);
    }
    #[test]
    fn a_template_partition_gets_the_template_read_only_its_private_disk_and_its_settings() {
        let policy = isolation_policy::Policy::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy"),
        )
        .unwrap()
        .0;
        let mut spec = policy.spec("browser").unwrap();
        spec.template = Some("debian-12".into());
        spec.app = Some("firefox-esr".into());
        let l = launch_spec(&spec, Engine::Linux);
        let ids: Vec<(&str, bool)> = l
            .launch
            .disks
            .iter()
            .map(|d| (d.id.as_str(), d.read_only))
            .collect();
        assert_eq!(ids, [("root", true), ("private", false)]);
        assert_eq!(l.disk_files[0], DiskFile::Template("debian-12".into()));
        assert!(
            matches!(&l.disk_files[1], DiskFile::Private { path, size_mib: 2048 } if path.ends_with("partitions/browser/private.img"))
        );
        assert_eq!(l.guest_config.as_ref().unwrap().app, "firefox-esr");
        l.launch.validate().unwrap();

        spec.kind = isolation_policy::Kind::Disposable;
        let d = launch_spec(&spec, Engine::Linux);
        assert_eq!(d.disk_files[1], DiskFile::Throwaway { size_mib: 2048 });
        // The test card boots no template.
        assert!(launch_spec(&spec, Engine::TestCard).disk_files.is_empty());
    }

    #[test]
    fn the_settings_travel_as_one_more_archive_after_the_initramfs_read_from_the_start() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("initrd");
        std::fs::write(&base, b"BASE-ARCHIVE").unwrap();
        let config = GuestConfig {
            name: "mail".into(),
            app: "claws-mail --select '#mh/Mailbox/inbox'".into(),
            keyboard: "de".into(),
        };
        let mut file = initrd_with_config(&base, &config).unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert!(bytes.starts_with(b"BASE-ARCHIVE"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("etc/bulkhead/partition.conf"));
        assert!(text.contains(r#"BULKHEAD_APP='claws-mail --select '\''#mh/Mailbox/inbox'\'''"#));
        assert!(text.contains("BULKHEAD_KEYMAP='de'"));
    }

    #[test]
    fn a_crash_loop_stops_after_max_retries_within_the_window_and_old_crashes_are_forgotten() {
        let mut h = CrashHistory::default();
        let t0 = Instant::now();
        let delays: Vec<_> = (0..3)
            .map(|i| h.record(t0 + Duration::from_secs(i), 3))
            .collect();
        assert_eq!(
            delays,
            [200, 400, 800].map(|ms| Some(Duration::from_millis(ms)))
        );
        assert_eq!(h.record(t0 + Duration::from_secs(4), 3), None, "a loop");
        // Past the window the early restarts no longer count: back with a short delay.
        let later = t0 + CRASH_WINDOW + Duration::from_secs(10);
        assert_eq!(h.record(later, 3), Some(Duration::from_millis(200)));
    }

    #[test]
    fn the_partitions_limits_come_from_its_policy_and_memory_covers_guest_and_screen() {
        let policy = isolation_policy::Policy::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy"),
        )
        .unwrap()
        .0;
        let mut spec = policy.spec("work").unwrap();
        spec.cpu_weight = 300;
        spec.cpu_max_percent = 50;
        spec.io_max_mib_s = 20;
        spec.memory_min_mib = 300;
        let l = launch_spec(&spec, Engine::TestCard);
        let r = l.resources;
        assert_eq!((r.cpu_weight, r.cpu_max_percent), (300, 50));
        assert_eq!(r.io_max_bytes_per_sec, 20 << 20);
        assert_eq!(r.memory_min_mib, 300);
        // A spec from before the field (0) gets the default floor.
        spec.memory_min_mib = 0;
        let r = launch_spec(&spec, Engine::TestCard).resources;
        assert_eq!(
            r.memory_min_mib,
            isolation_policy::default_memory_min_mib(spec.memory_mib)
        );
        let fb = u64::from(spec.display_width) * u64::from(spec.display_height) * 4;
        assert_eq!(
            r.memory_max_bytes,
            (u64::from(spec.memory_mib) << 20) + fb + crate::cgroup::VMM_ALLOWANCE_BYTES
        );
    }

    #[test]
    fn a_missing_template_is_refused_with_the_command_that_builds_it() {
        let e = open_disk(&DiskFile::Template("no-such-template".into()), true)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("bulkhead template build no-such-template"),
            "{e}"
        );
    }
}
