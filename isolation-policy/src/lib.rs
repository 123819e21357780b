//! Partitions and the rules between them, as data: parse, validate, decide, explain,
//! audit. Pure Rust: no KVM, no GUI.
//!
//! # A policy directory
//!
//! ```text
//! partitions.toml          one [partition.<name>] table per partition
//! policy.d/NN-name.policy  service rules, files read lower-numbered first
//! ```
//!
//! [`default_policy_dir`] finds it: `$BULKHEAD_POLICY_DIR`, the user's
//! `$XDG_CONFIG_HOME/bulkhead`, `/etc/bulkhead`, or the source tree's `assets/policy`.
//!
//! # Public API (stable for the GUI and the supervisor)
//!
//! Checking and deciding:
//! - [`Policy::load`]`(dir) -> Result<(Policy, Report), LoadError>`: the checked policy
//!   plus lint warnings; any error fails with the full [`Report`].
//! - [`Sources::read`]`(dir)` then [`Sources::check`]`() -> (Option<Policy>, Report)`:
//!   the same without failing, for `bulkhead policy check`.
//! - [`Policy::decide`]`(&Request) -> Decision`: for [`Request::clipboard_paste`],
//!   [`Request::file_copy`], [`Request::open_in`], [`Request::service`],
//!   [`Request::network`] and [`Request::Dns`]. A [`Decision`] has a [`Verdict`]
//!   (`Allow { target }`, `Deny { notify }`, `Ask { default_target }`), the [`RuleRef`]
//!   (file, line, column, text) that decided, a human `explanation`, and the `chain` of
//!   rules looked at. After `Ask`, call [`Policy::resolve_ask`] with the user's choice.
//! - [`Policy::what_if`]`(service, from, to)`: `service` may be `name+argument`.
//! - [`Policy::spec`] / [`Policy::specs`]: [`PartitionSpec`], plain values (label RGB,
//!   memory, vCPUs, display, image, cmdline, network mode, autostart, restart, CPU
//!   weight) for the VMM config; nothing of the rule language.
//!
//! Editing (the policy panel), all on [`PolicyDocument`]:
//! - (a) [`PolicyDocument::load`]`(dir)`: fails only on I/O; invalid content loads and
//!   shows in [`PolicyDocument::report`].
//! - (b) [`PolicyDocument::set_partition_field`]`(name, field, FieldValue) -> Result<Report, EditError>`
//!   with `field` from [`EDITABLE_FIELDS`] (`memory_mib`, `network.mode`,
//!   `clipboard.copy_out`, …); also `unset_partition_field`, `set_firewall_rules`,
//!   `add_partition`, `remove_partition`, `set_partitions_text`. Every [`Diagnostic`]
//!   has `location` (file, line, column), `message`, `hint` and `severity`; its
//!   `Display` is `file:line:column: error: message (hint: …)`.
//! - (c) [`PolicyDocument::check_rule_text`]`(file_name, text) -> Vec<Diagnostic>` while
//!   typing; [`PolicyDocument::set_rule_file_text`] / `remove_rule_file` to change.
//! - (d) [`PolicyDocument::what_if`]`(service, from, to) -> Result<Decision, Report>`
//!   on the unsaved content.
//! - (e) [`PolicyDocument::save`]: atomic (temp + fsync + rename), keeps `<file>.bak`,
//!   refuses with [`SaveError::Invalid`] if there is any error;
//!   [`PolicyDocument::revert`] reloads from disk; [`PolicyDocument::is_dirty`].
//!   [`PolicyDocument::save_to`]`(dir)` saves a policy read from the defaults into the
//!   user's directory ([`policy_save_dir`]) instead, leaving the defaults untouched.
//! - (f) [`AuditLog::open`]`(dir, max_bytes, keep)`, [`AuditLog::record`], and
//!   [`AuditLog::read`]`(&AuditFilter)` (by partition, service, decision, time, last N).
//!
//! The partition schema, written once ([`fields`]):
//! - [`PARTITION_FIELDS`]: every field of a `[partition.<name>]` table as a
//!   [`PartitionField`] (TOML key path, human label, [`FieldKind`], editable or not,
//!   `text_of(&Partition)`, `default_text()`). The TOML reader checks keys against it,
//!   [`PolicyDocument`] edits its editable fields ([`EDITABLE_FIELDS`]), and the GUI
//!   builds its settings form from it.
//!
//! Errors at this seam are typed: [`LoadError`], [`EditError`], [`SaveError`],
//! [`AuditError`], [`label::UnknownLabel`], [`NetParseError`] (`FromStr` of
//! [`Protocol`], [`network::Cidr`], [`network::Destination`], [`network::PortRange`]) and
//! [`DisplayError`] ([`partitions_toml::parse_display`]).
//!
//! # Modules
//!
//! Data: [`partition`] (a partition), [`fields`] (its fields), [`label`], [`network`],
//! [`rules`] (the rule language), [`diag`]. Reading: [`partitions_toml`], [`load`]
//! ([`Sources`], [`Policy::load`]). The checked [`policy`] and what it answers:
//! [`request`] (the vocabulary), [`decide`], [`lint`]. Editing: [`document`]. Recording:
//! [`audit`]. No module depends on one that depends on it (`load` runs `lint`, which
//! asks `decide`; none of them uses `load`).

pub mod audit;
pub mod decide;
pub mod diag;
pub mod dirs;
pub mod document;
pub mod fields;
pub mod label;
pub mod lint;
pub mod load;
pub mod network;
pub mod partition;
pub mod partitions_toml;
pub mod policy;
pub mod request;
pub mod rules;

pub use audit::{AuditError, AuditFilter, AuditLog, AuditReadout, AuditRecord};
pub use diag::{Diagnostic, Location, Report, Severity};
pub use dirs::{default_policy_dir, policy_save_dir};
pub use document::{EditError, FieldValue, PolicyDocument, RuleFile, SaveError};
pub use fields::{FieldKind, PartitionField, EDITABLE_FIELDS, PARTITION_FIELDS};
pub use label::Label;
pub use load::{LoadError, Sources};
pub use network::{NetParseError, NetTarget, NetworkMode, Protocol};
pub use partition::{default_memory_min_mib, Kind, Partition, RestartFrom, RestartPolicy};
pub use partitions_toml::DisplayError;
pub use policy::{AppSettings, PartitionSpec, Policy, CLIPBOARD_MAX_BYTES_LIMIT};
pub use request::{service, ChainStep, Decision, Request, Verdict};
pub use rules::{Rule, RuleRef};
