//! The policy parser fuzz target, shared by the libFuzzer binary (`cargo fuzz run
//! parse_policy`) and the stable-toolchain driver (`stable_fuzz`).
//!
//! Input: the bytes up to the first NUL are `partitions.toml`, the rest one rule file.
//! Besides "never panics", it checks invariants on whatever parses.

use std::path::{Path, PathBuf};

use isolation_policy::rules::parse_rules;
use isolation_policy::{Request, Sources};

/// Run one input; true if it was a valid policy. Panics (so the fuzzer reports it) if an
/// invariant breaks.
pub fn check_one(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let (partitions, rules) = text.split_once('\0').unwrap_or((&text, ""));
    rules_round_trip(rules);
    let sources = Sources {
        dir: PathBuf::from("fuzz"),
        partitions: partitions.to_string(),
        rule_files: vec![(PathBuf::from("fuzz/policy.d/50-fuzz.policy"), rules.to_string())],
    };
    let (policy, report) = sources.check();
    for d in &report.diagnostics {
        assert!(d.location.line >= 1 && d.location.column >= 1, "positions start at 1: {d}");
        let _ = d.to_string();
    }
    assert_eq!(policy.is_some(), !report.has_errors(), "a policy exists exactly when there are no errors");
    let Some(policy) = policy else { return false };
    let names: Vec<&str> = policy.partitions().iter().map(|p| p.name.as_str()).take(4).collect();
    for from in &names {
        for to in names.iter().copied().chain(["@dispvm"]) {
            for req in [Request::clipboard_paste(from, to), Request::open_url(from, Some(to))] {
                let d = policy.decide(&req);
                assert_eq!(d, policy.decide(&req), "decisions are deterministic");
                assert!(d.verdict.is_deny() || d.rule.is_some(), "allow/ask always cite a rule");
            }
        }
        assert!(policy.spec(from).is_some());
    }
    true
}

/// Every rule that parses prints to text that parses to the same rule.
fn rules_round_trip(text: &str) {
    let file = Path::new("f.policy");
    let (rules, _) = parse_rules(file, text);
    let printed: Vec<String> = rules.iter().map(ToString::to_string).collect();
    let (again, diags) = parse_rules(file, &printed.join("\n"));
    assert!(diags.is_empty(), "printed rules must parse: {diags:?}");
    let reprinted: Vec<String> = again.iter().map(ToString::to_string).collect();
    assert_eq!(printed, reprinted, "print → parse → print is stable");
}

/// Seed inputs: the shipped defaults plus small edge cases.
pub fn seeds() -> Vec<Vec<u8>> {
    let partitions = include_str!("../../../assets/policy/partitions.toml");
    let mut rules = String::new();
    rules.push_str(include_str!("../../../assets/policy/policy.d/30-vault.policy"));
    rules.push_str(include_str!("../../../assets/policy/policy.d/50-default.policy"));
    let mut out = vec![format!("{partitions}\0{rules}").into_bytes()];
    out.push(b"[partition.a]\nlabel = \"red\"\ntags = [\"t\"]\n\0x +y @tag:t @dispvm:a allow target=a\n* * * * deny notify=no\n".to_vec());
    out.push(b"[partition.a]\nlabel = \"red\"\nclipboard = { copy_out = false }\n[partition.a.network]\nmode = \"nat\"\n[[partition.a.network.rule]]\naction = \"allow\"\nprotocol = \"tcp\"\ndestination = \"10.0.0.0/8\"\nports = [1, \"2-3\"]\n\0s * @type:app a ask default_target=a\n".to_vec());
    out
}
