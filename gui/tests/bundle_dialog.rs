//! Export… and Import… in the app, driven through AccessKit like a person would: a
//! stopped partition exported through the launcher's button into a file and imported back
//! under a new name (private disk byte-identical, the same code as `bulkhead export` /
//! `import`, on a background thread); a wrong passphrase shows one line and leaves
//! nothing; snapshots of the export form, the import form refusing a name clash, and an
//! export in progress. Update them with
//! `UPDATE_SNAPSHOTS=1 cargo test -p bulkhead --test bundle_dialog`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bulkhead::app::backend::PartitionBackend;
use bulkhead::app::bundle_dialog::Form;
use bulkhead::app::{BulkheadApp, Label, PartitionInfo, SoftwareBackend, SourceKind};
use bulkhead::bundle::{Job, JobStatus, Progress, TransferError};
use bulkhead::display::software::Pattern;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;

#[path = "support/bundle_home.rs"]
mod bundle_home;

/// One private HOME for this test binary (the data directory comes from the environment,
/// which is process-wide); the tests that write in it take [`SERIAL`].
struct Home {
    root: PathBuf,
}

static SERIAL: Mutex<()> = Mutex::new(());

fn home() -> &'static Home {
    static HOME: OnceLock<Home> = OnceLock::new();
    HOME.get_or_init(|| {
        // Under cargo's per-target scratch directory, emptied at each run (a static is
        // never dropped, so a TempDir would leak into /tmp).
        Home {
            root: bundle_home::fresh("bundle_dialog"),
        }
    })
}

impl Home {
    fn policy(&self) -> PathBuf {
        bundle_home::policy(&self.root)
    }

    fn disk(&self, name: &str) -> PathBuf {
        bundle_home::disk(&self.root, name)
    }

    fn state(&self) -> Vec<(PathBuf, Vec<u8>)> {
        bundle_home::state(&self.root)
    }
}

fn slot(name: &str, label: Label, running: bool) -> Box<dyn PartitionBackend> {
    let info = PartitionInfo {
        name: name.into(),
        label,
        kind: name.into(),
        memory_mib: 1024,
        vcpus: 2,
        display: (320, 240),
        source: SourceKind::SoftwareFramebuffer,
    };
    let mut b = SoftwareBackend::new(info, Pattern::Still);
    if running {
        b.start_running().unwrap();
    }
    Box::new(b)
}

fn harness(app: BulkheadApp) -> Harness<'static, BulkheadApp> {
    Harness::builder()
        .with_size(egui::vec2(1100.0, 560.0))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app)
}

/// Replaces the text of the field labelled `label` as a user would: select all, type.
fn retype(h: &mut Harness<'_, BulkheadApp>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.run_steps(1);
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.run_steps(1);
    h.get_by_label(label).type_text(text);
    h.run_steps(1);
}

fn form<'a>(h: &'a Harness<'_, BulkheadApp>) -> &'a Form {
    h.state()
        .bundle
        .form
        .as_ref()
        .expect("the bundle form is open")
}

/// Runs frames until the form's job has ended (bounded: a hang fails the test).
fn wait_for_job(h: &mut Harness<'_, BulkheadApp>) {
    h.run_steps(1);
    let until = Instant::now() + Duration::from_secs(120);
    while form(h).running() {
        assert!(
            Instant::now() < until,
            "the bundle job did not end in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
        h.run_steps(1);
    }
    h.run_steps(1);
}

fn app_with(slots: Vec<Box<dyn PartitionBackend>>) -> BulkheadApp {
    let mut app = BulkheadApp::new(slots);
    app.bundle.policy_dir = Some(home().policy());
    app
}

fn import_through_the_dialog(
    h: &mut Harness<'_, BulkheadApp>,
    file: &Path,
    pass: &str,
    name: &str,
) {
    h.get_by_label("Import…").click();
    h.run_steps(2);
    assert!(
        form(h).mode == bulkhead::app::bundle_dialog::Mode::Import,
        "Import… opened no import form"
    );
    retype(h, "File", &file.display().to_string());
    retype(h, "Passphrase", pass);
    retype(h, "New name", name);
    h.get_by_label("Import").click();
    wait_for_job(h);
}

#[test]
fn a_stopped_partition_exported_from_the_launcher_imports_back_under_a_new_name_byte_identical() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let home = home();
    let bundle = home.root.join("roundtrip.bulkhead");
    let mut h = harness(app_with(vec![slot("mail", Label::Yellow, false)]));
    h.run_steps(1);

    h.get_by_label("Export…").click();
    h.run_steps(2);
    assert!(h.state().bundle.is_open(), "Export… opened no form");
    retype(&mut h, "File", &bundle.display().to_string());
    retype(&mut h, "Passphrase", "a long passphrase");
    retype(&mut h, "Passphrase again", "a long passphrase");
    h.get_by_label("Export").click();
    wait_for_job(&mut h);
    let f = form(&h);
    assert_eq!(f.error, None);
    let done = &f.done.as_ref().expect("no outcome line").0;
    assert!(done.starts_with("exported `mail`"), "{done}");
    assert!(f.passphrase.is_empty(), "the passphrase stayed in the form");
    assert!(bundle.is_file());
    h.get_by_label("Close").click();
    // Two frames: the one that closes the form still lays it out.
    h.run_steps(2);
    assert!(!h.state().bundle.is_open());

    import_through_the_dialog(&mut h, &bundle, "a long passphrase", "mail-copy");
    let f = form(&h);
    assert_eq!(f.error, None);
    assert!(
        f.done
            .as_ref()
            .is_some_and(|d| d.0.contains("imported `mail-copy`")),
        "{:?}",
        f.done
    );
    assert_eq!(
        fs::read(home.disk("mail-copy")).unwrap(),
        fs::read(home.disk("mail")).unwrap(),
        "the private disk changed on the way"
    );
    let partitions = fs::read_to_string(home.policy().join("partitions.toml")).unwrap();
    assert!(partitions.contains("[partition.mail-copy]"), "{partitions}");

    // Once more under the same name: the plan refuses and offers a free one.
    h.get_by_label("Close").click();
    // Two frames: the one that closes the form still lays it out.
    h.run_steps(2);
    let before = home.state();
    import_through_the_dialog(&mut h, &bundle, "a long passphrase", "mail-copy");
    let f = form(&h);
    let error = f.error.as_deref().unwrap_or_default();
    assert!(error.contains("`mail-copy` exists"), "{error}");
    assert_eq!(f.new_name, "mail-copy-2", "no free name offered");
    assert_eq!(home.state(), before, "a refused import changed something");
}

