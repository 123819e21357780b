//! vCPUs: initial state and the run loop that turns exits into bus accesses or a stop.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use super::exits::{ExitSite, ExitTally};
use crate::arch::{cpuid, regs};
use crate::devices::{Bus, StopHandle, StopReason};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("creating vCPU {index}: {source}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("setting CPUID of vCPU {index}: {source}")]
    Cpuid {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("initial state of vCPU {index}: {source}")]
    Regs { index: u8, source: regs::RegsError },
}

/// Where the boot vCPU starts. Application processors wait for the guest's INIT/SIPI.
#[derive(Debug, Clone, Copy)]
pub struct EntryPoint {
    pub rip: u64,
    pub rsi: u64,
    pub rsp: u64,
}

pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    /// The last save round this vCPU answered.
    served_save: u64,
}

/// Holds vCPU threads outside `KVM_RUN` while the partition is paused, and serves
/// requests that need a vCPU's own fd while it is parked (saving its state for a
/// snapshot: the fds live in their threads, so the thread does the ioctls).
#[derive(Default)]
pub struct PauseGate {
    paused: Mutex<bool>,
    wake: Condvar,
    parked: AtomicUsize,
    save: Mutex<SaveRound>,
    saved: Condvar,
    /// Held while device work outside the vCPUs runs (see [`PauseGate::run_unpaused`]).
    work: Mutex<()>,
}

/// One "save your state" request to every parked vCPU, and the answers so far.
#[derive(Default)]
struct SaveRound {
    round: u64,
    msrs: Arc<Vec<u32>>,
    results: Vec<Result<VcpuState, VcpuStateError>>,
}

