//! `bulkhead-move` in one partition, through the app: real partition processes (the
//! supervisor's fake partition, whose fake agent offers two files and receives files in
//! memory, printing each one's sha256 on its serial console) under the real supervisor
//! and service broker. The host's ask dialog offers only the targets the policy allows,
//! names the rule; the person's Allow moves the files byte-exact with progress in the
//! launcher; a policy that allows no target refuses at once, visibly and audited.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead::app::panels::ask_dialog;
use bulkhead::app::{BulkheadApp, Label, PartitionInfo, SourceKind};
use bulkhead::supervised::{SupervisedPartition, SupervisorSource};
use bulkhead_supervisor::launch::Engine;
use bulkhead_supervisor::testing::{
    fake_file_bytes, fake_files, fake_received_line, fake_spec, FAKE_OFFER,
};
use bulkhead_supervisor::{AutoRestart, Supervisor};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use isolation_policy::{AuditFilter, AuditLog, Request};

const WAIT: Duration = Duration::from_secs(30);

fn fake(name: &str, mode: &str) -> bulkhead_supervisor::LaunchSpec {
    fake_spec(
        std::env::current_exe().unwrap(),
        "fake_partition_process",
        name,
        mode,
        AutoRestart::Never,
    )
}

fn policy_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[partition.work]\nlabel = \"green\"\n\n[partition.browser]\nlabel = \"red\"\n\n\
                [partition.vault]\nlabel = \"black\"\n";
    std::fs::write(dir.path().join("partitions.toml"), toml).unwrap();
    std::fs::create_dir_all(dir.path().join("policy.d")).unwrap();
    std::fs::write(dir.path().join("policy.d/50-test.policy"), rules).unwrap();
    dir
}

fn info(name: &str, label: Label) -> PartitionInfo {
    PartitionInfo {
        name: name.into(),
        label,
        kind: "app".into(),
        memory_mib: 16,
        vcpus: 1,
        display: (64, 64),
        source: SourceKind::Partition,
    }
}

/// `browser` offers its files (`bulkhead-move`); `work` and `vault` run agents.
fn app(policy: &Path, audit: &Path) -> (BulkheadApp, Arc<Supervisor>) {
    let sup = Arc::new(
        Supervisor::new(vec![
            fake("browser", "agent_files"),
            fake("work", "agent"),
            fake("vault", "agent"),
        ])
        .unwrap(),
    );
    assert!(sup.start_all().is_empty());
    let backends: Vec<Box<dyn bulkhead::app::PartitionBackend>> = [
        ("browser", Label::Red),
        ("work", Label::Green),
        ("vault", Label::Black),
    ]
    .into_iter()
    .map(|(n, l)| {
        Box::new(SupervisedPartition::new(info(n, l), sup.clone()).unwrap())
            as Box<dyn bulkhead::app::PartitionBackend>
    })
    .collect();
    let mut app = BulkheadApp::new(backends);
    app.source = Some(Box::new(SupervisorSource::new(
        sup.clone(),
        Engine::TestCard,
        Some(policy.to_path_buf()),
        Some(audit),
    )));
    (app, sup)
}

fn harness(app: BulkheadApp) -> Harness<'static, BulkheadApp> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 720.0))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app)
}

fn until(h: &mut Harness<'_, BulkheadApp>, what: &str, done: impl Fn(&BulkheadApp) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(h.state()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {:?}",
            h.state().clipboard.status
        );
        h.run_steps(1);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serial(app: &BulkheadApp, name: &str) -> String {
    app.slots
        .iter()
        .find(|s| s.backend.info().name == name)
        .map(|s| s.serial.text().to_string())
        .unwrap_or_default()
}

fn records(audit: &Path) -> Vec<isolation_policy::AuditRecord> {
    AuditLog::open(audit, 1 << 20, 2)
        .unwrap()
        .read(&AuditFilter::default())
        .unwrap()
        .records
}

