//! Runs the real `bulkhead-vmm` against the stock Debian guest: directly on `/dev/kvm`
//! when the host has VT-x/AMD-V, otherwise inside the hardware-virtualization lab (QEMU
//! TCG with emulated SVM, a Debian kernel loading kvm-amd, our static VMM inside it).
//! See ../shared/lab/README.md for why and how.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bulkhead_supervisor::guest_image::{self, cpio::CpioWriter, GuestImage};
use vmm_core::hostcheck::{self, Virtualization};

pub const READY_MARKER: &str = "BULKHEAD-READY";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// The host's /dev/kvm has hardware virtualization.
    Direct,
    /// QEMU TCG with nested SVM.
    Lab,
}

impl std::fmt::Display for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Runner::Direct => write!(f, "direct (/dev/kvm with hardware virtualization)"),
            Runner::Lab => write!(f, "lab (QEMU TCG, emulated SVM, kvm-amd inside)"),
        }
    }
}

pub fn runner() -> Runner {
    if std::env::var_os("BULKHEAD_FORCE_LAB").is_some() {
        return Runner::Lab;
    }
    match hostcheck::open_kvm() {
        Ok((_, Virtualization::Hardware)) => Runner::Direct,
        _ => Runner::Lab,
    }
}

/// One guest boot: how to run the VMM and what the guest's /test.sh does.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub mem_mib: u64,
    pub vcpus: u8,
    pub display: Option<(u32, u32)>,
    pub cmdline: String,
    /// Body of /test.sh in the guest (busybox sh), run after the ready marker.
    pub test_script: String,
    /// Extra files for the guest's test archive: (path, mode, bytes).
    pub test_files: Vec<(String, u32, Vec<u8>)>,
    /// Take the screenshot when this appears on the guest serial console.
    pub screenshot_on: Option<String>,
    /// Seconds before the VMM stops the guest.
    pub timeout_s: u64,
    /// Run the partition through the real supervisor (`lab-supervise`) with these steps
    /// instead of a bare `bulkhead-vmm run`; its output files land in [`RunOutput::files`].
    pub supervise: Option<Vec<String>>,
    /// virtio-blk disks for a bare run, in order (`/dev/vda`, …). Each comes back, as the
    /// guest left it, in [`RunOutput::files`] under its name.
    pub disks: Vec<LabDisk>,
    /// For a template partition: the app its session starts (the partition's settings
    /// go to the guest as the app's supervisor sends them, or in the test archive for a
    /// bare run).
    pub app: Option<String>,
    /// A network (`--net passt` for a bare run; for a supervised one the supervisor starts
    /// passt and the relay with `allow` as the partition's rules); such runs always use
    /// the lab machine, whose only interface is a dummy one, so nothing leaves it.
    pub network: Option<LabNetwork>,
    /// Snapshot the bare run at a marker, then restore it (lab runner only).
    pub snapshot: Option<LabSnapshot>,
    /// Sample the VMM's memory once a second (lab runner only): [`RunOutput::files`]
    /// gets `rss.log`, see [`RssSample`].
    pub sample_rss: bool,
    /// Boot the distribution's compressed bzImage instead of the `vmlinux` extracted
    /// from it (what partitions boot).
    pub bzimage: bool,
    /// Partitions of `mem_mib` each the supervised steps add (`spawn:NAME`): the lab
    /// machine gets their memory too.
    pub extra_partitions: u64,
}

impl GuestRun {
    /// The kernel file this run boots, on the host.
    pub fn kernel_file(&self) -> &'static Path {
        if self.bzimage {
            &guest().bzimage
        } else {
            &guest().kernel
        }
    }
}

/// One line of a run's `rss.log`: the lab machine's uptime, the largest `VmRSS` and
/// `RssAnon` of its processes (the VMM's: nothing else there holds guest RAM), and the
/// last `PHASE-…` word the guest printed on its serial console so far.
#[derive(Debug, Clone, PartialEq)]
pub struct RssSample {
    pub uptime_s: f64,
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub phase: String,
}

/// Parses `rss.log`; lines that do not parse (a sample cut by poweroff) are left out.
pub fn parse_rss_log(text: &str) -> Vec<RssSample> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(RssSample {
                uptime_s: f.next()?.parse().ok()?,
                rss_kib: f.next()?.parse().ok()?,
                anon_kib: f.next()?.parse().ok()?,
                phase: f.next()?.to_string(),
            })
        })
        .collect()
}

/// The lab /init's background sampler behind [`GuestRun::sample_rss`]: one `awk` per
/// second (forks are slow under TCG), ends with the lab machine.
const RSS_SAMPLER: &str = r#"( while :; do
  m=$(awk '/^VmRSS:/ { if ($2 > r) r = $2 } /^RssAnon:/ { if ($2 > a) a = $2 } END { print r+0, a+0 }' /proc/[0-9]*/status 2>/dev/null)
  ph=$(grep -o 'PHASE-[A-Z0-9-]*' /guest.log 2>/dev/null | tail -n 1)
  echo "$(cut -d' ' -f1 /proc/uptime) $m ${ph:-PHASE-NONE}"
  sleep 1
done ) >/out/rss.log 2>/dev/null &
"#;

/// `run --snapshot-on MARKER`, then `restores` times `bulkhead-vmm restore` of that one
/// snapshot (sandboxed, as a bare run is); restore `i`'s serial console comes back in
/// [`RunOutput::files`] as `restore{i}.log`, its exit code in the VMM's stderr as
/// `restore {i} exit N`.
#[derive(Debug, Clone)]
pub struct LabSnapshot {
    pub marker: String,
    pub restores: u8,
    /// After the restores, restore two damaged copies too: one with its state file cut
    /// to half (`damaged truncated exit N`, its serial in `damaged-truncated.log`) and one
    /// with its last byte changed, inside the last record's payload (`damaged corrupted exit N`).
    pub damaged: bool,
}

