//! The boot benchmark: `bulkhead-vmm` against QEMU booting the same kernel, initrd,
//! memory and command line, interleaved in one invocation, measured by `lab-measure`
//! (time from spawn to the guest's ready marker; RSS beyond guest RAM and framebuffer).
//! Both boot the distribution's bzImage and the uncompressed `vmlinux` extracted from it
//! (ours through the 64-bit boot protocol, QEMU through the kernel's PVH entry: each
//! its best way into that file).
//!
//! On a host with VT-x/AMD-V both run directly on /dev/kvm. Otherwise everything runs
//! inside one lab machine (see lab.rs): its initramfs carries our static VMM, the static
//! `lab-measure`, the guest, and the host's QEMU with its shared libraries and firmware at
//! their host paths.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_supervisor::guest_image::cpio::CpioWriter;

use crate::lab::{self, Runner};

pub use crate::lab::QEMU;

/// Firmware and option ROMs QEMU's `pc` machine opens for a `-kernel` boot under KVM
/// (seen with strace), `microvm`'s firmware (the disk benchmark's QEMU), plus the TCG
/// accelerator module it probes.
const QEMU_DATA_FILES: [&str; 7] = [
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so",
];

/// One configuration being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `bulkhead-vmm --display none`, booting the uncompressed `vmlinux`.
    Ours,
    /// `qemu-system-x86_64 -accel kvm`, headless, booting `vmlinux` (PVH entry).
    Qemu,
    /// [`Variant::Ours`] booting the bzImage (the kernel decompresses itself).
    OursBzImage,
    /// [`Variant::Qemu`] booting the bzImage.
    QemuBzImage,
    /// `bulkhead-vmm --display WxH`: what the framebuffer costs.
    OursFramebuffer,
    /// The same as [`Variant::OursFramebuffer`], run the way the app runs partitions: a
    /// sandboxed, seccomp-filtered process under the supervisor (`lab-supervise`),
    /// framebuffer shared over the control socket. Memory is the partition process's.
    OursSupervised,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::Ours,
        Variant::Qemu,
        Variant::OursBzImage,
        Variant::QemuBzImage,
        Variant::OursFramebuffer,
        Variant::OursSupervised,
    ];

    /// The kernel file this variant boots.
    pub fn kernel(self, p: &Paths) -> &str {
        match self {
            Variant::OursBzImage | Variant::QemuBzImage => &p.bzimage,
            _ => &p.kernel,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Ours => "ours",
            Variant::Qemu => "qemu",
            Variant::OursBzImage => "ours-bz",
            Variant::QemuBzImage => "qemu-bz",
            Variant::OursFramebuffer => "ours-fb",
            Variant::OursSupervised => "ours-sup",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub runs: usize,
    pub mem_mib: u64,
    pub cmdline: String,
    /// Display size of the framebuffer variant.
    pub display: (u32, u32),
    /// Seconds one boot may take before lab-measure gives up.
    pub boot_timeout_s: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            runs: 5,
            mem_mib: 256,
            cmdline: vmm_core::launch::DEFAULT_CMDLINE.to_string(),
            display: (1024, 768),
            boot_timeout_s: 180,
        }
    }
}

impl BenchConfig {
    /// Bytes of the framebuffer mapping (32 bpp, stride = 4 × width).
    pub fn framebuffer_bytes(&self) -> u64 {
        u64::from(self.display.0) * u64::from(self.display.1) * 4
    }

    /// The lab machine holds both guests' RAM at most once each, plus the initramfs
    /// (twice while it unpacks) and its own kernel.
    pub fn lab_mem_mib(&self, cpio_bytes: u64) -> u64 {
        2 * self.mem_mib + 1024 + 2 * cpio_bytes.div_ceil(1 << 20)
    }
}

/// Where the programs and guest files are on the machine that runs the boots.
#[derive(Debug, Clone)]
pub struct Paths {
    pub lab_measure: String,
    pub lab_supervise: String,
    pub vmm: String,
    pub qemu: String,
    /// The uncompressed `vmlinux`.
    pub kernel: String,
    /// The distribution's compressed kernel it came from.
    pub bzimage: String,
    pub initrd: String,
}

