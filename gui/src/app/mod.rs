//! The desktop app: state in [`BulkheadApp`], one module per panel in [`panels`], logic
//! apart from drawing (panels take the slots and their own state, never the app, and
//! return actions; [`BulkheadApp::apply`] carries them out).

pub mod backend;
pub mod clipboard;
pub mod model;
pub mod panels;
pub mod run;

// The panels' old paths (`app::policy_editor`, …), kept for the tests and other callers.
pub use panels::{
    ask_dialog, audit_log, bundle_dialog, launcher, partition_view, policy_editor, serial_console,
};

use std::time::Duration;

use crate::display::texture::GuestTexture;
use crate::input::router::{InputRouter, ViewGeometry};
use model::LabelStyle;

pub use backend::{BackendError, PartitionBackend, SoftwareBackend};
pub use model::{memory_text, Label, PartitionInfo, PartitionState, PartitionStats, SourceKind};

/// How partition views are arranged in the central area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ViewLayout {
    Tabs,
    Tiles,
}

/// What the user chose to see; remembered between runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UiPrefs {
    pub layout: ViewLayout,
    pub show_launcher: bool,
    pub show_serial: bool,
    pub show_policy: bool,
    pub show_audit: bool,
}

impl Default for UiPrefs {
    fn default() -> Self {
        Self {
            layout: ViewLayout::Tiles,
            show_launcher: true,
            show_serial: false,
            show_policy: false,
            show_audit: false,
        }
    }
}

/// A user request from a panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start(usize),
    Stop(usize),
    Pause(usize),
    Resume(usize),
    Restart(usize),
    /// Focus a partition (keyboard still with the host).
    Focus(usize),
    /// Focus and give it the keyboard (a click into its pixels).
    Capture(usize),
    ReleaseKeyboard,
    PopOut(usize),
    PopIn(usize),
    ShowTab(usize),
    /// Open the Export… form for a (stopped) partition.
    Export(usize),
    /// Open the Import… form.
    OpenImport,
    /// Start a disposable of this partition (its template, app and settings): restored
    /// from a snapshot, gone when it stops.
    StartDisposable(usize),
}

/// One partition (or software source) and what the app keeps about it.
/// Where the app gets partitions it did not start with (its supervisor, in the real app).
pub trait PartitionSource {
    /// Backends for the partitions in the policy that have none yet (an import added
    /// one), each added to the supervisor's list, stopped.
    fn added(&mut self) -> Vec<Result<Box<dyn PartitionBackend>, String>>;
    /// Starts a disposable of partition `of` (`@dispvm:of`) and returns its backend.
    fn disposable(&mut self, of: &str) -> Result<Box<dyn PartitionBackend>, String>;
    /// A backend for disposable `name` of `of` that the source started itself (for an
    /// open-in), so the app shows it.
    fn adopt_disposable(
        &mut self,
        name: &str,
        of: &str,
        restored: bool,
    ) -> Result<Box<dyn PartitionBackend>, String> {
        let _ = (of, restored);
        Err(format!("cannot show disposable `{name}`"))
    }
    /// What partitions asked of each other since the last call (file copies, links to
    /// open), decided by the policy: questions, status lines, started disposables.
    fn poll_services(&mut self) -> Vec<ServiceEvent> {
        Vec::new()
    }
    /// The person's answer to service question `id` (`None`: refused).
    fn answer_service(&mut self, id: u64, choice: Option<String>) -> Vec<ServiceEvent> {
        let _ = (id, choice);
        Vec::new()
    }
    /// File transfers running now, for progress bars.
    fn transfers(&self) -> Vec<TransferProgress> {
        Vec::new()
    }
    /// Decide with the policy in `dir` from now on (the editor saved into the user's).
    fn set_policy_dir(&mut self, _dir: std::path::PathBuf) {}
}

pub use bulkhead_supervisor::services::{ServiceEvent, StatusKind as ServiceStatusKind};
pub use bulkhead_supervisor::transfer::{TransferProgress, TransferState};

