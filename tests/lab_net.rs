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
fn the_relay_lets_an_allowed_port_through_and_refuses_others_at_once() {
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
    assert_eq!(out.exit_code, 0, "guest did not power off cleanly");
}
