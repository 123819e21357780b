//! Fuzz targets for vmm-core's hostile boundaries, shared by the libFuzzer binaries
//! (`cargo fuzz run control_decoder|virtio_mmio`) and the stable-toolchain driver
//! (`stable_fuzz`).
//!
//! - [`control_decoder`]: bytes a compromised partition could write on its control
//!   socket, through the host's `MessageReader`, plus the JSON decoders and `validate()`.
//!   Besides "never panics": fds handed out match the message, the reader never holds
//!   more than `MAX_FDS_PER_MESSAGE`, and no single allocation exceeds [`ALLOC_CAP`].
//! - [`virtio_mmio`]: a hostile guest driver: MMIO register reads/writes, arbitrary bytes
//!   in guest memory (descriptor tables, rings, buffers), notifications, against
//!   virtio-rng, virtio-console (with its host side), virtio-blk (real worker thread,
//!   temporary disk) and virtio-input (keyboard and tablet, with the host sending
//!   events). Must never panic, in this thread or the block worker.
//! - [`agent_decoder`]: what a compromised guest agent writes on its console, through
//!   agent-proto's stream decoder (see [`agent`]).

mod agent;

pub use agent::{agent_decoder, AGENT_ALLOC_CAP};

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use vm_memory::{Bytes, GuestAddress};
use vmm_core::control::{
    Command, Event, InputDevice, InputEvent, Message, MessageReader, VmState, VmStats,
    MAX_FDS_PER_MESSAGE, MAX_MESSAGE, PROTOCOL_VERSION,
};
use vmm_core::devices::framebuffer::{DamageRect, FramebufferLayout};
use vmm_core::devices::virtio::block::{DiskConfig, VirtioBlock, SECTOR_SIZE};
use vmm_core::devices::virtio::console::{ConsoleHandle, VirtioConsole};
use vmm_core::devices::virtio::input::{InputEventSender, VirtioInput};
use vmm_core::devices::virtio::mmio::reg;
use vmm_core::devices::virtio::rng::VirtioRng;
use vmm_core::devices::virtio::test_utils::{Layout, TestDriver, MEM_SIZE};
use vmm_core::devices::virtio::{status, VirtioDevice};
use vmm_core::launch::FileRole;

// ---- allocation cap ----

/// Largest single allocation the control decoder may make for one input: a peer chooses
/// lengths, never our allocation size. The reader's own buffer is `MAX_MESSAGE`.
pub const ALLOC_CAP: usize = 4 * MAX_MESSAGE;

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the largest single allocation made meanwhile (any thread).
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    f();
    ARMED.store(false, Ordering::Relaxed);
    LARGEST.load(Ordering::Relaxed)
}

// ---- control_decoder ----

/// Longest input used: a bit more than two maximal frames.
const MAX_CONTROL_INPUT: usize = 2 * MAX_MESSAGE + 64;

/// Input: one mode byte, then the stream. Mode bit 0: the stream is written raw (no fds);
/// set, it is a list of segments `[h, len_lo, len_hi, bytes…]`, each sent with one
/// `sendmsg` carrying `h % 8` fds (more than `MAX_FDS_PER_MESSAGE` is allowed). Mode bit
/// 1 picks the `Command` reader (the partition's side) instead of the `Event` reader
/// (the host's side). The whole input is also decoded directly as `Event` and `Command`.
/// Returns whether any message came out of the reader.
pub fn control_decoder(data: &[u8]) -> bool {
    let data = &data[..data.len().min(MAX_CONTROL_INPUT)];
    let mut decoded = 0;
    let largest = largest_allocation(|| {
        if let Ok(e) = serde_json::from_slice::<Event>(data) {
            let _ = e.validate();
            let _ = e.fd_count();
        }
        if let Ok(c) = serde_json::from_slice::<Command>(data) {
            let _ = c.validate();
            let _ = c.fd_count();
        }
        let Some((&mode, stream)) = data.split_first() else {
            return;
        };
        decoded = if mode & 2 == 0 {
            read_stream::<Event>(mode, stream, |e| {
                let _ = e.validate();
            })
        } else {
            read_stream::<Command>(mode, stream, |c| {
                let _ = c.validate();
            })
        };
    });
    assert!(
        largest <= ALLOC_CAP,
        "one allocation of {largest} bytes (cap {ALLOC_CAP})"
    );
    decoded > 0
}