pub struct PartitionSlot {
    pub backend: Box<dyn PartitionBackend>,
    pub texture: GuestTexture,
    pub serial: serial_console::SerialLog,
    pub popped_out: bool,
    /// The last refused action or frame problem, shown in the launcher.
    pub last_error: Option<String>,
    /// Its last clipboard (or file) event, shown in its launcher row until replaced.
    pub event: Option<clipboard::ClipboardStatus>,
    /// A file transfer from or to it, running: done fraction and what it is.
    pub transfer: Option<(f32, String)>,
    /// Where its pixels were drawn this frame (for pointer input).
    geometry: Option<ViewGeometry>,
    had_damage: bool,
}

impl PartitionSlot {
    pub fn new(backend: Box<dyn PartitionBackend>) -> Self {
        let name = backend.info().name.clone();
        Self {
            backend,
            texture: GuestTexture::new(format!("partition-{name}")),
            serial: serial_console::SerialLog::default(),
            popped_out: false,
            last_error: None,
            event: None,
            transfer: None,
            geometry: None,
            had_damage: false,
        }
    }

    /// Where its guest pixels were drawn in the last frame.
    pub fn geometry(&self) -> Option<ViewGeometry> {
        self.geometry
    }

    /// Collects state, pixels and serial output from the backend.
    fn poll(&mut self, ctx: &egui::Context) {
        self.backend.poll();
        let mut bytes = Vec::new();
        self.backend.read_serial(&mut bytes);
        self.serial.push(&bytes);
        self.had_damage = false;
        let has_display = self.backend.state().has_display();
        match self.backend.frame() {
            Some(frame) => {
                self.had_damage = !frame.damage.is_empty();
                if let Err(e) = self.texture.update(ctx, frame) {
                    self.last_error = Some(e.to_string());
                }
            }
            None if !has_display => self.texture.clear(),
            None => {}
        }
    }
}

pub struct BulkheadApp {
    pub slots: Vec<PartitionSlot>,
    pub router: InputRouter,
    pub prefs: UiPrefs,
    pub selected_tab: usize,
    pub serial_tab: usize,
    pub policy: policy_editor::PolicyEditor,
    pub audit: audit_log::AuditPanel,
    /// The secure clipboard's buffer, decisions and status line.
    pub clipboard: clipboard::SecureClipboard,
    /// Questions the policy left to the person (`ask`), one shown at a time.
    pub asks: ask_dialog::AskDialogs,
    /// Export… / Import…: the form and its background job.
    pub bundle: bundle_dialog::BundleDialog,
    /// Which renderer draws this window, shown in the status bar.
    pub renderer: String,
    /// What this host cannot run and what runs instead, shown under the top bar.
    pub host_notice: Option<String>,
    frames: u64,
    /// The policy editor's save count last applied to the partitions.
    applied_saves: u64,
    first_frame_marker: Option<std::path::PathBuf>,
    /// Partitions added while the app runs: imports and disposables.
    pub source: Option<Box<dyn PartitionSource>>,
    /// The window's `glTexSubImage2D`, when it draws with glow: guest pixels then go to
    /// GL textures of ours (see `display::texture`).
    gl_sub_image: Option<crate::display::texture::TexSubImage2d>,
}

const PREFS_KEY: &str = "bulkhead-ui-prefs";

impl BulkheadApp {
    pub fn new(backends: Vec<Box<dyn PartitionBackend>>) -> Self {
        Self {
            slots: backends.into_iter().map(PartitionSlot::new).collect(),
            router: InputRouter::default(),
            prefs: UiPrefs::default(),
            selected_tab: 0,
            serial_tab: 0,
            policy: policy_editor::PolicyEditor::default(),
            audit: audit_log::AuditPanel::default(),
            clipboard: clipboard::SecureClipboard::default(),
            asks: ask_dialog::AskDialogs::default(),
            bundle: bundle_dialog::BundleDialog::default(),
            renderer: "test".into(),
            host_notice: None,
            frames: 0,
            applied_saves: 0,
            first_frame_marker: None,
            source: None,
            gl_sub_image: None,
        }
    }

