//! A mutation fuzzer for the stable toolchain, where libFuzzer cannot be built: it
//! mutates the target's seeds (bit flips, interesting integers, JSON tokens, splices,
//! repeats, cuts), keeps mutants that got somewhere (a decoded message, a device still
//! running) as new parents, and runs the same targets as `cargo fuzz run`. Not
//! coverage-guided; a fallback.
//!
//! Usage: `stable_fuzz TARGET SECONDS [SEED]`, `stable_fuzz TARGET FILE` (replay one
//! input) or `stable_fuzz TARGET --write-seeds DIR` (write the built-in seeds as files,
//! to refresh the checked-in corpus `seeds/TARGET/`). TARGET is `control_decoder`,
//! `virtio_mmio` or `agent_decoder`. A fuzzing run starts with the built-in seeds and every file in
//! `seeds/TARGET/` (the checked-in corpus, relative to the working directory), unmutated.
//! A failing input is written to `artifacts/TARGET/crash-<n>` (or `timeout-<n>` if one
//! input runs for more than 10 seconds) and the process exits 1.

use std::panic;
use std::process::exit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"0.5",
    b"18446744073709551616",
    b"4294967295",
    b"\"Hello\"",
    b"\"State\"",
    b"\"Serial\"",
    b"\"bytes\"",
    b"\"rects\"",
    b"\"Framebuffer\"",
    b"\"layout\"",
    b"\"File\"",
    b"\"role\"",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xc3\xa9",
    b"[0,0,0,0]",
    b"{\"x\":0,\"y\":0,\"w\":1,\"h\":1}",
];

const INTERESTING: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x1ff,
    0x200,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x1_0001,
    0xf_ffff,
    0x10_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const MAX_LEN: usize = 160 * 1024;

fn mutate(rng: &mut Rng, pool: &[Vec<u8>], json: bool) -> Vec<u8> {
    let mut data = pool[rng.below(pool.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(9) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            2 => {
                // An interesting integer, overwriting (or inserting) 1, 2 or 4 bytes.
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let w = [1, 2, 4][rng.below(3)];
                let end = (at + w).min(data.len());
                if rng.below(2) == 0 {
                    data.splice(at..end, v[..w].iter().copied());
                } else {
                    data.splice(at..at, v[..w].iter().copied());
                }
            }
            3 if json => {
                let t = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, t.iter().copied());
            }
            4 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            5 => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len());
                let end = (from + rng.below(128)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            6 if !data.is_empty() => {
                // Repeat a slice: floods, long chains, many frames.
                let from = rng.below(data.len());
                let end = (from + 1 + rng.below(64)).min(data.len());
                let piece = data[from..end].to_vec();
                let most = if rng.below(8) == 0 { 512 } else { 8 };
                for _ in 0..=rng.below(most) {
                    data.splice(end..end, piece.iter().copied());
                }
            }
            7 if data.len() > 1 => data.truncate(rng.below(data.len())),
            _ => {
                let i = rng.below(data.len().max(1));
                if let Some(b) = data.get_mut(i) {
                    *b = b.wrapping_add(rng.below(16) as u8).wrapping_sub(8);
                }
            }
        }
    }
    data.truncate(MAX_LEN);
    data
}

fn target_fn(name: &str) -> Option<fn(&[u8]) -> bool> {
    match name {
        "control_decoder" => Some(vmm_core_fuzz::control_decoder),
        "virtio_mmio" => Some(vmm_core_fuzz::virtio_mmio),
        "agent_decoder" => Some(vmm_core_fuzz::agent_decoder),
        _ => None,
    }
}

fn save(target: &str, kind: &str, n: u64, input: &[u8]) -> String {
    let dir = format!("artifacts/{target}");
    std::fs::create_dir_all(&dir).expect("create artifacts dir");
    let path = format!("{dir}/{kind}-{n}");
    std::fs::write(&path, input).expect("write artifact");
    path
}

