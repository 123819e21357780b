//! egui's keys and buttons in Linux evdev codes ([`vmm_core::evdev`]).

use vmm_core::evdev::*;

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
        K::Escape => KEY_ESC,
        K::Num1 | K::Exclamationmark => KEY_1,
        K::Num2 => KEY_2,
        K::Num3 => KEY_3,
        K::Num4 => KEY_4,
        K::Num5 => KEY_5,
        K::Num6 => KEY_6,
        K::Num7 => KEY_7,
        K::Num8 => KEY_8,
        K::Num9 => KEY_9,
        K::Num0 => KEY_0,
        K::Minus => KEY_MINUS,
        K::Equals | K::Plus => KEY_EQUAL,
        K::Backspace => KEY_BACKSPACE,
        K::Tab => KEY_TAB,
        K::Q => KEY_Q,
        K::W => KEY_W,
        K::E => KEY_E,
        K::R => KEY_R,
        K::T => KEY_T,
        K::Y => KEY_Y,
        K::U => KEY_U,
        K::I => KEY_I,
        K::O => KEY_O,
        K::P => KEY_P,
        K::OpenBracket | K::OpenCurlyBracket => KEY_LEFTBRACE,
        K::CloseBracket | K::CloseCurlyBracket => KEY_RIGHTBRACE,
        K::Enter => KEY_ENTER,
        K::A => KEY_A,
        K::S => KEY_S,
        K::D => KEY_D,
        K::F => KEY_F,
        K::G => KEY_G,
        K::H => KEY_H,
        K::J => KEY_J,
        K::K => KEY_K,
        K::L => KEY_L,
        K::Semicolon | K::Colon => KEY_SEMICOLON,
        K::Quote => KEY_APOSTROPHE,
        K::Backtick => KEY_GRAVE,
        K::Backslash | K::Pipe => KEY_BACKSLASH,
        K::Z => KEY_Z,
        K::X => KEY_X,
        K::C => KEY_C,
        K::V => KEY_V,
        K::B => KEY_B,
        K::N => KEY_N,
        K::M => KEY_M,
        K::Comma => KEY_COMMA,
        K::Period => KEY_DOT,
        K::Slash | K::Questionmark => KEY_SLASH,
        K::Space => KEY_SPACE,
        K::F1 => KEY_F1,
        K::F2 => KEY_F2,
        K::F3 => KEY_F3,
        K::F4 => KEY_F4,
        K::F5 => KEY_F5,
        K::F6 => KEY_F6,
        K::F7 => KEY_F7,
        K::F8 => KEY_F8,
        K::F9 => KEY_F9,
        K::F10 => KEY_F10,
        K::F11 => KEY_F11,
        K::F12 => KEY_F12,
        K::Home => KEY_HOME,
        K::ArrowUp => KEY_UP,
        K::PageUp => KEY_PAGEUP,
        K::ArrowLeft => KEY_LEFT,
        K::ArrowRight => KEY_RIGHT,
        K::End => KEY_END,
        K::ArrowDown => KEY_DOWN,
        K::PageDown => KEY_PAGEDOWN,
        K::Insert => KEY_INSERT,
        K::Delete => KEY_DELETE,
        K::Copy => KEY_COPY,
        K::Paste => KEY_PASTE,
        K::Cut => KEY_CUT,
        K::F13 => KEY_F13,
        K::F14 => KEY_F14,
        K::F15 => KEY_F15,
        K::F16 => KEY_F16,
        K::F17 => KEY_F17,
        K::F18 => KEY_F18,
        K::F19 => KEY_F19,
        K::F20 => KEY_F20,
        K::F21 => KEY_F21,
        K::F22 => KEY_F22,
        K::F23 => KEY_F23,
        K::F24 => KEY_F24,
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
}
