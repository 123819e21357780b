//! Safe edits: load → modify → save keeps comments and order, writes atomically with a
//! backup, and never writes an invalid policy.

use std::fs;
use std::path::{Path, PathBuf};

use isolation_policy::document::backup_path;
use isolation_policy::network::{Destination, FirewallAction, FirewallRule, PortRange};
use isolation_policy::{EditError, FieldValue, Label, PolicyDocument, Protocol, SaveError};

/// A copy of the shipped defaults in a temporary directory.
fn defaults_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy");
    let dir = tmp.path().join("policy");
    fs::create_dir_all(dir.join("policy.d")).unwrap();
    fs::copy(src.join("partitions.toml"), dir.join("partitions.toml")).unwrap();
    for e in fs::read_dir(src.join("policy.d")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dir.join("policy.d").join(e.file_name())).unwrap();
    }
    (tmp, dir)
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

#[test]
fn setting_a_field_changes_one_line_and_keeps_comments_and_order() {
    let (_tmp, dir) = defaults_copy();
    let before = read(&dir.join("partitions.toml"));
    let mut doc = PolicyDocument::load(&dir).unwrap();
    let report = doc
        .set_partition_field("browser", "memory_mib", FieldValue::Integer(3072))
        .unwrap();
    assert!(!report.has_errors(), "{report}");
    assert!(doc.is_dirty());
    doc.save().unwrap();
    let after = read(&dir.join("partitions.toml"));
    let changed: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed, [("memory_mib = 2048", "memory_mib = 3072")]);
    assert_eq!(before.lines().count(), after.lines().count());
    assert_eq!(read(&backup_path(&dir.join("partitions.toml"))), before);
    assert!(!doc.is_dirty());
    assert_eq!(
        doc.policy().unwrap().spec("browser").unwrap().memory_mib,
        3072
    );
}

#[test]
fn nested_fields_are_set_in_tables_and_inline_tables() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    doc.set_partition_field("vault", "clipboard.paste_in", FieldValue::Bool(false))
        .unwrap();
    doc.set_partition_field("work", "file_transfer.send", FieldValue::Bool(false))
        .unwrap();
    let r = doc
        .set_partition_field("work", "network.mode", FieldValue::String("nat".into()))
        .unwrap();
    assert!(!r.has_errors(), "{r}");
    let p = doc.policy().unwrap();
    assert!(!p.partition("vault").unwrap().clipboard_paste_in);
    assert!(!p.partition("work").unwrap().file_send);
    assert!(doc
        .partitions_text()
        .contains("clipboard = { copy_out = false, paste_in = false }"));
}

#[test]
fn an_invalid_edit_reports_its_position_and_is_never_saved() {
    let (_tmp, dir) = defaults_copy();
    let path = dir.join("partitions.toml");
    let before = read(&path);
    let mut doc = PolicyDocument::load(&dir).unwrap();
    let report = doc
        .set_partition_field("browser", "vcpus", FieldValue::Integer(0))
        .unwrap();
    let errors: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!(
            "{}:14:9: error: `partition.browser.vcpus` = 0 is impossible",
            path.display()
        )),
        "{}",
        errors[0]
    );
    assert!(matches!(doc.save(), Err(SaveError::Invalid(_))));
    assert_eq!(read(&path), before, "the file on disk is untouched");
    assert!(!backup_path(&path).exists());
    doc.revert().unwrap();
    assert!(doc.is_valid());
    assert!(!doc.is_dirty());
}

#[test]
fn wrong_type_edit_is_reported_not_saved() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    let r = doc
        .set_partition_field("mail", "autostart", FieldValue::String("yes".into()))
        .unwrap();
    assert!(
        r.errors()
            .any(|d| d.message.contains("expected true or false")),
        "{r}"
    );
    assert!(doc.save().is_err());
}

#[test]
fn unknown_fields_and_partitions_are_refused_with_a_hint() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    let e = doc
        .set_partition_field("browser", "memroy_mib", FieldValue::Integer(1))
        .unwrap_err();
    assert!(e.to_string().contains("did you mean `memory_mib`?"), "{e}");
    let e = doc
        .set_partition_field("ghost", "vcpus", FieldValue::Integer(1))
        .unwrap_err();
    assert!(matches!(e, EditError::UnknownPartition(_)));
    assert!(!doc.is_dirty());
}

