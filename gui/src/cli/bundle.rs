//! `bulkhead export NAME FILE` and `bulkhead import FILE [--name NEW]`: a partition moved
//! to another machine as one encrypted bundle ([`bulkhead_supervisor::bundle`]): its
//! config, the rules that name it, its private disk, its template's name and manifest
//! hash (and, on request, the template itself).
//!
//! Import checks everything before it writes anything: the bundle is unpacked and verified
//! in a staging directory beside the partitions, the config and rules are validated
//! together with the user's policy, and only then are the disk moved and the policy saved.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use age::secrecy::SecretString;
use bulkhead_supervisor::bundle::{self, BundleWriter, Unpacked};
use bulkhead_supervisor::private_disk::{data_root, private_disk_path};
use bulkhead_supervisor::template::{self, manifest::file_digest, store};
use isolation_policy::PolicyDocument;
use serde::{Deserialize, Serialize};

const META: &str = "bundle.json";
const PARTITION: &str = "partition.toml";
const RULES: &str = "rules.policy";
const DISK: &str = "private.img";
const TEMPLATE_IMAGE: &str = "template/root.sqfs";
const TEMPLATE_MANIFEST: &str = "template/manifest.json";
/// Imported rules go after the shipped vault rules (30-) and before the defaults (50-),
/// so they take effect; they are printed for the user to review.
const IMPORTED_RULES_PREFIX: &str = "45-imported-";

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

/// What a bundle says about itself.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    partition: String,
    exported_at: String,
    bulkhead_version: String,
    template: Option<TemplateRef>,
    private_disk: bool,
    rules: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct TemplateRef {
    name: String,
    /// SHA-256 of the template's manifest.json where it was exported, if installed there.
    manifest_sha256: Option<String>,
    included: bool,
}

