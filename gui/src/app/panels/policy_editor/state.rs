//! Policy editor panel: partition settings as forms, rule files as text, live validation by
//! `isolation-policy` with errors at the field or line, a "what if" box, atomic save only
//! when valid, and revert.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use egui::{Color32, RichText, Ui};
use isolation_policy::{Diagnostic, FieldValue, Partition, PolicyDocument, SaveError, Verdict};

/// How a form field's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    Integer,
    Text,
    /// Empty text removes the field so its default applies.
    OptionalText,
    List,
    Choice(&'static [&'static str]),
    Flag,
}

struct FieldSpec {
    key: &'static str,
    label: &'static str,
    kind: FieldKind,
}

const LABELS: &[&str] = &[
    "red", "orange", "yellow", "green", "gray", "blue", "purple", "black",
];

const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        key: "label",
        label: "Label",
        kind: FieldKind::Choice(LABELS),
    },
    FieldSpec {
        key: "kind",
        label: "Kind",
        kind: FieldKind::Choice(&["app", "template", "disposable"]),
    },
    FieldSpec {
        key: "memory_mib",
        label: "Memory (MiB)",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        key: "vcpus",
        label: "vCPUs",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        key: "cpu_weight",
        label: "CPU weight",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        key: "display",
        label: "Display (WxH)",
        kind: FieldKind::Text,
    },
    FieldSpec {
        key: "image",
        label: "Image",
        kind: FieldKind::Text,
    },
    FieldSpec {
        key: "template",
        label: "Template",
        kind: FieldKind::OptionalText,
    },
    FieldSpec {
        key: "cmdline",
        label: "Kernel command line",
        kind: FieldKind::Text,
    },
    FieldSpec {
        key: "tags",
        label: "Tags (comma separated)",
        kind: FieldKind::List,
    },
    FieldSpec {
        key: "autostart",
        label: "Start with the app",
        kind: FieldKind::Flag,
    },
    FieldSpec {
        key: "restart",
        label: "Restart",
        kind: FieldKind::Choice(&["never", "on-crash"]),
    },
    FieldSpec {
        key: "network.mode",
        label: "Network",
        kind: FieldKind::Choice(&["offline", "nat"]),
    },
    FieldSpec {
        key: "network.dns",
        label: "DNS through the NAT",
        kind: FieldKind::Flag,
    },
    FieldSpec {
        key: "clipboard.copy_out",
        label: "Clipboard: copy out",
        kind: FieldKind::Flag,
    },
    FieldSpec {
        key: "clipboard.paste_in",
        label: "Clipboard: paste in",
        kind: FieldKind::Flag,
    },
    FieldSpec {
        key: "file_transfer.send",
        label: "Files: send",
        kind: FieldKind::Flag,
    },
    FieldSpec {
        key: "file_transfer.receive",
        label: "Files: receive",
        kind: FieldKind::Flag,
    },
];

/// The form's current text for each field of the selected partition.
#[derive(Debug, Default, Clone, PartialEq)]
struct Form {
    partition: String,
    values: BTreeMap<&'static str, String>,
    /// Problems found before `isolation-policy` could be asked (e.g. "12x" is no number).
    local_errors: BTreeMap<&'static str, String>,
}

impl Form {
    fn from_partition(p: &Partition) -> Self {
        let mut values = BTreeMap::new();
        let mut put = |k: &'static str, v: String| {
            values.insert(k, v);
        };
        put("label", p.label.name().to_string());
        put("kind", p.kind.name().to_string());
        put("memory_mib", p.memory_mib.to_string());
        put("vcpus", p.vcpus.to_string());
        put("cpu_weight", p.cpu_weight.to_string());
        put("display", format!("{}x{}", p.display.0, p.display.1));
        put("image", p.image.clone());
        put("template", p.template.clone().unwrap_or_default());
        put("cmdline", p.cmdline.clone());
        put(
            "tags",
            p.tags.iter().cloned().collect::<Vec<_>>().join(", "),
        );
        put("autostart", p.autostart.to_string());
        put("restart", p.restart.name().to_string());
        put("network.mode", p.network.mode.name().to_string());
        put("network.dns", p.network.dns.to_string());
        put("clipboard.copy_out", p.clipboard_copy_out.to_string());
        put("clipboard.paste_in", p.clipboard_paste_in.to_string());
        put("file_transfer.send", p.file_send.to_string());
        put("file_transfer.receive", p.file_receive.to_string());
        Self {
            partition: p.name.clone(),
            values,
            local_errors: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct WhatIf {
    service: String,
    from: String,
    to: String,
}

/// The outcome of the last save or revert, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Saved(String),
    Refused(String),
    Reverted,
    Failed(String),
}

#[derive(Debug, Default)]
pub struct PolicyEditor {
    doc: Option<PolicyDocument>,
    load_error: Option<String>,
    form: Option<Form>,
    rule_file: Option<String>,
    rule_text: String,
    what_if: WhatIf,
    new_partition: String,
    edit_error: Option<String>,
    pub status: Option<Status>,
}

impl PolicyEditor {
    /// Opens the policy directory for editing. Invalid content still opens (and shows its
    /// errors); only I/O problems leave the editor empty with the reason.
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

