//! A stand-in for `bulkhead-vmm` at the process boundary, for the supervisor's tests and
//! the app's: it speaks the real protocol over the real socket, shares a real memfd and
//! installs the real seccomp profile, without a VM behind it. Each test binary that uses
//! it has a `#[test] fn fake_partition_process()` calling [`fake_partition_main`] and
//! launches itself with [`fake_spec`] naming that test.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_agent_proto::{AgentMessage, Clipboard, Decoder, Frame, HostMessage};
use vmm_core::control::{
    control_stream_from_inherited_fd, Command, Event, Launch, MessageWriter, PartitionEndpoint,
    SandboxGap, SandboxStatus, VmState, VmStats, MAX_CONSOLE_CHUNK, MAX_FDS_PER_MESSAGE,
    MAX_MESSAGE,
};
use vmm_core::devices::framebuffer::{DamageRect, FramebufferLayout};
use vmm_core::launch::{AgentChannel, BootConfig, DisplaySize, LaunchConfig, NetworkConfig};
use vmm_core::shm::{MappedRegion, Memfd};

use crate::{
    AutoRestart, BootFiles, LaunchSpec, PartitionStatus, ProcessState, Supervisor,
    MAX_CONSOLE_BUFFER,
};

/// The reason the `sandbox_failed` mode reports.
pub const SANDBOX_FAILURE: &str = "setting RLIMIT_AS to 1090519040: Operation not permitted";

/// What the `noisy_output` mode writes to stdout and to stderr: a terminal escape, a
/// bell, a carriage return that would hide the line before it.
pub const NOISY_OUTPUT: &str = "plain line\n\x1b]0;owned\x07\x1b[2Jhidden\rvisible\n";

/// Events of full-screen rectangles the `damage_flood` mode sends.
pub const DAMAGE_FLOOD_EVENTS: u64 = 2_000;

/// Damage events the `flood` mode sends.
pub const FLOOD_EVENTS: u64 = 20_000;

