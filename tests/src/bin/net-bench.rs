//! Network benchmark, one invocation, in one lab machine (its only interface a dummy one,
//! so nothing leaves it): TCP upload throughput guest -> lab host and 64-byte
//! request/response latency, through
//!
//! - `ours-relay`: our virtio-net + `bulkhead-netrelay` (`--allow`) + passt (`bulkhead-vmm
//!   run --net passt --allow …`),
//! - `ours-nat`: our virtio-net + passt, no relay (`--net passt`),
//! - `qemu`: QEMU's virtio-net (`-M microvm`, `virtio-net-device`, virtio-mmio like ours)
//!   on `-netdev stream` to a passt listening on a socket (QEMU 7.2 has no vhost-user
//!   for passt),
//!
//! same guest kernel, initramfs, memory and passt flags (`-m 1500`: our device offers no
//! offloads, and `-netdev stream` carries no vnet header, so QEMU's guest sees no offloads
//! either), interleaved and rotated, several runs each. Prints medians and the ratios
//! ours/QEMU, and the CPU the relay, passt and the VMM used per MiB uploaded (from
//! /proc/PID/stat between the guest's markers, 10 ms ticks). The servers are
//! `net-bench-peer serve` on the lab's loopback (passt maps the gateway there). A
//! benchmark, not a test: nothing asserts a timing. Every run is cut at its own bound.
//!
//! `cargo run --release -p bulkhead-tests --bin net-bench -- [--runs N] [--mib N]`

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use bulkhead_supervisor::guest_image::cpio::CpioWriter;
use bulkhead_tests::bench::{self, LabCpio, QEMU};
use bulkhead_tests::lab::{self, LAB_GATEWAY, LAB_HOST_ADDR};

/// QEMU's trace log in the lab (its exits to user space, for telling a triple fault).
const QEMU_TRACE: &str = "/tmp/qemu-trace.log";
const USAGE: &str =
    "usage: net-bench [--runs N] [--mib N] [--upload-s S] [--rr N] [--run-timeout S]";
const SINK_PORT: u16 = 9001;
const ECHO_PORT: u16 = 9002;
const MEM_MIB: u64 = 256;
const PEER: &str = "/net-bench-peer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    OursRelay,
    OursNat,
    Qemu,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::OursRelay, Variant::OursNat, Variant::Qemu];

    fn label(self) -> &'static str {
        match self {
            Variant::OursRelay => "ours-relay",
            Variant::OursNat => "ours-nat",
            Variant::Qemu => "qemu",
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    runs: usize,
    mib: u64,
    rr: u64,
    /// Seconds one run (boot, transfers, power-off) may take before the lab cuts it.
    run_timeout_s: u64,
    /// Seconds the round trips may take inside the guest.
    phase_s: u64,
    /// Seconds the upload sends for at most. Short by default: in the lab (TCG, nested
    /// KVM) passt 0.0~git20230309 reset every upload after about 24 s, QEMU's as ours.
    upload_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runs: 3,
            mib: 64,
            rr: 500,
            run_timeout_s: 300,
            phase_s: 60,
            upload_s: 15,
        }
    }
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{flag} `{v}` is not a whole number"))?;
        match flag.as_str() {
            "--runs" => cfg.runs = n as usize,
            "--mib" => cfg.mib = n,
            "--rr" => cfg.rr = n,
            "--run-timeout" => cfg.run_timeout_s = n,
            "--upload-s" => cfg.upload_s = n,
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if cfg.upload_s == 0 || cfg.upload_s > cfg.phase_s {
        return Err(format!("--upload-s must be 1..={}", cfg.phase_s));
    }
    if cfg.runs == 0 || cfg.mib == 0 || cfg.rr == 0 {
        return Err("--runs, --mib and --rr must be at least 1".into());
    }
    if cfg.run_timeout_s < 2 * cfg.phase_s + 60 {
        return Err(format!(
            "--run-timeout must leave room for boot and two {} s phases",
            cfg.phase_s
        ));
    }
    Ok(cfg)
}

