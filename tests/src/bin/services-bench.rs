//! `services-bench`: what crossing between partitions costs, through the guest agents,
//! in the lab (two `debian-12` partitions under one supervisor, the policy allowing both
//! services), each against a baseline measured in the same run on the same link:
//!
//! - clipboard round trip: the copy gesture's agent read plus the paste's decision and
//!   agent write (gesture to the target's CLIPBOARD set), against an agent ping's round
//!   trip;
//! - file copy throughput: `bulkhead-copy` of a 4 MB file, from the person's answer to
//!   the file committed in the target, against the same number of bytes written raw to
//!   the partition's first virtio-console (`/dev/hvc0`) and counted by the host.
//!
//! ```text
//! services-bench [--rounds N]     (N ≤ 3, default 1)
//! ```

use std::process::ExitCode;

use bulkhead_tests::lab::{run_guest, DiskSource, GuestRun, LabDisk};

const FILE_BYTES: u64 = 4_000_000;
const PASTES: usize = 3;

fn script() -> String {
    format!(
        r#"a=/usr/local/lib/bulkhead/bulkhead-agent
until [ -e /run/bulkhead/app-ready ]; do sleep 1; done
me=$(hostname)
echo "GUEST-UP[$me]"
[ "$me" = lab ] || exit 0
$a clip-set 'bench text' --seconds 1800 > /dev/null 2>&1 &
sleep 3; echo GUEST-OWNS
read -r line < /dev/hvc0
mkdir -p /home/user/out && head -c {FILE_BYTES} /dev/urandom > /home/user/out/bench.bin
chown -R 1000:1000 /home/user/out
echo FILE-READY
setpriv --reuid=1000 --regid=1000 --init-groups env HOME=/home/user /usr/local/bin/bulkhead-copy /home/user/out/bench.bin > /tmp/copy.log 2>&1
echo "COPY-DONE[$?]"
read -r line < /dev/hvc0
stty raw -echo < /dev/hvc0
head -c {FILE_BYTES} /dev/urandom > /tmp/raw.bin
echo RAW-READY
read -r line < /dev/hvc0
cat /tmp/raw.bin > /dev/hvc0
echo RAW-SENT
"#
    )
}

fn steps() -> Vec<String> {
    let mut s: Vec<String> = [
        "wait-serial:GUEST-UP[lab]",
        "wait-agent",
        "spawn:peer",
        "use:peer",
        "wait-serial:GUEST-UP[peer]",
        "wait-agent",
        "use:lab",
        "policy:bulkhead.ClipboardPaste * lab peer allow;bulkhead.FileCopy * lab peer allow",
        "wait-serial:GUEST-OWNS",
    ]
    .map(String::from)
    .to_vec();
    for _ in 0..PASTES {
        s.extend(
            [
                "agent-ping",
                "clipboard-copy",
                "use:peer",
                "clipboard-paste",
                "use:lab",
            ]
            .map(String::from),
        );
    }
    s.extend([
        "console:files\\n".to_string(),
        "wait-serial:FILE-READY".into(),
        "answer:peer".into(),
        "wait-service:copied".into(),
        "wait-serial:COPY-DONE[".into(),
        "console:raw\\n".into(),
        "wait-serial:RAW-READY".into(),
        "console:go\\n".into(),
        format!("wait-console-bytes:{FILE_BYTES}"),
        // Marks the end of the wait in the events.
        "stats".into(),
    ]);
    s
}

/// `(ms, text)` of each line of lab-supervise's events.log.
fn events(log: &str) -> Vec<(f64, String)> {
    log.lines()
        .filter_map(|l| {
            let (ms, rest) = l.trim_start().split_once(" ms ")?;
            Some((ms.trim().parse().ok()?, rest.to_string()))
        })
        .collect()
}

/// The number before `unit` after `after` in `line`.
fn number_after(line: &str, after: &str, unit: &str) -> Option<f64> {
    let rest = &line[line.find(after)? + after.len()..];
    rest.split(unit).next()?.trim().parse().ok()
}

struct Round {
    ping_ms: Vec<f64>,
    clipboard_ms: Vec<f64>,
    copy_s: f64,
    raw_s: f64,
}

