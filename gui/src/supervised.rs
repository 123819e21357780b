//! The app's [`PartitionBackend`] for real partition processes run by a [`Supervisor`].
//!
//! Pixels never cross the control socket: the app uploads the damaged rectangles straight
//! from the partition's read-only shared framebuffer (no copy of ours in between).
//! Calls never wait for a partition: stopping and restarting run on their own thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_core::evdev::InputEvent;

use std::process::ExitCode;

use bulkhead_supervisor::damage::DamageSet;
use bulkhead_supervisor::launch::{launch_spec, Engine};
use bulkhead_supervisor::usage::ProcessUsage;
use bulkhead_supervisor::{
    vm_process, ProcessState, SharedFramebuffer, Supervisor, DEFAULT_STOP_TIMEOUT,
};

use crate::app::backend::{BackendError, PartitionBackend};
use crate::app::model::{PartitionInfo, PartitionState, PartitionStats, SourceKind};
use crate::display::{DamageRect, FramePixels, FrameView};
use crate::input::UserInput;
use crate::template_build::{BuildState, TemplateBuild};

/// One supervised partition as the app sees it.
pub struct SupervisedPartition {
    info: PartitionInfo,
    supervisor: Arc<Supervisor>,
    shared: Option<Arc<SharedFramebuffer>>,
    /// Damaged since the last frame, merged: at most one screen's worth.
    damage: DamageSet,
    serial: Vec<u8>,
    started: Option<Instant>,
    usage: ProcessUsage,
    /// What the guest's balloon holds, MiB, as last reported (memory balancing).
    balloon_mib: Option<u32>,
    /// The app a template partition starts; until the guest says it is on screen the
    /// partition shows as starting.
    app: Option<String>,
    app_ready: AppReadyWatch,
    /// The template this partition boots, built first if it is missing.
    template: Option<String>,
    build: Option<TemplateBuild>,
    /// Why the last template build failed, shown until the next start.
    build_failure: Option<String>,
    waker: Option<egui::Context>,
    /// A disposable: removed from the supervisor when the app drops its slot.
    disposable: bool,
}

/// Watches the serial stream for the guest session's ready line. The guest could lie;
/// all it changes is a caption.
#[derive(Debug, Default)]
struct AppReadyWatch {
    ready: bool,
    /// The end of the previous chunk, in case the marker straddles two.
    tail: Vec<u8>,
}

impl AppReadyWatch {
    const MARKER: &'static [u8] = b"BULKHEAD-APP-READY";

    fn feed(&mut self, bytes: &[u8]) {
        if self.ready || bytes.is_empty() {
            return;
        }
        self.tail.extend_from_slice(bytes);
        self.ready = self
            .tail
            .windows(Self::MARKER.len())
            .any(|w| w == Self::MARKER);
        let keep = Self::MARKER.len() - 1;
        let cut = self.tail.len().saturating_sub(keep);
        self.tail.drain(..cut);
    }
}

impl SupervisedPartition {
    /// `info.name` must be one of the supervisor's partitions.
    pub fn new(mut info: PartitionInfo, supervisor: Arc<Supervisor>) -> Result<Self, BackendError> {
        supervisor
            .status(&info.name)
            .map_err(|e| process_error(&info.name, e))?;
        info.source = SourceKind::Partition;
        Ok(Self {
            info,
            supervisor,
            shared: None,
            damage: DamageSet::default(),
            serial: Vec::new(),
            started: None,
            usage: ProcessUsage::default(),
            balloon_mib: None,
            app: None,
            app_ready: AppReadyWatch::default(),
            template: None,
            build: None,
            build_failure: None,
            waker: None,
            disposable: false,
        })
    }

    /// Marks it a disposable (see [`PartitionBackend::is_disposable`]).
    pub fn disposable(mut self) -> Self {
        self.disposable = true;
        self
    }

    /// Builds `template` before the first start if it is missing.
    pub fn with_template(mut self, template: Option<String>) -> Self {
        self.template = template;
        self
    }

