//! Export of a running partition with its state, and import continuing from it, with real
//! partition processes (the test card on this host's KVM; a software KVM runs it): the
//! shipped offline `work` partition runs under a supervisor, is exported through the same
//! code as the app's Export… (pause, snapshot, resume: it runs on), imported as
//! `work-2`, and `work-2`'s first start continues the saved guest instead of booting;
//! its second start boots.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use age::secrecy::SecretString;
use bulkhead::bundle::{import, ExportPlan, ExportRequest, ImportRequest, StateSaver};
use bulkhead_supervisor::launch::{launch_spec, Engine};
use bulkhead_supervisor::saved_state::resume_dir;
use bulkhead_supervisor::testing::{wait_more_damage, wait_running};
use bulkhead_supervisor::{ProcessState, Supervisor};
use isolation_policy::PolicyDocument;
use vmm_core::microguest::TEST_CARD_COLOURS;

// Shared with the bundle tests; this one needs only the home it makes.
#[allow(dead_code)]
#[path = "support/bundle_home.rs"]
mod bundle_home;

const WAIT: Duration = Duration::from_secs(60);

fn wait_painting(sup: &Supervisor, name: &str) {
    wait_running(sup, name);
    wait_more_damage(sup, name, 3);
}

fn log_of(sup: &Supervisor, name: &str) -> String {
    let path = sup.status(name).unwrap().log_file.expect("a log");
    fs::read_to_string(path).unwrap_or_default()
}

fn launch(policy: &Path, name: &str) -> bulkhead_supervisor::LaunchSpec {
    let doc = PolicyDocument::load(policy).unwrap();
    let spec = doc.policy().expect("a valid policy").spec(name).unwrap();
    launch_spec(&spec, Engine::TestCard)
}

#[test]
fn a_running_partition_exported_with_its_state_runs_on_and_its_import_continues_from_it_once() {
    let binary = bulkhead_supervisor::launch::vmm_binary();
    assert!(
        binary.is_file(),
        "{} missing: build bulkhead-vmm first",
        binary.display()
    );
    let root = bundle_home::fresh("export_running");
    let policy = bundle_home::policy(&root);

    let work = launch(&policy, "work");
    assert!(
        work.launch.snapshot_on_request,
        "an offline partition can be saved"
    );
    // Every configured partition on the list, as the app has them; only `work` runs.
    let doc = PolicyDocument::load(&policy).unwrap();
    let all = doc.policy().unwrap().specs();
    let mut launches: Vec<_> = all
        .iter()
        .filter(|s| s.name != "work")
        .map(|s| launch_spec(s, Engine::TestCard))
        .collect();
    launches.push(work);
    let sup = Arc::new(Supervisor::new(launches).unwrap());
    sup.set_log_dir(Some(root.join("logs")));
    sup.start("work").unwrap();
    wait_painting(&sup, "work");
    // Every band painted (a software KVM takes a while over 1280x800) before the save.
    let mut serial = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&serial).contains("TEST-CARD-READY") {
        assert!(
            std::time::Instant::now() < deadline,
            "the card never finished painting"
        );
        serial.extend(sup.take_serial("work").unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }

    let file = root.join("work.bundle");
    let saver = {
        let sup = Arc::clone(&sup);
        StateSaver(Arc::new(move |dir: &Path| {
            sup.save_running("work", dir, Duration::from_secs(60))
                .map_err(|e| e.to_string())
        }))
    };
    let pass = || SecretString::from("correct horse".to_string());
    let summary = ExportPlan::new(&ExportRequest {
        name: "work".into(),
        file: file.clone(),
        with_template: false,
        policy_dir: Some(policy.clone()),
        save_running: Some(saver),
    })
    .unwrap()
    .write(pass(), &mut |_| {})
    .unwrap();
    assert!(summary.contains("with its running state"), "{summary}");
    // Paused only for the snapshot: it runs on, and nothing of the save is left.
    wait_painting(&sup, "work");
    assert!(log_of(&sup, "work").contains("snapshot written"));
    let leftovers: Vec<_> = fs::read_dir(root.join("data/bulkhead/partitions"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".export")),
        "{leftovers:?}"
    );

    let summary = import(
        &ImportRequest {
            file,
            name: Some("work-2".into()),
            policy_dir: Some(policy.clone()),
        },
        pass(),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        summary.contains("continues where it was exported"),
        "{summary}"
    );
    let resume = resume_dir("work-2");
    assert!(resume.join("state").is_file() && resume.join("memory").is_file());

    // As the app adds it after the import: one new backend, stopped, on the supervisor.
    let mut added = bulkhead::supervised::partitions_added(&policy, Engine::TestCard, &sup);
    assert_eq!(added.len(), 1, "only work-2 is new");
    let mut work2 = added.pop().unwrap().unwrap();
    assert_eq!(work2.info().name, "work-2");
    assert_eq!(sup.status("work-2").unwrap().state, ProcessState::Stopped);
    work2.start().unwrap();
    wait_painting(&sup, "work-2");
    let log = log_of(&sup, "work-2");
    assert!(log.contains("restored from a snapshot"), "{log}");
    assert!(!resume.exists(), "the saved state is used once");
    // The bands the card painted before the export, shown without running that code.
    let fb = sup.framebuffer("work-2").unwrap().expect("a framebuffer");
    let half = fb.layout().height / 2;
    assert_eq!(
        fb.pixel(0, half).unwrap() & 0x00ff_ffff,
        TEST_CARD_COLOURS[4]
    );

    sup.stop("work-2", Duration::from_secs(5)).unwrap();
    sup.start("work-2").unwrap();
    wait_painting(&sup, "work-2");
    let log = log_of(&sup, "work-2");
    let last = log.rsplit("=== partition").next().unwrap_or_default();
    assert!(
        !last.contains("restored from a snapshot"),
        "the second start boots: {log}"
    );
    sup.stop_all(Duration::from_secs(5));
}