/// Feeds `stream` to a reader of `M`; returns how many messages it decoded.
fn read_stream<M: Message>(mode: u8, stream: &[u8], check: impl Fn(&M)) -> usize {
    let mut decoded = 0;
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let spare = std::fs::File::open("/dev/null").expect("/dev/null");
    // A writer that stops is cut off by the deadline; keep it short for the fuzzer.
    let mut reader = MessageReader::<M>::with_frame_deadline(theirs, Duration::from_millis(100));
    std::thread::scope(|s| {
        s.spawn(move || {
            if mode & 1 == 0 {
                let _ = send(ours.as_fd(), stream, &[]);
            } else {
                let mut rest = stream;
                while let [h, lo, hi, tail @ ..] = rest {
                    let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
                    let fds = vec![spare.as_fd(); usize::from(*h % 8)];
                    if send(ours.as_fd(), &tail[..len], &fds).is_err() {
                        break;
                    }
                    rest = &tail[len..];
                }
            }
            // Dropping `ours` closes the stream: the reader sees the end.
        });
        loop {
            match reader.recv() {
                Ok(r) => {
                    assert_eq!(r.fds.len(), r.message.fd_count(), "fds match the message");
                    check(&r.message);
                    decoded += 1;
                }
                Err(_) => break,
            }
            assert!(reader.held_fds() <= MAX_FDS_PER_MESSAGE);
        }
        assert!(reader.held_fds() <= MAX_FDS_PER_MESSAGE);
        // Closing our end unblocks a writer with more to say.
        drop(reader);
    });
    decoded
}

/// Writes all of `bytes` (fds with the first `sendmsg`), without SIGPIPE.
fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> rustix::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut sent = 0;
    let mut first = true;
    while sent < bytes.len() || first {
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        if first && !fds.is_empty() {
            ancillary.push(SendAncillaryMessage::ScmRights(fds));
        }
        first = false;
        match sendmsg(
            sock,
            &[IoSlice::new(&bytes[sent..])],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => first = false,
            Err(e) => return Err(e),
        }
        if bytes.is_empty() {
            break;
        }
    }
    Ok(())
}

// ---- virtio_mmio ----

/// Reads the input as a little-endian stream; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

const REGS: &[u64] = &[
    reg::DEVICE_FEATURES_SEL,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::INTERRUPT_ACK,
    reg::STATUS,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_DRIVER_LOW,
    reg::QUEUE_DRIVER_HIGH,
    reg::QUEUE_DEVICE_LOW,
    reg::QUEUE_DEVICE_HIGH,
    reg::SHM_SEL,
    reg::CONFIG,
];

/// Where op 6 puts buffers by default: past the rings the standard layout uses.
const BUF_BASE: u64 = 0x4_0000;

/// The device behind the transport and its host side.
enum Host {
    None,
    Console(ConsoleHandle),
    Block,
    Input(InputEventSender),
}

/// Input: one byte picks the device (`% 5`: rng, console, block, keyboard, tablet; for
/// the block device bit 2 makes the disk read-only), then
/// a list of operations until the input ends. See [`step`] for the operations. Returns
/// whether the device answered something and ended up running (DRIVER_OK without
/// NEEDS_RESET).
pub fn virtio_mmio(data: &[u8]) -> bool {
    let mut input = Input(data);
    let which = input.u8();
    match which % 5 {
        0 => drive(TestDriver::new(VirtioRng::new()), Host::None, &mut input),
        3 | 4 => {
            let dev = if which % 5 == 3 {
                VirtioInput::keyboard()
            } else {
                VirtioInput::tablet(640, 480)
            };
            let d = TestDriver::new(dev);
            let sender = InputEventSender::new(d.dev.clone());
            drive(d, Host::Input(sender), &mut input)
        }
        1 => {
            let d = TestDriver::new(VirtioConsole::new().expect("console"));
            let handle = ConsoleHandle::new(d.dev.clone());
            drive(d, Host::Console(handle), &mut input)
        }
        _ => {
            let file = tempfile::tempfile().expect("tempfile");
            file.set_len(64 * SECTOR_SIZE).expect("set_len");
            let (dev, worker) = VirtioBlock::new(DiskConfig {
                file,
                read_only: which & 4 != 0,
                id: "fuzz".into(),
            })
            .expect("virtio-blk");
            let d = TestDriver::new(dev);
            let thread = worker
                .start(&d.dev, d.mem.clone(), None)
                .expect("block worker");
            let running = drive(d, Host::Block, &mut input);
            // The device is gone: the worker ends; a panic there is a finding.
            if let Err(p) = thread.join() {
                std::panic::resume_unwind(p);
            }
            running
        }
    }
}

