//! virtio-net with the stock Debian driver, through a real passt inside the lab machine:
//! the guest's init brings eth0 up by DHCP, and the guest fetches a page from busybox
//! httpd on the lab machine's loopback at the gateway address (passt maps the gateway to
//! the host's loopback). An offline partition has no network device at all. Always runs
//! in the lab: its only interface is a dummy one, so nothing leaves it.

use std::time::Instant;

use bulkhead_tests::lab::{run_guest, GuestRun, LabNetwork, LAB_GATEWAY, READY_MARKER};
use vmm_core::launch::partition_mac;

const PAGE: &str = "BULKHEAD-NET-PAGE-8080";

fn online_script(url: &str) -> String {
    format!(
        r#"
echo "MAC $(cat /sys/class/net/eth0/address)"
echo "ADDR $(ip -4 -o addr show dev eth0)"
echo "ROUTE $(ip route show default)"
echo "RESOLV $(cat /etc/resolv.conf)"
if timeout 20 wget -q -O /tmp/page {url}; then echo "FETCHED $(cat /tmp/page)"; else echo FETCH-FAILED; fi
poweroff -f
"#
    )
}

#[test]
fn the_guest_gets_dhcp_through_passt_and_fetches_a_page_from_the_lab_loopback() {
    let run = GuestRun {
        display: None,
        test_script: online_script(&format!("http://{LAB_GATEWAY}:8080/")),
        network: Some(LabNetwork {
            allow: Vec::new(),
            http: vec![(8080, PAGE.into())],
        }),
        ..GuestRun::default()
    };
    let started = Instant::now();
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    eprintln!("wall time {:.1} s", started.elapsed().as_secs_f64());
    out.save_artifacts("net-online");
    assert!(
        out.serial.contains(READY_MARKER),
        "guest never reached init\n{}",
        out.diagnostics()
    );
    let mac = partition_mac("partition")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        out.serial.contains(&format!("MAC {mac}")),
        "eth0 has not the partition's MAC {mac}\n{}",
        out.diagnostics()
    );
    assert!(
        out.serial
            .contains("bulkhead-net: eth0 192.0.2.2/24 via 192.0.2.1"),
        "no DHCP lease from passt\n{}",
        out.diagnostics()
    );
    assert!(
        out.serial.contains(&format!("FETCHED {PAGE}")),
        "the page did not come through\n{}",
        out.diagnostics()
    );
    assert_eq!(out.exit_code, 0, "guest did not power off cleanly");
}