/// The lab init's lines that restore the damaged copies of `/snap` ([`LabSnapshot`]).
const DAMAGED_RESTORES: &str = r#"for kind in truncated corrupted; do
  rm -rf /snap-bad && mkdir /snap-bad && cp /snap/state /snap-bad/state && ln /snap/memory /snap-bad/memory 2>/dev/null || cp -p /snap/memory /snap-bad/memory
  size=$(stat -c %s /snap-bad/state)
  if [ $kind = truncated ]; then
    truncate -s $((size / 2)) /snap-bad/state
  else
    at=$((size - 1))
    b=$(dd if=/snap-bad/state bs=1 skip=$at count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
    printf "\$(printf %o $((255 - b)))" | dd of=/snap-bad/state bs=1 seek=$at conv=notrunc 2>/dev/null
  fi
  echo "damaged $kind: state of $size bytes" >>/vmm.err
  /bulkhead-vmm restore /snap-bad --serial=/out/damaged-$kind.log --timeout=60 2>>/vmm.err >/dev/null
  echo "damaged $kind exit $?" >>/vmm.err
done
"#;

/// The lab machine's network for a guest: a dummy interface with 192.0.2.2/24 and a
/// default route via 192.0.2.1 (for passt to copy), passt and its libraries, and busybox
/// httpd servers on the lab's loopback, which the guest reaches at the gateway address.
#[derive(Debug, Clone, Default)]
pub struct LabNetwork {
    /// `--allow` rules for the VMM (empty: plain NAT through passt).
    pub allow: Vec<String>,
    /// `(port, index.html)`: one httpd on 127.0.0.1:port each.
    pub http: Vec<(u16, String)>,
}

/// The lab machine's address on its dummy interface and its (nonexistent) gateway.
pub const LAB_HOST_ADDR: &str = "192.0.2.2";
pub const LAB_GATEWAY: &str = "192.0.2.1";

/// A disk for a lab guest.
#[derive(Debug, Clone)]
pub struct LabDisk {
    /// File name, also its key in [`RunOutput::files`] for in-memory disks.
    pub name: String,
    pub source: DiskSource,
    pub read_only: bool,
    /// The id the guest reads as `/sys/block/vdX/serial` (default `disk<N>`).
    pub id: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DiskSource {
    /// A small image that travels in the lab machine's initramfs and comes back in
    /// [`RunOutput::files`].
    Bytes(Vec<u8>),
    /// A file on this host (a template of hundreds of MiB, a sparse private disk): the lab
    /// machine gets it as a QEMU virtio-blk drive and hands its `/dev/vdX` to the VMM;
    /// a writable one is changed in place, for the test to read afterwards.
    HostFile(PathBuf),
}

impl LabDisk {
    fn option_suffix(&self) -> String {
        let mut s = String::new();
        if self.read_only {
            s.push_str(",ro");
        }
        if let Some(id) = &self.id {
            s.push_str(",id=");
            s.push_str(id);
        }
        s
    }
}

impl Default for GuestRun {
    fn default() -> Self {
        Self {
            mem_mib: 256,
            vcpus: 1,
            display: Some((1024, 768)),
            cmdline: vmm_core::launch::DEFAULT_CMDLINE.to_string(),
            test_script: String::new(),
            test_files: Vec::new(),
            screenshot_on: None,
            timeout_s: 120,
            supervise: None,
            disks: Vec::new(),
            app: None,
            network: None,
            snapshot: None,
            sample_rss: false,
            bzimage: false,
            extra_partitions: 0,
        }
    }
}

#[derive(Debug)]
pub struct RunOutput {
    pub runner: Runner,
    /// The VMM's exit code.
    pub exit_code: i32,
    /// Everything the guest wrote to its serial console.
    pub serial: String,
    /// The VMM's stderr (its one-line status at the end).
    pub vmm_stderr: String,
    pub screenshot: Option<Vec<u8>>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Raw console of the lab machine (empty when direct), for diagnostics.
    pub lab_console: String,
    /// What `lab-supervise` wrote into its output directory, by file name.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl RunOutput {
    /// What the run printed, for test output and failure messages.
    pub fn summary(&self) -> String {
        format!(
            "runner: {}\nexit code: {}\nwall time: {:.1} s\n--- vmm stderr ---\n{}\n--- guest serial ---\n{}",
            self.runner,
            self.exit_code,
            self.elapsed.as_secs_f64(),
            self.vmm_stderr,
            self.serial,
        )
    }

    /// The summary plus the end of the lab machine's console (which holds the reason when
    /// the lab itself failed).
    pub fn diagnostics(&self) -> String {
        let console: String = self
            .lab_console
            .lines()
            .filter(|l| {
                !l.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/')
                    || l.contains(' ')
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "{}\n--- lab console ---\n{}",
            self.summary(),
            tail(&console, 3000)
        )
    }

    /// Keeps the screenshot and serial log under `$BULKHEAD_TEST_ARTIFACTS/<name>.*`.
    pub fn save_artifacts(&self, name: &str) {
        let Some(dir) = std::env::var_os("BULKHEAD_TEST_ARTIFACTS") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{name}.serial.log")), &self.serial);
        if let Some(png) = &self.screenshot {
            let _ = std::fs::write(dir.join(format!("{name}.png")), png);
        }
        if !self.lab_console.is_empty() {
            let _ = std::fs::write(
                dir.join(format!("{name}.lab-console.log")),
                &self.lab_console,
            );
        }
        for (file, bytes) in &self.files {
            let _ = std::fs::write(dir.join(format!("{name}.{file}")), bytes);
        }
    }

    /// How the lab machine ended (QEMU's status and CPU resets), for failure reports.
    pub fn lab_failure(&self) -> String {
        self.lab_console
            .split("===LAB-QEMU ")
            .nth(1)
            .and_then(|s| s.split("===").next())
            .unwrap_or("no lab machine")
            .to_string()
    }

    /// A text file from [`RunOutput::files`], empty when missing.
    pub fn file_text(&self, name: &str) -> String {
        self.files
            .get(name)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

fn lab_dir() -> PathBuf {
    guest_image::cache_root().join("lab")
}

/// The `debian-12` template's root image: `BULKHEAD_TEMPLATE_IMAGE`, else where
/// `bulkhead template build debian-12` puts it. Panics, saying how to build it, when absent.
pub fn template_image() -> PathBuf {
    let image = match std::env::var_os("BULKHEAD_TEMPLATE_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => bulkhead_supervisor::template::default_image_path("debian-12"),
    };
    assert!(
        image.is_file(),
        "no debian-12 template at {}: build it with `bulkhead template build debian-12`",
        image.display()
    );
    image
}

/// The default guest image, built once per test process.
pub fn guest() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        guest_image::build_default(&guest_image::default_image_dir(), &mut |s| {
            eprintln!("guest image: {s}")
        })
        .expect("building the default guest image")
    })
}

/// The static `bulkhead-vmm`: `$BULKHEAD_VMM_STATIC`, or built now.
pub fn static_vmm() -> PathBuf {
    static VMM: OnceLock<PathBuf> = OnceLock::new();
    VMM.get_or_init(|| static_binary("BULKHEAD_VMM_STATIC", "vmm-core", "bulkhead-vmm"))
        .clone()
}

/// The static firewall relay: `$BULKHEAD_NETRELAY_STATIC`, or built now.
pub fn static_netrelay() -> PathBuf {
    static RELAY: OnceLock<PathBuf> = OnceLock::new();
    RELAY
        .get_or_init(|| {
            static_binary(
                "BULKHEAD_NETRELAY_STATIC",
                "bulkhead-netrelay",
                "bulkhead-netrelay",
            )
        })
        .clone()
}

/// The static supervisor driver: `$BULKHEAD_LAB_SUPERVISE_STATIC`, or built now.
pub fn static_lab_supervise() -> PathBuf {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            static_binary(
                "BULKHEAD_LAB_SUPERVISE_STATIC",
                "bulkhead-tests",
                "lab-supervise",
            )
        })
        .clone()
}

