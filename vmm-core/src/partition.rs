//! `bulkhead-vmm run … --control-fd N`: a partition process run by the supervisor.
//! Follows the sequence documented in [`crate::control`]: handshake, framebuffer memfd,
//! sandbox, `Ready`, wait for `Start`, then damage/serial events out and commands in.

use std::os::fd::{AsFd, RawFd};
use std::sync::mpsc;
use std::time::Duration;

use crate::builder::{self, VmConfig};
use crate::control::{
    self, Command, ControlError, Event, InputDevice, MessageWriter, PartitionEndpoint,
    PartitionStats, VmState,
};
use crate::devices::legacy::SerialSink;
use crate::devices::StopReason;
use crate::sandbox::{self, SandboxConfig, SeccompProfile};
use crate::vmm::RunningPartition;

/// How often damage and serial output are forwarded (about one display frame).
const FRAME: Duration = Duration::from_millis(16);

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("control socket: {0}")]
    Control(#[from] ControlError),
    #[error("{0}")]
    Setup(String),
    #[error("supervisor sent {0} before Start")]
    NotStarted(String),
}

/// Runs a supervised partition; returns the process exit code.
pub fn run_supervised(
    args: &crate::cli::RunArgs,
    control_fd: RawFd,
    build_config: impl FnOnce(SerialSink) -> Result<(kvm_ioctls::Kvm, VmConfig), String>,
) -> Result<i32, PartitionError> {
    // Inherited fds other than stdio and the control socket are someone else's.
    sandbox::close_fds_except(&[control_fd])
        .map_err(|e| PartitionError::Setup(format!("closing inherited fds: {e}")))?;
    // SAFETY: `control_fd` comes from --control-fd, is used only here, and nothing else in
    // this process owns it (every other inherited fd was just closed).
    let stream = unsafe { control::control_stream_from_inherited_fd(control_fd) }?;
    let PartitionEndpoint {
        mut commands,
        mut events,
    } = PartitionEndpoint::handshake(stream, &args.name)?;

    let (serial_tx, serial_rx) = mpsc::channel();
    let mut sink = SerialSink::new(Box::new(std::io::sink()));
    sink.add_tap(serial_tx);
    let (kvm, config) = build_config(sink).map_err(PartitionError::Setup)?;
    let mem_bytes = config.mem_mib << 20;
    let partition =
        builder::build(&kvm, config).map_err(|e| PartitionError::Setup(e.to_string()))?;
    let fb_bytes = match partition.framebuffer() {
        Some(fb) => {
            let event = Event::Framebuffer { layout: fb.layout };
            events.send_with_fds(&event, &[fb.memfd.as_fd()])?;
            fb.memfd.size() as u64
        }
        None => 0,
    };

    confine(mem_bytes, fb_bytes);
    events.send(&Event::State(VmState::Ready))?;
    match commands.recv()?.message {
        Command::Start => {}
        other => {
            return Err(PartitionError::NotStarted(
                format!("{other:?}").chars().take(80).collect(),
            ))
        }
    }
    let running = partition
        .start_with(Some(SeccompProfile::Vcpu))
        .map_err(|e| PartitionError::Setup(e.to_string()))?;
    // Threads made from here on (the control reader) inherit the main thread's filter.
    sandbox::install(SeccompProfile::Main)
        .map_err(|e| PartitionError::Setup(format!("seccomp filter for the main thread: {e}")))?;
    events.send(&Event::State(VmState::Running))?;

    let (cmd_tx, cmd_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || loop {
            let msg = commands.recv().map(|r| r.message);
            let end = msg.is_err();
            if cmd_tx.send(msg).is_err() || end {
                return;
            }
        })
        .map_err(|e| PartitionError::Setup(format!("starting the control thread: {e}")))?;

    Ok(serve(&running, &mut events, &cmd_rx, &serial_rx))
}

/// Applies the process sandbox; each step the host refuses is logged, never silent.
fn confine(mem_bytes: u64, fb_bytes: u64) {
    let keep: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let config = SandboxConfig {
        keep_fds: keep,
        address_space: Some(sandbox::address_space_for_guest(mem_bytes, fb_bytes)),
        ..SandboxConfig::default()
    };
    match sandbox::apply_process_sandbox(&config) {
        Ok(report) => tracing::info!(
            "sandbox: namespaces {:?}, landlock {:?}, {} degraded step(s)",
            report.namespaces,
            report.landlock,
            report.warnings.len()
        ),
        Err(e) => tracing::warn!("sandbox not applied: {e}"),
    }
}

