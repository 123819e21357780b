//! `bulkhead policy check` and `bulkhead policy explain`, run as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bulkhead() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
}

fn defaults() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy")
}

#[test]
fn check_accepts_the_shipped_defaults() {
    let out = bulkhead()
        .args(["policy", "check"])
        .arg(defaults())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("valid: 4 partitions"), "{stdout}");
}

#[test]
fn check_reports_a_bad_label_at_file_line_column_with_a_hint_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let src = defaults();
    std::fs::create_dir(dir.path().join("policy.d")).unwrap();
    for entry in std::fs::read_dir(src.join("policy.d")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join("policy.d").join(p.file_name().unwrap())).unwrap();
    }
    let partitions = std::fs::read_to_string(src.join("partitions.toml")).unwrap();
    let broken = partitions.replacen("label = \"yellow\"", "label = \"yelow\"", 1);
    assert_ne!(
        broken, partitions,
        "the defaults changed; pick another field to break"
    );
    std::fs::write(dir.path().join("partitions.toml"), &broken).unwrap();
    let line = broken.lines().position(|l| l.contains("yelow")).unwrap() + 1;

    let out = bulkhead()
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!("partitions.toml:{line}:");
    assert!(text.contains(&expected), "no {expected} in:\n{text}");
    assert!(text.contains("yellow"), "no hint in:\n{text}");
}

#[test]
fn explain_names_the_deciding_rule_and_its_file_line() {
    let out = bulkhead()
        .args(["policy", "explain", "--service", "bulkhead.ClipboardPaste"])
        .args(["--from", "browser", "--to", "vault", "--dir"])
        .arg(defaults())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("decision: ask"), "{stdout}");
    assert!(stdout.contains("30-vault.policy:3"), "{stdout}");
}

#[test]
fn explain_of_an_unmatched_service_denies_by_default() {
    let out = bulkhead()
        .args(["policy", "explain", "--service", "example.Nothing"])
        .args(["--from", "work", "--to", "browser", "--dir"])
        .arg(defaults())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("decision: deny"), "{stdout}");
}
