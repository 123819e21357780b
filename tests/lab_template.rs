//! Template partitions: the `debian-12` template read-only under a tmpfs overlay, a
//! private ext4 disk as home, X on the framebuffer and the partition's app.
//! Runs directly on /dev/kvm with VT-x/AMD-V, otherwise in the lab (the output says which).

use std::path::PathBuf;

use bulkhead_tests::lab::{run_guest, DiskSource, GuestRun, LabDisk};

fn template_image() -> PathBuf {
    if let Some(p) = std::env::var_os("BULKHEAD_TEMPLATE_IMAGE") {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".local/share/bulkhead/templates/debian-12/root.sqfs")
}

#[test]
fn a_template_partition_boots_into_its_app_and_says_ready() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.img");
    let f = std::fs::File::create(&private).unwrap();
    f.set_len(2 << 30).unwrap();
    drop(f);
    let ok = std::process::Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-F", "-E", "root_owner=1000:1000"])
        .arg(&private)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let run = GuestRun {
        mem_mib: 1024,
        display: Some((1024, 768)),
        app: Some("xterm -e tmux".into()),
        test_script:
            "while [ ! -e /run/bulkhead/app-ready ]; do sleep 1; done; sleep 3; echo BULKHEAD-SHOT"
                .into(),
        screenshot_on: Some("BULKHEAD-SHOT".into()),
        disks: vec![
            LabDisk {
                name: "root".into(),
                source: DiskSource::HostFile(template_image()),
                read_only: true,
                id: Some("root".into()),
            },
            LabDisk {
                name: "private".into(),
                source: DiskSource::HostFile(private.clone()),
                read_only: false,
                id: Some("private".into()),
            },
        ],
        timeout_s: 240,
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    out.save_artifacts("template-work");
    assert!(
        out.serial.contains("BULKHEAD-APP-READY"),
        "{}",
        out.diagnostics()
    );
}
