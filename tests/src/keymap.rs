//! Characters to Linux key codes on a US layout, for typing into a guest through its
//! virtio keyboard the way a person would: press, release, `SYN_REPORT` after each.

pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_ABS: u16 = 0x03;
pub const KEY_LEFTSHIFT: u16 = 42;
/// The tablet's button and axes.
pub const BTN_LEFT: u16 = 0x110;
pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;

/// A key and whether Shift is held for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keystroke {
    pub code: u16,
    pub shift: bool,
}

/// Unshifted and shifted characters of each key, in key-code order runs.
const ROWS: &[(u16, &str, &str)] = &[
    (2, "1234567890-=", "!@#$%^&*()_+"),
    (16, "qwertyuiop[]", "QWERTYUIOP{}"),
    (30, "asdfghjkl;'`", "ASDFGHJKL:\"~"),
    (43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
];

pub fn key_for(c: char) -> Option<Keystroke> {
    match c {
        '\n' => {
            return Some(Keystroke {
                code: 28,
                shift: false,
            })
        }
        ' ' => {
            return Some(Keystroke {
                code: 57,
                shift: false,
            })
        }
        '\t' => {
            return Some(Keystroke {
                code: 15,
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

/// `(type, code, value)` events for one keystroke, each state change reported.
pub fn press_release(k: Keystroke) -> Vec<(u16, u16, i32)> {
    let syn = (EV_SYN, 0, 0);
    let mut events = Vec::new();
    if k.shift {
        events.extend([(EV_KEY, KEY_LEFTSHIFT, 1), syn]);
    }
    events.extend([(EV_KEY, k.code, 1), syn, (EV_KEY, k.code, 0), syn]);
    if k.shift {
        events.extend([(EV_KEY, KEY_LEFTSHIFT, 0), syn]);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(ev.first(), Some(&(EV_KEY, KEY_LEFTSHIFT, 1)));
        assert_eq!(ev[2], (EV_KEY, 30, 1));
        assert_eq!(ev[ev.len() - 2], (EV_KEY, KEY_LEFTSHIFT, 0));
        assert_eq!(ev.last(), Some(&(EV_SYN, 0, 0)));
    }
}