impl Paths {
    /// Paths inside the lab machine's initramfs.
    pub fn in_lab() -> Self {
        Self {
            lab_measure: "/lab-measure".into(),
            lab_supervise: "/lab-supervise".into(),
            vmm: "/bulkhead-vmm".into(),
            qemu: format!("/usr/bin/{QEMU}"),
            kernel: "/guest/vmlinux".into(),
            bzimage: "/guest/vmlinuz".into(),
            initrd: "/guest/initrd".into(),
        }
    }
}

/// The command booting the guest for one variant; the serial console goes to stdout.
pub fn boot_command(variant: Variant, cfg: &BenchConfig, p: &Paths) -> Vec<String> {
    match variant {
        Variant::OursSupervised => {
            // lab-measure stops it at the marker; until then the driver just watches.
            let mut cmd = vec![
                p.lab_supervise.clone(),
                "--out".into(),
                "/tmp/bench-supervised".into(),
                "--timeout-s".into(),
                cfg.boot_timeout_s.to_string(),
                "wait-exit".into(),
                "--".into(),
                p.vmm.clone(),
            ];
            cmd.extend(guest_flags(cfg, p, &p.kernel));
            cmd.push(format!("--display={}x{}", cfg.display.0, cfg.display.1));
            cmd
        }
        Variant::Ours | Variant::OursBzImage | Variant::OursFramebuffer => {
            let display = match variant {
                Variant::OursFramebuffer => format!("{}x{}", cfg.display.0, cfg.display.1),
                _ => "none".into(),
            };
            let mut cmd = vec![p.vmm.clone(), "run".into()];
            cmd.extend(guest_flags(cfg, p, variant.kernel(p)));
            cmd.extend([
                "--serial=-".into(),
                format!("--display={display}"),
                format!("--timeout={}", cfg.boot_timeout_s),
            ]);
            cmd
        }
        Variant::Qemu | Variant::QemuBzImage => [
            p.qemu.as_str(),
            "-M",
            "pc",
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
            &format!("{}M", cfg.mem_mib),
            "-kernel",
            variant.kernel(p),
            "-initrd",
            &p.initrd,
            "-append",
            &cfg.cmdline,
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    }
}

/// Kernel, initrd, memory, vCPUs and command line: the same for every variant of ours
/// but the kernel file.
fn guest_flags(cfg: &BenchConfig, p: &Paths, kernel: &str) -> [String; 5] {
    [
        format!("--kernel={kernel}"),
        format!("--initrd={}", p.initrd),
        format!("--mem={}M", cfg.mem_mib),
        "--vcpus=1".into(),
        format!("--cmdline={}", cfg.cmdline),
    ]
}

/// `lab-measure … -- <boot command>` for one variant.
pub fn measure_command(variant: Variant, cfg: &BenchConfig, p: &Paths) -> Vec<String> {
    let mut cmd = vec![
        p.lab_measure.clone(),
        "--label".into(),
        variant.label().into(),
        "--marker".into(),
        lab::READY_MARKER.into(),
        "--guest-mem-mib".into(),
        cfg.mem_mib.to_string(),
        "--timeout-s".into(),
        cfg.boot_timeout_s.to_string(),
        // Reading smaps walks guest RAM's page tables: slow under TCG, so not too often.
        "--sample-ms".into(),
        "1000".into(),
        "--show-maps".into(),
    ];
    if matches!(variant, Variant::OursFramebuffer | Variant::OursSupervised) {
        cmd.push("--exclude-size".into());
        cmd.push(cfg.framebuffer_bytes().to_string());
    }
    if !matches!(variant, Variant::Qemu | Variant::QemuBzImage) {
        // A bare run sandboxes itself: the VMM is the child of a reaper left outside
        // its PID namespace (under lab-supervise, one level deeper still).
        cmd.push("--measure-child".into());
    }
    cmd.push("--".into());
    cmd.extend(boot_command(variant, cfg, p));
    cmd
}

/// The order of the variants in round `round` (0-based): rotated every round so that no
/// variant always runs first, right after the previous one freed its memory.
pub fn round_order(round: usize) -> Vec<Variant> {
    let n = Variant::ALL.len();
    (0..n).map(|i| Variant::ALL[(round + i) % n]).collect()
}

/// Every measurement of the benchmark, in the order it runs.
pub fn schedule(cfg: &BenchConfig) -> Vec<Variant> {
    (0..cfg.runs).flat_map(round_order).collect()
}

/// One `MEASURE` line from lab-measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub label: String,
    /// `None` when the run failed; then `reason` says why.
    pub ms: Option<u64>,
    pub rss_kib: u64,
    pub guest_kib: u64,
    pub excluded_kib: u64,
    pub overhead_kib: u64,
    pub anon_overhead_kib: u64,
    pub peak_overhead_kib: u64,
    pub hwm_kib: u64,
    /// Private memory of the reaper between supervisor and VMM (supervised variant).
    pub helper_kib: u64,
    /// When lab-measure's `--stderr-marker` appeared, if it was asked for and came.
    pub stderr_ms: Option<u64>,
    pub reason: String,
}