    /// Starts a disposable of slot `i`'s partition and shows it, focused.
    fn start_disposable(&mut self, i: usize) -> Result<(), BackendError> {
        let Some(of) = self.slots.get(i).map(|s| s.backend.info().name.clone()) else {
            return Ok(());
        };
        let Some(source) = &mut self.source else {
            return Err(BackendError::Process {
                name: of,
                message: "disposables need real partitions (this is a software source)".into(),
            });
        };
        let backend = source
            .disposable(&of)
            .map_err(|message| BackendError::Process {
                name: of.clone(),
                message,
            })?;
        self.slots.push(PartitionSlot::new(backend));
        let new = self.slots.len() - 1;
        self.focus(new);
        Ok(())
    }

    /// A disposable whose process ended is gone: its slot goes and the supervisor forgets
    /// it. Waits while a clipboard request or a question could still name slots by index.
    fn drop_ended_disposables(&mut self) {
        if !self.clipboard.is_idle() || !self.asks.is_empty() || self.host_dialog_open() {
            return;
        }
        while let Some(i) = self.slots.iter().position(|s| {
            s.backend.is_disposable()
                && matches!(
                    s.backend.state(),
                    PartitionState::Stopped | PartitionState::Crashed { .. }
                )
        }) {
            let mut slot = self.slots.remove(i);
            tracing::info!(name = %slot.backend.info().name, "disposable ended");
            slot.backend.discard();
            self.router.removed(i);
            for tab in [&mut self.selected_tab, &mut self.serial_tab] {
                if *tab > i || *tab >= self.slots.len() {
                    *tab = tab.saturating_sub(1);
                }
            }
        }
    }

    /// After an import: the partitions the policy gained get a slot (stopped), without a
    /// restart of the app; says so in the import's outcome line.
    fn add_imported_partitions(&mut self) {
        let Some(source) = &mut self.source else {
            self.bundle
                .add_to_outcome(" — restart Bulkhead to see it in the launcher");
            return;
        };
        // The policy panel shows the new partition too (unless a form is being edited).
        self.policy.reopen(&isolation_policy::default_policy_dir());
        let made = source.added();
        for made in made {
            match made {
                Ok(backend) => {
                    let name = backend.info().name.clone();
                    self.slots.push(PartitionSlot::new(backend));
                    self.bundle
                        .add_to_outcome(&format!(" — `{name}` is in the launcher"));
                }
                Err(e) => {
                    tracing::warn!("adding an imported partition: {e}");
                    self.bundle.add_to_outcome(&format!(" — not added: {e}"));
                }
            }
        }
    }

    /// After the policy editor saved: every partition takes what may change while it
    /// runs (firewall rules go to its relay at once).
    pub fn apply_saved_policy(&mut self) {
        if self.policy.saves == self.applied_saves {
            return;
        }
        self.applied_saves = self.policy.saves;
        let Some(dir) = self.policy.dir().map(std::path::Path::to_path_buf) else {
            return;
        };
        // The first save of the defaults went to the user's directory: decide with it.
        self.clipboard.set_policy_dir(dir.clone());
        if let Some(source) = &mut self.source {
            source.set_policy_dir(dir.clone());
        }
        // Saved only when it checks, so this loads; a failure is shown, never half-applied.
        let policy = match isolation_policy::Policy::load(&dir) {
            Ok((policy, _)) => policy,
            Err(e) => {
                tracing::warn!("the saved policy did not load: {e}");
                return;
            }
        };
        for slot in &mut self.slots {
            slot.last_error = slot
                .backend
                .apply_policy(&policy)
                .err()
                .map(|e| e.to_string());
        }
    }

    /// Restores remembered preferences and wires backends to wake the UI.
    pub fn with_creation_context(mut self, cc: &eframe::CreationContext<'_>) -> Self {
        if let Some(prefs) = cc
            .storage
            .and_then(|s| eframe::get_value::<UiPrefs>(s, PREFS_KEY))
        {
            self.prefs = prefs;
        }
        for slot in &mut self.slots {
            slot.backend.set_waker(cc.egui_ctx.clone());
        }
        self.with_gl_loader(cc.get_proc_address.as_deref())
    }

