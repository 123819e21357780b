//! `lab-measure`: runs one VMM process until a marker appears on its stdout (the guest's
//! serial console) and reports how long that took and how much memory the process holds
//! beyond guest RAM and the framebuffer. Runs inside the lab machine (or on a VT-x/AMD-V
//! host), so it needs only std and libc and is built static.
//!
//! ```text
//! lab-measure --label ours --marker BULKHEAD-READY --guest-mem-mib 256 \
//!     [--exclude-size BYTES] [--timeout-s 300] [--sample-ms 250] [--measure-child] -- <command…>
//! ```
//!
//! With `--echo` the command's output is copied to stdout as it arrives (the disk
//! benchmark's guest prints its figures there); with `--no-memory` nothing is sampled, so
//! reading /proc/<pid>/smaps (slow under TCG) does not disturb what the guest measures,
//! and the memory fields are 0.
//!
//! With `--measure-child` the memory figures are those of the command's deepest first
//! descendant: the sandboxed VMM process when the command is a supervisor.
//!
//! Prints one line:
//! `MEASURE label=… ok=1 ms=… rss_kib=… guest_kib=… excluded_kib=… overhead_kib=…
//!  anon_overhead_kib=… peak_overhead_kib=… hwm_kib=… helper_kib=… samples=…`
//! (`helper_kib`: private memory of the processes between the command and the measured
//! one, with `--measure-child`)
//! or `MEASURE label=… ok=0 reason=…` followed by the child's last output.

use std::io::Read;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: lab-measure --label NAME --marker TEXT --guest-mem-mib MIB \
[--exclude-size BYTES] [--timeout-s S] [--sample-ms MS] [--show-maps] [--measure-child] \
[--echo] [--no-memory] [--stderr-marker TEXT] -- COMMAND [ARGS…]";

struct Options {
    label: String,
    marker: String,
    guest_mem_kib: u64,
    /// Mappings of exactly this many bytes are the framebuffer.
    exclude_bytes: Option<u64>,
    timeout: Duration,
    sample: Duration,
    /// Print the large anonymous mappings at the marker (stderr).
    show_maps: bool,
    /// Measure the command's child process, not the command.
    measure_child: bool,
    /// Copy the command's output to stdout.
    echo: bool,
    /// Take no memory samples.
    no_memory: bool,
    /// Also time when this first appears on the command's stderr (`stderr_ms=`); the
    /// stderr is copied to ours either way.
    stderr_marker: Option<String>,
    command: Vec<String>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut label = "run".to_string();
    let mut marker = None;
    let mut guest_mem_mib = None;
    let mut exclude_bytes = None;
    let mut timeout_s = 300u64;
    let mut sample_ms = 1000u64;
    let mut show_maps = false;
    let mut measure_child = false;
    let mut echo = false;
    let mut no_memory = false;
    let mut stderr_marker = None;
    let mut it = args.iter();
    let number = |flag: &str, v: Option<&String>| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag} `{v}` is not a whole number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--label" => label = it.next().ok_or("--label needs a value")?.clone(),
            "--marker" => marker = Some(it.next().ok_or("--marker needs a value")?.clone()),
            "--guest-mem-mib" => guest_mem_mib = Some(number(a, it.next())?),
            "--exclude-size" => exclude_bytes = Some(number(a, it.next())?),
            "--timeout-s" => timeout_s = number(a, it.next())?,
            "--sample-ms" => sample_ms = number(a, it.next())?,
            "--show-maps" => show_maps = true,
            "--measure-child" => measure_child = true,
            "--echo" => echo = true,
            "--no-memory" => no_memory = true,
            "--stderr-marker" => {
                stderr_marker = Some(it.next().ok_or("--stderr-marker needs a value")?.clone())
            }
            "--" => break,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let command: Vec<String> = it.cloned().collect();
    if command.is_empty() {
        return Err("no command after `--`".into());
    }
    Ok(Options {
        label,
        marker: marker
            .filter(|m: &String| !m.is_empty())
            .ok_or("--marker is required and not empty")?,
        guest_mem_kib: guest_mem_mib.ok_or("--guest-mem-mib is required")? * 1024,
        exclude_bytes,
        timeout: Duration::from_secs(timeout_s),
        sample: Duration::from_millis(sample_ms.max(10)),
        show_maps,
        measure_child,
        echo,
        no_memory,
        stderr_marker: stderr_marker.filter(|m| !m.is_empty()),
        command,
    })
}

