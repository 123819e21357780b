//! Guest input events in Linux evdev codes (`linux/input-event-codes.h`).

use serde::{Deserialize, Serialize};

pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const SYN_REPORT: u16 = 0;
pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;
pub const REL_HWHEEL: u16 = 0x06;
pub const REL_WHEEL: u16 = 0x08;

pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
pub const BTN_SIDE: u16 = 0x113;
pub const BTN_EXTRA: u16 = 0x114;

pub const KEY_LEFTCTRL: u16 = 29;
pub const KEY_LEFTSHIFT: u16 = 42;
pub const KEY_LEFTALT: u16 = 56;
pub const KEY_LEFTMETA: u16 = 125;

/// One input event for a partition, already in the guest's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InputEvent {
    /// A key changed state; `code` is a Linux `KEY_*` code.
    Key { code: u16, pressed: bool },
    /// The pointer is at this pixel of the partition's framebuffer.
    PointerAbs { x: u32, y: u32 },
    /// A pointer button changed state; `code` is a Linux `BTN_*` code.
    Button { code: u16, pressed: bool },
    /// Wheel steps: positive `dy` scrolls up, positive `dx` scrolls right (evdev's sense).
    Wheel { dx: i32, dy: i32 },
}

/// The wire form of one evdev event, as the virtio-input device queues it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvdevEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl EvdevEvent {
    const fn new(kind: u16, code: u16, value: i32) -> Self {
        Self { kind, code, value }
    }
}

impl InputEvent {
    /// The evdev events this becomes, closed by `SYN_REPORT` so the guest sees one report.
    pub fn to_evdev(&self) -> Vec<EvdevEvent> {
        let mut out = match *self {
            Self::Key { code, pressed } | Self::Button { code, pressed } => {
                vec![EvdevEvent::new(EV_KEY, code, i32::from(pressed))]
            }
            Self::PointerAbs { x, y } => vec![
                EvdevEvent::new(EV_ABS, ABS_X, saturate(x)),
                EvdevEvent::new(EV_ABS, ABS_Y, saturate(y)),
            ],
            Self::Wheel { dx, dy } => {
                let mut v = Vec::with_capacity(2);
                if dy != 0 {
                    v.push(EvdevEvent::new(EV_REL, REL_WHEEL, dy));
                }
                if dx != 0 {
                    v.push(EvdevEvent::new(EV_REL, REL_HWHEEL, dx));
                }
                v
            }
        };
        out.push(EvdevEvent::new(EV_SYN, SYN_REPORT, 0));
        out
    }
}

