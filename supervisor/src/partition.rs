//! One supervised partition: its process, the thread reading its events, the thread
//! waiting for it to exit, and everything the GUI may ask about it.
//!
//! Everything a partition sends is untrusted. A message that breaks the protocol cuts
//! that partition off (socket shut, process killed, state `Crashed`); no other partition
//! shares a thread, a lock or a buffer with it.

use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, ExitStatus};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vmm_core::control::{
    check_partition_hello, send_launch, Command, ControlError, Event, MessageReader, MessageWriter,
    SandboxStatus, SnapshotOutcome, VmState, VmStats,
};
use vmm_core::devices::framebuffer::DamageRect;
use vmm_core::launch::BootConfig;
use vmm_core::shm::Memfd;

use super::cgroup::{self, PartitionCgroup, ResourceStatus, Resources};
use super::damage::DamageSet;
use super::framebuffer::SharedFramebuffer;
use super::spawn::{describe_signal, spawn_partition, Pidfd};
use super::{
    AutoRestart, LaunchSpec, LogDir, Notify, PartitionStatus, ProcessState, ServiceRequest,
    SupervisorError,
};

/// A partition that has not said Hello by then is cut off.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A partition that does not read its commands for this long is cut off: a write to
/// its socket blocked this long, or a queued command waited this long to be written.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Commands queued for one partition's writer thread; a partition that lets the queue
/// fill is cut off. Callers never wait on a partition: they only queue.
pub const MAX_QUEUED_COMMANDS: usize = 1024;
/// How long to wait for the kernel to reap a process after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// Serial bytes kept between two polls (the oldest are dropped).
pub const MAX_SERIAL_BUFFER: usize = 64 * 1024;
/// Guest console (virtio-console) bytes kept between two polls (the oldest are dropped).
pub const MAX_CONSOLE_BUFFER: usize = 256 * 1024;
/// Service requests kept between two polls (the oldest are dropped).
pub const MAX_PENDING_SERVICE_REQUESTS: usize = 64;
const MAX_READY_SCREENSHOTS: usize = 16;
/// How long the reaper waits for the event reader to drain after the process exited.
const READER_DRAIN: Duration = Duration::from_secs(1);

pub struct Slot {
    pub spec: LaunchSpec,
    inner: Mutex<Inner>,
    changed: Condvar,
    notify: Notify,
    log_dir: LogDir,
    /// passt and the relay of an online partition ([`crate::network`]).
    pub net: crate::network::NetSlot,
    /// Held while one agent frame's chunks are queued, so frames from different
    /// threads (the app's clipboard, a transfer) never interleave on the link.
    agent_writer: Mutex<()>,
}

#[derive(Default)]
struct Inner {
    state: ProcessState,
    /// Bumped at every spawn, so threads of an earlier process never touch a later one.
    generation: u64,
    pid: Option<u32>,
    /// Set while the process exists (spawned and not yet reaped).
    pidfd: Option<Arc<Pidfd>>,
    /// Commands for the current process's writer thread.
    queue: Option<Arc<SendQueue>>,
    socket: Option<UnixStream>,
    stop_requested: bool,
    killed_after_timeout: bool,
    violation: Option<String>,
    guest_fault: Option<String>,
    /// Start was sent (after the process said Ready).
    started: bool,
    /// How the current process is confined, once it said so (before its guest runs).
    sandbox: Option<SandboxStatus>,
    /// A sandbox step failed: the process exits without running its guest.
    sandbox_failure: Option<String>,
    /// Where the current process's stdout and stderr go.
    log_file: Option<std::path::PathBuf>,
    restarts: u32,
    /// When the automatic restarts happened, for crash-loop protection.
    crashes: crate::launch::CrashHistory,
    /// Limits set while running (the policy editor), replacing the spec's from then on.
    resources: Option<Resources>,
    /// The current process's cgroup, removed when it is reaped.
    cgroup: Option<Arc<PartitionCgroup>>,
    /// Its disks' block devices, for `io.max`.
    disk_devices: Vec<String>,
    resource_status: ResourceStatus,
    framebuffer: Option<Arc<SharedFramebuffer>>,
    /// Damage since the last poll, merged: at most a few rectangles, one screen in all.
    damage: DamageSet,
    damage_events: u64,
    serial: VecDeque<u8>,
    /// Guest console bytes of the current process only (see [`start`]).
    console: VecDeque<u8>,
    services: VecDeque<ServiceRequest>,
    /// The guest agent's link of the current process (see [`crate::agent`]).
    agent: crate::agent::AgentLink,
    screenshots_ready: VecDeque<u64>,
    stats: Option<VmStats>,
    /// The balloon target last sent to the current process, MiB (0: none).
    balloon_target_mib: u32,
    last_exit: Option<String>,
    /// The current process's snapshot at its marker: `None` until it is taken.
    snapshot: Option<Result<std::path::PathBuf, String>>,
    /// The current process continues a snapshot (it was not booted).
    restored: bool,
    /// The current process's snapshot at its marker, if it takes one.
    snapshot_plan: Option<crate::launch::SnapshotPlan>,
    /// Whoever waits for the answer to the [`Command::Snapshot`] in flight, and whether
    /// the partition was paused when it was asked (then it stays paused whatever happens).
    snapshot_request: Option<(mpsc::SyncSender<SnapshotOutcome>, bool)>,
}

