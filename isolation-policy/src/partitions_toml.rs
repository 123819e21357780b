//! Reading `partitions.toml`: one `[partition.<name>]` table per partition.
//!
//! The file is read with `toml_edit` so every value keeps its position: each problem
//! is reported with file, line and column, and all of them at once. Which keys a table
//! may have comes from [`crate::fields`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use toml_edit::{Document, Item, Table, Value};

use crate::diag::{closest, Diagnostic, Location};
use crate::fields::{self, FieldKind};
use crate::label::Label;
use crate::network::{
    Destination, FirewallAction, FirewallRule, NetParseError, NetworkMode, PortRange, Protocol,
};
use crate::partition::{
    limits, valid_keyboard, valid_name, Kind, Partition, RestartFrom, RestartPolicy,
};
use crate::policy::{AppSettings, CLIPBOARD_MAX_BYTES_LIMIT, FILE_TRANSFER_MAX_MIB_LIMIT};

/// Keys of one `[[partition.<name>.network.rule]]` table.
const RULE_KEYS: &[&str] = &["action", "protocol", "destination", "ports"];

/// Parse `partitions.toml`; returns every partition table found (fields with errors keep
/// their defaults) and every problem.
pub fn parse_partitions(file: &Path, text: &str) -> (Vec<Partition>, Vec<Diagnostic>) {
    let mut r = Reader {
        file,
        text,
        diags: Vec::new(),
    };
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            let message = e.message().trim().replace('\n', "; ");
            r.diags.push(Diagnostic::error(
                Location::from_offset(file, text, at),
                format!("TOML syntax: {message}"),
                "fix the TOML syntax; each partition is a `[partition.<name>]` table",
            ));
            return (Vec::new(), r.diags);
        }
    };
    let root = doc.as_table();
    let mut partitions = Vec::new();
    for (key, item) in root.iter() {
        if key == CLIPBOARD_TABLE || key == FILES_TABLE {
            // App settings: read by [`parse_settings`].
            continue;
        }
        if key != "partition" {
            r.unknown_key(
                root,
                key,
                &["partition", CLIPBOARD_TABLE, FILES_TABLE],
                "at the top level",
            );
            continue;
        }
        let Some(table) = item.as_table() else {
            r.error(
                item_span(item),
                format!("`partition` is {}, expected tables", type_name(item)),
                "write one `[partition.<name>]` table per partition",
            );
            continue;
        };
        for (name, item) in table.iter() {
            let key_span = table.key(name).and_then(|k| k.span());
            if !valid_name(name) {
                r.error(
                    key_span.clone(),
                    format!("partition name `{name}` is not valid"),
                    "use 1-31 lowercase letters, digits, `-` or `_`, starting with a letter or digit",
                );
                continue;
            }
            match item.as_table() {
                Some(t) => {
                    if let Some(p) = r.partition(name, t, key_span) {
                        partitions.push(p);
                    }
                }
                None => r.error(
                    item_span(item),
                    format!(
                        "partition `{name}` is {}, expected a table",
                        type_name(item)
                    ),
                    format!("write it as a `[partition.{name}]` table"),
                ),
            }
        }
    }
    if partitions.is_empty() && !r.diags.iter().any(Diagnostic::is_error) {
        r.error(
            None,
            "no partitions are defined",
            "add at least one `[partition.<name>]` table with a `label`",
        );
    }
    (partitions, r.diags)
}

/// The top-level table of the secure clipboard's app-wide settings.
const CLIPBOARD_TABLE: &str = "clipboard";
/// Keys of the `[clipboard]` table.
const CLIPBOARD_KEYS: &[&str] = &["max_bytes"];
const FILES_TABLE: &str = "file_transfer";
const FILES_KEYS: &[&str] = &["max_mib"];

/// Parse the app-wide settings of `partitions.toml` (the top-level `[clipboard]` and
/// `[file_transfer]` tables); a missing table or key keeps its default. A TOML syntax
/// error is reported by [`parse_partitions`], not twice here.
pub fn parse_settings(file: &Path, text: &str) -> (AppSettings, Vec<Diagnostic>) {
    let mut r = Reader {
        file,
        text,
        diags: Vec::new(),
    };
    let mut settings = AppSettings::default();
    let Ok(doc) = Document::parse(text) else {
        return (settings, r.diags);
    };
    if let Some(table) = settings_table(&mut r, &doc, CLIPBOARD_TABLE, "max_bytes = 262144") {
        for (key, item, span) in table.entries() {
            match key {
                "max_bytes" => {
                    let range = (1, CLIPBOARD_MAX_BYTES_LIMIT as i64);
                    if let Some(n) = r.integer(item, "clipboard.max_bytes", range, "bytes") {
                        settings.clipboard_max_bytes = n as usize;
                    }
                }
                other => r.unknown_key_at(span, other, CLIPBOARD_KEYS, "in [clipboard]"),
            }
        }
    }
    if let Some(table) = settings_table(&mut r, &doc, FILES_TABLE, "max_mib = 4096") {
        for (key, item, span) in table.entries() {
            match key {
                "max_mib" => {
                    let range = (1, FILE_TRANSFER_MAX_MIB_LIMIT as i64);
                    if let Some(n) = r.integer(item, "file_transfer.max_mib", range, "MiB") {
                        settings.file_transfer_max_bytes = (n as u64) << 20;
                    }
                }
                other => r.unknown_key_at(span, other, FILES_KEYS, "in [file_transfer]"),
            }
        }
    }
    (settings, r.diags)
}

