//! `lab-supervise`: runs one partition through Bulkhead's real supervisor (the same code as
//! the desktop app, `bulkhead run` and `bulkhead up`) and drives it through the control
//! interface with a list of steps: wait for serial or console text, type keys, move the
//! tablet, write to the virtio console, take screenshots from the shared framebuffer,
//! stop. Runs inside the lab machine (or on a VT-x/AMD-V host), so it is built static.
//!
//! ```text
//! lab-supervise --out DIR [--timeout-s S] STEP… -- /path/bulkhead-vmm --kernel=K [--initrd=I]
//!     [--mem=M] [--vcpus=N] [--cmdline=C] [--display=WxH|none] [--disk=PATH[,ro][,id=NAME]]…
//!     [--app=CMD] [--net=nat [--allow=PROTO:DEST:PORTS]… [--dns]]
//! ```
//!
//! Steps: `wait-serial:TEXT`, `wait-console:TEXT`, `wait-console-bytes:N`, `type:TEXT`,
//! `tablet:X,Y`, `click`, `console:TEXT`, `console-pattern:N`, `screenshot:NAME`,
//! `sleep:MS`, `sandbox-report`, `pause`, `resume`, `stats`, `stop`, `wait-exit`,
//! `wait-agent`, `agent-ping`, `clipboard-set:TEXT`, `wait-clipboard:TEXT`,
//! `balloon:MIB` (set the balloon target, `Supervisor::set_balloon`), `wait-balloon:MIB`
//! (ask for stats until the guest's balloon holds MIB), `save:/DIR` (save the running
//! partition: pause, snapshot, disk copies, resume), `carry:/DIR` (that saved state through
//! an encrypted bundle and back into `/DIR.carried`, as export and import carry it),
//! `continue:NAME:/DIR` (partition NAME continues from the saved state in /DIR; the later
//! steps drive NAME; each earlier partition's serial goes to `DIR/serial-<name>.log`).
//! Several partitions: `spawn:NAME` (the flags' partition as NAME, home in RAM, started
//! beside), `use:NAME` (the later steps drive NAME; each partition's serial not on stdout
//! goes to `DIR/serial-<name>.log`), `wait-agent-cut:NAME`. Services between them, as
//! the app's service broker decides them: `policy:RULE;RULE…` (a policy of these rules
//! over every partition so far, audited into `DIR/audit.log`), `answer:TARGET` / `answer:-`
//! (the oldest waiting question), `wait-service:TEXT` (a status line of the broker);
//! the clipboard gesture: `clipboard-copy` (the current partition's CLIPBOARD into a
//! one-slot buffer) and `clipboard-paste` (into the current partition if the policy
//! allows `bulkhead.ClipboardPaste` from the copy's partition; emptied by the paste).
//! In TEXT, `\n` is a newline (Enter when typed).
//! For a `--net=nat` partition (passt and the relay started by the supervisor):
//! `wait-net:TEXT` (the network caption contains TEXT and, while NAT, the relay applied
//! the current rules), `wait-net-restarts:N` (passt restarted N times, rules applied),
//! `kill-passt`, `kill-relay` (SIGKILL), `rules:SPEC;SPEC…` (replace the rules live with
//! these `--allow` specs; `rules:` alone: none).
//!
//! The flags after the VMM become the partition's launch config and boot files, sent by
//! the supervisor as the app sends them (`bulkhead-vmm partition`, no other argv).
//!
//! Serial bytes go to stdout as they arrive (so `lab-measure` can watch for a marker);
//! `DIR/console.bin` holds what the guest wrote to /dev/hvc0, `DIR/NAME.png` the
//! screenshots, `DIR/events.log` state changes, and `DIR/final.txt` one line:
//! `FINAL exited=<code>`, `FINAL crashed=<reason>` or `FINAL running`; `DIR/audit.log`
//! the network denials. Exits 0 when every
//! step completed, 1 otherwise (the failed step is on stderr and in `DIR/events.log`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead_supervisor::agent::{AgentReply, AgentRequest, AgentStatus, Clipboard};
use bulkhead_supervisor::launch::{DiskFile, GuestConfig};
use bulkhead_supervisor::network::{NetworkPlan, NetworkState};
use bulkhead_supervisor::services::{Question, ServiceBroker, ServiceEvent};
use bulkhead_supervisor::{
    vm_process, AutoRestart, BootFiles, LaunchSpec, ProcessState, Supervisor,
};
use bulkhead_tests::console_pattern;
use bulkhead_tests::keymap;
use vmm_core::devices::framebuffer::write_png;
use vmm_core::evdev::{
    InputDevice, InputEvent, ABS_X, ABS_Y, BTN_LEFT, EV_ABS, EV_KEY, EV_SYN, SYN_REPORT,
};
use vmm_core::launch::{
    parse_display, parse_memory_mib, AgentChannel, BootConfig, DiskConfig, DisplaySize,
    LaunchConfig, NetworkConfig, DEFAULT_CMDLINE,
};

const NAME: &str = "lab";
const USAGE: &str =
    "usage: lab-supervise --out DIR [--timeout-s S] STEP… -- VMM --kernel=K [--initrd=I] [--mem=M] [--vcpus=N] [--cmdline=C] [--display=WxH] [--disk=PATH[,ro][,id=NAME]]… [--app=CMD]";
