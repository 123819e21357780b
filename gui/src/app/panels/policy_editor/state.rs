//! The policy editor's state and what it does: open a policy directory, edit partition
//! fields and rule files through [`PolicyDocument`] with live validation, save only when
//! valid, revert, and answer "what if" questions. No drawing here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use isolation_policy::{Diagnostic, PolicyDocument, SaveError, Verdict};

use super::form::{describe, field_at_line, form_fields, parse_field, Form};

#[derive(Debug, Default)]
pub(super) struct WhatIf {
    pub(super) service: String,
    pub(super) from: String,
    pub(super) to: String,
}

/// The outcome of the last save or revert, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Saved(String),
    Refused(String),
    Reverted,
    Failed(String),
}

/// What the user did in the panel; [`PolicyEditor::apply`] carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditorAction {
    Save,
    Revert,
    SelectPartition(String),
    /// Add the partition named in the "New partition" box.
    AddPartition,
    RemovePartition(String),
    SetField(&'static str, String),
    SelectRuleFile(String),
    SetRuleText(String),
}

#[derive(Debug, Default)]
pub struct PolicyEditor {
    pub(super) doc: Option<PolicyDocument>,
    pub(super) load_error: Option<String>,
    pub(super) form: Option<Form>,
    pub(super) rule_file: Option<String>,
    pub(super) rule_text: String,
    pub(super) what_if: WhatIf,
    pub(super) new_partition: String,
    pub(super) edit_error: Option<String>,
    pub status: Option<Status>,
    /// Where saves go when not where the policy was read from: the user's directory,
    /// so the installed or source-tree defaults are never written.
    save_dir: Option<PathBuf>,
    /// Successful saves so far: the app applies the saved policy to running partitions
    /// (firewall rules, CPU and disk shares) when this changes.
    pub saves: u64,
}

impl PolicyEditor {
    /// The directory the editor saves to.
    pub fn dir(&self) -> Option<&Path> {
        self.doc.as_ref().map(|d| d.dir())
    }

    /// Opens `dir` for editing, saving into `save_dir` (the user's config directory,
    /// [`isolation_policy::policy_save_dir`]): when `dir` is elsewhere (the installed or
    /// source-tree defaults), the first save copies the whole policy there with the edit
    /// and the editor works on that copy from then on; `dir` is never written. `None`
    /// (no home directory to find it by): saves go to `dir`.
    pub fn open_saving_to(dir: &Path, save_dir: Option<PathBuf>) -> Self {
        let mut editor = Self::open(dir);
        editor.save_dir = save_dir;
        editor
    }

    /// Reads the policy again from `dir` (something else wrote it: an import), keeping
    /// where saves go; refused while a partition's form is open, so no edit is lost.
    pub fn reopen(&mut self, dir: &Path) -> bool {
        if self.form.is_some() {
            return false;
        }
        let saves = self.saves;
        let save_dir = self.save_dir.take();
        *self = Self::open_saving_to(dir, save_dir);
        self.saves = saves;
        true
    }

    /// Opens the policy directory for editing, saving into it. Invalid content still
    /// opens (and shows its errors); only I/O problems leave the editor empty with the
    /// reason.
    pub fn open(dir: &Path) -> Self {
        let mut editor = Self::default();
        match PolicyDocument::load(dir) {
            Ok(doc) => {
                editor.doc = Some(doc);
                editor.reset_views();
            }
            Err(e) => {
                editor.load_error = Some(format!("cannot open policy {}: {e}", dir.display()))
            }
        }
        editor
    }

    /// Where the next save goes (differs from [`PolicyEditor::dir`] until the defaults
    /// were first saved into the user's directory).
    pub fn save_target(&self) -> Option<&Path> {
        match (&self.save_dir, self.dir()) {
            (Some(to), Some(_)) => Some(to.as_path()),
            (None, dir) => dir,
            (Some(_), None) => None,
        }
    }

    pub fn document(&self) -> Option<&PolicyDocument> {
        self.doc.as_ref()
    }

