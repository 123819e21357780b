//! Decisions: every rule form and token, first match, default deny, settings, network.

use std::path::PathBuf;

use isolation_policy::{NetTarget, Policy, Request, Sources, Verdict};

const PARTITIONS: &str = r#"
[partition.browser]
label = "red"
tags = ["online"]
[partition.browser.network]
mode = "nat"
dns = true
[[partition.browser.network.rule]]
action = "deny"
protocol = "tcp"
destination = "10.0.0.0/8"
[[partition.browser.network.rule]]
action = "allow"
protocol = "tcp"
destination = "*"
ports = [80, 443]

[partition.mail]
label = "yellow"
tags = ["online"]
[partition.mail.network]
mode = "nat"
[[partition.mail.network.rule]]
action = "allow"
protocol = "tcp"
destination = "*.example.org"
ports = [993]

[partition.work]
label = "green"
kind = "app"

[partition.vault]
label = "black"
clipboard = { copy_out = false }
file_transfer = { send = false }

[partition.tpl]
label = "black"
kind = "template"

[partition.disp]
label = "red"
kind = "disposable"
template = "debian-12"
app = "firefox-esr"
"#;

fn policy(rules: &str) -> Policy {
    let sources = Sources {
        dir: PathBuf::from("p"),
        partitions: PARTITIONS.into(),
        rule_files: vec![(PathBuf::from("p/policy.d/50-test.policy"), rules.into())],
    };
    let (policy, report) = sources.check();
    policy.unwrap_or_else(|| panic!("invalid test policy:\n{report}"))
}

fn verdict(p: &Policy, service: &str, from: &str, to: &str) -> Verdict {
    p.what_if(service, from, to).verdict
}

fn allow(t: &str) -> Verdict {
    Verdict::Allow {
        target: Some(t.into()),
    }
}

const DENY: Verdict = Verdict::Deny { notify: true };

#[test]
fn no_rules_means_deny_with_no_rule_cited() {
    let p = policy("");
    let d = p.what_if("x", "work", "mail");
    assert_eq!(d.verdict, DENY);
    assert!(d.rule.is_none());
    assert!(
        d.explanation.contains("no rule matches"),
        "{}",
        d.explanation
    );
}

#[test]
fn first_match_wins_and_cites_its_file_and_line() {
    let p = policy("x * work mail deny\nx * work mail allow\n");
    let d = p.what_if("x", "work", "mail");
    assert_eq!(d.verdict, DENY);
    let rule = d.rule.unwrap();
    assert_eq!(rule.file, PathBuf::from("p/policy.d/50-test.policy"));
    assert_eq!(rule.line, 1);
    assert!(
        d.explanation.contains("50-test.policy:1"),
        "{}",
        d.explanation
    );
}

#[test]
fn rule_files_are_read_lower_numbered_first() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("partitions.toml"), PARTITIONS).unwrap();
    let rd = dir.path().join("policy.d");
    std::fs::create_dir(&rd).unwrap();
    std::fs::write(rd.join("10-b.policy"), "x * work mail allow\n").unwrap();
    std::fs::write(rd.join("9-a.policy"), "x * work mail deny\n").unwrap();
    std::fs::write(rd.join("5-ignored.txt"), "x * work mail ask\n").unwrap();
    let (p, _) = Policy::load(dir.path()).unwrap();
    let d = p.what_if("x", "work", "mail");
    assert_eq!(d.verdict, DENY);
    assert!(d.rule.unwrap().file.ends_with("9-a.policy"));
}

#[test]
fn service_and_argument_columns_match_exactly_or_by_star() {
    let p = policy("s +a work mail allow\n* +b work mail ask\ns * work mail deny notify=no\n");
    assert_eq!(verdict(&p, "s+a", "work", "mail"), allow("mail"));
    assert_eq!(
        verdict(&p, "other+b", "work", "mail"),
        Verdict::Ask {
            default_target: None
        }
    );
    assert_eq!(
        verdict(&p, "s+c", "work", "mail"),
        Verdict::Deny { notify: false }
    );
    assert_eq!(
        verdict(&p, "s", "work", "mail"),
        Verdict::Deny { notify: false }
    );
    assert_eq!(verdict(&p, "t", "work", "mail"), DENY);
}

