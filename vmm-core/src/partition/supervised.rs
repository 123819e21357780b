//! `bulkhead-vmm partition --control-fd N`: a partition process run by the supervisor.
//! Follows the sequence documented in [`crate::control`]: handshake (launch config and
//! files in), framebuffer memfd out, sandbox (reported with [`Event::Sandbox`]; a failed
//! step ends the process before the guest runs), `Ready`, wait for `Start`, then
//! damage/serial/console events out and commands (input, console bytes for the guest, …)
//! in.

use std::collections::VecDeque;
use std::os::fd::{AsFd, RawFd};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

use crate::builder;
use crate::control::{
    self, balloon_target_pages, Command, ControlError, Event, InputDevice, Launch, MessageWriter,
    PartitionEndpoint, Received, SandboxStatus, SnapshotOutcome, VmState, VmStats,
    MAX_CONSOLE_CHUNK, MAX_TEXT, PAGES_PER_MIB,
};
use crate::devices::legacy::{SerialSink, SerialTap};
use crate::devices::StopReason;
use crate::launch::BootConfig;
use crate::sandbox::{self, SandboxError, SeccompProfile};
use crate::snapshot::{Snapshot, SnapshotFiles};
use crate::vmm::RunningPartition;

/// How often damage, serial and console output are forwarded (about one display frame).
const FRAME: Duration = Duration::from_millis(16);
/// Host-to-guest console bytes held while the guest does not take them; more is dropped.
const MAX_CONSOLE_PENDING: usize = 64 * 1024;
/// The same for the agent's console: room for a few of the agent protocol's largest
/// frames (256 KiB of clipboard plus header), so a full clipboard paste never drops.
const MAX_AGENT_PENDING: usize = 1024 * 1024;
/// Serial output held between two forwarding passes (one per frame); a guest writing
/// faster than that loses its oldest bytes, never the partition's memory.
const MAX_SERIAL_PENDING: usize = 256 * 1024;
/// Guest console reads forwarded per frame: a guest writing as fast as this loop reads
/// must not keep it from serving commands; the rest waits in the guest's ring.
const MAX_CONSOLE_CHUNKS_PER_FRAME: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("control socket: {0}")]
    Control(#[from] ControlError),
    #[error("closing inherited fds: {0}")]
    CloseFds(std::io::Error),
    #[error("sandbox: entering a PID namespace: {0}")]
    PidNamespace(std::io::Error),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    #[error("building the VM: {0}")]
    Build(#[from] builder::BuildError),
    #[error("starting the VM: {0}")]
    Start(String),
    #[error("seccomp filter for the main thread: {0}")]
    MainFilter(String),
    #[error("starting the control thread: {0}")]
    ControlThread(std::io::Error),
    #[error("supervisor sent {0} before Start")]
    NotStarted(String),
}

/// Runs a supervised partition on the inherited control socket `control_fd`; returns the
/// process exit code.
pub fn run(control_fd: RawFd) -> Result<i32, PartitionError> {
    // Inherited fds other than stdio and the control socket are someone else's.
    sandbox::close_fds_except(&[control_fd]).map_err(PartitionError::CloseFds)?;
    // Before anything opens /dev/kvm or starts a thread (see sandbox::pid_namespace). A
    // failure here ends the process before the handshake: the supervisor shows the exit
    // and this line in the partition's log.
    let pid_gap = super::enter_pid_namespace().map_err(PartitionError::PidNamespace)?;
    // SAFETY: `control_fd` comes from --control-fd, is used only here, and nothing else in
    // this process owns it (every other inherited fd was just closed).
    let stream = unsafe { control::control_stream_from_inherited_fd(control_fd) }?;
    let Launch {
        endpoint: PartitionEndpoint {
            mut commands,
            mut events,
        },
        config: launch,
        files,
    } = PartitionEndpoint::handshake(stream)?;
    name_process(&launch.name);

    let serial_tap = SerialTap::new(MAX_SERIAL_PENDING);
    let mut sink = SerialSink::new(Box::new(std::io::sink()));
    sink.add_tap(serial_tap.clone());
    let mut files = files;
    let network = super::network_config(&launch, &mut files)?;
    let snapshot_in = files.snapshot_in.take();
    let snapshot_out = match (&launch.snapshot_on, files.snapshot_out.take()) {
        (Some(marker), Some(p)) => Some(SnapshotAt {
            marker: marker.as_bytes().to_vec(),
            files: SnapshotFiles::from_files(p.state, p.memory)
                .map_err(super::ConfigError::from)?,
        }),
        (Some(_), None) => return Err(super::ConfigError::NoSnapshotOutput.into()),
        (None, _) => None,
    };
    let snapshots = snapshot_out.is_some() || launch.snapshot_on_request;
    let (kvm, config) = super::vm_config(&launch, files, sink)?;
    let mem_bytes = config.mem_mib << 20;
    let mut partition = match (&launch.boot, snapshot_in) {
        (BootConfig::Snapshot { verify }, Some(p)) => {
            let began = std::time::Instant::now();
            let mut snapshot = Snapshot::from_files(&p.state, p.memory, &kvm, *verify)
                .map_err(super::ConfigError::from)?;
            let restored = builder::restore(&kvm, config, network, &mut snapshot)?;
            eprintln!(
                "bulkhead-vmm: restored from a snapshot in {:.1} ms (memory mapped copy-on-write)",
                began.elapsed().as_secs_f64() * 1e3
            );
            restored
        }
        (BootConfig::Snapshot { .. }, None) => return Err(super::ConfigError::NoSnapshot.into()),
        _ => builder::build_with_network(&kvm, config, network)?,
    };
    let net = partition.take_network();
    let fb_bytes = match partition.framebuffer() {
        Some(fb) => {
            let event = Event::Framebuffer { layout: fb.layout };
            events.send_with_fds(&event, &[fb.memfd.as_fd()])?;
            fb.memfd.size() as u64
        }
        None => 0,
    };

    // Everything the partition needs is open: from here on nothing is opened.
    match super::confine(pid_gap, mem_bytes, fb_bytes) {
        Ok(report) => {
            // To the partition's log (stderr), whatever the log level.
            eprintln!("bulkhead-vmm: {}", super::describe_sandbox(&report));
            events.send(&Event::Sandbox(super::sandbox_status(&report)))?;
        }
        Err(e) => {
            let reason = super::truncate_text(&e.to_string(), MAX_TEXT);
            // Best effort: the exit status says it too.
            let _ = events.send(&Event::Sandbox(SandboxStatus::Failed { reason }));
            return Err(e.into());
        }
    }
    events.send(&Event::State(VmState::Ready))?;
    match commands.recv()?.message {
        Command::Start => {}
        other => {
            return Err(PartitionError::NotStarted(
                format!("{other:?}").chars().take(80).collect(),
            ))
        }
    }
    // A partition that will snapshot reads more of its vCPUs' and VM's state (and sizes
    // its memory file) than one that never does: it gets the wider profiles only then.
    let (vcpu_profile, main_profile) = match snapshots {
        true => (SeccompProfile::VcpuSnapshot, SeccompProfile::MainSnapshot),
        false => (SeccompProfile::Vcpu, SeccompProfile::Main),
    };
    let running = partition
        .start_with(Some(vcpu_profile))
        .map_err(|e| PartitionError::Start(e.to_string()))?;
    // The network worker ends with its device; it confines itself before serving.
    if let Some(n) = net {
        n.start(true)
            .map_err(|e| PartitionError::Start(e.to_string()))?;
    }
    // Threads made from here on (the control reader) inherit the main thread's filter.
    sandbox::install(main_profile).map_err(|e| PartitionError::MainFilter(e.to_string()))?;
    events.send(&Event::State(VmState::Running))?;

    let (cmd_tx, cmd_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || loop {
            let msg = commands.recv();
            let end = msg.is_err();
            if cmd_tx.send(msg).is_err() || end {
                return;
            }
        })
        .map_err(PartitionError::ControlThread)?;

    let snapshots = Snapshots {
        kvm: snapshots.then_some(kvm),
        disks: launch.disks.len(),
        at_marker: snapshot_out.map(|at| MarkerWatch {
            at,
            tail: Vec::new(),
        }),
    };
    Ok(serve(
        &running,
        &mut events,
        &cmd_rx,
        &serial_tap,
        snapshots,
        launch.memory_mib,
    ))
}

/// A snapshot to take when the guest prints `marker` on its serial console.
struct SnapshotAt {
    marker: Vec<u8>,
    files: SnapshotFiles,
}

/// What this partition may snapshot and how.
struct Snapshots {
    /// `/dev/kvm`, kept only by a partition that may snapshot (it reads the host's CPU
    /// fingerprint for the snapshot).
    kvm: Option<kvm_ioctls::Kvm>,
    disks: usize,
    /// The launch's `snapshot_on`, until it is taken.
    at_marker: Option<MarkerWatch>,
}

/// Watches serial output for a marker that may arrive split across chunks.
struct MarkerWatch {
    at: SnapshotAt,
    /// The last `marker.len() - 1` bytes seen, so a marker split across two chunks is
    /// still found.
    tail: Vec<u8>,
}

impl MarkerWatch {
    fn seen(&mut self, bytes: &[u8]) -> bool {
        let keep = self.at.marker.len().saturating_sub(1);
        self.tail.extend_from_slice(bytes);
        let found = self
            .tail
            .windows(self.at.marker.len())
            .any(|w| w == self.at.marker.as_slice());
        let cut = self.tail.len().saturating_sub(keep);
        self.tail.drain(..cut);
        found
    }
}

/// `top` shows this thread's name (`vmm:work`; the kernel keeps 15 bytes), `ps` the
/// supervisor's argv[0] (`bulkhead-vmm: work`), so a person can tell partitions apart.
/// The name was validated in the handshake (ASCII letters, digits, `_.-`).
fn name_process(partition: &str) {
    let name = std::ffi::CString::new(format!("vmm:{partition}"));
    if let Err(e) = name
        .map_err(|e| e.to_string())
        .and_then(|n| rustix::thread::set_name(&n).map_err(|e| e.to_string()))
    {
        tracing::debug!("naming the process: {e}");
    }
}

fn serve(
    running: &RunningPartition,
    events: &mut MessageWriter<Event>,
    commands: &mpsc::Receiver<Result<Received<Command>, ControlError>>,
    serial: &SerialTap,
    snapshots: Snapshots,
    guest_mib: u64,
) -> i32 {
    let mut session = Session {
        running,
        events,
        serial,
        guest_mib,
        damage_events: 0,
        console_out: ConsoleOutbox::new(MAX_CONSOLE_PENDING),
        agent_out: ConsoleOutbox::new(MAX_AGENT_PENDING),
        snapshots,
    };
    loop {
        if let Some(reason) = running.wait_timeout(FRAME) {
            let _ = session.forward_output();
            return final_state(session.events, reason);
        }
        if session.forward_output().is_err() {
            return 1; // supervisor gone
        }
        if let Some(code) = session.handle_commands(commands) {
            return code;
        }
        session.feed_console();
    }
}

/// What the serve loop keeps between frames.
struct Session<'a> {
    running: &'a RunningPartition,
    events: &'a mut MessageWriter<Event>,
    serial: &'a SerialTap,
    /// Guest RAM, MiB: the most a balloon target may be.
    guest_mib: u64,
    damage_events: u64,
    /// [`Command::ConsoleWrite`] bytes the guest has not taken yet.
    console_out: ConsoleOutbox,
    /// [`Command::AgentWrite`] bytes the guest agent has not taken yet.
    agent_out: ConsoleOutbox,
    snapshots: Snapshots,
}

