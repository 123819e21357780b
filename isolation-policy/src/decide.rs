//! Deciding requests with a checked [`Policy`]: rules in order, first match wins,
//! partition settings veto, no match means deny; every decision explains itself.

use crate::diag::Location;
use crate::network::{FirewallAction, NetTarget, NetworkMode};
use crate::partition::Partition;
use crate::policy::Policy;
use crate::request::{service, ChainStep, Decision, Request, Verdict};
use crate::rules::{Action, ArgPattern, Pattern, Rule, RuleRef, ServicePattern};

impl Policy {
    /// Decide a request. Deterministic: the same policy and request give the same decision.
    pub fn decide(&self, request: &Request) -> Decision {
        match request {
            Request::Service {
                service,
                argument,
                source,
                target,
            } => self.decide_service(service, argument.as_deref(), source, target),
            Request::Network {
                source,
                destination,
            } => self.decide_network(source, destination),
            Request::Dns { source } => self.decide_dns(source),
        }
    }

    /// After an `ask`, the user picked `chosen`: allow it if policy would allow or ask
    /// for that target, deny otherwise.
    pub fn resolve_ask(&self, request: &Request, chosen: &str) -> Decision {
        let Request::Service {
            service,
            argument,
            source,
            ..
        } = request
        else {
            return Decision::deny(
                None,
                "only service requests can be asked about".into(),
                Vec::new(),
            );
        };
        let mut d = self.decide_service(service, argument.as_deref(), source, chosen);
        if d.verdict.is_ask() {
            d.verdict = Verdict::Allow {
                target: Some(chosen.to_string()),
            };
            d.explanation = format!("the user confirmed: {}", d.explanation);
        }
        d
    }

    /// What-if helper for the editor and `bulkhead policy explain`.
    pub fn what_if(&self, service: &str, from: &str, to: &str) -> Decision {
        let (service, argument) = match service.split_once('+') {
            Some((s, a)) => (s, Some(a)),
            None => (service, None),
        };
        self.decide(&Request::service(service, argument, from, to))
    }

    fn decide_service(
        &self,
        service: &str,
        argument: Option<&str>,
        source: &str,
        target: &str,
    ) -> Decision {
        let Some(src) = self.partition(source) else {
            return Decision::deny(
                None,
                format!("denied: `{source}` is not a defined partition"),
                Vec::new(),
            );
        };
        if service == service::CLIPBOARD_COPY {
            return clipboard_copy(src, target);
        }
        let tgt = if target == "@dispvm" || target == crate::rules::DEFAULT_TARGET {
            None
        } else if let Some(base) = target.strip_prefix("@dispvm:") {
            if self.partition(base).is_none() {
                return Decision::deny(
                    None,
                    format!("denied: `{base}` in `{target}` is not a defined partition"),
                    Vec::new(),
                );
            }
            None
        } else {
            match self.partition(target) {
                Some(t) => Some(t),
                None => {
                    return Decision::deny(
                        None,
                        format!("denied: target `{target}` is not a defined partition"),
                        Vec::new(),
                    )
                }
            }
        };
        let mut chain = Vec::new();
        for rule in self.rules() {
            if !service_matches(&rule.service, service) || !arg_matches(&rule.argument, argument) {
                continue;
            }
            let reason = if !self.pattern_matches(&rule.source, source) {
                Some(format!("source `{source}` is not {}", rule.source))
            } else if !self.pattern_matches(&rule.target, target) {
                Some(format!("target `{target}` is not {}", rule.target))
            } else {
                None
            };
            let matched = reason.is_none();
            chain.push(ChainStep {
                rule: rule.reference(),
                matched,
                reason: reason.unwrap_or_else(|| "matches".into()),
            });
            if matched {
                return self.apply_rule(rule, src, tgt, service, target, chain);
            }
        }
        let what = Request::service(service, argument, source, target);
        Decision::deny(
            None,
            format!("denied: no rule matches {what}, and no match means deny"),
            chain,
        )
    }

