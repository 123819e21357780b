//! Disk and template benchmark, one invocation:
//!
//! 1. sequential read of 256 MiB inside the guest through our virtio-blk
//!    (`bulkhead-vmm run --disk IMG,ro`) and through QEMU's (`-M microvm`, `virtio-blk-device`:
//!    virtio-mmio like ours, declared in ACPI, so the same guest initramfs, which loads only
//!    `virtio_mmio`, finds it), same image, kernel, initramfs and memory, interleaved;
//! 2. start to `BULKHEAD-APP-READY` for each default app on the template (our VMM, the
//!    template read-only as `root`, a fresh private disk as `private`), and a plain boot to
//!    the initramfs's `BULKHEAD-READY` for context;
//! 3. the template's build time and image size from its manifest (no rebuild).
//!
//! A separate binary rather than a boot-bench mode: its inputs (template, private disks),
//! schedule and figures differ; the machinery (lab initramfs, per-run bounds, interleaving,
//! medians) is `bulkhead_tests::bench`'s. Directly on /dev/kvm with VT-x/AMD-V, otherwise in
//! one lab machine (the template and private disks are its virtio-blk-pci drives). A
//! benchmark, not a test: nothing asserts a timing.
//!
//! `cargo run --release -p bulkhead-tests --bin disk-bench -- [--runs N] [--app-runs N]`

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use bulkhead_supervisor::guest_image::cpio::CpioWriter;
use bulkhead_tests::bench::{self, LabCpio, QEMU};
use bulkhead_tests::lab::{self, Runner};

const USAGE: &str = "usage: disk-bench [--runs N] [--app-runs N] [--template IMAGE] \
[--disk-timeout S] [--app-timeout S] [--summarize LOG]";

/// The guest prints this at the end of its result line; lab-measure stops the VMM there.
const DONE: &str = "DISKBENCH-DONE";
const RESULT: &str = "DISKBENCH-RESULT";
const APP_READY: &str = "BULKHEAD-APP-READY";
const READ_MIB: u64 = 256;

/// A default partition's app, as `supervisor::launch` and the default policy start it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct App {
    name: &'static str,
    command: &'static str,
}

const APPS: [App; 3] = [
    App {
        name: "work",
        command: bulkhead_supervisor::launch::DEFAULT_APP,
    },
    App {
        name: "mail",
        command: "claws-mail",
    },
    App {
        name: "browser",
        command: "firefox-esr",
    },
];

/// One scheduled run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    DiskOurs,
    DiskQemu,
    /// Our VMM to the initramfs's ready marker, no disks (context for the app figures).
    Plain,
    /// Our VMM booting the template until the app's window is up; `private` is the index
    /// of its fresh private disk.
    App {
        app: App,
        private: usize,
    },
}

impl Run {
    fn label(self) -> String {
        match self {
            Run::DiskOurs => "disk-ours".into(),
            Run::DiskQemu => "disk-qemu".into(),
            Run::Plain => "plain".into(),
            Run::App { app, .. } => format!("app-{}", app.name),
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    runs: usize,
    app_runs: usize,
    template: PathBuf,
    /// Guest memory of the disk runs.
    disk_mem_mib: u64,
    /// Guest memory of the plain and template boots (as the template tests give them).
    app_mem_mib: u64,
    disk_timeout_s: u64,
    app_timeout_s: u64,
    /// Summarize this saved output (a run's stderr progress or the lab console) instead
    /// of running: what a run stopped early still measured.
    summarize: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runs: 3,
            app_runs: 3,
            template: default_template(),
            disk_mem_mib: 512,
            app_mem_mib: 1536,
            disk_timeout_s: 240,
            app_timeout_s: 600,
            summarize: None,
        }
    }
}