/// The static `guest-evtest` for the guest's test archive:
/// `$BULKHEAD_GUEST_EVTEST_STATIC`, or built now.
pub fn static_guest_evtest() -> PathBuf {
    static EVTEST: OnceLock<PathBuf> = OnceLock::new();
    EVTEST
        .get_or_init(|| {
            static_binary(
                "BULKHEAD_GUEST_EVTEST_STATIC",
                "bulkhead-tests",
                "guest-evtest",
            )
        })
        .clone()
}

/// `$env` if set (tests/run-all.sh builds these once), otherwise a static build now into
/// the workspace's target/lab-static.
pub fn static_binary(env: &str, package: &str, bin: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = workspace.join("target/lab-static");
    eprintln!("building the static {bin} into {}", target.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", package, "--bin", bin])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&workspace)
        .status()
        .expect("running cargo");
    assert!(status.success(), "building the static {bin} failed");
    target.join("x86_64-unknown-linux-gnu/release").join(bin)
}

/// The lab machine's kernel and modules (the same Debian kernel package) and busybox.
pub fn lab_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = lab_dir();
        let root = dir.join("root");
        let version = &guest().kernel_version;
        let ready = root.join(format!("boot/vmlinuz-{version}")).is_file()
            && root.join("bin/busybox").is_file();
        if !ready {
            let _ = std::fs::remove_dir_all(&dir);
            let package = format!("linux-image-{version}");
            eprintln!("lab: fetching {package} and busybox-static");
            guest_image::fetch_and_unpack(&[&package, "busybox-static"], &dir)
                .expect("fetching the lab machine's kernel");
        }
        root
    })
    .clone()
}

/// The guest initramfs with a second archive holding /test.sh appended.
fn guest_initrd_with_test(run: &GuestRun) -> Vec<u8> {
    let mut bytes = std::fs::read(&guest().initrd).expect("reading guest initrd");
    let mut w = CpioWriter::new(Vec::new());
    let script = format!("#!/bin/sh\n{}\n", run.test_script);
    w.file("test.sh", 0o755, script.as_bytes()).unwrap();
    for (path, mode, data) in &run.test_files {
        w.file(path, *mode, data).unwrap();
    }
    if let (Some(app), None) = (&run.app, &run.supervise) {
        let config = bulkhead_supervisor::launch::GuestConfig {
            name: "lab".into(),
            app: app.clone(),
            keyboard: "us".into(),
        };
        w.file(
            "etc/bulkhead/partition.conf",
            0o644,
            config.to_shell().as_bytes(),
        )
        .unwrap();
    }
    bytes.extend_from_slice(&w.finish().unwrap());
    bytes
}

/// The partition's flags (for `lab-supervise`, which makes them a launch config, and
/// after `run` for a bare VMM): serial, screenshots and the time limit are the runner's
/// business.
fn partition_args(
    run: &GuestRun,
    kernel: &str,
    initrd: &str,
    disk_dir: &str,
    lab: bool,
) -> Vec<String> {
    let display = match run.display {
        Some((w, h)) => format!("--display={w}x{h}"),
        None => "--display=none".into(),
    };
    let mut args = vec![
        format!("--kernel={kernel}"),
        format!("--initrd={initrd}"),
        format!("--mem={}M", run.mem_mib),
        format!("--vcpus={}", run.vcpus),
        format!("--cmdline={}", run.cmdline),
        display,
    ];
    let mut lab_drive = b'a';
    for d in &run.disks {
        let path = match (&d.source, lab) {
            (DiskSource::Bytes(_), _) => format!("{disk_dir}/{}", d.name),
            (DiskSource::HostFile(_), true) => {
                // The lab machine's own virtio-blk-pci drives, in QEMU's -drive order.
                let dev = format!("/dev/vd{}", lab_drive as char);
                lab_drive += 1;
                dev
            }
            (DiskSource::HostFile(p), false) => p.display().to_string(),
        };
        args.push(format!("--disk={path}{}", d.option_suffix()));
    }
    args
}

/// Where a supervised run finds its programs and puts its output.
struct SupervisedPaths<'a> {
    driver: &'a str,
    vmm: &'a str,
    kernel: &'a str,
    initrd: &'a str,
    out: &'a str,
    /// Inside the lab machine (host-file disks are its drives).
    lab: bool,
}

/// `lab-supervise … -- bulkhead-vmm …` for a supervised run.
fn supervised_command(run: &GuestRun, steps: &[String], p: &SupervisedPaths) -> Vec<String> {
    let mut cmd = vec![
        p.driver.to_string(),
        "--out".into(),
        p.out.into(),
        "--timeout-s".into(),
        run.timeout_s.to_string(),
    ];
    cmd.extend(steps.iter().cloned());
    cmd.push("--".into());
    cmd.push(p.vmm.into());
    cmd.extend(partition_args(run, p.kernel, p.initrd, p.out, p.lab));
    if let Some(app) = &run.app {
        cmd.push(format!("--app={app}"));
    }
    if let Some(net) = &run.network {
        // The supervisor starts passt and the relay (with these rules) itself.
        cmd.push("--net=nat".into());
        cmd.extend(net.allow.iter().map(|a| format!("--allow={a}")));
    }
    cmd
}

/// A bare `bulkhead-vmm run`: the partition's flags plus serial log, time limit and
/// screenshot, which the VMM handles itself.
fn vmm_args(run: &GuestRun, paths: &VmmPaths) -> Vec<String> {
    let VmmPaths {
        kernel,
        initrd,
        serial,
        shot,
        disk_dir,
        ..
    } = paths;
    let mut args = vec!["run".to_string()];
    args.extend(partition_args(
        run,
        kernel,
        initrd,
        disk_dir,
        paths.host_files_as_lab_drives,
    ));
    if let Some(net) = &run.network {
        args.push("--net=passt".into());
        args.extend(net.allow.iter().map(|a| format!("--allow={a}")));
    }
    args.push(format!("--serial={serial}"));
    args.push(format!("--timeout={}", run.timeout_s));
    if let Some(snap) = &run.snapshot {
        // Snapshotting needs an unconfined VMM (its seccomp filters forbid the state
        // ioctls); the restores run sandboxed.
        args.push(format!("--snapshot-on={}", snap.marker));
        args.push("--snapshot-dir=/snap".into());
        args.push("--no-sandbox".into());
    }
    if run.display.is_some() {
        args.push(format!("--screenshot={shot}"));
        if let Some(m) = &run.screenshot_on {
            args.push(format!("--screenshot-on={m}"));
        }
    }
    args
}