impl Slot {
    pub fn new(
        spec: LaunchSpec,
        notify: Notify,
        log_dir: LogDir,
        audit: crate::network::AuditSink,
    ) -> Slot {
        Slot {
            net: crate::network::NetSlot::new(spec.network.clone(), audit),
            agent_writer: Mutex::new(()),
            spec,
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
            notify,
            log_dir,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock must not take the other partitions' queries
        // down with it; the data is plain state that stays consistent per field.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changed.notify_all();
        if let Ok(guard) = self.notify.read() {
            if let Some(f) = guard.as_ref() {
                f();
            }
        }
    }

    pub fn status(&self) -> PartitionStatus {
        let inner = self.lock();
        PartitionStatus {
            state: inner.state.clone(),
            pid: inner.pid.filter(|_| inner.pidfd.is_some()),
            restarts: inner.restarts,
            damage_events: inner.damage_events,
            framebuffer: inner.framebuffer.as_ref().map(|f| f.layout()),
            stats: inner.stats,
            balloon_target_mib: inner.balloon_target_mib,
            last_exit: inner.last_exit.clone(),
            agent: inner.agent.status().clone(),
            killed_after_timeout: inner.killed_after_timeout,
            sandbox: inner.sandbox.clone(),
            log_file: inner.log_file.clone(),
            resources: inner.resource_status.clone(),
            network: self.net.state(),
        }
    }

    /// New limits: written to the running process's cgroup at once, and used by every
    /// later start.
    pub fn set_resources(&self, resources: Resources) -> ResourceStatus {
        let mut inner = self.lock();
        inner.resources = Some(resources);
        if let Some(cg) = inner.cgroup.clone() {
            inner.resource_status = cg.apply(&resources, &inner.disk_devices);
        }
        let status = inner.resource_status.clone();
        drop(inner);
        self.changed();
        status
    }

    /// Guest RAM this partition was launched with, MiB.
    fn guest_mib(&self) -> u32 {
        u32::try_from(self.spec.launch.memory_mib).unwrap_or(u32::MAX)
    }

    /// The balloon as memory balancing sees it, while the guest runs (a paused guest
    /// cannot move its balloon; a stopped one has none).
    pub fn balloon_state(&self) -> Option<crate::memory_balance::BalloonState> {
        let inner = self.lock();
        if inner.state != ProcessState::Running || inner.pidfd.is_none() {
            return None;
        }
        let max_mib = self.guest_mib();
        let min_mib = inner
            .resources
            .unwrap_or(self.spec.resources)
            .memory_min_mib
            .min(max_mib);
        Some(crate::memory_balance::BalloonState {
            name: self.spec.name().to_string(),
            max_mib,
            min_mib,
            target_mib: inner.balloon_target_mib,
            actual_mib: inner.stats.and_then(|s| s.balloon_mib),
        })
    }

    /// Sends a balloon target (MiB the balloon should hold) to the running process.
    /// Refused above the guest's RAM; the minimum is the balancer's to respect, so a
    /// test can force any target.
    pub fn set_balloon(&self, target_mib: u32) -> Result<(), SupervisorError> {
        let memory_mib = self.guest_mib();
        if target_mib > memory_mib {
            return Err(SupervisorError::BalloonTarget {
                name: self.spec.name().to_string(),
                target_mib,
                memory_mib,
            });
        }
        let generation = self.lock().generation;
        send(self, Command::SetBalloon { target_mib })?;
        {
            let mut inner = self.lock();
            // Not if the process was replaced meanwhile: the new one starts empty.
            if inner.generation == generation {
                inner.balloon_target_mib = target_mib;
            }
        }
        self.changed();
        Ok(())
    }

    /// Sends [`Command::Snapshot`] with its two (empty) files and waits at most `timeout`
    /// for the outcome. A written snapshot leaves the guest paused: the caller copies
    /// its writable disks, then resumes it (the caller's drop of the receiver, should it
    /// give up, makes the reader resume it).
    pub fn request_snapshot(
        &self,
        state: std::fs::File,
        memory: std::fs::File,
        timeout: Duration,
    ) -> Result<SnapshotOutcome, SupervisorError> {
        let name = self.spec.name().to_string();
        if !self.spec.launch.snapshot_on_request {
            return Err(SupervisorError::NoSnapshot {
                name,
                reason: crate::saved_state::NOT_ON_REQUEST.into(),
            });
        }
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut inner = self.lock();
            if !matches!(inner.state, ProcessState::Running | ProcessState::Paused) {
                return Err(SupervisorError::NotRunning(name));
            }
            if inner.snapshot_request.is_some() {
                return Err(SupervisorError::NoSnapshot {
                    name,
                    reason: "another snapshot of it is being taken".into(),
                });
            }
            let was_paused = matches!(inner.state, ProcessState::Paused);
            inner.snapshot_request = Some((tx, was_paused));
        }
        let fds = vec![OwnedFd::from(state), OwnedFd::from(memory)];
        if let Err(e) = send_with_fds(self, Command::Snapshot, fds) {
            self.lock().snapshot_request = None;
            return Err(e);
        }
        rx.recv_timeout(timeout)
            .map_err(|e| SupervisorError::NoSnapshot {
                name,
                reason: match e {
                    mpsc::RecvTimeoutError::Timeout => format!("no answer within {timeout:?}"),
                    mpsc::RecvTimeoutError::Disconnected => "its process ended".into(),
                },
            })
    }

    /// Puts another process of this partition (its relay, passt) into its cgroup.
    pub fn add_to_cgroup(&self, pid: u32) -> Result<(), cgroup::CgroupError> {
        match self.lock().cgroup.clone() {
            Some(cg) => cg.add_pid(pid),
            None => Ok(()),
        }
    }

    pub fn is_alive(&self) -> bool {
        self.lock().pidfd.is_some()
    }

    pub fn framebuffer(&self) -> Option<Arc<SharedFramebuffer>> {
        self.lock().framebuffer.clone()
    }

    /// The current process's snapshot at its marker: its directory, or why it failed.
    pub fn snapshot_result(&self) -> Option<Result<std::path::PathBuf, String>> {
        self.lock().snapshot.clone()
    }

    pub fn take_damage(&self) -> Vec<DamageRect> {
        self.lock().damage.take()
    }

    pub fn take_serial(&self) -> Vec<u8> {
        self.lock().serial.drain(..).collect()
    }