#[test]
fn an_offline_partition_has_no_network_device() {
    let run = GuestRun {
        display: None,
        test_script: r#"
if [ -e /sys/class/net/eth0 ]; then echo HAS-ETH0; else echo NO-ETH0; fi
echo "VIRTIO-IDS $(cat /sys/bus/virtio/devices/*/device | tr '\n' ' ')"
poweroff -f
"#
        .into(),
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts("net-offline");
    assert!(
        out.serial.contains(READY_MARKER),
        "guest never reached init\n{}",
        out.diagnostics()
    );
    assert!(out.serial.contains("NO-ETH0"), "{}", out.diagnostics());
    let ids = out
        .serial
        .lines()
        .find_map(|l| l.strip_prefix("VIRTIO-IDS "))
        .unwrap_or_else(|| panic!("no virtio ids\n{}", out.diagnostics()));
    assert!(!ids.is_empty(), "no virtio devices at all: {ids:?}");
    assert!(
        !ids.split_whitespace().any(|id| id == "0x0001"),
        "a virtio-net device exists: {ids}"
    );
    assert_eq!(out.exit_code, 0);
}

/// Guest seconds (from /proc/uptime) before and after one fetch, with its exit code and
/// error text, as `TAG rc=N start=S end=E err=…`.
fn timed_fetch(tag: &str, url: &str) -> String {
    format!(
        r#"read s _ < /proc/uptime; timeout 20 wget -q -O /tmp/{tag} {url} 2>/tmp/{tag}.err; rc=$?; read e _ < /proc/uptime
echo "{tag} rc=$rc start=$s end=$e body=$(cat /tmp/{tag} 2>/dev/null) err=$(cat /tmp/{tag}.err)"
"#
    )
}

/// (exit code, guest seconds taken, the whole line) of a [`timed_fetch`] line.
fn fetch_result(serial: &str, tag: &str) -> Option<(i32, f64, String)> {
    let line = serial
        .lines()
        .find(|l| l.starts_with(&format!("{tag} rc=")))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let rc = field("rc")?.parse().ok()?;
    let start: f64 = field("start")?.parse().ok()?;
    let end: f64 = field("end")?.parse().ok()?;
    Some((rc, end - start, line.to_string()))
}

#[test]
fn the_relay_lets_an_allowed_port_through_and_refuses_other_ports_addresses_and_dns_at_once() {
    let mut script = String::new();
    script.push_str(&timed_fetch(
        "ALLOWED",
        &format!("http://{LAB_GATEWAY}:8080/"),
    ));
    // A server listens on 8081 too: only the relay stands in the way.
    script.push_str(&timed_fetch(
        "DENIED-PORT",
        &format!("http://{LAB_GATEWAY}:8081/"),
    ));
    // Nothing answers at .77: without the relay this would time out, not be refused.
    script.push_str(&timed_fetch("DENIED-ADDR", "http://192.0.2.77:8080/"));
    // No `--dns`: a query to passt's resolver (the gateway) must stop at the relay.
    script.push_str(&format!(
        "timeout 5 nslookup bulkhead.test {LAB_GATEWAY} >/dev/null 2>&1; echo DNS-TRIED\n"
    ));
    script.push_str("poweroff -f\n");
    let run = GuestRun {
        display: None,
        test_script: script,
        network: Some(LabNetwork {
            allow: vec![format!("tcp:{LAB_GATEWAY}:8080")],
            http: vec![(8080, PAGE.into()), (8081, "NOT-ALLOWED".into())],
        }),
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts("net-relay");
    assert!(
        out.serial.contains(READY_MARKER),
        "guest never reached init\n{}",
        out.diagnostics()
    );
    let get = |tag| {
        fetch_result(&out.serial, tag)
            .unwrap_or_else(|| panic!("no {tag} line\n{}", out.diagnostics()))
    };
    let (rc, took, line) = get("ALLOWED");
    eprintln!("allowed fetch: {took:.2} s guest time");
    assert_eq!(rc, 0, "{line}\n{}", out.diagnostics());
    assert!(line.contains(PAGE), "{line}");
    for tag in ["DENIED-PORT", "DENIED-ADDR"] {
        let (rc, took, line) = get(tag);
        eprintln!("{tag}: refused after {took:.2} s guest time: {line}");
        assert_ne!(rc, 0, "{line}");
        assert!(!line.contains("NOT-ALLOWED"), "{line}");
        assert!(
            took < 3.0,
            "{tag} took {took:.2} s: not refused at once ({line})"
        );
    }
    assert!(
        out.vmm_stderr
            .contains(&format!("refused tcp to {LAB_GATEWAY} port 8081")),
        "the relay did not report the refusal\n{}",
        out.vmm_stderr
    );
    assert!(out.serial.contains("DNS-TRIED"), "{}", out.diagnostics());
    assert!(
        out.vmm_stderr
            .contains(&format!("refused udp to {LAB_GATEWAY} port 53")),
        "with dns off, the guest's DNS query was not stopped at the relay\n{}",
        out.vmm_stderr
    );
    assert_eq!(out.exit_code, 0, "guest did not power off cleanly");
}

/// A [`timed_fetch`] with its own time limit (a fetch into a dead network waits it out).
fn timed_fetch_within(tag: &str, url: &str, limit_s: u32) -> String {
    timed_fetch(tag, url).replacen("timeout 20", &format!("timeout {limit_s}"), 1)
}

/// The guest side of the supervised run: fetches, then waits on /dev/hvc0 for the host
/// to act (kill passt, change the rules, kill the relay) before the next fetches.
fn supervised_script() -> String {
    let url = |port: u16| format!("http://{LAB_GATEWAY}:{port}/");
    let wait = |phase: &str| format!("echo {phase}\nread -r go <&3\necho \"GO[$go]\"\n");
    let mut s = String::from("exec 3<>/dev/hvc0\nstty raw -echo <&3\n");
    s += &timed_fetch("ALLOWED", &url(8080));
    s += &timed_fetch("DENIED", &url(8081));
    s += &wait("PHASE-KILL-PASST");
    // The first try may meet the restart's last moments; the second must work.
    s += &timed_fetch_within("AFTER-PASST-1", &url(8080), 10);
    s += &timed_fetch("AFTER-PASST", &url(8080));
    s += &wait("PHASE-RULES");
    s += &timed_fetch("NEWLY-ALLOWED", &url(8081));
    s += &timed_fetch("NEWLY-DENIED", &url(8080));
    s += &wait("PHASE-KILL-RELAY");
    s += &timed_fetch_within("AFTER-RELAY", &url(8081), 8);
    s += "echo SCRIPT-DONE\npoweroff -f\n";
    s
}

/// The host side: the same supervisor as the app's, through `lab-supervise`.
fn supervised_steps() -> Vec<String> {
    [
        "wait-net:NAT · 1 rule",
        "wait-serial:PHASE-KILL-PASST",
        "kill-passt",
        "wait-net-restarts:1",
        "console:go\\n",
        "wait-serial:PHASE-RULES",
        "rules:tcp:192.0.2.1:8081",
        "wait-net:NAT · 1 rule",
        "console:go\\n",
        "wait-serial:PHASE-KILL-RELAY",
        "kill-relay",
        "wait-net:network down: relay killed by SIGKILL",
        "console:go\\n",
        "wait-serial:SCRIPT-DONE",
        "wait-exit",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_supervised_nat_partition_survives_passt_dying_takes_live_rules_and_goes_down_with_its_relay() {
    let run = GuestRun {
        display: None,
        test_script: supervised_script(),
        supervise: Some(supervised_steps()),
        network: Some(LabNetwork {
            allow: vec![format!("tcp:{LAB_GATEWAY}:8080")],
            http: vec![(8080, PAGE.into()), (8081, "PAGE-8081".into())],
        }),
        timeout_s: 400,
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts("net-supervised");
    let events = String::from_utf8_lossy(out.files.get("events.log").map_or(&[][..], |v| v));
    eprintln!("events.log:\n{events}");
    assert!(
        out.serial.contains(READY_MARKER),
        "guest never reached init\n{}",
        out.diagnostics()
    );
    let get = |tag| {
        fetch_result(&out.serial, tag)
            .unwrap_or_else(|| panic!("no {tag} line\n{events}\n{}", out.diagnostics()))
    };
    let ok = |tag, body: &str| {
        let (rc, took, line) = get(tag);
        eprintln!("{tag}: {took:.2} s: {line}");
        assert_eq!(rc, 0, "{line}\n{events}");
        assert!(line.contains(body), "{line}");
    };
    let refused = |tag, body: &str| {
        let (rc, took, line) = get(tag);
        eprintln!("{tag}: refused after {took:.2} s: {line}");
        assert_ne!(rc, 0, "{line}\n{events}");
        assert!(!line.contains(body), "{line}");
        assert!(
            took < 3.0,
            "{tag}: not refused at once: {took:.2} s ({line})"
        );
    };
    ok("ALLOWED", PAGE);
    refused("DENIED", "PAGE-8081");
    ok("AFTER-PASST", PAGE);
    ok("NEWLY-ALLOWED", "PAGE-8081");
    refused("NEWLY-DENIED", PAGE);
    // With the relay gone nothing passes (the fetch waits out its limit or fails).
    let (rc, _, line) = get("AFTER-RELAY");
    assert_ne!(rc, 0, "a fetch passed without the relay: {line}");
    assert!(!line.contains("PAGE-8081"), "{line}");
    assert!(
        events.contains("network down: relay killed by SIGKILL"),
        "no visible network-down state\n{events}"
    );
    assert!(events.contains("killed passt") && events.contains("passt_restarts: 1"));
    // Both refusals are in the audit log, the partition's and the port's, no rule matching.
    let audit = String::from_utf8_lossy(out.files.get("audit.log").map_or(&[][..], |v| v));
    for port in [8081, 8080] {
        assert!(
            audit.lines().any(|l| l.contains("\"kind\":\"network\"")
                && l.contains(&format!("\"port\":{port}"))
                && l.contains("no rule allows")
                && l.contains("\"decision\":\"deny\"")),
            "no audit record of the refused port {port}:\n{audit}"
        );
    }
}
