//! `bulkhead-vmm run`: one partition in this process with no supervisor: serial to a
//! file or stdout, a screenshot at a marker, a timeout. The binary parses the flags into
//! a [`LaunchConfig`] and opens its files; from there it boots like a supervised one, and
//! is sandboxed like one ([`Sandbox::Confine`]) unless `--no-sandbox` says otherwise: the
//! caller enters the PID namespace first thing ([`super::enter_pid_namespace`]), [`run`]
//! opens the screenshot file before confining, and says on stderr which sandbox it got.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::builder;
use crate::devices::framebuffer::write_png;
use crate::devices::legacy::SerialSink;
use crate::devices::StopReason;
use crate::launch::{LaunchConfig, LaunchFiles};
use crate::sandbox::{self, SandboxError, SandboxGap, SeccompProfile};
use crate::snapshot::{Snapshot, SnapshotError, SnapshotFiles};
use kvm_ioctls::Kvm;

/// Whether a bare run confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// As a supervised partition: `pid_gap` is what
    /// [`super::enter_pid_namespace`] reported.
    Confine { pid_gap: Option<SandboxGap> },
    /// `--no-sandbox`: the guest runs in an unconfined process.
    Off,
}

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
    pub sandbox: Sandbox,
    /// Pause and write a snapshot when a marker appears, then end (exit code 0).
    pub snapshot: Option<SnapshotOnMarker>,
}

/// `--snapshot-on MARKER --snapshot-dir DIR`: files created before the guest runs.
pub struct SnapshotOnMarker {
    pub marker: String,
    pub files: SnapshotFiles,
    pub dir: PathBuf,
    /// What the caller needs to restore (the binary's launch flags).
    pub extra: serde_json::Value,
}

/// How a bare run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stopped(StopReason),
    /// Paused at the marker and written to this directory.
    Snapshotted(PathBuf),
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
    #[error("the partition did not run: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("seccomp filter for the main thread: {0}")]
    MainFilter(#[from] sandbox::SeccompError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("--snapshot-on needs --no-sandbox: a confined partition's seccomp filters do not allow reading vCPU state or writing files")]
    SnapshotConfined,
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

/// Runs the partition until it stops, or until it is snapshotted; returns how it ended.
/// Says on stderr how long after `clock` started the vCPUs ran, and where that went.
pub fn run(
    launch: &LaunchConfig,
    mut files: LaunchFiles,
    mut options: BareOptions,
    mut clock: PhaseClock,
) -> Result<Outcome, BareError> {
    if options.snapshot.is_some() && options.sandbox != Sandbox::Off {
        return Err(BareError::SnapshotConfined);
    }
    let serial = serial_sink(&mut options);
    let network = super::network_config(launch, &mut files)?;
    let disks = launch.disks.len();
    let (kvm, config) = super::vm_config(launch, files, serial.0)?;
    let mem_bytes = config.mem_mib << 20;
    let built = builder::build_with_network(&kvm, config, network)?;
    clock.mark("VM built, kernel loaded");
    drive(
        &kvm,
        built,
        mem_bytes,
        options,
        serial.1,
        (clock, false),
        disks,
    )
}

/// `bulkhead-vmm restore DIR`: the partition a snapshot was taken of, continued. `config`
/// comes from [`crate::snapshot::Snapshot::config`] with the reopened disks; the serial
/// sink is replaced by the one `options` asks for. Says on stderr how long the restore
/// took until the vCPUs ran, and where that time went (`clock`'s phases).
pub fn restore(
    kvm: &Kvm,
    snapshot: &mut Snapshot,
    mut config: builder::VmConfig,
    mut options: BareOptions,
    mut clock: PhaseClock,
) -> Result<Outcome, BareError> {
    let serial = serial_sink(&mut options);
    config.serial = serial.0;
    let mem_bytes = config.mem_mib << 20;
    let disks = config.disks.len();
    let built = builder::restore(kvm, config, None, snapshot)?;
    clock.mark("VM rebuilt");
    drive(
        kvm,
        built,
        mem_bytes,
        options,
        serial.1,
        (clock, true),
        disks,
    )
}

/// Milestones since a start, for saying where a restore's time went.
#[derive(Debug)]
pub struct PhaseClock {
    started: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl PhaseClock {
    pub fn start() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            phases: Vec::new(),
        }
    }

    /// Ends the phase called `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// `12.3 ms (a 1.0, b 11.3)`.
    pub fn summary(&self) -> String {
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(name, d)| format!("{name} {:.1}", d.as_secs_f64() * 1000.0))
            .collect();
        format!(
            "{:.1} ms ({})",
            self.started.elapsed().as_secs_f64() * 1000.0,
            phases.join(", ")
        )
    }
}