const META_FORMAT: u32 = 1;

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
    let text = match file {
        Some(path) => fs::read_to_string(path)
            .map_err(|e| format!("reading the passphrase from {}: {e}", path.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        None => {
            let first = rpassword::prompt_password("Passphrase: ")
                .map_err(|e| format!("cannot ask for a passphrase ({e}): use --passphrase-file"))?;
            if confirm {
                let again = rpassword::prompt_password("Passphrase again: ")
                    .map_err(|e| format!("cannot ask for a passphrase: {e}"))?;
                if again != first {
                    return Err("the passphrases differ; nothing was written".into());
                }
            }
            first
        }
    };
    if text.is_empty() {
        return Err("an empty passphrase is not allowed".into());
    }
    Ok(SecretString::from(text))
}

fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn do_export(args: &ExportArgs) -> Result<String, String> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(isolation_policy::default_policy_dir);
    let doc = PolicyDocument::load(&dir).map_err(|e| e.to_string())?;
    let policy = doc.policy().ok_or_else(|| {
        format!(
            "the policy in {} has errors; fix them first:\n{}",
            dir.display(),
            doc.report()
        )
    })?;
    let name = args.name.as_str();
    let spec = policy.spec(name).ok_or_else(|| {
        format!(
            "no partition `{name}` in {} (there are: {})",
            dir.display(),
            doc.partition_names().join(", ")
        )
    })?;
    if let Some(p) = bulkhead_supervisor::usage::partition_processes()
        .iter()
        .find(|p| p.name == name)
    {
        return Err(format!(
            "`{name}` is running (pid {}): stop it first (exporting a running partition's state is not supported yet)",
            p.pid
        ));
    }
    if args.file.exists() {
        return Err(format!(
            "{} exists: choose another file name",
            args.file.display()
        ));
    }
    let snippet = doc.partition_snippet(name).map_err(|e| e.to_string())?;
    let rules = doc.rules_naming(name);
    let mut rules_text = format!("# Rules that named `{name}` where it was exported.\n");
    for r in &rules {
        rules_text.push_str(&format!("{r}\n"));
    }
    let disk = private_disk_path(name);
    let disk = disk.exists().then_some(disk);
    let template = spec.template.as_ref().map(|t| {
        let dir = template::default_store_root().join(t);
        let manifest = dir.join(store::MANIFEST_FILE);
        TemplateRef {
            name: t.clone(),
            manifest_sha256: file_digest(&manifest).ok().map(|(_, h)| h),
            included: args.with_template,
        }
    });
    let template_dir = spec
        .template
        .as_ref()
        .map(|t| template::default_store_root().join(t));
    if args.with_template {
        let dir = template_dir
            .as_ref()
            .ok_or_else(|| format!("`{name}` has no template to include"))?;
        if !dir.join(store::IMAGE_FILE).is_file() {
            return Err(format!(
                "template not installed at {}: build it first",
                dir.display()
            ));
        }
    }
    let meta = Meta {
        format: META_FORMAT,
        partition: name.to_string(),
        exported_at: template::manifest::now_utc(),
        bulkhead_version: env!("CARGO_PKG_VERSION").to_string(),
        template,
        private_disk: disk.is_some(),
        rules: rules.len(),
    };
    let pass = passphrase(args.passphrase_file.as_deref(), true)?;
    let meta_json = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
    let mut w = BundleWriter::create(&args.file, pass, None).map_err(|e| e.to_string())?;
    w.add_bytes(META, &meta_json).map_err(|e| e.to_string())?;
    w.add_bytes(PARTITION, snippet.as_bytes())
        .map_err(|e| e.to_string())?;
    w.add_bytes(RULES, rules_text.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut files: Vec<(&str, PathBuf)> = Vec::new();
    if let Some(disk) = &disk {
        files.push((DISK, disk.clone()));
    }
    if let (true, Some(dir)) = (args.with_template, &template_dir) {
        files.push((TEMPLATE_MANIFEST, dir.join(store::MANIFEST_FILE)));
        files.push((TEMPLATE_IMAGE, dir.join(store::IMAGE_FILE)));
    }
    for (entry, path) in &files {
        let allocated = allocated_bytes(path);
        let bar = progress_bar(allocated, entry);
        w.add_file(entry, path, &mut |n| bar.set_position(n))
            .map_err(|e| e.to_string())?;
        bar.finish_and_clear();
    }
    let written = w.finish().map_err(|e| e.to_string())?;
    let size = fs::metadata(&written).map(|m| m.len()).unwrap_or(0);
    Ok(format!(
        "exported `{name}` to {} ({} MiB; {}, {} rule(s){})",
        written.display(),
        size >> 20,
        if meta.private_disk {
            "with its private disk"
        } else {
            "no private disk yet"
        },
        meta.rules,
        if args.with_template {
            ", with its template"
        } else {
            ""
        }
    ))
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// The policy directory import writes to: the user's own, never the installed or
/// source-tree defaults (which are copied there first if it does not exist yet).
fn user_policy_dir(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    let user = isolation_policy::dirs::user_dir()
        .ok_or("no home directory to keep your policy in (set HOME or XDG_CONFIG_HOME)")?;
    if !user.is_dir() {
        let defaults = isolation_policy::default_policy_dir();
        copy_policy_dir(&defaults, &user).map_err(|e| {
            format!(
                "copying the default policy {} to {}: {e}",
                defaults.display(),
                user.display()
            )
        })?;
    }
    Ok(user)
}

fn copy_policy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    let rules = to.join("policy.d");
    fs::create_dir_all(&rules)?;
    fs::copy(from.join("partitions.toml"), to.join("partitions.toml"))?;
    if let Ok(entries) = fs::read_dir(from.join("policy.d")) {
        for e in entries.flatten() {
            if e.path().is_file() {
                fs::copy(e.path(), rules.join(e.file_name()))?;
            }
        }
    }
    Ok(())
}

fn do_import(args: &ImportArgs) -> Result<String, String> {
    let pass = passphrase(args.passphrase_file.as_deref(), false)?;
    let staging_parent = data_root().join("partitions");
    let size = fs::metadata(&args.file)
        .map_err(|e| format!("{}: {e}", args.file.display()))?
        .len();
    let bar = indicatif::ProgressBar::no_length();
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bytes} ({bytes_per_sec}) of a {len} bundle")
    {
        bar.set_style(style);
    }
    bar.set_message("unpacking");
    bar.set_length(size);
    let unpacked = bundle::unpack(&args.file, pass, &staging_parent, &mut |n| {
        bar.set_position(n)
    });
    bar.finish_and_clear();
    let unpacked = unpacked.map_err(|e| e.to_string())?;
    let plan = plan_import(args, &unpacked)?;
    commit_import(plan, &unpacked)
}

