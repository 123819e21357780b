//! A checked policy: partitions plus ordered rules, and the decisions made from them.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Location, Report};
use crate::network::{FirewallAction, NetTarget, NetworkMode};
use crate::partition::{self, hint_names, Kind, Partition, RestartPolicy};
use crate::rules::{self, Action, ArgPattern, Pattern, Rule, RuleRef, ServicePattern};

/// File name of the partition definitions inside a policy directory.
pub const PARTITIONS_FILE: &str = "partitions.toml";
/// Directory of rule files inside a policy directory.
pub const RULES_DIR: &str = "policy.d";
/// Extension of rule files.
pub const RULES_EXT: &str = "policy";

/// Well-known services the supervisor asks about.
pub mod service {
    /// Paste the global clipboard (copied from `source`) into `target`.
    pub const CLIPBOARD_PASTE: &str = "bulkhead.ClipboardPaste";
    /// Copy files from `source` into `target`.
    pub const FILE_COPY: &str = "bulkhead.FileCopy";
    /// Open a URL (`+url`) or a file (`+file`) from `source` in `target`.
    pub const OPEN_IN: &str = "bulkhead.OpenIn";
}

/// Something a partition wants to do that crosses its boundary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Request {
    /// A named service from `source` to `target` (a partition, `@dispvm` or `@dispvm:NAME`).
    Service {
        service: String,
        /// The argument without its `+`; `None` when the caller gave none.
        argument: Option<String>,
        source: String,
        target: String,
    },
    /// A network connection from `source`.
    Network {
        source: String,
        destination: NetTarget,
    },
    /// A DNS lookup from `source` through the NAT's resolver.
    Dns { source: String },
}

impl Request {
    pub fn service(service: &str, argument: Option<&str>, source: &str, target: &str) -> Self {
        Request::Service {
            service: service.to_string(),
            argument: argument.map(str::to_string),
            source: source.to_string(),
            target: target.to_string(),
        }
    }
    pub fn clipboard_paste(from: &str, to: &str) -> Self {
        Request::service(service::CLIPBOARD_PASTE, None, from, to)
    }
    pub fn file_copy(from: &str, to: &str) -> Self {
        Request::service(service::FILE_COPY, None, from, to)
    }
    /// `what` is `url` or `file`.
    pub fn open_in(what: &str, from: &str, to: &str) -> Self {
        Request::service(service::OPEN_IN, Some(what), from, to)
    }
    pub fn network(from: &str, destination: NetTarget) -> Self {
        Request::Network {
            source: from.to_string(),
            destination,
        }
    }

    pub fn source(&self) -> &str {
        match self {
            Request::Service { source, .. }
            | Request::Network { source, .. }
            | Request::Dns { source } => source,
        }
    }

    /// The target partition, for service requests.
    pub fn target(&self) -> Option<&str> {
        match self {
            Request::Service { target, .. } => Some(target),
            _ => None,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Service {
                service,
                argument,
                source,
                target,
            } => {
                write!(f, "{service}")?;
                if let Some(a) = argument {
                    write!(f, "+{a}")?;
                }
                write!(f, " from {source} to {target}")
            }
            Request::Network {
                source,
                destination,
            } => write!(f, "network from {source} to {destination}"),
            Request::Dns { source } => write!(f, "DNS lookup from {source}"),
        }
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    /// Go ahead; `target` is where the request goes (differs from the request's target
    /// after an `allow target=` redirect; `None` for network requests).
    Allow {
        target: Option<String>,
    },
    Deny {
        notify: bool,
    },
    /// Ask the user; the GUI preselects `default_target` and then calls [`Policy::resolve_ask`].
    Ask {
        default_target: Option<String>,
    },
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
    pub fn is_deny(&self) -> bool {
        matches!(self, Verdict::Deny { .. })
    }
    pub fn is_ask(&self) -> bool {
        matches!(self, Verdict::Ask { .. })
    }
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Allow { .. } => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::Ask { .. } => "ask",
        }
    }
}