    pub fn take_console(&self) -> Vec<u8> {
        self.lock().console.drain(..).collect()
    }

    /// Sends `request` to the guest agent; its answer comes from [`Slot::take_agent_replies`].
    pub fn agent_request(
        &self,
        request: crate::agent::AgentRequest,
    ) -> Result<u32, SupervisorError> {
        let writer = self.agent_writer.lock().unwrap_or_else(|e| e.into_inner());
        let (id, frame) = self
            .lock()
            .agent
            .request(request, Instant::now())
            .map_err(SupervisorError::Agent)?;
        queue_agent_frame(self, &frame)?;
        drop(writer);
        Ok(id)
    }

    pub fn take_agent_replies(&self) -> Vec<crate::agent::AgentReply> {
        self.lock().agent.take_replies(Instant::now())
    }

    /// The answer to file or open-in request `id`, once it came (see
    /// [`crate::agent::AgentLink::take_reply`]).
    pub fn take_agent_reply(&self, id: u32) -> Option<crate::agent::AgentReply> {
        self.lock().agent.take_reply(id, Instant::now())
    }

    /// Files and URLs the guest's user asked to send elsewhere since the last call.
    pub fn take_agent_offers(&self) -> Vec<crate::agent::AgentOffer> {
        self.lock().agent.take_offers()
    }

    /// Ends an offer: its command in the guest prints `outcome`. An offer that is no
    /// longer open (the agent restarted) is not told.
    pub fn agent_outcome(
        &self,
        outcome: crate::agent::OfferOutcome,
    ) -> Result<(), SupervisorError> {
        let writer = self.agent_writer.lock().unwrap_or_else(|e| e.into_inner());
        let frame = self
            .lock()
            .agent
            .outcome(outcome)
            .map_err(|e| SupervisorError::Agent(crate::agent::AgentError::TooLarge(e)))?;
        if let Some(frame) = frame {
            queue_agent_frame(self, &frame)?;
        }
        drop(writer);
        Ok(())
    }

    pub fn take_service_requests(&self) -> Vec<ServiceRequest> {
        self.lock().services.drain(..).collect()
    }

    pub fn take_screenshots_ready(&self) -> Vec<u64> {
        self.lock().screenshots_ready.drain(..).collect()
    }

    /// Waits until `pred` holds or `timeout` passes; returns the last status seen and
    /// whether `pred` held.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&PartitionStatus) -> bool,
    ) -> (PartitionStatus, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if pred(&status) {
                return (status, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (status, false);
            }
            let guard = self.lock();
            // Re-checked at the top of the loop; a short slice bounds a missed wake-up.
            let slice = (deadline - now).min(Duration::from_millis(50));
            drop(self.changed.wait_timeout(guard, slice));
        }
    }
}