    /// Starts the partition process now, or first its template's build.
    fn start_or_build(&mut self) -> Result<(), BackendError> {
        self.build_failure = None;
        if let Some(t) = self
            .template
            .as_deref()
            .filter(|t| TemplateBuild::needed(t))
        {
            let waker = self.waker.clone();
            self.build = Some(TemplateBuild::start(t, move || {
                if let Some(ctx) = &waker {
                    ctx.request_repaint();
                }
            }));
            return Ok(());
        }
        self.supervisor
            .start(&self.info.name)
            .map_err(|e| process_error(&self.info.name, e))?;
        self.started = Some(Instant::now());
        self.app_ready = AppReadyWatch::default();
        Ok(())
    }

    /// A finished template build starts the partition; a failed one is shown.
    fn poll_build(&mut self) {
        let Some(build) = &self.build else { return };
        match build.state() {
            BuildState::Running(_) => {}
            BuildState::Done => {
                self.build = None;
                if let Err(e) = self.start_or_build() {
                    self.build_failure = Some(e.to_string());
                }
            }
            BuildState::Failed(reason) => {
                self.build = None;
                self.build_failure = Some(reason);
            }
        }
    }

    /// Shows the partition as starting `app` between boot and the app's first window.
    pub fn with_app(mut self, app: Option<String>) -> Self {
        self.app = app;
        self
    }

    fn name(&self) -> &str {
        &self.info.name
    }

    fn supervisor_state(&self) -> ProcessState {
        self.supervisor
            .status(self.name())
            .map(|s| s.state)
            .unwrap_or_default()
    }

    /// Picks up a newly offered framebuffer (first start or a restart): the whole
    /// screen counts as damaged.
    fn refresh_framebuffer(&mut self) {
        let current = self.supervisor.framebuffer(self.name()).ok().flatten();
        let same = match (&current, &self.shared) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.shared = current;
        self.damage = DamageSet::default();
        if let Some(fb) = &self.shared {
            let l = fb.layout();
            self.damage = DamageSet::new(l.width, l.height);
            self.damage.add(DamageRect {
                x: 0,
                y: 0,
                w: l.width,
                h: l.height,
            });
        }
    }

    fn take_damage(&mut self) {
        let rects = self.supervisor.take_damage(self.name()).unwrap_or_default();
        let Some(fb) = &self.shared else { return };
        // The supervisor merged them: at most one screen's worth per poll. Rectangles
        // were checked against the screen when they arrived; checked again here, since
        // the upload reads the shared memory itself.
        for rect in rects.into_iter().filter(|r| fb.contains(r)) {
            self.damage.add(rect);
        }
    }
}

fn process_error(name: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Process {
        name: name.to_string(),
        message: e.to_string(),
    }
}

fn app_state(state: ProcessState) -> PartitionState {
    match state {
        ProcessState::Stopped | ProcessState::Exited { .. } => PartitionState::Stopped,
        ProcessState::Booting => PartitionState::Booting,
        // Still alive and drawing until the guest has powered off.
        ProcessState::Running | ProcessState::Stopping => PartitionState::Running,
        ProcessState::Paused => PartitionState::Paused,
        ProcessState::Crashed { reason } => PartitionState::Crashed { reason },
    }
}

/// The app's input as the evdev events virtio-input queues, each for its device.
pub fn to_wire(events: &[UserInput]) -> Vec<InputEvent> {
    events.iter().flat_map(UserInput::to_evdev).collect()
}

/// How long the VMM may take to write a running partition's snapshot (its memory file is
/// written page by page; the disk copy after it is not bounded by this).
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);

impl PartitionBackend for SupervisedPartition {
    fn info(&self) -> &PartitionInfo {
        &self.info
    }

    fn state(&self) -> PartitionState {
        if let Some(build) = &self.build {
            if let BuildState::Running(what) = build.state() {
                return PartitionState::Preparing { what };
            }
        }
        if let Some(reason) = &self.build_failure {
            return PartitionState::Crashed {
                reason: reason.clone(),
            };
        }
        match (app_state(self.supervisor_state()), &self.app) {
            (PartitionState::Running, Some(app)) if !self.app_ready.ready => {
                PartitionState::Starting { app: app.clone() }
            }
            (state, _) => state,
        }
    }

    fn agent_request(
        &mut self,
        request: crate::app::backend::AgentRequest,
    ) -> Result<u32, BackendError> {
        self.supervisor
            .agent_request(self.name(), request)
            .map_err(|e| BackendError::Process {
                name: self.info.name.clone(),
                message: e.to_string(),
            })
    }

    fn is_disposable(&self) -> bool {
        self.disposable
    }

