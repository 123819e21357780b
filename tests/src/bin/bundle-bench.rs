//! Bundle benchmark: export and import of a partition's private disk through the bundle
//! code (`bulkhead_supervisor::bundle`: sparse extents, zstd -3, age with a passphrase,
//! SHA-256 per record — what `bulkhead export`/`import` and the app's dialogs run) against
//! the same disk through `tar --sparse -c | zstd -3` and `cp --sparse=always`. Prints every
//! figure and the ratios ours/baseline. A benchmark, not a test: nothing asserts a timing.
//!
//! The disk is made like a partition's (`private_disk::open_or_create`, the default
//! 2048 MiB sparse ext4), then `--fill-mib` of files are written into it with `debugfs`:
//! half text-like (compresses well), half random (does not), in 4 MiB files.
//!
//! Each variant runs `--runs` times, interleaved; medians are printed. Ours runs twice per
//! round: as shipped (scrypt calibrated by age to about a second each way, by design) and
//! with the cheapest scrypt, so the data path can be compared with the baseline alone.
//!
//! `cargo run --release -p bulkhead-tests --bin bundle-bench -- [--runs N] [--disk-mib N]
//! [--fill-mib N] [--step-timeout S] [--work-factor N]`

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bulkhead_supervisor::bundle::{self, BundleWriter, SecretString};
use bulkhead_supervisor::private_disk;
use bulkhead_tests::bench;

const USAGE: &str = "usage: bundle-bench [--runs N] [--disk-mib N] [--fill-mib N] \
                     [--step-timeout S] [--work-factor N]";
const FILE_MIB: u64 = 4;

