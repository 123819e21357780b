//! The app's panels, each owning its state and drawing. A panel takes what it needs
//! (the partition slots, its own state, the focus) and reports what the user asked for
//! as [`crate::app::Action`]s; only [`crate::app::BulkheadApp::apply`] changes the app.

pub mod ask_dialog;
pub mod audit_log;
pub mod bundle_dialog;
pub mod launcher;
pub mod partition_view;
pub mod policy_editor;
pub mod serial_console;
