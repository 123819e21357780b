//! The network of an online (NAT) partition: passt and the firewall relay, outside the
//! partition's sandbox.
//!
//! ```text
//!   VMM ──stream── relay ──stream── passt ── host sockets
//!                    │ control (SOCK_SEQPACKET, JSON)
//!               supervisor (this module's monitor thread)
//! ```
//!
//! Per partition process, [`Link::start`] makes the VMM's socketpair (the VMM gets one
//! end as `FileRole::Network`, nothing else) and a monitor thread that starts passt and
//! `bulkhead-netrelay` on fresh socketpairs, sends the relay the partition's rules and
//! watches both by pidfd:
//!
//! - **passt dies**: the relay sees its end close and exits; the monitor starts a new
//!   passt and a new relay on the *same* VMM-facing socket, which it keeps a duplicate
//!   of (the VMM cannot be handed a new socket while it runs). Frames in flight are lost,
//!   as on any link flap; TCP retransmits.
//! - **the relay dies** (by a signal, or an exit the loss of passt does not explain):
//!   the network goes down for good for this process: passt is killed and the kept
//!   duplicate dropped, so the VMM's socket reaches end-of-file and nothing passes. The
//!   state says why ([`NetworkState::Down`]); the next start of the partition gets a new
//!   network.
//!
//! Every child is spawned by the monitor thread with `PR_SET_PDEATHSIG(SIGKILL)` (the
//! signal follows the thread that forked, which lives exactly as long as the link), is
//! killed and reaped when the link is dropped, and inherits exactly its sockets as fds
//! 3, 4, 5.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use isolation_policy::network::FirewallRule;
use isolation_policy::{AuditLog, AuditRecord, Decision, NetTarget, Protocol, Request, RuleRef};
use netrelay::control::{self, FromRelay, RuleSpec, ToRelay};
use tracing::{info, warn};

use crate::spawn::{describe_signal, Pidfd};

/// The relay binary's name (beside `bulkhead-vmm`, else on PATH).
pub const RELAY_PROGRAM: &str = "bulkhead-netrelay";
/// How long the relay may take to notice passt is gone before it is killed.
const RELAY_NOTICE: Duration = Duration::from_secs(1);
/// passt restarts in a row (each link living less than [`STABLE`]) before the network
/// is declared down instead.
const MAX_QUICK_RESTARTS: u32 = 5;
const STABLE: Duration = Duration::from_secs(10);
/// Denials written to the audit log per second (burst [`AUDIT_BURST`]); the rest are
/// counted and the count goes into the next record.
const AUDIT_PER_SECOND: f64 = 5.0;
const AUDIT_BURST: f64 = 20.0;

/// An online partition's firewall, as its policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// First match wins, no match denies.
    pub rules: Vec<FirewallRule>,
    /// DNS to passt's resolver allowed.
    pub dns: bool,
    /// The file the rules were written in (for file:line in audit records).
    pub file: PathBuf,
}

impl NetworkPlan {
    /// The plan of a configured partition: `None` for an offline one (no device at all).
    pub fn of(spec: &isolation_policy::PartitionSpec) -> Option<NetworkPlan> {
        match spec.network {
            isolation_policy::NetworkMode::Offline => None,
            isolation_policy::NetworkMode::Nat => Some(NetworkPlan {
                rules: spec.firewall.clone(),
                dns: spec.dns,
                file: spec.file.clone(),
            }),
        }
    }

    /// What the relay is sent: each rule with its `file:line`.
    fn specs(&self) -> Vec<RuleSpec> {
        let file = self.file.display().to_string();
        self.rules
            .iter()
            .map(|r| RuleSpec::from_rule(r, &file))
            .collect()
    }

    fn message(&self) -> ToRelay {
        ToRelay::Rules {
            rules: self.specs(),
            dns: self.dns,
        }
    }
}

