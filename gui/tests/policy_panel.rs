//! The policy editor panel driven through AccessKit on a copy of the shipped policy:
//! edits validate live with the error at the field, invalid policies are never saved,
//! valid ones are, and "what if" answers with the deciding rule.
//! Snapshots: `UPDATE_SNAPSHOTS=1 cargo test -p bulkhead --test policy_panel`.

use std::path::{Path, PathBuf};

use bulkhead::app::policy_editor::{source_tree_policy, PolicyEditor, Status};
use bulkhead::app::BulkheadApp;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn policy_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    copy_dir(&source_tree_policy(), &policy);
    (dir, policy)
}

fn editor_app(policy: &Path) -> BulkheadApp {
    let mut app = BulkheadApp::new(Vec::new());
    app.prefs.show_launcher = false;
    app.prefs.show_policy = true;
    app.policy = PolicyEditor::open(policy);
    app
}

fn harness(app: BulkheadApp) -> Harness<'static, BulkheadApp> {
    Harness::builder()
        .with_size(egui::vec2(1100.0, 900.0))
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
    h.run_steps(2);
}

#[test]
fn impossible_memory_shows_an_error_at_the_field_and_is_not_saved() {
    let (_tmp, policy) = policy_copy();
    let partitions = policy.join("partitions.toml");
    let before = std::fs::read_to_string(&partitions).unwrap();
    let mut h = harness(editor_app(&policy));
    h.run_steps(2);
    h.get_by_label("[browser]").click();
    h.run_steps(1);

    retype(&mut h, "Memory (MiB)", "99999999");
    assert!(
        !h.state().policy.field_errors("memory_mib").is_empty(),
        "no error recorded for memory_mib"
    );
    h.get_by_label_contains("Error 13:");
    h.get_by_label_contains("cannot save");
    // The temporary directory's name differs on every run.
    let dir = h.get_by_label_contains("/policy").rect();
    h.mask(egui::Rect::from_min_max(
        dir.min,
        egui::pos2(1100.0, dir.max.y),
    ));
    h.snapshot("policy_editor_inline_error");

    h.get_by_label("Save").click();
    h.run_steps(1);
    assert!(
        matches!(h.state().policy.status, Some(Status::Refused(_))),
        "{:?}",
        h.state().policy.status
    );
    h.get_by_label_contains("Not saved");
    assert_eq!(
        std::fs::read_to_string(&partitions).unwrap(),
        before,
        "invalid policy reached the disk"
    );
}

#[test]
fn text_in_a_number_field_is_refused_before_the_policy_sees_it() {
    let (_tmp, policy) = policy_copy();
    let mut h = harness(editor_app(&policy));
    h.run_steps(2);
    retype(&mut h, "vCPUs", "two");
    h.get_by_label_contains("`two` is not a whole number");
}

#[test]
fn valid_edit_saves_and_revert_restores_what_is_on_disk() {
    let (_tmp, policy) = policy_copy();
    let partitions = policy.join("partitions.toml");
    let mut h = harness(editor_app(&policy));
    h.run_steps(2);
    h.get_by_label("[browser]").click();
    h.run_steps(1);
    retype(&mut h, "Memory (MiB)", "3072");
    h.get_by_label("Save").click();
    h.run_steps(1);
    assert!(
        matches!(h.state().policy.status, Some(Status::Saved(_))),
        "{:?}",
        h.state().policy.status
    );
    let saved = std::fs::read_to_string(&partitions).unwrap();
    assert!(saved.contains("memory_mib = 3072"), "{saved}");

    retype(&mut h, "Memory (MiB)", "4096");
    h.get_by_label("Revert").click();
    h.run_steps(1);
    assert_eq!(std::fs::read_to_string(&partitions).unwrap(), saved);
    assert!(h.state().policy.document().is_some_and(|d| !d.is_dirty()));
}

#[test]
fn rule_with_an_unknown_action_is_marked_at_its_line() {
    let (_tmp, policy) = policy_copy();
    let mut editor = PolicyEditor::open(&policy);
    editor.set_rule_text("bulkhead.FileCopy * @anyvm @anyvm maybe\n");
    let errors = editor.rule_errors();
    assert_eq!(
        errors.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "{errors:?}"
    );
    editor.save();
    assert!(matches!(editor.status, Some(Status::Refused(_))));
}

#[test]
fn what_if_names_the_deciding_rule() {
    let (_tmp, policy) = policy_copy();
    let mut editor = PolicyEditor::open(&policy);
    editor.set_what_if("bulkhead.OpenURL", "mail", "@default");
    let answer = editor.what_if_answer().unwrap().unwrap();
    assert!(answer.starts_with("allow"), "{answer}");
    assert!(answer.contains("50-default.policy:"), "{answer}");
}

#[test]
fn audit_panel_reads_decisions_and_filters_them() {
    use bulkhead::app::audit_log::AuditPanel;
    use isolation_policy::{AuditLog, Policy, Request};

    let (tmp, policy) = policy_copy();
    let (policy, _) = Policy::load(&policy).unwrap();
    let log = AuditLog::open(&tmp.path().join("audit"), 1 << 20, 2).unwrap();
    for request in [
        Request::open_url("mail", None),
        Request::service("bulkhead.FileCopy", None, "work", "vault"),
    ] {
        log.record(&request, &policy.decide(&request)).unwrap();
    }
    let mut panel = AuditPanel::open(&tmp.path().join("audit"));
    assert_eq!(panel.rows.len(), 2, "{}", panel.source_note);
    assert_eq!(panel.rows[0].service, "bulkhead.OpenURL");
    assert_eq!(panel.rows[0].decision, "allow");
    assert!(
        panel.rows[0].rule.contains("50-default.policy"),
        "{:?}",
        panel.rows[0]
    );
    panel.filter = "vault".into();
    let shown: Vec<_> = panel.filtered().map(|r| r.service.clone()).collect();
    assert_eq!(shown, vec!["bulkhead.FileCopy".to_string()]);
}