    /// Loads what guest pixels need to go straight to GL textures (see
    /// [`BulkheadApp::use_gl`]) with the window's GL loader, when it has one (glow).
    pub fn with_gl_loader(
        mut self,
        get_proc_address: Option<
            &(dyn Fn(&std::ffi::CStr) -> *const std::ffi::c_void + Send + Sync),
        >,
    ) -> Self {
        self.gl_sub_image =
            get_proc_address.and_then(|load| crate::display::texture::TexSubImage2d::load(load));
        if get_proc_address.is_some() && self.gl_sub_image.is_none() {
            tracing::warn!("GL has no glTexSubImage2D: guest pixels go through egui's textures");
        }
        self
    }

    pub fn with_first_frame_marker(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.first_frame_marker = path;
        self
    }

    /// Carries out one user request. Refusals are kept for the launcher to show.
    pub fn apply(&mut self, action: Action) {
        let result = match action {
            Action::Start(i) => self.on_backend(i, |b| b.start()),
            Action::Stop(i) => {
                self.router.forget(i);
                self.on_backend(i, |b| b.stop())
            }
            Action::Pause(i) => self.on_backend(i, |b| b.pause()),
            Action::Resume(i) => self.on_backend(i, |b| b.resume()),
            Action::Restart(i) => {
                self.router.forget(i);
                self.on_backend(i, |b| b.restart())
            }
            Action::Focus(i) => {
                self.focus(i);
                Ok(())
            }
            Action::Capture(i) => {
                self.focus(i);
                // While a question or a host form is open the keyboard stays with the host.
                if !self.host_dialog_open() {
                    self.router.capture();
                }
                Ok(())
            }
            Action::ReleaseKeyboard => {
                let routed = self.router.release();
                self.deliver(routed);
                Ok(())
            }
            Action::PopOut(i) | Action::PopIn(i) => {
                if let Some(slot) = self.slots.get_mut(i) {
                    slot.popped_out = matches!(action, Action::PopOut(_));
                }
                Ok(())
            }
            Action::ShowTab(i) => {
                self.selected_tab = i;
                Ok(())
            }
            Action::Export(i) => {
                if let Some(slot) = self.slots.get(i) {
                    let name = slot.backend.info().name.clone();
                    self.bundle.open_export(&name);
                    self.release_for_host_dialog();
                }
                Ok(())
            }
            Action::StartDisposable(i) => self.start_disposable(i),
            Action::OpenImport => {
                self.bundle.open_import();
                self.release_for_host_dialog();
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!("{e}");
            if let Some(slot) = action_index(action).and_then(|i| self.slots.get_mut(i)) {
                slot.last_error = Some(e.to_string());
            }
        }
    }

    /// A question or a host form (Export… / Import…) is open: no partition gets input.
    pub fn host_dialog_open(&self) -> bool {
        self.asks.is_open() || self.bundle.is_open()
    }

    /// The keyboard leaves the partitions (the one holding it gets its key-ups).
    fn release_for_host_dialog(&mut self) {
        if self.keyboard_captured() {
            let routed = self.router.release();
            self.deliver(routed);
        }
    }

    /// Starts the export or import the bundle form asked for, on its own thread.
    fn start_bundle_job(&mut self, action: bundle_dialog::DialogAction, ctx: &egui::Context) {
        let waker_ctx = ctx.clone();
        let wake: crate::bundle::Waker = Box::new(move || waker_ctx.request_repaint());
        let job = match action {
            bundle_dialog::DialogAction::Export(mut req, pass) => {
                // A running partition's state goes with it, saved by this app's
                // supervisor (the export job pauses it for the snapshot and disk copy).
                let running = self.slots.iter().find(|s| {
                    s.backend.info().name == req.name
                        && matches!(
                            s.backend.state(),
                            PartitionState::Running
                                | PartitionState::Paused
                                | PartitionState::Starting { .. }
                        )
                });
                if let Some(slot) = running {
                    req.save_running = slot.backend.state_saver().ok();
                }
                crate::bundle::Job::export(req, pass, wake)
            }
            bundle_dialog::DialogAction::Import(req, pass) => {
                crate::bundle::Job::import(req, pass, wake)
            }
        };
        self.bundle.started(job);
    }

    fn on_backend(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut dyn PartitionBackend) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let Some(slot) = self.slots.get_mut(i) else {
            return Ok(());
        };
        slot.last_error = None;
        f(slot.backend.as_mut())
    }

