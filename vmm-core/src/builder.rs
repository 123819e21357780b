//! Assembles a partition's VM from a plain [`VmConfig`]: memory, framebuffer slot,
//! legacy devices, boot payload, vCPUs.

use std::fs::File;
use std::sync::{Arc, Mutex};

use kvm_ioctls::Kvm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::VirtioMmioSlot;
use crate::acpi::{self, AcpiConfig, IsaDevice};
use crate::arch::{boot, cpuid, mptable, regs};
use crate::devices::framebuffer::FramebufferLayout;
use crate::devices::legacy::acpi_pm::{self, AcpiPm};
use crate::devices::legacy::{cmos, i8042, serial, Cmos, SerialConsole, SerialSink, I8042};
use crate::devices::virtio::balloon::{BalloonHandle, VirtioBalloon};
use crate::devices::virtio::block::{BlockError, BlockWorker, VirtioBlock};
use crate::devices::virtio::console::{ConsoleHandle, VirtioConsole};
use crate::devices::virtio::input::{InputEventSender, VirtioInput};
use crate::devices::virtio::mmio::{MmioError, VirtioMmioDevice};
use crate::devices::virtio::net::{NetConfig, NetError, NetWorker, VirtioNet};
use crate::devices::virtio::notify::QueueNotifier;
use crate::devices::virtio::rng::VirtioRng;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{Bus, BusDevice, InterruptLine, StopHandle};
use crate::layout::{
    ACPI_SLEEP_CONTROL_PORT, FRAMEBUFFER_ADDR, FRAMEBUFFER_MAX_SIZE, VIRTIO_MMIO_MAX_DEVICES,
};
use crate::shm::{MappedRegion, Memfd, MemfdError};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{EntryPoint, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

pub use crate::devices::virtio::block::DiskConfig;

pub const MAX_VCPUS: u8 = 8;
/// Initial stack of the boot vCPU, below the page tables.
const BOOT_STACK: u64 = 0x8ff0;

/// What the boot vCPU runs first.
#[derive(Debug)]
pub enum BootSource {
    /// A Linux kernel (bzImage or uncompressed vmlinux) through the 64-bit boot protocol.
    Linux {
        kernel: File,
        initrd: Option<File>,
        cmdline: String,
    },
    /// Flat 64-bit code at `load_addr`, entered in long mode at its first byte with the
    /// low 1 GiB identity-mapped. For micro-guests built by tests.
    Raw { code: Vec<u8>, load_addr: u64 },
    /// Nothing to load: memory and registers come from a snapshot ([`restore`]).
    Snapshot,
}

/// A partition, fully resolved: no policy language, only what the VM needs.
pub struct VmConfig {
    pub mem_mib: u64,
    pub vcpus: u8,
    pub boot: BootSource,
    pub display: Option<FramebufferLayout>,
    pub serial: SerialSink,
    /// virtio-blk disks, in guest order: the first is `/dev/vda`, the next `/dev/vdb`.
    pub disks: Vec<DiskConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} vCPUs requested; a partition has 1..={MAX_VCPUS}")]
    VcpuCount(u8),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("CPUID: {0}")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error("framebuffer of {size:#x} bytes exceeds the {FRAMEBUFFER_MAX_SIZE:#x}-byte window")]
    FramebufferTooLarge { size: u64 },
    #[error("micro-guest code of {len} bytes at {addr:#x} does not fit guest memory: {reason}")]
    RawCode {
        addr: u64,
        len: usize,
        reason: String,
    },
    #[error("creating an eventfd for {what}: {source}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("virtio device {name}: {source}")]
    Virtio {
        name: &'static str,
        source: MmioError,
    },
    #[error("{count} virtio devices (the disks, the network and the balloon after {fixed} others) exceed the {max} virtio-mmio windows")]
    TooManyDisks {
        count: usize,
        fixed: usize,
        max: u64,
    },
    #[error("disk {index}: {source}")]
    Disk { index: usize, source: BlockError },
    #[error("network interface: {0}")]
    Net(#[from] NetError),
    #[error("device bus: {0}")]
    Bus(#[from] crate::devices::BusError),
    #[error("starting the virtio notifier thread: {source}")]
    NotifierThread { source: std::io::Error },
    #[error("starting vCPU thread {index}: {source}")]
    Thread { index: u8, source: std::io::Error },
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("a VM built to boot cannot take BootSource::Snapshot; use builder::restore")]
    SnapshotBoot,
}