fn measure(log: &str) -> Result<Round, String> {
    let ev = events(log);
    let ping_ms: Vec<f64> = ev
        .iter()
        .filter_map(|(_, l)| {
            let d = l.strip_prefix("agent pong after ")?;
            // Debug of a Duration: `12.3ms`, `1.2s`, `800µs`.
            if let Some(v) = d.strip_suffix("ms") {
                v.parse().ok()
            } else if let Some(v) = d.strip_suffix("µs") {
                v.parse::<f64>().ok().map(|v| v / 1000.0)
            } else {
                d.strip_suffix('s')?.parse::<f64>().ok().map(|v| v * 1000.0)
            }
        })
        .collect();
    let copies: Vec<f64> = ev
        .iter()
        .filter(|(_, l)| l.starts_with("copied "))
        .filter_map(|(_, l)| number_after(l, " in ", "ms"))
        .collect();
    let pastes: Vec<f64> = ev
        .iter()
        .filter(|(_, l)| l.starts_with("pasted "))
        .filter_map(|(_, l)| number_after(l, " in ", "ms"))
        .collect();
    if copies.len() != PASTES || pastes.len() != PASTES {
        return Err(format!(
            "{} copies, {} pastes logged",
            copies.len(),
            pastes.len()
        ));
    }
    let clipboard_ms = copies.iter().zip(&pastes).map(|(c, p)| c + p).collect();
    let copy_s = ev
        .iter()
        .find(|(_, l)| l.starts_with("service: [lab] files: copied"))
        .and_then(|(_, l)| number_after(l, "/) in ", " s"))
        .ok_or("no transfer time logged")?;
    let at = |needle: &str| {
        ev.iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(ms, _)| *ms)
            .ok_or_else(|| format!("no `{needle}` in the events"))
    };
    let raw_start = at("step Console(\"go\\n\")")?;
    let waited = at("step WaitConsoleBytes")?;
    let raw_end = ev
        .iter()
        .find(|(ms, l)| *ms >= waited && l.starts_with("step Stats"))
        .map(|(ms, _)| *ms)
        .ok_or("no end of the raw stream")?;
    Ok(Round {
        ping_ms,
        clipboard_ms,
        copy_s,
        raw_s: (raw_end - raw_start) / 1000.0,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = match args.as_slice() {
        [] => 1,
        [flag, n] if flag == "--rounds" => match n.parse::<u32>() {
            Ok(n @ 1..=3) => n,
            _ => {
                eprintln!("services-bench: --rounds takes 1..=3, got {n:?}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: services-bench [--rounds N]");
            return ExitCode::from(2);
        }
    };
    let image = bulkhead_supervisor::template::default_image_path("debian-12");
    if !image.is_file() {
        eprintln!(
            "services-bench: no debian-12 template at {}: `bulkhead template build debian-12`",
            image.display()
        );
        return ExitCode::FAILURE;
    }
    let mut results = Vec::new();
    for round in 1..=rounds {
        eprintln!("services-bench: round {round}");
        let run = GuestRun {
            mem_mib: 1024,
            vcpus: 1,
            display: Some((1024, 768)),
            disks: vec![LabDisk {
                name: "root".into(),
                source: DiskSource::HostFile(image.clone()),
                read_only: true,
                id: Some("root".into()),
            }],
            app: Some("xterm".into()),
            // The bound of the whole round: none may hang.
            timeout_s: 900,
            test_script: script(),
            supervise: Some(steps()),
            extra_partitions: 1,
            ..GuestRun::default()
        };
        let out = run_guest(&run);
        out.save_artifacts(&format!("services-bench-{round}"));
        match measure(&out.file_text("events.log")) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!(
                    "round {round} failed: {e}\n{}\n{}",
                    out.file_text("events.log"),
                    out.diagnostics()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let mut ping: Vec<f64> = results.iter().flat_map(|r| r.ping_ms.clone()).collect();
    let mut clip: Vec<f64> = results
        .iter()
        .flat_map(|r| r.clipboard_ms.clone())
        .collect();
    let mut copy: Vec<f64> = results
        .iter()
        .map(|r| FILE_BYTES as f64 / r.copy_s / 1e6)
        .collect();
    let mut raw: Vec<f64> = results
        .iter()
        .map(|r| FILE_BYTES as f64 / r.raw_s / 1e6)
        .collect();
    let (ping, clip, copy, raw) = (
        median(&mut ping),
        median(&mut clip),
        median(&mut copy),
        median(&mut raw),
    );
    println!("lab: QEMU TCG with nested KVM; only the ratios carry over to real hardware");
    println!(
        "clipboard round trip  {clip:>8.1} ms   agent ping {ping:>7.1} ms   ratio {:.2}",
        clip / ping
    );
    println!(
        "file copy             {copy:>8.2} MB/s raw hvc0 {raw:>7.2} MB/s ratio {:.2}",
        copy / raw
    );
    ExitCode::SUCCESS
}