/// Everything an import will do, checked, before anything is written.
struct ImportPlan {
    name: String,
    doc: PolicyDocument,
    rules_file: Option<String>,
    disk_to: Option<PathBuf>,
    template_to: Option<PathBuf>,
    notes: Vec<String>,
}

fn plan_import(args: &ImportArgs, unpacked: &Unpacked) -> Result<ImportPlan, String> {
    let text = |entry: &str| -> Result<String, String> {
        unpacked
            .text(entry)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!("the bundle has no {entry}: it was not made by `bulkhead export`")
            })
    };
    let meta: Meta = serde_json::from_str(&text(META)?)
        .map_err(|e| format!("the bundle's {META} is not valid: {e}"))?;
    if meta.format != META_FORMAT {
        return Err(format!(
            "the bundle's metadata is format {}; this Bulkhead reads {META_FORMAT}",
            meta.format
        ));
    }
    let old = meta.partition.as_str();
    let name = args.name.clone().unwrap_or_else(|| old.to_string());
    let dir = user_policy_dir(args.dir.as_deref())?;
    let mut doc = PolicyDocument::load(&dir).map_err(|e| e.to_string())?;
    if doc.partition_names().contains(&name) {
        return Err(format!(
            "a partition named `{name}` exists in {}: import under another name with --name NEW",
            dir.display()
        ));
    }
    let disk_to = private_disk_path(&name);
    let disk_dir = disk_to.parent().map(Path::to_path_buf).unwrap_or_default();
    if disk_dir.exists() {
        return Err(format!(
            "{} exists (a partition `{name}` lived here before): import under another name with --name NEW, or remove it",
            disk_dir.display()
        ));
    }
    doc.insert_partition_snippet(&name, &text(PARTITION)?)
        .map_err(|e| format!("the bundle's partition config: {e}"))?;
    let rules = renamed_rules(&text(RULES)?, old, &name)?;
    let rules_file = if rules.is_empty() {
        None
    } else {
        let file = format!("{IMPORTED_RULES_PREFIX}{name}.policy");
        if doc.rule_files().iter().any(|f| f.name == file) {
            return Err(format!(
                "{} exists: remove it or import under another name",
                doc.rule_file_path(&file).display()
            ));
        }
        let body = format!(
            "# Imported with `{name}` from a bundle exported at {}; review before use.\n{rules}",
            meta.exported_at
        );
        doc.set_rule_file_text(&file, &body)
            .map_err(|e| e.to_string())?;
        Some(file)
    };
    if doc.report().has_errors() {
        return Err(format!(
            "the imported partition does not fit this policy; nothing was written:\n{}",
            doc.report()
        ));
    }
    let mut notes = Vec::new();
    let mut template_to = None;
    if let Some(t) = &meta.template {
        if !template::valid_name(&t.name) {
            return Err(format!("the bundle names template {:?}", t.name));
        }
        let dir = template::default_store_root().join(&t.name);
        let installed = dir.join(store::MANIFEST_FILE);
        match file_digest(&installed) {
            Ok((_, here)) if Some(&here) != t.manifest_sha256.as_ref() => notes.push(format!(
                "template `{}` here differs from the exporter's (its packages may differ)",
                t.name
            )),
            Ok(_) => {}
            Err(_) if t.included => template_to = Some(dir),
            Err(_) => notes.push(format!(
                "template `{}` is not installed: build it with `bulkhead template build {}` before starting `{name}`",
                t.name, t.name
            )),
        }
        if template_to.is_some()
            && (unpacked.path(TEMPLATE_IMAGE).is_none()
                || unpacked.path(TEMPLATE_MANIFEST).is_none())
        {
            return Err("the bundle says it carries its template but does not".into());
        }
    }
    let disk = unpacked.path(DISK).is_some();
    if disk != meta.private_disk {
        return Err("the bundle's private disk does not match its metadata".into());
    }
    Ok(ImportPlan {
        name,
        doc,
        rules_file,
        disk_to: disk.then_some(disk_to),
        template_to,
        notes,
    })
}

