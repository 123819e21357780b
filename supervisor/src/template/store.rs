//! The template store: `<root>/<name>/{root.sqfs,manifest.json}`.
//!
//! A template directory is only ever replaced whole: a build writes a staging directory
//! `<root>/.build-<name>.<pid>` and exchanges it with the old one in one `renameat2`, so
//! a reader sees the old template or the new one, never a mix, and a build that fails or
//! is killed leaves the old one untouched. Builds and removals hold an exclusive `flock`
//! on `<root>/.lock`.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, FlockOperation, RenameFlags, CWD};

use super::manifest::{file_digest, Manifest};
use super::{io_err, valid_name, Declaration, TemplateError};

pub const IMAGE_FILE: &str = "root.sqfs";
pub const MANIFEST_FILE: &str = "manifest.json";
const LOCK_FILE: &str = ".lock";
const STAGING_PREFIX: &str = ".build-";
const TRASH_PREFIX: &str = ".trash-";

#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
}

/// A template found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTemplate {
    pub name: String,
    pub dir: PathBuf,
    /// `root.sqfs`, what partitions boot from (read-only).
    pub image: PathBuf,
    pub manifest: Manifest,
}

/// A template compared with its declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Built from the declaration as it is now.
    UpToDate,
    /// The declaration changed since (or the recipe did): rebuild.
    Stale,
    /// No declaration of that name exists any more.
    Undeclared,
}

/// One directory of the store, readable or not.
#[derive(Debug)]
pub struct StoreEntry {
    pub name: String,
    pub template: Result<InstalledTemplate, TemplateError>,
}

/// Holds the store's exclusive lock until dropped (the kernel drops it if the process
/// dies, so a crashed build never leaves the store locked).
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
}

/// A staging directory, removed on drop unless it was installed.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "cannot remove staging directory: {e}");
            }
        }
    }
}