/// The guest framebuffer: a sealed memfd (so the supervisor can map the same pixels),
/// mapped here as its own memslot with dirty logging.
pub struct Framebuffer {
    pub layout: FramebufferLayout,
    pub slot: u32,
    // The mapping is dropped before the memfd; the VM (which uses the mapping) is dropped
    // before both, see `Partition`'s field order.
    pub region: MappedRegion,
    pub memfd: Memfd,
}

impl Framebuffer {
    /// A copy of the pixel bytes as they are now (the guest may be writing: a pixel can
    /// be torn, nothing worse).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.layout.bytes().min(self.region.len())];
        // The length is clamped to the mapping above, so this cannot fail.
        let _ = self.region.read_at(0, &mut out);
        out
    }
}

/// A built, not yet running partition.
pub struct Partition {
    // Field order is drop order: the VM (and its vCPU fds) go before the memory they map.
    pub(crate) vm: Vm,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) framebuffer: Option<Framebuffer>,
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) stop: Arc<StopHandle>,
    pub(crate) serial: Arc<Mutex<SerialConsole>>,
    pub(crate) virtio: VirtioHandles,
    /// Disk devices whose worker threads start with the vCPUs (not here: the partition
    /// process must stay single-threaded until its sandbox is applied).
    pub(crate) disks: Vec<Disk>,
    /// The network interface, whose worker the partition loop starts with the vCPUs
    /// (see [`Partition::take_network`]).
    pub(crate) network: Option<NetInterface>,
    /// Queue eventfds, served by a thread that starts with the vCPUs.
    pub(crate) notifier: QueueNotifier,
}

/// A virtio-net device and its worker, not yet started.
pub struct NetInterface {
    dev: SharedVirtio<VirtioNet>,
    worker: NetWorker,
}

impl NetInterface {
    /// Starts the receive worker; with `confine`, under its own seccomp filter. The
    /// thread ends when the device (held by the MMIO bus) is dropped.
    pub fn start(self, confine: bool) -> Result<std::thread::JoinHandle<()>, NetError> {
        self.worker.start(&self.dev, confine)
    }
}

/// A virtio-blk device and its worker, not yet started.
pub(crate) struct Disk {
    pub dev: SharedVirtio<VirtioBlock>,
    pub worker: BlockWorker,
}

/// Host-side ends of the partition's virtio devices.
#[derive(Clone)]
pub struct VirtioHandles {
    pub keyboard: InputEventSender,
    /// Absolute pointer; present when the partition has a display.
    pub tablet: Option<InputEventSender>,
    /// A plain byte stream (`/dev/hvc0` in the guest).
    pub console: ConsoleHandle,
    /// The guest agent's own stream (`/dev/hvc1`: its window follows the first
    /// console's, and the guest numbers consoles in probe order).
    pub agent: ConsoleHandle,
    /// The memory balloon (the last window: adding it moved no other device).
    pub balloon: Option<BalloonHandle>,
}