    fn apply_rule(
        &self,
        rule: &Rule,
        src: &Partition,
        tgt: Option<&Partition>,
        service: &str,
        target: &str,
        chain: Vec<ChainStep>,
    ) -> Decision {
        let at = format!("{}:{}", rule.file.display(), rule.line);
        let (verdict, final_target) = match &rule.action {
            Action::Deny { notify } => {
                return Decision {
                    verdict: Verdict::Deny { notify: *notify },
                    rule: Some(rule.reference()),
                    explanation: format!("denied by rule `{rule}` at {at}"),
                    chain,
                }
            }
            Action::Allow { target: None } if target == crate::rules::DEFAULT_TARGET => {
                return Decision::deny(
                    Some(rule.reference()),
                    format!(
                        "denied: rule `{rule}` at {at} allows `@default` but names no \
                         `target=` for it"
                    ),
                    chain,
                )
            }
            Action::Allow { target: redirect } => {
                let t = redirect.clone().unwrap_or_else(|| target.to_string());
                (
                    Verdict::Allow {
                        target: Some(t.clone()),
                    },
                    t,
                )
            }
            Action::Ask { default_target } => (
                Verdict::Ask {
                    default_target: default_target.clone(),
                },
                target.to_string(),
            ),
        };
        let final_tgt = if final_target == target {
            tgt
        } else {
            self.partition(&final_target)
        };
        if let Some(d) = self.setting_veto(service, src, final_tgt, &chain) {
            return d;
        }
        let how = match &verdict {
            Verdict::Allow { target: Some(t) } if t != target => {
                format!("allowed and redirected to `{t}`")
            }
            Verdict::Allow { .. } => "allowed".to_string(),
            Verdict::Ask {
                default_target: Some(t),
            } => format!("ask the user (default target `{t}`)"),
            Verdict::Ask { .. } => "ask the user".to_string(),
            Verdict::Deny { .. } => "denied".to_string(),
        };
        Decision {
            verdict,
            rule: Some(rule.reference()),
            explanation: format!("{how} by rule `{rule}` at {at}"),
            chain,
        }
    }

    /// Partition settings override rules: a partition that keeps its clipboard or files
    /// in never lets them out, whatever a rule says.
    fn setting_veto(
        &self,
        service: &str,
        src: &Partition,
        tgt: Option<&Partition>,
        chain: &[ChainStep],
    ) -> Option<Decision> {
        let checks: &[(bool, &Partition, &str)] = match (service, tgt) {
            (service::CLIPBOARD_PASTE, Some(t)) => &[
                (src.clipboard_copy_out, src, "clipboard.copy_out"),
                (t.clipboard_paste_in, t, "clipboard.paste_in"),
            ],
            (service::FILE_COPY, Some(t)) => &[
                (src.file_send, src, "file_transfer.send"),
                (t.file_receive, t, "file_transfer.receive"),
            ],
            (service::CLIPBOARD_PASTE, None) => {
                &[(src.clipboard_copy_out, src, "clipboard.copy_out")]
            }
            (service::FILE_COPY, None) => &[(src.file_send, src, "file_transfer.send")],
            _ => &[],
        };
        let (_, p, field) = checks.iter().find(|(ok, _, _)| !ok)?;
        let r = setting_ref(p, field, "false");
        Some(Decision::deny(
            Some(r.clone()),
            format!(
                "denied by partition setting `{}` at {}:{} (a rule matched, but the setting wins)",
                r.text,
                r.file.display(),
                r.line
            ),
            chain.to_vec(),
        ))
    }

    fn pattern_matches(&self, pattern: &Pattern, who: &str) -> bool {
        let is_dispvm =
            who == "@dispvm" || who.starts_with("@dispvm:") || who == crate::rules::DEFAULT_TARGET;
        match pattern {
            Pattern::Any => true,
            Pattern::Default => who == crate::rules::DEFAULT_TARGET,
            Pattern::DispVm => who == "@dispvm",
            Pattern::DispVmOf(n) => who.strip_prefix("@dispvm:") == Some(n),
            _ if is_dispvm => false,
            Pattern::AnyVm => self.partition(who).is_some(),
            Pattern::Name(n) => n == who,
            Pattern::Tag(t) => self.partition(who).is_some_and(|p| p.tags.contains(t)),
            Pattern::Type(k) => self.partition(who).is_some_and(|p| p.kind == *k),
        }
    }