#[test]
fn empty_argument_plus_matches_a_call_without_argument() {
    let p = policy("s + work mail allow\n");
    assert_eq!(verdict(&p, "s", "work", "mail"), allow("mail"));
    assert_eq!(verdict(&p, "s+x", "work", "mail"), DENY);
}

#[test]
fn anyvm_matches_every_partition_but_not_a_new_disposable() {
    let p = policy("s * @anyvm @anyvm allow\n");
    assert_eq!(verdict(&p, "s", "browser", "vault"), allow("vault"));
    assert_eq!(verdict(&p, "s", "browser", "@dispvm"), DENY);
}

#[test]
fn star_matches_new_disposables_too() {
    let p = policy("s * * * allow\n");
    assert_eq!(verdict(&p, "s", "browser", "@dispvm"), allow("@dispvm"));
    assert_eq!(
        verdict(&p, "s", "browser", "@dispvm:disp"),
        allow("@dispvm:disp")
    );
}

#[test]
fn dispvm_tokens_match_only_their_own_requests() {
    let p = policy("s * @anyvm @dispvm allow\nt * @anyvm @dispvm:disp allow\n");
    assert_eq!(verdict(&p, "s", "mail", "@dispvm"), allow("@dispvm"));
    assert_eq!(verdict(&p, "s", "mail", "@dispvm:disp"), DENY);
    assert_eq!(
        verdict(&p, "t", "mail", "@dispvm:disp"),
        allow("@dispvm:disp")
    );
    assert_eq!(verdict(&p, "t", "mail", "@dispvm"), DENY);
    assert_eq!(verdict(&p, "t", "mail", "disp"), DENY);
}

#[test]
fn tag_token_matches_partitions_with_that_tag() {
    let p = policy("s * @tag:online work allow\n");
    assert_eq!(verdict(&p, "s", "browser", "work"), allow("work"));
    assert_eq!(verdict(&p, "s", "mail", "work"), allow("work"));
    assert_eq!(verdict(&p, "s", "vault", "work"), DENY);
}

#[test]
fn type_token_matches_partitions_of_that_kind() {
    let p = policy("s * @type:template @type:disposable allow\n");
    assert_eq!(verdict(&p, "s", "tpl", "disp"), allow("disp"));
    assert_eq!(verdict(&p, "s", "work", "disp"), DENY);
    assert_eq!(verdict(&p, "s", "tpl", "work"), DENY);
}

#[test]
fn allow_target_redirects() {
    let p = policy("s * mail @anyvm allow target=browser\n");
    let d = p.what_if("s", "mail", "work");
    assert_eq!(d.verdict, allow("browser"));
    assert!(
        d.explanation.contains("redirected to `browser`"),
        "{}",
        d.explanation
    );
}

#[test]
fn ask_is_an_outcome_with_its_default_target() {
    let p = policy("s * @anyvm @anyvm ask default_target=work\n");
    let req = Request::service("s", None, "mail", "vault");
    let d = p.decide(&req);
    assert_eq!(
        d.verdict,
        Verdict::Ask {
            default_target: Some("work".into())
        }
    );
    assert!(d.explanation.starts_with("ask the user"));
    assert_eq!(p.resolve_ask(&req, "work").verdict, allow("work"));
}

#[test]
fn resolving_an_ask_to_a_denied_target_denies() {
    let p = policy("s * mail vault deny\ns * @anyvm @anyvm ask\n");
    let req = Request::service("s", None, "mail", "work");
    assert!(p.decide(&req).verdict.is_ask());
    assert!(p.resolve_ask(&req, "vault").verdict.is_deny());
}