    fn offers_disposable(&self) -> bool {
        !self.disposable
    }

    fn discard(&mut self) {
        if let Err(e) = self.supervisor.remove(self.name(), Duration::ZERO) {
            tracing::warn!("removing disposable {}: {e}", self.name());
        }
    }

    fn can_save_state(&self) -> Result<(), String> {
        self.supervisor.can_save_running(self.name())
    }

    fn state_saver(&self) -> Result<crate::bundle::StateSaver, String> {
        self.supervisor.can_save_running(self.name())?;
        let supervisor = Arc::clone(&self.supervisor);
        let name = self.name().to_string();
        Ok(crate::bundle::StateSaver(Arc::new(
            move |dir: &std::path::Path| {
                supervisor
                    .save_running(&name, dir, SAVE_TIMEOUT)
                    .map_err(|e| e.to_string())
            },
        )))
    }

    fn take_agent_replies(&mut self) -> Vec<crate::app::backend::AgentReply> {
        self.supervisor
            .take_agent_replies(self.name())
            .unwrap_or_default()
    }

    fn sandbox_gaps(&self) -> Vec<String> {
        match self.supervisor.status(self.name()) {
            Ok(status) if status.pid.is_some() => status
                .sandbox_gaps()
                .iter()
                .map(|gap| gap.describe().to_string())
                .collect(),
            _ => Vec::new(),
        }
    }

    fn resource_badge(&self) -> Option<String> {
        match self.supervisor.status(self.name()) {
            Ok(status) if status.pid.is_some() => status.resources.badge(),
            _ => None,
        }
    }

    fn network(&self) -> Option<crate::app::backend::NetworkState> {
        self.supervisor.status(self.name()).ok().map(|s| s.network)
    }

    fn apply_policy(&mut self, policy: &isolation_policy::Policy) -> Result<(), BackendError> {
        let spec = policy.spec(self.name());
        if let Some(spec) = &spec {
            if let Err(e) = self.supervisor.set_resources_from(spec) {
                tracing::warn!(partition = %self.name(), "applying the saved resources: {e}");
            }
        }
        let Some(plan) = spec
            .as_ref()
            .and_then(bulkhead_supervisor::network::NetworkPlan::of)
        else {
            // Offline, or gone from the policy: a mode change applies at the next start.
            return Ok(());
        };
        self.supervisor
            .set_network_rules(self.name(), plan)
            .map(drop)
            .map_err(|e| BackendError::Process {
                name: self.name().to_string(),
                message: e.to_string(),
            })
    }

    fn stats(&self) -> PartitionStats {
        PartitionStats {
            memory_mib: self.usage.rss_mib.unwrap_or(0),
            vcpus: self.info.vcpus,
            cpu_percent: self.usage.cpu_percent,
            uptime: self.started.map_or(Duration::ZERO, |t| t.elapsed()),
            balloon_mib: self.balloon_mib,
        }
    }

    fn start(&mut self) -> Result<(), BackendError> {
        self.start_or_build()
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        if let Some(build) = self.build.take() {
            build.cancel();
            return Ok(());
        }
        self.build_failure = None;
        let supervisor = Arc::clone(&self.supervisor);
        let name = self.info.name.clone();
        self.started = None;
        std::thread::Builder::new()
            .name(format!("stop-{name}"))
            .spawn(move || {
                let _ = supervisor.stop(&name, DEFAULT_STOP_TIMEOUT);
            })
            .map(|_| ())
            .map_err(|e| process_error(&self.info.name, e))
    }

    fn pause(&mut self) -> Result<(), BackendError> {
        self.supervisor
            .pause(&self.info.name)
            .map_err(|e| process_error(&self.info.name, e))
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        self.supervisor
            .resume(&self.info.name)
            .map_err(|e| process_error(&self.info.name, e))
    }

    fn restart(&mut self) -> Result<(), BackendError> {
        let supervisor = Arc::clone(&self.supervisor);
        let name = self.info.name.clone();
        self.started = Some(Instant::now());
        self.app_ready = AppReadyWatch::default();
        std::thread::Builder::new()
            .name(format!("restart-{name}"))
            .spawn(move || {
                if let Err(e) = supervisor.restart(&name, DEFAULT_STOP_TIMEOUT) {
                    tracing::warn!(partition = %name, "restart failed: {e}");
                }
            })
            .map(|_| ())
            .map_err(|e| process_error(&self.info.name, e))
    }

