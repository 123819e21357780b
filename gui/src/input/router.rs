//! Which partition hears the keyboard and pointer: the focused one, and nobody else.
//!
//! The keyboard reaches a partition only while it is *captured* (after a click into the
//! partition's view); the host shortcut [`RELEASE_SHORTCUT_TEXT`] gives it back to the host
//! and lifts every key the guest still believes is held, so nothing sticks.

use std::collections::BTreeSet;

use egui::{Event, Modifiers, Pos2, Rect};

use super::keys::{button_code, key_code, modifier_codes};
use super::UserInput;

/// What the user presses to take the keyboard back from a partition.
pub const RELEASE_SHORTCUT_TEXT: &str = "Ctrl+Alt+G";

/// Focus and capture, as the UI shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FocusState {
    /// Index of the focused partition in the app's list.
    pub focused: Option<usize>,
    /// The focused partition receives the keyboard.
    pub keyboard_captured: bool,
}

/// Where the focused partition's pixels are on screen, to turn pointer positions into
/// framebuffer coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewGeometry {
    pub image_rect: Rect,
    pub fb_width: u32,
    pub fb_height: u32,
}

impl ViewGeometry {
    /// The framebuffer pixel under `pos`, or `None` outside the guest pixels (on the host
    /// border, the title bar, or elsewhere).
    pub fn to_framebuffer(&self, pos: Pos2) -> Option<(u32, u32)> {
        let r = self.image_rect;
        if self.fb_width == 0 || self.fb_height == 0 || r.width() <= 0.0 || r.height() <= 0.0 {
            return None;
        }
        if pos.x < r.min.x || pos.y < r.min.y || pos.x >= r.max.x || pos.y >= r.max.y {
            return None;
        }
        let fx = ((pos.x - r.min.x) / r.width() * self.fb_width as f32) as u32;
        let fy = ((pos.y - r.min.y) / r.height() * self.fb_height as f32) as u32;
        Some((fx.min(self.fb_width - 1), fy.min(self.fb_height - 1)))
    }
}

/// The secure clipboard's gestures, taken from the keyboard before the guest sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipboardGesture {
    /// Ctrl+Shift+C: copy the focused partition's clipboard into the host's buffer.
    Copy,
    /// Ctrl+Shift+V: paste the host's buffer into the focused partition, if policy allows.
    Paste,
}

/// What the user presses to copy out of / paste into the focused partition.
pub const COPY_SHORTCUT_TEXT: &str = "Ctrl+Shift+C";
pub const PASTE_SHORTCUT_TEXT: &str = "Ctrl+Shift+V";

/// Events for one partition, produced by one [`InputRouter::route`] call.
#[derive(Debug, Default, PartialEq)]
pub struct Routed {
    /// Every event here is for this partition; `None` when nothing is focused.
    pub target: Option<usize>,
    pub events: Vec<UserInput>,
    /// The user pressed the release shortcut this frame.
    pub released: bool,
    /// Clipboard gestures pressed this frame, for [`Routed::target`]; their keys are
    /// not in `events`.
    pub gestures: Vec<ClipboardGesture>,
}

#[derive(Debug, Default)]
pub struct InputRouter {
    state: FocusState,
    /// Keys and buttons the focused guest has seen pressed and not released.
    held: BTreeSet<u16>,
    modifiers: Modifiers,
}

impl InputRouter {
    pub fn state(&self) -> FocusState {
        self.state
    }

    /// Moves focus; the previously focused partition gets key-ups for whatever it still
    /// holds, so switching never leaves a key stuck down in a guest.
    pub fn focus(&mut self, index: Option<usize>) -> Routed {
        if self.state.focused == index {
            return Routed::default();
        }
        let released = self.release_held();
        self.state = FocusState {
            focused: index,
            keyboard_captured: false,
        };
        released
    }

    /// Gives the keyboard to the focused partition (after a click into its view).
    pub fn capture(&mut self) {
        if self.state.focused.is_some() {
            self.state.keyboard_captured = true;
        }
    }

    /// Gives the keyboard back to the host.
    pub fn release(&mut self) -> Routed {
        let mut out = self.release_held();
        out.released = true;
        self.state.keyboard_captured = false;
        out
    }

    /// Forgets a partition that went away (stopped or removed) without sending it anything.
    pub fn forget(&mut self, index: usize) {
        if self.state.focused == Some(index) {
            self.state = FocusState::default();
            self.held.clear();
        }
    }

    /// Slot `index` was removed: forgotten if focused, later indices move down by one.
    pub fn removed(&mut self, index: usize) {
        self.forget(index);
        if let Some(f) = self.state.focused.filter(|f| *f > index) {
            self.state.focused = Some(f - 1);
        }
    }

