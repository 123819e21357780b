//! Audit log panel: every inter-partition decision, filterable.

use std::path::{Path, PathBuf};

use egui::Ui;
use isolation_policy::{AuditFilter, AuditLog, AuditRecord, Request};

/// Where the audit log lives: `$BULKHEAD_AUDIT_DIR`, else `$XDG_STATE_HOME/bulkhead`, else
/// `~/.local/state/bulkhead`.
pub fn default_audit_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BULKHEAD_AUDIT_DIR") {
        return Some(PathBuf::from(d));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("bulkhead"))
}

/// One decision as the panel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub time: String,
    /// The service as shown (with `+argument`, or `network tcp`).
    pub service: String,
    /// What the service filter matches: the service name, `network` or `dns`.
    pub service_key: String,
    pub source: String,
    pub target: String,
    pub decision: String,
    pub rule: String,
}

impl AuditRow {
    pub fn from_record(r: &AuditRecord) -> Self {
        if let Request::Network {
            source,
            destination,
        } = &r.request
        {
            // A connection the firewall relay refused: what, where, and which rule.
            return Self {
                time: r.time.clone(),
                service: format!("network {}", destination.protocol.name()),
                service_key: "network".into(),
                source: source.clone(),
                target: destination.to_string(),
                decision: r.decision.clone(),
                rule: r.rule.as_ref().map_or_else(
                    || r.explanation.clone(),
                    |rule| format!("{rule} ({})", r.explanation),
                ),
            };
        }
        let service = match &r.request {
            Request::Service {
                service,
                argument: Some(a),
                ..
            } => format!("{service}+{a}"),
            Request::Service { service, .. } => service.clone(),
            other => other.to_string(),
        };
        let service_key = match &r.request {
            Request::Service { service, .. } => service.clone(),
            Request::Network { .. } => "network".into(),
            Request::Dns { .. } => "dns".into(),
        };
        // A decision the person made in the ask dialog says so in its own column.
        let decision = if r.explanation.starts_with("asked → ") {
            format!("asked → {}", r.decision)
        } else {
            r.decision.clone()
        };
        let target = r
            .target
            .clone()
            .or_else(|| r.request.target().map(String::from))
            .unwrap_or_else(|| "-".into());
        Self {
            time: r.time.clone(),
            service,
            service_key,
            source: r.request.source().to_string(),
            target,
            decision,
            rule: r.rule.as_ref().map_or_else(
                || "no rule (default deny)".to_string(),
                |rule| rule.to_string(),
            ),
        }
    }

    /// Case-insensitive match of `filter` against every column.
    pub fn matches(&self, filter: &str) -> bool {
        if filter.trim().is_empty() {
            return true;
        }
        let f = filter.to_lowercase();
        [
            &self.time,
            &self.service,
            &self.source,
            &self.target,
            &self.decision,
            &self.rule,
        ]
        .iter()
        .any(|c| c.to_lowercase().contains(&f))
    }
}

#[derive(Debug, Default)]
pub struct AuditPanel {
    pub rows: Vec<AuditRow>,
    pub filter: String,
    /// Only decisions from or to this partition.
    pub partition: Option<String>,
    /// Only decisions about this service (`bulkhead.ClipboardPaste`, `network`, `dns`).
    pub service: Option<String>,
    /// Where the rows came from, or why there are none.
    pub source_note: String,
    dir: Option<PathBuf>,
    /// The live file's size and time when last read: new denials reload the panel.
    seen: Option<(u64, Option<std::time::SystemTime>)>,
    checked: Option<std::time::Instant>,
}

impl AuditPanel {
    /// Reads the audit log in `dir` (newest 5000 decisions).
    pub fn open(dir: &Path) -> Self {
        let mut panel = Self {
            dir: Some(dir.to_path_buf()),
            ..Self::default()
        };
        panel.reload();
        panel
    }

    pub fn reload(&mut self) {
        let Some(dir) = &self.dir else {
            self.source_note = "no audit log directory".into();
            return;
        };
        let filter = AuditFilter {
            last: Some(5000),
            ..AuditFilter::default()
        };
        let read = AuditLog::open(
            dir,
            isolation_policy::audit::DEFAULT_MAX_BYTES,
            isolation_policy::audit::DEFAULT_KEEP,
        )
        .and_then(|log| log.read(&filter).map(|r| (log.path().to_path_buf(), r)));
        match read {
            Ok((path, readout)) => {
                self.rows = readout.records.iter().map(AuditRow::from_record).collect();
                self.source_note = path.display().to_string();
                if readout.unreadable_lines > 0 {
                    self.source_note.push_str(&format!(
                        " ({} unreadable lines skipped)",
                        readout.unreadable_lines
                    ));
                }
            }
            Err(e) => self.source_note = format!("cannot read the audit log: {e}"),
        }
    }

    pub fn filtered(&self) -> impl Iterator<Item = &AuditRow> {
        self.rows.iter().filter(|r| {
            r.matches(&self.filter)
                && self
                    .partition
                    .as_ref()
                    .is_none_or(|p| r.source == *p || r.target == *p)
                && self.service.as_ref().is_none_or(|s| r.service_key == *s)
        })
    }

