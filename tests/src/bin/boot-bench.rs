//! Boot benchmark: `bulkhead-vmm` vs QEMU (`-accel kvm`) booting the same Debian kernel and
//! initrd with the same memory and command line, interleaved, several runs each; both
//! boot the bzImage and the `vmlinux` extracted from it. Prints
//! per-run figures, medians, the ratio ours/QEMU and the memory beyond guest RAM and the
//! framebuffer. A benchmark, not a test: nothing here asserts a timing.
//!
//! `cargo run --release -p bulkhead-tests --bin boot-bench -- [--runs N] [--mem MIB]`

use std::process::ExitCode;

use bulkhead_tests::bench::{self, BenchConfig, Summary, Variant};

const USAGE: &str = "usage: boot-bench [--runs N] [--mem MIB] [--boot-timeout S]";

fn parse_args(args: &[String]) -> Result<BenchConfig, String> {
    let mut cfg = BenchConfig::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = |v: Option<&String>| -> Result<u64, String> {
            let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{flag} `{v}` is not a whole number"))
        };
        match flag.as_str() {
            "--runs" => cfg.runs = value(it.next())? as usize,
            "--mem" => cfg.mem_mib = value(it.next())?,
            "--boot-timeout" => cfg.boot_timeout_s = value(it.next())?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if cfg.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    // Below this, glibc's 64 MiB malloc arenas would look like guest RAM to lab-measure.
    if !(128..=3072).contains(&cfg.mem_mib) {
        return Err(format!(
            "--mem {} is outside 128..=3072 MiB (one guest RAM mapping below the PCI hole)",
            cfg.mem_mib
        ));
    }
    Ok(cfg)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn print_summary(s: &Summary) {
    println!(
        "{:<8} {:>3} ok {:>2} failed  median {:>8} ms  overhead {:>8} KiB (anon {:>7}, peak {:>8})  \
         guest RAM touched {:>7} KiB  framebuffer {:>6} KiB  total RSS {:>8} KiB",
        s.label,
        s.ok_runs,
        s.failed_runs,
        fmt_opt(s.median_ms),
        fmt_opt(s.median_overhead_kib),
        fmt_opt(s.median_anon_overhead_kib),
        fmt_opt(s.median_peak_overhead_kib),
        fmt_opt(s.median_guest_kib),
        fmt_opt(s.median_excluded_kib),
        fmt_opt(s.median_rss_kib),
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("boot-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let load_before = load_average();
    println!(
        "boot-bench: {} runs each of {}, guest {} MiB, cmdline `{}`, framebuffer variant {}x{}",
        cfg.runs,
        Variant::ALL.map(Variant::label).join(", "),
        cfg.mem_mib,
        cfg.cmdline,
        cfg.display.0,
        cfg.display.1
    );
    let out = bench::run(&cfg);
    let load_after = load_average();

    println!("\nrunner: {}", out.runner);
    println!("host load average before {load_before}, after {load_after}");
    println!(
        "total wall time: {:.1} s{}",
        out.elapsed.as_secs_f64(),
        if out.runner == bulkhead_tests::lab::Runner::Lab {
            " (lab machine boot, all guest boots, power-off)"
        } else {
            ""
        }
    );
    println!("\nper run (boot = spawn until `BULKHEAD-READY` on the serial console):");
    for m in &out.measures {
        match m.ms {
            Some(ms) => println!(
                "  {:<8} {:>7} ms  overhead {:>7} KiB  peak {:>7} KiB  guest {:>7} KiB  fb {:>5} KiB  VmHWM {:>7} KiB",
                m.label, ms, m.overhead_kib, m.peak_overhead_kib, m.guest_kib, m.excluded_kib, m.hwm_kib
            ),
            None => println!("  {:<8} FAILED: {}", m.label, m.reason),
        }
    }
    println!("\nmedians (overhead = RSS beyond guest RAM and framebuffer at the ready marker):");
    let summaries: Vec<Summary> = Variant::ALL
        .iter()
        .map(|&v| bench::summarize(&out.measures, v))
        .collect();
    for s in &summaries {
        print_summary(s);
    }
    let by = |v: Variant| summaries.iter().find(|s| s.label == v.label());
    let ours = by(Variant::Ours);
    let qemu = by(Variant::Qemu);
    let fb = by(Variant::OursFramebuffer);
    let ms = |v: Variant| by(v).and_then(|s| s.median_ms);
    if let (Some(o), Some(q)) = (ms(Variant::Ours), ms(Variant::Qemu)) {
        println!(
            "\nboot time ratio ours/QEMU, both booting vmlinux (medians): {:.3}",
            o / q
        );
    }
    if let (Some(o), Some(q)) = (ms(Variant::OursBzImage), ms(Variant::QemuBzImage)) {
        println!(
            "boot time ratio ours/QEMU, both booting the bzImage (medians): {:.3}",
            o / q
        );
    }
    if let (Some(v), Some(b)) = (ms(Variant::Ours), ms(Variant::OursBzImage)) {
        println!(
            "ours: vmlinux/bzImage (medians): {:.3} ({v:.0} ms vs {b:.0} ms)",
            v / b
        );
    }
    if let (Some(v), Some(b)) = (ms(Variant::Qemu), ms(Variant::QemuBzImage)) {
        println!(
            "QEMU: vmlinux/bzImage (medians): {:.3} ({v:.0} ms vs {b:.0} ms)",
            v / b
        );
    }
    let qemu_best = [ms(Variant::Qemu), ms(Variant::QemuBzImage)]
        .into_iter()
        .flatten()
        .reduce(f64::min);
    if let (Some(o), Some(q)) = (ms(Variant::Ours), qemu_best) {
        println!(
            "cold boot, ours (vmlinux) / QEMU's faster way (medians): {:.3} (goal <= 0.7)",
            o / q
        );
    }
    if let (Some(o), Some(q)) = (
        ours.and_then(|s| s.median_overhead_kib),
        qemu.and_then(|s| s.median_overhead_kib),
    ) {
        println!("memory overhead ratio ours/QEMU (medians): {:.3}", o / q);
    }
    if let (Some(o), Some(f)) = (ours, fb) {
        println!(
            "framebuffer {}x{}: boot {} ms vs {} ms headless; framebuffer mapping {} KiB resident; \
             overhead beyond it {} KiB vs {} KiB headless",
            cfg.display.0,
            cfg.display.1,
            fmt_opt(f.median_ms),
            fmt_opt(o.median_ms),
            fmt_opt(f.median_excluded_kib),
            fmt_opt(f.median_overhead_kib),
            fmt_opt(o.median_overhead_kib),
        );
    }
    if let (Some(f), Some(s)) = (fb, by(Variant::OursSupervised)) {
        println!(
            "supervised (sandboxed process, seccomp, shared framebuffer): boot {} ms vs {} ms \
             bare; partition process overhead {} KiB + {} KiB private to its reaper, vs {} KiB \
             bare",
            fmt_opt(s.median_ms),
            fmt_opt(f.median_ms),
            fmt_opt(s.median_overhead_kib),
            fmt_opt(s.median_helper_kib),
            fmt_opt(f.median_overhead_kib),
        );
    }
    let failed: usize = summaries.iter().map(|s| s.failed_runs).sum();
    let expected = cfg.runs * Variant::ALL.len();
    if out.measures.len() < expected || failed > 0 {
        println!(
            "\n{} of {expected} runs missing or failed; other output:\n{}",
            expected - out.measures.len() + failed,
            out.other_output
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