    fn release_held(&mut self) -> Routed {
        let events = std::mem::take(&mut self.held)
            .into_iter()
            .map(|code| {
                if code >= 0x100 {
                    UserInput::Button {
                        code,
                        pressed: false,
                    }
                } else {
                    UserInput::Key {
                        code,
                        pressed: false,
                    }
                }
            })
            .collect();
        self.modifiers = Modifiers::NONE;
        Routed {
            target: self.state.focused,
            events,
            released: false,
            gestures: Vec::new(),
        }
    }

    /// Translates this frame's egui events for the focused partition.
    ///
    /// `view` is where the focused partition's pixels are; pointer events outside them are
    /// not the guest's. `modifiers` is egui's modifier state at the end of the frame, which
    /// catches a lone modifier being released (egui sends no key event for that).
    pub fn route(
        &mut self,
        events: &[Event],
        view: Option<ViewGeometry>,
        modifiers: Modifiers,
    ) -> Routed {
        let Some(target) = self.state.focused else {
            return Routed::default();
        };
        let mut out = Vec::new();
        let mut gestures = Vec::new();
        for event in events {
            if self.is_release_shortcut(event) {
                let mut released = self.release();
                released.events.splice(0..0, out);
                released.gestures = gestures;
                return released;
            }
            if let Some(g) = self.clipboard_gesture(event) {
                gestures.push(g);
                continue;
            }
            self.translate(event, view, &mut out);
        }
        if self.state.keyboard_captured {
            self.sync_modifiers(modifiers, &mut out);
        }
        Routed {
            target: Some(target),
            events: out,
            released: false,
            gestures,
        }
    }

    /// Ctrl+Shift+C / Ctrl+Shift+V while a partition has the keyboard: the host's, never
    /// the guest's. Their key-ups are not forwarded either (the guest never saw the
    /// press, so `push_key` drops the release).
    fn clipboard_gesture(&self, event: &Event) -> Option<ClipboardGesture> {
        let Event::Key {
            key,
            physical_key,
            pressed: true,
            repeat: false,
            modifiers,
        } = event
        else {
            return None;
        };
        if !self.state.keyboard_captured || !modifiers.ctrl || !modifiers.shift || modifiers.alt {
            return None;
        }
        let is = |k: egui::Key| *key == k || *physical_key == Some(k);
        if is(egui::Key::C) {
            Some(ClipboardGesture::Copy)
        } else if is(egui::Key::V) {
            Some(ClipboardGesture::Paste)
        } else {
            None
        }
    }

    fn is_release_shortcut(&self, event: &Event) -> bool {
        matches!(
            event,
            Event::Key { key: egui::Key::G, pressed: true, modifiers, .. }
                if modifiers.ctrl && modifiers.alt && self.state.keyboard_captured
        )
    }