    /// The partitions the rows name (sources, and targets that are partitions), sorted.
    pub fn partitions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                let target = (r.service_key != "network" && r.service_key != "dns")
                    .then(|| r.target.clone());
                std::iter::once(r.source.clone()).chain(target)
            })
            .filter(|p| !p.starts_with('@') && p != "-")
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The services the rows name, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut out: Vec<String> = self.rows.iter().map(|r| r.service_key.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Reloads when the live file changed (checked at most once a second), so denials
    /// the relays report show up without a click.
    fn reload_if_changed(&mut self) {
        let Some(dir) = &self.dir else { return };
        if self
            .checked
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        {
            return;
        }
        self.checked = Some(std::time::Instant::now());
        let now = std::fs::metadata(dir.join(isolation_policy::audit::FILE_NAME))
            .ok()
            .map(|m| (m.len(), m.modified().ok()));
        if now != self.seen {
            self.seen = now;
            self.reload();
        }
    }

    pub fn show(&mut self, ui: &mut Ui) {
        self.reload_if_changed();
        ui.heading("Audit log");
        ui.horizontal(|ui| {
            ui.label("Filter:");
            ui.add(
                egui::TextEdit::singleline(&mut self.filter)
                    .hint_text("service, partition, decision…"),
            );
            if ui.button("Reload").clicked() {
                self.reload();
            }
        });
        ui.horizontal(|ui| {
            let partitions = self.partitions();
            choice(
                ui,
                "Partition",
                "audit_partition",
                &mut self.partition,
                &partitions,
            );
            let services = self.services();
            choice(ui, "Service", "audit_service", &mut self.service, &services);
        });
        if !self.source_note.is_empty() {
            ui.weak(&self.source_note);
        }
        let rows: Vec<AuditRow> = self.filtered().cloned().collect();
        ui.weak(format!("{} of {} decisions", rows.len(), self.rows.len()));
        egui::ScrollArea::vertical()
            .id_salt("audit")
            .auto_shrink([false, false])
            .show(ui, |ui| {
                egui::Grid::new("audit_grid").striped(true).show(ui, |ui| {
                    for h in ["time", "service", "from", "to", "decision", "rule"] {
                        ui.strong(h);
                    }
                    ui.end_row();
                    for r in &rows {
                        ui.monospace(&r.time);
                        ui.label(&r.service);
                        ui.label(&r.source);
                        ui.label(&r.target);
                        ui.label(&r.decision);
                        ui.weak(&r.rule);
                        ui.end_row();
                    }
                });
            });
    }
}

/// A labelled combo box: "all" or one of `options`.
fn choice(ui: &mut Ui, label: &str, id: &str, value: &mut Option<String>, options: &[String]) {
    let label = ui.label(label);
    let shown = value.clone().unwrap_or_else(|| "all".into());
    egui::ComboBox::from_id_salt(id)
        .selected_text(shown)
        .show_ui(ui, |ui| {
            ui.selectable_value(value, None, "all");
            for o in options {
                ui.selectable_value(value, Some(o.clone()), o);
            }
        })
        .response
        .labelled_by(label.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(service: &str, decision: &str) -> AuditRow {
        AuditRow {
            time: "2026-11-26T09:00:00Z".into(),
            service: service.into(),
            service_key: service.into(),
            source: "work".into(),
            target: "browser".into(),
            decision: decision.into(),
            rule: "policy.rules:3".into(),
        }
    }

    #[test]
    fn filter_matches_any_column_ignoring_case() {
        let mut p = AuditPanel {
            rows: vec![
                row("bulkhead.Clipboard", "allow"),
                row("bulkhead.OpenURL", "deny"),
            ],
            filter: "DENY".into(),
            ..AuditPanel::default()
        };
        let names: Vec<_> = p.filtered().map(|r| r.service.as_str()).collect();
        assert_eq!(names, vec!["bulkhead.OpenURL"]);
        p.filter = "  ".into();
        assert_eq!(p.filtered().count(), 2);
    }

    #[test]
    fn partition_and_service_filters_narrow_the_rows_together() {
        let mut p = AuditPanel {
            rows: vec![
                AuditRow {
                    source: "mail".into(),
                    target: "vault".into(),
                    ..row("bulkhead.FileCopy", "deny")
                },
                row("bulkhead.ClipboardPaste", "allow"),
                AuditRow {
                    source: "browser".into(),
                    target: "203.0.113.9:25/tcp".into(),
                    service: "network tcp".into(),
                    service_key: "network".into(),
                    ..row("", "deny")
                },
            ],
            ..AuditPanel::default()
        };
        assert_eq!(p.partitions(), ["browser", "mail", "vault", "work"]);
        assert_eq!(
            p.services(),
            ["bulkhead.ClipboardPaste", "bulkhead.FileCopy", "network"]
        );
        p.partition = Some("vault".into());
        let shown: Vec<_> = p.filtered().map(|r| r.service.as_str()).collect();
        assert_eq!(shown, ["bulkhead.FileCopy"]);
        p.partition = Some("browser".into());
        let shown: Vec<_> = p.filtered().map(|r| r.service.as_str()).collect();
        assert_eq!(shown, ["bulkhead.ClipboardPaste", "network tcp"]);
        p.service = Some("network".into());
        let shown: Vec<_> = p.filtered().map(|r| r.service.as_str()).collect();
        assert_eq!(shown, ["network tcp"]);
        p.service = Some("bulkhead.FileCopy".into());
        assert_eq!(p.filtered().count(), 0);
    }
}