/// Pause between typed characters: the guest driver refills its 64 event buffers between
/// batches, and a batch that does not fit is dropped like a key pressed too early.
const KEY_GAP: Duration = Duration::from_millis(40);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    WaitSerial(String),
    WaitConsole(String),
    WaitConsoleBytes(usize),
    Type(String),
    Tablet(i32, i32),
    Click,
    Console(String),
    /// `n` bytes of [`console_pattern`] to the guest's console.
    ConsolePattern(usize),
    Screenshot(String),
    Sleep(Duration),
    /// Record how the running partition process is confined (`DIR/sandbox.txt`).
    SandboxReport,
    Pause,
    Resume,
    /// Ask for stats and wait for the answer (logged).
    Stats,
    Stop,
    WaitExit,
    /// Wait until the guest agent said Hello (on its own console, `/dev/hvc1`).
    WaitAgent,
    /// Ping the agent and wait for its answer.
    AgentPing,
    /// Have the agent own the guest's X CLIPBOARD with this text.
    ClipboardSet(String),
    /// Ask the agent for the CLIPBOARD until it holds this text.
    WaitClipboard(String),
    /// Set the balloon target, MiB.
    Balloon(u32),
    /// Ask for stats until the guest's balloon holds this many MiB.
    WaitBalloon(u32),
    WaitNet(String),
    WaitNetRestarts(u32),
    KillPasst,
    KillRelay,
    Rules(Vec<String>),
    /// Save the running partition's state into DIR (`Supervisor::save_running`).
    Save(PathBuf),
    /// Carry the saved state in DIR through an encrypted bundle, as export and import do:
    /// pack it into `DIR.bundle`, unpack that, check every file byte-identical, set the
    /// memory file's time back, and leave it as `DIR.carried`.
    Carry(PathBuf),
    /// A new partition NAME (the flags' partition, renamed) continues from the saved
    /// state in DIR, on DIR's disk copies; the steps after it drive NAME.
    Continue(String, PathBuf),
    /// Another partition NAME, the flags' partition renamed, without its writable disks
    /// (its home is in RAM), started beside the first; the steps still drive the current.
    Spawn(String),
    /// The steps after it drive NAME.
    Use(String),
    /// The service broker decides with a policy of these rules (`;`-separated) over
    /// every partition so far; audited into `DIR/audit.log`.
    Policy(Vec<String>),
    /// Answer the oldest waiting service question: a target, or `-` to refuse.
    Answer(Option<String>),
    /// Wait until a service status line contains TEXT.
    WaitService(String),
    /// The current partition's agent CLIPBOARD into this driver's one-slot buffer.
    ClipboardCopy,
    /// The buffer into the current partition's CLIPBOARD if the policy allows
    /// `bulkhead.ClipboardPaste` from where it was copied (an `ask` counts as no: nobody
    /// is here to answer); the buffer empties on a paste.
    ClipboardPaste,
    /// Wait until partition NAME's agent is cut off.
    WaitAgentCut(String),
}

struct Options {
    out: PathBuf,
    timeout: Duration,
    steps: Vec<Step>,
    program: PathBuf,
    launch: LaunchConfig,
    boot_files: BootFiles,
    disk_files: Vec<DiskFile>,
    guest_config: Option<GuestConfig>,
    network: Option<NetworkPlan>,
    /// `--disposables N:MARKER`: instead of one partition, N disposables of it in turn
    /// (the first cold-booted and snapshotted at MARKER, the others restored from that
    /// snapshot), each left running while the steps run against the next.
    disposables: Option<(u32, String)>,
}

/// The partition's flags after the VMM path, as a launch config, its boot files, its
/// disks (`--disk=PATH[,ro][,id=NAME]`, as `bulkhead-vmm run` takes them) and the app a
/// template partition starts (`--app=CMD`).
type PartitionFlags = (
    LaunchConfig,
    BootFiles,
    Vec<DiskFile>,
    Option<GuestConfig>,
    Option<NetworkPlan>,
);

