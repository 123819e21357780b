//! `bulkhead template …`: build, list and remove the read-only root images partitions
//! boot from (see `bulkhead_supervisor::template`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_supervisor::template::{
    self, BuildMode, BuildOptions, BuildProgress, Catalog, Freshness, TemplateStore,
    DEFAULT_TEMPLATE,
};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build a template from its declaration with mmdebstrap (a no-op when up to date).
    ///
    /// Declarations are read from /usr/share/bulkhead/templates/NAME.toml, overridden by
    /// $XDG_CONFIG_HOME/bulkhead/templates/NAME.toml (~/.config/...). The image
    /// (root.sqfs, squashfs with zstd) and manifest.json go to
    /// $XDG_DATA_HOME/bulkhead/templates/NAME/ (~/.local/share/...), replacing the old
    /// ones only when the build succeeded. Downloaded packages are kept in
    /// $XDG_CACHE_HOME/bulkhead/apt-archives/. mmdebstrap runs unprivileged
    /// (--mode=unshare) when the host has user namespaces, uidmap and a subuid/subgid
    /// range for the user, as root otherwise; the mode used is printed.
    Build(BuildArgs),
    /// List the built templates: size, build date, packages, up to date or not.
    List,
    /// Remove a built template (its declaration stays).
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The template's name (its declaration is NAME.toml).
    #[arg(default_value = DEFAULT_TEMPLATE)]
    pub name: String,
    /// Rebuild even if the template matches its declaration.
    #[arg(long)]
    pub force: bool,
    /// Stop the build after this many minutes (a mirror that stopped answering).
    #[arg(long, value_name = "MINUTES", default_value_t = 45)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The template to remove.
    pub name: String,
}

pub fn run(cmd: TemplateCommand) -> ExitCode {
    let store = TemplateStore::open_default();
    match cmd {
        TemplateCommand::Build(args) => build(&store, args),
        TemplateCommand::List => list(&store),
        TemplateCommand::Remove(args) => match store.remove(&args.name) {
            Ok(()) => {
                println!("removed template {}", args.name);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bulkhead template: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn describe_mode(mode: BuildMode) -> &'static str {
    match mode {
        BuildMode::Unshare => "unshare (unprivileged, in a user namespace)",
        BuildMode::Root => "root (this host cannot build unprivileged; running as root)",
    }
}

/// Progress as apt and dpkg report it: each package is unpacked, then set up.
struct Bar {
    bar: ProgressBar,
    planned: u64,
}

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar { bar, planned: 0 }
    }

    /// Lines a terminal shows in the bar go to stderr when there is no terminal.
    fn say(&self, text: String) {
        if self.bar.is_hidden() {
            eprintln!("bulkhead: {text}");
        }
        self.bar.set_message(text);
    }

    fn update(&mut self, p: BuildProgress) {
        match p {
            BuildProgress::WaitingForLock => {
                self.say("waiting for another template build to finish".into())
            }
            BuildProgress::UpToDate => {}
            BuildProgress::Mode(mode) => self
                .bar
                .suspend(|| println!("build mode: {}", describe_mode(mode))),
            // mmdebstrap's bookkeeping (hooks, temp dirs) is not news to a person.
            BuildProgress::Stage(stage) if is_detail(&stage) => self.bar.set_message(stage),
            BuildProgress::Stage(stage) => self.say(stage),
            BuildProgress::PackagesPlanned(n) => {
                self.planned += n as u64;
                // unpacked + set up
                self.bar.set_length(2 * self.planned);
            }
            BuildProgress::Unpacking(pkg) => {
                self.step();
                self.bar.set_message(format!("unpacking {pkg}"));
            }
            BuildProgress::SettingUp(pkg) => {
                self.step();
                self.bar.set_message(format!("setting up {pkg}"));
            }
            BuildProgress::Hashing => self.say("hashing the image".into()),
        }
    }

    /// dpkg can unpack a package twice (essential packages); never run past the end.
    fn step(&self) {
        if self.bar.position() < self.bar.length().unwrap_or(0) {
            self.bar.inc(1);
        }
    }
}

fn is_detail(stage: &str) -> bool {
    [
        "running ",
        "using ",
        "chroot architecture",
        "finding correct",
        "skipping ",
    ]
    .iter()
    .any(|p| stage.starts_with(p))
}

fn human_size(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs >= 60 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}.{}s", secs, ms % 1000 / 100)
    }
}

