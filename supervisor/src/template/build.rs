//! Building a template: `mmdebstrap --format=tar … | tar2sqfs -c zstd`, into the store.
//!
//! mmdebstrap runs unprivileged (`--mode=unshare`) when the host allows it: user
//! namespaces, `newuidmap`/`newgidmap` and subordinate id ranges for the user; as root
//! otherwise (`--mode=root`); else the build stops saying what to install or configure.
//! Downloaded `.deb`s are kept in `$XDG_CACHE_HOME/bulkhead/apt-archives` between builds
//! (mmdebstrap's sync-in/sync-out hooks). Each external program runs in its own process
//! group, is bounded by [`BuildOptions::timeout`] and is stopped (TERM, then KILL) when
//! the build is dropped, fails or times out.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::manifest::{file_digest, now_utc, parse_package_list, Manifest, MANIFEST_FORMAT};
use super::store::{Staging, IMAGE_FILE, MANIFEST_FILE};
use super::{io_err, Declaration, TemplateError, TemplateStore};

/// How long a build may take before it is stopped (a hung mirror must not hang forever).
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// How long a stopped program gets to clean up after TERM before KILL (mmdebstrap
/// unmounts and deletes its temporary root).
const TERM_GRACE: Duration = Duration::from_secs(30);

/// mmdebstrap's hooks that set up a merged-/usr root without usrmerge and perl.
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

const PACKAGE_LIST: &str = "packages.tsv";

/// How mmdebstrap got the privileges to build a root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    /// Unprivileged, in a user namespace.
    Unshare,
    /// As root.
    Root,
}

impl BuildMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildMode::Unshare => "unshare",
            BuildMode::Root => "root",
        }
    }
}

impl fmt::Display for BuildMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What decides the build mode, as found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub is_root: bool,
    pub user: String,
    /// Why this user cannot create user namespaces, if it cannot.
    pub userns_blocked: Option<String>,
    pub newuidmap: bool,
    pub newgidmap: bool,
    /// A subordinate uid range of at least 65536 in `/etc/subuid`.
    pub subuid: bool,
    pub subgid: bool,
}

impl HostFacts {
    pub fn probe() -> HostFacts {
        let uid = rustix::process::geteuid().as_raw();
        let user = user_name(uid);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        HostFacts {
            is_root: uid == 0,
            userns_blocked: userns_blocked(),
            newuidmap: find_in_path("newuidmap").is_some(),
            newgidmap: find_in_path("newgidmap").is_some(),
            subuid: has_subid_range(&read("/etc/subuid"), &user, uid),
            subgid: has_subid_range(&read("/etc/subgid"), &user, uid),
            user,
        }
    }
}

/// Unshare when the host allows it, root when we are root, else an error naming what is
/// missing.
pub fn choose_mode(facts: &HostFacts) -> Result<BuildMode, TemplateError> {
    let user = &facts.user;
    let mut missing = Vec::new();
    if let Some(why) = &facts.userns_blocked {
        missing.push(why.clone());
    }
    if !facts.newuidmap || !facts.newgidmap {
        missing.push("newuidmap and newgidmap (sudo apt-get install uidmap)".to_string());
    }
    if !facts.subuid {
        missing.push(format!(
            "a subordinate uid range for {user} in /etc/subuid (sudo usermod --add-subuids 100000-165535 {user})"
        ));
    }
    if !facts.subgid {
        missing.push(format!(
            "a subordinate gid range for {user} in /etc/subgid (sudo usermod --add-subgids 100000-165535 {user})"
        ));
    }
    if missing.is_empty() {
        return Ok(BuildMode::Unshare);
    }
    if facts.is_root {
        tracing::info!(
            "building as root: unprivileged mode needs {}",
            missing.join("; ")
        );
        return Ok(BuildMode::Root);
    }
    Err(TemplateError::NoBuildMode {
        reason: format!(
            "an unprivileged build needs {}; or run the build as root",
            missing.join(", and ")
        ),
    })
}