fn default_template() -> PathBuf {
    match std::env::var_os("BULKHEAD_TEMPLATE_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => bulkhead_supervisor::template::default_image_path("debian-12"),
    }
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = |v: Option<&String>| -> Result<u64, String> {
            let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{flag} `{v}` is not a whole number"))
        };
        match flag.as_str() {
            "--runs" => cfg.runs = value(it.next())? as usize,
            "--app-runs" => cfg.app_runs = value(it.next())? as usize,
            "--disk-timeout" => cfg.disk_timeout_s = value(it.next())?,
            "--app-timeout" => cfg.app_timeout_s = value(it.next())?,
            "--summarize" => {
                cfg.summarize = Some(PathBuf::from(it.next().ok_or("--summarize needs a value")?))
            }
            "--template" => {
                cfg.template = PathBuf::from(it.next().ok_or("--template needs a value")?)
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if cfg.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(cfg)
}

/// Disk runs alternate which VMM goes first in each round, then the plain boots, then the
/// apps, rotated per round; every app run gets its own fresh private disk.
fn schedule(cfg: &Config) -> Vec<Run> {
    let mut runs = Vec::new();
    for round in 0..cfg.runs {
        let pair = [Run::DiskOurs, Run::DiskQemu];
        runs.extend([pair[round % 2], pair[(round + 1) % 2]]);
    }
    runs.extend(std::iter::repeat_n(Run::Plain, cfg.runs));
    let mut private = 0;
    for round in 0..cfg.app_runs {
        for i in 0..APPS.len() {
            let app = APPS[(round + i) % APPS.len()];
            runs.push(Run::App { app, private });
            private += 1;
        }
    }
    runs
}

/// Where the programs and files are on the machine that runs the schedule.
#[derive(Debug, Clone)]
struct Places {
    lab_measure: String,
    vmm: String,
    qemu: String,
    kernel: String,
    /// The guest initramfs with the read test, plain, and per app with its settings.
    disk_initrd: String,
    plain_initrd: String,
    /// Holds `initrd-<app>` for each app.
    app_initrd_dir: String,
    template: String,
    /// Private disks by index.
    privates: Vec<String>,
}

impl Places {
    fn app_initrd(&self, app: App) -> String {
        format!("{}/initrd-{}", self.app_initrd_dir, app.name)
    }

    /// Inside the lab machine: the template is its first drive, private disk `i` its
    /// drive `i + 1`.
    fn in_lab(private_disks: usize) -> Self {
        Self {
            lab_measure: "/lab-measure".into(),
            vmm: "/bulkhead-vmm".into(),
            qemu: format!("/usr/bin/{QEMU}"),
            kernel: "/guest/vmlinux".into(),
            disk_initrd: "/guest/initrd-disk".into(),
            plain_initrd: "/guest/initrd".into(),
            app_initrd_dir: "/guest".into(),
            template: "/dev/vda".into(),
            privates: (0..private_disks).map(|i| lab_drive(i + 1)).collect(),
        }
    }
}

/// The lab machine's `/dev/vdX` for its `index`th virtio-blk-pci drive (`vda`, …, `vdz`,
/// `vdaa`, …, the kernel's naming).
fn lab_drive(index: usize) -> String {
    if index < 26 {
        format!("/dev/vd{}", (b'a' + index as u8) as char)
    } else {
        let (hi, lo) = (index / 26 - 1, index % 26);
        format!(
            "/dev/vd{}{}",
            (b'a' + hi as u8) as char,
            (b'a' + lo as u8) as char
        )
    }
}

fn run_timeout_s(cfg: &Config, run: Run) -> u64 {
    match run {
        Run::DiskOurs | Run::DiskQemu | Run::Plain => cfg.disk_timeout_s,
        Run::App { .. } => cfg.app_timeout_s,
    }
}

/// The whole run's bound: lab-measure's limit plus the margin for stopping it.
fn run_bound_s(cfg: &Config, run: Run) -> u64 {
    run_timeout_s(cfg, run) + bench::CUT_MARGIN_S
}

/// The command for one run: the VMM or QEMU under lab-measure, which stops it at the
/// run's marker and reports spawn-to-marker time. No memory sampling: reading smaps walks
/// guest RAM's page tables, which under TCG would slow what is being measured.
fn run_command(cfg: &Config, run: Run, p: &Places) -> Vec<String> {
    let timeout = run_timeout_s(cfg, run);
    let (marker, mem) = match run {
        Run::DiskOurs | Run::DiskQemu => (DONE, cfg.disk_mem_mib),
        Run::Plain => (lab::READY_MARKER, cfg.app_mem_mib),
        Run::App { .. } => (APP_READY, cfg.app_mem_mib),
    };
    let mut cmd: Vec<String> = vec![
        p.lab_measure.clone(),
        "--label".into(),
        run.label(),
        "--marker".into(),
        marker.into(),
        "--guest-mem-mib".into(),
        mem.to_string(),
        "--timeout-s".into(),
        timeout.to_string(),
        "--no-memory".into(),
    ];
    if matches!(run, Run::DiskOurs | Run::DiskQemu) {
        // The guest's result line must reach the console.
        cmd.push("--echo".into());
    }
    cmd.push("--".into());
    let cmdline = vmm_core::launch::DEFAULT_CMDLINE;
    let ours = |initrd: &str, display: &str, disks: &[String]| {
        let mut c = vec![
            p.vmm.clone(),
            "run".into(),
            format!("--kernel={}", p.kernel),
            format!("--initrd={initrd}"),
            format!("--mem={mem}M"),
            "--vcpus=1".into(),
            format!("--cmdline={cmdline}"),
            format!("--display={display}"),
        ];
        c.extend(disks.iter().map(|d| format!("--disk={d}")));
        c.extend(["--serial=-".into(), format!("--timeout={timeout}")]);
        c
    };
    match run {
        // Not `id=root`: that would boot the template instead of running the test.
        Run::DiskOurs => cmd.extend(ours(
            &p.disk_initrd,
            "none",
            &[format!("{},ro,id=bench", p.template)],
        )),
        Run::DiskQemu => cmd.extend(
            [
                p.qemu.as_str(),
                "-M",
                "microvm",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-smp",
                "1",
                "-m",
                &format!("{mem}M"),
                "-kernel",
                &p.kernel,
                "-initrd",
                &p.disk_initrd,
                "-append",
                cmdline,
                "-no-reboot",
                "-drive",
                &format!("file={},if=none,id=d,format=raw,readonly=on", p.template),
                "-device",
                "virtio-blk-device,drive=d",
            ]
            .map(String::from),
        ),
        Run::Plain => cmd.extend(ours(&p.plain_initrd, "1024x768", &[])),
        Run::App { app, private } => cmd.extend(ours(
            &p.app_initrd(app),
            "1024x768",
            &[
                format!("{},ro,id=root", p.template),
                format!("{},id=private", p.privates[private]),
            ],
        )),
    }
    cmd
}

/// The guest's /test.sh for the disk runs: time the read with /proc/uptime (busybox's
/// `date` has no nanoseconds; 10 ms against reads of seconds), print one line ending in
/// the marker, power off.
fn read_test_script() -> String {
    format!(
        r#"t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M count={READ_MIB} 2>/tmp/dd.log
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
echo "{RESULT} rc=$rc bytes={bytes} t0=$t0 t1=$t1 {DONE}"
[ $rc = 0 ] || cat /tmp/dd.log
poweroff -f
"#,
        bytes = READ_MIB << 20,
    )
}

/// The default guest initramfs with a second archive appended (how the supervisor and
/// the lab tests add files).
fn initrd_with(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut bytes = bench::read(&lab::guest().initrd);
    let mut w = CpioWriter::new(Vec::new());
    for (path, mode, data) in files {
        w.file(path, *mode, data).expect("cpio file");
    }
    bytes.extend_from_slice(&w.finish().expect("cpio archive"));
    bytes
}

fn disk_initrd() -> Vec<u8> {
    let script = format!("#!/bin/sh\n{}", read_test_script());
    initrd_with(&[("test.sh", 0o755, script.as_bytes())])
}

/// The partition's settings as the supervisor appends them for a template partition.
fn app_initrd(app: App) -> Vec<u8> {
    let config = bulkhead_supervisor::launch::GuestConfig {
        name: app.name.into(),
        app: app.command.into(),
        keyboard: "us".into(),
    };
    initrd_with(&[(
        "etc/bulkhead/partition.conf",
        0o644,
        config.to_shell().as_bytes(),
    )])
}

/// Claws Mail's account and folder list, so it opens its main window, not its wizard.
const MAIL_HOME: [(&str, &str); 7] = [
    (
        ".claws-mail/accountrc",
        "[Account: 1]\naccount_name=user@localhost\nis_default=1\nname=Partition user\n\
         address=user@localhost\nprotocol=6\n",
    ),
    (
        ".claws-mail/folderlist.xml",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<folderlist>
<folder type="mh" name="Mailbox" path="Mail" collapsed="0">
<folderitem type="inbox" name="inbox" path="inbox"/>
<folderitem type="outbox" name="sent" path="sent"/>
<folderitem type="queue" name="queue" path="queue"/>
<folderitem type="trash" name="trash" path="trash"/>
<folderitem type="draft" name="draft" path="draft"/>
</folder>
</folderlist>
"#,
    ),
    ("Mail/inbox/.keep", ""),
    ("Mail/sent/.keep", ""),
    ("Mail/queue/.keep", ""),
    ("Mail/trash/.keep", ""),
    ("Mail/draft/.keep", ""),
];

/// A fresh sparse ext4 private disk for `app`, its home pre-filled (`mke2fs -d`) and owned
/// by the guest's user, as a first start would find it.
fn make_private_disk(dir: &Path, index: usize, app: App) -> PathBuf {
    let home = dir.join(format!("home-{index}"));
    std::fs::create_dir_all(&home).expect("creating a private disk's home");
    if app.name == "mail" {
        for (name, contents) in MAIL_HOME {
            let p = home.join(name);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("creating dirs");
            std::fs::write(&p, contents).expect("writing a mail fixture file");
        }
    }
    let ok = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(&home)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "chown of a private disk's home (needs root)");
    let image = dir.join(format!("private-{index}.img"));
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(512 << 20))
        .expect("creating a private disk");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-d"])
        .arg(&home)
        .arg(&image)
        .output()
        .expect("running mke2fs");
    assert!(out.status.success(), "mke2fs -d: {out:?}");
    image
}

