//! Partition views: each partition's pixels, scaled to fit with the right aspect, inside a
//! host-drawn border in its exact label colour and a `[name]` title bar. The guest's
//! pixels are only ever painted inside the border, so it cannot draw over either.

use egui::{pos2, vec2, Color32, Rect, RichText, Sense, Stroke, Ui, UiBuilder};

use crate::app::model::{sandbox_badge, LabelStyle, PartitionState, SourceKind};
use crate::app::{Action, PartitionSlot, ViewLayout};
use crate::input::router::{FocusState, ViewGeometry};

/// Height of the title bar in points.
pub const TITLE_HEIGHT: f32 = 22.0;
/// Border width in physical pixels; never less, whatever the scale factor.
pub const MIN_BORDER_PX: f32 = 4.0;

/// Where each part of a partition view goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewFrame {
    /// Border plus title bar.
    pub outer: Rect,
    pub title: Rect,
    /// The guest's pixels.
    pub image: Rect,
    /// Border width in points.
    pub border: f32,
}

/// Border width in points: at least [`MIN_BORDER_PX`] physical pixels and 4 points,
/// doubled for the focused partition.
pub fn border_width(pixels_per_point: f32, focused: bool) -> f32 {
    let base = (MIN_BORDER_PX / pixels_per_point.max(0.1)).max(4.0);
    let base = (base * pixels_per_point).ceil() / pixels_per_point.max(0.1);
    if focused {
        base * 2.0
    } else {
        base
    }
}

/// Fits a `fb` sized framebuffer, its border and title into `avail`, centred, keeping the
/// aspect ratio, on whole physical pixels.
pub fn frame_geometry(avail: Rect, fb: (u32, u32), ppp: f32, focused: bool) -> ViewFrame {
    let b = border_width(ppp, focused);
    let snap = |v: f32| (v * ppp).round() / ppp;
    let room = vec2(
        (avail.width() - 2.0 * b).max(1.0),
        (avail.height() - b - TITLE_HEIGHT).max(1.0),
    );
    let (fw, fh) = (fb.0.max(1) as f32, fb.1.max(1) as f32);
    let scale = (room.x / fw).min(room.y / fh);
    let size = vec2(snap(fw * scale).max(1.0), snap(fh * scale).max(1.0));
    let outer_size = vec2(size.x + 2.0 * b, size.y + b + TITLE_HEIGHT);
    let min = pos2(
        snap(avail.center().x - outer_size.x / 2.0),
        snap(avail.center().y - outer_size.y / 2.0),
    );
    let outer = Rect::from_min_size(min, outer_size);
    let title = Rect::from_min_size(min, vec2(outer_size.x, TITLE_HEIGHT));
    let image = Rect::from_min_size(pos2(min.x + b, min.y + TITLE_HEIGHT), size);
    ViewFrame {
        outer,
        title,
        image,
        border: b,
    }
}

/// Grey of the hairline drawn around a border that would vanish into the background.
pub const OUTLINE_GREY: u8 = 150;