pub fn parse_measure(line: &str) -> Option<Measure> {
    let rest = line.trim().strip_prefix("MEASURE ")?;
    let (fields, reason) = match rest.split_once(" reason=") {
        Some((f, r)) => (f, r.to_string()),
        None => (rest, String::new()),
    };
    let get = |key: &str| {
        fields
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let num = |key: &str| get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some(Measure {
        label: get("label")?.to_string(),
        ms: if get("ok") == Some("1") {
            get("ms").and_then(|v| v.parse().ok())
        } else {
            None
        },
        rss_kib: num("rss_kib"),
        guest_kib: num("guest_kib"),
        excluded_kib: num("excluded_kib"),
        overhead_kib: num("overhead_kib"),
        anon_overhead_kib: num("anon_overhead_kib"),
        peak_overhead_kib: num("peak_overhead_kib"),
        hwm_kib: num("hwm_kib"),
        helper_kib: num("helper_kib"),
        stderr_ms: get("stderr_ms").and_then(|v| v.parse().ok()),
        reason,
    })
}

pub fn median(values: &[u64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2] as f64),
        _ => Some((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0),
    }
}

/// The shared libraries (and the dynamic loader) `ldd` lists for a binary.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The host's QEMU binary path and every file it needs at run time.
pub fn qemu_files() -> Vec<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {QEMU}")])
        .output()
        .expect("running sh");
    let binary = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        binary.is_absolute(),
        "{QEMU} not found: apt-get install qemu-system-x86"
    );
    let ldd = Command::new("ldd")
        .arg(&binary)
        .output()
        .expect("running ldd on QEMU");
    let mut files = vec![binary];
    files.extend(parse_ldd(&String::from_utf8_lossy(&ldd.stdout)));
    files.extend(QEMU_DATA_FILES.iter().map(PathBuf::from));
    files
}

/// The static `lab-measure`: `$BULKHEAD_LAB_MEASURE_STATIC`, or built now.
pub fn static_lab_measure() -> PathBuf {
    lab::static_binary(
        "BULKHEAD_LAB_MEASURE_STATIC",
        "bulkhead-tests",
        "lab-measure",
    )
}

/// Seconds the lab's init (or the direct runner) gives one scheduled command beyond the
/// command's own time limit: lab-measure normally stops a stuck boot itself, this cuts
/// the run when lab-measure or what it started does not die.
pub const CUT_MARGIN_S: u64 = 30;

/// Seconds one scheduled boot of the boot benchmark may take, all in.
fn run_bound_s(cfg: &BenchConfig) -> u64 {
    cfg.boot_timeout_s + CUT_MARGIN_S
}

/// The lab init's lines for one scheduled run: `cmd` in its own session (so its whole
/// process group can be killed: lab-measure, the VMM or QEMU it started and anything they
/// forked), a watchdog that kills that group after `bound_s`, and a failed `MEASURE` line
/// when it had to. Without this a run that lab-measure cannot stop held the lab machine
/// until the limit of the whole schedule (a boot sat there for over 9 minutes).
pub fn bounded_run(index: usize, label: &str, bound_s: u64, cmd: &[String]) -> String {
    assert!(
        label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "run labels go unquoted into the lab's init: {label}"
    );
    let cmd: Vec<String> = cmd.iter().map(|a| lab::shell_quote(a)).collect();
    format!(
        r#"echo "===BENCH-RUN {index} {label}==="
rm -f /tmp/cut
setsid {cmd} &
run=$!
setsid sh -c 'sleep {bound_s}; touch /tmp/cut; echo "===BENCH-CUT {index} {label}==="; kill -KILL -'$run &
wd=$!
wait $run
kill -KILL $wd -$wd -$run 2>/dev/null
[ -e /tmp/cut ] && echo "MEASURE label={label} ok=0 reason=cut by the lab after the per-run bound of {bound_s} s"
"#,
        cmd = cmd.join(" "),
    )
}