fn load_catalog() -> Result<(Catalog, Vec<PathBuf>), ExitCode> {
    let dirs = template::declaration_dirs();
    Catalog::load(&dirs).map(|c| (c, dirs)).map_err(|e| {
        eprintln!("{e}");
        eprintln!("bulkhead template: fix the declaration above and try again");
        ExitCode::from(2)
    })
}

fn build(store: &TemplateStore, args: BuildArgs) -> ExitCode {
    let (catalog, dirs) = match load_catalog() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let decl = match catalog.require(&args.name, &dirs) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bulkhead template: {e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C (or TERM) stops mmdebstrap and tar2sqfs and keeps the previous template.
    let cancel = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, cancel.clone()) {
            tracing::warn!("cannot catch signal {signal}: {e}");
        }
    }
    let options = BuildOptions {
        force: args.force,
        timeout: Duration::from_secs(args.timeout.max(1) * 60),
        cancel: Some(cancel),
        ..BuildOptions::default()
    };
    println!(
        "template {} from {} into {}",
        decl.name,
        decl.source.display(),
        store.root().display()
    );
    let mut bar = Bar::new();
    let result = store.build(decl, &options, &mut |p| bar.update(p));
    bar.bar.finish_and_clear();
    match result {
        Ok(outcome) => {
            let m = &outcome.manifest;
            let dir = store.root().join(&m.name);
            if outcome.reused {
                println!(
                    "{} is up to date (built {}; use --force to rebuild)",
                    m.name, m.built_at
                );
            } else {
                println!(
                    "built {} in {} (mode {})",
                    m.name,
                    human_duration(m.duration_ms),
                    m.mode
                );
            }
            println!(
                "  image    {} ({}, sha256 {})",
                dir.join("root.sqfs").display(),
                human_size(m.image_size),
                m.image_sha256
            );
            println!(
                "  packages {} installed (list in {})",
                m.packages.len(),
                dir.join("manifest.json").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bulkhead template: building {}: {e}", decl.name);
            ExitCode::from(1)
        }
    }
}

fn list(store: &TemplateStore) -> ExitCode {
    let entries = match store.list() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("bulkhead template: {e}");
            return ExitCode::from(1);
        }
    };
    // Without valid declarations the list still shows, with the status unknown.
    let catalog = Catalog::load(&template::declaration_dirs())
        .map_err(|e| eprintln!("bulkhead template: declarations: {e}"))
        .ok();
    if entries.is_empty() {
        println!(
            "no templates built in {} (build one: bulkhead template build)",
            store.root().display()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<16} {:>11}  {:<20}  {:>8}  STATUS",
        "NAME", "SIZE", "BUILT (UTC)", "PACKAGES"
    );
    for entry in entries {
        match entry.template {
            Ok(t) => {
                let status = match &catalog {
                    None => "unknown (declarations invalid)",
                    Some(c) => match TemplateStore::freshness(&t, c.get(&t.name)) {
                        Freshness::UpToDate => "up to date",
                        Freshness::Stale => "declaration changed: rebuild",
                        Freshness::Undeclared => "no declaration",
                    },
                };
                let m = &t.manifest;
                println!(
                    "{:<16} {:>11}  {:<20}  {:>8}  {status}",
                    t.name,
                    human_size(m.image_size),
                    m.built_at,
                    m.packages.len()
                );
            }
            Err(e) => println!("{:<16} broken: {e}", entry.name),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_like_a_person_writes_them() {
        assert_eq!(human_size(311 * 1024 * 1024 + 200 * 1024), "311.2 MiB");
        assert_eq!(human_duration(88_400), "1m 28s");
        assert_eq!(human_duration(2_350), "2.3s");
    }

    #[test]
    fn the_progress_bar_counts_unpacked_and_set_up_packages_without_overrunning() {
        let mut bar = Bar::new();
        bar.update(BuildProgress::PackagesPlanned(2));
        for p in ["a", "b", "a"] {
            bar.update(BuildProgress::Unpacking(p.into()));
        }
        bar.update(BuildProgress::SettingUp("a".into()));
        bar.update(BuildProgress::SettingUp("b".into()));
        assert_eq!(bar.bar.length(), Some(4));
        assert_eq!(bar.bar.position(), 4);
    }
}
