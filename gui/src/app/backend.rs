//! The boundary between the app and whatever runs a partition.
//!
//! The supervisor implements [`PartitionBackend`] for real partition processes (framebuffer
//! in shared memory mapped read-only, damage and state over the control socket). Until then,
//! and on hosts without hardware virtualization, [`SoftwareBackend`] shows a host-drawn
//! test card and is labelled as such everywhere.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the app asks a partition's guest agent, and its answers.
pub use bulkhead_supervisor::agent::{AgentReply, AgentRequest, Clipboard};

use crate::display::software::{Pattern, SoftwareSource};
use crate::display::{FrameView, FramebufferLayout};
use crate::input::UserInput;
pub use bulkhead_supervisor::network::NetworkState;

use super::model::{PartitionInfo, PartitionState, PartitionStats, SourceKind};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    #[error("cannot {action} partition `{name}` while it is {state}")]
    InvalidTransition {
        name: String,
        action: &'static str,
        state: &'static str,
    },
    #[error("partition `{name}`: {message}")]
    Process { name: String, message: String },
    #[error("partition `{name}` input queue is full; dropped {dropped} events")]
    InputQueueFull { name: String, dropped: usize },
}

/// One partition as the app drives it. Every call is made from the UI thread once per
/// frame at most and must not block: long work belongs on the backend's own threads.
pub trait PartitionBackend {
    fn info(&self) -> &PartitionInfo;
    fn state(&self) -> PartitionState;
    fn stats(&self) -> PartitionStats;
    /// What the running partition's sandbox lacks on this host ("no Landlock", …), as
    /// its process reported before its guest ran; empty for the full sandbox, or when
    /// nothing runs. Shown as a badge ([`super::model::sandbox_badge`]).
    fn sandbox_gaps(&self) -> Vec<String> {
        Vec::new()
    }
    /// What of the partition's resource limits is not in force while it runs ("no
    /// resource limits: …"), shown as a badge like the sandbox's; `None` when all are,
    /// or when nothing runs.
    fn resource_badge(&self) -> Option<String> {
        None
    }
    /// The partition's network: offline (no device), NAT with its rule count, or down
    /// and why. Shown on the partition in the launcher; `None` for a source that is not
    /// a partition (no network to speak of).
    fn network(&self) -> Option<NetworkState> {
        None
    }
    /// The policy was saved: apply what may change while the partition runs (its
    /// firewall rules, for new connections within a second; its CPU and disk shares
    /// and caps).
    fn apply_policy(&mut self, _policy: &isolation_policy::Policy) -> Result<(), BackendError> {
        Ok(())
    }

    fn start(&mut self) -> Result<(), BackendError>;
    fn stop(&mut self) -> Result<(), BackendError>;
    fn pause(&mut self) -> Result<(), BackendError>;
    fn resume(&mut self) -> Result<(), BackendError>;
    fn restart(&mut self) -> Result<(), BackendError>;

    /// Called at the start of every frame: collect state changes, damage, serial output.
    fn poll(&mut self);
    /// The framebuffer (read-only) and the damage since the last call; `None` when the
    /// partition has no display right now.
    fn frame(&mut self) -> Option<FrameView<'_>>;
    /// Appends serial console bytes received since the last call.
    fn read_serial(&mut self, out: &mut Vec<u8>);
    /// Queues input for the guest's virtio-input device.
    fn send_input(&mut self, events: &[UserInput]) -> Result<(), BackendError>;
    /// Gives the backend a way to wake the UI when something changes off-frame.
    fn set_waker(&mut self, _ctx: egui::Context) {}

    /// Sends a request to the partition's guest agent; the answer with the returned id
    /// comes from [`PartitionBackend::take_agent_replies`]. A source without an agent
    /// refuses.
    fn agent_request(&mut self, _request: AgentRequest) -> Result<u32, BackendError> {
        Err(BackendError::Process {
            name: self.info().name.clone(),
            message: "has no guest agent".into(),
        })
    }
    /// Answers of the agent since the last call.
    /// A disposable: its slot goes when its process ends ([`PartitionBackend::discard`]).
    fn is_disposable(&self) -> bool {
        false
    }

    /// Whether a disposable can be made of this partition (launcher's button).
    fn offers_disposable(&self) -> bool {
        false
    }

    /// The disposable ended and its slot goes: forget it wherever it is kept.
    fn discard(&mut self) {}

    /// Whether [`PartitionBackend::state_saver`] would give a saver, without making one.
    fn can_save_state(&self) -> Result<(), String> {
        self.state_saver().map(|_| ())
    }

