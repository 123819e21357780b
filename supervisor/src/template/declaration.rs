//! A template's declaration: one TOML file per template.
//!
//! ```toml
//! name = "debian-12"              # the store directory; must match the file name
//! suite = "bookworm"
//! variant = "minbase"             # default minbase
//! components = ["main"]           # default ["main"]
//! packages = ["xterm", "tmux"]    # installed without recommends
//!
//! [[mirror]]                      # default: deb.debian.org/debian with `suite`
//! url = "http://deb.debian.org/debian"
//! suites = ["bookworm", "bookworm-updates"]
//! ```
//!
//! Problems are [`Diagnostic`]s (`file:line:column: error: … (hint: …)`), the style of
//! `bulkhead policy check`: a syntax error or unknown key stops at the first one, value
//! problems (names, packages, mirrors) are all reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use isolation_policy::diag::closest;
use isolation_policy::{Diagnostic, Location};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

/// Bumped when the build recipe changes (hooks, excludes, compression), so every
/// template counts as out of date once.
pub const RECIPE_VERSION: u32 = 1;

/// The mirror used when a declaration names none.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// mmdebstrap variants that give a root a partition can boot.
pub const VARIANTS: &[&str] = &[
    "minbase",
    "essential",
    "apt",
    "required",
    "important",
    "standard",
];

const KEYS: &[&str] = &[
    "name",
    "suite",
    "variant",
    "components",
    "packages",
    "mirror",
];
const MIRROR_KEYS: &[&str] = &["url", "suites"];

/// One apt source: a mirror and the suites taken from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub url: String,
    pub suites: Vec<String>,
}

/// A checked declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Declaration {
    pub name: String,
    pub suite: String,
    pub variant: String,
    pub components: Vec<String>,
    pub mirrors: Vec<Mirror>,
    /// As written (order kept, duplicates refused).
    pub packages: Vec<String>,
    /// The file it was read from.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeclaration {
    name: Spanned<String>,
    suite: Spanned<String>,
    #[serde(default)]
    variant: Option<Spanned<String>>,
    #[serde(default)]
    components: Option<Spanned<Vec<Spanned<String>>>>,
    packages: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    mirror: Option<Vec<RawMirror>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    url: Spanned<String>,
    suites: Spanned<Vec<Spanned<String>>>,
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: String, hint: impl Into<String>) {
        self.diags.push(Diagnostic::error(
            Location::from_offset(self.file, self.text, span.start),
            message,
            hint,
        ));
    }
}