#[test]
fn removing_a_partition_that_rules_name_is_an_error_until_rules_change() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    let r = doc.remove_partition("vault").unwrap();
    assert!(
        r.errors()
            .any(|d| d.message.contains("`vault`, which is not defined")),
        "{r}"
    );
    let r = doc.remove_rule_file("30-vault.policy").unwrap();
    assert!(!r.has_errors(), "{r}");
    doc.save().unwrap();
    let rules = dir.join("policy.d/30-vault.policy");
    assert!(!rules.exists());
    assert!(
        backup_path(&rules).exists(),
        "a removed rule file is kept as a backup"
    );
    assert!(!read(&dir.join("partitions.toml")).contains("[partition.vault]"));
}

#[test]
fn added_partition_gets_label_and_offline_network() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    doc.add_partition("banking", Label::Blue).unwrap();
    assert!(doc.add_partition("banking", Label::Blue).is_err());
    assert!(doc.add_partition("Bad Name", Label::Blue).is_err());
    doc.save().unwrap();
    let doc = PolicyDocument::load(&dir).unwrap();
    let spec = doc.policy().unwrap().spec("banking").unwrap();
    assert_eq!(spec.label_rgb, [0x34, 0x65, 0xa4]);
    assert_eq!(
        doc.partition_names(),
        ["browser", "mail", "work", "vault", "banking"]
    );
}

#[test]
fn firewall_rules_can_be_replaced() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    let rule = FirewallRule {
        action: FirewallAction::Allow,
        protocol: Protocol::Tcp,
        destination: "*.example.org".parse::<Destination>().unwrap(),
        ports: vec![PortRange::single(443), "8000-8100".parse().unwrap()],
        line: 0,
        column: 0,
    };
    let r = doc
        .set_firewall_rules("browser", std::slice::from_ref(&rule))
        .unwrap();
    assert!(!r.has_errors(), "{r}");
    let p = doc.policy().unwrap().partition("browser").unwrap();
    assert_eq!(p.network.rules.len(), 1);
    assert_eq!(p.network.rules[0].destination, rule.destination);
    assert_eq!(p.network.rules[0].ports, rule.ports);
}

#[test]
fn rule_text_is_checked_per_file_with_line_and_column() {
    let (_tmp, dir) = defaults_copy();
    let doc = PolicyDocument::load(&dir).unwrap();
    let diags = doc.check_rule_text(
        "60-mine.policy",
        "# mine\nx * work brwser allow\nx * work mail perhaps\n",
    );
    let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("60-mine.policy:2:10: error: rule names partition `brwser`"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("did you mean `browser`?"));
    assert!(
        lines[1].contains("60-mine.policy:3:15: error: unknown action `perhaps`"),
        "{}",
        lines[1]
    );
}

#[test]
fn what_if_sees_unsaved_rule_edits() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    assert!(doc
        .what_if("bulkhead.ClipboardPaste", "work", "mail")
        .unwrap()
        .verdict
        .is_ask());
    doc.set_rule_file_text(
        "10-first.policy",
        "bulkhead.ClipboardPaste * work mail deny\n",
    )
    .unwrap();
    let d = doc
        .what_if("bulkhead.ClipboardPaste", "work", "mail")
        .unwrap();
    assert!(d.verdict.is_deny());
    assert!(d.rule.unwrap().file.ends_with("policy.d/10-first.policy"));
    assert!(doc.set_rule_file_text("../escape.policy", "").is_err());
    doc.set_rule_file_text("10-first.policy", "broken line\n")
        .unwrap();
    assert!(doc
        .what_if("bulkhead.ClipboardPaste", "work", "mail")
        .is_err());
    assert!(doc.save().is_err());
    assert!(!dir.join("policy.d/10-first.policy").exists());
}

#[test]
fn a_syntax_error_in_raw_text_is_reported_and_blocks_field_edits() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    let r = doc.set_partitions_text("[partition.a]\nlabel = \"red\n");
    let e = r.errors().next().unwrap();
    assert_eq!(e.location.line, 2);
    assert!(e.message.contains("TOML syntax"));
    assert!(matches!(
        doc.set_partition_field("a", "vcpus", FieldValue::Integer(1)),
        Err(EditError::Unparsable)
    ));
}