/// The lab machine's /init: load kvm-amd, then every scheduled boot under lab-measure,
/// each cut at its own bound.
pub fn bench_init(cfg: &BenchConfig) -> String {
    let p = Paths::in_lab();
    let mut runs = String::new();
    for (i, variant) in schedule(cfg).into_iter().enumerate() {
        let cmd = measure_command(variant, cfg, &p);
        runs.push_str(&bounded_run(i, variant.label(), run_bound_s(cfg), &cmd));
    }
    format!(
        "{}echo \"===BENCH-START===\"\n{runs}echo \"===BENCH-END===\"\npoweroff -f\n",
        lab::lab_init_prologue()
    )
}

/// A lab machine's initramfs: files at absolute paths, parent directories made once.
pub struct LabCpio {
    w: CpioWriter<Vec<u8>>,
    dirs: Vec<String>,
}

impl Default for LabCpio {
    fn default() -> Self {
        Self::new()
    }
}

impl LabCpio {
    /// An initramfs with busybox, the lab's kvm-amd modules (and `extra_modules`, paths
    /// under the lab kernel's `kernel/`), all under `/modules/<name>.ko`.
    pub fn with_modules(extra_modules: &[&str]) -> Self {
        let root = lab::lab_root();
        let guest = lab::guest();
        let mut cpio = Self::new();
        cpio.add("/bin/busybox", 0o755, &read(&root.join("bin/busybox")));
        cpio.w.symlink("bin/sh", "busybox").expect("cpio symlink");
        let kmods = root
            .join("lib/modules")
            .join(&guest.kernel_version)
            .join("kernel");
        for m in lab::LAB_MODULES.iter().chain(extra_modules) {
            let base = m.rsplit('/').next().unwrap_or(m);
            let data = read(&kmods.join(format!("{m}.ko")));
            cpio.add(&format!("/modules/{base}.ko"), 0o644, &data);
        }
        cpio
    }

    fn new() -> Self {
        let mut w = CpioWriter::new(Vec::new());
        for d in ["dev", "proc", "sys", "tmp"] {
            w.dir(d).expect("cpio directory");
        }
        Self {
            w,
            dirs: vec!["dev".into(), "proc".into(), "sys".into(), "tmp".into()],
        }
    }