/// WCAG relative luminance of an sRGB colour.
fn luminance(c: Color32) -> f32 {
    let lin = |v: u8| {
        let v = f32::from(v) / 255.0;
        if v <= 0.04045 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * lin(c.r()) + 0.7152 * lin(c.g()) + 0.0722 * lin(c.b())
}

/// Whether a border in `label` colour is too close to `background` to see where it ends
/// (black on the dark theme, yellow on the light one). The border keeps its exact label
/// colour; a neutral hairline outside it shows its extent.
pub fn needs_outline(label: Color32, background: Color32) -> bool {
    let (a, b) = (luminance(label), luminance(background));
    let contrast = (a.max(b) + 0.05) / (a.min(b) + 0.05);
    contrast < 1.6
}

fn shows_a_view(state: &PartitionState) -> bool {
    state.has_display() || matches!(state, PartitionState::Crashed { .. })
}

/// What the central area needs besides the partitions themselves.
#[derive(Debug, Clone, Copy)]
pub struct ViewsInput {
    pub layout: ViewLayout,
    pub selected_tab: usize,
    pub focus: FocusState,
}

/// Where each shown partition's pixels were drawn this frame, by slot index (the app
/// keeps it for pointer input).
pub type Drawn = Vec<(usize, ViewGeometry)>;

/// The central area: every partition with a display, as tabs or tiles.
pub fn show_all(
    ui: &mut Ui,
    slots: &[PartitionSlot],
    input: ViewsInput,
    actions: &mut Vec<Action>,
) -> Drawn {
    let visible: Vec<usize> = (0..slots.len())
        .filter(|&i| !slots[i].popped_out && shows_a_view(&slots[i].backend.state()))
        .collect();
    if visible.is_empty() {
        ui.centered_and_justified(|ui| {
            ui.label("No partition is running. Start one from the Partitions panel.");
        });
        return Drawn::new();
    }
    match input.layout {
        ViewLayout::Tabs => show_tabs(ui, slots, input, &visible, actions),
        ViewLayout::Tiles => show_tiles(ui, slots, input.focus, &visible, actions),
    }
}

fn show_tabs(
    ui: &mut Ui,
    slots: &[PartitionSlot],
    input: ViewsInput,
    visible: &[usize],
    actions: &mut Vec<Action>,
) -> Drawn {
    let selected = if visible.contains(&input.selected_tab) {
        input.selected_tab
    } else {
        visible[0]
    };
    ui.horizontal(|ui| {
        for &i in visible {
            let info = slots[i].backend.info();
            let text = RichText::new(format!("[{}]", info.name)).color(info.label.color());
            if ui.selectable_label(i == selected, text).clicked() {
                actions.push(Action::ShowTab(i));
            }
        }
    });
    let geometry = show_one(ui, &slots[selected], selected, input.focus, actions);
    vec![(selected, geometry)]
}

fn show_tiles(
    ui: &mut Ui,
    slots: &[PartitionSlot],
    focus: FocusState,
    visible: &[usize],
    actions: &mut Vec<Action>,
) -> Drawn {
    let n = visible.len();
    let cols = (n as f32).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let area = ui.available_rect_before_wrap();
    let gap = 8.0;
    let cell = vec2(
        (area.width() - gap * (cols - 1) as f32) / cols as f32,
        (area.height() - gap * (rows - 1) as f32) / rows as f32,
    );
    let mut drawn = Drawn::new();
    for (k, &i) in visible.iter().enumerate() {
        let (r, c) = (k / cols, k % cols);
        let min = area.min + vec2(c as f32 * (cell.x + gap), r as f32 * (cell.y + gap));
        let rect = Rect::from_min_size(min, cell);
        ui.scope_builder(UiBuilder::new().max_rect(rect), |ui| {
            drawn.push((i, show_one(ui, &slots[i], i, focus, actions)));
        });
    }
    ui.allocate_rect(area, Sense::hover());
    drawn
}

/// One partition view (slot `i`) filling `ui`'s available space; returns where its
/// pixels were drawn.
pub fn show_one(
    ui: &mut Ui,
    slot: &PartitionSlot,
    i: usize,
    focus: FocusState,
    actions: &mut Vec<Action>,
) -> ViewGeometry {
    let focused = focus.focused == Some(i);
    let captured = focused && focus.keyboard_captured;
    let info = slot.backend.info().clone();
    let pstate = slot.backend.state();
    let fb = slot
        .texture
        .texture()
        .map_or(info.display, |(_, s)| (s[0] as u32, s[1] as u32));
    let avail = ui.available_rect_before_wrap();
    let geo = frame_geometry(avail, fb, ui.ctx().pixels_per_point(), focused);
    let painter = ui.painter_at(avail.expand(4.0));

    if focused {
        // A ring outside the label border: focus is unmistakable yet never recolours it.
        painter.rect_stroke(
            geo.outer,
            0.0,
            Stroke::new(2.0, ui.visuals().strong_text_color()),
            egui::StrokeKind::Outside,
        );
    } else if needs_outline(info.label.color(), ui.visuals().panel_fill) {
        painter.rect_stroke(
            geo.outer,
            0.0,
            Stroke::new(1.0, Color32::from_gray(OUTLINE_GREY)),
            egui::StrokeKind::Outside,
        );
    }
    painter.rect_filled(geo.outer, 0.0, info.label.color());
    let mut title = format!("[{}]", info.name);
    if let Some(d) = info.source.disclaimer() {
        title.push_str(&format!("  {d}"));
    }
    if let Some(badge) = sandbox_badge(&slot.backend.sandbox_gaps()) {
        title.push_str(&format!("  [{badge}]"));
    }
    if let Some(badge) = slot.backend.resource_badge() {
        // Only the headline ("no resource limits"): the details are in the launcher, and
        // the whole text would push the focus/capture state out of the title.
        let headline = badge
            .split_once(':')
            .map_or(badge.as_str(), |(head, _)| head);
        title.push_str(&format!("  [{headline}]"));
    }
    if captured {
        title.push_str("  - KEYBOARD CAPTURED");
    } else if focused {
        title.push_str("  - focused");
    }
    painter.with_clip_rect(geo.title).text(
        geo.title.left_center() + vec2(geo.border + 2.0, 0.0),
        egui::Align2::LEFT_CENTER,
        title,
        egui::FontId::proportional(14.0),
        info.label.text_color(),
    );

    match slot.texture.texture() {
        Some((id, _)) if pstate.has_display() => {
            let uv = Rect::from_min_max(pos2(0.0, 0.0), pos2(1.0, 1.0));
            painter.image(id, geo.image, uv, Color32::WHITE);
        }
        _ => {
            painter.rect_filled(geo.image, 0.0, Color32::from_gray(20));
        }
    }
    if let Some(msg) = overlay_text(&pstate) {
        if pstate == PartitionState::Paused {
            painter.rect_filled(geo.image, 0.0, Color32::from_black_alpha(140));
        }
        painter.text(
            geo.image.center(),
            egui::Align2::CENTER_CENTER,
            msg,
            egui::FontId::proportional(18.0),
            Color32::WHITE,
        );
    }

    let geometry = ViewGeometry {
        image_rect: geo.image,
        fb_width: fb.0,
        fb_height: fb.1,
    };
    let response = ui.interact(
        geo.outer,
        ui.scope_id().with(("partition-view", i)),
        Sense::click(),
    );
    let label = match info.source {
        SourceKind::Partition => format!("partition view [{}]", info.name),
        SourceKind::SoftwareFramebuffer => format!("software framebuffer view [{}]", info.name),
    };
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &label));
    if response.clicked() {
        let on_pixels = response
            .interact_pointer_pos()
            .is_some_and(|p| geo.image.contains(p));
        if on_pixels && pstate == PartitionState::Running {
            actions.push(Action::Capture(i));
        } else {
            actions.push(Action::Focus(i));
        }
    }
    if captured {
        // Keep Tab, arrows and Escape for the guest while it has the keyboard.
        ui.memory_mut(|m| {
            m.request_focus(response.id);
            m.set_focus_lock_filter(
                response.id,
                egui::EventFilter {
                    tab: true,
                    horizontal_arrows: true,
                    vertical_arrows: true,
                    escape: true,
                },
            );
        });
    }
    geometry
}

