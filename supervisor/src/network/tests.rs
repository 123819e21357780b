//! The link with the real passt and the real relay (built on first use).

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use isolation_policy::network::{Destination, FirewallAction, PortRange};

use super::*;

/// `bulkhead-netrelay` from this workspace's target dir, built once if missing.
fn relay_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/<test> → target/<profile>/bulkhead-netrelay
            let exe = std::env::current_exe().unwrap();
            let path = exe.parent().unwrap().parent().unwrap().join(RELAY_PROGRAM);
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "-p", "bulkhead-netrelay", "--bin", RELAY_PROGRAM])
                .status()
                .unwrap();
            assert!(status.success(), "building the relay failed");
            assert!(path.is_file(), "no relay at {}", path.display());
            path
        })
        .clone()
}

fn which_passt() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("passt").is_file()))
        .unwrap_or(false)
}

fn rule(line: usize, port: u16) -> FirewallRule {
    FirewallRule {
        action: FirewallAction::Allow,
        protocol: Protocol::Tcp,
        destination: Destination::Any,
        ports: vec![PortRange::single(port)],
        line,
        column: 1,
    }
}

fn plan(rules: Vec<FirewallRule>) -> NetworkPlan {
    NetworkPlan {
        rules,
        dns: false,
        file: PathBuf::from("/policy/partitions.toml"),
    }
}

fn start(rules: Vec<FirewallRule>) -> (Link, UnixStream) {
    let programs = Programs {
        passt: PathBuf::from("passt"),
        relay: relay_binary(),
        log: None,
    };
    let audit: AuditSink = Arc::new(RwLock::new(None));
    let notify: Notify = Arc::new(RwLock::new(None));
    let (link, end) = Link::start("t", plan(rules), programs, audit, notify).unwrap();
    (link, UnixStream::from(end))
}

/// Polls `f` for up to 5 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// [`eventually`] on the link's state, which a failure shows.
fn state_eventually(link: &Link, what: &str, f: impl Fn(&NetworkState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f(&link.state()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}: {:?}", link.state());
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie says so in its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn kill(pid: u32) {
    // SAFETY: kill takes plain integers; `pid` is a child of this test process that the
    // link has not reaped yet (checked alive just before), so it names that child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

/// A broadcast ARP request for the host's default gateway (which passt answers), as one
/// stream frame; the relay lets the link's own ARP through under any rules.
fn arp_request() -> Vec<u8> {
    let gateway = std::fs::read_to_string("/proc/net/route")
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000"))
                .then(|| u32::from_str_radix(f[2], 16).ok())
                .flatten()
        })
        .map(|g| Ipv4Addr::from(g.swap_bytes()))
        .expect("no default route: passt needs one");
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[10, 0, 0, 99]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&gateway.octets());
    let mut framed = (f.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&f);
    framed
}