/// One rule looked at while deciding, and why it did or did not match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainStep {
    pub rule: RuleRef,
    pub matched: bool,
    pub reason: String,
}

/// A decision with the rule (or setting) that made it and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// `None` when nothing matched (default deny) or the request named no partition.
    pub rule: Option<RuleRef>,
    pub explanation: String,
    /// Rules for the same service (and argument) that were checked, in order.
    pub chain: Vec<ChainStep>,
}

impl Decision {
    fn deny(rule: Option<RuleRef>, explanation: String, chain: Vec<ChainStep>) -> Self {
        Decision {
            verdict: Verdict::Deny { notify: true },
            rule,
            explanation,
            chain,
        }
    }
}

/// A partition resolved to plain values, for the supervisor to turn into a VMM config.
/// It carries nothing of the rule language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpec {
    pub name: String,
    pub label: String,
    /// Border colour `[r, g, b]`.
    pub label_rgb: [u8; 3],
    pub kind: Kind,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub display_width: u32,
    pub display_height: u32,
    /// Image name in the image cache: the kernel and initramfs to boot.
    pub image: String,
    /// Template root filesystem (the template partition's name, or its own for templates).
    pub root_template: Option<String>,
    /// Extra kernel command line, appended to the VMM's own.
    pub cmdline_extra: String,
    pub network: NetworkMode,
    pub autostart: bool,
    pub restart: RestartPolicy,
    pub cpu_weight: u32,
}

/// A checked policy: every rule names known partitions and tags.
#[derive(Debug, Clone)]
pub struct Policy {
    dir: PathBuf,
    partitions: Vec<Partition>,
    rules: Vec<Rule>,
}

/// The raw text of a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub dir: PathBuf,
    pub partitions: String,
    /// Rule files in decision order (lower-numbered first).
    pub rule_files: Vec<(PathBuf, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a policy directory: it has no {PARTITIONS_FILE}")]
    NotPolicyDir { path: PathBuf },
    #[error("policy in {dir} is invalid:\n{report}")]
    Invalid { dir: PathBuf, report: Report },
}

/// Rule files sort by their leading number, then by name: `9-a` before `10-b`.
pub(crate) fn rule_file_order(name: &str) -> (u64, String) {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    (digits.parse().unwrap_or(u64::MAX), name.to_string())
}