#[test]
fn unknown_partitions_are_denied_without_matching_rules() {
    let p = policy("* * * * allow\n");
    assert!(p
        .what_if("s", "ghost", "work")
        .explanation
        .contains("`ghost` is not a defined partition"));
    assert_eq!(verdict(&p, "s", "work", "ghost"), DENY);
    assert_eq!(verdict(&p, "s", "work", "@dispvm:ghost"), DENY);
}

#[test]
fn partition_settings_veto_clipboard_and_files_even_when_a_rule_allows() {
    let p = policy("* * @anyvm @anyvm allow\n");
    let d = p.decide(&Request::clipboard_paste("vault", "work"));
    assert_eq!(d.verdict, DENY);
    let r = d.rule.unwrap();
    assert!(
        r.text.contains("vault.clipboard.copy_out = false"),
        "{}",
        r.text
    );
    assert_eq!(r.file, PathBuf::from("p/partitions.toml"));
    assert_eq!(r.line, 35);
    assert!(p
        .decide(&Request::file_copy("vault", "work"))
        .verdict
        .is_deny());
    // Into the vault is fine by settings: paste_in and receive default to true.
    assert!(p
        .decide(&Request::clipboard_paste("work", "vault"))
        .verdict
        .is_allow());
    assert!(p
        .decide(&Request::file_copy("work", "vault"))
        .verdict
        .is_allow());
}

#[test]
fn chain_lists_the_rules_looked_at_and_why_they_failed() {
    let p = policy("s * browser work allow\nother * work mail allow\ns * @tag:online @anyvm ask\n");
    let d = p.what_if("s", "work", "mail");
    assert_eq!(d.verdict, DENY);
    assert_eq!(
        d.chain.len(),
        2,
        "only rules for this service: {:?}",
        d.chain
    );
    assert!(d.chain[0].reason.contains("source `work` is not browser"));
    assert!(d.chain[1]
        .reason
        .contains("source `work` is not @tag:online"));
}

#[test]
fn network_firewall_is_an_ordered_allowlist() {
    let p = policy("");
    let web = p.decide(&Request::network(
        "browser",
        NetTarget::tcp("example.org", 443),
    ));
    assert!(web.verdict.is_allow(), "{}", web.explanation);
    assert_eq!(web.rule.unwrap().line, 12);
    let ssh = p.decide(&Request::network(
        "browser",
        NetTarget::tcp("example.org", 22),
    ));
    assert!(ssh.verdict.is_deny());
    assert!(ssh.explanation.contains("allowlist"));
    let lan = p.decide(&Request::network(
        "browser",
        NetTarget::tcp("10.1.2.3", 443),
    ));
    assert!(lan.verdict.is_deny(), "the deny rule comes first");
    assert_eq!(lan.rule.unwrap().line, 8);
}

#[test]
fn network_host_patterns_and_offline_partitions() {
    let p = policy("");
    let ok = p.decide(&Request::network(
        "mail",
        NetTarget::tcp("imap.example.org", 993),
    ));
    assert!(ok.verdict.is_allow());
    let other = p.decide(&Request::network(
        "mail",
        NetTarget::tcp("imap.evil.org", 993),
    ));
    assert!(other.verdict.is_deny());
    let off = p.decide(&Request::network(
        "work",
        NetTarget::tcp("example.org", 443),
    ));
    assert!(off.verdict.is_deny());
    assert!(off.explanation.contains("offline"));
}

#[test]
fn dns_follows_the_partition_setting() {
    let p = policy("");
    assert!(p
        .decide(&Request::Dns {
            source: "browser".into()
        })
        .verdict
        .is_allow());
    assert!(p
        .decide(&Request::Dns {
            source: "mail".into()
        })
        .verdict
        .is_deny());
    assert!(p
        .decide(&Request::Dns {
            source: "work".into()
        })
        .verdict
        .is_deny());
}