struct Driver<D: VirtioDevice> {
    d: TestDriver<D>,
    host: Host,
    layouts: Vec<Option<Layout>>,
    avail_idx: Vec<u16>,
    /// What is left of the input's pauses for the block worker, in microseconds.
    sleep_budget_us: u64,
}

fn drive<D: VirtioDevice>(d: TestDriver<D>, host: Host, input: &mut Input<'_>) -> bool {
    let queues = d
        .dev
        .lock()
        .expect("device lock")
        .device()
        .queue_max_sizes()
        .len();
    let mut drv = Driver {
        d,
        host,
        layouts: vec![None; queues],
        avail_idx: vec![0; queues],
        sleep_budget_us: 5_000,
    };
    let mut steps = 0;
    while !input.is_empty() && steps < 4096 {
        step(&mut drv, input);
        steps += 1;
    }
    let s = drv.d.status();
    let used = drv.layouts.iter().flatten().any(|l| {
        let idx: u16 = drv.d.mem.read_obj(GuestAddress(l.used + 2)).unwrap_or(0);
        idx != 0
    });
    used && s & status::DRIVER_OK != 0 && s & status::DEVICE_NEEDS_RESET == 0
}

/// One operation: the first byte says which.
fn step<D: VirtioDevice>(drv: &mut Driver<D>, input: &mut Input<'_>) {
    let d = &drv.d;
    let queues = drv.layouts.len();
    match input.u8() % 12 {
        // A 32-bit register write, usually to a known register.
        0 => {
            let r = input.u8();
            let offset = if r & 0x80 == 0 {
                REGS[usize::from(r) % REGS.len()]
            } else {
                u64::from(r & 0x7f) * 4
            };
            d.write32(offset, input.u32());
        }
        // A read of any width anywhere in the window.
        1 => {
            let offset = u64::from(input.u16() % 0x200);
            let len = [1, 2, 4, 8, 3, 0][usize::from(input.u8() % 6)];
            let _ = d.read_bytes(offset, len);
        }
        // A write of any width anywhere in the window (config space included).
        2 => {
            let offset = u64::from(input.u16() % 0x200);
            let len = [1, 2, 4, 8, 3, 0][usize::from(input.u8() % 6)];
            let bytes = input.bytes(len).to_vec();
            d.write_bytes(offset, &bytes);
        }
        // Arbitrary bytes anywhere in guest memory.
        3 => {
            let addr = u64::from(input.u32()) % MEM_SIZE;
            let len = usize::from(input.u8());
            let bytes = input.bytes(len).to_vec();
            let _ = d.mem.write_slice(&bytes, GuestAddress(addr));
        }
        // Notify a queue (or one that does not exist).
        4 => d.notify(u32::from(input.u8() % 4)),
        // The Linux probe, with fuzzed features and queue sizes; no outcome checked.
        5 => {
            let mask = if input.u8() & 1 == 0 {
                u64::MAX
            } else {
                input.u64()
            };
            let features = d.device_features() & mask;
            d.negotiate(features);
            for q in 0..queues {
                d.write32(reg::QUEUE_SEL, q as u32);
                let max = d.read32(reg::QUEUE_NUM_MAX) as u16;
                let size = match input.u8() % 4 {
                    0 => max,
                    1 => 4.min(max),
                    2 => 1,
                    _ => input.u16(),
                };
                let layout = Layout {
                    size,
                    ..TestDriver::<D>::standard_layout(q, size)
                };
                let _ = d.mem.write_slice(&[0u8; 0x4000], GuestAddress(layout.desc));
                d.write32(reg::QUEUE_NUM, u32::from(layout.size));
                d.write32(reg::QUEUE_DESC_LOW, layout.desc as u32);
                d.write32(reg::QUEUE_DESC_HIGH, 0);
                d.write32(reg::QUEUE_DRIVER_LOW, layout.avail as u32);
                d.write32(reg::QUEUE_DRIVER_HIGH, 0);
                d.write32(reg::QUEUE_DEVICE_LOW, layout.used as u32);
                d.write32(reg::QUEUE_DEVICE_HIGH, 0);
                d.write32(reg::QUEUE_READY, 1);
                drv.layouts[q] = Some(layout);
                drv.avail_idx[q] = 0;
            }
            d.driver_ok();
        }
        // A descriptor in a set-up queue's table.
        6 => {
            let q = usize::from(input.u8()) % queues.max(1);
            let index = input.u16();
            let a = input.u16();
            let addr = if a & 0x8000 == 0 {
                BUF_BASE + u64::from(a) * 8
            } else {
                input.u64()
            };
            let len = match input.u8() % 4 {
                0 => u32::from(input.u8()),
                1 => 16,
                2 => 512 + u32::from(input.u8()),
                _ => input.u32(),
            };
            let flags = input.u16() & 0x7;
            let next = input.u16();
            if let Some(Some(l)) = drv.layouts.get(q) {
                let at = l.desc + u64::from(index % l.size.max(1)) * 16;
                let _ = d.mem.write_obj(addr, GuestAddress(at));
                let _ = d.mem.write_obj(len, GuestAddress(at + 8));
                let _ = d.mem.write_obj(flags, GuestAddress(at + 12));
                let _ = d.mem.write_obj(next, GuestAddress(at + 14));
            }
        }
        // Publish a head in the available ring, or set its idx to anything.
        7 => {
            let q = usize::from(input.u8()) % queues.max(1);
            let head = input.u16();
            let lie = input.u8() & 0x10 != 0;
            if let Some(Some(l)) = drv.layouts.get(q) {
                let l = *l;
                if lie {
                    let _ = d.mem.write_obj(head, GuestAddress(l.avail + 2));
                } else {
                    let slot = drv.avail_idx[q] % l.size.max(1);
                    let _ = d
                        .mem
                        .write_obj(head, GuestAddress(l.avail + 4 + u64::from(slot) * 2));
                    drv.avail_idx[q] = drv.avail_idx[q].wrapping_add(1);
                    let _ = d.mem.write_obj(drv.avail_idx[q], GuestAddress(l.avail + 2));
                }
            }
        }
        // Take and acknowledge interrupts.
        8 => {
            let _ = d.take_irq();
            let pending = d.read32(reg::INTERRUPT_STATUS);
            d.write32(reg::INTERRUPT_ACK, pending & u32::from(input.u8()));
        }
        // The host side: console input/output, input events, or let the block worker run.
        9 => match &drv.host {
            Host::Console(h) => {
                if input.u8() & 1 == 0 {
                    let len = usize::from(input.u8());
                    let bytes = input.bytes(len).to_vec();
                    let _ = h.write_to_guest(&bytes);
                } else {
                    let mut buf = [0u8; 300];
                    let _ = h.read_from_guest(&mut buf);
                }
                let _ = h.is_ready();
                let _ = h.pending_to_guest();
            }
            Host::Block => {
                // Bounded per input, or repeated pauses slow the fuzzer to a crawl.
                let us = (u64::from(input.u8()) * 4).min(drv.sleep_budget_us);
                drv.sleep_budget_us -= us;
                std::thread::sleep(Duration::from_micros(us));
            }
            Host::Input(sender) => {
                let device = sender.kind().device();
                let _ = match input.u8() % 4 {
                    0 => sender.key(input.u16(), input.u8() & 1 != 0),
                    1 => sender.move_to(input.u32(), input.u32()),
                    2 => sender.wheel(input.u32() as i32),
                    // A batch of any events (the control side validates them first; the
                    // device must refuse what it does not declare all the same).
                    _ => {
                        let n = usize::from(input.u8() % 8);
                        let events: Vec<_> = (0..n)
                            .map(|_| {
                                InputEvent::new(
                                    device,
                                    input.u16() % 8,
                                    input.u16(),
                                    input.u32() as i32,
                                )
                            })
                            .collect();
                        sender.send(&events)
                    }
                };
                let _ = sender.is_ready();
            }
            Host::None => {}
        },
        // Reset.
        10 => {
            d.write32(reg::STATUS, 0);
            drv.avail_idx.iter_mut().for_each(|i| *i = 0);
        }
        // A used-ring read, as the driver would do.
        _ => {
            for l in drv.layouts.iter().flatten() {
                let _: Result<u16, _> = d.mem.read_obj(GuestAddress(l.used + 2));
            }
        }
    }
}

