//! Drawing the policy editor. Every change the user makes becomes an [`EditorAction`],
//! applied at once (so the rest of the frame already shows its result).

use egui::{Color32, RichText, Ui};
use isolation_policy::{FieldKind, PartitionField};

use super::form::{describe, form_fields};
use super::state::{EditorAction, PolicyEditor, Status};

/// Colour of "Valid" and "Saved".
const OK_GREEN: Color32 = Color32::from_rgb(0x4e, 0x9a, 0x06);

impl PolicyEditor {
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
        match self.save_target().filter(|to| *to != doc.dir()) {
            Some(to) => {
                ui.weak(format!(
                    "{dir} (defaults: Save copies them to {} and saves there)",
                    to.display()
                ));
            }
            None => {
                ui.weak(dir);
            }
        }
        ui.horizontal(|ui| {
            if ui.add_enabled(dirty, egui::Button::new("Save")).clicked() {
                self.apply(EditorAction::Save);
            }
            if ui.add_enabled(dirty, egui::Button::new("Revert")).clicked() {
                self.apply(EditorAction::Revert);
            }
            if valid {
                ui.colored_label(OK_GREEN, "Valid");
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
                ui.colored_label(OK_GREEN, s);
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
            self.apply(EditorAction::SelectPartition(name));
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
                for field in form_fields() {
                    self.field_row(ui, field);
                }
            });
    }

    fn add_remove(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            let label = ui.label("New partition:");
            ui.add(egui::TextEdit::singleline(&mut self.new_partition).desired_width(100.0))
                .labelled_by(label.id);
            if ui.button("Add").clicked() {
                self.apply(EditorAction::AddPartition);
            }
            if let Some(name) = self.form.as_ref().map(|f| f.partition.clone()) {
                if ui.button(format!("Remove [{name}]")).clicked() {
                    self.apply(EditorAction::RemovePartition(name));
                }
            }
        });
    }

    fn field_row(&mut self, ui: &mut Ui, field: &'static PartitionField) {
        let Some(form) = &self.form else { return };
        let mut text = form.values.get(field.key).cloned().unwrap_or_default();
        let label = ui.label(field.label);
        let changed = ui
            .vertical(|ui| {
                let changed = match field.kind {
                    FieldKind::Flag => {
                        let mut on = text == "true";
                        let r = ui.checkbox(&mut on, "").labelled_by(label.id);
                        text = on.to_string();
                        r.changed()
                    }
                    FieldKind::Choice(options) => {
                        let before = text.clone();
                        let combo = egui::ComboBox::from_id_salt(field.key)
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
                for e in self.field_errors(field.key) {
                    ui.label(
                        RichText::new(format!("Error {e}")).color(ui.visuals().error_fg_color),
                    );
                }
                changed
            })
            .inner;
        ui.end_row();
        if changed {
            self.apply(EditorAction::SetField(field.key, text));
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
            self.apply(EditorAction::SelectRuleFile(f));
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
            self.apply(EditorAction::SetRuleText(text));
        }
        for (line, msgs) in self.rule_errors() {
            for m in msgs {
                ui.label(
                    RichText::new(format!("line {line}: {m}")).color(ui.visuals().error_fg_color),
                );
            }
        }
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