#[test]
fn rules_naming_unknown_partitions_or_tags_are_errors_with_positions() {
    let sources = Sources {
        dir: PathBuf::from("p"),
        partitions: PARTITIONS.into(),
        rule_files: vec![(
            PathBuf::from("p/policy.d/50-x.policy"),
            "s * wrok mail allow\ns * @tag:onlin mail allow\ns * work mail allow target=ghost\n"
                .into(),
        )],
    };
    let (policy, report) = sources.check();
    assert!(policy.is_none());
    let lines: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("p/policy.d/50-x.policy:1:5: error: rule names partition `wrok`"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("did you mean `work`?"));
    assert!(
        lines[1].starts_with("p/policy.d/50-x.policy:2:5: error: rule names tag `onlin`"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("p/policy.d/50-x.policy:3:21: error: rule names partition `ghost`"),
        "{}",
        lines[2]
    );
}

#[test]
fn spec_resolves_plain_values_for_the_vmm() {
    let p = policy("");
    let s = p.spec("browser").unwrap();
    assert_eq!(s.label_rgb, [0xcc, 0, 0]);
    assert_eq!((s.memory_mib, s.vcpus), (1024, 1));
    assert_eq!((s.display_width, s.display_height), (1280, 800));
    assert_eq!(s.network, isolation_policy::NetworkMode::Nat);
    assert_eq!((s.template, s.app), (None, None));
    let d = p.spec("disp").unwrap();
    assert_eq!(d.template.as_deref(), Some("debian-12"));
    assert_eq!(d.app.as_deref(), Some("firefox-esr"));
    assert_eq!((d.private_disk_mib, d.keyboard.as_str()), (2048, "us"));
    assert_eq!(p.spec("tpl").unwrap().template, None);
    assert!(p.spec("ghost").is_none());
    assert_eq!(p.specs().len(), 6);
}

#[test]
fn rule_errors_are_reported_alongside_partition_errors() {
    let sources = Sources {
        dir: PathBuf::from("p"),
        partitions: "[partition.a]\nlabel = \"red\"\nvcpus = 0\n[partition.b]\nlabel = \"pink\"\n"
            .into(),
        rule_files: vec![(
            PathBuf::from("p/policy.d/50-x.policy"),
            "s * a b allow\ns * a c allow\n".into(),
        )],
    };
    let (policy, report) = sources.check();
    assert!(policy.is_none());
    let lines: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("p/partitions.toml:3:9:"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("p/partitions.toml:5:9:"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("p/policy.d/50-x.policy:2:7: error: rule names partition `c`"),
        "{}",
        lines[2]
    );
}

#[test]
fn clipboard_copy_into_the_host_buffer_is_decided_by_the_copy_out_setting_alone() {
    // Even a rule that denies everything does not govern the copy: the paste does.
    let p = policy("*  *  @anyvm  *  deny\n");
    let work = p.decide(&Request::clipboard_copy("work"));
    assert_eq!(
        work.verdict,
        Verdict::Allow {
            target: Some("@host".into())
        }
    );
    assert!(
        work.explanation
            .contains("partition.work.clipboard.copy_out = true"),
        "{}",
        work.explanation
    );
    let vault = p.decide(&Request::clipboard_copy("vault"));
    assert!(vault.verdict.is_deny());
    let r = vault.rule.unwrap();
    assert_eq!(r.text, "partition.vault.clipboard.copy_out = false");
    // The setting's own line in partitions.toml (the vault's `clipboard = …`).
    let line = PARTITIONS
        .lines()
        .position(|l| l.starts_with("clipboard = { copy_out = false }"))
        .unwrap()
        + 1;
    assert_eq!(r.line, line);
    assert!(p
        .decide(&Request::clipboard_copy("nobody"))
        .verdict
        .is_deny());
    // Only into the host.
    let elsewhere = Request::service("bulkhead.ClipboardCopy", None, "work", "mail");
    assert!(p.decide(&elsewhere).verdict.is_deny());
}