    /// Carries out one thing the user did in the panel.
    pub fn apply(&mut self, action: EditorAction) {
        match action {
            EditorAction::Save => self.save(),
            EditorAction::Revert => self.revert(),
            EditorAction::SelectPartition(name) => self.select(&name),
            EditorAction::AddPartition => self.add_partition(),
            EditorAction::RemovePartition(name) => self.remove_partition(&name),
            EditorAction::SetField(key, text) => self.set_field(key, &text),
            EditorAction::SelectRuleFile(name) => self.select_rule_file(name),
            EditorAction::SetRuleText(text) => self.set_rule_text(&text),
        }
    }

    fn reset_views(&mut self) {
        let Some(doc) = &self.doc else { return };
        let keep = self.form.as_ref().map(|f| f.partition.clone());
        let names = doc.partition_names();
        let pick = keep
            .filter(|k| names.contains(k))
            .or_else(|| names.first().cloned());
        self.form = pick.and_then(|name| form_for(doc, &name));
        let rule = self
            .rule_file
            .clone()
            .filter(|n| doc.rule_files().iter().any(|f| &f.name == n))
            .or_else(|| doc.rule_files().first().map(|f| f.name.clone()));
        self.rule_text = rule
            .as_ref()
            .and_then(|n| doc.rule_files().iter().find(|f| &f.name == n))
            .map(|f| f.text.clone())
            .unwrap_or_default();
        self.rule_file = rule;
    }

    /// Selects a partition's settings form.
    pub fn select(&mut self, name: &str) {
        if let Some(doc) = &self.doc {
            self.form = form_for(doc, name);
        }
    }

    /// Sets one field from its text as the form would, validating live.
    pub fn set_field(&mut self, key: &'static str, text: &str) {
        let Some(field) = form_fields().find(|f| f.key == key) else {
            return;
        };
        let (Some(doc), Some(form)) = (self.doc.as_mut(), self.form.as_mut()) else {
            return;
        };
        form.values.insert(key, text.to_string());
        form.local_errors.remove(key);
        let value = match parse_field(field.kind, text) {
            Ok(v) => v,
            Err(msg) => {
                form.local_errors.insert(key, msg);
                return;
            }
        };
        let result = match value {
            Some(v) => doc.set_partition_field(&form.partition, key, v),
            None => doc.unset_partition_field(&form.partition, key),
        };
        self.edit_error = result.err().map(|e| e.to_string());
    }

    /// Adds a gray partition named as the "New partition" box says, and selects it.
    fn add_partition(&mut self) {
        let name = self.new_partition.trim().to_string();
        let Some(doc) = self.doc.as_mut() else { return };
        match doc.add_partition(&name, isolation_policy::Label::Gray) {
            Ok(_) => {
                self.edit_error = None;
                self.new_partition.clear();
                self.form = form_for(doc, &name);
            }
            Err(e) => self.edit_error = Some(e.to_string()),
        }
    }

    fn remove_partition(&mut self, name: &str) {
        if let Some(doc) = self.doc.as_mut() {
            self.edit_error = doc.remove_partition(name).err().map(|e| e.to_string());
        }
        self.form = None;
        self.reset_views();
    }

    /// Shows another rule file's text (the form keeps its partition).
    fn select_rule_file(&mut self, name: String) {
        self.rule_file = Some(name);
        let Some(doc) = &self.doc else { return };
        self.rule_text = self
            .rule_file
            .as_ref()
            .and_then(|n| doc.rule_files().iter().find(|f| &f.name == n))
            .map(|f| f.text.clone())
            .unwrap_or_default();
    }

    /// Replaces a rule file's text, validating live.
    pub fn set_rule_text(&mut self, text: &str) {
        self.rule_text = text.to_string();
        let (Some(doc), Some(name)) = (self.doc.as_mut(), self.rule_file.as_ref()) else {
            return;
        };
        self.edit_error = doc
            .set_rule_file_text(name, text)
            .err()
            .map(|e| e.to_string());
    }

    /// Saves atomically if, and only if, the whole policy is valid.
    pub fn save(&mut self) {
        let Some(doc) = self.doc.as_mut() else { return };
        let local = self.form.as_ref().map_or(0, |f| f.local_errors.len());
        if local > 0 {
            self.status = Some(Status::Refused(format!(
                "Not saved: {local} field(s) hold values that are not valid; nothing was written"
            )));
            return;
        }
        let result = match &self.save_dir {
            Some(to) if to != doc.dir() => doc.save_to(to),
            _ => doc.save(),
        };
        self.status = Some(match result {
            Ok(_) => {
                self.saves += 1;
                Status::Saved(format!("Saved to {}", doc.dir().display()))
            }
            Err(SaveError::Invalid(report)) => Status::Refused(format!(
                "Not saved: the policy has {} error(s); nothing was written",
                report.errors().count()
            )),
            Err(e) => Status::Failed(e.to_string()),
        });
    }