/// Where a bare VMM finds its files and puts its output.
struct VmmPaths<'a> {
    kernel: &'a str,
    initrd: &'a str,
    serial: &'a str,
    shot: &'a str,
    /// Holds the in-memory disk images (and is returned as [`RunOutput::files`]).
    disk_dir: &'a str,
    /// Host-file disks are the lab machine's `/dev/vdX` (else their host path).
    host_files_as_lab_drives: bool,
}

/// [`run_guest`] for a run through `lab-supervise`: prints the summary and the
/// supervisor's `events.log`, keeps the artifacts under `artifacts`, and returns the
/// output with that log.
pub fn run_supervised(run: &GuestRun, artifacts: &str) -> (RunOutput, String) {
    let out = run_guest(run);
    eprintln!("{}", out.summary());
    let events = out.file_text("events.log");
    eprintln!("--- supervisor events ---\n{events}");
    out.save_artifacts(artifacts);
    (out, events)
}

pub fn run_guest(run: &GuestRun) -> RunOutput {
    // One guest at a time: the lab machine alone keeps both cores busy.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let _machine_guard = lock_machine_wide();
    // A network run needs the lab's isolated network (and its passt), never the host's.
    let runner = match run.network {
        Some(_) => Runner::Lab,
        None => runner(),
    };
    eprintln!("Linux guest runner: {runner}");
    match runner {
        Runner::Direct => run_direct(run),
        Runner::Lab => run_in_lab(run),
    }
}

/// One guest at a time on this machine, across test processes and worktrees too: two lab
/// machines at once on two cores make both crawl into their time limits. The kernel drops
/// the lock when the holder dies.
pub fn lock_machine_wide() -> Option<std::fs::File> {
    let path = std::env::temp_dir().join("bulkhead-lab.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    let started = Instant::now();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).ok()?;
    let waited = started.elapsed();
    if waited > Duration::from_secs(1) {
        eprintln!(
            "lab: waited {:.0} s for another guest run on this machine",
            waited.as_secs_f64()
        );
    }
    Some(file)
}

fn run_direct(run: &GuestRun) -> RunOutput {
    assert!(
        run.snapshot.is_none(),
        "snapshot lab runs are implemented for the lab runner only (set BULKHEAD_FORCE_LAB=1)"
    );
    assert!(
        !run.sample_rss,
        "memory sampling is implemented for the lab runner only (set BULKHEAD_FORCE_LAB=1)"
    );
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, guest_initrd_with_test(run)).unwrap();
    let serial = dir.path().join("serial.log");
    let shot = dir.path().join("shot.png");
    let out_dir = dir.path().join("out");
    let p = |p: &Path| p.display().to_string();
    let (kernel, initrd) = (p(run.kernel_file()), p(&initrd));
    std::fs::create_dir_all(&out_dir).unwrap();
    for d in &run.disks {
        if let DiskSource::Bytes(contents) = &d.source {
            std::fs::write(out_dir.join(&d.name), contents).unwrap();
        }
    }
    let command = match &run.supervise {
        Some(steps) => supervised_command(
            run,
            steps,
            &SupervisedPaths {
                driver: &p(&static_lab_supervise()),
                vmm: &p(&static_vmm()),
                kernel: &kernel,
                initrd: &initrd,
                out: &p(&out_dir),
                lab: false,
            },
        ),
        None => {
            let mut c = vec![p(&static_vmm())];
            c.extend(vmm_args(
                run,
                &VmmPaths {
                    kernel: &kernel,
                    initrd: &initrd,
                    serial: &p(&serial),
                    shot: &p(&shot),
                    disk_dir: &p(&out_dir),
                    host_files_as_lab_drives: false,
                },
            ));
            c
        }
    };
    let started = Instant::now();
    let out = Command::new(&command[0])
        .args(&command[1..])
        .output()
        .expect("running bulkhead-vmm");
    let serial = match run.supervise {
        Some(_) => String::from_utf8_lossy(&out.stdout).into_owned(),
        None => std::fs::read_to_string(&serial).unwrap_or_default(),
    };
    RunOutput {
        runner: Runner::Direct,
        exit_code: out.status.code().unwrap_or(-1),
        serial,
        vmm_stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        screenshot: std::fs::read(&shot).ok(),
        elapsed: started.elapsed(),
        lab_console: String::new(),
        files: read_dir_files(&out_dir),
    }
}

fn read_dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().into_string().ok()?,
                std::fs::read(e.path()).ok()?,
            ))
        })
        .collect()
}

/// For host-file disks: the lab machine's virtio-blk-pci drives, in dependency order.
pub const LAB_DISK_MODULES: [&str; 6] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "drivers/block/virtio_blk",
];

fn host_file_disks(run: &GuestRun) -> impl Iterator<Item = (&Path, bool)> {
    run.disks.iter().filter_map(|d| match &d.source {
        DiskSource::HostFile(p) => Some((p.as_path(), d.read_only)),
        DiskSource::Bytes(_) => None,
    })
}

/// Loads the drive modules and waits for the lab's `/dev/vdX` (none: nothing).
fn lab_disk_setup(run: &GuestRun) -> String {
    let count = host_file_disks(run).count();
    if count == 0 {
        return String::new();
    }
    let modules: Vec<&str> = LAB_DISK_MODULES
        .iter()
        .filter_map(|m| m.rsplit('/').next())
        .collect();
    let last = format!("/dev/vd{}", (b'a' + count as u8 - 1) as char);
    format!(
        r#"for m in {modules}; do insmod /modules/$m.ko || echo "LAB: insmod $m failed"; done
i=0; while [ ! -b {last} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b {last} ] || echo "LAB: drive {last} never appeared"
"#,
        modules = modules.join(" "),
    )
}