/// Spawns the partition process and its two threads.
pub fn start(slot: &Arc<Slot>, reset_restarts: bool) -> Result<(), SupervisorError> {
    let mut inner = slot.lock();
    if inner.pidfd.is_some() {
        return Err(SupervisorError::AlreadyRunning {
            name: slot.spec.name().to_string(),
            pid: inner.pid.unwrap_or(0),
        });
    }
    // A saved state waiting (an imported running partition) is continued, once.
    // Or, after a crash, its failover snapshot; or a cold boot that takes one.
    let resumed = match crate::saved_state::spec_for_start(&slot.spec, !reset_restarts) {
        Ok(resumed) => resumed,
        Err(e) => {
            warn!(partition = %slot.spec.name(), "taking its saved state: {e}; it boots instead");
            None
        }
    };
    let spec = resumed.as_ref().unwrap_or(&slot.spec);
    let mut files = match spec.open_files() {
        Ok(files) => files,
        Err(source) => {
            // Shown where the partition is, not only returned: the app starts partitions
            // off the UI thread and the person needs to see why nothing happened.
            inner.state = ProcessState::Crashed {
                reason: source.to_string(),
            };
            drop(inner);
            slot.changed();
            return Err(SupervisorError::Launch {
                name: slot.spec.name().to_string(),
                source,
            });
        }
    };
    // The network first: the VMM's end of it travels with the other files.
    let log_dir = slot.log_dir.read().ok().and_then(|d| d.clone());
    let started_net = slot.net.start(
        slot.spec.name(),
        &slot.spec.program,
        log_dir,
        Arc::clone(&slot.notify),
    );
    files.network = match started_net {
        Ok(end) => end,
        Err(source) => {
            return Err(SupervisorError::Spawn {
                name: slot.spec.name().to_string(),
                program: crate::network::RELAY_PROGRAM.into(),
                source,
            })
        }
    };
    let disk_devices = cgroup::disk_devices(&files.disks);
    let placed = cgroup::prepare(slot.spec.name());
    let spawned = spawn_partition(spec, placed.as_ref().ok().map(|(_, procs)| procs));
    let (cgroup, resource_status) = match placed {
        Ok((cg, _)) if spawned.is_err() => {
            let _ = cg.remove(Duration::ZERO);
            (None, ResourceStatus::default())
        }
        Ok((cg, _)) => {
            let resources = inner.resources.unwrap_or(slot.spec.resources);
            let status = cg.apply(&resources, &disk_devices);
            (Some(cg), status)
        }
        Err(why) => (None, cgroup::unlimited(slot.spec.name(), why)),
    };
    let spawned = spawned.map_err(|source| {
        slot.net.stop();
        SupervisorError::Spawn {
            name: slot.spec.name().to_string(),
            program: slot.spec.program.clone(),
            source,
        }
    })?;
    let pid = spawned.child.id();
    let io_err = |source: std::io::Error| SupervisorError::Spawn {
        name: slot.spec.name().to_string(),
        program: slot.spec.program.clone(),
        source,
    };
    let log_file = start_log(slot, pid, spawned.output).map_err(io_err)?;
    let reader_stream = spawned.socket.try_clone().map_err(io_err)?;
    let control = spawned.socket.try_clone().map_err(io_err)?;
    spawned
        .socket
        .set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(io_err)?;
    reader_stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io_err)?;
    let mut writer = MessageWriter::new(spawned.socket);
    // Queued in the socket buffer (a few small frames) of a fresh socket, so this does
    // not wait on the partition; it reads them first.
    let hello = send_launch(&mut writer, &spec.launch, files);
    let restored = matches!(spec.launch.boot, BootConfig::Snapshot { .. });
    let queue = Arc::new(SendQueue::default());

    inner.generation += 1;
    let generation = inner.generation;
    if reset_restarts {
        inner.restarts = 0;
        inner.crashes = Default::default();
    }
    inner.cgroup = cgroup.map(Arc::new);
    inner.disk_devices = disk_devices;
    inner.resource_status = resource_status;
    inner.state = ProcessState::Booting;
    inner.pid = Some(pid);
    inner.pidfd = Some(Arc::new(spawned.pidfd));
    if let Some(old) = inner.queue.replace(Arc::clone(&queue)) {
        old.close();
    }
    inner.socket = Some(control);
    inner.stop_requested = false;
    inner.killed_after_timeout = false;
    inner.violation = None;
    inner.guest_fault = None;
    inner.started = false;
    inner.sandbox = None;
    inner.sandbox_failure = None;
    inner.log_file = log_file;
    inner.framebuffer = None;
    inner.damage = DamageSet::default();
    // A new process is a new guest-agent session: bytes of the previous one would
    // splice into its stream mid-message.
    inner.console.clear();
    inner.agent = crate::agent::AgentLink::default();
    inner.stats = None;
    inner.balloon_target_mib = 0;
    inner.snapshot = None;
    inner.snapshot_request = None;
    inner.restored = restored;
    inner.snapshot_plan = spec.snapshot.clone();
    drop(inner);
    info!(partition = %slot.spec.name(), pid, "partition process started");

    let reader = MessageReader::new(reader_stream);
    // Dropped when the reader thread ends, so the reaper can let it drain the last
    // events (a guest fault report, say) before deciding how the process ended.
    let (reader_alive, reader_done) = mpsc::channel::<()>();
    let s = Arc::clone(slot);
    std::thread::Builder::new()
        .name(format!("events-{}", slot.spec.name()))
        .spawn(move || {
            read_events(&s, generation, reader);
            drop(reader_alive);
        })
        .map_err(io_err)?;
    let s = Arc::clone(slot);
    std::thread::Builder::new()
        .name(format!("commands-{}", slot.spec.name()))
        .spawn(move || write_commands(&s, generation, &queue, writer))
        .map_err(io_err)?;
    let s = Arc::clone(slot);
    let child = spawned.child;
    std::thread::Builder::new()
        .name(format!("reaper-{}", slot.spec.name()))
        .spawn(move || reap(&s, generation, child, reader_done))
        .map_err(io_err)?;
    if let Err(e) = hello {
        cut_off(slot, generation, format!("sending Hello failed: {e}"));
    }
    slot.changed();
    Ok(())
}

/// Starts the thread writing the process's output to its log file; returns the file's
/// path, or `None` when there is no log directory or the file cannot be opened (then the
/// output is read and dropped: never the app's stderr, and the partition never blocks on
/// a full pipe).
fn start_log(
    slot: &Slot,
    pid: u32,
    output: OwnedFd,
) -> std::io::Result<Option<std::path::PathBuf>> {
    let name = slot.spec.name().to_string();
    let dir = slot.log_dir.read().ok().and_then(|d| d.clone());
    let opened = dir.map(|dir| {
        let path = crate::log::log_path(&dir, &name);
        (crate::log::open_log(&path), path)
    });
    let (sink, path): (Box<dyn std::io::Write + Send>, _) = match opened {
        Some((Ok(mut file), path)) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // The supervisor's own line, so it is not escaped or limited.
            let _ = std::io::Write::write_all(
                &mut file,
                format!("=== partition {name:?} process {pid} started (unix time {stamp}) ===\n")
                    .as_bytes(),
            );
            (Box::new(file), Some(path))
        }
        Some((Err(e), path)) => {
            warn!(partition = %name, "partition log {}: {e}; its output is dropped", path.display());
            (Box::new(std::io::sink()), None)
        }
        None => {
            warn!(partition = %name, "no state directory for partition logs; its output is dropped");
            (Box::new(std::io::sink()), None)
        }
    };
    std::thread::Builder::new()
        .name(format!("log-{name}"))
        .spawn(move || crate::log::pump(&name, std::fs::File::from(output), sink))?;
    Ok(path)
}

/// Why a command could not be queued.
enum QueueRefused {
    /// The process ended or was cut off.
    Closed,
    /// The partition is not reading: this is why.
    Unresponsive(String),
}

/// One partition's outgoing commands, in order, bounded in count and in age. Filled by
/// [`send`] (any thread, never blocking), drained by that partition's writer thread.
#[derive(Default)]
struct SendQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    commands: VecDeque<(Command, Vec<OwnedFd>, Instant)>,
    closed: bool,
}

impl SendQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, command: Command, fds: Vec<OwnedFd>) -> Result<(), QueueRefused> {
        let mut state = self.lock();
        if state.closed {
            return Err(QueueRefused::Closed);
        }
        if state.commands.len() >= MAX_QUEUED_COMMANDS {
            return Err(QueueRefused::Unresponsive(format!(
                "did not read its control socket: {MAX_QUEUED_COMMANDS} commands queued"
            )));
        }
        if let Some((_, _, queued)) = state.commands.front() {
            let waited = queued.elapsed();
            if waited > SEND_TIMEOUT {
                return Err(QueueRefused::Unresponsive(format!(
                    "did not read its control socket: a command waited {waited:?} (limit {SEND_TIMEOUT:?})"
                )));
            }
        }
        state.commands.push_back((command, fds, Instant::now()));
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next command and when it was queued; `None` once closed.
    fn pop(&self) -> Option<(Command, Vec<OwnedFd>, Instant)> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(next) = state.commands.pop_front() {
                return Some(next);
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Ends the writer thread; queued commands are dropped.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.commands.clear();
        drop(state);
        self.ready.notify_all();
    }
}