/// The guest's /test.sh: markers around each phase, a second after each so the lab's
/// sampler (every 0.2 s) reads the processes' CPU at the marker.
fn guest_script(cfg: &Config) -> String {
    format!(
        "echo NETBENCH-START\nsleep 1\n\
         {PEER} upload {LAB_GATEWAY}:{SINK_PORT} {mib} {upload}\n\
         echo NETBENCH-UPLOADED\nsleep 1\n\
         {PEER} rr {LAB_GATEWAY}:{ECHO_PORT} {rr} {phase}\n\
         echo NETBENCH-DONE\nsleep 1\npoweroff -f\n",
        mib = cfg.mib,
        upload = cfg.upload_s,
        rr = cfg.rr,
        phase = cfg.phase_s,
    )
}

/// The guest initramfs with /test.sh and the peer appended.
fn guest_initrd(cfg: &Config, peer: &[u8]) -> Vec<u8> {
    let mut bytes = bench::read(&lab::guest().initrd);
    let mut w = CpioWriter::new(Vec::new());
    let script = format!("#!/bin/sh\n{}", guest_script(cfg));
    w.file("test.sh", 0o755, script.as_bytes())
        .expect("cpio file");
    w.file(PEER.trim_start_matches('/'), 0o755, peer)
        .expect("cpio file");
    bytes.extend_from_slice(&w.finish().expect("finishing the cpio archive"));
    bytes
}

/// The VM command of a variant; its serial console goes to `serial`.
fn vm_command(v: Variant, cfg: &Config, serial: &str) -> Vec<String> {
    let cmdline = vmm_core::launch::DEFAULT_CMDLINE;
    match v {
        Variant::OursRelay | Variant::OursNat => {
            let mut c: Vec<String> = [
                "/bulkhead-vmm",
                "run",
                "--kernel=/guest/vmlinux",
                "--initrd=/guest/initrd",
                &format!("--mem={MEM_MIB}M"),
                "--vcpus=1",
                &format!("--cmdline={cmdline}"),
                "--display=none",
                "--net=passt",
                &format!("--serial={serial}"),
                &format!("--timeout={}", cfg.run_timeout_s),
            ]
            .map(String::from)
            .to_vec();
            if v == Variant::OursRelay {
                c.push(format!("--allow=tcp:{LAB_GATEWAY}:{SINK_PORT},{ECHO_PORT}"));
            }
            c
        }
        Variant::Qemu => [
            &format!("/usr/bin/{QEMU}"),
            "-M",
            "microvm",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            &format!("file:{serial}"),
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-smp",
            "1",
            "-m",
            &format!("{MEM_MIB}M"),
            "-kernel",
            "/guest/vmlinux",
            "-initrd",
            "/guest/initrd",
            "-append",
            cmdline,
            "-no-reboot",
            // Every exit to QEMU, so a guest triple fault (KVM_EXIT_SHUTDOWN, reason 8)
            // is told apart from a poweroff: under -no-reboot both end QEMU with 0.
            // Few exits here (virtio through ioeventfd and irqfd), so little cost.
            "-trace",
            "enable=kvm_run_exit",
            "-D",
            QEMU_TRACE,
            "-netdev",
            "stream,id=n,server=off,addr.type=unix,addr.path=/tmp/passt.sock",
            "-device",
            "virtio-net-device,netdev=n",
        ]
        .map(String::from)
        .to_vec(),
    }
}

/// The lab script of one run: start the VM (and, for QEMU, passt on its socket), sample
/// CPU at each guest marker, print the guest's result lines.
fn run_script(v: Variant, cfg: &Config) -> String {
    let serial = "/tmp/serial";
    let vm: Vec<String> = vm_command(v, cfg, serial)
        .iter()
        .map(|a| lab::shell_quote(a))
        .collect();
    let (vmm_name, passt_start) = match v {
        Variant::Qemu => (
            QEMU,
            "rm -f /tmp/passt.sock\n\
             passt -f -e -q -m 1500 -1 -s /tmp/passt.sock 2>/tmp/passt.err &\n\
             n=0; while [ ! -S /tmp/passt.sock ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done\n",
        ),
        _ => ("bulkhead-vmm", ""),
    };
    format!(
        r#"L={label}
rm -f {serial}
ticks() {{ t=0; for p in $(pidof "$1"); do s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null) || continue; set -- $s; t=$((t + ${{12}} + ${{13}})); done; echo $t; }}
{passt_start}{vm} 2>/tmp/vm.err &
vm=$!
seen=""
while kill -0 $vm 2>/dev/null; do
  for m in START UPLOADED DONE; do
    case " $seen " in *" $m "*) continue;; esac
    if grep -q "NETBENCH-$m" {serial} 2>/dev/null; then
      seen="$seen $m"
      echo "NETCPU label=$L marker=$m relay=$(ticks bulkhead-netrelay) passt=$(ticks passt) vmm=$(ticks {vmm_name})"
    fi
  done
  sleep 0.2
