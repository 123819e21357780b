//! The partition run loop: one [`LaunchConfig`] plus its handed-over files become a
//! running VM, either under the supervisor ([`supervised`], the control protocol) or bare
//! ([`bare`], `bulkhead-vmm run`: serial to a file, screenshots, a timeout).
//!
//! Both go through [`vm_config`], so a partition boots the same way however it is run.

pub mod bare;
pub mod supervised;

use kvm_ioctls::Kvm;

use crate::builder::{BootSource, VmConfig};
use crate::devices::legacy::SerialSink;
use crate::devices::virtio::block::DiskConfig;
use crate::devices::virtio::net::NetConfig;
use crate::hostcheck::{self, HostError};
use crate::launch::{
    partition_mac, BootConfig, LaunchConfig, LaunchError, LaunchFiles, NetworkConfig,
};
use crate::layout::{FRAMEBUFFER_ADDR, HIMEM_START};

/// Why a launch config and its files do not make a VM.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("the handed-over /dev/kvm: {0}")]
    Kvm(#[from] HostError),
    #[error("a Linux boot was launched without its kernel file")]
    NoKernel,
    #[error("a stream network was launched without its socket")]
    NoNetworkSocket,
    #[error("a network socket was handed over, but the launch has no network")]
    UnexpectedNetworkSocket,
    #[error("display: {0}")]
    Display(#[from] crate::devices::framebuffer::FramebufferError),
}

/// The network interface a launch config describes, taken out of its files (call before
/// [`vm_config`]).
pub fn network_config(
    launch: &LaunchConfig,
    files: &mut LaunchFiles,
) -> Result<Option<NetConfig>, ConfigError> {
    match (launch.network, files.network.take()) {
        (NetworkConfig::None, None) => Ok(None),
        (NetworkConfig::None, Some(_)) => Err(ConfigError::UnexpectedNetworkSocket),
        (NetworkConfig::Stream, None) => Err(ConfigError::NoNetworkSocket),
        (NetworkConfig::Stream, Some(backend)) => Ok(Some(NetConfig {
            backend,
            mac: partition_mac(&launch.name),
        })),
    }
}

/// The VM a launch config describes, on the files it was handed.
pub fn vm_config(
    launch: &LaunchConfig,
    files: LaunchFiles,
    serial: SerialSink,
) -> Result<(Kvm, VmConfig), ConfigError> {
    launch.validate()?;
    let kvm = hostcheck::kvm_from_device(files.kvm)?;
    let display = launch.display.map(|d| d.layout()).transpose()?;
    let boot = match (&launch.boot, display) {
        (BootConfig::TestCard, Some(fb)) => BootSource::Raw {
            code: crate::microguest::test_card(FRAMEBUFFER_ADDR, fb.width, fb.height),
            load_addr: HIMEM_START,
        },
        (BootConfig::TestCard, None) => return Err(LaunchError::TestCardWithoutDisplay.into()),
        (BootConfig::Linux { cmdline, .. }, _) => BootSource::Linux {
            kernel: files.kernel.ok_or(ConfigError::NoKernel)?,
            initrd: files.initrd,
            cmdline: cmdline.clone(),
        },
    };
    // from_handover() matched one file per configured disk; a bare run opened the same.
    if files.disks.len() != launch.disks.len() {
        return Err(LaunchError::FileCount {
            expected: launch.disks.len(),
            got: files.disks.len(),
        }
        .into());
    }
    Ok((
        kvm,
        VmConfig {
            mem_mib: launch.memory_mib,
            vcpus: launch.vcpus,
            boot,
            display,
            serial,
            disks: launch
                .disks
                .iter()
                .zip(files.disks)
                .map(|(disk, file)| DiskConfig {
                    file,
                    read_only: disk.read_only,
                    id: disk.id.clone(),
                })
                .collect(),
        },
    ))
}