/// Rules in `--allow` syntax, numbered from 1 as their "line".
fn allow_rules(specs: &[String]) -> Result<NetworkPlan, String> {
    Ok(NetworkPlan {
        rules: specs
            .iter()
            .enumerate()
            .map(|(i, a)| netrelay::rules::parse_allow(a, i + 1).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        dns: false,
        file: PathBuf::from("lab-supervise"),
    })
}

fn parse_vmm_flags(args: &[String]) -> Result<PartitionFlags, String> {
    let mut launch = LaunchConfig {
        name: NAME.into(),
        memory_mib: 512,
        vcpus: 1,
        display: Some(DisplaySize {
            width: 1024,
            height: 768,
        }),
        boot: BootConfig::TestCard,
        disks: Vec::new(),
        network: NetworkConfig::None,
        agent: AgentChannel::VirtioConsole,
        snapshot_on: None,
        snapshot_on_request: false,
    };
    let (mut kernel, mut initrd, mut cmdline) = (None, None, DEFAULT_CMDLINE.to_string());
    let (mut disk_files, mut guest_config) = (Vec::new(), None);
    let (mut nat, mut allow, mut dns) = (false, Vec::new(), false);
    for a in args {
        if a == "--dns" {
            dns = true;
            continue;
        }
        let (key, value) = a
            .split_once('=')
            .ok_or_else(|| format!("partition flag `{a}`: write --key=value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("partition flag `{a}`: {e}");
        match key {
            "--kernel" => kernel = Some(PathBuf::from(value)),
            "--initrd" => initrd = Some(PathBuf::from(value)),
            "--cmdline" => cmdline = value.to_string(),
            "--mem" => launch.memory_mib = parse_memory_mib(value).map_err(|e| bad(&e))?,
            "--vcpus" => launch.vcpus = value.parse().map_err(|e| bad(&e))?,
            "--display" => launch.display = parse_display(value).map_err(|e| bad(&e))?,
            "--disk" => {
                let (path, disk) = disk_flag(launch.disks.len(), value);
                disk_files.push(DiskFile::Path(path));
                launch.disks.push(disk);
            }
            "--app" => {
                guest_config = Some(GuestConfig {
                    name: NAME.into(),
                    app: value.to_string(),
                    keyboard: "us".into(),
                })
            }
            "--net" if value == "nat" => nat = true,
            "--net" if value == "none" => nat = false,
            "--allow" => allow.push(value.to_string()),
            _ => return Err(format!("unknown partition flag `{a}`\n{USAGE}")),
        }
    }
    let kernel = kernel.ok_or_else(|| format!("no --kernel for the partition\n{USAGE}"))?;
    launch.boot = BootConfig::Linux {
        cmdline,
        initrd: initrd.is_some(),
    };
    if !nat && (dns || !allow.is_empty()) {
        return Err(format!("--allow and --dns need --net=nat\n{USAGE}"));
    }
    let network = match nat {
        true => Some(NetworkPlan {
            dns,
            ..allow_rules(&allow)?
        }),
        false => None,
    };
    if network.is_some() {
        launch.network = NetworkConfig::Stream;
    }
    // As the app launches every partition: savable while it runs.
    launch.snapshot_on_request = true;
    launch.validate().map_err(|e| e.to_string())?;
    Ok((
        launch,
        BootFiles::Linux { kernel, initrd },
        disk_files,
        guest_config,
        network,
    ))
}

/// `PATH[,ro][,id=NAME]` (options peeled off the end); the id defaults to `disk<N>`.
fn disk_flag(index: usize, value: &str) -> (PathBuf, DiskConfig) {
    let mut path = value;
    let mut disk = DiskConfig {
        id: format!("disk{index}"),
        read_only: false,
    };
    while let Some((rest, option)) = path.rsplit_once(',') {
        match (option, option.strip_prefix("id=")) {
            ("ro", _) => disk.read_only = true,
            (_, Some(id)) => disk.id = id.to_string(),
            _ => break,
        }
        path = rest;
    }
    (PathBuf::from(path), disk)
}

fn unescape(s: &str) -> String {
    s.replace("\\n", "\n")
}

fn parse_step(s: &str) -> Result<Step, String> {
    let (verb, arg) = s.split_once(':').unwrap_or((s, ""));
    let number = |what: &str| -> Result<usize, String> {
        arg.parse()
            .map_err(|_| format!("step `{s}`: {what} `{arg}` is not a whole number"))
    };
    Ok(match verb {
        "wait-serial" => Step::WaitSerial(unescape(arg)),
        "wait-console" => Step::WaitConsole(unescape(arg)),
        "wait-console-bytes" => Step::WaitConsoleBytes(number("byte count")?),
        "type" => Step::Type(unescape(arg)),
        "tablet" => {
            let (x, y) = arg
                .split_once(',')
                .ok_or_else(|| format!("step `{s}`: expected tablet:X,Y"))?;
            let coord = |v: &str| {
                v.parse::<i32>()
                    .map_err(|_| format!("step `{s}`: `{v}` is not a coordinate"))
            };
            Step::Tablet(coord(x)?, coord(y)?)
        }
        "click" => Step::Click,
        "console" => Step::Console(unescape(arg)),
        "console-pattern" => Step::ConsolePattern(number("byte count")?),
        "screenshot" if !arg.is_empty() && !arg.contains('/') => Step::Screenshot(arg.into()),
        "sleep" => Step::Sleep(Duration::from_millis(number("milliseconds")? as u64)),
        "sandbox-report" => Step::SandboxReport,
        "pause" => Step::Pause,
        "resume" => Step::Resume,
        "stats" => Step::Stats,
        "stop" => Step::Stop,
        "wait-exit" => Step::WaitExit,
        "wait-agent" => Step::WaitAgent,
        "agent-ping" => Step::AgentPing,
        "clipboard-set" => Step::ClipboardSet(unescape(arg)),
        "wait-clipboard" => Step::WaitClipboard(unescape(arg)),
        "balloon" => Step::Balloon(
            u32::try_from(number("MiB")?).map_err(|_| format!("step `{s}`: too many MiB"))?,
        ),
        "wait-balloon" => Step::WaitBalloon(
            u32::try_from(number("MiB")?).map_err(|_| format!("step `{s}`: too many MiB"))?,
        ),
        "wait-net" => Step::WaitNet(arg.to_string()),
        "wait-net-restarts" => Step::WaitNetRestarts(number("restart count")? as u32),
        "kill-passt" => Step::KillPasst,
        "kill-relay" => Step::KillRelay,
        "rules" => Step::Rules(
            arg.split(';')
                .filter(|r| !r.is_empty())
                .map(String::from)
                .collect(),
        ),
        "save" if arg.starts_with('/') => Step::Save(arg.into()),
        "carry" if arg.starts_with('/') => Step::Carry(arg.into()),
        "continue" => {
            let (name, dir) = arg
                .split_once(':')
                .filter(|(_, d)| d.starts_with('/'))
                .ok_or_else(|| format!("step `{s}`: expected continue:NAME:/DIR"))?;
            Step::Continue(name.to_string(), dir.into())
        }
        "spawn" if !arg.is_empty() => Step::Spawn(arg.into()),
        "use" if !arg.is_empty() => Step::Use(arg.into()),
        "policy" => Step::Policy(
            arg.split(';')
                .filter(|r| !r.is_empty())
                .map(String::from)
                .collect(),
        ),
        "answer" if arg == "-" => Step::Answer(None),
        "answer" if !arg.is_empty() => Step::Answer(Some(arg.into())),
        "wait-service" => Step::WaitService(unescape(arg)),
        "clipboard-copy" => Step::ClipboardCopy,
        "clipboard-paste" => Step::ClipboardPaste,
        "wait-agent-cut" if !arg.is_empty() => Step::WaitAgentCut(arg.into()),
        _ => return Err(format!("unknown step `{s}`\n{USAGE}")),
    })
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut out = None;
    let mut timeout = Duration::from_secs(300);
    let mut steps = Vec::new();
    let mut disposables = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a value")?)),
            "--disposables" => {
                let v = it.next().ok_or("--disposables needs N:MARKER")?;
                let (n, marker) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--disposables `{v}`: write N:MARKER"))?;
                let n: u32 = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=8).contains(n))
                    .ok_or_else(|| format!("--disposables `{v}`: N is 1 to 8"))?;
                disposables = Some((n, marker.to_string()));
            }
            "--timeout-s" => {
                let v = it.next().ok_or("--timeout-s needs a value")?;
                let s: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout-s `{v}` is not a whole number"))?;
                timeout = Duration::from_secs(s);
            }
            "--" => break,
            step => steps.push(parse_step(step)?),
        }
    }
    let program = PathBuf::from(it.next().ok_or(USAGE)?);
    let (launch, boot_files, disk_files, guest_config, network) =
        parse_vmm_flags(&it.cloned().collect::<Vec<_>>())?;
    Ok(Options {
        out: out.ok_or(USAGE)?,
        timeout,
        steps,
        program,
        launch,
        boot_files,
        disk_files,
        guest_config,
        network,
        disposables,
    })
}

/// The partition under test and everything it has said so far.
struct Session {
    sup: Supervisor,
    /// The partition the steps drive (`lab`, or the current disposable).
    name: String,
    started: Instant,
    deadline: Instant,
    serial: Vec<u8>,
    console: Vec<u8>,
    last_state: Option<ProcessState>,
    last_network: Option<NetworkState>,
    /// The partition's `--dns`, kept by live rule changes.
    dns: bool,
    events: BufWriter<File>,
    out: PathBuf,
    /// The flags' partition, for [`Step::Continue`].
    spec: LaunchSpec,
    /// Serial output of the partitions the steps do not drive now ([`Step::Spawn`]).
    others: std::collections::BTreeMap<String, Vec<u8>>,
    broker: Option<ServiceBroker>,
    policy_dir: Option<PathBuf>,
    questions: Vec<Question>,
    /// Every service status line so far.
    service_lines: Vec<String>,
    /// [`Step::ClipboardCopy`]'s buffer: where from, what.
    held: Option<(String, Clipboard)>,
}

impl Session {
    fn log(&mut self, line: &str) {
        let ms = self.started.elapsed().as_millis();
        let _ = writeln!(self.events, "{ms:>7} ms {line}");
        let _ = self.events.flush();
        eprintln!("lab-supervise: {line}");
    }

