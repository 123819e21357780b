//! The app's [`PartitionBackend`] for real partition processes run by a [`Supervisor`].
//!
//! Pixels never cross the control socket: each poll copies only the damaged rectangles
//! from the partition's read-only shared framebuffer into the frame the app uploads.
//! Calls never wait for a partition: stopping and restarting run on their own thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_core::control::{InputDevice, InputEvent as WireInput};

use super::{PartitionState as SupState, SharedFramebuffer, Supervisor, DEFAULT_STOP_TIMEOUT};
use crate::app::backend::{BackendError, PartitionBackend};
use crate::app::model::{PartitionInfo, PartitionState, PartitionStats, SourceKind};
use crate::display::{DamageRect, FrameView, FramebufferLayout};
use crate::input::InputEvent;

/// One supervised partition as the app sees it.
pub struct SupervisedPartition {
    info: PartitionInfo,
    supervisor: Arc<Supervisor>,
    shared: Option<Arc<SharedFramebuffer>>,
    /// The app's copy of the screen, updated rectangle by rectangle.
    frame: Vec<u8>,
    damage: Vec<DamageRect>,
    serial: Vec<u8>,
    started: Option<Instant>,
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
            frame: Vec::new(),
            damage: Vec::new(),
            serial: Vec::new(),
            started: None,
        })
    }

    fn name(&self) -> &str {
        &self.info.name
    }

    fn supervisor_state(&self) -> SupState {
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
        self.damage.clear();
        self.frame.clear();
        if let Some(fb) = &self.shared {
            if fb.read_all(&mut self.frame).is_ok() {
                let l = fb.layout();
                self.damage.push(DamageRect {
                    x: 0,
                    y: 0,
                    w: l.width,
                    h: l.height,
                });
            }
        }
    }

    fn copy_damage(&mut self) {
        let rects = self.supervisor.take_damage(self.name()).unwrap_or_default();
        let Some(fb) = &self.shared else { return };
        for rect in rects {
            // Rectangles were checked against the screen when they arrived.
            if fb.copy_rect_into(rect, &mut self.frame).is_ok() {
                self.damage.push(rect);
            }
        }
    }

    fn layout(&self) -> Option<FramebufferLayout> {
        self.shared.as_ref().map(|f| f.layout())
    }
}

fn process_error(name: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Process {
        name: name.to_string(),
        message: e.to_string(),
    }
}

fn app_state(state: SupState) -> PartitionState {
    match state {
        SupState::Stopped | SupState::Exited { .. } => PartitionState::Stopped,
        SupState::Booting => PartitionState::Booting,
        // Still alive and drawing until the guest has powered off.
        SupState::Running | SupState::Stopping => PartitionState::Running,
        SupState::Paused => PartitionState::Paused,
        SupState::Crashed { reason } => PartitionState::Crashed { reason },
    }
}

/// The app's input events as the evdev triples virtio-input queues, per device.
pub fn to_wire(events: &[InputEvent]) -> Vec<WireInput> {
    events
        .iter()
        .flat_map(|e| {
            let kind = match e {
                InputEvent::Key { .. } => InputDevice::Keyboard,
                _ => InputDevice::Tablet,
            };
            e.to_evdev().into_iter().map(move |ev| WireInput {
                kind,
                ev_type: ev.kind,
                code: ev.code,
                value: ev.value,
            })
        })
        .collect()
}

impl PartitionBackend for SupervisedPartition {
    fn info(&self) -> &PartitionInfo {
        &self.info
    }

    fn state(&self) -> PartitionState {
        app_state(self.supervisor_state())
    }

    fn stats(&self) -> PartitionStats {
        PartitionStats {
            memory_mib: self.info.memory_mib,
            vcpus: self.info.vcpus,
            cpu_percent: 0.0,
            uptime: self.started.map_or(Duration::ZERO, |t| t.elapsed()),
        }
    }

    fn start(&mut self) -> Result<(), BackendError> {
        self.supervisor
            .start(&self.info.name)
            .map_err(|e| process_error(&self.info.name, e))?;
        self.started = Some(Instant::now());
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
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
        self.refresh_framebuffer();
        self.copy_damage();
        if let Ok(bytes) = self.supervisor.take_serial(self.name()) {
            self.serial.extend(bytes);
        }
    }

    fn frame(&mut self) -> Option<FrameView<'_>> {
        if !self.state().has_display() {
            return None;
        }
        let layout = self.layout()?;
        Some(FrameView {
            layout,
            pixels: &self.frame,
            damage: std::mem::take(&mut self.damage),
        })
    }

    fn read_serial(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.serial);
    }

    fn send_input(&mut self, events: &[InputEvent]) -> Result<(), BackendError> {
        self.supervisor
            .send_input(&self.info.name, &to_wire(events))
            .map_err(|e| process_error(&self.info.name, e))
    }

    fn set_waker(&mut self, ctx: egui::Context) {
        self.supervisor
            .set_notify(Arc::new(move || ctx.request_repaint()));
    }
}