/// The writer thread of one process: the only place that waits on its socket.
fn write_commands(
    slot: &Slot,
    generation: u64,
    queue: &SendQueue,
    mut writer: MessageWriter<Command>,
) {
    while let Some((command, fds, queued)) = queue.pop() {
        let waited = queued.elapsed();
        if waited > SEND_TIMEOUT {
            cut_off(
                slot,
                generation,
                format!(
                    "did not read its control socket: a command waited {waited:?} (limit {SEND_TIMEOUT:?})"
                ),
            );
            break;
        }
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        match writer.send_with_fds(&command, &borrowed) {
            Ok(()) => {}
            Err(ControlError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                cut_off(
                    slot,
                    generation,
                    format!("did not read its control socket for {SEND_TIMEOUT:?}"),
                );
                break;
            }
            // The process is gone or going; the reaper reports how.
            Err(e) => {
                warn!(partition = %slot.spec.name(), "sending {}: {e}", command_name(&command));
                break;
            }
        }
    }
    queue.close();
}

/// Queues one command for the partition's writer thread; never waits on the partition.
/// A partition whose queue is full or whose oldest command waited longer than
/// [`SEND_TIMEOUT`] is cut off.
pub fn send(slot: &Slot, command: Command) -> Result<(), SupervisorError> {
    send_with_fds(slot, command, Vec::new())
}

/// Queues one agent frame in console-sized chunks; the caller holds `agent_writer`.
fn queue_agent_frame(slot: &Slot, frame: &[u8]) -> Result<(), SupervisorError> {
    for command in Command::agent_chunks(frame) {
        send(slot, command)?;
    }
    Ok(())
}

/// [`send`] with the fds the command carries (SCM_RIGHTS).
fn send_with_fds(slot: &Slot, command: Command, fds: Vec<OwnedFd>) -> Result<(), SupervisorError> {
    let (queue, generation) = {
        let inner = slot.lock();
        match (&inner.queue, inner.pidfd.is_some()) {
            (Some(q), true) => (Arc::clone(q), inner.generation),
            _ => return Err(SupervisorError::NotRunning(slot.spec.name().to_string())),
        }
    };
    match queue.push(command, fds) {
        Ok(()) => Ok(()),
        Err(QueueRefused::Closed) => Err(SupervisorError::NotRunning(slot.spec.name().to_string())),
        Err(QueueRefused::Unresponsive(reason)) => {
            cut_off(slot, generation, reason.clone());
            Err(SupervisorError::Unresponsive {
                name: slot.spec.name().to_string(),
                reason,
            })
        }
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Hello { .. } => "Hello",
        Command::File { .. } => "File",
        Command::Start => "Start",
        Command::Pause => "Pause",
        Command::Resume => "Resume",
        Command::Stop => "Stop",
        Command::Input { .. } => "Input",
        Command::Screenshot { .. } => "Screenshot",
        Command::Stats { .. } => "Stats",
        Command::ServiceReply { .. } => "ServiceReply",
        Command::ConsoleWrite { .. } => "ConsoleWrite",
        Command::AgentWrite { .. } => "AgentWrite",
        Command::SetBalloon { .. } => "SetBalloon",
        Command::Snapshot => "Snapshot",
    }
}

/// Marks the partition as broken, shuts its socket and kills its process.
pub fn cut_off(slot: &Slot, generation: u64, reason: String) {
    let mut inner = slot.lock();
    if inner.generation != generation || inner.violation.is_some() {
        return;
    }
    warn!(partition = %slot.spec.name(), %reason, "cutting off partition: protocol violation");
    inner.violation = Some(reason.clone());
    inner.state = ProcessState::Crashed {
        reason: format!("protocol violation: {reason}"),
    };
    if let Some(queue) = &inner.queue {
        queue.close();
    }
    if let Some(socket) = &inner.socket {
        let _ = socket.shutdown(Shutdown::Both);
    }
    if let Some(pidfd) = &inner.pidfd {
        if let Err(e) = pidfd.kill() {
            warn!(partition = %slot.spec.name(), "killing cut-off partition: {e}");
        }
    }
    drop(inner);
    slot.changed();
}

fn read_events(slot: &Arc<Slot>, generation: u64, mut reader: MessageReader<Event>) {
    if let Err(reason) = handshake(slot, &mut reader) {
        cut_off(slot, generation, reason);
        return;
    }
    loop {
        let received = match reader.recv() {
            Ok(r) => r,
            Err(e) if e.is_protocol_violation() => {
                cut_off(slot, generation, e.to_string());
                return;
            }
            // Closed or an I/O error: the process is gone or going; the reaper reports.
            Err(_) => return,
        };
        if let Err(reason) = handle_event(slot, generation, received.message, received.fds) {
            cut_off(slot, generation, reason);
            return;
        }
    }
}

fn handshake(slot: &Slot, reader: &mut MessageReader<Event>) -> Result<(), String> {
    let first = match reader.recv() {
        Ok(r) => r.message,
        Err(ControlError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(format!("no Hello within {HANDSHAKE_TIMEOUT:?}"));
        }
        Err(e) if e.is_protocol_violation() => return Err(e.to_string()),
        // Died before saying anything: the reaper reports how.
        Err(_) => return Ok(()),
    };
    let (name, pid) = check_partition_hello(&first).map_err(|e| e.to_string())?;
    if name != slot.spec.name() {
        return Err(format!(
            "says it is partition {name:?}, was started as {:?}",
            slot.spec.name()
        ));
    }
    info!(partition = %name, reported_pid = pid, "partition said hello");
    reader
        .stream()
        .set_read_timeout(None)
        .map_err(|e| format!("clearing the handshake timeout: {e}"))?;
    // Start follows the partition's Ready, once it has said how it is confined.
    Ok(())
}

