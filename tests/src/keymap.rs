//! Characters to Linux key codes on a US layout, for typing into a guest through its
//! virtio keyboard the way a person would: press, release, `SYN_REPORT` after each.

use vmm_core::evdev::{
    InputDevice, InputEvent, EV_KEY, KEY_1, KEY_A, KEY_BACKSLASH, KEY_ENTER, KEY_LEFTSHIFT, KEY_Q,
    KEY_SPACE, KEY_TAB,
};

/// A key and whether Shift is held for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keystroke {
    pub code: u16,
    pub shift: bool,
}

/// Unshifted and shifted characters of each key, in key-code order runs.
const ROWS: &[(u16, &str, &str)] = &[
    (KEY_1, "1234567890-=", "!@#$%^&*()_+"),
    (KEY_Q, "qwertyuiop[]", "QWERTYUIOP{}"),
    (KEY_A, "asdfghjkl;'`", "ASDFGHJKL:\"~"),
    (KEY_BACKSLASH, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
];

pub fn key_for(c: char) -> Option<Keystroke> {
    match c {
        '\n' => {
            return Some(Keystroke {
                code: KEY_ENTER,
                shift: false,
            })
        }
        ' ' => {
            return Some(Keystroke {
                code: KEY_SPACE,
                shift: false,
            })
        }
        '\t' => {
            return Some(Keystroke {
                code: KEY_TAB,
                shift: false,
            })
        }
        _ => {}
    }
    ROWS.iter().find_map(|(first, plain, shifted)| {
        let at = |s: &str| s.chars().position(|k| k == c);
        let (index, shift) = match (at(plain), at(shifted)) {
            (Some(i), _) => (i, false),
            (None, Some(i)) => (i, true),
            (None, None) => return None,
        };
        Some(Keystroke {
            code: first + index as u16,
            shift,
        })
    })
}

/// Keyboard events for one keystroke, each state change reported.
pub fn press_release(k: Keystroke) -> Vec<InputEvent> {
    let key = |code, value| InputEvent::new(InputDevice::Keyboard, EV_KEY, code, value);
    let syn = InputEvent::syn(InputDevice::Keyboard);
    let mut events = Vec::new();
    if k.shift {
        events.extend([key(KEY_LEFTSHIFT, 1), syn]);
    }
    events.extend([key(k.code, 1), syn, key(k.code, 0), syn]);
    if k.shift {
        events.extend([key(KEY_LEFTSHIFT, 0), syn]);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::evdev::EV_SYN;

    #[test]
    fn letters_digits_and_symbols_map_to_us_layout_codes() {
        let k = |c| key_for(c).unwrap();
        assert_eq!(
            k('q'),
            Keystroke {
                code: 16,
                shift: false
            }
        );
        assert_eq!(
            k('a'),
            Keystroke {
                code: 30,
                shift: false
            }
        );
        assert_eq!(
            k('m'),
            Keystroke {
                code: 50,
                shift: false
            }
        );
        assert_eq!(
            k('0'),
            Keystroke {
                code: 11,
                shift: false
            }
        );
        assert_eq!(
            k('H'),
            Keystroke {
                code: 35,
                shift: true
            }
        );
        assert_eq!(
            k('*'),
            Keystroke {
                code: 9,
                shift: true
            }
        );
        assert_eq!(
            k('/'),
            Keystroke {
                code: 53,
                shift: false
            }
        );
        assert_eq!(
            k('|'),
            Keystroke {
                code: 43,
                shift: true
            }
        );
        assert_eq!(
            k('\n'),
            Keystroke {
                code: 28,
                shift: false
            }
        );
        assert_eq!(key_for('é'), None);
    }

    #[test]
    fn shifted_keys_hold_shift_around_the_key() {
        let ev = press_release(key_for('A').unwrap());
        let kbd =
            |ev_type, code, value| InputEvent::new(InputDevice::Keyboard, ev_type, code, value);
        assert_eq!(ev.first(), Some(&kbd(EV_KEY, KEY_LEFTSHIFT, 1)));
        assert_eq!(ev[2], kbd(EV_KEY, 30, 1));
        assert_eq!(ev[ev.len() - 2], kbd(EV_KEY, KEY_LEFTSHIFT, 0));
        assert_eq!(ev.last(), Some(&kbd(EV_SYN, 0, 0)));
    }
}