impl Partition {
    /// The network interface to start once the process may have threads (after its
    /// sandbox); `None` without a network or when already taken.
    pub fn take_network(&mut self) -> Option<NetInterface> {
        self.network.take()
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub fn stop_handle(&self) -> Arc<StopHandle> {
        self.stop.clone()
    }

    /// Adds a port I/O device (used to attach devices built outside this module).
    pub fn add_pio_device(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BuildError> {
        Ok(self.pio.insert(device, base, len)?)
    }

    pub fn add_mmio_device(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BuildError> {
        Ok(self.mmio.insert(device, base, len)?)
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn framebuffer(&self) -> Option<&Framebuffer> {
        self.framebuffer.as_ref()
    }
}

pub fn build(kvm: &Kvm, config: VmConfig) -> Result<Partition, BuildError> {
    build_with_network(kvm, config, None)
}

/// [`build`] with a virtio-net interface on `network` (declared in ACPI only then: a
/// partition without a network has no device at all).
pub fn build_with_network(
    kvm: &Kvm,
    config: VmConfig,
    network: Option<NetConfig>,
) -> Result<Partition, BuildError> {
    assemble(kvm, config, network, None)
}

/// Builds the VM a snapshot was taken of and puts its state back: memory mapped
/// copy-on-write from the snapshot, then (Firecracker's order) the VM's PIT, clock and
/// irqchip, each vCPU, each device, the framebuffer. `config` must be the snapshot's
/// ([`crate::snapshot::Snapshot::config`]) with the caller's serial sink and reopened
/// disks; its boot source is [`BootSource::Snapshot`]. The result starts like a built one.
/// A snapshot taken with a network interface restores only with one (`network`, a new
/// backend: a record without its device, or a device without its record, is refused).
pub fn restore(
    kvm: &Kvm,
    config: VmConfig,
    network: Option<NetConfig>,
    snapshot: &mut crate::snapshot::Snapshot,
) -> Result<Partition, BuildError> {
    use crate::snapshot::SnapshotError;
    let saved = &snapshot.config;
    let asked = (
        config.mem_mib,
        config.vcpus,
        config.display,
        config.disks.len(),
    );
    let have = (saved.mem_mib, saved.vcpus, saved.display, saved.disks);
    if asked != have {
        return Err(SnapshotError::Mismatch(format!(
            "memory MiB, vCPUs, display, disks {asked:?} asked, the snapshot has {have:?}"
        ))
        .into());
    }
    assemble(kvm, config, network, Some(snapshot))
}

fn assemble(
    kvm: &Kvm,
    config: VmConfig,
    network: Option<NetConfig>,
    mut snapshot: Option<&mut crate::snapshot::Snapshot>,
) -> Result<Partition, BuildError> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(BuildError::VcpuCount(config.vcpus));
    }
    let memory = match snapshot.as_deref_mut() {
        Some(s) => {
            if !(memory::MIN_MEM_MIB..=memory::MAX_MEM_MIB).contains(&config.mem_mib) {
                return Err(MemoryError::BadSize {
                    mib: config.mem_mib,
                }
                .into());
            }
            s.map_memory(&crate::layout::ram_regions(config.mem_mib << 20))?
        }
        None => memory::create_guest_memory(config.mem_mib)?,
    };
    let mut vm = Vm::new(kvm)?;
    vm.register_guest_memory(&memory)?;
    let framebuffer = config
        .display
        .map(|layout| attach_framebuffer(&mut vm, layout))
        .transpose()?;

    let stop = StopHandle::new().map_err(|source| BuildError::EventFd {
        what: "stop",
        source,
    })?;
    let (pio, serial) = legacy_devices(&vm, stop.clone(), config.serial)?;
    let mut mmio = Bus::new();
    let mut notifier = QueueNotifier::default();
    let (virtio, mut slots) =
        virtio_devices(&vm, &mut mmio, &mut notifier, &memory, config.display)?;
    // The network and the balloon follow the disks.
    let net_windows = usize::from(network.is_some()) + 1;
    let disks = disk_devices(
        &vm,
        &mut mmio,
        &mut notifier,
        &memory,
        &mut slots,
        config.disks,
        net_windows,
    )?;
    let network = network
        .map(|net| {
            let (device, worker) = VirtioNet::new(net)?;
            // disk_devices() checked that this window exists.
            let n = slots.len() as u32;
            let (dev, slot) =
                attach_virtio(&vm, &mut mmio, &mut notifier, &memory, n, "network", device)?;
            slots.push(slot);
            Ok::<_, BuildError>(NetInterface { dev, worker })
        })
        .transpose()?;
    let mut virtio = virtio;
    {
        // disk_devices() checked that this window exists.
        let n = slots.len() as u32;
        let (dev, slot) = attach_virtio(
            &vm,
            &mut mmio,
            &mut notifier,
            &memory,
            n,
            "balloon",
            VirtioBalloon::new(),
        )?;
        slots.push(slot);
        virtio.balloon = Some(BalloonHandle::new(dev));
    }

    if let Some(snapshot) = snapshot {
        let vcpus = restore_state(
            snapshot,
            &vm,
            config.vcpus,
            &pio,
            &mmio,
            framebuffer.as_ref(),
        )?;
        notifier.notify_all();
        return Ok(Partition {
            vm,
            vcpus,
            framebuffer,
            memory,
            pio,
            mmio,
            stop,
            serial,
            virtio,
            disks,
            network,
            notifier,
        });
    }

    regs::write_boot_tables(&memory)?;
    mptable::write(&memory, config.vcpus)?;
    let rsdp = acpi::create_acpi_tables(
        &memory,
        &AcpiConfig {
            vcpus: config.vcpus,
            virtio: &slots,
            isa: &[IsaDevice::COM1, IsaDevice::RTC],
        },
    )?;
    let base_cpuid = cpuid::supported(kvm);
    let entry = match &config.boot {
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        } => {
            let info = boot::load_linux(
                &memory,
                &boot::LinuxBoot {
                    kernel,
                    initrd: initrd.as_ref(),
                    cmdline,
                    framebuffer: config.display,
                    acpi_rsdp: Some(rsdp.0),
                },
            )?;
            EntryPoint {
                rip: info.entry,
                rsi: info.boot_params,
                rsp: BOOT_STACK,
            }
        }
        BootSource::Raw { code, load_addr } => {
            memory
                .write_slice(code, GuestAddress(*load_addr))
                .map_err(|e| BuildError::RawCode {
                    addr: *load_addr,
                    len: code.len(),
                    reason: e.to_string(),
                })?;
            EntryPoint {
                rip: *load_addr,
                rsi: 0,
                rsp: BOOT_STACK,
            }
        }
        BootSource::Snapshot => return Err(BuildError::SnapshotBoot),
    };
    let base_cpuid = match (&config.boot, base_cpuid) {
        (_, Ok(c)) => c,
        // Micro-guests do not need kvm-clock; stock kernels do.
        (BootSource::Raw { .. }, Err(cpuid::CpuidError::NoKvmLeaves)) => {
            cpuid::supported_unchecked(kvm)?
        }
        (_, Err(e)) => return Err(e.into()),
    };

    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for index in 0..config.vcpus {
        let vcpu = Vcpu::new(vm.fd(), index)?;
        vcpu.configure(&base_cpuid, config.vcpus, (index == 0).then_some(entry))?;
        vcpus.push(vcpu);
    }

    Ok(Partition {
        vm,
        vcpus,
        framebuffer,
        memory,
        pio,
        mmio,
        stop,
        serial,
        virtio,
        disks,
        network,
        notifier,
    })
}

/// Puts a snapshot's state into a freshly assembled VM (devices attached, nothing run):
/// VM, vCPUs, every bus device by address, framebuffer pixels. Every record must be used
/// and every device must have one.
fn restore_state(
    snapshot: &crate::snapshot::Snapshot,
    vm: &Vm,
    vcpu_count: u8,
    pio: &Bus,
    mmio: &Bus,
    framebuffer: Option<&Framebuffer>,
) -> Result<Vec<Vcpu>, BuildError> {
    use crate::snapshot::{record, SnapshotError};
    let mut used = vec![
        record::CONFIG.to_string(),
        record::MEMORY.to_string(),
        record::VM.to_string(),
    ];
    vm.restore_state(&snapshot.decode(record::VM)?)
        .map_err(SnapshotError::from)?;
    let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
    for index in 0..vcpu_count {
        let vcpu = Vcpu::new(vm.fd(), index)?;
        let name = record::vcpu(index);
        let state: crate::vstate::vcpu::VcpuState = snapshot.decode(&name)?;
        vcpu.restore_state(&state).map_err(SnapshotError::from)?;
        used.push(name);
        vcpus.push(vcpu);
    }
    for (bus, name) in [
        (pio, record::pio as fn(u64) -> String),
        (mmio, record::mmio),
    ] {
        for (base, dev) in bus.devices() {
            let device = name(base);
            let state = snapshot.raw(&device)?;
            dev.lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore_state(state)
                .map_err(|source| SnapshotError::Record {
                    record: device.clone(),
                    source,
                })?;
            used.push(device);
        }
    }
    if let Some(fb) = framebuffer {
        snapshot.read_framebuffer(&fb.region)?;
    }
    if let Some(extra) = snapshot
        .record_names()
        .find(|n| !used.iter().any(|u| u == n))
    {
        return Err(SnapshotError::Mismatch(format!(
            "record {extra:?} has no device here (a device the snapshot had is missing)"
        ))
        .into());
    }
    Ok(vcpus)
}

fn attach_framebuffer(vm: &mut Vm, layout: FramebufferLayout) -> Result<Framebuffer, BuildError> {
    let size = layout.region_size();
    if size > FRAMEBUFFER_MAX_SIZE {
        return Err(BuildError::FramebufferTooLarge { size });
    }
    let fb_err = |e: MemfdError| MemoryError::Framebuffer {
        bytes: size as usize,
        reason: e.to_string(),
    };
    let memfd = Memfd::create("bulkhead-framebuffer", size as usize).map_err(fb_err)?;
    let region = memfd.map_shared_rw().map_err(fb_err)?;
    let slot = vm.register_framebuffer(&region, FRAMEBUFFER_ADDR)?;
    Ok(Framebuffer {
        layout,
        slot,
        region,
        memfd,
    })
}

fn legacy_devices(
    vm: &Vm,
    stop: Arc<StopHandle>,
    sink: SerialSink,
) -> Result<(Bus, Arc<Mutex<SerialConsole>>), BuildError> {
    let mut pio = Bus::new();
    let com1_irq =
        Arc::new(
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BuildError::EventFd {
                what: "COM1 IRQ",
                source,
            })?,
        );
    vm.register_irqfd(&com1_irq, serial::COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(com1_irq, sink)));
    pio.insert(serial.clone(), u64::from(serial::COM1_PORT), 8)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(stop.clone()))),
        u64::from(i8042::I8042_PORT),
        i8042::I8042_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(Cmos::default())),
        u64::from(cmos::CMOS_PORT),
        cmos::CMOS_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(AcpiPm::new(stop))),
        u64::from(ACPI_SLEEP_CONTROL_PORT),
        acpi_pm::PORT_RANGE_LEN,
    )?;
    Ok((pio, serial))
}