pub const LAB_MODULES: [&str; 4] = [
    "virt/lib/irqbypass",
    "drivers/crypto/ccp/ccp",
    "arch/x86/kvm/kvm",
    "arch/x86/kvm/kvm-amd",
];

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The lab machine's /init: load kvm-amd, run `command` (stdout is the guest serial log
/// for a supervised run; a bare VMM writes it to /guest.log itself), then print the
/// results base64-encoded between markers.
fn lab_init(command: &[String], stdout: &str, disk_setup: &str) -> String {
    let command: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    format!(
        r#"{prologue}#LAB-NETWORK
{disk_setup}echo "===LAB-VMM-START==="
mkdir -p /out
# The lab machine's free memory now and then: evidence if it dies silently mid-run.
(while sleep 15; do echo "LAB-MEM $(grep MemAvailable /proc/meminfo)"; done) &
mem_monitor=$!
{command} 2>/vmm.err >{stdout}
vmm_status=$?
{exit_line}kill $mem_monitor
echo "===LAB-SERIAL-BEGIN==="
base64 /guest.log
echo "===LAB-SERIAL-END==="
echo "===LAB-STDERR-BEGIN==="
base64 /vmm.err
echo "===LAB-STDERR-END==="
if [ -f /shot.png ]; then
  echo "===LAB-PNG-BEGIN==="
  base64 /shot.png
  echo "===LAB-PNG-END==="
fi
for f in $(ls /out); do
  echo "===LAB-FILE-$f-BEGIN==="
  base64 "/out/$f"
  echo "===LAB-FILE-$f-END==="
done
poweroff -f
"#,
        prologue = lab_init_prologue(),
        command = command.join(" "),
        exit_line = VMM_EXIT_LINE,
    )
}

/// The line of [`lab_init`] that reports the VMM's exit status (a snapshot run puts its
/// restores after it, while the heartbeat still runs: a restore may take as long as the
/// run did, and the results' stall bound must not cut it short).
const VMM_EXIT_LINE: &str = "echo \"===LAB-VMM-EXIT $vmm_status===\"\n";

/// The start of every lab machine's /init: busybox, /proc, /sys, /dev, kvm-amd.
pub fn lab_init_prologue() -> String {
    let modules: Vec<&str> = LAB_MODULES
        .iter()
        .filter_map(|m| m.rsplit('/').next())
        .collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do insmod /modules/$m.ko || echo "LAB: insmod $m failed"; done
[ -e /dev/kvm ] || echo "LAB: no /dev/kvm in the lab machine"
"#,
        modules = modules.join(" "),
    )
}

fn outer_cpio(run: &GuestRun) -> Vec<u8> {
    let root = lab_root();
    let version = &guest().kernel_version;
    let read =
        |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    let mut w = CpioWriter::new(Vec::new());
    for d in [
        "bin", "dev", "proc", "sys", "tmp", "modules", "guest", "out",
    ] {
        w.dir(d).unwrap();
    }
    // In /out, so the lab machine sends each back as the guest left it.
    for d in &run.disks {
        if let DiskSource::Bytes(contents) = &d.source {
            w.file(&format!("out/{}", d.name), 0o644, contents).unwrap();
        }
    }
    w.file("bin/busybox", 0o755, &read(&root.join("bin/busybox")))
        .unwrap();
    w.symlink("bin/sh", "busybox").unwrap();
    let kmods = root.join("lib/modules").join(version).join("kernel");
    let disk_modules = match host_file_disks(run).next() {
        Some(_) => &LAB_DISK_MODULES[..],
        None => &[],
    };
    for m in LAB_MODULES.iter().chain(disk_modules) {
        let base = m.rsplit('/').next().unwrap();
        w.file(
            &format!("modules/{base}.ko"),
            0o644,
            &read(&kmods.join(format!("{m}.ko"))),
        )
        .unwrap();
    }
    w.file("bulkhead-vmm", 0o755, &read(&static_vmm())).unwrap();
    if let Some(net) = &run.network {
        add_lab_network(&mut w, &kmods, net);
        if !net.allow.is_empty() || run.supervise.is_some() {
            // Beside the VMM, where `--allow` and the supervisor look for it.
            w.file("bulkhead-netrelay", 0o755, &read(&static_netrelay()))
                .unwrap();
        }
    }
    if run.supervise.is_some() {
        w.file("lab-supervise", 0o755, &read(&static_lab_supervise()))
            .unwrap();
    }
    w.file("guest/kernel", 0o644, &read(run.kernel_file()))
        .unwrap();
    w.file("guest/initrd", 0o644, &guest_initrd_with_test(run))
        .unwrap();
    let (kernel, initrd) = ("/guest/kernel", "/guest/initrd");
    let command = match &run.supervise {
        Some(steps) => supervised_command(
            run,
            steps,
            &SupervisedPaths {
                driver: "/lab-supervise",
                vmm: "/bulkhead-vmm",
                kernel,
                initrd,
                out: "/out",
                lab: true,
            },
        ),
        None => {
            let mut c = vec!["/bulkhead-vmm".to_string()];
            c.extend(vmm_args(
                run,
                &VmmPaths {
                    kernel,
                    initrd,
                    serial: "/guest.log",
                    shot: "/shot.png",
                    disk_dir: "/out",
                    host_files_as_lab_drives: true,
                },
            ));
            c
        }
    };
    let stdout = if run.supervise.is_some() {
        "/guest.log"
    } else {
        "/dev/null"
    };
    let mut init = lab_init(&command, stdout, &lab_disk_setup(run)).replace(
        LAB_NETWORK_HOOK,
        &run.network
            .as_ref()
            .map(lab_network_init)
            .unwrap_or_default(),
    );
    if let Some(snap) = &run.snapshot {
        let mut lines = VMM_EXIT_LINE.to_string();
        for i in 1..=snap.restores {
            lines.push_str(&format!(
                "/bulkhead-vmm restore /snap --serial=/out/restore{i}.log --timeout={t} 2>>/vmm.err >/dev/null\n\
                 echo \"restore {i} exit $?\" >>/vmm.err\n",
                t = run.timeout_s
            ));
        }
        if snap.damaged {
            lines.push_str(DAMAGED_RESTORES);
        }
        assert!(
            init.contains(VMM_EXIT_LINE),
            "the lab init reports the VMM's exit"
        );
        init = init.replacen(VMM_EXIT_LINE, &lines, 1);
    }
    if run.sample_rss {
        let start = "echo \"===LAB-VMM-START===\"\n";
        init = init.replacen(start, &format!("{RSS_SAMPLER}{start}"), 1);
    }
    if run.network.is_some() {
        init = init.replacen(
            BUSYBOX_INSTALL,
            &format!("{BUSYBOX_INSTALL}{TMPFS_ROOT}"),
            1,
        );
    }
    w.file("init", 0o755, init.as_bytes()).unwrap();
    w.finish().unwrap()
}

const BUSYBOX_INSTALL: &str = "/bin/busybox --install -s /bin\n";