#[test]
fn a_wrong_passphrase_in_the_import_dialog_shows_one_line_and_leaves_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let home = home();
    let bundle = home.root.join("wrongpass.bulkhead");
    let plan = bulkhead::bundle::ExportPlan::new(&bulkhead::bundle::ExportRequest {
        name: "mail".into(),
        file: bundle.clone(),
        with_template: false,
        policy_dir: Some(home.policy()),
        save_running: None,
    })
    .unwrap();
    plan.write("right one".to_string().into(), &mut |_| {})
        .unwrap();
    let before = home.state();
    let mut h = harness(app_with(vec![slot("mail", Label::Yellow, false)]));
    h.run_steps(1);

    import_through_the_dialog(&mut h, &bundle, "not it", "elsewhere");
    let error = form(&h).error.clone().expect("no error shown");
    assert!(error.contains("wrong passphrase"), "{error}");
    assert!(!error.contains('\n'), "more than one line: {error}");
    h.get_by_label_contains("wrong passphrase");
    assert_eq!(form(&h).done, None);
    assert_eq!(
        home.state(),
        before,
        "a failed import left something behind"
    );
}

#[test]
fn export_is_offered_only_for_a_stopped_partition() {
    let mut h = harness(app_with(vec![
        slot("browser", Label::Red, true),
        slot("mail", Label::Yellow, false),
    ]));
    h.run_steps(1);
    let buttons: Vec<bool> = h
        .get_all_by_label("Export…")
        .map(|b| b.accesskit_node().is_disabled())
        .collect();
    assert_eq!(buttons, [true, false], "running disabled, stopped enabled");
}

/// The export form for `mail`, filled in (passphrases masked).
#[test]
fn export_dialog_snapshot() {
    let mut h = harness(app_with(vec![slot("mail", Label::Yellow, false)]));
    h.run_steps(1);
    h.get_by_label("Export…").click();
    h.run_steps(2);
    retype(&mut h, "File", "/home/user/mail.bulkhead");
    retype(&mut h, "Passphrase", "correct horse");
    retype(&mut h, "Passphrase again", "correct horse");
    h.state_mut().bundle.form.as_mut().unwrap().with_template = true;
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("correct horse").is_none(),
        "a passphrase shown in clear"
    );
    h.snapshot("bundle_export_dialog");
}

/// The import form after the plan refused a name clash: one line, a free name offered.
#[test]
fn import_dialog_name_clash_snapshot() {
    let mut h = harness(app_with(vec![slot("mail", Label::Yellow, false)]));
    h.run_steps(1);
    h.get_by_label("Import…").click();
    h.run_steps(2);
    retype(&mut h, "File", "/home/user/mail.bulkhead");
    h.state_mut().bundle.started(Job::at(JobStatus {
        progress: Progress::default(),
        outcome: Some(Err(TransferError::NameTaken {
            name: "mail".into(),
            why: "a partition named `mail` exists in /home/user/.config/bulkhead".into(),
            suggestion: "mail-2".into(),
        })),
    }));
    h.run_steps(3);
    assert_eq!(form(&h).new_name, "mail-2");
    h.get_by_label_contains("suggested: mail-2");
    h.snapshot("bundle_import_name_clash");
}

/// An export under way: the form is locked and the bar shows bytes done of the total.
#[test]
fn export_progress_snapshot() {
    let mut h = harness(app_with(vec![slot("mail", Label::Yellow, false)]));
    h.run_steps(1);
    h.get_by_label("Export…").click();
    h.run_steps(2);
    retype(&mut h, "File", "/home/user/mail.bulkhead");
    h.state_mut().bundle.started(Job::at(JobStatus {
        progress: Progress {
            stage: "private.img".into(),
            done: 96 << 20,
            total: 256 << 20,
        },
        outcome: None,
    }));
    h.run_steps(3);
    h.get_by_label_contains("private.img: 96 of 256 MiB");
    h.snapshot("bundle_export_progress");
}
