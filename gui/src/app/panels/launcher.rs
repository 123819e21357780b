//! The launcher: every configured partition with its label, kind, state and figures,
//! and the buttons that drive it.

use egui::{Color32, RichText, Sense, Ui};

use crate::app::backend::NetworkState;
use crate::app::clipboard::{ClipboardStatus, StatusKind};
use crate::app::model::{format_uptime, memory_text, sandbox_badge, LabelStyle, PartitionState};
use crate::app::{Action, PartitionSlot};

pub fn show(
    ui: &mut Ui,
    slots: &[PartitionSlot],
    focused: Option<usize>,
    actions: &mut Vec<Action>,
) {
    ui.horizontal(|ui| {
        ui.heading("Partitions");
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui
                .button("Import…")
                .on_hover_text("Add a partition from a bundle made by Export…")
                .clicked()
            {
                actions.push(Action::OpenImport);
            }
        });
    });
    if slots.is_empty() {
        ui.label("No partitions configured. Add one in the Policy panel.");
        return;
    }
    egui::ScrollArea::vertical().show(ui, |ui| {
        for (i, slot) in slots.iter().enumerate() {
            row(ui, i, slot, focused == Some(i), actions);
            ui.add_space(6.0);
        }
    });
}

fn row(ui: &mut Ui, i: usize, slot: &PartitionSlot, focused: bool, actions: &mut Vec<Action>) {
    let info = slot.backend.info();
    let state = slot.backend.state();
    let stroke = if focused {
        egui::Stroke::new(2.0, info.label.color())
    } else {
        ui.visuals().widgets.noninteractive.bg_stroke
    };
    egui::Frame::group(ui.style())
        .stroke(stroke)
        .show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.horizontal(|ui| {
                swatch(ui, info.label.color());
                ui.strong(format!("[{}]", info.name));
                ui.weak(&info.kind);
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    ui.label(state_text(&state));
                    let live_export = slot.backend.can_save_state();
                    export_button(ui, i, &state, live_export, actions);
                });
            });
            if let Some(disclaimer) = info.source.disclaimer() {
                ui.label(
                    RichText::new(disclaimer)
                        .italics()
                        .color(ui.visuals().warn_fg_color),
                );
            }
            if let Some(badge) = sandbox_badge(&slot.backend.sandbox_gaps()) {
                sandbox_reduced(ui, &badge);
            }
            let net = slot.backend.network();
            let disposable = slot.backend.offers_disposable();
            if net.is_some() || disposable {
                ui.horizontal(|ui| {
                    if let Some(state) = &net {
                        network(ui, state);
                    }
                    if disposable {
                        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                            disposable_button(ui, i, actions);
                        });
                    }
                });
            }
            if let Some(badge) = slot.backend.resource_badge() {
                outlined_badge(
                    ui,
                    &badge,
                    "This partition's CPU, memory or disk use is not limited as its policy says: \
                     it can take more of the host than its share.",
                );
            }
            if let PartitionState::Crashed { reason } = &state {
                ui.colored_label(ui.visuals().error_fg_color, format!("reason: {reason}"));
            }
            figures(ui, slot, &state);
            if let Some(event) = &slot.event {
                event_line(ui, event);
            }
            if let Some((fraction, what)) = &slot.transfer {
                ui.add(
                    egui::ProgressBar::new(*fraction)
                        .show_percentage()
                        .desired_height(12.0),
                )
                .on_hover_text(what);
            }
            buttons(ui, i, &state, slot.popped_out, actions);
            if let Some(err) = &slot.last_error {
                ui.colored_label(ui.visuals().error_fg_color, err);
            }
        });
}

/// Export… for a stopped (or crashed) partition, and for a running one whose state can
/// be saved (`live`); disabled, saying why, otherwise.
fn export_button(
    ui: &mut Ui,
    i: usize,
    state: &PartitionState,
    live: Result<(), String>,
    actions: &mut Vec<Action>,
) {
    let stopped = matches!(
        state,
        PartitionState::Stopped | PartitionState::Crashed { .. }
    );
    let running = matches!(
        state,
        PartitionState::Running | PartitionState::Paused | PartitionState::Starting { .. }
    );
    let (enabled, hover) = match (stopped, running, live) {
        (true, _, _) => (
            true,
            "Write it to one encrypted file: config, rules, private disk".to_string(),
        ),
        (_, true, Ok(())) => (
            true,
            "Write it to one encrypted file with its running state: it pauses for the snapshot and disk copy, then runs on".to_string(),
        ),
        (_, true, Err(why)) => (
            false,
            format!("Stop it first: its running state cannot be saved: {why}"),
        ),
        _ => (false, "Wait until it has started or stopped".to_string()),
    };
    let button = ui.add_enabled(enabled, egui::Button::new("Export…").small());
    let button = match enabled {
        true => button.on_hover_text(hover),
        false => button.on_disabled_hover_text(hover),
    };
    if button.clicked() {
        actions.push(Action::Export(i));
    }
}