    /// Adds `path` (absolute) and its parent directories, each directory once.
    pub fn add(&mut self, path: &str, mode: u32, data: &[u8]) {
        let rel = path.trim_start_matches('/');
        let parts: Vec<&str> = rel.split('/').collect();
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/");
            if !self.dirs.contains(&dir) {
                self.w.dir(&dir).expect("cpio directory");
                self.dirs.push(dir);
            }
        }
        self.w.file(rel, mode, data).expect("cpio file");
    }

    /// The host's QEMU and everything it loads, the binary at `qemu` so that `..` from it
    /// finds share/qemu.
    pub fn add_qemu(&mut self, qemu: &str) {
        for f in qemu_files() {
            let path = f.to_string_lossy();
            let dest = if path.ends_with(&format!("/{QEMU}")) {
                qemu.to_string()
            } else {
                path.into_owned()
            };
            self.add(&dest, 0o755, &read(&f));
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.w.finish().expect("finishing the cpio archive")
    }
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The lab machine's initramfs for the benchmark.
pub fn bench_cpio(cfg: &BenchConfig) -> Vec<u8> {
    let guest = lab::guest();
    let mut cpio = LabCpio::with_modules(&[]);
    let p = Paths::in_lab();
    cpio.add(&p.vmm, 0o755, &read(&lab::static_vmm()));
    cpio.add(&p.lab_measure, 0o755, &read(&static_lab_measure()));
    cpio.add(&p.lab_supervise, 0o755, &read(&lab::static_lab_supervise()));
    cpio.add(&p.kernel, 0o644, &read(&guest.kernel));
    cpio.add(&p.bzimage, 0o644, &read(&guest.bzimage));
    cpio.add(&p.initrd, 0o644, &read(&guest.initrd));
    cpio.add_qemu(&p.qemu);
    cpio.add("/init", 0o755, bench_init(cfg).as_bytes());
    cpio.finish()
}

/// What one benchmark invocation produced.
#[derive(Debug)]
pub struct BenchOutput {
    pub runner: Runner,
    pub measures: Vec<Measure>,
    /// Wall time of everything (for the lab: outer boot, all guest boots, power-off).
    pub elapsed: Duration,
    /// Lines that were neither markers nor measurements (diagnostics).
    pub other_output: String,
}

pub fn run(cfg: &BenchConfig) -> BenchOutput {
    let runner = lab::runner();
    match runner {
        Runner::Direct => run_direct(cfg),
        Runner::Lab => run_lab(cfg),
    }
}

fn collect(runner: Runner, text: &str, elapsed: Duration) -> BenchOutput {
    let text = text.replace('\r', "");
    let measures = text.lines().filter_map(parse_measure).collect();
    let other_output = text
        .lines()
        .filter(|l| !l.starts_with("MEASURE ") && !l.starts_with("===BENCH"))
        .collect::<Vec<_>>()
        .join("\n");
    BenchOutput {
        runner,
        measures,
        elapsed,
        other_output,
    }
}

fn run_direct(cfg: &BenchConfig) -> BenchOutput {
    let guest = lab::guest();
    let p = Paths {
        lab_measure: static_lab_measure().display().to_string(),
        lab_supervise: lab::static_lab_supervise().display().to_string(),
        vmm: lab::static_vmm().display().to_string(),
        qemu: QEMU.into(),
        kernel: guest.kernel.display().to_string(),
        bzimage: guest.bzimage.display().to_string(),
        initrd: guest.initrd.display().to_string(),
    };
    let _machine = lab::lock_machine_wide();
    let started = Instant::now();
    let mut text = String::new();
    for variant in schedule(cfg) {
        let cmd = measure_command(variant, cfg, &p);
        let stdout = run_bounded(variant.label(), &cmd, Duration::from_secs(run_bound_s(cfg)));
        eprint!("{stdout}");
        text.push_str(&stdout);
    }
    collect(Runner::Direct, &text, started.elapsed())
}

/// Runs `cmd` on this host (its stderr to ours) and returns its stdout; after `bound` its
/// whole process group is killed and a failed `MEASURE` line for `label` is added, as the
/// lab's init does with [`bounded_run`].
pub fn run_bounded(label: &str, cmd: &[String], bound: Duration) -> String {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group, so the VMM or QEMU it started goes with it.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", cmd[0]));
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().expect("child stdout");
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        all
    });
    let started = Instant::now();
    let mut cut = false;
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > bound {
            // SAFETY: kill(2) on the process group we created above, with a valid signal.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            cut = true;
            break;
        }
        // 10 ms: callers that time the command (bundle-bench) see its end this closely.
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.wait();
    let mut text = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    if cut {
        text.push_str(&format!(
            "\nMEASURE label={label} ok=0 reason=cut after the per-run bound of {} s\n",
            bound.as_secs()
        ));
    }
    text
}

/// Console lines worth showing while the lab runs.
const PROGRESS: [&str; 4] = ["MEASURE ", "===BENCH", "lab-measure:", "LAB:"];

/// Seconds the host gives the lab machine beyond a run's own bound before it kills the
/// machine: the lab's init cuts a stuck run itself; this catches a stuck lab machine.
const HOST_MARGIN_S: u64 = 60;