/// A virtio device as both the MMIO bus and its host-side handle hold it.
type SharedVirtio<D> = Arc<Mutex<VirtioMmioDevice<D>>>;

/// Places one virtio device in window `n` with its irqfd and one ioeventfd per queue.
fn attach_virtio<D: VirtioDevice + 'static>(
    vm: &Vm,
    mmio: &mut Bus,
    notifier: &mut QueueNotifier,
    memory: &GuestMemoryMmap,
    n: u32,
    name: &'static str,
    device: D,
) -> Result<(SharedVirtio<D>, VirtioMmioSlot), BuildError> {
    let slot = VirtioMmioSlot::standard(n);
    let irq = Arc::new(
        EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| BuildError::EventFd { what: name, source })?,
    );
    vm.register_irqfd(&irq, slot.gsi)?;
    let line: Arc<dyn InterruptLine> = irq;
    let queues = device.queue_max_sizes().len() as u32;
    let dev = VirtioMmioDevice::new(device, memory.clone(), line)
        .map_err(|source| BuildError::Virtio { name, source })?;
    let dev = Arc::new(Mutex::new(dev));
    mmio.insert(dev.clone(), slot.base, slot.size)?;
    for queue in 0..queues {
        let evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| BuildError::EventFd { what: name, source })?;
        let addr = slot.base + crate::devices::virtio::mmio::reg::QUEUE_NOTIFY;
        if let Err(e) = vm.register_ioeventfd(&evt, addr, queue) {
            // The MMIO exit still reaches the device: slower, same behaviour.
            tracing::warn!(device = name, error = %e, "queue notifications exit to the VMM");
            break;
        }
        // Without a second handle the transport comes back to an unfinished queue on its
        // own thread instead (see VirtioMmioDevice::process_queue).
        if let Ok(own) = evt.try_clone() {
            dev.lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_queue_event(queue as usize, own);
        }
        notifier.add(evt, dev.clone(), queue);
    }
    Ok((dev, slot))
}