// ---- seeds ----

fn frame(json: &[u8]) -> Vec<u8> {
    let mut out = (json.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(json);
    out
}

/// Seed inputs for `target`: well-formed traffic and requests to mutate from.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "control_decoder" => control_seeds(),
        "agent_decoder" => agent::agent_seeds(),
        _ => virtio_seeds(),
    }
}

fn control_seeds() -> Vec<Vec<u8>> {
    let mut events: Vec<Vec<u8>> = Vec::new();
    for e in Event::serial_chunks(b"hello\n\xff")
        .chain(Event::console_chunks(b"$ "))
        .chain([Event::Agent {
            bytes: b"\x07\x00\x00\x00\x81\x01\x00\x01\x00\x00\x00".to_vec(),
        }])
        .chain(Event::damage_chunks(&[]))
    {
        events.push(serde_json::to_vec(&e).expect("serialize"));
    }
    for e in [
        Event::Hello {
            version: PROTOCOL_VERSION,
            name: "work".into(),
            pid: 42,
        },
        Event::Framebuffer {
            layout: FramebufferLayout::new(640, 480).expect("layout"),
        },
        Event::State(VmState::Running),
        Event::State(VmState::GuestFault {
            reason: "triple fault".into(),
        }),
        Event::Damage {
            rects: vec![DamageRect {
                x: 0,
                y: 0,
                w: 8,
                h: 8,
            }],
        },
        Event::ServiceRequest {
            id: 1,
            service: "clipboard".into(),
            argument: String::new(),
            target: "@dispvm".into(),
        },
        Event::Stats {
            id: 2,
            stats: VmStats::default(),
        },
        Event::Stats {
            id: 3,
            stats: VmStats {
                balloon_mib: Some(400),
                ..VmStats::default()
            },
        },
    ] {
        events.push(serde_json::to_vec(&e).expect("serialize"));
    }
    let mut commands: Vec<Vec<u8>> = Vec::new();
    for c in Command::console_chunks(b"ls\n")
        .chain(Command::agent_chunks(
            b"\x05\x00\x00\x00\x03\x01\x00\x00\x00",
        ))
        .chain([
            Command::Start,
            Command::File {
                role: FileRole::Disk(0),
            },
            Command::Input {
                events: vec![InputEvent::new(InputDevice::Keyboard, 1, 30, 1)],
            },
            Command::ServiceReply {
                id: 1,
                allowed: true,
            },
            Command::SetBalloon { target_mib: 512 },
            Command::Snapshot,
        ])
    {
        commands.push(serde_json::to_vec(&c).expect("serialize"));
    }
    let mut out = Vec::new();
    // Raw streams of several frames, for each reader.
    for (mode, msgs) in [(0u8, &events), (2u8, &commands)] {
        let mut s = vec![mode];
        for m in msgs.iter() {
            s.extend(frame(m));
        }
        out.push(s);
        // Each message alone, also as bare JSON for the direct decoders.
        for m in msgs.iter() {
            let mut s = vec![mode];
            s.extend(frame(m));
            out.push(s);
            out.push(m.clone());
        }
        // Segmented, with fds: a whole frame with one fd, then one split in two.
        let f = frame(&msgs[0]);
        let mut s = vec![mode | 1, 1];
        s.extend((f.len() as u16).to_le_bytes());
        s.extend(&f);
        s.push(0);
        s.extend(3u16.to_le_bytes());
        s.extend(&f[..3]);
        s.push(5);
        s.extend(((f.len() - 3) as u16).to_le_bytes());
        s.extend(&f[3..]);
        out.push(s);
    }
    // A header announcing more than MAX_MESSAGE, and a maximal one.
    out.push([vec![0], u32::MAX.to_le_bytes().to_vec()].concat());
    out.push(
        [
            vec![0],
            (MAX_MESSAGE as u32).to_le_bytes().to_vec(),
            vec![b'"'; 16],
        ]
        .concat(),
    );
    out
}