/// Runs a lab machine whose init prints `===BENCH-RUN <i> …` before scheduled run `i`
/// and `===BENCH-END===` after the last, and returns its console and wall time. Lines
/// starting with any of `progress` are echoed as they arrive. The machine is killed when
/// it takes longer than `startup` to its first run, longer than `bounds[i]` +
/// [`HOST_MARGIN_S`] for run `i`, or longer than that margin to power off: each run has its
/// own limit, not a share of the whole schedule's.
pub fn run_lab_schedule(
    mut machine: Command,
    bounds: &[u64],
    startup: Duration,
    progress: &'static [&'static str],
) -> (String, Duration) {
    use std::sync::{Arc, Mutex};
    let _machine = lab::lock_machine_wide();
    let started = Instant::now();
    let deadline = Arc::new(Mutex::new(started + startup));
    let mut child = machine.spawn().expect("starting the lab machine");
    let mut stdout = child.stdout.take().expect("lab stdout");
    let reader_deadline = Arc::clone(&deadline);
    let bounds = bounds.to_vec();
    // Echo progress as it arrives (a full run takes minutes) and move the deadline at
    // every run marker.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut echoed = 0;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let Some(end) = all.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            for line in String::from_utf8_lossy(&all[echoed..end]).lines() {
                let line = line.trim();
                if let Some(bound) = run_marker_bound(line, &bounds) {
                    let next = Instant::now() + Duration::from_secs(bound + HOST_MARGIN_S);
                    *reader_deadline.lock().unwrap_or_else(|e| e.into_inner()) = next;
                }
                if progress.iter().any(|p| line.starts_with(p)) {
                    eprintln!("  {line}");
                }
            }
            echoed = end;
        }
        all
    });
    while child.try_wait().ok().flatten().is_none() {
        let limit = *deadline.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() > limit {
            eprintln!(
                "lab machine passed its current run's bound after {:.0} s; stopping it",
                started.elapsed().as_secs_f64()
            );
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.wait();
    let elapsed = started.elapsed();
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    (console, elapsed)
}

/// The bound of the run a console line starts (`===BENCH-RUN <i> …`), or, for the end
/// marker, zero (what is left is powering off).
fn run_marker_bound(line: &str, bounds: &[u64]) -> Option<u64> {
    if line.starts_with("===BENCH-END") {
        return Some(0);
    }
    let rest = line.strip_prefix("===BENCH-RUN ")?;
    let index: usize = rest.split_whitespace().next()?.parse().ok()?;
    bounds.get(index).copied()
}

fn run_lab(cfg: &BenchConfig) -> BenchOutput {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let cpio_bytes = bench_cpio(cfg);
    let cpio = dir.path().join("bench.cpio");
    std::fs::write(&cpio, &cpio_bytes).expect("writing the lab initramfs");
    let outer_mem = cfg.lab_mem_mib(cpio_bytes.len() as u64);
    let runs = schedule(cfg).len();
    eprintln!(
        "lab machine: {outer_mem} MiB, initramfs {} MiB, {runs} boots",
        cpio_bytes.len() >> 20,
    );
    let bounds = vec![run_bound_s(cfg); runs];
    let (console, elapsed) = run_lab_schedule(
        lab::lab_machine(outer_mem, &cpio),
        &bounds,
        Duration::from_secs(180),
        &PROGRESS,
    );
    collect(Runner::Lab, &console, elapsed)
}

/// Per-variant medians.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub label: &'static str,
    pub ok_runs: usize,
    pub failed_runs: usize,
    pub median_ms: Option<f64>,
    pub median_overhead_kib: Option<f64>,
    pub median_anon_overhead_kib: Option<f64>,
    pub median_peak_overhead_kib: Option<f64>,
    pub median_excluded_kib: Option<f64>,
    pub median_guest_kib: Option<f64>,
    pub median_rss_kib: Option<f64>,
    pub median_helper_kib: Option<f64>,
}

