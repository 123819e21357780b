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
if wget -q -T 20 -O /tmp/page {url}; then echo "FETCHED $(cat /tmp/page)"; else echo FETCH-FAILED; fi
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