/// The files of the checked-in corpus `seeds/TARGET/`, sorted by name (none if absent).
fn checked_in_corpus(target: &str) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(format!("seeds/{target}")) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|mut data| {
            data.truncate(MAX_LEN);
            data
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: stable_fuzz control_decoder|virtio_mmio|agent_decoder SECONDS [SEED] | stable_fuzz TARGET FILE | stable_fuzz TARGET --write-seeds DIR";
    let Some(target) = args.first() else {
        eprintln!("{usage}");
        exit(2);
    };
    let Some(run) = target_fn(target) else {
        eprintln!("unknown target {target}; {usage}");
        exit(2);
    };
    let Some(second) = args.get(1) else {
        eprintln!("{usage}");
        exit(2);
    };
    if second == "--write-seeds" {
        let Some(dir) = args.get(2) else {
            eprintln!("{usage}");
            exit(2);
        };
        std::fs::create_dir_all(dir).expect("create the seed directory");
        let seeds = vmm_core_fuzz::seeds(target);
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(format!("{dir}/seed-{i:02}"), seed).expect("write a seed");
        }
        println!("stable_fuzz: wrote {} seeds to {dir}", seeds.len());
        return;
    }
    let Ok(seconds) = second.parse::<u64>() else {
        // Replay one input, with panic messages.
        let input = std::fs::read(second).expect("read input");
        let interesting = run(&input);
        println!("stable_fuzz: {second} ran without panic (interesting: {interesting})");
        return;
    };
    let seed: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_b01d);
    let json = target == "control_decoder";
    let mut rng = Rng(seed | 1);
    let mut seeds = vmm_core_fuzz::seeds(target);
    seeds.extend(checked_in_corpus(target));
    let mut pool = seeds.clone();
    let start = Instant::now();
    let deadline = Duration::from_secs(seconds);

    // Watchdog: an input that runs too long is a finding too (a guest or peer that can
    // make the host spin).
    let current = Arc::new(Mutex::new(Vec::<u8>::new()));
    let began_ms = Arc::new(AtomicU64::new(0));
    {
        let current = current.clone();
        let began_ms = began_ms.clone();
        let target = target.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let began = began_ms.load(Ordering::Relaxed);
            let now = start.elapsed().as_millis() as u64;
            if began != 0 && now.saturating_sub(began) > 10_000 {
                let input = current.lock().map(|c| c.clone()).unwrap_or_default();
                let path = save(&target, "timeout", now, &input);
                eprintln!("stable_fuzz: one input ran for over 10 s; saved to {path}");
                exit(1);
            }
        });
    }

    let mut execs: u64 = 0;
    let mut kept: u64 = 0;
    panic::set_hook(Box::new(|_| {}));
    while start.elapsed() < deadline {
        // Seeds first, unmutated, then mutants.
        let input = match seeds.get(execs as usize) {
            Some(s) => s.clone(),
            None => mutate(&mut rng, &pool, json),
        };
        if let Ok(mut c) = current.lock() {
            c.clone_from(&input);
        }
        began_ms.store(start.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let result = panic::catch_unwind(|| run(&input));
        began_ms.store(0, Ordering::Relaxed);
        execs += 1;
        match result {
            Err(_) => {
                let _ = panic::take_hook();
                let path = save(target, "crash", execs, &input);
                eprintln!(
                    "stable_fuzz: {target} panicked after {execs} runs; input saved to {path}"
                );
                eprintln!("replay: stable_fuzz {target} {path}");
                // Re-run without the silent hook to print the panic message.
                let _ = run(&input);
                exit(1);
            }
            // Crude feedback without coverage: inputs that got somewhere become parents.
            Ok(true) if execs as usize > seeds.len() => {
                kept += 1;
                if pool.len() < 1024 {
                    pool.push(input);
                } else {
                    let i = seeds.len() + rng.below(pool.len() - seeds.len());
                    pool[i] = input;
                }
            }
            Ok(_) => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "stable_fuzz: {target}: {execs} runs ({} seeds and corpus files, {kept} kept as parents) in {secs:.0} s, {:.0} runs/s, no panic (seed {seed})",
        seeds.len(),
        execs as f64 / secs
    );
}
