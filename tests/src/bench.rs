//! The boot benchmark: `bulkhead-vmm` against QEMU booting the same kernel, initrd,
//! memory and command line, interleaved in one invocation, measured by `lab-measure`
//! (time from spawn to the guest's ready marker; RSS beyond guest RAM and framebuffer).
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
/// (seen with strace), plus the TCG accelerator module it probes.
const QEMU_DATA_FILES: [&str; 5] = [
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so",
];

/// One configuration being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `bulkhead-vmm --display none`.
    Ours,
    /// `qemu-system-x86_64 -accel kvm`, headless.
    Qemu,
    /// `bulkhead-vmm --display WxH`: what the framebuffer costs.
    OursFramebuffer,
    /// The same as [`Variant::OursFramebuffer`], run the way the app runs partitions: a
    /// sandboxed, seccomp-filtered process under the supervisor (`lab-supervise`),
    /// framebuffer shared over the control socket. Memory is the partition process's.
    OursSupervised,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Ours,
        Variant::Qemu,
        Variant::OursFramebuffer,
        Variant::OursSupervised,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::Ours => "ours",
            Variant::Qemu => "qemu",
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
    pub kernel: String,
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
            kernel: "/guest/vmlinuz".into(),
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
            cmd.extend(guest_flags(cfg, p));
            cmd.push(format!("--display={}x{}", cfg.display.0, cfg.display.1));
            cmd
        }
        Variant::Ours | Variant::OursFramebuffer => {
            let display = match variant {
                Variant::OursFramebuffer => format!("{}x{}", cfg.display.0, cfg.display.1),
                _ => "none".into(),
            };
            let mut cmd = vec![p.vmm.clone(), "run".into()];
            cmd.extend(guest_flags(cfg, p));
            cmd.extend([
                "--serial=-".into(),
                format!("--display={display}"),
                format!("--timeout={}", cfg.boot_timeout_s),
            ]);
            cmd
        }
        Variant::Qemu => [
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
            &p.kernel,
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

/// Kernel, initrd, memory, vCPUs and command line: the same for every variant of ours.
fn guest_flags(cfg: &BenchConfig, p: &Paths) -> [String; 5] {
    [
        format!("--kernel={}", p.kernel),
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
    if variant == Variant::OursSupervised {
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
fn qemu_files() -> Vec<PathBuf> {
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

/// The lab machine's /init: load kvm-amd, then every scheduled boot under lab-measure.
pub fn bench_init(cfg: &BenchConfig) -> String {
    let p = Paths::in_lab();
    let mut runs = String::new();
    for (i, variant) in schedule(cfg).into_iter().enumerate() {
        let cmd: Vec<String> = measure_command(variant, cfg, &p)
            .iter()
            .map(|a| lab::shell_quote(a))
            .collect();
        runs.push_str(&format!(
            "echo '===BENCH-RUN {i} {}==='\n{}\n",
            variant.label(),
            cmd.join(" ")
        ));
    }
    format!(
        "{}echo \"===BENCH-START===\"\n{runs}echo \"===BENCH-END===\"\npoweroff -f\n",
        lab::lab_init_prologue()
    )
}

/// Adds `path` (absolute) and its parent directories, each directory once.
fn add_file(
    w: &mut CpioWriter<Vec<u8>>,
    dirs: &mut Vec<String>,
    path: &str,
    mode: u32,
    data: &[u8],
) {
    let rel = path.trim_start_matches('/');
    let parts: Vec<&str> = rel.split('/').collect();
    for depth in 1..parts.len() {
        let dir = parts[..depth].join("/");
        if !dirs.contains(&dir) {
            w.dir(&dir).unwrap();
            dirs.push(dir);
        }
    }
    w.file(rel, mode, data).unwrap();
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The lab machine's initramfs for the benchmark.
pub fn bench_cpio(cfg: &BenchConfig) -> Vec<u8> {
    let root = lab::lab_root();
    let guest = lab::guest();
    let mut w = CpioWriter::new(Vec::new());
    let mut dirs = Vec::new();
    for d in ["dev", "proc", "sys", "tmp"] {
        w.dir(d).unwrap();
    }
    add_file(
        &mut w,
        &mut dirs,
        "/bin/busybox",
        0o755,
        &read(&root.join("bin/busybox")),
    );
    w.symlink("bin/sh", "busybox").unwrap();
    let kmods = root
        .join("lib/modules")
        .join(&guest.kernel_version)
        .join("kernel");
    for m in lab::LAB_MODULES {
        let base = m.rsplit('/').next().unwrap_or(m);
        let data = read(&kmods.join(format!("{m}.ko")));
        add_file(
            &mut w,
            &mut dirs,
            &format!("/modules/{base}.ko"),
            0o644,
            &data,
        );
    }
    let p = Paths::in_lab();
    add_file(&mut w, &mut dirs, &p.vmm, 0o755, &read(&lab::static_vmm()));
    add_file(
        &mut w,
        &mut dirs,
        &p.lab_measure,
        0o755,
        &read(&static_lab_measure()),
    );
    add_file(
        &mut w,
        &mut dirs,
        &p.lab_supervise,
        0o755,
        &read(&lab::static_lab_supervise()),
    );
    add_file(&mut w, &mut dirs, &p.kernel, 0o644, &read(&guest.kernel));
    add_file(&mut w, &mut dirs, &p.initrd, 0o644, &read(&guest.initrd));
    for f in qemu_files() {
        let path = f.to_string_lossy();
        // The binary goes where Paths::in_lab says, so `..` from it finds share/qemu.
        let dest = if path.ends_with(&format!("/{QEMU}")) {
            p.qemu.clone()
        } else {
            path.into_owned()
        };
        add_file(&mut w, &mut dirs, &dest, 0o755, &read(&f));
    }
    add_file(
        &mut w,
        &mut dirs,
        "/init",
        0o755,
        bench_init(cfg).as_bytes(),
    );
    w.finish().unwrap()
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
        initrd: guest.initrd.display().to_string(),
    };
    let started = Instant::now();
    let mut text = String::new();
    for variant in schedule(cfg) {
        let cmd = measure_command(variant, cfg, &p);
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stderr(Stdio::inherit())
            .output()
            .expect("running lab-measure");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprint!("{stdout}");
        text.push_str(&stdout);
    }
    collect(Runner::Direct, &text, started.elapsed())
}

/// Console lines worth showing while the lab runs.
const PROGRESS: [&str; 4] = ["MEASURE ", "===BENCH", "lab-measure:", "LAB:"];

fn run_lab(cfg: &BenchConfig) -> BenchOutput {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let cpio_bytes = bench_cpio(cfg);
    let cpio = dir.path().join("bench.cpio");
    std::fs::write(&cpio, &cpio_bytes).expect("writing the lab initramfs");
    let outer_mem = cfg.lab_mem_mib(cpio_bytes.len() as u64);
    eprintln!(
        "lab machine: {outer_mem} MiB, initramfs {} MiB, {} boots",
        cpio_bytes.len() >> 20,
        schedule(cfg).len()
    );
    let started = Instant::now();
    let mut child = lab::lab_machine(outer_mem, &cpio)
        .spawn()
        .expect("starting the lab machine");
    let mut stdout = child.stdout.take().expect("lab stdout");
    // Echo progress as it arrives: a full run takes minutes.
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
                if PROGRESS.iter().any(|p| line.starts_with(p)) {
                    eprintln!("  {}", line.trim_end());
                }
            }
            echoed = end;
        }
        all
    });
    let per_boot = cfg.boot_timeout_s + 10;
    let limit = Duration::from_secs(120 + per_boot * schedule(cfg).len() as u64);
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > limit {
            eprintln!("lab machine exceeded {} s; stopping it", limit.as_secs());
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.wait();
    let elapsed = started.elapsed();
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
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
        assert!(ours.contains("--kernel=/guest/vmlinuz --initrd=/guest/initrd --mem=256M"));
        assert!(ours.contains(&format!("--cmdline={}", cfg.cmdline)));
        assert!(ours.contains("--display=none"));
        assert!(qemu.contains("-m 256M -kernel /guest/vmlinuz -initrd /guest/initrd"));
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
    }

    #[test]
    fn the_supervised_variant_measures_the_partition_process_under_lab_supervise() {
        let cfg = BenchConfig::default();
        let p = Paths::in_lab();
        let cmd = measure_command(Variant::OursSupervised, &cfg, &p).join(" ");
        assert!(cmd.contains("--exclude-size 3145728 --measure-child -- /lab-supervise"));
        assert!(cmd.contains("wait-exit -- /bulkhead-vmm --kernel=/guest/vmlinuz"));
        assert!(cmd.contains("--display=1024x768"));
        assert!(
            !cmd.contains("--serial"),
            "serial comes through the supervisor"
        );
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
