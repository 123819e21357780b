//! Export… and Import… in the app: the form (file, passphrase — twice for an export,
//! masked —, "include the template" or a new name), then the work's progress and its
//! outcome in one line. The work is [`crate::bundle`]'s, the same code as `bulkhead
//! export`/`import`, run on its own thread ([`Job`]); this panel only reads its status.
//!
//! Like the ask dialog it is a host panel under the top bar, never over a partition's
//! pixels; while it is open no input goes to any partition (a passphrase is never typed
//! into a guest).

use std::path::PathBuf;

use age::secrecy::SecretString;
use egui::{RichText, Ui};

use crate::bundle::{
    check_passphrase, ExportRequest, ImportRequest, Job, JobStatus, Progress, TransferError,
};

/// What the person asked for; the app starts the [`Job`] and hands it back with
/// [`BundleDialog::started`].
pub enum DialogAction {
    Export(ExportRequest, SecretString),
    Import(ImportRequest, SecretString),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Export this partition.
    Export {
        partition: String,
    },
    Import,
}

/// The open form, its job and its last outcome.
pub struct Form {
    pub mode: Mode,
    pub file: String,
    pub passphrase: String,
    pub again: String,
    pub with_template: bool,
    /// Import under this name (empty: the bundle's).
    pub new_name: String,
    /// The last failure, one line.
    pub error: Option<String>,
    /// The last success, one line (the whole summary on hover).
    pub done: Option<(String, String)>,
    pub job: Option<Job>,
    /// The progress last read from the job (kept for drawing).
    pub progress: Option<Progress>,
}

impl Form {
    fn new(mode: Mode) -> Form {
        Form {
            mode,
            file: String::new(),
            passphrase: String::new(),
            again: String::new(),
            with_template: false,
            new_name: String::new(),
            error: None,
            done: None,
            job: None,
            progress: None,
        }
    }

    pub fn running(&self) -> bool {
        self.job.is_some()
    }
}

/// The dialog's state: closed, or one open form.
#[derive(Default)]
pub struct BundleDialog {
    pub form: Option<Form>,
    /// Policy directory for both directions; `None`: the defaults (`bulkhead export`'s and
    /// `import`'s).
    pub policy_dir: Option<PathBuf>,
    /// An import finished since the app last asked ([`BundleDialog::take_imported`]).
    imported: bool,
}

impl BundleDialog {
    pub fn is_open(&self) -> bool {
        self.form.is_some()
    }

    /// Opens the export form for `partition` (a running job's form stays).
    pub fn open_export(&mut self, partition: &str) {
        if !self.form.as_ref().is_some_and(Form::running) {
            let mut form = Form::new(Mode::Export {
                partition: partition.to_string(),
            });
            form.file = match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home)
                    .join(format!("{partition}.bulkhead"))
                    .display()
                    .to_string(),
                None => format!("{partition}.bulkhead"),
            };
            self.form = Some(form);
        }
    }

    pub fn open_import(&mut self) {
        if !self.form.as_ref().is_some_and(Form::running) {
            self.form = Some(Form::new(Mode::Import));
        }
    }

    /// The job the app started for the last [`DialogAction`].
    pub fn started(&mut self, job: Job) {
        if let Some(form) = &mut self.form {
            form.job = Some(job);
            form.error = None;
            form.done = None;
        }
    }

    /// Whether an import finished since the last call: the app adds the new partition.
    pub fn take_imported(&mut self) -> bool {
        std::mem::take(&mut self.imported)
    }

    /// Appends `text` to the last outcome's line (what the app did after it).
    pub fn add_to_outcome(&mut self, text: &str) {
        if let Some((line, _)) = self.form.as_mut().and_then(|f| f.done.as_mut()) {
            line.push_str(text);
        }
    }

    /// Takes the job's progress, and its outcome once it ends.
    pub fn poll(&mut self) {
        let Some(form) = &mut self.form else { return };
        let Some(job) = &form.job else { return };
        let JobStatus { progress, outcome } = job.status();
        form.progress = Some(progress);
        let Some(outcome) = outcome else { return };
        form.job = None;
        match outcome {
            Ok(summary) => {
                let first = summary.lines().next().unwrap_or_default().to_string();
                self.imported |= form.mode == Mode::Import;
                form.done = Some((first, summary));
            }
            Err(TransferError::NameTaken {
                why, suggestion, ..
            }) => {
                form.error = Some(format!(
                    "{why}: import it under another name (suggested: {suggestion})"
                ));
                form.new_name = suggestion;
                form.progress = None;
            }
            Err(TransferError::Failed(e)) => {
                form.error = Some(one_line(&e));
                form.progress = None;
            }
        }
    }
}

/// The first line of a message, with a note when more was cut.
fn one_line(message: &str) -> String {
    let mut lines = message.lines();
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first} (…)")
    } else {
        first
    }
}