fn virtio_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // op 5 (probe, all queues at max size) then requests.
    let probe = |dev: u8| {
        let queues = if matches!(dev % 5, 0 | 2) { 1 } else { 2 };
        [vec![dev, 5, 0], vec![0; queues]].concat()
    };
    // A descriptor: op 6, queue, index, addr selector, len kind(+len), flags, next.
    let desc = |q: u8, index: u16, slot: u16, len: u8, flags: u16, next: u16| {
        let mut v = vec![6, q];
        v.extend(index.to_le_bytes());
        v.extend(slot.to_le_bytes());
        v.extend([0, len]);
        v.extend(flags.to_le_bytes());
        v.extend(next.to_le_bytes());
        v
    };
    let publish = |q: u8, head: u16| {
        let mut v = vec![7, q];
        v.extend(head.to_le_bytes());
        v.push(0);
        v
    };
    // rng: two writable buffers, one chained.
    let mut s = probe(0);
    s.extend(desc(0, 0, 0, 64, 2, 0));
    s.extend(publish(0, 0));
    s.extend(desc(0, 1, 16, 32, 3, 2));
    s.extend(desc(0, 2, 32, 32, 2, 0));
    s.extend(publish(0, 1));
    s.extend([4, 0, 8, 0xff, 11]);
    out.push(s);
    // console: output on the transmit queue (1), input buffer on the receive queue (0).
    let mut s = probe(1);
    s.extend([3, 0, 0, 4, 0, 5]);
    s.extend(b"hello");
    s.extend(desc(1, 0, 0, 5, 0, 0));
    s.extend(publish(1, 0));
    s.extend([4, 1, 9, 1]);
    s.extend(desc(0, 0, 64, 200, 2, 0));
    s.extend(publish(0, 0));
    s.extend([4, 0, 9, 0, 3, b'a', b'b', b'c', 8, 0xff]);
    out.push(s);
    // block: a read of sector 1 (header at slot 0, data at slot 64, status at slot 200),
    // then a write of sector 2.
    for (kind, data_flags) in [(0u8, 2u16), (1u8, 0u16)] {
        let mut s = probe(2);
        s.extend([
            3,
            0,
            0,
            4,
            0,
            16,
            kind,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            1 + kind,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        s.extend(desc(0, 0, 0, 16, 1, 1));
        s.extend([6, 0, 1, 0, 64, 0, 2, 0]); // len kind 2: 512 + 0
        s.extend((data_flags | 1).to_le_bytes());
        s.extend(2u16.to_le_bytes());
        s.extend(desc(0, 2, 200, 1, 2, 0));
        s.extend(publish(0, 0));
        s.extend([4, 0, 9, 255, 9, 255, 9, 255, 9, 255, 11, 8, 0xff]);
        out.push(s);
    }
    // block, the other requests: flush (on the read-only disk, device 7, which answers it
    // at once; a real fsync may outlast the input's pauses), get-id, discard and
    // write-zeroes (one 16-byte segment: sector 3, 2 sectors, flags), a read past the
    // disk's end, an unknown type. Header at slot 0, data at slot 64, status at slot 200.
    let segment = [3u8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
    for (dev, kind, sector, data) in [
        (7u8, 4u32, 0u64, None),
        (2, 8, 0, Some((20u8, true, &[][..]))),
        (2, 11, 0, Some((16, false, &segment[..]))),
        (2, 13, 0, Some((16, false, &segment[..]))),
        (2, 0, 1000, Some((16, true, &[][..]))),
        (2, 0x7777, 0, None),
    ] {
        let mut s = probe(dev);
        s.extend([3, 0, 0, 4, 0, 16]);
        s.extend(kind.to_le_bytes());
        s.extend(0u32.to_le_bytes());
        s.extend(sector.to_le_bytes());
        match data {
            Some((len, writable, bytes)) => {
                if !bytes.is_empty() {
                    // Slot 64: BUF_BASE + 0x200.
                    s.extend([3, 0, 2, 4, 0, bytes.len() as u8]);
                    s.extend(bytes);
                }
                s.extend(desc(0, 0, 0, 16, 1, 1));
                s.extend(desc(0, 1, 64, len, if writable { 3 } else { 1 }, 2));
            }
            None => s.extend(desc(0, 0, 0, 16, 1, 2)),
        }
        s.extend(desc(0, 2, 200, 1, 2, 0));
        s.extend(publish(0, 0));
        s.extend([4, 0, 9, 255, 9, 255, 9, 255, 9, 255, 11, 8, 0xff]);
        out.push(s);
    }
    // input (keyboard, tablet): four event buffers, the host sends a key press and
    // release or a pointer move, the guest sends an LED update on the status queue.
    for dev in [3u8, 4] {
        let mut s = probe(dev);
        for i in 0..4u16 {
            s.extend(desc(0, i, 16 * i, 8, 2, 0));
            s.extend(publish(0, i));
        }
        s.extend([4, 0]);
        if dev == 3 {
            s.extend([9, 0, 30, 0, 1, 9, 0, 30, 0, 0]);
        } else {
            s.extend([9, 1]);
            s.extend(100u32.to_le_bytes());
            s.extend(200u32.to_le_bytes());
        }
        // EV_LED (0x11), LED_NUML, on: at slot 100 (BUF_BASE + 800).
        s.extend([3, 0x20, 0x03, 0x04, 0x00, 8, 0x11, 0, 0, 0, 1, 0, 0, 0]);
        s.extend(desc(1, 0, 100, 8, 0, 0));
        s.extend(publish(1, 0));
        s.extend([4, 1, 8, 0xff, 11]);
        out.push(s);
    }
    out
}