/// One mapping from /proc/<pid>/smaps, the fields this tool needs.
#[derive(Debug, Default, Clone, PartialEq)]
struct Mapping {
    start: u64,
    path: String,
    size_kib: u64,
    rss_kib: u64,
    anon_kib: u64,
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some(key) = first.strip_suffix(':') {
            let Some(m) = maps.last_mut() else { continue };
            let value: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match key {
                "Size" => m.size_kib = value,
                "Rss" => m.rss_kib = value,
                "Anonymous" => m.anon_kib = value,
                _ => {}
            }
        } else if first.contains('-') {
            // Header: address perms offset dev inode [path]
            let start = first
                .split('-')
                .next()
                .and_then(|a| u64::from_str_radix(a, 16).ok())
                .unwrap_or(0);
            let path = words.nth(4).unwrap_or("").to_string();
            maps.push(Mapping {
                start,
                path,
                ..Mapping::default()
            });
        }
    }
    maps
}

/// Memory figures of one process at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Sample {
    rss_kib: u64,
    anon_kib: u64,
    guest_kib: u64,
    excluded_kib: u64,
    /// Anonymous KiB inside the guest RAM and framebuffer mappings.
    excluded_anon_kib: u64,
}

impl Sample {
    fn overhead_kib(&self) -> u64 {
        self.rss_kib
            .saturating_sub(self.guest_kib + self.excluded_kib)
    }

    /// Anonymous memory outside the guest RAM and framebuffer mappings.
    fn anon_overhead_kib(&self) -> u64 {
        self.anon_kib.saturating_sub(self.excluded_anon_kib)
    }
}

/// Guest RAM is the anonymous mappings at least as large as the guest's memory (guest
/// RAM below the 3 GiB hole is one mapping); the framebuffer is the anonymous mapping of
/// exactly `exclude_bytes`. The kernel merges two adjacent anonymous mappings with the
/// same flags into one, and the VMM maps the framebuffer right after guest RAM, so the
/// top-down allocator puts it directly below: a mapping of exactly guest + framebuffer
/// size holds the framebuffer in its lowest `exclude_bytes`, whose resident KiB
/// `resident_kib(start, bytes)` counts.
fn classify(
    maps: &[Mapping],
    guest_mem_kib: u64,
    exclude_bytes: Option<u64>,
    resident_kib: &mut dyn FnMut(u64, u64) -> u64,
) -> Sample {
    let exclude_kib = exclude_bytes.map(|b| b.div_ceil(1024));
    let mut s = Sample::default();
    for m in maps {
        s.rss_kib += m.rss_kib;
        s.anon_kib += m.anon_kib;
        // Guest memory is anonymous or, when shared with another process, a memfd.
        let anonymous =
            m.path.is_empty() || m.path.starts_with("[anon") || m.path.starts_with("/memfd:");
        if !anonymous {
            continue;
        }
        match exclude_kib {
            Some(fb) if m.size_kib == guest_mem_kib + fb => {
                let in_fb = resident_kib(m.start, fb * 1024).min(m.rss_kib);
                s.excluded_kib += in_fb;
                s.guest_kib += m.rss_kib - in_fb;
            }
            Some(fb) if m.size_kib == fb => s.excluded_kib += m.rss_kib,
            _ if m.size_kib >= guest_mem_kib => s.guest_kib += m.rss_kib,
            _ => continue,
        }
        s.excluded_anon_kib += m.anon_kib;
    }
    s
}

/// Resident KiB of `[start, start + bytes)` in process `pid`, from its pagemap (bit 63:
/// page present).
fn pagemap_resident_kib(pid: u32, start: u64, bytes: u64) -> u64 {
    use std::io::{Seek, SeekFrom};
    const PAGE: u64 = 4096;
    let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/pagemap")) else {
        return 0;
    };
    let mut entries = vec![0u8; (bytes / PAGE * 8) as usize];
    if f.seek(SeekFrom::Start(start / PAGE * 8)).is_err() || f.read_exact(&mut entries).is_err() {
        return 0;
    }
    let present = entries.chunks_exact(8).filter(|e| e[7] & 0x80 != 0).count() as u64;
    present * PAGE / 1024
}

