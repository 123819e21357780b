//! The host's ask dialog: when the policy says `ask`, the person decides, never a guest.
//!
//! Any service uses it the same way: its owner (the clipboard today; file copy and
//! open-in later) pushes an [`AskRequest`] naming the service, source, argument, the
//! targets the policy allows or asks about and the rule that asked, plus an opaque
//! `continuation` of its own; [`AskDialogs::show`] returns the [`Answered`] request with
//! that owner and continuation, and the app hands it back to the owner (see
//! `BulkheadApp::answer_ask`). One request is shown at a time, the rest wait in order.
//!
//! Why it cannot be answered by a guest: it is a panel of the host window above the
//! partition views (never over any partition's pixels, so a guest cannot draw one that
//! looks real where the real one appears, and the trust borders stay whole); while one is
//! open the app routes no input to any partition and takes the keyboard back; and its
//! buttons and its host shortcuts (Enter allows, Escape denies) do nothing for
//! [`ANSWER_DELAY`] after it appears, so a key the person meant for the guest, pressed
//! just as it opened, cannot answer it.

use std::collections::VecDeque;

use egui::{Key, Modifiers, RichText, Ui};

/// How long an ask dialog ignores clicks and shortcuts after it appears, in seconds.
pub const ANSWER_DELAY: f64 = 0.8;

/// Who asked: the app hands the answer back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskOwner {
    /// The secure clipboard (`bulkhead.ClipboardPaste`).
    Clipboard,
    /// The service broker (`bulkhead.FileCopy`, `bulkhead.OpenURL`): the continuation
    /// is its question id.
    Services,
}

/// One question for the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskRequest {
    pub owner: AskOwner,
    /// The owner's own id for this request; the dialog only hands it back.
    pub continuation: u64,
    /// The service asked for, e.g. `bulkhead.ClipboardPaste`.
    pub service: String,
    pub argument: Option<String>,
    /// The partition the request comes from.
    pub source: String,
    /// Where it may go: only targets the policy allows or asks about, in the order
    /// offered. Empty: only Deny is possible.
    pub targets: Vec<String>,
    /// Preselected when it is one of `targets` (else the first target is).
    pub default_target: Option<String>,
    /// `file:line` of the rule that said ask.
    pub rule: String,
}

/// What the person answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskAnswer {
    Allow { target: String },
    Deny,
}

/// An answer for its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub owner: AskOwner,
    pub continuation: u64,
    pub answer: AskAnswer,
}

/// The queue of open questions; the first one is shown.
#[derive(Debug, Default)]
pub struct AskDialogs {
    queue: VecDeque<AskRequest>,
    /// egui time at which the first request was first drawn.
    shown_at: Option<f64>,
    /// The target picked for the first request.
    choice: Option<String>,
}

/// What the dialog shows as the target: the default if offered, else the first.
fn preselect(r: &AskRequest) -> Option<String> {
    r.default_target
        .clone()
        .filter(|t| r.targets.contains(t))
        .or_else(|| r.targets.first().cloned())
}

impl AskDialogs {
    /// Queues a question behind those already open.
    pub fn push(&mut self, request: AskRequest) {
        if self.queue.is_empty() {
            self.choice = preselect(&request);
            self.shown_at = None;
        }
        self.queue.push_back(request);
    }

    /// A question is open (input goes to no partition).
    pub fn is_open(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The question shown now.
    pub fn current(&self) -> Option<&AskRequest> {
        self.queue.front()
    }

    /// Questions open, the shown one included.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The target currently picked in the shown question.
    pub fn choice(&self) -> Option<&str> {
        self.choice.as_deref()
    }

    /// Whether the shown question takes answers at egui time `now`.
    pub fn accepts_answers(&self, now: f64) -> bool {
        self.shown_at.is_some_and(|t| now - t >= ANSWER_DELAY)
    }

    fn finish(&mut self, answer: AskAnswer) -> Option<Answered> {
        let r = self.queue.pop_front()?;
        self.shown_at = None;
        self.choice = self.queue.front().and_then(preselect);
        Some(Answered {
            owner: r.owner,
            continuation: r.continuation,
            answer,
        })
    }

    /// Draws the shown question as a host panel at the top of the central area (call
    /// before the partition views) and returns its answer, if one was given this frame.
    pub fn show(&mut self, ui: &mut Ui) -> Option<Answered> {
        let request = self.queue.front()?.clone();
        let now = ui.input(|i| i.time);
        let shown_at = *self.shown_at.get_or_insert(now);
        let ready = now - shown_at >= ANSWER_DELAY;
        if !ready {
            // Wake up when the buttons come alive, even without input.
            let left = (ANSWER_DELAY - (now - shown_at)).max(0.0);
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_secs_f64(left));
        }
        // Enter and Escape are the host's while a question is open: taken from egui
        // before any widget sees them, and counted only once the delay has passed.
        let (enter, escape) = ui.input_mut(|i| {
            (
                i.consume_key(Modifiers::NONE, Key::Enter),
                i.consume_key(Modifiers::NONE, Key::Escape),
            )
        });
        let mut answer = None;
        let stroke = egui::Stroke::new(3.0, ui.visuals().warn_fg_color);
        egui::Panel::top("ask_dialog").show(ui, |ui| {
            egui::Frame::new()
                .stroke(stroke)
                .inner_margin(egui::Margin::same(8))
                .show(ui, |ui| {
                    ui.set_width(ui.available_width());
                    answer = self.body(ui, &request, ready);
                });
        });
        if ready && answer.is_none() {
            if escape {
                answer = Some(AskAnswer::Deny);
            } else if enter {
                answer = self
                    .choice
                    .clone()
                    .map(|target| AskAnswer::Allow { target });
            }
        }
        answer.and_then(|a| self.finish(a))
    }