/// Applies one event; `Err` is a protocol violation.
fn handle_event(
    slot: &Slot,
    generation: u64,
    event: Event,
    fds: Vec<OwnedFd>,
) -> Result<(), String> {
    event.validate().map_err(|e| e.to_string())?;
    let framebuffer = match (&event, fds.into_iter().next()) {
        (Event::Framebuffer { layout }, Some(fd)) => {
            let memfd = Memfd::from_received(fd).map_err(|e| e.to_string())?;
            Some(Arc::new(
                SharedFramebuffer::adopt(*layout, &memfd).map_err(|e| e.to_string())?,
            ))
        }
        _ => None,
    };
    let mut inner = slot.lock();
    if inner.generation != generation {
        return Ok(());
    }
    let mut start = false;
    let mut agent_out = Vec::new();
    let mut snapshot_written = None;
    let mut resume_after = false;
    match event {
        Event::Hello { .. } => return Err("sent Hello twice".to_string()),
        Event::Sandbox(status) => {
            // Sent once, before Ready: after Start its guest runs and its word on its
            // own confinement is worth nothing.
            if inner.sandbox.is_some() || inner.sandbox_failure.is_some() {
                return Err("sent a second sandbox report".to_string());
            }
            if inner.started {
                return Err("sent a sandbox report after it started".to_string());
            }
            match status {
                SandboxStatus::Failed { reason } => {
                    warn!(partition = %slot.spec.name(), %reason, "partition sandbox failed; its guest does not run");
                    inner.sandbox_failure = Some(reason);
                }
                SandboxStatus::Reduced { ref missing } if missing.is_empty() => {
                    return Err("reported a reduced sandbox missing nothing".to_string());
                }
                status => {
                    if let SandboxStatus::Reduced { missing } = &status {
                        warn!(partition = %slot.spec.name(), ?missing, "partition runs with a reduced sandbox");
                    }
                    inner.sandbox = Some(status);
                }
            }
        }
        Event::State(VmState::Ready) => {
            if inner.started {
                return Err("said Ready twice".to_string());
            }
            if inner.sandbox.is_none() {
                return Err("said Ready without reporting a working sandbox".to_string());
            }
            inner.started = true;
            start = true;
        }
        Event::Framebuffer { .. } => {
            if inner.framebuffer.is_some() {
                return Err("offered a second framebuffer".to_string());
            }
            if let Some(fb) = &framebuffer {
                let l = fb.layout();
                inner.damage = DamageSet::new(l.width, l.height);
            }
            inner.framebuffer = framebuffer;
        }
        Event::State(state) => apply_vm_state(&mut inner, state),
        Event::Damage { rects } => {
            let fb = inner
                .framebuffer
                .clone()
                .ok_or("sent damage without a framebuffer")?;
            if let Some(bad) = rects.iter().find(|r| !fb.contains(r)) {
                return Err(format!("damage rectangle {bad:?} lies outside the screen"));
            }
            inner.damage.extend(rects);
            inner.damage_events += 1;
        }
        Event::Serial { bytes } => {
            inner.serial.extend(bytes);
            let excess = inner.serial.len().saturating_sub(MAX_SERIAL_BUFFER);
            inner.serial.drain(..excess);
        }
        Event::Console { bytes } => {
            inner.console.extend(bytes);
            let excess = inner.console.len().saturating_sub(MAX_CONSOLE_BUFFER);
            if excess > 0 {
                warn!(partition = %slot.spec.name(), "console output not taken; dropping the oldest {excess} byte(s)");
                inner.console.drain(..excess);
            }
        }
        Event::Agent { bytes } => {
            // A broken agent is cut off on its own; the partition goes on.
            match inner.agent.feed(&bytes, Instant::now()) {
                Ok(reply) if !reply.is_empty() => agent_out = reply,
                Ok(_) => {}
                Err(reason) => {
                    warn!(partition = %slot.spec.name(), %reason, "cutting off the guest agent")
                }
            }
        }
        Event::ServiceRequest {
            id,
            service,
            argument,
            target,
        } => {
            if inner.services.len() >= MAX_PENDING_SERVICE_REQUESTS {
                warn!(partition = %slot.spec.name(), "service request queue full; dropping the oldest");
                inner.services.pop_front();
            }
            inner.services.push_back(ServiceRequest {
                id,
                service,
                argument,
                target,
            });
        }
        Event::ScreenshotReady { id } => {
            if inner.screenshots_ready.len() >= MAX_READY_SCREENSHOTS {
                inner.screenshots_ready.pop_front();
            }
            inner.screenshots_ready.push_back(id);
        }
        Event::Stats { stats, .. } => inner.stats = Some(stats),
        Event::Snapshot(outcome) if inner.snapshot_request.is_some() => {
            if let Some((waiting, was_paused)) = inner.snapshot_request.take() {
                if let Err(mpsc::TrySendError::Disconnected(SnapshotOutcome::Written { .. })) =
                    waiting.try_send(outcome)
                {
                    // Nobody waits any more: the snapshot is dropped with its
                    // directory by the requester; the guest must not stay paused.
                    resume_after = !was_paused;
                }
            }
        }
        Event::Snapshot(outcome) => {
            // Only a launch that asked for one gets one, once.
            let Some(plan) = &inner.snapshot_plan else {
                return Err("reported a snapshot nobody asked for".to_string());
            };
            if inner.snapshot.is_some() {
                return Err("reported a second snapshot".to_string());
            }
            match outcome {
                SnapshotOutcome::Written { .. } => snapshot_written = Some(plan.clone()),
                SnapshotOutcome::Failed { reason } => {
                    warn!(partition = %slot.spec.name(), %reason, "snapshot at the marker failed; the partition runs on");
                    let _ =
                        std::fs::remove_dir_all(crate::launch::staging_dir(plan, slot.spec.name()));
                    inner.snapshot = Some(Err(reason));
                }
            }
        }
    }
    drop(inner);
    if let Some(plan) = snapshot_written {
        // The partition waits paused: its disks must be copied as its guest saw them.
        let result = finish_snapshot(&plan, slot.spec.name());
        match &result {
            Ok(dir) => {
                info!(partition = %slot.spec.name(), dir = %dir.display(), "snapshot complete")
            }
            Err(e) => warn!(partition = %slot.spec.name(), "completing the snapshot: {e}"),
        }
        {
            let mut inner = slot.lock();
            if inner.generation == generation {
                inner.snapshot = Some(result);
            }
        }
        let _ = send(slot, Command::Resume);
    }
    if resume_after {
        let _ = send(slot, Command::Resume);
    }
    if start {
        // The only failure worth reporting (not reading) cuts the partition off itself.
        let _ = send(slot, Command::Start);
        if slot.lock().restored {
            // A clone of a snapshot: its kernel's random state is every clone's until
            // reseeded, and its agent must say Hello to this process.
            agent_out = restored_agent_frame(slot);
        }
    }
    if !agent_out.is_empty() {
        let writer = slot.agent_writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = queue_agent_frame(slot, &agent_out);
        drop(writer);
    }
    slot.changed();
    Ok(())
}