#[test]
fn a_partition_snippet_reinserted_under_a_new_name_defines_the_same_partition() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    let snippet = doc.partition_snippet("browser").unwrap();
    assert!(snippet.contains("[partition.browser.network]"), "{snippet}");
    assert!(matches!(
        doc.insert_partition_snippet("browser", &snippet),
        Err(EditError::PartitionExists(_))
    ));
    let report = doc.insert_partition_snippet("browser2", &snippet).unwrap();
    assert!(!report.has_errors(), "{report}");
    let policy = doc.policy().unwrap();
    let (a, b) = (
        policy.spec("browser").unwrap(),
        policy.spec("browser2").unwrap(),
    );
    assert_eq!((a.memory_mib, a.vcpus), (b.memory_mib, b.vcpus));
    assert_eq!((a.network, a.dns), (b.network, b.dns));
    let what = |rules: &[FirewallRule]| -> Vec<_> {
        rules
            .iter()
            .map(|r| (r.action, r.protocol, r.destination.clone(), r.ports.clone()))
            .collect()
    };
    assert_eq!(what(&a.firewall), what(&b.firewall));
    assert_eq!(a.firewall.len(), 2);
}

#[test]
fn a_snippet_with_two_partitions_or_none_is_refused() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    for bad in [
        "",
        "[partition.a]\nlabel = \"red\"\n[partition.b]\nlabel = \"red\"\n",
        "not toml [",
    ] {
        assert!(
            matches!(
                doc.insert_partition_snippet("fresh", bad),
                Err(EditError::BadSnippet)
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn rules_naming_a_partition_are_found_and_renamed_everywhere_they_name_it() {
    let (_tmp, dir) = defaults_copy();
    let mut doc = PolicyDocument::load(&dir).unwrap();
    doc.set_rule_file_text(
        "40-mine.policy",
        "bulkhead.OpenIn +url work @dispvm:work allow\n\
         bulkhead.FileCopy * @anyvm mail ask default_target=work\n\
         bulkhead.FileCopy * browser mail deny\n",
    )
    .unwrap();
    let found: Vec<String> = doc
        .rules_naming("work")
        .iter()
        .map(|r| r.renamed("work", "job").to_string())
        .collect();
    assert_eq!(
        found,
        [
            "bulkhead.OpenIn +url job @dispvm:job allow",
            "bulkhead.FileCopy * @anyvm mail ask default_target=job",
        ]
    );
}

/// Every file under `dir` with its bytes, for "nothing changed" checks.
fn snapshot_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn saving_defaults_into_the_user_dir_copies_them_there_and_leaves_the_defaults_untouched() {
    let (tmp, defaults) = defaults_copy();
    let before = snapshot_tree(&defaults);
    let user = tmp.path().join("config/bulkhead");
    let mut doc = PolicyDocument::load(&defaults).unwrap();
    doc.set_partition_field("browser", "memory_mib", FieldValue::Integer(3072))
        .unwrap();
    doc.save_to(&user).unwrap();
    assert_eq!(
        snapshot_tree(&defaults),
        before,
        "the defaults were written"
    );
    assert_eq!(doc.dir(), user);
    assert!(!doc.is_dirty());
    // The user's copy is the whole policy, with the edit, and loads on its own.
    let (policy, _) = isolation_policy::Policy::load(&user).unwrap();
    assert_eq!(policy.spec("browser").unwrap().memory_mib, 3072);
    for (path, _) in &before {
        if path.extension().is_some_and(|e| e == "bak") {
            continue;
        }
        let rel = path.strip_prefix(&defaults).unwrap();
        assert!(user.join(rel).exists(), "{} not copied", rel.display());
    }
    // Later saves go to the user's copy only.
    doc.set_partition_field("browser", "memory_mib", FieldValue::Integer(1024))
        .unwrap();
    doc.save().unwrap();
    assert_eq!(snapshot_tree(&defaults), before);
    assert!(read(&user.join("partitions.toml")).contains("memory_mib = 1024"));
}

#[test]
fn saving_into_a_directory_that_holds_a_policy_is_refused_and_writes_nothing() {
    let (tmp, defaults) = defaults_copy();
    let other = tmp.path().join("other");
    fs::create_dir_all(other.join("policy.d")).unwrap();
    fs::write(other.join("policy.d/10-mine.policy"), "# mine\n").unwrap();
    let before = snapshot_tree(&other);
    let mut doc = PolicyDocument::load(&defaults).unwrap();
    doc.set_partition_field("browser", "memory_mib", FieldValue::Integer(3072))
        .unwrap();
    let err = doc.save_to(&other).unwrap_err();
    assert!(matches!(err, SaveError::TargetHoldsPolicy { .. }), "{err}");
    assert_eq!(snapshot_tree(&other), before);
    assert_eq!(doc.dir(), defaults, "the document stays the defaults'");
    assert!(doc.is_dirty());
}