/// Sends an ARP request on the VMM's end and waits for passt's reply through the relay.
fn arp_answered(vmm: &mut UnixStream) -> bool {
    vmm.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    vmm.write_all(&arp_request()).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match vmm.read(&mut buf) {
            // An ARP reply: ethertype 0x0806, opcode 2 (after the 4-byte length).
            Ok(n) if n >= 4 + 22 && buf[16..18] == [8, 6] && buf[24..26] == [0, 2] => return true,
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    false
}

#[test]
fn passt_that_dies_is_restarted_behind_a_new_relay_on_the_same_vmm_socket() {
    if !which_passt() {
        panic!("passt is not installed (packaging/install-deps.sh installs it)");
    }
    let (link, mut vmm) = start(vec![rule(7, 443)]);
    eventually("the relay to apply the rules", || {
        matches!(link.state(), NetworkState::Nat { applied: true, .. })
    });
    assert!(
        arp_answered(&mut vmm),
        "no ARP reply through relay and passt"
    );
    let first = link.pids().unwrap();
    kill(first.passt);
    state_eventually(&link, "a new passt and relay", |s| {
        matches!(
            s,
            NetworkState::Nat {
                applied: true,
                passt_restarts: 1,
                ..
            }
        )
    });
    let second = link.pids().unwrap();
    assert_ne!(second.passt, first.passt);
    assert_ne!(second.relay, first.relay);
    assert!(!alive(first.relay), "the old relay still runs");
    assert!(arp_answered(&mut vmm), "no ARP reply after passt's restart");
    drop(link);
    assert!(
        !alive(second.passt) && !alive(second.relay),
        "helpers outlived the link"
    );
}

#[test]
fn a_relay_that_dies_takes_the_network_down_and_closes_the_vmm_socket() {
    let (link, mut vmm) = start(vec![rule(7, 443)]);
    eventually("the relay to apply the rules", || {
        matches!(link.state(), NetworkState::Nat { applied: true, .. })
    });
    let pids = link.pids().unwrap();
    kill(pids.relay);
    eventually("the network to go down", || {
        matches!(link.state(), NetworkState::Down { .. })
    });
    let NetworkState::Down { reason } = link.state() else {
        unreachable!()
    };
    assert!(reason.contains("relay killed by SIGKILL"), "{reason}");
    assert!(link.state().caption().starts_with("network down: relay"));
    // Nothing is left to carry a frame: the VMM's socket reads end-of-file.
    vmm.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(vmm.read(&mut buf).unwrap(), 0);
    eventually("passt to be gone", || !alive(pids.passt));
    assert!(link.pids().is_none());
}

#[test]
fn new_rules_reach_the_running_relay() {
    let (link, _vmm) = start(vec![rule(7, 443)]);
    eventually("the first rules", || {
        matches!(
            link.state(),
            NetworkState::Nat {
                applied: true,
                rules: 1,
                ..
            }
        )
    });
    link.set_plan(plan(vec![rule(7, 443), rule(12, 80)]))
        .unwrap();
    // Not applied until the relay says so.
    eventually("the relay to apply the new rules", || {
        matches!(
            link.state(),
            NetworkState::Nat {
                applied: true,
                rules: 2,
                ..
            }
        )
    });
}

#[test]
fn an_offline_slot_starts_nothing_and_says_offline() {
    let slot = NetSlot::new(None, Arc::new(RwLock::new(None)));
    let end = slot
        .start(
            "t",
            Path::new("/nonexistent/bulkhead-vmm"),
            None,
            Arc::new(RwLock::new(None)),
        )
        .unwrap();
    assert!(end.is_none());
    assert_eq!(slot.state(), NetworkState::Offline);
    assert_eq!(slot.state().caption(), "offline");
    assert!(
        !slot.set_plan(plan(vec![])).unwrap(),
        "an offline slot took rules"
    );
}

#[test]
fn a_missing_relay_program_is_a_visible_down_network_not_an_open_one() {
    let programs = Programs {
        passt: PathBuf::from("passt"),
        relay: PathBuf::from("/nonexistent/bulkhead-netrelay"),
        log: None,
    };
    let (link, end) = Link::start(
        "t",
        plan(vec![]),
        programs,
        Arc::new(RwLock::new(None)),
        Arc::new(RwLock::new(None)),
    )
    .unwrap();
    eventually("the network to go down", || {
        matches!(link.state(), NetworkState::Down { .. })
    });
    let mut vmm = UnixStream::from(end);
    vmm.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(vmm.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn the_exits_tell_who_failed() {
    use std::os::unix::process::ExitStatusExt;
    let code = |c: i32| Some(ExitStatus::from_raw(c << 8));
    let signal = |s: i32| Some(ExitStatus::from_raw(s));
    // passt killed or crashed: the relay followed with 0 or 3, or had to be killed.
    assert_eq!(judge(code(0), signal(libc::SIGKILL)), Exit::RestartPasst);
    assert_eq!(judge(code(3), signal(libc::SIGSEGV)), Exit::RestartPasst);
    assert_eq!(judge(None, code(1)), Exit::RestartPasst);
    // The relay killed or crashed: passt quit with 0 as its peer closed.
    assert!(
        matches!(judge(signal(libc::SIGKILL), code(0)), Exit::RelayFailed(r) if r.contains("SIGKILL"))
    );
    assert!(matches!(
        judge(signal(libc::SIGSYS), signal(libc::SIGKILL)),
        Exit::RelayFailed(_)
    ));
    assert!(matches!(judge(code(0), code(0)), Exit::RelayFailed(_)));
    assert!(matches!(judge(code(3), None), Exit::RelayFailed(_)));
    assert!(
        matches!(judge(code(101), signal(libc::SIGKILL)), Exit::RelayFailed(r) if r.contains("101"))
    );
}

#[test]
fn a_denial_is_audited_with_the_rule_that_denied_it_or_none() {
    let mut deny = rule(9, 25);
    deny.action = FirewallAction::Deny;
    let p = plan(vec![rule(7, 443), deny]);
    let facts = |reason: &'static str| DenialFacts {
        protocol: "tcp",
        destination: "192.0.2.1".parse().unwrap(),
        port: Some(25),
        host: None,
        reason,
        unreported: 0,
    };
    let r = denial_record(
        "mail",
        &p,
        facts("rule 2 (/policy/partitions.toml:9) denies"),
        SystemTime::now(),
    );
    assert_eq!(r.decision, "deny");
    assert_eq!(r.request.source(), "mail");
    let rule = r.rule.unwrap();
    assert_eq!((rule.line, rule.file.clone()), (9, p.file.clone()));
    let r = denial_record("mail", &p, facts("no rule allows"), SystemTime::now());
    assert!(r.rule.is_none());
    assert_eq!(r.explanation, "no rule allows");
    let mut f = facts("no rule allows");
    f.unreported = 12;
    let r = denial_record("mail", &p, f, SystemTime::now());
    assert!(
        r.explanation.contains("12 similar denials"),
        "{}",
        r.explanation
    );
}

#[test]
fn audit_records_are_rate_limited_and_the_rest_counted() {
    let mut limit = AuditLimit::new();
    let now = Instant::now();
    let written = (0..100).filter(|_| limit.allow(now).is_some()).count();
    assert_eq!(written, AUDIT_BURST as usize);
    // A second later a few more go through, the first reporting what was skipped.
    assert_eq!(
        limit.allow(now + Duration::from_secs(1)),
        Some(100 - AUDIT_BURST as u64)
    );
}

#[test]
fn nameservers_come_from_resolv_conf_and_passt_is_told_to_forward_nothing() {
    let ns = nameservers("# x\nnameserver 192.0.2.53\nnameserver ::1\nsearch lan\n");
    assert_eq!(ns.len(), 2);
    let a = passt_args();
    assert!(a.windows(2).any(|w| w == ["-t", "none"]));
    assert!(a.windows(2).any(|w| w == ["-u", "none"]));
    assert!(!a.iter().any(|x| x.contains("pcap")));
    let r = relay_args(&ns);
    assert!(r.windows(2).any(|w| w == ["--control-fd", "5"]));
    assert!(!r.iter().any(|x| x.starts_with("--allow") || x == "--dns"));
}