fn sample(pid: u32, opts: &Options, show_maps: bool) -> Option<Sample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let maps = parse_smaps(&text);
    if show_maps {
        for m in maps
            .iter()
            .filter(|m| m.size_kib >= 1024 && m.path.is_empty())
        {
            eprintln!(
                "lab-measure: anon mapping {:#x} size {} KiB rss {} KiB",
                m.start, m.size_kib, m.rss_kib
            );
        }
    }
    Some(classify(
        &maps,
        opts.guest_mem_kib,
        opts.exclude_bytes,
        &mut |start, bytes| pagemap_resident_kib(pid, start, bytes),
    ))
}

/// The first child process of any thread of `pid` (the supervisor spawns the partition
/// process from whichever thread starts it).
fn first_child(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.filter_map(|t| t.ok()).find_map(|t| {
        let children = std::fs::read_to_string(t.path().join("children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    })
}

/// The process whose memory is measured: with `--measure-child`, the deepest first
/// descendant (supervisor → partition process → the VMM it forked into its PID namespace).
fn measured_pid(pid: u32, opts: &Options) -> Option<u32> {
    if !opts.measure_child {
        return Some(pid);
    }
    descendants(pid).last().copied()
}

/// First child, its first child, … down to a process without children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut chain = Vec::new();
    let mut at = pid;
    while let Some(next) = first_child(at) {
        chain.push(next);
        at = next;
    }
    chain
}

/// Private memory (not shared with any other process) of the processes between the
/// command and the measured one: the partition process's reaper. Part of what a
/// partition costs, beyond the measured process.
fn helpers_private_kib(pid: u32, opts: &Options) -> u64 {
    if !opts.measure_child {
        return 0;
    }
    let chain = descendants(pid);
    let helpers = &chain[..chain.len().saturating_sub(1)];
    helpers.iter().map(|p| private_kib(*p)).sum()
}

fn private_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the stdout reader thread reports.
enum Event {
    Marker(Instant),
    Eof,
}

/// Reads the child's stdout to the end, reporting the moment the marker first appears
/// (also when split across reads); returns the last few KiB for diagnostics.
fn watch_output(
    mut out: impl Read,
    marker: &[u8],
    events: &mpsc::Sender<Event>,
    mut echo: Option<&mut dyn std::io::Write>,
) -> Vec<u8> {
    const KEEP: usize = 4096;
    let mut tail: Vec<u8> = Vec::new();
    let mut seen = false;
    let mut buf = [0u8; 4096];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = Instant::now();
        if let Some(w) = echo.as_mut() {
            let _ = w.write_all(&buf[..n]).and_then(|()| w.flush());
        }
        tail.extend_from_slice(&buf[..n]);
        if !seen && tail.windows(marker.len()).any(|w| w == marker) {
            seen = true;
            let _ = events.send(Event::Marker(at));
        }
        if tail.len() > KEEP {
            tail.drain(..tail.len() - KEEP);
        }
    }
    let _ = events.send(Event::Eof);
    tail
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn run(opts: &Options) -> Result<String, String> {
    let started = Instant::now();
    let mut child = Command::new(&opts.command[0])
        .args(&opts.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if opts.stderr_marker.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", opts.command[0]))?;
    let pid = child.id();
    // Its events only say when the stderr marker came; the reader copies stderr to ours.
    let (stderr_tx, stderr_rx) = mpsc::channel();
    let stderr_reader = match (child.stderr.take(), &opts.stderr_marker) {
        (Some(stderr), Some(marker)) => {
            let marker = marker.clone().into_bytes();
            Some(std::thread::spawn(move || {
                let mut ours = std::io::stderr();
                watch_output(stderr, &marker, &stderr_tx, Some(&mut ours));
            }))
        }
        _ => None,
    };
    let stderr_marker_at = || {
        stderr_rx.try_iter().find_map(|e| match e {
            Event::Marker(at) => Some(at),
            Event::Eof => None,
        })
    };
    let stdout = child.stdout.take().ok_or("the child has no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    let marker = opts.marker.clone().into_bytes();
    let echo = opts.echo;
    let reader = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let echo: Option<&mut dyn std::io::Write> = if echo { Some(&mut out) } else { None };
        watch_output(stdout, &marker, &tx, echo)
    });
    let mut peak_overhead = 0u64;
    let mut samples = 0u32;
    let outcome = loop {
        match rx.recv_timeout(opts.sample) {
            Ok(Event::Marker(at)) => break Ok(at),
            Ok(Event::Eof) => break Err("the child closed its output before the marker"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break Err("the output reader stopped"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            break Err("the child exited before the marker");
        }
        if started.elapsed() > opts.timeout {
            break Err("timed out waiting for the marker");
        }
        if opts.no_memory {
            continue;
        }
        if let Some(s) = measured_pid(pid, opts).and_then(|p| sample(p, opts, false)) {
            peak_overhead = peak_overhead.max(s.overhead_kib());
            samples += 1;
        }
    };
    let at = match outcome {
        Ok(at) => at,
        Err(reason) => {
            let ms = started.elapsed().as_millis();
            stop(&mut child);
            let tail = reader.join().unwrap_or_default();
            return Err(format!(
                "{reason} after {ms} ms; last output:\n{}",
                String::from_utf8_lossy(&tail)
            ));
        }
    };
    let measured = measured_pid(pid, opts).ok_or("the command has no child process")?;
    let (at_marker, hwm_kib, helper_kib) = if opts.no_memory {
        (Sample::default(), 0, 0)
    } else {
        (
            sample(measured, opts, opts.show_maps).ok_or("reading smaps at the marker failed")?,
            status_kib(measured, "VmHWM"),
            helpers_private_kib(pid, opts),
        )
    };
    if measured != pid {
        // The partition process would exit once its supervisor is gone; killing it now
        // keeps its memory out of the next measurement.
        // SAFETY: kill(2) with a pid we just read from /proc and a valid signal number.
        unsafe { libc::kill(measured as libc::pid_t, libc::SIGKILL) };
    }
    let stderr_ms = stderr_marker_at()
        .map(|t| format!(" stderr_ms={}", t.duration_since(started).as_millis()))
        .unwrap_or_default();
    stop(&mut child);
    let _ = reader.join();
    if let Some(r) = stderr_reader {
        let _ = r.join();
    }
    samples += 1;
    peak_overhead = peak_overhead.max(at_marker.overhead_kib());
    Ok(format!(
        "MEASURE label={} ok=1 ms={} rss_kib={} guest_kib={} excluded_kib={} overhead_kib={} \
         anon_overhead_kib={} peak_overhead_kib={} hwm_kib={} helper_kib={helper_kib} \
         samples={samples}{stderr_ms}",
        opts.label,
        at.duration_since(started).as_millis(),
        at_marker.rss_kib,
        at_marker.guest_kib,
        at_marker.excluded_kib,
        at_marker.overhead_kib(),
        at_marker.anon_overhead_kib(),
        peak_overhead,
        hwm_kib,
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lab-measure: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The echoed output may end mid-line: the MEASURE line must start its own.
    let nl = if opts.echo { "\n" } else { "" };
    match run(&opts) {
        Ok(line) => {
            println!("{nl}{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{nl}MEASURE label={} ok=0 reason={e}", opts.label);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0400000 r-xp 00000000 00:02 12 /bulkhead-vmm
Size:               4096 kB
Rss:                2000 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              100000 kB
Anonymous:        100000 kB
VmFlags: rd wr mr mw me nr
7f0010000000-7f0010300000 rw-p 00000000 00:00 0
Size:               3072 kB
Rss:                3072 kB
Anonymous:          3072 kB
7f0020000000-7f0020800000 rw-p 00000000 00:00 0
Size:               8192 kB
Rss:                  40 kB
Anonymous:            40 kB
";

    #[test]
    fn smaps_headers_and_fields_become_mappings() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].path, "/bulkhead-vmm");
        assert_eq!(maps[0].start, 0x55d0a0000000);
        assert_eq!(maps[0].rss_kib, 2000);
        assert_eq!(maps[1].path, "");
        assert_eq!(maps[1].size_kib, 262144);
        assert_eq!(maps[3].anon_kib, 40);
    }

    #[test]
    fn guest_ram_and_framebuffer_are_not_counted_as_overhead() {
        let s = classify(
            &parse_smaps(SMAPS),
            256 * 1024,
            Some(1024 * 768 * 4),
            &mut |_, _| unreachable!("no merged mapping here"),
        );
        assert_eq!(s.rss_kib, 2000 + 100000 + 3072 + 40);
        assert_eq!(s.guest_kib, 100000);
        assert_eq!(s.excluded_kib, 3072);
        assert_eq!(s.overhead_kib(), 2040);
        assert_eq!(s.anon_overhead_kib(), 40);
    }

    #[test]
    fn without_exclude_size_the_framebuffer_counts_as_overhead() {
        let s = classify(&parse_smaps(SMAPS), 256 * 1024, None, &mut |_, _| 0);
        assert_eq!(s.overhead_kib(), 2000 + 3072 + 40);
    }

    #[test]
    fn framebuffer_merged_below_guest_ram_is_split_off_by_its_resident_pages() {
        let merged = "\
7effff000000-7f0010000000 rw-p 00000000 00:00 0
Size:             265216 kB
Rss:              103072 kB
Anonymous:        103072 kB
";
        let mut asked = Vec::new();
        let s = classify(
            &parse_smaps(merged),
            256 * 1024,
            Some(1024 * 768 * 4),
            &mut |start, bytes| {
                asked.push((start, bytes));
                3000
            },
        );
        assert_eq!(asked, [(0x7effff000000, 3 << 20)]);
        assert_eq!(s.excluded_kib, 3000);
        assert_eq!(s.guest_kib, 100072);
        assert_eq!(s.overhead_kib(), 0);
    }

    #[test]
    fn framebuffer_in_a_memfd_mapping_is_excluded() {
        let memfd = "\
7f0010000000-7f0010300000 rw-s 00000000 00:01 77 /memfd:bulkhead-framebuffer (deleted)
Size:               3072 kB
Rss:                3072 kB
Anonymous:             0 kB
";
        let s = classify(
            &parse_smaps(memfd),
            256 * 1024,
            Some(3 << 20),
            &mut |_, _| 0,
        );
        assert_eq!(s.excluded_kib, 3072);
        assert_eq!(s.overhead_kib(), 0);
    }

    #[test]
    fn marker_split_across_reads_is_found() {
        struct Chunks(Vec<&'static [u8]>);
        impl Read for Chunks {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let c = self.0.remove(0);
                buf[..c.len()].copy_from_slice(c);
                Ok(c.len())
            }
        }
        let (tx, rx) = mpsc::channel();
        let mut echoed = Vec::new();
        let tail = watch_output(
            Chunks(vec![b"boot BULKHEAD-RE", b"ADY 6.1\n"]),
            b"BULKHEAD-READY",
            &tx,
            Some(&mut echoed),
        );
        assert!(matches!(rx.recv().unwrap(), Event::Marker(_)));
        assert!(matches!(rx.recv().unwrap(), Event::Eof));
        assert_eq!(tail, b"boot BULKHEAD-READY 6.1\n");
        assert_eq!(echoed, tail, "--echo copies the output as it arrives");
    }

    #[test]
    fn a_stderr_marker_is_timed_before_the_stdout_marker() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let opts = parse_options(&args(
            "--marker OUT --guest-mem-mib 1 --no-memory --stderr-marker ERRMARK -- sh -c",
        ))
        .map(|mut o| {
            o.command
                .push("sleep 0.1; echo ERRMARK >&2; sleep 0.3; echo OUT".into());
            o
        })
        .unwrap();
        let line = run(&opts).unwrap();
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .unwrap()
                .parse()
                .unwrap()
        };
        let (ms, stderr_ms) = (field("ms"), field("stderr_ms"));
        assert!((100..ms).contains(&stderr_ms), "{line}");
        assert!(ms >= stderr_ms + 300, "{line}");
        // Without the flag there is no such field.
        let plain = parse_options(&args("--marker OUT --guest-mem-mib 1 --no-memory -- sh -c"))
            .map(|mut o| {
                o.command.push("echo OUT".into());
                o
            })
            .unwrap();
        assert!(!run(&plain).unwrap().contains("stderr_ms"));
    }

    #[test]
    fn options_need_a_command_after_the_separator() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(parse_options(&args("--marker X --guest-mem-mib 256 --")).is_err());
        let o = parse_options(&args("--marker X --guest-mem-mib 256 -- /bin/true a")).unwrap();
        assert_eq!(o.command, ["/bin/true", "a"]);
        assert_eq!(o.guest_mem_kib, 256 * 1024);
        assert!(parse_options(&args("--guest-mem-mib x -- a")).is_err());
        assert!(!o.echo && !o.no_memory);
        let o = parse_options(&args(
            "--marker X --guest-mem-mib 1 --echo --no-memory -- a",
        ))
        .unwrap();
        assert!(o.echo && o.no_memory);
    }
}