fn virtio_devices(
    vm: &Vm,
    mmio: &mut Bus,
    notifier: &mut QueueNotifier,
    memory: &GuestMemoryMmap,
    display: Option<FramebufferLayout>,
) -> Result<(VirtioHandles, Vec<VirtioMmioSlot>), BuildError> {
    let mut slots = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n - 1
    };
    let (kbd, s) = attach_virtio(
        vm,
        mmio,
        notifier,
        memory,
        next(),
        "keyboard",
        VirtioInput::keyboard(),
    )?;
    slots.push(s);
    let tablet = match display {
        Some(fb) => {
            let tablet = VirtioInput::tablet(fb.width, fb.height);
            let (dev, s) = attach_virtio(vm, mmio, notifier, memory, next(), "tablet", tablet)?;
            slots.push(s);
            Some(InputEventSender::new(dev))
        }
        None => None,
    };
    let console = VirtioConsole::new().map_err(|source| BuildError::EventFd {
        what: "virtio-console",
        source,
    })?;
    let (con, s) = attach_virtio(vm, mmio, notifier, memory, next(), "console", console)?;
    slots.push(s);
    let agent = VirtioConsole::new().map_err(|source| BuildError::EventFd {
        what: "virtio-console (agent)",
        source,
    })?;
    let (agent, s) = attach_virtio(vm, mmio, notifier, memory, next(), "agent console", agent)?;
    slots.push(s);
    let (_, s) = attach_virtio(vm, mmio, notifier, memory, next(), "rng", VirtioRng::new())?;
    slots.push(s);
    let handles = VirtioHandles {
        keyboard: InputEventSender::new(kbd),
        tablet,
        console: ConsoleHandle::new(con),
        agent: ConsoleHandle::new(agent),
        balloon: None,
    };
    Ok((handles, slots))
}