fn serve(
    running: &RunningPartition,
    events: &mut MessageWriter<Event>,
    commands: &mpsc::Receiver<Result<Command, ControlError>>,
    serial: &mpsc::Receiver<Vec<u8>>,
) -> i32 {
    let mut damage_events = 0u64;
    loop {
        if let Some(reason) = running.wait_timeout(FRAME) {
            let _ = forward_output(running, events, serial, &mut damage_events);
            return final_state(events, reason);
        }
        if forward_output(running, events, serial, &mut damage_events).is_err() {
            return 1; // supervisor gone
        }
        loop {
            match commands.try_recv() {
                Ok(Ok(cmd)) => {
                    if let Err(e) = handle(running, events, cmd, &mut damage_events, serial) {
                        tracing::error!("control: {e}");
                        running.stop_handle().request(StopReason::Stopped);
                        return 1;
                    }
                }
                Ok(Err(e)) => {
                    // Closed or malformed: a partition never outlives its supervisor.
                    tracing::error!("control socket: {e}");
                    return 1;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return 1,
            }
        }
    }
}

fn forward_output(
    running: &RunningPartition,
    events: &mut MessageWriter<Event>,
    serial: &mpsc::Receiver<Vec<u8>>,
    damage_events: &mut u64,
) -> Result<(), ControlError> {
    let mut bytes = Vec::new();
    while let Ok(chunk) = serial.try_recv() {
        bytes.extend_from_slice(&chunk);
    }
    for e in Event::serial_chunks(&bytes) {
        events.send(&e)?;
    }
    let rects = running.take_damage().unwrap_or_default();
    if !rects.is_empty() {
        *damage_events += 1;
        for e in Event::damage_chunks(&rects) {
            events.send(&e)?;
        }
    }
    Ok(())
}

fn handle(
    running: &RunningPartition,
    events: &mut MessageWriter<Event>,
    cmd: Command,
    damage_events: &mut u64,
    serial: &mpsc::Receiver<Vec<u8>>,
) -> Result<(), ControlError> {
    cmd.validate()?;
    match cmd {
        Command::Pause => {
            running.pause();
            events.send(&Event::State(VmState::Paused))
        }
        Command::Resume => {
            running.resume();
            events.send(&Event::State(VmState::Running))
        }
        Command::Stop => {
            events.send(&Event::State(VmState::Stopping))?;
            running.stop_handle().request(StopReason::Stopped);
            Ok(())
        }
        Command::Input { events: input } => {
            route_input(running, &input);
            Ok(())
        }
        Command::Screenshot { id } => {
            forward_output(running, events, serial, damage_events)?;
            events.send(&Event::ScreenshotReady { id })
        }
        Command::Stats { id } => {
            let stats = PartitionStats {
                rss_kib: peak_rss_kib(),
                uptime_ms: running.uptime().as_millis() as u64,
                vcpu_exits: 0,
                damage_events: *damage_events,
            };
            events.send(&Event::Stats { id, stats })
        }
        // No guest agent yet: service replies have nobody to go to.
        Command::ServiceReply { .. } => Ok(()),
        Command::Hello { .. } | Command::Start => {
            Err(ControlError::Malformed(serde_json::Error::io(
                std::io::Error::other("Hello/Start after the partition started"),
            )))
        }
    }
}

fn route_input(running: &RunningPartition, input: &[control::InputEvent]) {
    let virtio = running.virtio();
    for kind in [InputDevice::Keyboard, InputDevice::Tablet] {
        let batch: Vec<_> = input
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| crate::devices::virtio::input::InputEvent::new(e.ev_type, e.code, e.value))
            .collect();
        let sender = match kind {
            InputDevice::Keyboard => Some(&virtio.keyboard),
            InputDevice::Tablet => virtio.tablet.as_ref(),
        };
        if let (false, Some(sender)) = (batch.is_empty(), sender) {
            if let Err(e) = sender.send(&batch) {
                // The guest driver is not up yet or its queue is full: input is dropped,
                // like keys pressed before a keyboard is plugged in.
                tracing::debug!("input for {kind:?} dropped: {e}");
            }
        }
    }
}

fn peak_rss_kib() -> u64 {
    // SAFETY: an all-zero rusage is a valid out-buffer; getrusage writes only into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to `usage`, which outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        usage.ru_maxrss.max(0) as u64
    } else {
        0
    }
}

fn final_state(events: &mut MessageWriter<Event>, reason: StopReason) -> i32 {
    let (state, code) = match reason {
        StopReason::PowerOff | StopReason::Reset | StopReason::Stopped => (VmState::PoweredOff, 0),
        StopReason::Crashed(reason) => (VmState::GuestFault { reason }, 3),
    };
    let _ = events.send(&Event::State(state));
    code
}