impl Sources {
    /// Read `partitions.toml` and `policy.d/*.policy` from `dir`.
    pub fn read(dir: &Path) -> Result<Sources, LoadError> {
        let read = |path: PathBuf| {
            fs::read_to_string(&path).map_err(|source| LoadError::Read { path, source })
        };
        let ppath = dir.join(PARTITIONS_FILE);
        if !ppath.exists() {
            return Err(LoadError::NotPolicyDir {
                path: dir.to_path_buf(),
            });
        }
        let partitions = read(ppath)?;
        let rdir = dir.join(RULES_DIR);
        let mut names = Vec::new();
        if rdir.exists() {
            let entries = fs::read_dir(&rdir).map_err(|source| LoadError::Read {
                path: rdir.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| LoadError::Read {
                    path: rdir.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if Path::new(&name).extension().is_some_and(|e| e == RULES_EXT) {
                    names.push(name);
                }
            }
        }
        names.sort_by_key(|n| rule_file_order(n));
        let mut rule_files = Vec::new();
        for name in names {
            let path = rdir.join(&name);
            rule_files.push((path.clone(), read(path)?));
        }
        Ok(Sources {
            dir: dir.to_path_buf(),
            partitions,
            rule_files,
        })
    }

    pub fn partitions_path(&self) -> PathBuf {
        self.dir.join(PARTITIONS_FILE)
    }

    /// Parse and check everything. The policy is `Some` only when there are no errors;
    /// the report holds every error and, when the policy is valid, the lint warnings.
    pub fn check(&self) -> (Option<Policy>, Report) {
        let mut report = Report::default();
        let ppath = self.partitions_path();
        let (partitions, diags) = partition::parse_partitions(&ppath, &self.partitions);
        report.extend(diags);
        report.extend(partition::check_references(&partitions));
        let mut rules = Vec::new();
        for (path, text) in &self.rule_files {
            let (rs, diags) = rules::parse_rules(path, text);
            report.extend(diags);
            rules.extend(rs);
        }
        // Names can only be checked against a partition file that is valid TOML.
        let toml_ok = !report
            .errors()
            .any(|d| d.location.file == ppath && d.message.starts_with("TOML syntax"));
        if toml_ok {
            report.extend(check_rule_names(&rules, &partitions));
        }
        let policy = (!report.has_errors()).then(|| Policy {
            dir: self.dir.clone(),
            partitions,
            rules,
        });
        if let Some(p) = &policy {
            report.extend(crate::lint::lint(p));
        }
        report.sort();
        (policy, report)
    }
}

/// Check that each rule names defined partitions and tags.
pub fn check_rule_names(rules: &[Rule], partitions: &[Partition]) -> Vec<Diagnostic> {
    let names: BTreeSet<&str> = partitions.iter().map(|p| p.name.as_str()).collect();
    let tags: BTreeSet<&str> = partitions
        .iter()
        .flat_map(|p| p.tags.iter().map(String::as_str))
        .collect();
    let mut diags = Vec::new();
    for rule in rules {
        for (name, col) in rule.named_partitions() {
            if !names.contains(name) {
                diags.push(Diagnostic::error(
                    rule.location(col),
                    format!("rule names partition `{name}`, which is not defined"),
                    hint_names(
                        name,
                        names.iter().copied(),
                        "define it in partitions.toml or use @anyvm, @tag:T, @type:T",
                    ),
                ));
            }
        }
        for (tag, col) in rule.named_tags() {
            if !tags.contains(tag) {
                diags.push(Diagnostic::error(
                    rule.location(col),
                    format!("rule names tag `{tag}`, which no partition has"),
                    hint_names(
                        tag,
                        tags.iter().copied(),
                        "add it to a partition's `tags` in partitions.toml",
                    ),
                ));
            }
        }
    }
    diags
}

impl Policy {
    /// Load and check a policy directory; any error fails the load with the full report.
    pub fn load(dir: &Path) -> Result<(Policy, Report), LoadError> {
        let sources = Sources::read(dir)?;
        match sources.check() {
            (Some(p), report) => Ok((p, report)),
            (None, report) => Err(LoadError::Invalid {
                dir: dir.to_path_buf(),
                report,
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    pub fn partition(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The plain resolved configuration of one partition.
    pub fn spec(&self, name: &str) -> Option<PartitionSpec> {
        let p = self.partition(name)?;
        Some(PartitionSpec {
            name: p.name.clone(),
            label: p.label.name().to_string(),
            label_rgb: p.label.rgb(),
            kind: p.kind,
            memory_mib: p.memory_mib,
            vcpus: p.vcpus,
            display_width: p.display.0,
            display_height: p.display.1,
            image: p.image.clone(),
            root_template: match p.kind {
                Kind::Template => Some(p.name.clone()),
                _ => p.template.clone(),
            },
            cmdline_extra: p.cmdline.clone(),
            network: p.network.mode,
            autostart: p.autostart,
            restart: p.restart,
            cpu_weight: p.cpu_weight,
        })
    }

    /// Every partition resolved, in file order.
    pub fn specs(&self) -> Vec<PartitionSpec> {
        self.partitions
            .iter()
            .filter_map(|p| self.spec(&p.name))
            .collect()
    }

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
        let tgt = if target == "@dispvm" {
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
        for rule in &self.rules {
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
        let is_dispvm = who == "@dispvm" || who.starts_with("@dispvm:");
        match pattern {
            Pattern::Any => true,
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