fn overlay_text(state: &PartitionState) -> Option<String> {
    match state {
        PartitionState::Preparing { what } => Some(what.clone()),
        PartitionState::Booting => Some("booting…".into()),
        PartitionState::Starting { app } => Some(format!("starting {app}…")),
        PartitionState::Paused => Some("paused".into()),
        PartitionState::Crashed { reason } => Some(format!("crashed: {reason}")),
        PartitionState::Stopped => Some("stopped".into()),
        PartitionState::Running => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn border_is_at_least_four_physical_pixels_at_any_scale() {
        for ppp in [0.5, 1.0, 1.25, 1.5, 2.0, 3.0] {
            assert!(border_width(ppp, false) * ppp >= 4.0, "ppp {ppp}");
        }
    }

    #[test]
    fn focused_border_is_wider() {
        assert!(border_width(1.0, true) > border_width(1.0, false));
    }

    #[test]
    fn image_keeps_the_framebuffer_aspect_ratio() {
        let avail = Rect::from_min_size(pos2(0.0, 0.0), vec2(1000.0, 500.0));
        let g = frame_geometry(avail, (1024, 768), 1.0, false);
        let aspect = g.image.width() / g.image.height();
        assert!((aspect - 1024.0 / 768.0).abs() < 0.01, "{aspect}");
        assert!(avail.contains_rect(g.outer));
    }

    #[test]
    fn only_labels_that_vanish_into_the_theme_get_an_outline() {
        use crate::app::model::Label;
        let dark = egui::Visuals::dark().panel_fill;
        let light = egui::Visuals::light().panel_fill;
        assert!(needs_outline(Label::Black.color(), dark));
        assert!(needs_outline(Label::Yellow.color(), light));
        for label in [
            Label::Red,
            Label::Orange,
            Label::Green,
            Label::Blue,
            Label::Purple,
        ] {
            assert!(!needs_outline(label.color(), dark), "{label:?} on dark");
        }
        assert!(!needs_outline(Label::Black.color(), light));
    }

    #[test]
    fn border_and_title_lie_outside_the_guest_pixels() {
        let avail = Rect::from_min_size(pos2(10.0, 10.0), vec2(640.0, 480.0));
        let g = frame_geometry(avail, (320, 240), 1.0, false);
        assert!(g.outer.contains_rect(g.image));
        assert!(!g.title.intersects(g.image.shrink(0.5)));
        assert_eq!(g.image.left() - g.outer.left(), g.border);
        assert_eq!(g.outer.right() - g.image.right(), g.border);
        assert_eq!(g.outer.bottom() - g.image.bottom(), g.border);
        assert_eq!(g.image.top() - g.outer.top(), TITLE_HEIGHT);
    }
}