    /// How to save this partition's state while it runs (for Export…), or why it
    /// cannot be; only real partitions can.
    fn state_saver(&self) -> Result<crate::bundle::StateSaver, String> {
        Err("only a real partition has a state to save".into())
    }

    fn take_agent_replies(&mut self) -> Vec<AgentReply> {
        Vec::new()
    }
}

/// Start-up takes this many polls, so "booting" is visible like a real partition's.
const BOOT_POLLS: u32 = 3;
/// Inputs kept for a software source, which has no guest to consume them.
const INPUT_LOG: usize = 256;

/// A display source drawn by the host. Not a partition: no guest, no isolation.
#[derive(Debug)]
pub struct SoftwareBackend {
    info: PartitionInfo,
    pattern: Pattern,
    state: PartitionState,
    source: Option<SoftwareSource>,
    serial: Vec<u8>,
    started: Option<Instant>,
    boot_polls: u32,
    boot_length: u32,
    busy: Duration,
    cpu_window: (Instant, Duration),
    cpu_percent: f32,
    inputs: Arc<Mutex<Vec<UserInput>>>,
}

impl SoftwareBackend {
    /// `info.source` is forced to [`SourceKind::SoftwareFramebuffer`]: this type can never
    /// present itself as a partition.
    pub fn new(mut info: PartitionInfo, pattern: Pattern) -> Self {
        info.source = SourceKind::SoftwareFramebuffer;
        Self {
            info,
            pattern,
            state: PartitionState::Stopped,
            source: None,
            serial: Vec::new(),
            started: None,
            boot_polls: 0,
            boot_length: BOOT_POLLS,
            busy: Duration::ZERO,
            cpu_window: (Instant::now(), Duration::ZERO),
            cpu_percent: 0.0,
            inputs: Arc::default(),
        }
    }

    /// How many polls start-up takes (a slow-booting source stays visibly "booting").
    pub fn with_boot_polls(mut self, polls: u32) -> Self {
        self.boot_length = polls;
        self
    }

    /// Puts the source in the crashed state, as a partition process that died would be.
    pub fn simulate_crash(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        self.log(&format!("source crashed: {reason}"));
        self.state = PartitionState::Crashed { reason };
        self.source = None;
        self.started = None;
    }

    /// Skips the booting polls (tests and the benchmark want `Running` at once).
    pub fn start_running(&mut self) -> Result<(), BackendError> {
        self.start()?;
        self.boot_polls = self.boot_length;
        self.state = PartitionState::Running;
        Ok(())
    }

    /// The input events this source received, newest last (what a guest would have seen).
    /// Shared, so a test can keep watching after the backend was handed to the app.
    pub fn input_log(&self) -> Arc<Mutex<Vec<UserInput>>> {
        Arc::clone(&self.inputs)
    }

    pub fn set_pattern(&mut self, pattern: Pattern) {
        self.pattern = pattern;
        if let Some(s) = self.source.as_mut() {
            s.set_pattern(pattern);
        }
    }

    fn log(&mut self, line: &str) {
        self.serial
            .extend_from_slice(format!("[{}] {line}\r\n", self.info.name).as_bytes());
    }

    fn refuse(&self, action: &'static str) -> BackendError {
        BackendError::InvalidTransition {
            name: self.info.name.clone(),
            action,
            state: self.state.word(),
        }
    }

    fn layout(&self) -> Result<FramebufferLayout, BackendError> {
        let (w, h) = self.info.display;
        FramebufferLayout::new(w, h).map_err(|e| BackendError::Process {
            name: self.info.name.clone(),
            message: e.to_string(),
        })
    }

    fn update_cpu(&mut self, spent: Duration) {
        self.busy += spent;
        let (since, busy_then) = self.cpu_window;
        let wall = since.elapsed();
        if wall >= Duration::from_secs(1) {
            self.cpu_percent = (self.busy - busy_then).as_secs_f32() / wall.as_secs_f32() * 100.0;
            self.cpu_window = (Instant::now(), self.busy);
        }
    }
}

impl PartitionBackend for SoftwareBackend {
    fn info(&self) -> &PartitionInfo {
        &self.info
    }

    fn state(&self) -> PartitionState {
        self.state.clone()
    }

    fn stats(&self) -> PartitionStats {
        let fb_mib = self.source.as_ref().map_or(0, |s| {
            u32::try_from(s.layout().bytes().div_ceil(1 << 20)).unwrap_or(u32::MAX)
        });
        PartitionStats {
            memory_mib: fb_mib,
            vcpus: 0,
            cpu_percent: self.cpu_percent,
            uptime: self.started.map_or(Duration::ZERO, |t| t.elapsed()),
            balloon_mib: None,
        }
    }