fn renamed_rules(text: &str, old: &str, new: &str) -> Result<String, String> {
    let (rules, diags) = isolation_policy::rules::parse_rules(Path::new(RULES), text);
    if let Some(d) = diags.first() {
        return Err(format!("the bundle's rules: {d}"));
    }
    Ok(rules
        .iter()
        .map(|r| format!("{}\n", r.renamed(old, new)))
        .collect())
}

fn commit_import(mut plan: ImportPlan, unpacked: &Unpacked) -> Result<String, String> {
    let name = plan.name.clone();
    if let Some(dir) = &plan.template_to {
        install_template(unpacked, dir)?;
        plan.notes
            .push(format!("installed its template in {}", dir.display()));
    }
    // A failed step undoes the earlier ones, so a failed import leaves nothing behind.
    let undo_template = |plan: &ImportPlan| {
        if let Some(dir) = &plan.template_to {
            let _ = fs::remove_dir_all(dir);
        }
    };
    if let (Some(to), Some(from)) = (&plan.disk_to, unpacked.path(DISK)) {
        let dir = to.parent().unwrap_or(Path::new("."));
        let moved = fs::create_dir_all(dir)
            .and_then(|()| fs::rename(from, to))
            .map_err(|e| format!("moving the disk to {}: {e}", to.display()));
        if let Err(e) = moved {
            let _ = fs::remove_dir(dir);
            undo_template(&plan);
            return Err(e);
        }
    }
    if let Err(e) = plan.doc.save() {
        if let Some(to) = &plan.disk_to {
            let _ = fs::remove_file(to);
            let _ = to.parent().map(fs::remove_dir);
        }
        undo_template(&plan);
        return Err(e.to_string());
    }
    let mut summary = format!("imported `{name}` into {}", plan.doc.dir().display());
    if let Some(file) = &plan.rules_file {
        summary.push_str(&format!(
            "\nits rules are in {} — review them:",
            plan.doc.rule_file_path(file).display()
        ));
        if let Some(f) = plan.doc.rule_files().iter().find(|f| &f.name == file) {
            for line in f.text.lines().filter(|l| !l.starts_with('#')) {
                summary.push_str(&format!("\n  {line}"));
            }
        }
    }
    for note in &plan.notes {
        summary.push_str(&format!("\nnote: {note}"));
    }
    Ok(summary)
}

fn install_template(unpacked: &Unpacked, dir: &Path) -> Result<(), String> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let staging = parent.join(format!(".import-template-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        fs::create_dir_all(&staging)?;
        for (entry, file) in [
            (TEMPLATE_IMAGE, store::IMAGE_FILE),
            (TEMPLATE_MANIFEST, store::MANIFEST_FILE),
        ] {
            if let Some(from) = unpacked.path(entry) {
                let to = staging.join(file);
                // Same file system as the staging area in the usual layout; else a copy.
                if fs::rename(from, &to).is_err() {
                    fs::copy(from, &to)?;
                }
            }
        }
        fs::rename(&staging, dir)
    })();
    result.map_err(|e| {
        let _ = fs::remove_dir_all(&staging);
        format!("installing the template in {}: {e}", dir.display())
    })
}
