//! The shipped defaults in assets/policy: valid, lint-clean, and deciding as a Qubes
//! user expects.

use std::path::Path;

use isolation_policy::{Label, NetTarget, NetworkMode, Policy, Protocol, Request, Verdict};

fn defaults() -> Policy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy");
    let (policy, report) = Policy::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.diagnostics.is_empty(),
        "defaults must be lint-clean:\n{report}"
    );
    policy
}

#[test]
fn defaults_define_browser_mail_work_and_vault_with_their_labels() {
    let p = defaults();
    let labels: Vec<(&str, Label)> = p
        .partitions()
        .iter()
        .map(|p| (p.name.as_str(), p.label))
        .collect();
    assert_eq!(
        labels,
        [
            ("browser", Label::Red),
            ("mail", Label::Yellow),
            ("work", Label::Green),
            ("vault", Label::Black)
        ]
    );
    assert_eq!(p.spec("work").unwrap().network, NetworkMode::Offline);
    assert_eq!(p.spec("vault").unwrap().network, NetworkMode::Offline);
}

#[test]
fn browser_reaches_web_ports_only() {
    let p = defaults();
    let net = |port, proto| {
        let mut t = NetTarget::tcp("example.org", port);
        t.protocol = proto;
        p.decide(&Request::network("browser", t)).verdict
    };
    assert!(net(443, Protocol::Tcp).is_allow());
    assert!(net(80, Protocol::Tcp).is_allow());
    assert!(net(443, Protocol::Udp).is_allow());
    assert!(net(22, Protocol::Tcp).is_deny());
    assert!(net(25, Protocol::Tcp).is_deny());
    assert!(net(53, Protocol::Udp).is_deny());
}

#[test]
fn mail_reaches_mail_ports_only() {
    let p = defaults();
    for port in [993, 587, 465] {
        assert!(p
            .decide(&Request::network(
                "mail",
                NetTarget::tcp("mail.example.org", port)
            ))
            .verdict
            .is_allow());
    }
    for port in [80, 443, 143, 25] {
        assert!(
            p.decide(&Request::network(
                "mail",
                NetTarget::tcp("mail.example.org", port)
            ))
            .verdict
            .is_deny(),
            "{port}"
        );
    }
}

#[test]
fn work_and_vault_have_no_network() {
    let p = defaults();
    for name in ["work", "vault"] {
        assert!(p
            .decide(&Request::network(name, NetTarget::tcp("1.1.1.1", 443)))
            .verdict
            .is_deny());
        assert!(p
            .decide(&Request::Dns {
                source: name.into()
            })
            .verdict
            .is_deny());
    }
}

#[test]
fn clipboard_and_file_copy_between_partitions_ask() {
    let p = defaults();
    for (a, b) in [("browser", "work"), ("work", "mail"), ("mail", "browser")] {
        assert!(
            p.decide(&Request::clipboard_paste(a, b)).verdict.is_ask(),
            "{a}->{b}"
        );
        assert!(
            p.decide(&Request::file_copy(a, b)).verdict.is_ask(),
            "{a}->{b}"
        );
    }
}

#[test]
fn nothing_enters_the_vault_without_ask_and_nothing_leaves_it() {
    let p = defaults();
    for from in ["browser", "mail", "work"] {
        assert!(p
            .decide(&Request::clipboard_paste(from, "vault"))
            .verdict
            .is_ask());
        assert!(p
            .decide(&Request::file_copy(from, "vault"))
            .verdict
            .is_ask());
        assert!(p
            .decide(&Request::open_url(from, Some("vault")))
            .verdict
            .is_deny());
        assert!(p
            .decide(&Request::service("any.Service", None, from, "vault"))
            .verdict
            .is_deny());
    }
    for to in ["browser", "mail", "work"] {
        assert!(p
            .decide(&Request::clipboard_paste("vault", to))
            .verdict
            .is_deny());
        assert!(p.decide(&Request::file_copy("vault", to)).verdict.is_deny());
    }
}

#[test]
fn mail_links_open_in_a_new_disposable_of_the_browser() {
    let p = defaults();
    // `bulkhead-open URL` in mail names no target: `@default`, sent to a disposable.
    assert_eq!(
        p.decide(&Request::open_url("mail", None)).verdict,
        Verdict::Allow {
            target: Some("@dispvm:browser".into())
        }
    );
    // From elsewhere, or naming a partition: the person is asked, the browser first.
    for (from, to) in [
        ("work", None),
        ("work", Some("mail")),
        ("mail", Some("work")),
    ] {
        assert_eq!(
            p.decide(&Request::open_url(from, to)).verdict,
            Verdict::Ask {
                default_target: Some("browser".into())
            },
            "{from} -> {to:?}"
        );
    }
}

#[test]
fn default_is_a_target_only_its_own_rules_match() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("partitions.toml"),
        "[partition.a]\nlabel = \"red\"\n\n[partition.b]\nlabel = \"green\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("policy.d")).unwrap();
    std::fs::write(
        dir.path().join("policy.d/50.policy"),
        "bulkhead.OpenURL * a @anyvm allow\nbulkhead.OpenURL * b @default allow\n",
    )
    .unwrap();
    let (p, _) = Policy::load(dir.path()).unwrap();
    // `@anyvm` is every partition, not "no target".
    assert!(p.decide(&Request::open_url("a", None)).verdict.is_deny());
    assert!(p
        .decide(&Request::open_url("a", Some("b")))
        .verdict
        .is_allow());
    // An allow for `@default` must say where to.
    let d = p.decide(&Request::open_url("b", None));
    assert!(d.verdict.is_deny());
    assert!(
        d.explanation.contains("names no `target=`"),
        "{}",
        d.explanation
    );
    // `@default` cannot be a source.
    std::fs::write(
        dir.path().join("policy.d/50.policy"),
        "bulkhead.OpenURL * @default b allow\n",
    )
    .unwrap();
    let e = Policy::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("cannot be a source"), "{e}");
}

#[test]
fn unknown_services_are_denied() {
    let p = defaults();
    assert!(p
        .decide(&Request::service("qubes.VMShell", None, "browser", "work"))
        .verdict
        .is_deny());
}
