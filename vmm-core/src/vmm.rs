//! A running partition: vCPU threads, waiting for a stop, damage and screenshots.

use std::fs::File;
use std::io::BufWriter;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::builder::{BuildError, Framebuffer, Partition, VirtioHandles};
use crate::devices::framebuffer::{write_png, DamageRect, FramebufferError};
use crate::devices::legacy::SerialConsole;
use crate::devices::{StopHandle, StopReason};
use crate::sandbox::SeccompProfile;
use crate::vstate::vcpu::{install_kick_handler, kick_signal, PauseGate};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum ScreenshotError {
    #[error("this partition has no display")]
    NoDisplay,
    #[error("creating {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("encoding {path}: {source}")]
    Encode {
        path: String,
        source: FramebufferError,
    },
}

pub struct RunningPartition {
    // Threads are joined (in `finish`/`Drop`) before the VM and memory drop.
    threads: Vec<JoinHandle<()>>,
    vm: Vm,
    framebuffer: Option<Framebuffer>,
    memory: vm_memory::GuestMemoryMmap,
    /// The buses, kept to save every device on them in a snapshot.
    pio: Arc<crate::devices::Bus>,
    mmio: Arc<crate::devices::Bus>,
    stop: Arc<StopHandle>,
    serial: Arc<Mutex<SerialConsole>>,
    virtio: VirtioHandles,
    gate: Arc<PauseGate>,
    started: Instant,
    /// Returns from `KVM_RUN`, one counter per vCPU so no two vCPU threads write the
    /// same cache line on every exit.
    vcpu_exits: Vec<Arc<AtomicU64>>,
    /// virtio-blk workers; each ends once the vCPU threads (and with them the MMIO bus
    /// holding its device) are gone, so they are joined after those.
    disk_workers: Vec<JoinHandle<()>>,
    /// The queue-notification thread (ends on the stop request), if any queue has an
    /// ioeventfd.
    notifier: Option<JoinHandle<()>>,
    /// Queue notifications it processed.
    notifications: Arc<AtomicU64>,
}

impl Partition {
    /// Starts one thread per vCPU.
    pub fn start(self) -> Result<RunningPartition, BuildError> {
        self.start_with(None)
    }

    /// Starts one thread per vCPU, each confined to `vcpu_filter` before it first enters
    /// the guest (the supervised, sandboxed partition process uses this), and one worker
    /// per disk, confined to [`SeccompProfile::Block`] when the vCPUs are filtered.
    pub fn start_with(
        self,
        vcpu_filter: Option<crate::sandbox::SeccompProfile>,
    ) -> Result<RunningPartition, BuildError> {
        let disk_filter = vcpu_filter.map(|_| SeccompProfile::Block);
        let mut disk_workers = Vec::with_capacity(self.disks.len());
        for (index, disk) in self.disks.into_iter().enumerate() {
            // The worker holds only a weak reference; the bus keeps the device alive. On
            // an error, workers already started end when their devices drop with `self`.
            let worker = disk
                .worker
                .start(&disk.dev, self.memory.clone(), disk_filter)
                .map_err(|source| BuildError::Disk { index, source })?;
            disk_workers.push(worker);
        }
        install_kick_handler();
        let pio = Arc::new(self.pio);
        let mmio = Arc::new(self.mmio);
        let gate = Arc::new(PauseGate::default());
        let notifications = Arc::new(AtomicU64::new(0));
        let notifier = if self.notifier.is_empty() {
            None
        } else {
            let filter = vcpu_filter.map(|_| SeccompProfile::Notify);
            let handle = self
                .notifier
                .start(
                    self.stop.clone(),
                    gate.clone(),
                    filter,
                    notifications.clone(),
                )
                .map_err(|source| BuildError::NotifierThread { source })?;
            Some(handle)
        };
        let mut vcpu_exits = Vec::new();
        let mut threads = Vec::new();
        for vcpu in self.vcpus {
            let index = vcpu.index();
            let (pio, mmio, stop, gate, exits) = (
                pio.clone(),
                mmio.clone(),
                self.stop.clone(),
                gate.clone(),
                Arc::new(AtomicU64::new(0)),
            );
            vcpu_exits.push(exits.clone());
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if let Some(profile) = vcpu_filter {
                        if let Err(e) = crate::sandbox::install(profile) {
                            stop.request(StopReason::Crashed(format!(
                                "vCPU {index}: seccomp filter not installed: {e}"
                            )));
                            return;
                        }
                    }
                    vcpu.run(pio, mmio, stop, gate, exits)
                })
                .map_err(|source| BuildError::Thread { index, source });
            match handle {
                Ok(h) => threads.push(h),
                Err(e) => {
                    self.stop.request(StopReason::Stopped);
                    kick_and_join(&mut threads);
                    join_notifier(notifier);
                    return Err(e);
                }
            }
        }
        Ok(RunningPartition {
            threads,
            vm: self.vm,
            framebuffer: self.framebuffer,
            memory: self.memory,
            pio,
            mmio,
            stop: self.stop,
            serial: self.serial,
            virtio: self.virtio,
            gate,
            started: Instant::now(),
            vcpu_exits,
            disk_workers,
            notifier,
            notifications,
        })
    }
}