/// The private disk of each app run, by index.
fn private_disks(dir: &Path, runs: &[Run]) -> Vec<PathBuf> {
    let mut disks: Vec<(usize, PathBuf)> = runs
        .iter()
        .filter_map(|r| match *r {
            Run::App { app, private } => Some((private, make_private_disk(dir, private, app))),
            _ => None,
        })
        .collect();
    disks.sort_by_key(|(i, _)| *i);
    disks.into_iter().map(|(_, p)| p).collect()
}

/// The lab init: warm the lab's page cache with the part of the template every read
/// run reads (so both VMMs read the same cached bytes, not the lab's emulated disk once
/// each), then every run, each cut at its own bound.
fn lab_init(cfg: &Config, runs: &[Run], p: &Places) -> String {
    let last = lab_drive(p.privates.len());
    let modules: Vec<&str> = lab::LAB_DISK_MODULES
        .iter()
        .filter_map(|m| m.rsplit('/').next())
        .collect();
    let mut init = format!(
        r#"{prologue}for m in {modules}; do insmod /modules/$m.ko || echo "LAB: insmod $m failed"; done
i=0; while [ ! -b {last} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b {last} ] || echo "LAB: drive {last} never appeared"
dd if={template} of=/dev/null bs=1M count={READ_MIB} 2>/dev/null || echo "LAB: warming the cache failed"
echo "===BENCH-START==="
"#,
        prologue = lab::lab_init_prologue(),
        modules = modules.join(" "),
        template = p.template,
    );
    for (i, run) in runs.iter().enumerate() {
        let cmd = run_command(cfg, *run, p);
        init.push_str(&bench::bounded_run(
            i,
            &run.label(),
            run_bound_s(cfg, *run),
            &cmd,
        ));
    }
    init.push_str("echo \"===BENCH-END===\"\npoweroff -f\n");
    init
}

