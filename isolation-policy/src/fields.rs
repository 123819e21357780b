//! The fields of a `[partition.<name>]` table, written once: the TOML reader checks keys
//! against this table, `PolicyDocument` edits only its editable fields, and the
//! GUI builds its settings form from it (order, labels, widgets, current text).

use crate::label::Label;
use crate::partition::{limits, Partition};

/// What a field holds, and so how it is written and edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A whole number in `range` (inclusive), counted in `unit`.
    Integer {
        range: (i64, i64),
        unit: &'static str,
    },
    Text,
    /// Text that may be left out; then the default applies.
    OptionalText,
    /// A list of strings.
    List,
    /// One of these strings.
    Choice(&'static [&'static str]),
    Flag,
    /// `[[partition.<name>.network.rule]]` tables; edited with
    /// `PolicyDocument::set_firewall_rules`, not as one value.
    FirewallRules,
}

/// One field of a partition table.
#[derive(Debug, Clone, Copy)]
pub struct PartitionField {
    /// TOML key path inside `[partition.<name>]`: `memory_mib`, `network.mode`,
    /// `clipboard.copy_out`.
    pub key: &'static str,
    /// What a person calls it (the form's label).
    pub label: &'static str,
    pub kind: FieldKind,
    /// May `PolicyDocument::set_partition_field` set it?
    pub editable: bool,
    /// Must every partition write it? (Only `label`: there is no safe default colour.)
    pub required: bool,
    /// The field's value as text, the way the form shows and takes it.
    text: fn(&Partition) -> String,
}

impl PartitionField {
    /// The text of this field in `p`, as the settings form shows it.
    pub fn text_of(&self, p: &Partition) -> String {
        (self.text)(p)
    }

    /// The text of the value used when the field is not written; `None` if it must be.
    pub fn default_text(&self) -> Option<String> {
        (!self.required).then(|| self.text_of(&Partition::with_defaults("", Label::Red)))
    }

    /// The sub-table a dotted key lives in (`network` for `network.mode`), or the key.
    pub fn top_key(&self) -> &'static str {
        self.key
            .split_once('.')
            .map_or(self.key, |(table, _)| table)
    }

    /// The key inside its sub-table (`mode` for `network.mode`); `None` for top-level keys.
    pub fn sub_key(&self) -> Option<&'static str> {
        self.key.split_once('.').map(|(_, key)| key)
    }
}

const LABEL_NAMES: &[&str] = &[
    "red", "orange", "yellow", "green", "gray", "blue", "purple", "black",
];
const KIND_NAMES: &[&str] = &["app", "template", "disposable"];
const RESTART_NAMES: &[&str] = &["never", "on-crash"];
const RESTART_FROM_NAMES: &[&str] = &["boot", "snapshot"];
const NETWORK_MODE_NAMES: &[&str] = &["offline", "nat"];

const fn field(
    key: &'static str,
    label: &'static str,
    kind: FieldKind,
    text: fn(&Partition) -> String,
) -> PartitionField {
    PartitionField {
        key,
        label,
        kind,
        editable: true,
        required: false,
        text,
    }
}