impl Declaration {
    /// Reads and checks one declaration. `file` names it in diagnostics; its stem must be
    /// the declared `name`.
    pub fn parse(file: &Path, text: &str) -> Result<Declaration, Vec<Diagnostic>> {
        let mut c = Checker {
            file,
            text,
            diags: Vec::new(),
        };
        let raw: RawDeclaration = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let at = e.span().map_or(0, |s| s.start);
                let message = e.message().trim().replace('\n', "; ");
                let hint = syntax_hint(&message);
                c.error(at..at, message, hint);
                return Err(c.diags);
            }
        };

        let name = raw.name.get_ref().clone();
        if !super::valid_name(&name) {
            c.error(
                raw.name.span(),
                format!("template name `{name}` is not valid"),
                "use 1-63 lowercase letters, digits, `.`, `-` or `_`, starting with a letter or digit",
            );
        } else if let Some(stem) = file.file_stem().and_then(|s| s.to_str()) {
            if stem != name {
                c.error(
                    raw.name.span(),
                    format!("template `{name}` is declared in `{stem}.toml`"),
                    format!("rename the file to `{name}.toml` or set name = \"{stem}\""),
                );
            }
        }

        let suite = raw.suite.get_ref().clone();
        if !valid_word(&suite) {
            c.error(
                raw.suite.span(),
                format!("suite `{suite}` is not a Debian suite name"),
                "write a suite or codename such as \"bookworm\"",
            );
        }

        let variant = match &raw.variant {
            None => "minbase".to_string(),
            Some(v) => {
                let value = v.get_ref();
                if !VARIANTS.contains(&value.as_str()) {
                    let hint = match closest(value, VARIANTS.iter().copied()) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => format!("use one of: {}", VARIANTS.join(", ")),
                    };
                    c.error(
                        v.span(),
                        format!("variant `{value}` is not supported"),
                        hint,
                    );
                }
                value.clone()
            }
        };

        let components = match &raw.components {
            None => vec!["main".to_string()],
            Some(spanned) => {
                let list = spanned.get_ref();
                if list.is_empty() {
                    c.error(
                        spanned.span(),
                        "`components` is empty".into(),
                        "list at least one, e.g. components = [\"main\"]",
                    );
                }
                for comp in list {
                    if !valid_word(comp.get_ref()) {
                        c.error(
                            comp.span(),
                            format!("component `{}` is not valid", comp.get_ref()),
                            "use an archive area such as \"main\", \"contrib\" or \"non-free-firmware\"",
                        );
                    }
                }
                list.iter().map(|s| s.get_ref().clone()).collect()
            }
        };

        let mut mirrors = Vec::new();
        match &raw.mirror {
            None => mirrors.push(Mirror {
                url: DEFAULT_MIRROR.to_string(),
                suites: vec![suite.clone()],
            }),
            Some(list) => {
                for m in list {
                    let url = m.url.get_ref();
                    let scheme_ok = ["http://", "https://", "file:/", "copy:/"]
                        .iter()
                        .any(|p| url.starts_with(p));
                    if !scheme_ok || url.chars().any(char::is_whitespace) {
                        c.error(
                            m.url.span(),
                            format!("mirror url `{url}` is not an apt URL"),
                            "write it like \"http://deb.debian.org/debian\" (http, https or file)",
                        );
                    }
                    if m.suites.get_ref().is_empty() {
                        c.error(
                            m.suites.span(),
                            format!("mirror `{url}` lists no suites"),
                            "list the suites taken from it, e.g. suites = [\"bookworm\"]",
                        );
                    }
                    for s in m.suites.get_ref() {
                        if !valid_word(s.get_ref()) {
                            c.error(
                                s.span(),
                                format!("suite `{}` is not a Debian suite name", s.get_ref()),
                                "write a suite such as \"bookworm-updates\"",
                            );
                        }
                    }
                    mirrors.push(Mirror {
                        url: url.clone(),
                        suites: m
                            .suites
                            .get_ref()
                            .iter()
                            .map(|s| s.get_ref().clone())
                            .collect(),
                    });
                }
                if mirrors.is_empty() {
                    c.error(
                        raw.suite.span(),
                        "no [[mirror]] is declared".into(),
                        "add a [[mirror]] table with url and suites, or remove `mirror` for the default",
                    );
                } else if !mirrors.iter().any(|m| m.suites.contains(&suite)) {
                    c.error(
                        raw.suite.span(),
                        format!("suite `{suite}` is taken from none of the mirrors"),
                        format!("add \"{suite}\" to the suites of a [[mirror]]"),
                    );
                }
            }
        }

        let mut seen = BTreeSet::new();
        if raw.packages.get_ref().is_empty() {
            c.error(
                raw.packages.span(),
                "`packages` is empty".into(),
                "list the packages the template needs beyond the variant's, e.g. [\"tmux\"]",
            );
        }
        for p in raw.packages.get_ref() {
            let pkg = p.get_ref();
            if !valid_package(pkg) {
                c.error(
                    p.span(),
                    format!("`{pkg}` is not a Debian package name"),
                    "package names are lowercase letters, digits, `+`, `-` and `.`, at least two characters",
                );
            } else if !seen.insert(pkg.as_str()) {
                c.error(
                    p.span(),
                    format!("package `{pkg}` is listed twice"),
                    "remove one of them",
                );
            }
        }
        let packages = raw
            .packages
            .get_ref()
            .iter()
            .map(|p| p.get_ref().clone())
            .collect();

        if !c.diags.is_empty() {
            return Err(c.diags);
        }
        Ok(Declaration {
            name,
            suite,
            variant,
            components,
            mirrors,
            packages,
            source: file.to_path_buf(),
        })
    }

    /// A fingerprint of what the template is built from (not of the file's text: comments
    /// and order of packages do not count) and of the build recipe.
    pub fn hash(&self) -> String {
        let mut packages: Vec<&str> = self.packages.iter().map(String::as_str).collect();
        packages.sort_unstable();
        let canonical = serde_json::json!({
            "recipe": RECIPE_VERSION,
            "name": self.name,
            "suite": self.suite,
            "variant": self.variant,
            "components": self.components,
            "mirrors": self.mirrors,
            "packages": packages,
        });
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        hex(&digest)
    }

    /// The mirrors as mmdebstrap's one-line sources: `deb URL SUITE COMPONENTS`.
    pub fn source_lines(&self) -> Vec<String> {
        let components = self.components.join(" ");
        let mut lines = Vec::new();
        for m in &self.mirrors {
            for suite in &m.suites {
                lines.push(format!("deb {} {suite} {components}", m.url));
            }
        }
        lines
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn syntax_hint(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let word = rest.split('`').next().unwrap_or_default();
        let candidates = KEYS.iter().chain(MIRROR_KEYS).copied();
        return match closest(word, candidates) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!(
                "a template has {}; a [[mirror]] has {}",
                KEYS.join(", "),
                MIRROR_KEYS.join(", ")
            ),
        };
    }
    if message.starts_with("missing field") {
        return "a template needs at least name, suite and packages".into();
    }
    "fix the TOML syntax; see the shipped debian-12.toml for an example".into()
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_./".contains(c))
}

