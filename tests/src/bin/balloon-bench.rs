//! `balloon-bench`: host memory of an idle default-size partition (the default initramfs,
//! 1024 MiB) with and without the memory balloon's free page reporting, in one invocation.
//! Each round boots the guest twice in the lab, identical but for `bulkhead.balloon=off`
//! (the guest leaves the driver out): RSS of the VMM after boot, with 300 MiB filled in the
//! guest's tmpfs, and a minute after deleting it.
//!
//! ```text
//! balloon-bench [--rounds N]     (N ≤ 5, default 1)
//! ```

use std::process::ExitCode;

use bulkhead_tests::balloon::{measure, BalloonRun, DEFAULT_PARTITION_MIB, FILL_MIB};

fn mib(k: Option<u64>) -> String {
    k.map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = match args.as_slice() {
        [] => 1,
        [flag, n] if flag == "--rounds" => match n.parse::<u32>() {
            Ok(n @ 1..=5) => n,
            _ => {
                eprintln!("balloon-bench: --rounds takes 1..=5, got {n:?}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: balloon-bench [--rounds N]");
            return ExitCode::from(2);
        }
    };
    let mut runs: Vec<BalloonRun> = Vec::new();
    for round in 1..=rounds {
        for balloon in [false, true] {
            eprintln!(
                "round {round}: balloon {}",
                if balloon { "on" } else { "off" }
            );
            let r = measure(balloon);
            if !r.filled_ok || r.freed_kib.is_none() {
                eprintln!("run failed:\n{}", r.out.diagnostics());
                return ExitCode::FAILURE;
            }
            runs.push(r);
        }
    }
    println!(
        "guest RAM {DEFAULT_PARTITION_MIB} MiB, fill {FILL_MIB} MiB; VMM RSS in MiB (lab: QEMU TCG, nested KVM)"
    );
    println!("balloon  bound  idle  filled  after-free  drop-s");
    for r in &runs {
        println!(
            "{:<7}  {:<5}  {:>4}  {:>6}  {:>10}  {:>6}",
            if r.balloon { "on" } else { "off" },
            r.bound,
            mib(r.idle_kib),
            mib(r.filled_kib),
            mib(r.freed_kib),
            r.drop_s.map_or("-".into(), |s| format!("{s:.0}")),
        );
    }
    let avg = |on: bool, f: fn(&BalloonRun) -> Option<u64>| {
        let v: Vec<u64> = runs
            .iter()
            .filter(|r| r.balloon == on)
            .filter_map(f)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64)
    };
    if let (Some(off), Some(on)) = (avg(false, |r| r.freed_kib), avg(true, |r| r.freed_kib)) {
        println!(
            "after the free: {:.0} MiB without, {:.0} MiB with the balloon: ratio {:.2}",
            off / 1024.0,
            on / 1024.0,
            on / off
        );
    }
    if let (Some(off), Some(on)) = (avg(false, |r| r.idle_kib), avg(true, |r| r.idle_kib)) {
        println!(
            "idle after boot: {:.0} MiB without, {:.0} MiB with the balloon: ratio {:.2}",
            off / 1024.0,
            on / 1024.0,
            on / off
        );
    }
    ExitCode::SUCCESS
}
