//! `bulkhead man DIR`: write the man pages (roff) generated from the CLI definition.
//!
//! Packaging runs this on the release binary, so the pages always match the binary that
//! ships: `bulkhead.1` plus one page per visible subcommand (`bulkhead-policy-check.1`, …),
//! the naming `git` and `cargo` use.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

/// Manual section for user commands.
const SECTION: &str = "1";

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into; created if missing.
    pub out_dir: PathBuf,
    /// Date printed in the pages' footer (packaging passes the changelog's date, so
    /// rebuilding gives the same bytes). Default: today, UTC, as YYYY-MM-DD.
    #[arg(long)]
    pub date: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManError {
    #[error("cannot create man page directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write man page {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn run(args: ManArgs) -> ExitCode {
    let date = args.date.unwrap_or_else(today_utc);
    match write_pages(&args.out_dir, &date) {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("bulkhead man: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes one page for `bulkhead` and one per visible subcommand, at any depth.
/// Returns the written paths, parents before children.
pub fn write_pages(out_dir: &Path, date: &str) -> Result<Vec<PathBuf>, ManError> {
    std::fs::create_dir_all(out_dir).map_err(|source| ManError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    // `help` as a subcommand would get a page of its own; `--help` is documented instead.
    let mut cmd = crate::cli::Cli::command().disable_help_subcommand(true);
    // Building fills in each subcommand's display name ("bulkhead-policy-check"),
    // which names both the page and the file.
    cmd.build();
    let mut written = Vec::new();
    write_tree(&cmd, out_dir, date, &mut written)?;
    Ok(written)
}

fn write_tree(
    cmd: &clap::Command,
    out_dir: &Path,
    date: &str,
    written: &mut Vec<PathBuf>,
) -> Result<(), ManError> {
    written.push(write_page(cmd, out_dir, date)?);
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_tree(sub, out_dir, date, written)?;
    }
    Ok(())
}

fn write_page(cmd: &clap::Command, out_dir: &Path, date: &str) -> Result<PathBuf, ManError> {
    // The date must not be empty: roff drops an empty .TH argument, which shifts the
    // source and manual names into the wrong fields.
    let man = clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .date(date)
        .manual("Bulkhead Manual")
        .source(format!("Bulkhead {}", env!("CARGO_PKG_VERSION")));
    let path = out_dir.join(man.get_filename());
    let mut roff = Vec::new();
    man.render(&mut roff)
        .and_then(|()| std::fs::File::create(&path))
        .and_then(|mut file| file.write_all(&roff))
        .map_err(|source| ManError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    bulkhead_supervisor::template::manifest::civil_date(secs / 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_a_page_for_bulkhead_and_each_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(dir.path(), "2026-11-26").unwrap();

        let names = page_names(dir.path());
        assert_eq!(names.len(), written.len());
        assert!(names.contains(&"bulkhead.1".to_string()));
        for sub in crate::cli::Cli::command()
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set())
        {
            let expected = format!("bulkhead-{}.1", sub.get_name());
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn hidden_man_subcommand_and_help_get_no_page() {
        let dir = tempfile::tempdir().unwrap();
        write_pages(dir.path(), "2026-11-26").unwrap();

        let names = page_names(dir.path());
        assert!(!names.contains(&"bulkhead-man.1".to_string()));
        assert!(
            !names.iter().any(|name| name.ends_with("-help.1")),
            "{names:?}"
        );
    }

    #[test]
    fn main_page_is_roff_titled_bulkhead_and_lists_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        write_pages(dir.path(), "2026-11-26").unwrap();

        let page = std::fs::read_to_string(dir.path().join("bulkhead.1")).unwrap();
        assert!(
            page.starts_with(".ie \\n(.g .ds Aq"),
            "not roff: {page:.80}"
        );
        let title = page.lines().find(|line| line.starts_with(".TH ")).unwrap();
        // Every .TH field in its place: name, section, date, source, manual.
        assert!(title.starts_with(".TH bulkhead 1 2026"), "{title}");
        let source = format!("\"Bulkhead {}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            title.ends_with(&format!("{source} \"Bulkhead Manual\"")),
            "{title}"
        );
        assert!(page.contains("bulkhead\\-policy(1)"), "{page}");
        assert!(page.contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn template_build_page_says_where_declarations_images_and_packages_live() {
        let dir = tempfile::tempdir().unwrap();
        write_pages(dir.path(), "2026-11-26").unwrap();

        for sub in ["build", "list", "remove"] {
            let page = dir.path().join(format!("bulkhead-template-{sub}.1"));
            assert!(page.exists(), "{} missing", page.display());
        }
        let page = std::fs::read_to_string(dir.path().join("bulkhead-template-build.1")).unwrap();
        for needle in [
            "/usr/share/bulkhead/templates/NAME.toml",
            "bulkhead/templates/NAME/",
            "apt\\-archives",
            "\\-\\-force",
        ] {
            assert!(page.contains(needle), "{needle} missing from {page}");
        }
    }

    #[test]
    fn civil_date_converts_days_since_the_epoch() {
        use bulkhead_supervisor::template::manifest::civil_date;
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_418), "2025-11-26");
    }

    #[test]
    fn unwritable_directory_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"file").unwrap();

        let err = write_pages(&blocker.join("man1"), "2026-11-26").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("not-a-dir/man1"), "{message}");
        assert!(matches!(err, ManError::CreateDir { .. }));
    }
}
