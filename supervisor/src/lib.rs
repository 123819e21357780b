//! The supervisor: one sandboxed `bulkhead-vmm` process per partition, watched from
//! here, used the same way by the desktop app, `bulkhead run` / `bulkhead up` and the
//! lab's test driver. No GUI here.
//!
//! Each partition gets a socket pair (its end inherited as fd 3, `bulkhead-vmm partition
//! --control-fd 3`), its [`LaunchSpec`]'s files opened here and handed over with the
//! launch config in the handshake, a thread reading its events and a thread waiting for
//! it to exit. Callers poll [`Supervisor::statuses`], [`Supervisor::take_damage`] and
//! read pixels through [`Supervisor::framebuffer`] (shared memory, read-only); they drive
//! partitions with the command methods. A partition that dies, is killed, or breaks the
//! protocol becomes `Crashed` with the reason; the others never notice. See
//! `vmm_core::control` for the protocol and the sequence a partition process follows.

pub mod agent;
pub mod bundle;
pub mod cgroup;
pub mod damage;
pub mod disposable;
mod framebuffer;
pub mod guest_image;
pub mod launch;
pub mod log;
pub mod memory_balance;
pub mod network;
mod partition;
pub mod private_disk;
pub mod saved_state;
pub mod services;
mod spawn;
pub mod template;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod transfer;
pub mod usage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::Duration;

use vmm_core::control::{Command, ControlError, InputEvent, VmStats};
/// How a partition process is confined, as it reported before its guest ran.
pub use vmm_core::control::{SandboxGap, SandboxStatus};
use vmm_core::devices::framebuffer::{DamageRect, FramebufferLayout};

pub use damage::MAX_KEPT_DAMAGE_RECTS;
pub use framebuffer::{FramebufferOfferError, SharedFramebuffer};
pub use launch::{AutoRestart, BootFiles, LaunchFileError, LaunchSpec};
pub use partition::{
    HANDSHAKE_TIMEOUT, KILL_WAIT, MAX_CONSOLE_BUFFER, MAX_PENDING_SERVICE_REQUESTS,
    MAX_QUEUED_COMMANDS, MAX_SERIAL_BUFFER, SEND_TIMEOUT,
};
pub use spawn::{signal_name, vm_process, CONTROL_FD};

use partition::Slot;

/// How long [`Supervisor`]'s `Drop` waits for partitions to power off before killing.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a partition's process is in its life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProcessState {
    /// Not started, or stopped on request.
    #[default]
    Stopped,
    /// Process started, guest not running yet.
    Booting,
    Running,
    Paused,
    /// Asked to power off, not exited yet.
    Stopping,
    /// Died, was killed, broke the protocol, or the guest faulted.
    Crashed {
        reason: String,
    },
    /// Ended on its own with this status (the guest powered off).
    Exited {
        status: i32,
    },
}

impl ProcessState {
    pub fn is_crashed(&self) -> bool {
        matches!(self, ProcessState::Crashed { .. })
    }
}

/// A snapshot for polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub state: ProcessState,
    /// Set while the process exists.
    pub pid: Option<u32>,
    /// Automatic restarts since the last manual start.
    pub restarts: u32,
    /// Damage messages received since start (all processes of this partition).
    pub damage_events: u64,
    pub framebuffer: Option<FramebufferLayout>,
    /// The last stats the process answered (see [`Supervisor::request_stats`]); its
    /// `balloon_mib` is what the guest's balloon holds.
    pub stats: Option<VmStats>,
    /// The balloon target last sent to the current process, MiB (0: none; see
    /// [`Supervisor::set_balloon`]).
    pub balloon_target_mib: u32,
    /// How the previous process ended, for a person.
    pub last_exit: Option<String>,
    /// The last stop had to kill the process.
    pub killed_after_timeout: bool,
    /// How the current process is confined, as it reported before its guest ran: the
    /// app shows [`SandboxStatus::Reduced`] as a badge on the partition. `None` until
    /// the report arrives (a partition whose sandbox failed is `Crashed` with the reason).
    pub sandbox: Option<SandboxStatus>,
    /// The current process's stdout and stderr, sanitised ([`log`]).
    pub log_file: Option<PathBuf>,
    /// The current process's cgroup and the limits not in force ([`cgroup`]); the app
    /// shows [`cgroup::ResourceStatus::badge`].
    pub resources: cgroup::ResourceStatus,
    /// The current process's guest agent; [`agent::AgentStatus::CutOff`] says why it
    /// is no longer heard.
    pub agent: agent::AgentStatus,
    /// The partition's network: offline, NAT with its rule count, or down and why.
    pub network: network::NetworkState,
}