/// The `Restored` frame for a partition continued from a snapshot (empty if the host has
/// no entropy to give, which it says).
fn restored_agent_frame(slot: &Slot) -> Vec<u8> {
    let entropy = match crate::agent::host_entropy() {
        Ok(e) => e,
        Err(e) => {
            warn!(partition = %slot.spec.name(), "no host entropy for the restored guest: {e}");
            return Vec::new();
        }
    };
    match slot.lock().agent.restored(&entropy) {
        Ok(frame) => frame,
        Err(e) => {
            warn!(partition = %slot.spec.name(), "telling the agent it was restored: {e}");
            Vec::new()
        }
    }
}

/// Copies the plan's disks into the staging directory, then renames it into place
/// (unless another process completed the same snapshot first: then ours is dropped).
fn finish_snapshot(
    plan: &crate::launch::SnapshotPlan,
    partition: &str,
) -> Result<std::path::PathBuf, String> {
    let staging = crate::launch::staging_dir(plan, partition);
    let done = (|| {
        for (source, name) in &plan.copy_disks {
            crate::private_disk::sparse_copy(source, &staging.join(name))
                .map_err(|e| e.to_string())?;
        }
        if plan.dir.exists() && !plan.replace {
            let _ = std::fs::remove_dir_all(&staging);
            return Ok(plan.dir.clone());
        }
        if plan.dir.exists() {
            // The latest replaces the last; a directory under the final name is whole.
            let old = plan.dir.with_extension("old");
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&plan.dir, &old)
                .map_err(|e| format!("moving the last snapshot aside: {e}"))?;
            let placed = std::fs::rename(&staging, &plan.dir);
            let _ = std::fs::remove_dir_all(&old);
            return placed
                .map(|()| plan.dir.clone())
                .map_err(|e| format!("renaming {} into place: {e}", staging.display()));
        }
        std::fs::rename(&staging, &plan.dir)
            .map_err(|e| format!("renaming {} into place: {e}", staging.display()))?;
        Ok(plan.dir.clone())
    })();
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    done
}

fn apply_vm_state(inner: &mut Inner, state: VmState) {
    let alive_state = |inner: &Inner| !matches!(inner.state, ProcessState::Crashed { .. });
    match state {
        VmState::Ready => {}
        VmState::Running if alive_state(inner) && !inner.stop_requested => {
            inner.state = ProcessState::Running
        }
        VmState::Paused if alive_state(inner) && !inner.stop_requested => {
            inner.state = ProcessState::Paused
        }
        VmState::Stopping if alive_state(inner) => inner.state = ProcessState::Stopping,
        VmState::GuestFault { reason } => inner.guest_fault = Some(reason),
        _ => {}
    }
}

/// Waits for the process to end, records how, and restarts it if the policy says so.
fn reap(slot: &Arc<Slot>, generation: u64, mut child: Child, reader_done: mpsc::Receiver<()>) {
    let status = child.wait();
    // The socket reaches end-of-file once the process is gone; bounded in case a
    // descendant still holds it.
    let _ = reader_done.recv_timeout(READER_DRAIN);
    let cgroup = {
        let mut inner = slot.lock();
        if inner.generation == generation {
            inner.resource_status = ResourceStatus::default();
            inner.cgroup.take()
        } else {
            None
        }
    };
    if let Some(cg) = cgroup {
        if let Err(e) = cg.remove(Duration::from_secs(1)) {
            warn!(partition = %slot.spec.name(), "removing its cgroup: {e}");
        }
    }
    let restart_after = {
        let mut inner = slot.lock();
        let (state, exit) = final_state(&inner, status);
        info!(partition = %slot.spec.name(), %exit, "partition process ended");
        inner.state = state;
        inner.last_exit = Some(exit);
        inner.pidfd = None;
        if let Some(queue) = inner.queue.take() {
            queue.close();
        }
        inner.socket = None;
        inner.snapshot_request = None;
        restart_delay(slot, &mut inner)
    };
    // passt and the relay end with the process they served.
    slot.net.stop();
    let plan = slot.lock().snapshot_plan.clone();
    if let Some(plan) = &plan {
        for path in &plan.remove_on_exit {
            let _ = std::fs::remove_file(path);
        }
        // A snapshot still being written when the process died is useless.
        let _ = std::fs::remove_dir_all(crate::launch::staging_dir(plan, slot.spec.name()));
    }
    slot.changed();
    if let Some(delay) = restart_after {
        std::thread::sleep(delay);
        let still_wanted = {
            let inner = slot.lock();
            inner.generation == generation
                && inner.pidfd.is_none()
                && matches!(inner.state, ProcessState::Crashed { .. })
        };
        if still_wanted {
            if let Err(e) = start(slot, false) {
                warn!(partition = %slot.spec.name(), "restart failed: {e}");
                let mut inner = slot.lock();
                inner.state = ProcessState::Crashed {
                    reason: format!("restart failed: {e}"),
                };
                drop(inner);
                slot.changed();
            }
        }
    }
}