/// Every field of a partition table, in the order the settings form shows them.
pub const PARTITION_FIELDS: &[PartitionField] = &[
    PartitionField {
        required: true,
        ..field("label", "Label", FieldKind::Choice(LABEL_NAMES), |p| {
            p.label.name().to_string()
        })
    },
    field("kind", "Kind", FieldKind::Choice(KIND_NAMES), |p| {
        p.kind.name().to_string()
    }),
    field(
        "memory_mib",
        "Memory (MiB)",
        FieldKind::Integer {
            range: limits::MEMORY_MIB,
            unit: "MiB",
        },
        |p| p.memory_mib.to_string(),
    ),
    field(
        "memory_min_mib",
        "Memory minimum (MiB, when the host is short)",
        FieldKind::Integer {
            range: limits::MEMORY_MIN_MIB,
            unit: "MiB",
        },
        |p| p.memory_min_mib().to_string(),
    ),
    field(
        "vcpus",
        "vCPUs",
        FieldKind::Integer {
            range: limits::VCPUS,
            unit: "vCPUs",
        },
        |p| p.vcpus.to_string(),
    ),
    field(
        "cpu_weight",
        "CPU weight",
        FieldKind::Integer {
            range: limits::CPU_WEIGHT,
            unit: "(relative weight)",
        },
        |p| p.cpu_weight.to_string(),
    ),
    field(
        "cpu_max_percent",
        "CPU cap (% of one CPU, 0 = none)",
        FieldKind::Integer {
            range: limits::CPU_MAX_PERCENT,
            unit: "%",
        },
        |p| p.cpu_max_percent.to_string(),
    ),
    field(
        "io_weight",
        "Disk weight",
        FieldKind::Integer {
            range: limits::IO_WEIGHT,
            unit: "(relative weight)",
        },
        |p| p.io_weight.to_string(),
    ),
    field(
        "io_max_mib_s",
        "Disk cap (MiB/s, 0 = none)",
        FieldKind::Integer {
            range: limits::IO_MAX_MIB_S,
            unit: "MiB/s",
        },
        |p| p.io_max_mib_s.to_string(),
    ),
    field("display", "Display (WxH)", FieldKind::Text, |p| {
        format!("{}x{}", p.display.0, p.display.1)
    }),
    field("image", "Image", FieldKind::Text, |p| p.image.clone()),
    field("template", "Template", FieldKind::OptionalText, |p| {
        p.template.clone().unwrap_or_default()
    }),
    field("app", "App (command)", FieldKind::OptionalText, |p| {
        p.app.clone().unwrap_or_default()
    }),
    field(
        "private_disk_mib",
        "Private disk (MiB)",
        FieldKind::Integer {
            range: limits::PRIVATE_DISK_MIB,
            unit: "MiB",
        },
        |p| p.private_disk_mib.to_string(),
    ),
    field("keyboard", "Keyboard layout", FieldKind::Text, |p| {
        p.keyboard.clone()
    }),
    field("cmdline", "Kernel command line", FieldKind::Text, |p| {
        p.cmdline.clone()
    }),
    field("tags", "Tags (comma separated)", FieldKind::List, |p| {
        p.tags.iter().cloned().collect::<Vec<_>>().join(", ")
    }),
    field("autostart", "Start with the app", FieldKind::Flag, |p| {
        p.autostart.to_string()
    }),
    field(
        "restart",
        "Restart",
        FieldKind::Choice(RESTART_NAMES),
        |p| p.restart.name().to_string(),
    ),
    field(
        "restart_from",
        "Restart from",
        FieldKind::Choice(RESTART_FROM_NAMES),
        |p| p.restart_from.name().to_string(),
    ),
    field(
        "network.mode",
        "Network",
        FieldKind::Choice(NETWORK_MODE_NAMES),
        |p| p.network.mode.name().to_string(),
    ),
    field("network.dns", "DNS through the NAT", FieldKind::Flag, |p| {
        p.network.dns.to_string()
    }),
    PartitionField {
        editable: false,
        ..field(
            "network.rule",
            "Firewall rules",
            FieldKind::FirewallRules,
            |p| {
                let rules: Vec<String> = p.network.rules.iter().map(ToString::to_string).collect();
                rules.join("; ")
            },
        )
    },
    field(
        "clipboard.copy_out",
        "Clipboard: copy out",
        FieldKind::Flag,
        |p| p.clipboard_copy_out.to_string(),
    ),
    field(
        "clipboard.paste_in",
        "Clipboard: paste in",
        FieldKind::Flag,
        |p| p.clipboard_paste_in.to_string(),
    ),
    field("file_transfer.send", "Files: send", FieldKind::Flag, |p| {
        p.file_send.to_string()
    }),
    field(
        "file_transfer.receive",
        "Files: receive",
        FieldKind::Flag,
        |p| p.file_receive.to_string(),
    ),
];

const EDITABLE_COUNT: usize = {
    let (mut i, mut n) = (0, 0);
    while i < PARTITION_FIELDS.len() {
        if PARTITION_FIELDS[i].editable {
            n += 1;
        }
        i += 1;
    }
    n
};

const EDITABLE_KEYS: [&str; EDITABLE_COUNT] = {
    let mut out = [""; EDITABLE_COUNT];
    let (mut i, mut n) = (0, 0);
    while i < PARTITION_FIELDS.len() {
        if PARTITION_FIELDS[i].editable {
            out[n] = PARTITION_FIELDS[i].key;
            n += 1;
        }
        i += 1;
    }
    out
};

/// Keys `PolicyDocument::set_partition_field` accepts (dotted for sub-tables),
/// in table order.
pub const EDITABLE_FIELDS: &[&str] = &EDITABLE_KEYS;