/// Whether `/etc/subuid`-style `text` gives `user` (by name or uid) at least 65536 ids.
pub fn has_subid_range(text: &str, user: &str, uid: u32) -> bool {
    let uid = uid.to_string();
    text.lines().any(|line| {
        let mut fields = line.trim().split(':');
        let (Some(who), Some(_start), Some(count)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        (who == user || who == uid) && count.trim().parse::<u64>().is_ok_and(|n| n >= 65_536)
    })
}

fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let uid_text = uid.to_string();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            f.next()?;
            (f.next()? == uid_text).then(|| name.to_string())
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or(uid_text)
}

fn userns_blocked() -> Option<String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some(
            "unprivileged user namespaces (sudo sysctl kernel.unprivileged_userns_clone=1)".into(),
        );
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user namespaces (sudo sysctl user.max_user_namespaces=10000)".into());
    }
    // Ubuntu 24.04 and later: unprivileged namespaces get no capabilities unless an
    // AppArmor profile allows them (root is not restricted).
    if !rustix::process::geteuid().is_root()
        && read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        return Some(
            "user namespaces without AppArmor's restriction (sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile allowing userns for mmdebstrap)".into(),
        );
    }
    None
}

pub(crate) fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Rebuild even if the template is up to date.
    pub force: bool,
    /// Limit for the whole mmdebstrap | tar2sqfs pipeline.
    pub timeout: Duration,
    /// `None`: [`choose_mode`] on [`HostFacts::probe`].
    pub mode: Option<BuildMode>,
    /// Where `.deb`s are kept between builds; `None` downloads every time.
    pub apt_cache: Option<PathBuf>,
    /// Set it (from a signal handler, another thread) to stop the build: its programs
    /// are stopped, the staging directory removed, the old template kept.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            force: false,
            timeout: DEFAULT_BUILD_TIMEOUT,
            mode: None,
            apt_cache: Some(super::default_apt_cache()),
            cancel: None,
        }
    }
}

/// What a build is doing, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildProgress {
    /// Another build holds the store; waiting for it.
    WaitingForLock,
    /// The template matches its declaration and its image checks out: nothing to do.
    UpToDate,
    /// Building in this mode.
    Mode(BuildMode),
    /// An mmdebstrap step (`downloading packages with apt...`).
    Stage(String),
    /// apt announced this many more packages to unpack and set up.
    PackagesPlanned(usize),
    Unpacking(String),
    SettingUp(String),
    /// Hashing the finished image.
    Hashing,
}

/// What [`TemplateStore::build`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutcome {
    pub manifest: Manifest,
    /// True when the existing template was kept (up to date, not forced).
    pub reused: bool,
}

/// Reads one line of mmdebstrap's `--verbose` output (its own `I:` steps, apt's and
/// dpkg's lines) as progress, if it is any.
pub fn parse_progress_line(line: &str) -> Option<BuildProgress> {
    let line = line.trim_end();
    if let Some(step) = line.strip_prefix("I: ") {
        return Some(BuildProgress::Stage(
            step.trim_end_matches("...").to_string(),
        ));
    }
    if let Some(rest) = line.strip_prefix("Unpacking ") {
        return Some(BuildProgress::Unpacking(package_of(rest)));
    }
    if let Some(rest) = line.strip_prefix("Setting up ") {
        return Some(BuildProgress::SettingUp(package_of(rest)));
    }
    // "0 upgraded, 28 newly installed, 0 to remove and 0 not upgraded."
    if line.contains(" newly installed") {
        let count = |label: &str| {
            line.split(", ")
                .find_map(|part| part.strip_suffix(label)?.trim().parse::<usize>().ok())
                .unwrap_or(0)
        };
        let planned = count(" upgraded") + count(" newly installed");
        return Some(BuildProgress::PackagesPlanned(planned));
    }
    None
}