done
wait $vm
echo "NETEXIT label=$L rc=$?"
if [ -f {trace} ]; then
  n=$(grep -c 'reason 8$' {trace} || true)
  if [ "$n" -gt 0 ]; then echo "NETLOG label=$L qemu: KVM_EXIT_SHUTDOWN x$n: the guest triple-faulted"; fi
  rm -f {trace}
fi
grep -a "NETBENCH-" {serial} | sed "s/^/NETRESULT label=$L /"
grep -aq NETBENCH-DONE {serial} || {{ echo "NETFAIL label=$L serial tail:"; tail -n 15 {serial}; }}
for f in /tmp/vm.err /tmp/passt.err; do [ -s $f ] && tail -n 5 $f | sed "s|^|NETLOG label=$L $f: |"; done
rm -f /tmp/vm.err /tmp/passt.err
"#,
        label = v.label(),
        vm = vm.join(" "),
        trace = QEMU_TRACE,
    )
}

/// Every run, rotated each round so no variant always goes first.
fn schedule(cfg: &Config) -> Vec<Variant> {
    let n = Variant::ALL.len();
    (0..cfg.runs)
        .flat_map(|r| (0..n).map(move |i| Variant::ALL[(r + i) % n]))
        .collect()
}

/// The lab machine's /init: lab network as the lab tests build it (a tmpfs root for
/// passt's pivot_root, dummy0 with a default route), the servers, then every run. /tmp
/// is made world-writable because passt binds its socket after dropping to `nobody`.
fn lab_init(cfg: &Config) -> String {
    let mut runs = String::new();
    for (i, v) in schedule(cfg).into_iter().enumerate() {
        let cmd = vec!["/bin/sh".to_string(), format!("/runs/{}.sh", v.label())];
        runs.push_str(&bench::bounded_run(
            i,
            v.label(),
            cfg.run_timeout_s + bench::CUT_MARGIN_S,
            &cmd,
        ));
    }
    let prologue = lab::lab_init_prologue().replacen(
        "/bin/busybox --install -s /bin\n",
        "/bin/busybox --install -s /bin\n\
         if [ ! -e /.lab-tmpfs-root ]; then\n\
           mkdir -p /newroot\n\
           mount -t tmpfs -o size=95% tmpfs /newroot\n\
           for f in /*; do [ \"$f\" = /newroot ] || cp -a \"$f\" /newroot/; done\n\
           touch /newroot/.lab-tmpfs-root\n\
           exec switch_root /newroot /init\n\
         fi\n",
        1,
    );
    format!(
        "{prologue}insmod /modules/dummy.ko || echo \"LAB: insmod dummy failed\"\n\
         ip link set lo up\n\
         ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy\n\
         ip addr add {LAB_HOST_ADDR}/24 dev dummy0\n\
         ip link set dummy0 up\n\
         ip route add default via {LAB_GATEWAY}\n\
         chmod 1777 /tmp\n\
         {PEER} serve {SINK_PORT} {ECHO_PORT} &\n\
         echo \"===BENCH-START===\"\n{runs}echo \"===BENCH-END===\"\npoweroff -f\n"
    )
}

