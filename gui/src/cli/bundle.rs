//! `bulkhead export NAME FILE` and `bulkhead import FILE [--name NEW]`: the terminal's face
//! of [`bulkhead::bundle`] (the app's Export… / Import… dialogs are the other). This file
//! only reads the arguments and the passphrase and draws the progress with `indicatif`
//! (on a terminal; nothing when stderr is not one).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use age::secrecy::SecretString;
use bulkhead::bundle::{
    check_passphrase, import as import_bundle, ExportPlan, ExportRequest, ImportRequest, Progress,
    TransferError,
};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The partition to export (it must be stopped).
    pub name: String,
    /// The bundle to write (not overwritten if it exists).
    pub file: PathBuf,
    /// Also carry the template's root image, for a machine that cannot build it.
    #[arg(long)]
    pub with_template: bool,
    /// Read the passphrase from the first line of this file instead of asking.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Policy directory (default: $BULKHEAD_POLICY_DIR, ~/.config/bulkhead, /etc/bulkhead).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The bundle to import.
    pub file: PathBuf,
    /// Import under this name (needed when the bundle's name is taken here).
    #[arg(long)]
    pub name: Option<String>,
    /// Read the passphrase from the first line of this file instead of asking.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Policy directory to add the partition to (default: your own, ~/.config/bulkhead,
    /// made from the installed defaults if it does not exist yet).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn export(args: ExportArgs) -> ExitCode {
    report(do_export(&args))
}

pub fn import(args: ImportArgs) -> ExitCode {
    report(do_import(&args))
}

fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bulkhead: {e}");
            ExitCode::from(1)
        }
    }
}

fn passphrase(file: Option<&Path>, confirm: bool) -> Result<SecretString, String> {
    match file {
        Some(path) => {
            let text = fs::read_to_string(path)
                .map_err(|e| format!("reading the passphrase from {}: {e}", path.display()))?;
            check_passphrase(text.lines().next().unwrap_or(""), None)
        }
        None => {
            let first = rpassword::prompt_password("Passphrase: ")
                .map_err(|e| format!("cannot ask for a passphrase ({e}): use --passphrase-file"))?;
            let again = if confirm {
                Some(
                    rpassword::prompt_password("Passphrase again: ")
                        .map_err(|e| format!("cannot ask for a passphrase: {e}"))?,
                )
            } else {
                None
            };
            check_passphrase(&first, again.as_deref())
        }
    }
}

/// A progress bar on stderr (hidden by `indicatif` when stderr is not a terminal), fed by
/// the shared export/import's [`Progress`].
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn feed(bar: &indicatif::ProgressBar) -> impl FnMut(Progress) + '_ {
    move |p: Progress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(p.stage);
    }
}

fn do_export(args: &ExportArgs) -> Result<String, String> {
    let plan = ExportPlan::new(&ExportRequest {
        name: args.name.clone(),
        file: args.file.clone(),
        with_template: args.with_template,
        policy_dir: args.dir.clone(),
        save_running: None,
    })?;
    // Asked only once the export is known to be possible.
    let pass = passphrase(args.passphrase_file.as_deref(), true)?;
    let bar = progress_bar();
    let result = plan.write(pass, &mut feed(&bar));
    bar.finish_and_clear();
    result
}

fn do_import(args: &ImportArgs) -> Result<String, String> {
    let pass = passphrase(args.passphrase_file.as_deref(), false)?;
    let bar = progress_bar();
    let req = ImportRequest {
        file: args.file.clone(),
        name: args.name.clone(),
        policy_dir: args.dir.clone(),
    };
    let result = import_bundle(&req, pass, &mut feed(&bar));
    bar.finish_and_clear();
    result.map_err(|e| match e {
        TransferError::NameTaken {
            why, suggestion, ..
        } => format!("{why}: import under another name with --name NEW (e.g. --name {suggestion})"),
        TransferError::Failed(e) => e,
    })
}