/// Draws the open form, if any, as a panel under the top bar.
pub fn show(ui: &mut Ui, dialog: &mut BundleDialog) -> Option<DialogAction> {
    dialog.poll();
    let policy_dir = dialog.policy_dir.clone();
    let form = dialog.form.as_mut()?;
    if form.running() {
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(100));
    }
    let mut action = None;
    let mut close = false;
    egui::Panel::top("bundle_dialog").show(ui, |ui| {
        ui.add_space(4.0);
        action = body(ui, form, policy_dir, &mut close);
        ui.add_space(4.0);
    });
    if close {
        dialog.form = None;
    }
    action
}

fn body(
    ui: &mut Ui,
    form: &mut Form,
    policy_dir: Option<PathBuf>,
    close: &mut bool,
) -> Option<DialogAction> {
    let running = form.running();
    match &form.mode {
        Mode::Export { partition } => {
            ui.strong(format!("Export [{partition}] to an encrypted bundle"))
        }
        Mode::Import => ui.strong("Import a partition from a bundle"),
    };
    ui.add_enabled_ui(!running, |ui| {
        egui::Grid::new("bundle_form")
            .num_columns(2)
            .spacing([8.0, 4.0])
            .show(ui, |ui| fields(ui, form))
    });
    let mut action = None;
    ui.horizontal(|ui| {
        let (verb, ready) = match form.mode {
            Mode::Export { .. } => ("Export", !form.again.is_empty()),
            Mode::Import => ("Import", true),
        };
        let ready = ready && !form.file.trim().is_empty() && !form.passphrase.is_empty();
        if ui
            .add_enabled(!running && ready, egui::Button::new(verb))
            .clicked()
        {
            action = submit(form, policy_dir);
        }
        let label = if form.done.is_some() {
            "Close"
        } else {
            "Cancel"
        };
        if ui
            .add_enabled(!running, egui::Button::new(label))
            .on_disabled_hover_text("Wait for it to finish: a stopped export or import is undone")
            .clicked()
        {
            *close = true;
        }
    });
    outcome(ui, form);
    action
}

fn fields(ui: &mut Ui, form: &mut Form) {
    let row = |ui: &mut Ui, label: &str, text: &mut String, masked: bool| {
        let label = ui.label(label);
        ui.add(
            egui::TextEdit::singleline(text)
                .password(masked)
                .desired_width(320.0),
        )
        .labelled_by(label.id);
        ui.end_row();
    };
    row(ui, "File", &mut form.file, false);
    row(ui, "Passphrase", &mut form.passphrase, true);
    match form.mode {
        Mode::Export { .. } => {
            row(ui, "Passphrase again", &mut form.again, true);
            ui.label("");
            ui.checkbox(&mut form.with_template, "Include the template")
                .on_hover_text("For a machine that cannot build the template itself (large)");
            ui.end_row();
        }
        Mode::Import => {
            let label = ui.label("New name");
            ui.add(
                egui::TextEdit::singleline(&mut form.new_name)
                    .hint_text("optional: the bundle's name")
                    .desired_width(320.0),
            )
            .labelled_by(label.id);
            ui.end_row();
        }
    }
}

/// Checks the passphrase and makes the request; the passphrase fields are cleared either
/// way (the secret lives on only in the job).
fn submit(form: &mut Form, policy_dir: Option<PathBuf>) -> Option<DialogAction> {
    let again = matches!(form.mode, Mode::Export { .. }).then_some(form.again.as_str());
    let pass = check_passphrase(&form.passphrase, again);
    form.passphrase.clear();
    form.again.clear();
    form.done = None;
    let pass = match pass {
        Ok(pass) => pass,
        Err(e) => {
            form.error = Some(e);
            return None;
        }
    };
    form.error = None;
    let file = expand_home(form.file.trim());
    Some(match &form.mode {
        Mode::Export { partition } => DialogAction::Export(
            ExportRequest {
                name: partition.clone(),
                file,
                with_template: form.with_template,
                policy_dir,
                save_running: None,
            },
            pass,
        ),
        Mode::Import => DialogAction::Import(
            ImportRequest {
                file,
                name: Some(form.new_name.trim().to_string()).filter(|n| !n.is_empty()),
                policy_dir,
            },
            pass,
        ),
    })
}

/// `~/x` is `$HOME/x`, as a person typing a path expects; anything else as typed.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The progress bar while it runs, then one line: the error, or what was done.
fn outcome(ui: &mut Ui, form: &Form) {
    if let (true, Some(p)) = (form.running(), &form.progress) {
        ui.add(
            egui::ProgressBar::new(p.fraction())
                .desired_width(480.0)
                .text(format!(
                    "{}: {} of {} MiB",
                    p.stage,
                    p.done >> 20,
                    p.total.div_ceil(1 << 20)
                )),
        );
    }
    if let Some(e) = &form.error {
        ui.label(
            RichText::new(e.as_str())
                .color(ui.visuals().error_fg_color)
                .strong(),
        );
    }
    if let Some((line, summary)) = &form.done {
        ui.label(line.as_str()).on_hover_text(summary.as_str());
    }
}