/// Measurements from the console or stdout of all runs.
#[derive(Debug, Default)]
struct Results {
    measures: Vec<bench::Measure>,
    /// (label, MB/s) of every disk run whose guest reported a read.
    reads: Vec<(String, f64)>,
    /// Disk runs whose guest reported a failed read, with the line.
    read_errors: Vec<String>,
}

/// MB/s (10^6 bytes per second, as dd reports) from a `DISKBENCH-RESULT` line:
/// `Err` with the line when the read failed or the line is garbled.
fn parse_read(line: &str) -> Option<Result<f64, String>> {
    let rest = &line[line.find(RESULT)? + RESULT.len()..];
    let get = |key: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let parsed = (|| {
        let rc: i32 = get("rc")?.parse().ok()?;
        let bytes: f64 = get("bytes")?.parse().ok()?;
        let t0: f64 = get("t0")?.parse().ok()?;
        let t1: f64 = get("t1")?.parse().ok()?;
        Some((rc, bytes, t1 - t0))
    })();
    Some(match parsed {
        Some((0, bytes, secs)) if secs > 0.0 => Ok(bytes / secs / 1e6),
        // Faster than /proc/uptime's 10 ms tick: say so rather than divide by zero.
        Some((0, _, _)) => Err(format!("read took under 10 ms: {}", line.trim())),
        _ => Err(line.trim().to_string()),
    })
}

/// Splits the output at the run markers and reads each run's figures.
fn parse_results(text: &str) -> Results {
    let text = text.replace('\r', "");
    let mut r = Results::default();
    let mut label = String::new();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("===BENCH-RUN ") {
            label = rest
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .trim_end_matches("===")
                .to_string();
        }
        if let Some(m) = bench::parse_measure(line) {
            r.measures.push(m);
        }
        match parse_read(line) {
            Some(Ok(mbs)) => r.reads.push((label.clone(), mbs)),
            Some(Err(e)) => r.read_errors.push(format!("{label}: {e}")),
            None => {}
        }
    }
    r
}