/// The serial sink `options` asks for, watching for the screenshot or snapshot marker.
fn serial_sink(options: &mut BareOptions) -> (SerialSink, mpsc::Receiver<()>) {
    let out = std::mem::replace(&mut options.serial, Box::new(std::io::sink()));
    let mut serial = SerialSink::new(out);
    let (marker_tx, marker_rx) = mpsc::channel();
    let marker = options
        .screenshot_on
        .as_ref()
        .or(options.snapshot.as_ref().map(|s| &s.marker));
    if let Some(marker) = marker {
        serial.watch_marker(marker, marker_tx);
    }
    (serial, marker_rx)
}

/// Confines (unless told not to), starts and watches a built partition.
fn drive(
    kvm: &Kvm,
    mut built: builder::Partition,
    mem_bytes: u64,
    options: BareOptions,
    marker_rx: mpsc::Receiver<()>,
    (mut clock, restored): (PhaseClock, bool),
    disks: usize,
) -> Result<Outcome, BareError> {
    let started = clock.started();
    let net = built.take_network();
    // Opened now: a confined process opens nothing. Left empty if no shot is taken.
    let mut shot_file = match &options.screenshot {
        Some(path) => Some(File::create(path).map_err(|e| BareError::Screenshot {
            path: path.clone(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let confined = match options.sandbox {
        Sandbox::Confine { pid_gap } => {
            let fb_bytes = built.framebuffer().map_or(0, |fb| fb.memfd.size() as u64);
            let report = super::confine(pid_gap, mem_bytes, fb_bytes)?;
            eprintln!("bulkhead-vmm: {}", super::describe_sandbox(&report));
            true
        }
        Sandbox::Off => {
            eprintln!(
                "bulkhead-vmm: no sandbox (--no-sandbox): the guest runs in an unconfined process"
            );
            false
        }
    };
    clock.mark("confined");
    let partition = built
        .start_with(confined.then_some(SeccompProfile::Vcpu))
        .map_err(|e| BareError::Start(e.to_string()))?;
    // Ends with its device, when the partition is finished; confines itself like the
    // other threads when the partition is confined.
    let _net_worker = net
        .map(|n| n.start(confined))
        .transpose()
        .map_err(|e| BareError::Start(e.to_string()))?;
    if confined {
        sandbox::install(SeccompProfile::Main)?;
    }
    clock.mark("running");
    if restored {
        // From reading the snapshot to running vCPUs (memory is mapped, not read).
        eprintln!(
            "bulkhead-vmm: restored, guest running {} after the restore began",
            clock.summary()
        );
    } else {
        eprintln!(
            "bulkhead-vmm: guest started {} after launch",
            clock.summary()
        );
    }
    let deadline = options.timeout.map(|t| started + t);
    let mut save = |path: &PathBuf| {
        let shot = |reason: String| BareError::Screenshot {
            path: path.clone(),
            reason,
        };
        let file = shot_file
            .take()
            .ok_or_else(|| shot("already taken".to_string()))?;
        let fb = partition
            .framebuffer()
            .ok_or_else(|| shot("the partition has no display".to_string()))?;
        write_png(&fb.layout, &fb.snapshot(), BufWriter::new(file)).map_err(|e| shot(e.to_string()))
    };
    let mut shot_taken = false;
    let reason = loop {
        if let Some(r) = partition.wait_timeout(Duration::from_millis(20)) {
            break r;
        }
        if let Some(snap) = options.snapshot.as_ref() {
            if marker_rx.try_recv().is_ok() {
                let report = partition.snapshot(kvm, &snap.files, disks, snap.extra.clone())?;
                eprintln!(
                    "bulkhead-vmm: snapshot written to {}: state {} bytes, memory {} of {} pages, {} devices{}",
                    snap.dir.display(),
                    report.state_bytes,
                    report.memory_pages_written,
                    report.memory_bytes / 4096,
                    report.devices,
                    if report.unavailable.is_empty() {
                        String::new()
                    } else {
                        format!("; not available on this host: {}", report.unavailable.join(", "))
                    }
                );
                partition.finish();
                return Ok(Outcome::Snapshotted(snap.dir.clone()));
            }
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
    Ok(Outcome::Stopped(match reason {
        StopReason::Stopped => partition.finish(),
        r => {
            partition.finish();
            r
        }
    }))
}