    fn focus(&mut self, i: usize) {
        if i >= self.slots.len() {
            return;
        }
        let routed = self.router.focus(Some(i));
        self.deliver(routed);
        self.selected_tab = i;
    }

    fn deliver(&mut self, routed: crate::input::router::Routed) {
        let Some(i) = routed.target else { return };
        if routed.events.is_empty() {
            return;
        }
        if let Some(slot) = self.slots.get_mut(i) {
            if let Err(e) = slot.backend.send_input(&routed.events) {
                tracing::debug!("input not delivered: {e}");
            }
        }
    }

    /// The focused partition's index, if any.
    pub fn focused(&self) -> Option<usize> {
        self.router.state().focused
    }

    pub fn keyboard_captured(&self) -> bool {
        self.router.state().keyboard_captured
    }

    /// One frame: poll backends, draw every panel, route input, schedule the next frame.
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        for slot in &mut self.slots {
            slot.poll(&ctx);
            slot.geometry = None;
        }
        self.clipboard.poll(&mut self.slots);
        self.clipboard_events();
        if let Some(source) = &mut self.source {
            let events = source.poll_services();
            self.service_events(events);
        }
        self.transfer_progress();
        let mut actions = Vec::new();
        self.top_bar(ui, &mut actions);
        self.host_notice_bar(ui);
        if let Some(answered) = self.asks.show(ui) {
            self.answer_ask(answered);
        }
        if let Some(job) = bundle_dialog::show(ui, &mut self.bundle) {
            self.start_bundle_job(job, &ctx);
        }
        self.drop_ended_disposables();
        if self.bundle.take_imported() {
            self.add_imported_partitions();
        }
        self.clipboard_status_bar(ui);
        if self.prefs.show_launcher {
            egui::Panel::left("launcher")
                .resizable(true)
                .default_size(300.0)
                .show(ui, |ui| {
                    launcher::show(ui, &self.slots, self.focused(), &mut actions)
                });
        }
        if self.prefs.show_policy {
            egui::Panel::right("policy")
                .resizable(true)
                .default_size(420.0)
                .show(ui, |ui| self.policy.show(ui));
            self.apply_saved_policy();
        }
        if self.prefs.show_serial || self.prefs.show_audit {
            egui::Panel::bottom("bottom")
                .resizable(true)
                .default_size(200.0)
                .show(ui, |ui| self.bottom_panels(ui));
        }
        let views = partition_view::ViewsInput {
            layout: self.prefs.layout,
            selected_tab: self.selected_tab,
            focus: self.router.state(),
        };
        let drawn = egui::CentralPanel::default()
            .show(ui, |ui| {
                partition_view::show_all(ui, &self.slots, views, &mut actions)
            })
            .inner;
        self.record_geometry(drawn);
        self.pop_outs(&ctx, &mut actions);
        for action in actions {
            self.apply(action);
        }
        self.route_root_input(ui);
        self.schedule(&ctx);
        self.mark_first_frame();
    }

    /// Keeps where each partition's pixels were drawn, for pointer input.
    fn record_geometry(&mut self, drawn: partition_view::Drawn) {
        for (i, geometry) in drawn {
            if let Some(slot) = self.slots.get_mut(i) {
                slot.geometry = Some(geometry);
            }
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.strong("Bulkhead");
                ui.separator();
                ui.toggle_value(&mut self.prefs.show_launcher, "Partitions");
                ui.toggle_value(&mut self.prefs.show_policy, "Policy");
                ui.toggle_value(&mut self.prefs.show_serial, "Serial");
                ui.toggle_value(&mut self.prefs.show_audit, "Audit log");
                ui.separator();
                ui.selectable_value(&mut self.prefs.layout, ViewLayout::Tiles, "Tiles");
                ui.selectable_value(&mut self.prefs.layout, ViewLayout::Tabs, "Tabs");
                ui.separator();
                self.capture_badge(ui, actions);
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    ui.weak(format!("renderer: {}", self.renderer));
                });
            });
        });
    }

    /// A plain sentence about what this host cannot run, for as long as the app runs.
    fn host_notice_bar(&self, ui: &mut egui::Ui) {
        let Some(notice) = &self.host_notice else {
            return;
        };
        egui::Panel::top("host_notice").show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.label(
                    egui::RichText::new(notice.as_str())
                        .color(ui.visuals().warn_fg_color)
                        .strong(),
                );
            });
        });
    }

    fn capture_badge(&self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        let state = self.router.state();
        match state.focused.and_then(|i| self.slots.get(i)) {
            Some(slot) if state.keyboard_captured => {
                let info = slot.backend.info();
                let text = egui::RichText::new(format!(
                    "Keyboard captured by [{}] — {} releases",
                    info.name,
                    crate::input::RELEASE_SHORTCUT_TEXT
                ))
                .color(info.label.text_color())
                .background_color(info.label.color())
                .strong();
                if ui
                    .button(text)
                    .on_hover_text("Click to release the keyboard")
                    .clicked()
                {
                    actions.push(Action::ReleaseKeyboard);
                }
            }
            Some(slot) => {
                ui.label(format!(
                    "focused: [{}] — click inside it to type",
                    slot.backend.info().name
                ));
            }
            None => {
                ui.weak("no partition focused");
            }
        }
    }

    fn bottom_panels(&mut self, ui: &mut egui::Ui) {
        if self.prefs.show_serial && self.prefs.show_audit {
            ui.columns(2, |cols| {
                serial_console::show(&mut cols[0], &self.slots, &mut self.serial_tab);
                self.audit.show(&mut cols[1]);
            });
        } else if self.prefs.show_serial {
            serial_console::show(ui, &self.slots, &mut self.serial_tab);
        } else {
            self.audit.show(ui);
        }
    }

    fn pop_outs(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        for i in 0..self.slots.len() {
            if !self.slots[i].popped_out {
                continue;
            }
            let info = self.slots[i].backend.info().clone();
            let id = egui::ViewportId::from_hash_of(("partition", &info.name));
            let builder = egui::ViewportBuilder::default()
                .with_title(format!("[{}] — Bulkhead", info.name))
                .with_inner_size([
                    info.display.0 as f32 / 2.0 + 16.0,
                    info.display.1 as f32 / 2.0 + 40.0,
                ]);
            let half = egui::vec2(info.display.0 as f32 / 2.0, info.display.1 as f32 / 2.0);
            ctx.show_viewport_immediate(id, builder, |ui, class| {
                if class == egui::ViewportClass::EmbeddedWindow {
                    // No native window here (e.g. tests): give the view room in the egui one.
                    ui.set_min_size(half);
                }
                let focus = self.router.state();
                let geometry = egui::CentralPanel::default()
                    .show(ui, |ui| {
                        partition_view::show_one(ui, &self.slots[i], i, focus, actions)
                    })
                    .inner;
                self.record_geometry(vec![(i, geometry)]);
                if ui.input(|input| input.viewport().close_requested()) {
                    actions.push(Action::PopIn(i));
                }
                self.route_input(ui, Some(i));
            });
        }
    }

    fn route_root_input(&mut self, ui: &egui::Ui) {
        if self.host_dialog_open() {
            return;
        }
        let focused = self.focused();
        // A popped-out partition gets its input from its own window.
        let in_root = focused.filter(|&i| self.slots.get(i).is_some_and(|s| !s.popped_out));
        if focused.is_some() && in_root.is_none() {
            return;
        }
        self.route_input(ui, in_root);
    }

    /// Sends this viewport's input to the focused partition if it is `shown_here`.
    fn route_input(&mut self, ui: &egui::Ui, shown_here: Option<usize>) {
        // An open question (or host form) takes all input: no partition hears anything
        // until it is answered or closed (keys pressed meanwhile are dropped, not queued
        // for the guest; a passphrase is never typed into a guest).
        if self.host_dialog_open() {
            return;
        }
        let Some(i) = shown_here.filter(|&i| Some(i) == self.focused()) else {
            return;
        };
        let geometry = self.slots.get(i).and_then(|s| s.geometry);
        let (events, modifiers) = ui.input(|input| (input.events.clone(), input.modifiers));
        let mut routed = self.router.route(&events, geometry, modifiers);
        let gestures = std::mem::take(&mut routed.gestures);
        let target = routed.target;
        self.deliver(routed);
        if let Some(i) = target {
            for g in gestures {
                self.clipboard_gesture(i, g);
            }
        }
    }

    /// Carries out a clipboard gesture in partition `i` (keyboard shortcuts, or tests).
    pub fn clipboard_gesture(&mut self, i: usize, g: crate::input::router::ClipboardGesture) {
        self.clipboard.gesture(&mut self.slots, i, g);
        self.clipboard_events();
    }

    /// Takes what the clipboard did: status lines to their partitions, questions to the
    /// ask dialog, a reload of the audit panel after a decision.
    fn clipboard_events(&mut self) {
        for event in self.clipboard.take_events() {
            if let Some(slot) = self
                .slots
                .iter_mut()
                .find(|s| s.backend.info().name == event.partition)
            {
                slot.event = Some(event);
            }
        }
        for ask in std::mem::take(&mut self.clipboard.asks) {
            self.ask(ask);
        }
        if std::mem::take(&mut self.clipboard.audited) {
            self.audit.reload();
        }
    }

    /// Takes what the service broker did: questions to the ask dialog, status lines to
    /// their partitions and the bottom bar, disposables it started into the launcher.
    pub fn service_events(&mut self, events: Vec<ServiceEvent>) {
        for event in events {
            match event {
                ServiceEvent::Ask(q) => self.ask(ask_dialog::AskRequest {
                    owner: ask_dialog::AskOwner::Services,
                    continuation: q.id,
                    service: q.service,
                    argument: Some(q.argument),
                    source: q.source,
                    targets: q.targets,
                    default_target: q.default_target,
                    rule: q.rule.unwrap_or_else(|| "no rule".into()),
                }),
                ServiceEvent::Status {
                    partition,
                    topic,
                    kind,
                    text,
                } => {
                    let status = clipboard::ClipboardStatus {
                        partition,
                        topic,
                        kind: match kind {
                            ServiceStatusKind::Waiting => clipboard::StatusKind::Waiting,
                            ServiceStatusKind::Done => clipboard::StatusKind::Done,
                            ServiceStatusKind::Refused => clipboard::StatusKind::Refused,
                        },
                        text,
                    };
                    if let Some(slot) = self
                        .slots
                        .iter_mut()
                        .find(|s| s.backend.info().name == status.partition)
                    {
                        slot.event = Some(status.clone());
                    }
                    self.clipboard.status = Some(status);
                }
                ServiceEvent::DisposableStarted { name, of, restored } => {
                    let Some(source) = &mut self.source else {
                        continue;
                    };
                    match source.adopt_disposable(&name, &of, restored) {
                        Ok(backend) => self.slots.push(PartitionSlot::new(backend)),
                        Err(e) => tracing::warn!("showing disposable {name}: {e}"),
                    }
                }
                ServiceEvent::Audited => self.audit.reload(),
            }
        }
    }

    /// Each running transfer's progress on its source's and target's launcher rows.
    fn transfer_progress(&mut self) {
        let transfers = self
            .source
            .as_ref()
            .map(|s| s.transfers())
            .unwrap_or_default();
        for slot in &mut self.slots {
            let name = slot.backend.info().name.clone();
            slot.transfer = transfers
                .iter()
                .filter(|t| t.state == TransferState::Running)
                .find(|t| t.source == name || t.target == name)
                .map(|t| {
                    let verb = if t.is_move { "moving" } else { "copying" };
                    (
                        t.fraction(),
                        format!(
                            "{verb} {} file(s) from [{}] to [{}]: {} of {} bytes",
                            t.files, t.source, t.target, t.done_bytes, t.total_bytes
                        ),
                    )
                });
        }
    }

    /// Opens (or queues) a question; the keyboard leaves the partitions at once, so the
    /// next key goes to no guest (the one holding it gets its key-ups).
    pub fn ask(&mut self, request: ask_dialog::AskRequest) {
        self.asks.push(request);
        if self.keyboard_captured() {
            let routed = self.router.release();
            self.deliver(routed);
        }
    }

    /// Hands the person's answer back to the service that asked.
    pub fn answer_ask(&mut self, answered: ask_dialog::Answered) {
        match answered.owner {
            ask_dialog::AskOwner::Clipboard => {
                self.clipboard
                    .answer_ask(&mut self.slots, answered.continuation, &answered.answer);
                self.clipboard_events();
            }
            ask_dialog::AskOwner::Services => {
                let choice = match answered.answer {
                    ask_dialog::AskAnswer::Allow { target } => Some(target),
                    ask_dialog::AskAnswer::Deny => None,
                };
                let events = match &mut self.source {
                    Some(source) => source.answer_service(answered.continuation, choice),
                    None => Vec::new(),
                };
                self.service_events(events);
            }
        }
    }

    /// The last clipboard step, in the partition's colours; a refusal stands out.
    fn clipboard_status_bar(&self, ui: &mut egui::Ui) {
        let Some(status) = &self.clipboard.status else {
            return;
        };
        let label = self
            .slots
            .iter()
            .map(|s| s.backend.info())
            .find(|i| i.name == status.partition)
            .map(|i| i.label);
        egui::Panel::bottom("clipboard_status").show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                let topic = match status.topic {
                    "files" => "Files",
                    "open" => "Open",
                    _ => "Clipboard",
                };
                let mut tag =
                    egui::RichText::new(format!("{topic} [{}]", status.partition)).strong();
                if let Some(label) = label {
                    tag = tag
                        .color(label.text_color())
                        .background_color(label.color());
                }
                ui.label(tag);
                let text = egui::RichText::new(status.text.as_str());
                ui.label(match status.kind {
                    clipboard::StatusKind::Refused => {
                        text.color(ui.visuals().error_fg_color).strong()
                    }
                    clipboard::StatusKind::Waiting => text.weak(),
                    clipboard::StatusKind::Done => text,
                });
            });
        });
    }

    fn schedule(&self, ctx: &egui::Context) {
        let busy = self
            .slots
            .iter()
            .any(|s| s.had_damage || matches!(s.backend.state(), PartitionState::Booting));
        let running = self
            .slots
            .iter()
            .any(|s| s.backend.state() == PartitionState::Running);
        if busy {
            ctx.request_repaint_after(Duration::from_millis(16));
        } else if running {
            // Poll for damage and refresh the resource figures; an idle partition costs
            // a poll, no uploads.
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }

    fn mark_first_frame(&mut self) {
        self.frames += 1;
        // The second call means the first frame has been presented.
        if self.frames == 2 {
            tracing::info!("first frame presented ({} partitions)", self.slots.len());
            if let Some(path) = &self.first_frame_marker {
                if let Err(e) = std::fs::write(path, b"first frame\n") {
                    tracing::warn!("writing first-frame marker {}: {e}", path.display());
                }
            }
        }
    }
}