/// A partition's network as the app shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkState {
    /// No network device at all.
    #[default]
    Offline,
    /// NAT through passt behind the relay. `applied`: the relay confirmed the current
    /// rules (until then it denies everything); `passt_restarts` since the process
    /// started.
    Nat {
        rules: usize,
        applied: bool,
        passt_restarts: u32,
    },
    /// The network of the running process is gone and nothing passes: why.
    Down { reason: String },
}

impl NetworkState {
    /// One line for a person: "offline", "NAT · 2 rules", "network down: relay exited …".
    pub fn caption(&self) -> String {
        match self {
            NetworkState::Offline => "offline".to_string(),
            NetworkState::Nat { rules, .. } => {
                format!("NAT · {rules} rule{}", if *rules == 1 { "" } else { "s" })
            }
            NetworkState::Down { reason } => format!("network down: {reason}"),
        }
    }
}

/// Where denials go (`None`: only the tracing log).
pub type AuditSink = Arc<RwLock<Option<Arc<AuditLog>>>>;
/// The partition-change callback.
type Notify = crate::Notify;

/// What the monitor thread and the callers share.
struct Shared {
    name: String,
    state: Mutex<LinkState>,
    audit: AuditSink,
    notify: Notify,
}

struct LinkState {
    plan: NetworkPlan,
    state: NetworkState,
    /// A duplicate of the current relay's control end, for live rule changes from any
    /// thread (sent without waiting; the monitor thread reads the answers).
    control: Option<OwnedFd>,
    /// The running passt's and relay's pids.
    pids: Option<HelperPids>,
}

/// The processes of a running link (for diagnostics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelperPids {
    pub passt: u32,
    pub relay: u32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.lock());
        if let Ok(guard) = self.notify.read() {
            if let Some(notify) = guard.as_ref() {
                notify();
            }
        }
    }

    fn down(&self, reason: String) {
        warn!(partition = %self.name, %reason, "network down");
        self.set(|s| {
            s.state = NetworkState::Down { reason };
            s.control = None;
            s.pids = None;
        });
    }
}

/// Where the helper programs are and where their stderr goes.
#[derive(Debug, Clone)]
pub struct Programs {
    pub passt: PathBuf,
    pub relay: PathBuf,
    /// passt's and the relay's stderr, sanitised like a partition's (`None`: dropped).
    pub log: Option<PathBuf>,
}

impl Programs {
    /// passt from PATH; the relay as `$BULKHEAD_NETRELAY`, else beside `vmm` (how the
    /// VMM itself was found), else on PATH.
    pub fn find(vmm: &Path, log: Option<PathBuf>) -> Programs {
        let relay = std::env::var_os("BULKHEAD_NETRELAY")
            .map(PathBuf::from)
            .or_else(|| {
                vmm.parent()
                    .map(|d| d.join(RELAY_PROGRAM))
                    .filter(|p| p.is_file())
            })
            .unwrap_or_else(|| PathBuf::from(RELAY_PROGRAM));
        Programs {
            passt: PathBuf::from("passt"),
            relay,
            log,
        }
    }
}

/// The network of one partition process; dropping it kills and reaps passt and the
/// relay.
pub struct Link {
    shared: Arc<Shared>,
    /// Dropped to tell the monitor thread to stop (its read end sees end-of-file).
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts the network; returns it and the VMM's end of its stream socket.
    pub fn start(
        name: &str,
        plan: NetworkPlan,
        programs: Programs,
        audit: AuditSink,
        notify: Notify,
    ) -> io::Result<(Link, OwnedFd)> {
        let (vmm_end, relay_end) = stream_pair()?;
        let (stop_read, stop_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: Mutex::new(LinkState {
                state: NetworkState::Nat {
                    rules: plan.rules.len(),
                    applied: false,
                    passt_restarts: 0,
                },
                plan,
                control: None,
                pids: None,
            }),
            audit,
            notify,
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("net-{name}"))
            .spawn(move || Monitor::new(s, programs, relay_end, stop_read).run())?;
        Ok((
            Link {
                shared,
                stop: Some(stop_write),
                thread: Some(thread),
            },
            vmm_end,
        ))
    }