fn saturate(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// The evdev button code for an egui pointer button.
pub fn button_code(button: egui::PointerButton) -> u16 {
    match button {
        egui::PointerButton::Primary => BTN_LEFT,
        egui::PointerButton::Secondary => BTN_RIGHT,
        egui::PointerButton::Middle => BTN_MIDDLE,
        egui::PointerButton::Extra1 => BTN_SIDE,
        egui::PointerButton::Extra2 => BTN_EXTRA,
    }
}

/// The evdev key code of the physical key egui reports, US layout positions (the guest
/// applies its own keymap). `None` for keys a PC keyboard has no scancode for.
pub fn key_code(key: egui::Key) -> Option<u16> {
    use egui::Key as K;
    let code = match key {
        K::Escape => 1,
        K::Num1 | K::Exclamationmark => 2,
        K::Num2 => 3,
        K::Num3 => 4,
        K::Num4 => 5,
        K::Num5 => 6,
        K::Num6 => 7,
        K::Num7 => 8,
        K::Num8 => 9,
        K::Num9 => 10,
        K::Num0 => 11,
        K::Minus => 12,
        K::Equals | K::Plus => 13,
        K::Backspace => 14,
        K::Tab => 15,
        K::Q => 16,
        K::W => 17,
        K::E => 18,
        K::R => 19,
        K::T => 20,
        K::Y => 21,
        K::U => 22,
        K::I => 23,
        K::O => 24,
        K::P => 25,
        K::OpenBracket | K::OpenCurlyBracket => 26,
        K::CloseBracket | K::CloseCurlyBracket => 27,
        K::Enter => 28,
        K::A => 30,
        K::S => 31,
        K::D => 32,
        K::F => 33,
        K::G => 34,
        K::H => 35,
        K::J => 36,
        K::K => 37,
        K::L => 38,
        K::Semicolon | K::Colon => 39,
        K::Quote => 40,
        K::Backtick => 41,
        K::Backslash | K::Pipe => 43,
        K::Z => 44,
        K::X => 45,
        K::C => 46,
        K::V => 47,
        K::B => 48,
        K::N => 49,
        K::M => 50,
        K::Comma => 51,
        K::Period => 52,
        K::Slash | K::Questionmark => 53,
        K::Space => 57,
        K::F1 => 59,
        K::F2 => 60,
        K::F3 => 61,
        K::F4 => 62,
        K::F5 => 63,
        K::F6 => 64,
        K::F7 => 65,
        K::F8 => 66,
        K::F9 => 67,
        K::F10 => 68,
        K::F11 => 87,
        K::F12 => 88,
        K::Home => 102,
        K::ArrowUp => 103,
        K::PageUp => 104,
        K::ArrowLeft => 105,
        K::ArrowRight => 106,
        K::End => 107,
        K::ArrowDown => 108,
        K::PageDown => 109,
        K::Insert => 110,
        K::Delete => 111,
        K::Copy => 133,
        K::Paste => 135,
        K::Cut => 137,
        K::F13 => 183,
        K::F14 => 184,
        K::F15 => 185,
        K::F16 => 186,
        K::F17 => 187,
        K::F18 => 188,
        K::F19 => 189,
        K::F20 => 190,
        K::F21 => 191,
        K::F22 => 192,
        K::F23 => 193,
        K::F24 => 194,
        _ => return None,
    };
    Some(code)
}

/// The modifier keys egui tracks as state, with the evdev key each stands for.
pub fn modifier_codes(m: egui::Modifiers) -> [(u16, bool); 4] {
    [
        (KEY_LEFTCTRL, m.ctrl),
        (KEY_LEFTSHIFT, m.shift),
        (KEY_LEFTALT, m.alt),
        (KEY_LEFTMETA, m.mac_cmd),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_map_to_pc_scancode_positions() {
        assert_eq!(key_code(egui::Key::A), Some(30));
        assert_eq!(key_code(egui::Key::Q), Some(16));
        assert_eq!(key_code(egui::Key::Enter), Some(28));
        assert_eq!(key_code(egui::Key::Escape), Some(1));
        assert_eq!(key_code(egui::Key::F12), Some(88));
    }

    #[test]
    fn shifted_symbols_share_the_key_of_their_base_symbol() {
        assert_eq!(key_code(egui::Key::Colon), key_code(egui::Key::Semicolon));
        assert_eq!(key_code(egui::Key::Plus), key_code(egui::Key::Equals));
        assert_eq!(
            key_code(egui::Key::Questionmark),
            key_code(egui::Key::Slash)
        );
    }

    #[test]
    fn key_event_becomes_ev_key_then_syn_report() {
        let ev = InputEvent::Key {
            code: 30,
            pressed: true,
        };
        assert_eq!(
            ev.to_evdev(),
            vec![
                EvdevEvent::new(EV_KEY, 30, 1),
                EvdevEvent::new(EV_SYN, SYN_REPORT, 0)
            ]
        );
    }

    #[test]
    fn pointer_becomes_abs_x_and_abs_y_in_one_report() {
        let ev = InputEvent::PointerAbs { x: 100, y: 7 }.to_evdev();
        assert_eq!(ev[0], EvdevEvent::new(EV_ABS, ABS_X, 100));
        assert_eq!(ev[1], EvdevEvent::new(EV_ABS, ABS_Y, 7));
        assert_eq!(ev[2].kind, EV_SYN);
    }

    #[test]
    fn wheel_becomes_rel_wheel_and_skips_zero_axes() {
        let ev = InputEvent::Wheel { dx: 0, dy: -2 }.to_evdev();
        assert_eq!(
            ev,
            vec![
                EvdevEvent::new(EV_REL, REL_WHEEL, -2),
                EvdevEvent::new(EV_SYN, SYN_REPORT, 0)
            ]
        );
    }

    #[test]
    fn input_event_round_trips_through_json() {
        let ev = InputEvent::Button {
            code: BTN_LEFT,
            pressed: false,
        };
        let s = serde_json::to_string(&ev).unwrap();
        assert_eq!(serde_json::from_str::<InputEvent>(&s).unwrap(), ev);
    }
}