struct Config {
    runs: usize,
    disk_mib: u64,
    fill_mib: u64,
    step_timeout_s: u64,
    /// scrypt's log2(N); `None`: what export uses (about one second on this machine).
    work_factor: Option<u8>,
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        runs: 3,
        disk_mib: 2048,
        fill_mib: 200,
        step_timeout_s: 600,
        work_factor: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = |v: Option<&String>| -> Result<u64, String> {
            let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{flag} `{v}` is not a whole number"))
        };
        match flag.as_str() {
            "--runs" => cfg.runs = value(it.next())? as usize,
            "--disk-mib" => cfg.disk_mib = value(it.next())?,
            "--fill-mib" => cfg.fill_mib = value(it.next())?,
            "--step-timeout" => cfg.step_timeout_s = value(it.next())?,
            "--work-factor" => {
                let w = value(it.next())?;
                cfg.work_factor = Some(u8::try_from(w).map_err(|_| "--work-factor is 1..=30")?);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if cfg.fill_mib + 64 > cfg.disk_mib {
        return Err(format!(
            "--fill-mib {} does not fit a {} MiB disk with room for ext4",
            cfg.fill_mib, cfg.disk_mib
        ));
    }
    if cfg.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if cfg.step_timeout_s == 0 {
        return Err("--step-timeout must be at least 1".into());
    }
    Ok(cfg)
}

/// Runs `f` on its own thread and waits at most `bound`; a step that outlives it ends the
/// whole benchmark (the thread cannot be killed, the process can).
fn bounded<T: Send + 'static>(
    label: &str,
    bound: Duration,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<(T, Duration), String> {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(bound) {
        Ok(Ok(v)) => Ok((v, started.elapsed())),
        Ok(Err(e)) => Err(format!("{label}: {e}")),
        Err(_) => Err(format!("{label}: cut after {} s", bound.as_secs())),
    }
}

/// A command under [`bench::run_bounded`] (its process group killed at the bound), timed.
fn bounded_cmd(label: &str, bound: Duration, sh: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let out = bench::run_bounded(label, &["sh".into(), "-ec".into(), sh.to_string()], bound);
    let took = started.elapsed();
    if out.contains("ok=0") {
        return Err(format!("{label}: cut after {} s", bound.as_secs()));
    }
    Ok(took)
}

/// Deterministic bytes: xorshift64*, fast and incompressible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const WORDS: [&str; 24] = [
    "partition",
    "the",
    "mail",
    "browser",
    "policy",
    "of",
    "and",
    "kernel",
    "disk",
    "a",
    "clipboard",
    "to",
    "template",
    "firewall",
    "relay",
    "is",
    "guest",
    "host",
    "in",
    "rule",
    "snapshot",
    "for",
    "2026-12-02",
    "\n",
];

/// `count` files of [`FILE_MIB`] in `dir`: even ones text-like, odd ones random.
fn make_files(dir: &Path, count: u64) -> Result<Vec<PathBuf>, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let size = (FILE_MIB << 20) as usize;
    let mut out = Vec::new();
    for i in 0..count {
        let mut buf = Vec::with_capacity(size + 32);
        if i % 2 == 0 {
            while buf.len() < size {
                let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
                buf.extend_from_slice(w.as_bytes());
                buf.push(b' ');
            }
        } else {
            while buf.len() < size {
                buf.extend_from_slice(&rng.next().to_le_bytes());
            }
        }
        buf.truncate(size);
        let path = dir.join(format!(
            "file{i:03}.{}",
            if i % 2 == 0 { "txt" } else { "bin" }
        ));
        fs::File::create(&path)
            .and_then(|mut f| f.write_all(&buf))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

fn allocated_mib(path: &Path) -> f64 {
    fs::metadata(path)
        .map(|m| (m.blocks() * 512) as f64 / f64::from(1 << 20))
        .unwrap_or(0.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn ratio(ours: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", ours / base)
    } else {
        "-".into()
    }
}

/// One round's figures (seconds, bytes).
struct Round {
    export: f64,
    import: f64,
    export_data: f64,
    import_data: f64,
    tar: f64,
    untar: f64,
    cp: f64,
    bundle_size: u64,
    tar_size: u64,
}

/// Every round's times in milliseconds, for medians.
#[derive(Default)]
struct Times {
    export: Vec<u64>,
    import: Vec<u64>,
    export_data: Vec<u64>,
    import_data: Vec<u64>,
    tar: Vec<u64>,
    untar: Vec<u64>,
    cp: Vec<u64>,
}

impl Times {
    fn push(&mut self, r: &Round) {
        let ms = |s: f64| (s * 1000.0) as u64;
        self.export.push(ms(r.export));
        self.import.push(ms(r.import));
        self.export_data.push(ms(r.export_data));
        self.import_data.push(ms(r.import_data));
        self.tar.push(ms(r.tar));
        self.untar.push(ms(r.untar));
        self.cp.push(ms(r.cp));
    }
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_string())
}

/// Our export then checked import of `disk` in `dir` at scrypt `work_factor` (`None`:
/// calibrated to about a second, as shipped): (export time, import time, bundle bytes).
fn ours(
    dir: &Path,
    disk: &Path,
    work_factor: Option<u8>,
    bound: Duration,
) -> Result<(Duration, Duration, u64), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bundle_path = dir.join("bench.bulkhead");
    let (b, d) = (bundle_path.clone(), disk.to_path_buf());
    let (_, export) = bounded("export", bound, move || {
        let mut writer = BundleWriter::create(&b, secret("bench passphrase"), work_factor)
            .map_err(|e| e.to_string())?;
        writer
            .add_file("private.img", &d, &mut |_| {})
            .map_err(|e| e.to_string())?;
        writer.finish().map(drop).map_err(|e| e.to_string())
    })?;
    let bundle_size = len(&bundle_path);
    let (b, staging) = (bundle_path, dir.join("staging"));
    let (unpacked_ok, import) = bounded("import", bound, move || {
        let unpacked = bundle::unpack(&b, secret("bench passphrase"), &staging, &mut |_| {})
            .map_err(|e| e.to_string())?;
        let copy = unpacked.path("private.img").map(Path::to_path_buf);
        Ok(copy.is_some_and(|c| len(&c) > 0))
    })?;
    if !unpacked_ok {
        return Err("import: the bundle held no private.img".into());
    }
    Ok((export, import, bundle_size))
}

/// Ours as shipped and with the cheapest scrypt, then the baseline, each step bounded; the
/// outputs are removed before the next round.
fn one_round(cfg: &Config, root: &Path, disk: &Path, bound: Duration) -> Result<Round, String> {
    let out = root.join("round");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let (export, import, bundle_size) = ours(&out.join("shipped"), disk, cfg.work_factor, bound)?;
    // The data path alone: scrypt at its cheapest (log2 N = 1) costs nothing.
    let (export_data, import_data, _) = ours(&out.join("data"), disk, Some(1), bound)?;

    // Baseline: the same disk through tar --sparse | zstd -3 (one thread, like ours) and
    // back; and a sparse copy.
    let tarball = out.join("bench.tar.zst");
    let dir = disk.parent().map(Path::to_path_buf).unwrap_or_default();
    let tar = bounded_cmd(
        "tar | zstd",
        bound,
        &format!(
            "tar --sparse -cf - -C {} private.img | zstd -3 -q -T1 -o {}",
            dir.display(),
            tarball.display()
        ),
    )?;
    let untar_dir = out.join("untar");
    fs::create_dir_all(&untar_dir).map_err(|e| e.to_string())?;
    let untar = bounded_cmd(
        "zstd -d | tar -x",
        bound,
        &format!(
            "zstd -d -q -c {} | tar -xf - -C {}",
            tarball.display(),
            untar_dir.display()
        ),
    )?;
    let cp = bounded_cmd(
        "cp --sparse=always",
        bound,
        &format!(
            "cp --sparse=always {} {}",
            disk.display(),
            out.join("copy.img").display()
        ),
    )?;
    let round = Round {
        export: export.as_secs_f64(),
        import: import.as_secs_f64(),
        export_data: export_data.as_secs_f64(),
        import_data: import_data.as_secs_f64(),
        tar: tar.as_secs_f64(),
        untar: untar.as_secs_f64(),
        cp: cp.as_secs_f64(),
        bundle_size,
        tar_size: len(&tarball),
    };
    let _ = fs::remove_dir_all(&out);
    Ok(round)
}

fn run(cfg: &Config) -> Result<(), String> {
    let bound = Duration::from_secs(cfg.step_timeout_s);
    let tmp = tempfile::Builder::new()
        .prefix("bundle-bench-")
        .tempdir_in(std::env::var_os("TMPDIR").map_or("/var/tmp".into(), PathBuf::from))
        .map_err(|e| format!("temporary directory: {e}"))?;
    let root = tmp.path().to_path_buf();
    let disk = root.join("partitions/bench/private.img");

    // The disk, made as the supervisor makes a partition's, then filled with files.
    let disk_mib = u32::try_from(cfg.disk_mib).map_err(|_| "--disk-mib too large")?;
    let d = disk.clone();
    let (_, took) = bounded("making the private disk", bound, move || {
        private_disk::open_or_create(&d, disk_mib)
            .map(drop)
            .map_err(|e| e.to_string())
    })?;
    println!(
        "private disk: {} MiB sparse ext4 made in {:.2} s",
        cfg.disk_mib,
        took.as_secs_f64()
    );
    let count = cfg.fill_mib.div_ceil(FILE_MIB);
    let files = make_files(&root.join("files"), count)?;
    let mut script = String::from("mkdir data\n");
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        script.push_str(&format!(
            "write {} data/{}\n",
            f.display(),
            name.unwrap_or_default()
        ));
    }
    fs::write(root.join("debugfs.cmds"), &script).map_err(|e| e.to_string())?;
    let took = bounded_cmd(
        "filling the disk",
        bound,
        &format!(
            "debugfs -w -f {} {} >/dev/null 2>&1",
            root.join("debugfs.cmds").display(),
            disk.display()
        ),
    )?;
    let _ = fs::remove_dir_all(root.join("files"));
    let data_mib = allocated_mib(&disk);
    println!(
        "filled with {count} files of {FILE_MIB} MiB (half text, half random) in {:.2} s: \
         {data_mib:.1} MiB allocated of {} MiB",
        took.as_secs_f64(),
        cfg.disk_mib
    );