    pub fn state(&self) -> NetworkState {
        self.shared.lock().state.clone()
    }

    pub fn pids(&self) -> Option<HelperPids> {
        self.shared.lock().pids
    }

    /// Replaces the rules: the running relay gets them at once (it applies them to new
    /// flows and cuts the flows they deny); a relay started later starts with them.
    pub fn set_plan(&self, plan: NetworkPlan) -> Result<(), control::ControlError> {
        let message = plan.message();
        let mut s = self.shared.lock();
        if let NetworkState::Nat { rules, applied, .. } = &mut s.state {
            *rules = plan.rules.len();
            *applied = false;
        }
        s.plan = plan;
        match &s.control {
            Some(fd) => control::send_on(fd.as_fd(), &message, true),
            None => Ok(()),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connected stream socketpair, both ends close-on-exec.
fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The first fd a helper finds its sockets at (then 4, 5).
const FIRST_FD: RawFd = 3;

/// passt's command line: the socket at fd 3, in the foreground, errors to stderr only,
/// no port forwarded to the guest, no capture file; the standard MTU (the guest's
/// receive buffers hold standard frames: no offloads, no mergeable buffers).
fn passt_args() -> Vec<String> {
    [
        "--fd", "3", "-f", "-e", "-q", "-t", "none", "-u", "none", "-m", "1500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The relay's command line: the VMM's stream at 3, passt's at 4, control at 5; the
/// rules come over the control channel (until then it denies everything).
fn relay_args(resolvers: &[std::net::IpAddr]) -> Vec<String> {
    let mut a: Vec<String> = ["--guest-fd", "3", "--passt-fd", "4", "--control-fd", "5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(resolvers.iter().map(|r| format!("--resolver={r}")));
    a
}

/// The nameservers in `resolv_conf`: what passt hands the guest by DHCP, so the only
/// addresses the relay lets DNS go to (when the rules allow DNS).
fn nameservers(resolv_conf: &str) -> Vec<std::net::IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// Spawns `program` with `fds` as 3, 4, … (and no other inherited fd but stdio), killed
/// when the calling thread ends.
fn spawn_helper(
    program: &Path,
    args: &[String],
    fds: &[BorrowedFd<'_>],
    stderr: Stdio,
) -> io::Result<(Child, Pidfd)> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: the hook runs in the forked child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes only fcntl, dup2, prctl and getppid
    // calls on plain integers and allocates nothing (`raw` was built before the fork and
    // is only read). Every fd in `raw` is open in the parent, borrowed for this whole
    // call, so open in the child. Each is first duplicated to a close-on-exec fd >= 16,
    // above every target (3 + at most 3), so no dup2 below overwrites a source not yet
    // copied; dup2 onto a target clears close-on-exec on it alone, so exactly these
    // targets survive the exec (everything else of ours is close-on-exec). The death
    // signal is set before the parent check, so a parent that died in between is seen.
    unsafe {
        command.pre_exec(move || {
            let mut copies = [0 as RawFd; 3];
            if raw.len() > copies.len() {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            for (copy, fd) in copies.iter_mut().zip(&raw) {
                *copy = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 16);
                if *copy < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, copy) in copies.iter().take(raw.len()).enumerate() {
                // `i` < 3, so the target is 3, 4 or 5.
                if libc::dup2(*copy, FIRST_FD + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    match Pidfd::open(child.id()) {
        Ok(pidfd) => Ok((child, pidfd)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// A stderr pipe for a helper whose read end goes into `log` (or is drained and
/// dropped), so a helper never blocks on it and never writes to the app's stderr.
fn stderr_to_log(name: &str, log: Option<&Path>) -> Stdio {
    let Ok((read, write)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
        return Stdio::null();
    };
    let sink: Box<dyn io::Write + Send> = match log.map(crate::log::open_log) {
        Some(Ok(file)) => Box::new(file),
        _ => Box::new(io::sink()),
    };
    let label = name.to_string();
    let pumped = std::thread::Builder::new()
        .name(format!("netlog-{name}"))
        .spawn(move || crate::log::pump(&label, std::fs::File::from(read), sink));
    match pumped {
        Ok(_) => Stdio::from(write),
        Err(_) => Stdio::null(),
    }
}

/// One running passt + relay pair.
struct Pair {
    passt: (Child, Pidfd),
    relay: (Child, Pidfd),
    control: control::Client,
    started: Instant,
}

impl Pair {
    fn kill(mut self) {
        for (child, pidfd) in [&mut self.passt, &mut self.relay] {
            let _ = pidfd.kill();
            let _ = child.wait();
        }
    }
}

/// Who failed, from how both ended.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// passt went away on its own: start both again on the same VMM socket.
    RestartPasst,
    /// The relay failed (or went first): the network goes down.
    RelayFailed(String),
}

/// Reads both exit statuses (`None`: had not ended within the wait, then killed). passt
/// exits 0 only when its peer (the relay) closed, so a passt that ended by a signal or
/// a failure status went first; the relay then ends with 0 or 3 (its passt side closed
/// or broke). A relay killed by a signal, or a passt that quit because the relay
/// closed, or one that outlived the relay: the relay's failure.
fn judge(relay: Option<ExitStatus>, passt: Option<ExitStatus>) -> Exit {
    let relay_reason = match relay {
        None => "relay stopped relaying".to_string(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("relay exited with status {code}"),
            (None, Some(sig)) => {
                return Exit::RelayFailed(format!("relay {}", describe_signal(sig)))
            }
            _ => format!("relay ended: {s}"),
        },
    };
    let passt_failed = passt.is_some_and(|p| p.code() != Some(0));
    let relay_followed = relay.is_none_or(|r| matches!(r.code(), Some(0 | 3)));
    if passt_failed && relay_followed {
        Exit::RestartPasst
    } else {
        Exit::RelayFailed(relay_reason)
    }
}

/// Token bucket for audit records.
struct AuditLimit {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl AuditLimit {
    fn new() -> Self {
        AuditLimit {
            tokens: AUDIT_BURST,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// `Some(suppressed before this one)` when a record may be written now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * AUDIT_PER_SECOND).min(AUDIT_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

struct Monitor {
    shared: Arc<Shared>,
    programs: Programs,
    /// The relay's end of the VMM's socket, kept across relay restarts; dropped when the
    /// network goes down, so the VMM reads end-of-file.
    relay_end: Option<OwnedFd>,
    stop: OwnedFd,
    resolvers: Vec<std::net::IpAddr>,
    audit_limit: AuditLimit,
    quick_restarts: u32,
}

impl Monitor {
    fn new(shared: Arc<Shared>, programs: Programs, relay_end: OwnedFd, stop: OwnedFd) -> Self {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Monitor {
            shared,
            programs,
            relay_end: Some(relay_end),
            stop,
            resolvers: nameservers(&conf),
            audit_limit: AuditLimit::new(),
            quick_restarts: 0,
        }
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    /// passt and the relay on fresh sockets, the relay on the kept VMM end; the
    /// current rules sent before the relay reads anything.
    fn start_pair(&self) -> Result<Pair, String> {
        let relay_end = self.relay_end.as_ref().ok_or("the VMM's socket is gone")?;
        let io = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let (relay_passt, passt_end) = stream_pair().map_err(|e| io("socketpair", &e))?;
        let (ours, theirs) = control::socketpair().map_err(|e| io("control socketpair", &e))?;
        let log = self.programs.log.as_deref();
        let passt = spawn_helper(
            &self.programs.passt,
            &passt_args(),
            &[passt_end.as_fd()],
            stderr_to_log(&format!("{}-passt", self.name()), log),
        )
        .map_err(|e| io(&format!("starting {}", self.programs.passt.display()), &e))?;
        drop(passt_end);
        let relay = match spawn_helper(
            &self.programs.relay,
            &relay_args(&self.resolvers),
            &[relay_end.as_fd(), relay_passt.as_fd(), theirs.as_fd()],
            stderr_to_log(&format!("{}-relay", self.name()), log),
        ) {
            Ok(r) => r,
            Err(e) => {
                let (mut child, pidfd) = passt;
                let _ = pidfd.kill();
                let _ = child.wait();
                return Err(io(
                    &format!("starting {}", self.programs.relay.display()),
                    &e,
                ));
            }
        };
        drop((relay_passt, theirs));
        let pair = Pair {
            passt,
            relay,
            control: control::Client::new(ours).map_err(|e| io("control channel", &e))?,
            started: Instant::now(),
        };
        let dup = pair.control.as_fd().try_clone_to_owned().ok();
        let mut s = self.shared.lock();
        // Queued in a fresh socket's buffer: never waits.
        if let Err(e) = control::send_on(pair.control.as_fd(), &s.plan.message(), true) {
            drop(s);
            pair.kill();
            return Err(io("sending the rules to the relay", &e));
        }
        s.control = dup;
        s.pids = Some(HelperPids {
            passt: pair.passt.0.id(),
            relay: pair.relay.0.id(),
        });
        drop(s);
        Ok(pair)
    }

    fn run(mut self) {
        let mut pair = match self.start_pair() {
            Ok(p) => p,
            Err(e) => return self.down_until_stopped(e),
        };
        info!(partition = %self.name(), "network started: passt behind the relay");
        loop {
            match self.watch(&mut pair) {
                Watch::Stop => return pair.kill(),
                Watch::PasstGone => {}
                Watch::RelayFailed(reason) => {
                    pair.kill();
                    return self.down_until_stopped(reason);
                }
            }
            let lived = pair.started.elapsed();
            pair.kill();
            self.quick_restarts = if lived < STABLE {
                self.quick_restarts + 1
            } else {
                1
            };
            if self.quick_restarts > MAX_QUICK_RESTARTS {
                return self.down_until_stopped(format!(
                    "passt exited {MAX_QUICK_RESTARTS} times in a row"
                ));
            }
            if self.vmm_closed() {
                return self.down_until_stopped("the partition closed its end".into());
            }
            // 100 ms, 200 ms, … so a passt that dies at once cannot spin.
            let delay = Duration::from_millis(100 << self.quick_restarts.min(5));
            if self.stop_within(delay) {
                return;
            }
            warn!(partition = %self.name(), "passt exited; starting it again behind a new relay");
            pair = match self.start_pair() {
                Ok(p) => p,
                Err(e) => return self.down_until_stopped(e),
            };
            self.shared.set(|s| {
                if let NetworkState::Nat {
                    passt_restarts,
                    applied,
                    ..
                } = &mut s.state
                {
                    *passt_restarts += 1;
                    // Until the new relay confirms the rules (it denies everything before).
                    *applied = false;
                }
            });
        }
    }

    /// Waits for a helper to end, the link to stop, or the relay to speak.
    fn watch(&mut self, pair: &mut Pair) -> Watch {
        use rustix::event::{poll, PollFd, PollFlags};
        loop {
            let mut fds = [
                PollFd::new(&self.stop, PollFlags::IN),
                PollFd::from_borrowed_fd(pair.passt.1.as_fd(), PollFlags::IN),
                PollFd::from_borrowed_fd(pair.relay.1.as_fd(), PollFlags::IN),
                PollFd::from_borrowed_fd(pair.control.as_fd(), PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Watch::RelayFailed(format!("watching the relay: {e}")),
            }
            let ready = |f: &PollFd<'_>| !f.revents().is_empty();
            let (stop, passt, relay, control) = (
                ready(&fds[0]),
                ready(&fds[1]),
                ready(&fds[2]),
                ready(&fds[3]),
            );
            if stop {
                return Watch::Stop;
            }
            if control {
                self.read_control(pair);
            }
            if relay || passt {
                // One went; the other follows within moments (each ends when its peer
                // closes). Both statuses tell which went first.
                let relay_status = wait_exit(&mut pair.relay, RELAY_NOTICE);
                let passt_status = wait_exit(&mut pair.passt, RELAY_NOTICE);
                self.read_control(pair);
                return match judge(relay_status, passt_status) {
                    Exit::RestartPasst => Watch::PasstGone,
                    Exit::RelayFailed(r) => Watch::RelayFailed(r),
                };
            }
        }
    }

    /// Everything the relay has said.
    fn read_control(&mut self, pair: &mut Pair) {
        // Bounded: a relay flooding its channel cannot keep this thread from watching.
        for _ in 0..256 {
            match pair.control.try_recv() {
                Ok(Some(message)) => self.on_message(message),
                Ok(None) => return,
                Err(e) => {
                    warn!(partition = %self.name(), "relay control channel: {e}");
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, message: FromRelay) {
        match message {
            FromRelay::RulesApplied {
                generation,
                cut_flows,
            } => {
                info!(partition = %self.name(), generation, cut_flows, "relay applied the rules");
                self.shared.set(|s| {
                    if let NetworkState::Nat { applied, .. } = &mut s.state {
                        *applied = true;
                    }
                });
            }
            FromRelay::RulesRejected { error } => {
                // The relay keeps its previous rules (or denies everything).
                warn!(partition = %self.name(), %error, "relay refused the rules");
            }
            FromRelay::Denied {
                protocol,
                destination,
                port,
                host,
                reason,
                suppressed,
            } => self.audit_denial(&protocol, destination, port, host, &reason, suppressed),
            FromRelay::Stats { .. } => {}
        }
    }

    fn audit_denial(
        &mut self,
        protocol: &str,
        destination: std::net::IpAddr,
        port: Option<u16>,
        host: Option<String>,
        reason: &str,
        suppressed: u64,
    ) {
        let Some(skipped) = self.audit_limit.allow(Instant::now()) else {
            return;
        };
        let plan = self.shared.lock().plan.clone();
        let record = denial_record(
            &self.shared.name,
            &plan,
            DenialFacts {
                protocol,
                destination,
                port,
                host,
                reason,
                unreported: suppressed.saturating_add(skipped),
            },
            SystemTime::now(),
        );
        let log = self.shared.audit.read().ok().and_then(|g| g.clone());
        match log {
            Some(log) => {
                if let Err(e) = log.append(&record) {
                    warn!(partition = %self.name(), "audit log: {e}");
                }
            }
            None => {
                info!(partition = %self.name(), explanation = %record.explanation, "network denial (no audit log)")
            }
        }
    }

    fn vmm_closed(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let Some(end) = &self.relay_end else {
            return true;
        };
        let mut fds = [PollFd::new(end, PollFlags::RDHUP)];
        matches!(poll(&mut fds, Some(&timeout(Duration::ZERO))), Ok(1))
            && fds[0]
                .revents()
                .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR)
    }

    /// True when the link was told to stop within `delay`.
    fn stop_within(&self, delay: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&self.stop, PollFlags::IN)];
        matches!(poll(&mut fds, Some(&timeout(delay))), Ok(n) if n > 0)
    }

    /// Down: the VMM's socket loses its last peer, so the guest's frames go nowhere.
    fn down_until_stopped(mut self, reason: String) {
        self.relay_end = None;
        self.shared.down(reason);
        while !self.stop_within(Duration::from_secs(3600)) {}
    }
}

enum Watch {
    Stop,
    PasstGone,
    RelayFailed(String),
}

/// The exit status of `child` within `limit`; `None` if it had to be killed.
fn wait_exit(child: &mut (Child, Pidfd), limit: Duration) -> Option<ExitStatus> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::from_borrowed_fd(child.1.as_fd(), PollFlags::IN)];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match poll(&mut fds, Some(&timeout(left))) {
            Ok(n) if n > 0 => return child.0.wait().ok(),
            Ok(_) => break,
            Err(_) => continue,
        }
    }
    None
}

fn timeout(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// What the relay said about one denial.
struct DenialFacts<'a> {
    protocol: &'a str,
    destination: std::net::IpAddr,
    port: Option<u16>,
    host: Option<String>,
    reason: &'a str,
    /// Denials not written before this one (the relay's and ours).
    unreported: u64,
}

/// The audit record of a denial: the rule whose `file:line` the relay named, or none
/// ("no rule allows").
fn denial_record(
    partition: &str,
    plan: &NetworkPlan,
    d: DenialFacts<'_>,
    now: SystemTime,
) -> AuditRecord {
    let protocol = match d.protocol {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        _ => Protocol::Any,
    };
    let target = NetTarget {
        host: d.host,
        ip: Some(d.destination),
        protocol,
        port: d.port,
    };
    let file = plan.file.display().to_string();
    let rule = plan
        .rules
        .iter()
        .find(|r| d.reason.contains(&format!("{file}:{}", r.line)))
        .map(|r| RuleRef {
            file: plan.file.clone(),
            line: r.line,
            column: r.column,
            text: r.to_string(),
        });
    let mut explanation = d.reason.chars().take(512).collect::<String>();
    if d.unreported > 0 {
        explanation.push_str(&format!(" ({} similar denials not recorded)", d.unreported));
    }
    let decision = Decision {
        verdict: isolation_policy::Verdict::Deny { notify: false },
        rule,
        explanation,
        chain: Vec::new(),
    };
    AuditRecord::new(now, &Request::network(partition, target), &decision)
}

/// A slot's network: the plan (replaced by live rule changes) and the link of its
/// current process.
pub struct NetSlot {
    plan: Mutex<Option<NetworkPlan>>,
    link: Mutex<Option<Link>>,
    audit: AuditSink,
}

impl NetSlot {
    pub fn new(plan: Option<NetworkPlan>, audit: AuditSink) -> NetSlot {
        NetSlot {
            plan: Mutex::new(plan),
            link: Mutex::new(None),
            audit,
        }
    }

    fn plan(&self) -> MutexGuard<'_, Option<NetworkPlan>> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link(&self) -> MutexGuard<'_, Option<Link>> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new network for a new process of partition `name` (the old one is torn down
    /// first); the VMM's end, or `None` for an offline partition.
    pub fn start(
        &self,
        name: &str,
        vmm: &Path,
        log_dir: Option<PathBuf>,
        notify: Notify,
    ) -> io::Result<Option<OwnedFd>> {
        self.stop();
        let Some(plan) = self.plan().clone() else {
            return Ok(None);
        };
        let log = log_dir.map(|d| crate::log::log_path(&d, &format!("{name}.net")));
        let programs = Programs::find(vmm, log);
        let (link, vmm_end) = Link::start(name, plan, programs, Arc::clone(&self.audit), notify)?;
        *self.link() = Some(link);
        Ok(Some(vmm_end))
    }

    /// Kills and reaps the current process's passt and relay.
    pub fn stop(&self) {
        let link = self.link().take();
        drop(link);
    }

    pub fn state(&self) -> NetworkState {
        if let Some(link) = self.link().as_ref() {
            return link.state();
        }
        match self.plan().as_ref() {
            None => NetworkState::Offline,
            Some(p) => NetworkState::Nat {
                rules: p.rules.len(),
                applied: false,
                passt_restarts: 0,
            },
        }
    }

    /// The current process's passt and relay, while they run.
    pub fn pids(&self) -> Option<HelperPids> {
        self.link().as_ref().and_then(Link::pids)
    }

    /// Live rules: kept for the next start and sent to the running relay, if any.
    /// `Ok(false)`: the partition is offline (a mode change needs a restart).
    pub fn set_plan(&self, plan: NetworkPlan) -> Result<bool, control::ControlError> {
        let mut current = self.plan();
        if current.is_none() {
            return Ok(false);
        }
        *current = Some(plan.clone());
        drop(current);
        match self.link().as_ref() {
            Some(link) => link.set_plan(plan).map(|()| true),
            None => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests;
