//! Lint: risky but legal policy. Warnings never stop a policy from loading.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, Location};
use crate::label::Label;
use crate::network::NetworkMode;
use crate::policy::Policy;
use crate::request::{Request, Verdict};
use crate::rules::{ArgPattern, Pattern, Rule, RuleRef, ServicePattern};

/// All warnings for a checked policy.
pub fn lint(policy: &Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    out.extend(trust_flows(policy));
    out.extend(network_width(policy));
    out.extend(vault_clipboard(policy));
    out.extend(shadowed_rules(policy.rules()));
    out
}

type MakeRequest = fn(&str, &str) -> Request;

/// Data moving from a less trusted into a more trusted partition without `ask`.
fn trust_flows(policy: &Policy) -> Vec<Diagnostic> {
    let requests: [(&str, MakeRequest); 3] = [
        ("paste into", Request::clipboard_paste),
        ("copy files into", Request::file_copy),
        ("open URLs in", |a, b| Request::open_url(a, Some(b))),
    ];
    // One warning per (rule, kind of flow), naming the first pair it lets through.
    let mut seen: BTreeMap<(RuleRef, &str), (String, usize)> = BTreeMap::new();
    let ps = policy.partitions();
    for low in ps {
        for high in ps.iter().filter(|h| h.label > low.label) {
            for (verb, make) in &requests {
                let d = policy.decide(&make(&low.name, &high.name));
                if let (Verdict::Allow { .. }, Some(rule)) = (&d.verdict, d.rule) {
                    let entry = seen.entry((rule, verb)).or_insert_with(|| {
                        (
                            format!(
                                "{} `{}` may {verb} {} `{}`",
                                low.label, low.name, high.label, high.name
                            ),
                            0,
                        )
                    });
                    entry.1 += 1;
                }
            }
        }
    }
    seen.into_iter()
        .map(|((rule, _), (what, n))| {
            let more = if n > 1 {
                format!(" (and {} more pairs)", n - 1)
            } else {
                String::new()
            };
            Diagnostic::warning(
                Location::new(&rule.file, rule.line, rule.column),
                format!("{what} without being asked{more}, by `{}`", rule.text),
                "use `ask` for flows from a less trusted label into a more trusted one",
            )
        })
        .collect()
}

/// Network allowlists wider than the label suggests.
fn network_width(policy: &Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in policy.partitions() {
        if p.network.mode != NetworkMode::Nat {
            continue;
        }
        if p.label == Label::Black {
            out.push(Diagnostic::warning(
                p.location_of("network.mode"),
                format!("black partition `{}` has network access", p.name),
                "black is the most trusted label; keep it offline",
            ));
        }
        for rule in &p.network.rules {
            let loc = Location::new(&p.file, rule.line, rule.column);
            if rule.is_wide_open() {
                out.push(Diagnostic::warning(
                    loc,
                    format!(
                        "partition `{}` may reach every host on every port (`{rule}`)",
                        p.name
                    ),
                    "list the protocols and ports it needs",
                ));
            } else if p.label >= Label::Green
                && rule.action == crate::network::FirewallAction::Allow
                && rule.destination.is_everything()
            {
                out.push(Diagnostic::warning(
                    loc,
                    format!("{} partition `{}` may reach any host (`{rule}`), wider than its label suggests", p.label, p.name),
                    "name the hosts or networks it needs",
                ));
            }
        }
    }
    out
}

fn vault_clipboard(policy: &Policy) -> Vec<Diagnostic> {
    policy
        .partitions()
        .iter()
        .filter(|p| p.label == Label::Black && p.clipboard_copy_out)
        .map(|p| {
            Diagnostic::warning(
                p.location_of("clipboard.copy_out"),
                format!("black partition `{}` lets its clipboard out", p.name),
                format!(
                    "set clipboard = {{ copy_out = false }} in [partition.{}]",
                    p.name
                ),
            )
        })
        .collect()
}

fn covers_pattern(a: &Pattern, b: &Pattern) -> bool {
    match (a, b) {
        (Pattern::Any, _) => true,
        (
            Pattern::AnyVm,
            Pattern::DispVm | Pattern::DispVmOf(_) | Pattern::Default | Pattern::Any,
        ) => false,
        (Pattern::AnyVm, _) => true,
        _ => a == b,
    }
}

fn covers(a: &Rule, b: &Rule) -> bool {
    let service = matches!(a.service, ServicePattern::Any) || a.service == b.service;
    let argument = matches!(a.argument, ArgPattern::Any) || a.argument == b.argument;
    service
        && argument
        && covers_pattern(&a.source, &b.source)
        && covers_pattern(&a.target, &b.target)
}

/// Rules that can never match because an earlier rule matches everything they would.
fn shadowed_rules(rules: &[Rule]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, later) in rules.iter().enumerate() {
        if let Some(earlier) = rules[..i].iter().find(|e| covers(e, later)) {
            out.push(Diagnostic::warning(
                later.location(later.columns.service),
                format!(
                    "rule `{later}` never applies: `{earlier}` at {}:{} matches first",
                    earlier.file.display(),
                    earlier.line
                ),
                "move it above the broader rule, or delete it",
            ));
        }
    }
    out
}
