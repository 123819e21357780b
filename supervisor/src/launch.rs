//! From resolved partition specs to partition-process launches: the [`LaunchConfig`] a
//! partition process is sent and the files opened for it on this side.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use isolation_policy::PartitionSpec;
use vmm_core::hostcheck::{self, HostError, Virtualization};
use vmm_core::launch::{
    AgentChannel, BootConfig, DisplaySize, LaunchConfig, LaunchFiles, NetworkConfig,
    DEFAULT_CMDLINE,
};

use crate::guest_image::{self, ImageError};

/// Automatic restarts of a crashing partition before it stays crashed.
const MAX_AUTO_RESTARTS: u32 = 3;

/// What to do when a partition's process crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoRestart {
    Never,
    /// Restart automatically, at most `max_retries` times until the next manual start.
    OnCrash {
        max_retries: u32,
    },
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
}

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
    pub disk_files: Vec<PathBuf>,
    pub restart: AutoRestart,
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
            launch,
            boot_files,
            disk_files: Vec::new(),
            restart,
        }
    }

    pub fn name(&self) -> &str {
        &self.launch.name
    }

    /// Opens /dev/kvm (refusing a software-only KVM for Linux), the boot files and the
    /// disks; resolves the default image first when the spec asks for it.
    pub fn open_files(&self) -> Result<LaunchFiles, LaunchFileError> {
        if self.disk_files.len() != self.launch.disks.len() {
            return Err(LaunchFileError::DiskCount {
                disks: self.launch.disks.len(),
                files: self.disk_files.len(),
            });
        }
        let linux = matches!(self.launch.boot, BootConfig::Linux { .. });
        let kvm = if linux {
            hostcheck::open_kvm_device_for_linux()?
        } else {
            hostcheck::open_kvm_device()?.0
        };
        let (kernel, initrd) = match &self.boot_files {
            BootFiles::None => (None, None),
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
            .map(|(path, disk)| open("disk", path, !disk.read_only))
            .collect::<Result<_, _>>()?;
        Ok(LaunchFiles {
            kvm: kvm.into(),
            kernel: kernel.map(|p| open("kernel", &p, false)).transpose()?,
            initrd: initrd.map(|p| open("initrd", &p, false)).transpose()?,
            disks,
            network: None,
        })
    }
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
    let launch = LaunchConfig {
        name: spec.name.clone(),
        memory_mib: u64::from(spec.memory_mib),
        vcpus: u8::try_from(spec.vcpus).unwrap_or(u8::MAX),
        display: Some(DisplaySize {
            width: spec.display_width,
            height: spec.display_height,
        }),
        boot,
        disks: Vec::new(),
        network: NetworkConfig::None,
        agent: AgentChannel::VirtioConsole,
    };
    let restart = match spec.restart {
        isolation_policy::RestartPolicy::Never => AutoRestart::Never,
        isolation_policy::RestartPolicy::OnCrash => AutoRestart::OnCrash {
            max_retries: MAX_AUTO_RESTARTS,
        },
    };
    LaunchSpec::partition(launch, boot_files, restart)
}

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
}
