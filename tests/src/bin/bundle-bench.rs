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
//! `cargo run --release -p bulkhead-tests --bin bundle-bench -- [--disk-mib N]
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

const USAGE: &str =
    "usage: bundle-bench [--disk-mib N] [--fill-mib N] [--step-timeout S] [--work-factor N]";
const FILE_MIB: u64 = 4;

struct Config {
    disk_mib: u64,
    fill_mib: u64,
    step_timeout_s: u64,
    /// scrypt's log2(N); `None`: what export uses (about one second on this machine).
    work_factor: Option<u8>,
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
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

    // Ours: export (write a bundle) and import (unpack it, checked), as the app does.
    let bundle_path = root.join("bench.bulkhead");
    let (b, d, w) = (bundle_path.clone(), disk.clone(), cfg.work_factor);
    let (_, export) = bounded("export", bound, move || {
        let mut writer =
            BundleWriter::create(&b, SecretString::from("bench passphrase".to_string()), w)
                .map_err(|e| e.to_string())?;
        writer
            .add_file("private.img", &d, &mut |_| {})
            .map_err(|e| e.to_string())?;
        writer.finish().map(drop).map_err(|e| e.to_string())
    })?;
    let bundle_size = len(&bundle_path);
    let (b, staging) = (bundle_path.clone(), root.join("staging"));
    let (unpacked_ok, import) = bounded("import", bound, move || {
        let out = bundle::unpack(
            &b,
            SecretString::from("bench passphrase".to_string()),
            &staging,
            &mut |_| {},
        )
        .map_err(|e| e.to_string())?;
        let copy = out.path("private.img").map(Path::to_path_buf);
        Ok(copy.is_some_and(|c| len(&c) > 0))
    })?;
    if !unpacked_ok {
        return Err("import: the bundle held no private.img".into());
    }
    // The fixed cost: scrypt once each way, on an empty bundle.
    let (b, w) = (root.join("empty.bulkhead"), cfg.work_factor);
    let (_, fixed) = bounded("empty export", bound, move || {
        let writer = BundleWriter::create(&b, SecretString::from("x".to_string()), w)
            .map_err(|e| e.to_string())?;
        writer.finish().map(drop).map_err(|e| e.to_string())
    })?;

    // Baseline: the same disk through tar --sparse | zstd -3, and back; and a sparse copy.
    let tarball = root.join("bench.tar.zst");
    let dir = disk.parent().map(Path::to_path_buf).unwrap_or_default();
    let tar_export = bounded_cmd(
        "tar | zstd",
        bound,
        &format!(
            "tar --sparse -cf - -C {} private.img | zstd -3 -q -T1 -o {}",
            dir.display(),
            tarball.display()
        ),
    )?;
    let tar_size = len(&tarball);
    let untar = root.join("untar");
    fs::create_dir_all(&untar).map_err(|e| e.to_string())?;
    let tar_import = bounded_cmd(
        "zstd -d | tar -x",
        bound,
        &format!(
            "zstd -d -q -c {} | tar -xf - -C {}",
            tarball.display(),
            untar.display()
        ),
    )?;
    let cp = bounded_cmd(
        "cp --sparse=always",
        bound,
        &format!(
            "cp --sparse=always {} {}",
            disk.display(),
            root.join("copy.img").display()
        ),
    )?;

    let s = |d: Duration| d.as_secs_f64();
    println!();
    println!("{:<34} {:>10} {:>12}", "", "time (s)", "size (MiB)");
    println!(
        "{:<34} {:>10.2} {:>12.1}",
        "bundle export (ours)",
        s(export),
        mib(bundle_size)
    );
    println!("{:<34} {:>10.2}", "bundle import (ours)", s(import));
    println!(
        "{:<34} {:>10.2}",
        "  of which scrypt (empty bundle)",
        s(fixed)
    );
    println!(
        "{:<34} {:>10.2} {:>12.1}",
        "tar --sparse | zstd -3 (baseline)",
        s(tar_export),
        mib(tar_size)
    );
    println!(
        "{:<34} {:>10.2}",
        "zstd -d | tar -x (baseline)",
        s(tar_import)
    );
    println!("{:<34} {:>10.2}", "cp --sparse=always", s(cp));
    println!();
    println!(
        "ratios ours/baseline: export time {}, import time {}, size {}; export/cp {}",
        ratio(s(export), s(tar_export)),
        ratio(s(import), s(tar_import)),
        ratio(bundle_size as f64, tar_size as f64),
        ratio(s(export), s(cp)),
    );
    println!(
        "throughput over {data_mib:.0} MiB of data: export {:.0} MiB/s, import {:.0} MiB/s",
        data_mib / s(export).max(1e-9),
        data_mib / s(import).max(1e-9)
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
