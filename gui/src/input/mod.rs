//! Input for partitions: a plain, serializable event type in Linux evdev terms, the
//! translation from egui events, and the rule that only the focused partition hears it.
//!
//! The virtio-input device consumes exactly these codes (`EV_KEY`, `EV_ABS`, `EV_REL`), so
//! the GUI never invents a protocol of its own.

pub mod evdev;
pub mod router;

pub use evdev::{EvdevEvent, InputEvent};
pub use router::{FocusState, InputRouter, RELEASE_SHORTCUT_TEXT};