/// Median of `values` (any order), `None` when empty.
fn median_f(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn reads_of(r: &Results, label: &str) -> Vec<f64> {
    r.reads
        .iter()
        .filter(|(l, _)| l == label)
        .map(|(_, v)| *v)
        .collect()
}

/// Seconds from spawn to marker of the successful runs labelled `label`.
fn seconds_of(r: &Results, label: &str) -> Vec<f64> {
    r.measures
        .iter()
        .filter(|m| m.label == label)
        .filter_map(|m| m.ms)
        .map(|ms| ms as f64 / 1000.0)
        .collect()
}

/// The figures of the template's manifest the benchmark reports (a few top-level fields,
/// read without a JSON library: the tests crate has none).
#[derive(Debug, PartialEq)]
struct ManifestFacts {
    image_size: Option<u64>,
    duration_ms: Option<u64>,
    built_at: Option<String>,
    mode: Option<String>,
    packages: usize,
}

/// The value of top-level `"key": value` (a number or a string without escapes) in the
/// manifest's pretty-printed JSON; package entries carry only `name` and `version`, so
/// these keys are unambiguous.
fn json_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let rest = text[text.find(&pat)? + pat.len()..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return s.split('"').next();
    }
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

fn parse_manifest(text: &str) -> ManifestFacts {
    ManifestFacts {
        image_size: json_field(text, "image_size").and_then(|v| v.parse().ok()),
        duration_ms: json_field(text, "duration_ms").and_then(|v| v.parse().ok()),
        built_at: json_field(text, "built_at").map(String::from),
        mode: json_field(text, "mode").map(String::from),
        packages: text.matches("\"version\":").count(),
    }
}

/// The manifest next to the image, else the one of the installed `debian-12` (which may
/// describe another build than `--template`: both sizes are printed).
fn manifest_path(template: &Path) -> PathBuf {
    let beside = template.with_file_name("manifest.json");
    if beside.is_file() {
        return beside;
    }
    bulkhead_supervisor::template::default_image_path("debian-12").with_file_name("manifest.json")
}

/// Section 3: the template's build time and size, from its manifest when there is one.
fn template_report(cfg: &Config) -> String {
    let manifest = manifest_path(&cfg.template);
    let size = std::fs::metadata(&cfg.template).map(|m| m.len()).ok();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let size_text = size.map_or("unknown".into(), |b| {
        format!("{b} bytes ({:.1} MiB)", mib(b))
    });
    match std::fs::read_to_string(&manifest) {
        Ok(text) => {
            let m = parse_manifest(&text);
            format!(
                "template image {}: {size_text}; manifest {}: build time {}, image_size {}, \
                 built {} ({} mode), {} packages",
                cfg.template.display(),
                manifest.display(),
                m.duration_ms.map_or("unknown".into(), |ms| format!(
                    "{:.1} s",
                    ms as f64 / 1000.0
                )),
                m.image_size.map_or("unknown".into(), |b| format!(
                    "{b} bytes ({:.1} MiB)",
                    mib(b)
                )),
                m.built_at.as_deref().unwrap_or("?"),
                m.mode.as_deref().unwrap_or("?"),
                m.packages,
            )
        }
        Err(_) => format!(
            "template image {}: {size_text}; no manifest at {}: build time unknown",
            cfg.template.display(),
            manifest.display()
        ),
    }
}

fn run_lab(cfg: &Config, runs: &[Run], privates: &[PathBuf]) -> (String, Duration) {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let p = Places::in_lab(privates.len());
    let guest = lab::guest();
    let mut cpio = LabCpio::with_modules(&lab::LAB_DISK_MODULES);
    cpio.add(&p.vmm, 0o755, &bench::read(&lab::static_vmm()));
    cpio.add(
        &p.lab_measure,
        0o755,
        &bench::read(&bench::static_lab_measure()),
    );
    cpio.add(&p.kernel, 0o644, &bench::read(&guest.kernel));
    cpio.add(&p.plain_initrd, 0o644, &bench::read(&guest.initrd));
    cpio.add(&p.disk_initrd, 0o644, &disk_initrd());
    for app in APPS {
        cpio.add(&p.app_initrd(app), 0o644, &app_initrd(app));
    }
    cpio.add_qemu(&p.qemu);
    cpio.add("/init", 0o755, lab_init(cfg, runs, &p).as_bytes());
    let bytes = cpio.finish();
    let cpio_path = dir.path().join("disk-bench.cpio");
    std::fs::write(&cpio_path, &bytes).expect("writing the lab initramfs");
    // The largest guest, the read's page cache, the initramfs (twice while it unpacks),
    // the lab kernel and QEMU.
    let outer_mem =
        cfg.app_mem_mib.max(cfg.disk_mem_mib) + READ_MIB + 1024 + 2 * (bytes.len() as u64 >> 20);
    eprintln!(
        "lab machine: {outer_mem} MiB, initramfs {} MiB, {} runs",
        bytes.len() >> 20,
        runs.len()
    );
    let mut machine = lab::lab_machine(outer_mem, &cpio_path);
    let drives = std::iter::once((cfg.template.as_path(), true))
        .chain(privates.iter().map(|p| (p.as_path(), false)));
    for (i, (path, ro)) in drives.enumerate() {
        let ro = if ro { ",readonly=on" } else { "" };
        machine
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d{i},format=raw{ro}",
                path.display()
            ))
            .args(["-device", &format!("virtio-blk-pci,drive=d{i}")]);
    }
    let bounds: Vec<u64> = runs.iter().map(|r| run_bound_s(cfg, *r)).collect();
    const PROGRESS: [&str; 5] = ["MEASURE ", "===BENCH", "lab-measure:", "LAB:", RESULT];
    bench::run_lab_schedule(machine, &bounds, Duration::from_secs(300), &PROGRESS)
}