impl PartitionStatus {
    /// What the sandbox lacks, for a badge: empty for the full sandbox or no report.
    pub fn sandbox_gaps(&self) -> &[SandboxGap] {
        match &self.sandbox {
            Some(SandboxStatus::Reduced { missing }) => missing,
            _ => &[],
        }
    }
}

/// An inter-partition request from a guest agent, for the policy to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRequest {
    pub id: u64,
    pub service: String,
    pub argument: String,
    pub target: String,
}

/// Called (from supervisor threads) whenever a partition changes; the GUI passes a
/// closure that requests a repaint.
pub type NotifyFn = Arc<dyn Fn() + Send + Sync>;
type Notify = Arc<RwLock<Option<NotifyFn>>>;
/// Where partition logs go; `None` drops their output.
type LogDir = Arc<RwLock<Option<PathBuf>>>;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no partition named {0:?}")]
    UnknownPartition(String),
    #[error("partition name {0:?} appears more than once in the launch list")]
    DuplicateName(String),
    #[error("partition {name:?} is already running (pid {pid})")]
    AlreadyRunning { name: String, pid: u32 },
    #[error("partition {0:?} is not running")]
    NotRunning(String),
    #[error("partition {name:?} cannot start: {source}")]
    Launch {
        name: String,
        source: LaunchFileError,
    },
    #[error("starting partition {name:?} with {}: {source}", program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("partition {name:?}: {source}")]
    Cgroup {
        name: String,
        source: cgroup::CgroupError,
    },
    #[error("partition {name:?} was cut off: it {reason}")]
    Unresponsive { name: String, reason: String },
    #[error("partition {name:?}: sending its firewall rules to its relay: {reason}")]
    Network { name: String, reason: String },
    #[error("sending {command} to partition {name:?}: {source}")]
    Send {
        name: String,
        command: &'static str,
        source: ControlError,
    },
    #[error("{0}")]
    Agent(agent::AgentError),
    #[error("partition {name:?} cannot be snapshotted: {reason}")]
    NoSnapshot { name: String, reason: String },
    #[error("partition {name:?}: a balloon of {target_mib} MiB is more than its {memory_mib} MiB of RAM")]
    BalloonTarget {
        name: String,
        target_mib: u32,
        memory_mib: u32,
    },
}

/// The partitions by name. Behind a lock so disposables can join and leave through a
/// shared `Supervisor`; shared (weakly) with the memory balancer's thread.
type Slots = Arc<RwLock<BTreeMap<String, Arc<Slot>>>>;

/// Owns every partition process; stops them all when dropped.
pub struct Supervisor {
    slots: Slots,
    notify: Notify,
    log_dir: LogDir,
    audit: network::AuditSink,
    next_request_id: AtomicU64,
    /// The memory balancer's thread, once started ([`Supervisor::start_memory_balancing`]).
    balancer: Mutex<Option<Balancer>>,
}

impl Supervisor {
    /// Takes the launch list; starts nothing yet. Partition logs go to
    /// [`log::default_log_dir`] until [`Supervisor::set_log_dir`] says otherwise.
    pub fn new(specs: Vec<LaunchSpec>) -> Result<Supervisor, SupervisorError> {
        let notify: Notify = Arc::new(RwLock::new(None));
        let log_dir: LogDir = Arc::new(RwLock::new(log::default_log_dir()));
        let audit: network::AuditSink = Arc::new(RwLock::new(None));
        let mut slots = BTreeMap::new();
        for spec in specs {
            let name = spec.name().to_string();
            let slot = Arc::new(Slot::new(
                spec,
                Arc::clone(&notify),
                Arc::clone(&log_dir),
                Arc::clone(&audit),
            ));
            if slots.insert(name.clone(), slot).is_some() {
                return Err(SupervisorError::DuplicateName(name));
            }
        }
        Ok(Supervisor {
            slots: Arc::new(RwLock::new(slots)),
            notify,
            log_dir,
            audit,
            next_request_id: AtomicU64::new(1),
            balancer: Mutex::new(None),
        })
    }

    /// Sets the change callback (replacing any earlier one).
    pub fn set_notify(&self, f: NotifyFn) {
        if let Ok(mut guard) = self.notify.write() {
            *guard = Some(f);
        }
    }

