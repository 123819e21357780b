//! An editable policy directory: load → edit → validate → save, keeping comments and
//! order (`toml_edit`), writing atomically with a backup, and never saving an invalid
//! policy.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

use crate::diag::{closest, Diagnostic, Report};
// Kept at its old path, `document::EDITABLE_FIELDS`, for callers that name it so.
pub use crate::fields::EDITABLE_FIELDS;
use crate::label::Label;
use crate::load::{
    check_rule_names, rule_file_order, LoadError, Sources, PARTITIONS_FILE, RULES_DIR, RULES_EXT,
};
use crate::network::{FirewallAction, FirewallRule};
use crate::partition::valid_name;
use crate::partitions_toml::parse_partitions;
use crate::policy::Policy;
use crate::request::Decision;
use crate::rules::parse_rules;

/// A value to put in a partition field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Bool(bool),
    Integer(i64),
    String(String),
    StringList(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("partition `{0}` is not defined")]
    UnknownPartition(String),
    #[error("partition `{0}` already exists")]
    PartitionExists(String),
    #[error(
        "`{name}` is not a valid partition name: use 1-31 lowercase letters, digits, `-` or `_`"
    )]
    BadName { name: String },
    #[error("`{field}` is not an editable partition field{hint}")]
    UnknownField { field: String, hint: String },
    #[error("partitions.toml has a syntax error, so fields cannot be edited one by one; fix the text first")]
    Unparsable,
    #[error("rule file name `{0}` must look like `NN-name.policy` with no directory part")]
    BadRuleFileName(String),
    #[error("rule file `{0}` does not exist")]
    UnknownRuleFile(String),
    #[error("the partition text must define exactly one `[partition.NAME]` table")]
    BadSnippet,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("not saved: the policy has errors:\n{0}")]
    Invalid(Report),
    #[error(
        "not saved: {path} already holds a policy; open it to edit it, or move it away to start from these files"
    )]
    TargetHoldsPolicy { path: PathBuf },
    #[error("not saved: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One rule file being edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFile {
    /// File name inside `policy.d/`, e.g. `50-default.policy`.
    pub name: String,
    pub text: String,
}

/// A policy directory open for editing.
#[derive(Debug)]
pub struct PolicyDocument {
    dir: PathBuf,
    partitions_text: String,
    partitions_doc: Option<DocumentMut>,
    rule_files: Vec<RuleFile>,
    saved: Sources,
    report: Report,
    policy: Option<Policy>,
}