impl TemplateStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        TemplateStore { root: root.into() }
    }

    /// The store in `$XDG_DATA_HOME/bulkhead/templates` (`~/.local/share/…`).
    pub fn open_default() -> Self {
        TemplateStore::new(super::default_store_root())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<name>`, after checking `name` is a plain directory name.
    pub fn dir(&self, name: &str) -> Result<PathBuf, TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::BadName { name: name.into() });
        }
        Ok(self.root.join(name))
    }

    /// The template `name`, `None` if it was never built. A directory without a readable
    /// manifest or image is an error (rebuild it).
    pub fn installed(&self, name: &str) -> Result<Option<InstalledTemplate>, TemplateError> {
        let dir = self.dir(name)?;
        if !dir.exists() {
            return Ok(None);
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = Manifest::read(&manifest_path)?;
        let image = dir.join(IMAGE_FILE);
        if !image.is_file() {
            return Err(TemplateError::BadManifest {
                path: manifest_path,
                detail: format!("its image {} is missing", image.display()),
            });
        }
        Ok(Some(InstalledTemplate {
            name: name.into(),
            dir,
            image,
            manifest,
        }))
    }

    /// Every template directory, by name (staging and hidden directories are skipped).
    pub fn list(&self) -> Result<Vec<StoreEntry>, TemplateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("reading", &self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("reading", &self.root))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !valid_name(&name) || !entry.path().is_dir() {
                continue;
            }
            let template = match self.installed(&name) {
                Ok(Some(t)) => Ok(t),
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            out.push(StoreEntry { name, template });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes template `name` (waits for a build in progress to finish first).
    pub fn remove(&self, name: &str) -> Result<(), TemplateError> {
        let dir = self.dir(name)?;
        let _lock = self.lock(&mut || {})?;
        if !dir.exists() {
            return Err(TemplateError::NotInstalled {
                name: name.into(),
                store: self.root.clone(),
            });
        }
        // Out of sight in one rename, then deleted: an interrupted removal leaves a
        // hidden directory (cleaned by the next build), never half a template.
        let trash = self
            .root
            .join(format!("{TRASH_PREFIX}{name}.{}", std::process::id()));
        fs::rename(&dir, &trash).map_err(io_err("moving aside", &dir))?;
        fs::remove_dir_all(&trash).map_err(io_err("removing", &trash))?;
        tracing::info!(template = name, "removed");
        Ok(())
    }

    /// Compares `t` with the declaration of its name (`None`: not declared).
    pub fn freshness(t: &InstalledTemplate, declaration: Option<&Declaration>) -> Freshness {
        match declaration {
            None => Freshness::Undeclared,
            Some(d) if d.hash() == t.manifest.declaration_hash => Freshness::UpToDate,
            Some(_) => Freshness::Stale,
        }
    }

    /// Checks the image against the manifest's size and sha256 (reads the whole image).
    pub fn verify(t: &InstalledTemplate) -> Result<bool, TemplateError> {
        let size = fs::metadata(&t.image)
            .map_err(io_err("reading", &t.image))?
            .len();
        if size != t.manifest.image_size {
            return Ok(false);
        }
        let (_, sha) = file_digest(&t.image)?;
        Ok(sha == t.manifest.image_sha256)
    }

    /// Takes the store's exclusive lock, calling `waiting` once if another process holds it.
    pub fn lock(&self, waiting: &mut dyn FnMut()) -> Result<StoreLock, TemplateError> {
        fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        let path = self.root.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                waiting();
                rustix::fs::flock(&file, FlockOperation::LockExclusive)
                    .map_err(|e| io_err("locking", &path)(e.into()))?;
            }
            Err(e) => return Err(io_err("locking", &path)(e.into())),
        }
        Ok(StoreLock { _file: file })
    }

    /// A fresh staging directory for `name` (call with the lock held). Leftovers of
    /// builds or removals that were killed are deleted first.
    pub fn staging(&self, name: &str, _lock: &StoreLock) -> Result<Staging, TemplateError> {
        self.dir(name)?;
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let file_name = file_name.to_string_lossy();
                if file_name.starts_with(STAGING_PREFIX) || file_name.starts_with(TRASH_PREFIX) {
                    tracing::info!(path = %entry.path().display(), "removing leftover of an interrupted build");
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let path = self
            .root
            .join(format!("{STAGING_PREFIX}{name}.{}", std::process::id()));
        fs::create_dir_all(&path).map_err(io_err("creating", &path))?;
        Ok(Staging { path })
    }

    /// Puts `staging` in place as template `name` in one step; the previous template (if
    /// any) ends up in `staging`'s path and goes when it is dropped.
    pub fn install(
        &self,
        staging: &Staging,
        name: &str,
        _lock: &StoreLock,
    ) -> Result<(), TemplateError> {
        let target = self.dir(name)?;
        if !target.exists() {
            return fs::rename(&staging.path, &target).map_err(io_err("installing", &target));
        }
        match renameat_with(CWD, &staging.path, CWD, &target, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(()),
            // A filesystem without RENAME_EXCHANGE: move the old one aside first (a
            // crash between the two renames leaves no template, but never a broken one).
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                let old = self
                    .root
                    .join(format!("{TRASH_PREFIX}{name}.{}", std::process::id()));
                fs::rename(&target, &old).map_err(io_err("moving aside", &target))?;
                fs::rename(&staging.path, &target).map_err(io_err("installing", &target))?;
                fs::remove_dir_all(&old).map_err(io_err("removing", &old))
            }
            Err(e) => Err(io_err("installing", &target)(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::manifest::{rfc3339_utc, MANIFEST_FORMAT};
    use crate::template::BuildMode;

    fn put(store: &TemplateStore, name: &str, image: &[u8]) {
        let lock = store.lock(&mut || {}).unwrap();
        let staging = store.staging(name, &lock).unwrap();
        write_template(staging.path(), name, image);
        store.install(&staging, name, &lock).unwrap();
    }

    fn write_template(dir: &Path, name: &str, image: &[u8]) {
        fs::write(dir.join(IMAGE_FILE), image).unwrap();
        let (size, sha) = file_digest(&dir.join(IMAGE_FILE)).unwrap();
        Manifest {
            format: MANIFEST_FORMAT,
            name: name.into(),
            suite: "bookworm".into(),
            packages: vec![],
            image_size: size,
            image_sha256: sha,
            built_at: rfc3339_utc(0),
            duration_ms: 1,
            mode: BuildMode::Root,
            declaration_hash: "h".into(),
        }
        .write(&dir.join(MANIFEST_FILE))
        .unwrap();
    }

    #[test]
    fn an_empty_or_missing_store_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(TemplateStore::new(dir.path().join("none"))
            .list()
            .unwrap()
            .is_empty());
        let store = TemplateStore::new(dir.path());
        assert!(store.installed("debian-12").unwrap().is_none());
    }

    #[test]
    fn installed_templates_are_listed_by_name_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        put(&store, "b", b"image b");
        put(&store, "a", b"image a");
        fs::create_dir(dir.path().join(".build-x.1")).unwrap();
        let names: Vec<_> = store.list().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["a", "b"]);
        let a = store.installed("a").unwrap().unwrap();
        assert!(TemplateStore::verify(&a).unwrap());
        fs::write(&a.image, b"image A").unwrap();
        assert!(
            !TemplateStore::verify(&a).unwrap(),
            "same size, other bytes"
        );
    }

    #[test]
    fn a_broken_template_is_listed_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        fs::create_dir(dir.path().join("broken")).unwrap();
        let list = store.list().unwrap();
        assert_eq!(list.len(), 1);
        let err = list[0].template.as_ref().unwrap_err().to_string();
        assert!(err.contains("manifest.json"), "{err}");
    }

    #[test]
    fn installing_replaces_the_old_template_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        put(&store, "t", b"old");
        fs::write(dir.path().join("t/extra-old-file"), b"x").unwrap();
        put(&store, "t", b"newer");
        let t = store.installed("t").unwrap().unwrap();
        assert_eq!(fs::read(&t.image).unwrap(), b"newer");
        assert!(!t.dir.join("extra-old-file").exists());
        // Nothing left over beside it.
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".lock", "t"]);
    }

    #[test]
    fn a_build_that_fails_before_install_leaves_the_old_template() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        put(&store, "t", b"old");
        {
            let lock = store.lock(&mut || {}).unwrap();
            let staging = store.staging("t", &lock).unwrap();
            fs::write(staging.path().join(IMAGE_FILE), b"half").unwrap();
            // the build fails here: staging and lock are dropped
        }
        let t = store.installed("t").unwrap().unwrap();
        assert_eq!(fs::read(&t.image).unwrap(), b"old");
        assert!(TemplateStore::verify(&t).unwrap());
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn remove_deletes_the_template_and_refuses_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        put(&store, "t", b"img");
        store.remove("t").unwrap();
        assert!(store.installed("t").unwrap().is_none());
        let e = store.remove("t").unwrap_err().to_string();
        assert!(e.contains("`t` is not installed"), "{e}");
        assert!(matches!(
            store.remove("../etc"),
            Err(TemplateError::BadName { .. })
        ));
    }

    #[test]
    fn a_second_locker_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        let held = store.lock(&mut || {}).unwrap();
        let other = store.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let mut told = false;
            let _lock = other.lock(&mut || told = true).unwrap();
            tx.send(()).unwrap();
            told
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "the lock must not be taken twice");
        drop(held);
        assert!(waiter.join().unwrap(), "the waiter is told it waits");
    }
}
