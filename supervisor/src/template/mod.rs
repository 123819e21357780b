//! Templates: read-only root filesystems built from Debian packages with `mmdebstrap`,
//! shared by the partitions that boot from them.
//!
//! - [`declaration`]: what a template is made of, declared in TOML (`name`, `suite`,
//!   `variant`, `[[mirror]]`s, `packages`). Shipped declarations live in
//!   `/usr/share/bulkhead/templates/` (the source tree's `assets/templates/` when running
//!   from a checkout); `$XDG_CONFIG_HOME/bulkhead/templates/` adds or overrides by name.
//! - [`store`]: [`TemplateStore`] over `$XDG_DATA_HOME/bulkhead/templates/<name>/`
//!   holding `root.sqfs` (squashfs, zstd) and `manifest.json`.
//! - [`build`]: `mmdebstrap … | tar2sqfs` into a staging directory next to the target,
//!   then an atomic exchange; the store's lock keeps two builds from racing, and a failed
//!   or interrupted build leaves the previous template as it was.
//! - [`manifest`]: packages with versions, image size and sha256, build date, duration,
//!   mode and the declaration's hash (so a rebuild of an unchanged declaration is a no-op).

pub mod build;
pub mod declaration;
pub mod manifest;
pub mod store;

#[cfg(test)]
mod real_build_test;

use std::path::{Path, PathBuf};

pub use build::{
    choose_mode, BuildMode, BuildOptions, BuildOutcome, BuildProgress, HostFacts,
    DEFAULT_BUILD_TIMEOUT,
};
pub use declaration::{Catalog, Declaration, DeclarationError, Mirror};
pub use manifest::{Manifest, PackageVersion};
pub use store::{Freshness, InstalledTemplate, TemplateStore};

/// The template the default partitions boot from.
pub const DEFAULT_TEMPLATE: &str = "debian-12";

/// Where the package installs the shipped declarations.
pub const SYSTEM_DECLARATION_DIR: &str = "/usr/share/bulkhead/templates";

/// Everything that can go wrong with the store or a build.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Declaration(#[from] DeclarationError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{tool}` not found in PATH: templates are built with it; install it (on Debian or Ubuntu: sudo apt-get install {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("cannot build templates on this host: {reason}")]
    NoBuildMode { reason: String },
    #[error("`{command}` failed ({status}): {detail}")]
    StepFailed {
        command: String,
        status: String,
        detail: String,
    },
    #[error("`{command}` took longer than {limit_secs} s and was stopped (a mirror not answering?); raise the limit with --timeout if the network is just slow")]
    TimedOut { command: String, limit_secs: u64 },
    #[error("the build was interrupted; the previous template (if any) is unchanged")]
    Interrupted,
    #[error("manifest {path} is unreadable: {detail}; rebuild the template (bulkhead template build --force)")]
    BadManifest { path: PathBuf, detail: String },
    #[error("template `{name}` is not installed in {store}")]
    NotInstalled { name: String, store: PathBuf },
    #[error("template name `{name}` is not valid: use 1-63 lowercase letters, digits, `.`, `-` or `_`, starting with a letter or digit")]
    BadName { name: String },
    #[error(
        "the build produced no package list at {path}; mmdebstrap's customize hook did not run"
    )]
    NoPackageList { path: PathBuf },
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> TemplateError + 'a {
    move |source| TemplateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A template name is a directory name in the store: 1-63 of `[a-z0-9._-]`, starting with
/// a letter or digit (so never `.`, `..` or a hidden staging directory).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 63
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// `$XDG_DATA_HOME/bulkhead/templates`, or `~/.local/share/bulkhead/templates`.
pub fn default_store_root() -> PathBuf {
    store_root_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

fn store_root_from(xdg: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> PathBuf {
    crate::private_disk::data_root_from(xdg, home).join("templates")
}

/// Where template `name`'s root image is (or would be) in the default store; for tools
/// and tests (a partition start goes through [`TemplateStore::installed`]).
pub fn default_image_path(name: &str) -> PathBuf {
    default_store_root().join(name).join(store::IMAGE_FILE)
}

/// Where downloaded `.deb`s are kept between builds: `$XDG_CACHE_HOME/bulkhead/apt-archives`.
pub fn default_apt_cache() -> PathBuf {
    crate::guest_image::cache_root().join("apt-archives")
}

/// The shipped declarations: `/usr/share/bulkhead/templates` if installed, else the
/// source tree's `assets/templates` (running from a checkout).
pub fn shipped_declaration_dir() -> PathBuf {
    let system = Path::new(SYSTEM_DECLARATION_DIR);
    if system.is_dir() {
        return system.to_path_buf();
    }
    source_tree_declaration_dir()
}

/// `assets/templates` in this source tree.
pub fn source_tree_declaration_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/templates");
    dir.canonicalize().unwrap_or(dir)
}

/// The user's declarations: `$XDG_CONFIG_HOME/bulkhead/templates` (or `~/.config/…`).
pub fn user_declaration_dir() -> Option<PathBuf> {
    isolation_policy::dirs::user_dir().map(|d| d.join("templates"))
}

/// The directories [`Catalog::load_default`] reads, lowest precedence first.
pub fn declaration_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![shipped_declaration_dir()];
    dirs.extend(user_declaration_dir());
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_root_follows_xdg_data_home_then_home() {
        assert_eq!(
            store_root_from(Some("/x/data".into()), Some("/home/u".into())),
            PathBuf::from("/x/data/bulkhead/templates")
        );
        assert_eq!(
            store_root_from(Some("relative".into()), Some("/home/u".into())),
            PathBuf::from("/home/u/.local/share/bulkhead/templates")
        );
        assert_eq!(
            store_root_from(None, Some("/home/u".into())),
            PathBuf::from("/home/u/.local/share/bulkhead/templates")
        );
    }

    #[test]
    fn template_names_are_plain_directory_names() {
        for good in ["debian-12", "a", "work_2", "v1.2"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".build",
            "-x",
            "A",
            "a/b",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
