//! The partition run loop: one [`LaunchConfig`] plus its handed-over files become a
//! running VM, either under the supervisor ([`supervised`], the control protocol) or bare
//! ([`bare`], `bulkhead-vmm run`: serial to a file, screenshots, a timeout).
//!
//! Both go through [`vm_config`], so a partition boots the same way however it is run,
//! and both are confined the same way: [`enter_pid_namespace`] first thing, [`confine`]
//! once everything is open and before any guest code runs, then the seccomp profiles per
//! thread. A sandbox step the host supports that fails stops the partition; what the
//! host lacks is reported ([`sandbox_status`], [`describe_sandbox`]).

pub mod bare;
pub mod supervised;

use std::os::fd::RawFd;

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
use crate::sandbox::{
    self, LandlockSupport, Namespaces, PidNamespace, SandboxConfig, SandboxError, SandboxGap,
    SandboxReport, SandboxStepError,
};

/// Forks into a new PID namespace where the host offers one; only the VMM side returns.
/// `Ok(Some(gap))` when the host has none; `Err` when a step it supports failed.
///
/// Call first thing, single-threaded, before any VM exists.
pub fn enter_pid_namespace() -> std::io::Result<Option<SandboxGap>> {
    match sandbox::enter_pid_namespace()? {
        PidNamespace::Entered => {
            tracing::info!("sandbox: PID 1 of a new PID namespace");
            Ok(None)
        }
        PidNamespace::Refused(reason) => {
            tracing::warn!(
                "sandbox reduced: {reason}; the partition shares the host's PID namespace"
            );
            Ok(Some(SandboxGap::PidNamespace))
        }
    }
}

/// Applies the process sandbox to a partition that has opened everything it needs
/// (every fd open now is kept, nothing can be opened later): an address-space cap of
/// guest RAM plus framebuffer plus headroom, namespaces, no `/proc`, not dumpable,
/// Landlock with an empty allowlist. `pid_gap` is what [`enter_pid_namespace`] said; it
/// joins the report's gaps. `Err` names every failed step: do not run the guest.
pub fn confine(
    pid_gap: Option<SandboxGap>,
    mem_bytes: u64,
    fb_bytes: u64,
) -> Result<SandboxReport, SandboxError> {
    let keep = open_fds().map_err(|e| SandboxError {
        failures: vec![SandboxStepError::CloseFds(e)],
    })?;
    let config = SandboxConfig {
        keep_fds: keep,
        address_space: Some(sandbox::address_space_for_guest(mem_bytes, fb_bytes)),
        ..SandboxConfig::default()
    };
    let mut report = sandbox::apply_process_sandbox(&config)?;
    report.gaps.extend(pid_gap);
    report.gaps.sort_unstable();
    report.gaps.dedup();
    Ok(report)
}

/// The fds open now (read before the sandbox hides `/proc`). An error, not an empty
/// list: closing everything would close the control socket too.
fn open_fds() -> std::io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            fds.push(fd);
        }
    }
    Ok(fds)
}

/// The wire form of a confined partition's sandbox.
pub fn sandbox_status(report: &SandboxReport) -> crate::control::SandboxStatus {
    use crate::control::SandboxStatus;
    if report.gaps.is_empty() {
        SandboxStatus::Full
    } else {
        SandboxStatus::Reduced {
            missing: report.gaps.clone(),
        }
    }
}

/// One line for a person: which sandbox the partition got.
pub fn describe_sandbox(report: &SandboxReport) -> String {
    let namespaces = match report.namespaces {
        Namespaces::UserAndAll => "user, mount, IPC, network and UTS namespaces",
        Namespaces::AllWithoutUser => "mount, IPC, network and UTS namespaces (no user namespace)",
        Namespaces::None => "no namespaces",
    };
    let landlock = match &report.landlock {
        LandlockSupport::Available { abi } => format!("Landlock ABI {abi}"),
        LandlockSupport::Unavailable { .. } => "no Landlock".to_string(),
    };
    let proc = if report.proc_hidden {
        "no /proc"
    } else {
        "host /proc visible"
    };
    let what =
        format!("{namespaces}, {proc}, {landlock}, not dumpable, rlimits, seccomp per thread");
    if report.gaps.is_empty() {
        format!("sandbox: full ({what})")
    } else {
        let gaps: Vec<&str> = report.gaps.iter().map(|g| g.describe()).collect();
        format!("sandbox reduced: {} ({what})", gaps.join(", "))
    }
}

/// `text` cut to at most `max` bytes on a character boundary (for capped wire fields).
pub(crate) fn truncate_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

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
    #[error("a snapshot boot was launched without its state and memory files")]
    NoSnapshot,
    #[error("a snapshot marker was launched without the files to write it to")]
    NoSnapshotOutput,
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
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
        // Memory and registers come from the snapshot's files, which the caller took
        // out of `files` first (see supervised::run).
        (BootConfig::Snapshot { .. }, _) => BootSource::Snapshot,
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