pub fn summarize(measures: &[Measure], variant: Variant) -> Summary {
    let ok: Vec<&Measure> = measures
        .iter()
        .filter(|m| m.label == variant.label() && m.ms.is_some())
        .collect();
    let failed = measures
        .iter()
        .filter(|m| m.label == variant.label() && m.ms.is_none())
        .count();
    let med = |f: fn(&Measure) -> u64| median(&ok.iter().map(|m| f(m)).collect::<Vec<_>>());
    Summary {
        label: variant.label(),
        ok_runs: ok.len(),
        failed_runs: failed,
        median_ms: med(|m| m.ms.unwrap_or(0)),
        median_overhead_kib: med(|m| m.overhead_kib),
        median_anon_overhead_kib: med(|m| m.anon_overhead_kib),
        median_peak_overhead_kib: med(|m| m.peak_overhead_kib),
        median_excluded_kib: med(|m| m.excluded_kib),
        median_guest_kib: med(|m| m.guest_kib),
        median_rss_kib: med(|m| m.rss_kib),
        median_helper_kib: med(|m| m.helper_kib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_lines_parse_with_all_fields() {
        let m = parse_measure(
            "MEASURE label=ours ok=1 ms=7012 rss_kib=60000 guest_kib=50000 excluded_kib=0 \
             overhead_kib=10000 anon_overhead_kib=3000 peak_overhead_kib=11000 hwm_kib=61000 \
             helper_kib=150 samples=30\r",
        )
        .unwrap();
        assert_eq!(m.label, "ours");
        assert_eq!(m.ms, Some(7012));
        assert_eq!(m.overhead_kib, 10000);
        assert_eq!(m.peak_overhead_kib, 11000);
        assert_eq!(m.hwm_kib, 61000);
        assert_eq!(m.helper_kib, 150);
        assert_eq!(m.stderr_ms, None);
        let restore =
            parse_measure("MEASURE label=restore ok=1 ms=730 rss_kib=0 samples=1 stderr_ms=250")
                .unwrap();
        assert_eq!((restore.ms, restore.stderr_ms), (Some(730), Some(250)));
    }

    #[test]
    fn failed_measure_lines_keep_the_reason_and_no_time() {
        let m = parse_measure("MEASURE label=qemu ok=0 reason=timed out waiting ms=3").unwrap();
        assert_eq!(m.ms, None);
        assert_eq!(m.reason, "timed out waiting ms=3");
        assert_eq!(parse_measure("BULKHEAD-READY 6.1"), None);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[5, 1, 3]), Some(3.0));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ldd_output_yields_library_and_loader_paths_only() {
        let text = "\tlinux-vdso.so.1 (0x00007ff)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn every_round_runs_each_variant_once_and_the_first_rotates() {
        let cfg = BenchConfig {
            runs: 3,
            ..BenchConfig::default()
        };
        let s = schedule(&cfg);
        let n = Variant::ALL.len();
        assert_eq!(s.len(), 3 * n);
        for round in s.chunks(n) {
            for v in Variant::ALL {
                assert_eq!(round.iter().filter(|&&x| x == v).count(), 1);
            }
        }
        assert_ne!(s[0], s[n]);
        assert_ne!(s[n], s[2 * n]);
    }

    #[test]
    fn both_vmms_get_the_same_kernel_initrd_memory_and_cmdline() {
        let cfg = BenchConfig::default();
        let p = Paths::in_lab();
        let ours = boot_command(Variant::Ours, &cfg, &p).join(" ");
        let qemu = boot_command(Variant::Qemu, &cfg, &p).join(" ");
        assert!(ours.contains("--kernel=/guest/vmlinux --initrd=/guest/initrd --mem=256M"));
        assert!(ours.contains(&format!("--cmdline={}", cfg.cmdline)));
        assert!(ours.contains("--display=none"));
        assert!(qemu.contains("-m 256M -kernel /guest/vmlinux -initrd /guest/initrd"));
        let ours_bz = boot_command(Variant::OursBzImage, &cfg, &p).join(" ");
        let qemu_bz = boot_command(Variant::QemuBzImage, &cfg, &p).join(" ");
        assert!(ours_bz.contains("--kernel=/guest/vmlinuz --initrd=/guest/initrd --mem=256M"));
        assert!(qemu_bz.contains("-m 256M -kernel /guest/vmlinuz -initrd /guest/initrd"));
        assert!(qemu.contains(&format!("-append {}", cfg.cmdline)));
        assert!(qemu.contains("-accel kvm"));
    }

    #[test]
    fn only_the_framebuffer_variant_excludes_the_framebuffer_mapping() {
        let cfg = BenchConfig::default();
        let p = Paths::in_lab();
        let fb = measure_command(Variant::OursFramebuffer, &cfg, &p).join(" ");
        assert!(fb.contains("--exclude-size 3145728 --"));
        assert!(fb.contains("--display=1024x768"));
        let ours = measure_command(Variant::Ours, &cfg, &p).join(" ");
        assert!(!ours.contains("--exclude-size"));
        assert!(ours.contains("--measure-child"));
        let qemu = measure_command(Variant::Qemu, &cfg, &p).join(" ");
        assert!(!qemu.contains("--measure-child"));
    }

    #[test]
    fn the_supervised_variant_measures_the_partition_process_under_lab_supervise() {
        let cfg = BenchConfig::default();
        let p = Paths::in_lab();
        let cmd = measure_command(Variant::OursSupervised, &cfg, &p).join(" ");
        assert!(cmd.contains("--exclude-size 3145728 --measure-child -- /lab-supervise"));
        assert!(cmd.contains("wait-exit -- /bulkhead-vmm --kernel=/guest/vmlinux"));
        assert!(cmd.contains("--display=1024x768"));
        assert!(
            !cmd.contains("--serial"),
            "serial comes through the supervisor"
        );
    }

    #[test]
    fn every_scheduled_boot_in_the_lab_init_is_wrapped_in_its_own_bound() {
        let cfg = BenchConfig {
            runs: 2,
            boot_timeout_s: 100,
            ..BenchConfig::default()
        };
        let init = bench_init(&cfg);
        let runs = schedule(&cfg).len();
        assert_eq!(init.matches("===BENCH-RUN ").count(), runs);
        assert_eq!(init.matches("\nsetsid '/lab-measure'").count(), runs);
        assert_eq!(init.matches("setsid sh -c 'sleep 130;").count(), runs);
        assert_eq!(init.matches("wait $run\n").count(), runs);
        // Each run is started, watched and reaped before the next one starts.
        let first = init.find("===BENCH-RUN 0 ").unwrap();
        let second = init.find("===BENCH-RUN 1 ").unwrap();
        let between = &init[first..second];
        assert!(between.contains("run=$!") && between.contains("kill -KILL $wd -$wd -$run"));
        assert!(init.trim_end().ends_with("poweroff -f"));
    }

    #[test]
    fn a_cut_run_reports_a_failed_measure_for_its_label() {
        let text = bounded_run(3, "qemu", 42, &["/q".to_string(), "a b".to_string()]);
        assert!(text.starts_with("echo \"===BENCH-RUN 3 qemu===\"\n"));
        assert!(text.contains("setsid '/q' 'a b' &\n"));
        let failed = text
            .lines()
            .find(|l| l.starts_with("[ -e /tmp/cut ]"))
            .unwrap();
        let m = parse_measure(
            failed
                .split("echo \"")
                .nth(1)
                .unwrap()
                .trim_end_matches('"'),
        )
        .unwrap();
        assert_eq!((m.label.as_str(), m.ms), ("qemu", None));
        assert!(m.reason.contains("42 s"));
    }

    #[test]
    fn run_markers_move_the_host_deadline_to_that_runs_bound() {
        let bounds = [10, 20];
        assert_eq!(
            run_marker_bound("===BENCH-RUN 1 qemu===", &bounds),
            Some(20)
        );
        assert_eq!(run_marker_bound("===BENCH-RUN 7 qemu===", &bounds), None);
        assert_eq!(run_marker_bound("===BENCH-END===", &bounds), Some(0));
        assert_eq!(run_marker_bound("MEASURE label=ours", &bounds), None);
    }

    #[test]
    fn summaries_skip_failed_runs_but_count_them() {
        let m = |label: &str, ms: Option<u64>, overhead| Measure {
            label: label.into(),
            ms,
            rss_kib: 0,
            guest_kib: 0,
            excluded_kib: 0,
            overhead_kib: overhead,
            anon_overhead_kib: 0,
            peak_overhead_kib: 0,
            hwm_kib: 0,
            helper_kib: 0,
            stderr_ms: None,
            reason: String::new(),
        };
        let all = [
            m("ours", Some(100), 10),
            m("ours", None, 0),
            m("ours", Some(300), 30),
            m("qemu", Some(900), 90),
        ];
        let s = summarize(&all, Variant::Ours);
        assert_eq!((s.ok_runs, s.failed_runs), (2, 1));
        assert_eq!(s.median_ms, Some(200.0));
        assert_eq!(s.median_overhead_kib, Some(20.0));
    }
}