fn run_direct(cfg: &Config, runs: &[Run], privates: &[PathBuf], dir: &Path) -> String {
    let guest = lab::guest();
    let write = |name: &str, bytes: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("writing an initramfs");
        path.display().to_string()
    };
    for app in APPS {
        write(&format!("initrd-{}", app.name), app_initrd(app));
    }
    let p = Places {
        lab_measure: bench::static_lab_measure().display().to_string(),
        vmm: lab::static_vmm().display().to_string(),
        qemu: QEMU.into(),
        kernel: guest.kernel.display().to_string(),
        disk_initrd: write("initrd-disk", disk_initrd()),
        plain_initrd: guest.initrd.display().to_string(),
        app_initrd_dir: dir.display().to_string(),
        template: cfg.template.display().to_string(),
        privates: privates.iter().map(|p| p.display().to_string()).collect(),
    };
    // Warm the host's page cache as the lab warms its own.
    let _ = Command::new("dd")
        .arg(format!("if={}", p.template))
        .args(["of=/dev/null", "bs=1M", &format!("count={READ_MIB}")])
        .status();
    let _machine = lab::lock_machine_wide();
    let mut text = String::new();
    for (i, run) in runs.iter().enumerate() {
        text.push_str(&format!("===BENCH-RUN {i} {}===\n", run.label()));
        let out = bench::run_bounded(
            &run.label(),
            &run_command(cfg, *run, &p),
            Duration::from_secs(run_bound_s(cfg, *run)),
        );
        eprint!("{out}");
        text.push_str(&out);
    }
    text
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn list(values: &[f64], digits: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("disk-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runs = schedule(&cfg);
    if let Some(log) = &cfg.summarize {
        let text = match std::fs::read_to_string(log) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("disk-bench: reading {}: {e}", log.display());
                return ExitCode::from(2);
            }
        };
        println!("disk-bench: summary of {}", log.display());
        return report(&cfg, &runs, &parse_results(&text));
    }
    if !cfg.template.is_file() {
        eprintln!(
            "disk-bench: no template image at {} (set BULKHEAD_TEMPLATE_IMAGE or build it \
             with `bulkhead template build debian-12`)",
            cfg.template.display()
        );
        return ExitCode::from(2);
    }
    println!(
        "disk-bench: {} read runs each of ours/QEMU ({READ_MIB} MiB from {}, guest {} MiB), \
         {} plain boots, {} runs of each app (guest {} MiB)",
        cfg.runs,
        cfg.template.display(),
        cfg.disk_mem_mib,
        cfg.runs,
        cfg.app_runs,
        cfg.app_mem_mib
    );
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let privates = private_disks(dir.path(), &runs);
    let runner = lab::runner();
    let started = Instant::now();
    let text = match runner {
        Runner::Lab => run_lab(&cfg, &runs, &privates).0,
        Runner::Direct => run_direct(&cfg, &runs, &privates, dir.path()),
    };
    println!("\nrunner: {runner}");
    println!("total wall time: {:.1} s", started.elapsed().as_secs_f64());
    // The whole output (guest lines, lab-measure's reasons with the guest's last lines)
    // is the only evidence of why a run failed; keep it, and it can be summarized again.
    let log = std::env::var_os("BULKHEAD_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("disk-bench.console.log");
    match std::fs::write(&log, &text) {
        Ok(()) => println!("full output: {}", log.display()),
        Err(e) => println!("could not keep the full output at {}: {e}", log.display()),
    }
    report(&cfg, &runs, &parse_results(&text))
}