/// A launch of `program` (a test binary) running only the test `test_name` (which calls
/// [`fake_partition_main`]) in `mode`.
pub fn fake_spec(
    program: PathBuf,
    test_name: &str,
    name: &str,
    mode: &str,
    restart: AutoRestart,
) -> LaunchSpec {
    let launch = LaunchConfig {
        name: name.to_string(),
        memory_mib: 16,
        vcpus: 1,
        display: Some(DisplaySize {
            width: 64,
            height: 64,
        }),
        boot: BootConfig::TestCard,
        disks: Vec::new(),
        network: NetworkConfig::None,
        agent: AgentChannel::VirtioConsole,
        snapshot_on: None,
        snapshot_on_request: false,
    };
    LaunchSpec {
        resources: crate::launch::default_resources(&launch),
        program,
        args: [
            test_name,
            "--exact",
            "--quiet",
            "--test-threads=1",
            "--",
            &format!("mode={mode}"),
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        launch,
        boot_files: BootFiles::None,
        disk_files: Vec::new(),
        guest_config: None,
        restart,
        network: None,
        snapshot: None,
        resume: None,
        failover: None,
    }
}

/// How long the test helpers wait for a partition to get somewhere.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits until the partition's state satisfies `pred`; fails the test otherwise.
pub fn wait_state(
    sup: &Supervisor,
    name: &str,
    pred: impl Fn(&ProcessState) -> bool,
) -> PartitionStatus {
    let (status, ok) = sup.wait_until(name, WAIT, |s| pred(&s.state)).unwrap();
    assert!(ok, "{name}: condition not reached, last status {status:?}");
    status
}

pub fn wait_running(sup: &Supervisor, name: &str) -> PartitionStatus {
    wait_state(sup, name, |s| *s == ProcessState::Running)
}

/// Waits until the partition has sent `more` further damage events.
pub fn wait_more_damage(sup: &Supervisor, name: &str, more: u64) {
    let start = sup.status(name).unwrap().damage_events;
    let (status, ok) = sup
        .wait_until(name, WAIT, |s| s.damage_events >= start + more)
        .unwrap();
    assert!(ok, "{name} stopped rendering: {status:?}");
}

/// SIGKILL to a partition process the test started.
pub fn kill9(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a live child's pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

/// Entry point of the fake partition process. In a normal test run it is given no
/// `--control-fd` and returns at once; re-executed by a [`fake_spec`] launch, it never
/// returns.
pub fn fake_partition_main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(fd) = args
        .iter()
        .position(|a| a == "--control-fd")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let Some(mode) = args.iter().find_map(|a| a.strip_prefix("mode=")) else {
        std::process::exit(9);
    };
    // SAFETY: fd 3 was inherited from the supervisor and nothing here owns it yet.
    let stream = unsafe { control_stream_from_inherited_fd(fd) }.unwrap();
    std::process::exit(run_fake(stream, mode));
}

fn run_fake(stream: UnixStream, mode: &str) -> i32 {
    let mut raw = stream.try_clone().unwrap();
    let Ok(Launch {
        mut endpoint,
        config,
        files,
    }) = PartitionEndpoint::receive_launch(stream)
    else {
        return 10;
    };
    // The test card needs /dev/kvm and nothing else: exactly that was handed over.
    if files.kernel.is_some() || files.initrd.is_some() || !files.disks.is_empty() {
        return 13;
    }
    let said = if mode == "wrong_name" {
        "someone-else"
    } else {
        config.name.as_str()
    };
    if endpoint.say_hello(said).is_err() {
        return 10;
    }
    let PartitionEndpoint {
        mut commands,
        mut events,
    } = endpoint;
    let layout = FramebufferLayout::new(64, 64).unwrap();
    let memfd = Memfd::create("fake-fb", layout.region_size() as usize).unwrap();
    let pixels = memfd.map_shared_rw().unwrap();
    let offered = match mode {
        "small_fb" => OwnedFd::from(
            Memfd::create("small", 4096)
                .unwrap()
                .try_clone_file()
                .unwrap(),
        ),
        "unsealed_fb" => unsealed_memfd(layout.bytes()),
        _ => OwnedFd::from(memfd.try_clone_file().unwrap()),
    };
    events
        .send_with_fds(&Event::Framebuffer { layout }, &[offered.as_fd()])
        .unwrap();
    if mode.ends_with("_fb") {
        return idle();
    }
    // How a real partition says how it is confined, before Ready.
    let sandbox = match mode {
        "reduced_sandbox" => SandboxStatus::Reduced {
            missing: vec![SandboxGap::Landlock],
        },
        "sandbox_failed" => SandboxStatus::Failed {
            reason: SANDBOX_FAILURE.to_string(),
        },
        _ => SandboxStatus::Full,
    };
    if mode != "ready_without_sandbox" {
        events.send(&Event::Sandbox(sandbox.clone())).unwrap();
    }
    if mode == "sandbox_failed" {
        return 1;
    }
    if mode == "noisy_output" {
        // Straight to fds 1 and 2: the test harness captures print!, not these.
        let _ = std::io::stdout().write_all(NOISY_OUTPUT.as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(NOISY_OUTPUT.as_bytes());
    }
    events.send(&Event::State(VmState::Ready)).unwrap();
    if commands.recv().map(|r| r.message).ok() != Some(Command::Start) {
        return 11;
    }
    events.send(&Event::State(VmState::Running)).unwrap();
    match mode {
        "garbage" => {
            raw.write_all(b"this is not a frame at all").unwrap();
            idle()
        }
        "second_sandbox_report" => {
            events.send(&Event::Sandbox(sandbox)).unwrap();
            idle()
        }
        "oversized" => {
            raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
            idle()
        }
        "stall_mid_frame" => {
            raw.write_all(&100u32.to_le_bytes()).unwrap();
            raw.write_all(b"{\"St").unwrap();
            idle()
        }
        "fd_hoard" => {
            raw.write_all(&(MAX_MESSAGE as u32).to_le_bytes()).unwrap();
            let null = std::fs::File::open("/dev/null").unwrap();
            let fds = [null.as_fd(); MAX_FDS_PER_MESSAGE];
            for _ in 0..1000 {
                if !send_byte_with_fds(&raw, &fds) {
                    break;
                }
            }
            idle()
        }
        "quiet" => idle(),
        "memory_hog" => {
            // Touches ever more memory, as a guest filling its RAM plus a VMM leaking
            // would; the partition's cgroup limit ends it. Bounded (1 GiB), so that a
            // host without the memory controller is not pushed into swap by a test.
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..64 {
                held.push(vec![0x5a; 16 << 20]);
                std::thread::sleep(Duration::from_millis(5));
            }
            idle()
        }
        "damage_flood" => {
            // As many overlapping full-screen rectangles per event as the protocol allows.
            let whole = DamageRect {
                x: 0,
                y: 0,
                w: 64,
                h: 64,
            };
            let damage = Event::Damage {
                rects: vec![whole; vmm_core::control::MAX_DAMAGE_RECTS],
            };
            for _ in 0..DAMAGE_FLOOD_EVENTS {
                events.send(&damage).unwrap();
            }
            idle()
        }
        "slow_reader" => {
            // Reads one command per 0.9 s: just inside a 1 s write timeout, forever.
            while commands.recv().is_ok() {
                std::thread::sleep(Duration::from_millis(900));
            }
            idle()
        }
        "bad_damage" => {
            let rects = vec![DamageRect {
                x: 60,
                y: 0,
                w: 10,
                h: 1,
            }];
            events.send(&Event::Damage { rects }).unwrap();
            idle()
        }
        "forbidden_syscall" => {
            vmm_core::sandbox::set_no_new_privs().unwrap();
            vmm_core::sandbox::install(vmm_core::sandbox::SeccompProfile::Vcpu).unwrap();
            // SAFETY: socket() takes integers; the filter kills us before it returns.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            12
        }
        "flood" => {
            let damage = Event::Damage {
                rects: vec![DamageRect {
                    x: 0,
                    y: 0,
                    w: 64,
                    h: 1,
                }],
            };
            for _ in 0..FLOOD_EVENTS {
                events.send(&damage).unwrap();
            }
            events.send(&Event::State(VmState::PoweredOff)).unwrap();
            0
        }
        "oversized_console" => {
            let bytes = vec![b'!'; MAX_CONSOLE_CHUNK + 1];
            events.send(&Event::Console { bytes }).unwrap();
            idle()
        }
        "console_flood" => {
            for e in Event::console_chunks(&console_flood_bytes()) {
                events.send(&e).unwrap();
            }
            events.send(&Event::State(VmState::PoweredOff)).unwrap();
            0
        }
        "exit3" => {
            let fault = VmState::GuestFault {
                reason: "triple fault".into(),
            };
            events.send(&Event::State(fault)).unwrap();
            3
        }
        _ => {
            let events = Arc::new(Mutex::new(events));
            let obey_stop = mode != "ignore_stop";
            let e = Arc::clone(&events);
            let short_reads = mode == "agent_files_short";
            std::thread::spawn(move || serve_commands(commands, e, obey_stop, short_reads));
            if let Some(bytes) = fake_agent_opening(mode) {
                for e in Event::agent_chunks(&bytes) {
                    events.lock().unwrap().send(&e).unwrap();
                }
            }
            render(&events, &pixels)
        }
    }
}

/// More console output than the supervisor keeps, with no repeating pattern at the
/// buffer's size, so a wrong cut shows.
pub fn console_flood_bytes() -> Vec<u8> {
    (0..MAX_CONSOLE_BUFFER + 3 * MAX_CONSOLE_CHUNK + 7)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// One byte with `fds` attached, as a hostile partition would send it; false once the
/// socket is full or gone.
fn send_byte_with_fds(sock: &UnixStream, fds: &[std::os::fd::BorrowedFd<'_>]) -> bool {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return false;
    }
    let iov = [std::io::IoSlice::new(b"x")];
    sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL).is_ok()
}

fn unsealed_memfd(size: usize) -> OwnedFd {
    let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(size as u64).unwrap();
    file.into()
}

fn idle() -> i32 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Writes a frame counter into pixel (0,0) and reports the damage, like a guest
/// drawing and the dirty log noticing.
fn render(events: &Mutex<MessageWriter<Event>>, pixels: &MappedRegion) -> i32 {
    for frame in 1u32.. {
        pixels.write_at(0, &frame.to_le_bytes()).unwrap();
        let damage = Event::Damage {
            rects: vec![DamageRect {
                x: 0,
                y: 0,
                w: 1,
                h: 1,
            }],
        };
        if events.lock().unwrap().send(&damage).is_err() {
            return 20;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    21
}

/// What the fake guest agent says first in `mode`: a `Hello` for `agent`, hostile
/// bytes for the `agent_*` modes (each then also keeps its partition running).
pub fn fake_agent_opening(mode: &str) -> Option<Vec<u8>> {
    use bulkhead_agent_proto::features;
    let hello = AgentMessage::Hello {
        version: bulkhead_agent_proto::PROTOCOL_VERSION,
        features: features::CLIPBOARD | features::FILES | features::OPEN_URL,
    }
    .encode()
    .unwrap();
    let mut bytes = hello.clone();
    match mode {
        "agent" => {}
        // `bulkhead-move` of the fake files (`_short`: then it answers reads short).
        "agent_files" | "agent_files_short" => bytes.extend(
            AgentMessage::FileOffer {
                offer: FAKE_OFFER,
                is_move: true,
                files: fake_files(),
            }
            .encode()
            .unwrap(),
        ),
        // `bulkhead-open FAKE_URL` naming no target.
        "agent_open" => bytes.extend(
            AgentMessage::OpenUrl {
                request: FAKE_OFFER,
                url: FAKE_URL.into(),
                target: None,
            }
            .encode()
            .unwrap(),
        ),
        // A header announcing one byte more than any frame may hold.
        "agent_oversized" => {
            bytes.extend_from_slice(&(bulkhead_agent_proto::MAX_BODY as u32 + 1).to_le_bytes())
        }
        // A well-framed message of a kind that does not exist.
        "agent_garbage" => bytes.extend_from_slice(&[4, 0, 0, 0, 0x66, 0xde, 0xad, 0x00]),
        // Hellos as fast as it can write them.
        "agent_flood" => {
            for _ in 0..10_000 {
                bytes.extend_from_slice(&hello);
            }
        }
        // An answer to a question nobody asked.
        "agent_unsolicited" => bytes.extend(
            AgentMessage::Clipboard {
                id: 77,
                content: Some(Clipboard::Text("unasked".into())),
            }
            .encode()
            .unwrap(),
        ),
        _ => return None,
    }
    Some(bytes)
}

/// The offer (and open request) number of the `agent_files` / `agent_open` modes.
pub const FAKE_OFFER: u32 = 1;
/// What the `agent_open` mode asks to open.
pub const FAKE_URL: &str = "https://example.org/from-the-fake-guest";

/// The files the `agent_files` mode offers: one of several chunks, an empty one.
pub fn fake_files() -> Vec<bulkhead_agent_proto::FileEntry> {
    vec![
        bulkhead_agent_proto::FileEntry {
            name: "report (final).txt".into(),
            size: 300_001,
        },
        bulkhead_agent_proto::FileEntry {
            name: "empty".into(),
            size: 0,
        },
    ]
}

/// The content of fake file `index` (no repeating pattern at chunk sizes).
pub fn fake_file_bytes(index: usize) -> Vec<u8> {
    let len = fake_files().get(index).map_or(0, |f| f.size as usize);
    (0..len).map(|i| ((i * 7 + i / 251) % 256) as u8).collect()
}

/// The serial line the fake agent prints for each file it received whole: its name,
/// size and sha256 (hex).
pub fn fake_received_line(name: &str, bytes: &[u8]) -> String {
    use sha2::Digest;
    let sum: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("received {name:?} {} {sum}\n", bytes.len())
}

/// One incoming transfer of the fake agent.
struct FakeIncoming {
    source: String,
    files: Vec<(String, Vec<u8>)>,
}

/// The fake agent's answers: pong, a one-slot clipboard that `ClipboardSet` fills and
/// `ClipboardGet` reads (starting with [`FAKE_AGENT_CLIPBOARD`]), files in memory
/// (offered ones read, incoming ones announced on the serial console when committed),
/// and URLs "opened" by saying so on the serial console.
struct FakeAgent {
    decoder: Decoder<HostMessage>,
    clipboard: Option<Clipboard>,
    short_reads: bool,
    incoming: std::collections::HashMap<u32, FakeIncoming>,
    /// Serial lines to send.
    said: Vec<String>,
}

/// What the fake agent's clipboard holds at start.
pub const FAKE_AGENT_CLIPBOARD: &str = "copied in the fake guest";

impl FakeAgent {
    fn read(&self, id: u32, offer: u32, index: u32, offset: u64, len: u32) -> AgentMessage {
        let file = fake_file_bytes(index as usize);
        if offer != FAKE_OFFER || index as usize >= fake_files().len() {
            return AgentMessage::Failed {
                id,
                reason: "no such offer".into(),
            };
        }
        let start = (offset as usize).min(file.len());
        let mut end = start.saturating_add(len as usize).min(file.len());
        if self.short_reads && end > start {
            end -= 1;
        }
        AgentMessage::FileData {
            id,
            data: file[start..end].to_vec(),
        }
    }

    fn answer(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut msgs = Vec::new();
        if self.decoder.push(bytes, &mut msgs).is_err() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for msg in msgs {
            let reply = match msg {
                HostMessage::Hello { .. } => continue,
                HostMessage::Ping { id } => AgentMessage::Pong { id },
                HostMessage::ClipboardGet { id } => AgentMessage::Clipboard {
                    id,
                    content: self.clipboard.clone(),
                },
                HostMessage::ClipboardSet { id, content } => {
                    self.clipboard = Some(content);
                    AgentMessage::ClipboardSet { id }
                }
                HostMessage::Restored { .. } => AgentMessage::Hello {
                    version: bulkhead_agent_proto::PROTOCOL_VERSION,
                    features: bulkhead_agent_proto::features::CLIPBOARD
                        | bulkhead_agent_proto::features::RESTORED,
                },
                HostMessage::FileOutcome { offer, error } => {
                    let how = error.unwrap_or_else(|| "ok".into());
                    self.said.push(format!("outcome {offer} {how}\n"));
                    continue;
                }
                HostMessage::OpenOutcome { request, error } => {
                    let how = error.unwrap_or_else(|| "ok".into());
                    self.said.push(format!("open-outcome {request} {how}\n"));
                    continue;
                }
                HostMessage::OpenUrl { id, url } => {
                    self.said.push(format!("opened {url}\n"));
                    AgentMessage::Done { id }
                }
                HostMessage::FileRead {
                    id,
                    offer,
                    index,
                    offset,
                    len,
                } => self.read(id, offer, index, offset, len),
                HostMessage::FileIncoming {
                    id,
                    transfer,
                    source,
                    files,
                } => {
                    let files = files.into_iter().map(|f| (f.name, Vec::new())).collect();
                    self.incoming
                        .insert(transfer, FakeIncoming { source, files });
                    AgentMessage::Done { id }
                }
                HostMessage::FileWrite {
                    id,
                    transfer,
                    index,
                    offset,
                    data,
                } => {
                    let file = self
                        .incoming
                        .get_mut(&transfer)
                        .and_then(|t| t.files.get_mut(index as usize));
                    match file {
                        Some((_, bytes)) => {
                            let end = offset as usize + data.len();
                            if bytes.len() < end {
                                bytes.resize(end, 0);
                            }
                            bytes[offset as usize..end].copy_from_slice(&data);
                            AgentMessage::Done { id }
                        }
                        None => AgentMessage::Failed {
                            id,
                            reason: "no such incoming file".into(),
                        },
                    }
                }
                HostMessage::FileCommit {
                    id,
                    transfer,
                    abort,
                } => {
                    if let Some(t) = self.incoming.remove(&transfer) {
                        if abort {
                            self.said.push(format!("aborted from {}\n", t.source));
                        } else {
                            for (name, bytes) in &t.files {
                                self.said.push(fake_received_line(name, bytes));
                            }
                        }
                    }
                    AgentMessage::Done { id }
                }
            };
            out.extend(reply.encode().unwrap());
        }
        out
    }
}

fn serve_commands(
    mut commands: vmm_core::control::MessageReader<Command>,
    events: Arc<Mutex<MessageWriter<Event>>>,
    obey_stop: bool,
    short_reads: bool,
) {
    let send = |e: Event| {
        let _ = events.lock().unwrap().send(&e);
    };
    let mut agent = FakeAgent {
        decoder: Decoder::new(),
        clipboard: Some(Clipboard::Text(FAKE_AGENT_CLIPBOARD.into())),
        short_reads,
        incoming: std::collections::HashMap::new(),
        said: Vec::new(),
    };
    // The fake guest's balloon reaches every target at once.
    let mut balloon_mib = 0;
    while let Ok(received) = commands.recv() {
        let command = received.message;
        command.validate().unwrap();
        match command {
            Command::Stop if obey_stop => {
                send(Event::State(VmState::Stopping));
                send(Event::State(VmState::PoweredOff));
                std::process::exit(0);
            }
            Command::Pause => send(Event::State(VmState::Paused)),
            Command::Resume => send(Event::State(VmState::Running)),
            Command::Input { events } => send(Event::Serial {
                bytes: format!("input:{}\n", events.len()).into_bytes(),
            }),
            Command::Stats { id } => send(Event::Stats {
                id,
                stats: VmStats {
                    uptime_ms: 1234,
                    balloon_mib: Some(balloon_mib),
                    ..VmStats::default()
                },
            }),
            Command::Screenshot { id } => send(Event::ScreenshotReady { id }),
            Command::ConsoleWrite { bytes } => send(Event::Console {
                bytes: bytes.iter().map(|b| !b).collect(),
            }),
            Command::AgentWrite { bytes } => {
                for e in Event::agent_chunks(&agent.answer(&bytes)) {
                    send(e);
                }
                for line in agent.said.drain(..) {
                    send(Event::Serial {
                        bytes: line.into_bytes(),
                    });
                }
            }
            Command::SetBalloon { target_mib } => balloon_mib = target_mib,
            _ => {}
        }
    }
    // Supervisor gone: a partition never outlives its connection.
    std::process::exit(0);
}
