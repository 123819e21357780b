//! Building a partition's missing template from the app: on its own thread, its
//! progress a line of text the partition view shows, cancellable by stopping the
//! partition. The build itself is `bulkhead_supervisor::template`'s, the same as
//! `bulkhead template build`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bulkhead_supervisor::template::{
    BuildOptions, BuildProgress, Catalog, TemplateError, TemplateStore,
};

/// Where a background build stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildState {
    Running(String),
    Done,
    Failed(String),
}

/// One template build on its own thread.
pub struct TemplateBuild {
    state: Arc<Mutex<BuildState>>,
    cancel: Arc<AtomicBool>,
}

impl TemplateBuild {
    /// Is template `name` missing from the store (so a start must build it first)?
    /// A broken store entry counts as missing: the build replaces it.
    pub fn needed(name: &str) -> bool {
        !matches!(TemplateStore::open_default().installed(name), Ok(Some(_)))
    }

    /// Starts building `name` from its declaration; `wake` is called on every change.
    pub fn start(name: &str, wake: impl Fn() + Send + 'static) -> TemplateBuild {
        let state = Arc::new(Mutex::new(BuildState::Running(format!(
            "building template {name}…"
        ))));
        let cancel = Arc::new(AtomicBool::new(false));
        let (thread_state, thread_cancel, name) = (state.clone(), cancel.clone(), name.to_string());
        let spawned = std::thread::Builder::new()
            .name(format!("template-{name}"))
            .spawn(move || {
                let result = build(&name, thread_cancel, &mut |line| {
                    set(&thread_state, BuildState::Running(line));
                    wake();
                });
                set(
                    &thread_state,
                    match result {
                        Ok(()) => BuildState::Done,
                        Err(e) => BuildState::Failed(format!("template {name}: {e}")),
                    },
                );
                wake();
            });
        if let Err(e) = spawned {
            set(
                &state,
                BuildState::Failed(format!("cannot start the build: {e}")),
            );
        }
        TemplateBuild { state, cancel }
    }

    pub fn state(&self) -> BuildState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Stops the build; the store keeps what it had.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for TemplateBuild {
    fn drop(&mut self) {
        self.cancel();
    }
}

fn set(state: &Mutex<BuildState>, value: BuildState) {
    match state.lock() {
        Ok(mut s) => *s = value,
        Err(e) => *e.into_inner() = value,
    }
}

fn build(
    name: &str,
    cancel: Arc<AtomicBool>,
    report: &mut dyn FnMut(String),
) -> Result<(), String> {
    let catalog = Catalog::load_default().map_err(|e| e.to_string())?;
    let searched = catalog_dirs();
    let decl = catalog
        .require(name, &searched)
        .map_err(|e| e.to_string())?;
    let options = BuildOptions {
        cancel: Some(cancel),
        ..BuildOptions::default()
    };
    let mut line = ProgressLine::new(name);
    TemplateStore::open_default()
        .build(decl, &options, &mut |p| {
            if let Some(text) = line.update(p) {
                report(text);
            }
        })
        .map(drop)
        .map_err(|e: TemplateError| e.to_string())
}

fn catalog_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs = vec![bulkhead_supervisor::template::shipped_declaration_dir()];
    dirs.extend(bulkhead_supervisor::template::user_declaration_dir());
    dirs
}

/// Turns build progress into the one line the partition view shows.
#[derive(Debug)]
pub struct ProgressLine {
    name: String,
    planned: usize,
    done: usize,
}

impl ProgressLine {
    pub fn new(name: &str) -> Self {
        ProgressLine {
            name: name.to_string(),
            planned: 0,
            done: 0,
        }
    }

    /// The new line, or `None` when this step changes nothing worth redrawing.
    pub fn update(&mut self, p: BuildProgress) -> Option<String> {
        let name = &self.name;
        Some(match p {
            BuildProgress::WaitingForLock => {
                format!("template {name}: waiting for another build to finish")
            }
            BuildProgress::UpToDate => format!("template {name} is up to date"),
            BuildProgress::Mode(mode) => format!("building template {name} ({mode})"),
            BuildProgress::Stage(stage) => format!("building template {name}: {stage}"),
            BuildProgress::PackagesPlanned(n) => {
                self.planned += n;
                return None;
            }
            BuildProgress::Unpacking(_) => return None,
            BuildProgress::SettingUp(_) => {
                self.done += 1;
                let total = self.planned.max(self.done);
                format!(
                    "building template {name}: installing packages {}/{total} ({}%)",
                    self.done,
                    self.done * 100 / total
                )
            }
            BuildProgress::Hashing => format!("building template {name}: checking the image"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_counts_packages_set_up_against_those_planned() {
        let mut l = ProgressLine::new("debian-12");
        assert_eq!(
            l.update(BuildProgress::Stage("downloading packages with apt".into()))
                .as_deref(),
            Some("building template debian-12: downloading packages with apt")
        );
        assert_eq!(l.update(BuildProgress::PackagesPlanned(4)), None);
        assert_eq!(l.update(BuildProgress::Unpacking("xterm".into())), None);
        let line = l.update(BuildProgress::SettingUp("xterm".into())).unwrap();
        assert!(line.ends_with("installing packages 1/4 (25%)"), "{line}");
        for _ in 0..5 {
            l.update(BuildProgress::SettingUp("x".into()));
        }
        // More set up than announced never shows more than 100 %.
        let line = l.update(BuildProgress::SettingUp("y".into())).unwrap();
        assert!(line.ends_with("7/7 (100%)"), "{line}");
    }

    #[test]
    fn an_undeclared_template_fails_with_what_is_declared() {
        let (tx, rx) = std::sync::mpsc::channel();
        let b = TemplateBuild::start("no-such-template", move || {
            let _ = tx.send(());
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while matches!(b.state(), BuildState::Running(_)) {
            let _ = rx.recv_timeout(std::time::Duration::from_millis(100));
            assert!(std::time::Instant::now() < deadline, "build never ended");
        }
        match b.state() {
            BuildState::Failed(reason) => {
                assert!(reason.contains("no-such-template"), "{reason}");
                assert!(
                    reason.contains("debian-12"),
                    "known ones are listed: {reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