    /// Where partition processes started from now on write their output
    /// (`DIR/NAME.log`); `None` drops it.
    pub fn set_log_dir(&self, dir: Option<PathBuf>) {
        if let Ok(mut guard) = self.log_dir.write() {
            *guard = dir;
        }
    }

    /// Where the relays' denials are recorded (`None`: the tracing log only).
    pub fn set_audit_log(&self, log: Option<Arc<isolation_policy::AuditLog>>) {
        if let Ok(mut guard) = self.audit.write() {
            *guard = log;
        }
    }

    /// Replaces an online partition's firewall rules: its running relay applies them to
    /// new connections at once and cuts the existing flows they deny; later starts use
    /// them. `Ok(false)`: the partition is offline (changing that needs a restart).
    pub fn set_network_rules(
        &self,
        name: &str,
        plan: network::NetworkPlan,
    ) -> Result<bool, SupervisorError> {
        self.slot(name)?
            .net
            .set_plan(plan)
            .map_err(|e| SupervisorError::Network {
                name: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// The pids of an online partition's passt and relay while they run (diagnostics,
    /// tests).
    pub fn network_pids(&self, name: &str) -> Result<Option<network::HelperPids>, SupervisorError> {
        Ok(self.slot(name)?.net.pids())
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, SupervisorError> {
        self.slots_read()
            .get(name)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownPartition(name.to_string()))
    }

    /// The slots, readable even if a thread panicked while holding the lock (the map
    /// is only ever inserted into or removed from whole).
    fn slots_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Slot>>> {
        read_slots(&self.slots)
    }

    fn slots_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a partition to the launch list (started with [`Supervisor::start`]).
    pub fn add(&self, spec: LaunchSpec) -> Result<(), SupervisorError> {
        let name = spec.name().to_string();
        let mut slots = self.slots_write();
        if slots.contains_key(&name) {
            return Err(SupervisorError::DuplicateName(name));
        }
        let slot = Arc::new(Slot::new(
            spec,
            Arc::clone(&self.notify),
            Arc::clone(&self.log_dir),
            Arc::clone(&self.audit),
        ));
        slots.insert(name, slot);
        Ok(())
    }

    /// Stops a partition (killing it after `timeout`) and takes it off the list.
    pub fn remove(&self, name: &str, timeout: Duration) -> Result<(), SupervisorError> {
        let slot = self.slot(name)?;
        partition::stop_slots(std::slice::from_ref(&slot), timeout);
        self.slots_write().remove(name);
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.slots_read().keys().cloned().collect()
    }

    /// Starts every partition that is not running; returns the ones that failed.
    pub fn start_all(&self) -> Vec<SupervisorError> {
        let slots: Vec<_> = self.slots_read().values().cloned().collect();
        slots
            .iter()
            .filter(|s| !s.is_alive())
            .filter_map(|s| partition::start(s, true).err())
            .collect()
    }

    pub fn start(&self, name: &str) -> Result<(), SupervisorError> {
        partition::start(&self.slot(name)?, true)
    }

    /// Asks the partition to power off; kills it after `timeout`.
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<(), SupervisorError> {
        partition::stop_slots(std::slice::from_ref(&self.slot(name)?), timeout);
        Ok(())
    }

    /// Stops (if running) and starts again, resetting the automatic-restart count.
    pub fn restart(&self, name: &str, timeout: Duration) -> Result<(), SupervisorError> {
        let slot = self.slot(name)?;
        partition::stop_slots(std::slice::from_ref(&slot), timeout);
        partition::start(&slot, true)
    }

    /// Asks every partition to power off, waits up to `timeout` in total, then kills
    /// the ones still running.
    pub fn stop_all(&self, timeout: Duration) {
        let slots: Vec<_> = self.slots_read().values().cloned().collect();
        partition::stop_slots(&slots, timeout);
    }

    pub fn pause(&self, name: &str) -> Result<(), SupervisorError> {
        partition::send(self.slot(name)?.as_ref(), Command::Pause)
    }

    pub fn resume(&self, name: &str) -> Result<(), SupervisorError> {
        partition::send(self.slot(name)?.as_ref(), Command::Resume)
    }

    /// Sends keyboard/pointer events to one partition (the focused one: the caller
    /// decides focus, nothing here broadcasts).
    pub fn send_input(&self, name: &str, events: &[InputEvent]) -> Result<(), SupervisorError> {
        let slot = self.slot(name)?;
        for command in Command::input_chunks(events) {
            partition::send(&slot, command)?;
        }
        Ok(())
    }

    /// Sends bytes to the guest's first virtio-console (`/dev/hvc0`), split into protocol-sized chunks. The partition holds them, in order and
    /// up to a bound, until the guest reads.
    pub fn console_write(&self, name: &str, bytes: &[u8]) -> Result<(), SupervisorError> {
        let slot = self.slot(name)?;
        for command in Command::console_chunks(bytes) {
            partition::send(&slot, command)?;
        }
        Ok(())
    }

    /// Sends a request to the partition's guest agent; the answer, with the returned id,
    /// comes from [`Supervisor::take_agent_replies`] (a failure after
    /// [`agent::REQUEST_TIMEOUT`] if the agent stays silent).
    pub fn agent_request(
        &self,
        name: &str,
        request: agent::AgentRequest,
    ) -> Result<u32, SupervisorError> {
        self.slot(name)?.agent_request(request)
    }

    pub fn take_agent_replies(
        &self,
        name: &str,
    ) -> Result<Vec<agent::AgentReply>, SupervisorError> {
        Ok(self.slot(name)?.take_agent_replies())
    }

    /// The answer to a file or open-in request `id` sent with
    /// [`Supervisor::agent_request`], once it came.
    pub fn take_agent_reply(
        &self,
        name: &str,
        id: u32,
    ) -> Result<Option<agent::AgentReply>, SupervisorError> {
        Ok(self.slot(name)?.take_agent_reply(id))
    }

    /// Files and URLs the partition's guest user asked to send elsewhere
    /// (`bulkhead-copy`, `bulkhead-move`, `bulkhead-open`) since the last call. Each
    /// must be ended with [`Supervisor::agent_outcome`] (a transfer does it itself).
    pub fn take_agent_offers(&self, name: &str) -> Result<Vec<agent::AgentOffer>, SupervisorError> {
        Ok(self.slot(name)?.take_agent_offers())
    }

    /// Ends an offer of the partition's agent with this outcome.
    pub fn agent_outcome(
        &self,
        name: &str,
        outcome: agent::OfferOutcome,
    ) -> Result<(), SupervisorError> {
        self.slot(name)?.agent_outcome(outcome)
    }

    /// Asks for fresh stats; they appear in [`PartitionStatus::stats`].
    pub fn request_stats(&self, name: &str) -> Result<u64, SupervisorError> {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        partition::send(self.slot(name)?.as_ref(), Command::Stats { id })?;
        Ok(id)
    }

    /// Sets how much of a running partition's RAM its balloon should hold, MiB (0: the
    /// guest gets all of it back). The guest's driver moves there at its own pace;
    /// [`PartitionStatus::stats`]' `balloon_mib` says where it is (after a
    /// [`Supervisor::request_stats`]). Refused above the partition's RAM. The memory
    /// balancer uses this; so can tests, to force a target (the partition's minimum is
    /// the balancer's rule, not checked here).
    pub fn set_balloon(&self, name: &str, target_mib: u32) -> Result<(), SupervisorError> {
        self.slot(name)?.set_balloon(target_mib)
    }

    /// The running partitions' balloons, as memory balancing sees them.
    pub fn balloon_states(&self) -> Vec<memory_balance::BalloonState> {
        running_balloons(&self.slots_read().values().cloned().collect::<Vec<_>>())
    }

    /// One memory-balancing step with these host figures: plans new balloon targets for
    /// the running partitions ([`memory_balance::plan`]) and sends them; returns the
    /// targets that went out. [`Supervisor::start_memory_balancing`] does this every
    /// [`memory_balance::BALANCE_PERIOD`] with `/proc/meminfo`'s figures.
    pub fn balance_memory(&self, host: memory_balance::HostMemory) -> Vec<(String, u32)> {
        let slots: Vec<_> = self.slots_read().values().cloned().collect();
        balance_slots(&slots, host)
    }

    /// Starts balancing memory between the running partitions (the app and `bulkhead
    /// up` do; a supervisor that only drives tests does not): a thread that every
    /// [`memory_balance::BALANCE_PERIOD`] asks each running partition for its stats (so
    /// the balloon sizes shown are current), reads `/proc/meminfo` and applies
    /// [`Supervisor::balance_memory`]. Stops when the supervisor is dropped. Starting it
    /// twice does nothing.
    pub fn start_memory_balancing(&self) -> Result<(), SupervisorError> {
        let mut guard = self.balancer.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let log_dir = Arc::clone(&self.log_dir);
            *guard = Some(
                Balancer::spawn(Arc::downgrade(&self.slots), log_dir).map_err(|source| {
                    SupervisorError::Spawn {
                        name: "memory balancer".into(),
                        program: PathBuf::from("(thread)"),
                        source,
                    }
                })?,
            );
        }
        Ok(())
    }

    /// Asks the partition to flush its damage; when the id shows up in
    /// [`Supervisor::take_screenshots_ready`], the framebuffer is current.
    pub fn request_screenshot(&self, name: &str) -> Result<u64, SupervisorError> {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        partition::send(self.slot(name)?.as_ref(), Command::Screenshot { id })?;
        Ok(id)
    }

    pub fn reply_service(&self, name: &str, id: u64, allowed: bool) -> Result<(), SupervisorError> {
        partition::send(
            self.slot(name)?.as_ref(),
            Command::ServiceReply { id, allowed },
        )
    }

    /// New cgroup limits for a partition: written to its cgroup now if it runs, used at
    /// every later start. Returns what is in force.
    pub fn set_resources(
        &self,
        name: &str,
        resources: cgroup::Resources,
    ) -> Result<cgroup::ResourceStatus, SupervisorError> {
        Ok(self.slot(name)?.set_resources(resources))
    }

    /// The shares and caps `spec` asks for (the policy editor saved it), written to the
    /// partition's cgroup now if it runs. Its memory limit stays that of the guest RAM it
    /// was launched with: a smaller `memory_mib` takes effect at its next start, never
    /// by starving the running guest.
    pub fn set_resources_from(
        &self,
        spec: &isolation_policy::PartitionSpec,
    ) -> Result<cgroup::ResourceStatus, SupervisorError> {
        let slot = self.slot(&spec.name)?;
        Ok(slot.set_resources(launch::resources_of(spec, &slot.spec.launch)))
    }

    /// Puts another process of the partition (its network relay, passt) into its
    /// cgroup; nothing when it has none.
    pub fn add_to_cgroup(&self, name: &str, pid: u32) -> Result<(), SupervisorError> {
        self.slot(name)?
            .add_to_cgroup(pid)
            .map_err(|e| SupervisorError::Cgroup {
                name: name.to_string(),
                source: e,
            })
    }

    pub fn status(&self, name: &str) -> Result<PartitionStatus, SupervisorError> {
        Ok(self.slot(name)?.status())
    }

    pub fn statuses(&self) -> Vec<(String, PartitionStatus)> {
        self.slots_read()
            .iter()
            .map(|(name, slot)| (name.clone(), slot.status()))
            .collect()
    }

    /// The partition's screen, once it has offered one.
    pub fn framebuffer(
        &self,
        name: &str,
    ) -> Result<Option<Arc<SharedFramebuffer>>, SupervisorError> {
        Ok(self.slot(name)?.framebuffer())
    }

    /// Rectangles damaged since the previous call.
    pub fn take_damage(&self, name: &str) -> Result<Vec<DamageRect>, SupervisorError> {
        Ok(self.slot(name)?.take_damage())
    }

    /// Serial console bytes since the previous call (at most [`MAX_SERIAL_BUFFER`]).
    pub fn take_serial(&self, name: &str) -> Result<Vec<u8>, SupervisorError> {
        Ok(self.slot(name)?.take_serial())
    }

    /// Bytes the guest wrote to its virtio-console since the previous call (at most
    /// [`MAX_CONSOLE_BUFFER`]; emptied when the partition process starts again).
    pub fn take_console(&self, name: &str) -> Result<Vec<u8>, SupervisorError> {
        Ok(self.slot(name)?.take_console())
    }

    pub fn take_service_requests(
        &self,
        name: &str,
    ) -> Result<Vec<ServiceRequest>, SupervisorError> {
        Ok(self.slot(name)?.take_service_requests())
    }

    pub fn take_screenshots_ready(&self, name: &str) -> Result<Vec<u64>, SupervisorError> {
        Ok(self.slot(name)?.take_screenshots_ready())
    }

    /// Blocks until `pred` holds for the partition or `timeout` passes; returns the
    /// last status and whether `pred` held. For the CLI and tests; the GUI polls.
    pub fn wait_until(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl FnMut(&PartitionStatus) -> bool,
    ) -> Result<(PartitionStatus, bool), SupervisorError> {
        Ok(self.slot(name)?.wait_until(timeout, pred))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The balancer first: it must not send targets to partitions being stopped.
        if let Ok(mut guard) = self.balancer.lock() {
            guard.take();
        }
        self.stop_all(DEFAULT_STOP_TIMEOUT);
    }
}

fn read_slots(
    slots: &RwLock<BTreeMap<String, Arc<Slot>>>,
) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Slot>>> {
    slots.read().unwrap_or_else(|e| e.into_inner())
}

fn running_balloons(slots: &[Arc<Slot>]) -> Vec<memory_balance::BalloonState> {
    slots.iter().filter_map(|s| s.balloon_state()).collect()
}

/// Plans and sends balloon targets for `slots`; returns what went out, logging each.
fn balance_slots(slots: &[Arc<Slot>], host: memory_balance::HostMemory) -> Vec<(String, u32)> {
    let states = running_balloons(slots);
    let mut sent = Vec::new();
    for (name, target_mib) in memory_balance::plan(host, &states) {
        let Some(slot) = slots.iter().find(|s| s.spec.name() == name) else {
            continue;
        };
        let before = states
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.target_mib);
        match slot.set_balloon(target_mib) {
            Ok(()) if before == target_mib => {
                tracing::debug!(partition = %name, target_mib, "memory balancing: target sent again");
            }
            Ok(()) => {
                tracing::info!(
                    partition = %name,
                    from_mib = before,
                    target_mib,
                    host_available_mib = host.available_mib,
                    host_total_mib = host.total_mib,
                    "memory balancing: balloon target changed"
                );
                sent.push((name, target_mib));
            }
            Err(e) => tracing::warn!(partition = %name, "memory balancing: {e}"),
        }
    }
    sent
}

/// What `bulkhead ps` (another process) shows of each running balloon: written beside
/// the partition's log ([`usage::write_balloon_file`]) when it changed.
fn publish_balloons(
    dir: &std::path::Path,
    running: &[Arc<Slot>],
    shown: &mut BTreeMap<String, usage::BalloonFigures>,
) {
    for slot in running {
        let st = slot.status();
        let Some(pid) = st.pid else { continue };
        let figures = usage::BalloonFigures {
            pid,
            target_mib: st.balloon_target_mib,
            actual_mib: st.stats.and_then(|s| s.balloon_mib).unwrap_or(0),
        };
        let name = slot.spec.name();
        if shown.get(name) != Some(&figures) {
            if let Err(e) = usage::write_balloon_file(dir, name, figures) {
                tracing::debug!(partition = %name, "recording the balloon for `bulkhead ps`: {e}");
            }
            shown.insert(name.to_string(), figures);
        }
    }
}

/// The memory balancer's thread; dropping this stops and joins it.
struct Balancer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Balancer {
    fn spawn(
        slots: Weak<RwLock<BTreeMap<String, Arc<Slot>>>>,
        log_dir: LogDir,
    ) -> std::io::Result<Balancer> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("memory-balancer".into())
            .spawn(move || {
                let mut shown = BTreeMap::new();
                let mut meminfo_failed = false;
                loop {
                    let (lock, wake) = &*flag;
                    let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let (guard, _) = wake
                        .wait_timeout_while(guard, memory_balance::BALANCE_PERIOD, |stop| !*stop)
                        .unwrap_or_else(|e| e.into_inner());
                    if *guard {
                        return;
                    }
                    drop(guard);
                    let Some(slots) = slots.upgrade() else { return };
                    let running: Vec<Arc<Slot>> = read_slots(&slots)
                        .values()
                        .filter(|s| s.balloon_state().is_some())
                        .cloned()
                        .collect();
                    drop(slots);
                    // Fresh `actual` sizes for the next tick and for the launcher.
                    for slot in &running {
                        let _ = partition::send(slot, Command::Stats { id: 0 });
                    }
                    match memory_balance::HostMemory::read() {
                        Ok(host) => {
                            meminfo_failed = false;
                            balance_slots(&running, host);
                        }
                        Err(e) if !meminfo_failed => {
                            meminfo_failed = true;
                            tracing::warn!("memory balancing paused: {e}");
                        }
                        Err(_) => {}
                    }
                    let dir = log_dir.read().ok().and_then(|d| d.clone());
                    if let Some(dir) = dir {
                        publish_balloons(&dir, &running, &mut shown);
                    }
                }
            })?;
        Ok(Balancer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod agent_tests;
#[cfg(test)]
mod services_tests;
#[cfg(test)]
mod tests;