    fn poll(&mut self) {
        self.poll_build();
        let status = self.supervisor.status(self.name()).ok();
        let pid = status.as_ref().and_then(|s| s.pid);
        self.balloon_mib = status
            .and_then(|s| s.stats)
            .and_then(|st| st.balloon_mib)
            .filter(|_| pid.is_some());
        self.usage.sample(pid, vm_process);
        self.refresh_framebuffer();
        self.take_damage();
        if let Ok(bytes) = self.supervisor.take_serial(self.name()) {
            self.app_ready.feed(&bytes);
            self.serial.extend(bytes);
        }
    }

    fn frame(&mut self) -> Option<FrameView<'_>> {
        if !self.state().has_display() {
            return None;
        }
        let fb = self.shared.as_deref()?;
        Some(FrameView {
            layout: fb.layout(),
            pixels: FramePixels::Shared(fb),
            damage: self.damage.take(),
        })
    }

    fn read_serial(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.serial);
    }

    fn send_input(&mut self, events: &[UserInput]) -> Result<(), BackendError> {
        self.supervisor
            .send_input(&self.info.name, &to_wire(events))
            .map_err(|e| process_error(&self.info.name, e))
    }

    fn set_waker(&mut self, ctx: egui::Context) {
        self.waker = Some(ctx.clone());
        self.supervisor
            .set_notify(Arc::new(move || ctx.request_repaint()));
    }
}

/// Opens the desktop app over the configured partitions, each a supervised partition
/// process; autostart partitions start at once.
pub fn run_desktop() -> ExitCode {
    let dir = isolation_policy::default_policy_dir();
    let (engine, notice) = Engine::for_host();
    if let Some(n) = &notice {
        tracing::warn!("{n}");
    }
    crate::app::run::run_desktop_with(
        move || {
            let backends = supervised_backends(&dir, engine);
            (backends.list, backends.source)
        },
        notice,
    )
}

/// The app's partitions, and how to make the ones an import or a disposable adds later.
pub struct SupervisedBackends {
    pub list: Vec<Box<dyn PartitionBackend>>,
    pub source: Option<Box<dyn crate::app::PartitionSource>>,
}

/// The app's [`crate::app::PartitionSource`]: its supervisor and the policy it reads
/// (resolved again each time: an import into a first-time user's policy creates the
/// user's directory, which then takes precedence over the installed defaults).
pub struct SupervisorSource {
    pub supervisor: Arc<Supervisor>,
    pub engine: Engine,
    /// `None`: `isolation_policy::default_policy_dir()` at each call.
    pub policy_dir: Option<std::path::PathBuf>,
    /// File copies and open-ins between its partitions, decided by the policy.
    pub broker: bulkhead_supervisor::services::ServiceBroker,
}

impl SupervisorSource {
    /// Audits service decisions into `audit_dir` (the app: where the audit panel reads,
    /// [`crate::app::audit_log::default_audit_dir`]).
    pub fn new(
        supervisor: Arc<Supervisor>,
        engine: Engine,
        policy_dir: Option<std::path::PathBuf>,
        audit_dir: Option<&std::path::Path>,
    ) -> Self {
        let broker = bulkhead_supervisor::services::ServiceBroker::new(None, audit_dir, engine);
        SupervisorSource {
            supervisor,
            engine,
            policy_dir,
            broker,
        }
    }

    fn dir(&self) -> std::path::PathBuf {
        self.policy_dir
            .clone()
            .unwrap_or_else(isolation_policy::default_policy_dir)
    }
}

impl crate::app::PartitionSource for SupervisorSource {
    fn added(&mut self) -> Vec<Result<Box<dyn PartitionBackend>, String>> {
        partitions_added(&self.dir(), self.engine, &self.supervisor)
    }

    fn poll_services(&mut self) -> Vec<crate::app::ServiceEvent> {
        // Resolved each time, like the rest: a first save makes the user's directory
        // the one in force.
        let dir = self.dir();
        self.broker.set_policy_dir(dir);
        self.broker.poll(&self.supervisor)
    }

    fn answer_service(&mut self, id: u64, choice: Option<String>) -> Vec<crate::app::ServiceEvent> {
        self.broker.answer(&self.supervisor, id, choice)
    }

