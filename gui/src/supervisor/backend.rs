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
    usage: ProcessUsage,
}

/// CPU and memory of the partition process, sampled from /proc about once a second.
#[derive(Default)]
struct ProcessUsage {
    last: Option<(u32, Instant, u64)>,
    cpu_percent: f32,
    rss_mib: Option<u32>,
}

impl ProcessUsage {
    const PERIOD: Duration = Duration::from_secs(1);

    /// `pid` is the partition process the supervisor knows; the figures are those of
    /// `measured(pid)` (the app passes [`super::vm_process`]: the VMM it runs), looked up
    /// only when a sample is due.
    fn sample(&mut self, pid: Option<u32>, measured: impl Fn(u32) -> u32) {
        let Some(pid) = pid else {
            *self = ProcessUsage::default();
            return;
        };
        let now = Instant::now();
        if let Some((last_pid, at, _)) = self.last {
            if last_pid == pid && now.duration_since(at) < Self::PERIOD {
                return;
            }
        }
        let vm = measured(pid);
        let Some(ticks) = cpu_ticks(vm) else {
            *self = ProcessUsage::default();
            return;
        };
        if let Some((last_pid, at, last_ticks)) = self.last {
            let secs = now.duration_since(at).as_secs_f32();
            if last_pid == pid && secs > 0.0 {
                let used = ticks.saturating_sub(last_ticks) as f32 / clock_ticks_per_second();
                self.cpu_percent = 100.0 * used / secs;
            }
        }
        self.last = Some((pid, now, ticks));
        self.rss_mib = rss_mib(vm);
    }
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat; the command
/// name before them may hold spaces, so count from the closing parenthesis).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_mib(pid: u32) -> Option<u32> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    u32::try_from(pages * page_size() / (1 << 20)).ok()
}

fn clock_ticks_per_second() -> f32 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f32
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
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
            frame: Vec::new(),
            damage: Vec::new(),
            serial: Vec::new(),
            started: None,
            usage: ProcessUsage::default(),
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
            memory_mib: self.usage.rss_mib.unwrap_or(0),
            vcpus: self.info.vcpus,
            cpu_percent: self.usage.cpu_percent,
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
        let pid = self.supervisor.status(self.name()).ok().and_then(|s| s.pid);
        self.usage.sample(pid, super::vm_process);
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

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn cpu_and_memory_of_a_busy_process_are_measured_from_proc() {
        let me = std::process::id();
        let mut usage = ProcessUsage::default();
        usage.sample(Some(me), |p| p);
        let until = Instant::now() + ProcessUsage::PERIOD + Duration::from_millis(300);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        usage.sample(Some(me), |p| p);
        assert!(
            usage.cpu_percent > 20.0,
            "busy loop measured at {}%",
            usage.cpu_percent
        );
        assert!(usage.rss_mib.is_some());
        usage.sample(None, |p| p);
        assert_eq!(usage.cpu_percent, 0.0);
    }
}