/// passt, the libraries it loads, accounts for `nobody` and a resolver file.
fn add_passt(cpio: &mut LabCpio) {
    let out = Command::new("sh")
        .args(["-c", "command -v passt"])
        .output()
        .expect("running sh");
    let passt = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        passt.is_absolute(),
        "passt not found: apt-get install passt"
    );
    let ldd = Command::new("ldd")
        .arg(&passt)
        .output()
        .expect("running ldd on passt");
    cpio.add("/usr/bin/passt", 0o755, &bench::read(&passt));
    for lib in bench::parse_ldd(&String::from_utf8_lossy(&ldd.stdout)) {
        let real = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.clone());
        cpio.add(&lib.to_string_lossy(), 0o755, &bench::read(&real));
    }
    cpio.add(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    cpio.add("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    cpio.add("/etc/resolv.conf", 0o644, b"nameserver 192.0.2.53\n");
}

/// The peer, static: `$BULKHEAD_NET_BENCH_PEER_STATIC`, or built now with rustc (std
/// only, seconds), bounded.
fn static_peer(dir: &Path) -> Vec<u8> {
    if let Some(p) = std::env::var_os("BULKHEAD_NET_BENCH_PEER_STATIC") {
        return bench::read(Path::new(&p));
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/net-bench-peer.rs");
    let out = dir.join("net-bench-peer");
    let cmd: Vec<String> = [
        "timeout",
        "600",
        "rustc",
        "--edition",
        "2021",
        "-O",
        "-C",
        "target-feature=+crt-static",
        "-C",
        "strip=debuginfo",
        "--target",
        "x86_64-unknown-linux-gnu",
    ]
    .map(String::from)
    .into_iter()
    .chain([
        src.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ])
    .collect();
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .status()
        .expect("running rustc");
    assert!(
        status.success(),
        "building the static net-bench-peer failed"
    );
    bench::read(&out)
}

fn lab_cpio(cfg: &Config, dir: &Path) -> Vec<u8> {
    let guest = lab::guest();
    let peer = static_peer(dir);
    let mut cpio = LabCpio::with_modules(&["drivers/net/dummy"]);
    cpio.add("/bulkhead-vmm", 0o755, &bench::read(&lab::static_vmm()));
    // Beside the VMM, where `--allow` looks for it.
    cpio.add(
        "/bulkhead-netrelay",
        0o755,
        &bench::read(&lab::static_netrelay()),
    );
    cpio.add(PEER, 0o755, &peer);
    cpio.add("/guest/vmlinux", 0o644, &bench::read(&guest.kernel));
    cpio.add("/guest/initrd", 0o644, &guest_initrd(cfg, &peer));
    cpio.add_qemu(&format!("/usr/bin/{QEMU}"));
    add_passt(&mut cpio);
    for v in Variant::ALL {
        cpio.add(
            &format!("/runs/{}.sh", v.label()),
            0o755,
            run_script(v, cfg).as_bytes(),
        );
    }
    cpio.add("/init", 0o755, lab_init(cfg).as_bytes());
    cpio.finish()
}

/// One run's figures.
#[derive(Debug, Default, Clone)]
struct Measure {
    label: String,
    upload_mibps: Option<f64>,
    upload_mib: Option<f64>,
    rr_median_us: Option<f64>,
    rr_p99_us: Option<f64>,
    /// CPU ticks (10 ms) of relay, passt, VMM between START and UPLOADED.
    upload_ticks: Option<[u64; 3]>,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// The runs' figures, in console order (a run starts at `===BENCH-RUN`).
fn parse(console: &str) -> Vec<Measure> {
    let mut out: Vec<Measure> = Vec::new();
    let mut cpu_start: Option<[u64; 3]> = None;
    for line in console.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("===BENCH-RUN ") {
            let label = rest.split_whitespace().nth(1).unwrap_or("?");
            out.push(Measure {
                label: label.trim_end_matches('=').to_string(),
                ..Measure::default()
            });
            cpu_start = None;
            continue;
        }
        let Some(m) = out.last_mut() else { continue };
        if line.starts_with("NETCPU ") {
            let t = |n| {
                field(line, n)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let ticks = [t("relay"), t("passt"), t("vmm")];
            match field(line, "marker") {
                Some("START") => cpu_start = Some(ticks),
                Some("UPLOADED") => {
                    m.upload_ticks = cpu_start.map(|s| {
                        [
                            ticks[0].saturating_sub(s[0]),
                            ticks[1].saturating_sub(s[1]),
                            ticks[2].saturating_sub(s[2]),
                        ]
                    })
                }
                _ => {}
            }
        } else if line.contains("NETBENCH-UPLOAD ") {
            let bytes = field(line, "bytes").and_then(|v| v.parse::<f64>().ok());
            let secs = field(line, "secs").and_then(|v| v.parse::<f64>().ok());
            if let (Some(b), Some(s)) = (bytes, secs) {
                let mib = b / f64::from(1 << 20);
                m.upload_mib = Some(mib);
                m.upload_mibps = (s > 0.0).then(|| mib / s);
            }
        } else if line.contains("NETBENCH-RR ") {
            m.rr_median_us = field(line, "median_us").and_then(|v| v.parse().ok());
            m.rr_p99_us = field(line, "p99_us").and_then(|v| v.parse().ok());
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

struct Summary {
    ok: usize,
    mibps: Option<f64>,
    rr_median_us: Option<f64>,
    rr_p99_us: Option<f64>,
    /// ms of CPU per MiB uploaded: relay, passt, VMM.
    cpu_ms_per_mib: [Option<f64>; 3],
}

fn summarize(ms: &[Measure], v: Variant) -> Summary {
    let mine: Vec<&Measure> = ms.iter().filter(|m| m.label == v.label()).collect();
    let per_mib = |i: usize| {
        median(
            mine.iter()
                .filter_map(|m| Some(m.upload_ticks?[i] as f64 * 10.0 / m.upload_mib?))
                .collect(),
        )
    };
    Summary {
        ok: mine
            .iter()
            .filter(|m| m.upload_mibps.is_some() && m.rr_median_us.is_some())
            .count(),
        mibps: median(mine.iter().filter_map(|m| m.upload_mibps).collect()),
        rr_median_us: median(mine.iter().filter_map(|m| m.rr_median_us).collect()),
        rr_p99_us: median(mine.iter().filter_map(|m| m.rr_p99_us).collect()),
        cpu_ms_per_mib: [per_mib(0), per_mib(1), per_mib(2)],
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// Throughput: the lab (TCG, nested KVM) moves well under 1 MiB/s.
fn fmt3(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("net-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let bytes = lab_cpio(&cfg, dir.path());
    let cpio = dir.path().join("net-bench.cpio");
    std::fs::write(&cpio, &bytes).expect("writing the lab initramfs");
    let outer_mem = 2 * MEM_MIB + 1024 + 2 * (bytes.len() as u64).div_ceil(1 << 20);
    let sched = schedule(&cfg);
    println!(
        "net-bench: {} runs each of {}; upload {} MiB (at most {} s), {} round trips; guest {MEM_MIB} MiB; lab machine {outer_mem} MiB",
        cfg.runs,
        Variant::ALL.map(Variant::label).join(", "),
        cfg.mib,
        cfg.upload_s,
        cfg.rr,
    );
    let bounds = vec![cfg.run_timeout_s + bench::CUT_MARGIN_S; sched.len()];
    const PROGRESS: [&str; 9] = [
        "NETSINK",
        "NETLOG",
        "===BENCH",
        "NETRESULT",
        "NETCPU",
        "NETEXIT",
        "NETFAIL",
        "LAB:",
        "MEASURE",
    ];
    let (console, elapsed) = bench::run_lab_schedule(
        lab::lab_machine(outer_mem, &cpio),
        &bounds,
        Duration::from_secs(240),
        &PROGRESS,
    );
    let console = console.replace('\r', "");
    let measures = parse(&console);
    println!("\ntotal wall time {:.0} s", elapsed.as_secs_f64());
    println!("per run:");
    for m in &measures {
        println!(
            "  {:<10} upload {:>7} MiB/s  rr median {:>8} us  p99 {:>8} us  CPU ticks (relay, passt, vmm) {:?}",
            m.label,
            fmt3(m.upload_mibps),
            fmt(m.rr_median_us),
            fmt(m.rr_p99_us),
            m.upload_ticks
        );
    }
    println!("\nmedians:");
    let sums: Vec<(Variant, Summary)> = Variant::ALL
        .iter()
        .map(|&v| (v, summarize(&measures, v)))
        .collect();
    for (v, s) in &sums {
        println!(
            "  {:<10} {}/{} ok  upload {:>7} MiB/s  rr median {:>8} us  p99 {:>8} us  CPU ms/MiB uploaded: relay {} passt {} vmm {}",
            v.label(),
            s.ok,
            cfg.runs,
            fmt3(s.mibps),
            fmt(s.rr_median_us),
            fmt(s.rr_p99_us),
            fmt(s.cpu_ms_per_mib[0]),
            fmt(s.cpu_ms_per_mib[1]),
            fmt(s.cpu_ms_per_mib[2]),
        );
    }
    let get = |v: Variant| sums.iter().find(|(x, _)| *x == v).map(|(_, s)| s);
    if let (Some(q), Some(r), Some(n)) = (
        get(Variant::Qemu),
        get(Variant::OursRelay),
        get(Variant::OursNat),
    ) {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
            _ => "-".into(),
        };
        println!("\nratios (medians):");
        println!(
            "  upload throughput ours-relay/qemu {}  ours-nat/qemu {}  ours-relay/ours-nat {}",
            ratio(r.mibps, q.mibps),
            ratio(n.mibps, q.mibps),
            ratio(r.mibps, n.mibps)
        );
        println!(
            "  rr median latency ours-relay/qemu {}  ours-nat/qemu {}  ours-relay/ours-nat {}",
            ratio(r.rr_median_us, q.rr_median_us),
            ratio(n.rr_median_us, q.rr_median_us),
            ratio(r.rr_median_us, n.rr_median_us)
        );
    }
    let ok: usize = sums.iter().map(|(_, s)| s.ok).sum();
    if ok < sched.len() {
        println!(
            "\n{} of {} runs incomplete; lab lines:",
            sched.len() - ok,
            sched.len()
        );
        for l in console.lines().filter(|l| {
            l.starts_with("NETFAIL")
                || l.starts_with("NETSINK")
                || l.starts_with("NETLOG")
                || l.starts_with("NETEXIT")
                || l.starts_with("LAB:")
                || l.starts_with("MEASURE")
        }) {
            println!("  {l}");
        }
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        for l in tail.iter().rev() {
            println!("  | {l}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_parse_into_figures_and_cpu_between_markers() {
        let console = "===BENCH-RUN 0 qemu===\n\
            NETCPU label=qemu marker=START relay=0 passt=10 vmm=100\n\
            NETCPU label=qemu marker=UPLOADED relay=0 passt=30 vmm=200\n\
            NETRESULT label=qemu NETBENCH-UPLOAD bytes=67108864 secs=4.000\n\
            NETRESULT label=qemu NETBENCH-RR count=500 median_us=250 p99_us=900\n\
            ===BENCH-RUN 1 ours-relay===\n\
            NETRESULT label=ours-relay NETBENCH-UPLOAD bytes=33554432 secs=4.000\n";
        let m = parse(console);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].label, "qemu");
        assert_eq!(m[0].upload_mibps, Some(16.0));
        assert_eq!(m[0].upload_ticks, Some([0, 20, 100]));
        assert_eq!(m[0].rr_median_us, Some(250.0));
        assert_eq!(m[1].label, "ours-relay");
        assert_eq!(m[1].upload_mibps, Some(8.0));
        assert_eq!(m[1].rr_median_us, None);
        let s = summarize(&m, Variant::Qemu);
        assert_eq!(s.ok, 1);
        // 20 ticks of passt = 200 ms over 64 MiB.
        assert_eq!(s.cpu_ms_per_mib[1], Some(200.0 / 64.0));
    }

    #[test]
    fn every_round_runs_each_variant_once_rotated() {
        let cfg = Config {
            runs: 2,
            ..Config::default()
        };
        let s = schedule(&cfg);
        assert_eq!(s.len(), 6);
        assert_eq!(s[0], Variant::OursRelay);
        assert_eq!(s[3], Variant::OursNat);
        for v in Variant::ALL {
            assert_eq!(s.iter().filter(|x| **x == v).count(), 2);
        }
    }

    #[test]
    fn only_the_relay_variant_gets_allow_and_qemu_uses_passts_socket() {
        let cfg = Config::default();
        let relay = vm_command(Variant::OursRelay, &cfg, "/s").join(" ");
        assert!(relay.contains("--allow=tcp:192.0.2.1:9001,9002"), "{relay}");
        assert!(!vm_command(Variant::OursNat, &cfg, "/s")
            .join(" ")
            .contains("--allow"));
        let q = run_script(Variant::Qemu, &cfg);
        assert!(q.contains("passt -f -e -q -m 1500 -1 -s /tmp/passt.sock"));
        assert!(q.contains("addr.path=/tmp/passt.sock"));
    }
}