    let mut t = Times::default();
    let mut sizes = (0u64, 0u64);
    for run in 0..cfg.runs {
        let r = one_round(cfg, &root, &disk, bound)?;
        println!(
            "run {}: export {:.2} s ({:.2} without scrypt), import {:.2} s ({:.2}), \
             tar|zstd {:.2} s, unzstd|untar {:.2} s, cp {:.2} s",
            run + 1,
            r.export,
            r.export_data,
            r.import,
            r.import_data,
            r.tar,
            r.untar,
            r.cp
        );
        sizes = (r.bundle_size, r.tar_size);
        t.push(&r);
    }
    let m = |v: &[u64]| bench::median(v).unwrap_or(0.0) / 1000.0;
    let (export, import) = (m(&t.export), m(&t.import));
    let (export_data, import_data) = (m(&t.export_data), m(&t.import_data));
    let (tar, untar, cp) = (m(&t.tar), m(&t.untar), m(&t.cp));
    println!();
    println!("medians of {} run(s):", cfg.runs);
    println!("{:<40} {:>10} {:>12}", "", "time (s)", "size (MiB)");
    println!(
        "{:<40} {:>10.2} {:>12.1}",
        "bundle export (ours)",
        export,
        mib(sizes.0)
    );
    println!("{:<40} {:>10.2}", "bundle import (ours, checked)", import);
    println!(
        "{:<40} {:>10.2}",
        "  export, scrypt at log2 N = 1", export_data
    );
    println!(
        "{:<40} {:>10.2}",
        "  import, scrypt at log2 N = 1", import_data
    );
    println!(
        "{:<40} {:>10.2} {:>12.1}",
        "tar --sparse | zstd -3 (baseline)",
        tar,
        mib(sizes.1)
    );
    println!("{:<40} {:>10.2}", "zstd -d | tar -x (baseline)", untar);
    println!("{:<40} {:>10.2}", "cp --sparse=always", cp);
    println!();
    println!(
        "ratios ours/baseline: export {} ({} without scrypt), import {} ({} without scrypt), \
         size {}; export/cp {}",
        ratio(export, tar),
        ratio(export_data, tar),
        ratio(import, untar),
        ratio(import_data, untar),
        ratio(sizes.0 as f64, sizes.1 as f64),
        ratio(export, cp),
    );
    println!(
        "data path over {data_mib:.0} MiB allocated: export {:.0} MiB/s, import {:.0} MiB/s \
         (load average {})",
        data_mib / export_data.max(1e-9),
        data_mib / import_data.max(1e-9),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bundle-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bundle-bench: {e}");
            ExitCode::from(1)
        }
    }
}
