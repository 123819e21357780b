//! vCPUs: initial state and the run loop that turns exits into bus accesses or a stop.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

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
}

/// Holds vCPU threads outside `KVM_RUN` while the partition is paused.
#[derive(Default)]
pub struct PauseGate {
    paused: Mutex<bool>,
    wake: Condvar,
    parked: AtomicUsize,
}

impl PauseGate {
    pub fn set_paused(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = paused;
        self.wake.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// vCPU threads currently waiting at the gate.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    fn wait_while_paused(&self, stop: &StopHandle) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if !*paused {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while *paused && !stop.is_stopped() {
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
        Ok(Self { fd, index })
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
        while !stop.is_stopped() {
            gate.wait_while_paused(&stop);
            let outcome = self.run_once(&pio, &mmio);
            exits.fetch_add(1, Ordering::Relaxed);
            if let Some(reason) = outcome {
                stop.request(reason);
            }
        }
    }

    fn run_once(&mut self, pio: &Bus, mmio: &Bus) -> Option<StopReason> {
        let index = self.index;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return None,
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
                // Copied out (at most the one PIO page) so the size can be asked for.
                let len = data.len().min(PIO_PAGE);
                let mut bytes = [0u8; PIO_PAGE];
                bytes[..len].copy_from_slice(&data[..len]);
                let unit = self.pio_unit();
                pio.write_units(u64::from(port), &bytes[..len], unit);
                None
            }
            VcpuExit::MmioRead(addr, data) => {
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            VcpuExit::MmioWrite(addr, data) => {
                mmio.write(addr, data);
                None
            }
            VcpuExit::Hlt => None,
            VcpuExit::Intr => None,
            VcpuExit::SystemEvent(kind, _) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
                other => StopReason::Crashed(format!("vCPU {index}: system event {other}")),
            }),
            other => {
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
