//! `snapshot-bench`: what a restored partition costs against a cold-booted one, in one lab
//! invocation (or directly on VT-x/AMD-V... not yet: the lab only).
//!
//! The guest (the default image's kernel and initramfs, 512 MiB, a 1024x768 framebuffer)
//! prints `SNAPSHOT-NOW` from its test script, then a `TICK <8 random bytes>` line every
//! 20 ms. Timed, interleaved and rotated, `--runs` times each:
//!
//! - `cold`: `bulkhead-vmm run` from spawn until `SNAPSHOT-NOW` (a cold boot to the marker),
//! - `restore`: `bulkhead-vmm restore` of a snapshot taken at that marker, from spawn
//!   until the VMM runs the restored vCPUs (its stderr says so; what Firecracker counts
//!   as a restore) and until the guest's first `TICK` (only a running guest prints one;
//!   this also counts the guest faulting back the pages it needs, through nested paging
//!   in the lab, and forking three programs for it),
//!
//! then two restores of the one snapshot side by side: each one's RSS and PSS (pages of the
//! snapshot file both mapped copy-on-write and neither wrote are shared) and the random
//! bytes each read on its 8th tick (clones are not twins). Prints medians and the ratio
//! restore/cold (the goal: at most 0.05). A benchmark, not a test: nothing asserts a
//! timing; every step is cut at its own bound.
//!
//! ```text
//! snapshot-bench [--runs N] [--mem MIB]
//! ```

use std::process::ExitCode;
use std::time::Duration;

use bulkhead_supervisor::guest_image::cpio::CpioWriter;
use bulkhead_tests::bench::{self, LabCpio};
use bulkhead_tests::lab::{self, Runner};

const USAGE: &str = "usage: snapshot-bench [--runs N] [--mem MIB]";
const MARKER: &str = "SNAPSHOT-NOW";
/// What `bulkhead-vmm restore` prints on stderr the moment its vCPUs run.
const RESTORED_LINE: &str = "bulkhead-vmm: restored, guest running";
/// Which tick of each clone is compared: not the first few, whose bytes the guest's
/// hwrng core may have fetched before the snapshot (it reads 32 bytes from the device
/// and hands them out 8 at a time), so twins and clones alike would print them.
const COMPARED_TICK: usize = 8;
const DISPLAY: (u32, u32) = (1024, 768);
/// Seconds one boot or restore may take before the lab cuts it.
const RUN_BOUND_S: u64 = 240;
/// Seconds the side-by-side step may take, both restores included.
const CLONES_BOUND_S: u64 = 300;

/// After the marker the guest ticks until it is stopped; a restored one wakes inside
/// this loop, so its first output is a tick.
const GUEST_SCRIPT: &str = r#"
echo SNAPSHOT-NOW
while :; do
  echo "TICK $(head -c 8 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
  sleep 0.02
done
"#;

struct Config {
    runs: usize,
    mem_mib: u64,
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        runs: 3,
        mem_mib: 512,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{flag} `{v}` is not a whole number"))
        };
        match flag.as_str() {
            "--runs" => cfg.runs = value()? as usize,
            "--mem" => cfg.mem_mib = value()?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if !(1..=10).contains(&cfg.runs) {
        return Err(format!("--runs {} is outside 1..=10", cfg.runs));
    }
    if !(256..=2048).contains(&cfg.mem_mib) {
        return Err(format!("--mem {} is outside 256..=2048 MiB", cfg.mem_mib));
    }
    Ok(cfg)
}

fn framebuffer_bytes() -> u64 {
    u64::from(DISPLAY.0) * u64::from(DISPLAY.1) * 4
}

