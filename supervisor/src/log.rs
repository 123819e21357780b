//! Partition process logs: each partition's stdout and stderr arrive on a pipe and the
//! supervisor writes them to that partition's file under the XDG state directory
//! (`$XDG_STATE_HOME/bulkhead/partitions/NAME.log`, else
//! `~/.local/state/bulkhead/partitions/NAME.log`), never to the app's own stderr.
//!
//! A partition process may be compromised, so what it writes is data: every byte that is
//! not printable ASCII is escaped (`\x1b`, `\t`, `\\`), lines are cut at
//! [`MAX_LINE`] bytes, at most [`LINES_PER_SECOND`] lines a second are kept (with a burst
//! of [`BURST_LINES`]; dropped lines are counted in the log), and one process writes at
//! most [`MAX_FILE_BYTES`] (an older file of that size is moved to `NAME.log.old`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::warn;

/// Bytes of a logged line after escaping; the rest of the line is dropped and counted.
pub const MAX_LINE: usize = 1024;
/// Lines per second kept on average.
pub const LINES_PER_SECOND: f64 = 50.0;
/// Lines kept in a burst above the average.
pub const BURST_LINES: f64 = 200.0;
/// Bytes one partition process may write to its log; a log file this size is moved aside
/// when the next process starts.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The default directory for partition logs.
pub fn default_log_dir() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
        })?;
    Some(state.join("bulkhead").join("partitions"))
}

/// The log file of partition `name` in `dir`: characters other than ASCII letters,
/// digits, `-`, `_` and `.` become `_`, so a name never leaves the directory.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    let mut file: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .collect();
    if file.is_empty() || file.starts_with('.') {
        file.insert(0, '_');
    }
    dir.join(format!("{file}.log"))
}

/// Opens `path` for appending, moving a full one aside first and creating its directory.
pub fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= MAX_FILE_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".old");
        std::fs::rename(path, old)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Turns a hostile byte stream into bounded, escaped, rate-limited log lines.
#[derive(Debug)]
pub struct LogSanitizer {
    /// The current line, escaped, at most [`MAX_LINE`] bytes.
    line: String,
    /// Raw bytes of the current line dropped for length.
    cut: u64,
    tokens: f64,
    refilled: Instant,
    /// Lines dropped by the rate limit since the last line written.
    dropped: u64,
    /// Bytes written to the file by this sanitizer.
    written: u64,
    full: bool,
}

impl LogSanitizer {
    pub fn new(now: Instant) -> Self {
        Self {
            line: String::new(),
            cut: 0,
            tokens: BURST_LINES,
            refilled: now,
            dropped: 0,
            written: 0,
            full: false,
        }
    }

    /// Takes `bytes` read at `now`; writes the lines they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], now: Instant, out: &mut impl Write) -> io::Result<()> {
        for &b in bytes {
            if b == b'\n' {
                self.end_line(now, out)?;
                continue;
            }
            let escaped = escape(b);
            if self.line.len() + escaped.len() > MAX_LINE {
                self.cut += 1;
            } else {
                self.line.push_str(&escaped);
            }
        }
        Ok(())
    }

    /// The process closed its end: writes what is left of the last line.
    pub fn finish(&mut self, now: Instant, out: &mut impl Write) -> io::Result<()> {
        if !self.line.is_empty() || self.cut > 0 {
            self.end_line(now, out)?;
        }
        if self.dropped > 0 {
            let note = format!("[{} line(s) dropped: over the log rate]", self.dropped);
            self.dropped = 0;
            self.write(&note, out)?;
        }
        Ok(())
    }

    fn end_line(&mut self, now: Instant, out: &mut impl Write) -> io::Result<()> {
        let mut line = std::mem::take(&mut self.line);
        if self.cut > 0 {
            line.push_str(&format!("…[{} more byte(s) cut]", self.cut));
            self.cut = 0;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * LINES_PER_SECOND).min(BURST_LINES);
        if self.tokens < 1.0 {
            self.dropped += 1;
            return Ok(());
        }
        self.tokens -= 1.0;
        if self.dropped > 0 {
            let note = format!("[{} line(s) dropped: over the log rate]", self.dropped);
            self.dropped = 0;
            self.write(&note, out)?;
        }
        self.write(&line, out)
    }

    fn write(&mut self, line: &str, out: &mut impl Write) -> io::Result<()> {
        if self.full {
            return Ok(());
        }
        let need = line.len() as u64 + 1;
        if self.written + need > MAX_FILE_BYTES {
            self.full = true;
            return out.write_all(b"[log size limit reached: further output dropped]\n");
        }
        self.written += need;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")
    }
}