    /// The partition `source`, if it exists and has a network; else the denial.
    fn online_partition(&self, source: &str) -> Result<&Partition, Box<Decision>> {
        let Some(p) = self.partition(source) else {
            return Err(Box::new(Decision::deny(
                None,
                format!("denied: `{source}` is not a defined partition"),
                Vec::new(),
            )));
        };
        if p.network.mode == NetworkMode::Offline {
            let r = setting_ref(p, "network.mode", "\"offline\"");
            return Err(Box::new(Decision::deny(
                Some(r),
                format!("denied: `{source}` is offline"),
                Vec::new(),
            )));
        }
        Ok(p)
    }

    fn decide_network(&self, source: &str, dest: &NetTarget) -> Decision {
        let p = match self.online_partition(source) {
            Ok(p) => p,
            Err(denied) => return *denied,
        };
        let mut chain = Vec::new();
        for rule in &p.network.rules {
            let r = RuleRef {
                file: p.file.clone(),
                line: rule.line,
                column: rule.column,
                text: format!("[partition.{source}] firewall: {rule}"),
            };
            let matched = rule.matches(dest);
            chain.push(ChainStep {
                rule: r.clone(),
                matched,
                reason: if matched {
                    "matches".into()
                } else {
                    format!("{dest} is not covered")
                },
            });
            if matched {
                let at = format!("{}:{}", r.file.display(), r.line);
                return match rule.action {
                    FirewallAction::Allow => Decision {
                        verdict: Verdict::Allow { target: None },
                        rule: Some(r),
                        explanation: format!(
                            "allowed by firewall rule `{rule}` of `{source}` at {at}"
                        ),
                        chain,
                    },
                    FirewallAction::Deny => Decision::deny(
                        Some(r),
                        format!("denied by firewall rule `{rule}` of `{source}` at {at}"),
                        chain,
                    ),
                };
            }
        }
        Decision::deny(None, format!("denied: no firewall rule of `{source}` allows {dest}; the firewall is an allowlist"), chain)
    }

    fn decide_dns(&self, source: &str) -> Decision {
        let p = match self.online_partition(source) {
            Ok(p) => p,
            Err(denied) => return *denied,
        };
        let r = setting_ref(p, "network.dns", &p.network.dns.to_string());
        if p.network.dns {
            Decision {
                verdict: Verdict::Allow { target: None },
                rule: Some(r),
                explanation: format!("allowed: `{source}` has network.dns = true"),
                chain: Vec::new(),
            }
        } else {
            Decision::deny(
                Some(r),
                format!("denied: `{source}` does not have network.dns = true"),
                Vec::new(),
            )
        }
    }
}

/// Copying into the host's buffer: only the source's `clipboard.copy_out` decides (what
/// may leave it goes on to the paste's own decision, rules and all).
fn clipboard_copy(src: &Partition, target: &str) -> Decision {
    if target != service::HOST {
        return Decision::deny(
            None,
            format!(
                "denied: {} goes to {}, not to `{target}`",
                service::CLIPBOARD_COPY,
                service::HOST
            ),
            Vec::new(),
        );
    }
    let value = if src.clipboard_copy_out {
        "true"
    } else {
        "false"
    };
    let r = setting_ref(src, "clipboard.copy_out", value);
    let at = format!("{}:{}", r.file.display(), r.line);
    if src.clipboard_copy_out {
        Decision {
            verdict: Verdict::Allow {
                target: Some(service::HOST.to_string()),
            },
            explanation: format!("allowed by partition setting `{}` at {at}", r.text),
            rule: Some(r),
            chain: Vec::new(),
        }
    } else {
        Decision::deny(
            Some(r.clone()),
            format!("denied by partition setting `{}` at {at}", r.text),
            Vec::new(),
        )
    }
}

fn setting_ref(p: &Partition, field: &str, value: &str) -> RuleRef {
    let Location { file, line, column } = p.location_of(field);
    RuleRef {
        file,
        line,
        column,
        text: format!("partition.{}.{field} = {value}", p.name),
    }
}

fn service_matches(pattern: &ServicePattern, service: &str) -> bool {
    match pattern {
        ServicePattern::Any => true,
        ServicePattern::Name(n) => n == service,
    }
}

fn arg_matches(pattern: &ArgPattern, argument: Option<&str>) -> bool {
    match pattern {
        ArgPattern::Any => true,
        ArgPattern::Exact(a) => argument.unwrap_or("") == a,
    }
}