/// `bulkhead-vmm run` of the guest, serial on stdout, with `extra` flags.
fn run_command(cfg: &Config, extra: &[String]) -> Vec<String> {
    let mut cmd: Vec<String> = [
        "/bulkhead-vmm",
        "run",
        "--kernel=/guest/vmlinux",
        "--initrd=/guest/initrd",
        "--vcpus=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.push(format!("--mem={}M", cfg.mem_mib));
    cmd.push(format!("--display={}x{}", DISPLAY.0, DISPLAY.1));
    cmd.push(format!("--cmdline={}", vmm_core::launch::DEFAULT_CMDLINE));
    cmd.push(format!("--timeout={RUN_BOUND_S}"));
    cmd.extend(extra.iter().cloned());
    cmd
}

/// lab-measure around `boot`, until `marker`, memory not sampled (reading smaps under
/// TCG would slow what is timed).
fn measured(label: &str, marker: &str, cfg: &Config, boot: Vec<String>) -> Vec<String> {
    let mut cmd: Vec<String> = vec![
        "/lab-measure".into(),
        // A restore also says when its vCPUs run (`stderr_ms`).
        "--stderr-marker".into(),
        RESTORED_LINE.into(),
        "--label".into(),
        label.into(),
        "--marker".into(),
        marker.into(),
        "--guest-mem-mib".into(),
        cfg.mem_mib.to_string(),
        "--exclude-size".into(),
        framebuffer_bytes().to_string(),
        "--timeout-s".into(),
        RUN_BOUND_S.to_string(),
        "--no-memory".into(),
        "--".into(),
    ];
    cmd.extend(boot);
    cmd
}

fn restore_command(serial: &str) -> Vec<String> {
    [
        "/bulkhead-vmm",
        "restore",
        "/snap",
        &format!("--serial={serial}"),
        &format!("--timeout={RUN_BOUND_S}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Two restores side by side: once both ticked, each VMM process's RSS and PSS (from
/// smaps_rollup; the sandboxed VMM is the restore command's child, so every
/// `bulkhead-vmm` process is listed and the small ones are the reapers) and each one's
/// first tick.
fn clones_script(index: usize) -> String {
    let one = |i: u32| {
        restore_command(&format!("/tmp/clone{i}.log"))
            .iter()
            .map(|a| lab::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r#"echo "===BENCH-RUN {index} clones==="
setsid {c1} 2>/tmp/clone1.err &
c1=$!
setsid {c2} 2>/tmp/clone2.err &
c2=$!
n=0
until grep -q TICK /tmp/clone1.log 2>/dev/null && grep -q TICK /tmp/clone2.log 2>/dev/null; do
  n=$((n+1)); [ $n -gt {polls} ] && break; sleep 0.5
done
sleep 3
for p in $(pidof bulkhead-vmm); do
  echo "CLONE-MEM pid=$p $(awk '/^(Rss|Pss|Shared_Clean|Private_Dirty):/ {{printf "%s=%s ", $1, $2}}' /proc/$p/smaps_rollup | tr -d :)"
done
for i in 1 2; do echo "CLONE-TICK $i $(grep TICK /tmp/clone$i.log | sed -n {tick}p)"; done
kill -KILL -$c1 -$c2 2>/dev/null
wait
# What each restore said (a clone that ended early says why).
for i in 1 2; do sed "s/^/CLONE-ERR $i /" /tmp/clone$i.err; done
"#,
        c1 = one(1),
        c2 = one(2),
        tick = COMPARED_TICK,
        polls = CLONES_BOUND_S * 2,
    )
}

fn lab_init(cfg: &Config) -> String {
    let mut init = lab::lab_init_prologue();
    init.push_str("echo \"===BENCH-START===\"\nmkdir -p /snap\n");
    // The snapshot every restore continues (not timed: it also writes the files).
    let snap = run_command(
        cfg,
        &[
            format!("--snapshot-on={MARKER}"),
            "--snapshot-dir=/snap".into(),
            "--no-sandbox".into(),
            "--serial=/tmp/snapshot.log".into(),
        ],
    );
    init.push_str(&bench::bounded_run(0, "snapshot", RUN_BOUND_S + 30, &snap));
    init.push_str(
        "echo \"SNAPSHOT-FILES $(stat -f -c %T /snap) $(ls -ls /snap | tr '\\n' ' ')\"\n",
    );
    let mut index = 1;
    for round in 0..cfg.runs {
        let cold = measured(
            "cold",
            MARKER,
            cfg,
            run_command(cfg, &["--serial=-".into()]),
        );
        let restore = measured("restore", "TICK", cfg, restore_command("-"));
        let mut pair = [("cold", cold), ("restore", restore)];
        if round % 2 == 1 {
            pair.reverse();
        }
        for (label, cmd) in pair {
            init.push_str(&bench::bounded_run(index, label, RUN_BOUND_S + 30, &cmd));
            index += 1;
        }
    }
    init.push_str(&clones_script(index));
    init.push_str("echo \"===BENCH-END===\"\npoweroff -f\n");
    init
}

fn guest_initrd() -> Vec<u8> {
    let mut bytes = bench::read(&lab::guest().initrd);
    let mut w = CpioWriter::new(Vec::new());
    let script = format!("#!/bin/sh\n{GUEST_SCRIPT}\n");
    w.file("test.sh", 0o755, script.as_bytes())
        .expect("cpio entry");
    bytes.extend_from_slice(&w.finish().expect("cpio archive"));
    bytes
}

fn lab_cpio(cfg: &Config) -> Vec<u8> {
    let mut cpio = LabCpio::with_modules(&[]);
    cpio.add("/bulkhead-vmm", 0o755, &bench::read(&lab::static_vmm()));
    cpio.add(
        "/lab-measure",
        0o755,
        &bench::read(&bench::static_lab_measure()),
    );
    cpio.add("/guest/vmlinux", 0o644, &bench::read(&lab::guest().kernel));
    cpio.add("/guest/initrd", 0o644, &guest_initrd());
    cpio.add("/init", 0o755, lab_init(cfg).as_bytes());
    cpio.finish()
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// (RSS KiB, PSS KiB) of each VMM process that holds guest memory (the reapers hold a
/// few hundred KiB).
fn clone_memory(console: &str) -> Vec<(u64, u64)> {
    console
        .lines()
        .filter(|l| l.trim_start().starts_with("CLONE-MEM "))
        .filter_map(|l| {
            let rss = field(l, "Rss")?.parse().ok()?;
            let pss = field(l, "Pss")?.parse().ok()?;
            Some((rss, pss))
        })
        .filter(|&(rss, _)| rss > 16 * 1024)
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("snapshot-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if lab::runner() != Runner::Lab {
        eprintln!("snapshot-bench: runs in the lab only for now (set BULKHEAD_FORCE_LAB=1)");
        return ExitCode::from(2);
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cpio_bytes = lab_cpio(&cfg);
    let cpio = dir.path().join("snapshot-bench.cpio");
    std::fs::write(&cpio, &cpio_bytes).expect("writing the lab initramfs");
    // Two clones' RAM at most once each, the snapshot file in tmpfs, the initramfs.
    let outer_mem = 3 * cfg.mem_mib + 1024 + 2 * (cpio_bytes.len() as u64).div_ceil(1 << 20);
    eprintln!(
        "snapshot-bench: {} rounds, guest {} MiB, lab machine {outer_mem} MiB",
        cfg.runs, cfg.mem_mib
    );
    let runs = 1 + 2 * cfg.runs + 1;
    let mut bounds = vec![RUN_BOUND_S + 30; runs - 1];
    bounds.push(CLONES_BOUND_S + 30);
    let (console, elapsed) = bench::run_lab_schedule(
        lab::lab_machine(outer_mem, &cpio),
        &bounds,
        Duration::from_secs(180),
        &["MEASURE ", "===BENCH", "CLONE-", "SNAPSHOT-FILES", "LAB:"],
    );
    let console = console.replace('\r', "");
    let measures: Vec<bench::Measure> = console.lines().filter_map(bench::parse_measure).collect();
    let ms = |label: &str| -> Vec<u64> {
        measures
            .iter()
            .filter(|m| m.label == label)
            .filter_map(|m| m.ms)
            .collect()
    };
    let (cold, restore) = (ms("cold"), ms("restore"));
    let vcpus_running: Vec<u64> = measures
        .iter()
        .filter(|m| m.label == "restore" && m.ms.is_some())
        .filter_map(|m| m.stderr_ms)
        .collect();
    println!(
        "\nrunner: lab (QEMU TCG with nested KVM: only ratios mean anything); wall time {:.0} s",
        elapsed.as_secs_f64()
    );
    println!("cold boot to {MARKER} (ms):   {cold:?}");
    println!("restore to the guest's first TICK (ms): {restore:?}");
    println!("restore to its vCPUs running (ms):      {vcpus_running:?}");
    let (mc, mr, mv) = (
        bench::median(&cold),
        bench::median(&restore),
        bench::median(&vcpus_running),
    );
    if let (Some(c), Some(r)) = (mc, mr) {
        println!(
            "medians: cold {c:.0} ms, restore to first TICK {r:.0} ms; restore/cold {:.3} (goal <= 0.05)",
            r / c
        );
    }
    if let (Some(c), Some(v)) = (mc, mv) {
        println!(
            "medians: cold {c:.0} ms, restore to vCPUs running {v:.0} ms (spawn until the VMM \
             runs the restored vCPUs; Firecracker's measure); restore/cold {:.3} (goal <= 0.05)",
            v / c
        );
    }
    for line in console.lines().filter(|l| l.contains("SNAPSHOT-FILES")) {
        println!("{}", line.trim());
    }
    let clones = clone_memory(&console);
    for (i, (rss, pss)) in clones.iter().enumerate() {
        println!(
            "clone {}: RSS {} MiB, PSS {} MiB",
            i + 1,
            rss / 1024,
            pss / 1024
        );
    }
    if clones.len() == 2 {
        let rss: u64 = clones.iter().map(|c| c.0).sum();
        let pss: u64 = clones.iter().map(|c| c.1).sum();
        println!(
            "two clones side by side: PSS {} MiB of RSS {} MiB, PSS/RSS {:.3} (shared pages count once)",
            pss / 1024,
            rss / 1024,
            pss as f64 / rss as f64
        );
    }
    let ticks: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CLONE-TICK "))
        .collect();
    for t in &ticks {
        println!("tick {COMPARED_TICK} of clone {t}");
    }
    // "1 TICK 3ee5…": a clone that printed fewer ticks has no token and fails this.
    let token = |t: &str| t.split_once("TICK ").map(|(_, tok)| tok.trim().to_string());
    let distinct = ticks.len() == 2
        && matches!((token(ticks[0]), token(ticks[1])), (Some(a), Some(b)) if a != b);
    let complete = cold.len() == cfg.runs && restore.len() == cfg.runs && clones.len() == 2;
    if !complete || !distinct {
        println!("\nincomplete (or the clones read the same bytes); the lab console:\n{console}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reapers_are_left_out_of_the_clone_figures() {
        let console = "CLONE-MEM pid=9 Rss=900 Pss=300 \n\
                       CLONE-MEM pid=10 Rss=300000 Pss=160000 Shared_Clean=200000 \n\
                       CLONE-MEM pid=12 Rss=310000 Pss=170000 \n";
        assert_eq!(
            clone_memory(console),
            vec![(300000, 160000), (310000, 170000)]
        );
    }

    #[test]
    fn the_lab_init_takes_the_snapshot_first_then_alternates_cold_and_restore() {
        let cfg = Config {
            runs: 2,
            mem_mib: 512,
        };
        let init = lab_init(&cfg);
        let order: Vec<&str> = init
            .lines()
            .filter_map(|l| l.strip_prefix("echo \"===BENCH-RUN "))
            .collect();
        assert_eq!(
            order,
            [
                "0 snapshot===\"",
                "1 cold===\"",
                "2 restore===\"",
                "3 restore===\"",
                "4 cold===\"",
                "5 clones===\""
            ]
        );
        // Every argument is single-quoted for the lab's shell.
        assert!(init.contains("'--snapshot-on=SNAPSHOT-NOW' '--snapshot-dir=/snap' '--no-sandbox'"));
        assert!(init.contains("'/bulkhead-vmm' 'restore' '/snap' '--serial=-' '--timeout=240'"));
    }
}
