//! `bulkhead-vmm run`: one partition in this process with no supervisor: serial to a
//! file or stdout, a screenshot at a marker, a timeout. The binary parses the flags into
//! a [`LaunchConfig`] and opens its files; from there it boots like a supervised one.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::builder;
use crate::devices::legacy::SerialSink;
use crate::devices::StopReason;
use crate::launch::{LaunchConfig, LaunchFiles};

/// What a bare run does besides running the guest.
pub struct BareOptions {
    /// Where the serial console goes.
    pub serial: Box<dyn Write + Send>,
    /// Save the framebuffer as PNG: when `screenshot_on` appears on the serial console,
    /// else when the guest stops.
    pub screenshot: Option<PathBuf>,
    pub screenshot_on: Option<String>,
    /// Stop the partition after this long (exit code 4).
    pub timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum BareError {
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    #[error("building the VM: {0}")]
    Build(#[from] builder::BuildError),
    #[error("starting the VM: {0}")]
    Start(String),
    #[error("saving the screenshot {path}: {reason}")]
    Screenshot { path: PathBuf, reason: String },
}

/// How a bare run ended, as its exit code says: 0 the guest powered off or rebooted,
/// 3 the guest crashed, 4 the host stopped it (timeout).
pub fn exit_code(reason: &StopReason) -> (i32, String) {
    match reason {
        StopReason::PowerOff => (0, "partition powered off".to_string()),
        StopReason::Reset => (0, "partition rebooted".to_string()),
        StopReason::Crashed(why) => (3, format!("partition crashed: {why}")),
        StopReason::Stopped => (4, "partition stopped by the host (timeout)".to_string()),
    }
}

/// Runs the partition until it stops; returns why.
pub fn run(
    launch: &LaunchConfig,
    mut files: LaunchFiles,
    options: BareOptions,
) -> Result<StopReason, BareError> {
    let mut serial = SerialSink::new(options.serial);
    let (marker_tx, marker_rx) = mpsc::channel();
    if let Some(marker) = &options.screenshot_on {
        serial.watch_marker(marker, marker_tx);
    }
    let network = super::network_config(launch, &mut files)?;
    let (kvm, config) = super::vm_config(launch, files, serial)?;
    let started = Instant::now();
    let mut partition = builder::build_with_network(&kvm, config, network)?;
    let net = partition.take_network();
    let partition = partition
        .start()
        .map_err(|e| BareError::Start(e.to_string()))?;
    // Ends with its device, when the partition is finished.
    let _net_worker = net
        .map(|n| n.start(false))
        .transpose()
        .map_err(|e| BareError::Start(e.to_string()))?;
    let deadline = options.timeout.map(|t| started + t);
    let save = |path: &PathBuf| {
        partition
            .save_screenshot(path)
            .map_err(|e| BareError::Screenshot {
                path: path.clone(),
                reason: e.to_string(),
            })
    };
    let mut shot_taken = false;
    let reason = loop {
        if let Some(r) = partition.wait_timeout(Duration::from_millis(20)) {
            break r;
        }
        if !shot_taken && marker_rx.try_recv().is_ok() {
            if let Some(path) = &options.screenshot {
                save(path)?;
                tracing::info!("screenshot saved to {}", path.display());
                shot_taken = true;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break StopReason::Stopped;
        }
    };
    if let (Some(path), false) = (
        &options.screenshot,
        shot_taken || options.screenshot_on.is_some(),
    ) {
        save(path)?;
    }
    Ok(match reason {
        StopReason::Stopped => partition.finish(),
        r => {
            partition.finish();
            r
        }
    })
}