    pub fn document(&self) -> Option<&PolicyDocument> {
        self.doc.as_ref()
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
        let Some(spec) = FIELDS.iter().find(|f| f.key == key) else {
            return;
        };
        let (Some(doc), Some(form)) = (self.doc.as_mut(), self.form.as_mut()) else {
            return;
        };
        form.values.insert(key, text.to_string());
        form.local_errors.remove(key);
        let value = match parse_field(spec.kind, text) {
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
        self.status = Some(match doc.save() {
            Ok(_) => Status::Saved(format!("Saved to {}", doc.dir().display())),
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
    fn other_errors(&self) -> Vec<&Diagnostic> {
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
                            .is_some_and(|k| FIELDS.iter().any(|s| s.key == k))
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

    pub fn show(&mut self, ui: &mut Ui) {
        ui.heading("Policy");
        if let Some(e) = &self.load_error {
            ui.colored_label(ui.visuals().error_fg_color, e);
            return;
        }
        if self.doc.is_none() {
            ui.label("No policy directory opened.");
            return;
        }
        self.toolbar(ui);
        egui::ScrollArea::vertical()
            .id_salt("policy_scroll")
            .show(ui, |ui| {
                egui::CollapsingHeader::new("Partition settings")
                    .default_open(true)
                    .show(ui, |ui| self.partition_form(ui));
                egui::CollapsingHeader::new("Rules")
                    .default_open(true)
                    .show(ui, |ui| self.rules_view(ui));
                egui::CollapsingHeader::new("What if")
                    .default_open(true)
                    .show(ui, |ui| self.what_if_box(ui));
            });
    }

    fn toolbar(&mut self, ui: &mut Ui) {
        let Some(doc) = &self.doc else { return };
        let valid = doc.is_valid();
        let dirty = doc.is_dirty();
        let errors = doc.report().errors().count();
        let dir = doc.dir().display().to_string();
        ui.weak(dir);
        ui.horizontal(|ui| {
            if ui.add_enabled(dirty, egui::Button::new("Save")).clicked() {
                self.save();
            }
            if ui.add_enabled(dirty, egui::Button::new("Revert")).clicked() {
                self.revert();
            }
            if valid {
                ui.colored_label(Color32::from_rgb(0x4e, 0x9a, 0x06), "Valid");
            } else {
                ui.colored_label(
                    ui.visuals().error_fg_color,
                    format!("{errors} error(s): cannot save"),
                );
            }
            if dirty {
                ui.weak("unsaved changes");
            }
        });
        match &self.status {
            Some(Status::Saved(s)) => {
                ui.colored_label(Color32::from_rgb(0x4e, 0x9a, 0x06), s);
            }
            Some(Status::Refused(s)) | Some(Status::Failed(s)) => {
                ui.colored_label(ui.visuals().error_fg_color, s);
            }
            Some(Status::Reverted) => {
                ui.weak("Reverted to the saved policy");
            }
            None => {}
        }
        if let Some(e) = &self.edit_error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
    }

    fn partition_form(&mut self, ui: &mut Ui) {
        let Some(doc) = &self.doc else { return };
        let names = doc.partition_names();
        let current = self.form.as_ref().map(|f| f.partition.clone());
        let mut pick = None;
        ui.horizontal_wrapped(|ui| {
            for name in &names {
                if ui
                    .selectable_label(current.as_ref() == Some(name), format!("[{name}]"))
                    .clicked()
                {
                    pick = Some(name.clone());
                }
            }
        });
        if let Some(name) = pick {
            self.select(&name);
        }
        self.add_remove(ui);
        for d in self.other_errors() {
            ui.colored_label(ui.visuals().error_fg_color, describe(d));
        }
        if self.form.is_none() {
            ui.label("The partitions file cannot be read as a form; fix its errors first.");
            return;
        }
        egui::Grid::new("partition_form")
            .num_columns(2)
            .spacing([8.0, 4.0])
            .show(ui, |ui| {
                for spec in FIELDS {
                    self.field_row(ui, spec);
                }
            });
    }

    fn add_remove(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            let label = ui.label("New partition:");
            ui.add(egui::TextEdit::singleline(&mut self.new_partition).desired_width(100.0))
                .labelled_by(label.id);
            if ui.button("Add").clicked() {
                let name = self.new_partition.trim().to_string();
                if let Some(doc) = self.doc.as_mut() {
                    match doc.add_partition(&name, isolation_policy::Label::Gray) {
                        Ok(_) => {
                            self.edit_error = None;
                            self.new_partition.clear();
                            self.form = form_for(doc, &name);
                        }
                        Err(e) => self.edit_error = Some(e.to_string()),
                    }
                }
            }
            if let Some(name) = self.form.as_ref().map(|f| f.partition.clone()) {
                if ui.button(format!("Remove [{name}]")).clicked() {
                    if let Some(doc) = self.doc.as_mut() {
                        self.edit_error = doc.remove_partition(&name).err().map(|e| e.to_string());
                    }
                    self.form = None;
                    self.reset_views();
                }
            }
        });
    }

    fn field_row(&mut self, ui: &mut Ui, spec: &FieldSpec) {
        let Some(form) = &self.form else { return };
        let mut text = form.values.get(spec.key).cloned().unwrap_or_default();
        let label = ui.label(spec.label);
        let changed = ui
            .vertical(|ui| {
                let changed = match spec.kind {
                    FieldKind::Flag => {
                        let mut on = text == "true";
                        let r = ui.checkbox(&mut on, "").labelled_by(label.id);
                        text = on.to_string();
                        r.changed()
                    }
                    FieldKind::Choice(options) => {
                        let before = text.clone();
                        let combo = egui::ComboBox::from_id_salt(spec.key)
                            .selected_text(text.clone())
                            .show_ui(ui, |ui| {
                                for o in options {
                                    ui.selectable_value(&mut text, (*o).to_string(), *o);
                                }
                            });
                        let _ = combo.response.labelled_by(label.id);
                        before != text
                    }
                    _ => ui
                        .add(egui::TextEdit::singleline(&mut text).desired_width(180.0))
                        .labelled_by(label.id)
                        .changed(),
                };
                for e in self.field_errors(spec.key) {
                    ui.label(
                        RichText::new(format!("Error {e}")).color(ui.visuals().error_fg_color),
                    );
                }
                changed
            })
            .inner;
        ui.end_row();
        if changed {
            self.set_field(spec.key, &text);
        }
    }

    fn rules_view(&mut self, ui: &mut Ui) {
        let Some(doc) = &self.doc else { return };
        let files: Vec<String> = doc.rule_files().iter().map(|f| f.name.clone()).collect();
        let mut pick = None;
        ui.horizontal_wrapped(|ui| {
            for f in &files {
                if ui
                    .selectable_label(self.rule_file.as_ref() == Some(f), f)
                    .clicked()
                {
                    pick = Some(f.clone());
                }
            }
        });
        if let Some(f) = pick {
            self.rule_file = Some(f);
            self.form_keep_and_reload_rules();
        }
        if self.rule_file.is_none() {
            ui.label("No rule files.");
            return;
        }
        let errors = self.rule_errors();
        let error_lines: Vec<usize> = errors.keys().copied().collect();
        let error_bg = Color32::from_rgba_unmultiplied(0xcc, 0x00, 0x00, 60);
        let mut layouter = |ui: &Ui, buf: &dyn egui::TextBuffer, wrap_width: f32| {
            let job = highlight_lines(ui, buf.as_str(), &error_lines, error_bg, wrap_width);
            ui.ctx().fonts_mut(|f| f.layout_job(job))
        };
        let mut text = self.rule_text.clone();
        let label = ui.label("Rule text");
        let response = ui
            .add(
                egui::TextEdit::multiline(&mut text)
                    .code_editor()
                    .desired_rows(8)
                    .desired_width(f32::INFINITY)
                    .layouter(&mut layouter),
            )
            .labelled_by(label.id);
        if response.changed() {
            self.set_rule_text(&text);
        }
        for (line, msgs) in self.rule_errors() {
            for m in msgs {
                ui.label(
                    RichText::new(format!("line {line}: {m}")).color(ui.visuals().error_fg_color),
                );
            }
        }
    }

    fn form_keep_and_reload_rules(&mut self) {
        let Some(doc) = &self.doc else { return };
        self.rule_text = self
            .rule_file
            .as_ref()
            .and_then(|n| doc.rule_files().iter().find(|f| &f.name == n))
            .map(|f| f.text.clone())
            .unwrap_or_default();
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

    fn what_if_box(&mut self, ui: &mut Ui) {
        egui::Grid::new("what_if").num_columns(2).show(ui, |ui| {
            for (name, value) in [
                ("Service", &mut self.what_if.service),
                ("From", &mut self.what_if.from),
                ("To", &mut self.what_if.to),
            ] {
                let label = ui.label(name);
                ui.add(egui::TextEdit::singleline(value).desired_width(200.0))
                    .labelled_by(label.id);
                ui.end_row();
            }
        });
        match self.what_if_answer() {
            Some(Ok(answer)) => {
                ui.label(RichText::new(answer).strong());
            }
            Some(Err(e)) => {
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
            None => {
                ui.weak("e.g. bulkhead.Clipboard from work to browser");
            }
        }
    }
}

fn form_for(doc: &PolicyDocument, name: &str) -> Option<Form> {
    doc.policy()?.partition(name).map(Form::from_partition)
}

fn describe(d: &Diagnostic) -> String {
    let mut s = format!("{}:{}: {}", d.location.line, d.location.column, d.message);
    if !d.hint.is_empty() {
        s.push_str(&format!(" — {}", d.hint));
    }
    s
}

/// Turns form text into the value `isolation-policy` takes; `Ok(None)` removes the field.
fn parse_field(kind: FieldKind, text: &str) -> Result<Option<FieldValue>, String> {
    let t = text.trim();
    Ok(Some(match kind {
        FieldKind::Integer => FieldValue::Integer(
            t.parse::<i64>()
                .map_err(|_| format!("`{t}` is not a whole number"))?,
        ),
        FieldKind::Flag => FieldValue::Bool(t == "true"),
        FieldKind::OptionalText if t.is_empty() => return Ok(None),
        FieldKind::Text | FieldKind::OptionalText | FieldKind::Choice(_) => {
            FieldValue::String(t.to_string())
        }
        FieldKind::List => FieldValue::StringList(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ),
    }))
}

/// Which field of partition `name` is written on `line` (1-based) of partitions.toml,
/// as a dotted key like `memory_mib` or `network.mode`.
pub fn field_at_line(text: &str, name: &str, line: usize) -> Option<String> {
    let own = format!("partition.{name}");
    let mut prefix: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('[') {
            let header = l.trim_matches(|c| c == '[' || c == ']').trim();
            prefix = if header == own {
                Some(String::new())
            } else {
                header
                    .strip_prefix(&format!("{own}."))
                    .map(|sub| format!("{sub}."))
            };
        }
        if i + 1 != line {
            continue;
        }
        let prefix = prefix?;
        let (key, _) = l.split_once('=')?;
        return Some(format!("{prefix}{}", key.trim()));
    }
    None
}

/// The rule text laid out as code with the lines that have errors on a red background.
fn highlight_lines(
    ui: &Ui,
    text: &str,
    error_lines: &[usize],
    error_bg: Color32,
    wrap_width: f32,
) -> egui::text::LayoutJob {
    let mut job = egui::text::LayoutJob::default();
    job.wrap.max_width = wrap_width;
    let font = egui::TextStyle::Monospace.resolve(ui.style());
    let color = ui.visuals().text_color();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let mut format = egui::TextFormat::simple(font.clone(), color);
        if error_lines.contains(&(i + 1)) {
            format.background = error_bg;
            format.underline = egui::Stroke::new(1.0, Color32::from_rgb(0xcc, 0, 0));
        }
        job.append(line, 0.0, format);
    }
    job
}

/// The default rule and partition files shipped in the source tree, for tests.
pub fn source_tree_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[partition.work]\nlabel = \"blue\"\nmemory_mib = 9\n\n[partition.work.network]\nmode = \"nat\"\n\n[partition.mail]\nvcpus = 1\n";

    #[test]
    fn field_at_line_names_top_level_and_sub_table_fields() {
        assert_eq!(
            field_at_line(TEXT, "work", 3).as_deref(),
            Some("memory_mib")
        );
        assert_eq!(
            field_at_line(TEXT, "work", 6).as_deref(),
            Some("network.mode")
        );
        assert_eq!(field_at_line(TEXT, "work", 9), None, "line 9 is mail's");
        assert_eq!(field_at_line(TEXT, "mail", 9).as_deref(), Some("vcpus"));
    }

    #[test]
    fn integer_fields_refuse_text_with_the_value_named() {
        assert_eq!(
            parse_field(FieldKind::Integer, "12x"),
            Err("`12x` is not a whole number".to_string())
        );
        assert_eq!(
            parse_field(FieldKind::Integer, " 64 "),
            Ok(Some(FieldValue::Integer(64)))
        );
    }

    #[test]
    fn empty_optional_text_removes_the_field() {
        assert_eq!(parse_field(FieldKind::OptionalText, ""), Ok(None));
    }

    #[test]
    fn lists_split_on_commas_and_drop_blanks() {
        assert_eq!(
            parse_field(FieldKind::List, "online, ,work"),
            Ok(Some(FieldValue::StringList(vec![
                "online".into(),
                "work".into()
            ])))
        );
    }
}
