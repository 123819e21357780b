//! Export and import of partition bundles, shared by `bulkhead export`/`import` and the
//! app's Export… / Import… dialogs: a partition moved to another machine as one encrypted
//! bundle ([`bulkhead_supervisor::bundle`]): its config, the rules that name it, its
//! private disk, its template's name and manifest hash (and, on request, the template
//! itself).
//!
//! Both take the passphrase and a progress callback ([`Progress`]: bytes done of a total);
//! asking for the passphrase and drawing the progress are the caller's (a terminal with
//! `indicatif`, or the app's dialog on a background thread, [`Job`]).
//!
//! Import checks everything before it writes anything: the bundle is unpacked and verified
//! in a staging directory beside the partitions, the config and rules are validated
//! together with the user's policy, and only then are the disk moved and the policy saved
//! (undoing the earlier steps if a later one fails).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use age::secrecy::SecretString;
use bulkhead_supervisor::bundle::{self, BundleWriter, UnpackProgress, Unpacked};
use bulkhead_supervisor::launch::PRIVATE_DISK_ID;
use bulkhead_supervisor::private_disk::{data_root, private_disk_path};
use bulkhead_supervisor::saved_state::{memory_mtime, resume_dir, set_memory_mtime, SavedState};
use bulkhead_supervisor::template::{self, manifest::file_digest, store};
use isolation_policy::PolicyDocument;
use serde::{Deserialize, Serialize};
use vmm_core::snapshot::{MEMORY_FILE, STATE_FILE};

const META: &str = "bundle.json";
const PARTITION: &str = "partition.toml";
const RULES: &str = "rules.policy";
const DISK: &str = "private.img";
const TEMPLATE_IMAGE: &str = "template/root.sqfs";
const TEMPLATE_MANIFEST: &str = "template/manifest.json";
/// A running partition's saved state ([`bulkhead_supervisor::saved_state`]); its
/// private disk, copied while the guest was paused, is [`DISK`].
const SAVED_STATE: &str = "state/state";
const SAVED_MEMORY: &str = "state/memory";
/// Imported rules go after the shipped vault rules (30-) and before the defaults (50-),
/// so they take effect; they are printed for the user to review.
const IMPORTED_RULES_PREFIX: &str = "45-imported-";

/// How far an export or import is: `done` of `total` bytes in its current `stage`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// What is being done: "private.img", "unpacking", "saving".
    pub stage: String,
    pub done: u64,
    pub total: u64,
}

impl Progress {
    /// Done as a fraction in 0..=1 (0 for an empty total).
    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            0.0
        } else {
            (self.done.min(self.total) as f64 / self.total as f64) as f32
        }
    }
}

/// The passphrase as typed (and, for an export, typed again): refused when empty or when
/// the two differ.
pub fn check_passphrase(first: &str, again: Option<&str>) -> Result<SecretString, String> {
    if first.is_empty() {
        return Err("an empty passphrase is not allowed".into());
    }
    if again.is_some_and(|a| a != first) {
        return Err("the passphrases differ; nothing was written".into());
    }
    Ok(SecretString::from(first.to_string()))
}

/// Saves the running partition's state into a directory that must not exist yet (the
/// app's supervisor: [`bulkhead_supervisor::Supervisor::save_running`]).
#[derive(Clone)]
pub struct StateSaver(pub Arc<SaveFn>);

/// Saves into a directory; see [`StateSaver`].
pub type SaveFn = dyn Fn(&Path) -> Result<SavedState, String> + Send + Sync;

impl std::fmt::Debug for StateSaver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSaver")
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The partition: stopped, or running in this process with `save_running`.
    pub name: String,
    /// The bundle to write (never overwritten).
    pub file: PathBuf,
    /// Also carry the template's root image.
    pub with_template: bool,
    /// Policy directory; `None`: the default one (`default_policy_dir`).
    pub policy_dir: Option<PathBuf>,
    /// For a partition running in this process: how to save its state (pause, snapshot,
    /// disk copy, resume) into the bundle.
    pub save_running: Option<StateSaver>,
}