fn action_index(action: Action) -> Option<usize> {
    match action {
        Action::Start(i)
        | Action::Stop(i)
        | Action::Pause(i)
        | Action::Resume(i)
        | Action::Restart(i)
        | Action::Focus(i)
        | Action::Capture(i)
        | Action::PopOut(i)
        | Action::PopIn(i)
        | Action::ShowTab(i)
        | Action::Export(i)
        | Action::StartDisposable(i) => Some(i),
        Action::ReleaseKeyboard | Action::OpenImport => None,
    }
}

impl BulkheadApp {
    /// When the window draws with glow, guest pixels go to GL textures of our own,
    /// unconverted (see `display::texture`); a slot added during a frame gets its texture
    /// on the next one. Call before [`BulkheadApp::frame`], from `App::ui`.
    pub fn use_gl(&mut self, frame: &mut eframe::Frame) {
        let (Some(gl), Some(sub_image)) = (frame.gl().cloned(), self.gl_sub_image) else {
            return;
        };
        for slot in &mut self.slots {
            slot.texture
                .use_gl(&gl, sub_image, |t| frame.register_native_glow_texture(t));
        }
    }
}

impl eframe::App for BulkheadApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.use_gl(frame);
        self.frame(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, PREFS_KEY, &self.prefs);
    }
}