/// Debian policy 5.6.1: at least two characters, `[a-z0-9][a-z0-9+.-]+`.
fn valid_package(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() >= 2
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
}

/// Declarations found on disk, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    declarations: BTreeMap<String, Declaration>,
}

/// Why declarations could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeclarationError {
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("reading template declarations in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no template `{name}` is declared (looked in {searched}){}", hint_known(.name, .known))]
    Unknown {
        name: String,
        known: Vec<String>,
        searched: String,
    },
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

fn hint_known(name: &str, known: &[String]) -> String {
    if let Some(near) = closest(name, known.iter().map(String::as_str)) {
        return format!("; did you mean `{near}`?");
    }
    if known.is_empty() {
        "; add a NAME.toml there".into()
    } else {
        format!("; declared: {}", known.join(", "))
    }
}

impl Catalog {
    /// Reads `*.toml` in each of `dirs` (missing ones are skipped); a later directory's
    /// declaration replaces an earlier one of the same name. Any invalid file fails the
    /// whole load with every problem found.
    pub fn load(dirs: &[PathBuf]) -> Result<Catalog, DeclarationError> {
        let mut catalog = Catalog::default();
        let mut diags = Vec::new();
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(DeclarationError::Io {
                        path: dir.clone(),
                        source,
                    })
                }
            };
            let mut files = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| DeclarationError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    files.push(path);
                }
            }
            files.sort();
            for path in files {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| DeclarationError::Io {
                        path: path.clone(),
                        source,
                    })?;
                match Declaration::parse(&path, &text) {
                    Ok(d) => {
                        catalog.declarations.insert(d.name.clone(), d);
                    }
                    Err(ds) => diags.extend(ds),
                }
            }
        }
        if diags.is_empty() {
            Ok(catalog)
        } else {
            Err(DeclarationError::Invalid(diags))
        }
    }

    /// The shipped declarations overridden by the user's ([`super::declaration_dirs`]).
    pub fn load_default() -> Result<Catalog, DeclarationError> {
        Catalog::load(&super::declaration_dirs())
    }

    pub fn get(&self, name: &str) -> Option<&Declaration> {
        self.declarations.get(name)
    }

    /// The declaration named `name`, or an error listing what is declared.
    pub fn require(
        &self,
        name: &str,
        searched: &[PathBuf],
    ) -> Result<&Declaration, DeclarationError> {
        self.get(name).ok_or_else(|| DeclarationError::Unknown {
            name: name.to_string(),
            known: self.declarations.keys().cloned().collect(),
            searched: searched
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Declaration> {
        self.declarations.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "tiny"
suite = "bookworm"
packages = ["hello", "tmux"]

[[mirror]]
url = "http://deb.debian.org/debian"
suites = ["bookworm", "bookworm-updates"]

[[mirror]]
url = "http://deb.debian.org/debian-security"
suites = ["bookworm-security"]
"#;

    fn parse(text: &str) -> Result<Declaration, Vec<Diagnostic>> {
        Declaration::parse(Path::new("/t/tiny.toml"), text)
    }

    fn only_error(text: &str) -> String {
        let diags = parse(text).unwrap_err();
        assert_eq!(diags.len(), 1, "{diags:?}");
        diags[0].to_string()
    }

    #[test]
    fn a_good_declaration_parses_with_defaults_filled_in() {
        let d = parse(GOOD).unwrap();
        assert_eq!(d.name, "tiny");
        assert_eq!(d.variant, "minbase");
        assert_eq!(d.components, ["main"]);
        assert_eq!(d.packages, ["hello", "tmux"]);
        assert_eq!(
            d.source_lines(),
            [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
    }

    #[test]
    fn without_mirrors_the_suite_comes_from_deb_debian_org() {
        let d = parse("name = \"tiny\"\nsuite = \"trixie\"\npackages = [\"hello\"]\n").unwrap();
        assert_eq!(
            d.source_lines(),
            ["deb http://deb.debian.org/debian trixie main"]
        );
    }

    #[test]
    fn the_shipped_declarations_are_valid_and_debian_12_has_the_partition_apps() {
        let catalog = Catalog::load(&[crate::template::source_tree_declaration_dir()]).unwrap();
        let d = catalog.get("debian-12").unwrap();
        assert_eq!(d.suite, "bookworm");
        for app in [
            "firefox-esr",
            "claws-mail",
            "xterm",
            "matchbox-window-manager",
            "xserver-xorg-video-fbdev",
        ] {
            assert!(d.packages.iter().any(|p| p == app), "{app}");
        }
        assert_eq!(d.source_lines().len(), 3);
    }

    #[test]
    fn a_syntax_error_names_line_and_column() {
        let e = only_error("name = \"tiny\"\nsuite = bookworm\n");
        assert!(e.starts_with("/t/tiny.toml:2:9: error:"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_reported_where_it_is_with_a_suggestion() {
        let e = only_error("name = \"tiny\"\nsuite = \"bookworm\"\npakages = [\"hello\"]\n");
        assert!(
            e.starts_with("/t/tiny.toml:3:1: error: unknown field `pakages`"),
            "{e}"
        );
        assert!(e.contains("did you mean `packages`?"), "{e}");
    }

    #[test]
    fn a_bad_package_name_points_at_the_package() {
        let e = only_error(
            "name = \"tiny\"\nsuite = \"bookworm\"\npackages = [\"hello\", \"Bad Pkg\"]\n",
        );
        assert!(
            e.starts_with("/t/tiny.toml:3:22: error: `Bad Pkg` is not a Debian package name"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let diags = parse(
            "name = \"Tiny\"\nsuite = \"bookworm\"\nvariant = \"minbsae\"\npackages = [\"x\", \"tmux\", \"tmux\"]\n",
        )
        .unwrap_err();
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(diags.len(), 4, "{text:#?}");
        assert!(
            text[0].contains("1:8: error: template name `Tiny`"),
            "{text:#?}"
        );
        assert!(
            text[1].contains("3:11: error: variant `minbsae`") && text[1].contains("`minbase`")
        );
        assert!(text[2].contains("4:13: error: `x` is not a Debian package name"));
        assert!(text[3].contains("4:26: error: package `tmux` is listed twice"));
    }

    #[test]
    fn the_name_must_match_the_file_name() {
        let e = only_error("name = \"other\"\nsuite = \"bookworm\"\npackages = [\"hello\"]\n");
        assert!(
            e.contains("1:8: error: template `other` is declared in `tiny.toml`"),
            "{e}"
        );
    }

    #[test]
    fn the_suite_must_come_from_some_mirror() {
        let e = only_error(
            "name = \"tiny\"\nsuite = \"bookworm\"\npackages = [\"hello\"]\n[[mirror]]\nurl = \"http://m/debian\"\nsuites = [\"trixie\"]\n",
        );
        assert!(
            e.contains("2:9: error: suite `bookworm` is taken from none of the mirrors"),
            "{e}"
        );
    }

    #[test]
    fn the_hash_ignores_comments_and_package_order_but_not_packages() {
        let a = parse(GOOD).unwrap();
        let reordered = GOOD.replace("[\"hello\", \"tmux\"]", "[\"tmux\", \"hello\"] # same");
        assert_eq!(a.hash(), parse(&reordered).unwrap().hash());
        let more = GOOD.replace("[\"hello\", \"tmux\"]", "[\"hello\", \"tmux\", \"git\"]");
        assert_ne!(a.hash(), parse(&more).unwrap().hash());
    }

    #[test]
    fn a_user_declaration_overrides_the_shipped_one_of_the_same_name() {
        let shipped = tempfile::tempdir().unwrap();
        let user = tempfile::tempdir().unwrap();
        std::fs::write(shipped.path().join("tiny.toml"), GOOD).unwrap();
        std::fs::write(
            user.path().join("tiny.toml"),
            "name = \"tiny\"\nsuite = \"bookworm\"\npackages = [\"nano\"]\n",
        )
        .unwrap();
        std::fs::write(shipped.path().join("README"), "not a declaration").unwrap();
        let dirs = [
            shipped.path().to_path_buf(),
            user.path().to_path_buf(),
            "/nonexistent".into(),
        ];
        let catalog = Catalog::load(&dirs).unwrap();
        assert_eq!(catalog.get("tiny").unwrap().packages, ["nano"]);
        let err = catalog.require("tinny", &dirs).unwrap_err().to_string();
        assert!(err.contains("did you mean `tiny`?"), "{err}");
    }

    #[test]
    fn a_bad_file_fails_the_load_with_its_location() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tiny.toml"), "name = \"tiny\"\nsuite = 3\n").unwrap();
        let err = Catalog::load(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        let file = dir.path().join("tiny.toml");
        assert!(
            err.starts_with(&format!("{}:2:9: error:", file.display())),
            "{err}"
        );
    }
}
