//! Policy editor panel: partition settings as forms, rule files as text, live validation by
//! `isolation-policy` with errors at the field or line, a "what if" box, atomic save only
//! when valid, and revert.
//!
//! [`state`] holds the editor and everything it does (no egui), [`form`] the settings
//! form built from `isolation_policy::PARTITION_FIELDS`, [`view`] the drawing, which
//! reports what the user did as [`EditorAction`]s.

pub mod form;
pub mod state;
pub mod view;

pub use form::field_at_line;
pub use state::{source_tree_policy, EditorAction, PolicyEditor, Status};