/// `libc6:amd64 (2.36-9) ...` → `libc6`.
fn package_of(rest: &str) -> String {
    let word = rest.split_whitespace().next().unwrap_or_default();
    word.split(':').next().unwrap_or(word).to_string()
}

/// Quotes `s` for `sh` (mmdebstrap runs shell hooks with `sh -c`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// mmdebstrap's arguments for `decl`, writing a tar to stdout and the package list to
/// `package_list`.
pub fn mmdebstrap_args(
    decl: &Declaration,
    mode: BuildMode,
    package_list: &Path,
    apt_cache: Option<&Path>,
) -> Vec<String> {
    let mut args = vec![
        format!("--mode={mode}"),
        format!("--variant={}", decl.variant),
        "--format=tar".into(),
        "--verbose".into(),
        format!("--include={}", decl.packages.join(",")),
        "--aptopt=APT::Install-Recommends \"false\"".into(),
        "--aptopt=APT::Install-Suggests \"false\"".into(),
    ];
    // Documentation, manuals and translations are dead weight in a partition; the
    // copyright files stay.
    for opt in [
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
    ] {
        args.push(format!("--dpkgopt={opt}"));
    }
    if Path::new(MERGED_USR_HOOKS).is_dir() {
        args.push(format!("--hook-dir={MERGED_USR_HOOKS}"));
    }
    if let Some(cache) = apt_cache {
        // mmdebstrap(1), "keep the downloaded packages": keep what sync-in put there, and
        // copy everything downloaded back out at the end.
        let cache = cache.display().to_string();
        args.extend([
            "--skip=download/empty".into(),
            "--skip=essential/unlink".into(),
            "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/".into(),
            format!("--setup-hook=sync-in {cache} /var/cache/apt/archives/"),
            format!("--customize-hook=sync-out /var/cache/apt/archives {cache}"),
        ]);
    }
    args.push(format!(
        "--customize-hook=chroot \"$1\" dpkg-query -W -f='${{Package}}\\t${{Version}}\\n' > {}",
        sh_quote(&package_list.display().to_string())
    ));
    args.push(decl.suite.clone());
    args.push("-".into());
    args.extend(decl.source_lines());
    args
}

/// A running program in its own process group, stopped with its children when dropped.
struct Job {
    what: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Job {
    fn spawn(mut cmd: Command, what: &str) -> Result<Job, TemplateError> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        tracing::debug!("running {cmd:?}");
        let child = cmd.spawn().map_err(|e| TemplateError::StepFailed {
            command: what.to_string(),
            status: "not started".into(),
            detail: e.to_string(),
        })?;
        Ok(Job {
            what: what.to_string(),
            child,
            status: None,
        })
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    fn signal_group(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(pid, signal);
    }

    /// TERM to the group (mmdebstrap cleans its temporary root up on TERM), KILL after
    /// [`TERM_GRACE`].
    fn stop(&mut self) {
        if self.poll().is_some() {
            return;
        }
        tracing::warn!("stopping {}", self.what);
        self.signal_group(rustix::process::Signal::TERM);
        let until = Instant::now() + TERM_GRACE;
        while Instant::now() < until {
            if self.poll().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Children of the leader may still run; the group is gone once all exit.
        self.signal_group(rustix::process::Signal::KILL);
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Output {
    Mmdebstrap(String),
    Tar2sqfs(String),
}

fn forward_lines(
    stream: impl Read + Send + 'static,
    tx: mpsc::Sender<Output>,
    wrap: fn(String) -> Output,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(wrap(String::from_utf8_lossy(&line).into_owned()))
                .is_err()
            {
                break;
            }
        }
    });
}

/// The last lines a failed program printed, errors first.
fn failure_detail(lines: &[String]) -> String {
    let errors: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("E:") || l.to_ascii_lowercase().contains("error:"))
        .collect();
    let pick: Vec<&str> = if errors.is_empty() {
        lines
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(String::as_str)
            .collect()
    } else {
        errors.into_iter().rev().take(5).rev().collect()
    };
    if pick.is_empty() {
        "no error output".into()
    } else {
        pick.join(" | ")
    }
}