/// The top-level settings table `name`, if present and a table (else reported).
fn settings_table<'d>(
    r: &mut Reader<'_>,
    doc: &'d Document<&str>,
    name: &str,
    example: &str,
) -> Option<TableLike<'d>> {
    let item = doc.as_table().get(name)?;
    let table = TableLike::of(item);
    if table.is_none() {
        r.error(
            item_span(item),
            format!("`{name}` is {}, expected a table", type_name(item)),
            format!("write it as a `[{name}]` table, e.g. `{example}`"),
        );
    }
    table
}

fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::None => None,
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
    }
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_type(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}

/// Sub-tables may be written as `[partition.x.network]` or inline `network = { … }`.
enum TableLike<'a> {
    Table(&'a Table),
    Inline(&'a toml_edit::InlineTable),
}

impl<'a> TableLike<'a> {
    fn of(item: &'a Item) -> Option<Self> {
        match item {
            Item::Table(t) => Some(TableLike::Table(t)),
            Item::Value(Value::InlineTable(t)) => Some(TableLike::Inline(t)),
            _ => None,
        }
    }
    fn entries(&self) -> Vec<(&'a str, &'a Item, Option<Range<usize>>)> {
        match self {
            TableLike::Table(t) => t
                .iter()
                .map(|(k, v)| (k, v, t.key(k).and_then(|k| k.span())))
                .collect(),
            TableLike::Inline(t) => t
                .iter()
                .filter_map(|(k, _)| {
                    t.get_key_value(k)
                        .map(|(key, item)| (key.get(), item, key.span()))
                })
                .collect(),
        }
    }
}

struct Reader<'t> {
    file: &'t Path,
    text: &'t str,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn loc(&self, span: Option<Range<usize>>) -> Location {
        match span {
            Some(s) => Location::from_offset(self.file, self.text, s.start),
            None => Location::new(self.file, 1, 1),
        }
    }

    fn error(
        &mut self,
        span: Option<Range<usize>>,
        msg: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let d = Diagnostic::error(self.loc(span), msg, hint);
        self.diags.push(d);
    }

    fn unknown_key(&mut self, table: &Table, key: &str, known: &[&str], where_: &str) {
        let span = table.key(key).and_then(|k| k.span());
        self.unknown_key_at(span, key, known, where_);
    }

    fn unknown_key_at(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        known: &[&str],
        where_: &str,
    ) {
        let hint = match closest(key, known.iter().copied()) {
            Some(c) => format!("did you mean `{c}`?"),
            None => format!("known keys: {}", known.join(", ")),
        };
        self.error(span, format!("unknown key `{key}` {where_}"), hint);
    }

    fn pos(&self, span: &Option<Range<usize>>) -> (usize, usize) {
        let l = self.loc(span.clone());
        (l.line, l.column)
    }

    fn string(&mut self, item: &Item, what: &str) -> Option<String> {
        match item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.error(
                    item_span(item),
                    format!("`{what}` is {}, expected a string", type_name(item)),
                    format!("write it in quotes: {what} = \"…\""),
                );
                None
            }
        }
    }

    fn boolean(&mut self, item: &Item, what: &str) -> Option<bool> {
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.error(
                    item_span(item),
                    format!("`{what}` is {}, expected true or false", type_name(item)),
                    format!("write {what} = true or {what} = false, without quotes"),
                );
                None
            }
        }
    }

    fn integer(
        &mut self,
        item: &Item,
        what: &str,
        (lo, hi): (i64, i64),
        unit: &str,
    ) -> Option<u32> {
        let Some(n) = item.as_integer() else {
            self.error(
                item_span(item),
                format!("`{what}` is {}, expected an integer", type_name(item)),
                format!("write a number of {unit} without quotes, between {lo} and {hi}"),
            );
            return None;
        };
        if !(lo..=hi).contains(&n) {
            self.error(
                item_span(item),
                format!("`{what}` = {n} is impossible: it must be between {lo} and {hi} {unit}"),
                format!("pick a value in {lo}..={hi}"),
            );
            return None;
        }
        u32::try_from(n).ok()
    }

    /// An integer field, checked against the range and unit the field table gives it.
    fn integer_field(&mut self, item: &Item, what: &str, key: &str) -> Option<u32> {
        match fields::field_named(key).map(|f| f.kind) {
            Some(FieldKind::Integer { range, unit }) => self.integer(item, what, range, unit),
            // The table and this reader disagree: a bug here, not in the file.
            _ => unreachable!("`{key}` is not an integer field in fields::PARTITION_FIELDS"),
        }
    }

    fn choice<T: Copy>(&mut self, item: &Item, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(item, what)?;
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        match options.iter().find(|(n, _)| *n == s) {
            Some((_, v)) => Some(*v),
            None => {
                let hint = match closest(&s, names.iter().copied()) {
                    Some(c) => format!("did you mean \"{c}\"?"),
                    None => format!("use one of: {}", names.join(", ")),
                };
                self.error(
                    item_span(item),
                    format!("`{what}` = \"{s}\" is not known"),
                    hint,
                );
                None
            }
        }
    }

    fn partition(
        &mut self,
        name: &str,
        t: &Table,
        key_span: Option<Range<usize>>,
    ) -> Option<Partition> {
        let header = t.span().or(key_span);
        let (line, _) = self.pos(&header);
        let mut p = Partition::with_defaults(name, Label::Red);
        p.file = self.file.to_path_buf();
        p.line = line;
        let mut label = None;
        for (key, item) in t.iter() {
            let kspan = t.key(key).and_then(|k| k.span());
            p.positions.insert(
                key.to_string(),
                self.pos(&item_span(item).or(kspan.clone())),
            );
            let what = format!("partition.{name}.{key}");
            match key {
                "label" => {
                    let options: Vec<(&str, Label)> =
                        Label::ALL.iter().map(|l| (l.name(), *l)).collect();
                    label = self.choice(item, &what, &options);
                }
                "kind" => {
                    let options: Vec<(&str, Kind)> =
                        Kind::ALL.iter().map(|k| (k.name(), *k)).collect();
                    if let Some(k) = self.choice(item, &what, &options) {
                        p.kind = k;
                    }
                }
                "memory_mib" => {
                    if let Some(v) = self.integer_field(item, &what, key) {
                        p.memory_mib = v;
                    }
                }
                "memory_min_mib" => {
                    if let Some(v) = self.integer_field(item, &what, key) {
                        p.memory_min_written = Some(v);
                    }
                }
                "vcpus" => {
                    if let Some(v) = self.integer_field(item, &what, key) {
                        p.vcpus = v;
                    }
                }
                "cpu_weight" => {
                    if let Some(v) = self.integer_field(item, &what, key) {
                        p.cpu_weight = v;
                    }
                }
                "cpu_max_percent" => {
                    if let Some(v) = self.integer_field(item, &what, key) {
                        p.cpu_max_percent = v;
                    }
                }
                "io_weight" => {
                    if let Some(v) = self.integer_field(item, &what, key) {
                        p.io_weight = v;
                    }
                }
                "io_max_mib_s" => {
                    if let Some(v) = self.integer_field(item, &what, key) {
                        p.io_max_mib_s = v;
                    }
                }
                "display" => {
                    if let Some(s) = self.string(item, &what) {
                        match parse_display(&s) {
                            Ok(d) => p.display = d,
                            Err(e) => self.error(
                                item_span(item),
                                format!("`{what}` = \"{s}\": {e}"),
                                "write it as \"WIDTHxHEIGHT\", e.g. \"1280x800\"",
                            ),
                        }
                    }
                }
                "image" => {
                    if let Some(s) = self.string(item, &what) {
                        if valid_name(&s) {
                            p.image = s;
                        } else {
                            self.error(
                                item_span(item),
                                format!("`{what}` = \"{s}\" is not a valid image name"),
                                "use lowercase letters, digits, `-` or `_`",
                            );
                        }
                    }
                }
                "template" => {
                    if let Some(s) = self.string(item, &what) {
                        if valid_name(&s) {
                            p.template = Some(s);
                        } else {
                            self.error(
                                item_span(item),
                                format!("`{what}` = \"{s}\" is not a valid template name"),
                                "use lowercase letters, digits, `-` or `_` (see `bulkhead template list`)",
                            );
                        }
                    }
                }
                "app" => {
                    if let Some(s) = self.string(item, &what) {
                        let bad = s.trim().is_empty()
                            || s.len() > limits::APP_LEN
                            || s.chars().any(|c| c.is_control());
                        if bad {
                            self.error(
                                item_span(item),
                                format!("`{what}` must be a command on one line"),
                                format!(
                                    "write the command the partition starts, e.g. \"firefox-esr\" (under {} bytes)",
                                    limits::APP_LEN
                                ),
                            );
                        } else {
                            p.app = Some(s);
                        }
                    }
                }
                "private_disk_mib" => {
                    if let Some(v) = self.integer_field(item, &what, key) {
                        p.private_disk_mib = v;
                    }
                }
                "keyboard" => {
                    if let Some(s) = self.string(item, &what) {
                        if valid_keyboard(&s) {
                            p.keyboard = s;
                        } else {
                            self.error(
                                item_span(item),
                                format!("`{what}` = \"{s}\" is not a keyboard layout"),
                                "use an X layout name such as \"us\", \"de\" or \"fr,us\"",
                            );
                        }
                    }
                }
                "cmdline" => {
                    if let Some(s) = self.string(item, &what) {
                        if s.len() > limits::CMDLINE_LEN || s.chars().any(|c| c.is_control()) {
                            self.error(
                                item_span(item),
                                format!("`{what}` is too long or has control characters"),
                                format!("keep it under {} bytes on one line", limits::CMDLINE_LEN),
                            );
                        } else {
                            p.cmdline = s;
                        }
                    }
                }
                "tags" => p.tags = self.tags(item, &what),
                "autostart" => {
                    if let Some(b) = self.boolean(item, &what) {
                        p.autostart = b;
                    }
                }
                "restart" => {
                    let options = [
                        ("never", RestartPolicy::Never),
                        ("on-crash", RestartPolicy::OnCrash),
                    ];
                    if let Some(r) = self.choice(item, &what, &options) {
                        p.restart = r;
                    }
                }
                "restart_from" => {
                    let options = [
                        ("boot", RestartFrom::Boot),
                        ("snapshot", RestartFrom::Snapshot),
                    ];
                    if let Some(r) = self.choice(item, &what, &options) {
                        p.restart_from = r;
                    }
                }
                "network" => self.network(item, &what, &mut p),
                "clipboard" => {
                    let mut vals = [p.clipboard_copy_out, p.clipboard_paste_in];
                    self.switches(
                        item,
                        &what,
                        &fields::sub_keys("clipboard"),
                        &mut vals,
                        &mut p.positions,
                        "clipboard",
                    );
                    [p.clipboard_copy_out, p.clipboard_paste_in] = vals;
                }
                "file_transfer" => {
                    let mut vals = [p.file_send, p.file_receive];
                    self.switches(
                        item,
                        &what,
                        &fields::sub_keys("file_transfer"),
                        &mut vals,
                        &mut p.positions,
                        "file_transfer",
                    );
                    [p.file_send, p.file_receive] = vals;
                }
                other => self.unknown_key(
                    t,
                    other,
                    &fields::partition_keys(),
                    &format!("in [partition.{name}]"),
                ),
            }
        }
        if let Some(min) = p.memory_min_written.filter(|&min| min > p.memory_mib) {
            let (line, column) = p.position_of("memory_min_mib");
            self.diags.push(Diagnostic::error(
                Location::new(self.file, line, column),
                format!(
                    "`partition.{name}.memory_min_mib` = {min} is more than its `memory_mib` = {}",
                    p.memory_mib
                ),
                format!(
                    "the minimum is what memory balancing leaves the partition, at most the {} MiB it boots with: lower it, or raise memory_mib",
                    p.memory_mib
                ),
            ));
            // Kept usable: the floor cannot be above the memory.
            p.memory_min_written = Some(p.memory_mib);
        }
        if p.template.is_some() && p.kind == Kind::Template {
            let (line, column) = p.position_of("template");
            self.diags.push(Diagnostic::error(
                Location::new(self.file, line, column),
                format!("template partition `{name}` cannot itself use a template"),
                "remove `template`, or set kind = \"app\"",
            ));
        }
        match label {
            Some(l) => p.label = l,
            None if !t.contains_key("label") => self.error(
                header,
                format!("partition `{name}` has no `label`"),
                "add label = \"red\" (or orange, yellow, green, gray, blue, purple, black)",
            ),
            None => {}
        }
        // Kept even with errors (bad fields hold defaults) so rules can still be checked
        // against every partition name; no policy is built while any error remains.
        Some(p)
    }

    fn tags(&mut self, item: &Item, what: &str) -> BTreeSet<String> {
        let mut tags = BTreeSet::new();
        let Some(array) = item.as_array() else {
            self.error(
                item_span(item),
                format!(
                    "`{what}` is {}, expected an array of strings",
                    type_name(item)
                ),
                "write tags = [\"work\", \"personal\"]",
            );
            return tags;
        };
        for v in array.iter() {
            match v.as_str() {
                Some(s) if valid_name(s) => {
                    tags.insert(s.to_string());
                }
                Some(s) => self.error(
                    v.span(),
                    format!("tag `{s}` in `{what}` is not valid"),
                    "use lowercase letters, digits, `-` or `_`",
                ),
                None => self.error(
                    v.span(),
                    format!("`{what}` holds {}, expected strings", value_type(v)),
                    "write tags = [\"work\"]",
                ),
            }
        }
        tags
    }

    fn switches(
        &mut self,
        item: &Item,
        what: &str,
        keys: &[&str],
        vals: &mut [bool],
        positions: &mut BTreeMap<String, (usize, usize)>,
        prefix: &str,
    ) {
        let Some(t) = TableLike::of(item) else {
            self.error(
                item_span(item),
                format!("`{what}` is {}, expected a table", type_name(item)),
                format!("write {what} = {{ {} = true }}", keys[0]),
            );
            return;
        };
        for (key, v, kspan) in t.entries() {
            let sub = format!("{what}.{key}");
            match keys.iter().position(|k| *k == key) {
                Some(i) => {
                    positions.insert(format!("{prefix}.{key}"), self.pos(&item_span(v).or(kspan)));
                    if let Some(b) = self.boolean(v, &sub) {
                        vals[i] = b;
                    }
                }
                None => self.unknown_key_at(kspan, key, keys, &format!("in `{what}`")),
            }
        }
    }

    fn network(&mut self, item: &Item, what: &str, p: &mut Partition) {
        let Some(t) = TableLike::of(item) else {
            self.error(
                item_span(item),
                format!("`{what}` is {}, expected a table", type_name(item)),
                format!(
                    "write [partition.{}.network] with mode = \"offline\" or \"nat\"",
                    p.name
                ),
            );
            return;
        };
        let mut mode_seen = false;
        for (key, v, kspan) in t.entries() {
            let sub = format!("{what}.{key}");
            p.positions.insert(
                format!("network.{key}"),
                self.pos(&item_span(v).or(kspan.clone())),
            );
            match key {
                "mode" => {
                    mode_seen = true;
                    let options = [("offline", NetworkMode::Offline), ("nat", NetworkMode::Nat)];
                    if let Some(m) = self.choice(v, &sub, &options) {
                        p.network.mode = m;
                    }
                }
                "dns" => {
                    if let Some(b) = self.boolean(v, &sub) {
                        p.network.dns = b;
                    }
                }
                "rule" => p.network.rules = self.firewall_rules(v, &sub),
                other => self.unknown_key_at(
                    kspan,
                    other,
                    &fields::sub_keys("network"),
                    &format!("in `{what}`"),
                ),
            }
        }
        let at = p.positions.get("network.mode").copied();
        if !mode_seen {
            self.error(
                item_span(item),
                format!("`{what}` has no `mode`"),
                "add mode = \"offline\" or mode = \"nat\"",
            );
        } else if p.network.mode == NetworkMode::Offline
            && (!p.network.rules.is_empty() || p.network.dns)
        {
            let (line, column) = at.unwrap_or((p.line, 1));
            self.diags.push(Diagnostic::error(
                Location::new(self.file, line, column),
                format!(
                    "partition `{}` is offline but has firewall rules or dns = true",
                    p.name
                ),
                "set mode = \"nat\" to use them, or remove the rules and dns",
            ));
        }
    }

    fn firewall_rules(&mut self, item: &Item, what: &str) -> Vec<FirewallRule> {
        let tables: Vec<TableLike<'_>> = match item {
            Item::ArrayOfTables(a) => a.iter().map(TableLike::Table).collect(),
            Item::Value(Value::Array(a)) if a.iter().all(|v| v.is_inline_table()) => a
                .iter()
                .filter_map(|v| v.as_inline_table().map(TableLike::Inline))
                .collect(),
            _ => {
                self.error(item_span(item), format!("`{what}` is {}, expected a list of rules", type_name(item)), "write each rule as [[partition.<name>.network.rule]] with action, protocol, destination, ports");
                return Vec::new();
            }
        };
        let mut rules = Vec::new();
        for t in tables {
            if let Some(r) = self.firewall_rule(&t, what) {
                rules.push(r);
            }
        }
        rules
    }

    fn firewall_rule(&mut self, t: &TableLike<'_>, what: &str) -> Option<FirewallRule> {
        let entries = t.entries();
        let span = match t {
            TableLike::Table(t) => t.span(),
            TableLike::Inline(t) => t.span(),
        }
        .or_else(|| entries.first().and_then(|e| e.2.clone()));
        let (line, column) = self.pos(&span);
        let mut action = None;
        let mut protocol = Protocol::Any;
        let mut destination = None;
        let mut ports = Vec::new();
        let mut ok = true;
        for (key, v, kspan) in entries {
            let sub = format!("{what}.{key}");
            match key {
                "action" => {
                    let options = [
                        ("allow", FirewallAction::Allow),
                        ("deny", FirewallAction::Deny),
                    ];
                    action = self.choice(v, &sub, &options);
                    ok &= action.is_some();
                }
                "protocol" => {
                    let options = [
                        ("tcp", Protocol::Tcp),
                        ("udp", Protocol::Udp),
                        ("icmp", Protocol::Icmp),
                        ("any", Protocol::Any),
                    ];
                    match self.choice(v, &sub, &options) {
                        Some(p) => protocol = p,
                        None => ok = false,
                    }
                }
                "destination" => match self.string(v, &sub).map(|s| s.parse::<Destination>()) {
                    Some(Ok(d)) => destination = Some(d),
                    Some(Err(e)) => {
                        ok = false;
                        self.error(item_span(v), format!("`{sub}`: {e}"), "write \"*\", \"10.0.0.0/8\", \"mail.example.org\" or \"*.example.org\"");
                    }
                    None => ok = false,
                },
                "ports" => match self.ports(v, &sub) {
                    Some(p) => ports = p,
                    None => ok = false,
                },
                other => {
                    ok = false;
                    self.unknown_key_at(kspan, other, RULE_KEYS, &format!("in a rule of `{what}`"));
                }
            }
        }
        if action.is_none() && ok {
            self.error(
                span.clone(),
                format!("a rule in `{what}` has no `action`"),
                "add action = \"allow\" or action = \"deny\"",
            );
            ok = false;
        }
        if destination.is_none() && ok {
            self.error(
                span.clone(),
                format!("a rule in `{what}` has no `destination`"),
                "add destination = \"*\" for anywhere, or a host or network",
            );
            ok = false;
        }
        if ok && !ports.is_empty() && !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
            self.error(
                span,
                format!(
                    "a rule in `{what}` lists ports for protocol \"{}\"",
                    protocol.name()
                ),
                "ports need protocol = \"tcp\" or \"udp\"",
            );
            ok = false;
        }
        Some(FirewallRule {
            action: action?,
            protocol,
            destination: destination?,
            ports,
            line,
            column,
        })
        .filter(|_| ok)
    }

    fn ports(&mut self, item: &Item, what: &str) -> Option<Vec<PortRange>> {
        let Some(array) = item.as_array() else {
            self.error(
                item_span(item),
                format!("`{what}` is {}, expected an array", type_name(item)),
                "write ports = [80, 443] or [\"8000-8100\"]",
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in array.iter() {
            let parsed = match v {
                Value::Integer(n) => u16::try_from(*n.value())
                    .ok()
                    .filter(|p| *p != 0)
                    .map(PortRange::single)
                    .ok_or_else(|| format!("port {} is not in 1..=65535", n.value())),
                Value::String(s) => s.value().parse().map_err(|e: NetParseError| e.to_string()),
                other => Err(format!("{} is not a port", value_type(other))),
            };
            match parsed {
                Ok(r) => out.push(r),
                Err(e) => {
                    ok = false;
                    self.error(
                        v.span(),
                        format!("`{what}`: {e}"),
                        "write ports as numbers 1-65535 or ranges like \"8000-8100\"",
                    );
                }
            }
        }
        if out.is_empty() && ok {
            self.error(
                item_span(item),
                format!("`{what}` is empty, which would match no port"),
                "list ports, or remove `ports` to mean every port",
            );
            ok = false;
        }
        ok.then_some(out)
    }
}

/// Why a display size is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisplayError {
    #[error("expected WIDTHxHEIGHT")]
    NotWidthByHeight,
    #[error("width `{0}` is not a number")]
    BadWidth(String),
    #[error("height `{0}` is not a number")]
    BadHeight(String),
    #[error(
        "{width}x{height} is impossible: width must be {}-{} and height {}-{}",
        limits::WIDTH.0,
        limits::WIDTH.1,
        limits::HEIGHT.0,
        limits::HEIGHT.1
    )]
    OutOfRange { width: u32, height: u32 },
    #[error(
        "{width}x{height} needs more than the {} MiB framebuffer window",
        limits::FRAMEBUFFER_BYTES >> 20
    )]
    TooLarge { width: u32, height: u32 },
}

