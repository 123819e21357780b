//! A mutation fuzzer for the stable toolchain, where libFuzzer cannot be built: it
//! mutates the seeds (byte flips, policy tokens, splices, line shuffles), keeps mutants
//! that are still valid policies as new parents, and runs the same target as `cargo fuzz run parse_policy`. Not coverage-guided; a fallback.
//!
//! Usage: stable_fuzz [SECONDS] [SEED]. A failing input is written to
//! `artifacts/stable_fuzz/crash-<n>` and the process exits 1.

use std::panic;
use std::time::{Duration, Instant};

const TOKENS: &[&str] = &[
    "[partition.", "]", "[[partition.a.network.rule]]", "label = ", "\"red\"", "\"black\"", "kind = ",
    "\"template\"", "memory_mib = ", "vcpus = ", "display = \"1x1\"", "tags = [\"t\"]", "network", "mode = \"nat\"",
    "dns = true", "ports = [", "destination = \"", "*.", "/", "::", "0.0.0.0/0", "clipboard = {", "}", "=", "\"",
    "'", "\n", " ", "\t", "#", "@anyvm", "@tag:", "@type:", "@dispvm", "@dispvm:", "*", "+", "allow", "deny", "ask",
    "target=", "default_target=", "notify=no", "\0", "é", "\u{202e}", "99999999999999999999", "-1", "65536",
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

fn mutate(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut data = pool[rng.below(pool.len())].clone();
    for _ in 0..=rng.below(3) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                data.splice(at..at, t.iter().copied());
            }
            2 if !data.is_empty() => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len());
                let end = (from + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            4 => {
                let mut lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
                if lines.len() > 1 {
                    let i = rng.below(lines.len());
                    let j = rng.below(lines.len());
                    lines.swap(i, j);
                }
                data = lines.join(&b'\n');
            }
            5 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = b"0123456789\"[]=.,{}"[rng.below(18)];
            }
            _ => {
                let n = rng.below(4);
                let digits = format!("{}", rng.next() >> (rng.below(60)));
                data.splice(at..at, digits.bytes().take(n + 1));
            }
        }
    }
    data
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_b01d);
    let mut rng = Rng(seed | 1);
    let mut pool = isolation_policy_fuzz::seeds();
    let start = Instant::now();
    let deadline = Duration::from_secs(seconds);
    let mut execs: u64 = 0;
    let mut valid: u64 = 0;
    panic::set_hook(Box::new(|_| {}));
    while start.elapsed() < deadline {
        let input = mutate(&mut rng, &pool);
        let result = panic::catch_unwind(|| isolation_policy_fuzz::check_one(&input));
        execs += 1;
        valid += u64::from(matches!(result, Ok(true)));
        if result.is_err() {
            let _ = panic::take_hook();
            std::fs::create_dir_all("artifacts/stable_fuzz").expect("create artifacts dir");
            let path = format!("artifacts/stable_fuzz/crash-{execs}");
            std::fs::write(&path, &input).expect("write crash input");
            eprintln!("stable_fuzz: invariant broken after {execs} runs; input saved to {path}");
            // Re-run without the silent hook to print the panic message.
            let _ = isolation_policy_fuzz::check_one(&input);
            std::process::exit(1);
        }
        // Crude feedback without coverage: mutants that are still valid policies reach
        // the decision code, so they become parents and mutations pile up on them.
        if matches!(result, Ok(true)) {
            if pool.len() < 1024 {
                pool.push(input);
            } else {
                let i = rng.below(pool.len());
                pool[i] = input;
            }
        }
    }
    println!(
        "stable_fuzz: {execs} runs ({valid} valid policies) in {:.0} s, {:.0} runs/s, no invariant broken (seed {seed})",
        start.elapsed().as_secs_f64(),
        execs as f64 / start.elapsed().as_secs_f64()
    );
}