impl Session<'_> {
    /// Handles every command that has arrived; `Some(exit code)` ends the process.
    fn handle_commands(
        &mut self,
        commands: &mpsc::Receiver<Result<Received<Command>, ControlError>>,
    ) -> Option<i32> {
        loop {
            match commands.try_recv() {
                Ok(Ok(Received { message, fds })) => {
                    if let Err(e) = self.handle(message, fds) {
                        tracing::error!("control: {e}");
                        self.running.stop_handle().request(StopReason::Stopped);
                        return Some(1);
                    }
                }
                Ok(Err(e)) => {
                    // Closed or malformed: a partition never outlives its supervisor.
                    tracing::error!("control socket: {e}");
                    return Some(1);
                }
                Err(mpsc::TryRecvError::Empty) => return None,
                Err(mpsc::TryRecvError::Disconnected) => return Some(1),
            }
        }
    }

    fn forward_output(&mut self) -> Result<(), ControlError> {
        self.forward_serial()?;
        self.forward_console()?;
        self.forward_agent()?;
        self.forward_damage()
    }

    fn forward_serial(&mut self) -> Result<(), ControlError> {
        let (bytes, dropped) = self.serial.take();
        if dropped > 0 {
            crate::limited!(
                warn,
                "serial output not forwarded in time: dropped the oldest {dropped} byte(s)"
            );
        }
        for e in Event::serial_chunks(&bytes) {
            self.events.send(&e)?;
        }
        let seen = self
            .snapshots
            .at_marker
            .as_mut()
            .is_some_and(|w| w.seen(&bytes));
        if seen {
            if let Some(watch) = self.snapshots.at_marker.take() {
                self.take_snapshot(Ok(watch.at.files))?;
            }
        }
        Ok(())
    }

    /// [`Command::Snapshot`]: its two fds are the files to write (state, memory).
    fn snapshot_on_request(&mut self, fds: Vec<std::os::fd::OwnedFd>) -> Result<(), ControlError> {
        if self.snapshots.kvm.is_none() {
            return Err(ControlError::Malformed(serde_json::Error::io(
                std::io::Error::other(
                    "Snapshot asked of a partition launched without snapshot_on_request",
                ),
            )));
        }
        let mut fds = fds.into_iter();
        let files = match (fds.next(), fds.next()) {
            (Some(state), Some(memory)) => {
                SnapshotFiles::from_files(std::fs::File::from(state), std::fs::File::from(memory))
                    .map_err(|e| e.to_string())
            }
            _ => Err("Snapshot arrived without its two files".to_string()),
        };
        self.take_snapshot(files)
    }

    /// Pauses, writes the snapshot to the handed-over files and reports it; the guest
    /// stays paused after a written snapshot (the supervisor copies what must match it,
    /// then resumes) and, unless it was paused before, runs on after a failed one.
    fn take_snapshot(&mut self, files: Result<SnapshotFiles, String>) -> Result<(), ControlError> {
        // A guest paused by the supervisor before the snapshot stays paused either way.
        let was_paused = self.running.is_paused();
        let result = match (&self.snapshots.kvm, files) {
            (Some(kvm), Ok(files)) => self
                .running
                .snapshot(kvm, &files, self.snapshots.disks, serde_json::Value::Null)
                .map_err(|e| e.to_string()),
            (None, _) => Err("this partition keeps no /dev/kvm to snapshot with".to_string()),
            (_, Err(e)) => Err(e),
        };
        let outcome = match result {
            Ok(r) => {
                eprintln!(
                    "bulkhead-vmm: snapshot written: state {} bytes, memory {} of {} pages, {} devices",
                    r.state_bytes,
                    r.memory_pages_written,
                    r.memory_bytes / 4096,
                    r.devices
                );
                self.events.send(&Event::State(VmState::Paused))?;
                SnapshotOutcome::Written {
                    state_bytes: r.state_bytes,
                    memory_bytes: r.memory_bytes,
                    memory_pages_written: r.memory_pages_written,
                }
            }
            Err(e) => {
                eprintln!("bulkhead-vmm: snapshot failed: {e}");
                if !was_paused {
                    self.running.resume();
                }
                SnapshotOutcome::Failed {
                    reason: super::truncate_text(&e, MAX_TEXT),
                }
            }
        };
        self.events.send(&Event::Snapshot(outcome))
    }

    /// Sends what the guest wrote to `/dev/hvc0`, one read per [`Event::Console`].
    fn forward_console(&mut self) -> Result<(), ControlError> {
        let console = &self.running.virtio().console;
        forward_stream(console, self.events, |bytes| Event::Console { bytes })
    }

    /// Sends what the guest agent wrote to `/dev/hvc1`, one read per [`Event::Agent`].
    fn forward_agent(&mut self) -> Result<(), ControlError> {
        let agent = &self.running.virtio().agent;
        forward_stream(agent, self.events, |bytes| Event::Agent { bytes })
    }

    fn forward_damage(&mut self) -> Result<(), ControlError> {
        let rects = self.running.take_damage().unwrap_or_default();
        if !rects.is_empty() {
            self.damage_events += 1;
            for e in Event::damage_chunks(&rects) {
                self.events.send(&e)?;
            }
        }
        Ok(())
    }

    /// Hands pending console bytes to the guest, as many as it takes now.
    fn feed_console(&mut self) {
        let console = &self.running.virtio().console;
        // Bytes given to the device before the driver's initial reset would be dropped
        // by that reset, so they wait here until the driver is up.
        if console.is_ready() {
            self.console_out
                .drain(|bytes| console.write_to_guest(bytes));
        }
        let agent = &self.running.virtio().agent;
        if agent.is_ready() {
            self.agent_out.drain(|bytes| agent.write_to_guest(bytes));
        }
    }

    fn queue_console(&mut self, bytes: &[u8]) {
        let dropped = self.console_out.push(bytes);
        if dropped > 0 {
            // The guest decides whether it reads: one line per ConsoleWrite could flood.
            crate::limited!(
                warn,
                "guest console not reading: dropped {dropped} byte(s) for it, \
                 {MAX_CONSOLE_PENDING} already pending"
            );
        }
    }

    fn handle(&mut self, cmd: Command, fds: Vec<std::os::fd::OwnedFd>) -> Result<(), ControlError> {
        cmd.validate()?;
        let running = self.running;
        match cmd {
            Command::Snapshot => self.snapshot_on_request(fds),
            Command::Pause => {
                running.pause();
                self.events.send(&Event::State(VmState::Paused))
            }
            Command::Resume => {
                running.resume();
                self.events.send(&Event::State(VmState::Running))
            }
            Command::Stop => {
                self.events.send(&Event::State(VmState::Stopping))?;
                running.stop_handle().request(StopReason::Stopped);
                Ok(())
            }
            Command::Input { events: input } => {
                route_input(running, &input);
                Ok(())
            }
            Command::ConsoleWrite { bytes } => {
                self.queue_console(&bytes);
                Ok(())
            }
            Command::AgentWrite { bytes } => {
                let dropped = self.agent_out.push(&bytes);
                if dropped > 0 {
                    crate::limited!(
                        warn,
                        "guest agent not reading: dropped {dropped} byte(s) for it, \
                         {MAX_AGENT_PENDING} already pending"
                    );
                }
                Ok(())
            }
            Command::Screenshot { id } => {
                self.forward_output()?;
                self.events.send(&Event::ScreenshotReady { id })
            }
            Command::Stats { id } => self.send_stats(id),
            Command::SetBalloon { target_mib } => {
                self.set_balloon(target_mib);
                Ok(())
            }
            // No guest agent yet: service replies have nobody to go to.
            Command::ServiceReply { .. } => Ok(()),
            Command::Hello { .. } | Command::File { .. } | Command::Start => {
                Err(ControlError::Malformed(serde_json::Error::io(
                    std::io::Error::other("Hello/File/Start after the partition started"),
                )))
            }
        }
    }

    /// Applies a [`Command::SetBalloon`]: a target above the guest's RAM (or a partition
    /// without a balloon) is logged, rate-limited, and otherwise ignored.
    fn set_balloon(&mut self, target_mib: u32) {
        let Some(balloon) = &self.running.virtio().balloon else {
            crate::limited!(warn, target_mib, "balloon target ignored: no balloon");
            return;
        };
        match balloon_target_pages(target_mib, self.guest_mib) {
            Ok(pages) => {
                if balloon.target_pages() != pages {
                    crate::limited!(info, target_mib, "balloon target set");
                }
                balloon.set_target_pages(pages);
            }
            Err(e) => crate::limited!(warn, "balloon target ignored: {e}"),
        }
    }

    fn send_stats(&mut self, id: u64) -> Result<(), ControlError> {
        let stats = VmStats {
            rss_kib: peak_rss_kib(),
            uptime_ms: self.running.uptime().as_millis() as u64,
            vcpu_exits: self.running.vcpu_exits(),
            damage_events: self.damage_events,
            balloon_mib: self
                .running
                .virtio()
                .balloon
                .as_ref()
                .map(|b| b.actual_pages() / PAGES_PER_MIB),
        };
        self.events.send(&Event::Stats { id, stats })
    }
}