/// The field written as `key` (`memory_mib`, `network.mode`).
pub fn field_named(key: &str) -> Option<&'static PartitionField> {
    PARTITION_FIELDS.iter().find(|f| f.key == key)
}

/// The fields a form may change, in order.
pub fn editable_fields() -> impl Iterator<Item = &'static PartitionField> {
    PARTITION_FIELDS.iter().filter(|f| f.editable)
}

/// Keys a `[partition.<name>]` table may have (sub-tables once each), in order.
pub fn partition_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = Vec::new();
    for f in PARTITION_FIELDS {
        if !keys.contains(&f.top_key()) {
            keys.push(f.top_key());
        }
    }
    keys
}

/// Keys the sub-table `table` (`network`, `clipboard`, `file_transfer`) may have.
pub fn sub_keys(table: &str) -> Vec<&'static str> {
    PARTITION_FIELDS
        .iter()
        .filter(|f| f.top_key() == table)
        .filter_map(PartitionField::sub_key)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkMode;
    use crate::partition::{Kind, RestartPolicy};

    fn choices(key: &str) -> Vec<&'static str> {
        match field_named(key).map(|f| f.kind) {
            Some(FieldKind::Choice(names)) => names.to_vec(),
            other => panic!("{key} is {other:?}, not a choice"),
        }
    }

    #[test]
    fn choices_are_the_names_the_reader_accepts() {
        let labels: Vec<&str> = Label::ALL.iter().map(|l| l.name()).collect();
        assert_eq!(choices("label"), labels);
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(choices("kind"), kinds);
        let restarts = [RestartPolicy::Never, RestartPolicy::OnCrash].map(RestartPolicy::name);
        assert_eq!(choices("restart"), restarts);
        let modes = [NetworkMode::Offline, NetworkMode::Nat].map(NetworkMode::name);
        assert_eq!(choices("network.mode"), modes);
    }

    #[test]
    fn integer_fields_carry_the_partition_limits() {
        let kind = |key: &str| field_named(key).map(|f| f.kind);
        let integer = |range, unit| Some(FieldKind::Integer { range, unit });
        assert_eq!(kind("memory_mib"), integer(limits::MEMORY_MIB, "MiB"));
        assert_eq!(
            kind("memory_min_mib"),
            integer(limits::MEMORY_MIN_MIB, "MiB")
        );
        assert_eq!(kind("vcpus"), integer(limits::VCPUS, "vCPUs"));
        assert_eq!(
            kind("cpu_weight"),
            integer(limits::CPU_WEIGHT, "(relative weight)")
        );
        assert_eq!(
            kind("cpu_max_percent"),
            integer(limits::CPU_MAX_PERCENT, "%")
        );
        assert_eq!(kind("io_max_mib_s"), integer(limits::IO_MAX_MIB_S, "MiB/s"));
    }

    #[test]
    fn editable_fields_are_every_field_but_the_firewall_rules() {
        assert_eq!(EDITABLE_FIELDS.len(), PARTITION_FIELDS.len() - 1);
        assert!(!EDITABLE_FIELDS.contains(&"network.rule"));
        let editable: Vec<&str> = editable_fields().map(|f| f.key).collect();
        assert_eq!(editable, EDITABLE_FIELDS);
    }

    #[test]
    fn sub_tables_are_listed_once_with_their_keys() {
        assert_eq!(
            partition_keys(),
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
                "network",
                "clipboard",
                "file_transfer"
            ]
        );
        assert_eq!(sub_keys("network"), ["mode", "dns", "rule"]);
        assert_eq!(sub_keys("clipboard"), ["copy_out", "paste_in"]);
        assert_eq!(sub_keys("file_transfer"), ["send", "receive"]);
    }

    #[test]
    fn defaults_are_the_values_of_an_unwritten_field() {
        let default = |key: &str| field_named(key).and_then(PartitionField::default_text);
        assert_eq!(default("label"), None, "label has no default");
        assert_eq!(default("memory_mib").as_deref(), Some("1024"));
        assert_eq!(default("memory_min_mib").as_deref(), Some("512"));
        assert_eq!(default("display").as_deref(), Some("1280x800"));
        assert_eq!(default("network.mode").as_deref(), Some("offline"));
        assert_eq!(default("clipboard.copy_out").as_deref(), Some("true"));
        assert_eq!(default("template").as_deref(), Some(""));
    }
}