/// Parse `"1280x800"`, checking the size is possible.
pub fn parse_display(s: &str) -> Result<(u32, u32), DisplayError> {
    let (w, h) = s.split_once('x').ok_or(DisplayError::NotWidthByHeight)?;
    let width: u32 = w
        .trim()
        .parse()
        .map_err(|_| DisplayError::BadWidth(w.to_string()))?;
    let height: u32 = h
        .trim()
        .parse()
        .map_err(|_| DisplayError::BadHeight(h.to_string()))?;
    let (wl, wh) = limits::WIDTH;
    let (hl, hh) = limits::HEIGHT;
    if !(wl..=wh).contains(&width) || !(hl..=hh).contains(&height) {
        return Err(DisplayError::OutOfRange { width, height });
    }
    if u64::from(width) * u64::from(height) * 4 > limits::FRAMEBUFFER_BYTES {
        return Err(DisplayError::TooLarge { width, height });
    }
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<Partition>, Vec<Diagnostic>) {
        parse_partitions(Path::new("partitions.toml"), text)
    }

    #[test]
    fn clipboard_cap_is_read_and_bad_values_are_located() {
        let file = Path::new("partitions.toml");
        let ok = "[partition.work]\nlabel = \"green\"\n\n[clipboard]\nmax_bytes = 4096\n";
        let (ps, diags) = parse(ok);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(ps.len(), 1);
        let (settings, diags) = parse_settings(file, ok);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(settings.clipboard_max_bytes, 4096);
        let (settings, _) = parse_settings(file, "[partition.work]\nlabel = \"green\"\n");
        assert_eq!(settings.clipboard_max_bytes, 256 * 1024, "the default");

        let bad =
            "[partition.work]\nlabel = \"green\"\n[clipboard]\nmax_bytes = 300000\nmax_byte = 1\n";
        let (settings, diags) = parse_settings(file, bad);
        assert_eq!(
            settings.clipboard_max_bytes,
            256 * 1024,
            "a bad value keeps the default"
        );
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(diags.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("partitions.toml:4:13: error: `clipboard.max_bytes` = 300000 is impossible: it must be between 1 and 262144 bytes"),
            "{shown:?}"
        );
        assert!(
            shown[1]
                .starts_with("partitions.toml:5:1: error: unknown key `max_byte` in [clipboard]"),
            "{shown:?}"
        );
        assert!(shown[1].contains("did you mean `max_bytes`?"), "{shown:?}");
        let (_, diags) = parse_settings(file, "clipboard = 5\n");
        assert!(
            diags[0].to_string().contains("expected a table"),
            "{diags:?}"
        );
        let (_, diags) = parse_settings(file, "[clipboard]\nmax_bytes = \"1k\"\n");
        assert!(diags[0].to_string().starts_with("partitions.toml:2:13: error: `clipboard.max_bytes` is a string, expected an integer"), "{diags:?}");
    }

    #[test]
    fn minimal_partition_gets_defaults() {
        let (ps, diags) = parse("[partition.work]\nlabel = \"green\"\n");
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].label, Label::Green);
        assert_eq!(ps[0].memory_mib, 1024);
        assert_eq!(ps[0].network.mode, NetworkMode::Offline);
        assert_eq!(ps[0].line, 1);
    }

    #[test]
    fn memory_minimum_is_read_and_defaults_to_half_the_memory_but_at_least_256_mib() {
        let text = "[partition.a]\nlabel = \"red\"\nmemory_mib = 2048\nmemory_min_mib = 700\n\n\
                    [partition.b]\nlabel = \"red\"\nmemory_mib = 4096\n\n\
                    [partition.c]\nlabel = \"red\"\nmemory_mib = 300\n\n\
                    [partition.d]\nlabel = \"red\"\nmemory_mib = 200\n\n\
                    [partition.e]\nlabel = \"red\"\nmemory_mib = 512\nmemory_min_mib = 512\n";
        let (ps, diags) = parse(text);
        assert!(diags.is_empty(), "{diags:?}");
        let mins: Vec<u32> = ps.iter().map(Partition::memory_min_mib).collect();
        assert_eq!(mins, [700, 2048, 256, 200, 512]);
        assert_eq!(ps[0].position_of("memory_min_mib"), (4, 18));
    }

    #[test]
    fn memory_minimum_below_128_or_above_the_memory_is_an_error_at_its_value() {
        let text = "[partition.a]\nlabel = \"red\"\nmemory_min_mib = 64\n\n\
                    [partition.b]\nlabel = \"red\"\nmemory_mib = 1024\nmemory_min_mib = 2048\n\n\
                    [partition.c]\nlabel = \"red\"\nmemory_min_mib = \"1G\"\n";
        let (ps, diags) = parse(text);
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(diags.len(), 3, "{lines:#?}");
        assert!(
            lines[0].starts_with(
                "partitions.toml:3:18: error: `partition.a.memory_min_mib` = 64 is impossible"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("128"), "{}", lines[0]);
        assert!(
            lines[1].starts_with(
                "partitions.toml:8:18: error: `partition.b.memory_min_mib` = 2048 is more than its `memory_mib` = 1024"
            ),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("lower it, or raise memory_mib"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with(
                "partitions.toml:12:18: error: `partition.c.memory_min_mib` is a string"
            ),
            "{}",
            lines[2]
        );
        // Bad values keep a usable floor: the default, or at most the memory.
        assert_eq!(ps[0].memory_min_mib(), 512);
        assert_eq!(ps[1].memory_min_mib(), 1024);
    }

    #[test]
    fn restart_from_is_read_and_a_wrong_value_is_located() {
        let text = "[partition.kiosk]\nlabel = \"blue\"\nrestart = \"on-crash\"\nrestart_from = \"snapshot\"\n\n\
                    [partition.web]\nlabel = \"red\"\nrestart_from = \"snapshot\"\n\n\
                    [partition.web.network]\nmode = \"nat\"\n";
        let (ps, diags) = parse(text);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(ps[0].restart_from, RestartFrom::Snapshot);
        assert_eq!(
            ps[1].restart_from,
            RestartFrom::Snapshot,
            "a network is snapshotted too"
        );
        let (ps, diags) = parse("[partition.a]\nlabel = \"red\"\nrestart_from = \"later\"\n");
        assert_eq!(ps[0].restart_from, RestartFrom::Boot);
        assert!(diags[0].message.contains("restart_from"), "{diags:?}");
    }

    #[test]
    fn full_partition_reads_every_field() {
        let text = r#"
[partition.browser]
label = "red"
kind = "disposable"
memory_mib = 2048
vcpus = 2
display = "1920x1080"
image = "default"
cmdline = "quiet"
tags = ["web"]
autostart = true
restart = "on-crash"
cpu_weight = 200
cpu_max_percent = 150
io_weight = 50
io_max_mib_s = 40
clipboard = { copy_out = true, paste_in = false }
file_transfer = { send = false, receive = true }

[partition.browser.network]
mode = "nat"
dns = true

[[partition.browser.network.rule]]
action = "allow"
protocol = "tcp"
destination = "*"
ports = [80, 443, "8000-8100"]
"#;
        let (ps, diags) = parse(text);
        assert!(diags.is_empty(), "{diags:?}");
        let p = &ps[0];
        assert_eq!(p.kind, Kind::Disposable);
        assert_eq!((p.memory_mib, p.vcpus, p.display), (2048, 2, (1920, 1080)));
        assert_eq!(p.cmdline, "quiet");
        assert!(p.tags.contains("web"));
        assert!(p.autostart);
        assert_eq!(p.restart, RestartPolicy::OnCrash);
        assert_eq!(p.cpu_weight, 200);
        assert_eq!(
            (p.cpu_max_percent, p.io_weight, p.io_max_mib_s),
            (150, 50, 40)
        );
        assert!(!p.clipboard_paste_in && p.clipboard_copy_out);
        assert!(!p.file_send && p.file_receive);
        assert_eq!(p.network.mode, NetworkMode::Nat);
        assert!(p.network.dns);
        assert_eq!(p.network.rules.len(), 1);
        assert_eq!(p.network.rules[0].ports.len(), 3);
        assert_eq!(p.network.rules[0].line, 24);
        assert_eq!(p.position_of("memory_mib"), (5, 14));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_positions() {
        let text = "[partition.a]\nlabel = \"pink\"\nmemroy_mib = 5\nvcpus = \"2\"\n\n[partition.b]\nmemory_mib = 1\n";
        let (_, diags) = parse(text);
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(diags.len(), 5, "{lines:#?}");
        assert!(
            lines[0].starts_with("partitions.toml:2:9: error: `partition.a.label` = \"pink\""),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("partitions.toml:3:1: error: unknown key `memroy_mib`"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("did you mean `memory_mib`?"));
        assert!(
            lines[2].starts_with("partitions.toml:4:9: error: `partition.a.vcpus` is a string"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with(
                "partitions.toml:7:14: error: `partition.b.memory_mib` = 1 is impossible"
            ),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with("partitions.toml:6:1: error: partition `b` has no `label`"),
            "{}",
            lines[4]
        );
    }

    #[test]
    fn missing_label_is_an_error_at_the_header() {
        let (_, diags) = parse("\n[partition.x]\nvcpus = 1\n");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].location.line, 2);
        assert!(diags[0].message.contains("no `label`"));
    }

    #[test]
    fn duplicate_partition_names_are_a_syntax_error_with_position() {
        let (_, diags) = parse("[partition.a]\nlabel = \"red\"\n[partition.a]\nlabel = \"red\"\n");
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].location.line, 3, "{}", diags[0]);
        assert!(diags[0].message.contains("TOML syntax"));
    }

    #[test]
    fn impossible_display_is_rejected() {
        assert!(parse_display("100x100").is_err());
        assert!(parse_display("7680x4320").is_ok()); // 132 MiB: fits the window
        assert!(parse_display("7680x4321").is_err());
        assert_eq!(parse_display("1024x768"), Ok((1024, 768)));
        let (_, diags) = parse("[partition.a]\nlabel = \"red\"\ndisplay = \"99999x1\"\n");
        assert_eq!(diags[0].location.line, 3);
    }

    #[test]
    fn offline_partition_with_firewall_rules_is_an_error() {
        let text = "[partition.a]\nlabel = \"red\"\n[partition.a.network]\nmode = \"offline\"\ndns = true\n";
        let (_, diags) = parse(text);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].message.contains("offline"));
    }

    #[test]
    fn firewall_rule_errors_name_the_key() {
        let text = "[partition.a]\nlabel = \"red\"\n[partition.a.network]\nmode = \"nat\"\n[[partition.a.network.rule]]\naction = \"alow\"\ndestination = \"bad host\"\nports = [0]\nprot = \"tcp\"\n";
        let (_, diags) = parse(text);
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains(":6:10:") && l.contains("did you mean \"allow\"")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(":7:15:") && l.contains("bad host")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(":8:10:") && l.contains("port 0")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(":9:1:") && l.contains("did you mean `protocol`")),
            "{lines:#?}"
        );
    }

    #[test]
    fn template_app_keyboard_and_private_disk_are_read_and_bad_values_located() {
        let text = "[partition.a]\nlabel = \"red\"\ntemplate = \"debian-12\"\napp = \"firefox-esr\"\nkeyboard = \"de\"\nprivate_disk_mib = 4096\n[partition.b]\nlabel = \"red\"\ntemplate = \"Debian 12\"\napp = \"\"\nkeyboard = \"us; rm\"\nprivate_disk_mib = 1\n";
        let (ps, diags) = parse(text);
        let a = ps.iter().find(|p| p.name == "a").unwrap();
        assert_eq!(a.template.as_deref(), Some("debian-12"));
        assert_eq!(a.app.as_deref(), Some("firefox-esr"));
        assert_eq!(a.keyboard, "de");
        assert_eq!(a.private_disk_mib, 4096);
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        for (at, what) in [
            (":9:12:", "template name"),
            (":10:7:", "command on one line"),
            (":11:12:", "keyboard layout"),
            (":12:20:", "private_disk_mib"),
        ] {
            assert!(
                lines.iter().any(|l| l.contains(at) && l.contains(what)),
                "{at} {what}: {lines:#?}"
            );
        }
    }
}