/// Printable ASCII as is, `\` doubled, everything else as `\t` or `\xNN`.
fn escape(b: u8) -> String {
    match b {
        b'\\' => "\\\\".to_string(),
        b'\t' => "\\t".to_string(),
        0x20..=0x7e => (b as char).to_string(),
        _ => format!("\\x{b:02x}"),
    }
}

/// Copies a partition's output from `pipe` into `log` until the process (and every
/// process holding the pipe) is gone.
pub fn pump(name: &str, mut pipe: impl Read, mut log: impl Write) {
    let mut sanitizer = LogSanitizer::new(Instant::now());
    let mut buf = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(partition = %name, "reading the partition's output: {e}");
                break;
            }
        };
        if let Err(e) = sanitizer.feed(&buf[..n], Instant::now(), &mut log) {
            warn!(partition = %name, "writing the partition's log: {e}");
            // Keep draining, so the partition never blocks on a full pipe.
            sanitizer.full = true;
        }
    }
    let _ = sanitizer.finish(Instant::now(), &mut log);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run(input: &[u8]) -> String {
        let now = Instant::now();
        let mut s = LogSanitizer::new(now);
        let mut out = Vec::new();
        s.feed(input, now, &mut out).unwrap();
        s.finish(now, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn control_characters_and_non_ascii_are_escaped() {
        let out = run(b"red \x1b[31mtext\x07\r\tend\\ \xc3\xa9\n");
        assert_eq!(out, "red \\x1b[31mtext\\x07\\x0d\\tend\\\\ \\xc3\\xa9\n");
        assert!(out.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
    }

    #[test]
    fn a_long_line_is_cut_and_says_how_much_was_dropped() {
        let mut input = vec![b'a'; MAX_LINE + 500];
        input.push(b'\n');
        input.extend_from_slice(b"next\n");
        let out = run(&input);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with(&"a".repeat(MAX_LINE)));
        assert!(
            lines[0].ends_with("…[500 more byte(s) cut]"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn a_line_flood_is_kept_to_the_burst_and_the_rest_is_counted() {
        let now = Instant::now();
        let mut s = LogSanitizer::new(now);
        let mut out = Vec::new();
        s.feed(&b"x\n".repeat(10_000), now, &mut out).unwrap();
        let kept = out.iter().filter(|&&b| b == b'\n').count();
        assert_eq!(kept, BURST_LINES as usize);
        // A second later there is room again, and the gap is reported first.
        let later = now + Duration::from_secs(1);
        s.feed(b"after\n", later, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let tail: Vec<&str> = text.lines().rev().take(2).collect();
        assert_eq!(tail[0], "after");
        assert_eq!(tail[1], "[9800 line(s) dropped: over the log rate]");
    }

    #[test]
    fn one_process_writes_at_most_the_size_cap() {
        let mut now = Instant::now();
        let mut s = LogSanitizer::new(now);
        let mut out = Vec::new();
        let line = [b'y'; 1000];
        for _ in 0..10_000 {
            now += Duration::from_secs(1);
            s.feed(&line, now, &mut out).unwrap();
            s.feed(b"\n", now, &mut out).unwrap();
        }
        assert!(out.len() as u64 <= MAX_FILE_BYTES + 100);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("[log size limit reached: further output dropped]\n"));
    }

    #[test]
    fn a_partition_name_never_leaves_the_log_directory() {
        let dir = Path::new("/state");
        assert_eq!(log_path(dir, "work"), Path::new("/state/work.log"));
        assert_eq!(log_path(dir, "../etc/x"), Path::new("/state/_.._etc_x.log"));
        assert_eq!(log_path(dir, ""), Path::new("/state/_.log"));
    }
}
