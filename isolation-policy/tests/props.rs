//! Property tests: decisions are deterministic, deny is the default, and rules survive
//! parse → print → parse.

use std::path::{Path, PathBuf};

use isolation_policy::rules::parse_rules;
use isolation_policy::{Policy, Request, Sources, Verdict};
use proptest::prelude::*;

const PARTITIONS: &str = r#"
[partition.a]
label = "red"
tags = ["t1"]
[partition.b]
label = "green"
tags = ["t2"]
[partition.c]
label = "black"
kind = "template"
tags = ["t1", "t2"]
[partition.d]
label = "yellow"
kind = "disposable"
"#;

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        ..ProptestConfig::default()
    }
}

fn service() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "*",
        "s1",
        "s2",
        "bulkhead.ClipboardPaste",
        "bulkhead.FileCopy",
    ])
    .prop_map(str::to_string)
}

fn argument() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["*", "+", "+url", "+file"]).prop_map(str::to_string)
}

fn source() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "*",
        "@anyvm",
        "@tag:t1",
        "@tag:t2",
        "@type:app",
        "@type:template",
        "@type:disposable",
        "a",
        "b",
        "c",
        "d",
    ])
    .prop_map(str::to_string)
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        source(),
        prop::sample::select(vec!["@dispvm", "@dispvm:a", "@dispvm:d"]).prop_map(str::to_string)
    ]
}

fn action() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "allow",
        "allow target=b",
        "allow target=@dispvm",
        "deny",
        "deny notify=no",
        "deny notify=yes",
        "ask",
        "ask default_target=c",
    ])
    .prop_map(str::to_string)
}

fn space() -> impl Strategy<Value = String> {
    prop::sample::select(vec![" ", "  ", "\t", " \t "]).prop_map(str::to_string)
}

/// One rule line with random spacing, maybe a trailing comment.
fn rule_line() -> impl Strategy<Value = String> {
    (
        service(),
        argument(),
        source(),
        target(),
        action(),
        prop::collection::vec(space(), 5),
        any::<bool>(),
    )
        .prop_map(|(s, a, src, t, act, sp, comment)| {
            let mut line = format!(
                "{}{s}{}{a}{}{src}{}{t}{}{act}",
                sp[0], sp[1], sp[2], sp[3], sp[4]
            );
            if comment {
                line.push_str(" # why");
            }
            line
        })
}

fn rules_text() -> impl Strategy<Value = String> {
    prop::collection::vec(rule_line(), 0..12).prop_map(|lines| lines.join("\n"))
}

fn request() -> impl Strategy<Value = Request> {
    let who = prop::sample::select(NAMES.to_vec());
    let to = prop::sample::select(vec!["a", "b", "c", "d", "@dispvm", "@dispvm:a", "ghost"]);
    let svc = prop::sample::select(vec![
        "s1",
        "s2",
        "s3",
        "bulkhead.ClipboardPaste",
        "bulkhead.FileCopy",
    ]);
    let arg = prop::sample::select(vec![None, Some(""), Some("url"), Some("x")]);
    (svc, arg, who, to).prop_map(|(s, a, from, to)| Request::service(s, a, from, to))
}

fn policy(rules: &str) -> Policy {
    let sources = Sources {
        dir: PathBuf::from("p"),
        partitions: PARTITIONS.into(),
        rule_files: vec![(PathBuf::from("p/policy.d/50-p.policy"), rules.into())],
    };
    let (policy, report) = sources.check();
    policy.unwrap_or_else(|| panic!("generated policy must be valid:\n{report}\n{rules}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_print_parse_is_stable(text in rules_text()) {
        let file = Path::new("f.policy");
        let (rules, diags) = parse_rules(file, &text);
        prop_assert!(diags.is_empty(), "{diags:?}");
        let printed: Vec<String> = rules.iter().map(ToString::to_string).collect();
        let (again, diags) = parse_rules(file, &printed.join("\n"));
        prop_assert!(diags.is_empty());
        prop_assert_eq!(rules.len(), again.len());
        for (r1, r2) in rules.iter().zip(&again) {
            prop_assert_eq!(&r1.service, &r2.service);
            prop_assert_eq!(&r1.argument, &r2.argument);
            prop_assert_eq!(&r1.source, &r2.source);
            prop_assert_eq!(&r1.target, &r2.target);
            prop_assert_eq!(&r1.action, &r2.action);
            prop_assert_eq!(r1.to_string(), r2.to_string());
        }
    }

    #[test]
    fn decisions_are_deterministic(text in rules_text(), req in request()) {
        let p1 = policy(&text);
        let p2 = policy(&text);
        let d = p1.decide(&req);
        prop_assert_eq!(&d, &p1.decide(&req));
        prop_assert_eq!(&d, &p2.decide(&req));
    }

    #[test]
    fn without_rules_everything_is_denied(req in request()) {
        let d = policy("").decide(&req);
        prop_assert!(d.verdict.is_deny());
        prop_assert!(d.rule.is_none());
    }

    #[test]
    fn only_a_matching_rule_can_allow_or_ask(text in rules_text(), req in request()) {
        let p = policy(&text);
        let d = p.decide(&req);
        if !d.verdict.is_deny() {
            let rule = d.rule.as_ref().expect("allow and ask always cite a rule");
            let step = d.chain.last().expect("the deciding rule is in the chain");
            prop_assert!(step.matched);
            prop_assert_eq!(&step.rule, rule);
            prop_assert!(d.chain[..d.chain.len() - 1].iter().all(|s| !s.matched));
        }
    }

    #[test]
    fn rules_after_the_match_never_change_the_decision(text in rules_text(), extra in rules_text(), req in request()) {
        let d = policy(&text).decide(&req);
        if d.rule.as_ref().is_some_and(|r| r.file.ends_with("50-p.policy")) && d.chain.last().is_some_and(|s| s.matched) {
            let longer = policy(&format!("{text}\n{extra}")).decide(&req);
            prop_assert_eq!(d.verdict, longer.verdict);
        }
    }

    #[test]
    fn a_service_no_rule_mentions_is_denied(text in rules_text(), req in request()) {
        let text = text.lines().filter(|l| !l.trim_start().starts_with('*')).collect::<Vec<_>>().join("\n");
        if let Request::Service { source, target, argument, .. } = &req {
            let req = Request::Service { service: "never.Mentioned".into(), argument: argument.clone(), source: source.clone(), target: target.clone() };
            prop_assert_eq!(policy(&text).decide(&req).verdict, Verdict::Deny { notify: true });
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(toml in ".{0,300}", rules in ".{0,300}") {
        let sources = Sources { dir: PathBuf::from("p"), partitions: toml, rule_files: vec![(PathBuf::from("p/x.policy"), rules)] };
        let _ = sources.check();
    }
}
