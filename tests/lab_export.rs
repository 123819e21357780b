//! A running Linux partition with a network carried elsewhere with its state, under the
//! real supervisor (`lab-supervise`, passt and the relay started by it): the guest
//! fetches a page through its NAT, writes a random token to its private disk and counts;
//! the partition is saved while it runs (pause, snapshot, disk copy, resume), the saved
//! state goes through an encrypted bundle and back (every file byte-identical, as export
//! and import carry it), and a second partition continues from it: the same token, the
//! next count, no second boot, and the token read back from its own disk copy with the
//! page cache dropped, and a page fetched again through its own new passt and relay.
//! Runs in the lab (a network always does).

use bulkhead_tests::lab::{
    run_supervised, DiskSource, GuestRun, LabDisk, LabNetwork, LAB_GATEWAY, READY_MARKER,
};

const PAGE: &str = "BULKHEAD-EXPORT-PAGE";

const SCRIPT: &str = r#"
fetch() { if timeout 20 wget -q -O /tmp/page http://192.0.2.1:8080/; then echo "$1 $(cat /tmp/page)"; else echo "$1 FAILED"; fi; }
fetch NET-BEFORE
T=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf 'DISK-%s\n' "$T" | dd of=/dev/vda bs=512 conv=sync,notrunc 2>/dev/null
sync
n=0
while [ $n -lt 3 ]; do n=$((n+1)); echo "COUNT $n $T"; done
echo SAVE-READY
read -r line < /dev/hvc0
n=$((n+1))
echo "COUNT $n $T"
echo 3 > /proc/sys/vm/drop_caches
fetch NET-AFTER
echo "AFTER[$line] $T $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1) AFTER-END"
poweroff -f
"#;

/// The token of the `COUNT n TOKEN` line for `n`.
fn token_at(serial: &str, n: u32) -> Option<String> {
    serial.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(&format!("COUNT {n} "))?;
        Some(rest.trim().to_string())
    })
}

#[test]
fn a_running_partition_saved_and_carried_through_a_bundle_continues_with_its_token_and_disk() {
    let run = GuestRun {
        display: None,
        test_script: SCRIPT.into(),
        disks: vec![LabDisk {
            name: "private.img".into(),
            source: DiskSource::Bytes(vec![0; 4 << 20]),
            read_only: false,
            id: Some("private".into()),
        }],
        supervise: Some(
            [
                "wait-serial:SAVE-READY",
                "save:/tmp/saved",
                "carry:/tmp/saved",
                "continue:lab2:/tmp/saved.carried",
                "wait-agent",
                "console:go\\n",
                "wait-serial:AFTER-END",
                "wait-exit",
            ]
            .map(String::from)
            .to_vec(),
        ),
        network: Some(LabNetwork {
            allow: vec![format!("tcp:{LAB_GATEWAY}:8080")],
            http: vec![(8080, PAGE.into())],
        }),
        timeout_s: 400,
        ..GuestRun::default()
    };
    let (out, events) = run_supervised(&run, "export-running");
    assert_eq!(
        out.exit_code,
        0,
        "a step failed\n{events}\n{}",
        out.diagnostics()
    );
    assert!(events.contains("saved lab: state "), "{events}");
    assert!(events.contains("byte-identical"), "{events}");
    assert!(
        events.contains("lab2 started from /tmp/saved.carried"),
        "{events}"
    );

    let first = out.file_text("serial-lab.log");
    let token = token_at(&first, 3).unwrap_or_else(|| panic!("no COUNT 3 in\n{first}"));
    assert_eq!(token.len(), 16, "{first}");
    assert!(
        !first.contains("AFTER["),
        "the saved partition ran on, waiting: {first}"
    );
    // The continued guest: the next count with the same token, its disk copy holding the
    // token, and no second boot.
    let serial = &out.serial;
    assert_eq!(
        token_at(serial, 4).as_deref(),
        Some(token.as_str()),
        "{serial}"
    );
    assert!(
        serial.contains(&format!("AFTER[go] {token} DISK-{token} AFTER-END")),
        "{serial}"
    );
    assert_eq!(serial.matches(READY_MARKER).count(), 1, "{serial}");
    // The network before the save, and after it in the continued guest: its own passt
    // and relay (the old ones serve the saved partition), the same address from its lease.
    assert!(first.contains(&format!("NET-BEFORE {PAGE}")), "{first}");
    assert!(serial.contains(&format!("NET-AFTER {PAGE}")), "{serial}");
    // Not its snapshot's network identity: its agent gave eth0 a fresh MAC address.
    assert!(
        serial.contains("bulkhead-agent: eth0 has a fresh address "),
        "{serial}"
    );
}
