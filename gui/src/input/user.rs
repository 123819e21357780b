//! What the person did to a partition, before it becomes evdev events.

use serde::{Deserialize, Serialize};
use vmm_core::evdev::{
    InputDevice, InputEvent, ABS_X, ABS_Y, EV_ABS, EV_KEY, EV_REL, REL_HWHEEL, REL_WHEEL,
};

/// One input for a partition, in the guest's codes but not yet in evdev events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UserInput {
    /// A key changed state; `code` is a Linux `KEY_*` code.
    Key { code: u16, pressed: bool },
    /// The pointer is at this pixel of the partition's framebuffer.
    PointerAbs { x: u32, y: u32 },
    /// A pointer button changed state; `code` is a Linux `BTN_*` code.
    Button { code: u16, pressed: bool },
    /// Wheel steps: positive `dy` scrolls up, positive `dx` scrolls right (evdev's sense).
    Wheel { dx: i32, dy: i32 },
}

impl UserInput {
    /// The partition's device that hears this: keys the keyboard, the rest the tablet.
    pub fn device(&self) -> InputDevice {
        match self {
            Self::Key { .. } => InputDevice::Keyboard,
            _ => InputDevice::Tablet,
        }
    }

    /// The evdev events this becomes on [`Self::device`], closed by `SYN_REPORT` so the
    /// guest sees one report.
    pub fn to_evdev(&self) -> Vec<InputEvent> {
        let device = self.device();
        let ev = |ev_type, code, value| InputEvent::new(device, ev_type, code, value);
        let mut out = match *self {
            Self::Key { code, pressed } | Self::Button { code, pressed } => {
                vec![ev(EV_KEY, code, i32::from(pressed))]
            }
            Self::PointerAbs { x, y } => {
                vec![
                    ev(EV_ABS, ABS_X, saturate(x)),
                    ev(EV_ABS, ABS_Y, saturate(y)),
                ]
            }
            Self::Wheel { dx, dy } => {
                let mut v = Vec::with_capacity(2);
                if dy != 0 {
                    v.push(ev(EV_REL, REL_WHEEL, dy));
                }
                if dx != 0 {
                    v.push(ev(EV_REL, REL_HWHEEL, dx));
                }
                v
            }
        };
        out.push(InputEvent::syn(device));
        out
    }
}

fn saturate(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::evdev::{BTN_LEFT, EV_SYN, SYN_REPORT};

    const KBD: InputDevice = InputDevice::Keyboard;
    const TAB: InputDevice = InputDevice::Tablet;

    #[test]
    fn key_event_becomes_ev_key_then_syn_report() {
        let ev = UserInput::Key {
            code: 30,
            pressed: true,
        };
        assert_eq!(
            ev.to_evdev(),
            vec![
                InputEvent::new(KBD, EV_KEY, 30, 1),
                InputEvent::new(KBD, EV_SYN, SYN_REPORT, 0)
            ]
        );
    }

    #[test]
    fn pointer_becomes_abs_x_and_abs_y_in_one_report() {
        let ev = UserInput::PointerAbs { x: 100, y: 7 }.to_evdev();
        assert_eq!(ev[0], InputEvent::new(TAB, EV_ABS, ABS_X, 100));
        assert_eq!(ev[1], InputEvent::new(TAB, EV_ABS, ABS_Y, 7));
        assert_eq!(ev[2].ev_type, EV_SYN);
    }

    #[test]
    fn wheel_becomes_rel_wheel_and_skips_zero_axes() {
        let ev = UserInput::Wheel { dx: 0, dy: -2 }.to_evdev();
        assert_eq!(
            ev,
            vec![
                InputEvent::new(TAB, EV_REL, REL_WHEEL, -2),
                InputEvent::new(TAB, EV_SYN, SYN_REPORT, 0)
            ]
        );
    }

    #[test]
    fn input_event_round_trips_through_json() {
        let ev = UserInput::Button {
            code: BTN_LEFT,
            pressed: false,
        };
        let s = serde_json::to_string(&ev).unwrap();
        assert_eq!(serde_json::from_str::<UserInput>(&s).unwrap(), ev);
    }
}