impl PauseGate {
    pub fn set_paused(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = paused;
        self.wake.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` (device work done outside the vCPUs: a queue notification) unless the
    /// partition stopped; while it is paused, waits for the resume first. Returns whether
    /// `work` ran. Together with [`PauseGate::quiesce`] this makes a pause complete: once
    /// the vCPUs are parked and the gate quiesced, no device or guest memory changes.
    pub fn run_unpaused(&self, stop: &StopHandle, work: impl FnOnce()) -> bool {
        loop {
            let held = self.work.lock().unwrap_or_else(|e| e.into_inner());
            if stop.is_stopped() {
                return false;
            }
            if !self.is_paused() {
                work();
                drop(held);
                return true;
            }
            drop(held);
            let paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
            if *paused {
                // The timeout lets a stop request end the wait without a notify.
                let _ = self.wake.wait_timeout(paused, Duration::from_millis(50));
            }
        }
    }

    /// Waits until work started by [`PauseGate::run_unpaused`] before the pause has ended;
    /// call after setting the pause.
    pub fn quiesce(&self) {
        drop(self.work.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// vCPU threads currently waiting at the gate.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    /// Asks every parked vCPU (`count` of them) for its state and waits up to `timeout`
    /// for all answers; `msrs` is the host's MSR index list to save. Call only while
    /// paused with every vCPU parked.
    pub fn save_states(
        &self,
        count: usize,
        msrs: Arc<Vec<u32>>,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, VcpuStateError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut round = self.save.lock().unwrap_or_else(|e| e.into_inner());
        round.round += 1;
        round.msrs = msrs;
        round.results.clear();
        self.wake.notify_all();
        while round.results.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(VcpuStateError::Timeout {
                    answered: round.results.len(),
                    count,
                });
            }
            round = match self.saved.wait_timeout(round, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        let mut states = round.results.drain(..).collect::<Result<Vec<_>, _>>()?;
        states.sort_by_key(|s| s.index);
        Ok(states)
    }

    /// The pending save request this vCPU has not answered yet, if any.
    fn pending_save(&self, served: u64) -> Option<(u64, Arc<Vec<u32>>)> {
        let round = self.save.lock().unwrap_or_else(|e| e.into_inner());
        (round.round > served).then(|| (round.round, round.msrs.clone()))
    }

    fn answer_save(&self, round: u64, result: Result<VcpuState, VcpuStateError>) {
        let mut r = self.save.lock().unwrap_or_else(|e| e.into_inner());
        if r.round == round {
            r.results.push(result);
        }
        drop(r);
        self.saved.notify_all();
    }

    fn wait_while_paused(&self, stop: &StopHandle, vcpu: &mut Vcpu) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if !*paused {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while *paused && !stop.is_stopped() {
            if let Some((round, msrs)) = self.pending_save(vcpu.served_save) {
                // The ioctls run without the gate's lock, so a resume is never held up.
                drop(paused);
                let result = vcpu.save_state(&msrs);
                self.answer_save(round, result);
                vcpu.served_save = round;
                paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // The timeout lets a stop request end the wait without a notify.
            paused = match self.wake.wait_timeout(paused, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The signal used to kick a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process, so the signal only interrupts
/// `KVM_RUN` with EINTR instead of killing the process.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            tracing::error!("installing the vCPU kick handler: {e}");
        }
    });
}

impl Vcpu {
    pub fn new(vm: &VmFd, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self {
            fd,
            index,
            served_save: 0,
        })
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// CPUID, MSRs, FPU and LINT pins for every vCPU; long-mode registers for the boot
    /// vCPU when `entry` is given.
    pub fn configure(
        &self,
        base_cpuid: &CpuId,
        cpu_count: u8,
        entry: Option<EntryPoint>,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let cpuid = cpuid::for_vcpu(base_cpuid, index, cpu_count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        let r = |source| VcpuError::Regs { index, source };
        regs::setup_msrs(&self.fd).map_err(r)?;
        regs::setup_fpu(&self.fd).map_err(r)?;
        regs::setup_lint(&self.fd).map_err(r)?;
        if let Some(e) = entry {
            regs::setup_sregs(&self.fd).map_err(r)?;
            regs::setup_regs(&self.fd, e.rip, e.rsi, e.rsp).map_err(r)?;
        }
        Ok(())
    }

    /// The access size of the port I/O exit just taken (1, 2 or 4).
    fn pio_unit(&mut self) -> usize {
        let run = self.fd.get_kvm_run();
        // SAFETY: every field of the `kvm_run` exit union is plain integers, so reading
        // `io` is defined whatever the exit was; the caller only uses it after a
        // KVM_EXIT_IO, when the kernel has filled it in.
        let io = unsafe { run.__bindgen_anon_1.io };
        usize::from(io.size)
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(u64::MAX)
    }

    /// Runs the guest until a stop is requested, by a device, by this loop on a fatal exit,
    /// or by the host (which then kicks this thread with [`kick_signal`]).
    /// Every return from `KVM_RUN` counts in `exits` (this vCPU's own counter).
    pub fn run(
        mut self,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        stop: Arc<StopHandle>,
        gate: Arc<PauseGate>,
        exits: Arc<AtomicU64>,
    ) {
        let mut tally = ExitTally::default();
        while !stop.is_stopped() {
            gate.wait_while_paused(&stop, &mut self);
            let outcome = self.run_once(&pio, &mmio, &mut tally);
            exits.fetch_add(1, Ordering::Relaxed);
            if let Some(reason) = outcome {
                stop.request(reason);
            }
        }
        eprintln!("bulkhead-vmm: {}", tally.summary(self.index));
    }

    fn run_once(&mut self, pio: &Bus, mmio: &Bus, tally: &mut ExitTally) -> Option<StopReason> {
        let index = self.index;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                tally.record(ExitSite::Interrupted);
                return None;
            }
            Err(e) => {
                let rip = self.rip();
                return Some(StopReason::Crashed(format!(
                    "vCPU {index}: KVM_RUN failed: {e} (RIP {rip:#x})"
                )));
            }
        };
        match exit {
            // A string instruction (`rep insb`, `rep outsw`, ...) exits once with
            // `count` accesses of `size` bytes in `data`; kvm-ioctls hands over the bytes
            // but not the size, which is read below, after the exit's borrow ends.
            VcpuExit::IoIn(port, data) => {
                tally.record(ExitSite::PioIn(port));
                let io = PioData::of(data);
                let unit = self.pio_unit();
                // SAFETY: `io` was taken from this exit's data slice, which lies in the
                // vCPU's kvm_run mapping (the PIO page, past the `kvm_run` struct that
                // `pio_unit` borrowed and released) and stays mapped as long as
                // `self.fd`; no other reference to it lives until the next `run`.
                let data = unsafe { io.slice() };
                if !pio.read_units(u64::from(port), data, unit) {
                    data.fill(0xff);
                }
                None
            }
            VcpuExit::IoOut(port, data) => {
                tally.record(ExitSite::PioOut(port));
                // Copied out (at most the one PIO page) so the size can be asked for.
                let len = data.len().min(PIO_PAGE);
                let mut bytes = [0u8; PIO_PAGE];
                bytes[..len].copy_from_slice(&data[..len]);
                let unit = self.pio_unit();
                pio.write_units(u64::from(port), &bytes[..len], unit);
                None
            }
            VcpuExit::MmioRead(addr, data) => {
                tally.record(ExitSite::MmioRead(addr));
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            VcpuExit::MmioWrite(addr, data) => {
                tally.record(ExitSite::MmioWrite(addr));
                mmio.write(addr, data);
                None
            }
            VcpuExit::Hlt => {
                tally.record(ExitSite::Halt);
                None
            }
            VcpuExit::Intr => {
                tally.record(ExitSite::Interrupted);
                None
            }
            VcpuExit::SystemEvent(kind, _) => {
                tally.record(ExitSite::Other);
                Some(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
                    other => StopReason::Crashed(format!("vCPU {index}: system event {other}")),
                })
            }
            other => {
                tally.record(ExitSite::Other);
                let what = describe_fatal_exit(&other);
                let rip = self.rip();
                Some(StopReason::Crashed(format!(
                    "vCPU {index}: {what} at RIP {rip:#x}"
                )))
            }
        }
    }
}

// KVM points an I/O exit's data at page 1 of the vCPU mapping (KVM_PIO_PAGE_OFFSET), so
// it never overlaps the `kvm_run` struct that `pio_unit` borrows while it is held.
const _: () = assert!(std::mem::size_of::<kvm_bindings::kvm_run>() <= PIO_PAGE);

/// The most data one port I/O exit carries: KVM's one PIO page.
const PIO_PAGE: usize = 4096;

/// A port I/O exit's data slice, held as a raw pointer so the vCPU can be asked for the
/// access size (which needs `&mut` of it) before the bytes are used.
struct PioData {
    ptr: *mut u8,
    len: usize,
}

impl PioData {
    fn of(data: &mut [u8]) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            len: data.len(),
        }
    }

    /// # Safety
    /// The slice this came from must still be mapped and nothing else may reference it
    /// while the result lives.
    unsafe fn slice<'a>(&self) -> &'a mut [u8] {
        // SAFETY: `ptr` and `len` describe a slice that was valid; the caller guarantees
        // it still is and that the result is the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

fn describe_fatal_exit(exit: &VcpuExit) -> String {
    match exit {
        VcpuExit::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN)".into(),
        VcpuExit::FailEntry(reason, cpu) => {
            format!("VM entry failed (KVM_EXIT_FAIL_ENTRY, reason {reason:#x}, cpu {cpu})")
        }
        VcpuExit::InternalError => "emulation failure (KVM_EXIT_INTERNAL_ERROR)".into(),
        VcpuExit::Exception => "unhandled exception (KVM_EXIT_EXCEPTION)".into(),
        VcpuExit::Unsupported(code) => format!("unsupported exit reason {code}"),
        other => format!("unexpected exit {other:?}"),
    }
}

/// `MSR_IA32_TSC_DEADLINE`: restored after the TSC, or the deadline is compared against
/// the wrong clock and the timer fires at once or never.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Everything KVM keeps about one vCPU, as saved for a snapshot.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    pub index: u8,
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    pub mp_state: kvm_bindings::kvm_mp_state,
    pub regs: kvm_bindings::kvm_regs,
    pub sregs: kvm_bindings::kvm_sregs,
    pub fpu: FpuState,
    /// `None` when the host has no KVM_CAP_XCRS.
    pub xcrs: Option<kvm_bindings::kvm_xcrs>,
    pub debug_regs: kvm_bindings::kvm_debugregs,
    pub lapic: kvm_bindings::kvm_lapic_state,
    /// In restore order (the TSC deadline last).
    pub msrs: Vec<kvm_bindings::kvm_msr_entry>,
    pub vcpu_events: kvm_bindings::kvm_vcpu_events,
    /// `None` when the host cannot say (no KVM_CAP_GET_TSC_KHZ).
    pub tsc_khz: Option<u32>,
    /// MSRs from the host's index list that could not be read, and state this host
    /// could not give (`"xsave"`, `"xcrs"`, `"tsc_khz"`): recorded so nobody believes
    /// they were saved.
    pub unavailable: Vec<String>,
}

/// FPU/SSE state: XSAVE when the host has it (it includes AVX and the rest), else the
/// legacy FXSAVE-sized `kvm_fpu`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum FpuState {
    Xsave(Box<kvm_bindings::kvm_xsave>),
    Legacy(Box<LegacyFpu>),
}

/// `kvm_fpu`, which kvm-bindings does not serialise.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LegacyFpu {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<kvm_bindings::kvm_fpu> for LegacyFpu {
    fn from(f: kvm_bindings::kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&LegacyFpu> for kvm_bindings::kvm_fpu {
    fn from(f: &LegacyFpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {index}: {what}: {source}")]
    Ioctl {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: {what}")]
    Refused { index: u8, what: String },
    #[error("only {answered} of {count} vCPUs saved their state in time")]
    Timeout { answered: usize, count: usize },
}

impl Vcpu {
    /// Saves this vCPU's state (on its own thread, while parked). Firecracker's order:
    /// pending I/O completed first, MP state before the LAPIC, events last.
    fn save_state(&mut self, msr_list: &[u32]) -> Result<VcpuState, VcpuStateError> {
        let index = self.index;
        let err = |what: &'static str| {
            move |source| VcpuStateError::Ioctl {
                index,
                what,
                source,
            }
        };
        // An exit for port or MMIO I/O is finished (RIP moved past the instruction, the
        // read value in its register) only when KVM_RUN is entered again; with
        // immediate_exit set KVM finishes it and returns at once with EINTR.
        self.fd.set_kvm_immediate_exit(1);
        let completed = self.fd.run().map(|_| ()).or_else(|e| {
            if e.errno() == libc::EINTR {
                Ok(())
            } else {
                Err(e)
            }
        });
        self.fd.set_kvm_immediate_exit(0);
        completed.map_err(err("completing pending I/O (KVM_RUN, immediate exit)"))?;

        let mut unavailable = Vec::new();
        let mp_state = self.fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
        let regs = self.fd.get_regs().map_err(err("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        let fpu = match self.fd.get_xsave() {
            Ok(x) => FpuState::Xsave(Box::new(x)),
            Err(_) => {
                unavailable.push("xsave".to_string());
                FpuState::Legacy(Box::new(
                    self.fd.get_fpu().map_err(err("KVM_GET_FPU"))?.into(),
                ))
            }
        };
        let xcrs = match self.fd.get_xcrs() {
            Ok(x) => Some(x),
            Err(_) => {
                unavailable.push("xcrs".to_string());
                None
            }
        };
        let debug_regs = self.fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?;
        let lapic = self.fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        let tsc_khz = match self.fd.get_tsc_khz() {
            Ok(k) => Some(k),
            Err(_) => {
                unavailable.push("tsc_khz".to_string());
                None
            }
        };
        let cpuid = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(err("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let (msrs, unreadable) = self.read_msrs(msr_list)?;
        unavailable.extend(unreadable.iter().map(|m| format!("msr {m:#x}")));
        let vcpu_events = self
            .fd
            .get_vcpu_events()
            .map_err(err("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            index,
            cpuid,
            mp_state,
            regs,
            sregs,
            fpu,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            vcpu_events,
            tsc_khz,
            unavailable,
        })
    }

    /// Reads every MSR of `list` the host lets us read; returns them (TSC deadline last)
    /// and the ones it refused. KVM_GET_MSRS stops at the first MSR it cannot read, so
    /// that one is skipped and the read goes on after it.
    fn read_msrs(
        &self,
        list: &[u32],
    ) -> Result<(Vec<kvm_bindings::kvm_msr_entry>, Vec<u32>), VcpuStateError> {
        let index = self.index;
        let mut ordered: Vec<u32> = list
            .iter()
            .copied()
            .filter(|&m| m != MSR_IA32_TSC_DEADLINE)
            .collect();
        if list.contains(&MSR_IA32_TSC_DEADLINE) {
            ordered.push(MSR_IA32_TSC_DEADLINE);
        }
        let mut read = Vec::with_capacity(ordered.len());
        let mut refused = Vec::new();
        let mut at = 0;
        while at < ordered.len() {
            let chunk = &ordered[at..(at + kvm_bindings::KVM_MAX_MSR_ENTRIES).min(ordered.len())];
            let entries: Vec<_> = chunk
                .iter()
                .map(|&m| kvm_bindings::kvm_msr_entry {
                    index: m,
                    ..Default::default()
                })
                .collect();
            let mut msrs = kvm_bindings::Msrs::from_entries(&entries).map_err(|e| {
                VcpuStateError::Refused {
                    index,
                    what: format!("MSR list: {e:?}"),
                }
            })?;
            let n = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(|source| VcpuStateError::Ioctl {
                    index,
                    what: "KVM_GET_MSRS",
                    source,
                })?;
            read.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
            at += n;
            if n < chunk.len() {
                refused.push(ordered[at]);
                at += 1;
            }
        }
        Ok((read, refused))
    }

    /// Puts a saved state into this (new, not yet running) vCPU, in Firecracker's order:
    /// TSC frequency, CPUID, MP state, registers, FPU, XCRs, debug registers, LAPIC, MSRs,
    /// and the pending events last.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuStateError> {
        let index = self.index;
        if state.index != index {
            return Err(VcpuStateError::Refused {
                index,
                what: format!("the saved state is vCPU {}'s", state.index),
            });
        }
        let err = |what: &'static str| {
            move |source| VcpuStateError::Ioctl {
                index,
                what,
                source,
            }
        };
        if let Some(khz) = state.tsc_khz {
            let here = self.fd.get_tsc_khz().map_err(err("KVM_GET_TSC_KHZ"))?;
            if here != khz {
                self.fd
                    .set_tsc_khz(khz)
                    .map_err(err("KVM_SET_TSC_KHZ (the snapshot's TSC frequency)"))?;
            }
        }
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|e| VcpuStateError::Refused {
            index,
            what: format!("saved CPUID: {e:?}"),
        })?;
        self.fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(err("KVM_SET_MP_STATE"))?;
        self.fd.set_regs(&state.regs).map_err(err("KVM_SET_REGS"))?;
        self.fd
            .set_sregs(&state.sregs)
            .map_err(err("KVM_SET_SREGS"))?;
        match &state.fpu {
            // SAFETY: the buffer is a whole `kvm_xsave` (4 KiB region) read back from
            // KVM_GET_XSAVE; the CPUID set above is the one it was saved under, so KVM
            // expects no larger (XSAVE2) buffer.
            FpuState::Xsave(x) => unsafe { self.fd.set_xsave(x) }.map_err(err("KVM_SET_XSAVE"))?,
            FpuState::Legacy(f) => self
                .fd
                .set_fpu(&f.as_ref().into())
                .map_err(err("KVM_SET_FPU"))?,
        }
        if let Some(xcrs) = &state.xcrs {
            self.fd.set_xcrs(xcrs).map_err(err("KVM_SET_XCRS"))?;
        }
        self.fd
            .set_debug_regs(&state.debug_regs)
            .map_err(err("KVM_SET_DEBUGREGS"))?;
        self.fd
            .set_lapic(&state.lapic)
            .map_err(err("KVM_SET_LAPIC"))?;
        for chunk in state.msrs.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
            let msrs =
                kvm_bindings::Msrs::from_entries(chunk).map_err(|e| VcpuStateError::Refused {
                    index,
                    what: format!("saved MSRs: {e:?}"),
                })?;
            let n = self.fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
            if n < chunk.len() {
                return Err(VcpuStateError::Refused {
                    index,
                    what: format!(
                        "this host refused to restore MSR {:#x} (KVM_SET_MSRS wrote {n} of {})",
                        chunk[n].index,
                        chunk.len()
                    ),
                });
            }
        }
        self.fd
            .set_vcpu_events(&state.vcpu_events)
            .map_err(err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}