    /// The other partitions' serial output, and the service broker's work.
    fn pump_others(&mut self) {
        let names: Vec<String> = self.others.keys().cloned().collect();
        for n in names {
            let bytes = self.sup.take_serial(&n).unwrap_or_default();
            if let Some(buf) = self.others.get_mut(&n) {
                buf.extend_from_slice(&bytes);
            }
        }
        let Some(broker) = &mut self.broker else {
            return;
        };
        let events = broker.poll(&self.sup);
        for e in events {
            match e {
                ServiceEvent::Ask(q) => {
                    self.log(&format!(
                        "service: ask {} from {} about {:?}: targets {:?}, default {:?}, rule {:?}",
                        q.service, q.source, q.argument, q.targets, q.default_target, q.rule
                    ));
                    self.questions.push(q);
                }
                ServiceEvent::Status {
                    partition,
                    topic,
                    text,
                    ..
                } => {
                    let line = format!("[{partition}] {topic}: {text}");
                    self.log(&format!("service: {line}"));
                    self.service_lines.push(line);
                }
                ServiceEvent::DisposableStarted { name, .. } => {
                    self.log(&format!("service: started disposable {name}"));
                    self.others.entry(name).or_default();
                }
                ServiceEvent::Audited => {}
            }
        }
    }

    /// Collects serial and console output and notes state changes.
    fn pump(&mut self) -> Result<ProcessState, String> {
        self.pump_others();
        let serial = self
            .sup
            .take_serial(&self.name)
            .map_err(|e| e.to_string())?;
        if !serial.is_empty() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&serial);
            let _ = stdout.flush();
            self.serial.extend_from_slice(&serial);
        }
        let console = self
            .sup
            .take_console(&self.name)
            .map_err(|e| e.to_string())?;
        self.console.extend_from_slice(&console);
        let status = self.sup.status(&self.name).map_err(|e| e.to_string())?;
        let state = status.state;
        if self.last_state.as_ref() != Some(&state) {
            self.log(&format!("state {state:?}"));
            self.last_state = Some(state.clone());
        }
        if self.last_network.as_ref() != Some(&status.network) {
            self.log(&format!(
                "network {:?} ({})",
                status.network,
                status.network.caption()
            ));
            self.last_network = Some(status.network);
        }
        Ok(state)
    }

    /// Pumps until `done` holds; fails on timeout or when the partition ends first.
    fn wait_for(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Session) -> bool,
    ) -> Result<(), String> {
        loop {
            let state = self.pump()?;
            if done(self) {
                return Ok(());
            }
            if matches!(
                state,
                ProcessState::Crashed { .. } | ProcessState::Exited { .. }
            ) {
                return Err(format!(
                    "partition ended ({state:?}) while waiting for {what}"
                ));
            }
            if Instant::now() >= self.deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends events as one batch.
    fn input(&mut self, events: &[InputEvent]) -> Result<(), String> {
        self.sup
            .send_input(&self.name, events)
            .map_err(|e| format!("sending input: {e}"))
    }

    fn type_text(&mut self, text: &str) -> Result<(), String> {
        for c in text.chars() {
            let keys = keymap::key_for(c).ok_or_else(|| format!("cannot type {c:?}"))?;
            self.input(&keymap::press_release(keys))?;
            self.pump()?;
            std::thread::sleep(KEY_GAP);
        }
        Ok(())
    }

    /// Sends `(type, code, value)` events to the tablet, as one batch.
    fn tablet(&mut self, raw: &[(u16, u16, i32)]) -> Result<(), String> {
        let events: Vec<InputEvent> = raw
            .iter()
            .map(|&(ev_type, code, value)| {
                InputEvent::new(InputDevice::Tablet, ev_type, code, value)
            })
            .collect();
        self.input(&events)?;
        std::thread::sleep(KEY_GAP);
        Ok(())
    }

    fn console_write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.sup
            .console_write(&self.name, bytes)
            .map_err(|e| format!("writing to the console: {e}"))
    }

    fn screenshot(&mut self, name: &str) -> Result<(), String> {
        let id = self
            .sup
            .request_screenshot(&self.name)
            .map_err(|e| e.to_string())?;
        let mut ready = Vec::new();
        self.wait_for("the screenshot flush", |s| {
            ready.extend(s.sup.take_screenshots_ready(&s.name).unwrap_or_default());
            ready.contains(&id)
        })?;
        let fb = self
            .sup
            .framebuffer(&self.name)
            .map_err(|e| e.to_string())?
            .ok_or("the partition offered no framebuffer")?;
        let mut pixels = Vec::new();
        fb.read_all(&mut pixels).map_err(|e| e.to_string())?;
        let path = self.out.join(format!("{name}.png"));
        let file = File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        write_png(&fb.layout(), &pixels, BufWriter::new(file)).map_err(|e| e.to_string())?;
        self.log(&format!(
            "screenshot {} from the shared framebuffer",
            path.display()
        ));
        Ok(())
    }

    /// [`Step::Continue`]: adds and starts `name`, continuing from `dir`.
    fn continue_from(&mut self, name: &str, dir: &Path) -> Result<(), String> {
        let mut spec = self.spec.clone();
        spec.launch.name = name.to_string();
        if let Some(g) = &mut spec.guest_config {
            g.name = name.to_string();
        }
        // Its own disks: the copies saved with the state (moved out, so the directory
        // holds only what a resume directory holds).
        for (i, disk) in spec.launch.disks.iter().enumerate() {
            if disk.read_only {
                continue;
            }
            let saved = dir.join(bulkhead_supervisor::saved_state::disk_file_name(i));
            let own = dir.with_file_name(format!("{name}-disk{i}.img"));
            std::fs::rename(&saved, &own)
                .map_err(|e| format!("moving {} to {}: {e}", saved.display(), own.display()))?;
            spec.disk_files[i] = DiskFile::Path(own);
        }
        spec.resume = Some(dir.to_path_buf());
        let previous = std::mem::take(&mut self.serial);
        let log = self.out.join(format!("serial-{}.log", self.name));
        std::fs::write(&log, &previous).map_err(|e| format!("writing {}: {e}", log.display()))?;
        self.sup.add(spec).map_err(|e| e.to_string())?;
        self.sup.start(name).map_err(|e| e.to_string())?;
        self.log(&format!("{name} started from {}", dir.display()));
        self.name = name.to_string();
        self.last_state = None;
        Ok(())
    }

    /// [`Step::ClipboardCopy`]: the current partition's CLIPBOARD into the buffer.
    fn clipboard_copy(&mut self) -> Result<(), String> {
        let began = Instant::now();
        match self.agent_call(AgentRequest::ClipboardGet)? {
            AgentReply::Clipboard {
                content: Some(c), ..
            } => {
                let line = format!(
                    "copied {} bytes ({}) from {} in {:.1} ms",
                    c.len(),
                    c.mime(),
                    self.name,
                    began.elapsed().as_secs_f64() * 1000.0
                );
                self.log(&line);
                self.held = Some((self.name.clone(), c));
                Ok(())
            }
            other => Err(format!("clipboard-copy answered with {other:?}")),
        }
    }

    /// Sends `request` to the agent and waits for its answer.
    fn agent_call(&mut self, request: AgentRequest) -> Result<AgentReply, String> {
        let id = self
            .sup
            .agent_request(&self.name, request)
            .map_err(|e| format!("asking the agent: {e}"))?;
        let mut answer = None;
        self.wait_for("the agent's answer", |s| {
            let replies = s.sup.take_agent_replies(&s.name).unwrap_or_default();
            answer = replies.into_iter().find(|r| reply_id(r) == id);
            answer.is_some()
        })?;
        answer.ok_or_else(|| "no answer".to_string())
    }

    /// [`Step::Spawn`]: the flags' partition as NAME, home in RAM, started.
    fn spawn(&mut self, name: &str) -> Result<(), String> {
        let mut spec = self.spec.clone();
        spec.launch.name = name.to_string();
        if let Some(g) = &mut spec.guest_config {
            g.name = name.to_string();
        }
        let keep: Vec<bool> = spec.launch.disks.iter().map(|d| d.read_only).collect();
        let mut k = keep.iter();
        spec.launch.disks.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        spec.disk_files.retain(|_| *k.next().unwrap_or(&false));
        self.sup.add(spec).map_err(|e| e.to_string())?;
        self.sup.start(name).map_err(|e| e.to_string())?;
        self.others.insert(name.to_string(), Vec::new());
        self.log(&format!("{name} started beside {}", self.name));
        Ok(())
    }

    /// [`Step::Use`]: drive `name` from now on.
    fn use_partition(&mut self, name: &str) -> Result<(), String> {
        let Some(serial) = self.others.remove(name) else {
            return Err(format!("no other partition named {name}"));
        };
        let current = std::mem::replace(&mut self.serial, serial);
        self.others.insert(self.name.clone(), current);
        self.name = name.to_string();
        self.last_state = None;
        Ok(())
    }

    /// [`Step::Policy`]: every partition so far, these rules.
    fn policy(&mut self, rules: &[String]) -> Result<(), String> {
        let dir = PathBuf::from("/tmp/lab-policy");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policy.d")).map_err(|e| e.to_string())?;
        let toml: String = self
            .sup
            .names()
            .iter()
            .map(|n| format!("[partition.{n}]\nlabel = \"green\"\n\n"))
            .collect();
        std::fs::write(dir.join("partitions.toml"), toml).map_err(|e| e.to_string())?;
        let text: String = rules.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(dir.join("policy.d/50-lab.policy"), text).map_err(|e| e.to_string())?;
        isolation_policy::Policy::load(&dir).map_err(|e| format!("the lab policy: {e}"))?;
        // DIR/audit.log: the lab machine sends back DIR's files, not subdirectories.
        let audit = self.out.clone();
        self.broker = Some(ServiceBroker::new(
            Some(dir.clone()),
            Some(&audit),
            bulkhead_supervisor::launch::Engine::Linux,
        ));
        self.policy_dir = Some(dir);
        self.log(&format!("policy: {rules:?}"));
        Ok(())
    }

    fn answer(&mut self, choice: Option<String>) -> Result<(), String> {
        self.wait_for("a service question", |s| !s.questions.is_empty())?;
        let q = self.questions.remove(0);
        self.log(&format!("answer {} with {choice:?}", q.id));
        let Some(broker) = &mut self.broker else {
            return Err("no policy step came first".into());
        };
        let events = broker.answer(&self.sup, q.id, choice);
        for e in events {
            if let ServiceEvent::Status {
                partition,
                topic,
                text,
                ..
            } = e
            {
                let line = format!("[{partition}] {topic}: {text}");
                self.log(&format!("service: {line}"));
                self.service_lines.push(line);
            }
        }
        Ok(())
    }

    fn clipboard_paste(&mut self) -> Result<(), String> {
        let Some((source, content)) = self.held.clone() else {
            // The gesture with an empty buffer: nothing crosses (a paste empties it).
            self.log(&format!("nothing to paste into {}", self.name));
            return Ok(());
        };
        let began = Instant::now();
        let dir = self.policy_dir.clone().ok_or("no policy step came first")?;
        let (policy, _) = isolation_policy::Policy::load(&dir).map_err(|e| e.to_string())?;
        let request = isolation_policy::Request::clipboard_paste(&source, &self.name);
        let decision = policy.decide(&request);
        if !decision.verdict.is_allow() {
            self.log(&format!(
                "paste from {source} into {} refused: {}",
                self.name, decision.explanation
            ));
            return Ok(());
        }
        match self.agent_call(AgentRequest::ClipboardSet(content.clone()))? {
            AgentReply::ClipboardSet { .. } => {
                self.held = None;
                let line = format!(
                    "pasted {} bytes from {source} into {} in {:.1} ms",
                    content.len(),
                    self.name,
                    began.elapsed().as_secs_f64() * 1000.0
                );
                self.log(&line);
                Ok(())
            }
            other => Err(format!("paste answered with {other:?}")),
        }
    }

    fn run_step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Spawn(name) => self.spawn(name),
            Step::Use(name) => self.use_partition(name),
            Step::Policy(rules) => self.policy(rules),
            Step::Answer(choice) => self.answer(choice.clone()),
            Step::WaitService(text) => self.wait_for(&format!("service line {text:?}"), |s| {
                s.service_lines.iter().any(|l| l.contains(text.as_str()))
            }),
            Step::ClipboardCopy => self.clipboard_copy(),
            Step::ClipboardPaste => self.clipboard_paste(),
            Step::WaitAgentCut(name) => {
                let mut agent = AgentStatus::Absent;
                self.wait_for(&format!("{name}'s agent cut off"), |s| {
                    agent = s.sup.status(name).map(|st| st.agent).unwrap_or_default();
                    matches!(agent, AgentStatus::CutOff { .. })
                })?;
                self.log(&format!("{name}: {}", agent.describe()));
                Ok(())
            }
            Step::Save(dir) => {
                let saved = self
                    .sup
                    .save_running(&self.name, dir, Duration::from_secs(120))
                    .map_err(|e| e.to_string())?;
                self.log(&format!(
                    "saved {}: state {} bytes, memory {} of {} pages written, disks {:?}, paused {} ms",
                    self.name,
                    saved.state_bytes,
                    saved.memory_pages_written,
                    saved.memory_bytes / 4096,
                    saved.disks,
                    saved.paused_for.as_millis()
                ));
                Ok(())
            }
            Step::Carry(dir) => {
                let line = carry(dir)?;
                self.log(&line);
                Ok(())
            }
            Step::Continue(name, dir) => self.continue_from(name, dir),
            Step::WaitAgent => {
                let mut agent = AgentStatus::Absent;
                self.wait_for("the guest agent's Hello", |s| {
                    agent = s.sup.status(&s.name).map(|st| st.agent).unwrap_or_default();
                    !matches!(agent, AgentStatus::Absent)
                })?;
                self.log(&format!("agent: {}", agent.describe()));
                match agent {
                    AgentStatus::Connected { .. } => Ok(()),
                    other => Err(other.describe()),
                }
            }
            Step::AgentPing => {
                let start = Instant::now();
                match self.agent_call(AgentRequest::Ping)? {
                    AgentReply::Pong { .. } => {
                        self.log(&format!("agent pong after {:?}", start.elapsed()));
                        Ok(())
                    }
                    other => Err(format!("ping answered with {other:?}")),
                }
            }
            Step::ClipboardSet(text) => {
                match self.agent_call(AgentRequest::ClipboardSet(Clipboard::Text(text.clone())))? {
                    AgentReply::ClipboardSet { .. } => {
                        self.log(&format!("agent owns the CLIPBOARD with {text:?}"));
                        Ok(())
                    }
                    other => Err(format!("clipboard-set answered with {other:?}")),
                }
            }
            Step::WaitClipboard(text) => loop {
                let got = self.agent_call(AgentRequest::ClipboardGet)?;
                self.log(&format!("agent clipboard: {got:?}"));
                if let AgentReply::Clipboard {
                    content: Some(Clipboard::Text(t)),
                    ..
                } = &got
                {
                    if t == text {
                        return Ok(());
                    }
                }
                if Instant::now() >= self.deadline {
                    return Err(format!("the CLIPBOARD never held {text:?}"));
                }
                std::thread::sleep(Duration::from_millis(500));
            },
            Step::WaitSerial(text) => {
                let needle = text.as_bytes().to_vec();
                self.wait_for(&format!("serial {text:?}"), |s| {
                    contains(&s.serial, &needle)
                })
            }
            Step::WaitConsole(text) => {
                let needle = text.as_bytes().to_vec();
                self.wait_for(&format!("console {text:?}"), |s| {
                    contains(&s.console, &needle)
                })
            }
            Step::WaitConsoleBytes(n) => {
                self.wait_for(&format!("{n} console bytes"), |s| s.console.len() >= *n)
            }
            Step::Type(text) => self.type_text(text),
            Step::Tablet(x, y) => self.tablet(&[
                (EV_ABS, ABS_X, *x),
                (EV_ABS, ABS_Y, *y),
                (EV_SYN, SYN_REPORT, 0),
            ]),
            Step::Click => {
                self.tablet(&[(EV_KEY, BTN_LEFT, 1), (EV_SYN, SYN_REPORT, 0)])?;
                self.tablet(&[(EV_KEY, BTN_LEFT, 0), (EV_SYN, SYN_REPORT, 0)])
            }
            Step::Console(text) => self.console_write(text.as_bytes()),
            Step::ConsolePattern(n) => self.console_write(&console_pattern(*n)),
            Step::Screenshot(name) => self.screenshot(name),
            Step::Sleep(d) => {
                let until = Instant::now() + *d;
                while Instant::now() < until {
                    self.pump()?;
                    std::thread::sleep(POLL);
                }
                Ok(())
            }
            Step::SandboxReport => {
                let pid = self
                    .sup
                    .status(&self.name)
                    .map_err(|e| e.to_string())?
                    .pid
                    .ok_or("the partition process is not running")?;
                let report = sandbox_report(pid);
                std::fs::write(self.out.join("sandbox.txt"), &report)
                    .map_err(|e| format!("writing sandbox.txt: {e}"))?;
                self.log(&format!("sandbox report for pid {pid}"));
                Ok(())
            }
            Step::Pause => {
                self.sup.pause(&self.name).map_err(|e| e.to_string())?;
                self.wait_for("the paused state", |s| {
                    s.last_state == Some(ProcessState::Paused)
                })
            }
            Step::Resume => {
                self.sup.resume(&self.name).map_err(|e| e.to_string())?;
                self.wait_for("the running state", |s| {
                    s.last_state == Some(ProcessState::Running)
                })
            }
            Step::Stats => {
                let before = self.sup.status(&self.name).map_err(|e| e.to_string())?.stats;
                self.sup.request_stats(&self.name).map_err(|e| e.to_string())?;
                let mut latest = None;
                self.wait_for("stats", |s| {
                    latest = s.sup.status(&s.name).ok().and_then(|st| st.stats);
                    latest.is_some() && latest != before
                })?;
                self.log(&format!("stats {latest:?}"));
                Ok(())
            }
            Step::Balloon(mib) => {
                self.sup
                    .set_balloon(NAME, *mib)
                    .map_err(|e| e.to_string())?;
                self.log(&format!("balloon target {mib} MiB"));
                Ok(())
            }
            Step::WaitBalloon(mib) => {
                let started = Instant::now();
                let mut asked = Instant::now() - Duration::from_secs(1);
                let mut last = None;
                self.wait_for(&format!("a balloon of {mib} MiB"), |s| {
                    if asked.elapsed() >= Duration::from_millis(500) {
                        let _ = s.sup.request_stats(NAME);
                        asked = Instant::now();
                    }
                    last = s
                        .sup
                        .status(NAME)
                        .ok()
                        .and_then(|st| st.stats)
                        .and_then(|st| st.balloon_mib);
                    last == Some(*mib)
                })?;
                self.log(&format!(
                    "balloon holds {last:?} MiB after {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            Step::Stop => {
                self.sup
                    .stop(&self.name, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                self.pump().map(|_| ())
            }
            Step::WaitExit => self.wait_for("the partition to end", |s| {
                matches!(
                    s.last_state,
                    Some(ProcessState::Exited { .. } | ProcessState::Crashed { .. })
                )
            }),
            Step::WaitNet(text) => self.wait_for(&format!("network {text:?}"), |s| {
                s.last_network.as_ref().is_some_and(|n| {
                    n.caption().contains(text.as_str())
                        && !matches!(n, NetworkState::Nat { applied: false, .. })
                })
            }),
            Step::WaitNetRestarts(n) => {
                self.wait_for(&format!("{n} passt restart(s)"), |s| {
                    matches!(
                        s.last_network,
                        Some(NetworkState::Nat { passt_restarts, applied: true, .. }) if passt_restarts >= *n
                    )
                })
            }
            Step::KillPasst | Step::KillRelay => {
                let pids = self
                    .sup
                    .network_pids(&self.name)
                    .map_err(|e| e.to_string())?
                    .ok_or("the partition's network is not running")?;
                let (what, pid) = match step {
                    Step::KillPasst => ("passt", pids.passt),
                    _ => ("relay", pids.relay),
                };
                let pid = i32::try_from(pid).map_err(|_| format!("{what} pid {pid}"))?;
                // SAFETY: kill takes plain integers; `pid` is a child of this process
                // (the supervisor's), unreaped while the link lists it.
                if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                    return Err(format!(
                        "killing {what} {pid}: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                self.log(&format!("killed {what} (pid {pid})"));
                self.pump().map(|_| ())
            }
            Step::Rules(specs) => {
                let plan = NetworkPlan {
                    dns: self.dns,
                    ..allow_rules(specs)?
                };
                let sent = self
                    .sup
                    .set_network_rules(&self.name, plan)
                    .map_err(|e| e.to_string())?;
                if !sent {
                    return Err("the partition is offline: no rules to change".into());
                }
                self.log(&format!("rules replaced: {specs:?}"));
                self.pump().map(|_| ())
            }
        }
    }
}

fn reply_id(r: &AgentReply) -> u32 {
    r.id()
}

/// How the partition process `pid` and the VMM it runs are confined, one `key: value`
/// line each: per process its PID-namespace pids, no_new_privs and the seccomp mode of
/// every thread; per namespace kind whether the VMM's differs from ours.
fn sandbox_report(pid: u32) -> String {
    let vm = vm_process(pid);
    let mut out = String::new();
    for (role, p) in [("reaper", pid), ("vmm", vm)] {
        let status = format!("/proc/{p}/status");
        out += &format!("{role} NSpid: {}\n", status_field(&status, "NSpid:"));
        out += &format!(
            "{role} NoNewPrivs: {}\n",
            status_field(&status, "NoNewPrivs:")
        );
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| {
                d.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let modes: Vec<String> = tasks
            .iter()
            .map(|t| status_field(&format!("/proc/{p}/task/{t}/status"), "Seccomp:"))
            .collect();
        out += &format!("{role} thread seccomp modes: {}\n", modes.join(" "));
    }
    for ns in ["user", "mnt", "net", "ipc", "uts", "pid_for_children"] {
        let link = |p: String| std::fs::read_link(p).ok();
        let ours = link(format!("/proc/self/ns/{ns}"));
        let theirs = link(format!("/proc/{vm}/ns/{ns}"));
        let verdict = match (ours, theirs) {
            (Some(a), Some(b)) if a != b => "own",
            (Some(_), Some(_)) => "shared",
            _ => "unknown",
        };
        out += &format!("ns {ns}: {verdict}\n");
    }
    out
}

/// The value after `key` in a /proc status file, empty when unreadable.
fn status_field(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| Some(l.strip_prefix(key)?.trim().to_string()))
        .unwrap_or_default()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn final_line(state: Option<&ProcessState>) -> String {
    match state {
        Some(ProcessState::Exited { status }) => format!("FINAL exited={status}"),
        Some(ProcessState::Crashed { reason }) => format!("FINAL crashed={reason}"),
        other => format!("FINAL running ({other:?})"),
    }
}

fn run(opts: Options) -> Result<bool, String> {
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("creating {}: {e}", opts.out.display()))?;
    let events = File::create(opts.out.join("events.log")).map_err(|e| e.to_string())?;
    let mut spec = LaunchSpec::partition(
        opts.launch.clone(),
        opts.boot_files.clone(),
        AutoRestart::Never,
    );
    spec.program = opts.program.clone();
    spec.disk_files = opts.disk_files.clone();
    spec.guest_config = opts.guest_config.clone();
    spec.network = opts.network.clone();
    let sup = Supervisor::new(vec![spec.clone()]).map_err(|e| e.to_string())?;
    // The relay's denials, as the app records them (`DIR/audit.log`).
    let audit =
        isolation_policy::AuditLog::open(&opts.out, 1 << 20, 1).map_err(|e| e.to_string())?;
    sup.set_audit_log(Some(std::sync::Arc::new(audit)));
    let started = Instant::now();
    let mut session = Session {
        sup,
        name: NAME.to_string(),
        started,
        deadline: started + opts.timeout,
        serial: Vec::new(),
        console: Vec::new(),
        last_state: None,
        last_network: None,
        dns: opts.network.as_ref().is_some_and(|n| n.dns),
        events: BufWriter::new(events),
        out: opts.out.clone(),
        spec: spec.clone(),
        others: Default::default(),
        broker: None,
        policy_dir: None,
        questions: Vec::new(),
        service_lines: Vec::new(),
        held: None,
    };
    let ok = match &opts.disposables {
        None => {
            session.sup.start(NAME).map_err(|e| e.to_string())?;
            run_steps(&mut session, &opts.steps)
        }
        Some((count, marker)) => run_disposables(&mut session, &spec, *count, marker, &opts)?,
    };
    let _ = session.pump();
    write_outputs(&session, &opts.out)?;
    Ok(ok)
}

/// Runs `steps` against the session's partition; false after the first that failed.
fn run_steps(session: &mut Session, steps: &[Step]) -> bool {
    for step in steps {
        session.log(&format!("step {step:?}"));
        if let Err(e) = session.run_step(step) {
            session.log(&format!("FAILED {step:?}: {e}"));
            // What the guest showed when the step gave up: the best clue to why.
            if let Err(e) = session.screenshot("failure") {
                session.log(&format!("no failure screenshot: {e}"));
            }
            return false;
        }
    }
    true
}

/// `--disposables`: `count` disposables of `template` started one after the other, each
/// driven through the steps and left running; each one's serial console goes to
/// `DIR/serial-<name>.log`. The second waits for the first one's snapshot, so it (and
/// every later one) is restored from it.
fn run_disposables(
    session: &mut Session,
    template: &LaunchSpec,
    count: u32,
    marker: &str,
    opts: &Options,
) -> Result<bool, String> {
    // Not under DIR: the lab machine would send the snapshot's memory file back.
    let cache = PathBuf::from("/tmp/bulkhead-disposables");
    let mut first: Option<String> = None;
    for _ in 0..count {
        if let Some(first) = &first {
            let sup = &session.sup;
            let deadline = session.deadline;
            loop {
                match sup.snapshot_result(first).map_err(|e| e.to_string())? {
                    Some(Ok(_)) => break,
                    Some(Err(reason)) => {
                        return Err(format!("the snapshot of {first} failed: {reason}"))
                    }
                    None if Instant::now() >= deadline => {
                        return Err(format!("timed out waiting for the snapshot of {first}"))
                    }
                    None => std::thread::sleep(POLL),
                }
            }
        }
        let d = session
            .sup
            .start_disposable_in(template, marker, &cache)
            .map_err(|e| e.to_string())?;
        session.log(&format!(
            "disposable {} started, restored={}",
            d.name, d.restored
        ));
        session.name = d.name.clone();
        session.serial.clear();
        session.last_state = None;
        first.get_or_insert(d.name.clone());
        let ok = run_steps(session, &opts.steps);
        let _ = session.pump();
        let log = opts.out.join(format!("serial-{}.log", d.name));
        std::fs::write(&log, &session.serial)
            .map_err(|e| format!("writing {}: {e}", log.display()))?;
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// [`Step::Carry`]: the saved state in `dir` through a bundle and back; one line for
/// the log.
fn carry(dir: &Path) -> Result<String, String> {
    use bulkhead_supervisor::bundle::{self, BundleWriter, SecretString};
    use bulkhead_supervisor::saved_state::{memory_mtime, set_memory_mtime};
    let pass = || SecretString::from("lab passphrase".to_string());
    let with_suffix = |suffix: &str| {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        dir.with_file_name(name)
    };
    let file = with_suffix(".bundle");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let time = memory_mtime(dir).map_err(|e| format!("the saved memory file: {e}"))?;
    let began = Instant::now();
    let mut w = BundleWriter::create(&file, pass(), None).map_err(|e| e.to_string())?;
    for n in &names {
        w.add_file(&format!("state/{n}"), &dir.join(n), &mut |_| {})
            .map_err(|e| e.to_string())?;
    }
    let file = w.finish().map_err(|e| e.to_string())?;
    let packed = began.elapsed();
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let staging = dir.parent().unwrap_or(Path::new("/"));
    let unpacked =
        bundle::unpack(&file, pass(), staging, &mut |_| {}).map_err(|e| e.to_string())?;
    let carried = with_suffix(".carried");
    std::fs::create_dir_all(&carried).map_err(|e| e.to_string())?;
    for n in &names {
        let from = unpacked
            .path(&format!("state/{n}"))
            .ok_or_else(|| format!("{n} is missing from the unpacked bundle"))?;
        let (a, b) = (digest(&dir.join(n))?, digest(from)?);
        if a != b {
            return Err(format!("{n} changed on its way through the bundle"));
        }
        std::fs::rename(from, carried.join(n)).map_err(|e| e.to_string())?;
    }
    set_memory_mtime(&carried, time).map_err(|e| e.to_string())?;
    Ok(format!(
        "carried {} through a {size}-byte bundle (packed in {} ms, unpacked in {} ms): {names:?} byte-identical",
        dir.display(),
        packed.as_millis(),
        (began.elapsed() - packed).as_millis()
    ))
}

/// SHA-256 of a file, hex.
fn digest(path: &Path) -> Result<String, String> {
    bulkhead_supervisor::template::manifest::file_digest(path)
        .map(|(_, h)| h)
        .map_err(|e| format!("hashing {}: {e}", path.display()))
}

fn write_outputs(session: &Session, out: &Path) -> Result<(), String> {
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(out.join(name), bytes).map_err(|e| format!("writing {name}: {e}"))
    };
    write("console.bin", &session.console)?;
    // Each partition's serial whole, when several ran (stdout interleaves them).
    if !session.others.is_empty() {
        write(&format!("serial-{}.log", session.name), &session.serial)?;
    }
    for (name, serial) in &session.others {
        write(&format!("serial-{name}.log"), serial)?;
    }
    write(
        "final.txt",
        format!("{}\n", final_line(session.last_state.as_ref())).as_bytes(),
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lab-supervise: {e}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lab-supervise: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn steps_and_the_vmm_command_are_parsed_in_order() {
        let o = parse_options(&strings(&[
            "--out",
            "/out",
            "wait-serial:READY",
            "type:ls\\n",
            "tablet:10,20",
            "console-pattern:300",
            "balloon:512",
            "wait-balloon:0",
            "--",
            "/bulkhead-vmm",
            "--kernel=/guest/vmlinux",
            "--mem=256M",
            "--display=none",
        ]))
        .unwrap();
        assert_eq!(
            o.steps,
            vec![
                Step::WaitSerial("READY".into()),
                Step::Type("ls\n".into()),
                Step::Tablet(10, 20),
                Step::ConsolePattern(300),
                Step::Balloon(512),
                Step::WaitBalloon(0),
            ]
        );
        assert_eq!(o.program, PathBuf::from("/bulkhead-vmm"));
        assert_eq!(o.launch.memory_mib, 256);
        assert_eq!(o.launch.display, None);
        assert_eq!(
            o.boot_files,
            BootFiles::Linux {
                kernel: "/guest/vmlinux".into(),
                initrd: None
            }
        );
    }

    #[test]
    fn bad_steps_are_refused_with_the_step_named() {
        let err = parse_options(&strings(&["--out", "/o", "tablet:1", "--", "x"]))
            .err()
            .unwrap();
        assert!(err.contains("tablet:1"), "{err}");
        assert!(parse_options(&strings(&["--out", "/o", "screenshot:../x", "--", "x"])).is_err());
        assert!(parse_options(&strings(&["--out", "/o", "wait-serial:x"])).is_err());
        let err = parse_options(&strings(&["--out", "/o", "--", "/v", "run"]))
            .err()
            .unwrap();
        assert!(err.contains("run"), "{err}");
        assert!(parse_options(&strings(&["--out", "/o", "--", "/v", "--mem=256M"])).is_err());
    }
}