fn rule_file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl PolicyDocument {
    /// Open `dir` for editing. Only I/O problems fail; invalid content loads and shows
    /// up in [`PolicyDocument::report`].
    pub fn load(dir: &Path) -> Result<PolicyDocument, LoadError> {
        let saved = Sources::read(dir)?;
        let mut doc = PolicyDocument {
            dir: dir.to_path_buf(),
            partitions_text: String::new(),
            partitions_doc: None,
            rule_files: Vec::new(),
            saved: saved.clone(),
            report: Report::default(),
            policy: None,
        };
        doc.reset_to(saved);
        Ok(doc)
    }

    fn reset_to(&mut self, sources: Sources) {
        self.partitions_text = sources.partitions.clone();
        self.partitions_doc = self.partitions_text.parse().ok();
        self.rule_files = sources
            .rule_files
            .iter()
            .map(|(p, t)| RuleFile {
                name: rule_file_name(p),
                text: t.clone(),
            })
            .collect();
        self.saved = sources;
        self.revalidate();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every error and lint warning for the current (possibly unsaved) content.
    pub fn report(&self) -> &Report {
        &self.report
    }

    pub fn is_valid(&self) -> bool {
        !self.report.has_errors()
    }

    /// The checked policy for the current content, if it has no errors.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    pub fn partitions_text(&self) -> &str {
        &self.partitions_text
    }

    pub fn partitions_path(&self) -> PathBuf {
        self.dir.join(PARTITIONS_FILE)
    }

    pub fn rule_files(&self) -> &[RuleFile] {
        &self.rule_files
    }

    pub fn rule_file_path(&self, name: &str) -> PathBuf {
        self.dir.join(RULES_DIR).join(name)
    }

    /// Partition names in file order, read from the editable document.
    pub fn partition_names(&self) -> Vec<String> {
        self.partitions_doc
            .as_ref()
            .and_then(|d| d.get("partition"))
            .and_then(Item::as_table)
            .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default()
    }

    /// Unsaved changes?
    pub fn is_dirty(&self) -> bool {
        self.current_sources() != self.saved
    }

    fn current_sources(&self) -> Sources {
        let mut files: Vec<(PathBuf, String)> = self
            .rule_files
            .iter()
            .map(|f| (self.rule_file_path(&f.name), f.text.clone()))
            .collect();
        files.sort_by_key(|(p, _)| rule_file_order(&rule_file_name(p)));
        Sources {
            dir: self.dir.clone(),
            partitions: self.partitions_text.clone(),
            rule_files: files,
        }
    }

    fn revalidate(&mut self) {
        let (policy, report) = self.current_sources().check();
        self.policy = policy;
        self.report = report;
    }

    fn after_doc_edit(&mut self) -> Report {
        if let Some(doc) = &self.partitions_doc {
            self.partitions_text = doc.to_string();
        }
        self.revalidate();
        self.report.clone()
    }

    fn partition_table(&mut self, name: &str) -> Result<&mut Table, EditError> {
        let doc = self.partitions_doc.as_mut().ok_or(EditError::Unparsable)?;
        doc.get_mut("partition")
            .and_then(Item::as_table_mut)
            .and_then(|t| t.get_mut(name))
            .and_then(Item::as_table_mut)
            .ok_or_else(|| EditError::UnknownPartition(name.to_string()))
    }

    fn check_field(field: &str) -> Result<(), EditError> {
        if EDITABLE_FIELDS.contains(&field) {
            return Ok(());
        }
        let hint = closest(field, EDITABLE_FIELDS.iter().copied())
            .map(|c| format!("; did you mean `{c}`?"))
            .unwrap_or_default();
        Err(EditError::UnknownField {
            field: field.to_string(),
            hint,
        })
    }

    /// Set one field of a partition, e.g. `("browser", "memory_mib", Integer(2048))` or
    /// `("vault", "clipboard.copy_out", Bool(false))`. The edit is kept even when it makes
    /// the policy invalid (the editor shows the errors); the returned report is the whole
    /// policy's, with file:line:column for each problem.
    pub fn set_partition_field(
        &mut self,
        partition: &str,
        field: &str,
        v: FieldValue,
    ) -> Result<Report, EditError> {
        Self::check_field(field)?;
        let table = self.partition_table(partition)?;
        let item = match v {
            FieldValue::Bool(b) => value(b),
            FieldValue::Integer(i) => value(i),
            FieldValue::String(s) => value(s),
            FieldValue::StringList(l) => value(l.into_iter().collect::<Array>()),
        };
        match field.split_once('.') {
            None => {
                table.insert(field, item);
            }
            Some((sub, key)) => {
                let entry = table
                    .entry(sub)
                    .or_insert_with(|| Item::Table(Table::new()));
                match entry {
                    Item::Table(t) => {
                        t.insert(key, item);
                    }
                    Item::Value(toml_edit::Value::InlineTable(t)) => {
                        if let Ok(v) = item.into_value() {
                            t.insert(key, v);
                        }
                    }
                    other => {
                        // Wrong type in the file: replace it with a proper table.
                        let mut t = Table::new();
                        t.insert(key, item);
                        *other = Item::Table(t);
                    }
                }
            }
        }
        Ok(self.after_doc_edit())
    }

    /// Remove a field so its default applies.
    pub fn unset_partition_field(
        &mut self,
        partition: &str,
        field: &str,
    ) -> Result<Report, EditError> {
        Self::check_field(field)?;
        let table = self.partition_table(partition)?;
        match field.split_once('.') {
            None => {
                table.remove(field);
            }
            Some((sub, key)) => match table.get_mut(sub) {
                Some(Item::Table(t)) => {
                    t.remove(key);
                }
                Some(Item::Value(toml_edit::Value::InlineTable(t))) => {
                    t.remove(key);
                }
                _ => {}
            },
        }
        Ok(self.after_doc_edit())
    }

    /// Replace a partition's firewall rules (their line/column fields are ignored).
    pub fn set_firewall_rules(
        &mut self,
        partition: &str,
        rules: &[FirewallRule],
    ) -> Result<Report, EditError> {
        let table = self.partition_table(partition)?;
        let network = table
            .entry("network")
            .or_insert_with(|| Item::Table(Table::new()));
        if !network.is_table() {
            *network = Item::Table(Table::new());
        }
        let Some(network) = network.as_table_mut() else {
            return Err(EditError::Unparsable);
        };
        let mut aot = ArrayOfTables::new();
        for r in rules {
            let mut t = Table::new();
            t.insert(
                "action",
                value(match r.action {
                    FirewallAction::Allow => "allow",
                    FirewallAction::Deny => "deny",
                }),
            );
            t.insert("protocol", value(r.protocol.name()));
            t.insert("destination", value(r.destination.to_string()));
            if !r.ports.is_empty() {
                let ports: Array = r
                    .ports
                    .iter()
                    .map(|p| -> toml_edit::Value {
                        if p.first == p.last {
                            i64::from(p.first).into()
                        } else {
                            p.to_string().into()
                        }
                    })
                    .collect();
                t.insert("ports", value(ports));
            }
            aot.push(t);
        }
        if rules.is_empty() {
            network.remove("rule");
        } else {
            network.insert("rule", Item::ArrayOfTables(aot));
        }
        Ok(self.after_doc_edit())
    }

    /// Add a partition with a label and defaults for everything else.
    pub fn add_partition(&mut self, name: &str, label: Label) -> Result<Report, EditError> {
        let mut t = Table::new();
        t.insert("label", value(label.name()));
        let mut net = Table::new();
        net.insert("mode", value("offline"));
        t.insert("network", Item::Table(net));
        self.insert_new_partition(name, t)
    }

    /// `[partition.NAME]` = `table`, refusing a bad or taken name.
    fn insert_new_partition(&mut self, name: &str, table: Table) -> Result<Report, EditError> {
        if !valid_name(name) {
            return Err(EditError::BadName {
                name: name.to_string(),
            });
        }
        let doc = self.partitions_doc.as_mut().ok_or(EditError::Unparsable)?;
        let parts = doc.entry("partition").or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        let parts = parts.as_table_mut().ok_or(EditError::Unparsable)?;
        if parts.contains_key(name) {
            return Err(EditError::PartitionExists(name.to_string()));
        }
        parts.insert(name, Item::Table(table));
        Ok(self.after_doc_edit())
    }

    /// Partition `name`'s tables as a standalone `partitions.toml` text (for export).
    pub fn partition_snippet(&self, name: &str) -> Result<String, EditError> {
        let doc = self.partitions_doc.as_ref().ok_or(EditError::Unparsable)?;
        let table = doc
            .get("partition")
            .and_then(Item::as_table)
            .and_then(|t| t.get(name))
            .and_then(Item::as_table)
            .ok_or_else(|| EditError::UnknownPartition(name.to_string()))?;
        let mut out = DocumentMut::new();
        let mut parts = Table::new();
        parts.set_implicit(true);
        parts.insert(name, Item::Table(table.clone()));
        out.insert("partition", Item::Table(parts));
        Ok(out.to_string())
    }

    /// Add the one partition a [`PolicyDocument::partition_snippet`] text defines, under
    /// `name`. Refuses a clash; the result is validated like any edit (see the report).
    pub fn insert_partition_snippet(
        &mut self,
        name: &str,
        snippet: &str,
    ) -> Result<Report, EditError> {
        let imported: DocumentMut = snippet.parse().map_err(|_| EditError::BadSnippet)?;
        let tables = imported
            .get("partition")
            .and_then(Item::as_table)
            .ok_or(EditError::BadSnippet)?;
        let mut entries = tables.iter();
        let (Some((_, Item::Table(table))), None) = (entries.next(), entries.next()) else {
            return Err(EditError::BadSnippet);
        };
        self.insert_new_partition(name, table.clone())
    }

    /// Every rule (in evaluation order) that names partition `name` as its source, its
    /// target, or its redirect / default target.
    pub fn rules_naming(&self, name: &str) -> Vec<crate::rules::Rule> {
        let mut out = Vec::new();
        for f in &self.rule_files {
            let (rules, _) = parse_rules(&self.rule_file_path(&f.name), &f.text);
            out.extend(
                rules
                    .into_iter()
                    .filter(|r| r.named_partitions().iter().any(|(n, _)| *n == name)),
            );
        }
        out
    }

    pub fn remove_partition(&mut self, name: &str) -> Result<Report, EditError> {
        let doc = self.partitions_doc.as_mut().ok_or(EditError::Unparsable)?;
        let removed = doc
            .get_mut("partition")
            .and_then(Item::as_table_mut)
            .and_then(|t| t.remove(name));
        if removed.is_none() {
            return Err(EditError::UnknownPartition(name.to_string()));
        }
        Ok(self.after_doc_edit())
    }

    /// Replace the whole text of `partitions.toml` (raw editing).
    pub fn set_partitions_text(&mut self, text: &str) -> Report {
        self.partitions_text = text.to_string();
        self.partitions_doc = text.parse().ok();
        self.revalidate();
        self.report.clone()
    }

    fn check_rule_file_name(name: &str) -> Result<(), EditError> {
        let ok = !name.contains('/')
            && !name.starts_with('.')
            && Path::new(name).extension().is_some_and(|e| e == RULES_EXT);
        if ok {
            Ok(())
        } else {
            Err(EditError::BadRuleFileName(name.to_string()))
        }
    }

    /// Replace (or create) the rule file `name` in `policy.d/`.
    pub fn set_rule_file_text(&mut self, name: &str, text: &str) -> Result<Report, EditError> {
        Self::check_rule_file_name(name)?;
        match self.rule_files.iter_mut().find(|f| f.name == name) {
            Some(f) => f.text = text.to_string(),
            None => self.rule_files.push(RuleFile {
                name: name.to_string(),
                text: text.to_string(),
            }),
        }
        self.revalidate();
        Ok(self.report.clone())
    }

    pub fn remove_rule_file(&mut self, name: &str) -> Result<Report, EditError> {
        let before = self.rule_files.len();
        self.rule_files.retain(|f| f.name != name);
        if self.rule_files.len() == before {
            return Err(EditError::UnknownRuleFile(name.to_string()));
        }
        self.revalidate();
        Ok(self.report.clone())
    }

    /// Check one rule file's text on its own (syntax, and names against the current
    /// partitions) without changing the document: for inline errors while typing.
    pub fn check_rule_text(&self, name: &str, text: &str) -> Vec<Diagnostic> {
        let path = self.rule_file_path(name);
        let (rules, mut diags) = parse_rules(&path, text);
        if let Some(p) = &self.policy {
            diags.extend(check_rule_names(&rules, p.partitions()));
        } else {
            let (parts, pdiags) = parse_partitions(&self.partitions_path(), &self.partitions_text);
            if !pdiags.iter().any(|d| d.message.starts_with("TOML syntax")) {
                diags.extend(check_rule_names(&rules, &parts));
            }
        }
        diags.sort_by(|a, b| a.location.cmp(&b.location));
        diags
    }

    /// "What if": how would `service` (optionally `service+arg`) from `from` to `to` be
    /// decided by the current, unsaved content? Errors if the content is invalid.
    pub fn what_if(&self, service: &str, from: &str, to: &str) -> Result<Decision, Report> {
        match &self.policy {
            Some(p) => Ok(p.what_if(service, from, to)),
            None => Err(self.report.clone()),
        }
    }

    /// Save every changed file atomically, keeping the previous version as `<file>.bak`.
    /// Refuses (and writes nothing) when the policy has errors.
    pub fn save(&mut self) -> Result<Report, SaveError> {
        self.revalidate();
        if self.report.has_errors() {
            return Err(SaveError::Invalid(self.report.clone()));
        }
        let current = self.current_sources();
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SaveError::Write { path, source }
        };
        let ppath = self.partitions_path();
        if current.partitions != self.saved.partitions {
            write_atomic(&ppath, &current.partitions).map_err(werr(&ppath))?;
        }
        let rdir = self.dir.join(RULES_DIR);
        if !current.rule_files.is_empty() {
            fs::create_dir_all(&rdir).map_err(werr(&rdir))?;
        }
        for (path, text) in &current.rule_files {
            let old = self.saved.rule_files.iter().find(|(p, _)| p == path);
            if old.is_none_or(|(_, t)| t != text) {
                write_atomic(path, text).map_err(werr(path))?;
            }
        }
        for (path, _) in &self.saved.rule_files {
            if !current.rule_files.iter().any(|(p, _)| p == path) {
                // A removed rule file is kept as its backup, not deleted.
                fs::rename(path, backup_path(path)).map_err(werr(path))?;
            }
        }
        tracing::info!(dir = %self.dir.display(), "policy saved");
        self.saved = current;
        Ok(self.report.clone())
    }

    /// Save into `dir` instead of the directory this was read from (the user's config
    /// directory, when the editor opened the installed or source-tree defaults): every
    /// file is written there, the defaults are never touched, and from then on this
    /// document is `dir`'s. Refuses a `dir` that already holds a policy (its files would
    /// mix with these). On failure the document stays the old directory's.
    pub fn save_to(&mut self, dir: &Path) -> Result<Report, SaveError> {
        if dir == self.dir {
            return self.save();
        }
        let holds_policy = dir.join(PARTITIONS_FILE).exists()
            || fs::read_dir(dir.join(RULES_DIR)).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    Path::new(&e.file_name())
                        .extension()
                        .is_some_and(|x| x == RULES_EXT)
                })
            });
        if holds_policy {
            return Err(SaveError::TargetHoldsPolicy {
                path: dir.to_path_buf(),
            });
        }
        fs::create_dir_all(dir).map_err(|source| SaveError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let old_dir = std::mem::replace(&mut self.dir, dir.to_path_buf());
        // Nothing saved there yet: every file is written, none renamed away.
        let old_saved = std::mem::replace(
            &mut self.saved,
            Sources {
                dir: dir.to_path_buf(),
                partitions: String::new(),
                rule_files: Vec::new(),
            },
        );
        match self.save() {
            Ok(report) => Ok(report),
            Err(e) => {
                self.dir = old_dir;
                self.saved = old_saved;
                self.revalidate();
                Err(e)
            }
        }
    }

    /// Throw away unsaved edits and reload from disk.
    pub fn revert(&mut self) -> Result<(), LoadError> {
        let sources = Sources::read(&self.dir)?;
        self.reset_to(sources);
        Ok(())
    }
}

/// `<file>.bak` beside the file.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".bak");
    PathBuf::from(s)
}

/// Write `contents` to `path` so that readers see the old file or the new one, never a
/// mix: temp file in the same directory, fsync, backup of the old file, rename, fsync dir.
pub fn write_atomic(path: &Path, contents: &str) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = rule_file_name(path);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = fs::metadata(path) {
            fs::set_permissions(&tmp, meta.permissions())?;
            fs::copy(path, backup_path(path))?;
        }
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