    fn body(&mut self, ui: &mut Ui, r: &AskRequest, ready: bool) -> Option<AskAnswer> {
        let waiting = self.queue.len() - 1;
        ui.horizontal(|ui| {
            ui.label(
                RichText::new(format!("Bulkhead asks: [{}] wants {}", r.source, r.service))
                    .strong()
                    .size(16.0),
            );
            if waiting > 0 {
                ui.weak(format!("({waiting} more waiting)"));
            }
        });
        egui::Grid::new("ask_fields")
            .num_columns(2)
            .spacing([12.0, 4.0])
            .show(ui, |ui| {
                ui.label("Service");
                ui.monospace(&r.service);
                ui.end_row();
                ui.label("Argument");
                ui.monospace(r.argument.as_deref().unwrap_or("(none)"));
                ui.end_row();
                ui.label("From");
                ui.strong(format!("[{}]", r.source));
                ui.end_row();
                let label = ui.label("Target");
                self.target_picker(ui, r, label.id);
                ui.end_row();
                ui.label("Asked by rule");
                ui.monospace(&r.rule);
                ui.end_row();
            });
        let mut answer = None;
        ui.horizontal(|ui| {
            let allow = ui.add_enabled(ready && self.choice.is_some(), egui::Button::new("Allow"));
            let deny = ui.add_enabled(ready, egui::Button::new("Deny"));
            if allow.clicked() {
                answer = self
                    .choice
                    .clone()
                    .map(|target| AskAnswer::Allow { target });
            } else if deny.clicked() {
                answer = Some(AskAnswer::Deny);
            }
            if ready {
                ui.weak("Enter allows, Escape denies");
            } else {
                ui.weak(
                    "the buttons wake up in a moment, so a key meant for a partition cannot answer",
                );
            }
        });
        answer
    }

    fn target_picker(&mut self, ui: &mut Ui, r: &AskRequest, label: egui::Id) {
        match r.targets.as_slice() {
            [] => {
                ui.colored_label(ui.visuals().error_fg_color, "no target is allowed");
            }
            [only] => {
                ui.strong(format!("[{only}]"));
            }
            many => {
                let shown = self
                    .choice
                    .as_deref()
                    .map_or_else(String::new, |c| format!("[{c}]"));
                let combo = egui::ComboBox::from_id_salt("ask_target")
                    .selected_text(shown)
                    .show_ui(ui, |ui| {
                        for t in many {
                            ui.selectable_value(
                                &mut self.choice,
                                Some(t.clone()),
                                format!("[{t}]"),
                            );
                        }
                    });
                let _ = combo.response.labelled_by(label);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: u64, targets: &[&str], default: Option<&str>) -> AskRequest {
        AskRequest {
            owner: AskOwner::Clipboard,
            continuation: n,
            service: "bulkhead.FileCopy".into(),
            argument: None,
            source: "work".into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            default_target: default.map(String::from),
            rule: "policy.d/50-default.policy:3".into(),
        }
    }

    #[test]
    fn the_default_target_is_preselected_only_when_offered() {
        let mut d = AskDialogs::default();
        d.push(request(1, &["mail", "vault"], Some("vault")));
        assert_eq!(d.choice(), Some("vault"));
        let mut d = AskDialogs::default();
        d.push(request(1, &["mail", "vault"], Some("browser")));
        assert_eq!(d.choice(), Some("mail"));
    }

    #[test]
    fn questions_are_answered_in_order_each_with_its_own_preselection() {
        let mut d = AskDialogs::default();
        d.push(request(7, &["mail"], None));
        d.push(request(8, &["vault", "mail"], Some("mail")));
        assert_eq!(d.len(), 2);
        let first = d.finish(AskAnswer::Deny).unwrap();
        assert_eq!((first.continuation, first.answer), (7, AskAnswer::Deny));
        assert_eq!(d.current().map(|r| r.continuation), Some(8));
        assert_eq!(d.choice(), Some("mail"));
        assert!(!d.accepts_answers(1e9), "not shown yet, so not answerable");
    }
}