/// Interrupts `thread`'s `KVM_RUN` (if it is in it) with the kick signal.
///
/// No safe wrapper sends a real-time signal to a pthread (rustix has none, nix's `Signal`
/// cannot name SIGRTMIN), so this is the one raw `pthread_kill`.
fn kick(thread: &JoinHandle<()>) {
    // SAFETY: the pthread handle is valid: we hold the thread's JoinHandle by reference,
    // so it has not been joined or detached, and glibc keeps a finished but unjoined
    // thread's handle valid. The kick signal has a no-op handler, installed by
    // `install_kick_handler` before any vCPU thread starts, so it cannot kill the process.
    unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
}

fn kick_and_join(threads: &mut Vec<JoinHandle<()>>) {
    // A kick can land just before a thread enters KVM_RUN and be lost, so repeat it until
    // every thread has seen the stop flag.
    while threads.iter().any(|t| !t.is_finished()) {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            kick(t);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for t in threads.drain(..) {
        if t.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
}

impl RunningPartition {
    pub fn stop_handle(&self) -> Arc<StopHandle> {
        self.stop.clone()
    }

    pub fn serial(&self) -> Arc<Mutex<SerialConsole>> {
        self.serial.clone()
    }

    /// How long the vCPUs have been running (paused time included).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Parks every vCPU outside the guest; returns once all of them are parked.
    pub fn pause(&self) {
        self.gate.set_paused(true);
        while self.gate.parked() < self.threads.iter().filter(|t| !t.is_finished()).count()
            && !self.stop.is_stopped()
        {
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                kick(t);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // A queue being processed off the vCPUs finishes before the pause is complete.
        self.gate.quiesce();
    }

    pub fn resume(&self) {
        self.gate.set_paused(false);
    }

    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// How often the vCPUs have left the guest (`KVM_RUN` returned), all together.
    pub fn vcpu_exits(&self) -> u64 {
        self.vcpu_exits
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .sum()
    }

    /// Queue notifications processed off the vCPUs (through ioeventfds); each of them
    /// would otherwise have been a `KVM_RUN` return.
    pub fn queue_notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    /// Keyboard, tablet and console of the running guest.
    pub fn virtio(&self) -> &VirtioHandles {
        &self.virtio
    }

    pub fn framebuffer(&self) -> Option<&Framebuffer> {
        self.framebuffer.as_ref()
    }

    /// Waits up to `timeout` for the partition to stop; `None` if still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<StopReason> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.stop.reason() {
                return Some(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.stop.event().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // Raw poll because vmm-sys-util's EventFd offers only a raw fd, not `AsFd`.
            // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1;
            // poll only reads the fd number (a closed one just reports POLLNVAL).
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }

    /// Pages written by the guest since the last call, as rectangles.
    pub fn take_damage(&self) -> Result<Vec<DamageRect>, VmError> {
        let Some(fb) = &self.framebuffer else {
            return Ok(Vec::new());
        };
        let bitmap = self.vm.dirty_log(fb.slot, fb.region.len())?;
        Ok(fb.layout.damage_from_dirty_bitmap(&bitmap))
    }

    /// Number of framebuffer pages written since the last call (consumes the dirty log).
    pub fn take_dirty_pages(&self) -> Result<u64, VmError> {
        let Some(fb) = &self.framebuffer else {
            return Ok(0);
        };
        let bitmap = self.vm.dirty_log(fb.slot, fb.region.len())?;
        Ok(bitmap.iter().map(|w| u64::from(w.count_ones())).sum())
    }

    pub fn save_screenshot(&self, path: &Path) -> Result<(), ScreenshotError> {
        let fb = self
            .framebuffer
            .as_ref()
            .ok_or(ScreenshotError::NoDisplay)?;
        let name = path.display().to_string();
        let file = File::create(path).map_err(|source| ScreenshotError::Create {
            path: name.clone(),
            source,
        })?;
        write_png(&fb.layout, &fb.snapshot(), BufWriter::new(file))
            .map_err(|source| ScreenshotError::Encode { path: name, source })
    }

    /// Stops the guest (if it has not stopped by itself) and joins the vCPU threads.
    pub fn finish(mut self) -> StopReason {
        self.stop.request(StopReason::Stopped);
        kick_and_join(&mut self.threads);
        join_notifier(self.notifier.take());
        self.release_devices();
        join_disk_workers(&mut self.disk_workers);
        self.stop.reason().unwrap_or(StopReason::Stopped)
    }
}

/// How long a snapshot waits for the vCPUs to hand over their state, and for disks to
/// finish the requests they have.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

impl RunningPartition {
    /// Pauses the partition (it stays paused) and writes a snapshot into `files`:
    /// every vCPU, the VM's irqchip/PIT/clock, every device on both buses, the
    /// framebuffer and guest RAM. `extra` is kept for the caller (see
    /// [`crate::snapshot::SnapshotConfig::extra`]). Any device that cannot be saved
    /// fails the whole snapshot.
    pub fn snapshot(
        &self,
        kvm: &kvm_ioctls::Kvm,
        files: &crate::snapshot::SnapshotFiles,
        disks: usize,
        extra: serde_json::Value,
    ) -> Result<crate::snapshot::SnapshotReport, crate::snapshot::SnapshotError> {
        use crate::snapshot::{record, SnapshotConfig, SnapshotError, Writer};
        self.pause();
        if self.stop.is_stopped() {
            return Err(SnapshotError::Stopped);
        }
        let mut w = Writer::new(kvm)?;
        let mem_mib = vm_memory::GuestMemoryBackend::iter(&self.memory)
            .map(vm_memory::GuestMemoryRegion::len)
            .sum::<u64>()
            >> 20;
        w.json(
            record::CONFIG,
            &SnapshotConfig {
                mem_mib,
                vcpus: self.threads.len() as u8,
                display: self.framebuffer.as_ref().map(|fb| fb.layout),
                disks,
                extra,
            },
        )?;
        let msrs = kvm
            .get_msr_index_list()
            .map_err(|e| SnapshotError::Memory(format!("KVM_GET_MSR_INDEX_LIST: {e}")))?;
        let states = self.gate.save_states(
            self.threads.len(),
            Arc::new(msrs.as_slice().to_vec()),
            SNAPSHOT_WAIT,
        )?;
        let mut unavailable = Vec::new();
        for s in &states {
            unavailable.extend(
                s.unavailable
                    .iter()
                    .map(|u| format!("vCPU {}: {u}", s.index)),
            );
            w.json(&record::vcpu(s.index), s)?;
        }
        w.json(record::VM, &self.vm.save_state()?)?;
        let mut devices = 0;
        for (bus, name) in [
            (&self.pio, record::pio as fn(u64) -> String),
            (&self.mmio, record::mmio),
        ] {
            for (base, dev) in bus.devices() {
                let device = name(base);
                let state = save_device(dev, &device)?;
                w.raw(&device, state);
                devices += 1;
            }
        }
        let pixels = self.framebuffer.as_ref().map(|fb| fb.snapshot());
        let (state_bytes, memory) = w.finish(&self.memory, pixels.as_deref(), files)?;
        Ok(crate::snapshot::SnapshotReport {
            state_bytes,
            memory_bytes: memory.file_len,
            memory_pages_written: memory.pages_written,
            devices,
            unavailable,
        })
    }
}

/// One device's state; a device still finishing requests (a disk) is asked again until
/// [`SNAPSHOT_WAIT`] runs out, without holding its lock in between.
fn save_device(
    dev: &Arc<Mutex<dyn crate::devices::BusDevice>>,
    name: &str,
) -> Result<Vec<u8>, crate::snapshot::SnapshotError> {
    use crate::devices::persist::PersistError;
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    loop {
        let result = dev.lock().unwrap_or_else(|e| e.into_inner()).save_state();
        match result {
            Ok(state) => return Ok(state),
            Err(PersistError::Busy(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(source) => {
                return Err(crate::snapshot::SnapshotError::Device {
                    device: name.to_string(),
                    source,
                })
            }
        }
    }
}

impl Drop for RunningPartition {
    fn drop(&mut self) {
        // Idempotent after `finish`; ends the vCPUs and the notifier otherwise.
        self.stop.request(StopReason::Stopped);
        kick_and_join(&mut self.threads);
        join_notifier(self.notifier.take());
        self.release_devices();
        join_disk_workers(&mut self.disk_workers);
    }
}

impl RunningPartition {
    /// Drops this partition's hold on the buses (and so on their devices) once the vCPU
    /// threads are gone: a disk worker ends only when its device does, so joining it
    /// while the buses are still held here would wait forever.
    fn release_devices(&mut self) {
        self.pio = Arc::new(crate::devices::Bus::new());
        self.mmio = Arc::new(crate::devices::Bus::new());
    }
}

/// Joins the notifier thread; call after the stop request (which is what ends it).
fn join_notifier(notifier: Option<JoinHandle<()>>) {
    if notifier.is_some_and(|n| n.join().is_err()) {
        tracing::error!("the virtio notifier thread panicked");
    }
}

/// Joins the disk workers; call after the vCPU threads are gone (the last reference to
/// each device went with them, which is what ends its worker).
fn join_disk_workers(workers: &mut Vec<JoinHandle<()>>) {
    for w in workers.drain(..) {
        if w.join().is_err() {
            tracing::error!("a virtio-blk worker thread panicked");
        }
    }
}