    fn start(&mut self) -> Result<(), BackendError> {
        if !self.state.can_start() {
            return Err(self.refuse("start"));
        }
        let layout = self.layout()?;
        self.source = Some(SoftwareSource::new(layout, self.pattern));
        self.state = PartitionState::Booting;
        self.started = Some(Instant::now());
        self.boot_polls = 0;
        self.log(&format!(
            "software framebuffer {}x{} started: host-drawn test card, no guest, not a partition",
            layout.width, layout.height
        ));
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        if self.state == PartitionState::Stopped {
            return Err(self.refuse("stop"));
        }
        self.state = PartitionState::Stopped;
        self.source = None;
        self.started = None;
        self.log("stopped");
        Ok(())
    }

    fn pause(&mut self) -> Result<(), BackendError> {
        if self.state != PartitionState::Running {
            return Err(self.refuse("pause"));
        }
        self.state = PartitionState::Paused;
        self.log("paused");
        Ok(())
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        if self.state != PartitionState::Paused {
            return Err(self.refuse("resume"));
        }
        self.state = PartitionState::Running;
        self.log("resumed");
        Ok(())
    }

    fn restart(&mut self) -> Result<(), BackendError> {
        if self.state != PartitionState::Stopped {
            self.state = PartitionState::Stopped;
            self.source = None;
        }
        self.start()
    }

    fn poll(&mut self) {
        let t0 = Instant::now();
        match self.state {
            PartitionState::Booting => {
                self.boot_polls += 1;
                if self.boot_polls >= self.boot_length {
                    self.state = PartitionState::Running;
                    self.log("running");
                }
            }
            PartitionState::Running => {
                if let Some(s) = self.source.as_mut() {
                    s.advance();
                }
            }
            _ => {}
        }
        self.update_cpu(t0.elapsed());
    }

    fn frame(&mut self) -> Option<FrameView<'_>> {
        if !self.state.has_display() {
            return None;
        }
        self.source.as_mut().map(SoftwareSource::frame)
    }

    fn read_serial(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.serial);
    }

    fn send_input(&mut self, events: &[UserInput]) -> Result<(), BackendError> {
        if self.state != PartitionState::Running {
            return Err(self.refuse("send input to"));
        }
        // A poisoned log only means a test thread panicked; keep recording.
        let mut log = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        log.extend_from_slice(events);
        let excess = log.len().saturating_sub(INPUT_LOG);
        log.drain(..excess);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::model::Label;

    fn backend() -> SoftwareBackend {
        SoftwareBackend::new(
            PartitionInfo {
                name: "work".into(),
                label: Label::Blue,
                kind: "work".into(),
                memory_mib: 512,
                vcpus: 1,
                display: (320, 240),
                source: SourceKind::Partition,
            },
            Pattern::TestCard,
        )
    }

    #[test]
    fn software_backend_never_claims_to_be_a_partition() {
        assert_eq!(backend().info().source, SourceKind::SoftwareFramebuffer);
    }

    #[test]
    fn start_boots_then_runs() {
        let mut b = backend();
        b.start().unwrap();
        assert_eq!(b.state(), PartitionState::Booting);
        for _ in 0..BOOT_POLLS {
            b.poll();
        }
        assert_eq!(b.state(), PartitionState::Running);
        assert!(b.frame().is_some());
    }

    #[test]
    fn pause_is_refused_unless_running_with_a_clear_message() {
        let mut b = backend();
        let err = b.pause().unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot pause partition `work` while it is stopped"
        );
    }

    #[test]
    fn crashed_source_shows_no_display_and_can_restart() {
        let mut b = backend();
        b.start_running().unwrap();
        b.simulate_crash("triple fault");
        assert_eq!(
            b.state(),
            PartitionState::Crashed {
                reason: "triple fault".into()
            }
        );
        assert!(b.frame().is_none());
        b.restart().unwrap();
        assert_eq!(b.state(), PartitionState::Booting);
    }

    #[test]
    fn paused_source_produces_no_new_damage() {
        let mut b = backend();
        b.start_running().unwrap();
        let _ = b.frame();
        b.pause().unwrap();
        b.poll();
        b.poll();
        assert!(b.frame().unwrap().damage.is_empty());
    }

    #[test]
    fn serial_log_says_it_is_not_a_partition() {
        let mut b = backend();
        b.start().unwrap();
        let mut out = Vec::new();
        b.read_serial(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("not a partition"), "{text}");
    }
}