/// passt sandboxes itself with `pivot_root`, which the initramfs root (rootfs) refuses:
/// a network run first moves the lab machine's root to a tmpfs and starts /init again.
const TMPFS_ROOT: &str = r#"if [ ! -e /.lab-tmpfs-root ]; then
  mkdir -p /newroot
  mount -t tmpfs -o size=95% tmpfs /newroot
  for f in /*; do [ "$f" = /newroot ] || cp -a "$f" /newroot/; done
  touch /newroot/.lab-tmpfs-root
  exec switch_root /newroot /init
fi
"#;

/// Where [`lab_init`] brings up the lab network, when the run has one.
const LAB_NETWORK_HOOK: &str = "#LAB-NETWORK\n";

/// The host files passt needs, at their host paths: the binary, the libraries `ldd`
/// names (symlinks resolved), accounts for `nobody` and a resolver file.
fn add_lab_network(w: &mut CpioWriter<Vec<u8>>, kmods: &Path, net: &LabNetwork) {
    let read =
        |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    let passt = which("passt").expect("passt not found in PATH (apt-get install passt)");
    let mut files = vec![(PathBuf::from("/usr/bin/passt"), passt.clone())];
    let ldd = Command::new("ldd")
        .arg(&passt)
        .output()
        .expect("running ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-… (0x…)"
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push((PathBuf::from(p), PathBuf::from(p)));
        }
    }
    let mut dirs = std::collections::BTreeSet::new();
    for (at, _) in &files {
        let mut d = at.parent();
        while let Some(p) = d.filter(|p| *p != Path::new("/")) {
            dirs.insert(p.to_path_buf());
            d = p.parent();
        }
    }
    dirs.insert(PathBuf::from("/etc"));
    dirs.insert(PathBuf::from("/www"));
    for d in &dirs {
        w.dir(d.to_str().unwrap().trim_start_matches('/')).unwrap();
    }
    for (at, from) in &files {
        let bytes = read(&std::fs::canonicalize(from).unwrap_or_else(|_| from.clone()));
        w.file(at.to_str().unwrap().trim_start_matches('/'), 0o755, &bytes)
            .unwrap();
    }
    w.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    w.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .unwrap();
    // passt hands this resolver to the guest by DHCP; nothing answers there.
    w.file("etc/resolv.conf", 0o644, b"nameserver 192.0.2.53\n")
        .unwrap();
    w.file(
        "modules/dummy.ko",
        0o644,
        &read(&kmods.join("drivers/net/dummy.ko")),
    )
    .unwrap();
    for (port, body) in &net.http {
        w.dir(&format!("www/{port}")).unwrap();
        w.file(&format!("www/{port}/index.html"), 0o644, body.as_bytes())
            .unwrap();
    }
}

/// The lab's /init lines that bring up the dummy network and the test servers.
fn lab_network_init(net: &LabNetwork) -> String {
    let mut s = format!(
        "insmod /modules/dummy.ko || echo \"LAB: insmod dummy failed\"\n\
         ip link set lo up\n\
         ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy\n\
         ip addr add {LAB_HOST_ADDR}/24 dev dummy0\n\
         ip link set dummy0 up\n\
         ip route add default via {LAB_GATEWAY}\n"
    );
    for (port, _) in &net.http {
        s.push_str(&format!("httpd -p 127.0.0.1:{port} -h /www/{port}\n"));
    }
    s
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn section<'a>(console: &'a str, name: &str) -> Option<&'a str> {
    let begin = format!("==={name}-BEGIN===");
    let end = format!("==={name}-END===");
    let start = console.find(&begin)? + begin.len();
    let stop = console[start..].find(&end)? + start;
    Some(&console[start..stop])
}

/// Every `===LAB-FILE-<name>-BEGIN===` section, decoded.
fn lab_files(console: &str) -> BTreeMap<String, Vec<u8>> {
    console
        .split("===LAB-FILE-")
        .skip(1)
        .filter_map(|rest| {
            let name = rest.split("-BEGIN===").next()?;
            let body = section(console, &format!("LAB-FILE-{name}"))?;
            Some((name.to_string(), decode_b64(body)))
        })
        .filter(|(name, _)| !name.contains("END"))
        .collect()
}

fn decode_b64(text: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The QEMU command for the lab machine: TCG with emulated SVM and nested paging, the
/// outer Debian kernel, `initramfs` as its root, serial console on stdout.
///
/// For experiments on the lab itself (not used by CI): `BULKHEAD_LAB_TCG_THREAD`
/// (`multi`, the default, or `single`) and `BULKHEAD_LAB_APPEND` (more lab kernel
/// parameters, e.g. `transparent_hugepage=never`: the lab kernel's khugepaged was seen
/// stuck for 861 s (`watchdog: BUG: soft lockup … [khugepaged]`) while our VMM ran).
pub fn lab_machine(outer_mem_mib: u64, initramfs: &Path) -> Command {
    let outer_kernel = lab_root().join(format!("boot/vmlinuz-{}", guest().kernel_version));
    let thread = match std::env::var("BULKHEAD_LAB_TCG_THREAD").as_deref() {
        Ok("single") => "single",
        _ => "multi",
    };
    let mut append =
        "console=ttyS0 quiet loglevel=4 panic=-1 transparent_hugepage=never".to_string();
    if let Ok(extra) = std::env::var("BULKHEAD_LAB_APPEND") {
        append.push(' ');
        append.push_str(&extra);
    }
    let mut cmd = Command::new(QEMU);
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio"])
        .args(["-accel", &format!("tcg,thread={thread}")])
        .args(["-cpu", "EPYC-Rome,+svm,+npt"])
        .args([
            "-m",
            &format!("{outer_mem_mib}M"),
            "-smp",
            "2",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(outer_kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

pub const QEMU: &str = "qemu-system-x86_64";

/// How often a lab run is booted when the lab machine failed it (see [`lab_fault`]).
const LAB_ATTEMPTS: usize = 4;

/// How long a running lab machine may print nothing (its init's heartbeat comes every
/// 15 s) before it counts as frozen.
const LAB_HEARTBEAT_LOST: Duration = Duration::from_secs(120);

/// The lab init's heartbeat line (every 15 s while the VMM runs).
const LAB_HEARTBEAT: &[u8] = b"LAB-MEM ";

/// What the lab kernel's watchdog prints about a CPU that stopped scheduling.
const LAB_LOCKUP: &[u8] = b"watchdog: BUG: soft lockup";

/// What the VMM reports when KVM ends a vCPU with a shutdown (triple fault).
const GUEST_TRIPLE_FAULT: &str = "triple fault (KVM_EXIT_SHUTDOWN)";

/// Why a lab run says nothing about Bulkhead, if it does not: the lab machine died before
/// its init reported the VMM's exit, or the guest triple-faulted without a kernel message
/// first. Both were seen in the lab (QEMU TCG emulating SVM under kvm-amd) on runs that
/// pass unchanged when booted again — on CI the same day as a green local run of the same
/// binaries — and no lab test makes its guest triple-fault on purpose. On real VT-x/AMD-V
/// ([`Runner::Direct`]) nothing is retried.
fn lab_fault(out: &RunOutput) -> Option<String> {
    if !out.lab_console.contains("===LAB-VMM-EXIT") {
        return Some(format!("the lab machine died ({})", out.lab_failure()));
    }
    // A run with several VMM runs (a snapshot and its restores) can lose the lab machine
    // after the first one exited (seen: an RCU stall, then a soft lockup, during the
    // restores): the lab's own failure, whatever came before.
    let lab = out.lab_failure();
    if lab.contains("soft lockup") || lab.contains("(frozen)") || lab_triple_faults(&lab) > 0 {
        return Some(format!("the lab machine failed ({lab})"));
    }
    let guest_said =
        |s: &str| s.contains("Kernel panic") || s.contains("BUG:") || s.contains("Oops");
    if (out.vmm_stderr.contains(GUEST_TRIPLE_FAULT) || out.serial.contains(GUEST_TRIPLE_FAULT))
        && !guest_said(&out.serial)
    {
        return Some("the guest triple-faulted with no kernel message before it".into());
    }
    None
}

/// `N` of "…, N triple faults of the lab machine" in QEMU's summary line; 0 without one.
fn lab_triple_faults(lab_failure: &str) -> u32 {
    lab_failure
        .split(" triple faults of the lab machine")
        .next()
        .filter(|head| head.len() < lab_failure.len())
        .and_then(|head| head.rsplit([' ', ',']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn run_in_lab(run: &GuestRun) -> RunOutput {
    assert!(
        Command::new(QEMU).arg("--version").output().is_ok(),
        "{QEMU} not found: the lab needs it (apt-get install qemu-system-x86)"
    );
    let mut attempt = 1;
    loop {
        let out = run_lab_machine(run);
        let Some(fault) = lab_fault(&out) else {
            return out;
        };
        if attempt == LAB_ATTEMPTS {
            eprintln!("LAB FAULT on every one of {LAB_ATTEMPTS} boots: {fault}");
            return out;
        }
        eprintln!(
            "LAB FAULT after {:.1} s, attempt {attempt} of {LAB_ATTEMPTS}: {fault}; booting it \
             again (the console and QEMU's log are kept as lab-failure-PID-N.*)",
            out.elapsed.as_secs_f64(),
        );
        static FAILURES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Named by test process too: every test binary counts from 0.
        out.save_artifacts(&format!("lab-failure-{}-{n}", std::process::id()));
        attempt += 1;
    }
}

fn run_lab_machine(run: &GuestRun) -> RunOutput {
    let dir = tempfile::tempdir().unwrap();
    let cpio = dir.path().join("outer.cpio");
    std::fs::write(&cpio, outer_cpio(run)).unwrap();
    // CPU resets of the lab machine: a triple fault in its kernel ends QEMU silently
    // under -no-reboot; this log is how that shows.
    let qemu_log = dir.path().join("qemu.log");
    let outer_mem = run.mem_mib * (1 + run.extra_partitions) + 1024;
    let started = Instant::now();
    let mut machine = lab_machine(outer_mem, &cpio);
    for (i, (path, read_only)) in host_file_disks(run).enumerate() {
        let ro = if read_only { ",readonly=on" } else { "" };
        machine
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d{i},format=raw{ro}",
                path.display()
            ))
            .args(["-device", &format!("virtio-blk-pci,drive=d{i}")]);
    }
    let mut child = machine
        .args(["-d", "cpu_reset,guest_errors", "-D"])
        .arg(&qemu_log)
        .spawn()
        .expect("starting the lab machine");
    let mut stdout = child.stdout.take().unwrap();
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = std::thread::spawn({
        let output = output.clone();
        move || {
            let mut chunk = [0u8; 64 * 1024];
            while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                if let Ok(mut out) = output.lock() {
                    out.extend_from_slice(&chunk[..n]);
                }
            }
        }
    });
    // The guest's bound is its own; copying its files out over the lab's serial console
    // after it ended is slow on a loaded host, so that phase has its own bound: it may
    // go on while output keeps coming, up to a hard cap.
    let guest_limit = Duration::from_secs(run.timeout_s + 120);
    let (dump_limit, dump_stall) = (Duration::from_secs(600), Duration::from_secs(60));
    let (mut guest_ended_at, mut last_len, mut last_growth) = (None, 0usize, Instant::now());
    let mut last_heartbeat = Instant::now();
    let mut vmm_started = false;
    let mut killed: Option<String> = None;
    while child.try_wait().ok().flatten().is_none() {
        const EXIT_MARK: &[u8] = b"===LAB-VMM-EXIT ";
        const START_MARK: &[u8] = b"===LAB-VMM-START===";
        let (len, ended, started_now, heartbeat, locked_up) = output
            .lock()
            .map(|o| {
                // Only what arrived since the last look (plus an overlap for the markers).
                let from = last_len.saturating_sub(LAB_LOCKUP.len()).min(o.len());
                let new = &o[from..];
                let ended = guest_ended_at.is_some() || contains(new, EXIT_MARK);
                let started_now = vmm_started || contains(new, START_MARK);
                let heartbeat = contains(new, LAB_HEARTBEAT);
                (
                    o.len(),
                    ended,
                    started_now,
                    heartbeat,
                    contains(new, LAB_LOCKUP),
                )
            })
            .unwrap_or((0, false, vmm_started, false, false));
        if heartbeat || (started_now && !vmm_started) {
            last_heartbeat = Instant::now();
        }
        vmm_started = started_now;
        if len != last_len {
            (last_len, last_growth) = (len, Instant::now());
        }
        if ended && guest_ended_at.is_none() {
            guest_ended_at = Some(Instant::now());
        }
        let expired = match guest_ended_at {
            // The lab kernel's own watchdog saw a CPU stuck (seen: khugepaged, for 861 s
            // until the run's bound): that machine will not recover.
            _ if locked_up => Some(
                "killed: the lab kernel reported a CPU stuck (`watchdog: BUG: soft lockup`)".into(),
            ),
            // While the VMM runs, the lab init prints its heartbeat (`LAB-MEM`) every 15 s:
            // a lab machine without one for much longer has frozen (seen: nothing for
            // 600 s, then passing on the next boot in 84 s), so it is not waited out.
            // Only the heartbeat counts: a stuck machine can go on printing warnings.
            None if vmm_started && last_heartbeat.elapsed() > LAB_HEARTBEAT_LOST => Some(format!(
                "killed: no heartbeat for {} s while the VMM ran (frozen)",
                LAB_HEARTBEAT_LOST.as_secs()
            )),
            None if started.elapsed() > guest_limit => Some(format!(
                "killed: past its {} s bound",
                guest_limit.as_secs()
            )),
            None => None,
            Some(at) if at.elapsed() > dump_limit || last_growth.elapsed() > dump_stall => {
                Some("killed: copying the results out took too long".into())
            }
            Some(_) => None,
        };
        if let Some(why) = expired {
            killed = Some(why);
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    let _ = reader.join();
    let bytes = output.lock().map(|o| o.clone()).unwrap_or_default();
    let mut console = String::from_utf8_lossy(&bytes).replace('\r', "");
    let qemu_log = std::fs::read_to_string(&qemu_log).unwrap_or_default();
    let resets = qemu_log.matches("CPU Reset").count();
    // TCG logs a triple fault of the lab machine's own kernel under `-d cpu_reset`; a
    // clean power-off and a triple fault otherwise look alike (status 0, same resets).
    let triple_faults = qemu_log.matches("Triple fault").count();
    let status = match killed {
        Some(why) => format!("{status} ({why})"),
        None => status,
    };
    console.push_str(&format!(
        "\n===LAB-QEMU qemu {status}, {resets} CPU resets logged, {triple_faults} triple faults \
         of the lab machine===\n"
    ));
    let exit_code = console
        .split("===LAB-VMM-EXIT ")
        .nth(1)
        .and_then(|s| s.split("===").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1);
    let text = |name| {
        String::from_utf8_lossy(&decode_b64(section(&console, name).unwrap_or("")))
            .replace('\r', "")
    };
    RunOutput {
        runner: Runner::Lab,
        exit_code,
        serial: text("LAB-SERIAL"),
        vmm_stderr: text("LAB-STDERR"),
        screenshot: section(&console, "LAB-PNG").map(decode_b64),
        elapsed: started.elapsed(),
        files: {
            let mut files = lab_files(&console);
            // QEMU's own log of the lab machine (resets with registers, guest errors):
            // kept with the artifacts, the only trace of a lab machine that died silently.
            if !qemu_log.is_empty() {
                files.insert("lab-qemu.log".into(), qemu_log.into_bytes());
            }
            files
        },
        lab_console: console,
    }
}

/// A decoded RGB screenshot.
pub struct Screenshot {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Screenshot {
    pub fn decode(png_bytes: &[u8]) -> Screenshot {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().expect("PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
        let info = reader.next_frame(&mut buf).expect("PNG data");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        Screenshot {
            width: info.width as usize,
            height: info.height as usize,
            rgb: buf,
        }
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Pixels that are neither black nor `ignore` inside a rectangle.
    pub fn lit_pixels(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| self.pixel(x, y) != [0, 0, 0])
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decoder_matches_known_vectors_and_skips_newlines() {
        assert_eq!(decode_b64("aGVsbG8="), b"hello");
        assert_eq!(decode_b64("aGVs\nbG8gd29y\nbGQ="), b"hello world");
    }

    #[test]
    fn sections_are_found_between_markers() {
        let c = "noise\n===X-BEGIN===\nabc\n===X-END===\n";
        assert_eq!(section(c, "X"), Some("\nabc\n"));
        assert_eq!(section(c, "Y"), None);
    }

    fn lab_run(console: &str, serial: &str, stderr: &str) -> RunOutput {
        RunOutput {
            runner: Runner::Lab,
            exit_code: 1,
            serial: serial.into(),
            vmm_stderr: stderr.into(),
            screenshot: None,
            elapsed: Duration::from_secs(1),
            lab_console: console.into(),
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn a_lab_machine_that_never_reported_the_vmm_exit_is_a_lab_fault() {
        let out = lab_run(
            "===LAB-VMM-START===\n===LAB-QEMU qemu exit status: 0===",
            "",
            "",
        );
        assert!(lab_fault(&out).is_some_and(|f| f.contains("lab machine died")));
    }

    #[test]
    fn a_lab_machine_lost_after_a_first_vmm_run_ended_is_a_lab_fault() {
        let after = |qemu: &str| {
            lab_run(
                &format!("===LAB-VMM-START===\n===LAB-VMM-EXIT 0===\n===LAB-QEMU {qemu}==="),
                "",
                "",
            )
        };
        for qemu in [
            "qemu signal: 9 (SIGKILL) (killed: the lab kernel reported a CPU stuck              (`watchdog: BUG: soft lockup`)), 6 CPU resets logged, 0 triple faults of the lab machine",
            "qemu signal: 9 (SIGKILL) (killed: no heartbeat for 120 s while the VMM ran (frozen))",
            "qemu exit status: 0, 6 CPU resets logged, 1 triple faults of the lab machine",
        ] {
            assert!(
                lab_fault(&after(qemu)).is_some_and(|f| f.contains("lab machine failed")),
                "{qemu}"
            );
        }
        // A clean power-off, or our run past its bound, is not the lab's fault.
        for qemu in [
            "qemu exit status: 0, 6 CPU resets logged, 0 triple faults of the lab machine",
            "qemu signal: 9 (SIGKILL) (killed: past its 360 s bound)",
        ] {
            assert_eq!(lab_fault(&after(qemu)), None, "{qemu}");
        }
        assert_eq!(
            lab_triple_faults("exit status: 0, 12 triple faults of the lab machine"),
            12
        );
        assert_eq!(lab_triple_faults("no lab machine"), 0);
    }

    #[test]
    fn a_silent_guest_triple_fault_is_a_lab_fault_but_one_after_a_kernel_panic_is_not() {
        let stderr = "partition ended (Crashed { reason: \"guest fault: vCPU 0: triple fault \
                      (KVM_EXIT_SHUTDOWN) at RIP 0xfff0\" })";
        let exited = "===LAB-VMM-EXIT 1===";
        assert!(lab_fault(&lab_run(exited, "X up\n", stderr)).is_some());
        let panicked = "Kernel panic - not syncing: Fatal exception\n";
        assert_eq!(lab_fault(&lab_run(exited, panicked, stderr)), None);
        assert_eq!(
            lab_fault(&lab_run(exited, "X up\n", "exit 1: no marker")),
            None
        );
    }

    #[test]
    fn lab_files_are_decoded_by_name() {
        let c = "x\n===LAB-FILE-final.txt-BEGIN===\naGVsbG8=\n===LAB-FILE-final.txt-END===\n\
                 ===LAB-FILE-a.png-BEGIN===\nAAE=\n===LAB-FILE-a.png-END===\n";
        let files = lab_files(c);
        assert_eq!(files.len(), 2);
        assert_eq!(files["final.txt"], b"hello");
        assert_eq!(files["a.png"], [0, 1]);
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