    fn translate(&mut self, event: &Event, view: Option<ViewGeometry>, out: &mut Vec<UserInput>) {
        match event {
            Event::Key {
                key,
                physical_key,
                pressed,
                repeat,
                modifiers,
            } if self.state.keyboard_captured => {
                self.sync_modifiers(*modifiers, out);
                let Some(code) = key_code(physical_key.unwrap_or(*key)) else {
                    return;
                };
                // A repeat is the guest's business (its own autorepeat), not ours.
                if *repeat {
                    return;
                }
                self.push_key(code, *pressed, out);
            }
            Event::ModifiersChanged(m) if self.state.keyboard_captured => {
                self.sync_modifiers(*m, out);
            }
            Event::PointerMoved(pos) => {
                if let Some((x, y)) = view.and_then(|v| v.to_framebuffer(*pos)) {
                    out.push(UserInput::PointerAbs { x, y });
                }
            }
            Event::PointerButton {
                pos,
                button,
                pressed,
                ..
            } => {
                let code = button_code(*button);
                let inside = view.and_then(|v| v.to_framebuffer(*pos));
                // A press counts only on the guest's pixels; a release always goes to the
                // guest that saw the press, wherever the pointer is by then.
                if let Some((x, y)) = inside.filter(|_| *pressed) {
                    out.push(UserInput::PointerAbs { x, y });
                    self.push_key(code, true, out);
                } else if !*pressed && self.held.contains(&code) {
                    self.push_key(code, false, out);
                }
            }
            Event::MouseWheel { delta, unit, .. } => {
                let hovered = view.is_some_and(|v| v.image_rect.is_positive());
                if hovered {
                    let steps = wheel_steps(*delta, *unit);
                    if steps != (0, 0) {
                        out.push(UserInput::Wheel {
                            dx: steps.0,
                            dy: steps.1,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn push_key(&mut self, code: u16, pressed: bool, out: &mut Vec<UserInput>) {
        let changed = if pressed {
            self.held.insert(code)
        } else {
            self.held.remove(&code)
        };
        if !changed {
            return;
        }
        let event = if code >= 0x100 {
            UserInput::Button { code, pressed }
        } else {
            UserInput::Key { code, pressed }
        };
        out.push(event);
    }

    fn sync_modifiers(&mut self, now: Modifiers, out: &mut Vec<UserInput>) {
        let before = modifier_codes(self.modifiers);
        for ((code, was), (_, is)) in before.into_iter().zip(modifier_codes(now)) {
            if was != is {
                self.push_key(code, is, out);
            }
        }
        self.modifiers = now;
    }
}

/// egui's wheel delta in evdev wheel steps (one step per line, 50 points per line).
fn wheel_steps(delta: egui::Vec2, unit: egui::MouseWheelUnit) -> (i32, i32) {
    let lines = match unit {
        egui::MouseWheelUnit::Line => delta,
        egui::MouseWheelUnit::Point => delta / 50.0,
        egui::MouseWheelUnit::Page => delta * 10.0,
    };
    (lines.x.round() as i32, lines.y.round() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui::{pos2, vec2, Key};
    use vmm_core::evdev::{BTN_LEFT, KEY_LEFTCTRL};

    fn key(key: Key, pressed: bool, modifiers: Modifiers) -> Event {
        Event::Key {
            key,
            physical_key: Some(key),
            pressed,
            repeat: false,
            modifiers,
        }
    }

    fn view() -> ViewGeometry {
        ViewGeometry {
            image_rect: Rect::from_min_size(pos2(100.0, 50.0), vec2(512.0, 384.0)),
            fb_width: 1024,
            fb_height: 768,
        }
    }

    #[test]
    fn nothing_focused_means_no_partition_receives_anything() {
        let mut r = InputRouter::default();
        let routed = r.route(
            &[
                key(Key::A, true, Modifiers::NONE),
                Event::PointerMoved(pos2(200.0, 100.0)),
            ],
            Some(view()),
            Modifiers::NONE,
        );
        assert_eq!(routed, Routed::default());
    }

    #[test]
    fn only_the_focused_partition_is_the_target() {
        let mut r = InputRouter::default();
        r.focus(Some(2));
        r.capture();
        let routed = r.route(
            &[key(Key::A, true, Modifiers::NONE)],
            Some(view()),
            Modifiers::NONE,
        );
        assert_eq!(routed.target, Some(2));
        assert_eq!(
            routed.events,
            vec![UserInput::Key {
                code: 30,
                pressed: true
            }]
        );
    }

    #[test]
    fn clipboard_gestures_go_to_the_host_and_their_keys_never_reach_the_guest() {
        use vmm_core::evdev::{KEY_C, KEY_LEFTSHIFT, KEY_V};
        let mut r = InputRouter::default();
        r.focus(Some(1));
        r.capture();
        let cs = Modifiers {
            ctrl: true,
            shift: true,
            ..Modifiers::NONE
        };
        let routed = r.route(
            &[
                key(Key::C, true, cs),
                key(Key::C, false, cs),
                key(Key::V, true, cs),
                key(Key::V, false, cs),
            ],
            Some(view()),
            cs,
        );
        assert_eq!(routed.target, Some(1));
        assert_eq!(
            routed.gestures,
            vec![ClipboardGesture::Copy, ClipboardGesture::Paste]
        );
        let codes: Vec<u16> = routed
            .events
            .iter()
            .map(|e| match e {
                UserInput::Key { code, .. } => *code,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // The modifiers are the guest's (it saw them pressed); C and V are not.
        assert!(
            !codes.contains(&KEY_C) && !codes.contains(&KEY_V),
            "{codes:?}"
        );
        assert!(codes.contains(&KEY_LEFTCTRL) && codes.contains(&KEY_LEFTSHIFT));
    }

    #[test]
    fn plain_ctrl_c_and_uncaptured_gestures_are_not_clipboard_gestures() {
        let ctrl = Modifiers {
            ctrl: true,
            ..Modifiers::NONE
        };
        let cs = Modifiers {
            shift: true,
            ..ctrl
        };
        let mut r = InputRouter::default();
        r.focus(Some(0));
        r.capture();
        let routed = r.route(&[key(Key::C, true, ctrl)], Some(view()), ctrl);
        assert!(routed.gestures.is_empty());
        assert!(routed.events.contains(&UserInput::Key {
            code: vmm_core::evdev::KEY_C,
            pressed: true
        }));
        // Autorepeat of a held gesture is not a second gesture.
        let repeat = Event::Key {
            key: Key::V,
            physical_key: Some(Key::V),
            pressed: true,
            repeat: true,
            modifiers: cs,
        };
        assert!(r.route(&[repeat], Some(view()), cs).gestures.is_empty());
        // Without the keyboard captured, the keys are the host's anyway.
        let mut idle = InputRouter::default();
        idle.focus(Some(0));
        assert!(idle
            .route(&[key(Key::C, true, cs)], Some(view()), cs)
            .gestures
            .is_empty());
    }

    #[test]
    fn keyboard_is_withheld_until_captured() {
        let mut r = InputRouter::default();
        r.focus(Some(0));
        let routed = r.route(
            &[key(Key::A, true, Modifiers::NONE)],
            Some(view()),
            Modifiers::NONE,
        );
        assert!(routed.events.is_empty());
    }

    #[test]
    fn pointer_position_is_scaled_to_framebuffer_pixels() {
        let mut r = InputRouter::default();
        r.focus(Some(0));
        let routed = r.route(
            &[Event::PointerMoved(pos2(356.0, 242.0))],
            Some(view()),
            Modifiers::NONE,
        );
        assert_eq!(
            routed.events,
            vec![UserInput::PointerAbs { x: 512, y: 384 }]
        );
    }

    #[test]
    fn pointer_on_the_host_border_is_not_sent_to_the_guest() {
        let mut r = InputRouter::default();
        r.focus(Some(0));
        let routed = r.route(
            &[Event::PointerMoved(pos2(99.0, 60.0))],
            Some(view()),
            Modifiers::NONE,
        );
        assert!(routed.events.is_empty());
    }

    #[test]
    fn button_release_outside_still_reaches_the_guest_that_saw_the_press() {
        let mut r = InputRouter::default();
        r.focus(Some(0));
        let press = Event::PointerButton {
            pos: pos2(120.0, 60.0),
            button: egui::PointerButton::Primary,
            pressed: true,
            modifiers: Modifiers::NONE,
        };
        let release = Event::PointerButton {
            pos: pos2(5.0, 5.0),
            button: egui::PointerButton::Primary,
            pressed: false,
            modifiers: Modifiers::NONE,
        };
        let routed = r.route(&[press, release], Some(view()), Modifiers::NONE);
        assert_eq!(
            routed.events,
            vec![
                UserInput::PointerAbs { x: 40, y: 20 },
                UserInput::Button {
                    code: BTN_LEFT,
                    pressed: true
                },
                UserInput::Button {
                    code: BTN_LEFT,
                    pressed: false
                },
            ]
        );
    }

    #[test]
    fn modifiers_become_their_own_key_events() {
        let mut r = InputRouter::default();
        r.focus(Some(0));
        r.capture();
        let ctrl = Modifiers {
            ctrl: true,
            ..Modifiers::NONE
        };
        let routed = r.route(&[key(Key::C, true, ctrl)], Some(view()), Modifiers::NONE);
        assert_eq!(
            routed.events,
            vec![
                UserInput::Key {
                    code: KEY_LEFTCTRL,
                    pressed: true
                },
                UserInput::Key {
                    code: 46,
                    pressed: true
                },
                UserInput::Key {
                    code: KEY_LEFTCTRL,
                    pressed: false
                },
            ]
        );
    }

    #[test]
    fn release_shortcut_frees_the_keyboard_and_lifts_held_keys() {
        let mut r = InputRouter::default();
        r.focus(Some(1));
        r.capture();
        let ctrl_alt = Modifiers {
            ctrl: true,
            alt: true,
            ..Modifiers::NONE
        };
        let routed = r.route(
            &[
                key(Key::A, true, Modifiers::NONE),
                key(Key::G, true, ctrl_alt),
            ],
            Some(view()),
            ctrl_alt,
        );
        assert!(routed.released);
        assert!(!r.state().keyboard_captured);
        assert_eq!(routed.target, Some(1));
        // The G itself is the host's; the guest sees A go down and then everything lift.
        assert!(!routed.events.contains(&UserInput::Key {
            code: 34,
            pressed: true
        }));
        let ups: Vec<_> = routed
            .events
            .iter()
            .filter(|e| matches!(e, UserInput::Key { pressed: false, .. }))
            .collect();
        assert_eq!(ups.len(), 1, "A was held: {:?}", routed.events);
        let after = r.route(
            &[key(Key::B, true, Modifiers::NONE)],
            Some(view()),
            Modifiers::NONE,
        );
        assert!(after.events.is_empty(), "keyboard must stay with the host");
    }

    #[test]
    fn switching_focus_releases_keys_in_the_old_partition() {
        let mut r = InputRouter::default();
        r.focus(Some(0));
        r.capture();
        r.route(
            &[key(Key::W, true, Modifiers::NONE)],
            Some(view()),
            Modifiers::NONE,
        );
        let routed = r.focus(Some(1));
        assert_eq!(routed.target, Some(0));
        assert_eq!(
            routed.events,
            vec![UserInput::Key {
                code: 17,
                pressed: false
            }]
        );
        assert_eq!(
            r.state(),
            FocusState {
                focused: Some(1),
                keyboard_captured: false
            }
        );
    }
}