#[test]
fn a_move_goes_where_the_person_chooses_among_allowed_targets_and_arrives_whole() {
    let policy = policy_dir(
        "bulkhead.FileCopy * browser work ask\nbulkhead.FileCopy * browser vault deny\n",
    );
    let audit = tempfile::tempdir().unwrap();
    let (app, _sup) = app(policy.path(), audit.path());
    let mut h = harness(app);
    until(&mut h, "the question", |a| a.asks.is_open());
    h.run_steps(1);
    // What the dialog says: service, source, what, the one allowed target, the rule.
    for text in ["bulkhead.FileCopy", "[browser]", "move 2 files (293.0 KiB)"] {
        assert!(
            h.query_all_by_label_contains(text).next().is_some(),
            "the dialog does not say {text:?}"
        );
    }
    assert!(h
        .query_all_by_label_contains("50-test.policy:1")
        .next()
        .is_some());
    let steps = (ask_dialog::ANSWER_DELAY / 0.25).ceil() as usize + 1;
    h.run_steps(steps);
    h.get_by_label("Allow").click();
    let expected: Vec<String> = fake_files()
        .iter()
        .enumerate()
        .map(|(i, f)| fake_received_line(&f.name, &fake_file_bytes(i)))
        .collect();
    until(&mut h, "the files in work", |a| {
        let s = serial(a, "work");
        expected.iter().all(|l| s.contains(l.as_str()))
    });
    until(&mut h, "the outcome in browser", |a| {
        serial(a, "browser").contains(&format!("outcome {FAKE_OFFER} ok"))
    });
    until(&mut h, "the status line", |a| {
        a.clipboard
            .status
            .as_ref()
            .is_some_and(|s| s.topic == "files" && s.text.contains("moved 2 files"))
    });
    assert!(!serial(h.state(), "vault").contains("received"));
    let last = records(audit.path()).pop().expect("the choice was audited");
    assert!(
        last.explanation.starts_with("asked → allowed by the user"),
        "{}",
        last.explanation
    );
}

#[test]
fn files_no_target_may_receive_are_refused_visibly_and_audited() {
    let policy = policy_dir("bulkhead.FileCopy * browser @anyvm deny\n");
    let audit = tempfile::tempdir().unwrap();
    let (app, _sup) = app(policy.path(), audit.path());
    let mut h = harness(app);
    until(&mut h, "the refusal", |a| {
        a.clipboard.status.as_ref().is_some_and(|s| {
            s.kind == bulkhead::app::clipboard::StatusKind::Refused && s.topic == "files"
        })
    });
    h.run_steps(1);
    assert!(!h.state().asks.is_open(), "nothing to ask");
    assert!(h
        .query_all_by_label_contains("no running partition may receive files from [browser]")
        .next()
        .is_some());
    until(&mut h, "the outcome in browser", |a| {
        serial(a, "browser").contains("outcome 1 no running partition")
    });
    let rec = records(audit.path());
    assert!(
        rec.iter().any(|r| r.decision == "deny"
            && matches!(&r.request, Request::Service { service, .. } if service == "bulkhead.FileCopy")),
        "{rec:?}"
    );
}

/// The question and the status lines as the broker hands them over, on software sources
/// (deterministic pixels; the test above drives the same path with real processes).
#[test]
fn the_file_copy_question_and_status_lines_look_like_this() {
    use bulkhead::app::{ServiceEvent, ServiceStatusKind};
    use bulkhead_supervisor::services::Question;
    let infos = ["browser", "work", "vault"]
        .iter()
        .zip([Label::Red, Label::Green, Label::Black])
        .map(|(n, l)| info(n, l))
        .collect();
    let mut app = BulkheadApp::new(bulkhead::app::run::software_backends(infos));
    app.service_events(vec![
        ServiceEvent::Ask(Question {
            id: 1,
            service: "bulkhead.FileCopy".into(),
            argument: "move 2 files (293.0 KiB)".into(),
            source: "browser".into(),
            targets: vec!["work".into(), "vault".into()],
            default_target: Some("work".into()),
            rule: Some("policy.d/50-default.policy:4".into()),
        }),
        ServiceEvent::Status {
            partition: "browser".into(),
            topic: "files",
            kind: ServiceStatusKind::Waiting,
            text: "choose where to move 2 files (293.0 KiB)".into(),
        },
        ServiceEvent::Status {
            partition: "vault".into(),
            topic: "files",
            kind: ServiceStatusKind::Done,
            text: "copied `notes.txt` (3 B) from [work] to [vault] (~/Incoming/work/) in 0.1 s"
                .into(),
        },
    ]);
    let mut h = harness(app);
    h.run_steps(2);
    h.snapshot("file_copy_ask");
}

#[test]
fn fake_partition_process() {
    bulkhead_supervisor::testing::fake_partition_main();
}