/// An export checked and ready to write (partition known and stopped, file free, template
/// installed if asked for); [`ExportPlan::write`] writes it.
pub struct ExportPlan {
    name: String,
    file: PathBuf,
    with_template: bool,
    meta: Meta,
    snippet: String,
    rules_text: String,
    files: Vec<(&'static str, PathBuf)>,
    /// Saves the running partition's state when the bundle is written.
    save_running: Option<StateSaver>,
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
    /// The bundle carries the running partition's state ([`SAVED_STATE`]): import makes
    /// the partition continue from it at its next start.
    #[serde(default)]
    saved_state: bool,
    /// The saved memory file's mtime (seconds, nanoseconds): the snapshot records it and
    /// a restore refuses a memory file whose mtime changed, so import sets it back (the
    /// bundle's checksums prove the content unchanged).
    #[serde(default)]
    saved_memory_mtime: Option<(i64, i64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TemplateRef {
    name: String,
    /// SHA-256 of the template's manifest.json where it was exported, if installed there.
    manifest_sha256: Option<String>,
    included: bool,
}

const META_FORMAT: u32 = 1;

impl ExportPlan {
    pub fn new(req: &ExportRequest) -> Result<ExportPlan, String> {
        let dir = req
            .policy_dir
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
        let name = req.name.as_str();
        let spec = policy.spec(name).ok_or_else(|| {
            format!(
                "no partition `{name}` in {} (there are: {})",
                dir.display(),
                doc.partition_names().join(", ")
            )
        })?;
        let running = bulkhead_supervisor::usage::partition_processes()
            .into_iter()
            .find(|p| p.name == name);
        if let (Some(p), None) = (&running, &req.save_running) {
            return Err(format!(
                "`{name}` is running (pid {}) in another Bulkhead process: export it with Export… in that window (its state goes with it), or stop it first",
                p.pid
            ));
        }
        // The app hands a saver only for a partition it runs.
        let save_running = req.save_running.clone();
        if req.file.exists() {
            return Err(format!(
                "{} exists: choose another file name",
                req.file.display()
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
        let template_dir = spec
            .template
            .as_ref()
            .map(|t| template::default_store_root().join(t));
        let template = spec
            .template
            .as_ref()
            .zip(template_dir.as_ref())
            .map(|(t, dir)| TemplateRef {
                name: t.clone(),
                manifest_sha256: file_digest(&dir.join(store::MANIFEST_FILE))
                    .ok()
                    .map(|(_, h)| h),
                included: req.with_template,
            });
        let mut files: Vec<(&'static str, PathBuf)> = Vec::new();
        if let Some(disk) = &disk {
            files.push((DISK, disk.clone()));
        }
        if req.with_template {
            let dir = template_dir
                .as_ref()
                .ok_or_else(|| format!("`{name}` has no template to include"))?;
            if !dir.join(store::IMAGE_FILE).is_file() {
                return Err(format!(
                    "template not installed at {}: build it first",
                    dir.display()
                ));
            }
            files.push((TEMPLATE_MANIFEST, dir.join(store::MANIFEST_FILE)));
            files.push((TEMPLATE_IMAGE, dir.join(store::IMAGE_FILE)));
        }
        let meta = Meta {
            format: META_FORMAT,
            partition: name.to_string(),
            exported_at: template::manifest::now_utc(),
            bulkhead_version: env!("CARGO_PKG_VERSION").to_string(),
            template,
            private_disk: disk.is_some(),
            rules: rules.len(),
            saved_state: save_running.is_some(),
            saved_memory_mtime: None,
        };
        Ok(ExportPlan {
            name: name.to_string(),
            file: req.file.clone(),
            with_template: req.with_template,
            meta,
            snippet,
            rules_text,
            files,
            save_running,
        })
    }

    /// The data bytes the export will copy (allocated bytes of its files), for progress.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, p)| allocated_bytes(p)).sum()
    }

    /// Writes the bundle (to `FILE.partial`, renamed when complete; removed on any error)
    /// and returns a one-paragraph summary.
    pub fn write(
        mut self,
        pass: SecretString,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<String, String> {
        let Some(save) = self.save_running.take() else {
            return self.write_files(pass, progress);
        };
        progress(Progress {
            stage: "saving its running state".into(),
            done: 0,
            total: 0,
        });
        // Beside the private disks, so the disk copy stays on their file system.
        let dir = data_root().join("partitions").join(format!(
            ".export-{}-{}",
            std::process::id(),
            self.name
        ));
        let _ = fs::remove_dir_all(&dir);
        let saved = (save.0)(&dir).map_err(|e| format!("saving `{}`'s state: {e}", self.name))?;
        let written = self
            .with_saved_state(&saved)
            .and_then(|plan| plan.write_files(pass, progress));
        let _ = fs::remove_dir_all(&dir);
        written
    }

    /// The plan carrying `saved` (its state, memory and private-disk copy) instead of the
    /// live private disk.
    fn with_saved_state(mut self, saved: &SavedState) -> Result<ExportPlan, String> {
        // The private disk as the saved guest knows it, never the live one.
        self.files.retain(|(entry, _)| *entry != DISK);
        let disk = saved.disks.iter().find(|(_, id)| id == PRIVATE_DISK_ID);
        if let Some((file, _)) = disk {
            self.files.push((DISK, saved.dir.join(file)));
        }
        self.files.push((SAVED_STATE, saved.dir.join(STATE_FILE)));
        self.files.push((SAVED_MEMORY, saved.dir.join(MEMORY_FILE)));
        self.meta.private_disk = disk.is_some();
        self.meta.saved_memory_mtime = Some(
            memory_mtime(&saved.dir).map_err(|e| format!("reading the saved memory file: {e}"))?,
        );
        Ok(self)
    }

    fn write_files(
        self,
        pass: SecretString,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<String, String> {
        let total = self.total_bytes();
        let meta_json = serde_json::to_vec_pretty(&self.meta).map_err(|e| e.to_string())?;
        let mut w = BundleWriter::create(&self.file, pass, None).map_err(|e| e.to_string())?;
        w.add_bytes(META, &meta_json).map_err(|e| e.to_string())?;
        w.add_bytes(PARTITION, self.snippet.as_bytes())
            .map_err(|e| e.to_string())?;
        w.add_bytes(RULES, self.rules_text.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut before = 0u64;
        for (entry, path) in &self.files {
            progress(Progress {
                stage: (*entry).to_string(),
                done: before,
                total,
            });
            let mut copied = 0;
            w.add_file(entry, path, &mut |n| {
                copied = n;
                progress(Progress {
                    stage: (*entry).to_string(),
                    done: before + n,
                    total,
                })
            })
            .map_err(|e| e.to_string())?;
            before += copied;
        }
        progress(Progress {
            stage: "finishing".into(),
            done: total,
            total,
        });
        let written = w.finish().map_err(|e| e.to_string())?;
        let size = fs::metadata(&written).map(|m| m.len()).unwrap_or(0);
        Ok(format!(
            "exported `{}` to {} ({} MiB; {}, {} rule(s){})",
            self.name,
            written.display(),
            size >> 20,
            match (self.meta.saved_state, self.meta.private_disk) {
                (true, true) =>
                    "with its running state and its private disk as that state knows it",
                (true, false) => "with its running state",
                (false, true) => "with its private disk",
                (false, false) => "no private disk yet",
            },
            self.meta.rules,
            if self.with_template {
                ", with its template"
            } else {
                ""
            }
        ))
    }
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

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub file: PathBuf,
    /// Import under this name instead of the bundle's.
    pub name: Option<String>,
    /// Policy directory to add it to; `None`: the user's own (made from the defaults).
    pub policy_dir: Option<PathBuf>,
}

/// Why an export or import failed (an import: refused); nothing is left behind either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The name is taken here (`why` says where); `suggestion` is a free one.
    #[error("{why}")]
    NameTaken {
        name: String,
        why: String,
        suggestion: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl From<String> for TransferError {
    fn from(e: String) -> Self {
        TransferError::Failed(e)
    }
}

impl From<&str> for TransferError {
    fn from(e: &str) -> Self {
        TransferError::Failed(e.to_string())
    }
}

/// Unpacks and checks the bundle, plans the import and carries it out; returns a summary.
pub fn import(
    req: &ImportRequest,
    pass: SecretString,
    progress: &mut dyn FnMut(Progress),
) -> Result<String, TransferError> {
    let staging_parent = data_root().join("partitions");
    let total = fs::metadata(&req.file)
        .map_err(|e| format!("{}: {e}", req.file.display()))?
        .len();
    progress(Progress {
        stage: "unpacking".into(),
        done: 0,
        total,
    });
    let unpacked = bundle::unpack(
        &req.file,
        pass,
        &staging_parent,
        &mut |p: UnpackProgress| {
            progress(Progress {
                stage: "unpacking".into(),
                done: p.bundle_bytes,
                total,
            })
        },
    )
    .map_err(|e| e.to_string())?;
    progress(Progress {
        stage: "saving".into(),
        done: total,
        total,
    });
    let plan = plan_import(req, &unpacked)?;
    Ok(commit_import(plan, &unpacked)?)
}

/// The first of NAME-2, NAME-3, … that is neither a partition in `doc` nor a leftover
/// data directory.
fn free_name(doc: &PolicyDocument, name: &str) -> String {
    let taken = doc.partition_names();
    (2..1000)
        .map(|n| format!("{name}-{n}"))
        .find(|c| !taken.contains(c) && !private_disk_path(c).parent().is_some_and(Path::exists))
        .unwrap_or_else(|| format!("{name}-new"))
}

/// Everything an import will do, checked, before anything is written.
struct ImportPlan {
    name: String,
    doc: PolicyDocument,
    rules_file: Option<String>,
    disk_to: Option<PathBuf>,
    template_to: Option<PathBuf>,
    /// Where the saved state goes (the partition continues from it at its next start).
    resume_to: Option<PathBuf>,
    memory_mtime: Option<(i64, i64)>,
    notes: Vec<String>,
}

fn plan_import(req: &ImportRequest, unpacked: &Unpacked) -> Result<ImportPlan, TransferError> {
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
        return Err(TransferError::Failed(format!(
            "the bundle's metadata is format {}; this Bulkhead reads {META_FORMAT}",
            meta.format
        )));
    }
    let old = meta.partition.as_str();
    let name = req.name.clone().unwrap_or_else(|| old.to_string());
    let dir = user_policy_dir(req.policy_dir.as_deref())?;
    let mut doc = PolicyDocument::load(&dir).map_err(|e| e.to_string())?;
    if doc.partition_names().contains(&name) {
        return Err(TransferError::NameTaken {
            suggestion: free_name(&doc, &name),
            why: format!("a partition named `{name}` exists in {}", dir.display()),
            name,
        });
    }
    let disk_to = private_disk_path(&name);
    let disk_dir = disk_to.parent().map(Path::to_path_buf).unwrap_or_default();
    if disk_dir.exists() {
        return Err(TransferError::NameTaken {
            suggestion: free_name(&doc, &name),
            why: format!(
                "{} exists (a partition `{name}` lived here before; or remove it)",
                disk_dir.display()
            ),
            name,
        });
    }
    doc.insert_partition_snippet(&name, &text(PARTITION)?)
        .map_err(|e| format!("the bundle's partition config: {e}"))?;
    let rules = renamed_rules(&text(RULES)?, old, &name)?;
    let rules_file = if rules.is_empty() {
        None
    } else {
        let file = format!("{IMPORTED_RULES_PREFIX}{name}.policy");
        if doc.rule_files().iter().any(|f| f.name == file) {
            return Err(TransferError::Failed(format!(
                "{} exists: remove it or import under another name",
                doc.rule_file_path(&file).display()
            )));
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
        return Err(TransferError::Failed(format!(
            "the imported partition does not fit this policy; nothing was written:\n{}",
            doc.report()
        )));
    }
    let mut notes = Vec::new();
    let mut template_to = None;
    // A saved guest has its root disk's pages cached: it may only continue on the very
    // template it was saved with.
    let mut same_template = true;
    if let Some(t) = &meta.template {
        if !template::valid_name(&t.name) {
            return Err(TransferError::Failed(format!(
                "the bundle names template {:?}",
                t.name
            )));
        }
        let dir = template::default_store_root().join(&t.name);
        let installed = dir.join(store::MANIFEST_FILE);
        match file_digest(&installed) {
            Ok((_, here)) if Some(&here) != t.manifest_sha256.as_ref() => {
                // Not installed where it was exported: the saved guest never read it.
                same_template = t.manifest_sha256.is_none();
                notes.push(format!(
                    "template `{}` here differs from the exporter's (its packages may differ)",
                    t.name
                ))
            }
            Ok(_) => {}
            Err(_) if t.included => template_to = Some(dir),
            Err(_) => {
                same_template = t.manifest_sha256.is_none();
                notes.push(format!(
                    "template `{}` is not installed: build it with `bulkhead template build {}` before starting `{name}`",
                    t.name, t.name
                ))
            }
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
    let state = unpacked.path(SAVED_STATE).is_some() && unpacked.path(SAVED_MEMORY).is_some();
    if state != meta.saved_state {
        return Err("the bundle's saved state does not match its metadata".into());
    }
    if state && meta.saved_memory_mtime.is_none() {
        return Err("the bundle's saved state has no memory file time".into());
    }
    let resume_to = match (state, same_template) {
        (true, true) => Some(resume_dir(&name)),
        (true, false) => {
            notes.push(format!(
                "its saved state was left out (it ran on another template): `{name}` boots afresh, its private disk as it was when exported"
            ));
            None
        }
        (false, _) => None,
    };
    if resume_to.is_some() {
        notes.push(format!(
            "`{name}` continues where it was exported when it next starts"
        ));
    }
    Ok(ImportPlan {
        name,
        doc,
        rules_file,
        disk_to: disk.then_some(disk_to),
        template_to,
        resume_to,
        memory_mtime: meta.saved_memory_mtime,
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
    let undo_disk = |plan: &ImportPlan| {
        if let Some(to) = &plan.disk_to {
            let _ = fs::remove_file(to);
            let _ = to.parent().map(fs::remove_dir);
        }
    };
    if let Some(to) = &plan.resume_to {
        if let Err(e) = install_saved_state(unpacked, to, plan.memory_mtime) {
            undo_disk(&plan);
            undo_template(&plan);
            return Err(e);
        }
    }
    if let Err(e) = plan.doc.save() {
        if let Some(to) = &plan.resume_to {
            let _ = fs::remove_dir_all(to);
        }
        undo_disk(&plan);
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

/// Moves the saved state into `dir` (through a staging directory beside it).
fn install_saved_state(
    unpacked: &Unpacked,
    dir: &Path,
    memory_time: Option<(i64, i64)>,
) -> Result<(), String> {
    let staging = dir.with_file_name("resume.partial");
    let result = (|| -> std::io::Result<()> {
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging)?;
        for (entry, file) in [(SAVED_STATE, STATE_FILE), (SAVED_MEMORY, MEMORY_FILE)] {
            let from = unpacked.path(entry).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no {entry}"))
            })?;
            let to = staging.join(file);
            if fs::rename(from, &to).is_err() {
                fs::copy(from, &to)?;
            }
        }
        if let Some(time) = memory_time {
            set_memory_mtime(&staging, time)?;
        }
        fs::rename(&staging, dir)
    })();
    result.map_err(|e| {
        let _ = fs::remove_dir_all(&staging);
        format!("installing its saved state in {}: {e}", dir.display())
    })
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

/// Where a [`Job`] is: its progress, and its outcome once finished.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobStatus {
    pub progress: Progress,
    pub outcome: Option<Result<String, TransferError>>,
}

/// An export or import on a thread of its own, so the caller (the app's UI thread) never
/// waits on the disk or on scrypt; it reads [`Job::status`] each frame.
pub struct Job {
    status: Arc<Mutex<JobStatus>>,
}

/// Called after each progress step and at the end (the app asks egui for a repaint).
pub type Waker = Box<dyn Fn() + Send>;

impl Job {
    pub fn export(req: ExportRequest, pass: SecretString, wake: Waker) -> Job {
        Job::spawn("bundle-export", wake, move |progress| {
            ExportPlan::new(&req)
                .and_then(|plan| plan.write(pass, progress))
                .map_err(TransferError::Failed)
        })
    }

    pub fn import(req: ImportRequest, pass: SecretString, wake: Waker) -> Job {
        Job::spawn("bundle-import", wake, move |progress| {
            import(&req, pass, progress)
        })
    }

    /// A job that does not run, standing at `status` (previews and tests of the dialog).
    pub fn at(status: JobStatus) -> Job {
        Job {
            status: Arc::new(Mutex::new(status)),
        }
    }

    fn spawn(
        thread: &str,
        wake: Waker,
        work: impl FnOnce(&mut dyn FnMut(Progress)) -> Result<String, TransferError> + Send + 'static,
    ) -> Job {
        let status = Arc::new(Mutex::new(JobStatus::default()));
        let shared = Arc::clone(&status);
        let set = move |f: &mut dyn FnMut(&mut JobStatus)| {
            if let Ok(mut s) = shared.lock() {
                f(&mut s);
            }
        };
        let spawned = std::thread::Builder::new()
            .name(thread.to_string())
            .spawn(move || {
                let mut last_wake = std::time::Instant::now();
                let mut progress = |p: Progress| {
                    set(&mut |s| s.progress = p.clone());
                    // A repaint at most every 50 ms, not one per chunk.
                    if last_wake.elapsed() >= std::time::Duration::from_millis(50) {
                        last_wake = std::time::Instant::now();
                        wake();
                    }
                };
                // A panic still ends the job (the writer and the staging directory clean
                // up as they unwind), so the form never waits forever.
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut progress)))
                        .unwrap_or_else(|_| {
                            Err(TransferError::Failed(
                                "it stopped on an internal error".into(),
                            ))
                        });
                if let Err(e) = &outcome {
                    tracing::warn!("{e}");
                }
                set(&mut |s| s.outcome = Some(outcome.clone()));
                wake();
            });
        if let Err(e) = spawned {
            if let Ok(mut s) = status.lock() {
                s.outcome = Some(Err(TransferError::Failed(format!(
                    "cannot start a thread: {e}"
                ))));
            }
        }
        Job { status }
    }

    pub fn status(&self) -> JobStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn is_finished(&self) -> bool {
        self.status().outcome.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(job: &Job) -> JobStatus {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !job.is_finished() {
            assert!(std::time::Instant::now() < until, "the job never ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        job.status()
    }

    #[test]
    fn a_job_reports_its_progress_and_outcome_and_a_panic_ends_it_with_an_error() {
        let job = Job::spawn("test-ok", Box::new(|| {}), |progress| {
            progress(Progress {
                stage: "private.img".into(),
                done: 3,
                total: 4,
            });
            Ok("done".into())
        });
        let status = finished(&job);
        assert_eq!(status.progress.done, 3);
        assert_eq!(status.outcome, Some(Ok("done".into())));

        let job = Job::spawn("test-panic", Box::new(|| {}), |_| panic!("boom"));
        assert!(matches!(
            finished(&job).outcome,
            Some(Err(TransferError::Failed(_)))
        ));
    }

    #[test]
    fn a_passphrase_must_be_non_empty_and_typed_the_same_twice() {
        assert!(check_passphrase("", None).is_err());
        assert!(check_passphrase("abc", Some("abd")).is_err());
        assert!(check_passphrase("abc", Some("abc")).is_ok());
        assert!(check_passphrase("abc", None).is_ok());
    }
}