/// A badge, not a log line: the partition runs with less confinement than designed.
/// Outlined rather than filled, so it never reads as a trust label's colour.
fn sandbox_reduced(ui: &mut Ui, text: &str) {
    outlined_badge(
        ui,
        text,
        "This host lacks part of the partition sandbox; the partition runs with the rest.",
    );
}

fn outlined_badge(ui: &mut Ui, text: &str, hover: &str) {
    let warn = ui.visuals().warn_fg_color;
    egui::Frame::new()
        .stroke(egui::Stroke::new(1.5, warn))
        .corner_radius(4.0)
        .inner_margin(egui::Margin::symmetric(6, 2))
        .show(ui, |ui| {
            ui.label(RichText::new(text).color(warn).strong());
        })
        .response
        .on_hover_text(hover);
}

/// The partition's network in one line: "offline", "NAT · 2 rules", or, in the error
/// colour, "network down: relay killed by SIGKILL" (nothing passes).
fn disposable_button(ui: &mut Ui, i: usize, actions: &mut Vec<Action>) {
    if ui
        .small_button("Disposable")
        .on_hover_text(
            "Start a disposable copy: restored from a snapshot of this partition's template and app, gone when it stops",
        )
        .clicked()
    {
        actions.push(Action::StartDisposable(i));
    }
}

fn network(ui: &mut Ui, state: &NetworkState) {
    let text = format!("network: {}", state.caption());
    match state {
        NetworkState::Offline => {
            ui.weak(text);
        }
        NetworkState::Nat { applied, .. } => {
            ui.label(text).on_hover_text(if *applied {
                "NAT through passt; the firewall relay enforces these rules"
            } else {
                "NAT through passt; the relay denies everything until it has the rules"
            });
        }
        NetworkState::Down { .. } => {
            ui.colored_label(ui.visuals().error_fg_color, state.caption())
                .on_hover_text("The firewall relay is gone: nothing reaches the network until the partition restarts");
        }
    }
}

/// The partition's last clipboard event, until the next one replaces it.
fn event_line(ui: &mut Ui, event: &ClipboardStatus) {
    let text = RichText::new(format!("{}: {}", event.topic, event.text));
    ui.label(match event.kind {
        StatusKind::Refused => text.color(ui.visuals().error_fg_color),
        StatusKind::Waiting => text.weak(),
        StatusKind::Done => text,
    });
}

fn swatch(ui: &mut Ui, color: Color32) {
    let (rect, _) = ui.allocate_exact_size(egui::vec2(14.0, 14.0), Sense::hover());
    ui.painter().rect_filled(rect, 2.0, color);
}

fn state_text(state: &PartitionState) -> RichText {
    let color = match state {
        PartitionState::Running => Color32::from_rgb(0x4e, 0x9a, 0x06),
        PartitionState::Preparing { .. }
        | PartitionState::Booting
        | PartitionState::Starting { .. } => Color32::from_rgb(0xc4, 0xa0, 0x00),
        PartitionState::Paused => Color32::from_rgb(0x72, 0x9f, 0xcf),
        PartitionState::Crashed { .. } => Color32::from_rgb(0xef, 0x29, 0x29),
        PartitionState::Stopped => Color32::GRAY,
    };
    RichText::new(state.word()).color(color).strong()
}

fn figures(ui: &mut Ui, slot: &PartitionSlot, state: &PartitionState) {
    let info = slot.backend.info();
    let stats = slot.backend.stats();
    ui.horizontal_wrapped(|ui| {
        ui.weak(format!("{} MiB", info.memory_mib));
        ui.weak(format!("{} vCPU", info.vcpus));
        ui.weak(format!("{}×{}", info.display.0, info.display.1));
        if matches!(state, PartitionState::Running | PartitionState::Paused) {
            ui.label(format!(
                "CPU {:.0}%  up {}  {} in use",
                stats.cpu_percent,
                format_uptime(stats.uptime),
                memory_text(u64::from(stats.memory_mib), stats.balloon_mib)
            ));
        }
    });
}

fn buttons(ui: &mut Ui, i: usize, state: &PartitionState, popped: bool, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        let mut button = |ui: &mut Ui, text: &str, enabled: bool, action: Action| {
            if ui.add_enabled(enabled, egui::Button::new(text)).clicked() {
                actions.push(action);
            }
        };
        button(ui, "Start", state.can_start(), Action::Start(i));
        button(
            ui,
            "Stop",
            *state != PartitionState::Stopped,
            Action::Stop(i),
        );
        if *state == PartitionState::Paused {
            button(ui, "Resume", true, Action::Resume(i));
        } else {
            button(
                ui,
                "Pause",
                *state == PartitionState::Running,
                Action::Pause(i),
            );
        }
        button(
            ui,
            "Restart",
            *state != PartitionState::Stopped,
            Action::Restart(i),
        );
        if state.has_display() {
            if popped {
                button(ui, "Pop in", true, Action::PopIn(i));
            } else {
                button(ui, "Pop out", true, Action::PopOut(i));
            }
        }
    });
}
