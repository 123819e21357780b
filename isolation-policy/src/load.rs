//! Loading a policy directory: read the files ([`Sources`]), parse and check them
//! together, and build the [`Policy`] only when nothing is wrong.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::diag::{hint_names, Diagnostic, Report};
use crate::partition::Partition;
use crate::partitions_toml;
use crate::policy::Policy;
use crate::rules::{self, Rule};

/// File name of the partition definitions inside a policy directory.
pub const PARTITIONS_FILE: &str = "partitions.toml";
/// Directory of rule files inside a policy directory.
pub const RULES_DIR: &str = "policy.d";
/// Extension of rule files.
pub const RULES_EXT: &str = "policy";

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
        let (partitions, diags) = partitions_toml::parse_partitions(&ppath, &self.partitions);
        report.extend(diags);
        let (settings, diags) = partitions_toml::parse_settings(&ppath, &self.partitions);
        report.extend(diags);
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
        let policy = (!report.has_errors())
            .then(|| Policy::new(self.dir.clone(), partitions, rules, settings));
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
}