    fn transfers(&self) -> Vec<crate::app::TransferProgress> {
        self.broker.transfers()
    }

    fn set_policy_dir(&mut self, dir: std::path::PathBuf) {
        self.policy_dir = Some(dir);
    }

    fn adopt_disposable(
        &mut self,
        name: &str,
        of: &str,
        restored: bool,
    ) -> Result<Box<dyn PartitionBackend>, String> {
        let dir = self.dir();
        let (policy, _) = isolation_policy::Policy::load(&dir)
            .map_err(|e| format!("policy {}: {e}", dir.display()))?;
        let spec = match of {
            "@dispvm" => policy
                .specs()
                .into_iter()
                .find(|s| s.kind == isolation_policy::Kind::Disposable),
            _ => policy.spec(of),
        }
        .ok_or_else(|| format!("no partition `{of}` in {}", dir.display()))?;
        self.disposable_backend(&spec, name, restored)
    }

    fn disposable(&mut self, of: &str) -> Result<Box<dyn PartitionBackend>, String> {
        let dir = self.dir();
        let (policy, _) = isolation_policy::Policy::load(&dir)
            .map_err(|e| format!("policy {}: {e}", dir.display()))?;
        let spec = policy
            .spec(of)
            .ok_or_else(|| format!("no partition `{of}` in {}", dir.display()))?;
        let d = self
            .supervisor
            .start_dispvm_target(&policy, &format!("@dispvm:{of}"), self.engine)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("`{of}` cannot have disposables"))?;
        tracing::info!(name = %d.name, of, restored = d.restored, "disposable started");
        self.disposable_backend(&spec, &d.name, d.restored)
    }
}

impl SupervisorSource {
    /// The app's backend for disposable `name` of `spec`, already started.
    fn disposable_backend(
        &self,
        spec: &isolation_policy::PartitionSpec,
        name: &str,
        restored: bool,
    ) -> Result<Box<dyn PartitionBackend>, String> {
        let mut info = crate::app::run::info_from_spec(spec);
        info.name = name.to_string();
        info.kind = format!("disposable of {}", spec.name);
        let backend =
            SupervisedPartition::new(info, self.supervisor.clone()).map_err(|e| e.to_string())?;
        // A restored one's app is on screen already: its ready line was before the
        // snapshot. A cold one (the first) waits for it like its template partition.
        let app =
            (!restored && self.engine == Engine::Linux && spec.template.is_some()).then(|| {
                spec.app
                    .clone()
                    .unwrap_or_else(|| bulkhead_supervisor::launch::DEFAULT_APP.into())
            });
        Ok(Box::new(backend.with_app(app).disposable()))
    }
}

