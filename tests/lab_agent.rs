//! The guest agent in the real Debian guest, under the real supervisor (`lab-supervise`):
//! it comes up from the default initramfs on its own virtio-console (`/dev/hvc1`) and
//! answers; in the `debian-12` template it reads and owns the X CLIPBOARD, so text the
//! host sets is what another X client in the guest reads, and text another client owns
//! is what the host gets. Runs directly on /dev/kvm with VT-x/AMD-V, otherwise in the lab.
//! The guest image must carry the agent: build it with `BULKHEAD_AGENT` pointing at the
//! static `bulkhead-agent` (as tests/run-all.sh does).

use std::path::Path;

use bulkhead_tests::lab::{
    run_guest, run_supervised, template_image, DiskSource, GuestRun, LabDisk,
};

#[test]
fn the_agent_comes_up_in_the_default_initramfs_and_answers_on_its_own_console() {
    let run = GuestRun {
        // hvc0 stays the plain console: the guest waits there for the host's go.
        // devtmpfs shows hvc0..hvc7 whatever exists; the driver's bound devices count.
        test_script:
            "echo \"CONSOLES[$(ls -d /sys/bus/virtio/drivers/virtio_console/virtio* | wc -l)]\"\n\
                      read -r line < /dev/hvc0\n\
                      echo \"GUEST-DONE[$line]\"\n\
                      poweroff -f\n"
                .into(),
        supervise: Some(
            [
                "wait-serial:CONSOLES[",
                "wait-agent",
                "agent-ping",
                "agent-ping",
                "console:done\\n",
                "wait-serial:GUEST-DONE[done]",
                "wait-exit",
            ]
            .map(String::from)
            .to_vec(),
        ),
        timeout_s: 240,
        ..GuestRun::default()
    };
    let (out, events) = run_supervised(&run, "agent-initramfs");
    assert!(
        out.serial.contains("CONSOLES[2]"),
        "the guest does not see two consoles\n{}",
        out.diagnostics()
    );
    assert!(
        events.contains("agent: agent connected"),
        "no agent Hello reached the supervisor\n{events}\n{}",
        out.diagnostics()
    );
    assert_eq!(
        events.matches("agent pong after").count(),
        2,
        "the agent did not answer both pings\n{events}"
    );
    assert_eq!(out.exit_code, 0, "a step failed\n{events}");
    // The agent spoke only on its own console: hvc0 carries at most the tty's echo of
    // the host's "done" (ASCII), never a frame (its kind bytes are >= 0x80).
    let hvc0 = out.files.get("console.bin").cloned().unwrap_or_default();
    assert!(hvc0.is_ascii(), "agent bytes on hvc0: {hvc0:?}");
}

fn disks(private: &Path) -> Vec<LabDisk> {
    vec![
        LabDisk {
            name: "root".into(),
            source: DiskSource::HostFile(template_image()),
            read_only: true,
            id: Some("root".into()),
        },
        LabDisk {
            name: "private".into(),
            source: DiskSource::HostFile(private.to_path_buf()),
            read_only: false,
            id: Some("private".into()),
        },
    ]
}

const FROM_HOST: &str = "from the host: 42 é ✓";
const FROM_GUEST: &str = "from the guest: 7";

#[test]
fn text_crosses_the_x_clipboard_between_the_host_and_the_guest_through_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.img");
    bulkhead_supervisor::private_disk::open_or_create(&private, 512).unwrap();
    // Another X client in the guest: the agent binary's own clip-get / clip-set, run as
    // root in the test script (a separate X connection from the serving agent's).
    let script = format!(
        "a=/usr/local/lib/bulkhead/bulkhead-agent\n\
         until [ -e /run/bulkhead/app-ready ]; do sleep 1; done\n\
         echo GUEST-WAITING\n\
         i=0\n\
         until got=$($a clip-get 2>&1) && [ \"$got\" = '{FROM_HOST}' ]; do\n\
             i=$((i + 1)); [ $i -gt 120 ] && break; sleep 1\n\
         done\n\
         echo \"GUEST-READ[$got]\"\n\
         $a clip-set '{FROM_GUEST}' --seconds 200 &\n\
         sleep 3\n\
         echo GUEST-OWNS\n"
    );
    let run = GuestRun {
        mem_mib: 1536,
        vcpus: 1,
        display: Some((1024, 768)),
        disks: disks(&private),
        app: Some("xterm".into()),
        timeout_s: 420,
        test_script: script,
        supervise: Some(vec![
            "wait-serial:BULKHEAD-APP-READY".into(),
            "wait-agent".into(),
            format!("clipboard-set:{FROM_HOST}"),
            "wait-serial:GUEST-READ[".into(),
            "wait-serial:GUEST-OWNS".into(),
            format!("wait-clipboard:{FROM_GUEST}"),
            "stop".into(),
        ]),
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    let events = out.file_text("events.log");
    eprintln!("--- supervisor events ---\n{events}");
    out.save_artifacts("agent-template-clipboard");
    assert!(
        out.serial.contains(&format!("GUEST-READ[{FROM_HOST}]")),
        "the guest's X client did not read what the host set\n{events}\n{}",
        out.diagnostics()
    );
    assert!(
        events.contains(&format!("Text(\"{FROM_GUEST}\")")),
        "the host did not get what the guest's X client owns\n{events}\n{}",
        out.diagnostics()
    );
}