/// Forwards what the guest wrote to one console, at most
/// [`MAX_CONSOLE_CHUNKS_PER_FRAME`] reads, one event each.
fn forward_stream(
    console: &crate::devices::virtio::console::ConsoleHandle,
    events: &mut MessageWriter<Event>,
    event: impl Fn(Vec<u8>) -> Event,
) -> Result<(), ControlError> {
    let mut buf = [0u8; MAX_CONSOLE_CHUNK];
    for _ in 0..MAX_CONSOLE_CHUNKS_PER_FRAME {
        let n = console.read_from_guest(&mut buf);
        if n == 0 {
            break;
        }
        events.send(&event(buf[..n].to_vec()))?;
    }
    Ok(())
}

/// [`Command::ConsoleWrite`] bytes waiting for the guest console, in order. Bounded, so
/// a supervisor writing to a guest that never reads cannot grow the process; below the
/// bound nothing is lost while the guest driver is not up or its receive queue is full.
struct ConsoleOutbox {
    pending: VecDeque<u8>,
    cap: usize,
}

impl ConsoleOutbox {
    fn new(cap: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            cap,
        }
    }

    /// Appends what fits under the cap; returns how many bytes did not fit (the newest
    /// ones: dropping from the front would splice the stream mid-message).
    fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.cap - self.pending.len());
        self.pending.extend(&bytes[..n]);
        bytes.len() - n
    }

    /// Offers the pending bytes, oldest first, to `write`, which returns how many it
    /// took; stops at the first write that takes less than offered.
    fn drain(&mut self, mut write: impl FnMut(&[u8]) -> usize) {
        loop {
            let (front, _) = self.pending.as_slices();
            let offered = front.len();
            if offered == 0 {
                return;
            }
            let taken = write(front).min(offered);
            self.pending.drain(..taken);
            if taken < offered {
                return;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.len()
    }
}

fn route_input(running: &RunningPartition, input: &[control::InputEvent]) {
    let virtio = running.virtio();
    for kind in [InputDevice::Keyboard, InputDevice::Tablet] {
        let batch: Vec<_> = input.iter().filter(|e| e.device == kind).copied().collect();
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
    // nix, not rustix: rustix has no getrusage. ru_maxrss is in KiB on Linux.
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|usage| usage.max_rss().max(0) as u64)
        .unwrap_or(0)
}

fn final_state(events: &mut MessageWriter<Event>, reason: StopReason) -> i32 {
    let (state, code) = match reason {
        StopReason::PowerOff | StopReason::Reset | StopReason::Stopped => (VmState::PoweredOff, 0),
        StopReason::Crashed(reason) => (VmState::GuestFault { reason }, 3),
    };
    let _ = events.send(&Event::State(state));
    code
}

#[cfg(test)]
mod tests {
    use super::ConsoleOutbox;

    /// A guest receive queue that takes at most `room` bytes per call.
    fn guest(room: usize, got: &mut Vec<u8>) -> impl FnMut(&[u8]) -> usize + '_ {
        move |bytes| {
            let n = bytes.len().min(room);
            got.extend_from_slice(&bytes[..n]);
            n
        }
    }

    #[test]
    fn console_bytes_wait_while_the_guest_takes_nothing() {
        let mut out = ConsoleOutbox::new(100);
        assert_eq!(out.push(b"hello"), 0);
        let mut got = Vec::new();
        out.drain(guest(0, &mut got));
        assert!(got.is_empty());
        assert_eq!(out.len(), 5);
        out.drain(guest(usize::MAX, &mut got));
        assert_eq!(got, b"hello");
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn console_bytes_reach_the_guest_in_order_across_short_writes() {
        let mut out = ConsoleOutbox::new(64);
        let sent: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let mut got = Vec::new();
        // Pushing while bytes are pending wraps the ring buffer, so drains see it in two
        // slices; order must survive that.
        let mut rest = &sent[..];
        for room in [0, 7, 20].into_iter().cycle() {
            if rest.is_empty() && out.len() == 0 {
                break;
            }
            let n = rest.len().min(13).min(64 - out.len());
            assert_eq!(out.push(&rest[..n]), 0);
            rest = &rest[n..];
            out.drain(guest(room, &mut got));
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn console_bytes_over_the_cap_are_dropped_and_counted() {
        let mut out = ConsoleOutbox::new(8);
        assert_eq!(out.push(b"12345"), 0);
        assert_eq!(out.push(b"6789ab"), 3);
        assert_eq!(out.push(b"c"), 1);
        let mut got = Vec::new();
        out.drain(guest(usize::MAX, &mut got));
        assert_eq!(got, b"12345678", "the oldest bytes are kept, in order");
        assert_eq!(out.push(b"after"), 0, "room again once the guest read");
    }
}
