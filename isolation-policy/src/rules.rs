//! Service rules, Qubes qrexec style, one per line:
//!
//! ```text
//! service +argument source target action [options]
//! bulkhead.ClipboardPaste  *  @anyvm  vault  ask  default_target=vault
//! bulkhead.OpenIn  +url  @tag:mail  browser  allow
//! *  *  @anyvm  @anyvm  deny
//! ```
//!
//! `*` in the service or argument column matches anything. Source and target take a
//! partition name, `@anyvm` (every defined partition), `@tag:T`, `@type:T` (app,
//! template, disposable) or `*` (anything, new disposables included); a target may also
//! be `@dispvm` or `@dispvm:NAME` (a new disposable). Actions: `allow [target=T]`,
//! `deny [notify=yes|no]`, `ask [default_target=T]`. First match wins; no match denies.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Location};
use crate::partition::{valid_name, Kind};

/// The service column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServicePattern {
    Any,
    Name(String),
}

/// The argument column: `*`, or `+arg` (`+` alone means the empty argument).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArgPattern {
    Any,
    Exact(String),
}

/// The source or target column.
/// The target of a request that names none (Qubes' `@default`).
pub const DEFAULT_TARGET: &str = "@default";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`: anything, including requests for a new disposable.
    Any,
    /// `@anyvm`: every defined partition.
    AnyVm,
    Tag(String),
    Type(Kind),
    /// `@dispvm`: a new disposable (target only).
    DispVm,
    /// `@dispvm:NAME`: a new disposable from partition NAME (target only).
    DispVmOf(String),
    /// `@default`: a request that names no target (target only); the rule's
    /// `target=` / `default_target=` says where it goes.
    Default,
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `allow`, or `allow target=T`: redirect to T.
    Allow { target: Option<String> },
    /// `deny`; `notify=no` asks the GUI not to show a notice.
    Deny { notify: bool },
    /// `ask`, or `ask default_target=T`: the GUI asks the user, preselecting T.
    Ask { default_target: Option<String> },
}

/// Columns (1-based, in characters) of each part of a rule, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Columns {
    pub service: usize,
    pub argument: usize,
    pub source: usize,
    pub target: usize,
    pub action: usize,
    /// The `target=` / `default_target=` option, if any.
    pub option_target: usize,
}

/// One rule with where it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub service: ServicePattern,
    pub argument: ArgPattern,
    pub source: Pattern,
    pub target: Pattern,
    pub action: Action,
    pub file: PathBuf,
    pub line: usize,
    pub columns: Columns,
}

/// Where a decision came from: a rule, or a partition setting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The rule as text (canonical form), or the setting `key = value`.
    pub text: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.text)
    }
}

impl Rule {
    pub fn reference(&self) -> RuleRef {
        RuleRef {
            file: self.file.clone(),
            line: self.line,
            column: self.columns.service.max(1),
            text: self.to_string(),
        }
    }

    pub fn location(&self, column: usize) -> Location {
        Location::new(&self.file, self.line, column.max(1))
    }

    /// Partition names this rule mentions, with their columns.
    pub fn named_partitions(&self) -> Vec<(&str, usize)> {
        let mut out = Vec::new();
        for (p, col) in [
            (&self.source, self.columns.source),
            (&self.target, self.columns.target),
        ] {
            match p {
                Pattern::Name(n) | Pattern::DispVmOf(n) => out.push((n.as_str(), col)),
                _ => {}
            }
        }
        match &self.action {
            Action::Allow { target: Some(t) }
            | Action::Ask {
                default_target: Some(t),
            } => {
                let name = t.strip_prefix("@dispvm:").unwrap_or(t);
                if name != "@dispvm" {
                    out.push((name, self.columns.option_target));
                }
            }
            _ => {}
        }
        out
    }

    /// This rule with every mention of partition `from` (as in
    /// [`Rule::named_partitions`]) replaced by `to`.
    pub fn renamed(&self, from: &str, to: &str) -> Rule {
        let swap = |p: &Pattern| match p {
            Pattern::Name(n) if n == from => Pattern::Name(to.to_string()),
            Pattern::DispVmOf(n) if n == from => Pattern::DispVmOf(to.to_string()),
            other => other.clone(),
        };
        let swap_target = |t: &Option<String>| {
            t.as_ref().map(|t| match t.strip_prefix("@dispvm:") {
                Some(n) if n == from => format!("@dispvm:{to}"),
                _ if t == from => to.to_string(),
                _ => t.clone(),
            })
        };
        let action = match &self.action {
            Action::Allow { target } => Action::Allow {
                target: swap_target(target),
            },
            Action::Ask { default_target } => Action::Ask {
                default_target: swap_target(default_target),
            },
            deny => deny.clone(),
        };
        Rule {
            source: swap(&self.source),
            target: swap(&self.target),
            action,
            ..self.clone()
        }
    }

    /// Tags this rule mentions, with their columns.
    pub fn named_tags(&self) -> Vec<(&str, usize)> {
        [
            (&self.source, self.columns.source),
            (&self.target, self.columns.target),
        ]
        .into_iter()
        .filter_map(|(p, col)| match p {
            Pattern::Tag(t) => Some((t.as_str(), col)),
            _ => None,
        })
        .collect()
    }
}

impl fmt::Display for ServicePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePattern::Any => f.write_str("*"),
            ServicePattern::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for ArgPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgPattern::Any => f.write_str("*"),
            ArgPattern::Exact(a) => write!(f, "+{a}"),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::AnyVm => f.write_str("@anyvm"),
            Pattern::Tag(t) => write!(f, "@tag:{t}"),
            Pattern::Type(k) => write!(f, "@type:{}", k.name()),
            Pattern::DispVm => f.write_str("@dispvm"),
            Pattern::DispVmOf(n) => write!(f, "@dispvm:{n}"),
            Pattern::Default => f.write_str("@default"),
            Pattern::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow { target: None } => f.write_str("allow"),
            Action::Allow { target: Some(t) } => write!(f, "allow target={t}"),
            Action::Deny { notify: true } => f.write_str("deny"),
            Action::Deny { notify: false } => f.write_str("deny notify=no"),
            Action::Ask {
                default_target: None,
            } => f.write_str("ask"),
            Action::Ask {
                default_target: Some(t),
            } => write!(f, "ask default_target={t}"),
        }
    }
}

/// The canonical one-line form; parsing it gives the same rule back.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.service, self.argument, self.source, self.target, self.action
        )
    }
}

fn is_service_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

struct Token<'a> {
    text: &'a str,
    column: usize,
}

fn tokens(line: &str) -> Vec<Token<'_>> {
    let content = line.split('#').next().unwrap_or("");
    let mut out = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (byte, column)
    for (col, (i, c)) in content.char_indices().enumerate() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some((i, col + 1)),
            (true, Some((s, column))) => {
                out.push(Token {
                    text: &content[s..i],
                    column,
                });
                start = None;
            }
            _ => {}
        }
    }
    if let Some((s, column)) = start {
        out.push(Token {
            text: &content[s..],
            column,
        });
    }
    out
}

/// Parse one rule file. Returns the rules that parsed and a diagnostic per bad line.
pub fn parse_rules(file: &Path, text: &str) -> (Vec<Rule>, Vec<Diagnostic>) {
    let mut rules = Vec::new();
    let mut diags = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(file, i + 1, line) {
            Ok(Some(rule)) => rules.push(rule),
            Ok(None) => {}
            Err(d) => diags.push(*d),
        }
    }
    (rules, diags)
}

/// Parse one line: `Ok(None)` for blank lines and comments.
pub fn parse_line(
    file: &Path,
    line_no: usize,
    line: &str,
) -> Result<Option<Rule>, Box<Diagnostic>> {
    let toks = tokens(line);
    let err = |column: usize, msg: String, hint: &str| {
        Box::new(Diagnostic::error(
            Location::new(file, line_no, column),
            msg,
            hint,
        ))
    };
    if toks.is_empty() {
        return Ok(None);
    }
    if toks.len() < 5 {
        let end = line
            .split('#')
            .next()
            .unwrap_or("")
            .trim_end()
            .chars()
            .count()
            + 1;
        return Err(err(
            end,
            format!("rule has {} of the 5 columns", toks.len()),
            "write `service +argument source target action`, e.g. `bulkhead.FileCopy * @anyvm @anyvm ask`",
        ));
    }
    let service = parse_service(toks[0].text).map_err(|m| {
        err(
            toks[0].column,
            m,
            "a service is `*` or a name of letters, digits, `.`, `_`, `-`",
        )
    })?;
    let argument = parse_argument(toks[1].text).map_err(|m| {
        err(
            toks[1].column,
            m,
            "write `*` for any argument or `+arg` for one",
        )
    })?;
    let source = parse_pattern(toks[2].text, false).map_err(|m| err(toks[2].column, m.0, m.1))?;
    let target = parse_pattern(toks[3].text, true).map_err(|m| err(toks[3].column, m.0, m.1))?;
    let mut columns = Columns {
        service: toks[0].column,
        argument: toks[1].column,
        source: toks[2].column,
        target: toks[3].column,
        action: toks[4].column,
        option_target: 0,
    };
    let action = parse_action(&toks[4..], &mut columns).map_err(|(c, m, h)| err(c, m, h))?;
    Ok(Some(Rule {
        service,
        argument,
        source,
        target,
        action,
        file: file.to_path_buf(),
        line: line_no,
        columns,
    }))
}

fn parse_service(s: &str) -> Result<ServicePattern, String> {
    if s == "*" {
        Ok(ServicePattern::Any)
    } else if s.chars().all(is_service_char) && s.len() <= 64 {
        Ok(ServicePattern::Name(s.to_string()))
    } else {
        Err(format!("`{s}` is not a service name"))
    }
}

fn parse_argument(s: &str) -> Result<ArgPattern, String> {
    if s == "*" {
        return Ok(ArgPattern::Any);
    }
    match s.strip_prefix('+') {
        Some(a) if a.chars().all(is_service_char) && a.len() <= 64 => {
            Ok(ArgPattern::Exact(a.to_string()))
        }
        Some(_) => Err(format!(
            "argument `{s}` has characters other than letters, digits, `.`, `_`, `-`"
        )),
        None => Err(format!("argument `{s}` must be `*` or start with `+`")),
    }
}

type PatternError = (String, &'static str);

fn parse_pattern(s: &str, is_target: bool) -> Result<Pattern, PatternError> {
    const HINT: &str = "use a partition name, `@anyvm`, `@tag:T`, `@type:app|template|disposable`, `*`, or (as target) `@dispvm`";
    if s == "*" {
        return Ok(Pattern::Any);
    }
    if s == "@anyvm" {
        return Ok(Pattern::AnyVm);
    }
    if let Some(t) = s.strip_prefix("@tag:") {
        return if valid_name(t) {
            Ok(Pattern::Tag(t.to_string()))
        } else {
            Err((
                format!("tag `{t}` is not valid"),
                "tags are lowercase letters, digits, `-` or `_`",
            ))
        };
    }
    if let Some(k) = s.strip_prefix("@type:") {
        return Kind::ALL
            .into_iter()
            .find(|kind| kind.name() == k)
            .map(Pattern::Type)
            .ok_or((
                format!("type `{k}` is not known"),
                "types are app, template and disposable",
            ));
    }
    if s == "@dispvm" || s.starts_with("@dispvm:") {
        if !is_target {
            return Err((
                format!("`{s}` cannot be a source"),
                "a new disposable cannot send requests; use `@type:disposable`",
            ));
        }
        return match s.strip_prefix("@dispvm:") {
            None => Ok(Pattern::DispVm),
            Some(n) if valid_name(n) => Ok(Pattern::DispVmOf(n.to_string())),
            Some(n) => Err((format!("`{n}` in `{s}` is not a partition name"), HINT)),
        };
    }
    if s == DEFAULT_TARGET {
        if !is_target {
            return Err((
                "`@default` cannot be a source".to_string(),
                "`@default` stands for a request that names no target",
            ));
        }
        return Ok(Pattern::Default);
    }
    if s.starts_with('@') {
        return Err((format!("unknown token `{s}`"), HINT));
    }
    if valid_name(s) {
        Ok(Pattern::Name(s.to_string()))
    } else {
        Err((
            format!("`{s}` is not a valid partition name or token"),
            HINT,
        ))
    }
}

fn valid_target_value(t: &str) -> bool {
    t == "@dispvm"
        || t.strip_prefix("@dispvm:")
            .map_or_else(|| valid_name(t), valid_name)
}

fn parse_action(
    toks: &[Token<'_>],
    cols: &mut Columns,
) -> Result<Action, (usize, String, &'static str)> {
    let head = &toks[0];
    let allowed: &[&str] = match head.text {
        "allow" => &["target"],
        "deny" => &["notify"],
        "ask" => &["default_target"],
        other => {
            return Err((
                head.column,
                format!("unknown action `{other}`"),
                "the actions are allow, deny and ask",
            ))
        }
    };
    let mut target = None;
    let mut notify = true;
    for t in &toks[1..] {
        let Some((key, value)) = t.text.split_once('=') else {
            return Err((
                t.column,
                format!("`{}` is not an option", t.text),
                "options are written key=value",
            ));
        };
        if !allowed.contains(&key) {
            return Err((
                t.column,
                format!("option `{key}` does not apply to `{}`", head.text),
                match head.text {
                    "allow" => "`allow` takes target=",
                    "deny" => "`deny` takes notify=yes|no",
                    _ => "`ask` takes default_target=",
                },
            ));
        }
        match key {
            "notify" => {
                notify = match value {
                    "yes" => true,
                    "no" => false,
                    v => {
                        return Err((
                            t.column,
                            format!("notify={v} is not yes or no"),
                            "write notify=yes or notify=no",
                        ))
                    }
                };
            }
            _ => {
                if target.is_some() {
                    return Err((
                        t.column,
                        format!("option `{key}` is given twice"),
                        "keep one",
                    ));
                }
                if !valid_target_value(value) {
                    return Err((
                        t.column,
                        format!("`{value}` in {key}= is not a partition or @dispvm"),
                        "name a partition, `@dispvm` or `@dispvm:NAME`",
                    ));
                }
                cols.option_target = t.column;
                target = Some(value.to_string());
            }
        }
    }
    Ok(match head.text {
        "allow" => Action::Allow { target },
        "deny" => Action::Deny { notify },
        _ => Action::Ask {
            default_target: target,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Rule {
        parse_line(Path::new("t.policy"), 1, line).unwrap().unwrap()
    }

    fn fails(line: &str) -> Diagnostic {
        *parse_line(Path::new("t.policy"), 1, line).unwrap_err()
    }

    #[test]
    fn blank_and_comment_lines_are_skipped() {
        let (rules, diags) = parse_rules(Path::new("t"), "\n  # a comment\n\t\n");
        assert!(rules.is_empty() && diags.is_empty());
    }

    #[test]
    fn every_token_form_parses() {
        let r = one("bulkhead.OpenIn +url @tag:mail @type:disposable allow");
        assert_eq!(r.service, ServicePattern::Name("bulkhead.OpenIn".into()));
        assert_eq!(r.argument, ArgPattern::Exact("url".into()));
        assert_eq!(r.source, Pattern::Tag("mail".into()));
        assert_eq!(r.target, Pattern::Type(Kind::Disposable));
        let r = one("* * @anyvm @dispvm deny");
        assert_eq!(r.service, ServicePattern::Any);
        assert_eq!(r.argument, ArgPattern::Any);
        assert_eq!(r.source, Pattern::AnyVm);
        assert_eq!(r.target, Pattern::DispVm);
        let r = one("x + * @dispvm:browser allow");
        assert_eq!(r.argument, ArgPattern::Exact(String::new()));
        assert_eq!(r.source, Pattern::Any);
        assert_eq!(r.target, Pattern::DispVmOf("browser".into()));
        let r = one("x * work mail ask");
        assert_eq!(r.source, Pattern::Name("work".into()));
        assert_eq!(r.target, Pattern::Name("mail".into()));
    }

    #[test]
    fn every_action_form_parses() {
        assert_eq!(one("x * a b allow").action, Action::Allow { target: None });
        assert_eq!(
            one("x * a b allow target=c").action,
            Action::Allow {
                target: Some("c".into())
            }
        );
        assert_eq!(
            one("x * a @dispvm allow target=@dispvm:c").action,
            Action::Allow {
                target: Some("@dispvm:c".into())
            }
        );
        assert_eq!(one("x * a b deny").action, Action::Deny { notify: true });
        assert_eq!(
            one("x * a b deny notify=no").action,
            Action::Deny { notify: false }
        );
        assert_eq!(
            one("x * a b ask").action,
            Action::Ask {
                default_target: None
            }
        );
        let r = one("x * a b ask default_target=c");
        assert_eq!(
            r.action,
            Action::Ask {
                default_target: Some("c".into())
            }
        );
        assert_eq!(r.columns.option_target, 13);
    }

    #[test]
    fn trailing_comment_is_ignored() {
        assert_eq!(
            one("x * a b deny # no way").action,
            Action::Deny { notify: true }
        );
    }

    #[test]
    fn errors_point_at_the_bad_column() {
        let d = fails("x * a b maybe");
        assert_eq!(d.location.column, 9);
        assert!(d.message.contains("unknown action `maybe`"));
        let d = fails("x arg a b allow");
        assert_eq!(d.location.column, 3);
        let d = fails("x * @dispvm b allow");
        assert_eq!(d.location.column, 5);
        assert!(d.message.contains("cannot be a source"));
        let d = fails("x * a @type:vm allow");
        assert_eq!(d.location.column, 7);
        let d = fails("x * a @anything allow");
        assert!(d.message.contains("unknown token"));
        let d = fails("x * a b ask target=c");
        assert_eq!(d.location.column, 13);
        assert!(d.message.contains("does not apply"));
        let d = fails("x * a b allow target=c target=d");
        assert!(d.message.contains("twice"));
        let d = fails("x * a b deny notify=maybe");
        assert!(d.message.contains("yes or no"));
        let d = fails("x * a b");
        assert!(d.message.contains("4 of the 5"));
        let d = fails("bad/service * a b allow");
        assert_eq!(d.location.column, 1);
        let d = fails("x * Work b allow");
        assert_eq!(d.location.column, 5);
    }

    #[test]
    fn columns_count_characters_after_tabs_and_spaces() {
        let r = one("  svc\t*  a   b allow");
        assert_eq!(r.columns.service, 3);
        assert_eq!(r.columns.argument, 7);
        assert_eq!(r.columns.source, 10);
        assert_eq!(r.columns.target, 14);
        assert_eq!(r.columns.action, 16);
    }

    #[test]
    fn all_bad_lines_of_a_file_are_reported() {
        let (rules, diags) = parse_rules(Path::new("f"), "x * a b allow\nbroken\nx * a b nope\n");
        assert_eq!(rules.len(), 1);
        assert_eq!(diags.len(), 2);
        assert_eq!(diags[0].location.line, 2);
        assert_eq!(diags[1].location.line, 3);
    }

    #[test]
    fn canonical_print_parses_back_to_the_same_rule() {
        for line in [
            "a.b +x @tag:t @type:template ask default_target=@dispvm",
            "* * * * deny notify=no",
            "s + @anyvm @dispvm:z allow target=q",
        ] {
            let r = one(line);
            assert_eq!(r.to_string(), line);
            assert_eq!(one(&r.to_string()).to_string(), line);
        }
    }
}
