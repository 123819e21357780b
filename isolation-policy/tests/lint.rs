//! The lint warns about risky but legal policy and never blocks loading.

use std::path::PathBuf;

use isolation_policy::{Report, Severity, Sources};

fn check(partitions: &str, rules: &str) -> Report {
    let sources = Sources {
        dir: PathBuf::from("p"),
        partitions: partitions.into(),
        rule_files: vec![(PathBuf::from("p/policy.d/50-x.policy"), rules.into())],
    };
    let (policy, report) = sources.check();
    assert!(
        policy.is_some(),
        "lint findings must not make a policy invalid:\n{report}"
    );
    assert!(report
        .diagnostics
        .iter()
        .all(|d| d.severity == Severity::Warning));
    report
}

const TWO: &str = "[partition.browser]\nlabel = \"red\"\n[partition.work]\nlabel = \"green\"\n";

#[test]
fn red_pasting_into_green_without_ask_is_flagged_at_the_rule() {
    let r = check(TWO, "bulkhead.ClipboardPaste * @anyvm @anyvm allow\n");
    let w: Vec<String> = r.warnings().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].starts_with("p/policy.d/50-x.policy:1:1: warning: red `browser` may paste into green `work` without being asked"), "{}", w[0]);
}

#[test]
fn the_same_flow_with_ask_is_not_flagged() {
    let r = check(TWO, "bulkhead.ClipboardPaste * @anyvm @anyvm ask\n");
    assert!(r.diagnostics.is_empty(), "{r}");
}

#[test]
fn green_to_red_allow_is_not_a_trust_problem() {
    let r = check(TWO, "bulkhead.FileCopy * work browser allow\n");
    assert!(r.diagnostics.is_empty(), "{r}");
}

#[test]
fn wide_network_for_a_trusted_label_is_flagged() {
    let parts = "[partition.work]\nlabel = \"green\"\n[partition.work.network]\nmode = \"nat\"\n[[partition.work.network.rule]]\naction = \"allow\"\nprotocol = \"tcp\"\ndestination = \"*\"\nports = [443]\n";
    let r = check(parts, "");
    let w: Vec<String> = r.warnings().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with(
            "p/partitions.toml:5:1: warning: green partition `work` may reach any host"
        ),
        "{}",
        w[0]
    );
}

#[test]
fn wide_open_network_is_flagged_for_any_label_and_black_online_too() {
    let parts = "[partition.v]\nlabel = \"black\"\nclipboard = { copy_out = false }\n[partition.v.network]\nmode = \"nat\"\n[[partition.v.network.rule]]\naction = \"allow\"\ndestination = \"0.0.0.0/0\"\n";
    let r = check(parts, "");
    let w: Vec<String> = r.warnings().map(|d| d.message.clone()).collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w
        .iter()
        .any(|m| m.contains("black partition `v` has network access")));
    assert!(w.iter().any(|m| m.contains("every host on every port")));
}

#[test]
fn black_partition_with_clipboard_out_is_flagged() {
    let r = check("[partition.v]\nlabel = \"black\"\n", "");
    assert_eq!(r.warnings().count(), 1);
    assert!(r.diagnostics[0].message.contains("lets its clipboard out"));
}

#[test]
fn a_rule_after_a_broader_one_is_reported_as_unreachable() {
    let r = check(
        TWO,
        "x * @anyvm @anyvm deny\nx * browser work ask\nx * browser @dispvm ask\n",
    );
    let w: Vec<String> = r.warnings().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "@anyvm does not cover @dispvm: {w:#?}");
    assert!(
        w[0].starts_with(
            "p/policy.d/50-x.policy:2:1: warning: rule `x * browser work ask` never applies"
        ),
        "{}",
        w[0]
    );
}