fn final_state(inner: &Inner, status: std::io::Result<ExitStatus>) -> (ProcessState, String) {
    use std::os::unix::process::ExitStatusExt;
    let exit = match &status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => describe_signal(sig),
            _ => format!("ended: {s}"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    };
    let exit = if inner.killed_after_timeout {
        format!("{exit} after ignoring the stop request")
    } else {
        exit
    };
    let state = if let Some(v) = &inner.violation {
        ProcessState::Crashed {
            reason: format!("protocol violation: {v}"),
        }
    } else if let Some(why) = &inner.sandbox_failure {
        ProcessState::Crashed {
            reason: format!("sandbox failed, the guest did not run: {why}"),
        }
    } else if inner.stop_requested {
        ProcessState::Stopped
    } else if let Some(fault) = &inner.guest_fault {
        ProcessState::Crashed {
            reason: format!("guest fault: {fault}"),
        }
    } else {
        match status.as_ref().ok().and_then(|s| s.code()) {
            Some(0) => ProcessState::Exited { status: 0 },
            _ => ProcessState::Crashed {
                reason: exit.clone(),
            },
        }
    };
    (state, exit)
}

fn restart_delay(slot: &Slot, inner: &mut Inner) -> Option<Duration> {
    let AutoRestart::OnCrash { max_retries } = slot.spec.restart else {
        return None;
    };
    // A partition that broke the protocol is treated as compromised: it stays off until
    // someone restarts it by hand.
    // Nor does one whose sandbox failed: it would fail the same way again.
    if !matches!(inner.state, ProcessState::Crashed { .. })
        || inner.violation.is_some()
        || inner.sandbox_failure.is_some()
    {
        return None;
    }
    let ProcessState::Crashed { reason } = &inner.state else {
        return None;
    };
    let Some(delay) = inner.crashes.record(Instant::now(), max_retries) else {
        let reason = format!(
            "crash loop: {} automatic restart(s) within {} min, stays stopped until started by hand; last crash: {reason}",
            max_retries,
            crate::launch::CRASH_WINDOW.as_secs() / 60
        );
        warn!(partition = %slot.spec.name(), %reason, "not restarting");
        inner.state = ProcessState::Crashed { reason };
        return None;
    };
    inner.restarts += 1;
    info!(partition = %slot.spec.name(), attempt = inner.restarts, ?delay, "restarting crashed partition");
    Some(delay)
}

/// Asks every slot to stop, waits up to `timeout` in total, then kills the rest.
pub fn stop_slots(slots: &[Arc<Slot>], timeout: Duration) {
    let mut stopping = Vec::new();
    for slot in slots {
        let mut inner = slot.lock();
        if inner.pidfd.is_none() {
            continue;
        }
        inner.stop_requested = true;
        if !matches!(inner.state, ProcessState::Crashed { .. }) {
            inner.state = ProcessState::Stopping;
        }
        drop(inner);
        slot.changed();
        // A partition that cannot take the request is killed below like any other.
        let _ = send(slot, Command::Stop);
        stopping.push(slot);
    }
    let deadline = Instant::now() + timeout;
    for slot in &stopping {
        let left = deadline.saturating_duration_since(Instant::now());
        slot.wait_until(left, |s| s.pid.is_none());
    }
    for slot in &stopping {
        let mut inner = slot.lock();
        let Some(pidfd) = inner.pidfd.clone() else {
            continue;
        };
        inner.killed_after_timeout = true;
        drop(inner);
        warn!(partition = %slot.spec.name(), ?timeout, "partition ignored the stop request; killing it");
        if let Err(e) = pidfd.kill() {
            warn!(partition = %slot.spec.name(), "SIGKILL failed: {e}");
        }
    }
    for slot in &stopping {
        let (_, reaped) = slot.wait_until(KILL_WAIT, |s| s.pid.is_none());
        if !reaped {
            warn!(partition = %slot.spec.name(), "process still not reaped {KILL_WAIT:?} after SIGKILL");
        }
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn a_full_or_stale_queue_is_refused_and_a_closed_one_says_so() {
        let q = SendQueue::default();
        for _ in 0..MAX_QUEUED_COMMANDS {
            assert!(q.push(Command::Pause, Vec::new()).is_ok());
        }
        assert!(matches!(
            q.push(Command::Pause, Vec::new()),
            Err(QueueRefused::Unresponsive(r)) if r.contains("commands queued")
        ));
        assert!(matches!(q.pop(), Some((Command::Pause, _, _))));

        let q = SendQueue::default();
        q.lock().commands.push_back((
            Command::Pause,
            Vec::new(),
            Instant::now() - SEND_TIMEOUT * 2,
        ));
        assert!(matches!(
            q.push(Command::Resume, Vec::new()),
            Err(QueueRefused::Unresponsive(r)) if r.contains("a command waited")
        ));

        q.close();
        assert!(matches!(
            q.push(Command::Pause, Vec::new()),
            Err(QueueRefused::Closed)
        ));
        assert!(q.pop().is_none());
    }
}