    /// Throws away unsaved edits.
    pub fn revert(&mut self) {
        let Some(doc) = self.doc.as_mut() else { return };
        self.status = Some(match doc.revert() {
            Ok(()) => Status::Reverted,
            Err(e) => Status::Failed(format!("revert failed: {e}")),
        });
        self.form = None;
        self.reset_views();
    }

    /// Errors for `key` of the form's partition: local parse errors, then the policy's.
    pub fn field_errors(&self, key: &str) -> Vec<String> {
        let (Some(doc), Some(form)) = (&self.doc, &self.form) else {
            return Vec::new();
        };
        let mut out: Vec<String> = form.local_errors.get(key).cloned().into_iter().collect();
        let path = doc.partitions_path();
        out.extend(
            doc.report()
                .diagnostics
                .iter()
                .filter(|d| d.location.file == path)
                .filter(|d| {
                    field_at_line(doc.partitions_text(), &form.partition, d.location.line)
                        .as_deref()
                        == Some(key)
                })
                .map(describe),
        );
        out
    }

    /// Errors that belong to no form field (other partitions, rule files, structure).
    pub(super) fn other_errors(&self) -> Vec<&Diagnostic> {
        let Some(doc) = &self.doc else {
            return Vec::new();
        };
        let path = doc.partitions_path();
        let rules = self.rule_file.as_ref().map(|n| doc.rule_file_path(n));
        doc.report()
            .diagnostics
            .iter()
            .filter(|d| {
                let in_form = d.location.file == path
                    && self.form.as_ref().is_some_and(|f| {
                        field_at_line(doc.partitions_text(), &f.partition, d.location.line)
                            .is_some_and(|k| form_fields().any(|s| s.key == k))
                    });
                let in_rules = Some(&d.location.file) == rules.as_ref();
                !in_form && !in_rules
            })
            .collect()
    }

    /// Diagnostics of the rule file being edited, by line.
    pub fn rule_errors(&self) -> BTreeMap<usize, Vec<String>> {
        let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let (Some(doc), Some(name)) = (&self.doc, &self.rule_file) else {
            return out;
        };
        let path = doc.rule_file_path(name);
        for d in doc.report().for_file(&path) {
            out.entry(d.location.line).or_default().push(describe(d));
        }
        out
    }

    /// The what-if answer for the current box contents, as the panel shows it.
    pub fn what_if_answer(&self) -> Option<Result<String, String>> {
        let doc = self.doc.as_ref()?;
        let w = &self.what_if;
        if w.service.trim().is_empty() || w.from.trim().is_empty() || w.to.trim().is_empty() {
            return None;
        }
        Some(
            match doc.what_if(w.service.trim(), w.from.trim(), w.to.trim()) {
                Ok(d) => {
                    let verdict = match &d.verdict {
                        Verdict::Allow { target: Some(t) } => format!("allow -> {t}"),
                        Verdict::Ask {
                            default_target: Some(t),
                        } => format!("ask (default {t})"),
                        v => v.word().to_string(),
                    };
                    let rule = d.rule.as_ref().map_or_else(
                        || "no rule matched (default deny)".to_string(),
                        |r| format!("rule {r}"),
                    );
                    Ok(format!("{verdict} — {rule}\n{}", d.explanation))
                }
                Err(report) => Err(format!(
                    "The policy has {} error(s); fix them to ask what-if questions",
                    report.errors().count()
                )),
            },
        )
    }

    pub fn set_what_if(&mut self, service: &str, from: &str, to: &str) {
        self.what_if = WhatIf {
            service: service.into(),
            from: from.into(),
            to: to.into(),
        };
    }
}

fn form_for(doc: &PolicyDocument, name: &str) -> Option<Form> {
    doc.policy()?.partition(name).map(Form::from_partition)
}

/// The default rule and partition files shipped in the source tree, for tests.
pub fn source_tree_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy")
}