/// One virtio-blk device per disk, in the windows after the other virtio devices, in
/// configuration order: ACPI node order is window order is the guest's probe order, so
/// the first disk is `/dev/vda`. `after` more windows (the network) follow the disks.
fn disk_devices(
    vm: &Vm,
    mmio: &mut Bus,
    notifier: &mut QueueNotifier,
    memory: &GuestMemoryMmap,
    slots: &mut Vec<VirtioMmioSlot>,
    disks: Vec<DiskConfig>,
    after: usize,
) -> Result<Vec<Disk>, BuildError> {
    let fixed = slots.len();
    let count = fixed + disks.len() + after;
    if count as u64 > VIRTIO_MMIO_MAX_DEVICES {
        return Err(BuildError::TooManyDisks {
            count,
            fixed,
            max: VIRTIO_MMIO_MAX_DEVICES,
        });
    }
    let mut out = Vec::with_capacity(disks.len());
    for (index, disk) in disks.into_iter().enumerate() {
        let (device, worker) =
            VirtioBlock::new(disk).map_err(|source| BuildError::Disk { index, source })?;
        // Below VIRTIO_MMIO_MAX_DEVICES, checked above.
        let n = slots.len() as u32;
        let (dev, slot) = attach_virtio(vm, mmio, notifier, memory, n, "disk", device)?;
        slots.push(slot);
        out.push(Disk { dev, worker });
    }
    Ok(out)
}
