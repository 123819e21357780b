//! The settings form of one partition: its fields come from the policy crate's field
//! table; this module turns the form's text into values and finds which field a
//! diagnostic's line belongs to.

use std::collections::BTreeMap;

use isolation_policy::{Diagnostic, FieldKind, FieldValue, Partition, PartitionField};

/// The fields the form shows, in order.
pub fn form_fields() -> impl Iterator<Item = &'static PartitionField> {
    isolation_policy::fields::editable_fields()
}

/// The form's current text for each field of the selected partition.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Form {
    pub partition: String,
    pub values: BTreeMap<&'static str, String>,
    /// Problems found before `isolation-policy` could be asked (e.g. "12x" is no number).
    pub local_errors: BTreeMap<&'static str, String>,
}

impl Form {
    pub fn from_partition(p: &Partition) -> Self {
        Self {
            partition: p.name.clone(),
            values: form_fields().map(|f| (f.key, f.text_of(p))).collect(),
            local_errors: BTreeMap::new(),
        }
    }
}

/// A diagnostic as one line under its field: `line:column: message — hint`.
pub fn describe(d: &Diagnostic) -> String {
    let mut s = format!("{}:{}: {}", d.location.line, d.location.column, d.message);
    if !d.hint.is_empty() {
        s.push_str(&format!(" — {}", d.hint));
    }
    s
}

/// Turns form text into the value `isolation-policy` takes; `Ok(None)` removes the field.
pub fn parse_field(kind: FieldKind, text: &str) -> Result<Option<FieldValue>, String> {
    let t = text.trim();
    Ok(Some(match kind {
        FieldKind::Integer { .. } => FieldValue::Integer(
            t.parse::<i64>()
                .map_err(|_| format!("`{t}` is not a whole number"))?,
        ),
        FieldKind::Flag => FieldValue::Bool(t == "true"),
        FieldKind::OptionalText if t.is_empty() => return Ok(None),
        FieldKind::Text | FieldKind::OptionalText | FieldKind::Choice(_) => {
            FieldValue::String(t.to_string())
        }
        FieldKind::List => FieldValue::StringList(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ),
        FieldKind::FirewallRules => {
            return Err("firewall rules are not edited as one line of text".to_string())
        }
    }))
}

/// Which field of partition `name` is written on `line` (1-based) of partitions.toml,
/// as a dotted key like `memory_mib` or `network.mode`.
pub fn field_at_line(text: &str, name: &str, line: usize) -> Option<String> {
    let own = format!("partition.{name}");
    let mut prefix: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('[') {
            let header = l.trim_matches(|c| c == '[' || c == ']').trim();
            prefix = if header == own {
                Some(String::new())
            } else {
                header
                    .strip_prefix(&format!("{own}."))
                    .map(|sub| format!("{sub}."))
            };
        }
        if i + 1 != line {
            continue;
        }
        let prefix = prefix?;
        let (key, _) = l.split_once('=')?;
        return Some(format!("{prefix}{}", key.trim()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[partition.work]\nlabel = \"blue\"\nmemory_mib = 9\n\n[partition.work.network]\nmode = \"nat\"\n\n[partition.mail]\nvcpus = 1\n";

    const INTEGER: FieldKind = FieldKind::Integer {
        range: (1, 64),
        unit: "vCPUs",
    };

    #[test]
    fn field_at_line_names_top_level_and_sub_table_fields() {
        assert_eq!(
            field_at_line(TEXT, "work", 3).as_deref(),
            Some("memory_mib")
        );
        assert_eq!(
            field_at_line(TEXT, "work", 6).as_deref(),
            Some("network.mode")
        );
        assert_eq!(field_at_line(TEXT, "work", 9), None, "line 9 is mail's");
        assert_eq!(field_at_line(TEXT, "mail", 9).as_deref(), Some("vcpus"));
    }

    #[test]
    fn integer_fields_refuse_text_with_the_value_named() {
        assert_eq!(
            parse_field(INTEGER, "12x"),
            Err("`12x` is not a whole number".to_string())
        );
        assert_eq!(
            parse_field(INTEGER, " 64 "),
            Ok(Some(FieldValue::Integer(64)))
        );
    }

    #[test]
    fn empty_optional_text_removes_the_field() {
        assert_eq!(parse_field(FieldKind::OptionalText, ""), Ok(None));
    }

    #[test]
    fn lists_split_on_commas_and_drop_blanks() {
        assert_eq!(
            parse_field(FieldKind::List, "online, ,work"),
            Ok(Some(FieldValue::StringList(vec![
                "online".into(),
                "work".into()
            ])))
        );
    }

    #[test]
    fn form_shows_the_editor_fields_in_the_table_order() {
        let keys: Vec<&str> = form_fields().map(|f| f.key).collect();
        assert_eq!(
            keys,
            [
                "label",
                "kind",
                "memory_mib",
                "memory_min_mib",
                "vcpus",
                "cpu_weight",
                "cpu_max_percent",
                "io_weight",
                "io_max_mib_s",
                "display",
                "image",
                "template",
                "app",
                "private_disk_mib",
                "keyboard",
                "cmdline",
                "tags",
                "autostart",
                "restart",
                "restart_from",
                "network.mode",
                "network.dns",
                "clipboard.copy_out",
                "clipboard.paste_in",
                "file_transfer.send",
                "file_transfer.receive",
            ]
        );
    }
}