/// One [`SupervisedPartition`] per configured partition. Where the policy cannot be
/// loaded, the software sources stand in (labelled as such) so the app still opens.
pub fn supervised_backends(dir: &std::path::Path, engine: Engine) -> SupervisedBackends {
    let software = |list| SupervisedBackends { list, source: None };
    let specs = match isolation_policy::Policy::load(dir) {
        Ok((policy, _)) => policy.specs(),
        Err(e) => {
            tracing::warn!(
                "policy {} not loaded: {e}; showing software sources",
                dir.display()
            );
            return software(crate::app::run::software_backends(Vec::new()));
        }
    };
    let launches = specs.iter().map(|s| launch_spec(s, engine)).collect();
    let supervisor = match Supervisor::new(launches) {
        Ok(s) => {
            // The relays' denials go where the audit panel reads.
            let audit = crate::app::audit_log::default_audit_dir().and_then(|d| {
                isolation_policy::AuditLog::open(
                    &d,
                    isolation_policy::audit::DEFAULT_MAX_BYTES,
                    isolation_policy::audit::DEFAULT_KEEP,
                )
                .map_err(|e| tracing::warn!("audit log: {e}; network denials are not recorded"))
                .ok()
            });
            s.set_audit_log(audit.map(std::sync::Arc::new));
            // Balloons inflate when the host runs short, deflate when it has plenty.
            if let Err(e) = s.start_memory_balancing() {
                tracing::warn!("memory balancing not started: {e}");
            }
            std::sync::Arc::new(s)
        }
        Err(e) => {
            tracing::error!("supervisor: {e}; showing software sources");
            return software(crate::app::run::software_backends(
                specs.iter().map(crate::app::run::info_from_spec).collect(),
            ));
        }
    };
    let mut list: Vec<Box<dyn PartitionBackend>> = Vec::new();
    for spec in &specs {
        match backend_for(spec, engine, &supervisor) {
            Ok(mut p) => {
                if spec.autostart {
                    if let Err(e) = p.start() {
                        tracing::warn!("{e}");
                    }
                }
                list.push(Box::new(p));
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
    SupervisedBackends {
        list,
        source: Some(Box::new(SupervisorSource::new(
            supervisor,
            engine,
            None,
            crate::app::audit_log::default_audit_dir().as_deref(),
        ))),
    }
}

/// The app's backend for one configured partition (already on the supervisor's list).
fn backend_for(
    spec: &isolation_policy::PartitionSpec,
    engine: Engine,
    supervisor: &Arc<Supervisor>,
) -> Result<SupervisedPartition, BackendError> {
    // Only a Linux partition booting its template has an app to wait for.
    let has_app = engine == Engine::Linux && spec.template.is_some();
    let app = has_app.then(|| {
        spec.app
            .clone()
            .unwrap_or_else(|| bulkhead_supervisor::launch::DEFAULT_APP.into())
    });
    let template = has_app.then(|| spec.template.clone()).flatten();
    SupervisedPartition::new(crate::app::run::info_from_spec(spec), supervisor.clone())
        .map(|p| p.with_app(app).with_template(template))
}

/// Backends for the partitions in the policy at `dir` that the supervisor does not have
/// yet, each added to it (stopped).
pub fn partitions_added(
    dir: &std::path::Path,
    engine: Engine,
    supervisor: &Arc<Supervisor>,
) -> Vec<Result<Box<dyn PartitionBackend>, String>> {
    let policy = match isolation_policy::Policy::load(dir) {
        Ok((policy, _)) => policy,
        Err(e) => return vec![Err(format!("policy {}: {e}", dir.display()))],
    };
    let known = supervisor.names();
    policy
        .specs()
        .into_iter()
        .filter(|s| !known.contains(&s.name))
        .map(|spec| {
            supervisor
                .add(launch_spec(&spec, engine))
                .map_err(|e| e.to_string())?;
            backend_for(&spec, engine, supervisor)
                .map(|p| Box::new(p) as Box<dyn PartitionBackend>)
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::FramebufferLayout;
    use bulkhead_supervisor::testing::{
        fake_partition_main, fake_spec, kill9, wait_more_damage, wait_running, wait_state,
    };
    use bulkhead_supervisor::AutoRestart;
    use vmm_core::evdev::InputDevice;

    fn fake(name: &str) -> bulkhead_supervisor::LaunchSpec {
        fake_spec(
            std::env::current_exe().unwrap(),
            "supervised::tests::fake_partition_process",
            name,
            "normal",
            AutoRestart::Never,
        )
    }

    #[test]
    fn fake_partition_process() {
        fake_partition_main();
    }

    #[test]
    fn the_app_ready_line_is_found_even_split_across_serial_chunks() {
        let mut w = AppReadyWatch::default();
        w.feed(b"booting...\nBULKHEAD-APP");
        assert!(!w.ready);
        w.feed(b"-READY firefox-esr\n");
        assert!(w.ready);
        let mut w = AppReadyWatch::default();
        for chunk in b"noise BULKHEAD-APP-READY".chunks(1) {
            w.feed(chunk);
        }
        assert!(w.ready);
        assert!(w.tail.len() < AppReadyWatch::MARKER.len());
        let mut w = AppReadyWatch::default();
        w.feed(&[b'x'; 100_000]);
        assert!(!w.ready && w.tail.len() < AppReadyWatch::MARKER.len());
    }

    #[test]
    fn a_partition_reporting_a_reduced_sandbox_wears_the_badge_while_it_runs() {
        let reduced = fake_spec(
            std::env::current_exe().unwrap(),
            "supervised::tests::fake_partition_process",
            "reduced",
            "reduced_sandbox",
            AutoRestart::Never,
        );
        let sup = Arc::new(Supervisor::new(vec![reduced, fake("full")]).unwrap());
        let logs = tempfile::tempdir().unwrap();
        sup.set_log_dir(Some(logs.path().to_path_buf()));
        let mut backend = SupervisedPartition::new(app_info("reduced"), Arc::clone(&sup)).unwrap();
        let mut full = SupervisedPartition::new(app_info("full"), Arc::clone(&sup)).unwrap();
        assert!(backend.sandbox_gaps().is_empty(), "nothing runs yet");
        backend.start().unwrap();
        full.start().unwrap();
        wait_running(&sup, "reduced");
        wait_running(&sup, "full");
        assert_eq!(backend.sandbox_gaps(), vec!["no Landlock".to_string()]);
        assert_eq!(
            crate::app::model::sandbox_badge(&backend.sandbox_gaps()).as_deref(),
            Some("sandbox reduced: no Landlock")
        );
        assert!(full.sandbox_gaps().is_empty());
        kill9(sup.status("reduced").unwrap().pid.unwrap());
        wait_state(&sup, "reduced", ProcessState::is_crashed);
        assert!(
            backend.sandbox_gaps().is_empty(),
            "no badge on a dead process"
        );
    }

    fn app_info(name: &str) -> PartitionInfo {
        PartitionInfo {
            name: name.to_string(),
            label: crate::app::model::Label::Blue,
            kind: "work".to_string(),
            memory_mib: 256,
            vcpus: 1,
            display: (64, 64),
            source: SourceKind::SoftwareFramebuffer,
        }
    }

    #[test]
    fn app_backend_shows_shared_pixels_forwards_input_and_reports_a_crash() {
        use crate::app::model::PartitionState as AppState;

        let sup = Arc::new(Supervisor::new(vec![fake("app")]).unwrap());
        let mut backend = SupervisedPartition::new(app_info("app"), Arc::clone(&sup)).unwrap();
        assert_eq!(backend.info().source, SourceKind::Partition);
        assert!(SupervisedPartition::new(app_info("nobody"), Arc::clone(&sup)).is_err());
        backend.start().unwrap();
        wait_running(&sup, "app");
        wait_more_damage(&sup, "app", 3);

        backend.poll();
        let frame = backend.frame().expect("a running partition has a frame");
        assert_eq!(frame.layout, FramebufferLayout::new(64, 64).unwrap());
        assert!(!frame.damage.is_empty(), "the first frame is all damage");
        let first = u32::from_le_bytes(frame.pixels.to_vec()[0..4].try_into().unwrap());
        assert!(first > 0);

        wait_more_damage(&sup, "app", 3);
        backend.poll();
        let frame = backend.frame().unwrap();
        assert!(frame.damage.contains(&DamageRect {
            x: 0,
            y: 0,
            w: 1,
            h: 1
        }));
        let later = u32::from_le_bytes(frame.pixels.to_vec()[0..4].try_into().unwrap());
        assert!(
            later > first,
            "damaged pixel not copied: {first} -> {later}"
        );

        let key = crate::input::UserInput::Key {
            code: 30,
            pressed: true,
        };
        backend.send_input(&[key]).unwrap();
        let mut serial = Vec::new();
        for _ in 0..200 {
            backend.poll();
            backend.read_serial(&mut serial);
            if serial.ends_with(b"input:2\n") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            serial.ends_with(b"input:2\n"),
            "key + SYN_REPORT reach the partition"
        );

        kill9(sup.status("app").unwrap().pid.unwrap());
        wait_state(&sup, "app", ProcessState::is_crashed);
        assert_eq!(
            backend.state(),
            AppState::Crashed {
                reason: "killed by SIGKILL".to_string()
            }
        );
        assert!(backend.frame().is_none());
    }

    #[test]
    fn app_input_becomes_evdev_for_the_right_device() {
        use crate::input::UserInput as App;
        let wire = to_wire(&[
            App::Key {
                code: 30,
                pressed: true,
            },
            App::PointerAbs { x: 5, y: 6 },
        ]);
        let kinds: Vec<_> = wire
            .iter()
            .map(|e| (e.device, e.ev_type, e.code, e.value))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (InputDevice::Keyboard, 1, 30, 1),
                (InputDevice::Keyboard, 0, 0, 0),
                (InputDevice::Tablet, 3, 0, 5),
                (InputDevice::Tablet, 3, 1, 6),
                (InputDevice::Tablet, 0, 0, 0),
            ]
        );
    }
}
