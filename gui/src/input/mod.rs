//! Input for partitions: what the person did ([`UserInput`], a plain, serializable type in
//! Linux key codes), the translation from egui events, and the rule that only the focused
//! partition hears it.
//!
//! [`UserInput::to_evdev`] turns it into [`vmm_core::evdev::InputEvent`]s, exactly what the
//! control socket carries and the virtio-input device consumes (`EV_KEY`, `EV_ABS`,
//! `EV_REL`), so the GUI never invents a protocol of its own.

pub mod keys;
pub mod router;
pub mod user;

pub use router::{FocusState, InputRouter, RELEASE_SHORTCUT_TEXT};
pub use user::UserInput;