/// Prints every run, the medians and the ratio; fails when a run failed or is missing.
fn report(cfg: &Config, runs: &[Run], results: &Results) -> ExitCode {
    println!("\n1. sequential read of {READ_MIB} MiB in the guest (dd bs=1M, /proc/uptime):");
    for (label, mbs) in &results.reads {
        println!("  {label:<10} {mbs:>8.1} MB/s");
    }
    for e in &results.read_errors {
        println!("  FAILED {e}");
    }
    let ours = reads_of(results, "disk-ours");
    let qemu = reads_of(results, "disk-qemu");
    let (mo, mq) = (median_f(&ours), median_f(&qemu));
    println!(
        "  median: ours {} MB/s [{}], QEMU {} MB/s [{}]",
        fmt_opt(mo, 1),
        list(&ours, 1),
        fmt_opt(mq, 1),
        list(&qemu, 1)
    );
    if let (Some(o), Some(q)) = (mo, mq) {
        println!("  ratio ours/QEMU (MB/s, medians): {:.3}", o / q);
    }

    println!("\n2. start to app-ready (spawn of bulkhead-vmm until `{APP_READY}` on serial):");
    for app in APPS {
        let s = seconds_of(results, &format!("app-{}", app.name));
        println!(
            "  {:<8} median {:>7} s  [{}]  ({})",
            app.name,
            fmt_opt(median_f(&s), 1),
            list(&s, 1),
            app.command
        );
    }
    let plain = seconds_of(results, "plain");
    println!(
        "  context: plain boot to `{}` median {} s [{}]",
        lab::READY_MARKER,
        fmt_opt(median_f(&plain), 1),
        list(&plain, 1)
    );

    println!("\n3. {}", template_report(cfg));

    let failed: Vec<&bench::Measure> = results.measures.iter().filter(|m| m.ms.is_none()).collect();
    let missing = runs.len().saturating_sub(results.measures.len());
    if !failed.is_empty() || missing > 0 || !results.read_errors.is_empty() {
        println!("\n{} failed, {missing} missing:", failed.len());
        for m in failed {
            println!("  {}: {}", m.label, m.reason);
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            template: PathBuf::from("/t/root.sqfs"),
            ..Config::default()
        }
    }

    #[test]
    fn disk_runs_interleave_ours_and_qemu_and_alternate_who_goes_first() {
        let s = schedule(&cfg());
        let disk: Vec<Run> = s
            .iter()
            .copied()
            .filter(|r| matches!(r, Run::DiskOurs | Run::DiskQemu))
            .collect();
        assert_eq!(
            disk,
            [
                Run::DiskOurs,
                Run::DiskQemu,
                Run::DiskQemu,
                Run::DiskOurs,
                Run::DiskOurs,
                Run::DiskQemu
            ]
        );
        assert_eq!(s.iter().filter(|r| **r == Run::Plain).count(), 3);
    }

    #[test]
    fn every_app_runs_once_per_round_on_its_own_fresh_private_disk() {
        let s = schedule(&cfg());
        let apps: Vec<(App, usize)> = s
            .iter()
            .filter_map(|r| match *r {
                Run::App { app, private } => Some((app, private)),
                _ => None,
            })
            .collect();
        assert_eq!(apps.len(), 9);
        for round in apps.chunks(3) {
            for app in APPS {
                assert_eq!(round.iter().filter(|(a, _)| *a == app).count(), 1);
            }
        }
        let disks: Vec<usize> = apps.iter().map(|(_, d)| *d).collect();
        assert_eq!(disks, (0..9).collect::<Vec<_>>());
        assert_ne!(apps[0].0, apps[3].0, "the first app rotates");
    }

    #[test]
    fn both_readers_get_the_same_image_kernel_initrd_and_memory() {
        let p = Places::in_lab(0);
        let ours = run_command(&cfg(), Run::DiskOurs, &p).join(" ");
        let qemu = run_command(&cfg(), Run::DiskQemu, &p).join(" ");
        assert!(ours
            .contains("--kernel=/guest/vmlinux --initrd=/guest/initrd-disk --mem=512M --vcpus=1"));
        assert!(ours.contains("--disk=/dev/vda,ro,id=bench"));
        assert!(qemu.contains("-M microvm"));
        assert!(qemu.contains("-m 512M -kernel /guest/vmlinux -initrd /guest/initrd-disk"));
        assert!(qemu.contains("file=/dev/vda,if=none,id=d,format=raw,readonly=on"));
        assert!(qemu.contains("-device virtio-blk-device,drive=d"));
        for c in [&ours, &qemu] {
            assert!(c.contains("--marker DISKBENCH-DONE"));
            assert!(c.contains("--no-memory --echo --"));
        }
    }

    #[test]
    fn app_runs_boot_the_template_read_only_with_their_private_disk() {
        let p = Places::in_lab(4);
        let run = Run::App {
            app: APPS[1],
            private: 3,
        };
        let cmd = run_command(&cfg(), run, &p).join(" ");
        assert!(cmd.contains("--label app-mail --marker BULKHEAD-APP-READY"));
        assert!(cmd.contains("--initrd=/guest/initrd-mail --mem=1536M"));
        assert!(cmd.contains("--disk=/dev/vda,ro,id=root --disk=/dev/vde,id=private"));
        assert!(!cmd.contains("--echo"));
    }

    #[test]
    fn app_initramfs_carries_the_partition_settings() {
        let config = bulkhead_supervisor::launch::GuestConfig {
            name: "mail".into(),
            app: APPS[1].command.into(),
            keyboard: "us".into(),
        };
        assert!(config.to_shell().contains("BULKHEAD_APP='claws-mail'"));
    }

    #[test]
    fn lab_drives_follow_the_kernels_naming() {
        assert_eq!(lab_drive(0), "/dev/vda");
        assert_eq!(lab_drive(25), "/dev/vdz");
        assert_eq!(lab_drive(26), "/dev/vdaa");
    }

    #[test]
    fn the_lab_init_warms_the_cache_then_wraps_every_run_in_its_bound() {
        let c = cfg();
        let runs = schedule(&c);
        let p = Places::in_lab(9);
        let init = lab_init(&c, &runs, &p);
        let warm = init
            .find("dd if=/dev/vda of=/dev/null bs=1M count=256")
            .unwrap();
        let start = init.find("===BENCH-START===").unwrap();
        assert!(warm < start);
        assert!(
            init.contains("[ ! -b /dev/vdj ]"),
            "waits for the last drive"
        );
        assert_eq!(init.matches("===BENCH-RUN ").count(), runs.len());
        assert_eq!(init.matches("\nsetsid '/lab-measure'").count(), runs.len());
        assert_eq!(init.matches("wait $run\n").count(), runs.len());
        assert_eq!(
            init.matches("setsid sh -c 'sleep 630;").count(),
            9,
            "app runs: 600 s + the margin"
        );
        assert_eq!(init.matches("setsid sh -c 'sleep 270;").count(), 9);
        assert!(init.trim_end().ends_with("poweroff -f"));
    }

    #[test]
    fn read_results_become_megabytes_per_second() {
        let line = "DISKBENCH-RESULT rc=0 bytes=268435456 t0=3.10 t1=5.10 DISKBENCH-DONE\r";
        let mbs = parse_read(line).unwrap().unwrap();
        assert!((mbs - 134.217728).abs() < 1e-6);
        assert!(parse_read("BULKHEAD-READY").is_none());
    }

    #[test]
    fn failed_or_too_fast_reads_are_errors_not_numbers() {
        assert!(
            parse_read("DISKBENCH-RESULT rc=1 bytes=1 t0=1 t1=2 DISKBENCH-DONE")
                .unwrap()
                .is_err()
        );
        let fast = parse_read("DISKBENCH-RESULT rc=0 bytes=1 t0=1.00 t1=1.00 DISKBENCH-DONE");
        assert!(fast.unwrap().unwrap_err().contains("under 10 ms"));
        assert!(parse_read("DISKBENCH-RESULT rc=0 bytes=1 t0=x")
            .unwrap()
            .is_err());
    }

    #[test]
    fn results_are_attributed_to_the_run_they_follow() {
        let text = "===BENCH-RUN 0 disk-ours===\r\nboot noise\r\n\
            DISKBENCH-RESULT rc=0 bytes=100000000 t0=1.00 t1=2.00 DISKBENCH-DONE\r\n\
            MEASURE label=disk-ours ok=1 ms=9000\n\
            ===BENCH-RUN 1 disk-qemu===\n\
            DISKBENCH-RESULT rc=0 bytes=100000000 t0=1.00 t1=1.50 DISKBENCH-DONE\n\
            MEASURE label=disk-qemu ok=1 ms=8000\n\
            ===BENCH-RUN 2 app-work===\n\
            MEASURE label=app-work ok=0 reason=cut by the lab after the per-run bound of 630 s\n";
        let r = parse_results(text);
        assert_eq!(
            r.reads,
            [
                ("disk-ours".to_string(), 100.0),
                ("disk-qemu".to_string(), 200.0)
            ]
        );
        assert_eq!(r.measures.len(), 3);
        assert_eq!(seconds_of(&r, "disk-ours"), [9.0]);
        assert!(seconds_of(&r, "app-work").is_empty());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median_f(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_f(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median_f(&[]), None);
    }

    #[test]
    fn manifest_fields_are_read_without_touching_package_entries() {
        let text = r#"{
  "format": 1,
  "name": "debian-12",
  "packages": [
    {
      "name": "adduser",
      "version": "3.134"
    },
    {
      "name": "bash",
      "version": "5.2"
    }
  ],
  "image_size": 314544128,
  "built_at": "2026-12-02T07:29:29Z",
  "duration_ms": 454902,
  "mode": "root"
}"#;
        assert_eq!(
            parse_manifest(text),
            ManifestFacts {
                image_size: Some(314544128),
                duration_ms: Some(454902),
                built_at: Some("2026-12-02T07:29:29Z".into()),
                mode: Some("root".into()),
                packages: 2,
            }
        );
        let empty = parse_manifest("{}");
        assert_eq!((empty.duration_ms, empty.image_size), (None, None));
    }
}
