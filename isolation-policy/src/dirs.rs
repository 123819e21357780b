//! Where the policy lives.

use std::env;
use std::path::{Path, PathBuf};

/// System-wide policy installed by the package.
pub const SYSTEM_DIR: &str = "/etc/bulkhead";

/// The policy directory to use: `$BULKHEAD_POLICY_DIR`; else `$XDG_CONFIG_HOME/bulkhead`
/// (or `~/.config/bulkhead`) if it exists; else `/etc/bulkhead` if it exists; else the
/// source tree's `assets/policy` (running from a checkout).
pub fn default_policy_dir() -> PathBuf {
    resolve(
        env::var_os("BULKHEAD_POLICY_DIR").map(PathBuf::from),
        user_dir(),
        Path::new(SYSTEM_DIR),
    )
}

/// The user's own copy: `$XDG_CONFIG_HOME/bulkhead` or `~/.config/bulkhead`.
pub fn user_dir() -> Option<PathBuf> {
    let config = env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("bulkhead"))
}

/// Where the policy editor saves: `$BULKHEAD_POLICY_DIR` if set (the user chose that
/// directory), else the user's config directory, never the installed (`/etc/bulkhead`)
/// or source-tree defaults it may have been read from (they are copied there on the
/// first save). `None` without `$HOME`.
pub fn policy_save_dir() -> Option<PathBuf> {
    env::var_os("BULKHEAD_POLICY_DIR")
        .map(PathBuf::from)
        .or_else(user_dir)
}

/// The defaults shipped in this source tree.
pub fn source_tree_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy")
}

fn resolve(explicit: Option<PathBuf>, user: Option<PathBuf>, system: &Path) -> PathBuf {
    if let Some(dir) = explicit {
        return dir;
    }
    if let Some(dir) = user.filter(|d| d.is_dir()) {
        return dir;
    }
    if system.is_dir() {
        return system.to_path_buf();
    }
    source_tree_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dir_wins_even_if_missing() {
        let d = resolve(Some("/nope".into()), Some("/tmp".into()), Path::new("/"));
        assert_eq!(d, PathBuf::from("/nope"));
    }

    #[test]
    fn existing_user_dir_beats_system_dir() {
        let user = tempfile::tempdir().unwrap();
        let d = resolve(None, Some(user.path().into()), Path::new("/"));
        assert_eq!(d, user.path());
    }

    #[test]
    fn missing_user_and_system_dirs_fall_back_to_the_source_tree() {
        let d = resolve(
            None,
            Some("/nonexistent-user".into()),
            Path::new("/nonexistent-etc"),
        );
        assert_eq!(d, source_tree_dir());
        assert!(d.join("partitions.toml").exists());
    }
}