/// How many lines of each program's output are kept for the error message.
const KEPT_LINES: usize = 200;

fn keep(lines: &mut Vec<String>, line: String) {
    if lines.len() == KEPT_LINES {
        lines.remove(0);
    }
    lines.push(line);
}

/// Runs `mmdebstrap … | tar2sqfs … image` until both exit or the deadline passes.
fn run_pipeline(
    mm_args: &[String],
    image: &Path,
    options: &BuildOptions,
    progress: &mut dyn FnMut(BuildProgress),
) -> Result<(), TemplateError> {
    run_programs(
        ("mmdebstrap", "tar2sqfs"),
        mm_args,
        image,
        options,
        progress,
    )
}

/// [`run_pipeline`] with the two programs named (tests stand in for them).
fn run_programs(
    (mmdebstrap, tar2sqfs): (&str, &str),
    mm_args: &[String],
    image: &Path,
    options: &BuildOptions,
    progress: &mut dyn FnMut(BuildProgress),
) -> Result<(), TemplateError> {
    let timeout = options.timeout;
    let deadline = Instant::now() + timeout;
    let cancelled = || {
        options
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    };
    let mut mm_cmd = Command::new(mmdebstrap);
    mm_cmd
        .args(mm_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut mm = Job::spawn(mm_cmd, "mmdebstrap")?;
    let (Some(tar), Some(mm_err)) = (mm.child.stdout.take(), mm.child.stderr.take()) else {
        return Err(TemplateError::StepFailed {
            command: "mmdebstrap".into(),
            status: "no pipes".into(),
            detail: "stdout/stderr were not captured".into(),
        });
    };
    let mut sq_cmd = Command::new(tar2sqfs);
    sq_cmd
        .args(["-q", "-f", "-c", "zstd", "-X", "level=3"])
        .arg(image)
        .stdin(Stdio::from(tar))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut sq = Job::spawn(sq_cmd, "tar2sqfs")?;
    let (tx, rx) = mpsc::channel();
    forward_lines(mm_err, tx.clone(), Output::Mmdebstrap);
    if let Some(sq_err) = sq.child.stderr.take() {
        forward_lines(sq_err, tx, Output::Tar2sqfs);
    } else {
        drop(tx);
    }

    let timed_out = |what: &str| TemplateError::TimedOut {
        command: what.into(),
        limit_secs: timeout.as_secs(),
    };
    let mut mm_lines = Vec::new();
    let mut sq_lines = Vec::new();
    loop {
        if cancelled() {
            return Err(TemplateError::Interrupted);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("mmdebstrap | tar2sqfs"));
        }
        match rx.recv_timeout(left.min(Duration::from_millis(250))) {
            Ok(Output::Mmdebstrap(line)) => {
                tracing::debug!(target: "bulkhead::template::mmdebstrap", "{line}");
                if let Some(p) = parse_progress_line(&line) {
                    progress(p);
                }
                keep(&mut mm_lines, line);
            }
            Ok(Output::Tar2sqfs(line)) => {
                tracing::debug!(target: "bulkhead::template::tar2sqfs", "{line}");
                keep(&mut sq_lines, line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Both closed their stderr: they are exiting.
    while mm.poll().is_none() || sq.poll().is_none() {
        if Instant::now() >= deadline {
            return Err(timed_out("mmdebstrap | tar2sqfs"));
        }
        if cancelled() {
            return Err(TemplateError::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = |job: &Job, lines: &[String]| TemplateError::StepFailed {
        command: job.what.clone(),
        status: job.status.map_or("unknown".into(), |s| s.to_string()),
        detail: failure_detail(lines),
    };
    // tar2sqfs first: when it fails, mmdebstrap only sees a broken pipe.
    if !sq.status.is_some_and(|s| s.success()) {
        return Err(failed(&sq, &sq_lines));
    }
    if !mm.status.is_some_and(|s| s.success()) {
        return Err(failed(&mm, &mm_lines));
    }
    Ok(())
}

impl TemplateStore {
    /// Builds `decl` into the store, or returns the existing manifest when the template
    /// matches the declaration and its image checks out (unless `options.force`).
    pub fn build(
        &self,
        decl: &Declaration,
        options: &BuildOptions,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<BuildOutcome, TemplateError> {
        let lock = self.lock(&mut || progress(BuildProgress::WaitingForLock))?;
        if !options.force {
            if let Some(manifest) = self.reusable(decl)? {
                progress(BuildProgress::UpToDate);
                return Ok(BuildOutcome {
                    manifest,
                    reused: true,
                });
            }
        }
        for (tool, package) in [
            ("mmdebstrap", "mmdebstrap"),
            ("tar2sqfs", "squashfs-tools-ng"),
        ] {
            if find_in_path(tool).is_none() {
                return Err(TemplateError::MissingTool { tool, package });
            }
        }
        let mode = match options.mode {
            Some(mode) => mode,
            None => choose_mode(&HostFacts::probe())?,
        };
        progress(BuildProgress::Mode(mode));
        tracing::debug!(template = %decl.name, %mode, "building template");
        let started = Instant::now();

        let staging = self.staging(&decl.name, &lock)?;
        let apt_cache = match &options.apt_cache {
            Some(dir) if dir.to_string_lossy().chars().any(char::is_whitespace) => {
                tracing::warn!(dir = %dir.display(), "apt cache path has spaces; not caching packages");
                None
            }
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
                Some(dir.as_path())
            }
            None => None,
        };
        let package_list = staging.path().join(PACKAGE_LIST);
        let args = mmdebstrap_args(decl, mode, &package_list, apt_cache);
        let image = staging.path().join(IMAGE_FILE);
        run_pipeline(&args, &image, options, progress)?;

        let manifest = self.finish(decl, mode, &staging, started, progress)?;
        self.install(&staging, &decl.name, &lock)?;
        tracing::info!(
            template = %decl.name,
            size = manifest.image_size,
            packages = manifest.packages.len(),
            secs = manifest.duration_ms / 1000,
            "template built"
        );
        Ok(BuildOutcome {
            manifest,
            reused: false,
        })
    }

    /// The installed manifest if it is built from `decl` and its image checks out.
    fn reusable(&self, decl: &Declaration) -> Result<Option<Manifest>, TemplateError> {
        let t = match self.installed(&decl.name) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!("rebuilding: {e}");
                return Ok(None);
            }
        };
        if Self::freshness(&t, Some(decl)) != super::Freshness::UpToDate {
            tracing::info!(template = %decl.name, "declaration changed: rebuilding");
            return Ok(None);
        }
        if !Self::verify(&t)? {
            tracing::warn!(template = %decl.name, "image does not match its manifest: rebuilding");
            return Ok(None);
        }
        Ok(Some(t.manifest))
    }

    fn finish(
        &self,
        decl: &Declaration,
        mode: BuildMode,
        staging: &Staging,
        started: Instant,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<Manifest, TemplateError> {
        let list_path = staging.path().join(PACKAGE_LIST);
        let list =
            std::fs::read_to_string(&list_path).map_err(|_| TemplateError::NoPackageList {
                path: list_path.clone(),
            })?;
        let packages = parse_package_list(&list);
        if packages.is_empty() {
            return Err(TemplateError::NoPackageList { path: list_path });
        }
        std::fs::remove_file(&list_path).map_err(io_err("removing", &list_path))?;
        progress(BuildProgress::Hashing);
        let image = staging.path().join(IMAGE_FILE);
        let (image_size, image_sha256) = file_digest(&image)?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: decl.name.clone(),
            suite: decl.suite.clone(),
            packages,
            image_size,
            image_sha256,
            built_at: now_utc(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            mode,
            declaration_hash: decl.hash(),
        };
        manifest.write(&staging.path().join(MANIFEST_FILE))?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            is_root: false,
            user: "ann".into(),
            userns_blocked: None,
            newuidmap: true,
            newgidmap: true,
            subuid: true,
            subgid: true,
        }
    }

    #[test]
    fn unshare_is_chosen_when_the_host_allows_it_even_for_root() {
        assert_eq!(choose_mode(&facts()).unwrap(), BuildMode::Unshare);
        let root = HostFacts {
            is_root: true,
            ..facts()
        };
        assert_eq!(choose_mode(&root).unwrap(), BuildMode::Unshare);
    }

    #[test]
    fn root_is_chosen_when_unshare_is_not_possible_and_we_are_root() {
        let f = HostFacts {
            is_root: true,
            subuid: false,
            ..facts()
        };
        assert_eq!(choose_mode(&f).unwrap(), BuildMode::Root);
    }

    #[test]
    fn without_unshare_or_root_the_error_says_what_to_install_and_configure() {
        let f = HostFacts {
            newuidmap: false,
            subuid: false,
            subgid: false,
            userns_blocked: Some("unprivileged user namespaces (sudo sysctl x=1)".into()),
            ..facts()
        };
        let e = choose_mode(&f).unwrap_err().to_string();
        for needle in [
            "sudo sysctl x=1",
            "sudo apt-get install uidmap",
            "usermod --add-subuids 100000-165535 ann",
            "usermod --add-subgids 100000-165535 ann",
            "or run the build as root",
        ] {
            assert!(e.contains(needle), "{needle} missing from: {e}");
        }
    }

    #[test]
    fn subid_ranges_match_by_name_or_uid_and_need_65536_ids() {
        let text = "bob:100000:65536\n1001:200000:65536\nshort:300000:1000\nbroken\n";
        assert!(has_subid_range(text, "bob", 1000));
        assert!(has_subid_range(text, "carol", 1001));
        assert!(!has_subid_range(text, "short", 1002));
        assert!(!has_subid_range(text, "dave", 1003));
        assert!(!has_subid_range("", "bob", 1000));
    }

    #[test]
    fn mmdebstrap_output_lines_become_progress() {
        assert_eq!(
            parse_progress_line("I: downloading packages with apt..."),
            Some(BuildProgress::Stage("downloading packages with apt".into()))
        );
        assert_eq!(
            parse_progress_line("1 upgraded, 28 newly installed, 0 to remove and 0 not upgraded."),
            Some(BuildProgress::PackagesPlanned(29))
        );
        assert_eq!(
            parse_progress_line("Unpacking libc6:amd64 (2.36-9+deb12u14) ..."),
            Some(BuildProgress::Unpacking("libc6".into()))
        );
        assert_eq!(
            parse_progress_line("Setting up hello (2.10-3) ..."),
            Some(BuildProgress::SettingUp("hello".into()))
        );
        assert_eq!(
            parse_progress_line("Get:1 http://deb.debian.org/debian bookworm"),
            None
        );
    }

    #[test]
    fn mmdebstrap_gets_the_declaration_the_cache_hooks_and_the_package_list_hook() {
        let decl = Declaration::parse(
            Path::new("t.toml"),
            "name = \"t\"\nsuite = \"bookworm\"\npackages = [\"hello\", \"tmux\"]\n",
        )
        .unwrap();
        let args = mmdebstrap_args(
            &decl,
            BuildMode::Unshare,
            Path::new("/s/it's/packages.tsv"),
            Some(Path::new("/c/apt")),
        );
        let has = |a: &str| args.iter().any(|x| x == a);
        assert!(has("--mode=unshare") && has("--variant=minbase") && has("--format=tar"));
        assert!(has("--include=hello,tmux"));
        assert!(has("--aptopt=APT::Install-Recommends \"false\""));
        assert!(has("--setup-hook=sync-in /c/apt /var/cache/apt/archives/"));
        assert!(has(
            "--customize-hook=sync-out /var/cache/apt/archives /c/apt"
        ));
        assert!(has("--skip=download/empty"));
        let hook = args.iter().find(|a| a.contains("dpkg-query")).unwrap();
        assert!(hook.ends_with(r"> '/s/it'\''s/packages.tsv'"), "{hook}");
        let tail: Vec<&str> = args
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "bookworm",
                "-",
                "deb http://deb.debian.org/debian bookworm main"
            ]
        );
    }

    #[test]
    fn a_stopped_program_is_stopped_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-still-ran");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "(sleep 1; touch {}) & sleep 600",
            sh_quote(&marker.display().to_string())
        ));
        let mut job = Job::spawn(cmd, "sleeper").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        job.stop();
        assert!(started.elapsed() < TERM_GRACE, "TERM was enough");
        assert!(job.status.is_some());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!marker.exists(), "the background child outlived the stop");
    }

    /// Runs `script` as mmdebstrap (its arguments: `-c script`) and `true` as
    /// tar2sqfs.
    fn run_fake(script: &str, options: &BuildOptions) -> (Result<(), TemplateError>, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let args = vec!["-c".to_string(), script.to_string()];
        let started = Instant::now();
        let result = run_programs(
            ("sh", "true"),
            &args,
            &dir.path().join("img"),
            options,
            &mut |_| {},
        );
        (result, started.elapsed())
    }

    #[test]
    fn a_hung_build_is_stopped_at_the_timeout() {
        let options = BuildOptions {
            timeout: Duration::from_secs(1),
            ..BuildOptions::default()
        };
        let (result, took) = run_fake("echo 'I: downloading' >&2; sleep 600", &options);
        assert!(
            matches!(result, Err(TemplateError::TimedOut { .. })),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(8), "{took:?}");
    }

    #[test]
    fn a_chatty_hung_build_is_stopped_at_the_timeout_too() {
        let options = BuildOptions {
            timeout: Duration::from_secs(1),
            ..BuildOptions::default()
        };
        let (result, took) = run_fake("while :; do echo 'Get: 1' >&2; done", &options);
        assert!(
            matches!(result, Err(TemplateError::TimedOut { .. })),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(8), "{took:?}");
    }

    #[test]
    fn a_cancelled_build_stops_its_programs() {
        let cancel = Arc::new(AtomicBool::new(false));
        let options = BuildOptions {
            cancel: Some(cancel.clone()),
            ..BuildOptions::default()
        };
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.store(true, Ordering::SeqCst);
        });
        let (result, took) = run_fake("sleep 600", &options);
        setter.join().unwrap();
        assert!(
            matches!(result, Err(TemplateError::Interrupted)),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(8), "{took:?}");
    }

    #[test]
    fn a_failing_build_reports_its_error_lines() {
        let (result, _) = run_fake(
            "echo 'I: downloading' >&2; echo 'E: Unable to locate package nope' >&2; exit 1",
            &BuildOptions::default(),
        );
        let e = result.unwrap_err().to_string();
        assert!(
            e.contains("`mmdebstrap` failed") && e.contains("Unable to locate package nope"),
            "{e}"
        );
    }

    #[test]
    fn failure_detail_prefers_error_lines() {
        let lines: Vec<String> = [
            "I: a",
            "Setting up liberror-perl (0.17029-2) ...",
            "E: Unable to locate package nope",
            "I: b",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(failure_detail(&lines), "E: Unable to locate package nope");
        assert_eq!(failure_detail(&[]), "no error output");
    }
}
